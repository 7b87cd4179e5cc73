//! Partition placement and the replica sets this node leads (#11).
//!
//! The control plane writes one [`PartitionAssignment`] per partition replica into the command
//! ring; [`super::streams`] decodes them and the conductor applies them here, live:
//!
//! * **Leader / Follower**: the partition is made live if it is not (ring, log, sessions: the
//!   same [`super::registry`] path as a stream create); a ring that cannot be made (shared
//!   memory full) is reported `NoRing`, a log that cannot be opened `NoStorage` — never a
//!   crash. A leader gets a [`ReplicaSet`] for its epoch and an in-memory epoch history that
//!   starts its epoch at its log end; a follower's receiver is told whom to fetch from
//!   ([`crate::replication::FollowerFetch`]). A later assignment of the same epoch updates
//!   the committed ISR; a new epoch or role replaces the state, without a restart.
//! * **None**: the partition is taken away from every agent and its ring removed.
//! * Refused and counted: an assignment for another node id (or any, while this node has
//!   none: `node_id = 0`), or one with an older epoch than this node holds.
//!
//! FETCH and REPORT frames from followers come from the receiver as
//! [`ConductorCommand::Replica`](crate::proxy::ConductorCommand::Replica). A FETCH is checked
//! (this node leads the partition, the leader epoch is ours, the sender is a follower of the
//! replica set at its assigned address, and the fetch continues our log: [`check_fetch`]) and
//! then served as a remote subscription from the fetch offset, so the sender streams the log,
//! then the ring, then live records to the follower with its flow control and NAK recovery.
//! A REPORT moves the follower's offsets in the [`ReplicaSet`].
//!
//! The node writes a [`ReplicaStatus`] per assigned partition to the status ring
//! ([`abi::assign::STATUS_RING_NAME`], lossy: a control plane that is not reading never holds
//! the data plane back) when its role, state or ISR proposal changes and every
//! [`STATUS_INTERVAL_NS`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use abi::assign::{
    AckDefault, PartitionAssignment, ReplicaState, ReplicaStatus, Role, ASSIGN_REPLICAS_MAX,
};
use sdk::net::wire::SubscribeStart;
use storage_nvme::EpochHistory;

use super::registry::AddError;
use super::Conductor;
use crate::counters::Counter;
use crate::replication::{
    check_fetch, FetchCheck, FollowerFetch, LeaderInput, ReplicaSet, ReplicaSetConfig,
};
use crate::session::{ReplicaBody, ReplicaRequest, SubscribeRequest};

/// Interval between the periodic status records of every assigned partition (ns).
pub const STATUS_INTERVAL_NS: u64 = 100_000_000;
/// Frame size of the leader's sessions towards its followers (a standard 1500-byte MTU; a
/// record larger than a frame is not replicated: counted by the sender as oversize).
pub const REPLICA_FRAME_BYTES: u32 = xdp_programs::abi_consts::FRAME_BYTES_MTU1500_IPV4;

/// The high watermark that gates remote publishers' durable acknowledgements of a partition
/// this node leads with a default ack mode `all` (its kind's watermark); None: no gate.
fn gate_of(r: &Replica, live: bool) -> Option<u64> {
    let l = r.leading.as_ref().filter(|_| live)?;
    match r.a.ack_default {
        AckDefault::AllReplicated => Some(l.set.high_watermark_replicated()),
        AckDefault::AllPersisted => Some(l.set.high_watermark_persisted()),
        _ => None,
    }
}

/// The conductor's placement state: the assigned partitions and the status ring.
pub struct Placement {
    node_id: u64,
    replica_lag_time_max_ns: u64,
    window_bytes: u32,
    status: Option<shm_ring::Publisher>,
    replicas: BTreeMap<(u32, u16), Replica>,
    next_status_ns: u64,
}

/// One assigned partition replica.
struct Replica {
    a: PartitionAssignment,
    state: ReplicaState,
    leading: Option<Leading>,
    /// Role, state or ISR proposal changed since the last status record.
    changed: bool,
}

/// What the leader of a partition keeps.
struct Leading {
    set: ReplicaSet,
    /// Epoch -> first offset, starting this epoch at the log end the leader took over with.
    epochs: EpochHistory,
}

