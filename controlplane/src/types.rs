//! The control plane's data model: what the Raft log replicates ([`Command`]),
//! what applying it answers ([`CommandResponse`]) and the replicated state
//! machine ([`ClusterState`]).
//!
//! Applying a command is deterministic and never fails: a command that is not
//! valid against the current state is *rejected* and the rejection is the
//! response, so every replica reaches the same state from the same log.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A control-plane node's Raft id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft type configuration of the control plane.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Longest stream / principal name, like Kafka topic names.
pub const NAME_LENGTH_MAX: usize = 249;
/// Most streams the cluster holds.
pub const STREAMS_MAX: usize = 65_536;
/// Most partitions in one stream.
pub const PARTITIONS_MAX: u16 = 4_096;
/// Highest replication factor.
pub const REPLICATION_FACTOR_MAX: u8 = 7;
/// Most nodes in the cluster.
pub const NODES_MAX: usize = 256;
/// Most ACL entries in the cluster.
pub const ACLS_MAX: usize = 65_536;
/// Most principals.
pub const PRINCIPALS_MAX: usize = 65_536;
/// Most source CIDRs in one ACL.
pub const ACL_SOURCE_CIDRS_MAX: usize = 64;
/// Longest node address string (`host:port`).
pub const ADDR_LENGTH_MAX: usize = 255;

const _: () = assert!(STREAMS_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(REPLICATION_FACTOR_MAX as usize <= NODES_MAX);

/// Checks a stream or principal name: `[a-zA-Z0-9._-]{1,249}`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), CommandRejection> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > NAME_LENGTH_MAX || !ok_chars || name == "." || name == ".." {
        return Err(CommandRejection::InvalidName {
            name: name.chars().take(64).collect(),
        });
    }
    Ok(())
}

/// A control-plane node: its Raft id and where to reach it. This is openraft's
/// `Node` type, so it is stored in the membership config too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// `host:port` of the control plane's Raft/admin gRPC listener.
    pub control_addr: String,
    /// `host:port` of the node's data plane.
    pub data_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} (control {}, data {})",
            self.id, self.control_addr, self.data_addr
        )
    }
}

/// Delivery mode of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamMode {
    /// Retransmit on loss; subscribers see every frame.
    #[default]
    Reliable,
    /// No retransmission; lowest latency.
    Lossy,
}

/// A stream (topic).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub name: String,
    /// Assigned by the state machine at creation, never reused.
    pub id: u32,
    pub partitions: u16,
    pub replication_factor: u8,
    pub retention_bytes: u64,
    pub retention_ms: u64,
    pub mode: StreamMode,
    /// Ack default, minimum ISR and unclean election (absent in logs written before #11).
    #[serde(default)]
    pub policy: ReplicationPolicy,
}

/// The acknowledgement a stream's publishers get unless they ask for another (#11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckMode {
    /// Fire and forget (Kafka's acks=0).
    None,
    /// Appended on the leader (acks=1).
    Leader,
    /// On the leader's disk (acks=1 with a flushed leader).
    LeaderDurable,
    /// Every ISR member holds it in memory (acks=all, replicated).
    #[default]
    AllReplicated,
    /// Every ISR member has it on disk (acks=all, persisted).
    AllPersisted,
}

/// An ack mode string is not one of [`AckMode::NAMES`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown ack mode {text:?}: use one of none, leader, leader_durable, all_replicated, all_persisted (all = all_replicated)")]
pub struct AckModeParseError {
    pub text: String,
}

impl AckMode {
    /// Every mode's name, as `msctl` and the API spell them.
    pub const NAMES: [&'static str; 5] = [
        "none",
        "leader",
        "leader_durable",
        "all_replicated",
        "all_persisted",
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The data plane's code for it (`abi::assign`).
    pub fn to_abi(self) -> abi::assign::AckDefault {
        use abi::assign::AckDefault as A;
        match self {
            AckMode::None => A::None,
            AckMode::Leader => A::Leader,
            AckMode::LeaderDurable => A::LeaderDurable,
            AckMode::AllReplicated => A::AllReplicated,
            AckMode::AllPersisted => A::AllPersisted,
        }
    }

    /// Whether a publisher's ack waits for the followers.
    pub fn waits_for_isr(self) -> bool {
        matches!(self, AckMode::AllReplicated | AckMode::AllPersisted)
    }
}

impl FromStr for AckMode {
    type Err = AckModeParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = [
            AckMode::None,
            AckMode::Leader,
            AckMode::LeaderDurable,
            AckMode::AllReplicated,
            AckMode::AllPersisted,
        ];
        if s == "all" {
            return Ok(AckMode::AllReplicated);
        }
        all.into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| AckModeParseError {
                text: s.chars().take(32).collect(),
            })
    }
}

