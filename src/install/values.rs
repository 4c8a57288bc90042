//! Helm-style values of `cilium install`: the embedded defaults (`manifests/values.yaml`),
//! `-f` files, `--set` and `--set-string`, merged as Helm does, checked against the known
//! keys and validated into typed [`Settings`].
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{EnvVar, Toleration};
use serde::Serialize;
use serde_yaml::{Mapping, Value};

use super::{strict, strvals, Manifests};

/// Keys whose value is free-form by design (any map keys / list items of the right
/// kind); everything else must be a key of the defaults.
pub const FREE_FORM: &[&str] = &[
    "extraArgs",
    "extraEnv",
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "tolerations",
    "operator.extraArgs",
    "operator.extraEnv",
    "operator.podAnnotations",
    "operator.podLabels",
    "operator.nodeSelector",
    "operator.tolerations",
];

/// Why values cannot be used. Every variant names the key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error(transparent)]
    Set(#[from] strvals::StrvalsError),
    #[error("reading values file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("values file {path} is not valid YAML: {source}")]
    ParseFile {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("values file {path} must hold a map of values at its top level")]
    FileNotMap { path: PathBuf },
    #[error("unknown value key `{key}`; {known}")]
    UnknownKey { key: String, known: String },
    #[error("value `{key}` must be {expected}, not {found}")]
    Type {
        key: String,
        expected: String,
        found: String,
    },
    #[error("value `{key}` is {value:?}; allowed values: {allowed}")]
    NotAllowed {
        key: String,
        value: String,
        allowed: String,
    },
    #[error("value `{key}`: {msg}")]
    Invalid { key: String, msg: String },
    #[error("value `{key}` is required; null removed it (give it a value instead)")]
    Required { key: String },
    #[error("the embedded default values are broken (a bug of this build): {0}")]
    Defaults(String),
}

/// Where the user's values come from, applied in this order (later wins): `-f` files,
/// `version` (the image tags), `image` (the whole image reference), `--set`,
/// `--set-string`.
#[derive(Debug, Clone, Default)]
pub struct ValueSources {
    pub files: Vec<PathBuf>,
    pub version: Option<String>,
    /// `repository[:tag]` or `repository@sha256:...` for the agent and the operator.
    pub image: Option<String>,
    pub set: Vec<String>,
    pub set_string: Vec<String>,
}

/// The merged values (defaults + user) and the typed settings derived from them.
#[derive(Debug, Clone)]
pub struct Values {
    pub merged: Value,
    pub settings: Settings,
}

impl Values {
    /// Merges and validates `sources` over the embedded defaults.
    pub fn load(sources: &ValueSources) -> Result<Self, ValuesError> {
        Self::from_user(&user_values(sources)?)
    }

    /// Merges and validates a user tree (as [`user_values`] builds it, nulls kept) over
    /// the embedded defaults.
    pub fn from_user(user: &Value) -> Result<Self, ValuesError> {
        let defaults = default_values()?;
        check_known_keys(&defaults, user)?;
        let mut merged = defaults;
        coalesce(&mut merged, user);
        let settings = Settings::from_values(&merged)?;
        Ok(Values { merged, settings })
    }

    /// The merged values as YAML (`--dry-run-helm-values`).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.merged).unwrap_or_default()
    }
}

/// The embedded `manifests/values.yaml`.
pub fn default_values() -> Result<Value, ValuesError> {
    let file = Manifests::get("values.yaml")
        .ok_or_else(|| ValuesError::Defaults("values.yaml is not embedded".into()))?;
    let v: Value = serde_yaml::from_slice(&file.data)
        .map_err(|e| ValuesError::Defaults(format!("values.yaml: {e}")))?;
    if !v.is_mapping() {
        return Err(ValuesError::Defaults("values.yaml is not a map".into()));
    }
    Ok(v)
}

/// The user's layers merged into one tree (defaults not included), as Helm does it:
/// files merged in order, then `--set` arguments parsed *into* that tree (so
/// `list[1]=x` changes the second item of a list a file gave), nulls kept (they delete
/// defaults when the tree is [`coalesce`]d).
pub fn user_values(sources: &ValueSources) -> Result<Value, ValuesError> {
    let mut user = Value::Mapping(Mapping::new());
    for path in &sources.files {
        merge(&mut user, &read_file(path)?);
    }
    let Value::Mapping(map) = &mut user else {
        unreachable!("user values start as a map");
    };
    if let Some(v) = &sources.version {
        let tag = v.strip_prefix('v').unwrap_or(v);
        strvals::parse_into(
            &format!("image.tag={tag},operator.image.tag={tag}"),
            map,
            true,
        )?;
    }
    if let Some(image) = &sources.image {
        let (repository, rest) = split_image(image)?;
        let mut img = Mapping::new();
        img.insert("repository".into(), repository.into());
        match rest {
            ImageRest::Tag(tag) => {
                img.insert("tag".into(), tag.into());
                img.insert("useDigest".into(), false.into());
            }
            ImageRest::Digest(digest) => {
                img.insert("digest".into(), digest.into());
                img.insert("useDigest".into(), true.into());
            }
        }
        let img = Value::Mapping(img);
        let mut over = Mapping::new();
        over.insert("image".into(), img.clone());
        let mut op = Mapping::new();
        op.insert("image".into(), img);
        over.insert("operator".into(), Value::Mapping(op));
        merge(&mut user, &Value::Mapping(over));
    }
    let Value::Mapping(map) = &mut user else {
        unreachable!("user values start as a map");
    };
    for s in &sources.set {
        strvals::parse_into(s, map, false)?;
    }
    for s in &sources.set_string {
        strvals::parse_into(s, map, true)?;
    }
    Ok(user)
}

