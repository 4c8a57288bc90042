//! Privileged: socket-level service load balancing on a local cluster: ClusterIP
//! TCP and UDP spread over backends, the service address seen by getpeername and
//! recvmsg, session affinity, quick refusal without backends, and backend removal
//! that spares existing connections; IPv6 ClusterIPs through the connect6/sendmsg6/
//! recvmsg6/getpeername6 hooks.
mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    process::{Command, Stdio},
};

use common::*;

/// A TCP server in a pod's namespace that greets with `name` and echoes lines.
fn serve_tcp(c: &LocalCluster, pod: &str, port: u16, name: &'static str) {
    let l = in_ns(&c.pod_netns(pod), || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).unwrap()
    });
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let _ = w.write_all(format!("{name}\n").as_bytes());
                let mut r = BufReader::new(s);
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    let _ = w.write_all(format!("{name}:{line}").as_bytes());
                    line.clear();
                }
            });
        }
    });
}

fn serve_udp(c: &LocalCluster, pod: &str, port: u16, name: &'static str) {
    let s = in_ns(&c.pod_netns(pod), || {
        std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port))).unwrap()
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(name.as_bytes(), from);
        }
    });
}

/// `cilium probe` run inside a pod (in its cgroup, so the socket LB applies).
fn probe(c: &LocalCluster, pod: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["probe"];
    a.extend_from_slice(args);
    let mut cmd = vec![BIN];
    cmd.extend_from_slice(&a);
    let out = c.exec(pod, &cmd);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "probe output: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn service(name: &str, ip: &str, port: u16, target: u16, proto: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n{extra}  ports:\n  - {{name: p, port: {port}, targetPort: {target}, protocol: {proto}}}\n"
    )
}

fn slice(name: &str, target: u16, proto: &str, ips: &[&str]) -> String {
    let eps: String = ips
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n"))
        .collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n- {{name: p, port: {target}, protocol: {proto}}}\nendpoints:\n{eps}"
    )
}

/// A long-lived TCP connection from inside a pod (socat under `cilium local exec`, so in
/// the pod's cgroup): lines written to it, and the lines it receives, read on a thread
/// so a stalled connection fails a test in seconds, not after TCP gives up.
struct PodConn {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl PodConn {
    fn open(c: &LocalCluster, pod: &str, target: &str) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "local",
                "exec",
                "--cluster",
                &c.name,
                pod,
                "--",
                "socat",
                "-",
            ])
            .arg(format!("TCP:{target}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if tx.send(line.trim().to_string()).is_err() {
                    break;
                }
                line.clear();
            }
        });
        PodConn {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// The next line received, within 5 s.
    fn next(&self) -> Result<String, std::sync::mpsc::RecvTimeoutError> {
        self.lines.recv_timeout(std::time::Duration::from_secs(5))
    }
}

