//! Server side of the Raft transport. Only peers presenting a node
//! certificate of the cluster CA (principal [`NODE_PRINCIPAL`]) may call it;
//! operators use the admin API.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::auth::principal_of;
use crate::certs::NODE_PRINCIPAL;
use crate::cluster::{Cluster, ClusterError, ReadStateRequest};
use crate::pb::raft::raft_service_server::{RaftService, RaftServiceServer};
use crate::pb::raft::{RaftReply, RaftRequest};
use crate::types::{Command, NodeHeartbeat, NodeId, NodeInfo};

use super::RAFT_MESSAGE_BYTES_MAX;

/// The tonic service handed to the node's gRPC server.
pub struct RaftServer {
    cluster: Arc<Cluster>,
}

impl RaftServer {
    /// The service, with message size limits applied.
    pub fn service(cluster: Arc<Cluster>) -> RaftServiceServer<RaftServer> {
        RaftServiceServer::new(RaftServer { cluster })
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }
}

fn authorize(req: &Request<RaftRequest>) -> Result<(), Status> {
    match principal_of(req) {
        Ok(p) if p == NODE_PRINCIPAL => Ok(()),
        Ok(p) => Err(Status::permission_denied(format!(
            "principal {p:?} may not call the Raft service: only cluster nodes (certificate CN {NODE_PRINCIPAL:?}) may; use the admin API"
        ))),
        Err(e) => Err(Status::unauthenticated(format!(
            "the Raft service needs a client certificate of the cluster CA: {e}"
        ))),
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftRequest>) -> Result<T, Status> {
    authorize(&req)?;
    serde_json::from_slice(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

fn reply<T: Serialize, E: Serialize>(res: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    let internal = |e: serde_json::Error| Status::internal(format!("cannot encode reply: {e}"));
    Ok(Response::new(match res {
        Ok(v) => RaftReply {
            data: serde_json::to_vec(&v).map_err(internal)?,
            error: Vec::new(),
        },
        Err(e) => RaftReply {
            data: Vec::new(),
            error: serde_json::to_vec(&e).map_err(internal)?,
        },
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        reply(self.cluster.raft().append_entries(decode(req)?).await)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        reply(self.cluster.raft().vote(decode(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        reply(self.cluster.raft().install_snapshot(decode(req)?).await)
    }

    async fn client_write(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let cmd: Command = decode(req)?;
        reply(self.cluster.write_local(cmd).await)
    }

    async fn heartbeat(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let hb: NodeHeartbeat = decode(req)?;
        reply(self.cluster.heartbeat(&hb))
    }

    async fn join(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let node: NodeInfo = decode(req)?;
        reply(self.cluster.join_local(node).await)
    }

    async fn read_state(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let r: ReadStateRequest = decode(req)?;
        if r.linearizable {
            reply(self.cluster.read_state_local().await)
        } else {
            reply(Ok::<_, ClusterError>(self.cluster.view().cluster_state()))
        }
    }

    async fn status(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let () = decode(req)?;
        reply(Ok::<_, ClusterError>(self.cluster.status()))
    }

    async fn elect(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let () = decode(req)?;
        reply(
            self.cluster
                .raft()
                .trigger()
                .elect()
                .await
                .map_err(|e| ClusterError::Fatal {
                    reason: e.to_string(),
                }),
        )
    }

    async fn remove_member(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let id: NodeId = decode(req)?;
        reply(self.cluster.remove_member_local(id).await)
    }
}
