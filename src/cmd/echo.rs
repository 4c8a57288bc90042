//! `cilium echo-server`: the connectivity test's HTTP JSON echo server, so a single
//! binary serves every test pod.
use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::{extract::ConnectInfo, http::HeaderMap, routing::get, Json, Router};

/// Serves until killed; every request gets {name, path, host, client} back.
pub async fn serve(port: u16, name: String) -> Result<()> {
    let app = Router::new().fallback(get(
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
              headers: HeaderMap,
              uri: axum::http::Uri| {
            let name = name.clone();
            async move {
                let host = headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                Json(serde_json::json!({
                    "name": name,
                    "path": uri.path(),
                    "host": host,
                    "client": peer.to_string(),
                }))
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("binding 0.0.0.0:{port}"))?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
