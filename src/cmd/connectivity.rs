//! `cilium connectivity test` on a local cluster: deploys Cilium's test workloads
//! (client, client2, echo-same-node, echo-other-node, their services, an echo in the
//! "outside" namespace), then runs scenarios of actions with expected outcomes,
//! each scenario under its own policy, and reports like cilium-cli.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::local::{self, Cluster, RunOptions};

pub mod k8s;
use crate::{agent::client::Client, datapath::netns};

pub struct Options {
    pub cluster: String,
    pub tests: Vec<String>,
    pub single_node: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub json: bool,
    pub junit_file: Option<PathBuf>,
    pub keep: bool,
    /// Actions of a test run at once.
    pub concurrency: usize,
}

pub const NS: &str = "cilium-test";
const ECHO_PORT: u16 = 8080;
const NODEPORT: u16 = 31000;
/// NodePort of echo-other-node (reached through node1: SNAT to the remote backend).
const NODEPORT_OTHER: u16 = 31001;
const SVC_SAME: &str = "10.96.100.10";
const SVC_OTHER: &str = "10.96.100.11";
const OUTSIDE: &str = "203.0.113.2";
/// A second outside address (cilium-cli's pod-to-cidr targets).
const OUTSIDE_CIDR: &str = "198.51.100.2";
/// HostPort of the echo pods, as cilium-cli's.
const HOSTPORT: u16 = 4000;
const HTTP_GET: &str = "GET / HTTP/1.0\r\nHost: echo\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Success,
    Drop,
}

