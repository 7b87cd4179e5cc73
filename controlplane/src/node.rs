//! A running control-plane node: store, Raft, mTLS gRPC server, cluster
//! duties, and (in [`run`]) the admin surface of `grpc::start_admin`. [`run`] is the blocking entry point (own tokio runtime);
//! [`start`] / [`start_with`] start a node inside an existing runtime.
//!
//! A node with the embedded defaults needs no configuration: it listens on
//! 127.0.0.1, keeps its data in `/var/lib/memstreamer/cp`, creates dev
//! certificates there on first start, and bootstraps a one-node cluster.
//! With `join` set, a fresh node asks that address to add it instead.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{client_tls_config, NodeTls, TlsConfigError};
use crate::certs::{self, CertsGenerateError, DevCerts};
use crate::cluster::{Cluster, ClusterError, LivenessConfig, JOIN_TIMEOUT_MS};
use crate::grpc::{start_admin, AdminConfig, AdminStartError};
use crate::network::server::RaftServer;
use crate::network::{NetworkFactory, PeerPool, Rpc};
use crate::store::{self, StoreOpenError};
use crate::types::{Command, NodeId, NodeInfo};

/// Default control-plane listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7450";
/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "/var/lib/memstreamer/cp";
/// Most time to wait for the first leader at start-up before giving up on
/// registering this node (it is retried by the next start).
pub const STARTUP_LEADER_WAIT_MS: u64 = 10_000;

/// Longest wait for in-flight calls when a node shuts down.
pub const SHUTDOWN_DRAIN_MS: u64 = 2_000;

/// Raft timing (milliseconds) and log compaction.
///
/// Failover budget: openraft (0.9) lets a follower start an election only
/// after `election_timeout_max` (the leader lease) plus a random timeout in
/// `election_timeout_min..election_timeout_max` without hearing from the
/// leader, so with the defaults a dead leader is replaced 200-250 ms after
/// its last heartbeat, plus one vote round and one commit. Fsync stalls of
/// this order would cause spurious elections; keep `election_timeout_min`
/// well above the disk's fsync p99.9.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub log_entries_kept: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 25,
            election_timeout_min_ms: 75,
            election_timeout_max_ms: 125,
            snapshot_after_entries: 5_000,
            log_entries_kept: 1_000,
        }
    }
}

/// Node configuration (TOML). Every field has a default, so an empty file —
/// or no file — is a valid single-node configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id (non-zero, unique in the cluster).
    pub id: NodeId,
    /// Address the gRPC server (Raft + admin) binds.
    pub listen: String,
    /// Address other nodes use to reach this one (default: `listen`).
    pub advertise: Option<String>,
    /// Address of this node's data plane.
    pub data_addr: String,
    pub data_dir: PathBuf,
    /// Certificate directory (default: `<data_dir>/certs`); dev certificates
    /// are created there if absent.
    pub cert_dir: Option<PathBuf>,
    /// Address of a member to join through (fresh node only).
    pub join: Option<String>,
    pub raft: RaftConfig,
    pub liveness: LivenessConfig,
    /// Admin API, audit log, HTTP endpoints and policy push (`[admin]`).
    pub admin: AdminConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            listen: LISTEN_DEFAULT.into(),
            advertise: None,
            data_addr: "127.0.0.1:7460".into(),
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            cert_dir: None,
            join: None,
            raft: RaftConfig::default(),
            liveness: LivenessConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Parses TOML; missing keys take their defaults.
    pub fn from_toml(text: &str) -> Result<NodeConfig, NodeStartError> {
        toml::from_str(text).map_err(|e| NodeStartError::Config {
            reason: e.to_string(),
        })
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<NodeConfig, NodeStartError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeStartError::Config {
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::from_toml(&text)
    }

    /// Where other nodes reach this one (with `listen` on port 0 and no
    /// `advertise`, a started node advertises the port it was given instead).
    pub fn control_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// The certificate directory.
    pub fn cert_dir(&self) -> PathBuf {
        self.cert_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("certs"))
    }

    fn raft_config(&self) -> Result<openraft::Config, NodeStartError> {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "memstreamer".into(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
            max_in_snapshot_log_to_keep: r.log_entries_kept,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeStartError::Config {
            reason: format!("[raft]: {e}"),
        })
    }
}

