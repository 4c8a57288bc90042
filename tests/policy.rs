//! Privileged: identity-based policy on a local cluster with real traffic: allow by
//! label, default deny, L4 ports, ICMP, egress CIDR to the "outside" namespace,
//! deny over allow, replies through conntrack, live label changes, drop events,
//! and enforcement while the agent is down.
mod common;

use std::{
    net::{SocketAddr, TcpListener},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

fn listen(ns: &std::path::Path, port: u16) -> TcpListener {
    in_ns(ns, || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).expect("bind")
    })
}

fn endpoint(c: &LocalCluster, pod: &str) -> serde_json::Value {
    c.json(&["endpoint", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["k8s_pod_name"] == pod)
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint for {pod}"))
}

const ALLOW_CLIENT_8080: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-from-client
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"#;

#[test]
fn allow_by_label_default_deny_l4_and_removal() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-pol-l4", "10.214.0.0/24");
    let web = c.run_pod(None, "web", "app=web");
    let client = c.run_pod(None, "client", "app=client");
    c.run_pod(None, "other", "app=other");
    let _l1 = listen(&c.pod_netns("web"), 8080);
    let _l2 = listen(&c.pod_netns("web"), 9090);
    let _l3 = listen(&c.pod_netns("client"), 7000);
    assert!(c.tcp("other", &web, 8080), "no policy: everything passes");

    // A drop watcher, started before the policy.
    let monitor = Command::new(BIN)
        .args([
            "-H",
            &c.socket(),
            "monitor",
            "--type",
            "drop",
            "-n",
            "1",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    c.apply_ok(ALLOW_CLIENT_8080);
    let web_ep = endpoint(&c, "web");
    assert_eq!(web_ep["ingress_enforced"], true, "{web_ep}");
    assert_eq!(web_ep["egress_enforced"], false);
    assert!(c.tcp("client", &web, 8080), "allowed by label and port");
    assert!(!c.tcp("other", &web, 8080), "other label: default deny");
    assert!(!c.tcp("client", &web, 9090), "other port: denied");
    assert!(
        !c.ping("client", &web),
        "ICMP is not allowed by an L4 TCP rule"
    );
    assert!(c.tcp("web", &client, 7000), "web's egress is not enforced");

    // The drop was reported with its reason and identities.
    let out = monitor.wait_with_output().unwrap();
    let ev: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("monitor printed a drop event");
    assert_eq!(ev["reason_name"], "Policy denied", "{ev}");
    assert_eq!(ev["dst_identity"], web_ep["identity"], "{ev}");
    assert!(c.metric(133, "INGRESS") >= 2, "drops counted by reason");

    // Map entries with counters, and identities.
    let id = web_ep["id"].as_u64().unwrap().to_string();
    let entries = ok(&[
        "bpf",
        "policy",
        "get",
        &id,
        "--bpf-root",
        &c.bpf_root(),
        "-o",
        "json",
    ]);
    let entries: serde_json::Value = serde_json::from_str(&entries).unwrap();
    let client_id = endpoint(&c, "client")["identity"].clone();
    let allow = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["identity"] == client_id && e["port_range"] == "8080")
        .unwrap_or_else(|| panic!("allow entry for the client identity: {entries}"));
    assert_eq!(allow["policy"], "Allow");
    assert!(allow["packets"].as_u64().unwrap() > 0, "{allow}");
    let ids = c.json(&["identity", "list"]);
    assert!(ids
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == 1 && i["labels"][0] == "reserved:host"));
    let ipcache = ok(&["bpf", "ipcache", "list", "--bpf-root", &c.bpf_root()]);
    assert!(ipcache.contains(&format!("{web}/32")), "{ipcache}");

    // Removing the policy restores traffic.
    c.delete_ok(ALLOW_CLIENT_8080);
    assert_eq!(endpoint(&c, "web")["ingress_enforced"], false);
    assert!(c.tcp("other", &web, 8080), "policy removed: passes again");
    assert!(c.tcp("client", &web, 9090));
}

#[test]
fn icmp_rule_replies_pass_and_deny_beats_allow() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-pol-icmp", "10.215.0.0/24");
    let web = c.run_pod(None, "web", "app=web");
    let client = c.run_pod(None, "client", "app=client");
    let _l = listen(&c.pod_netns("web"), 8080);
    let _l2 = listen(&c.pod_netns("client"), 7000);
    c.apply_ok(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    icmps:
    - fields: [{type: 8, family: IPv4}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: nobody}}]
"#,
    );
    assert!(
        c.ping("client", &web),
        "ICMP echo allowed by the icmps rule (the reply passes too)"
    );
    assert!(
        c.tcp("client", &web, 8080),
        "web's egress is default deny, but replies pass through conntrack"
    );
    assert!(
        !c.tcp("web", &client, 7000),
        "web's new egress connections are denied"
    );

    // An ingressDeny beats the allow.
    c.apply_ok(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-client}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#,
    );
    assert!(!c.tcp("client", &web, 8080), "deny wins over allow");
    assert!(c.ping("client", &web), "the deny is only for TCP/8080");
    assert!(
        c.metric(181, "INGRESS") >= 1,
        "counted as 'Policy denied by denylist'"
    );
}

