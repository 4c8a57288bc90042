//! Garbage collection of CiliumIdentities no endpoint uses and of CiliumEndpoints whose
//! pod is gone. The decisions ([`stale_identities`], [`orphan_endpoints`]) are pure; the
//! collectors read (the leader's reflector stores on every tick, `pass_over`; or fresh
//! lists, `pass`), decide and delete with preconditions (uid and resourceVersion), so an
//! object that changed since it was read is kept.
//!
//! Endpoints from the stores: the Pod and CiliumEndpoint stores are not read at one
//! instant (a new pod's endpoint may reach its store before the pod reaches its own), so
//! an endpoint is deleted only when it was an orphan at the previous tick as well (same
//! uid): at least one GC interval without its pod.
//!
//! Identities: as upstream's in-memory heartbeat store, an identity is "alive" while a
//! CiliumEndpoint's `status.identity.id` names it; one seen unused is deleted once it
//! has stayed unused for the heartbeat timeout, as measured by this leader. No annotation
//! is written (the operator may only list, watch and delete identities), so a new
//! leader starts every identity's clock afresh: a failover delays deletion, never
//! hastens it.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{DeleteParams, ListParams, Preconditions},
    core::PartialObjectMeta,
    Api, Client, ResourceExt,
};

use super::ipam::list_all;
use crate::k8s::crds::{CiliumEndpoint, CiliumIdentity};

/// Identities to delete now. `first_unused` (kept across passes) records when each
/// identity was first seen unused; used ones and ones that no longer exist leave it.
pub fn stale_identities(
    identities: &[String],
    used: &BTreeSet<String>,
    first_unused: &mut BTreeMap<String, Instant>,
    now: Instant,
    grace: Duration,
) -> Vec<String> {
    let existing: BTreeSet<&String> = identities.iter().collect();
    first_unused.retain(|id, _| existing.contains(id) && !used.contains(id));
    let mut out = Vec::new();
    for id in identities {
        if used.contains(id) {
            continue;
        }
        let since = *first_unused.entry(id.clone()).or_insert(now);
        if now.duration_since(since) >= grace {
            out.push(id.clone());
        }
    }
    out
}

/// A CiliumEndpoint as the endpoint collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRef {
    pub namespace: String,
    pub name: String,
    /// Owner references of kind Pod: (name, uid).
    pub pod_owners: Vec<(String, String)>,
    /// Whether it has owners of other kinds (not ours to judge when no Pod owner).
    pub other_owners: bool,
}

/// Endpoints whose pod is gone. `pods` maps (namespace, name) to the pod's uid. An
/// endpoint's pod is its Pod owner (name and, when given, uid must match: a pod
/// recreated under the same name is another pod), or, with no owner at all, the pod of
/// its own name (the agent names endpoints after their pods). Endpoints owned only by
/// other kinds are kept.
pub fn orphan_endpoints(
    endpoints: &[EndpointRef],
    pods: &BTreeMap<(String, String), String>,
) -> Vec<EndpointRef> {
    endpoints
        .iter()
        .filter(|e| {
            if e.pod_owners.is_empty() {
                if e.other_owners {
                    return false;
                }
                return !pods.contains_key(&(e.namespace.clone(), e.name.clone()));
            }
            !e.pod_owners.iter().any(|(name, uid)| {
                pods.get(&(e.namespace.clone(), name.clone()))
                    .is_some_and(|pod_uid| uid.is_empty() || pod_uid == uid)
            })
        })
        .cloned()
        .collect()
}

fn preconditions<K: kube::Resource>(o: &K) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: o.meta().uid.clone(),
            resource_version: o.meta().resource_version.clone(),
        }),
        ..Default::default()
    }
}