impl Drop for PodConn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn clusterip_tcp_and_udp_spread_over_backends_and_show_the_service_address() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-svc", "10.222.0.0/24");
    let b1 = c.pod("b1");
    let b2 = c.pod("b2");
    c.pod("client");
    serve_tcp(&c, "b1", 8080, "b1");
    serve_tcp(&c, "b2", 8080, "b2");
    serve_udp(&c, "b1", 5353, "u1");
    serve_udp(&c, "b2", 5353, "u2");
    let yaml = [
        service("web", "10.96.0.10", 80, 8080, "TCP", ""),
        slice("web", 8080, "TCP", &[&b1, &b2]),
        service("dns", "10.96.0.53", 53, 5353, "UDP", ""),
        slice("dns", 5353, "UDP", &[&b1, &b2]),
        service("empty", "10.96.0.99", 80, 80, "TCP", ""),
    ]
    .concat();
    c.apply_ok(&yaml);
    let svcs = c.json(&["service", "list"]);
    assert_eq!(svcs.as_array().unwrap().len(), 3, "{svcs}");

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..16 {
        let r = probe(&c, "client", &["tcp", "10.96.0.10:80"]);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(
            r["peer"], "10.96.0.10:80",
            "getpeername shows the service, not the backend: {r}"
        );
        *seen
            .entry(r["response"].as_str().unwrap().trim().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "connections spread over both backends: {seen:?}"
    );

    let mut udp_seen = BTreeMap::<String, usize>::new();
    for i in 0..16 {
        let connected = if i % 2 == 0 {
            "--connected"
        } else {
            "--send=q"
        };
        let r = probe(&c, "client", &["udp", "10.96.0.53:53", connected]);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(
            r["peer"], "10.96.0.53:53",
            "the reply appears to come from the service: {r}"
        );
        *udp_seen
            .entry(r["response"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        udp_seen.len(),
        2,
        "UDP spread over both backends: {udp_seen:?}"
    );

    // No backends: refused at once, not a timeout.
    let r = probe(&c, "client", &["tcp", "10.96.0.99:80", "--timeout", "3s"]);
    assert_eq!(r["error"], "refused", "{r}");
    assert!(r["ms"].as_f64().unwrap() < 100.0, "refused quickly: {r}");
    assert!(
        c.metric(158, "EGRESS") >= 1,
        "counted as 'Service backend not found'"
    );

    // A process outside the cluster's cgroup (this test) is translated per packet by
    // bpf_lxc instead: same spread, same service address seen by the client.
    let client_ns = c.pod_netns("client");
    let mut tc_seen = BTreeMap::<String, usize>::new();
    for _ in 0..16 {
        let r = in_ns(&client_ns, || {
            cilium::cmd::probe::tcp("10.96.0.10:80", None, std::time::Duration::from_secs(2))
                .unwrap()
        });
        assert!(r.ok, "tc-level LB: {r:?}");
        assert_eq!(r.peer.as_deref(), Some("10.96.0.10:80"));
        *tc_seen
            .entry(r.response.unwrap().trim().to_string())
            .or_default() += 1;
    }
    assert_eq!(tc_seen.len(), 2, "tc-level LB spreads too: {tc_seen:?}");
    let r = in_ns(&client_ns, || {
        cilium::cmd::probe::udp(
            "10.96.0.53:53",
            "q",
            false,
            std::time::Duration::from_secs(2),
        )
        .unwrap()
    });
    assert!(r.ok, "tc-level LB over UDP: {r:?}");
    assert_eq!(
        r.peer.as_deref(),
        Some("10.96.0.53:53"),
        "the UDP reply comes from the service: {r:?}"
    );

    // The load balancer keeps working while the agent is down, and after it restarts.
    ok(&["local", "restart-agent", "--cluster", &c.name, "--stop"]);
    let r = probe(&c, "client", &["tcp", "10.96.0.10:80"]);
    assert_eq!(
        r["peer"], "10.96.0.10:80",
        "agent down: still translated: {r}"
    );
    ok(&["local", "restart-agent", "--cluster", &c.name]);
    let r = probe(&c, "client", &["tcp", "10.96.0.10:80"]);
    assert_eq!(r["peer"], "10.96.0.10:80", "agent back: {r}");
    assert_eq!(
        c.json(&["service", "list"]).as_array().unwrap().len(),
        3,
        "services adopted"
    );

    // The backend address itself still works (no translation for it).
    let r = probe(&c, "client", &["tcp", &format!("{b1}:8080")]);
    assert_eq!(r["response"], "b1\n");
}

#[test]
fn session_affinity_pins_a_client_and_removed_backends_keep_existing_connections() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-svc-aff", "10.223.0.0/24");
    let b1 = c.pod("b1");
    let b2 = c.pod("b2");
    c.pod("client");
    serve_tcp(&c, "b1", 8080, "b1");
    serve_tcp(&c, "b2", 8080, "b2");
    let affinity = "  sessionAffinity: ClientIP\n";
    c.apply_ok(
        &[
            service("sticky", "10.96.1.10", 80, 8080, "TCP", affinity),
            slice("sticky", 8080, "TCP", &[&b1, &b2]),
        ]
        .concat(),
    );
    let first = probe(&c, "client", &["tcp", "10.96.1.10:80"])["response"].clone();
    for _ in 0..8 {
        assert_eq!(
            probe(&c, "client", &["tcp", "10.96.1.10:80"])["response"],
            first,
            "affinity pins the client"
        );
    }

    // A long-lived connection through the service, then its backend leaves the slice.
    c.apply_ok(
        &[
            service("web", "10.96.1.20", 80, 8080, "TCP", ""),
            slice("web", 8080, "TCP", &[&b1, &b2]),
        ]
        .concat(),
    );
    let mut conn = PodConn::open(&c, "client", "10.96.1.20:80");
    let owner = conn.next().expect("greeting");
    let (gone, stays) = if owner == "b1" {
        (&b1, &b2)
    } else {
        (&b2, &b1)
    };
    c.apply_ok(
        &[
            service("web", "10.96.1.20", 80, 8080, "TCP", ""),
            slice("web", 8080, "TCP", &[stays]),
        ]
        .concat(),
    );
    for _ in 0..8 {
        let r = probe(&c, "client", &["tcp", "10.96.1.20:80"]);
        assert_ne!(
            r["response"].as_str().unwrap().trim(),
            owner,
            "new connections avoid the removed backend {gone}"
        );
    }
    conn.send("still there");
    assert_eq!(
        conn.next().expect("echo"),
        format!("{owner}:still there"),
        "the existing connection continues"
    );
}

#[test]
fn nodeport_from_outside_spreads_with_maglev_and_keeps_the_client_address() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-svc-np", "10.224.0.0/24");
    let b1 = c.pod("b1");
    let b2 = c.pod("b2");
    for (pod, name) in [("b1", "b1"), ("b2", "b2")] {
        // Greets with its name and the client address it sees.
        let l = in_ns(&c.pod_netns(pod), || {
            TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap()
        });
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let peer = s
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                let _ = s.write_all(format!("{name} {peer}\n").as_bytes());
            }
        });
    }
    let np = "  type: NodePort\n";
    let yaml = [
        service("web", "10.96.2.10", 80, 8080, "TCP", np)
            .replace("targetPort: 8080,", "targetPort: 8080, nodePort: 30080,"),
        slice("web", 8080, "TCP", &[&b1, &b2]),
        service("none", "10.96.2.11", 80, 8080, "TCP", np)
            .replace("targetPort: 8080,", "targetPort: 8080, nodePort: 30081,"),
    ]
    .concat();
    c.apply_ok(&yaml);
    let outside = std::path::PathBuf::from(format!("/var/run/netns/cilium-{}.outside", c.name));
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..16 {
        let r = in_ns(&outside, || {
            cilium::cmd::probe::tcp("203.0.113.1:30080", None, std::time::Duration::from_secs(2))
                .unwrap()
        });
        assert!(r.ok, "NodePort from outside: {r:?}");
        assert_eq!(
            r.peer.as_deref(),
            Some("203.0.113.1:30080"),
            "replies come from the frontend"
        );
        let resp = r.response.unwrap();
        let (name, client) = resp.trim().split_once(' ').unwrap();
        assert_eq!(
            client, "203.0.113.2",
            "the backend sees the real client address (no SNAT)"
        );
        *seen.entry(name.to_string()).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "Maglev spreads flows over both backends: {seen:?}"
    );

    // b2 leaves the slice: the change reprograms just this service, Maglev table
    // included, and new flows from outside all go to b1.
    c.apply_ok(&slice("web", 8080, "TCP", &[&b1]));
    for _ in 0..8 {
        let r = in_ns(&outside, || {
            cilium::cmd::probe::tcp("203.0.113.1:30080", None, std::time::Duration::from_secs(2))
                .unwrap()
        });
        let resp = r.response.unwrap_or_default();
        assert!(resp.starts_with("b1 "), "only b1 is left: {resp:?}");
    }

    let before = c.metric(158, "INGRESS");
    let r = in_ns(&outside, || {
        cilium::cmd::probe::tcp(
            "203.0.113.1:30081",
            None,
            std::time::Duration::from_millis(500),
        )
        .unwrap()
    });
    assert_eq!(
        r.error.as_deref(),
        Some("timeout"),
        "no backends: dropped: {r:?}"
    );
    assert!(
        c.metric(158, "INGRESS") > before,
        "counted as 'Service backend not found'"
    );
}

