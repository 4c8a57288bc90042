//! The CNI commands against the agent API and netlink. ADD is all-or-nothing: whatever
//! it created is undone when a later step fails.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::Path,
};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::spec::{
    AddResult, CniEnv, CniError, Command, ErrorCode, Interface, IpConfig, NetConf, Route,
};
use crate::{
    agent::{
        client::{Client, ClientError},
        models::{owner, EndpointRequest, GcRequest, HostPortMapping, IpamResponse},
    },
    datapath::{
        link::{mac_string, LinkError, Netlink},
        netns,
    },
};

/// Host-side link name of an attachment: `lxc` + 12 hex digits, as Cilium names them.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let h = Sha256::digest(format!("{container_id}/{ifname}"));
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("lxc{}", &hex[..12])
}

fn client_error(socket: &str, e: ClientError) -> CniError {
    match e {
        ClientError::Unreachable { source, .. } => CniError::agent_unreachable(socket, source),
        ClientError::Timeout { .. } => CniError::new(ErrorCode::TryAgainLater, e.to_string()),
        ClientError::Api { status, message } if status.as_u16() == 507 => {
            CniError::ip_pool_exhausted(&message).with_details(message)
        }
        other => CniError::agent_rejected(other),
    }
}

fn link_error(ifname: &str) -> impl FnOnce(LinkError) -> CniError + '_ {
    move |e| CniError::link_setup_failed(ifname, e)
}

fn netns_error(path: &str) -> impl FnOnce(netns::NetnsError) -> CniError + '_ {
    move |e| {
        CniError::new(
            ErrorCode::InvalidEnvironmentVariables,
            format!("CNI_NETNS={path} cannot be used: {e}; pass the path of the container's network namespace"),
        )
    }
}

pub async fn run(cmd: Command, env: &CniEnv, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let socket = conf.agent_socket_path().to_string();
    let client = Client::new(&socket);
    match cmd {
        Command::Add => add(&client, &socket, env, conf).await.map(Some),
        Command::Del => del(&client, &socket, env).await.map(|_| None),
        Command::Check => check(&client, &socket, env, conf).await.map(|_| None),
        Command::Status => match client.status().await {
            Ok(_) => Ok(None),
            Err(e) => Err(super::spec::status_unavailable(e)),
        },
        Command::Gc => gc(&client, &socket, conf).await.map(|_| None),
        Command::Version => Ok(Some(super::spec::version_result(Some(&conf.cni_version)))),
    }
}

/// What ADD created so far, for rollback.
struct Created {
    host_link: Option<u32>,
    allocated: bool,
}

async fn add(
    client: &Client,
    socket: &str,
    env: &CniEnv,
    conf: &NetConf,
) -> Result<Value, CniError> {
    let ns_path = env.netns.clone();
    let ns_file = File::open(&ns_path).map_err(|e| {
        CniError::new(
            ErrorCode::InvalidEnvironmentVariables,
            format!("CNI_NETNS={ns_path} cannot be opened ({e}); pass the path of the container's network namespace"),
        )
    })?;
    let nl = Netlink::connect().map_err(link_error("netlink"))?;
    let mut created = Created {
        host_link: None,
        allocated: false,
    };
    let res = add_inner(client, socket, env, conf, &nl, &ns_file, &mut created).await;
    if res.is_err() {
        if let Some(idx) = created.host_link {
            let _ = nl.delete_link(idx).await;
        }
        if created.allocated {
            let _ = client.release(&owner(&env.container_id, &env.ifname)).await;
        }
    }
    res
}

async fn add_inner(
    client: &Client,
    socket: &str,
    env: &CniEnv,
    conf: &NetConf,
    nl: &Netlink,
    ns_file: &File,
    created: &mut Created,
) -> Result<Value, CniError> {
    let host = host_ifname(&env.container_id, &env.ifname);
    let ns_path = env.netns.clone();
    let ifname = env.ifname.clone();

    // The interface name must be free inside the pod.
    let taken = netns::block_on_in_netns(Path::new(&ns_path), || async {
        let pod_nl = Netlink::connect()?;
        pod_nl.link_by_name(&ifname).await.map(|l| l.is_some())
    })
    .map_err(netns_error(&ns_path))?
    .map_err(link_error(&ifname))?;
    if taken {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("interface {ifname} already exists in {ns_path}: choose another CNI_IFNAME or delete the attachment first"),
        ));
    }

    let ipam: IpamResponse = client
        .allocate(&owner(&env.container_id, &env.ifname))
        .await
        .map_err(|e| client_error(socket, e))?;
    created.allocated = true;
    let (IpAddr::V4(ip), IpAddr::V4(gw)) = (ipam.ipv4.ip, ipam.ipv4.gateway) else {
        return Err(CniError::agent_rejected(
            "agent returned a non-IPv4 address for ipv4",
        ));
    };
    let mtu = conf.mtu.unwrap_or(ipam.mtu);

    // A leftover host link of an earlier, interrupted ADD for the same attachment goes first.
    if let Some(l) = nl.link_by_name(&host).await.map_err(link_error(&host))? {
        nl.delete_link(l.index).await.map_err(link_error(&host))?;
    }
    // The pod side is born inside the pod's namespace under its final name.
    nl.add_veth_into(&host, &ifname, ns_file.as_raw_fd(), mtu)
        .await
        .map_err(link_error(&host))?;
    let host_link = nl
        .link_by_name(&host)
        .await
        .map_err(link_error(&host))?
        .ok_or_else(|| CniError::link_setup_failed(&host, "link vanished after creation"))?;
    created.host_link = Some(host_link.index);
    nl.set_up(host_link.index)
        .await
        .map_err(link_error(&host))?;

    // Inside the pod: address (/32), route to the gateway, default route.
    let pod_mac = netns::block_on_in_netns(Path::new(&ns_path), || async {
        let pod_nl = Netlink::connect()?;
        let l = pod_nl.link(&ifname).await?;
        pod_nl.add_address(l.index, IpAddr::V4(ip), 32).await?;
        pod_nl.set_up(l.index).await?;
        pod_nl
            .replace_route_v4(gw, 32, l.index, None, Some(ip))
            .await?;
        pod_nl
            .replace_route_v4(Ipv4Addr::UNSPECIFIED, 0, l.index, Some(gw), Some(ip))
            .await?;
        Ok::<_, LinkError>(l.mac)
    })
    .map_err(netns_error(&ns_path))?
    .map_err(link_error(&ifname))?;

    let ep = client
        .create_endpoint(&EndpointRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: ns_path.clone(),
            host_ifname: host.clone(),
            pod_mac: mac_string(&pod_mac),
            ipv4: ip,
            ipv6: None,
            k8s_namespace: env.pod_namespace().map(String::from),
            k8s_pod_name: env.pod_name().map(String::from),
            port_mappings: conf
                .runtime_config
                .port_mappings
                .iter()
                .map(|m| HostPortMapping {
                    host_port: m.host_port,
                    container_port: m.container_port,
                    protocol: m.protocol.clone(),
                    host_ip: m.host_ip.as_deref().and_then(|ip| ip.parse().ok()),
                })
                .collect(),
        })
        .await
        .map_err(|e| client_error(socket, e))?;

    let result = AddResult {
        interfaces: vec![
            Interface {
                name: host,
                mac: ep.host_mac.clone(),
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac: ep.pod_mac.clone(),
                sandbox: Some(ns_path),
            },
        ],
        ips: vec![IpConfig {
            address: ipnet::IpNet::new(IpAddr::V4(ip), 32).map_err(CniError::agent_rejected)?,
            gateway: Some(IpAddr::V4(gw)),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".parse().map_err(CniError::agent_rejected)?,
            gw: Some(IpAddr::V4(gw)),
        }],
        dns: Default::default(),
    };
    result.render(&conf.cni_version)
}

