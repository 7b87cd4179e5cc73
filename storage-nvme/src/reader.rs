//! Readers: replay from an offset or a timestamp and follow the durable tail, reading whole
//! blocks with O_DIRECT into a caller-provided [`AlignedBuf`] (no per-record allocation).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::codec::{decode_batch, BatchDecodeError, BatchView};
use crate::index::{IndexCursor, SparseIndex};
use crate::io::{open_direct, AlignedBuf, BufTag};
use crate::layout::*;
use crate::log::Shared;
use crate::segment::*;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path} is corrupt at offset {position} (expected record offset {offset}): {detail}; the data below the durable offset cannot be served")]
    Corrupt {
        path: PathBuf,
        position: u64,
        offset: u64,
        detail: String,
    },
    #[error("record offset {offset} is no longer in the log (deleted by retention?); seek to {start} or later")]
    Missing { offset: u64, start: u64 },
    #[error("a batch of {needed} bytes does not fit the {have}-byte read buffer; use a buffer of at least batch_bytes_max + 8 KiB")]
    BufferTooSmall { needed: usize, have: usize },
    #[error(transparent)]
    File(#[from] FileError),
}

/// Why a seek failed.
#[derive(Debug, thiserror::Error)]
pub enum SeekError {
    #[error("offset {offset} is before the start of the log ({start}); seek to {start} or later")]
    BeforeStart { offset: u64, start: u64 },
    #[error("offset {offset} is beyond the end of the log ({end}); seek to {end} or earlier")]
    BeyondEnd { offset: u64, end: u64 },
    #[error("the log in {0} has no segments")]
    Empty(PathBuf),
    #[error(transparent)]
    File(#[from] FileError),
}

enum Limit {
    Live(Arc<Shared>),
    Fixed(u64),
}

struct ReaderSegment {
    base: u64,
    path: PathBuf,
    file: File,
    file_len: u64,
}

static READER_IDS: AtomicU64 = AtomicU64::new(1);

/// Iterations of the read loop per call: enough for every batch of a large segment.
const READ_STEPS_MAX: u32 = 1 << 24;

/// A cursor over one partition log. Created by [`crate::Log::reader`] (follows the durable
/// tail of a live log) or [`Reader::open`] (a snapshot of a log on disk, up to its last valid
/// batch).
pub struct Reader {
    id: u64,
    dir: PathBuf,
    limit: Limit,
    seg: Option<ReaderSegment>,
    pos: u64,
    next_offset: u64,
    skip_until: u64,
    ts_target: Option<u64>,
}

impl Reader {
    pub(crate) fn with_shared(dir: PathBuf, shared: Arc<Shared>, start_offset: u64) -> Self {
        Self {
            id: READER_IDS.fetch_add(1, Ordering::Relaxed),
            dir,
            limit: Limit::Live(shared),
            seg: None,
            pos: SEGMENT_HEADER_BYTES,
            next_offset: start_offset,
            skip_until: 0,
            ts_target: None,
        }
    }

    /// Opens a read-only snapshot of the log in `dir`: it ends at the last valid batch on disk.
    /// Positioned at the first record.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SeekError> {
        let dir = dir.as_ref().to_path_buf();
        let listing = list_dir(&dir)?;
        let (Some(&first), Some(&last)) = (listing.segments.first(), listing.segments.last())
        else {
            return Err(SeekError::Empty(dir));
        };
        let path = segment_path(&dir, last);
        let f = File::open(&path).map_err(ferr("cannot open segment", &path))?;
        let file_len = f
            .metadata()
            .map_err(ferr("cannot stat segment", &path))?
            .len();
        let (start_pos, start_off) = match load_indexes(&dir, last) {
            Ok((cp, _, _)) if cp.end_position <= file_len => (cp.end_position, cp.next_offset),
            _ => (SEGMENT_HEADER_BYTES, last),
        };
        let mut cur = IndexCursor::new(u64::MAX);
        let (mut o, mut t) = (SparseIndex::with_capacity(1), SparseIndex::with_capacity(1));
        let scan = scan_segment(
            &f,
            file_len,
            start_pos,
            start_off,
            1 << 20,
            (&mut cur, &mut o, &mut t),
        )
        .map_err(ferr("cannot read segment", &path))?;
        let mut r = Self {
            id: READER_IDS.fetch_add(1, Ordering::Relaxed),
            dir,
            limit: Limit::Fixed(scan.next_offset),
            seg: None,
            pos: SEGMENT_HEADER_BYTES,
            next_offset: first,
            skip_until: 0,
            ts_target: None,
        };
        r.seek_offset(first)?;
        Ok(r)
    }

