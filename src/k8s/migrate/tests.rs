//! The migration against the API double playing a cluster: nodes, the agent DaemonSet
//! whose deleted pods come back Ready (and whose agents then report on their CiliumNode
//! what their configuration, CiliumNodeConfigs included, makes them run), kube-proxy pods
//! following the DaemonSet's nodeAffinity, probe pods that succeed or fail as a test
//! chooses, and an API server that can go away. Every write is asserted in order.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::Affinity, apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement,
};
use kube::core::{Expression, Selector, SelectorExt};
use serde_json::{json, Value};

use super::{model::*, *};
use crate::{
    agent::node_config,
    k8s::{
        crds::CiliumNodeConfig,
        fake_api::{FakeApi, Recorded, Store},
    },
};

const NS: &str = "kube-system";
const IMAGE: &str = "localhost/cilium:test";
const CM_PATH: &str = "/api/v1/namespaces/kube-system/configmaps";
const PODS: &str = "/api/v1/namespaces/kube-system/pods";
const KP_PATH: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy";
const CNC_PATH: &str = "/apis/cilium.io/v2/namespaces/kube-system/ciliumnodeconfigs";

/// What the simulated cluster does differently, per node.
#[derive(Default)]
struct Knobs {
    /// Probe pods on these nodes fail.
    probe_fails: BTreeSet<String>,
    /// Agents on these nodes publish nothing (an agent without the report).
    silent: BTreeSet<String>,
    /// The API server goes away once this node's state annotation is `done`.
    down_after_done: Option<String>,
    /// Agent pods created so far (for their names).
    generation: u64,
}

struct Sim {
    api: FakeApi,
    knobs: Arc<Mutex<Knobs>>,
}

fn ready_pod(name: &str, node: &str, labels: Value, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": image}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": "main", "image": image, "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}},
            }],
        },
    })
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
}

