//! `cilium.io/v2` CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy: validation and
//! conversion to [`Rule`]s, following Cilium's CRD schema, rule sanitizer and translation.

use ipnet::IpNet;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::common::{
    check_except, has_k8s_or_any_key, has_reserved_key, CidrOrIp, CidrPrefix, CiliumSelector,
    Metadata,
};
use super::l4::{CnpPortDenyRule, CnpPortRule, IcmpRules};
use super::validated::{validated_map, validated_str, Unsupported};
use super::PolicyObject;
use crate::policy::labels::{
    NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL, SOURCE_K8S, SOURCE_RESERVED,
};
use crate::policy::rule::{
    Entity, IcmpRule, PeerRule, PeerSelector, Peers, PortRule, Rule, Subject,
};
use crate::policy::selector::{EndpointSelector, Operator};

/// Namespaced kind.
pub(crate) const KIND_CNP: &str = "CiliumNetworkPolicy";
/// Cluster-scoped kind.
pub(crate) const KIND_CCNP: &str = "CiliumClusterwideNetworkPolicy";
/// The only supported apiVersion.
pub(crate) const API_VERSION: &str = "cilium.io/v2";

#[derive(Debug, Clone, Copy)]
struct EntityV(Entity);

validated_str!(EntityV, "an entity", |s| Entity::from_name(s)
    .map(EntityV)
    .ok_or_else(|| {
        let names: Vec<&str> = Entity::ALL.iter().map(|(_, n)| *n).collect();
        format!("unknown entity `{s}`, expected one of {}", names.join(", "))
    }));

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CidrRuleRaw {
    cidr: CidrPrefix,
    except: Option<Vec<CidrPrefix>>,
    cidr_group_ref: Option<Unsupported>,
    cidr_group_selector: Option<Unsupported>,
}

#[derive(Debug, Clone)]
struct CidrRule {
    cidr: IpNet,
    except: Vec<IpNet>,
}

impl TryFrom<CidrRuleRaw> for CidrRule {
    type Error = String;
    fn try_from(raw: CidrRuleRaw) -> Result<Self, String> {
        let _ = (raw.cidr_group_ref, raw.cidr_group_selector);
        let except: Vec<IpNet> = raw
            .except
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.0)
            .collect();
        check_except(&raw.cidr.0, &except, false)?;
        Ok(CidrRule {
            cidr: raw.cidr.0,
            except,
        })
    }
}
validated_map!(CidrRule, CidrRuleRaw, "a CIDR rule");

/// One ingress/egress (allow or deny) rule after validation, before namespace handling.
#[derive(Debug, Clone, Default)]
struct CnpPeerRule {
    endpoints: Option<Vec<EndpointSelector>>,
    cidr: Option<Vec<IpNet>>,
    cidr_set: Option<Vec<CidrRule>>,
    entities: Option<Vec<Entity>>,
    to_ports: Option<Vec<Vec<PortRule>>>,
    icmps: Option<Vec<IcmpRules>>,
}

impl CnpPeerRule {
    /// Cilium's rule sanitizer: one kind of L3 peer per rule, icmps not with toPorts.
    fn validate(self, dir: &str) -> Result<Self, String> {
        let l3 = [
            (
                format!("{dir}Endpoints"),
                self.endpoints.as_ref().map_or(0, Vec::len),
            ),
            (format!("{dir}CIDR"), self.cidr.as_ref().map_or(0, Vec::len)),
            (
                format!("{dir}CIDRSet"),
                self.cidr_set.as_ref().map_or(0, Vec::len),
            ),
            (
                format!("{dir}Entities"),
                self.entities.as_ref().map_or(0, Vec::len),
            ),
        ];
        let used: Vec<&str> = l3
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, _)| name.as_str())
            .collect();
        if used.len() > 1 {
            return Err(format!(
                "combining {} and {} in one rule is not supported (use separate rules)",
                used[0], used[1]
            ));
        }
        let n_ports = self.to_ports.as_ref().map_or(0, Vec::len);
        let n_icmps = self.icmps.as_ref().map_or(0, Vec::len);
        if n_ports > 0 && n_icmps > 0 {
            return Err(
                "icmps cannot be combined with toPorts in one rule (use separate rules)"
                    .to_string(),
            );
        }
        Ok(self)
    }

    fn convert(self, ctx: &Ctx<'_>) -> PeerRule {
        let nothing = || PeerRule {
            peers: Peers::Selectors(Vec::new()),
            ports: Vec::new(),
            icmps: Vec::new(),
        };
        let l3_given = self.endpoints.is_some()
            || self.cidr.is_some()
            || self.cidr_set.is_some()
            || self.entities.is_some();
        let l4_given = self.to_ports.as_ref().is_some_and(|v| !v.is_empty())
            || self.icmps.as_ref().is_some_and(|v| !v.is_empty());
        let ports: Vec<PortRule> = self
            .to_ports
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect();
        let icmps: Vec<IcmpRule> = self
            .icmps
            .unwrap_or_default()
            .into_iter()
            .flat_map(|r| r.0)
            .collect();
        if l4_given && ports.is_empty() && icmps.is_empty() {
            // toPorts/icmps items without any port or type add nothing.
            return nothing();
        }
        let peers = if l3_given {
            let mut sels = Vec::new();
            for sel in self.endpoints.unwrap_or_default() {
                sels.push(ctx.peer_selector(sel));
            }
            for cidr in self.cidr.unwrap_or_default() {
                sels.push(PeerSelector::Cidr {
                    cidr,
                    except: Vec::new(),
                });
            }
            for r in self.cidr_set.unwrap_or_default() {
                sels.push(PeerSelector::Cidr {
                    cidr: r.cidr,
                    except: r.except,
                });
            }
            for e in self.entities.unwrap_or_default() {
                sels.push(PeerSelector::Entity(e));
            }
            Peers::Selectors(sels)
        } else if l4_given {
            // No L3 field at all but ports or ICMP types: any peer.
            Peers::All
        } else {
            // An empty rule selects nothing (it only triggers default deny).
            return nothing();
        };
        PeerRule {
            peers,
            ports,
            icmps,
        }
    }
}

