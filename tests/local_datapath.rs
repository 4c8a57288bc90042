//! Privileged: a single-node local cluster with real namespaces, links, programs
//! and packets. Run as root (CI is root and must not skip these).
mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use common::*;

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// A TCP connection from pod `a` to pod `b` (listener in b, client in a).
fn tcp_pair(c: &LocalCluster, a: &str, b: &str, b_ip: &str, port: u16) -> (TcpStream, TcpStream) {
    let listener = in_ns(&c.pod_netns(b), || {
        TcpListener::bind(addr("0.0.0.0", port)).unwrap()
    });
    let client = in_ns(&c.pod_netns(a), || {
        TcpStream::connect_timeout(&addr(b_ip, port), Duration::from_secs(3))
            .expect("pod-to-pod TCP connect")
    });
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    (client, server)
}

fn round_trip(client: &mut TcpStream, server: &mut TcpStream, msg: &[u8]) {
    client.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    server.read_exact(&mut buf).expect("server receives");
    assert_eq!(buf, msg);
    server.write_all(&buf).unwrap();
    client
        .read_exact(&mut buf)
        .expect("client receives the echo");
    assert_eq!(buf, msg);
}

#[test]
fn pods_reach_each_other_and_the_node_over_icmp_tcp_udp() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-basic", "10.210.0.0/24");
    let a_ip = c.pod("a");
    let b_ip = c.pod("b");
    assert_eq!(a_ip, "10.210.0.2");
    assert_eq!(b_ip, "10.210.0.3");

    assert!(c.ping("a", &b_ip), "a pings b");
    assert!(c.ping("b", &a_ip), "b pings a");
    assert!(
        c.ping("a", "10.210.0.1"),
        "a pings the node (router address)"
    );

    // TCP both ways, with a payload larger than one segment.
    let (mut client, mut server) = tcp_pair(&c, "a", "b", &b_ip, 8080);
    round_trip(&mut client, &mut server, &vec![7u8; 100_000]);

    // UDP request/reply.
    let srv = in_ns(&c.pod_netns("b"), || {
        UdpSocket::bind(addr("0.0.0.0", 5353)).unwrap()
    });
    let cli = in_ns(&c.pod_netns("a"), || {
        UdpSocket::bind(addr("0.0.0.0", 0)).unwrap()
    });
    srv.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    cli.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    cli.send_to(b"query", addr(&b_ip, 5353)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = srv.recv_from(&mut buf).expect("UDP request arrives");
    assert_eq!(&buf[..n], b"query");
    assert_eq!(from.ip().to_string(), a_ip, "source address is preserved");
    srv.send_to(b"answer", from).unwrap();
    let (n, _) = cli.recv_from(&mut buf).expect("UDP reply arrives");
    assert_eq!(&buf[..n], b"answer");

    // The node reaches a pod (TCP from the node's namespace).
    let pod_listener = in_ns(&c.pod_netns("a"), || {
        TcpListener::bind(addr("0.0.0.0", 9090)).unwrap()
    });
    in_ns(&c.node_netns(), || {
        TcpStream::connect_timeout(&addr(&a_ip, 9090), Duration::from_secs(3))
            .expect("node-to-pod TCP")
    });
    pod_listener.accept().unwrap();

    // Traffic was forwarded by the datapath and counted per endpoint.
    assert!(c.metric(0, "EGRESS") > 0, "forwarded packets counted");
    let eps = ok(&[
        "bpf",
        "endpoint",
        "list",
        "--bpf-root",
        &c.bpf_root(),
        "-o",
        "json",
    ]);
    let eps: serde_json::Value = serde_json::from_str(&eps).unwrap();
    let a = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ip"] == a_ip.as_str())
        .expect("a in cilium_lxc");
    // a sent and received the 100 kB payload (segments may be coalesced, so count bytes).
    assert!(
        a["from_endpoint_bytes"].as_u64().unwrap() > 100_000,
        "per-endpoint counters: {a}"
    );
    assert!(
        a["to_endpoint_bytes"].as_u64().unwrap() > 100_000,
        "per-endpoint counters: {a}"
    );
    assert!(
        a["from_endpoint_packets"].as_u64().unwrap() > 0,
        "per-endpoint counters: {a}"
    );
}