/// A stream's replication policy (#11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationPolicy {
    /// Fewest ISR members (leader included) with which an `all` write is accepted and the high
    /// watermark advances (Kafka's `min.insync.replicas`, strict as in KIP-966); 1..=RF.
    pub min_insync_replicas: u8,
    /// The ack mode of publishers that do not choose one.
    pub ack_default: AckMode,
    /// Elect a replica outside the ISR when no ISR member is live (may lose acknowledged
    /// records; every such election is audited). Off by default.
    pub unclean_leader_election: bool,
}

impl Default for ReplicationPolicy {
    fn default() -> Self {
        ReplicationPolicy {
            min_insync_replicas: 1,
            ack_default: AckMode::AllReplicated,
            unclean_leader_election: false,
        }
    }
}

/// The leader of a partition with no leader (no ISR member live, unclean election off).
pub const LEADER_NONE: NodeId = 0;

/// Who leads and who replicates one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    pub stream_id: u32,
    pub partition: u16,
    /// [`LEADER_NONE`] while leaderless.
    pub leader: NodeId,
    pub replicas: Vec<NodeId>,
    /// In-sync replicas (contains the leader; when leaderless, the last members, as Kafka keeps
    /// them, so that one of them, back, leads again).
    pub isr: Vec<NodeId>,
    /// Bumped on every leader or replica change; a leader holding an older
    /// epoch has been deposed and its commands are rejected.
    pub leader_epoch: u64,
}

/// An authenticated identity (client certificate CN or first SAN).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
}

/// An operation an ACL grants or denies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Describe,
    Alter,
    ClusterAdmin,
}

/// Whether an ACL allows or denies. Deny wins over Allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Permission {
    Allow,
    Deny,
}

/// An IPv4/IPv6 network in CIDR notation (`198.18.0.0/15`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// A CIDR string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CIDR {text:?}: write an address and a prefix length, e.g. 198.18.0.1/32 or 2001:db8::/64")]
pub struct CidrParseError {
    pub text: String,
}

impl FromStr for Cidr {
    type Err = CidrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrParseError {
            text: s.chars().take(64).collect(),
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            Some(l) => l.parse::<u8>().map_err(|_| err())?,
            None => bits,
        };
        if prefix_len > bits {
            return Err(err());
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Cidr {
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An access-control entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub principal: String,
    /// A stream name, a glob with `*` (`orders.*`), or `*` for everything.
    pub resource_pattern: String,
    pub operations: Vec<Operation>,
    pub permission: Permission,
    /// Source networks the data-path policy (XDP) applies to.
    pub source_cidrs: Vec<Cidr>,
}

/// Checks whether `name` matches a resource pattern made of literal text and `*`
/// wildcards (each `*` matches any run of characters, including none).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn validate_pattern(pattern: &str) -> Result<(), CommandRejection> {
    let ok = !pattern.is_empty()
        && pattern.len() <= NAME_LENGTH_MAX
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'));
    if ok {
        Ok(())
    } else {
        Err(CommandRejection::InvalidPattern {
            pattern: pattern.chars().take(64).collect(),
        })
    }
}

/// A per-principal rate limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub principal: String,
    pub bytes_per_s: u64,
    pub burst_bytes: u64,
}

/// Per-node liveness as decided by the Raft leader (see `cluster`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeLiveness {
    Live,
    Dead,
}

/// A liveness report a node sends to the Raft leader (not replicated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    pub node_id: NodeId,
    /// The node's replicas' latest statuses (#11; absent from older nodes).
    #[serde(default)]
    pub replicas: Vec<crate::replicas::ReplicaReport>,
}

