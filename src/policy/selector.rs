//! Label selectors over security labels, with Cilium's "source:key" key semantics.

use std::collections::BTreeMap;
use std::fmt;

use super::labels::{split_label_key, Labels, SOURCE_ANY};

/// A label selector requirement operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// The label exists and its value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label exists.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl Operator {
    /// Parses a Kubernetes operator name.
    pub fn from_name(s: &str) -> Option<Operator> {
        match s {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            _ => None,
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        })
    }
}

/// One `matchExpressions` item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelSelectorRequirement {
    /// Selector key, optionally with a source ("k8s:app", "reserved:host", "app").
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values (non-empty for In/NotIn, empty for Exists/DoesNotExist).
    pub values: Vec<String>,
}

/// An endpoint selector: `matchLabels` and `matchExpressions`, all ANDed.
///
/// Keys may carry a source prefix ("k8s:app", "any:app", "reserved:host"); a key without
/// source, or with source "any", matches the key from any source. The empty selector
/// matches every label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct EndpointSelector {
    /// Exact key=value matches.
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// Splits a selector key into (source, key): "k8s:app" → ("k8s", "app"); "app" → ("any", "app").
pub fn split_selector_key(k: &str) -> (&str, &str) {
    match k.split_once(':') {
        Some(("", key)) => (SOURCE_ANY, key),
        Some((src, key)) => (src, key),
        None => (SOURCE_ANY, k),
    }
}

impl EndpointSelector {
    /// A selector with these `matchLabels`.
    pub fn from_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        EndpointSelector {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether the selector has no requirement at all (selects everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// All keys used by the selector (matchLabels and matchExpressions).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.match_labels
            .keys()
            .map(String::as_str)
            .chain(self.match_expressions.iter().map(|r| r.key.as_str()))
    }

    /// Adds a requirement.
    pub fn add_requirement(&mut self, key: &str, operator: Operator, values: &[&str]) {
        self.match_expressions.push(LabelSelectorRequirement {
            key: key.to_string(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        });
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| values_of(labels, k).any(|lv| lv == v))
            && self
                .match_expressions
                .iter()
                .all(|r| requirement_matches(r, labels))
    }
}

/// Values of all labels matching a selector key (one at most unless the source is "any").
fn values_of<'a>(labels: &'a Labels, selector_key: &'a str) -> impl Iterator<Item = &'a str> {
    let (src, key) = split_selector_key(selector_key);
    labels.0.iter().filter_map(move |(lk, lv)| {
        let (lsrc, lkey) = split_label_key(lk);
        (lkey == key && (src == SOURCE_ANY || src == lsrc)).then_some(lv.as_str())
    })
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let mut values = values_of(labels, &r.key);
    match r.operator {
        Operator::In => values.any(|v| r.values.iter().any(|x| x == v)),
        Operator::NotIn => !values.any(|v| r.values.iter().any(|x| x == v)),
        Operator::Exists => values.next().is_some(),
        Operator::DoesNotExist => values.next().is_none(),
    }
}

impl fmt::Display for EndpointSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
                op => format!("{} {op} ({})", r.key, r.values.join(",")),
            });
        }
        if parts.is_empty() {
            f.write_str("{}")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}
