//! Cluster logic on top of Raft: writes from any node (forwarded to the
//! leader), linearizable reads, membership (join, remove, leadership
//! transfer), node liveness and partition leader election.
//!
//! Liveness: every node sends a heartbeat to the Raft leader every
//! `heartbeat_interval`. The leader keeps the last time it heard from each
//! node in memory (a new leader starts every node with a full grace period)
//! and commits `SetNodeLiveness` when a node crosses `node_timeout` either way.
//! Partition leader election: after any liveness change the leader computes
//! new assignments with [`plan_partition_changes`] and commits them with
//! `AssignPartitions`, which the state machine accepts only if each carries
//! exactly the current epoch + 1 — so a deposed Raft leader's stale plan, and
//! any command from a deposed partition leader, is rejected. A replica that
//! is live again rejoins the in-sync set through `UpdateIsr` with the current
//! epoch ([`plan_isr_expansions`]): only a leader change moves the epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};

use crate::network::{PeerPool, Rpc, PEER_CALL_TIMEOUT_MS};
use crate::store::StateView;
use crate::types::{
    ClusterState, Command, CommandRejection, CommandResponse, NodeHeartbeat, NodeId, NodeInfo,
    NodeLiveness, PartitionAssignment, TypeConfig,
};

/// How long a write (including forwarding and leader changes) may take.
pub const WRITE_TIMEOUT_MS: u64 = 5_000;
/// Most attempts of one write while the leader changes.
pub const WRITE_ATTEMPTS_MAX: u32 = 500;
/// Pause between attempts while no leader is reachable.
pub const WRITE_RETRY_INTERVAL_MS: u64 = 5;
/// How long adding a member may take (it must catch up first).
pub const JOIN_TIMEOUT_MS: u64 = 30_000;

const _: () =
    assert!(WRITE_RETRY_INTERVAL_MS * (WRITE_ATTEMPTS_MAX as u64) >= WRITE_TIMEOUT_MS / 2);

/// Liveness timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessConfig {
    /// Interval between heartbeats a node sends to the Raft leader.
    pub heartbeat_interval_ms: u64,
    /// A node not heard from for this long is dead.
    pub node_timeout_ms: u64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            heartbeat_interval_ms: 100,
            node_timeout_ms: 1_000,
        }
    }
}

/// Why a cluster operation failed. Travels between nodes as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterError {
    #[error("no Raft leader is reachable (election in progress or no quorum): retry shortly; if it persists, bring a majority of members up")]
    NoLeader,
    #[error(
        "this node is not the Raft leader (leader: {leader:?}): send the request to the leader"
    )]
    NotLeader { leader: Option<NodeId> },
    #[error("node {id} is not a member of the cluster: list members with `msctl cluster status`")]
    UnknownMember { id: NodeId },
    #[error("membership change failed: {reason}; retry once the cluster has a stable leader")]
    Membership { reason: String },
    #[error("the request timed out after {timeout_ms} ms: check that a majority of members is up")]
    Timeout { timeout_ms: u64 },
    #[error("Raft stopped on this node: {reason}; restart the node")]
    Fatal { reason: String },
    #[error("invalid request: {reason}")]
    Invalid { reason: String },
}

/// One member as seen from a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node: NodeInfo,
    pub voter: bool,
    /// Entries the member is behind the leader's log (leader only).
    pub lag: Option<u64>,
    pub liveness: Option<NodeLiveness>,
}

/// A node's view of the cluster (local, no round trip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// "Leader", "Follower", "Candidate" or "Learner".
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// Request of the ReadState RPC.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ReadStateRequest {
    /// Confirm leadership with a quorum first (served by the leader).
    pub linearizable: bool,
}

/// A node's handle on the cluster: everything above raw Raft.
pub struct Cluster {
    me: NodeInfo,
    raft: Raft<TypeConfig>,
    view: StateView,
    pool: Arc<PeerPool>,
    liveness: LivenessConfig,
    last_seen: Mutex<HashMap<NodeId, Instant>>,
}

