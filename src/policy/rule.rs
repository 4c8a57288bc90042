//! The source-neutral rule model that Kubernetes NetworkPolicy and Cilium(Clusterwide)NetworkPolicy
//! are converted to.

use std::fmt;

use ipnet::IpNet;

use super::selector::EndpointSelector;

/// One policy rule (a NetworkPolicy, or one spec of a CiliumNetworkPolicy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// "<kind>/<namespace>/<name>", or "<kind>/<name>" for cluster-scoped kinds.
    pub name: String,
    /// The policy's namespace; `Some` for namespaced kinds, whose subject is restricted to it.
    pub namespace: Option<String>,
    /// What the rule applies to.
    pub subject: Subject,
    /// Allowed ingress.
    pub ingress: Vec<PeerRule>,
    /// Allowed egress.
    pub egress: Vec<PeerRule>,
    /// Denied ingress (wins over any allow).
    pub ingress_deny: Vec<PeerRule>,
    /// Denied egress (wins over any allow).
    pub egress_deny: Vec<PeerRule>,
    /// CNP `enableDefaultDeny.ingress` as written (None when absent or not a CNP).
    pub enable_default_deny_ingress: Option<bool>,
    /// CNP `enableDefaultDeny.egress` as written (None when absent or not a CNP).
    pub enable_default_deny_egress: Option<bool>,
    /// Whether the rule puts its subject into default-deny at ingress (NetworkPolicy
    /// policyTypes; CNP: non-empty ingress/ingressDeny, overridden by enableDefaultDeny).
    pub selects_ingress: bool,
    /// Whether the rule puts its subject into default-deny at egress.
    pub selects_egress: bool,
}

/// What a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Workload endpoints (never the host); restricted to `Rule::namespace` when set.
    Endpoints(EndpointSelector),
    /// Nodes (the host endpoint), for host firewall policies.
    Nodes(EndpointSelector),
}

/// One ingress or egress rule: peers × ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRule {
    /// Which remote identities.
    pub peers: Peers,
    /// Which ports; empty together with `icmps` = all ports and protocols.
    pub ports: Vec<PortRule>,
    /// Which ICMP types.
    pub icmps: Vec<IcmpRule>,
}

/// The remote side of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// No L3 restriction (every identity, including world).
    All,
    /// The union of these selectors (empty = nothing).
    Selectors(Vec<PeerSelector>),
}

/// One L3 peer selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSelector {
    /// Identities whose labels match `selector`, restricted to pods of `namespace` when set.
    Endpoints {
        /// Label selector.
        selector: EndpointSelector,
        /// Implicit namespace restriction (NetworkPolicy podSelector alone, CNP fromEndpoints).
        namespace: Option<String>,
    },
    /// A Cilium entity.
    Entity(Entity),
    /// A CIDR with exceptions (matches CIDR and world identities, never pods).
    Cidr {
        /// The prefix.
        cidr: IpNet,
        /// Excluded sub-prefixes.
        except: Vec<IpNet>,
    },
}

/// Cilium entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// Everything (identity wildcard).
    All,
    /// Outside the cluster: world identities and all CIDR identities.
    World,
    /// IPv4 world.
    WorldIpv4,
    /// IPv6 world.
    WorldIpv6,
    /// Everything in the cluster: endpoints, host, remote nodes, init, health, unmanaged,
    /// kube-apiserver, ingress.
    Cluster,
    /// The local host.
    Host,
    /// Other nodes.
    RemoteNode,
    /// The Kubernetes API server.
    KubeApiserver,
    /// Health endpoints.
    Health,
    /// Initializing endpoints.
    Init,
    /// Endpoints not managed by Cilium.
    Unmanaged,
    /// The ingress proxy.
    Ingress,
    /// Nothing.
    None,
}

