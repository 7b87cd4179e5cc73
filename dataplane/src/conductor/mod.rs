//! The conductor agent: commands from the other agents and from the control plane, partitions
//! made live or removed at run time, liveness, counters publication, and freeing what the other
//! agents retire. Everything that allocates after start-up happens here, off the receiver's and
//! sender's duty cycles (e.g. a remote subscriber's retransmit buffer). One file per concern:
//!
//! * `streams`: command ring intake (the control plane's stream commands -> partition rings).
//! * `registry`: the partitions the agents know; makes run-time partitions live in every agent
//!   (or takes them away) through bounded per-agent outboxes.
//! * `subscribe`: remote subscribers' requests -> the sender's [`crate::proxy::NewSubscriber`].
//! * `placement`: partition assignments (#11), the replica sets this node leads, followers'
//!   FETCH/REPORT, and the replica status records for the control plane.
//! * `liveness`: agents without duty cycles are reported as stalled.
//! * here: the duty cycle, the counters file, the graveyards ([`crate::retire`]).

mod liveness;
mod placement;
mod registry;
mod streams;
mod subscribe;
#[cfg(test)]
mod tests;

pub use liveness::{AGENT_STALL_NS, LIVENESS_CHECK_INTERVAL_NS};
pub use placement::{Placement, REPLICA_FRAME_BYTES, STATUS_INTERVAL_NS};
pub use registry::PartitionRegistry;
pub use streams::*;
pub use subscribe::{SubscriptionSettings, CATCH_UP_BUF_BYTES};

use crate::agent::{Agent, CommandQueue, SpscConsumer};
use crate::counters::{Counter, Counters, CountersFile};
use crate::proxy::{ConductorCommand, PendingSubscribe};
use crate::retire::Retired;

use liveness::Liveness;

/// Commands handled per duty cycle at most.
pub const COMMANDS_PER_CYCLE_MAX: usize = 16;
/// Interval between counters-file updates (ns).
pub const COUNTERS_PUBLISH_INTERVAL_NS: u64 = 10_000_000;
/// Retired receiver and sender resources freed per duty cycle (per queue) at most.
pub const RETIRED_PER_CYCLE_MAX: usize = 16;

pub struct Conductor {
    commands: CommandQueue<ConductorCommand>,
    counters: Counters,
    file: CountersFile,
    settings: SubscriptionSettings,
    next_publish_ns: u64,
    commands_done: u64,
    file_errors: u64,
    liveness: Liveness,
    streams: Option<StreamRings>,
    registry: PartitionRegistry,
    /// Subscribers refused for want of a neighbour entry (logged at powers of two).
    no_neighbour: u64,
    /// What the receiver and sender gave up, freed here ([`crate::retire`]).
    graveyards: Vec<SpscConsumer<Retired>>,
    freed: u64,
    /// Partition placement by assignment (#11); None: stream commands only.
    placement: Option<Placement>,
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
            liveness: Liveness::default(),
            streams: None,
            registry,
            no_neighbour: 0,
            graveyards: Vec::new(),
            freed: 0,
            placement: None,
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
        self.liveness.watch(roles);
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

    /// Reads the control plane's stream commands, unless earlier changes still wait for room
    /// in an agent's outbox (then no more are read until they are applied).
    fn read_stream_commands(&mut self) -> usize {
        let Some(streams) = self.streams.as_mut() else {
            return 0;
        };
        if streams.events_pending() > 0 {
            return 0;
        }
        streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX)
    }

    /// Frees what the other agents retired (bounded per cycle).
    fn free_retired(&mut self) -> usize {
        let mut work = 0;
        for g in self.graveyards.iter_mut() {
            let freed = g.drain(RETIRED_PER_CYCLE_MAX, drop);
            if freed > 0 {
                self.freed += freed as u64;
                self.counters.set(Counter::ConductorFreed, self.freed);
                work += freed;
            }
        }
        work
    }

    /// Writes the counters file every [`COUNTERS_PUBLISH_INTERVAL_NS`].
    fn publish_counters(&mut self, now_ns: u64) -> usize {
        if now_ns < self.next_publish_ns {
            return 0;
        }
        self.next_publish_ns = now_ns + COUNTERS_PUBLISH_INTERVAL_NS;
        let runtime = self.registry.runtime_cells();
        if let Err(e) = self.file.publish_with(&self.counters, runtime) {
            // Reported once per 1000 failures: the data path keeps running without a stat view.
            if self.file_errors.is_multiple_of(1000) {
                eprintln!("memstreamer: {e}");
            }
            self.file_errors += 1;
        }
        1
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
            ConductorCommand::Replica(r) => self.on_replica(r, now_ns),
        });
        work += self.read_stream_commands();
        self.apply_stream_events();
        work += self.apply_assignments(now_ns);
        work += self.replica_duty(now_ns);
        work += self.registry.flush();
        work += self.free_retired();
        self.commands_done += work as u64;
        self.counters
            .set(Counter::ConductorCommands, self.commands_done);
        if let Some(s) = self.streams.as_ref() {
            self.counters
                .set(Counter::ReplStreamCreatesIgnored, s.creates_ignored());
        }
        self.liveness.check(now_ns, &self.counters);
        work + self.publish_counters(now_ns)
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
