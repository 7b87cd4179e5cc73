//! Replica status (#11): what each node's data plane says about the partition replicas it
//! serves, on its way to the Raft leader, which uses it for ISR changes, elections and the
//! operators' views.
//!
//! * [`StatusReader`] reads the local data plane's status ring (`abi::assign::STATUS_RING_NAME`,
//!   created by the data plane next to its command ring) and keeps the latest
//!   [`abi::assign::ReplicaStatus`] per partition in [`LocalReplicas`] as a [`ReplicaReport`].
//!   Records that do not decode, or that name another node, are counted and skipped.
//! * Each node's heartbeat to the Raft leader carries its [`LocalReplicas`] (at most
//!   [`HEARTBEAT_REPORTS_MAX`]); the leader keeps them with their arrival time in
//!   [`ClusterReplicas`]. Statuses never go through the Raft log: only what they lead to does
//!   (an ISR change the partition leader proposed, an election), so the log grows with
//!   decisions, not with progress reports.
//! * A Raft leader that just took over has no reports yet: until the nodes' next heartbeats it
//!   elects by ISR order alone and proposes no ISR change.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use abi::assign::{ReplicaState, ReplicaStatus, Role, ASSIGN_REPLICAS_MAX, STATUS_RING_NAME};
use serde::{Deserialize, Serialize};
use shm_ring::{Ring, StartAt, Subscriber};

use crate::types::NodeId;

/// Most replica reports one heartbeat carries (the rest wait for a later one).
pub const HEARTBEAT_REPORTS_MAX: usize = 8_192;
/// Most status records read from the status ring in one poll.
pub const STATUS_POLL_RECORDS_MAX: usize = 4_096;
/// Most reports the Raft leader keeps (every node's replicas together).
pub const CLUSTER_REPORTS_MAX: usize = 262_144;

/// A replica's role as its data plane reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRole {
    None,
    Leader,
    Follower,
}

/// Whether a replica serves, and if not, why (`abi::assign::ReplicaState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaServing {
    Serving,
    CatchingUp,
    NoRing,
    NoStorage,
    Refused,
    Removed,
}

impl ReplicaServing {
    /// Every state, in the order of their numeric code on `/metrics`.
    pub const ALL: [ReplicaServing; 6] = [
        ReplicaServing::Serving,
        ReplicaServing::CatchingUp,
        ReplicaServing::NoRing,
        ReplicaServing::NoStorage,
        ReplicaServing::Refused,
        ReplicaServing::Removed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaServing::Serving => "serving",
            ReplicaServing::CatchingUp => "catching_up",
            ReplicaServing::NoRing => "no_ring",
            ReplicaServing::NoStorage => "no_storage",
            ReplicaServing::Refused => "refused",
            ReplicaServing::Removed => "removed",
        }
    }
}

/// One replica's latest status (the serde form of `abi::assign::ReplicaStatus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub stream_id: u32,
    pub partition: u16,
    pub node: NodeId,
    pub role: ReplicaRole,
    pub state: ReplicaServing,
    pub leader_epoch: u64,
    /// Next offset this replica will store.
    pub log_end: u64,
    /// Offsets below this are on this replica's disk.
    pub durable: u64,
    /// High watermarks this replica knows (the leader's are authoritative).
    pub hw_replicated: u64,
    pub hw_persisted: u64,
    /// From a leader: the ISR it proposes (empty: no proposal).
    pub proposed_isr: Vec<NodeId>,
}

impl ReplicaReport {
    pub fn from_status(s: &ReplicaStatus) -> ReplicaReport {
        ReplicaReport {
            stream_id: s.stream_id,
            partition: s.partition,
            node: s.node,
            role: match s.role {
                Role::None => ReplicaRole::None,
                Role::Leader => ReplicaRole::Leader,
                Role::Follower => ReplicaRole::Follower,
            },
            state: match s.state {
                ReplicaState::Serving => ReplicaServing::Serving,
                ReplicaState::CatchingUp => ReplicaServing::CatchingUp,
                ReplicaState::NoRing => ReplicaServing::NoRing,
                ReplicaState::NoStorage => ReplicaServing::NoStorage,
                ReplicaState::Refused => ReplicaServing::Refused,
                ReplicaState::Removed => ReplicaServing::Removed,
            },
            leader_epoch: s.leader_epoch,
            log_end: s.log_end,
            durable: s.durable,
            hw_replicated: s.hw_replicated,
            hw_persisted: s.hw_persisted,
            proposed_isr: s.proposed_isr().to_vec(),
        }
    }

    /// A report from another process over the network: bounded and consistent.
    pub fn check(&self, from: NodeId) -> Result<(), &'static str> {
        if self.node != from {
            return Err("a report about another node's replica");
        }
        if self.proposed_isr.len() > ASSIGN_REPLICAS_MAX {
            return Err("a proposed ISR longer than the most replicas");
        }
        if !self.proposed_isr.is_empty() && self.role != ReplicaRole::Leader {
            return Err("an ISR proposal from a replica that is not the leader");
        }
        Ok(())
    }
}