fn fatal(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Fatal {
        reason: e.to_string(),
    }
}

impl Cluster {
    pub fn new(
        me: NodeInfo,
        raft: Raft<TypeConfig>,
        view: StateView,
        pool: Arc<PeerPool>,
        liveness: LivenessConfig,
    ) -> Arc<Self> {
        Arc::new(Cluster {
            me,
            raft,
            view,
            pool,
            liveness,
            last_seen: Mutex::new(HashMap::new()),
        })
    }

    /// This node.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// The underlying Raft instance.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Read access to the applied state machine.
    pub fn view(&self) -> &StateView {
        &self.view
    }

    fn leader_node(&self) -> Option<NodeInfo> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// Runs `local` on this node if it leads, otherwise sends `req` as `rpc`
    /// to the leader; retries through elections and leader changes (pausing
    /// `pause` between attempts) until `timeout_ms` has passed.
    async fn through_leader<Q, T, L, F>(
        &self,
        rpc: Rpc,
        req: &Q,
        timeout_ms: u64,
        pause: Duration,
        local: L,
    ) -> Result<T, ClusterError>
    where
        Q: Serialize,
        T: serde::de::DeserializeOwned,
        L: Fn() -> F,
        F: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        for _ in 0..WRITE_ATTEMPTS_MAX {
            // One attempt may wait on a commit that never comes (its leader
            // was deposed after appending it): bound it by the deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(attempt) = tokio::time::timeout(left, local()).await else {
                break;
            };
            match attempt {
                Ok(r) => return Ok(r),
                Err(ClusterError::NotLeader { leader: Some(l) }) if l != self.me.id => {
                    if let Some(node) = self.leader_node().filter(|n| n.id == l) {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let res = self
                            .pool
                            .call::<Q, T, ClusterError>(
                                &node.control_addr,
                                rpc,
                                req,
                                left.max(Duration::from_millis(1)),
                            )
                            .await;
                        match res {
                            Ok(Ok(r)) => return Ok(r),
                            Ok(Err(ClusterError::NotLeader { .. } | ClusterError::NoLeader)) => {}
                            Ok(Err(e)) => return Err(e),
                            // Unreachable or deposed mid-call: ask again.
                            Err(_) => {}
                        }
                    }
                }
                Err(ClusterError::NotLeader { .. } | ClusterError::NoLeader) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        Err(ClusterError::Timeout { timeout_ms })
    }

