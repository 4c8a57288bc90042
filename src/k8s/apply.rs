//! Putting the rendered install on a cluster and taking it off: each object by
//! server-side apply (field manager `cilium-cli`, forced) in render order, CRDs waited
//! for until Established, and the same objects deleted in reverse order (404 is
//! success).
//!
//! These calls are made with the user's own credentials (cilium-cli's kubeconfig), not
//! the agent's or the operator's service account, so they are outside the RBAC table of
//! [`crate::k8s::rbac`].
use std::{fmt, time::Duration};

use k8s_openapi::{
    api::{apps::v1::DaemonSet, core::v1::Namespace},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{Api, DeleteParams, DynamicObject, Patch, PatchParams},
    core::{ApiResource, GroupVersionKind},
    Client,
};
use serde::Serialize;

use super::cluster::{describe, status_code};
use crate::install::render::Document;

/// The field manager of every write (cilium-cli's).
pub const FIELD_MANAGER: &str = "cilium-cli";
/// The agent DaemonSet: its presence means Cilium is installed.
pub const AGENT_DAEMONSET: &str = "cilium";
/// The operator Deployment.
pub const OPERATOR_DEPLOYMENT: &str = "cilium-operator";

/// Kinds without a namespace, among those an install can contain.
const CLUSTER_SCOPED: &[&str] = &[
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Namespace",
    "PriorityClass",
    "IngressClass",
];

/// Names one object: `ClusterRole cilium`, `DaemonSet kube-system/cilium`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One object to apply, as rendered, with the API resource it goes to.
#[derive(Debug, Clone)]
pub struct Object {
    pub r: ObjectRef,
    pub body: DynamicObject,
    resource: ApiResource,
}

impl Object {
    /// The API path of the object (what the API server sees), e.g.
    /// `/apis/apps/v1/namespaces/kube-system/daemonsets/cilium`.
    pub fn path(&self) -> String {
        let base = if self.resource.group.is_empty() {
            format!("/api/{}", self.resource.version)
        } else {
            format!("/apis/{}/{}", self.resource.group, self.resource.version)
        };
        match &self.r.namespace {
            Some(ns) => format!(
                "{base}/namespaces/{ns}/{}/{}",
                self.resource.plural, self.r.name
            ),
            None => format!("{base}/{}/{}", self.resource.plural, self.r.name),
        }
    }

    /// The object as JSON, as it is sent to the API server.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(&self.body).unwrap_or_default()
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match &self.r.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.resource),
            None => Api::all_with(client.clone(), &self.resource),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("rendered document {index} ({source_name}) is not a Kubernetes object: {reason}")]
    Document {
        index: usize,
        source_name: String,
        reason: String,
    },
    #[error(
        "Cilium is already installed: DaemonSet {namespace}/{AGENT_DAEMONSET} exists. Use \
         `cilium upgrade` to change it, or `cilium uninstall` first to install anew"
    )]
    AlreadyInstalled { namespace: String },
    #[error("{op} {object}: {reason}")]
    Api {
        op: &'static str,
        object: String,
        /// The HTTP status, for an answer of the API server.
        status: Option<u16>,
        reason: String,
    },
    #[error(
        "timed out after {}s waiting for CustomResourceDefinitions to be Established: {}",
        after.as_secs(),
        pending.join(", ")
    )]
    CrdsNotEstablished {
        after: Duration,
        pending: Vec<String>,
    },
}

/// The rendered documents as objects; namespaced ones without a namespace get
/// `namespace`.
pub fn objects(docs: &[Document], namespace: &str) -> Result<Vec<Object>, ApplyError> {
    docs.iter()
        .enumerate()
        .map(|(index, d)| {
            let bad = |reason: String| ApplyError::Document {
                index,
                source_name: d.source.clone(),
                reason,
            };
            let value: serde_json::Value =
                serde_yaml::from_str(&d.yaml).map_err(|e| bad(e.to_string()))?;
            let mut body: DynamicObject =
                serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            let types = body
                .types
                .clone()
                .ok_or_else(|| bad("no apiVersion/kind".into()))?;
            let name = body
                .metadata
                .name
                .clone()
                .ok_or_else(|| bad("no metadata.name".into()))?;
            let (group, version) = match types.api_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), types.api_version.clone()),
            };
            let gvk = GroupVersionKind::gvk(&group, &version, &types.kind);
            let resource = ApiResource::from_gvk(&gvk);
            let namespace = if CLUSTER_SCOPED.contains(&types.kind.as_str()) {
                if body.metadata.namespace.is_some() {
                    return Err(bad(format!("{} is cluster-scoped", types.kind)));
                }
                None
            } else {
                let ns = body
                    .metadata
                    .namespace
                    .get_or_insert_with(|| namespace.to_string());
                Some(ns.clone())
            };
            Ok(Object {
                r: ObjectRef {
                    api_version: types.api_version,
                    kind: types.kind,
                    name,
                    namespace,
                },
                body,
                resource,
            })
        })
        .collect()
}

fn api_error(op: &'static str, object: impl fmt::Display, e: kube::Error) -> ApplyError {
    ApplyError::Api {
        op,
        object: object.to_string(),
        status: status_code(&e),
        reason: describe(&e),
    }
}

/// Refuses when the agent DaemonSet exists in `namespace`; reads only.
pub async fn ensure_not_installed(client: &Client, namespace: &str) -> Result<(), ApplyError> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(AGENT_DAEMONSET).await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(ApplyError::AlreadyInstalled {
            namespace: namespace.to_string(),
        }),
        Err(e) => Err(api_error(
            "checking for",
            format!("DaemonSet {namespace}/{AGENT_DAEMONSET}"),
            e,
        )),
    }
}

