//! The partition leader's view of its replica set: followers' progress, the ISR, the high
//! watermarks and the ack decision. Rules: see the module docs of [`super`].

use super::ack::{AckMode, AckStatus, NotEnoughReplicas};
use super::{NodeId, REPLICAS_MAX, REPLICA_LAG_TIME_MAX_NS_DEFAULT};

/// Replication policy of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaSetConfig {
    /// A follower last caught up longer ago than this leaves the ISR.
    pub replica_lag_time_max_ns: u64,
    /// Fewest ISR members (leader included) for `all` publishes and for the watermarks to move.
    pub min_insync_replicas: usize,
}

impl Default for ReplicaSetConfig {
    fn default() -> Self {
        Self {
            replica_lag_time_max_ns: REPLICA_LAG_TIME_MAX_NS_DEFAULT,
            min_insync_replicas: 1,
        }
    }
}

/// Why a replica set could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaSetError {
    #[error("{0} replicas; a partition has 1..={REPLICAS_MAX}")]
    ReplicaCount(usize),
    #[error("replica {0} is listed twice")]
    Duplicate(NodeId),
    #[error("the leader {0} is not in the replica set")]
    LeaderNotReplica(NodeId),
    #[error("the ISR must contain the leader {0}")]
    IsrWithoutLeader(NodeId),
    #[error("ISR member {0} is not in the replica set")]
    IsrNotReplica(NodeId),
    #[error("min_insync_replicas {min} must be 1..={replicas} (the replica count)")]
    MinInsync { min: usize, replicas: usize },
    #[error("replica_lag_time_max_ns must be > 0")]
    LagTime,
    #[error("leader offsets inconsistent: durable {durable}, high watermark {hw}, log end {end} (need hw <= end and durable <= end)")]
    Offsets { durable: u64, hw: u64, end: u64 },
}

/// Why an input was refused. Nothing changed; the adapter counts it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("stale leader epoch {got} (current {current}): the sender follows a deposed leader")]
    StaleEpoch { got: u64, current: u64 },
    #[error("leader epoch {got} is newer than ours ({current}): this leader is deposed")]
    FutureEpoch { got: u64, current: u64 },
    #[error("node {0} is not a follower of this partition")]
    NotMember(NodeId),
    #[error("replica {from} reports offset {received}, past the leader's log end {leader_end}")]
    AheadOfLeader {
        from: NodeId,
        received: u64,
        leader_end: u64,
    },
    #[error("replica {from} reports durable {durable} above received {received}")]
    DurableAboveReceived {
        from: NodeId,
        received: u64,
        durable: u64,
    },
    #[error("in-sync replica {from} went back to received {received} / durable {durable} (it lost its tail): it leaves the ISR")]
    Regressed {
        from: NodeId,
        received: u64,
        durable: u64,
    },
    #[error("the leader's own offsets went backwards or durable passed the end ({end}, durable {durable})")]
    LeaderOffsets { end: u64, durable: u64 },
    #[error("committed ISR is invalid: {0}")]
    IsrInvalid(ReplicaSetError),
}

/// What the leader learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderInput<'a> {
    /// The leader appended up to `end_offset` (its log end).
    Appended { end_offset: u64 },
    /// The leader's log is durable below `durable_offset`.
    Durable { durable_offset: u64 },
    /// A follower's REPORT (or the offsets implied by its FETCH).
    Report {
        from: NodeId,
        leader_epoch: u64,
        received_offset: u64,
        durable_offset: u64,
    },
    /// The control plane committed an ISR for `leader_epoch` (through Raft).
    IsrCommitted {
        leader_epoch: u64,
        isr: &'a [NodeId],
    },
    /// The control plane refused the pending proposal; a new one may be made.
    IsrRejected { leader_epoch: u64 },
}

/// What an accepted input changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderOutput {
    /// The replicated or the persisted high watermark moved forward.
    pub watermarks_advanced: bool,
}

/// An ISR change for the control plane to commit (under the leader epoch rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrProposal {
    pub leader_epoch: u64,
    /// The proposed ISR, leader first, then followers ascending.
    pub isr: Vec<NodeId>,
    /// Followers leaving (lagging longer than the lag time, or lost their tail).
    pub removed: Vec<NodeId>,
    /// Follower joining (caught up).
    pub added: Option<NodeId>,
}

