//! The CiliumIdentity allocator against the API double: the requests it makes, the
//! objects it leaves, its answers in the races, and that the agent's RBAC allows it all.
use std::sync::{Arc, Barrier};

use serde_json::{json, Value};

use super::*;
use crate::k8s::{
    fake_api::{FakeApi, Recorded},
    rbac::assert_agent_may,
};

const IDS: &str = "/apis/cilium.io/v2/ciliumidentities";
/// FNV-1a of "k8s:app=web\0k8s:io.kubernetes.pod.namespace=default\0", into 256..=65535
/// (computed independently).
const PINNED_WEB: u32 = 19319;

fn labels(app: &str) -> Labels {
    Labels(BTreeMap::from([
        ("k8s:app".to_string(), app.to_string()),
        (
            "k8s:io.kubernetes.pod.namespace".to_string(),
            "default".to_string(),
        ),
    ]))
}

fn object(id: u32, l: &Labels) -> Value {
    json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
        "metadata": {"name": id.to_string(), "labels": object_labels(l)},
        "security-labels": l.0,
    })
}

/// The allocator blocks its caller: run it off the runtime that serves the double.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("allocator thread")
}

fn new_allocator(api: &FakeApi) -> K8sIdentityAllocator {
    K8sIdentityAllocator::new(api.config()).expect("allocator")
}

/// Polls `cond` for up to 5 s (the machine may be busy: no fixed sleeps for positives).
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// An allocator whose cache holds the initial list and whose watch is open; the
/// requests so far (the watcher's list and watch, checked against the agent's RBAC)
/// are taken, so a test sees the allocator's own calls only.
async fn synced_allocator(api: &FakeApi) -> K8sIdentityAllocator {
    let a = new_allocator(api);
    wait_until("identity cache synced", || a.cache_synced()).await;
    wait_until("identity watch open", || {
        api.requests()
            .iter()
            .any(|r| r.verb == "watch" && r.resource == "ciliumidentities")
    })
    .await;
    assert_agent_may(&api.take());
    a
}

fn calls(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| match &r.name {
            Some(n) => format!("{} {n}", r.verb),
            None => r.verb.clone(),
        })
        .collect()
}

