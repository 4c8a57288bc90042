//! The operator's controllers against the API double: the exact requests each makes
//! (method, path, body), what they leave in the store, and that every one of them is
//! allowed by the operator's RBAC rules.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{json, Value};

use super::{
    alloc::ClusterPool,
    gc::{EndpointGc, IdentityGc},
    health::Health,
    ipam::IpamController,
    leader::{Attempt, Elector, LeaseConfig, Lost, LEASE_NAME},
};
use crate::k8s::{
    fake_api::{FakeApi, Recorded},
    rbac::{allows, operator_calls, OPERATOR_RULES},
};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
const NODES: &str = "/apis/cilium.io/v2/ciliumnodes";

fn fast() -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
    }
}

fn elector(api: &FakeApi, me: &str, cfg: LeaseConfig) -> Elector {
    Elector::new(
        Api::<Lease>::namespaced(api.client(), "kube-system"),
        me.into(),
        cfg,
    )
}

fn calls(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn writes(reqs: &[Recorded]) -> Vec<Recorded> {
    reqs.iter().filter(|r| r.method != "GET").cloned().collect()
}

fn lease_path() -> String {
    format!("{LEASES}/{LEASE_NAME}")
}

/// Polls `cond` for up to 5 s (the machine may be busy: no fixed sleeps for positives).
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every request the operator made is allowed by its ClusterRole.
fn assert_rbac(reqs: &[Recorded]) {
    for r in reqs {
        assert!(
            allows(OPERATOR_RULES, &r.group, &r.resource, &r.verb),
            "the operator's RBAC does not allow {} {:?}/{} ({} {})",
            r.verb,
            r.group,
            r.resource,
            r.method,
            r.path
        );
        assert!(
            operator_calls(&r.group, &r.resource, &r.verb),
            "{} {:?}/{} ({} {}) is missing from rbac::OPERATOR_CALLS",
            r.verb,
            r.group,
            r.resource,
            r.method,
            r.path
        );
    }
}

// ------------------------------------------------------------------ leader election

#[tokio::test]
async fn leader_election_creates_then_renews_with_the_resource_version() {
    let api = FakeApi::start().await;
    let mut e = elector(&api, "op-a", LeaseConfig::default());

    assert_eq!(e.try_acquire_or_renew().await.unwrap(), Attempt::Held);
    let reqs = api.take();
    assert_eq!(
        calls(&reqs),
        [format!("GET {}", lease_path()), format!("POST {LEASES}")]
    );
    let body = &reqs[1].body;
    assert_eq!(body["metadata"]["name"], LEASE_NAME);
    assert_eq!(body["spec"]["holderIdentity"], "op-a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    let created_rv = api
        .get(
            "coordination.k8s.io",
            "leases",
            Some("kube-system"),
            LEASE_NAME,
        )
        .and_then(|l| {
            l["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string)
        })
        .expect("lease stored");

    assert_eq!(e.try_acquire_or_renew().await.unwrap(), Attempt::Held);
    let reqs = api.take();
    assert_eq!(
        calls(&reqs),
        [
            format!("GET {}", lease_path()),
            format!("PUT {}", lease_path())
        ]
    );
    let body = &reqs[1].body;
    assert_eq!(
        body["metadata"]["resourceVersion"], created_rv,
        "renewal is an optimistic-concurrency replace"
    );
    assert_eq!(body["spec"]["holderIdentity"], "op-a");
    assert_ne!(body["spec"]["renewTime"], Value::Null);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
}

#[tokio::test]
async fn a_live_lease_of_another_replica_is_not_touched_until_it_expires() {
    let api = FakeApi::start().await;
    api.insert(
        "coordination.k8s.io",
        "leases",
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": "kube-system"},
            "spec": {"holderIdentity": "op-other", "leaseDurationSeconds": 1,
                     "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 2},
        }),
    );
    let mut e = elector(&api, "op-a", fast());
    assert_eq!(
        e.try_acquire_or_renew().await.unwrap(),
        Attempt::Following {
            holder: "op-other".into()
        }
    );
    assert!(writes(&api.take()).is_empty(), "a follower only reads");
    // The record stays unchanged for its duration on our clock: we take over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(e.try_acquire_or_renew().await.unwrap(), Attempt::Held);
    let w = writes(&api.take());
    assert_eq!(calls(&w), [format!("PUT {}", lease_path())]);
    assert_eq!(w[0].body["spec"]["holderIdentity"], "op-a");
    assert_eq!(w[0].body["spec"]["leaseTransitions"], 3);
}

#[tokio::test]
async fn a_conflicting_renewal_steps_the_leader_down() {
    let api = FakeApi::start().await;
    let health = Health::default();
    let mut e = elector(&api, "op-a", fast());
    e.acquire(&health).await;
    assert!(health.is_leader());
    api.take();
    api.fail_next("PUT", &lease_path(), 409, "Conflict");
    let lost = tokio::time::timeout(Duration::from_secs(5), e.hold(&health))
        .await
        .expect("hold returns");
    assert_eq!(lost, Lost::Conflict);
    assert!(!health.is_leader());
    let reqs = api.take();
    assert_eq!(
        calls(&reqs),
        [
            format!("GET {}", lease_path()),
            format!("PUT {}", lease_path())
        ]
    );
}

#[tokio::test]
async fn a_lease_taken_by_another_replica_steps_the_leader_down() {
    let api = FakeApi::start().await;
    let health = Health::default();
    let mut e = elector(&api, "op-a", fast());
    e.acquire(&health).await;
    api.insert(
        "coordination.k8s.io",
        "leases",
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": "kube-system"},
            "spec": {"holderIdentity": "op-b", "leaseDurationSeconds": 15},
        }),
    );
    let lost = tokio::time::timeout(Duration::from_secs(5), e.hold(&health))
        .await
        .expect("hold returns");
    assert_eq!(lost, Lost::Conflict);
}

