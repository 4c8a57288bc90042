//! `cilium connectivity perf`: pod-to-pod throughput, request/response and
//! connect/request/response rates, same node and across nodes, without and with an
//! L4 policy, on the local cluster's test workloads, each next to a baseline measured
//! in the same run with the same client: a bare veth pair between two namespaces (no
//! programs) for same-node pairs, and the underlay between two node namespaces (no
//! programs, no encapsulation) for cross-node pairs. Prints a table with ratios.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    connectivity::{self, Env},
    local,
};
use crate::datapath::{link::Netlink, netns};

const STREAM_PORT: u16 = 5201;
const RR_PORT: u16 = 5202;
const CRR_PORT: u16 = 5203;

fn listen(ns: &Path, port: u16) -> Result<TcpListener> {
    Ok(netns::in_netns(ns, || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
    })??)
}

/// Servers in the echo pod's namespace: a sink, a 1-byte echo, a 1-byte answer-and-close.
fn serve(ns: &Path) -> Result<()> {
    let stream = listen(ns, STREAM_PORT)?;
    let rr = listen(ns, RR_PORT)?;
    let crr = listen(ns, CRR_PORT)?;
    std::thread::spawn(move || {
        for mut s in stream.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    std::thread::spawn(move || {
        for mut s in rr.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
            });
        }
    });
    std::thread::spawn(move || {
        for mut s in crr.incoming().flatten() {
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {
                    // The client closes first (as netperf's TCP_CRR), so TIME_WAIT stays
                    // on the client and reused ports never meet a server TIME_WAIT.
                    let _ = s.read(&mut b);
                }
            });
        }
    });
    Ok(())
}

struct Figures {
    gbps: f64,
    rr: f64,
    crr: f64,
}

fn measure(client_ns: &Path, ip: &str, secs: u64) -> Result<Figures> {
    let dur = Duration::from_secs(secs);
    let addr = |p: u16| -> SocketAddr { format!("{ip}:{p}").parse().expect("address") };
    let (stream_addr, rr_addr, crr_addr) = (addr(STREAM_PORT), addr(RR_PORT), addr(CRR_PORT));
    netns::in_netns(client_ns, move || -> Result<Figures> {
        // Throughput: one stream of 64 KiB writes.
        let mut s = TcpStream::connect_timeout(&stream_addr, Duration::from_secs(2))?;
        let buf = vec![7u8; 1 << 16];
        let start = Instant::now();
        let mut bytes = 0u64;
        while start.elapsed() < dur {
            s.write_all(&buf)?;
            bytes += buf.len() as u64;
        }
        let gbps = bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9;
        drop(s);
        // Request/response on one connection.
        let mut s = TcpStream::connect_timeout(&rr_addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            n += 1;
        }
        let rr = n as f64 / start.elapsed().as_secs_f64();
        drop(s);
        // Connect, request/response, close. Thousands of connections a second leave the
        // client's ephemeral ports in TIME_WAIT: let connect() reuse them, as any
        // TCP_CRR harness must (per namespace; this is the client pod's).
        let _ = crate::datapath::link::write_sysctl("net.ipv4.tcp_tw_reuse", "1");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            let mut s = TcpStream::connect_timeout(&crr_addr, Duration::from_secs(2))?;
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            n += 1;
        }
        let crr = n as f64 / start.elapsed().as_secs_f64();
        Ok(Figures { gbps, rr, crr })
    })?
}

/// Two fresh namespaces joined by a bare veth pair (no programs): the same-node baseline.
async fn bare_pair(cluster: &str) -> Result<(PathBuf, PathBuf)> {
    let a = local::add_netns(&local::netns_name(cluster, "perf-a")).await?;
    let b = local::add_netns(&local::netns_name(cluster, "perf-b")).await?;
    let b_ns = std::fs::File::open(&b)?;
    for (ns, addr, create) in [(&a, "169.254.77.1", true), (&b, "169.254.77.2", false)] {
        let peer_fd = std::os::fd::AsRawFd::as_raw_fd(&b_ns);
        netns::block_on_in_netns(ns, move || async move {
            let nl = Netlink::connect()?;
            if create {
                // The peer is born in b under the same name.
                nl.add_veth_into("perf0", "perf0", peer_fd, 1500).await?;
            }
            let l = nl.link("perf0").await?;
            nl.add_address(l.index, addr.parse()?, 30).await?;
            nl.set_up(l.index).await?;
            nl.set_up(nl.link("lo").await?.index).await?;
            anyhow::Ok(())
        })??;
    }
    Ok((a, b))
}