impl Entity {
    /// All entities with their policy names.
    pub const ALL: [(Entity, &'static str); 13] = [
        (Entity::All, "all"),
        (Entity::World, "world"),
        (Entity::WorldIpv4, "world-ipv4"),
        (Entity::WorldIpv6, "world-ipv6"),
        (Entity::Cluster, "cluster"),
        (Entity::Host, "host"),
        (Entity::RemoteNode, "remote-node"),
        (Entity::KubeApiserver, "kube-apiserver"),
        (Entity::Health, "health"),
        (Entity::Init, "init"),
        (Entity::Unmanaged, "unmanaged"),
        (Entity::Ingress, "ingress"),
        (Entity::None, "none"),
    ];

    /// Parses an entity name as written in policies.
    pub fn from_name(s: &str) -> Option<Entity> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(e, _)| *e)
    }

    /// The policy name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(e, _)| *e == self)
            .map(|(_, n)| *n)
            .unwrap_or("none")
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One port (range) and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// The port.
    pub port: PortSpec,
    /// Inclusive end of a range starting at a numeric `port`.
    pub end_port: Option<u16>,
    /// The protocol.
    pub protocol: Protocol,
}

/// A port as written in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// A port number (1..=65535).
    Number(u16),
    /// A named container port (lowercase IANA service name).
    Named(String),
    /// All ports.
    Any,
}

/// Transport protocol of a port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Any protocol (with a port: TCP, UDP and SCTP).
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP.
    Icmp,
    /// ICMPv6.
    Icmpv6,
}

impl Protocol {
    /// IP protocol number (0 for Any).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Any => 0,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Icmp => 1,
            Protocol::Icmpv6 => 58,
        }
    }

    /// The protocol with this IP protocol number.
    pub fn from_number(n: u8) -> Option<Protocol> {
        [
            Protocol::Any,
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Sctp,
            Protocol::Icmp,
            Protocol::Icmpv6,
        ]
        .into_iter()
        .find(|p| p.number() == n)
    }

    /// Upper-case name as written in policies ("TCP", "ANY", ...).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Any => "ANY",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
        }
    }

    /// Parses an upper-case protocol name ("TCP", "UDP", "SCTP", "ICMP", "ICMPv6", "ANY").
    pub fn from_name(s: &str) -> Option<Protocol> {
        match s {
            "ANY" => Some(Protocol::Any),
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            "ICMP" => Some(Protocol::Icmp),
            "ICMPv6" | "ICMPV6" => Some(Protocol::Icmpv6),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// IP family of an ICMP rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum IpFamily {
    /// ICMP (IPv4), the default.
    #[default]
    V4,
    /// ICMPv6.
    V6,
}

/// One ICMP type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpRule {
    /// Family.
    pub family: IpFamily,
    /// ICMP type.
    pub icmp_type: u8,
}

impl Rule {
    /// A rule that selects `subject` and has no peer rules and no default deny.
    pub fn new(name: &str, namespace: Option<&str>, subject: Subject) -> Rule {
        Rule {
            name: name.to_string(),
            namespace: namespace.map(str::to_string),
            subject,
            ingress: Vec::new(),
            egress: Vec::new(),
            ingress_deny: Vec::new(),
            egress_deny: Vec::new(),
            enable_default_deny_ingress: None,
            enable_default_deny_egress: None,
            selects_ingress: false,
            selects_egress: false,
        }
    }

    /// All peer rules with their direction (`true` = egress) and verdict (`true` = deny).
    pub fn peer_rules(&self) -> impl Iterator<Item = (bool, bool, &PeerRule)> {
        let ingress = self.ingress.iter().map(|r| (false, false, r));
        let ingress_deny = self.ingress_deny.iter().map(|r| (false, true, r));
        let egress = self.egress.iter().map(|r| (true, false, r));
        let egress_deny = self.egress_deny.iter().map(|r| (true, true, r));
        ingress.chain(ingress_deny).chain(egress).chain(egress_deny)
    }
}
