//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4), as Cilium uses it for
//! `--bpf-lb-algorithm=maglev`.
//!
//! Each backend gets a permutation of the `M` table slots from two hashes of its stable
//! key: `offset = h1 % M`, `skip = h2 % (M - 1) + 1`, `permutation[j] = (offset + j *
//! skip) % M` (a full permutation because `M` is prime). Backends then take turns, in
//! round-robin order, claiming their next preferred slot that is still free, until all `M`
//! slots are filled. Every backend therefore gets `floor(M/N)` or `ceil(M/N)` slots, and
//! removing one of `N` backends moves little more than its own `1/N` of the slots.
//!
//! Hash: MurmurHash3 x64_128 (Austin Appleby's public-domain reference algorithm,
//! implemented here from its specification) of the key's UTF-8 bytes, `h1` and `h2` being
//! the two 64-bit output halves, with a fixed 32-bit seed. The default seed is the first
//! four bytes (big-endian) of Cilium's default `--bpf-lb-maglev-hash-seed`
//! (`JLfvgnHc2kaSUFaI`), so the permutations equal Cilium's for the same key strings.
//! Backends are ordered by key before the round-robin, so the table depends only on the
//! set of keys, never on input order or on the node-local backend ids: every node computes
//! the same assignment of keys to slots.

use thiserror::Error;

use super::state::BackendId;

/// Table sizes Cilium accepts for `--bpf-lb-maglev-table-size` (all prime).
pub const SUPPORTED_SIZES: [usize; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// Cilium's default table size.
pub const DEFAULT_TABLE_SIZE: usize = 16381;

/// Default MurmurHash3 seed: bytes 0..4 of base64-decoded `JLfvgnHc2kaSUFaI`, big-endian.
pub const DEFAULT_SEED: u32 = 0x24b7_ef82;

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not supported (expected one of 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)")]
    UnsupportedSize(usize),
    #[error("a Maglev table needs at least one backend")]
    NoBackends,
    #[error("{backends} backends do not fit a Maglev table of {m} slots")]
    TooManyBackends { backends: usize, m: usize },
    #[error("duplicate Maglev backend key {0:?}")]
    DuplicateKey(String),
}

/// Whether `m` is one of [`SUPPORTED_SIZES`].
pub fn is_supported_size(m: usize) -> bool {
    SUPPORTED_SIZES.contains(&m)
}

/// The lookup table of size `m` for `backends` (id, stable key such as
/// `"10.0.0.5:80/TCP"`), with [`DEFAULT_SEED`]. Slot `i` holds the backend for flows whose
/// tuple hash is `i` modulo `m`.
pub fn table(backends: &[(BackendId, String)], m: usize) -> Result<Vec<BackendId>, MaglevError> {
    table_with_seed(backends, m, DEFAULT_SEED)
}

/// [`table`] with an explicit hash seed (cluster-wide: all nodes must use the same).
pub fn table_with_seed(
    backends: &[(BackendId, String)],
    m: usize,
    seed: u32,
) -> Result<Vec<BackendId>, MaglevError> {
    if !is_supported_size(m) {
        return Err(MaglevError::UnsupportedSize(m));
    }
    if backends.is_empty() {
        return Err(MaglevError::NoBackends);
    }
    if backends.len() > m {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            m,
        });
    }
    let mut order: Vec<&(BackendId, String)> = backends.iter().collect();
    order.sort_by(|a, b| a.1.cmp(&b.1));
    if let Some(w) = order.windows(2).find(|w| w[0].1 == w[1].1) {
        return Err(MaglevError::DuplicateKey(w[0].1.clone()));
    }

    let m64 = m as u64;
    // Current permutation position and skip of each backend.
    let mut pos = Vec::with_capacity(order.len());
    let mut skip = Vec::with_capacity(order.len());
    for (_, key) in &order {
        let (o, s) = offset_and_skip(key.as_bytes(), m64, seed);
        pos.push(o);
        skip.push(s);
    }

    let mut filled = vec![false; m];
    let mut entry = vec![BackendId(0); m];
    let n = order.len();
    for turn in 0..m {
        let i = turn % n;
        // Terminates: the permutation visits every slot and fewer than m are filled.
        loop {
            let c = pos[i] as usize;
            pos[i] = (pos[i] + skip[i]) % m64;
            if !filled[c] {
                filled[c] = true;
                entry[c] = order[i].0;
                break;
            }
        }
    }
    Ok(entry)
}

