//! The node agent: host-scope IPAM, the endpoint manager, the endpoint datapath,
//! and the REST API on a unix socket the CNI plugin and the CLI talk to.
pub mod api;
pub mod client;
pub mod config_dir;
pub mod endpoints;
pub mod events;
pub mod identity;
pub mod identity_k8s;
pub mod ipam;
pub mod kube_proxy;
pub mod models;
pub mod node_config;
pub mod publish_k8s;
pub mod regen;
pub mod services;
pub mod source;
pub mod source_k8s;
pub mod store;

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::datapath::{
    link::{mac_string, write_sysctl, LinkError, Netlink, TunnelProtocol},
    loader::{Datapath, DatapathConfig, DatapathError},
    maps::EndpointKey,
};
use endpoints::{Endpoints, StateError};
use ipam::{Ipam, IpamError};
use models::*;

/// Cilium's agent health port: `GET http://127.0.0.1:9879/healthz` (the DaemonSet's probes).
pub const DEFAULT_HEALTH_PORT: u16 = 9879;

/// Agent configuration (flags of `cilium agent`).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Cilium configuration directory (a mounted ConfigMap: one file per option, e.g.
    /// routing-mode, enable-policy); flags given explicitly win over its values.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Name of this node.
    #[arg(long, env = "CILIUM_NODE_NAME", default_value = "node1")]
    pub node_name: String,
    /// IPv4 pod CIDR of this node (host-scope IPAM); its first address is the router address.
    #[arg(long, env = "CILIUM_POD_CIDR", default_value = "10.0.0.0/24")]
    pub pod_cidr: ipnet::Ipv4Net,
    /// IPv6 pod CIDR of this node (optional; accepted in the model, not yet routed).
    #[arg(long)]
    pub pod_cidr_v6: Option<ipnet::Ipv6Net>,
    /// Path of the API socket.
    #[arg(long, default_value = "/var/run/cilium/cilium.sock")]
    pub socket: PathBuf,
    /// Directory for endpoint state.
    #[arg(long, default_value = "/var/run/cilium/state")]
    pub state_dir: PathBuf,
    /// The node's bpffs directory: pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/cilium")]
    pub bpf_root: PathBuf,
    /// Enter this network namespace before starting (local mode: the node's namespace).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// MTU of pod links (default: the MTU of the node-ip link, less the tunnel
    /// overhead in tunnel routing mode; 1500 without a node ip).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// How pod traffic crosses nodes: `tunnel` encapsulates (the source identity
    /// travels in the VNI), `native` routes pod CIDRs via the node addresses.
    #[arg(long, value_enum, default_value = "tunnel")]
    pub routing_mode: RoutingMode,
    /// Encapsulation in tunnel routing mode.
    #[arg(long, value_enum, default_value = "vxlan")]
    pub tunnel_protocol: TunnelProtocol,
    /// UDP port of the tunnel (default: 8472 for vxlan, 6081 for geneve, as Cilium).
    #[arg(long)]
    pub tunnel_port: Option<u16>,
    /// Policy enforcement: default (when a policy selects the endpoint), always, never.
    #[arg(long, value_enum, default_value = "default")]
    pub enable_policy: PolicyMode,
    /// Local store of pods, namespaces and policies to watch (local mode). Without it,
    /// the agent watches the Kubernetes API when any of --k8s-kubeconfig-path,
    /// --k8s-api-server, k8s-service-host (config directory) or KUBERNETES_SERVICE_HOST
    /// (set in every pod) is there; otherwise it runs alone (no cluster objects).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Kubernetes mode: the kubeconfig to use (default: the pod's service account).
    #[arg(long, value_name = "FILE")]
    pub k8s_kubeconfig_path: Option<PathBuf>,
    /// Kubernetes mode: the API server, as https://HOST:PORT or HOST:PORT (overrides
    /// the kubeconfig's and the in-cluster address).
    #[arg(long, value_name = "URL")]
    pub k8s_api_server: Option<String>,
    /// Kubernetes mode: the API server's host as nodes reach it without kube-proxy
    /// (Cilium's k8s-service-host; --k8s-api-server wins).
    #[arg(long, value_name = "HOST")]
    pub k8s_service_host: Option<String>,
    /// Kubernetes mode: the API server's port with --k8s-service-host (default 443).
    #[arg(long, value_name = "PORT")]
    pub k8s_service_port: Option<u16>,
    /// Kubernetes mode: where the node's pod CIDR comes from (`cluster-pool`: the
    /// operator's CiliumNode spec.ipam.podCIDRs; `kubernetes`: Node.spec.podCIDR);
    /// --pod-cidr is not used then.
    #[arg(long, value_enum, default_value = "cluster-pool")]
    pub ipam: publish_k8s::IpamMode,
    /// Directory of the identity allocator shared by the cluster's agents
    /// (default: <state-dir>/identities; `local` identity allocation mode).
    #[arg(long)]
    pub identity_dir: Option<PathBuf>,
    /// Where security identities are allocated: `local` (a locked file in
    /// --identity-dir, shared by the local cluster's agents) or `crd` (CiliumIdentity
    /// objects in the Kubernetes API; client configuration in-cluster or kubeconfig).
    #[arg(long, value_enum, default_value = "local")]
    pub identity_allocation_mode: IdentityAllocationMode,
    /// Replace kube-proxy: socket-level and per-packet service load balancing and
    /// NodePort, and kube-proxy's iptables chains on the node are removed. `false`
    /// leaves services to kube-proxy (the LB maps stay empty, no socket LB). Default:
    /// on when --cgroup-root or --devices is given.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub kube_proxy_replacement: Option<bool>,
    /// cgroup v2 directory whose sockets get socket-level load balancing
    /// (kube-proxy replacement); never the machine's root cgroup in tests.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// This node's address on the network between nodes (native routing: other nodes'
    /// pod CIDRs are routed via their node addresses).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// Node devices facing outside: bpf_host is attached there and NodePort answers on
    /// their addresses (Cilium's --devices), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// How NodePort reaches backends on other nodes: `snat` (the backend sees this
    /// node; replies return through it) or `dsr` (direct server return: the backend
    /// sees the client and answers it from its own node; needs native routing).
    #[arg(long, value_enum, default_value = "snat")]
    pub bpf_lb_mode: LbMode,
    /// Size of the Maglev tables (a prime: 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071).
    #[arg(long, default_value_t = 16381, value_parser = parse_maglev_size)]
    pub maglev_table_size: u32,
    /// How often expired connection tracking entries are removed.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    pub ct_gc_interval: u64,
    /// Port of the plain-HTTP health endpoint on 127.0.0.1 (`GET /healthz`); 0 disables it.
    #[arg(long, default_value_t = DEFAULT_HEALTH_PORT)]
    pub health_port: u16,
    /// Debug logging (unless --log-level is given).
    #[arg(long)]
    pub debug: bool,
}

