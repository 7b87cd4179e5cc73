//! The conductor agent: commands from the other agents and from the control plane, counters
//! publication, housekeeping. Everything that allocates after start-up happens here, off the
//! receiver's and sender's duty cycles (e.g. a remote subscriber's retransmit buffer).
//!
//! ## Control plane -> data plane stream commands
//!
//! The node creates a small shm-ring, [`COMMAND_RING_NAME`], in its ring directory; the local
//! control plane publishes fixed-width [`StreamCommand`] records into it (see
//! `controlplane::dataplane_link`) and the conductor drains at most
//! [`STREAM_COMMANDS_PER_CYCLE_MAX`] per duty cycle ([`StreamRings`]). A `Create` makes the
//! partition rings of a stream at run time, a `Drop` removes the ones it made. The
//! [`PartitionRegistry`] then makes such a partition live in every agent: it replays storage
//! into a fresh ring, opens the log, attaches the ring handles, and hands them to the receiver,
//! sender and archiver through their SPSC command queues (buffered here in an [`Outbox`] while a
//! queue is full); removal travels the same way. Both are
//! idempotent (the control plane re-sends its full state whenever it (re)attaches). A record
//! that does not decode is counted ([`StreamRings::bad_commands`]) and skipped, never a panic.
//! The record layout and its codec are `abi::command`, shared with the control plane.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sdk::net::wire::SubscribeStart;
use shm_ring::{Ring, RingConfig, RingCreateError, StartAt};

use crate::agent::{Agent, CommandQueue, Outbox, SpscConsumer, SpscProducer};
use crate::archiver::{ArchiverCommand, PartitionArchive};
use crate::counters::{Counter, Counters, CountersFile, PartitionCells};
use crate::receiver::ReceiverCommand;
use crate::retire::Retired;
use crate::sender::{Phase, SenderCommand, StorageRead, Subscription};
use crate::session::SubscribeRequest;

/// Commands handled per duty cycle at most.
pub const COMMANDS_PER_CYCLE_MAX: usize = 16;
/// Interval between counters-file updates (ns).
pub const COUNTERS_PUBLISH_INTERVAL_NS: u64 = 10_000_000;
/// Retired receiver and sender resources freed per duty cycle (per queue) at most.
pub const RETIRED_PER_CYCLE_MAX: usize = 16;
/// Interval between liveness checks of the other agents (ns).
pub const LIVENESS_CHECK_INTERVAL_NS: u64 = 100_000_000;
/// An agent without a duty cycle for this long is reported as stalled (ns).
pub const AGENT_STALL_NS: u64 = 1_000_000_000;

const _: () = assert!(LIVENESS_CHECK_INTERVAL_NS < AGENT_STALL_NS);

/// Stream commands applied per duty cycle at most.
pub const STREAM_COMMANDS_PER_CYCLE_MAX: usize = 16;
/// Most partition rings the control plane may create on one node (all streams together).
pub const DYNAMIC_RINGS_MAX: usize = 4096;

/// The command records and the command ring (the control plane writes them: `abi::command`).
pub use abi::command::{
    StreamCommand, StreamCommandDecodeError, COMMAND_RING_CAPACITY_BYTES, COMMAND_RING_NAME,
};

/// The conductor's side of the command ring: the partition rings made at run time.
pub struct StreamRings {
    commands: shm_ring::Subscriber,
    ring_cfg: RingConfig,
    /// Partitions of the node's configuration (never created or dropped by commands).
    fixed: Vec<(u32, u16)>,
    /// Stream id -> (ring, made by this node) per partition.
    dynamic: BTreeMap<u32, Vec<(Ring, bool)>>,
    bad_commands: u64,
    failed_creates: u64,
    applied: u64,
    /// Partitions made or removed by applied commands, not yet handed to the agents (oldest
    /// first). No command is read while any wait, so this holds what one drain of at most
    /// [`STREAM_COMMANDS_PER_CYCLE_MAX`] commands makes.
    events: std::collections::VecDeque<StreamEvent>,
}

/// A partition a stream command made live or took away (the conductor tells the agents).
pub enum StreamEvent {
    /// A partition not in the node's configuration now has a ring; `fresh` when this node
    /// created the ring (storage is replayed into it).
    Added {
        stream_id: u32,
        partition: u16,
        ring: Ring,
        fresh: bool,
    },
    Removed {
        stream_id: u32,
        partition: u16,
    },
}

