//! Partition placement records (#11): what the control plane tells one node's data plane about
//! the partition replicas it serves, and what the data plane tells the control plane back.
//!
//! * [`PartitionAssignment`] (control plane -> data plane, on the command ring, kind
//!   [`CMD_KIND_ASSIGN`]): this node's role for one (stream, partition), the leader, the
//!   leader epoch, the replica set with each replica's data address, the committed ISR, the
//!   minimum ISR and the stream's default ack mode. The data plane instantiates the partition
//!   (ring, log, sessions) only when its role is leader or follower, and removes it on
//!   [`Role::None`]. Assignments are idempotent and carry the epoch, so the control plane can
//!   re-send its whole view whenever it (re)attaches; an assignment with an older epoch than
//!   the one the data plane holds is ignored.
//! * [`ReplicaStatus`] (data plane -> control plane, on the status ring [`STATUS_RING_NAME`]):
//!   whether this node's replica is serving (or why not), its log end and durable offset, the
//!   high watermarks it knows, and, from a leader, the ISR it proposes (lag-time rule). The
//!   control plane commits ISR proposals through Raft under the epoch rules and sends the
//!   committed ISR back in the next assignment.
//!
//! Assignment layout (little-endian; `40 + 16 * replicas` bytes):
//!
//! ```text
//!  0 magic u16 | 2 version u16 | 4 kind u16 (= 3) | 6 partition u16 | 8 stream_id u32
//! 12 replicas u8 | 13 role u8 | 14 ack_default u8 | 15 min_isr u8
//! 16 leader_epoch u64 | 24 leader u64 (node id, 0 = none) | 32 this_node u64
//! 40 replica[i]: node u64 | ipv4 [u8; 4] | port u16 | flags u16 (bit 0: in the committed ISR)
//! ```
//!
//! Status layout (little-endian; `64 + 8 * isr` bytes):
//!
//! ```text
//!  0 magic u16 ("MS") | 2 version u16 | 4 role u8 | 5 state u8 | 6 partition u16 | 8 stream_id u32
//! 12 isr u8 (proposed ISR length, 0 = no proposal) | 13 reserved [u8; 3] (= 0)
//! 16 leader_epoch u64 | 24 log_end u64 | 32 durable u64 | 40 hw_replicated u64
//! 48 hw_persisted u64 | 56 node u64 | 64 isr[i]: node u64
//! ```

use crate::command::{CMD_MAGIC, CMD_VERSION};
use crate::le::{u16_at, u32_at, u64_at};

/// Command kind of a [`PartitionAssignment`] record on the command ring.
pub const CMD_KIND_ASSIGN: u16 = 3;
/// Most replicas (leader included) one partition may have.
pub const ASSIGN_REPLICAS_MAX: usize = 16;
/// Bytes of an assignment before its replica entries.
pub const ASSIGN_HEADER_BYTES: usize = 40;
/// Bytes of one replica entry.
pub const ASSIGN_REPLICA_BYTES: usize = 16;
/// Largest assignment record.
pub const ASSIGN_BYTES_MAX: usize =
    ASSIGN_HEADER_BYTES + ASSIGN_REPLICAS_MAX * ASSIGN_REPLICA_BYTES;
/// Replica entry flag: the replica is in the committed ISR.
pub const REPLICA_FLAG_IN_ISR: u16 = 1;

/// Name of the data plane -> control plane status ring (in the node's ring directory).
pub const STATUS_RING_NAME: &str = "memstreamer-status";
/// Data bytes of the status ring.
pub const STATUS_RING_CAPACITY_BYTES: u64 = 256 << 10;
/// "MS": MemoryStreamer status.
pub const STATUS_MAGIC: u16 = 0x534D;
/// Bytes of a status record before its proposed ISR.
pub const STATUS_HEADER_BYTES: usize = 64;
/// Largest status record.
pub const STATUS_BYTES_MAX: usize = STATUS_HEADER_BYTES + 8 * ASSIGN_REPLICAS_MAX;

/// This node's role for one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// Not a replica: the data plane removes the partition if it had it.
    None = 0,
    Leader = 1,
    Follower = 2,
}

