//! Where the agent's cluster objects come from, behind one trait (DESIGN.md §4: "three
//! sources, one trait"): the local store ([`Store`], `cilium local`) and the Kubernetes
//! API ([`super::source_k8s::K8sSource`]); etcd later. Regeneration reads a
//! [`Snapshot`]; the services fast path asks what changed since a generation; the agent
//! publishes its own node and endpoints back through the same source.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::atomic::{AtomicU64, Ordering},
};

pub use super::store::{NodeObject, PodObject, RemoteEndpoint, Snapshot, Store, StoreError};
use crate::lb::model::{EndpointSlice, Service};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the Kubernetes caches are not synced yet (waiting for the initial list of {0}); the agent regenerates once every watcher has listed")]
    NotSynced(String),
}

/// Services as (namespace, name).
pub type ServiceKeys = BTreeSet<(String, String)>;

/// What changed since a generation, as the services fast path needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Regenerate everything: the source cannot tell, or more than Services and
    /// EndpointSlices changed.
    All,
    /// Only Services/EndpointSlices changed: the services they touch, before and after.
    Services { generation: u64, keys: ServiceKeys },
}

/// What this node announces about itself (Cilium's CiliumNode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnNode {
    pub name: String,
    /// The node's address between nodes (InternalIP).
    pub ip: Option<Ipv4Addr>,
    pub pod_cidr: ipnet::Ipv4Net,
    /// The router address on cilium_host (CiliumInternalIP).
    pub router: Ipv4Addr,
}

/// What this node announces about one of its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub id: u16,
    pub ip: Ipv4Addr,
    pub identity: u32,
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

/// Datapath facts a source may publish (the Kubernetes source annotates the CiliumNode).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStatus {
    /// Whether the agent replaces kube-proxy (socket LB on), as its status reports it.
    pub kube_proxy_replacement: bool,
    /// Services programmed in the LB maps.
    pub services: usize,
    /// kube-proxy's iptables chains left on the node (None: not inspectable).
    pub kube_proxy_chains: Option<usize>,
}

/// A source of cluster objects; see the module documentation.
pub trait Source: Send + Sync {
    /// Changes whenever anything the agent reads changes.
    fn generation(&self) -> u64;
    /// What changed after generation `since` (the last one regenerated).
    fn changes_since(&self, since: u64) -> Result<Changes, SourceError>;
    /// Everything, at one generation.
    fn snapshot(&self) -> Result<Snapshot, SourceError>;
    /// The Services and EndpointSlices of the given services (after [`Self::changes_since`]
    /// named them).
    fn services_for(&self, keys: &ServiceKeys) -> (Vec<Service>, Vec<EndpointSlice>);
    /// Announces this node to the others.
    fn publish_node(&self, node: &OwnNode) -> Result<(), SourceError>;
    /// Announces this node's endpoints (address, identity) to the others.
    fn publish_endpoints(&self, node: &str, eps: &[LocalEndpoint]) -> Result<(), SourceError>;
    /// Publishes datapath facts of this node (called after every regeneration; cheap).
    fn publish_status(&self, _status: &NodeStatus) {}
}

/// The local store as a source: exactly what the agent did with it before the trait.
/// The journal cursor (where the agent's next read of the journal starts) lives with
/// the store value the agent owns.
pub struct StoreSource {
    store: Store,
    journal_offset: AtomicU64,
}

impl StoreSource {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            journal_offset: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Source for StoreSource {
    fn generation(&self) -> u64 {
        self.store.generation()
    }

    fn changes_since(&self, since: u64) -> Result<Changes, SourceError> {
        let offset = self.journal_offset.load(Ordering::Relaxed);
        let Some(ch) = self.store.changes_since(since, offset) else {
            return Ok(Changes::All);
        };
        self.journal_offset.store(ch.offset, Ordering::Relaxed);
        if ch.files.is_empty() || !self.store.only_services(&ch.files) {
            return Ok(Changes::All);
        }
        Ok(match self.store.refresh_services(&ch.files)? {
            Some(keys) => Changes::Services {
                generation: ch.generation,
                keys,
            },
            None => Changes::All,
        })
    }

    fn snapshot(&self) -> Result<Snapshot, SourceError> {
        let snap = self.store.snapshot()?;
        // What the snapshot holds needs no journal reading later.
        let offset = self.journal_offset.load(Ordering::Relaxed);
        self.journal_offset.store(
            self.store.journal_offset_after(snap.generation, offset),
            Ordering::Relaxed,
        );
        Ok(snap)
    }

    fn services_for(&self, keys: &ServiceKeys) -> (Vec<Service>, Vec<EndpointSlice>) {
        self.store.services_for(keys)
    }