impl AgentConfig {
    /// Whether this agent replaces kube-proxy (see --kube-proxy-replacement).
    pub fn kube_proxy_replacement(&self) -> bool {
        self.kube_proxy_replacement
            .unwrap_or(self.cgroup_root.is_some() || !self.devices.is_empty())
    }
}

fn parse_maglev_size(s: &str) -> Result<u32, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if crate::lb::maglev::is_supported_size(n) {
        Ok(n as u32)
    } else {
        Err(format!(
            "{n} is not a supported Maglev table size; use one of {:?}",
            crate::lb::maglev::SUPPORTED_SIZES
        ))
    }
}

/// Cilium's bpf-lb-mode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LbMode {
    Snat,
    Dsr,
}

/// Cilium's routing-mode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    Tunnel,
    Native,
}

/// Cilium's identity-allocation-mode (no `kvstore` yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityAllocationMode {
    Local,
    Crd,
}

/// Policy enforcement mode (Cilium's enable-policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyMode {
    Default,
    Always,
    Never,
}

impl From<PolicyMode> for crate::policy::resolve::EnforcementMode {
    fn from(m: PolicyMode) -> Self {
        match m {
            PolicyMode::Default => Self::Default,
            PolicyMode::Always => Self::Always,
            PolicyMode::Never => Self::Never,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

/// The link holding `--node-ip`.
async fn find_underlay(
    netlink: &Netlink,
    ip: Option<Ipv4Addr>,
) -> Result<Option<crate::datapath::link::LinkInfo>, AgentError> {
    let Some(ip) = ip else {
        return Ok(None);
    };
    for l in netlink.links().await? {
        if netlink.addresses_v4(l.index).await?.contains(&ip) {
            return Ok(Some(l));
        }
    }
    Err(AgentError::BadRequest(format!(
        "--node-ip {ip} is not an address of any link on this node"
    )))
}

/// The flow-based tunnel device of tunnel routing mode (kept across restarts).
async fn setup_tunnel(
    netlink: &Netlink,
    config: &AgentConfig,
    underlay_mtu: u32,
) -> Result<crate::datapath::link::LinkInfo, AgentError> {
    let proto = config.tunnel_protocol;
    let name = proto.device();
    if let Some(l) = netlink.link_by_name(name).await? {
        return Ok(l);
    }
    let port = config.tunnel_port.unwrap_or(proto.default_port());
    // The device's own MTU: what an inner packet may be (the underlay's less the overhead).
    netlink
        .add_tunnel(proto, name, port, underlay_mtu - proto.overhead())
        .await?;
    let link = netlink.link(name).await?;
    // No IPv6 routing over the tunnel yet: the device needs no IPv6 (it would send
    // router solicitations that nobody can encapsulate). Set before it goes up.
    let _ = write_sysctl(&format!("net.ipv6.conf.{name}.disable_ipv6"), "1");
    netlink.set_up(link.index).await?;
    Ok(netlink.link(name).await?)
}

/// Everything the agent owns, behind one lock.
pub struct AgentState {
    pub config: AgentConfig,
    pub ipam: Ipam,
    pub endpoints: Endpoints,
    pub datapath: Datapath,
    pub netlink: Netlink,
    pub started: Instant,
    pub allocator: Box<dyn identity::IdentityAllocator>,
    /// Where cluster objects come from (the local store, the Kubernetes API), if anywhere.
    pub source: Option<Arc<dyn source::Source>>,
    pub policy: regen::PolicyState,
    pub lb: services::LbProgrammed,
    /// IPv4 addresses of the node devices (NodePort frontends).
    pub node_ips: Vec<Ipv4Addr>,
    /// The link holding `--node-ip` (routes to other nodes go out there).
    pub underlay_link: Option<u32>,
    /// The tunnel device (tunnel routing mode with a node ip).
    pub tunnel_link: Option<u32>,
    /// MTU of pod links.
    pub mtu: u32,
    /// kube-proxy's iptables chains left on the node (None: iptables not inspectable).
    pub kube_proxy_chains: Option<usize>,
}

pub type Shared = Arc<Mutex<AgentState>>;

const HOST_DEV: &str = "cilium_host";
const NET_DEV: &str = "cilium_net";

impl AgentState {
    /// Loads the datapath, sets up the node's host device and adopts persisted endpoints.
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
        Self::start_with(config, None, None).await
    }

    /// As [`Self::start`], reading cluster objects from `source` (else from `--store`,
    /// if given).
    pub async fn start_with(
        config: AgentConfig,
        source: Option<Arc<dyn source::Source>>,
        kube_config: Option<kube::Config>,
    ) -> Result<Self, AgentError> {
        if config.bpf_lb_mode == LbMode::Dsr && config.routing_mode == RoutingMode::Tunnel {
            return Err(AgentError::BadRequest(
                "--bpf-lb-mode dsr needs --routing-mode native: the service address travels \
                 in an IPv4 option, which the VXLAN tunnel does not carry (Cilium carries it in \
                 a Geneve option, and this kernel has no geneve driver: CONFIG_GENEVE)"
                    .into(),
            ));
        }
        let ipam = Ipam::new(config.pod_cidr, config.pod_cidr_v6)?;
        let endpoints = Endpoints::open(&config.state_dir)?;
        let netlink = Netlink::connect()?;
        let underlay = find_underlay(&netlink, config.node_ip).await?;
        let underlay_mtu = underlay.as_ref().map_or(1500, |l| l.mtu);
        let tunnel = match (config.routing_mode, &underlay) {
            (RoutingMode::Tunnel, Some(_)) => {
                Some(setup_tunnel(&netlink, &config, underlay_mtu).await?)
            }
            _ => None,
        };
        let mtu = config.mtu.unwrap_or(match tunnel {
            Some(_) => underlay_mtu - config.tunnel_protocol.overhead(),
            None => underlay_mtu,
        });
        let datapath = Datapath::load(
            &config.bpf_root,
            DatapathConfig {
                maglev_size: config.maglev_table_size,
                tunnel_ifindex: tunnel.as_ref().map(|l| l.index),
                node_ipv4: config.node_ip,
                lb_dsr: config.bpf_lb_mode == LbMode::Dsr,
            },
        )?;
        let id_dir = config
            .identity_dir
            .clone()
            .unwrap_or_else(|| config.state_dir.join("identities"));
        let allocator: Box<dyn identity::IdentityAllocator> = match config.identity_allocation_mode
        {
            IdentityAllocationMode::Local => Box::new(identity::FileAllocator::new(&id_dir)?),
            IdentityAllocationMode::Crd => {
                let kube_config = match kube_config {
                    Some(c) => c,
                    None => kube::Config::infer()
                        .await
                        .map_err(identity::IdentityError::KubeConfig)?,
                };
                info!(server = %kube_config.cluster_url, "identities are CiliumIdentity objects");
                Box::new(identity_k8s::K8sIdentityAllocator::new(kube_config)?)
            }
        };
        let source = match (source, config.store.as_deref()) {
            (Some(s), _) => Some(s),
            (None, Some(dir)) => Some(Arc::new(source::StoreSource::new(store::Store::open(dir)?))
                as Arc<dyn source::Source>),
            (None, None) => None,
        };
        let mut st = Self {
            config,
            ipam,
            endpoints,
            datapath,
            netlink,
            started: Instant::now(),
            allocator,
            source,
            policy: Default::default(),
            lb: Default::default(),
            node_ips: Vec::new(),
            underlay_link: underlay.as_ref().map(|l| l.index),
            tunnel_link: tunnel.as_ref().map(|l| l.index),
            mtu,
            kube_proxy_chains: None,
        };
        st.setup_host().await?;
        if let Some(t) = &tunnel {
            st.datapath.attach_overlay(&t.name)?;
            info!(device = %t.name, mtu, "tunnel routing: overlay datapath attached");
        }
        st.announce_node().await?;
        for dev in st.config.devices.clone() {
            let link = st.netlink.link_by_name(&dev).await?.ok_or_else(|| {
                AgentError::BadRequest(format!(
                    "device {dev} (from --devices) does not exist on this node"
                ))
            })?;
            st.node_ips
                .extend(st.netlink.addresses_v4(link.index).await?);
            st.datapath.attach_device(&dev)?;
            info!(device = %dev, "NodePort datapath attached");
        }
        // With NodePort devices, the link of the node address gets bpf_host too: replies
        // of NodePort flows SNATed to remote backends come back there (and NodePort
        // answers on the node address for traffic from other nodes).
        if let (Some(link), false) = (underlay.as_ref(), st.config.devices.is_empty()) {
            if !st.config.devices.contains(&link.name) {
                st.datapath.attach_device(&link.name)?;
                info!(device = %link.name, "NodePort datapath attached to the node-ip link");
            }
        }
        // The node address is a NodePort/HostPort frontend too (socket LB answers it).
        if let Some(ip) = st.config.node_ip {
            if !st.node_ips.contains(&ip) {
                st.node_ips.push(ip);
            }
        }
        // The socket programs are attached afresh each start (a restarted agent's new
        // programs replace the old ones; connections opened in between are translated
        // per packet by bpf_lxc), or removed when kube-proxy handles services.
        st.datapath.detach_cgroup()?;
        match (
            st.config.cgroup_root.clone(),
            st.config.kube_proxy_replacement(),
        ) {
            (Some(cg), true) => {
                crate::datapath::loader::ensure_cgroup2(&cg)?;
                st.datapath.attach_cgroup(&cg)?;
                info!(cgroup = %cg.display(), "socket load balancer attached");
            }
            (Some(_), false) => info!("kube-proxy replacement off: no socket load balancer"),
            _ => {}
        }
        st.kube_proxy_chains = sync_kube_proxy_chains(st.config.kube_proxy_replacement());
        st.restore().await?;
        st.adopt_maps()?;
        st.regenerate().await?;
        Ok(st)
    }

    /// cilium_host/cilium_net: a veth pair owning the router (gateway) address, as in Cilium.
    async fn setup_host(&mut self) -> Result<(), AgentError> {
        if let Err(e) = write_sysctl("net.ipv4.ip_forward", "1") {
            warn!(error = %e, "cannot enable IPv4 forwarding");
        }
        let host = match self.netlink.link_by_name(HOST_DEV).await? {
            Some(l) => l,
            None => {
                self.netlink.add_veth(HOST_DEV, NET_DEV, self.mtu).await?;
                self.netlink.link(HOST_DEV).await?
            }
        };
        if let Some(net) = self.netlink.link_by_name(NET_DEV).await? {
            self.netlink.set_up(net.index).await?;
        }
        self.netlink.set_up(host.index).await?;
        let router = self.ipam.router_v4();
        self.netlink
            .add_address(host.index, IpAddr::V4(router), 32)
            .await?;
        info!(router = %router, "host device ready");
        Ok(())
    }

    /// Adopts endpoints from the state directory: re-programs their maps and swaps the
    /// new programs into their pinned links; endpoints whose link vanished are removed.
    async fn restore(&mut self) -> Result<(), AgentError> {
        let eps: Vec<Endpoint> = self.endpoints.list().cloned().collect();
        for ep in eps {
            let link = self.netlink.link_by_name(&ep.host_ifname).await?;
            match link {
                Some(l) => {
                    let mut ep = ep;
                    ep.host_ifindex = l.index;
                    ep.host_mac = mac_string(&l.mac);
                    self.ipam
                        .v4
                        .allocate_specific(IpAddr::V4(ep.ipv4), &ep.owner())?;
                    if let (Some(v6), Some(pool)) = (ep.ipv6, self.ipam.v6.as_mut()) {
                        pool.allocate_specific(IpAddr::V6(v6), &ep.owner())?;
                    }
                    self.program_endpoint(&ep).await?;
                    info!(id = ep.id, ip = %ep.ipv4, link = %ep.host_ifname, "adopted endpoint");
                    self.endpoints.put(ep)?;
                }
                None => {
                    warn!(id = ep.id, link = %ep.host_ifname, "endpoint link is gone; removing endpoint");
                    self.datapath.remove_endpoint(
                        EndpointKey::new(ep.ipv4),
                        ep.host_ifindex,
                        ep.id,
                    )?;
                    self.datapath.detach_endpoint(&ep.host_ifname)?;
                    self.endpoints.remove(ep.id);
                }
            }
        }
        Ok(())
    }

    /// Announces this node through the source (CiliumNode).
    async fn announce_node(&mut self) -> Result<(), AgentError> {
        if let Some(source) = &self.source {
            source.publish_node(&source::OwnNode {
                name: self.config.node_name.clone(),
                ip: self.config.node_ip,
                pod_cidr: self.config.pod_cidr,
                router: self.ipam.router_v4(),
            })?;
        }
        if let Some(ip) = self.config.node_ip {
            info!(node_ip = %ip, "node announced");
        }
        Ok(())
    }

    /// What the maps hold from before a restart becomes the base of the first diff,
    /// so stale entries are pruned and unchanged ones are not rewritten.
    fn adopt_maps(&mut self) -> Result<(), AgentError> {
        for (net, entry) in self.datapath.ipcache_entries()? {
            if let ipnet::IpNet::V4(n) = net {
                self.policy.ipcache.insert(n, entry);
            }
        }
        self.lb.maps = self.datapath.lb_entries()?;
        self.lb.maglev = self.datapath.maglev_entries()?;
        for (len, key, v) in self.datapath.policy_entries()? {
            self.policy.entries.insert(
                (len, key),
                v.flags & crate::datapath::maps::POLICY_F_DENY != 0,
            );
        }
        Ok(())
    }

    /// Maps, programs and the host route of one endpoint (idempotent).
    async fn program_endpoint(&mut self, ep: &Endpoint) -> Result<(), AgentError> {
        self.write_endpoint_map(ep)?;
        self.datapath.attach_endpoint(&ep.host_ifname)?;
        let _ = write_sysctl(&format!("net.ipv4.conf.{}.rp_filter", ep.host_ifname), "0");
        self.netlink
            .replace_route_v4(
                ep.ipv4,
                32,
                ep.host_ifindex,
                None,
                Some(self.ipam.router_v4()),
            )
            .await?;
        Ok(())
    }

    pub fn allocate(&mut self, req: &IpamRequest) -> Result<IpamResponse, AgentError> {
        if req.owner.trim().is_empty() {
            return Err(AgentError::BadRequest("owner must not be empty".into()));
        }
        let ip = self.ipam.v4.allocate(&req.owner)?;
        let ipv6 = match self.ipam.v6.as_mut() {
            Some(pool) => match pool.allocate(&req.owner) {
                Ok(ip6) => Some(AddressInfo {
                    ip: ip6,
                    gateway: pool.router(),
                    cidr: pool.cidr(),
                }),
                Err(e) => {
                    self.ipam.v4.release(ip);
                    return Err(e.into());
                }
            },
            None => None,
        };
        info!(owner = %req.owner, %ip, "allocated address");
        Ok(IpamResponse {
            ipv4: AddressInfo {
                ip,
                gateway: self.ipam.v4.router(),
                cidr: self.ipam.v4.cidr(),
            },
            ipv6,
            mtu: self.mtu,
        })
    }

    /// Releases what `owner` holds, unless an endpoint still uses it.
    pub fn release_owner(&mut self, owner: &str) -> Vec<IpAddr> {
        let mut out = self.ipam.v4.release_owner(owner);
        if let Some(p) = self.ipam.v6.as_mut() {
            out.extend(p.release_owner(owner));
        }
        out
    }

    pub async fn create_endpoint(&mut self, req: EndpointRequest) -> Result<Endpoint, AgentError> {
        let owner = owner(&req.container_id, &req.ifname);
        match self.ipam.v4.owner_of(IpAddr::V4(req.ipv4)) {
            Some(o) if o == owner => {}
            Some(o) => {
                return Err(AgentError::Conflict(format!(
                    "address {} belongs to {o}, not {owner}",
                    req.ipv4
                )))
            }
            None => {
                return Err(AgentError::BadRequest(format!(
                    "address {} was not allocated by this agent; allocate with POST /v1/ipam first",
                    req.ipv4
                )))
            }
        }
        let link = self
            .netlink
            .link_by_name(&req.host_ifname)
            .await?
            .ok_or_else(|| {
                AgentError::BadRequest(format!(
                    "link {} does not exist on this node",
                    req.host_ifname
                ))
            })?;
        let id = match self.endpoints.find(&req.container_id, &req.ifname) {
            Some(existing) => existing.id,
            None => self.endpoints.next_id()?,
        };
        let ep = Endpoint {
            id,
            container_id: req.container_id,
            ifname: req.ifname,
            netns: req.netns,
            host_ifname: req.host_ifname,
            host_ifindex: link.index,
            host_mac: mac_string(&link.mac),
            pod_mac: req.pod_mac,
            ipv4: req.ipv4,
            ipv6: req.ipv6,
            k8s_namespace: req.k8s_namespace,
            k8s_pod_name: req.k8s_pod_name,
            labels: Default::default(),
            identity: 0,
            ingress_enforced: false,
            egress_enforced: false,
            port_mappings: req.port_mappings,
            state: "ready".into(),
        };
        // Identity and policy first, so the pod's first packet is already enforced.
        self.endpoints.put(ep.clone())?;
        let res = match self.regenerate().await {
            Ok(()) => {
                let ep = self.endpoints.get(ep.id).cloned().unwrap_or(ep.clone());
                self.program_endpoint(&ep).await.map(|_| ep)
            }
            Err(e) => Err(e),
        };
        let ep = match res {
            Ok(ep) => ep,
            Err(e) => {
                // Nothing half-applied: undo maps and links of this endpoint.
                let _ = self.datapath.remove_endpoint(
                    EndpointKey::new(ep.ipv4),
                    ep.host_ifindex,
                    ep.id,
                );
                let _ = self.datapath.detach_endpoint(&ep.host_ifname);
                self.endpoints.remove(ep.id);
                let _ = self.regenerate().await;
                return Err(e);
            }
        };
        info!(id = ep.id, ip = %ep.ipv4, link = %ep.host_ifname, pod = ?ep.k8s_pod_name, "endpoint created");
        Ok(ep)
    }

    /// Removes an endpoint and releases its addresses.
    pub async fn delete_endpoint(
        &mut self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Endpoint>, AgentError> {
        let released = self.release_owner(&owner(container_id, ifname));
        let Some(ep) = self.endpoints.find(container_id, ifname).cloned() else {
            if !released.is_empty() {
                info!(
                    container_id,
                    ?released,
                    "released addresses of an attachment without endpoint"
                );
            }
            return Ok(None);
        };
        // Programs first: a packet must never meet a program whose endpoint entry is gone.
        self.datapath.detach_endpoint(&ep.host_ifname)?;
        self.datapath
            .remove_endpoint(EndpointKey::new(ep.ipv4), ep.host_ifindex, ep.id)?;
        if let Err(e) = self
            .netlink
            .delete_route_v4(ep.ipv4, 32, ep.host_ifindex, false)
            .await
        {
            warn!(error = %e, "removing the endpoint route");
        }
        self.endpoints.remove(ep.id);
        if let Err(e) = self.regenerate().await {
            warn!(error = %e, "regeneration after endpoint deletion");
        }
        info!(id = ep.id, ip = %ep.ipv4, "endpoint deleted");
        Ok(Some(ep))
    }

    /// Removes endpoints and allocations the runtime no longer knows.
    pub async fn gc(&mut self, req: &GcRequest) -> Result<GcResponse, AgentError> {
        let valid: std::collections::HashSet<String> =
            req.valid.iter().map(|(c, i)| owner(c, i)).collect();
        let mut out = GcResponse::default();
        let stale: Vec<(String, String)> = self
            .endpoints
            .list()
            .filter(|e| !valid.contains(&e.owner()))
            .map(|e| (e.container_id.clone(), e.ifname.clone()))
            .collect();
        for (c, i) in stale {
            if let Some(ep) = self.delete_endpoint(&c, &i).await? {
                out.removed_endpoints.push(ep.owner());
                out.released_ips.push(IpAddr::V4(ep.ipv4));
            }
        }
        let stale_owners: Vec<String> = self
            .ipam
            .v4
            .allocations()
            .map(|(_, o)| o.clone())
            .filter(|o| !valid.contains(o))
            .collect();
        for o in stale_owners {
            out.released_ips.extend(self.release_owner(&o));
        }
        Ok(out)
    }

    pub fn status(&self) -> StatusResponse {
        StatusResponse {
            node_name: self.config.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            state: "Ok".into(),
            pod_cidr_v4: self.ipam.v4.cidr(),
            pod_cidr_v6: self.ipam.v6.as_ref().map(|p| p.cidr()),
            router_ipv4: self.ipam.v4.router(),
            endpoints: self.endpoints.len(),
            ipam_used: self.ipam.v4.used(),
            bpf_root: self.config.bpf_root.display().to_string(),
            kube_proxy_chains: self.kube_proxy_chains,
            kube_proxy_replacement: match (self.config.cgroup_root.is_some(), self.config.devices.is_empty()) {
                _ if !self.config.kube_proxy_replacement() => "False".into(),
                (true, false) => format!(
                    "True [socket LB (TCP, UDP, affinity); NodePort on {} (Maglev {}, {} to remote backends)]",
                    self.config.devices.join(","),
                    self.config.maglev_table_size,
                    match self.config.bpf_lb_mode {
                        LbMode::Snat => "SNAT",
                        LbMode::Dsr => "DSR",
                    }
                ),
                (true, true) => "True [socket LB (TCP, UDP, affinity); no NodePort devices]".into(),
                (false, false) => format!("Partial [NodePort on {}]", self.config.devices.join(",")),
                (false, true) => "False".into(),
            },
            routing: match (self.tunnel_link, self.underlay_link) {
                (Some(_), _) => format!("Tunnel [{}]", self.config.tunnel_protocol.name()),
                (None, Some(_)) => "Native".into(),
                (None, None) => "Single node".into(),
            },
            mtu: self.mtu,
            policy_revision: self.policy.generation.unwrap_or(0),
            last_regeneration_ms: self.policy.last_regeneration.as_secs_f64() * 1e3,
            services: self.lb.state.as_ref().map_or(0, |s| s.services.len()),
            policy_enforcement: format!("{:?}", self.config.enable_policy).to_lowercase(),
            uptime_seconds: self.started.elapsed().as_secs(),
        }
    }

    pub fn router_v4(&self) -> Ipv4Addr {
        self.ipam.router_v4()
    }
}

/// Runs the agent until SIGTERM/SIGINT. Leaves the datapath in place on exit.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let socket = config.socket.clone();
    let health = match config.health_port {
        0 => None,
        port => Some(api::bind_health(port).await?),
    };
    let (config, source, kube_config) = connect(config).await?;
    let mut state = AgentState::start_with(config, source, kube_config).await?;
    info!(node = %state.config.node_name, cidr = %state.config.pod_cidr, endpoints = state.endpoints.len(), "agent started");
    let ring = state.datapath.take_events()?;
    let events = events::spawn_reader(ring)?;
    let gc_every = std::time::Duration::from_secs(state.config.ct_gc_interval.max(1));
    let shared: Shared = Arc::new(Mutex::new(state));
    tokio::spawn(watch_store(shared.clone()));
    tokio::spawn(ct_gc(shared.clone(), gc_every));
    tokio::spawn(kube_proxy_chains(shared.clone()));
    if let Some(listener) = health {
        api::serve_health(shared.clone(), listener);
    }
    api::serve(shared, events, &socket).await?;
    info!("agent stopped; the datapath keeps forwarding");
    Ok(())
}

/// In Kubernetes mode (see [`AgentConfig::store`]): the client, this node's CiliumNode
/// and pod CIDR ([`publish_k8s::bootstrap_node`]), the watchers synced. The config comes
/// back with the pod CIDR and node address learnt.
async fn connect(
    mut config: AgentConfig,
) -> anyhow::Result<(
    AgentConfig,
    Option<Arc<dyn source::Source>>,
    Option<kube::Config>,
)> {
    let flags = source_k8s::ClientFlags {
        kubeconfig: config.k8s_kubeconfig_path.clone(),
        api_server: config.k8s_api_server.clone(),
        service_host: config.k8s_service_host.clone(),
        service_port: config.k8s_service_port,
    };
    if config.store.is_some() {
        if flags.kubeconfig.is_some() || flags.api_server.is_some() {
            anyhow::bail!("--store (local mode) and --k8s-kubeconfig-path/--k8s-api-server (Kubernetes mode) exclude each other: give one");
        }
        return Ok((config, None, None));
    }
    if !flags.wanted() {
        return Ok((config, None, None));
    }
    let kube_config = flags.config().await?;
    info!(server = %kube_config.cluster_url, node = %config.node_name, ipam = ?config.ipam, "Kubernetes mode");
    let client = kube::Client::try_from(kube_config.clone())
        .map_err(|e| anyhow::anyhow!("building the Kubernetes client: {e}"))?;
    let setup = publish_k8s::bootstrap_node(
        &client,
        &publish_k8s::BootstrapOptions {
            node_name: config.node_name.clone(),
            node_ip: config.node_ip,
            ipam: config.ipam,
            poll: std::time::Duration::from_secs(2),
        },
    )
    .await?;
    config.pod_cidr = setup.pod_cidr;
    config.node_ip = setup.ip;
    let src = source_k8s::K8sSource::start(
        client,
        source_k8s::K8sSourceOptions {
            node_name: config.node_name.clone(),
            ipam: config.ipam,
        },
    );
    src.wait_synced().await;
    Ok((config, Some(Arc::new(src)), Some(kube_config)))
}

/// Applies store changes whenever its generation changes (polled every 20 ms: one
/// small file read).
async fn watch_store(state: Shared) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        tick.tick().await;
        let mut st = state.lock().await;
        let Some(gen) = st.source.as_ref().map(|s| s.generation()) else {
            return;
        };
        if st.policy.generation != Some(gen) {
            if let Err(e) = st.apply_store_changes().await {
                warn!(error = %e, "regeneration failed; the previous policy keeps enforcing");
                // Do not retry the same generation in a tight loop.
                st.policy.generation = Some(gen);
            }
        }
    }
}

