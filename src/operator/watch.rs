//! The leader's view of the cluster: one `kube` watcher + reflector store per resource
//! the controllers read (CiliumNodes, CiliumIdentities, CiliumEndpoints, Pods as
//! metadata), started when the replica becomes leader and stopped with the controllers.
//!
//! - **Generation**: a counter per store, 0 until the first complete list (InitDone),
//!   then bumped by every Apply/Delete and every relist's InitDone. Controllers wait for
//!   a nonzero generation ([`Watched::synced`]): nothing acts on an empty or partial
//!   initial list. [`Watched::changed`] wakes an event-driven controller.
//! - **API server loss**: the watcher retries with `default_backoff`; the store keeps
//!   the last state meanwhile, and a relist swaps the new state in atomically at its
//!   InitDone (a 410 after compaction is a relist too).
//! - **Memory**: managedFields and kubectl's last-applied annotation are dropped.
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use futures::{Stream, StreamExt};
use kube::{
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt,
    },
    Resource, ResourceExt,
};

use super::health::Health;

/// Aborts the watcher task when the last handle goes.
#[derive(Debug)]
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A reflector store and its generation; cloning shares both (and the task).
#[derive(Clone)]
pub struct Watched<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    generation: tokio::sync::watch::Receiver<u64>,
    /// Whether the last watch attempt failed.
    failing: Arc<AtomicBool>,
    _task: Arc<Task>,
}

/// Drops what the operator never reads but would keep in memory for every object.
fn slim<K: Resource>(o: &mut K) {
    o.managed_fields_mut().clear();
    o.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

impl<K> Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    /// Reflects `events` (a `watcher` or `metadata_watcher` stream) into a store, on a
    /// task of the current runtime. `kind` names the store in logs; watch errors are
    /// reported to `health`.
    pub fn spawn<S>(events: S, kind: &'static str, health: Health) -> Self
    where
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let (store, writer) = reflector::store();
        let (tx, generation) = tokio::sync::watch::channel(0u64);
        let stream = events.default_backoff().modify(slim::<K>).reflect(writer);
        let failing = Arc::new(AtomicBool::new(false));
        let failing_ = failing.clone();
        let task = tokio::spawn(async move {
            let failing = failing_;
            let mut stream = std::pin::pin!(stream);
            let mut synced = false;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        if failing.swap(false, Ordering::Relaxed) {
                            tracing::info!(kind, "watch of the Kubernetes API works again");
                        }
                        match ev {
                            watcher::Event::InitDone => {
                                health.api_ok();
                                if !synced {
                                    tracing::debug!(kind, "initial list done");
                                }
                                synced = true;
                                tx.send_modify(|g| *g += 1);
                            }
                            watcher::Event::Apply(_) | watcher::Event::Delete(_) if synced => {
                                health.api_ok();
                                tx.send_modify(|g| *g += 1);
                            }
                            _ => {}
                        }
                    }
                    Err(e) => {
                        health.api_error(&e);
                        if !failing.swap(true, Ordering::Relaxed) {
                            tracing::warn!(kind, error = %e, "watch of the Kubernetes API failed; retrying with backoff, the controllers keep the last state");
                        } else {
                            tracing::debug!(kind, error = %e, "watch still failing");
                        }
                    }
                }
            }
        });
        Self {
            store,
            generation,
            failing,
            _task: Arc::new(Task(task)),
        }
    }

    /// Whether the store holds a complete list and its watch is not failing now.
    pub fn healthy(&self) -> bool {
        *self.generation.borrow() > 0 && !self.failing.load(Ordering::Relaxed)
    }

    /// Waits for the first complete list.
    pub async fn synced(&mut self) {
        // The sender lives as long as the task, which lives as long as `self`.
        let _ = self.generation.wait_for(|g| *g > 0).await;
    }

    /// Waits for the next change (an event or a relist) after the last one seen.
    pub async fn changed(&mut self) {
        if self.generation.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Marks every change so far as seen; the store's current objects.
    pub fn snapshot(&mut self) -> Vec<Arc<K>> {
        self.generation.borrow_and_update();
        self.store.state()
    }

    /// The store's current objects, leaving the change mark alone.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }
}