/// The Raft application data: one metadata change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateStream {
        name: String,
        partitions: u16,
        replication_factor: u8,
        retention_bytes: u64,
        retention_ms: u64,
        mode: StreamMode,
        #[serde(default)]
        policy: ReplicationPolicy,
    },
    /// Registers a stream a node's configuration defines, under its configured id
    /// (idempotent: the same id and partition count again is `Done`).
    RegisterConfigStream {
        name: String,
        id: u32,
        partitions: u16,
    },
    /// Turns unclean leader election of a stream on or off.
    SetUncleanElection {
        name: String,
        enabled: bool,
    },
    DeleteStream {
        name: String,
    },
    PutPrincipal(Principal),
    DeletePrincipal {
        name: String,
    },
    /// Adds the ACL, or replaces the one with the same principal, pattern and permission.
    PutAcl(Acl),
    /// Removes every ACL of `principal` on exactly `resource_pattern`.
    DeleteAcl {
        principal: String,
        resource_pattern: String,
    },
    PutQuota(Quota),
    DeleteQuota {
        principal: String,
    },
    /// Adds or updates a node's addresses (membership itself lives in Raft).
    RegisterNode(NodeInfo),
    RemoveNode {
        id: NodeId,
    },
    /// The Raft leader's verdict on a node's heartbeats.
    SetNodeLiveness {
        id: NodeId,
        liveness: NodeLiveness,
    },
    /// Compare-and-set of partition assignments by the Raft leader: each one
    /// must carry exactly the current epoch + 1, else all are rejected.
    AssignPartitions {
        assignments: Vec<PartitionAssignment>,
    },
    /// A partition leader reports its in-sync set; fenced by `leader_epoch`.
    UpdateIsr {
        stream_id: u32,
        partition: u16,
        leader: NodeId,
        leader_epoch: u64,
        isr: Vec<NodeId>,
    },
    /// Does nothing; used to measure a commit and to confirm leadership.
    Noop,
}

/// Why the state machine rejected a command (the same on every replica).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandRejection {
    #[error("invalid name {name:?}: use 1 to 249 characters from [a-zA-Z0-9._-]")]
    InvalidName { name: String },
    #[error("invalid resource pattern {pattern:?}: use a name, a glob with '*', or '*'")]
    InvalidPattern { pattern: String },
    #[error("stream {name:?} already exists: pick another name or delete it first")]
    StreamExists { name: String },
    #[error("stream {name:?} does not exist: list streams to see the names")]
    StreamNotFound { name: String },
    #[error("stream id {stream_id} partition {partition} does not exist")]
    PartitionNotFound { stream_id: u32, partition: u16 },
    #[error("principal {name:?} is unknown: create it first")]
    UnknownPrincipal { name: String },
    #[error("node {id} is not registered: join it to the cluster first")]
    UnknownNode { id: NodeId },
    #[error("stale leader epoch for stream id {stream_id} partition {partition}: sent {sent}, current {current}; refresh the assignment")]
    StaleEpoch {
        stream_id: u32,
        partition: u16,
        sent: u64,
        current: u64,
    },
    #[error("node {sender} is not the leader of stream id {stream_id} partition {partition} (leader is {leader})")]
    NotPartitionLeader {
        stream_id: u32,
        partition: u16,
        sender: NodeId,
        leader: NodeId,
    },
    #[error("replication factor {wanted} needs {wanted} live nodes but only {live} are live: add nodes or lower it")]
    NotEnoughNodes { wanted: u8, live: usize },
    #[error("invalid value for {field}: {reason}")]
    InvalidValue { field: String, reason: String },
    #[error("limit reached: at most {max} {what}; delete some first")]
    LimitReached { what: String, max: usize },
}

/// The result of applying one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Applied (also the response to membership entries and blanks).
    #[default]
    Done,
    StreamCreated {
        stream_id: u32,
    },
    Rejected(CommandRejection),
}

impl CommandResponse {
    /// `Ok(self)` unless rejected.
    pub fn into_result(self) -> Result<CommandResponse, CommandRejection> {
        match self {
            CommandResponse::Rejected(r) => Err(r),
            other => Ok(other),
        }
    }
}

/// The replicated cluster metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub liveness: BTreeMap<NodeId, NodeLiveness>,
    pub streams: BTreeMap<String, Stream>,
    /// Keyed by stream id; index = partition.
    pub assignments: BTreeMap<u32, Vec<PartitionAssignment>>,
    pub principals: BTreeMap<String, Principal>,
    pub acls: Vec<Acl>,
    pub quotas: BTreeMap<String, Quota>,
    /// Next stream id to hand out (ids are never reused).
    pub next_stream_id: u32,
}

