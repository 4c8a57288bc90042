//! `cilium install` (apply), `cilium uninstall` and `cilium status` against a fake
//! Kubernetes API server on 127.0.0.1: the real binary, a kubeconfig file pointing at
//! the fake (plain http, a bearer token), and every request recorded. No privileges,
//! no cluster.
//!
//! The fake keeps objects by API path; server-side apply stores the body, a JSON merge
//! patch merges into the stored object, an applied CRD is Established at once, an
//! applied DaemonSet/Deployment gets the status the test chose (ready or not) and a new
//! generation when its spec changed; with a simulated rollout (`set_rollout`) a changed
//! workload then moves one step per read (the DaemonSet one node at a time, or stuck).
//! Deleting the DaemonSet deletes its pods. Lists filter by labelSelector /
//! fieldSelector (k=v, comma-separated). Scripted failures answer a method + path with a
//! Status of the given code.
//!
//! The calls checked here are made with the user's credentials (cilium-cli's), not the
//! agent's or the operator's service account: they are outside `k8s::rbac`'s tables,
//! and no RBAC assertion applies to them.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cilium");
const TOKEN: &str = "fake-token-42";

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    authorization: String,
    body: Value,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    log: Vec<Req>,
    /// (method, path) -> HTTP status to answer with.
    fail: BTreeMap<(String, String), u16>,
    /// Status given to an applied DaemonSet / Deployment.
    workloads_ready: bool,
    /// When set, a changed DaemonSet / Deployment spec rolls out step by step, one step
    /// per read of the workload (see `advance`).
    rollout: Option<Sim>,
}

/// A simulated rollout: a DaemonSet over `nodes` nodes replaced one node at a time (the
/// old pod goes, the new one becomes available, then the next node); `stuck`: the first
/// new pod never becomes available.
#[derive(Debug, Clone, Copy)]
struct Sim {
    nodes: i64,
    stuck: bool,
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    dir: Arc<tempdir::Dir>,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const NS_PATH: &str = "/api/v1/namespaces/kube-system";
const DS_PATH: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/cilium";
const DEP_PATH: &str = "/apis/apps/v1/namespaces/kube-system/deployments/cilium-operator";
const CM_PATH: &str = "/api/v1/namespaces/kube-system/configmaps/cilium-config";
/// The install record (values and manifest), applied after everything else.
const SECRET_PATH: &str = "/api/v1/namespaces/kube-system/secrets/cilium-install";

impl Fake {
    /// A fake API server with the namespace kube-system, on a thread of its own.
    fn start() -> Fake {
        let state = Arc::new(Mutex::new(State::default()));
        state.lock().unwrap().objects.insert(
            NS_PATH.into(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new().fallback(
                    move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let st = st.clone();
                        async move { handle(&st, method, uri, headers, body) }
                    },
                );
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        let dir = std::env::temp_dir().join(format!(
            "cilium-k8s-api-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = Fake {
            state,
            addr,
            dir: Arc::new(tempdir::Dir(dir)),
        };
        std::fs::write(fake.kubeconfig(), fake.kubeconfig_text()).unwrap();
        fake
    }

    /// current-context points at a port nobody listens on; context `fake` at the fake:
    /// every command here passes `--context fake`, which proves the flag is obeyed.
    fn kubeconfig_text(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
current-context: nowhere
clusters:
- name: fake
  cluster:
    server: http://{}
- name: nowhere
  cluster:
    server: http://127.0.0.1:1
contexts:
- name: fake
  context: {{cluster: fake, user: tester}}
- name: nowhere
  context: {{cluster: nowhere, user: tester}}
users:
- name: tester
  user:
    token: {TOKEN}
",
            self.addr
        )
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.0.join("kubeconfig")
    }

    fn cilium(&self, args: &[&str]) -> Output {
        let kc = self.kubeconfig();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--kubeconfig", kc.to_str().unwrap(), "--context", "fake"]);
        Command::new(BIN)
            .args(&all)
            .env_remove("KUBECONFIG")
            .env_remove("CILIUM_SOCK")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("running the cilium binary")
    }

    fn put(&self, path: &str, v: Value) {
        self.state.lock().unwrap().objects.insert(path.into(), v);
    }
    fn remove(&self, path: &str) {
        self.state.lock().unwrap().objects.remove(path);
    }
    fn fail(&self, method: &str, path: &str, code: u16) {
        self.state
            .lock()
            .unwrap()
            .fail
            .insert((method.into(), path.into()), code);
    }
    fn set_ready(&self, ready: bool) {
        self.state.lock().unwrap().workloads_ready = ready;
    }
    fn set_rollout(&self, nodes: i64, stuck: bool) {
        self.state.lock().unwrap().rollout = Some(Sim { nodes, stuck });
    }
    fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }
    fn log(&self) -> Vec<Req> {
        self.state.lock().unwrap().log.clone()
    }
    fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
    fn writes(&self) -> Vec<Req> {
        self.log()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }
}

fn status_body(code: u16, message: &str) -> Value {
    let reason = match code {
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        _ => "InternalError",
    };
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reply(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn matches_selector(obj: &Value, selector: Option<&String>, field: bool) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap();
        if field {
            let mut cur = obj;
            for part in k.split('.') {
                cur = &cur[part];
            }
            cur.as_str() == Some(v)
        } else {
            obj["metadata"]["labels"][k].as_str() == Some(v)
        }
    })
}

