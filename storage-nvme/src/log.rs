//! The writer: one partition's segment log with group commit.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::codec::{batch_bytes_for, encode_batch, BatchEncodeError, Record};
use crate::index::{IndexCheckpoint, IndexCursor, SparseIndex};
use crate::io::{AlignedBuf, BufBacking, IoBackend, IoMode, SysIo, Wait};
use crate::layout::*;
use crate::prepare::{finalize_segment, Preparer};
use crate::reader::Reader;
use crate::retention::{segments_to_delete, RetentionPolicy, SegmentInfo};
use crate::scan::ScanStop;
use crate::segment::*;

/// Limits and tuning of one partition log. Every size is in bytes.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub stream: u32,
    pub partition: u16,
    /// Preallocated size of each segment file (multiple of [`BLOCK_BYTES`]).
    pub segment_bytes: u64,
    /// Size of the in-memory write ring (multiple of `write_bytes_max`).
    pub write_buffer_bytes: u64,
    /// Largest single write submitted to the device (multiple of [`BLOCK_BYTES`]).
    pub write_bytes_max: u64,
    /// Writes in flight at once (the queue depth).
    pub writes_inflight_max: u32,
    /// Largest encoded batch accepted by `append_batch`.
    pub batch_bytes_max: u64,
    /// fdatasyncs in flight at once (1..=SYNCS_INFLIGHT_MAX).
    pub syncs_inflight_max: u32,
    /// Batches appended but not yet durable; beyond this `append_batch` back-pressures.
    pub batches_pending_max: u32,
    /// One sparse index entry per this many bytes of batches.
    pub index_interval_bytes: u64,
    /// Write a recovery checkpoint (the active segment's indexes) every this many durable bytes.
    pub checkpoint_interval_bytes: u64,
    pub retention: RetentionPolicy,
    pub io_mode: IoMode,
    /// Offset of the first record of a new, empty log.
    pub initial_offset: u64,
    /// Keep up to this many bytes past the append position of the active segment written with
    /// zeros, in the background (0 disables; multiple of [`BLOCK_BYTES`]). fallocate leaves
    /// *unwritten* extents: the first write into one makes the file system convert the extent
    /// on completion, and the next fdatasync must then commit a journal transaction (ext4, xfs)
    /// on top of flushing the device cache. Overwriting zeroed blocks needs no metadata, so a
    /// group commit costs one cache flush. Zeroing runs only while every appended byte is
    /// already submitted and uses one extra I/O slot, so it never delays a data write at full
    /// throughput (then it simply falls behind and data lands on unwritten extents as before).
    pub zero_ahead_bytes: u64,
    /// Make a commit's last write durable by itself (`RWF_DSYNC`) when no other write is in
    /// flight, instead of a write and then an fdatasync: one device round trip and no wait
    /// for the application to see the write complete before it asks for the sync. Only when
    /// the backend supports it; group commit with fdatasync covers every other case.
    pub dsync_commits: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            stream: 0,
            partition: 0,
            segment_bytes: 1 << 30,
            write_buffer_bytes: 8 << 20,
            write_bytes_max: 1 << 20,
            writes_inflight_max: 4,
            batch_bytes_max: 1 << 20,
            syncs_inflight_max: 2,
            batches_pending_max: 1 << 16,
            index_interval_bytes: 64 << 10,
            checkpoint_interval_bytes: 64 << 20,
            retention: RetentionPolicy::default(),
            io_mode: IoMode::Auto,
            initial_offset: 0,
            zero_ahead_bytes: 16 << 20,
            dsync_commits: true,
        }
    }
}

/// Smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Largest number of writes in flight accepted.
pub const WRITES_INFLIGHT_MAX: u32 = 256;
/// Attempts (5 ms apart) to take the directory's writer lock.
pub const LOCK_ATTEMPTS_MAX: u32 = 40;
/// Largest `syncs_inflight_max`.
pub const SYNCS_INFLIGHT_MAX: usize = 4;
/// Retries of a short write before the log fails.
pub const SHORT_WRITE_RETRIES_MAX: u32 = 3;
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN > SEGMENT_HEADER_BYTES);

impl LogConfig {
    fn validate(&self) -> Result<(), String> {
        let b = BLOCK_BYTES;
        if self.segment_bytes < SEGMENT_BYTES_MIN || !self.segment_bytes.is_multiple_of(b) {
            return Err(format!(
                "segment_bytes {} must be a multiple of {b} and >= {SEGMENT_BYTES_MIN}",
                self.segment_bytes
            ));
        }
        if self.write_bytes_max == 0 || !self.write_bytes_max.is_multiple_of(b) {
            return Err(format!(
                "write_bytes_max {} must be a non-zero multiple of {b}",
                self.write_bytes_max
            ));
        }
        if self.write_buffer_bytes < 2 * self.write_bytes_max
            || !self.write_buffer_bytes.is_multiple_of(self.write_bytes_max)
        {
            return Err(format!("write_buffer_bytes {} must be a multiple of write_bytes_max {} and at least twice it", self.write_buffer_bytes, self.write_bytes_max));
        }
        if self.batch_bytes_max < 64
            || self.batch_bytes_max > BATCH_BYTES_MAX as u64
            || self.batch_bytes_max > self.segment_bytes - SEGMENT_HEADER_BYTES
            || self.batch_bytes_max + b > self.write_buffer_bytes
        {
            return Err(format!("batch_bytes_max {} must be in 64..={BATCH_BYTES_MAX} and fit a segment and the write buffer with a block to spare", self.batch_bytes_max));
        }
        if self.writes_inflight_max == 0 || self.writes_inflight_max > WRITES_INFLIGHT_MAX {
            return Err(format!(
                "writes_inflight_max {} must be in 1..={WRITES_INFLIGHT_MAX}",
                self.writes_inflight_max
            ));
        }
        if self.syncs_inflight_max == 0 || self.syncs_inflight_max as usize > SYNCS_INFLIGHT_MAX {
            return Err(format!(
                "syncs_inflight_max {} must be in 1..={SYNCS_INFLIGHT_MAX}",
                self.syncs_inflight_max
            ));
        }
        if !self.zero_ahead_bytes.is_multiple_of(b) {
            return Err(format!(
                "zero_ahead_bytes {} must be a multiple of {b} (0 disables zeroing ahead)",
                self.zero_ahead_bytes
            ));
        }
        if self.batches_pending_max == 0
            || self.index_interval_bytes == 0
            || self.checkpoint_interval_bytes == 0
        {
            return Err("batches_pending_max, index_interval_bytes and checkpoint_interval_bytes must be non-zero".into());
        }
        Ok(())
    }
    fn index_capacity(&self) -> usize {
        (self.segment_bytes / self.index_interval_bytes.min(self.segment_bytes)) as usize + 2
    }
}