fn endpoints(v: Option<Vec<CiliumSelector>>) -> Option<Vec<EndpointSelector>> {
    v.map(|v| v.into_iter().map(|s| s.0).collect())
}
fn cidrs(v: Option<Vec<CidrOrIp>>) -> Option<Vec<IpNet>> {
    v.map(|v| v.into_iter().map(|c| c.0).collect())
}
fn entities(v: Option<Vec<EntityV>>) -> Option<Vec<Entity>> {
    v.map(|v| v.into_iter().map(|e| e.0).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressRaw {
    from_endpoints: Option<Vec<CiliumSelector>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<CidrOrIp>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrRule>>,
    from_entities: Option<Vec<EntityV>>,
    to_ports: Option<Vec<CnpPortRule>>,
    icmps: Option<Vec<IcmpRules>>,
    from_requires: Option<Unsupported>,
    from_groups: Option<Unsupported>,
    from_nodes: Option<Unsupported>,
    authentication: Option<Unsupported>,
}

struct Ingress(CnpPeerRule);

impl TryFrom<IngressRaw> for Ingress {
    type Error = String;
    fn try_from(r: IngressRaw) -> Result<Self, String> {
        let _ = (
            r.from_requires,
            r.from_groups,
            r.from_nodes,
            r.authentication,
        );
        CnpPeerRule {
            endpoints: endpoints(r.from_endpoints),
            cidr: cidrs(r.from_cidr),
            cidr_set: r.from_cidr_set,
            entities: entities(r.from_entities),
            to_ports: r.to_ports.map(|v| v.into_iter().map(|p| p.0).collect()),
            icmps: r.icmps,
        }
        .validate("from")
        .map(Ingress)
    }
}
validated_map!(Ingress, IngressRaw, "an ingress rule");

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressDenyRaw {
    from_endpoints: Option<Vec<CiliumSelector>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<CidrOrIp>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrRule>>,
    from_entities: Option<Vec<EntityV>>,
    to_ports: Option<Vec<CnpPortDenyRule>>,
    icmps: Option<Vec<IcmpRules>>,
    from_requires: Option<Unsupported>,
    from_groups: Option<Unsupported>,
    from_nodes: Option<Unsupported>,
}

struct IngressDeny(CnpPeerRule);

impl TryFrom<IngressDenyRaw> for IngressDeny {
    type Error = String;
    fn try_from(r: IngressDenyRaw) -> Result<Self, String> {
        let _ = (r.from_requires, r.from_groups, r.from_nodes);
        CnpPeerRule {
            endpoints: endpoints(r.from_endpoints),
            cidr: cidrs(r.from_cidr),
            cidr_set: r.from_cidr_set,
            entities: entities(r.from_entities),
            to_ports: r.to_ports.map(|v| v.into_iter().map(|p| p.0).collect()),
            icmps: r.icmps,
        }
        .validate("from")
        .map(IngressDeny)
    }
}
validated_map!(IngressDeny, IngressDenyRaw, "an ingressDeny rule");

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressRaw {
    to_endpoints: Option<Vec<CiliumSelector>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<CidrOrIp>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrRule>>,
    to_entities: Option<Vec<EntityV>>,
    to_ports: Option<Vec<CnpPortRule>>,
    icmps: Option<Vec<IcmpRules>>,
    to_requires: Option<Unsupported>,
    to_services: Option<Unsupported>,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Unsupported>,
    to_groups: Option<Unsupported>,
    to_nodes: Option<Unsupported>,
    authentication: Option<Unsupported>,
}

struct Egress(CnpPeerRule);

impl TryFrom<EgressRaw> for Egress {
    type Error = String;
    fn try_from(r: EgressRaw) -> Result<Self, String> {
        let _ = (
            r.to_requires,
            r.to_services,
            r.to_fqdns,
            r.to_groups,
            r.to_nodes,
            r.authentication,
        );
        CnpPeerRule {
            endpoints: endpoints(r.to_endpoints),
            cidr: cidrs(r.to_cidr),
            cidr_set: r.to_cidr_set,
            entities: entities(r.to_entities),
            to_ports: r.to_ports.map(|v| v.into_iter().map(|p| p.0).collect()),
            icmps: r.icmps,
        }
        .validate("to")
        .map(Egress)
    }
}
validated_map!(Egress, EgressRaw, "an egress rule");

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressDenyRaw {
    to_endpoints: Option<Vec<CiliumSelector>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<CidrOrIp>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrRule>>,
    to_entities: Option<Vec<EntityV>>,
    to_ports: Option<Vec<CnpPortDenyRule>>,
    icmps: Option<Vec<IcmpRules>>,
    to_requires: Option<Unsupported>,
    to_services: Option<Unsupported>,
    to_groups: Option<Unsupported>,
    to_nodes: Option<Unsupported>,
}

struct EgressDeny(CnpPeerRule);

impl TryFrom<EgressDenyRaw> for EgressDeny {
    type Error = String;
    fn try_from(r: EgressDenyRaw) -> Result<Self, String> {
        let _ = (r.to_requires, r.to_services, r.to_groups, r.to_nodes);
        CnpPeerRule {
            endpoints: endpoints(r.to_endpoints),
            cidr: cidrs(r.to_cidr),
            cidr_set: r.to_cidr_set,
            entities: entities(r.to_entities),
            to_ports: r.to_ports.map(|v| v.into_iter().map(|p| p.0).collect()),
            icmps: r.icmps,
        }
        .validate("to")
        .map(EgressDeny)
    }
}
validated_map!(EgressDeny, EgressDenyRaw, "an egressDeny rule");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CnpRuleRaw {
    endpoint_selector: Option<CiliumSelector>,
    node_selector: Option<CiliumSelector>,
    ingress: Option<Vec<Ingress>>,
    ingress_deny: Option<Vec<IngressDeny>>,
    egress: Option<Vec<Egress>>,
    egress_deny: Option<Vec<EgressDeny>>,
    enable_default_deny: Option<DefaultDeny>,
    description: Option<String>,
    labels: Option<IgnoredAny>,
}

/// One validated spec.
struct CnpRule {
    subject: Subject,
    ingress: Vec<CnpPeerRule>,
    ingress_deny: Vec<CnpPeerRule>,
    egress: Vec<CnpPeerRule>,
    egress_deny: Vec<CnpPeerRule>,
    default_deny_ingress: Option<bool>,
    default_deny_egress: Option<bool>,
}

impl TryFrom<CnpRuleRaw> for CnpRule {
    type Error = String;
    fn try_from(raw: CnpRuleRaw) -> Result<Self, String> {
        let _ = (raw.description, raw.labels);
        let subject = match (raw.endpoint_selector, raw.node_selector) {
            (Some(e), None) => Subject::Endpoints(e.0),
            (None, Some(n)) => Subject::Nodes(n.0),
            (None, None) => {
                return Err("rule must have one of endpointSelector or nodeSelector".to_string())
            }
            (Some(_), Some(_)) => {
                return Err("rule cannot have both endpointSelector and nodeSelector".to_string())
            }
        };
        if raw.ingress.is_none()
            && raw.ingress_deny.is_none()
            && raw.egress.is_none()
            && raw.egress_deny.is_none()
        {
            return Err(
                "rule must have at least one of ingress, ingressDeny, egress or egressDeny"
                    .to_string(),
            );
        }
        let dd = raw.enable_default_deny.unwrap_or(DefaultDeny {
            ingress: None,
            egress: None,
        });
        Ok(CnpRule {
            subject,
            ingress: raw
                .ingress
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.0)
                .collect(),
            ingress_deny: raw
                .ingress_deny
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.0)
                .collect(),
            egress: raw
                .egress
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.0)
                .collect(),
            egress_deny: raw
                .egress_deny
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.0)
                .collect(),
            default_deny_ingress: dd.ingress,
            default_deny_egress: dd.egress,
        })
    }
}
validated_map!(CnpRule, CnpRuleRaw, "a Cilium policy rule");

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CnpDocRaw {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Option<CnpRule>,
    specs: Option<Vec<CnpRule>>,
    status: Option<IgnoredAny>,
}