impl Placement {
    /// `node_id` is this node's id (0: none); followers advertise `window_bytes`; statuses go
    /// to `status_ring` (None: not written).
    pub fn new(
        node_id: u64,
        replica_lag_time_max_ns: u64,
        window_bytes: u32,
        status_ring: Option<&shm_ring::Ring>,
    ) -> Result<Placement, shm_ring::PublisherAttachError> {
        Ok(Placement {
            node_id,
            replica_lag_time_max_ns,
            window_bytes,
            status: status_ring.map(shm_ring::Ring::publisher).transpose()?,
            replicas: BTreeMap::new(),
            next_status_ns: 0,
        })
    }

    /// The role and state this node holds for (stream, partition), if assigned.
    pub fn replica(&self, stream_id: u32, partition: u16) -> Option<(Role, ReplicaState, u64)> {
        self.replicas
            .get(&(stream_id, partition))
            .map(|r| (r.a.role, r.state, r.a.leader_epoch))
    }

    /// The replica set of a partition this node leads.
    pub fn replica_set(&self, stream_id: u32, partition: u16) -> Option<&ReplicaSet> {
        self.replicas
            .get(&(stream_id, partition))
            .and_then(|r| r.leading.as_ref())
            .map(|l| &l.set)
    }

    /// Writes one status record; false when the ring refused it (counted by the caller).
    fn emit(&mut self, status: &ReplicaStatus) -> bool {
        match self.status.as_mut() {
            Some(p) => p.offer(&status.encode()).is_ok(),
            None => true,
        }
    }
}

impl Conductor {
    /// Uses `placement` for the partition assignments of the command ring.
    pub fn with_placement(mut self, placement: Placement) -> Conductor {
        self.placement = Some(placement);
        self
    }

    /// Applies the assignments read from the command ring while the agents' outboxes have room.
    pub(super) fn apply_assignments(&mut self, now_ns: u64) -> usize {
        let mut applied = 0;
        while self.placement.is_some() && self.registry.has_room_for(2) {
            let Some(a) = self.streams.as_mut().and_then(|s| s.next_assignment()) else {
                break;
            };
            self.assign(a, now_ns);
            applied += 1;
        }
        applied
    }

    fn refuse_assignment(&mut self, a: &PartitionAssignment, why: &str) {
        self.counters.add(Counter::ReplAssignmentsRefused, 1);
        let refused = self.counters.get(Counter::ReplAssignmentsRefused);
        if refused.is_power_of_two() {
            eprintln!(
                "memstreamer: assignment of stream {} partition {} (epoch {}) refused: {why}",
                a.stream_id, a.partition, a.leader_epoch
            );
        }
    }

    fn assign(&mut self, a: PartitionAssignment, now_ns: u64) {
        let Some(p) = self.placement.as_ref() else {
            return;
        };
        let key = (a.stream_id, a.partition);
        if p.node_id == 0 || a.this_node != p.node_id {
            let why = format!(
                "it is for node {}, this node is {} (set node_id in the data plane's config)",
                a.this_node, p.node_id
            );
            return self.refuse_assignment(&a, &why);
        }
        let held = p
            .replicas
            .get(&key)
            .map(|r| (r.a.role, r.a.leader_epoch, r.a.leader));
        if let Some((_, epoch, _)) = held {
            if a.leader_epoch < epoch {
                let why = format!("epoch {} is older than the held {epoch}", a.leader_epoch);
                return self.refuse_assignment(&a, &why);
            }
        }
        self.counters.add(Counter::ReplAssignmentsApplied, 1);
        if a.role == Role::None {
            return self.unplace(a);
        }
        if let Err(state) = self.instantiate(key) {
            self.counters.add(Counter::ReplPartitionsNotServed, 1);
            return self.record(a, state, None);
        }
        let same = held == Some((a.role, a.leader_epoch, a.leader));
        match a.role {
            Role::Leader => self.lead(a, now_ns, same),
            _ => {
                if !same {
                    let follow = self.follower_of(&a).map(Box::new);
                    self.registry.follow(a.stream_id, a.partition, follow);
                }
                self.record(a, ReplicaState::CatchingUp, None);
            }
        }
    }