/// A write or sync failure. Once one happens the log refuses further work: reopen it (recovery
/// keeps every acknowledged record).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogIoError {
    #[error("write of {len} bytes to {path} at offset {position} failed: {}; check the disk, then reopen the log", io::Error::from_raw_os_error(*.errno))]
    Write {
        path: PathBuf,
        position: u64,
        len: u64,
        errno: i32,
    },
    #[error("write to {path} at offset {position} stayed short ({written} of {len} bytes) after {SHORT_WRITE_RETRIES_MAX} retries; reopen the log")]
    ShortWrite {
        path: PathBuf,
        position: u64,
        written: u64,
        len: u64,
    },
    #[error("fdatasync of {path} failed: {}; data after offset {durable_position} is not durable, reopen the log", io::Error::from_raw_os_error(*.errno))]
    Sync {
        path: PathBuf,
        durable_position: u64,
        errno: i32,
    },
    #[error("submitting I/O for {path} failed: {}", io::Error::from_raw_os_error(*.errno))]
    Submit { path: PathBuf, errno: i32 },
    #[error("cannot start segment {path}: {detail}")]
    Roll { path: PathBuf, detail: String },
}

/// Why `append_batch` refused a batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("back-pressured: the write buffer or the pending-batch limit is full; call poll() and retry")]
    BackPressured,
    #[error("offset mismatch: the log expects base offset {expected}, got {got}")]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("batch of {bytes} bytes exceeds batch_bytes_max {max}; split it")]
    TooLarge { bytes: u64, max: u64 },
    #[error(transparent)]
    Encode(#[from] BatchEncodeError),
    #[error("the log has failed and must be reopened: {0}")]
    Failed(LogIoError),
}

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    #[error("invalid log configuration: {0}")]
    Config(String),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} is locked by another writer; stop it first")]
    Locked { path: PathBuf },
    #[error(
        "{path} is not a MemoryStreamer log file ({reason}); point the log at its own directory"
    )]
    NotOurs { path: PathBuf, reason: String },
    #[error("{path} belongs to stream {stream} partition {partition}, not to this log; check the directory")]
    WrongPartition {
        path: PathBuf,
        stream: u32,
        partition: u16,
    },
    #[error("{path} is corrupt at offset {position}: {detail}; restore it from a replica or move it away")]
    Corrupt {
        path: PathBuf,
        position: u64,
        detail: String,
    },
    #[error("cannot set up I/O: {0}")]
    Io(io::Error),
}

/// Why retention could not delete a segment.
#[derive(Debug, thiserror::Error)]
#[error("retention: {0}")]
pub struct LogRetentionError(#[from] pub FileError);

/// Why closing a log failed.
#[derive(Debug, thiserror::Error)]
pub enum LogCloseError {
    #[error(transparent)]
    Io(#[from] LogIoError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// What recovery did to make the log consistent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryAction {
    /// Bytes after the last valid batch were cut (a torn or never-acknowledged tail).
    TornTailTruncated {
        path: PathBuf,
        position: u64,
        bytes: u64,
        reason: String,
    },
    /// An index was missing or damaged and was rebuilt from the segment.
    IndexRebuilt { path: PathBuf, reason: String },
    /// An index file without a segment (or a half-written temporary one) was removed.
    OrphanIndexRemoved { path: PathBuf },
}

/// The outcome of recovery on open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// First offset still in the log.
    pub start_offset: u64,
    /// Offset of the next record to append (everything before it is durable).
    pub next_offset: u64,
    /// Records in batches verified by CRC during recovery.
    pub records_verified: u64,
    pub actions: Vec<RecoveryAction>,
}

impl RecoveryReport {
    /// Bytes dropped from torn tails.
    pub fn dropped_bytes(&self) -> u64 {
        self.actions
            .iter()
            .map(|a| {
                if let RecoveryAction::TornTailTruncated { bytes, .. } = a {
                    *bytes
                } else {
                    0
                }
            })
            .sum()
    }
}

/// Where an appended batch went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendPosition {
    pub base_offset: u64,
    /// Offset after the batch; the batch is durable once `durable_offset() >= next_offset`.
    pub next_offset: u64,
    pub segment_base: u64,
    pub position: u64,
}

/// Segments deleted by retention.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted: Vec<PathBuf>,
    pub bytes_freed: u64,
}

