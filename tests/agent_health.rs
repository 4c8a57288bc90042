//! The agent's health endpoint as the DaemonSet's probes use it: plain HTTP GET
//! http://127.0.0.1:9879/healthz from the node's own network namespace. Privileged: a
//! local cluster (network namespace, eBPF) is started and always torn down.
mod common;

use std::io::{Read, Write};

use common::{in_ns, privileged, LocalCluster};

/// One HTTP/1.1 GET; returns the status code and the body.
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[test]
fn healthz_answers_on_the_node_loopback() {
    if !privileged() {
        return;
    }
    let c = LocalCluster::up("t-health", "10.240.0.0/24");
    let (code, body) = in_ns(&c.node_netns(), || get("127.0.0.1:9879", "/healthz"))
        .expect("the health port answers in the node's namespace");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON status");
    assert_eq!(v["node_name"], "node1", "{v}");
    assert_eq!(v["state"], "Ok", "{v}");
    // Only /healthz is served there: the API stays on the unix socket.
    let (code, _) = in_ns(&c.node_netns(), || get("127.0.0.1:9879", "/v1/endpoint"))
        .expect("the health port answers");
    assert_eq!(code, 404);
}
