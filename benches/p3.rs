//! P3 figures (root: `cargo bench --bench p3`): service connect + request/response
//! latency from a pod through our socket load balancer vs. iptables rules in
//! kube-proxy's layout vs. a direct connection to a backend, at 100, 1,000 and
//! 10,000 services × 3 backends; time to program all services and one change;
//! memory of the LB maps. Same run, same machine. Prints a table; asserts nothing.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cilium::cmd::probe::LatencyResult;

const BIN: &str = env!("CARGO_BIN_EXE_cilium");
const SAMPLES: usize = 2000;
/// Ours and the direct path alternate in this many rounds of SAMPLES / ROUNDS.
const ROUNDS: usize = 10;

fn cilium(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cilium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(socket: &str) -> serde_json::Value {
    serde_json::from_str(&cilium(&["-H", socket, "status", "-o", "json"], None)).unwrap()
}

fn wait_services(socket: &str, n: usize) -> (Duration, f64) {
    let start = Instant::now();
    loop {
        let st = status(socket);
        if st["services"].as_u64() == Some(n as u64) {
            return (
                start.elapsed(),
                st["last_regeneration_ms"].as_f64().unwrap_or(0.0),
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "agent never reached {n} services"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ip_of(base: [u8; 2], i: usize) -> Ipv4Addr {
    let n = u32::from(Ipv4Addr::new(base[0], base[1], 0, 0)) + 1 + i as u32;
    Ipv4Addr::from(n)
}

fn services_yaml(range: std::ops::Range<usize>, backends: &[String]) -> String {
    let eps: String = backends
        .iter()
        .map(|b| format!("- addresses: [{b}]\n"))
        .collect();
    let mut y = String::new();
    for i in range {
        y += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec:\n  clusterIP: {}\n  ports:\n  - {{name: p, port: 80, targetPort: 8080, protocol: TCP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{i}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: s{i}}}\naddressType: IPv4\nports:\n- {{name: p, port: 8080, protocol: TCP}}\nendpoints:\n{eps}",
            ip_of([10, 96], i)
        );
    }
    y
}

/// kube-proxy's iptables layout: KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* with statistic probabilities.
fn iptables_rules(n: usize, backends: &[String]) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from("-A OUTPUT -j KUBE-SERVICES\n");
    for i in 0..n {
        chains += &format!(":KUBE-SVC-{i:016X} - [0:0]\n");
        rules += &format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/s{i}:p cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{i:016X}\n",
            ip_of([10, 100], i)
        );
        let k = backends.len();
        for (j, b) in backends.iter().enumerate() {
            chains += &format!(":KUBE-SEP-{i:012X}{j:04X} - [0:0]\n");
            let left = k - j;
            if left > 1 {
                rules += &format!(
                    "-A KUBE-SVC-{i:016X} -m comment --comment \"default/s{i}:p -> {b}:8080\" -m statistic --mode random --probability {:.11} -j KUBE-SEP-{i:012X}{j:04X}\n",
                    1.0 / left as f64
                );
            } else {
                rules += &format!("-A KUBE-SVC-{i:016X} -m comment --comment \"default/s{i}:p -> {b}:8080\" -j KUBE-SEP-{i:012X}{j:04X}\n");
            }
            rules += &format!("-A KUBE-SEP-{i:012X}{j:04X} -p tcp -m comment --comment \"default/s{i}:p\" -m tcp -j DNAT --to-destination {b}:8080\n");
        }
    }
    chains + &rules + "COMMIT\n"
}

fn serve(netns: &Path) {
    let l = cilium::datapath::netns::in_netns(netns, || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap()
    })
    .unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
}

fn memlock(root: &Path) -> u64 {
    [
        "cilium_lb4_services",
        "cilium_lb4_backends",
        "cilium_lb4_reverse_nat",
    ]
    .iter()
    .filter_map(|m| aya::maps::MapData::from_pin(root.join(m)).ok())
    .map(|d| {
        let fd = std::os::fd::AsFd::as_fd(d.fd()).as_raw_fd();
        std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("memlock:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    })
    .sum()
}

/// Samples of one path, pooled over rounds.
#[derive(Default)]
struct Pool {
    times: Vec<f64>,
    failures: usize,
}

/// Runs `cilium probe tcp --count N --samples` through `prefix` (`local exec ... --` or
/// nsenter) and adds its samples to `pool`.
fn latency(prefix: &[&str], targets: &[String], count: usize, pool: &mut Pool) {
    let count = count.to_string();
    let mut probe = vec![BIN, "probe", "tcp", "--samples", "--count", &count];
    probe.extend(targets.iter().map(String::as_str));
    let out = if prefix[0] == "__nsenter" {
        Command::new("nsenter")
            .arg(prefix[1])
            .args(&probe)
            .output()
            .unwrap()
    } else {
        let mut a: Vec<&str> = prefix.to_vec();
        a.extend_from_slice(&probe);
        Command::new(BIN).args(&a).output().unwrap()
    };
    let r: LatencyResult = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("probe: {}", String::from_utf8_lossy(&out.stderr)));
    pool.times.extend(r.times_ms.unwrap_or_default());
    pool.failures += r.failures;
}

impl Pool {
    fn summary(self) -> LatencyResult {
        LatencyResult::of(self.times, self.failures, false)
    }
}

/// Resident memory of the cluster's agent (from its pid in the cluster state).
fn agent_rss(cluster: &str) -> u64 {
    let state: serde_json::Value =
        std::fs::read(format!("/var/run/cilium-local/{cluster}/cluster.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
    let pid = state["nodes"][0]["agent_pid"].as_u64().unwrap_or(0);
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn sample_targets(base: [u8; 2], n: usize) -> Vec<String> {
    // 200 services spread over the whole range (first, last and in between).
    (0..200)
        .map(|k| format!("{}:80", ip_of(base, k * (n - 1) / 199)))
        .collect()
}

struct Row {
    n: usize,
    ours: LatencyResult,
    ipt: LatencyResult,
    direct: LatencyResult,
    program_all: Duration,
    program_all_agent_ms: f64,
    add_one_ms: f64,
    remove_one_ms: f64,
    ipt_restore: Duration,
    map_bytes: u64,
    agent_rss_kib: u64,
}

fn run(n: usize) -> Row {
    let name = format!("bench3-{n}");
    let _ = Command::new(BIN)
        .args(["local", "down", "--name", &name])
        .output();
    cilium(
        &[
            "local",
            "up",
            "--name",
            &name,
            "--pod-cidr",
            "10.243.0.0/24",
        ],
        None,
    );
    let socket = format!("/var/run/cilium-local/{name}/nodes/node1/cilium.sock");
    let netns = |p: &str| PathBuf::from(format!("/var/run/netns/cilium-{name}.pod-{p}"));
    let mut backends = Vec::new();
    for b in ["b1", "b2", "b3"] {
        let out = cilium(
            &[
                "local",
                "run",
                "--cluster",
                &name,
                "--name",
                b,
                "-d",
                "--",
                "sleep",
                "infinity",
            ],
            None,
        );
        backends.push(out.trim().rsplit(' ').next().unwrap().to_string());
        serve(&netns(b));
    }
    cilium(
        &[
            "local",
            "run",
            "--cluster",
            &name,
            "--name",
            "client",
            "-d",
            "--",
            "sleep",
            "infinity",
        ],
        None,
    );

    // Ours: program all, then one change each way.
    let t = Instant::now();
    cilium(
        &["local", "apply", "--cluster", &name, "-f", "-"],
        Some(&services_yaml(0..n, &backends)),
    );
    let (_, program_all_agent_ms) = wait_services(&socket, n);
    let program_all = t.elapsed();
    let one = services_yaml(n..n + 1, &backends);
    cilium(
        &["local", "apply", "--cluster", &name, "-f", "-"],
        Some(&one),
    );
    let (_, add_one_ms) = wait_services(&socket, n + 1);
    cilium(
        &["local", "delete", "--cluster", &name, "-f", "-"],
        Some(&one),
    );
    let (_, remove_one_ms) = wait_services(&socket, n);
    let map_bytes = memlock(Path::new(&format!("/sys/fs/bpf/cilium-local-{name}/node1")));
    let agent_rss_kib = agent_rss(&name);

    // Every measurement runs the same client code (`cilium probe --count`) in its own
    // process in the client's namespace; only ours runs inside the LB cgroup. Ours and
    // the floor (straight to the backends, before any iptables rule exists) take turns
    // in rounds, first one then the other, so drift of the machine hits both alike.
    let client_ns = netns("client");
    let nsenter = format!("--net={}", client_ns.display());
    let direct_targets: Vec<String> = backends.iter().map(|b| format!("{b}:8080")).collect();
    let ours_targets = sample_targets([10, 96], n);
    let (mut ours, mut direct) = (Pool::default(), Pool::default());
    let per_round = SAMPLES / ROUNDS;
    for round in 0..ROUNDS {
        let mut ours_round = || {
            latency(
                &["local", "exec", "--cluster", &name, "client", "--"],
                &ours_targets,
                per_round,
                &mut ours,
            )
        };
        if round % 2 == 0 {
            ours_round();
        }
        latency(
            &["__nsenter", &nsenter],
            &direct_targets,
            per_round,
            &mut direct,
        );
        if round % 2 == 1 {
            ours_round();
        }
    }
    let (ours, direct) = (ours.summary(), direct.summary());

    // iptables in kube-proxy's layout, in the client's namespace (its process is not in the LB cgroup).
    let rules = iptables_rules(n, &backends);
    let t = Instant::now();
    let mut restore = Command::new("nsenter")
        .arg(format!("--net={}", client_ns.display()))
        .args(["iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("iptables-restore (install/deps.sh)");
    restore
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(restore.wait().unwrap().success(), "iptables-restore failed");
    let ipt_restore = t.elapsed();
    let mut ipt = Pool::default();
    latency(
        &["__nsenter", &nsenter],
        &sample_targets([10, 100], n),
        SAMPLES,
        &mut ipt,
    );
    let ipt = ipt.summary();
    let _ = Command::new(BIN)
        .args(["local", "down", "--name", &name])
        .output();
    Row {
        n,
        ours,
        ipt,
        direct,
        program_all,
        program_all_agent_ms,
        add_one_ms,
        remove_one_ms,
        ipt_restore,
        map_bytes,
        agent_rss_kib,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark needs root"
    );
    let sizes: Vec<usize> = std::env::var("P3_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000, 10_000]);
    let rows: Vec<Row> = sizes.into_iter().map(run).collect();
    println!("\nconnect + 1-byte request/response from a pod to a ClusterIP ({SAMPLES} samples over 200 services, ms; ours and direct alternate in {ROUNDS} rounds):");
    println!(
        "{:>7}  {:>15}  {:>15}  {:>15}  {:>12}",
        "svcs", "ours p50/p99", "iptables p50/p99", "direct p50/p99", "ours/direct"
    );
    for r in &rows {
        println!(
            "{:>7}  {:>7.3}/{:<7.3}  {:>7.3}/{:<7.3}   {:>7.3}/{:<7.3}  {:>11.2}x",
            r.n,
            r.ours.p50_ms,
            r.ours.p99_ms,
            r.ipt.p50_ms,
            r.ipt.p99_ms,
            r.direct.p50_ms,
            r.direct.p99_ms,
            r.ours.p50_ms / r.direct.p50_ms
        );
    }
    println!("\nprogramming:");
    println!(
        "{:>7}  {:>22}  {:>18}  {:>14}  {:>14}  {:>18}  {:>12}",
        "svcs",
        "ours all (wall/agent)",
        "iptables-restore",
        "add one (agent)",
        "remove one",
        "LB map memlock",
        "agent RSS"
    );
    for r in &rows {
        println!(
            "{:>7}  {:>10.0} ms/{:>6.0} ms  {:>15.0} ms  {:>11.1} ms  {:>11.1} ms  {:>15.1} KiB  {:>8.1} MiB",
            r.n,
            r.program_all.as_secs_f64() * 1e3,
            r.program_all_agent_ms,
            r.ipt_restore.as_secs_f64() * 1e3,
            r.add_one_ms,
            r.remove_one_ms,
            r.map_bytes as f64 / 1024.0,
            r.agent_rss_kib as f64 / 1024.0
        );
    }
    for r in &rows {
        if r.ours.failures + r.ipt.failures + r.direct.failures > 0 {
            println!(
                "failures at {}: ours {}, iptables {}, direct {}",
                r.n, r.ours.failures, r.ipt.failures, r.direct.failures
            );
        }
    }
}
