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

const WATCH: &[&str] = &["list", "watch"];

/// What the agent (DaemonSet `cilium`, ServiceAccount `cilium`) may do: exactly the
/// calls of [`AGENT_CALLS`] (a test checks both ways).
pub const AGENT_RULES: &[Rule] = &[
    // The Kubernetes source's watchers (src/agent/source_k8s.rs): pods of this node,
    // namespaces -> labels and identities; services and endpoint slices -> load
    // balancing; policies.
    Rule {
        api_groups: &[""],
        resources: &["pods", "namespaces", "services"],
        verbs: WATCH,
    },
    // This node's Node object: its InternalIP and (ipam kubernetes) its pod CIDR.
    Rule {
        api_groups: &[""],
        resources: &["nodes"],
        verbs: &["get"],
    },
    Rule {
        api_groups: &["discovery.k8s.io"],
        resources: &["endpointslices"],
        verbs: WATCH,
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["networkpolicies"],
        verbs: WATCH,
    },
    Rule {
        api_groups: &["cilium.io"],
        resources: &["ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"],
        verbs: WATCH,
    },
    // The agent applies its own CiliumNode (server-side apply: patch, and create when
    // the object is new) and reads the others (routes, tunnel endpoints).
    Rule {
        api_groups: &["cilium.io"],
        resources: &["ciliumnodes"],
        verbs: &["get", "list", "watch", "create", "patch"],
    },
    // CiliumNodeConfigs of the agent's namespace: per-node overrides of cilium-config,
    // read once at start (src/agent/node_config.rs; kube-proxy migration uses them).
    Rule {
        api_groups: &["cilium.io"],
        resources: &["ciliumnodeconfigs"],
        verbs: &["list"],
    },
    // Its endpoints, applied and deleted; the other nodes' endpoints -> ipcache.
    Rule {
        api_groups: &["cilium.io"],
        resources: &["ciliumendpoints"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    // The identities it allocates (src/agent/identity_k8s.rs: a watcher's cache, lists
    // before it is synced, creates); the operator deletes them.
    Rule {
        api_groups: &["cilium.io"],
        resources: &["ciliumidentities"],
        verbs: &["get", "list", "watch", "create"],
    },
];

/// Every call the agent makes, as (group, resource, verb): the Kubernetes source's
/// watchers, the publication of its CiliumNode and CiliumEndpoints
/// (src/agent/publish_k8s.rs, server-side apply: a patch that creates a missing object,
/// which the API server authorizes as create too) and the CiliumIdentity allocator. The
/// API-double tests check that every request they see is listed here.
pub const AGENT_CALLS: &[(&str, &str, &str)] = &[
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "nodes", "get"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("networking.k8s.io", "networkpolicies", "list"),
    ("networking.k8s.io", "networkpolicies", "watch"),
    ("cilium.io", "ciliumnetworkpolicies", "list"),
    ("cilium.io", "ciliumnetworkpolicies", "watch"),
    ("cilium.io", "ciliumclusterwidenetworkpolicies", "list"),
    ("cilium.io", "ciliumclusterwidenetworkpolicies", "watch"),
    ("cilium.io", "ciliumnodes", "get"),
    ("cilium.io", "ciliumnodes", "list"),
    ("cilium.io", "ciliumnodes", "watch"),
    ("cilium.io", "ciliumnodes", "patch"),
    ("cilium.io", "ciliumnodes", "create"),
    ("cilium.io", "ciliumnodeconfigs", "list"),
    ("cilium.io", "ciliumendpoints", "list"),
    ("cilium.io", "ciliumendpoints", "watch"),
    ("cilium.io", "ciliumendpoints", "patch"),
    ("cilium.io", "ciliumendpoints", "create"),
    ("cilium.io", "ciliumendpoints", "delete"),
    ("cilium.io", "ciliumidentities", "get"),
    ("cilium.io", "ciliumidentities", "list"),
    ("cilium.io", "ciliumidentities", "watch"),
    ("cilium.io", "ciliumidentities", "create"),
];

/// Whether `(group, resource, verb)` is one of the agent's listed calls.
pub fn agent_calls(group: &str, resource: &str, verb: &str) -> bool {
    AGENT_CALLS
        .iter()
        .any(|(g, r, v)| *g == group && *r == resource && *v == verb)
}

/// Fails the test unless every request was allowed to the agent's ServiceAccount and is
/// one of its listed calls.
#[cfg(test)]
pub fn assert_agent_may(reqs: &[crate::k8s::fake_api::Recorded]) {
    for r in reqs {
        assert!(
            allows(AGENT_RULES, &r.group, &r.resource, &r.verb),
            "agent RBAC forbids {} {} ({} {})",
            r.verb,
            r.resource,
            r.method,
            r.path
        );
        assert!(
            agent_calls(&r.group, &r.resource, &r.verb),
            "{} {} ({} {}) is missing from rbac::AGENT_CALLS",
            r.verb,
            r.resource,
            r.method,
            r.path
        );
    }
}

/// What the operator (Deployment `cilium-operator`, ServiceAccount `cilium-operator`) may
/// do: exactly the calls of [`OPERATOR_CALLS`] (a test checks both ways).
pub const OPERATOR_RULES: &[Rule] = &[
    // The CiliumEndpoint collector's watcher: which pods still exist (metadata only).
    Rule {
        api_groups: &[""],
        resources: &["pods"],
        verbs: WATCH,
    },
    // Cluster-pool IPAM (src/operator/ipam.rs): a watcher of the CiliumNodes, pod CIDRs
    // into their spec, allocation errors into their status.
    Rule {
        api_groups: &["cilium.io"],
        resources: &["ciliumnodes"],
        verbs: &["list", "watch", "patch"],
    },
    Rule {
        api_groups: &["cilium.io"],
        resources: &["ciliumnodes/status"],
        verbs: &["patch"],
    },
    // Garbage collection (src/operator/gc.rs): watchers, and deletes of what is unused.
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
];

/// Every call the operator makes, as (group, resource, verb): its watchers (a list,
/// then watches), the IPAM writes, the collectors' deletes and leader election. The
/// API-double tests check that every request they see is listed here.
pub const OPERATOR_CALLS: &[(&str, &str, &str)] = &[
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("cilium.io", "ciliumnodes", "list"),
    ("cilium.io", "ciliumnodes", "watch"),
    ("cilium.io", "ciliumnodes", "patch"),
    ("cilium.io", "ciliumnodes/status", "patch"),
    ("cilium.io", "ciliumidentities", "list"),
    ("cilium.io", "ciliumidentities", "watch"),
    ("cilium.io", "ciliumidentities", "delete"),
    ("cilium.io", "ciliumendpoints", "list"),
    ("cilium.io", "ciliumendpoints", "watch"),
    ("cilium.io", "ciliumendpoints", "delete"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
];

/// Whether `(group, resource, verb)` is one of the operator's listed calls.
pub fn operator_calls(group: &str, resource: &str, verb: &str) -> bool {
    OPERATOR_CALLS
        .iter()
        .any(|(g, r, v)| *g == group && *r == resource && *v == verb)
}

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
        assert!(allows(AGENT_RULES, "cilium.io", "ciliumnodes", "patch"));
        assert!(!allows(
            AGENT_RULES,
            "cilium.io",
            "ciliumnodes/status",
            "patch"
        ));
        assert!(!allows(AGENT_RULES, "", "secrets", "get"));
        assert!(!allows(AGENT_RULES, "", "pods", "delete"));
    }

    /// Every grant is a call the agent makes, and every call is granted.
    #[test]
    fn agent_rules_are_exactly_its_calls() {
        for (g, r, v) in AGENT_CALLS {
            assert!(allows(AGENT_RULES, g, r, v), "{v} {g}/{r} is not granted");
        }
        for rule in AGENT_RULES {
            for g in rule.api_groups {
                for r in rule.resources {
                    for v in rule.verbs {
                        assert!(
                            agent_calls(g, r, v),
                            "{v} {g}/{r} is granted but the agent never calls it"
                        );
                    }
                }
            }
        }
    }

    /// Every grant is a call the operator makes, and every call is granted.
    #[test]
    fn operator_rules_are_exactly_its_calls() {
        for (g, r, v) in OPERATOR_CALLS {
            assert!(
                allows(OPERATOR_RULES, g, r, v),
                "{v} {g}/{r} is not granted"
            );
        }
        for rule in OPERATOR_RULES {
            for g in rule.api_groups {
                for r in rule.resources {
                    for v in rule.verbs {
                        assert!(
                            operator_calls(g, r, v),
                            "{v} {g}/{r} is granted but the operator never calls it"
                        );
                    }
                }
            }
        }
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
