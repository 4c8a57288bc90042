//! Golden tests: testdata/policy/<case>.txt holds policies, identities and the expected
//! resolved policy maps. `UPDATE_GOLDEN=1 cargo test` rewrites the expected sections.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::labels::{reserved, IdentityInfo, IdentityKind, Labels, SOURCE_K8S};
use crate::policy::parse::parse_stream;
use crate::policy::resolve::{
    referenced_cidrs, resolve, EndpointPolicy, EndpointView, EnforcementMode, ResolveContext,
};
use crate::policy::rule::{Protocol, Rule};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/policy");
const CLUSTER: &str = "default";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Fixture {
    identities: Vec<FixtureIdentity>,
    resolve: Vec<u32>,
    #[serde(default)]
    enforcement: Option<String>,
    /// Adds the world-ipv4 and world-ipv6 identities.
    #[serde(default)]
    dual_stack: bool,
    /// Labels of the host identity (besides reserved:host), as "k8s:<key>".
    #[serde(default)]
    node_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FixtureIdentity {
    id: u32,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, String>,
    #[serde(default)]
    service_account: Option<String>,
    /// name → "TCP/8080".
    #[serde(default)]
    named_ports: BTreeMap<String, String>,
}

/// Splits a txtar-like file into (name, content) sections.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let header = line
            .strip_prefix("-- ")
            .and_then(|l| l.strip_suffix(" --"))
            .map(str::trim);
        match (header, out.last_mut()) {
            (Some(name), _) => out.push((name.to_string(), String::new())),
            (None, Some((_, body))) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

fn named_port(s: &str) -> (Protocol, u16) {
    let (proto, port) = s.split_once('/').expect("named port is PROTO/PORT");
    (
        Protocol::from_name(proto).expect("known protocol"),
        port.parse().expect("port number"),
    )
}

fn identity_name(id: u32, all: &[IdentityInfo]) -> String {
    if id == 0 {
        return "any".to_string();
    }
    match all.iter().find(|i| i.id == id).map(|i| &i.kind) {
        Some(IdentityKind::Reserved(n)) => format!("{id}({n})"),
        Some(IdentityKind::Cidr(net)) => format!("{id}({net})"),
        _ => id.to_string(),
    }
}

fn dump(out: &mut String, id: u32, p: &EndpointPolicy, all: &[IdentityInfo]) {
    let flag = |b: bool| if b { "enforced" } else { "-" };
    let _ = writeln!(
        out,
        "endpoint {id} ingress={} egress={}",
        flag(p.ingress_enforced),
        flag(p.egress_enforced)
    );
    let derived = if p.derived_from.is_empty() {
        "-".to_string()
    } else {
        p.derived_from.join(", ")
    };
    let _ = writeln!(out, "  derived-from: {derived}");
    let mut keys: Vec<_> = p.entries.iter().collect();
    keys.sort_by_key(|(k, _)| (k.egress, k.identity, k.proto, k.port_lo, k.port_hi));
    for (k, e) in keys {
        let dir = if k.egress { "egress" } else { "ingress" };
        let verdict = if e.deny { "deny" } else { "allow" };
        let proto = Protocol::from_number(k.proto)
            .map(|p| p.name().to_string())
            .unwrap_or_else(|| k.proto.to_string());
        let ports = match k.proto {
            0 => String::new(),
            1 | 58 => format!(" type={}", k.port_lo),
            _ if k.port_lo == 0 && k.port_hi == u16::MAX => " port=any".to_string(),
            _ if k.port_lo == k.port_hi => format!(" port={}", k.port_lo),
            _ => format!(" port={}-{}", k.port_lo, k.port_hi),
        };
        let proto = if k.proto == 0 { "any" } else { proto.as_str() };
        let _ = writeln!(
            out,
            "  {dir} {verdict} identity={} proto={proto}{ports}",
            identity_name(k.identity, all)
        );
    }
}

/// Runs one case and returns the actual dump.
fn run_case(policy_yaml: &str, endpoints_yaml: &str) -> String {
    let parsed = parse_stream(policy_yaml).unwrap_or_else(|e| panic!("policy.yaml: {e}"));
    let rules: Vec<Rule> = parsed.policies.into_iter().flat_map(|p| p.rules).collect();
    let fixture: Fixture =
        serde_yaml::from_str(endpoints_yaml).unwrap_or_else(|e| panic!("endpoints.yaml: {e}"));
    let enforcement = match fixture.enforcement.as_deref().unwrap_or("default") {
        "default" => EnforcementMode::Default,
        "always" => EnforcementMode::Always,
        "never" => EnforcementMode::Never,
        other => panic!("unknown enforcement {other}"),
    };

    let mut identities: Vec<IdentityInfo> = (reserved::HOST..=reserved::INGRESS)
        .chain(
            fixture
                .dual_stack
                .then_some([reserved::WORLD_IPV4, reserved::WORLD_IPV6])
                .into_iter()
                .flatten(),
        )
        .filter_map(IdentityInfo::reserved)
        .collect();
    for i in identities.iter_mut().filter(|i| i.id == reserved::HOST) {
        for (k, v) in &fixture.node_labels {
            i.labels.insert(SOURCE_K8S, k, v);
        }
    }
    let mut named: BTreeMap<u32, BTreeMap<String, (Protocol, u16)>> = BTreeMap::new();
    let mut cluster_named: BTreeMap<String, BTreeSet<(Protocol, u16)>> = BTreeMap::new();
    let mut namespaces: BTreeMap<u32, String> = BTreeMap::new();
    for fi in &fixture.identities {
        let labels = Labels::for_pod(
            &fi.namespace,
            &fi.labels,
            &fi.namespace_labels,
            fi.service_account.as_deref(),
            CLUSTER,
        );
        identities.push(IdentityInfo::endpoint(fi.id, labels));
        namespaces.insert(fi.id, fi.namespace.clone());
        let ports: BTreeMap<String, (Protocol, u16)> = fi
            .named_ports
            .iter()
            .map(|(n, p)| (n.clone(), named_port(p)))
            .collect();
        for (n, p) in &ports {
            cluster_named.entry(n.clone()).or_default().insert(*p);
        }
        named.insert(fi.id, ports);
    }
    for (n, net) in referenced_cidrs(&rules).into_iter().enumerate() {
        identities.push(IdentityInfo::cidr(reserved::FIRST_CIDR + n as u32, net));
    }

    let ctx = ResolveContext {
        identities: &identities,
        cluster_named_ports: &cluster_named,
        enforcement,
    };
    let no_ports = BTreeMap::new();
    let mut out = String::new();
    for (n, id) in fixture.resolve.iter().enumerate() {
        let info = identities
            .iter()
            .find(|i| i.id == *id)
            .unwrap_or_else(|| panic!("resolve: unknown identity {id}"));
        let ep = EndpointView {
            id: n as u16 + 1,
            identity: *id,
            labels: &info.labels,
            namespace: namespaces.get(id).map_or("", String::as_str),
            named_ports: named.get(id).unwrap_or(&no_ports),
        };
        let policy = resolve(&rules, &ep, &ctx);
        dump(&mut out, *id, &policy, &identities);
    }
    out
}

fn case_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(DIR)
        .expect("testdata/policy exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
}

fn check_file(path: &Path, update: bool) -> Option<String> {
    let text = std::fs::read_to_string(path).expect("readable case");
    let secs = sections(&text);
    let get = |name: &str| {
        secs.iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("{}: missing section {name}", path.display()))
    };
    let actual = run_case(&get("policy.yaml"), &get("endpoints.yaml"));
    let expected = secs
        .iter()
        .find(|(n, _)| n == "expected")
        .map(|(_, b)| b.clone())
        .unwrap_or_default();
    if actual == expected {
        return None;
    }
    if update {
        let mut rewritten = String::new();
        for (name, body) in &secs {
            if name == "expected" {
                continue;
            }
            let _ = write!(rewritten, "-- {name} --\n{body}");
        }
        let _ = write!(rewritten, "-- expected --\n{actual}");
        std::fs::write(path, rewritten).expect("writable case");
        return None;
    }
    Some(format!(
        "{}:\n--- expected\n{expected}--- actual\n{actual}",
        path.display()
    ))
}

#[test]
fn golden_cases() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let files = case_files();
    assert!(files.len() >= 20, "expected the golden cases in {DIR}");
    let failures: Vec<String> = files.iter().filter_map(|f| check_file(f, update)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sections_split() {
    let s = sections("-- a --\nx\ny\n-- b --\nz\n");
    assert_eq!(
        s,
        vec![
            ("a".to_string(), "x\ny\n".to_string()),
            ("b".to_string(), "z\n".to_string())
        ]
    );
}
