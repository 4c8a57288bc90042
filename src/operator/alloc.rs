//! Cluster-pool pod CIDR allocation, pure: pools carved into blocks of one prefix length,
//! blocks owned by nodes, and the plan that turns a list of CiliumNodes into the pod
//! CIDRs and errors each one should have.
//!
//! Ownership is kept as intervals of block indexes per pool, so a node holding a CIDR
//! larger than the mask (say a /16 in a pool of /24s) occupies every block it covers
//! without one entry per block.
use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use k8s_openapi::jiff::Timestamp;

/// A configuration the operator cannot allocate from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    #[error("cluster-pool-ipv4-cidr is empty: give at least one IPv4 CIDR like 10.0.0.0/8")]
    Empty,
    #[error("cluster-pool-ipv4-cidr: {value:?} is not an IPv4 CIDR like 10.0.0.0/8")]
    Parse { value: String },
    #[error("cluster-pool-ipv4-cidr: {cidr} has host bits set; did you mean {network}?")]
    NotNetwork { cidr: String, network: Ipv4Net },
    #[error(
        "cluster-pool-ipv4-mask-size {mask} is shorter than the pool {pool}: each node's pod CIDR must fit in the pool (use a mask size of at least {})",
        pool.prefix_len()
    )]
    MaskTooShort { pool: Ipv4Net, mask: u8 },
    #[error("cluster-pool-ipv4-mask-size {mask} is not a prefix length 1-32")]
    BadMask { mask: u8 },
    #[error("cluster-pool-ipv4-cidr: pools {a} and {b} overlap")]
    Overlap { a: Ipv4Net, b: Ipv4Net },
}

/// Why a node could not get or keep a pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("cluster pool exhausted: no free /{mask} left in {} (cluster-pool-ipv4-cidr; cluster-pool-ipv4-mask-size {mask})", list(pools))]
    Exhausted { pools: Vec<Ipv4Net>, mask: u8 },
    #[error("pod CIDR {cidr} overlaps {held} of CiliumNode {owner}, which holds it already; it is not reserved for this node: remove it from spec.ipam.podCIDRs to get a new one")]
    Conflict {
        cidr: Ipv4Net,
        owner: String,
        held: Ipv4Net,
    },
}

fn list(pools: &[Ipv4Net]) -> String {
    pools
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `cluster-pool-ipv4-cidr` (CIDRs separated by spaces or commas) and the mask size.
pub fn parse_pools(value: &str) -> Result<Vec<Ipv4Net>, PoolConfigError> {
    let mut out = Vec::new();
    for s in value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let net: Ipv4Net = s.parse().map_err(|_| PoolConfigError::Parse {
            value: s.to_string(),
        })?;
        if net.network() != net.addr() {
            return Err(PoolConfigError::NotNetwork {
                cidr: s.to_string(),
                network: net.trunc(),
            });
        }
        out.push(net);
    }
    Ok(out)
}

/// One owned run of blocks `lo..=hi` (indexes within its pool).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    hi: u64,
    owner: String,
}

#[derive(Debug, Clone)]
struct Pool {
    net: Ipv4Net,
    /// Blocks of the pool: 2^(mask - prefix).
    blocks: u64,
    /// Owned runs by first block; runs never overlap.
    used: BTreeMap<u64, Run>,
}

impl Pool {
    fn start(&self) -> u64 {
        u32::from(self.net.network()).into()
    }
    fn end(&self) -> u64 {
        u32::from(self.net.broadcast()).into()
    }
    /// Runs overlapping blocks `lo..=hi`, by first block.
    fn overlapping(&self, lo: u64, hi: u64) -> Vec<(u64, Run)> {
        let mut out: Vec<(u64, Run)> = self
            .used
            .range(..=hi)
            .rev()
            .take_while(|(_, r)| r.hi >= lo)
            .map(|(l, r)| (*l, r.clone()))
            .collect();
        out.reverse();
        out
    }
    fn first_free(&self) -> Option<u64> {
        let mut cursor = 0u64;
        for (lo, run) in &self.used {
            if *lo > cursor {
                return Some(cursor);
            }
            cursor = run.hi + 1;
        }
        (cursor < self.blocks).then_some(cursor)
    }
}

