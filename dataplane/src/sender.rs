//! The sender agent: partition rings -> DATA frames to remote subscribers, retransmits on NAK,
//! heartbeats, flow control from the subscribers' STATUS windows.
//!
//! A remote subscriber registers with a SETUP carrying `FLAG_SUBSCRIBE` on the node's data port
//! (docs/protocol.md, "Remote subscribers"); the receiver passes the request to the conductor, which
//! builds an outbound [`sdk::net::PublisherSession`] (its retransmit buffer is the bounded
//! retransmit window) and hands it here. The node then acts as a publisher towards the subscriber:
//! SETUP, DATA, HEARTBEAT from the sender's own port; the subscriber's STATUS and NAK come back to
//! that port. With `--backend afxdp` the frames leave through a TX-only AF_XDP socket
//! ([`SenderPort::AfXdp`]) and the replies arrive on its kernel UDP socket; with `--backend udp`
//! both go through a kernel UDP socket.
//!
//! Where a subscriber starts is its SUBSCRIBE's start position (latest, earliest, an offset):
//! a subscriber that starts behind the live tail moves through [`Phase`]s — `Storage` (a
//! storage-nvme reader of the partition's log, following its durable tail; the archiver does the
//! reads, [`crate::replay`], so the sender never waits on the disk), then `Ring` (a
//! private ring reader from the first record not yet sent, once the durable tail is reached),
//! then `Live` (fed by the partition's shared reader, which never passes a `Ring` reader, so the
//! two meet). Every subscription remembers the next record it needs — its partition (log)
//! offset `next_log` while it reads storage, its ring offset `next_ring` from the moment it reads
//! the ring — so records are never sent twice at a switch and never skipped. Partition offsets
//! are the log's: ring offset + the archiver's `log_delta` (0 without storage).
//!
//! The ring is read only as far as every subscriber of the partition has room in its retransmit
//! window (a slow subscriber back-pressures the ring, like any reliable ring subscriber); a
//! subscriber silent for `session_timeout_ns` is evicted.
//!
//! What the sender gives up — an ended subscription (its retransmit buffer), a finished catch-up
//! phase (storage reader, read buffer, private ring reader), a removed partition's ring mapping —
//! goes to the conductor to be freed there ([`crate::retire`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sdk::net::wire::{record_bytes, HEADER_BYTES};
use sdk::net::{NetOfferError, PublisherSession, PublisherStats};
use xdp_programs::abi_consts::FRAME_BYTES_MAX;
use xdp_programs::frame::FrameHeader;

use crate::agent::{Agent, SpscConsumer, SpscProducer};
use crate::archiver::STAGE_RECORDS_MAX;
use crate::counters::{Counter, Counters, PartitionCells};
use crate::net::SenderPort;
use crate::replay::{ReplayClient, ReplayOutcome, ReplayRequest};
use crate::retire::{Graveyard, Retired};

/// Commands handled per duty cycle at most.
pub const COMMANDS_PER_CYCLE_MAX: usize = 4;
/// Ring records read per partition per duty cycle at most.
pub const RING_RECORDS_PER_CYCLE_MAX: usize = 256;
/// Frames sent per subscriber per duty cycle at most.
pub const FRAMES_PER_SUBSCRIBER_CYCLE_MAX: usize = 32;
/// Datagrams received per duty cycle at most.
pub const RX_BATCH_MAX: usize = 64;
/// How often a subscriber reading storage at its durable tail looks for its records in the ring.
pub const RING_RETRY_NS: u64 = 1_000_000;
/// Replies of the archiver's storage reads taken per duty cycle at most.
pub const REPLAY_REPLIES_PER_CYCLE_MAX: usize = 16;
/// Interval between copies of the sender's statistics into the shared counters (ns).
pub const STATS_PUBLISH_INTERVAL_NS: u64 = 1_000_000;

