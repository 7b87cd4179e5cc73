//! Partitions made live or removed at run time, and the bounded queues that tell the agents
//! (Aeron-conductor style: the conductor does the cold work — storage replay, opening the log,
//! attaching ring handles — and hands the finished resources over SPSC queues, buffered in a
//! bounded [`Outbox`] per agent while a queue is full).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use shm_ring::{Ring, StartAt};

use crate::agent::{Outbox, SpscProducer};
use crate::archive::PartitionArchive;
use crate::counters::PartitionCells;
use crate::proxy::{ArchiverCommand, ReceiverCommand, SenderCommand};

/// Why a partition could not be made live: its ring (shared memory, slots) or its storage.
#[derive(Debug)]
pub(super) enum AddError {
    Ring(String),
    Storage(String),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::Ring(e) => write!(f, "{e}"),
            AddError::Storage(e) => write!(f, "storage: {e}"),
        }
    }
}

/// One partition slot the agents know (configured, or made live at run time).
pub(super) struct LivePartition {
    pub(super) slot: usize,
    pub(super) ring: Ring,
    /// The slot has a log (the archiver serves it).
    pub(super) archived: bool,
    /// Cells of a partition made live at run time (configured partitions have theirs in
    /// [`Counters`]); listed in the counters file after the configured ones.
    cells: Option<Arc<PartitionCells>>,
    /// A configured partition's cells (from [`Counters`]), when the node gave them.
    fixed_cells: Option<Arc<PartitionCells>>,
}

/// The data plane's partitions as the agents see them, and the queues that tell the agents
/// about partitions made live or removed at run time (Aeron-conductor style: the conductor does
/// the cold work — rings, logs, ring handles — and hands finished state over SPSC queues).
pub struct PartitionRegistry {
    /// Ordered, so the counters file lists run-time partitions by (stream, partition).
    pub(super) live: BTreeMap<(u32, u16), LivePartition>,
    free_slots: Vec<usize>,
    storage_dir: Option<PathBuf>,
    replay_records_max: u64,
    receiver: Outbox<ReceiverCommand>,
    pub(super) sender: Outbox<SenderCommand>,
    pub(super) archiver: Option<Outbox<ArchiverCommand>>,
}

impl PartitionRegistry {
    /// `fixed[i]` = (stream, partition, ring) of configured slot i; slots `fixed.len()..slots_max`
    /// are for partitions made at run time.
    pub fn new(
        fixed: Vec<(u32, u16, Ring)>,
        slots_max: usize,
        storage_dir: Option<PathBuf>,
        replay_records_max: u64,
        receiver: SpscProducer<ReceiverCommand>,
        sender: SpscProducer<SenderCommand>,
        archiver: Option<SpscProducer<ArchiverCommand>>,
    ) -> PartitionRegistry {
        let n = fixed.len();
        let archived = storage_dir.is_some();
        let live = fixed
            .into_iter()
            .enumerate()
            .map(|(slot, (s, p, ring))| {
                (
                    (s, p),
                    LivePartition {
                        slot,
                        ring,
                        archived,
                        cells: None,
                        fixed_cells: None,
                    },
                )
            })
            .collect();
        PartitionRegistry {
            live,
            free_slots: (n..slots_max.max(n)).rev().collect(),
            storage_dir,
            replay_records_max,
            receiver: Outbox::new(receiver),
            sender: Outbox::new(sender),
            archiver: archiver.map(Outbox::new),
        }
    }

    /// The cells of the configured partitions, by slot (the node's [`Counters`] hold them).
    pub fn with_fixed_cells(mut self, cells: Vec<Arc<PartitionCells>>) -> PartitionRegistry {
        for p in self.live.values_mut() {
            p.fixed_cells = cells.get(p.slot).cloned();
        }
        self
    }

    /// True when every agent's outbox takes one more command: a partition change then reaches
    /// all of them (or, deferred, none).
    pub(super) fn has_room(&self) -> bool {
        self.has_room_for(1)
    }

    /// Like [`PartitionRegistry::has_room`] for `n` commands per agent (an assignment makes a
    /// partition live and tells the receiver whom to follow: two for the receiver).
    pub(super) fn has_room_for(&self, n: usize) -> bool {
        self.receiver.has_room(n)
            && self.sender.has_room(n)
            && self.archiver.as_ref().is_none_or(|a| a.has_room(n))
    }

    pub(super) fn flush(&mut self) -> usize {
        let mut n = self.receiver.flush() + self.sender.flush();
        if let Some(a) = self.archiver.as_mut() {
            n += a.flush();
        }
        n
    }

