//! The ring algorithm over a memory region: claim/commit/abort for
//! publishers, poll/abort/overrun for subscribers, the subscriber table.
//!
//! Nothing here knows about files or mmap: a [`Region`] is a set of pointers
//! that either point into a shared mapping (`shm.rs`) or, under `cfg(loom)`,
//! into a small heap allocation that `tests/loom.rs` model-checks.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::clock;
use crate::error::{
    CommitError, OfferError, PollError, PublisherAttachError, SubscriberAttachError,
};
use crate::layout::*;
use crate::liveness;
use crate::sync::{fence, AtomicPair, AtomicU64, Ordering};
use crate::{Mode, PublisherKind, StartAt};

/// A subscriber stores its heartbeat at most this often (ring clock).
pub const HEARTBEAT_INTERVAL_NS: u64 = 1_000_000;
/// Steps one `poll` call may spend beyond `limit` records and one pass over
/// the descriptors (skips, overrun jumps) before it returns.
const POLL_EXTRA_STEPS_MAX: usize = 64;
/// liveness_timeout_ns must be at least this (10 heartbeat intervals).
pub const LIVENESS_TIMEOUT_MIN_NS: u64 = 10 * HEARTBEAT_INTERVAL_NS;
/// A subscriber reads the clock (and so checks whether a heartbeat is due)
/// once this much poll work has passed since its last reading: one unit per
/// `poll` call plus one per record delivered, `POLL_EMPTY_WORK` for a call
/// that found nothing. A busy poll loop thus reads the TSC once per batch of
/// records or per 8 empty polls, not per call. The stale reading only ever
/// delays a heartbeat or a claim abort, never hastens one (see
/// `Subscriber::poll_inner`); a caller that sleeps between polls should call
/// `keepalive` (as the sdk's idle strategies do), which reads the clock.
const POLL_CLOCK_WORK_MAX: u32 = 64;
/// Poll work of a call that delivered and skipped nothing.
const POLL_EMPTY_WORK: u32 = 8;
const _: () = assert!(POLL_EMPTY_WORK >= 1 && POLL_EMPTY_WORK <= POLL_CLOCK_WORK_MAX);

/// One owner or subscriber slot (layout.rs, "Slot").
#[repr(C, align(64))]
pub(crate) struct Slot {
    /// (generation << 8 | SLOT_*, heartbeat_ns)
    pub(crate) state: AtomicPair,
    pub(crate) pid: AtomicU64,
    pub(crate) start_ticks: AtomicU64,
    pub(crate) next_sequence: AtomicU64,
    pub(crate) position: AtomicU64,
    _reserved: [u64; 2],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Slot>() == SLOT_BYTES);
    assert!(std::mem::offset_of!(Slot, state) == SLOT_STATE_OFFSET);
    assert!(std::mem::offset_of!(Slot, pid) == SLOT_PID_OFFSET);
    assert!(std::mem::offset_of!(Slot, start_ticks) == SLOT_START_TICKS_OFFSET);
    assert!(std::mem::offset_of!(Slot, next_sequence) == SLOT_NEXT_SEQUENCE_OFFSET);
    assert!(std::mem::offset_of!(Slot, position) == SLOT_POSITION_OFFSET);
    assert!(std::mem::size_of::<AtomicPair>() == 16 && std::mem::align_of::<AtomicPair>() == 16);
};

#[cfg(loom)]
impl Slot {
    fn new() -> Self {
        Slot {
            state: AtomicPair::new((0, 0)),
            pid: AtomicU64::new(0),
            start_ticks: AtomicU64::new(0),
            next_sequence: AtomicU64::new(0),
            position: AtomicU64::new(0),
            _reserved: [0; 2],
        }
    }
}

const fn slot_kind(state: u64) -> u64 {
    state & 0xff
}

const fn slot_with_kind(state: u64, kind: u64) -> u64 {
    (state & !0xff) | kind
}

const fn next_generation(state: u64, kind: u64) -> u64 {
    ((state >> 8).wrapping_add(1) << 8) | kind
}

/// Validated ring parameters (from the config at create, from the header at open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) capacity: u64,
    pub(crate) descriptors: u64,
    pub(crate) mode: Mode,
    pub(crate) kind: PublisherKind,
    pub(crate) subscribers_max: u32,
    pub(crate) liveness_timeout_ns: u64,
    pub(crate) claim_timeout_ns: u64,
}

impl Params {
    /// Largest payload: a record (header + payload) is at most a quarter of the ring.
    pub(crate) fn max_payload(&self) -> u64 {
        self.capacity / 4 - RECORD_HEADER_BYTES
    }

    fn reliable(&self) -> bool {
        self.mode == Mode::Reliable
    }

    fn exclusive(&self) -> bool {
        self.kind == PublisherKind::Exclusive
    }
}

/// Bytes a record with `len` payload bytes occupies in the data region.
#[inline(always)]
pub(crate) const fn record_total(len: u64) -> u64 {
    (RECORD_HEADER_BYTES + len + RECORD_ALIGN_BYTES - 1) & !(RECORD_ALIGN_BYTES - 1)
}

/// Where a record of `total` bytes starts when the tail is at `pos`: records
/// never straddle the end of the data region; the gap is simply skipped
/// (descriptors carry each record's start, so no padding record is needed).
#[inline(always)]
const fn place(pos: u64, total: u64, capacity: u64) -> u64 {
    // The tail is always 16-byte aligned unless a hostile process wrote it;
    // aligning here keeps record words aligned no matter what.
    let pos = pos.wrapping_add(RECORD_ALIGN_BYTES - 1) & !(RECORD_ALIGN_BYTES - 1);
    let off = pos & (capacity - 1);
    if off + total > capacity {
        pos.wrapping_add(capacity - off)
    } else {
        pos
    }
}

/// Copy `src` to `dst`. Payloads of up to 64 bytes take two (possibly
/// overlapping) unaligned 16- or 32-byte moves instead of a `memcpy` call,
/// which dominated `offer_batch` for small records.
///
/// # Safety
/// `dst` is valid for writes of `src.len()` bytes and does not overlap `src`.
#[inline(always)]
unsafe fn copy_payload(src: &[u8], dst: *mut u8) {
    let len = src.len();
    let s = src.as_ptr();
    // SAFETY: every read is inside `src` (offsets + widths <= len by the
    // range checks) and every write inside `dst[..len]` (the caller's contract).
    unsafe {
        if (16..=32).contains(&len) {
            let a = std::ptr::read_unaligned(s as *const [u8; 16]);
            let b = std::ptr::read_unaligned(s.add(len - 16) as *const [u8; 16]);
            std::ptr::write_unaligned(dst as *mut [u8; 16], a);
            std::ptr::write_unaligned(dst.add(len - 16) as *mut [u8; 16], b);
        } else if (33..=64).contains(&len) {
            let a = std::ptr::read_unaligned(s as *const [u8; 32]);
            let b = std::ptr::read_unaligned(s.add(len - 32) as *const [u8; 32]);
            std::ptr::write_unaligned(dst as *mut [u8; 32], a);
            std::ptr::write_unaligned(dst.add(len - 32) as *mut [u8; 32], b);
        } else {
            std::ptr::copy_nonoverlapping(s, dst, len);
        }
    }
}

/// Pointers to the live parts of a ring plus its parameters.
pub(crate) struct Region {
    tail: *const AtomicPair,
    owner: *const Slot,
    subs: *const Slot,
    descs: *const AtomicPair,
    data: *mut u8,
    #[cfg(loom)]
    cells: *const loom::cell::UnsafeCell<()>,
    /// Loom, lossy rings: the data region as relaxed atomic words (see `word`).
    #[cfg(loom)]
    words: *const AtomicU64,
    pub(crate) p: Params,
}

