//! The receiver agent: network port RX -> [`SessionTable`] (decode, gap detection, epochs) -> the
//! partition's shm ring; sends the NAK and STATUS frames the table produces; hands subscribe
//! requests to the conductor.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use xdp_programs::abi_consts::FRAME_BYTES_MAX;

use crate::agent::{Agent, CommandQueue, SpscConsumer, SpscProducer};
use crate::counters::{Counter, Counters, PartitionCells};
use crate::net::NetPort;
use crate::proxy::{ConductorCommand, ReceiverCommand};
use crate::replication::FollowerFetch;
use crate::retire::{Graveyard, Retired};
use crate::session::{AppendRefusal, ReceiverStats, RecordSink, SessionTable};

/// Frames sent per duty cycle at most (NAK + STATUS).
pub const TX_FRAMES_PER_CYCLE_MAX: usize = 64;
/// Interval between copies of the receiver's statistics into the shared counters (ns).
pub const STATS_PUBLISH_INTERVAL_NS: u64 = 1_000_000;

/// Appends records to the partitions' rings (index = the node's partition slot).
pub struct RingSink {
    rings: Vec<Option<shm_ring::Ring>>,
    publishers: Vec<Option<shm_ring::Publisher>>,
    evictions: u64,
}

impl RingSink {
    /// One publisher per ring; `rings[i]` belongs to partition slot `i`.
    pub fn new(rings: Vec<shm_ring::Ring>) -> Result<RingSink, shm_ring::PublisherAttachError> {
        let n = rings.len();
        Self::with_slots(rings, n)
    }

    /// Like [`RingSink::new`] with room for `slots_max` slots (partitions added at run time).
    pub fn with_slots(
        rings: Vec<shm_ring::Ring>,
        slots_max: usize,
    ) -> Result<RingSink, shm_ring::PublisherAttachError> {
        let slots_max = slots_max.max(rings.len());
        let mut publishers = Vec::with_capacity(slots_max);
        for r in &rings {
            publishers.push(Some(r.publisher()?));
        }
        publishers.resize_with(slots_max, || None);
        let mut rings: Vec<_> = rings.into_iter().map(Some).collect();
        rings.resize_with(slots_max, || None);
        Ok(RingSink {
            rings,
            publishers,
            evictions: 0,
        })
    }

    /// Serves slot `slot` with `ring` from now on (cold path: the conductor attached `publisher`).
    fn set(&mut self, slot: usize, ring: shm_ring::Ring, publisher: shm_ring::Publisher) {
        self.rings[slot] = Some(ring);
        self.publishers[slot] = Some(publisher);
    }

    /// Empties slot `slot`; its handles go to `graveyard`.
    fn clear(&mut self, slot: usize, graveyard: &mut Graveyard) {
        if let Some(p) = self.publishers[slot].take() {
            graveyard.bury(Retired::RingPublisher(p));
        }
        if let Some(r) = self.rings[slot].take() {
            graveyard.bury(Retired::Ring(r));
        }
    }
}

impl RecordSink for RingSink {
    #[inline]
    fn append(
        &mut self,
        partition: usize,
        record_type: u16,
        payload: &[u8],
    ) -> Result<u64, AppendRefusal> {
        let Some(slot) = self.publishers.get_mut(partition) else {
            return Err(AppendRefusal::BackPressured);
        };
        if slot.is_none() {
            // Re-attach after an eviction (cold path).
            *slot = self
                .rings
                .get(partition)
                .and_then(Option::as_ref)
                .and_then(|r| r.publisher().ok());
        }
        let Some(publisher) = slot.as_mut() else {
            return Err(AppendRefusal::BackPressured);
        };
        match publisher.offer_typed(record_type, payload) {
            Ok(offset) => Ok(offset),
            Err(shm_ring::OfferError::BackPressured) => Err(AppendRefusal::BackPressured),
            Err(shm_ring::OfferError::PublisherEvicted) => {
                self.evictions += 1;
                *slot = None;
                Err(AppendRefusal::BackPressured)
            }
            // The configured rings and the conductor's run-time attach both check that a ring
            // takes the largest frame, but a ring is another process's file: never trust it.
            Err(shm_ring::OfferError::MessageTooLarge { .. }) => Err(AppendRefusal::TooLarge),
        }
    }
}

