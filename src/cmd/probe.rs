//! `cilium probe`: the connectivity test's client, run inside a pod. One TCP or UDP
//! exchange, reported as JSON with the peer address the socket sees (so service
//! translation is visible) and how long it took.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Serialize, Deserialize)]
pub struct LatencyResult {
    pub samples: usize,
    pub failures: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Every sample in the order taken (`--samples`), for callers that pool runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub times_ms: Option<Vec<f64>>,
}

pub fn tcp_latency(
    targets: &[String],
    count: usize,
    timeout: Duration,
    keep_samples: bool,
) -> Result<LatencyResult> {
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
    Ok(LatencyResult::of(times, failures, keep_samples))
}

impl LatencyResult {
    /// Percentiles (nearest rank) and mean of `times` (ms, in the order taken), which
    /// it keeps when `keep` is set.
    pub fn of(times: Vec<f64>, failures: usize, keep: bool) -> Self {
        let times_ms = keep.then(|| times.clone());
        let mut times = times;
        times.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| -> f64 {
            if times.is_empty() {
                return 0.0;
            }
            let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
            times[i]
        };
        LatencyResult {
            samples: times.len(),
            failures,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            mean_ms: if times.is_empty() {
                0.0
            } else {
                times.iter().sum::<f64>() / times.len() as f64
            },
            times_ms,
        }
    }
}

