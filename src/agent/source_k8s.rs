//! The Kubernetes API as the agent's [`Source`]: one `kube` watcher + reflector store
//! per resource (Pods of this node, Namespaces, Services, EndpointSlices,
//! NetworkPolicies, CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies,
//! CiliumNodes, CiliumEndpoints), converted on read into the same [`Snapshot`] the local
//! store gives.
//!
//! - **Generation**: every Apply/Delete after a store's initial list, and every
//!   InitDone (a relist may change anything), bumps one counter; the agent's loop sees
//!   it and regenerates. Before every store has seen its first InitDone the generation
//!   is 0 and [`Source::snapshot`] refuses ([`SourceError::NotSynced`]): the agent never
//!   regenerates from an empty or partial list.
//! - **Services fast path**: a journal of (generation, service touched or "anything")
//!   answers [`Source::changes_since`]; Service and EndpointSlice events name their
//!   service (an EndpointSlice's old service too), anything else means "all".
//! - **API server loss**: watchers retry with `default_backoff`; the reflector stores
//!   keep the last state meanwhile (the datapath is not touched), and a relist swaps the
//!   new state in atomically at its InitDone.
//! - **Conversion**: Services, EndpointSlices and policies go through the same parsers
//!   as `cilium local apply` ([`crate::lb::parse`], [`crate::policy::parse`]), fed the
//!   object as JSON (a YAML subset), parsed once per resourceVersion. An object they
//!   reject is left out with one warning naming it and the problem.
//! - **Memory**: managedFields and kubectl's last-applied annotation are dropped before
//!   objects reach the stores.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    discovery::v1::EndpointSlice as K8sSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    runtime::{
        reflector::{self, Store as Reader},
        watcher, WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use serde_json::json;
use tracing::{debug, info, warn};

use super::{
    publish_k8s::{IpamMode, Publisher},
    source::{
        Changes, LocalEndpoint, NodeObject, NodeStatus, OwnNode, PodObject, RemoteEndpoint,
        ServiceKeys, Snapshot, Source, SourceError,
    },
};
use crate::{
    k8s::crds::{CiliumClusterwideNetworkPolicy, CiliumEndpoint, CiliumNetworkPolicy, CiliumNode},
    lb::model::{EndpointSlice, Service},
    policy::parse::PolicyObject,
};

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Journal entries kept for the services fast path (older generations regenerate all).
const JOURNAL_LEN: usize = 4096;

/// The resources watched, as their stores are named in logs and errors.
pub const KINDS: [&str; 9] = [
    "Pod",
    "Namespace",
    "Service",
    "EndpointSlice",
    "NetworkPolicy",
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "CiliumNode",
    "CiliumEndpoint",
];

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("reading the kubeconfig {path}: {source}; fix --k8s-kubeconfig-path")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("finding the Kubernetes API server: {0}; run in a pod with a service account, or give --k8s-kubeconfig-path or --k8s-api-server")]
    Infer(String),
    #[error("{0}")]
    BadFlag(String),
    #[error("{op}: {source}")]
    Api {
        op: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Node(String),
}

/// Where the agent reaches the API server: the flags of Cilium's agent and the
/// config-directory keys `k8s-service-host` / `k8s-service-port` (kube-proxy
/// replacement: no service to reach it through).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFlags {
    pub kubeconfig: Option<PathBuf>,
    pub api_server: Option<String>,
    pub service_host: Option<String>,
    pub service_port: Option<u16>,
}

impl ClientFlags {
    /// Whether anything asks for Kubernetes (in a pod, KUBERNETES_SERVICE_HOST does).
    pub fn wanted(&self) -> bool {
        self.kubeconfig.is_some()
            || self.api_server.is_some()
            || self.service_host.is_some()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
    }

    /// The API server address that overrides the configuration's, if any:
    /// `--k8s-api-server`, else `k8s-service-host`:`k8s-service-port` (443 by default).
    pub fn server_override(&self) -> Result<Option<axum::http::Uri>, K8sError> {
        let text = match (&self.api_server, &self.service_host) {
            (Some(s), _) if s.contains("://") => s.clone(),
            (Some(s), _) => format!("https://{s}"),
            (None, Some(h)) => {
                let host = if h.contains(':') && !h.starts_with('[') {
                    format!("[{h}]")
                } else {
                    h.clone()
                };
                format!("https://{host}:{}", self.service_port.unwrap_or(443))
            }
            (None, None) => return Ok(None),
        };
        text.parse().map(Some).map_err(|e| {
            K8sError::BadFlag(format!(
                "API server address {text:?} is not a URL ({e}); give --k8s-api-server as https://HOST:PORT or HOST:PORT"
            ))
        })
    }

