//! Ack modes and the ack decision for one record.

/// When a publisher's record is acknowledged (set per publisher, with a per-stream default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckMode {
    /// Fire and forget (Kafka's acks=0): never acknowledged.
    None,
    /// Appended on the leader (in its ring; not yet on disk).
    Leader,
    /// On the leader's disk (fdatasync'ed).
    LeaderDurable,
    /// Every ISR member holds it in memory, with at least `min_insync_replicas` in the ISR.
    AllReplicated,
    /// Every ISR member holds it on disk, with at least `min_insync_replicas` in the ISR.
    AllPersisted,
}

impl AckMode {
    /// Whether this mode needs the ISR to be at least `min_insync_replicas`.
    pub fn needs_min_isr(self) -> bool {
        matches!(self, AckMode::AllReplicated | AckMode::AllPersisted)
    }
}

/// Where a record stands for its publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// The mode never acknowledges (`none`).
    NoAck,
    /// Acknowledge it now.
    Acked,
    /// Not yet: wait for more progress.
    Waiting,
    /// Appended but cannot commit while the ISR is below `min_insync_replicas` (strict min ISR):
    /// the adapter answers NOT_ENOUGH_REPLICAS when its publish timeout expires; the record
    /// may still commit later if the ISR recovers (an idempotent re-send is then dropped).
    BelowMinIsr,
}

/// An `all` publish refused before it is appended: the ISR is smaller than
/// `min_insync_replicas`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("NOT_ENOUGH_REPLICAS: the in-sync set has {isr} replicas, the stream needs at least {min_insync_replicas}; retry when replicas catch up, or publish with a weaker ack mode")]
pub struct NotEnoughReplicas {
    pub isr: usize,
    pub min_insync_replicas: usize,
}
