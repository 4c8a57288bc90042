//! Parsing of YAML streams of NetworkPolicy, CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy objects into [`Rule`]s; other objects are passed through.
//!
//! Every document is read twice: once as a generic value (to learn its kind and to return
//! non-policy objects untouched), once as a typed, validating structure so that errors carry
//! the field path and line.

mod cnp;
mod common;
mod error;
mod l4;
mod netpol;
pub(crate) mod validated;

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_yaml::Value;

pub use error::PolicyError;

use super::rule::Rule;

/// Namespace of a namespaced object without `metadata.namespace` (as kubectl assumes).
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// The outcome of [`parse_stream`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// Policy objects in stream order.
    pub policies: Vec<PolicyObject>,
    /// Every other object (Service, Pod, Namespace, ...), untouched, in stream order.
    pub others: Vec<Value>,
}

/// One policy object and the rules it converts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyObject {
    /// "NetworkPolicy", "CiliumNetworkPolicy" or "CiliumClusterwideNetworkPolicy".
    pub kind: String,
    /// Namespace (defaulted to "default"); None for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// The rules (several for a CNP with `specs`).
    pub rules: Vec<Rule>,
}

/// Parses a YAML stream (one or more documents separated by ---; "kind: List" with items
/// allowed) into rules.
///
/// Supported kinds: NetworkPolicy (networking.k8s.io/v1), CiliumNetworkPolicy and
/// CiliumClusterwideNetworkPolicy (cilium.io/v2), including `specs:` (a list of rules) in CNP.
/// Other kinds are returned untouched in `others`. All-or-nothing: any invalid document fails
/// the whole stream.
pub fn parse_stream(yaml: &str) -> Result<Parsed, PolicyError> {
    let mut values = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| PolicyError::Syntax {
            document: i + 1,
            source,
        })?;
        values.push(value);
    }
    let mut parsed = Parsed::default();
    let docs = serde_yaml::Deserializer::from_str(yaml);
    for (i, (doc, value)) in docs.zip(values).enumerate() {
        let plan = Plan::for_value(&value, false);
        typed_document(doc, &plan, i + 1, value, &mut parsed)?;
    }
    Ok(parsed)
}

/// What to do with one document or List item.
#[derive(Debug)]
struct Plan {
    action: Action,
    /// How errors name the object.
    object: String,
}

#[derive(Debug)]
enum Action {
    /// An empty document or item.
    Skip,
    /// Not a policy: returned in `others`.
    Other,
    NetworkPolicy,
    CiliumPolicy,
    List(Vec<Plan>),
    /// A List inside a List.
    NestedList,
    /// Not an object with apiVersion and kind.
    Malformed,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl Plan {
    fn for_value(v: &Value, in_list: bool) -> Plan {
        let kind = str_at(v, "kind");
        let api_version = str_at(v, "apiVersion");
        let group = api_version.and_then(|a| a.split_once('/')).map(|(g, _)| g);
        let meta = v.get("metadata");
        let name = meta.and_then(|m| str_at(m, "name")).unwrap_or("<unnamed>");
        let namespace = meta
            .and_then(|m| str_at(m, "namespace"))
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        let (action, object) = match (kind, api_version) {
            _ if v.is_null() => (Action::Skip, "empty document".to_string()),
            (Some(k), Some(_)) if k == netpol::KIND && group == Some("networking.k8s.io") => {
                (Action::NetworkPolicy, format!("{k} {namespace}/{name}"))
            }
            (Some(k), Some(_)) if k == cnp::KIND_CNP && group == Some("cilium.io") => {
                (Action::CiliumPolicy, format!("{k} {namespace}/{name}"))
            }
            (Some(k), Some(_)) if k == cnp::KIND_CCNP && group == Some("cilium.io") => {
                (Action::CiliumPolicy, format!("{k} {name}"))
            }
            (Some(k), Some(_))
                if k == "List" || (k.ends_with("List") && v.get("items").is_some()) =>
            {
                let action = if in_list {
                    Action::NestedList
                } else {
                    let items = v
                        .get("items")
                        .and_then(Value::as_sequence)
                        .map(|items| items.iter().map(|i| Plan::for_value(i, true)).collect())
                        .unwrap_or_default();
                    Action::List(items)
                };
                (action, k.to_string())
            }
            (Some(k), Some(_)) => (Action::Other, format!("{k} {name}")),
            _ => (Action::Malformed, "object".to_string()),
        };
        Plan { action, object }
    }
}

/// Just apiVersion and kind, to report where a malformed document is.
#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
}

