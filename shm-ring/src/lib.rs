//! shm-ring: the shared-memory layer of MemoryStreamer. A log-buffer ring in a
//! shared mapping (hugetlbfs when a hugepage pool is available, else
//! /dev/shm) with many publishers and many independent (broadcast)
//! subscribers, zero-copy on both sides.
//!
//! # Example
//! ```
//! use shm_ring::{Backing, Mode, PublisherKind, Ring, RingConfig, StartAt};
//!
//! let dir = std::path::Path::new("/dev/shm").join(format!("shm-ring-doc-{}", std::process::id()));
//! let cfg = RingConfig {
//!     capacity_bytes: 64 << 10,
//!     mode: Mode::Reliable,
//!     publishers: PublisherKind::Exclusive,
//!     backing: Backing::DevShm,
//!     dir: Some(dir.clone()),
//!     ..RingConfig::default()
//! };
//! let ring = Ring::create("orders", &cfg)?;
//! let mut sub = Ring::open("orders", Some(&dir))?.subscriber(StartAt::Tail)?;
//! let mut publ = ring.publisher()?;
//!
//! let mut claim = publ.claim(5)?; // zero-copy: write into the ring
//! claim.buffer().copy_from_slice(b"hello");
//! claim.commit()?;
//! publ.offer(b"world")?; // or copy
//!
//! let mut got = Vec::new();
//! let poll = sub.poll(|r| got.push((r.offset, r.payload.to_vec())), 16)?;
//! assert_eq!(poll.records, 2);
//! assert_eq!(got, vec![(0, b"hello".to_vec()), (1, b"world".to_vec())]);
//!
//! ring.unlink()?;
//! std::fs::remove_dir(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//! See [`layout`]: a header (geometry, clock calibration, the tail, the
//! exclusive-publisher owner slot, the subscriber table), a descriptor array
//! and the data region. Every record is `[32-byte header][payload]`, 16-byte
//! aligned, and has a dense 64-bit sequence (its *offset*: 0, 1, 2, ...).
//! Descriptor `s % descriptors` says whether record `s` is committed and
//! where it starts.
//!
//! # Protocol
//! - **Claim.** The tail is one 16-byte atomic `(position, next sequence)`.
//!   A shared publisher claims `len` bytes with a CAS `(p, s) -> (end, s+1)`
//!   where the record starts at `p`, or at the next lap boundary when it would
//!   straddle the end of the data region (the gap is skipped; no padding
//!   record is needed because descriptors carry start positions). Tail values
//!   never repeat, so the CAS has no ABA. An exclusive publisher (one per
//!   ring, owner slot in the header) does the same with a plain atomic store.
//!   Reliable rings refuse a claim past the back-pressure limit
//!   (`OfferError::BackPressured`): `end <= slowest live subscriber position +
//!   capacity` and `s < slowest subscriber sequence + descriptors`, cached by
//!   the publisher and refreshed by scanning the subscriber table only when
//!   exceeded (never more than half a ring past the tail it read).
//! - **Commit.** The publisher writes the record header and payload, then
//!   publishes descriptor `(s, start | COMMITTED)` with Release (a store for
//!   an exclusive publisher, a CAS for shared ones). Dropping a claim
//!   publishes `(s, end | ABORTED)` instead (the end lets subscribers move
//!   their position past it).
//! - **Batches.** `Publisher::offer_batch` claims `n` records with one tail
//!   update and one clock read (all `n` share the timestamp), writes every
//!   record, then publishes the `n` descriptors in order in one burst, so a
//!   caught-up subscriber takes each descriptor cache line from the publisher
//!   at most once per batch. `claim()` keeps an exact per-record timestamp
//!   (one TSC read per claim): use `offer_batch` for throughput.
//! - **Poll.** A subscriber at sequence `q` Acquire-loads descriptor `q`:
//!   committed -> validate the record (sequence, bounds) and hand the payload
//!   to the handler zero-copy; aborted -> skip, count as lost; older tag ->
//!   not yet committed. It stores its progress (position, sequence) once per
//!   poll call, and a heartbeat at most every millisecond of ring clock. It
//!   reads the clock (TSC) not per call but once per 64 units of poll work (a
//!   call plus its records; an empty call counts 8), so the cached time is
//!   never ahead of the real one and only delays a heartbeat or an abort;
//!   callers that sleep between polls call `keepalive`, which reads it.
//! - **Abort.** If the tail says `q` was claimed but its descriptor stays
//!   uncommitted for `claim_timeout_ns` (of the subscriber's clock), the
//!   subscriber CASes the descriptor to `(q, ABORTED)`: every subscriber then
//!   sees the same outcome and the publisher's commit CAS fails with
//!   `CommitError::ClaimExpired`. The wait starts from an exact clock
//!   reading taken while `q` was seen uncommitted (a cached reading first
//!   seen past the timeout restarts it), so no claim is aborted early. In exclusive rings (plain-store commit) a
//!   subscriber aborts only after the owner process is dead (pid + start time
//!   from /proc), and a new exclusive publisher aborts its dead predecessor's
//!   open claim when it takes over the owner slot.
//! - **Liveness.** Subscribers refresh a heartbeat in their slot with a CAS;
//!   a publisher that refreshes its limits and finds a heartbeat older than
//!   `liveness_timeout_ns` CASes the slot to EVICTED, so a dead (killed -9)
//!   subscriber stops back-pressuring. An evicted subscriber that comes back
//!   gets `PollError::Evicted`.
//! - **Overrun (lossy rings).** Publishers never wait. A subscriber that
//!   finds descriptor `q` reused by a later lap (or a record whose bytes were
//!   reclaimed: `tail.position > start + capacity`) jumps to the tail and
//!   counts `tail.sequence - q` records as lost, exactly.
//!
//! # Why descriptors (a change from the first design)
//! The first design tagged each in-place record header with its sequence and
//! claimed by CASing that header from its "stale" content, with helping to
//! advance the tail. The stale content at a header position can be *payload
//! bytes* of an older lap, and payload bytes repeat (e.g. zero-filled
//! messages): a publisher that read the tail and the stale bytes, then was
//! preempted for a lap, could win its CAS against identical bytes in the
//! middle of a newer record (ABA) and corrupt it. Here the claim is the tail
//! CAS (tail values never repeat) and commit/abort CAS a descriptor whose
//! previous value is always a genuine descriptor of an older lap (tags only
//! grow), so neither CAS can suffer ABA, no helping is needed, and wrapping
//! needs no padding record. Cost: one 16-byte descriptor per record (four per
//! cache line) next to the record.
//!
//! # Lossy zero-copy caveat
//! In lossy rings a publisher may overwrite a record while a subscriber's
//! handler reads it. The subscriber re-checks the tail after the handler
//! (seqlock style, with a Release fence after each claim and an Acquire fence
//! before the re-check) and then counts that record in `Poll::lost`, not in
//! `Poll::records`: a handler in a lossy ring must treat the payload as
//! possibly torn until `poll` returns. `Subscriber::poll_copy` copies each
//! payload first and hands the handler only records that were intact. Reliable
//! rings never have this race: publishers cannot pass the slowest live
//! subscriber. (Formally, racing plain reads are a data race in Rust's memory
//! model, as in every seqlock without an atomic memcpy; on x86-64 TSO the
//! fence pair makes the tail re-check sound, and the loom model checks the
//! protocol with atomic words.)
//!
//! # Crash safety
//! Ring files are created under a temp name and renamed into place, so no
//! half-initialised ring is ever visible. The header records the creator's
//! pid and process start time; `Ring::create` removes a ring file whose
//! creator, exclusive owner and active subscribers are all dead, and refuses
//! (`RingCreateError::Exists`) when any of them lives.
//!
//! # What a hostile local process can and cannot do
//! Ring files are mode 0600, so only the creator's user (or root) can map
//! them. Such a process can write anything into the mapping. It can make
//! subscribers read garbage records, lose records, stall (by claiming and
//! never committing in an exclusive ring, or by faking a live subscriber in a
//! reliable ring), or be evicted. It cannot make this crate read or write
//! outside the mapping, loop forever, or panic: every value read from shared
//! memory (descriptor positions, record lengths and sequences, header fields
//! at open) is validated before use and reported as `PollError::Corrupt` or a
//! `RingOpenError`. It can also break the lossy-mode guarantee that a torn
//! record is detected, because it controls the tail.
//!
//! # Memory model
//! All atomics go through `sync.rs` (loom under `cfg(loom)`), and every
//! Acquire/Release is commented with its partner. `tests/loom.rs` runs the
//! real claim/commit/poll code on a heap buffer.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod clock;
pub mod error;
pub mod layout;
mod liveness;
mod ring;
#[cfg(not(loom))]
mod shm;
mod sync;

