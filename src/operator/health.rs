//! The operator's health endpoint, `GET /healthz` on `--operator-api-serve-addr`
//! (127.0.0.1:9234: the Deployment's liveness and readiness probes). Healthy while the
//! Kubernetes API answered within [`API_SILENCE_LIMIT`] (or since the start, for that
//! long); a standby replica is healthy too.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, routing::get, Router};

/// Without a successful API call for this long, /healthz fails (the liveness probe then
/// restarts the operator, with fresh connections).
pub const API_SILENCE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Inner {
    last_ok: Instant,
    last_error: Option<String>,
    leader: bool,
}

/// Shared between the controllers (who report API results) and the endpoint.
#[derive(Debug, Clone)]
pub struct Health(Arc<Mutex<Inner>>);

impl Default for Health {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Inner {
            last_ok: Instant::now(),
            last_error: None,
            leader: false,
        })))
    }
}

impl Health {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
    pub fn api_ok(&self) {
        self.with(|i| {
            i.last_ok = Instant::now();
            i.last_error = None;
        })
    }
    pub fn api_error(&self, e: &dyn std::fmt::Display) {
        let s = e.to_string();
        self.with(|i| i.last_error = Some(s))
    }
    pub fn set_leader(&self, leader: bool) {
        self.with(|i| i.leader = leader)
    }
    pub fn is_leader(&self) -> bool {
        self.with(|i| i.leader)
    }
    /// The probe's answer.
    pub fn check(&self) -> (StatusCode, String) {
        self.with(|i| {
            let silent = i.last_ok.elapsed();
            if silent > API_SILENCE_LIMIT {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no successful Kubernetes API call for {}s: {}\n",
                        silent.as_secs(),
                        i.last_error.as_deref().unwrap_or("no answer")
                    ),
                )
            } else {
                let role = if i.leader { "leader" } else { "standby" };
                (StatusCode::OK, format!("ok ({role})\n"))
            }
        })
    }
}

/// The router: `GET /healthz`.
pub fn router(health: Health) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(h): State<Health>| async move { h.check() }),
        )
        .with_state(health)
}

/// Binds `addr` (an error names it) and serves until the process ends.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
) -> Result<tokio::task::JoinHandle<()>, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(health)).await {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    }))
}
