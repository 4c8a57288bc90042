//! Reads datapath events from the ring buffer and fans them out to API listeners
//! (`cilium monitor`; Hubble builds on the same stream later).
use std::net::Ipv4Addr;

use aya::maps::{MapData, RingBuf};
use tokio::sync::broadcast;
use tracing::warn;

use super::models::MonitorEvent;
use crate::datapath::maps::{direction_name, reason_name, DropEvent};

pub type Events = broadcast::Sender<MonitorEvent>;

fn proto_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        n => format!("proto-{n}"),
    }
}

/// Turns a raw drop record into the monitor's event.
pub fn to_event(d: &DropEvent) -> MonitorEvent {
    let addr = |a: u32, port: u16| {
        let ip = Ipv4Addr::from(a.to_ne_bytes());
        match d.proto {
            6 | 17 | 132 => format!("{ip}:{}", u16::from_be(port)),
            _ => ip.to_string(),
        }
    };
    MonitorEvent {
        kind: "drop".into(),
        reason: d.reason,
        reason_name: reason_name(d.reason).into(),
        direction: direction_name(d.dir).into(),
        endpoint: d.ep_id,
        src_identity: d.src_id,
        dst_identity: d.dst_id,
        src: addr(d.saddr, d.sport),
        dst: addr(d.daddr, d.dport),
        protocol: proto_name(d.proto),
        len: d.len,
    }
}

/// Starts the reader task; returns the sender listeners subscribe to.
pub fn spawn_reader(ring: RingBuf<MapData>) -> std::io::Result<Events> {
    let (tx, _) = broadcast::channel(4096);
    let mut fd = crate::datapath::loader::async_ring(ring)?;
    let out = tx.clone();
    tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    warn!(error = %e, "events ring buffer");
                    return;
                }
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if let Some(d) = DropEvent::from_bytes(&item) {
                    // No listener is fine: events are only kept while someone watches.
                    let _ = out.send(to_event(&d));
                }
            }
            guard.clear_ready();
        }
    });
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_record_renders_like_cilium_monitor() {
        let d = DropEvent {
            src_id: 1001,
            dst_id: 1000,
            saddr: u32::from_ne_bytes([10, 0, 0, 2]),
            daddr: u32::from_ne_bytes([10, 0, 0, 3]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            len: 60,
            ep_id: 2,
            kind: 1,
            reason: 133,
            dir: 1,
            proto: 6,
            ..Default::default()
        };
        let e = to_event(&d);
        assert_eq!(e.reason_name, "Policy denied");
        assert_eq!(e.src, "10.0.0.2:40000");
        assert_eq!(e.dst, "10.0.0.3:80");
        assert_eq!(e.direction, "INGRESS");
        assert_eq!(e.protocol, "TCP");
    }
}
