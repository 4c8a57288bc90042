//! The agent's REST API on a unix socket (mode 0660), modelled on Cilium's /v1 API.
use std::{os::unix::fs::PermissionsExt, path::Path};

use axum::{
    body::Body,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use tracing::{info, warn};

use super::{events::Events, models::*, AgentError, Shared};
use crate::datapath::{loader, maps};

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        use super::ipam::IpamError;
        let status = match &self {
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            AgentError::Ipam(IpamError::Exhausted { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            AgentError::Ipam(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() && status != StatusCode::INSUFFICIENT_STORAGE {
            warn!(error = %self, "API request failed");
        }
        (
            status,
            Json(ApiError {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, AgentError>;

async fn healthz(State(s): State<Shared>) -> Json<StatusResponse> {
    Json(s.lock().await.status())
}

/// `GET /healthz` of the health port: 200 and a short status while the agent is Ok,
/// 503 otherwise (the same status as `/v1/healthz`).
async fn probe_healthz(State(s): State<Shared>) -> (StatusCode, Json<HealthResponse>) {
    let st = s.lock().await.status();
    let code = if st.state == "Ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(HealthResponse {
            state: st.state,
            node_name: st.node_name,
            version: st.version,
            uptime_seconds: st.uptime_seconds,
        }),
    )
}

/// The routes of the health port (plain HTTP on 127.0.0.1, for kubelet probes).
pub fn health_router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(probe_healthz))
        .with_state(state)
}

/// Binds the health port on 127.0.0.1 (before the agent starts, so a taken port fails
/// fast); serve it with [`serve_health`] once the agent is up.
pub async fn bind_health(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "binding the health endpoint {addr}: {e} (another agent on this node? \
             choose another --health-port, or 0 to disable it)"
        )
    })
}

/// Serves `/healthz` on `listener` until the process ends.
pub fn serve_health(state: Shared, listener: tokio::net::TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "health endpoint listening (GET /healthz)");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, health_router(state)).await {
            warn!(error = %e, "health endpoint stopped");
        }
    });
}

async fn ipam_allocate(
    State(s): State<Shared>,
    Json(req): Json<IpamRequest>,
) -> ApiResult<IpamResponse> {
    Ok(Json(s.lock().await.allocate(&req)?))
}

#[derive(Deserialize)]
struct OwnerQuery {
    owner: String,
}

async fn ipam_release(
    State(s): State<Shared>,
    Query(q): Query<OwnerQuery>,
) -> ApiResult<Vec<std::net::IpAddr>> {
    let mut st = s.lock().await;
    if st.endpoints.list().any(|e| e.owner() == q.owner) {
        return Err(AgentError::Conflict(format!(
            "{} still has an endpoint; delete the endpoint instead",
            q.owner
        )));
    }
    Ok(Json(st.release_owner(&q.owner)))
}

async fn endpoint_list(State(s): State<Shared>) -> ApiResult<Vec<Endpoint>> {
    Ok(Json(s.lock().await.endpoints.list().cloned().collect()))
}

async fn endpoint_put(
    State(s): State<Shared>,
    Json(req): Json<EndpointRequest>,
) -> ApiResult<Endpoint> {
    Ok(Json(s.lock().await.create_endpoint(req).await?))
}

#[derive(Deserialize)]
struct AttachmentQuery {
    container_id: String,
    ifname: String,
}

async fn endpoint_get(
    State(s): State<Shared>,
    Query(q): Query<AttachmentQuery>,
) -> ApiResult<Endpoint> {
    let st = s.lock().await;
    st.endpoints
        .find(&q.container_id, &q.ifname)
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            AgentError::NotFound(format!("no endpoint for {}:{}", q.container_id, q.ifname))
        })
}

async fn endpoint_delete(
    State(s): State<Shared>,
    Query(q): Query<AttachmentQuery>,
) -> ApiResult<Endpoint> {
    let mut st = s.lock().await;
    st.delete_endpoint(&q.container_id, &q.ifname)
        .await?
        .map(Json)
        .ok_or_else(|| {
            AgentError::NotFound(format!("no endpoint for {}:{}", q.container_id, q.ifname))
        })
}

async fn gc(State(s): State<Shared>, Json(req): Json<GcRequest>) -> ApiResult<GcResponse> {
    Ok(Json(s.lock().await.gc(&req).await?))
}