    /// Makes an assigned partition live (ring, log, sessions) unless it is.
    fn instantiate(&mut self, (stream_id, partition): (u32, u16)) -> Result<(), ReplicaState> {
        if self.registry.partition(stream_id, partition).is_some() {
            return Ok(());
        }
        let Some(streams) = self.streams.as_mut() else {
            return Err(ReplicaState::NoRing);
        };
        let (ring, fresh) = streams.assigned_ring(stream_id, partition).map_err(|e| {
            eprintln!("memstreamer: stream {stream_id} partition {partition}: no ring: {e}");
            ReplicaState::NoRing
        })?;
        match self.registry.add(stream_id, partition, ring, fresh) {
            Ok(replayed) => {
                self.counters.add(Counter::ConductorPartitionsAdded, 1);
                self.counters
                    .add(Counter::ArchiverReplayedRecords, replayed);
                Ok(())
            }
            Err(e) => {
                self.counters.add(Counter::ConductorPartitionErrors, 1);
                eprintln!(
                    "memstreamer: stream {stream_id} partition {partition} is not served: {e}"
                );
                if let Some(streams) = self.streams.as_mut() {
                    streams.unassign(stream_id, partition);
                }
                Err(match e {
                    AddError::Ring(_) => ReplicaState::NoRing,
                    AddError::Storage(_) => ReplicaState::NoStorage,
                })
            }
        }
    }

    /// The follower state for `a`'s leader (None: no leader, or it has no address).
    fn follower_of(&self, a: &PartitionAssignment) -> Option<FollowerFetch> {
        let p = self.placement.as_ref()?;
        let leader = a.replicas().iter().find(|r| r.node == a.leader)?;
        let addr = SocketAddr::from((leader.ipv4, leader.port));
        Some(FollowerFetch::new(
            (a.stream_id, a.partition),
            p.node_id,
            a.leader_epoch,
            addr,
            p.window_bytes,
        ))
    }

    /// This node leads `a`'s partition: the same epoch updates the committed ISR, a new one
    /// starts a replica set at the current log end.
    fn lead(&mut self, a: PartitionAssignment, now_ns: u64, same: bool) {
        let key = (a.stream_id, a.partition);
        let mut isr: Vec<u64> = a.isr().collect();
        if !isr.contains(&a.leader) {
            isr.insert(0, a.leader);
        }
        let held = self
            .placement
            .as_mut()
            .and_then(|p| p.replicas.get_mut(&key));
        if let (true, Some(r)) = (same, held) {
            if let Some(l) = r.leading.as_mut() {
                let committed = LeaderInput::IsrCommitted {
                    leader_epoch: a.leader_epoch,
                    isr: &isr,
                };
                let refused = l.set.handle(now_ns, committed).is_err();
                r.a = a;
                r.changed = true;
                if refused {
                    self.counters.add(Counter::ReplAssignmentsRefused, 1);
                }
                return;
            }
        }
        let (end, durable) = self.log_offsets(key).unwrap_or((0, 0));
        let replicas: Vec<u64> = a.replicas().iter().map(|r| r.node).collect();
        let cfg = ReplicaSetConfig {
            replica_lag_time_max_ns: self
                .placement
                .as_ref()
                .map_or(1, |p| p.replica_lag_time_max_ns),
            min_insync_replicas: usize::from(a.min_isr.max(1)),
        };
        let set = match ReplicaSet::new(
            cfg,
            now_ns,
            a.leader,
            a.leader_epoch,
            &replicas,
            &isr,
            (end, durable, 0),
        ) {
            Ok(set) => set,
            Err(e) => return self.refuse_assignment(&a, &e.to_string()),
        };
        let mut epochs = EpochHistory::new();
        if let Err(e) = epochs.assign(a.leader_epoch, end) {
            return self.refuse_assignment(&a, &e.to_string());
        }
        self.registry.follow(a.stream_id, a.partition, None);
        self.record(a, ReplicaState::Serving, Some(Leading { set, epochs }));
    }

    /// Takes an assigned partition away (Role::None).
    fn unplace(&mut self, a: PartitionAssignment) {
        let key = (a.stream_id, a.partition);
        let Some(p) = self.placement.as_mut() else {
            return;
        };
        p.replicas.remove(&key);
        if self.registry.remove(a.stream_id, a.partition) {
            self.counters.add(Counter::ConductorPartitionsRemoved, 1);
        }
        if let Some(streams) = self.streams.as_mut() {
            streams.unassign(a.stream_id, a.partition);
        }
        let node = p.node_id;
        let removed = ReplicaStatus::new(
            a.stream_id,
            a.partition,
            node,
            Role::None,
            ReplicaState::Removed,
            a.leader_epoch,
            [0; 4],
            &[],
        );
        if let Ok(s) = removed {
            self.write_status(&s);
        }
    }

    /// Keeps `a` as the partition's assignment with `state`.
    fn record(&mut self, a: PartitionAssignment, state: ReplicaState, leading: Option<Leading>) {
        if let Some(p) = self.placement.as_mut() {
            let r = Replica {
                a,
                state,
                leading,
                changed: true,
            };
            p.replicas.insert((a.stream_id, a.partition), r);
        }
    }

