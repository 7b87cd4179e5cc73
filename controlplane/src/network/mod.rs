//! Raft transport over tonic (HTTP/2 + mTLS via rustls): the client side used
//! by openraft ([`NetworkFactory`]) and by the cluster logic ([`PeerPool`]),
//! and the server side ([`server::RaftServer`]).
//!
//! Payloads are serde JSON inside the protobuf envelope of `proto/raft.proto`.

pub mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::{RaftReply, RaftRequest};
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Time allowed to establish a connection to a peer.
pub const CONNECT_TIMEOUT_MS: u64 = 200;
/// Default deadline of a non-Raft peer call (forwarded write, join, read).
pub const PEER_CALL_TIMEOUT_MS: u64 = 2_000;
/// Most peer channels kept open.
pub const PEER_CHANNELS_MAX: usize = 256;
/// Largest message accepted on the Raft service (snapshots included).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;

/// The RPCs of `RaftService`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    ClientWrite,
    Heartbeat,
    Join,
    ReadState,
    Status,
    Elect,
    RemoveMember,
}

/// A peer call failed below the application (connect, TLS, HTTP/2, timeout).
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    #[error("invalid peer address {addr:?}: use host:port")]
    BadAddress { addr: String },
    #[error("TLS configuration rejected for {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("peer {addr} unreachable: {status}")]
    Unreachable { addr: String, status: tonic::Status },
    #[error("peer {addr} answered {status}")]
    Status { addr: String, status: tonic::Status },
    #[error("peer {addr} did not answer within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    #[error("cannot encode or decode a peer message: {0}")]
    Codec(String),
}

impl PeerCallError {
    /// Whether the peer could not be reached at all (as opposed to answering).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            PeerCallError::Unreachable { .. } | PeerCallError::Timeout { .. }
        )
    }
}

/// Cached mTLS channels to peers, keyed by address.
pub struct PeerPool {
    tls: ClientTlsConfig,
    channels: Mutex<HashMap<String, Channel>>,
}

impl PeerPool {
    /// A pool whose channels present our certificate and trust the cluster CA.
    pub fn new(tls: ClientTlsConfig) -> Arc<Self> {
        Arc::new(PeerPool {
            tls,
            channels: Mutex::new(HashMap::new()),
        })
    }

    fn channel(&self, addr: &str) -> Result<Channel, PeerCallError> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|_| PeerCallError::BadAddress {
                addr: addr.to_string(),
            })?
            .tls_config(self.tls.clone())
            .map_err(|e| PeerCallError::Tls {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2));
        let ch = ep.connect_lazy();
        if map.len() >= PEER_CHANNELS_MAX {
            map.clear();
        }
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Calls `rpc` on the peer at `addr` with a JSON request; the peer answers
    /// `Ok(T)` or its application error `E`.
    pub async fn call<Q: Serialize, T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        addr: &str,
        rpc: Rpc,
        req: &Q,
        timeout: Duration,
    ) -> Result<Result<T, E>, PeerCallError> {
        let data = serde_json::to_vec(req).map_err(|e| PeerCallError::Codec(e.to_string()))?;
        let mut client = RaftServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let mut request = tonic::Request::new(RaftRequest { data });
        request.set_timeout(timeout);
        let fut = async move {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
                Rpc::ClientWrite => client.client_write(request).await,
                Rpc::Heartbeat => client.heartbeat(request).await,
                Rpc::Join => client.join(request).await,
                Rpc::ReadState => client.read_state(request).await,
                Rpc::Status => client.status(request).await,
                Rpc::Elect => client.elect(request).await,
                Rpc::RemoveMember => client.remove_member(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, fut).await {
            Err(_) => {
                return Err(PeerCallError::Timeout {
                    addr: addr.to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
            Ok(Err(status)) => {
                let addr = addr.to_string();
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                        PeerCallError::Unreachable { addr, status }
                    }
                    _ => PeerCallError::Status { addr, status },
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        decode_reply(&reply)
    }
}

fn decode_reply<T: DeserializeOwned, E: DeserializeOwned>(
    reply: &RaftReply,
) -> Result<Result<T, E>, PeerCallError> {
    let codec = |e: serde_json::Error| PeerCallError::Codec(e.to_string());
    if reply.error.is_empty() {
        Ok(Ok(serde_json::from_slice(&reply.data).map_err(codec)?))
    } else {
        Ok(Err(serde_json::from_slice(&reply.error).map_err(codec)?))
    }
}

/// openraft's factory of per-peer connections.
#[derive(Clone)]
pub struct NetworkFactory {
    pool: Arc<PeerPool>,
    backoff: Duration,
}

impl NetworkFactory {
    /// `backoff`: pause before retrying an unreachable peer. Keep it near the
    /// heartbeat interval: a restarted peer must hear from the leader before
    /// its own election timer fires, or it campaigns needlessly.
    pub fn new(pool: Arc<PeerPool>, backoff: Duration) -> Self {
        NetworkFactory { pool, backoff }
    }
}

/// openraft's connection to one peer.
pub struct NetworkConnection {
    pool: Arc<PeerPool>,
    backoff: Duration,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        NetworkConnection {
            pool: self.pool.clone(),
            backoff: self.backoff,
            target,
            addr: node.control_addr.clone(),
        }
    }
}

impl NetworkConnection {
    async fn raft_call<Q: Serialize, T: DeserializeOwned, E>(
        &self,
        rpc: Rpc,
        req: &Q,
        option: &RPCOption,
    ) -> Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
        RaftError<NodeId, E>: DeserializeOwned,
    {
        match self
            .pool
            .call::<Q, T, RaftError<NodeId, E>>(&self.addr, rpc, req, option.hard_ttl())
            .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e @ PeerCallError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for NetworkConnection {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.backoff))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.raft_call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.raft_call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.raft_call(Rpc::Vote, &rpc, &option).await
    }
}