impl ClusterState {
    /// Registered nodes the leader considers live, in id order.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| self.liveness.get(id) != Some(&NodeLiveness::Dead))
            .collect()
    }

    /// Stream by id.
    pub fn stream_by_id(&self, id: u32) -> Option<&Stream> {
        self.streams.values().find(|s| s.id == id)
    }

    /// Applies one command (deterministic; a rejection leaves the state unchanged).
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        match self.try_apply(cmd) {
            Ok(r) => r,
            Err(e) => CommandResponse::Rejected(e),
        }
    }

    /// One step per command kind; each checks everything before it changes anything.
    fn try_apply(&mut self, cmd: &Command) -> Result<CommandResponse, CommandRejection> {
        match cmd {
            Command::CreateStream {
                name,
                partitions,
                replication_factor,
                retention_bytes,
                retention_ms,
                mode,
                policy,
            } => self.create_stream(Stream {
                name: name.clone(),
                id: self.next_stream_id,
                partitions: *partitions,
                replication_factor: *replication_factor,
                retention_bytes: *retention_bytes,
                retention_ms: *retention_ms,
                mode: *mode,
                policy: *policy,
            }),
            Command::RegisterConfigStream {
                name,
                id,
                partitions,
            } => self.register_config_stream(name, *id, *partitions),
            Command::SetUncleanElection { name, enabled } => {
                let s = self
                    .streams
                    .get_mut(name)
                    .ok_or_else(|| CommandRejection::StreamNotFound { name: name.clone() })?;
                s.policy.unclean_leader_election = *enabled;
                Ok(CommandResponse::Done)
            }
            Command::DeleteStream { name } => self.delete_stream(name),
            Command::PutPrincipal(p) => self.put_principal(p),
            Command::DeletePrincipal { name } => self.delete_principal(name),
            Command::PutAcl(acl) => self.put_acl(acl),
            Command::DeleteAcl {
                principal,
                resource_pattern,
            } => self.delete_acl(principal, resource_pattern),
            Command::PutQuota(q) => self.put_quota(q),
            Command::DeleteQuota { principal } => self.delete_quota(principal),
            Command::RegisterNode(n) => self.register_node(n),
            Command::RemoveNode { id } => self.remove_node(*id),
            Command::SetNodeLiveness { id, liveness } => self.set_node_liveness(*id, *liveness),
            Command::AssignPartitions { assignments } => self.assign_partitions(assignments),
            Command::UpdateIsr {
                stream_id,
                partition,
                leader,
                leader_epoch,
                isr,
            } => self.update_isr(*stream_id, *partition, (*leader, *leader_epoch), isr),
            Command::Noop => Ok(CommandResponse::Done),
        }
    }

    /// Creates `stream` under the next stream id (whatever `stream.id` says) and places its
    /// partitions round-robin over the live nodes.
    fn create_stream(&mut self, mut stream: Stream) -> Result<CommandResponse, CommandRejection> {
        let live = self.check_new_stream(&stream)?;
        // Ids a configuration registered are skipped (streams <= STREAMS_MAX, so this ends).
        let mut id = self.next_stream_id;
        while self.assignments.contains_key(&id) {
            id = id
                .checked_add(1)
                .ok_or_else(|| limit("stream ids", u32::MAX as usize))?;
        }
        stream.id = id;
        self.next_stream_id = id
            .checked_add(1)
            .ok_or_else(|| limit("stream ids", u32::MAX as usize))?;
        self.place_stream(stream, &live)
    }

    /// A configuration's stream under its own id, RF 1, the default policy. Again with the
    /// same name, id and partitions: `Done`; a clash with another stream is rejected.
    fn register_config_stream(
        &mut self,
        name: &str,
        id: u32,
        partitions: u16,
    ) -> Result<CommandResponse, CommandRejection> {
        if let Some(s) = self.streams.get(name) {
            if s.id == id && s.partitions == partitions {
                return Ok(CommandResponse::Done);
            }
            return Err(CommandRejection::StreamExists { name: name.into() });
        }
        if let Some(s) = self.stream_by_id(id) {
            return Err(invalid(
                "stream id",
                format!(
                    "id {id} belongs to stream {:?}: give the configured stream another id",
                    s.name
                ),
            ));
        }
        let stream = Stream {
            name: name.into(),
            id,
            partitions,
            replication_factor: 1,
            retention_bytes: 0,
            retention_ms: 0,
            mode: StreamMode::Reliable,
            policy: ReplicationPolicy::default(),
        };
        let live = self.check_new_stream(&stream)?;
        self.place_stream(stream, &live)?;
        Ok(CommandResponse::StreamCreated { stream_id: id })
    }

    fn place_stream(
        &mut self,
        stream: Stream,
        live: &[NodeId],
    ) -> Result<CommandResponse, CommandRejection> {
        let id = stream.id;
        let assignments = place_partitions(id, stream.partitions, stream.replication_factor, live);
        self.assignments.insert(id, assignments);
        self.streams.insert(stream.name.clone(), stream);
        Ok(CommandResponse::StreamCreated { stream_id: id })
    }

    /// Validates a new stream; returns the live nodes its replicas go to.
    fn check_new_stream(&self, stream: &Stream) -> Result<Vec<NodeId>, CommandRejection> {
        let name = &stream.name;
        validate_name(name)?;
        if self.streams.contains_key(name) {
            return Err(CommandRejection::StreamExists { name: name.clone() });
        }
        if self.streams.len() >= STREAMS_MAX {
            return Err(limit("streams", STREAMS_MAX));
        }
        if stream.partitions == 0 || stream.partitions > PARTITIONS_MAX {
            return Err(invalid(
                "partitions",
                format!("must be 1..={PARTITIONS_MAX}"),
            ));
        }
        let rf = stream.replication_factor;
        if rf == 0 || rf > REPLICATION_FACTOR_MAX {
            return Err(invalid(
                "replication_factor",
                format!("must be 1..={REPLICATION_FACTOR_MAX}"),
            ));
        }
        let min_isr = stream.policy.min_insync_replicas;
        if min_isr == 0 || min_isr > rf {
            return Err(invalid(
                "min_insync_replicas",
                format!("must be 1..={rf} (the replication factor)"),
            ));
        }
        let live = self.live_nodes();
        if live.len() < usize::from(rf) {
            return Err(CommandRejection::NotEnoughNodes {
                wanted: rf,
                live: live.len(),
            });
        }
        Ok(live)
    }

    fn delete_stream(&mut self, name: &str) -> Result<CommandResponse, CommandRejection> {
        let s = self
            .streams
            .remove(name)
            .ok_or_else(|| CommandRejection::StreamNotFound { name: name.into() })?;
        self.assignments.remove(&s.id);
        Ok(CommandResponse::Done)
    }

    fn put_principal(&mut self, p: &Principal) -> Result<CommandResponse, CommandRejection> {
        validate_name(&p.name)?;
        if !self.principals.contains_key(&p.name) && self.principals.len() >= PRINCIPALS_MAX {
            return Err(limit("principals", PRINCIPALS_MAX));
        }
        self.principals.insert(p.name.clone(), p.clone());
        Ok(CommandResponse::Done)
    }

    /// Removes the principal with its ACLs and quota.
    fn delete_principal(&mut self, name: &str) -> Result<CommandResponse, CommandRejection> {
        self.principals
            .remove(name)
            .ok_or_else(|| CommandRejection::UnknownPrincipal { name: name.into() })?;
        self.acls.retain(|a| a.principal != name);
        self.quotas.remove(name);
        Ok(CommandResponse::Done)
    }

    /// Adds the ACL, or replaces the one with the same principal, pattern and permission.
    fn put_acl(&mut self, acl: &Acl) -> Result<CommandResponse, CommandRejection> {
        self.require_principal(&acl.principal)?;
        validate_pattern(&acl.resource_pattern)?;
        if acl.operations.is_empty() {
            return Err(invalid("operations", "list at least one operation".into()));
        }
        if acl.source_cidrs.len() > ACL_SOURCE_CIDRS_MAX {
            return Err(invalid(
                "source_cidrs",
                format!("at most {ACL_SOURCE_CIDRS_MAX}"),
            ));
        }
        let same = |a: &Acl| {
            a.principal == acl.principal
                && a.resource_pattern == acl.resource_pattern
                && a.permission == acl.permission
        };
        if let Some(existing) = self.acls.iter_mut().find(|a| same(a)) {
            *existing = acl.clone();
        } else {
            if self.acls.len() >= ACLS_MAX {
                return Err(limit("ACLs", ACLS_MAX));
            }
            self.acls.push(acl.clone());
        }
        Ok(CommandResponse::Done)
    }

    fn delete_acl(
        &mut self,
        principal: &str,
        resource_pattern: &str,
    ) -> Result<CommandResponse, CommandRejection> {
        self.require_principal(principal)?;
        self.acls
            .retain(|a| !(a.principal == principal && a.resource_pattern == resource_pattern));
        Ok(CommandResponse::Done)
    }

    fn put_quota(&mut self, q: &Quota) -> Result<CommandResponse, CommandRejection> {
        self.require_principal(&q.principal)?;
        if q.bytes_per_s == 0 || q.burst_bytes == 0 {
            return Err(invalid(
                "quota",
                "bytes_per_s and burst_bytes must be > 0".into(),
            ));
        }
        self.quotas.insert(q.principal.clone(), q.clone());
        Ok(CommandResponse::Done)
    }

    fn delete_quota(&mut self, principal: &str) -> Result<CommandResponse, CommandRejection> {
        self.require_principal(principal)?;
        self.quotas.remove(principal);
        Ok(CommandResponse::Done)
    }

    /// Adds or updates a node's addresses; a (re-)registered node is live.
    fn register_node(&mut self, n: &NodeInfo) -> Result<CommandResponse, CommandRejection> {
        if n.control_addr.len() > ADDR_LENGTH_MAX || n.data_addr.len() > ADDR_LENGTH_MAX {
            return Err(invalid("addr", format!("at most {ADDR_LENGTH_MAX} bytes")));
        }
        if !self.nodes.contains_key(&n.id) && self.nodes.len() >= NODES_MAX {
            return Err(limit("nodes", NODES_MAX));
        }
        self.nodes.insert(n.id, n.clone());
        self.liveness.insert(n.id, NodeLiveness::Live);
        Ok(CommandResponse::Done)
    }

    fn remove_node(&mut self, id: NodeId) -> Result<CommandResponse, CommandRejection> {
        self.nodes
            .remove(&id)
            .ok_or(CommandRejection::UnknownNode { id })?;
        self.liveness.remove(&id);
        Ok(CommandResponse::Done)
    }

    fn set_node_liveness(
        &mut self,
        id: NodeId,
        liveness: NodeLiveness,
    ) -> Result<CommandResponse, CommandRejection> {
        if !self.nodes.contains_key(&id) {
            return Err(CommandRejection::UnknownNode { id });
        }
        self.liveness.insert(id, liveness);
        Ok(CommandResponse::Done)
    }

    /// Compare-and-set: every assignment is checked before any is stored.
    fn assign_partitions(
        &mut self,
        assignments: &[PartitionAssignment],
    ) -> Result<CommandResponse, CommandRejection> {
        for a in assignments {
            self.check_assignment(a)?;
        }
        for a in assignments {
            let slot = self.assignment_mut(a.stream_id, a.partition)?;
            *slot = a.clone();
        }
        Ok(CommandResponse::Done)
    }

    /// `a` carries the current epoch + 1, names registered nodes only, and its leader is a
    /// replica in sync.
    fn check_assignment(&self, a: &PartitionAssignment) -> Result<(), CommandRejection> {
        let cur = self.assignment(a.stream_id, a.partition)?;
        if a.leader_epoch != cur.leader_epoch + 1 {
            return Err(CommandRejection::StaleEpoch {
                stream_id: a.stream_id,
                partition: a.partition,
                sent: a.leader_epoch,
                current: cur.leader_epoch,
            });
        }
        let leader = (a.leader != LEADER_NONE).then_some(&a.leader);
        for n in a.replicas.iter().chain(a.isr.iter()).chain(leader) {
            if !self.nodes.contains_key(n) {
                return Err(CommandRejection::UnknownNode { id: *n });
            }
        }
        if a.leader != LEADER_NONE
            && (!a.replicas.contains(&a.leader) || !a.isr.contains(&a.leader))
        {
            return Err(invalid(
                "assignment",
                "the leader must be a replica and in sync".into(),
            ));
        }
        if a.isr.iter().any(|n| !a.replicas.contains(n)) {
            return Err(invalid(
                "assignment",
                "the ISR must hold replicas only".into(),
            ));
        }
        Ok(())
    }

    /// The partition leader's report of its in-sync set, fenced by its `(leader, epoch)`.
    fn update_isr(
        &mut self,
        stream_id: u32,
        partition: u16,
        (leader, leader_epoch): (NodeId, u64),
        isr: &[NodeId],
    ) -> Result<CommandResponse, CommandRejection> {
        let cur = self.assignment(stream_id, partition)?;
        if leader_epoch != cur.leader_epoch {
            return Err(CommandRejection::StaleEpoch {
                stream_id,
                partition,
                sent: leader_epoch,
                current: cur.leader_epoch,
            });
        }
        if leader != cur.leader {
            return Err(CommandRejection::NotPartitionLeader {
                stream_id,
                partition,
                sender: leader,
                leader: cur.leader,
            });
        }
        if !isr.contains(&leader) || isr.iter().any(|n| !cur.replicas.contains(n)) {
            return Err(invalid(
                "isr",
                "must contain the leader and only replicas".into(),
            ));
        }
        self.assignment_mut(stream_id, partition)?.isr = isr.to_vec();
        Ok(CommandResponse::Done)
    }

    fn require_principal(&self, name: &str) -> Result<(), CommandRejection> {
        if self.principals.contains_key(name) {
            Ok(())
        } else {
            Err(CommandRejection::UnknownPrincipal {
                name: name.chars().take(64).collect(),
            })
        }
    }

    /// The current assignment of one partition.
    pub fn assignment(
        &self,
        stream_id: u32,
        partition: u16,
    ) -> Result<&PartitionAssignment, CommandRejection> {
        self.assignments
            .get(&stream_id)
            .and_then(|v| v.get(usize::from(partition)))
            .ok_or(CommandRejection::PartitionNotFound {
                stream_id,
                partition,
            })
    }

    fn assignment_mut(
        &mut self,
        stream_id: u32,
        partition: u16,
    ) -> Result<&mut PartitionAssignment, CommandRejection> {
        self.assignments
            .get_mut(&stream_id)
            .and_then(|v| v.get_mut(usize::from(partition)))
            .ok_or(CommandRejection::PartitionNotFound {
                stream_id,
                partition,
            })
    }
}