/// With kube-proxy replacement on (`kpr`), removes kube-proxy's iptables chains from
/// the node (kube-proxy must be gone from it, or it re-adds them); returns how many
/// remain. None when iptables cannot be inspected here (no iptables binaries).
pub fn sync_kube_proxy_chains(kpr: bool) -> Option<usize> {
    match kube_proxy::sync(kpr) {
        Ok(c) => {
            if c.removed > 0 {
                info!(chains = c.removed, "kube-proxy's iptables chains removed");
            }
            if let Some(e) = c.failed {
                warn!(error = %e, "removing kube-proxy's iptables chains");
            }
            Some(c.remaining)
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot inspect iptables");
            None
        }
    }
}

/// Keeps kube-proxy's iptables chains off the node while replacing it (they come
/// back if kube-proxy still runs there: logged each time) and the count current.
async fn kube_proxy_chains(state: Shared) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.tick().await; // the first tick is immediate: the start already did this
    loop {
        tick.tick().await;
        // iptables runs without the agent's lock (a handful of processes per pass).
        let kpr = state.lock().await.config.kube_proxy_replacement();
        let n = tokio::task::spawn_blocking(move || sync_kube_proxy_chains(kpr))
            .await
            .ok()
            .flatten();
        let mut st = state.lock().await;
        if n != st.kube_proxy_chains {
            st.kube_proxy_chains = n;
            st.publish_status();
        }
    }
}

/// Removes expired conntrack entries periodically.
/// The walk runs on a blocking thread with a handle of its own on the pinned table: the
/// agent's lock (API, regeneration) is not held while it reads up to the whole table.
async fn ct_gc(state: Shared, every: std::time::Duration) {
    let root = state.lock().await.datapath.root().to_path_buf();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u32)
            .unwrap_or(0);
        let root = root.clone();
        match tokio::task::spawn_blocking(move || crate::datapath::loader::ct_gc(&root, now)).await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(removed = n, "conntrack garbage collection"),
            Ok(Err(e)) => warn!(error = %e, "conntrack garbage collection"),
            Err(e) => warn!(error = %e, "conntrack garbage collection task"),
        }
    }
}
