//! What the agent writes to the Kubernetes API about itself: its CiliumNode and a
//! CiliumEndpoint per local endpoint, by server-side apply with field manager
//! [`FIELD_MANAGER`].
//!
//! - **Start** ([`bootstrap_node`]): the node address comes from `--node-ip` or the
//!   Node's InternalIP; the CiliumNode is applied with it; then the pod CIDR is awaited:
//!   `cluster-pool` IPAM waits until the operator has written `spec.ipam.podCIDRs` of
//!   the CiliumNode (the agent never writes that field then), `kubernetes` IPAM takes
//!   `Node.spec.podCIDR(s)` (waiting for kube-controller-manager) and writes it into the
//!   CiliumNode itself, as Cilium does.
//! - **Running** ([`Publisher`]): a desired state (this node with its router address,
//!   its annotations, its endpoints) that the agent updates without waiting, and one task
//!   that applies it, retrying after failures (an API server away never blocks the
//!   datapath). A CiliumEndpoint (namespace/name of the pod, owner reference to it) is
//!   applied once the endpoint has its identity and deleted when the endpoint goes; at
//!   the first pass, CiliumEndpoints of this node that no endpoint backs any more are
//!   deleted too (endpoints removed while the agent was down).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    runtime::reflector::Store as Reader,
    Api, Client, ResourceExt,
};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{
    source::{LocalEndpoint, NodeStatus, OwnNode},
    source_k8s::K8sError,
};
use crate::k8s::crds::{CiliumEndpoint, CiliumNode};

/// The field manager of everything the agent applies.
pub const FIELD_MANAGER: &str = "cilium-agent";
/// "true" or "false": whether the agent replaces kube-proxy (socket LB on), as
/// `cilium status` reports it. Read by `cilium migrate kube-proxy`.
pub const ANNOTATION_KPR: &str = "cilium.io/kube-proxy-replacement";
/// The number of services programmed in the LB maps. Read by `cilium migrate kube-proxy`.
pub const ANNOTATION_SERVICES: &str = "cilium.io/services";
/// kube-proxy's iptables chains left on the node (0 once the agent replaced it).
pub const ANNOTATION_KUBE_PROXY_CHAINS: &str = "cilium.io/kube-proxy-chains";
/// How long a failed write waits before the next attempt.
const RETRY: Duration = Duration::from_secs(2);

/// Where the node's pod CIDR comes from (Cilium's `ipam` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IpamMode {
    /// The operator hands out CIDRs from its pool into CiliumNode spec.ipam.podCIDRs.
    #[default]
    ClusterPool,
    /// Node.spec.podCIDR, allocated by kube-controller-manager.
    Kubernetes,
}

/// The annotations of this node's CiliumNode.
pub fn node_annotations(status: &NodeStatus) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        (
            ANNOTATION_KPR.to_string(),
            status.kube_proxy_replacement.to_string(),
        ),
        (ANNOTATION_SERVICES.to_string(), status.services.to_string()),
    ]);
    // Absent when the agent cannot inspect iptables (no iptables binaries with it).
    if let Some(n) = status.kube_proxy_chains {
        a.insert(ANNOTATION_KUBE_PROXY_CHAINS.to_string(), n.to_string());
    }
    a
}

/// The CiliumNode this agent applies: addresses, the pod CIDR when the agent owns it
/// (`kubernetes` IPAM), annotations once known.
pub fn node_body(
    name: &str,
    ip: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    own_pod_cidr: Option<ipnet::Ipv4Net>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Value {
    let mut addresses = Vec::new();
    if let Some(ip) = ip {
        addresses.push(json!({"type": "InternalIP", "ip": ip.to_string()}));
    }
    if let Some(r) = router {
        addresses.push(json!({"type": "CiliumInternalIP", "ip": r.to_string()}));
    }
    let mut body = json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNode",
        "metadata": {"name": name},
        "spec": {"addresses": addresses},
    });
    if let Some(c) = own_pod_cidr {
        body["spec"]["ipam"] = json!({"podCIDRs": [c.to_string()]});
    }
    if let Some(a) = annotations {
        body["metadata"]["annotations"] = json!(a);
    }
    body
}

