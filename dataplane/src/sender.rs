//! The sender agent: partition rings -> DATA frames to remote subscribers, retransmits on NAK,
//! heartbeats, flow control from the subscribers' STATUS windows.
//!
//! A remote subscriber registers with a SETUP carrying `FLAG_SUBSCRIBE` on the node's data port
//! (docs/protocol.md, "Remote subscribers"); the receiver passes the request to the conductor, which
//! builds an outbound [`sdk::net::PublisherSession`] (its retransmit buffer is the bounded
//! retransmit window) and hands it here. The node then acts as a publisher towards the subscriber:
//! SETUP, DATA, HEARTBEAT from the sender's own port; the subscriber's STATUS and NAK come back to
//! that port. A subscriber starts at the live tail of the partition.
//!
//! The ring is read only as far as every subscriber of the partition has room in its retransmit
//! window (a slow subscriber back-pressures the ring, like any reliable ring subscriber); a
//! subscriber silent for `session_timeout_ns` is evicted.

use std::net::SocketAddr;

use sdk::net::wire::{record_bytes, HEADER_BYTES};
use sdk::net::{NetOfferError, PublisherSession, PublisherStats};
use xdp_programs::abi_consts::FRAME_BYTES_MAX;
use xdp_programs::frame::FrameHeader;

use crate::agent::{Agent, CommandQueue};
use crate::counters::{Counter, Counters};
use crate::net::NetPort;

/// Commands handled per duty cycle at most.
pub const COMMANDS_PER_CYCLE_MAX: usize = 4;
/// Ring records read per partition per duty cycle at most.
pub const RING_RECORDS_PER_CYCLE_MAX: usize = 256;
/// Frames sent per subscriber per duty cycle at most.
pub const FRAMES_PER_SUBSCRIBER_CYCLE_MAX: usize = 32;
/// Datagrams received per duty cycle at most.
pub const RX_BATCH_MAX: usize = 64;
/// Interval between copies of the sender's statistics into the shared counters (ns).
pub const STATS_PUBLISH_INTERVAL_NS: u64 = 1_000_000;

/// One remote subscriber: where it is and the outbound session to it.
pub struct Subscription {
    dst: SocketAddr,
    partition_idx: usize,
    session: PublisherSession,
    last_heard_ns: u64,
}

impl Subscription {
    pub fn new(dst: SocketAddr, partition_idx: usize, session: PublisherSession) -> Subscription {
        Subscription {
            dst,
            partition_idx,
            session,
            last_heard_ns: 0,
        }
    }

    fn free_bytes(&self) -> u64 {
        let used = self.session.end_offset() - self.session.acked_offset();
        (self.session.config().buffer_bytes as u64).saturating_sub(used)
    }

    fn same_peer(&self, other: &Subscription) -> bool {
        let (a, b) = (self.session.config(), other.session.config());
        self.dst == other.dst
            && a.session_id == b.session_id
            && a.stream_id == b.stream_id
            && a.partition == b.partition
    }
}

/// Commands for the sender.
pub enum SenderCommand {
    /// Start sending a partition to a remote subscriber (replaces an older incarnation).
    Add(Box<Subscription>),
}

/// The sender agent.
pub struct Sender {
    port: NetPort,
    rings: Vec<shm_ring::Ring>,
    ring_subs: Vec<Option<shm_ring::Subscriber>>,
    subscriptions: Vec<Subscription>,
    subscribers_max: usize,
    session_timeout_ns: u64,
    commands: CommandQueue<SenderCommand>,
    counters: Counters,
    out: Vec<u8>,
    records: u64,
    oversize: u64,
    back_pressured: u64,
    evicted: u64,
    dropped_frames: u64,
    lost: u64,
    retired: PublisherStats,
    next_publish_ns: u64,
}

