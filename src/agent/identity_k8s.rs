//! Security identities as CiliumIdentity objects (Cilium's `crd` identity allocation
//! mode): every agent of a cluster agrees on numbers through the API server.
//!
//! - **cache**: a `kube` watcher + reflector store of every CiliumIdentity, on the
//!   allocator's runtime (watch backoff after API loss; the store keeps the last state
//!   and a relist swaps in at its InitDone). Once it holds a complete list, a lookup is
//!   answered from it and an allocation of known labels makes no API call. Before that,
//!   the lookup and the free-number search read the API (two lists, as without a cache).
//!   The cache may lag: an identity it misses is met by the create (409, re-read,
//!   adopted when its labels are equal), a number it thinks free likewise.
//! - **allocate**: an identity whose `security-labels` equal the labels exactly is
//!   reused (found in the cache, or by a list with a label selector, then compared in
//!   full: the selector only narrows); with several, the lowest number, so agents
//!   converge. Otherwise a
//!   free number of the cluster range ([`MIN_USER_IDENTITY`]..=[`MAX_USER_IDENTITY`],
//!   as [`FileAllocator`](super::identity::FileAllocator)) is created, named by the
//!   number: the API server's create-if-absent on the name is the lock. The search for a
//!   free number starts at a stable hash of the labels ([`first_candidate`]) and walks
//!   up, wrapping: agents allocating the same labels try the same numbers in the same
//!   order (so they meet on one name), different label sets seldom compete for one. A
//!   409 means another agent took that number first: if it holds the same labels (it
//!   allocated the same identity at the same moment) it is adopted, otherwise the next
//!   number is tried, at most [`MAX_CREATE_ATTEMPTS`] times.
//! - **release / retain_user**: agents never delete CiliumIdentity objects. References
//!   (which node uses which label set) are kept in memory, per allocator, as upstream's
//!   local key references; an identity no endpoint uses is deleted by the operator's
//!   garbage collector after its grace period ([`crate::operator::gc`]). So release
//!   makes no API call.
//! - **list**: every CiliumIdentity object.
//!
//! The [`IdentityAllocator`] trait is synchronous (the agent calls it from its
//! regeneration, as it calls the file allocator's flock). The allocator therefore owns a
//! one-thread tokio runtime whose client it builds there: a call spawns the API work on
//! that runtime and waits for the answer on a channel, which works from plain threads
//! and from inside any runtime flavour (no `block_in_place`, no nested `block_on`).
//! Every call is bounded ([`DEFAULT_TIMEOUT`]): an unreachable API server is an error.
//!
//! Why two agents never end with two numbers for one label set while no identity is
//! deleted: say agent A created `i` and agent B created `j` for the same labels, `i`
//! first in their common search order. B skipped `i` because its list or a 409 showed
//! an object there; the only object `i` ever held is A's (A's create succeeded), whose
//! labels B compares, so B would have used `i`. Deletions (the operator's garbage collection racing an allocation) can
//! break that, as in upstream's CRD mode: then both identities are valid (policy selects
//! by labels), later allocations pick the lowest, and the unused one is collected.
use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use futures::StreamExt;
use kube::{
    api::{ListParams, ObjectMeta, PostParams},
    runtime::{reflector, watcher, WatchStreamExt},
    Api, Client, ResourceExt,
};

use super::identity::{IdentityAllocator, IdentityError, MAX_USER_IDENTITY, MIN_USER_IDENTITY};
use crate::{
    k8s::crds::{CiliumIdentity, CiliumIdentityFields},
    policy::labels::{Labels, SOURCE_K8S},
};

/// Creates tried per allocation before giving up (each 409 is another agent's success).
pub const MAX_CREATE_ATTEMPTS: usize = 16;
/// Longest an allocation or a list may take: the agent's regeneration waits on it.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Allocator over CiliumIdentity objects; see the module documentation.
pub struct K8sIdentityAllocator {
    /// Drives the client; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    api: Api<CiliumIdentity>,
    /// Every CiliumIdentity, as the watcher last saw them.
    cache: Cache,
    /// Label set -> (identity, users): this agent's references, in memory.
    refs: BTreeMap<Labels, (u32, BTreeSet<String>)>,
    timeout: std::time::Duration,
}