use std::path::Path;
#[cfg(not(loom))]
use std::path::PathBuf;
use std::sync::Arc;

pub use error::{
    CommitError, OfferError, PollError, PublisherAttachError, RingCreateError, RingOpenError,
    SubscriberAttachError,
};
pub use layout::SUBSCRIBERS_MAX;
pub use ring::{
    Claim, Poll, Publisher, Record, SlotInfo, Subscriber, HEARTBEAT_INTERVAL_NS,
    LIVENESS_TIMEOUT_MIN_NS,
};
#[cfg(not(loom))]
pub use shm::{
    parse_header, read_header_info, valid_name, HeaderError, HeaderInfo, DEV_SHM_DIR, HUGETLBFS_DIR,
};

/// Smallest ring (bytes of data region).
#[cfg(not(loom))]
pub const RING_CAPACITY_MIN: u64 = 1 << 10;
/// Loom models use tiny rings.
#[cfg(loom)]
pub const RING_CAPACITY_MIN: u64 = 1 << 8;
/// Largest ring (bytes of data region).
pub const RING_CAPACITY_MAX: u64 = 1 << 30;

const _: () = assert!(RING_CAPACITY_MIN.is_power_of_two() && RING_CAPACITY_MAX.is_power_of_two());
const _: () = assert!(RING_CAPACITY_MIN / 4 > layout::RECORD_HEADER_BYTES);
const _: () = assert!(
    RING_CAPACITY_MAX / 4 <= u32::MAX as u64,
    "payload lengths are u32"
);
const _: () = assert!(RING_CAPACITY_MIN >= layout::DATA_BYTES_PER_DESCRIPTOR * 2);

