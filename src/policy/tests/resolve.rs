//! Resolution: deny precedence in the map (checked against a model of the datapath lookup),
//! rule selection, referenced CIDRs.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::policy::labels::{reserved, IdentityInfo, Labels};
use crate::policy::parse::parse_stream;
use crate::policy::resolve::{
    referenced_cidrs, resolve, selects, EndpointPolicy, EndpointView, EnforcementMode, PolicyEntry,
    PolicyKey, ResolveContext,
};
use crate::policy::rule::{
    PeerRule, PeerSelector, Peers, PortRule, PortSpec, Protocol, Rule, Subject,
};
use crate::policy::selector::EndpointSelector;

fn rules(yaml: &str) -> Vec<Rule> {
    parse_stream(yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .policies
        .into_iter()
        .flat_map(|p| p.rules)
        .collect()
}

fn pod(ns: &str, app: &str) -> Labels {
    let l = BTreeMap::from([("app".to_string(), app.to_string())]);
    Labels::for_pod(ns, &l, &BTreeMap::new(), None, "default")
}

#[test]
fn selects_respects_namespace_and_host() {
    let r = rules(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  endpointSelector: {}\n  ingress: []\n",
    );
    assert!(selects(&r[0], &pod("a", "x"), "a"));
    assert!(!selects(&r[0], &pod("b", "x"), "b"));
    let ccnp = rules(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  ingress: []\n---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\nspec:\n  nodeSelector: {}\n  ingress: []\n",
    );
    let host = Labels::reserved("host");
    let health = Labels::reserved("health");
    assert!(selects(&ccnp[0], &pod("b", "x"), "b"));
    assert!(selects(&ccnp[0], &health, ""));
    assert!(
        !selects(&ccnp[0], &host, ""),
        "endpoint selectors never select the host"
    );
    assert!(selects(&ccnp[1], &host, ""));
    assert!(
        !selects(&ccnp[1], &pod("b", "x"), "b"),
        "node selectors select only the host"
    );
}

#[test]
fn referenced_cidrs_are_normalized_and_skip_world() {
    let r = rules(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.1/8, 192.0.2.1, '2001:db8::/32']\n  - toCIDRSet:\n    - cidr: 0.0.0.0/0\n      except: [10.0.0.0/8, 172.16.0.0/12]\n  ingressDeny:\n  - fromCIDRSet: [{cidr: 198.51.100.0/24}]\n",
    );
    let got: Vec<String> = referenced_cidrs(&r).iter().map(IpNet::to_string).collect();
    assert_eq!(
        got,
        [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.0.2.1/32",
            "198.51.100.0/24",
            "2001:db8::/32"
        ]
    );
}

fn ctx_with<'a>(
    identities: &'a [IdentityInfo],
    named: &'a BTreeMap<String, BTreeSet<(Protocol, u16)>>,
    enforcement: EnforcementMode,
) -> ResolveContext<'a> {
    ResolveContext {
        identities,
        cluster_named_ports: named,
        enforcement,
    }
}

#[test]
fn never_enforces_nothing_and_specs_share_a_name() {
    let r = rules(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspecs:\n- endpointSelector: {}\n  ingress: [{}]\n- endpointSelector: {}\n  egress: [{}]\n",
    );
    let labels = pod("default", "web");
    let ids = vec![IdentityInfo::endpoint(300, labels.clone())];
    let named = BTreeMap::new();
    let no_ports = BTreeMap::new();
    let ep = EndpointView {
        id: 1,
        identity: 300,
        labels: &labels,
        namespace: "default",
        named_ports: &no_ports,
    };
    let p = resolve(&r, &ep, &ctx_with(&ids, &named, EnforcementMode::Default));
    assert!(p.ingress_enforced && p.egress_enforced);
    assert_eq!(p.derived_from, ["CiliumNetworkPolicy/default/p"]);
    let p = resolve(&r, &ep, &ctx_with(&ids, &named, EnforcementMode::Never));
    assert_eq!(
        p,
        EndpointPolicy {
            derived_from: vec!["CiliumNetworkPolicy/default/p".into()],
            ..EndpointPolicy::default()
        }
    );
}

// ---- Deny precedence, checked against a model of the datapath lookup. ----

