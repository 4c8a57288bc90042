//! Cilium's custom resources (group `cilium.io`, version `v2`) as Rust types; their
//! CustomResourceDefinitions, with OpenAPI v3 structural schemas, are generated from them.
//!
//! Field names follow upstream Cilium's `cilium.io/v2` API so existing objects and tools
//! keep working. CiliumNodeConfig is served as `v2` (as in Cilium 1.16+, not the older
//! `v2alpha1`). CiliumIdentity and CiliumEndpoint have no `spec`, as upstream.
use std::collections::BTreeMap;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "cilium.io";

// ---------------------------------------------------------------- CiliumNode

/// A node as Cilium sees it: its addresses and its pod CIDRs (written by the agent; in
/// cluster-pool IPAM the operator fills `spec.ipam.podCIDRs`).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNode",
    doc = "A node as Cilium sees it: addresses, health endpoint and pod CIDRs.",
    label("app.kubernetes.io/part-of", "cilium"),
    plural = "ciliumnodes",
    shortname = "cn",
    shortname = "ciliumn",
    category = "cilium",
    status = "CiliumNodeStatus",
    printcolumn = r#"{"name":"CiliumInternalIP","type":"string","jsonPath":".spec.addresses[?(@.type==\"CiliumInternalIP\")].ip"}"#,
    printcolumn = r#"{"name":"InternalIP","type":"string","jsonPath":".spec.addresses[?(@.type==\"InternalIP\")].ip"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct CiliumNodeSpec {
    /// Identifier of the node's machine (cloud instance id).
    #[serde(
        rename = "instance-id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub instance_id: Option<String>,
    /// The node's addresses (InternalIP, ExternalIP, CiliumInternalIP: the router address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// Addresses of the node's health endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthAddressing>,
    /// Addresses of the node's ingress endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<HealthAddressing>,
    /// Transparent encryption key index of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    /// IP address management of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<NodeIpamSpec>,
    /// Boot id of the node (a change means the node rebooted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootid: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct NodeAddress {
    /// InternalIP, ExternalIP, Hostname or CiliumInternalIP.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct HealthAddressing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct EncryptionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct NodeIpamSpec {
    /// Pod CIDRs of the node (cluster-pool IPAM: set by the operator).
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// Addresses available for allocation (address -> owner), for IPAM modes with
    /// individually handed-out addresses.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pool: BTreeMap<String, AllocationIp>,
    #[serde(
        rename = "pre-allocate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pre_allocate: Option<i64>,
    #[serde(
        rename = "min-allocate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub min_allocate: Option<i64>,
    #[serde(
        rename = "max-allocate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_allocate: Option<i64>,
    #[serde(
        rename = "max-above-watermark",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_above_watermark: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct AllocationIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct CiliumNodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<NodeIpamStatus>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct NodeIpamStatus {
    /// Addresses in use (address -> owner).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used: BTreeMap<String, AllocationIp>,
    /// State of each pod CIDR of the node, as the agent reports it.
    #[serde(
        rename = "pod-cidrs",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub pod_cidrs: BTreeMap<String, PodCidrStatus>,
    /// Error of the operator while allocating for this node.
    #[serde(
        rename = "operator-status",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub operator_status: Option<OperatorStatus>,
    /// Addresses being released (address -> marked-for-release, ready-for-release,
    /// do-not-release, released).
    #[serde(
        rename = "release-ips",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub release_ips: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct PodCidrStatus {
    pub status: PodCidrState,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PodCidrState {
    /// The agent no longer uses the CIDR: the operator may take it back.
    Released,
    /// Every address of the CIDR is allocated.
    Depleted,
    #[default]
    InUse,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct OperatorStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---------------------------------------------------------------- CiliumIdentity

/// A security identity: the numeric id is the object's name, the labels are the
/// security-relevant labels of every endpoint that has it.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumIdentity",
    doc = "A security identity: the name is the numeric id, security-labels the labels it stands for.",
    label("app.kubernetes.io/part-of", "cilium"),
    plural = "ciliumidentities",
    shortname = "ciliumid",
    category = "cilium",
    no_spec,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".metadata.labels.io\\.kubernetes\\.pod\\.namespace"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct CiliumIdentityFields {
    /// The labels that make up the identity, in `source:key=value` form as keys.
    #[serde(rename = "security-labels")]
    pub security_labels: BTreeMap<String, String>,
}

// ---------------------------------------------------------------- CiliumEndpoint

/// An endpoint (pod) managed by an agent: its identity, addresses and policy state.
/// The agent writes the whole object, `status` included: unlike the other resources it
/// has no status subresource (as upstream), see [`crds`].
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumEndpoint",
    doc = "An endpoint (pod) managed by a Cilium agent: identity, addresses and policy state.",
    label("app.kubernetes.io/part-of", "cilium"),
    plural = "ciliumendpoints",
    shortname = "cep",
    shortname = "ciliumep",
    category = "cilium",
    namespaced,
    no_spec,
    status = "EndpointStatus",
    printcolumn = r#"{"name":"Security Identity","type":"integer","jsonPath":".status.identity.id"}"#,
    printcolumn = r#"{"name":"Endpoint State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"IPv4","type":"string","jsonPath":".status.networking.addressing[0].ipv4"}"#,
    printcolumn = r#"{"name":"IPv6","type":"string","jsonPath":".status.networking.addressing[0].ipv6"}"#
)]
pub struct CiliumEndpointFields {}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct EndpointStatus {
    /// Endpoint id, unique on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<EndpointIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<EndpointNetworking>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    /// Life-cycle state: waiting-for-identity, not-ready, regenerating, ready, disconnecting, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(rename = "named-ports", default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<EndpointPolicy>,
    #[serde(
        rename = "external-identifiers",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub external_identifiers: Option<ExternalIdentifiers>,
    #[serde(
        rename = "service-account",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct EndpointIdentity {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct EndpointNetworking {
    pub addressing: Vec<AddressPair>,
    /// The node's address (where the endpoint is reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct AddressPair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct NamedPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// TCP, UDP, SCTP or ANY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct EndpointPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<EndpointPolicyDirection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EndpointPolicyDirection>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct EndpointPolicyDirection {
    /// Whether policy is enforced in this direction.
    pub enforcing: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct ExternalIdentifiers {
    #[serde(
        rename = "container-id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    #[serde(
        rename = "cni-attachment-id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cni_attachment_id: Option<String>,
    #[serde(
        rename = "k8s-namespace",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub k8s_namespace: Option<String>,
    #[serde(
        rename = "k8s-pod-name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub k8s_pod_name: Option<String>,
    /// `namespace/name` of the pod.
    #[serde(rename = "pod-name", default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

// ---------------------------------------------------------------- CiliumNodeConfig

/// Per-node overrides of `cilium-config` keys, for the nodes its selector matches.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNodeConfig",
    doc = "Overrides of cilium-config keys for the nodes the selector matches.",
    label("app.kubernetes.io/part-of", "cilium"),
    plural = "ciliumnodeconfigs",
    category = "cilium",
    namespaced
)]
pub struct CiliumNodeConfigSpec {
    /// cilium-config keys and the values they take on the selected nodes.
    pub defaults: BTreeMap<String, String>,
    /// The nodes this applies to (an empty selector selects every node).
    #[serde(rename = "nodeSelector")]
    pub node_selector: LabelSelector,
}

// ---------------------------------------------------------------- policies

/// A namespaced network policy in Cilium's rule language: one rule in `spec` and/or
/// several in `specs`, at the top level of the object as upstream. Rules stay JSON here;
/// `crate::policy` parses them.
///
/// The rule body's schema names the rule's top-level fields (with real schemas for
/// `endpointSelector` and `nodeSelector`) but keeps the rest of the rule language
/// (`ingress`, `egress`, their peers, ports, L7 rules ...) as
/// `x-kubernetes-preserve-unknown-fields`: the agent's policy parser is what validates
/// rules, and reports errors on the policy.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNetworkPolicy",
    doc = "A namespaced Cilium network policy: one rule in spec and/or several in specs.",
    label("app.kubernetes.io/part-of", "cilium"),
    plural = "ciliumnetworkpolicies",
    shortname = "cnp",
    shortname = "ciliumnp",
    category = "cilium",
    category = "ciliumpolicy",
    namespaced,
    no_spec,
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct CiliumNetworkPolicyRules {
    /// One rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rule_schema")]
    pub spec: Option<serde_json::Value>,
    /// Several rules, all in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules_schema")]
    pub specs: Option<Vec<serde_json::Value>>,
}

/// A cluster-wide network policy: as [`CiliumNetworkPolicy`], its endpoint selectors
/// match in every namespace, and `nodeSelector` rules make it a host policy.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumClusterwideNetworkPolicy",
    doc = "A cluster-wide Cilium network policy: one rule in spec and/or several in specs.",
    label("app.kubernetes.io/part-of", "cilium"),
    plural = "ciliumclusterwidenetworkpolicies",
    shortname = "ccnp",
    category = "cilium",
    category = "ciliumpolicy",
    no_spec,
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct CiliumClusterwideNetworkPolicyRules {
    /// One rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rule_schema")]
    pub spec: Option<serde_json::Value>,
    /// Several rules, all in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules_schema")]
    pub specs: Option<Vec<serde_json::Value>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
pub struct PolicyStatus {
    /// Conditions of the policy (e.g. Valid, with the parser's error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PolicyCondition>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn open_object(description: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": description,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn rule_schema(generator: &mut SchemaGenerator) -> Schema {
    let selector = generator.subschema_for::<LabelSelector>();
    let peers = |what: &str| {
        serde_json::json!({
            "type": "array",
            "description": what,
            "items": open_object("A peer rule: from/to endpoints, entities, CIDRs, with ports."),
        })
    };
    json_schema!({
        "type": "object",
        "description": "A policy rule. Fields beyond those listed are kept as written and checked by the agent's policy parser.",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "endpointSelector": selector,
            "nodeSelector": generator.subschema_for::<LabelSelector>(),
            "description": { "type": "string", "description": "Free text about the rule." },
            "ingress": peers("Traffic allowed into the selected endpoints."),
            "ingressDeny": peers("Traffic denied into the selected endpoints."),
            "egress": peers("Traffic allowed out of the selected endpoints."),
            "egressDeny": peers("Traffic denied out of the selected endpoints."),
            "enableDefaultDeny": {
                "type": "object",
                "description": "Whether selecting an endpoint denies what the rule does not allow.",
                "properties": {
                    "ingress": { "type": "boolean" },
                    "egress": { "type": "boolean" },
                },
            },
            "labels": {
                "type": "array",
                "description": "Labels identifying the rule.",
                "items": {
                    "type": "object",
                    "required": ["key"],
                    "properties": {
                        "key": { "type": "string" },
                        "value": { "type": "string" },
                        "source": { "type": "string" },
                    },
                },
            },
        },
    })
}

fn rules_schema(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Several rules, all in force.",
        "items": rule_schema(generator),
    })
}

/// Every CRD the install creates, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut endpoint = CiliumEndpoint::crd();
    // The agent writes `status` with the rest of the object: a status subresource would
    // make the API server drop it from every update.
    for v in &mut endpoint.spec.versions {
        v.subresources = None;
    }
    vec![
        CiliumNetworkPolicy::crd(),
        CiliumClusterwideNetworkPolicy::crd(),
        CiliumNode::crd(),
        CiliumIdentity::crd(),
        endpoint,
        CiliumNodeConfig::crd(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::strict;

    /// Objects shaped as upstream Cilium writes them deserialize with no field lost.
    fn roundtrip<T: serde::de::DeserializeOwned + Serialize>(yaml: &str) -> T {
        let v: serde_json::Value = serde_yaml::from_str(yaml).expect("test YAML");
        strict::from_json(&v).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    #[test]
    fn cilium_node() {
        let n: CiliumNode = roundtrip(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNode
metadata: {name: node1}
spec:
  addresses:
  - {type: InternalIP, ip: 192.168.1.10}
  - {type: CiliumInternalIP, ip: 10.0.1.1}
  health: {ipv4: 10.0.1.20}
  encryption: {key: 0}
  ipam:
    podCIDRs: [10.0.1.0/24]
  bootid: 5e0a3e0e-0000-4000-8000-000000000000
status:
  ipam:
    pod-cidrs:
      10.0.1.0/24: {status: in-use}
    operator-status: {error: ""}
"#,
        );
        assert_eq!(
            n.spec.ipam.as_ref().map(|i| i.pod_cidrs.clone()),
            Some(vec!["10.0.1.0/24".to_string()])
        );
        let st = n.status.and_then(|s| s.ipam).expect("status");
        assert_eq!(st.pod_cidrs["10.0.1.0/24"].status, PodCidrState::InUse);
    }

    #[test]
    fn cilium_identity_and_endpoint_have_no_spec() {
        let id: CiliumIdentity = roundtrip(
            r#"
apiVersion: cilium.io/v2
kind: CiliumIdentity
metadata:
  name: "12345"
  labels: {io.kubernetes.pod.namespace: default}
security-labels:
  k8s:app: web
  k8s:io.kubernetes.pod.namespace: default
"#,
        );
        assert_eq!(id.spec.security_labels["k8s:app"], "web");
        let ep: CiliumEndpoint = roundtrip(
            r#"
apiVersion: cilium.io/v2
kind: CiliumEndpoint
metadata: {name: web-0, namespace: default}
status:
  id: 1234
  identity: {id: 12345, labels: ["k8s:app=web"]}
  networking:
    addressing: [{ipv4: 10.0.1.5}]
    node: 192.168.1.10
  state: ready
  named-ports: [{name: http, port: 80, protocol: TCP}]
  policy: {ingress: {enforcing: true}, egress: {enforcing: false}}
  external-identifiers: {container-id: abc, k8s-namespace: default, k8s-pod-name: web-0, pod-name: default/web-0}
  service-account: default
"#,
        );
        let st = ep.status.expect("status");
        assert_eq!(st.identity.map(|i| i.id), Some(12345));
        assert_eq!(st.named_ports[0].port, 80);
    }

    #[test]
    fn policies_keep_rules_as_written() {
        let p: CiliumNetworkPolicy = roundtrip(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
specs:
- endpointSelector: {}
  egress: [{toEntities: [world]}]
"#,
        );
        assert_eq!(
            p.spec
                .spec
                .as_ref()
                .map(|s| s["ingress"][0]["toPorts"][0]["ports"][0]["port"].clone()),
            Some(serde_json::json!("80"))
        );
        assert_eq!(p.spec.specs.as_ref().map(Vec::len), Some(1));
        let _: CiliumClusterwideNetworkPolicy = roundtrip(
            r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host}
spec:
  nodeSelector: {matchLabels: {role: worker}}
  ingress: [{fromEntities: [cluster]}]
"#,
        );
    }

    #[test]
    fn node_config() {
        let c: CiliumNodeConfig = roundtrip(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNodeConfig
metadata: {name: big-nodes, namespace: kube-system}
spec:
  nodeSelector: {matchLabels: {size: big}}
  defaults: {bpf-ct-global-tcp-max: "1048576"}
"#,
        );
        assert_eq!(c.spec.defaults["bpf-ct-global-tcp-max"], "1048576");
    }

    #[test]
    fn crd_set() {
        let all = crds();
        let names: Vec<_> = all.iter().filter_map(|c| c.metadata.name.clone()).collect();
        assert_eq!(
            names,
            [
                "ciliumnetworkpolicies.cilium.io",
                "ciliumclusterwidenetworkpolicies.cilium.io",
                "ciliumnodes.cilium.io",
                "ciliumidentities.cilium.io",
                "ciliumendpoints.cilium.io",
                "ciliumnodeconfigs.cilium.io",
            ]
        );
        for c in &all {
            let status = c.spec.versions[0].subresources.is_some();
            let want = matches!(
                c.spec.names.kind.as_str(),
                "CiliumNode" | "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy"
            );
            assert_eq!(status, want, "status subresource of {}", c.spec.names.kind);
            assert_eq!(c.spec.group, GROUP);
        }
    }
}
