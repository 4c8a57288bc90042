//! Security identities: one number per distinct set of security-relevant labels.
//! Allocation sits behind a trait so every agent of a cluster agrees on numbers:
//! the local store (a locked file shared by the local cluster's agents), CiliumIdentity
//! objects ([`super::identity_k8s`], `--identity-allocation-mode crd`), etcd later. CIDR identities are node-local, as in Cilium.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::policy::labels::Labels;

/// First identity number handed to endpoints (below are reserved), as Cilium.
pub const MIN_USER_IDENTITY: u32 = 256;
/// Last cluster-scoped identity number.
pub const MAX_USER_IDENTITY: u32 = 65535;
/// Node-local identities (CIDRs) carry this bit, as Cilium's local scope.
pub const LOCAL_IDENTITY_FLAG: u32 = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity store {path} is corrupt: {source}; remove it and restart the agents")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("locking identity store {path}: {errno}")]
    Lock { path: PathBuf, errno: nix::Error },
    #[error("all cluster identities ({MIN_USER_IDENTITY}-{MAX_USER_IDENTITY}) are in use")]
    Exhausted,
    #[error("{op}: {source}")]
    Api {
        op: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("identity allocation gave up after {attempts} numbers were taken by other agents first (labels {labels})")]
    Contended { attempts: usize, labels: String },
    #[error("Kubernetes client configuration for identity allocation: {0}")]
    KubeConfig(#[source] kube::config::InferConfigError),
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("identity allocator runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Hands out cluster-wide identities for label sets.
pub trait IdentityAllocator: Send {
    /// The identity of `labels`, created if needed; `user` (a node) is recorded as using it.
    fn allocate(&mut self, labels: &Labels, user: &str) -> Result<u32, IdentityError>;
    /// `user` no longer uses `labels`; an identity nobody uses is released.
    fn release(&mut self, labels: &Labels, user: &str) -> Result<(), IdentityError>;
    /// Forgets every use by `user` except for the label sets in `keep` (start-up reconciliation).
    fn retain_user(&mut self, user: &str, keep: &BTreeSet<Labels>) -> Result<(), IdentityError>;
    /// All allocated identities.
    fn list(&self) -> Result<Vec<(u32, Labels)>, IdentityError>;
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    identities: BTreeMap<u32, StoredIdentity>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredIdentity {
    labels: Labels,
    users: BTreeSet<String>,
}

/// Allocator over a JSON file guarded by an exclusive flock: consistent for all
/// agents sharing the directory.
pub struct FileAllocator {
    path: PathBuf,
    lock_path: PathBuf,
}

impl FileAllocator {
    pub fn new(dir: &Path) -> Result<Self, IdentityError> {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: dir.join("identities.json"),
            lock_path: dir.join("identities.lock"),
        })
    }

    fn with_locked<T>(
        &self,
        f: impl FnOnce(&mut StoreFile) -> Result<(T, bool), IdentityError>,
    ) -> Result<T, IdentityError> {
        let io = |source| IdentityError::Io {
            path: self.lock_path.clone(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(io)?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            IdentityError::Lock {
                path: self.lock_path.clone(),
                errno,
            }
        })?;
        let mut store: StoreFile = match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| IdentityError::Corrupt {
                path: self.path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreFile::default(),
            Err(source) => {
                return Err(IdentityError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let (out, dirty) = f(&mut store)?;
        if dirty {
            let tmp = self.path.with_extension("json.tmp");
            let bytes =
                serde_json::to_vec_pretty(&store).map_err(|source| IdentityError::Corrupt {
                    path: self.path.clone(),
                    source,
                })?;
            std::fs::write(&tmp, bytes).map_err(|source| IdentityError::Io {
                path: tmp.clone(),
                source,
            })?;
            std::fs::rename(&tmp, &self.path).map_err(|source| IdentityError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(out)
    }
}

impl IdentityAllocator for FileAllocator {
    fn allocate(&mut self, labels: &Labels, user: &str) -> Result<u32, IdentityError> {
        self.with_locked(|s| {
            if let Some((id, ident)) = s.identities.iter_mut().find(|(_, i)| &i.labels == labels) {
                let dirty = ident.users.insert(user.to_string());
                return Ok((*id, dirty));
            }
            let id = (MIN_USER_IDENTITY..=MAX_USER_IDENTITY)
                .find(|id| !s.identities.contains_key(id))
                .ok_or(IdentityError::Exhausted)?;
            s.identities.insert(
                id,
                StoredIdentity {
                    labels: labels.clone(),
                    users: BTreeSet::from([user.to_string()]),
                },
            );
            Ok((id, true))
        })
    }

    fn release(&mut self, labels: &Labels, user: &str) -> Result<(), IdentityError> {
        self.with_locked(|s| {
            let Some(id) = s
                .identities
                .iter()
                .find(|(_, i)| &i.labels == labels)
                .map(|(id, _)| *id)
            else {
                return Ok(((), false));
            };
            let mut dirty = false;
            if let Some(ident) = s.identities.get_mut(&id) {
                dirty = ident.users.remove(user);
                if ident.users.is_empty() {
                    s.identities.remove(&id);
                    dirty = true;
                }
            }
            Ok(((), dirty))
        })
    }

    fn retain_user(&mut self, user: &str, keep: &BTreeSet<Labels>) -> Result<(), IdentityError> {
        self.with_locked(|s| {
            let mut dirty = false;
            s.identities.retain(|_, i| {
                if !keep.contains(&i.labels) && i.users.remove(user) {
                    dirty = true;
                }
                !i.users.is_empty()
            });
            Ok(((), dirty))
        })
    }

    fn list(&self) -> Result<Vec<(u32, Labels)>, IdentityError> {
        self.with_locked(|s| {
            Ok((
                s.identities
                    .iter()
                    .map(|(id, i)| (*id, i.labels.clone()))
                    .collect(),
                false,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(app: &str) -> Labels {
        Labels(BTreeMap::from([
            ("k8s:app".to_string(), app.to_string()),
            (
                "k8s:io.kubernetes.pod.namespace".to_string(),
                "default".to_string(),
            ),
        ]))
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cilium-id-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn same_labels_share_an_identity_across_agents() {
        let d = dir("share");
        let mut node1 = FileAllocator::new(&d).unwrap();
        let mut node2 = FileAllocator::new(&d).unwrap();
        let web = node1.allocate(&labels("web"), "node1").unwrap();
        assert_eq!(web, MIN_USER_IDENTITY);
        assert_eq!(
            node2.allocate(&labels("web"), "node2").unwrap(),
            web,
            "consistent across agents"
        );
        let db = node2.allocate(&labels("db"), "node2").unwrap();
        assert_ne!(db, web);
        assert_eq!(node1.list().unwrap().len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn identity_is_released_when_the_last_user_goes() {
        let d = dir("release");
        let mut a = FileAllocator::new(&d).unwrap();
        let id = a.allocate(&labels("web"), "node1").unwrap();
        a.allocate(&labels("web"), "node2").unwrap();
        a.release(&labels("web"), "node1").unwrap();
        assert_eq!(
            a.list().unwrap(),
            vec![(id, labels("web"))],
            "still used by node2"
        );
        a.release(&labels("web"), "node2").unwrap();
        assert!(a.list().unwrap().is_empty(), "released when unused");
        // retain_user drops a node's stale uses.
        a.allocate(&labels("x"), "node1").unwrap();
        a.allocate(&labels("y"), "node1").unwrap();
        a.retain_user("node1", &BTreeSet::from([labels("y")]))
            .unwrap();
        let left: Vec<Labels> = a.list().unwrap().into_iter().map(|(_, l)| l).collect();
        assert_eq!(left, vec![labels("y")]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_allocation_never_duplicates() {
        let d = dir("race");
        let handles: Vec<_> = (0..4)
            .map(|n| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let mut a = FileAllocator::new(&d).unwrap();
                    (0..20)
                        .map(|i| {
                            (
                                i,
                                a.allocate(&labels(&format!("app{i}")), &format!("node{n}"))
                                    .unwrap(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<Vec<(i32, u32)>> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        for r in &results[1..] {
            assert_eq!(
                r, &results[0],
                "every agent got the same number for the same labels"
            );
        }
        let ids: BTreeSet<u32> = results[0].iter().map(|(_, id)| *id).collect();
        assert_eq!(ids.len(), 20);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