fn workload_status(kind: &str, ready: bool, obj: &Value, gen: i64) -> Value {
    if kind == "DaemonSet" {
        if ready {
            json!({"desiredNumberScheduled": 1, "currentNumberScheduled": 1,
                   "numberMisscheduled": 0, "numberReady": 1, "numberAvailable": 1,
                   "updatedNumberScheduled": 1, "observedGeneration": gen})
        } else {
            json!({"desiredNumberScheduled": 1, "currentNumberScheduled": 1,
                   "numberMisscheduled": 0, "numberReady": 0, "numberUnavailable": 1,
                   "updatedNumberScheduled": 1, "observedGeneration": gen})
        }
    } else {
        let n = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        let r = if ready { n } else { 0 };
        json!({"replicas": n, "readyReplicas": r, "availableReplicas": r,
               "updatedReplicas": n, "observedGeneration": gen})
    }
}

/// The status right after a spec change: the controller has not seen it yet, every old
/// pod still serves.
fn rollout_start(kind: &str, sim: Sim, obj: &Value, gen: i64) -> Value {
    if kind == "DaemonSet" {
        let n = sim.nodes;
        json!({"desiredNumberScheduled": n, "currentNumberScheduled": n,
               "numberMisscheduled": 0, "numberReady": n, "numberAvailable": n,
               "updatedNumberScheduled": 0, "observedGeneration": gen - 1})
    } else {
        let n = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        json!({"replicas": n, "readyReplicas": n, "availableReplicas": n,
               "updatedReplicas": 0, "observedGeneration": gen - 1})
    }
}

/// One step of a simulated rollout, taken when the workload is read: the controller
/// observes the new generation; then, node by node, the old agent goes (one fewer
/// available, one more updated) and the new one becomes available. A Deployment is
/// done in one step after it is observed.
fn advance(obj: &mut Value, sim: Sim) {
    let gen = obj["metadata"]["generation"].as_i64().unwrap_or(1);
    if obj["status"]["observedGeneration"].as_i64().unwrap_or(0) < gen {
        obj["status"]["observedGeneration"] = json!(gen);
        return;
    }
    if obj["kind"] == "Deployment" {
        let n = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        obj["status"]["updatedReplicas"] = json!(n);
        obj["status"]["availableReplicas"] = json!(n);
        obj["status"]["readyReplicas"] = json!(n);
        return;
    }
    let st = &mut obj["status"];
    let desired = st["desiredNumberScheduled"].as_i64().unwrap_or(0);
    let updated = st["updatedNumberScheduled"].as_i64().unwrap_or(0);
    let available = st["numberAvailable"].as_i64().unwrap_or(0);
    if available < desired {
        if sim.stuck {
            return;
        }
        st["numberAvailable"] = json!(available + 1);
        st["numberReady"] = json!(available + 1);
    } else if updated < desired {
        st["updatedNumberScheduled"] = json!(updated + 1);
        st["numberAvailable"] = json!(available - 1);
        st["numberReady"] = json!(available - 1);
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn handle(
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query: BTreeMap<String, String> =
        serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let header = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut st = state.lock().unwrap();
    st.log.push(Req {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: header("content-type"),
        authorization: header("authorization"),
        body: body.clone(),
    });
    if let Some(code) = st.fail.get(&(method.to_string(), path.clone())) {
        let msg = format!("scripted failure of {method} {path}");
        return reply(*code, &status_body(*code, &msg));
    }
    match method {
        Method::GET => {
            if let Some(sim) = st.rollout {
                if path == DS_PATH || path == DEP_PATH {
                    if let Some(o) = st.objects.get_mut(&path) {
                        advance(o, sim);
                    }
                }
            }
            if let Some(o) = st.objects.get(&path) {
                return reply(200, o);
            }
            let is_list = path.ends_with("/pods") || path.ends_with("/events");
            if !is_list {
                return reply(404, &status_body(404, &format!("{path} not found")));
            }
            let prefix = format!("{path}/");
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|(p, _)| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
                .map(|(_, o)| o.clone())
                .filter(|o| matches_selector(o, query.get("labelSelector"), false))
                .filter(|o| matches_selector(o, query.get("fieldSelector"), true))
                .collect();
            let kind = if path.ends_with("/pods") {
                "PodList"
            } else {
                "EventList"
            };
            reply(
                200,
                &json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items}),
            )
        }
        Method::PATCH if header("content-type") == "application/merge-patch+json" => {
            match st.objects.get_mut(&path) {
                Some(o) => {
                    merge_patch(o, &body);
                    reply(200, o)
                }
                None => reply(404, &status_body(404, &format!("{path} not found"))),
            }
        }
        Method::PATCH => {
            let mut obj = body;
            let kind = obj["kind"].as_str().unwrap_or("").to_string();
            match kind.as_str() {
                "CustomResourceDefinition" => {
                    obj["status"] = json!({"conditions": [
                        {"type": "Established", "status": "True"},
                        {"type": "NamesAccepted", "status": "True"}]});
                }
                "DaemonSet" | "Deployment" => {
                    // generation moves on with a changed spec, as the API server does.
                    let prev = st.objects.get(&path).cloned();
                    let changed = prev.as_ref().is_none_or(|p| p["spec"] != obj["spec"]);
                    let gen = match prev
                        .as_ref()
                        .and_then(|p| p["metadata"]["generation"].as_i64())
                    {
                        Some(g) if changed => g + 1,
                        Some(g) => g,
                        None => 1,
                    };
                    obj["metadata"]["generation"] = json!(gen);
                    obj["status"] = match (&prev, st.rollout) {
                        (Some(p), _) if !changed => p["status"].clone(),
                        (Some(_), Some(sim)) => rollout_start(&kind, sim, &obj, gen),
                        _ => workload_status(&kind, st.workloads_ready, &obj, gen),
                    };
                }
                _ => {}
            }
            st.objects.insert(path, obj.clone());
            reply(200, &obj)
        }
        Method::DELETE => match st.objects.remove(&path) {
            Some(o) => {
                if path == DS_PATH {
                    // The garbage collector takes the DaemonSet's pods.
                    st.objects.retain(|p, o| {
                        !(p.contains("/pods/") && o["metadata"]["labels"]["k8s-app"] == "cilium")
                    });
                }
                reply(200, &o)
            }
            None => reply(404, &status_body(404, &format!("{path} not found"))),
        },
        _ => reply(405, &status_body(405, "method not allowed")),
    }
}