    /// The client configuration: the kubeconfig given, else the pod's service account
    /// (in-cluster), else the usual kubeconfig discovery; the server address overridden
    /// as [`Self::server_override`] says.
    pub async fn config(&self) -> Result<kube::Config, K8sError> {
        let server = self.server_override()?;
        let mut cfg = if let Some(path) = &self.kubeconfig {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                K8sError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|source| K8sError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        } else if let Ok(c) = kube::Config::incluster_env() {
            c
        } else if let (Some(_), Ok(c)) = (&server, kube::Config::incluster_dns()) {
            c
        } else {
            kube::Config::infer()
                .await
                .map_err(|e| K8sError::Infer(e.to_string()))?
        };
        if let Some(url) = server {
            cfg.cluster_url = url;
        }
        Ok(cfg)
    }
}

/// What the Kubernetes source needs to know about this node.
#[derive(Debug, Clone)]
pub struct K8sSourceOptions {
    pub node_name: String,
    pub ipam: IpamMode,
}

/// A parsed Service/EndpointSlice/policy object, cached per resourceVersion.
#[derive(Clone)]
enum Parsed {
    Policies(Vec<PolicyObject>),
    Services(Vec<Service>, Vec<EndpointSlice>),
    Invalid,
}

/// (kind, namespace, name).
type ObjKey = (&'static str, Option<String>, String);

#[derive(Default)]
struct Journal {
    generation: u64,
    /// (generation, service touched; None: anything).
    entries: VecDeque<(u64, Option<(String, String)>)>,
    /// Generations at or after this one are fully described by `entries`.
    floor: u64,
    synced: BTreeSet<&'static str>,
    /// Which service each EndpointSlice belonged to when last seen, both ways.
    slices: SliceIndex,
    /// The index a relist of EndpointSlices is building; replaces `slices` when done.
    relisted_slices: Option<SliceIndex>,
}

const SLICE_KIND: &str = "EndpointSlice";

/// EndpointSlices by the service their label names, and the reverse, kept from the
/// watch events: the reflector store indexes objects by name only, and a service change
/// must not scan every slice of the cluster.
#[derive(Default)]
struct SliceIndex {
    /// (namespace, slice) -> service.
    service_of: HashMap<(String, String), String>,
    /// (namespace, service) -> its slices.
    slices_of: HashMap<(String, String), BTreeSet<String>>,
}

impl SliceIndex {
    /// Records the slice under `service` (None: no label, or deleted); returns the
    /// service it was under before.
    fn set(&mut self, ns: &str, slice: &str, service: Option<&str>) -> Option<String> {
        let key = (ns.to_string(), slice.to_string());
        let old = match service {
            Some(svc) => self.service_of.insert(key, svc.to_string()),
            None => self.service_of.remove(&key),
        };
        if let Some(old) = &old {
            let k = (ns.to_string(), old.clone());
            if let Some(set) = self.slices_of.get_mut(&k) {
                set.remove(slice);
                if set.is_empty() {
                    self.slices_of.remove(&k);
                }
            }
        }
        if let Some(svc) = service {
            self.slices_of
                .entry((ns.to_string(), svc.to_string()))
                .or_default()
                .insert(slice.to_string());
        }
        old
    }

    /// The slices last seen under a service.
    fn of(&self, ns: &str, service: &str) -> impl Iterator<Item = &String> {
        self.slices_of
            .get(&(ns.to_string(), service.to_string()))
            .into_iter()
            .flatten()
    }
}

/// State shared with the watcher tasks.
#[derive(Default)]
struct Shared {
    journal: Mutex<Journal>,
    /// Mirrors `journal.generation` once every store is synced (0 before).
    generation: AtomicU64,
}

/// What a Service or EndpointSlice event touches, for the services fast path.
enum Touch {
    Service((String, String)),
    /// (namespace, slice name, the service its label names).
    Slice(String, String, Option<String>),
}

impl Shared {
    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One change: the services it touches (None: anything) get the next generation.
    fn bump(&self, j: &mut Journal, touched: Vec<Option<(String, String)>>) {
        j.generation += 1;
        let g = j.generation;
        for t in touched {
            j.entries.push_back((g, t));
        }
        while j.entries.len() > JOURNAL_LEN {
            if let Some((g, _)) = j.entries.pop_front() {
                j.floor = g;
            }
        }
        if j.synced.len() == KINDS.len() {
            self.generation.store(g, Ordering::Release);
        }
    }

    /// An object of `kind` was applied or deleted after the initial list.
    fn changed(&self, kind: &'static str, touch: Option<Touch>, deleted: bool) {
        let mut j = self.journal();
        if !j.synced.contains(kind) {
            return;
        }
        let touched = match touch {
            None => vec![None],
            Some(Touch::Service(k)) => vec![Some(k)],
            Some(Touch::Slice(ns, slice, service)) => {
                let now = service.as_deref().filter(|_| !deleted);
                let old = j.slices.set(&ns, &slice, now);
                let mut t: Vec<Option<(String, String)>> = Vec::new();
                for svc in service.into_iter().chain(old) {
                    if !t.iter().flatten().any(|(_, s)| *s == svc) {
                        t.push(Some((ns.clone(), svc)));
                    }
                }
                if t.is_empty() {
                    t.push(None);
                }
                t
            }
        };
        self.bump(&mut j, touched);
    }

    /// A (re)list of `kind` is complete: anything may have changed.
    fn synced(&self, kind: &'static str) {
        let mut j = self.journal();
        // The relisted slices replace the index at once, as the reflector swaps its
        // store: until then lookups see the last complete list.
        if kind == SLICE_KIND {
            if let Some(relisted) = j.relisted_slices.take() {
                j.slices = relisted;
            }
        }
        if j.synced.insert(kind) {
            debug!(kind, "initial list done");
        }
        self.bump(&mut j, vec![None]);
    }

    /// A relist of `kind` starts (`Init`) or lists an object (`InitApply`).
    fn relisting(&self, kind: &'static str, touch: Option<Touch>, start: bool) {
        if kind != SLICE_KIND {
            return;
        }
        let mut j = self.journal();
        if start {
            j.relisted_slices = Some(SliceIndex::default());
        }
        if let Some(Touch::Slice(ns, slice, Some(svc))) = touch {
            j.relisted_slices
                .get_or_insert_with(SliceIndex::default)
                .set(&ns, &slice, Some(&svc));
        }
    }
}

/// The Kubernetes source; see the module documentation. Dropping it stops its watchers
/// and publisher.
pub struct K8sSource {
    node_name: String,
    pods: Reader<Pod>,
    namespaces: Reader<Namespace>,
    services: Reader<k8s_openapi::api::core::v1::Service>,
    slices: Reader<K8sSlice>,
    netpols: Reader<NetworkPolicy>,
    cnps: Reader<CiliumNetworkPolicy>,
    ccnps: Reader<CiliumClusterwideNetworkPolicy>,
    nodes: Reader<CiliumNode>,
    ceps: Reader<CiliumEndpoint>,
    shared: Arc<Shared>,
    cache: Mutex<HashMap<ObjKey, (Option<String>, Parsed)>>,
    publisher: Publisher,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for K8sSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Drops what the agent never reads but would keep in memory for every object.
fn slim<K: Resource>(o: &mut K) {
    o.managed_fields_mut().clear();
    o.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// The service a Service or EndpointSlice event touches.
type KeyFn<K> = fn(&K) -> Touch;

/// Runs a watcher into a reflector store, bumping the generation on every change.
fn spawn_watch<K>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: &'static str,
    shared: Arc<Shared>,
    key: Option<KeyFn<K>>,
) -> (Reader<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, cfg)
        .default_backoff()
        .modify(slim::<K>)
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if failing {
                        info!(kind, "watch of the Kubernetes API works again");
                        failing = false;
                    }
                    match &ev {
                        watcher::Event::Apply(o) => shared.changed(kind, key.map(|f| f(o)), false),
                        watcher::Event::Delete(o) => shared.changed(kind, key.map(|f| f(o)), true),
                        watcher::Event::InitDone => shared.synced(kind),
                        watcher::Event::Init => shared.relisting(kind, None, true),
                        watcher::Event::InitApply(o) => {
                            shared.relisting(kind, key.map(|f| f(o)), false)
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(kind, error = %e, "watch of the Kubernetes API failed; retrying with backoff, the datapath keeps the last state");
                    } else {
                        debug!(kind, error = %e, "watch still failing");
                    }
                    failing = true;
                }
            }
        }
    });
    (reader, task)
}