/// A parsed and converted CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy document.
pub(crate) struct CnpDoc(pub PolicyObject);

impl TryFrom<CnpDocRaw> for CnpDoc {
    type Error = String;
    fn try_from(raw: CnpDocRaw) -> Result<Self, String> {
        let _ = raw.status;
        let clusterwide = match raw.kind.as_str() {
            KIND_CNP => false,
            KIND_CCNP => true,
            other => return Err(format!("kind `{other}` is not a Cilium network policy")),
        };
        if raw.api_version != API_VERSION {
            return Err(format!(
                "apiVersion `{}` is not supported for {}, expected `{API_VERSION}`",
                raw.api_version, raw.kind
            ));
        }
        let namespace = (!clusterwide).then(|| {
            raw.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| super::DEFAULT_NAMESPACE.to_string())
        });
        let specs: Vec<CnpRule> = raw
            .spec
            .into_iter()
            .chain(raw.specs.unwrap_or_default())
            .collect();
        // The API server accepts an object without spec(s); Cilium imports no rule from it
        // (and a delete request often carries only the metadata).
        let name = match &namespace {
            Some(ns) => format!("{}/{ns}/{}", raw.kind, raw.metadata.name),
            None => format!("{}/{}", raw.kind, raw.metadata.name),
        };
        let rules = specs
            .into_iter()
            .map(|spec| convert(&name, namespace.as_deref(), spec))
            .collect();
        Ok(CnpDoc(PolicyObject {
            kind: raw.kind,
            namespace,
            name: raw.metadata.name,
            rules,
        }))
    }
}
validated_map!(CnpDoc, CnpDocRaw, "a Cilium network policy");

