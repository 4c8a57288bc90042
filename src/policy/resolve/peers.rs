//! Turning peer selectors into the identity numbers they select.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::policy::labels::{
    reserved, IdentityInfo, IdentityKind, POD_NAMESPACE_LABEL, SOURCE_K8S,
};
use crate::policy::rule::{Entity, PeerSelector, Peers};

/// The identity wildcard (any identity).
pub(crate) const ANY_IDENTITY: u32 = 0;

/// Reserved identities the `cluster` entity covers besides workload endpoints.
const CLUSTER_RESERVED: [&str; 7] = [
    "host",
    "remote-node",
    "init",
    "ingress",
    "health",
    "unmanaged",
    "kube-apiserver",
];

/// The identities selected by `peers` (0 = every identity).
pub(crate) fn identities(peers: &Peers, all: &[IdentityInfo]) -> BTreeSet<u32> {
    match peers {
        Peers::All => BTreeSet::from([ANY_IDENTITY]),
        Peers::Selectors(sels) => sels
            .iter()
            .flat_map(|s| selector_identities(s, all))
            .collect(),
    }
}

fn selector_identities(sel: &PeerSelector, all: &[IdentityInfo]) -> BTreeSet<u32> {
    let pick = |f: &dyn Fn(&IdentityInfo) -> bool| -> BTreeSet<u32> {
        all.iter().filter(|i| f(i)).map(|i| i.id).collect()
    };
    match sel {
        PeerSelector::Endpoints {
            selector,
            namespace,
        } => {
            let ns_key = format!("{SOURCE_K8S}:{POD_NAMESPACE_LABEL}");
            pick(&|i| {
                namespace
                    .as_deref()
                    .is_none_or(|ns| i.labels.get(&ns_key) == Some(ns))
                    && selector.matches(&i.labels)
            })
        }
        PeerSelector::Entity(Entity::All) => BTreeSet::from([ANY_IDENTITY]),
        PeerSelector::Entity(e) => pick(&|i| entity_matches(*e, i)),
        PeerSelector::Cidr { cidr, except } => pick(&|i| cidr_matches(cidr, except, i)),
    }
}

fn is_v4(net: &IpNet) -> bool {
    matches!(net, IpNet::V4(_))
}

/// Whether identity `i` belongs to entity `e` (by reserved kind or reserved label; world
/// also covers every CIDR identity, as CIDR identities carry the world label).
fn entity_matches(e: Entity, i: &IdentityInfo) -> bool {
    match e {
        Entity::All => true,
        Entity::None => false,
        Entity::World => {
            matches!(i.kind, IdentityKind::Cidr(_))
                || ["world", "world-ipv4", "world-ipv6"]
                    .iter()
                    .any(|n| i.is_reserved(n))
        }
        Entity::WorldIpv4 => {
            matches!(&i.kind, IdentityKind::Cidr(n) if is_v4(n)) || i.is_reserved("world-ipv4")
        }
        Entity::WorldIpv6 => {
            matches!(&i.kind, IdentityKind::Cidr(n) if !is_v4(n)) || i.is_reserved("world-ipv6")
        }
        Entity::Cluster => {
            i.kind == IdentityKind::Endpoint || CLUSTER_RESERVED.iter().any(|n| i.is_reserved(n))
        }
        Entity::Host => i.is_reserved("host"),
        Entity::RemoteNode => i.is_reserved("remote-node"),
        Entity::KubeApiserver => i.is_reserved("kube-apiserver"),
        Entity::Health => i.is_reserved("health"),
        Entity::Init => i.is_reserved("init"),
        Entity::Unmanaged => i.is_reserved("unmanaged"),
        Entity::Ingress => i.is_reserved("ingress"),
    }
}

/// Cilium's CIDR selection: CIDR identities whose prefix lies inside `cidr` and inside no
/// `except` (longer prefixes carve out of shorter ones through the LPM ipcache); a /0 also
/// selects the world identities of its family.
fn cidr_matches(cidr: &IpNet, except: &[IpNet], i: &IdentityInfo) -> bool {
    let inside = |outer: &IpNet, inner: &IpNet| {
        outer.contains(inner) && inner.prefix_len() >= outer.prefix_len()
    };
    match &i.kind {
        IdentityKind::Cidr(net) => inside(cidr, net) && !except.iter().any(|e| inside(e, net)),
        IdentityKind::Reserved(_) if cidr.prefix_len() == 0 => {
            let family_world = if is_v4(cidr) {
                "world-ipv4"
            } else {
                "world-ipv6"
            };
            let world = i.id == reserved::WORLD || i.is_reserved(family_world);
            // An except of /0 removes the whole family, world included.
            world && !except.iter().any(|e| e.prefix_len() == 0)
        }
        _ => false,
    }
}