#[tokio::test]
async fn failing_renewals_step_down_at_the_renew_deadline() {
    let api = FakeApi::start().await;
    let health = Health::default();
    let mut e = elector(&api, "op-a", fast());
    e.acquire(&health).await;
    for _ in 0..20 {
        api.fail_next("GET", &lease_path(), 500, "InternalError");
    }
    let t = std::time::Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(5), e.hold(&health))
        .await
        .expect("hold returns");
    assert!(matches!(lost, Lost::Deadline(_)), "{lost:?}");
    assert!(t.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn only_the_leader_runs_controllers_and_losing_the_lease_stops_them() {
    let api = FakeApi::start().await;
    let health = Health::default();
    let started = Arc::new(AtomicUsize::new(0));
    let ticks = Arc::new(AtomicUsize::new(0));
    // Another replica holds a live lease: nothing runs.
    api.insert(
        "coordination.k8s.io",
        "leases",
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": "kube-system"},
            "spec": {"holderIdentity": "op-b", "leaseDurationSeconds": 600},
        }),
    );
    let task = {
        let (client, health, started, ticks) =
            (api.client(), health.clone(), started.clone(), ticks.clone());
        tokio::spawn(async move {
            let mut e = Elector::new(
                Api::namespaced(client, "kube-system"),
                "op-a".into(),
                fast(),
            );
            super::campaign(&mut e, &health, || {
                started.fetch_add(1, Ordering::SeqCst);
                let ticks = ticks.clone();
                async move {
                    loop {
                        ticks.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        0,
        "a standby runs no controller"
    );
    // The other replica releases the lease: we lead and the controllers start.
    api.insert(
        "coordination.k8s.io",
        "leases",
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": "kube-system"},
            "spec": {"leaseDurationSeconds": 1},
        }),
    );
    wait_until("leading", || health.is_leader()).await;
    wait_until("controllers started", || ticks.load(Ordering::SeqCst) > 0).await;
    assert_eq!(started.load(Ordering::SeqCst), 1);
    // Another replica takes it: the controllers stop.
    api.insert(
        "coordination.k8s.io",
        "leases",
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": "kube-system"},
            "spec": {"holderIdentity": "op-c", "leaseDurationSeconds": 600},
        }),
    );
    wait_until("stepped down", || !health.is_leader()).await;
    let t1 = ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), t1, "controllers stopped");
    assert_eq!(started.load(Ordering::SeqCst), 1);
    task.abort();
    assert_rbac(&api.requests());
}

#[tokio::test]
async fn release_empties_the_holder() {
    let api = FakeApi::start().await;
    let health = Health::default();
    let mut e = elector(&api, "op-a", fast());
    e.acquire(&health).await;
    api.take();
    e.release().await.unwrap();
    let w = writes(&api.take());
    assert_eq!(calls(&w), [format!("PUT {}", lease_path())]);
    assert_eq!(w[0].body["spec"]["holderIdentity"], Value::Null);
    assert_eq!(w[0].body["spec"]["leaseDurationSeconds"], 1);
}

// ------------------------------------------------------------------ IPAM

fn node(name: &str, created: &str, cidrs: &[&str]) -> Value {
    let mut n = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNode",
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {},
    });
    if !cidrs.is_empty() {
        n["spec"]["ipam"] = json!({ "podCIDRs": cidrs });
    }
    n
}

fn pool(cidrs: &[&str], mask: u8) -> ClusterPool {
    let p: Vec<ipnet::Ipv4Net> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
    ClusterPool::new(&p, mask).unwrap()
}

fn pod_cidrs(api: &FakeApi, name: &str) -> Value {
    api.get("cilium.io", "ciliumnodes", None, name)
        .map(|n| n["spec"]["ipam"]["podCIDRs"].clone())
        .unwrap_or(Value::Null)
}