// SAFETY: a Region only points at atomics and at data bytes whose accesses
// follow the ring protocol; the storage it points into is owned by the same
// `Inner` and outlives it.
unsafe impl Send for Region {}
// SAFETY: as above; all shared mutation goes through atomics or through data
// ranges owned by one claim at a time (the protocol documented in lib.rs).
unsafe impl Sync for Region {}

impl Region {
    /// Region over a mapping laid out as in layout.rs.
    ///
    /// # Safety
    /// `base` points at a mapping of at least `file_bytes_min(p.capacity)`
    /// bytes, 16-byte aligned, readable and writable, that outlives the Region
    /// and whose live parts are only accessed through Regions.
    #[cfg(not(loom))]
    pub(crate) unsafe fn from_base(base: *mut u8, p: Params) -> Region {
        // SAFETY: all offsets are within file_bytes_min(capacity) (layout.rs
        // asserts), as the caller guarantees the mapping is that long.
        unsafe {
            Region {
                tail: base.add(TAIL_OFFSET) as *const AtomicPair,
                owner: base.add(OWNER_SLOT_OFFSET) as *const Slot,
                subs: base.add(SUBSCRIBER_TABLE_OFFSET) as *const Slot,
                descs: base.add(DESCRIPTOR_TABLE_OFFSET) as *const AtomicPair,
                data: base.add(data_offset(p.capacity) as usize),
                p,
            }
        }
    }

    #[inline(always)]
    pub(crate) fn tail(&self) -> &AtomicPair {
        // SAFETY: points into storage that outlives self (from_base / Heap).
        unsafe { &*self.tail }
    }

    #[inline(always)]
    pub(crate) fn owner(&self) -> &Slot {
        // SAFETY: as for tail().
        unsafe { &*self.owner }
    }

    #[inline(always)]
    pub(crate) fn sub(&self, i: usize) -> &Slot {
        assert!(i < self.p.subscribers_max as usize);
        // SAFETY: i < subscribers_max <= SUBSCRIBERS_MAX slots exist.
        unsafe { &*self.subs.add(i) }
    }

    #[inline(always)]
    pub(crate) fn desc(&self, seq: u64) -> &AtomicPair {
        let i = (seq & (self.p.descriptors - 1)) as usize;
        // SAFETY: i < descriptors, the length of the descriptor array.
        unsafe { &*self.descs.add(i) }
    }

    /// Pointer to data byte `pos` (mod capacity).
    #[inline(always)]
    fn data_at(&self, pos: u64) -> *mut u8 {
        // wrapping_add: no UB even for a bad pos; the mask keeps it in bounds.
        self.data
            .wrapping_add((pos & (self.p.capacity - 1)) as usize)
    }

    /// Loom: record a read or write of data bytes so loom reports races.
    /// Lossy rings race by design (documented), so they are not tracked.
    #[inline(always)]
    fn track(&self, _pos: u64, _len: u64, _write: bool) {
        #[cfg(loom)]
        if self.p.reliable() && _len > 0 {
            let first = (_pos & (self.p.capacity - 1)) / RECORD_ALIGN_BYTES;
            let last = ((_pos & (self.p.capacity - 1)) + _len - 1) / RECORD_ALIGN_BYTES;
            for u in first..=last {
                // SAFETY: u < capacity / RECORD_ALIGN_BYTES = cells length.
                let cell = unsafe { &*self.cells.add(u as usize) };
                if _write {
                    cell.with_mut(|_| ());
                } else {
                    cell.with(|_| ());
                }
            }
        }
    }

    #[inline(always)]
    fn read_u64(&self, pos: u64) -> u64 {
        #[cfg(loom)]
        if !self.p.reliable() {
            return self.word(pos).load(Ordering::Relaxed);
        }
        // SAFETY: callers pass a 16-byte aligned record position, so the 8
        // bytes are inside the data region (capacity is a multiple of 16) and
        // 8-byte aligned. Volatile: the bytes may be rewritten by another
        // process (lossy mode); any value is then detected by the checks that follow.
        unsafe { std::ptr::read_volatile(self.data_at(pos) as *const u64) }
    }

    #[inline(always)]
    fn write_u64(&self, pos: u64, v: u64) {
        #[cfg(loom)]
        if !self.p.reliable() {
            self.word(pos).store(v, Ordering::Relaxed);
        }
        // SAFETY: as read_u64; the caller owns the record at pos (claimed).
        unsafe { std::ptr::write(self.data_at(pos) as *mut u64, v) }
    }

    /// Loom, lossy rings: racing reads and writes of record bytes are modelled
    /// as relaxed atomic words (what an atomic memcpy would do), so loom checks
    /// the seqlock fences. The handler gets a copy.
    #[cfg(loom)]
    fn word(&self, pos: u64) -> &AtomicU64 {
        let i = ((pos & (self.p.capacity - 1)) / 8) as usize;
        // SAFETY: i < capacity / 8 = words length.
        unsafe { &*self.words.add(i) }
    }

    /// Make payload bytes written through `Claim::buffer` visible to lossy
    /// readers (loom only: copies the staging bytes into the atomic words).
    #[inline(always)]
    fn publish_payload(&self, _pos: u64, _len: u64) {
        #[cfg(loom)]
        if !self.p.reliable() {
            for w in (0.._len.div_ceil(8)).map(|k| _pos + 8 * k) {
                // SAFETY: inside the claimed record (record_total rounds up to 16).
                let v = unsafe { std::ptr::read(self.data_at(w) as *const u64) };
                self.word(w).store(v, Ordering::Relaxed);
            }
        }
    }

    #[cfg(loom)]
    fn lossy_copy(&self, pos: u64, len: u64) -> Vec<u8> {
        let mut out: Vec<u8> = (0..len.div_ceil(8))
            .flat_map(|k| self.word(pos + 8 * k).load(Ordering::Relaxed).to_ne_bytes())
            .collect();
        out.truncate(len as usize);
        out
    }
}

/// Heap storage for a Region under loom.
#[cfg(loom)]
pub(crate) struct Heap {
    tail: AtomicPair,
    owner: Slot,
    subs: Box<[Slot]>,
    descs: Box<[AtomicPair]>,
    /// u128 cells: 16-byte aligned data bytes.
    data: Box<[std::cell::UnsafeCell<u128>]>,
    cells: Box<[loom::cell::UnsafeCell<()>]>,
    words: Box<[AtomicU64]>,
}

// SAFETY: the data cells are only accessed through a Region, per the ring
// protocol (claims own disjoint ranges; loom checks the reliable-mode accesses).
#[cfg(loom)]
unsafe impl Send for Heap {}
// SAFETY: as above.
#[cfg(loom)]
unsafe impl Sync for Heap {}