enum ImageRest {
    Tag(String),
    Digest(String),
}

/// `repo[:tag]` (tag `latest` when none, as Docker) or `repo@sha256:...`; a `:` before
/// the last `/` is a registry port.
fn split_image(s: &str) -> Result<(String, ImageRest), ValuesError> {
    let bad = || ValuesError::Invalid {
        key: "--image".into(),
        msg: format!(
            "{s:?} is not an image reference like localhost/cilium:1.2.3 or \
             registry.example:5000/cilium@sha256:<64 hex digits>"
        ),
    };
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    if let Some((repo, digest)) = s.split_once('@') {
        if repo.is_empty() || digest.is_empty() {
            return Err(bad());
        }
        return Ok((repo.to_string(), ImageRest::Digest(digest.to_string())));
    }
    let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
    match s[slash..].rfind(':') {
        Some(i) if slash + i + 1 == s.len() => Err(bad()),
        Some(i) => Ok((
            s[..slash + i].to_string(),
            ImageRest::Tag(s[slash + i + 1..].to_string()),
        )),
        None => Ok((s.to_string(), ImageRest::Tag("latest".into()))),
    }
}

fn read_file(path: &Path) -> Result<Value, ValuesError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|source| ValuesError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let v: Value = serde_yaml::from_str(&text).map_err(|source| ValuesError::ParseFile {
        path: path.to_path_buf(),
        source,
    })?;
    match v {
        Value::Mapping(_) => Ok(v),
        // An empty file is no values, as in Helm.
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        _ => Err(ValuesError::FileNotMap {
            path: path.to_path_buf(),
        }),
    }
}

/// Deep merge of `overlay` into `base` (Helm's mergeMaps): maps merge key by key,
/// anything else (lists included) is replaced, nulls are kept.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, ov) in o {
                match b.get_mut(k) {
                    Some(bv) if bv.is_mapping() && ov.is_mapping() => merge(bv, ov),
                    _ => {
                        b.insert(k.clone(), ov.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The user's values over the defaults (Helm's coalesce): as [`merge`], but a null
/// deletes the key (Helm's way to remove a default, e.g.
/// `--set nodeSelector.kubernetes\.io/os=null`).
pub fn coalesce(defaults: &mut Value, user: &Value) {
    match (defaults, user) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, ov) in o {
                if ov.is_null() {
                    b.remove(k);
                    continue;
                }
                match b.get_mut(k) {
                    Some(bv) if bv.is_mapping() && ov.is_mapping() => coalesce(bv, ov),
                    _ => {
                        b.insert(k.clone(), strip_nulls(ov));
                    }
                }
            }
        }
        (b, o) => *b = strip_nulls(o),
    }
}

