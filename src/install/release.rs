//! The install's record on the cluster, as Helm keeps a release: a Secret
//! `cilium-install` in Cilium's namespace holding the user's values (what `cilium
//! upgrade` reuses), the rendered manifest (what the next upgrade compares against and
//! which objects `cilium uninstall` deletes) and the version of the binary that wrote it.
//! Written by `cilium install` and `cilium upgrade` after their objects are applied;
//! deleted last by `cilium uninstall`.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
};

use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use k8s_openapi::{api::core::v1::Secret, ByteString};
use serde_yaml::Value;

use super::render::Document;

/// Name of the record Secret.
pub const SECRET_NAME: &str = "cilium-install";
/// Its `type` (so no one mistakes it for credentials of a workload).
pub const SECRET_TYPE: &str = "cilium.io/install-record.v1";
const KEY_VALUES: &str = "values.yaml";
const KEY_MANIFEST: &str = "manifest.yaml.gz";
const KEY_VERSION: &str = "version";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the install record Secret {namespace}/{SECRET_NAME} is unreadable: {reason}; pass --reset-values to start from the default values")]
    Unreadable { namespace: String, reason: String },
    #[error("serializing the install record: {0}")]
    Serialize(String),
}

/// What one install or upgrade recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// The user's values (files, --set, ... merged; nulls kept), not the defaults.
    pub values: Value,
    /// The rendered manifest, as `cilium install --dry-run` prints it.
    pub manifest: String,
    /// The version of the binary that applied it.
    pub version: String,
}

impl Release {
    pub fn new(values: Value, manifest: String) -> Self {
        Release {
            values,
            manifest,
            version: crate::VERSION.to_string(),
        }
    }

    /// The Secret as a document to apply into `namespace`.
    pub fn document(&self, namespace: &str) -> Result<Document, ReleaseError> {
        let ser = |e: &dyn std::fmt::Display| ReleaseError::Serialize(e.to_string());
        let values = serde_yaml::to_string(&self.values).map_err(|e| ser(&e))?;
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(self.manifest.as_bytes())
            .map_err(|e| ser(&e))?;
        let manifest = gz.finish().map_err(|e| ser(&e))?;
        let secret = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(SECRET_NAME.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/part-of".into(), "cilium".into()),
                    ("app.kubernetes.io/managed-by".into(), "cilium-cli".into()),
                ])),
                ..Default::default()
            },
            type_: Some(SECRET_TYPE.into()),
            data: Some(BTreeMap::from([
                (KEY_VALUES.into(), ByteString(values.into_bytes())),
                (KEY_MANIFEST.into(), ByteString(manifest)),
                (
                    KEY_VERSION.into(),
                    ByteString(self.version.clone().into_bytes()),
                ),
            ])),
            ..Default::default()
        };
        let mut json = serde_json::to_value(&secret).map_err(|e| ser(&e))?;
        json["apiVersion"] = "v1".into();
        json["kind"] = "Secret".into();
        Ok(Document {
            source: format!("install record (Secret {SECRET_NAME})"),
            yaml: serde_json::to_string(&json).map_err(|e| ser(&e))?,
        })
    }

    /// Reads the record from the Secret as the API returned it.
    pub fn from_secret(json: &serde_json::Value, namespace: &str) -> Result<Self, ReleaseError> {
        let bad = |reason: String| ReleaseError::Unreadable {
            namespace: namespace.into(),
            reason,
        };
        let secret: Secret =
            serde_json::from_value(json.clone()).map_err(|e| bad(format!("not a Secret: {e}")))?;
        let data = secret.data.unwrap_or_default();
        let get = |k: &str| {
            data.get(k)
                .map(|b| b.0.clone())
                .ok_or_else(|| bad(format!("it has no {k}")))
        };
        let values = String::from_utf8(get(KEY_VALUES)?)
            .map_err(|_| bad(format!("{KEY_VALUES} is not UTF-8")))?;
        let values: Value = serde_yaml::from_str(&values)
            .map_err(|e| bad(format!("{KEY_VALUES} is not YAML: {e}")))?;
        let values = match values {
            Value::Null => Value::Mapping(Default::default()),
            v @ Value::Mapping(_) => v,
            _ => return Err(bad(format!("{KEY_VALUES} is not a map"))),
        };
        let mut manifest = String::new();
        GzDecoder::new(&get(KEY_MANIFEST)?[..])
            .read_to_string(&mut manifest)
            .map_err(|e| bad(format!("{KEY_MANIFEST}: {e}")))?;
        let version = String::from_utf8(get(KEY_VERSION)?).unwrap_or_default();
        Ok(Release {
            values,
            manifest,
            version,
        })
    }

    /// The recorded manifest, one document per object (as [`super::render::render`]
    /// wrote it: `---` lines, each followed by a `# Source:` line).
    pub fn documents(&self) -> Vec<Document> {
        let mut docs = Vec::new();
        let mut cur: Option<Document> = None;
        for line in self.manifest.lines() {
            if line.trim_end() == "---" {
                docs.extend(cur.take());
                cur = Some(Document {
                    source: String::new(),
                    yaml: String::new(),
                });
                continue;
            }
            let d = cur.get_or_insert_with(|| Document {
                source: String::new(),
                yaml: String::new(),
            });
            match line.strip_prefix("# Source: ") {
                Some(s) if d.yaml.is_empty() && d.source.is_empty() => d.source = s.to_string(),
                _ => {
                    d.yaml.push_str(line);
                    d.yaml.push('\n');
                }
            }
        }
        docs.extend(cur);
        docs.retain(|d| {
            d.yaml
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        });
        docs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::{render, values::user_values, ValueSources, Values};

    #[test]
    fn round_trips_through_the_secret_and_keeps_every_document() {
        let user = user_values(&ValueSources {
            set: vec!["routingMode=native,ipv4NativeRoutingCIDR=10.0.0.0/8".into()],
            ..Default::default()
        })
        .unwrap();
        let values = Values::from_user(&user).unwrap();
        let manifest = render::render(&values, "kube-system").unwrap();
        let r = Release::new(user.clone(), manifest.clone());
        let doc = r.document("kube-system").unwrap();
        let json: serde_json::Value = serde_json::from_str(&doc.yaml).unwrap();
        assert_eq!(json["kind"], "Secret");
        assert_eq!(json["type"], SECRET_TYPE);
        assert_eq!(json["metadata"]["namespace"], "kube-system");
        // The manifest is compressed: the Secret stays far below the 1 MiB limit.
        assert!(doc.yaml.len() < manifest.len() / 2, "{}", doc.yaml.len());
        let back = Release::from_secret(&json, "kube-system").unwrap();
        assert_eq!(back, r);
        let docs = back.documents();
        assert_eq!(
            docs,
            render::render_documents(&values, "kube-system").unwrap()
        );
    }

    #[test]
    fn a_broken_record_is_named_with_the_way_out() {
        let e = Release::from_secret(
            &serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": SECRET_NAME}, "data": {"values.yaml": "e30K"}}),
            "kube-system",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kube-system/cilium-install"), "{e}");
        assert!(
            e.contains("manifest.yaml.gz") && e.contains("--reset-values"),
            "{e}"
        );
    }
}