/// Partition commands handled per duty cycle at most.
pub const PARTITION_COMMANDS_PER_CYCLE_MAX: usize = 8;

/// The receiver agent.
pub struct Receiver {
    port: NetPort,
    table: SessionTable,
    sink: RingSink,
    counters: Counters,
    conductor: CommandQueue<ConductorCommand>,
    partitions: Option<SpscConsumer<ReceiverCommand>>,
    /// Per partition slot: the archiver's durable positions (None: slot unused).
    cells: Vec<Option<Arc<PartitionCells>>>,
    /// Slots in use, so a duty cycle touches only live partitions.
    live_slots: Vec<usize>,
    ring_marks: Vec<u64>,
    archiving: bool,
    rx_batch_max: usize,
    out: Vec<u8>,
    pending_tx: Option<SocketAddr>,
    graveyard: Graveyard,
    next_publish_ns: u64,
    /// Per partition slot: the leader this node follows for it (#11), if any.
    follows: Vec<Option<Box<FollowerFetch>>>,
    /// Slots with a leader to follow.
    follow_slots: Vec<usize>,
    /// FETCHes and REPORTs sent for leaders no longer followed.
    follow_sent_before: (u64, u64),
}

impl Receiver {
    /// `sink` and `table` hold the configured partitions as slots `0..cells.len()` and room for
    /// `sink`'s slot count in total; `cells[i]` are slot i's durable positions.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        port: NetPort,
        table: SessionTable,
        sink: RingSink,
        cells: Vec<Arc<PartitionCells>>,
        counters: Counters,
        conductor: CommandQueue<ConductorCommand>,
        archiving: bool,
        rx_batch_max: usize,
    ) -> Receiver {
        for ring in sink.rings.iter().flatten() {
            assert!(
                ring.max_payload_len() >= FRAME_BYTES_MAX as usize,
                "ring too small for a frame"
            );
        }
        let slots_max = sink.rings.len();
        let mut live_slots = Vec::with_capacity(slots_max);
        live_slots.extend(0..cells.len());
        let mut cells: Vec<_> = cells.into_iter().map(Some).collect();
        cells.resize_with(slots_max, || None);
        Receiver {
            port,
            table,
            sink,
            counters,
            conductor,
            partitions: None,
            cells,
            live_slots,
            ring_marks: vec![0; slots_max],
            archiving,
            rx_batch_max,
            out: Vec::with_capacity(FRAME_BYTES_MAX as usize),
            pending_tx: None,
            graveyard: Graveyard::new(None),
            next_publish_ns: 0,
            follows: (0..slots_max).map(|_| None).collect(),
            follow_slots: Vec::with_capacity(slots_max),
            follow_sent_before: (0, 0),
        }
    }

    /// Frees what the receiver gives up on the conductor's thread ([`crate::retire`]).
    pub fn with_graveyard(mut self, queue: SpscProducer<Retired>) -> Self {
        self.graveyard = Graveyard::new(Some(queue));
        self
    }

    /// Takes partitions made live (or removed) at run time from the conductor.
    pub fn with_partition_commands(mut self, commands: SpscConsumer<ReceiverCommand>) -> Self {
        self.partitions = Some(commands);
        self
    }

    fn apply(&mut self, c: ReceiverCommand) {
        match c {
            ReceiverCommand::Add {
                slot,
                stream_id,
                partition,
                ring,
                publisher,
                cells,
            } => {
                assert!(
                    slot < self.cells.len(),
                    "conductor allocates slots in range"
                );
                if !self.table.add_partition(stream_id, partition, slot) {
                    self.graveyard.bury(Retired::RingPublisher(publisher));
                    self.graveyard.bury(Retired::Ring(ring));
                    return;
                }
                self.ring_marks[slot] = cells.durable_ring_mark.load(Ordering::Acquire);
                self.sink.set(slot, ring, publisher);
                self.cells[slot] = Some(cells);
                if !self.live_slots.contains(&slot) {
                    self.live_slots.push(slot);
                }
            }
            ReceiverCommand::Remove {
                slot,
                stream_id,
                partition,
            } => {
                self.table.remove_partition(stream_id, partition);
                self.set_follow(slot, None);
                if slot < self.cells.len() {
                    self.sink.clear(slot, &mut self.graveyard);
                    self.cells[slot] = None;
                    self.live_slots.retain(|&s| s != slot);
                }
            }
            ReceiverCommand::Follow { slot, follow } => self.set_follow(slot, follow),
        }
    }

    /// Follows a leader for `slot` from now on, or stops (the old state goes to the graveyard).
    fn set_follow(&mut self, slot: usize, follow: Option<Box<FollowerFetch>>) {
        let Some(entry) = self.follows.get_mut(slot) else {
            return;
        };
        if let Some(old) = entry.take() {
            let (f, r) = old.sent();
            self.follow_sent_before.0 += f;
            self.follow_sent_before.1 += r;
            self.graveyard.bury_box(old);
        }
        self.follow_slots.retain(|&s| s != slot);
        self.table.set_replica_gate(slot, None);
        if let Some(cells) = &self.cells[slot] {
            cells.replica_connected.store(0, Ordering::Relaxed);
        }
        if follow.is_some() {
            self.follow_slots.push(slot);
        }
        *entry = follow;
    }

    /// Sends the FETCH and REPORT frames due for the partitions this node follows (#11).
    fn follow_leaders(&mut self, now_ns: u64) -> usize {
        let mut work = 0;
        for &slot in &self.follow_slots {
            let (Some(Some(f)), Some(Some(cells)), Some(Some(ring))) = (
                self.follows.get_mut(slot),
                self.cells.get(slot),
                self.sink.rings.get(slot),
            ) else {
                continue;
            };
            let (stream_id, partition) = f.partition_key();
            let alive = self
                .table
                .expected_offset(stream_id, partition, f.session_id())
                .is_some();
            cells
                .replica_connected
                .store(u64::from(alive), Ordering::Relaxed);
            // Ring offset + delta = log offset (the archiver appends the ring in order).
            let received = ring
                .tail()
                .1
                .wrapping_add(cells.log_delta.load(Ordering::Relaxed));
            let durable = if self.archiving {
                cells.durable_records.load(Ordering::Relaxed)
            } else {
                0
            };
            let polled = f.poll(now_ns, alive, (received, durable), &mut self.out);
            // Only the leader's session of the latest FETCH may open (an older incarnation
            // would append from where it was, duplicating records).
            // Before the first FETCH (incarnation 0) nothing may open.
            let gate = Some((f.session_id(), f.fetch_epoch()));
            self.table.set_replica_gate(slot, gate);
            if let Some(dst) = polled {
                // A frame the port refuses is counted there (TX queue full); the next poll
                // sends a fresh one.
                if self.port.send(dst, &self.out) {
                    work += 1;
                }
            }
        }
        work
    }

    /// FETCHes and REPORTs sent by this node as a follower, over every followed partition.
    fn follow_sent(&self) -> (u64, u64) {
        self.follows
            .iter()
            .flatten()
            .map(|f| f.sent())
            .fold(self.follow_sent_before, |a, b| (a.0 + b.0, a.1 + b.1))
    }

    pub fn describe(&self) -> String {
        self.port.describe()
    }

    fn publish_stats(&self) {
        let s: &ReceiverStats = self.table.stats();
        let c = &self.counters;
        for (counter, v) in [
            (Counter::RxFramesAccepted, s.frames_accepted),
            (Counter::RxRecordsAppended, s.records_appended),
            (Counter::RxBytesAppended, s.bytes_appended),
            (Counter::RxDropMalformed, s.drop_malformed),
            (Counter::RxDropBadBody, s.drop_bad_body),
            (Counter::RxDropUnknownStream, s.drop_unknown_stream),
            (Counter::RxDropUnknownSession, s.drop_unknown_session),
            (Counter::RxDropStaleEpoch, s.drop_stale_epoch),
            (Counter::RxDropSessionConflict, s.drop_session_conflict),
            (Counter::RxDropDuplicate, s.drop_duplicate),
            (Counter::RxDropOutOfOrder, s.drop_out_of_order),
            (Counter::RxDropOutOfWindow, s.drop_out_of_window),
            (Counter::RxDropSessionsFull, s.drop_sessions_full),
            (Counter::RxDropUnexpectedType, s.drop_unexpected_type),
            (
                Counter::RxDropSubscribeQueueFull,
                s.drop_subscribe_queue_full,
            ),
            (Counter::RxRingBackPressured, s.ring_back_pressured),
            (Counter::RxDropRecordTooLarge, s.drop_record_too_large),
            (Counter::RxNaksSent, s.naks_sent),
            (Counter::RxStatusSent, s.status_sent),
            (
                Counter::RxSessionsActive,
                self.table.sessions_active() as u64,
            ),
            (Counter::RxSessionsOpened, s.sessions_opened),
            (Counter::RxSessionsClosed, s.sessions_closed),
            (Counter::RxSessionsTimedOut, s.sessions_timed_out),
            (Counter::RxSubscribeRequests, s.subscribe_requests),
            (Counter::ReplFramesDropped, s.drop_replica),
            (Counter::RxFreedOnAgent, self.graveyard.freed_here),
        ] {
            c.set(counter, v);
        }
        let p = self.port.stats();
        c.set(Counter::PortRxDatagrams, p.rx_datagrams);
        c.set(Counter::PortRxTruncated, p.rx_truncated);
        c.set(Counter::PortRxErrors, p.rx_errors);
        c.set(Counter::PortTxDatagrams, p.tx_datagrams);
        c.set(Counter::PortTxErrors, p.tx_errors);
        c.set(Counter::PortTxQueueFull, p.tx_queue_full);
        let (fetches, reports) = self.follow_sent();
        c.set(Counter::ReplFetchesSent, fetches);
        c.set(Counter::ReplReportsSent, reports);
        if let Some(n) = self.port.nic_stats() {
            for (counter, v) in [
                (Counter::NicRxPackets, n.rx_packets),
                (Counter::NicTxPackets, n.tx_packets),
                (Counter::NicRxMissed, n.rx_missed),
                (Counter::NicRxErrors, n.rx_errors),
                (Counter::NicRxNoMbuf, n.rx_nombuf),
                (Counter::NicTxErrors, n.tx_errors),
                (Counter::MbufPoolInUse, n.mbufs_in_use),
                (Counter::MbufPoolSize, n.mbufs),
                (Counter::NicRxFeedbackDropped, n.feedback_dropped),
                (Counter::NicTxNoMbuf, n.tx_no_mbuf),
            ] {
                c.set(counter, v);
            }
        }
    }
}

