//! Security labels and identities: what a policy can select, keyed "source:key" as in Cilium.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Label source of Kubernetes-derived labels.
pub const SOURCE_K8S: &str = "k8s";
/// Label source of reserved (Cilium-defined) labels such as "reserved:host".
pub const SOURCE_RESERVED: &str = "reserved";
/// Label source of CIDR identity labels.
pub const SOURCE_CIDR: &str = "cidr";
/// Selector pseudo-source matching a key from any source.
pub const SOURCE_ANY: &str = "any";

/// Pod label carrying the pod's namespace.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix under which namespace labels appear in pod identities.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Pod label carrying the pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// Pod label carrying the cluster name.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// Prefix of the pod labels Cilium derives itself (dropped from the pod's own labels).
pub const CILIUM_OWNED_PREFIX: &str = "io.cilium.k8s";
/// Namespace label the Kubernetes API server sets on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Security-relevant labels, keyed "source:key" e.g. "k8s:app",
/// "k8s:io.kubernetes.pod.namespace", "reserved:host", "cidr:10.0.0.0/8".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    /// Pod labels + namespace (+ service account if Some) as Cilium derives them:
    /// "k8s:<key>"=<value> for each pod label, "k8s:io.kubernetes.pod.namespace"=<ns>,
    /// "k8s:io.cilium.k8s.policy.serviceaccount"=<sa>, "k8s:io.cilium.k8s.policy.cluster"=<cluster>,
    /// and namespace labels as "k8s:io.cilium.k8s.namespace.labels.<key>"=<value>.
    ///
    /// The namespace label "kubernetes.io/metadata.name"=<ns>, which the API server puts on
    /// every namespace, is added when `ns_labels` lacks it. Pod labels starting with
    /// "io.cilium.k8s" are dropped and the namespace label is always the real one, as Cilium
    /// sanitizes pod labels.
    pub fn for_pod(
        namespace: &str,
        pod_labels: &BTreeMap<String, String>,
        ns_labels: &BTreeMap<String, String>,
        service_account: Option<&str>,
        cluster: &str,
    ) -> Labels {
        let mut l = Labels::default();
        // Labels Cilium owns cannot come from the pod (a pod must not claim another
        // namespace's labels, service account or cluster).
        for (k, v) in pod_labels
            .iter()
            .filter(|(k, _)| !k.starts_with(CILIUM_OWNED_PREFIX))
        {
            l.insert(SOURCE_K8S, k, v);
        }
        for (k, v) in ns_labels {
            l.insert(SOURCE_K8S, &format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
        }
        let ns_name_key = format!("{NAMESPACE_LABELS_PREFIX}{NAMESPACE_NAME_LABEL}");
        if !ns_labels.contains_key(NAMESPACE_NAME_LABEL) {
            l.insert(SOURCE_K8S, &ns_name_key, namespace);
        }
        l.insert(SOURCE_K8S, POD_NAMESPACE_LABEL, namespace);
        if let Some(sa) = service_account {
            l.insert(SOURCE_K8S, SERVICE_ACCOUNT_LABEL, sa);
        }
        l.insert(SOURCE_K8S, CLUSTER_LABEL, cluster);
        l
    }

    /// The labels of a reserved identity: {"reserved:<name>": ""}.
    pub fn reserved(name: &str) -> Labels {
        let mut l = Labels::default();
        l.insert(SOURCE_RESERVED, name, "");
        l
    }

    /// The labels of a CIDR identity: "cidr:<prefix>" (':' in IPv6 prefixes written as '-',
    /// as Cilium does) plus "reserved:world".
    pub fn cidr(net: &IpNet) -> Labels {
        let mut l = Labels::default();
        l.insert(SOURCE_CIDR, &net.to_string().replace(':', "-"), "");
        l.insert(
            SOURCE_RESERVED,
            reserved::name(reserved::WORLD).unwrap_or("world"),
            "",
        );
        l
    }

    /// Adds "source:key"=value.
    pub fn insert(&mut self, source: &str, key: &str, value: &str) {
        self.0.insert(format!("{source}:{key}"), value.to_string());
    }

    /// The value of a "source:key" label.
    pub fn get(&self, key_with_source: &str) -> Option<&str> {
        self.0.get(key_with_source).map(String::as_str)
    }

    /// Cilium's printed form: "k8s:app=web", "reserved:host" (sorted), one per item.
    pub fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect()
    }

    /// Iterates (source, key, value) triples.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.0.iter().map(|(k, v)| {
            let (src, key) = split_label_key(k);
            (src, key, v.as_str())
        })
    }
}