impl StreamRings {
    /// Subscribes to `command_ring`; partition rings are created with `ring_cfg`.
    pub fn new(
        command_ring: &Ring,
        ring_cfg: RingConfig,
        fixed: Vec<(u32, u16)>,
    ) -> Result<StreamRings, shm_ring::SubscriberAttachError> {
        Ok(StreamRings {
            commands: command_ring.subscriber(StartAt::Earliest)?,
            ring_cfg,
            fixed,
            dynamic: BTreeMap::new(),
            bad_commands: 0,
            failed_creates: 0,
            applied: 0,
            events: std::collections::VecDeque::new(),
        })
    }

    /// Records that did not decode, plus commands beyond [`DYNAMIC_RINGS_MAX`].
    pub fn bad_commands(&self) -> u64 {
        self.bad_commands
    }

    /// Commands applied (including no-op repeats).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The oldest partition added or removed and not yet taken.
    pub fn next_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Partition changes not yet taken (no command is read while there are any).
    pub fn events_pending(&self) -> usize {
        self.events.len()
    }

    /// (stream, partitions) of the rings made at run time.
    pub fn dynamic_streams(&self) -> Vec<(u32, u16)> {
        self.dynamic
            .iter()
            .map(|(&s, v)| (s, v.len() as u16))
            .collect()
    }

    /// Applies up to `limit` pending commands; returns how many records were read.
    pub fn drain(&mut self, limit: usize) -> usize {
        let mut batch = [None; STREAM_COMMANDS_PER_CYCLE_MAX];
        let mut n = 0;
        let mut bad = 0u64;
        let polled = self.commands.poll(
            |r| {
                match StreamCommand::decode(r.payload) {
                    Ok(c) if n < batch.len() => {
                        batch[n] = Some(c);
                        n += 1;
                    }
                    Ok(_) => bad += 1,
                    Err(e) => {
                        if bad == 0 {
                            eprintln!("memstreamer: command ring: {e}");
                        }
                        bad += 1;
                    }
                };
            },
            limit.min(STREAM_COMMANDS_PER_CYCLE_MAX),
        );
        self.bad_commands += bad;
        let read = match polled {
            Ok(p) => p.records,
            Err(e) => {
                self.bad_commands += 1;
                eprintln!("memstreamer: command ring: {e}");
                0
            }
        };
        for c in batch.into_iter().take(n).flatten() {
            self.apply(c);
        }
        read
    }

    fn apply(&mut self, c: StreamCommand) {
        self.applied += 1;
        match c {
            StreamCommand::Create {
                stream_id,
                partitions,
            } => self.create(stream_id, partitions),
            StreamCommand::Drop { stream_id } => {
                if let Some(rings) = self.dynamic.remove(&stream_id) {
                    self.removed(stream_id, 0, rings.len());
                    unlink_made(rings);
                }
            }
        }
    }

