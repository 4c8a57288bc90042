//! `#[repr(C)]` mirrors of the structs in ebpf/lib/maps.h, with their sizes asserted.
//! Keep each in step with its C definition (the C side asserts the same sizes).
use std::net::Ipv4Addr;

/// Map names as pinned under the node's bpffs directory.
pub const MAP_ENDPOINTS: &str = "cilium_lxc";
pub const MAP_LXC_IF: &str = "cilium_lxc_if";
pub const MAP_METRICS: &str = "cilium_metrics";
pub const MAP_EP_STATS: &str = "cilium_ep_stats";

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

const _: () = assert!(std::mem::size_of::<EndpointKey>() == 4);
const _: () = assert!(std::mem::size_of::<EndpointInfo>() == 28);
const _: () = assert!(std::mem::size_of::<LxcIfKey>() == 4);
const _: () = assert!(std::mem::size_of::<MetricsKey>() == 8);
const _: () = assert!(std::mem::size_of::<MetricsValue>() == 16);
const _: () = assert!(std::mem::size_of::<EpStatsKey>() == 4);
const _: () = assert!(std::mem::size_of::<EpStats>() == 32);

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
        134 => "Invalid packet",
        139 => "Unknown L3 target address",
        141 => "Error writing to packet",
        170 => "Unknown sender endpoint",
        _ => "Unknown reason",
    }
}

pub const DROP_INVALID_SIP: u8 = 132;

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