/// Partition `p` of stream `id` gets `replication_factor` consecutive live nodes starting at
/// `(id + p) % live.len()`; the first one leads. `live` holds at least `replication_factor` nodes.
fn place_partitions(
    id: u32,
    partitions: u16,
    replication_factor: u8,
    live: &[NodeId],
) -> Vec<PartitionAssignment> {
    (0..partitions)
        .map(|p| {
            let start = (id as usize + p as usize) % live.len();
            let replicas: Vec<NodeId> = (0..usize::from(replication_factor))
                .map(|k| live[(start + k) % live.len()])
                .collect();
            PartitionAssignment {
                stream_id: id,
                partition: p,
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                leader_epoch: 1,
            }
        })
        .collect()
}

fn limit(what: &str, max: usize) -> CommandRejection {
    CommandRejection::LimitReached {
        what: what.into(),
        max,
    }
}

fn invalid(field: &str, reason: String) -> CommandRejection {
    CommandRejection::InvalidValue {
        field: field.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId) -> Command {
        Command::RegisterNode(NodeInfo {
            id,
            control_addr: format!("n{id}:1"),
            data_addr: format!("n{id}:2"),
        })
    }

    fn create(name: &str, rf: u8) -> Command {
        Command::CreateStream {
            name: name.into(),
            partitions: 3,
            replication_factor: rf,
            retention_bytes: 1 << 30,
            retention_ms: 60_000,
            mode: StreamMode::Reliable,
            policy: Default::default(),
        }
    }

    #[test]
    fn names_are_validated_like_kafka_topics() {
        assert!(validate_name("orders.v1_x-2").is_ok());
        for bad in ["", ".", "..", "a b", "a/b", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_stream_assigns_partitions_and_rejects_duplicates() {
        let mut s = ClusterState::default();
        assert!(matches!(
            s.apply(&create("a", 2)),
            CommandResponse::Rejected(CommandRejection::NotEnoughNodes { .. })
        ));
        for id in 1..=3 {
            assert_eq!(s.apply(&node(id)), CommandResponse::Done);
        }
        assert_eq!(
            s.apply(&create("a", 2)),
            CommandResponse::StreamCreated { stream_id: 0 }
        );
        assert!(matches!(
            s.apply(&create("a", 2)),
            CommandResponse::Rejected(CommandRejection::StreamExists { .. })
        ));
        let parts = &s.assignments[&0];
        assert_eq!(parts.len(), 3);
        for p in parts {
            assert_eq!(p.replicas.len(), 2);
            assert_eq!(p.leader, p.replicas[0]);
            assert_eq!(p.leader_epoch, 1);
        }
    }

    #[test]
    fn configured_streams_keep_their_id_and_created_ones_never_reuse_it() {
        let mut s = ClusterState::default();
        s.apply(&node(1));
        let register = |partitions| Command::RegisterConfigStream {
            name: "stream-7".into(),
            id: 7,
            partitions,
        };
        assert_eq!(
            s.apply(&register(1)),
            CommandResponse::StreamCreated { stream_id: 7 }
        );
        assert_eq!(s.apply(&register(1)), CommandResponse::Done, "idempotent");
        assert!(matches!(
            s.apply(&register(2)),
            CommandResponse::Rejected(CommandRejection::StreamExists { .. })
        ));
        let other_name = Command::RegisterConfigStream {
            name: "seven".into(),
            id: 7,
            partitions: 1,
        };
        assert!(matches!(
            s.apply(&other_name),
            CommandResponse::Rejected(CommandRejection::InvalidValue { .. })
        ));
        // The eighth created stream would have been id 7: it gets 8.
        let ids: Vec<CommandResponse> = (0..9)
            .map(|i| s.apply(&create(&format!("s{i}"), 1)))
            .collect();
        let want: Vec<CommandResponse> = [0, 1, 2, 3, 4, 5, 6, 8, 9]
            .into_iter()
            .map(|stream_id| CommandResponse::StreamCreated { stream_id })
            .collect();
        assert_eq!(ids, want);
        let a = s.assignment(7, 0).unwrap();
        assert_eq!((a.leader, a.replicas.clone()), (1, vec![1]));
        // A configured id that a created stream holds already is refused.
        let taken = Command::RegisterConfigStream {
            name: "stream-3".into(),
            id: 3,
            partitions: 1,
        };
        assert!(matches!(
            s.apply(&taken),
            CommandResponse::Rejected(CommandRejection::InvalidValue { .. })
        ));
    }

    #[test]
    fn min_isr_is_checked_against_the_replication_factor() {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&node(id));
        }
        let with = |min_insync_replicas| Command::CreateStream {
            name: format!("m{min_insync_replicas}"),
            partitions: 1,
            replication_factor: 2,
            retention_bytes: 1,
            retention_ms: 1,
            mode: StreamMode::Reliable,
            policy: ReplicationPolicy {
                min_insync_replicas,
                ..ReplicationPolicy::default()
            },
        };
        for bad in [0, 3] {
            assert!(matches!(
                s.apply(&with(bad)),
                CommandResponse::Rejected(CommandRejection::InvalidValue { .. })
            ));
        }
        assert!(s.apply(&with(2)).into_result().is_ok());
        assert_eq!("all".parse::<AckMode>(), Ok(AckMode::AllReplicated));
        for m in AckMode::NAMES {
            assert_eq!(m.parse::<AckMode>().unwrap().as_str(), m);
        }
        assert!("acks=1".parse::<AckMode>().is_err());
    }

    #[test]
    fn streams_from_logs_before_policies_read_with_the_default_policy() {
        let old = r#"{"name":"o","id":3,"partitions":1,"replication_factor":1,
            "retention_bytes":1,"retention_ms":1,"mode":"Reliable"}"#;
        let s: Stream = serde_json::from_str(old).unwrap();
        assert_eq!(s.policy, ReplicationPolicy::default());
    }

    #[test]
    fn stale_epochs_are_fenced() {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&node(id));
        }
        s.apply(&create("a", 3));
        let mut a = s.assignment(0, 0).unwrap().clone();
        let old_leader = a.leader;
        let new_leader = a.replicas[1];
        a.leader = new_leader;
        a.leader_epoch = 2;
        assert_eq!(
            s.apply(&Command::AssignPartitions {
                assignments: vec![a.clone()]
            }),
            CommandResponse::Done
        );
        // Re-applying the same epoch is stale.
        assert!(matches!(
            s.apply(&Command::AssignPartitions {
                assignments: vec![a]
            }),
            CommandResponse::Rejected(CommandRejection::StaleEpoch {
                sent: 2,
                current: 2,
                ..
            })
        ));
        // The deposed leader still holds epoch 1: rejected.
        let deposed = Command::UpdateIsr {
            stream_id: 0,
            partition: 0,
            leader: old_leader,
            leader_epoch: 1,
            isr: vec![old_leader],
        };
        assert!(matches!(
            s.apply(&deposed),
            CommandResponse::Rejected(CommandRejection::StaleEpoch { .. })
        ));
        let current = Command::UpdateIsr {
            stream_id: 0,
            partition: 0,
            leader: new_leader,
            leader_epoch: 2,
            isr: vec![new_leader],
        };
        assert_eq!(s.apply(&current), CommandResponse::Done);
    }

    #[test]
    fn acls_need_known_principals_and_valid_patterns() {
        let mut s = ClusterState::default();
        let acl = Acl {
            principal: "alice".into(),
            resource_pattern: "orders.*".into(),
            operations: vec![Operation::Write],
            permission: Permission::Allow,
            source_cidrs: vec!["198.18.0.2/32".parse().unwrap()],
        };
        assert!(matches!(
            s.apply(&Command::PutAcl(acl.clone())),
            CommandResponse::Rejected(CommandRejection::UnknownPrincipal { .. })
        ));
        s.apply(&Command::PutPrincipal(Principal {
            name: "alice".into(),
        }));
        assert_eq!(
            s.apply(&Command::PutAcl(acl.clone())),
            CommandResponse::Done
        );
        assert_eq!(s.apply(&Command::PutAcl(acl)), CommandResponse::Done);
        assert_eq!(s.acls.len(), 1);
    }

    #[test]
    fn patterns_and_cidrs() {
        assert!(pattern_matches("*", "x"));
        assert!(pattern_matches("orders.*", "orders.eu"));
        assert!(!pattern_matches("orders.*", "order"));
        assert!(pattern_matches("a*b*c", "axxbyyc"));
        assert!(!pattern_matches("a*b*c", "acb"));
        let c: Cidr = "198.18.0.0/15".parse().unwrap();
        assert!(c.contains("198.19.1.1".parse().unwrap()));
        assert!(!c.contains("198.20.0.1".parse().unwrap()));
        assert!("1.2.3.4/33".parse::<Cidr>().is_err());
        assert_eq!("10.0.0.1".parse::<Cidr>().unwrap().prefix_len, 32);
    }
}
