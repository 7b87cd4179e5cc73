//! The XDP map contents a cluster state asks for: a pure function, so it is
//! tested without a kernel.
//!
//! - For every stream and every Allow ACL that grants Write on it (pattern
//!   match) and lists source CIDRs: each address of those CIDRs may send the
//!   stream's frames (`allow (source, stream_id)`).
//! - A Deny ACL that forbids Write on a stream overrides: with source CIDRs,
//!   those addresses are denied; without, every address the denied
//!   principal was allowed from is denied for that stream.
//! - A quota of a principal becomes a token bucket (in frames, see
//!   [`QUOTA_FRAME_BYTES`]) on every source address of the principal's Allow
//!   ACLs.
//!
//! Limit: the XDP maps key single source addresses, so a CIDR is expanded
//! into its addresses; CIDRs of more than [`CIDR_EXPAND_ADDRS_MAX`]
//! addresses are not expanded but reported in [`DesiredPolicy::skipped`]
//! (the data path keeps denying them by default).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use xdp_programs::abi_consts::{FRAME_BYTES_MTU1500_IPV4, RATE_BURST_MAX, RATE_PER_SEC_MAX};

use crate::types::{pattern_matches, Cidr, ClusterState, Operation, Permission};

/// Most addresses one CIDR expands to (a /24 in IPv4, a /120 in IPv6).
pub const CIDR_EXPAND_ADDRS_MAX: u128 = 256;
/// Frame size a byte quota is divided by to get the frame rate the XDP token
/// bucket counts: a full standard-MTU frame, so the byte quota is never
/// exceeded by frames of that size (smaller frames get the same frame rate).
pub const QUOTA_FRAME_BYTES: u64 = FRAME_BYTES_MTU1500_IPV4 as u64;

/// A token bucket for one source, in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub rate_per_sec: u64,
    pub burst: u64,
}

/// Everything the XDP maps of a data interface should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredPolicy {
    /// (source, stream id) -> allowed (`true`) or explicitly denied.
    pub entries: BTreeMap<(IpAddr, u32), bool>,
    pub rates: BTreeMap<IpAddr, RateLimit>,
    /// CIDRs too large to expand (see the module docs).
    pub skipped: BTreeSet<String>,
}

/// Addresses of `cidr`, or `None` when it has more than [`CIDR_EXPAND_ADDRS_MAX`].
pub fn expand(cidr: &Cidr) -> Option<Vec<IpAddr>> {
    match cidr.addr {
        IpAddr::V4(a) => {
            let host_bits = 32 - u32::from(cidr.prefix_len.min(32));
            let count = 1u128 << host_bits;
            if count > CIDR_EXPAND_ADDRS_MAX {
                return None;
            }
            let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
            let base = u32::from(a) & mask;
            Some(
                (0..count as u32)
                    .map(|i| IpAddr::V4((base | i).into()))
                    .collect(),
            )
        }
        IpAddr::V6(a) => {
            let host_bits = 128 - u32::from(cidr.prefix_len.min(128));
            if host_bits >= 64 || (1u128 << host_bits) > CIDR_EXPAND_ADDRS_MAX {
                return None;
            }
            let count = 1u128 << host_bits;
            let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
            let base = u128::from(a) & mask;
            Some((0..count).map(|i| IpAddr::V6((base | i).into())).collect())
        }
    }
}

fn grants_write(ops: &[Operation]) -> bool {
    ops.contains(&Operation::Write)
}

/// Computes the desired map contents of `state`.
pub fn desired_policy(state: &ClusterState) -> DesiredPolicy {
    let mut out = DesiredPolicy::default();
    let expand_all = |cidrs: &[Cidr], skipped: &mut BTreeSet<String>| -> Vec<IpAddr> {
        let mut addrs = Vec::new();
        for c in cidrs {
            match expand(c) {
                Some(a) => addrs.extend(a),
                None => {
                    skipped.insert(c.to_string());
                }
            }
        }
        addrs
    };
    // Sources each principal is allowed from, per stream.
    let mut allowed_from: BTreeMap<(&str, u32), BTreeSet<IpAddr>> = BTreeMap::new();
    for stream in state.streams.values() {
        for acl in state.acls.iter().filter(|a| {
            a.permission == Permission::Allow
                && grants_write(&a.operations)
                && pattern_matches(&a.resource_pattern, &stream.name)
        }) {
            for addr in expand_all(&acl.source_cidrs, &mut out.skipped) {
                out.entries.insert((addr, stream.id), true);
                allowed_from
                    .entry((acl.principal.as_str(), stream.id))
                    .or_default()
                    .insert(addr);
            }
        }
    }
    for stream in state.streams.values() {
        for acl in state.acls.iter().filter(|a| {
            a.permission == Permission::Deny
                && grants_write(&a.operations)
                && pattern_matches(&a.resource_pattern, &stream.name)
        }) {
            let addrs: Vec<IpAddr> = if acl.source_cidrs.is_empty() {
                if acl.principal == crate::auth::acl::ANY_PRINCIPAL {
                    allowed_from
                        .iter()
                        .filter(|((_, id), _)| *id == stream.id)
                        .flat_map(|(_, a)| a.iter().copied())
                        .collect()
                } else {
                    allowed_from
                        .get(&(acl.principal.as_str(), stream.id))
                        .map(|a| a.iter().copied().collect())
                        .unwrap_or_default()
                }
            } else {
                expand_all(&acl.source_cidrs, &mut out.skipped)
            };
            for addr in addrs {
                out.entries.insert((addr, stream.id), false);
            }
        }
    }
    for quota in state.quotas.values() {
        let rate_per_sec = quota
            .bytes_per_s
            .div_ceil(QUOTA_FRAME_BYTES)
            .clamp(1, RATE_PER_SEC_MAX);
        let burst = quota
            .burst_bytes
            .div_ceil(QUOTA_FRAME_BYTES)
            .clamp(1, RATE_BURST_MAX);
        let limit = RateLimit {
            rate_per_sec,
            burst,
        };
        for acl in state
            .acls
            .iter()
            .filter(|a| a.principal == quota.principal && a.permission == Permission::Allow)
        {
            for addr in expand_all(&acl.source_cidrs, &mut out.skipped) {
                out.rates.insert(addr, limit);
            }
        }
    }
    out
}