/// The CiliumEndpoint of one local endpoint (its pod's namespace and name).
pub fn endpoint_body(
    ep: &LocalEndpoint,
    namespace: &str,
    pod: &str,
    pod_uid: Option<&str>,
    node_ip: Option<Ipv4Addr>,
) -> Value {
    let mut networking = json!({"addressing": [{"ipv4": ep.ip.to_string()}]});
    if let Some(ip) = node_ip {
        networking["node"] = json!(ip.to_string());
    }
    let mut body = json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEndpoint",
        "metadata": {"name": pod, "namespace": namespace},
        "status": {
            "id": ep.id,
            "identity": {"id": ep.identity},
            "networking": networking,
            "state": "ready",
            "external-identifiers": {
                "k8s-namespace": namespace,
                "k8s-pod-name": pod,
                "pod-name": format!("{namespace}/{pod}"),
            },
        },
    });
    if let Some(uid) = pod_uid {
        body["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid,
        }]);
    }
    body
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// What [`bootstrap_node`] needs.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub node_name: String,
    /// `--node-ip`, if given (else the Node's InternalIP).
    pub node_ip: Option<Ipv4Addr>,
    pub ipam: IpamMode,
    /// How often to look again while waiting (for the Node, its CIDR, the operator).
    pub poll: Duration,
}

/// What the node learnt at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSetup {
    pub ip: Option<Ipv4Addr>,
    pub pod_cidr: ipnet::Ipv4Net,
}

/// Logs a wait at its start and every 30 s.
struct Waiting {
    started: std::time::Instant,
    next: Duration,
}

impl Waiting {
    fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            next: Duration::ZERO,
        }
    }

    fn due(&mut self) -> bool {
        if self.started.elapsed() >= self.next {
            self.next += Duration::from_secs(30);
            true
        } else {
            false
        }
    }
}

fn first_v4(cidrs: impl IntoIterator<Item = String>) -> Option<ipnet::Ipv4Net> {
    cidrs.into_iter().find_map(|c| c.parse().ok())
}

/// The Node object's IPv4 InternalIP and IPv4 pod CIDR.
fn node_facts(n: &Node) -> (Option<Ipv4Addr>, Option<ipnet::Ipv4Net>) {
    let ip = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| match a.address.parse() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        });
    let cidr = n.spec.as_ref().and_then(|s| {
        first_v4(
            s.pod_cidrs
                .clone()
                .unwrap_or_default()
                .into_iter()
                .chain(s.pod_cidr.clone()),
        )
    });
    (ip, cidr)
}

