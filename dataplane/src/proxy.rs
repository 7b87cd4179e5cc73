//! The commands the agents exchange, in one module every agent uses (Aeron's proxies): no agent
//! module imports another, and no agent builds another's private state. A command carries
//! plain values and the resources the receiving agent will own (ring handles, a log reader, a
//! read buffer, an outbound session), made off the busy cores by the conductor.
//!
//! ```text
//!  receiver ──ConductorCommand::Subscribe──► conductor ──SenderCommand──► sender
//!  archiver ──ConductorCommand::Reader────►     │      ──ReceiverCommand─► receiver
//!                                               └──────ArchiverCommand──► archiver
//! ```
//!
//! The conductor's side is a bounded MPMC [`CommandQueue`](crate::agent::CommandQueue); each
//! other agent's is a bounded SPSC queue behind a bounded conductor-side
//! [`Outbox`](crate::agent::Outbox). What agents give up goes back as
//! [`Retired`](crate::retire::Retired).

use std::net::SocketAddr;
use std::sync::Arc;

use sdk::net::PublisherSession;

use crate::archive::PartitionArchive;
use crate::counters::PartitionCells;
use crate::replication::FollowerFetch;
use crate::session::{ReplicaRequest, SubscribeRequest};

/// What the conductor is asked to do.
pub enum ConductorCommand {
    /// A remote subscriber asked for a partition (SETUP with FLAG_SUBSCRIBE on the data port).
    Subscribe(SubscribeRequest),
    /// The archiver's answer to [`ArchiverCommand::OpenReader`]: the subscriber's log reader.
    Reader(Box<PendingSubscribe>),
    /// A follower's FETCH or REPORT for a partition this node may lead (#11).
    Replica(ReplicaRequest),
}

/// A subscribe request waiting for a reader of the partition's log (it starts behind the ring).
pub struct PendingSubscribe {
    pub request: SubscribeRequest,
    pub slot: usize,
    pub reader: Option<Box<storage_nvme::Reader>>,
}

/// A partition the conductor made live at run time, or one it takes away (to the receiver).
pub enum ReceiverCommand {
    /// Accept remote publishers' frames for (stream, partition) into `ring` as slot `slot`.
    Add {
        slot: usize,
        stream_id: u32,
        partition: u16,
        ring: shm_ring::Ring,
        publisher: shm_ring::Publisher,
        cells: Arc<PartitionCells>,
    },
    /// Stop serving (stream, partition): its sessions close, later frames count as unknown.
    Remove {
        slot: usize,
        stream_id: u32,
        partition: u16,
    },
    /// Follow a leader for slot `slot` (send it FETCH and REPORT), or stop (None): this node
    /// became a follower of a new leader or epoch, or stopped being one (#11).
    Follow {
        slot: usize,
        follow: Option<Box<FollowerFetch>>,
    },
}

/// Commands for the sender.
pub enum SenderCommand {
    /// Start sending a partition to a remote subscriber (replaces an older incarnation).
    Add(Box<NewSubscriber>),
    /// Serve remote subscribers of a partition made live at run time, as slot `slot`.
    AddPartition {
        slot: usize,
        ring: shm_ring::Ring,
        reader: Box<shm_ring::Subscriber>,
        cells: Arc<PartitionCells>,
    },
    /// The partition of slot `slot` is gone: its subscribers' sessions end.
    RemovePartition { slot: usize },
}

/// A remote subscriber the sender is to serve: where to, its outbound session (its
/// retransmit buffer is the bounded retransmit window) and where it starts. The box travels
/// whole into the sender's subscription, so taking it never allocates there.
pub struct NewSubscriber {
    pub dst: SocketAddr,
    /// Partition slot.
    pub slot: usize,
    pub session: PublisherSession,
    pub start: SubscriberStart,
    /// Its link-layer address, resolved by the conductor (AF_XDP sender port only).
    pub dst_mac: Option<[u8; 6]>,
}

/// Where a remote subscriber's first record comes from (docs/protocol.md, start positions).
pub enum SubscriberStart {
    /// The next record the partition gets (the shared reader).
    Live,
    /// Partition offset `from`, read from the partition's log first: `reader` is positioned at
    /// or before it, `buf` is its read buffer.
    Storage {
        from: u64,
        reader: Box<storage_nvme::Reader>,
        buf: Box<storage_nvme::AlignedBuf>,
    },
    /// Partition offset `from` (or the ring's oldest record), read from the ring with the
    /// private `reader` attached at its oldest record (the partition has no log).
    Ring {
        from: u64,
        reader: Box<shm_ring::Subscriber>,
    },
}

/// What the conductor asks of the archiver.
pub enum ArchiverCommand {
    /// Archive a partition made live at run time as slot `slot`.
    Add {
        slot: usize,
        part: Box<PartitionArchive>,
    },
    /// Stop archiving slot `slot`: drain its ring, make everything durable, close the log.
    Remove { slot: usize },
    /// A remote subscriber starts behind the ring: hand the conductor a reader of slot's log.
    OpenReader {
        slot: usize,
        request: Box<PendingSubscribe>,
    },
}