fn node_names(st: &Store<'_>) -> Vec<String> {
    st.list("", "nodes")
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Whether kube-proxy's required node affinity admits a node with `labels`.
fn admits(affinity: Option<&Affinity>, labels: &BTreeMap<String, String>) -> bool {
    let Some(req) = affinity
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    req.node_selector_terms.iter().any(|t| {
        t.match_expressions.iter().flatten().all(|r| {
            let e: Expression = LabelSelectorRequirement {
                key: r.key.clone(),
                operator: r.operator.clone(),
                values: r.values.clone(),
            }
            .try_into()
            .expect("a valid requirement");
            Selector::from(e).matches(labels)
        })
    })
}

/// The DaemonSet controller for kube-proxy: a Ready pod on each admitted node, none
/// elsewhere.
fn reconcile_kube_proxy(st: &mut Store<'_>) {
    let ds = st.get("apps", "daemonsets", Some(NS), "kube-proxy");
    let affinity: Option<Affinity> = ds.as_ref().and_then(|d| {
        serde_json::from_value(d["spec"]["template"]["spec"]["affinity"].clone()).ok()
    });
    for node in node_names(st) {
        let labels = labels_of(&st.get("", "nodes", None, &node).expect("node"));
        let name = format!("kube-proxy-{node}");
        let want = ds.is_some() && admits(affinity.as_ref(), &labels);
        let has = st.get("", "pods", Some(NS), &name).is_some();
        if want && !has {
            st.put(
                "",
                "pods",
                ready_pod(
                    &name,
                    &node,
                    json!({"k8s-app": "kube-proxy"}),
                    "kube-proxy:v1.33",
                ),
            );
        } else if !want && has {
            st.remove("", "pods", Some(NS), &name);
        }
    }
}

/// What a (re)started agent publishes on its CiliumNode: kube-proxy replacement from
/// cilium-config and the CiliumNodeConfigs selecting its node (the agent's own rule),
/// KUBE-* chains removed when it is active and kube-proxy is gone from the node.
fn publish_report(st: &mut Store<'_>, node: &str) {
    let labels = labels_of(&st.get("", "nodes", None, node).expect("node"));
    let configs: Vec<CiliumNodeConfig> = st
        .list("cilium.io", "ciliumnodeconfigs")
        .into_iter()
        .map(|c| serde_json::from_value(c).expect("a CiliumNodeConfig"))
        .collect();
    let (_, overrides) = node_config::overrides(&labels, &configs);
    let global = st
        .get("", "configmaps", Some(NS), CILIUM_CONFIG)
        .and_then(|c| c["data"][KPR_KEY].as_str().map(str::to_string));
    let kpr = overrides.get(KPR_KEY).cloned().or(global).as_deref() == Some("true");
    let kube_proxy_here = st
        .get("", "pods", Some(NS), &format!("kube-proxy-{node}"))
        .is_some();
    let chains = if kpr && !kube_proxy_here { 0 } else { 14 };
    let mut cn = st
        .get("cilium.io", "ciliumnodes", None, node)
        .expect("CiliumNode");
    cn["metadata"]["annotations"] = json!({
        agent_report::KUBE_PROXY_REPLACEMENT: kpr.to_string(),
        agent_report::SERVICES: "2",
        agent_report::KUBE_PROXY_CHAINS: chains.to_string(),
    });
    st.put("cilium.io", "ciliumnodes", cn);
}

fn react(r: &Recorded, body: &Value, st: &mut Store<'_>, knobs: &Mutex<Knobs>) {
    let mut k = knobs.lock().unwrap();
    match (r.method.as_str(), r.resource.as_str()) {
        // The agent DaemonSet recreates a deleted pod; the new agent reports.
        ("DELETE", "pods") if body["metadata"]["labels"]["k8s-app"] == "cilium" => {
            let node = body["spec"]["nodeName"]
                .as_str()
                .expect("nodeName")
                .to_string();
            k.generation += 1;
            let name = format!("cilium-{node}-{}", k.generation);
            st.put(
                "",
                "pods",
                ready_pod(&name, &node, json!({"k8s-app": "cilium"}), IMAGE),
            );
            if !k.silent.contains(&node) {
                publish_report(st, &node);
            }
        }
        // The kubelet runs a probe pod to completion.
        ("POST", "pods") => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let node = body["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut pod = st.get("", "pods", Some(NS), &name).expect("created");
            pod["status"] = if k.probe_fails.contains(&node) {
                json!({"phase": "Failed", "containerStatuses": [{
                    "name": "probe", "image": IMAGE, "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "message": "{\"ok\":false,\"error\":\"timeout\"}"}},
                }]})
            } else {
                json!({"phase": "Succeeded"})
            };
            st.put("", "pods", pod);
        }
        ("PATCH", "nodes") | ("PATCH", "daemonsets") | ("DELETE", "daemonsets") => {
            reconcile_kube_proxy(st);
            let done = r.body["metadata"]["annotations"][STATE_ANNOTATION] == "done";
            if done && k.down_after_done.as_deref() == r.name.as_deref() {
                st.set_unavailable(true);
            }
        }
        _ => {}
    }
}

