//! `cilium install --dry-run`: golden manifests, every object strictly a valid Kubernetes
//! object (no field its type does not know), RBAC from the one table, structural CRD
//! schemas, and the CLI's errors for bad values. No privileges needed.
//!
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test --test install_render`,
//! then review the diff.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde_json::Value;

use cilium::{install::strict, k8s::rbac};

const BIN: &str = env!("CARGO_BIN_EXE_cilium");

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/install")
        .join(name)
}

fn cilium(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(testdata(""))
        .stdin(Stdio::null())
        .output()
        .expect("running the cilium binary")
}

fn render(args: &[&str]) -> String {
    let mut all = vec!["install", "--dry-run"];
    all.extend_from_slice(args);
    let out = cilium(&all);
    assert!(
        out.status.success(),
        "cilium {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

/// (golden file, arguments after `install --dry-run`)
const CASES: &[(&str, &[&str])] = &[
    ("default.yaml", &[]),
    (
        "native-routing.yaml",
        &[
            "--set",
            "routingMode=native,ipv4NativeRoutingCIDR=10.0.0.0/8",
        ],
    ),
    ("ipam-kubernetes.yaml", &["--set", "ipam.mode=kubernetes"]),
    (
        "file-and-set.yaml",
        &[
            "-n",
            "cilium-system",
            "-f",
            "values-a.yaml",
            "-f",
            "values-b.yaml",
            "--set",
            "cluster.name=from-set,extraArgs[1]=--from-set",
            "--set-string",
            "podAnnotations.example\\.com/build=42",
        ],
    ),
];

fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n")
        .map(|d| d.trim_start_matches("---\n"))
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .map(|d| {
            let v: serde_yaml::Value =
                serde_yaml::from_str(d).unwrap_or_else(|e| panic!("invalid YAML ({e}):\n{d}"));
            serde_json::to_value(v).expect("YAML as JSON")
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

#[test]
fn golden_manifests() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (file, args) in CASES {
        let got = render(args);
        let path = testdata(file);
        if update {
            std::fs::write(&path, &got).expect("writing golden file");
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        if got != want {
            let first = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(got.lines().count().min(want.lines().count()));
            stale.push(format!(
                "{file}: differs from line {}: got {:?}, want {:?}",
                first + 1,
                got.lines().nth(first),
                want.lines().nth(first)
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "rendered manifests differ from the golden files (UPDATE_GOLDEN=1 to accept, then review the diff):\n{}",
        stale.join("\n")
    );
}

/// Deserializes `doc` into `T` and fails naming every field `T` does not have.
fn strictly<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    strict::from_json(doc).unwrap_or_else(|e| {
        panic!(
            "{} {}: {e}",
            doc["kind"].as_str().unwrap_or("?"),
            doc["metadata"]["name"].as_str().unwrap_or("?")
        )
    })
}

#[test]
fn every_object_is_a_valid_kubernetes_object_with_no_unknown_field() {
    for (file, args) in CASES {
        let docs = documents(&render(args));
        assert!(!docs.is_empty(), "{file}: nothing rendered");
        for doc in &docs {
            match doc["kind"].as_str() {
                Some("ServiceAccount") => drop(strictly::<ServiceAccount>(doc)),
                Some("ClusterRole") => drop(strictly::<ClusterRole>(doc)),
                Some("ClusterRoleBinding") => drop(strictly::<ClusterRoleBinding>(doc)),
                Some("ConfigMap") => drop(strictly::<ConfigMap>(doc)),
                Some("DaemonSet") => drop(strictly::<DaemonSet>(doc)),
                Some("Deployment") => drop(strictly::<Deployment>(doc)),
                Some("CustomResourceDefinition") => drop(strictly::<CustomResourceDefinition>(doc)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
}

#[test]
fn strictness_catches_an_unknown_field() {
    // The check above is only worth something if it fails on a typo.
    let mut docs = documents(&render(&[]));
    let ds = docs
        .iter_mut()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("DaemonSet");
    ds["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let err = strict::from_json::<DaemonSet>(ds).expect_err("typo must be caught");
    assert!(err.contains("spec.template.spec.hostNetwrok"), "{err}");
}

#[test]
fn default_install_objects() {
    let docs = documents(&render(&[]));
    let mut got: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("ClusterRole", "cilium"),
        ("ClusterRole", "cilium-operator"),
        ("ClusterRoleBinding", "cilium"),
        ("ClusterRoleBinding", "cilium-operator"),
        ("ConfigMap", "cilium-config"),
        (
            "CustomResourceDefinition",
            "ciliumclusterwidenetworkpolicies.cilium.io",
        ),
        ("CustomResourceDefinition", "ciliumendpoints.cilium.io"),
        ("CustomResourceDefinition", "ciliumidentities.cilium.io"),
        (
            "CustomResourceDefinition",
            "ciliumnetworkpolicies.cilium.io",
        ),
        ("CustomResourceDefinition", "ciliumnodeconfigs.cilium.io"),
        ("CustomResourceDefinition", "ciliumnodes.cilium.io"),
        ("DaemonSet", "cilium"),
        ("Deployment", "cilium-operator"),
        ("ServiceAccount", "cilium"),
        ("ServiceAccount", "cilium-operator"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    want.sort();
    assert_eq!(got, want);
    // CRDs first, so the API knows them before anything refers to them.
    assert_eq!(docs[0]["kind"], "CustomResourceDefinition");

    let ds: DaemonSet = strictly(find(&docs, "DaemonSet", "cilium"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let labels = ds.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["k8s-app"], "cilium");
    assert_eq!(labels["app.kubernetes.io/name"], "cilium-agent");
    assert_eq!(labels["app.kubernetes.io/part-of"], "cilium");
    let spec = ds.spec.expect("spec");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("cilium"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tol = pod.tolerations.clone().unwrap_or_default();
    assert_eq!(tol.len(), 1);
    assert_eq!(tol[0].operator.as_deref(), Some("Exists"));
    let init = &pod.init_containers.clone().unwrap_or_default()[0];
    assert_eq!(init.name, "install-cni");
    assert_eq!(
        init.command.clone().unwrap_or_default()[..3],
        ["cilium", "agent", "install-cni"]
    );
    let agent = &pod.containers[0];
    assert_eq!(agent.name, "cilium-agent");
    assert_eq!(
        agent.image.as_deref(),
        Some(format!("localhost/cilium:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(
        agent.command.clone().unwrap_or_default()[..2],
        ["cilium", "agent"]
    );
    for probe in [
        &agent.readiness_probe,
        &agent.liveness_probe,
        &agent.startup_probe,
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("httpGet probe");
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(get.path.as_deref(), Some("/healthz"));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9879)
        );
    }
    let env: Vec<String> = agent
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(env.contains(&"K8S_NODE_NAME".to_string()));
    assert!(env.contains(&"CILIUM_K8S_NAMESPACE".to_string()));
    let caps = agent
        .security_context
        .clone()
        .and_then(|s| s.capabilities)
        .and_then(|c| c.add)
        .unwrap_or_default();
    for c in [
        "NET_ADMIN",
        "SYS_ADMIN",
        "BPF",
        "PERFMON",
        "NET_RAW",
        "SYS_RESOURCE",
        "IPC_LOCK",
    ] {
        assert!(caps.contains(&c.to_string()), "agent lacks {c}");
    }
    let mounts = agent.volume_mounts.clone().unwrap_or_default();
    let bpf = mounts
        .iter()
        .find(|m| m.mount_path == "/sys/fs/bpf")
        .expect("bpffs mount");
    assert_eq!(bpf.mount_propagation.as_deref(), Some("Bidirectional"));
    // Kubernetes rejects Bidirectional propagation outside privileged containers.
    assert_eq!(
        agent.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let host_paths: Vec<String> = pod
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.host_path.map(|h| h.path))
        .collect();
    for p in [
        "/sys/fs/bpf",
        "/run/cilium/cgroupv2",
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/var/run/cilium",
        "/lib/modules",
        "/run/xtables.lock",
    ] {
        assert!(host_paths.contains(&p.to_string()), "no hostPath {p}");
    }
    let ru = spec
        .update_strategy
        .and_then(|u| u.rolling_update)
        .expect("rolling update");
    // One node's agent at a time (`cilium upgrade` waits for this rollout).
    assert_eq!(
        ru.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    // The preStop hook removes the node's CNI files only when cilium-config says so
    // (`cilium uninstall` sets cni-uninstall=true first); it needs the host directories.
    let pre_stop = agent
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("preStop exec hook");
    assert_eq!(
        pre_stop,
        [
            "cilium",
            "agent",
            "uninstall-cni",
            "--cni-bin-dir=/host/opt/cni/bin",
            "--cni-conf-dir=/host/etc/cni/net.d",
            "--config-dir=/tmp/cilium/config-map"
        ]
    );
    for path in [
        "/host/opt/cni/bin",
        "/host/etc/cni/net.d",
        "/tmp/cilium/config-map",
    ] {
        assert!(
            mounts.iter().any(|m| m.mount_path == path),
            "the agent container mounts {path}"
        );
    }
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        strictly(find(&docs, "ConfigMap", "cilium-config"));
    assert_eq!(cm.data.unwrap_or_default()["cni-uninstall"], "false");

    let dep: Deployment = strictly(find(&docs, "Deployment", "cilium-operator"));
    let dspec = dep.spec.expect("spec");
    assert_eq!(dspec.replicas, Some(2));
    let opod = dspec.template.spec.expect("pod spec");
    assert_eq!(opod.host_network, Some(true));
    assert_eq!(
        opod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    let anti = opod
        .affinity
        .and_then(|a| a.pod_anti_affinity)
        .and_then(|a| a.required_during_scheduling_ignored_during_execution)
        .expect("required anti-affinity");
    assert_eq!(
        anti[0]
            .label_selector
            .clone()
            .and_then(|s| s.match_labels)
            .unwrap_or_default()["io.cilium/app"],
        "operator"
    );
    let op = &opod.containers[0];
    assert_eq!(
        op.command.clone().unwrap_or_default()[..3],
        ["cilium", "operator", "--leader-elect"]
    );
    let get = op
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.clone())
        .expect("operator liveness");
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9234)
    );
}

fn rules_of(docs: &[Value], name: &str) -> Vec<PolicyRule> {
    let role: ClusterRole = strictly(find(docs, "ClusterRole", name));
    role.rules.unwrap_or_default()
}

fn table(rules: &[rbac::Rule]) -> Vec<PolicyRule> {
    rules
        .iter()
        .map(|r| PolicyRule {
            api_groups: Some(r.api_groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(r.resources.iter().map(|s| s.to_string()).collect()),
            verbs: r.verbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .collect()
}

#[test]
fn cluster_roles_are_the_rbac_table() {
    let docs = documents(&render(&[]));
    assert_eq!(rules_of(&docs, "cilium"), table(rbac::AGENT_RULES));
    assert_eq!(
        rules_of(&docs, "cilium-operator"),
        table(rbac::OPERATOR_RULES)
    );
    let binding: ClusterRoleBinding = strictly(find(&docs, "ClusterRoleBinding", "cilium"));
    assert_eq!(binding.role_ref.name, "cilium");
    let subject = &binding.subjects.unwrap_or_default()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "cilium", Some("kube-system"))
    );
}

/// Kubernetes' structural schema rules: every node has a type (or says it preserves
/// unknown fields / is int-or-string), no $ref, no properties next to
/// additionalProperties.
fn check_structural(schema: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        errors.push(format!("{path}: not an object"));
        return;
    };
    for banned in ["$ref", "definitions", "$defs", "$schema"] {
        if obj.contains_key(banned) {
            errors.push(format!("{path}: has {banned}"));
        }
    }
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !typed {
        errors.push(format!("{path}: no type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        errors.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            check_structural(v, &format!("{path}.{k}"), errors);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(items, &format!("{path}[]"), errors);
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(ap, &format!("{path}{{}}"), errors);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = obj.get(key).and_then(|l| l.as_array()) {
            for (i, sub) in list.iter().enumerate() {
                // Inside a logical junctor, Kubernetes forbids types, descriptions and defaults.
                for bad in ["type", "description", "default", "nullable"] {
                    if sub.get(bad).is_some() {
                        errors.push(format!("{path}.{key}[{i}]: has {bad}"));
                    }
                }
            }
        }
    }
}

#[test]
fn crds_are_structural_and_named_as_upstream() {
    let docs = documents(&render(&[]));
    let mut errors = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        let crd: CustomResourceDefinition = strictly(doc);
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert_eq!(crd.spec.group, "cilium.io");
        assert_eq!(crd.spec.versions.len(), 1, "{name}");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v2", "{name}");
        assert!(v.served && v.storage, "{name}");
        let schema = serde_json::to_value(
            v.schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("schema JSON");
        check_structural(&schema, &name, &mut errors);
        let scope = crd.spec.scope.as_str();
        let want_scope = match name.as_str() {
            "ciliumnodes.cilium.io"
            | "ciliumidentities.cilium.io"
            | "ciliumclusterwidenetworkpolicies.cilium.io" => "Cluster",
            _ => "Namespaced",
        };
        assert_eq!(scope, want_scope, "{name}");
    }
    assert!(
        errors.is_empty(),
        "non-structural schema parts:\n{}",
        errors.join("\n")
    );
}

#[test]
fn native_routing_and_kubernetes_ipam_change_the_config() {
    let cm = |args: &[&str]| -> ConfigMap {
        strictly(find(
            &documents(&render(args)),
            "ConfigMap",
            "cilium-config",
        ))
    };
    let native = cm(&[
        "--set",
        "routingMode=native,ipv4NativeRoutingCIDR=10.0.0.0/8",
    ])
    .data
    .unwrap_or_default();
    assert_eq!(native["routing-mode"], "native");
    assert_eq!(native["ipv4-native-routing-cidr"], "10.0.0.0/8");
    assert!(!native.contains_key("tunnel-protocol"));

    let k8s = cm(&["--set", "ipam.mode=kubernetes"])
        .data
        .unwrap_or_default();
    assert_eq!(k8s["ipam"], "kubernetes");
    assert!(!k8s.contains_key("cluster-pool-ipv4-cidr"));
    assert!(!k8s.contains_key("cluster-pool-ipv4-mask-size"));
}

#[test]
fn files_then_set_then_set_string() {
    let args = CASES
        .iter()
        .find(|(f, _)| *f == "file-and-set.yaml")
        .map(|(_, a)| *a)
        .expect("case");
    let docs = documents(&render(args));
    let cm: ConfigMap = strictly(find(&docs, "ConfigMap", "cilium-config"));
    assert_eq!(cm.metadata.namespace.as_deref(), Some("cilium-system"));
    let data = cm.data.unwrap_or_default();
    // values-a sets cluster.name and debug; values-b overrides cluster.name; --set wins.
    assert_eq!(data["cluster-name"], "from-set");
    assert_eq!(data["debug"], "true");
    // values-b replaces (not merges) the pool list of values-a.
    assert_eq!(data["cluster-pool-ipv4-cidr"], "10.96.0.0/12");
    // values-a's map keys survive values-b's other keys under the same parent.
    assert_eq!(data["cluster-id"], "7");
    let dep: Deployment = strictly(find(&docs, "Deployment", "cilium-operator"));
    assert_eq!(dep.spec.and_then(|s| s.replicas), Some(1));
    let ds: DaemonSet = strictly(find(&docs, "DaemonSet", "cilium"));
    let tmpl = ds.spec.expect("spec").template;
    let ann = tmpl
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(ann["example.com/build"], "42");
    assert_eq!(ann["example.com/team"], "net");
    let cmd = tmpl.spec.expect("pod").containers[0]
        .command
        .clone()
        .unwrap_or_default();
    // --set indexes into the list values-a gave (as Helm: --set is parsed into the
    // files' values).
    assert_eq!(cmd[cmd.len() - 2..], ["--from-file-a", "--from-set"]);
}

fn fails(args: &[&str]) -> String {
    let out = cilium(args);
    assert!(!out.status.success(), "cilium {args:?} should fail");
    assert!(
        out.stdout.is_empty(),
        "cilium {args:?} printed manifests despite failing"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_values_are_clear_errors() {
    let e = fails(&["install", "--dry-run", "--set", "ipam.mod=kubernetes"]);
    assert!(
        e.contains("unknown value key `ipam.mod`; known keys under `ipam`: mode, operator"),
        "{e}"
    );
    let e = fails(&["install", "--dry-run", "--set", "routingMode=direct"]);
    assert!(
        e.contains("`routingMode`") && e.contains("tunnel, native"),
        "{e}"
    );
    let e = fails(&["install", "--dry-run", "--set", "loadBalancer.algorithm=rr"]);
    assert!(
        e.contains("`loadBalancer.algorithm`") && e.contains("random, maglev"),
        "{e}"
    );
    let e = fails(&["install", "--dry-run", "--set", "a[x]=1"]);
    assert!(e.contains("cannot parse --set argument"), "{e}");
    let e = fails(&["install", "--dry-run", "-f", "does-not-exist.yaml"]);
    assert!(e.contains("does-not-exist.yaml"), "{e}");
    let e = fails(&["install", "--dry-run", "-n", "Kube_System"]);
    assert!(e.contains("namespace"), "{e}");
    // No cluster to apply to: say how to name one, or to print the manifests instead.
    let out = Command::new(BIN)
        .arg("install")
        .env("HOME", testdata("no-such-home"))
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("running the cilium binary");
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("no cluster found") && e.contains("--kubeconfig") && e.contains("--dry-run"),
        "{e}"
    );
}

#[test]
fn dry_run_helm_values_prints_the_merged_values() {
    let out = cilium(&[
        "install",
        "--dry-run-helm-values",
        "-f",
        "values-a.yaml",
        "--set",
        "tunnelProtocol=geneve",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).expect("YAML values");
    assert_eq!(v["tunnelProtocol"], "geneve");
    assert_eq!(v["debug"]["enabled"], true);
    assert_eq!(v["cluster"]["id"], 7);
    // Defaults untouched by the user are there too.
    assert_eq!(v["ipam"]["mode"], "cluster-pool");
    assert_eq!(v["operator"]["replicas"], 3);
}
