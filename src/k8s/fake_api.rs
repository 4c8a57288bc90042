//! A Kubernetes API double for the controller tests: an HTTP server on 127.0.0.1 that
//! keeps objects in memory with the API server's rules that matter here (resourceVersion
//! on every write, 409 on a stale update / patch / delete precondition, 404, 201 on
//! create, the status subresource splitting spec and status writes), records every
//! request (method, path, body, and the RBAC verb/group/resource it needs), and can be
//! told to fail the next matching request or to store an object just before it (a
//! concurrent writer). Lists and watches honour equality-based label selectors
//! (`k=v,k2==v2`) and field selectors (`spec.nodeName=n`, `!=` too).
//!
//! Watches (`?watch=true&resourceVersion=N`) stream newline-delimited WatchEvents over a
//! chunked response: every change after N to a matching object, then each later change
//! as it happens, until `timeoutSeconds`. A resourceVersion older than the event log
//! (after [`FakeApi::compact`]) gets an ERROR event with a 410 Expired Status, as the API
//! server answers; no bookmarks. [`FakeApi::set_down`] makes the double an API server
//! that is away: every request fails with 503 and open watches end.
//!
//! To play a cluster rather than a bare store, a test adds reactors: each runs after a
//! request succeeded, with the request, the response body and the store, and does what a
//! controller or the kubelet would (recreate a DaemonSet's pod, report a node's state).
//! [`FakeApi::set_unavailable`] drops the connection of every request until cleared: a
//! lost connection to the API server.
//!
//! To play a cluster rather than an API server alone: a [`Controller`] sees every
//! object written and may store more (pods for a Deployment, as kube-controller-manager
//! and the scheduler would); `pods/exec` speaks the WebSocket channel protocol
//! (`v5.channel.k8s.io`/`v4.channel.k8s.io`: channel 1 stdout, 2 stderr, 3 the status)
//! and answers with an [`ExecHandler`]; deleting a Namespace deletes what is in it.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use serde_json::{json, Value};

/// Sees each object written (group, resource, the stored object) with every object
/// the double holds, and returns objects to store after it: (group, resource, object).
pub type Controller =
    Arc<dyn Fn(&str, &str, &Value, &[Value]) -> Vec<(String, String, Value)> + Send + Sync>;

/// One `pods/exec` call.
#[derive(Debug, Clone)]
pub struct ExecCall {
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub command: Vec<String>,
}

/// What an exec'd command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct ExecReply {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// Answers `pods/exec` calls, with every object the double holds.
pub type ExecHandler = Arc<dyn Fn(&ExecCall, &[Value]) -> ExecReply + Send + Sync>;

/// One request as the double saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    /// The Content-Type header (`application/apply-patch+yaml` for server-side apply).
    pub content_type: String,
    /// RBAC verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    pub group: String,
    /// `resource` or `resource/subresource`, as RBAC names it.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

type Key = (String, String, Option<String>, String); // group, resource, namespace, name

