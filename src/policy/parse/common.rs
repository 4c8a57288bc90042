//! Pieces shared by the NetworkPolicy and Cilium policy parsers: object metadata, label
//! selectors and CIDRs, each validated while deserializing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;

use super::validated::{validated_map, validated_str};
use crate::policy::labels::{SOURCE_CIDR, SOURCE_K8S, SOURCE_RESERVED};
use crate::policy::names::{
    is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name,
};
use crate::policy::selector::{EndpointSelector, LabelSelectorRequirement, Operator};

/// `metadata` of a policy object: name (required) and namespace; other fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Deserialize)]
struct MetadataRaw {
    name: String,
    namespace: Option<String>,
}

impl TryFrom<MetadataRaw> for Metadata {
    type Error = String;
    fn try_from(raw: MetadataRaw) -> Result<Self, String> {
        if !is_dns1123_subdomain(&raw.name) {
            return Err(format!(
                "invalid name `{}`: must be a lowercase DNS-1123 subdomain",
                raw.name
            ));
        }
        let namespace = raw.namespace.filter(|ns| !ns.is_empty());
        if let Some(ns) = &namespace {
            if !is_dns1123_label(ns) {
                return Err(format!(
                    "invalid namespace `{ns}`: must be a lowercase DNS-1123 label"
                ));
            }
        }
        Ok(Metadata {
            name: raw.name,
            namespace,
        })
    }
}
validated_map!(Metadata, MetadataRaw, "object metadata");

/// A selector operator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OperatorV(pub Operator);

