//! The link from a node's control plane to its local data plane, and the
//! command-line flags every control-plane binary shares ([`NodeArgs`]).
//!
//! ## Placement (#11)
//!
//! Each node's control plane tells its local data plane, for every partition
//! of every stream, this node's part in it: an `abi::assign::PartitionAssignment`
//! with role leader, follower or none (a node that lost a partition stops
//! serving it), the leader, the leader epoch, the replica set with each
//! replica's data address (from the registered `NodeInfo::data_addr`, which
//! must be an IPv4 `ip:port`; a partition with a replica whose address is not
//! is not sent, and the error is logged once per change), the committed ISR,
//! the stream's minimum ISR and its default ack mode. Stream-level
//! [`StreamCommand`]s stay as the coarse lifecycle: `Create` for a stream
//! this node holds at least one replica of, `Drop` once it holds none or the
//! stream is deleted (a data plane that predates assignments keeps working on
//! them; one that applies assignments removes the partitions it is told
//! `none` for).
//!
//! The channel is the data plane's shm-ring `memstreamer-commands`
//! (`abi::command::COMMAND_RING_NAME`): the data plane creates it at start and
//! its conductor drains a fixed number of records per duty cycle. The ring is
//! bounded and reliable: when it is full, [`DataplaneLink::sync`] stops and
//! the rest is sent on the next sync (nothing queues up in the control plane:
//! what is left to send is always recomputed as the difference between the
//! state and what the data plane has been sent).
//!
//! The link is level-triggered: every sync compares the wanted streams and
//! assignments with what was sent on the current ring. When the ring is
//! missing the link retries every [`LINK_RETRY_INTERVAL`]; when the data plane
//! restarted (the ring file is a different inode) the link re-attaches and
//! re-sends the full view. The data plane applies records idempotently (an
//! assignment with an older epoch than the one it holds is ignored), so
//! repeats are harmless.
//!
//! The same task reads the data plane's status ring into the node's
//! [`crate::replicas::LocalReplicas`] every [`STATUS_POLL_INTERVAL`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::assign::{self, ReplicaEntry, Role, ASSIGN_REPLICAS_MAX};
use abi::command::{Command as RingCommand, StreamCommand, COMMAND_RING_NAME};
use shm_ring::{OfferError, Publisher, Ring};

use crate::cluster::Cluster;
use crate::node::NodeConfig;
use crate::replicas::StatusReader;
use crate::types::{ClusterState, NodeId, REPLICATION_FACTOR_MAX};

/// How often a missing, full or replaced command ring is looked at again.
pub const LINK_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// How often the data plane's status ring is read.
pub const STATUS_POLL_INTERVAL: Duration = Duration::from_millis(20);

const _: () = assert!(REPLICATION_FACTOR_MAX as usize <= ASSIGN_REPLICAS_MAX);

/// The flags of `ms-controlplane` and `memstreamer controlplane`; they
/// override the TOML configuration.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML configuration; flags override it. Without it the embedded defaults apply.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Raft node id (non-zero, unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// gRPC listen address (ip:port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Address other nodes use to reach this one.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Data-plane address of this node.
    #[arg(long)]
    pub data_addr: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Join the cluster through this member's address (fresh node only).
    #[arg(long)]
    pub join: Option<String>,
    /// HTTP address of /metrics, /health, /ready (empty: none).
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Send stream commands to the local data plane (`[admin] dataplane_commands`).
    #[arg(long)]
    pub dataplane_commands: bool,
    /// Ring directory of the local data plane (its `shm_dir`; default: shm-ring's directories).
    #[arg(long)]
    pub dataplane_shm_dir: Option<PathBuf>,
    /// The local data plane's counters file, shown on /metrics as `ms_dp_*`
    /// (`[admin] dataplane_counters`).
    #[arg(long)]
    pub dataplane_counters: Option<PathBuf>,
    /// A stream the local data plane's configuration defines, `ID:PARTITIONS`; repeatable.
    /// Registered in the cluster metadata as `stream-<ID>` (`[admin] dataplane_streams`).
    #[arg(long = "dataplane-stream")]
    pub dataplane_streams: Vec<String>,
}

