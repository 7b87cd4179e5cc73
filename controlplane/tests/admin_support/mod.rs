//! A single control-plane node with the admin surface on loopback, for the
//! admin_* and policy_* tests: Raft + admin gRPC on 127.0.0.1:<ephemeral>,
//! HTTP endpoints on another ephemeral port, data and certificates in a
//! temporary directory removed on drop. `msctl` runs as a real process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::certs::{self, CertPair, DevCerts};
use controlplane::grpc::{start_admin, AdminConfig};
use controlplane::node::{start_with, NodeConfig, RunningNode};
use controlplane::pb::admin::admin_client::AdminClient;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

pub const MSCTL: &str = env!("CARGO_BIN_EXE_msctl");
/// Longest wait for the node to elect itself and register.
pub const READY_WAIT_MAX: Duration = Duration::from_secs(20);

pub struct TestNode {
    pub id: u64,
    pub dir: Arc<tempfile::TempDir>,
    pub addr: SocketAddr,
    pub http: SocketAddr,
    pub audit: PathBuf,
    pub certs: DevCerts,
    node: Option<RunningNode>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    /// Starts node 1 and waits until it leads and is registered.
    pub async fn start(data_ifaces: Vec<String>) -> TestNode {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let node = TestNode::start_member(&dir, 1, None, data_ifaces).await;
        node.wait_ready(&[1], Some(1)).await;
        node
    }

    /// Starts `n` nodes (ids 1..=n, node 1 bootstraps, the others join it),
    /// node i with `data_ifaces[i - 1]`, and waits until every node sees
    /// all members registered and a leader.
    pub async fn start_cluster(data_ifaces: Vec<Vec<String>>) -> Vec<TestNode> {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let ids: Vec<u64> = (1..=data_ifaces.len() as u64).collect();
        let mut nodes: Vec<TestNode> = Vec::new();
        for (i, ifaces) in data_ifaces.into_iter().enumerate() {
            let join = nodes.first().map(|n| n.addr.to_string());
            nodes.push(TestNode::start_member(&dir, i as u64 + 1, join, ifaces).await);
        }
        for n in &nodes {
            n.wait_ready(&ids, None).await;
        }
        nodes
    }

    async fn start_member(
        dir: &Arc<tempfile::TempDir>,
        id: u64,
        join: Option<String>,
        data_ifaces: Vec<String>,
    ) -> TestNode {
        let cert_dir = dir.path().join("certs");
        let certs = certs::generate_dev(&cert_dir).expect("dev certs");
        let mut config = NodeConfig {
            id,
            // Port 0: the node binds a port the kernel picks and advertises
            // it, so parallel tests never race for a port chosen in advance.
            listen: "127.0.0.1:0".into(),
            data_addr: format!("127.0.0.1:{}", 21_000 + id),
            data_dir: dir.path().join(format!("n{id}")),
            cert_dir: Some(cert_dir),
            join,
            ..NodeConfig::default()
        };
        config.liveness.heartbeat_interval_ms = 50;
        config.liveness.node_timeout_ms = 1_000;
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        let admin = AdminConfig {
            http_listen: "127.0.0.1:0".into(),
            data_ifaces,
            ..AdminConfig::default()
        };
        let (stop, stop_rx) = watch::channel(false);
        let mut parts = None;
        let node = start_with(config, |cluster, cfg, routes| {
            parts = Some(
                start_admin(cluster, &admin, &cfg.data_dir, routes, stop_rx)
                    .expect("admin surface"),
            );
        })
        .await
        .expect("node starts");
        let parts = parts.expect("admin started");
        TestNode {
            id,
            dir: dir.clone(),
            addr: node.local_addr,
            http: parts.http_addr.expect("http enabled"),
            audit: parts.audit_path,
            certs,
            node: Some(node),
            stop,
            tasks: parts.tasks,
        }
    }

    /// Waits until this node has applied the registration of every node in
    /// `ids` and knows a leader (`leader`, if given).
    pub async fn wait_ready(&self, ids: &[u64], leader: Option<u64>) {
        let node = self.node.as_ref().expect("running");
        let deadline = Instant::now() + READY_WAIT_MAX;
        loop {
            let registered = node
                .cluster
                .view()
                .read(|d| ids.iter().all(|id| d.state.nodes.contains_key(id)));
            let current = node.cluster.raft().metrics().borrow().current_leader;
            let leads = match leader {
                Some(l) => current == Some(l),
                None => current.is_some(),
            };
            if registered && leads {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not become ready",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The node's current view of the Raft leader.
    pub fn leader(&self) -> Option<u64> {
        self.node
            .as_ref()?
            .cluster
            .raft()
            .metrics()
            .borrow()
            .current_leader
    }

    pub fn cluster(&self) -> &controlplane::cluster::Cluster {
        &self.node.as_ref().expect("running").cluster
    }

    pub fn cert_dir(&self) -> &Path {
        &self.certs.dir
    }

    /// An admin client presenting `identity`.
    pub async fn client_as(
        &self,
        identity: &CertPair,
        ca: &Path,
    ) -> Result<AdminClient<Channel>, String> {
        let tls = controlplane::auth::client_tls_config(identity, ca).map_err(|e| e.to_string())?;
        let channel = Endpoint::from_shared(format!("https://{}", self.addr))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(AdminClient::new(channel))
    }

    /// An admin client with the dev `admin` (superuser) certificate.
    pub async fn admin(&self) -> AdminClient<Channel> {
        self.client_as(&self.certs.admin, &self.certs.ca.cert)
            .await
            .expect("admin client connects")
    }

    /// Runs msctl against this node as `identity` (a real process).
    pub async fn msctl_as(&self, identity: &CertPair, args: &[&str]) -> Output {
        let mut cmd = Command::new(MSCTL);
        cmd.arg("--endpoint")
            .arg(self.addr.to_string())
            .arg("--cert")
            .arg(&identity.cert)
            .arg("--key")
            .arg(&identity.key)
            .arg("--ca")
            .arg(&self.certs.ca.cert)
            .args(args)
            .env_remove("MSCTL_ENDPOINT");
        tokio::task::spawn_blocking(move || cmd.output().expect("run msctl"))
            .await
            .expect("msctl thread")
    }

    pub async fn msctl(&self, args: &[&str]) -> Output {
        let admin = self.certs.admin.clone();
        self.msctl_as(&admin, args).await
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

/// A free loopback TCP port (bound then released).
/// stdout of a successful msctl run (panics with stderr otherwise).
pub fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "msctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