/// ICMP echo type and code numbers (RFC 792).
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_PAYLOAD: &[u8] = b"cilium-probe";

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request with its checksum filled in.
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![ICMP_ECHO_REQUEST, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(ICMP_PAYLOAD);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// What one received ICMP message says about our echo request.
#[derive(Debug, PartialEq)]
enum IcmpAnswer {
    Reply,
    Unreachable(u8),
    /// Someone else's message (a raw socket sees every ICMP packet).
    Other,
}

/// Reads an ICMP message: with its IPv4 header (`raw` sockets) or without (datagram
/// "ping" sockets, whose kernel also rewrites the identifier, so only `seq` is matched
/// there).
fn parse_icmp(buf: &[u8], raw: bool, id: u16, seq: u16) -> IcmpAnswer {
    let icmp = if raw {
        let Some(ihl) = buf.first().map(|b| usize::from(b & 0x0f) * 4) else {
            return IcmpAnswer::Other;
        };
        buf.get(ihl..).unwrap_or_default()
    } else {
        buf
    };
    if icmp.len() < 8 {
        return IcmpAnswer::Other;
    }
    let (rid, rseq) = (
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    );
    match icmp[0] {
        ICMP_ECHO_REPLY if rseq == seq && (!raw || rid == id) => IcmpAnswer::Reply,
        // The original datagram follows: its IPv4 header, then our echo request.
        ICMP_DEST_UNREACHABLE if raw => {
            let inner = &icmp[8..];
            let ihl = inner
                .first()
                .map(|b| usize::from(b & 0x0f) * 4)
                .unwrap_or(0);
            match inner.get(ihl..ihl + 8) {
                Some(e)
                    if e[0] == ICMP_ECHO_REQUEST
                        && u16::from_be_bytes([e[4], e[5]]) == id
                        && u16::from_be_bytes([e[6], e[7]]) == seq =>
                {
                    IcmpAnswer::Unreachable(icmp[1])
                }
                _ => IcmpAnswer::Other,
            }
        }
        _ => IcmpAnswer::Other,
    }
}

/// One ICMP echo to an IPv4 address (a ping, for images without a ping binary): an
/// unprivileged datagram ICMP socket when `net.ipv4.ping_group_range` allows it, else a
/// raw socket (CAP_NET_RAW, which container runtimes grant by default).
pub fn icmp(target: &str, timeout: Duration) -> Result<ProbeResult> {
    use nix::sys::socket::{
        recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag,
        SockProtocol, SockType, SockaddrIn,
    };
    let ip: std::net::Ipv4Addr = target.parse().map_err(|_| {
        anyhow!("{target:?} is not an IPv4 address (icmp probes take an address, no port)")
    })?;
    let open = |ty| {
        socket(
            AddressFamily::Inet,
            ty,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )
    };
    let (fd, raw) = match open(SockType::Datagram) {
        Ok(fd) => (fd, false),
        Err(_) => (open(SockType::Raw).map_err(|e| {
            anyhow!(
                "opening an ICMP socket: {e}; allow unprivileged ping (sysctl net.ipv4.ping_group_range) or run with CAP_NET_RAW"
            )
        })?, true),
    };
    let id = (std::process::id() & 0xffff) as u16;
    let seq = 1;
    let start = Instant::now();
    let to = SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0));
    let fd_raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let result = |ok: bool, error: Option<String>| ProbeResult {
        ok,
        peer: ok.then(|| ip.to_string()),
        response: ok.then(|| "echo reply".to_string()),
        error,
        ms: start.elapsed().as_secs_f64() * 1e3,
    };
    if let Err(e) = sendto(fd_raw, &echo_request(id, seq), &to, MsgFlags::empty()) {
        return Ok(result(false, Some(classify(&std::io::Error::from(e)))));
    }
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(result(false, Some("timeout".into())));
        }
        let tv =
            nix::sys::time::TimeVal::new(left.as_secs() as i64, left.subsec_micros().max(1) as i64);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
        match recvfrom::<SockaddrIn>(fd_raw, &mut buf) {
            Ok((n, from)) => {
                if raw && from.map(|f| f.ip()) != Some(ip) {
                    // A raw socket sees every ICMP message: only the target's count,
                    // except unreachables, which come from a router.
                    if let IcmpAnswer::Unreachable(code) = parse_icmp(&buf[..n], raw, id, seq) {
                        return Ok(result(false, Some(format!("unreachable (code {code})"))));
                    }
                    continue;
                }
                match parse_icmp(&buf[..n], raw, id, seq) {
                    IcmpAnswer::Reply => return Ok(result(true, None)),
                    IcmpAnswer::Unreachable(code) => {
                        return Ok(result(false, Some(format!("unreachable (code {code})"))))
                    }
                    IcmpAnswer::Other => continue,
                }
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => return Ok(result(false, Some(classify(&std::io::Error::from(e))))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_a_valid_checksum() {
        let p = echo_request(0x1234, 1);
        assert_eq!(p[0], ICMP_ECHO_REQUEST);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 1]);
        // A packet with its checksum in place sums to zero.
        assert_eq!(checksum(&p), 0);
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2, complement 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn replies_are_matched_to_the_request() {
        let mut reply = echo_request(7, 1);
        reply[0] = ICMP_ECHO_REPLY;
        // Datagram sockets: no IP header, the kernel's identifier.
        assert_eq!(parse_icmp(&reply, false, 99, 1), IcmpAnswer::Reply);
        assert_eq!(parse_icmp(&reply, false, 7, 2), IcmpAnswer::Other);
        // Raw sockets: an IPv4 header first, and the identifier must be ours.
        let mut ip = vec![0x45u8; 1];
        ip.extend_from_slice(&[0; 19]);
        let with_ip: Vec<u8> = ip.iter().chain(reply.iter()).copied().collect();
        assert_eq!(parse_icmp(&with_ip, true, 7, 1), IcmpAnswer::Reply);
        assert_eq!(parse_icmp(&with_ip, true, 8, 1), IcmpAnswer::Other);
        // Our own request echoed back on loopback is not a reply.
        let req: Vec<u8> = ip
            .iter()
            .chain(echo_request(7, 1).iter())
            .copied()
            .collect();
        assert_eq!(parse_icmp(&req, true, 7, 1), IcmpAnswer::Other);
        // Destination unreachable quoting our request.
        let mut unreach = vec![ICMP_DEST_UNREACHABLE, 1, 0, 0, 0, 0, 0, 0];
        unreach.extend_from_slice(&req[..28]);
        let pkt: Vec<u8> = ip.iter().chain(unreach.iter()).copied().collect();
        assert_eq!(parse_icmp(&pkt, true, 7, 1), IcmpAnswer::Unreachable(1));
        assert_eq!(parse_icmp(&[1, 2], false, 7, 1), IcmpAnswer::Other);
    }

    #[test]
    fn icmp_targets_are_addresses() {
        let e = icmp("10.0.0.1:80", Duration::from_millis(10)).unwrap_err();
        assert!(e.to_string().contains("IPv4 address"), "{e}");
    }

    #[test]
    fn latency_keeps_every_sample_only_when_asked() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).is_ok() {
                    let _ = s.write_all(&b);
                }
            }
        });
        let t = Duration::from_secs(2);
        let r = tcp_latency(std::slice::from_ref(&target), 7, t, true).unwrap();
        let times = r.times_ms.as_ref().expect("samples asked for");
        assert_eq!((r.samples, r.failures, times.len()), (7, 0, 7));
        assert!(times.iter().all(|&x| x > 0.0 && x <= r.p99_ms), "{r:?}");
        // The JSON a caller pools from carries them; without the flag it does not.
        let back: LatencyResult =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        // (serde_json's float parsing may differ in the last bit: compare to a nanosecond)
        let back = back.times_ms.expect("times_ms in the JSON");
        assert_eq!(back.len(), times.len());
        assert!(
            back.iter().zip(times).all(|(a, b)| (a - b).abs() < 1e-6),
            "{back:?}"
        );
        let r = tcp_latency(&[target], 3, t, false).unwrap();
        assert!(!serde_json::to_string(&r).unwrap().contains("times_ms"));
    }
}
