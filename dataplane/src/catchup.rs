//! Where a remote subscriber that starts behind the live tail reads from: storage -> ring ->
//! live, as a sans-IO state machine. The sender ([`crate::sender`]) owns the I/O (the log
//! reader and its buffer, a private ring reader, the partition's shared reader) and asks this
//! machine, with explicit inputs, what to do and which record to send next.
//!
//! ```text
//!             reader at the durable tail, and the ring still holds next_log
//!   Storage ─────────────────────────────────────────────────────────────► Ring
//!      ▲   (ring_opened)                                                     │
//!      │   the private ring reader lost records, and the partition has a log │ private reader
//!      └─────────────────────────────────────────────────────────────────────┤ met the shared
//!          (ring_lost: seek the log to the next record)                      ▼ reader
//!                                                                           Live
//! ```
//!
//! Every record is sent once, in partition order, across every change: the machine remembers
//! the next record the subscriber needs — its partition (log) offset `next_log` while it reads
//! storage, its ring offset `next_ring` from the moment it reads the ring — and admits only
//! that record or later ones ([`CatchUp::admit_log`], [`CatchUp::admit_ring`]). Ring offset +
//! `delta` = log offset (the archiver's mapping; 0 without storage). The partition's shared
//! reader never passes a private reader (the sender holds it back), so the two meet.

/// Which reader feeds the subscriber now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The partition's log on storage (records older than the ring).
    Storage,
    /// A private ring reader, from the first record not yet sent, until it meets the shared one.
    Ring,
    /// The partition's shared ring reader, with every other live subscriber.
    Live,
}

/// Why a catch-up cannot go on (the subscription ends).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatchUpError {
    #[error("the ring overran the subscriber's reader and the partition has no log to read the lost records from")]
    RingLostNoStorage,
}

/// A subscriber's place while it catches up (module docs).
#[derive(Clone, Debug)]
pub struct CatchUp {
    source: Source,
    /// Partition (log) offset of the next record to send while it reads storage.
    next_log: u64,
    /// Ring offset of the next record to send once it reads the ring (None: every record).
    next_ring: Option<u64>,
    /// The partition has a log to fall back to when a ring reader loses records.
    storage: bool,
    /// The log's durable end when a read last found nothing more: no read until it grows.
    tail_end: Option<u64>,
    /// Earliest time to look at the ring again after the log reader reached the durable tail.
    ring_retry_ns: u64,
}

/// How often a subscriber reading storage at its durable tail looks for its records in the ring.
pub const RING_RETRY_NS: u64 = 1_000_000;

impl CatchUp {
    /// A subscriber fed from the live tail (every record from the shared reader on).
    pub fn live() -> CatchUp {
        CatchUp {
            source: Source::Live,
            next_log: 0,
            next_ring: None,
            storage: false,
            tail_end: None,
            ring_retry_ns: 0,
        }
    }

    /// A subscriber whose first record is log offset `from`, read from the partition's log.
    pub fn from_storage(from: u64) -> CatchUp {
        CatchUp {
            source: Source::Storage,
            next_log: from,
            storage: true,
            ..CatchUp::live()
        }
    }

    /// A subscriber whose first record is partition offset `from`, read from a private ring
    /// reader (the partition has no log; an offset older than the ring starts at its oldest).
    pub fn from_ring(from: u64) -> CatchUp {
        CatchUp {
            source: Source::Ring,
            next_log: from,
            ..CatchUp::live()
        }
    }

    pub fn source(&self) -> Source {
        self.source
    }

    /// Log offset of the next record to send from storage.
    pub fn next_log(&self) -> u64 {
        self.next_log
    }

    /// Ring offset of the next record to send from the ring, once known.
    pub fn next_ring(&self) -> Option<u64> {
        self.next_ring
    }

    // ---- Storage ----