    /// Commits `cmd` through the leader (forwarding if needed) and returns the
    /// state machine's response, which may be a rejection.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, ClusterError> {
        self.through_leader(
            Rpc::ClientWrite,
            &cmd,
            WRITE_TIMEOUT_MS,
            Duration::from_millis(WRITE_RETRY_INTERVAL_MS),
            || self.write_local(cmd.clone()),
        )
        .await
    }

    /// Commits `cmd` only if this node is the leader (no forwarding).
    pub async fn write_local(&self, cmd: Command) -> Result<CommandResponse, ClusterError> {
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ClusterError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ClusterError::Membership {
                    reason: e.to_string(),
                })
            }
            Err(RaftError::Fatal(f)) => Err(fatal(f)),
        }
    }

    /// The cluster state. Linearizable reads confirm leadership with a quorum
    /// (on the leader, forwarded if needed); otherwise this node's applied state.
    pub async fn read_state(&self, linearizable: bool) -> Result<ClusterState, ClusterError> {
        if !linearizable {
            return Ok(self.view.cluster_state());
        }
        match self.read_state_local().await {
            Err(ClusterError::NotLeader { leader: Some(l) }) if l != self.me.id => {
                let node = self.leader_node().ok_or(ClusterError::NoLeader)?;
                self.pool
                    .call::<ReadStateRequest, ClusterState, ClusterError>(
                        &node.control_addr,
                        Rpc::ReadState,
                        &ReadStateRequest { linearizable: true },
                        Duration::from_millis(PEER_CALL_TIMEOUT_MS),
                    )
                    .await
                    .map_err(|_| ClusterError::NoLeader)?
            }
            other => other,
        }
    }

    /// Linearizable read served only by the leader.
    pub async fn read_state_local(&self) -> Result<ClusterState, ClusterError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(self.view.cluster_state()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ClusterError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ClusterError::NoLeader)
            }
            Err(RaftError::Fatal(f)) => Err(fatal(f)),
        }
    }

    /// This node's view: role, leader, term, indices, members and their lag.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let liveness = self.view.read(|d| d.state.liveness.clone());
        let last = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                node: node.clone(),
                voter: voters.contains(id),
                lag: m.replication.as_ref().map(|r| match r.get(id) {
                    Some(Some(matched)) => last.saturating_sub(matched.index),
                    _ if *id == m.id => 0,
                    _ => last,
                }),
                liveness: liveness.get(id).copied(),
            })
            .collect();
        NodeStatus {
            id: m.id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            members,
        }
    }

    /// Adds `node` as a voter (forwarded to the leader), then registers its addresses.
    pub async fn join(&self, node: NodeInfo) -> Result<(), ClusterError> {
        if node.id == 0 || node.control_addr.is_empty() {
            return Err(ClusterError::Invalid {
                reason: "a joining node needs a non-zero id and a control address".into(),
            });
        }
        self.through_leader(
            Rpc::Join,
            &node,
            JOIN_TIMEOUT_MS,
            Duration::from_millis(WRITE_RETRY_INTERVAL_MS * 10),
            || self.join_local(node.clone()),
        )
        .await
    }

    /// Join handled on the leader only.
    pub async fn join_local(&self, node: NodeInfo) -> Result<(), ClusterError> {
        let map_err = |e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ClusterError::NotLeader {
                leader: f.leader_id,
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ClusterError::Membership {
                    reason: e.to_string(),
                }
            }
            RaftError::Fatal(f) => fatal(f),
        };
        let is_voter = {
            let m = self.raft.metrics().borrow().clone();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == node.id);
            voter && m.membership_config.membership().get_node(&node.id) == Some(&node)
        };
        if !is_voter {
            self.raft
                .add_learner(node.id, node.clone(), true)
                .await
                .map_err(map_err)?;
            self.raft
                .change_membership(ChangeMembers::AddVoterIds([node.id].into()), false)
                .await
                .map_err(map_err)?;
        }
        self.seen(node.id);
        self.write_local(Command::RegisterNode(node))
            .await?
            .into_result()
            .map_err(|r| ClusterError::Invalid {
                reason: r.to_string(),
            })?;
        Ok(())
    }

    /// Removes member `id` (forwarded to the leader, retried through leader
    /// changes). Unknown to this node: `UnknownMember`. An attempt whose
    /// outcome was lost (leader deposed or unreachable mid-call) is retried;
    /// the retry then finds the member gone, which is the success it reports.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), ClusterError> {
        let known = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if !known {
            return Err(ClusterError::UnknownMember { id });
        }
        let res = self
            .through_leader(
                Rpc::RemoveMember,
                &id,
                JOIN_TIMEOUT_MS,
                Duration::from_millis(WRITE_RETRY_INTERVAL_MS * 10),
                || self.remove_member_local(id),
            )
            .await;
        match res {
            Err(ClusterError::UnknownMember { .. }) => Ok(()),
            other => other,
        }
    }

    /// Member removal handled on the leader only. A leader asked to remove
    /// itself first hands leadership to the most caught-up other voter and
    /// answers `NotLeader`, so the caller retries there: a leader that
    /// commits its own removal steps down with its pending writes unanswered.
    pub async fn remove_member_local(&self, id: NodeId) -> Result<(), ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        if m.membership_config.membership().get_node(&id).is_none() {
            return Err(ClusterError::UnknownMember { id });
        }
        if id == self.me.id && m.current_leader == Some(self.me.id) {
            return Err(self.hand_over_leadership(&m).await);
        }
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        let change = if voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        // retain = false: a removed voter leaves the node list too (one step).
        match self.raft.change_membership(change, false).await {
            Ok(_) => {}
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                return Err(ClusterError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                return Err(ClusterError::Membership {
                    reason: e.to_string(),
                })
            }
            Err(RaftError::Fatal(f)) => return Err(fatal(f)),
        }
        // The removed member may have been this leader: write through any leader.
        match self.write(Command::RemoveNode { id }).await? {
            CommandResponse::Rejected(CommandRejection::UnknownNode { .. })
            | CommandResponse::Done => Ok(()),
            other => Err(ClusterError::Invalid {
                reason: format!("{other:?}"),
            }),
        }
    }

    /// Makes the most caught-up other voter leader (bounded wait); returns
    /// the `NotLeader` error that sends the caller there.
    async fn hand_over_leadership(
        &self,
        m: &openraft::RaftMetrics<NodeId, NodeInfo>,
    ) -> ClusterError {
        let me = self.me.id;
        let liveness = self.view.read(|d| d.state.liveness.clone());
        // Live before dead (a dead voter may tie on the matched index), then most caught up.
        let rank = |id: &NodeId| {
            let live = liveness.get(id) != Some(&NodeLiveness::Dead);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten())
                .map(|l| l.index);
            (live, matched)
        };
        let Some(to) = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != me)
            .max_by_key(|v| rank(v))
        else {
            return ClusterError::Membership {
                reason: "the last voter cannot be removed".into(),
            };
        };
        if let Err(e) = self.transfer_leadership(to).await {
            return e;
        }
        let moved =
            |m: &openraft::RaftMetrics<NodeId, NodeInfo>| m.current_leader.is_some_and(|l| l != me);
        let _ = self
            .raft
            .wait(Some(Duration::from_millis(PEER_CALL_TIMEOUT_MS)))
            .metrics(moved, "leadership handed over")
            .await;
        ClusterError::NotLeader {
            leader: self
                .raft
                .metrics()
                .borrow()
                .current_leader
                .filter(|l| *l != me),
        }
    }

    /// Asks member `to` to start an election now; with an up-to-date log it
    /// wins and becomes leader.
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), ClusterError> {
        if to == self.me.id {
            return self.raft.trigger().elect().await.map_err(fatal);
        }
        let node = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&to)
            .cloned()
            .ok_or(ClusterError::UnknownMember { id: to })?;
        self.pool
            .call::<(), (), ClusterError>(
                &node.control_addr,
                Rpc::Elect,
                &(),
                Duration::from_millis(PEER_CALL_TIMEOUT_MS),
            )
            .await
            .map_err(|_| ClusterError::NoLeader)?
    }

    /// Records a heartbeat from `id` (on the leader).
    pub fn seen(&self, id: NodeId) {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
    }

    /// Handles a heartbeat RPC.
    pub fn heartbeat(&self, hb: &NodeHeartbeat) -> Result<(), ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.me.id) {
            return Err(ClusterError::NotLeader {
                leader: m.current_leader,
            });
        }
        self.seen(hb.node_id);
        Ok(())
    }

    /// Liveness and partition-leader duty cycle; runs until `shutdown` fires.
    pub async fn run_liveness(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.liveness.heartbeat_interval_ms);
        let timeout = Duration::from_millis(self.liveness.node_timeout_ms);
        let mut leading_since: Option<(u64, Instant)> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let m = self.raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                leading_since = None;
                if let Some(leader) = self.leader_node().filter(|l| l.id != self.me.id) {
                    let pool = self.pool.clone();
                    let hb = NodeHeartbeat {
                        node_id: self.me.id,
                    };
                    tokio::spawn(async move {
                        let _ = pool
                            .call::<NodeHeartbeat, (), ClusterError>(
                                &leader.control_addr,
                                Rpc::Heartbeat,
                                &hb,
                                interval,
                            )
                            .await;
                    });
                }
                continue;
            }
            let since = match leading_since {
                Some((term, t)) if term == m.current_term => t,
                _ => {
                    let now = Instant::now();
                    leading_since = Some((m.current_term, now));
                    now
                }
            };
            self.seen(self.me.id);
            if let Err(e) = self.leader_tick(since, timeout).await {
                tracing::debug!("liveness tick: {e}");
            }
        }
    }

    async fn leader_tick(
        &self,
        leading_since: Instant,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let now = Instant::now();
        let changes: Vec<(NodeId, NodeLiveness)> = {
            let seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            self.view.read(|d| {
                d.state
                    .nodes
                    .keys()
                    .filter_map(|id| {
                        let last = seen
                            .get(id)
                            .copied()
                            .unwrap_or(leading_since)
                            .max(leading_since);
                        let verdict = if now.duration_since(last) > timeout {
                            NodeLiveness::Dead
                        } else {
                            NodeLiveness::Live
                        };
                        (d.state.liveness.get(id) != Some(&verdict)).then_some((*id, verdict))
                    })
                    .collect()
            })
        };
        for (id, liveness) in changes {
            self.write_local(Command::SetNodeLiveness { id, liveness })
                .await?;
        }
        let plan = self.view.read(|d| plan_partition_changes(&d.state));
        if !plan.is_empty() {
            self.write_local(Command::AssignPartitions { assignments: plan })
                .await?;
        }
        // Planned on the state after the shrink above (applied before
        // write_local returned).
        let expansions = self.view.read(|d| plan_isr_expansions(&d.state));
        for cmd in expansions {
            self.write_local(cmd).await?;
        }
        Ok(())
    }
}