/// The leader's view of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaProgress {
    pub id: NodeId,
    /// Every offset below is in the follower's ring and log (its log end).
    pub received_offset: u64,
    /// Every offset below is on the follower's disk.
    pub durable_offset: u64,
    /// Last time the follower held the leader's log end (or the end the leader had at its
    /// previous report); None before its first report in this epoch (or a grace period).
    pub last_caught_up_ns: Option<u64>,
    /// In the committed ISR.
    pub in_isr: bool,
    /// An ISR member whose offsets went backwards: leaves the ISR at the next proposal.
    pub lost_tail: bool,
    last_report_ns: Option<u64>,
    leader_end_at_last_report: u64,
}

/// The partition leader's replica set for one leader epoch.
#[derive(Clone, Debug)]
pub struct ReplicaSet {
    cfg: ReplicaSetConfig,
    leader: NodeId,
    epoch: u64,
    /// First offset written in this epoch (the leader's log end when it took over).
    epoch_start_offset: u64,
    leader_end: u64,
    leader_durable: u64,
    followers: Vec<ReplicaProgress>,
    pending: Option<IsrProposal>,
    hw_replicated: u64,
    hw_persisted: u64,
}

/// Checks a replica list and an ISR: sizes, duplicates, leader membership.
fn check_isr(leader: NodeId, replicas: &[NodeId], isr: &[NodeId]) -> Result<(), ReplicaSetError> {
    if replicas.is_empty() || replicas.len() > REPLICAS_MAX {
        return Err(ReplicaSetError::ReplicaCount(replicas.len()));
    }
    for (i, r) in replicas.iter().enumerate() {
        if replicas[..i].contains(r) {
            return Err(ReplicaSetError::Duplicate(*r));
        }
    }
    for (i, m) in isr.iter().enumerate() {
        if !replicas.contains(m) {
            return Err(ReplicaSetError::IsrNotReplica(*m));
        }
        if isr[..i].contains(m) {
            return Err(ReplicaSetError::Duplicate(*m));
        }
    }
    if !replicas.contains(&leader) {
        return Err(ReplicaSetError::LeaderNotReplica(leader));
    }
    if !isr.contains(&leader) {
        return Err(ReplicaSetError::IsrWithoutLeader(leader));
    }
    Ok(())
}

