//! Kubernetes `networking.k8s.io/v1` NetworkPolicy: validation and conversion to [`Rule`]s,
//! following Kubernetes semantics and Cilium's translation.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::common::{check_except, prefix_keys, CidrPrefix, K8sSelector, Metadata};
use super::validated::{validated_int_or_str, validated_map, validated_str};
use super::PolicyObject;
use crate::policy::labels::{NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL, SOURCE_K8S};
use crate::policy::names::is_iana_svc_name;
use crate::policy::rule::{
    PeerRule, PeerSelector, Peers, PortRule, PortSpec, Protocol, Rule, Subject,
};
use crate::policy::selector::{EndpointSelector, Operator};

/// The kind name.
pub(crate) const KIND: &str = "NetworkPolicy";
/// The only supported apiVersion.
pub(crate) const API_VERSION: &str = "networking.k8s.io/v1";

/// Highest valid port number.
const MAX_PORT: i64 = 65535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyType {
    Ingress,
    Egress,
}

validated_str!(PolicyType, "a policy type", |s| match s {
    "Ingress" => Ok(PolicyType::Ingress),
    "Egress" => Ok(PolicyType::Egress),
    _ => Err(format!(
        "unsupported policy type `{s}`, expected Ingress or Egress"
    )),
});

/// NetworkPolicy protocols: TCP, UDP, SCTP (exact case, as the API server requires).
#[derive(Debug, Clone, Copy)]
struct NpProtocol(Protocol);

validated_str!(NpProtocol, "a protocol", |s| match s {
    "TCP" => Ok(NpProtocol(Protocol::Tcp)),
    "UDP" => Ok(NpProtocol(Protocol::Udp)),
    "SCTP" => Ok(NpProtocol(Protocol::Sctp)),
    _ => Err(format!(
        "unsupported protocol `{s}`, expected one of TCP, UDP, SCTP"
    )),
});

/// A NetworkPolicy port: a number 1..=65535 or an IANA service name.
#[derive(Debug, Clone)]
struct NpPortValue(PortSpec);