/// Counters of one log since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Writes completed and the bytes they carried (partial tail blocks count whole).
    pub writes: u64,
    pub write_bytes: u64,
    /// fdatasyncs completed, their total and largest duration (submission to reaping).
    pub syncs: u64,
    pub sync_ns_total: u64,
    pub sync_ns_max: u64,
    /// `append_batch` calls refused for lack of ring space.
    pub back_pressured: u64,
    /// Mid-segment recovery checkpoints written, and failures to write one.
    pub checkpoints: u64,
    pub checkpoint_errors: u64,
    /// Segment rolls and the time they blocked `append_batch` in total.
    pub rolls: u64,
    pub roll_ns_total: u64,
    /// Writes submitted with RWF_DSYNC that made a commit durable on their own, and their
    /// total and largest duration (first submission to reaping).
    pub dsync_writes: u64,
    pub dsync_ns_total: u64,
    pub dsync_ns_max: u64,
    /// Zero-ahead writes completed and their bytes (see [`LogConfig::zero_ahead_bytes`]).
    pub zero_writes: u64,
    pub zero_bytes: u64,
    /// Zero-ahead writes that failed; the first failure stops zeroing ahead (no data is at
    /// stake: the blocks stay unwritten extents, which read as zeros too).
    pub zero_errors: u64,
    /// Rolls that found the next segment preallocated by the helper thread, and rolls that
    /// created it themselves (helper busy, failed or absent). See `prepare.rs`.
    pub prepared_rolls: u64,
    pub unprepared_rolls: u64,
    /// Sealed-segment index saves by the helper thread, and failures (rebuilt at the next
    /// open). As of the last roll, retention or close.
    pub index_saves: u64,
    pub index_save_errors: u64,
}

