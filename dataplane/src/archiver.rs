//! The archiver agent: partition rings -> storage-nvme logs, group commit, durable positions.
//!
//! Per partition it reads the ring as a reliable subscriber (so the ring never overruns it), stages
//! up to [`STAGE_RECORDS_MAX`] records in a pre-sized buffer, appends them as one storage batch,
//! requests a group commit every `commit_interval_ns`, and publishes two durable positions: the
//! log's durable record count (counter + per-partition cell) and a *ring mark* — every ring record
//! with an offset below it is on storage — which the receiver turns into the `durable_offset` of
//! its STATUS frames.
//!
//! Partitions made live at run time arrive as a finished [`PartitionArchive`] (the conductor opened
//! the log and attached the ring subscriber) through [`ArchiverCommand::Add`]; `Remove` drains the
//! ring, makes everything durable and closes the log. `OpenReader` hands the conductor a reader
//! that follows a partition's durable tail, for a remote subscriber that starts behind the ring.
//! The cells also publish `log_delta` (ring offset + delta = log offset).
//!
//! Storage keeps payloads and timestamps (not the record type id). At start, [`replay`] copies the
//! tail of each partition's log into a freshly created ring, so a restarted node serves local
//! subscribers what it had stored.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use storage_nvme::{AppendError, Log, LogConfig, Record};