/// The API path of every object `cilium install --dry-run` renders, with the rendered
/// object as JSON, in render order.
fn rendered(ns: &str) -> Vec<(String, Value)> {
    let out = Command::new(BIN)
        .args(["install", "--dry-run", "-n", ns])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n")
        .map(|d| d.trim_start_matches("---\n"))
        .filter(|d| {
            d.lines()
                .any(|l| !l.starts_with('#') && !l.trim().is_empty())
        })
        .map(|d| {
            let v: Value = serde_yaml::from_str(d).unwrap();
            let kind = v["kind"].as_str().unwrap();
            let name = v["metadata"]["name"].as_str().unwrap();
            let (base, plural) = match kind {
                "CustomResourceDefinition" => (
                    "/apis/apiextensions.k8s.io/v1".to_string(),
                    "customresourcedefinitions",
                ),
                "ServiceAccount" => (format!("/api/v1/namespaces/{ns}"), "serviceaccounts"),
                "ConfigMap" => (format!("/api/v1/namespaces/{ns}"), "configmaps"),
                "ClusterRole" => (
                    "/apis/rbac.authorization.k8s.io/v1".to_string(),
                    "clusterroles",
                ),
                "ClusterRoleBinding" => (
                    "/apis/rbac.authorization.k8s.io/v1".to_string(),
                    "clusterrolebindings",
                ),
                "DaemonSet" => (format!("/apis/apps/v1/namespaces/{ns}"), "daemonsets"),
                "Deployment" => (format!("/apis/apps/v1/namespaces/{ns}"), "deployments"),
                other => panic!("unexpected kind {other} in the install"),
            };
            (format!("{base}/{plural}/{name}"), v)
        })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pod(
    name: &str,
    labels: Value,
    image: &str,
    ready: bool,
    waiting: Option<(&str, &str)>,
) -> Value {
    let state = match waiting {
        Some((reason, message)) => json!({"waiting": {"reason": reason, "message": message}}),
        None => json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system", "labels": labels},
        "spec": {"containers": [{"name": "cilium-agent", "image": image}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [{
                "name": "cilium-agent", "image": image, "imageID": "", "ready": ready,
                "restartCount": if ready { 0 } else { 5 }, "state": state,
                "lastState": if ready { json!({}) } else {
                    json!({"terminated": {"exitCode": 1, "reason": "Error"}}) }
            }]
        }
    })
}

fn agent_pod(name: &str, ready: bool, waiting: Option<(&str, &str)>) -> Value {
    pod(
        name,
        json!({"k8s-app": "cilium"}),
        "localhost/cilium:test",
        ready,
        waiting,
    )
}

fn operator_pod(name: &str) -> Value {
    pod(
        name,
        json!({"io.cilium/app": "operator"}),
        "localhost/cilium:test",
        true,
        None,
    )
}

const CRASH_MSG: &str = "back-off 40s restarting failed container=cilium-agent";

/// Applies happen in render order, each by server-side apply to its own path
/// (cluster-scoped CRDs and RBAC at the top, the rest under the namespace), with the
/// rendered object as body, field manager cilium-cli, forced, and the kubeconfig's
/// token; the CRDs are read back (Established) before anything else is applied.
#[test]
fn install_applies_every_object_in_order() {
    let fake = Fake::start();
    let out = fake.cilium(&["install", "--wait=false"]);
    assert!(
        out.status.success(),
        "install failed: {}",
        text(&out.stderr)
    );
    let expected = rendered("kube-system");
    let log = fake.log();
    let patches: Vec<&Req> = log.iter().filter(|r| r.method == "PATCH").collect();
    let paths: Vec<&str> = patches.iter().map(|r| r.path.as_str()).collect();
    let want: Vec<&str> = expected
        .iter()
        .map(|(p, _)| p.as_str())
        .chain([SECRET_PATH])
        .collect();
    assert_eq!(
        paths, want,
        "apply order and paths, the install record last"
    );
    assert!(want
        .first()
        .unwrap()
        .starts_with("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"));
    for (r, (_, doc)) in patches.iter().zip(&expected) {
        assert_eq!(
            r.query.get("fieldManager").map(String::as_str),
            Some("cilium-cli"),
            "{}",
            r.path
        );
        assert_eq!(
            r.query.get("force").map(String::as_str),
            Some("true"),
            "{}",
            r.path
        );
        assert_eq!(r.content_type, "application/apply-patch+yaml", "{}", r.path);
        assert_eq!(&r.body, doc, "{} is applied as rendered", r.path);
    }
    for r in &log {
        assert_eq!(
            r.authorization,
            format!("Bearer {TOKEN}"),
            "{} {}",
            r.method,
            r.path
        );
    }
    // Nothing written but applies; kube-system exists, so no Namespace is created.
    assert!(log.iter().all(|r| r.method == "GET" || r.method == "PATCH"));
    assert!(!paths.contains(&NS_PATH));
    // CRDs are read (Established) after the last CRD apply and before the next apply.
    let idx = |pred: &dyn Fn(&Req) -> bool| log.iter().position(pred).unwrap();
    let first_sa = idx(&|r| r.method == "PATCH" && r.path.contains("/serviceaccounts/"));
    let last_crd_get = log
        .iter()
        .rposition(|r| r.method == "GET" && r.path.contains("/customresourcedefinitions/"))
        .unwrap();
    let last_crd_patch = log
        .iter()
        .rposition(|r| r.method == "PATCH" && r.path.contains("/customresourcedefinitions/"))
        .unwrap();
    assert!(last_crd_patch < last_crd_get && last_crd_get < first_sa);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("applied DaemonSet kube-system/cilium"),
        "{stdout}"
    );
    assert!(stdout.contains("Not waiting"), "{stdout}");
}

