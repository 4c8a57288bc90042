//! Cilium's state in a cluster, as cilium-cli's `cilium status` reports it: the agent
//! DaemonSet and the operator Deployment (desired/ready/available), their pods' phases
//! and images, and every error or warning (pods not ready, containers waiting in
//! CrashLoopBackOff, rollouts not done). Reads only, with the user's credentials.
use std::{collections::BTreeMap, fmt::Write as _};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Event, Pod},
};
use kube::{
    api::{Api, ListParams},
    Client,
};
use serde::Serialize;

use super::{
    apply::{AGENT_DAEMONSET, OPERATOR_DEPLOYMENT},
    cluster::describe,
};

/// Label selector of the agent's pods.
pub const AGENT_SELECTOR: &str = "k8s-app=cilium";
/// Label selector of the operator's pods.
pub const OPERATOR_SELECTOR: &str = "io.cilium/app=operator";

/// Desired/ready/available counts of a DaemonSet or Deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub kind: String,
    pub name: String,
    pub desired: i32,
    pub ready: i32,
    pub available: i32,
    pub unavailable: i32,
    pub updated: i32,
}

/// One error or warning of a component, about one pod or the workload itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `cilium` or `cilium-operator`.
    pub component: String,
    /// A pod's name, or the component's for workload-level problems.
    pub pod: String,
    pub message: String,
}

/// Cilium's state in one namespace of a cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStatus {
    pub namespace: String,
    /// Summary line per component: "OK", "2 errors, 1 warnings", "disabled".
    pub summary: BTreeMap<String, String>,
    /// The agent DaemonSet, if it exists.
    pub daemon_set: Option<Workload>,
    /// The operator Deployment, if it exists.
    pub deployment: Option<Workload>,
    /// Component -> pod phase -> number of pods.
    pub containers: BTreeMap<String, BTreeMap<String, usize>>,
    /// Component -> image -> number of containers.
    pub images: BTreeMap<String, BTreeMap<String, usize>>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl ClusterStatus {
    /// No error and no warning: what `--wait` waits for.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.warnings.is_empty()
    }

    fn error(&mut self, component: &str, pod: &str, message: String) {
        self.errors.push(Problem {
            component: component.into(),
            pod: pod.into(),
            message,
        });
    }

    fn warning(&mut self, component: &str, pod: &str, message: String) {
        self.warnings.push(Problem {
            component: component.into(),
            pod: pod.into(),
            message,
        });
    }

    fn summarize(&mut self, operator_disabled: bool) {
        for c in [AGENT_DAEMONSET, OPERATOR_DEPLOYMENT] {
            let e = self.errors.iter().filter(|p| p.component == c).count();
            let w = self.warnings.iter().filter(|p| p.component == c).count();
            let mut parts = Vec::new();
            if e > 0 {
                parts.push(format!("{e} errors"));
            }
            if w > 0 {
                parts.push(format!("{w} warnings"));
            }
            if c == OPERATOR_DEPLOYMENT && operator_disabled {
                parts.push("disabled".into());
            }
            let s = if parts.is_empty() {
                "OK".to_string()
            } else {
                parts.join(", ")
            };
            self.summary.insert(c.to_string(), s);
        }
    }

    /// cilium-cli's text layout.
    pub fn to_text(&self) -> String {
        let get = |c: &str| self.summary.get(c).cloned().unwrap_or_default();
        let mut out = String::new();
        let _ = writeln!(out, "    /¯¯\\");
        let _ = writeln!(
            out,
            " /¯¯\\__/¯¯\\    Cilium:             {}",
            get(AGENT_DAEMONSET)
        );
        let _ = writeln!(
            out,
            " \\__/¯¯\\__/    Operator:           {}",
            get(OPERATOR_DEPLOYMENT)
        );
        let _ = writeln!(
            out,
            " /¯¯\\__/¯¯\\    Envoy DaemonSet:    disabled (using embedded mode)"
        );
        let _ = writeln!(out, " \\__/¯¯\\__/    Hubble Relay:       disabled");
        let _ = writeln!(out, "    \\__/       ClusterMesh:        disabled");
        let _ = writeln!(out);
        for w in [&self.daemon_set, &self.deployment].into_iter().flatten() {
            let _ = writeln!(out, "{:<22} {:<18} {}", w.kind, w.name, format_counts(w));
        }
        let mut header = "Containers:";
        for (component, phases) in &self.containers {
            let p: Vec<String> = phases.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(out, "{header:<22} {component:<18} {}", p.join(", "));
            header = "";
        }
        let mut header = "Image versions";
        for (component, images) in &self.images {
            for (image, n) in images {
                let _ = writeln!(out, "{header:<22} {component:<18} {image}: {n}");
                header = "";
            }
        }
        for (header, list) in [("Errors:", &self.errors), ("Warnings:", &self.warnings)] {
            let mut header = header;
            for p in list {
                let _ = writeln!(
                    out,
                    "{header:<22} {:<18} {:<24} {}",
                    p.component, p.pod, p.message
                );
                header = "";
            }
        }
        out
    }
}

