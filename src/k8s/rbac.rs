//! The Kubernetes API permissions of the agent and the operator: one table that the
//! install templates render into ClusterRoles and that tests check API use against.
use serde::Serialize;

/// One RBAC rule: these verbs on these resources of these API groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// API groups ("" is the core group).
    pub api_groups: &'static [&'static str],
    /// Resources, `name/subresource` for a subresource.
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

const READ: &[&str] = &["get", "list", "watch"];
const FULL: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// What the agent (DaemonSet `cilium`, ServiceAccount `cilium`) may do.
pub const AGENT_RULES: &[Rule] = &[
    // Pods, namespaces and nodes: labels -> identities, pod CIDRs, node addresses;
    // services: load balancing.
    Rule {
        api_groups: &[""],
        resources: &["pods", "namespaces", "nodes", "services"],
        verbs: READ,
    },
    Rule {
        api_groups: &["discovery.k8s.io"],
        resources: &["endpointslices"],
        verbs: READ,
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["networkpolicies"],
        verbs: READ,
    },
    // The agent writes its own node, its endpoints and the identities it allocates.
    Rule {
        api_groups: &["cilium.io"],
        resources: &[
            "ciliumendpoints",
            "ciliumnodes",
            "ciliumnodes/status",
            "ciliumidentities",
        ],
        verbs: FULL,
    },
    Rule {
        api_groups: &["cilium.io"],
        resources: &[
            "ciliumnetworkpolicies",
            "ciliumclusterwidenetworkpolicies",
            "ciliumnodeconfigs",
        ],
        verbs: READ,
    },
];

/// What the operator (Deployment `cilium-operator`, ServiceAccount `cilium-operator`) may do.
pub const OPERATOR_RULES: &[Rule] = &[
    Rule {
        api_groups: &[""],
        resources: &["nodes"],
        verbs: READ,
    },
    // Garbage collection of endpoints and identities: which pods still exist.
    Rule {
        api_groups: &[""],
        resources: &["pods"],
        verbs: &["list", "watch"],
    },
    // Cluster-pool IPAM: pod CIDRs into CiliumNode spec, allocation state into status.
    Rule {
        api_groups: &["cilium.io"],
        resources: &["ciliumnodes", "ciliumnodes/status"],
        verbs: FULL,
    },
    Rule {
        api_groups: &["cilium.io"],
        resources: &["ciliumidentities", "ciliumendpoints"],
        verbs: &["list", "watch", "delete"],
    },
    // Leader election among the replicas.
    Rule {
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        verbs: &["get", "create", "update"],
    },
    // The operator registers (and upgrades) the CRDs.
    Rule {
        api_groups: &["apiextensions.k8s.io"],
        resources: &["customresourcedefinitions"],
        verbs: &["get", "list", "create", "update"],
    },
];

/// Whether `rules` allow `verb` on `resource` (`name` or `name/subresource`) of `group`.
pub fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.contains(&group) && r.resources.contains(&resource) && r.verbs.contains(&verb)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_reads_policies_but_cannot_write_them() {
        assert!(allows(
            AGENT_RULES,
            "cilium.io",
            "ciliumnetworkpolicies",
            "watch"
        ));
        assert!(!allows(
            AGENT_RULES,
            "cilium.io",
            "ciliumnetworkpolicies",
            "update"
        ));
        assert!(allows(
            AGENT_RULES,
            "cilium.io",
            "ciliumnodes/status",
            "patch"
        ));
        assert!(!allows(AGENT_RULES, "", "secrets", "get"));
        assert!(!allows(AGENT_RULES, "", "pods", "delete"));
    }

    #[test]
    fn operator_gc_and_leases() {
        assert!(allows(
            OPERATOR_RULES,
            "cilium.io",
            "ciliumidentities",
            "delete"
        ));
        assert!(!allows(
            OPERATOR_RULES,
            "cilium.io",
            "ciliumidentities",
            "create"
        ));
        assert!(allows(
            OPERATOR_RULES,
            "coordination.k8s.io",
            "leases",
            "update"
        ));
        assert!(!allows(
            OPERATOR_RULES,
            "coordination.k8s.io",
            "leases",
            "delete"
        ));
    }

    #[test]
    fn no_wildcards() {
        for r in AGENT_RULES.iter().chain(OPERATOR_RULES) {
            for s in r.api_groups.iter().chain(r.resources).chain(r.verbs) {
                assert!(!s.contains('*'), "wildcard in {r:?}");
            }
        }
    }
}