async fn metrics(State(s): State<Shared>) -> ApiResult<Vec<MetricEntry>> {
    let root = s.lock().await.config.bpf_root.clone();
    let entries = loader::read_metrics(&root)?;
    Ok(Json(
        entries
            .into_iter()
            .map(|(k, v)| MetricEntry {
                reason: k.reason,
                reason_name: maps::reason_name(k.reason).into(),
                direction: maps::direction_name(k.dir).into(),
                packets: v.packets,
                bytes: v.bytes,
            })
            .collect(),
    ))
}

fn identity_model(i: &crate::policy::labels::IdentityInfo) -> IdentityModel {
    use crate::policy::labels::IdentityKind;
    IdentityModel {
        id: i.id,
        labels: i.labels.to_strings(),
        kind: match &i.kind {
            IdentityKind::Reserved(_) => "reserved".into(),
            IdentityKind::Endpoint => "endpoint".into(),
            IdentityKind::Cidr(_) => "cidr".into(),
        },
    }
}

async fn identity_list(State(s): State<Shared>) -> ApiResult<Vec<IdentityModel>> {
    let st = s.lock().await;
    Ok(Json(
        st.policy.identities.iter().map(identity_model).collect(),
    ))
}

async fn identity_get(
    State(s): State<Shared>,
    UrlPath(id): UrlPath<u32>,
) -> ApiResult<IdentityModel> {
    let st = s.lock().await;
    st.policy
        .identities
        .iter()
        .find(|i| i.id == id)
        .map(|i| Json(identity_model(i)))
        .ok_or_else(|| {
            AgentError::NotFound(format!(
                "identity {id} not found; `cilium identity list` shows them"
            ))
        })
}

async fn service_list(State(s): State<Shared>) -> ApiResult<Vec<ServiceModel>> {
    let st = s.lock().await;
    let Some(state) = st.lb.state.as_ref() else {
        return Ok(Json(Vec::new()));
    };
    Ok(Json(
        state
            .services
            .iter()
            .map(|svc| ServiceModel {
                id: svc.id,
                frontend: svc.frontend.to_string(),
                kind: svc.frontend.kind.to_string(),
                service: format!("{}/{}", svc.service.0, svc.service.1),
                backends: svc
                    .backends
                    .iter()
                    .map(|b| (b, "active"))
                    .chain(svc.terminating.iter().map(|b| (b, "terminating")))
                    .filter_map(|(b, st)| {
                        state.backends.get(b).map(|r| {
                            format!("{} ({st})", crate::lb::state::BackendRef::maglev_key(r))
                        })
                    })
                    .collect(),
                affinity_timeout: svc.affinity_timeout,
            })
            .collect(),
    ))
}

async fn policy_get(State(s): State<Shared>) -> ApiResult<PolicyModel> {
    let st = s.lock().await;
    Ok(Json(PolicyModel {
        revision: st.policy.generation.unwrap_or(0),
        policies: st.policy.policy_names.clone(),
        rules: st.policy.rules.len(),
    }))
}

/// Streams datapath events as JSON lines until the client goes away.
async fn monitor(State(events): State<Events>) -> Response {
    let rx = events.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                    line.push(b'\n');
                    return Some((
                        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line)),
                        rx,
                    ));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

pub fn router(state: Shared, events: Events) -> Router {
    let monitor_routes = Router::new()
        .route("/v1/monitor", get(monitor))
        .with_state(events);
    Router::new()
        .route("/v1/identity", get(identity_list))
        .route("/v1/identity/{id}", get(identity_get))
        .route("/v1/policy", get(policy_get))
        .route("/v1/service", get(service_list))
        .route("/v1/healthz", get(healthz))
        .route("/v1/ipam", post(ipam_allocate).delete(ipam_release))
        .route("/v1/endpoint", get(endpoint_list).put(endpoint_put))
        .route(
            "/v1/endpoint/attachment",
            get(endpoint_get).delete(endpoint_delete),
        )
        .route("/v1/gc", post(gc))
        .route("/v1/metrics/datapath", get(metrics))
        .with_state(state)
        .merge(monitor_routes)
}

/// Serves the API on `socket` until SIGTERM or SIGINT, then removes the socket.
pub async fn serve(state: Shared, events: Events, socket: &Path) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::anyhow!(
                "removing stale socket {}: {e}",
                socket.display()
            ))
        }
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| anyhow::anyhow!("binding API socket {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    info!(socket = %socket.display(), "API listening");
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot watch SIGTERM");
                    return std::future::pending().await;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        }
    };
    axum::serve(listener, router(state, events))
        .with_graceful_shutdown(shutdown)
        .await?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}