impl Sim {
    /// A healthy cluster of `n` nodes with Cilium (kube-proxy replacement off) and
    /// kube-proxy on every node.
    async fn start(n: usize) -> Sim {
        let api = FakeApi::start().await;
        let nodes: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        for node in &nodes {
            api.insert(
                "",
                "nodes",
                json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
                    "spec": {},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]},
                }),
            );
            api.insert(
                "",
                "pods",
                ready_pod(
                    &format!("cilium-{node}"),
                    node,
                    json!({"k8s-app": "cilium"}),
                    IMAGE,
                ),
            );
            api.insert(
                "",
                "pods",
                ready_pod(
                    &format!("kube-proxy-{node}"),
                    node,
                    json!({"k8s-app": "kube-proxy"}),
                    "kube-proxy:v1.33",
                ),
            );
            api.insert(
                "cilium.io",
                "ciliumnodes",
                json!({
                    "apiVersion": "cilium.io/v2", "kind": "CiliumNode",
                    "metadata": {"name": node, "annotations": {
                        agent_report::KUBE_PROXY_REPLACEMENT: "false",
                        agent_report::SERVICES: "2",
                        agent_report::KUBE_PROXY_CHAINS: "14",
                    }},
                    "spec": {},
                }),
            );
        }
        let n = n as i64;
        api.insert("apps", "daemonsets", json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "cilium", "namespace": NS, "generation": 1},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "cilium"}},
                "template": {"metadata": {"labels": {"k8s-app": "cilium"}}, "spec": {"containers": [
                    {"name": "cilium-agent", "image": IMAGE}
                ]}},
            },
            "status": {
                "desiredNumberScheduled": n, "currentNumberScheduled": n, "numberMisscheduled": 0,
                "numberReady": n, "numberAvailable": n, "updatedNumberScheduled": n,
                "observedGeneration": 1,
            },
        }));
        api.insert("apps", "deployments", json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "cilium-operator", "namespace": NS, "generation": 1},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"io.cilium/app": "operator"}},
                "template": {"spec": {"containers": [{"name": "cilium-operator", "image": IMAGE}]}},
            },
            "status": {"readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1},
        }));
        api.insert(
            "apps",
            "daemonsets",
            json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "kube-proxy", "namespace": NS, "generation": 1},
                "spec": {
                    "selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                    "template": {"metadata": {"labels": {"k8s-app": "kube-proxy"}}, "spec": {
                        "containers": [{"name": "kube-proxy", "image": "kube-proxy:v1.33"}],
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                    }},
                },
            }),
        );
        api.insert("", "configmaps", json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CILIUM_CONFIG, "namespace": NS},
            "data": {KPR_KEY: "false", "k8s-service-host": "172.18.0.2", "k8s-service-port": "6443"},
        }));
        api.insert(
            "",
            "configmaps",
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kube-proxy", "namespace": NS},
                "data": {"config.conf": "mode: iptables"},
            }),
        );
        api.insert("", "services", json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
        }));
        api.insert("", "endpoints", json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "172.18.0.2"}], "ports": [{"name": "https", "port": 6443}]}],
        }));
        let knobs = Arc::new(Mutex::new(Knobs::default()));
        let k = knobs.clone();
        api.react(Box::new(move |r, body, st| react(r, body, st, &k)));
        Sim { api, knobs }
    }

    fn migrator(&self, action: Action, nodes: Selection) -> Migrator {
        let opts = Options {
            poll: Duration::from_millis(5),
            timeout: Duration::from_secs(2),
            ..Options::new(action, nodes)
        };
        Migrator::new(self.api.client(), opts)
    }

    fn node(&self, name: &str) -> Value {
        self.api.get("", "nodes", None, name).expect("node")
    }

    fn kube_proxy_nodes(&self) -> Vec<String> {
        (1..=3)
            .map(|i| format!("node-{i}"))
            .filter(|n| {
                self.api
                    .get("", "pods", Some(NS), &format!("kube-proxy-{n}"))
                    .is_some()
            })
            .collect()
    }

    fn record(&self) -> Option<Record> {
        self.api
            .get("", "configmaps", Some(NS), STATUS_CONFIGMAP)
            .map(|cm| {
                Record::from_data(&serde_json::from_value(cm["data"].clone()).unwrap()).unwrap()
            })
    }
}

fn plan_of(p: Prepared) -> Plan {
    match p {
        Prepared::Plan(p) => *p,
        Prepared::Nothing(why) => panic!("expected a plan, got: {why}"),
    }
}

/// Quiet progress for the tests.
struct Quiet;
impl Report for Quiet {
    fn line(&self, _: &str) {}
    fn node_step(&self, _: &str, _: usize, _: &str) {}
    fn node_end(&self, _: &str, _: bool, _: &str) {}
}

fn writes(reqs: &[Recorded]) -> Vec<Recorded> {
    reqs.iter().filter(|r| r.method != "GET").cloned().collect()
}

