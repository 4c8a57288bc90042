//! Turning a rule's ports and ICMP types into (protocol, port range) triples.

use std::collections::{BTreeMap, BTreeSet};

use crate::policy::rule::{IpFamily, PeerRule, PortRule, PortSpec, Protocol};

/// Highest port number.
pub(crate) const MAX_PORT: u16 = u16::MAX;

/// (IP protocol number, first port, last port); protocol 0 means every protocol and port.
/// For ICMP the "port" is the ICMP type.
pub(crate) type PortRange = (u8, u16, u16);

/// Where named ports are looked up.
pub(crate) struct NamedPorts<'a> {
    /// The subject endpoint's own ports (ingress).
    pub local: &'a BTreeMap<String, (Protocol, u16)>,
    /// Every endpoint's ports in the cluster (egress).
    pub cluster: &'a BTreeMap<String, BTreeSet<(Protocol, u16)>>,
}

/// The port ranges a peer rule covers in one direction.
pub(crate) fn ranges(rule: &PeerRule, egress: bool, named: &NamedPorts<'_>) -> BTreeSet<PortRange> {
    let mut out = BTreeSet::new();
    if rule.ports.is_empty() && rule.icmps.is_empty() {
        out.insert((0, 0, MAX_PORT));
        return out;
    }
    for p in &rule.ports {
        port_ranges(p, egress, named, &mut out);
    }
    for icmp in &rule.icmps {
        let proto = match icmp.family {
            IpFamily::V4 => Protocol::Icmp,
            IpFamily::V6 => Protocol::Icmpv6,
        };
        out.insert((
            proto.number(),
            u16::from(icmp.icmp_type),
            u16::from(icmp.icmp_type),
        ));
    }
    out
}

/// Protocols a port applies to: ANY with a port means TCP, UDP and SCTP.
fn expand(proto: Protocol) -> Vec<Protocol> {
    match proto {
        Protocol::Any => vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
        p => vec![p],
    }
}

fn port_ranges(p: &PortRule, egress: bool, named: &NamedPorts<'_>, out: &mut BTreeSet<PortRange>) {
    match &p.port {
        PortSpec::Any => {
            // Port 0: every port of the protocol(s); ANY still means TCP, UDP and SCTP.
            for proto in expand(p.protocol) {
                out.insert((proto.number(), 0, MAX_PORT));
            }
        }
        PortSpec::Number(n) => {
            let hi = p.end_port.unwrap_or(*n).max(*n);
            for proto in expand(p.protocol) {
                out.insert((proto.number(), *n, hi));
            }
        }
        PortSpec::Named(name) if egress => {
            // Cilium's global named-port map: per concrete protocol, the name must map to
            // exactly one port across the cluster; an unknown or ambiguous name yields nothing.
            let Some(defined) = named.cluster.get(name) else {
                return;
            };
            for proto in expand(p.protocol) {
                let mut ports = defined
                    .iter()
                    .filter(|(np, _)| *np == proto || *np == Protocol::Any)
                    .map(|(_, port)| *port);
                if let (Some(port), None) = (ports.next(), ports.next()) {
                    out.insert((proto.number(), port, port));
                }
            }
        }
        PortSpec::Named(name) => {
            // The subject's own container port; the rule's protocol may narrow it down but
            // not contradict it.
            let Some((np_proto, port)) = named.local.get(name).copied() else {
                return;
            };
            let proto = match (p.protocol, np_proto) {
                (Protocol::Any, np) => np,
                (rp, Protocol::Any) => rp,
                (rp, np) if rp == np => rp,
                _ => return,
            };
            for proto in expand(proto) {
                out.insert((proto.number(), port, port));
            }
        }
    }
}
