//! The admin gRPC service (`proto/admin.proto`).
//!
//! Every call: the principal is taken from the caller's client certificate
//! (UNAUTHENTICATED without one), the call is authorized against the ACLs of
//! the applied state and the superusers (PERMISSION_DENIED otherwise), and
//! every mutation and every refusal is written to the audit log before the
//! answer. Mutations go through [`Cluster`]: committed by the Raft leader
//! (`client_write`, answered once applied there), forwarded by a follower.
//! Calls only the leader can serve (leadership transfer) are answered by a
//! follower with FAILED_PRECONDITION naming the leader's address in the
//! message and in the `x-ms-leader` metadata key (msctl retries there).
//! Reads are served from this node's applied state (a follower may lag by
//! the replication delay). A missing, expired or foreign-CA client
//! certificate does not fail the TLS handshake: the node's listener
//! (`auth::acceptor`) judges it after the handshake, and every call on that
//! connection is answered UNAUTHENTICATED with what to do, and audited.
//!
//! Requests larger than [`ADMIN_REQUEST_BYTES_MAX`] are refused by tonic
//! before decoding (OUT_OF_RANGE).

pub mod convert;
pub mod partitions;
pub mod serve;

pub use serve::{start_admin, AdminConfig, AdminParts, AdminStartError};

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::audit::{AuditLog, AuditResult};
use crate::auth::{authorize, principal_of, Decision, Resource};
use crate::cluster::{Cluster, ClusterError};
use crate::http::Metrics;
use crate::pb::admin as pb;
use crate::pb::admin::admin_server::{Admin, AdminServer};
use crate::store::StateView;
use crate::types::{
    Command, CommandResponse, NodeId, NodeInfo, NodeLiveness, Operation, Principal, Stream,
    TypeConfig, ADDR_LENGTH_MAX,
};
use convert::*;

/// Largest admin request accepted (an ACL with 64 CIDRs is ~3 KiB).
pub const ADMIN_REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Longest wait for a leadership transfer to show a new leader.
pub const TRANSFER_WAIT_MAX: Duration = Duration::from_secs(10);
/// Metadata key naming the leader's control address on a redirect.
pub const LEADER_METADATA_KEY: &str = "x-ms-leader";

/// What the admin service needs from the running node.
pub struct AdminDeps {
    pub cluster: Arc<Cluster>,
    /// Principals allowed everything.
    pub superusers: Vec<String>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
}

/// The admin service of one node.
pub struct AdminService {
    deps: AdminDeps,
}

impl AdminService {
    pub fn new(deps: AdminDeps) -> AdminService {
        AdminService { deps }
    }

    /// The tonic server with the request size limit applied.
    pub fn into_server(self) -> AdminServer<AdminService> {
        AdminServer::new(self)
            .max_decoding_message_size(ADMIN_REQUEST_BYTES_MAX)
            .max_encoding_message_size(crate::grpc::REPLY_BYTES_MAX)
    }

    fn raft(&self) -> &Raft<TypeConfig> {
        self.deps.cluster.raft()
    }

    fn state(&self) -> &StateView {
        self.deps.cluster.view()
    }

    fn audit(&self, principal: &str, action: &str, resource: &str, result: &AuditResult) {
        if let Err(e) = self.deps.audit.record(principal, action, resource, result) {
            // The call itself already happened; losing the audit line is
            // reported loudly but does not turn a done change into an error.
            tracing::error!("{e}");
        }
    }

