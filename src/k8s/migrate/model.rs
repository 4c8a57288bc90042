//! The migration's vocabulary and its record on the cluster: per-node states (the
//! annotation on each Node), the phase and plan (the status ConfigMap), the nodeAffinity
//! that keeps kube-proxy off migrated nodes, and the check of what an agent reports on
//! its CiliumNode. Pure: no API calls.
use std::{collections::BTreeMap, fmt, str::FromStr};

use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
};
use serde::{Deserialize, Serialize};

/// The label that moves a node to kube-proxy replacement: the CiliumNodeConfig selects
/// it, kube-proxy's nodeAffinity excludes it.
pub const MIGRATION_LABEL: &str = "io.cilium.migration/kube-proxy-replacement";
/// Per-node progress, on the Node.
pub const STATE_ANNOTATION: &str = "io.cilium.migration/kube-proxy-replacement-state";
/// The CiliumNodeConfig (in Cilium's namespace) that turns kube-proxy replacement on for
/// labelled nodes.
pub const NODE_CONFIG: &str = "kube-proxy-replacement-migration";
/// The ConfigMap (in Cilium's namespace) holding the plan, the phase and node states.
pub const STATUS_CONFIGMAP: &str = "cilium-kube-proxy-migration";
/// Cilium's configuration.
pub const CILIUM_CONFIG: &str = "cilium-config";
/// The cilium-config key this migration turns on.
pub const KPR_KEY: &str = "kube-proxy-replacement";

/// What an agent publishes about itself, as annotations on its CiliumNode.
pub mod agent_report {
    /// "true" | "false": kube-proxy replacement is active.
    pub const KUBE_PROXY_REPLACEMENT: &str = "cilium.io/kube-proxy-replacement";
    /// Number of services in the agent's load-balancing maps.
    pub const SERVICES: &str = "cilium.io/services";
    /// Number of KUBE-* iptables chains left on the node.
    pub const KUBE_PROXY_CHAINS: &str = "cilium.io/kube-proxy-chains";
}

/// Where a node is, in order for a migration; `RollingBack` once its label was removed
/// by `--rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Not touched (no annotation).
    Pending,
    Cordoned,
    Labelled,
    KubeProxyGone,
    AgentRestarted,
    Verified,
    Done,
    RollingBack,
}

impl NodeState {
    pub const STEPS: [NodeState; 6] = [
        NodeState::Cordoned,
        NodeState::Labelled,
        NodeState::KubeProxyGone,
        NodeState::AgentRestarted,
        NodeState::Verified,
        NodeState::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Cordoned => "cordoned",
            NodeState::Labelled => "labelled",
            NodeState::KubeProxyGone => "kube-proxy-gone",
            NodeState::AgentRestarted => "agent-restarted",
            NodeState::Verified => "verified",
            NodeState::Done => "done",
            NodeState::RollingBack => "rolling-back",
        }
    }

    /// The state of a node with `annotations`; an unknown value is an error naming it.
    pub fn of(annotations: Option<&BTreeMap<String, String>>) -> Result<Self, String> {
        match annotations.and_then(|a| a.get(STATE_ANNOTATION)) {
            None => Ok(NodeState::Pending),
            Some(v) => v.parse(),
        }
    }
}

impl FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [NodeState::Pending, NodeState::RollingBack]
            .into_iter()
            .chain(NodeState::STEPS)
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown {STATE_ANNOTATION} value {s:?}; remove the annotation if the node \
                     was never migrated"
                )
            })
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the whole migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Nodes are being migrated.
    Migrating,
    /// A node failed; it is left cordoned (`--resume` or `--rollback`).
    Failed,
    /// The planned nodes are done, others still run kube-proxy.
    Partial,
    /// Every node is done; kube-proxy is being removed.
    Finishing,
    Done,
    RollingBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Migrating => "migrating",
            Phase::Failed => "failed",
            Phase::Partial => "partial",
            Phase::Finishing => "finishing",
            Phase::Done => "done",
            Phase::RollingBack => "rolling-back",
        }
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Phase::Migrating,
            Phase::Failed,
            Phase::Partial,
            Phase::Finishing,
            Phase::Done,
            Phase::RollingBack,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| format!("unknown phase {s:?}"))
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One planned node in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// The last state recorded here (the Node's annotation is the authority).
    pub state: NodeState,
    /// The node was cordoned before the migration: it stays cordoned.
    #[serde(default)]
    pub was_unschedulable: bool,
}