    /// (log end, durable offset) of a live partition: its ring's next sequence mapped to the
    /// log, and the log's durable offset (0 without storage).
    fn log_offsets(&self, (stream_id, partition): (u32, u16)) -> Option<(u64, u64)> {
        let (ring, cells) = self.registry.partition(stream_id, partition)?;
        let delta = cells.map_or(0, |c| c.log_delta.load(Ordering::Relaxed));
        let end = ring.tail().1.wrapping_add(delta);
        let durable = cells.map_or(0, |c| c.durable_records.load(Ordering::Relaxed));
        Some((end, durable.min(end)))
    }

    fn write_status(&mut self, s: &ReplicaStatus) {
        let written = self.placement.as_mut().is_some_and(|p| p.emit(s));
        let counter = if written {
            Counter::ReplStatusWritten
        } else {
            Counter::ReplStatusDropped
        };
        self.counters.add(counter, 1);
    }

    /// Feeds the leaders' own offsets to their replica sets, polls ISR changes, and writes the
    /// status records that are due.
    pub(super) fn replica_duty(&mut self, now_ns: u64) -> usize {
        let Some(p) = self.placement.as_ref() else {
            return 0;
        };
        if p.replicas.is_empty() {
            return 0;
        }
        let periodic = now_ns >= p.next_status_ns;
        let keys: Vec<(u32, u16)> = p.replicas.keys().copied().collect();
        let (mut hw_r, mut hw_p, mut lag_max) = (0u64, 0u64, 0u64);
        let mut work = 0;
        for key in keys {
            let offsets = self.log_offsets(key);
            let Some(p) = self.placement.as_mut() else {
                return work;
            };
            let Some(r) = p.replicas.get_mut(&key) else {
                continue;
            };
            let gate = gate_of(r, offsets.is_some());
            if let Some(cells) = self.registry.partition(key.0, key.1).and_then(|(_, c)| c) {
                // Ring offset = log offset - delta. Release pairs with the receiver's Acquire.
                let delta = cells.log_delta.load(Ordering::Relaxed);
                let mark = gate.map_or(u64::MAX, |hw| hw.wrapping_sub(delta));
                cells.commit_ring_mark.store(mark, Ordering::Release);
            }
            if let (Some(l), Some((end, durable))) = (r.leading.as_mut(), offsets) {
                // Refused only when an oversized record made the log end step back (counted
                // by the archiver); the next tick catches up.
                let _ = l
                    .set
                    .handle(now_ns, LeaderInput::Appended { end_offset: end });
                let _ = l.set.handle(
                    now_ns,
                    LeaderInput::Durable {
                        durable_offset: durable,
                    },
                );
                if l.set.poll_isr_change(now_ns).is_some() {
                    self.counters.add(Counter::ReplIsrProposals, 1);
                    r.changed = true;
                }
                hw_r += l.set.high_watermark_replicated();
                hw_p += l.set.high_watermark_persisted();
                for f in l.set.followers() {
                    lag_max = lag_max.max(end.saturating_sub(f.received_offset));
                }
            }
            if !(periodic || r.changed) {
                continue;
            }
            r.changed = false;
            let status = self.status_of(key, offsets);
            if let Some(s) = status {
                self.write_status(&s);
                work += 1;
            }
        }
        self.counters.set(Counter::ReplHwReplicated, hw_r);
        self.counters.set(Counter::ReplHwPersisted, hw_p);
        self.counters.set(Counter::ReplFollowerLagMax, lag_max);
        if periodic {
            if let Some(p) = self.placement.as_mut() {
                p.next_status_ns = now_ns + STATUS_INTERVAL_NS;
            }
        }
        work
    }

