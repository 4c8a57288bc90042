//! The operator (`cilium operator`, argv[0] `cilium-operator`): cluster-wide work for
//! one elected replica at a time — cluster-pool IPAM (pod CIDRs for CiliumNodes) and
//! garbage collection of identities and endpoints. Every replica serves `/healthz`;
//! only the holder of the Lease runs the controllers, and it stops them the moment it
//! loses the Lease. The controllers read the cluster through watchers and reflector
//! stores ([`watch`]) started on becoming leader: IPAM reacts to every CiliumNode
//! event, the garbage collectors tick over the stores; none acts before its stores hold
//! a complete list.
pub mod alloc;
pub mod config;
pub mod gc;
pub mod health;
pub mod ipam;
pub mod leader;
pub mod watch;

#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{core::PartialObjectMeta, runtime::watcher, Api, Client};

pub use config::{OperatorArgs, OperatorConfig};

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("operator configuration")]
    Config(#[from] config::ConfigError),
    #[error("connecting to the Kubernetes API (in a pod: the service account; elsewhere: KUBECONFIG or ~/.kube/config)")]
    Client(#[source] kube::Error),
    #[error("serving the health endpoint on {addr} (is another operator running here? see --operator-api-serve-addr)")]
    Health {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the operator until SIGTERM / Ctrl-C.
pub async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    let cfg = args.resolve()?;
    let health = health::Health::default();
    health::serve(cfg.serve_addr, health.clone())
        .await
        .map_err(|source| OperatorError::Health {
            addr: cfg.serve_addr,
            source,
        })?;
    let client = Client::try_default().await.map_err(OperatorError::Client)?;
    run_with(cfg, client, health, shutdown_signal()).await;
    Ok(())
}

/// The operator on `client` until `shutdown` completes; a leader gives the Lease up on
/// the way out.
pub async fn run_with(
    cfg: OperatorConfig,
    client: Client,
    health: health::Health,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tracing::info!(
        health = %cfg.serve_addr,
        leader_elect = cfg.leader_elect,
        namespace = %cfg.namespace,
        ipam = %cfg.cluster_pool.as_ref().map(|p| format!("cluster-pool {:?} /{}", p.pools(), p.mask())).unwrap_or_else(|| "off (not cluster-pool)".into()),
        "cilium-operator starting"
    );
    let mut elector = cfg.leader_elect.then(|| {
        let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
        leader::Elector::new(api, leader::holder_identity(), cfg.lease)
    });
    let work = async {
        let Some(elector) = elector.as_mut() else {
            health.set_leader(true);
            return controllers(client.clone(), &cfg, &health).await;
        };
        tracing::info!(identity = %elector.identity(), lease = leader::LEASE_NAME, "joining leader election");
        campaign(elector, &health, || {
            controllers(client.clone(), &cfg, &health)
        })
        .await
    };
    tokio::select! {
        () = work => {}
        () = shutdown => tracing::info!("shutting down"),
    }
    if let Some(elector) = elector.as_mut() {
        if health.is_leader() {
            // A standby takes over at once instead of waiting for the lease to expire.
            match elector.release().await {
                Ok(()) => tracing::info!("lease released"),
                Err(e) => tracing::warn!(error = %e, "releasing the lease failed"),
            }
        }
    }
}

/// Leader election around `controllers`, forever: wait for the lease, run the
/// controllers while holding it, drop them (stopping every pass in flight) the moment it
/// is lost, and stand by again.
pub async fn campaign<F, Fut>(
    elector: &mut leader::Elector,
    health: &health::Health,
    mut controllers: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        elector.acquire(health).await;
        let lost = tokio::select! {
            lost = elector.hold(health) => lost,
            () = controllers() => continue,
        };
        tracing::warn!(?lost, "leadership lost: controllers stopped; standing by");
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// How soon failed IPAM writes are retried (at most the resync interval).
const IPAM_RETRY: Duration = Duration::from_secs(1);
/// How often working watches count as a successful API call for /healthz (an idle
/// watch makes no call the health endpoint would otherwise see).
const WATCH_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// The leader's controllers over their watchers' stores; never returns. Dropping the
/// future stops the watchers too.
async fn controllers(client: Client, cfg: &OperatorConfig, health: &health::Health) {
    use crate::k8s::crds::{CiliumEndpoint, CiliumIdentity, CiliumNode};
    use watch::Watched;
    fn spawn<K>(client: &Client, kind: &'static str, health: &health::Health) -> Watched<K>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        Watched::spawn(
            watcher(Api::all(client.clone()), watcher::Config::default()),
            kind,
            health.clone(),
        )
    }
    let nodes = cfg
        .cluster_pool
        .is_some()
        .then(|| spawn::<CiliumNode>(&client, "CiliumNode", health));
    let ids = cfg
        .identity_gc_interval
        .is_some()
        .then(|| spawn::<CiliumIdentity>(&client, "CiliumIdentity", health));
    // One CiliumEndpoint store for both collectors.
    let eps = (cfg.identity_gc_interval.is_some() || cfg.cep_gc_interval.is_some())
        .then(|| spawn::<CiliumEndpoint>(&client, "CiliumEndpoint", health));
    // Pods as metadata only (name, namespace, uid).
    let pods = cfg
        .cep_gc_interval
        .is_some()
        .then(|| spawn::<PartialObjectMeta<Pod>>(&client, "Pod", health));
    let liveness = {
        let (nodes, ids, eps, pods) = (nodes.clone(), ids.clone(), eps.clone(), pods.clone());
        async move {
            loop {
                tokio::time::sleep(WATCH_HEALTH_INTERVAL).await;
                let all_ok = nodes.as_ref().is_none_or(Watched::healthy)
                    && ids.as_ref().is_none_or(Watched::healthy)
                    && eps.as_ref().is_none_or(Watched::healthy)
                    && pods.as_ref().is_none_or(Watched::healthy);
                if all_ok {
                    health.api_ok();
                }
            }
        }
    };
    let ipam = async {
        let (Some(pool), Some(mut nodes)) = (cfg.cluster_pool.clone(), nodes.clone()) else {
            return std::future::pending::<()>().await;
        };
        nodes.synced().await;
        let mut c = ipam::IpamController::new(Api::all(client.clone()), pool);
        loop {
            let r = c.pass_over(&nodes.snapshot()).await;
            let wait = if r.failed.is_empty() {
                cfg.ipam_resync
            } else {
                cfg.ipam_resync.min(IPAM_RETRY)
            };
            tracing::debug!(controller = "cluster-pool IPAM", result = ?r, "pass done");
            tokio::select! {
                () = nodes.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    };
    let identities = async {
        let (Some(interval), Some(mut ids), Some(mut eps)) =
            (cfg.identity_gc_interval, ids.clone(), eps.clone())
        else {
            return std::future::pending::<()>().await;
        };
        ids.synced().await;
        eps.synced().await;
        let mut c = gc::IdentityGc::new(client.clone(), cfg.identity_heartbeat_timeout);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = c.pass_over(&ids.state(), &eps.state()).await;
            tracing::debug!(controller = "identity GC", deleted = ?r, "pass done");
        }
    };
    let endpoints = async {
        let (Some(interval), Some(mut eps), Some(mut pods)) =
            (cfg.cep_gc_interval, eps.clone(), pods.clone())
        else {
            return std::future::pending::<()>().await;
        };
        eps.synced().await;
        pods.synced().await;
        let mut c = gc::EndpointGc::new(client.clone());
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = c.pass_over(&eps.state(), &pods.state()).await;
            tracing::debug!(controller = "CiliumEndpoint GC", deleted = ?r, "pass done");
        }
    };
    tokio::join!(liveness, ipam, identities, endpoints);
}
