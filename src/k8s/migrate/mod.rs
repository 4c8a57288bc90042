//! `cilium migrate kube-proxy`: moving a cluster from kube-proxy to Cilium's kube-proxy
//! replacement node by node, resumable and reversible.
//!
//! A node is migrated by labelling it ([`model::MIGRATION_LABEL`]): a CiliumNodeConfig
//! selecting the label turns kube-proxy replacement on for its agent, and a nodeAffinity
//! on the kube-proxy DaemonSet keeps kube-proxy off it. Around that: cordon, wait for
//! kube-proxy to leave, restart the agent, verify (what the agent reports on its
//! CiliumNode, and a ClusterIP reached from a pod on the node), uncordon. Every step is
//! recorded on the cluster (an annotation per node, a status ConfigMap for the plan and
//! the phase), so `--resume` continues where a run stopped and `--rollback` walks back.
//!
//! [`Migrator::prepare`] only reads (preflight and plan: what `--dry-run` prints);
//! [`Migrator::run`] writes. The calls use the user's credentials, not the agent's or the
//! operator's service account (outside [`crate::k8s::rbac`]).
pub mod model;
mod steps;
pub use steps::Summary;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, fmt, time::Duration};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Node, Service},
};
use kube::{
    api::{Api, DynamicObject, ListParams},
    core::ApiResource,
    Client,
};

use super::{
    apply::AGENT_DAEMONSET,
    cluster::{describe, status_code},
    crds::CiliumNode,
    status,
};
use model::*;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start (or extend a partial) migration of the selected nodes.
    Migrate,
    /// Continue the recorded migration.
    Resume,
    /// Restore kube-proxy on the recorded nodes, in reverse order.
    Rollback,
}

/// Which nodes a migration takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every node of the cluster, by name.
    All,
    /// These nodes, in this order.
    Names(Vec<String>),
    /// The recorded plan (`--resume`, `--rollback`).
    Recorded,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Cilium's namespace (the agent DaemonSet, cilium-config, the CiliumNodeConfig and
    /// the status ConfigMap).
    pub namespace: String,
    pub kube_proxy_namespace: String,
    pub kube_proxy_name: String,
    pub action: Action,
    pub nodes: Selection,
    /// Nodes migrated at the same time.
    pub max_unavailable: usize,
    /// Limit of each wait (kube-proxy leaving, the agent Ready, the verification).
    pub timeout: Duration,
    /// Interval of the waits' polls.
    pub poll: Duration,
    /// At the end, also delete kube-proxy's ConfigMap (same name as the DaemonSet).
    pub delete_kube_proxy_config: bool,
}

impl Options {
    pub fn new(action: Action, nodes: Selection) -> Self {
        Options {
            namespace: "kube-system".into(),
            kube_proxy_namespace: "kube-system".into(),
            kube_proxy_name: "kube-proxy".into(),
            action,
            nodes,
            max_unavailable: 1,
            timeout: Duration::from_secs(300),
            poll: Duration::from_millis(500),
            delete_kube_proxy_config: false,
        }
    }

    fn kube_proxy(&self) -> String {
        format!("{}/{}", self.kube_proxy_namespace, self.kube_proxy_name)
    }

