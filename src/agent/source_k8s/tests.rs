//! The Kubernetes source and the agent's publications against the API double: real
//! kube watchers list and watch it; the snapshot, the generation, the loss of the API
//! server, the CiliumNode and CiliumEndpoint writes, and that the agent's RBAC allows
//! every call made.
use std::{collections::BTreeSet, time::Duration};

use serde_json::{json, Value};

use super::*;
use crate::{
    agent::publish_k8s::{bootstrap_node, BootstrapOptions, NodeSetup},
    k8s::fake_api::{FakeApi, Recorded},
};

const CILIUM: &str = "cilium.io";

/// There were requests, and every one was allowed to the agent's ServiceAccount.
fn assert_agent_may(reqs: &[Recorded]) {
    assert!(!reqs.is_empty());
    crate::k8s::rbac::assert_agent_may(reqs);
}

fn pod(name: &str, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {
            "nodeName": node, "serviceAccountName": "sa-".to_string() + app,
            "containers": [{"name": "c", "image": "x", "ports": [
                {"name": "http", "containerPort": 8080},
                {"containerPort": 9090}
            ]}],
        },
    })
}

fn service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    })
}

fn slice(name: &str, svc: &str, addr: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

fn cnp(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]},
    })
}

fn cilium_node(name: &str, ip: &str, cidr: Option<&str>) -> Value {
    let mut n = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNode",
        "metadata": {"name": name},
        "spec": {"addresses": [{"type": "InternalIP", "ip": ip}]},
    });
    if let Some(c) = cidr {
        n["spec"]["ipam"] = json!({"podCIDRs": [c]});
    }
    n
}

fn cep(name: &str, ip: &str, identity: u32, node_ip: &str) -> Value {
    json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {"name": name, "namespace": "default"},
        "status": {"identity": {"id": identity},
                   "networking": {"addressing": [{"ipv4": ip}], "node": node_ip}},
    })
}

/// A small cluster: node1 (this one) and node2, pods on both, a service, one policy of
/// each kind, a remote endpoint.
fn load(api: &FakeApi) {
    api.insert(
        "",
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "default", "labels": {"team": "a"}}}),
    );
    api.insert("", "pods", pod("web-0", "node1", "web"));
    api.insert("", "pods", pod("client-0", "node1", "client"));
    api.insert("", "pods", pod("db-0", "node2", "db"));
    api.insert("", "services", service("web", "10.96.0.10"));
    api.insert(
        "discovery.k8s.io",
        "endpointslices",
        slice("web-abc", "web", "10.0.1.5"),
    );
    api.insert(
        "networking.k8s.io",
        "networkpolicies",
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "np", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {}}]}]},
        }),
    );
    api.insert(CILIUM, "ciliumnetworkpolicies", cnp("allow-web", "web"));
    api.insert(
        CILIUM,
        "ciliumclusterwidenetworkpolicies",
        json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "ccnp"},
            "spec": {"endpointSelector": {}, "egress": [{"toEntities": ["cluster"]}]},
        }),
    );
    api.insert(
        CILIUM,
        "ciliumnodes",
        cilium_node("node1", "192.0.2.11", Some("10.0.1.0/24")),
    );
    api.insert(
        CILIUM,
        "ciliumnodes",
        cilium_node("node2", "192.0.2.12", Some("10.0.2.0/24")),
    );
    api.insert(
        CILIUM,
        "ciliumendpoints",
        cep("db-0", "10.0.2.7", 30001, "192.0.2.12"),
    );
}

fn options() -> K8sSourceOptions {
    K8sSourceOptions {
        node_name: "node1".into(),
        ipam: IpamMode::ClusterPool,
    }
}

async fn synced(api: &FakeApi) -> K8sSource {
    let src = K8sSource::start(api.client(), options());
    tokio::time::timeout(Duration::from_secs(20), src.wait_synced())
        .await
        .expect("the source syncs");
    src
}

