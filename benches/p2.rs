//! P2 figures (root: `cargo bench --bench p2`): policy computation and map
//! programming at 1,000 pods / 200 policies and 10,000 pods / 1,000 policies
//! (synthetic), with the memory it takes; and the per-packet cost of enforcement:
//! TCP request/response rate and iperf3 throughput with an L4 policy vs. none,
//! measured in the same run on a local cluster. Prints a table; asserts nothing.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cilium::{
    datapath::{loader::Datapath, policymap::lpm_keys},
    policy::{
        labels::{IdentityInfo, Labels},
        parse::parse_stream,
        resolve::{resolve, EndpointView, EnforcementMode, ResolveContext},
    },
};

const BIN: &str = env!("CARGO_BIN_EXE_cilium");

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Synthetic cluster: `pods` pods over `policies` apps in 10 namespaces; policy i selects
/// app i and allows ingress from two other apps on a TCP port, egress to one app on UDP/53.
fn compute(pods: usize, policies: usize) -> (Duration, Duration, Duration, usize, u64) {
    let mut yaml = String::new();
    for i in 0..policies {
        let ns = i % 10;
        yaml += &format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{ns}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: app{i}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: app{a}}}}}, {{matchLabels: {{app: app{b}, k8s:io.kubernetes.pod.namespace: ns{bns}}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n  egress:\n  - toEndpoints: [{{matchLabels: {{app: app{c}, k8s:io.kubernetes.pod.namespace: ns{cns}}}}}]\n    toPorts: [{{ports: [{{port: \"53\", protocol: UDP}}]}}]\n",
            a = (i + 10) % policies,
            b = (i + 7) % policies,
            bns = (i + 7) % policies % 10,
            c = (i + 3) % policies,
            cns = (i + 3) % policies % 10,
            port = 8000 + i % 50,
        );
    }
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let parsed = parse_stream(&yaml).expect("synthetic policies parse");
    let rules: Vec<_> = parsed
        .policies
        .iter()
        .flat_map(|p| p.rules.iter().cloned())
        .collect();
    let parse = t0.elapsed();

    // One identity per (app, namespace); pods of an app share it.
    let mut identities: Vec<IdentityInfo> = cilium::agent::regen::reserved_identities();
    let mut ids: BTreeMap<(usize, usize), (u32, Labels)> = BTreeMap::new();
    let mut endpoints = Vec::new();
    for p in 0..pods {
        let app = p % policies;
        let ns = app % 10;
        let entry = ids.entry((app, ns)).or_insert_with(|| {
            let labels = Labels::for_pod(
                &format!("ns{ns}"),
                &BTreeMap::from([("app".to_string(), format!("app{app}"))]),
                &BTreeMap::new(),
                None,
                "default",
            );
            let id = 256 + identities.len() as u32;
            identities.push(IdentityInfo::endpoint(id, labels.clone()));
            (id, labels)
        });
        endpoints.push((
            (p % 65535) as u16 + 1,
            entry.0,
            entry.1.clone(),
            format!("ns{ns}"),
        ));
    }
    let named = BTreeMap::new();
    let cluster_ports = BTreeMap::new();
    let ctx = ResolveContext {
        identities: &identities,
        cluster_named_ports: &cluster_ports,
        enforcement: EnforcementMode::Default,
    };
    let t1 = Instant::now();
    let mut keys = BTreeSet::new();
    for (ep_id, identity, labels, ns) in &endpoints {
        let view = EndpointView {
            id: *ep_id,
            identity: *identity,
            labels,
            namespace: ns,
            named_ports: &named,
        };
        let pol = resolve(&rules, &view, &ctx);
        for (k, v) in &pol.entries {
            for key in lpm_keys(*ep_id, k.identity, k.egress, k.proto, k.port_lo, k.port_hi) {
                keys.insert((key, v.deny));
            }
        }
    }
    let resolve_t = t1.elapsed();
    let rss1 = rss_kib();

    // Program a real policy map (pinned under a scratch bpffs directory).
    let root = Path::new("/sys/fs/bpf/cilium-bench-p2");
    let _ = std::fs::remove_dir_all(root);
    let mut dp = Datapath::load(
        root,
        cilium::datapath::loader::DatapathConfig {
            maglev_size: 16381,
            tunnel_ifindex: None,
            node_ipv4: None,
            lb_dsr: false,
        },
    )
    .expect("loading the datapath (root, bpffs)");
    let t2 = Instant::now();
    for ((len, key), deny) in &keys {
        dp.policy_insert(*len, *key, *deny).expect("map insert");
    }
    let program = t2.elapsed();
    drop(dp);
    let _ = std::fs::remove_dir_all(root);
    (
        parse,
        resolve_t,
        program,
        keys.len(),
        rss1.saturating_sub(rss0),
    )
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cilium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    cilium::datapath::netns::in_netns(ns, f).unwrap()
}

/// 1-byte request/response transactions per second over one TCP connection.
fn tcp_rr(cli: &Path, srv: &Path, ip: &str, port: u16, secs: u64) -> f64 {
    let l = in_ns(srv, || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let mut c = in_ns(cli, || TcpStream::connect(addr).unwrap());
    c.set_nodelay(true).unwrap();
    let mut b = [0u8; 1];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        c.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
        n += 1;
    }
    drop(c);
    let _ = server.join();
    n as f64 / start.elapsed().as_secs_f64()
}

fn iperf(cli: &Path, srv: &Path, ip: &str) -> f64 {
    let mut server = Command::new("nsenter")
        .arg(format!("--net={}", srv.display()))
        .args(["iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", cli.display()))
        .args(["iperf3", "-c", ip, "-p", "5201", "-t", "5", "-J"])
        .output()
        .unwrap();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark needs root"
    );
    let mut rows = Vec::new();
    for (pods, policies) in [(1_000, 200), (10_000, 1_000)] {
        let (parse, res, prog, entries, rss) = compute(pods, policies);
        rows.push(format!(
            "{pods:>6} pods / {policies:>5} policies: parse {:>7.1} ms, resolve {:>8.1} ms ({:.1} µs/endpoint), program {:>7.1} ms for {entries} entries, +{:.1} MiB RSS",
            parse.as_secs_f64() * 1e3,
            res.as_secs_f64() * 1e3,
            res.as_secs_f64() * 1e6 / pods as f64,
            prog.as_secs_f64() * 1e3,
            rss as f64 / 1024.0
        ));
    }

    let cluster = "bench2";
    let _ = Command::new(BIN)
        .args(["local", "down", "--name", cluster])
        .output();
    sh(&[
        "local",
        "up",
        "--name",
        cluster,
        "--pod-cidr",
        "10.241.0.0/24",
    ]);
    sh(&[
        "local",
        "run",
        "--cluster",
        cluster,
        "--name",
        "srv",
        "--labels",
        "app=srv",
        "-d",
        "--",
        "sleep",
        "infinity",
    ]);
    sh(&[
        "local",
        "run",
        "--cluster",
        cluster,
        "--name",
        "cli",
        "--labels",
        "app=cli",
        "-d",
        "--",
        "sleep",
        "infinity",
    ]);
    let srv = Path::new("/var/run/netns/cilium-bench2.pod-srv");
    let cli = Path::new("/var/run/netns/cilium-bench2.pod-cli");
    let ip = "10.241.0.2";
    let rr0 = tcp_rr(cli, srv, ip, 7000, 3);
    let bw0 = iperf(cli, srv, ip);
    let policy = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: l4}\nspec:\n  endpointSelector: {matchLabels: {app: srv}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: cli}}]\n    toPorts: [{ports: [{port: \"7001\", protocol: TCP}, {port: \"5201\", protocol: TCP}]}]\n  egress:\n  - toEndpoints: [{matchLabels: {app: cli}}]\n";
    let mut child = Command::new(BIN)
        .args(["local", "apply", "--cluster", cluster, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(policy.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let rr1 = tcp_rr(cli, srv, ip, 7001, 3);
    let bw1 = iperf(cli, srv, ip);
    let _ = Command::new(BIN)
        .args(["local", "down", "--name", cluster])
        .output();

    println!("\npolicy computation (synthetic, in-process; programming into a real cilium_policy LPM map):");
    for r in rows {
        println!("  {r}");
    }
    println!("\nper-packet cost of enforcement (pod-to-pod, same node, same run):");
    println!(
        "  {:<40} {:>12} {:>12} {:>8}",
        "", "no policy", "L4 policy", "ratio"
    );
    println!(
        "  {:<40} {:>12.0} {:>12.0} {:>8.2}",
        "TCP request/response (1 byte), trans/s",
        rr0,
        rr1,
        rr1 / rr0
    );
    println!(
        "  {:<40} {:>12.2} {:>12.2} {:>8.2}",
        "iperf3 throughput, Gbit/s",
        bw0,
        bw1,
        bw1 / bw0
    );
}