impl Sender {
    /// `rings[i]` is partition index `i`; the sender reads each from its tail.
    pub fn new(
        port: NetPort,
        rings: Vec<shm_ring::Ring>,
        subscribers_max: usize,
        session_timeout_ns: u64,
        commands: CommandQueue<SenderCommand>,
        counters: Counters,
    ) -> Result<Sender, shm_ring::SubscriberAttachError> {
        let ring_subs = rings
            .iter()
            .map(|r| r.subscriber(shm_ring::StartAt::Tail).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sender {
            port,
            rings,
            ring_subs,
            subscriptions: Vec::with_capacity(subscribers_max),
            subscribers_max,
            session_timeout_ns,
            commands,
            counters,
            out: Vec::with_capacity(FRAME_BYTES_MAX as usize),
            records: 0,
            oversize: 0,
            back_pressured: 0,
            evicted: 0,
            dropped_frames: 0,
            lost: 0,
            retired: PublisherStats::default(),
            next_publish_ns: 0,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.port.local_addr()
    }

    fn add(&mut self, sub: Box<Subscription>, now_ns: u64) {
        let mut sub = *sub;
        sub.last_heard_ns = now_ns;
        if let Some(old) = self.subscriptions.iter_mut().find(|s| s.same_peer(&sub)) {
            if old.session.config().epoch == sub.session.config().epoch {
                // A repeated SUBSCRIBE (the subscriber has not seen our SETUP yet): keep the session.
                old.last_heard_ns = now_ns;
                return;
            }
            retire(&mut self.retired, &old.session.stats());
            *old = sub;
        } else if self.subscriptions.len() < self.subscribers_max {
            self.subscriptions.push(sub);
        } else {
            self.evicted += 1;
        }
    }

    /// Reads what every subscriber of partition `p` has room for and offers it to them.
    fn pump_partition(&mut self, p: usize) -> usize {
        let mut limit = RING_RECORDS_PER_CYCLE_MAX;
        let mut any = false;
        for s in self.subscriptions.iter().filter(|s| s.partition_idx == p) {
            any = true;
            let per_record = record_bytes(s.session.payload_bytes_max()) as u64;
            limit = limit.min((s.free_bytes() / per_record) as usize);
        }
        if self.ring_subs[p].is_none() {
            // Re-attach after an eviction or corruption (cold path).
            self.ring_subs[p] = self.rings[p].subscriber(shm_ring::StartAt::Tail).ok();
        }
        let Some(ring_sub) = self.ring_subs[p].as_mut() else {
            return 0;
        };
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
                for s in subs.iter_mut().filter(|s| s.partition_idx == p) {
                    match s.session.offer(rec.type_id, rec.payload) {
                        Ok(_) => {}
                        Err(NetOfferError::TooLarge { .. }) => oversize += 1,
                        // Room was checked above; a closed session is being replaced.
                        Err(NetOfferError::BackPressured | NetOfferError::Closed) => {}
                    }
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
    }
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
        let commands = self.commands.clone();
        let mut work = commands.drain(COMMANDS_PER_CYCLE_MAX, |c| match c {
            SenderCommand::Add(sub) => self.add(sub, now_ns),
        });

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

        for p in 0..self.rings.len() {
            work += self.pump_partition(p);
        }

        for s in self.subscriptions.iter_mut() {
            for _ in 0..FRAMES_PER_SUBSCRIBER_CYCLE_MAX {
                if !s.session.poll_transmit(now_ns, &mut self.out) {
                    break;
                }
                debug_assert!(self.out.len() >= HEADER_BYTES);
                // A frame the port refuses is lost like on the wire; NAK or heartbeat recovers it.
                self.port.send(s.dst, &self.out);
                work += 1;
            }
        }
        self.port.flush_tx();

        let timeout = self.session_timeout_ns;
        let mut i = 0;
        while i < self.subscriptions.len() {
            if now_ns.saturating_sub(self.subscriptions[i].last_heard_ns) > timeout {
                let gone = self.subscriptions.swap_remove(i);
                retire(&mut self.retired, &gone.session.stats());
                self.evicted += 1;
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
