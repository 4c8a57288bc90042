//! `cilium connectivity test` on a Kubernetes cluster: the [`Platform`] over the API.
//!
//! Deploys cilium-cli's workloads into the test namespace (`cilium-test-1`) by
//! server-side apply (field manager `cilium-cli`): Deployments client, client2 (beside
//! client), echo-same-node (beside client), echo-other-node (away from client), the
//! host-netns DaemonSet, and NodePort Services for the echoes; every pod runs the image
//! of the installed agent DaemonSet (`cilium echo-server`, `cilium pause`). Probes run
//! `cilium probe` in the pods through the exec subresource, as cilium-cli runs curl and
//! ping; policies go into the test namespace; a policy counts as applied once every
//! agent lists it among those it enforces (`cilium policy get` in the agent pods); drops
//! come from each agent's `cilium bpf metrics list`. Actions from outside the cluster are
//! skipped: nothing runs outside here.
use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::Mutex,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Event, Namespace, Node, Pod, Service},
};
use kube::{
    api::{Api, AttachParams, ListParams},
    Client,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::{From, Options, Platform, Skipped, Workloads, ECHO_PORT, HOSTPORT, HTTP_GET};
use crate::{
    install::render::Document,
    k8s::{
        apply::{self, Object, AGENT_DAEMONSET},
        cluster::{self, ClusterOptions},
        status::{container_problems, pod_ready, AGENT_SELECTOR},
    },
};

pub const DEFAULT_TEST_NAMESPACE: &str = "cilium-test-1";
/// The agent's container in the DaemonSet's pods.
const AGENT_CONTAINER: &str = "cilium-agent";
/// The workloads: (Deployment name, labels, whose node: Some(true) beside client,
/// Some(false) away from it).
const CLIENT: &str = "client";
const CLIENT2: &str = "client2";
const ECHO_SAME: &str = "echo-same-node";
const ECHO_OTHER: &str = "echo-other-node";
const HOST_NETNS: &str = "host-netns";

/// Where and how on the cluster.
#[derive(Debug, Clone)]
pub struct K8sOptions {
    pub cluster: ClusterOptions,
    /// Where Cilium runs (its agent DaemonSet).
    pub cilium_namespace: String,
    pub test_namespace: String,
    /// The test pods' image; default: the agent DaemonSet's.
    pub image: Option<String>,
    /// The world: an HTTP server outside the cluster, and a second address (cilium-cli's
    /// --external-ip and --external-other-ip).
    pub external_ip: String,
    pub external_other_ip: String,
    pub external_port: u16,
    /// How long the test pods may take to become Ready.
    pub ready_timeout: Duration,
    /// How long the agents may take to enforce a policy change.
    pub settle_timeout: Duration,
}

impl Default for K8sOptions {
    fn default() -> Self {
        Self {
            cluster: ClusterOptions::default(),
            cilium_namespace: "kube-system".into(),
            test_namespace: DEFAULT_TEST_NAMESPACE.into(),
            image: None,
            external_ip: "1.1.1.1".into(),
            external_other_ip: "1.0.0.1".into(),
            external_port: 80,
            ready_timeout: Duration::from_secs(300),
            settle_timeout: Duration::from_secs(60),
        }
    }
}

/// The cluster as a connectivity test platform.
pub struct K8sEnv {
    client: Client,
    rt: tokio::runtime::Handle,
    k: K8sOptions,
    /// The scenarios' pod names (`ct-client`, ...) -> pod names on the cluster.
    pods: BTreeMap<&'static str, String>,
    /// The host-netns pod on the clients' node.
    host_pod: String,
    workloads: Workloads,
    /// What the agents should enforce in the test namespace: `Kind/namespace/name`.
    policies: Mutex<BTreeSet<String>>,
}

/// `cilium connectivity test` against the cluster `k` names.
pub async fn run(opts: Options, k: K8sOptions) -> Result<i32> {
    let (filters, excludes) = super::test_filters(&opts.tests)?;
    let (client, url) = cluster::connect(&k.cluster).await?;
    if !opts.json {
        println!(
            "🔭 Deploying connectivity test workloads in namespace {} on cluster {url}...",
            k.test_namespace
        );
    }
    let env = deploy(client, &opts, k).await?;
    super::run_on(&env, &opts, &filters, &excludes).await
}

fn labels(name: &str) -> Value {
    match name {
        CLIENT => json!({"kind": "client", "name": CLIENT}),
        CLIENT2 => json!({"kind": "client", "name": CLIENT2, "other": "client"}),
        ECHO_SAME => json!({"kind": "echo", "name": ECHO_SAME}),
        ECHO_OTHER => json!({"kind": "echo", "name": ECHO_OTHER}),
        _ => json!({"kind": HOST_NETNS, "name": HOST_NETNS}),
    }
}

/// Required (anti-)affinity to the client pod's node.
fn client_affinity(beside: bool) -> Value {
    let term = json!([{
        "labelSelector": {"matchLabels": {"name": CLIENT}},
        "topologyKey": "kubernetes.io/hostname",
    }]);
    let key = if beside {
        "podAffinity"
    } else {
        "podAntiAffinity"
    };
    json!({ key: {"requiredDuringSchedulingIgnoredDuringExecution": term} })
}

/// Every object of the test workloads, in apply order.
pub fn workload_objects(ns: &str, image: &str, pull_policy: &str, two_nodes: bool) -> Vec<Value> {
    let mut v = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})];
    let echoes: &[&str] = if two_nodes {
        &[ECHO_SAME, ECHO_OTHER]
    } else {
        &[ECHO_SAME]
    };
    for e in echoes {
        v.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": e, "namespace": ns, "labels": labels(e)},
            "spec": {
                "type": "NodePort",
                "selector": {"name": e},
                "ports": [{"name": "http", "port": ECHO_PORT, "targetPort": ECHO_PORT, "protocol": "TCP"}],
            },
        }));
    }
    let container = |name: &str, command: Vec<String>| {
        let mut c = json!({
            "name": name,
            "image": image,
            "imagePullPolicy": pull_policy,
            "command": command,
        });
        if name.starts_with("echo") {
            c["ports"] = json!([{"name": "http", "containerPort": ECHO_PORT, "hostPort": HOSTPORT, "protocol": "TCP"}]);
            c["readinessProbe"] =
                json!({"httpGet": {"path": "/", "port": ECHO_PORT}, "periodSeconds": 2});
        }
        c
    };
    let cmd = |args: &[&str]| -> Vec<String> {
        std::iter::once("cilium")
            .chain(args.iter().copied())
            .map(str::to_string)
            .collect()
    };
    let mut deployments = vec![
        (CLIENT, cmd(&["pause"]), None),
        (CLIENT2, cmd(&["pause"]), Some(true)),
        (
            ECHO_SAME,
            cmd(&["echo-server", "--port", "8080", "--name", ECHO_SAME]),
            Some(true),
        ),
    ];
    if two_nodes {
        deployments.push((
            ECHO_OTHER,
            cmd(&["echo-server", "--port", "8080", "--name", ECHO_OTHER]),
            Some(false),
        ));
    }
    for (name, command, beside) in deployments {
        let mut spec = json!({
            "containers": [container(name, command)],
            // `cilium echo-server` as PID 1 ignores SIGTERM: do not wait 30s for it.
            "terminationGracePeriodSeconds": 1,
        });
        if let Some(b) = beside {
            spec["affinity"] = client_affinity(b);
        }
        v.push(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": labels(name)},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"name": name}},
                "template": {"metadata": {"labels": labels(name)}, "spec": spec},
            },
        }));
    }
    v.push(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": HOST_NETNS, "namespace": ns, "labels": labels(HOST_NETNS)},
        "spec": {
            "selector": {"matchLabels": {"name": HOST_NETNS}},
            "template": {"metadata": {"labels": labels(HOST_NETNS)}, "spec": {
                "hostNetwork": true,
                "dnsPolicy": "ClusterFirstWithHostNet",
                "terminationGracePeriodSeconds": 1,
                "containers": [container(HOST_NETNS, cmd(&["pause"]))],
            }},
        },
    }));
    v
}