impl Role {
    fn from_u8(v: u8) -> Option<Role> {
        match v {
            0 => Some(Role::None),
            1 => Some(Role::Leader),
            2 => Some(Role::Follower),
            _ => None,
        }
    }
}

/// A stream's default ack mode (a publisher may ask for another).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AckDefault {
    /// Fire and forget (Kafka's acks=0).
    None = 0,
    /// Appended on the leader (acks=1).
    Leader = 1,
    /// On the leader's disk.
    LeaderDurable = 2,
    /// Every ISR member holds it in memory (acks=all, replicated).
    AllReplicated = 3,
    /// Every ISR member has it on disk (acks=all, persisted).
    AllPersisted = 4,
}

impl AckDefault {
    fn from_u8(v: u8) -> Option<AckDefault> {
        match v {
            0 => Some(AckDefault::None),
            1 => Some(AckDefault::Leader),
            2 => Some(AckDefault::LeaderDurable),
            3 => Some(AckDefault::AllReplicated),
            4 => Some(AckDefault::AllPersisted),
            _ => None,
        }
    }
}

/// One replica of a partition: its node and where its data plane listens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplicaEntry {
    pub node: u64,
    pub ipv4: [u8; 4],
    pub port: u16,
    /// In the committed ISR.
    pub in_isr: bool,
}

/// This node's assignment for one (stream, partition). See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionAssignment {
    pub stream_id: u32,
    pub partition: u16,
    pub role: Role,
    pub ack_default: AckDefault,
    pub min_isr: u8,
    pub leader_epoch: u64,
    /// Node id of the leader, 0 when the partition has none (no ISR member left).
    pub leader: u64,
    /// The node this record is for (the data plane refuses records for another node).
    pub this_node: u64,
    replicas: [ReplicaEntry; ASSIGN_REPLICAS_MAX],
    replica_count: u8,
}

/// Why an assignment or status record was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignDecodeError {
    #[error("record of {0} bytes does not match its replica count")]
    Length(usize),
    #[error("bad magic {0:#06x}")]
    Magic(u16),
    #[error("record version {0}, this build reads {CMD_VERSION}: upgrade both planes together")]
    Version(u16),
    #[error("not an assignment record (kind {0})")]
    Kind(u16),
    #[error("invalid field: {0}")]
    Field(&'static str),
}