fn calls(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn node_path(n: &str) -> String {
    format!("/api/v1/nodes/{n}")
}

/// The writes migrating one node whose agent pod is `agent_pod`.
fn node_writes(node: &str, agent_pod: &str) -> Vec<String> {
    let n = node_path(node);
    vec![
        format!("PATCH {n}"),
        format!("PATCH {n}"),
        format!("PATCH {n}"),
        format!("DELETE {PODS}/{agent_pod}"),
        format!("PATCH {n}"),
        format!("POST {PODS}"),
        format!("DELETE {PODS}/cilium-kpr-probe-{node}"),
        format!("PATCH {n}"),
        format!("PATCH {n}"),
        format!("PATCH {CM_PATH}/{STATUS_CONFIGMAP}"),
    ]
}

#[tokio::test]
async fn a_three_node_migration_goes_node_by_node_with_exactly_these_calls() {
    let sim = Sim::start(3).await;
    let m = sim.migrator(Action::Migrate, Selection::All);
    let plan = plan_of(m.prepare().await.unwrap());
    assert_eq!(plan.todo, ["node-1", "node-2", "node-3"]);
    assert!(plan.finish);
    assert!(writes(&sim.api.take()).is_empty(), "prepare only reads");
    let text = plan.to_string();
    assert!(
        text.contains("node-2: cordon, label, wait for kube-proxy to leave"),
        "{text}"
    );
    assert!(text.contains("10.96.0.1:443 reached from a pod"), "{text}");

    let summary = m.run(&plan, &Quiet).await.unwrap();
    assert!(summary.finished);
    for (node, took) in &summary.nodes {
        println!("per-node migration time against the API double: {node} {took:?}");
    }
    let reqs = sim.api.take();
    let w = writes(&reqs);
    let mut want = vec![
        format!("POST {CM_PATH}"),
        format!("POST {CNC_PATH}"),
        format!("PATCH {KP_PATH}"),
    ];
    for n in ["node-1", "node-2", "node-3"] {
        want.extend(node_writes(n, &format!("cilium-{n}")));
    }
    want.extend([
        format!("PATCH {CM_PATH}/{STATUS_CONFIGMAP}"),
        format!("PATCH {CM_PATH}/{CILIUM_CONFIG}"),
        format!("DELETE {CNC_PATH}/{NODE_CONFIG}"),
        format!("DELETE {KP_PATH}"),
        format!("PATCH {}", node_path("node-1")),
        format!("PATCH {}", node_path("node-2")),
        format!("PATCH {}", node_path("node-3")),
        format!("PATCH {CM_PATH}/{STATUS_CONFIGMAP}"),
    ]);
    assert_eq!(calls(&w), want);

    // Key parts of the bodies.
    assert_eq!(w[0].body["data"]["phase"], "migrating");
    assert_eq!(w[0].body["data"]["plan"], "node-1,node-2,node-3");
    assert_eq!(
        w[1].body["spec"],
        json!({"nodeSelector": {"matchLabels": {MIGRATION_LABEL: "true"}}, "defaults": {KPR_KEY: "true"}})
    );
    assert_eq!(
        w[2].body["spec"]["template"]["spec"]["affinity"],
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": MIGRATION_LABEL, "operator": "NotIn", "values": ["true"]}]}
        ]}}})
    );
    assert!(
        w[2].body["metadata"]["resourceVersion"].is_string(),
        "optimistic concurrency"
    );
    let node1 = &w[3..13];
    assert_eq!(node1[0].body["spec"]["unschedulable"], true);
    assert_eq!(
        node1[0].body["metadata"]["annotations"][STATE_ANNOTATION],
        "cordoned"
    );
    assert_eq!(node1[1].body["metadata"]["labels"][MIGRATION_LABEL], "true");
    assert_eq!(
        node1[1].body["metadata"]["annotations"][STATE_ANNOTATION],
        "labelled"
    );
    assert_eq!(
        node1[2].body["metadata"]["annotations"][STATE_ANNOTATION],
        "kube-proxy-gone"
    );
    assert_eq!(
        node1[4].body["metadata"]["annotations"][STATE_ANNOTATION],
        "agent-restarted"
    );
    let probe = &node1[5].body;
    assert_eq!(probe["spec"]["nodeName"], "node-1");
    assert_eq!(probe["spec"]["hostNetwork"], false);
    assert_eq!(probe["spec"]["restartPolicy"], "Never");
    assert_eq!(probe["spec"]["containers"][0]["image"], IMAGE);
    assert_eq!(
        probe["spec"]["containers"][0]["command"],
        json!(["cilium", "probe", "tcp", "10.96.0.1:443", "--timeout", "3s"])
    );
    assert_eq!(
        node1[7].body["metadata"]["annotations"][STATE_ANNOTATION],
        "verified"
    );
    assert_eq!(
        node1[8].body["metadata"]["annotations"][STATE_ANNOTATION],
        "done"
    );
    assert_eq!(
        node1[8].body["spec"],
        json!({"unschedulable": null}),
        "uncordoned"
    );
    let cfg = w.iter().find(|r| r.path.ends_with(CILIUM_CONFIG)).unwrap();
    assert_eq!(cfg.body, json!({"data": {KPR_KEY: "true"}}));
    let unlabel = &w[w.len() - 2];
    assert_eq!(
        unlabel.body["metadata"],
        json!({"labels": {MIGRATION_LABEL: null}, "annotations": {STATE_ANNOTATION: null}})
    );
    // One node at a time: node-2 is cordoned only after node-1 is uncordoned.
    let first_cordon_2 = w
        .iter()
        .position(|r| r.path == node_path("node-2"))
        .unwrap();
    let done_1 = w
        .iter()
        .position(|r| r.body["metadata"]["annotations"][STATE_ANNOTATION] == "done")
        .unwrap();
    assert!(done_1 < first_cordon_2);

    // The cluster now: no kube-proxy, every agent with kube-proxy replacement, nodes
    // schedulable and unlabelled, cilium-config global, the record says done.
    assert!(sim
        .api
        .get("apps", "daemonsets", Some(NS), "kube-proxy")
        .is_none());
    assert!(sim.kube_proxy_nodes().is_empty());
    assert!(sim
        .api
        .get("cilium.io", "ciliumnodeconfigs", Some(NS), NODE_CONFIG)
        .is_none());
    assert!(
        sim.api
            .get("", "configmaps", Some(NS), "kube-proxy")
            .is_some(),
        "kept unless asked"
    );
    for n in ["node-1", "node-2", "node-3"] {
        let node = sim.node(n);
        assert!(node["spec"]["unschedulable"].is_null(), "{node}");
        assert!(node["metadata"]["labels"][MIGRATION_LABEL].is_null());
        assert!(node["metadata"]["annotations"][STATE_ANNOTATION].is_null());
        let cn = sim.api.get("cilium.io", "ciliumnodes", None, n).unwrap();
        assert_eq!(
            cn["metadata"]["annotations"][agent_report::KUBE_PROXY_REPLACEMENT],
            "true"
        );
    }
    let cfg = sim
        .api
        .get("", "configmaps", Some(NS), CILIUM_CONFIG)
        .unwrap();
    assert_eq!(cfg["data"][KPR_KEY], "true");
    assert_eq!(sim.record().unwrap().phase, Phase::Done);

    // Running again changes nothing and says so.
    for action in [Action::Migrate, Action::Resume] {
        let sel = if action == Action::Migrate {
            Selection::All
        } else {
            Selection::Recorded
        };
        match sim.migrator(action, sel).prepare().await.unwrap() {
            Prepared::Nothing(why) => assert!(why.contains("finished"), "{why}"),
            Prepared::Plan(p) => panic!("a plan after completion: {p}"),
        }
    }
    let e = sim
        .migrator(Action::Rollback, Selection::Recorded)
        .prepare()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("kubeadm init phase addon kube-proxy"), "{e}");
    assert!(writes(&sim.api.take()).is_empty());
}