    fn cmd(&self, flag: &str) -> String {
        let mut c = "cilium migrate kube-proxy".to_string();
        if self.namespace != "kube-system" {
            c.push_str(&format!(" -n {}", self.namespace));
        }
        if !flag.is_empty() {
            c.push(' ');
            c.push_str(flag);
        }
        format!("`{c}`")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{op} {object}: {reason}")]
    Api {
        op: &'static str,
        object: String,
        /// The HTTP status, for an answer of the API server.
        status: Option<u16>,
        reason: String,
    },
    #[error("cannot migrate, nothing was changed:\n{}", .0.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<String>),
    #[error("{0}")]
    Refused(String),
    #[error("node {node}: {what} did not happen within {}: {last}", fmt_duration(*.after))]
    Timeout {
        node: String,
        what: String,
        after: Duration,
        last: String,
    },
    #[error("node {node}: verification failed: {reason}")]
    Verify { node: String, reason: String },
    /// A run stopped: what went wrong, where things stand, what to do.
    #[error("{cause}\n{state}")]
    Stopped {
        #[source]
        cause: Box<MigrateError>,
        state: String,
    },
}

pub(crate) fn api_err(
    op: &'static str,
    object: impl fmt::Display,
) -> impl FnOnce(kube::Error) -> MigrateError {
    let object = object.to_string();
    move |e| MigrateError::Api {
        op,
        object,
        status: status_code(&e),
        reason: describe(&e),
    }
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Progress as the run goes: the CLI draws it (bars on a terminal, lines otherwise).
pub trait Report: Send + Sync {
    /// A line about the whole run.
    fn line(&self, msg: &str);
    /// A node reached `state` (`step` of [`NodeState::STEPS`]`.len()`).
    fn node_step(&self, node: &str, step: usize, msg: &str);
    /// A node is finished with (`ok`) or stopped at (`!ok`).
    fn node_end(&self, node: &str, ok: bool, msg: &str);
}

/// A [`Report`] printing one line per event.
pub struct Lines;

impl Report for Lines {
    fn line(&self, msg: &str) {
        println!("{msg}");
    }
    fn node_step(&self, node: &str, step: usize, msg: &str) {
        println!("  {node} [{step}/{}] {msg}", NodeState::STEPS.len());
    }
    fn node_end(&self, node: &str, ok: bool, msg: &str) {
        println!("  {node}: {}{msg}", if ok { "" } else { "FAILED: " });
    }
}

/// What [`Migrator::prepare`] found.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Nothing to do (already migrated ...): the reason.
    Nothing(String),
    Plan(Box<Plan>),
}

/// What a run will do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub action: Action,
    /// The record to write (the nodes of the plan, with their current states).
    pub record: Record,
    /// Whether the status ConfigMap exists already.
    pub record_exists: bool,
    /// Nodes to work on, in order (reverse order for a rollback).
    pub todo: Vec<String>,
    /// Every node of the cluster would be done: remove kube-proxy at the end.
    pub finish: bool,
    /// Nodes of the cluster outside the plan and not migrated.
    pub remaining: Vec<String>,
    /// kube-proxy's pods (label selector), `None` when its DaemonSet is gone.
    pub kube_proxy_selector: Option<String>,
    /// The agent image (for the probe pod).
    pub image: Option<String>,
    /// `ip:port` of the `kubernetes` Service, reached from a pod on each node.
    pub cluster_ip: Option<String>,
    /// The cluster has Services: a migrated agent must have some in its maps.
    pub expect_services: bool,
    pub namespace: String,
    pub kube_proxy: String,
    pub max_unavailable: usize,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = &self.namespace;
        let state_of = |n: &str| {
            self.record
                .nodes
                .iter()
                .find(|r| r.name == n)
                .map(|r| r.state)
                .unwrap_or(NodeState::Pending)
        };
        match self.action {
            Action::Rollback => {
                writeln!(
                    f,
                    "Rollback of {} nodes to kube-proxy (DaemonSet {}), in reverse order:",
                    self.todo.len(),
                    self.kube_proxy
                )?;
                for n in &self.todo {
                    let st = state_of(n);
                    let steps = if st == NodeState::Cordoned {
                        "uncordon"
                    } else {
                        "remove the label, wait for kube-proxy to be Ready on it, restart the \
                         Cilium agent (without kube-proxy replacement), uncordon"
                    };
                    writeln!(f, "  {n} (now {st}): {steps}")?;
                }
                return writeln!(
                    f,
                    "  end: delete CiliumNodeConfig {ns}/{NODE_CONFIG}, remove the nodeAffinity \
                     from DaemonSet {}, delete ConfigMap {ns}/{STATUS_CONFIGMAP}",
                    self.kube_proxy
                );
            }
            Action::Migrate | Action::Resume => {}
        }
        writeln!(
            f,
            "Migration of {} nodes from kube-proxy (DaemonSet {}) to Cilium's kube-proxy \
             replacement, {} at a time:",
            self.todo.len(),
            self.kube_proxy,
            self.max_unavailable
        )?;
        if self.kube_proxy_selector.is_some() && !self.todo.is_empty() {
            writeln!(
                f,
                "  prepare: CiliumNodeConfig {ns}/{NODE_CONFIG} sets {KPR_KEY}=true for nodes \
                 labelled {MIGRATION_LABEL}=true; DaemonSet {} gets a nodeAffinity \
                 {MIGRATION_LABEL} NotIn (true); progress in ConfigMap {ns}/{STATUS_CONFIGMAP}",
                self.kube_proxy
            )?;
        }
        let verify = match &self.cluster_ip {
            Some(ip) => format!(
                "verify (kube-proxy replacement active, services programmed, no KUBE-* \
                 chains, {ip} reached from a pod on the node)"
            ),
            None => "verify (kube-proxy replacement active, no KUBE-* chains)".into(),
        };
        for n in &self.todo {
            let st = state_of(n);
            let all = [
                "cordon",
                "label",
                "wait for kube-proxy to leave",
                "restart the Cilium agent",
                verify.as_str(),
                "uncordon",
            ];
            let from = NodeState::STEPS
                .iter()
                .position(|s| *s > st)
                .unwrap_or(all.len());
            let left = all[from..].join(", ");
            if st == NodeState::Pending {
                writeln!(f, "  {n}: {left}")?;
            } else {
                writeln!(f, "  {n} (now {st}): {left}")?;
            }
        }
        if self.finish {
            writeln!(
                f,
                "  finish: set {KPR_KEY}=true in ConfigMap {ns}/{CILIUM_CONFIG}, delete the \
                 CiliumNodeConfig, delete DaemonSet {}, remove the migration labels, restart \
                 agents still without kube-proxy replacement",
                self.kube_proxy
            )?;
        } else if !self.remaining.is_empty() {
            writeln!(
                f,
                "  then: {} nodes still run kube-proxy ({}); kube-proxy stays until they are \
                 migrated too",
                self.remaining.len(),
                self.remaining.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The migration against one cluster.
pub struct Migrator {
    client: Client,
    opts: Options,
}

fn cilium_node_resource() -> ApiResource {
    ApiResource::erase::<CiliumNode>(&())
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A DaemonSet's `spec.selector.matchLabels` as a label selector string.
fn selector_string(ds: &DaemonSet) -> Option<String> {
    let labels = ds.spec.as_ref()?.selector.match_labels.as_ref()?;
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

impl Migrator {
    pub fn new(client: Client, opts: Options) -> Self {
        Migrator { client, opts }
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn nodes_api(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn configmaps(&self, ns: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn kube_proxy_api(&self) -> Api<DaemonSet> {
        Api::namespaced(self.client.clone(), &self.opts.kube_proxy_namespace)
    }

    fn cilium_nodes(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &cilium_node_resource())
    }

    /// The status ConfigMap's record, if there is one.
    pub async fn read_record(&self) -> Result<Option<Record>, MigrateError> {
        let ns = &self.opts.namespace;
        let cm = self
            .configmaps(ns)
            .get_opt(STATUS_CONFIGMAP)
            .await
            .map_err(api_err(
                "reading",
                format!("ConfigMap {ns}/{STATUS_CONFIGMAP}"),
            ))?;
        cm.map(|cm| {
            Record::from_data(&cm.data.unwrap_or_default()).map_err(|e| {
                MigrateError::Refused(format!(
                    "ConfigMap {ns}/{STATUS_CONFIGMAP} is not a migration record ({e}); \
                     delete it if no migration is under way"
                ))
            })
        })
        .transpose()
    }

    async fn read_kube_proxy(&self) -> Result<Option<DaemonSet>, MigrateError> {
        self.kube_proxy_api()
            .get_opt(&self.opts.kube_proxy_name)
            .await
            .map_err(api_err(
                "reading",
                format!("DaemonSet {}", self.opts.kube_proxy()),
            ))
    }

    async fn read_cilium_config(&self) -> Result<Option<BTreeMap<String, String>>, MigrateError> {
        let ns = &self.opts.namespace;
        Ok(self
            .configmaps(ns)
            .get_opt(CILIUM_CONFIG)
            .await
            .map_err(api_err(
                "reading",
                format!("ConfigMap {ns}/{CILIUM_CONFIG}"),
            ))?
            .map(|cm| cm.data.unwrap_or_default()))
    }

    async fn list_nodes(&self) -> Result<Vec<Node>, MigrateError> {
        let mut nodes = self
            .nodes_api()
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing", "Nodes"))?
            .items;
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(nodes)
    }

    /// CiliumNode name -> annotations.
    async fn agent_reports(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, MigrateError> {
        Ok(self
            .cilium_nodes()
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing", "CiliumNodes"))?
            .items
            .into_iter()
            .filter_map(|o| Some((o.metadata.name?, o.metadata.annotations.unwrap_or_default())))
            .collect())
    }

    /// The agent image and the `kubernetes` Service's `ip:port`.
    async fn probe_target(&self) -> Result<(Option<String>, Option<String>), MigrateError> {
        let ns = &self.opts.namespace;
        let ds = Api::<DaemonSet>::namespaced(self.client.clone(), ns)
            .get_opt(AGENT_DAEMONSET)
            .await
            .map_err(api_err(
                "reading",
                format!("DaemonSet {ns}/{AGENT_DAEMONSET}"),
            ))?;
        let image = ds.and_then(|d| {
            let containers = d.spec?.template.spec?.containers;
            containers
                .iter()
                .find(|c| c.name == "cilium-agent")
                .or(containers.first())
                .and_then(|c| c.image.clone())
        });
        let svc = Api::<Service>::namespaced(self.client.clone(), "default")
            .get_opt("kubernetes")
            .await
            .map_err(api_err("reading", "Service default/kubernetes"))?;
        let ip = svc.and_then(|s| {
            let spec = s.spec?;
            let ip = spec
                .cluster_ip
                .filter(|ip| !ip.is_empty() && ip != "None")?;
            let port = spec.ports?.first()?.port;
            Some(if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            })
        });
        Ok((image, ip))
    }

    /// Preflight and plan; reads only. `Err` for a refusal (with the reasons).
    pub async fn prepare(&self) -> Result<Prepared, MigrateError> {
        let record = self.read_record().await?;
        let o = &self.opts;
        let ns = &o.namespace;
        match (o.action, &record) {
            (Action::Rollback, Some(r)) if matches!(r.phase, Phase::Finishing | Phase::Done) => {
                return Err(MigrateError::Refused(format!(
                    "the migration {} (ConfigMap {ns}/{STATUS_CONFIGMAP}: phase {}): kube-proxy \
                     {} removed, so there is nothing to roll back to. To go back, reinstall \
                     kube-proxy (e.g. `kubeadm init phase addon kube-proxy`), set {KPR_KEY} to \
                     \"false\" in ConfigMap {ns}/{CILIUM_CONFIG} and restart the agents",
                    if r.phase == Phase::Done {
                        "is finished"
                    } else {
                        "is finishing"
                    },
                    r.phase,
                    if r.phase == Phase::Done {
                        "was"
                    } else {
                        "is being"
                    },
                )))
            }
            (_, Some(r)) if r.phase == Phase::Done => {
                return Ok(Prepared::Nothing(format!(
                    "The migration to kube-proxy replacement is finished (ConfigMap \
                     {ns}/{STATUS_CONFIGMAP}: phase done); nothing to do"
                )))
            }
            (Action::Migrate, Some(r)) if r.phase != Phase::Partial => {
                return Err(MigrateError::Refused(format!(
                    "a migration is under way (ConfigMap {ns}/{STATUS_CONFIGMAP}: phase {}, \
                     nodes {}): {} continues it, {} undoes it",
                    r.phase,
                    r.nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    o.cmd("--resume"),
                    o.cmd("--rollback")
                )))
            }
            (Action::Resume, Some(r)) if r.phase == Phase::RollingBack => {
                return Err(MigrateError::Refused(format!(
                    "a rollback was interrupted: {} finishes it",
                    o.cmd("--rollback")
                )))
            }
            (Action::Resume, Some(r)) if r.phase == Phase::Partial => {
                return Ok(Prepared::Nothing(format!(
                    "Nothing to resume: the planned nodes are migrated and the others still run \
                     kube-proxy; {} or {} migrates them",
                    o.cmd("--all"),
                    o.cmd("--nodes NODE,...")
                )))
            }
            _ => {}
        }
        let Some(r) = record else {
            if o.action == Action::Migrate {
                return self.plan_migration(None).await;
            }
            return Err(MigrateError::Refused(format!(
                "no migration to {} (no ConfigMap {ns}/{STATUS_CONFIGMAP}); start one with {} or {}",
                if o.action == Action::Resume {
                    "resume"
                } else {
                    "roll back"
                },
                o.cmd("--all"),
                o.cmd("--nodes NODE,...")
            )));
        };
        match o.action {
            Action::Migrate => self.plan_migration(Some(r)).await,
            Action::Resume => self.plan_resume(r).await,
            Action::Rollback => self.plan_rollback(r).await,
        }
    }

    async fn plan_migration(&self, record: Option<Record>) -> Result<Prepared, MigrateError> {
        let o = &self.opts;
        let ns = &o.namespace;
        let mut reasons = Vec::new();
        let config = self.read_cilium_config().await?;
        let kpr_on = config
            .as_ref()
            .and_then(|c| c.get(KPR_KEY))
            .is_some_and(|v| v == "true");
        let kube_proxy = self.read_kube_proxy().await?;
        if kube_proxy.is_none() {
            if kpr_on {
                return Ok(Prepared::Nothing(format!(
                    "DaemonSet {} does not exist and ConfigMap {ns}/{CILIUM_CONFIG} has \
                     {KPR_KEY}=true: the cluster already runs without kube-proxy; nothing to do",
                    o.kube_proxy()
                )));
            }
            reasons.push(format!(
                "DaemonSet {} not found, and {KPR_KEY} is not true in ConfigMap \
                 {ns}/{CILIUM_CONFIG}: if kube-proxy runs under another name pass \
                 --kube-proxy-name/--kube-proxy-namespace; if it is already gone, set {KPR_KEY} \
                 to \"true\" in ConfigMap {ns}/{CILIUM_CONFIG} and restart the agents",
                o.kube_proxy()
            ));
        }
        // Cilium installed and healthy.
        let st = status::collect(&self.client, ns)
            .await
            .map_err(|e| MigrateError::Api {
                op: "reading",
                object: "Cilium's status".into(),
                status: None,
                reason: e.to_string(),
            })?;
        if !st.ok() {
            let problems: Vec<String> = st
                .errors
                .iter()
                .chain(&st.warnings)
                .map(|p| {
                    if p.pod == p.component {
                        p.message.clone()
                    } else {
                        format!("pod {}: {}", p.pod, p.message)
                    }
                })
                .collect();
            reasons.push(format!(
                "Cilium is not healthy in namespace {ns} ({}); `cilium status --wait` waits \
                 until it is",
                problems.join("; ")
            ));
        }
        // The agents must reach the API server without kube-proxy.
        match &config {
            None => reasons.push(format!(
                "ConfigMap {ns}/{CILIUM_CONFIG} not found: is Cilium installed in namespace \
                 {ns}? (-n for another)"
            )),
            Some(c) => {
                let missing: Vec<&str> = ["k8s-service-host", "k8s-service-port"]
                    .into_iter()
                    .filter(|k| c.get(*k).is_none_or(|v| v.trim().is_empty()))
                    .collect();
                if !missing.is_empty() {
                    let hint = self.api_server_address().await;
                    reasons.push(format!(
                        "{} not set in ConfigMap {ns}/{CILIUM_CONFIG}: without kube-proxy the \
                         agents could not reach the API server (the kubernetes Service's \
                         ClusterIP is only served once they are up). Set them, e.g. `cilium \
                         upgrade --set k8sServiceHost={} --set k8sServicePort={}`, or add the \
                         keys to the ConfigMap (`kubectl -n {ns} edit configmap \
                         {CILIUM_CONFIG}`) and restart the agents (`kubectl -n {ns} rollout \
                         restart daemonset/{AGENT_DAEMONSET}`)",
                        missing.join(" and "),
                        hint.0,
                        hint.1
                    ));
                }
            }
        }
        // Nodes.
        let nodes = self.list_nodes().await?;
        let record_state = |name: &str| -> Option<NodeRecord> {
            record
                .as_ref()
                .and_then(|r| r.nodes.iter().find(|n| n.name == name).cloned())
        };
        let wanted: Vec<String> = match &o.nodes {
            Selection::Names(names) => {
                let unknown: Vec<&str> = names
                    .iter()
                    .filter(|n| !nodes.iter().any(|x| x.metadata.name.as_ref() == Some(n)))
                    .map(String::as_str)
                    .collect();
                if !unknown.is_empty() {
                    reasons.push(format!(
                        "no such node: {} (the cluster has {})",
                        unknown.join(", "),
                        nodes
                            .iter()
                            .filter_map(|n| n.metadata.name.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                names.clone()
            }
            Selection::All | Selection::Recorded => nodes
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
        };
        let mut states = BTreeMap::new();
        for n in &nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            match NodeState::of(n.metadata.annotations.as_ref()) {
                Ok(s) => {
                    states.insert(name, s);
                }
                Err(e) => reasons.push(format!("node {name}: {e}")),
            }
        }
        let todo: Vec<String> = wanted
            .iter()
            .filter(|n| states.get(*n).is_some_and(|s| *s != NodeState::Done))
            .cloned()
            .collect();
        let not_ready: Vec<&str> = todo
            .iter()
            .filter(|name| {
                nodes
                    .iter()
                    .find(|n| n.metadata.name.as_ref() == Some(*name))
                    .is_some_and(|n| !node_ready(n))
            })
            .map(String::as_str)
            .collect();
        if !not_ready.is_empty() {
            reasons.push(format!(
                "nodes not Ready: {} (a node is migrated while Ready; fix them or leave them out \
                 with --nodes)",
                not_ready.join(", ")
            ));
        }
        let ready_schedulable = nodes
            .iter()
            .filter(|n| {
                node_ready(n)
                    && !n
                        .spec
                        .as_ref()
                        .and_then(|s| s.unschedulable)
                        .unwrap_or(false)
            })
            .count();
        if nodes.len() > 1 && o.max_unavailable >= ready_schedulable && !todo.is_empty() {
            reasons.push(format!(
                "--max-unavailable {} would cordon every schedulable Ready node ({} of {}); \
                 use a smaller value",
                o.max_unavailable,
                ready_schedulable,
                nodes.len()
            ));
        }
        // The agents report kube-proxy replacement (and will verify it).
        let reports = self.agent_reports().await?;
        for name in &todo {
            match reports.get(name) {
                None => reasons.push(format!(
                    "no CiliumNode {name}: is the Cilium agent running on node {name}?"
                )),
                Some(a) if !a.contains_key(agent_report::KUBE_PROXY_REPLACEMENT) => {
                    reasons.push(format!(
                        "the agent on node {name} does not report kube-proxy replacement \
                         (annotation {} on CiliumNode {name}): this agent version cannot be \
                         migrated; upgrade Cilium first",
                        agent_report::KUBE_PROXY_REPLACEMENT
                    ))
                }
                Some(_) => {}
            }
        }
        if !reasons.is_empty() {
            return Err(MigrateError::Preflight(reasons));
        }
        if todo.is_empty()
            && wanted
                .iter()
                .all(|n| states.get(n) == Some(&NodeState::Done))
        {
            // Every wanted node is done; finish if the whole cluster is.
            if !states.values().all(|s| *s == NodeState::Done) {
                return Ok(Prepared::Nothing(format!(
                    "The selected nodes are migrated already; {} migrates the others",
                    o.cmd("--all")
                )));
            }
        }
        let (image, cluster_ip) = self.probe_target().await?;
        // Keep the recorded nodes (a partial migration), then the new ones in order.
        let mut planned: Vec<NodeRecord> =
            record.as_ref().map(|r| r.nodes.clone()).unwrap_or_default();
        for name in &todo {
            if !planned.iter().any(|n| &n.name == name) {
                let node = nodes
                    .iter()
                    .find(|n| n.metadata.name.as_ref() == Some(name));
                let unschedulable = node
                    .and_then(|n| n.spec.as_ref())
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false);
                planned.push(NodeRecord {
                    name: name.clone(),
                    state: states.get(name).copied().unwrap_or(NodeState::Pending),
                    // Cordoned by someone else, not by an earlier run of ours.
                    was_unschedulable: unschedulable
                        && record_state(name).is_none()
                        && states.get(name) == Some(&NodeState::Pending),
                });
            }
        }
        for n in &mut planned {
            n.state = states.get(&n.name).copied().unwrap_or(n.state);
        }
        let remaining: Vec<String> = states
            .iter()
            .filter(|(name, s)| **s != NodeState::Done && !todo.contains(name))
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Prepared::Plan(Box::new(Plan {
            action: Action::Migrate,
            record: Record {
                phase: Phase::Migrating,
                nodes: planned,
                kube_proxy: o.kube_proxy(),
                message: String::new(),
            },
            record_exists: record.is_some(),
            finish: remaining.is_empty(),
            remaining,
            todo,
            kube_proxy_selector: kube_proxy.as_ref().and_then(selector_string),
            image,
            cluster_ip,
            expect_services: true,
            namespace: ns.clone(),
            kube_proxy: o.kube_proxy(),
            max_unavailable: o.max_unavailable,
        })))
    }

    /// The API server's address as the `kubernetes` Endpoints name it, for the hint.
    async fn api_server_address(&self) -> (String, String) {
        use k8s_openapi::api::core::v1::Endpoints;
        let ep = Api::<Endpoints>::namespaced(self.client.clone(), "default")
            .get_opt("kubernetes")
            .await
            .ok()
            .flatten();
        let subset = ep
            .and_then(|e| e.subsets)
            .and_then(|s| s.into_iter().next());
        let ip = subset
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.first())
            .map(|a| a.ip.clone());
        let port = subset
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .map(|p| p.port.to_string());
        (
            ip.unwrap_or_else(|| "<API server address>".into()),
            port.unwrap_or_else(|| "<port>".into()),
        )
    }

    /// Current states of the recorded nodes (from their annotations); nodes deleted since
    /// are dropped.
    async fn current_states(&self, record: &mut Record) -> Result<Vec<Node>, MigrateError> {
        let nodes = self.list_nodes().await?;
        record.nodes.retain(|r| {
            nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(r.name.as_str()))
        });
        for r in &mut record.nodes {
            if let Some(n) = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(r.name.as_str()))
            {
                r.state = NodeState::of(n.metadata.annotations.as_ref())
                    .map_err(|e| MigrateError::Refused(format!("node {}: {e}", r.name)))?;
            }
        }
        Ok(nodes)
    }

    async fn plan_resume(&self, mut record: Record) -> Result<Prepared, MigrateError> {
        let o = &self.opts;
        let nodes = self.current_states(&mut record).await?;
        if let Some(n) = record
            .nodes
            .iter()
            .find(|n| n.state == NodeState::RollingBack)
        {
            return Err(MigrateError::Refused(format!(
                "node {} is being rolled back: {} finishes the rollback",
                n.name,
                o.cmd("--rollback")
            )));
        }
        let todo: Vec<String> = if record.phase == Phase::Finishing {
            Vec::new()
        } else {
            record
                .nodes
                .iter()
                .filter(|n| n.state != NodeState::Done)
                .map(|n| n.name.clone())
                .collect()
        };
        let remaining: Vec<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .filter(|name| !record.nodes.iter().any(|r| &r.name == name))
            .filter(|name| {
                nodes
                    .iter()
                    .find(|n| n.metadata.name.as_ref() == Some(name))
                    .and_then(|n| NodeState::of(n.metadata.annotations.as_ref()).ok())
                    != Some(NodeState::Done)
            })
            .collect();
        let kube_proxy = self.read_kube_proxy().await?;
        let (image, cluster_ip) = self.probe_target().await?;
        Ok(Prepared::Plan(Box::new(Plan {
            action: Action::Resume,
            record_exists: true,
            finish: remaining.is_empty(),
            remaining,
            todo,
            kube_proxy_selector: kube_proxy.as_ref().and_then(selector_string),
            image,
            cluster_ip,
            expect_services: true,
            namespace: o.namespace.clone(),
            kube_proxy: o.kube_proxy(),
            max_unavailable: o.max_unavailable,
            record,
        })))
    }

    async fn plan_rollback(&self, mut record: Record) -> Result<Prepared, MigrateError> {
        let o = &self.opts;
        self.current_states(&mut record).await?;
        let todo: Vec<String> = record
            .nodes
            .iter()
            .rev()
            .filter(|n| n.state != NodeState::Pending)
            .map(|n| n.name.clone())
            .collect();
        let kube_proxy = self.read_kube_proxy().await?;
        if kube_proxy.is_none() {
            return Err(MigrateError::Refused(format!(
                "DaemonSet {} is gone: nothing brings kube-proxy back. Reinstall it (e.g. \
                 `kubeadm init phase addon kube-proxy`), then run {} again",
                o.kube_proxy(),
                o.cmd("--rollback")
            )));
        }
        Ok(Prepared::Plan(Box::new(Plan {
            action: Action::Rollback,
            record_exists: true,
            finish: false,
            remaining: Vec::new(),
            todo,
            kube_proxy_selector: kube_proxy.as_ref().and_then(selector_string),
            image: None,
            cluster_ip: None,
            expect_services: true,
            namespace: o.namespace.clone(),
            kube_proxy: o.kube_proxy(),
            max_unavailable: 1,
            record,
        })))
    }
}
