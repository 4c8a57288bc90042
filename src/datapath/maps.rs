//! `#[repr(C)]` mirrors of the structs in ebpf/lib/maps.h, with their sizes asserted.
//! Keep each in step with its C definition (the C side asserts the same sizes).
use std::net::Ipv4Addr;

/// Map names as pinned under the node's bpffs directory.
pub const MAP_ENDPOINTS: &str = "cilium_lxc";
pub const MAP_LXC_IF: &str = "cilium_lxc_if";
pub const MAP_METRICS: &str = "cilium_metrics";
pub const MAP_EP_STATS: &str = "cilium_ep_stats";
pub const MAP_IPCACHE: &str = "cilium_ipcache";
pub const MAP_POLICY: &str = "cilium_policy";
pub const MAP_CT4: &str = "cilium_ct4";
pub const MAP_EVENTS: &str = "cilium_events";
pub const MAP_LB4_SERVICES: &str = "cilium_lb4_services";
pub const MAP_LB4_BACKENDS: &str = "cilium_lb4_backends";
pub const MAP_LB4_REVNAT: &str = "cilium_lb4_reverse_nat";
pub const MAP_LB6_SERVICES: &str = "cilium_lb6_services";
pub const MAP_LB6_BACKENDS: &str = "cilium_lb6_backends";
pub const MAP_LB_MAGLEV: &str = "cilium_lb_maglev";

/// Key of `cilium_lxc`: an IPv4 address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub ip4: u32,
}

impl EndpointKey {
    pub fn new(ip: Ipv4Addr) -> Self {
        Self {
            ip4: u32::from_ne_bytes(ip.octets()),
        }
    }
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip4.to_ne_bytes())
    }
}

pub const ENDPOINT_F_HOST: u16 = 1;
pub const ENDPOINT_F_INGRESS_ENFORCED: u16 = 2;
pub const ENDPOINT_F_EGRESS_ENFORCED: u16 = 4;
pub const ENDPOINT_F_INGRESS_DENIES: u16 = 8;
pub const ENDPOINT_F_EGRESS_DENIES: u16 = 16;

/// Value of `cilium_lxc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ifindex: u32,
    pub lxc_id: u16,
    pub flags: u16,
    pub sec_id: u32,
    pub mac: [u8; 6],
    pub node_mac: [u8; 6],
    pub pad: u32,
}

/// Key of `cilium_lxc_if`: the host-side ifindex of a pod link.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LxcIfKey {
    pub ifindex: u32,
}

/// Key of `cilium_metrics`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MetricsKey {
    pub reason: u8,
    pub dir: u8,
    pub pad1: u16,
    pub pad2: u32,
}

/// Value of `cilium_metrics` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Key of `cilium_ep_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpStatsKey {
    pub lxc_id: u32,
}

/// Value of `cilium_ep_stats` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpStats {
    pub from_ep_packets: u64,
    pub from_ep_bytes: u64,
    pub to_ep_packets: u64,
    pub to_ep_bytes: u64,
}

/// Data part of a `cilium_ipcache` LPM key (the prefix length is aya's `Key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheKey {
    pub pad1: u16,
    pub cluster_id: u8,
    pub family: u8,
    pub ip: [u32; 4],
}

/// Bits of an ipcache key that are always matched (pad1, cluster_id, family).
pub const IPCACHE_STATIC_PREFIX: u32 = 32;

impl IpcacheKey {
    /// An IPv4 prefix as an LPM key: (prefix length incl. the static part, data).
    pub fn v4(net: ipnet::Ipv4Net) -> (u32, Self) {
        let mut ip = [0u32; 4];
        ip[0] = u32::from_ne_bytes(net.network().octets());
        (
            IPCACHE_STATIC_PREFIX + net.prefix_len() as u32,
            Self {
                pad1: 0,
                cluster_id: 0,
                family: 4,
                ip,
            },
        )
    }
    pub fn to_net(&self, prefixlen: u32) -> Option<ipnet::IpNet> {
        let bits = prefixlen.checked_sub(IPCACHE_STATIC_PREFIX)? as u8;
        match self.family {
            4 => ipnet::Ipv4Net::new(Ipv4Addr::from(self.ip[0].to_ne_bytes()), bits)
                .ok()
                .map(ipnet::IpNet::V4),
            _ => None,
        }
    }
}

/// Value of `cilium_ipcache`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpcacheValue {
    pub sec_identity: u32,
    pub tunnel_endpoint: u32,
    pub flags: u8,
    pub pad: [u8; 3],
}

