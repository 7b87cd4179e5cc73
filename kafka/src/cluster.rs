//! Cluster metadata as the Kafka listener sees it: topics are the control plane's streams (by
//! name), brokers are its nodes, partition leaders/epochs/replicas/ISR are its partition
//! assignments, and ACLs are its ACLs. Read over the control plane's admin gRPC API with the
//! node's own certificate, cached for [`METADATA_TTL`]; topic creation and deletion go
//! through the same API (Raft), after the listener has checked the Kafka client's ACLs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::auth::{authorize, client_tls_config, Decision, Resource};
use controlplane::certs::{CertPair, CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE};
use controlplane::grpc::convert::acl_from_pb;
use controlplane::pb::admin as pb;
use controlplane::pb::admin::admin_client::AdminClient;
use controlplane::types::{Acl, Operation};
use storage_nvme::RetentionPolicy;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

/// How long a metadata snapshot is served before the next request refreshes it.
pub const METADATA_TTL: Duration = Duration::from_millis(500);
/// Timeout of each control-plane call.
pub const CONTROL_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams described per refresh at most (Metadata lists no more topics than this).
pub const TOPICS_MAX: usize = 10_000;

/// One partition's placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMeta {
    pub index: u16,
    /// Leader node id (0: none).
    pub leader: u64,
    pub leader_epoch: u64,
    pub replicas: Vec<u64>,
    pub isr: Vec<u64>,
}

/// A topic: a stream of the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub stream_id: u32,
    pub partitions: Vec<PartitionMeta>,
    pub retention: RetentionPolicy,
}

/// A broker: a node of the cluster and where its Kafka listener is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerMeta {
    pub id: u64,
    pub host: String,
    pub port: u16,
}

/// A snapshot of everything Kafka requests consult.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub self_id: u64,
    pub topics: BTreeMap<String, TopicMeta>,
    pub brokers: Vec<BrokerMeta>,
    pub acls: Vec<Acl>,
}

impl ClusterView {
    /// Whether `principal` may `op` the topic (stream) `name`. Kafka principals have no
    /// superusers: only ACLs grant.
    pub fn authorize(&self, principal: &str, op: Operation, name: &str) -> Decision {
        authorize(&self.acls, &[], principal, op, Resource::Stream(name))
    }
}

/// Where to reach the control plane and who this node is.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// The local control plane's admin address (host:port).
    pub endpoint: String,
    /// Certificate directory of the node (`node.pem`, `node.key`, `ca.pem`).
    pub cert_dir: PathBuf,
    /// This node's id.
    pub node_id: u64,
    /// The address advertised for this node's Kafka listener.
    pub advertised_host: String,
    pub advertised_port: u16,
}

/// Control-plane client with a cached [`ClusterView`].
pub struct Metadata {
    cfg: ControlConfig,
    client: Mutex<Option<AdminClient<Channel>>>,
    cached: std::sync::Mutex<Option<(Instant, Arc<ClusterView>)>>,
}

/// A control-plane call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the control plane at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("control plane: {0}")]
    Status(#[from] tonic::Status),
}