/// The datapath: longest-prefix match on (protocol, port) for one identity; the most specific
/// entry is the one with a concrete protocol, then the narrowest port range. Panics when two
/// equally specific entries disagree (the map would be ambiguous).
fn lpm(
    map: &BTreeMap<PolicyKey, PolicyEntry>,
    identity: u32,
    proto: u8,
    port: u16,
) -> Option<bool> {
    // Port ranges are split into prefixes by the datapath: two ranges with different verdicts
    // that both hold the port must be nested, or the longest prefix is not well defined.
    let hits: Vec<(&PolicyKey, &PolicyEntry)> = map
        .iter()
        .filter(|(k, _)| k.identity == identity && !k.egress && k.proto == proto)
        .filter(|(k, _)| k.port_lo <= port && port <= k.port_hi)
        .collect();
    for (a, ea) in &hits {
        for (b, eb) in &hits {
            let nested = (a.port_lo <= b.port_lo && b.port_hi <= a.port_hi)
                || (b.port_lo <= a.port_lo && a.port_hi <= b.port_hi);
            assert!(ea.deny == eb.deny || nested, "overlapping {a:?} and {b:?}");
        }
    }
    let mut best: Option<((u8, u32), bool, PolicyKey)> = None;
    for (k, e) in map {
        if k.identity != identity || k.egress {
            continue;
        }
        let hit = (k.proto == 0) || (k.proto == proto && k.port_lo <= port && port <= k.port_hi);
        if !hit {
            continue;
        }
        let spec = (
            u8::from(k.proto != 0),
            u32::from(u16::MAX) - u32::from(k.port_hi - k.port_lo),
        );
        match &best {
            Some((s, deny, other)) if *s == spec && *deny != e.deny => {
                panic!("ambiguous entries {other:?} and {k:?}")
            }
            Some((s, _, _)) if *s >= spec => {}
            _ => best = Some((spec, e.deny, *k)),
        }
    }
    best.map(|(_, deny, _)| deny)
}

/// Verdict of the datapath: deny if either lookup denies, allow if either allows.
fn datapath(
    map: &BTreeMap<PolicyKey, PolicyEntry>,
    identity: u32,
    proto: u8,
    port: u16,
) -> Option<bool> {
    let a = lpm(map, identity, proto, port);
    let b = lpm(map, 0, proto, port);
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (None, None) => None,
        _ => Some(false),
    }
}

/// Verdict straight from the rules: any matching deny wins, else any matching allow.
fn semantic(raw: &[(PolicyKey, bool)], identity: u32, proto: u8, port: u16) -> Option<bool> {
    let hits = |deny: bool| {
        raw.iter().any(|(k, d)| {
            *d == deny
                && (k.identity == 0 || k.identity == identity)
                && (k.proto == 0 || (k.proto == proto && k.port_lo <= port && port <= k.port_hi))
        })
    };
    if hits(true) {
        Some(true)
    } else if hits(false) {
        Some(false)
    } else {
        None
    }
}

/// A rule with one peer identity (0 = any) and one port range (proto 0 = everything).
fn raw_rule(identity: u32, proto: u8, lo: u16, hi: u16) -> PeerRule {
    let peers = if identity == 0 {
        Peers::All
    } else {
        Peers::Selectors(vec![PeerSelector::Endpoints {
            selector: EndpointSelector::from_labels([("k8s:id", ID_LABELS[identity as usize])]),
            namespace: None,
        }])
    };
    let ports = if proto == 0 {
        Vec::new()
    } else {
        vec![PortRule {
            port: PortSpec::Number(lo),
            end_port: Some(hi),
            protocol: Protocol::from_number(proto).unwrap_or(Protocol::Tcp),
        }]
    };
    PeerRule {
        peers,
        ports,
        icmps: Vec::new(),
    }
}

const ID_LABELS: [&str; 4] = ["", "one", "two", "three"];

