//! The receiver agent: network port RX -> [`SessionTable`] (decode, gap detection, epochs) -> the
//! partition's shm ring; sends the NAK and STATUS frames the table produces; hands subscribe
//! requests to the conductor.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use xdp_programs::abi_consts::FRAME_BYTES_MAX;

use crate::agent::{Agent, CommandQueue};
use crate::conductor::ConductorCommand;
use crate::counters::{Counter, Counters};
use crate::net::NetPort;
use crate::session::{ReceiverStats, RecordSink, SessionTable};

/// Frames sent per duty cycle at most (NAK + STATUS).
pub const TX_FRAMES_PER_CYCLE_MAX: usize = 64;
/// Interval between copies of the receiver's statistics into the shared counters (ns).
pub const STATS_PUBLISH_INTERVAL_NS: u64 = 1_000_000;

/// Appends records to the partitions' rings (index = the node's partition order).
pub struct RingSink {
    rings: Vec<shm_ring::Ring>,
    publishers: Vec<Option<shm_ring::Publisher>>,
    evictions: u64,
}

impl RingSink {
    /// One publisher per ring; `rings[i]` belongs to partition index `i`.
    pub fn new(rings: Vec<shm_ring::Ring>) -> Result<RingSink, shm_ring::PublisherAttachError> {
        let publishers = rings
            .iter()
            .map(|r| r.publisher().map(Some))
            .collect::<Result<_, _>>()?;
        Ok(RingSink {
            rings,
            publishers,
            evictions: 0,
        })
    }
}

impl RecordSink for RingSink {
    #[inline]
    fn append(&mut self, partition: usize, record_type: u16, payload: &[u8]) -> Option<u64> {
        let slot = &mut self.publishers[partition];
        if slot.is_none() {
            // Re-attach after an eviction (cold path).
            *slot = self.rings[partition].publisher().ok();
        }
        let publisher = slot.as_mut()?;
        match publisher.offer_typed(record_type, payload) {
            Ok(offset) => Some(offset),
            Err(shm_ring::OfferError::BackPressured) => None,
            Err(shm_ring::OfferError::PublisherEvicted) => {
                self.evictions += 1;
                *slot = None;
                None
            }
            // Checked at start: every ring's max payload exceeds the largest frame.
            Err(e @ shm_ring::OfferError::MessageTooLarge { .. }) => unreachable!("{e}"),
        }
    }
}

/// The receiver agent.
pub struct Receiver {
    port: NetPort,
    table: SessionTable,
    sink: RingSink,
    counters: Counters,
    conductor: CommandQueue<ConductorCommand>,
    ring_marks: Vec<u64>,
    archiving: bool,
    rx_batch_max: usize,
    out: Vec<u8>,
    pending_tx: Option<SocketAddr>,
    next_publish_ns: u64,
}

impl Receiver {
    pub fn new(
        port: NetPort,
        table: SessionTable,
        sink: RingSink,
        counters: Counters,
        conductor: CommandQueue<ConductorCommand>,
        archiving: bool,
        rx_batch_max: usize,
    ) -> Receiver {
        for ring in &sink.rings {
            assert!(
                ring.max_payload_len() >= FRAME_BYTES_MAX as usize,
                "ring too small for a frame"
            );
        }
        let partitions = counters.partitions().len();
        Receiver {
            port,
            table,
            sink,
            counters,
            conductor,
            ring_marks: vec![0; partitions],
            archiving,
            rx_batch_max,
            out: Vec::with_capacity(FRAME_BYTES_MAX as usize),
            pending_tx: None,
            next_publish_ns: 0,
        }
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

        if self.archiving {
            for (i, mark) in self.ring_marks.iter_mut().enumerate() {
                *mark = self
                    .counters
                    .partition(i)
                    .durable_ring_mark
                    .load(Ordering::Acquire);
            }
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
