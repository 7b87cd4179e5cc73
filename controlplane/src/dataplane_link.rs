//! The link from a node's control plane to its local data plane, and the
//! command-line flags every control-plane binary shares ([`NodeArgs`]).
//!
//! ## Stream commands
//!
//! When a stream is created or deleted in the replicated state, each node's
//! control plane tells its local data plane, which creates or drops the
//! partition rings at run time. The channel is the data plane's shm-ring
//! `memstreamer-commands` (`abi::command::COMMAND_RING_NAME`): the
//! data plane creates it at start and its conductor drains a fixed number of
//! 16-byte [`StreamCommand`] records per duty cycle. The ring is bounded and
//! reliable: when it is full, [`DataplaneLink::sync`] stops and the rest is
//! sent on the next sync (nothing queues up in the control plane: what is
//! left to send is always recomputed as the difference between the state and
//! what the data plane has been sent).
//!
//! The link is level-triggered: every sync compares the wanted streams
//! (id, partitions) with what was sent on the current ring. When the ring is
//! missing the link retries every [`LINK_RETRY_INTERVAL`]; when the data plane
//! restarted (the ring file is a different inode) the link re-attaches and
//! re-sends the full state. The data plane applies commands idempotently, so
//! repeats are harmless.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::time::Duration;

use abi::command::{StreamCommand, COMMAND_RING_NAME};
use shm_ring::{OfferError, Publisher, Ring};

use crate::node::NodeConfig;
use crate::types::ClusterState;

/// How often a missing, full or replaced command ring is looked at again.
pub const LINK_RETRY_INTERVAL: Duration = Duration::from_millis(100);

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
        Ok(config)
    }
}

/// The streams (id -> partitions) a node's data plane should serve.
pub fn wanted_streams(state: &ClusterState) -> BTreeMap<u32, u16> {
    state
        .streams
        .values()
        .filter(|s| s.partitions > 0)
        .map(|s| (s.id, s.partitions))
        .collect()
}

/// What one sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Commands written to the ring.
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

/// Keeps the local data plane's streams in line with the state.
pub struct DataplaneLink {
    dir: Option<PathBuf>,
    ring: Option<Attached>,
    /// What the data plane behind the current ring has been sent.
    sent: BTreeMap<u32, u16>,
}

impl DataplaneLink {
    /// `dir`: the data plane's ring directory (None: shm-ring's defaults).
    pub fn new(dir: Option<PathBuf>) -> DataplaneLink {
        DataplaneLink {
            dir,
            ring: None,
            sent: BTreeMap::new(),
        }
    }

    /// True while attached to a data plane's command ring.
    pub fn is_attached(&self) -> bool {
        self.ring.is_some()
    }