/// Parses `ID:PARTITIONS` of `--dataplane-stream`.
pub fn parse_config_stream(
    s: &str,
) -> Result<crate::grpc::serve::ConfigStream, crate::node::NodeStartError> {
    let bad = || crate::node::NodeStartError::Config {
        reason: format!(
            "--dataplane-stream {:?}: write ID:PARTITIONS, e.g. 7:1",
            s.chars().take(32).collect::<String>()
        ),
    };
    let (id, p) = s.split_once(':').ok_or_else(bad)?;
    let partitions: u16 = p.parse().map_err(|_| bad())?;
    if partitions == 0 || partitions > crate::types::PARTITIONS_MAX {
        return Err(bad());
    }
    Ok(crate::grpc::serve::ConfigStream {
        id: id.parse().map_err(|_| bad())?,
        partitions,
    })
}

/// The metadata name of a stream a data plane's configuration defines.
pub fn config_stream_name(id: u32) -> String {
    format!("stream-{id}")
}

/// Most attempts to register the configured streams (each bounded by the write timeout).
pub const CONFIG_STREAM_ATTEMPTS_MAX: u32 = 600;
/// Pause between attempts while the node is not registered or no leader answers.
pub const CONFIG_STREAM_RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Registers `streams` (the local data plane's `[[streams]]`) in the cluster metadata once this
/// node is registered, so a configured stream is a stream like any other: placed, listed,
/// described, and its id never handed to another stream. A clash (the name or id taken by
/// another stream, another node configuring a different partition count) is logged as an
/// error that says what to change, and not retried.
pub async fn register_config_streams(
    cluster: Arc<Cluster>,
    streams: Vec<crate::grpc::serve::ConfigStream>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut left = streams;
    for _ in 0..CONFIG_STREAM_ATTEMPTS_MAX {
        if *shutdown.borrow() || left.is_empty() {
            return;
        }
        let registered = cluster
            .view()
            .read(|d| d.state.nodes.contains_key(&cluster.me().id));
        if registered {
            let mut retry = Vec::new();
            for s in left {
                let cmd = crate::types::Command::RegisterConfigStream {
                    name: config_stream_name(s.id),
                    id: s.id,
                    partitions: s.partitions,
                };
                match cluster.write(cmd).await {
                    Ok(r) => match r.into_result() {
                        Ok(_) => tracing::info!(
                            "configured stream {} ({} partitions) is in the cluster metadata",
                            config_stream_name(s.id),
                            s.partitions
                        ),
                        Err(e) => tracing::error!(
                            "configured stream {} ({} partitions) not registered: {e}; \
                             align the nodes' [[streams]] or remove the stream from the config",
                            config_stream_name(s.id),
                            s.partitions
                        ),
                    },
                    Err(_) => retry.push(s),
                }
            }
            left = retry;
        }
        tokio::time::sleep(CONFIG_STREAM_RETRY_INTERVAL).await;
    }
    if !left.is_empty() {
        tracing::error!("configured streams not registered (no leader answered): {left:?}");
    }
}

impl NodeArgs {
    /// The configuration file (or the embedded defaults) with the flags applied.
    pub fn into_config(self) -> Result<NodeConfig, crate::node::NodeStartError> {
        let mut config = match &self.config {
            Some(p) => NodeConfig::load(p)?,
            None => NodeConfig::default(),
        };
        if let Some(v) = self.id {
            config.id = v;
        }
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.advertise {
            config.advertise = Some(v);
        }
        if let Some(v) = self.data_addr {
            config.data_addr = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.cert_dir {
            config.cert_dir = Some(v);
        }
        if let Some(v) = self.join {
            config.join = Some(v);
        }
        if let Some(v) = self.http_listen {
            config.admin.http_listen = v;
        }
        if self.dataplane_commands {
            config.admin.dataplane_commands = true;
        }
        if let Some(v) = self.dataplane_shm_dir {
            config.admin.dataplane_shm_dir = Some(v);
        }
        if let Some(v) = self.dataplane_counters {
            config.admin.dataplane_counters = Some(v);
        }
        for s in &self.dataplane_streams {
            config.admin.dataplane_streams.push(parse_config_stream(s)?);
        }
        Ok(config)
    }
}

/// Why a partition's assignment could not be built (the partition is not sent; logged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("node {node} has data address {addr:?}, which is not an IPv4 ip:port (host names are not resolved, and the data protocol's assignment carries IPv4): re-register the node with e.g. --data-addr 198.18.0.1:7460")]
    DataAddr { node: NodeId, addr: String },
    #[error("node {node}, a replica of stream id {stream_id} partition {partition}, is not registered: join it to the cluster")]
    UnknownNode {
        node: NodeId,
        stream_id: u32,
        partition: u16,
    },
    #[error("stream id {stream_id} partition {partition}: {reason}")]
    Invalid {
        stream_id: u32,
        partition: u16,
        reason: String,
    },
}

/// A node's data address as the assignment carries it: IPv4 and port.
pub fn parse_data_addr(node: NodeId, addr: &str) -> Result<([u8; 4], u16), PlacementError> {
    match addr.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) => Ok((a.ip().octets(), a.port())),
        _ => Err(PlacementError::DataAddr {
            node,
            addr: addr.chars().take(64).collect(),
        }),
    }
}

