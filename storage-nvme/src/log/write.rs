//! The write pipeline: the iovecs that point into the O_DIRECT write ring, their submission
//! to the I/O backend, and the completions that advance the durable position.
//!
//! This is the only part of the log that hands raw buffer pointers to the kernel, so it is the
//! only part of it allowed `unsafe` (see the crate root).

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use super::{
    Active, Log, LogConfig, LogIoError, LogOpenError, SHORT_WRITE_RETRIES_MAX, SYNCS_INFLIGHT_MAX,
    WRITES_INFLIGHT_MAX,
};
use crate::io::{AlignedBuf, IoBackend, Wait};
use crate::layout::*;
use crate::segment::{ferr, read_full_at};

/// One write in flight. The iovecs point into the ring and into `tail`.
pub(super) struct WriteSlot {
    busy: bool,
    start: u64,
    len: u64,
    logical_start: u64,
    logical_end: u64,
    retries: u32,
    iov: [libc::iovec; 2],
    iovcnt: u32,
    /// Submitted with RWF_DSYNC while no other write was in flight: on success everything
    /// below `logical_end` is durable.
    dsync: bool,
    /// When the write was first submitted (retries keep it).
    submitted_at: Option<std::time::Instant>,
}

// SAFETY: the raw pointers in `iov` point only into buffers owned by the same `Log` (its ring
// and tail blocks), so they stay valid when the Log, and with it the slots, moves to another
// thread; nothing else shares them.
unsafe impl Send for WriteSlot {}

/// Tokens of syncs: `FSYNC_TOKEN_BASE + slot`.
const FSYNC_TOKEN_BASE: u64 = u64::MAX - SYNCS_INFLIGHT_MAX as u64;
/// Token of the zero-ahead write (below every sync token, above every write slot).
const ZERO_TOKEN: u64 = FSYNC_TOKEN_BASE - 1;
/// Size of the shared zero block that zero-ahead writes gather from.
const ZERO_BUF_BYTES: u64 = 256 << 10;
/// Largest zero-ahead write: few, large ones keep extent conversions (and with them the journal
/// commits a following fdatasync has to wait for) rare.
const ZERO_WRITE_BYTES_MAX: u64 = 1 << 20;
const ZERO_IOVS: usize = (ZERO_WRITE_BYTES_MAX / ZERO_BUF_BYTES) as usize;
const _: () = assert!(ZERO_WRITE_BYTES_MAX.is_multiple_of(ZERO_BUF_BYTES));
const _: () = assert!((WRITES_INFLIGHT_MAX as u64) < ZERO_TOKEN);

/// The zero-ahead write in flight: its iovecs (all pointing into `Log::zeros`) and range.
pub(super) struct ZeroWrite {
    iov: [libc::iovec; ZERO_IOVS],
    inflight: Option<(u64, u64)>,
}

// SAFETY: as for WriteSlot: the iovecs point only into the owning Log's `zeros` buffer.
unsafe impl Send for ZeroWrite {}

/// An iovec over `bytes`, which the kernel only reads (these are writes).
fn iovec(bytes: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    }
}

/// The buffers of the write pipeline, allocated once at open.
pub(super) struct WriteBuffers {
    /// The write ring (`write_buffer_bytes` plus a spill area of one batch).
    pub(super) ring: AlignedBuf,
    /// One block per write slot: the zero-padded copy of a write's partial last block.
    pub(super) tails: AlignedBuf,
    /// The read-only source block of zero-ahead writes.
    pub(super) zeros: AlignedBuf,
    pub(super) slots: Box<[WriteSlot]>,
    pub(super) zero: Box<ZeroWrite>,
}

