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
//! a subscriber that starts behind the live tail catches up from storage (a storage-nvme reader
//! of the partition's log, following its durable tail; the archiver does the reads,
//! [`crate::replay`], so the sender never waits on the disk), then from a private ring reader,
//! then live (the partition's shared reader, which never passes a private reader, so the two
//! meet). Which reader feeds it and which record it needs next is decided by the sans-IO
//! [`CatchUp`] machine ([`crate::catchup`]); the sender does the I/O it asks for. A private ring
//! reader that is overrun sends the subscriber back to storage (with a log) from the next record
//! it needs.
//!
//! The ring is read only as far as every subscriber of the partition has room in its retransmit
//! window (a slow subscriber back-pressures the ring, like any reliable ring subscriber); a
//! subscriber silent for `session_timeout_ns` is evicted.
//!
//! What the sender gives up — an ended subscription (its retransmit buffer), a finished catch-up
//! (storage reader, read buffer, private ring reader), a removed partition's ring mapping —
//! goes to the conductor to be freed there ([`crate::retire`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sdk::net::wire::{record_bytes, HEADER_BYTES};
use sdk::net::{NetOfferError, PublisherSession, PublisherStats};
use xdp_programs::abi_consts::FRAME_BYTES_MAX;
use xdp_programs::frame::FrameHeader;

use crate::agent::{Agent, SpscConsumer, SpscProducer};
use crate::archive::STAGE_RECORDS_MAX;
use crate::catchup::{CatchUp, Source};
use crate::counters::{Counter, Counters, PartitionCells};
use crate::net::SenderPort;
use crate::proxy::{NewSubscriber, SenderCommand, SubscriberStart};
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
/// Replies of the archiver's storage reads taken per duty cycle at most.
pub const REPLAY_REPLIES_PER_CYCLE_MAX: usize = 16;
/// Interval between copies of the sender's statistics into the shared counters (ns).
pub const STATS_PUBLISH_INTERVAL_NS: u64 = 1_000_000;

/// The I/O side of a subscriber's catch-up (the decisions are its [`CatchUp`]'s).
#[derive(Default)]
struct CatchUpIo {
    /// The partition's log reader and its read buffer (kept until the subscriber is live, so a
    /// ring overrun can go back to storage); None while the archiver reads for it.
    log: Option<(Box<storage_nvme::Reader>, Box<storage_nvme::AlignedBuf>)>,
    /// Bytes `start..end` of the buffer hold a batch not yet wholly sent.
    ready: Option<(usize, usize)>,
    /// Position the log reader at this log offset before the next read (after an overrun).
    seek: Option<u64>,
    /// The private ring reader.
    ring: Option<Box<shm_ring::Subscriber>>,
}

impl CatchUpIo {
    /// Retires what it holds (the subscriber is live, ending, or failed).
    fn retire(&mut self, graveyard: &mut Graveyard) {
        if let Some((reader, buf)) = self.log.take() {
            graveyard.bury_box(reader);
            graveyard.bury_box(buf);
        }
        if let Some(ring) = self.ring.take() {
            graveyard.bury_box(ring);
        }
        self.ready = None;
        self.seek = None;
    }

    /// Takes what a storage read found.
    fn apply(&mut self, cu: &mut CatchUp, outcome: ReplayOutcome) -> Result<(), String> {
        match outcome {
            ReplayOutcome::Batch { start, end } => self.ready = Some((start, end)),
            ReplayOutcome::AtTail { end } => cu.at_tail(end),
            ReplayOutcome::Failed(e) => return Err(e),
        }
        Ok(())
    }
}

/// One remote subscriber: the conductor's [`NewSubscriber`] (address, session), where it is.
struct Subscription {
    /// The sender's id for it (replies of the archiver's reads name it).
    id: u64,
    peer: Box<NewSubscriber>,
    /// Partition slot (usize::MAX once its partition went away).
    slot: usize,
    last_heard_ns: u64,
    cu: CatchUp,
    io: CatchUpIo,
    /// Its partition went away: finish the session (END_OF_SESSION), read nothing more.
    ending: bool,
}