/// Whether `namespace` exists.
pub async fn namespace_exists(client: &Client, namespace: &str) -> Result<bool, ApplyError> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.get_opt(namespace)
        .await
        .map(|o| o.is_some())
        .map_err(|e| api_error("reading", format!("Namespace {namespace}"), e))
}

/// The Namespace object for an install into a namespace that does not exist yet.
pub fn namespace_object(namespace: &str) -> Object {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"));
    let body = DynamicObject::new(namespace, &resource);
    Object {
        r: ObjectRef {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            name: namespace.to_string(),
            namespace: None,
        },
        body,
        resource,
    }
}

/// Server-side applies one object (forced: the install owns its fields).
pub async fn apply(client: &Client, o: &Object) -> Result<(), ApplyError> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    o.api(client)
        .patch(&o.r.name, &pp, &Patch::Apply(&o.body))
        .await
        .map(|_| ())
        .map_err(|e| api_error("applying", &o.r, e))
}

/// Applies `objects` in order, calling `applied` after each; stops at the first error.
pub async fn apply_all(
    client: &Client,
    objects: &[Object],
    mut applied: impl FnMut(&Object),
) -> Result<(), ApplyError> {
    for o in objects {
        apply(client, o).await?;
        applied(o);
    }
    Ok(())
}

/// Waits until every named CRD has the condition Established=True.
pub async fn wait_crds_established(
    client: &Client,
    names: &[String],
    timeout: Duration,
) -> Result<(), ApplyError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending: Vec<String> = names.to_vec();
    loop {
        let mut still = Vec::new();
        for name in &pending {
            let crd = api
                .get_opt(name)
                .await
                .map_err(|e| api_error("reading", format!("CustomResourceDefinition {name}"), e))?;
            let established = crd
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if !established {
                still.push(name.clone());
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApplyError::CrdsNotEstablished {
                after: timeout,
                pending,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the object as it is on the cluster (None: it does not exist).
pub async fn get(client: &Client, o: &Object) -> Result<Option<serde_json::Value>, ApplyError> {
    o.api(client)
        .get_opt(&o.r.name)
        .await
        .map(|v| v.and_then(|v| serde_json::to_value(v).ok()))
        .map_err(|e| api_error("reading", &o.r, e))
}

/// A JSON merge patch of the object (not an apply: it changes only the fields given,
/// and leaves their field ownership as it is).
pub async fn merge_patch(
    client: &Client,
    o: &Object,
    patch: &serde_json::Value,
) -> Result<(), ApplyError> {
    o.api(client)
        .patch(&o.r.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|e| api_error("patching", &o.r, e))
}

/// What a delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Deleted {
    Deleted,
    /// Already gone (404): fine.
    NotFound,
}

/// Deletes one object (background propagation); 404 is success.
pub async fn delete(client: &Client, o: &Object) -> Result<Deleted, ApplyError> {
    match o
        .api(client)
        .delete(&o.r.name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(Deleted::Deleted),
        Err(e) if status_code(&e) == Some(404) => Ok(Deleted::NotFound),
        Err(e) => Err(api_error("deleting", &o.r, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::{render::render_documents, ValueSources, Values};

    fn rendered(ns: &str) -> Vec<Object> {
        let values = Values::load(&ValueSources::default()).unwrap();
        objects(&render_documents(&values, ns).unwrap(), ns).unwrap()
    }

    #[test]
    fn paths_follow_scope_and_group() {
        let objs = rendered("cilium-system");
        let path = |kind: &str, name: &str| {
            objs.iter()
                .find(|o| o.r.kind == kind && o.r.name == name)
                .unwrap_or_else(|| panic!("{kind} {name} rendered"))
                .path()
        };
        assert_eq!(
            path("CustomResourceDefinition", "ciliumnodes.cilium.io"),
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ciliumnodes.cilium.io"
        );
        assert_eq!(
            path("ClusterRole", "cilium"),
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/cilium"
        );
        assert_eq!(
            path("ServiceAccount", "cilium"),
            "/api/v1/namespaces/cilium-system/serviceaccounts/cilium"
        );
        assert_eq!(
            path("DaemonSet", "cilium"),
            "/apis/apps/v1/namespaces/cilium-system/daemonsets/cilium"
        );
        // Render order is apply order: CRDs, then the rest, the workloads last.
        let kinds: Vec<&str> = objs.iter().map(|o| o.r.kind.as_str()).collect();
        let last_crd = kinds
            .iter()
            .rposition(|k| *k == "CustomResourceDefinition")
            .unwrap();
        assert!(kinds[..=last_crd]
            .iter()
            .all(|k| *k == "CustomResourceDefinition"));
        assert_eq!(kinds[kinds.len() - 2..], ["DaemonSet", "Deployment"]);
        assert_eq!(
            namespace_object("x").path(),
            "/api/v1/namespaces/x",
            "a Namespace is cluster-scoped"
        );
    }

    #[test]
    fn bad_documents_are_named() {
        let doc = |yaml: &str| Document {
            source: "templates/x.yaml".into(),
            yaml: yaml.into(),
        };
        let e = objects(&[doc("kind: ConfigMap\nmetadata: {name: a}\n")], "ns")
            .unwrap_err()
            .to_string();
        assert!(e.contains("templates/x.yaml"), "{e}");
        let e = objects(
            &[doc("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: a, namespace: b}\n")],
            "ns",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cluster-scoped"), "{e}");
        // A namespaced object without a namespace lands in the install's.
        let o = objects(
            &[doc(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            )],
            "ns",
        )
        .unwrap();
        assert_eq!(o[0].path(), "/api/v1/namespaces/ns/configmaps/a");
        assert_eq!(o[0].body.metadata.namespace.as_deref(), Some("ns"));
    }
}
