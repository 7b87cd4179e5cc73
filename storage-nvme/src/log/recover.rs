//! Recovery on open: the steps `Log::open_with` runs to make a partition directory consistent
//! before the first append. Plain file operations, no `unsafe`.
//!
//! 1. [`lock_dir`]: one writer per directory.
//! 2. [`tidy_dir`]: refuse foreign files, remove orphan and temporary indexes, create the first
//!    segment of an empty log.
//! 3. [`recover_segments`]: check every segment's header and continuity; trust a sealed
//!    segment's index checkpoint or rebuild it by scanning; cut the active segment's torn tail.
//! 4. [`reconcile_epochs`]: trim the leader-epoch history to the recovered log.
//!
//! Before all of these, `Log::open_with` finishes a truncation a crash interrupted
//! (`crate::truncate`).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::{
    now_unix_ns, LogConfig, LogOpenError, RecoveryAction, RecoveryReport, SealedSegment,
    LOCK_ATTEMPTS_MAX,
};
use crate::epoch::EpochFile;
use crate::index::{IndexCheckpoint, IndexCursor, SparseIndex};
use crate::layout::*;
use crate::retention::SegmentInfo;
use crate::scan::ScanStop;
use crate::segment::*;

/// Takes the directory's writer lock (an exclusive `flock` on its lock file).
pub(super) fn lock_dir(dir: &Path) -> Result<File, LogOpenError> {
    let lock_path = dir.join(LOCK_FILE_NAME);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(ferr("cannot open lock file", &lock_path))?;
    // A child forked by another thread holds our descriptors until it execs: retry briefly.
    for _ in 0..LOCK_ATTEMPTS_MAX {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(ferr("cannot lock", &lock_path)(e).into());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(LogOpenError::Locked { path: lock_path })
}

/// Refuses a directory holding files that are not ours, removes what a crash left half done
/// (temporary indexes, indexes without a segment) and creates the first segment of a new log.
/// Returns the segment base offsets, ascending and never empty.
pub(super) fn tidy_dir(
    dir: &Path,
    cfg: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<Vec<u64>, LogOpenError> {
    let listing = list_dir(dir)?;
    if let Some(p) = listing.foreign.first() {
        return Err(LogOpenError::NotOurs {
            path: p.clone(),
            reason: "unexpected file name".into(),
        });
    }
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
    let mut bases = listing.segments;
    if bases.is_empty() {
        let h = SegmentHeader {
            base_offset: cfg.initial_offset,
            created_unix_ns: now_unix_ns(),
            segment_bytes: cfg.segment_bytes,
            stream: cfg.stream,
            partition: cfg.partition,
        };
        create_segment(dir, &h)?;
        bases.push(cfg.initial_offset);
    }
    Ok(bases)
}

/// The active (last) segment as recovery left it: valid up to `end_pos`.
pub(super) struct ActiveTail {
    pub(super) base: u64,
    pub(super) path: PathBuf,
    pub(super) offs: SparseIndex,
    pub(super) times: SparseIndex,
    pub(super) cursor: IndexCursor,
    /// File position after the last valid batch.
    pub(super) end_pos: u64,
    /// Offset of the next record to append.
    pub(super) next_offset: u64,
}

/// Every segment, checked.
pub(super) struct Recovered {
    pub(super) sealed: Vec<SealedSegment>,
    pub(super) active: ActiveTail,
    /// Index encoding scratch, kept for the log's later saves.
    pub(super) scratch: Vec<u8>,
}

/// A segment file whose header says it belongs here, at the offset its name says.
struct CheckedSegment {
    base: u64,
    path: PathBuf,
    file: File,
    file_len: u64,
}

/// Where a scan of a segment starts: at its index checkpoint, or at its first batch.
struct IndexStart {
    offs: SparseIndex,
    times: SparseIndex,
    cursor: IndexCursor,
    position: u64,
    next_offset: u64,
    /// Why the checkpoint could not be used (None: it was).
    unusable: Option<String>,
}

/// Checks and recovers segments `bases` (ascending, non-empty) in order: every one but the last
/// is sealed, the last is the active segment.
pub(super) fn recover_segments(
    dir: &Path,
    cfg: &LogConfig,
    bases: &[u64],
    report: &mut RecoveryReport,
) -> Result<Recovered, LogOpenError> {
    let (&last, older) = bases
        .split_last()
        .expect("tidy_dir returns at least one segment");
    let mut sealed = Vec::with_capacity(bases.len() + 64);
    let mut scratch = Vec::new();
    let mut next_expected = bases[0];
    for (i, &base) in older.iter().enumerate() {
        let seg = open_checked(dir, cfg, base, next_expected)?;
        let (info, next) = recover_sealed(dir, cfg, seg, bases[i + 1], &mut scratch, report)?;
        sealed.push(SealedSegment { info });
        next_expected = next;
    }
    let seg = open_checked(dir, cfg, last, next_expected)?;
    let active = recover_active(dir, cfg, seg, report)?;
    Ok(Recovered {
        sealed,
        active,
        scratch,
    })
}

/// Opens segment `base` and checks its header: ours, this partition's, and starting where the
/// previous segment ended (`next_expected`).
fn open_checked(
    dir: &Path,
    cfg: &LogConfig,
    base: u64,
    next_expected: u64,
) -> Result<CheckedSegment, LogOpenError> {
    let (path, file, header) = open_segment_with_header(dir, base)?;
    let h = header.map_err(|reason| LogOpenError::NotOurs {
        path: path.clone(),
        reason,
    })?;
    if h.stream != cfg.stream || h.partition != cfg.partition {
        return Err(LogOpenError::WrongPartition {
            path,
            stream: h.stream,
            partition: h.partition,
        });
    }
    if base != next_expected {
        return Err(LogOpenError::Corrupt {
            path,
            position: SEGMENT_HEADER_BYTES,
            detail: format!("segment starts at offset {base} but the previous one ends at {next_expected} (missing records)"),
        });
    }
    let file_len = file
        .metadata()
        .map_err(ferr("cannot stat segment", &path))?
        .len();
    Ok(CheckedSegment {
        base,
        path,
        file,
        file_len,
    })
}

/// The segment's index checkpoint if it is usable, else empty indexes from the first batch.
fn index_start(dir: &Path, cfg: &LogConfig, seg: &CheckedSegment) -> IndexStart {
    let cap = cfg
        .index_capacity()
        .max((seg.file_len / cfg.index_interval_bytes) as usize + 2);
    let loaded = load_indexes(dir, seg.base).and_then(|(cp, o, t)| {
        if cp.end_position > seg.file_len {
            Err(format!(
                "checkpoint position {} is past the end of {}",
                cp.end_position,
                seg.path.display()
            ))
        } else {
            Ok((cp, o, t))
        }
    });
    match loaded {
        Ok((cp, o, t)) => {
            let mut cursor = IndexCursor::new(cfg.index_interval_bytes);
            cursor.max_timestamp_ns = cp.max_timestamp_ns;
            let mut offs = SparseIndex::with_capacity(cap.max(o.entries().len()));
            let mut times = SparseIndex::with_capacity(cap.max(t.entries().len()));
            for &(k, v) in o.entries() {
                offs.push(k, v);
            }
            for &(k, v) in t.entries() {
                times.push(k, v);
            }
            if let Some(&(_, last_pos)) = o.entries().last() {
                cursor.resume_after(cp.end_position - last_pos);
            }
            IndexStart {
                offs,
                times,
                cursor,
                position: cp.end_position,
                next_offset: cp.next_offset,
                unusable: None,
            }
        }
        Err(reason) => IndexStart {
            offs: SparseIndex::with_capacity(cap),
            times: SparseIndex::with_capacity(cap),
            cursor: IndexCursor::new(cfg.index_interval_bytes),
            position: SEGMENT_HEADER_BYTES,
            next_offset: seg.base,
            unusable: Some(reason),
        },
    }
}

/// Verifies every batch from `start` on, extending its indexes.
fn scan_from(
    cfg: &LogConfig,
    seg: &CheckedSegment,
    start: &mut IndexStart,
    report: &mut RecoveryReport,
) -> Result<SegmentScan, LogOpenError> {
    let window =
        (cfg.write_bytes_max as usize).max(cfg.batch_bytes_max as usize + BLOCK_BYTES as usize);
    let scan = scan_segment(
        &seg.file,
        seg.file_len,
        start.position,
        start.next_offset,
        window,
        (&mut start.cursor, &mut start.offs, &mut start.times),
    )
    .map_err(ferr("cannot read segment", &seg.path))?;
    report.records_verified += scan.next_offset - start.next_offset;
    Ok(scan)
}

/// A sealed segment: trusts a usable index checkpoint (fsynced before sealing), else scans the
/// segment, checks that it ends where the next one (`next_base`) starts and saves rebuilt
/// indexes. Returns its retention info and the offset after its last record.
fn recover_sealed(
    dir: &Path,
    cfg: &LogConfig,
    seg: CheckedSegment,
    next_base: u64,
    scratch: &mut Vec<u8>,
    report: &mut RecoveryReport,
) -> Result<(SegmentInfo, u64), LogOpenError> {
    let mut start = index_start(dir, cfg, &seg);
    let info = |cursor: &IndexCursor| SegmentInfo {
        base_offset: seg.base,
        file_bytes: seg.file_len,
        max_timestamp_ns: cursor.max_timestamp_ns,
    };
    let Some(reason) = start.unusable.take() else {
        return Ok((info(&start.cursor), start.next_offset));
    };
    let scan = scan_from(cfg, &seg, &mut start, report)?;
    if scan.next_offset != next_base {
        return Err(LogOpenError::Corrupt {
            path: seg.path.clone(),
            position: scan.end_position,
            detail: format!(
                "sealed segment ends at offset {} ({:?}) but the next segment starts at {next_base}",
                scan.next_offset, scan.stop
            ),
        });
    }
    let cp = IndexCheckpoint {
        base_offset: seg.base,
        end_position: scan.end_position,
        next_offset: scan.next_offset,
        max_timestamp_ns: start.cursor.max_timestamp_ns,
    };
    save_indexes(
        dir,
        &cp,
        start.offs.entries(),
        start.times.entries(),
        scratch,
    )?;
    report.actions.push(RecoveryAction::IndexRebuilt {
        path: offset_index_path(dir, seg.base),
        reason,
    });
    Ok((info(&start.cursor), scan.next_offset))
}

/// The active segment: scans from its checkpoint and cuts anything after the last valid batch
/// (a torn or never-acknowledged tail).
fn recover_active(
    dir: &Path,
    cfg: &LogConfig,
    seg: CheckedSegment,
    report: &mut RecoveryReport,
) -> Result<ActiveTail, LogOpenError> {
    let mut start = index_start(dir, cfg, &seg);
    let scan = scan_from(cfg, &seg, &mut start, report)?;
    let horizon = (scan.end_position + 2 * cfg.write_buffer_bytes + (8 << 20)).min(seg.file_len);
    let garbage = last_nonzero(&seg.file, scan.end_position, horizon)
        .map_err(ferr("cannot read segment", &seg.path))?;
    let torn = !matches!(scan.stop, ScanStop::End { .. }) || garbage.is_some();
    if torn {
        let bytes = garbage
            .unwrap_or(scan.end_position)
            .saturating_sub(scan.end_position);
        truncate_tail(&seg.file, &seg.path, scan.end_position, seg.file_len)?;
        report.actions.push(RecoveryAction::TornTailTruncated {
            path: seg.path.clone(),
            position: scan.end_position,
            bytes,
            reason: format!("{:?}", scan.stop),
        });
    }
    Ok(ActiveTail {
        base: seg.base,
        path: seg.path,
        offs: start.offs,
        times: start.times,
        cursor: start.cursor,
        end_pos: scan.end_position,
        next_offset: scan.next_offset,
    })
}

/// Opens the leader-epoch history and trims it to the recovered log `[start, next)`: entries
/// starting at or after `next` describe records that never became durable (Kafka trims the
/// same way on load; a leader assigns its epoch again when it takes over), and entries wholly
/// before `start` outlived a retention that crashed before trimming them.
pub(super) fn reconcile_epochs(
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<EpochFile, LogOpenError> {
    let mut epochs = EpochFile::open(dir)?;
    let before = epochs.history().entries().len();
    epochs.truncate_from_end(report.next_offset)?;
    epochs.truncate_from_start(report.start_offset)?;
    let dropped = before - epochs.history().entries().len();
    if dropped > 0 {
        report
            .actions
            .push(RecoveryAction::EpochsTrimmed { dropped });
    }
    Ok(epochs)
}