/// How far a remote subscriber is from the live tail of its partition.
pub enum Phase {
    /// Fed by the partition's shared ring reader with every other live subscriber.
    Live,
    /// Reading the partition's log from storage (it asked for records older than the ring).
    Storage(StorageRead),
    /// Reading a private ring subscriber until it meets the partition's shared reader.
    Ring { sub: Box<shm_ring::Subscriber> },
}

/// A subscriber's place in the partition's log while it catches up from storage. The archiver
/// does the reads ([`crate::replay`]); the sender sends each batch from the buffer.
pub struct StorageRead {
    /// The log reader and its buffer; None while the archiver reads the next batch for it.
    io: Option<(Box<storage_nvme::Reader>, Box<storage_nvme::AlignedBuf>)>,
    /// Bytes `start..end` of the buffer hold a batch not yet wholly sent.
    ready: Option<(usize, usize)>,
    /// The log's durable end when a read last found nothing more: no new read until it grows.
    tail_end: Option<u64>,
    /// Earliest time to look at the ring again after the reader reached the durable tail.
    ring_retry_ns: u64,
}

impl StorageRead {
    /// Reads `reader` (positioned at the subscriber's first record) through `buf`.
    pub fn new(
        reader: Box<storage_nvme::Reader>,
        buf: Box<storage_nvme::AlignedBuf>,
    ) -> StorageRead {
        StorageRead {
            io: Some((reader, buf)),
            ready: None,
            tail_end: None,
            ring_retry_ns: 0,
        }
    }

    /// Takes what a read found.
    fn apply(&mut self, outcome: ReplayOutcome) -> Result<(), String> {
        match outcome {
            ReplayOutcome::Batch { start, end } => self.ready = Some((start, end)),
            ReplayOutcome::AtTail { end } => self.tail_end = Some(end),
            ReplayOutcome::Failed(e) => return Err(e),
        }
        Ok(())
    }
}

/// One remote subscriber: where it is and the outbound session to it.
pub struct Subscription {
    /// The sender's id for it (replies of the archiver's reads name it).
    id: u64,
    dst: SocketAddr,
    partition_idx: usize,
    session: PublisherSession,
    last_heard_ns: u64,
    /// Partition (log) offset of the next record to send; records below it are never re-sent.
    next_log: u64,
    /// Ring offset of the next record to send once it reads the ring (set when it leaves
    /// storage; None: every record from the shared reader). Ring offsets from then on, so a
    /// later change of the ring-to-log mapping cannot make it skip or repeat a record.
    next_ring: Option<u64>,
    phase: Phase,
    /// Its partition went away: finish the session (END_OF_SESSION), read nothing more.
    ending: bool,
    /// Its link-layer address, resolved by the conductor (AF_XDP sender port only).
    dst_mac: Option<[u8; 6]>,
}

impl Subscription {
    /// A subscriber fed from the live tail.
    pub fn new(dst: SocketAddr, partition_idx: usize, session: PublisherSession) -> Subscription {
        Self::starting(dst, partition_idx, session, 0, Phase::Live)
    }

    /// A subscriber whose first record is partition offset `next_log`, read first from `phase`.
    pub fn starting(
        dst: SocketAddr,
        partition_idx: usize,
        session: PublisherSession,
        next_log: u64,
        phase: Phase,
    ) -> Subscription {
        Subscription {
            id: 0,
            dst,
            partition_idx,
            session,
            last_heard_ns: 0,
            next_log,
            next_ring: None,
            phase,
            ending: false,
            dst_mac: None,
        }
    }

    /// The subscriber's MAC address, for a sender that builds Ethernet headers itself.
    pub fn with_mac(mut self, mac: [u8; 6]) -> Subscription {
        self.dst_mac = Some(mac);
        self
    }

    fn free_bytes(&self) -> u64 {
        let used = self.session.end_offset() - self.session.acked_offset();
        (self.session.config().buffer_bytes as u64).saturating_sub(used)
    }