#[test]
fn ipv6_clusterip_tcp_and_udp_over_the_socket_hooks() {
    if !privileged() {
        return;
    }
    // Pods have no IPv6 address yet (dual stack comes later): the backend is the pod's
    // own loopback, which exercises exactly the socket-level translation.
    let c = LocalCluster::up("t-svc-v6", "10.223.0.0/24");
    c.pod("c6");
    let l = in_ns(&c.pod_netns("c6"), || {
        TcpListener::bind("[::1]:8080".parse::<SocketAddr>().unwrap()).unwrap()
    });
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"web6\n");
        }
    });
    let u = in_ns(&c.pod_netns("c6"), || {
        std::net::UdpSocket::bind("[::1]:5353".parse::<SocketAddr>().unwrap()).unwrap()
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(b"dns6", from);
        }
    });
    let slice6 = |name: &str, port: u16, proto: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv6\nports:\n- {{name: p, port: {port}, protocol: {proto}}}\nendpoints:\n- addresses: [\"::1\"]\n"
        )
    };
    let yaml = [
        service(
            "web6",
            "fd00:96::10",
            80,
            8080,
            "TCP",
            "  ipFamilies: [IPv6]\n",
        ),
        slice6("web6", 8080, "TCP"),
        service(
            "dns6",
            "fd00:96::53",
            53,
            5353,
            "UDP",
            "  ipFamilies: [IPv6]\n",
        ),
        slice6("dns6", 5353, "UDP"),
        service(
            "none6",
            "fd00:96::99",
            80,
            8080,
            "TCP",
            "  ipFamilies: [IPv6]\n",
        ),
    ]
    .concat();
    c.apply_ok(&yaml);

    let r = probe(&c, "c6", &["tcp", "[fd00:96::10]:80"]);
    assert_eq!(r["ok"], true, "IPv6 ClusterIP over TCP: {r}");
    assert_eq!(r["response"], "web6\n");
    assert_eq!(
        r["peer"], "[fd00:96::10]:80",
        "getpeername6 shows the service address: {r}"
    );
    let r = probe(&c, "c6", &["udp", "[fd00:96::53]:53", "--send", "q"]);
    assert_eq!(r["ok"], true, "IPv6 ClusterIP over UDP: {r}");
    assert_eq!(r["response"], "dns6");
    assert_eq!(
        r["peer"], "[fd00:96::53]:53",
        "recvmsg6 shows the service address: {r}"
    );
    let lb = ok(&["bpf", "lb", "list", "--bpf-root", &c.bpf_root()]);
    assert!(
        lb.contains("[fd00:96::10]:80/TCP") && lb.contains("[::1]:8080 (slot 1"),
        "cilium bpf lb list shows IPv6 frontends: {lb}"
    );
    let r = probe(&c, "c6", &["tcp", "[fd00:96::99]:80"]);
    assert_eq!(
        r["error"], "refused",
        "an IPv6 service without backends is refused at once: {r}"
    );
}