/// Applies this node's CiliumNode and waits for its pod CIDR; see the module
/// documentation. Waits as long as it takes (logging what for); fails on what waiting
/// cannot fix (no Node of that name).
pub async fn bootstrap_node(client: &Client, o: &BootstrapOptions) -> Result<NodeSetup, K8sError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let cnodes: Api<CiliumNode> = Api::all(client.clone());
    let name = &o.node_name;
    let mut ip = o.node_ip;
    let mut own_cidr = None;
    if ip.is_none() || o.ipam == IpamMode::Kubernetes {
        let mut waiting = Waiting::new();
        loop {
            let node = match nodes.get_opt(name).await {
                Ok(Some(n)) => n,
                Ok(None) => {
                    return Err(K8sError::Node(format!(
                        "Node {name:?} does not exist in the cluster: --node-name (CILIUM_NODE_NAME, the pod's spec.nodeName in the DaemonSet) must name this node's Node object"
                    )))
                }
                Err(e) => {
                    if waiting.due() {
                        warn!(node = %name, error = %e, "reading the Node object; retrying");
                    }
                    tokio::time::sleep(o.poll).await;
                    continue;
                }
            };
            let (node_ip, cidr) = node_facts(&node);
            ip = ip.or(node_ip);
            if o.ipam == IpamMode::Kubernetes {
                match cidr {
                    Some(c) => own_cidr = Some(c),
                    None => {
                        if waiting.due() {
                            info!(node = %name, "ipam kubernetes: waiting for Node.spec.podCIDR (kube-controller-manager assigns it with --allocate-node-cidrs)");
                        }
                        tokio::time::sleep(o.poll).await;
                        continue;
                    }
                }
            }
            break;
        }
    }
    if ip.is_none() {
        warn!(node = %name, "no IPv4 InternalIP on the Node and no --node-ip: other nodes cannot route to this one");
    }
    let body = node_body(name, ip, None, own_cidr, None);
    let mut waiting = Waiting::new();
    loop {
        match cnodes
            .patch(name, &apply_params(), &Patch::Apply(&body))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                if waiting.due() {
                    warn!(node = %name, error = %e, "applying the CiliumNode; retrying");
                }
                tokio::time::sleep(o.poll).await;
            }
        }
    }
    info!(node = %name, ip = ?ip, ipam = ?o.ipam, "CiliumNode applied");
    if let Some(c) = own_cidr {
        return Ok(NodeSetup { ip, pod_cidr: c });
    }
    let mut waiting = Waiting::new();
    loop {
        match cnodes.get_opt(name).await {
            Ok(Some(n)) => {
                let cidrs = n.spec.ipam.map(|i| i.pod_cidrs).unwrap_or_default();
                if let Some(c) = first_v4(cidrs) {
                    info!(node = %name, pod_cidr = %c, "pod CIDR assigned by the operator");
                    return Ok(NodeSetup { ip, pod_cidr: c });
                }
                if waiting.due() {
                    info!(node = %name, "ipam cluster-pool: waiting for the operator to assign spec.ipam.podCIDRs of this CiliumNode (is cilium-operator running?)");
                }
            }
            Ok(None) => {
                if waiting.due() {
                    warn!(node = %name, "the CiliumNode is gone while waiting for its pod CIDR; applying it again");
                }
                let _ = cnodes
                    .patch(name, &apply_params(), &Patch::Apply(&body))
                    .await;
            }
            Err(e) => {
                if waiting.due() {
                    warn!(node = %name, error = %e, "reading the CiliumNode; retrying");
                }
            }
        }
        tokio::time::sleep(o.poll).await;
    }
}

/// What the agent wants the API to say about this node.
#[derive(Debug, Clone, Default, PartialEq)]
struct Desired {
    node: Option<OwnNode>,
    status: Option<NodeStatus>,
    endpoints: Option<Vec<LocalEndpoint>>,
}

/// Applies the desired CiliumNode and CiliumEndpoints in the background; see the
/// module documentation. Dropping it stops the task.
pub struct Publisher {
    tx: tokio::sync::watch::Sender<Desired>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    /// Starts the task (on the current tokio runtime); `pods` give owner references,
    /// `ceps` the CiliumEndpoints left from before a restart.
    pub fn start(
        client: Client,
        node_name: String,
        ipam: IpamMode,
        pods: Reader<Pod>,
        ceps: Reader<CiliumEndpoint>,
    ) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(Desired::default());
        let mut w = Writer {
            nodes: Api::all(client.clone()),
            client,
            node_name,
            ipam,
            pods,
            ceps,
            applied_node: None,
            applied_eps: BTreeMap::new(),
            pruned: false,
        };
        let task = tokio::spawn(async move { w.run(rx).await });
        Self { tx, task }
    }

    pub fn node(&self, n: OwnNode) {
        self.tx.send_if_modified(|d| {
            let changed = d.node.as_ref() != Some(&n);
            d.node = Some(n);
            changed
        });
    }

    pub fn status(&self, s: NodeStatus) {
        self.tx.send_if_modified(|d| {
            let changed = d.status.as_ref() != Some(&s);
            d.status = Some(s);
            changed
        });
    }

    pub fn endpoints(&self, eps: Vec<LocalEndpoint>) {
        self.tx.send_if_modified(|d| {
            let changed = d.endpoints.as_ref() != Some(&eps);
            d.endpoints = Some(eps);
            changed
        });
    }
}

struct Writer {
    client: Client,
    nodes: Api<CiliumNode>,
    node_name: String,
    ipam: IpamMode,
    pods: Reader<Pod>,
    ceps: Reader<CiliumEndpoint>,
    applied_node: Option<Value>,
    /// (namespace, name) -> the body last applied.
    applied_eps: BTreeMap<(String, String), Value>,
    pruned: bool,
}