/// Positions shared with readers (possibly on other threads).
#[derive(Debug)]
pub(crate) struct Shared {
    /// Every offset below this is durable. Release-stored by the writer after fdatasync;
    /// Acquire-loaded by readers before reading the file.
    pub durable_offset: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct SealedSegment {
    info: SegmentInfo,
}

struct Active {
    base: u64,
    path: PathBuf,
    file: File,
    offs: SparseIndex,
    times: SparseIndex,
    cursor: IndexCursor,
}

/// One write in flight. The iovecs point into the ring and into `tail`.
struct WriteSlot {
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
struct ZeroWrite {
    iov: [libc::iovec; ZERO_IOVS],
    inflight: Option<(u64, u64)>,
}

// SAFETY: as for WriteSlot: the iovecs point only into the owning Log's `zeros` buffer.
unsafe impl Send for ZeroWrite {}

/// One partition's log: appends batches, group-commits them, recovers on open.
///
/// Not `Sync`: one thread (the archiver agent) drives it; readers share only an atomic.
pub struct Log<B: IoBackend = SysIo> {
    dir: PathBuf,
    cfg: LogConfig,
    io: B,
    _lock: File,
    sealed: Vec<SealedSegment>,
    active: Active,
    ring: AlignedBuf,
    ring_bytes: u64,
    ring_origin: u64,
    tails: AlignedBuf,
    slots: Box<[WriteSlot]>,
    busy_slots: u32,
    append_pos: u64,
    submitted_pos: u64,
    durable_pos: u64,
    commit_target: u64,
    /// fdatasyncs in flight: (segment base, position they make durable, submission time).
    syncs: [Option<(u64, u64, std::time::Instant)>; SYNCS_INFLIGHT_MAX],
    checkpoint_pos: u64,
    /// End of the last durable batch (`durable_pos` may be inside the next batch).
    durable_batch_end: u64,
    stats: LogStats,
    next_offset: u64,
    durable_offset: u64,
    pending: VecDeque<(u64, u64)>,
    done: Vec<(u64, i32)>,
    failed: Option<LogIoError>,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
    /// Zero-ahead state: every block of the active segment below `zeroed_to` has been written
    /// (data or zeros); `zeros` is the read-only source block of zero writes.
    zeros: AlignedBuf,
    zero: Box<ZeroWrite>,
    zeroed_to: u64,
    /// Zeroing never goes past the active file's length (that would change its size).
    zero_limit: u64,
    zero_stopped: bool,
    /// The helper thread (next segment preallocation, sealed index saves); None if it could
    /// not be started, and then the roll does that work itself.
    prep: Option<Preparer>,
}

/// The file's length rounded down to a block, or 0 (no zeroing ahead) if it cannot be read.
fn file_len(f: &File) -> u64 {
    f.metadata().map_or(0, |m| align_down(m.len(), BLOCK_BYTES))
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Log<SysIo> {
    /// Opens (or creates) the log in `dir` with the production backend, running recovery.
    pub fn open(
        dir: impl AsRef<Path>,
        cfg: LogConfig,
    ) -> Result<(Self, RecoveryReport), LogOpenError> {
        let io = SysIo::new(
            cfg.io_mode,
            cfg.writes_inflight_max + cfg.syncs_inflight_max + 1,
        )
        .map_err(LogOpenError::Io)?;
        Self::open_with(dir, cfg, io)
    }
}

impl<B: IoBackend> Log<B> {
    /// Opens (or creates) the log in `dir` over the given I/O backend, running recovery.
    pub fn open_with(
        dir: impl AsRef<Path>,
        cfg: LogConfig,
        mut io: B,
    ) -> Result<(Self, RecoveryReport), LogOpenError> {
        cfg.validate().map_err(LogOpenError::Config)?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(ferr("cannot create log directory", &dir))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(ferr("cannot open lock file", &lock_path))?;
        // A child forked by another thread holds our descriptors until it execs: retry briefly.
        let mut locked = false;
        for _ in 0..LOCK_ATTEMPTS_MAX {
            // SAFETY: flock on an open fd has no memory-safety preconditions.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                locked = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if !locked {
            return Err(LogOpenError::Locked { path: lock_path });
        }
        let listing = list_dir(&dir)?;
        if let Some(p) = listing.foreign.first() {
            return Err(LogOpenError::NotOurs {
                path: p.clone(),
                reason: "unexpected file name".into(),
            });
        }
        let mut report = RecoveryReport::default();
        for p in &listing.temp {
            fs::remove_file(p).map_err(ferr("cannot remove temporary index", p))?;
            report
                .actions
                .push(RecoveryAction::OrphanIndexRemoved { path: p.clone() });
        }
        for (base, ext) in &listing.index_files {
            if listing.segments.binary_search(base).is_err() {
                let p = dir.join(file_name(*base, ext));
                fs::remove_file(&p).map_err(ferr("cannot remove orphan index", &p))?;
                report
                    .actions
                    .push(RecoveryAction::OrphanIndexRemoved { path: p });
            }
        }
        let mut bases = listing.segments.clone();
        if bases.is_empty() {
            let h = SegmentHeader {
                base_offset: cfg.initial_offset,
                created_unix_ns: now_unix_ns(),
                segment_bytes: cfg.segment_bytes,
                stream: cfg.stream,
                partition: cfg.partition,
            };
            create_segment(&dir, &h)?;
            bases.push(cfg.initial_offset);
        }
        let mut sealed = Vec::with_capacity(bases.len() + 64);
        let window =
            (cfg.write_bytes_max as usize).max(cfg.batch_bytes_max as usize + BLOCK_BYTES as usize);
        let mut scratch = Vec::new();
        let last = bases.len() - 1;
        let mut active = None;
        let mut next_expected = bases[0];
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(ferr("cannot open segment", &path))?;
            let h = match read_segment_header(&f).map_err(ferr("cannot read segment", &path))? {
                Ok(h) => h,
                Err(e) => {
                    return Err(LogOpenError::NotOurs {
                        path,
                        reason: e.to_string(),
                    })
                }
            };
            if h.base_offset != base {
                return Err(LogOpenError::NotOurs {
                    path,
                    reason: format!(
                        "header base offset {} does not match the file name",
                        h.base_offset
                    ),
                });
            }
            if h.stream != cfg.stream || h.partition != cfg.partition {
                return Err(LogOpenError::WrongPartition {
                    path,
                    stream: h.stream,
                    partition: h.partition,
                });
            }
            if base != next_expected {
                return Err(LogOpenError::Corrupt { path, position: SEGMENT_HEADER_BYTES, detail: format!("segment starts at offset {base} but the previous one ends at {next_expected} (missing records)") });
            }
            let file_len = f
                .metadata()
                .map_err(ferr("cannot stat segment", &path))?
                .len();
            let cap = cfg
                .index_capacity()
                .max((file_len / cfg.index_interval_bytes) as usize + 2);
            // Start from the index checkpoint when it is usable.
            let loaded = load_indexes(&dir, base).and_then(|(cp, o, t)| {
                if cp.end_position > file_len {
                    Err(format!(
                        "checkpoint position {} is past the end of {}",
                        cp.end_position,
                        path.display()
                    ))
                } else {
                    Ok((cp, o, t))
                }
            });
            let (mut offs, mut times, mut cursor, start_pos, start_off, had_index) = match loaded {
                Ok((cp, o, t)) => {
                    let mut cur = IndexCursor::new(cfg.index_interval_bytes);
                    cur.max_timestamp_ns = cp.max_timestamp_ns;
                    let mut oo = SparseIndex::with_capacity(cap.max(o.entries().len()));
                    let mut tt = SparseIndex::with_capacity(cap.max(t.entries().len()));
                    for &(k, v) in o.entries() {
                        oo.push(k, v);
                    }
                    for &(k, v) in t.entries() {
                        tt.push(k, v);
                    }
                    if let Some(&(_, last_pos)) = o.entries().last() {
                        cur.resume_after(cp.end_position - last_pos);
                    }
                    (oo, tt, cur, cp.end_position, cp.next_offset, Ok(()))
                }
                Err(reason) => (
                    SparseIndex::with_capacity(cap),
                    SparseIndex::with_capacity(cap),
                    IndexCursor::new(cfg.index_interval_bytes),
                    SEGMENT_HEADER_BYTES,
                    base,
                    Err(reason),
                ),
            };
            if i < last && had_index.is_ok() {
                // Sealed segment with a good index: trust its checkpoint (fsynced before sealing).
                next_expected = start_off;
                sealed.push(SealedSegment {
                    info: SegmentInfo {
                        base_offset: base,
                        file_bytes: file_len,
                        max_timestamp_ns: cursor.max_timestamp_ns,
                    },
                });
                continue;
            }
            let scan = scan_segment(
                &f,
                file_len,
                start_pos,
                start_off,
                window,
                (&mut cursor, &mut offs, &mut times),
            )
            .map_err(ferr("cannot read segment", &path))?;
            report.records_verified += scan.next_offset - start_off;
            if i < last {
                // Sealed segment: the next one must start where this one ends.
                if scan.next_offset != bases[i + 1] {
                    return Err(LogOpenError::Corrupt { path, position: scan.end_position, detail: format!("sealed segment ends at offset {} ({:?}) but the next segment starts at {}", scan.next_offset, scan.stop, bases[i + 1]) });
                }
                let cp = IndexCheckpoint {
                    base_offset: base,
                    end_position: scan.end_position,
                    next_offset: scan.next_offset,
                    max_timestamp_ns: cursor.max_timestamp_ns,
                };
                save_indexes(&dir, &cp, offs.entries(), times.entries(), &mut scratch)?;
                report.actions.push(RecoveryAction::IndexRebuilt {
                    path: offset_index_path(&dir, base),
                    reason: had_index.err().unwrap_or_default(),
                });
                next_expected = scan.next_offset;
                sealed.push(SealedSegment {
                    info: SegmentInfo {
                        base_offset: base,
                        file_bytes: file_len,
                        max_timestamp_ns: cursor.max_timestamp_ns,
                    },
                });
                continue;
            }
            // Active segment: cut anything after the last valid batch.
            let horizon =
                (scan.end_position + 2 * cfg.write_buffer_bytes + (8 << 20)).min(file_len);
            let garbage = last_nonzero(&f, scan.end_position, horizon)
                .map_err(ferr("cannot read segment", &path))?;
            let torn = !matches!(scan.stop, ScanStop::End { .. }) || garbage.is_some();
            if torn {
                let bytes = garbage
                    .unwrap_or(scan.end_position)
                    .saturating_sub(scan.end_position);
                truncate_tail(&f, &path, scan.end_position, file_len)?;
                report.actions.push(RecoveryAction::TornTailTruncated {
                    path: path.clone(),
                    position: scan.end_position,
                    bytes,
                    reason: format!("{:?}", scan.stop),
                });
            }
            drop(f);
            let file = io
                .open_segment(&path)
                .map_err(ferr("cannot open segment for writing", &path))?;
            active = Some((
                Active {
                    base,
                    path,
                    file,
                    offs,
                    times,
                    cursor,
                },
                scan.end_position,
                scan.next_offset,
            ));
        }
        let (active, end_pos, next_offset) =
            active.expect("the last segment is always opened as active");
        report.segments = bases.len();
        report.start_offset = bases[0];
        report.next_offset = next_offset;

        let ring_bytes = cfg.write_buffer_bytes;
        let mut ring = AlignedBuf::new(
            (ring_bytes + cfg.batch_bytes_max.next_multiple_of(BLOCK_BYTES)) as usize,
        )
        .map_err(LogOpenError::Io)?;
        let ring_origin = align_down(end_pos, BLOCK_BYTES);
        if end_pos > ring_origin {
            // Keep the partial last block: the next write rewrites it whole.
            let n = read_full_at(
                &active.file,
                &mut ring.raw_mut()[..BLOCK_BYTES as usize],
                ring_origin,
            )
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
        let zero_limit = file_len(&active.file);
        let zeros = AlignedBuf::new(if cfg.zero_ahead_bytes > 0 {
            ZERO_BUF_BYTES as usize
        } else {
            BLOCK_BYTES as usize
        })
        .map_err(LogOpenError::Io)?;
        let slots = (0..n)
            .map(|_| WriteSlot {
                busy: false,
                start: 0,
                len: 0,
                logical_start: 0,
                logical_end: 0,
                retries: 0,
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; 2],
                iovcnt: 0,
                dsync: false,
                submitted_at: None,
            })
            .collect();
        let log = Self {
            dir,
            io,
            _lock: lock,
            sealed,
            active,
            ring,
            ring_bytes,
            ring_origin,
            tails,
            slots,
            busy_slots: 0,
            append_pos: end_pos,
            submitted_pos: end_pos,
            durable_pos: end_pos,
            commit_target: end_pos,
            syncs: [None; SYNCS_INFLIGHT_MAX],
            checkpoint_pos: end_pos,
            durable_batch_end: end_pos,
            stats: LogStats::default(),
            next_offset,
            durable_offset: next_offset,
            pending: VecDeque::with_capacity(cfg.batches_pending_max as usize),
            done: Vec::with_capacity(n + 2),
            failed: None,
            shared: Arc::new(Shared {
                durable_offset: AtomicU64::new(next_offset),
            }),
            scratch,
            zeros,
            zero: Box::new(ZeroWrite {
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; ZERO_IOVS],
                inflight: None,
            }),
            zeroed_to: 0,
            zero_limit,
            zero_stopped: false,
            prep: None,
            cfg,
        };
        let mut log = log;
        log.prep = Preparer::start(&log.dir);
        if let Some(p) = &mut log.prep {
            p.prepare(&log.dir, log.cfg.segment_bytes);
        }
        Ok((log, report))
    }