/// This node's replicas' latest statuses (written by [`StatusReader`], read by the heartbeat
/// and `/metrics`).
#[derive(Default)]
pub struct LocalReplicas {
    latest: Mutex<BTreeMap<(u32, u16), ReplicaReport>>,
    /// Status records read.
    pub records: AtomicU64,
    /// Status records refused (did not decode, or named another node).
    pub refused: AtomicU64,
}

impl LocalReplicas {
    /// Keeps `r` as the latest of its partition.
    pub fn put(&self, r: ReplicaReport) {
        let mut m = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        m.insert((r.stream_id, r.partition), r);
    }

    /// Forgets everything (the data plane restarted).
    pub fn clear(&self) {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The latest reports, at most `max`, in (stream, partition) order.
    pub fn snapshot(&self, max: usize) -> Vec<ReplicaReport> {
        let m = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        m.values().take(max).cloned().collect()
    }
}

struct AttachedStatus {
    subscriber: Subscriber,
    path: PathBuf,
    inode: u64,
}

/// Reads the local data plane's status ring into [`LocalReplicas`].
pub struct StatusReader {
    dir: Option<PathBuf>,
    me: NodeId,
    ring: Option<AttachedStatus>,
}

impl StatusReader {
    /// `dir`: the data plane's ring directory (None: shm-ring's defaults); `me`: this node.
    pub fn new(dir: Option<PathBuf>, me: NodeId) -> StatusReader {
        StatusReader {
            dir,
            me,
            ring: None,
        }
    }

    /// True while attached to a status ring.
    pub fn is_attached(&self) -> bool {
        self.ring.is_some()
    }

    /// (Re)attaches when the ring appeared or was replaced; a new ring forgets old statuses.
    fn attach(&mut self, board: &LocalReplicas) {
        if let Some(a) = &self.ring {
            match std::fs::metadata(&a.path) {
                Ok(m) if m.ino() == a.inode => return,
                _ => {
                    self.ring = None;
                    board.clear();
                }
            }
        }
        let Ok(ring) = Ring::open(STATUS_RING_NAME, self.dir.as_deref()) else {
            return;
        };
        let path = ring.path().to_owned();
        let (Ok(meta), Ok(subscriber)) =
            (std::fs::metadata(&path), ring.subscriber(StartAt::Earliest))
        else {
            return;
        };
        board.clear();
        self.ring = Some(AttachedStatus {
            subscriber,
            path,
            inode: meta.ino(),
        });
    }

