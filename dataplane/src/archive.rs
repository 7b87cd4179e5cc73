//! One partition's archive: its ring -> its storage-nvme log, staged in batches, group commit,
//! durable positions. The [`crate::archiver`] agent runs one per partition; the conductor opens
//! one ([`PartitionArchive::open`]) for a partition made live at run time and hands it over.
//!
//! It reads the ring as a reliable subscriber (so the ring never overruns it), stages up to
//! [`STAGE_RECORDS_MAX`] records in a pre-sized buffer, appends them as one storage batch,
//! requests a group commit every `commit_interval_ns`, and publishes two durable positions: the
//! log's durable record count (per-partition cell) and a *ring mark* — every ring record with an
//! offset below it is on storage — which the receiver turns into the `durable_offset` of its
//! STATUS frames. The cells also publish `log_delta` (ring offset + delta = log offset).
//!
//! Storage keeps payloads and timestamps (not the record type id). At start, [`replay`] copies the
//! tail of each partition's log into a freshly created ring, so a restarted node serves local
//! subscribers what it had stored.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use storage_nvme::{AppendError, Log, LogConfig, Record};

use crate::counters::PartitionCells;

/// Records per storage batch at most.
pub const STAGE_RECORDS_MAX: usize = 64;
/// Records up to this size are staged; larger ones are appended as single-record batches.
pub const STAGE_RECORD_BYTES_MAX: usize = 16 << 10;
/// Staging buffer per partition (bytes).
pub const STAGE_BYTES: usize = STAGE_RECORDS_MAX * STAGE_RECORD_BYTES_MAX;
/// Largest storage batch the archiver writes (bytes): the staging buffer plus record overheads.
pub const BATCH_BYTES_MAX: u64 = 2 * STAGE_BYTES as u64;
/// Appended-but-not-durable batches whose ring position the archiver remembers (older ones coalesce).
pub const PENDING_MARKS_MAX: usize = 4096;
/// Duty cycles per partition the archiver runs at close to drain its ring.
pub const CLOSE_DRAIN_CYCLES_MAX: usize = 100_000;
/// Waits for storage I/O before an oversized record is given up (counted).
pub const APPEND_WAITS_MAX: u32 = 64;

const _: () = assert!(BATCH_BYTES_MAX as usize >= STAGE_BYTES + STAGE_RECORDS_MAX * 64);

/// Why a partition's log could not be opened or replayed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveOpenError {
    #[error("cannot open the log of stream {stream} partition {partition} in {dir}: {source}")]
    Open {
        stream: u32,
        partition: u16,
        dir: PathBuf,
        source: storage_nvme::LogOpenError,
    },
    #[error(
        "cannot replay {dir} into the ring: {detail} (move the directory away to start empty)"
    )]
    Replay { dir: PathBuf, detail: String },
}

/// The log directory of a partition under `storage_dir`.
pub fn log_dir(storage_dir: &Path, stream: u32, partition: u16) -> PathBuf {
    storage_dir.join(format!("stream-{stream}-{partition}"))
}

/// Log settings the archiver uses.
pub fn log_config(stream: u32, partition: u16) -> LogConfig {
    LogConfig {
        stream,
        partition,
        batch_bytes_max: BATCH_BYTES_MAX,
        ..LogConfig::default()
    }
}

/// Copies the last `records_max` records of the log in `dir` (if any) into `ring`; returns how many.
pub fn replay(
    dir: &Path,
    ring: &shm_ring::Ring,
    records_max: u64,
) -> Result<u64, ArchiveOpenError> {
    let err = |detail: String| ArchiveOpenError::Replay {
        dir: dir.to_owned(),
        detail,
    };
    if !dir.exists() {
        return Ok(0);
    }
    let mut reader = match storage_nvme::Reader::open(dir) {
        Ok(r) => r,
        // An empty directory (no segment yet) has nothing to replay.
        Err(storage_nvme::SeekError::Empty(_)) => return Ok(0),
        Err(e) => return Err(err(e.to_string())),
    };
    let end = reader.end_offset();
    let from = end.saturating_sub(records_max).max(reader.next_offset());
    reader.seek_offset(from).map_err(|e| err(e.to_string()))?;
    let mut publisher = ring.publisher().map_err(|e| err(e.to_string()))?;
    let mut buf = storage_nvme::AlignedBuf::new(4 * BATCH_BYTES_MAX as usize)
        .map_err(|e| err(e.to_string()))?;
    let mut replayed = 0u64;
    // Bounded: each batch read advances the reader; at most `end - from` records exist.
    for _ in 0..=end.saturating_sub(from) {
        let Some(batch) = reader
            .read_batch(&mut buf)
            .map_err(|e| err(e.to_string()))?
        else {
            break;
        };
        for rec in batch.records() {
            if rec.offset < from {
                continue;
            }
            publisher
                .offer(rec.payload)
                .map_err(|e| err(e.to_string()))?;
            replayed += 1;
        }
    }
    Ok(replayed)
}