fn service_key(s: &k8s_openapi::api::core::v1::Service) -> (String, String) {
    (s.namespace().unwrap_or_default(), s.name_any())
}

/// (namespace, service) of an EndpointSlice's label.
fn slice_service(s: &K8sSlice) -> Option<(String, String)> {
    Some((
        s.namespace().unwrap_or_default(),
        s.labels().get(SERVICE_NAME_LABEL)?.clone(),
    ))
}

fn service_touch(s: &k8s_openapi::api::core::v1::Service) -> Touch {
    Touch::Service(service_key(s))
}

fn slice_touch(s: &K8sSlice) -> Touch {
    Touch::Slice(
        s.namespace().unwrap_or_default(),
        s.name_any(),
        s.labels().get(SERVICE_NAME_LABEL).cloned(),
    )
}

impl K8sSource {
    /// Starts the watchers (on the current tokio runtime) and the publisher of this
    /// node's CiliumNode and CiliumEndpoints.
    pub fn start(client: Client, opts: K8sSourceOptions) -> Self {
        let shared = Arc::new(Shared::default());
        let mut tasks = Vec::new();
        let all = watcher::Config::default;
        let pods_cfg = all().fields(&format!("spec.nodeName={}", opts.node_name));
        macro_rules! watch {
            ($api:expr, $cfg:expr, $kind:expr, $key:expr) => {{
                let (r, t) = spawn_watch($api, $cfg, $kind, shared.clone(), $key);
                tasks.push(t);
                r
            }};
        }
        let pods = watch!(Api::all(client.clone()), pods_cfg, "Pod", None);
        let namespaces = watch!(Api::all(client.clone()), all(), "Namespace", None);
        let services = watch!(
            Api::all(client.clone()),
            all(),
            "Service",
            Some(service_touch)
        );
        let slices = watch!(
            Api::all(client.clone()),
            all(),
            SLICE_KIND,
            Some(slice_touch)
        );
        let netpols = watch!(Api::all(client.clone()), all(), "NetworkPolicy", None);
        let cnps = watch!(Api::all(client.clone()), all(), "CiliumNetworkPolicy", None);
        let ccnps = watch!(
            Api::all(client.clone()),
            all(),
            "CiliumClusterwideNetworkPolicy",
            None
        );
        let nodes = watch!(Api::all(client.clone()), all(), "CiliumNode", None);
        let ceps = watch!(Api::all(client.clone()), all(), "CiliumEndpoint", None);
        let publisher = Publisher::start(
            client,
            opts.node_name.clone(),
            opts.ipam,
            pods.clone(),
            ceps.clone(),
        );
        Self {
            node_name: opts.node_name,
            pods,
            namespaces,
            services,
            slices,
            netpols,
            cnps,
            ccnps,
            nodes,
            ceps,
            shared,
            cache: Mutex::new(HashMap::new()),
            publisher,
            tasks,
        }
    }