/// Where an occupied CIDR landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occupied {
    /// In one or more pools: its blocks are now the owner's.
    InPool,
    /// In no pool: nothing to track (it cannot collide with what the pools hand out).
    OutsidePools,
}

/// The cluster's pools and who owns which of their blocks.
#[derive(Debug, Clone)]
pub struct ClusterPool {
    pools: Vec<Pool>,
    mask: u8,
}

impl ClusterPool {
    pub fn new(pools: &[Ipv4Net], mask: u8) -> Result<Self, PoolConfigError> {
        if pools.is_empty() {
            return Err(PoolConfigError::Empty);
        }
        if !(1..=32).contains(&mask) {
            return Err(PoolConfigError::BadMask { mask });
        }
        for (i, a) in pools.iter().enumerate() {
            if a.network() != a.addr() {
                return Err(PoolConfigError::NotNetwork {
                    cidr: a.to_string(),
                    network: a.trunc(),
                });
            }
            if mask < a.prefix_len() {
                return Err(PoolConfigError::MaskTooShort { pool: *a, mask });
            }
            if let Some(b) = pools[..i].iter().find(|b| b.contains(a) || a.contains(*b)) {
                return Err(PoolConfigError::Overlap { a: *b, b: *a });
            }
        }
        Ok(Self {
            pools: pools
                .iter()
                .map(|net| Pool {
                    net: *net,
                    blocks: 1u64 << (mask - net.prefix_len()),
                    used: BTreeMap::new(),
                })
                .collect(),
            mask,
        })
    }

    pub fn mask(&self) -> u8 {
        self.mask
    }

    pub fn pools(&self) -> Vec<Ipv4Net> {
        self.pools.iter().map(|p| p.net).collect()
    }

    fn shift(&self) -> u32 {
        32 - u32::from(self.mask)
    }

    fn block(&self, pool: &Pool, idx: u64) -> Ipv4Net {
        let addr = (pool.start() + (idx << self.shift())) as u32;
        // The prefix length is 1..=32, checked in `new`.
        Ipv4Net::new(addr.into(), self.mask).unwrap_or_default()
    }