/// Into a namespace that does not exist: the Namespace is applied first, and every
/// namespaced object goes under it.
#[test]
fn install_creates_a_missing_namespace_first() {
    let fake = Fake::start();
    let out = fake.cilium(&["install", "-n", "cilium-test", "--wait=false"]);
    assert!(
        out.status.success(),
        "install failed: {}",
        text(&out.stderr)
    );
    let patches: Vec<String> = fake.writes().into_iter().map(|r| r.path).collect();
    assert_eq!(patches[0], "/api/v1/namespaces/cilium-test");
    let want: Vec<String> = rendered("cilium-test")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(&patches[1..patches.len() - 1], &want[..]);
    assert_eq!(
        patches.last().map(String::as_str),
        Some("/api/v1/namespaces/cilium-test/secrets/cilium-install")
    );
    assert!(want
        .iter()
        .any(|p| p == "/apis/apps/v1/namespaces/cilium-test/daemonsets/cilium"));
}

/// With the agent DaemonSet present: a message naming upgrade and uninstall, a failure
/// exit, and not one write.
#[test]
fn install_refuses_when_cilium_is_installed() {
    let fake = Fake::start();
    fake.put(
        DS_PATH,
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
               "metadata": {"name": "cilium", "namespace": "kube-system"}}),
    );
    let out = fake.cilium(&["install"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("already installed"), "{err}");
    assert!(
        err.contains("cilium upgrade") && err.contains("cilium uninstall"),
        "{err}"
    );
    assert!(fake.writes().is_empty(), "no write: {:?}", fake.writes());
}

