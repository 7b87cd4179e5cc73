//! Replication frame bodies (docs/protocol.md, "Replication"): what a follower and its
//! partition leader say to each other (#11). FETCH (frame type 6) and REPORT (type 7) are sent
//! by followers and taken by leaders (`dataplane`'s receiver and conductor); the EPOCH_END
//! request and answer have no frame type yet (divergence after a leader change is planned).
//!
//! Each body names its stream, partition and the sender's view of the leader epoch itself, so
//! it can be checked (epoch fencing, membership) without the frame header. All integers are
//! little-endian and fixed width; reserved fields are zero and checked.
//!
//! ```text
//!  FETCH (48 B, follower -> leader): "send me records from fetch_offset"
//!   +0 stream_id u32 | +4 partition u16 | +6 reserved u16 (= 0)
//!   +8 replica_id u64            node id of the follower
//!   +16 leader_epoch u64         the epoch the follower believes current (fencing)
//!   +24 fetch_offset u64         the follower's log end: the next offset it needs
//!   +32 last_fetched_epoch u64   epoch of the follower's last record, NO_EPOCH if it has none
//!   +40 window_bytes u32         bytes the follower can take past fetch_offset (flow control)
//!   +44 reserved u32 (= 0)
//!
//!  REPORT (40 B, follower -> leader): "this is what I hold"
//!   +0 stream_id u32 | +4 partition u16 | +6 reserved u16 (= 0)
//!   +8 replica_id u64 | +16 leader_epoch u64
//!   +24 received_offset u64      every offset below is in the follower's ring and log
//!   +32 durable_offset u64       every offset below is on the follower's disk (<= received)
//!
//!  EPOCH_END request (32 B, follower -> leader): "where does epoch requested_epoch end?"
//!   +0 stream_id u32 | +4 partition u16 | +6 reserved u16 (= 0)
//!   +8 replica_id u64 | +16 leader_epoch u64
//!   +24 requested_epoch u64      the follower's latest epoch
//!
//!  EPOCH_END answer (40 B, leader -> follower)
//!   +0 stream_id u32 | +4 partition u16 | +6 status u16 (EPOCH_END_*)
//!   +8 leader_epoch u64          the leader's current epoch
//!   +16 requested_epoch u64
//!   +24 epoch u64                the largest epoch <= requested the leader knows (FOUND), else 0
//!   +32 end_offset u64           where that epoch ends on the leader (FOUND), else 0
//! ```

use crate::le::{u16_at, u32_at, u64_at};

pub const REPL_STREAM_ID_OFFSET: usize = 0;
pub const REPL_PARTITION_OFFSET: usize = 4;
/// Reserved (= 0) in requests; the status of an EPOCH_END answer.
pub const REPL_RESERVED_OFFSET: usize = 6;
pub const REPL_REPLICA_ID_OFFSET: usize = 8;
pub const REPL_LEADER_EPOCH_OFFSET: usize = 16;

pub const FETCH_BODY_BYTES: usize = 48;
pub const FETCH_OFFSET_OFFSET: usize = 24;
pub const FETCH_LAST_EPOCH_OFFSET: usize = 32;
pub const FETCH_WINDOW_BYTES_OFFSET: usize = 40;
pub const FETCH_RESERVED_OFFSET: usize = 44;

pub const REPORT_BODY_BYTES: usize = 40;
pub const REPORT_RECEIVED_OFFSET: usize = 24;
pub const REPORT_DURABLE_OFFSET: usize = 32;

pub const EPOCH_END_REQUEST_BYTES: usize = 32;
pub const EPOCH_END_REQUESTED_OFFSET: usize = 24;

pub const EPOCH_END_ANSWER_BYTES: usize = 40;
pub const EPOCH_END_STATUS_OFFSET: usize = REPL_RESERVED_OFFSET;
pub const EPOCH_END_ANSWER_LEADER_EPOCH_OFFSET: usize = 8;
pub const EPOCH_END_ANSWER_REQUESTED_OFFSET: usize = 16;
pub const EPOCH_END_ANSWER_EPOCH_OFFSET: usize = 24;
pub const EPOCH_END_ANSWER_END_OFFSET: usize = 32;

/// `last_fetched_epoch` of a follower that holds no record yet (no epoch to check).
pub const NO_EPOCH: u64 = u64::MAX;