    /// Authenticates and authorizes; audits and counts refusals.
    fn check<T>(
        &self,
        req: &Request<T>,
        action: &str,
        op: Operation,
        resource: Resource<'_>,
    ) -> Result<String, Status> {
        self.deps
            .metrics
            .admin_requests
            .fetch_add(1, Ordering::Relaxed);
        let principal = match principal_of(req) {
            Ok(p) => p,
            Err(e) => {
                self.deps
                    .metrics
                    .admin_denied
                    .fetch_add(1, Ordering::Relaxed);
                self.audit(
                    "-",
                    action,
                    &resource.describe(),
                    &AuditResult::Denied(e.to_string()),
                );
                return Err(Status::unauthenticated(e.to_string()));
            }
        };
        let decision = self.state().read(|d| {
            authorize(
                &d.state.acls,
                &self.deps.superusers,
                &principal,
                op,
                resource,
            )
        });
        match decision {
            Decision::Allow => Ok(principal),
            Decision::Deny(why) => {
                self.deps
                    .metrics
                    .admin_denied
                    .fetch_add(1, Ordering::Relaxed);
                self.audit(
                    &principal,
                    action,
                    &resource.describe(),
                    &AuditResult::Denied(why.clone()),
                );
                Err(Status::permission_denied(why))
            }
        }
    }

    /// Status telling the caller where the leader is.
    fn not_leader(&self, leader: Option<NodeId>, leader_node: Option<&NodeInfo>) -> Status {
        let addr = leader_node.map(|n| n.control_addr.clone()).or_else(|| {
            let m = self.raft().metrics().borrow().clone();
            let id = leader?;
            let addr = m
                .membership_config
                .nodes()
                .find(|(nid, _)| **nid == id)
                .map(|(_, n)| n.control_addr.clone());
            addr
        });
        match (leader, addr) {
            (Some(id), Some(addr)) => {
                let mut s = Status::failed_precondition(format!(
                    "this node is not the Raft leader: retry at the leader, node {id} ({addr})"
                ));
                if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                    s.metadata_mut().insert(LEADER_METADATA_KEY, v);
                }
                s
            }
            _ => Status::unavailable(
                "no Raft leader is known (election in progress or no quorum): retry in a moment",
            ),
        }
    }

    /// Proposes `cmd` through the leader (forwarded by a follower), audits
    /// the outcome, maps rejections to statuses.
    async fn propose(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        cmd: Command,
    ) -> Result<CommandResponse, Status> {
        let start = Instant::now();
        let result = match self.deps.cluster.write(cmd).await {
            Ok(resp) => {
                self.deps.metrics.apply_latency.observe(start.elapsed());
                match resp {
                    CommandResponse::Rejected(r) => Err(rejection_status(&r)),
                    other => Ok(other),
                }
            }
            Err(e) => Err(self.cluster_error(e)),
        };
        self.audit_result(principal, action, resource, &result);
        result
    }

    fn cluster_error(&self, e: ClusterError) -> Status {
        let msg = e.to_string();
        match e {
            ClusterError::NoLeader => Status::unavailable(msg),
            ClusterError::NotLeader { leader } => self.not_leader(leader, None),
            ClusterError::UnknownMember { .. } => Status::not_found(msg),
            ClusterError::Membership { .. } => Status::failed_precondition(msg),
            ClusterError::Timeout { .. } => Status::deadline_exceeded(msg),
            ClusterError::Fatal { .. } => Status::internal(msg),
            ClusterError::Invalid { .. } => Status::invalid_argument(msg),
        }
    }

    fn audit_result<T>(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        result: &Result<T, Status>,
    ) {
        let r = match result {
            Ok(_) => AuditResult::Ok,
            Err(s) => AuditResult::Error(format!("{:?}: {}", s.code(), s.message())),
        };
        self.audit(principal, action, resource, &r);
    }

    /// Refuses bad input of a mutation, with an audit line.
    fn refuse<T>(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        s: Status,
    ) -> Result<T, Status> {
        self.audit(
            principal,
            action,
            resource,
            &AuditResult::Error(format!("{:?}: {}", s.code(), s.message())),
        );
        Err(s)
    }

    fn voters(&self) -> BTreeSet<NodeId> {
        self.raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }
}