#[test]
fn egress_cidr_to_outside_and_kubernetes_network_policy() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-pol-cidr", "10.216.0.0/24");
    c.run_pod(None, "client", "app=client");
    let outside = std::path::PathBuf::from(format!("/var/run/netns/cilium-{}.outside", c.name));
    let _l = listen(&outside, 80);
    assert!(
        c.tcp("client", "203.0.113.2", 80),
        "the outside is reachable without policy"
    );
    assert!(c.tcp("client", "198.51.100.2", 80));

    c.apply_ok(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-doc-net}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [203.0.113.0/24]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#,
    );
    assert!(c.tcp("client", "203.0.113.2", 80), "allowed CIDR");
    assert!(!c.tcp("client", "198.51.100.2", 80), "other CIDR: denied");

    // An egressDeny for one address inside the allowed CIDR wins.
    let deny = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny-one}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egressDeny:\n  - toCIDR: [203.0.113.2/32]\n";
    c.apply_ok(deny);
    assert!(
        !c.tcp("client", "203.0.113.2", 80),
        "egress deny beats the CIDR allow"
    );
    assert!(c.metric(181, "EGRESS") >= 1);
    c.delete_ok(deny);
    assert!(c.tcp("client", "203.0.113.2", 80));
    c.delete_ok(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: to-doc-net}\n",
    );

    // Kubernetes NetworkPolicy: egress to everything except 198.51.100.0/24.
    c.apply_ok(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-198, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [198.51.100.0/24]}
"#,
    );
    assert!(
        c.tcp("client", "203.0.113.2", 80),
        "ipBlock allows the rest of the world"
    );
    assert!(
        !c.tcp("client", "198.51.100.2", 80),
        "ipBlock except is denied"
    );
}

#[test]
fn label_change_flips_verdict_within_a_second_and_bad_policy_changes_nothing() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-pol-label", "10.217.0.0/24");
    let web = c.run_pod(None, "web", "app=web");
    c.run_pod(None, "other", "app=other");
    let _l = listen(&c.pod_netns("web"), 8080);
    c.apply_ok(ALLOW_CLIENT_8080);
    assert!(!c.tcp("other", &web, 8080));

    let start = Instant::now();
    ok(&[
        "local",
        "label",
        "--cluster",
        &c.name,
        "other",
        "app=client",
    ]);
    let mut flipped = None;
    while start.elapsed() < Duration::from_secs(3) {
        if c.tcp("other", &web, 8080) {
            flipped = Some(start.elapsed());
            break;
        }
    }
    let took = flipped.expect("relabelled pod is allowed");
    assert!(took < Duration::from_secs(1), "verdict flipped in {took:?}");

    // A stream whose second document is invalid is rejected whole; enforcement stays.
    c.settle();
    let rev = c.json(&["status"])["policy_revision"].clone();
    let out = c.apply(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fine}
spec:
  endpointSelector: {matchLabels: {app: x}}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints:
    - matchLabel: {app: other}
"#,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("matchLabel") && err.contains("line"),
        "error names the field and line: {err}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.json(&["status"])["policy_revision"],
        rev,
        "nothing was applied"
    );
    let policies = c.json(&["policy", "get"]);
    assert_eq!(
        policies["policies"].as_array().unwrap().len(),
        1,
        "{policies}"
    );
    ok(&["local", "label", "--cluster", &c.name, "other", "app=other"]);
    c.settle();
    assert!(
        !c.tcp("other", &web, 8080),
        "the previous policy keeps enforcing"
    );
}

#[test]
fn enforcement_continues_while_the_agent_is_down() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-pol-restart", "10.218.0.0/24");
    let web = c.run_pod(None, "web", "app=web");
    c.run_pod(None, "client", "app=client");
    c.run_pod(None, "other", "app=other");
    let _l = listen(&c.pod_netns("web"), 8080);
    c.apply_ok(ALLOW_CLIENT_8080);
    ok(&["local", "restart-agent", "--cluster", &c.name, "--stop"]);
    assert!(
        c.tcp("client", &web, 8080),
        "agent down: allowed traffic flows"
    );
    assert!(
        !c.tcp("other", &web, 8080),
        "agent down: denied traffic stays denied"
    );
    ok(&["local", "restart-agent", "--cluster", &c.name]);
    assert!(c.tcp("client", &web, 8080));
    assert!(!c.tcp("other", &web, 8080));
    assert_eq!(endpoint(&c, "web")["ingress_enforced"], true);
}

#[test]
fn identities_are_shared_by_labels_and_released_when_unused() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-pol-ids", "10.219.0.0/24");
    c.run_pod(None, "a1", "app=shared");
    c.run_pod(None, "a2", "app=shared");
    c.run_pod(None, "b", "app=single");
    let (a1, a2, b) = (
        endpoint(&c, "a1")["identity"].clone(),
        endpoint(&c, "a2")["identity"].clone(),
        endpoint(&c, "b")["identity"].clone(),
    );
    assert_eq!(a1, a2, "same labels, same identity");
    assert_ne!(a1, b);
    assert!(
        a1.as_u64().unwrap() >= 256,
        "endpoint identities start at 256"
    );
    let ident = c.json(&["identity", "get", &b.to_string()]);
    let labels: Vec<&str> = ident["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(labels.contains(&"k8s:app=single"), "{labels:?}");
    assert!(
        labels.contains(&"k8s:io.kubernetes.pod.namespace=default"),
        "{labels:?}"
    );

    ok(&["local", "rm", "--cluster", &c.name, "b"]);
    let ids = c.json(&["identity", "list"]);
    assert!(
        !ids.as_array().unwrap().iter().any(|i| i["id"] == b),
        "identity released with its last pod: {ids}"
    );
    ok(&["local", "rm", "--cluster", &c.name, "a1"]);
    let ids = c.json(&["identity", "list"]);
    assert!(
        ids.as_array().unwrap().iter().any(|i| i["id"] == a1),
        "still used by a2"
    );
}
