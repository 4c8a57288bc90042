//! Encoding of policy entries into `cilium_policy` LPM keys: a port range becomes
//! the minimal set of aligned port prefixes.
use super::maps::{PolicyKeyData, POLICY_STATIC_PREFIX};

/// Splits the inclusive range `lo..=hi` into aligned blocks `(start, prefix_bits)`
/// where the block covers `start .. start + 2^(16 - prefix_bits)`.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    let mut start = lo as u32;
    let end = hi as u32;
    while start <= end {
        // Largest block aligned at `start` that stays within the range.
        let mut size: u32 = if start == 0 {
            1 << 16
        } else {
            1 << start.trailing_zeros().min(16)
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros() as u8;
        out.push((start as u16, bits));
        start += size;
    }
    out
}

/// LPM keys (prefix length, data) for one policy entry. `proto` 0 means any protocol
/// and any port.
pub fn lpm_keys(
    ep_id: u16,
    identity: u32,
    egress: bool,
    proto: u8,
    lo: u16,
    hi: u16,
) -> Vec<(u32, PolicyKeyData)> {
    let base = PolicyKeyData {
        sec_label: identity,
        ep_id,
        egress: egress as u8,
        protocol: proto,
        dport: 0,
        pad: 0,
    };
    if proto == 0 {
        return vec![(POLICY_STATIC_PREFIX, base)];
    }
    port_prefixes(lo, hi)
        .into_iter()
        .map(|(port, bits)| {
            (
                POLICY_STATIC_PREFIX + 8 + bits as u32,
                PolicyKeyData {
                    dport: port.to_be(),
                    ..base
                },
            )
        })
        .collect()
}

/// The port range an LPM key covers (for display).
pub fn key_port_range(prefixlen: u32, data: &PolicyKeyData) -> Option<(u16, u16)> {
    let bits = prefixlen.checked_sub(POLICY_STATIC_PREFIX + 8)?;
    let start = u16::from_be(data.dport) as u32;
    let size = 1u32 << (16 - bits.min(16));
    Some((start as u16, (start + size - 1) as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[(u16, u8)]) -> Vec<u32> {
        let mut v: Vec<u32> = blocks
            .iter()
            .flat_map(|(s, b)| {
                let size = 1u32 << (16 - b);
                (*s as u32)..(*s as u32 + size)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn single_port_is_one_full_prefix() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
    }

    #[test]
    fn whole_range_is_one_zero_prefix() {
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
    }

    #[test]
    fn ranges_are_covered_exactly_and_minimally() {
        for (lo, hi) in [
            (8080u16, 8090u16),
            (1, 1023),
            (30000, 32767),
            (65530, 65535),
            (0, 1),
            (5, 5),
        ] {
            let blocks = port_prefixes(lo, hi);
            assert_eq!(
                covered(&blocks),
                (lo as u32..=hi as u32).collect::<Vec<_>>(),
                "{lo}-{hi}"
            );
            assert!(blocks.len() <= 32, "{lo}-{hi}: {}", blocks.len());
        }
        // 30000-32767 is 30000-30719 + 30720-32767 (...): aligned, not 2768 single ports.
        assert!(port_prefixes(30000, 32767).len() < 10);
    }

    #[test]
    fn keys_round_trip_their_range() {
        let keys = lpm_keys(3, 1000, true, 6, 8080, 8090);
        let mut ports = Vec::new();
        for (len, k) in &keys {
            let (a, b) = key_port_range(*len, k).unwrap();
            ports.extend(a as u32..=b as u32);
            assert_eq!(
                (k.ep_id, k.sec_label, k.egress, k.protocol),
                (3, 1000, 1, 6)
            );
        }
        ports.sort();
        assert_eq!(ports, (8080..=8090).collect::<Vec<_>>());
        let any = lpm_keys(3, 0, false, 0, 0, 65535);
        assert_eq!(
            any,
            vec![(
                POLICY_STATIC_PREFIX,
                PolicyKeyData {
                    sec_label: 0,
                    ep_id: 3,
                    egress: 0,
                    protocol: 0,
                    dport: 0,
                    pad: 0
                }
            )]
        );
    }
}