    /// Whether to read the next batch of the log: the reader (at `reader_next`) is below the
    /// durable end, and the end moved since a read last found the tail.
    pub fn wants_read(&mut self, reader_next: u64, durable_end: u64) -> bool {
        let more = reader_next < durable_end && self.tail_end.is_none_or(|t| durable_end > t);
        if more {
            self.tail_end = None;
        }
        more
    }

    /// A read found nothing more: `end` was the log's durable end.
    pub fn at_tail(&mut self, end: u64) {
        self.tail_end = Some(end);
    }

    /// At the durable tail: whether to look for the next record in the ring now (rate-limited
    /// to one look per [`RING_RETRY_NS`]).
    pub fn look_at_ring(&mut self, now_ns: u64) -> bool {
        if self.source != Source::Storage || now_ns < self.ring_retry_ns {
            return false;
        }
        self.ring_retry_ns = now_ns.saturating_add(RING_RETRY_NS);
        true
    }

    /// A private ring reader from the ring's oldest record (ring offset `oldest`) was opened:
    /// true when the ring still holds the next record — the subscriber reads the ring from
    /// it (keep the reader); false when it does not (not durable yet and no longer in the ring:
    /// drop the reader, wait for storage).
    pub fn ring_opened(&mut self, oldest: u64, delta: u64) -> bool {
        // A record below `delta` is older than the ring: only the log has it.
        let Some(next_ring) = self.next_log.checked_sub(delta) else {
            return false;
        };
        if self.source != Source::Storage || oldest > next_ring {
            return false;
        }
        self.source = Source::Ring;
        self.next_ring = Some(next_ring);
        true
    }

    /// Whether the storage record at log offset `offset` is still to be sent.
    pub fn admit_log(&self, offset: u64) -> bool {
        offset >= self.next_log
    }

    /// The storage record at log offset `offset` was sent (or skipped as too large).
    pub fn sent_log(&mut self, offset: u64) {
        debug_assert!(self.admit_log(offset));
        // Offsets come from a log file: saturate rather than trust them not to be u64::MAX.
        self.next_log = offset.saturating_add(1);
    }

    // ---- Ring and Live ----

    /// Ring offset the private reader starts at (set once: from storage it is where storage
    /// stopped; straight from a SUBSCRIBE it is the asked-for offset in ring terms).
    pub fn ring_start(&mut self, delta: u64) -> u64 {
        *self
            .next_ring
            .get_or_insert(self.next_log.saturating_sub(delta))
    }

    /// Whether the ring record at `offset` is still to be sent (private or shared reader).
    pub fn admit_ring(&self, offset: u64) -> bool {
        self.next_ring.is_none_or(|n| offset >= n)
    }

    /// The ring record at `offset` was sent (or skipped as too large).
    pub fn sent_ring(&mut self, offset: u64) {
        debug_assert!(self.admit_ring(offset));
        self.next_ring = Some(offset.saturating_add(1));
    }

    /// The private reader is at `private_next`, the shared one at `shared_next`: true when they
    /// met (the subscriber is live from now on; records below `next_ring` are skipped there).
    pub fn met_shared(&mut self, private_next: u64, shared_next: u64) -> bool {
        if self.source == Source::Ring && private_next >= shared_next {
            self.source = Source::Live;
            return true;
        }
        false
    }

    /// The private ring reader lost records (the ring overran it). With a log, the subscriber
    /// goes back to storage from the next record it needs: returns that log offset (seek the
    /// log reader there). Without one the catch-up cannot go on.
    pub fn ring_lost(&mut self, delta: u64) -> Result<u64, CatchUpError> {
        if !self.storage {
            return Err(CatchUpError::RingLostNoStorage);
        }
        if let Some(next_ring) = self.next_ring.take() {
            self.next_log = next_ring.wrapping_add(delta);
        }
        self.source = Source::Storage;
        self.tail_end = None;
        self.ring_retry_ns = 0;
        Ok(self.next_log)
    }
}

#[cfg(test)]
mod tests;