/// Deterministic pseudo-random numbers.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn deny_precedence_matches_datapath_model() {
    let mut identities: Vec<IdentityInfo> = (1..=3)
        .map(|i| {
            let l = Labels(BTreeMap::from([(
                "k8s:id".to_string(),
                ID_LABELS[i].to_string(),
            )]));
            IdentityInfo::endpoint(i as u32, l)
        })
        .collect();
    identities.extend(IdentityInfo::reserved(reserved::WORLD));
    let named = BTreeMap::new();
    let no_ports = BTreeMap::new();
    let subject = Labels(BTreeMap::from([("k8s:app".to_string(), "x".to_string())]));
    let ep = EndpointView {
        id: 1,
        identity: 100,
        labels: &subject,
        namespace: "",
        named_ports: &no_ports,
    };
    let ctx = ctx_with(&identities, &named, EnforcementMode::Default);
    let mut rng = Lcg(7);
    for _case in 0..400 {
        let mut rule = Rule::new("t", None, Subject::Endpoints(EndpointSelector::default()));
        rule.selects_ingress = true;
        let mut raw = Vec::new();
        for _ in 0..(1 + rng.next(6)) {
            let identity = rng.next(4) as u32;
            let proto = [0u8, 6, 6, 17][rng.next(4) as usize];
            let lo = rng.next(12) as u16;
            let hi = lo + rng.next(8) as u16;
            let deny = rng.next(3) == 0;
            let (lo, hi) = if proto == 0 { (0, u16::MAX) } else { (lo, hi) };
            let pr = raw_rule(identity, proto, lo, hi);
            if deny {
                rule.ingress_deny.push(pr);
            } else {
                rule.ingress.push(pr);
            }
            raw.push((
                PolicyKey {
                    identity,
                    egress: false,
                    proto,
                    port_lo: lo,
                    port_hi: hi,
                },
                deny,
            ));
        }
        let p = resolve(std::slice::from_ref(&rule), &ep, &ctx);
        for identity in [1u32, 2, 3, reserved::WORLD] {
            for proto in [6u8, 17, 132] {
                for port in 0..22u16 {
                    assert_eq!(
                        datapath(&p.entries, identity, proto, port),
                        semantic(&raw, identity, proto, port),
                        "identity {identity} proto {proto} port {port}\nrules {raw:?}\nmap {:?}",
                        p.entries
                    );
                }
            }
        }
    }
}

fn key(identity: u32, proto: u8, lo: u16, hi: u16) -> PolicyKey {
    PolicyKey {
        identity,
        egress: false,
        proto,
        port_lo: lo,
        port_hi: hi,
    }
}

#[test]
fn covered_allows_become_denies_and_partial_ones_split() {
    let identities: Vec<IdentityInfo> = (1..=2)
        .map(|i| {
            let l = Labels(BTreeMap::from([(
                "k8s:id".to_string(),
                ID_LABELS[i].to_string(),
            )]));
            IdentityInfo::endpoint(i as u32, l)
        })
        .collect();
    let named = BTreeMap::new();
    let no_ports = BTreeMap::new();
    let subject = Labels::default();
    let ep = EndpointView {
        id: 1,
        identity: 100,
        labels: &subject,
        namespace: "",
        named_ports: &no_ports,
    };
    let mut rule = Rule::new("t", None, Subject::Endpoints(EndpointSelector::default()));
    rule.selects_ingress = true;
    // allow 1: TCP 10-20; allow 2: TCP 80; deny any: TCP 15-30; deny 2: everything.
    rule.ingress.push(raw_rule(1, 6, 10, 20));
    rule.ingress.push(raw_rule(2, 6, 80, 80));
    rule.ingress_deny.push(raw_rule(0, 6, 15, 30));
    rule.ingress_deny.push(raw_rule(2, 0, 0, 0));
    let p = resolve(
        &[rule],
        &ep,
        &ctx_with(&identities, &named, EnforcementMode::Default),
    );
    let got: Vec<(PolicyKey, bool)> = p.entries.iter().map(|(k, e)| (*k, e.deny)).collect();
    assert_eq!(
        got,
        [
            (key(0, 6, 15, 30), true),
            (key(1, 6, 10, 14), false),
            (key(1, 6, 15, 20), true),
            (key(2, 0, 0, u16::MAX), true),
        ]
    );
}

#[test]
fn namespaced_subject_ignores_a_foreign_namespace_match() {
    // Cilium overwrites a namespace match in a CNP's endpointSelector with the policy's own.
    let r = rules(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  endpointSelector:\n    matchLabels:\n      k8s:io.kubernetes.pod.namespace: b\n      app: x\n  ingress: []\n",
    );
    assert!(selects(&r[0], &pod("a", "x"), "a"));
    assert!(!selects(&r[0], &pod("b", "x"), "b"));
    assert!(!selects(&r[0], &pod("a", "y"), "a"));
}