    /// Records of the largest size that fit in the retransmit window now.
    fn room_records(&self) -> usize {
        let per_record = record_bytes(self.session.payload_bytes_max()) as u64;
        (self.free_bytes() / per_record) as usize
    }

    fn same_peer(&self, other: &Subscription) -> bool {
        let (a, b) = (self.session.config(), other.session.config());
        self.dst == other.dst
            && a.session_id == b.session_id
            && a.stream_id == b.stream_id
            && a.partition == b.partition
    }

    fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live) && !self.ending
    }
}

/// Commands for the sender (from the conductor, through an SPSC queue).
pub enum SenderCommand {
    /// Start sending a partition to a remote subscriber (replaces an older incarnation).
    Add(Box<Subscription>),
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

/// The sender agent.
pub struct Sender {
    port: SenderPort,
    rings: Vec<Option<shm_ring::Ring>>,
    ring_subs: Vec<Option<shm_ring::Subscriber>>,
    cells: Vec<Option<Arc<PartitionCells>>>,
    live_slots: Vec<usize>,
    /// Boxed as the conductor built them: moving one in or out never allocates or frees here.
    #[allow(clippy::vec_box)] // the boxes travel whole between the conductor and the sender
    subscriptions: Vec<Box<Subscription>>,
    subscribers_max: usize,
    session_timeout_ns: u64,
    commands: Option<SpscConsumer<SenderCommand>>,
    counters: Counters,
    out: Vec<u8>,
    records: u64,
    replayed: u64,
    oversize: u64,
    back_pressured: u64,
    evicted: u64,
    dropped_frames: u64,
    lost: u64,
    catch_up_errors: u64,
    retired: PublisherStats,
    graveyard: Graveyard,
    /// Storage reads for catching-up subscribers go to the archiver (None: read here).
    replay: Option<ReplayClient>,
    next_id: u64,
    next_publish_ns: u64,
}

impl Sender {
    /// `rings[i]` is partition slot `i` with durable positions `cells[i]`; the sender reads each
    /// from its tail. `slots_max` (>= rings.len()) is the room for partitions added at run time.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        port: SenderPort,
        rings: Vec<shm_ring::Ring>,
        cells: Vec<Arc<PartitionCells>>,
        slots_max: usize,
        subscribers_max: usize,
        session_timeout_ns: u64,
        commands: SpscConsumer<SenderCommand>,
        counters: Counters,
    ) -> Result<Sender, shm_ring::SubscriberAttachError> {
        assert_eq!(rings.len(), cells.len(), "one cell set per ring");
        let slots_max = slots_max.max(rings.len());
        let mut ring_subs = Vec::with_capacity(slots_max);
        for r in &rings {
            ring_subs.push(Some(r.subscriber(shm_ring::StartAt::Tail)?));
        }
        ring_subs.resize_with(slots_max, || None);
        let mut live_slots = Vec::with_capacity(slots_max);
        live_slots.extend(0..rings.len());
        let mut rings: Vec<_> = rings.into_iter().map(Some).collect();
        rings.resize_with(slots_max, || None);
        let mut cells: Vec<_> = cells.into_iter().map(Some).collect();
        cells.resize_with(slots_max, || None);
        Ok(Sender {
            port,
            rings,
            ring_subs,
            cells,
            live_slots,
            subscriptions: Vec::with_capacity(subscribers_max),
            subscribers_max,
            session_timeout_ns,
            commands: Some(commands),
            counters,
            out: Vec::with_capacity(FRAME_BYTES_MAX as usize),
            records: 0,
            replayed: 0,
            oversize: 0,
            back_pressured: 0,
            evicted: 0,
            dropped_frames: 0,
            lost: 0,
            catch_up_errors: 0,
            retired: PublisherStats::default(),
            graveyard: Graveyard::new(None),
            replay: None,
            next_id: 0,
            next_publish_ns: 0,
        })
    }