fn format_counts(w: &Workload) -> String {
    let mut items = vec![format!("Desired: {}", w.desired)];
    items.push(format!("Ready: {}/{}", w.ready, w.desired));
    items.push(format!("Available: {}/{}", w.available, w.desired));
    if w.unavailable > 0 {
        items.push(format!("Unavailable: {}/{}", w.unavailable, w.desired));
    }
    items.join(", ")
}

/// A collection failed: the API call and its error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct StatusError {
    pub what: String,
    pub reason: String,
}

fn err(what: String) -> impl FnOnce(kube::Error) -> StatusError {
    move |e| StatusError {
        what,
        reason: describe(&e),
    }
}

/// Reads the agent DaemonSet, the operator Deployment and their pods in `namespace`.
pub async fn collect(client: &Client, namespace: &str) -> Result<ClusterStatus, StatusError> {
    let mut st = ClusterStatus {
        namespace: namespace.to_string(),
        ..Default::default()
    };
    let ds: Option<DaemonSet> = Api::namespaced(client.clone(), namespace)
        .get_opt(AGENT_DAEMONSET)
        .await
        .map_err(err(format!(
            "reading DaemonSet {namespace}/{AGENT_DAEMONSET}"
        )))?;
    match ds {
        None => st.error(
            AGENT_DAEMONSET,
            AGENT_DAEMONSET,
            format!(
                "DaemonSet {AGENT_DAEMONSET} not found in namespace {namespace}: is Cilium \
                 installed? (`cilium install`, or -n for another namespace)"
            ),
        ),
        Some(ds) => daemon_set_status(&mut st, &ds),
    }
    let dep: Option<Deployment> = Api::namespaced(client.clone(), namespace)
        .get_opt(OPERATOR_DEPLOYMENT)
        .await
        .map_err(err(format!(
            "reading Deployment {namespace}/{OPERATOR_DEPLOYMENT}"
        )))?;
    let operator_disabled = dep.is_none();
    if let Some(d) = dep {
        deployment_status(&mut st, &d);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for (component, selector, expected) in [
        (AGENT_DAEMONSET, AGENT_SELECTOR, true),
        (OPERATOR_DEPLOYMENT, OPERATOR_SELECTOR, !operator_disabled),
    ] {
        if !expected {
            continue;
        }
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(err(format!("listing pods {selector} in {namespace}")))?;
        for pod in &list.items {
            pod_status(&mut st, component, pod);
        }
    }
    st.summarize(operator_disabled);
    Ok(st)
}

fn daemon_set_status(st: &mut ClusterStatus, ds: &DaemonSet) {
    let s = ds.status.clone().unwrap_or_default();
    let w = Workload {
        kind: "DaemonSet".into(),
        name: AGENT_DAEMONSET.into(),
        desired: s.desired_number_scheduled,
        ready: s.number_ready,
        available: s.number_available.unwrap_or(0),
        unavailable: s.number_unavailable.unwrap_or(0),
        updated: s.updated_number_scheduled.unwrap_or(0),
    };
    let name = AGENT_DAEMONSET;
    if rollout_findings(st, &w, s.observed_generation == ds.metadata.generation) {
        let not_ready = w.desired - w.ready;
        if w.unavailable - not_ready.max(0) > 0 {
            st.warning(
                name,
                name,
                format!(
                    "{} pods of DaemonSet {name} are not available",
                    w.unavailable - not_ready.max(0)
                ),
            );
        }
    }
    st.daemon_set = Some(w);
}

/// cilium-cli's findings on a workload's rollout: not started (its status is older than
/// its spec), pods not ready, pods not yet updated. Returns whether the rollout started.
fn rollout_findings(st: &mut ClusterStatus, w: &Workload, started: bool) -> bool {
    let (kind, name) = (&w.kind, &w.name);
    if !started {
        st.error(
            name,
            name,
            format!("{kind} {name} is updated but its rollout has not started"),
        );
        return false;
    }
    let not_ready = w.desired - w.ready;
    if not_ready > 0 {
        st.error(
            name,
            name,
            format!("{not_ready} pods of {kind} {name} are not ready"),
        );
    }
    if w.updated < w.desired {
        st.error(
            name,
            name,
            format!(
                "{kind} {name} is rolling out - {} out of {} pods updated",
                w.updated, w.desired
            ),
        );
    }
    true
}

fn deployment_status(st: &mut ClusterStatus, d: &Deployment) {
    let s = d.status.clone().unwrap_or_default();
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let w = Workload {
        kind: "Deployment".into(),
        name: OPERATOR_DEPLOYMENT.into(),
        desired,
        ready: s.ready_replicas.unwrap_or(0),
        available: s.available_replicas.unwrap_or(0),
        unavailable: s.unavailable_replicas.unwrap_or(0),
        updated: s.updated_replicas.unwrap_or(0),
    };
    rollout_findings(st, &w, s.observed_generation == d.metadata.generation);
    st.deployment = Some(w);
}

fn pod_status(st: &mut ClusterStatus, component: &str, pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Unknown".into());
    *st.containers
        .entry(component.into())
        .or_default()
        .entry(phase.clone())
        .or_default() += 1;
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        if let Some(image) = &c.image {
            *st.images
                .entry(component.into())
                .or_default()
                .entry(image.clone())
                .or_default() += 1;
        }
    }
    match phase.as_str() {
        "Failed" => st.error(
            component,
            &name,
            format!(
                "pod has failed: {} - {}",
                status.reason.clone().unwrap_or_default(),
                status.message.clone().unwrap_or_default()
            ),
        ),
        "Pending" if container_problems(pod).is_empty() => {
            let why = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .and_then(|c| c.message.clone())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            st.warning(component, &name, format!("pod is pending{why}"));
        }
        _ => {}
    }
    for p in container_problems(pod) {
        st.error(component, &name, p);
    }
}

