//! The receiver's sans-IO core: remote publisher sessions, DATA batches (decoded by
//! `abi::wire::RecordBatch`, the parser the SDK uses too), gap detection -> NAK,
//! epoch fencing, STATUS generation (consumed offset, durable offset, window).
//!
//! [`SessionTable::handle`] takes one datagram (from any backend) and appends the records it accepts
//! through a [`RecordSink`] (the partition's shm ring in the node, a vector in tests);
//! [`SessionTable::poll_transmit`] writes the next due NAK or STATUS frame. No sockets, no clocks,
//! no allocation after [`SessionTable::new`].
//!
//! Loss handling is go-back-N, matching `sdk::net::PublisherSession`, with the SDK's own loss
//! detector (`sdk::net::LossDetector`): records are appended in offset order only; a DATA frame
//! that starts after the next expected offset is dropped (counted) and the range
//! `[expected, highest end seen)` is NAKed after `nak_delay_ns`, repeated every `nak_retry_ns`
//! while no progress is made. A HEARTBEAT whose offset is ahead of `expected` reveals a lost tail.
//!
//! Durability: after appending a frame, the session remembers (ring offset of its last record,
//! session offset after it). The archiver publishes, per partition, a ring mark below which every
//! record is on storage; STATUS carries the largest session offset whose checkpoint is below it.

use std::collections::HashMap;
use std::net::SocketAddr;

use abi::frame::{FrameHeader, FrameType};
use abi::wire::{
    self, decode_setup, decode_subscribe, encode_nak, record_bytes, RecordBatch, StatusBody,
    SubscribeStart, FLAG_END_OF_SESSION, FLAG_REPLY_REQUESTED, FLAG_SETUP_ACK, HEADER_BYTES,
};
use sdk::net::LossDetector;

/// SETUP flag of a remote subscriber asking the node to send it a partition (docs/protocol.md).
pub use abi::wire::FLAG_SUBSCRIBE;
/// Every flag bit the node accepts.
pub const NODE_FLAGS_KNOWN: u16 = wire::FLAGS_KNOWN | FLAG_SUBSCRIBE;
/// Durability checkpoints remembered per session (older ones are coalesced into the newest).
pub const CHECKPOINTS_MAX: usize = 32;
/// Smallest receive window a STATUS advertises, however full the ring (one largest frame, so a
/// publisher can always make progress).
pub const WINDOW_BYTES_MIN: u32 = abi::frame_consts::FRAME_BYTES_MAX;
/// Pending subscribe requests kept between two drains by the agent.
pub const SUBSCRIBE_REQUESTS_MAX: usize = 64;

const _: () =
    assert!(NODE_FLAGS_KNOWN & FLAG_SUBSCRIBE != 0 && wire::FLAGS_KNOWN & FLAG_SUBSCRIBE == 0);
const _: () = assert!(CHECKPOINTS_MAX >= 2);

/// Why a [`RecordSink`] did not take a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendRefusal {
    /// No room now (a reliable ring subscriber is behind): recovered by NAK and retransmit.
    BackPressured,
    /// The record is larger than the partition's ring takes: it never fits. The session is
    /// refused (its STATUS carries END_OF_SESSION at the record's offset).
    TooLarge,
}

/// Where accepted records go.
pub trait RecordSink {
    /// Appends one record to partition `partition` (an index into the table's partition list);
    /// returns its ring offset, or why it was not appended.
    fn append(
        &mut self,
        partition: usize,
        record_type: u16,
        payload: &[u8],
    ) -> Result<u64, AppendRefusal>;
}

/// Receiver limits and timers (from the node config).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub sessions_max: usize,
    pub window_bytes: u32,
    pub nak_delay_ns: u64,
    pub nak_retry_ns: u64,
    pub status_interval_ns: u64,
    pub session_timeout_ns: u64,
    /// Sent in STATUS as receiver_id.
    pub receiver_id: u64,
}

/// Every datagram lands in exactly one of `frames_accepted` or a `drop_*` field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub frames_accepted: u64,
    pub records_appended: u64,
    pub bytes_appended: u64,
    /// Header failed decode: magic, version, type, reserved, length, CRC32C.
    pub drop_malformed: u64,
    /// Unknown flag bits, wrong body size, bad records, misaligned offsets.
    pub drop_bad_body: u64,
    pub drop_unknown_stream: u64,
    /// DATA/HEARTBEAT without a current session (no SETUP, or a newer epoch than set up).
    pub drop_unknown_session: u64,
    pub drop_stale_epoch: u64,
    /// Same session id and epoch from another source address.
    pub drop_session_conflict: u64,
    pub drop_duplicate: u64,
    /// DATA after a gap (NAKed; go-back-N).
    pub drop_out_of_order: u64,
    pub drop_out_of_window: u64,
    pub drop_sessions_full: u64,
    /// STATUS/NAK sent to the data port (those go to the sender's port).
    pub drop_unexpected_type: u64,
    pub drop_subscribe_queue_full: u64,
    /// Records not appended because the ring was back-pressured (recovered by NAK).
    pub ring_back_pressured: u64,
    /// DATA frames of a session refused because a record is larger than the partition's ring
    /// takes (the refusing frame and every later one of that session).
    pub drop_record_too_large: u64,
    pub naks_sent: u64,
    pub status_sent: u64,
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    pub sessions_timed_out: u64,
    pub subscribe_requests: u64,
    /// Replication FETCH/REPORT frames queued for the conductor.
    pub replica_requests: u64,
    /// Replication FETCH/REPORT frames dropped: bad body, or the queue was full.
    pub drop_replica: u64,
}

/// Replication FETCH/REPORT frames queued per duty cycle at most.
pub const REPLICA_REQUESTS_MAX: usize = 64;

/// A follower's FETCH or REPORT (#11), for the conductor (which holds the replica sets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaRequest {
    /// The follower's data address: the leader's session towards it goes there.
    pub src: SocketAddr,
    /// The session id and incarnation the leader's session towards the follower takes.
    pub session_id: u32,
    pub epoch: u32,
    pub body: ReplicaBody,
}

/// The body of a [`ReplicaRequest`], decoded and checked (`abi::replication`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaBody {
    Fetch(abi::replication::FetchBody),
    Report(abi::replication::ReportBody),
}