/// What a node's data plane should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Streams (id -> partitions) this node holds at least one replica of.
    pub streams: BTreeMap<u32, u16>,
    /// This node's assignment of every partition whose assignment could be built.
    pub assignments: BTreeMap<(u32, u16), assign::PartitionAssignment>,
    /// The partitions that could not.
    pub errors: Vec<PlacementError>,
}

/// This node's (`me`) view of every partition in `state` (see the module docs).
pub fn wanted(state: &ClusterState, me: NodeId) -> Wanted {
    let mut out = Wanted::default();
    for s in state.streams.values() {
        let Some(parts) = state.assignments.get(&s.id) else {
            continue;
        };
        for a in parts {
            if a.replicas.contains(&me) {
                out.streams.insert(s.id, s.partitions);
            }
            match assignment_for(state, s, a, me) {
                Ok(x) => {
                    out.assignments.insert((a.stream_id, a.partition), x);
                }
                Err(e) => out.errors.push(e),
            }
        }
    }
    out
}

fn assignment_for(
    state: &ClusterState,
    s: &crate::types::Stream,
    a: &crate::types::PartitionAssignment,
    me: NodeId,
) -> Result<assign::PartitionAssignment, PlacementError> {
    let mut replicas = Vec::with_capacity(a.replicas.len());
    for &node in &a.replicas {
        let info = state.nodes.get(&node).ok_or(PlacementError::UnknownNode {
            node,
            stream_id: a.stream_id,
            partition: a.partition,
        })?;
        let (ipv4, port) = parse_data_addr(node, &info.data_addr)?;
        replicas.push(ReplicaEntry {
            node,
            ipv4,
            port,
            in_isr: a.isr.contains(&node),
        });
    }
    let role = if a.leader == me {
        Role::Leader
    } else if a.replicas.contains(&me) {
        Role::Follower
    } else {
        Role::None
    };
    assign::PartitionAssignment::new(
        a.stream_id,
        a.partition,
        role,
        s.policy.ack_default.to_abi(),
        s.policy.min_insync_replicas,
        a.leader_epoch,
        a.leader,
        me,
        &replicas,
    )
    .map_err(|e| PlacementError::Invalid {
        stream_id: a.stream_id,
        partition: a.partition,
        reason: e.to_string(),
    })
}

/// What one sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Records written to the ring (stream commands and assignments).
    pub sent: usize,
    /// True when everything wanted has been sent on the current ring.
    pub in_sync: bool,
    /// True when the link (re)attached to a ring in this sync.
    pub attached: bool,
}

struct Attached {
    publisher: Publisher,
    path: PathBuf,
    inode: u64,
}

