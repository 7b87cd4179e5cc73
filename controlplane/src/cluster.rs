//! Cluster logic on top of Raft: writes from any node (forwarded to the
//! leader), linearizable reads, membership (join, remove, leadership
//! transfer), node liveness, partition leader election and ISR changes.
//!
//! Liveness: every node sends a heartbeat to the Raft leader every
//! `heartbeat_interval`, carrying its replicas' latest statuses
//! ([`crate::replicas`]). The leader keeps the last time it heard from each
//! node in memory (a new leader starts every node with a full grace period)
//! and commits `SetNodeLiveness` when a node crosses `node_timeout` either way.
//!
//! Partition leader election ([`plan_elections`]): when a partition's leader
//! is dead, the leader commits, with `AssignPartitions`, a new leader taken
//! from the committed ISR only (the live member with the highest reported log
//! end; ISR order breaks ties), the ISR cut to its live members and the
//! epoch plus one. The state machine accepts an assignment only with exactly
//! the current epoch + 1, so a deposed Raft leader's stale plan, and any command from a
//! deposed partition leader, is rejected. With no ISR member live the
//! partition becomes leaderless (leader 0, ISR kept, as Kafka keeps its last
//! member) and a returning ISR member leads it again; only a stream with
//! unclean leader election turned on elects a replica outside the ISR, and
//! every such election is written to the audit log and the error log.
//!
//! ISR changes ([`plan_isr_changes`]): the ISR follows the partition leader's
//! proposals (its data plane's lag-time rule), committed as `UpdateIsr` with
//! the leader's current epoch when they differ from the committed ISR; an
//! ISR change never moves the epoch. A node the Raft leader declares dead
//! leaves every ISR (as Kafka's controller drops a fenced broker); it comes
//! back only through its partition leader's proposal, once it caught up —
//! liveness alone never puts a replica back in sync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditLog, AuditResult};
use crate::network::{PeerPool, Rpc, PEER_CALL_TIMEOUT_MS};
use crate::replicas::{
    ClusterReplicas, LocalReplicas, PartitionReports, ReplicaRole, HEARTBEAT_REPORTS_MAX,
};
use crate::store::StateView;
use crate::types::{
    ClusterState, Command, CommandRejection, CommandResponse, NodeHeartbeat, NodeId, NodeInfo,
    NodeLiveness, PartitionAssignment, TypeConfig, LEADER_NONE,
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
    /// This node's replicas as its data plane reports them.
    local: Arc<LocalReplicas>,
    /// Every node's replica reports (kept while this node is the Raft leader).
    reports: ClusterReplicas,
    /// Where unclean elections are recorded (set by the admin surface).
    audit: OnceLock<Arc<AuditLog>>,
    /// Unclean leader elections this node committed.
    pub unclean_elections: AtomicU64,
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
            local: Arc::new(LocalReplicas::default()),
            reports: ClusterReplicas::default(),
            audit: OnceLock::new(),
            unclean_elections: AtomicU64::new(0),
        })
    }

    /// This node's replicas' latest statuses (filled by `replicas::StatusReader`).
    pub fn local_replicas(&self) -> &Arc<LocalReplicas> {
        &self.local
    }

    /// Every node's replica reports as this node heard them (empty unless it leads Raft).
    pub fn cluster_replicas(&self) -> &ClusterReplicas {
        &self.reports
    }

    /// How long a replica report counts (the node timeout: a report older than that comes
    /// from a node that is, or is about to be, declared dead).
    pub fn report_max_age(&self) -> Duration {
        Duration::from_millis(self.liveness.node_timeout_ms)
    }

    /// Records unclean elections in `audit` from now on (called once by the admin surface).
    pub fn set_audit(&self, audit: Arc<AuditLog>) {
        let _ = self.audit.set(audit);
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
        self.reports
            .record(hb.node_id, &hb.replicas, Instant::now());
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
                if leading_since.take().is_some() {
                    self.reports.clear();
                }
                if let Some(leader) = self.leader_node().filter(|l| l.id != self.me.id) {
                    let pool = self.pool.clone();
                    let hb = NodeHeartbeat {
                        node_id: self.me.id,
                        replicas: self.local.snapshot(HEARTBEAT_REPORTS_MAX),
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
            let own = self.local.snapshot(HEARTBEAT_REPORTS_MAX);
            self.reports.record(self.me.id, &own, Instant::now());
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
        let reports = self.reports.fresh(self.report_max_age(), Instant::now());
        let elections = self.view.read(|d| plan_elections(&d.state, &reports));
        if !elections.is_empty() {
            let assignments = elections.iter().map(|e| e.assignment.clone()).collect();
            let r = self
                .write_local(Command::AssignPartitions { assignments })
                .await?;
            if r == CommandResponse::Done {
                for e in elections.iter().filter(|e| e.unclean) {
                    self.record_unclean(e);
                }
            }
        }
        // Planned on the state after the elections above (applied before
        // write_local returned).
        let changes = self.view.read(|d| plan_isr_changes(&d.state, &reports));
        for cmd in changes {
            self.write_local(cmd).await?;
        }
        Ok(())
    }

    /// Writes a committed unclean election to the audit log and the error log.
    fn record_unclean(&self, e: &Election) {
        self.unclean_elections.fetch_add(1, Ordering::Relaxed);
        let a = &e.assignment;
        let what = format!(
            "stream id {} partition {}: node {} leads at epoch {} from OUTSIDE the ISR; \
             records acknowledged by the lost ISR may be gone",
            a.stream_id, a.partition, a.leader, a.leader_epoch
        );
        tracing::error!("UNCLEAN LEADER ELECTION: {what}");
        if let Some(audit) = self.audit.get() {
            let resource = format!("stream-id:{} partition:{}", a.stream_id, a.partition);
            let result = AuditResult::Error(format!("unclean leader election: {what}"));
            if let Err(err) = audit.record(
                &format!("controlplane:node-{}", self.me.id),
                "UncleanLeaderElection",
                &resource,
                &result,
            ) {
                tracing::error!("{err}");
            }
        }
    }
}

/// One planned leader change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    /// The new assignment (epoch + 1; leader [`LEADER_NONE`] when nobody may lead).
    pub assignment: PartitionAssignment,
    /// The new leader is outside the committed ISR (the stream allows it).
    pub unclean: bool,
}