/// New assignments for partitions whose leader or in-sync replicas are dead:
/// the leader moves to the first live in-sync replica, dead nodes leave the
/// in-sync set, and each changed partition gets epoch + 1. A partition with no
/// live in-sync replica keeps its assignment (no unclean election).
pub fn plan_partition_changes(state: &ClusterState) -> Vec<PartitionAssignment> {
    let live: BTreeSet<NodeId> = state.live_nodes().into_iter().collect();
    let mut out = Vec::new();
    let by_stream: BTreeMap<u32, &Vec<PartitionAssignment>> =
        state.assignments.iter().map(|(k, v)| (*k, v)).collect();
    for parts in by_stream.values() {
        for a in parts.iter() {
            let isr: Vec<NodeId> = a.isr.iter().copied().filter(|n| live.contains(n)).collect();
            if isr.len() == a.isr.len() {
                continue;
            }
            let Some(&first_live) = isr.first() else {
                continue;
            };
            let leader = if live.contains(&a.leader) {
                a.leader
            } else {
                first_live
            };
            out.push(PartitionAssignment {
                leader,
                isr,
                leader_epoch: a.leader_epoch + 1,
                ..a.clone()
            });
        }
    }
    out
}

/// `UpdateIsr` commands that put live replicas back into the in-sync set of
/// partitions whose leader is live: a replica that was dropped while dead
/// rejoins once it heart-beats again. Only the ISR changes: the command
/// carries the current leader and epoch (the state machine fences it with
/// them), since the epoch moves only with the leader. The ISR keeps its
/// order and the returning replicas follow in replica order.
pub fn plan_isr_expansions(state: &ClusterState) -> Vec<Command> {
    let live: BTreeSet<NodeId> = state.live_nodes().into_iter().collect();
    let by_stream: BTreeMap<u32, &Vec<PartitionAssignment>> =
        state.assignments.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = Vec::new();
    for parts in by_stream.values() {
        for a in parts.iter() {
            if !live.contains(&a.leader) || !a.isr.contains(&a.leader) {
                continue;
            }
            let back = a
                .replicas
                .iter()
                .filter(|r| live.contains(r) && !a.isr.contains(r));
            let isr: Vec<NodeId> = a.isr.iter().chain(back).copied().collect();
            if isr.len() == a.isr.len() {
                continue;
            }
            out.push(Command::UpdateIsr {
                stream_id: a.stream_id,
                partition: a.partition,
                leader: a.leader,
                leader_epoch: a.leader_epoch,
                isr,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StreamMode;

    /// Nodes 1..=3 registered, one stream of 3 partitions replicated on all.
    fn three_nodes_one_stream() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&Command::RegisterNode(NodeInfo {
                id,
                ..Default::default()
            }));
        }
        s.apply(&Command::CreateStream {
            name: "s".into(),
            partitions: 3,
            replication_factor: 3,
            retention_bytes: 0,
            retention_ms: 0,
            mode: StreamMode::Lossy,
        });
        s
    }

    #[test]
    fn dead_leader_moves_to_live_isr_with_epoch_bump() {
        let mut s = three_nodes_one_stream();
        assert!(plan_partition_changes(&s).is_empty());
        s.apply(&Command::SetNodeLiveness {
            id: 1,
            liveness: NodeLiveness::Dead,
        });
        let plan = plan_partition_changes(&s);
        assert_eq!(plan.len(), 3, "node 1 is in every ISR");
        for a in &plan {
            assert_ne!(a.leader, 1);
            assert!(!a.isr.contains(&1));
            assert_eq!(a.leader_epoch, 2);
        }
        assert_eq!(
            s.apply(&Command::AssignPartitions {
                assignments: plan.clone()
            }),
            CommandResponse::Done
        );
        assert!(plan_partition_changes(&s).is_empty());
        // A deposed Raft leader replaying the same plan is fenced.
        assert!(matches!(
            s.apply(&Command::AssignPartitions { assignments: plan }),
            CommandResponse::Rejected(CommandRejection::StaleEpoch { .. })
        ));
    }

    #[test]
    fn a_replica_that_heart_beats_again_rejoins_the_isr_without_an_epoch_bump() {
        let mut s = three_nodes_one_stream();
        assert!(plan_isr_expansions(&s).is_empty(), "every ISR is full");
        s.apply(&Command::SetNodeLiveness {
            id: 2,
            liveness: NodeLiveness::Dead,
        });
        let shrink = plan_partition_changes(&s);
        s.apply(&Command::AssignPartitions {
            assignments: shrink,
        });
        assert!(plan_isr_expansions(&s).is_empty(), "node 2 is still dead");
        let before: Vec<PartitionAssignment> = s.assignments.values().flatten().cloned().collect();
        assert!(before.iter().all(|a| !a.isr.contains(&2)));

        s.apply(&Command::SetNodeLiveness {
            id: 2,
            liveness: NodeLiveness::Live,
        });
        let grow = plan_isr_expansions(&s);
        assert_eq!(grow.len(), 3, "node 2 is a replica of every partition");
        for cmd in &grow {
            assert_eq!(s.apply(cmd), CommandResponse::Done);
        }
        assert!(plan_isr_expansions(&s).is_empty());
        assert!(plan_partition_changes(&s).is_empty());
        let after: Vec<PartitionAssignment> = s.assignments.values().flatten().cloned().collect();
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(a.leader, b.leader, "the leader stays");
            assert_eq!(a.leader_epoch, b.leader_epoch, "the epoch stays");
            assert_eq!(&a.isr[..b.isr.len()], &b.isr[..], "the ISR keeps its order");
            assert!(a.isr.contains(&2));
            let mut isr = a.isr.clone();
            isr.sort_unstable();
            let mut replicas = a.replicas.clone();
            replicas.sort_unstable();
            assert_eq!(isr, replicas);
        }
        // A stale copy of an expansion (the leader moved since) is fenced.
        s.apply(&Command::SetNodeLiveness {
            id: 1,
            liveness: NodeLiveness::Dead,
        });
        let moved = plan_partition_changes(&s);
        s.apply(&Command::AssignPartitions { assignments: moved });
        assert!(matches!(
            s.apply(&grow[0]),
            CommandResponse::Rejected(CommandRejection::StaleEpoch { .. })
        ));
    }
}
