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

use serde::Deserialize;

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