/// kube-proxy's rules for one service in its iptables layout, plus a kubelet chain.
fn kube_proxy_rules(vip: &str, backends: &[&str]) -> String {
    let mut chains = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-WEB - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n",
    );
    rules += &format!(
        "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"default/web:p cluster IP\" -m tcp --dport 80 -j KUBE-SVC-WEB\n"
    );
    for (j, b) in backends.iter().enumerate() {
        chains += &format!(":KUBE-SEP-WEB{j} - [0:0]\n");
        let left = backends.len() - j;
        if left > 1 {
            rules += &format!(
                "-A KUBE-SVC-WEB -m statistic --mode random --probability {:.11} -j KUBE-SEP-WEB{j}\n",
                1.0 / left as f64
            );
        } else {
            rules += &format!("-A KUBE-SVC-WEB -j KUBE-SEP-WEB{j}\n");
        }
        rules += &format!("-A KUBE-SEP-WEB{j} -p tcp -m tcp -j DNAT --to-destination {b}:8080\n");
    }
    chains + &rules + "COMMIT\n"
}

/// iptables-save of the node's nat table.
fn node_nat(c: &LocalCluster) -> String {
    let out = in_ns(&c.node_netns(), || {
        Command::new("iptables-save").args(["-t", "nat"]).output()
    })
    .expect("iptables-save (install/deps.sh)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_node_switches_from_kube_proxy_rules_to_replacement_and_keeps_connections() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up_with(
        "t-svc-kpr",
        "10.232.0.0/24",
        &["--kube-proxy-replacement", "false"],
    );
    let b1 = c.pod("b1");
    let b2 = c.pod("b2");
    c.pod("client");
    serve_tcp(&c, "b1", 8080, "b1");
    serve_tcp(&c, "b2", 8080, "b2");
    c.apply_ok(
        &[
            service("web", "10.96.2.10", 80, 8080, "TCP", ""),
            slice("web", 8080, "TCP", &[&b1, &b2]),
        ]
        .concat(),
    );
    c.settle();
    let st = c.json(&["status"]);
    assert_eq!(st["kube_proxy_replacement"], "False", "{st}");
    assert_eq!(st["services"], 0, "kube-proxy has the services: {st}");

    // kube-proxy's rules on the node: the service works through iptables.
    let rules = kube_proxy_rules("10.96.2.10", &[&b1, &b2]);
    let restored = in_ns(&c.node_netns(), || {
        let mut p = Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .spawn()
            .expect("iptables-restore (install/deps.sh)");
        p.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        p.wait().unwrap()
    });
    assert!(restored.success());
    assert_eq!(
        probe(&c, "client", &["tcp", "10.96.2.10:80"])["ok"],
        true,
        "the service answers through kube-proxy's rules"
    );

    // A long-lived connection kube-proxy translated.
    let mut conn = PodConn::open(&c, "client", "10.96.2.10:80");
    let owner = conn.next().expect("greeting through kube-proxy's rules");
    assert!(owner == "b1" || owner == "b2", "greeting {owner:?}");

    // More connections kube-proxy translated, spread over both backends: every one of
    // them must survive the switch (the figure the migration reports).
    let mut conns: Vec<(String, BufReader<std::net::TcpStream>)> = (0..20)
        .map(|_| {
            let s = in_ns(&c.pod_netns("client"), || {
                std::net::TcpStream::connect_timeout(
                    &"10.96.2.10:80".parse().unwrap(),
                    std::time::Duration::from_secs(2),
                )
            })
            .expect("connection through kube-proxy's rules");
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut r = BufReader::new(s);
            let mut hello = String::new();
            r.read_line(&mut hello).unwrap();
            (hello.trim().to_string(), r)
        })
        .collect();
    let owners: std::collections::BTreeSet<&str> = conns.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(owners.len(), 2, "kube-proxy spread them: {owners:?}");

    // The switch: the agent restarts replacing kube-proxy and removes its chains.
    ok(&[
        "local",
        "restart-agent",
        "--cluster",
        &c.name,
        "--kube-proxy-replacement",
        "true",
    ]);
    c.settle();
    let st = c.json(&["status"]);
    assert!(
        st["kube_proxy_replacement"]
            .as_str()
            .unwrap()
            .starts_with("True"),
        "{st}"
    );
    assert_eq!(st["kube_proxy_chains"], 0, "{st}");
    assert!(st["services"].as_u64().unwrap() >= 1, "{st}");
    let nat = node_nat(&c);
    assert!(
        !nat.contains("KUBE-SERVICES") && !nat.contains("KUBE-SVC") && !nat.contains("KUBE-SEP"),
        "kube-proxy's chains are gone:\n{nat}"
    );
    assert!(
        nat.contains(":KUBE-KUBELET-CANARY"),
        "kubelet's chain stays:\n{nat}"
    );

    // The existing connection continues, to the same backend.
    for i in 0..5 {
        conn.send(&format!("after {i}"));
        assert_eq!(
            conn.next().map_err(|e| format!("no echo within 5 s: {e}")),
            Ok(format!("{owner}:after {i}")),
            "the connection opened through kube-proxy survives the switch"
        );
    }
    let mut dropped = 0;
    for (owner, r) in conns.iter_mut() {
        let mut line = String::new();
        let ok = r.get_mut().write_all(b"ping\n").is_ok()
            && r.read_line(&mut line).is_ok()
            && line.trim() == format!("{owner}:ping");
        if !ok {
            dropped += 1;
        }
    }
    eprintln!(
        "FIGURE kube-proxy -> replacement switch: {dropped} of {} established connections dropped",
        conns.len() + 1
    );
    assert_eq!(dropped, 0, "connections dropped by the switch");

    // Those connections end (reset by the client, so its ports are free at once) and
    // new ones go through the socket load balancer from the very same ports. About half
    // land on the backend the old connection had: the same address tuple at the
    // backend, whose conntrack still holds the old, closing flow (delivered by the
    // stack, replies sent back through it, where netfilter would translate them to the
    // old service address). A SYN must start a fresh flow there.
    // (Every old connection ends first: a new one that met an open one's tuple at the
    // backend would collide there whatever the datapath does.)
    drop(conn);
    let old: Vec<(u16, String)> = conns
        .drain(..)
        .map(|(owner, r)| {
            let s = r.into_inner();
            let port = s.local_addr().unwrap().port();
            let rst = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &rst).unwrap();
            (port, owner)
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (mut reused_same, mut failed) = (0, Vec::new());
    for (port, owner) in &old {
        let out = c.exec(
            "client",
            &[
                "socat",
                "-T",
                "3",
                "-",
                &format!("TCP:10.96.2.10:80,sourceport={port},connect-timeout=2"),
            ],
        );
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if answer == "b1" || answer == "b2" {
            reused_same += usize::from(&answer == owner);
        } else {
            failed.push(format!(
                "port {port} (its old connection went to {owner}): {answer:?} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} new connections from reused ports failed:\n{}",
        failed.len(),
        old.len(),
        failed.join("\n")
    );
    assert!(
        reused_same > 0,
        "no reused port landed on its old backend: the case was not exercised"
    );
    eprintln!(
        "{reused_same} of {} reused ports went to their old backend and connected",
        old.len()
    );

    // New connections go through the socket load balancer, to both backends.
    let mut seen = std::collections::BTreeSet::new();
    let mut failed = Vec::new();
    for _ in 0..16 {
        let r = probe(&c, "client", &["tcp", "10.96.2.10:80"]);
        let answer = r["response"].as_str().unwrap_or_default().trim();
        if answer.is_empty() {
            failed.push(r.clone());
        }
        seen.insert(answer.to_string());
    }
    assert_eq!(
        seen,
        ["b1".to_string(), "b2".to_string()].into(),
        "new connections spread over the backends; failed probes: {failed:?}"
    );
}