/// The replica set given to [`PartitionAssignment::new`] is empty, too large or repeats a node.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid replica set: {0}")]
pub struct ReplicaSetInvalid(pub &'static str);

impl PartitionAssignment {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream_id: u32,
        partition: u16,
        role: Role,
        ack_default: AckDefault,
        min_isr: u8,
        leader_epoch: u64,
        leader: u64,
        this_node: u64,
        replicas: &[ReplicaEntry],
    ) -> Result<PartitionAssignment, ReplicaSetInvalid> {
        if replicas.is_empty() {
            return Err(ReplicaSetInvalid("no replica"));
        }
        if replicas.len() > ASSIGN_REPLICAS_MAX {
            return Err(ReplicaSetInvalid("more than 16 replicas"));
        }
        for (i, r) in replicas.iter().enumerate() {
            if r.node == 0 {
                return Err(ReplicaSetInvalid("node id 0"));
            }
            if replicas[..i].iter().any(|o| o.node == r.node) {
                return Err(ReplicaSetInvalid("a node appears twice"));
            }
        }
        if leader != 0 && !replicas.iter().any(|r| r.node == leader) {
            return Err(ReplicaSetInvalid("the leader is not a replica"));
        }
        if role != Role::None && !replicas.iter().any(|r| r.node == this_node) {
            return Err(ReplicaSetInvalid(
                "a leader or follower outside the replica set",
            ));
        }
        if role == Role::Leader && leader != this_node {
            return Err(ReplicaSetInvalid(
                "role leader on a node that is not the leader",
            ));
        }
        let mut all = [ReplicaEntry::default(); ASSIGN_REPLICAS_MAX];
        all[..replicas.len()].copy_from_slice(replicas);
        Ok(PartitionAssignment {
            stream_id,
            partition,
            role,
            ack_default,
            min_isr,
            leader_epoch,
            leader,
            this_node,
            replicas: all,
            replica_count: replicas.len() as u8,
        })
    }

    /// The replica set, leader included, in the control plane's order.
    pub fn replicas(&self) -> &[ReplicaEntry] {
        &self.replicas[..usize::from(self.replica_count)]
    }

    /// Node ids of the committed ISR.
    pub fn isr(&self) -> impl Iterator<Item = u64> + '_ {
        self.replicas().iter().filter(|r| r.in_isr).map(|r| r.node)
    }

    /// Bytes of the encoded record.
    pub fn encoded_len(&self) -> usize {
        ASSIGN_HEADER_BYTES + usize::from(self.replica_count) * ASSIGN_REPLICA_BYTES
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.encoded_len()];
        b[0..2].copy_from_slice(&CMD_MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&CMD_VERSION.to_le_bytes());
        b[4..6].copy_from_slice(&CMD_KIND_ASSIGN.to_le_bytes());
        b[6..8].copy_from_slice(&self.partition.to_le_bytes());
        b[8..12].copy_from_slice(&self.stream_id.to_le_bytes());
        b[12] = self.replica_count;
        b[13] = self.role as u8;
        b[14] = self.ack_default as u8;
        b[15] = self.min_isr;
        b[16..24].copy_from_slice(&self.leader_epoch.to_le_bytes());
        b[24..32].copy_from_slice(&self.leader.to_le_bytes());
        b[32..40].copy_from_slice(&self.this_node.to_le_bytes());
        for (i, r) in self.replicas().iter().enumerate() {
            let o = ASSIGN_HEADER_BYTES + i * ASSIGN_REPLICA_BYTES;
            b[o..o + 8].copy_from_slice(&r.node.to_le_bytes());
            b[o + 8..o + 12].copy_from_slice(&r.ipv4);
            b[o + 12..o + 14].copy_from_slice(&r.port.to_le_bytes());
            let flags = if r.in_isr { REPLICA_FLAG_IN_ISR } else { 0 };
            b[o + 14..o + 16].copy_from_slice(&flags.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<PartitionAssignment, AssignDecodeError> {
        if b.len() < ASSIGN_HEADER_BYTES {
            return Err(AssignDecodeError::Length(b.len()));
        }
        if u16_at(b, 0) != CMD_MAGIC {
            return Err(AssignDecodeError::Magic(u16_at(b, 0)));
        }
        if u16_at(b, 2) != CMD_VERSION {
            return Err(AssignDecodeError::Version(u16_at(b, 2)));
        }
        if u16_at(b, 4) != CMD_KIND_ASSIGN {
            return Err(AssignDecodeError::Kind(u16_at(b, 4)));
        }
        let count = usize::from(b[12]);
        if count > ASSIGN_REPLICAS_MAX
            || b.len() != ASSIGN_HEADER_BYTES + count * ASSIGN_REPLICA_BYTES
        {
            return Err(AssignDecodeError::Length(b.len()));
        }
        let role = Role::from_u8(b[13]).ok_or(AssignDecodeError::Field("unknown role"))?;
        let ack_default =
            AckDefault::from_u8(b[14]).ok_or(AssignDecodeError::Field("unknown ack mode"))?;
        let mut replicas = [ReplicaEntry::default(); ASSIGN_REPLICAS_MAX];
        for (i, r) in replicas.iter_mut().take(count).enumerate() {
            let o = ASSIGN_HEADER_BYTES + i * ASSIGN_REPLICA_BYTES;
            let flags = u16_at(b, o + 14);
            if flags & !REPLICA_FLAG_IN_ISR != 0 {
                return Err(AssignDecodeError::Field("unknown replica flag"));
            }
            *r = ReplicaEntry {
                node: u64_at(b, o),
                ipv4: [b[o + 8], b[o + 9], b[o + 10], b[o + 11]],
                port: u16_at(b, o + 12),
                in_isr: flags & REPLICA_FLAG_IN_ISR != 0,
            };
        }
        PartitionAssignment::new(
            u32_at(b, 8),
            u16_at(b, 6),
            role,
            ack_default,
            b[15],
            u64_at(b, 16),
            u64_at(b, 24),
            u64_at(b, 32),
            &replicas[..count],
        )
        .map_err(|e| AssignDecodeError::Field(e.0))
    }
}

/// Whether a replica serves, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplicaState {
    /// Serving its role: a leader accepts publishers, a follower is fetching.
    Serving = 0,
    /// Instantiated, a follower still catching up to the leader's log end.
    CatchingUp = 1,
    /// The partition's ring could not be created (shared memory full, for example).
    NoRing = 2,
    /// The partition's log could not be opened or written (disk full, for example).
    NoStorage = 3,
    /// The assignment was refused (another node's record, an older epoch).
    Refused = 4,
    /// Removed on a [`Role::None`] assignment.
    Removed = 5,
}