#[cfg(loom)]
impl Heap {
    pub(crate) fn new(p: Params) -> Box<Heap> {
        Box::new(Heap {
            tail: AtomicPair::new((0, 0)),
            owner: Slot::new(),
            subs: (0..p.subscribers_max).map(|_| Slot::new()).collect(),
            descs: (0..p.descriptors)
                .map(|_| AtomicPair::new((0, 0)))
                .collect(),
            data: (0..p.capacity / 16)
                .map(|_| std::cell::UnsafeCell::new(0))
                .collect(),
            cells: (0..p.capacity / RECORD_ALIGN_BYTES)
                .map(|_| loom::cell::UnsafeCell::new(()))
                .collect(),
            words: (0..p.capacity / 8).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub(crate) fn region(&self, p: Params) -> Region {
        Region {
            tail: &self.tail,
            owner: &self.owner,
            subs: self.subs.as_ptr(),
            descs: self.descs.as_ptr(),
            data: self.data.as_ptr() as *mut u8,
            cells: self.cells.as_ptr(),
            words: self.words.as_ptr(),
            p,
        }
    }
}

/// What a Ring handle shares: the region and the storage behind it.
pub(crate) struct Inner {
    // Field order matters: the region's pointers die before the storage.
    pub(crate) region: Region,
    /// Keeps the memory behind `region` alive.
    pub(crate) _storage: crate::Storage,
    pub(crate) path: std::path::PathBuf,
    pub(crate) backing: crate::BackingKind,
}

// ───────────────────────────── publisher ─────────────────────────────

/// Writes records into a ring. `Send`, not `Sync`: one thread at a time.
pub struct Publisher {
    inner: Arc<Inner>,
    /// Exclusive rings: our copy of the tail (only we write it).
    tail: (u64, u64),
    /// Reliable rings: cached back-pressure limits (position, sequence).
    limit_pos: u64,
    limit_seq: u64,
    /// Exclusive rings: the owner slot state word we installed.
    owner_state: u64,
    next_heartbeat_ns: u64,
    session: u32,
    _not_sync: PhantomData<Cell<()>>,
}

impl Publisher {
    pub(crate) fn attach(inner: Arc<Inner>) -> Result<Publisher, PublisherAttachError> {
        let region = &inner.region;
        let (pid, start) = liveness::this_process();
        let now = clock::now_ns();
        let mut owner_state = 0;
        let mut tail = (0, 0);
        if region.p.exclusive() {
            let own = region.owner();
            let mut cur = own.state.load(Ordering::Acquire); // partner: the owner's Release stores below
            loop {
                let (st, hb) = cur;
                let (opid, ostart) = (
                    own.pid.load(Ordering::Acquire),
                    own.start_ticks.load(Ordering::Acquire),
                );
                let takeable = match slot_kind(st) {
                    SLOT_FREE | SLOT_EVICTED => true,
                    // Another publisher is attaching right now (or died doing so).
                    SLOT_ATTACHING => now.saturating_sub(hb) > region.p.liveness_timeout_ns,
                    _ => !liveness::is_alive(opid, ostart),
                };
                if !takeable {
                    return Err(PublisherAttachError::Busy { pid: opid as u32 });
                }
                let attaching = next_generation(st, SLOT_ATTACHING);
                match own.state.compare_exchange(
                    cur,
                    (attaching, now),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        owner_state = slot_with_kind(attaching, SLOT_ACTIVE);
                        break;
                    }
                    Err(c) => cur = c,
                }
            }
            own.pid.store(u64::from(pid), Ordering::Relaxed);
            own.start_ticks.store(start, Ordering::Relaxed);
            // A dead predecessor may have died between claim and commit: its
            // open claims are the sequences just below the tail (one claim, or
            // the unpublished suffix of a batch: batches commit in order).
            // Abort them so readers do not wait (they never abort while an
            // owner is alive).
            tail = region.tail().load(Ordering::Acquire); // partner: predecessor's tail store(Release)
            let mut s = tail.1;
            for _ in 0..region.p.descriptors {
                if s == 0 {
                    break;
                }
                s -= 1;
                let d = region.desc(s);
                let cur = d.load(Ordering::Acquire);
                let finished = cur.0 > s || (cur.0 == s && cur.1 & DESC_STATE_MASK != DESC_EMPTY);
                if finished {
                    break;
                }
                let _ =
                    d.compare_exchange(cur, (s, DESC_ABORTED), Ordering::AcqRel, Ordering::Acquire);
            }
            // partner: may_abort()/attach()'s state load(Acquire): pid and start are visible once ACTIVE is.
            own.state.store((owner_state, now), Ordering::Release);
        }
        Ok(Publisher {
            inner,
            tail,
            limit_pos: 0,
            limit_seq: 0,
            owner_state,
            next_heartbeat_ns: now + HEARTBEAT_INTERVAL_NS,
            session: pid,
            _not_sync: PhantomData,
        })
    }

    /// Largest payload `claim`/`offer` accept.
    pub fn max_payload_len(&self) -> usize {
        self.inner.region.p.max_payload() as usize
    }

    /// Reserve `len` payload bytes. Write them through [`Claim::buffer`], then
    /// [`Claim::commit`]. Dropping the claim aborts it (subscribers skip it
    /// and count it as lost).
    #[inline]
    pub fn claim(&mut self, len: usize) -> Result<Claim<'_>, OfferError> {
        let p = self.inner.region.p;
        let max = p.max_payload();
        if len as u64 > max {
            return Err(OfferError::MessageTooLarge {
                len,
                max: max as usize,
            });
        }
        let total = record_total(len as u64);
        let now = clock::now_ns();
        if p.exclusive() && now >= self.next_heartbeat_ns {
            self.heartbeat(now)?;
        }
        let (seq, start) = if p.exclusive() {
            self.claim_exclusive(total, now)?
        } else {
            self.claim_shared(total, now)?
        };
        // Seqlock fence, partner: a lossy subscriber's fence(Acquire) before
        // it re-reads the tail. A subscriber that sees any byte we write into
        // this claim afterwards also sees the tail that claimed it.
        fence(Ordering::Release);
        Ok(Claim {
            publisher: self,
            seq,
            start,
            len,
            type_id: 0,
            timestamp_ns: now,
            done: false,
        })
    }

    #[inline(always)]
    fn claim_exclusive(&mut self, total: u64, now: u64) -> Result<(u64, u64), OfferError> {
        let p = self.inner.region.p;
        let (pos, seq) = self.tail;
        let start = place(pos, total, p.capacity);
        let end = start.wrapping_add(total);
        if p.reliable() && (end > self.limit_pos || seq >= self.limit_seq) {
            self.refresh_limits(now);
            if end > self.limit_pos || seq >= self.limit_seq {
                return Err(OfferError::BackPressured);
            }
        }
        // partner: subscribers' tail.load(Acquire) (in-progress claims, overrun jumps).
        self.inner
            .region
            .tail()
            .store((end, seq.wrapping_add(1)), Ordering::Release);
        self.tail = (end, seq.wrapping_add(1));
        Ok((seq, start))
    }

    #[inline(always)]
    fn claim_shared(&mut self, total: u64, now: u64) -> Result<(u64, u64), OfferError> {
        let p = self.inner.region.p;
        // partner: other publishers' tail CAS (Release half of AcqRel).
        let mut cur = self.inner.region.tail().load(Ordering::Acquire);
        loop {
            let (pos, seq) = cur;
            let start = place(pos, total, p.capacity);
            let end = start.wrapping_add(total);
            if p.reliable() && (end > self.limit_pos || seq >= self.limit_seq) {
                self.refresh_limits(now);
                if end > self.limit_pos || seq >= self.limit_seq {
                    return Err(OfferError::BackPressured);
                }
            }
            // The tail CAS is the claim: tail values never repeat, so there is no ABA.
            // partner: subscribers' and publishers' tail.load(Acquire).
            match self.inner.region.tail().compare_exchange(
                cur,
                (end, seq.wrapping_add(1)),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok((seq, start)),
                Err(c) => cur = c,
            }
        }
    }

    /// Recompute the back-pressure limits from the subscriber table, evicting
    /// subscribers whose heartbeat is older than liveness_timeout_ns.
    ///
    /// A limit is never more than half a ring (of bytes and of descriptors)
    /// ahead of the tail read here; `Subscriber::attach` relies on that bound.
    #[cold]
    fn refresh_limits(&mut self, now: u64) {
        let region = &self.inner.region;
        let p = region.p;
        // SeqCst, partner: attach()'s SeqCst activation store and tail load.
        let t = region.tail().load(Ordering::SeqCst);
        let mut limit_pos = t.0.saturating_add(p.capacity / 2);
        let mut limit_seq = t.1.saturating_add(p.descriptors / 2);
        for i in 0..p.subscribers_max as usize {
            let slot = region.sub(i);
            // SeqCst, partner: attach()'s activation store (SeqCst).
            let (st, hb) = slot.state.load(Ordering::SeqCst);
            if slot_kind(st) != SLOT_ACTIVE {
                continue;
            }
            if now > hb && now - hb > p.liveness_timeout_ns {
                let evicted = slot_with_kind(st, SLOT_EVICTED);
                if slot
                    .state
                    .compare_exchange((st, hb), (evicted, hb), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    continue;
                }
                // It refreshed its heartbeat (or left) meanwhile: count it, conservatively.
            }
            // partner: Subscriber::poll's Release stores of its progress: the
            // subscriber's reads of records before it happen before we overwrite them.
            let seq = slot.next_sequence.load(Ordering::Acquire);
            let pos = slot.position.load(Ordering::Acquire);
            limit_pos = limit_pos.min(pos.saturating_add(p.capacity));
            limit_seq = limit_seq.min(seq.saturating_add(p.descriptors));
        }
        self.limit_pos = limit_pos;
        self.limit_seq = limit_seq;
    }

    #[cold]
    fn heartbeat(&mut self, now: u64) -> Result<(), OfferError> {
        let own = self.inner.region.owner();
        let cur = own.state.load(Ordering::Acquire);
        if cur.0 != self.owner_state {
            return Err(OfferError::PublisherEvicted);
        }
        if let Err(c) = own.state.compare_exchange(
            cur,
            (self.owner_state, now),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            if c.0 != self.owner_state {
                return Err(OfferError::PublisherEvicted);
            }
        }
        self.next_heartbeat_ns = now + HEARTBEAT_INTERVAL_NS;
        Ok(())
    }

    /// Copy `payload` into a new record (type 0). Returns its offset (sequence).
    #[inline]
    pub fn offer(&mut self, payload: &[u8]) -> Result<u64, OfferError> {
        self.offer_typed(0, payload)
    }

    /// Copy `payload` into a new record of type `type_id`. Returns its offset.
    /// (A copy is committed nanoseconds after its claim; should a subscriber
    /// still have aborted it, this returns `BackPressured` so the caller retries.)
    #[inline]
    pub fn offer_typed(&mut self, type_id: u16, payload: &[u8]) -> Result<u64, OfferError> {
        let mut c = self.claim(payload.len())?;
        c.buffer().copy_from_slice(payload);
        c.set_type(type_id);
        // A claim held for nanoseconds cannot expire unless claim_timeout_ns is
        // absurdly small; if it did, the record is lost like any aborted one.
        c.commit().map_err(|_| OfferError::BackPressured)
    }

    /// Copy up to `payloads.len()` records of type `type_id` with one claim,
    /// one clock read and one tail update (the records share a timestamp).
    /// Returns `(first offset, records published)`: in reliable rings only as
    /// many as fit (at least one, else `BackPressured`); the caller offers the
    /// rest later. An empty slice publishes nothing: `Ok((next offset, 0))`.
    pub fn offer_batch(
        &mut self,
        type_id: u16,
        payloads: &[&[u8]],
    ) -> Result<(u64, usize), OfferError> {
        let p = self.inner.region.p;
        let max = p.max_payload();
        if let Some(big) = payloads.iter().find(|m| m.len() as u64 > max) {
            return Err(OfferError::MessageTooLarge {
                len: big.len(),
                max: max as usize,
            });
        }
        let now = clock::now_ns();
        if p.exclusive() && now >= self.next_heartbeat_ns {
            self.heartbeat(now)?;
        }
        // How many fit between the tail `t` and the cached limits, and where the batch ends.
        let fit = |t: (u64, u64), limit_pos: u64, limit_seq: u64| {
            let (mut pos, mut n) = (t.0, 0usize);
            for m in payloads {
                let total = record_total(m.len() as u64);
                let end = place(pos, total, p.capacity).wrapping_add(total);
                let seq = t.1.wrapping_add(n as u64);
                if p.reliable() && (end > limit_pos || seq >= limit_seq) {
                    break;
                }
                pos = end;
                n += 1;
            }
            (n, pos)
        };
        let mut cur = if p.exclusive() {
            self.tail
        } else {
            // partner: other publishers' tail CAS (Release half of AcqRel).
            self.inner.region.tail().load(Ordering::Acquire)
        };
        let (n, end) = loop {
            let (mut n, mut end) = fit(cur, self.limit_pos, self.limit_seq);
            if n < payloads.len() && p.reliable() {
                self.refresh_limits(now);
                (n, end) = fit(cur, self.limit_pos, self.limit_seq);
            }
            if n == 0 {
                if payloads.is_empty() {
                    return Ok((cur.1, 0));
                }
                return Err(OfferError::BackPressured);
            }
            let new = (end, cur.1.wrapping_add(n as u64));
            if p.exclusive() {
                // partner: subscribers' tail.load(Acquire).
                self.inner.region.tail().store(new, Ordering::Release);
                self.tail = new;
                break (n, end);
            }
            // partner: subscribers' and publishers' tail.load(Acquire).
            match self.inner.region.tail().compare_exchange(
                cur,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break (n, end),
                Err(c) => cur = c,
            }
        };
        debug_assert!(end >= cur.0);
        // Seqlock fence, partner: a lossy subscriber's fence(Acquire) (see claim()).
        fence(Ordering::Release);
        let region = &self.inner.region;
        let mut pos = cur.0;
        for (i, m) in payloads[..n].iter().enumerate() {
            let seq = cur.1.wrapping_add(i as u64);
            let total = record_total(m.len() as u64);
            let start = place(pos, total, p.capacity);
            pos = start.wrapping_add(total);
            let body = start.wrapping_add(RECORD_HEADER_BYTES);
            region.track(body, m.len() as u64, true);
            // SAFETY: [start, start + total) is inside the data region (place()
            // keeps records from straddling its end) and belongs to this batch's
            // claim alone (see Claim::buffer).
            unsafe { copy_payload(m, region.data_at(body)) };
            region.publish_payload(body, m.len() as u64);
            region.track(start, RECORD_HEADER_BYTES, true);
            region.write_u64(start.wrapping_add(RECORD_SEQUENCE_OFFSET as u64), seq);
            region.write_u64(
                start.wrapping_add(RECORD_LEN_TYPE_OFFSET as u64),
                m.len() as u64 | (u64::from(type_id) << 32),
            );
            region.write_u64(start.wrapping_add(RECORD_TIMESTAMP_OFFSET as u64), now);
            region.write_u64(
                start.wrapping_add(RECORD_SESSION_OFFSET as u64),
                u64::from(self.session),
            );
        }
        // Descriptors last, in order, in one burst: a caught-up subscriber
        // polling descriptor q then takes each descriptor line from us at most
        // once per batch instead of once per record (cross-process, that
        // cache-line ping-pong was the throughput limit). Partner and
        // orderings: see publish(). A dead owner's successor still finds the
        // unpublished records as a suffix below the tail (Publisher::attach).
        let mut pos = cur.0;
        for (i, m) in payloads[..n].iter().enumerate() {
            let seq = cur.1.wrapping_add(i as u64);
            let total = record_total(m.len() as u64);
            let start = place(pos, total, p.capacity);
            pos = start.wrapping_add(total);
            // A record of a batch that expired (held past claim_timeout_ns) is lost like an aborted one.
            let _ = self.publish(seq, start | DESC_COMMITTED);
        }
        Ok((cur.1, n))
    }

    /// Publish a finished or aborted record's descriptor.
    #[inline(always)]
    fn publish(&self, seq: u64, word1: u64) -> Result<(), CommitError> {
        let d = self.inner.region.desc(seq);
        if self.inner.region.p.exclusive() {
            // Only this publisher writes descriptors while it is alive (readers
            // abort an exclusive claim only after the owner process died).
            // partner: Subscriber::poll's desc.load(Acquire): record bytes written
            // before this store are visible to a subscriber that sees it.
            d.store((seq, word1), Ordering::Release);
            return Ok(());
        }
        let mut cur = d.load(Ordering::Acquire);
        loop {
            if cur.0 > seq || (cur.0 == seq && cur.1 & DESC_STATE_MASK != DESC_EMPTY) {
                return Err(CommitError::ClaimExpired);
            }
            // partner: Subscriber::poll's desc.load(Acquire) (as above) and its abort CAS.
            match d.compare_exchange(cur, (seq, word1), Ordering::Release, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(c) => cur = c,
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if !self.inner.region.p.exclusive() {
            return;
        }
        let own = self.inner.region.owner();
        let mut cur = own.state.load(Ordering::Acquire);
        while cur.0 == self.owner_state {
            let free = (slot_with_kind(self.owner_state, SLOT_FREE), cur.1);
            match own
                .state
                .compare_exchange(cur, free, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
    }
}

/// A claimed, not yet committed record. Write the payload with [`Claim::buffer`],
/// then [`Claim::commit`]; dropping it aborts the record.
pub struct Claim<'a> {
    publisher: &'a mut Publisher,
    seq: u64,
    start: u64,
    len: usize,
    type_id: u16,
    timestamp_ns: u64,
    done: bool,
}

impl Claim<'_> {
    /// The payload bytes: exactly `len` of them.
    #[inline(always)]
    pub fn buffer(&mut self) -> &mut [u8] {
        let region = &self.publisher.inner.region;
        region.track(
            self.start.wrapping_add(RECORD_HEADER_BYTES),
            self.len as u64,
            true,
        );
        let ptr = region.data_at(self.start.wrapping_add(RECORD_HEADER_BYTES));
        // SAFETY: [start, start + record_total(len)) lies inside the data region
        // (place() keeps records from straddling its end) and belongs to this
        // claim alone until commit or abort: publishers own disjoint tail ranges,
        // and reliable subscribers read it only after commit. A lossy
        // subscriber of another lap may read it concurrently (documented in
        // lib.rs): it detects that and discards what it read.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.len) }
    }

    /// Record type (default 0).
    pub fn set_type(&mut self, type_id: u16) {
        self.type_id = type_id;
    }

    /// Record timestamp (default: ring clock at claim time).
    pub fn set_timestamp_ns(&mut self, ts: u64) {
        self.timestamp_ns = ts;
    }

    /// The record's offset (sequence) in the ring.
    pub fn offset(&self) -> u64 {
        self.seq
    }

    /// Publish the record. Returns its offset, or `ClaimExpired` when it was
    /// held past claim_timeout_ns and a subscriber aborted it.
    #[inline]
    pub fn commit(mut self) -> Result<u64, CommitError> {
        self.done = true;
        let region = &self.publisher.inner.region;
        let s = self.start;
        region.publish_payload(s.wrapping_add(RECORD_HEADER_BYTES), self.len as u64);
        region.track(s, RECORD_HEADER_BYTES, true);
        region.write_u64(s.wrapping_add(RECORD_SEQUENCE_OFFSET as u64), self.seq);
        region.write_u64(
            s.wrapping_add(RECORD_LEN_TYPE_OFFSET as u64),
            self.len as u64 | (u64::from(self.type_id) << 32),
        );
        region.write_u64(
            s.wrapping_add(RECORD_TIMESTAMP_OFFSET as u64),
            self.timestamp_ns,
        );
        region.write_u64(
            s.wrapping_add(RECORD_SESSION_OFFSET as u64),
            u64::from(self.publisher.session),
        );
        self.publisher.publish(self.seq, s | DESC_COMMITTED)?;
        Ok(self.seq)
    }

    /// Give the record up; subscribers skip it and count it as lost.
    pub fn abort(self) {}
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            // An aborted descriptor carries the record's end, so subscribers
            // can move their position past it (a subscriber's abort of a dead
            // claim carries 0: position unknown, resynced at the next record).
            let end = self.start.wrapping_add(record_total(self.len as u64));
            let _ = self.publisher.publish(self.seq, end | DESC_ABORTED);
        }
    }
}

// ───────────────────────────── subscriber ─────────────────────────────

/// One record delivered by [`Subscriber::poll`], borrowed from the ring.
#[derive(Debug)]
pub struct Record<'a> {
    pub offset: u64,
    pub timestamp_ns: u64,
    pub type_id: u16,
    pub payload: &'a [u8],
}