/// Waits until `f` holds (polling), or panics naming `what`.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(snap: &Snapshot) -> (Vec<String>, Vec<String>) {
    (
        snap.pods.iter().map(|p| p.name.clone()).collect(),
        snap.policies
            .iter()
            .map(|p| format!("{}/{}", p.kind, p.name))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_the_snapshot_from_the_api() {
    let api = FakeApi::start().await;
    load(&api);
    let src = synced(&api).await;
    assert!(src.generation() > 0);
    let snap = src.snapshot().expect("snapshot");
    let (pods, policies) = names(&snap);
    // Only this node's pods.
    assert_eq!(pods, ["client-0", "web-0"]);
    let web = &snap.pods[1];
    assert_eq!(web.labels["app"], "web");
    assert_eq!(web.service_account.as_deref(), Some("sa-web"));
    assert_eq!(
        web.named_ports,
        BTreeMap::from([("http".to_string(), "TCP/8080".to_string())])
    );
    assert_eq!(snap.namespaces["default"]["team"], "a");
    assert_eq!(
        policies,
        [
            "CiliumClusterwideNetworkPolicy/ccnp",
            "CiliumNetworkPolicy/allow-web",
            "NetworkPolicy/np"
        ]
    );
    assert!(snap.policies.iter().all(|p| !p.rules.is_empty()));
    assert_eq!(snap.services.len(), 1);
    assert_eq!(snap.services[0].name, "web");
    assert_eq!(snap.slices.len(), 1);
    assert_eq!(snap.slices[0].service_name, "web");
    assert_eq!(
        snap.nodes,
        [
            NodeObject {
                name: "node1".into(),
                ip: "192.0.2.11".parse().unwrap(),
                pod_cidr: "10.0.1.0/24".parse().unwrap()
            },
            NodeObject {
                name: "node2".into(),
                ip: "192.0.2.12".parse().unwrap(),
                pod_cidr: "10.0.2.0/24".parse().unwrap()
            },
        ]
    );
    assert_eq!(
        snap.endpoints,
        BTreeMap::from([(
            "node2".to_string(),
            vec![RemoteEndpoint {
                ip: "10.0.2.7".parse().unwrap(),
                identity: 30001
            }]
        )])
    );
    // Pods are watched with this node's field selector; everything is read-only.
    let reqs = api.requests();
    assert!(reqs.iter().any(|r| r.resource == "pods"
        && r.verb == "watch"
        && r.query.contains("fieldSelector=spec.nodeName%3Dnode1")));
    assert_agent_may(&reqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_the_list_bumps_the_generation() {
    let api = FakeApi::start().await;
    load(&api);
    let src = synced(&api).await;
    let g0 = src.snapshot().expect("snapshot").generation;

    // A policy: "anything changed".
    api.insert(CILIUM, "ciliumnetworkpolicies", cnp("allow-db", "db"));
    until("the new policy bumps the generation", || {
        src.generation() > g0
    })
    .await;
    assert_eq!(src.changes_since(g0).expect("changes"), Changes::All);
    let snap = src.snapshot().expect("snapshot");
    assert!(names(&snap)
        .1
        .contains(&"CiliumNetworkPolicy/allow-db".into()));
    let g1 = snap.generation;

    // A Service and an EndpointSlice: the services fast path names them.
    api.insert("", "services", service("api", "10.96.0.20"));
    api.insert(
        "discovery.k8s.io",
        "endpointslices",
        slice("api-xyz", "api", "10.0.1.9"),
    );
    until("both service events", || src.generation() >= g1 + 2).await;
    let keys = BTreeSet::from([("default".to_string(), "api".to_string())]);
    assert_eq!(
        src.changes_since(g1).expect("changes"),
        Changes::Services {
            generation: src.generation(),
            keys: keys.clone()
        }
    );
    let (svcs, slices) = src.services_for(&keys);
    assert_eq!((svcs.len(), slices.len()), (1, 1));
    assert_eq!(slices[0].service_name, "api");

    // A slice moving to another service touches both.
    let g2 = src.generation();
    api.insert(
        "discovery.k8s.io",
        "endpointslices",
        slice("api-xyz", "web", "10.0.1.9"),
    );
    until("the slice event", || src.generation() > g2).await;
    assert_eq!(
        src.changes_since(g2).expect("changes"),
        Changes::Services {
            generation: src.generation(),
            keys: BTreeSet::from([
                ("default".to_string(), "api".to_string()),
                ("default".to_string(), "web".to_string())
            ])
        }
    );

    // The fast path finds slices through the index of their label: the moved slice
    // is web's now, and a deleted one is nobody's.
    let key = |s: &str| BTreeSet::from([("default".to_string(), s.to_string())]);
    assert_eq!(src.services_for(&key("api")).1.len(), 0);
    let web = src.services_for(&key("web")).1;
    let mut got: Vec<&str> = web.iter().map(|s| s.name.as_str()).collect();
    got.sort();
    assert_eq!(got, ["api-xyz", "web-abc"]);
    let g = src.generation();
    api.remove(
        "discovery.k8s.io",
        "endpointslices",
        Some("default"),
        "api-xyz",
    );
    until("the slice deletion", || src.generation() > g).await;
    assert_eq!(src.services_for(&key("web")).1.len(), 1);

    // A pod of another node changes nothing; a deleted pod of this one does.
    let g3 = src.generation();
    api.insert("", "pods", pod("db-1", "node2", "db"));
    api.remove("", "pods", Some("default"), "client-0");
    until("the pod deletion", || src.generation() > g3).await;
    assert_eq!(names(&src.snapshot().expect("snapshot")).0, ["web-0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_object_is_left_out_and_the_rest_kept() {
    let api = FakeApi::start().await;
    load(&api);
    api.insert(
        CILIUM,
        "ciliumnetworkpolicies",
        json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["nowhere"]}]},
        }),
    );
    let src = synced(&api).await;
    let snap = src
        .snapshot()
        .expect("a bad policy does not fail the snapshot");
    assert_eq!(snap.policies.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_api_keeps_the_last_snapshot_and_resyncs() {
    let api = FakeApi::start().await;
    load(&api);
    let src = synced(&api).await;
    let before = src.snapshot().expect("snapshot");

    api.set_down(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = src
        .snapshot()
        .expect("the last state while the API is away");
    assert_eq!(names(&during), names(&before));
    assert_eq!(during.services.len(), before.services.len());
    assert_eq!(during.nodes, before.nodes);
    assert_eq!(during.endpoints, before.endpoints);

    // Changes while away, and the event log gone: the watchers must list again.
    api.insert("", "pods", pod("web-1", "node1", "web"));
    api.remove(
        CILIUM,
        "ciliumnetworkpolicies",
        Some("default"),
        "allow-web",
    );
    api.compact();
    api.set_down(false);
    until("the relist after the outage", || {
        src.snapshot()
            .map(|s| {
                let (pods, policies) = names(&s);
                pods.contains(&"web-1".to_string())
                    && !policies.contains(&"CiliumNetworkPolicy/allow-web".to_string())
            })
            .unwrap_or(false)
    })
    .await;
    assert!(src.unsynced().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_rebuilds_the_slice_index_and_other_kinds_leave_it() {
    let api = FakeApi::start().await;
    load(&api);
    let src = synced(&api).await;
    let key = |s: &str| BTreeSet::from([("default".to_string(), s.to_string())]);
    assert_eq!(src.services_for(&key("web")).1.len(), 1);

    // While the API is away, web's slice moves to api and the event log is lost:
    // only the relist can tell. Every kind relists, pods and policies included, and
    // must not empty the index.
    api.set_down(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.insert(
        "discovery.k8s.io",
        "endpointslices",
        slice("web-abc", "api", "10.0.1.5"),
    );
    api.compact();
    api.set_down(false);
    until("the relisted slice under api", || {
        src.services_for(&key("api")).1.len() == 1
    })
    .await;
    assert_eq!(src.services_for(&key("web")).1.len(), 0);
    until("every kind listed again", || src.unsynced().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(src.services_for(&key("api")).1.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_synced_means_no_snapshot() {
    let api = FakeApi::start().await;
    api.set_down(true);
    let src = K8sSource::start(api.client(), options());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(src.generation(), 0);
    let err = src.snapshot().expect_err("no snapshot before the lists");
    assert!(err.to_string().contains("not synced"), "{err}");
    api.set_down(false);
    tokio::time::timeout(Duration::from_secs(30), src.wait_synced())
        .await
        .expect("syncs once the API is back");
    assert!(src.snapshot().is_ok());
}

fn k8s_node(name: &str, ip: &str, pod_cidr: Option<&str>) -> Value {
    let mut n = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                 {"type": "Hostname", "address": name}]},
    });
    if let Some(c) = pod_cidr {
        n["spec"]["podCIDR"] = json!(c);
    }
    n
}

fn bootstrap_options(ipam: IpamMode) -> BootstrapOptions {
    BootstrapOptions {
        node_name: "node1".into(),
        node_ip: None,
        ipam,
        poll: Duration::from_millis(50),
    }
}

fn applies<'a>(reqs: &'a [Recorded], path: &str) -> Vec<&'a Recorded> {
    reqs.iter()
        .filter(|r| r.method == "PATCH" && r.path == path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_pool_waits_for_the_operator_cidr() {
    let api = FakeApi::start().await;
    api.insert("", "nodes", k8s_node("node1", "192.0.2.11", None));
    let client = api.client();
    let boot = tokio::spawn(async move {
        bootstrap_node(&client, &bootstrap_options(IpamMode::ClusterPool)).await
    });
    until("the CiliumNode is applied", || {
        api.get(CILIUM, "ciliumnodes", None, "node1").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!boot.is_finished(), "must wait for the operator");
    let cn = api
        .get(CILIUM, "ciliumnodes", None, "node1")
        .expect("CiliumNode");
    assert_eq!(
        cn["spec"]["addresses"],
        json!([{"type": "InternalIP", "ip": "192.0.2.11"}])
    );
    assert!(
        cn["spec"]["ipam"].is_null(),
        "the agent must not own podCIDRs"
    );
    let reqs = api.requests();
    let apply = applies(&reqs, "/apis/cilium.io/v2/ciliumnodes/node1");
    assert_eq!(apply.len(), 1);
    assert!(apply[0].content_type.starts_with("application/apply-patch"));
    assert!(apply[0].query.contains("fieldManager=cilium-agent"));
    assert!(apply[0].query.contains("force=true"));
    assert_eq!(
        apply[0].body,
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "node1"},
               "spec": {"addresses": [{"type": "InternalIP", "ip": "192.0.2.11"}]}})
    );

    // The operator assigns the CIDR (a merge patch, as src/operator/ipam.rs writes it).
    let mut cn = cn;
    cn["spec"]["ipam"] = json!({"podCIDRs": ["10.0.7.0/24"]});
    api.insert(CILIUM, "ciliumnodes", cn);
    let setup = tokio::time::timeout(Duration::from_secs(10), boot)
        .await
        .expect("bootstrap ends")
        .expect("task")
        .expect("bootstrap");
    assert_eq!(
        setup,
        NodeSetup {
            ip: Some("192.0.2.11".parse().unwrap()),
            pod_cidr: "10.0.7.0/24".parse().unwrap()
        }
    );
    assert_agent_may(&api.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_ipam_takes_the_node_pod_cidr() {
    let api = FakeApi::start().await;
    api.insert(
        "",
        "nodes",
        k8s_node("node1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    let mut o = bootstrap_options(IpamMode::Kubernetes);
    o.node_ip = Some("192.0.2.99".parse().unwrap());
    let setup = tokio::time::timeout(Duration::from_secs(10), bootstrap_node(&api.client(), &o))
        .await
        .expect("no wait")
        .expect("bootstrap");
    // --node-ip wins over the Node's InternalIP.
    assert_eq!(
        setup,
        NodeSetup {
            ip: Some("192.0.2.99".parse().unwrap()),
            pod_cidr: "10.244.1.0/24".parse().unwrap()
        }
    );
    let cn = api
        .get(CILIUM, "ciliumnodes", None, "node1")
        .expect("CiliumNode");
    assert_eq!(cn["spec"]["ipam"]["podCIDRs"], json!(["10.244.1.0/24"]));
    assert_eq!(
        cn["spec"]["addresses"],
        json!([{"type": "InternalIP", "ip": "192.0.2.99"}])
    );
    assert_agent_may(&api.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_node_is_an_error_that_names_the_flag() {
    let api = FakeApi::start().await;
    let err = bootstrap_node(&api.client(), &bootstrap_options(IpamMode::Kubernetes))
        .await
        .expect_err("no Node node1");
    assert!(err.to_string().contains("--node-name"), "{err}");
}

fn local(id: u16, ip: &str, identity: u32, pod: &str) -> LocalEndpoint {
    LocalEndpoint {
        id,
        ip: ip.parse().unwrap(),
        identity,
        namespace: Some("default".into()),
        pod: Some(pod.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_node_and_its_endpoints() {
    let api = FakeApi::start().await;
    load(&api);
    // Left from before a restart: an endpoint of this node that no longer exists.
    api.insert(
        CILIUM,
        "ciliumendpoints",
        cep("gone-0", "10.0.1.77", 30002, "192.0.2.11"),
    );
    let src = synced(&api).await;
    api.take();
    src.publish_node(&OwnNode {
        name: "node1".into(),
        ip: Some("192.0.2.11".parse().unwrap()),
        pod_cidr: "10.0.1.0/24".parse().unwrap(),
        router: "10.0.1.1".parse().unwrap(),
    })
    .expect("node");
    src.publish_status(&NodeStatus {
        kube_proxy_replacement: true,
        services: 3,
        kube_proxy_chains: Some(0),
    });
    // web-0 has its identity, client-0 not yet (no CiliumEndpoint for it).
    src.publish_endpoints(
        "node1",
        &[
            local(12, "10.0.1.5", 40001, "web-0"),
            local(13, "10.0.1.6", 0, "client-0"),
        ],
    )
    .expect("endpoints");
    until("the CiliumEndpoint of web-0", || {
        api.get(CILIUM, "ciliumendpoints", Some("default"), "web-0")
            .is_some()
    })
    .await;
    until("the stale CiliumEndpoint is deleted", || {
        api.get(CILIUM, "ciliumendpoints", Some("default"), "gone-0")
            .is_none()
    })
    .await;
    until("the CiliumNode annotations", || {
        api.get(CILIUM, "ciliumnodes", None, "node1")
            .is_some_and(|n| n["metadata"]["annotations"]["cilium.io/services"] == "3")
    })
    .await;
    let cn = api
        .get(CILIUM, "ciliumnodes", None, "node1")
        .expect("CiliumNode");
    assert_eq!(
        cn["metadata"]["annotations"]["cilium.io/kube-proxy-replacement"],
        "true"
    );
    assert_eq!(
        cn["metadata"]["annotations"]["cilium.io/kube-proxy-chains"],
        "0"
    );
    assert_eq!(
        cn["spec"]["addresses"],
        json!([{"type": "InternalIP", "ip": "192.0.2.11"},
               {"type": "CiliumInternalIP", "ip": "10.0.1.1"}])
    );
    // The operator's podCIDRs stay.
    assert_eq!(cn["spec"]["ipam"]["podCIDRs"], json!(["10.0.1.0/24"]));
    assert!(api
        .get(CILIUM, "ciliumendpoints", Some("default"), "client-0")
        .is_none());

    let reqs = api.take();
    let web = applies(
        &reqs,
        "/apis/cilium.io/v2/namespaces/default/ciliumendpoints/web-0",
    );
    assert_eq!(web.len(), 1);
    assert!(web[0].content_type.starts_with("application/apply-patch"));
    assert!(web[0].query.contains("fieldManager=cilium-agent"));
    let uid =
        api.get("", "pods", Some("default"), "web-0").expect("pod")["metadata"]["uid"].clone();
    assert_eq!(
        web[0].body,
        json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
            "metadata": {"name": "web-0", "namespace": "default", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": uid}]},
            "status": {
                "id": 12, "identity": {"id": 40001},
                "networking": {"addressing": [{"ipv4": "10.0.1.5"}], "node": "192.0.2.11"},
                "state": "ready",
                "external-identifiers": {"k8s-namespace": "default", "k8s-pod-name": "web-0",
                                         "pod-name": "default/web-0"},
            },
        })
    );
    assert!(reqs.iter().any(|r| r.method == "DELETE"
        && r.path == "/apis/cilium.io/v2/namespaces/default/ciliumendpoints/gone-0"));
    assert_agent_may(&reqs);

    // client-0 gets its identity, web-0 goes.
    src.publish_endpoints("node1", &[local(13, "10.0.1.6", 40002, "client-0")])
        .expect("endpoints");
    until("web-0's CiliumEndpoint is deleted", || {
        api.get(CILIUM, "ciliumendpoints", Some("default"), "web-0")
            .is_none()
    })
    .await;
    until("client-0's CiliumEndpoint", || {
        api.get(CILIUM, "ciliumendpoints", Some("default"), "client-0")
            .is_some()
    })
    .await;
    let reqs = api.take();
    let delete: Vec<&Recorded> = reqs.iter().filter(|r| r.method == "DELETE").collect();
    assert_eq!(delete.len(), 1);
    assert_eq!(
        delete[0].path,
        "/apis/cilium.io/v2/namespaces/default/ciliumendpoints/web-0"
    );
    assert_agent_may(&reqs);

    // The API away: writes are retried until it is back.
    api.set_down(true);
    src.publish_endpoints("node1", &[]).expect("endpoints");
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.set_down(false);
    until(
        "client-0's CiliumEndpoint is deleted after the outage",
        || {
            api.get(CILIUM, "ciliumendpoints", Some("default"), "client-0")
                .is_none()
        },
    )
    .await;
}

/// Loads the API double with the cluster of the memory figure: 1,000 pods (half on
/// this node), 200 CNPs, 300 Services with an EndpointSlice each.
fn load_large(api: &FakeApi) {
    load(api);
    for i in 0..1000 {
        let node = if i % 2 == 0 { "node1" } else { "node2" };
        api.insert(
            "",
            "pods",
            pod(&format!("p-{i}"), node, &format!("app{}", i % 50)),
        );
    }
    for i in 0..200 {
        api.insert(
            CILIUM,
            "ciliumnetworkpolicies",
            cnp(&format!("cnp-{i}"), &format!("app{}", i % 50)),
        );
    }
    for i in 0..300 {
        api.insert(
            "",
            "services",
            service(
                &format!("svc-{i}"),
                &format!("10.96.{}.{}", i / 200, i % 200 + 1),
            ),
        );
        api.insert(
            "discovery.k8s.io",
            "endpointslices",
            slice(
                &format!("svc-{i}-a"),
                &format!("svc-{i}"),
                &format!("10.0.{}.{}", i / 200 + 1, i % 200 + 2),
            ),
        );
    }
}

const SERVE_ENV: &str = "CILIUM_TEST_SERVE_FAKE_API";

/// Not a test: the API double of [`agent_memory_figure`] in a process of its own (so
/// its memory is not counted), started by that test through this binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore]
async fn serve_fake_api_for_the_memory_figure() {
    if std::env::var_os(SERVE_ENV).is_none() {
        return;
    }
    let api = FakeApi::start().await;
    load_large(&api);
    println!("FAKE_API_URL {}", api.url);
    std::io::Write::flush(&mut std::io::stdout()).expect("stdout");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// The agent's resident memory with 1,000 pods (half on this node), 200 CNPs and 300
/// Services with their EndpointSlices in its stores, the API double in another process.
/// A figure, not a check:
/// `cargo test --lib -- --ignored --nocapture agent_memory_figure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn agent_memory_figure() {
    use std::io::BufRead;
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "--nocapture",
            "agent::source_k8s::tests::serve_fake_api_for_the_memory_figure",
        ])
        .env(SERVE_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the API double");
    let stdout = child.stdout.take().expect("stdout");
    let url = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("FAKE_API_URL ").map(str::to_string))
        .expect("the double's URL");
    let client =
        kube::Client::try_from(kube::Config::new(url.parse().expect("URL"))).expect("client");
    let before = rss_kib();
    let started = std::time::Instant::now();
    let src = K8sSource::start(client, options());
    tokio::time::timeout(Duration::from_secs(60), src.wait_synced())
        .await
        .expect("the source syncs");
    let synced_after = started.elapsed();
    let synced_rss = rss_kib();
    let snap = src.snapshot().expect("snapshot");
    let snapshot_time = started.elapsed() - synced_after;
    let after = rss_kib();
    let t = std::time::Instant::now();
    let _ = src.snapshot().expect("snapshot");
    let warm = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "in the stores: pods of this node {} (of 1000), policies {}, services {}, slices {}",
        snap.pods.len(),
        snap.policies.len(),
        snap.services.len(),
        snap.slices.len()
    );
    println!(
        "VmRSS before {before} KiB; synced {synced_rss} KiB (+{}); after the first snapshot {after} KiB (+{})",
        synced_rss.saturating_sub(before),
        after.saturating_sub(before)
    );
    println!(
        "synced in {synced_after:?}; first snapshot {snapshot_time:?} (parses everything); next {warm:?}"
    );
}

#[test]
fn the_api_server_address_comes_from_the_flag_then_the_config_dir() {
    let flags = |api: Option<&str>, host: Option<&str>, port: Option<u16>| ClientFlags {
        kubeconfig: None,
        api_server: api.map(str::to_string),
        service_host: host.map(str::to_string),
        service_port: port,
    };
    let url = |f: ClientFlags| f.server_override().expect("valid").map(|u| u.to_string());
    assert_eq!(url(flags(None, None, None)), None);
    assert_eq!(
        url(flags(None, Some("10.0.0.1"), Some(6443))).as_deref(),
        Some("https://10.0.0.1:6443/")
    );
    assert_eq!(
        url(flags(None, Some("fd00::1"), None)).as_deref(),
        Some("https://[fd00::1]:443/")
    );
    assert_eq!(
        url(flags(Some("api.example:6443"), Some("10.0.0.1"), None)).as_deref(),
        Some("https://api.example:6443/")
    );
    assert_eq!(
        url(flags(Some("http://127.0.0.1:8001"), None, None)).as_deref(),
        Some("http://127.0.0.1:8001/")
    );
    let err = flags(Some("https://bad host"), None, None)
        .server_override()
        .expect_err("not a URL");
    assert!(err.to_string().contains("--k8s-api-server"), "{err}");
    assert!(flags(Some("x:1"), None, None).wanted());
}

#[tokio::test]
async fn a_bad_kubeconfig_names_the_flag() {
    let f = ClientFlags {
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
        ..Default::default()
    };
    let err = f.config().await.expect_err("no such file");
    assert!(err.to_string().contains("--k8s-kubeconfig-path"), "{err}");
}

#[test]
fn the_slice_index_follows_labels_both_ways() {
    let mut ix = SliceIndex::default();
    let of = |ix: &SliceIndex, svc: &str| -> Vec<String> { ix.of("ns", svc).cloned().collect() };
    assert_eq!(ix.set("ns", "a", Some("web")), None);
    assert_eq!(ix.set("ns", "b", Some("web")), None);
    assert_eq!(ix.set("other", "c", Some("web")), None);
    assert_eq!(of(&ix, "web"), ["a", "b"]);
    // Relabelled: it leaves web and joins api; the old service is returned.
    assert_eq!(ix.set("ns", "a", Some("api")), Some("web".into()));
    assert_eq!(
        (of(&ix, "web"), of(&ix, "api")),
        (vec!["b".into()], vec!["a".into()])
    );
    // Deleted (or unlabelled): gone from both directions, empty sets dropped.
    assert_eq!(ix.set("ns", "b", None), Some("web".into()));
    assert!(of(&ix, "web").is_empty());
    assert!(!ix.slices_of.contains_key(&("ns".into(), "web".into())));
    assert_eq!(ix.set("ns", "zz", None), None);
    assert_eq!(ix.of("other", "web").count(), 1);
}

#[test]
fn a_slice_relist_swaps_the_index_when_done_and_other_kinds_leave_it() {
    let sh = Shared::default();
    let touch =
        |slice: &str, svc: &str| Some(Touch::Slice("ns".into(), slice.into(), Some(svc.into())));
    let slices_of =
        |svc: &str| -> Vec<String> { sh.journal().slices.of("ns", svc).cloned().collect() };
    sh.relisting(SLICE_KIND, None, true);
    sh.relisting(SLICE_KIND, touch("a", "web"), false);
    sh.synced(SLICE_KIND);
    assert_eq!(slices_of("web"), ["a"]);

    // A relist of slices: until its end, lookups see the last complete list, and
    // pods relisting at the same time change nothing of it.
    sh.relisting(SLICE_KIND, None, true);
    sh.relisting(SLICE_KIND, touch("b", "api"), false);
    sh.relisting("Pod", None, true);
    sh.synced("Pod");
    assert_eq!(
        (slices_of("web"), slices_of("api")),
        (vec!["a".into()], vec![])
    );
    sh.synced(SLICE_KIND);
    assert_eq!(
        (slices_of("web"), slices_of("api")),
        (vec![], vec!["b".into()])
    );
}

/// The services fast path's read of one service at 10,000 Services with an EndpointSlice
/// each. A figure, not a check:
/// `cargo test --lib -- --ignored --nocapture services_for_figure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn services_for_figure() {
    let api = FakeApi::start().await;
    load(&api);
    let n = 10_000;
    for i in 0..n {
        let name = format!("svc-{i}");
        api.insert(
            "",
            "services",
            service(&name, &format!("10.96.{}.{}", i / 200, i % 200 + 1)),
        );
        api.insert(
            "discovery.k8s.io",
            "endpointslices",
            slice(&format!("{name}-a"), &name, "10.0.1.9"),
        );
    }
    let src = synced(&api).await;
    let keys = BTreeSet::from([("default".to_string(), "svc-4242".to_string())]);
    let t = std::time::Instant::now();
    let (s, e) = src.services_for(&keys);
    let first = t.elapsed();
    assert_eq!((s.len(), e.len()), (1, 1));
    let rounds = 200;
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(src.services_for(&keys));
    }
    eprintln!(
        "FIGURE services_for one service at {n} services + slices: first {:?}, then {:?} per call",
        first,
        t.elapsed() / rounds
    );
}