use crate::agent::{Agent, CommandQueue, SpscConsumer};
use crate::conductor::ConductorCommand;
use crate::counters::{Counter, Counters, PartitionCells};
use crate::replay::{ReplayServer, REPLAY_READS_PER_CYCLE_MAX};

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
    for _ in 0..=(end - from) {
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
        let tail = ring.tail().0;
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

/// What the conductor asks of the archiver.
pub enum ArchiverCommand {
    /// Archive a partition made live at run time as slot `slot`.
    Add {
        slot: usize,
        part: Box<PartitionArchive>,
    },
    /// Stop archiving slot `slot`: drain its ring, make everything durable, close the log.
    Remove { slot: usize },
    /// A remote subscriber starts behind the ring: hand the conductor a reader of slot's log.
    OpenReader {
        slot: usize,
        request: Box<crate::conductor::PendingSubscribe>,
    },
}

/// Partition commands handled per duty cycle at most.
pub const ARCHIVER_COMMANDS_PER_CYCLE_MAX: usize = 4;

/// The archiver agent.
pub struct Archiver {
    /// Per partition slot (None: unused).
    parts: Vec<Option<Box<PartitionArchive>>>,
    /// Slots in use, in the order they were added.
    live: Vec<usize>,
    counters: Counters,
    commit_interval_ns: u64,
    back_pressured: u64,
    errors: u64,
    commands: Option<SpscConsumer<ArchiverCommand>>,
    conductor: Option<CommandQueue<ConductorCommand>>,
    /// Totals of partitions removed at run time (the counters stay monotonic).
    retired_archived: u64,
    retired_durable: u64,
    /// Storage reads for the sender's catching-up subscribers ([`crate::replay`]).
    replay: Option<ReplayServer>,
}

impl Archiver {
    /// Opens (recovering) every partition's log under `storage_dir` and subscribes to the rings
    /// from their tails. `rings[i]` is partition index `i` of `counters`; `slots_max` is the room
    /// for partitions added at run time (at least `rings.len()`).
    pub fn open(
        storage_dir: &Path,
        rings: Vec<shm_ring::Ring>,
        counters: Counters,
        commit_interval_ns: u64,
    ) -> Result<Archiver, ArchiveOpenError> {
        let n = rings.len();
        Self::open_with_slots(storage_dir, rings, counters, commit_interval_ns, n)
    }

    /// [`Archiver::open`] with room for `slots_max` partition slots.
    pub fn open_with_slots(
        storage_dir: &Path,
        rings: Vec<shm_ring::Ring>,
        counters: Counters,
        commit_interval_ns: u64,
        slots_max: usize,
    ) -> Result<Archiver, ArchiveOpenError> {
        let slots_max = slots_max.max(rings.len());
        let mut parts = Vec::with_capacity(slots_max);
        for (i, ring) in rings.into_iter().enumerate() {
            let (stream, partition, _) = counters.partitions()[i];
            parts.push(Some(PartitionArchive::open(
                storage_dir,
                stream,
                partition,
                &ring,
                counters.partition_cells(i),
            )?));
        }
        let mut live = Vec::with_capacity(slots_max);
        live.extend(0..parts.len());
        parts.resize_with(slots_max, || None);
        Ok(Archiver {
            parts,
            live,
            counters,
            commit_interval_ns,
            back_pressured: 0,
            errors: 0,
            commands: None,
            conductor: None,
            retired_archived: 0,
            retired_durable: 0,
            replay: None,
        })
    }

    /// Serves the sender's storage reads for subscribers that catch up ([`crate::replay`]).
    pub fn with_replay(mut self, server: ReplayServer) -> Archiver {
        self.replay = Some(server);
        self
    }

    /// Takes partitions added/removed at run time and reader requests from the conductor
    /// (answered through `conductor`).
    pub fn with_commands(
        mut self,
        commands: SpscConsumer<ArchiverCommand>,
        conductor: CommandQueue<ConductorCommand>,
    ) -> Archiver {
        self.commands = Some(commands);
        self.conductor = Some(conductor);
        self
    }

    fn apply(&mut self, c: ArchiverCommand) {
        match c {
            ArchiverCommand::Add { slot, part } => {
                assert!(
                    slot < self.parts.len(),
                    "conductor allocates slots in range"
                );
                if self.parts[slot].is_none() {
                    self.parts[slot] = Some(part);
                    self.live.push(slot);
                }
            }
            ArchiverCommand::Remove { slot } => {
                if slot >= self.parts.len() || self.parts[slot].is_none() {
                    return;
                }
                self.drain_partition(slot);
                if let Some(mut part) = self.parts[slot].take() {
                    close_part(&mut part);
                    self.retired_archived += part.archived;
                    self.retired_durable += part.cells.durable_records.load(Ordering::Relaxed);
                }
                self.live.retain(|&s| s != slot);
            }
            ArchiverCommand::OpenReader { slot, mut request } => {
                let reader = self
                    .parts
                    .get(slot)
                    .and_then(|p| p.as_ref())
                    .and_then(|p| p.reader());
                request.reader = reader.map(Box::new);
                if let Some(q) = &self.conductor {
                    if q.offer(ConductorCommand::Reader(request)).is_err() {
                        self.counters.add(Counter::ConductorCommandsDropped, 1);
                    }
                }
            }
        }
    }

    /// Runs slot's duty cycle until its ring is drained (bounded), as at close.
    fn drain_partition(&mut self, slot: usize) {
        for _ in 0..CLOSE_DRAIN_CYCLES_MAX {
            match self.work_partition(slot, u64::MAX) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.fail(slot, &e);
                    break;
                }
            }
        }
    }

    fn fail(&mut self, i: usize, what: &str) {
        self.errors += 1;
        let Some(p) = self.parts[i].as_mut() else {
            return;
        };
        eprintln!("memstreamer: archiving of stream {} partition {} stopped: {what}; restart the node to recover the log", p.stream, p.partition);
        p.log = None;
        // Stop holding the ring back.
        p.sub = None;
    }

    fn work_partition(&mut self, i: usize, now_ns: u64) -> Result<usize, String> {
        let Some(p) = self.parts[i].as_deref_mut() else {
            return Ok(0);
        };
        if p.log.is_none() {
            return Ok(0);
        }
        let mut work = 0;
        // 1. Staged records left over from a back-pressured cycle go first.
        if p.staged_count > 0 && !p.append_staged().map_err(|e| e.to_string())? {
            self.back_pressured += 1;
        } else if let Some(sub) = p.sub.as_mut() {
            // 2. Read what fits in the stage. Records above STAGE_RECORD_BYTES_MAX are appended alone.
            let limit = STAGE_RECORDS_MAX - p.staged_count;
            let PartitionArchive {
                stage,
                staged,
                staged_count,
                staged_bytes,
                staged_ring_last,
                log,
                pending,
                archived,
                oversize_failed,
                unflushed,
                cells,
                ..
            } = p;
            let mut failure: Option<String> = None;
            let poll = sub.poll(
                |rec| {
                    if failure.is_some() {
                        return;
                    }
                    if rec.payload.len() <= STAGE_RECORD_BYTES_MAX {
                        let start = *staged_bytes;
                        stage[start..start + rec.payload.len()].copy_from_slice(rec.payload);
                        staged[*staged_count] =
                            (start as u32, rec.payload.len() as u32, rec.timestamp_ns);
                        *staged_count += 1;
                        *staged_bytes += rec.payload.len();
                        *staged_ring_last = rec.offset;
                        return;
                    }
                    // Rare: a large local record. Keep order: what is staged is appended first by
                    // the caller; here the big one is written as its own batch, waiting for room.
                    let log = log.as_mut().expect("archiving partition has a log");
                    if *staged_count > 0 {
                        // Order must hold: flush the stage through the same path below.
                        let records = staged_records(stage, &staged[..*staged_count]);
                        if let Err(e) = append_waiting(log, &records[..*staged_count]) {
                            failure = Some(e.to_string());
                            return;
                        }
                        push_mark(pending, (log.next_offset(), *staged_ring_last));
                        *archived += *staged_count as u64;
                        *staged_count = 0;
                        *staged_bytes = 0;
                    }
                    let one = [Record {
                        timestamp_ns: rec.timestamp_ns,
                        payload: rec.payload,
                    }];
                    match append_waiting(log, &one) {
                        Ok(()) => {
                            push_mark(pending, (log.next_offset(), rec.offset));
                            *archived += 1;
                            *unflushed = true;
                        }
                        Err(AppendError::TooLarge { .. }) => {
                            // Not in the log: later ring records map to one log offset less.
                            *oversize_failed += 1;
                            let delta = cells.log_delta.load(Ordering::Relaxed);
                            cells
                                .log_delta
                                .store(delta.wrapping_sub(1), Ordering::Relaxed);
                        }
                        Err(e) => failure = Some(e.to_string()),
                    }
                },
                limit,
            );
            if let Some(e) = failure {
                return Err(e);
            }
            match poll {
                Ok(poll) => {
                    work += poll.records;
                    if poll.lost > 0 {
                        self.counters.add(Counter::RingRecordsLost, poll.lost);
                    }
                }
                Err(e) => return Err(format!("ring subscriber: {e}")),
            }
            if p.staged_count > 0 && !p.append_staged().map_err(|e| e.to_string())? {
                self.back_pressured += 1;
            }
        }
        // 3. Group commit on a timer; reap completions every cycle.
        let log = p.log.as_mut().expect("checked above");
        if p.unflushed && now_ns.saturating_sub(p.last_flush_ns) >= self.commit_interval_ns {
            log.flush().map_err(|e| e.to_string())?;
            p.unflushed = false;
            p.last_flush_ns = now_ns;
        }
        let durable = log.poll().map_err(|e| e.to_string())?;
        let mut mark = None;
        while let Some(&(log_end, ring_last)) = p.pending.front() {
            if log_end > durable {
                break;
            }
            mark = Some(ring_last + 1);
            p.pending.pop_front();
        }
        let cells = &p.cells;
        if let Some(mark) = mark {
            cells.durable_ring_mark.store(mark, Ordering::Release);
            work += 1;
        }
        cells.durable_records.store(durable, Ordering::Relaxed);
        cells.archived_records.store(p.archived, Ordering::Relaxed);
        Ok(work)
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

impl Agent for Archiver {
    fn do_work(&mut self, now_ns: u64) -> usize {
        let mut work = 0;
        if let Some(mut commands) = self.commands.take() {
            work += commands.drain(ARCHIVER_COMMANDS_PER_CYCLE_MAX, |c| self.apply(c));
            self.commands = Some(commands);
        }
        for k in 0..self.live.len() {
            let i = self.live[k];
            match self.work_partition(i, now_ns) {
                Ok(w) => work += w,
                Err(e) => self.fail(i, &e),
            }
        }
        if let Some(r) = self.replay.as_mut() {
            work += r.serve(REPLAY_READS_PER_CYCLE_MAX);
            self.counters.set(Counter::ArchiverReplayReads, r.reads);
        }
        let c = &self.counters;
        let (mut archived, mut durable) = (self.retired_archived, self.retired_durable);
        let mut oversize = 0;
        for p in self.live.iter().filter_map(|&i| self.parts[i].as_ref()) {
            archived += p.cells.archived_records.load(Ordering::Relaxed);
            durable += p.cells.durable_records.load(Ordering::Relaxed);
            oversize += p.oversize_failed;
        }
        c.set(Counter::ArchivedRecords, archived);
        c.set(Counter::ArchivedDurableRecords, durable);
        c.set(Counter::ArchiverBackPressured, self.back_pressured);
        c.set(Counter::ArchiverErrors, self.errors + oversize);
        work
    }

    fn role(&self) -> &'static str {
        "archiver"
    }

    fn on_close(&mut self) {
        // Drain what the rings still hold (bounded), so a clean stop loses nothing that was
        // acknowledged as consumed; then everything staged reaches storage before the logs close.
        for k in 0..self.live.len() {
            let i = self.live[k];
            self.drain_partition(i);
        }
        for p in self.parts.iter_mut().flatten() {
            close_part(p);
        }
    }
}

/// Appends what is staged and closes the log durable (cold path: removal and node stop).
fn close_part(p: &mut PartitionArchive) {
    let Some(mut log) = p.log.take() else {
        return;
    };
    p.sub = None;
    let records = staged_records(&p.stage, &p.staged[..p.staged_count]);
    if p.staged_count > 0 {
        match append_waiting(&mut log, &records[..p.staged_count]) {
            Ok(()) => p.archived += p.staged_count as u64,
            Err(e) => eprintln!(
                "memstreamer: {} staged records not archived at close: {e}",
                p.staged_count
            ),
        }
    }
    let end = log.next_offset();
    match log.close() {
        // Closing syncs: everything appended is durable.
        Ok(()) => p.cells.durable_records.store(end, Ordering::Relaxed),
        Err(e) => eprintln!("memstreamer: closing a partition log failed: {e}"),
    }
}
