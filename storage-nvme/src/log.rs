//! The writer: one partition's segment log with group commit.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::codec::{batch_bytes_for, encode_batch, BatchEncodeError, Record};
use crate::epoch::{Assigned, EpochAssignError, EpochFile, EpochFileError, EpochHistory};
use crate::index::{IndexCheckpoint, IndexCursor, SparseIndex};
use crate::io::{AlignedBuf, BufBacking, IoBackend, IoMode, SysIo, Wait};
use crate::layout::*;
use crate::prepare::{finalize_segment, Preparer};
use crate::reader::Reader;
use crate::retention::{segments_to_delete, RetentionPolicy, SegmentInfo};
use crate::segment::*;
use crate::truncate::{self, LogTruncateError};

mod recover;
#[allow(unsafe_code)]
mod write;

use write::{WriteBuffers, WriteSlot, ZeroWrite};

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
    #[error("cannot finish the truncation a crash interrupted: {0}")]
    Truncate(#[from] LogTruncateError),
    #[error(transparent)]
    Epoch(#[from] EpochFileError),
}

/// Why retention could not delete a segment or trim the epoch history.
#[derive(Debug, thiserror::Error)]
pub enum LogRetentionError {
    #[error("retention: {0}")]
    File(#[from] FileError),
    #[error("retention: {0}")]
    Epoch(#[from] EpochFileError),
}

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
    /// A truncation interrupted by a crash was finished: the log now ends at `new_end`
    /// (asked: `end_offset`), see [`Log::close_and_truncate`].
    TruncationFinished { end_offset: u64, new_end: u64 },
    /// Leader-epoch entries past the recovered log end (never-durable records) or wholly
    /// before its start (a crash during retention) were dropped.
    EpochsTrimmed { dropped: usize },
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
    /// The leader-epoch history kept in the same directory (see [`crate::epoch`]).
    epochs: EpochFile,
}

/// The file's length rounded down to a block, or 0 (no zeroing ahead) if it cannot be read.
fn file_len(f: &File) -> u64 {
    f.metadata().map_or(0, |m| align_down(m.len(), BLOCK_BYTES))
}

/// A roll failure naming the file.
fn roll_err(path: &Path, e: &dyn std::fmt::Display) -> LogIoError {
    LogIoError::Roll {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
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
        let lock = recover::lock_dir(&dir)?;
        let mut report = RecoveryReport::default();
        if let Some(end_offset) = truncate::pending_intent(&dir)? {
            let new_end = truncate::apply_intent(&dir, cfg.segment_bytes, end_offset)?;
            report.actions.push(RecoveryAction::TruncationFinished {
                end_offset,
                new_end,
            });
        }
        let bases = recover::tidy_dir(&dir, &cfg, &mut report)?;
        let recovered = recover::recover_segments(&dir, &cfg, &bases, &mut report)?;
        report.segments = bases.len();
        report.start_offset = bases[0];
        report.next_offset = recovered.active.next_offset;
        let epochs = recover::reconcile_epochs(&dir, &mut report)?;
        let path = &recovered.active.path;
        let file = io
            .open_segment(path)
            .map_err(ferr("cannot open segment for writing", path))?;
        let mut log = Self::from_recovered(dir, cfg, io, lock, recovered, file, epochs)?;
        log.prep = Preparer::start(&log.dir);
        if let Some(p) = &mut log.prep {
            p.prepare(&log.dir, log.cfg.segment_bytes);
        }
        Ok((log, report))
    }

    /// The log positioned after recovery: appends continue at the active segment's end, which
    /// is durable. `file` is the active segment opened by the I/O backend.
    fn from_recovered(
        dir: PathBuf,
        cfg: LogConfig,
        io: B,
        lock: File,
        recovered: recover::Recovered,
        file: File,
        epochs: EpochFile,
    ) -> Result<Self, LogOpenError> {
        let t = recovered.active;
        let (end_pos, next_offset) = (t.end_pos, t.next_offset);
        let active = Active {
            base: t.base,
            path: t.path,
            file,
            offs: t.offs,
            times: t.times,
            cursor: t.cursor,
        };
        let ring_origin = align_down(end_pos, BLOCK_BYTES);
        let bufs = WriteBuffers::new(&cfg, &active, ring_origin, end_pos)?;
        Ok(Self {
            dir,
            io,
            _lock: lock,
            sealed: recovered.sealed,
            zero_limit: file_len(&active.file),
            active,
            ring: bufs.ring,
            ring_bytes: cfg.write_buffer_bytes,
            ring_origin,
            tails: bufs.tails,
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
            done: Vec::with_capacity(bufs.slots.len() + 2),
            slots: bufs.slots,
            failed: None,
            shared: Arc::new(Shared {
                durable_offset: AtomicU64::new(next_offset),
            }),
            scratch: recovered.scratch,
            zeros: bufs.zeros,
            zero: bufs.zero,
            zeroed_to: 0,
            zero_stopped: false,
            prep: None,
            epochs,
            cfg,
        })
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
        self.save_sealed_indexes(&cp)?;
        let a = &self.active;
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
        self.start_segment()?;
        self.sealed.push(SealedSegment { info });
        Ok(())
    }

    /// Saves the indexes of the segment being sealed: by the helper thread, off the append path
    /// (a missing index is rebuilt at open), else here. Recovery trusts a sealed segment's
    /// index, so its mid-segment checkpoint (whose end is not the segment's end) must go first:
    /// the unlink is made durable by the directory fsync that publishes the next segment.
    fn save_sealed_indexes(&mut self, cp: &IndexCheckpoint) -> Result<(), LogIoError> {
        let a = &self.active;
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
                    p.save_indexes(&self.dir, *cp, a.offs.entries(), a.times.entries())
                })
        };
        if queued {
            return Ok(());
        }
        save_indexes(
            &self.dir,
            cp,
            a.offs.entries(),
            a.times.entries(),
            &mut self.scratch,
        )
        .map_err(|e| roll_err(&a.path, &e))
    }

    /// Makes the next segment, starting at `next_offset`, the active one: the helper thread's
    /// preallocated file when it has one ready, else a new file.
    fn start_segment(&mut self) -> Result<(), LogIoError> {
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
            // After the segments: a crash in between leaves entries below the log start, which
            // the next open trims (the other order could lose an epoch the log still holds).
            let start = self.start_offset();
            self.epochs.truncate_from_start(start)?;
        }
        Ok(report)
    }

    /// The leader-epoch history of this replica (durable, in the log's directory).
    pub fn epochs(&self) -> &EpochHistory {
        self.epochs.history()
    }

    /// Records that leader `epoch` starts at `start_offset` (a leader: its log end when it takes
    /// over; a follower: the first record it appends from that epoch). Durable on return.
    /// Refused past the log end (a record must exist or be next), and as
    /// [`EpochHistory::assign`] refuses.
    pub fn assign_epoch(
        &mut self,
        epoch: u64,
        start_offset: u64,
    ) -> Result<Assigned, EpochFileError> {
        if start_offset > self.next_offset {
            return Err(EpochAssignError::PastLogEnd {
                start_offset,
                log_end: self.next_offset,
            }
            .into());
        }
        self.epochs.assign(epoch, start_offset)
    }

    /// The answer to a follower's "where does my epoch `epoch` end?" (Kafka's
    /// OffsetsForLeaderEpoch): see [`EpochHistory::end_offset_for`], with this log's end.
    pub fn end_offset_for(&self, epoch: u64) -> Option<(u64, u64)> {
        self.epochs
            .history()
            .end_offset_for(epoch, self.next_offset)
    }

    /// Cuts every record at or after `end_offset` (a follower dropping a divergent suffix),
    /// closing the log first; reopen it with [`Log::open`] afterwards. Returns the new log end:
    /// the last batch boundary at or below `end_offset` (the follower fetches the rest again),
    /// or the current end if that is lower (nothing is cut). Epoch entries starting at or after
    /// the new end are dropped with it. Crash-safe in the order documented in
    /// [`crate::truncate`]: a kill at any point leaves the old log or, at the next open, the
    /// truncated one.
    pub fn close_and_truncate(self, end_offset: u64) -> Result<u64, LogTruncateError> {
        let (dir, segment_bytes) = (self.dir.clone(), self.cfg.segment_bytes);
        let (start, next) = (self.start_offset(), self.next_offset);
        if end_offset < start {
            return Err(LogTruncateError::BelowStart {
                end_offset,
                start_offset: start,
            });
        }
        self.close()?;
        if end_offset >= next {
            return Ok(next);
        }
        let _lock = recover::lock_dir(&dir).map_err(|e| LogTruncateError::Lock(e.to_string()))?;
        truncate::write_intent(&dir, end_offset)?;
        truncate::apply_intent(&dir, segment_bytes, end_offset)
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
