//! Kubernetes Service (v1) and EndpointSlice (discovery.k8s.io/v1), only the fields the
//! load balancer uses. Real objects carry many more fields; [`super::parse`] ignores them.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// L4 protocol of a service port or endpoint port (Kubernetes spelling: `TCP`, `UDP`,
/// `SCTP`; the API defaults to `TCP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (case-sensitive, as the API server is).
    pub fn from_k8s(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// IANA protocol number, as the datapath maps key it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    pub fn from_k8s(s: &str) -> Option<ServiceType> {
        match s {
            "ClusterIP" => Some(ServiceType::ClusterIP),
            "NodePort" => Some(ServiceType::NodePort),
            "LoadBalancer" => Some(ServiceType::LoadBalancer),
            "ExternalName" => Some(ServiceType::ExternalName),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }

    /// NodePort and LoadBalancer services get node ports.
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `targetPort` of a service port: a number, or the name of a container port that the
/// EndpointSlice controller resolves per pod (the slice then carries the number).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum TargetPort {
    Number(u16),
    Named(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Named(s) => f.write_str(s),
        }
    }
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ServicePort {
    /// `name`; an empty name is `None`. Required (and unique) when there are several ports.
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    /// Defaults to `port` when absent.
    pub target_port: TargetPort,
    /// `nodePort`; 0 or absent is `None`.
    pub node_port: Option<u16>,
}

/// A Service (v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    pub name: String,
    pub type_: ServiceType,
    /// `spec.clusterIP: None`, or the `service.kubernetes.io/headless` label: no frontends.
    pub headless: bool,
    /// `spec.clusterIP` and `spec.clusterIPs`, deduplicated, primary first; empty when
    /// headless or not allocated.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`, skipping hostname-only entries and entries with
    /// `ipMode: Proxy` (KEP-1860: traffic arrives from the load balancer, not to the VIP).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP`: the timeout in seconds
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, default 10800).
    pub session_affinity: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_traffic_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_traffic_local: bool,
    /// `spec.selector` is present and non-empty (the EndpointSlice controller manages the
    /// slices); without one, slices are managed by hand. Both are used alike.
    pub has_selector: bool,
}

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `addressType` of an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum AddressType {
    Ipv4,
    Ipv6,
    Fqdn,
}

impl AddressType {
    pub fn from_k8s(s: &str) -> Option<AddressType> {
        match s {
            "IPv4" => Some(AddressType::Ipv4),
            "IPv6" => Some(AddressType::Ipv6),
            "FQDN" => Some(AddressType::Fqdn),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::Ipv4 => "IPv4",
            AddressType::Ipv6 => "IPv6",
            AddressType::Fqdn => "FQDN",
        }
    }
}

impl fmt::Display for AddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointPort {
    /// Matches the service port's name; empty is `None`.
    pub name: Option<String>,
    pub protocol: Protocol,
    /// The resolved target port; `None` means "unspecified" and is not load-balanced.
    pub port: Option<u16>,
}

/// One entry of an EndpointSlice's `endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceEndpoint {
    /// Addresses (IPv4/IPv6 slices). Only the first is used, as kube-proxy does: the API
    /// defines no semantics for the others. Empty for FQDN slices (not IP addresses).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; `None` means ready.
    pub ready: Option<bool>,
    /// `conditions.serving`; `None` defers to `ready`.
    pub serving: Option<bool>,
    /// `conditions.terminating`; `None` means not terminating.
    pub terminating: Option<bool>,
    pub node_name: Option<String>,
    pub zone: Option<String>,
}

impl SliceEndpoint {
    /// `ready`, nil meaning true.
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }

    /// `serving`, nil deferring to `ready`.
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or_else(|| self.is_ready())
    }

    /// `terminating`, nil meaning false.
    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

/// An EndpointSlice (discovery.k8s.io/v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label (required).
    pub service_name: String,
    pub address_type: AddressType,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<SliceEndpoint>,
}