impl Agent for Receiver {
    fn do_work(&mut self, now_ns: u64) -> usize {
        let Receiver {
            port, table, sink, ..
        } = self;
        let mut work = port.poll_rx(self.rx_batch_max, &mut |src, datagram| {
            table.handle(now_ns, src, datagram, sink)
        });

        let conductor = &self.conductor;
        let counters = &self.counters;
        self.table.drain_subscribes(|request| {
            if conductor
                .offer(ConductorCommand::Subscribe(request))
                .is_err()
            {
                counters.add(Counter::ConductorCommandsDropped, 1);
            }
        });
        self.table.drain_replica(|request| {
            if conductor.offer(ConductorCommand::Replica(request)).is_err() {
                counters.add(Counter::ConductorCommandsDropped, 1);
            }
        });

        if let Some(mut commands) = self.partitions.take() {
            work += commands.drain(PARTITION_COMMANDS_PER_CYCLE_MAX, |c| self.apply(c));
            self.partitions = Some(commands);
        }

        if self.archiving {
            for &slot in &self.live_slots {
                if let Some(cells) = &self.cells[slot] {
                    // Acquire pairs with the archiver's Release store of the mark (and the
                    // conductor's of the replication gate).
                    let durable = cells.durable_ring_mark.load(Ordering::Acquire);
                    let committed = cells.commit_ring_mark.load(Ordering::Acquire);
                    self.ring_marks[slot] = durable.min(committed);
                }
            }
        }
        if self.pending_tx.is_none() {
            // `out` is free (a refused frame waits in it otherwise).
            work += self.follow_leaders(now_ns);
        }
        let marks = self.archiving.then_some(self.ring_marks.as_slice());
        for _ in 0..TX_FRAMES_PER_CYCLE_MAX {
            // A frame the port refused last cycle goes first.
            let dst = match self.pending_tx.take() {
                Some(dst) => dst,
                None => match self.table.poll_transmit(now_ns, marks, &mut self.out) {
                    Some(dst) => dst,
                    None => break,
                },
            };
            if !self.port.send(dst, &self.out) {
                self.pending_tx = Some(dst);
                break;
            }
            work += 1;
        }
        self.port.flush_tx();

        if now_ns >= self.next_publish_ns {
            self.publish_stats();
            self.next_publish_ns = now_ns + STATS_PUBLISH_INTERVAL_NS;
        }
        work
    }