    /// The stores that have not finished their initial list.
    pub fn unsynced(&self) -> Vec<&'static str> {
        let j = self.shared.journal();
        KINDS
            .iter()
            .filter(|k| !j.synced.contains(*k))
            .copied()
            .collect()
    }

    /// Waits until every store has listed once, logging what it waits for.
    pub async fn wait_synced(&self) {
        let started = std::time::Instant::now();
        let mut logged = Duration::ZERO;
        loop {
            let missing = self.unsynced();
            if missing.is_empty() {
                info!(
                    ms = started.elapsed().as_millis() as u64,
                    "Kubernetes caches synced"
                );
                return;
            }
            if started.elapsed() >= logged {
                info!(waiting_for = ?missing, "waiting for the initial lists of the Kubernetes API");
                logged += Duration::from_secs(10);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Parses an object with the parser its kind belongs to, once per resourceVersion.
    fn parsed<K>(&self, kind: &'static str, obj: &K, fields: &[&str]) -> Parsed
    where
        K: Resource<DynamicType = ()> + serde::Serialize,
    {
        let key = (kind, obj.namespace(), obj.name_any());
        let rv = obj.resource_version();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((have, p)) = cache.get(&key) {
            if *have == rv {
                return p.clone();
            }
        }
        let p = parse_object(kind, obj, fields);
        cache.insert(key, (rv, p.clone()));
        p
    }

    fn policies(&self) -> Vec<PolicyObject> {
        let mut out = Vec::new();
        let mut add = |p: Parsed| {
            if let Parsed::Policies(p) = p {
                out.extend(p);
            }
        };
        for o in self.netpols.state() {
            add(self.parsed("NetworkPolicy", o.as_ref(), &["spec"]));
        }
        for o in self.cnps.state() {
            add(self.parsed("CiliumNetworkPolicy", o.as_ref(), &["spec", "specs"]));
        }
        for o in self.ccnps.state() {
            add(self.parsed(
                "CiliumClusterwideNetworkPolicy",
                o.as_ref(),
                &["spec", "specs"],
            ));
        }
        out.sort_by(|a, b| (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name)));
        out
    }

    /// Services and EndpointSlices, those of `keys` only when given.
    fn services_filtered(&self, keys: Option<&ServiceKeys>) -> (Vec<Service>, Vec<EndpointSlice>) {
        let wanted = |k: Option<(String, String)>| match (keys, k) {
            (None, _) => true,
            (Some(keys), Some(k)) => keys.contains(&k),
            (Some(_), None) => false,
        };
        let (mut services, mut slices) = (Vec::new(), Vec::new());
        // Services by name from the store; slices by name through the index of their label.
        let objects = match keys {
            Some(keys) => keys
                .iter()
                .filter_map(|(ns, name)| {
                    self.services
                        .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
                })
                .collect(),
            None => self.services.state(),
        };
        for o in objects {
            if wanted(Some(service_key(&o))) {
                if let Parsed::Services(s, _) =
                    self.parsed("Service", o.as_ref(), &["spec", "status"])
                {
                    services.extend(s);
                }
            }
        }
        let slice_objects = match keys {
            Some(keys) => {
                let j = self.shared.journal();
                keys.iter()
                    .flat_map(|(ns, svc)| {
                        j.slices.of(ns, svc).filter_map(|name| {
                            self.slices
                                .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
                        })
                    })
                    .collect()
            }
            None => self.slices.state(),
        };
        // The label is checked again: the store may be an event ahead of the index.
        for o in slice_objects {
            if wanted(slice_service(&o)) {
                if let Parsed::Services(_, s) = self.parsed(
                    "EndpointSlice",
                    o.as_ref(),
                    &["addressType", "endpoints", "ports"],
                ) {
                    slices.extend(s);
                }
            }
        }
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        slices.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        (services, slices)
    }

    fn nodes(&self) -> Vec<NodeObject> {
        let mut out: Vec<NodeObject> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| node_object(n))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn remote_endpoints(&self, nodes: &[NodeObject]) -> BTreeMap<String, Vec<RemoteEndpoint>> {
        let by_ip: HashMap<String, &str> = nodes
            .iter()
            .map(|n| (n.ip.to_string(), n.name.as_str()))
            .collect();
        let mut out: BTreeMap<String, Vec<RemoteEndpoint>> = BTreeMap::new();
        for cep in self.ceps.state() {
            let Some(st) = &cep.status else { continue };
            let (Some(id), Some(net)) = (&st.identity, &st.networking) else {
                continue;
            };
            let Some(node) = net.node.as_deref().and_then(|ip| by_ip.get(ip)) else {
                continue;
            };
            if *node == self.node_name {
                continue;
            }
            for a in &net.addressing {
                if let Some(ip) = a.ipv4.as_deref().and_then(|s| s.parse().ok()) {
                    out.entry(node.to_string())
                        .or_default()
                        .push(RemoteEndpoint {
                            ip,
                            identity: id.id as u32,
                        });
                }
            }
        }
        for eps in out.values_mut() {
            eps.sort_by_key(|e| e.ip);
        }
        out
    }

    fn forget_gone(&self) {
        let mut live: BTreeSet<ObjKey> = BTreeSet::new();
        macro_rules! live {
            ($reader:expr, $kind:expr) => {
                for o in $reader.state() {
                    live.insert(($kind, o.namespace(), o.name_any()));
                }
            };
        }
        live!(self.netpols, "NetworkPolicy");
        live!(self.cnps, "CiliumNetworkPolicy");
        live!(self.ccnps, "CiliumClusterwideNetworkPolicy");
        live!(self.services, "Service");
        live!(self.slices, "EndpointSlice");
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|k, _| live.contains(k));
    }
}

/// A CiliumNode as the store's NodeObject: its InternalIP and first IPv4 pod CIDR
/// (nodes without both are not routable yet and left out).
pub fn node_object(n: &CiliumNode) -> Option<NodeObject> {
    let ip: Ipv4Addr = n
        .spec
        .addresses
        .iter()
        .filter(|a| a.type_.as_deref() == Some("InternalIP"))
        .find_map(|a| a.ip.as_deref()?.parse().ok())?;
    let pod_cidr = n
        .spec
        .ipam
        .as_ref()?
        .pod_cidrs
        .iter()
        .find_map(|c| c.parse::<ipnet::Ipv4Net>().ok())?;
    Some(NodeObject {
        name: n.name_any(),
        ip,
        pod_cidr,
    })
}

/// A pod as the store's PodObject: labels, service account, named container ports.
pub fn pod_object(p: &Pod) -> PodObject {
    let mut named_ports = BTreeMap::new();
    if let Some(spec) = &p.spec {
        for c in &spec.containers {
            for port in c.ports.iter().flatten() {
                if let Some(name) = &port.name {
                    named_ports.insert(
                        name.clone(),
                        format!(
                            "{}/{}",
                            port.protocol.as_deref().unwrap_or("TCP"),
                            port.container_port
                        ),
                    );
                }
            }
        }
    }
    PodObject {
        name: p.name_any(),
        namespace: p.namespace().unwrap_or_else(|| "default".into()),
        labels: p.labels().clone(),
        service_account: p.spec.as_ref().and_then(|s| s.service_account_name.clone()),
        named_ports,
    }
}

/// Runs the local-apply parser of `kind` on `obj` (its identity, labels and `fields`).
fn parse_object<K>(kind: &'static str, obj: &K, fields: &[&str]) -> Parsed
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    let v = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => {
            warn!(kind, name = %obj.name_any(), error = %e, "cannot serialize object; ignored");
            return Parsed::Invalid;
        }
    };
    let mut doc = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": obj.name_any(), "labels": obj.labels()},
    });
    if let Some(ns) = obj.namespace() {
        doc["metadata"]["namespace"] = json!(ns);
    }
    for f in fields {
        if let Some(x) = v.get(*f).filter(|x| !x.is_null()) {
            doc[*f] = x.clone();
        }
    }
    let text = doc.to_string();
    let name = match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    };
    if matches!(kind, "Service" | "EndpointSlice") {
        match crate::lb::parse::parse_stream(&text) {
            Ok(p) => Parsed::Services(p.services, p.slices),
            Err(e) => {
                warn!(kind, %name, error = %e, "invalid object left out of load balancing; fix it");
                Parsed::Invalid
            }
        }
    } else {
        match crate::policy::parse::parse_stream(&text) {
            Ok(p) => Parsed::Policies(p.policies),
            Err(e) => {
                warn!(kind, %name, error = %e, "invalid policy left out (the others are enforced); fix it");
                Parsed::Invalid
            }
        }
    }
}