/// Delivery mode, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Publishers are back-pressured by the slowest live subscriber.
    Reliable,
    /// Publishers never wait; overrun subscribers count what they lost.
    Lossy,
}

/// Fixed at creation. Exclusive: one publisher at a time, no CAS on the claim
/// path (like Aeron's ExclusivePublication). Shared: many publishers, CAS claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherKind {
    Exclusive,
    Shared,
}

/// Where to put the ring file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// hugetlbfs when mounted at /dev/hugepages and the pool has room, else /dev/shm (logged).
    Auto,
    Hugetlbfs,
    DevShm,
}

/// What was actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    Hugetlbfs,
    DevShm,
}

/// Where a new subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The next record published.
    Tail,
    /// The oldest committed record still safely in the ring (within the newest half of it).
    Earliest,
}

/// Ring creation parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Data region bytes: a power of two in RING_CAPACITY_MIN..=RING_CAPACITY_MAX.
    pub capacity_bytes: u64,
    pub mode: Mode,
    pub publishers: PublisherKind,
    /// Subscriber slots, <= SUBSCRIBERS_MAX.
    pub subscribers_max: u32,
    /// A subscriber whose heartbeat is older than this is dropped (>= LIVENESS_TIMEOUT_MIN_NS).
    pub liveness_timeout_ns: u64,
    /// A claim not committed within this is aborted by subscribers.
    pub claim_timeout_ns: u64,
    pub backing: Backing,
    /// Directory override (tests); default /dev/hugepages/memstreamer or /dev/shm/memstreamer.
    pub dir: Option<std::path::PathBuf>,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            capacity_bytes: 8 << 20,
            mode: Mode::Reliable,
            publishers: PublisherKind::Shared,
            subscribers_max: SUBSCRIBERS_MAX,
            liveness_timeout_ns: 1_000_000_000,
            claim_timeout_ns: 100_000_000,
            backing: Backing::Auto,
            dir: None,
        }
    }
}

/// What a ring's memory lives in. Held only to keep the memory alive.
#[allow(dead_code)]
pub(crate) enum Storage {
    #[cfg(not(loom))]
    Mapped(shm::Mapping),
    #[cfg(loom)]
    Heap(Box<ring::Heap>),
}

/// A mapped ring file; cheap to clone (Arc inside).
#[derive(Clone)]
pub struct Ring {
    inner: Arc<ring::Inner>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("path", &self.inner.path)
            .field("params", &self.inner.region.p)
            .finish()
    }
}

impl Ring {
    /// Create a ring file. A stale file whose creator and users are all dead
    /// is removed and recreated; a live one is `RingCreateError::Exists`.
    #[cfg(not(loom))]
    pub fn create(name: &str, cfg: &RingConfig) -> Result<Ring, RingCreateError> {
        if !shm::valid_name(name) {
            return Err(RingCreateError::InvalidName { name: name.into() });
        }
        let p = shm::validate_config(cfg)?;
        if !sync::AtomicPair::is_lock_free() {
            return Err(RingCreateError::AtomicsNotLockFree);
        }
        let (map, path, backing) = shm::create(name, cfg, p)?;
        // SAFETY: the mapping is file_bytes(capacity) >= file_bytes_min long,
        // page aligned, read-write, and lives in `storage` next to the region.
        let region = unsafe { ring::Region::from_base(map.base(), p) };
        Ok(Ring {
            inner: Arc::new(ring::Inner {
                region,
                _storage: Storage::Mapped(map),
                path,
                backing,
            }),
        })
    }