/// A 403 on one object: the error names the object and the status, nothing after it is
/// applied, and the objects applied before it are listed.
#[test]
fn install_stops_at_the_first_api_error() {
    let fake = Fake::start();
    let failing = "/apis/rbac.authorization.k8s.io/v1/clusterroles/cilium-operator";
    fake.fail("PATCH", failing, 403);
    let out = fake.cilium(&["install", "--wait=false"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("ClusterRole cilium-operator"), "{err}");
    assert!(err.contains("403 Forbidden"), "{err}");
    assert!(
        err.contains("scripted failure"),
        "the server's message: {err}"
    );
    assert!(
        err.contains("applied before it:") && err.contains("ClusterRoleBinding cilium;"),
        "{err}"
    );
    assert!(err.contains("cilium uninstall"), "{err}");
    let writes: Vec<String> = fake.writes().into_iter().map(|r| r.path).collect();
    assert_eq!(
        writes.last().map(String::as_str),
        Some(failing),
        "nothing after it"
    );
    let want: Vec<String> = rendered("kube-system")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let n = want.iter().position(|p| p == failing).unwrap();
    assert_eq!(&writes[..], &want[..=n]);
}

/// --wait returns once the DaemonSet and the Deployment report ready.
#[test]
fn install_waits_until_ready() {
    let fake = Fake::start();
    fake.set_ready(true);
    fake.put(
        "/api/v1/namespaces/kube-system/pods/cilium-a1b2c",
        agent_pod("cilium-a1b2c", true, None),
    );
    for p in ["cilium-operator-1", "cilium-operator-2"] {
        fake.put(
            &format!("/api/v1/namespaces/kube-system/pods/{p}"),
            operator_pod(p),
        );
    }
    let out = fake.cilium(&["install", "--wait-duration", "20s"]);
    assert!(
        out.status.success(),
        "install failed: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("Cilium was successfully installed"));
    // The wait read the workloads and listed the pods by their labels.
    let log = fake.log();
    assert!(log.iter().any(|r| r.method == "GET" && r.path == DS_PATH));
    assert!(log.iter().any(|r| r.method == "GET" && r.path == DEP_PATH));
    assert!(log.iter().any(|r| r.path.ends_with("/pods")
        && r.query.get("labelSelector").map(String::as_str) == Some("k8s-app=cilium")));
}

/// A wait that times out says which pod is not ready, its container's waiting reason
/// and message, and its last event.
#[test]
fn install_wait_times_out_with_the_reason() {
    let fake = Fake::start();
    fake.set_ready(false);
    fake.put(
        "/api/v1/namespaces/kube-system/pods/cilium-x9k2p",
        agent_pod("cilium-x9k2p", false, Some(("CrashLoopBackOff", CRASH_MSG))),
    );
    fake.put(
        "/api/v1/namespaces/kube-system/events/cilium-x9k2p.1",
        json!({"apiVersion": "v1", "kind": "Event",
               "metadata": {"name": "cilium-x9k2p.1", "namespace": "kube-system"},
               "involvedObject": {"kind": "Pod", "name": "cilium-x9k2p", "namespace": "kube-system"},
               "reason": "BackOff", "message": "Back-off restarting failed container",
               "lastTimestamp": "2026-01-01T00:01:00Z"}),
    );
    let started = std::time::Instant::now();
    let out = fake.cilium(&["install", "--wait-duration", "2s"]);
    assert!(!out.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let err = text(&out.stderr);
    assert!(err.contains("timed out after 2s"), "{err}");
    assert!(
        err.contains("pod kube-system/cilium-x9k2p is not ready"),
        "{err}"
    );
    assert!(
        err.contains("CrashLoopBackOff") && err.contains(CRASH_MSG),
        "{err}"
    );
    assert!(
        err.contains("last event: BackOff: Back-off restarting failed container"),
        "{err}"
    );
    assert!(
        err.contains("pods of DaemonSet cilium are not ready"),
        "{err}"
    );
    let ev = fake
        .log()
        .into_iter()
        .find(|r| r.path.ends_with("/events"))
        .expect("events listed");
    assert_eq!(
        ev.query.get("fieldSelector").map(String::as_str),
        Some("involvedObject.kind=Pod,involvedObject.name=cilium-x9k2p")
    );
}

/// Uninstall deletes what install applied in reverse order, keeps the CRDs (as
/// cilium-cli), treats a 404 as done, and --wait waits for the agent pods to go;
/// --delete-crds deletes the CRDs last; a second run finds everything gone.
#[test]
fn uninstall_deletes_in_reverse_order_and_404_is_fine() {
    let fake = Fake::start();
    let out = fake.cilium(&["install", "--wait=false"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    fake.put(
        "/api/v1/namespaces/kube-system/pods/cilium-a1b2c",
        agent_pod("cilium-a1b2c", true, None),
    );
    fake.remove(CM_PATH); // someone deleted it already: 404
    fake.clear_log();
    let out = fake.cilium(&["uninstall", "--wait", "--wait-duration", "10s"]);
    assert!(
        out.status.success(),
        "uninstall failed: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ConfigMap kube-system/cilium-config was already gone"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Kept 6 CustomResourceDefinitions"),
        "{stdout}"
    );
    let deletes: Vec<Req> = fake
        .writes()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    let got: Vec<&str> = deletes.iter().map(|r| r.path.as_str()).collect();
    let mut want: Vec<String> = rendered("kube-system")
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !p.contains("/customresourcedefinitions/"))
        .collect();
    want.reverse();
    want.push(SECRET_PATH.into());
    assert_eq!(got, want, "reverse apply order, the install record last");
    assert_eq!(got[0], DEP_PATH);
    assert_eq!(got[1], DS_PATH);
    assert_eq!(
        deletes[0].body["propagationPolicy"].as_str(),
        Some("Background")
    );
    // The pods were listed until none was left.
    assert!(fake.log().iter().any(|r| r.path.ends_with("/pods")));

    fake.clear_log();
    let out = fake.cilium(&["uninstall", "--delete-crds"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Vec<String> = fake
        .writes()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path)
        .collect();
    let mut want: Vec<String> = rendered("kube-system")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    want.reverse();
    want.push(SECRET_PATH.into());
    assert_eq!(got, want, "everything, CRDs last, then the (absent) record");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("DaemonSet kube-system/cilium was already gone"),
        "{stdout}"
    );
    assert!(
        stdout.contains("deleted CustomResourceDefinition ciliumnodes.cilium.io"),
        "{stdout}"
    );
}

/// An uninstall that meets a 403 goes on with the rest and fails naming the object.
#[test]
fn uninstall_reports_a_forbidden_delete() {
    let fake = Fake::start();
    fake.fail("DELETE", DS_PATH, 403);
    let out = fake.cilium(&["uninstall"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("deleting DaemonSet kube-system/cilium") && err.contains("403"),
        "{err}"
    );
    // It went on past the DaemonSet.
    assert!(fake
        .writes()
        .iter()
        .any(|r| r.path.ends_with("/serviceaccounts/cilium")));
}

fn healthy_cluster(fake: &Fake) {
    fake.set_ready(true);
    let out = fake.cilium(&["install", "--wait=false"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Two nodes.
    let mut ds = fake.state.lock().unwrap().objects[DS_PATH].clone();
    ds["status"] = json!({"desiredNumberScheduled": 2, "currentNumberScheduled": 2,
        "numberMisscheduled": 0, "numberReady": 2, "numberAvailable": 2,
        "updatedNumberScheduled": 2, "observedGeneration": 1});
    fake.put(DS_PATH, ds);
    for p in ["cilium-a1b2c", "cilium-d3e4f"] {
        fake.put(
            &format!("/api/v1/namespaces/kube-system/pods/{p}"),
            agent_pod(p, true, None),
        );
    }
    for p in ["cilium-operator-1", "cilium-operator-2"] {
        fake.put(
            &format!("/api/v1/namespaces/kube-system/pods/{p}"),
            operator_pod(p),
        );
    }
}

/// A healthy cluster: OK boxes, counts, containers and images, in text and JSON.
#[test]
fn status_of_a_healthy_cluster() {
    let fake = Fake::start();
    healthy_cluster(&fake);
    let out = fake.cilium(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.contains("Cilium:             OK"), "{t}");
    assert!(t.contains("Operator:           OK"), "{t}");
    assert!(
        t.contains(
            "DaemonSet              cilium             Desired: 2, Ready: 2/2, Available: 2/2"
        ),
        "{t}"
    );
    assert!(
        t.contains(
            "Deployment             cilium-operator    Desired: 2, Ready: 2/2, Available: 2/2"
        ),
        "{t}"
    );
    assert!(
        t.contains("Containers:            cilium             Running: 2"),
        "{t}"
    );
    assert!(
        t.contains("cilium-operator    localhost/cilium:test: 2"),
        "{t}"
    );
    assert!(!t.contains("Errors:"), "{t}");

    let out = fake.cilium(&["status", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["summary"]["cilium"], "OK");
    assert_eq!(j["summary"]["cilium-operator"], "OK");
    assert_eq!(j["daemon_set"]["ready"], 2);
    assert_eq!(j["deployment"]["desired"], 2);
    assert_eq!(j["containers"]["cilium"]["Running"], 2);
    assert_eq!(j["images"]["cilium"]["localhost/cilium:test"], 2);
    assert_eq!(j["errors"], json!([]));

    // --wait returns at once when OK.
    let out = fake.cilium(&["status", "--wait", "--wait-duration", "5s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A pod in CrashLoopBackOff: the Cilium box counts the errors; the DaemonSet shows
/// 1/2 ready and the pod's error gives the container's reason and message; JSON
/// carries the same. --wait times out with an error.
#[test]
fn status_of_a_degraded_cluster() {
    let fake = Fake::start();
    healthy_cluster(&fake);
    let mut ds = fake.state.lock().unwrap().objects[DS_PATH].clone();
    ds["status"]["numberReady"] = json!(1);
    ds["status"]["numberAvailable"] = json!(1);
    ds["status"]["numberUnavailable"] = json!(1);
    fake.put(DS_PATH, ds);
    fake.put(
        "/api/v1/namespaces/kube-system/pods/cilium-d3e4f",
        agent_pod("cilium-d3e4f", false, Some(("CrashLoopBackOff", CRASH_MSG))),
    );
    let out = fake.cilium(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.contains("Cilium:             2 errors"), "{t}");
    assert!(t.contains("Operator:           OK"), "{t}");
    assert!(
        t.contains("Desired: 2, Ready: 1/2, Available: 1/2, Unavailable: 1/2"),
        "{t}"
    );
    assert!(
        t.contains("1 pods of DaemonSet cilium are not ready"),
        "{t}"
    );
    let line = t
        .lines()
        .find(|l| l.contains("cilium-d3e4f"))
        .unwrap_or_else(|| panic!("no error line for the pod: {t}"));
    assert!(
        line.contains("container cilium-agent is waiting in CrashLoopBackOff"),
        "{line}"
    );
    assert!(
        line.contains(CRASH_MSG) && line.contains("last exit code 1"),
        "{line}"
    );

    let out = fake.cilium(&["status", "-o", "json"]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["summary"]["cilium"], "2 errors");
    let errors = j["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["pod"] == "cilium-d3e4f"
        && e["message"].as_str().unwrap().contains("CrashLoopBackOff")));

    let out = fake.cilium(&["status", "--wait", "--wait-duration", "1s"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("timed out after 1s"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("2 errors"));
}

/// No DaemonSet: status says Cilium is not installed.
#[test]
fn status_without_cilium() {
    let fake = Fake::start();
    let out = fake.cilium(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.contains("Cilium:             1 errors"), "{t}");
    assert!(t.contains("Operator:           disabled"), "{t}");
    assert!(
        t.contains("DaemonSet cilium not found in namespace kube-system"),
        "{t}"
    );
}

/// -H (a local agent) and a cluster flag together are refused; an unreachable API
/// server is named in the error.
#[test]
fn status_mode_conflict_and_unreachable_server() {
    let out = Command::new(BIN)
        .args([
            "status",
            "-H",
            "/nonexistent.sock",
            "--kubeconfig",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pass one or the other"),
        "{}",
        text(&out.stderr)
    );

    let fake = Fake::start();
    let kc = fake.kubeconfig();
    // The current context points at 127.0.0.1:1.
    let out = Command::new(BIN)
        .args([
            "install",
            "--wait=false",
            "--kubeconfig",
            kc.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("127.0.0.1:1"), "{all}");
    assert!(
        text(&out.stderr).contains("checking for DaemonSet kube-system/cilium"),
        "{all}"
    );
    assert!(fake.log().is_empty());
}

// ------------------------------------------------------------------ cilium upgrade

/// Installs with `args` (not waiting) and forgets the requests.
fn installed(fake: &Fake, args: &[&str]) {
    let mut all = vec!["install", "--wait=false"];
    all.extend(args);
    let out = fake.cilium(&all);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    fake.clear_log();
}

fn paths_of(reqs: &[Req], method: &str) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.method == method)
        .map(|r| r.path.clone())
        .collect()
}

/// The values recorded in the install record Secret.
fn recorded_values(fake: &Fake) -> serde_yaml::Value {
    let secret = fake.get(SECRET_PATH).expect("the install record");
    assert_eq!(secret["type"], "cilium.io/install-record.v1");
    let b64 = secret["data"]["values.yaml"].as_str().expect("values.yaml");
    let bytes: k8s_openapi::ByteString = serde_json::from_value(json!(b64)).unwrap();
    serde_yaml::from_slice(&bytes.0).unwrap()
}

/// No agent DaemonSet: a failure that says Cilium is not installed and names `cilium
/// install`, and not one write.
#[test]
fn upgrade_refuses_when_cilium_is_not_installed() {
    let fake = Fake::start();
    let out = fake.cilium(&["upgrade", "--set", "debug.enabled=true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Cilium is not installed in namespace kube-system")
            && err.contains("`cilium install`"),
        "{err}"
    );
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    let out = fake.cilium(&["upgrade", "-n", "cilium-test"]);
    assert!(text(&out.stderr).contains("`cilium install -n cilium-test`"));
}

/// An unknown key, a value that fails validation and a malformed values file: each a
/// clear error, and nothing written (a broken file is refused before the cluster is
/// even asked).
#[test]
fn upgrade_with_bad_values_changes_nothing() {
    let fake = Fake::start();
    installed(&fake, &[]);
    let out = fake.cilium(&["upgrade", "--set", "ipam.mod=kubernetes"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown value key `ipam.mod`") && err.contains("nothing was changed"),
        "{err}"
    );
    let out = fake.cilium(&["upgrade", "--set", "routingMode=native"]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("`ipv4NativeRoutingCIDR`"),
        "{err}"
    );
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    fake.clear_log();
    let bad = fake.dir.0.join("bad.yaml");
    std::fs::write(&bad, "debug: {enabled: true\n").unwrap();
    let out = fake.cilium(&["upgrade", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("not valid YAML"),
        "{err}"
    );
    assert!(fake.log().is_empty(), "no request at all: {:?}", fake.log());
    let out = fake.cilium(&["upgrade", "--reuse-values", "--reset-values"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
}

/// The install records its values; an upgrade merges new values over them, shows per
/// object what changes, applies only what changed (server-side apply, cilium-cli) and
/// records the merged values; --reset-values starts from the defaults again.
#[test]
fn upgrade_reuses_the_recorded_values_and_applies_only_what_changed() {
    let fake = Fake::start();
    installed(&fake, &["--set", "debug.enabled=true"]);
    assert_eq!(
        recorded_values(&fake),
        serde_yaml::from_str::<serde_yaml::Value>("{debug: {enabled: true}}").unwrap()
    );
    let out = fake.cilium(&["upgrade", "--set", "operator.replicas=3", "--wait=false"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("(1 changed, 0 added, 0 removed, 14 unchanged)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("changed    Deployment kube-system/cilium-operator: spec.replicas"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unchanged  ConfigMap kube-system/cilium-config")
            && stdout.contains("unchanged  DaemonSet kube-system/cilium"),
        "debug stays on: {stdout}"
    );
    let log = fake.log();
    assert_eq!(paths_of(&log, "PATCH"), [DEP_PATH, SECRET_PATH]);
    for r in log.iter().filter(|r| r.method == "PATCH") {
        assert_eq!(
            r.query.get("fieldManager").map(String::as_str),
            Some("cilium-cli")
        );
        assert_eq!(r.content_type, "application/apply-patch+yaml");
    }
    assert_eq!(fake.get(DEP_PATH).unwrap()["spec"]["replicas"], 3);
    assert_eq!(
        recorded_values(&fake),
        serde_yaml::from_str::<serde_yaml::Value>(
            "{debug: {enabled: true}, operator: {replicas: 3}}"
        )
        .unwrap()
    );

    // Nothing new: nothing applied.
    fake.clear_log();
    let out = fake.cilium(&["upgrade"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Cilium is up to date"),
        "{}",
        text(&out.stdout)
    );
    assert!(fake.writes().is_empty());

    // Back to the defaults.
    fake.clear_log();
    let out = fake.cilium(&["upgrade", "--reset-values", "--wait=false"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        paths_of(&fake.log(), "PATCH"),
        [CM_PATH, DS_PATH, DEP_PATH, SECRET_PATH]
    );
    assert_eq!(fake.get(CM_PATH).unwrap()["data"]["debug"], "false");
    assert_eq!(
        recorded_values(&fake),
        serde_yaml::from_str::<serde_yaml::Value>("{}").unwrap()
    );
}

/// --dry-run prints exactly what `install --dry-run` would render with the merged values,
/// lists the changes on stderr, and writes nothing.
#[test]
fn upgrade_dry_run_prints_the_new_manifests_and_applies_nothing() {
    let fake = Fake::start();
    installed(&fake, &["--set", "cluster.name=prod"]);
    let out = fake.cilium(&["upgrade", "--dry-run", "--set", "debug.enabled=true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = Command::new(BIN)
        .args([
            "install",
            "--dry-run",
            "--set",
            "cluster.name=prod,debug.enabled=true",
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), text(&want.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("Would upgrade Cilium"), "{err}");
    assert!(
        err.contains("changed    ConfigMap kube-system/cilium-config: data.debug"),
        "{err}"
    );
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
}

/// Objects the install created that the new values no longer render are deleted
/// (reverse order), after the rest is applied.
#[test]
fn upgrade_deletes_objects_no_longer_rendered() {
    let fake = Fake::start();
    installed(&fake, &[]);
    let out = fake.cilium(&[
        "upgrade",
        "--set",
        "operator.enabled=false,ipam.mode=kubernetes",
        "--wait=false",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("removed    Deployment kube-system/cilium-operator"),
        "{stdout}"
    );
    assert_eq!(
        paths_of(&fake.log(), "DELETE"),
        [
            DEP_PATH,
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/cilium-operator",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/cilium-operator",
            "/api/v1/namespaces/kube-system/serviceaccounts/cilium-operator",
        ]
    );
    assert!(fake.get(DEP_PATH).is_none());
    // The record no longer names them: a later uninstall does not look for them.
    fake.clear_log();
    let out = fake.cilium(&["uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!paths_of(&fake.log(), "DELETE").contains(&DEP_PATH.to_string()));
}

/// A new version rolls the agents: the DaemonSet is applied with the new image and
/// maxUnavailable 1, and the upgrade waits, step by step, until every node's agent is
/// updated and available (the fake replaces one node at a time) and the operator has
/// rolled.
#[test]
fn upgrade_waits_while_the_agents_roll_one_node_at_a_time() {
    let fake = Fake::start();
    fake.set_ready(true);
    installed(&fake, &[]);
    fake.set_rollout(3, false);
    let out = fake.cilium(&["upgrade", "--version", "9.9.9", "--wait-duration", "30s"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let ds = fake.get(DS_PATH).unwrap();
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "localhost/cilium:9.9.9"
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let steps = [
        "DaemonSet cilium: 0/3 agents updated, 3/3 available",
        "DaemonSet cilium: 1/3 agents updated, 2/3 available",
        "DaemonSet cilium: 1/3 agents updated, 3/3 available",
        "DaemonSet cilium: 2/3 agents updated, 2/3 available",
        "DaemonSet cilium: 3/3 agents updated, 3/3 available",
        "Cilium was upgraded",
    ];
    let mut at = 0;
    for s in steps {
        let i = stdout[at..]
            .find(s)
            .unwrap_or_else(|| panic!("{s:?} not after byte {at}:\n{stdout}"));
        at += i + s.len();
    }
    assert!(
        stdout.contains("Deployment cilium-operator: 2/2 operator replicas updated, 2/2 available"),
        "{stdout}"
    );
}

/// A rollout that does not finish: the timeout names what is not rolled out, the pod
/// that is not ready with its container's reason and last event, and the pod still on
/// the old image.
#[test]
fn upgrade_timeout_names_the_pod_and_the_reason() {
    let fake = Fake::start();
    fake.set_ready(true);
    installed(&fake, &[]);
    fake.set_rollout(3, true);
    let mut crashing = agent_pod("cilium-x9k2p", false, Some(("CrashLoopBackOff", CRASH_MSG)));
    crashing["spec"]["containers"][0]["image"] = json!("localhost/cilium:9.9.9");
    fake.put("/api/v1/namespaces/kube-system/pods/cilium-x9k2p", crashing);
    fake.put(
        "/api/v1/namespaces/kube-system/pods/cilium-old01",
        agent_pod("cilium-old01", true, None),
    );
    fake.put(
        "/api/v1/namespaces/kube-system/events/cilium-x9k2p.1",
        json!({"apiVersion": "v1", "kind": "Event",
               "metadata": {"name": "cilium-x9k2p.1", "namespace": "kube-system"},
               "involvedObject": {"kind": "Pod", "name": "cilium-x9k2p", "namespace": "kube-system"},
               "reason": "BackOff", "message": "Back-off restarting failed container",
               "lastTimestamp": "2026-01-01T00:01:00Z"}),
    );
    let out = fake.cilium(&[
        "upgrade",
        "--image",
        "localhost/cilium:9.9.9",
        "--wait-duration",
        "2s",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("timed out after 2s waiting for the upgrade to roll out"),
        "{err}"
    );
    assert!(
        err.contains("DaemonSet cilium: 1/3 updated, 2/3 available"),
        "{err}"
    );
    assert!(
        err.contains("pod kube-system/cilium-x9k2p is not ready")
            && err.contains("CrashLoopBackOff")
            && err.contains("last event: BackOff: Back-off restarting failed container"),
        "{err}"
    );
    assert!(
        err.contains(
            "pod kube-system/cilium-old01 still runs localhost/cilium:test (the DaemonSet wants localhost/cilium:9.9.9)"
        ),
        "{err}"
    );
}

// ------------------------------------------------------------------ uninstall: CNI

/// Before it deletes the agents, uninstall sets cni-uninstall=true in cilium-config (a
/// merge patch: only that key) and touches every agent pod so its kubelet refreshes the
/// mounted file; the agents' preStop hook then removes the node's CNI files.
#[test]
fn uninstall_turns_on_cni_uninstall_before_deleting_the_agents() {
    let fake = Fake::start();
    installed(&fake, &[]);
    for p in ["cilium-a1b2c", "cilium-d3e4f"] {
        fake.put(
            &format!("/api/v1/namespaces/kube-system/pods/{p}"),
            agent_pod(p, true, None),
        );
    }
    let out = fake.cilium(&["uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("set cni-uninstall=true in ConfigMap kube-system/cilium-config"),
        "{}",
        text(&out.stdout)
    );
    let log = fake.log();
    let merge: Vec<&Req> = log.iter().filter(|r| r.method == "PATCH").collect();
    assert!(merge
        .iter()
        .all(|r| r.content_type == "application/merge-patch+json"));
    assert_eq!(merge[0].path, CM_PATH);
    assert_eq!(merge[0].body, json!({"data": {"cni-uninstall": "true"}}));
    let touched: Vec<&str> = merge[1..].iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        touched,
        [
            "/api/v1/namespaces/kube-system/pods/cilium-a1b2c",
            "/api/v1/namespaces/kube-system/pods/cilium-d3e4f"
        ]
    );
    let last_patch = log.iter().rposition(|r| r.method == "PATCH").unwrap();
    let ds_delete = log
        .iter()
        .position(|r| r.method == "DELETE" && r.path == DS_PATH)
        .unwrap();
    assert!(
        last_patch < ds_delete,
        "the flag is set before the agents go"
    );
}

// ------------------------------------------------------------------ figures

/// The figure of the README: wall time of `cilium install` (apply everything, CRDs
/// Established, wait until ready) against the fake, which reports the workloads ready
/// at once, so this is the CLI's own time; and the number of objects of a default
/// install. Printed, not asserted (beyond a generous bound).
#[test]
fn figure_install_to_ready_against_the_fake() {
    let objects = rendered("kube-system").len();
    let mut times = Vec::new();
    for _ in 0..5 {
        let fake = Fake::start();
        fake.set_ready(true);
        let started = std::time::Instant::now();
        let out = fake.cilium(&["install", "--wait-duration", "30s"]);
        times.push(started.elapsed());
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    times.sort();
    eprintln!(
        "FIGURE install to ready against the fake API server: min {:?}, median {:?}, max {:?} \
         (5 runs; {objects} rendered objects + the install record)",
        times[0], times[2], times[4]
    );
    assert!(times[2] < std::time::Duration::from_secs(20));
}

/// `cilium connectivity test --kubeconfig` targets the cluster: without Cilium there,
/// it says so and what to do, and deploys nothing.
#[test]
fn connectivity_test_on_a_cluster_without_cilium_says_what_to_do() {
    let fake = Fake::start();
    let out = fake.cilium(&["connectivity", "test"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Cilium is not installed in namespace kube-system")
            && err.contains("cilium install"),
        "{err}"
    );
    assert!(fake.writes().is_empty(), "no write: {:?}", fake.writes());
    // A local cluster name and cluster flags together are refused.
    let out = fake.cilium(&["connectivity", "test", "--cluster", "x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("pass one or the other"));
}