fn operator_error(api: &FakeApi, name: &str) -> Value {
    api.get("cilium.io", "ciliumnodes", None, name)
        .map(|n| n["status"]["ipam"]["operator-status"]["error"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn ipam_writes_a_pod_cidr_to_nodes_without_one_and_nothing_else() {
    let api = FakeApi::start().await;
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("a", "2026-01-01T00:00:00Z", &["10.0.0.0/24"]),
    );
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("b", "2026-01-02T00:00:00Z", &[]),
    );
    let rv_b = api.get("cilium.io", "ciliumnodes", None, "b").unwrap()["metadata"]
        ["resourceVersion"]
        .clone();
    let mut c = IpamController::new(Api::all(api.client()), pool(&["10.0.0.0/16"], 24));
    let r = c.pass().await.unwrap();
    assert_eq!(r.allocated, [("b".to_string(), "10.0.1.0/24".to_string())]);
    let reqs = api.take();
    assert_eq!(
        calls(&reqs),
        [format!("GET {NODES}"), format!("PATCH {NODES}/b")]
    );
    assert_eq!(
        reqs[1].body,
        json!({"metadata": {"resourceVersion": rv_b}, "spec": {"ipam": {"podCIDRs": ["10.0.1.0/24"]}}})
    );
    assert_eq!(pod_cidrs(&api, "b"), json!(["10.0.1.0/24"]));
    // A second pass finds everything in place: reads only.
    let r = c.pass().await.unwrap();
    assert!(r.allocated.is_empty() && r.status.is_empty());
    assert_eq!(calls(&api.take()), [format!("GET {NODES}")]);
}

#[tokio::test]
async fn ipam_releases_a_deleted_nodes_cidr_for_the_next_node() {
    let api = FakeApi::start().await;
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("a", "2026-01-01T00:00:00Z", &[]),
    );
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("b", "2026-01-02T00:00:00Z", &[]),
    );
    let mut c = IpamController::new(Api::all(api.client()), pool(&["10.0.0.0/16"], 24));
    c.pass().await.unwrap();
    assert_eq!(pod_cidrs(&api, "a"), json!(["10.0.0.0/24"]));
    assert_eq!(pod_cidrs(&api, "b"), json!(["10.0.1.0/24"]));
    api.remove("cilium.io", "ciliumnodes", None, "a");
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("c", "2026-01-03T00:00:00Z", &[]),
    );
    api.take();
    let r = c.pass().await.unwrap();
    assert_eq!(r.released, ["a"]);
    assert_eq!(r.allocated, [("c".to_string(), "10.0.0.0/24".to_string())]);
    let w = writes(&api.take());
    assert_eq!(calls(&w), [format!("PATCH {NODES}/c")]);
    assert_eq!(
        w[0].body["spec"]["ipam"]["podCIDRs"],
        json!(["10.0.0.0/24"])
    );
}

#[tokio::test]
async fn ipam_restart_rebuilds_from_nodes_and_reports_conflicts_in_status() {
    let api = FakeApi::start().await;
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("old", "2026-01-01T00:00:00Z", &["10.0.0.0/24"]),
    );
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("dup", "2026-01-02T00:00:00Z", &["10.0.0.0/24"]),
    );
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("new", "2026-01-03T00:00:00Z", &[]),
    );
    // A fresh controller: the "restarted operator".
    let mut c = IpamController::new(Api::all(api.client()), pool(&["10.0.0.0/16"], 24));
    c.pass().await.unwrap();
    let w = writes(&api.take());
    assert_eq!(
        calls(&w),
        [
            format!("PATCH {NODES}/dup/status"),
            format!("PATCH {NODES}/new")
        ],
    );
    let err = w[0].body["status"]["ipam"]["operator-status"]["error"]
        .as_str()
        .expect("error written")
        .to_string();
    assert!(err.contains("10.0.0.0/24") && err.contains("old"), "{err}");
    assert_eq!(
        w[1].body["spec"]["ipam"]["podCIDRs"],
        json!(["10.0.1.0/24"])
    );
    assert_eq!(
        pod_cidrs(&api, "dup"),
        json!(["10.0.0.0/24"]),
        "spec left alone"
    );
    assert_eq!(operator_error(&api, "dup"), json!(err));
    // The admin clears dup's CIDR: it gets a free one and its error goes.
    let mut dup = api.get("cilium.io", "ciliumnodes", None, "dup").unwrap();
    dup["spec"] = json!({});
    api.insert("cilium.io", "ciliumnodes", dup);
    c.pass().await.unwrap();
    let w = writes(&api.take());
    assert_eq!(
        calls(&w),
        [
            format!("PATCH {NODES}/dup"),
            format!("PATCH {NODES}/dup/status")
        ]
    );
    assert_eq!(
        w[1].body,
        json!({"status": {"ipam": {"operator-status": null}}})
    );
    assert_eq!(pod_cidrs(&api, "dup"), json!(["10.0.2.0/24"]));
    assert_eq!(operator_error(&api, "dup"), Value::Null);
}