/// The reported log end of `node`'s replica of `a` (None: no fresh report).
fn reported_log_end(
    reports: &PartitionReports,
    a: &PartitionAssignment,
    node: NodeId,
) -> Option<u64> {
    reports
        .get(&(a.stream_id, a.partition))?
        .iter()
        .find(|r| r.node == node)
        .map(|r| r.log_end)
}

/// The most caught-up of `candidates` by reported log end; the earlier one wins ties.
fn most_caught_up(
    reports: &PartitionReports,
    a: &PartitionAssignment,
    candidates: &[NodeId],
) -> Option<NodeId> {
    let mut best: Option<(Option<u64>, NodeId)> = None;
    for &n in candidates {
        let end = reported_log_end(reports, a, n);
        if best.is_none_or(|(b, _)| end > b) {
            best = Some((end, n));
        }
    }
    best.map(|(_, n)| n)
}

/// Leader elections for partitions whose leader is dead (see the module docs): from the live
/// ISR members only, the most caught-up first; with none, leaderless — or, where the stream
/// turned unclean election on, the most caught-up live replica outside the ISR.
pub fn plan_elections(state: &ClusterState, reports: &PartitionReports) -> Vec<Election> {
    let live: BTreeSet<NodeId> = state.live_nodes().into_iter().collect();
    let unclean_ok: BTreeMap<u32, bool> = state
        .streams
        .values()
        .map(|s| (s.id, s.policy.unclean_leader_election))
        .collect();
    let mut out = Vec::new();
    for a in state.assignments.values().flatten() {
        if a.leader != LEADER_NONE && live.contains(&a.leader) {
            continue;
        }
        let in_sync: Vec<NodeId> = a.isr.iter().copied().filter(|n| live.contains(n)).collect();
        let next = |leader, isr| PartitionAssignment {
            leader,
            isr,
            leader_epoch: a.leader_epoch + 1,
            ..a.clone()
        };
        if let Some(leader) = most_caught_up(reports, a, &in_sync) {
            out.push(Election {
                assignment: next(leader, in_sync),
                unclean: false,
            });
            continue;
        }
        let outside: Vec<NodeId> = a
            .replicas
            .iter()
            .copied()
            .filter(|n| live.contains(n))
            .collect();
        let unclean = unclean_ok.get(&a.stream_id).copied().unwrap_or(false);
        match most_caught_up(reports, a, &outside).filter(|_| unclean) {
            Some(leader) => out.push(Election {
                assignment: next(leader, vec![leader]),
                unclean: true,
            }),
            // Already leaderless: nothing changes until an ISR member is back.
            None if a.leader == LEADER_NONE => {}
            None => out.push(Election {
                assignment: next(LEADER_NONE, a.isr.clone()),
                unclean: false,
            }),
        }
    }
    out
}

