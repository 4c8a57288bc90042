//! Loads the embedded endpoint program with its maps pinned under the node's bpffs
//! directory, and attaches it with TCX to pod links through pinned links, so an
//! agent restart neither detaches programs nor loses map state.
use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key as LpmKey, HashMap, LpmTrie, MapData, PerCpuHashMap, RingBuf},
    programs::{
        links::{CgroupAttachMode, FdLink, LinkError as AyaLinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};

use super::maps::*;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cgroup v2 at {path}: {reason}")]
    Cgroup2Mount { path: PathBuf, reason: String },
    #[error("bpffs is not mounted at /sys/fs/bpf and mounting it failed: {0}; mount it with `mount -t bpf bpf /sys/fs/bpf`")]
    BpffsMount(#[source] nix::Error),
    #[error("creating {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program {0} is missing from the object (build mismatch)")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} is missing from the object (build mismatch)")]
    MissingMap(&'static str),
    #[error("{op} of program {program}: {source}")]
    Program {
        op: &'static str,
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{op} of link pin {path}: {source}")]
    Link {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

type Result<T> = std::result::Result<T, DatapathError>;

const PROG_FROM_CONTAINER: &str = "cil_from_container";
const PROG_TO_CONTAINER: &str = "cil_to_container";

/// Makes sure a bpf filesystem is mounted at /sys/fs/bpf.
pub fn ensure_bpffs() -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if is_bpffs(root) {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(|source| DatapathError::Dir {
        path: root.into(),
        source,
    })?;
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(DatapathError::BpffsMount)
}

/// Makes sure `dir` is in a cgroup v2 hierarchy, mounting one there when it is not
/// (Cilium's /run/cilium/cgroupv2 on hosts that mount cgroup v1 only, or whose cgroup2
/// is elsewhere): the socket load balancer attaches to it. A directory that is neither
/// cgroup2 nor empty is refused rather than mounted over.
pub fn ensure_cgroup2(dir: &Path) -> Result<()> {
    if is_cgroup2(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| DatapathError::Dir {
        path: dir.into(),
        source,
    })?;
    let empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if !empty {
        return Err(DatapathError::Cgroup2Mount {
            path: dir.into(),
            reason: "it is not in a cgroup v2 hierarchy and not empty; give --cgroup-root a \
                     cgroup2 directory or an empty one"
                .into(),
        });
    }
    nix::mount::mount(
        Some("none"),
        dir,
        Some("cgroup2"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| DatapathError::Cgroup2Mount {
        path: dir.into(),
        reason: format!("mount -t cgroup2 failed: {e}"),
    })
}

/// Whether `p` lies in a cgroup v2 hierarchy.
pub fn is_cgroup2(p: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

fn is_bpffs(p: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The loaded datapath of one node: the endpoint program and the socket load balancer.
pub struct Datapath {
    ebpf: Ebpf,
    sock: Ebpf,
    host: Ebpf,
    /// bpf_overlay, in tunnel routing mode.
    overlay: Option<Ebpf>,
    root: PathBuf,
}

/// Load-time settings of the datapath objects.
#[derive(Debug, Clone, Copy)]
pub struct DatapathConfig {
    /// Size of the Maglev tables the agent writes.
    pub maglev_size: u32,
    /// The tunnel device (tunnel routing mode), or None in native routing mode.
    pub tunnel_ifindex: Option<u32>,
    /// The node address NodePort flows to remote backends are SNATed to.
    pub node_ipv4: Option<std::net::Ipv4Addr>,
    /// NodePort to remote backends by direct server return instead of SNAT.
    pub lb_dsr: bool,
}

const PROG_FROM_OVERLAY: &str = "cil_from_overlay";
const PROG_TO_OVERLAY: &str = "cil_to_overlay";

const PROG_FROM_NETDEV: &str = "cil_from_netdev";
const PROG_TO_NETDEV: &str = "cil_to_netdev";

/// The socket LB programs and the cgroup hook each attaches to.
const SOCK_PROGRAMS: [&str; 8] = [
    "cil_sock4_connect",
    "cil_sock4_sendmsg",
    "cil_sock4_recvmsg",
    "cil_sock4_getpeername",
    "cil_sock6_connect",
    "cil_sock6_sendmsg",
    "cil_sock6_recvmsg",
    "cil_sock6_getpeername",
];

/// One pod link's attachment, named by the host-side link.
fn link_pins(root: &Path, host_ifname: &str) -> [(PathBuf, &'static str, TcAttachType); 2] {
    let links = root.join("links");
    [
        (
            links.join(format!("{host_ifname}_from")),
            PROG_FROM_CONTAINER,
            TcAttachType::Ingress,
        ),
        (
            links.join(format!("{host_ifname}_to")),
            PROG_TO_CONTAINER,
            TcAttachType::Egress,
        ),
    ]
}

fn link_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(AyaLinkError) -> DatapathError + 'a {
    move |e| DatapathError::Link {
        op,
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

impl Datapath {
    /// Loads bpf_lxc, bpf_sock, bpf_host (and bpf_overlay in tunnel mode) with their
    /// maps pinned (or re-opened) under `root`.
    pub fn load(root: &Path, cfg: DatapathConfig) -> Result<Self> {
        ensure_bpffs()?;
        for dir in [root.to_path_buf(), root.join("links")] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| DatapathError::Dir { path: dir, source })?;
        }
        let tunnel = cfg.tunnel_ifindex.unwrap_or(0);
        let mut ebpf = open_object(
            root,
            super::BPF_LXC,
            "bpf_lxc.o",
            &[("TUNNEL_IFINDEX", tunnel)],
        )?;
        load_programs(
            &mut ebpf,
            &[PROG_FROM_CONTAINER, PROG_TO_CONTAINER],
            SchedClassifier::load,
        )?;
        let mut host = open_object(
            root,
            super::BPF_HOST,
            "bpf_host.o",
            &[
                ("MAGLEV_TABLE_SIZE", cfg.maglev_size),
                (
                    "NODE_IPV4",
                    cfg.node_ipv4.map(|ip| u32::from(ip).to_be()).unwrap_or(0),
                ),
                ("LB_DSR", u32::from(cfg.lb_dsr)),
            ],
        )?;
        load_programs(
            &mut host,
            &[PROG_FROM_NETDEV, PROG_TO_NETDEV],
            SchedClassifier::load,
        )?;
        let mut sock = open_object(root, super::BPF_SOCK, "bpf_sock.o", &[])?;
        load_programs(&mut sock, &SOCK_PROGRAMS, CgroupSockAddr::load)?;
        let overlay = match cfg.tunnel_ifindex {
            Some(_) => {
                let mut o = open_object(root, super::BPF_OVERLAY, "bpf_overlay.o", &[])?;
                load_programs(
                    &mut o,
                    &[PROG_FROM_OVERLAY, PROG_TO_OVERLAY],
                    SchedClassifier::load,
                )?;
                Some(o)
            }
            None => None,
        };
        Ok(Self {
            ebpf,
            sock,
            host,
            overlay,
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Attaches (or, when pinned links exist already, atomically updates) both
    /// programs on the host side of a pod link, and pins the links.
    pub fn attach_endpoint(&mut self, host_ifname: &str) -> Result<()> {
        attach_tcx(
            &mut self.ebpf,
            host_ifname,
            link_pins(&self.root, host_ifname),
        )
    }

    /// Attaches bpf_host (NodePort from outside) to a node device, pinned like pod links.
    pub fn attach_device(&mut self, ifname: &str) -> Result<()> {
        let links = self.root.join("links");
        let pins = [
            (
                links.join(format!("dev_{ifname}_from")),
                PROG_FROM_NETDEV,
                TcAttachType::Ingress,
            ),
            (
                links.join(format!("dev_{ifname}_to")),
                PROG_TO_NETDEV,
                TcAttachType::Egress,
            ),
        ];
        attach_tcx(&mut self.host, ifname, pins)
    }

    /// Attaches bpf_overlay to the tunnel device, pinned like pod links.
    pub fn attach_overlay(&mut self, ifname: &str) -> Result<()> {
        let links = self.root.join("links");
        let pins = [
            (
                links.join(format!("overlay_{ifname}_from")),
                PROG_FROM_OVERLAY,
                TcAttachType::Ingress,
            ),
            (
                links.join(format!("overlay_{ifname}_to")),
                PROG_TO_OVERLAY,
                TcAttachType::Egress,
            ),
        ];
        let overlay = self.overlay.as_mut().ok_or(DatapathError::MissingProgram(
            "bpf_overlay (the datapath was loaded for native routing)",
        ))?;
        attach_tcx(overlay, ifname, pins)
    }

    /// Writes one Maglev table slot.
    pub fn maglev_put(&mut self, key: MaglevKey, backend: u32) -> Result<()> {
        typed_hash::<MaglevKey, u32>(&mut self.host, MAP_LB_MAGLEV)?
            .insert(key, backend, 0)
            .map_err(|e| DatapathError::Map {
                map: MAP_LB_MAGLEV,
                source: Box::new(e),
            })
    }

    pub fn maglev_remove(&mut self, key: &MaglevKey) -> Result<()> {
        let _ = typed_hash::<MaglevKey, u32>(&mut self.host, MAP_LB_MAGLEV)?.remove(key);
        Ok(())
    }

    /// Current Maglev entries (adoption after a restart).
    pub fn maglev_entries(&mut self) -> Result<std::collections::BTreeMap<MaglevKey, u32>> {
        Ok(typed_hash::<MaglevKey, u32>(&mut self.host, MAP_LB_MAGLEV)?
            .iter()
            .filter_map(|r| r.ok())
            .collect())
    }

    /// Attaches the socket load balancer to a cgroup v2 directory with pinned links.
    /// Links pinned by an earlier agent stay (they share the pinned maps).
    /// Detaches the socket programs (their pinned links) from wherever a previous run
    /// attached them.
    pub fn detach_cgroup(&mut self) -> Result<()> {
        for name in SOCK_PROGRAMS {
            let pin = self.root.join("links").join(format!("cgroup_{name}"));
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DatapathError::Dir {
                        path: pin.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        for name in SOCK_PROGRAMS {
            let pin = self.root.join("links").join(format!("cgroup_{name}"));
            if pin.exists() {
                continue;
            }
            let file = std::fs::File::open(cgroup).map_err(|source| DatapathError::Dir {
                path: cgroup.to_path_buf(),
                source,
            })?;
            let prog: &mut CgroupSockAddr = self
                .sock
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()
                .map_err(|e| DatapathError::Program {
                    op: "type check",
                    program: name,
                    source: Box::new(e),
                })?;
            let prog_err = |op: &'static str| {
                move |e| DatapathError::Program {
                    op,
                    program: name,
                    source: Box::new(e),
                }
            };
            let id = prog
                .attach(file, CgroupAttachMode::Single)
                .map_err(prog_err("cgroup attach"))?;
            let link = prog.take_link(id).map_err(prog_err("take link"))?;
            let fd: FdLink = link.try_into().map_err(link_err("convert", &pin))?;
            fd.pin(&pin).map_err(|e| DatapathError::Link {
                op: "pin",
                path: pin.clone(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    fn sock_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        typed_hash(&mut self.sock, name)
    }

    /// Writes one entry of a socket-LB map.
    fn sock_put<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        key: K,
        value: V,
    ) -> Result<()> {
        self.sock_map::<K, V>(name)?
            .insert(key, value, 0)
            .map_err(|e| DatapathError::Map {
                map: name,
                source: Box::new(e),
            })
    }

    /// Removes one entry of a socket-LB map; a missing one is fine.
    fn sock_remove<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str, key: &K) -> Result<()> {
        let _ = self.sock_map::<K, V>(name)?.remove(key);
        Ok(())
    }

    pub fn lb_service_put(&mut self, key: Lb4Key, value: Lb4Service) -> Result<()> {
        self.sock_put(MAP_LB4_SERVICES, key, value)
    }

    pub fn lb_service_remove(&mut self, key: &Lb4Key) -> Result<()> {
        self.sock_remove::<Lb4Key, Lb4Service>(MAP_LB4_SERVICES, key)
    }

    pub fn lb_backend_put(&mut self, id: u32, value: Lb4Backend) -> Result<()> {
        self.sock_put(MAP_LB4_BACKENDS, id, value)
    }

    pub fn lb_backend_remove(&mut self, id: u32) -> Result<()> {
        self.sock_remove::<u32, Lb4Backend>(MAP_LB4_BACKENDS, &id)
    }

    pub fn lb_revnat_put(&mut self, id: u16, value: Lb4RevNat) -> Result<()> {
        self.sock_put(MAP_LB4_REVNAT, id, value)
    }

    pub fn lb_revnat_remove(&mut self, id: u16) -> Result<()> {
        self.sock_remove::<u16, Lb4RevNat>(MAP_LB4_REVNAT, &id)
    }

    pub fn lb6_service_put(&mut self, key: Lb6Key, value: Lb4Service) -> Result<()> {
        self.sock_put(MAP_LB6_SERVICES, key, value)
    }

    pub fn lb6_service_remove(&mut self, key: &Lb6Key) -> Result<()> {
        self.sock_remove::<Lb6Key, Lb4Service>(MAP_LB6_SERVICES, key)
    }

    pub fn lb6_backend_put(&mut self, id: u32, value: Lb6Backend) -> Result<()> {
        self.sock_put(MAP_LB6_BACKENDS, id, value)
    }

    pub fn lb6_backend_remove(&mut self, id: u32) -> Result<()> {
        self.sock_remove::<u32, Lb6Backend>(MAP_LB6_BACKENDS, &id)
    }

    /// Current LB maps (services, backends, rev-NAT) for adoption after a restart.
    pub fn lb_entries(&mut self) -> Result<LbMaps> {
        let services = self
            .sock_map::<Lb4Key, Lb4Service>(MAP_LB4_SERVICES)?
            .iter()
            .filter_map(|r| r.ok())
            .collect();
        let backends = self
            .sock_map::<u32, Lb4Backend>(MAP_LB4_BACKENDS)?
            .iter()
            .filter_map(|r| r.ok())
            .collect();
        let revnat = self
            .sock_map::<u16, Lb4RevNat>(MAP_LB4_REVNAT)?
            .iter()
            .filter_map(|r| r.ok())
            .collect();
        let services6 = self
            .sock_map::<Lb6Key, Lb4Service>(MAP_LB6_SERVICES)?
            .iter()
            .filter_map(|r| r.ok())
            .collect();
        let backends6 = self
            .sock_map::<u32, Lb6Backend>(MAP_LB6_BACKENDS)?
            .iter()
            .filter_map(|r| r.ok())
            .collect();
        Ok(LbMaps {
            services,
            backends,
            revnat,
            services6,
            backends6,
        })
    }

    /// Is this pod link attached (pins present)?
    pub fn is_attached(&self, host_ifname: &str) -> bool {
        link_pins(&self.root, host_ifname)
            .iter()
            .all(|(p, _, _)| p.exists())
    }

    /// Detaches both programs from a pod link and removes their pins. Missing pins are fine.
    pub fn detach_endpoint(&mut self, host_ifname: &str) -> Result<()> {
        detach_pins(&self.root, host_ifname)
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        typed_hash(&mut self.ebpf, name)
    }

    /// Writes an endpoint into cilium_lxc and cilium_lxc_if.
    pub fn upsert_endpoint(&mut self, key: EndpointKey, info: EndpointInfo) -> Result<()> {
        let map_err = |map| {
            move |e| DatapathError::Map {
                map,
                source: Box::new(e),
            }
        };
        self.hash_map::<EndpointKey, EndpointInfo>(MAP_ENDPOINTS)?
            .insert(key, info, 0)
            .map_err(map_err(MAP_ENDPOINTS))?;
        self.hash_map::<LxcIfKey, EndpointKey>(MAP_LXC_IF)?
            .insert(
                LxcIfKey {
                    ifindex: info.ifindex,
                },
                key,
                0,
            )
            .map_err(map_err(MAP_LXC_IF))?;
        Ok(())
    }

    /// Removes an endpoint from the maps; entries already gone are fine.
    pub fn remove_endpoint(&mut self, key: EndpointKey, ifindex: u32, lxc_id: u16) -> Result<()> {
        let _ = self
            .hash_map::<EndpointKey, EndpointInfo>(MAP_ENDPOINTS)?
            .remove(&key);
        let mut lxc_if = self.hash_map::<LxcIfKey, EndpointKey>(MAP_LXC_IF)?;
        if lxc_if.get(&LxcIfKey { ifindex }, 0).ok() == Some(key) {
            let _ = lxc_if.remove(&LxcIfKey { ifindex });
        }
        let map = self
            .ebpf
            .map_mut(MAP_EP_STATS)
            .ok_or(DatapathError::MissingMap(MAP_EP_STATS))?;
        let mut stats: PerCpuHashMap<&mut MapData, EpStatsKey, EpStats> =
            PerCpuHashMap::try_from(map).map_err(|e| DatapathError::Map {
                map: MAP_EP_STATS,
                source: Box::new(e),
            })?;
        let _ = stats.remove(&EpStatsKey {
            lxc_id: lxc_id as u32,
        });
        Ok(())
    }

    fn lpm<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        LpmTrie::try_from(map).map_err(|e| DatapathError::Map {
            map: name,
            source: Box::new(e),
        })
    }

    /// Maps an IPv4 prefix to a security identity (and tunnel endpoint).
    pub fn ipcache_upsert(&mut self, net: ipnet::Ipv4Net, entry: IpcacheEntry) -> Result<()> {
        let (len, data) = IpcacheKey::v4(net);
        let value = IpcacheValue::new(entry);
        self.lpm::<IpcacheKey, IpcacheValue>(MAP_IPCACHE)?
            .insert(&LpmKey::new(len, data), value, 0)
            .map_err(|e| DatapathError::Map {
                map: MAP_IPCACHE,
                source: Box::new(e),
            })
    }

    /// Removes an ipcache prefix; a missing one is fine.
    pub fn ipcache_remove(&mut self, net: ipnet::Ipv4Net) -> Result<()> {
        let (len, data) = IpcacheKey::v4(net);
        let _ = self
            .lpm::<IpcacheKey, IpcacheValue>(MAP_IPCACHE)?
            .remove(&LpmKey::new(len, data));
        Ok(())
    }

    /// Current ipcache content: prefix -> identity and tunnel endpoint.
    pub fn ipcache_entries(&mut self) -> Result<Vec<(ipnet::IpNet, IpcacheEntry)>> {
        let m = self.lpm::<IpcacheKey, IpcacheValue>(MAP_IPCACHE)?;
        Ok(lpm_dump(&m)
            .into_iter()
            .filter_map(|(len, k, v)| k.to_net(len).map(|n| (n, v.entry())))
            .collect())
    }

    /// Writes a policy entry (allow, or deny with `deny`). Counters restart at zero.
    pub fn policy_insert(&mut self, prefixlen: u32, key: PolicyKeyData, deny: bool) -> Result<()> {
        let value = PolicyEntryValue {
            flags: if deny { POLICY_F_DENY } else { 0 },
            ..Default::default()
        };
        self.lpm::<PolicyKeyData, PolicyEntryValue>(MAP_POLICY)?
            .insert(&LpmKey::new(prefixlen, key), value, 0)
            .map_err(|e| DatapathError::Map {
                map: MAP_POLICY,
                source: Box::new(e),
            })
    }

    pub fn policy_remove(&mut self, prefixlen: u32, key: PolicyKeyData) -> Result<()> {
        let _ = self
            .lpm::<PolicyKeyData, PolicyEntryValue>(MAP_POLICY)?
            .remove(&LpmKey::new(prefixlen, key));
        Ok(())
    }

    /// Every policy entry: (prefix length, key, value).
    pub fn policy_entries(&mut self) -> Result<Vec<(u32, PolicyKeyData, PolicyEntryValue)>> {
        let m = self.lpm::<PolicyKeyData, PolicyEntryValue>(MAP_POLICY)?;
        Ok(lpm_dump(&m))
    }

    /// Takes the events ring buffer out of the object (once), for the event reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or(DatapathError::MissingMap(MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(|e| DatapathError::Map {
            map: MAP_EVENTS,
            source: Box::new(e),
        })
    }

    /// Current endpoints map content.
    pub fn endpoints(&mut self) -> Result<Vec<(EndpointKey, EndpointInfo)>> {
        let m = self.hash_map::<EndpointKey, EndpointInfo>(MAP_ENDPOINTS)?;
        Ok(m.iter().filter_map(|r| r.ok()).collect())
    }
}

/// Removes a pod link's pinned TCX links (detaching the programs).
pub fn detach_pins(root: &Path, host_ifname: &str) -> Result<()> {
    for (pin, _, _) in link_pins(root, host_ifname) {
        if !pin.exists() {
            continue;
        }
        match PinnedLink::from_pin(&pin) {
            Ok(l) => {
                // Dropping the last reference releases the TCX link: the program detaches.
                drop(l.unpin());
            }
            Err(_) => {
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    Ok(())
}

/// Summed per-CPU metrics from the pinned cilium_metrics map under `root`.
pub fn read_metrics(root: &Path) -> Result<Vec<(MetricsKey, MetricsValue)>> {
    let map: PerCpuHashMap<MapData, MetricsKey, MetricsValue> =
        pinned(root, MAP_METRICS, aya::maps::Map::PerCpuHashMap)?;
    let mut out: Vec<(MetricsKey, MetricsValue)> = map
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, per_cpu)| {
            let mut sum = MetricsValue::default();
            for v in per_cpu.iter() {
                sum.packets += v.packets;
                sum.bytes += v.bytes;
            }
            (k, sum)
        })
        .collect();
    out.sort_by_key(|(k, _)| (k.reason, k.dir));
    Ok(out)
}

/// Summed per-CPU counters of each endpoint from the pinned cilium_ep_stats map under `root`.
pub fn read_ep_stats(root: &Path) -> Result<Vec<(u32, EpStats)>> {
    let map: PerCpuHashMap<MapData, EpStatsKey, EpStats> =
        pinned(root, MAP_EP_STATS, aya::maps::Map::PerCpuHashMap)?;
    Ok(map
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, per_cpu)| {
            let mut s = EpStats::default();
            for v in per_cpu.iter() {
                s.from_ep_packets += v.from_ep_packets;
                s.from_ep_bytes += v.from_ep_bytes;
                s.to_ep_packets += v.to_ep_packets;
                s.to_ep_bytes += v.to_ep_bytes;
            }
            (k.lxc_id, s)
        })
        .collect())
}

/// The pinned cilium_lxc map under `root`.
pub fn read_endpoints(root: &Path) -> Result<Vec<(EndpointKey, EndpointInfo)>> {
    let map: HashMap<MapData, EndpointKey, EndpointInfo> =
        pinned(root, MAP_ENDPOINTS, aya::maps::Map::HashMap)?;
    Ok(map.iter().filter_map(|r| r.ok()).collect())
}

fn lpm_dump<T: std::borrow::Borrow<MapData>, K: aya::Pod, V: aya::Pod>(
    m: &LpmTrie<T, K, V>,
) -> Vec<(u32, K, V)> {
    m.iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| (k.prefix_len(), k.data(), v))
        .collect()
}

fn pinned<M>(
    root: &Path,
    name: &'static str,
    wrap: impl FnOnce(MapData) -> aya::maps::Map,
) -> Result<M>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(root.join(name)).map_err(|e| DatapathError::Map {
        map: name,
        source: Box::new(e),
    })?;
    M::try_from(wrap(data)).map_err(|e| DatapathError::Map {
        map: name,
        source: Box::new(e),
    })
}

/// The pinned ipcache under `root`: (prefix, entry), sorted.
pub fn read_ipcache(root: &Path) -> Result<Vec<(ipnet::IpNet, IpcacheEntry)>> {
    let m: LpmTrie<MapData, IpcacheKey, IpcacheValue> =
        pinned(root, MAP_IPCACHE, aya::maps::Map::LpmTrie)?;
    let mut v: Vec<(ipnet::IpNet, IpcacheEntry)> = lpm_dump(&m)
        .into_iter()
        .filter_map(|(len, k, v)| k.to_net(len).map(|n| (n, v.entry())))
        .collect();
    v.sort();
    Ok(v)
}

/// The pinned policy map under `root`.
pub fn read_policy(root: &Path) -> Result<Vec<(u32, PolicyKeyData, PolicyEntryValue)>> {
    let m: LpmTrie<MapData, PolicyKeyData, PolicyEntryValue> =
        pinned(root, MAP_POLICY, aya::maps::Map::LpmTrie)?;
    let mut v = lpm_dump(&m);
    v.sort_by_key(|(len, k, _)| {
        (
            k.ep_id,
            k.egress,
            k.sec_label,
            k.protocol,
            u16::from_be(k.dport),
            *len,
        )
    });
    Ok(v)
}

/// The pinned conntrack table under `root`.
pub fn read_ct(root: &Path) -> Result<Vec<(CtKey, CtEntry)>> {
    let m: HashMap<MapData, CtKey, CtEntry> = pinned(root, MAP_CT4, aya::maps::Map::LruHashMap)?;
    Ok(m.iter().filter_map(|r| r.ok()).collect())
}

/// Removes the entries of the pinned conntrack table under `root` that expired before
/// `now` (seconds of CLOCK_MONOTONIC); returns how many. It opens its own handle on the
/// pinned map, so the agent's lock is not held while it walks the table. An entry is read
/// again just before it goes: the datapath may have replaced an expired entry with a new
/// flow's since the walk saw it.
pub fn ct_gc(root: &Path, now: u32) -> Result<usize> {
    let mut m: HashMap<MapData, CtKey, CtEntry> =
        pinned(root, MAP_CT4, aya::maps::Map::LruHashMap)?;
    let expired: Vec<CtKey> = m
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(_, v)| v.lifetime < now)
        .map(|(k, _)| k)
        .collect();
    let mut removed = 0;
    for k in &expired {
        if m.get(k, 0).is_ok_and(|v| v.lifetime < now) && m.remove(k).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Registers the events ring buffer with the tokio reactor for readiness.
pub fn async_ring(
    ring: RingBuf<MapData>,
) -> std::io::Result<tokio::io::unix::AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the AsyncFd owns the ring buffer, which owns its file descriptor, so the
    // descriptor stays open exactly as long as it is registered.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The content of the LB maps.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LbMaps {
    pub services: std::collections::BTreeMap<Lb4Key, Lb4Service>,
    pub backends: std::collections::BTreeMap<u32, Lb4Backend>,
    pub revnat: std::collections::BTreeMap<u16, Lb4RevNat>,
    /// IPv6 frontends (socket LB).
    pub services6: std::collections::BTreeMap<Lb6Key, Lb4Service>,
    pub backends6: std::collections::BTreeMap<u32, Lb6Backend>,
}

/// The pinned LB maps under `root`.
pub fn read_lb(root: &Path) -> Result<LbMaps> {
    let s: HashMap<MapData, Lb4Key, Lb4Service> =
        pinned(root, MAP_LB4_SERVICES, aya::maps::Map::HashMap)?;
    let b: HashMap<MapData, u32, Lb4Backend> =
        pinned(root, MAP_LB4_BACKENDS, aya::maps::Map::HashMap)?;
    let r: HashMap<MapData, u16, Lb4RevNat> =
        pinned(root, MAP_LB4_REVNAT, aya::maps::Map::HashMap)?;
    let s6: HashMap<MapData, Lb6Key, Lb4Service> =
        pinned(root, MAP_LB6_SERVICES, aya::maps::Map::HashMap)?;
    let b6: HashMap<MapData, u32, Lb6Backend> =
        pinned(root, MAP_LB6_BACKENDS, aya::maps::Map::HashMap)?;
    Ok(LbMaps {
        services: s.iter().filter_map(|x| x.ok()).collect(),
        backends: b.iter().filter_map(|x| x.ok()).collect(),
        revnat: r.iter().filter_map(|x| x.ok()).collect(),
        services6: s6.iter().filter_map(|x| x.ok()).collect(),
        backends6: b6.iter().filter_map(|x| x.ok()).collect(),
    })
}

/// A typed view of one of an object's hash maps.
fn typed_hash<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>> {
    let map = ebpf.map_mut(name).ok_or(DatapathError::MissingMap(name))?;
    HashMap::try_from(map).map_err(|e| DatapathError::Map {
        map: name,
        source: Box::new(e),
    })
}

fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|e| DatapathError::Program {
            op: "type check",
            program: name,
            source: Box::new(e),
        })
}

/// Attaches tc programs with TCX through pinned links; an existing pinned link gets the
/// freshly loaded program swapped in atomically (no gap in forwarding).
fn attach_tcx(
    ebpf: &mut Ebpf,
    ifname: &str,
    pins: [(PathBuf, &'static str, TcAttachType); 2],
) -> Result<()> {
    for (pin, name, attach_type) in pins {
        let prog = tc_program(ebpf, name)?;
        let prog_err = |op: &'static str| {
            move |e| DatapathError::Program {
                op,
                program: name,
                source: Box::new(e),
            }
        };
        let mut adopted = None;
        if pin.exists() {
            let old = PinnedLink::from_pin(&pin).map_err(link_err("open", &pin))?;
            let fd: FdLink = old.unpin().map_err(|e| DatapathError::Link {
                op: "unpin",
                path: pin.clone(),
                source: Box::new(e),
            })?;
            if let Ok(link) = SchedClassifierLink::try_from(fd) {
                adopted = prog.attach_to_link(link).ok();
            }
        }
        let id = match adopted {
            Some(id) => id,
            None => prog
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(prog_err("TCX attach"))?,
        };
        let link = prog.take_link(id).map_err(prog_err("take link"))?;
        let fd: FdLink = link.try_into().map_err(link_err("convert", &pin))?;
        fd.pin(&pin).map_err(|e| DatapathError::Link {
            op: "pin",
            path: pin.clone(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// Opens an embedded object with its maps pinned (or re-opened) by name under `root`.
fn open_object(
    root: &Path,
    bytes: &[u8],
    object: &'static str,
    globals: &[(&str, u32)],
) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(root);
    for (name, value) in globals {
        loader.override_global(name, value, true);
    }
    loader.load(bytes).map_err(|e| DatapathError::Load {
        object,
        source: Box::new(e),
    })
}

/// Runs each named program of an object through the verifier.
fn load_programs<T>(
    ebpf: &mut Ebpf,
    names: &[&'static str],
    load: fn(&mut T) -> std::result::Result<(), aya::programs::ProgramError>,
) -> Result<()>
where
    for<'a> &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    for &name in names {
        let prog: &mut T = ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?
            .try_into()
            .map_err(|e| DatapathError::Program {
                op: "type check",
                program: name,
                source: Box::new(e),
            })?;
        load(prog).map_err(|e| DatapathError::Program {
            op: "verifier load",
            program: name,
            source: Box::new(e),
        })?;
    }
    Ok(())
}