    /// The CIDR covered by blocks `lo..=hi` of `pool`, as one prefix when it is one
    /// (a single block, or an aligned power of two of them), else its first block.
    fn span(&self, pool: &Pool, lo: u64, hi: u64) -> Ipv4Net {
        let n = hi - lo + 1;
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            let bits = n.trailing_zeros() as u8;
            let addr = (pool.start() + (lo << self.shift())) as u32;
            if let Ok(net) = Ipv4Net::new(addr.into(), self.mask - bits) {
                return net;
            }
        }
        self.block(pool, lo)
    }

    /// Records that `owner` holds `cidr` (a node's existing pod CIDR, on rebuild). Every
    /// block it overlaps becomes the owner's; if any of them belongs to someone else,
    /// nothing changes and the error names the holder.
    pub fn occupy(&mut self, owner: &str, cidr: Ipv4Net) -> Result<Occupied, AllocError> {
        let cidr = cidr.trunc();
        let (c_lo, c_hi) = (
            u64::from(u32::from(cidr.network())),
            u64::from(u32::from(cidr.broadcast())),
        );
        let shift = self.shift();
        let mut ranges = Vec::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let (start, end) = (c_lo.max(pool.start()), c_hi.min(pool.end()));
            if start > end {
                continue;
            }
            let (lo, hi) = (
                (start - pool.start()) >> shift,
                (end - pool.start()) >> shift,
            );
            for (l, run) in pool.overlapping(lo, hi) {
                if run.owner != owner {
                    return Err(AllocError::Conflict {
                        cidr,
                        owner: run.owner,
                        held: self.span(pool, l, run.hi),
                    });
                }
            }
            ranges.push((i, lo, hi));
        }
        if ranges.is_empty() {
            return Ok(Occupied::OutsidePools);
        }
        for (i, lo, hi) in ranges {
            let pool = &mut self.pools[i];
            // Merge with the owner's own overlapping runs.
            let (mut lo2, mut hi2) = (lo, hi);
            for (l, run) in pool.overlapping(lo, hi) {
                lo2 = lo2.min(l);
                hi2 = hi2.max(run.hi);
                pool.used.remove(&l);
            }
            pool.used.insert(
                lo2,
                Run {
                    hi: hi2,
                    owner: owner.to_string(),
                },
            );
        }
        Ok(Occupied::InPool)
    }

    /// Hands `owner` the first free block, trying the pools in order.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Net, AllocError> {
        for i in 0..self.pools.len() {
            if let Some(idx) = self.pools[i].first_free() {
                self.pools[i].used.insert(
                    idx,
                    Run {
                        hi: idx,
                        owner: owner.to_string(),
                    },
                );
                return Ok(self.block(&self.pools[i], idx));
            }
        }
        Err(AllocError::Exhausted {
            pools: self.pools(),
            mask: self.mask,
        })
    }

    /// Frees every block of `owner` (its CiliumNode is gone); returns what it held.
    pub fn release(&mut self, owner: &str) -> Vec<Ipv4Net> {
        let mut freed = Vec::new();
        for i in 0..self.pools.len() {
            let mine: Vec<(u64, u64)> = self.pools[i]
                .used
                .iter()
                .filter(|(_, r)| r.owner == owner)
                .map(|(l, r)| (*l, r.hi))
                .collect();
            for (lo, hi) in mine {
                freed.push(self.span(&self.pools[i], lo, hi));
                self.pools[i].used.remove(&lo);
            }
        }
        freed
    }

    /// The owner of the block holding `addr`, if any.
    pub fn owner_of(&self, addr: std::net::Ipv4Addr) -> Option<&str> {
        let a = u64::from(u32::from(addr));
        let pool = self.pools.iter().find(|p| p.start() <= a && a <= p.end())?;
        let idx = (a - pool.start()) >> self.shift();
        pool.overlapping(idx, idx)
            .first()
            .and_then(|(l, _)| pool.used.get(l))
            .map(|r| r.owner.as_str())
    }

    /// Blocks in use over all pools.
    pub fn used_blocks(&self) -> u64 {
        self.pools
            .iter()
            .flat_map(|p| p.used.iter().map(|(l, r)| r.hi - l + 1))
            .sum()
    }
}

/// What the plan needs of one CiliumNode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// Creation time (older nodes win conflicts); `None` sorts first.
    pub created: Option<Timestamp>,
    /// `spec.ipam.podCIDRs` as written.
    pub pod_cidrs: Vec<String>,
}

/// What one CiliumNode should look like after the pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    /// New `spec.ipam.podCIDRs`, when they must change (a node without an IPv4 pod
    /// CIDR got one).
    pub set_pod_cidrs: Option<Vec<String>>,
    /// `status.ipam.operator-status.error` (`None`: no error).
    pub error: Option<String>,
}