impl Writer {
    async fn run(&mut self, mut rx: tokio::sync::watch::Receiver<Desired>) {
        loop {
            let want = rx.borrow_and_update().clone();
            let done = self.reconcile(&want).await;
            if done {
                if rx.changed().await.is_err() {
                    return;
                }
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        }
    }

    /// One pass; false when something failed (logged) and must be retried.
    async fn reconcile(&mut self, want: &Desired) -> bool {
        let mut ok = true;
        if let Some(node) = &want.node {
            let own_cidr = (self.ipam == IpamMode::Kubernetes).then_some(node.pod_cidr);
            let annotations = want.status.as_ref().map(node_annotations);
            let body = node_body(
                &node.name,
                node.ip,
                Some(node.router),
                own_cidr,
                annotations.as_ref(),
            );
            if self.applied_node.as_ref() != Some(&body) {
                match self
                    .nodes
                    .patch(&self.node_name, &apply_params(), &Patch::Apply(&body))
                    .await
                {
                    Ok(_) => self.applied_node = Some(body),
                    Err(e) => {
                        warn!(node = %self.node_name, error = %e, "applying the CiliumNode; retrying");
                        ok = false;
                    }
                }
            }
        }
        if let Some(eps) = &want.endpoints {
            let node_ip = want.node.as_ref().and_then(|n| n.ip);
            ok &= self.reconcile_endpoints(eps, node_ip).await;
        }
        ok
    }

    async fn reconcile_endpoints(
        &mut self,
        eps: &[LocalEndpoint],
        node_ip: Option<Ipv4Addr>,
    ) -> bool {
        let mut desired: BTreeMap<(String, String), Value> = BTreeMap::new();
        for ep in eps.iter().filter(|e| e.identity != 0) {
            let Some(pod) = &ep.pod else { continue };
            let ns = ep.namespace.clone().unwrap_or_else(|| "default".into());
            let uid = self
                .pods
                .state()
                .iter()
                .find(|p| p.name_any() == *pod && p.namespace().as_deref() == Some(&ns))
                .and_then(|p| p.uid());
            let body = endpoint_body(ep, &ns, pod, uid.as_deref(), node_ip);
            desired.insert((ns, pod.clone()), body);
        }
        let mut ok = true;
        if !self.pruned {
            if let Some(ip) = node_ip.map(|i| i.to_string()) {
                for cep in self.ceps.state() {
                    let here = cep
                        .status
                        .as_ref()
                        .and_then(|s| s.networking.as_ref())
                        .and_then(|n| n.node.as_deref())
                        == Some(ip.as_str());
                    let key = (cep.namespace().unwrap_or_default(), cep.name_any());
                    if here && !desired.contains_key(&key) {
                        self.applied_eps.insert(key, Value::Null);
                    }
                }
            }
            self.pruned = true;
        }
        for (key, body) in &desired {
            if self.applied_eps.get(key) == Some(body) {
                continue;
            }
            let api: Api<CiliumEndpoint> = Api::namespaced(self.client.clone(), &key.0);
            match api
                .patch(&key.1, &apply_params(), &Patch::Apply(body))
                .await
            {
                Ok(_) => {
                    info!(endpoint = %format!("{}/{}", key.0, key.1), identity = %body["status"]["identity"]["id"], "CiliumEndpoint applied");
                    self.applied_eps.insert(key.clone(), body.clone());
                }
                Err(e) => {
                    warn!(endpoint = %format!("{}/{}", key.0, key.1), error = %e, "applying the CiliumEndpoint; retrying");
                    ok = false;
                }
            }
        }
        let gone: Vec<(String, String)> = self
            .applied_eps
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let api: Api<CiliumEndpoint> = Api::namespaced(self.client.clone(), &key.0);
            match api.delete(&key.1, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    warn!(endpoint = %format!("{}/{}", key.0, key.1), error = %e, "deleting the CiliumEndpoint; retrying");
                    ok = false;
                    continue;
                }
            }
            info!(endpoint = %format!("{}/{}", key.0, key.1), "CiliumEndpoint deleted");
            self.applied_eps.remove(&key);
        }
        ok
    }
}