    fn attach(&mut self) -> bool {
        if let Some(a) = &self.ring {
            match std::fs::metadata(&a.path) {
                Ok(m) if m.ino() == a.inode => return false,
                _ => {
                    // The data plane stopped or restarted: forget what it had.
                    self.ring = None;
                    self.sent.clear();
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
        self.sent.clear();
        true
    }

    /// Sends the commands that bring the data plane to `state`'s streams, as
    /// far as the ring has room.
    pub fn sync(&mut self, state: &ClusterState) -> SyncReport {
        let attached = self.attach();
        let Some(a) = self.ring.as_mut() else {
            return SyncReport::default();
        };
        let want = wanted_streams(state);
        let drops = self
            .sent
            .keys()
            .filter(|id| !want.contains_key(id))
            .map(|&stream_id| StreamCommand::Drop { stream_id });
        let creates = want
            .iter()
            .filter(|(id, p)| self.sent.get(id) != Some(p))
            .map(|(&stream_id, &partitions)| StreamCommand::Create {
                stream_id,
                partitions,
            });
        let todo: Vec<StreamCommand> = drops.chain(creates).collect();
        let mut report = SyncReport {
            attached,
            ..SyncReport::default()
        };
        for c in &todo {
            match a.publisher.offer(&c.encode()) {
                Ok(_) => {
                    report.sent += 1;
                    match *c {
                        StreamCommand::Create {
                            stream_id,
                            partitions,
                        } => self.sent.insert(stream_id, partitions),
                        StreamCommand::Drop { stream_id } => self.sent.remove(&stream_id),
                    };
                }
                Err(OfferError::BackPressured) => return report,
                Err(e) => {
                    tracing::warn!("data-plane link: {e}; re-attaching");
                    self.ring = None;
                    self.sent.clear();
                    return report;
                }
            }
        }
        report.in_sync = true;
        report
    }
}

/// Runs the link until `shutdown`: syncs on every applied entry, and every
/// [`LINK_RETRY_INTERVAL`] (a data plane that starts, restarts or drains a
/// full ring is served without a state change).
pub async fn run(
    view: crate::store::StateView,
    mut link: DataplaneLink,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut applied = view.applied_index();
    loop {
        let report = link.sync(&view.cluster_state());
        if report.attached {
            tracing::info!("data-plane link: attached to the data plane's command ring");
        }
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(LINK_RETRY_INTERVAL) => {}
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
    use crate::types::{Stream, StreamMode};
    use shm_ring::{RingConfig, StartAt};

    fn state(streams: &[(u32, u16)]) -> ClusterState {
        let mut s = ClusterState::default();
        for &(id, partitions) in streams {
            s.streams.insert(
                format!("s{id}"),
                Stream {
                    name: format!("s{id}"),
                    id,
                    partitions,
                    replication_factor: 1,
                    retention_bytes: 1,
                    retention_ms: 1,
                    mode: StreamMode::default(),
                },
            );
        }
        s
    }

    fn command_ring(dir: &std::path::Path) -> Ring {
        Ring::create(
            COMMAND_RING_NAME,
            &RingConfig {
                capacity_bytes: 1 << 10,
                backing: shm_ring::Backing::DevShm,
                dir: Some(dir.to_path_buf()),
                ..RingConfig::default()
            },
        )
        .unwrap()
    }

    fn read_all(sub: &mut shm_ring::Subscriber) -> Vec<StreamCommand> {
        let mut out = Vec::new();
        sub.poll(
            |r| out.push(StreamCommand::decode(r.payload).unwrap()),
            1 << 10,
        )
        .unwrap();
        out
    }

    #[test]
    fn link_sends_the_difference_and_resends_everything_to_a_new_data_plane() {
        let dir = tempfile::tempdir().unwrap();
        let mut link = DataplaneLink::new(Some(dir.path().to_path_buf()));
        assert_eq!(link.sync(&state(&[(1, 2)])), SyncReport::default());
        assert!(!link.is_attached(), "no data plane yet");

        let ring = command_ring(dir.path());
        let mut sub = ring.subscriber(StartAt::Earliest).unwrap();
        let r = link.sync(&state(&[(1, 2), (2, 1)]));
        assert_eq!((r.attached, r.sent, r.in_sync), (true, 2, true));
        let create = |stream_id, partitions| StreamCommand::Create {
            stream_id,
            partitions,
        };
        assert_eq!(read_all(&mut sub), vec![create(1, 2), create(2, 1)]);
        assert_eq!(link.sync(&state(&[(1, 2), (2, 1)])).sent, 0, "nothing new");
        link.sync(&state(&[(2, 1)]));
        assert_eq!(
            read_all(&mut sub),
            vec![StreamCommand::Drop { stream_id: 1 }]
        );

        // The data plane restarts: a new ring file; the full state is sent again.
        drop(sub);
        ring.unlink().unwrap();
        drop(ring);
        let ring = command_ring(dir.path());
        let mut sub = ring.subscriber(StartAt::Earliest).unwrap();
        let r = link.sync(&state(&[(2, 1)]));
        assert!(r.attached && r.in_sync);
        assert_eq!(read_all(&mut sub), vec![create(2, 1)]);
        ring.unlink().unwrap();
    }

    #[test]
    fn a_full_ring_is_finished_on_later_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let ring = command_ring(dir.path());
        let mut sub = ring.subscriber(StartAt::Earliest).unwrap();
        let mut link = DataplaneLink::new(Some(dir.path().to_path_buf()));
        let many: Vec<(u32, u16)> = (0..200).map(|i| (i, 1)).collect();
        let want = state(&many);
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
        let ids: Vec<u32> = got
            .iter()
            .map(|c| match c {
                StreamCommand::Create { stream_id, .. } => *stream_id,
                StreamCommand::Drop { .. } => unreachable!("no drops"),
            })
            .collect();
        assert_eq!(
            ids,
            (0..200).collect::<Vec<_>>(),
            "each stream once, in order"
        );
        ring.unlink().unwrap();
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
    }
}