    /// Open an existing ring; `dir` None searches the default directories.
    /// Validates magic, version, sizes and every header field.
    #[cfg(not(loom))]
    pub fn open(name: &str, dir: Option<&Path>) -> Result<Ring, RingOpenError> {
        if !shm::valid_name(name) {
            return Err(RingOpenError::InvalidName { name: name.into() });
        }
        if !sync::AtomicPair::is_lock_free() {
            return Err(RingOpenError::AtomicsNotLockFree);
        }
        let (map, info, path) = shm::open(name, dir)?;
        let backing = if info.hugetlbfs {
            BackingKind::Hugetlbfs
        } else {
            BackingKind::DevShm
        };
        // SAFETY: parse_header checked file_bytes == file length >= file_bytes_min(capacity),
        // and the mapping covers the whole file.
        let region = unsafe { ring::Region::from_base(map.base(), info.params()) };
        Ok(Ring {
            inner: Arc::new(ring::Inner {
                region,
                _storage: Storage::Mapped(map),
                path,
                backing,
            }),
        })
    }

    /// A ring on the heap, for loom models (no mmap under loom).
    #[cfg(loom)]
    pub fn heap(cfg: &RingConfig) -> Ring {
        let p = ring::Params {
            capacity: cfg.capacity_bytes,
            descriptors: layout::descriptors_for(cfg.capacity_bytes),
            mode: cfg.mode,
            kind: cfg.publishers,
            subscribers_max: cfg.subscribers_max,
            liveness_timeout_ns: cfg.liveness_timeout_ns,
            claim_timeout_ns: cfg.claim_timeout_ns,
        };
        assert!(
            p.capacity.is_power_of_two() && p.capacity >= RING_CAPACITY_MIN && p.descriptors >= 2
        );
        let heap = ring::Heap::new(p);
        let region = heap.region(p);
        Ring {
            inner: Arc::new(ring::Inner {
                region,
                _storage: Storage::Heap(heap),
                path: Default::default(),
                backing: BackingKind::DevShm,
            }),
        }
    }

    pub fn backing(&self) -> BackingKind {
        self.inner.backing
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.inner.region.p.capacity
    }

    pub fn mode(&self) -> Mode {
        self.inner.region.p.mode
    }

    pub fn publisher_kind(&self) -> PublisherKind {
        self.inner.region.p.kind
    }

    /// Largest payload a record can carry (a record is at most a quarter of the ring).
    pub fn max_payload_len(&self) -> usize {
        self.inner.region.p.max_payload() as usize
    }

    /// Current tail: (position in bytes, next sequence).
    pub fn tail(&self) -> (u64, u64) {
        self.inner.region.tail().load(sync::Ordering::Acquire)
    }

    /// Attach a publisher. Exclusive rings: fails while another live process
    /// (or handle) owns the ring; a dead owner is replaced.
    pub fn publisher(&self) -> Result<Publisher, PublisherAttachError> {
        Publisher::attach(Arc::clone(&self.inner))
    }

    /// Attach a subscriber in a free (or dead subscriber's) slot.
    pub fn subscriber(&self, start: StartAt) -> Result<Subscriber, SubscriberAttachError> {
        Subscriber::attach(Arc::clone(&self.inner), start)
    }

    /// Snapshot of the subscriber table (for operators and tests).
    pub fn subscriber_slots(&self) -> Vec<SlotInfo> {
        (0..self.inner.region.p.subscribers_max as usize)
            .map(|i| ring::slot_info(i, self.inner.region.sub(i)))
            .collect()
    }

    /// Snapshot of the exclusive owner slot.
    pub fn owner_slot(&self) -> SlotInfo {
        ring::slot_info(0, self.inner.region.owner())
    }

    /// Remove the file (the owner does this on shutdown). Mappings stay valid.
    #[cfg(not(loom))]
    pub fn unlink(&self) -> std::io::Result<()> {
        std::fs::remove_file(&self.inner.path)
    }

    /// The ring file's directory.
    #[cfg(not(loom))]
    pub fn dir(&self) -> PathBuf {
        self.inner
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}