    /// Has the archiver do the storage reads of catching-up subscribers ([`crate::replay`]).
    pub fn with_replay(mut self, client: ReplayClient) -> Sender {
        self.replay = Some(client);
        self
    }

    /// Frees what the sender gives up on the conductor's thread (module docs).
    pub fn with_graveyard(mut self, queue: SpscProducer<Retired>) -> Sender {
        self.graveyard = Graveyard::new(Some(queue));
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.port.local_addr()
    }

    fn apply(&mut self, c: SenderCommand, now_ns: u64) {
        match c {
            SenderCommand::Add(sub) => self.add(sub, now_ns),
            SenderCommand::AddPartition {
                slot,
                ring,
                reader,
                cells,
            } => {
                assert!(
                    slot < self.rings.len(),
                    "conductor allocates slots in range"
                );
                self.rings[slot] = Some(ring);
                self.ring_subs[slot] = Some(*reader);
                self.cells[slot] = Some(cells);
                if !self.live_slots.contains(&slot) {
                    self.live_slots.push(slot);
                }
            }
            SenderCommand::RemovePartition { slot } => {
                if slot >= self.rings.len() {
                    return;
                }
                if let Some(r) = self.ring_subs[slot].take() {
                    self.graveyard.bury(Retired::RingReader(r));
                }
                if let Some(r) = self.rings[slot].take() {
                    self.graveyard.bury(Retired::Ring(r));
                }
                self.cells[slot] = None;
                self.live_slots.retain(|&s| s != slot);
                for s in self
                    .subscriptions
                    .iter_mut()
                    .filter(|s| s.partition_idx == slot)
                {
                    // The slot may be reused: this session reads nothing more and ends once
                    // what it was sent is acknowledged.
                    s.partition_idx = usize::MAX;
                    s.ending = true;
                    self.graveyard.bury_phase(&mut s.phase);
                    s.session.close();
                }
            }
        }
    }

    fn add(&mut self, mut sub: Box<Subscription>, now_ns: u64) {
        sub.last_heard_ns = now_ns;
        self.next_id += 1;
        sub.id = self.next_id;
        if sub.partition_idx >= self.rings.len() || self.rings[sub.partition_idx].is_none() {
            // Its partition was removed while the request travelled.
            self.evicted += 1;
            self.graveyard.bury(Retired::Subscription(sub));
            return;
        }
        if let Some(old) = self.subscriptions.iter_mut().find(|s| s.same_peer(&sub)) {
            if old.session.config().epoch == sub.session.config().epoch {
                // A repeated SUBSCRIBE (the subscriber has not seen our SETUP yet): keep the session.
                old.last_heard_ns = now_ns;
                self.graveyard.bury(Retired::Subscription(sub));
                return;
            }
            retire(&mut self.retired, &old.session.stats());
            let old = std::mem::replace(old, sub);
            self.graveyard.bury(Retired::Subscription(old));
        } else if self.subscriptions.len() < self.subscribers_max {
            self.subscriptions.push(sub);
        } else {
            self.evicted += 1;
            self.graveyard.bury(Retired::Subscription(sub));
        }
    }

    /// Log offset of ring offset `ring_offset` of slot `p` (ring offsets without storage).
    fn delta(&self, p: usize) -> u64 {
        self.cells[p]
            .as_ref()
            .map_or(0, |c| c.log_delta.load(Ordering::Relaxed))
    }

    /// Moves subscribers that are behind the live tail forward: from storage, then from a
    /// private ring reader, until they meet the partition's shared reader (then they are live).
    fn catch_up(&mut self, now_ns: u64) -> usize {
        let mut work = 0;
        for k in 0..self.subscriptions.len() {
            let s = &self.subscriptions[k];
            if s.ending || matches!(s.phase, Phase::Live) {
                continue;
            }
            let p = s.partition_idx;
            let part = PartitionView {
                delta: self.delta(p),
                shared_next: self.ring_subs[p].as_ref().map(|r| r.next_offset()),
                ring: self.rings[p].as_ref(),
            };
            let s = &mut self.subscriptions[k];
            let graveyard = &mut self.graveyard;
            let replay = self.replay.as_mut();
            match catch_up_one(s, now_ns, part, &mut self.replayed, graveyard, replay) {
                Ok(w) => work += w,
                Err(e) => end_catch_up(s, &e, graveyard, &mut self.catch_up_errors),
            }
        }
        work
    }