/// What a cluster does after a request succeeded: the request, the response body (the
/// deleted object for a DELETE) and the store.
pub type Reactor = Box<dyn Fn(&Recorded, &Value, &mut Store<'_>) + Send>;

#[derive(Default)]
struct Inner {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    requests: Vec<Recorded>,
    /// (method, path, code, reason): the next matching request fails once.
    failures: Vec<(String, String, u16, String)>,
    /// (method, path suffix, object key, object): stored just before the next matching
    /// request is handled, as if another client had written it first.
    inserts: Vec<(String, String, Key, Value)>,
    /// Every change: (resourceVersion, ADDED|MODIFIED|DELETED, key, object).
    events: Vec<(u64, &'static str, Key, Value)>,
    /// Watches from a resourceVersion at or below this one get 410 Expired.
    compacted: u64,
    /// The API server is away: requests fail with 503, watches end.
    down: bool,
    /// Tells open watches that something happened (the latest resourceVersion).
    changed: Option<tokio::sync::watch::Sender<u64>>,
    reactors: Vec<Reactor>,
    /// Every request's connection drops while set.
    unavailable: bool,
    controller: Option<Controller>,
    exec: Option<ExecHandler>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct FakeApi {
    pub url: String,
    shared: Shared,
    _server: tokio::task::JoinHandle<()>,
}

struct Parsed {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Parsed> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match *segs.first()? {
        "api" => (String::new(), segs.get(1)?.to_string(), &segs[2..]),
        "apis" => (
            segs.get(1)?.to_string(),
            segs.get(2)?.to_string(),
            &segs[3..],
        ),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Parsed {
        group,
        version,
        namespace,
        resource: rest.first()?.to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn fail(code: u16, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let (code, body) = fail(code, reason, message);
    (code, axum::Json(body)).into_response()
}

fn ok(code: StatusCode, v: &Value) -> (StatusCode, Value) {
    (code, v.clone())
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Equality-based label selector terms of a query (`labelSelector=k=v,k2==v2`).
fn selector_of(query: &str) -> Vec<(String, String)> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    pairs
        .iter()
        .filter(|(k, _)| k == "labelSelector")
        .flat_map(|(_, sel)| sel.split(','))
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            let (k, v) = t.split_once('=')?;
            Some((
                k.trim().to_string(),
                v.trim_start_matches('=').trim().to_string(),
            ))
        })
        .collect()
}

/// Field selector terms of a query (`fieldSelector=spec.nodeName=n,metadata.name!=x`):
/// (path, value, equal).
fn field_selector_of(query: &str) -> Vec<(String, String, bool)> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    pairs
        .iter()
        .filter(|(k, _)| k == "fieldSelector")
        .flat_map(|(_, sel)| sel.split(','))
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            let (k, v, eq) = match t.split_once("!=") {
                Some((k, v)) => (k, v, false),
                None => {
                    let (k, v) = t.split_once('=')?;
                    (k, v.trim_start_matches('='), true)
                }
            };
            Some((k.trim().to_string(), v.trim().to_string(), eq))
        })
        .collect()
}

/// Whether `v` matches the label and field selectors of `query`.
fn selected(v: &Value, query: &str) -> bool {
    let labels = selector_of(query)
        .iter()
        .all(|(k, want)| v["metadata"]["labels"][k].as_str() == Some(want));
    let fields = field_selector_of(query).iter().all(|(path, want, eq)| {
        let ptr = format!("/{}", path.replace('.', "/"));
        let have = v.pointer(&ptr).and_then(Value::as_str).unwrap_or("");
        (have == want) == *eq
    });
    labels && fields
}

fn query_param(query: &str, name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// What an open watch streams: changes of its resource after `rv`.
struct WatchState {
    shared: Shared,
    group: String,
    resource: String,
    namespace: Option<String>,
    query: String,
    rv: u64,
    rx: tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    done: bool,
}

impl WatchState {
    /// The next chunk of events (one JSON line each), waiting for one; None at the end.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            {
                let st = self.shared.lock();
                if st.down {
                    return None;
                }
                self.rx.borrow_and_update();
                if self.rv < st.compacted {
                    self.done = true;
                    let line = json!({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Expired", "code": 410,
                        "message": format!("too old resource version: {} ({})", self.rv, st.compacted),
                    }});
                    return Some(Bytes::from(format!("{line}\n")));
                }
                let mut out = String::new();
                for (rv, kind, (g, r, ns, _), obj) in &st.events {
                    if *rv <= self.rv || *g != self.group || *r != self.resource {
                        continue;
                    }
                    if self.namespace.is_some() && *ns != self.namespace {
                        continue;
                    }
                    if !selected(obj, &self.query) {
                        continue;
                    }
                    out.push_str(&json!({"type": kind, "object": obj}).to_string());
                    out.push('\n');
                }
                if let Some((rv, ..)) = st.events.last() {
                    self.rv = self.rv.max(*rv);
                }
                if !out.is_empty() {
                    return Some(Bytes::from(out));
                }
            }
            match tokio::time::timeout_at(self.deadline, self.rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}

fn watch_response(shared: Shared, p: &Parsed, query: &str) -> Response {
    let rx = {
        let mut st = shared.lock();
        let latest = st.rv;
        st.changed
            .get_or_insert_with(|| tokio::sync::watch::channel(latest).0)
            .subscribe()
    };
    let rv = query_param(query, "resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| shared.lock().rv);
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(300u64);
    let state = WatchState {
        shared,
        group: p.group.clone(),
        resource: p.resource.clone(),
        namespace: p.namespace.clone(),
        query: query.to_string(),
        rv,
        rx,
        deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(timeout),
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(500, "InternalError", "building the watch response"))
}

fn rv_of(v: &Value) -> Option<String> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn handle(
    State(sh): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(p) = parse_path(&path) else {
        return status(404, "NotFound", "no such path");
    };
    let verb = match (&method, &p.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if query.contains("watch=true") => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => "unknown",
    };
    let resource = match &p.sub {
        Some(s) => format!("{}/{s}", p.resource),
        None => p.resource.clone(),
    };
    let mut st = sh.lock();
    st.requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
        content_type: content_type.clone(),
        verb: verb.into(),
        group: p.group.clone(),
        resource,
        namespace: p.namespace.clone(),
        name: p.name.clone(),
    });
    if st.unavailable {
        // The response head goes out, then the connection drops: the client sees a
        // broken body (not a status it would retry).
        let broken = futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped"))
        });
        return axum::body::Body::from_stream(broken).into_response();
    }
    if st.down {
        return status(
            503,
            "ServiceUnavailable",
            "the API server is away (FakeApi::set_down)",
        );
    }
    if let Some(i) = st
        .failures
        .iter()
        .position(|(m, pth, _, _)| *m == method.as_str() && path.ends_with(pth.as_str()))
    {
        let (_, _, code, reason) = st.failures.remove(i);
        return status(code, &reason, "injected failure");
    }
    if let Some(i) = st
        .inserts
        .iter()
        .position(|(m, pth, _, _)| *m == method.as_str() && path.ends_with(pth.as_str()))
    {
        let (_, _, key, obj) = st.inserts.remove(i);
        st.store(key, obj);
    }
    let api_version = if p.group.is_empty() {
        p.version.clone()
    } else {
        format!("{}/{}", p.group, p.version)
    };
    if method == Method::GET && p.name.is_none() && verb == "watch" {
        drop(st);
        return watch_response(sh.clone(), &p, &query);
    }
    let recorded = st.requests.last().cloned();
    let response = respond(
        &mut st,
        &p,
        &api_version,
        method,
        &query,
        &body,
        &content_type,
    );
    if let (Some(r), true) = (recorded, response.0.is_success()) {
        let reactors = std::mem::take(&mut st.reactors);
        for react in &reactors {
            react(&r, &response.1, &mut Store(&mut st));
        }
        st.reactors = reactors;
    }
    (response.0, axum::Json(response.1)).into_response()
}