impl ReplicaState {
    fn from_u8(v: u8) -> Option<ReplicaState> {
        match v {
            0 => Some(ReplicaState::Serving),
            1 => Some(ReplicaState::CatchingUp),
            2 => Some(ReplicaState::NoRing),
            3 => Some(ReplicaState::NoStorage),
            4 => Some(ReplicaState::Refused),
            5 => Some(ReplicaState::Removed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Serving => "serving",
            ReplicaState::CatchingUp => "catching_up",
            ReplicaState::NoRing => "no_ring",
            ReplicaState::NoStorage => "no_storage",
            ReplicaState::Refused => "refused",
            ReplicaState::Removed => "removed",
        }
    }
}

/// One replica's state as its data plane reports it. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub stream_id: u32,
    pub partition: u16,
    pub node: u64,
    pub role: Role,
    pub state: ReplicaState,
    pub leader_epoch: u64,
    pub log_end: u64,
    pub durable: u64,
    pub hw_replicated: u64,
    pub hw_persisted: u64,
    proposed_isr: [u64; ASSIGN_REPLICAS_MAX],
    proposed_isr_len: u8,
}

impl ReplicaStatus {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream_id: u32,
        partition: u16,
        node: u64,
        role: Role,
        state: ReplicaState,
        leader_epoch: u64,
        offsets: [u64; 4],
        proposed_isr: &[u64],
    ) -> Result<ReplicaStatus, ReplicaSetInvalid> {
        if proposed_isr.len() > ASSIGN_REPLICAS_MAX {
            return Err(ReplicaSetInvalid("more than 16 replicas"));
        }
        if !proposed_isr.is_empty() && role != Role::Leader {
            return Err(ReplicaSetInvalid("only a leader proposes an ISR"));
        }
        let mut isr = [0u64; ASSIGN_REPLICAS_MAX];
        isr[..proposed_isr.len()].copy_from_slice(proposed_isr);
        let [log_end, durable, hw_replicated, hw_persisted] = offsets;
        Ok(ReplicaStatus {
            stream_id,
            partition,
            node,
            role,
            state,
            leader_epoch,
            log_end,
            durable,
            hw_replicated,
            hw_persisted,
            proposed_isr: isr,
            proposed_isr_len: proposed_isr.len() as u8,
        })
    }

    /// The ISR a leader proposes (empty: no proposal).
    pub fn proposed_isr(&self) -> &[u64] {
        &self.proposed_isr[..usize::from(self.proposed_isr_len)]
    }

    pub fn encode(&self) -> Vec<u8> {
        let n = usize::from(self.proposed_isr_len);
        let mut b = vec![0u8; STATUS_HEADER_BYTES + 8 * n];
        b[0..2].copy_from_slice(&STATUS_MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&CMD_VERSION.to_le_bytes());
        b[4] = self.role as u8;
        b[5] = self.state as u8;
        b[6..8].copy_from_slice(&self.partition.to_le_bytes());
        b[8..12].copy_from_slice(&self.stream_id.to_le_bytes());
        b[12] = self.proposed_isr_len;
        let words = [
            self.leader_epoch,
            self.log_end,
            self.durable,
            self.hw_replicated,
            self.hw_persisted,
            self.node,
        ];
        for (i, w) in words.iter().chain(self.proposed_isr()).enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<ReplicaStatus, AssignDecodeError> {
        if b.len() < STATUS_HEADER_BYTES {
            return Err(AssignDecodeError::Length(b.len()));
        }
        if u16_at(b, 0) != STATUS_MAGIC {
            return Err(AssignDecodeError::Magic(u16_at(b, 0)));
        }
        if u16_at(b, 2) != CMD_VERSION {
            return Err(AssignDecodeError::Version(u16_at(b, 2)));
        }
        let n = usize::from(b[12]);
        if n > ASSIGN_REPLICAS_MAX || b.len() != STATUS_HEADER_BYTES + 8 * n {
            return Err(AssignDecodeError::Length(b.len()));
        }
        if b[13..16] != [0; 3] {
            return Err(AssignDecodeError::Field("reserved bytes are not 0"));
        }
        let role = Role::from_u8(b[4]).ok_or(AssignDecodeError::Field("unknown role"))?;
        let state =
            ReplicaState::from_u8(b[5]).ok_or(AssignDecodeError::Field("unknown replica state"))?;
        let word = |i: usize| u64_at(b, 16 + 8 * i);
        let mut isr = [0u64; ASSIGN_REPLICAS_MAX];
        for (i, slot) in isr.iter_mut().take(n).enumerate() {
            *slot = word(6 + i);
        }
        ReplicaStatus::new(
            u32_at(b, 8),
            u16_at(b, 6),
            word(5),
            role,
            state,
            word(0),
            [word(1), word(2), word(3), word(4)],
            &isr[..n],
        )
        .map_err(|e| AssignDecodeError::Field(e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> [ReplicaEntry; 3] {
        let r = |node, last, in_isr| ReplicaEntry {
            node,
            ipv4: [198, 18, 0, last],
            port: 40_000,
            in_isr,
        };
        [r(1, 1, true), r(2, 2, true), r(3, 3, false)]
    }

    #[test]
    fn assignments_round_trip_and_bad_sets_are_refused() {
        let a = PartitionAssignment::new(
            7,
            2,
            Role::Follower,
            AckDefault::AllReplicated,
            2,
            5,
            1,
            3,
            &three(),
        )
        .unwrap();
        let b = a.encode();
        assert_eq!(b.len(), 40 + 3 * 16);
        assert_eq!(PartitionAssignment::decode(&b), Ok(a));
        assert_eq!(a.isr().collect::<Vec<_>>(), vec![1, 2]);
        let mk = |role, leader, this, reps: &[ReplicaEntry]| {
            PartitionAssignment::new(1, 0, role, AckDefault::Leader, 1, 1, leader, this, reps)
        };
        assert!(mk(Role::Leader, 1, 1, &[]).is_err());
        assert!(mk(Role::Leader, 2, 1, &three()).is_err());
        assert!(mk(Role::Follower, 1, 9, &three()).is_err());
        assert!(mk(Role::None, 9, 9, &three()).is_err());
        assert!(mk(Role::None, 0, 9, &three()).is_ok());
        let mut dup = three();
        dup[2].node = 1;
        assert!(mk(Role::Leader, 1, 1, &dup).is_err());
        let mut bad = b.clone();
        bad[13] = 9;
        assert!(PartitionAssignment::decode(&bad).is_err());
        assert!(PartitionAssignment::decode(&b[..b.len() - 1]).is_err());
        let mut kind = b;
        kind[4] = 1;
        assert_eq!(
            PartitionAssignment::decode(&kind),
            Err(AssignDecodeError::Kind(1))
        );
    }

    #[test]
    fn statuses_round_trip_and_only_leaders_propose() {
        let s = ReplicaStatus::new(
            7,
            1,
            3,
            Role::Leader,
            ReplicaState::Serving,
            4,
            [100, 90, 80, 70],
            &[3, 1],
        )
        .unwrap();
        let b = s.encode();
        assert_eq!(b.len(), 64 + 16);
        assert_eq!(ReplicaStatus::decode(&b), Ok(s));
        assert_eq!(s.proposed_isr(), &[3, 1]);
        assert!(ReplicaStatus::new(
            7,
            1,
            3,
            Role::Follower,
            ReplicaState::Serving,
            4,
            [0; 4],
            &[3]
        )
        .is_err());
        let mut bad = b;
        bad[14] = 1;
        assert!(ReplicaStatus::decode(&bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic_and_what_they_accept_re_encodes(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..320),
        ) {
            if let Ok(a) = PartitionAssignment::decode(&b) {
                proptest::prop_assert_eq!(a.encode(), b.clone());
            }
            if let Ok(s) = ReplicaStatus::decode(&b) {
                proptest::prop_assert_eq!(s.encode(), b);
            }
        }
    }
}
