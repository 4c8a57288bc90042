//! The agent API's request and response bodies (JSON), shared by the server, the CLI and the CNI plugin.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use serde::{Deserialize, Serialize};

/// POST /v1/ipam
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamRequest {
    /// Who holds the address: "<container id>:<ifname>".
    pub owner: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddressInfo {
    pub ip: IpAddr,
    pub gateway: IpAddr,
    pub cidr: ipnet::IpNet,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IpamResponse {
    pub ipv4: AddressInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<AddressInfo>,
    pub mtu: u32,
}

/// PUT /v1/endpoint: what the CNI plugin built, for the agent to take over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointRequest {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub host_ifname: String,
    pub pod_mac: String,
    pub ipv4: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<std::net::Ipv6Addr>,
    #[serde(default)]
    pub k8s_namespace: Option<String>,
    #[serde(default)]
    pub k8s_pod_name: Option<String>,
    /// HostPort mappings from the runtime (CNI runtimeConfig.portMappings).
    #[serde(default)]
    pub port_mappings: Vec<HostPortMapping>,
}

/// One HostPort: traffic to a node address on `host_port` goes to the pod's `container_port`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostPortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// tcp, udp or sctp.
    pub protocol: String,
    #[serde(default)]
    pub host_ip: Option<IpAddr>,
}

/// An endpoint as the agent keeps it (and persists it in its state directory).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub id: u16,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    pub pod_mac: String,
    pub ipv4: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<std::net::Ipv6Addr>,
    #[serde(default)]
    pub k8s_namespace: Option<String>,
    #[serde(default)]
    pub k8s_pod_name: Option<String>,
    /// Security labels ("k8s:app" -> "web", ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Security identity (0 until the first regeneration).
    #[serde(default)]
    pub identity: u32,
    #[serde(default)]
    pub ingress_enforced: bool,
    #[serde(default)]
    pub egress_enforced: bool,
    #[serde(default)]
    pub port_mappings: Vec<HostPortMapping>,
    pub state: String,
}

impl Endpoint {
    pub fn owner(&self) -> String {
        owner(&self.container_id, &self.ifname)
    }
}

/// The IPAM owner string of an attachment.
pub fn owner(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}

/// Per-endpoint counters (GET /v1/endpoint includes them when asked).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointCounters {
    pub from_endpoint_packets: u64,
    pub from_endpoint_bytes: u64,
    pub to_endpoint_packets: u64,
    pub to_endpoint_bytes: u64,
}

/// POST /v1/gc: the attachments the runtime still considers valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcRequest {
    pub valid: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct GcResponse {
    pub removed_endpoints: Vec<String>,
    pub released_ips: Vec<IpAddr>,
}

/// GET /healthz on the health port (kubelet probes): the gist of [`StatusResponse`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthResponse {
    pub state: String,
    pub node_name: String,
    pub version: String,
    pub uptime_seconds: u64,
}

/// GET /v1/healthz
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub node_name: String,
    pub version: String,
    pub state: String,
    pub pod_cidr_v4: ipnet::IpNet,
    #[serde(default)]
    pub pod_cidr_v6: Option<ipnet::IpNet>,
    pub router_ipv4: IpAddr,
    pub endpoints: usize,
    pub ipam_used: usize,
    pub bpf_root: String,
    pub kube_proxy_replacement: String,
    /// How pod traffic crosses nodes: "Tunnel [vxlan]", "Native" or "Single node".
    #[serde(default)]
    pub routing: String,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub policy_revision: u64,
    /// kube-proxy's iptables chains on the node (0 once replaced; absent when the
    /// agent cannot inspect iptables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_proxy_chains: Option<usize>,
    #[serde(default)]
    pub policy_enforcement: String,
    /// Duration of the last regeneration (store -> identities, policy, services -> maps).
    #[serde(default)]
    pub last_regeneration_ms: f64,
    #[serde(default)]
    pub services: usize,
    pub uptime_seconds: u64,
}

/// One line of the datapath metrics map.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricEntry {
    pub reason: u8,
    pub reason_name: String,
    pub direction: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Every non-2xx answer of the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// GET /v1/identity
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdentityModel {
    pub id: u32,
    pub labels: Vec<String>,
    pub kind: String,
}

/// GET /v1/policy
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyModel {
    pub revision: u64,
    pub policies: Vec<String>,
    pub rules: usize,
}

/// One line of `cilium monitor` (GET /v1/monitor streams them as JSON lines).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: u8,
    pub reason_name: String,
    pub direction: String,
    pub endpoint: u16,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub src: String,
    pub dst: String,
    pub protocol: String,
    pub len: u32,
}

/// GET /v1/service: one frontend and its backends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceModel {
    pub id: u16,
    pub frontend: String,
    pub kind: String,
    pub service: String,
    pub backends: Vec<String>,
    #[serde(default)]
    pub affinity_timeout: Option<u32>,
}