/// Keeps the local data plane's partitions in line with the state.
pub struct DataplaneLink {
    dir: Option<PathBuf>,
    me: NodeId,
    ring: Option<Attached>,
    /// What the data plane behind the current ring has been sent.
    sent_streams: BTreeMap<u32, u16>,
    sent_assignments: BTreeMap<(u32, u16), assign::PartitionAssignment>,
    /// The placement errors last logged (logged again only when they change).
    errors: Vec<PlacementError>,
}

impl DataplaneLink {
    /// `dir`: the data plane's ring directory (None: shm-ring's defaults); `me`: this node.
    pub fn new(dir: Option<PathBuf>, me: NodeId) -> DataplaneLink {
        DataplaneLink {
            dir,
            me,
            ring: None,
            sent_streams: BTreeMap::new(),
            sent_assignments: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// True while attached to a data plane's command ring.
    pub fn is_attached(&self) -> bool {
        self.ring.is_some()
    }

    /// The placement errors of the last sync.
    pub fn errors(&self) -> &[PlacementError] {
        &self.errors
    }

    fn forget(&mut self) {
        self.sent_streams.clear();
        self.sent_assignments.clear();
    }

    fn attach(&mut self) -> bool {
        if let Some(a) = &self.ring {
            match std::fs::metadata(&a.path) {
                Ok(m) if m.ino() == a.inode => return false,
                _ => {
                    // The data plane stopped or restarted: forget what it had.
                    self.ring = None;
                    self.forget();
                }
            }
        }
        let Ok(ring) = Ring::open(COMMAND_RING_NAME, self.dir.as_deref()) else {
            return false;
        };
        let path = ring.path().to_owned();
        let (Ok(meta), Ok(publisher)) = (std::fs::metadata(&path), ring.publisher()) else {
            return false;
        };
        self.ring = Some(Attached {
            publisher,
            path,
            inode: meta.ino(),
        });
        self.forget();
        true
    }

    /// The records that bring the data plane from what it was sent to `want`: drops, then
    /// creates, then changed assignments.
    fn todo(&self, want: &Wanted) -> Vec<RingCommand> {
        let drops = self
            .sent_streams
            .keys()
            .filter(|id| !want.streams.contains_key(id))
            .map(|&stream_id| RingCommand::Stream(StreamCommand::Drop { stream_id }));
        let creates = want
            .streams
            .iter()
            .filter(|(id, p)| self.sent_streams.get(id) != Some(p))
            .map(|(&stream_id, &partitions)| {
                RingCommand::Stream(StreamCommand::Create {
                    stream_id,
                    partitions,
                })
            });
        let assigns = want
            .assignments
            .iter()
            .filter(|(k, a)| self.sent_assignments.get(k) != Some(a))
            .map(|(_, a)| RingCommand::Assign(Box::new(*a)));
        // A partition this node was assigned that is gone (its stream deleted) is told `none`,
        // so the data plane removes it as it removes any partition it no longer holds.
        let unassigns = self
            .sent_assignments
            .iter()
            .filter(|(k, a)| a.role != Role::None && !want.assignments.contains_key(k))
            .filter_map(|(_, a)| {
                assign::PartitionAssignment::new(
                    a.stream_id,
                    a.partition,
                    Role::None,
                    a.ack_default,
                    a.min_isr,
                    a.leader_epoch,
                    0,
                    a.this_node,
                    a.replicas(),
                )
                .ok()
            })
            .map(|a| RingCommand::Assign(Box::new(a)));
        drops
            .chain(unassigns)
            .chain(creates)
            .chain(assigns)
            .collect()
    }

    fn note_sent(&mut self, c: &RingCommand) {
        match c {
            RingCommand::Stream(StreamCommand::Create {
                stream_id,
                partitions,
            }) => {
                self.sent_streams.insert(*stream_id, *partitions);
            }
            RingCommand::Stream(StreamCommand::Drop { stream_id }) => {
                self.sent_streams.remove(stream_id);
            }
            RingCommand::Assign(a) => {
                self.sent_assignments
                    .insert((a.stream_id, a.partition), **a);
            }
        }
    }

    /// Sends the records that bring the data plane to `state`'s placement, as far as the ring
    /// has room.
    pub fn sync(&mut self, state: &ClusterState) -> SyncReport {
        let attached = self.attach();
        let want = wanted(state, self.me);
        if want.errors != self.errors {
            for e in &want.errors {
                tracing::error!("placement: {e}");
            }
            self.errors = want.errors.clone();
        }
        if self.ring.is_none() {
            return SyncReport::default();
        }
        let mut report = SyncReport {
            attached,
            ..SyncReport::default()
        };
        for c in self.todo(&want) {
            let Some(a) = self.ring.as_mut() else {
                return report;
            };
            match a.publisher.offer(&c.encode()) {
                Ok(_) => {
                    report.sent += 1;
                    self.note_sent(&c);
                }
                Err(OfferError::BackPressured) => return report,
                Err(e) => {
                    tracing::warn!("data-plane link: {e}; re-attaching");
                    self.ring = None;
                    self.forget();
                    return report;
                }
            }
        }
        // Partitions of deleted streams were told `none` above; forget them.
        self.sent_assignments
            .retain(|k, _| want.assignments.contains_key(k));
        report.in_sync = true;
        report
    }
}

/// Runs the link until `shutdown`: reads the status ring every [`STATUS_POLL_INTERVAL`], and
/// syncs on every applied entry and every [`LINK_RETRY_INTERVAL`] (a data plane that starts,
/// restarts or drains a full ring is served without a state change).
pub async fn run(
    cluster: Arc<Cluster>,
    mut link: DataplaneLink,
    mut status: StatusReader,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let view = cluster.view().clone();
    let mut applied = view.applied_index();
    let mut next_sync = Instant::now();
    loop {
        if Instant::now() >= next_sync {
            let report = link.sync(&view.cluster_state());
            if report.attached {
                tracing::info!("data-plane link: attached to the data plane's command ring");
            }
            next_sync = Instant::now() + LINK_RETRY_INTERVAL;
        }
        status.poll(cluster.local_replicas());
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
                next_sync = Instant::now();
            }
            _ = tokio::time::sleep(STATUS_POLL_INTERVAL) => {}
            stop = shutdown.changed() => {
                if stop.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{
        AckMode, Command, NodeInfo, NodeLiveness, ReplicationPolicy, StreamMode, LEADER_NONE,
    };
    use abi::assign::AckDefault;
    use shm_ring::{RingConfig, StartAt};

    fn node(id: NodeId) -> Command {
        Command::RegisterNode(NodeInfo {
            id,
            control_addr: format!("127.0.0.1:{}", 7000 + id),
            data_addr: format!("198.18.7.{id}:7460"),
        })
    }

    fn create(name: &str, partitions: u16, rf: u8, policy: ReplicationPolicy) -> Command {
        Command::CreateStream {
            name: name.into(),
            partitions,
            replication_factor: rf,
            retention_bytes: 1,
            retention_ms: 1,
            mode: StreamMode::default(),
            policy,
        }
    }

    /// One node, streams of the given partition counts (ids 0, 1, ...).
    fn state(streams: &[u16]) -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&node(1));
        for (i, &p) in streams.iter().enumerate() {
            let r = s.apply(&create(
                &format!("s{i}"),
                p,
                1,
                ReplicationPolicy::default(),
            ));
            assert!(r.into_result().is_ok());
        }
        s
    }

    fn command_ring(dir: &std::path::Path, capacity_bytes: u64) -> Ring {
        Ring::create(
            COMMAND_RING_NAME,
            &RingConfig {
                capacity_bytes,
                backing: shm_ring::Backing::DevShm,
                dir: Some(dir.to_path_buf()),
                ..RingConfig::default()
            },
        )
        .unwrap()
    }

    fn read_all(sub: &mut shm_ring::Subscriber) -> Vec<RingCommand> {
        let mut out = Vec::new();
        sub.poll(
            |r| out.push(RingCommand::decode(r.payload).unwrap()),
            1 << 12,
        )
        .unwrap();
        out
    }

    fn streams_of(cmds: &[RingCommand]) -> Vec<StreamCommand> {
        cmds.iter()
            .filter_map(|c| match c {
                RingCommand::Stream(s) => Some(*s),
                RingCommand::Assign(_) => None,
            })
            .collect()
    }

    fn assigns_of(cmds: &[RingCommand]) -> Vec<assign::PartitionAssignment> {
        cmds.iter()
            .filter_map(|c| match c {
                RingCommand::Assign(a) => Some(**a),
                RingCommand::Stream(_) => None,
            })
            .collect()
    }

    #[test]
    fn link_sends_the_difference_and_resends_everything_to_a_new_data_plane() {
        let dir = tempfile::tempdir().unwrap();
        let mut link = DataplaneLink::new(Some(dir.path().to_path_buf()), 1);
        assert_eq!(link.sync(&state(&[2])), SyncReport::default());
        assert!(!link.is_attached(), "no data plane yet");

        let ring = command_ring(dir.path(), 1 << 12);
        let mut sub = ring.subscriber(StartAt::Earliest).unwrap();
        let r = link.sync(&state(&[2, 1]));
        assert_eq!((r.attached, r.sent, r.in_sync), (true, 5, true));
        let create = |stream_id, partitions| StreamCommand::Create {
            stream_id,
            partitions,
        };
        let got = read_all(&mut sub);
        assert_eq!(streams_of(&got), vec![create(0, 2), create(1, 1)]);
        let a = assigns_of(&got);
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|a| a.role == Role::Leader && a.leader == 1));
        assert_eq!(link.sync(&state(&[2, 1])).sent, 0, "nothing new");
        let mut gone = state(&[2, 1]);
        gone.apply(&Command::DeleteStream { name: "s0".into() });
        link.sync(&gone);
        let got = read_all(&mut sub);
        assert_eq!(streams_of(&got), vec![StreamCommand::Drop { stream_id: 0 }]);
        // The deleted stream's partitions are told `none`, so the data plane removes them.
        let none = assigns_of(&got);
        assert_eq!(none.len(), 2);
        assert!(none
            .iter()
            .all(|a| a.stream_id == 0 && a.role == Role::None && a.leader == 0));
        assert_eq!(link.sync(&gone).sent, 0, "told once");