validated_str!(OperatorV, "a selector operator", |s| {
    Operator::from_name(s).map(OperatorV).ok_or_else(|| {
        format!("unknown operator `{s}`, expected one of In, NotIn, Exists, DoesNotExist")
    })
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementRaw {
    key: String,
    operator: OperatorV,
    values: Option<Vec<String>>,
}

/// One `matchExpressions` item with its values checked against the operator.
#[derive(Debug, Clone)]
pub(crate) struct Requirement(LabelSelectorRequirement);

impl TryFrom<RequirementRaw> for Requirement {
    type Error = String;
    fn try_from(raw: RequirementRaw) -> Result<Self, String> {
        let values = raw.values.unwrap_or_default();
        let op = raw.operator.0;
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(format!(
                    "operator {op} requires a non-empty `values` (key `{}`)",
                    raw.key
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(format!(
                    "operator {op} must not have `values` (key `{}`)",
                    raw.key
                ))
            }
            _ => {}
        }
        if let Some(v) = values.iter().find(|v| !is_label_value(v)) {
            return Err(format!("invalid label value `{v}` for key `{}`", raw.key));
        }
        Ok(Requirement(LabelSelectorRequirement {
            key: raw.key,
            operator: op,
            values,
        }))
    }
}
validated_map!(Requirement, RequirementRaw, "a label selector requirement");

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectorRaw {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<Requirement>>,
}

impl SelectorRaw {
    fn into_selector(self, key_ok: fn(&str) -> bool) -> Result<EndpointSelector, String> {
        let match_labels = self.match_labels.unwrap_or_default();
        let match_expressions: Vec<LabelSelectorRequirement> = self
            .match_expressions
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.0)
            .collect();
        for key in match_labels
            .keys()
            .chain(match_expressions.iter().map(|r| &r.key))
        {
            if !key_ok(key) {
                return Err(format!("invalid label key `{key}`"));
            }
        }
        for (k, v) in &match_labels {
            if !is_label_value(v) {
                return Err(format!("invalid label value `{v}` for key `{k}`"));
            }
        }
        Ok(EndpointSelector {
            match_labels,
            match_expressions,
        })
    }
}

/// A Kubernetes label selector: keys are plain qualified names (no source prefix).
#[derive(Debug, Clone, Default)]
pub(crate) struct K8sSelector(pub EndpointSelector);

impl TryFrom<SelectorRaw> for K8sSelector {
    type Error = String;
    fn try_from(raw: SelectorRaw) -> Result<Self, String> {
        raw.into_selector(is_qualified_name).map(K8sSelector)
    }
}
validated_map!(K8sSelector, SelectorRaw, "a label selector");

/// A Cilium endpoint selector: keys may carry a "source:" prefix.
#[derive(Debug, Clone, Default)]
pub(crate) struct CiliumSelector(pub EndpointSelector);

/// Whether `key` is a valid Cilium selector key: "[source:]qualified-name".
fn is_cilium_key(key: &str) -> bool {
    match key.split_once(':') {
        None => is_qualified_name(key),
        Some((src, name)) => {
            let src_ok = !src.is_empty()
                && src
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
            // CIDR labels contain '/' and (for IPv6) '-'-encoded addresses; accept any non-empty name.
            src_ok
                && if src == SOURCE_CIDR {
                    !name.is_empty()
                } else {
                    is_qualified_name(name)
                }
        }
    }
}

impl TryFrom<SelectorRaw> for CiliumSelector {
    type Error = String;
    fn try_from(raw: SelectorRaw) -> Result<Self, String> {
        raw.into_selector(is_cilium_key).map(CiliumSelector)
    }
}
validated_map!(CiliumSelector, SelectorRaw, "an endpoint selector");

/// Prefixes every key of a Kubernetes selector with `prefix` (e.g. "k8s:").
pub(crate) fn prefix_keys(sel: &EndpointSelector, prefix: &str) -> EndpointSelector {
    EndpointSelector {
        match_labels: sel
            .match_labels
            .iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
            .collect(),
        match_expressions: sel
            .match_expressions
            .iter()
            .map(|r| LabelSelectorRequirement {
                key: format!("{prefix}{}", r.key),
                ..r.clone()
            })
            .collect(),
    }
}

/// Whether any key of the selector has the reserved source ("reserved:...").
pub(crate) fn has_reserved_key(sel: &EndpointSelector) -> bool {
    sel.keys()
        .any(|k| k.starts_with(&format!("{SOURCE_RESERVED}:")))
}

/// Whether the selector has `key` (a key without source) under source k8s, any, or none.
pub(crate) fn has_k8s_or_any_key(sel: &EndpointSelector, pred: impl Fn(&str) -> bool) -> bool {
    use crate::policy::selector::split_selector_key;
    sel.keys().any(|k| {
        let (src, name) = split_selector_key(k);
        (src == SOURCE_K8S || src == crate::policy::labels::SOURCE_ANY) && pred(name)
    })
}

/// A CIDR in prefix notation ("10.0.0.0/8"), normalized to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CidrPrefix(pub IpNet);

fn parse_prefix(s: &str) -> Result<IpNet, String> {
    IpNet::from_str(s.trim())
        .map(|n| n.trunc())
        .map_err(|_| format!("invalid CIDR `{s}`: expected <address>/<prefix length>"))
}

validated_str!(CidrPrefix, "a CIDR", |s| parse_prefix(s).map(CidrPrefix));

/// A CIDR or a bare IP address (taken as a host prefix), as Cilium's fromCIDR/toCIDR accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CidrOrIp(pub IpNet);

validated_str!(CidrOrIp, "a CIDR or an IP address", |s| {
    if let Ok(addr) = IpAddr::from_str(s.trim()) {
        return Ok(CidrOrIp(IpNet::from(addr)));
    }
    parse_prefix(s).map(CidrOrIp).map_err(|_| {
        format!("invalid CIDR `{s}`: expected an IP address or <address>/<prefix length>")
    })
});

/// Checks that every `except` lies within `cidr` (same family, at least as long a prefix);
/// `strict` additionally requires a strictly longer prefix (Kubernetes ipBlock).
pub(crate) fn check_except(cidr: &IpNet, except: &[IpNet], strict: bool) -> Result<(), String> {
    for e in except {
        let inside = cidr.contains(e) && e.prefix_len() >= cidr.prefix_len();
        if !inside || (strict && e.prefix_len() == cidr.prefix_len()) {
            let what = if strict {
                "a strict subset"
            } else {
                "a subset"
            };
            return Err(format!("except `{e}` must be {what} of cidr `{cidr}`"));
        }
    }
    Ok(())
}