/// Largest reply (a full stream or ACL listing).
pub const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_stream(
        &self,
        req: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::CreateStreamReply>, Status> {
        let name = req.get_ref().name.clone();
        let resource = Resource::Stream(&name);
        let who = self.check(&req, "CreateStream", Operation::Create, resource)?;
        let r = req.into_inner();
        let checked = check_create(&r).and_then(|(p, rf)| {
            let mode = stream_mode(r.mode)?;
            Ok(((p, rf), mode, check_policy(&r, rf)?))
        });
        let ((partitions, replication_factor), mode, policy) = match checked {
            Ok(c) => c,
            Err(s) => return self.refuse(&who, "CreateStream", &resource.describe(), s),
        };
        let created = Stream {
            name: name.clone(),
            id: 0,
            partitions,
            replication_factor,
            retention_bytes: r.retention_bytes,
            retention_ms: r.retention_ms,
            mode,
            policy,
        };
        let resp = self
            .propose(
                &who,
                "CreateStream",
                &resource.describe(),
                Command::CreateStream {
                    name: name.clone(),
                    partitions,
                    replication_factor,
                    retention_bytes: r.retention_bytes,
                    retention_ms: r.retention_ms,
                    mode,
                    policy,
                },
            )
            .await?;
        let id = match resp {
            CommandResponse::StreamCreated { stream_id } => stream_id,
            other => {
                return Err(Status::internal(format!(
                    "unexpected state-machine answer {other:?} to CreateStream: report a bug"
                )))
            }
        };
        let stream = Some(stream_to_pb(&Stream { id, ..created }));
        Ok(Response::new(pb::CreateStreamReply { stream }))
    }

    async fn list_streams(
        &self,
        req: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsReply>, Status> {
        self.deps
            .metrics
            .admin_requests
            .fetch_add(1, Ordering::Relaxed);
        let principal = principal_of(&req).map_err(|e| {
            self.deps
                .metrics
                .admin_denied
                .fetch_add(1, Ordering::Relaxed);
            self.audit(
                "-",
                "ListStreams",
                "stream:*",
                &AuditResult::Denied(e.to_string()),
            );
            Status::unauthenticated(e.to_string())
        })?;
        // Only the streams the caller may describe.
        let streams = self.state().read(|d| {
            d.state
                .streams
                .values()
                .filter(|s| {
                    authorize(
                        &d.state.acls,
                        &self.deps.superusers,
                        &principal,
                        Operation::Describe,
                        Resource::Stream(&s.name),
                    )
                    .is_allowed()
                })
                .map(stream_to_pb)
                .collect()
        });
        Ok(Response::new(pb::ListStreamsReply { streams }))
    }

    async fn describe_stream(
        &self,
        req: Request<pb::DescribeStreamRequest>,
    ) -> Result<Response<pb::DescribeStreamReply>, Status> {
        let name = req.get_ref().name.clone();
        check_name("stream name", &name)?;
        self.check(
            &req,
            "DescribeStream",
            Operation::Describe,
            Resource::Stream(&name),
        )?;
        self.state().read(|d| {
            let s = d.state.streams.get(&name).ok_or_else(|| {
                Status::not_found(format!(
                    "stream {name:?} does not exist: `msctl stream list` shows the names"
                ))
            })?;
            let partitions = d
                .state
                .assignments
                .get(&s.id)
                .map(|v| v.iter().map(assignment_to_pb).collect())
                .unwrap_or_default();
            Ok(Response::new(pb::DescribeStreamReply {
                stream: Some(stream_to_pb(s)),
                partitions,
            }))
        })
    }

    async fn delete_stream(
        &self,
        req: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamReply>, Status> {
        let name = req.get_ref().name.clone();
        let resource = Resource::Stream(&name);
        let who = self.check(&req, "DeleteStream", Operation::Delete, resource)?;
        if let Err(s) = check_name("stream name", &name) {
            return self.refuse(&who, "DeleteStream", &resource.describe(), s);
        }
        self.propose(
            &who,
            "DeleteStream",
            &resource.describe(),
            Command::DeleteStream { name: name.clone() },
        )
        .await?;
        Ok(Response::new(pb::DeleteStreamReply {}))
    }

    async fn set_unclean_election(
        &self,
        req: Request<pb::SetUncleanElectionRequest>,
    ) -> Result<Response<pb::SetUncleanElectionReply>, Status> {
        let name = req.get_ref().name.clone();
        let resource = Resource::Stream(&name);
        let who = self.check(&req, "SetUncleanElection", Operation::Alter, resource)?;
        if let Err(s) = check_name("stream name", &name) {
            return self.refuse(&who, "SetUncleanElection", &resource.describe(), s);
        }
        let enabled = req.get_ref().enabled;
        let action = if enabled {
            "SetUncleanElection(on: may lose acknowledged records)"
        } else {
            "SetUncleanElection(off)"
        };
        self.propose(
            &who,
            action,
            &resource.describe(),
            Command::SetUncleanElection {
                name: name.clone(),
                enabled,
            },
        )
        .await?;
        Ok(Response::new(pb::SetUncleanElectionReply {}))
    }

    async fn describe_partition(
        &self,
        req: Request<pb::DescribePartitionRequest>,
    ) -> Result<Response<pb::DescribePartitionReply>, Status> {
        let name = req.get_ref().name.clone();
        check_name("stream name", &name)?;
        self.check(
            &req,
            "DescribePartition",
            Operation::Describe,
            Resource::Stream(&name),
        )?;
        // Replica reports live on the Raft leader only.
        let m = self.raft().metrics().borrow().clone();
        if m.current_leader != Some(m.id) {
            return Err(self.not_leader(m.current_leader, None));
        }
        let cluster = &self.deps.cluster;
        let reports = cluster
            .cluster_replicas()
            .fresh(cluster.report_max_age(), Instant::now());
        let partition = req.get_ref().partition;
        self.state()
            .read(|d| partitions::describe(&d.state, &reports, &name, partition))
            .map(Response::new)
    }

    async fn resolve_stream(
        &self,
        req: Request<pb::ResolveStreamRequest>,
    ) -> Result<Response<pb::ResolveStreamReply>, Status> {
        let name = req.get_ref().name.clone();
        check_name("stream name", &name)?;
        self.check(
            &req,
            "ResolveStream",
            Operation::Describe,
            Resource::Stream(&name),
        )?;
        self.state()
            .read(|d| partitions::resolve(&d.state, &name))
            .map(Response::new)
    }

    async fn put_acl(
        &self,
        req: Request<pb::PutAclRequest>,
    ) -> Result<Response<pb::PutAclReply>, Status> {
        let who = self.check(&req, "PutAcl", Operation::ClusterAdmin, Resource::Cluster)?;
        let acl = req.into_inner().acl;
        let resource = acl
            .as_ref()
            .map(|a| format!("acl:{}:{}", a.principal, a.resource_pattern))
            .unwrap_or_else(|| "acl:-".to_string());
        let acl = match acl_from_pb(acl) {
            Ok(a) => a,
            Err(s) => return self.refuse(&who, "PutAcl", &resource, s),
        };
        self.propose(&who, "PutAcl", &resource, Command::PutAcl(acl))
            .await?;
        Ok(Response::new(pb::PutAclReply {}))
    }

    async fn list_acls(
        &self,
        req: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsReply>, Status> {
        self.check(&req, "ListAcls", Operation::Describe, Resource::Cluster)?;
        let principal = req.into_inner().principal;
        let acls = self.state().read(|d| {
            if !principal.is_empty() && !d.state.principals.contains_key(&principal) {
                return Err(Status::not_found(format!(
                    "principal {principal:?} is unknown: `msctl principal list` shows the names"
                )));
            }
            Ok(d.state
                .acls
                .iter()
                .filter(|a| principal.is_empty() || a.principal == principal)
                .map(acl_to_pb)
                .collect())
        })?;
        Ok(Response::new(pb::ListAclsReply { acls }))
    }

    async fn delete_acl(
        &self,
        req: Request<pb::DeleteAclRequest>,
    ) -> Result<Response<pb::DeleteAclReply>, Status> {
        let who = self.check(
            &req,
            "DeleteAcl",
            Operation::ClusterAdmin,
            Resource::Cluster,
        )?;
        let r = req.into_inner();
        let resource = format!("acl:{}:{}", r.principal, r.resource_pattern);
        let exists = self.state().read(|d| {
            d.state
                .acls
                .iter()
                .any(|a| a.principal == r.principal && a.resource_pattern == r.resource_pattern)
        });
        if !exists {
            let s = Status::not_found(format!(
                "no ACL of {:?} on {:?}: `msctl acl list` shows the ACLs",
                r.principal, r.resource_pattern
            ));
            return self.refuse(&who, "DeleteAcl", &resource, s);
        }
        self.propose(
            &who,
            "DeleteAcl",
            &resource,
            Command::DeleteAcl {
                principal: r.principal,
                resource_pattern: r.resource_pattern,
            },
        )
        .await?;
        Ok(Response::new(pb::DeleteAclReply {}))
    }

    async fn put_principal(
        &self,
        req: Request<pb::PutPrincipalRequest>,
    ) -> Result<Response<pb::PutPrincipalReply>, Status> {
        let who = self.check(
            &req,
            "PutPrincipal",
            Operation::ClusterAdmin,
            Resource::Cluster,
        )?;
        let name = req.into_inner().name;
        let resource = format!("principal:{name}");
        if let Err(s) = check_name("principal", &name) {
            return self.refuse(&who, "PutPrincipal", &resource, s);
        }
        self.propose(
            &who,
            "PutPrincipal",
            &resource,
            Command::PutPrincipal(Principal { name }),
        )
        .await?;
        Ok(Response::new(pb::PutPrincipalReply {}))
    }

    async fn list_principals(
        &self,
        req: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsReply>, Status> {
        self.check(
            &req,
            "ListPrincipals",
            Operation::Describe,
            Resource::Cluster,
        )?;
        let names = self
            .state()
            .read(|d| d.state.principals.keys().cloned().collect());
        Ok(Response::new(pb::ListPrincipalsReply { names }))
    }

    async fn delete_principal(
        &self,
        req: Request<pb::DeletePrincipalRequest>,
    ) -> Result<Response<pb::DeletePrincipalReply>, Status> {
        let who = self.check(
            &req,
            "DeletePrincipal",
            Operation::ClusterAdmin,
            Resource::Cluster,
        )?;
        let name = req.into_inner().name;
        let resource = format!("principal:{name}");
        if let Err(s) = check_name("principal", &name) {
            return self.refuse(&who, "DeletePrincipal", &resource, s);
        }
        self.propose(
            &who,
            "DeletePrincipal",
            &resource,
            Command::DeletePrincipal { name },
        )
        .await?;
        Ok(Response::new(pb::DeletePrincipalReply {}))
    }

    async fn put_quota(
        &self,
        req: Request<pb::PutQuotaRequest>,
    ) -> Result<Response<pb::PutQuotaReply>, Status> {
        let who = self.check(&req, "PutQuota", Operation::ClusterAdmin, Resource::Cluster)?;
        let q = req.into_inner().quota;
        let resource = format!(
            "quota:{}",
            q.as_ref().map(|q| q.principal.as_str()).unwrap_or("-")
        );
        let quota = match quota_from_pb(q) {
            Ok(q) => q,
            Err(s) => return self.refuse(&who, "PutQuota", &resource, s),
        };
        self.propose(&who, "PutQuota", &resource, Command::PutQuota(quota))
            .await?;
        Ok(Response::new(pb::PutQuotaReply {}))
    }

    async fn list_quotas(
        &self,
        req: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasReply>, Status> {
        self.check(&req, "ListQuotas", Operation::Describe, Resource::Cluster)?;
        let quotas = self.state().read(|d| {
            d.state
                .quotas
                .values()
                .map(|q| pb::Quota {
                    principal: q.principal.clone(),
                    bytes_per_s: q.bytes_per_s,
                    burst_bytes: q.burst_bytes,
                })
                .collect()
        });
        Ok(Response::new(pb::ListQuotasReply { quotas }))
    }

    async fn delete_quota(
        &self,
        req: Request<pb::DeleteQuotaRequest>,
    ) -> Result<Response<pb::DeleteQuotaReply>, Status> {
        let who = self.check(
            &req,
            "DeleteQuota",
            Operation::ClusterAdmin,
            Resource::Cluster,
        )?;
        let principal = req.into_inner().principal;
        let resource = format!("quota:{principal}");
        let exists = self
            .state()
            .read(|d| d.state.quotas.contains_key(&principal));
        if !exists {
            let s = Status::not_found(format!(
                "{principal:?} has no quota: `msctl quota list` shows the quotas"
            ));
            return self.refuse(&who, "DeleteQuota", &resource, s);
        }
        self.propose(
            &who,
            "DeleteQuota",
            &resource,
            Command::DeleteQuota { principal },
        )
        .await?;
        Ok(Response::new(pb::DeleteQuotaReply {}))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesReply>, Status> {
        self.check(&req, "ListNodes", Operation::Describe, Resource::Cluster)?;
        let m = self.raft().metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let mut nodes: Vec<pb::Node> = m
            .membership_config
            .nodes()
            .map(|(id, n)| pb::Node {
                id: *id,
                control_addr: n.control_addr.clone(),
                data_addr: n.data_addr.clone(),
                voter: voters.contains(id),
                live: true,
            })
            .collect();
        self.state().read(|d| {
            for n in &mut nodes {
                n.live = d.state.liveness.get(&n.id) != Some(&NodeLiveness::Dead);
            }
        });
        Ok(Response::new(pb::ListNodesReply { nodes }))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberReply>, Status> {
        let who = self.check(
            &req,
            "AddMember",
            Operation::ClusterAdmin,
            Resource::Cluster,
        )?;
        let r = req.into_inner();
        let resource = format!("node:{}", r.id);
        let bad_addr = |a: &str| {
            a.is_empty() || a.len() > ADDR_LENGTH_MAX || a.parse::<std::net::SocketAddr>().is_err()
        };
        if r.id == 0 || bad_addr(&r.control_addr) || bad_addr(&r.data_addr) {
            let s = Status::invalid_argument(format!(
                "a member needs an id > 0 and control/data addresses as ip:port (got id {}, \
                 control {:?}, data {:?})",
                r.id, r.control_addr, r.data_addr
            ));
            return self.refuse(&who, "AddMember", &resource, s);
        }
        let node = NodeInfo {
            id: r.id,
            control_addr: r.control_addr,
            data_addr: r.data_addr,
        };
        let start = Instant::now();
        let result = self
            .deps
            .cluster
            .join(node)
            .await
            .map_err(|e| self.cluster_error(e));
        if result.is_ok() {
            self.deps.metrics.apply_latency.observe(start.elapsed());
        }
        self.audit_result(&who, "AddMember", &resource, &result);
        result?;
        Ok(Response::new(pb::AddMemberReply {}))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberReply>, Status> {
        let who = self.check(
            &req,
            "RemoveMember",
            Operation::ClusterAdmin,
            Resource::Cluster,
        )?;
        let id = req.into_inner().id;
        let resource = format!("node:{id}");
        let known = self
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .any(|(n, _)| *n == id);
        if !known {
            let s = Status::not_found(format!(
                "node {id} is not a member: `msctl node list` shows the members"
            ));
            return self.refuse(&who, "RemoveMember", &resource, s);
        }
        let voters = self.voters();
        if voters.len() == 1 && voters.contains(&id) {
            let s = Status::failed_precondition(
                "cannot remove the last voter: add another member first",
            );
            return self.refuse(&who, "RemoveMember", &resource, s);
        }
        let result = self
            .deps
            .cluster
            .remove_member(id)
            .await
            .map_err(|e| self.cluster_error(e));
        self.audit_result(&who, "RemoveMember", &resource, &result);
        result?;
        Ok(Response::new(pb::RemoveMemberReply {}))
    }

    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        self.check(
            &req,
            "ClusterStatus",
            Operation::Describe,
            Resource::Cluster,
        )?;
        let figures = crate::http::raft_figures(self.raft()).await;
        let m = self.raft().metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let leader_addr = figures
            .leader
            .and_then(|l| {
                m.membership_config
                    .nodes()
                    .find(|(id, _)| **id == l)
                    .map(|(_, n)| n.control_addr.clone())
            })
            .unwrap_or_default();
        let members = m
            .membership_config
            .nodes()
            .map(|(id, _)| {
                let matched = if *id == m.id {
                    m.last_log_index
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                let matched = matched.unwrap_or(0);
                pb::MemberStatus {
                    id: *id,
                    matched_index: matched,
                    lag: figures.commit_index.saturating_sub(matched),
                    voter: voters.contains(id),
                }
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        Ok(Response::new(pb::ClusterStatusReply {
            node_id: figures.node_id,
            leader: figures.leader.unwrap_or(0),
            leader_addr,
            term: figures.term,
            commit_index: figures.commit_index,
            applied_index: figures.applied_index,
            role: role.to_string(),
            members,
        }))
    }

    async fn transfer_leadership(
        &self,
        req: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipReply>, Status> {
        let who = self.check(
            &req,
            "TransferLeadership",
            Operation::ClusterAdmin,
            Resource::Cluster,
        )?;
        let to = req.into_inner().to;
        let resource = format!("node:{to}");
        if !self.voters().contains(&to) {
            let s = Status::not_found(format!(
                "node {to} is not a voting member: `msctl node list` shows the voters"
            ));
            return self.refuse(&who, "TransferLeadership", &resource, s);
        }
        let me = self.raft().metrics().borrow().id;
        let result = self.transfer_to(me, to).await;
        self.audit_result(&who, "TransferLeadership", &resource, &result);
        result.map(|leader| Response::new(pb::TransferLeadershipReply { leader }))
    }
}

impl AdminService {
    /// Leadership transfer as openraft 0.9 allows it (it has no TimeoutNow):
    /// only the leader hands over. It stops its heartbeats (so the voters'
    /// leader leases lapse), asks the target to campaign (`Cluster::
    /// transfer_leadership`, repeated each round) until the target leads or
    /// [`TRANSFER_WAIT_MAX`] passes, then resumes heartbeats.
    async fn transfer_to(&self, me: NodeId, to: NodeId) -> Result<NodeId, Status> {
        let current = self.raft().metrics().borrow().current_leader;
        if current == Some(to) {
            return Ok(to);
        }
        if current != Some(me) {
            return Err(self.not_leader(current, None));
        }
        self.raft().runtime_config().heartbeat(false);
        let deadline = Instant::now() + TRANSFER_WAIT_MAX;
        let mut metrics = self.raft().metrics();
        let mut last_error = None;
        let mut outcome = None;
        while outcome.is_none() && Instant::now() < deadline {
            if let Err(e) = self.deps.cluster.transfer_leadership(to).await {
                last_error = Some(e.to_string());
            }
            let round = Instant::now() + Duration::from_millis(300);
            while Instant::now() < round {
                let leader = metrics.borrow().current_leader;
                if leader == Some(to) {
                    outcome = Some(to);
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
            }
        }
        self.raft().runtime_config().heartbeat(true);
        outcome.ok_or_else(|| {
            Status::deadline_exceeded(format!(
                "node {to} did not win an election within {TRANSFER_WAIT_MAX:?} (last error: \
                 {}): its log may lag; check `msctl cluster status` and retry",
                last_error.unwrap_or_else(|| "none".into())
            ))
        })
    }
}