        // The data plane restarts: a new ring file; the full view is sent again.
        drop(sub);
        ring.unlink().unwrap();
        drop(ring);
        let ring = command_ring(dir.path(), 1 << 12);
        let mut sub = ring.subscriber(StartAt::Earliest).unwrap();
        let r = link.sync(&gone);
        assert!(r.attached && r.in_sync);
        let got = read_all(&mut sub);
        assert_eq!(streams_of(&got), vec![create(1, 1)]);
        assert_eq!(assigns_of(&got).len(), 1);
        ring.unlink().unwrap();
    }

    #[test]
    fn a_full_ring_is_finished_on_later_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let ring = command_ring(dir.path(), 1 << 10);
        let mut sub = ring.subscriber(StartAt::Earliest).unwrap();
        let mut link = DataplaneLink::new(Some(dir.path().to_path_buf()), 1);
        let want = state(&[1; 100]);
        let first = link.sync(&want);
        assert!(!first.in_sync && first.sent > 0, "1 KiB ring fills up");
        let mut got = read_all(&mut sub);
        for _ in 0..1000 {
            if link.sync(&want).in_sync {
                break;
            }
            got.extend(read_all(&mut sub));
        }
        got.extend(read_all(&mut sub));
        let ids: Vec<u32> = streams_of(&got)
            .iter()
            .map(|c| match c {
                StreamCommand::Create { stream_id, .. } => *stream_id,
                StreamCommand::Drop { .. } => unreachable!("no drops"),
            })
            .collect();
        assert_eq!(
            ids,
            (0..100).collect::<Vec<_>>(),
            "each stream once, in order"
        );
        let assigned: Vec<u32> = assigns_of(&got).iter().map(|a| a.stream_id).collect();
        assert_eq!(
            assigned,
            (0..100).collect::<Vec<_>>(),
            "each partition once"
        );
        ring.unlink().unwrap();
    }

    #[test]
    fn each_node_gets_its_role_the_replicas_addresses_isr_and_policy() {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&node(id));
        }
        let policy = ReplicationPolicy {
            min_insync_replicas: 2,
            ack_default: AckMode::AllPersisted,
            unclean_leader_election: false,
        };
        assert!(s.apply(&create("o", 3, 2, policy)).into_result().is_ok());
        // Partition p of stream 0 lives on nodes (p % 3) + 1 and (p + 1) % 3 + 1.
        for me in 1..=3u64 {
            let w = wanted(&s, me);
            assert!(w.errors.is_empty());
            assert_eq!(
                w.assignments.len(),
                3,
                "every partition, role none included"
            );
            for a in w.assignments.values() {
                let p = u64::from(a.partition);
                let (leader, follower) = (p % 3 + 1, (p + 1) % 3 + 1);
                let role = match me {
                    m if m == leader => Role::Leader,
                    m if m == follower => Role::Follower,
                    _ => Role::None,
                };
                assert_eq!((a.role, a.leader, a.this_node), (role, leader, me));
                assert_eq!((a.min_isr, a.ack_default), (2, AckDefault::AllPersisted));
                let r = a.replicas();
                assert_eq!(r.len(), 2);
                assert_eq!((r[0].ipv4, r[0].port), ([198, 18, 7, leader as u8], 7460));
                assert!(r.iter().all(|r| r.in_isr));
            }
            let holds = w.assignments.values().filter(|a| a.role != Role::None);
            assert_eq!(holds.count(), 2);
            assert_eq!(w.streams.len(), 1);
        }
        // Leaderless: every node hears it (leader 0), nobody leads.
        s.apply(&Command::SetNodeLiveness {
            id: 1,
            liveness: NodeLiveness::Dead,
        });
        let mut a = s.assignment(0, 0).unwrap().clone();
        a.leader = LEADER_NONE;
        a.leader_epoch += 1;
        assert!(s
            .apply(&Command::AssignPartitions {
                assignments: vec![a]
            })
            .into_result()
            .is_ok());
        let w = wanted(&s, 2);
        assert_eq!(w.assignments[&(0, 0)].role, Role::Follower);
        assert_eq!(w.assignments[&(0, 0)].leader, 0);
    }

    #[test]
    fn non_ipv4_data_addresses_are_refused_with_a_clear_error() {
        assert_eq!(
            parse_data_addr(1, "198.18.0.1:7460"),
            Ok(([198, 18, 0, 1], 7460))
        );
        for bad in ["[::1]:7460", "node-a:7460", "198.18.0.1", ""] {
            let e = parse_data_addr(1, bad).unwrap_err();
            assert!(e.to_string().contains("not an IPv4"), "{e}");
        }
        let mut s = ClusterState::default();
        s.apply(&Command::RegisterNode(NodeInfo {
            id: 1,
            control_addr: "127.0.0.1:1".into(),
            data_addr: "[::1]:7460".into(),
        }));
        s.apply(&create("v6", 2, 1, ReplicationPolicy::default()));
        let w = wanted(&s, 1);
        assert!(w.assignments.is_empty());
        assert_eq!(w.errors.len(), 2);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cp.toml");
        std::fs::write(&file, "id = 4\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let c = NodeArgs {
            config: Some(file),
            listen: Some("127.0.0.1:2".into()),
            join: Some("127.0.0.1:3".into()),
            dataplane_commands: true,
            dataplane_streams: vec!["7:2".into()],
            ..NodeArgs::default()
        }
        .into_config()
        .unwrap();
        assert_eq!(
            (c.id, c.listen.as_str(), c.join.as_deref()),
            (4, "127.0.0.1:2", Some("127.0.0.1:3"))
        );
        assert!(c.admin.dataplane_commands);
        assert!(!NodeConfig::default().admin.dataplane_commands);
        let s = c.admin.dataplane_streams;
        assert_eq!((s.len(), s[0].id, s[0].partitions), (1, 7, 2));
        for bad in ["7", "x:1", "7:0", "7:99999", ""] {
            assert!(parse_config_stream(bad).is_err(), "{bad}");
        }
    }
}