/// EPOCH_END answer status: the leader knows an epoch <= the requested one.
pub const EPOCH_END_FOUND: u16 = 0;
/// Every epoch the leader knows is larger than the requested one: the follower holds nothing
/// the leader can vouch for and truncates to the leader's log start.
pub const EPOCH_END_UNKNOWN: u16 = 1;
/// The request carried a leader epoch other than the leader's: refresh metadata and retry.
pub const EPOCH_END_FENCED: u16 = 2;
/// The node is not the partition's leader.
pub const EPOCH_END_NOT_LEADER: u16 = 3;

const _: () = assert!(FETCH_RESERVED_OFFSET + 4 == FETCH_BODY_BYTES);
const _: () = assert!(REPORT_DURABLE_OFFSET + 8 == REPORT_BODY_BYTES);
const _: () = assert!(EPOCH_END_REQUESTED_OFFSET + 8 == EPOCH_END_REQUEST_BYTES);
const _: () = assert!(EPOCH_END_ANSWER_END_OFFSET + 8 == EPOCH_END_ANSWER_BYTES);
const _: () =
    assert!(FETCH_BODY_BYTES.is_multiple_of(8) && EPOCH_END_ANSWER_BYTES.is_multiple_of(8));

/// Why a replication body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationBodyError {
    #[error("body of {got} bytes, expected exactly {want}")]
    Length { got: usize, want: usize },
    #[error("reserved field at byte {at} is not zero")]
    Reserved { at: usize },
    #[error("durable offset {durable} is above received offset {received}")]
    DurableAboveReceived { received: u64, durable: u64 },
    #[error("unknown EPOCH_END status {0}")]
    Status(u16),
    #[error("EPOCH_END answer with status {0} carries a non-zero epoch or end offset")]
    NotFoundWithValues(u16),
}

/// Which partition replica a request comes from, and the leader epoch it believes current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaHeader {
    pub stream_id: u32,
    pub partition: u16,
    pub replica_id: u64,
    pub leader_epoch: u64,
}

impl ReplicaHeader {
    fn encode(&self, out: &mut [u8]) {
        out[REPL_STREAM_ID_OFFSET..][..4].copy_from_slice(&self.stream_id.to_le_bytes());
        out[REPL_PARTITION_OFFSET..][..2].copy_from_slice(&self.partition.to_le_bytes());
        out[REPL_RESERVED_OFFSET..][..2].fill(0);
        out[REPL_REPLICA_ID_OFFSET..][..8].copy_from_slice(&self.replica_id.to_le_bytes());
        out[REPL_LEADER_EPOCH_OFFSET..][..8].copy_from_slice(&self.leader_epoch.to_le_bytes());
    }

    /// Reads the common fields of a request body already checked to be `want` bytes long.
    fn decode(b: &[u8]) -> Result<Self, ReplicationBodyError> {
        if u16_at(b, REPL_RESERVED_OFFSET) != 0 {
            return Err(ReplicationBodyError::Reserved {
                at: REPL_RESERVED_OFFSET,
            });
        }
        Ok(Self {
            stream_id: u32_at(b, REPL_STREAM_ID_OFFSET),
            partition: u16_at(b, REPL_PARTITION_OFFSET),
            replica_id: u64_at(b, REPL_REPLICA_ID_OFFSET),
            leader_epoch: u64_at(b, REPL_LEADER_EPOCH_OFFSET),
        })
    }
}

fn check_len(b: &[u8], want: usize) -> Result<(), ReplicationBodyError> {
    if b.len() == want {
        Ok(())
    } else {
        Err(ReplicationBodyError::Length { got: b.len(), want })
    }
}

/// FETCH: a follower asks for records from `fetch_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchBody {
    pub replica: ReplicaHeader,
    pub fetch_offset: u64,
    pub last_fetched_epoch: u64,
    pub window_bytes: u32,
}