#[tokio::test]
async fn an_interrupted_migration_resumes_without_redoing_finished_nodes() {
    let sim = Sim::start(3).await;
    sim.knobs.lock().unwrap().down_after_done = Some("node-2".into());
    let m = sim.migrator(Action::Migrate, Selection::All);
    let plan = plan_of(m.prepare().await.unwrap());
    let e = m.run(&plan, &Quiet).await.unwrap_err().to_string();
    assert!(
        e.contains("connection closed") && e.contains("--resume") && e.contains("--rollback"),
        "{e}"
    );
    assert_eq!(
        sim.node("node-2")["metadata"]["annotations"][STATE_ANNOTATION],
        "done"
    );
    // The record was last written after node-1: the nodes' annotations are the authority.
    assert_eq!(sim.record().unwrap().nodes[1].state, NodeState::Pending);

    sim.api.set_unavailable(false);
    sim.api.take();
    let e = sim
        .migrator(Action::Migrate, Selection::All)
        .prepare()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("under way") && e.contains("--resume"), "{e}");
    let m = sim.migrator(Action::Resume, Selection::Recorded);
    let plan = plan_of(m.prepare().await.unwrap());
    assert_eq!(plan.todo, ["node-3"]);
    assert!(plan.finish);
    let summary = m.run(&plan, &Quiet).await.unwrap();
    assert!(summary.finished);
    assert_eq!(summary.nodes.len(), 1);
    let w = writes(&sim.api.take());
    for old in ["node-1", "node-2"] {
        let redone: Vec<&Recorded> = w
            .iter()
            .filter(|r| {
                r.body["spec"]["unschedulable"] == true && r.path == node_path(old)
                    || r.path == format!("{PODS}/cilium-{old}")
                    || r.body["spec"]["nodeName"] == old
            })
            .collect();
        assert!(redone.is_empty(), "{old} was redone: {redone:?}");
    }
    // The node config exists (409), its spec is restored; the affinity is in place.
    let mut want = vec![
        format!("PATCH {CM_PATH}/{STATUS_CONFIGMAP}"),
        format!("POST {CNC_PATH}"),
        format!("PATCH {CNC_PATH}/{NODE_CONFIG}"),
    ];
    want.extend(node_writes("node-3", "cilium-node-3"));
    assert_eq!(calls(&w[..want.len()]), want);
    assert!(sim.kube_proxy_nodes().is_empty());
    assert_eq!(sim.record().unwrap().phase, Phase::Done);
}