    /// Every offset below this may be read (durable offset of a live log, or snapshot end).
    pub fn end_offset(&self) -> u64 {
        match &self.limit {
            // Acquire pairs with the Release store in Log::on_sync_done: bytes below the
            // published offset are on disk before we read the file.
            Limit::Live(s) => s.durable_offset.load(Ordering::Acquire),
            Limit::Fixed(n) => *n,
        }
    }

    /// Offset of the next record this reader returns (after skipping to a seek point).
    pub fn next_offset(&self) -> u64 {
        self.next_offset.max(self.skip_until)
    }

    fn open_segment(&mut self, base: u64) -> Result<(), FileError> {
        let path = segment_path(&self.dir, base);
        let file = open_direct(&path, false).map_err(ferr("cannot open segment", &path))?;
        let file_len = file
            .metadata()
            .map_err(ferr("cannot stat segment", &path))?
            .len();
        self.seg = Some(ReaderSegment {
            base,
            path,
            file,
            file_len,
        });
        Ok(())
    }

    /// Positions the reader at the batch holding `offset`; the first batch returned then
    /// yields records from `offset` on.
    pub fn seek_offset(&mut self, offset: u64) -> Result<(), SeekError> {
        let end = self.end_offset();
        if offset > end {
            return Err(SeekError::BeyondEnd { offset, end });
        }
        let listing = list_dir(&self.dir)?;
        let Some(&first) = listing.segments.first() else {
            return Err(SeekError::Empty(self.dir.clone()));
        };
        let Some(&base) = listing.segments.iter().rev().find(|&&b| b <= offset) else {
            return Err(SeekError::BeforeStart {
                offset,
                start: first,
            });
        };
        self.open_segment(base)?;
        let (mut pos, mut next) = (SEGMENT_HEADER_BYTES, base);
        if let Ok((_, offs, _)) = load_indexes(&self.dir, base) {
            if let Some((k, v)) = offs.floor(offset) {
                (pos, next) = (v, k);
            }
        }
        self.pos = pos;
        self.next_offset = next;
        self.skip_until = offset;
        self.ts_target = None;
        Ok(())
    }

    /// Positions the reader at the first record whose timestamp is >= `timestamp_ns` (the
    /// first batch whose max timestamp reaches it, from that record on). If no such record is
    /// durable yet, the reader waits at the tail for one.
    pub fn seek_timestamp(&mut self, timestamp_ns: u64) -> Result<(), SeekError> {
        let listing = list_dir(&self.dir)?;
        let Some(&first) = listing.segments.first() else {
            return Err(SeekError::Empty(self.dir.clone()));
        };
        let mut start = first;
        for (i, &base) in listing.segments.iter().enumerate() {
            start = base;
            match load_indexes(&self.dir, base) {
                Ok((cp, offs, times)) => {
                    let is_last = i + 1 == listing.segments.len();
                    if cp.max_timestamp_ns < timestamp_ns && !is_last {
                        continue;
                    }
                    if let Some((_, off)) = times.lower(timestamp_ns) {
                        // Start at the indexed batch at or before that offset.
                        start = offs.floor(off).map_or(base, |(k, _)| k);
                    }
                    break;
                }
                Err(_) => break,
            }
        }
        self.seek_offset(start.min(self.end_offset()))?;
        self.ts_target = Some(timestamp_ns);
        Ok(())
    }