/// `UpdateIsr` commands (current leader and epoch) for partitions with a live leader whose
/// committed ISR differs from what it should be: the leader's fresh proposal, if it made one
/// for the current epoch (and it names the leader and replicas only), else the committed ISR;
/// in both cases without the nodes the Raft leader declared dead.
pub fn plan_isr_changes(state: &ClusterState, reports: &PartitionReports) -> Vec<Command> {
    let live: BTreeSet<NodeId> = state.live_nodes().into_iter().collect();
    let mut out = Vec::new();
    for a in state.assignments.values().flatten() {
        if a.leader == LEADER_NONE || !live.contains(&a.leader) {
            continue;
        }
        let proposal = reports
            .get(&(a.stream_id, a.partition))
            .and_then(|rs| rs.iter().find(|r| r.node == a.leader))
            .filter(|r| {
                r.role == ReplicaRole::Leader
                    && r.leader_epoch == a.leader_epoch
                    && r.proposed_isr.contains(&a.leader)
                    && r.proposed_isr.iter().all(|n| a.replicas.contains(n))
            })
            .map(|r| r.proposed_isr.clone());
        let mut isr: Vec<NodeId> = Vec::new();
        for n in proposal.as_ref().unwrap_or(&a.isr) {
            if live.contains(n) && !isr.contains(n) {
                isr.push(*n);
            }
        }
        let same = isr.len() == a.isr.len() && isr.iter().all(|n| a.isr.contains(n));
        if same || !isr.contains(&a.leader) {
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicas::{ReplicaReport, ReplicaServing};
    use crate::types::{ReplicationPolicy, StreamMode};

    /// Nodes 1..=3 registered, one stream of 3 partitions replicated on all.
    fn three_nodes_one_stream(unclean: bool) -> ClusterState {
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
            policy: ReplicationPolicy {
                unclean_leader_election: unclean,
                ..ReplicationPolicy::default()
            },
        });
        s
    }

    fn dead(s: &mut ClusterState, id: NodeId) {
        s.apply(&Command::SetNodeLiveness {
            id,
            liveness: NodeLiveness::Dead,
        });
    }

    fn live(s: &mut ClusterState, id: NodeId) {
        s.apply(&Command::SetNodeLiveness {
            id,
            liveness: NodeLiveness::Live,
        });
    }

    fn report(
        a: &PartitionAssignment,
        node: NodeId,
        log_end: u64,
        isr: &[NodeId],
    ) -> ReplicaReport {
        ReplicaReport {
            stream_id: a.stream_id,
            partition: a.partition,
            node,
            role: if node == a.leader {
                ReplicaRole::Leader
            } else {
                ReplicaRole::Follower
            },
            state: ReplicaServing::Serving,
            leader_epoch: a.leader_epoch,
            log_end,
            durable: log_end,
            hw_replicated: 0,
            hw_persisted: 0,
            proposed_isr: isr.to_vec(),
        }
    }

    fn reports(rs: Vec<ReplicaReport>) -> PartitionReports {
        let mut out = PartitionReports::new();
        for r in rs {
            out.entry((r.stream_id, r.partition)).or_default().push(r);
        }
        out
    }

    fn elect(s: &mut ClusterState, r: &PartitionReports) -> Vec<Election> {
        let plan = plan_elections(s, r);
        if !plan.is_empty() {
            let assignments = plan.iter().map(|e| e.assignment.clone()).collect();
            let resp = s.apply(&Command::AssignPartitions { assignments });
            assert_eq!(resp, CommandResponse::Done);
        }
        plan
    }

    #[test]
    fn a_dead_leader_is_replaced_by_the_most_caught_up_live_isr_member() {
        let mut s = three_nodes_one_stream(false);
        let none = PartitionReports::new();
        assert!(plan_elections(&s, &none).is_empty());
        let p0 = s.assignment(0, 0).unwrap().clone();
        assert_eq!((p0.leader, p0.replicas.clone()), (1, vec![1, 2, 3]));
        // Node 3 reports more than node 2: it wins although it comes later in the ISR.
        let r = reports(vec![report(&p0, 2, 40, &[]), report(&p0, 3, 50, &[])]);
        dead(&mut s, 1);
        let plan = elect(&mut s, &r);
        let led_by_1 = plan.iter().filter(|e| e.assignment.partition == 0).count();
        assert_eq!(led_by_1, 1, "only partition 0 was led by node 1");
        let a = s.assignment(0, 0).unwrap();
        assert_eq!(
            (a.leader, a.leader_epoch, a.isr.clone()),
            (3, 2, vec![2, 3])
        );
        assert!(!plan.iter().any(|e| e.unclean));
        assert!(plan_elections(&s, &r).is_empty(), "every leader is live");
        // A deposed Raft leader replaying the same plan is fenced.
        let tie = plan_elections(&s, &PartitionReports::new());
        assert!(tie.is_empty());
        let replay = plan.iter().map(|e| e.assignment.clone()).collect();
        assert!(matches!(
            s.apply(&Command::AssignPartitions {
                assignments: replay
            }),
            CommandResponse::Rejected(CommandRejection::StaleEpoch { .. })
        ));
    }

    #[test]
    fn with_no_live_isr_member_a_partition_is_leaderless_until_one_returns() {
        let mut s = three_nodes_one_stream(false);
        let none = PartitionReports::new();
        // ISR of partition 0 shrinks to {1} (the leader's proposal), then 1 dies.
        let p0 = s.assignment(0, 0).unwrap().clone();
        let r = reports(vec![report(&p0, 1, 9, &[1])]);
        for cmd in plan_isr_changes(&s, &r) {
            assert_eq!(s.apply(&cmd), CommandResponse::Done);
        }
        assert_eq!(s.assignment(0, 0).unwrap().isr, vec![1]);
        dead(&mut s, 1);
        let plan = elect(&mut s, &none);
        let a = s.assignment(0, 0).unwrap().clone();
        assert_eq!(
            (a.leader, a.isr.clone(), a.leader_epoch),
            (LEADER_NONE, vec![1], 2)
        );
        assert!(plan.iter().all(|e| !e.unclean));
        assert!(
            plan_elections(&s, &none)
                .iter()
                .all(|e| e.assignment.partition != 0),
            "leaderless stays leaderless without churning the epoch"
        );
        // Nodes 2 and 3 are live replicas, but outside the ISR: no unclean election.
        assert!(plan_isr_changes(&s, &none)
            .iter()
            .all(|c| !matches!(c, Command::UpdateIsr { partition: 0, .. })));
        live(&mut s, 1);
        elect(&mut s, &none);
        let a = s.assignment(0, 0).unwrap();
        assert_eq!(
            (a.leader, a.leader_epoch),
            (1, 3),
            "the ISR member leads again"
        );
    }

    #[test]
    fn unclean_election_is_opt_in_and_marked() {
        for unclean in [false, true] {
            let mut s = three_nodes_one_stream(unclean);
            let p0 = s.assignment(0, 0).unwrap().clone();
            let r = reports(vec![report(&p0, 1, 9, &[1])]);
            for cmd in plan_isr_changes(&s, &r) {
                s.apply(&cmd);
            }
            dead(&mut s, 1);
            let r = reports(vec![report(&p0, 2, 3, &[]), report(&p0, 3, 8, &[])]);
            let plan = elect(&mut s, &r);
            let e = plan.iter().find(|e| e.assignment.partition == 0).unwrap();
            assert_eq!(e.unclean, unclean);
            let a = s.assignment(0, 0).unwrap();
            if unclean {
                assert_eq!((a.leader, a.isr.clone()), (3, vec![3]), "most caught up");
            } else {
                assert_eq!(a.leader, LEADER_NONE);
            }
        }
    }

    #[test]
    fn the_isr_follows_the_leaders_proposals_under_the_epoch_rules() {
        let mut s = three_nodes_one_stream(false);
        let p0 = s.assignment(0, 0).unwrap().clone();
        let none = PartitionReports::new();
        assert!(
            plan_isr_changes(&s, &none).is_empty(),
            "no proposal, all live"
        );
        // The leader drops node 3 (lagging).
        let shrink = reports(vec![report(&p0, 1, 10, &[1, 2])]);
        let cmds = plan_isr_changes(&s, &shrink);
        assert_eq!(cmds.len(), 1);
        assert_eq!(s.apply(&cmds[0]), CommandResponse::Done);
        assert_eq!(s.assignment(0, 0).unwrap().isr, vec![1, 2]);
        assert_eq!(s.assignment(0, 0).unwrap().leader_epoch, 1, "no epoch bump");
        assert!(plan_isr_changes(&s, &shrink).is_empty(), "applied once");
        // Proposals that break the rules are ignored: from a follower, an old epoch, with a
        // node outside the replicas, without the leader.
        let mut follower = report(&p0, 2, 10, &[]);
        follower.proposed_isr = vec![1, 2, 3];
        let mut old = report(&p0, 1, 10, &[1, 2, 3]);
        old.leader_epoch = 0;
        for bad in [
            follower,
            old,
            report(&p0, 1, 10, &[1, 2, 3, 9]),
            report(&p0, 1, 10, &[2, 3]),
        ] {
            assert!(plan_isr_changes(&s, &reports(vec![bad])).is_empty());
        }
        // A dead follower leaves; live again, it stays out until the leader proposes it.
        dead(&mut s, 2);
        let cmds = plan_isr_changes(&s, &shrink);
        assert!(cmds.iter().all(|c| s.apply(c) == CommandResponse::Done));
        assert_eq!(s.assignment(0, 0).unwrap().isr, vec![1]);
        live(&mut s, 2);
        let quiet = reports(vec![report(&p0, 1, 10, &[1])]);
        assert!(plan_isr_changes(&s, &quiet)
            .iter()
            .all(|c| !matches!(c, Command::UpdateIsr { partition: 0, .. })));
        let grow = reports(vec![report(&p0, 1, 10, &[1, 2, 3])]);
        for c in plan_isr_changes(&s, &grow) {
            assert_eq!(s.apply(&c), CommandResponse::Done);
        }
        assert_eq!(s.assignment(0, 0).unwrap().isr, vec![1, 2, 3]);
        assert_eq!(s.assignment(0, 0).unwrap().leader_epoch, 1);
        // A leader change fences the old leader's proposal.
        dead(&mut s, 1);
        elect(&mut s, &none);
        let stale = reports(vec![report(&p0, 1, 10, &[1])]);
        assert!(plan_isr_changes(&s, &stale)
            .iter()
            .all(|c| !matches!(c, Command::UpdateIsr { partition: 0, .. })));
    }

    proptest::proptest! {
        /// Whatever the liveness, ISRs and reports, an election picks a live ISR member (the
        /// most caught-up), or, only where the stream opted in and no ISR member is live, a
        /// live replica marked unclean, or no leader; every election moves the epoch by one,
        /// the state machine accepts the plan, and a second plan changes nothing.
        #[test]
        fn elections_follow_the_isr_rules(
            down in proptest::collection::vec(proptest::bool::ANY, 4),
            isr_bits in proptest::collection::vec(0u8..16, 3),
            ends in proptest::collection::vec(0u64..4, 12),
            unclean in proptest::bool::ANY,
        ) {
            let mut s = ClusterState::default();
            for id in 1..=4 {
                s.apply(&Command::RegisterNode(NodeInfo { id, ..Default::default() }));
            }
            s.apply(&Command::CreateStream {
                name: "p".into(),
                partitions: 3,
                replication_factor: 4,
                retention_bytes: 0,
                retention_ms: 0,
                mode: StreamMode::Reliable,
                policy: ReplicationPolicy {
                    unclean_leader_election: unclean,
                    ..ReplicationPolicy::default()
                },
            });
            let mut rs = Vec::new();
            for (p, bits) in isr_bits.iter().enumerate() {
                let a = &mut s.assignments.get_mut(&0).unwrap()[p];
                let leader = a.leader;
                a.isr = a
                    .replicas
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(i, n)| *n == leader || bits & (1 << i) != 0)
                    .map(|(_, n)| n)
                    .collect();
                for n in 1..=4u64 {
                    rs.push(report(a, n, ends[p * 4 + (n as usize - 1)], &[]));
                }
            }
            for (i, d) in down.iter().enumerate() {
                if *d {
                    dead(&mut s, i as u64 + 1);
                }
            }
            let r = reports(rs);
            let live: BTreeSet<NodeId> = s.live_nodes().into_iter().collect();
            let plan = plan_elections(&s, &r);
            for e in &plan {
                let a = &e.assignment;
                let old = s.assignment(a.stream_id, a.partition).unwrap();
                proptest::prop_assert!(!live.contains(&old.leader));
                proptest::prop_assert_eq!(a.leader_epoch, old.leader_epoch + 1);
                let live_isr: Vec<NodeId> =
                    old.isr.iter().copied().filter(|n| live.contains(n)).collect();
                if a.leader == LEADER_NONE {
                    proptest::prop_assert!(live_isr.is_empty() && !e.unclean);
                    proptest::prop_assert!(!unclean || old.replicas.iter().all(|n| !live.contains(n)));
                    continue;
                }
                proptest::prop_assert!(live.contains(&a.leader));
                proptest::prop_assert!(a.isr.contains(&a.leader));
                proptest::prop_assert!(a.isr.iter().all(|n| a.replicas.contains(n)));
                if e.unclean {
                    proptest::prop_assert!(unclean && live_isr.is_empty());
                } else {
                    proptest::prop_assert!(old.isr.contains(&a.leader));
                    let end = |n: NodeId| reported_log_end(&r, a, n);
                    proptest::prop_assert!(live_isr.iter().all(|n| end(*n) <= end(a.leader)));
                }
            }
            let assignments: Vec<PartitionAssignment> =
                plan.iter().map(|e| e.assignment.clone()).collect();
            if !assignments.is_empty() {
                proptest::prop_assert_eq!(
                    s.apply(&Command::AssignPartitions { assignments }),
                    CommandResponse::Done
                );
            }
            proptest::prop_assert!(plan_elections(&s, &r).is_empty());
        }
    }
}