impl WriteBuffers {
    /// Buffers sized from `cfg`. The ring starts at `ring_origin`, the block holding `end_pos`
    /// in the active segment; that block's valid part is read in, since the next write
    /// rewrites the block whole.
    pub(super) fn new(
        cfg: &LogConfig,
        active: &Active,
        ring_origin: u64,
        end_pos: u64,
    ) -> Result<Self, LogOpenError> {
        let mut ring = AlignedBuf::new(
            (cfg.write_buffer_bytes + cfg.batch_bytes_max.next_multiple_of(BLOCK_BYTES)) as usize,
        )
        .map_err(LogOpenError::Io)?;
        if end_pos > ring_origin {
            let block = &mut ring.raw_mut()[..BLOCK_BYTES as usize];
            let n = read_full_at(&active.file, block, ring_origin)
                .map_err(ferr("cannot read segment", &active.path))?;
            if (n as u64) < end_pos - ring_origin {
                return Err(LogOpenError::Corrupt {
                    path: active.path.clone(),
                    position: ring_origin,
                    detail: "short read of the last block".into(),
                });
            }
        }
        let n = cfg.writes_inflight_max as usize;
        let tails = AlignedBuf::new(n * BLOCK_BYTES as usize).map_err(LogOpenError::Io)?;
        let zeros = AlignedBuf::new(if cfg.zero_ahead_bytes > 0 {
            ZERO_BUF_BYTES as usize
        } else {
            BLOCK_BYTES as usize
        })
        .map_err(LogOpenError::Io)?;
        let no_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let slots = (0..n)
            .map(|_| WriteSlot {
                busy: false,
                start: 0,
                len: 0,
                logical_start: 0,
                logical_end: 0,
                retries: 0,
                iov: [no_iov; 2],
                iovcnt: 0,
                dsync: false,
                submitted_at: None,
            })
            .collect();
        let zero = Box::new(ZeroWrite {
            iov: [no_iov; ZERO_IOVS],
            inflight: None,
        });
        Ok(Self {
            ring,
            tails,
            zeros,
            slots,
            zero,
        })
    }
}

impl<B: IoBackend> Log<B> {
    /// Start of the oldest ring block a write in flight still reads (or will: the partial
    /// block at the submission point): appends must not overwrite it.
    pub(super) fn hold_start(&self) -> u64 {
        let mut h = align_down(self.submitted_pos, BLOCK_BYTES);
        for s in self.slots.iter().filter(|s| s.busy) {
            h = h.min(s.start);
        }
        h
    }

    pub(super) fn submit_queued(&mut self) {
        if let Err(e) = self.io.submit() {
            let path = self.active.path.clone();
            self.fail(LogIoError::Submit {
                path,
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            });
        }
    }

    /// Submits writes (data first, then zeroing ahead).
    pub(super) fn pump(&mut self) {
        self.pump_data();
        self.pump_zero();
    }

    /// Submits writes: whole chunks always, the partial tail when a commit is requested.
    fn pump_data(&mut self) {
        if self.failed.is_some() {
            return;
        }
        while let Some((slot_i, start, logical_end)) = self.next_write() {
            self.fill_slot(slot_i, start, logical_end);
            if let Err(e) = self.submit_slot(slot_i) {
                let path = self.active.path.clone();
                self.fail(LogIoError::Submit {
                    path,
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                });
                return;
            }
        }
    }

    /// The next write to submit, if one may go now: (free slot, first block, end of its data).
    fn next_write(&self) -> Option<(usize, u64, u64)> {
        if self.submitted_pos >= self.append_pos {
            return None;
        }
        let slot_i = self.slots.iter().position(|s| !s.busy)?;
        let start = align_down(self.submitted_pos, BLOCK_BYTES);
        // Never two writes to one block at once: their order on disk is not defined.
        if self.slots.iter().any(|s| s.busy && s.start + s.len > start) {
            return None;
        }
        let wb = self.cfg.write_bytes_max;
        let chunk_end = self.ring_origin + ((start - self.ring_origin) / wb + 1) * wb;
        let logical_end = self.append_pos.min(chunk_end);
        let full_chunk = logical_end == chunk_end;
        if !full_chunk && self.commit_target <= self.submitted_pos {
            return None;
        }
        // Nor data over a zero-ahead write still in flight: wait for it.
        if let Some((zfrom, zlen)) = self.zero.inflight {
            if align_up(logical_end, BLOCK_BYTES) > zfrom && start < zfrom + zlen {
                return None;
            }
        }
        Some((slot_i, start, logical_end))
    }