#[tokio::test]
async fn a_failed_verification_stops_and_rollback_restores_nodes_in_reverse_order() {
    let sim = Sim::start(3).await;
    sim.knobs
        .lock()
        .unwrap()
        .probe_fails
        .insert("node-2".into());
    let m = sim.migrator(Action::Migrate, Selection::All);
    let plan = plan_of(m.prepare().await.unwrap());
    let e = m.run(&plan, &Quiet).await.unwrap_err().to_string();
    assert!(e.contains("node node-2: verification failed"), "{e}");
    assert!(e.contains("10.96.0.1:443") && e.contains("timeout"), "{e}");
    assert!(
        e.contains("left cordoned") && e.contains("--resume") && e.contains("--rollback"),
        "{e}"
    );
    let n2 = sim.node("node-2");
    assert_eq!(n2["spec"]["unschedulable"], true);
    assert_eq!(
        n2["metadata"]["annotations"][STATE_ANNOTATION],
        "agent-restarted"
    );
    assert!(
        sim.node("node-3")["metadata"]["annotations"].is_null(),
        "node-3 untouched"
    );
    assert!(
        sim.api
            .get("", "pods", Some(NS), "cilium-kpr-probe-node-2")
            .is_none(),
        "probe deleted"
    );
    let rec = sim.record().unwrap();
    assert_eq!(rec.phase, Phase::Failed);
    assert!(
        rec.message.contains("verification failed"),
        "{}",
        rec.message
    );
    assert_eq!(sim.kube_proxy_nodes(), ["node-3"]);

    sim.api.take();
    let m = sim.migrator(Action::Rollback, Selection::Recorded);
    let plan = plan_of(m.prepare().await.unwrap());
    assert_eq!(plan.todo, ["node-2", "node-1"]);
    m.run(&plan, &Quiet).await.unwrap();
    let w = writes(&sim.api.take());
    let mut want = vec![format!("PATCH {CM_PATH}/{STATUS_CONFIGMAP}")];
    // node-1's agent was restarted once by the migration (generation 1), node-2's too (2).
    for (n, pod) in [("node-2", "cilium-node-2-2"), ("node-1", "cilium-node-1-1")] {
        want.extend([
            format!("PATCH {}", node_path(n)),
            format!("DELETE {PODS}/{pod}"),
            format!("PATCH {}", node_path(n)),
            format!("PATCH {CM_PATH}/{STATUS_CONFIGMAP}"),
        ]);
    }
    want.extend([
        format!("DELETE {CNC_PATH}/{NODE_CONFIG}"),
        format!("PATCH {KP_PATH}"),
        format!("DELETE {CM_PATH}/{STATUS_CONFIGMAP}"),
    ]);
    assert_eq!(calls(&w), want);
    assert_eq!(
        w[1].body["metadata"],
        json!({"labels": {MIGRATION_LABEL: null}, "annotations": {STATE_ANNOTATION: "rolling-back"}})
    );
    assert_eq!(
        w[3].body,
        json!({"metadata": {"annotations": {STATE_ANNOTATION: null}}, "spec": {"unschedulable": null}})
    );
    assert!(w[w.len() - 2].body["spec"]["template"]["spec"]["affinity"].is_null());

    assert_eq!(sim.kube_proxy_nodes(), ["node-1", "node-2", "node-3"]);
    for n in ["node-1", "node-2", "node-3"] {
        let node = sim.node(n);
        assert!(node["spec"]["unschedulable"].is_null(), "{node}");
        assert!(node["metadata"]["labels"][MIGRATION_LABEL].is_null());
        assert!(node["metadata"]["annotations"][STATE_ANNOTATION].is_null());
        let cn = sim.api.get("cilium.io", "ciliumnodes", None, n).unwrap();
        assert_eq!(
            cn["metadata"]["annotations"][agent_report::KUBE_PROXY_REPLACEMENT],
            "false"
        );
    }
    let kp = sim
        .api
        .get("apps", "daemonsets", Some(NS), "kube-proxy")
        .unwrap();
    assert!(kp["spec"]["template"]["spec"]["affinity"].is_null());
    assert_eq!(
        kp["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/os"],
        "linux"
    );
    assert!(sim.record().is_none());
    assert!(sim
        .api
        .get("cilium.io", "ciliumnodeconfigs", Some(NS), NODE_CONFIG)
        .is_none());
}