impl FetchBody {
    pub fn encode(&self) -> [u8; FETCH_BODY_BYTES] {
        let mut b = [0u8; FETCH_BODY_BYTES];
        self.replica.encode(&mut b);
        b[FETCH_OFFSET_OFFSET..][..8].copy_from_slice(&self.fetch_offset.to_le_bytes());
        b[FETCH_LAST_EPOCH_OFFSET..][..8].copy_from_slice(&self.last_fetched_epoch.to_le_bytes());
        b[FETCH_WINDOW_BYTES_OFFSET..][..4].copy_from_slice(&self.window_bytes.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, ReplicationBodyError> {
        check_len(b, FETCH_BODY_BYTES)?;
        let replica = ReplicaHeader::decode(b)?;
        if u32_at(b, FETCH_RESERVED_OFFSET) != 0 {
            return Err(ReplicationBodyError::Reserved {
                at: FETCH_RESERVED_OFFSET,
            });
        }
        Ok(Self {
            replica,
            fetch_offset: u64_at(b, FETCH_OFFSET_OFFSET),
            last_fetched_epoch: u64_at(b, FETCH_LAST_EPOCH_OFFSET),
            window_bytes: u32_at(b, FETCH_WINDOW_BYTES_OFFSET),
        })
    }
}

/// REPORT: a follower's received and durable offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBody {
    pub replica: ReplicaHeader,
    pub received_offset: u64,
    pub durable_offset: u64,
}

impl ReportBody {
    pub fn encode(&self) -> [u8; REPORT_BODY_BYTES] {
        let mut b = [0u8; REPORT_BODY_BYTES];
        self.replica.encode(&mut b);
        b[REPORT_RECEIVED_OFFSET..][..8].copy_from_slice(&self.received_offset.to_le_bytes());
        b[REPORT_DURABLE_OFFSET..][..8].copy_from_slice(&self.durable_offset.to_le_bytes());
        b
    }

    /// Decodes a REPORT; a durable offset above the received one is refused (a follower cannot
    /// have on disk what it has not received).
    pub fn decode(b: &[u8]) -> Result<Self, ReplicationBodyError> {
        check_len(b, REPORT_BODY_BYTES)?;
        let replica = ReplicaHeader::decode(b)?;
        let received = u64_at(b, REPORT_RECEIVED_OFFSET);
        let durable = u64_at(b, REPORT_DURABLE_OFFSET);
        if durable > received {
            return Err(ReplicationBodyError::DurableAboveReceived { received, durable });
        }
        Ok(Self {
            replica,
            received_offset: received,
            durable_offset: durable,
        })
    }
}

/// EPOCH_END request: where does `requested_epoch` end on the leader?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEndRequest {
    pub replica: ReplicaHeader,
    pub requested_epoch: u64,
}

impl EpochEndRequest {
    pub fn encode(&self) -> [u8; EPOCH_END_REQUEST_BYTES] {
        let mut b = [0u8; EPOCH_END_REQUEST_BYTES];
        self.replica.encode(&mut b);
        b[EPOCH_END_REQUESTED_OFFSET..][..8].copy_from_slice(&self.requested_epoch.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, ReplicationBodyError> {
        check_len(b, EPOCH_END_REQUEST_BYTES)?;
        Ok(Self {
            replica: ReplicaHeader::decode(b)?,
            requested_epoch: u64_at(b, EPOCH_END_REQUESTED_OFFSET),
        })
    }
}

/// What the leader answers to an EPOCH_END request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochEndOutcome {
    /// The largest epoch <= requested that the leader knows, and where it ends there.
    Found { epoch: u64, end_offset: u64 },
    /// Every epoch the leader knows is larger.
    Unknown,
    /// The request's leader epoch is not the leader's.
    Fenced,
    /// This node does not lead the partition.
    NotLeader,
}

/// EPOCH_END answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEndAnswer {
    pub stream_id: u32,
    pub partition: u16,
    pub leader_epoch: u64,
    pub requested_epoch: u64,
    pub outcome: EpochEndOutcome,
}