/// What to change to go from `current` to `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub set: Vec<((IpAddr, u32), bool)>,
    pub forget: Vec<(IpAddr, u32)>,
    pub set_rates: Vec<(IpAddr, RateLimit)>,
    pub clear_rates: Vec<IpAddr>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.forget.is_empty()
            && self.set_rates.is_empty()
            && self.clear_rates.is_empty()
    }

    /// Number of map writes.
    pub fn len(&self) -> usize {
        self.set.len() + self.forget.len() + self.set_rates.len() + self.clear_rates.len()
    }
}

/// The map writes that turn `current` into `desired`.
pub fn diff(current: &DesiredPolicy, desired: &DesiredPolicy) -> PolicyDiff {
    let mut d = PolicyDiff::default();
    for (k, v) in &desired.entries {
        if current.entries.get(k) != Some(v) {
            d.set.push((*k, *v));
        }
    }
    for k in current.entries.keys() {
        if !desired.entries.contains_key(k) {
            d.forget.push(*k);
        }
    }
    for (k, v) in &desired.rates {
        if current.rates.get(k) != Some(v) {
            d.set_rates.push((*k, *v));
        }
    }
    for k in current.rates.keys() {
        if !desired.rates.contains_key(k) {
            d.clear_rates.push(*k);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Acl, Command, NodeInfo, Principal, Quota, StreamMode};
    use proptest::prelude::*;

    fn state_with(acls: &[(&str, &str, Permission, &[&str])]) -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&Command::RegisterNode(NodeInfo {
            id: 1,
            control_addr: "a:1".into(),
            data_addr: "a:2".into(),
        }));
        for name in ["orders", "audit"] {
            s.apply(&Command::CreateStream {
                name: name.into(),
                partitions: 1,
                replication_factor: 1,
                retention_bytes: 0,
                retention_ms: 0,
                mode: StreamMode::Lossy,
                policy: Default::default(),
            });
        }
        for (p, pattern, perm, cidrs) in acls {
            s.apply(&Command::PutPrincipal(Principal {
                name: p.to_string(),
            }));
            let r = s.apply(&Command::PutAcl(Acl {
                principal: p.to_string(),
                resource_pattern: pattern.to_string(),
                operations: vec![Operation::Write],
                permission: *perm,
                source_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            }));
            assert_eq!(r, crate::types::CommandResponse::Done);
        }
        s
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allow_then_principal_deny_overrides() {
        let s = state_with(&[(
            "alice",
            "ord*",
            Permission::Allow,
            &["198.18.0.1/32", "198.18.1.0/31"],
        )]);
        let orders = s.streams["orders"].id;
        let d = desired_policy(&s);
        assert_eq!(d.entries.len(), 3);
        assert!(d.entries[&(ip("198.18.1.1"), orders)]);
        let s2 = state_with(&[
            ("alice", "ord*", Permission::Allow, &["198.18.0.1/32"]),
            ("alice", "orders", Permission::Deny, &[]),
        ]);
        let d2 = desired_policy(&s2);
        assert!(!d2.entries[&(ip("198.18.0.1"), orders)]);
        let change = diff(&d, &d2);
        assert!(change.set.contains(&((ip("198.18.0.1"), orders), false)));
        assert_eq!(change.forget.len(), 2);
    }

    #[test]
    fn large_cidrs_are_reported_not_expanded() {
        let s = state_with(&[(
            "bob",
            "*",
            Permission::Allow,
            &["198.18.0.0/15", "2001:db8::/120"],
        )]);
        let d = desired_policy(&s);
        assert!(d.skipped.contains("198.18.0.0/15"));
        assert_eq!(d.entries.len(), 256 * 2);
    }

    #[test]
    fn quotas_become_frame_buckets_on_the_principals_sources() {
        let mut s = state_with(&[("carol", "audit", Permission::Allow, &["198.18.0.9/32"])]);
        s.apply(&Command::PutQuota(Quota {
            principal: "carol".into(),
            bytes_per_s: 1_472_000,
            burst_bytes: 14_720,
        }));
        let d = desired_policy(&s);
        assert_eq!(
            d.rates[&ip("198.18.0.9")],
            RateLimit {
                rate_per_sec: 1000,
                burst: 10
            }
        );
    }

    proptest! {
        /// Applying the diff to the current contents yields the desired ones.
        #[test]
        fn diff_applied_gives_desired(
            a in proptest::collection::btree_map((0u8..8, 0u32..3), any::<bool>(), 0..12),
            b in proptest::collection::btree_map((0u8..8, 0u32..3), any::<bool>(), 0..12),
        ) {
            let to = |m: &BTreeMap<(u8, u32), bool>| DesiredPolicy {
                entries: m.iter().map(|((i, s), v)| ((IpAddr::from([198, 18, 0, *i]), *s), *v)).collect(),
                ..Default::default()
            };
            let (cur, want) = (to(&a), to(&b));
            let d = diff(&cur, &want);
            let mut got = cur.entries.clone();
            for k in &d.forget { got.remove(k); }
            for (k, v) in &d.set { got.insert(*k, *v); }
            prop_assert_eq!(&got, &want.entries);
            prop_assert!(diff(&want, &want).is_empty());
        }
    }
}