#[derive(Clone, Debug)]
pub enum From {
    Pod(&'static str),
    Host,
    Outside,
}

#[derive(Clone, Debug)]
enum Kind {
    Http(String),
    Ping(String),
}

#[derive(Clone, Debug)]
struct Action {
    name: String,
    from: From,
    kind: Kind,
    expect: Expect,
}

struct Scenario {
    name: &'static str,
    policy: Option<String>,
    needs_two_nodes: bool,
    actions: Vec<Action>,
}

#[derive(Debug, Serialize)]
struct ActionResult {
    name: String,
    expected: Expect,
    ok: bool,
    detail: String,
    /// The platform could not run it ([`Skipped`]); `ok` stays true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    skipped: bool,
}

#[derive(Debug, Serialize)]
struct TestResult {
    test: String,
    skipped: bool,
    passed: bool,
    actions: Vec<ActionResult>,
}

/// What the scenarios address: the test workloads and the nodes, wherever they run.
#[derive(Debug, Clone)]
pub struct Workloads {
    pub echo_same: String,
    pub echo_other: Option<String>,
    pub client: String,
    pub client2: String,
    /// Node addresses (the first is the clients' node).
    pub node_ips: Vec<String>,
    /// An address of the first node that the outside reaches (NodePort from outside).
    pub external_ip: String,
    /// ClusterIPs of the echo-same-node and echo-other-node Services.
    pub svc_same: String,
    pub svc_other: String,
    /// NodePorts of the same Services.
    pub nodeport_same: u16,
    pub nodeport_other: u16,
    /// The world: an address outside the cluster with an HTTP server on `world_port`
    /// (allowed by the to-cidr-external policy), and a second one (denied by it).
    pub world_ip: String,
    pub world_other_ip: String,
    pub world_port: u16,
    /// The CIDR the to-cidr-external policy allows: `world_ip`'s, not the other's.
    pub world_cidr: String,
}

/// An action the platform cannot run (e.g. from outside the cluster on Kubernetes):
/// reported as skipped with this reason, neither passed nor failed.
#[derive(Debug, thiserror::Error)]
#[error("skipped: {0}")]
pub struct Skipped(pub String);

/// Where the connectivity test runs: the workload/runner layer. The scenarios, their
/// expectations and the report are the same everywhere; a platform deploys the
/// workloads, runs probes from a pod, a node or the outside, applies policies, says
/// when the agents have them, and reads the agents' drop counters.
///
/// [`Env`] is the local cluster (namespaces, `cilium local`, the local store). A
/// Kubernetes platform implements the same on a cluster: Deployments and Services
/// through the API, probes through the pods' exec subresource, policies as
/// CiliumNetworkPolicy objects, settling by each agent's policy revision, drops from
/// each agent's metrics.
pub trait Platform: Sync {
    fn describe(&self) -> String;
    fn workloads(&self) -> &Workloads;
    /// An HTTP GET from `from` to `target` (addr:port): (got a 200, detail).
    fn http(&self, from: &From, target: &str, timeout: Duration) -> Result<(bool, String)>;
    /// One ping from a pod: (answered, detail).
    fn ping(&self, from: &From, ip: &str) -> Result<(bool, String)>;
    fn apply(&self, yaml: &str) -> Result<()>;
    fn delete(&self, yaml: &str) -> Result<()>;
    /// Waits until every agent enforces what was applied.
    fn settle(&self) -> impl std::future::Future<Output = Result<()>> + Send;
    /// Drop counters by (node, reason, direction).
    fn drop_counters(&self) -> std::collections::BTreeMap<(String, u8, u8), u64>;
    /// Why tests failed, for the report (drops by reason per node).
    fn explain(&self) -> Vec<String>;
    fn cleanup(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// The local cluster as a connectivity test platform.
pub struct Env {
    pub cluster: Cluster,
    pub echo_same: String,
    pub echo_other: Option<String>,
    pub client: String,
    pub client2: String,
    exe: String,
    workloads: Workloads,
}

impl Platform for Env {
    fn describe(&self) -> String {
        format!("local cluster {:?}", self.cluster.name)
    }

    fn workloads(&self) -> &Workloads {
        &self.workloads
    }

    fn http(&self, from: &From, target: &str, timeout: Duration) -> Result<(bool, String)> {
        match from {
            From::Pod(p) => {
                let cmd: Vec<String> = vec![
                    self.exe.clone(),
                    "probe".into(),
                    "tcp".into(),
                    target.to_string(),
                    "--send".into(),
                    HTTP_GET.into(),
                    "--timeout".into(),
                    format!("{}ms", timeout.as_millis()),
                ];
                local::exec_capture(&self.cluster, p, &cmd)
                    .map(|o| verdict(&String::from_utf8_lossy(&o.stdout)))
            }
            From::Host | From::Outside => {
                let ns = match from {
                    From::Host => self.cluster.nodes[0].netns.clone(),
                    _ => PathBuf::from(format!(
                        "/var/run/netns/cilium-{}.outside",
                        self.cluster.name
                    )),
                };
                netns::in_netns(&ns, || super::probe::tcp(target, Some(HTTP_GET), timeout))
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r)
                    .map(|r| verdict(&serde_json::to_string(&r).unwrap_or_default()))
            }
        }
    }

    fn ping(&self, from: &From, ip: &str) -> Result<(bool, String)> {
        let From::Pod(p) = from else {
            bail!("ping only from pods");
        };
        let cmd: Vec<String> = ["ping", "-c", "1", "-W", "1", ip]
            .iter()
            .map(|s| s.to_string())
            .collect();
        local::exec_capture(&self.cluster, p, &cmd).map(|o| {
            let ok = o.status.success();
            (ok, if ok { "reply" } else { "no reply" }.into())
        })
    }

    fn apply(&self, yaml: &str) -> Result<()> {
        self.cluster.store()?.apply(yaml)?;
        Ok(())
    }

    fn delete(&self, yaml: &str) -> Result<()> {
        self.cluster.store()?.delete(yaml)?;
        Ok(())
    }

    async fn settle(&self) -> Result<()> {
        settle(self).await
    }

    fn drop_counters(&self) -> std::collections::BTreeMap<(String, u8, u8), u64> {
        let mut m = std::collections::BTreeMap::new();
        for n in &self.cluster.nodes {
            for (k, v) in crate::datapath::loader::read_metrics(&n.bpf_root).unwrap_or_default() {
                if k.reason != 0 {
                    m.insert((n.name.clone(), k.reason, k.dir), v.packets);
                }
            }
        }
        m
    }

    fn explain(&self) -> Vec<String> {
        self.drop_counters()
            .into_iter()
            .map(|((node, reason, dir), packets)| {
                format!(
                    "{node} {reason:>4} {:<28} {:<8} {packets}",
                    crate::datapath::maps::reason_name(reason),
                    crate::datapath::maps::direction_name(dir),
                )
            })
            .collect()
    }

    async fn cleanup(&self) {
        cleanup(self).await
    }
}

fn http(target: String) -> Kind {
    Kind::Http(target)
}

fn act(name: &str, from: From, kind: Kind, expect: Expect) -> Action {
    Action {
        name: name.into(),
        from,
        kind,
        expect,
    }
}

/// A CiliumNetworkPolicy in the local test namespace (a Kubernetes platform moves it
/// into its own test namespace).
fn cnp(name: &str, spec: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n{spec}")
}

fn scenarios(w: &Workloads) -> Vec<Scenario> {
    use Expect::*;
    let same = format!("{}:{ECHO_PORT}", w.echo_same);
    let other = w.echo_other.clone().map(|ip| format!("{ip}:{ECHO_PORT}"));
    let svc_same = format!("{}:{ECHO_PORT}", w.svc_same);
    let svc_other = format!("{}:{ECHO_PORT}", w.svc_other);
    let world = format!("{}:{}", w.world_ip, w.world_port);
    let cidr = format!("{}:{}", w.world_other_ip, w.world_port);
    let host1 = w.node_ips.first().cloned().unwrap_or_default();
    let host2 = w
        .node_ips
        .get(1)
        .cloned()
        .filter(|_| w.echo_other.is_some());
    let c = From::Pod("ct-client");
    let c2 = From::Pod("ct-client2");
    let echo = From::Pod("ct-echo-same");
    let ping = |ip: &str| Kind::Ping(ip.to_string());
    // Actions against echo-other-node exist only with two nodes.
    let on_other = |name: &str, from: &From, expect: Expect| {
        other
            .clone()
            .map(|o| act(name, from.clone(), http(o), expect))
    };
    let mut v = vec![
        Scenario {
            name: "no-policies",
            policy: None,
            needs_two_nodes: false,
            actions: vec![
                act("pod-to-pod (same node)", c.clone(), http(same.clone()), Success),
                act("client-to-client ping", c.clone(), ping(&w.client2), Success),
                act("pod-to-service", c.clone(), http(svc_same.clone()), Success),
                act("pod-to-hostport", c.clone(), http(format!("{host1}:{HOSTPORT}")), Success),
                act("pod-to-host", c.clone(), ping(&host1), Success),
                act("pod-to-world", c.clone(), http(world.clone()), Success),
                act("pod-to-cidr", c.clone(), http(cidr.clone()), Success),
                act("host-to-pod", From::Host, http(same.clone()), Success),
                act("client2 pod-to-pod", c2.clone(), http(same.clone()), Success),
            ],
        },
        Scenario {
            name: "no-policies-other-node",
            policy: None,
            needs_two_nodes: true,
            actions: [
                on_other("pod-to-pod (other node)", &c, Success),
                Some(act("pod-to-service (backend on other node)", c.clone(), http(svc_other.clone()), Success)),
                host2.as_ref().map(|h| act("pod-to-remote-host", c.clone(), ping(h), Success)),
                on_other("host-to-pod (other node)", &From::Host, Success),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Scenario {
            name: "no-policies-extra",
            policy: None,
            needs_two_nodes: false,
            actions: [
                Some(act("outside-to-nodeport", From::Outside, http(format!("{}:{}", w.external_ip, w.nodeport_same)), Success)),
                other.as_ref().map(|_| act("outside-to-nodeport (backend on other node)", From::Outside, http(format!("{}:{}", w.external_ip, w.nodeport_other)), Success)),
                Some(act("pod-to-local-nodeport", c.clone(), http(format!("{host1}:{}", w.nodeport_same)), Success)),
                host2.as_ref().map(|h| act("pod-to-remote-nodeport", c.clone(), http(format!("{h}:{}", w.nodeport_same)), Success)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Scenario {
            name: "allow-all-except-world",
            policy: Some(cnp(
                "allow-all-except-world",
                "  endpointSelector: {matchLabels: {kind: client}}\n  egress:\n  - toEntities: [all]\n  egressDeny:\n  - toEntities: [world]\n",
            )),
            needs_two_nodes: false,
            actions: [
                Some(act("pod-to-pod", c.clone(), http(same.clone()), Success)),
                on_other("pod-to-pod (other node)", &c, Success),
                Some(act("pod-to-service", c.clone(), http(svc_same.clone()), Success)),
                Some(act("pod-to-host", c.clone(), ping(&host1), Success)),
                Some(act("pod-to-world denied", c.clone(), http(world.clone()), Drop)),
                Some(act("pod-to-cidr denied", c.clone(), http(cidr.clone()), Drop)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Scenario {
            name: "client-ingress",
            policy: Some(cnp(
                "client-ingress",
                "  endpointSelector: {matchLabels: {kind: client}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {other: client}}]\n",
            )),
            needs_two_nodes: false,
            actions: vec![
                act("client2 to client allowed", c2.clone(), ping(&w.client), Success),
                act("echo to client denied", echo.clone(), ping(&w.client), Drop),
            ],
        },
        Scenario {
            name: "echo-ingress-from-other-client",
            policy: Some(cnp(
                "echo-ingress",
                "  endpointSelector: {matchLabels: {kind: echo}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {other: client}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n",
            )),
            needs_two_nodes: false,
            actions: [
                Some(act("client2 allowed", c2.clone(), http(same.clone()), Success)),
                Some(act("client denied", c.clone(), http(same.clone()), Drop)),
                Some(act("client denied via service", c.clone(), http(svc_same.clone()), Drop)),
                on_other("client2 allowed (other node)", &c2, Success),
                on_other("client denied (other node)", &c, Drop),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Scenario {
            name: "echo-ingress-from-other-client-deny",
            policy: Some(cnp(
                "echo-ingress-deny",
                "  endpointSelector: {matchLabels: {kind: echo}}\n  ingress:\n  - fromEntities: [all]\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {other: client}}]\n",
            )),
            needs_two_nodes: false,
            actions: [
                Some(act("client allowed", c.clone(), http(same.clone()), Success)),
                Some(act("client2 denied", c2.clone(), http(same.clone()), Drop)),
                on_other("client allowed (other node)", &c, Success),
                on_other("client2 denied (other node)", &c2, Drop),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Scenario {
            name: "client-egress-to-echo",
            policy: Some(cnp(
                "client-egress",
                "  endpointSelector: {matchLabels: {kind: client}}\n  egress:\n  - toEndpoints: [{matchLabels: {kind: echo}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n",
            )),
            needs_two_nodes: false,
            actions: [
                Some(act("to echo allowed", c.clone(), http(same.clone()), Success)),
                on_other("to echo allowed (other node)", &c, Success),
                Some(act("to world denied", c.clone(), http(world.clone()), Drop)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Scenario {
            name: "client-egress-to-echo-deny",
            policy: Some(cnp(
                "client-egress-deny",
                "  endpointSelector: {matchLabels: {kind: client}}\n  egress:\n  - toEntities: [all]\n  egressDeny:\n  - toEndpoints: [{matchLabels: {kind: echo}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n",
            )),
            needs_two_nodes: false,
            actions: [
                Some(act("to echo denied", c.clone(), http(same.clone()), Drop)),
                on_other("to echo denied (other node)", &c, Drop),
                Some(act("to world allowed", c.clone(), http(world.clone()), Success)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Scenario {
            name: "all-ingress-deny",
            policy: Some(cnp(
                "all-ingress-deny",
                "  endpointSelector: {matchLabels: {kind: echo}}\n  ingressDeny:\n  - fromEntities: [all]\n",
            )),
            needs_two_nodes: false,
            actions: vec![
                act("client denied", c.clone(), http(same.clone()), Drop),
                act("client2 denied", c2.clone(), http(same.clone()), Drop),
            ],
        },
        Scenario {
            name: "all-egress-deny",
            policy: Some(cnp(
                "all-egress-deny",
                "  endpointSelector: {matchLabels: {kind: client}}\n  egressDeny:\n  - toEntities: [all]\n",
            )),
            needs_two_nodes: false,
            actions: vec![
                act("to echo denied", c.clone(), http(same.clone()), Drop),
                act("to world denied", c.clone(), http(world.clone()), Drop),
            ],
        },
        Scenario {
            name: "all-entities-deny",
            policy: Some(cnp(
                "all-entities-deny",
                "  endpointSelector: {matchLabels: {kind: client}}\n  egress:\n  - toEntities: [all]\n  egressDeny:\n  - toEntities: [all]\n",
            )),
            needs_two_nodes: false,
            actions: vec![
                act("to echo denied (deny wins)", c.clone(), http(same.clone()), Drop),
                act("to host denied", c.clone(), ping(&host1), Drop),
                act("to world denied", c.clone(), http(world.clone()), Drop),
            ],
        },
        Scenario {
            name: "host-entity-egress",
            policy: Some(cnp(
                "host-entity-egress",
                "  endpointSelector: {matchLabels: {kind: client}}\n  egress:\n  - toEntities: [host]\n",
            )),
            needs_two_nodes: false,
            actions: vec![
                act("to host allowed", c.clone(), ping(&host1), Success),
                act("to echo denied", c.clone(), http(same.clone()), Drop),
            ],
        },
        Scenario {
            name: "host-entity-ingress",
            policy: Some(cnp(
                "host-entity-ingress",
                "  endpointSelector: {matchLabels: {kind: echo}}\n  ingress:\n  - fromEntities: [host]\n",
            )),
            needs_two_nodes: false,
            actions: vec![
                act("host-to-pod allowed", From::Host, http(same.clone()), Success),
                act("client denied", c.clone(), http(same.clone()), Drop),
            ],
        },
        Scenario {
            name: "to-entities-world",
            policy: Some(cnp(
                "to-world",
                "  endpointSelector: {matchLabels: {kind: client}}\n  egress:\n  - toEntities: [world]\n",
            )),
            needs_two_nodes: false,
            actions: vec![
                act("to world allowed", c.clone(), http(world.clone()), Success),
                act("to echo denied", c.clone(), http(same.clone()), Drop),
            ],
        },
        Scenario {
            name: "to-cidr-external",
            policy: Some(cnp(
                "to-cidr",
                &format!("  endpointSelector: {{matchLabels: {{kind: client}}}}\n  egress:\n  - toCIDR: [{}]\n", w.world_cidr),
            )),
            needs_two_nodes: false,
            actions: vec![
                act(&format!("to {} allowed", w.world_ip), c.clone(), http(world.clone()), Success),
                act(&format!("to {} denied", w.world_other_ip), c.clone(), http(cidr.clone()), Drop),
                act("to echo denied", c.clone(), http(same.clone()), Drop),
            ],
        },
        Scenario {
            name: "cluster-entity",
            policy: Some(cnp(
                "to-cluster",
                "  endpointSelector: {matchLabels: {kind: client}}\n  egress:\n  - toEntities: [cluster]\n",
            )),
            needs_two_nodes: false,
            actions: [
                Some(act("to echo allowed", c.clone(), http(same.clone()), Success)),
                on_other("to echo allowed (other node)", &c, Success),
                Some(act("to world denied", c.clone(), http(world.clone()), Drop)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
    ];
    v.retain(|s| !s.actions.is_empty());
    v
}

/// Selects tests by cilium-cli's --test: regexes; a leading `!` excludes.
fn selected(name: &str, filters: &[regex::Regex], excludes: &[regex::Regex]) -> bool {
    (filters.is_empty() || filters.iter().any(|r| r.is_match(name)))
        && !excludes.iter().any(|r| r.is_match(name))
}

pub async fn deploy(opts: &Options) -> Result<Env> {
    let cluster = Cluster::load(&opts.cluster)?;
    let exe = std::env::current_exe()?.display().to_string();
    let two = cluster.nodes.len() >= 2 && !opts.single_node;
    let store = cluster.store()?;
    let pods: Vec<(&str, &str, &str)> = {
        let mut v = vec![
            ("ct-echo-same", "node1", "kind=echo,name=echo-same-node"),
            ("ct-client", "node1", "kind=client,name=client"),
            (
                "ct-client2",
                "node1",
                "kind=client,name=client2,other=client",
            ),
        ];
        if two {
            v.push(("ct-echo-other", "node2", "kind=echo,name=echo-other-node"));
        }
        v
    };
    for (name, node, labels) in &pods {
        if cluster.pod(name).is_ok() {
            continue; // kept from an earlier run
        }
        let labels = labels
            .split(',')
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let host_ports = if name.starts_with("ct-echo") {
            vec![local::HostPort {
                host_port: HOSTPORT,
                container_port: ECHO_PORT,
                protocol: "tcp".into(),
            }]
        } else {
            vec![]
        };
        let command = if name.starts_with("ct-echo") {
            vec![
                exe.clone(),
                "echo-server".into(),
                "--port".into(),
                ECHO_PORT.to_string(),
                "--name".into(),
                name.to_string(),
            ]
        } else {
            vec!["sleep".into(), "infinity".into()]
        };
        local::run(RunOptions {
            cluster: opts.cluster.clone(),
            name: name.to_string(),
            namespace: NS.into(),
            node: Some(node.to_string()),
            labels,
            named_ports: Default::default(),
            host_ports: host_ports.clone(),
            detach: true,
            command,
        })
        .await
        .with_context(|| format!("deploying {name}"))?;
    }
    let cluster = Cluster::load(&opts.cluster)?;
    let ip = |n: &str| cluster.pod(n).ok().and_then(|p| p.ipv4);
    let echo_same = ip("ct-echo-same").context("echo-same-node has no address")?;
    let echo_other = if two { ip("ct-echo-other") } else { None };
    let client = ip("ct-client").context("client has no address")?;
    let client2 = ip("ct-client2").context("client2 has no address")?;
    let mut yaml = service_yaml("echo-same-node", SVC_SAME, &echo_same, Some(NODEPORT));
    if let Some(o) = &echo_other {
        yaml += &service_yaml("echo-other-node", SVC_OTHER, o, Some(NODEPORT_OTHER));
    }
    store.apply(&yaml)?;
    // The "outside" echo, served by this process inside the outside namespace.
    let outside_ns = PathBuf::from(format!("/var/run/netns/cilium-{}.outside", cluster.name));
    let listener = netns::in_netns(&outside_ns, || {
        std::net::TcpListener::bind(("0.0.0.0", ECHO_PORT))
    })??;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(axum::routing::get(|| async {
            axum::Json(serde_json::json!({"name": "outside"}))
        }));
        let _ = axum::serve(listener, app).await;
    });
    let workloads = Workloads {
        echo_same: echo_same.clone(),
        echo_other: echo_other.clone(),
        client: client.clone(),
        client2: client2.clone(),
        node_ips: cluster
            .nodes
            .iter()
            .filter_map(|n| n.node_ip.map(|ip| ip.to_string()))
            .collect(),
        // The first node's address towards the outside namespace (local.rs wires it).
        external_ip: "203.0.113.1".into(),
        svc_same: SVC_SAME.into(),
        svc_other: SVC_OTHER.into(),
        nodeport_same: NODEPORT,
        nodeport_other: NODEPORT_OTHER,
        world_ip: OUTSIDE.into(),
        world_other_ip: OUTSIDE_CIDR.into(),
        world_port: ECHO_PORT,
        world_cidr: "203.0.113.0/24".into(),
    };
    let env = Env {
        cluster,
        echo_same,
        echo_other,
        client,
        client2,
        exe,
        workloads,
    };
    // Ready: every agent has applied the services (HostPorts alone already make its
    // service count non-zero), and every echo answers its own node (which policy never
    // blocks).
    settle(&env).await?;
    let start = Instant::now();
    loop {
        let mut ready = true;
        for pod in ["ct-echo-same", "ct-echo-other"] {
            let Ok(p) = env.cluster.pod(pod) else {
                continue;
            };
            let (Some(ip), Ok(node)) = (p.ipv4.clone(), env.cluster.node(Some(&p.node))) else {
                continue;
            };
            let target = format!("{ip}:{ECHO_PORT}");
            let r = netns::in_netns(&node.netns, || {
                super::probe::tcp(&target, Some(HTTP_GET), Duration::from_secs(1))
            });
            ready &= matches!(r, Ok(Ok(ref r)) if verdict(&serde_json::to_string(r).unwrap_or_default()).0);
        }
        for n in &env.cluster.nodes {
            ready &= Client::new(&n.socket)
                .status()
                .await
                .map(|s| s.services > 0)
                .unwrap_or(false);
        }
        if ready {
            return Ok(env);
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the test workloads did not become ready within 30s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn service_yaml(name: &str, ip: &str, backend: &str, node_port: Option<u16>) -> String {
    let (ty, np) = match node_port {
        Some(p) => ("NodePort", format!(", nodePort: {p}")),
        None => ("ClusterIP", String::new()),
    };
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  type: {ty}\n  clusterIP: {ip}\n  ports:\n  - {{name: http, port: {ECHO_PORT}, targetPort: {ECHO_PORT}{np}, protocol: TCP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {NS}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n- {{name: http, port: {ECHO_PORT}, protocol: TCP}}\nendpoints:\n- addresses: [{backend}]\n"
    )
}

fn run_action<P: Platform>(p: &P, a: &Action, opts: &Options) -> ActionResult {
    let timeout = match a.expect {
        Expect::Success => opts.connect_timeout + opts.request_timeout,
        Expect::Drop => opts.connect_timeout,
    };
    let outcome = match &a.kind {
        Kind::Http(t) => p.http(&a.from, t, timeout),
        Kind::Ping(ip) => p.ping(&a.from, ip),
    };
    if let Some(Skipped(why)) = outcome.as_ref().err().and_then(|e| e.downcast_ref()) {
        return ActionResult {
            name: a.name.clone(),
            expected: a.expect,
            ok: true,
            detail: format!("skipped: {why}"),
            skipped: true,
        };
    }
    let (success, detail) = outcome.unwrap_or_else(|e| (false, format!("{e:#}")));
    let ok = match a.expect {
        Expect::Success => success,
        Expect::Drop => !success && (detail.contains("timeout") || detail == "no reply"),
    };
    ActionResult {
        name: a.name.clone(),
        expected: a.expect,
        ok,
        detail,
        skipped: false,
    }
}

/// (success, detail) from `cilium probe` JSON: success means an HTTP 200 came back.
fn verdict(json: &str) -> (bool, String) {
    match serde_json::from_str::<serde_json::Value>(json.trim()) {
        Ok(v) => {
            let resp = v["response"].as_str().unwrap_or_default();
            if resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200") {
                (true, "HTTP 200".into())
            } else if let Some(e) = v["error"].as_str() {
                (false, e.to_string())
            } else {
                (
                    false,
                    format!(
                        "unexpected answer {:?}",
                        resp.lines().next().unwrap_or_default()
                    ),
                )
            }
        }
        Err(_) => (false, format!("probe failed: {}", json.trim())),
    }
}

/// Drop reasons the scenarios provoke on purpose.
const EXPECTED_DROPS: [u8; 2] = [133, 181];

/// `--test` regexes: (selecting, excluding with a leading `!`).
fn test_filters(tests: &[String]) -> Result<(Vec<regex::Regex>, Vec<regex::Regex>)> {
    let (filters, excludes): (Vec<String>, Vec<String>) =
        tests.iter().cloned().partition(|t| !t.starts_with('!'));
    let filters: Vec<regex::Regex> = filters
        .iter()
        .map(|t| regex::Regex::new(t))
        .collect::<Result<_, _>>()
        .context("--test")?;
    let excludes: Vec<regex::Regex> = excludes
        .iter()
        .map(|t| regex::Regex::new(&t[1..]))
        .collect::<Result<_, _>>()
        .context("--test")?;
    Ok((filters, excludes))
}

pub async fn run(opts: Options) -> Result<i32> {
    let (filters, excludes) = test_filters(&opts.tests)?;
    if !opts.json {
        println!(
            "🔭 Deploying connectivity test workloads on local cluster {:?}...",
            opts.cluster
        );
    }
    let env = deploy(&opts).await?;
    run_on(&env, &opts, &filters, &excludes).await
}

/// Runs the selected scenarios on a platform whose workloads are deployed, and reports.
pub async fn run_on<P: Platform>(
    env: &P,
    opts: &Options,
    filters: &[regex::Regex],
    excludes: &[regex::Regex],
) -> Result<i32> {
    run_suite(env, opts, filters, excludes)
        .await
        .map(|(rc, _)| rc)
}

/// [`run_on`], with the results.
async fn run_suite<P: Platform>(
    env: &P,
    opts: &Options,
    filters: &[regex::Regex],
    excludes: &[regex::Regex],
) -> Result<(i32, Vec<TestResult>)> {
    // Drop counters before the scenarios: only what this run adds counts.
    let baseline = env.drop_counters();
    let mut results = Vec::new();
    for s in scenarios(env.workloads()) {
        let skip = !selected(s.name, filters, excludes)
            || (s.needs_two_nodes && env.workloads().echo_other.is_none());
        if skip {
            results.push(TestResult {
                test: s.name.into(),
                skipped: true,
                passed: true,
                actions: vec![],
            });
            continue;
        }
        if !opts.json {
            println!("[=] Test [{}]", s.name);
        }
        if let Some(p) = &s.policy {
            env.apply(p)?;
            env.settle().await?;
        }
        // Up to --test-concurrency actions at once (each blocks on a probe process or
        // a socket); results print in the scenario's order.
        let mut actions = Vec::new();
        for chunk in s.actions.chunks(opts.concurrency.max(1)) {
            let results: Vec<ActionResult> = tokio::task::block_in_place(|| {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = chunk
                        .iter()
                        .map(|a| scope.spawn(|| run_action(env, a, opts)))
                        .collect();
                    handles
                        .into_iter()
                        .zip(chunk)
                        .map(|(h, a)| {
                            h.join().unwrap_or_else(|_| ActionResult {
                                name: a.name.clone(),
                                expected: a.expect,
                                ok: false,
                                detail: "the action panicked".into(),
                                skipped: false,
                            })
                        })
                        .collect()
                })
            });
            for r in results {
                if !opts.json {
                    println!(
                        "  {} {} — expected {:?}: {}",
                        if r.skipped {
                            "⏭️ "
                        } else if r.ok {
                            "✅"
                        } else {
                            "❌"
                        },
                        r.name,
                        r.expected,
                        r.detail
                    );
                }
                actions.push(r);
            }
        }
        if let Some(p) = &s.policy {
            env.delete(p)?;
            env.settle().await?;
        }
        let passed = actions.iter().all(|a| a.ok);
        results.push(TestResult {
            test: s.name.into(),
            // Every action skipped: the test did not run.
            skipped: actions.iter().all(|a| a.skipped),
            passed,
            actions,
        });
    }
    // Final check: no drops other than the ones the scenarios caused on purpose.
    let mut unexpected = Vec::new();
    for ((node, reason, dir), packets) in env.drop_counters() {
        let before = baseline
            .get(&(node.clone(), reason, dir))
            .copied()
            .unwrap_or(0);
        if !EXPECTED_DROPS.contains(&reason) && packets > before {
            unexpected.push(format!(
                "{node}: {} packets dropped with reason {reason} ({})",
                packets - before,
                crate::datapath::maps::reason_name(reason)
            ));
        }
    }
    let drops_ok = unexpected.is_empty();
    if !opts.json {
        println!("[=] Test [no-unexpected-packet-drops]");
        println!(
            "  {} {}",
            if drops_ok { "✅" } else { "❌" },
            if drops_ok {
                "no unexpected drops".to_string()
            } else {
                unexpected.join("; ")
            }
        );
    }
    results.push(TestResult {
        test: "no-unexpected-packet-drops".into(),
        skipped: false,
        passed: drops_ok,
        actions: vec![ActionResult {
            name: "drop counters".into(),
            expected: Expect::Success,
            ok: drops_ok,
            detail: unexpected.join("; "),
            skipped: false,
        }],
    });

    if !opts.keep {
        env.cleanup().await;
    }
    let run: Vec<&TestResult> = results.iter().filter(|r| !r.skipped).collect();
    let failed = run.iter().filter(|r| !r.passed).count();
    let actions: usize = run
        .iter()
        .map(|r| r.actions.iter().filter(|a| !a.skipped).count())
        .sum();
    let skipped_actions: usize = run
        .iter()
        .map(|r| r.actions.iter().filter(|a| a.skipped).count())
        .sum();
    let also_skipped = if skipped_actions > 0 {
        format!(" ({skipped_actions} actions skipped)")
    } else {
        String::new()
    };
    let failed_actions: usize = run
        .iter()
        .map(|r| r.actions.iter().filter(|a| !a.ok).count())
        .sum();
    let skipped = results.len() - run.len();
    if let Some(path) = &opts.junit_file {
        std::fs::write(path, junit(&results))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if failed == 0 {
        println!(
            "\n✅ All {} tests ({} actions) successful, {} tests skipped{also_skipped}.",
            run.len(),
            actions,
            skipped
        );
    } else {
        println!(
            "\n❌ {failed}/{} tests failed ({failed_actions}/{actions} actions), {skipped} tests skipped{also_skipped}",
            run.len()
        );
        for r in run.iter().filter(|r| !r.passed) {
            println!("  ❌ {}", r.test);
        }
        println!("\nDrops by reason on each node (cilium bpf metrics list):");
        for line in env.explain() {
            println!("  {line}");
        }
    }
    Ok((if failed == 0 { 0 } else { 1 }, results))
}

/// Waits until every agent applied the store's current revision.
pub async fn settle(env: &Env) -> Result<()> {
    let store = env.cluster.store()?;
    let start = Instant::now();
    loop {
        let want = store.generation();
        let mut done = true;
        for n in &env.cluster.nodes {
            done &= Client::new(&n.socket)
                .status()
                .await
                .map(|s| s.policy_revision >= want)
                .unwrap_or(false);
        }
        if done {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("agents did not apply store revision {want} within 10s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn cleanup(env: &Env) {
    let mut yaml = service_yaml("echo-same-node", SVC_SAME, &env.echo_same, Some(NODEPORT));
    if let Some(o) = &env.echo_other {
        yaml += &service_yaml("echo-other-node", SVC_OTHER, o, Some(NODEPORT_OTHER));
    }
    if let Ok(store) = env.cluster.store() {
        let _ = store.delete(&yaml);
    }
    for p in ["ct-client", "ct-client2", "ct-echo-same", "ct-echo-other"] {
        if env.cluster.pod(p).is_ok() {
            let _ = local::rm(&env.cluster.name, p).await;
        }
    }
}

fn junit(results: &[TestResult]) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let failures = results.iter().filter(|r| !r.skipped && !r.passed).count();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"connectivity test\" tests=\"{}\" failures=\"{failures}\">\n",
        results.len()
    );
    for r in results {
        x += &format!(
            "  <testcase name=\"{}\" classname=\"connectivity test\">",
            esc(&r.test)
        );
        if r.skipped {
            x += "<skipped/>";
        } else if !r.passed {
            let why: Vec<String> = r
                .actions
                .iter()
                .filter(|a| !a.ok)
                .map(|a| format!("{}: {}", a.name, a.detail))
                .collect();
            x += &format!("<failure message=\"{}\"/>", esc(&why.join("; ")));
        }
        x += "</testcase>\n";
    }
    x + "</testsuite>\n</testsuites>\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A platform with a datapath that lets everything through and drops nothing: the
    /// runner layer alone, with no local cluster behind it.
    struct OpenDatapath {
        w: Workloads,
        log: Mutex<Vec<String>>,
        policies: Mutex<Vec<String>>,
    }

    impl Platform for OpenDatapath {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn workloads(&self) -> &Workloads {
            &self.w
        }
        fn http(&self, _: &From, target: &str, _: Duration) -> Result<(bool, String)> {
            self.log.lock().unwrap().push(format!("http {target}"));
            Ok((true, "HTTP 200".into()))
        }
        fn ping(&self, _: &From, ip: &str) -> Result<(bool, String)> {
            self.log.lock().unwrap().push(format!("ping {ip}"));
            Ok((true, "reply".into()))
        }
        fn apply(&self, yaml: &str) -> Result<()> {
            self.log.lock().unwrap().push("apply".into());
            self.policies.lock().unwrap().push(yaml.into());
            Ok(())
        }
        fn delete(&self, yaml: &str) -> Result<()> {
            self.log.lock().unwrap().push("delete".into());
            let mut p = self.policies.lock().unwrap();
            let i = p
                .iter()
                .position(|x| x == yaml)
                .expect("deletes what it applied");
            p.remove(i);
            Ok(())
        }
        async fn settle(&self) -> Result<()> {
            self.log.lock().unwrap().push("settle".into());
            Ok(())
        }
        fn drop_counters(&self) -> std::collections::BTreeMap<(String, u8, u8), u64> {
            Default::default()
        }
        fn explain(&self) -> Vec<String> {
            vec![]
        }
        async fn cleanup(&self) {}
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_runner_layer_fails_a_datapath_that_enforces_nothing() {
        let p = OpenDatapath {
            w: Workloads {
                echo_same: "10.0.0.2".into(),
                echo_other: Some("10.0.1.2".into()),
                client: "10.0.0.3".into(),
                client2: "10.0.0.4".into(),
                node_ips: vec!["192.0.2.11".into(), "192.0.2.12".into()],
                external_ip: "203.0.113.1".into(),
                svc_same: SVC_SAME.into(),
                svc_other: SVC_OTHER.into(),
                nodeport_same: NODEPORT,
                nodeport_other: NODEPORT_OTHER,
                world_ip: OUTSIDE.into(),
                world_other_ip: OUTSIDE_CIDR.into(),
                world_port: ECHO_PORT,
                world_cidr: "203.0.113.0/24".into(),
            },
            log: Mutex::new(vec![]),
            policies: Mutex::new(vec![]),
        };
        let opts = Options {
            cluster: "fake".into(),
            tests: vec![],
            single_node: false,
            connect_timeout: Duration::from_millis(1),
            request_timeout: Duration::from_millis(1),
            json: true,
            junit_file: None,
            keep: false,
            concurrency: 4,
        };
        let rc = run_on(&p, &opts, &[], &[]).await.unwrap();
        assert_eq!(rc, 1, "expected drops did not happen: the suite fails");
        assert!(
            p.policies.lock().unwrap().is_empty(),
            "every policy removed"
        );
        let log = p.log.lock().unwrap().clone();
        // Each policy: applied and settled before its actions, removed and settled after.
        let applies: Vec<usize> = (0..log.len()).filter(|i| log[*i] == "apply").collect();
        assert_eq!(applies.len(), 14, "one policy per policy scenario: {log:?}");
        for i in applies {
            assert_eq!(log[i + 1], "settle");
            assert!(log[i + 2].starts_with("http") || log[i + 2].starts_with("ping"));
        }
        assert!(
            log.contains(&"http 10.0.1.2:8080".to_string()),
            "cross-node actions run"
        );
        assert!(
            log.contains(&"http 203.0.113.1:31001".to_string()),
            "{log:?}"
        );
        assert!(
            log.contains(&"ping 192.0.2.12".to_string()),
            "pod-to-remote-host"
        );
    }

    #[test]
    fn test_filters_follow_cilium_cli() {
        let f = vec![regex::Regex::new("ingress").unwrap()];
        let x = vec![regex::Regex::new("deny").unwrap()];
        assert!(selected("echo-ingress-from-other-client", &f, &x));
        assert!(!selected("all-ingress-deny", &f, &x), "excluded by !deny");
        assert!(!selected("to-cidr-external", &f, &x));
        assert!(selected("anything", &[], &[]));
    }

    #[test]
    fn probe_verdicts() {
        assert!(verdict(r#"{"ok":true,"response":"HTTP/1.1 200 OK\r\n"}"#).0);
        let (ok, why) = verdict(r#"{"ok":false,"error":"timeout"}"#);
        assert!(!ok);
        assert_eq!(why, "timeout");
        assert!(!verdict("garbage").0);
    }

    #[test]
    fn junit_marks_failures_and_skips() {
        let r = vec![
            TestResult {
                test: "a".into(),
                skipped: false,
                passed: true,
                actions: vec![],
            },
            TestResult {
                test: "b".into(),
                skipped: true,
                passed: true,
                actions: vec![],
            },
            TestResult {
                test: "c".into(),
                skipped: false,
                passed: false,
                actions: vec![ActionResult {
                    name: "x".into(),
                    expected: Expect::Drop,
                    ok: false,
                    detail: "HTTP 200".into(),
                    skipped: false,
                }],
            },
        ];
        let x = junit(&r);
        assert!(x.contains("failures=\"1\""));
        assert!(x.contains("<skipped/>"));
        assert!(x.contains("x: HTTP 200"));
    }
}