/// What one `poll` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Poll {
    /// Records handed to the handler (and intact).
    pub records: usize,
    /// Records skipped in this call: overrun (lossy), aborted claims, and
    /// lossy records overwritten while the handler ran.
    pub lost: u64,
}

/// Where a subscriber is within one poll call: the next sequence and the
/// ring position its record starts at (at the earliest).
#[derive(Clone, Copy)]
struct Cursor {
    q: u64,
    r: u64,
}

/// What a step of a poll call says: go on, or end the call with this result.
type PollStep = ControlFlow<Result<(), PollError>>;

/// Reads every record of a ring in order. `Send`, not `Sync`.
pub struct Subscriber {
    inner: Arc<Inner>,
    slot: usize,
    /// Our slot's state word (generation | ACTIVE).
    state: u64,
    next_seq: u64,
    position: u64,
    published: (u64, u64),
    lost_total: u64,
    /// Sequence seen claimed-but-uncommitted, since when (ring clock), and
    /// whether that time is exact (read while the sequence was uncommitted)
    /// or the cached clock (possibly older than the first sighting).
    pending: Option<(u64, u64, bool)>,
    next_heartbeat_ns: u64,
    /// Last clock reading and the poll work left before the next one.
    now_ns: u64,
    clock_credit: u32,
    _not_sync: PhantomData<Cell<()>>,
}