    fn load(&mut self, buf: &mut AlignedBuf, limit: u64) -> Result<(), ReadError> {
        let seg = self.seg.as_ref().expect("segment open");
        let start = align_down(self.pos, BLOCK_BYTES);
        let want =
            (align_up(seg.file_len, BLOCK_BYTES).saturating_sub(start) as usize).min(buf.len());
        let dst = &mut buf.raw_mut()[..want];
        let n = loop {
            match seg.file.read_at(dst, start) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(FileError {
                        what: "cannot read segment",
                        path: seg.path.clone(),
                        source: e,
                    }
                    .into())
                }
            }
        };
        buf.tag = Some(BufTag {
            reader_id: self.id,
            segment_base: seg.base,
            file_pos: start,
            len: n,
            durable_at_load: limit,
        });
        Ok(())
    }

    /// Opens the segment that starts at `next_offset` (a reader between segments, or one that
    /// has not read yet), or says that the log no longer (or does not yet) hold that offset.
    fn open_next_segment(&mut self) -> Result<(), ReadError> {
        let listing = list_dir(&self.dir)?;
        let start = listing.segments.first().copied().unwrap_or(0);
        match listing
            .segments
            .iter()
            .rev()
            .find(|&&b| b <= self.next_offset)
        {
            Some(&b) if b == self.next_offset => {
                self.open_segment(b)?;
                self.pos = SEGMENT_HEADER_BYTES;
                Ok(())
            }
            _ => Err(ReadError::Missing {
                offset: self.next_offset,
                start,
            }),
        }
    }

    /// Returns the next durable batch, `Ok(None)` when the reader is at the durable tail (call
    /// again later to follow it), or an error naming the file and position of bad bytes.
    /// The batch borrows `buf`; one read fills `buf` with as many batches as fit.
    pub fn read_batch<'b>(
        &mut self,
        buf: &'b mut AlignedBuf,
    ) -> Result<Option<BatchView<'b>>, ReadError> {
        let mut fresh_pos = u64::MAX;
        for _ in 0..READ_STEPS_MAX {
            let limit = self.end_offset();
            if self.next_offset >= limit {
                return Ok(None);
            }
            if self.seg.is_none() {
                self.open_next_segment()?;
            }
            let seg = self.seg.as_ref().expect("segment open");
            let base = seg.base;
            let covered = matches!(buf.tag, Some(t) if t.reader_id == self.id && t.segment_base == base && t.file_pos <= self.pos && self.pos + BATCH_HEADER_BYTES as u64 <= t.file_pos + t.len as u64);
            if !covered {
                self.load(buf, limit)?;
                fresh_pos = self.pos;
            }
            let tag = buf.tag.expect("loaded");
            let rel = (self.pos - tag.file_pos) as usize;
            let res = decode_batch(&buf.as_slice()[rel.min(tag.len)..tag.len]).map(|v| {
                (
                    v.base_offset(),
                    v.next_offset(),
                    v.batch_bytes(),
                    v.max_timestamp_ns(),
                )
            });
            let fresh = fresh_pos == self.pos && tag.durable_at_load == limit;
            match res {
                Ok((b, next, len, max_ts)) if b == self.next_offset => {
                    if next > limit {
                        return Ok(None);
                    }
                    if next > tag.durable_at_load {
                        // Loaded before this batch was durable: read it again.
                        self.load(buf, limit)?;
                        fresh_pos = self.pos;
                        continue;
                    }
                    self.pos += len as u64;
                    self.next_offset = next;
                    if next <= self.skip_until {
                        continue;
                    }
                    if self.ts_target.is_some_and(|t| max_ts < t) {
                        continue;
                    }
                    let view = BatchView::from_verified(&buf.as_slice()[rel..rel + len]);
                    let mut skip = self.skip_until.saturating_sub(b) as u32;
                    if let Some(t) = self.ts_target.take() {
                        let first = view
                            .records()
                            .position(|r| r.timestamp_ns >= t)
                            .unwrap_or(0) as u32;
                        skip = skip.max(first);
                    }
                    return Ok(Some(view.with_skip(skip)));
                }
                Err(BatchDecodeError::Truncated { needed, .. })
                    if needed + BLOCK_BYTES as usize > buf.len() =>
                {
                    return Err(ReadError::BufferTooSmall {
                        needed: needed + BLOCK_BYTES as usize,
                        have: buf.len(),
                    });
                }
                other => {
                    if !fresh {
                        self.load(buf, limit)?;
                        fresh_pos = self.pos;
                        continue;
                    }
                    // Not the batch we need although it is below the durable offset: either
                    // this segment ended (the next one starts here) or the bytes are bad.
                    let next_path = segment_path(&self.dir, self.next_offset);
                    if self.next_offset != base && next_path.exists() {
                        self.open_segment(self.next_offset)?;
                        self.pos = SEGMENT_HEADER_BYTES;
                        continue;
                    }
                    let seg = self.seg.as_ref().expect("segment open");
                    let detail = match other {
                        Ok((b, ..)) => format!("found a batch with base offset {b}"),
                        Err(e) => e.to_string(),
                    };
                    return Err(ReadError::Corrupt {
                        path: seg.path.clone(),
                        position: self.pos,
                        offset: self.next_offset,
                        detail,
                    });
                }
            }
        }
        Ok(None)
    }
}
