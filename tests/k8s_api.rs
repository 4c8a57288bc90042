//! `cilium install` (apply), `cilium uninstall` and `cilium status` against a fake
//! Kubernetes API server on 127.0.0.1: the real binary, a kubeconfig file pointing at
//! the fake (plain http, a bearer token), and every request recorded. No privileges,
//! no cluster.
//!
//! The fake keeps objects by API path; server-side apply stores the body, an applied
//! CRD is Established at once, an applied DaemonSet/Deployment gets the status the test
//! chose (ready or not), deleting the DaemonSet deletes its pods. Lists filter by
//! labelSelector / fieldSelector (k=v, comma-separated). Scripted failures answer a
//! method + path with a Status of the given code.
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

fn workload_status(kind: &str, ready: bool, obj: &Value) -> Value {
    if kind == "DaemonSet" {
        if ready {
            json!({"desiredNumberScheduled": 1, "currentNumberScheduled": 1,
                   "numberMisscheduled": 0, "numberReady": 1, "numberAvailable": 1,
                   "updatedNumberScheduled": 1, "observedGeneration": 1})
        } else {
            json!({"desiredNumberScheduled": 1, "currentNumberScheduled": 1,
                   "numberMisscheduled": 0, "numberReady": 0, "numberUnavailable": 1,
                   "updatedNumberScheduled": 1, "observedGeneration": 1})
        }
    } else {
        let n = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        let r = if ready { n } else { 0 };
        json!({"replicas": n, "readyReplicas": r, "availableReplicas": r,
               "updatedReplicas": n, "observedGeneration": 1})
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
                    obj["metadata"]["generation"] = json!(1);
                    obj["status"] = workload_status(&kind, st.workloads_ready, &obj);
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
    let want: Vec<&str> = expected.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, want, "apply order and paths");
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
    assert_eq!(&patches[1..], &want[..]);
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
    let cm = "/api/v1/namespaces/kube-system/configmaps/cilium-config";
    fake.remove(cm); // someone deleted it already: 404
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
    let deletes: Vec<Req> = fake.writes();
    assert!(deletes.iter().all(|r| r.method == "DELETE"));
    let got: Vec<&str> = deletes.iter().map(|r| r.path.as_str()).collect();
    let mut want: Vec<String> = rendered("kube-system")
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !p.contains("/customresourcedefinitions/"))
        .collect();
    want.reverse();
    assert_eq!(got, want);
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
    let got: Vec<String> = fake.writes().into_iter().map(|r| r.path).collect();
    let mut want: Vec<String> = rendered("kube-system")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    want.reverse();
    assert_eq!(got, want, "everything, CRDs last");
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
