//! Renders the embedded templates (minijinja) and the generated CRDs into the
//! multi-document YAML that `cilium install` applies.
use std::collections::BTreeMap;

use minijinja::{context, syntax::SyntaxConfig, value::Serde, Environment, UndefinedBehavior};
use sha2::{Digest, Sha256};

use super::{values::Values, Manifests};
use crate::k8s::{crds, rbac};

/// The templates, in the order their objects are applied.
pub const TEMPLATES: &[&str] = &[
    "serviceaccounts.yaml",
    "rbac.yaml",
    "configmap.yaml",
    "agent-daemonset.yaml",
    "operator-deployment.yaml",
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0:?} is not a valid namespace name (lowercase letters, digits and '-', at most 63)")]
    Namespace(String),
    #[error("template {name} is not embedded (a bug of this build)")]
    Missing { name: String },
    #[error("rendering template {name}: {source:#}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("serializing the {name} CRD: {source}")]
    Crd {
        name: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// One rendered object: the file it came from and its YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub source: String,
    pub yaml: String,
}

/// Every object of the install as one multi-document YAML stream.
pub fn render(values: &Values, namespace: &str) -> Result<String, RenderError> {
    let docs = render_documents(values, namespace)?;
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n# Source: ");
        out.push_str(&d.source);
        out.push('\n');
        out.push_str(&d.yaml);
        if !d.yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The objects one by one: the CRDs first, then the templates in [`TEMPLATES`] order.
pub fn render_documents(values: &Values, namespace: &str) -> Result<Vec<Document>, RenderError> {
    if !valid_namespace(namespace) {
        return Err(RenderError::Namespace(namespace.to_string()));
    }
    let mut docs = Vec::new();
    for crd in crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_yaml::to_string(&crd).map_err(|source| RenderError::Crd {
            name: name.clone(),
            source,
        })?;
        docs.push(Document {
            source: format!("crds/{name} (src/k8s/crds.rs)"),
            yaml,
        });
    }
    let env = environment()?;
    let config = values.settings.config_map();
    let ctx = context! {
        namespace => namespace,
        s => Serde(&values.settings),
        config => Serde(&config),
        config_checksum => checksum(&config),
        agent_rules => Serde(rbac::AGENT_RULES),
        operator_rules => Serde(rbac::OPERATOR_RULES),
    };
    for name in TEMPLATES {
        let tmpl = env
            .get_template(name)
            .map_err(|source| RenderError::Template {
                name: name.to_string(),
                source,
            })?;
        let text = tmpl.render(&ctx).map_err(|source| RenderError::Template {
            name: name.to_string(),
            source,
        })?;
        for doc in split_documents(&text) {
            docs.push(Document {
                source: format!("templates/{name}"),
                yaml: doc,
            });
        }
    }
    Ok(docs)
}

fn environment() -> Result<Environment<'static>, RenderError> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .map_err(|source| RenderError::Template {
            name: "(syntax)".into(),
            source,
        })?;
    env.set_syntax(syntax);
    // A misspelt variable is an error, not an empty string in the manifest.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // YAML is written explicitly (`quote`, `toyaml`), not auto-escaped as JSON.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_filter("quote", quote);
    env.add_filter("toyaml", toyaml);
    for name in TEMPLATES {
        let path = format!("templates/{name}");
        let file =
            Manifests::get(&path).ok_or_else(|| RenderError::Missing { name: path.clone() })?;
        let text = String::from_utf8_lossy(&file.data).into_owned();
        env.add_template_owned(name.to_string(), text)
            .map_err(|source| RenderError::Template {
                name: name.to_string(),
                source,
            })?;
    }
    Ok(env)
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(v: minijinja::Value) -> String {
    let s = match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    };
    serde_json::Value::String(s).to_string()
}

/// A value as block YAML, without the trailing newline.
fn toyaml(v: minijinja::Value) -> Result<String, minijinja::Error> {
    let s = serde_yaml::to_string(&v).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    Ok(s.trim_end_matches('\n').to_string())
}

fn checksum(config: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in config {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits rendered text on `---` lines; drops documents with nothing but comments.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut flush = |cur: &mut String| {
        let has_content = cur
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if has_content {
            docs.push(std::mem::take(cur));
        }
        cur.clear();
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut cur);
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    flush(&mut cur);
    docs
}

fn valid_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