    /// Takes the archiver's answers to storage reads back into their subscriptions.
    fn take_replies(&mut self) -> usize {
        let Some(client) = self.replay.as_mut() else {
            return 0;
        };
        let (subs, graveyard) = (&mut self.subscriptions, &mut self.graveyard);
        let errors = &mut self.catch_up_errors;
        client.replies.drain(REPLAY_REPLIES_PER_CYCLE_MAX, |r| {
            let waiting = subs.iter().position(|s| {
                s.id == r.id && matches!(&s.phase, Phase::Storage(st) if st.io.is_none())
            });
            let retire = |graveyard: &mut Graveyard, reader, buf| {
                let phase = Phase::Storage(StorageRead::new(reader, buf));
                graveyard.bury(Retired::Phase(phase));
            };
            let Some(k) = waiting else {
                // Ended, evicted or moved on while the read was in flight.
                retire(graveyard, r.reader, r.buf);
                return;
            };
            let s = &mut subs[k];
            let result = match &mut s.phase {
                Phase::Storage(st) => {
                    st.io = Some((r.reader, r.buf));
                    st.apply(r.outcome)
                }
                _ => {
                    retire(graveyard, r.reader, r.buf);
                    Ok(())
                }
            };
            if let Err(e) = result {
                end_catch_up(s, &e, graveyard, errors);
            }
        })
    }

    /// Reads what every live subscriber of partition `p` has room for and offers it to them.
    fn pump_partition(&mut self, p: usize) -> usize {
        let mut limit = RING_RECORDS_PER_CYCLE_MAX;
        let mut any = false;
        for s in self
            .subscriptions
            .iter()
            .filter(|s| s.partition_idx == p && s.is_live())
        {
            any = true;
            limit = limit.min(s.room_records());
        }
        if self.ring_subs[p].is_none() {
            // Re-attach after an eviction or corruption (cold path).
            self.ring_subs[p] = self.rings[p]
                .as_ref()
                .and_then(|r| r.subscriber(shm_ring::StartAt::Tail).ok());
        }
        let Some(ring_sub) = self.ring_subs[p].as_mut() else {
            return 0;
        };
        // A subscriber reading the ring privately to catch up holds the shared reader back, as
        // a live one would: the shared reader never passes it, so it meets it and goes live.
        let shared_next = ring_sub.next_offset();
        for s in self.subscriptions.iter().filter(|s| s.partition_idx == p) {
            if let Phase::Ring { sub } = &s.phase {
                let ahead = sub.next_offset().saturating_sub(shared_next);
                limit = limit.min(usize::try_from(ahead).unwrap_or(usize::MAX));
            }
        }
        if limit == 0 {
            self.back_pressured += 1;
            ring_sub.keepalive();
            return 0;
        }
        let subs = &mut self.subscriptions;
        let (mut oversize, mut records) = (0u64, 0u64);
        let result = ring_sub.poll(
            |rec| {
                records += 1;
                if !any {
                    return;
                }
                for s in subs
                    .iter_mut()
                    .filter(|s| s.partition_idx == p && s.is_live())
                {
                    oversize += offer_at(s, rec.offset, rec.type_id, rec.payload);
                }
            },
            limit,
        );
        self.records += records;
        self.oversize += oversize;
        match result {
            Ok(poll) => {
                self.lost += poll.lost;
                poll.records
            }
            Err(_) => {
                self.lost += 1;
                self.ring_subs[p] = None;
                0
            }
        }
    }