/// What a delete came to: 404 is success (already gone), 409 is "changed: kept".
fn deleted(r: Result<(), kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The identity collector: state (first-seen-unused times) lives as long as it does.
pub struct IdentityGc {
    identities: Api<CiliumIdentity>,
    endpoints: Api<CiliumEndpoint>,
    grace: Duration,
    first_unused: BTreeMap<String, Instant>,
}

impl IdentityGc {
    pub fn new(client: Client, grace: Duration) -> Self {
        Self {
            identities: Api::all(client.clone()),
            endpoints: Api::all(client),
            grace,
            first_unused: BTreeMap::new(),
        }
    }

    /// One pass over fresh lists; returns the names deleted.
    pub async fn pass(&mut self) -> Result<Vec<String>, kube::Error> {
        // Identities first: an endpoint using one of them exists by the time we list
        // endpoints, or is newer than the grace period anyway.
        let ids: Vec<Arc<CiliumIdentity>> = list_all(&self.identities)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        let eps: Vec<Arc<CiliumEndpoint>> = list_all(&self.endpoints)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok(self.pass_over(&ids, &eps).await)
    }

    /// One pass over every identity and endpoint (the stores); returns the names
    /// deleted. An identity seen unused by the store while its endpoint is on the way
    /// only starts its clock: the grace period covers the lag.
    pub async fn pass_over(
        &mut self,
        ids: &[Arc<CiliumIdentity>],
        eps: &[Arc<CiliumEndpoint>],
    ) -> Vec<String> {
        let used: BTreeSet<String> = eps
            .iter()
            .filter_map(|e| e.status.as_ref()?.identity.as_ref())
            .map(|i| i.id.to_string())
            .collect();
        let names: Vec<String> = ids.iter().map(|i| i.name_any()).collect();
        let stale = stale_identities(
            &names,
            &used,
            &mut self.first_unused,
            Instant::now(),
            self.grace,
        );
        let mut out = Vec::new();
        for name in stale {
            let Some(obj) = ids.iter().find(|i| i.name_any() == name) else {
                continue;
            };
            let r = self
                .identities
                .delete(&name, &preconditions(obj.as_ref()))
                .await
                .map(|_| ());
            match deleted(r) {
                Ok(true) => {
                    tracing::info!(identity = %name, grace = ?self.grace, "deleted identity no endpoint used");
                    self.first_unused.remove(&name);
                    out.push(name);
                }
                Ok(false) => {
                    tracing::debug!(identity = %name, "identity changed since read; kept")
                }
                Err(e) => {
                    tracing::warn!(identity = %name, error = %e, "deleting identity failed; retrying next pass")
                }
            }
        }
        out
    }
}

/// The endpoint collector.
pub struct EndpointGc {
    client: Client,
    /// Endpoints (namespace, name, uid) found orphaned at the previous store tick.
    suspects: BTreeSet<(String, String, String)>,
}

/// (namespace, name) -> uid of every pod.
type PodUids = BTreeMap<(String, String), String>;

impl EndpointGc {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            suspects: BTreeSet::new(),
        }
    }

    /// One pass over fresh lists (endpoints, then pods: the pod of every endpoint listed
    /// exists by the time pods are listed); returns `namespace/name` of the endpoints
    /// deleted.
    pub async fn pass(&self) -> Result<Vec<String>, kube::Error> {
        let all: Api<CiliumEndpoint> = Api::all(self.client.clone());
        let ceps: Vec<Arc<CiliumEndpoint>> =
            list_all(&all).await?.into_iter().map(Arc::new).collect();
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let mut pods = BTreeMap::new();
        let mut lp = ListParams::default().limit(500);
        loop {
            let page = pods_api.list_metadata(&lp).await?;
            for p in &page.items {
                pods.insert(
                    (p.namespace().unwrap_or_default(), p.name_any()),
                    p.metadata.uid.clone().unwrap_or_default(),
                );
            }
            match page.metadata.continue_.clone().filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => break,
            }
        }
        let orphans = orphans_of(&ceps, &pods);
        Ok(self.delete(orphans).await)
    }

    /// One tick over the stores: deletes the endpoints orphaned now and at the previous
    /// tick (see the module documentation); returns `namespace/name` of those deleted.
    pub async fn pass_over(
        &mut self,
        ceps: &[Arc<CiliumEndpoint>],
        pods: &[Arc<PartialObjectMeta<Pod>>],
    ) -> Vec<String> {
        let pods: PodUids = pods
            .iter()
            .map(|p| {
                (
                    (p.namespace().unwrap_or_default(), p.name_any()),
                    p.metadata.uid.clone().unwrap_or_default(),
                )
            })
            .collect();
        let orphans = orphans_of(ceps, &pods);
        let key = |c: &CiliumEndpoint| {
            (
                c.namespace().unwrap_or_default(),
                c.name_any(),
                c.metadata.uid.clone().unwrap_or_default(),
            )
        };
        let now: BTreeSet<_> = orphans.iter().map(|c| key(c)).collect();
        let (confirmed, fresh): (Vec<_>, Vec<_>) = orphans
            .into_iter()
            .partition(|c| self.suspects.contains(&key(c)));
        for c in &fresh {
            tracing::debug!(endpoint = %format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()), "CiliumEndpoint without its pod; deleted at the next tick if still so");
        }
        self.suspects = now;
        self.delete(confirmed).await
    }

    async fn delete(&self, orphans: Vec<Arc<CiliumEndpoint>>) -> Vec<String> {
        let mut out = Vec::new();
        for obj in orphans {
            let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
            let api: Api<CiliumEndpoint> = Api::namespaced(self.client.clone(), &ns);
            let key = format!("{ns}/{name}");
            let r = api
                .delete(&name, &preconditions(obj.as_ref()))
                .await
                .map(|_| ());
            match deleted(r) {
                Ok(true) => {
                    tracing::info!(endpoint = %key, "deleted CiliumEndpoint whose pod is gone");
                    out.push(key);
                }
                Ok(false) => {
                    tracing::debug!(endpoint = %key, "endpoint changed since read; kept")
                }
                Err(e) => {
                    tracing::warn!(endpoint = %key, error = %e, "deleting endpoint failed; retrying next pass")
                }
            }
        }
        out
    }
}

