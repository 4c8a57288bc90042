//! `cilium probe`: the connectivity test's client, run inside a pod. One TCP or UDP
//! exchange, reported as JSON with the peer address the socket sees (so service
//! translation is visible) and how long it took.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ProbeResult {
    pub ok: bool,
    pub peer: Option<String>,
    pub response: Option<String>,
    pub error: Option<String>,
    pub ms: f64,
}

fn resolve(target: &str) -> Result<SocketAddr> {
    target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("{target:?} is not HOST:PORT"))
}

fn classify(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout".into(),
        _ => e.to_string(),
    }
}

/// Connects, sends `send` (if any), reads until EOF or timeout.
pub fn tcp(target: &str, send: Option<&str>, timeout: Duration) -> Result<ProbeResult> {
    let addr = resolve(target)?;
    let start = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            return Ok(ProbeResult {
                ok: false,
                peer: None,
                response: None,
                error: Some(classify(&e)),
                ms: start.elapsed().as_secs_f64() * 1e3,
            })
        }
    };
    let peer = s.peer_addr().ok().map(|p| p.to_string());
    s.set_read_timeout(Some(timeout))?;
    match send {
        // A request (e.g. HTTP/1.0): the server answers and closes.
        Some(d) => s.write_all(d.as_bytes())?,
        // Nothing to say: the peer sees EOF and can answer and close.
        None => {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }
    let mut buf = Vec::new();
    let res = s.read_to_end(&mut buf);
    Ok(ProbeResult {
        ok: res.is_ok(),
        peer,
        response: Some(String::from_utf8_lossy(&buf).into_owned()),
        error: res.err().map(|e| classify(&e)),
        ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// Sends one datagram and waits for one reply; `connected` uses connect()+send().
pub fn udp(target: &str, send: &str, connected: bool, timeout: Duration) -> Result<ProbeResult> {
    let addr = resolve(target)?;
    let start = Instant::now();
    let s = if addr.is_ipv6() {
        UdpSocket::bind(("::", 0))?
    } else {
        UdpSocket::bind(("0.0.0.0", 0))?
    };
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 2048];
    let outcome = if connected {
        s.connect(addr)
            .and_then(|_| s.send(send.as_bytes()))
            .and_then(|_| s.recv(&mut buf))
            .map(|n| (n, s.peer_addr().ok()))
    } else {
        s.send_to(send.as_bytes(), addr)
            .and_then(|_| s.recv_from(&mut buf))
            .map(|(n, from)| (n, Some(from)))
    };
    Ok(match outcome {
        Ok((n, from)) => ProbeResult {
            ok: true,
            peer: from.map(|f| f.to_string()),
            response: Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            error: None,
            ms: start.elapsed().as_secs_f64() * 1e3,
        },
        Err(e) => ProbeResult {
            ok: false,
            peer: None,
            response: None,
            error: Some(classify(&e)),
            ms: start.elapsed().as_secs_f64() * 1e3,
        },
    })
}

/// Latency of `count` sequential TCP connect + request/response exchanges, rotating
/// over `targets` (the server answers and closes).
#[derive(Debug, Serialize)]
pub struct LatencyResult {
    pub samples: usize,
    pub failures: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

pub fn tcp_latency(targets: &[String], count: usize, timeout: Duration) -> Result<LatencyResult> {
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| resolve(t)).collect::<Result<_>>()?;
    let mut times = Vec::with_capacity(count);
    let mut failures = 0;
    for i in 0..count {
        let addr = addrs[i % addrs.len()];
        let start = Instant::now();
        let ok = TcpStream::connect_timeout(&addr, timeout).and_then(|mut s| {
            s.set_read_timeout(Some(timeout))?;
            s.write_all(b"q")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
        });
        match ok {
            Ok(()) => times.push(start.elapsed().as_secs_f64() * 1e3),
            Err(_) => failures += 1,
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if times.is_empty() {
            return 0.0;
        }
        let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
        times[i]
    };
    Ok(LatencyResult {
        samples: times.len(),
        failures,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        mean_ms: if times.is_empty() {
            0.0
        } else {
            times.iter().sum::<f64>() / times.len() as f64
        },
    })
}
