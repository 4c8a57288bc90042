//! Privileged: a two-node local cluster with native routing: pods on different
//! nodes reach each other, node discovery programs routes and the ipcache (remote
//! endpoints keep their identities, node addresses are remote-node), policy by
//! identity holds across nodes, services reach remote backends, and the outside
//! reaches a pod on the second node.
mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use common::*;

/// Waits until both agents have applied the store's current revision.
fn settle_all(c: &LocalCluster) {
    let start = std::time::Instant::now();
    loop {
        let want: u64 = std::fs::read_to_string(c.dir().join("store/generation"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let done = ["node1", "node2"].iter().all(|n| {
            let sock = format!("/var/run/cilium-local/{}/nodes/{n}/cilium.sock", c.name);
            let st: serde_json::Value =
                serde_json::from_str(&ok(&["-H", &sock, "status", "-o", "json"])).unwrap();
            st["policy_revision"].as_u64() == Some(want)
        });
        if done {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "agents did not settle"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_nodes_route_pods_and_enforce_identity_policy_across_nodes() {
    if !privileged() {
        return;
    }
    let _ = cilium(&["local", "down", "--name", "t-multi"]);
    let c = LocalCluster {
        name: "t-multi".into(),
    };
    let out = ok(&[
        "local",
        "up",
        "--name",
        "t-multi",
        "--nodes",
        "2",
        "--pod-cidr",
        "10.227.0.0/16",
    ]);
    assert!(out.contains("node2 (pod CIDR 10.227.1.0/24)"), "{out}");

    let client = c.run_pod(Some("node1"), "client", "app=client");
    c.run_pod(Some("node1"), "other", "app=other");
    let web = c.run_pod(Some("node2"), "web", "app=web");
    assert!(
        web.starts_with("10.227.1."),
        "web got node2's pod CIDR: {web}"
    );
    assert!(c.ping("client", &web), "node1 pod -> node2 pod");
    assert!(c.ping("web", &client), "node2 pod -> node1 pod");
    let l = in_ns(&c.pod_netns("web"), || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap()
    });
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut s, b"web\n");
        }
    });
    assert!(c.tcp("other", &web, 8080), "TCP across nodes, no policy");

    // node1's ipcache knows node2's endpoint by identity and node2's address as remote-node.
    settle_all(&c);
    let web_id = {
        let node2 = format!("/var/run/cilium-local/{}/nodes/node2/cilium.sock", c.name);
        let eps: serde_json::Value =
            serde_json::from_str(&ok(&["-H", &node2, "endpoint", "list", "-o", "json"])).unwrap();
        eps[0]["identity"].as_u64().unwrap()
    };
    let ipc: serde_json::Value = serde_json::from_str(&ok(&[
        "bpf",
        "ipcache",
        "list",
        "--bpf-root",
        &c.bpf_root(),
        "-o",
        "json",
    ]))
    .unwrap();
    let id_of = |p: &str| {
        ipc.as_array()
            .unwrap()
            .iter()
            .find(|e| e["prefix"] == p)
            .map(|e| e["identity"].as_u64().unwrap())
    };
    assert_eq!(
        id_of(&format!("{web}/32")),
        Some(web_id),
        "remote endpoint with its identity: {ipc}"
    );
    assert_eq!(
        id_of("192.0.2.12/32"),
        Some(6),
        "node2's address is remote-node: {ipc}"
    );

    // Policy by identity across nodes: enforced on node2 for traffic from node1.
    c.apply_ok(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n",
    );
    settle_all(&c);
    assert!(
        c.tcp("client", &web, 8080),
        "allowed identity from the other node"
    );
    assert!(
        !c.tcp("other", &web, 8080),
        "other identity from the other node: denied"
    );

    // A ClusterIP whose backend is on the other node (socket LB on node1).
    c.apply_ok(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: 10.96.9.10\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n- addresses: [{web}]\n"
    ));
    let out = c.exec("client", &[BIN, "probe", "tcp", "10.96.9.10:80"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true, "ClusterIP -> backend on node2: {r}");
    assert_eq!(r["peer"], "10.96.9.10:80");
    assert_eq!(r["response"], "web\n");

    // The outside reaches a pod on node2 through node1 (and the reply finds its way back).
    let outside = std::path::PathBuf::from(format!("/var/run/netns/cilium-{}.outside", c.name));
    c.apply_ok("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEntities: [world]\n");
    settle_all(&c);
    let addr: SocketAddr = format!("{web}:8080").parse().unwrap();
    let reached = in_ns(&outside, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    });
    assert!(reached, "outside -> pod on node2, allowed as world");
}