    /// Points slot `slot_i`'s iovecs at the whole blocks of [start, logical_end) in the ring
    /// and at a zero-padded copy of the partial last block, and marks it busy.
    fn fill_slot(&mut self, slot_i: usize, start: u64, logical_end: u64) {
        let body_end = align_down(logical_end, BLOCK_BYTES);
        let tail = (logical_end - body_end) as usize;
        let body_len = (body_end - start) as usize;
        let body_at = self.idx(start);
        let tail_at = self.idx(body_end);
        let dsync_ok = self.cfg.dsync_commits && self.io.dsync_writes();
        let block = BLOCK_BYTES as usize;
        let slot_tail = slot_i * block;
        if tail > 0 {
            let (ring, tails) = (self.ring.as_slice(), self.tails.raw_mut());
            let dst = &mut tails[slot_tail..slot_tail + block];
            dst[..tail].copy_from_slice(&ring[tail_at..tail_at + tail]);
            dst[tail..].fill(0);
        }
        let s = &mut self.slots[slot_i];
        s.iovcnt = 0;
        if body_len > 0 {
            // In bounds: writes never cross a chunk, chunks never cross the ring's end.
            s.iov[0] = iovec(&self.ring.as_slice()[body_at..body_at + body_len]);
            s.iovcnt = 1;
        }
        if tail > 0 {
            // One block per slot.
            s.iov[s.iovcnt as usize] = iovec(&self.tails.as_slice()[slot_tail..slot_tail + block]);
            s.iovcnt += 1;
        }
        s.busy = true;
        s.start = start;
        s.len = (body_len + if tail > 0 { block } else { 0 }) as u64;
        s.logical_start = self.submitted_pos;
        s.logical_end = logical_end;
        s.retries = 0;
        s.submitted_at = Some(std::time::Instant::now());
        // Durable by itself if it reaches the commit target and every earlier write has
        // completed (so the flush that ends it covers them too).
        s.dsync = dsync_ok && self.busy_slots == 0 && logical_end >= self.commit_target;
        self.busy_slots += 1;
        self.submitted_pos = logical_end;
    }

    fn submit_slot(&mut self, i: usize) -> io::Result<()> {
        let fd: RawFd = self.active.file.as_raw_fd();
        let s = &self.slots[i];
        // SAFETY: the iovecs live in `self.slots` (a boxed slice never reallocated) and point
        // into `ring`/`tails`, which outlive every operation: Drop reaps all completions before
        // freeing them. The ring bytes [start, start+len) are not modified while the slot is busy
        // (`has_room` keeps appends out of them; the partial block goes through the slot's own
        // tail copy), and the file stays open until the slot completes (roll and drop drain).
        unsafe {
            self.io
                .submit_writev(fd, s.iov.as_ptr(), s.iovcnt, s.start, s.dsync, i as u64)
        }
    }