#[tokio::test]
async fn ipam_exhaustion_is_reported_on_the_node_and_cleared_when_a_cidr_frees() {
    let api = FakeApi::start().await;
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("a", "2026-01-01T00:00:00Z", &[]),
    );
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("b", "2026-01-02T00:00:00Z", &[]),
    );
    let mut c = IpamController::new(Api::all(api.client()), pool(&["10.0.0.0/24"], 24));
    c.pass().await.unwrap();
    let w = writes(&api.take());
    assert_eq!(
        calls(&w),
        [
            format!("PATCH {NODES}/a"),
            format!("PATCH {NODES}/b/status")
        ]
    );
    let err = operator_error(&api, "b");
    let err = err.as_str().expect("error on b");
    assert!(
        err.contains("10.0.0.0/24") && err.contains("/24") && err.contains("mask-size 24"),
        "{err}"
    );
    // The same error is not rewritten every pass.
    c.pass().await.unwrap();
    assert!(writes(&api.take()).is_empty());
    api.remove("cilium.io", "ciliumnodes", None, "a");
    c.pass().await.unwrap();
    assert_eq!(pod_cidrs(&api, "b"), json!(["10.0.0.0/24"]));
    assert_eq!(operator_error(&api, "b"), Value::Null);
}

#[tokio::test]
async fn ipam_a_node_changed_meanwhile_is_retried_not_overwritten() {
    let api = FakeApi::start().await;
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("a", "2026-01-01T00:00:00Z", &[]),
    );
    let mut c = IpamController::new(Api::all(api.client()), pool(&["10.0.0.0/16"], 24));
    api.fail_next("PATCH", &format!("{NODES}/a"), 409, "Conflict");
    let r = c.pass().await.unwrap();
    assert_eq!(r.failed.len(), 1);
    assert!(r.allocated.is_empty());
    assert_eq!(pod_cidrs(&api, "a"), Value::Null);
    let r = c.pass().await.unwrap();
    assert_eq!(r.allocated, [("a".to_string(), "10.0.0.0/24".to_string())]);
}

// ------------------------------------------------------------------ garbage collection

fn identity(id: &str) -> Value {
    json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
        "metadata": {"name": id},
        "security-labels": {"k8s:app": format!("app-{id}")},
    })
}

fn cep(ns: &str, name: &str, identity: i64, owner: Option<(&str, &str)>) -> Value {
    let mut c = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {"name": name, "namespace": ns},
        "status": {"id": 1, "identity": {"id": identity}},
    });
    if let Some((pod, uid)) = owner {
        c["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}]);
    }
    c
}

fn pod(ns: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    })
}

#[tokio::test]
async fn identity_gc_deletes_exactly_the_identity_unused_past_the_grace_period() {
    let api = FakeApi::start().await;
    api.insert("cilium.io", "ciliumidentities", identity("1000"));
    api.insert("cilium.io", "ciliumidentities", identity("2000"));
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("default", "web", 1000, None),
    );
    let stale = api
        .get("cilium.io", "ciliumidentities", None, "2000")
        .unwrap();
    let mut gc = IdentityGc::new(api.client(), Duration::from_millis(300));
    assert!(
        gc.pass().await.unwrap().is_empty(),
        "first sight starts the clock"
    );
    assert!(writes(&api.take()).is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(gc.pass().await.unwrap(), ["2000"]);
    let reqs = api.take();
    assert_eq!(
        calls(&reqs),
        [
            "GET /apis/cilium.io/v2/ciliumidentities".to_string(),
            "GET /apis/cilium.io/v2/ciliumendpoints".to_string(),
            "DELETE /apis/cilium.io/v2/ciliumidentities/2000".to_string(),
        ]
    );
    assert_eq!(
        reqs[2].body["preconditions"],
        json!({"uid": stale["metadata"]["uid"], "resourceVersion": stale["metadata"]["resourceVersion"]})
    );
    assert!(api
        .get("cilium.io", "ciliumidentities", None, "1000")
        .is_some());
    assert!(api
        .get("cilium.io", "ciliumidentities", None, "2000")
        .is_none());
}