/// A remote subscriber asked for a partition (SETUP with FLAG_SUBSCRIBE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub src: SocketAddr,
    pub stream_id: u32,
    pub partition: u16,
    pub session_id: u32,
    pub epoch: u32,
    pub frame_bytes_max: u32,
    /// Where the subscriber starts (latest for version-1 subscribers).
    pub start: SubscribeStart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SessionKey {
    stream_id: u32,
    partition: u16,
    session_id: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Checkpoint {
    ring_last: u64,
    session_end: u64,
}

#[derive(Clone, Debug)]
struct Session {
    key: SessionKey,
    src: SocketAddr,
    partition_idx: usize,
    epoch: u32,
    /// Next expected offset, the gap beyond it and when to NAK it (shared with the SDK).
    loss: LossDetector,
    status_due: bool,
    setup_ack_due: bool,
    last_rx_ns: u64,
    last_status_ns: u64,
    last_status_offset: u64,
    end_of_session: Option<u64>,
    checkpoints: [Checkpoint; CHECKPOINTS_MAX],
    ck_head: usize,
    ck_len: usize,
    durable: u64,
    /// Receive window the next STATUS advertises: halved when the partition's ring refused a
    /// record since the last STATUS, doubled back (up to the configured one) when it did not.
    window: u32,
    /// The partition's back-pressure count when this session last sent STATUS.
    pressure_seen: u64,
    /// A record at `expected` never fits the partition's ring: nothing more is appended, and
    /// every STATUS carries END_OF_SESSION (the publisher stops) until the session times out.
    refused: bool,
}

impl Session {
    fn push_checkpoint(&mut self, ck: Checkpoint) {
        if self.ck_len == CHECKPOINTS_MAX {
            // Coalesce into the newest: durability of the newest implies that of the older ones.
            let newest = (self.ck_head + self.ck_len - 1) % CHECKPOINTS_MAX;
            self.checkpoints[newest] = ck;
        } else {
            self.checkpoints[(self.ck_head + self.ck_len) % CHECKPOINTS_MAX] = ck;
            self.ck_len += 1;
        }
    }

    fn advance_durable(&mut self, ring_mark: u64) {
        while self.ck_len > 0 {
            let ck = self.checkpoints[self.ck_head];
            if ck.ring_last >= ring_mark {
                break;
            }
            self.durable = self.durable.max(ck.session_end);
            self.ck_head = (self.ck_head + 1) % CHECKPOINTS_MAX;
            self.ck_len -= 1;
        }
    }
}

/// The receiver's session table (sans-IO).
pub struct SessionTable {
    cfg: SessionConfig,
    partitions: HashMap<(u32, u16), usize>,
    index: HashMap<SessionKey, usize>,
    slots: Vec<Option<Session>>,
    free: Vec<usize>,
    active: Vec<usize>,
    cursor: usize,
    /// The session of the last DATA/HEARTBEAT (cleared whenever a session is removed).
    last: Option<(SessionKey, usize)>,
    subscribes: Vec<SubscribeRequest>,
    replica: Vec<ReplicaRequest>,
    body: Vec<u8>,
    stats: ReceiverStats,
    /// Per partition index: how often its ring refused a record (back-pressure events).
    pressure: Vec<u64>,
    /// Per partition index: the only session (id, epoch) a SETUP may open, when this node
    /// follows a leader for the partition (#11): the leader's session of its latest FETCH.
    /// No other publisher may write a follower's ring (its offsets are the leader's).
    replica_gate: Vec<Option<(u32, u32)>>,
    /// Partitions served at most (the map was sized for them: it never grows).
    partitions_max: usize,
}

impl SessionTable {
    /// `partitions[i]` is the (stream, partition) that [`RecordSink::append`] calls index `i`.
    pub fn new(cfg: SessionConfig, partitions: &[(u32, u16)]) -> SessionTable {
        Self::with_slots(cfg, partitions, partitions.len())
    }

    /// Like [`SessionTable::new`], with room for `slots_max` partitions in total, so partitions
    /// added at run time ([`SessionTable::add_partition`]) never allocate.
    pub fn with_slots(
        cfg: SessionConfig,
        partitions: &[(u32, u16)],
        slots_max: usize,
    ) -> SessionTable {
        let n = cfg.sessions_max.max(1);
        // Twice the room: with at most half its capacity live, the map rehashes in place when
        // removals leave tombstones, never reallocates.
        let mut map = HashMap::with_capacity(2 * slots_max.max(partitions.len()));
        map.extend(partitions.iter().enumerate().map(|(i, &k)| (k, i)));
        SessionTable {
            partitions: map,
            index: HashMap::with_capacity(n),
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
            active: Vec::with_capacity(n),
            cursor: 0,
            last: None,
            subscribes: Vec::with_capacity(SUBSCRIBE_REQUESTS_MAX),
            replica: Vec::with_capacity(REPLICA_REQUESTS_MAX),
            body: Vec::with_capacity(HEADER_BYTES + wire::SETUP_BODY_BYTES_MAX),
            stats: ReceiverStats::default(),
            pressure: vec![0; slots_max.max(partitions.len())],
            replica_gate: vec![None; slots_max.max(partitions.len())],
            partitions_max: slots_max.max(partitions.len()),
            cfg,
        }
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    pub fn sessions_active(&self) -> usize {
        self.active.len()
    }

    /// The next offset expected from a session, if it exists.
    pub fn expected_offset(&self, stream_id: u32, partition: u16, session_id: u32) -> Option<u64> {
        let i = *self.index.get(&SessionKey {
            stream_id,
            partition,
            session_id,
        })?;
        self.slots[i].as_ref().map(|s| s.loss.expected())
    }

    /// Starts accepting frames for (stream, partition) as partition index `slot`; false when the
    /// pair is already served or the table is at its partition capacity (nothing changes).
    pub fn add_partition(&mut self, stream_id: u32, partition: u16, slot: usize) -> bool {
        if self.partitions.contains_key(&(stream_id, partition))
            || self.partitions.len() >= self.partitions_max
            || slot >= self.pressure.len()
        {
            return false;
        }
        self.partitions.insert((stream_id, partition), slot);
        true
    }

    /// Lets only session (id, epoch) open on partition index `slot` (a follower's leader
    /// session), or any (None).
    pub fn set_replica_gate(&mut self, slot: usize, gate: Option<(u32, u32)>) {
        if let Some(g) = self.replica_gate.get_mut(slot) {
            *g = gate;
        }
    }

    /// Stops accepting frames for (stream, partition): its sessions are closed (counted) and
    /// later frames count as unknown stream. Returns how many sessions were closed.
    pub fn remove_partition(&mut self, stream_id: u32, partition: u16) -> usize {
        let Some(slot) = self.partitions.remove(&(stream_id, partition)) else {
            return 0;
        };
        let mut closed = 0;
        let mut k = 0;
        while k < self.active.len() {
            let i = self.active[k];
            if self.slots[i]
                .as_ref()
                .is_some_and(|s| s.partition_idx == slot)
            {
                self.remove(i); // swap_removes active[k]
                closed += 1;
            } else {
                k += 1;
            }
        }
        self.stats.sessions_closed += closed as u64;
        self.subscribes
            .retain(|r| (r.stream_id, r.partition) != (stream_id, partition));
        closed
    }

    /// Hands queued subscribe requests to `f`.
    pub fn drain_subscribes(&mut self, mut f: impl FnMut(SubscribeRequest)) {
        for r in self.subscribes.drain(..) {
            f(r);
        }
    }

    /// Hands queued replication requests to `f`.
    pub fn drain_replica(&mut self, mut f: impl FnMut(ReplicaRequest)) {
        for r in self.replica.drain(..) {
            f(r);
        }
    }

    /// Queues a FETCH or REPORT whose body names the header's partition.
    fn on_replica(&mut self, src: SocketAddr, h: &FrameHeader, body: &[u8]) {
        use abi::replication::{FetchBody, ReportBody};
        let decoded = match h.frame_type {
            FrameType::Fetch => FetchBody::decode(body).ok().map(ReplicaBody::Fetch),
            _ => ReportBody::decode(body).ok().map(ReplicaBody::Report),
        };
        let names = |r: &abi::replication::ReplicaHeader| {
            (r.stream_id, r.partition) == (h.stream_id, h.partition)
        };
        let body = match decoded {
            Some(ReplicaBody::Fetch(f)) if names(&f.replica) => ReplicaBody::Fetch(f),
            Some(ReplicaBody::Report(r)) if names(&r.replica) => ReplicaBody::Report(r),
            _ => {
                self.stats.drop_replica += 1;
                return;
            }
        };
        if self.replica.len() == REPLICA_REQUESTS_MAX {
            self.stats.drop_replica += 1;
            return;
        }
        self.stats.frames_accepted += 1;
        self.stats.replica_requests += 1;
        self.replica.push(ReplicaRequest {
            src,
            session_id: h.session_id,
            epoch: h.epoch,
            body,
        });
    }

    /// Processes one datagram from `src`.
    pub fn handle(
        &mut self,
        now_ns: u64,
        src: SocketAddr,
        datagram: &[u8],
        sink: &mut impl RecordSink,
    ) {
        let Ok(h) = FrameHeader::decode(datagram) else {
            self.stats.drop_malformed += 1;
            return;
        };
        let body = &datagram[HEADER_BYTES..];
        if h.flags & !NODE_FLAGS_KNOWN != 0
            || (h.flags & FLAG_SUBSCRIBE != 0 && h.frame_type != FrameType::Setup)
        {
            self.stats.drop_bad_body += 1;
            return;
        }
        let Some(&partition_idx) = self.partitions.get(&(h.stream_id, h.partition)) else {
            self.stats.drop_unknown_stream += 1;
            return;
        };
        match h.frame_type {
            FrameType::Setup if h.flags & FLAG_SUBSCRIBE != 0 => self.on_subscribe(src, &h, body),
            FrameType::Setup => self.on_setup(now_ns, src, &h, body, partition_idx),
            FrameType::Data => self.on_data(now_ns, src, &h, body, sink),
            FrameType::Heartbeat => self.on_heartbeat(now_ns, src, &h, body),
            FrameType::Status | FrameType::Nak => self.stats.drop_unexpected_type += 1,
            FrameType::Fetch | FrameType::Report => self.on_replica(src, &h, body),
        }
    }

    fn on_subscribe(&mut self, src: SocketAddr, h: &FrameHeader, body: &[u8]) {
        let Some((setup, start)) = decode_subscribe(body, h.offset) else {
            self.stats.drop_bad_body += 1;
            return;
        };
        if self.subscribes.len() == SUBSCRIBE_REQUESTS_MAX {
            self.stats.drop_subscribe_queue_full += 1;
            return;
        }
        self.stats.frames_accepted += 1;
        self.stats.subscribe_requests += 1;
        self.subscribes.push(SubscribeRequest {
            src,
            stream_id: h.stream_id,
            partition: h.partition,
            session_id: h.session_id,
            epoch: h.epoch,
            frame_bytes_max: setup.frame_bytes_max,
            start,
        });
    }

    fn on_setup(
        &mut self,
        now_ns: u64,
        src: SocketAddr,
        h: &FrameHeader,
        body: &[u8],
        partition_idx: usize,
    ) {
        if decode_setup(body).is_none() || !h.offset.is_multiple_of(8) {
            self.stats.drop_bad_body += 1;
            return;
        }
        if let Some(Some(gate)) = self.replica_gate.get(partition_idx) {
            if *gate != (h.session_id, h.epoch) {
                // A follower's ring takes only its leader's current session.
                self.stats.drop_unknown_session += 1;
                return;
            }
        }
        let key = SessionKey {
            stream_id: h.stream_id,
            partition: h.partition,
            session_id: h.session_id,
        };
        if let Some(&i) = self.index.get(&key) {
            let s = self.slots[i].as_mut().expect("indexed slot is occupied");
            if h.epoch < s.epoch {
                self.stats.drop_stale_epoch += 1;
                return;
            }
            if h.epoch == s.epoch {
                if s.src != src {
                    self.stats.drop_session_conflict += 1;
                    return;
                }
                // A repeated SETUP (the publisher missed our ack or re-set up after a silence):
                // acknowledge the position we have; the publisher resends from there.
                s.setup_ack_due = true;
                s.last_rx_ns = now_ns;
                self.stats.frames_accepted += 1;
                return;
            }
            // A newer incarnation replaces the session.
            self.remove(i);
            self.stats.sessions_closed += 1;
        }
        let Some(i) = self.free.pop() else {
            self.stats.drop_sessions_full += 1;
            return;
        };
        self.slots[i] = Some(Session {
            key,
            src,
            partition_idx,
            epoch: h.epoch,
            loss: LossDetector::new(h.offset, self.cfg.nak_delay_ns, self.cfg.nak_retry_ns),
            status_due: false,
            setup_ack_due: true,
            last_rx_ns: now_ns,
            last_status_ns: now_ns,
            last_status_offset: h.offset,
            end_of_session: None,
            checkpoints: [Checkpoint::default(); CHECKPOINTS_MAX],
            ck_head: 0,
            ck_len: 0,
            durable: h.offset,
            window: self.cfg.window_bytes,
            pressure_seen: self.pressure.get(partition_idx).copied().unwrap_or(0),
            refused: false,
        });
        self.index.insert(key, i);
        self.active.push(i);
        self.stats.sessions_opened += 1;
        self.stats.frames_accepted += 1;
    }

    /// The session a DATA/HEARTBEAT belongs to, after source and epoch checks (counted on failure).
    fn session_for(&mut self, src: SocketAddr, h: &FrameHeader) -> Option<usize> {
        let key = SessionKey {
            stream_id: h.stream_id,
            partition: h.partition,
            session_id: h.session_id,
        };
        // One-entry cache: consecutive frames usually belong to the same session.
        let i = match self.last {
            Some((k, i)) if k == key => i,
            _ => {
                let Some(&i) = self.index.get(&key) else {
                    self.stats.drop_unknown_session += 1;
                    return None;
                };
                self.last = Some((key, i));
                i
            }
        };
        let s = self.slots[i].as_ref().expect("indexed slot is occupied");
        if h.epoch < s.epoch {
            self.stats.drop_stale_epoch += 1;
            return None;
        }
        if h.epoch > s.epoch {
            self.stats.drop_unknown_session += 1;
            return None;
        }
        if s.src != src {
            self.stats.drop_session_conflict += 1;
            return None;
        }
        Some(i)
    }

    fn on_data(
        &mut self,
        now_ns: u64,
        src: SocketAddr,
        h: &FrameHeader,
        body: &[u8],
        sink: &mut impl RecordSink,
    ) {
        if !h.offset.is_multiple_of(8) {
            self.stats.drop_bad_body += 1;
            return;
        }
        let Ok(batch) = RecordBatch::parse(body, h.offset) else {
            self.stats.drop_bad_body += 1;
            return;
        };
        let Some(i) = self.session_for(src, h) else {
            return;
        };
        let cfg_window = u64::from(self.cfg.window_bytes);
        let s = self.slots[i].as_mut().expect("active slot");
        s.last_rx_ns = now_ns;
        if h.flags & FLAG_REPLY_REQUESTED != 0 {
            s.status_due = true;
        }
        if s.refused {
            // Answer every frame with the refusal: a lost STATUS is repeated, never a loop.
            self.stats.drop_record_too_large += 1;
            s.status_due = true;
            return;
        }
        let end = batch.end_offset();
        let mut expected = s.loss.expected();
        if end <= expected {
            self.stats.drop_duplicate += 1;
            // The publisher may have missed our STATUS: tell it again soon.
            s.status_due = true;
            return;
        }
        if h.offset > expected {
            s.loss.on_gap(end, now_ns);
            self.stats.drop_out_of_order += 1;
            return;
        }
        if end > expected + cfg_window {
            self.stats.drop_out_of_window += 1;
            return;
        }
        // h.offset <= expected < end: skip the records already appended; expected must be a boundary.
        let mut appended = 0u64;
        let mut last_ring = None;
        for rec in batch.iter() {
            if rec.offset < expected {
                continue;
            }
            if rec.offset != expected {
                // expected falls inside a record of this frame: inconsistent with what we appended.
                self.stats.drop_bad_body += 1;
                break;
            }
            match sink.append(s.partition_idx, rec.record_type, rec.payload) {
                Ok(ring_offset) => {
                    last_ring = Some(ring_offset);
                    expected = rec.offset + record_bytes(rec.payload.len()) as u64;
                    appended += 1;
                    self.stats.bytes_appended += rec.payload.len() as u64;
                }
                Err(AppendRefusal::TooLarge) => {
                    self.stats.drop_record_too_large += 1;
                    s.refused = true;
                    s.status_due = true;
                    break;
                }
                Err(AppendRefusal::BackPressured) => {
                    // The rest is dropped; frames behind it open a gap and are NAKed. The next
                    // STATUS (sent now) advertises a smaller window.
                    self.stats.ring_back_pressured += 1;
                    if let Some(p) = self.pressure.get_mut(s.partition_idx) {
                        *p += 1;
                    }
                    s.status_due = true;
                    s.loss.on_gap(end, now_ns);
                    break;
                }
            }
        }
        if let Some(ring_last) = last_ring {
            s.push_checkpoint(Checkpoint {
                ring_last,
                session_end: expected,
            });
            s.loss.on_progress(expected, now_ns);
            self.stats.frames_accepted += 1;
            self.stats.records_appended += appended;
            if expected - s.last_status_offset >= cfg_window / 2 {
                s.status_due = true;
            }
        }
        if h.flags & FLAG_END_OF_SESSION != 0 {
            s.end_of_session = Some(end);
            s.status_due = true;
        }
    }

    fn on_heartbeat(&mut self, now_ns: u64, src: SocketAddr, h: &FrameHeader, body: &[u8]) {
        if !body.is_empty() || !h.offset.is_multiple_of(8) {
            self.stats.drop_bad_body += 1;
            return;
        }
        let Some(i) = self.session_for(src, h) else {
            return;
        };
        let s = self.slots[i].as_mut().expect("active slot");
        s.last_rx_ns = now_ns;
        s.loss.on_gap(h.offset, now_ns);
        if h.flags & FLAG_REPLY_REQUESTED != 0 {
            s.status_due = true;
        }
        if h.flags & FLAG_END_OF_SESSION != 0 {
            s.end_of_session = Some(h.offset);
            s.status_due = true;
        }
        self.stats.frames_accepted += 1;
    }

    fn remove(&mut self, i: usize) {
        self.last = None;
        if let Some(s) = self.slots[i].take() {
            self.index.remove(&s.key);
            if let Some(pos) = self.active.iter().position(|&a| a == i) {
                self.active.swap_remove(pos);
            }
            self.free.push(i);
        }
    }

    /// Writes the next due NAK or STATUS into `out` and returns its destination, or None.
    /// `ring_marks[p]` (when storage is on) is partition p's durable ring mark.
    pub fn poll_transmit(
        &mut self,
        now_ns: u64,
        ring_marks: Option<&[u64]>,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let n = self.active.len();
        for _ in 0..n {
            if self.cursor >= self.active.len() {
                self.cursor = 0;
            }
            let i = self.active[self.cursor];
            if let Some(dst) = self.transmit_one(i, now_ns, ring_marks, out) {
                return Some(dst);
            }
            self.cursor += 1;
        }
        None
    }

    fn transmit_one(
        &mut self,
        i: usize,
        now_ns: u64,
        ring_marks: Option<&[u64]>,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let cfg = &self.cfg;
        let s = self.slots[i].as_mut().expect("active slot");
        if now_ns.saturating_sub(s.last_rx_ns) > cfg.session_timeout_ns {
            self.stats.sessions_timed_out += 1;
            self.remove(i);
            return None;
        }
        let header = |frame_type, flags, offset, s: &Session| FrameHeader {
            frame_type,
            flags,
            stream_id: s.key.stream_id,
            partition: s.key.partition,
            session_id: s.key.session_id,
            offset,
            epoch: s.epoch,
        };
        if let Some((offset, len)) = s.loss.poll_nak(now_ns) {
            let h = header(FrameType::Nak, 0, offset, s);
            h.encode(&encode_nak(len), out).expect("NAK fits a frame");
            self.stats.naks_sent += 1;
            return Some(s.src);
        }
        if let Some(marks) = ring_marks {
            if let Some(&mark) = marks.get(s.partition_idx) {
                s.advance_durable(mark);
            }
        }
        let periodic = now_ns.saturating_sub(s.last_status_ns) >= cfg.status_interval_ns
            && s.loss.expected() != s.last_status_offset;
        if !(s.status_due || s.setup_ack_due || periodic) {
            return None;
        }
        let mut flags = if s.setup_ack_due { FLAG_SETUP_ACK } else { 0 };
        if s.refused {
            flags |= FLAG_END_OF_SESSION;
        }
        let pressure = self.pressure.get(s.partition_idx).copied().unwrap_or(0);
        s.window = if pressure != s.pressure_seen {
            s.pressure_seen = pressure;
            (s.window / 2).max(WINDOW_BYTES_MIN.min(cfg.window_bytes))
        } else {
            s.window.saturating_mul(2).min(cfg.window_bytes)
        };
        let status = StatusBody {
            durable_offset: s.durable,
            window_bytes: s.window,
            receiver_id: cfg.receiver_id,
        };
        self.body.clear();
        self.body.extend_from_slice(&status.encode());
        let h = header(FrameType::Status, flags, s.loss.expected(), s);
        h.encode(&self.body, out).expect("STATUS fits a frame");
        s.status_due = false;
        s.setup_ack_due = false;
        s.last_status_ns = now_ns;
        s.last_status_offset = s.loss.expected();
        self.stats.status_sent += 1;
        let dst = s.src;
        if s.end_of_session.is_some_and(|end| s.loss.expected() >= end) {
            self.stats.sessions_closed += 1;
            self.remove(i);
        }
        Some(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::wire::{decode_nak, encode_setup, push_record, RECORD_FLAGS_OFFSET};

    const STREAM: u32 = 7;

    #[derive(Default)]
    struct VecSink {
        records: Vec<(usize, u16, Vec<u8>)>,
        refuse_after: Option<usize>,
        payload_max: Option<usize>,
    }

    impl RecordSink for VecSink {
        fn append(
            &mut self,
            partition: usize,
            record_type: u16,
            payload: &[u8],
        ) -> Result<u64, AppendRefusal> {
            if self.refuse_after.is_some_and(|n| self.records.len() >= n) {
                return Err(AppendRefusal::BackPressured);
            }
            if payload.len() > self.payload_max.unwrap_or(usize::MAX) {
                return Err(AppendRefusal::TooLarge);
            }
            self.records
                .push((partition, record_type, payload.to_vec()));
            Ok(self.records.len() as u64 * 64)
        }
    }

    fn cfg() -> SessionConfig {
        SessionConfig {
            sessions_max: 4,
            window_bytes: 1 << 20,
            nak_delay_ns: 10,
            nak_retry_ns: 1000,
            status_interval_ns: 1_000_000,
            session_timeout_ns: 1_000_000_000,
            receiver_id: 99,
        }
    }

    fn src() -> SocketAddr {
        "198.18.100.2:5000".parse().unwrap()
    }

    fn frame(
        frame_type: FrameType,
        flags: u16,
        session_id: u32,
        epoch: u32,
        offset: u64,
        body: &[u8],
    ) -> Vec<u8> {
        let h = FrameHeader {
            frame_type,
            flags,
            stream_id: STREAM,
            partition: 0,
            session_id,
            offset,
            epoch,
        };
        let mut out = Vec::new();
        h.encode(body, &mut out).unwrap();
        out
    }

    fn setup(session_id: u32, epoch: u32, offset: u64) -> Vec<u8> {
        let mut body = Vec::new();
        encode_setup(1472, "alice", &mut body);
        frame(FrameType::Setup, 0, session_id, epoch, offset, &body)
    }

    /// A DATA frame of records with 8-byte payloads `values`, starting at session offset `offset`.
    fn data(session_id: u32, epoch: u32, offset: u64, values: &[u64]) -> Vec<u8> {
        let mut body = Vec::new();
        for v in values {
            push_record(&mut body, 1, &v.to_le_bytes());
        }
        frame(FrameType::Data, 0, session_id, epoch, offset, &body)
    }

    fn table() -> SessionTable {
        SessionTable::new(cfg(), &[(STREAM, 0)])
    }

    fn values(sink: &VecSink) -> Vec<u64> {
        sink.records
            .iter()
            .map(|(_, _, p)| u64::from_le_bytes(p[..8].try_into().unwrap()))
            .collect()
    }

    fn transmit_all(t: &mut SessionTable, now: u64) -> Vec<FrameHeader> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        for _ in 0..16 {
            match t.poll_transmit(now, Some(&[u64::MAX]), &mut out) {
                Some(dst) => {
                    assert_eq!(dst, src());
                    got.push(FrameHeader::decode(&out).unwrap());
                }
                None => break,
            }
        }
        got
    }

    #[test]
    fn in_order_records_are_appended_and_acknowledged() {
        let mut t = table();
        let mut sink = VecSink::default();
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        let acks = transmit_all(&mut t, 1);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].flags, FLAG_SETUP_ACK);
        t.handle(2, src(), &data(1, 0, 0, &[1, 2]), &mut sink);
        t.handle(3, src(), &data(1, 0, 32, &[3]), &mut sink);
        assert_eq!(values(&sink), vec![1, 2, 3]);
        assert_eq!(t.expected_offset(STREAM, 0, 1), Some(48));
        assert_eq!(t.stats().records_appended, 3);
        // Periodic STATUS carries the consumed offset.
        let st = transmit_all(&mut t, 2_000_000);
        assert_eq!(st.len(), 1);
        assert_eq!((st[0].frame_type, st[0].offset), (FrameType::Status, 48));
    }

    #[test]
    fn gap_is_naked_with_its_range_and_recovered_by_retransmit() {
        let mut t = table();
        let mut sink = VecSink::default();
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        transmit_all(&mut t, 0);
        t.handle(1, src(), &data(1, 0, 0, &[1]), &mut sink); // [0, 16)
        t.handle(2, src(), &data(1, 0, 32, &[3]), &mut sink); // [32, 48): [16, 32) lost
        t.handle(3, src(), &data(1, 0, 48, &[4]), &mut sink); // [48, 64)
        assert_eq!(values(&sink), vec![1]);
        assert_eq!(t.stats().drop_out_of_order, 2);
        let naks: Vec<_> = transmit_all(&mut t, 20)
            .into_iter()
            .filter(|h| h.frame_type == FrameType::Nak)
            .collect();
        assert_eq!(naks.len(), 1);
        assert_eq!(naks[0].offset, 16);
        t.handle(30, src(), &data(1, 0, 16, &[2, 3, 4]), &mut sink);
        assert_eq!(values(&sink), vec![1, 2, 3, 4]);
        assert_eq!(t.expected_offset(STREAM, 0, 1), Some(64));
        // No more NAKs once the gap is filled.
        assert!(transmit_all(&mut t, 10_000)
            .iter()
            .all(|h| h.frame_type != FrameType::Nak));
    }

    #[test]
    fn nak_range_covers_expected_to_highest_end() {
        let mut t = table();
        let mut sink = VecSink::default();
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        transmit_all(&mut t, 0);
        t.handle(1, src(), &data(1, 0, 48, &[4]), &mut sink);
        let mut out = Vec::new();
        let mut nak = None;
        for _ in 0..4 {
            if t.poll_transmit(100, None, &mut out).is_some() {
                let h = FrameHeader::decode(&out).unwrap();
                if h.frame_type == FrameType::Nak {
                    nak = Some((h.offset, decode_nak(&out[HEADER_BYTES..]).unwrap()));
                }
            }
        }
        assert_eq!(nak, Some((0, 64)));
        // Retried after nak_retry_ns without progress.
        let again = transmit_all(&mut t, 100 + 1000);
        assert_eq!(
            again
                .iter()
                .filter(|h| h.frame_type == FrameType::Nak)
                .count(),
            1
        );
    }

    #[test]
    fn heartbeat_ahead_reveals_tail_loss() {
        let mut t = table();
        let mut sink = VecSink::default();
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        transmit_all(&mut t, 0);
        t.handle(
            1,
            src(),
            &frame(FrameType::Heartbeat, FLAG_REPLY_REQUESTED, 1, 0, 32, &[]),
            &mut sink,
        );
        let sent = transmit_all(&mut t, 50);
        assert!(sent
            .iter()
            .any(|h| h.frame_type == FrameType::Nak && h.offset == 0));
        assert!(sent.iter().any(|h| h.frame_type == FrameType::Status));
    }

    #[test]
    fn duplicates_are_dropped_and_partial_overlap_appends_only_the_new_part() {
        let mut t = table();
        let mut sink = VecSink::default();
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        t.handle(1, src(), &data(1, 0, 0, &[1, 2]), &mut sink);
        t.handle(2, src(), &data(1, 0, 0, &[1, 2]), &mut sink);
        assert_eq!(t.stats().drop_duplicate, 1);
        t.handle(3, src(), &data(1, 0, 16, &[2, 3]), &mut sink);
        assert_eq!(values(&sink), vec![1, 2, 3]);
    }

    #[test]
    fn a_follower_partition_takes_only_its_leaders_current_session() {
        let mut t = table();
        let mut sink = VecSink::default();
        t.set_replica_gate(0, Some((9, 2)));
        // Another publisher, and the leader's previous incarnation, are refused.
        t.handle(0, src(), &setup(1, 1, 0), &mut sink);
        t.handle(1, src(), &setup(9, 1, 0), &mut sink);
        assert_eq!(t.stats().drop_unknown_session, 2);
        assert_eq!(t.stats().sessions_opened, 0);
        t.handle(2, src(), &setup(9, 2, 0), &mut sink);
        t.handle(3, src(), &data(9, 2, 0, &[4]), &mut sink);
        assert_eq!(values(&sink), vec![4]);
        // Not following any more: any publisher may open again.
        t.set_replica_gate(0, None);
        t.handle(4, src(), &setup(1, 1, 0), &mut sink);
        assert_eq!(t.stats().sessions_opened, 2);
    }

    #[test]
    fn epochs_fence_old_incarnations() {
        let mut t = table();
        let mut sink = VecSink::default();
        t.handle(0, src(), &setup(1, 5, 0), &mut sink);
        t.handle(1, src(), &data(1, 5, 0, &[1]), &mut sink);
        t.handle(2, src(), &data(1, 4, 16, &[2]), &mut sink);
        assert_eq!(t.stats().drop_stale_epoch, 1);
        t.handle(3, src(), &setup(1, 4, 0), &mut sink);
        assert_eq!(t.stats().drop_stale_epoch, 2);
        // DATA of a newer epoch before its SETUP is refused.
        t.handle(4, src(), &data(1, 6, 0, &[9]), &mut sink);
        assert_eq!(t.stats().drop_unknown_session, 1);
        // A newer epoch's SETUP replaces the session and restarts at its offset.
        t.handle(5, src(), &setup(1, 6, 800), &mut sink);
        t.handle(6, src(), &data(1, 6, 800, &[7]), &mut sink);
        assert_eq!(values(&sink), vec![1, 7]);
        assert_eq!(t.expected_offset(STREAM, 0, 1), Some(816));
        // Same epoch from another source is a conflict.
        let other: SocketAddr = "198.18.100.3:1".parse().unwrap();
        t.handle(7, other, &data(1, 6, 816, &[8]), &mut sink);
        assert_eq!(t.stats().drop_session_conflict, 1);
    }

    #[test]
    fn malformed_frames_are_counted_never_panic() {
        let mut t = table();
        let mut sink = VecSink::default();
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        let good = data(1, 0, 0, &[1]);
        for cut in 0..good.len() {
            t.handle(1, src(), &good[..cut], &mut sink);
        }
        assert_eq!(t.stats().drop_malformed, good.len() as u64);
        let mut bad_crc = good.clone();
        bad_crc[HEADER_BYTES] ^= 1;
        t.handle(1, src(), &bad_crc, &mut sink);
        assert_eq!(t.stats().drop_malformed, good.len() as u64 + 1);
        // Record flags set (valid CRC): bad body.
        let mut body = Vec::new();
        push_record(&mut body, 1, &[1; 8]);
        body[RECORD_FLAGS_OFFSET] = 1;
        t.handle(
            1,
            src(),
            &frame(FrameType::Data, 0, 1, 0, 0, &body),
            &mut sink,
        );
        // Record length past the body.
        let mut body = Vec::new();
        push_record(&mut body, 1, &[1; 8]);
        body[0] = 200;
        t.handle(
            1,
            src(),
            &frame(FrameType::Data, 0, 1, 0, 0, &body),
            &mut sink,
        );
        // Unknown flag bit, unknown stream, STATUS to the data port, DATA without session.
        t.handle(
            1,
            src(),
            &frame(FrameType::Data, 0x0100, 1, 0, 0, &[]),
            &mut sink,
        );
        let h = FrameHeader {
            frame_type: FrameType::Data,
            flags: 0,
            stream_id: 99,
            partition: 0,
            session_id: 1,
            offset: 0,
            epoch: 0,
        };
        let mut other = Vec::new();
        h.encode(&good[HEADER_BYTES..], &mut other).unwrap();
        t.handle(1, src(), &other, &mut sink);
        t.handle(
            1,
            src(),
            &frame(FrameType::Status, 0, 1, 0, 0, &[0; 24]),
            &mut sink,
        );
        t.handle(1, src(), &data(2, 0, 0, &[1]), &mut sink);
        let s = t.stats();
        assert_eq!(
            (
                s.drop_bad_body,
                s.drop_unknown_stream,
                s.drop_unexpected_type,
                s.drop_unknown_session
            ),
            (3, 1, 1, 1)
        );
        assert!(sink.records.is_empty());
    }

    #[test]
    fn back_pressure_keeps_order_and_recovers() {
        let mut t = table();
        let mut sink = VecSink {
            refuse_after: Some(1),
            ..Default::default()
        };
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        t.handle(1, src(), &data(1, 0, 0, &[1, 2, 3]), &mut sink);
        assert_eq!(values(&sink), vec![1]);
        assert_eq!(t.stats().ring_back_pressured, 1);
        sink.refuse_after = None;
        t.handle(2, src(), &data(1, 0, 0, &[1, 2, 3]), &mut sink);
        assert_eq!(values(&sink), vec![1, 2, 3]);
    }

    #[test]
    fn a_record_too_large_for_the_ring_refuses_the_session() {
        let mut t = table();
        let mut sink = VecSink {
            payload_max: Some(4),
            ..Default::default()
        };
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        transmit_all(&mut t, 1);
        t.handle(2, src(), &data(1, 0, 0, &[1]), &mut sink);
        assert!(sink.records.is_empty());
        assert_eq!(t.stats().drop_record_too_large, 1);
        let sent = transmit_all(&mut t, 3);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].frame_type, FrameType::Status);
        assert_eq!(sent[0].flags & FLAG_END_OF_SESSION, FLAG_END_OF_SESSION);
        assert_eq!(sent[0].offset, 0, "the refused record's offset");
        // A retransmission is answered with the refusal again, never appended.
        t.handle(4, src(), &data(1, 0, 0, &[1]), &mut sink);
        assert_eq!(t.stats().drop_record_too_large, 2);
        assert_eq!(transmit_all(&mut t, 5).len(), 1);
        assert!(sink.records.is_empty());
    }

    #[test]
    fn partitions_added_and_removed_at_run_time() {
        let mut t = SessionTable::with_slots(cfg(), &[], 2);
        let mut sink = VecSink::default();
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        assert_eq!(t.stats().drop_unknown_stream, 1, "not served yet");
        assert!(t.add_partition(STREAM, 0, 1));
        assert!(!t.add_partition(STREAM, 0, 0), "already served");
        t.handle(1, src(), &setup(1, 0, 0), &mut sink);
        t.handle(2, src(), &data(1, 0, 0, &[5]), &mut sink);
        assert_eq!(sink.records[0].0, 1, "appended to the slot it was added as");
        assert_eq!(t.sessions_active(), 1);
        assert_eq!(t.remove_partition(STREAM, 0), 1, "its session is closed");
        assert_eq!(t.sessions_active(), 0);
        t.handle(3, src(), &data(1, 0, 16, &[6]), &mut sink);
        assert_eq!(t.stats().drop_unknown_stream, 2);
        assert_eq!(
            t.remove_partition(STREAM, 0),
            0,
            "removing twice is a no-op"
        );
        // Made again (another slot): a new session starts over.
        assert!(t.add_partition(STREAM, 0, 0));
        t.handle(4, src(), &setup(1, 0, 0), &mut sink);
        t.handle(5, src(), &data(1, 0, 0, &[7]), &mut sink);
        assert_eq!(values(&sink), vec![5, 7]);
        assert_eq!(sink.records[1].0, 0);
        // Capacity is fixed at construction: no growth on the receiver's thread.
        assert!(t.add_partition(STREAM + 1, 0, 1));
        assert!(!t.add_partition(STREAM + 2, 0, 1), "beyond slots_max");
    }

    #[test]
    fn status_window_shrinks_while_the_ring_is_full_and_grows_back() {
        let mut t = table();
        let mut sink = VecSink {
            refuse_after: Some(0),
            ..Default::default()
        };
        let full = cfg().window_bytes;
        let mut out = Vec::new();
        let window = |t: &mut SessionTable, now: u64, out: &mut Vec<u8>| loop {
            // NAKs for the refused records may come first.
            t.poll_transmit(now, None, out).expect("a STATUS is due");
            if FrameHeader::decode(out).unwrap().frame_type == FrameType::Status {
                return StatusBody::decode(&out[HEADER_BYTES..])
                    .unwrap()
                    .window_bytes;
            }
        };
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        assert_eq!(window(&mut t, 0, &mut out), full, "SETUP ack: full window");
        let mut seen = Vec::new();
        for now in 1..=12 {
            // Every DATA frame meets a full ring: each STATUS halves the window, to a floor.
            t.handle(now, src(), &data(1, 0, 0, &[now]), &mut sink);
            seen.push(window(&mut t, now, &mut out));
        }
        assert_eq!(seen[0], full / 2);
        assert_eq!(seen[1], full / 4);
        assert_eq!(*seen.last().unwrap(), WINDOW_BYTES_MIN, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[1] <= w[0]), "{seen:?}");
        // The ring has room again: records are appended and the window doubles back.
        sink.refuse_after = None;
        let mut offset = 0;
        let mut grown = Vec::new();
        for now in 20..40 {
            t.handle(now, src(), &data(1, 0, offset, &[now]), &mut sink);
            offset += 16;
            t.handle(
                now,
                src(),
                &frame(
                    FrameType::Heartbeat,
                    FLAG_REPLY_REQUESTED,
                    1,
                    0,
                    offset,
                    &[],
                ),
                &mut VecSink::default(),
            );
            grown.push(window(&mut t, now, &mut out));
        }
        assert_eq!(*grown.last().unwrap(), full, "{grown:?}");
        assert!(grown.windows(2).all(|w| w[1] >= w[0]), "{grown:?}");
    }

    #[test]
    fn durable_offset_follows_the_ring_mark() {
        let mut t = table();
        let mut sink = VecSink::default();
        t.handle(0, src(), &setup(1, 0, 0), &mut sink);
        transmit_all(&mut t, 0);
        t.handle(1, src(), &data(1, 0, 0, &[1]), &mut sink); // ring offset 64
        t.handle(2, src(), &data(1, 0, 16, &[2, 3]), &mut sink); // ring offset 192 (last record)
        let mut out = Vec::new();
        let durable = |t: &mut SessionTable, now, mark: u64, out: &mut Vec<u8>| {
            t.handle(
                now,
                src(),
                &frame(FrameType::Heartbeat, FLAG_REPLY_REQUESTED, 1, 0, 48, &[]),
                &mut VecSink::default(),
            );
            t.poll_transmit(now, Some(&[mark]), out).unwrap();
            StatusBody::decode(&out[HEADER_BYTES..])
                .unwrap()
                .durable_offset
        };
        assert_eq!(durable(&mut t, 10, 0, &mut out), 0);
        assert_eq!(durable(&mut t, 11, 65, &mut out), 16);
        assert_eq!(durable(&mut t, 12, 193, &mut out), 48);
    }

    #[test]
    fn sessions_are_bounded_timed_out_and_closed() {
        let mut t = table();
        let mut sink = VecSink::default();
        for id in 0..5 {
            t.handle(0, src(), &setup(id, 0, 0), &mut sink);
        }
        assert_eq!(t.stats().drop_sessions_full, 1);
        assert_eq!(t.sessions_active(), 4);
        // End of session closes after the final STATUS.
        t.handle(
            1,
            src(),
            &frame(FrameType::Heartbeat, FLAG_END_OF_SESSION, 0, 0, 0, &[]),
            &mut sink,
        );
        transmit_all(&mut t, 2);
        assert_eq!(t.sessions_active(), 3);
        transmit_all(&mut t, 2_000_000_000);
        assert_eq!(t.sessions_active(), 0);
        assert_eq!(t.stats().sessions_timed_out, 3);
    }

    #[test]
    fn subscribe_requests_are_queued_for_the_sender() {
        let mut t = table();
        let mut body = Vec::new();
        encode_setup(1472, "bob", &mut body);
        t.handle(
            0,
            src(),
            &frame(FrameType::Setup, FLAG_SUBSCRIBE, 9, 2, 0, &body),
            &mut VecSink::default(),
        );
        let mut got = Vec::new();
        t.drain_subscribes(|r| got.push(r));
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].session_id, got[0].epoch, got[0].frame_bytes_max),
            (9, 2, 1472)
        );
        assert_eq!(t.sessions_active(), 0);
    }

    /// The node's table against the SDK's publisher session over a seeded lossy, duplicating link:
    /// every record arrives once, in order (deterministic: replay a failure with its seed).
    #[test]
    fn lossy_link_with_sdk_publisher_delivers_exactly_once_in_order() {
        for seed in [1u64, 7, 42] {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut roll = move |pct: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % 100 < pct
            };
            let mut pcfg = sdk::net::PublisherConfig::new(STREAM, 0, 3, "sim");
            pcfg.buffer_bytes = 64 << 10;
            pcfg.heartbeat_interval_ns = 100_000;
            let mut publisher = sdk::net::PublisherSession::new(pcfg).unwrap();
            let mut t = table();
            let mut sink = VecSink::default();
            let count = 3000u64;
            let (mut next, mut now) = (0u64, 0u64);
            let (mut to_node, mut to_pub) = (Vec::new(), Vec::new());
            for _ in 0..2_000_000 {
                now += 1000;
                while next < count && publisher.offer(1, &next.to_le_bytes()).is_ok() {
                    next += 1;
                }
                for _ in 0..8 {
                    if !publisher.poll_transmit(now, &mut to_node) {
                        break;
                    }
                    if !roll(10) {
                        t.handle(now, src(), &to_node, &mut sink);
                        if roll(2) {
                            t.handle(now, src(), &to_node, &mut sink);
                        }
                    }
                }
                for _ in 0..8 {
                    if t.poll_transmit(now, None, &mut to_pub).is_none() {
                        break;
                    }
                    if !roll(10) {
                        publisher.handle(now, &to_pub);
                    }
                }
                if sink.records.len() as u64 == count && publisher.is_drained() {
                    break;
                }
            }
            assert_eq!(values(&sink), (0..count).collect::<Vec<_>>(), "seed {seed}");
            assert!(
                t.stats().naks_sent > 0,
                "seed {seed}: loss was recovered by NAK"
            );
        }
    }
}