    fn publish_stats(&self) {
        let mut s = self.retired;
        for sub in &self.subscriptions {
            retire(&mut s, &sub.session.stats());
        }
        let c = &self.counters;
        c.set(Counter::TxRecords, self.records);
        c.set(Counter::TxReplayRecords, self.replayed);
        c.set(Counter::TxDataFrames, s.data_frames);
        c.set(Counter::TxRetransmitFrames, s.retransmit_frames);
        c.set(Counter::TxNaksReceived, s.naks_received);
        c.set(Counter::TxStatusReceived, s.status_received);
        c.set(
            Counter::TxSubscribersActive,
            self.subscriptions.len() as u64,
        );
        c.set(Counter::TxSubscriberBackPressured, self.back_pressured);
        c.set(Counter::TxSubscribersEvicted, self.evicted);
        c.set(
            Counter::TxDropMalformed,
            self.dropped_frames + s.frames_dropped,
        );
        c.set(Counter::TxDropOversizeRecords, self.oversize);
        let p = self.port.stats();
        c.set(Counter::TxPortDatagrams, p.tx_datagrams);
        c.set(Counter::TxPortErrors, p.tx_errors + p.tx_queue_full);
        c.set(Counter::RingRecordsLost, self.lost);
        c.set(Counter::TxFreedOnAgent, self.graveyard.freed_here);
    }
}

/// Offers the record at ring offset `at` to `s` unless it was sent already; returns 1 when
/// the record is too large for the subscriber's frames (counted, skipped).
fn offer_at(s: &mut Subscription, at: u64, type_id: u16, payload: &[u8]) -> u64 {
    if s.next_ring.is_some_and(|n| at < n) {
        return 0; // already sent from storage or a private reader
    }
    match s.session.offer(type_id, payload) {
        Ok(_) => {
            s.next_ring = Some(at + 1);
            0
        }
        Err(NetOfferError::TooLarge { .. }) => {
            s.next_ring = Some(at + 1);
            1
        }
        // Room was checked by the caller; a closed session is being replaced.
        Err(
            NetOfferError::BackPressured | NetOfferError::Closed | NetOfferError::Refused { .. },
        ) => 0,
    }
}

/// What a catching-up subscriber needs of its partition.
struct PartitionView<'a> {
    /// Ring offset + delta = log offset.
    delta: u64,
    /// Next ring offset of the partition's shared (live) reader.
    shared_next: Option<u64>,
    ring: Option<&'a shm_ring::Ring>,
}