/// What peer selector translation needs to know about the rule.
struct Ctx<'a> {
    namespace: Option<&'a str>,
    /// The subject selects initializing endpoints ("reserved:init").
    matches_init: bool,
}

impl Ctx<'_> {
    /// Cilium's getEndpointSelector: a fromEndpoints/toEndpoints selector is limited to the
    /// policy namespace unless it names a namespace, namespace labels or reserved labels; in a
    /// clusterwide policy it is limited to pods (any namespace).
    fn peer_selector(&self, mut selector: EndpointSelector) -> PeerSelector {
        let unrestricted = |selector| PeerSelector::Endpoints {
            selector,
            namespace: None,
        };
        if has_reserved_key(&selector)
            || has_k8s_or_any_key(&selector, |k| k == POD_NAMESPACE_LABEL)
        {
            return unrestricted(selector);
        }
        match self.namespace {
            None => {
                if !self.matches_init {
                    selector.add_requirement(
                        &format!("{SOURCE_K8S}:{POD_NAMESPACE_LABEL}"),
                        Operator::Exists,
                        &[],
                    );
                }
                unrestricted(selector)
            }
            Some(_)
                if has_k8s_or_any_key(&selector, |k| k.starts_with(NAMESPACE_LABELS_PREFIX)) =>
            {
                unrestricted(selector)
            }
            Some(ns) => PeerSelector::Endpoints {
                selector,
                namespace: Some(ns.to_string()),
            },
        }
    }
}

fn convert(name: &str, namespace: Option<&str>, spec: CnpRule) -> Rule {
    let matches_init = match &spec.subject {
        Subject::Endpoints(sel) => sel.keys().any(|k| k == format!("{SOURCE_RESERVED}:init")),
        Subject::Nodes(_) => false,
    };
    let subject = match spec.subject {
        Subject::Endpoints(mut sel) if namespace.is_some() => {
            // Cilium overwrites any namespace match with the policy's namespace.
            sel.match_labels
                .remove(&format!("{SOURCE_K8S}:{POD_NAMESPACE_LABEL}"));
            Subject::Endpoints(sel)
        }
        s => s,
    };
    let ctx = Ctx {
        namespace,
        matches_init,
    };
    let mut rule = Rule::new(name, namespace, subject);
    rule.selects_ingress = spec
        .default_deny_ingress
        .unwrap_or(!spec.ingress.is_empty() || !spec.ingress_deny.is_empty());
    rule.selects_egress = spec
        .default_deny_egress
        .unwrap_or(!spec.egress.is_empty() || !spec.egress_deny.is_empty());
    rule.enable_default_deny_ingress = spec.default_deny_ingress;
    rule.enable_default_deny_egress = spec.default_deny_egress;
    let conv = |v: Vec<CnpPeerRule>| v.into_iter().map(|r| r.convert(&ctx)).collect::<Vec<_>>();
    rule.ingress = conv(spec.ingress);
    rule.ingress_deny = conv(spec.ingress_deny);
    rule.egress = conv(spec.egress);
    rule.egress_deny = conv(spec.egress_deny);
    rule
}