pub async fn run(opts: connectivity::Options, secs: u64) -> Result<i32> {
    let env: Env = connectivity::deploy(&opts).await?;
    let res = run_inner(&opts, &env, secs).await;
    let _ = env
        .cluster
        .store()
        .and_then(|s| s.delete(&policy_yaml()).map_err(Into::into));
    for what in ["perf-a", "perf-b"] {
        local::del_netns(Path::new(&format!(
            "/var/run/netns/{}",
            local::netns_name(&env.cluster.name, what)
        )))
        .await;
    }
    if !opts.keep {
        connectivity::cleanup(&env).await;
    }
    res
}

fn policy_yaml() -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: perf-l4, namespace: {ns}}}\nspec:\n  endpointSelector: {{matchLabels: {{kind: echo}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{kind: client}}}}]\n    toPorts: [{{ports: [{{port: \"5201\", endPort: 5203, protocol: TCP}}]}}]\n",
        ns = connectivity::NS
    )
}

async fn run_inner(opts: &connectivity::Options, env: &Env, secs: u64) -> Result<i32> {
    let _ = opts;
    let pod_ns = |p: &str| {
        PathBuf::from(format!(
            "/var/run/netns/cilium-{}.pod-{p}",
            env.cluster.name
        ))
    };
    let client = pod_ns("ct-client");
    let mut targets = vec![("same node", pod_ns("ct-echo-same"), env.echo_same.clone())];
    if let Some(o) = &env.echo_other {
        targets.push(("other node", pod_ns("ct-echo-other"), o.clone()));
    }
    for (_, ns, _) in &targets {
        serve(ns)?;
    }
    // Baselines, measured in this run.
    let (bare_a, bare_b) = bare_pair(&env.cluster.name).await?;
    serve(&bare_b)?;
    let bare_veth = measure(&bare_a, "169.254.77.2", secs)?;
    let bare_underlay = match (env.cluster.nodes.get(1), env.echo_other.is_some()) {
        (Some(n2), true) => {
            serve(&n2.netns)?;
            let ip = n2.node_ip.map(|i| i.to_string()).unwrap_or_default();
            Some(measure(&env.cluster.nodes[0].netns, &ip, secs)?)
        }
        _ => None,
    };
    let mut rows = Vec::new();
    for with_policy in [false, true] {
        if with_policy {
            env.cluster.store()?.apply(&policy_yaml())?;
            connectivity::settle(env).await?;
        }
        for (label, _, ip) in &targets {
            let f = measure(&client, ip, secs)?;
            rows.push((*label, with_policy, f));
        }
    }
    let routing = crate::agent::client::Client::new(&env.cluster.nodes[0].socket)
        .status()
        .await
        .map(|s| s.routing)
        .unwrap_or_default();
    println!("\nrouting: {routing}; each ratio is to the baseline of its pair, same run");
    println!(
        "{:<12} {:<10} {:>14} {:>6} {:>16} {:>6} {:>18} {:>6}",
        "pair", "policy", "TCP_STREAM", "ratio", "TCP_RR", "ratio", "TCP_CRR", "ratio"
    );
    let line = |label: &str, pol: &str, f: &Figures, base: Option<&Figures>| {
        let r = |x: f64, b: Option<f64>| match b {
            Some(b) if b > 0.0 => format!("{:.2}", x / b),
            _ => "-".into(),
        };
        println!(
            "{:<12} {:<10} {:>9.2} Gb/s {:>6} {:>10.0} tr/s {:>6} {:>12.0} conn/s {:>6}",
            label,
            pol,
            f.gbps,
            r(f.gbps, base.map(|b| b.gbps)),
            f.rr,
            r(f.rr, base.map(|b| b.rr)),
            f.crr,
            r(f.crr, base.map(|b| b.crr)),
        )
    };
    line("bare veth", "baseline", &bare_veth, None);
    if let Some(b) = &bare_underlay {
        line("underlay", "baseline", b, None);
    }
    for (label, pol, f) in &rows {
        let base = if *label == "same node" {
            Some(&bare_veth)
        } else {
            bare_underlay.as_ref()
        };
        line(label, if *pol { "L4 allow" } else { "none" }, f, base);
    }
    Ok(0)
}