    fn publish_node(&self, node: &OwnNode) -> Result<(), SourceError> {
        let Some(ip) = node.ip else {
            return Ok(());
        };
        Ok(self.store.put_node(&NodeObject {
            name: node.name.clone(),
            ip,
            pod_cidr: node.pod_cidr,
        })?)
    }

    fn publish_endpoints(&self, node: &str, eps: &[LocalEndpoint]) -> Result<(), SourceError> {
        let eps: Vec<RemoteEndpoint> = eps
            .iter()
            .map(|e| RemoteEndpoint {
                ip: e.ip,
                identity: e.identity,
            })
            .collect();
        Ok(self.store.put_endpoints(node, &eps)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_source_reports_service_changes_then_everything_else() {
        let dir = std::env::temp_dir().join(format!("cilium-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = StoreSource::new(Store::open(&dir).expect("store"));
        // The store's parse cache must be warm (a snapshot with a service in it).
        src.store()
            .apply(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: a\nspec:\n  clusterIP: 10.96.0.11\n  ports:\n  - port: 5432\n",
            )
            .expect("apply");
        let snap = src.snapshot().expect("snapshot");
        let g = snap.generation;
        assert_eq!(src.changes_since(g).expect("changes"), Changes::All);
        src.store()
            .apply(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: a\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n",
            )
            .expect("apply");
        assert_eq!(
            src.changes_since(g).expect("changes"),
            Changes::Services {
                generation: g + 1,
                keys: BTreeSet::from([("a".to_string(), "web".to_string())]),
            }
        );
        let (svcs, _) = src.services_for(&BTreeSet::from([("a".into(), "web".into())]));
        assert_eq!(svcs.len(), 1);
        src.store()
            .apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n")
            .expect("apply");
        assert_eq!(src.changes_since(g + 1).expect("changes"), Changes::All);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_snapshot_moves_the_journal_cursor_past_what_it_read() {
        const JOURNAL_FILE: &str = "journal";
        let dir = std::env::temp_dir().join(format!("cilium-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("store");
        let svc = |name: &str, ip: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: a\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n")
        };
        store.apply(&svc("one", "10.96.0.1")).expect("apply");
        store.apply(&svc("two", "10.96.0.2")).expect("apply");
        let len = std::fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len();
        let after1 = store.journal_offset_after(1, 0);
        assert!(after1 > 0 && after1 < len, "{after1} of {len}");
        assert_eq!(store.journal_offset_after(2, 0), len);
        assert_eq!(store.journal_offset_after(2, after1), len);
        // From the cursor after generation 1, generation 2's file is still there.
        let ch = store.changes_since(1, after1).expect("journal");
        assert_eq!(ch.generation, 2);
        assert_eq!(ch.files.len(), 1, "{:?}", ch.files);
        let src = StoreSource::new(store);
        let snap = src.snapshot().expect("snapshot");
        assert_eq!(snap.generation, 2);
        assert_eq!(src.journal_offset.load(Ordering::Relaxed), len);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn services_for_finds_a_service_across_its_files_and_forgets_deleted_ones() {
        let dir = std::env::temp_dir().join(format!("cilium-svcindex-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = StoreSource::new(Store::open(&dir).expect("store"));
        let svc = |name: &str, ip: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: a\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n")
        };
        let slice = |name: &str, svc: &str, ip: &str| {
            format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: a\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports:\n- port: 8080\nendpoints:\n- addresses: [{ip}]\n")
        };
        let store = src.store();
        store.apply(&svc("web", "10.96.0.10")).expect("apply");
        store.apply(&svc("db", "10.96.0.11")).expect("apply");
        store
            .apply(&slice("web-1", "web", "10.0.0.1"))
            .expect("apply");
        store
            .apply(&slice("db-1", "db", "10.0.0.9"))
            .expect("apply");
        let g = src.snapshot().expect("snapshot").generation;
        store
            .apply(&slice("web-2", "web", "10.0.0.2"))
            .expect("apply");
        let web = BTreeSet::from([("a".to_string(), "web".to_string())]);
        assert_eq!(
            src.changes_since(g).expect("changes"),
            Changes::Services {
                generation: g + 1,
                keys: web.clone()
            }
        );
        let (svcs, slices) = src.services_for(&web);
        assert_eq!(svcs.len(), 1, "{svcs:?}");
        let mut names: Vec<&str> = slices.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["web-1", "web-2"], "both slices, none of db's");

        store
            .delete(&slice("web-1", "web", "10.0.0.1"))
            .expect("delete");
        assert_eq!(
            src.changes_since(g + 1).expect("changes"),
            Changes::Services {
                generation: g + 2,
                keys: web.clone()
            }
        );
        let (_, slices) = src.services_for(&web);
        let names: Vec<&str> = slices.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web-2"], "the deleted slice is gone");
        let (svcs, slices) = src.services_for(&BTreeSet::from([("a".into(), "db".into())]));
        assert_eq!((svcs.len(), slices.len()), (1, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