/// A copy without null map entries (what a fresh key set to a map with nulls means).
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn key_str(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Every key the user gave must be a key of the defaults (or lie under a free-form key),
/// and maps must stay maps.
pub fn check_known_keys(defaults: &Value, user: &Value) -> Result<(), ValuesError> {
    check_level(defaults, user, "")
}

fn check_level(defaults: &Value, user: &Value, path: &str) -> Result<(), ValuesError> {
    let (Value::Mapping(d), Value::Mapping(u)) = (defaults, user) else {
        return Ok(());
    };
    for (k, uv) in u {
        let key = join(path, &key_str(k));
        let Some(dv) = d.get(k) else {
            let known: Vec<String> = d.keys().map(key_str).collect();
            let known = if path.is_empty() {
                format!("known top-level keys: {}", known.join(", "))
            } else {
                format!("known keys under `{path}`: {}", known.join(", "))
            };
            return Err(ValuesError::UnknownKey { key, known });
        };
        if uv.is_null() {
            continue;
        }
        if FREE_FORM.contains(&key.as_str()) {
            let same_kind = matches!(
                (dv, uv),
                (Value::Mapping(_), Value::Mapping(_)) | (Value::Sequence(_), Value::Sequence(_))
            );
            if !same_kind {
                return Err(ValuesError::Type {
                    key,
                    expected: kind_of(dv).into(),
                    found: kind_of(uv).into(),
                });
            }
            continue;
        }
        match (dv, uv) {
            (Value::Mapping(_), Value::Mapping(_)) => check_level(dv, uv, &key)?,
            (Value::Mapping(dm), _) => {
                let keys: Vec<String> = dm.keys().map(key_str).collect();
                return Err(ValuesError::Type {
                    key,
                    expected: format!("a map (keys: {})", keys.join(", ")),
                    found: kind_of(uv).into(),
                });
            }
            (_, Value::Mapping(_)) => {
                return Err(ValuesError::Type {
                    key,
                    expected: format!("{} (it has no keys below it)", kind_of(dv)),
                    found: "a map".into(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ typed settings

/// A container image as the manifests use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// `repository:tag` or `repository@digest`.
    pub reference: String,
    pub pull_policy: String,
}

/// What a pod template takes from the values (agent or operator).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    pub image: Image,
    pub extra_args: Vec<String>,
    pub extra_env: Vec<EnvVar>,
    pub pod_annotations: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// The validated values.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub cluster_name: String,
    pub cluster_id: u32,
    pub debug: bool,
    /// tunnel or native.
    pub routing_mode: String,
    /// vxlan or geneve.
    pub tunnel_protocol: String,
    pub ipv4_native_routing_cidr: Option<Ipv4Net>,
    pub kube_proxy_replacement: bool,
    pub k8s_service_host: Option<String>,
    pub k8s_service_port: Option<u16>,
    /// default, always or never.
    pub policy_enforcement_mode: String,
    /// cluster-pool or kubernetes.
    pub ipam_mode: String,
    pub cluster_pool_ipv4_pod_cidrs: Vec<Ipv4Net>,
    pub cluster_pool_ipv4_mask_size: u8,
    pub bpf_map_dynamic_size_ratio: f64,
    pub bpf_ct_tcp_max: u32,
    pub bpf_ct_any_max: u32,
    pub bpf_lb_map_max: u32,
    pub bpf_policy_map_max: u32,
    /// random or maglev.
    pub lb_algorithm: String,
    /// snat or dsr.
    pub lb_mode: String,
    pub maglev_table_size: u32,
    pub hubble_enabled: bool,
    pub cni_bin_path: String,
    pub cni_conf_path: String,
    /// `cni-uninstall` of cilium-config: the agent's preStop hook removes the CNI files.
    pub cni_uninstall: bool,
    /// The agent DaemonSet's rollingUpdate.maxUnavailable: a number or a percentage.
    pub agent_max_unavailable: serde_json::Value,
    pub cgroup_host_root: String,
    pub agent: PodSettings,
    pub operator_enabled: bool,
    pub operator_replicas: u32,
    pub operator: PodSettings,
}

/// Cilium's limits for the conntrack maps (option.LimitTableMin/Max).
const CT_MIN: u64 = 1 << 10;
const CT_MAX: u64 = 1 << 24;
/// Cilium's limits for policy maps (policymap.PolicyMapMin/Max... as option.go checks).
const POLICY_MAP_MIN: u64 = 1 << 8;
const POLICY_MAP_MAX: u64 = 1 << 16;

impl Settings {
    /// Reads and validates the merged values.
    pub fn from_values(v: &Value) -> Result<Self, ValuesError> {
        let g = Get(v);
        let routing_mode = g.one_of("routingMode", &["tunnel", "native"])?;
        let tunnel_protocol = g.one_of("tunnelProtocol", &["vxlan", "geneve"])?;
        let ipv4_native_routing_cidr = match g.opt_str("ipv4NativeRoutingCIDR")? {
            None => None,
            Some(s) => Some(parse_cidr("ipv4NativeRoutingCIDR", &s)?),
        };
        if routing_mode == "native" && ipv4_native_routing_cidr.is_none() {
            return Err(ValuesError::Invalid {
                key: "ipv4NativeRoutingCIDR".into(),
                msg: "routingMode=native needs the CIDR in which pod addresses are routed \
                      without masquerading, e.g. --set ipv4NativeRoutingCIDR=10.0.0.0/8"
                    .into(),
            });
        }
        let kube_proxy_replacement = g.bool("kubeProxyReplacement")?;
        let k8s_service_host = g.opt_str("k8sServiceHost")?;
        let k8s_service_port = match g.opt_scalar("k8sServicePort")? {
            None => None,
            Some(s) => Some(parse_int("k8sServicePort", &s, 1, 65535)? as u16),
        };
        if kube_proxy_replacement && (k8s_service_host.is_none() || k8s_service_port.is_none()) {
            return Err(ValuesError::Invalid {
                key: "kubeProxyReplacement".into(),
                msg: "kubeProxyReplacement=true needs k8sServiceHost and k8sServicePort (the \
                      agent cannot reach the API server through its service without kube-proxy); \
                      e.g. --set k8sServiceHost=<control-plane address>,k8sServicePort=6443"
                    .into(),
            });
        }
        let ipam_mode = g.one_of("ipam.mode", &["cluster-pool", "kubernetes"])?;
        let pool_key = "ipam.operator.clusterPoolIPv4PodCIDRList";
        let cluster_pool_ipv4_pod_cidrs = g
            .str_list(pool_key)?
            .iter()
            .enumerate()
            .map(|(i, s)| parse_cidr(&format!("{pool_key}[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let mask_key = "ipam.operator.clusterPoolIPv4MaskSize";
        let cluster_pool_ipv4_mask_size = g.int(mask_key, 1, 32)? as u8;
        if ipam_mode == "cluster-pool" {
            if cluster_pool_ipv4_pod_cidrs.is_empty() {
                return Err(ValuesError::Invalid {
                    key: pool_key.into(),
                    msg: "ipam.mode=cluster-pool needs at least one CIDR".into(),
                });
            }
            for c in &cluster_pool_ipv4_pod_cidrs {
                if cluster_pool_ipv4_mask_size <= c.prefix_len() {
                    return Err(ValuesError::Invalid {
                        key: mask_key.into(),
                        msg: format!(
                            "each node's pod CIDR (/{cluster_pool_ipv4_mask_size}) must be smaller \
                             than the pool {c}: use a mask size above {}",
                            c.prefix_len()
                        ),
                    });
                }
            }
        }
        let ratio_key = "bpf.mapDynamicSizeRatio";
        let bpf_map_dynamic_size_ratio = g.float(ratio_key)?;
        if !(0.0..=1.0).contains(&bpf_map_dynamic_size_ratio) {
            return Err(ValuesError::Invalid {
                key: ratio_key.into(),
                msg: format!(
                    "{bpf_map_dynamic_size_ratio} is not a ratio between 0.0 and 1.0 (0 disables it)"
                ),
            });
        }
        let lb_algorithm = g.one_of("loadBalancer.algorithm", &["random", "maglev"])?;
        let lb_mode = g.one_of("loadBalancer.mode", &["snat", "dsr"])?;
        if lb_mode == "dsr" && routing_mode != "native" {
            return Err(ValuesError::Invalid {
                key: "loadBalancer.mode".into(),
                msg: "dsr needs routingMode=native (replies leave the backend's node directly)"
                    .into(),
            });
        }
        let maglev_table_size = g.int("maglev.tableSize", 1, u32::MAX as u64)? as u32;
        if !crate::lb::maglev::is_supported_size(maglev_table_size as usize) {
            return Err(ValuesError::NotAllowed {
                key: "maglev.tableSize".into(),
                value: maglev_table_size.to_string(),
                allowed: list(crate::lb::maglev::SUPPORTED_SIZES.iter()),
            });
        }
        let cluster_name = g.str("cluster.name")?;
        if !valid_cluster_name(&cluster_name) {
            return Err(ValuesError::Invalid {
                key: "cluster.name".into(),
                msg: format!(
                    "{cluster_name:?} is not a valid cluster name: at most 32 lowercase letters, \
                     digits and '-', starting and ending with a letter or digit"
                ),
            });
        }
        let operator_enabled = g.bool("operator.enabled")?;
        let operator_replicas = g.int("operator.replicas", 0, 100)? as u32;
        if operator_enabled && operator_replicas == 0 {
            return Err(ValuesError::Invalid {
                key: "operator.replicas".into(),
                msg: "must be at least 1; to run without an operator set operator.enabled=false"
                    .into(),
            });
        }
        if ipam_mode == "cluster-pool" && !operator_enabled {
            return Err(ValuesError::Invalid {
                key: "operator.enabled".into(),
                msg: "ipam.mode=cluster-pool needs the operator (it hands out the node pod \
                      CIDRs); enable it or use --set ipam.mode=kubernetes"
                    .into(),
            });
        }
        Ok(Settings {
            cluster_name,
            cluster_id: g.int("cluster.id", 0, 255)? as u32,
            debug: g.bool("debug.enabled")?,
            routing_mode,
            tunnel_protocol,
            ipv4_native_routing_cidr,
            kube_proxy_replacement,
            k8s_service_host,
            k8s_service_port,
            policy_enforcement_mode: g
                .one_of("policyEnforcementMode", &["default", "always", "never"])?,
            ipam_mode,
            cluster_pool_ipv4_pod_cidrs,
            cluster_pool_ipv4_mask_size,
            bpf_map_dynamic_size_ratio,
            bpf_ct_tcp_max: g.int("bpf.ctTcpMax", CT_MIN, CT_MAX)? as u32,
            bpf_ct_any_max: g.int("bpf.ctAnyMax", CT_MIN, CT_MAX)? as u32,
            bpf_lb_map_max: g.int("bpf.lbMapMax", 1, CT_MAX)? as u32,
            bpf_policy_map_max: g.int("bpf.policyMapMax", POLICY_MAP_MIN, POLICY_MAP_MAX)? as u32,
            lb_algorithm,
            lb_mode,
            maglev_table_size,
            hubble_enabled: g.bool("hubble.enabled")?,
            cni_bin_path: g.abs_path("cni.binPath")?,
            cni_conf_path: g.abs_path("cni.confPath")?,
            cni_uninstall: g.bool("cni.uninstall")?,
            agent_max_unavailable: max_unavailable(
                "updateStrategy.rollingUpdate.maxUnavailable",
                &g.opt_scalar("updateStrategy.rollingUpdate.maxUnavailable")?
                    .unwrap_or_default(),
            )?,
            cgroup_host_root: g.abs_path("cgroup.hostRoot")?,
            agent: g.pod("")?,
            operator_enabled,
            operator_replicas,
            operator: g.pod("operator.")?,
        })
    }

    /// The `cilium-config` ConfigMap: Cilium's option names, the agent's and operator's
    /// configuration.
    pub fn config_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("cluster-name", self.cluster_name.clone());
        put("cluster-id", self.cluster_id.to_string());
        put("debug", self.debug.to_string());
        put("routing-mode", self.routing_mode.clone());
        if self.routing_mode == "tunnel" {
            put("tunnel-protocol", self.tunnel_protocol.clone());
        }
        if let Some(c) = self.ipv4_native_routing_cidr {
            put("ipv4-native-routing-cidr", c.to_string());
        }
        put(
            "kube-proxy-replacement",
            self.kube_proxy_replacement.to_string(),
        );
        if let Some(h) = &self.k8s_service_host {
            put("k8s-service-host", h.clone());
        }
        if let Some(p) = self.k8s_service_port {
            put("k8s-service-port", p.to_string());
        }
        put("enable-policy", self.policy_enforcement_mode.clone());
        // Identities must be shared by every node: CiliumIdentity objects (the agent's
        // default is its local file allocator, for the local cluster).
        put("identity-allocation-mode", "crd".to_string());
        put("ipam", self.ipam_mode.clone());
        if self.ipam_mode == "cluster-pool" {
            let pools: Vec<String> = self
                .cluster_pool_ipv4_pod_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect();
            put("cluster-pool-ipv4-cidr", pools.join(" "));
            put(
                "cluster-pool-ipv4-mask-size",
                self.cluster_pool_ipv4_mask_size.to_string(),
            );
        }
        put(
            "bpf-map-dynamic-size-ratio",
            self.bpf_map_dynamic_size_ratio.to_string(),
        );
        put("bpf-ct-global-tcp-max", self.bpf_ct_tcp_max.to_string());
        put("bpf-ct-global-any-max", self.bpf_ct_any_max.to_string());
        put("bpf-lb-map-max", self.bpf_lb_map_max.to_string());
        put("bpf-policy-map-max", self.bpf_policy_map_max.to_string());
        put("bpf-lb-algorithm", self.lb_algorithm.clone());
        put("bpf-lb-mode", self.lb_mode.clone());
        put(
            "bpf-lb-maglev-table-size",
            self.maglev_table_size.to_string(),
        );
        put("enable-hubble", self.hubble_enabled.to_string());
        put("cni-uninstall", self.cni_uninstall.to_string());
        put("cgroup-root", self.cgroup_host_root.clone());
        m
    }
}

fn list<T: std::fmt::Display>(it: impl Iterator<Item = T>) -> String {
    it.map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

fn valid_cluster_name(s: &str) -> bool {
    let ok_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !s.is_empty()
        && s.len() <= 32
        && ok_edge(s.chars().next())
        && ok_edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn parse_cidr(key: &str, s: &str) -> Result<Ipv4Net, ValuesError> {
    let net: Ipv4Net = s.parse().map_err(|_| ValuesError::Invalid {
        key: key.into(),
        msg: format!("{s:?} is not an IPv4 CIDR like 10.0.0.0/8"),
    })?;
    if net.network() != net.addr() {
        return Err(ValuesError::Invalid {
            key: key.into(),
            msg: format!(
                "{s:?} has host bits set; did you mean {}?",
                Ipv4Net::new(net.network(), net.prefix_len()).unwrap_or(net)
            ),
        });
    }
    Ok(net)
}

/// A rolling update's maxUnavailable: a whole number of at least 1, or 1%..100%.
fn max_unavailable(key: &str, s: &str) -> Result<serde_json::Value, ValuesError> {
    let bad = || ValuesError::Invalid {
        key: key.into(),
        msg: format!(
            "{s:?} is not a number of nodes (1, 2, ...) or a percentage (1%..100%); 1 replaces \
             one node's agent at a time"
        ),
    };
    let (digits, pct) = match s.strip_suffix('%') {
        Some(d) => (d, true),
        None => (s, false),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    if n == 0 || (pct && n > 100) {
        return Err(bad());
    }
    Ok(if pct { s.into() } else { n.into() })
}

fn parse_int(key: &str, s: &str, min: u64, max: u64) -> Result<u64, ValuesError> {
    let n: u64 = s.trim().parse().map_err(|_| ValuesError::Type {
        key: key.into(),
        expected: "a whole number".into(),
        found: format!("{s:?}"),
    })?;
    if n < min || n > max {
        return Err(ValuesError::Invalid {
            key: key.into(),
            msg: format!("{n} is out of range: use {min}..={max}"),
        });
    }
    Ok(n)
}

/// Typed access to the merged values by dotted key.
struct Get<'a>(&'a Value);

impl Get<'_> {
    fn raw(&self, key: &str) -> Option<&Value> {
        let mut v = self.0;
        for part in key.split('.') {
            v = v.as_mapping()?.get(part)?;
        }
        Some(v)
    }

    fn required(&self, key: &str) -> Result<&Value, ValuesError> {
        match self.raw(key) {
            None | Some(Value::Null) => Err(ValuesError::Required { key: key.into() }),
            Some(v) => Ok(v),
        }
    }

    fn type_err(key: &str, expected: &str, found: &Value) -> ValuesError {
        ValuesError::Type {
            key: key.into(),
            expected: expected.into(),
            found: match found {
                Value::String(s) => format!("{s:?}"),
                other => kind_of(other).into(),
            },
        }
    }

    /// A scalar as text (strings, numbers and booleans), None for "" or null.
    fn opt_scalar(&self, key: &str) -> Result<Option<String>, ValuesError> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(Self::type_err(key, "a single value", other)),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>, ValuesError> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Self::type_err(key, "a string", other)),
        }
    }

    fn str(&self, key: &str) -> Result<String, ValuesError> {
        match self.required(key)? {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::String(_) => Err(ValuesError::Invalid {
                key: key.into(),
                msg: "must not be empty".into(),
            }),
            // Numbers given where a name is expected (e.g. a tag `--set image.tag=1`).
            Value::Number(n) => Ok(n.to_string()),
            other => Err(Self::type_err(key, "a string", other)),
        }
    }

    fn abs_path(&self, key: &str) -> Result<String, ValuesError> {
        let s = self.str(key)?;
        if !s.starts_with('/') {
            return Err(ValuesError::Invalid {
                key: key.into(),
                msg: format!("{s:?} is not an absolute path"),
            });
        }
        Ok(s)
    }

    fn one_of(&self, key: &str, allowed: &[&str]) -> Result<String, ValuesError> {
        let v = self.required(key)?;
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(Self::type_err(
                    key,
                    &format!("one of {}", allowed.join(", ")),
                    other,
                ))
            }
        };
        if !allowed.contains(&s.as_str()) {
            return Err(ValuesError::NotAllowed {
                key: key.into(),
                value: s,
                allowed: allowed.join(", "),
            });
        }
        Ok(s)
    }

    /// true/false, also as the strings "true"/"false" (`--set-string`, upstream's
    /// string-typed kubeProxyReplacement).
    fn bool(&self, key: &str) -> Result<bool, ValuesError> {
        match self.required(key)? {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s == "true" => Ok(true),
            Value::String(s) if s == "false" => Ok(false),
            Value::String(s) => Err(ValuesError::NotAllowed {
                key: key.into(),
                value: s.clone(),
                allowed: "true, false".into(),
            }),
            other => Err(Self::type_err(key, "true or false", other)),
        }
    }

    fn int(&self, key: &str, min: u64, max: u64) -> Result<u64, ValuesError> {
        let s = match self.required(key)? {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            other => return Err(Self::type_err(key, "a whole number", other)),
        };
        parse_int(key, &s, min, max)
    }

    /// A number; strings too, since Helm's `--set` keeps `0.0025` a string.
    fn float(&self, key: &str) -> Result<f64, ValuesError> {
        match self.required(key)? {
            Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| Self::type_err(key, "a number", &Value::Null)),
            Value::String(s) => s.trim().parse().map_err(|_| ValuesError::Type {
                key: key.into(),
                expected: "a number".into(),
                found: format!("{s:?}"),
            }),
            other => Err(Self::type_err(key, "a number", other)),
        }
    }

    /// A list of strings; a single string counts as a one-element list.
    fn str_list(&self, key: &str) -> Result<Vec<String>, ValuesError> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::String(s)) if s.is_empty() => Ok(vec![]),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, it)| match it {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    Value::Bool(b) => Ok(b.to_string()),
                    other => Err(Self::type_err(&format!("{key}[{i}]"), "a string", other)),
                })
                .collect(),
            Some(other) => Err(Self::type_err(key, "a list of strings", other)),
        }
    }

    fn str_map(&self, key: &str) -> Result<BTreeMap<String, String>, ValuesError> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Mapping(m)) => m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let k = key_str(k);
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => {
                            return Err(Self::type_err(&format!("{key}.{k}"), "a string", other))
                        }
                    };
                    Ok((k, v))
                })
                .collect(),
            Some(other) => Err(Self::type_err(key, "a map of strings", other)),
        }
    }

    /// A list of Kubernetes objects of type `T`, with no field `T` does not know.
    fn objects<T: serde::de::DeserializeOwned + Serialize>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<Vec<T>, ValuesError> {
        let items = match self.raw(key) {
            None | Some(Value::Null) => return Ok(vec![]),
            Some(Value::Sequence(items)) => items,
            Some(other) => return Err(Self::type_err(key, &format!("a list of {what}"), other)),
        };
        items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let k = format!("{key}[{i}]");
                let json = serde_json::to_value(it).map_err(|e| ValuesError::Invalid {
                    key: k.clone(),
                    msg: e.to_string(),
                })?;
                strict::from_json::<T>(&json).map_err(|msg| ValuesError::Invalid {
                    key: k,
                    msg: format!("not a valid {what}: {msg}"),
                })
            })
            .collect()
    }

    fn image(&self, prefix: &str) -> Result<Image, ValuesError> {
        let repo_key = format!("{prefix}image.repository");
        let repository = self.str(&repo_key)?;
        if repository.chars().any(|c| c.is_whitespace() || c == '@') || repository.ends_with(':') {
            return Err(ValuesError::Invalid {
                key: repo_key,
                msg: format!("{repository:?} is not an image repository like localhost/cilium"),
            });
        }
        let reference = if self.bool(&format!("{prefix}image.useDigest"))? {
            let key = format!("{prefix}image.digest");
            let digest = self.opt_str(&key)?.unwrap_or_default();
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ValuesError::Invalid {
                    key,
                    msg: format!(
                        "useDigest=true needs a digest like sha256:<64 hex digits>, not {digest:?}"
                    ),
                });
            }
            format!("{repository}@{digest}")
        } else {
            let key = format!("{prefix}image.tag");
            let tag = self.str(&key)?;
            let ok = tag.len() <= 128
                && tag
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(ValuesError::Invalid {
                    key,
                    msg: format!("{tag:?} is not an image tag (letters, digits, _ . -)"),
                });
            }
            format!("{repository}:{tag}")
        };
        Ok(Image {
            reference,
            pull_policy: self.one_of(
                &format!("{prefix}image.pullPolicy"),
                &["Always", "IfNotPresent", "Never"],
            )?,
        })
    }

    fn pod(&self, prefix: &str) -> Result<PodSettings, ValuesError> {
        Ok(PodSettings {
            image: self.image(prefix)?,
            extra_args: self.str_list(&format!("{prefix}extraArgs"))?,
            extra_env: self.objects(&format!("{prefix}extraEnv"), "EnvVar")?,
            pod_annotations: self.str_map(&format!("{prefix}podAnnotations"))?,
            pod_labels: self.str_map(&format!("{prefix}podLabels"))?,
            node_selector: self.str_map(&format!("{prefix}nodeSelector"))?,
            tolerations: self.objects(&format!("{prefix}tolerations"), "Toleration")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(set: &[&str]) -> Result<Values, ValuesError> {
        Values::load(&ValueSources {
            set: set.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    fn load_err(set: &[&str]) -> String {
        match load(set) {
            Ok(_) => panic!("{set:?} should be rejected"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_validate_and_image_is_this_version() {
        let v = load(&[]).expect("defaults are valid");
        let s = &v.settings;
        assert_eq!(
            s.agent.image.reference,
            format!("localhost/cilium:{}", crate::VERSION)
        );
        assert_eq!(s.operator.image.reference, s.agent.image.reference);
        assert_eq!(
            s.agent.image.reference,
            crate::install::image::default_reference()
        );
        assert_eq!(s.routing_mode, "tunnel");
        assert_eq!(s.ipam_mode, "cluster-pool");
        assert_eq!(s.operator_replicas, 2);
        assert_eq!(
            s.cluster_pool_ipv4_pod_cidrs,
            vec!["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]
        );
        let cm = s.config_map();
        assert_eq!(cm["routing-mode"], "tunnel");
        assert_eq!(cm["tunnel-protocol"], "vxlan");
        assert_eq!(cm["bpf-map-dynamic-size-ratio"], "0.0025");
        assert_eq!(cm["cluster-pool-ipv4-mask-size"], "24");
    }

    #[test]
    fn unknown_keys_name_the_full_key_and_the_known_ones() {
        let e = load_err(&["ipam.mod=kubernetes"]);
        assert!(
            e.contains("unknown value key `ipam.mod`; known keys under `ipam`: mode, operator"),
            "{e}"
        );
        let e = load_err(&["routingmode=native"]);
        assert!(
            e.contains("unknown value key `routingmode`; known top-level keys:"),
            "{e}"
        );
        assert!(e.contains("routingMode"), "{e}");
        let e = load_err(&["ipam.operator.clusterPoolIPv4PodCIDR=10.0.0.0/8"]);
        assert!(e.contains("`ipam.operator.clusterPoolIPv4PodCIDR`"), "{e}");
        // A map where a single value belongs, and the reverse.
        let e = load_err(&["routingMode.x=1"]);
        assert!(e.contains("value `routingMode` must be a string"), "{e}");
        let e = load_err(&["ipam=kubernetes"]);
        assert!(
            e.contains("value `ipam` must be a map (keys: mode, operator)"),
            "{e}"
        );
    }

    #[test]
    fn free_form_keys_accept_anything_of_their_kind() {
        let v = load(&[
            "podAnnotations.example\\.com/a=b",
            "operator.podLabels.team=net",
            "nodeSelector.kubernetes\\.io/os=null",
            "nodeSelector.disk=ssd",
            "extraArgs={--foo,--bar=1}",
            "tolerations[0].key=node-role.kubernetes.io/control-plane,tolerations[0].effect=NoSchedule",
        ])
        .expect("free-form values are accepted");
        let s = &v.settings;
        assert_eq!(s.agent.pod_annotations["example.com/a"], "b");
        assert_eq!(s.operator.pod_labels["team"], "net");
        assert_eq!(
            s.agent.node_selector,
            BTreeMap::from([("disk".to_string(), "ssd".to_string())])
        );
        assert_eq!(s.agent.extra_args, vec!["--foo", "--bar=1"]);
        assert_eq!(s.agent.tolerations.len(), 1);
        assert_eq!(s.agent.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        // Free-form, but still the right kind and the right object fields.
        let e = load_err(&["tolerations=x"]);
        assert!(
            e.contains("value `tolerations` must be a list, not a string"),
            "{e}"
        );
        let e = load_err(&["tolerations[0].efect=NoSchedule"]);
        assert!(e.contains("`tolerations[0]`") && e.contains("efect"), "{e}");
    }

    #[test]
    fn enum_values_are_checked() {
        for (set, key, allowed) in [
            ("routingMode=direct", "routingMode", "tunnel, native"),
            ("tunnelProtocol=gre", "tunnelProtocol", "vxlan, geneve"),
            ("ipam.mode=eni", "ipam.mode", "cluster-pool, kubernetes"),
            (
                "policyEnforcementMode=strict",
                "policyEnforcementMode",
                "default, always, never",
            ),
            (
                "loadBalancer.algorithm=rr",
                "loadBalancer.algorithm",
                "random, maglev",
            ),
            ("loadBalancer.mode=hybrid", "loadBalancer.mode", "snat, dsr"),
            (
                "image.pullPolicy=Sometimes",
                "image.pullPolicy",
                "Always, IfNotPresent, Never",
            ),
            ("debug.enabled=yes", "debug.enabled", "true, false"),
        ] {
            let e = load_err(&[set]);
            assert!(
                e.contains(&format!("value `{key}`")) && e.contains(allowed),
                "{set}: {e}"
            );
        }
        let e = load_err(&["maglev.tableSize=1000"]);
        assert!(
            e.contains("`maglev.tableSize`") && e.contains("16381"),
            "{e}"
        );
    }

    #[test]
    fn constraints_between_values() {
        let e = load_err(&["routingMode=native"]);
        assert!(e.contains("`ipv4NativeRoutingCIDR`"), "{e}");
        let e = load_err(&["routingMode=native,ipv4NativeRoutingCIDR=10.0.0.1/8"]);
        assert!(e.contains("host bits") && e.contains("10.0.0.0/8"), "{e}");
        let e = load_err(&["kubeProxyReplacement=true"]);
        assert!(e.contains("k8sServiceHost"), "{e}");
        load(&["kubeProxyReplacement=true,k8sServiceHost=10.1.0.1,k8sServicePort=6443"])
            .expect("KPR with the API server address");
        let e = load_err(&["loadBalancer.mode=dsr"]);
        assert!(e.contains("routingMode=native"), "{e}");
        let e = load_err(&["ipam.operator.clusterPoolIPv4MaskSize=8"]);
        assert!(e.contains("smaller than the pool 10.0.0.0/8"), "{e}");
        let e = load_err(&["ipam.operator.clusterPoolIPv4MaskSize=33"]);
        assert!(
            e.contains("`ipam.operator.clusterPoolIPv4MaskSize`: 33 is out of range: use 1..=32"),
            "{e}"
        );
        let e = load_err(&["ipam.operator.clusterPoolIPv4PodCIDRList={10.0.0.0/8,nope}"]);
        assert!(
            e.contains("`ipam.operator.clusterPoolIPv4PodCIDRList[1]`"),
            "{e}"
        );
        let e = load_err(&["operator.enabled=false"]);
        assert!(
            e.contains("ipam.mode=cluster-pool needs the operator"),
            "{e}"
        );
        load(&["operator.enabled=false,ipam.mode=kubernetes"]).expect("no operator with k8s IPAM");
        let e = load_err(&["cluster.id=256"]);
        assert!(e.contains("`cluster.id`: 256 is out of range"), "{e}");
        let e = load_err(&["cluster.name=Prod_1"]);
        assert!(e.contains("`cluster.name`"), "{e}");
        let e = load_err(&["bpf.ctTcpMax=10"]);
        assert!(e.contains("`bpf.ctTcpMax`: 10 is out of range"), "{e}");
        let e = load_err(&["bpf.mapDynamicSizeRatio=2"]);
        assert!(e.contains("`bpf.mapDynamicSizeRatio`"), "{e}");
        let e = load_err(&["image.useDigest=true"]);
        assert!(e.contains("`image.digest`"), "{e}");
        let e = load_err(&["cni.binPath=opt/cni/bin"]);
        assert!(e.contains("`cni.binPath`") && e.contains("absolute"), "{e}");
        let e = load_err(&["ipam.mode=null"]);
        assert!(e.contains("`ipam.mode` is required"), "{e}");
    }

    #[test]
    fn set_string_and_string_numbers() {
        let v = Values::load(&ValueSources {
            set_string: vec!["operator.replicas=3,bpf.mapDynamicSizeRatio=0.5".into()],
            set: vec!["bpf.mapDynamicSizeRatio=0.01".into()],
            ..Default::default()
        })
        .expect("numbers as strings");
        assert_eq!(v.settings.operator_replicas, 3);
        // --set-string is applied after --set.
        assert_eq!(v.settings.bpf_map_dynamic_size_ratio, 0.5);
        let v = load(&["image.useDigest=true,image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"])
            .expect("digest");
        assert!(v
            .settings
            .agent
            .image
            .reference
            .starts_with("localhost/cilium@sha256:0123"));
    }

    #[test]
    fn merge_is_deep_for_maps_and_replaces_lists() {
        let mut base: Value = serde_yaml::from_str("{a: {b: 1, c: [1, 2]}, d: x}").unwrap();
        let over: Value = serde_yaml::from_str("{a: {c: [3], e: 2}, d: null}").unwrap();
        let mut user = base.clone();
        merge(&mut user, &over);
        assert_eq!(
            user,
            serde_yaml::from_str::<Value>("{a: {b: 1, c: [3], e: 2}, d: null}").unwrap()
        );
        coalesce(&mut base, &over);
        assert_eq!(
            base,
            serde_yaml::from_str::<Value>("{a: {b: 1, c: [3], e: 2}}").unwrap()
        );
    }

    #[test]
    fn set_indexes_into_lists_from_files() {
        let dir = std::env::temp_dir().join(format!("cilium-values-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("v.yaml");
        std::fs::write(&f, "extraArgs: [--a, --b]\ndebug: {enabled: null}\n").unwrap();
        let user = user_values(&ValueSources {
            files: vec![f.clone()],
            set: vec!["extraArgs[1]=--c,debug.enabled=true".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            user,
            serde_yaml::from_str::<Value>("{extraArgs: [--a, --c], debug: {enabled: true}}")
                .unwrap()
        );
        // A null from a file deletes the default: a required key then reports it.
        let e = Values::load(&ValueSources {
            files: vec![f],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("`debug.enabled` is required"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn image_sets_both_images_and_rolling_update_and_cni_uninstall_are_checked() {
        let img = |s: &str| {
            Values::load(&ValueSources {
                image: Some(s.into()),
                ..Default::default()
            })
        };
        let v = img("registry.example:5000/team/cilium:v2").expect("image");
        assert_eq!(
            v.settings.agent.image.reference,
            "registry.example:5000/team/cilium:v2"
        );
        assert_eq!(
            v.settings.operator.image.reference,
            v.settings.agent.image.reference
        );
        let v = img("registry.example:5000/cilium").expect("no tag");
        assert_eq!(
            v.settings.agent.image.reference,
            "registry.example:5000/cilium:latest"
        );
        let d = format!("q/cilium@sha256:{}", "ab".repeat(32));
        assert_eq!(
            img(&d).expect("digest").settings.operator.image.reference,
            d
        );
        for bad in ["", "q/cilium:", "a b", "q/cilium@sha256:12"] {
            assert!(img(bad).is_err(), "{bad:?}");
        }
        let e = img("q/cilium:").unwrap_err().to_string();
        assert!(
            e.contains("--image") && e.contains("localhost/cilium:1.2.3"),
            "{e}"
        );

        let v = load(&[]).unwrap();
        assert_eq!(v.settings.agent_max_unavailable, serde_json::json!(1));
        assert!(!v.settings.cni_uninstall);
        assert_eq!(v.settings.config_map()["cni-uninstall"], "false");
        let v =
            load(&["updateStrategy.rollingUpdate.maxUnavailable=25%,cni.uninstall=true"]).unwrap();
        assert_eq!(v.settings.agent_max_unavailable, serde_json::json!("25%"));
        assert_eq!(v.settings.config_map()["cni-uninstall"], "true");
        for bad in ["0", "0%", "101%", "x", "-1"] {
            let e = load_err(&[&format!(
                "updateStrategy.rollingUpdate.maxUnavailable={bad}"
            )]);
            assert!(
                e.contains("`updateStrategy.rollingUpdate.maxUnavailable`")
                    && e.contains("percentage"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn version_sets_both_image_tags() {
        let v = Values::load(&ValueSources {
            version: Some("v1.2.3".into()),
            ..Default::default()
        })
        .expect("version");
        assert_eq!(v.settings.agent.image.reference, "localhost/cilium:1.2.3");
        assert_eq!(
            v.settings.operator.image.reference,
            "localhost/cilium:1.2.3"
        );
    }
}