    fn create(&mut self, stream_id: u32, partitions: u16) {
        let total: usize = self.dynamic.values().map(Vec::len).sum();
        let rings = self.dynamic.entry(stream_id).or_default();
        if rings.len() > partitions as usize {
            let gone = rings.split_off(partitions as usize);
            let (from, to) = (partitions as usize, partitions as usize + gone.len());
            unlink_made(gone);
            self.removed(stream_id, from, to);
            return;
        }
        let rings = self.dynamic.entry(stream_id).or_default();
        for p in rings.len() as u16..partitions {
            if total + rings.len() >= DYNAMIC_RINGS_MAX {
                self.bad_commands += 1;
                eprintln!("memstreamer: stream {stream_id}: more than {DYNAMIC_RINGS_MAX} partition rings on this node; partitions from {p} on are not served");
                break;
            }
            let name = sdk::ring_name(stream_id, p);
            let made = if self.fixed.contains(&(stream_id, p)) {
                // The node's configuration already serves it: open, never remove.
                Ring::open(&name, self.ring_cfg.dir.as_deref())
                    .map(|r| (r, false))
                    .map_err(|e| e.to_string())
            } else {
                match Ring::create(&name, &self.ring_cfg) {
                    Ok(r) => Ok((r, true)),
                    Err(RingCreateError::Exists { .. }) => {
                        Ring::open(&name, self.ring_cfg.dir.as_deref())
                            .map(|r| (r, false))
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                }
            };
            match made {
                Ok((ring, fresh)) => {
                    if !self.fixed.contains(&(stream_id, p)) {
                        self.events.push_back(StreamEvent::Added {
                            stream_id,
                            partition: p,
                            ring: ring.clone(),
                            fresh,
                        });
                    }
                    rings.push((ring, fresh));
                }
                Err(e) => {
                    self.failed_creates += 1;
                    if self.failed_creates.is_power_of_two() {
                        eprintln!("memstreamer: cannot create the ring of stream {stream_id} partition {p}: {e}");
                    }
                    break;
                }
            }
        }
        if rings.is_empty() {
            self.dynamic.remove(&stream_id);
        }
    }

    fn removed(&mut self, stream_id: u32, from: usize, to: usize) {
        for p in from..to {
            if !self.fixed.contains(&(stream_id, p as u16)) {
                self.events.push_back(StreamEvent::Removed {
                    stream_id,
                    partition: p as u16,
                });
            }
        }
    }

    /// Removes every ring made at run time (node stop).
    pub fn close(&mut self) {
        for (_, rings) in std::mem::take(&mut self.dynamic) {
            unlink_made(rings);
        }
    }
}

impl Drop for StreamRings {
    fn drop(&mut self) {
        self.close();
    }
}

fn unlink_made(rings: Vec<(Ring, bool)>) {
    for (ring, made) in rings {
        if made {
            let _ = ring.unlink();
        }
    }
}

/// What the conductor is asked to do.
pub enum ConductorCommand {
    /// A remote subscriber asked for a partition (SETUP with FLAG_SUBSCRIBE on the data port).
    Subscribe(SubscribeRequest),
    /// The archiver's answer to [`ArchiverCommand::OpenReader`]: the subscriber's log reader.
    Reader(Box<PendingSubscribe>),
}

/// A subscribe request waiting for a reader of the partition's log (it starts behind the ring).
pub struct PendingSubscribe {
    pub request: SubscribeRequest,
    pub slot: usize,
    pub reader: Option<Box<storage_nvme::Reader>>,
}

/// Settings of the outbound sessions the conductor builds for remote subscribers.
#[derive(Clone, Debug)]
pub struct SubscriptionSettings {
    pub partitions: Vec<(u32, u16)>,
    pub retransmit_window_bytes: usize,
    pub heartbeat_interval_ns: u64,
    pub session_timeout_ns: u64,
    pub principal: String,
    /// The sender builds Ethernet frames on this interface (AF_XDP): a subscriber's MAC must
    /// be in its neighbour table. None: the kernel resolves (UDP backend).
    pub neighbour_interface: Option<String>,
}

/// Bytes of the storage read buffer of one remote subscriber while it catches up from storage.
pub const CATCH_UP_BUF_BYTES: usize = 2 * crate::archiver::BATCH_BYTES_MAX as usize;

/// One partition slot the agents know (configured, or made live at run time).
struct LivePartition {
    slot: usize,
    ring: Ring,
    /// The slot has a log (the archiver serves it).
    archived: bool,
    /// Cells of a partition made live at run time (configured partitions have theirs in
    /// [`Counters`]); listed in the counters file after the configured ones.
    cells: Option<Arc<PartitionCells>>,
}

/// The data plane's partitions as the agents see them, and the queues that tell the agents
/// about partitions made live or removed at run time (Aeron-conductor style: the conductor does
/// the cold work — rings, logs, ring handles — and hands finished state over SPSC queues).
pub struct PartitionRegistry {
    /// Ordered, so the counters file lists run-time partitions by (stream, partition).
    live: BTreeMap<(u32, u16), LivePartition>,
    free_slots: Vec<usize>,
    storage_dir: Option<PathBuf>,
    replay_records_max: u64,
    receiver: Outbox<ReceiverCommand>,
    sender: Outbox<SenderCommand>,
    archiver: Option<Outbox<ArchiverCommand>>,
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

    /// True when every agent's outbox takes one more command: a partition change then reaches
    /// all of them (or, deferred, none).
    fn has_room(&self) -> bool {
        self.receiver.has_room(1)
            && self.sender.has_room(1)
            && self.archiver.as_ref().is_none_or(|a| a.has_room(1))
    }

    fn flush(&mut self) -> usize {
        let mut n = self.receiver.flush() + self.sender.flush();
        if let Some(a) = self.archiver.as_mut() {
            n += a.flush();
        }
        n
    }