    fn role(&self) -> &'static str {
        "receiver"
    }

    fn on_close(&mut self) {
        self.publish_stats();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use sdk::net::{NetOfferError, PublisherConfig, UdpPublisher};

    use crate::agent::spsc;
    use crate::net::udp::UdpPort;
    use crate::session::{SessionConfig, SessionTable};

    /// Duty cycles a test runs at most (each is non-blocking).
    const CYCLES_MAX: usize = 200_000;

    /// A receiver on loopback with no configured partition and room for one added at run time.
    fn receiver() -> (Receiver, SpscProducer<ReceiverCommand>, Counters) {
        let port = UdpPort::bind("127.0.0.1:0".parse().unwrap(), 32, 64).unwrap();
        let cfg = SessionConfig {
            sessions_max: 4,
            window_bytes: 1 << 16,
            nak_delay_ns: 1_000_000,
            nak_retry_ns: 1_000_000,
            status_interval_ns: 1_000_000,
            session_timeout_ns: 10_000_000_000,
            receiver_id: 1,
        };
        let counters = Counters::new(&[]);
        let (tx, rx) = spsc(4);
        let receiver = Receiver::new(
            NetPort::Udp(port),
            SessionTable::with_slots(cfg, &[], 1),
            RingSink::with_slots(Vec::new(), 1).unwrap(),
            Vec::new(),
            counters.clone(),
            CommandQueue::new(4),
            false,
            32,
        )
        .with_partition_commands(rx);
        (receiver, tx, counters)
    }

    /// A partition made live at run time whose ring an SDK client created small: a remote
    /// record larger than the ring takes is a counted drop and the publisher sees a refusal;
    /// the data plane does not panic.
    #[test]
    fn a_record_too_large_for_a_run_time_ring_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = sdk::Context::builder()
            .dir(dir.path())
            .capacity_bytes(shm_ring::RING_CAPACITY_MIN)
            .build();
        let _client = ctx.publisher(7, 0).unwrap();
        let ring = shm_ring::Ring::open(&sdk::ring_name(7, 0), Some(dir.path())).unwrap();
        let big = ring.max_payload_len() + 1;
        let (mut receiver, mut tx, counters) = receiver();
        let publisher = ring.publisher().unwrap();
        let add = ReceiverCommand::Add {
            slot: 0,
            stream_id: 7,
            partition: 0,
            ring,
            publisher,
            cells: Arc::new(PartitionCells::default()),
        };
        assert!(tx.offer(add).is_ok());
        let node = receiver.port.local_addr();
        let mut p = UdpPublisher::new(
            "127.0.0.1:0".parse().unwrap(),
            node,
            PublisherConfig::new(7, 0, 3, "test"),
        )
        .unwrap();
        assert!(p.offer(1, b"small").is_ok());
        assert!(p.offer(1, &vec![7u8; big]).is_ok());
        for _ in 0..CYCLES_MAX {
            p.do_work();
            receiver.do_work(1);
            if p.session().is_closed() {
                break;
            }
        }
        receiver.publish_stats();
        assert_eq!(counters.get(Counter::RxRecordsAppended), 1, "the small one");
        assert_eq!(counters.get(Counter::RxDropRecordTooLarge), 1);
        assert_eq!(
            p.offer(1, b"after"),
            Err(NetOfferError::Refused { offset: 16 }),
            "the publisher learns which record was refused"
        );
        // It stops: no retransmit loop, nothing more reaches the node.
        let data_frames = p.session().stats().data_frames;
        for _ in 0..1000 {
            p.do_work();
            receiver.do_work(1);
        }
        assert_eq!(p.session().stats().data_frames, data_frames);
    }
}