impl EpochEndAnswer {
    pub fn encode(&self) -> [u8; EPOCH_END_ANSWER_BYTES] {
        let (status, epoch, end) = match self.outcome {
            EpochEndOutcome::Found { epoch, end_offset } => (EPOCH_END_FOUND, epoch, end_offset),
            EpochEndOutcome::Unknown => (EPOCH_END_UNKNOWN, 0, 0),
            EpochEndOutcome::Fenced => (EPOCH_END_FENCED, 0, 0),
            EpochEndOutcome::NotLeader => (EPOCH_END_NOT_LEADER, 0, 0),
        };
        let mut b = [0u8; EPOCH_END_ANSWER_BYTES];
        b[REPL_STREAM_ID_OFFSET..][..4].copy_from_slice(&self.stream_id.to_le_bytes());
        b[REPL_PARTITION_OFFSET..][..2].copy_from_slice(&self.partition.to_le_bytes());
        b[EPOCH_END_STATUS_OFFSET..][..2].copy_from_slice(&status.to_le_bytes());
        b[EPOCH_END_ANSWER_LEADER_EPOCH_OFFSET..][..8]
            .copy_from_slice(&self.leader_epoch.to_le_bytes());
        b[EPOCH_END_ANSWER_REQUESTED_OFFSET..][..8]
            .copy_from_slice(&self.requested_epoch.to_le_bytes());
        b[EPOCH_END_ANSWER_EPOCH_OFFSET..][..8].copy_from_slice(&epoch.to_le_bytes());
        b[EPOCH_END_ANSWER_END_OFFSET..][..8].copy_from_slice(&end.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, ReplicationBodyError> {
        check_len(b, EPOCH_END_ANSWER_BYTES)?;
        let status = u16_at(b, EPOCH_END_STATUS_OFFSET);
        let epoch = u64_at(b, EPOCH_END_ANSWER_EPOCH_OFFSET);
        let end_offset = u64_at(b, EPOCH_END_ANSWER_END_OFFSET);
        let outcome = match status {
            EPOCH_END_FOUND => EpochEndOutcome::Found { epoch, end_offset },
            EPOCH_END_UNKNOWN | EPOCH_END_FENCED | EPOCH_END_NOT_LEADER => {
                if epoch != 0 || end_offset != 0 {
                    return Err(ReplicationBodyError::NotFoundWithValues(status));
                }
                match status {
                    EPOCH_END_UNKNOWN => EpochEndOutcome::Unknown,
                    EPOCH_END_FENCED => EpochEndOutcome::Fenced,
                    _ => EpochEndOutcome::NotLeader,
                }
            }
            other => return Err(ReplicationBodyError::Status(other)),
        };
        Ok(Self {
            stream_id: u32_at(b, REPL_STREAM_ID_OFFSET),
            partition: u16_at(b, REPL_PARTITION_OFFSET),
            leader_epoch: u64_at(b, EPOCH_END_ANSWER_LEADER_EPOCH_OFFSET),
            requested_epoch: u64_at(b, EPOCH_END_ANSWER_REQUESTED_OFFSET),
            outcome,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const R: ReplicaHeader = ReplicaHeader {
        stream_id: 0x0102_0304,
        partition: 0x0506,
        replica_id: 0x1112_1314_1516_1718,
        leader_epoch: 0x2122_2324_2526_2728,
    };

    #[test]
    fn fetch_bytes_at_documented_offsets() {
        let b = FetchBody {
            replica: R,
            fetch_offset: 0x3132_3334_3536_3738,
            last_fetched_epoch: 0x4142_4344_4546_4748,
            window_bytes: 0x5152_5354,
        }
        .encode();
        assert_eq!(&b[0..4], &[4, 3, 2, 1]);
        assert_eq!(&b[4..6], &[6, 5]);
        assert_eq!(&b[6..8], &[0, 0]);
        assert_eq!(b[8], 0x18);
        assert_eq!(b[16], 0x28);
        assert_eq!(b[24], 0x38);
        assert_eq!(b[32], 0x48);
        assert_eq!(&b[40..44], &[0x54, 0x53, 0x52, 0x51]);
        assert_eq!(&b[44..48], &[0; 4]);
    }

    #[test]
    fn report_and_epoch_end_bytes_at_documented_offsets() {
        let b = ReportBody {
            replica: R,
            received_offset: 9,
            durable_offset: 7,
        }
        .encode();
        assert_eq!((b.len(), b[24], b[32]), (40, 9, 7));
        let b = EpochEndRequest {
            replica: R,
            requested_epoch: 5,
        }
        .encode();
        assert_eq!((b.len(), b[24]), (32, 5));
        let b = EpochEndAnswer {
            stream_id: 1,
            partition: 2,
            leader_epoch: 8,
            requested_epoch: 5,
            outcome: EpochEndOutcome::Found {
                epoch: 4,
                end_offset: 100,
            },
        }
        .encode();
        assert_eq!(
            (b.len(), b[6], b[8], b[16], b[24], b[32]),
            (40, 0, 8, 5, 4, 100)
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let good = FetchBody {
            replica: R,
            fetch_offset: 1,
            last_fetched_epoch: 1,
            window_bytes: 1,
        }
        .encode();
        assert_eq!(
            FetchBody::decode(&good[..47]),
            Err(ReplicationBodyError::Length { got: 47, want: 48 })
        );
        let mut bad = good;
        bad[6] = 1;
        assert_eq!(
            FetchBody::decode(&bad),
            Err(ReplicationBodyError::Reserved { at: 6 })
        );
        let mut bad = good;
        bad[45] = 1;
        assert_eq!(
            FetchBody::decode(&bad),
            Err(ReplicationBodyError::Reserved { at: 44 })
        );
        let rep = ReportBody {
            replica: R,
            received_offset: 3,
            durable_offset: 3,
        };
        let mut bad = rep.encode();
        bad[32] = 4;
        assert_eq!(
            ReportBody::decode(&bad),
            Err(ReplicationBodyError::DurableAboveReceived {
                received: 3,
                durable: 4
            })
        );
        let ans = EpochEndAnswer {
            stream_id: 1,
            partition: 0,
            leader_epoch: 3,
            requested_epoch: 2,
            outcome: EpochEndOutcome::Fenced,
        };
        let mut bad = ans.encode();
        bad[6] = 9;
        assert_eq!(
            EpochEndAnswer::decode(&bad),
            Err(ReplicationBodyError::Status(9))
        );
        let mut bad = ans.encode();
        bad[32] = 1;
        assert_eq!(
            EpochEndAnswer::decode(&bad),
            Err(ReplicationBodyError::NotFoundWithValues(EPOCH_END_FENCED))
        );
    }

    fn replica() -> impl Strategy<Value = ReplicaHeader> {
        (any::<u32>(), any::<u16>(), any::<u64>(), any::<u64>()).prop_map(
            |(stream_id, partition, replica_id, leader_epoch)| ReplicaHeader {
                stream_id,
                partition,
                replica_id,
                leader_epoch,
            },
        )
    }

    fn outcome() -> impl Strategy<Value = EpochEndOutcome> {
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(epoch, end_offset)| EpochEndOutcome::Found { epoch, end_offset }),
            Just(EpochEndOutcome::Unknown),
            Just(EpochEndOutcome::Fenced),
            Just(EpochEndOutcome::NotLeader),
        ]
    }

    proptest! {
        #[test]
        fn bodies_round_trip(r in replica(), a in any::<u64>(), b in any::<u64>(), w in any::<u32>(), o in outcome()) {
            let f = FetchBody { replica: r, fetch_offset: a, last_fetched_epoch: b, window_bytes: w };
            prop_assert_eq!(FetchBody::decode(&f.encode()), Ok(f));
            let rep = ReportBody { replica: r, received_offset: a.max(b), durable_offset: a.min(b) };
            prop_assert_eq!(ReportBody::decode(&rep.encode()), Ok(rep));
            let q = EpochEndRequest { replica: r, requested_epoch: a };
            prop_assert_eq!(EpochEndRequest::decode(&q.encode()), Ok(q));
            let ans = EpochEndAnswer { stream_id: r.stream_id, partition: r.partition, leader_epoch: a, requested_epoch: b, outcome: o };
            prop_assert_eq!(EpochEndAnswer::decode(&ans.encode()), Ok(ans));
        }

        #[test]
        fn decoders_never_panic_and_accept_only_what_they_encode(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(f) = FetchBody::decode(&bytes) { prop_assert_eq!(&f.encode()[..], &bytes[..]); }
            if let Ok(r) = ReportBody::decode(&bytes) { prop_assert_eq!(&r.encode()[..], &bytes[..]); }
            if let Ok(q) = EpochEndRequest::decode(&bytes) { prop_assert_eq!(&q.encode()[..], &bytes[..]); }
            if let Ok(a) = EpochEndAnswer::decode(&bytes) { prop_assert_eq!(&a.encode()[..], &bytes[..]); }
        }
    }
}