    /// The status record of an assigned partition.
    fn status_of(&self, key: (u32, u16), offsets: Option<(u64, u64)>) -> Option<ReplicaStatus> {
        let p = self.placement.as_ref()?;
        let r = p.replicas.get(&key)?;
        let (end, durable) = offsets.unwrap_or((0, 0));
        let mut state = r.state;
        let fetching = matches!(state, ReplicaState::CatchingUp | ReplicaState::Serving);
        if r.a.role == Role::Follower && fetching {
            let connected = self
                .registry
                .partition(key.0, key.1)
                .and_then(|(_, c)| c)
                .is_some_and(|c| c.replica_connected.load(Ordering::Relaxed) == 1);
            state = if connected {
                ReplicaState::Serving
            } else {
                ReplicaState::CatchingUp
            };
        }
        let (hw, proposal) = match &r.leading {
            Some(l) => (
                (
                    l.set.high_watermark_replicated(),
                    l.set.high_watermark_persisted(),
                ),
                l.set
                    .pending_proposal()
                    .map(|p| p.isr.clone())
                    .unwrap_or_default(),
            ),
            None => ((0, 0), Vec::new()),
        };
        let isr = &proposal[..proposal.len().min(ASSIGN_REPLICAS_MAX)];
        ReplicaStatus::new(
            key.0,
            key.1,
            p.node_id,
            r.a.role,
            state,
            r.a.leader_epoch,
            [end, durable, hw.0, hw.1],
            isr,
        )
        .ok()
    }

    /// A follower's FETCH or REPORT (from the receiver).
    pub(super) fn on_replica(&mut self, req: ReplicaRequest, now_ns: u64) {
        match req.body {
            ReplicaBody::Fetch(f) => {
                let key = (f.replica.stream_id, f.replica.partition);
                match self.check_replica(key, &f.replica, req.src) {
                    Err(counter) => self.counters.add(counter, 1),
                    Ok(()) => self.serve_fetch(req, f),
                }
            }
            ReplicaBody::Report(rep) => {
                let key = (rep.replica.stream_id, rep.replica.partition);
                if self.check_replica(key, &rep.replica, req.src).is_err() {
                    return self.counters.add(Counter::ReplReportsRefused, 1);
                }
                let input = LeaderInput::Report {
                    from: rep.replica.replica_id,
                    leader_epoch: rep.replica.leader_epoch,
                    received_offset: rep.received_offset,
                    durable_offset: rep.durable_offset,
                };
                let set = self
                    .placement
                    .as_mut()
                    .and_then(|p| p.replicas.get_mut(&key))
                    .and_then(|r| r.leading.as_mut())
                    .map(|l| &mut l.set);
                let counter = match set.map(|s| s.handle(now_ns, input)) {
                    Some(Ok(_)) => Counter::ReplReportsAccepted,
                    _ => Counter::ReplReportsRefused,
                };
                self.counters.add(counter, 1);
            }
        }
    }

    /// Whether a FETCH/REPORT for `key` may be taken: this node leads it in the sender's
    /// epoch, and the sender is a follower of the replica set at its assigned address. Err
    /// names the counter of the refusal.
    fn check_replica(
        &self,
        key: (u32, u16),
        h: &abi::replication::ReplicaHeader,
        src: SocketAddr,
    ) -> Result<(), Counter> {
        let Some(r) = self.placement.as_ref().and_then(|p| p.replicas.get(&key)) else {
            return Err(Counter::ReplFetchRefusedNotLeader);
        };
        if r.leading.is_none() {
            return Err(Counter::ReplFetchRefusedNotLeader);
        }
        if h.leader_epoch != r.a.leader_epoch {
            return Err(Counter::ReplFetchRefusedEpoch);
        }
        let member = r.a.replicas().iter().any(|e| {
            e.node == h.replica_id
                && e.node != r.a.leader
                && SocketAddr::from((e.ipv4, e.port)) == src
        });
        if !member {
            return Err(Counter::ReplFetchRefusedNotMember);
        }
        Ok(())
    }

    /// Serves a checked FETCH as a subscription from its offset, when it continues our log.
    fn serve_fetch(&mut self, req: ReplicaRequest, f: abi::replication::FetchBody) {
        let key = (f.replica.stream_id, f.replica.partition);
        let (end, _) = self.log_offsets(key).unwrap_or((0, 0));
        let check = self
            .placement
            .as_ref()
            .and_then(|p| p.replicas.get(&key))
            .and_then(|r| r.leading.as_ref())
            .map(|l| check_fetch(&l.epochs, (0, end), f.fetch_offset, f.last_fetched_epoch));
        if check != Some(FetchCheck::Serve) {
            // Divergence (EPOCH_END) and truncation are planned: the fetch is refused, counted.
            return self.counters.add(Counter::ReplFetchRefusedLog, 1);
        }
        self.counters.add(Counter::ReplFetchesServed, 1);
        self.subscribe(SubscribeRequest {
            src: req.src,
            stream_id: key.0,
            partition: key.1,
            session_id: req.session_id,
            epoch: req.epoch,
            frame_bytes_max: REPLICA_FRAME_BYTES,
            start: SubscribeStart::Offset(f.fetch_offset),
        });
    }
}