/// Why a pod's containers are not ready: waiting reasons and messages
/// (CrashLoopBackOff, ImagePullBackOff, ...), and running containers not ready.
pub fn container_problems(pod: &Pod) -> Vec<String> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    for (is_init, cs) in init.map(|c| (true, c)).chain(main.map(|c| (false, c))) {
        let what = if is_init {
            format!("init container {}", cs.name)
        } else {
            format!("container {}", cs.name)
        };
        let state = cs.state.clone().unwrap_or_default();
        if let Some(w) = state.waiting {
            let reason = w.reason.unwrap_or_else(|| "waiting".into());
            // Normal steps of a start, not problems.
            if reason == "ContainerCreating" || reason == "PodInitializing" {
                continue;
            }
            let msg = w.message.map(|m| format!(": {m}")).unwrap_or_default();
            let last = cs
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .map(|t| {
                    format!(
                        " (last exit code {}{})",
                        t.exit_code,
                        t.reason
                            .as_ref()
                            .map(|r| format!(", {r}"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            out.push(format!("{what} is waiting in {reason}{msg}{last}"));
        } else if let Some(t) = state.terminated {
            if !(is_init && t.exit_code == 0) {
                out.push(format!(
                    "{what} terminated with exit code {}{}",
                    t.exit_code,
                    t.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                ));
            }
        } else if state.running.is_some() && !is_init && !cs.ready {
            out.push(format!("{what} is running but not ready"));
        }
    }
    out
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        .unwrap_or(false)
}

/// For each pod of Cilium that is not ready: its name, its container problems and its
/// last event (`reason: message`), to say why a wait timed out.
pub async fn not_ready_pods(
    client: &Client,
    namespace: &str,
) -> Result<Vec<(String, Vec<String>, Option<String>)>, StatusError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for selector in [AGENT_SELECTOR, OPERATOR_SELECTOR] {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(err(format!("listing pods {selector} in {namespace}")))?;
        for pod in list.items.iter().filter(|p| !pod_ready(p)) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let evs = events
                .list(&ListParams::default().fields(&format!(
                    "involvedObject.kind=Pod,involvedObject.name={name}"
                )))
                .await
                .map_err(err(format!("listing events of pod {namespace}/{name}")))?;
            let last = evs
                .items
                .iter()
                .max_by_key(|e| {
                    e.last_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .or(e.event_time.as_ref().map(|t| t.0))
                        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
                })
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.reason.clone().unwrap_or_default(),
                        e.message.clone().unwrap_or_default()
                    )
                });
            out.push((name, container_problems(pod), last));
        }
    }
    Ok(out)
}
