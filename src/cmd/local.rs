//! `cilium local`: a cluster of network namespaces on this host with the real agent,
//! CNI plugin and datapath. Nothing touches the root namespace's devices; `down`
//! removes every namespace, link, pin, file and process it made.
use std::{
    collections::BTreeMap,
    fs::File,
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    agent::RoutingMode,
    agent::{
        client::Client,
        store::{PodObject, Store},
    },
    datapath::{link::TunnelProtocol, netns},
};

/// Where local clusters keep their state.
pub const STATE_ROOT: &str = "/var/run/cilium-local";
const NETNS_DIR: &str = "/var/run/netns";
const BPF_DIR: &str = "/sys/fs/bpf";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub netns: PathBuf,
    pub socket: PathBuf,
    pub bpf_root: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub pod_cidr: ipnet::Ipv4Net,
    pub agent_pid: Option<u32>,
    /// cgroup v2 directory of the node's pods (socket load balancing attaches here).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Address on the underlay between nodes.
    #[serde(default)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Devices the agent attaches bpf_host to (NodePort).
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default = "default_routing")]
    pub routing: RoutingMode,
    #[serde(default = "default_tunnel_protocol")]
    pub tunnel_protocol: TunnelProtocol,
    /// The agent's --kube-proxy-replacement.
    #[serde(default = "default_true")]
    pub kube_proxy_replacement: bool,
    /// The agent's --bpf-lb-mode.
    #[serde(default = "default_lb_mode")]
    pub bpf_lb_mode: crate::agent::LbMode,
}

fn default_lb_mode() -> crate::agent::LbMode {
    crate::agent::LbMode::Snat
}

fn default_true() -> bool {
    true
}

fn default_routing() -> RoutingMode {
    RoutingMode::Native
}

fn default_tunnel_protocol() -> TunnelProtocol {
    TunnelProtocol::Vxlan
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    pub namespace: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub node: String,
    pub ifname: String,
    pub ipv4: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub pid: Option<u32>,
    /// HostPorts, passed to the CNI plugin as runtimeConfig portMappings.
    #[serde(default)]
    pub host_ports: Vec<HostPort>,
}

/// A pod's HostPort (`--publish 8081:8080/tcp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

impl std::str::FromStr for HostPort {
    type Err = String;
    /// `HOST:CONTAINER[/tcp|udp]`, as podman's --publish.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not HOSTPORT:CONTAINERPORT[/tcp|udp] (e.g. 8081:8080/tcp)");
        let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let proto = proto.to_ascii_lowercase();
        if proto != "tcp" && proto != "udp" {
            return Err(bad());
        }
        let (h, c) = ports.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        Ok(Self {
            host_port: port(h)?,
            container_port: port(c)?,
            protocol: proto,
        })
    }
}

/// Validates a cluster or pod name: it ends up in namespace and file names.
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if !ok {
        bail!("invalid {kind} name {name:?}: use 1-32 characters of a-z, 0-9 and '-', not starting with '-'");
    }
    Ok(())
}

pub fn netns_name(cluster: &str, what: &str) -> String {
    format!("cilium-{cluster}.{what}")
}

impl Cluster {
    pub fn dir_of(name: &str) -> PathBuf {
        Path::new(STATE_ROOT).join(name)
    }