impl Subscriber {
    pub(crate) fn attach(
        inner: Arc<Inner>,
        start_at: StartAt,
    ) -> Result<Subscriber, SubscriberAttachError> {
        let region = &inner.region;
        let p = region.p;
        let now = clock::now_ns();
        let (pid, start_ticks) = liveness::this_process();
        for i in 0..p.subscribers_max as usize {
            let slot = region.sub(i);
            let cur = slot.state.load(Ordering::Acquire);
            let (st, hb) = cur;
            let stale = now > hb && now - hb > p.liveness_timeout_ns;
            let takeable = match slot_kind(st) {
                SLOT_FREE | SLOT_EVICTED => true,
                SLOT_ATTACHING | SLOT_ACTIVE => stale,
                _ => true, // garbage state from a faulty writer: reclaim the slot
            };
            if !takeable {
                continue;
            }
            let attaching = next_generation(st, SLOT_ATTACHING);
            if slot
                .state
                .compare_exchange(cur, (attaching, now), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            slot.pid.store(u64::from(pid), Ordering::Relaxed);
            slot.start_ticks.store(start_ticks, Ordering::Relaxed);
            let t = region.tail().load(Ordering::SeqCst);
            // Conservative first position: holds publishers back to at most
            // half a ring past the tail until the real start is known.
            let (seq0, pos0) = match start_at {
                StartAt::Tail => (t.1, t.0),
                StartAt::Earliest => (
                    t.1.saturating_sub(p.descriptors / 2),
                    t.0.saturating_sub(p.capacity / 2),
                ),
            };
            slot.next_sequence.store(seq0, Ordering::Relaxed);
            slot.position.store(pos0, Ordering::Relaxed);
            let active = slot_with_kind(attaching, SLOT_ACTIVE);
            // SeqCst, partner: refresh_limits()'s SeqCst tail and state loads. A
            // publisher that did not see us active read a tail <= t2 below, so its
            // cached limit is at most t2 + half a ring.
            slot.state.store((active, now), Ordering::SeqCst);
            let t2 = region.tail().load(Ordering::SeqCst);
            let (q, r) = match start_at {
                StartAt::Tail => (t2.1, t2.0),
                StartAt::Earliest => earliest(region, t2),
            };
            // partner: refresh_limits()'s Acquire loads.
            slot.position.store(r, Ordering::Release);
            slot.next_sequence.store(q, Ordering::Release);
            return Ok(Subscriber {
                inner,
                slot: i,
                state: active,
                next_seq: q,
                position: r,
                published: (q, r),
                lost_total: 0,
                pending: None,
                next_heartbeat_ns: now + HEARTBEAT_INTERVAL_NS,
                now_ns: now,
                clock_credit: 0,
                _not_sync: PhantomData,
            });
        }
        Err(SubscriberAttachError::TableFull {
            max: p.subscribers_max,
        })
    }

    /// Offset (sequence) of the next record this subscriber will read.
    pub fn next_offset(&self) -> u64 {
        self.next_seq
    }

    /// Total records lost so far (overrun, aborted claims, torn lossy reads).
    pub fn lost_records(&self) -> u64 {
        self.lost_total
    }

    /// Heartbeat without polling (call it while parked).
    pub fn keepalive(&mut self) {
        let now = clock::now_ns();
        self.now_ns = now;
        self.clock_credit = POLL_CLOCK_WORK_MAX;
        let _ = self.heartbeat(now);
    }

    fn heartbeat(&mut self, now: u64) -> Result<(), PollError> {
        let slot = self.inner.region.sub(self.slot);
        let mut cur = slot.state.load(Ordering::Acquire);
        loop {
            if cur.0 != self.state {
                return Err(PollError::Evicted);
            }
            // A CAS, not a store: it fails if a publisher evicted us meanwhile.
            match slot.state.compare_exchange(
                cur,
                (self.state, now),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
        self.next_heartbeat_ns = now + HEARTBEAT_INTERVAL_NS;
        Ok(())
    }

    fn evicted(&self) -> bool {
        self.inner
            .region
            .sub(self.slot)
            .state
            .load(Ordering::Acquire)
            .0
            != self.state
    }

    /// May a claim that stays uncommitted past claim_timeout_ns be aborted?
    /// Shared rings: yes. Exclusive rings: only when the owner process is dead
    /// (an exclusive publisher commits with a plain store, so aborting a live
    /// one's claim could make subscribers disagree).
    #[cold]
    fn may_abort(&self) -> bool {
        let region = &self.inner.region;
        if !region.p.exclusive() {
            return true;
        }
        let own = region.owner();
        let (st, _) = own.state.load(Ordering::Acquire); // partner: Publisher::attach's Release store
        match slot_kind(st) {
            SLOT_ACTIVE => {
                let (pid, start) = (
                    own.pid.load(Ordering::Relaxed),
                    own.start_ticks.load(Ordering::Relaxed),
                );
                !liveness::is_alive(pid, start)
            }
            SLOT_ATTACHING => false,
            _ => true,
        }
    }

    /// Deliver up to `limit` committed records, in order, zero-copy.
    ///
    /// In lossy rings a record may be overwritten while the handler runs; it
    /// is then counted in `lost` (not `records`) after the handler returns.
    /// Use [`Subscriber::poll_copy`] when the handler must never see such a record.
    pub fn poll<F: FnMut(&Record<'_>)>(
        &mut self,
        handler: F,
        limit: usize,
    ) -> Result<Poll, PollError> {
        self.poll_inner(handler, limit, None)
    }

    /// Like [`Subscriber::poll`], but each payload is first copied into
    /// `buf` and checked: in lossy rings the handler only ever sees intact
    /// records (a record overwritten during the copy is counted lost). In
    /// reliable rings this only adds a copy.
    pub fn poll_copy<F: FnMut(&Record<'_>)>(
        &mut self,
        buf: &mut Vec<u8>,
        handler: F,
        limit: usize,
    ) -> Result<Poll, PollError> {
        self.poll_inner(handler, limit, Some(buf))
    }

    /// One poll call as named steps. The hot path (a committed record, or
    /// nothing new) is inlined; overruns, aborted claims and expired claims
    /// are out of line.
    fn poll_inner<F: FnMut(&Record<'_>)>(
        &mut self,
        mut handler: F,
        limit: usize,
        mut copy_buf: Option<&mut Vec<u8>>,
    ) -> Result<Poll, PollError> {
        let mut now = self.poll_clock();
        self.check_in(now)?;
        let p = self.inner.region.p;
        let mut out = Poll::default();
        let mut cur = Cursor {
            q: self.next_seq,
            r: self.position,
        };
        // Every iteration delivers, skips or gives up, but a hostile process
        // that keeps moving the tail could keep a lossy subscriber skipping:
        // bound the work of one call.
        let mut budget = limit
            .saturating_add(p.descriptors as usize)
            .saturating_add(POLL_EXTRA_STEPS_MAX);
        let result = loop {
            if out.records >= limit || budget == 0 {
                break Ok(());
            }
            budget -= 1;
            // partner: Publisher::publish's Release store/CAS: the record's bytes are visible.
            let (tag, w1) = self.inner.region.desc(cur.q).load(Ordering::Acquire);
            let state = w1 & DESC_STATE_MASK;
            let step = if tag == cur.q && state == DESC_COMMITTED {
                let start = w1 & !DESC_STATE_MASK;
                self.deliver(
                    &mut cur,
                    start,
                    &mut handler,
                    copy_buf.as_deref_mut(),
                    &mut out,
                )
            } else if tag == cur.q && state == DESC_ABORTED {
                self.skip_aborted(&mut cur, w1 & !DESC_STATE_MASK, &mut out)
            } else if tag == cur.q && state != DESC_EMPTY {
                ControlFlow::Break(Err(PollError::Corrupt {
                    position: cur.r,
                    reason: "descriptor has an unknown state",
                }))
            } else if tag > cur.q {
                self.overrun(&mut cur, &mut out)
            } else {
                self.not_committed(cur.q, (tag, w1), &mut now)
            };
            if let ControlFlow::Break(res) = step {
                break res;
            }
        };
        self.end_poll(cur, &out);
        result.map(|()| out)
    }

    /// The clock a poll call works with: the cached reading, refreshed when
    /// the poll work since it used up its credit. It is at most
    /// POLL_CLOCK_WORK_MAX units of poll work old, and never ahead of the
    /// real one: a heartbeat is at worst stored that much later, and a claim
    /// abort compares against a `pending` time that is exact (see
    /// `restart_wait`), so it is never early.
    #[inline(always)]
    fn poll_clock(&mut self) -> u64 {
        if self.clock_credit == 0 {
            self.now_ns = clock::now_ns();
            self.clock_credit = POLL_CLOCK_WORK_MAX;
        }
        self.now_ns
    }

    /// Heartbeats when one is due, else checks that no publisher evicted us.
    #[inline(always)]
    fn check_in(&mut self, now: u64) -> Result<(), PollError> {
        if now >= self.next_heartbeat_ns {
            self.heartbeat(now)
        } else if self.evicted() {
            Err(PollError::Evicted)
        } else {
            Ok(())
        }
    }

    /// A committed record starting at `start`: delivered, or counted lost
    /// when a lossy ring overwrote it.
    #[inline(always)]
    fn deliver<F: FnMut(&Record<'_>)>(
        &self,
        cur: &mut Cursor,
        start: u64,
        handler: &mut F,
        copy_buf: Option<&mut Vec<u8>>,
        out: &mut Poll,
    ) -> PollStep {
        match self.read_record(start, cur.q, cur.r, handler, copy_buf) {
            Ok(Some(total)) => {
                out.records += 1;
                cur.q = cur.q.wrapping_add(1);
                cur.r = start.wrapping_add(total);
                ControlFlow::Continue(())
            }
            Ok(None) => {
                self.overwritten(cur, start, out);
                ControlFlow::Continue(())
            }
            Err(e) => self.bad_record(cur, e, out),
        }
    }

    /// Lossy: the record was overwritten before or while we read it. The
    /// publisher is a lap ahead: jump to the tail.
    #[cold]
    fn overwritten(&self, cur: &mut Cursor, start: u64, out: &mut Poll) {
        // partner: publishers' tail store/CAS (Release).
        let t = self.inner.region.tail().load(Ordering::Acquire);
        out.lost = out.lost.saturating_add(t.1.saturating_sub(cur.q).max(1));
        (cur.q, cur.r) = if t.1 > cur.q {
            (t.1, t.0)
        } else {
            (cur.q.wrapping_add(1), cur.r.max(start))
        };
    }

    /// A committed record failed validation. In a lossy ring that is most
    /// likely a lap: resync at the tail. Otherwise the call fails.
    #[cold]
    fn bad_record(&self, cur: &mut Cursor, e: PollError, out: &mut Poll) -> PollStep {
        if self.resync_at_tail(cur, out) {
            return ControlFlow::Continue(());
        }
        ControlFlow::Break(Err(self.evicted_or(e)))
    }

    /// An aborted claim: skip its bytes (in a reliable ring never more than a
    /// ring ahead) and count it lost.
    #[inline]
    fn skip_aborted(&self, cur: &mut Cursor, end: u64, out: &mut Poll) -> PollStep {
        let p = self.inner.region.p;
        if end > cur.r && (p.mode == Mode::Lossy || end <= cur.r.saturating_add(p.capacity)) {
            cur.r = end;
        }
        out.lost = out.lost.saturating_add(1);
        cur.q = cur.q.wrapping_add(1);
        ControlFlow::Continue(())
    }

    /// The descriptor holds a later lap's sequence. Lossy: an overrun; jump to
    /// the tail, everything between is lost, counted exactly. Reliable: the
    /// ring is corrupt (or we were evicted and our records reused).
    #[cold]
    fn overrun(&self, cur: &mut Cursor, out: &mut Poll) -> PollStep {
        if self.resync_at_tail(cur, out) {
            return ControlFlow::Continue(());
        }
        ControlFlow::Break(Err(self.evicted_or(PollError::Corrupt {
            position: cur.r,
            reason: "descriptor is ahead of the subscriber",
        })))
    }

    /// Lossy rings: when the tail is ahead of the cursor, jumps to it and
    /// counts everything between as lost. False (nothing done) otherwise.
    #[cold]
    fn resync_at_tail(&self, cur: &mut Cursor, out: &mut Poll) -> bool {
        let region = &self.inner.region;
        if region.p.mode != Mode::Lossy {
            return false;
        }
        // partner: publishers' tail store/CAS (Release).
        let t = region.tail().load(Ordering::Acquire);
        if t.1 <= cur.q {
            return false;
        }
        out.lost = out.lost.saturating_add(t.1 - cur.q);
        (cur.q, cur.r) = (t.1, t.0);
        true
    }

    /// `e`, unless a publisher evicted us: that explains it better.
    #[cold]
    fn evicted_or(&self, e: PollError) -> PollError {
        if self.evicted() {
            PollError::Evicted
        } else {
            e
        }
    }

    /// Sequence `q` is not committed yet: nothing more to read. The idle path
    /// does not touch the tail (the publisher's hot cache line): only a
    /// sighting that lasts claim_timeout_ns looks at whether q was claimed.
    #[inline(always)]
    fn not_committed(&mut self, q: u64, desc: (u64, u64), now: &mut u64) -> PollStep {
        match self.pending {
            Some((pq, since, exact)) if pq == q => {
                if now.saturating_sub(since) < self.inner.region.p.claim_timeout_ns {
                    ControlFlow::Break(Ok(()))
                } else if exact {
                    self.claim_timed_out(q, desc, since, *now)
                } else {
                    self.restart_wait(q, now);
                    ControlFlow::Continue(())
                }
            }
            _ => {
                self.pending = Some((q, *now, false));
                ControlFlow::Break(Ok(()))
            }
        }
    }

    /// The wait for `q` started at a cached clock reading, which may predate
    /// its first sighting: restart it from an exact reading taken while q is
    /// uncommitted (the caller loops, re-checking q first).
    #[cold]
    fn restart_wait(&mut self, q: u64, now: &mut u64) {
        *now = clock::now_ns();
        self.now_ns = *now;
        self.clock_credit = POLL_CLOCK_WORK_MAX;
        self.pending = Some((q, *now, true));
    }

    /// `q` has stayed uncommitted for claim_timeout_ns, measured exactly. If
    /// it was claimed and the claimer may be given up on, abort the claim.
    #[cold]
    fn claim_timed_out(&mut self, q: u64, (tag, w1): (u64, u64), since: u64, now: u64) -> PollStep {
        let region = &self.inner.region;
        // partner: publishers' tail store/CAS (Release).
        let t = region.tail().load(Ordering::Acquire);
        if t.1 <= q || !self.may_abort() {
            // Nothing claimed (an idle publisher), or a live exclusive owner.
            self.pending = Some((q, now, false));
            return ControlFlow::Break(Ok(()));
        }
        // Abort it for everyone: the CAS makes all subscribers agree,
        // and makes the publisher's commit fail (ClaimExpired).
        // partner: Publisher::publish's CAS.
        let _ = region.desc(q).compare_exchange(
            (tag, w1),
            (q, DESC_ABORTED),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        // A dead exclusive owner's later open claims (the rest of a
        // batch) are just as dead: no need to wait for them again.
        self.pending = region
            .p
            .exclusive()
            .then(|| (q.wrapping_add(1), since, true));
        // The caller loops: the descriptor now reads ABORTED (ours or a
        // racing subscriber's) or COMMITTED (the publisher won).
        ControlFlow::Continue(())
    }

    /// Ends a poll call: publishes the new position (when it moved) so
    /// publishers may reuse the bytes read, and charges the call's work
    /// against the clock credit.
    #[inline(always)]
    fn end_poll(&mut self, cur: Cursor, out: &Poll) {
        self.next_seq = cur.q;
        self.position = cur.r;
        self.lost_total = self.lost_total.saturating_add(out.lost);
        let work = if out.records == 0 && out.lost == 0 {
            POLL_EMPTY_WORK
        } else {
            u32::try_from(out.records)
                .unwrap_or(u32::MAX)
                .saturating_add(1)
        };
        self.clock_credit = self.clock_credit.saturating_sub(work);
        if (cur.q, cur.r) != self.published {
            let slot = self.inner.region.sub(self.slot);
            // partner: refresh_limits()'s Acquire loads: our reads of the
            // records before q happen before a publisher reuses their bytes.
            slot.position.store(cur.r, Ordering::Release);
            slot.next_sequence.store(cur.q, Ordering::Release);
            self.published = (cur.q, cur.r);
        }
    }

    /// Validate and deliver the committed record at `start`. Ok(Some(total)):
    /// delivered; Ok(None): lossy record overwritten while read.
    #[inline(always)]
    fn read_record<F: FnMut(&Record<'_>)>(
        &self,
        start: u64,
        q: u64,
        r: u64,
        handler: &mut F,
        copy_buf: Option<&mut Vec<u8>>,
    ) -> Result<Option<u64>, PollError> {
        let region = &self.inner.region;
        let p = region.p;
        let corrupt = |reason| PollError::Corrupt {
            position: start,
            reason,
        };
        let off = start & (p.capacity - 1);
        if start < r {
            return Err(corrupt("record starts before the previous one ended"));
        }
        if off + RECORD_HEADER_BYTES > p.capacity {
            return Err(corrupt("record header crosses the end of the ring"));
        }
        region.track(start, RECORD_HEADER_BYTES, false);
        let seq = region.read_u64(start.wrapping_add(RECORD_SEQUENCE_OFFSET as u64));
        let len_type = region.read_u64(start.wrapping_add(RECORD_LEN_TYPE_OFFSET as u64));
        let timestamp_ns = region.read_u64(start.wrapping_add(RECORD_TIMESTAMP_OFFSET as u64));
        let len = len_type & 0xffff_ffff;
        let total = record_total(len.min(p.capacity));
        if seq != q {
            return self.lossy_torn(start).map_or(
                Err(corrupt("record sequence does not match its descriptor")),
                |_| Ok(None),
            );
        }
        if len > p.max_payload() || off + total > p.capacity {
            return self
                .lossy_torn(start)
                .map_or(Err(corrupt("record length out of bounds")), |_| Ok(None));
        }
        if p.reliable() && start.saturating_add(total) > r.saturating_add(p.capacity) {
            return Err(corrupt(
                "record lies more than a ring ahead of the subscriber",
            ));
        }
        if self.lossy_torn(start).is_some() {
            // Lapped before we got to it: do not show the handler garbage.
            return Ok(None);
        }
        region.track(start.wrapping_add(RECORD_HEADER_BYTES), len, false);
        #[cfg(loom)]
        let copy;
        #[cfg(loom)]
        let payload: &[u8] = if p.reliable() {
            // SAFETY: as below.
            unsafe {
                std::slice::from_raw_parts(
                    region.data_at(start.wrapping_add(RECORD_HEADER_BYTES)),
                    len as usize,
                )
            }
        } else {
            copy = region.lossy_copy(start.wrapping_add(RECORD_HEADER_BYTES), len);
            &copy
        };
        #[cfg(not(loom))]
        let payload_ptr = region.data_at(start.wrapping_add(RECORD_HEADER_BYTES));
        // SAFETY: [start+32, start+32+len) is inside the data region (checked
        // above: off + total <= capacity). Reliable rings: the record is
        // committed (Acquire above) and no publisher rewrites it before our
        // position passes it. Lossy rings: it may be rewritten concurrently;
        // we check the tail after the handler and count the record lost then
        // (documented in lib.rs).
        #[cfg(not(loom))]
        let payload = unsafe { std::slice::from_raw_parts(payload_ptr as *const u8, len as usize) };
        let type_id = (len_type >> 32) as u16;
        if let Some(buf) = copy_buf {
            buf.clear();
            buf.extend_from_slice(payload);
            if self.lossy_torn(start).is_some() {
                return Ok(None);
            }
            handler(&Record {
                offset: q,
                timestamp_ns,
                type_id,
                payload: buf,
            });
            return Ok(Some(total));
        }
        handler(&Record {
            offset: q,
            timestamp_ns,
            type_id,
            payload,
        });
        if self.lossy_torn(start).is_some() {
            return Ok(None);
        }
        Ok(Some(total))
    }

    /// Lossy rings: Some(()) when the record at `start` may have been
    /// overwritten (a publisher claimed past start + capacity). Reliable: None.
    #[inline(always)]
    fn lossy_torn(&self, start: u64) -> Option<()> {
        let region = &self.inner.region;
        if region.p.reliable() {
            return None;
        }
        // Seqlock fence, partner: Publisher::claim's fence(Release).
        fence(Ordering::Acquire);
        let t = region.tail().load(Ordering::Relaxed);
        (t.0 > start.saturating_add(region.p.capacity)).then_some(())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let slot = self.inner.region.sub(self.slot);
        let evicted = slot_with_kind(self.state, SLOT_EVICTED);
        let mut cur = slot.state.load(Ordering::Acquire);
        while cur.0 == self.state || cur.0 == evicted {
            match slot.state.compare_exchange(
                cur,
                (slot_with_kind(self.state, SLOT_FREE), cur.1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
    }
}

/// Oldest committed record that no publisher can overwrite before the new
/// subscriber's position holds it back: within half a ring (bytes and
/// descriptors) behind the tail `t` read after the subscriber became active.
fn earliest(region: &Region, t: (u64, u64)) -> (u64, u64) {
    let p = region.p;
    let lo_seq = t.1.saturating_sub(p.descriptors / 2);
    let lo_pos = t.0.saturating_sub(p.capacity / 2);
    for s in lo_seq..t.1 {
        let (tag, w1) = region.desc(s).load(Ordering::Acquire);
        if tag == s && w1 & DESC_STATE_MASK == DESC_COMMITTED && (w1 & !DESC_STATE_MASK) >= lo_pos {
            return (s, w1 & !DESC_STATE_MASK);
        }
    }
    (t.1, t.0)
}

/// A subscriber slot as seen by `ms-ring inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub index: usize,
    pub state: &'static str,
    pub generation: u64,
    pub heartbeat_ns: u64,
    pub pid: u64,
    pub next_sequence: u64,
    pub position: u64,
}

pub(crate) fn slot_info(index: usize, slot: &Slot) -> SlotInfo {
    let (st, hb) = slot.state.load(Ordering::Acquire);
    SlotInfo {
        index,
        state: match slot_kind(st) {
            SLOT_FREE => "free",
            SLOT_ATTACHING => "attaching",
            SLOT_ACTIVE => "active",
            SLOT_EVICTED => "evicted",
            _ => "invalid",
        },
        generation: st >> 8,
        heartbeat_ns: hb,
        pid: slot.pid.load(Ordering::Relaxed),
        next_sequence: slot.next_sequence.load(Ordering::Relaxed),
        position: slot.position.load(Ordering::Relaxed),
    }
}