/// A backend's permutation parameters: `(h1 % m, h2 % (m - 1) + 1)`.
pub fn offset_and_skip(key: &[u8], m: u64, seed: u32) -> (u64, u64) {
    let (h1, h2) = murmur3_x64_128(key, seed);
    (h1 % m, h2 % (m - 1) + 1)
}

const C1: u64 = 0x87c3_7b91_1142_53d5;
const C2: u64 = 0x4cf5_ad43_2745_937f;

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

fn mix_k1(k1: u64) -> u64 {
    k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2)
}

fn mix_k2(k2: u64) -> u64 {
    k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1)
}

/// MurmurHash3 x64_128: returns the two 64-bit halves `(h1, h2)` (little-endian block
/// reads, as the reference implementation on x86-64).
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> (u64, u64) {
    let mut h1 = u64::from(seed);
    let mut h2 = u64::from(seed);
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&block[..8]);
        b.copy_from_slice(&block[8..]);
        h1 ^= mix_k1(u64::from_le_bytes(a));
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= mix_k2(u64::from_le_bytes(b));
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let mut k1 = 0u64;
    let mut k2 = 0u64;
    for (i, &byte) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= u64::from(byte) << (8 * i);
        } else {
            k2 |= u64::from(byte) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        h2 ^= mix_k2(k2);
    }
    if !tail.is_empty() {
        h1 ^= mix_k1(k1);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u32) -> Vec<(BackendId, String)> {
        (1..=n)
            .map(|i| {
                (
                    BackendId(i),
                    format!("10.0.{}.{}:80/TCP", i / 250, i % 250 + 1),
                )
            })
            .collect()
    }

    fn counts(t: &[BackendId]) -> std::collections::BTreeMap<BackendId, usize> {
        let mut c = std::collections::BTreeMap::new();
        for id in t {
            *c.entry(*id).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn murmur3_reference_vectors() {
        // Values from the reference implementation (Python mmh3.hash64, unsigned).
        assert_eq!(murmur3_x64_128(b"", 0), (0, 0));
        assert_eq!(
            murmur3_x64_128(b"hello", 0),
            (0xcbd8_a7b3_41bd_9b02, 0x5b1e_906a_48ae_1d19)
        );
        assert_eq!(
            murmur3_x64_128(b"10.0.0.5:80/TCP", DEFAULT_SEED),
            (0xf41a_ca87_4afd_126b, 0x0929_e7f7_ccba_8b71)
        );
        assert_eq!(
            murmur3_x64_128(b"The quick brown fox jumps over the lazy dog", 42),
            (0x740d_cf93_fe0b_d5d7, 0xc454_6cf4_ec70_5c8f)
        );
    }

    #[test]
    fn sizes() {
        for m in SUPPORTED_SIZES {
            assert!(is_supported_size(m));
        }
        assert!(is_supported_size(DEFAULT_TABLE_SIZE));
        for m in [0, 1, 7, 250, 256, 16384, 65536] {
            assert!(!is_supported_size(m));
        }
    }

    #[test]
    fn errors() {
        assert_eq!(
            table(&backends(3), 1000),
            Err(MaglevError::UnsupportedSize(1000))
        );
        assert_eq!(table(&[], 251), Err(MaglevError::NoBackends));
        assert_eq!(
            table(&backends(252), 251),
            Err(MaglevError::TooManyBackends {
                backends: 252,
                m: 251
            })
        );
        let dup = vec![
            (BackendId(1), "10.0.0.1:80/TCP".to_string()),
            (BackendId(2), "10.0.0.1:80/TCP".to_string()),
        ];
        assert_eq!(
            table(&dup, 251),
            Err(MaglevError::DuplicateKey("10.0.0.1:80/TCP".to_string()))
        );
        assert_eq!(
            MaglevError::UnsupportedSize(7).to_string(),
            "Maglev table size 7 is not supported (expected one of 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)"
        );
    }

    #[test]
    fn every_backend_gets_floor_or_ceil_of_m_over_n() {
        for (n, m) in [
            (1, 251),
            (3, 251),
            (10, 16381),
            (7, 1021),
            (100, 16381),
            (251, 251),
        ] {
            let b = backends(n);
            let t = table(&b, m).expect("table");
            assert_eq!(t.len(), m);
            let c = counts(&t);
            assert_eq!(
                c.len(),
                n as usize,
                "every backend has slots (n={n}, m={m})"
            );
            let (lo, hi) = (m / n as usize, m.div_ceil(n as usize));
            for (id, k) in c {
                assert!(
                    k == lo || k == hi,
                    "backend {id} got {k} slots, want {lo} or {hi}"
                );
            }
        }
    }

    #[test]
    fn deterministic_and_independent_of_input_order() {
        let b = backends(10);
        let t1 = table(&b, DEFAULT_TABLE_SIZE).expect("table");
        let t2 = table(&b, DEFAULT_TABLE_SIZE).expect("table");
        assert_eq!(t1, t2);
        let mut rev = b.clone();
        rev.reverse();
        assert_eq!(table(&rev, DEFAULT_TABLE_SIZE).expect("table"), t1);
        // Pinned: the same as an independent implementation of Cilium's fill loop over
        // the reference MurmurHash3 (Python mmh3) gives for these keys.
        let head: Vec<u32> = t1[..16].iter().map(|id| id.0).collect();
        assert_eq!(head, [9, 6, 3, 2, 8, 10, 4, 4, 4, 9, 3, 2, 5, 5, 5, 8]);
        // A different seed gives a different table.
        assert_ne!(
            table_with_seed(&b, DEFAULT_TABLE_SIZE, 1).expect("table"),
            t1
        );
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth_of_the_slots() {
        let n = 10u32;
        let m = DEFAULT_TABLE_SIZE;
        let before_b = backends(n);
        let before = table(&before_b, m).expect("table");
        let removed = BackendId(4);
        let after_b: Vec<_> = before_b
            .iter()
            .filter(|b| b.0 != removed)
            .cloned()
            .collect();
        let after = table(&after_b, m).expect("table");

        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let frac = changed as f64 / m as f64;
        let bound = 1.0 / f64::from(n) + 0.05;
        assert!(
            frac < bound,
            "{frac:.4} of the slots changed, bound {bound:.4}"
        );
        // The removed backend's own slots must all move; of the survivors' slots, few move.
        let own = before.iter().filter(|id| **id == removed).count();
        let survivors_moved = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| **a != removed && a != b)
            .count();
        assert!(changed >= own);
        assert!(
            (survivors_moved as f64) < 0.05 * m as f64,
            "{survivors_moved} slots of surviving backends moved"
        );

        // Flows: hash sampled 5-tuples into the table, as the datapath does.
        let flows = 50_000u32;
        let mut moved = 0;
        for f in 0..flows {
            let tuple = [
                10u8,
                1,
                (f >> 8) as u8,
                f as u8,
                10,
                96,
                0,
                10,
                (f >> 16) as u8,
                (1024 + f % 50000) as u8,
                0,
                80,
                6,
            ];
            let (h, _) = murmur3_x64_128(&tuple, 7);
            let slot = (h % m as u64) as usize;
            if before[slot] != after[slot] {
                moved += 1;
            }
        }
        let flow_frac = f64::from(moved) / f64::from(flows);
        assert!(
            flow_frac < bound && flow_frac > 1.0 / f64::from(n) - 0.05,
            "{flow_frac:.4} of the flows were remapped, expected about {:.2}",
            1.0 / f64::from(n)
        );
    }

    #[test]
    fn largest_table() {
        let t = table(&backends(3), 131071).expect("table");
        assert_eq!(t.len(), 131071);
    }
}