/// One partition's archiving state: its ring subscriber, log, staging buffer and durable cells.
/// Built off the archiver's thread ([`PartitionArchive::open`]) and handed to it.
pub struct PartitionArchive {
    stream: u32,
    partition: u16,
    cells: Arc<PartitionCells>,
    sub: Option<shm_ring::Subscriber>,
    log: Option<Log>,
    stage: Box<[u8]>,
    /// (start, len, timestamp) of staged records in `stage`.
    staged: [(u32, u32, u64); STAGE_RECORDS_MAX],
    staged_count: usize,
    staged_bytes: usize,
    staged_ring_last: u64,
    /// (log offset after a batch, ring offset of its last record), oldest first.
    pending: VecDeque<(u64, u64)>,
    unflushed: bool,
    last_flush_ns: u64,
    archived: u64,
    oversize_failed: u64,
}

impl PartitionArchive {
    /// Opens (recovering) the log of (stream, partition) under `storage_dir` and subscribes to
    /// `ring` from its tail: every record published from now on is archived. Cold path.
    pub fn open(
        storage_dir: &Path,
        stream: u32,
        partition: u16,
        ring: &shm_ring::Ring,
        cells: Arc<PartitionCells>,
    ) -> Result<Box<PartitionArchive>, ArchiveOpenError> {
        let dir = log_dir(storage_dir, stream, partition);
        let (log, _report) = Log::open(&dir, log_config(stream, partition)).map_err(|source| {
            ArchiveOpenError::Open {
                stream,
                partition,
                dir: dir.clone(),
                source,
            }
        })?;
        cells
            .durable_records
            .store(log.durable_offset(), Ordering::Relaxed);
        let sub = ring.subscriber(shm_ring::StartAt::Tail).ok();
        // The next sequence (word 1 of the tail; word 0 is a byte position): records replayed
        // into a fresh ring are already in the log.
        let tail = ring.tail().1;
        // Ring offset + delta = log offset, for every record archived from here on.
        cells
            .log_delta
            .store(log.next_offset().wrapping_sub(tail), Ordering::Relaxed);
        // Nothing of this ring is on storage yet: the mark starts at the ring's tail.
        // Release pairs with the receiver's and sender's Acquire loads.
        cells.durable_ring_mark.store(tail, Ordering::Release);
        Ok(Box::new(PartitionArchive {
            stream,
            partition,
            cells,
            sub,
            log: Some(log),
            stage: vec![0u8; STAGE_BYTES].into_boxed_slice(),
            staged: [(0, 0, 0); STAGE_RECORDS_MAX],
            staged_count: 0,
            staged_bytes: 0,
            staged_ring_last: 0,
            pending: VecDeque::with_capacity(PENDING_MARKS_MAX),
            unflushed: false,
            last_flush_ns: 0,
            archived: 0,
            oversize_failed: 0,
        }))
    }

    /// A reader of this partition's log that follows its durable tail (for remote subscribers
    /// that start behind the ring; see sender.rs). None once archiving stopped.
    pub fn reader(&self) -> Option<storage_nvme::Reader> {
        self.log.as_ref().map(Log::reader)
    }

    /// Appends the staged records as one batch; false when storage is back-pressured.
    fn append_staged(&mut self) -> Result<bool, AppendError> {
        if self.staged_count == 0 {
            return Ok(true);
        }
        let log = self.log.as_mut().expect("archiving partition has a log");
        let records = staged_records(&self.stage, &self.staged[..self.staged_count]);
        match log.append_batch(log.next_offset(), &records[..self.staged_count]) {
            Ok(_) => {}
            Err(AppendError::BackPressured) => return Ok(false),
            Err(e) => return Err(e),
        }
        let log_end = log.next_offset();
        push_mark(&mut self.pending, (log_end, self.staged_ring_last));
        self.archived += self.staged_count as u64;
        self.staged_count = 0;
        self.staged_bytes = 0;
        self.unflushed = true;
        Ok(true)
    }
}