fn typed_document(
    doc: serde_yaml::Deserializer<'_>,
    plan: &Plan,
    document: usize,
    value: Value,
    out: &mut Parsed,
) -> Result<(), PolicyError> {
    let invalid = |object: &str| {
        let object = object.to_string();
        move |source| PolicyError::Invalid { object, source }
    };
    match &plan.action {
        Action::Skip | Action::Other => {
            // Already parsed as a value; nothing can fail here.
            IgnoredAny::deserialize(doc).map_err(invalid(&plan.object))?;
            if matches!(plan.action, Action::Other) {
                out.others.push(value);
            }
        }
        Action::NetworkPolicy => {
            let d = netpol::NpDoc::deserialize(doc).map_err(invalid(&plan.object))?;
            out.policies.push(d.0);
        }
        Action::CiliumPolicy => {
            let d = cnp::CnpDoc::deserialize(doc).map_err(invalid(&plan.object))?;
            out.policies.push(d.0);
        }
        Action::List(items) => {
            let current = Cell::new(None);
            let objects = ListSeed {
                plans: items,
                current: &current,
            }
            .deserialize(doc)
            .map_err(|source| {
                let object = match current.get().and_then(|i| items.get(i).map(|p| (i, p))) {
                    Some((_, p))
                        if matches!(p.action, Action::NetworkPolicy | Action::CiliumPolicy) =>
                    {
                        p.object.clone()
                    }
                    Some((i, _)) => format!("{} item {i}", plan.object),
                    None => plan.object.clone(),
                };
                PolicyError::Invalid { object, source }
            })?;
            let item_values = value
                .get("items")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            for ((obj, p), v) in objects.into_iter().zip(items).zip(item_values) {
                match (obj, &p.action) {
                    (Some(o), _) => out.policies.push(o),
                    (None, Action::Other) => out.others.push(v),
                    (None, _) => {}
                }
            }
        }
        Action::NestedList => {
            return Err(PolicyError::Document {
                document,
                message: "a List cannot be nested in a List".to_string(),
            })
        }
        Action::Malformed => {
            TypeMeta::deserialize(doc).map_err(|source| PolicyError::Invalid {
                object: format!("document {document}"),
                source,
            })?;
            return Err(PolicyError::Document {
                document,
                message: "not a Kubernetes object: `apiVersion` and `kind` must be strings"
                    .to_string(),
            });
        }
    }
    Ok(())
}

/// Deserializes a List document, converting policy items by their pre-computed plans.
struct ListSeed<'a> {
    plans: &'a [Plan],
    /// Index of the item being deserialized (to name the object in errors).
    current: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = Vec<Option<PolicyObject>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = Vec<Option<PolicyObject>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a List")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                items = map.next_value_seed(ItemsSeed {
                    plans: self.plans,
                    current: self.current,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(items)
    }
}

struct ItemsSeed<'a> {
    plans: &'a [Plan],
    current: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = Vec<Option<PolicyObject>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = Vec<Option<PolicyObject>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut out = Vec::new();
        loop {
            let i = out.len();
            self.current.set(Some(i));
            let item = match self.plans.get(i).map(|p| &p.action) {
                Some(Action::NetworkPolicy) => seq
                    .next_element_seed(PhantomData::<netpol::NpDoc>)?
                    .map(|d| Some(d.0)),
                Some(Action::CiliumPolicy) => seq
                    .next_element_seed(PhantomData::<cnp::CnpDoc>)?
                    .map(|d| Some(d.0)),
                Some(Action::NestedList) => {
                    return Err(A::Error::custom(format!(
                        "items[{i}]: a List cannot be nested in a List"
                    )))
                }
                Some(Action::Malformed) => {
                    seq.next_element::<TypeMeta>()?;
                    return Err(A::Error::custom(format!(
                        "items[{i}]: not a Kubernetes object: `apiVersion` and `kind` must be strings"
                    )));
                }
                _ => seq.next_element::<IgnoredAny>()?.map(|_| None),
            };
            match item {
                Some(item) => out.push(item),
                None => break,
            }
        }
        self.current.set(None);
        Ok(out)
    }
}