#[tokio::test]
async fn cep_gc_deletes_exactly_the_endpoint_whose_pod_is_gone() {
    let api = FakeApi::start().await;
    api.insert("", "pods", pod("default", "web", "uid-web"));
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("default", "web", 1000, Some(("web", "uid-web"))),
    );
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("default", "gone", 1000, Some(("gone", "uid-gone"))),
    );
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("other", "web", 1000, None),
    );
    let gc = EndpointGc::new(api.client());
    let mut deleted = gc.pass().await.unwrap();
    deleted.sort();
    assert_eq!(deleted, ["default/gone", "other/web"]);
    let reqs = api.take();
    let w = writes(&reqs);
    assert_eq!(
        calls(&w),
        [
            "DELETE /apis/cilium.io/v2/namespaces/default/ciliumendpoints/gone".to_string(),
            "DELETE /apis/cilium.io/v2/namespaces/other/ciliumendpoints/web".to_string(),
        ]
    );
    assert!(w[0].body["preconditions"]["uid"].is_string());
    assert!(api
        .get("cilium.io", "ciliumendpoints", Some("default"), "web")
        .is_some());
    // Pods are listed (metadata only), never fetched one by one: the role has no `get`.
    assert!(reqs
        .iter()
        .any(|r| r.method == "GET" && r.path == "/api/v1/pods"));
}

// ------------------------------------------------------------------ RBAC

/// One run through everything the operator does, every request checked against the
/// operator's ClusterRole (the table the install renders).
#[tokio::test]
async fn every_api_call_of_the_operator_is_allowed_by_its_rbac() {
    let api = FakeApi::start().await;
    api.insert("", "pods", pod("default", "web", "uid-web"));
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("default", "gone", 1, Some(("gone", "u"))),
    );
    api.insert("cilium.io", "ciliumidentities", identity("3000"));
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("a", "2026-01-01T00:00:00Z", &[]),
    );
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("b", "2026-01-02T00:00:00Z", &["bogus"]),
    );
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("c", "2026-01-03T00:00:00Z", &["10.0.0.0/24"]),
    );

    let health = Health::default();
    let mut e = elector(&api, "op-a", fast());
    e.acquire(&health).await;
    assert_eq!(e.try_acquire_or_renew().await.unwrap(), Attempt::Held);
    let mut ipam = IpamController::new(Api::all(api.client()), pool(&["10.0.0.0/23"], 24));
    let r = ipam.pass().await.unwrap();
    assert_eq!(r.allocated, [("a".to_string(), "10.0.1.0/24".to_string())]);
    assert_eq!(r.status.len(), 1, "b's bad CIDR is reported");
    let mut ids = IdentityGc::new(api.client(), Duration::ZERO);
    assert_eq!(ids.pass().await.unwrap(), ["3000"]);
    assert_eq!(
        EndpointGc::new(api.client()).pass().await.unwrap(),
        ["default/gone"]
    );
    e.release().await.unwrap();

    let reqs = api.requests();
    assert_rbac(&reqs);
    let mut seen: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {}/{}", r.verb, r.group, r.resource))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "create coordination.k8s.io/leases",
            "delete cilium.io/ciliumendpoints",
            "delete cilium.io/ciliumidentities",
            "get coordination.k8s.io/leases",
            "list /pods",
            "list cilium.io/ciliumendpoints",
            "list cilium.io/ciliumidentities",
            "list cilium.io/ciliumnodes",
            "patch cilium.io/ciliumnodes",
            "patch cilium.io/ciliumnodes/status",
            "update coordination.k8s.io/leases",
        ],
        "the scenario exercised every kind of call"
    );
}

// ------------------------------------------------------------------ the whole operator

/// `run_with` end to end on the double: it wins the election, the controllers hand the
/// node a CIDR and collect garbage, and shutting down releases the Lease.
#[tokio::test]
async fn the_operator_leads_allocates_collects_and_releases_on_shutdown() {
    let api = FakeApi::start().await;
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("a", "2026-01-01T00:00:00Z", &[]),
    );
    api.insert("cilium.io", "ciliumidentities", identity("4000"));
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("default", "gone", 4000, None),
    );
    let cfg = super::OperatorConfig {
        leader_elect: true,
        namespace: "kube-system".into(),
        lease: fast(),
        serve_addr: "127.0.0.1:0".parse().unwrap(),
        cluster_pool: Some(pool(&["10.0.0.0/16"], 24)),
        ipam_resync: Duration::from_millis(50),
        identity_gc_interval: Some(Duration::from_millis(50)),
        identity_heartbeat_timeout: Duration::from_millis(200),
        cep_gc_interval: Some(Duration::from_millis(50)),
    };
    let health = Health::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let op = tokio::spawn(super::run_with(cfg, api.client(), health.clone(), async {
        let _ = stopped.await;
    }));
    // The endpoint goes first (its pod is gone), then its identity, unused past 200 ms.
    wait_until("CIDR allocated and garbage collected", || {
        pod_cidrs(&api, "a") != Value::Null
            && api
                .get("cilium.io", "ciliumidentities", None, "4000")
                .is_none()
    })
    .await;
    assert!(health.is_leader());
    assert_eq!(pod_cidrs(&api, "a"), json!(["10.0.0.0/24"]));
    assert!(api
        .get("cilium.io", "ciliumendpoints", Some("default"), "gone")
        .is_none());
    assert!(api
        .get("cilium.io", "ciliumidentities", None, "4000")
        .is_none());
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), op)
        .await
        .expect("the operator stops")
        .expect("no panic");
    let lease = api
        .get(
            "coordination.k8s.io",
            "leases",
            Some("kube-system"),
            LEASE_NAME,
        )
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], Value::Null, "released");
    let reqs = api.requests();
    assert_rbac(&reqs);
    let mut seen: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {}/{}", r.verb, r.group, r.resource))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "create coordination.k8s.io/leases",
            "delete cilium.io/ciliumendpoints",
            "delete cilium.io/ciliumidentities",
            "get coordination.k8s.io/leases",
            "list /pods",
            "list cilium.io/ciliumendpoints",
            "list cilium.io/ciliumidentities",
            "list cilium.io/ciliumnodes",
            "patch cilium.io/ciliumnodes",
            "update coordination.k8s.io/leases",
            "watch /pods",
            "watch cilium.io/ciliumendpoints",
            "watch cilium.io/ciliumidentities",
            "watch cilium.io/ciliumnodes",
        ],
        "the running operator makes exactly these kinds of calls"
    );
}