    /// Makes a partition created at run time live in every agent. Everything that may block or
    /// allocate (storage replay, opening the log, attaching ring handles) happens here.
    /// Returns the records replayed from storage into the ring.
    fn add(
        &mut self,
        stream_id: u32,
        partition: u16,
        ring: Ring,
        fresh: bool,
    ) -> Result<u64, String> {
        if self.live.contains_key(&(stream_id, partition)) {
            return Ok(0);
        }
        let slot = self.free_slots.pop().ok_or_else(|| {
            "no free partition slot (DYNAMIC_RINGS_MAX partitions are live)".to_string()
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
    ) -> Result<(u64, Arc<PartitionCells>), String> {
        let frame_max = xdp_programs::abi_consts::FRAME_BYTES_MAX as usize;
        if ring.max_payload_len() < frame_max {
            // Another process (an SDK client) created it smaller than this node's frames.
            return Err(format!(
                "its ring {} takes records of at most {} bytes, less than a frame ({frame_max}): remove the ring file and create the stream again (a ring of the node's ring_capacity_bytes is made)",
                ring.path().display(),
                ring.max_payload_len()
            ));
        }
        let cells = Arc::new(PartitionCells::default());
        let mut replayed = 0;
        let archive = match &self.storage_dir {
            Some(dir) => {
                if fresh {
                    replayed = crate::archiver::replay(
                        &crate::archiver::log_dir(dir, stream_id, partition),
                        ring,
                        self.replay_records_max,
                    )
                    .map_err(|e| e.to_string())?;
                }
                Some(
                    PartitionArchive::open(dir, stream_id, partition, ring, cells.clone())
                        .map_err(|e| e.to_string())?,
                )
            }
            None => None,
        };
        let publisher = ring.publisher().map_err(|e| e.to_string())?;
        let reader = ring.subscriber(StartAt::Tail).map_err(|e| e.to_string())?;
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
    fn runtime_cells(&self) -> impl Iterator<Item = (u32, u16, &PartitionCells)> {
        self.live
            .iter()
            .filter_map(|(&(s, p), l)| l.cells.as_deref().map(|c| (s, p, c)))
    }

    /// Takes a partition made at run time away from every agent; false when it was not live.
    fn remove(&mut self, stream_id: u32, partition: u16) -> bool {
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

pub struct Conductor {
    commands: CommandQueue<ConductorCommand>,
    counters: Counters,
    file: CountersFile,
    settings: SubscriptionSettings,
    next_publish_ns: u64,
    commands_done: u64,
    file_errors: u64,
    /// (role, cycles counter, last value, when it last changed, reported stalled).
    watched: Vec<(&'static str, Counter, u64, u64, bool)>,
    next_liveness_ns: u64,
    streams: Option<StreamRings>,
    registry: PartitionRegistry,
    /// Subscribers refused for want of a neighbour entry (logged at powers of two).
    no_neighbour: u64,
    /// What the receiver and sender gave up, freed here ([`crate::retire`]).
    graveyards: Vec<SpscConsumer<Retired>>,
    freed: u64,
}

impl Conductor {
    pub fn new(
        commands: CommandQueue<ConductorCommand>,
        registry: PartitionRegistry,
        counters: Counters,
        file: CountersFile,
        settings: SubscriptionSettings,
    ) -> Conductor {
        Conductor {
            commands,
            counters,
            file,
            settings,
            next_publish_ns: 0,
            commands_done: 0,
            file_errors: 0,
            watched: Vec::new(),
            next_liveness_ns: 0,
            streams: None,
            registry,
            no_neighbour: 0,
            graveyards: Vec::new(),
            freed: 0,
        }
    }

    /// Frees what an agent retires (the other half of its `with_graveyard`).
    pub fn with_graveyard(mut self, queue: SpscConsumer<Retired>) -> Conductor {
        self.graveyards.push(queue);
        self
    }

    /// Drains the control plane's stream commands every duty cycle.
    pub fn with_stream_commands(mut self, streams: StreamRings) -> Conductor {
        self.streams = Some(streams);
        self
    }

    /// Watches the duty-cycle count of these agent roles (liveness).
    pub fn watch(&mut self, roles: &[&'static str]) {
        self.watched = roles
            .iter()
            .filter_map(|&r| crate::counters::cycles_counter(r).map(|c| (r, c, 0, 0, false)))
            .collect();
    }

    /// Reports agents whose duty-cycle count stopped moving (a blocked or spinning-in-place agent;
    /// with shared threading the conductor shares their thread and can only see it afterwards).
    fn check_liveness(&mut self, now_ns: u64) {
        for (role, counter, last, since, stalled) in self.watched.iter_mut() {
            let cycles = self.counters.get(*counter);
            if cycles != *last || *since == 0 {
                (*last, *since, *stalled) = (cycles, now_ns, false);
            } else if !*stalled && now_ns - *since >= AGENT_STALL_NS {
                *stalled = true;
                self.counters.add(Counter::AgentStalls, 1);
                eprintln!(
                    "memstreamer: the {role} agent made no duty cycle for {} ms",
                    (now_ns - *since) / 1_000_000
                );
            }
        }
    }

    /// Applies the partitions the control plane's commands made or removed.
    fn apply_stream_events(&mut self) {
        let Some(streams) = self.streams.as_mut() else {
            return;
        };
        while self.registry.has_room() {
            let Some(event) = streams.next_event() else {
                break;
            };
            match event {
                StreamEvent::Added {
                    stream_id,
                    partition,
                    ring,
                    fresh,
                } => match self.registry.add(stream_id, partition, ring, fresh) {
                    Ok(replayed) => {
                        self.counters.add(Counter::ConductorPartitionsAdded, 1);
                        self.counters
                            .add(Counter::ArchiverReplayedRecords, replayed);
                    }
                    Err(e) => {
                        self.counters.add(Counter::ConductorPartitionErrors, 1);
                        eprintln!("memstreamer: stream {stream_id} partition {partition} exists only as a local ring: {e}");
                    }
                },
                StreamEvent::Removed {
                    stream_id,
                    partition,
                } => {
                    if self.registry.remove(stream_id, partition) {
                        self.counters.add(Counter::ConductorPartitionsRemoved, 1);
                    }
                }
            }
        }
    }

    fn session_config(&self, r: &SubscribeRequest) -> sdk::net::PublisherConfig {
        let frame_max = xdp_programs::abi_consts::FRAME_BYTES_MAX;
        let mut cfg = sdk::net::PublisherConfig::new(
            r.stream_id,
            r.partition,
            r.session_id,
            &self.settings.principal,
        );
        cfg.epoch = r.epoch;
        cfg.frame_bytes = (r.frame_bytes_max.min(frame_max) & !7) as usize;
        cfg.buffer_bytes = self.settings.retransmit_window_bytes;
        cfg.heartbeat_interval_ns = self.settings.heartbeat_interval_ns;
        cfg.status_timeout_ns = self.settings.session_timeout_ns;
        cfg
    }

    fn subscribe(&mut self, r: SubscribeRequest) {
        let Some(p) = self.registry.live.get(&(r.stream_id, r.partition)) else {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        };
        let (slot, archived) = (p.slot, p.archived);
        if self.session_config(&r).validate().is_err() {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        }
        let behind = r.start != SubscribeStart::Latest;
        match self.registry.archiver.as_mut() {
            // Records older than the ring come from the log: ask the archiver for a reader.
            Some(archiver) if behind && archived => {
                let open = ArchiverCommand::OpenReader {
                    slot,
                    request: Box::new(PendingSubscribe {
                        request: r,
                        slot,
                        reader: None,
                    }),
                };
                if archiver.push(open).is_err() {
                    self.outbox_full();
                }
            }
            _ => self.finish_subscribe(r, slot, None),
        }
    }

    /// Builds the subscriber's outbound session and where it starts reading; hands it to the
    /// sender. `reader` (a log reader) is there when the request starts behind the ring.
    fn finish_subscribe(
        &mut self,
        r: SubscribeRequest,
        slot: usize,
        reader: Option<Box<storage_nvme::Reader>>,
    ) {
        let Some(p) = self.registry.live.get(&(r.stream_id, r.partition)) else {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        };
        if p.slot != slot {
            // The partition was removed and made again meanwhile: the request is stale.
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        }
        let ring = p.ring.clone();
        let Ok(session) = sdk::net::PublisherSession::new(self.session_config(&r)) else {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        };
        let start = match r.start {
            SubscribeStart::Latest => None,
            SubscribeStart::Earliest => Some(0),
            SubscribeStart::Offset(x) => Some(x),
        };
        let sub = match (start, reader) {
            (None, _) => Subscription::new(r.src, slot, session),
            (Some(from), Some(mut reader)) => {
                // An offset beyond what is durable starts at the durable tail (the records
                // below `from` are skipped as they arrive); one below the log's start, at it.
                let target = from.min(reader.end_offset());
                if target > reader.next_offset() {
                    if let Err(e) = reader.seek_offset(target) {
                        eprintln!("memstreamer: subscriber {} from offset {from}: {e}; reading the log from its start", r.src);
                    }
                }
                let buf = match storage_nvme::AlignedBuf::new(CATCH_UP_BUF_BYTES) {
                    Ok(b) => Box::new(b),
                    Err(e) => {
                        eprintln!("memstreamer: no read buffer for a catching-up subscriber: {e}");
                        self.counters.add(Counter::ConductorSubscribeRefused, 1);
                        return;
                    }
                };
                let phase = Phase::Storage(StorageRead::new(reader, buf));
                Subscription::starting(r.src, slot, session, from, phase)
            }
            (Some(from), None) => match ring.subscriber(StartAt::Earliest) {
                Ok(private) => Subscription::starting(
                    r.src,
                    slot,
                    session,
                    from,
                    Phase::Ring {
                        sub: Box::new(private),
                    },
                ),
                Err(_) => {
                    self.counters.add(Counter::ConductorSubscribeRefused, 1);
                    return;
                }
            },
        };
        let sub = match &self.settings.neighbour_interface {
            None => sub,
            Some(iface) => {
                let mac = match r.src {
                    SocketAddr::V4(v4) => crate::net::afxdp::kernel_neighbour(iface, *v4.ip()),
                    SocketAddr::V6(_) => None,
                };
                let Some(mac) = mac else {
                    // Fail clearly: the AF_XDP sender cannot address a frame without it. The
                    // subscriber repeats its SUBSCRIBE, so a later ARP/ND entry lets it in.
                    self.counters.add(Counter::ConductorSubscribeRefused, 1);
                    self.counters.add(Counter::TxNoNeighbour, 1);
                    self.no_neighbour += 1;
                    if !self.no_neighbour.is_power_of_two() {
                        return;
                    }
                    eprintln!("memstreamer: remote subscriber {} refused: no resolved neighbour entry for it on `{iface}` (the AF_XDP sender needs its MAC address; check `ip neigh show dev {iface}`; IPv6 subscribers need --backend udp)", r.src);
                    return;
                };
                sub.with_mac(mac)
            }
        };
        let add = SenderCommand::Add(Box::new(sub));
        if self.registry.sender.push(add).is_err() {
            self.outbox_full();
        }
    }

    /// A subscribe request refused because the agent's queue and outbox are full (the
    /// subscriber repeats its SUBSCRIBE until the node's SETUP arrives, so it comes back).
    fn outbox_full(&mut self) {
        self.counters.add(Counter::ConductorSubscribeRefused, 1);
        self.counters.add(Counter::ConductorOutboxFull, 1);
    }
}

impl Agent for Conductor {
    fn do_work(&mut self, now_ns: u64) -> usize {
        let commands = self.commands.clone();
        let mut work = commands.drain(COMMANDS_PER_CYCLE_MAX, |c| match c {
            ConductorCommand::Subscribe(r) => self.subscribe(r),
            ConductorCommand::Reader(p) => {
                let PendingSubscribe {
                    request,
                    slot,
                    reader,
                } = *p;
                self.finish_subscribe(request, slot, reader)
            }
        });
        if let Some(streams) = self.streams.as_mut() {
            // Changes wait while an agent's outbox is full: read no more commands until then.
            if streams.events_pending() == 0 {
                work += streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX);
            }
        }
        self.apply_stream_events();
        work += self.registry.flush();
        for g in self.graveyards.iter_mut() {
            let freed = g.drain(RETIRED_PER_CYCLE_MAX, drop);
            if freed > 0 {
                self.freed += freed as u64;
                self.counters.set(Counter::ConductorFreed, self.freed);
                work += freed;
            }
        }
        self.commands_done += work as u64;
        self.counters
            .set(Counter::ConductorCommands, self.commands_done);
        if now_ns >= self.next_liveness_ns {
            self.next_liveness_ns = now_ns + LIVENESS_CHECK_INTERVAL_NS;
            self.check_liveness(now_ns);
        }
        if now_ns >= self.next_publish_ns {
            self.next_publish_ns = now_ns + COUNTERS_PUBLISH_INTERVAL_NS;
            let runtime = self.registry.runtime_cells();
            if let Err(e) = self.file.publish_with(&self.counters, runtime) {
                // Reported once per 1000 failures: the data path keeps running without a stat view.
                if self.file_errors.is_multiple_of(1000) {
                    eprintln!("memstreamer: {e}");
                }
                self.file_errors += 1;
            }
            work += 1;
        }
        work
    }

    fn role(&self) -> &'static str {
        "conductor"
    }

    fn on_close(&mut self) {
        if let Some(streams) = self.streams.as_mut() {
            streams.close();
        }
        let runtime = self.registry.runtime_cells();
        let _ = self.file.publish_with(&self.counters, runtime);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::agent::{spsc, SpscConsumer, COMMAND_QUEUE_DEPTH_MAX, OUTBOX_PENDING_MAX};

    /// Settings for remote subscribers of the configured partition (7, 0).
    fn settings(heartbeat_interval_ns: u64, session_timeout_ns: u64) -> SubscriptionSettings {
        SubscriptionSettings {
            partitions: vec![(7, 0)],
            retransmit_window_bytes: 1 << 16,
            heartbeat_interval_ns,
            session_timeout_ns,
            principal: "n".into(),
            neighbour_interface: None,
        }
    }

    /// A registry over one configured partition (7, 0) with a real ring in `dir`.
    fn registry(
        dir: &std::path::Path,
    ) -> (
        PartitionRegistry,
        SpscConsumer<ReceiverCommand>,
        SpscConsumer<SenderCommand>,
    ) {
        let cfg = RingConfig {
            capacity_bytes: 1 << 16,
            backing: shm_ring::Backing::DevShm,
            dir: Some(dir.to_path_buf()),
            ..RingConfig::default()
        };
        let ring = Ring::create(&sdk::ring_name(7, 0), &cfg).unwrap();
        let (rtx, rrx) = spsc(16);
        let (stx, srx) = spsc(16);
        let reg = PartitionRegistry::new(vec![(7, 0, ring)], 8, None, 0, rtx, stx, None);
        (reg, rrx, srx)
    }

    #[test]
    fn stalled_agents_are_counted_once_per_stall() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Counters::new(&[(7, 0)]);
        let file = CountersFile::create(&dir.path().join("c"), &counters).unwrap();
        let settings = settings(1, 2);
        let (reg, _r, _s) = registry(dir.path());
        let mut c = Conductor::new(CommandQueue::new(4), reg, counters.clone(), file, settings);
        c.watch(&["receiver"]);
        let step = LIVENESS_CHECK_INTERVAL_NS;
        let mut now = 1;
        for _ in 0..(AGENT_STALL_NS / step) + 3 {
            c.do_work(now);
            now += step;
        }
        assert_eq!(counters.get(Counter::AgentStalls), 1, "reported once");
        counters.bump_single_writer(Counter::AgentCyclesReceiver);
        for _ in 0..3 {
            c.do_work(now);
            now += step;
        }
        assert_eq!(
            counters.get(Counter::AgentStalls),
            1,
            "progress clears the stall"
        );
    }

    #[test]
    fn subscribe_requests_become_sender_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Counters::new(&[(7, 0)]);
        let file = CountersFile::create(&dir.path().join("c"), &counters).unwrap();
        let settings = settings(1_000_000, 5_000_000);
        let commands = CommandQueue::new(4);
        let (reg, _r, sender) = registry(dir.path());
        let mut c = Conductor::new(commands.clone(), reg, counters.clone(), file, settings);
        let request = |stream_id, frame_bytes_max| SubscribeRequest {
            src: "198.18.0.2:9".parse().unwrap(),
            stream_id,
            partition: 0,
            session_id: 1,
            epoch: 0,
            frame_bytes_max,
            start: SubscribeStart::Latest,
        };
        for r in [request(7, 1472), request(8, 1472), request(7, 16)] {
            assert!(commands.offer(ConductorCommand::Subscribe(r)).is_ok());
        }
        c.do_work(1);
        assert_eq!(sender.len(), 1, "only the valid request reaches the sender");
        assert_eq!(
            counters.get(Counter::ConductorSubscribeRefused),
            2,
            "unknown stream, frame too small"
        );
    }

    /// The sender's queue and the conductor's outbox for it are bounded: a subscribe request
    /// beyond them is refused and counted (the subscriber repeats it).
    #[test]
    fn subscribes_beyond_the_senders_outbox_are_refused_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Counters::new(&[(7, 0)]);
        let file = CountersFile::create(&dir.path().join("c"), &counters).unwrap();
        let commands = CommandQueue::new(COMMAND_QUEUE_DEPTH_MAX);
        let (reg, _r, sender) = registry(dir.path());
        let settings = settings(1_000_000, 5_000_000);
        let mut c = Conductor::new(commands.clone(), reg, counters.clone(), file, settings);
        let extra = 3;
        let total = 16 + OUTBOX_PENDING_MAX + extra;
        for session_id in 0..total as u32 {
            let r = SubscribeRequest {
                src: "198.18.0.2:9".parse().unwrap(),
                stream_id: 7,
                partition: 0,
                session_id,
                epoch: 0,
                frame_bytes_max: 1472,
                start: SubscribeStart::Latest,
            };
            assert!(commands.offer(ConductorCommand::Subscribe(r)).is_ok());
        }
        for _ in 0..total.div_ceil(COMMANDS_PER_CYCLE_MAX) {
            c.do_work(1);
        }
        assert_eq!(sender.len(), 16, "the sender's queue is full");
        assert_eq!(c.registry.sender.backlog(), OUTBOX_PENDING_MAX);
        assert_eq!(counters.get(Counter::ConductorOutboxFull), extra as u64);
        assert_eq!(
            counters.get(Counter::ConductorSubscribeRefused),
            extra as u64
        );
    }

    fn command_ring(dir: &std::path::Path) -> (Ring, RingConfig) {
        let cfg = RingConfig {
            capacity_bytes: COMMAND_RING_CAPACITY_BYTES,
            backing: shm_ring::Backing::DevShm,
            dir: Some(dir.to_path_buf()),
            ..RingConfig::default()
        };
        let ring = Ring::create(COMMAND_RING_NAME, &cfg).unwrap();
        let part_cfg = RingConfig {
            capacity_bytes: 1 << 16,
            ..cfg
        };
        (ring, part_cfg)
    }

    #[test]
    fn stream_commands_create_and_drop_rings_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, part_cfg) = command_ring(dir.path());
        let mut streams = StreamRings::new(&ring, part_cfg, vec![(7, 0)]).unwrap();
        let mut publ = ring.publisher().unwrap();
        let path = |s: u32, p: u16| dir.path().join(sdk::ring_name(s, p));
        let create = |stream_id, partitions| StreamCommand::Create {
            stream_id,
            partitions,
        };
        for c in [create(3, 2), create(3, 2)] {
            publ.offer(&c.encode()).unwrap();
        }
        publ.offer(b"garbage").unwrap();
        assert_eq!(streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX), 3);
        assert_eq!(streams.bad_commands(), 1);
        assert_eq!(streams.dynamic_streams(), vec![(3, 2)]);
        assert!(path(3, 0).exists() && path(3, 1).exists());
        // A local SDK publisher and subscriber work on a ring made at run time.
        let ctx = sdk::Context::builder().dir(dir.path()).build();
        let mut sub = ctx.subscriber(3, 1);
        let mut p = ctx.publisher(3, 1).unwrap();
        let mut got = Vec::new();
        for _ in 0..1000 {
            let _ = p.offer(b"hello");
            sub.poll(|r| got.push(r.payload.to_vec()), 16).unwrap();
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(got[0], b"hello");
        drop((p, sub));
        publ.offer(&StreamCommand::Drop { stream_id: 3 }.encode())
            .unwrap();
        publ.offer(&StreamCommand::Drop { stream_id: 3 }.encode())
            .unwrap();
        assert_eq!(streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX), 2);
        assert!(!path(3, 0).exists() && !path(3, 1).exists());
        assert!(streams.dynamic_streams().is_empty());
        // The node's own stream is opened, never removed by commands.
        let fixed = Ring::create(&sdk::ring_name(7, 0), &part_cfg_of(&streams)).unwrap();
        publ.offer(&create(7, 1).encode()).unwrap();
        publ.offer(&create(8, 1).encode()).unwrap();
        streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX);
        publ.offer(&StreamCommand::Drop { stream_id: 7 }.encode())
            .unwrap();
        streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX);
        assert!(path(7, 0).exists(), "configured ring kept");
        assert!(path(8, 0).exists());
        streams.close();
        assert!(
            !path(8, 0).exists(),
            "rings made at run time go with the node"
        );
        fixed.unlink().unwrap();
        ring.unlink().unwrap();
    }

    /// A ring an SDK client created smaller than a frame is not made live (clear error,
    /// counted): the receiver never appends a remote record to it.
    #[test]
    fn a_ring_too_small_for_a_frame_is_not_attached() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, part_cfg) = command_ring(dir.path());
        let streams = StreamRings::new(&ring, part_cfg, vec![(7, 0)]).unwrap();
        let ctx = sdk::Context::builder()
            .dir(dir.path())
            .capacity_bytes(shm_ring::RING_CAPACITY_MIN)
            .build();
        let _client = ctx.publisher(9, 0).unwrap();
        let counters = Counters::new(&[(7, 0)]);
        let file = CountersFile::create(&dir.path().join("c"), &counters).unwrap();
        let settings = settings(1_000_000, 5_000_000);
        let (reg, receiver, sender) = registry(dir.path());
        let mut c = Conductor::new(CommandQueue::new(4), reg, counters.clone(), file, settings)
            .with_stream_commands(streams);
        let create = StreamCommand::Create {
            stream_id: 9,
            partitions: 1,
        };
        ring.publisher().unwrap().offer(&create.encode()).unwrap();
        c.do_work(1);
        assert_eq!(counters.get(Counter::ConductorPartitionErrors), 1);
        assert_eq!(counters.get(Counter::ConductorPartitionsAdded), 0);
        assert!(
            receiver.is_empty() && sender.is_empty(),
            "no agent serves it"
        );
        ring.unlink().unwrap();
    }

    fn part_cfg_of(s: &StreamRings) -> RingConfig {
        s.ring_cfg.clone()
    }
}
