//! The cluster-pool IPAM controller: every pass takes the CiliumNodes (the leader's
//! reflector store, [`IpamController::pass_over`], run on every CiliumNode event; or a
//! fresh list, [`IpamController::pass`]), rebuilds the allocation from what they hold
//! ([`alloc::plan`]), writes `spec.ipam.podCIDRs` of the nodes that got a CIDR (merge
//! patch carrying the resourceVersion read, so a node changed meanwhile is retried
//! rather than overwritten) and keeps `status.ipam.operator-status.error` in line with
//! the plan. A deleted node holds nothing on the next pass: its CIDR is free again.
//!
//! The store lags the controller's own writes by a watch event: until it shows a node
//! at a resourceVersion other than the one a write was made from, the pass uses what
//! it wrote (`written`), so a CIDR just handed out is never handed out again to another
//! node in between.
use std::{collections::BTreeMap, sync::Arc};

use kube::{
    api::{ListParams, Patch, PatchParams},
    Api, ResourceExt,
};
use serde_json::json;

use super::alloc::{self, ClusterPool, NodeView};
use crate::k8s::crds::CiliumNode;

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpamReport {
    /// (node, CIDR) handed out.
    pub allocated: Vec<(String, String)>,
    /// (node, error) written to status; an empty error means cleared.
    pub status: Vec<(String, String)>,
    /// Nodes seen last pass and gone now (their CIDRs are free).
    pub released: Vec<String>,
    /// Writes that failed (retried next pass).
    pub failed: Vec<(String, String)>,
}

pub struct IpamController {
    api: Api<CiliumNode>,
    pool: ClusterPool,
    /// Pod CIDRs of each node at the last pass, to log releases.
    last: BTreeMap<String, Vec<String>>,
    /// Node -> what this controller wrote to it and the resourceVersion it wrote from.
    written: BTreeMap<String, Written>,
}

/// A write the store may not show yet.
#[derive(Debug, Clone, Default)]
struct Written {
    /// The node's resourceVersion the write was made from.
    from: Option<String>,
    pod_cidrs: Option<Vec<String>>,
    /// The operator-status error written (`Some(None)`: cleared).
    error: Option<Option<String>>,
}

/// Every object of `api`, page by page.
pub async fn list_all<K>(api: &Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(out),
        }
    }
}

impl IpamController {
    /// `pool`: the configured pools, nothing allocated.
    pub fn new(api: Api<CiliumNode>, pool: ClusterPool) -> Self {
        Self {
            api,
            pool,
            last: BTreeMap::new(),
            written: BTreeMap::new(),
        }
    }

    /// One pass over a fresh list of the CiliumNodes.
    pub async fn pass(&mut self) -> Result<IpamReport, kube::Error> {
        let nodes: Vec<Arc<CiliumNode>> = list_all(&self.api)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok(self.pass_over(&nodes).await)
    }

    /// One pass over `nodes` (every CiliumNode, as the store holds them). Failed writes
    /// are in the report, to be retried.
    pub async fn pass_over(&mut self, nodes: &[Arc<CiliumNode>]) -> IpamReport {
        // Writes the store shows now (or whose node is gone) need no overlay.
        self.written.retain(|name, w| {
            nodes
                .iter()
                .any(|n| n.name_any() == *name && n.metadata.resource_version == w.from)
        });
        let views: Vec<NodeView> = nodes
            .iter()
            .map(|n| {
                let name = n.name_any();
                let written = self.written.get(&name).and_then(|w| w.pod_cidrs.clone());
                NodeView {
                    created: n.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    pod_cidrs: written.unwrap_or_else(|| {
                        n.spec
                            .ipam
                            .as_ref()
                            .map(|i| i.pod_cidrs.clone())
                            .unwrap_or_default()
                    }),
                    name,
                }
            })
            .collect();
        let (plans, _) = alloc::plan(self.pool.clone(), &views);
        let mut report = IpamReport::default();
        let mut now: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for ((node, view), plan) in nodes.iter().zip(&views).zip(plans) {
            let name = view.name.clone();
            let mut cidrs = view.pod_cidrs.clone();
            if let Some(new) = &plan.set_pod_cidrs {
                let patch = json!({
                    "metadata": { "resourceVersion": node.resource_version() },
                    "spec": { "ipam": { "podCIDRs": new } },
                });
                match self
                    .api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        let w = self.written.entry(name.clone()).or_default();
                        w.from = node.metadata.resource_version.clone();
                        w.pod_cidrs = Some(new.clone());
                        let cidr = new.first().cloned().unwrap_or_default();
                        tracing::info!(node = %name, %cidr, "allocated pod CIDR");
                        report.allocated.push((name.clone(), cidr));
                        cidrs = new.clone();
                    }
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "writing the pod CIDR failed; retrying");
                        report.failed.push((name.clone(), e.to_string()));
                        now.insert(name, cidrs);
                        continue;
                    }
                }
            }
            let current = match self.written.get(&name).and_then(|w| w.error.clone()) {
                Some(written) => written,
                None => node
                    .status
                    .as_ref()
                    .and_then(|s| s.ipam.as_ref())
                    .and_then(|i| i.operator_status.as_ref())
                    .and_then(|o| o.error.clone())
                    .filter(|e| !e.is_empty()),
            };
            if current != plan.error {
                let status = match &plan.error {
                    Some(e) => json!({ "error": e }),
                    None => serde_json::Value::Null,
                };
                let patch = json!({ "status": { "ipam": { "operator-status": status } } });
                match self
                    .api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        let w = self.written.entry(name.clone()).or_default();
                        if w.from.is_none() {
                            w.from = node.metadata.resource_version.clone();
                        }
                        w.error = Some(plan.error.clone());
                        if let Some(e) = &plan.error {
                            tracing::warn!(node = %name, error = %e, "pod CIDR allocation failed for this node");
                        }
                        report
                            .status
                            .push((name.clone(), plan.error.clone().unwrap_or_default()));
                    }
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "writing the node's IPAM status failed; retrying");
                        report.failed.push((name.clone(), e.to_string()));
                    }
                }
            }
            now.insert(name, cidrs);
        }
        for (gone, cidrs) in &self.last {
            if !now.contains_key(gone) {
                tracing::info!(node = %gone, cidrs = %cidrs.join(","), "CiliumNode deleted: pod CIDRs released");
                report.released.push(gone.clone());
            }
        }
        self.last = now;
        report
    }
}