    pub fn load(name: &str) -> Result<Self> {
        let path = Self::dir_of(name).join("cluster.json");
        let bytes = std::fs::read(&path)
            .with_context(|| format!("local cluster {name:?} is not up (no {}); start it with `cilium local up --name {name}`", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is corrupt; run `cilium local down --name {name}`",
                path.display()
            )
        })
    }

    fn save(&self) -> Result<()> {
        let path = self.dir.join("cluster.json");
        let tmp = self.dir.join(".cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Names of every local cluster on this host.
    pub fn list() -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(STATE_ROOT)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("cluster.json").exists())
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn node(&self, name: Option<&str>) -> Result<&NodeSpec> {
        match name {
            None => self
                .nodes
                .first()
                .ok_or_else(|| anyhow!("cluster {} has no nodes", self.name)),
            Some(n) => self
                .nodes
                .iter()
                .find(|x| x.name == n)
                .ok_or_else(|| anyhow!("cluster {} has no node {n:?}", self.name)),
        }
    }

    fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }

    /// The cluster's local store (pods' labels, namespaces, policies).
    pub fn store(&self) -> Result<Store> {
        Ok(Store::open(&self.dir.join("store"))?)
    }

    pub fn pods(&self) -> Vec<PodRecord> {
        let mut v: Vec<PodRecord> = std::fs::read_dir(self.pods_dir())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a: &PodRecord, b| a.name.cmp(&b.name));
        v
    }

    pub fn pod(&self, name: &str) -> Result<PodRecord> {
        let p = self.pods_dir().join(format!("{name}.json"));
        let bytes = std::fs::read(&p)
            .with_context(|| format!("no pod {name:?} in local cluster {}", self.name))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    fn save_pod(&self, pod: &PodRecord) -> Result<()> {
        std::fs::create_dir_all(self.pods_dir())?;
        std::fs::write(
            self.pods_dir().join(format!("{}.json", pod.name)),
            serde_json::to_vec_pretty(pod)?,
        )?;
        Ok(())
    }

    /// The network configuration the local runtime hands to the CNI plugin.
    pub fn cni_conf(&self, node: &NodeSpec, pod: &PodRecord) -> serde_json::Value {
        let mut conf = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "cilium",
            "type": "cilium-cni",
            "agentSocket": node.socket,
        });
        if !pod.host_ports.is_empty() {
            let maps: Vec<serde_json::Value> = pod
                .host_ports
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "hostPort": h.host_port,
                        "containerPort": h.container_port,
                        "protocol": h.protocol,
                    })
                })
                .collect();
            conf["runtimeConfig"] = serde_json::json!({ "portMappings": maps });
        }
        conf
    }

    /// A CNI conflist for real runtimes (podman, containerd) on this cluster's first node.
    pub fn conflist(&self, node: &NodeSpec) -> serde_json::Value {
        crate::cni::install::conflist(&node.socket.display().to_string())
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL.
fn stop_pid(pid: u32, grace: Duration) {
    use nix::{
        sys::signal::{kill, Signal},
        unistd::Pid,
    };
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let start = Instant::now();
    while pid_alive(pid) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid_alive(pid) {
        let _ = kill(p, Signal::SIGKILL);
        let start = Instant::now();
        while pid_alive(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Kills a pod's process group (the pod command and its children).
fn kill_group(pid: u32) {
    use nix::{
        sys::signal::{killpg, Signal},
        unistd::Pid,
    };
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let start = Instant::now();
    while pid_alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn add_netns(name: &str) -> Result<PathBuf> {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        rtnetlink::NetworkNamespace::add(name.to_string())
            .await
            .map_err(|e| anyhow!("creating network namespace {name}: {e}"))?;
    }
    // Loopback up inside, as a runtime does.
    netns::block_on_in_netns(&path, || async {
        let nl = crate::datapath::link::Netlink::connect()?;
        if let Some(lo) = nl.link_by_name("lo").await? {
            nl.set_up(lo.index).await?;
        }
        Ok::<_, crate::datapath::link::LinkError>(())
    })??;
    Ok(path)
}

pub async fn del_netns(path: &Path) {
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        if path.exists() {
            if let Err(e) = rtnetlink::NetworkNamespace::del(name.to_string()).await {
                eprintln!("warning: removing network namespace {name}: {e}");
            }
        }
    }
}

fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating the cilium executable")
}

/// Options of `cilium local up`.
pub struct UpOptions {
    pub name: String,
    /// The cluster's pod CIDR pool: one node uses it whole, several get a /24 each.
    pub pod_cidr: ipnet::Ipv4Net,
    pub nodes: usize,
    pub timeout: Duration,
    pub routing: RoutingMode,
    pub tunnel_protocol: TunnelProtocol,
    pub kube_proxy_replacement: bool,
    pub bpf_lb_mode: crate::agent::LbMode,
}

/// Splits the pod CIDR pool over the nodes: the whole pool for one node, a /24 each
/// otherwise.
pub fn node_cidrs(pool: ipnet::Ipv4Net, nodes: usize) -> Result<Vec<ipnet::Ipv4Net>> {
    if nodes == 0 || nodes > 200 {
        bail!("--nodes must be between 1 and 200");
    }
    if nodes == 1 {
        return Ok(vec![pool]);
    }
    let subnets: Vec<ipnet::Ipv4Net> = pool
        .subnets(24)
        .map(|s| s.take(nodes).collect())
        .unwrap_or_default();
    if subnets.len() < nodes {
        bail!(
            "pod CIDR {pool} has no room for {nodes} nodes with a /24 each: give a larger pool, e.g. --pod-cidr 10.200.0.0/16"
        );
    }
    Ok(subnets)
}

/// The underlay address of node k (1-based), in TEST-NET-1.
fn node_ip(k: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(192, 0, 2, 10 + k as u8)
}

pub async fn up(opts: UpOptions) -> Result<Cluster> {
    check_name("cluster", &opts.name)?;
    let dir = Cluster::dir_of(&opts.name);
    if dir.join("cluster.json").exists() {
        let c = Cluster::load(&opts.name)?;
        let alive = c.nodes.iter().all(|n| n.agent_pid.is_some_and(pid_alive));
        if alive {
            bail!(
                "local cluster {:?} is already up; `cilium local down --name {}` removes it",
                opts.name,
                opts.name
            );
        }
        bail!(
            "local cluster {:?} exists but its agent is not running; run `cilium local down --name {}` first",
            opts.name,
            opts.name
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let res = up_inner(&opts, &dir).await;
    if res.is_err() {
        let _ = down(&opts.name).await;
    }
    res
}

async fn up_inner(opts: &UpOptions, dir: &Path) -> Result<Cluster> {
    let cidrs = node_cidrs(opts.pod_cidr, opts.nodes)?;
    let underlay = add_netns(&netns_name(&opts.name, "underlay")).await?;
    let outside = add_netns(&netns_name(&opts.name, "outside")).await?;
    let mut cluster = Cluster {
        name: opts.name.clone(),
        dir: dir.to_path_buf(),
        nodes: vec![],
    };
    for (k, cidr) in cidrs.iter().enumerate() {
        let node_name = format!("node{}", k + 1);
        let node_dir = dir.join("nodes").join(&node_name);
        std::fs::create_dir_all(&node_dir)?;
        let ns = add_netns(&netns_name(&opts.name, &node_name)).await?;
        connect_underlay(&underlay, &ns, k + 1).await?;
        let mut devices = Vec::new();
        if k == 0 {
            // The "outside" hangs off the first node; it reaches every pod through it.
            connect_outside(&ns, &outside, opts.pod_cidr).await?;
            devices.push("cilium_ext".to_string());
        } else {
            route_outside_via_first(&ns).await?;
        }
        cluster.nodes.push(NodeSpec {
            name: node_name.clone(),
            netns: ns,
            socket: node_dir.join("cilium.sock"),
            bpf_root: Path::new(BPF_DIR)
                .join(format!("cilium-local-{}", opts.name))
                .join(&node_name),
            state_dir: node_dir.join("state"),
            log: node_dir.join("agent.log"),
            pod_cidr: *cidr,
            agent_pid: None,
            cgroup: Some(create_cgroup(&opts.name, &node_name)?),
            node_ip: Some(node_ip(k + 1)),
            devices,
            routing: opts.routing,
            tunnel_protocol: opts.tunnel_protocol,
            kube_proxy_replacement: opts.kube_proxy_replacement,
            bpf_lb_mode: opts.bpf_lb_mode,
        });
    }
    // Written before the agents start so `down` finds everything even if a start fails.
    cluster.save()?;
    for i in 0..cluster.nodes.len() {
        let pid = start_agent(&cluster.nodes[i])?;
        cluster.nodes[i].agent_pid = Some(pid);
        cluster.save()?;
    }
    for node in &cluster.nodes {
        wait_agent(node, opts.timeout).await?;
    }
    let node = cluster.nodes[0].clone();

    // The CNI configuration for real runtimes, and the plugin where they look for it.
    let cni_dir = dir.join("cni");
    std::fs::create_dir_all(cni_dir.join("net.d"))?;
    std::fs::create_dir_all(cni_dir.join("bin"))?;
    std::fs::write(
        cni_dir.join("net.d/05-cilium.conflist"),
        serde_json::to_vec_pretty(&cluster.conflist(&node))?,
    )?;
    let link = cni_dir.join("bin/cilium-cni");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(self_exe()?, &link)?;
    Ok(cluster)
}

/// The cluster directory of a node (`<cluster>/nodes/<node>/..`).
fn cluster_dir_of(node: &NodeSpec) -> PathBuf {
    node.state_dir
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn node_store(node: &NodeSpec) -> PathBuf {
    cluster_dir_of(node).join("store")
}

fn node_identities(node: &NodeSpec) -> PathBuf {
    cluster_dir_of(node).join("identities")
}

fn cgroup2() -> Result<PathBuf> {
    netns::cgroup2_root().ok_or_else(|| {
        anyhow!("no cgroup v2 hierarchy is mounted: socket load balancing needs one (mount -t cgroup2 none /sys/fs/cgroup/unified)")
    })
}

/// A node's cgroup (under the cgroup v2 hierarchy, never its root).
fn create_cgroup(cluster: &str, node: &str) -> Result<PathBuf> {
    let dir = cgroup2()?.join(format!("cilium-{cluster}.{node}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    Ok(dir)
}

/// Removes the cluster's cgroups once their processes are gone.
fn remove_cgroups(cluster: &str) -> Vec<String> {
    let Ok(root) = cgroup2() else {
        return vec![];
    };
    let prefix = format!("cilium-{cluster}.");
    std::fs::read_dir(&root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .filter_map(|e| remove_cgroup(&e.path()))
                .collect()
        })
        .unwrap_or_default()
}

fn remove_cgroup(dir: &Path) -> Option<String> {
    if !dir.exists() {
        return None;
    }
    let start = Instant::now();
    while std::fs::remove_dir(dir).is_err() && start.elapsed() < Duration::from_secs(5) {
        // Kill stragglers (processes a user started in a pod with `local exec`).
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(format!("cgroup {}", dir.display()))
}

/// Opens a node's cgroup.procs, for moving a pod's process in.
fn cgroup_procs(node: &NodeSpec) -> Result<Option<File>> {
    match &node.cgroup {
        Some(c) => Ok(Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .with_context(|| format!("opening {}/cgroup.procs", c.display()))?,
        )),
        None => Ok(None),
    }
}

/// Joins a node to the underlay (a bridge in a namespace of its own) with its address.
async fn connect_underlay(underlay: &Path, node_ns: &Path, k: usize) -> Result<()> {
    use crate::datapath::link::{LinkError, Netlink};
    let node_file = File::open(node_ns)?;
    let port = format!("n{k}");
    netns::block_on_in_netns(underlay, || async {
        let nl = Netlink::connect()?;
        let br = match nl.link_by_name("br0").await? {
            Some(b) => b,
            None => {
                nl.add_bridge("br0").await?;
                nl.link("br0").await?
            }
        };
        nl.set_up(br.index).await?;
        if nl.link_by_name(&port).await?.is_none() {
            nl.add_veth_into(
                &port,
                "eth0",
                std::os::fd::AsRawFd::as_raw_fd(&node_file),
                1500,
            )
            .await?;
        }
        let p = nl.link(&port).await?;
        nl.set_master(p.index, br.index).await?;
        nl.set_up(p.index).await?;
        Ok::<_, LinkError>(())
    })??;
    netns::block_on_in_netns(node_ns, || async {
        let nl = Netlink::connect()?;
        let l = nl.link("eth0").await?;
        nl.add_address(l.index, std::net::IpAddr::V4(node_ip(k)), 24)
            .await?;
        nl.set_up(l.index).await?;
        Ok::<_, LinkError>(())
    })??;
    Ok(())
}

/// Other nodes reach the "outside" ranges through the first node.
async fn route_outside_via_first(node_ns: &Path) -> Result<()> {
    use crate::datapath::link::{LinkError, Netlink};
    use std::net::Ipv4Addr;
    netns::block_on_in_netns(node_ns, || async {
        let nl = Netlink::connect()?;
        let l = nl.link("eth0").await?;
        for net in [
            Ipv4Addr::new(203, 0, 113, 0),
            Ipv4Addr::new(198, 51, 100, 0),
        ] {
            nl.replace_route_v4(net, 24, l.index, Some(node_ip(1)), None)
                .await?;
        }
        Ok::<_, LinkError>(())
    })??;
    Ok(())
}

/// Addresses of the "outside" namespace that plays the internet (documentation ranges).
pub const OUTSIDE_NODE_SIDE: &str = "203.0.113.1";
pub const OUTSIDE_ADDR: &str = "203.0.113.2";
pub const OUTSIDE_EXTRA: &str = "198.51.100.2";

/// Joins the node to the "outside" namespace with a veth pair: the node routes the
/// documentation ranges there, the outside routes the pod CIDR back through the node.
async fn connect_outside(
    node_ns: &Path,
    outside_ns: &Path,
    pod_cidr: ipnet::Ipv4Net,
) -> Result<()> {
    use crate::datapath::link::{LinkError, Netlink};
    use std::net::{IpAddr, Ipv4Addr};
    let outside_file = File::open(outside_ns)?;
    let node_side: Ipv4Addr = OUTSIDE_NODE_SIDE.parse()?;
    let outside_addr: Ipv4Addr = OUTSIDE_ADDR.parse()?;
    let extra: Ipv4Addr = OUTSIDE_EXTRA.parse()?;
    netns::block_on_in_netns(node_ns, || async {
        let nl = Netlink::connect()?;
        if nl.link_by_name("cilium_ext").await?.is_none() {
            nl.add_veth_into(
                "cilium_ext",
                "eth0",
                std::os::fd::AsRawFd::as_raw_fd(&outside_file),
                1500,
            )
            .await?;
        }
        let l = nl.link("cilium_ext").await?;
        nl.add_address(l.index, IpAddr::V4(node_side), 24).await?;
        nl.set_up(l.index).await?;
        nl.replace_route_v4(
            Ipv4Addr::new(198, 51, 100, 0),
            24,
            l.index,
            Some(outside_addr),
            None,
        )
        .await?;
        Ok::<_, LinkError>(())
    })??;
    netns::block_on_in_netns(outside_ns, || async {
        let nl = Netlink::connect()?;
        let l = nl.link("eth0").await?;
        nl.add_address(l.index, IpAddr::V4(outside_addr), 24)
            .await?;
        nl.set_up(l.index).await?;
        if let Some(lo) = nl.link_by_name("lo").await? {
            nl.add_address(lo.index, IpAddr::V4(extra), 32).await?;
        }
        nl.replace_route_v4(
            pod_cidr.network(),
            pod_cidr.prefix_len(),
            l.index,
            Some(node_side),
            None,
        )
        .await?;
        Ok::<_, LinkError>(())
    })??;
    Ok(())
}

/// Starts a node's agent in the background, inside the node's namespace.
pub fn start_agent(node: &NodeSpec) -> Result<u32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .with_context(|| format!("opening {}", node.log.display()))?;
    let child = Command::new(self_exe()?)
        .arg("agent")
        .arg("--node-name")
        .arg(&node.name)
        .arg("--netns")
        .arg(&node.netns)
        .arg("--pod-cidr")
        .arg(node.pod_cidr.to_string())
        .arg("--socket")
        .arg(&node.socket)
        .arg("--state-dir")
        .arg(&node.state_dir)
        .arg("--bpf-root")
        .arg(&node.bpf_root)
        .arg("--store")
        .arg(node_store(node))
        .arg("--identity-dir")
        .arg(node_identities(node))
        .args(
            node.cgroup
                .iter()
                .flat_map(|c| [std::ffi::OsStr::new("--cgroup-root"), c.as_os_str()]),
        )
        .args(
            node.node_ip
                .iter()
                .flat_map(|ip| ["--node-ip".to_string(), ip.to_string()]),
        )
        .arg("--routing-mode")
        .arg(match node.routing {
            RoutingMode::Tunnel => "tunnel",
            RoutingMode::Native => "native",
        })
        .arg("--tunnel-protocol")
        .arg(node.tunnel_protocol.name())
        .arg(format!(
            "--kube-proxy-replacement={}",
            node.kube_proxy_replacement
        ))
        .arg("--bpf-lb-mode")
        .arg(match node.bpf_lb_mode {
            crate::agent::LbMode::Snat => "snat",
            crate::agent::LbMode::Dsr => "dsr",
        })
        .args(if node.devices.is_empty() {
            vec![]
        } else {
            vec!["--devices".to_string(), node.devices.join(",")]
        })
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the agent")?;
    Ok(child.id())
}

async fn wait_agent(node: &NodeSpec, timeout: Duration) -> Result<()> {
    let client = Client::new(&node.socket);
    let start = Instant::now();
    loop {
        if client.status().await.is_ok() {
            return Ok(());
        }
        if let Some(pid) = node.agent_pid {
            if !pid_alive(pid) {
                bail!(
                    "the agent of {} exited during start:\n{}",
                    node.name,
                    log_tail(&node.log, 20)
                );
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "the agent of {} did not become ready within {:?}:\n{}",
                node.name,
                timeout,
                log_tail(&node.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn log_tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Restarts (or starts) a node's agent; used after a stop to check adoption.
pub async fn restart_agent(
    cluster_name: &str,
    node: Option<&str>,
    stop_only: bool,
    kube_proxy_replacement: Option<bool>,
) -> Result<()> {
    let mut cluster = Cluster::load(cluster_name)?;
    let idx = {
        let n = cluster.node(node)?;
        cluster
            .nodes
            .iter()
            .position(|x| x.name == n.name)
            .unwrap_or(0)
    };
    if let Some(pid) = cluster.nodes[idx].agent_pid {
        stop_pid(pid, Duration::from_secs(10));
    }
    cluster.nodes[idx].agent_pid = None;
    if let Some(kpr) = kube_proxy_replacement {
        cluster.nodes[idx].kube_proxy_replacement = kpr;
    }
    if !stop_only {
        let pid = start_agent(&cluster.nodes[idx])?;
        cluster.nodes[idx].agent_pid = Some(pid);
        cluster.save()?;
        wait_agent(&cluster.nodes[idx], Duration::from_secs(30)).await?;
    } else {
        cluster.save()?;
    }
    Ok(())
}

/// Removes a local cluster and everything it made. Idempotent.
pub async fn down(name: &str) -> Result<Vec<String>> {
    check_name("cluster", name)?;
    let mut removed = Vec::new();
    let dir = Cluster::dir_of(name);
    if let Ok(cluster) = Cluster::load(name) {
        for pod in cluster.pods() {
            if let Some(pid) = pod.pid {
                kill_group(pid);
            }
            del_netns(&pod.netns).await;
            removed.push(format!("pod {}", pod.name));
        }
        for node in &cluster.nodes {
            if let Some(pid) = node.agent_pid {
                stop_pid(pid, Duration::from_secs(10));
                removed.push(format!("agent of {} (pid {pid})", node.name));
            }
        }
    }
    removed.extend(remove_cgroups(name));
    // Pins: unpinning the links detaches the programs; then the maps.
    let bpf = Path::new(BPF_DIR).join(format!("cilium-local-{name}"));
    if bpf.exists() {
        std::fs::remove_dir_all(&bpf)
            .with_context(|| format!("removing pins under {}", bpf.display()))?;
        removed.push(format!("pins {}", bpf.display()));
    }
    // Every namespace of the cluster, including ones a crashed command left behind.
    let prefix = format!("cilium-{name}.");
    if let Ok(rd) = std::fs::read_dir(NETNS_DIR) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                del_netns(&e.path()).await;
                removed.push(format!("netns {}", e.file_name().to_string_lossy()));
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        removed.push(format!("state {}", dir.display()));
    }
    Ok(removed)
}

/// Runs the CNI plugin for a pod the way a runtime does: exec'd as `cilium-cni`
/// in the node's namespace, with CNI_* variables and the config on stdin.
pub fn run_cni(
    cluster: &Cluster,
    node: &NodeSpec,
    command: &str,
    container_id: &str,
    pod_netns: &Path,
    pod: &PodRecord,
) -> Result<serde_json::Value> {
    let node_ns =
        File::open(&node.netns).with_context(|| format!("opening {}", node.netns.display()))?;
    let mut cmd = Command::new(self_exe()?);
    cmd.arg0("cilium-cni")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", pod_netns)
        .env("CNI_IFNAME", &pod.ifname)
        .env("CNI_PATH", cluster.dir.join("cni/bin"))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                pod.namespace, pod.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    netns::enter_on_exec(&mut cmd, &node_ns);
    let mut child = cmd.spawn().context("running the CNI plugin")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&serde_json::to_vec(&cluster.cni_conf(node, pod))?)?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let msg = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|v| {
                let m = v.get("msg")?.as_str()?.to_string();
                let d = v
                    .get("details")
                    .and_then(|d| d.as_str())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                Some(format!("{m}{d} (CNI error {})", v.get("code")?))
            })
            .unwrap_or_else(|| format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        bail!("CNI {command} failed: {msg}");
    }
    if stdout.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_str(&stdout)?)
}

/// Options of `cilium local run`.
pub struct RunOptions {
    pub cluster: String,
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub named_ports: BTreeMap<String, String>,
    pub host_ports: Vec<HostPort>,
    pub detach: bool,
    pub command: Vec<String>,
}

/// Starts a pod: its namespace, the CNI ADD, then the command inside it.
/// Foreground pods are removed when the command ends; returns the exit code.
pub async fn run(opts: RunOptions) -> Result<i32> {
    check_name("pod", &opts.name)?;
    let cluster = Cluster::load(&opts.cluster)?;
    let node = cluster.node(opts.node.as_deref())?.clone();
    if cluster.pod(&opts.name).is_ok() {
        bail!(
            "pod {:?} already exists in local cluster {}; remove it with `cilium local rm {}`",
            opts.name,
            cluster.name,
            opts.name
        );
    }
    if opts.command.is_empty() {
        bail!(
            "no command given: `cilium local run --name {} -- CMD...`",
            opts.name
        );
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let container_id: String = Sha256::digest(format!("{}/{}/{nanos}", cluster.name, opts.name))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // The pod object first: the agent derives the endpoint's identity from its labels.
    let store = cluster.store()?;
    store.put_pod(&PodObject {
        name: opts.name.clone(),
        namespace: opts.namespace.clone(),
        labels: opts.labels.clone(),
        service_account: None,
        named_ports: opts.named_ports.clone(),
    })?;
    let ns = match add_netns(&netns_name(&cluster.name, &format!("pod-{}", opts.name))).await {
        Ok(ns) => ns,
        Err(e) => {
            let _ = store.delete_pod(&opts.namespace, &opts.name);
            return Err(e);
        }
    };
    let mut pod = PodRecord {
        name: opts.name.clone(),
        namespace: opts.namespace.clone(),
        container_id: container_id.clone(),
        netns: ns.clone(),
        node: node.name.clone(),
        ifname: "eth0".into(),
        ipv4: None,
        labels: opts.labels.clone(),
        pid: None,
        host_ports: opts.host_ports.clone(),
    };
    cluster.save_pod(&pod)?;
    let result = match run_cni(&cluster, &node, "ADD", &container_id, &ns, &pod) {
        Ok(r) => r,
        Err(e) => {
            del_netns(&ns).await;
            let _ = std::fs::remove_file(cluster.pods_dir().join(format!("{}.json", pod.name)));
            let _ = store.delete_pod(&pod.namespace, &pod.name);
            return Err(e);
        }
    };
    pod.ipv4 = result
        .get("ips")
        .and_then(|i| i.get(0))
        .and_then(|i| i.get("address"))
        .and_then(|a| a.as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string());
    cluster.save_pod(&pod)?;

    let ns_file = File::open(&ns)?;
    let procs = cgroup_procs(&node)?;
    let mut cmd = Command::new(&opts.command[0]);
    cmd.args(&opts.command[1..]);
    netns::enter_on_exec(&mut cmd, &ns_file);
    if let Some(p) = &procs {
        netns::enter_cgroup_on_exec(&mut cmd, p);
    }
    if opts.detach {
        let log = File::create(cluster.pods_dir().join(format!("{}.log", pod.name)))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                remove_pod(&cluster, &pod).await;
                bail!("starting {:?} in pod {}: {e}", opts.command[0], pod.name);
            }
        };
        pod.pid = Some(child.id());
        cluster.save_pod(&pod)?;
        println!(
            "pod {} running on {} with IP {}",
            pod.name,
            node.name,
            pod.ipv4.as_deref().unwrap_or("?")
        );
        return Ok(0);
    }
    let status = cmd.status();
    remove_pod(&cluster, &pod).await;
    let status =
        status.with_context(|| format!("running {:?} in pod {}", opts.command[0], pod.name))?;
    Ok(status.code().unwrap_or(128))
}

/// Stops a pod's processes, runs CNI DEL and removes its namespace and record.
async fn remove_pod(cluster: &Cluster, pod: &PodRecord) {
    if let Some(pid) = pod.pid {
        kill_group(pid);
    }
    if let Ok(node) = cluster.node(Some(&pod.node)) {
        if let Err(e) = run_cni(cluster, node, "DEL", &pod.container_id, &pod.netns, pod) {
            eprintln!("warning: {e}");
        }
    }
    del_netns(&pod.netns).await;
    if let Ok(store) = cluster.store() {
        let _ = store.delete_pod(&pod.namespace, &pod.name);
    }
    let _ = std::fs::remove_file(cluster.pods_dir().join(format!("{}.json", pod.name)));
    let _ = std::fs::remove_file(cluster.pods_dir().join(format!("{}.log", pod.name)));
}

/// Reads YAML from a file, every *.yaml/*.yml/*.json file of a directory, or stdin ("-").
pub fn read_manifests(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return Ok(s);
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        files.sort();
        let mut out = String::new();
        for f in files {
            out +=
                &std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            out += "\n---\n";
        }
        return Ok(out);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Changes a pod's labels: `key=value` sets, `key-` removes.
pub fn label(cluster: &str, pod: &str, changes: &[String]) -> Result<BTreeMap<String, String>> {
    let cluster = Cluster::load(cluster)?;
    let rec = cluster.pod(pod)?;
    let store = cluster.store()?;
    let mut obj = store.get_pod(&rec.namespace, &rec.name)?;
    for c in changes {
        if let Some(k) = c.strip_suffix('-') {
            obj.labels.remove(k);
        } else if let Some((k, v)) = c.split_once('=') {
            if k.is_empty() {
                bail!("label {c:?} has an empty key");
            }
            obj.labels.insert(k.to_string(), v.to_string());
        } else {
            bail!("label change {c:?} is neither key=value nor key-");
        }
    }
    store.put_pod(&obj)?;
    Ok(obj.labels)
}

pub async fn rm(cluster: &str, name: &str) -> Result<()> {
    let cluster = Cluster::load(cluster)?;
    let pod = cluster.pod(name)?;
    remove_pod(&cluster, &pod).await;
    Ok(())
}

/// Runs a command inside a pod's namespace; returns its exit code.
pub fn exec(cluster: &str, name: &str, command: &[String]) -> Result<i32> {
    let cluster = Cluster::load(cluster)?;
    if command.is_empty() {
        bail!("no command given: `cilium local exec {name} -- CMD...`");
    }
    let status = in_pod(&cluster, name, command, |cmd| cmd.status())?;
    Ok(status.code().unwrap_or(128))
}

/// Runs `run` on a command set up to start inside a pod: its namespace and its
/// node's cgroup (entered between fork and exec).
fn in_pod<T>(
    cluster: &Cluster,
    name: &str,
    command: &[String],
    run: impl FnOnce(&mut Command) -> std::io::Result<T>,
) -> Result<T> {
    let pod = cluster.pod(name)?;
    let ns_file =
        File::open(&pod.netns).with_context(|| format!("opening {}", pod.netns.display()))?;
    let procs = cgroup_procs(cluster.node(Some(&pod.node))?)?;
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    netns::enter_on_exec(&mut cmd, &ns_file);
    if let Some(p) = &procs {
        netns::enter_cgroup_on_exec(&mut cmd, p);
    }
    run(&mut cmd).with_context(|| format!("running {:?} in pod {name}", command[0]))
}

pub fn agent_alive(node: &NodeSpec) -> bool {
    node.agent_pid.is_some_and(pid_alive)
}

/// Runs a command inside a pod (in its cgroup) and captures its output.
pub fn exec_capture(
    cluster: &Cluster,
    name: &str,
    command: &[String],
) -> Result<std::process::Output> {
    in_pod(cluster, name, command, |cmd| {
        cmd.stdin(Stdio::null()).output()
    })
}
