//! A client of the agent API over its unix socket (used by the CLI and the CNI plugin).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};

use super::models::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cilium agent at {socket}: {source}. Is the agent running? Start it with `cilium agent` or `cilium local up`")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {socket} did not answer within {secs}s")]
    Timeout { socket: PathBuf, secs: u64 },
    #[error("talking to the agent: {0}")]
    Http(String),
    #[error("agent answered {status}: {message}")]
    Api { status: StatusCode, message: String },
    #[error("agent answer could not be decoded: {0}")]
    Decode(#[from] serde_json::Error),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
}

/// The agent API at one socket path.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_path_buf(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request on a fresh connection; the response body is left to the caller.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "cilium")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let fut = async {
            let bytes = match body {
                Some(b) => serde_json::to_vec(b)?,
                None => Vec::new(),
            };
            let resp = self.send(method, path, bytes).await?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                let message = serde_json::from_slice::<ApiError>(&body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
                return Err(ClientError::Api { status, message });
            }
            Ok(serde_json::from_slice(&body)?)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                socket: self.socket.clone(),
                secs: self.timeout.as_secs(),
            })?
    }

    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/healthz", None).await
    }

    pub async fn allocate(&self, owner: &str) -> Result<IpamResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/ipam",
            Some(&IpamRequest {
                owner: owner.into(),
            }),
        )
        .await
    }

    pub async fn release(&self, owner: &str) -> Result<Vec<std::net::IpAddr>, ClientError> {
        self.call::<(), _>(
            Method::DELETE,
            &format!("/v1/ipam?{}", query(&[("owner", owner)])),
            None,
        )
        .await
    }

    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/endpoint", None).await
    }

    pub async fn create_endpoint(&self, req: &EndpointRequest) -> Result<Endpoint, ClientError> {
        self.call(Method::PUT, "/v1/endpoint", Some(req)).await
    }

    fn attachment_path(container_id: &str, ifname: &str) -> String {
        format!(
            "/v1/endpoint/attachment?{}",
            query(&[("container_id", container_id), ("ifname", ifname)])
        )
    }

    pub async fn endpoint(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Endpoint, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &Self::attachment_path(container_id, ifname),
            None,
        )
        .await
    }

    pub async fn delete_endpoint(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Endpoint, ClientError> {
        self.call::<(), _>(
            Method::DELETE,
            &Self::attachment_path(container_id, ifname),
            None,
        )
        .await
    }

    pub async fn gc(&self, req: &GcRequest) -> Result<GcResponse, ClientError> {
        self.call(Method::POST, "/v1/gc", Some(req)).await
    }

    pub async fn metrics(&self) -> Result<Vec<MetricEntry>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/metrics/datapath", None)
            .await
    }

    pub async fn identities(&self) -> Result<Vec<IdentityModel>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/identity", None).await
    }

    pub async fn identity(&self, id: u32) -> Result<IdentityModel, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/identity/{id}"), None)
            .await
    }

    pub async fn services(&self) -> Result<Vec<ServiceModel>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/service", None).await
    }

    pub async fn policy(&self) -> Result<PolicyModel, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/policy", None).await
    }

    /// Streams monitor events into `f` until it returns false or the agent goes away.
    pub async fn monitor(
        &self,
        mut f: impl FnMut(MonitorEvent) -> bool,
    ) -> Result<(), ClientError> {
        let mut body = self
            .send(Method::GET, "/v1/monitor", Vec::new())
            .await?
            .into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let ev: MonitorEvent = serde_json::from_slice(&line[..line.len() - 1])?;
                    if !f(ev) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Encodes a query string.
fn query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}
