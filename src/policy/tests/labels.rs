//! Security labels of pods, reserved and CIDR identities.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::policy::labels::{reserved, IdentityInfo, IdentityKind, Labels};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn for_pod() {
    let l = Labels::for_pod(
        "shop",
        &map(&[("app", "web"), ("app.kubernetes.io/part-of", "store")]),
        &map(&[("team", "a")]),
        Some("web-sa"),
        "default",
    );
    assert_eq!(
        l.to_strings(),
        [
            "k8s:app=web",
            "k8s:app.kubernetes.io/part-of=store",
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
            "k8s:io.cilium.k8s.namespace.labels.team=a",
            "k8s:io.cilium.k8s.policy.cluster=default",
            "k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
            "k8s:io.kubernetes.pod.namespace=shop",
        ]
    );
    assert_eq!(l.get("k8s:app"), Some("web"));
    assert_eq!(l.get("app"), None);
}

#[test]
fn for_pod_without_service_account_keeps_namespace_name_label() {
    let l = Labels::for_pod(
        "a",
        &BTreeMap::new(),
        &map(&[("kubernetes.io/metadata.name", "a")]),
        None,
        "c1",
    );
    assert_eq!(l.get("k8s:io.cilium.k8s.policy.serviceaccount"), None);
    assert_eq!(l.get("k8s:io.cilium.k8s.policy.cluster"), Some("c1"));
    assert_eq!(l.0.len(), 3);
}

#[test]
fn reserved_labels_and_identities() {
    assert_eq!(Labels::reserved("host").to_strings(), ["reserved:host"]);
    assert_eq!(reserved::name(reserved::REMOTE_NODE), Some("remote-node"));
    assert_eq!(reserved::id("kube-apiserver"), Some(7));
    assert_eq!(reserved::name(11), None);
    let w = IdentityInfo::reserved(reserved::WORLD).expect("reserved");
    assert_eq!(w.kind, IdentityKind::Reserved("world"));
    assert!(w.is_reserved("world"));
    assert!(!w.is_reserved("host"));
}

#[test]
fn cidr_identity_labels() {
    let v6: IpNet = "2001:db8::/32".parse().expect("prefix");
    let i = IdentityInfo::cidr(reserved::FIRST_CIDR, v6);
    assert_eq!(
        i.labels.to_strings(),
        ["cidr:2001-db8--/32", "reserved:world"]
    );
    assert!(i.is_reserved("world"));
}

#[test]
fn for_pod_cannot_spoof_cilium_labels() {
    let l = Labels::for_pod(
        "a",
        &map(&[
            ("io.cilium.k8s.namespace.labels.team", "admin"),
            ("io.cilium.k8s.policy.serviceaccount", "root"),
            ("io.kubernetes.pod.namespace", "kube-system"),
            ("app", "x"),
        ]),
        &BTreeMap::new(),
        None,
        "c",
    );
    assert_eq!(l.get("k8s:io.cilium.k8s.namespace.labels.team"), None);
    assert_eq!(l.get("k8s:io.cilium.k8s.policy.serviceaccount"), None);
    assert_eq!(l.get("k8s:io.kubernetes.pod.namespace"), Some("a"));
    assert_eq!(l.get("k8s:app"), Some("x"));
}