/// Prepares a migration of every node and returns the refusal.
async fn refusal(sim: &Sim) -> String {
    let e = sim
        .migrator(Action::Migrate, Selection::All)
        .prepare()
        .await
        .unwrap_err()
        .to_string();
    let w = writes(&sim.api.take());
    assert!(w.is_empty(), "a refusal wrote: {:?}", calls(&w));
    e
}

#[tokio::test]
async fn preflight_refuses_with_the_reason_and_writes_nothing() {
    // k8s-service-host unset: say so, and how to fix it with the API server's address.
    let sim = Sim::start(3).await;
    let mut cfg = sim
        .api
        .get("", "configmaps", Some(NS), CILIUM_CONFIG)
        .unwrap();
    cfg["data"] = json!({KPR_KEY: "false"});
    sim.api.insert("", "configmaps", cfg);
    let e = refusal(&sim).await;
    assert!(
        e.contains("k8s-service-host and k8s-service-port not set"),
        "{e}"
    );
    assert!(
        e.contains("cilium upgrade --set k8sServiceHost=172.18.0.2 --set k8sServicePort=6443"),
        "{e}"
    );
    assert!(e.contains("edit configmap cilium-config"), "{e}");

    // Cilium not healthy.
    let sim = Sim::start(3).await;
    let mut ds = sim
        .api
        .get("apps", "daemonsets", Some(NS), "cilium")
        .unwrap();
    ds["status"]["numberReady"] = json!(2);
    sim.api.insert("apps", "daemonsets", ds);
    let e = refusal(&sim).await;
    assert!(
        e.contains("Cilium is not healthy")
            && e.contains("1 pods of DaemonSet cilium are not ready"),
        "{e}"
    );

    // kube-proxy DaemonSet missing (and kube-proxy replacement not on).
    let sim = Sim::start(3).await;
    sim.api.remove("apps", "daemonsets", Some(NS), "kube-proxy");
    let e = refusal(&sim).await;
    assert!(
        e.contains("DaemonSet kube-system/kube-proxy not found") && e.contains("--kube-proxy-name"),
        "{e}"
    );

    // Agents that do not report kube-proxy replacement, a node that is not Ready, an
    // unknown node: every reason at once.
    let sim = Sim::start(3).await;
    let mut cn = sim
        .api
        .get("cilium.io", "ciliumnodes", None, "node-1")
        .unwrap();
    cn["metadata"]["annotations"] = json!({});
    sim.api.insert("cilium.io", "ciliumnodes", cn);
    let mut n3 = sim.node("node-3");
    n3["status"]["conditions"][0]["status"] = json!("False");
    sim.api.insert("", "nodes", n3);
    let e = sim
        .migrator(
            Action::Migrate,
            Selection::Names(vec!["node-1".into(), "node-3".into(), "node-9".into()]),
        )
        .prepare()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such node: node-9"), "{e}");
    assert!(e.contains("nodes not Ready: node-3"), "{e}");
    assert!(
        e.contains("the agent on node node-1 does not report kube-proxy replacement"),
        "{e}"
    );
    assert!(writes(&sim.api.take()).is_empty());

    // kube-proxy already gone with kube-proxy replacement on: nothing to do.
    let sim = Sim::start(3).await;
    sim.api.remove("apps", "daemonsets", Some(NS), "kube-proxy");
    let mut cfg = sim
        .api
        .get("", "configmaps", Some(NS), CILIUM_CONFIG)
        .unwrap();
    cfg["data"][KPR_KEY] = json!("true");
    sim.api.insert("", "configmaps", cfg);
    match sim
        .migrator(Action::Migrate, Selection::All)
        .prepare()
        .await
        .unwrap()
    {
        Prepared::Nothing(why) => assert!(why.contains("already runs without kube-proxy"), "{why}"),
        Prepared::Plan(p) => panic!("{p}"),
    }
    // Nothing to resume or roll back.
    let e = sim
        .migrator(Action::Resume, Selection::Recorded)
        .prepare()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no migration to resume") && e.contains("--all"),
        "{e}"
    );
    assert!(writes(&sim.api.take()).is_empty());
}