/// The staged records as storage records borrowing `stage` (the first `staged.len()` are set).
fn staged_records<'a>(
    stage: &'a [u8],
    staged: &[(u32, u32, u64)],
) -> [Record<'a>; STAGE_RECORDS_MAX] {
    let mut records = [Record {
        timestamp_ns: 0,
        payload: &[],
    }; STAGE_RECORDS_MAX];
    for (r, &(start, len, ts)) in records.iter_mut().zip(staged) {
        *r = Record {
            timestamp_ns: ts,
            payload: &stage[start as usize..(start + len) as usize],
        };
    }
    records
}

fn push_mark(pending: &mut VecDeque<(u64, u64)>, mark: (u64, u64)) {
    if pending.len() == PENDING_MARKS_MAX {
        // Coalesce into the newest: it implies every older one.
        *pending.back_mut().expect("full queue") = mark;
    } else {
        pending.push_back(mark);
    }
}

/// What one duty cycle of a partition's archive did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionWork {
    /// Ring records read plus durable marks published.
    pub work: usize,
    /// Ring records lost to the archive's reader.
    pub lost: u64,
    /// Times storage refused an append for now.
    pub back_pressured: u64,
}

impl PartitionArchive {
    /// One duty cycle: staged leftovers first, then ring records into the stage (large ones
    /// appended alone), then the group commit and the durable marks. An error stops archiving
    /// this partition (the caller reports it and calls [`PartitionArchive::stop`]).
    pub fn work(&mut self, now_ns: u64, commit_interval_ns: u64) -> Result<PartitionWork, String> {
        let mut done = PartitionWork::default();
        if self.log.is_none() {
            return Ok(done);
        }
        if self.staged_count > 0 && !self.append_staged().map_err(|e| e.to_string())? {
            done.back_pressured += 1;
        } else {
            self.read_ring(&mut done)?;
        }
        done.work += self.commit(now_ns, commit_interval_ns)?;
        Ok(done)
    }

    /// Reads what fits in the stage. Records above STAGE_RECORD_BYTES_MAX are appended alone.
    fn read_ring(&mut self, done: &mut PartitionWork) -> Result<(), String> {
        let limit = STAGE_RECORDS_MAX - self.staged_count;
        // Out while it polls (a move, no allocation), so each record can update the rest.
        let Some(mut sub) = self.sub.take() else {
            return Ok(());
        };
        let mut failure: Option<String> = None;
        let poll = sub.poll(
            |rec| {
                if failure.is_none() {
                    failure = self.take_record(rec).err();
                }
            },
            limit,
        );
        self.sub = Some(sub);
        if let Some(e) = failure {
            return Err(e);
        }
        match poll {
            Ok(poll) => {
                done.work += poll.records;
                done.lost += poll.lost;
            }
            Err(e) => return Err(format!("ring subscriber: {e}")),
        }
        if self.staged_count > 0 && !self.append_staged().map_err(|e| e.to_string())? {
            done.back_pressured += 1;
        }
        Ok(())
    }