impl IpcacheValue {
    pub fn new(entry: IpcacheEntry) -> Self {
        Self {
            sec_identity: entry.identity,
            tunnel_endpoint: entry.tunnel.map(|ip| u32::from(ip).to_be()).unwrap_or(0),
            flags: 0,
            pad: [0; 3],
        }
    }
    pub fn entry(&self) -> IpcacheEntry {
        IpcacheEntry {
            identity: self.sec_identity,
            tunnel: (self.tunnel_endpoint != 0)
                .then(|| Ipv4Addr::from(u32::from_be(self.tunnel_endpoint))),
        }
    }
}

/// What the ipcache says of a prefix: its identity and, for another node's pods in
/// tunnel routing mode, the node to encapsulate to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpcacheEntry {
    pub identity: u32,
    pub tunnel: Option<Ipv4Addr>,
}

impl IpcacheEntry {
    pub fn local(identity: u32) -> Self {
        Self {
            identity,
            tunnel: None,
        }
    }
}

/// Data part of a `cilium_policy` LPM key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyData {
    pub sec_label: u32,
    pub ep_id: u16,
    pub egress: u8,
    pub protocol: u8,
    /// Network byte order.
    pub dport: u16,
    pub pad: u16,
}

/// sec_label + ep_id + egress: always matched.
pub const POLICY_STATIC_PREFIX: u32 = 56;
pub const POLICY_F_DENY: u8 = 1;

/// Value of `cilium_policy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEntryValue {
    pub flags: u8,
    pub pad0: u8,
    pub proxy_port: u16,
    pub pad1: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// Key of `cilium_ct4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub nexthdr: u8,
    pub dir: u8,
    pub pad: u16,
}

/// Value of `cilium_ct4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub lifetime: u32,
    pub flags: u16,
    pub pad: u16,
    pub src_sec_id: u32,
    pub pad2: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// A record of the `cilium_events` ring buffer (type 1 = drop).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub ts_ns: u64,
    pub src_id: u32,
    pub dst_id: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub len: u32,
    pub ep_id: u16,
    pub kind: u8,
    pub reason: u8,
    pub dir: u8,
    pub proto: u8,
    pub pad: u16,
}

impl DropEvent {
    /// Reads a record from ring buffer bytes (`None` when too short).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: DropEvent is repr(C) plain data, any bit pattern is valid, and the
        // length was checked; read_unaligned copes with the ring buffer's alignment.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const Self) })
    }
}

/// Key of `cilium_lb4_services` (slot 0 = the service's master entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Key {
    pub address: u32,
    /// Network byte order.
    pub dport: u16,
    pub backend_slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}

pub const LB_SCOPE_EXT: u8 = 0;
pub const LB_SCOPE_INT: u8 = 1;
pub const SVC_F_AFFINITY: u8 = 1;
pub const SVC_F_TWO_SCOPES: u8 = 2;
pub const SVC_F_NODEPORT: u8 = 4;
pub const SVC_F_SURROGATE: u8 = 8;

/// Value of `cilium_lb4_services`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lb4Service {
    /// Slot > 0: backend id; slot 0: affinity timeout in seconds.
    pub backend_id: u32,
    pub count: u16,
    pub rev_nat_index: u16,
    pub flags: u8,
    pub flags2: u8,
    pub pad: u16,
}

/// Value of `cilium_lb4_backends`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lb4Backend {
    pub address: u32,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub state: u8,
    pub pad: u32,
}

/// Value of `cilium_lb4_reverse_nat`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lb4RevNat {
    pub address: u32,
    /// Network byte order.
    pub port: u16,
    pub pad: u16,
}

/// Key of `cilium_lb6_services` (values are [`Lb4Service`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb6Key {
    /// The address as the kernel holds it (network order bytes).
    pub address: [u8; 16],
    /// Network byte order.
    pub dport: u16,
    pub backend_slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}

/// Value of `cilium_lb6_backends` (ids shared with IPv4 backends).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lb6Backend {
    pub address: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub state: u8,
    pub pad: u32,
}

/// Key of `cilium_lb_maglev`: (rev-NAT index, table slot) -> backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub rev_nat_index: u16,
    pub pad: u16,
    pub index: u32,
}

