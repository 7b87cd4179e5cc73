//! Assembles the admin surface of a node beside the Raft service: the admin
//! gRPC service (as tonic routes for the node's mTLS listener), the audit
//! log, the HTTP endpoints and the policy push task.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{AdminDeps, AdminService};
use crate::audit::{AuditLog, AuditOpenError};
use crate::cluster::Cluster;
use crate::http::Metrics;
use crate::policy::{PolicyPusher, PolicyPusherNewError};

/// Default address of `/metrics`, `/health`, `/ready`.
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:7451";
/// Audit log file name inside the data directory (default location).
pub const AUDIT_LOG_FILE_NAME: &str = "audit.log";

/// Admin-surface configuration (`[admin]` of the node's TOML); every field
/// has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Principals allowed every admin call (default: the dev `admin` client
    /// and the nodes' own certificate).
    pub superusers: Vec<String>,
    /// Address of the HTTP endpoints; empty = no HTTP server.
    pub http_listen: String,
    /// Data interfaces whose pinned XDP maps this node writes (the data
    /// plane attaches the program; the push is retried until it has).
    pub data_ifaces: Vec<String>,
    /// Audit log path (default: `<data_dir>/audit.log`).
    pub audit_log: Option<PathBuf>,
    /// Tell the local data plane about stream changes through its command
    /// ring (see `dataplane_link`); `memstreamer node` turns it on.
    pub dataplane_commands: bool,
    /// The local data plane's ring directory (its `shm_dir`; default:
    /// shm-ring's default directories).
    pub dataplane_shm_dir: Option<PathBuf>,
    /// The local data plane's counters file: `/metrics` then shows its
    /// counters as `ms_dp_*` (`memstreamer node` sets it).
    pub dataplane_counters: Option<PathBuf>,
    /// Streams the local data plane's configuration defines (`[[streams]]`): registered in
    /// the cluster metadata at start as `stream-<id>` (RF 1, idempotent), so ids never clash
    /// (`memstreamer node` passes them; see `dataplane_link::register_config_streams`).
    pub dataplane_streams: Vec<ConfigStream>,
}

/// A stream a data plane's configuration defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigStream {
    pub id: u32,
    pub partitions: u16,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            superusers: crate::auth::default_superusers(),
            http_listen: HTTP_LISTEN_DEFAULT.to_string(),
            data_ifaces: Vec::new(),
            audit_log: None,
            dataplane_commands: false,
            dataplane_shm_dir: None,
            dataplane_counters: None,
            dataplane_streams: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminStartError {
    #[error(transparent)]
    Audit(#[from] AuditOpenError),
    #[error(transparent)]
    Ifaces(#[from] PolicyPusherNewError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpBindError),
    #[error("http_listen = {addr:?} is not an ip:port address: fix [admin] http_listen")]
    HttpAddr { addr: String },
}

/// The running admin surface.
pub struct AdminParts {
    pub metrics: Arc<Metrics>,
    pub audit_path: PathBuf,
    /// Where the HTTP endpoints listen (useful with port 0).
    pub http_addr: Option<SocketAddr>,
    /// Policy push and HTTP tasks; they end when `shutdown` turns true.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Starts the admin surface of `cluster` (call inside a tokio runtime) and
/// adds the admin service to the node's gRPC `routes`.
pub fn start_admin(
    cluster: &Arc<Cluster>,
    config: &AdminConfig,
    data_dir: &Path,
    routes: &mut tonic::service::RoutesBuilder,
    shutdown: watch::Receiver<bool>,
) -> Result<AdminParts, AdminStartError> {
    let audit_path = config
        .audit_log
        .clone()
        .unwrap_or_else(|| data_dir.join(AUDIT_LOG_FILE_NAME));
    let audit = Arc::new(AuditLog::open(&audit_path)?);
    cluster.set_audit(audit.clone());
    let metrics = Arc::new(Metrics::default());
    let pusher = PolicyPusher::new(&config.data_ifaces)?;
    let mut tasks = Vec::new();
    let mut http_addr = None;
    if !config.http_listen.is_empty() {
        let addr: SocketAddr =
            config
                .http_listen
                .parse()
                .map_err(|_| AdminStartError::HttpAddr {
                    addr: config.http_listen.clone(),
                })?;
        let bind_err = |source| crate::http::HttpBindError { addr, source };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        http_addr = Some(std_listener.local_addr().map_err(bind_err)?);
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?;
        let cl = cluster.clone();
        let m = metrics.clone();
        let dp_counters = config.dataplane_counters.clone();
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::http::serve(listener, cl, m, dp_counters, stopped).await {
                tracing::error!("HTTP endpoints stopped: {e}");
            }
        }));
    }
    if config.dataplane_commands {
        let (dir, me) = (config.dataplane_shm_dir.clone(), cluster.me().id);
        tasks.push(tokio::spawn(crate::dataplane_link::run(
            cluster.clone(),
            crate::dataplane_link::DataplaneLink::new(dir.clone(), me),
            crate::replicas::StatusReader::new(dir, me),
            shutdown.clone(),
        )));
        if !config.dataplane_streams.is_empty() {
            tasks.push(tokio::spawn(
                crate::dataplane_link::register_config_streams(
                    cluster.clone(),
                    config.dataplane_streams.clone(),
                    shutdown.clone(),
                ),
            ));
        }
    }
    if !config.data_ifaces.is_empty() {
        tasks.push(tokio::spawn(crate::policy::run(
            cluster.view().clone(),
            pusher,
            metrics.clone(),
            shutdown,
        )));
    }
    let service = AdminService::new(AdminDeps {
        cluster: cluster.clone(),
        superusers: config.superusers.clone(),
        audit,
        metrics: metrics.clone(),
    });
    routes.add_service(service.into_server());
    Ok(AdminParts {
        metrics,
        audit_path,
        http_addr,
        tasks,
    })
}