/// Handles one request on the store: the status and the body to answer with.
fn respond(
    st: &mut Inner,
    p: &Parsed,
    api_version: &str,
    method: Method,
    query: &str,
    body: &Value,
    content_type: &str,
) -> (StatusCode, Value) {
    let key = |name: &str| -> Key {
        (
            p.group.clone(),
            p.resource.clone(),
            p.namespace.clone(),
            name.to_string(),
        )
    };
    let is_apply = content_type.starts_with("application/apply-patch");
    match (method, p.name.clone()) {
        (Method::GET, None) => {
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((g, r, ns, _), _)| {
                    *g == p.group
                        && *r == p.resource
                        && (p.namespace.is_none() || *ns == p.namespace)
                })
                .filter(|(_, v)| selected(v, query))
                .map(|(_, v)| v.clone())
                .collect();
            let kind = items
                .first()
                .and_then(|i| i["kind"].as_str())
                .map(|k| format!("{k}List"))
                .unwrap_or_else(|| "List".into());
            let rv = st.rv.to_string();
            ok(
                StatusCode::OK,
                &json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => match st.objects.get(&key(&name)) {
            Some(v) => ok(StatusCode::OK, v),
            None => fail(
                404,
                "NotFound",
                &format!("{} {name:?} not found", p.resource),
            ),
        },
        (m @ (Method::POST | Method::PATCH), name)
            if m == Method::POST
                || (is_apply
                    && name
                        .as_ref()
                        .is_some_and(|n| !st.objects.contains_key(&key(n)))) =>
        {
            // Create; server-side apply creates a missing object too.
            let Some(name) = body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return fail(422, "Invalid", "metadata.name is required");
            };
            if m == Method::PATCH && Some(&name) != p.name.as_ref() {
                return fail(422, "Invalid", "metadata.name does not match the path");
            }
            if st.objects.contains_key(&key(&name)) {
                return fail(409, "AlreadyExists", &format!("{name:?} already exists"));
            }
            st.rv += 1;
            let mut obj = body.clone();
            let rv = st.rv;
            merge(
                &mut obj,
                &json!({"metadata": {
                    "resourceVersion": rv.to_string(),
                    "uid": format!("uid-{rv}"),
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                    "namespace": p.namespace,
                }}),
            );
            st.objects.insert(key(&name), obj.clone());
            st.event(rv, "ADDED", key(&name), &obj);
            st.control(&p.group, &p.resource, &obj);
            ok(StatusCode::CREATED, &obj)
        }
        (m @ (Method::PUT | Method::PATCH), Some(name)) => {
            let Some(current) = st.objects.get(&key(&name)).cloned() else {
                return fail(404, "NotFound", &format!("{name:?} not found"));
            };
            if let Some(want) = rv_of(body) {
                if Some(&want) != rv_of(&current).as_ref() {
                    return fail(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
            }
            let is_status = p.sub.as_deref() == Some("status");
            let mut next = current.clone();
            if m == Method::PUT {
                if is_status {
                    next["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                } else {
                    next = body.clone();
                    if let Some(s) = current.get("status") {
                        next["status"] = s.clone();
                    }
                    next["metadata"]["uid"] = current["metadata"]["uid"].clone();
                    next["metadata"]["creationTimestamp"] =
                        current["metadata"]["creationTimestamp"].clone();
                }
            } else {
                let mut patch = body.clone();
                if let Value::Object(m) = &mut patch {
                    if is_status {
                        m.retain(|k, _| k == "status" || k == "metadata");
                    } else {
                        m.remove("status");
                    }
                }
                merge(&mut next, &patch);
            }
            st.rv += 1;
            next["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            st.objects.insert(key(&name), next.clone());
            let rv = st.rv;
            st.event(rv, "MODIFIED", key(&name), &next);
            st.control(&p.group, &p.resource, &next);
            ok(StatusCode::OK, &next)
        }
        (Method::DELETE, Some(name)) => {
            let Some(current) = st.objects.get(&key(&name)).cloned() else {
                return fail(404, "NotFound", &format!("{name:?} not found"));
            };
            let pre = &body["preconditions"];
            let uid_ok = pre["uid"]
                .as_str()
                .is_none_or(|u| Some(u) == current["metadata"]["uid"].as_str());
            let rv_ok = pre["resourceVersion"]
                .as_str()
                .is_none_or(|r| Some(r) == current["metadata"]["resourceVersion"].as_str());
            if !uid_ok || !rv_ok {
                return fail(409, "Conflict", "precondition failed");
            }
            st.objects.remove(&key(&name));
            st.rv += 1;
            let rv = st.rv;
            st.event(rv, "DELETED", key(&name), &current);
            if p.group.is_empty() && p.resource == "namespaces" {
                // The namespace controller's work, at once: everything in it goes.
                let inside: Vec<Key> = st
                    .objects
                    .keys()
                    .filter(|(_, _, ns, _)| ns.as_deref() == Some(name.as_str()))
                    .cloned()
                    .collect();
                for k in inside {
                    if let Some(obj) = st.objects.remove(&k) {
                        st.rv += 1;
                        let rv = st.rv;
                        st.event(rv, "DELETED", k, &obj);
                    }
                }
            }
            ok(StatusCode::OK, &current)
        }
        _ => fail(405, "MethodNotAllowed", "not supported by the double"),
    }
}

fn object_key(group: &str, resource: &str, obj: &Value) -> Key {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().expect("metadata.name").to_string();
    let ns = meta["namespace"].as_str().map(str::to_string);
    (group.into(), resource.into(), ns, name)
}

impl Inner {
    /// Lets the controller see a written object and stores what it makes of it.
    fn control(&mut self, group: &str, resource: &str, obj: &Value) {
        let Some(c) = self.controller.clone() else {
            return;
        };
        let all: Vec<Value> = self.objects.values().cloned().collect();
        for (g, r, o) in c(group, resource, obj, &all) {
            let key = object_key(&g, &r, &o);
            self.store(key, o);
        }
    }

    /// Stores `obj` with a new resourceVersion; uid and creationTimestamp unless given.
    fn store(&mut self, key: Key, mut obj: Value) {
        self.rv += 1;
        let rv = self.rv;
        let meta = obj["metadata"].clone();
        merge(
            &mut obj,
            &json!({"metadata": {"resourceVersion": rv.to_string()}}),
        );
        if meta["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        if meta["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        let kind = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.event(rv, kind, key.clone(), &obj);
        self.objects.insert(key, obj);
    }

    /// Logs a change for watches and wakes them.
    fn event(&mut self, rv: u64, kind: &'static str, key: Key, obj: &Value) {
        self.events.push((rv, kind, key, obj.clone()));
        self.wake();
    }

    fn wake(&mut self) {
        let rv = self.rv;
        if let Some(tx) = &self.changed {
            tx.send_replace(rv);
        }
    }
}

/// The store as a reactor sees it (group "" for core, as [`FakeApi::insert`]).
pub struct Store<'a>(&'a mut Inner);

impl Store<'_> {
    pub fn get(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.0
            .objects
            .get(&(
                group.into(),
                resource.into(),
                namespace.map(str::to_string),
                name.into(),
            ))
            .cloned()
    }

    /// Every object of a resource (all namespaces).
    pub fn list(&self, group: &str, resource: &str) -> Vec<Value> {
        self.0
            .objects
            .iter()
            .filter(|((g, r, _, _), _)| g == group && r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stores an object with a new resourceVersion.
    pub fn put(&mut self, group: &str, resource: &str, obj: Value) {
        let key = object_key(group, resource, &obj);
        self.0.store(key, obj);
    }

    pub fn remove(&mut self, group: &str, resource: &str, namespace: Option<&str>, name: &str) {
        self.0.objects.remove(&(
            group.into(),
            resource.into(),
            namespace.map(str::to_string),
            name.into(),
        ));
    }

    /// From the next request on, every request's connection drops (until cleared).
    pub fn set_unavailable(&mut self, down: bool) {
        self.0.unavailable = down;
    }
}

impl FakeApi {
    pub async fn start() -> Self {
        let shared = Shared::default();
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{namespace}/pods/{pod}/exec",
                axum::routing::any(exec),
            )
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API double");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            shared,
            _server: server,
        }
    }

    /// A client for the double, default namespace `kube-system`.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("client")
    }

    /// The client configuration of the double (for code that builds its own client).
    pub fn config(&self) -> kube::Config {
        let mut cfg = kube::Config::new(self.url.parse().expect("URL"));
        cfg.default_namespace = "kube-system".into();
        cfg
    }

    /// Stores an object directly (not recorded): group "" for core; fills
    /// resourceVersion, uid and creationTimestamp unless given.
    pub fn insert(&self, group: &str, resource: &str, obj: Value) {
        let key = object_key(group, resource, &obj);
        self.shared.lock().store(key, obj);
    }

    /// Like [`insert`](Self::insert), but only just before the next `method` request
    /// whose path ends with `path_suffix` is handled: another writer winning a race.
    pub fn insert_on_next(
        &self,
        method: &str,
        path_suffix: &str,
        group: &str,
        resource: &str,
        obj: Value,
    ) {
        let key = object_key(group, resource, &obj);
        self.shared
            .lock()
            .inserts
            .push((method.into(), path_suffix.into(), key, obj));
    }

    /// Removes an object directly (not recorded; watches see it deleted).
    pub fn remove(&self, group: &str, resource: &str, namespace: Option<&str>, name: &str) {
        let mut st = self.shared.lock();
        let key = (
            group.into(),
            resource.into(),
            namespace.map(str::to_string),
            name.into(),
        );
        if let Some(obj) = st.objects.remove(&key) {
            st.rv += 1;
            let rv = st.rv;
            st.event(rv, "DELETED", key, &obj);
        }
    }

    /// The API server goes away (`true`: every request fails with 503, open watches
    /// end) or comes back (`false`). Objects stay, and may change meanwhile.
    pub fn set_down(&self, down: bool) {
        let mut st = self.shared.lock();
        st.down = down;
        st.wake();
    }

    /// Forgets the event log up to now: a watch from an older resourceVersion gets 410
    /// Expired and its client must list again.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
        st.events.clear();
    }

    pub fn get(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(&(
                group.into(),
                resource.into(),
                namespace.map(str::to_string),
                name.into(),
            ))
            .cloned()
    }

    /// The next `method` request whose path ends with `path_suffix` fails with `code`.
    pub fn fail_next(&self, method: &str, path_suffix: &str, code: u16, reason: &str) {
        self.shared
            .lock()
            .failures
            .push((method.into(), path_suffix.into(), code, reason.into()));
    }

    /// Adds a reactor: it runs after every successful request, in the order added.
    pub fn react(&self, reactor: Reactor) {
        self.shared.lock().reactors.push(reactor);
    }

    /// While `down`, every request's connection drops mid-response (recorded all the same).
    pub fn set_unavailable(&self, down: bool) {
        self.shared.lock().unavailable = down;
    }

    /// Plays the cluster's controllers: see [`Controller`].
    pub fn set_controller(&self, c: Controller) {
        self.shared.lock().controller = Some(c);
    }

    /// Answers `pods/exec`: see [`ExecHandler`]. Without one, exec gets 404.
    pub fn set_exec(&self, h: ExecHandler) {
        self.shared.lock().exec = Some(h);
    }

    /// Every object of a resource (group "" for core), in a namespace or all.
    pub fn list(&self, group: &str, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|((g, r, ns, _), _)| {
                g == group && r == resource && (namespace.is_none() || ns.as_deref() == namespace)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Requests so far (and forgets them).
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.shared.lock().requests)
    }

    /// Every request so far, without forgetting them.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }
}

/// `pods/exec` over a WebSocket: records the call, runs the handler, sends stdout
/// (channel 1), stderr (channel 2) and the status (channel 3), then closes.
async fn exec(
    State(sh): State<Shared>,
    axum::extract::Path((namespace, pod)): axum::extract::Path<(String, String)>,
    uri: Uri,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    use axum::extract::ws::Message;
    let query = uri.query().unwrap_or("").to_string();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query).unwrap_or_default();
    let call = ExecCall {
        namespace: namespace.clone(),
        pod: pod.clone(),
        container: pairs
            .iter()
            .find(|(k, _)| k == "container")
            .map(|(_, v)| v.clone()),
        command: pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect(),
    };
    let (handler, all, exists) = {
        let mut st = sh.lock();
        st.requests.push(Recorded {
            method: "GET".into(),
            path: uri.path().to_string(),
            query: query.clone(),
            body: Value::Null,
            content_type: String::new(),
            verb: "create".into(),
            group: String::new(),
            resource: "pods/exec".into(),
            namespace: Some(namespace.clone()),
            name: Some(pod.clone()),
        });
        let exists = st.objects.contains_key(&(
            String::new(),
            "pods".to_string(),
            Some(namespace.clone()),
            pod.clone(),
        ));
        (
            st.exec.clone(),
            st.objects.values().cloned().collect::<Vec<Value>>(),
            exists,
        )
    };
    let (Some(handler), true) = (handler, exists) else {
        return status(404, "NotFound", &format!("pods {pod:?} not found"));
    };
    let Ok(ws) = ws else {
        return status(400, "BadRequest", "exec needs a WebSocket upgrade");
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |mut socket| async move {
            let reply = handler(&call, &all);
            let frame = |ch: u8, data: &[u8]| {
                let mut v = vec![ch];
                v.extend_from_slice(data);
                Message::Binary(v.into())
            };
            if !reply.stdout.is_empty() {
                let _ = socket.send(frame(1, reply.stdout.as_bytes())).await;
            }
            if !reply.stderr.is_empty() {
                let _ = socket.send(frame(2, reply.stderr.as_bytes())).await;
            }
            let st = if reply.exit_code == 0 {
                json!({"metadata": {}, "status": "Success"})
            } else {
                json!({"metadata": {}, "status": "Failure",
                    "message": format!("command terminated with non-zero exit code: {}", reply.exit_code),
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": reply.exit_code.to_string()}]}})
            };
            let _ = socket.send(frame(3, st.to_string().as_bytes())).await;
            let _ = socket.send(Message::Close(None)).await;
        })
}
