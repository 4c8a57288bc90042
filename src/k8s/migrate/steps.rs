//! Running a [`Plan`]: the per-node steps forward and back, the preparation and the
//! finish, each recorded on the cluster as it completes.
use std::{
    collections::BTreeSet,
    future::Future,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Affinity, ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::{api_err, fmt_duration, model::*, Action, MigrateError, Migrator, Plan, Report};
use crate::k8s::{
    apply::AGENT_DAEMONSET,
    cluster::status_code,
    crds::CiliumNodeConfig,
    status::{container_problems, pod_ready, AGENT_SELECTOR},
};

/// Label of the probe pods.
const PROBE_LABEL: &str = "io.cilium.migration/probe";

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Nodes worked on and how long each took.
    pub nodes: Vec<(String, Duration)>,
    /// kube-proxy was removed (every node migrated).
    pub finished: bool,
    /// Nodes still running kube-proxy.
    pub remaining: Vec<String>,
}

/// Polls `check` every `every` until it yields a value or `limit` passes; `Err(last
/// reason)` then. An API error ends the wait at once.
async fn poll<T, F, Fut>(
    node: &str,
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, MigrateError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, String>, MigrateError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await? {
            Ok(v) => return Ok(v),
            Err(reason) => reason,
        };
        if Instant::now() >= deadline {
            return Err(MigrateError::Timeout {
                node: node.to_string(),
                what: what.to_string(),
                after: limit,
                last,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// A probe pod's name for `node` (at most 63 characters).
fn probe_name(node: &str) -> String {
    let mut n = format!("cilium-kpr-probe-{node}");
    n.truncate(63);
    n.trim_end_matches(['-', '.']).to_string()
}

impl Migrator {
    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn patch_node(&self, node: &str, patch: Value) -> Result<(), MigrateError> {
        self.nodes_api()
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(api_err("patching", format!("Node {node}")))
    }

    async fn set_node_state(&self, node: &str, state: NodeState) -> Result<(), MigrateError> {
        self.patch_node(
            node,
            json!({"metadata": {"annotations": {STATE_ANNOTATION: state.as_str()}}}),
        )
        .await
    }

    /// Writes the record: creates the ConfigMap the first time, merges it afterwards.
    async fn write_record(&self, record: &Record, exists: &mut bool) -> Result<(), MigrateError> {
        let ns = &self.opts.namespace;
        let api = self.configmaps(ns);
        let what = format!("ConfigMap {ns}/{STATUS_CONFIGMAP}");
        if *exists {
            let patch = json!({"data": record.to_data()});
            api.patch(
                STATUS_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(api_err("updating", what))?;
        } else {
            let cm: ConfigMap = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {
                    "name": STATUS_CONFIGMAP, "namespace": ns,
                    "labels": {"app.kubernetes.io/part-of": "cilium"},
                },
                "data": record.to_data(),
            }))
            .map_err(|e| MigrateError::Refused(format!("building {what}: {e}")))?;
            api.create(&PostParams::default(), &cm)
                .await
                .map_err(api_err("creating", what))?;
            *exists = true;
        }
        Ok(())
    }

    /// The node config selecting labelled nodes (created, or its spec restored).
    async fn ensure_node_config(&self) -> Result<(), MigrateError> {
        let ns = &self.opts.namespace;
        let api: Api<CiliumNodeConfig> = Api::namespaced(self.client.clone(), ns);
        let what = format!("CiliumNodeConfig {ns}/{NODE_CONFIG}");
        let spec = json!({
            "nodeSelector": {"matchLabels": {MIGRATION_LABEL: "true"}},
            "defaults": {KPR_KEY: "true"},
        });
        let obj: CiliumNodeConfig = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNodeConfig",
            "metadata": {
                "name": NODE_CONFIG, "namespace": ns,
                "labels": {"app.kubernetes.io/part-of": "cilium"},
            },
            "spec": spec,
        }))
        .map_err(|e| MigrateError::Refused(format!("building {what}: {e}")))?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(409) => api
                .patch(
                    NODE_CONFIG,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": spec})),
                )
                .await
                .map(|_| ())
                .map_err(api_err("updating", what)),
            Err(e) => Err(api_err("creating", what)(e)),
        }
    }

    async fn delete_node_config(&self) -> Result<(), MigrateError> {
        let ns = &self.opts.namespace;
        let api: Api<CiliumNodeConfig> = Api::namespaced(self.client.clone(), ns);
        match api.delete(NODE_CONFIG, &DeleteParams::default()).await {
            Err(e) if status_code(&e) != Some(404) => Err(api_err(
                "deleting",
                format!("CiliumNodeConfig {ns}/{NODE_CONFIG}"),
            )(e)),
            _ => Ok(()),
        }
    }

    /// Sets kube-proxy's affinity to `edit(current)`, if that changes it; retried on a
    /// conflict with another writer.
    async fn edit_kube_proxy_affinity(
        &self,
        edit: impl Fn(Option<&Affinity>) -> Option<Affinity>,
    ) -> Result<(), MigrateError> {
        let what = format!("DaemonSet {}", self.opts.kube_proxy());
        for _ in 0..3 {
            let Some(ds) = self.read_kube_proxy().await? else {
                return Ok(());
            };
            let current = ds
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.affinity.as_ref());
            let next = edit(current);
            if next.as_ref() == current {
                return Ok(());
            }
            let patch = json!({
                "metadata": {"resourceVersion": ds.metadata.resource_version},
                "spec": {"template": {"spec": {"affinity": next}}},
            });
            match self
                .kube_proxy_api()
                .patch(
                    &self.opts.kube_proxy_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if status_code(&e) == Some(409) => continue,
                Err(e) => return Err(api_err("patching", what)(e)),
            }
        }
        Err(MigrateError::Refused(format!(
            "{what} kept changing under us (3 conflicts); try again"
        )))
    }

    /// Runs the plan. On a failure the record says where things stand and the error says
    /// what to do.
    pub async fn run(&self, plan: &Plan, report: &dyn Report) -> Result<Summary, MigrateError> {
        let mut record = plan.record.clone();
        let mut exists = plan.record_exists;
        let result = match plan.action {
            Action::Migrate | Action::Resume => {
                self.run_migration(plan, &mut record, &mut exists, report)
                    .await
            }
            Action::Rollback => {
                self.run_rollback(plan, &mut record, &mut exists, report)
                    .await
            }
        };
        let Err(cause) = result else { return result };
        if let MigrateError::Refused(_) = cause {
            return Err(cause);
        }
        // Record the failure (best effort: the API may be what failed).
        record.phase = if plan.action == Action::Rollback {
            Phase::RollingBack
        } else {
            Phase::Failed
        };
        record.message = cause.to_string();
        let saved = self.write_record(&record, &mut exists).await.is_ok();
        let o = &self.opts;
        let node = match &cause {
            MigrateError::Timeout { node, .. } | MigrateError::Verify { node, .. } => {
                Some(node.clone())
            }
            _ => None,
        };
        let mut state = match (&node, plan.action) {
            (Some(n), Action::Rollback) => format!("The rollback stopped at node {n}."),
            (Some(n), _) => format!(
                "Node {n} is left cordoned, with kube-proxy replacement configured but not \
                 verified."
            ),
            (None, _) => "The run stopped (the API server could not be reached?).".to_string(),
        };
        state.push_str(if saved {
            " Progress is recorded on the cluster: "
        } else {
            " Progress is recorded on the nodes' annotations: "
        });
        state.push_str(&match plan.action {
            Action::Rollback => format!("{} continues the rollback", o.cmd("--rollback")),
            _ => format!(
                "fix the cause and run {} to continue, or {} to restore kube-proxy on the \
                 migrated nodes",
                o.cmd("--resume"),
                o.cmd("--rollback")
            ),
        });
        state.push('.');
        Err(MigrateError::Stopped {
            cause: Box::new(cause),
            state,
        })
    }

    async fn run_migration(
        &self,
        plan: &Plan,
        record: &mut Record,
        exists: &mut bool,
        report: &dyn Report,
    ) -> Result<Summary, MigrateError> {
        let mut summary = Summary {
            remaining: plan.remaining.clone(),
            ..Default::default()
        };
        if !plan.todo.is_empty() {
            record.phase = Phase::Migrating;
            record.message.clear();
            self.write_record(record, exists).await?;
            if plan.kube_proxy_selector.is_some() {
                self.ensure_node_config().await?;
                self.edit_kube_proxy_affinity(|a| Some(with_migration_affinity(a)))
                    .await?;
            }
            report.line(&format!(
                "Prepared: CiliumNodeConfig {}/{NODE_CONFIG}, nodeAffinity on DaemonSet {}",
                self.opts.namespace, plan.kube_proxy
            ));
        }
        let width = self.opts.max_unavailable.max(1);
        for chunk in plan.todo.chunks(width) {
            let runs = chunk.iter().map(|n| async move {
                let r = self
                    .migrate_node(plan, record_of(&plan.record, n), report)
                    .await;
                (n.clone(), r)
            });
            let results = futures::future::join_all(runs).await;
            let mut failure = None;
            for (node, r) in results {
                match r {
                    Ok(took) => {
                        record.set_state(&node, NodeState::Done);
                        report.node_end(&node, true, &format!("migrated in {}", fmt_secs(took)));
                        summary.nodes.push((node, took));
                    }
                    Err(e) => {
                        report.node_end(&node, false, &e.to_string());
                        if failure.is_none() {
                            failure = Some(e);
                        }
                    }
                }
            }
            if let Some(e) = failure {
                for n in chunk {
                    if let Ok(s) = self.node_state(n).await {
                        record.set_state(n, s);
                    }
                }
                return Err(e);
            }
            self.write_record(record, exists).await?;
        }
        if !plan.finish {
            record.phase = Phase::Partial;
            record.message = format!(
                "{} nodes still run kube-proxy: {}",
                plan.remaining.len(),
                plan.remaining.join(", ")
            );
            self.write_record(record, exists).await?;
            return Ok(summary);
        }
        record.phase = Phase::Finishing;
        record.message.clear();
        self.write_record(record, exists).await?;
        self.finish(plan, report).await?;
        record.phase = Phase::Done;
        record.message = "kube-proxy was replaced by Cilium on every node".into();
        self.write_record(record, exists).await?;
        summary.finished = true;
        Ok(summary)
    }

    async fn node_state(&self, node: &str) -> Result<NodeState, MigrateError> {
        let n = self
            .nodes_api()
            .get(node)
            .await
            .map_err(api_err("reading", format!("Node {node}")))?;
        NodeState::of(n.metadata.annotations.as_ref())
            .map_err(|e| MigrateError::Refused(format!("node {node}: {e}")))
    }

    /// One node, from its current state to done; how long it took.
    async fn migrate_node(
        &self,
        plan: &Plan,
        rec: NodeRecord,
        report: &dyn Report,
    ) -> Result<Duration, MigrateError> {
        let start = Instant::now();
        let node = rec.name.as_str();
        let mut state = self.node_state(node).await?;
        if state == NodeState::RollingBack {
            return Err(MigrateError::Refused(format!(
                "node {node} is being rolled back: {} finishes the rollback",
                self.opts.cmd("--rollback")
            )));
        }
        let step = |s: NodeState, msg: &str| {
            let i = NodeState::STEPS.iter().position(|x| *x == s).unwrap_or(0) + 1;
            report.node_step(node, i, msg);
        };
        if state < NodeState::Cordoned {
            self.patch_node(
                node,
                json!({
                    "spec": {"unschedulable": true},
                    "metadata": {"annotations": {STATE_ANNOTATION: NodeState::Cordoned.as_str()}},
                }),
            )
            .await?;
            state = NodeState::Cordoned;
            step(state, "cordoned");
        }
        if state < NodeState::Labelled {
            self.patch_node(
                node,
                json!({"metadata": {
                    "labels": {MIGRATION_LABEL: "true"},
                    "annotations": {STATE_ANNOTATION: NodeState::Labelled.as_str()},
                }}),
            )
            .await?;
            state = NodeState::Labelled;
            step(state, "labelled");
        }
        if state < NodeState::KubeProxyGone {
            if let Some(sel) = &plan.kube_proxy_selector {
                self.wait_kube_proxy(node, sel, false).await?;
            }
            self.set_node_state(node, NodeState::KubeProxyGone).await?;
            state = NodeState::KubeProxyGone;
            step(state, "kube-proxy gone");
        }
        if state < NodeState::AgentRestarted {
            self.restart_agent(node).await?;
            self.set_node_state(node, NodeState::AgentRestarted).await?;
            state = NodeState::AgentRestarted;
            step(state, "Cilium agent restarted");
        }
        if state < NodeState::Verified {
            self.verify(plan, node).await?;
            self.set_node_state(node, NodeState::Verified).await?;
            state = NodeState::Verified;
            step(state, "verified");
        }
        if state < NodeState::Done {
            let mut patch =
                json!({"metadata": {"annotations": {STATE_ANNOTATION: NodeState::Done.as_str()}}});
            if !rec.was_unschedulable {
                patch["spec"] = json!({"unschedulable": null});
            }
            self.patch_node(node, patch).await?;
            step(NodeState::Done, "uncordoned");
        }
        Ok(start.elapsed())
    }

    /// Waits until kube-proxy's pods on `node` are gone (`present == false`) or one is
    /// Ready there (`present == true`).
    async fn wait_kube_proxy(
        &self,
        node: &str,
        selector: &str,
        present: bool,
    ) -> Result<(), MigrateError> {
        let pods = self.pods(&self.opts.kube_proxy_namespace);
        let lp = ListParams::default()
            .labels(selector)
            .fields(&format!("spec.nodeName={node}"));
        let what = if present {
            "a Ready kube-proxy pod"
        } else {
            "kube-proxy leaving the node"
        };
        poll(node, what, self.opts.timeout, self.opts.poll, || async {
            let list = pods.list(&lp).await.map_err(api_err(
                "listing",
                format!("kube-proxy pods on node {node}"),
            ))?;
            let names = || {
                list.items
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Ok(match (present, list.items.is_empty()) {
                (false, true) => Ok(()),
                (false, false) => Err(format!(
                    "pods {} are still there (is the nodeAffinity on DaemonSet {} in place?)",
                    names(),
                    self.opts.kube_proxy()
                )),
                (true, _) if list.items.iter().any(pod_ready) => Ok(()),
                (true, true) => Err("no kube-proxy pod on the node yet".to_string()),
                (true, false) => Err(format!(
                    "pods {} are not Ready: {}",
                    names(),
                    list.items
                        .iter()
                        .flat_map(container_problems)
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            })
        })
        .await
    }

    /// Deletes the agent pod(s) on `node` and waits for the DaemonSet's new one to be Ready.
    async fn restart_agent(&self, node: &str) -> Result<(), MigrateError> {
        let ns = &self.opts.namespace;
        let pods = self.pods(ns);
        let lp = ListParams::default()
            .labels(AGENT_SELECTOR)
            .fields(&format!("spec.nodeName={node}"));
        let old = pods
            .list(&lp)
            .await
            .map_err(api_err("listing", format!("agent pods on node {node}")))?;
        let mut old_uids = BTreeSet::new();
        for p in &old.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            old_uids.insert(p.metadata.uid.clone().unwrap_or_default());
            match pods.delete(&name, &DeleteParams::default()).await {
                Err(e) if status_code(&e) != Some(404) => {
                    return Err(api_err("deleting", format!("Pod {ns}/{name}"))(e))
                }
                _ => {}
            }
        }
        poll(
            node,
            &format!("a new Ready pod of DaemonSet {ns}/{AGENT_DAEMONSET}"),
            self.opts.timeout,
            self.opts.poll,
            || async {
                let list = pods
                    .list(&lp)
                    .await
                    .map_err(api_err("listing", format!("agent pods on node {node}")))?;
                let new: Vec<&Pod> = list
                    .items
                    .iter()
                    .filter(|p| !old_uids.contains(p.metadata.uid.as_deref().unwrap_or_default()))
                    .collect();
                if new.iter().any(|p| pod_ready(p)) {
                    return Ok(Ok(()));
                }
                Ok(Err(match new.first() {
                    None => "no new agent pod yet".to_string(),
                    Some(p) => {
                        let problems = container_problems(p);
                        format!(
                            "pod {} is not Ready{}",
                            p.metadata.name.clone().unwrap_or_default(),
                            if problems.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", problems.join("; "))
                            }
                        )
                    }
                }))
            },
        )
        .await
    }

    /// Polls `node`'s CiliumNode until `check` accepts its annotations.
    async fn wait_report(
        &self,
        node: &str,
        what: &str,
        check: impl Fn(&std::collections::BTreeMap<String, String>) -> Result<(), String>,
    ) -> Result<(), MigrateError> {
        let api = self.cilium_nodes();
        poll(node, what, self.opts.timeout, self.opts.poll, || async {
            let cn = api
                .get_opt(node)
                .await
                .map_err(api_err("reading", format!("CiliumNode {node}")))?;
            Ok(match cn {
                None => Err(format!("CiliumNode {node} does not exist")),
                Some(cn) => check(&cn.metadata.annotations.unwrap_or_default()),
            })
        })
        .await
    }

    /// The agent reports kube-proxy replacement at work, and a pod on the node reaches
    /// the `kubernetes` Service's ClusterIP.
    async fn verify(&self, plan: &Plan, node: &str) -> Result<(), MigrateError> {
        self.wait_report(node, "the agent reporting kube-proxy replacement", |a| {
            check_agent_report(a, plan.expect_services)
        })
        .await
        .map_err(|e| match e {
            MigrateError::Timeout {
                node, last, after, ..
            } => MigrateError::Verify {
                node,
                reason: format!("{last} (waited {})", fmt_duration(after)),
            },
            e => e,
        })?;
        if let (Some(target), Some(image)) = (&plan.cluster_ip, &plan.image) {
            self.probe(node, target, image).await?;
        }
        Ok(())
    }

    /// A short-lived pod on `node` connects to `target` (`cilium probe tcp`).
    async fn probe(&self, node: &str, target: &str, image: &str) -> Result<(), MigrateError> {
        let ns = &self.opts.namespace;
        let pods = self.pods(ns);
        let name = probe_name(node);
        let what = format!("Pod {ns}/{name}");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": ns,
                "labels": {"app.kubernetes.io/part-of": "cilium", PROBE_LABEL: "kube-proxy-replacement"},
            },
            "spec": {
                "nodeName": node,
                "hostNetwork": false,
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{
                    "name": "probe",
                    "image": image,
                    "command": ["cilium", "probe", "tcp", target, "--timeout", "3s"],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }],
            },
        }))
        .map_err(|e| MigrateError::Refused(format!("building {what}: {e}")))?;
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(409) => {
                // Left over from an interrupted run.
                self.delete_pod(&pods, &name).await?;
                poll(
                    node,
                    "the old probe pod to go",
                    self.opts.timeout,
                    self.opts.poll,
                    || async {
                        let p = pods
                            .get_opt(&name)
                            .await
                            .map_err(api_err("reading", &what))?;
                        Ok(if p.is_none() {
                            Ok(())
                        } else {
                            Err("it is still there".to_string())
                        })
                    },
                )
                .await?;
                pods.create(&PostParams::default(), &pod)
                    .await
                    .map_err(api_err("creating", &what))?;
            }
            Err(e) => return Err(api_err("creating", &what)(e)),
        }
        let outcome = poll(
            node,
            "the probe pod to finish",
            self.opts.timeout,
            self.opts.poll,
            || async {
                let p = pods.get(&name).await.map_err(api_err("reading", &what))?;
                let status = p.status.unwrap_or_default();
                Ok(match status.phase.as_deref() {
                    Some("Succeeded") => Ok(None),
                    Some("Failed") => Ok(Some(
                        status
                            .container_statuses
                            .iter()
                            .flatten()
                            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
                            .map(|m| m.trim().to_string())
                            .next()
                            .unwrap_or_default(),
                    )),
                    other => Err(format!("pod phase {}", other.unwrap_or("unknown"))),
                })
            },
        )
        .await;
        let cleanup = self.delete_pod(&pods, &name).await;
        match outcome? {
            None => cleanup,
            Some(msg) => Err(MigrateError::Verify {
                node: node.to_string(),
                reason: format!(
                    "a pod on the node could not reach the kubernetes Service at {target}{}",
                    if msg.is_empty() {
                        String::new()
                    } else {
                        format!(": {msg}")
                    }
                ),
            }),
        }
    }

    async fn delete_pod(&self, pods: &Api<Pod>, name: &str) -> Result<(), MigrateError> {
        match pods.delete(name, &DeleteParams::default()).await {
            Err(e) if status_code(&e) != Some(404) => Err(api_err(
                "deleting",
                format!("Pod {}/{name}", self.opts.namespace),
            )(e)),
            _ => Ok(()),
        }
    }

    /// Every node is migrated: kube-proxy replacement for all in cilium-config, then
    /// kube-proxy and the migration's scaffolding go.
    async fn finish(&self, plan: &Plan, report: &dyn Report) -> Result<(), MigrateError> {
        let ns = &self.opts.namespace;
        self.configmaps(ns)
            .patch(
                CILIUM_CONFIG,
                &PatchParams::default(),
                &Patch::Merge(&json!({"data": {KPR_KEY: "true"}})),
            )
            .await
            .map_err(api_err(
                "updating",
                format!("ConfigMap {ns}/{CILIUM_CONFIG}"),
            ))?;
        report.line(&format!(
            "Set {KPR_KEY}=true in ConfigMap {ns}/{CILIUM_CONFIG}"
        ));
        self.delete_node_config().await?;
        let kp = &self.opts.kube_proxy_name;
        let kp_ns = &self.opts.kube_proxy_namespace;
        match self
            .kube_proxy_api()
            .delete(kp, &DeleteParams::background())
            .await
        {
            Err(e) if status_code(&e) != Some(404) => {
                return Err(api_err("deleting", format!("DaemonSet {kp_ns}/{kp}"))(e))
            }
            _ => report.line(&format!("Deleted DaemonSet {kp_ns}/{kp}")),
        }
        if self.opts.delete_kube_proxy_config {
            match self
                .configmaps(kp_ns)
                .delete(kp, &DeleteParams::default())
                .await
            {
                Err(e) if status_code(&e) != Some(404) => {
                    return Err(api_err("deleting", format!("ConfigMap {kp_ns}/{kp}"))(e))
                }
                _ => report.line(&format!("Deleted ConfigMap {kp_ns}/{kp}")),
            }
        }
        let nodes = self.list_nodes().await?;
        for n in &nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let labelled = n
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(MIGRATION_LABEL));
            let annotated = n
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(STATE_ANNOTATION));
            if labelled || annotated {
                self.patch_node(
                    &name,
                    json!({"metadata": {
                        "labels": {MIGRATION_LABEL: null},
                        "annotations": {STATE_ANNOTATION: null},
                    }}),
                )
                .await?;
            }
        }
        report.line("Removed the migration labels");
        // Agents started before the global setting and not migrated (a node that joined
        // meanwhile) run without kube-proxy replacement: restart them.
        let reports = self.agent_reports().await?;
        for n in &nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let active = reports
                .get(&name)
                .and_then(|a| a.get(agent_report::KUBE_PROXY_REPLACEMENT))
                .is_some_and(|v| v == "true");
            if !active {
                report.line(&format!(
                    "Restarting the agent on node {name} (no kube-proxy replacement yet)"
                ));
                self.restart_agent(&name).await?;
                self.verify(plan, &name).await?;
            }
        }
        Ok(())
    }

    async fn run_rollback(
        &self,
        plan: &Plan,
        record: &mut Record,
        exists: &mut bool,
        report: &dyn Report,
    ) -> Result<Summary, MigrateError> {
        let mut summary = Summary::default();
        record.phase = Phase::RollingBack;
        record.message.clear();
        self.write_record(record, exists).await?;
        for node in &plan.todo {
            let rec = record_of(&plan.record, node);
            let took = self.rollback_node(plan, rec, report).await?;
            record.set_state(node, NodeState::Pending);
            report.node_end(
                node,
                true,
                &format!("kube-proxy restored in {}", fmt_secs(took)),
            );
            summary.nodes.push((node.clone(), took));
            self.write_record(record, exists).await?;
        }
        self.delete_node_config().await?;
        self.edit_kube_proxy_affinity(without_migration_affinity)
            .await?;
        let ns = &self.opts.namespace;
        match self
            .configmaps(ns)
            .delete(STATUS_CONFIGMAP, &DeleteParams::default())
            .await
        {
            Err(e) if status_code(&e) != Some(404) => {
                return Err(api_err(
                    "deleting",
                    format!("ConfigMap {ns}/{STATUS_CONFIGMAP}"),
                )(e))
            }
            _ => {}
        }
        report.line(&format!(
            "Deleted CiliumNodeConfig {ns}/{NODE_CONFIG} and ConfigMap {ns}/{STATUS_CONFIGMAP}; \
             kube-proxy's nodeAffinity removed"
        ));
        Ok(summary)
    }

    /// One node back to kube-proxy: label off, kube-proxy Ready, agent restarted without
    /// kube-proxy replacement, uncordoned, annotation off.
    async fn rollback_node(
        &self,
        plan: &Plan,
        rec: NodeRecord,
        report: &dyn Report,
    ) -> Result<Duration, MigrateError> {
        let start = Instant::now();
        let node = rec.name.as_str();
        let state = self.node_state(node).await?;
        if state == NodeState::Pending {
            return Ok(start.elapsed());
        }
        if state != NodeState::Cordoned {
            if state != NodeState::RollingBack {
                self.patch_node(
                    node,
                    json!({"metadata": {
                        "labels": {MIGRATION_LABEL: null},
                        "annotations": {STATE_ANNOTATION: NodeState::RollingBack.as_str()},
                    }}),
                )
                .await?;
            }
            report.node_step(node, 1, "label removed");
            if let Some(sel) = &plan.kube_proxy_selector {
                self.wait_kube_proxy(node, sel, true).await?;
            }
            report.node_step(node, 2, "kube-proxy Ready");
            let reports = self.agent_reports().await?;
            let active = reports
                .get(node)
                .and_then(|a| a.get(agent_report::KUBE_PROXY_REPLACEMENT))
                .is_none_or(|v| v != "false");
            if active {
                self.restart_agent(node).await?;
                self.wait_report(
                    node,
                    "the agent running without kube-proxy replacement",
                    |a| match a
                        .get(agent_report::KUBE_PROXY_REPLACEMENT)
                        .map(String::as_str)
                    {
                        Some("false") => Ok(()),
                        v => Err(format!(
                            "the agent reports {}={v:?}",
                            agent_report::KUBE_PROXY_REPLACEMENT
                        )),
                    },
                )
                .await?;
            }
            report.node_step(node, 3, "Cilium agent without kube-proxy replacement");
        }
        let mut patch = json!({"metadata": {"annotations": {STATE_ANNOTATION: null}}});
        if !rec.was_unschedulable {
            patch["spec"] = json!({"unschedulable": null});
        }
        self.patch_node(node, patch).await?;
        report.node_step(node, 4, "uncordoned");
        Ok(start.elapsed())
    }
}

fn record_of(record: &Record, node: &str) -> NodeRecord {
    record
        .nodes
        .iter()
        .find(|n| n.name == node)
        .cloned()
        .unwrap_or(NodeRecord {
            name: node.to_string(),
            state: NodeState::Pending,
            was_unschedulable: false,
        })
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}