/// JSON objects as apply-able objects (JSON is YAML).
fn as_objects(values: &[Value], ns: &str) -> Result<Vec<Object>> {
    let docs: Vec<Document> = values
        .iter()
        .map(|v| Document {
            source: "connectivity test".into(),
            yaml: v.to_string(),
        })
        .collect();
    Ok(apply::objects(&docs, ns)?)
}

/// Nodes pods can be scheduled on: not cordoned, no NoSchedule/NoExecute taint.
fn schedulable(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| {
            let spec = n.spec.clone().unwrap_or_default();
            !spec.unschedulable.unwrap_or(false)
                && !spec
                    .taints
                    .unwrap_or_default()
                    .iter()
                    .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

fn internal_ip(nodes: &[Node], name: &str) -> Option<String> {
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))?
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
}

/// Deploys the workloads, waits until their pods are Ready, and reads their addresses.
pub async fn deploy(client: Client, opts: &Options, k: K8sOptions) -> Result<K8sEnv> {
    let ns = k.test_namespace.clone();
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), &k.cilium_namespace);
    let agent = ds
        .get_opt(AGENT_DAEMONSET)
        .await
        .map_err(|e| {
            anyhow!(
                "reading DaemonSet {}/{AGENT_DAEMONSET}: {}",
                k.cilium_namespace,
                cluster::describe(&e)
            )
        })?
        .ok_or_else(|| {
            anyhow!(
                "Cilium is not installed in namespace {0}: DaemonSet {0}/{AGENT_DAEMONSET} not found; \
                 run `cilium install`, or pass -n NAMESPACE where it runs",
                k.cilium_namespace
            )
        })?;
    let agent_container = agent
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.name == AGENT_CONTAINER)
                .or(s.containers.first())
                .cloned()
        });
    let image = match (&k.image, &agent_container) {
        (Some(i), _) => i.clone(),
        (None, Some(c)) => c
            .image
            .clone()
            .ok_or_else(|| anyhow!("the agent DaemonSet names no image: pass --image REFERENCE"))?,
        (None, None) => bail!("the agent DaemonSet has no container: pass --image REFERENCE"),
    };
    let pull_policy = agent_container
        .and_then(|c| c.image_pull_policy)
        .unwrap_or_else(|| "IfNotPresent".into());

    let nodes: Vec<Node> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow!("listing nodes: {}", cluster::describe(&e)))?
        .items;
    let ready_nodes = schedulable(&nodes);
    let two = ready_nodes.len() >= 2 && !opts.single_node;
    if !opts.single_node && !two && !opts.json {
        println!(
            "ℹ️  {} schedulable node(s): tests that need two nodes are skipped",
            ready_nodes.len()
        );
    }
    for o in as_objects(&workload_objects(&ns, &image, &pull_policy, two), &ns)? {
        apply::apply(&client, &o).await?;
        if !opts.json {
            println!("✨ applied {}", o.r);
        }
    }
    if !opts.json {
        println!("⌛ Waiting for the test pods to be Ready (image {image})...");
    }
    let mut names = vec![CLIENT, CLIENT2, ECHO_SAME, HOST_NETNS];
    if two {
        names.push(ECHO_OTHER);
    }
    let pods = wait_ready(&client, &ns, &names, k.ready_timeout).await?;
    let first = |name: &str| -> Result<&Pod> {
        pods.get(name)
            .and_then(|p| p.first())
            .with_context(|| format!("no pod of {name} in {ns}"))
    };
    let ip = |name: &str| -> Result<String> {
        first(name)?
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .with_context(|| format!("pod of {name} in {ns} has no address"))
    };
    let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let client_node = node_of(first(CLIENT)?).context("the client pod has no node")?;
    let host_pod = pods
        .get(HOST_NETNS)
        .into_iter()
        .flatten()
        .find(|p| node_of(p).as_deref() == Some(client_node.as_str()))
        .and_then(|p| p.metadata.name.clone())
        .with_context(|| format!("no {HOST_NETNS} pod on the client's node {client_node}"))?;
    let mut node_ips = vec![internal_ip(&nodes, &client_node)
        .with_context(|| format!("node {client_node} has no InternalIP"))?];
    let echo_other = if two {
        let other_node = node_of(first(ECHO_OTHER)?).context("echo-other-node has no node")?;
        if other_node == client_node {
            bail!(
                "echo-other-node runs on the client's node {client_node} despite its anti-affinity"
            );
        }
        node_ips.extend(internal_ip(&nodes, &other_node));
        Some(ip(ECHO_OTHER)?)
    } else {
        None
    };
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let mut svc = BTreeMap::new();
    for name in [ECHO_SAME, ECHO_OTHER].iter().take(if two { 2 } else { 1 }) {
        let s = services
            .get(name)
            .await
            .map_err(|e| anyhow!("reading Service {ns}/{name}: {}", cluster::describe(&e)))?;
        let spec = s.spec.unwrap_or_default();
        let cluster_ip = spec
            .cluster_ip
            .with_context(|| format!("Service {ns}/{name} has no ClusterIP"))?;
        let node_port = spec
            .ports
            .unwrap_or_default()
            .first()
            .and_then(|p| p.node_port)
            .with_context(|| format!("Service {ns}/{name} has no NodePort"))?;
        svc.insert(*name, (cluster_ip, node_port as u16));
    }
    let (svc_same, nodeport_same) = svc.get(ECHO_SAME).cloned().unwrap_or_default();
    let (svc_other, nodeport_other) = svc.get(ECHO_OTHER).cloned().unwrap_or_default();
    let mut scenario_pods = BTreeMap::new();
    for (alias, name) in [
        ("ct-client", CLIENT),
        ("ct-client2", CLIENT2),
        ("ct-echo-same", ECHO_SAME),
        ("ct-echo-other", ECHO_OTHER),
    ] {
        if let Some(n) = pods
            .get(name)
            .and_then(|p| p.first())
            .and_then(|p| p.metadata.name.clone())
        {
            scenario_pods.insert(alias, n);
        }
    }
    let workloads = Workloads {
        echo_same: ip(ECHO_SAME)?,
        echo_other,
        client: ip(CLIENT)?,
        client2: ip(CLIENT2)?,
        external_ip: node_ips[0].clone(),
        node_ips,
        svc_same,
        svc_other,
        nodeport_same,
        nodeport_other,
        world_ip: k.external_ip.clone(),
        world_other_ip: k.external_other_ip.clone(),
        world_port: k.external_port,
        world_cidr: format!("{}/32", k.external_ip),
    };
    Ok(K8sEnv {
        client,
        rt: tokio::runtime::Handle::current(),
        k,
        pods: scenario_pods,
        host_pod,
        workloads,
        policies: Mutex::new(BTreeSet::new()),
    })
}