/// One catch-up step of a subscriber that is not live yet; returns work done.
fn catch_up_one(
    s: &mut Subscription,
    now_ns: u64,
    part: PartitionView<'_>,
    replayed: &mut u64,
    graveyard: &mut Graveyard,
    replay: Option<&mut ReplayClient>,
) -> Result<usize, String> {
    let PartitionView {
        delta,
        shared_next,
        ring,
    } = part;
    let room = s.room_records().min(RING_RECORDS_PER_CYCLE_MAX);
    // A storage batch (up to STAGE_RECORDS_MAX records) is asked for and sent only when the
    // window has room for it whole (a window smaller than that takes what fits); what does not
    // fit waits in the read buffer.
    let window =
        (s.session.config().buffer_bytes / record_bytes(s.session.payload_bytes_max())).max(1);
    let need = match s.phase {
        Phase::Storage(_) => STAGE_RECORDS_MAX
            .min(window)
            .min(RING_RECORDS_PER_CYCLE_MAX),
        _ => 1,
    };
    if room < need {
        return Ok(0);
    }
    let next_log = s.next_log;
    match &mut s.phase {
        Phase::Live => Ok(0),
        Phase::Storage(st) => {
            let Some((reader, buf)) = st.io.as_mut() else {
                return Ok(0); // the archiver is reading for it
            };
            let Some((start, end)) = st.ready else {
                let durable_end = reader.end_offset();
                let more = reader.next_offset() < durable_end
                    && st.tail_end.is_none_or(|t| durable_end > t);
                if more {
                    st.tail_end = None;
                    match replay {
                        Some(client) => {
                            let Some((reader, buf)) = st.io.take() else {
                                return Ok(0);
                            };
                            let id = s.id;
                            let request = ReplayRequest { id, reader, buf };
                            if let Err(back) = client.requests.offer(request) {
                                st.io = Some((back.reader, back.buf));
                                return Ok(0);
                            }
                        }
                        // No archiver to read for it (tests, invoker setups): read here.
                        None => {
                            let outcome = crate::replay::read_one(reader, buf);
                            st.apply(outcome)?;
                        }
                    }
                    return Ok(1);
                }
                // At the durable tail: the rest may still be in the ring.
                if now_ns < st.ring_retry_ns {
                    return Ok(0);
                }
                st.ring_retry_ns = now_ns.saturating_add(RING_RETRY_NS);
                let Some(ring) = ring else {
                    return Ok(0);
                };
                let Ok(sub) = ring.subscriber(shm_ring::StartAt::Earliest) else {
                    return Ok(0);
                };
                let next_ring = next_log.wrapping_sub(delta);
                if sub.next_offset() <= next_ring {
                    s.next_ring = Some(next_ring);
                    let storage =
                        std::mem::replace(&mut s.phase, Phase::Ring { sub: Box::new(sub) });
                    graveyard.bury(Retired::Phase(storage));
                    return Ok(1);
                }
                // Not durable yet and no longer in the ring: wait for storage.
                return Ok(0);
            };
            // Send what fits of the batch the buffer holds; the rest waits there.
            let batch = storage_nvme::codec::decode_batch(&buf.as_slice()[start..end])
                .map_err(|e| format!("a batch read back does not decode: {e}"))?;
            let (mut sent, mut full) = (0usize, false);
            for rec in batch.records() {
                if rec.offset < s.next_log {
                    continue;
                }
                if sent == room {
                    full = true;
                    break;
                }
                match s.session.offer(0, rec.payload) {
                    Ok(_) | Err(NetOfferError::TooLarge { .. }) => {
                        s.next_log = rec.offset + 1;
                        sent += 1;
                    }
                    Err(
                        NetOfferError::BackPressured
                        | NetOfferError::Closed
                        | NetOfferError::Refused { .. },
                    ) => {
                        full = true;
                        break;
                    }
                }
            }
            if !full {
                st.ready = None;
            }
            *replayed += sent as u64;
            Ok(sent.max(1))
        }
        Phase::Ring { sub } => {
            let Some(shared_next) = shared_next else {
                return Ok(0);
            };
            let behind = shared_next.saturating_sub(sub.next_offset());
            if behind == 0 {
                // Met the shared reader: from here on it feeds this subscriber (records below
                // next_ring are skipped there, so nothing is sent twice, nothing is skipped).
                graveyard.bury_phase(&mut s.phase);
                return Ok(1);
            }
            let limit = room.min(behind as usize);
            let mut offered = 0usize;
            let session = &mut s.session;
            // Entered from storage with next_ring set; straight from a SUBSCRIBE, from next_log
            // (an offset from before the ring's first record starts at the ring's oldest).
            let next = s.next_ring.get_or_insert(next_log.saturating_sub(delta));
            let poll = sub.poll(
                |rec| {
                    if rec.offset < *next {
                        return;
                    }
                    match session.offer(rec.type_id, rec.payload) {
                        Ok(_) | Err(NetOfferError::TooLarge { .. }) => {
                            *next = rec.offset + 1;
                            offered += 1;
                        }
                        Err(
                            NetOfferError::BackPressured
                            | NetOfferError::Closed
                            | NetOfferError::Refused { .. },
                        ) => {}
                    }
                },
                limit,
            );
            match poll {
                Ok(p) if p.lost == 0 => Ok(p.records.max(offered)),
                Ok(_) => Err("records lost while reading the ring".into()),
                Err(e) => Err(format!("ring: {e}")),
            }
        }
    }
}