/// The status ConfigMap's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub phase: Phase,
    /// Planned nodes in migration order.
    pub nodes: Vec<NodeRecord>,
    /// `namespace/name` of the kube-proxy DaemonSet.
    pub kube_proxy: String,
    pub message: String,
}

impl Record {
    /// The ConfigMap's `data`: `phase`, `plan` (node names, in order), `nodes` (JSON:
    /// state per node), `kube-proxy`, `message`.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let plan: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        BTreeMap::from([
            ("phase".to_string(), self.phase.to_string()),
            ("plan".to_string(), plan.join(",")),
            (
                "nodes".to_string(),
                serde_json::to_string(&self.nodes).unwrap_or_default(),
            ),
            ("kube-proxy".to_string(), self.kube_proxy.clone()),
            ("message".to_string(), self.message.clone()),
        ])
    }

    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, String> {
        let get = |k: &str| data.get(k).cloned().unwrap_or_default();
        let phase = get("phase")
            .parse()
            .map_err(|e| format!("key phase: {e}"))?;
        let nodes = serde_json::from_str(&get("nodes")).map_err(|e| format!("key nodes: {e}"))?;
        Ok(Record {
            phase,
            nodes,
            kube_proxy: get("kube-proxy"),
            message: get("message"),
        })
    }

    pub fn set_state(&mut self, node: &str, state: NodeState) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.name == node) {
            n.state = state;
        }
    }
}

fn migration_requirement() -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: MIGRATION_LABEL.to_string(),
        operator: "NotIn".to_string(),
        values: Some(vec!["true".to_string()]),
    }
}

fn is_migration_requirement(r: &NodeSelectorRequirement) -> bool {
    r.key == MIGRATION_LABEL
}

/// kube-proxy's affinity with `MIGRATION_LABEL NotIn (true)` added to every required
/// node selector term (terms are ORed, so each must exclude migrated nodes), or a term
/// of its own when there is none. Unchanged when already there.
pub fn with_migration_affinity(affinity: Option<&Affinity>) -> Affinity {
    let mut a = affinity.cloned().unwrap_or_default();
    let na = a.node_affinity.get_or_insert_with(NodeAffinity::default);
    let required = na
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        let exprs = term.match_expressions.get_or_insert_with(Vec::new);
        exprs.retain(|r| !is_migration_requirement(r));
        exprs.push(migration_requirement());
    }
    a
}

/// kube-proxy's affinity without the migration's requirement (and without what became
/// empty through its removal). `None`: no affinity is left.
pub fn without_migration_affinity(affinity: Option<&Affinity>) -> Option<Affinity> {
    let mut a = affinity.cloned()?;
    if let Some(na) = &mut a.node_affinity {
        if let Some(req) = &mut na.required_during_scheduling_ignored_during_execution {
            for term in &mut req.node_selector_terms {
                if let Some(exprs) = &mut term.match_expressions {
                    exprs.retain(|r| !is_migration_requirement(r));
                    if exprs.is_empty() {
                        term.match_expressions = None;
                    }
                }
            }
            req.node_selector_terms
                .retain(|t| t.match_expressions.is_some() || t.match_fields.is_some());
            if req.node_selector_terms.is_empty() {
                na.required_during_scheduling_ignored_during_execution = None;
            }
        }
        if na
            .required_during_scheduling_ignored_during_execution
            .is_none()
            && na
                .preferred_during_scheduling_ignored_during_execution
                .is_none()
        {
            a.node_affinity = None;
        }
    }
    if a == Affinity::default() {
        None
    } else {
        Some(a)
    }
}