/// Splits a stored label key "source:key" at the first ':'; a key without ':' has source "".
pub fn split_label_key(k: &str) -> (&str, &str) {
    k.split_once(':').unwrap_or(("", k))
}

/// Cilium's reserved identity numbers.
pub mod reserved {
    /// The local host (and, for host firewall, the node itself).
    pub const HOST: u32 = 1;
    /// Anything outside the cluster not covered by a CIDR identity.
    pub const WORLD: u32 = 2;
    /// Endpoints not managed by Cilium.
    pub const UNMANAGED: u32 = 3;
    /// Cilium health endpoints.
    pub const HEALTH: u32 = 4;
    /// Endpoints whose identity is not yet resolved.
    pub const INIT: u32 = 5;
    /// Other nodes of the cluster.
    pub const REMOTE_NODE: u32 = 6;
    /// The Kubernetes API server.
    pub const KUBE_APISERVER: u32 = 7;
    /// The ingress (Envoy) proxy.
    pub const INGRESS: u32 = 8;
    /// IPv4 world in dual-stack clusters.
    pub const WORLD_IPV4: u32 = 9;
    /// IPv6 world in dual-stack clusters.
    pub const WORLD_IPV6: u32 = 10;
    /// First identity number of locally allocated CIDR identities.
    pub const FIRST_CIDR: u32 = 1 << 24;

    /// All reserved identities with their names.
    pub const ALL: [(u32, &str); 10] = [
        (HOST, "host"),
        (WORLD, "world"),
        (UNMANAGED, "unmanaged"),
        (HEALTH, "health"),
        (INIT, "init"),
        (REMOTE_NODE, "remote-node"),
        (KUBE_APISERVER, "kube-apiserver"),
        (INGRESS, "ingress"),
        (WORLD_IPV4, "world-ipv4"),
        (WORLD_IPV6, "world-ipv6"),
    ];

    /// The name of a reserved identity ("host", "world", ...).
    pub fn name(id: u32) -> Option<&'static str> {
        ALL.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
    }

    /// The number of a reserved identity name.
    pub fn id(name: &str) -> Option<u32> {
        ALL.iter().find(|(_, n)| *n == name).map(|(i, _)| *i)
    }
}

/// What the resolver knows about every identity.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityKind {
    /// A reserved identity: "host", "world", "unmanaged", "health", "init", "remote-node",
    /// "kube-apiserver", "ingress", "world-ipv4", "world-ipv6".
    Reserved(&'static str),
    /// A workload (pod) identity.
    Endpoint,
    /// A CIDR identity for one prefix referenced by policy.
    Cidr(IpNet),
}

/// One identity: number, labels and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityInfo {
    /// Identity number.
    pub id: u32,
    /// Identity labels.
    pub labels: Labels,
    /// Identity kind.
    pub kind: IdentityKind,
}

impl IdentityInfo {
    /// The reserved identity with this number, if there is one.
    pub fn reserved(id: u32) -> Option<IdentityInfo> {
        let name = reserved::name(id)?;
        Some(IdentityInfo {
            id,
            labels: Labels::reserved(name),
            kind: IdentityKind::Reserved(name),
        })
    }

    /// A CIDR identity.
    pub fn cidr(id: u32, net: IpNet) -> IdentityInfo {
        IdentityInfo {
            id,
            labels: Labels::cidr(&net),
            kind: IdentityKind::Cidr(net),
        }
    }

    /// A workload identity.
    pub fn endpoint(id: u32, labels: Labels) -> IdentityInfo {
        IdentityInfo {
            id,
            labels,
            kind: IdentityKind::Endpoint,
        }
    }

    /// Whether this identity carries the reserved label of `name` (or is that reserved identity).
    pub fn is_reserved(&self, name: &str) -> bool {
        matches!(self.kind, IdentityKind::Reserved(n) if n == name)
            || self
                .labels
                .get(&format!("{SOURCE_RESERVED}:{name}"))
                .is_some()
    }
}
