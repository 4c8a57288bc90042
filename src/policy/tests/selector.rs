//! Label selector matching: operators and source prefixes.

use std::collections::BTreeMap;

use crate::policy::labels::Labels;
use crate::policy::selector::{split_selector_key, EndpointSelector, Operator};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn with_expr(key: &str, op: Operator, values: &[&str]) -> EndpointSelector {
    let mut s = EndpointSelector::default();
    s.add_requirement(key, op, values);
    s
}

#[test]
fn empty_selector_matches_everything() {
    assert!(EndpointSelector::default().matches(&labels(&[])));
    assert!(EndpointSelector::default().matches(&labels(&[("reserved:host", "")])));
}

#[test]
fn match_labels_and_sources() {
    let l = labels(&[("k8s:app", "web"), ("container:tier", "front")]);
    // No source: any source.
    assert!(EndpointSelector::from_labels([("app", "web")]).matches(&l));
    assert!(EndpointSelector::from_labels([("tier", "front")]).matches(&l));
    assert!(EndpointSelector::from_labels([("any:tier", "front")]).matches(&l));
    // Explicit source must match.
    assert!(EndpointSelector::from_labels([("k8s:app", "web")]).matches(&l));
    assert!(!EndpointSelector::from_labels([("k8s:tier", "front")]).matches(&l));
    assert!(!EndpointSelector::from_labels([("reserved:app", "web")]).matches(&l));
    // Values must be equal; all labels ANDed.
    assert!(!EndpointSelector::from_labels([("app", "db")]).matches(&l));
    assert!(!EndpointSelector::from_labels([("app", "web"), ("k8s:tier", "front")]).matches(&l));
    assert!(EndpointSelector::from_labels([("reserved:host", "")])
        .matches(&labels(&[("reserved:host", "")])));
}

#[test]
fn operators() {
    let l = labels(&[("k8s:app", "web"), ("k8s:env", "prod")]);
    assert!(with_expr("app", Operator::In, &["db", "web"]).matches(&l));
    assert!(!with_expr("app", Operator::In, &["db"]).matches(&l));
    assert!(!with_expr("missing", Operator::In, &["x"]).matches(&l));
    assert!(with_expr("app", Operator::NotIn, &["db"]).matches(&l));
    assert!(!with_expr("app", Operator::NotIn, &["web"]).matches(&l));
    // NotIn matches when the label is absent (Kubernetes semantics).
    assert!(with_expr("missing", Operator::NotIn, &["x"]).matches(&l));
    assert!(with_expr("k8s:env", Operator::Exists, &[]).matches(&l));
    assert!(!with_expr("reserved:env", Operator::Exists, &[]).matches(&l));
    assert!(with_expr("missing", Operator::DoesNotExist, &[]).matches(&l));
    assert!(!with_expr("env", Operator::DoesNotExist, &[]).matches(&l));
}

#[test]
fn labels_and_expressions_are_anded() {
    let mut s = EndpointSelector::from_labels([("app", "web")]);
    s.add_requirement("env", Operator::NotIn, &["dev"]);
    assert!(s.matches(&labels(&[("k8s:app", "web"), ("k8s:env", "prod")])));
    assert!(!s.matches(&labels(&[("k8s:app", "web"), ("k8s:env", "dev")])));
    assert!(!s.matches(&labels(&[("k8s:app", "db")])));
}

#[test]
fn selector_key_split() {
    assert_eq!(split_selector_key("k8s:app"), ("k8s", "app"));
    assert_eq!(split_selector_key("app"), ("any", "app"));
    assert_eq!(
        split_selector_key("app.kubernetes.io/name"),
        ("any", "app.kubernetes.io/name")
    );
    assert_eq!(
        split_selector_key("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"),
        (
            "k8s",
            "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"
        )
    );
}

#[test]
fn display() {
    let mut s = EndpointSelector::from_labels([("k8s:app", "web")]);
    s.add_requirement("env", Operator::In, &["a", "b"]);
    s.add_requirement("k8s:x", Operator::DoesNotExist, &[]);
    assert_eq!(s.to_string(), "k8s:app=web, env In (a,b), !k8s:x");
    assert_eq!(EndpointSelector::default().to_string(), "{}");
    let _ = BTreeMap::<String, String>::new();
}