    /// Reads what the data plane wrote since the last poll; returns the records read.
    pub fn poll(&mut self, board: &LocalReplicas) -> usize {
        self.attach(board);
        let Some(a) = self.ring.as_mut() else {
            return 0;
        };
        let me = self.me;
        let (mut read, mut refused) = (0u64, 0u64);
        let polled = a.subscriber.poll(
            |r| {
                read += 1;
                match ReplicaStatus::decode(r.payload) {
                    Ok(s) if s.node == me => board.put(ReplicaReport::from_status(&s)),
                    Ok(s) => {
                        if refused == 0 {
                            tracing::warn!(
                                "status ring: a record about node {} on node {me}: refused",
                                s.node
                            );
                        }
                        refused += 1;
                    }
                    Err(e) => {
                        if refused == 0 {
                            tracing::warn!("status ring: {e}: refused");
                        }
                        refused += 1;
                    }
                }
            },
            STATUS_POLL_RECORDS_MAX,
        );
        board.records.fetch_add(read, Ordering::Relaxed);
        board.refused.fetch_add(refused, Ordering::Relaxed);
        if let Err(e) = polled {
            tracing::warn!("status ring: {e}; re-attaching");
            self.ring = None;
        }
        read as usize
    }
}

/// (stream, partition, node).
type ReplicaKey = (u32, u16, NodeId);

/// Every node's reports as the Raft leader heard them (in memory; a new leader starts empty).
#[derive(Default)]
pub struct ClusterReplicas {
    reports: Mutex<HashMap<ReplicaKey, (ReplicaReport, Instant)>>,
    /// Reports refused (failed [`ReplicaReport::check`] or over [`CLUSTER_REPORTS_MAX`]).
    pub refused: AtomicU64,
}

impl ClusterReplicas {
    /// Keeps the reports node `from` sent, stamped `now`.
    pub fn record(&self, from: NodeId, reports: &[ReplicaReport], now: Instant) {
        let mut m = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        for r in reports.iter().take(HEARTBEAT_REPORTS_MAX) {
            let key = (r.stream_id, r.partition, r.node);
            let room = m.len() < CLUSTER_REPORTS_MAX || m.contains_key(&key);
            if r.check(from).is_err() || !room {
                self.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            m.insert(key, (r.clone(), now));
        }
        let over = reports.len().saturating_sub(HEARTBEAT_REPORTS_MAX);
        self.refused.fetch_add(over as u64, Ordering::Relaxed);
    }

    /// Forgets every report (leadership lost: a later term starts from fresh heartbeats).
    pub fn clear(&self) {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Reports younger than `max_age`, by partition.
    pub fn fresh(&self, max_age: Duration, now: Instant) -> PartitionReports {
        let m = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: PartitionReports = BTreeMap::new();
        for ((s, p, _), (r, at)) in m.iter() {
            if now.saturating_duration_since(*at) <= max_age {
                out.entry((*s, *p)).or_default().push(r.clone());
            }
        }
        for v in out.values_mut() {
            v.sort_by_key(|r| r.node);
        }
        out
    }
}

/// Reports by (stream, partition), each list in node order.
pub type PartitionReports = BTreeMap<(u32, u16), Vec<ReplicaReport>>;

#[cfg(test)]
mod tests {
    use super::*;
    use abi::assign::STATUS_RING_CAPACITY_BYTES;
    use shm_ring::RingConfig;

    fn status(node: NodeId, partition: u16, log_end: u64, isr: &[u64]) -> ReplicaStatus {
        let role = if isr.is_empty() {
            Role::Follower
        } else {
            Role::Leader
        };
        ReplicaStatus::new(
            5,
            partition,
            node,
            role,
            ReplicaState::Serving,
            3,
            [log_end, log_end, 0, 0],
            isr,
        )
        .unwrap()
    }

    #[test]
    fn the_reader_keeps_the_latest_per_partition_and_refuses_foreign_records() {
        let dir = tempfile::tempdir().unwrap();
        let board = LocalReplicas::default();
        let mut reader = StatusReader::new(Some(dir.path().to_path_buf()), 2);
        assert_eq!(reader.poll(&board), 0);
        assert!(!reader.is_attached(), "no data plane yet");
        let ring = Ring::create(
            STATUS_RING_NAME,
            &RingConfig {
                capacity_bytes: STATUS_RING_CAPACITY_BYTES,
                backing: shm_ring::Backing::DevShm,
                dir: Some(dir.path().to_path_buf()),
                ..RingConfig::default()
            },
        )
        .unwrap();
        let mut publisher = ring.publisher().unwrap();
        for r in [
            status(2, 0, 10, &[2, 1]).encode(),
            status(2, 0, 20, &[2]).encode(),
            status(2, 1, 7, &[]).encode(),
            status(9, 1, 99, &[]).encode(),
            vec![1, 2, 3],
        ] {
            publisher.offer(&r).unwrap();
        }
        assert_eq!(reader.poll(&board), 5);
        let got = board.snapshot(16);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].log_end, got[0].proposed_isr.clone()), (20, vec![2]));
        assert_eq!((got[1].partition, got[1].log_end), (1, 7));
        assert_eq!(board.refused.load(Ordering::Relaxed), 2);
        assert_eq!(board.records.load(Ordering::Relaxed), 5);
        ring.unlink().unwrap();
    }

    #[test]
    fn the_leader_refuses_inconsistent_reports_and_ages_them_out() {
        let c = ClusterReplicas::default();
        let t0 = Instant::now();
        let good = ReplicaReport::from_status(&status(3, 0, 10, &[3]));
        let mut other_node = good.clone();
        other_node.node = 4;
        let mut follower_proposing = ReplicaReport::from_status(&status(3, 1, 1, &[]));
        follower_proposing.proposed_isr = vec![3];
        c.record(3, &[good.clone(), other_node, follower_proposing], t0);
        assert_eq!(c.refused.load(Ordering::Relaxed), 2);
        let fresh = c.fresh(Duration::from_secs(1), t0);
        assert_eq!(fresh.get(&(5, 0)), Some(&vec![good]));
        let later = t0 + Duration::from_secs(2);
        assert!(c.fresh(Duration::from_secs(1), later).is_empty());
    }

    proptest::proptest! {
        /// Heartbeats from the network (JSON) and the strings operators type never panic: what
        /// is refused is refused with an error or counted.
        #[test]
        fn arbitrary_heartbeats_and_strings_are_checked_not_panicked(
            json in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            from in 0u64..4,
            node in 0u64..4,
            isr in proptest::collection::vec(0u64..5, 0..20),
            text in ".{0,40}",
        ) {
            let c = ClusterReplicas::default();
            if let Ok(hb) = serde_json::from_slice::<crate::types::NodeHeartbeat>(&json) {
                c.record(from, &hb.replicas, Instant::now());
            }
            let mut r = ReplicaReport::from_status(&status(node, 0, 1, &[]));
            r.role = ReplicaRole::Leader;
            r.proposed_isr = isr.clone();
            c.record(from, std::slice::from_ref(&r), Instant::now());
            let kept = c.fresh(Duration::from_secs(60), Instant::now());
            let ok = node == from && isr.len() <= ASSIGN_REPLICAS_MAX;
            proptest::prop_assert_eq!(kept.contains_key(&(5, 0)), ok);
            let _ = text.parse::<crate::types::AckMode>();
            let _ = crate::dataplane_link::parse_data_addr(1, &text);
            let _ = crate::dataplane_link::parse_config_stream(&text);
        }
    }
}