    fn completed_pos(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.busy)
            .map(|s| s.logical_start)
            .min()
            .unwrap_or(self.submitted_pos)
    }

    fn syncs_inflight(&self) -> bool {
        self.syncs.iter().any(Option::is_some)
    }

    pub(super) fn io_inflight(&self) -> bool {
        self.busy_slots > 0 || self.syncs_inflight() || self.zero.inflight.is_some()
    }

    /// Submits one zero-ahead write when all appended data is already submitted and the zeroed
    /// region ends less than `zero_ahead_bytes` past the append position.
    fn pump_zero(&mut self) {
        if self.failed.is_some()
            || self.zero_stopped
            || self.cfg.zero_ahead_bytes == 0
            || self.zero.inflight.is_some()
            || self.submitted_pos < self.append_pos
        {
            return;
        }
        let frontier = align_up(self.append_pos, BLOCK_BYTES);
        let from = self.zeroed_to.max(frontier);
        let end = self.zero_limit;
        if from >= end || from >= frontier + self.cfg.zero_ahead_bytes {
            return;
        }
        let len = (end - from).min(ZERO_WRITE_BYTES_MAX);
        let mut iovcnt = 0;
        let mut left = len;
        while left > 0 {
            let n = left.min(ZERO_BUF_BYTES);
            self.zero.iov[iovcnt] = iovec(&self.zeros.as_slice()[..n as usize]);
            iovcnt += 1;
            left -= n;
        }
        self.zero.inflight = Some((from, len));
        let fd: RawFd = self.active.file.as_raw_fd();
        // SAFETY: the iovecs live in the boxed `self.zero` (never moved while in flight) and all
        // point into `self.zeros`, which is never written after open and outlives every
        // operation (Drop and roll drain first); the file stays open until the write completes.
        // The range lies past every byte submitted so far, and pump() holds back any data write
        // overlapping it until it completes, so zeros never race data on a block.
        let r = unsafe {
            self.io.submit_writev(
                fd,
                self.zero.iov.as_ptr(),
                iovcnt as u32,
                from,
                false,
                ZERO_TOKEN,
            )
        };
        if r.is_err() {
            self.zero.inflight = None;
            self.zero_stopped = true;
            self.stats.zero_errors += 1;
        }
    }

    fn on_zero_done(&mut self, res: i32) {
        let Some((from, len)) = self.zero.inflight.take() else {
            return;
        };
        if res >= 0 && res as u64 == len {
            self.zeroed_to = self.zeroed_to.max(from + len);
            self.stats.zero_writes += 1;
            self.stats.zero_bytes += len;
        } else {
            // Blocks not zeroed stay unwritten extents; data written there later is still
            // made durable by fdatasync (which then also commits the extent conversion).
            self.zero_stopped = true;
            self.stats.zero_errors += 1;
        }
    }

    /// Submits an fdatasync covering every completed write when a commit is wanted. Up to
    /// `syncs_inflight_max` run at once: a record need not wait for the sync in flight to end
    /// before its own starts. Each covers only writes that completed before it was submitted.
    pub(super) fn maybe_sync(&mut self) {
        if self.failed.is_some() || self.commit_target <= self.durable_pos {
            return;
        }
        let covered = self
            .syncs
            .iter()
            .flatten()
            .map(|s| s.1)
            .chain(
                self.slots
                    .iter()
                    .filter(|s| s.busy && s.dsync)
                    .map(|s| s.logical_end),
            )
            .fold(self.durable_pos, u64::max);
        let c = self.completed_pos();
        if c <= covered {
            return;
        }
        let limit = self.cfg.syncs_inflight_max as usize;
        let Some(slot) = self.syncs[..limit].iter().position(Option::is_none) else {
            return;
        };
        match self
            .io
            .submit_fdatasync(self.active.file.as_raw_fd(), FSYNC_TOKEN_BASE + slot as u64)
        {
            Ok(()) => self.syncs[slot] = Some((self.active.base, c, std::time::Instant::now())),
            Err(e) => {
                let path = self.active.path.clone();
                self.fail(LogIoError::Submit {
                    path,
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                });
            }
        }
    }

    pub(super) fn reap(&mut self, wait: Wait) {
        let mut done = std::mem::take(&mut self.done);
        done.clear();
        if let Err(e) = self.io.reap(wait, |t, r| done.push((t, r))) {
            let path = self.active.path.clone();
            self.fail(LogIoError::Submit {
                path,
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            });
        }
        for &(token, res) in &done {
            if token == ZERO_TOKEN {
                self.on_zero_done(res);
            } else if token >= FSYNC_TOKEN_BASE {
                self.on_sync_done((token - FSYNC_TOKEN_BASE) as usize, res);
            } else {
                self.on_write_done(token as usize, res);
            }
        }
        self.done = done;
    }

    fn on_write_done(&mut self, i: usize, res: i32) {
        let s = &mut self.slots[i];
        debug_assert!(s.busy);
        if res >= 0 && res as u64 == s.len {
            s.busy = false;
            self.busy_slots -= 1;
            self.stats.writes += 1;
            self.stats.write_bytes += res as u64;
            if s.dsync {
                let end = s.logical_end;
                self.stats.dsync_writes += 1;
                if let Some(t) = s.submitted_at {
                    let ns = t.elapsed().as_nanos() as u64;
                    self.stats.dsync_ns_total += ns;
                    self.stats.dsync_ns_max = self.stats.dsync_ns_max.max(ns);
                }
                if self.failed.is_none() {
                    self.advance_durable(end);
                }
            }
            return;
        }
        let path = self.active.path.clone();
        let (position, len) = (s.start, s.len);
        let retryable = res >= 0 || res == -libc::EINTR || res == -libc::EAGAIN;
        if retryable && s.retries < SHORT_WRITE_RETRIES_MAX && self.failed.is_none() {
            // Rewrite the whole range: the same bytes at the same place, so it is idempotent.
            s.retries += 1;
            let resubmit = self.submit_slot(i);
            if let Err(e) = resubmit {
                self.slots[i].busy = false;
                self.busy_slots -= 1;
                self.fail(LogIoError::Submit {
                    path,
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                });
            }
            return;
        }
        s.busy = false;
        self.busy_slots -= 1;
        if res >= 0 {
            self.fail(LogIoError::ShortWrite {
                path,
                position,
                written: res as u64,
                len,
            });
        } else {
            self.fail(LogIoError::Write {
                path,
                position,
                len,
                errno: -res,
            });
        }
    }

    fn on_sync_done(&mut self, slot: usize, res: i32) {
        let Some((base, target, started)) = self.syncs.get_mut(slot).and_then(Option::take) else {
            return;
        };
        // Rolls drain every sync first, so this always holds; positions of another segment
        // must never move this one's durable position.
        debug_assert_eq!(base, self.active.base);
        if base != self.active.base {
            return;
        }
        let ns = started.elapsed().as_nanos() as u64;
        self.stats.syncs += 1;
        self.stats.sync_ns_total += ns;
        self.stats.sync_ns_max = self.stats.sync_ns_max.max(ns);
        if res < 0 {
            let path = self.active.path.clone();
            self.fail(LogIoError::Sync {
                path,
                durable_position: self.durable_pos,
                errno: -res,
            });
            return;
        }
        if self.failed.is_some() {
            // A write failed meanwhile; acknowledge nothing more.
            return;
        }
        self.advance_durable(target);
    }

    /// Everything below `target` (a position in the active segment) is durable.
    fn advance_durable(&mut self, target: u64) {
        // Syncs may complete out of order; each makes its own target durable.
        self.durable_pos = self.durable_pos.max(target);
        while let Some(&(end, next)) = self.pending.front() {
            if end > self.durable_pos {
                break;
            }
            self.durable_offset = next;
            self.durable_batch_end = end;
            self.pending.pop_front();
        }
        // Release pairs with the Acquire load in Reader::durable_limit.
        self.shared
            .durable_offset
            .store(self.durable_offset, Ordering::Release);
    }

    pub(super) fn drain(&mut self) {
        // Bounded: every backend completes what it accepted; the bound only stops a broken one.
        for _ in 0..1_000_000 {
            if !self.io_inflight() {
                return;
            }
            self.reap(Wait::Forever);
        }
    }
}