/// The endpoints of `ceps` whose pod is gone ([`orphan_endpoints`]).
fn orphans_of(ceps: &[Arc<CiliumEndpoint>], pods: &PodUids) -> Vec<Arc<CiliumEndpoint>> {
    let refs: Vec<EndpointRef> = ceps
        .iter()
        .map(|c| EndpointRef {
            namespace: c.namespace().unwrap_or_default(),
            name: c.name_any(),
            pod_owners: c
                .owner_references()
                .iter()
                .filter(|o| o.kind == "Pod")
                .map(|o| (o.name.clone(), o.uid.clone()))
                .collect(),
            other_owners: c.owner_references().iter().any(|o| o.kind != "Pod"),
        })
        .collect();
    orphan_endpoints(&refs, pods)
        .into_iter()
        .filter_map(|o| {
            ceps.iter()
                .find(|c| c.name_any() == o.name && c.namespace().as_deref() == Some(&o.namespace))
                .cloned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn an_identity_is_deleted_only_after_staying_unused_for_the_grace_period() {
        let grace = Duration::from_secs(1800);
        let t0 = Instant::now();
        let mut first = BTreeMap::new();
        let ids = s(&["100", "200", "300"]);
        let used: BTreeSet<String> = s(&["100"]).into_iter().collect();
        // First sight: nothing is old enough.
        assert!(stale_identities(&ids, &used, &mut first, t0, grace).is_empty());
        assert_eq!(
            first.keys().cloned().collect::<Vec<_>>(),
            s(&["200", "300"])
        );
        // 200 gets used again before the grace ends: its clock is dropped.
        let used2: BTreeSet<String> = s(&["100", "200"]).into_iter().collect();
        let t1 = t0 + Duration::from_secs(600);
        assert!(stale_identities(&ids, &used2, &mut first, t1, grace).is_empty());
        assert!(!first.contains_key("200"));
        // At the grace period: only 300, unused all along, goes.
        let t2 = t0 + grace;
        assert_eq!(
            stale_identities(&ids, &used, &mut first, t2, grace),
            s(&["300"])
        );
        // 200, unused again since t2, waits its own full grace period.
        assert!(stale_identities(
            &ids,
            &used,
            &mut first,
            t2 + grace - Duration::from_secs(1),
            grace
        )
        .iter()
        .all(|i| i != "200"));
        // Identities that disappeared are forgotten.
        assert!(stale_identities(&s(&["100"]), &used, &mut first, t2, grace).is_empty());
        assert!(first.is_empty());
    }

    fn ep(ns: &str, name: &str, owners: &[(&str, &str)], other: bool) -> EndpointRef {
        EndpointRef {
            namespace: ns.into(),
            name: name.into(),
            pod_owners: owners
                .iter()
                .map(|(n, u)| (n.to_string(), u.to_string()))
                .collect(),
            other_owners: other,
        }
    }

    #[test]
    fn endpoints_without_their_pod_are_orphans() {
        let pods: BTreeMap<(String, String), String> = [
            (("default".into(), "web".into()), "uid-web".into()),
            (("default".into(), "db".into()), "uid-db-2".into()),
        ]
        .into_iter()
        .collect();
        let eps = [
            ep("default", "web", &[("web", "uid-web")], false),
            ep("default", "web-by-name", &[], false),
            ep("other", "web", &[], false),
            ep("default", "db", &[("db", "uid-db-1")], false),
            ep("default", "db-nouid", &[("db", "")], false),
            ep("default", "vm", &[], true),
            ep("default", "web", &[], false),
        ];
        let names: Vec<String> = orphan_endpoints(&eps, &pods)
            .iter()
            .map(|e| format!("{}/{}", e.namespace, e.name))
            .collect();
        assert_eq!(
            names,
            s(&["default/web-by-name", "other/web", "default/db"]),
            "pod gone, pod in another namespace only, pod recreated (other uid)"
        );
    }
}