/// DEL is idempotent: a missing endpoint, link or namespace is success.
async fn del(client: &Client, socket: &str, env: &CniEnv) -> Result<(), CniError> {
    match client.delete_endpoint(&env.container_id, &env.ifname).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(ClientError::Unreachable { source, .. }) => {
            // The link still goes; a restarted agent drops endpoints whose link is gone.
            eprintln!(
                "cilium-cni: agent at {socket} unreachable ({source}); removing the link, the agent releases the address when it starts"
            );
        }
        Err(e) => return Err(client_error(socket, e)),
    }
    let host = host_ifname(&env.container_id, &env.ifname);
    let nl = Netlink::connect().map_err(link_error("netlink"))?;
    if let Some(l) = nl.link_by_name(&host).await.map_err(link_error(&host))? {
        match nl.delete_link(l.index).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(CniError::link_setup_failed(&host, e)),
        }
    }
    Ok(())
}

async fn check(
    client: &Client,
    socket: &str,
    env: &CniEnv,
    conf: &NetConf,
) -> Result<(), CniError> {
    let ep = match client.endpoint(&env.container_id, &env.ifname).await {
        Ok(ep) => ep,
        Err(e) if e.is_not_found() => {
            return Err(CniError::new(
                ErrorCode::UnknownContainer,
                format!(
                    "no endpoint for container {} interface {}",
                    env.container_id, env.ifname
                ),
            ))
        }
        Err(e) => return Err(client_error(socket, e)),
    };
    if let Some(prev) = conf.prev_add_result()? {
        let expected = IpAddr::V4(ep.ipv4);
        if !prev.ips.iter().any(|c| c.address.addr() == expected) {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("prevResult does not contain the endpoint's address {expected}"),
            ));
        }
    }
    let nl = Netlink::connect().map_err(link_error("netlink"))?;
    if nl
        .link_by_name(&ep.host_ifname)
        .await
        .map_err(link_error(&ep.host_ifname))?
        .is_none()
    {
        return Err(CniError::link_setup_failed(
            &ep.host_ifname,
            "host-side link is missing",
        ));
    }
    let ifname = env.ifname.clone();
    let present = netns::block_on_in_netns(Path::new(&env.netns), || async {
        let pod_nl = Netlink::connect()?;
        pod_nl.link_by_name(&ifname).await.map(|l| l.is_some())
    })
    .map_err(netns_error(&env.netns))?
    .map_err(link_error(&ifname))?;
    if !present {
        return Err(CniError::link_setup_failed(
            &env.ifname,
            "pod-side link is missing",
        ));
    }
    Ok(())
}

async fn gc(client: &Client, socket: &str, conf: &NetConf) -> Result<(), CniError> {
    let Some(valid) = conf.valid_attachments.as_ref() else {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "GC needs cni.dev/valid-attachments in the network configuration",
        ));
    };
    let req = GcRequest {
        valid: valid
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect(),
    };
    let res = client.gc(&req).await.map_err(|e| client_error(socket, e))?;
    // The agent removed stale endpoints; remove their host links too.
    let nl = Netlink::connect().map_err(link_error("netlink"))?;
    for o in &res.removed_endpoints {
        if let Some((c, i)) = o.rsplit_once(':') {
            let host = host_ifname(c, i);
            if let Some(l) = nl.link_by_name(&host).await.map_err(link_error(&host))? {
                let _ = nl.delete_link(l.index).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_link_names_fit_ifnamsiz_and_are_stable() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("lxc"));
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_ne!(a, host_ifname("0123456789abcdef", "eth1"));
    }
}