impl ReplicaSet {
    /// The replica set of a leader taking over `epoch` at `now_ns`, with its log end and durable
    /// offset, the high watermark it recovered (both kinds start there), the replica set and
    /// the committed ISR. ISR followers get one lag time from now to report (Kafka does the
    /// same on election); their offsets count as unknown (0) until they do, so the watermarks
    /// wait for them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ReplicaSetConfig,
        now_ns: u64,
        leader: NodeId,
        epoch: u64,
        replicas: &[NodeId],
        isr: &[NodeId],
        (log_end, durable, high_watermark): (u64, u64, u64),
    ) -> Result<Self, ReplicaSetError> {
        check_isr(leader, replicas, isr)?;
        if cfg.min_insync_replicas == 0 || cfg.min_insync_replicas > replicas.len() {
            return Err(ReplicaSetError::MinInsync {
                min: cfg.min_insync_replicas,
                replicas: replicas.len(),
            });
        }
        if cfg.replica_lag_time_max_ns == 0 {
            return Err(ReplicaSetError::LagTime);
        }
        if high_watermark > log_end || durable > log_end {
            return Err(ReplicaSetError::Offsets {
                durable,
                hw: high_watermark,
                end: log_end,
            });
        }
        let mut followers: Vec<ReplicaProgress> = replicas
            .iter()
            .filter(|&&r| r != leader)
            .map(|&id| ReplicaProgress {
                id,
                received_offset: 0,
                durable_offset: 0,
                last_caught_up_ns: isr.contains(&id).then_some(now_ns),
                in_isr: isr.contains(&id),
                lost_tail: false,
                last_report_ns: None,
                leader_end_at_last_report: 0,
            })
            .collect();
        followers.sort_by_key(|f| f.id);
        Ok(Self {
            cfg,
            leader,
            epoch,
            epoch_start_offset: log_end,
            leader_end: log_end,
            leader_durable: durable,
            followers,
            pending: None,
            hw_replicated: high_watermark,
            hw_persisted: high_watermark.min(durable),
        })
    }

    pub fn leader_epoch(&self) -> u64 {
        self.epoch
    }
    /// Offsets below are held in memory by every ISR member (the `all` replicated commit).
    pub fn high_watermark_replicated(&self) -> u64 {
        self.hw_replicated
    }
    /// Offsets below are on disk at every ISR member (the `all` persisted commit).
    pub fn high_watermark_persisted(&self) -> u64 {
        self.hw_persisted
    }
    pub fn leader_end(&self) -> u64 {
        self.leader_end
    }
    pub fn leader_durable(&self) -> u64 {
        self.leader_durable
    }
    pub fn followers(&self) -> &[ReplicaProgress] {
        &self.followers
    }
    /// The proposal waiting for the control plane, if any.
    pub fn pending_proposal(&self) -> Option<&IsrProposal> {
        self.pending.as_ref()
    }
    /// The committed ISR, leader first, then followers ascending.
    pub fn isr(&self) -> Vec<NodeId> {
        std::iter::once(self.leader)
            .chain(self.followers.iter().filter(|f| f.in_isr).map(|f| f.id))
            .collect()
    }
    /// Size of the committed ISR, leader included.
    pub fn isr_len(&self) -> usize {
        1 + self.followers.iter().filter(|f| f.in_isr).count()
    }

    /// Feeds one input; on refusal nothing changed.
    pub fn handle(&mut self, now_ns: u64, input: LeaderInput<'_>) -> Result<LeaderOutput, Refusal> {
        match input {
            LeaderInput::Appended { end_offset } => {
                if end_offset < self.leader_end {
                    return Err(Refusal::LeaderOffsets {
                        end: end_offset,
                        durable: self.leader_durable,
                    });
                }
                self.leader_end = end_offset;
            }
            LeaderInput::Durable { durable_offset } => {
                if durable_offset < self.leader_durable || durable_offset > self.leader_end {
                    return Err(Refusal::LeaderOffsets {
                        end: self.leader_end,
                        durable: durable_offset,
                    });
                }
                self.leader_durable = durable_offset;
            }
            LeaderInput::Report {
                from,
                leader_epoch,
                received_offset,
                durable_offset,
            } => {
                self.check_epoch(leader_epoch)?;
                self.report(now_ns, from, received_offset, durable_offset)?;
            }
            LeaderInput::IsrCommitted { leader_epoch, isr } => {
                self.check_epoch(leader_epoch)?;
                self.commit_isr(isr)?;
            }
            LeaderInput::IsrRejected { leader_epoch } => {
                self.check_epoch(leader_epoch)?;
                self.pending = None;
            }
        }
        Ok(LeaderOutput {
            watermarks_advanced: self.advance_watermarks(),
        })
    }

    fn check_epoch(&self, got: u64) -> Result<(), Refusal> {
        match got.cmp(&self.epoch) {
            std::cmp::Ordering::Less => Err(Refusal::StaleEpoch {
                got,
                current: self.epoch,
            }),
            std::cmp::Ordering::Greater => Err(Refusal::FutureEpoch {
                got,
                current: self.epoch,
            }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// Whether a follower counts toward the watermarks: committed member, or joining in the
    /// pending proposal (the maximal ISR).
    fn counts(&self, f: &ReplicaProgress) -> bool {
        f.in_isr || self.pending.as_ref().and_then(|p| p.added) == Some(f.id)
    }

    fn report(
        &mut self,
        now_ns: u64,
        from: NodeId,
        received: u64,
        durable: u64,
    ) -> Result<(), Refusal> {
        let leader_end = self.leader_end;
        let Some(i) = self.followers.iter().position(|f| f.id == from) else {
            return Err(Refusal::NotMember(from));
        };
        if received > leader_end {
            return Err(Refusal::AheadOfLeader {
                from,
                received,
                leader_end,
            });
        }
        if durable > received {
            return Err(Refusal::DurableAboveReceived {
                from,
                received,
                durable,
            });
        }
        let counted = self.counts(&self.followers[i]);
        let f = &mut self.followers[i];
        if counted && (received < f.received_offset || durable < f.durable_offset) {
            // The leader's view of a counted member never goes back (the watermarks rely on
            // it); the member leaves the ISR instead and rejoins once caught up again.
            f.lost_tail = true;
            return Err(Refusal::Regressed {
                from,
                received,
                durable,
            });
        }
        if received >= leader_end {
            f.last_caught_up_ns = Some(now_ns);
        } else if received >= f.leader_end_at_last_report {
            if let Some(prev) = f.last_report_ns {
                f.last_caught_up_ns = Some(f.last_caught_up_ns.map_or(prev, |t| t.max(prev)));
            }
        }
        f.received_offset = received;
        f.durable_offset = durable;
        f.last_report_ns = Some(now_ns);
        f.leader_end_at_last_report = leader_end;
        Ok(())
    }

    fn commit_isr(&mut self, isr: &[NodeId]) -> Result<(), Refusal> {
        let replicas: Vec<NodeId> = std::iter::once(self.leader)
            .chain(self.followers.iter().map(|f| f.id))
            .collect();
        check_isr(self.leader, &replicas, isr).map_err(Refusal::IsrInvalid)?;
        for f in &mut self.followers {
            let member = isr.contains(&f.id);
            if f.in_isr && !member {
                f.lost_tail = false;
            }
            f.in_isr = member;
        }
        self.pending = None;
        Ok(())
    }

    /// Moves both watermarks to the minimum over the counted replicas, never backwards, and
    /// not at all while the committed ISR is below `min_insync_replicas` (strict min ISR).
    fn advance_watermarks(&mut self) -> bool {
        if self.isr_len() < self.cfg.min_insync_replicas {
            return false;
        }
        let (mut rep, mut per) = (self.leader_end, self.leader_durable);
        for f in self.followers.iter().filter(|f| self.counts(f)) {
            rep = rep.min(f.received_offset);
            per = per.min(f.durable_offset);
        }
        let before = (self.hw_replicated, self.hw_persisted);
        self.hw_replicated = self.hw_replicated.max(rep);
        self.hw_persisted = self.hw_persisted.max(per);
        (self.hw_replicated, self.hw_persisted) != before
    }

    /// Kafka's rule: at the leader's end now, or caught up within the lag time (and never
    /// while it has lost its tail). "At the end" counts only for a follower heard from
    /// within the lag time: a follower that went silent while holding the end (no writes
    /// since) is not in sync, as a Kafka follower that stops fetching is not.
    fn caught_up(&self, f: &ReplicaProgress, now_ns: u64) -> bool {
        if f.lost_tail {
            return false;
        }
        let lag = self.cfg.replica_lag_time_max_ns;
        let heard = f
            .last_report_ns
            .is_some_and(|t| now_ns.saturating_sub(t) <= lag);
        let at_end = heard && f.received_offset >= self.leader_end;
        let recent = f
            .last_caught_up_ns
            .is_some_and(|t| now_ns.saturating_sub(t) <= lag);
        at_end || recent
    }

    /// Re-evaluates the ISR at `now_ns` and returns a proposal when it should change and none
    /// is pending: first every lagging (or tail-losing) member leaves, else one caught-up
    /// follower that holds both watermarks and this epoch's start joins.
    pub fn poll_isr_change(&mut self, now_ns: u64) -> Option<IsrProposal> {
        if self.pending.is_some() {
            return None;
        }
        let removed: Vec<NodeId> = self
            .followers
            .iter()
            .filter(|f| f.in_isr && !self.caught_up(f, now_ns))
            .map(|f| f.id)
            .collect();
        let (removed, added) = if !removed.is_empty() {
            (removed, None)
        } else {
            let joining = self.followers.iter().find(|f| {
                !f.in_isr
                    && self.caught_up(f, now_ns)
                    && f.received_offset >= self.hw_replicated.max(self.epoch_start_offset)
                    && f.durable_offset >= self.hw_persisted
            });
            (Vec::new(), Some(joining?.id))
        };
        let isr = std::iter::once(self.leader)
            .chain(
                self.followers
                    .iter()
                    .filter(|f| (f.in_isr && !removed.contains(&f.id)) || Some(f.id) == added)
                    .map(|f| f.id),
            )
            .collect();
        let p = IsrProposal {
            leader_epoch: self.epoch,
            isr,
            removed,
            added,
        };
        self.pending = Some(p.clone());
        Some(p)
    }

    /// Whether a publish with `mode` may be appended now: `all` needs the committed ISR to be
    /// at least `min_insync_replicas`.
    pub fn admit(&self, mode: AckMode) -> Result<(), NotEnoughReplicas> {
        let isr = self.isr_len();
        if mode.needs_min_isr() && isr < self.cfg.min_insync_replicas {
            return Err(NotEnoughReplicas {
                isr,
                min_insync_replicas: self.cfg.min_insync_replicas,
            });
        }
        Ok(())
    }

    /// Where the record at `offset` stands for a publisher with `mode`.
    pub fn ack_status(&self, mode: AckMode, offset: u64) -> AckStatus {
        let committed_below = match mode {
            AckMode::None => return AckStatus::NoAck,
            AckMode::Leader => self.leader_end,
            AckMode::LeaderDurable => self.leader_durable,
            AckMode::AllReplicated => self.hw_replicated,
            AckMode::AllPersisted => self.hw_persisted,
        };
        if offset < committed_below {
            AckStatus::Acked
        } else if self.admit(mode).is_err() {
            AckStatus::BelowMinIsr
        } else {
            AckStatus::Waiting
        }
    }
}

#[cfg(test)]
mod tests;
