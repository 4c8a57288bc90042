//! Pure policy resolution: rules + identities + one endpoint → that endpoint's policy map.

mod mapstate;
mod peers;
mod ports;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::labels::{Labels, SOURCE_RESERVED};
use super::rule::{PeerSelector, Peers, Protocol, Rule, Subject};
use crate::policy::labels::IdentityInfo;
use mapstate::MapBuilder;

/// Cilium's policy enforcement modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EnforcementMode {
    /// Enforce a direction once a rule selecting the endpoint enforces it.
    #[default]
    Default,
    /// Enforce both directions on every endpoint.
    Always,
    /// Enforce nothing.
    Never,
}

/// The endpoint being resolved.
#[derive(Debug, Clone, Copy)]
pub struct EndpointView<'a> {
    /// Endpoint id.
    pub id: u16,
    /// Security identity.
    pub identity: u32,
    /// Security labels.
    pub labels: &'a Labels,
    /// Namespace ("" for non-pod endpoints).
    pub namespace: &'a str,
    /// The endpoint's named container ports.
    pub named_ports: &'a BTreeMap<String, (Protocol, u16)>,
}

/// What the resolver knows about the cluster.
#[derive(Debug, Clone, Copy)]
pub struct ResolveContext<'a> {
    /// Every identity (reserved, endpoint and CIDR).
    pub identities: &'a [IdentityInfo],
    /// Egress named ports resolve against every endpoint in the cluster having that port
    /// name (Cilium's global named-port map).
    pub cluster_named_ports: &'a BTreeMap<String, BTreeSet<(Protocol, u16)>>,
    /// Enforcement mode.
    pub enforcement: EnforcementMode,
}

/// A policy map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Remote identity; 0 = any identity.
    pub identity: u32,
    /// Direction: false = ingress, true = egress.
    pub egress: bool,
    /// IP protocol: 0 = any; 6 tcp, 17 udp, 132 sctp, 1 icmp, 58 icmpv6.
    pub proto: u8,
    /// First port (ICMP: the type); 0 when proto is 0.
    pub port_lo: u16,
    /// Last port (ICMP: the type); 65535 when proto is 0.
    pub port_hi: u16,
}

/// A policy map verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyEntry {
    /// Deny (true) or allow (false).
    pub deny: bool,
}

/// The resolved policy of one endpoint.
///
/// Datapath contract: a direction that is not enforced allows whatever no deny entry
/// matches; an enforced direction allows only what an allow entry matches and no deny entry
/// matches. Lookups use (identity, dir, proto, port) and (0, dir, proto, port), each
/// longest-prefix on protocol then port, and deny if either yields deny.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndpointPolicy {
    /// Ingress default-deny is on.
    pub ingress_enforced: bool,
    /// Egress default-deny is on.
    pub egress_enforced: bool,
    /// Policy map entries.
    pub entries: BTreeMap<PolicyKey, PolicyEntry>,
    /// Names of the rules selecting this endpoint, in rule order, without duplicates.
    pub derived_from: Vec<String>,
}

/// Does this rule select the endpoint (used by the agent to recompute only affected
/// endpoints)? Endpoint subjects never select the host; node subjects select only the host.
pub fn selects(rule: &Rule, labels: &Labels, namespace: &str) -> bool {
    let is_host = labels.get(&format!("{SOURCE_RESERVED}:host")).is_some();
    match &rule.subject {
        Subject::Endpoints(sel) => {
            !is_host
                && rule.namespace.as_deref().is_none_or(|ns| ns == namespace)
                && sel.matches(labels)
        }
        Subject::Nodes(sel) => is_host && sel.matches(labels),
    }
}

/// Resolves the policy of one endpoint.
pub fn resolve(rules: &[Rule], ep: &EndpointView, ctx: &ResolveContext) -> EndpointPolicy {
    let selecting: Vec<&Rule> = rules
        .iter()
        .filter(|r| selects(r, ep.labels, ep.namespace))
        .collect();
    let mut derived_from: Vec<String> = Vec::new();
    for r in &selecting {
        if !derived_from.contains(&r.name) {
            derived_from.push(r.name.clone());
        }
    }
    let mut policy = EndpointPolicy {
        derived_from,
        ..EndpointPolicy::default()
    };
    if ctx.enforcement == EnforcementMode::Never {
        return policy;
    }
    let always = ctx.enforcement == EnforcementMode::Always;
    policy.ingress_enforced = always || selecting.iter().any(|r| r.selects_ingress);
    policy.egress_enforced = always || selecting.iter().any(|r| r.selects_egress);

    let named = ports::NamedPorts {
        local: ep.named_ports,
        cluster: ctx.cluster_named_ports,
    };
    let mut map = MapBuilder::default();
    for rule in &selecting {
        for (egress, deny, peer_rule) in rule.peer_rules() {
            let ids = peers::identities(&peer_rule.peers, ctx.identities);
            if ids.is_empty() {
                continue;
            }
            for (proto, port_lo, port_hi) in ports::ranges(peer_rule, egress, &named) {
                for &identity in &ids {
                    map.add(
                        PolicyKey {
                            identity,
                            egress,
                            proto,
                            port_lo,
                            port_hi,
                        },
                        deny,
                    );
                }
            }
        }
    }
    policy.entries = map.finish();
    policy
}

/// All CIDR prefixes (cidrs and excepts) referenced by rules: the agent allocates a CIDR
/// identity and an ipcache entry for each. Zero-length prefixes are left out: 0.0.0.0/0 and
/// ::/0 are the world identities.
pub fn referenced_cidrs(rules: &[Rule]) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for (_, _, pr) in rule.peer_rules() {
            let Peers::Selectors(sels) = &pr.peers else {
                continue;
            };
            for sel in sels {
                if let PeerSelector::Cidr { cidr, except } = sel {
                    out.extend(
                        std::iter::once(cidr)
                            .chain(except)
                            .filter(|n| n.prefix_len() > 0)
                            .map(IpNet::trunc),
                    );
                }
            }
        }
    }
    out
}