#[tokio::test]
async fn a_dry_run_prints_the_plan_and_writes_nothing() {
    let sim = Sim::start(3).await;
    let m = sim.migrator(Action::Migrate, Selection::Names(vec!["node-2".into()]));
    let plan = plan_of(m.prepare().await.unwrap());
    let text = plan.to_string();
    assert!(text.contains("Migration of 1 nodes"), "{text}");
    assert!(text.contains("node-2: cordon"), "{text}");
    assert!(
        text.contains("2 nodes still run kube-proxy (node-1, node-3)"),
        "{text}"
    );
    assert!(!text.contains("finish:"), "{text}");
    let reqs = sim.api.take();
    assert!(!reqs.is_empty());
    assert!(writes(&reqs).is_empty(), "{:?}", calls(&writes(&reqs)));
}

#[tokio::test]
async fn a_partial_migration_keeps_kube_proxy_until_every_node_is_done() {
    let sim = Sim::start(3).await;
    let m = sim.migrator(Action::Migrate, Selection::Names(vec!["node-2".into()]));
    let plan = plan_of(m.prepare().await.unwrap());
    let s = m.run(&plan, &Quiet).await.unwrap();
    assert!(!s.finished);
    assert_eq!(s.remaining, ["node-1", "node-3"]);
    assert_eq!(sim.record().unwrap().phase, Phase::Partial);
    assert_eq!(sim.kube_proxy_nodes(), ["node-1", "node-3"]);
    match sim
        .migrator(Action::Resume, Selection::Recorded)
        .prepare()
        .await
        .unwrap()
    {
        Prepared::Nothing(why) => assert!(why.contains("Nothing to resume"), "{why}"),
        Prepared::Plan(p) => panic!("{p}"),
    }
    // Two at a time for the rest.
    let mut m = sim.migrator(Action::Migrate, Selection::All);
    m.opts.max_unavailable = 2;
    let plan = plan_of(m.prepare().await.unwrap());
    assert_eq!(plan.todo, ["node-1", "node-3"]);
    let s = m.run(&plan, &Quiet).await.unwrap();
    assert!(s.finished);
    assert_eq!(sim.record().unwrap().phase, Phase::Done);
    assert!(sim
        .api
        .get("apps", "daemonsets", Some(NS), "kube-proxy")
        .is_none());
}

#[tokio::test]
async fn an_agent_that_never_reports_fails_verification_with_that_reason() {
    let sim = Sim::start(2).await;
    sim.knobs.lock().unwrap().silent.insert("node-1".into());
    let mut m = sim.migrator(Action::Migrate, Selection::All);
    m.opts.timeout = Duration::from_millis(100);
    let plan = plan_of(m.prepare().await.unwrap());
    let e = m.run(&plan, &Quiet).await.unwrap_err().to_string();
    assert!(
        e.contains("node node-1: verification failed: kube-proxy replacement is not active"),
        "{e}"
    );
    assert!(e.contains("waited 100ms"), "{e}");
}