    /// Stages one ring record, or appends a large one alone (after what is staged: order holds).
    fn take_record(&mut self, rec: &shm_ring::Record<'_>) -> Result<(), String> {
        let len = rec.payload.len();
        if len <= STAGE_RECORD_BYTES_MAX {
            // At most STAGE_RECORDS_MAX records of at most STAGE_RECORD_BYTES_MAX: it fits.
            let start = self.staged_bytes;
            self.stage[start..start + len].copy_from_slice(rec.payload);
            self.staged[self.staged_count] = (start as u32, len as u32, rec.timestamp_ns);
            self.staged_count += 1;
            self.staged_bytes += len;
            self.staged_ring_last = rec.offset;
            return Ok(());
        }
        // Rare: a large local record, written as its own batch, waiting for room.
        let Some(log) = self.log.as_mut() else {
            return Err("the log is closed".into());
        };
        if self.staged_count > 0 {
            let records = staged_records(&self.stage, &self.staged[..self.staged_count]);
            append_waiting(log, &records[..self.staged_count]).map_err(|e| e.to_string())?;
            push_mark(
                &mut self.pending,
                (log.next_offset(), self.staged_ring_last),
            );
            self.archived += self.staged_count as u64;
            self.staged_count = 0;
            self.staged_bytes = 0;
        }
        let one = [Record {
            timestamp_ns: rec.timestamp_ns,
            payload: rec.payload,
        }];
        match append_waiting(log, &one) {
            Ok(()) => {
                push_mark(&mut self.pending, (log.next_offset(), rec.offset));
                self.archived += 1;
                self.unflushed = true;
            }
            Err(AppendError::TooLarge { .. }) => {
                // Not in the log: later ring records map to one log offset less.
                self.oversize_failed += 1;
                let delta = self.cells.log_delta.load(Ordering::Relaxed);
                self.cells
                    .log_delta
                    .store(delta.wrapping_sub(1), Ordering::Relaxed);
            }
            Err(e) => return Err(e.to_string()),
        }
        Ok(())
    }

    /// Group commit on a timer; reaps completions and publishes the durable positions.
    fn commit(&mut self, now_ns: u64, commit_interval_ns: u64) -> Result<usize, String> {
        let Some(log) = self.log.as_mut() else {
            return Ok(0);
        };
        let mut work = 0;
        if self.unflushed && now_ns.saturating_sub(self.last_flush_ns) >= commit_interval_ns {
            log.flush().map_err(|e| e.to_string())?;
            self.unflushed = false;
            self.last_flush_ns = now_ns;
        }
        let durable = log.poll().map_err(|e| e.to_string())?;
        let mut mark = None;
        while let Some(&(log_end, ring_last)) = self.pending.front() {
            if log_end > durable {
                break;
            }
            mark = Some(ring_last + 1);
            self.pending.pop_front();
        }
        let cells = &self.cells;
        if let Some(mark) = mark {
            cells.durable_ring_mark.store(mark, Ordering::Release);
            work += 1;
        }
        cells.durable_records.store(durable, Ordering::Relaxed);
        cells
            .archived_records
            .store(self.archived, Ordering::Relaxed);
        Ok(work)
    }

    /// Stops archiving after an error: the log is dropped and the ring no longer held back.
    pub fn stop(&mut self) {
        self.log = None;
        self.sub = None;
    }

    /// (stream, partition) it archives.
    pub fn key(&self) -> (u32, u16) {
        (self.stream, self.partition)
    }

    /// Records appended to the log so far.
    pub fn archived(&self) -> u64 {
        self.archived
    }

    /// Records too large for storage (not in the log; counted as errors).
    pub fn oversize_failed(&self) -> u64 {
        self.oversize_failed
    }

    pub fn cells(&self) -> &PartitionCells {
        &self.cells
    }

    /// Appends what is staged and closes the log durable (cold path: removal and node stop).
    pub fn close(&mut self) {
        let Some(mut log) = self.log.take() else {
            return;
        };
        self.sub = None;
        let records = staged_records(&self.stage, &self.staged[..self.staged_count]);
        if self.staged_count > 0 {
            match append_waiting(&mut log, &records[..self.staged_count]) {
                Ok(()) => self.archived += self.staged_count as u64,
                Err(e) => eprintln!(
                    "memstreamer: {} staged records not archived at close: {e}",
                    self.staged_count
                ),
            }
        }
        let end = log.next_offset();
        match log.close() {
            // Closing syncs: everything appended is durable.
            Ok(()) => self.cells.durable_records.store(end, Ordering::Relaxed),
            Err(e) => eprintln!("memstreamer: closing a partition log failed: {e}"),
        }
    }
}

/// Appends one batch, waiting for storage I/O while back-pressured (bounded).
fn append_waiting(log: &mut Log, records: &[Record<'_>]) -> Result<(), AppendError> {
    for _ in 0..APPEND_WAITS_MAX {
        match log.append_batch(log.next_offset(), records) {
            Ok(_) => return Ok(()),
            Err(AppendError::BackPressured) => {
                log.flush().map_err(AppendError::Failed)?;
                log.wait().map_err(AppendError::Failed)?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(AppendError::BackPressured)
}