validated_int_or_str!(NpPortValue, "a port number or name", |v| match v {
    IntOrString::Int(n) if (1..=MAX_PORT).contains(&n) => {
        Ok(NpPortValue(PortSpec::Number(n as u16)))
    }
    IntOrString::Int(n) => Err(format!("port {n} out of range 1-65535")),
    IntOrString::Str(s) if is_iana_svc_name(&s, false) => Ok(NpPortValue(PortSpec::Named(s))),
    IntOrString::Str(s) => Err(format!(
        "invalid named port `{s}`: must be an IANA service name (at most 15 lowercase \
         alphanumerics or '-', at least one letter)"
    )),
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NpPortRaw {
    protocol: Option<NpProtocol>,
    port: Option<NpPortValue>,
    end_port: Option<i64>,
}

#[derive(Debug, Clone)]
struct NpPort(PortRule);

impl TryFrom<NpPortRaw> for NpPort {
    type Error = String;
    fn try_from(raw: NpPortRaw) -> Result<Self, String> {
        let protocol = raw.protocol.map_or(Protocol::Tcp, |p| p.0);
        let port = raw.port.map_or(PortSpec::Any, |p| p.0);
        let end_port = match (raw.end_port, &port) {
            (None, _) => None,
            (Some(_), PortSpec::Any) => return Err("endPort requires port".to_string()),
            (Some(_), PortSpec::Named(n)) => {
                return Err(format!("endPort cannot be used with named port `{n}`"))
            }
            (Some(e), PortSpec::Number(p)) => {
                if !(1..=MAX_PORT).contains(&e) {
                    return Err(format!("endPort {e} out of range 1-65535"));
                }
                if e < i64::from(*p) {
                    return Err(format!("endPort {e} must not be less than port {p}"));
                }
                Some(e as u16)
            }
        };
        Ok(NpPort(PortRule {
            port,
            end_port,
            protocol,
        }))
    }
}
validated_map!(NpPort, NpPortRaw, "a NetworkPolicy port");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IpBlockRaw {
    cidr: CidrPrefix,
    except: Option<Vec<CidrPrefix>>,
}

#[derive(Debug, Clone)]
struct IpBlock {
    cidr: ipnet::IpNet,
    except: Vec<ipnet::IpNet>,
}

impl TryFrom<IpBlockRaw> for IpBlock {
    type Error = String;
    fn try_from(raw: IpBlockRaw) -> Result<Self, String> {
        let except: Vec<_> = raw
            .except
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.0)
            .collect();
        check_except(&raw.cidr.0, &except, true)?;
        Ok(IpBlock {
            cidr: raw.cidr.0,
            except,
        })
    }
}
validated_map!(IpBlock, IpBlockRaw, "an ipBlock");

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NpPeerRaw {
    pod_selector: Option<K8sSelector>,
    namespace_selector: Option<K8sSelector>,
    ip_block: Option<IpBlock>,
}

/// A validated peer: selectors, or an ipBlock, never both.
#[derive(Debug, Clone)]
enum NpPeer {
    Selectors {
        pod: Option<EndpointSelector>,
        namespace: Option<EndpointSelector>,
    },
    IpBlock(IpBlock),
}

impl TryFrom<NpPeerRaw> for NpPeer {
    type Error = String;
    fn try_from(raw: NpPeerRaw) -> Result<Self, String> {
        let has_selector = raw.pod_selector.is_some() || raw.namespace_selector.is_some();
        match (has_selector, raw.ip_block) {
            (true, Some(_)) => Err(
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer"
                    .to_string(),
            ),
            (false, None) => {
                Err("a peer must specify podSelector, namespaceSelector or ipBlock".to_string())
            }
            (false, Some(b)) => Ok(NpPeer::IpBlock(b)),
            (true, None) => Ok(NpPeer::Selectors {
                pod: raw.pod_selector.map(|s| s.0),
                namespace: raw.namespace_selector.map(|s| s.0),
            }),
        }
    }
}
validated_map!(NpPeer, NpPeerRaw, "a NetworkPolicy peer");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NpIngressRule {
    from: Option<Vec<NpPeer>>,
    ports: Option<Vec<NpPort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NpEgressRule {
    to: Option<Vec<NpPeer>>,
    ports: Option<Vec<NpPort>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NpSpec {
    pod_selector: Option<K8sSelector>,
    policy_types: Option<Vec<PolicyType>>,
    ingress: Option<Vec<NpIngressRule>>,
    egress: Option<Vec<NpEgressRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NpDocRaw {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Option<NpSpec>,
    status: Option<IgnoredAny>,
}

/// A parsed and converted NetworkPolicy document.
pub(crate) struct NpDoc(pub PolicyObject);

impl TryFrom<NpDocRaw> for NpDoc {
    type Error = String;
    fn try_from(raw: NpDocRaw) -> Result<Self, String> {
        if raw.api_version != API_VERSION {
            return Err(format!(
                "apiVersion `{}` is not supported for {KIND}, expected `{API_VERSION}`",
                raw.api_version
            ));
        }
        if raw.kind != KIND {
            return Err(format!("kind `{}` is not {KIND}", raw.kind));
        }
        let _ = raw.status;
        let namespace = raw
            .metadata
            .namespace
            .unwrap_or_else(|| super::DEFAULT_NAMESPACE.to_string());
        let rule = convert(&namespace, &raw.metadata.name, raw.spec.unwrap_or_default());
        Ok(NpDoc(PolicyObject {
            kind: KIND.to_string(),
            namespace: Some(namespace),
            name: raw.metadata.name,
            rules: vec![rule],
        }))
    }
}
validated_map!(NpDoc, NpDocRaw, "a NetworkPolicy");

/// A Kubernetes selector as a Cilium selector: keys get the "k8s:" source; the pod namespace
/// key is dropped from matchLabels because Cilium overwrites it with the policy namespace.
fn pod_selector(sel: &EndpointSelector) -> EndpointSelector {
    let mut s = prefix_keys(sel, &format!("{SOURCE_K8S}:"));
    s.match_labels
        .remove(&format!("{SOURCE_K8S}:{POD_NAMESPACE_LABEL}"));
    s
}

fn convert_peer(namespace: &str, peer: NpPeer) -> PeerSelector {
    match peer {
        NpPeer::IpBlock(b) => PeerSelector::Cidr {
            cidr: b.cidr,
            except: b.except,
        },
        NpPeer::Selectors {
            pod,
            namespace: Some(ns_sel),
        } => {
            // Namespace labels appear in pod identities as
            // "k8s:io.cilium.k8s.namespace.labels.<key>"; the empty namespace selector
            // selects every namespace (any pod namespace label).
            let mut sel = prefix_keys(&ns_sel, &format!("{SOURCE_K8S}:{NAMESPACE_LABELS_PREFIX}"));
            if ns_sel.is_empty() {
                sel.add_requirement(
                    &format!("{SOURCE_K8S}:{POD_NAMESPACE_LABEL}"),
                    Operator::Exists,
                    &[],
                );
            }
            if let Some(pod) = pod {
                let pod = prefix_keys(&pod, &format!("{SOURCE_K8S}:"));
                sel.match_labels.extend(pod.match_labels);
                sel.match_expressions.extend(pod.match_expressions);
            }
            PeerSelector::Endpoints {
                selector: sel,
                namespace: None,
            }
        }
        NpPeer::Selectors {
            pod,
            namespace: None,
        } => PeerSelector::Endpoints {
            selector: pod_selector(&pod.unwrap_or_default()),
            namespace: Some(namespace.to_string()),
        },
    }
}

fn convert_rule(
    namespace: &str,
    peers: Option<Vec<NpPeer>>,
    ports: Option<Vec<NpPort>>,
) -> PeerRule {
    let peers = match peers {
        Some(p) if !p.is_empty() => Peers::Selectors(
            p.into_iter()
                .map(|peer| convert_peer(namespace, peer))
                .collect(),
        ),
        // `from`/`to` missing or empty: all sources/destinations.
        _ => Peers::All,
    };
    PeerRule {
        peers,
        ports: ports.unwrap_or_default().into_iter().map(|p| p.0).collect(),
        icmps: Vec::new(),
    }
}

fn convert(namespace: &str, name: &str, spec: NpSpec) -> Rule {
    let ingress = spec.ingress.unwrap_or_default();
    let egress = spec.egress.unwrap_or_default();
    // Kubernetes defaulting: no policyTypes means Ingress, plus Egress if there are egress rules.
    let types = match spec.policy_types {
        Some(t) if !t.is_empty() => t,
        _ if !egress.is_empty() => vec![PolicyType::Ingress, PolicyType::Egress],
        _ => vec![PolicyType::Ingress],
    };
    let subject = pod_selector(&spec.pod_selector.unwrap_or_default().0);
    let mut rule = Rule::new(
        &format!("{KIND}/{namespace}/{name}"),
        Some(namespace),
        Subject::Endpoints(subject),
    );
    // Rules of a direction not listed in policyTypes have no effect.
    if types.contains(&PolicyType::Ingress) {
        rule.selects_ingress = true;
        rule.ingress = ingress
            .into_iter()
            .map(|r| convert_rule(namespace, r.from, r.ports))
            .collect();
    }
    if types.contains(&PolicyType::Egress) {
        rule.selects_egress = true;
        rule.egress = egress
            .into_iter()
            .map(|r| convert_rule(namespace, r.to, r.ports))
            .collect();
    }
    rule
}
