//! Per-node configuration overrides: the CiliumNodeConfig objects whose `nodeSelector`
//! matches this node's labels override `cilium-config` keys, as in Cilium. Configs are
//! applied in name order, a later one winning on the same key. [`overrides`] is the pure
//! rule; [`fetch`] reads the node and the configs from the API once, at agent start
//! (a change takes effect when the agent restarts, as upstream).
use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{Api, ListParams},
    core::{Selector, SelectorExt},
};

use super::config_dir::ConfigDir;
use crate::k8s::crds::CiliumNodeConfig;

/// How long the agent waits for the API at start before going on without overrides.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    #[error("no Kubernetes client configuration (in-cluster or kubeconfig)")]
    Config(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("reading node {node}")]
    Node {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing CiliumNodeConfigs in namespace {namespace}")]
    List {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("the API server did not answer within {}s", FETCH_TIMEOUT.as_secs())]
    Timeout,
}

/// What the agent found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not on Kubernetes (neither `KUBERNETES_SERVICE_HOST` nor `k8s-service-host`).
    NotOnKubernetes,
    /// The matching configs (names, in the order applied) and the keys they set.
    Applied {
        configs: Vec<String>,
        keys: BTreeMap<String, String>,
    },
    /// The API could not be read: the configuration directory alone holds.
    Unreachable(String),
}

/// Whether `config`'s node selector selects a node with `labels`. An empty selector
/// selects every node; one that cannot be parsed selects none.
pub fn selects(config: &CiliumNodeConfig, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(config.spec.node_selector.clone())
        .map(|s| s.matches(labels))
        .unwrap_or(false)
}

/// The keys the configs set for a node with `labels`, and the names of the configs that
/// selected it, in the order applied (by name; a later config wins on a key).
pub fn overrides(
    labels: &BTreeMap<String, String>,
    configs: &[CiliumNodeConfig],
) -> (Vec<String>, BTreeMap<String, String>) {
    let mut matching: Vec<&CiliumNodeConfig> =
        configs.iter().filter(|c| selects(c, labels)).collect();
    matching.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut keys = BTreeMap::new();
    for c in &matching {
        keys.extend(c.spec.defaults.clone());
    }
    let names = matching
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    (names, keys)
}

/// Reads `node`'s labels and the CiliumNodeConfigs of `namespace`, and returns the
/// overrides for the node.
pub async fn fetch(
    client: &kube::Client,
    node: &str,
    namespace: &str,
) -> Result<(Vec<String>, BTreeMap<String, String>), NodeConfigError> {
    let n = Api::<Node>::all(client.clone())
        .get(node)
        .await
        .map_err(|source| NodeConfigError::Node {
            node: node.to_string(),
            source,
        })?;
    let configs = Api::<CiliumNodeConfig>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|source| NodeConfigError::List {
            namespace: namespace.to_string(),
            source,
        })?;
    Ok(overrides(
        &n.metadata.labels.unwrap_or_default(),
        &configs.items,
    ))
}

/// The client configuration of an agent on Kubernetes: in-cluster (or a kubeconfig),
/// but with `k8s-service-host`/`k8s-service-port` from the configuration directory as
/// the server when set, since with kube-proxy replaced the `kubernetes` Service's
/// ClusterIP only answers once this agent has programmed it.
pub async fn kube_config(dir: &ConfigDir) -> Result<kube::Config, NodeConfigError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(NodeConfigError::Config)?;
    if let (Some(host), Some(port)) = (service_host(dir), dir.get("k8s-service-port")) {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        if let Ok(url) = format!("https://{host}:{port}").parse() {
            config.cluster_url = url;
        }
    }
    Ok(config)
}

fn service_host(dir: &ConfigDir) -> Option<&str> {
    dir.get("k8s-service-host").filter(|h| !h.is_empty())
}