/// A node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeStartError {
    #[error("invalid configuration: {reason}")]
    Config { reason: String },
    #[error(transparent)]
    Store(#[from] StoreOpenError),
    #[error(transparent)]
    Certs(#[from] CertsGenerateError),
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    #[error("cannot listen on {addr}: {source}; pick a free address with `listen`")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("Raft failed to start: {reason}; check the data directory")]
    Raft { reason: String },
    #[error("cannot join the cluster through {addr}: {reason}")]
    Join { addr: String, reason: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start the admin surface: {0}")]
    Admin(#[from] AdminStartError),
}

/// A started node; dropping it does not stop it, call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub cluster: Arc<Cluster>,
    /// The address the server is bound to (useful with port 0).
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops Raft, the cluster duties and the server. The server drains
    /// in-flight calls for at most `SHUTDOWN_DRAIN_MS`, then is aborted
    /// (peers keep idle HTTP/2 connections open indefinitely).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.cluster.raft().shutdown().await;
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// Starts a node with only the Raft service.
pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeStartError> {
    start_with(config, |_, _, _| {}).await
}

/// Starts a node; `extra` may add services (e.g. the admin API) served on
/// the same mTLS listener.
pub async fn start_with(
    config: NodeConfig,
    extra: impl FnOnce(&Arc<Cluster>, &NodeConfig, &mut tonic::service::RoutesBuilder),
) -> Result<RunningNode, NodeStartError> {
    if config.id == 0 {
        return Err(NodeStartError::Config {
            reason: "id must be non-zero".into(),
        });
    }
    let raft_config = Arc::new(config.raft_config()?);
    let listen: SocketAddr = config.listen.parse().map_err(|_| NodeStartError::Config {
        reason: format!("listen = {:?} is not an ip:port address", config.listen),
    })?;
    let certs = ensure_certs(&config, listen.ip())?;
    let server_tls = NodeTls::new(&certs.node, &certs.ca.cert)?;
    let client_tls = client_tls_config(&certs.node, &certs.ca.cert)?;

    // Bound before anything else starts, so a refused address leaves no
    // Raft behind; with port 0 the node advertises the port it got.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| NodeStartError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| NodeStartError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let control_addr = match &config.advertise {
        Some(a) => a.clone(),
        None if listen.port() == 0 => local_addr.to_string(),
        None => config.listen.clone(),
    };

    let (log, sm) = store::open(&config.data_dir)?;
    let view = sm.view();
    let pool = PeerPool::new(client_tls);
    let raft = openraft::Raft::new(
        config.id,
        raft_config,
        NetworkFactory::new(
            pool.clone(),
            Duration::from_millis(2 * config.raft.heartbeat_interval_ms),
        ),
        log,
        sm,
    )
    .await
    .map_err(|e| NodeStartError::Raft {
        reason: e.to_string(),
    })?;
    let me = NodeInfo {
        id: config.id,
        control_addr,
        data_addr: config.data_addr.clone(),
    };
    let cluster = Cluster::new(
        me.clone(),
        raft.clone(),
        view,
        pool.clone(),
        config.liveness,
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(RaftServer::service(cluster.clone()));
    extra(&cluster, &config, &mut routes);
    // TLS is terminated by NodeTls (auth/acceptor.rs): refused client
    // certificates reach the services as a verdict, answered UNAUTHENTICATED.
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_routes(routes.routes());
    let mut rx = shutdown_rx.clone();
    let incoming = server_tls.incoming(listener, shutdown_rx.clone());
    let server = tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!("control-plane gRPC server stopped: {e}");
        }
    });
    let liveness = tokio::spawn(cluster.clone().run_liveness(shutdown_rx.clone()));

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeStartError::Raft {
            reason: e.to_string(),
        })?;
    if !initialized {
        match &config.join {
            None => {
                raft.initialize(BTreeMap::from([(me.id, me.clone())]))
                    .await
                    .map_err(|e| NodeStartError::Raft {
                        reason: e.to_string(),
                    })?;
            }
            Some(addr) => join_through(&pool, addr, &me).await?,
        }
    }
    let reg = tokio::spawn(ensure_registered(cluster.clone(), shutdown_rx));
    Ok(RunningNode {
        cluster,
        local_addr,
        shutdown: shutdown_tx,
        tasks: vec![server, liveness, reg],
    })
}

