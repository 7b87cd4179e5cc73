//! Command ring intake: the control plane's stream commands (records of `abi::command`) read
//! from the node's command ring, and the partition rings they make or remove at run time.
//!
//! The node creates a small shm-ring, [`COMMAND_RING_NAME`], in its ring directory; the local
//! control plane publishes fixed-width [`StreamCommand`] records into it (see
//! `controlplane::dataplane_link`) and the conductor drains at most
//! [`STREAM_COMMANDS_PER_CYCLE_MAX`] per duty cycle. A `Create` makes the partition rings of a
//! stream, a `Drop` removes the ones it made; both are idempotent (the control plane re-sends its
//! full state whenever it (re)attaches). A record that does not decode is counted
//! ([`StreamRings::bad_commands`]) and skipped, never a panic. What changed waits as
//! [`StreamEvent`]s until the registry ([`super::registry`]) has made it live in every agent.

use std::collections::{BTreeMap, VecDeque};

use shm_ring::{Ring, RingConfig, RingCreateError, StartAt};

/// Stream commands applied per duty cycle at most.
pub const STREAM_COMMANDS_PER_CYCLE_MAX: usize = 16;
/// Most partition rings the control plane may create on one node (all streams together).
pub const DYNAMIC_RINGS_MAX: usize = 4096;

use abi::assign::PartitionAssignment;
use abi::command::Command;
/// The command records and the command ring (the control plane writes them: `abi::command`).
pub use abi::command::{
    StreamCommand, StreamCommandDecodeError, COMMAND_RING_CAPACITY_BYTES, COMMAND_RING_NAME,
};

/// The conductor's side of the command ring: the partition rings made at run time.
pub struct StreamRings {
    commands: shm_ring::Subscriber,
    /// The command ring, to attach again after an eviction (a conductor stalled longer than
    /// the ring's liveness timeout, e.g. while a large log is replayed).
    command_ring: Ring,
    reattached: u64,
    pub(super) ring_cfg: RingConfig,
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
    events: VecDeque<StreamEvent>,
    /// Partition assignments read and not yet applied (#11), oldest first; bounded like
    /// `events` (no command is read while any wait).
    assignments: VecDeque<PartitionAssignment>,
    /// An assignment was read: partitions are placed by assignment, stream creates are ignored.
    placed: bool,
    creates_ignored: u64,
    /// Rings of assigned partitions: (ring, made by this node).
    assigned: BTreeMap<(u32, u16), (Ring, bool)>,
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
            command_ring: command_ring.clone(),
            reattached: 0,
            ring_cfg,
            fixed,
            dynamic: BTreeMap::new(),
            bad_commands: 0,
            failed_creates: 0,
            applied: 0,
            events: VecDeque::new(),
            assignments: VecDeque::new(),
            placed: false,
            creates_ignored: 0,
            assigned: BTreeMap::new(),
        })
    }

    /// The oldest assignment read and not yet taken.
    pub fn next_assignment(&mut self) -> Option<PartitionAssignment> {
        self.assignments.pop_front()
    }

    /// Puts back an assignment that could not be applied yet (an agent's outbox is full).
    pub fn defer_assignment(&mut self, a: PartitionAssignment) {
        self.assignments.push_front(a);
    }

    /// Stream creates ignored because partitions are placed by assignment.
    pub fn creates_ignored(&self) -> u64 {
        self.creates_ignored
    }

    /// The ring of an assigned partition, made (or opened: a configured partition's, or one a
    /// local client made) on first use; Err says why there is none (shm full, a bad file).
    pub fn assigned_ring(
        &mut self,
        stream_id: u32,
        partition: u16,
    ) -> Result<(Ring, bool), String> {
        if let Some((ring, _)) = self.assigned.get(&(stream_id, partition)) {
            return Ok((ring.clone(), false));
        }
        let name = sdk::ring_name(stream_id, partition);
        let made = match Ring::create(&name, &self.ring_cfg) {
            Ok(r) => (r, true),
            Err(RingCreateError::Exists { .. }) => Ring::open(&name, self.ring_cfg.dir.as_deref())
                .map(|r| (r, false))
                .map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        self.assigned
            .insert((stream_id, partition), (made.0.clone(), made.1));
        Ok(made)
    }

    /// Forgets an assigned partition's ring, removing the file if this node made it.
    pub fn unassign(&mut self, stream_id: u32, partition: u16) {
        if let Some(r) = self.assigned.remove(&(stream_id, partition)) {
            unlink_made(vec![r]);
        }
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
        self.events.len() + self.assignments.len()
    }

    /// (stream, partitions) of the rings made at run time.
    pub fn dynamic_streams(&self) -> Vec<(u32, u16)> {
        self.dynamic
            .iter()
            .map(|(&s, v)| (s, v.len() as u16))
            .collect()
    }

    /// Applies up to `limit` pending commands; returns how many records were read. Partition
    /// assignments wait in a queue for the conductor ([`StreamRings::next_assignment`]).
    pub fn drain(&mut self, limit: usize) -> usize {
        let mut batch = [None; STREAM_COMMANDS_PER_CYCLE_MAX];
        let mut n = 0;
        let mut bad = 0u64;
        let assignments = &mut self.assignments;
        let polled = self.commands.poll(
            |r| {
                match Command::decode(r.payload) {
                    Ok(Command::Stream(c)) if n < batch.len() => {
                        batch[n] = Some(c);
                        n += 1;
                    }
                    Ok(Command::Assign(a)) if assignments.len() < STREAM_COMMANDS_PER_CYCLE_MAX => {
                        assignments.push_back(*a);
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
        self.placed |= !self.assignments.is_empty();
        let read = match polled {
            Ok(p) => p.records,
            Err(e) => {
                self.bad_commands += 1;
                self.reattach(&e);
                0
            }
        };
        for c in batch.into_iter().take(n).flatten() {
            self.apply(c);
        }
        read
    }

    /// Attaches to the command ring again after `e` (an eviction), from its oldest record:
    /// commands are idempotent (creates, drops, epoch-checked assignments), so what is read
    /// twice changes nothing, and nothing still in the ring is missed.
    fn reattach(&mut self, e: &shm_ring::PollError) {
        self.reattached += 1;
        if self.reattached.is_power_of_two() {
            eprintln!("memstreamer: command ring: {e}; attaching again from its oldest record");
        }
        match self.command_ring.subscriber(StartAt::Earliest) {
            Ok(sub) => self.commands = sub,
            Err(e) => eprintln!("memstreamer: command ring: cannot attach again: {e}"),
        }
    }

    fn apply(&mut self, c: StreamCommand) {
        self.applied += 1;
        match c {
            // Placement by assignment (#11): the control plane names each partition's replicas.
            StreamCommand::Create { .. } if self.placed => self.creates_ignored += 1,
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
        unlink_made(std::mem::take(&mut self.assigned).into_values().collect());
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