impl Source for K8sSource {
    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    fn changes_since(&self, since: u64) -> Result<Changes, SourceError> {
        let j = self.shared.journal();
        if j.synced.len() < KINDS.len() || since < j.floor || since >= j.generation {
            return Ok(Changes::All);
        }
        let mut keys = ServiceKeys::new();
        for (g, k) in &j.entries {
            if *g <= since {
                continue;
            }
            match k {
                Some(k) => {
                    keys.insert(k.clone());
                }
                None => return Ok(Changes::All),
            }
        }
        Ok(Changes::Services {
            generation: j.generation,
            keys,
        })
    }

    fn snapshot(&self) -> Result<Snapshot, SourceError> {
        let missing = self.unsynced();
        if !missing.is_empty() {
            return Err(SourceError::NotSynced(missing.join(", ")));
        }
        let generation = self.shared.journal().generation;
        let mut pods: Vec<PodObject> = self
            .pods
            .state()
            .iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&self.node_name)
            })
            .map(|p| pod_object(p))
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let namespaces = self
            .namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        let (services, slices) = self.services_filtered(None);
        let nodes = self.nodes();
        let endpoints = self.remote_endpoints(&nodes);
        let snap = Snapshot {
            generation,
            pods,
            namespaces,
            policies: self.policies(),
            services,
            slices,
            nodes,
            endpoints,
        };
        self.forget_gone();
        Ok(snap)
    }

    fn services_for(&self, keys: &ServiceKeys) -> (Vec<Service>, Vec<EndpointSlice>) {
        self.services_filtered(Some(keys))
    }

    fn publish_node(&self, node: &OwnNode) -> Result<(), SourceError> {
        self.publisher.node(node.clone());
        Ok(())
    }

    fn publish_endpoints(&self, _node: &str, eps: &[LocalEndpoint]) -> Result<(), SourceError> {
        self.publisher.endpoints(eps.to_vec());
        Ok(())
    }

    fn publish_status(&self, status: &NodeStatus) {
        self.publisher.status(status.clone());
    }
}

#[cfg(test)]
mod tests;