// ------------------------------------------------------------------ watchers

/// The leader's controllers on `api` with `cfg`, as a task (aborting it stops them and
/// their watchers).
fn start_controllers(api: &FakeApi, cfg: super::OperatorConfig) -> tokio::task::JoinHandle<()> {
    let client = api.client();
    tokio::spawn(async move { super::controllers(client, &cfg, &Health::default()).await })
}

fn config(
    cluster_pool: Option<ClusterPool>,
    identity_gc: Option<(Duration, Duration)>,
    cep_gc: Option<Duration>,
) -> super::OperatorConfig {
    super::OperatorConfig {
        leader_elect: false,
        namespace: "kube-system".into(),
        lease: fast(),
        serve_addr: "127.0.0.1:0".parse().unwrap(),
        cluster_pool,
        // Far longer than any wait below: only events can explain a prompt allocation.
        ipam_resync: Duration::from_secs(60),
        identity_gc_interval: identity_gc.map(|(i, _)| i),
        identity_heartbeat_timeout: identity_gc.map(|(_, t)| t).unwrap_or_default(),
        cep_gc_interval: cep_gc,
    }
}

/// Waits until the watch of `resource` is open (its initial list is done).
async fn watching(api: &FakeApi, resource: &str) {
    wait_until(&format!("watch of {resource} open"), || {
        api.requests()
            .iter()
            .any(|r| r.verb == "watch" && r.resource == resource)
    })
    .await;
}

fn count(reqs: &[Recorded], verb: &str, resource: &str) -> usize {
    reqs.iter()
        .filter(|r| r.verb == verb && r.resource == resource)
        .count()
}

/// Time from a CiliumNode's creation to its `spec.ipam.podCIDRs` in the store.
async fn time_to_cidr(api: &FakeApi, name: &str, created: &str) -> Duration {
    let t = std::time::Instant::now();
    api.insert("cilium.io", "ciliumnodes", node(name, created, &[]));
    // Polled every millisecond: the figure is the operator's, not the poll's.
    while pod_cidrs(api, name) == Value::Null {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name} gets a pod CIDR"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t.elapsed()
}

/// A new CiliumNode gets its CIDR from the watch event, not a poll (the resync is 60 s):
/// well within a second, every time; a deleted node's CIDR goes to the waiting node at
/// once. The nodes are listed once, never per pass.
#[tokio::test]
async fn ipam_allocates_on_the_node_event_and_releases_on_delete_at_once() {
    let api = FakeApi::start().await;
    let ctl = start_controllers(&api, config(Some(pool(&["10.0.0.0/20"], 24)), None, None));
    watching(&api, "ciliumnodes").await;
    let mut lat = Vec::new();
    for k in 0..15 {
        lat.push(
            time_to_cidr(
                &api,
                &format!("n{k:02}"),
                &format!("2026-01-01T00:00:{k:02}Z"),
            )
            .await,
        );
    }
    lat.sort();
    eprintln!(
        "CiliumNode created -> podCIDRs assigned (15 nodes, API double): median {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    assert!(
        lat[lat.len() - 1] < Duration::from_secs(1),
        "allocation waits for no poll: {lat:?}"
    );
    assert_eq!(pod_cidrs(&api, "n00"), json!(["10.0.0.0/24"]));
    assert_eq!(pod_cidrs(&api, "n14"), json!(["10.0.14.0/24"]));
    // The pool has one /24 left: the next node takes it, the one after waits with an
    // error in its status.
    let _ = time_to_cidr(&api, "n15", "2026-01-01T00:01:00Z").await;
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("late", "2026-01-01T00:02:00Z", &[]),
    );
    wait_until("exhaustion reported on the waiting node", || {
        operator_error(&api, "late").is_string()
    })
    .await;
    // A node goes: its CIDR is free at once and the waiting node gets it.
    let t = std::time::Instant::now();
    api.remove("cilium.io", "ciliumnodes", None, "n03");
    wait_until("the released CIDR reaches the waiting node", || {
        pod_cidrs(&api, "late") == json!(["10.0.3.0/24"])
    })
    .await;
    let released = t.elapsed();
    eprintln!("CiliumNode deleted -> its CIDR assigned to a waiting node: {released:?}");
    assert!(released < Duration::from_secs(1), "{released:?}");
    wait_until("the error cleared", || {
        operator_error(&api, "late") == Value::Null
    })
    .await;
    let reqs = api.requests();
    assert_eq!(
        count(&reqs, "list", "ciliumnodes"),
        1,
        "one initial list, then events"
    );
    assert_rbac(&reqs);
    ctl.abort();
}