/// Waits until every workload has its pods Running and Ready; on timeout, names each
/// pod that is not, with its container problems and last event.
async fn wait_ready(
    client: &Client,
    ns: &str,
    names: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<String, Vec<Pod>>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut by_name: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
        let mut pending: Vec<Pod> = Vec::new();
        let mut missing: Vec<&str> = Vec::new();
        for name in names {
            let list = api
                .list(&ListParams::default().labels(&format!("name={name}")))
                .await
                .map_err(|e| {
                    anyhow!(
                        "listing pods name={name} in {ns}: {}",
                        cluster::describe(&e)
                    )
                })?
                .items;
            if list.is_empty() {
                missing.push(name);
            }
            for p in &list {
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if !(running && pod_ready(p)) {
                    pending.push(p.clone());
                }
            }
            by_name.insert(name.to_string(), list);
        }
        if pending.is_empty() && missing.is_empty() {
            return Ok(by_name);
        }
        if tokio::time::Instant::now() >= deadline {
            let events: Api<Event> = Api::namespaced(client.clone(), ns);
            let mut why = Vec::new();
            for m in missing {
                why.push(format!(
                    "{m} has no pod (see `kubectl -n {ns} describe deployment,daemonset {m}`)"
                ));
            }
            for p in pending {
                let name = p.metadata.name.clone().unwrap_or_default();
                let phase = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Unknown".into());
                let evs = events
                    .list(&ListParams::default().fields(&format!(
                        "involvedObject.kind=Pod,involvedObject.name={name}"
                    )))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                let last = evs
                    .iter()
                    .max_by_key(|e| {
                        e.last_timestamp
                            .as_ref()
                            .map(|t| t.0)
                            .or(e.event_time.as_ref().map(|t| t.0))
                            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
                    })
                    .map(|e| {
                        format!(
                            "; last event: {}: {}",
                            e.reason.clone().unwrap_or_default(),
                            e.message.clone().unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                let problems = container_problems(&p);
                let problems = if problems.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", problems.join("; "))
                };
                why.push(format!(
                    "pod {ns}/{name} is {phase}, not Ready{problems}{last}"
                ));
            }
            bail!(
                "the connectivity test pods did not become Ready within {}s: {}",
                timeout.as_secs(),
                why.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What an exec'd command printed and its exit code.
struct ExecOutput {
    stdout: String,
    stderr: String,
    code: i32,
}

/// The exit code in an exec's final Status (0 on Success).
fn exit_code(st: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>) -> i32 {
    let Some(st) = st else {
        return -1;
    };
    if st.status.as_deref() == Some("Success") {
        return 0;
    }
    st.details
        .and_then(|d| d.causes)
        .unwrap_or_default()
        .iter()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_ref()?.parse().ok())
        .unwrap_or(-1)
}

/// (success, detail) from `cilium probe tcp` JSON, as curl --fail judges: any HTTP
/// answer below 400 (the world's servers redirect).
fn http_verdict(json: &str) -> (bool, String) {
    let v: Value = match serde_json::from_str(json.trim()) {
        Ok(v) => v,
        Err(_) => return super::verdict(json),
    };
    let first = v["response"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let code = first
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if c < 400 => (true, format!("HTTP {c}")),
        _ => super::verdict(json),
    }
}

impl K8sEnv {
    /// Runs a future to completion from sync code: a runtime worker thread (blocking in
    /// place) or a plain thread (the actions' scoped threads).
    fn block<F: Future>(&self, f: F) -> F::Output {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.rt.block_on(f))
        } else {
            self.rt.block_on(f)
        }
    }

    async fn exec(
        &self,
        ns: &str,
        pod: &str,
        container: Option<&str>,
        command: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut ap = AttachParams::default()
            .stdin(false)
            .stdout(true)
            .stderr(true);
        if let Some(c) = container {
            ap = ap.container(c);
        }
        let what = format!("{:?} in pod {ns}/{pod}", command.join(" "));
        let run = async {
            let mut p = api
                .exec(pod, command.clone(), &ap)
                .await
                .map_err(|e| anyhow!("exec {what}: {}", cluster::describe(&e)))?;
            let mut out = p.stdout().context("exec without stdout")?;
            let mut err = p.stderr().context("exec without stderr")?;
            let status = p.take_status();
            let (mut o, mut e) = (String::new(), String::new());
            let _ = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
            let st = match status {
                Some(s) => s.await,
                None => None,
            };
            let _ = p.join().await;
            anyhow::Ok(ExecOutput {
                stdout: o,
                stderr: e,
                code: exit_code(st),
            })
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| anyhow!("exec {what} did not finish within {}s", timeout.as_secs()))?
    }

    /// The test namespace pod an action runs in.
    fn pod_of(&self, from: &From) -> Result<String> {
        match from {
            From::Pod(p) => self
                .pods
                .get(p)
                .cloned()
                .with_context(|| format!("no test pod {p} on this cluster")),
            From::Host => Ok(self.host_pod.clone()),
            From::Outside => Err(Skipped(
                "needs a client outside the cluster; Kubernetes runs none (the local cluster has one)"
                    .into(),
            )
            .into()),
        }
    }

    /// `cilium probe ...` in a test pod: its JSON.
    fn probe(&self, from: &From, args: Vec<String>, timeout: Duration) -> Result<String> {
        let pod = self.pod_of(from)?;
        let command: Vec<String> = ["cilium", "probe"]
            .iter()
            .map(|s| s.to_string())
            .chain(args)
            .collect();
        let out = self.block(self.exec(
            &self.k.test_namespace,
            &pod,
            None,
            command,
            timeout + Duration::from_secs(30),
        ))?;
        if out.stdout.trim().is_empty() {
            bail!(
                "`cilium probe` in pod {pod} printed nothing (exit code {}): {}",
                out.code,
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    /// The agent pods: (node, pod).
    async fn agents(&self) -> Result<Vec<(String, String)>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.k.cilium_namespace);
        let list = api
            .list(&ListParams::default().labels(AGENT_SELECTOR))
            .await
            .map_err(|e| {
                anyhow!(
                    "listing agent pods {AGENT_SELECTOR} in {}: {}",
                    self.k.cilium_namespace,
                    cluster::describe(&e)
                )
            })?;
        Ok(list
            .items
            .iter()
            .filter_map(|p| {
                Some((
                    p.spec.as_ref()?.node_name.clone()?,
                    p.metadata.name.clone()?,
                ))
            })
            .collect())
    }

    /// A command in every agent pod: (node, pod, stdout).
    async fn in_agents(&self, args: &[&str]) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for (node, pod) in self.agents().await? {
            let command = std::iter::once("cilium")
                .chain(args.iter().copied())
                .map(str::to_string)
                .collect();
            let r = self
                .exec(
                    &self.k.cilium_namespace,
                    &pod,
                    Some(AGENT_CONTAINER),
                    command,
                    Duration::from_secs(30),
                )
                .await?;
            if r.code != 0 {
                bail!(
                    "`cilium {}` in agent pod {pod} exited with {}: {}",
                    args.join(" "),
                    r.code,
                    r.stderr.trim()
                );
            }
            out.push((node, pod, r.stdout));
        }
        Ok(out)
    }

    /// The policy documents of `yaml`, moved into the test namespace: (key, object).
    fn policy_objects(&self, yaml: &str) -> Result<Vec<(String, Object)>> {
        let ns = &self.k.test_namespace;
        let mut values = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let mut v = Value::deserialize(doc).context("a test policy is not YAML")?;
            if v.is_null() {
                continue;
            }
            v["metadata"]["namespace"] = json!(ns);
            values.push(v);
        }
        as_objects(&values, ns)?
            .into_iter()
            .map(|o| Ok((format!("{}/{ns}/{}", o.r.kind, o.r.name), o)))
            .collect()
    }
}

impl Platform for K8sEnv {
    fn describe(&self) -> String {
        format!("Kubernetes namespace {}", self.k.test_namespace)
    }

    fn workloads(&self) -> &Workloads {
        &self.workloads
    }

    fn http(&self, from: &From, target: &str, timeout: Duration) -> Result<(bool, String)> {
        let json = self.probe(
            from,
            vec![
                "tcp".into(),
                target.into(),
                "--send".into(),
                HTTP_GET.into(),
                "--timeout".into(),
                format!("{}ms", timeout.as_millis()),
            ],
            timeout,
        )?;
        Ok(http_verdict(&json))
    }

    fn ping(&self, from: &From, ip: &str) -> Result<(bool, String)> {
        let timeout = Duration::from_secs(1);
        let json = self.probe(
            from,
            vec![
                "icmp".into(),
                ip.into(),
                "--timeout".into(),
                format!("{}ms", timeout.as_millis()),
            ],
            timeout,
        )?;
        let v: Value = serde_json::from_str(json.trim())
            .map_err(|_| anyhow!("`cilium probe icmp` answered {:?}", json.trim()))?;
        Ok(match (v["ok"].as_bool(), v["error"].as_str()) {
            (Some(true), _) => (true, "reply".into()),
            (_, Some("timeout")) => (false, "no reply".into()),
            (_, Some(e)) => (false, e.to_string()),
            _ => (false, format!("unexpected answer {}", json.trim())),
        })
    }

    fn apply(&self, yaml: &str) -> Result<()> {
        for (key, o) in self.policy_objects(yaml)? {
            self.block(apply::apply(&self.client, &o))?;
            self.policies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
        }
        Ok(())
    }

    fn delete(&self, yaml: &str) -> Result<()> {
        for (key, o) in self.policy_objects(yaml)? {
            self.block(apply::delete(&self.client, &o))?;
            self.policies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        Ok(())
    }

    /// Until every agent lists exactly the test policies applied so far among those it
    /// enforces (`cilium policy get`: the names come with the regeneration that
    /// programmed them).
    async fn settle(&self) -> Result<()> {
        let want = self
            .policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mark = format!("/{}/", self.k.test_namespace);
        let deadline = tokio::time::Instant::now() + self.k.settle_timeout;
        loop {
            let mut behind = Vec::new();
            for (node, pod, out) in self.in_agents(&["policy", "get", "-o", "json"]).await? {
                let v: Value = serde_json::from_str(out.trim()).map_err(|_| {
                    anyhow!("`cilium policy get -o json` in agent pod {pod} answered {out:?}")
                })?;
                let have: BTreeSet<String> = v["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter(|n| n.contains(&mark))
                    .map(str::to_string)
                    .collect();
                if have != want {
                    behind.push(format!(
                        "agent {pod} on {node} enforces [{}]",
                        have.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the agents did not apply the test policies [{}] within {}s: {}",
                    want.into_iter().collect::<Vec<_>>().join(", "),
                    self.k.settle_timeout.as_secs(),
                    behind.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn drop_counters(&self) -> BTreeMap<(String, u8, u8), u64> {
        let mut m = BTreeMap::new();
        let out = match self.block(self.in_agents(&["bpf", "metrics", "list", "-o", "json"])) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("⚠️  reading the agents' drop counters: {e:#}");
                return m;
            }
        };
        for (node, pod, json) in out {
            let entries: Vec<crate::agent::models::MetricEntry> =
                match serde_json::from_str(json.trim()) {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("⚠️  `cilium bpf metrics list -o json` in agent pod {pod}: {e}");
                        continue;
                    }
                };
            for e in entries.into_iter().filter(|e| e.reason != 0) {
                let dir = [
                    crate::datapath::maps::METRIC_INGRESS,
                    crate::datapath::maps::METRIC_EGRESS,
                ]
                .into_iter()
                .find(|d| crate::datapath::maps::direction_name(*d) == e.direction)
                .unwrap_or(0);
                *m.entry((node.clone(), e.reason, dir)).or_insert(0) += e.packets;
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

    /// Deletes the test namespace and waits until it is gone.
    async fn cleanup(&self) {
        let ns = &self.k.test_namespace;
        let api: Api<Namespace> = Api::all(self.client.clone());
        if let Err(e) = apply::delete(&self.client, &apply::namespace_object(ns)).await {
            eprintln!(
                "⚠️  deleting namespace {ns}: {e}; delete it with `kubectl delete namespace {ns}`"
            );
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match api.get_opt(ns).await {
                Ok(None) => return,
                Ok(Some(_)) if tokio::time::Instant::now() < deadline => {}
                Ok(Some(_)) => {
                    eprintln!("⚠️  namespace {ns} is still terminating after 120s");
                    return;
                }
                Err(e) => {
                    eprintln!(
                        "⚠️  waiting for namespace {ns} to go: {}",
                        cluster::describe(&e)
                    );
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::k8s::fake_api::{ExecCall, ExecReply, FakeApi};

    /// Schedulable workers (name, InternalIP); a tainted control plane besides.
    const NODES: [(&str, &str); 2] = [("worker-a", "172.18.0.2"), ("worker-b", "172.18.0.3")];
    const NS: &str = DEFAULT_TEST_NAMESPACE;
    const IMAGE: &str = "localhost/cilium:kind-e2e";

    /// How the double's "cluster" behaves.
    #[derive(Clone, Default)]
    struct Sim {
        /// The datapath follows the policies (else everything passes).
        enforce: bool,
        /// Pods of this workload never become Ready.
        never_ready: Option<&'static str>,
        /// Only the first worker is schedulable.
        one_node: bool,
        /// Policy drops per node.
        drops: Arc<Mutex<BTreeMap<String, u64>>>,
    }

    fn node_ip(node: &str) -> &'static str {
        NODES
            .iter()
            .find(|(n, _)| *n == node)
            .map(|n| n.1)
            .unwrap_or("172.18.0.9")
    }

    fn labels_match(want: &Value, have: &Value) -> bool {
        want.as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| have.get(k) == Some(v))
    }

    fn pod_node(p: &Value) -> String {
        p["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// kube-controller-manager and the scheduler, at once: pods for Deployments (their
    /// pod (anti-)affinity to `name=client` honoured) and DaemonSets, addresses for
    /// Services.
    fn controller(sim: Sim) -> crate::k8s::fake_api::Controller {
        Arc::new(move |group, resource, obj, all| {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            let workers: Vec<&str> = NODES
                .iter()
                .map(|n| n.0)
                .take(if sim.one_node { 1 } else { 2 })
                .collect();
            let index = |n: &str| {
                [CLIENT, CLIENT2, ECHO_SAME, ECHO_OTHER, HOST_NETNS]
                    .iter()
                    .position(|x| *x == n)
                    .unwrap_or(9)
            };
            let pod = |pod_name: String, node: &str, template: &Value| {
                let host = template["spec"]["hostNetwork"] == json!(true);
                let ni = NODES.iter().position(|n| n.0 == node).unwrap_or(0);
                let ip = if host {
                    node_ip(node).to_string()
                } else {
                    format!("10.0.{ni}.{}", 10 + index(name))
                };
                let mut spec = template["spec"].clone();
                spec["nodeName"] = json!(node);
                let ready = sim.never_ready != Some(name);
                let status = if ready {
                    json!({"phase": "Running", "podIP": ip, "hostIP": node_ip(node),
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "containerStatuses": [{"name": name, "ready": true, "restartCount": 0, "image": IMAGE, "imageID": "", "state": {"running": {}}}]})
                } else {
                    json!({"phase": "Pending", "hostIP": node_ip(node),
                        "conditions": [{"type": "Ready", "status": "False"}],
                        "containerStatuses": [{"name": name, "ready": false, "restartCount": 0, "image": IMAGE, "imageID": "",
                            "state": {"waiting": {"reason": "ErrImagePull", "message": format!("pulling {IMAGE}: not found")}}}]})
                };
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": ns, "labels": template["metadata"]["labels"]},
                    "spec": spec, "status": status})
            };
            let mut out = Vec::new();
            match (group, resource) {
                ("", "services") if obj["spec"]["clusterIP"].is_null() => {
                    let mut s = obj.clone();
                    let i = index(name);
                    s["spec"]["clusterIP"] = json!(format!("10.96.0.{}", 10 + i));
                    s["spec"]["ports"][0]["nodePort"] = json!(30000 + i);
                    out.push(("".into(), "services".into(), s));
                }
                ("apps", "deployments") => {
                    let t = &obj["spec"]["template"];
                    let client_node = all
                        .iter()
                        .find(|o| o["kind"] == "Pod" && o["metadata"]["labels"]["name"] == CLIENT)
                        .map(pod_node);
                    let aff = &t["spec"]["affinity"];
                    let node = if !aff["podAffinity"].is_null() {
                        client_node
                    } else if !aff["podAntiAffinity"].is_null() {
                        workers
                            .iter()
                            .find(|w| Some(w.to_string()) != client_node)
                            .map(|w| w.to_string())
                    } else {
                        Some(workers[0].to_string())
                    };
                    // Unschedulable: no pod (a real cluster would keep it Pending).
                    if let Some(node) = node {
                        let p = pod(format!("{name}-7f9c5d-x{}", index(name)), &node, t);
                        if sim.never_ready == Some(name) {
                            out.push(("".into(), "events".into(), json!({"apiVersion": "v1", "kind": "Event",
                                "metadata": {"name": format!("{name}.1"), "namespace": ns},
                                "involvedObject": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": ns},
                                "reason": "Failed", "message": format!("Failed to pull image \"{IMAGE}\": not found")})));
                        }
                        out.push(("".into(), "pods".into(), p));
                    }
                }
                ("apps", "daemonsets") if ns == NS => {
                    for w in &workers {
                        out.push((
                            "".into(),
                            "pods".into(),
                            pod(format!("{name}-{w}"), w, &obj["spec"]["template"]),
                        ));
                    }
                }
                _ => {}
            }
            out
        })
    }

    /// A peer of a connection, as policy sees it.
    #[derive(Debug, Clone)]
    enum Peer {
        Pod(Value),
        Host(String),
        World(std::net::Ipv4Addr),
    }

    fn find_pod(all: &[Value], f: impl Fn(&Value) -> bool) -> Option<&Value> {
        all.iter()
            .find(|o| o["kind"] == "Pod" && o["metadata"]["namespace"] == NS && f(o))
    }

    /// Where a probe to `ip:port` lands (service, NodePort and HostPort translation
    /// included): the peer and the port it reaches.
    fn resolve(all: &[Value], ip: &str, port: Option<u16>) -> Option<(Peer, Option<u16>)> {
        let backend = |svc: &Value| {
            find_pod(all, |p| {
                labels_match(&svc["spec"]["selector"], &p["metadata"]["labels"])
            })
            .map(|p| (Peer::Pod(p.clone()), Some(ECHO_PORT)))
        };
        if let Some(p) = find_pod(all, |p| {
            p["status"]["podIP"] == ip && p["spec"]["hostNetwork"] != json!(true)
        }) {
            return Some((Peer::Pod(p.clone()), port));
        }
        let services: Vec<&Value> = all.iter().filter(|o| o["kind"] == "Service").collect();
        if let Some(s) = services.iter().find(|s| s["spec"]["clusterIP"] == ip) {
            return backend(s);
        }
        if let Some((node, _)) = NODES.iter().find(|(_, a)| *a == ip) {
            return match port {
                None => Some((Peer::Host(node.to_string()), None)),
                Some(HOSTPORT) => find_pod(all, |p| {
                    pod_node(p) == *node && p["metadata"]["labels"]["kind"] == "echo"
                })
                .map(|p| (Peer::Pod(p.clone()), Some(ECHO_PORT))),
                Some(np) => services
                    .iter()
                    .find(|s| s["spec"]["ports"][0]["nodePort"] == json!(np))
                    .and_then(|s| backend(s)),
            };
        }
        if ip == "1.1.1.1" || ip == "1.0.0.1" {
            return Some((Peer::World(ip.parse().ok()?), port));
        }
        None
    }

    /// Whether `rule` (one egress/ingress item) matches `peer` on `port`, seen from
    /// `subject_node`.
    fn rule_matches(
        rule: &Value,
        peer: &Peer,
        port: Option<u16>,
        subject_node: &str,
        egress: bool,
    ) -> bool {
        let (eps, ents, cidrs) = if egress {
            ("toEndpoints", "toEntities", "toCIDR")
        } else {
            ("fromEndpoints", "fromEntities", "fromCIDR")
        };
        let entities: Vec<&str> = match peer {
            Peer::Pod(_) => vec!["all", "cluster"],
            Peer::Host(n) if n == subject_node => vec!["all", "cluster", "host"],
            Peer::Host(_) => vec!["all", "cluster", "remote-node"],
            Peer::World(_) => vec!["all", "world"],
        };
        let by_ep = rule[eps]
            .as_array()
            .into_iter()
            .flatten()
            .any(|sel| match peer {
                Peer::Pod(p) => labels_match(&sel["matchLabels"], &p["metadata"]["labels"]),
                _ => false,
            });
        let by_entity = rule[ents]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| entities.contains(&e.as_str().unwrap_or_default()));
        let by_cidr = rule[cidrs]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| match peer {
                Peer::World(ip) => c
                    .as_str()
                    .and_then(|c| c.parse::<ipnet::Ipv4Net>().ok())
                    .is_some_and(|n| n.contains(ip)),
                _ => false,
            });
        let ports_ok = match rule["toPorts"].as_array() {
            None => true,
            Some(tp) => tp.iter().any(|t| {
                t["ports"].as_array().into_iter().flatten().any(|p| {
                    port.is_some() && p["port"].as_str() == port.map(|p| p.to_string()).as_deref()
                })
            }),
        };
        (by_ep || by_entity || by_cidr) && ports_ok
    }

    /// One direction of policy for `subject` (a test pod): allowed?
    fn allowed_dir(
        all: &[Value],
        subject: &Value,
        peer: &Peer,
        port: Option<u16>,
        egress: bool,
    ) -> bool {
        let (allow, deny) = if egress {
            ("egress", "egressDeny")
        } else {
            ("ingress", "ingressDeny")
        };
        let node = pod_node(subject);
        let policies: Vec<&Value> = all
            .iter()
            .filter(|o| o["kind"] == "CiliumNetworkPolicy")
            .filter(|o| {
                labels_match(
                    &o["spec"]["endpointSelector"]["matchLabels"],
                    &subject["metadata"]["labels"],
                )
            })
            .collect();
        let rules = |key: &str| -> Vec<Value> {
            policies
                .iter()
                .flat_map(|p| p["spec"][key].as_array().cloned().unwrap_or_default())
                .collect()
        };
        if rules(deny)
            .iter()
            .any(|r| rule_matches(r, peer, port, &node, egress))
        {
            return false;
        }
        let enforced = policies.iter().any(|p| !p["spec"][allow].is_null());
        !enforced
            || rules(allow)
                .iter()
                .any(|r| rule_matches(r, peer, port, &node, egress))
    }

    /// The datapath: egress of the source, ingress of the destination.
    fn allowed(all: &[Value], src: &Value, dst: &Peer, port: Option<u16>) -> bool {
        let host_src = src["spec"]["hostNetwork"] == json!(true);
        let src_peer = if host_src {
            Peer::Host(pod_node(src))
        } else {
            Peer::Pod(src.clone())
        };
        (host_src || allowed_dir(all, src, dst, port, true))
            && match dst {
                Peer::Pod(d) => allowed_dir(all, d, &src_peer, port, false),
                _ => true,
            }
    }

    /// The probes and the agents' commands.
    fn exec_handler(sim: Sim) -> crate::k8s::fake_api::ExecHandler {
        Arc::new(move |call: &ExecCall, all: &[Value]| {
            let cmd: Vec<&str> = call.command.iter().map(String::as_str).collect();
            let json_out = |v: Value, ok: bool| ExecReply {
                stdout: v.to_string(),
                stderr: String::new(),
                exit_code: if ok { 0 } else { 1 },
            };
            if call.namespace == "kube-system" {
                assert_eq!(call.container.as_deref(), Some(AGENT_CONTAINER));
                let node = all
                    .iter()
                    .find(|o| o["kind"] == "Pod" && o["metadata"]["name"] == call.pod.as_str())
                    .map(pod_node)
                    .unwrap_or_default();
                return match cmd.as_slice() {
                    ["cilium", "policy", "get", "-o", "json"] => {
                        let names: Vec<String> = all
                            .iter()
                            .filter(|o| o["kind"] == "CiliumNetworkPolicy")
                            .map(|o| {
                                format!(
                                    "CiliumNetworkPolicy/{}/{}",
                                    o["metadata"]["namespace"].as_str().unwrap_or_default(),
                                    o["metadata"]["name"].as_str().unwrap_or_default()
                                )
                            })
                            .collect();
                        json_out(
                            json!({"revision": 7, "policies": names, "rules": names.len()}),
                            true,
                        )
                    }
                    ["cilium", "bpf", "metrics", "list", "-o", "json"] => {
                        let n = sim.drops.lock().unwrap().get(&node).copied().unwrap_or(0);
                        let mut v = vec![
                            json!({"reason": 0, "reason_name": "Success", "direction": "EGRESS", "packets": 1000, "bytes": 0}),
                        ];
                        if n > 0 {
                            v.push(json!({"reason": 133, "reason_name": "Policy denied", "direction": "EGRESS", "packets": n, "bytes": 0}));
                        }
                        json_out(json!(v), true)
                    }
                    _ => ExecReply {
                        stderr: format!("unknown command {cmd:?}"),
                        exit_code: 2,
                        ..Default::default()
                    },
                };
            }
            let src = find_pod(all, |p| p["metadata"]["name"] == call.pod.as_str())
                .cloned()
                .expect("exec in a test pod");
            let (proto, target) = match cmd.as_slice() {
                ["cilium", "probe", proto, target, ..] => (*proto, *target),
                _ => {
                    return ExecReply {
                        stderr: format!("unknown command {cmd:?}"),
                        exit_code: 2,
                        ..Default::default()
                    }
                }
            };
            let (ip, port) = match target.rsplit_once(':') {
                Some((ip, p)) if proto == "tcp" => (ip, p.parse().ok()),
                _ => (target, None),
            };
            let verdict = resolve(all, ip, port).map(|(peer, port)| {
                let ok = !sim.enforce || allowed(all, &src, &peer, port);
                (peer, ok)
            });
            match verdict {
                Some((peer, true)) => {
                    let response = match (proto, peer) {
                        ("icmp", _) => "echo reply".to_string(),
                        (_, Peer::World(_)) => "HTTP/1.1 301 Moved Permanently\r\nLocation: https://one.one.one.one/\r\n\r\n".into(),
                        _ => "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{}".into(),
                    };
                    json_out(
                        json!({"ok": true, "peer": target, "response": response, "error": null, "ms": 1.0}),
                        true,
                    )
                }
                Some((_, false)) => {
                    *sim.drops.lock().unwrap().entry(pod_node(&src)).or_insert(0) += 1;
                    json_out(
                        json!({"ok": false, "peer": null, "response": null, "error": "timeout", "ms": 1000.0}),
                        false,
                    )
                }
                None => json_out(
                    json!({"ok": false, "peer": null, "response": null, "error": "timeout", "ms": 1000.0}),
                    false,
                ),
            }
        })
    }

    async fn cluster(sim: Sim) -> FakeApi {
        let api = FakeApi::start().await;
        for (name, ip) in NODES.iter().chain([("control-plane", "172.18.0.4")].iter()) {
            let taints = if *name == "control-plane" {
                json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])
            } else if sim.one_node && *name == NODES[1].0 {
                json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])
            } else {
                json!([])
            };
            api.insert(
                "",
                "nodes",
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "spec": {"taints": taints},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
            );
            api.insert("", "pods", json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("cilium-{name}"), "namespace": "kube-system", "labels": {"k8s-app": "cilium"}},
                "spec": {"nodeName": name, "containers": [{"name": AGENT_CONTAINER}]},
                "status": {"phase": "Running"}}));
        }
        api.insert("apps", "daemonsets", json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "cilium", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"k8s-app": "cilium"}}, "template": {"spec": {"containers": [
                {"name": AGENT_CONTAINER, "image": IMAGE, "imagePullPolicy": "Never"}]}}}}));
        api.set_controller(controller(sim.clone()));
        api.set_exec(exec_handler(sim));
        api
    }

    fn options() -> Options {
        Options {
            cluster: "unused".into(),
            tests: vec![],
            single_node: false,
            connect_timeout: Duration::from_millis(100),
            request_timeout: Duration::from_millis(100),
            json: true,
            junit_file: None,
            keep: false,
            concurrency: 4,
        }
    }

    fn k8s_options() -> K8sOptions {
        K8sOptions {
            ready_timeout: Duration::from_secs(5),
            settle_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    async fn suite(sim: Sim) -> (FakeApi, i32, Vec<super::super::TestResult>) {
        let api = cluster(sim).await;
        let opts = options();
        let env = deploy(api.client(), &opts, k8s_options())
            .await
            .expect("deployed");
        let (rc, results) = super::super::run_suite(&env, &opts, &[], &[])
            .await
            .unwrap();
        (api, rc, results)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_suite_passes_on_a_cluster_that_enforces_the_policies() {
        let sim = Sim {
            enforce: true,
            ..Default::default()
        };
        let drops = sim.drops.clone();
        let (api, rc, results) = suite(sim).await;
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| {
                format!(
                    "{}: {:?}",
                    r.test,
                    r.actions.iter().filter(|a| !a.ok).collect::<Vec<_>>()
                )
            })
            .collect();
        assert_eq!(rc, 0, "{failed:#?}");
        assert_eq!(results.iter().filter(|r| r.skipped).count(), 0);
        // Outside the cluster: skipped, with the reason, and counted apart.
        let skipped: Vec<&super::super::ActionResult> = results
            .iter()
            .flat_map(|r| &r.actions)
            .filter(|a| a.skipped)
            .collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped
            .iter()
            .all(|a| a.name.starts_with("outside-to-nodeport")
                && a.detail.contains("needs a client outside the cluster")));
        assert!(
            drops.lock().unwrap().values().sum::<u64>() > 0,
            "denied probes counted as drops"
        );
        // Every policy was applied into the test namespace by server-side apply, and
        // deleted again.
        let reqs = api.requests();
        let cnp_applies: Vec<_> = reqs
            .iter()
            .filter(|r| r.resource == "ciliumnetworkpolicies" && r.method == "PATCH")
            .collect();
        assert_eq!(cnp_applies.len(), 14);
        assert!(cnp_applies
            .iter()
            .all(|r| r.namespace.as_deref() == Some(NS)
                && r.body["metadata"]["namespace"] == NS
                && r.query.contains("fieldManager=cilium-cli")));
        assert_eq!(
            reqs.iter()
                .filter(|r| r.resource == "ciliumnetworkpolicies" && r.method == "DELETE")
                .count(),
            14
        );
        // Probes ran in the test pods, metrics and policy lists in the agents.
        let execs: Vec<_> = reqs.iter().filter(|r| r.resource == "pods/exec").collect();
        assert!(execs
            .iter()
            .any(|r| r.namespace.as_deref() == Some(NS) && r.query.contains("command=probe")));
        assert!(execs
            .iter()
            .any(|r| r.namespace.as_deref() == Some("kube-system")
                && r.query.contains("command=metrics")
                && r.query.contains("container=cilium-agent")));
        // Cleanup: the namespace is deleted, and everything in it with it.
        assert!(reqs
            .iter()
            .any(|r| r.method == "DELETE" && r.path == format!("/api/v1/namespaces/{NS}")));
        assert!(api.get("", "namespaces", None, NS).is_none());
        assert!(api.list("", "pods", Some(NS)).is_empty());
        assert!(api.list("apps", "deployments", Some(NS)).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_that_enforces_nothing_fails_the_policy_tests() {
        let (_, rc, results) = suite(Sim::default()).await;
        assert_eq!(rc, 1);
        let failed: BTreeSet<&str> = results
            .iter()
            .filter(|r| !r.skipped && !r.passed)
            .map(|r| r.test.as_str())
            .collect();
        let want: BTreeSet<&str> = [
            "allow-all-except-world",
            "client-ingress",
            "echo-ingress-from-other-client",
            "echo-ingress-from-other-client-deny",
            "client-egress-to-echo",
            "client-egress-to-echo-deny",
            "all-ingress-deny",
            "all-egress-deny",
            "all-entities-deny",
            "host-entity-egress",
            "host-entity-ingress",
            "to-entities-world",
            "to-cidr-external",
            "cluster-entity",
        ]
        .into();
        assert_eq!(failed, want, "exactly the policy tests fail");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workloads_are_applied_in_order_as_cilium_cli_does() {
        let api = cluster(Sim {
            enforce: true,
            ..Default::default()
        })
        .await;
        let env = deploy(api.client(), &options(), k8s_options())
            .await
            .unwrap();
        let applies: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
            .collect();
        let paths: Vec<&str> = applies.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                format!("/api/v1/namespaces/{NS}"),
                format!("/api/v1/namespaces/{NS}/services/echo-same-node"),
                format!("/api/v1/namespaces/{NS}/services/echo-other-node"),
                format!("/apis/apps/v1/namespaces/{NS}/deployments/client"),
                format!("/apis/apps/v1/namespaces/{NS}/deployments/client2"),
                format!("/apis/apps/v1/namespaces/{NS}/deployments/echo-same-node"),
                format!("/apis/apps/v1/namespaces/{NS}/deployments/echo-other-node"),
                format!("/apis/apps/v1/namespaces/{NS}/daemonsets/host-netns"),
            ]
        );
        for r in &applies {
            assert!(
                r.content_type.starts_with("application/apply-patch"),
                "{r:?}"
            );
            assert!(
                r.query.contains("fieldManager=cilium-cli") && r.query.contains("force=true"),
                "{}",
                r.query
            );
        }
        let body = |name: &str| {
            &applies
                .iter()
                .find(|r| r.path.ends_with(&format!("/{name}")))
                .unwrap()
                .body
        };
        let client2 = body("deployments/client2");
        assert_eq!(
            client2["spec"]["template"]["metadata"]["labels"],
            json!({"kind": "client", "name": "client2", "other": "client"})
        );
        let pod_spec = &client2["spec"]["template"]["spec"];
        assert_eq!(
            pod_spec["containers"][0]["image"], IMAGE,
            "the agent's image"
        );
        assert_eq!(
            pod_spec["containers"][0]["imagePullPolicy"], "Never",
            "and its pull policy"
        );
        assert_eq!(
            pod_spec["containers"][0]["command"],
            json!(["cilium", "pause"])
        );
        let term = json!([{"labelSelector": {"matchLabels": {"name": "client"}}, "topologyKey": "kubernetes.io/hostname"}]);
        assert_eq!(
            pod_spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
            term
        );
        let same = &body("deployments/echo-same-node")["spec"]["template"]["spec"];
        assert_eq!(
            same["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
            term
        );
        assert_eq!(
            same["containers"][0]["command"],
            json!([
                "cilium",
                "echo-server",
                "--port",
                "8080",
                "--name",
                "echo-same-node"
            ])
        );
        assert_eq!(same["containers"][0]["ports"][0]["hostPort"], 4000);
        let other = &body("deployments/echo-other-node")["spec"]["template"]["spec"];
        assert_eq!(
            other["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
            term
        );
        assert!(body("deployments/client")["spec"]["template"]["spec"]["affinity"].is_null());
        assert_eq!(
            body("daemonsets/host-netns")["spec"]["template"]["spec"]["hostNetwork"],
            true
        );
        assert_eq!(body("services/echo-other-node")["spec"]["type"], "NodePort");
        assert_eq!(
            body("services/echo-other-node")["spec"]["selector"],
            json!({"name": "echo-other-node"})
        );
        // What the scenarios address comes from the cluster.
        let w = env.workloads();
        assert_eq!(w.echo_same, "10.0.0.12");
        assert_eq!(w.echo_other.as_deref(), Some("10.0.1.13"));
        assert_eq!(w.node_ips, ["172.18.0.2", "172.18.0.3"]);
        assert_eq!(
            (w.svc_same.as_str(), w.nodeport_same),
            ("10.96.0.12", 30002)
        );
        assert_eq!(env.host_pod, "host-netns-worker-a");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_schedulable_node_skips_what_needs_two() {
        let (api, rc, results) = suite(Sim {
            enforce: true,
            one_node: true,
            ..Default::default()
        })
        .await;
        assert_eq!(rc, 0);
        assert!(results
            .iter()
            .any(|r| r.test == "no-policies-other-node" && r.skipped));
        assert!(!api
            .requests()
            .iter()
            .any(|r| r.path.contains("echo-other-node")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pod_that_never_gets_ready_is_named_with_its_last_event() {
        let api = cluster(Sim {
            never_ready: Some(ECHO_SAME),
            ..Default::default()
        })
        .await;
        let k = K8sOptions {
            ready_timeout: Duration::from_secs(1),
            ..k8s_options()
        };
        let e = deploy(api.client(), &options(), k)
            .await
            .err()
            .expect("times out");
        let e = format!("{e:#}");
        assert!(e.contains("within 1s"), "{e}");
        assert!(
            e.contains(&format!(
                "pod {NS}/echo-same-node-7f9c5d-x2 is Pending, not Ready"
            )),
            "{e}"
        );
        assert!(e.contains("ErrImagePull"), "{e}");
        assert!(
            e.contains("last event: Failed: Failed to pull image"),
            "{e}"
        );
        assert!(!e.contains("client-"), "ready pods are not named: {e}");
    }

    #[tokio::test]
    async fn a_missing_agent_daemonset_says_what_to_do() {
        let api = FakeApi::start().await;
        let e = deploy(api.client(), &options(), k8s_options())
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("run `cilium install`, or pass -n"),
            "{e}"
        );
    }

    #[test]
    fn http_answers_below_400_count_as_curl_fail_does() {
        assert_eq!(
            http_verdict(r#"{"ok":true,"response":"HTTP/1.1 301 Moved\r\n"}"#),
            (true, "HTTP 301".into())
        );
        assert!(!http_verdict(r#"{"ok":true,"response":"HTTP/1.1 403 Forbidden\r\n"}"#).0);
        assert_eq!(
            http_verdict(r#"{"ok":false,"error":"timeout"}"#),
            (false, "timeout".into())
        );
    }
}