/// Whether an agent's CiliumNode annotations show kube-proxy replacement at work:
/// active, services programmed (when the cluster has any), no KUBE-* chains left.
/// `Err`: what is missing, for the user.
pub fn check_agent_report(
    annotations: &BTreeMap<String, String>,
    expect_services: bool,
) -> Result<(), String> {
    use agent_report::*;
    let get = |k: &str| {
        annotations
            .get(k)
            .ok_or_else(|| format!("the agent does not report {k} on its CiliumNode yet"))
    };
    let number = |k: &str| -> Result<u64, String> {
        let v = get(k)?;
        v.parse()
            .map_err(|_| format!("the agent reports {k}={v:?}, not a number"))
    };
    match get(KUBE_PROXY_REPLACEMENT)?.as_str() {
        "true" => {}
        v => {
            return Err(format!(
                "kube-proxy replacement is not active ({KUBE_PROXY_REPLACEMENT}={v:?})"
            ))
        }
    }
    if expect_services && number(SERVICES)? == 0 {
        return Err(format!(
            "the agent has no service in its load-balancing maps ({SERVICES}=0)"
        ));
    }
    match number(KUBE_PROXY_CHAINS)? {
        0 => Ok(()),
        n => Err(format!(
            "{n} KUBE-* iptables chains are left on the node ({KUBE_PROXY_CHAINS}={n})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn affinity(v: serde_json::Value) -> Affinity {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_affinity_is_added_to_every_term_and_removed_exactly() {
        let added = with_migration_affinity(None);
        assert_eq!(
            serde_json::to_value(&added).unwrap(),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": MIGRATION_LABEL, "operator": "NotIn", "values": ["true"]}]}
            ]}}})
        );
        assert_eq!(with_migration_affinity(Some(&added)), added, "idempotent");
        assert_eq!(without_migration_affinity(Some(&added)), None);

        let own = affinity(json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}]}
            ]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}
            ]
        }}));
        let added = with_migration_affinity(Some(&own));
        let terms = &added
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2);
        for t in terms {
            let e = t.match_expressions.as_ref().unwrap();
            assert_eq!(e.last().unwrap().key, MIGRATION_LABEL, "{t:?}");
        }
        assert_eq!(without_migration_affinity(Some(&added)), Some(own));
    }

    #[test]
    fn agent_reports_are_checked_with_reasons() {
        let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        use agent_report::*;
        let good = ann(&[
            (KUBE_PROXY_REPLACEMENT, "true"),
            (SERVICES, "12"),
            (KUBE_PROXY_CHAINS, "0"),
        ]);
        assert_eq!(check_agent_report(&good, true), Ok(()));
        let e = check_agent_report(&ann(&[]), true).unwrap_err();
        assert!(
            e.contains("does not report cilium.io/kube-proxy-replacement"),
            "{e}"
        );
        let e = check_agent_report(
            &ann(&[
                (KUBE_PROXY_REPLACEMENT, "false"),
                (SERVICES, "3"),
                (KUBE_PROXY_CHAINS, "0"),
            ]),
            true,
        )
        .unwrap_err();
        assert!(e.contains("not active"), "{e}");
        let no_services = ann(&[
            (KUBE_PROXY_REPLACEMENT, "true"),
            (SERVICES, "0"),
            (KUBE_PROXY_CHAINS, "0"),
        ]);
        assert!(check_agent_report(&no_services, true)
            .unwrap_err()
            .contains("no service"));
        assert_eq!(check_agent_report(&no_services, false), Ok(()));
        let chains = ann(&[
            (KUBE_PROXY_REPLACEMENT, "true"),
            (SERVICES, "3"),
            (KUBE_PROXY_CHAINS, "7"),
        ]);
        assert!(check_agent_report(&chains, true)
            .unwrap_err()
            .contains("7 KUBE-* iptables chains"));
    }

    #[test]
    fn states_and_the_record_round_trip() {
        for s in NodeState::STEPS {
            assert_eq!(s.as_str().parse::<NodeState>(), Ok(s));
        }
        assert!(NodeState::Cordoned < NodeState::Done);
        let e = "halfway".parse::<NodeState>().unwrap_err();
        assert!(e.contains("halfway") && e.contains(STATE_ANNOTATION), "{e}");
        let r = Record {
            phase: Phase::Failed,
            nodes: vec![NodeRecord {
                name: "n1".into(),
                state: NodeState::AgentRestarted,
                was_unschedulable: true,
            }],
            kube_proxy: "kube-system/kube-proxy".into(),
            message: "x".into(),
        };
        let data = r.to_data();
        assert_eq!(data["phase"], "failed");
        assert_eq!(data["plan"], "n1");
        assert_eq!(
            data["nodes"],
            r#"[{"name":"n1","state":"agent-restarted","wasUnschedulable":true}]"#
        );
        assert_eq!(Record::from_data(&data), Ok(r));
    }
}