/// The API server goes away and comes back having compacted its history (the watch
/// gets 410 and relists): the node created meanwhile is allocated after the resync, and
/// nothing was allocated twice.
#[tokio::test]
async fn ipam_resyncs_after_an_api_outage() {
    let api = FakeApi::start().await;
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("a", "2026-01-01T00:00:00Z", &[]),
    );
    let ctl = start_controllers(&api, config(Some(pool(&["10.0.0.0/16"], 24)), None, None));
    wait_until("a allocated", || pod_cidrs(&api, "a") != Value::Null).await;
    api.set_down(true);
    api.insert(
        "cilium.io",
        "ciliumnodes",
        node("b", "2026-01-02T00:00:00Z", &[]),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pod_cidrs(&api, "b"),
        Value::Null,
        "nothing reaches the API meanwhile"
    );
    api.compact();
    api.set_down(false);
    // The watcher's backoff decides when it is back (the first retry within ~1 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while pod_cidrs(&api, "b") == Value::Null {
        assert!(
            std::time::Instant::now() < deadline,
            "b allocated after the resync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pod_cidrs(&api, "a"), json!(["10.0.0.0/24"]));
    assert_eq!(pod_cidrs(&api, "b"), json!(["10.0.1.0/24"]));
    assert!(
        count(&api.requests(), "list", "ciliumnodes") >= 2,
        "relisted after the outage"
    );
    ctl.abort();
}

/// The identity collector over the stores: an unused identity lives out its grace
/// period, then goes; the ticks read the stores (one list each, no list per tick).
#[tokio::test]
async fn identity_gc_over_the_stores_honours_the_grace_period_without_listing_per_tick() {
    let api = FakeApi::start().await;
    api.insert("cilium.io", "ciliumidentities", identity("1000"));
    api.insert("cilium.io", "ciliumidentities", identity("2000"));
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("default", "web", 1000, None),
    );
    let grace = Duration::from_millis(800);
    let t = std::time::Instant::now();
    let ctl = start_controllers(
        &api,
        config(None, Some((Duration::from_millis(50), grace)), None),
    );
    wait_until("2000 collected", || {
        api.get("cilium.io", "ciliumidentities", None, "2000")
            .is_none()
    })
    .await;
    assert!(
        t.elapsed() >= grace,
        "kept for its grace period: {:?}",
        t.elapsed()
    );
    assert!(api
        .get("cilium.io", "ciliumidentities", None, "1000")
        .is_some());
    // 1000 loses its endpoint: it too waits out a full grace period.
    let t = std::time::Instant::now();
    api.remove("cilium.io", "ciliumendpoints", Some("default"), "web");
    wait_until("1000 collected", || {
        api.get("cilium.io", "ciliumidentities", None, "1000")
            .is_none()
    })
    .await;
    assert!(t.elapsed() >= grace, "{:?}", t.elapsed());
    let reqs = api.requests();
    assert_eq!(count(&reqs, "list", "ciliumidentities"), 1);
    assert_eq!(count(&reqs, "list", "ciliumendpoints"), 1);
    assert_rbac(&reqs);
    ctl.abort();
}

/// Nothing is collected from a partial view: while the endpoints' initial list fails,
/// the identity an endpoint uses is not even put on the clock (grace zero here).
#[tokio::test]
async fn gc_waits_for_every_initial_list() {
    let api = FakeApi::start().await;
    api.insert("cilium.io", "ciliumidentities", identity("1000"));
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("default", "web", 1000, None),
    );
    api.fail_next(
        "GET",
        "/apis/cilium.io/v2/ciliumendpoints",
        500,
        "InternalError",
    );
    let ctl = start_controllers(
        &api,
        config(
            None,
            Some((Duration::from_millis(20), Duration::ZERO)),
            None,
        ),
    );
    watching(&api, "ciliumendpoints").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        api.get("cilium.io", "ciliumidentities", None, "1000")
            .is_some(),
        "an identity in use survives the failed initial list"
    );
    assert!(writes(&api.requests()).is_empty());
    ctl.abort();
}