/// At agent start with `--config-dir`: on Kubernetes, applies the CiliumNodeConfig
/// overrides for `node` to `dir` (they win over cilium-config's keys); when the API
/// cannot be read within [`FETCH_TIMEOUT`], `dir` stays as it is. The namespace is
/// `CILIUM_K8S_NAMESPACE` (the DaemonSet sets it), else kube-system.
pub fn apply_at_start(dir: &mut ConfigDir, node: &str) -> Outcome {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() && service_host(dir).is_none() {
        return Outcome::NotOnKubernetes;
    }
    let namespace =
        std::env::var("CILIUM_K8S_NAMESPACE").unwrap_or_else(|_| "kube-system".to_string());
    // Before the agent's runtime exists (the directory decides the log level, ...): a
    // short-lived single-threaded one.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Outcome::Unreachable(format!("starting a runtime: {e}")),
    };
    let result = rt.block_on(async {
        tokio::time::timeout(FETCH_TIMEOUT, async {
            let config = kube_config(dir).await?;
            let client = kube::Client::try_from(config).map_err(NodeConfigError::Client)?;
            fetch(&client, node, &namespace).await
        })
        .await
        .unwrap_or(Err(NodeConfigError::Timeout))
    });
    match result {
        Ok((configs, keys)) => {
            dir.values.extend(keys.clone());
            Outcome::Applied { configs, keys }
        }
        Err(e) => Outcome::Unreachable(error_chain(&e)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{
        fake_api::FakeApi,
        rbac::{allows, AGENT_RULES},
    };
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn config(
        name: &str,
        selector: serde_json::Value,
        defaults: &[(&str, &str)],
    ) -> CiliumNodeConfig {
        serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNodeConfig",
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {"nodeSelector": selector, "defaults": labels(defaults)},
        }))
        .expect("a CiliumNodeConfig")
    }

    #[test]
    fn matching_configs_apply_in_name_order_later_wins() {
        let node = labels(&[
            ("io.cilium.migration/kube-proxy-replacement", "true"),
            ("zone", "a"),
        ]);
        let configs = [
            config(
                "z-last",
                json!({"matchLabels": {"zone": "a"}}),
                &[("mtu", "9000")],
            ),
            config(
                "kube-proxy-replacement-migration",
                json!({"matchLabels": {"io.cilium.migration/kube-proxy-replacement": "true"}}),
                &[("kube-proxy-replacement", "true"), ("mtu", "1400")],
            ),
            config(
                "other-zone",
                json!({"matchLabels": {"zone": "b"}}),
                &[("debug", "true")],
            ),
            config(
                "a-first",
                json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "c"]}]}),
                &[("mtu", "1300"), ("devices", "eth0")],
            ),
        ];
        let (names, keys) = overrides(&node, &configs);
        assert_eq!(
            names,
            ["a-first", "kube-proxy-replacement-migration", "z-last"]
        );
        assert_eq!(
            keys,
            labels(&[
                ("devices", "eth0"),
                ("kube-proxy-replacement", "true"),
                ("mtu", "9000")
            ])
        );
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let node = labels(&[("role", "worker")]);
        let sel = |s| config("c", s, &[("debug", "true")]);
        assert!(
            selects(&sel(json!({})), &node),
            "an empty selector selects every node"
        );
        assert!(selects(
            &sel(json!({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]})),
            &node
        ));
        assert!(selects(
            &sel(
                json!({"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["cp"]}]})
            ),
            &node
        ));
        assert!(!selects(
            &sel(
                json!({"matchExpressions": [{"key": "role", "operator": "Exists"}], "matchLabels": {"x": "y"}})
            ),
            &node
        ));
        assert!(
            !selects(
                &sel(json!({"matchExpressions": [{"key": "role", "operator": "Bogus"}]})),
                &node
            ),
            "an invalid selector selects nothing"
        );
        let (names, keys) = overrides(&labels(&[]), &[]);
        assert!(names.is_empty() && keys.is_empty());
    }

    #[tokio::test]
    async fn fetch_reads_the_node_and_the_configs_within_the_agents_rbac() {
        let api = FakeApi::start().await;
        api.insert(
            "",
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"io.cilium.migration/kube-proxy-replacement": "true"}}}),
        );
        api.insert(
            "cilium.io",
            "ciliumnodeconfigs",
            serde_json::to_value(config(
                "kube-proxy-replacement-migration",
                json!({"matchLabels": {"io.cilium.migration/kube-proxy-replacement": "true"}}),
                &[("kube-proxy-replacement", "true")],
            ))
            .unwrap(),
        );
        let (names, keys) = fetch(&api.client(), "n1", "kube-system").await.unwrap();
        assert_eq!(names, ["kube-proxy-replacement-migration"]);
        assert_eq!(keys["kube-proxy-replacement"], "true");
        let reqs = api.take();
        let calls: Vec<String> = reqs
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert_eq!(
            calls,
            [
                "GET /api/v1/nodes/n1",
                "GET /apis/cilium.io/v2/namespaces/kube-system/ciliumnodeconfigs"
            ]
        );
        for r in &reqs {
            assert!(allows(AGENT_RULES, &r.group, &r.resource, &r.verb), "{r:?}");
        }
        let e = fetch(&api.client(), "missing", "kube-system")
            .await
            .unwrap_err();
        assert!(
            error_chain(&e).contains("reading node missing"),
            "{}",
            error_chain(&e)
        );
    }
}