// SAFETY: all of these are #[repr(C)] plain integers and byte arrays with explicit
// padding fields, so every bit pattern is valid and there are no implicit holes.
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: as above.
unsafe impl aya::Pod for EndpointInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for LxcIfKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MetricsKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MetricsValue {}
// SAFETY: as above.
unsafe impl aya::Pod for EpStatsKey {}
// SAFETY: as above.
unsafe impl aya::Pod for EpStats {}
// SAFETY: as above.
unsafe impl aya::Pod for IpcacheKey {}
// SAFETY: as above.
unsafe impl aya::Pod for IpcacheValue {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyKeyData {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyEntryValue {}
// SAFETY: as above.
unsafe impl aya::Pod for CtKey {}
// SAFETY: as above.
unsafe impl aya::Pod for CtEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4Key {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4Service {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4Backend {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb4RevNat {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb6Key {}
// SAFETY: as above.
unsafe impl aya::Pod for Lb6Backend {}
// SAFETY: as above.
unsafe impl aya::Pod for MaglevKey {}

const _: () = assert!(std::mem::size_of::<EndpointKey>() == 4);
const _: () = assert!(std::mem::size_of::<EndpointInfo>() == 28);
const _: () = assert!(std::mem::size_of::<LxcIfKey>() == 4);
const _: () = assert!(std::mem::size_of::<MetricsKey>() == 8);
const _: () = assert!(std::mem::size_of::<MetricsValue>() == 16);
const _: () = assert!(std::mem::size_of::<EpStatsKey>() == 4);
const _: () = assert!(std::mem::size_of::<EpStats>() == 32);
// LPM keys: the C structs include the 4-byte prefixlen that aya's Key adds.
const _: () = assert!(std::mem::size_of::<IpcacheKey>() + 4 == 24);
const _: () = assert!(std::mem::size_of::<IpcacheValue>() == 12);
const _: () = assert!(std::mem::size_of::<PolicyKeyData>() + 4 == 16);
const _: () = assert!(std::mem::size_of::<PolicyEntryValue>() == 24);
const _: () = assert!(std::mem::size_of::<CtKey>() == 16);
const _: () = assert!(std::mem::size_of::<CtEntry>() == 32);
const _: () = assert!(std::mem::size_of::<DropEvent>() == 40);
const _: () = assert!(std::mem::size_of::<Lb4Key>() == 12);
const _: () = assert!(std::mem::size_of::<Lb4Service>() == 12);
const _: () = assert!(std::mem::size_of::<Lb4Backend>() == 12);
const _: () = assert!(std::mem::size_of::<Lb4RevNat>() == 8);
const _: () = assert!(std::mem::size_of::<Lb6Key>() == 24);
const _: () = assert!(std::mem::size_of::<Lb6Backend>() == 24);
const _: () = assert!(std::mem::size_of::<MaglevKey>() == 8);

/// Metric directions, as in ebpf/lib/common.h.
pub const METRIC_INGRESS: u8 = 1;
pub const METRIC_EGRESS: u8 = 2;

pub fn direction_name(dir: u8) -> &'static str {
    match dir {
        METRIC_INGRESS => "INGRESS",
        METRIC_EGRESS => "EGRESS",
        _ => "UNKNOWN",
    }
}

/// Cilium's names for the reasons in ebpf/lib/drop.h (0 = forwarded).
pub fn reason_name(reason: u8) -> &'static str {
    match reason {
        0 => "Forwarded",
        132 => "Invalid source ip",
        133 => "Policy denied",
        135 => "CT: Truncated or invalid header",
        181 => "Policy denied by denylist",
        134 => "Invalid packet",
        139 => "Unknown L3 target address",
        141 => "Error writing to packet",
        158 => "Service backend not found",
        147 => "No tunnel/encapsulation key",
        151 => "Unroutable",
        160 => "No tunnel/encapsulation endpoint",
        167 => "No mapping for NAT masquerade",
        169 => "No FIB entry found",
        172 => "Unknown sender endpoint",
        _ => "Unknown reason",
    }
}

pub const DROP_INVALID_SIP: u8 = 132;
pub const DROP_POLICY: u8 = 133;
pub const DROP_POLICY_DENY: u8 = 181;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_key_is_network_order() {
        let k = EndpointKey::new(Ipv4Addr::new(10, 0, 0, 1));
        // The first byte in memory is the first octet, as the kernel's iphdr->daddr.
        assert_eq!(k.ip4.to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(k.addr(), Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn endpoint_info_layout_matches_c() {
        // Offsets as in struct endpoint_info (ebpf/lib/maps.h).
        assert_eq!(std::mem::offset_of!(EndpointInfo, lxc_id), 4);
        assert_eq!(std::mem::offset_of!(EndpointInfo, sec_id), 8);
        assert_eq!(std::mem::offset_of!(EndpointInfo, mac), 12);
        assert_eq!(std::mem::offset_of!(EndpointInfo, node_mac), 18);
        assert_eq!(std::mem::offset_of!(EndpointInfo, pad), 24);
    }

    #[test]
    fn reasons_have_cilium_names() {
        assert_eq!(reason_name(132), "Invalid source ip");
        assert_eq!(reason_name(0), "Forwarded");
    }
}
