//! Links, addresses and routes over rtnetlink, in the namespace the connection was opened in.
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        route::RouteScope,
    },
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("opening a netlink socket failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{op} failed: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Encapsulation of tunnel routing mode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    Vxlan,
    Geneve,
}

impl TunnelProtocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
        }
    }
    /// The kernel option the driver needs.
    pub fn kconfig(self) -> &'static str {
        match self {
            Self::Vxlan => "CONFIG_VXLAN",
            Self::Geneve => "CONFIG_GENEVE",
        }
    }
    /// Cilium's device name and default UDP port.
    pub fn device(self) -> &'static str {
        match self {
            Self::Vxlan => "cilium_vxlan",
            Self::Geneve => "cilium_geneve",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Self::Vxlan => 8472,
            Self::Geneve => 6081,
        }
    }
    /// Bytes of outer headers (IPv4 + UDP + tunnel header + inner Ethernet).
    pub fn overhead(self) -> u32 {
        50
    }
}

const ENOENT: i32 = 2;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const ESRCH: i32 = 3;
const EOPNOTSUPP: i32 = 95;

impl LinkError {
    fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            _ => None,
        }
    }
    /// The object did not exist (ENOENT / ENODEV / ESRCH).
    pub fn is_not_found(&self) -> bool {
        matches!(self, LinkError::NotFound(_))
            || matches!(self.errno(), Some(ENOENT | ENODEV | ESRCH))
    }
    /// The object already existed (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(EEXIST)
    }
}

/// A link as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// A netlink connection bound to the namespace it was created in.
pub struct Netlink {
    handle: Handle,
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let op = op.into();
    move |source| LinkError::Netlink { op, source }
}

impl Netlink {
    /// Opens a connection in the calling thread's current namespace. Needs a tokio runtime.
    pub fn connect() -> Result<Self, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    fn info(msg: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: [0; 6],
            mtu: 0,
        };
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Address(m) if m.len() == 6 => info.mac.copy_from_slice(m),
                LinkAttribute::Mtu(m) => info.mtu = *m,
                _ => {}
            }
        }
        info
    }

    /// Looks a link up by name; `Ok(None)` when there is no such link.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(Some(Self::info(&msg))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = nl(format!("looking up link {name}"))(e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// A link that must exist.
    pub async fn link(&self, name: &str) -> Result<LinkInfo, LinkError> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| LinkError::NotFound(name.to_string()))
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, LinkError> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(Some(Self::info(&msg))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = nl(format!("looking up link #{index}"))(e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// All links of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, LinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))?;
        Ok(msgs.iter().map(Self::info).collect())
    }

    /// Creates a veth pair `name` <-> `peer` with `peer` born directly inside the namespace
    /// `peer_ns_fd` (no move and rename afterwards, which costs a network synchronisation).
    pub async fn add_veth_into(
        &self,
        name: &str,
        peer: &str,
        peer_ns_fd: std::os::fd::RawFd,
        mtu: u32,
    ) -> Result<(), LinkError> {
        use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
        let peer_msg = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_ns_fd)
            .build();
        let msg = rtnetlink::LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("creating veth pair {name}/{peer}")))
    }

    /// Creates a veth pair `name` <-> `peer` with the given MTU.
    pub async fn add_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<(), LinkError> {
        let msg = LinkVeth::new(name, peer).mtu(mtu).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("creating veth pair {name}/{peer}")))
    }

    /// Creates a flow-based ("external", collect_md) tunnel device: the tunnel endpoint
    /// and VNI of each packet come from its metadata (set by bpf_lxc/bpf_overlay), as
    /// Cilium's cilium_vxlan / cilium_geneve. Created down, ARP off, learning off.
    pub async fn add_tunnel(
        &self,
        proto: TunnelProtocol,
        name: &str,
        port: u16,
        mtu: u32,
    ) -> Result<(), LinkError> {
        let msg = match proto {
            TunnelProtocol::Vxlan => rtnetlink::LinkVxlan::new(name, 0)
                .collect_metadata(true)
                .learning(false)
                .port(port)
                .mtu(mtu)
                .arp(false)
                .build(),
            TunnelProtocol::Geneve => {
                use rtnetlink::packet_route::link::InfoGeneve;
                rtnetlink::LinkGeneve::new(name, 0)
                    .append_info_data(InfoGeneve::CollectMetadata)
                    .append_info_data(InfoGeneve::Port(port))
                    .mtu(mtu)
                    .arp(false)
                    .build()
            }
        };
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl(format!("creating {} device {name}", proto.name()))(e);
                // The kernel answers "operation not supported" for a link kind whose
                // driver it was built without.
                if e.errno() == Some(EOPNOTSUPP) {
                    Err(LinkError::Unsupported(format!(
                        "this kernel has no {} driver ({}): use the vxlan tunnel protocol or native routing",
                        proto.name(),
                        proto.kconfig()
                    )))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates a bridge.
    pub async fn add_bridge(&self, name: &str) -> Result<(), LinkError> {
        self.handle
            .link()
            .add(rtnetlink::LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(nl(format!("creating bridge {name}")))
    }

    /// Enslaves link `index` to the bridge `master`.
    pub async fn set_master(&self, index: u32, master: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(master).build())
            .execute()
            .await
            .map_err(nl(format!("attaching link #{index} to bridge #{master}")))
    }

    pub async fn set_up(&self, index: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("setting link #{index} up")))
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(nl(format!("deleting link #{index}")))
    }

    /// IPv4 addresses of a link.
    pub async fn addresses_v4(&self, index: u32) -> Result<Vec<Ipv4Addr>, LinkError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("listing addresses of link #{index}")))?;
        Ok(msgs
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            })
            .collect())
    }

    /// Adds an address; an address that is already there is fine.
    pub async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), LinkError> {
        match self
            .handle
            .address()
            .add(index, addr, prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl(format!("adding address {addr}/{prefix} to link #{index}"))(e);
                if e.is_exists() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Adds or replaces an IPv4 route `dst/prefix` out of link `index`, optionally via `gw`,
    /// with scope link when there is no gateway.
    pub async fn replace_route_v4(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        index: u32,
        gw: Option<Ipv4Addr>,
        pref_src: Option<Ipv4Addr>,
    ) -> Result<(), LinkError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(index);
        match gw {
            Some(g) => b = b.gateway(g),
            None => b = b.scope(RouteScope::Link),
        }
        if let Some(s) = pref_src {
            b = b.pref_source(s);
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding route {dst}/{prefix} dev #{index}")))
    }

    /// Deletes an IPv4 route out of link `index` (`via` set: a gatewayed route, else a
    /// link-scope one); a route that is already gone is fine.
    pub async fn delete_route_v4(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        index: u32,
        via: bool,
    ) -> Result<(), LinkError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(index);
        if !via {
            b = b.scope(RouteScope::Link);
        }
        let msg = b.build();
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl(format!("deleting route {dst}/{prefix}"))(e);
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Writes a per-namespace sysctl under /proc/sys (the caller's namespace decides which).
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = [0x02, 0xab, 0, 1, 2, 0xff];
        assert_eq!(mac_string(&m), "02:ab:00:01:02:ff");
        assert_eq!(parse_mac("02:ab:00:01:02:ff"), Some(m));
        assert_eq!(parse_mac("02:ab:00:01:02"), None);
        assert_eq!(parse_mac("02:ab:00:01:02:ff:00"), None);
        assert_eq!(parse_mac("zz:ab:00:01:02:ff"), None);
    }
}