fn security_labels(api: &FakeApi, id: u32) -> Option<Value> {
    api.get("cilium.io", "ciliumidentities", None, &id.to_string())
        .map(|o| o["security-labels"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_the_first_free_candidate_when_none_has_the_labels() {
    let api = FakeApi::start().await;
    let c: Vec<u32> = candidates(&labels("web")).take(2).collect();
    api.insert(
        "cilium.io",
        "ciliumidentities",
        object(c[0], &labels("other")),
    );
    let mut a = synced_allocator(&api).await;
    let (mut a, web) = blocking(move || {
        let id = a.allocate(&labels("web"), "node1");
        (a, id)
    })
    .await;
    let web = web.unwrap();
    assert_eq!(web, c[1], "the first candidate is taken");
    let reqs = api.take();
    assert_eq!(calls(&reqs), ["create"], "the cache answered the lookup");
    assert_eq!(reqs[0].path, IDS);
    let created = api
        .get("cilium.io", "ciliumidentities", None, &web.to_string())
        .unwrap();
    assert_eq!(created["security-labels"], json!(labels("web").0));
    assert_eq!(
        created["metadata"]["labels"],
        json!({"app": "web", "io.kubernetes.pod.namespace": "default"}),
        "k8s labels on the object, without their source"
    );
    assert_agent_may(&reqs);

    // A second user of the same labels: answered from memory, no API call.
    let (mut a, again) = blocking(move || {
        let id = a.allocate(&labels("web"), "node1");
        (a, id)
    })
    .await;
    assert_eq!(again.unwrap(), web);
    assert!(api.take().is_empty());
    let listed = blocking(move || {
        let l = a.list();
        // Dropping the allocator on a blocking thread and inside a runtime both work.
        a.release(&labels("web"), "node1").unwrap();
        l
    })
    .await
    .unwrap();
    let mut want = vec![(c[0], labels("other")), (c[1], labels("web"))];
    want.sort();
    assert_eq!(listed, want);
    assert_agent_may(&api.take());
}

/// Before the cache holds a complete list, the API is read: a list narrowed by the
/// labels, then every identity for the numbers taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_synced_cache_the_lookup_and_the_search_read_the_api() {
    let api = FakeApi::start().await;
    let c: Vec<u32> = candidates(&labels("web")).take(2).collect();
    api.insert(
        "cilium.io",
        "ciliumidentities",
        object(c[0], &labels("other")),
    );
    let id = allocate(Api::all(api.client()), None, labels("web"))
        .await
        .unwrap();
    assert_eq!(id, c[1]);
    let reqs = api.take();
    assert_eq!(calls(&reqs), ["list", "list", "create"]);
    assert!(
        reqs[0]
            .query
            .contains("labelSelector=app%3Dweb%2Cio.kubernetes.pod.namespace%3Ddefault"),
        "lookup narrowed by the labels: {}",
        reqs[0].query
    );
    assert_agent_may(&reqs);
    // Found by the list: nothing created.
    let id = allocate(Api::all(api.client()), None, labels("web"))
        .await
        .unwrap();
    assert_eq!(id, c[1]);
    assert_eq!(calls(&api.take()), ["list"]);
}

/// Labels another agent allocated reach this agent's cache by the watch: allocating
/// them makes no API call at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_labels_are_answered_from_the_cache_without_an_api_call() {
    let api = FakeApi::start().await;
    let a = synced_allocator(&api).await;
    let mut b = new_allocator(&api);
    let by_b = blocking(move || b.allocate(&labels("web"), "node2"))
        .await
        .unwrap();
    wait_until("node1's cache sees node2's identity", || {
        a.cache.lookup(&labels("web")).is_some()
    })
    .await;
    api.take();
    let mut a = a;
    let by_a = blocking(move || a.allocate(&labels("web"), "node1"))
        .await
        .unwrap();
    assert_eq!(by_a, by_b, "same labels, same identity");
    let reqs: Vec<Recorded> = api
        .take()
        .into_iter()
        // node2's allocator opens its own watch meanwhile.
        .filter(|r| r.verb != "watch" && r.verb != "list")
        .collect();
    assert!(reqs.is_empty(), "no API call: {:?}", calls(&reqs));
}

/// A cache that lags (the identity exists, the watch has not delivered it): the create
/// of the same number meets a 409, the re-read shows equal labels, the identity is
/// adopted; no second identity appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cache_missing_an_existing_identity_still_adopts_it() {
    let api = FakeApi::start().await;
    let c: Vec<u32> = candidates(&labels("web")).take(2).collect();
    api.insert(
        "cilium.io",
        "ciliumidentities",
        object(c[0], &labels("web")),
    );
    // Synced, but empty: it never saw c[0].
    let (stale, _writer) = reflector::store::<CiliumIdentity>();
    let id = allocate(Api::all(api.client()), Some(stale), labels("web"))
        .await
        .unwrap();
    assert_eq!(id, c[0]);
    assert_eq!(
        calls(&api.take()),
        ["create", &format!("get {}", c[0])],
        "no list: the 409 and the re-read decide"
    );
    assert!(security_labels(&api, c[1]).is_none(), "no second identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuses_the_identity_whose_labels_are_equal_not_a_superset() {
    let api = FakeApi::start().await;
    let mut more = labels("web");
    more.0.insert("k8s:tier".into(), "front".into());
    // The superset matches the selector and is listed first: it must not be taken.
    api.insert("cilium.io", "ciliumidentities", object(300, &more));
    api.insert(
        "cilium.io",
        "ciliumidentities",
        object(4000, &labels("web")),
    );
    api.insert(
        "cilium.io",
        "ciliumidentities",
        object(3000, &labels("web")),
    );
    let mut a = synced_allocator(&api).await;
    let (mut a, web) = blocking(move || {
        let id = a.allocate(&labels("web"), "node1");
        (a, id)
    })
    .await;
    assert_eq!(web.unwrap(), 3000, "equal labels; of two, the lowest");
    let reqs = api.take();
    assert_eq!(
        calls(&reqs),
        Vec::<String>::new(),
        "found in the cache: no call"
    );

    // Release and retain write nothing (the operator collects unused identities); a
    // released identity is found again in the API.
    let id = blocking(move || {
        a.release(&labels("web"), "node1").unwrap();
        a.allocate(&more, "node1").unwrap();
        a.retain_user("node1", &BTreeSet::new()).unwrap();
        a.allocate(&labels("web"), "node2").unwrap()
    })
    .await;
    assert_eq!(id, 3000);
    let reqs = api.take();
    assert_eq!(
        calls(&reqs),
        Vec::<String>::new(),
        "no write on release; the released identity is found in the cache"
    );
    assert!(
        security_labels(&api, 3000).is_some(),
        "not deleted by the agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_taken_by_other_labels_in_the_race_moves_to_the_next() {
    let api = FakeApi::start().await;
    let c: Vec<u32> = candidates(&labels("web")).take(2).collect();
    // Another agent creates our first candidate for other labels between our list and
    // our create.
    api.insert_on_next(
        "POST",
        IDS,
        "cilium.io",
        "ciliumidentities",
        object(c[0], &labels("db")),
    );
    let mut a = synced_allocator(&api).await;
    let id = blocking(move || a.allocate(&labels("web"), "node1"))
        .await
        .unwrap();
    assert_eq!(id, c[1]);
    let reqs = api.take();
    assert_eq!(
        calls(&reqs),
        ["create", &format!("get {}", c[0]), "create"],
        "409, re-read, next number"
    );
    assert_eq!(reqs[0].body["metadata"]["name"], c[0].to_string());
    assert_eq!(reqs[2].body["metadata"]["name"], c[1].to_string());
    assert_eq!(security_labels(&api, c[0]), Some(json!(labels("db").0)));
    assert_eq!(security_labels(&api, c[1]), Some(json!(labels("web").0)));
    assert_agent_may(&reqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_taken_by_the_same_labels_in_the_race_is_adopted() {
    let api = FakeApi::start().await;
    let c: Vec<u32> = candidates(&labels("web")).take(2).collect();
    // Another agent allocates the same labels at the same moment and wins.
    api.insert_on_next(
        "POST",
        IDS,
        "cilium.io",
        "ciliumidentities",
        object(c[0], &labels("web")),
    );
    let mut a = synced_allocator(&api).await;
    let id = blocking(move || a.allocate(&labels("web"), "node1"))
        .await
        .unwrap();
    assert_eq!(id, c[0]);
    let reqs = api.take();
    assert_eq!(calls(&reqs), ["create", &format!("get {}", c[0])]);
    assert!(security_labels(&api, c[1]).is_none(), "no second identity");
    assert_agent_may(&reqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_clearly_after_bounded_conflicts() {
    let api = FakeApi::start().await;
    for (k, id) in candidates(&labels("web"))
        .take(MAX_CREATE_ATTEMPTS)
        .enumerate()
    {
        api.insert_on_next(
            "POST",
            IDS,
            "cilium.io",
            "ciliumidentities",
            object(id, &labels(&format!("other{k}"))),
        );
    }
    let mut a = new_allocator(&api);
    let err = blocking(move || a.allocate(&labels("web"), "node1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IdentityError::Contended { attempts, .. } if attempts == MAX_CREATE_ATTEMPTS),
        "{err}"
    );
    assert!(err.to_string().contains("taken by other agents"), "{err}");
    let creates = api.take().iter().filter(|r| r.verb == "create").count();
    assert_eq!(creates, MAX_CREATE_ATTEMPTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_allocating_concurrently_agree_and_never_share_a_number() {
    let api = FakeApi::start().await;
    let n = 12;
    let start = Arc::new(Barrier::new(2));
    // Same label sets in opposite orders, plus each agent's own ones in between.
    let agent = |node: &'static str, reverse: bool| {
        let mut a = new_allocator(&api);
        let start = start.clone();
        tokio::task::spawn_blocking(move || {
            let mut order: Vec<usize> = (0..n).collect();
            if reverse {
                order.reverse();
            }
            start.wait();
            let mut shared = BTreeMap::new();
            let mut own = BTreeMap::new();
            for i in order {
                shared.insert(i, a.allocate(&labels(&format!("app{i}")), node).unwrap());
                own.insert(
                    i,
                    a.allocate(&labels(&format!("{node}-only{i}")), node)
                        .unwrap(),
                );
            }
            (shared, own)
        })
    };
    let (h1, h2) = (agent("node1", false), agent("node2", true));
    let (shared1, own1) = h1.await.unwrap();
    let (shared2, own2) = h2.await.unwrap();
    assert_eq!(shared1, shared2, "same labels, same number on both agents");
    let all: BTreeSet<u32> = shared1
        .values()
        .chain(own1.values())
        .chain(own2.values())
        .copied()
        .collect();
    assert_eq!(all.len(), 3 * n, "different labels never share a number");
    let reqs = api.take();
    let objects = {
        let a = new_allocator(&api);
        blocking(move || a.list()).await.unwrap()
    };
    assert_eq!(objects.len(), 3 * n, "no duplicate objects");
    assert_agent_may(&reqs);
    // Created and dropped on a runtime thread: dropping does not block the runtime.
    drop(new_allocator(&api));
}

#[test]
fn object_labels_keep_valid_k8s_labels_without_their_source() {
    let l = Labels(BTreeMap::from([
        ("k8s:app".to_string(), "web".to_string()),
        ("k8s:app.kubernetes.io/name".to_string(), "shop".to_string()),
        ("k8s:empty".to_string(), String::new()),
        ("k8s:bad value".to_string(), "x".to_string()),
        ("k8s:long".to_string(), "v".repeat(64)),
        ("k8s:Upper.Prefix/x".to_string(), "y".to_string()),
        ("k8s:odd".to_string(), "-x".to_string()),
        ("reserved:host".to_string(), String::new()),
        ("cidr:10.0.0.0/8".to_string(), String::new()),
    ]));
    assert_eq!(
        object_labels(&l),
        BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("app.kubernetes.io/name".to_string(), "shop".to_string()),
            ("empty".to_string(), String::new()),
        ])
    );
    assert_eq!(label_selector(&l), "app=web,app.kubernetes.io/name=shop");
    assert_eq!(label_selector(&Labels::reserved("host")), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_does_not_answer_is_an_error_not_a_hang() {
    // Accepts connections (the backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = kube::Config::new(
        format!("http://{}", silent.local_addr().unwrap())
            .parse()
            .unwrap(),
    );
    let mut a = K8sIdentityAllocator::new(cfg)
        .unwrap()
        .with_timeout(std::time::Duration::from_millis(300));
    let err = blocking(move || a.allocate(&labels("web"), "node1"))
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::Timeout(_)), "{err}");
}

#[test]
fn the_search_order_is_stable_and_covers_the_range_once() {
    // Pinned: agents of different versions must search in the same order.
    assert_eq!(first_candidate(&labels("web")), PINNED_WEB);
    assert_ne!(first_candidate(&labels("db")), PINNED_WEB);
    let all: Vec<u32> = candidates(&labels("web")).collect();
    assert_eq!(all[0], PINNED_WEB);
    assert_eq!(all.len() as u32, MAX_USER_IDENTITY - MIN_USER_IDENTITY + 1);
    assert_eq!(
        all.iter().copied().collect::<BTreeSet<u32>>().len(),
        all.len()
    );
    let top = all.iter().position(|&id| id == MAX_USER_IDENTITY).unwrap();
    assert_eq!(all[top + 1], MIN_USER_IDENTITY, "wraps to the bottom");
}
