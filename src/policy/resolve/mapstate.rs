//! Building a policy map from allow and deny entries with deny precedence, so that the
//! datapath's lookups — (identity, dir, proto, port) and (0, dir, proto, port), each
//! longest-prefix on protocol and port, deny if either yields deny — give the right verdict.

use std::collections::{BTreeMap, BTreeSet};

use super::{PolicyEntry, PolicyKey};

/// Collects entries, then resolves deny precedence.
#[derive(Debug, Default)]
pub(crate) struct MapBuilder {
    allows: BTreeSet<PolicyKey>,
    denies: BTreeSet<PolicyKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    /// Not covered by any deny.
    Allow,
    /// Covered by a deny of the same identity: that deny entry already answers.
    Drop,
    /// Covered only by a deny of the wildcard identity: becomes a deny of this identity.
    Deny,
}

impl MapBuilder {
    /// Adds one entry.
    pub(crate) fn add(&mut self, key: PolicyKey, deny: bool) {
        if deny {
            self.denies.insert(key);
        } else {
            self.allows.insert(key);
        }
    }

    /// The port range of `d` that covers part of `a`, if any. A deny for every protocol
    /// covers the whole allow; a deny for one protocol cannot be carved out of an allow for
    /// every protocol (the datapath's longest-prefix match already prefers the deny there).
    fn covered(d: &PolicyKey, a: &PolicyKey) -> Option<(u16, u16)> {
        if d.egress != a.egress {
            return None;
        }
        if d.proto == 0 {
            return Some((a.port_lo, a.port_hi));
        }
        if a.proto != d.proto {
            return None;
        }
        let lo = a.port_lo.max(d.port_lo);
        let hi = a.port_hi.min(d.port_hi);
        (lo <= hi).then_some((lo, hi))
    }

    /// The final map: every deny, and every allow with the parts covered by a deny of the
    /// same or the wildcard identity turned into denies (split on port ranges). Identical
    /// keys are merged, deny winning.
    pub(crate) fn finish(self) -> BTreeMap<PolicyKey, PolicyEntry> {
        let mut out = BTreeMap::new();
        let mut put = |key: PolicyKey, deny: bool| {
            out.entry(key).or_insert(PolicyEntry { deny }).deny |= deny;
        };
        for d in &self.denies {
            put(*d, true);
        }
        for a in &self.allows {
            let mut same = Vec::new();
            let mut wild = Vec::new();
            for d in &self.denies {
                let Some(range) = Self::covered(d, a) else {
                    continue;
                };
                if d.identity == a.identity {
                    same.push(range);
                } else if d.identity == 0 {
                    wild.push(range);
                }
            }
            if same.is_empty() && wild.is_empty() {
                put(*a, false);
                continue;
            }
            // Cut the allow's range at every deny boundary and classify the pieces.
            let mut cuts: BTreeSet<u32> = BTreeSet::new();
            cuts.insert(u32::from(a.port_lo));
            cuts.insert(u32::from(a.port_hi) + 1);
            for (lo, hi) in same.iter().chain(&wild) {
                cuts.insert(u32::from(*lo));
                cuts.insert(u32::from(*hi) + 1);
            }
            let cuts: Vec<u32> = cuts.into_iter().collect();
            let within = |v: &[(u16, u16)], lo: u32, hi: u32| {
                v.iter()
                    .any(|(l, h)| u32::from(*l) <= lo && hi <= u32::from(*h))
            };
            let mut pieces: Vec<(u32, u32, Segment)> = Vec::new();
            for w in cuts.windows(2) {
                let (lo, hi) = (w[0], w[1] - 1);
                let class = if within(&same, lo, hi) {
                    Segment::Drop
                } else if within(&wild, lo, hi) {
                    Segment::Deny
                } else {
                    Segment::Allow
                };
                match pieces.last_mut() {
                    Some(last) if last.2 == class && last.1 + 1 == lo => last.1 = hi,
                    _ => pieces.push((lo, hi, class)),
                }
            }
            for (lo, hi, class) in pieces {
                let key = PolicyKey {
                    port_lo: lo as u16,
                    port_hi: hi as u16,
                    ..*a
                };
                match class {
                    Segment::Allow => put(key, false),
                    Segment::Deny => put(key, true),
                    Segment::Drop => {}
                }
            }
        }
        out
    }
}
