//! P1 figures (run as root: `cargo bench --bench p1`): CNI ADD latency over 100 sequential
//! pods, and pod-to-pod TCP throughput through the eBPF path vs. a bare veth pair without
//! programs, measured in the same run with iperf3. Prints a table; asserts nothing.
use std::{
    io::Write,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_cilium");
const CLUSTER: &str = "bench";
const PODS: usize = 100;

fn sh(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().expect(cmd);
    assert!(st.success(), "{cmd} {args:?} failed");
}

fn in_ns(ns: &str, cmd: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={ns}")).arg(cmd).args(args);
    c
}

fn cni(command: &str, ctr: &str, netns: &str, socket: &str, node_ns: &str) -> Duration {
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"cilium","type":"cilium-cni","agentSocket":"{socket}"}}"#
    );
    let ns = std::fs::File::open(node_ns).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg0("cilium-cni")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", ctr)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cilium::datapath::netns::enter_on_exec(&mut cmd, &ns);
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "CNI {command}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    took
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// iperf3 from `client_ns` to `server_ip` (server in `server_ns`); Gbit/s received.
fn iperf(server_ns: &str, client_ns: &str, server_ip: &str) -> f64 {
    let mut server: Child = in_ns(server_ns, "iperf3", &["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 (install/deps.sh)");
    std::thread::sleep(Duration::from_millis(300));
    let out = in_ns(
        client_ns,
        "iperf3",
        &["-c", server_ip, "-p", "5201", "-t", "5", "-J"],
    )
    .output()
    .unwrap();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 result")
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
    let _ = Command::new(BIN)
        .args(["local", "down", "--name", CLUSTER])
        .output();
    sh(
        BIN,
        &[
            "local",
            "up",
            "--name",
            CLUSTER,
            "--pod-cidr",
            "10.240.0.0/24",
        ],
    );
    let socket = format!("/var/run/cilium-local/{CLUSTER}/nodes/node1/cilium.sock");
    let node_ns = format!("/var/run/netns/cilium-{CLUSTER}.node1");

    // CNI ADD latency over 100 sequential pods (the plugin process, end to end).
    let mut adds = Vec::new();
    for i in 0..PODS {
        let name = format!("cilium-{CLUSTER}.pod-p{i}");
        sh("ip", &["netns", "add", &name]);
        adds.push(cni(
            "ADD",
            &format!("ctr{i}"),
            &format!("/var/run/netns/{name}"),
            &socket,
            &node_ns,
        ));
    }
    let mut sorted = adds.clone();
    sorted.sort();

    // Throughput: pod p0 <- pod p1 through bpf_lxc.
    let p0 = format!("/var/run/netns/cilium-{CLUSTER}.pod-p0");
    let p1 = format!("/var/run/netns/cilium-{CLUSTER}.pod-p1");
    let bpf = iperf(&p0, &p1, "10.240.0.2");

    // Bare veth pair, no programs, same run.
    let (a, b) = (
        format!("cilium-{CLUSTER}.bare-a"),
        format!("cilium-{CLUSTER}.bare-b"),
    );
    sh("ip", &["netns", "add", &a]);
    sh("ip", &["netns", "add", &b]);
    sh(
        "ip",
        &[
            "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
        ],
    );
    sh(
        "ip",
        &["-n", &a, "addr", "add", "10.241.0.1/24", "dev", "va"],
    );
    sh(
        "ip",
        &["-n", &b, "addr", "add", "10.241.0.2/24", "dev", "vb"],
    );
    sh("ip", &["-n", &a, "link", "set", "va", "up"]);
    sh("ip", &["-n", &b, "link", "set", "vb", "up"]);
    let bare = iperf(
        &format!("/var/run/netns/{a}"),
        &format!("/var/run/netns/{b}"),
        "10.241.0.1",
    );

    // DEL latency while tearing down.
    let mut dels = Vec::new();
    for i in 0..PODS {
        let name = format!("/var/run/netns/cilium-{CLUSTER}.pod-p{i}");
        dels.push(cni("DEL", &format!("ctr{i}"), &name, &socket, &node_ns));
    }
    dels.sort();
    let _ = Command::new(BIN)
        .args(["local", "down", "--name", CLUSTER])
        .output();

    println!("\n{:<52} {:>12}", "figure", "value");
    println!(
        "{:<52} {:>9.1} ms",
        "CNI ADD latency p50 (100 sequential pods)",
        pct(&sorted, 0.50)
    );
    println!(
        "{:<52} {:>9.1} ms",
        "CNI ADD latency p99",
        pct(&sorted, 0.99)
    );
    println!("{:<52} {:>9.1} ms", "CNI DEL latency p50", pct(&dels, 0.50));
    println!(
        "{:<52} {:>7.2} Gb/s",
        "TCP pod-to-pod through bpf_lxc (iperf3, 5 s)", bpf
    );
    println!(
        "{:<52} {:>7.2} Gb/s",
        "TCP over a bare veth pair, no programs (same run)", bare
    );
    println!("{:<52} {:>9.2} x", "ratio bpf / bare", bpf / bare);
    let rel = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/cilium");
    if let Ok(m) = std::fs::metadata(&rel) {
        println!(
            "{:<52} {:>9.1} MB",
            "static release binary size",
            m.len() as f64 / 1e6
        );
    }
}