impl Subscription {
    /// Takes the conductor's description; its start resources become the catch-up's I/O.
    fn new(id: u64, mut peer: Box<NewSubscriber>, now_ns: u64) -> Subscription {
        let mut io = CatchUpIo::default();
        let cu = match std::mem::replace(&mut peer.start, SubscriberStart::Live) {
            SubscriberStart::Live => CatchUp::live(),
            SubscriberStart::Storage { from, reader, buf } => {
                io.log = Some((reader, buf));
                CatchUp::from_storage(from)
            }
            SubscriberStart::Ring { from, reader } => {
                io.ring = Some(reader);
                CatchUp::from_ring(from)
            }
        };
        Subscription {
            id,
            slot: peer.slot,
            peer,
            last_heard_ns: now_ns,
            cu,
            io,
            ending: false,
        }
    }

    fn session(&self) -> &PublisherSession {
        &self.peer.session
    }

    fn free_bytes(&self) -> u64 {
        let session = self.session();
        let used = session.end_offset() - session.acked_offset();
        (session.config().buffer_bytes as u64).saturating_sub(used)
    }

    /// Records of the largest size that fit in the retransmit window now.
    fn room_records(&self) -> usize {
        let per_record = record_bytes(self.session().payload_bytes_max()) as u64;
        (self.free_bytes() / per_record) as usize
    }

    fn same_peer(&self, other: &NewSubscriber) -> bool {
        let (a, b) = (self.session().config(), other.session.config());
        self.peer.dst == other.dst
            && a.session_id == b.session_id
            && a.stream_id == b.stream_id
            && a.partition == b.partition
    }

    fn is_live(&self) -> bool {
        self.cu.source() == Source::Live && !self.ending
    }

    /// Ends it: it reads nothing more, its session closes once what was sent is acknowledged.
    fn end(&mut self, graveyard: &mut Graveyard) {
        self.ending = true;
        self.slot = usize::MAX;
        self.io.retire(graveyard);
        self.peer.session.close();
    }

    /// Retires everything it holds (it leaves the sender).
    fn retire(mut self, graveyard: &mut Graveyard) {
        self.io.retire(graveyard);
        graveyard.bury_box(self.peer);
    }
}

