//! The operator (`cilium operator`, argv[0] `cilium-operator`): cluster-wide work for
//! one elected replica at a time — cluster-pool IPAM (pod CIDRs for CiliumNodes) and
//! garbage collection of identities and endpoints. Every replica serves `/healthz`;
//! only the holder of the Lease runs the controllers, and it stops them the moment it
//! loses the Lease.
pub mod alloc;
pub mod config;
pub mod gc;
pub mod health;
pub mod ipam;
pub mod leader;

#[cfg(test)]
mod tests;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

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

/// The leader's controllers, each a loop of passes; never returns.
async fn controllers(client: Client, cfg: &OperatorConfig, health: &health::Health) {
    let ipam = async {
        let Some(pool) = cfg.cluster_pool.clone() else {
            return std::future::pending::<()>().await;
        };
        let mut c = ipam::IpamController::new(Api::all(client.clone()), pool);
        loop {
            report(c.pass().await, health, "cluster-pool IPAM");
            tokio::time::sleep(cfg.ipam_resync).await;
        }
    };
    let identities = async {
        let Some(interval) = cfg.identity_gc_interval else {
            return std::future::pending::<()>().await;
        };
        let mut c = gc::IdentityGc::new(client.clone(), cfg.identity_heartbeat_timeout);
        loop {
            report(c.pass().await, health, "identity GC");
            tokio::time::sleep(interval).await;
        }
    };
    let endpoints = async {
        let Some(interval) = cfg.cep_gc_interval else {
            return std::future::pending::<()>().await;
        };
        let c = gc::EndpointGc::new(client.clone());
        loop {
            report(c.pass().await, health, "CiliumEndpoint GC");
            tokio::time::sleep(interval).await;
        }
    };
    tokio::join!(ipam, identities, endpoints);
}

/// Logs one pass's outcome (a failed pass is retried at the next interval).
fn report<T: std::fmt::Debug>(r: Result<T, kube::Error>, health: &health::Health, what: &str) {
    match r {
        Ok(r) => {
            health.api_ok();
            tracing::debug!(controller = what, result = ?r, "pass done");
        }
        Err(e) => {
            health.api_error(&e);
            tracing::warn!(controller = what, error = %e, "pass failed; retrying");
        }
    }
}
