//! `cilium connectivity perf`: pod-to-pod throughput, request/response and
//! connect/request/response rates, same node and across nodes, without and with an
//! L4 policy, on the local cluster's test workloads. Prints a table.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::connectivity::{self, Env};
use crate::datapath::netns;

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

pub async fn run(opts: connectivity::Options, secs: u64) -> Result<i32> {
    let env: Env = connectivity::deploy(&opts).await?;
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
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: perf-l4, namespace: {ns}}}\nspec:\n  endpointSelector: {{matchLabels: {{kind: echo}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{kind: client}}}}]\n    toPorts: [{{ports: [{{port: \"5201\", endPort: 5203, protocol: TCP}}]}}]\n",
        ns = connectivity::NS
    );
    let mut rows = Vec::new();
    for with_policy in [false, true] {
        if with_policy {
            env.cluster.store()?.apply(&policy)?;
            connectivity::settle(&env).await?;
        }
        for (label, _, ip) in &targets {
            let f = measure(&client, ip, secs)?;
            rows.push((*label, with_policy, f));
        }
    }
    env.cluster.store()?.delete(&policy)?;
    if !opts.keep {
        connectivity::cleanup(&env).await;
    }
    println!(
        "\n{:<12} {:<10} {:>14} {:>16} {:>18}",
        "pair", "policy", "TCP_STREAM", "TCP_RR", "TCP_CRR"
    );
    for (label, pol, f) in &rows {
        println!(
            "{:<12} {:<10} {:>9.2} Gb/s {:>10.0} tr/s {:>12.0} conn/s",
            label,
            if *pol { "L4 allow" } else { "none" },
            f.gbps,
            f.rr,
            f.crr
        );
    }
    Ok(0)
}
