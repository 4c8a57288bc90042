//! Every validation error of the parser: the message names the object, the field path and
//! the line of the offending node.

use crate::policy::parse::{parse_stream, PolicyError};

/// 1-based line of the first line containing `needle`.
fn line_of(yaml: &str, needle: &str) -> usize {
    yaml.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in yaml"))
}

fn err(yaml: &str) -> PolicyError {
    match parse_stream(yaml) {
        Ok(p) => panic!("expected an error, parsed {p:#?}"),
        Err(e) => e,
    }
}

/// Asserts the error names `object`, `path` and contains `text`, at the line of `at`.
fn check(yaml: &str, object: &str, path: &str, text: &str, at: &str) {
    let e = err(yaml);
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{object}: ")),
        "object {object:?} not in: {msg}"
    );
    assert!(
        msg.contains(&format!("{path}: ")),
        "path {path:?} not in: {msg}"
    );
    assert!(msg.contains(text), "{text:?} not in: {msg}");
    let line = line_of(yaml, at);
    assert_eq!(e.location().map(|l| l.0), Some(line), "line: {msg}");
    assert!(
        msg.contains(&format!("at line {line} column")),
        "line not in message: {msg}"
    );
}

/// A CNP in namespace ns1 with `body` under spec (indented by two spaces).
fn cnp(body: &str) -> String {
    let mut s = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: ns1\nspec:\n",
    );
    for l in body.lines() {
        s.push_str("  ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// A NetworkPolicy in namespace ns1 with `body` under spec.
fn np(body: &str) -> String {
    let mut s = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: ns1\nspec:\n",
    );
    for l in body.lines() {
        s.push_str("  ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

const CNP: &str = "CiliumNetworkPolicy ns1/p";
const NP: &str = "NetworkPolicy ns1/p";

#[test]
fn unknown_field_in_selector() {
    let y = cnp(
        "endpointSelector: {}\ningress:\n- fromEndpoints:\n  - matchLabel:\n      app: client\n",
    );
    check(
        &y,
        CNP,
        "spec.ingress[0].fromEndpoints[0]",
        "unknown field `matchLabel`, expected `matchLabels` or `matchExpressions`",
        "matchLabel:",
    );
}

#[test]
fn unknown_field_top_level_and_in_spec() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\nsepc: {}\n";
    let e = err(y).to_string();
    assert!(e.contains("unknown field `sepc`"), "{e}");
    assert!(e.contains("at line 5"), "{e}");
    let y = np("podSelector: {}\ningres: []\n");
    check(&y, NP, "spec", "unknown field `ingres`", "ingres:");
}

#[test]
fn missing_metadata_name() {
    let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  namespace: x\nspec: {}\n";
    check(
        y,
        "NetworkPolicy x/<unnamed>",
        "metadata",
        "missing field `name`",
        "namespace: x",
    );
}

#[test]
fn invalid_metadata_name() {
    let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: Bad_Name\nspec: {}\n";
    check(
        y,
        "NetworkPolicy default/Bad_Name",
        "metadata",
        "invalid name `Bad_Name`",
        "name: Bad_Name",
    );
}

#[test]
fn missing_namespace_defaults_to_default() {
    let y =
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec: {}\n";
    let p = parse_stream(y).expect("valid");
    assert_eq!(p.policies[0].namespace.as_deref(), Some("default"));
    assert_eq!(p.policies[0].rules[0].name, "NetworkPolicy/default/p");
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\nspec:\n  endpointSelector: {}\n  ingress: []\n";
    let p = parse_stream(y).expect("valid");
    assert_eq!(p.policies[0].namespace.as_deref(), Some("default"));
}

#[test]
fn invalid_cidr() {
    let y = np("podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.0/33\n");
    check(
        &y,
        NP,
        "spec.ingress[0].from[0].ipBlock.cidr",
        "invalid CIDR `10.0.0.0/33`",
        "cidr:",
    );
    let y = cnp("endpointSelector: {}\negress:\n- toCIDR: [not-an-ip]\n");
    check(
        &y,
        CNP,
        "spec.egress[0].toCIDR[0]",
        "invalid CIDR `not-an-ip`",
        "toCIDR",
    );
    let y = cnp("endpointSelector: {}\negress:\n- toCIDRSet:\n  - cidr: 10.1.2.3\n");
    check(
        &y,
        CNP,
        "spec.egress[0].toCIDRSet[0].cidr",
        "invalid CIDR `10.1.2.3`",
        "cidr:",
    );
}

#[test]
fn except_outside_cidr() {
    let y = np("podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.0/8\n      except: [192.168.0.0/16]\n");
    check(
        &y,
        NP,
        "spec.ingress[0].from[0].ipBlock",
        "except `192.168.0.0/16` must be a strict subset of cidr `10.0.0.0/8`",
        "cidr:",
    );
    // Kubernetes requires a strict subset.
    let y = np("podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.0/8\n      except: [10.0.0.0/8]\n");
    check(
        &y,
        NP,
        "spec.ingress[0].from[0].ipBlock",
        "strict subset",
        "cidr:",
    );
    let y = cnp("endpointSelector: {}\negress:\n- toCIDRSet:\n  - cidr: 10.0.0.0/16\n    except: [10.0.0.0/8]\n");
    check(
        &y,
        CNP,
        "spec.egress[0].toCIDRSet[0]",
        "except `10.0.0.0/8` must be a subset of cidr `10.0.0.0/16`",
        "cidr:",
    );
    let y = cnp(
        "endpointSelector: {}\negress:\n- toCIDRSet:\n  - cidr: 10.0.0.0/8\n    except: ['::/0']\n",
    );
    check(
        &y,
        CNP,
        "spec.egress[0].toCIDRSet[0]",
        "must be a subset",
        "cidr:",
    );
}

#[test]
fn port_out_of_range() {
    let y = np("podSelector: {}\ningress:\n- ports:\n  - port: 70000\n");
    check(
        &y,
        NP,
        "spec.ingress[0].ports[0].port",
        "port 70000 out of range 1-65535",
        "port: 70000",
    );
    let y = np("podSelector: {}\ningress:\n- ports:\n  - port: 0\n");
    check(
        &y,
        NP,
        "spec.ingress[0].ports[0].port",
        "port 0 out of range",
        "port: 0",
    );
    let y = cnp("endpointSelector: {}\ningress:\n- toPorts:\n  - ports:\n    - port: \"70000\"\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].toPorts[0].ports[0].port",
        "port 70000 out of range 0-65535",
        "port:",
    );
}

#[test]
fn end_port_rules() {
    // endPort below port.
    let y = np("podSelector: {}\ningress:\n- ports:\n  - port: 80\n    endPort: 70\n");
    check(
        &y,
        NP,
        "spec.ingress[0].ports[0]",
        "endPort 70 must not be less than port 80",
        "port: 80",
    );
    let y = cnp("endpointSelector: {}\ningress:\n- toPorts:\n  - ports:\n    - port: \"80\"\n      endPort: 70\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].toPorts[0].ports[0]",
        "endPort 70 must not be less than port 80",
        "port:",
    );
    // endPort without port.
    let y = np("podSelector: {}\ningress:\n- ports:\n  - endPort: 90\n");
    check(
        &y,
        NP,
        "spec.ingress[0].ports[0]",
        "endPort requires port",
        "endPort",
    );
    // endPort with port 0 (all ports).
    let y = cnp("endpointSelector: {}\ningress:\n- toPorts:\n  - ports:\n    - port: \"0\"\n      endPort: 90\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].toPorts[0].ports[0]",
        "endPort requires a non-zero numeric port",
        "port:",
    );
    // endPort with a named port.
    let y = np("podSelector: {}\ningress:\n- ports:\n  - port: http\n    endPort: 90\n");
    check(
        &y,
        NP,
        "spec.ingress[0].ports[0]",
        "endPort cannot be used with named port `http`",
        "port: http",
    );
    // endPort out of range.
    let y = np("podSelector: {}\ningress:\n- ports:\n  - port: 80\n    endPort: 65536\n");
    check(
        &y,
        NP,
        "spec.ingress[0].ports[0]",
        "endPort 65536 out of range",
        "port: 80",
    );
}

#[test]
fn protocol_not_allowed() {
    let y = np("podSelector: {}\ningress:\n- ports:\n  - protocol: ICMP\n");
    check(
        &y,
        NP,
        "spec.ingress[0].ports[0].protocol",
        "unsupported protocol `ICMP`, expected one of TCP, UDP, SCTP",
        "protocol",
    );
    let y = np("podSelector: {}\ningress:\n- ports:\n  - protocol: tcp\n");
    check(
        &y,
        NP,
        "spec.ingress[0].ports[0].protocol",
        "unsupported protocol `tcp`",
        "protocol",
    );
    let y = np("podSelector: {}\ningress:\n- ports:\n  - protocol: ANY\n");
    check(
        &y,
        NP,
        "spec.ingress[0].ports[0].protocol",
        "unsupported protocol `ANY`",
        "protocol",
    );
    let y = cnp("endpointSelector: {}\ningress:\n- toPorts:\n  - ports:\n    - port: \"8\"\n      protocol: ICMP\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].toPorts[0].ports[0].protocol",
        "unsupported protocol `ICMP`, expected one of TCP, UDP, SCTP, ANY",
        "protocol",
    );
}

#[test]
fn unknown_entity() {
    let y = cnp("endpointSelector: {}\ningress:\n- fromEntities: [world, wrld]\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].fromEntities[1]",
        "unknown entity `wrld`",
        "fromEntities",
    );
}

#[test]
fn selector_requirements() {
    let y = cnp("endpointSelector: {}\ningress:\n- fromEndpoints:\n  - matchExpressions:\n    - {key: app, operator: Equals, values: [a]}\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator",
        "unknown operator `Equals`",
        "operator",
    );
    let y = cnp("endpointSelector: {}\ningress:\n- fromEndpoints:\n  - matchExpressions:\n    - {key: app, operator: In, values: []}\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].fromEndpoints[0].matchExpressions[0]",
        "operator In requires a non-empty `values`",
        "operator",
    );
    let y = np("podSelector:\n  matchExpressions:\n  - key: app\n    operator: NotIn\n");
    check(
        &y,
        NP,
        "spec.podSelector.matchExpressions[0]",
        "operator NotIn requires a non-empty `values`",
        "key: app",
    );
    let y = np(
        "podSelector:\n  matchExpressions:\n  - key: app\n    operator: Exists\n    values: [a]\n",
    );
    check(
        &y,
        NP,
        "spec.podSelector.matchExpressions[0]",
        "operator Exists must not have `values`",
        "key: app",
    );
    let y = np("podSelector:\n  matchExpressions:\n  - key: app\n    operator: DoesNotExist\n    values: [a]\n");
    check(
        &y,
        NP,
        "spec.podSelector.matchExpressions[0]",
        "operator DoesNotExist must not have `values`",
        "key: app",
    );
}

#[test]
fn invalid_label_key_and_value() {
    let y = np("podSelector:\n  matchLabels:\n    bad key: x\n");
    check(
        &y,
        NP,
        "spec.podSelector",
        "invalid label key `bad key`",
        "matchLabels",
    );
    // A Kubernetes selector takes no source prefix.
    let y = np("podSelector:\n  matchLabels:\n    k8s:app: x\n");
    check(
        &y,
        NP,
        "spec.podSelector",
        "invalid label key `k8s:app`",
        "matchLabels",
    );
    let y = cnp("endpointSelector:\n  matchLabels:\n    k8s:Bad Key: x\ningress: []\n");
    check(
        &y,
        CNP,
        "spec.endpointSelector",
        "invalid label key `k8s:Bad Key`",
        "matchLabels",
    );
    let y = cnp("endpointSelector:\n  matchLabels:\n    app: not a value\ningress: []\n");
    check(
        &y,
        CNP,
        "spec.endpointSelector",
        "invalid label value `not a value`",
        "matchLabels",
    );
}

#[test]
fn cnp_subject_selectors() {
    let y = cnp("ingress: []\n");
    check(
        &y,
        CNP,
        "spec",
        "rule must have one of endpointSelector or nodeSelector",
        "ingress: []",
    );
    let y = cnp("endpointSelector: {}\nnodeSelector: {}\ningress: []\n");
    check(
        &y,
        CNP,
        "spec",
        "rule cannot have both endpointSelector and nodeSelector",
        "endpointSelector",
    );
    // Cilium accepts a nodeSelector in a namespaced CNP too (a host policy).
    let y = cnp("nodeSelector: {}\ningress: []\n");
    let p = parse_stream(&y).expect("valid");
    assert!(matches!(
        p.policies[0].rules[0].subject,
        crate::policy::rule::Subject::Nodes(_)
    ));
    let y = cnp("endpointSelector: {}\n");
    check(
        &y,
        CNP,
        "spec",
        "at least one of ingress, ingressDeny, egress or egressDeny",
        "endpointSelector",
    );
    // A CCNP with an endpointSelector is fine.
    let y = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: c\nspec:\n  endpointSelector: {}\n  egress: []\n";
    let p = parse_stream(y).expect("valid");
    assert_eq!(p.policies[0].namespace, None);
    assert_eq!(
        p.policies[0].rules[0].name,
        "CiliumClusterwideNetworkPolicy/c"
    );
}

#[test]
fn icmp_fields() {
    let y = cnp("endpointSelector: {}\ningress:\n- icmps:\n  - fields:\n    - type: 256\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].icmps[0].fields[0]",
        "ICMP type 256 out of range 0-255",
        "type: 256",
    );
    let y =
        cnp("endpointSelector: {}\ningress:\n- icmps:\n  - fields:\n    - type: PacketTooBig\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].icmps[0].fields[0]",
        "unknown ICMP type `PacketTooBig` for family IPv4",
        "type:",
    );
    let y = cnp("endpointSelector: {}\ningress:\n- icmps:\n  - fields:\n    - type: 8\n      family: IPv5\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].icmps[0].fields[0].family",
        "unknown family `IPv5`",
        "family",
    );
    let y = cnp("endpointSelector: {}\ningress:\n- icmps:\n  - fields:\n    - family: IPv4\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].icmps[0].fields[0]",
        "missing field `type`",
        "family",
    );
    let y = cnp("endpointSelector: {}\ningress:\n- icmps:\n  - fields: [{type: 8}]\n  toPorts:\n  - ports: [{port: \"80\"}]\n");
    check(
        &y,
        CNP,
        "spec.ingress[0]",
        "icmps cannot be combined with toPorts",
        "- icmps",
    );
}

#[test]
fn invalid_named_ports() {
    for bad in [
        "HTTP",
        "-http",
        "http--x",
        "abcdefghijklmnop",
        "80a_b",
        "\"8080\"",
    ] {
        let y = np(&format!(
            "podSelector: {{}}\ningress:\n- ports:\n  - port: {bad}\n"
        ));
        check(
            &y,
            NP,
            "spec.ingress[0].ports[0].port",
            "invalid named port",
            "port:",
        );
    }
    let y = cnp("endpointSelector: {}\ningress:\n- toPorts:\n  - ports:\n    - port: http_x\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].toPorts[0].ports[0].port",
        "invalid port `http_x`",
        "port:",
    );
    // Cilium compares port names case-insensitively.
    let y = cnp("endpointSelector: {}\ningress:\n- toPorts:\n  - ports:\n    - port: HTTP\n");
    let p = parse_stream(&y).expect("valid");
    let port = &p.policies[0].rules[0].ingress[0].ports[0].port;
    assert_eq!(*port, crate::policy::rule::PortSpec::Named("http".into()));
}

#[test]
fn too_many_ports() {
    let ports: String = (1..=41).map(|p| format!("    - port: \"{p}\"\n")).collect();
    let y = cnp(&format!(
        "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports:\n{ports}"
    ));
    check(
        &y,
        CNP,
        "spec.ingress[0].toPorts[0]",
        "too many ports (41), the maximum is 40",
        "- ports:",
    );
}

#[test]
fn combining_l3_peers() {
    let y = cnp("endpointSelector: {}\negress:\n- toEndpoints: [{}]\n  toCIDR: [10.0.0.0/8]\n");
    check(
        &y,
        CNP,
        "spec.egress[0]",
        "combining toEndpoints and toCIDR in one rule is not supported",
        "- toEndpoints",
    );
}

#[test]
fn unsupported_fields() {
    let y = cnp("endpointSelector: {}\negress:\n- toFQDNs:\n  - matchName: example.com\n");
    check(
        &y,
        CNP,
        "spec.egress[0].toFQDNs",
        "not supported by this implementation",
        "- matchName",
    );
    let y = cnp("endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules:\n      http: [{method: GET}]\n");
    check(
        &y,
        CNP,
        "spec.ingress[0].toPorts[0].rules",
        "not supported by this implementation",
        "http:",
    );
}

#[test]
fn network_policy_peers() {
    let y = np("podSelector: {}\ningress:\n- from:\n  - ipBlock: {cidr: 10.0.0.0/8}\n    podSelector: {}\n");
    check(
        &y,
        NP,
        "spec.ingress[0].from[0]",
        "ipBlock cannot be combined with podSelector or namespaceSelector",
        "ipBlock",
    );
    let y = np("podSelector: {}\ningress:\n- from:\n  - {}\n");
    check(
        &y,
        NP,
        "spec.ingress[0].from[0]",
        "a peer must specify podSelector, namespaceSelector or ipBlock",
        "- {}",
    );
}

#[test]
fn policy_types() {
    let y = np("podSelector: {}\npolicyTypes: [Ingress, Outgress]\n");
    check(
        &y,
        NP,
        "spec.policyTypes[1]",
        "unsupported policy type `Outgress`",
        "policyTypes",
    );
}

#[test]
fn api_versions_and_specs() {
    let y = "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\nspec:\n  endpointSelector: {}\n  ingress: []\n";
    let e = err(y).to_string();
    assert!(e.contains("apiVersion `cilium.io/v1` is not supported for CiliumNetworkPolicy, expected `cilium.io/v2`"), "{e}");
    let y = "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec: {}\n";
    let e = err(y).to_string();
    assert!(e.contains("expected `networking.k8s.io/v1`"), "{e}");
    // Without spec(s) the object is accepted (as the API server does) but has no rule.
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n";
    let p = parse_stream(y).expect("valid");
    assert!(p.policies[0].rules.is_empty());
    // A NetworkPolicy of another API group (e.g. Calico's) is not ours: passed through.
    let y =
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec: {}\n";
    let p = parse_stream(y).expect("valid");
    assert!(p.policies.is_empty());
    assert_eq!(p.others.len(), 1);
}

#[test]
fn yaml_syntax_error() {
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\nkind: [\n";
    let e = err(y);
    assert!(
        matches!(e, PolicyError::Syntax { document: 2, .. }),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("document 2: "), "{e}");
    assert!(e.location().is_some());
}

#[test]
fn not_an_object() {
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\nfoo: bar\n";
    let e = err(y).to_string();
    assert!(e.contains("missing field `apiVersion`"), "{e}");
    let y = "- a\n- b\n";
    let e = err(y).to_string();
    assert!(e.contains("document 1"), "{e}");
}

#[test]
fn list_items() {
    let y = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata:\n    name: bad\n  spec:\n    podSelector: {}\n    egress:\n    - to:\n      - ipBlock: {cidr: 300.0.0.0/8}\n";
    let e = err(y);
    let msg = e.to_string();
    assert!(
        msg.starts_with("NetworkPolicy default/bad: items[1].spec.egress[0].to[0].ipBlock.cidr: "),
        "{msg}"
    );
    assert_eq!(e.location().map(|l| l.0), Some(line_of(y, "ipBlock")));
    // Nested lists are refused.
    let y = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n";
    let msg = err(y).to_string();
    assert!(
        msg.contains("items[0]: a List cannot be nested in a List"),
        "{msg}"
    );
}

#[test]
fn all_or_nothing() {
    let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: good\nspec:\n  podSelector: {}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bad\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 99999\n";
    let e = err(y);
    let msg = e.to_string();
    assert!(
        msg.starts_with("NetworkPolicy default/bad: spec.ingress[0].ports[0].port: port 99999"),
        "{msg}"
    );
    assert_eq!(e.location().map(|l| l.0), Some(line_of(y, "99999")));
}

#[test]
fn others_pass_through_in_order() {
    let y = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers: []\n";
    let p = parse_stream(y).expect("valid");
    assert_eq!(p.policies.len(), 1);
    let kinds: Vec<&str> = p
        .others
        .iter()
        .filter_map(|v| v.get("kind")?.as_str())
        .collect();
    assert_eq!(kinds, ["Namespace", "Pod"]);
    assert_eq!(
        p.others[1].get("spec"),
        Some(&serde_yaml::Value::Mapping(
            [("containers".into(), serde_yaml::Value::Sequence(vec![]))]
                .into_iter()
                .collect()
        ))
    );
}

#[test]
fn real_world_metadata_and_status_are_accepted() {
    let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: a\n  uid: 1234\n  labels: {x: y}\n  annotations: {z: w}\n  resourceVersion: \"5\"\nspec:\n  podSelector: {}\nstatus: {}\n";
    let p = parse_stream(y).expect("valid");
    assert_eq!(p.policies[0].name, "p");
}