    /// Makes a partition created at run time live in every agent. Everything that may block or
    /// allocate (storage replay, opening the log, attaching ring handles) happens here.
    /// Returns the records replayed from storage into the ring.
    pub(super) fn add(
        &mut self,
        stream_id: u32,
        partition: u16,
        ring: Ring,
        fresh: bool,
    ) -> Result<u64, AddError> {
        if self.live.contains_key(&(stream_id, partition)) {
            return Ok(0);
        }
        let slot = self.free_slots.pop().ok_or_else(|| {
            AddError::Ring(
                "no free partition slot (DYNAMIC_RINGS_MAX partitions are live)".to_string(),
            )
        })?;
        let result = self.attach(slot, stream_id, partition, &ring, fresh);
        match result {
            Ok((replayed, cells)) => {
                let archived = self.storage_dir.is_some();
                self.live.insert(
                    (stream_id, partition),
                    LivePartition {
                        slot,
                        ring,
                        archived,
                        cells: Some(cells),
                        fixed_cells: None,
                    },
                );
                Ok(replayed)
            }
            Err(e) => {
                self.free_slots.push(slot);
                Err(e)
            }
        }
    }

    fn attach(
        &mut self,
        slot: usize,
        stream_id: u32,
        partition: u16,
        ring: &Ring,
        fresh: bool,
    ) -> Result<(u64, Arc<PartitionCells>), AddError> {
        let frame_max = xdp_programs::abi_consts::FRAME_BYTES_MAX as usize;
        if ring.max_payload_len() < frame_max {
            // Another process (an SDK client) created it smaller than this node's frames.
            return Err(AddError::Ring(format!(
                "its ring {} takes records of at most {} bytes, less than a frame ({frame_max}): remove the ring file and create the stream again (a ring of the node's ring_capacity_bytes is made)",
                ring.path().display(),
                ring.max_payload_len()
            )));
        }
        let cells = Arc::new(PartitionCells::default());
        let mut replayed = 0;
        let archive = match &self.storage_dir {
            Some(dir) => {
                if fresh {
                    replayed = crate::archive::replay(
                        &crate::archive::log_dir(dir, stream_id, partition),
                        ring,
                        self.replay_records_max,
                    )
                    .map_err(|e| AddError::Storage(e.to_string()))?;
                }
                Some(
                    PartitionArchive::open(dir, stream_id, partition, ring, cells.clone())
                        .map_err(|e| AddError::Storage(e.to_string()))?,
                )
            }
            None => None,
        };
        let publisher = ring
            .publisher()
            .map_err(|e| AddError::Ring(e.to_string()))?;
        let reader = ring
            .subscriber(StartAt::Tail)
            .map_err(|e| AddError::Ring(e.to_string()))?;
        if let (Some(part), Some(archiver)) = (archive, self.archiver.as_mut()) {
            must_push(archiver, ArchiverCommand::Add { slot, part });
        }
        let add = SenderCommand::AddPartition {
            slot,
            ring: ring.clone(),
            reader: Box::new(reader),
            cells: cells.clone(),
        };
        must_push(&mut self.sender, add);
        let add = ReceiverCommand::Add {
            slot,
            stream_id,
            partition,
            ring: ring.clone(),
            publisher,
            cells: cells.clone(),
        };
        must_push(&mut self.receiver, add);
        Ok((replayed, cells))
    }

    /// (stream, partition, cells) of every partition made live at run time, in order.
    pub(super) fn runtime_cells(&self) -> impl Iterator<Item = (u32, u16, &PartitionCells)> {
        self.live
            .iter()
            .filter_map(|(&(s, p), l)| l.cells.as_deref().map(|c| (s, p, c)))
    }

    /// Tells the receiver to follow a leader for (stream, partition), or to stop; false when
    /// the partition is not live. The caller checked room ([`PartitionRegistry::has_room`]).
    pub(super) fn follow(
        &mut self,
        stream_id: u32,
        partition: u16,
        follow: Option<Box<crate::replication::FollowerFetch>>,
    ) -> bool {
        let Some(p) = self.live.get(&(stream_id, partition)) else {
            return false;
        };
        let slot = p.slot;
        must_push(&mut self.receiver, ReceiverCommand::Follow { slot, follow });
        true
    }

    /// The ring and the shared cells of a live partition.
    pub(super) fn partition(
        &self,
        stream_id: u32,
        partition: u16,
    ) -> Option<(&Ring, Option<&PartitionCells>)> {
        self.live
            .get(&(stream_id, partition))
            .map(|l| (&l.ring, l.cells.as_deref().or(l.fixed_cells.as_deref())))
    }

    /// Takes a partition made at run time away from every agent; false when it was not live.
    pub(super) fn remove(&mut self, stream_id: u32, partition: u16) -> bool {
        let Some(p) = self.live.remove(&(stream_id, partition)) else {
            return false;
        };
        let slot = p.slot;
        let remove = ReceiverCommand::Remove {
            slot,
            stream_id,
            partition,
        };
        must_push(&mut self.receiver, remove);
        must_push(&mut self.sender, SenderCommand::RemovePartition { slot });
        if let Some(a) = self.archiver.as_mut() {
            must_push(a, ArchiverCommand::Remove { slot });
        }
        // Each agent applies its commands in order, so a later Add of this slot comes after.
        self.free_slots.push(slot);
        true
    }
}

/// Pushes a partition change the caller checked room for ([`PartitionRegistry::has_room`]).
fn must_push<T>(outbox: &mut Outbox<T>, command: T) {
    assert!(
        outbox.push(command).is_ok(),
        "room for partition changes is checked before they are made"
    );
}