    /// The I/O backend in use ("io_uring", "pwrite", ...).
    pub fn backend_name(&self) -> &'static str {
        self.io.name()
    }
    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        let mut s = self.stats;
        if let Some(p) = &self.prep {
            s.index_saves = p.stats.index_saves;
            s.index_save_errors = p.stats.index_save_errors;
        }
        s
    }
    /// The I/O backend.
    pub fn backend(&self) -> &B {
        &self.io
    }
    /// Whether the write ring got huge pages.
    pub fn buffer_backing(&self) -> BufBacking {
        self.ring.backing()
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }
    /// Offset the next appended record must have.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }
    /// Every offset below this is durable (fdatasync completed) and may be acknowledged.
    pub fn durable_offset(&self) -> u64 {
        self.durable_offset
    }
    /// First offset still in the log (after retention).
    pub fn start_offset(&self) -> u64 {
        self.sealed
            .first()
            .map_or(self.active.base, |s| s.info.base_offset)
    }
    /// The failure that stopped the log, if any.
    pub fn failure(&self) -> Option<&LogIoError> {
        self.failed.as_ref()
    }
    /// A reader of this log that follows the durable tail (usable from another thread).
    pub fn reader(&self) -> Reader {
        Reader::with_shared(self.dir.clone(), self.shared.clone(), self.start_offset())
    }

    fn idx(&self, pos: u64) -> usize {
        ((pos - self.ring_origin) % self.ring_bytes) as usize
    }

    fn check_failed(&self) -> Result<(), AppendError> {
        match &self.failed {
            Some(e) => Err(AppendError::Failed(e.clone())),
            None => Ok(()),
        }
    }

    /// Copies one batch into the write ring. The batch is *appended* (readable after it becomes
    /// durable); it becomes durable after a later [`flush`](Self::flush) completes, observed
    /// through [`poll`](Self::poll) / [`durable_offset`](Self::durable_offset).
    /// `base_offset` must equal [`next_offset`](Self::next_offset) (offsets are assigned by the
    /// caller, the partition leader). Never allocates. Rolling to a new segment blocks until the
    /// old one is durable.
    pub fn append_batch(
        &mut self,
        base_offset: u64,
        records: &[Record<'_>],
    ) -> Result<AppendPosition, AppendError> {
        self.check_failed()?;
        if base_offset != self.next_offset {
            return Err(AppendError::OffsetMismatch {
                expected: self.next_offset,
                got: base_offset,
            });
        }
        if records.is_empty() {
            return Err(BatchEncodeError::Empty.into());
        }
        let len = batch_bytes_for(records) as u64;
        if len > self.cfg.batch_bytes_max {
            return Err(AppendError::TooLarge {
                bytes: len,
                max: self.cfg.batch_bytes_max,
            });
        }
        if self.pending.len() >= self.cfg.batches_pending_max as usize {
            self.poll().map_err(AppendError::Failed)?;
            if self.pending.len() >= self.cfg.batches_pending_max as usize {
                return Err(AppendError::BackPressured);
            }
        }
        if self.append_pos + len > self.segment_capacity() {
            self.roll().map_err(AppendError::Failed)?;
        }
        if !self.has_room(len) {
            self.poll().map_err(AppendError::Failed)?;
            if !self.has_room(len) {
                self.stats.back_pressured += 1;
                return Err(AppendError::BackPressured);
            }
        }
        let at = self.idx(self.append_pos);
        let ring_bytes = self.ring_bytes as usize;
        let buf = self.ring.raw_mut();
        let n = encode_batch(&mut buf[at..at + len as usize], base_offset, records)?;
        debug_assert_eq!(n as u64, len);
        if at + n > ring_bytes {
            // The batch ran into the spill area: move that part to the ring's start.
            buf.copy_within(ring_bytes..at + n, 0);
        }
        let max_ts = records.iter().map(|r| r.timestamp_ns).max().unwrap_or(0);
        let a = &mut self.active;
        a.cursor.note_batch(
            &mut a.offs,
            &mut a.times,
            base_offset,
            self.append_pos,
            len,
            max_ts,
        );
        let pos = AppendPosition {
            base_offset,
            next_offset: base_offset + records.len() as u64,
            segment_base: self.active.base,
            position: self.append_pos,
        };
        self.append_pos += len;
        self.next_offset = pos.next_offset;
        self.pending.push_back((self.append_pos, self.next_offset));
        self.pump();
        self.submit_queued();
        Ok(pos)
    }

    fn segment_capacity(&self) -> u64 {
        self.cfg.segment_bytes
    }

    fn hold_start(&self) -> u64 {
        let mut h = align_down(self.submitted_pos, BLOCK_BYTES);
        for s in self.slots.iter().filter(|s| s.busy) {
            h = h.min(s.start);
        }
        h
    }

    fn has_room(&self, len: u64) -> bool {
        self.append_pos + len <= self.hold_start() + self.ring_bytes
    }

    /// Requests a group commit of everything appended so far: submits the pending writes and,
    /// when they complete, one fdatasync. Non-blocking; progress happens in [`poll`](Self::poll).
    pub fn flush(&mut self) -> Result<(), LogIoError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.commit_target = self.append_pos;
        self.pump();
        self.maybe_sync();
        self.submit_queued();
        self.failed.clone().map_or(Ok(()), Err)
    }

    /// Reaps completions, submits more writes and syncs; returns the durable offset.
    /// Every `checkpoint_interval_bytes` of durable data it also writes the active segment's
    /// index files (a recovery checkpoint; a few small file writes).
    pub fn poll(&mut self) -> Result<u64, LogIoError> {
        self.reap(Wait::No);
        self.pump();
        self.maybe_sync();
        self.submit_queued();
        if self.failed.is_none()
            && self.durable_pos >= self.checkpoint_pos + self.cfg.checkpoint_interval_bytes
        {
            if self.checkpoint().is_err() {
                // Not fatal: recovery falls back to the previous checkpoint.
                self.stats.checkpoint_errors += 1;
            } else {
                self.stats.checkpoints += 1;
            }
        }
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(self.durable_offset),
        }
    }

    /// Like [`poll`](Self::poll), but first blocks until at least one write or sync in flight
    /// completes (returns at once when none is). Use it on [`AppendError::BackPressured`] when
    /// the thread has nothing else to do: it leaves the CPU to the kernel's I/O completion work.
    pub fn wait(&mut self) -> Result<u64, LogIoError> {
        if self.io_inflight() {
            self.reap(Wait::Forever);
        }
        self.poll()
    }

    /// Like [`wait`](Self::wait) but blocks at most `timeout` (e.g. until the caller's next
    /// deadline), leaving the CPU to the kernel's completion work meanwhile.
    pub fn wait_timeout(&mut self, timeout: std::time::Duration) -> Result<u64, LogIoError> {
        if self.io_inflight() {
            self.reap(Wait::Timeout(timeout));
        }
        self.poll()
    }

    /// Flushes and blocks until everything appended is durable; returns the durable offset.
    pub fn sync(&mut self) -> Result<u64, LogIoError> {
        self.flush()?;
        while self.durable_pos < self.append_pos && self.failed.is_none() {
            let waiting = self.io_inflight();
            self.reap(if waiting { Wait::Forever } else { Wait::No });
            self.pump();
            self.maybe_sync();
            self.submit_queued();
        }
        self.failed.clone().map_or(Ok(self.durable_offset), Err)
    }

    fn fail(&mut self, e: LogIoError) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }

    fn submit_queued(&mut self) {
        if let Err(e) = self.io.submit() {
            let path = self.active.path.clone();
            self.fail(LogIoError::Submit {
                path,
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            });
        }
    }

    /// Submits writes (data first, then zeroing ahead).
    fn pump(&mut self) {
        self.pump_data();
        self.pump_zero();
    }

    /// Submits writes: whole chunks always, the partial tail when a commit is requested.
    fn pump_data(&mut self) {
        if self.failed.is_some() {
            return;
        }
        while self.submitted_pos < self.append_pos {
            let Some(slot_i) = self.slots.iter().position(|s| !s.busy) else {
                return;
            };
            let start = align_down(self.submitted_pos, BLOCK_BYTES);
            // Never two writes to one block at once: their order on disk is not defined.
            if self.slots.iter().any(|s| s.busy && s.start + s.len > start) {
                return;
            }
            let wb = self.cfg.write_bytes_max;
            let chunk_end = self.ring_origin + ((start - self.ring_origin) / wb + 1) * wb;
            let logical_end = self.append_pos.min(chunk_end);
            let full_chunk = logical_end == chunk_end;
            if !full_chunk && self.commit_target <= self.submitted_pos {
                return;
            }
            // Nor data over a zero-ahead write still in flight: wait for it.
            if let Some((zfrom, zlen)) = self.zero.inflight {
                if align_up(logical_end, BLOCK_BYTES) > zfrom && start < zfrom + zlen {
                    return;
                }
            }
            let body_end = align_down(logical_end, BLOCK_BYTES);
            let tail = logical_end - body_end;
            let body_len = body_end - start;
            let body_at = self.idx(start);
            let tail_at = self.idx(body_end);
            let ring_ptr = self.ring.as_ptr();
            let tails_ptr = self.tails.as_ptr();
            let dsync_ok = self.cfg.dsync_commits && self.io.dsync_writes();
            let slot_tail = slot_i * BLOCK_BYTES as usize;
            if tail > 0 {
                let (ring, tails) = (self.ring.as_slice(), self.tails.raw_mut());
                let dst = &mut tails[slot_tail..slot_tail + BLOCK_BYTES as usize];
                dst[..tail as usize].copy_from_slice(&ring[tail_at..tail_at + tail as usize]);
                dst[tail as usize..].fill(0);
            }
            let s = &mut self.slots[slot_i];
            s.iovcnt = 0;
            if body_len > 0 {
                // SAFETY: body_at + body_len stays inside the ring (writes never cross a chunk,
                // chunks never cross the ring's end).
                let base = unsafe { ring_ptr.add(body_at) };
                s.iov[0] = libc::iovec {
                    iov_base: base as *mut _,
                    iov_len: body_len as usize,
                };
                s.iovcnt = 1;
            }
            if tail > 0 {
                // SAFETY: slot_tail + BLOCK_BYTES <= tails.len() (one block per slot).
                let base = unsafe { tails_ptr.add(slot_tail) };
                s.iov[s.iovcnt as usize] = libc::iovec {
                    iov_base: base as *mut _,
                    iov_len: BLOCK_BYTES as usize,
                };
                s.iovcnt += 1;
            }
            s.busy = true;
            s.start = start;
            s.len = body_len + if tail > 0 { BLOCK_BYTES } else { 0 };
            s.logical_start = self.submitted_pos;
            s.logical_end = logical_end;
            s.retries = 0;
            s.submitted_at = Some(std::time::Instant::now());
            // Durable by itself if it reaches the commit target and every earlier write has
            // completed (so the flush that ends it covers them too).
            s.dsync = dsync_ok && self.busy_slots == 0 && logical_end >= self.commit_target;
            self.busy_slots += 1;
            self.submitted_pos = logical_end;
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

    fn io_inflight(&self) -> bool {
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
        let zeros = self.zeros.as_ptr();
        let mut iovcnt = 0;
        let mut left = len;
        while left > 0 {
            let n = left.min(ZERO_BUF_BYTES);
            self.zero.iov[iovcnt] = libc::iovec {
                iov_base: zeros as *mut _,
                iov_len: n as usize,
            };
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
    fn maybe_sync(&mut self) {
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

    fn reap(&mut self, wait: Wait) {
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

    /// Seals the active segment (durable, indexed) and starts a new one at `next_offset`.
    fn roll(&mut self) -> Result<(), LogIoError> {
        let t0 = std::time::Instant::now();
        let res = self.roll_inner();
        self.stats.rolls += 1;
        self.stats.roll_ns_total += t0.elapsed().as_nanos() as u64;
        res
    }

    fn roll_inner(&mut self) -> Result<(), LogIoError> {
        self.sync()?;
        // A slower, older sync may still be in flight on the old file: let it finish before the
        // file is closed and positions restart in the new segment.
        self.drain();
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let a = &self.active;
        let cp = IndexCheckpoint {
            base_offset: a.base,
            end_position: self.append_pos,
            next_offset: self.next_offset,
            max_timestamp_ns: a.cursor.max_timestamp_ns,
        };
        let roll_err = |path: &Path, e: &dyn std::fmt::Display| LogIoError::Roll {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        // The sealed segment's indexes: by the helper thread, off the append path (a missing
        // index is rebuilt at open), else here. Recovery trusts a sealed segment's index, so
        // its mid-segment checkpoint (whose end is not the segment's end) must go first: the
        // unlink is made durable by the directory fsync that publishes the next segment.
        let queued = self.prep.is_some() && {
            let mut removed = true;
            for ip in [
                offset_index_path(&self.dir, a.base),
                time_index_path(&self.dir, a.base),
            ] {
                match fs::remove_file(&ip) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => removed = false,
                }
            }
            removed
                && self.prep.as_mut().is_some_and(|p| {
                    p.save_indexes(&self.dir, cp, a.offs.entries(), a.times.entries())
                })
        };
        if !queued {
            save_indexes(
                &self.dir,
                &cp,
                a.offs.entries(),
                a.times.entries(),
                &mut self.scratch,
            )
            .map_err(|e| roll_err(&a.path, &e))?;
        }
        let file_bytes = a
            .file
            .metadata()
            .map(|m| m.len())
            .unwrap_or(self.cfg.segment_bytes);
        let info = SegmentInfo {
            base_offset: a.base,
            file_bytes,
            max_timestamp_ns: a.cursor.max_timestamp_ns,
        };
        let h = SegmentHeader {
            base_offset: self.next_offset,
            created_unix_ns: now_unix_ns(),
            segment_bytes: self.cfg.segment_bytes,
            stream: self.cfg.stream,
            partition: self.cfg.partition,
        };
        let prepared = self.prep.as_mut().and_then(Preparer::take_prepared);
        let path = match prepared.map(|p| finalize_segment(&self.dir, &p, &h)) {
            Some(Ok(path)) => {
                self.stats.prepared_rolls += 1;
                path
            }
            _ => {
                self.stats.unprepared_rolls += 1;
                create_segment(&self.dir, &h)
                    .map_err(|e| roll_err(&segment_path(&self.dir, h.base_offset), &e))?
            }
        };
        let file = self
            .io
            .open_segment(&path)
            .map_err(|e| roll_err(&path, &e))?;
        self.sealed.push(SealedSegment { info });
        let a = &mut self.active;
        a.base = h.base_offset;
        a.path = path;
        a.file = file;
        a.offs.clear();
        a.times.clear();
        a.cursor = IndexCursor::new(self.cfg.index_interval_bytes);
        self.ring_origin = SEGMENT_HEADER_BYTES;
        self.checkpoint_pos = SEGMENT_HEADER_BYTES;
        self.durable_batch_end = SEGMENT_HEADER_BYTES;
        self.append_pos = SEGMENT_HEADER_BYTES;
        self.submitted_pos = SEGMENT_HEADER_BYTES;
        self.durable_pos = SEGMENT_HEADER_BYTES;
        self.commit_target = SEGMENT_HEADER_BYTES;
        self.zeroed_to = 0;
        self.zero_limit = file_len(&self.active.file);
        if let Some(p) = &mut self.prep {
            p.prepare(&self.dir, self.cfg.segment_bytes);
        }
        Ok(())
    }

    /// Deletes the oldest sealed segments beyond the retention limits (never the active one).
    pub fn enforce_retention(&mut self, now_ns: u64) -> Result<RetentionReport, LogRetentionError> {
        // An index save of a sealed segment may still be queued: let it land before deleting.
        if let Some(p) = &mut self.prep {
            p.barrier();
        }
        let mut infos: Vec<SegmentInfo> = self.sealed.iter().map(|s| s.info).collect();
        let active_bytes = self
            .active
            .file
            .metadata()
            .map(|m| m.len())
            .unwrap_or(self.cfg.segment_bytes);
        infos.push(SegmentInfo {
            base_offset: self.active.base,
            file_bytes: active_bytes,
            max_timestamp_ns: self.active.cursor.max_timestamp_ns,
        });
        let n = segments_to_delete(&infos, &self.cfg.retention, now_ns);
        let mut report = RetentionReport::default();
        for s in self.sealed.drain(..n) {
            let base = s.info.base_offset;
            let p = segment_path(&self.dir, base);
            fs::remove_file(&p).map_err(ferr("cannot delete segment", &p))?;
            for ip in [
                offset_index_path(&self.dir, base),
                time_index_path(&self.dir, base),
            ] {
                match fs::remove_file(&ip) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(FileError {
                            what: "cannot delete index",
                            path: ip,
                            source: e,
                        }
                        .into())
                    }
                }
            }
            report.bytes_freed += s.info.file_bytes;
            report.deleted.push(p);
        }
        if n > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(report)
    }

    /// Makes everything durable, writes the active segment's index (the recovery checkpoint)
    /// and closes the log.
    pub fn close(mut self) -> Result<(), LogCloseError> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<(), LogCloseError> {
        self.sync()?;
        self.checkpoint()?;
        if let Some(p) = &mut self.prep {
            p.shutdown();
        }
        Ok(())
    }

    /// Writes the active segment's indexes covering the durable prefix: recovery then verifies
    /// only the batches after it. (The max timestamp may include appended, not yet durable
    /// batches: an overestimate only makes seeks scan and retention keep a little more.)
    fn checkpoint(&mut self) -> Result<(), FileError> {
        let a = &self.active;
        // A batch boundary: durable_pos itself may lie inside a batch split across writes.
        let end = self.durable_batch_end;
        debug_assert!(end <= self.durable_pos);
        let cp = IndexCheckpoint {
            base_offset: a.base,
            end_position: end,
            next_offset: self.durable_offset,
            max_timestamp_ns: a.cursor.max_timestamp_ns,
        };
        let offs = a.offs.entries();
        let offs = &offs[..offs.partition_point(|e| e.1 < end)];
        let times = a.times.entries();
        let times = &times[..times.partition_point(|e| e.1 < self.durable_offset)];
        self.checkpoint_pos = self.durable_pos;
        save_indexes(&self.dir, &cp, offs, times, &mut self.scratch)
    }

    fn drain(&mut self) {
        // Bounded: every backend completes what it accepted; the bound only stops a broken one.
        for _ in 0..1_000_000 {
            if !self.io_inflight() {
                return;
            }
            self.reap(Wait::Forever);
        }
    }
}

impl<B: IoBackend> Drop for Log<B> {
    fn drop(&mut self) {
        if self.failed.is_none() {
            let _ = self.close_inner();
        }
        // The kernel may still read the ring: wait for every operation before freeing it.
        self.drain();
    }
}