/// Ends a subscription whose catch-up failed: it reads nothing more, its session closes.
fn end_catch_up(s: &mut Subscription, e: &str, graveyard: &mut Graveyard, errors: &mut u64) {
    *errors += 1;
    if errors.is_power_of_two() {
        let c = s.session.config();
        eprintln!(
            "memstreamer: remote subscriber {} of stream {} partition {}: catching up failed: {e}; the session ends",
            s.dst, c.stream_id, c.partition
        );
    }
    s.ending = true;
    s.partition_idx = usize::MAX;
    graveyard.bury_phase(&mut s.phase);
    s.session.close();
}

fn retire(total: &mut PublisherStats, s: &PublisherStats) {
    total.data_frames += s.data_frames;
    total.retransmit_frames += s.retransmit_frames;
    total.naks_received += s.naks_received;
    total.status_received += s.status_received;
    total.frames_dropped += s.frames_dropped;
}

impl Agent for Sender {
    fn do_work(&mut self, now_ns: u64) -> usize {
        let mut work = 0;
        if let Some(mut commands) = self.commands.take() {
            work += commands.drain(COMMANDS_PER_CYCLE_MAX, |c| self.apply(c, now_ns));
            self.commands = Some(commands);
        }

        let Sender {
            port,
            subscriptions,
            dropped_frames,
            ..
        } = self;
        work += port.poll_rx(RX_BATCH_MAX, &mut |src, datagram| {
            let Ok(h) = FrameHeader::decode(datagram) else {
                *dropped_frames += 1;
                return;
            };
            let found = subscriptions.iter_mut().find(|s| {
                let c = s.session.config();
                s.dst == src
                    && c.session_id == h.session_id
                    && c.stream_id == h.stream_id
                    && c.partition == h.partition
            });
            match found {
                Some(s) => {
                    s.last_heard_ns = now_ns;
                    s.session.handle(now_ns, datagram);
                }
                None => *dropped_frames += 1,
            }
        });

        work += self.take_replies();
        work += self.catch_up(now_ns);
        for k in 0..self.live_slots.len() {
            work += self.pump_partition(self.live_slots[k]);
        }

        for s in self.subscriptions.iter_mut() {
            for _ in 0..FRAMES_PER_SUBSCRIBER_CYCLE_MAX {
                if !s.session.poll_transmit(now_ns, &mut self.out) {
                    break;
                }
                debug_assert!(self.out.len() >= HEADER_BYTES);
                // A frame the port refuses is lost like on the wire; NAK or heartbeat recovers it.
                self.port.send(s.dst, s.dst_mac, &self.out);
                work += 1;
            }
        }
        self.port.flush_tx();

        let timeout = self.session_timeout_ns;
        let mut i = 0;
        while i < self.subscriptions.len() {
            let s = &self.subscriptions[i];
            // Closed by us (its partition went away) or by the subscriber (a refusal).
            let ended = s.session.is_closed();
            if ended || now_ns.saturating_sub(s.last_heard_ns) > timeout {
                let gone = self.subscriptions.swap_remove(i);
                retire(&mut self.retired, &gone.session.stats());
                self.graveyard.bury(Retired::Subscription(gone));
                // A session ended because its partition went away is not an eviction.
                self.evicted += u64::from(!ended);
            } else {
                i += 1;
            }
        }

        if now_ns >= self.next_publish_ns {
            self.publish_stats();
            self.next_publish_ns = now_ns + STATS_PUBLISH_INTERVAL_NS;
        }
        work
    }

    fn role(&self) -> &'static str {
        "sender"
    }

    fn on_close(&mut self) {
        self.publish_stats();
    }
}