/// The endpoint collector over the stores deletes an endpoint whose pod is gone (after
/// a second look one tick later) and keeps the one whose pod exists.
#[tokio::test]
async fn cep_gc_over_the_stores_deletes_the_orphan_only() {
    let api = FakeApi::start().await;
    api.insert("", "pods", pod("default", "web", "uid-web"));
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("default", "web", 1000, Some(("web", "uid-web"))),
    );
    api.insert(
        "cilium.io",
        "ciliumendpoints",
        cep("default", "gone", 1000, Some(("gone", "uid-gone"))),
    );
    let ctl = start_controllers(&api, config(None, None, Some(Duration::from_millis(50))));
    wait_until("orphan deleted", || {
        api.get("cilium.io", "ciliumendpoints", Some("default"), "gone")
            .is_none()
    })
    .await;
    // The pod goes: its endpoint follows.
    api.remove("", "pods", Some("default"), "web");
    wait_until("web's endpoint deleted", || {
        api.get("cilium.io", "ciliumendpoints", Some("default"), "web")
            .is_none()
    })
    .await;
    let reqs = api.requests();
    assert_eq!(count(&reqs, "list", "pods"), 1);
    assert!(reqs
        .iter()
        .any(|r| r.verb == "watch" && r.resource == "pods" && r.path == "/api/v1/pods"));
    assert_rbac(&reqs);
    ctl.abort();
}

// ------------------------------------------------------------------ the Deployment

/// The rendered operator Deployment runs a command this binary has, with flags the
/// operator parses, and probes its health endpoint.
#[test]
fn the_rendered_deployment_calls_what_this_binary_has() {
    use clap::Parser;
    use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::util::intstr::IntOrString};
    let values = crate::install::Values::load(&Default::default()).expect("values");
    let docs = crate::install::render::render_documents(&values, "kube-system").expect("render");
    let d = docs
        .iter()
        .find(|d| d.source == "templates/operator-deployment.yaml")
        .expect("Deployment rendered");
    let d: Deployment = serde_yaml::from_str(&d.yaml).expect("a Deployment");
    let pod = d.spec.and_then(|s| s.template.spec).expect("pod spec");
    let c = &pod.containers[0];
    let cmd = c.command.clone().unwrap_or_default();
    assert_eq!(cmd[..2], ["cilium", "operator"]);
    crate::cmd::Cli::try_parse_from(&cmd).expect("the CLI accepts the command");

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: super::OperatorArgs,
    }
    let args =
        T::try_parse_from(std::iter::once("operator").chain(cmd[2..].iter().map(String::as_str)))
            .expect("operator flags parse")
            .a;
    assert!(args.leader_elect);
    let dir = args.config_dir.clone().expect("--config-dir");
    assert!(c
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .iter()
        .any(|m| std::path::Path::new(&m.mount_path) == dir));
    for probe in [&c.liveness_probe, &c.readiness_probe] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("httpGet");
        assert_eq!(
            get.port,
            IntOrString::Int(args.operator_api_serve_addr.port().into())
        );
        assert_eq!(get.path.as_deref(), Some("/healthz"));
        assert_eq!(
            get.host.as_deref(),
            Some(args.operator_api_serve_addr.ip().to_string().as_str())
        );
    }
    // The rendered ConfigMap resolves into a valid operator configuration.
    let cm = docs
        .iter()
        .find(|d| d.source == "templates/configmap.yaml")
        .expect("ConfigMap rendered");
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_yaml::from_str(&cm.yaml).expect("a ConfigMap");
    let dir = crate::agent::config_dir::ConfigDir {
        path: dir,
        values: cm.data.unwrap_or_default(),
    };
    let cfg = args
        .resolve_with(Some(&dir))
        .expect("the rendered config resolves");
    let pool = cfg
        .cluster_pool
        .expect("cluster-pool is the default IPAM mode");
    assert_eq!(
        pool.pools(),
        ["10.0.0.0/8".parse::<ipnet::Ipv4Net>().unwrap()]
    );
    assert_eq!(pool.mask(), 24);
}

#[tokio::test]
async fn healthz_answers_on_the_configured_address() {
    let health = Health::default();
    health.set_leader(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    super::health::serve(addr, health.clone()).await.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("ok (leader)"), "{out}");
    // A second operator on the same address gets a clear error.
    assert!(super::health::serve(addr, health).await.is_err());
}
