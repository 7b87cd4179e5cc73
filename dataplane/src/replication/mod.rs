//! The replica-set core of a replicated partition (#11): plain types, no I/O, no clock. The
//! leader's view of its followers, the in-sync set (ISR) by lag time, the high watermarks, the
//! ack decision per ack mode, epoch fencing, and the follower's divergence resolution.
//!
//! **Wired (#11):** the conductor holds a [`ReplicaSet`] per partition this node leads (fed
//! with the followers' REPORTs and its own log offsets, polled for ISR proposals that go out
//! on the status ring), checks FETCHes with [`check_fetch`], and the receiver drives a
//! [`FollowerFetch`] per partition this node follows. [`resolve_divergence`] is not used yet
//! (EPOCH_END and truncation after a leader change are planned).
//!
//! * [`ReplicaSet`] (`leader.rs`): the partition leader's state, driven by
//!   [`ReplicaSet::handle`]`(now_ns, `[`LeaderInput`]`)`. Followers' REPORTs move their
//!   received and durable offsets; the leader's own appends and fsyncs move its offsets; a
//!   tick re-evaluates the ISR. ISR changes come out as [`IsrProposal`] values that the control
//!   plane commits through Raft ([`LeaderInput::IsrCommitted`]) or rejects.
//! * [`AckMode`] and [`AckStatus`] (`ack.rs`): when a record may be acknowledged.
//! * [`FollowerFetch`] (`follower.rs`): when a follower sends FETCH and REPORT.
//! * `divergence.rs`: [`check_fetch`] (the leader: does a FETCH continue the leader's log?) and
//!   [`resolve_divergence`] (the follower: where to cut given the leader's EPOCH_END answer),
//!   both over storage-nvme's leader-epoch history (Kafka's KIP-101/KIP-279/KIP-320).
//! * `sim_tests.rs` (tests only): a seeded simulation of three replicas over these pieces with
//!   leader kills, clean elections from the committed ISR and deposed leaders rejoining with
//!   their tails: every record acknowledged under `all` survives, and the replicas converge.
//!
//! # Rules (and where they come from)
//! * **High watermarks**, two of them, one per `all` kind: *replicated* = min received offset
//!   over the ISR (leader included: its log end), *persisted* = min durable offset over the ISR
//!   (leader included: its durable offset). Both only move forward and never pass the leader's
//!   log end.
//! * **Strict min ISR** (KIP-966): while the committed ISR is smaller than
//!   `min_insync_replicas`, neither watermark advances, and `all` publishes are refused with
//!   NOT_ENOUGH_REPLICAS.
//! * **ISR by lag time** (Kafka's `replica.lag.time.max.ms` rule): a follower is caught up when
//!   it holds the leader's log end, or held the end the leader had at its previous report; it
//!   leaves the ISR when it was last caught up more than `replica_lag_time_max_ns` ago. A
//!   follower joins when it is caught up and holds at least both watermarks and the start of
//!   the leader's epoch (so joining never moves a watermark backwards).
//! * **Maximal ISR while a change is pending** (Kafka's KIP-497 / AlterPartition): a proposed
//!   expansion counts toward the watermarks at once (waiting for more replicas is always safe);
//!   a proposed shrink counts only once committed (until then the slow replica still holds
//!   the watermarks back, so nothing is acknowledged that the committed ISR lacks).
//! * **Fencing**: a report with another leader epoch, or from a node outside the replica set,
//!   is refused with a [`Refusal`] reason and moves nothing.
//!
//! # Default lag time: 2 s
//! Kafka's default is 30 s (10 s before 2.5). Our followers report in memory (received, not
//! durable) over the same busy-polled data path as publishers, so a healthy follower is behind
//! by one round trip plus batching, far below a millisecond; an fsync stall does not delay its
//! received offset. 2 s is still 4 orders of magnitude above that, rides out a scheduling
//! hiccup on a loaded 2-vCPU node, and bounds how long an `all` publisher waits on a dead
//! follower before the ISR shrinks. Followers must fetch or report at least every
//! `replica_lag_time_max_ns / 4` while idle (the adapters' heartbeat).

mod ack;
mod divergence;
mod follower;
mod leader;
#[cfg(test)]
mod sim_tests;

pub use ack::{AckMode, AckStatus, NotEnoughReplicas};
pub use divergence::{check_fetch, resolve_divergence, FetchCheck, Resolution};
pub use follower::{
    replica_session_id, FollowerFetch, FETCH_RETRY_NS, REPORT_INTERVAL_NS, REPORT_MIN_INTERVAL_NS,
};
pub use leader::{
    IsrProposal, LeaderInput, LeaderOutput, Refusal, ReplicaProgress, ReplicaSet, ReplicaSetConfig,
    ReplicaSetError,
};

/// A node id, as the control plane names nodes.
pub type NodeId = u64;

/// Default `replica_lag_time_max_ns`: 2 s (see the module docs for why).
pub const REPLICA_LAG_TIME_MAX_NS_DEFAULT: u64 = 2_000_000_000;
/// Most replicas (leader included) one partition may have.
pub const REPLICAS_MAX: usize = 16;