fn ensure_certs(config: &NodeConfig, ip: IpAddr) -> Result<DevCerts, NodeStartError> {
    let dir = config.cert_dir();
    let paths = DevCerts::paths(&dir);
    if paths.node.cert.exists() && paths.node.key.exists() && paths.ca.cert.exists() {
        return Ok(paths);
    }
    Ok(certs::generate_dev_with(&dir, &[ip])?)
}

async fn join_through(pool: &PeerPool, addr: &str, me: &NodeInfo) -> Result<(), NodeStartError> {
    let deadline = Instant::now() + Duration::from_millis(JOIN_TIMEOUT_MS);
    let mut last = String::new();
    for _ in 0..100 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match pool
            .call::<NodeInfo, (), ClusterError>(addr, Rpc::Join, me, left)
            .await
        {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e @ (ClusterError::Invalid { .. } | ClusterError::Fatal { .. }))) => {
                return Err(NodeStartError::Join {
                    addr: addr.into(),
                    reason: e.to_string(),
                })
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(NodeStartError::Join {
        addr: addr.into(),
        reason: last,
    })
}

/// Makes sure this node's addresses are in the replicated state (first start
/// of a bootstrap node, or an address change on restart).
async fn ensure_registered(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let deadline = Instant::now() + Duration::from_millis(STARTUP_LEADER_WAIT_MS);
    for _ in 0..1_000 {
        if cluster
            .view()
            .read(|d| d.state.nodes.get(&cluster.me().id) == Some(cluster.me()))
        {
            return;
        }
        if Instant::now() > deadline || *shutdown.borrow() {
            return;
        }
        let member = cluster
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&cluster.me().id)
            .is_some();
        if member && cluster.raft().metrics().borrow().current_leader.is_some() {
            let _ = cluster
                .write(Command::RegisterNode(cluster.me().clone()))
                .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Runs a node — Raft, the admin API on the same mTLS listener, the audit
/// log, the HTTP endpoints and the policy push — until SIGINT or SIGTERM
/// (own multi-threaded tokio runtime).
pub fn run(config: NodeConfig) -> Result<(), NodeStartError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(NodeStartError::Runtime)?;
    rt.block_on(async move {
        let admin = config.admin.clone();
        let (stop, stop_rx) = watch::channel(false);
        let mut parts = None;
        let node = start_with(config, |cluster, cfg, routes| {
            parts = Some(start_admin(cluster, &admin, &cfg.data_dir, routes, stop_rx));
        })
        .await?;
        let parts = match parts {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                node.shutdown().await;
                return Err(e.into());
            }
            None => unreachable!("start_with calls its hook before returning Ok"),
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(NodeStartError::Runtime)?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop.send(true);
        for t in parts.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        node.shutdown().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_default_and_unknown_keys_are_refused() {
        assert_eq!(NodeConfig::from_toml("").unwrap(), NodeConfig::default());
        let c = NodeConfig::from_toml("id = 3\n[raft]\nheartbeat_interval_ms = 20\n").unwrap();
        assert_eq!((c.id, c.raft.heartbeat_interval_ms), (3, 20));
        assert!(NodeConfig::from_toml("idd = 3").is_err());
        assert!(NodeConfig::default().raft_config().is_ok());
    }
}