#[test]
fn spoofed_source_is_dropped_and_counted() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-spoof", "10.211.0.0/24");
    c.pod("a");
    let b_ip = c.pod("b");
    let before = c.metric(132, "EGRESS");
    // Pod a claims an address that is not its own.
    assert!(c
        .exec("a", &["ip", "addr", "add", "10.211.0.99/32", "dev", "eth0"])
        .status
        .success());
    let spoofed = c.exec(
        "a",
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "10.211.0.99",
            &b_ip,
        ],
    );
    assert!(
        !spoofed.status.success(),
        "spoofed ping must not get replies"
    );
    let after = c.metric(132, "EGRESS");
    assert!(
        after >= before + 3,
        "drops with reason 132 (Invalid source ip): {before} -> {after}"
    );
    // Its real address still works.
    assert!(c.ping("a", &b_ip));
    let table = ok(&["bpf", "metrics", "list", "--bpf-root", &c.bpf_root()]);
    assert!(table.contains("Invalid source ip"), "{table}");
}

#[test]
fn agent_restart_keeps_connections_and_endpoints() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-restart", "10.212.0.0/24");
    let a_ip = c.pod("a");
    let b_ip = c.pod("b");
    let before = c.json(&["endpoint", "list"]);
    let (mut client, mut server) = tcp_pair(&c, "a", "b", &b_ip, 7000);
    round_trip(&mut client, &mut server, b"before");

    // Agent down: pinned programs and maps keep forwarding.
    ok(&["local", "restart-agent", "--cluster", &c.name, "--stop"]);
    round_trip(&mut client, &mut server, b"while the agent is down");
    assert!(
        c.ping("b", &a_ip),
        "new traffic flows while the agent is down"
    );

    // Agent back: it adopts the endpoints; the connection lives on.
    ok(&["local", "restart-agent", "--cluster", &c.name]);
    round_trip(&mut client, &mut server, b"after");
    let after = c.json(&["endpoint", "list"]);
    let ids = |v: &serde_json::Value| {
        let mut x: Vec<(u64, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["id"].as_u64().unwrap(),
                    e["ipv4"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        x.sort();
        x
    };
    assert_eq!(
        ids(&before),
        ids(&after),
        "endpoints kept with the same ids and addresses"
    );
    // And a new pod still gets a fresh address after the restart.
    assert_eq!(c.pod("c"), "10.212.0.4");
}

#[test]
fn local_down_leaves_nothing_behind() {
    if !privileged() {
        return;
    }
    let snapshot = || {
        let netns: Vec<String> = std::fs::read_dir("/var/run/netns")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let bpf: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let root_links = links_in(std::path::Path::new("/proc/self/ns/net"));
        (
            netns
                .into_iter()
                .filter(|n| n.contains("t-down"))
                .collect::<Vec<_>>(),
            bpf.into_iter()
                .filter(|n| n.contains("t-down"))
                .collect::<Vec<_>>(),
            root_links,
        )
    };
    let before = snapshot();
    {
        let c = LocalCluster::up("t-down", "10.213.0.0/24");
        c.pod("a");
        c.pod("b");
        let during = snapshot();
        assert!(
            !during.0.is_empty() && !during.1.is_empty(),
            "the cluster made namespaces and pins"
        );
        assert_eq!(
            during.2, before.2,
            "nothing is created in the root namespace"
        );
        let removed = ok(&["local", "down", "--name", "t-down"]);
        assert!(removed.contains("agent of node1"), "{removed}");
        let again = ok(&["local", "down", "--name", "t-down"]);
        assert!(
            again.contains("nothing to remove"),
            "down is idempotent: {again}"
        );
    }
    assert_eq!(
        snapshot(),
        before,
        "namespaces, pins and root links are as before"
    );
    assert!(!std::path::Path::new("/var/run/cilium-local/t-down").exists());
}

#[test]
fn down_of_one_cluster_spares_a_cluster_whose_name_extends_it() {
    if !privileged() {
        return;
    }
    let long = LocalCluster::up("t-pre-x", "10.225.0.0/24");
    let ip = long.pod("a");
    {
        let _short = LocalCluster::up("t-pre", "10.226.0.0/24");
    }
    // `local down --name t-pre` ran (twice): t-pre-x keeps its namespaces and agent.
    assert!(
        long.node_netns().exists(),
        "t-pre-x's node namespace survived"
    );
    assert!(long.ping("a", &ip), "t-pre-x's pod still has its network");
    assert_eq!(long.json(&["status"])["endpoints"], 1);
}

#[test]
fn cgroup2_is_mounted_where_the_agent_needs_it_and_a_busy_directory_is_refused() {
    if !privileged() {
        return;
    }
    use cilium::datapath::loader::{ensure_cgroup2, is_cgroup2};
    let dir = std::env::temp_dir().join(format!("cilium-cg2-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!is_cgroup2(&dir));
    ensure_cgroup2(&dir).expect("mounting cgroup2 on an empty directory");
    assert!(is_cgroup2(&dir), "{} is cgroup2 now", dir.display());
    ensure_cgroup2(&dir).expect("already cgroup2: nothing to do");
    nix::mount::umount(&dir).expect("unmount");
    // Something else lives there: refused, not mounted over.
    std::fs::write(dir.join("file"), "x").unwrap();
    let e = ensure_cgroup2(&dir).unwrap_err().to_string();
    assert!(
        e.contains("not empty") && e.contains("--cgroup-root"),
        "{e}"
    );
    assert!(!is_cgroup2(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn iptables_runs_from_the_hosts_filesystem_when_the_image_has_none() {
    if !privileged() {
        return;
    }
    // A mount namespace whose filesystem has a file ours has not (the image's view vs
    // the host's): a command set up for that namespace reads it.
    let dir = std::env::temp_dir().join(format!("cilium-mntns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut holder = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none {d} && echo from-the-other-namespace > {d}/marker && echo ready && sleep 30",
            d = dir.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    assert!(!dir.join("marker").exists(), "not in our namespace");
    let mnt = std::path::PathBuf::from(format!("/proc/{}/ns/mnt", holder.id()));
    let out = cilium::agent::kube_proxy::command_in_mount_ns("cat", &mnt)
        .arg(dir.join("marker"))
        .output()
        .unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "from-the-other-namespace",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With iptables on PATH (as here) the agent runs its own view's iptables.
    let c = cilium::agent::kube_proxy::iptables_command("iptables-save", &mnt);
    assert_eq!(c.get_program(), "iptables-save");
}

#[test]
fn conntrack_gc_removes_expired_entries_and_spares_live_flows() {
    use aya::maps::{HashMap, Map, MapData};
    use cilium::datapath::{
        loader::{ct_gc, read_ct},
        maps::{CtEntry, CtKey, MAP_CT4},
    };
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-ctgc", "10.213.0.0/24");
    let a_ip = c.pod("a");
    let b_ip = c.pod("b");
    let (mut client, mut server) = tcp_pair(&c, "a", "b", &b_ip, 7100);
    round_trip(&mut client, &mut server, b"before");
    let root = std::path::PathBuf::from(c.bpf_root());
    let ip = |s: &str| u32::from_ne_bytes(s.parse::<std::net::Ipv4Addr>().unwrap().octets());
    let flow_entries = || {
        read_ct(&root)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| {
                (k.saddr, k.daddr) == (ip(&a_ip), ip(&b_ip))
                    || (k.saddr, k.daddr) == (ip(&b_ip), ip(&a_ip))
            })
            .count()
    };
    assert!(flow_entries() > 0, "the connection has conntrack entries");

    // Entries of flows long gone (from the documentation range) and one still live.
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap()
        .tv_sec() as u32;
    let mut m: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(Map::LruHashMap(
        MapData::from_pin(root.join(MAP_CT4)).unwrap(),
    ))
    .unwrap();
    let key = |i: u32| CtKey {
        saddr: ip("203.0.113.9"),
        daddr: ip("198.51.100.9"),
        sport: (i as u16).to_be(),
        dport: 80u16.to_be(),
        nexthdr: 6,
        dir: (i >> 16) as u8,
        pad: 0,
    };
    let stale = 20_000;
    for i in 0..stale {
        let e = CtEntry {
            lifetime: now - 5,
            ..Default::default()
        };
        m.insert(key(i), e, 0).unwrap();
    }
    let live = key(stale);
    let e = CtEntry {
        lifetime: now + 600,
        ..Default::default()
    };
    m.insert(live, e, 0).unwrap();

    let t = std::time::Instant::now();
    let removed = ct_gc(&root, now).unwrap();
    eprintln!(
        "FIGURE conntrack GC: {removed} expired of {} entries removed in {:?}",
        stale + 1 + flow_entries() as u32,
        t.elapsed()
    );
    assert_eq!(removed, stale as usize, "exactly the expired entries go");
    assert!(m.get(&live, 0).is_ok(), "a live entry stays");
    assert!(m.get(&key(0), 0).is_err(), "an expired entry is gone");
    assert!(flow_entries() > 0, "the open connection keeps its entries");
    round_trip(&mut client, &mut server, b"after");

    // Once they expire, the open connection's entries go too, and the datapath makes
    // new ones for its next packets (no policy: still allowed).
    assert!(ct_gc(&root, now + 30 * 86_400).unwrap() > 0);
    assert_eq!(flow_entries(), 0);
    assert!(m.get(&live, 0).is_err());
    round_trip(&mut client, &mut server, b"again");
    assert!(flow_entries() > 0, "new entries for the flow");
}