impl K8sIdentityAllocator {
    /// An allocator talking to the API server of `config` (e.g. `kube::Config::infer`).
    pub fn new(config: kube::Config) -> Result<Self, IdentityError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("identity-k8s")
            .enable_all()
            .build()
            .map_err(IdentityError::Runtime)?;
        // The client's request buffer is a task: spawn it on our runtime.
        let client = {
            let _guard = rt.enter();
            Client::try_from(config).map_err(|source| IdentityError::Api {
                op: "building the Kubernetes client",
                source,
            })?
        };
        let api: Api<CiliumIdentity> = Api::all(client);
        let cache = Cache::spawn(&rt, api.clone());
        Ok(Self {
            rt: Some(rt),
            api,
            cache,
            refs: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Changes how long one call may take ([`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the cache holds a complete list (lookups no longer call the API).
    pub fn cache_synced(&self) -> bool {
        self.cache.synced()
    }

    /// Runs `fut` on the allocator's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, IdentityError>> + Send + 'static,
    ) -> Result<T, IdentityError> {
        let rt = self.rt.as_ref().expect("runtime lives until drop");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let timeout = self.timeout;
        rt.spawn(async move {
            let out = tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or(Err(IdentityError::Timeout(timeout)));
            let _ = tx.send(out);
        });
        rx.recv().map_err(|_| {
            IdentityError::Runtime(std::io::Error::other("identity allocation task failed"))
        })?
    }
}

impl Drop for K8sIdentityAllocator {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime: don't wait.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl IdentityAllocator for K8sIdentityAllocator {
    fn allocate(&mut self, labels: &Labels, user: &str) -> Result<u32, IdentityError> {
        if let Some((id, users)) = self.refs.get_mut(labels) {
            users.insert(user.to_string());
            return Ok(*id);
        }
        let id = match self.cache.lookup(labels) {
            Some(id) => id,
            None => self.run(allocate(
                self.api.clone(),
                self.cache.synced().then(|| self.cache.store.clone()),
                labels.clone(),
            ))?,
        };
        self.refs
            .insert(labels.clone(), (id, BTreeSet::from([user.to_string()])));
        Ok(id)
    }

    fn release(&mut self, labels: &Labels, user: &str) -> Result<(), IdentityError> {
        if let Some((_, users)) = self.refs.get_mut(labels) {
            users.remove(user);
            if users.is_empty() {
                self.refs.remove(labels);
            }
        }
        Ok(())
    }

    fn retain_user(&mut self, user: &str, keep: &BTreeSet<Labels>) -> Result<(), IdentityError> {
        self.refs.retain(|labels, (_, users)| {
            if !keep.contains(labels) {
                users.remove(user);
            }
            !users.is_empty()
        });
        Ok(())
    }

    fn list(&self) -> Result<Vec<(u32, Labels)>, IdentityError> {
        let api = self.api.clone();
        self.run(async move {
            let mut out: Vec<(u32, Labels)> = list_all(&api, ListParams::default())
                .await?
                .into_iter()
                .filter_map(|i| Some((id_of(&i)?, Labels(i.spec.security_labels))))
                .collect();
            out.sort();
            Ok(out)
        })
    }
}

/// The watcher's store of every CiliumIdentity and whether it has seen a complete list.
struct Cache {
    store: reflector::Store<CiliumIdentity>,
    synced: Arc<AtomicBool>,
}

impl Cache {
    /// Starts the watcher on `rt`; it stops with the runtime.
    fn spawn(rt: &tokio::runtime::Runtime, api: Api<CiliumIdentity>) -> Self {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let flag = synced.clone();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|i: &mut CiliumIdentity| i.managed_fields_mut().clear())
            .reflect(writer);
        rt.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut failing = false;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        if failing {
                            tracing::info!("watch of CiliumIdentities works again");
                            failing = false;
                        }
                        if matches!(ev, watcher::Event::InitDone) {
                            flag.store(true, Ordering::Release);
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "watch of CiliumIdentities failed; retrying with backoff, the cache keeps the last state");
                        }
                        failing = true;
                    }
                }
            }
        });
        Self { store, synced }
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The lowest identity with exactly `labels`, if the synced cache has one.
    fn lookup(&self, labels: &Labels) -> Option<u32> {
        if !self.synced() {
            return None;
        }
        lowest_match_in(self.store.state().iter().map(|i| i.as_ref()), labels)
    }
}

fn api_error(op: &'static str) -> impl FnOnce(kube::Error) -> IdentityError {
    move |source| IdentityError::Api { op, source }
}

/// The number an identity object stands for (its name).
fn id_of(i: &CiliumIdentity) -> Option<u32> {
    i.metadata.name.as_deref()?.parse().ok()
}

/// The lowest identity among `items` whose security labels are exactly `labels`.
fn lowest_match(items: &[CiliumIdentity], labels: &Labels) -> Option<u32> {
    lowest_match_in(items.iter(), labels)
}

fn lowest_match_in<'a>(
    items: impl Iterator<Item = &'a CiliumIdentity>,
    labels: &Labels,
) -> Option<u32> {
    items
        .filter(|i| i.spec.security_labels == labels.0)
        .filter_map(id_of)
        .min()
}

async fn list_all(
    api: &Api<CiliumIdentity>,
    mut lp: ListParams,
) -> Result<Vec<CiliumIdentity>, IdentityError> {
    lp = lp.limit(500);
    let mut out = Vec::new();
    loop {
        let page = api
            .list(&lp)
            .await
            .map_err(api_error("listing CiliumIdentities"))?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(out),
        }
    }
}

/// Finds or creates the identity of `labels`. `cache`: the synced watch cache, which
/// already missed the labels (the numbers it holds are skipped; nothing is listed);
/// `None`: read the API.
async fn allocate(
    api: Api<CiliumIdentity>,
    cache: Option<reflector::Store<CiliumIdentity>>,
    labels: Labels,
) -> Result<u32, IdentityError> {
    let taken: BTreeSet<u32> = match cache {
        Some(cache) => {
            let all = cache.state();
            if let Some(id) = lowest_match_in(all.iter().map(|i| i.as_ref()), &labels) {
                return Ok(id); // arrived since the lookup
            }
            all.iter().filter_map(|i| id_of(i)).collect()
        }
        None => {
            // 1. An identity with these labels already exists: the selector narrows, the
            //    full comparison decides (a selector also matches supersets, and skips
            //    non-k8s labels).
            let selector = label_selector(&labels);
            let found = list_all(&api, ListParams::default().labels(&selector)).await?;
            if let Some(id) = lowest_match(&found, &labels) {
                return Ok(id);
            }
            // 2. The numbers taken.
            let all = list_all(&api, ListParams::default()).await?;
            if let Some(id) = lowest_match(&all, &labels) {
                return Ok(id); // created since the first list
            }
            all.iter().filter_map(id_of).collect()
        }
    };
    // 3. Create the first free number in the search order; the name makes the create
    //    exclusive.
    let mut free = candidates(&labels).filter(|id| !taken.contains(id));
    let object = |id: u32| CiliumIdentity {
        metadata: ObjectMeta {
            name: Some(id.to_string()),
            labels: Some(object_labels(&labels)),
            ..Default::default()
        },
        spec: CiliumIdentityFields {
            security_labels: labels.0.clone(),
        },
    };
    for _ in 0..MAX_CREATE_ATTEMPTS {
        let Some(id) = free.next() else {
            return Err(IdentityError::Exhausted);
        };
        match api.create(&PostParams::default(), &object(id)).await {
            Ok(created) => {
                tracing::debug!(identity = %created.name_any(), labels = ?labels.0, "created identity");
                return Ok(id);
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() || s.code == 409 => {
                // Another agent created this number first: same labels -> the same
                // identity allocated concurrently; other labels -> try the next number.
                let existing = api
                    .get_opt(&id.to_string())
                    .await
                    .map_err(api_error("reading CiliumIdentity"))?;
                if let Some(e) = existing {
                    if e.spec.security_labels == labels.0 {
                        return Ok(id);
                    }
                }
                // Other labels: on to the next number. (Gone again, collected in
                // between: the next number too; the search order stays the same.)
            }
            Err(source) => {
                return Err(IdentityError::Api {
                    op: "creating CiliumIdentity",
                    source,
                })
            }
        }
    }
    Err(IdentityError::Contended {
        attempts: MAX_CREATE_ATTEMPTS,
        labels: format!("{:?}", labels.0),
    })
}

/// Numbers in the cluster range.
const RANGE: u32 = MAX_USER_IDENTITY - MIN_USER_IDENTITY + 1;

/// Where the search for a free number for `labels` starts: FNV-1a (64 bit) over the
/// sorted `key=value` pairs, into the cluster range. Stable across agents, builds and
/// architectures: it only decides the order numbers are tried in, never an identity.
pub fn first_candidate(labels: &Labels) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in &labels.0 {
        for b in k.bytes().chain([b'=']).chain(v.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    MIN_USER_IDENTITY + (h % u64::from(RANGE)) as u32
}

/// Every number of the cluster range once, from [`first_candidate`] up, wrapping.
pub fn candidates(labels: &Labels) -> impl Iterator<Item = u32> {
    let start = first_candidate(labels) - MIN_USER_IDENTITY;
    (0..RANGE).map(move |k| MIN_USER_IDENTITY + (start + k) % RANGE)
}

/// The object's Kubernetes labels, as upstream's `SanitizeK8sLabels`: the `k8s:`-sourced
/// security labels without their source, when they are valid Kubernetes labels.
pub fn object_labels(labels: &Labels) -> BTreeMap<String, String> {
    labels
        .0
        .iter()
        .filter_map(|(k, v)| {
            let (source, key) = k.split_once(':')?;
            (source == SOURCE_K8S && is_qualified_name(key) && is_label_value(v))
                .then(|| (key.to_string(), v.clone()))
        })
        .collect()
}

/// An equality selector over the object labels (empty values left out).
pub fn label_selector(labels: &Labels) -> String {
    object_labels(labels)
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `[prefix/]name`: prefix a DNS subdomain, name at most 63 characters of
/// `[A-Za-z0-9_.-]` beginning and ending alphanumeric.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// Empty, or at most 63 characters of `[A-Za-z0-9_.-]` beginning and ending alphanumeric.
fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests;
