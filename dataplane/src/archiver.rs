//! The archiver agent: every partition's ring -> its storage-nvme log ([`crate::archive`]: one
//! [`PartitionArchive`] per partition slot: staging, group commit, durable positions), and the
//! storage reads of remote subscribers that catch up ([`crate::replay`]).
//!
//! Partitions made live at run time arrive as a finished [`PartitionArchive`] (the conductor opened
//! the log and attached the ring subscriber) through [`ArchiverCommand::Add`]; `Remove` drains the
//! ring, makes everything durable and closes the log. `OpenReader` hands the conductor a reader
//! that follows a partition's durable tail, for a remote subscriber that starts behind the ring.

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::agent::{Agent, CommandQueue, SpscConsumer};
use crate::archive::{ArchiveOpenError, PartitionArchive, CLOSE_DRAIN_CYCLES_MAX};
use crate::counters::{Counter, Counters};
use crate::proxy::{ArchiverCommand, ConductorCommand};
use crate::replay::{ReplayServer, REPLAY_READS_PER_CYCLE_MAX};

/// Where a partition's log lives (see [`crate::archive`]).
pub use crate::archive::log_dir;

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
                    part.close();
                    self.retired_archived += part.archived();
                    self.retired_durable += part.cells().durable_records.load(Ordering::Relaxed);
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
        let (stream, partition) = p.key();
        eprintln!("memstreamer: archiving of stream {stream} partition {partition} stopped: {what}; restart the node to recover the log");
        // Drops the log and stops holding the ring back.
        p.stop();
    }

    fn work_partition(&mut self, i: usize, now_ns: u64) -> Result<usize, String> {
        let Some(p) = self.parts[i].as_deref_mut() else {
            return Ok(0);
        };
        let done = p.work(now_ns, self.commit_interval_ns)?;
        self.back_pressured += done.back_pressured;
        if done.lost > 0 {
            self.counters.add(Counter::RingRecordsLost, done.lost);
        }
        Ok(done.work)
    }
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
            archived += p.cells().archived_records.load(Ordering::Relaxed);
            durable += p.cells().durable_records.load(Ordering::Relaxed);
            oversize += p.oversize_failed();
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
            p.close();
        }
    }
}