/// The sender agent.
pub struct Sender {
    port: SenderPort,
    rings: Vec<Option<shm_ring::Ring>>,
    ring_subs: Vec<Option<shm_ring::Subscriber>>,
    cells: Vec<Option<Arc<PartitionCells>>>,
    live_slots: Vec<usize>,
    /// At most `subscribers_max` (the capacity: adding one never allocates); each holds the
    /// box the conductor built ([`NewSubscriber`]), which travels whole.
    subscriptions: Vec<Subscription>,
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
                for s in self.subscriptions.iter_mut().filter(|s| s.slot == slot) {
                    // The slot may be reused: this session reads nothing more and ends once
                    // what it was sent is acknowledged.
                    s.end(&mut self.graveyard);
                }
            }
        }
    }

    fn add(&mut self, peer: Box<NewSubscriber>, now_ns: u64) {
        if peer.slot >= self.rings.len() || self.rings[peer.slot].is_none() {
            // Its partition was removed while the request travelled.
            self.evicted += 1;
            self.graveyard.bury_box(peer);
            return;
        }
        let epoch = peer.session.config().epoch;
        if let Some(old) = self.subscriptions.iter_mut().find(|s| s.same_peer(&peer)) {
            if old.session().config().epoch == epoch {
                // A repeated SUBSCRIBE (the subscriber has not seen our SETUP yet): keep the session.
                old.last_heard_ns = now_ns;
                self.graveyard.bury_box(peer);
                return;
            }
            retire(&mut self.retired, &old.session().stats());
            self.next_id += 1;
            let old = std::mem::replace(old, Subscription::new(self.next_id, peer, now_ns));
            old.retire(&mut self.graveyard);
        } else if self.subscriptions.len() < self.subscribers_max {
            self.next_id += 1;
            let sub = Subscription::new(self.next_id, peer, now_ns);
            self.subscriptions.push(sub);
        } else {
            self.evicted += 1;
            self.graveyard.bury_box(peer);
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
            if s.ending || s.cu.source() == Source::Live {
                continue;
            }
            let p = s.slot;
            let part = PartitionView {
                delta: self.delta(p),
                shared_next: self.ring_subs[p].as_ref().map(|r| r.next_offset()),
                ring: self.rings[p].as_ref(),
            };
            let s = &mut self.subscriptions[k];
            let ctx = CatchUpCtx {
                now_ns,
                room: s.room_records().min(RING_RECORDS_PER_CYCLE_MAX),
                replayed: &mut self.replayed,
                graveyard: &mut self.graveyard,
                replay: self.replay.as_mut(),
            };
            match catch_up_one(s, part, ctx) {
                Ok(w) => work += w,
                Err(e) => end_catch_up(s, &e, &mut self.graveyard, &mut self.catch_up_errors),
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
                s.id == r.id && s.cu.source() == Source::Storage && s.io.log.is_none()
            });
            let Some(k) = waiting else {
                // Ended, evicted or moved on while the read was in flight.
                graveyard.bury_box(r.reader);
                graveyard.bury_box(r.buf);
                return;
            };
            let s = &mut subs[k];
            s.io.log = Some((r.reader, r.buf));
            if let Err(e) = s.io.apply(&mut s.cu, r.outcome) {
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
            .filter(|s| s.slot == p && s.is_live())
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
        for s in self.subscriptions.iter().filter(|s| s.slot == p) {
            if let (Source::Ring, Some(sub)) = (s.cu.source(), &s.io.ring) {
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
                for s in subs.iter_mut().filter(|s| s.slot == p && s.is_live()) {
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
            retire(&mut s, &sub.session().stats());
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
    if !s.cu.admit_ring(at) {
        return 0; // already sent from storage or a private reader
    }
    match s.peer.session.offer(type_id, payload) {
        Ok(_) => {
            s.cu.sent_ring(at);
            0
        }
        Err(NetOfferError::TooLarge { .. }) => {
            s.cu.sent_ring(at);
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

/// Where a catch-up step sends records and retires what it gives up.
struct CatchUpCtx<'a> {
    now_ns: u64,
    /// Records the subscriber's window takes now (at most a cycle's worth).
    room: usize,
    replayed: &'a mut u64,
    graveyard: &'a mut Graveyard,
    /// Storage reads go to the archiver (None: read here, tests and invoker setups).
    replay: Option<&'a mut ReplayClient>,
}

/// One catch-up step of a subscriber that is not live yet; returns work done.
fn catch_up_one(
    s: &mut Subscription,
    part: PartitionView<'_>,
    mut ctx: CatchUpCtx<'_>,
) -> Result<usize, String> {
    // A storage batch (up to STAGE_RECORDS_MAX records) is asked for and sent only when the
    // window has room for it whole (a window smaller than that takes what fits); what does not
    // fit waits in the read buffer.
    let session = s.session();
    let window = (session.config().buffer_bytes / record_bytes(session.payload_bytes_max())).max(1);
    let need = match s.cu.source() {
        Source::Storage => STAGE_RECORDS_MAX
            .min(window)
            .min(RING_RECORDS_PER_CYCLE_MAX),
        _ => 1,
    };
    if ctx.room < need {
        return Ok(0);
    }
    match s.cu.source() {
        Source::Live => Ok(0),
        Source::Storage => storage_step(s, &part, &mut ctx),
        Source::Ring => ring_step(s, &part, &mut ctx),
    }
}

/// Storage: send what the buffer holds, else read the next batch, else (at the durable tail)
/// look for the next record in the ring.
fn storage_step(
    s: &mut Subscription,
    part: &PartitionView<'_>,
    ctx: &mut CatchUpCtx<'_>,
) -> Result<usize, String> {
    let Some((reader, _)) = s.io.log.as_ref() else {
        return Ok(0); // the archiver is reading for it
    };
    if let Some((start, end)) = s.io.ready {
        return send_batch(s, start, end, ctx);
    }
    let (next, durable_end) = (reader.next_offset(), reader.end_offset());
    if s.io.seek.is_some() || s.cu.wants_read(next, durable_end) {
        read_next(s, ctx)?;
        return Ok(1);
    }
    if !s.cu.look_at_ring(ctx.now_ns) {
        return Ok(0);
    }
    let Some(ring) = part.ring else {
        return Ok(0);
    };
    let Ok(sub) = ring.subscriber(shm_ring::StartAt::Earliest) else {
        return Ok(0);
    };
    if !s.cu.ring_opened(sub.next_offset(), part.delta) {
        // Not durable yet and no longer in the ring: wait for storage.
        return Ok(0);
    }
    // The log reader stays: an overrun of the ring reader goes back to storage.
    s.io.ring = Some(Box::new(sub));
    Ok(1)
}

/// Reads the next batch of the subscriber's log: at the archiver when there is one.
fn read_next(s: &mut Subscription, ctx: &mut CatchUpCtx<'_>) -> Result<(), String> {
    let seek = s.io.seek.take();
    match ctx.replay.as_deref_mut() {
        Some(client) => {
            let Some((reader, buf)) = s.io.log.take() else {
                return Ok(());
            };
            let request = ReplayRequest {
                id: s.id,
                reader,
                buf,
                seek,
            };
            if let Err(back) = client.requests.offer(request) {
                s.io.log = Some((back.reader, back.buf));
                s.io.seek = back.seek;
            }
            Ok(())
        }
        None => {
            let Some((reader, buf)) = s.io.log.as_mut() else {
                return Ok(());
            };
            let outcome = crate::replay::read_one(reader, buf, seek);
            s.io.apply(&mut s.cu, outcome)
        }
    }
}

/// Sends what fits of the batch in bytes `start..end` of the read buffer; the rest waits there.
fn send_batch(
    s: &mut Subscription,
    start: usize,
    end: usize,
    ctx: &mut CatchUpCtx<'_>,
) -> Result<usize, String> {
    let Subscription { io, cu, peer, .. } = s;
    let Some((_, buf)) = io.log.as_ref() else {
        return Ok(0);
    };
    let bytes = buf
        .as_slice()
        .get(start..end)
        .ok_or("a batch outside the read buffer")?;
    let batch = storage_nvme::codec::decode_batch(bytes)
        .map_err(|e| format!("a batch read back does not decode: {e}"))?;
    let (mut sent, mut full) = (0usize, false);
    for rec in batch.records() {
        if !cu.admit_log(rec.offset) {
            continue;
        }
        if sent == ctx.room {
            full = true;
            break;
        }
        match peer.session.offer(0, rec.payload) {
            Ok(_) | Err(NetOfferError::TooLarge { .. }) => {
                cu.sent_log(rec.offset);
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
        io.ready = None;
    }
    *ctx.replayed += sent as u64;
    Ok(sent.max(1))
}

/// Ring: read the private reader up to the shared one; once they meet, the subscriber is live.
fn ring_step(
    s: &mut Subscription,
    part: &PartitionView<'_>,
    ctx: &mut CatchUpCtx<'_>,
) -> Result<usize, String> {
    let Some(shared_next) = part.shared_next else {
        return Ok(0);
    };
    let Subscription { io, cu, peer, .. } = s;
    let Some(sub) = io.ring.as_mut() else {
        return Err("no ring reader".into());
    };
    // From storage, where storage stopped; straight from a SUBSCRIBE, the asked-for offset
    // (an offset from before the ring's first record starts at the ring's oldest).
    cu.ring_start(part.delta);
    if cu.met_shared(sub.next_offset(), shared_next) {
        // From here on the shared reader feeds it (records below next_ring are skipped there).
        io.retire(ctx.graveyard);
        return Ok(1);
    }
    let limit = ctx.room.min((shared_next - sub.next_offset()) as usize);
    let (mut offered, mut expected, mut gap) = (0usize, sub.next_offset(), false);
    let session = &mut peer.session;
    let poll = sub.poll(
        |rec| {
            // A record after a gap is never sent: the lost ones come from storage first.
            gap |= rec.offset != expected;
            expected = rec.offset.wrapping_add(1);
            if gap || !cu.admit_ring(rec.offset) {
                return;
            }
            match session.offer(rec.type_id, rec.payload) {
                Ok(_) | Err(NetOfferError::TooLarge { .. }) => {
                    cu.sent_ring(rec.offset);
                    offered += 1;
                }
                Err(_) => {}
            }
        },
        limit,
    );
    match poll {
        Ok(p) if p.lost == 0 && !gap => Ok(p.records.max(offered)),
        _ => ring_lost(s, part.delta, ctx.graveyard),
    }
}

/// The private ring reader was overrun: back to storage from the next record it needs (with a
/// log), or the catch-up ends.
fn ring_lost(s: &mut Subscription, delta: u64, graveyard: &mut Graveyard) -> Result<usize, String> {
    if let Some(ring) = s.io.ring.take() {
        graveyard.bury_box(ring);
    }
    let from = s.cu.ring_lost(delta).map_err(|e| e.to_string())?;
    if s.io.log.is_none() {
        return Err("the ring overran the subscriber and its log reader is gone".into());
    }
    s.io.ready = None;
    s.io.seek = Some(from);
    Ok(1)
}

/// Ends a subscription whose catch-up failed: it reads nothing more, its session closes.
fn end_catch_up(s: &mut Subscription, e: &str, graveyard: &mut Graveyard, errors: &mut u64) {
    *errors += 1;
    if errors.is_power_of_two() {
        let c = s.session().config();
        eprintln!(
            "memstreamer: remote subscriber {} of stream {} partition {}: catching up failed: {e}; the session ends",
            s.peer.dst, c.stream_id, c.partition
        );
    }
    s.end(graveyard);
}

fn retire(total: &mut PublisherStats, s: &PublisherStats) {
    total.data_frames += s.data_frames;
    total.retransmit_frames += s.retransmit_frames;
    total.naks_received += s.naks_received;
    total.status_received += s.status_received;
    total.frames_dropped += s.frames_dropped;
}

impl Sender {
    /// Hands the subscribers' STATUS and NAK frames to their sessions.
    fn receive(&mut self, now_ns: u64) -> usize {
        let Sender {
            port,
            subscriptions,
            dropped_frames,
            ..
        } = self;
        port.poll_rx(RX_BATCH_MAX, &mut |src, datagram| {
            let Ok(h) = FrameHeader::decode(datagram) else {
                *dropped_frames += 1;
                return;
            };
            let found = subscriptions.iter_mut().find(|s| {
                let c = s.session().config();
                s.peer.dst == src
                    && c.session_id == h.session_id
                    && c.stream_id == h.stream_id
                    && c.partition == h.partition
            });
            match found {
                Some(s) => {
                    s.last_heard_ns = now_ns;
                    s.peer.session.handle(now_ns, datagram);
                }
                None => *dropped_frames += 1,
            }
        })
    }

    /// Sends what every session has due (DATA, retransmits, SETUP, heartbeats).
    fn transmit(&mut self, now_ns: u64) -> usize {
        let mut work = 0;
        for s in self.subscriptions.iter_mut() {
            for _ in 0..FRAMES_PER_SUBSCRIBER_CYCLE_MAX {
                if !s.peer.session.poll_transmit(now_ns, &mut self.out) {
                    break;
                }
                debug_assert!(self.out.len() >= HEADER_BYTES);
                // A frame the port refuses is lost like on the wire; NAK or heartbeat recovers it.
                self.port.send(s.peer.dst, s.peer.dst_mac, &self.out);
                work += 1;
            }
        }
        self.port.flush_tx();
        work
    }

    /// Removes ended sessions and subscribers silent for `session_timeout_ns`.
    fn reap(&mut self, now_ns: u64) {
        let timeout = self.session_timeout_ns;
        let mut i = 0;
        while i < self.subscriptions.len() {
            let s = &self.subscriptions[i];
            // Closed by us (its partition went away) or by the subscriber (a refusal).
            let ended = s.session().is_closed();
            if ended || now_ns.saturating_sub(s.last_heard_ns) > timeout {
                let gone = self.subscriptions.swap_remove(i);
                retire(&mut self.retired, &gone.session().stats());
                gone.retire(&mut self.graveyard);
                // A session ended because its partition went away is not an eviction.
                self.evicted += u64::from(!ended);
            } else {
                i += 1;
            }
        }
    }
}

impl Agent for Sender {
    fn do_work(&mut self, now_ns: u64) -> usize {
        let mut work = 0;
        if let Some(mut commands) = self.commands.take() {
            work += commands.drain(COMMANDS_PER_CYCLE_MAX, |c| self.apply(c, now_ns));
            self.commands = Some(commands);
        }
        work += self.receive(now_ns);
        work += self.take_replies();
        work += self.catch_up(now_ns);
        for k in 0..self.live_slots.len() {
            work += self.pump_partition(self.live_slots[k]);
        }
        work += self.transmit(now_ns);
        self.reap(now_ns);
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

#[cfg(test)]
mod tests;