/// The allocation for every node: a fresh [`ClusterPool`] rebuilt from what the nodes
/// hold (older node first, so the same node wins a conflict on every pass and after
/// every restart), then a block for each node without an IPv4 pod CIDR. Nodes absent
/// from `nodes` hold nothing: their blocks are free again.
///
/// Returns the plans in `nodes` order, and the pool state it reached.
pub fn plan(mut pool: ClusterPool, nodes: &[NodeView]) -> (Vec<NodePlan>, ClusterPool) {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| {
        (&nodes[a].created, &nodes[a].name).cmp(&(&nodes[b].created, &nodes[b].name))
    });
    let mut plans: Vec<NodePlan> = nodes
        .iter()
        .map(|n| NodePlan {
            name: n.name.clone(),
            ..Default::default()
        })
        .collect();
    let mut needs = Vec::new();
    for &i in &order {
        let node = &nodes[i];
        let mut errors = Vec::new();
        let mut has_v4 = false;
        for s in &node.pod_cidrs {
            if s.contains(':') {
                continue; // IPv6: not this pool's business
            }
            let Ok(cidr) = s.parse::<Ipv4Net>() else {
                errors.push(format!(
                    "spec.ipam.podCIDRs has {s:?}, which is not a CIDR like 10.0.1.0/24"
                ));
                continue;
            };
            has_v4 = true;
            if let Err(e) = pool.occupy(&node.name, cidr) {
                errors.push(e.to_string());
            }
        }
        if !errors.is_empty() {
            plans[i].error = Some(errors.join("; "));
        }
        if !has_v4 && errors.is_empty() {
            needs.push(i);
        }
    }
    for i in needs {
        match pool.allocate(&nodes[i].name) {
            Ok(cidr) => {
                let mut cidrs = nodes[i].pod_cidrs.clone();
                cidrs.insert(0, cidr.to_string());
                plans[i].set_pod_cidrs = Some(cidrs);
            }
            Err(e) => plans[i].error = Some(e.to_string()),
        }
    }
    (plans, pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    fn pool(pools: &[&str], mask: u8) -> ClusterPool {
        let p: Vec<Ipv4Net> = pools.iter().map(|s| net(s)).collect();
        ClusterPool::new(&p, mask).expect("valid pool")
    }

    fn node(name: &str, created: &str, cidrs: &[&str]) -> NodeView {
        NodeView {
            name: name.into(),
            created: Some(created.parse().expect("test timestamp")),
            pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn allocates_in_order_without_overlap() {
        let mut p = pool(&["10.0.0.0/22"], 24);
        let got: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| p.allocate(n).expect("free block"))
            .collect();
        assert_eq!(
            got,
            [
                net("10.0.0.0/24"),
                net("10.0.1.0/24"),
                net("10.0.2.0/24"),
                net("10.0.3.0/24")
            ]
        );
        assert_eq!(p.used_blocks(), 4);
    }

    #[test]
    fn exhaustion_names_pools_and_mask() {
        let mut p = pool(&["10.0.0.0/25"], 26);
        p.allocate("a").unwrap();
        p.allocate("b").unwrap();
        let e = p.allocate("c").unwrap_err();
        assert_eq!(
            e,
            AllocError::Exhausted {
                pools: vec![net("10.0.0.0/25")],
                mask: 26
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("10.0.0.0/25") && msg.contains("/26"), "{msg}");
        assert!(msg.contains("cluster-pool-ipv4-mask-size 26"), "{msg}");
    }

    #[test]
    fn release_frees_for_reuse() {
        let mut p = pool(&["10.0.0.0/23"], 24);
        assert_eq!(p.allocate("a").unwrap(), net("10.0.0.0/24"));
        assert_eq!(p.allocate("b").unwrap(), net("10.0.1.0/24"));
        assert!(p.allocate("c").is_err());
        assert_eq!(p.release("a"), vec![net("10.0.0.0/24")]);
        assert_eq!(p.release("a"), vec![], "release is idempotent");
        assert_eq!(p.allocate("c").unwrap(), net("10.0.0.0/24"));
        assert_eq!(p.owner_of("10.0.0.7".parse().unwrap()), Some("c"));
        assert_eq!(p.owner_of("10.0.1.7".parse().unwrap()), Some("b"));
    }

    #[test]
    fn several_pools_fill_in_order() {
        let mut p = pool(&["10.0.0.0/24", "192.168.0.0/24"], 25);
        let got: Vec<_> = (0..4)
            .map(|i| p.allocate(&format!("n{i}")).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                net("10.0.0.0/25"),
                net("10.0.0.128/25"),
                net("192.168.0.0/25"),
                net("192.168.0.128/25")
            ]
        );
        let e = p.allocate("n4").unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/24, 192.168.0.0/24"), "{e}");
        // A block freed in the first pool is handed out first again.
        p.release("n1");
        assert_eq!(p.allocate("n5").unwrap(), net("10.0.0.128/25"));
    }

    #[test]
    fn occupy_rebuilds_and_detects_conflicts() {
        let mut p = pool(&["10.0.0.0/16"], 24);
        assert_eq!(p.occupy("a", net("10.0.1.0/24")), Ok(Occupied::InPool));
        assert_eq!(p.occupy("a", net("10.0.1.0/24")), Ok(Occupied::InPool));
        // A bigger CIDR held by b covers 4 blocks; an overlapping claim names it.
        assert_eq!(p.occupy("b", net("10.0.4.0/22")), Ok(Occupied::InPool));
        assert_eq!(
            p.occupy("c", net("10.0.6.0/24")),
            Err(AllocError::Conflict {
                cidr: net("10.0.6.0/24"),
                owner: "b".into(),
                held: net("10.0.4.0/22"),
            })
        );
        // A CIDR smaller than the mask takes its whole block.
        assert_eq!(p.occupy("d", net("10.0.2.128/25")), Ok(Occupied::InPool));
        assert!(p.occupy("e", net("10.0.2.0/25")).is_err());
        assert_eq!(
            p.occupy("f", net("172.16.0.0/24")),
            Ok(Occupied::OutsidePools)
        );
        // Allocation skips everything occupied.
        assert_eq!(p.allocate("g").unwrap(), net("10.0.0.0/24"));
        assert_eq!(p.allocate("h").unwrap(), net("10.0.3.0/24"));
        assert_eq!(p.allocate("i").unwrap(), net("10.0.8.0/24"));
        assert_eq!(p.used_blocks(), 1 + 4 + 1 + 3);
    }

    #[test]
    fn occupy_a_cidr_spanning_two_pools() {
        let mut p = pool(&["10.0.0.0/24", "10.0.1.0/24"], 25);
        assert_eq!(p.occupy("a", net("10.0.0.0/23")), Ok(Occupied::InPool));
        assert!(p.allocate("b").is_err());
        assert_eq!(p.release("a").len(), 2);
    }

    #[test]
    fn invalid_configs_are_refused_by_name() {
        assert_eq!(
            ClusterPool::new(&[], 24).unwrap_err(),
            PoolConfigError::Empty
        );
        assert!(matches!(
            ClusterPool::new(&[net("10.0.0.0/24")], 16).unwrap_err(),
            PoolConfigError::MaskTooShort { mask: 16, .. }
        ));
        assert!(matches!(
            ClusterPool::new(&[net("10.0.0.0/8")], 33).unwrap_err(),
            PoolConfigError::BadMask { mask: 33 }
        ));
        assert!(matches!(
            ClusterPool::new(&[net("10.0.0.0/8"), net("10.1.0.0/16")], 24).unwrap_err(),
            PoolConfigError::Overlap { .. }
        ));
        assert!(matches!(
            ClusterPool::new(&[net("10.0.0.1/8")], 24).unwrap_err(),
            PoolConfigError::NotNetwork { .. }
        ));
        assert_eq!(
            parse_pools("10.0.0.0/8, 192.168.0.0/16").unwrap(),
            vec![net("10.0.0.0/8"), net("192.168.0.0/16")]
        );
        assert_eq!(parse_pools("").unwrap(), vec![]);
        let e = parse_pools("10.0.0.0/8 fd00::/8x").unwrap_err().to_string();
        assert!(e.contains("fd00::/8x"), "{e}");
        let e = parse_pools("10.1.2.3/16").unwrap_err().to_string();
        assert!(e.contains("10.1.0.0/16"), "{e}");
        // The extremes: a /0 pool of /32s, a /32 pool.
        let mut p = pool(&["0.0.0.0/0"], 32);
        assert_eq!(p.allocate("a").unwrap(), net("0.0.0.0/32"));
        let mut p = pool(&["10.9.9.9/32"], 32);
        assert_eq!(p.allocate("a").unwrap(), net("10.9.9.9/32"));
        assert!(p.allocate("b").is_err());
    }

    #[test]
    fn plan_allocates_for_new_nodes_and_keeps_existing() {
        let nodes = [
            node("old", "2024-01-01T00:00:00Z", &["10.0.0.0/24"]),
            node("new", "2024-01-02T00:00:00Z", &[]),
            node("v6", "2024-01-03T00:00:00Z", &["fd00::/64"]),
        ];
        let (plans, p) = plan(pool(&["10.0.0.0/16"], 24), &nodes);
        assert_eq!(plans[0].set_pod_cidrs, None);
        assert_eq!(plans[0].error, None);
        assert_eq!(
            plans[1].set_pod_cidrs,
            Some(vec!["10.0.1.0/24".to_string()])
        );
        assert_eq!(
            plans[2].set_pod_cidrs,
            Some(vec!["10.0.2.0/24".to_string(), "fd00::/64".to_string()]),
            "an IPv6-only node gets an IPv4 CIDR in front, its IPv6 one kept"
        );
        assert_eq!(p.used_blocks(), 3);
    }

    #[test]
    fn plan_after_restart_never_double_allocates() {
        // Pass 1 allocates; the "restart" replans from the written state only.
        let mut nodes = vec![
            node("a", "2024-01-01T00:00:00Z", &[]),
            node("b", "2024-01-02T00:00:00Z", &[]),
        ];
        let (plans, _) = plan(pool(&["10.0.0.0/16"], 24), &nodes);
        for (n, pl) in nodes.iter_mut().zip(&plans) {
            n.pod_cidrs = pl.set_pod_cidrs.clone().expect("allocated");
        }
        nodes.push(node("c", "2024-01-03T00:00:00Z", &[]));
        let (plans, _) = plan(pool(&["10.0.0.0/16"], 24), &nodes);
        assert_eq!(plans[0].set_pod_cidrs, None);
        assert_eq!(plans[1].set_pod_cidrs, None);
        assert_eq!(plans[2].set_pod_cidrs, Some(vec!["10.0.2.0/24".into()]));
        // Listing order does not matter: creation time decides.
        nodes.reverse();
        let (plans2, _) = plan(pool(&["10.0.0.0/16"], 24), &nodes);
        assert_eq!(plans2[0].set_pod_cidrs, Some(vec!["10.0.2.0/24".into()]));
    }

    #[test]
    fn plan_reports_conflicts_on_the_younger_node_and_does_not_reuse() {
        let nodes = [
            node("young", "2024-02-01T00:00:00Z", &["10.0.5.0/24"]),
            node("old", "2024-01-01T00:00:00Z", &["10.0.5.0/24"]),
            node("bad", "2024-01-01T00:00:00Z", &["ten-dot-zero"]),
            node("fresh", "2024-03-01T00:00:00Z", &[]),
        ];
        let (plans, p) = plan(pool(&["10.0.0.0/16"], 24), &nodes);
        let err = plans[0].error.clone().expect("conflict reported");
        assert!(err.contains("10.0.5.0/24") && err.contains("old"), "{err}");
        assert_eq!(
            plans[0].set_pod_cidrs, None,
            "the spec is left to the admin"
        );
        assert_eq!(plans[1].error, None);
        assert!(plans[2].error.clone().unwrap().contains("ten-dot-zero"));
        assert_eq!(plans[2].set_pod_cidrs, None);
        assert_eq!(plans[3].set_pod_cidrs, Some(vec!["10.0.0.0/24".into()]));
        assert_eq!(p.owner_of("10.0.5.1".parse().unwrap()), Some("old"));
    }

    #[test]
    fn plan_exhaustion_is_an_error_on_the_node() {
        let nodes = [
            node("a", "2024-01-01T00:00:00Z", &[]),
            node("b", "2024-01-02T00:00:00Z", &[]),
        ];
        let (plans, _) = plan(pool(&["10.0.0.0/24"], 24), &nodes);
        assert_eq!(plans[0].set_pod_cidrs, Some(vec!["10.0.0.0/24".into()]));
        let e = plans[1].error.clone().expect("exhausted");
        assert!(
            e.contains("10.0.0.0/24") && e.contains("mask-size 24"),
            "{e}"
        );
        // Deleting a frees its block for b on the next pass.
        let (plans, _) = plan(pool(&["10.0.0.0/24"], 24), &nodes[1..]);
        assert_eq!(plans[0].set_pod_cidrs, Some(vec!["10.0.0.0/24".into()]));
        assert_eq!(plans[0].error, None);
    }
}