impl Metadata {
    pub fn new(cfg: ControlConfig) -> Metadata {
        Metadata {
            cfg,
            client: Mutex::new(None),
            cached: std::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    async fn client(&self) -> Result<AdminClient<Channel>, ControlError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let endpoint = self.cfg.endpoint.clone();
        let fail = |reason: String| ControlError::Connect {
            endpoint: endpoint.clone(),
            reason,
        };
        let dir = &self.cfg.cert_dir;
        let identity = CertPair {
            cert: dir.join(NODE_CERT_FILE),
            key: dir.join(NODE_KEY_FILE),
        };
        let tls = client_tls_config(&identity, &dir.join(CA_CERT_FILE))
            .map_err(|e| fail(e.to_string()))?;
        let channel = Endpoint::from_shared(format!("https://{endpoint}"))
            .map_err(|e| fail(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| fail(e.to_string()))?
            .connect_timeout(CONTROL_CALL_TIMEOUT)
            .timeout(CONTROL_CALL_TIMEOUT)
            .connect()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let c = AdminClient::new(channel);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The cached view, refreshed when older than [`METADATA_TTL`].
    pub async fn view(&self) -> Result<Arc<ClusterView>, ControlError> {
        if let Some((at, v)) = self.cached.lock().expect("metadata lock").as_ref() {
            if at.elapsed() < METADATA_TTL {
                return Ok(v.clone());
            }
        }
        self.refresh().await
    }

    /// Reads the view from the control plane now.
    pub async fn refresh(&self) -> Result<Arc<ClusterView>, ControlError> {
        let result = self.read_view().await;
        if result.is_err() {
            // A broken channel is rebuilt on the next call.
            *self.client.lock().await = None;
        }
        let view = Arc::new(result?);
        *self.cached.lock().expect("metadata lock") = Some((Instant::now(), view.clone()));
        Ok(view)
    }

    async fn read_view(&self) -> Result<ClusterView, ControlError> {
        let mut c = self.client().await?;
        let streams = c
            .list_streams(pb::ListStreamsRequest {})
            .await?
            .into_inner()
            .streams;
        let mut topics = BTreeMap::new();
        for s in streams.into_iter().take(TOPICS_MAX) {
            let d = c
                .describe_stream(pb::DescribeStreamRequest {
                    name: s.name.clone(),
                })
                .await?
                .into_inner();
            topics.insert(s.name.clone(), topic_meta(&s, &d.partitions));
        }
        let nodes = c
            .list_nodes(pb::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        let acls = c
            .list_acls(pb::ListAclsRequest {
                principal: String::new(),
            })
            .await?
            .into_inner()
            .acls
            .into_iter()
            .filter_map(|a| acl_from_pb(Some(a)).ok())
            .collect();
        Ok(ClusterView {
            self_id: self.cfg.node_id,
            topics,
            brokers: nodes.iter().map(|n| self.broker(n)).collect(),
            acls,
        })
    }

    /// This node's broker is its Kafka listener's advertised address; another node's is its
    /// data address's host with the same Kafka port (every node listens on the configured
    /// port; a per-node Kafka address in the node metadata is planned).
    fn broker(&self, n: &pb::Node) -> BrokerMeta {
        let host = if n.id == self.cfg.node_id {
            self.cfg.advertised_host.clone()
        } else {
            n.data_addr
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| {
                    n.data_addr
                        .rsplit_once(':')
                        .map_or(n.data_addr.clone(), |(h, _)| h.to_string())
                })
        };
        BrokerMeta {
            id: n.id,
            host,
            port: self.cfg.advertised_port,
        }
    }

    /// Creates a stream (topic) through the control plane.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<(), ControlError> {
        let mut c = self.client().await?;
        c.create_stream(pb::CreateStreamRequest {
            name: name.to_string(),
            partitions,
            replication_factor,
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// Deletes a stream (topic) through the control plane.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ControlError> {
        let mut c = self.client().await?;
        c.delete_stream(pb::DeleteStreamRequest {
            name: name.to_string(),
        })
        .await?;
        Ok(())
    }
}

fn topic_meta(s: &pb::Stream, parts: &[pb::PartitionAssignment]) -> TopicMeta {
    let mut partitions: Vec<PartitionMeta> = parts
        .iter()
        .filter_map(|p| {
            Some(PartitionMeta {
                index: u16::try_from(p.partition).ok()?,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
            })
        })
        .collect();
    partitions.sort_by_key(|p| p.index);
    TopicMeta {
        name: s.name.clone(),
        stream_id: s.id,
        partitions,
        retention: RetentionPolicy {
            total_bytes_max: (s.retention_bytes > 0).then_some(s.retention_bytes),
            age_ns_max: (s.retention_ms > 0).then(|| s.retention_ms.saturating_mul(1_000_000)),
        },
    }
}
