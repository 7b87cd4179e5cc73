//! Conversions between the admin protobuf messages and [`crate::types`], with
//! input checks that say what to fix (INVALID_ARGUMENT).

use tonic::Status;

use crate::pb::admin as pb;
use crate::types::{
    validate_name, AckMode, Acl, Cidr, CommandRejection, Operation, PartitionAssignment,
    Permission, Quota, ReplicationPolicy, Stream, StreamMode, ACL_SOURCE_CIDRS_MAX, PARTITIONS_MAX,
    REPLICATION_FACTOR_MAX,
};

/// The gRPC status of a state-machine rejection.
pub fn rejection_status(r: &CommandRejection) -> Status {
    let msg = r.to_string();
    match r {
        CommandRejection::InvalidName { .. }
        | CommandRejection::InvalidPattern { .. }
        | CommandRejection::InvalidValue { .. } => Status::invalid_argument(msg),
        CommandRejection::StreamExists { .. } => Status::already_exists(msg),
        CommandRejection::StreamNotFound { .. }
        | CommandRejection::PartitionNotFound { .. }
        | CommandRejection::UnknownPrincipal { .. }
        | CommandRejection::UnknownNode { .. } => Status::not_found(msg),
        CommandRejection::NotEnoughNodes { .. }
        | CommandRejection::StaleEpoch { .. }
        | CommandRejection::NotPartitionLeader { .. } => Status::failed_precondition(msg),
        CommandRejection::LimitReached { .. } => Status::resource_exhausted(msg),
    }
}

/// Checks a stream or principal name (INVALID_ARGUMENT with the rule).
pub fn check_name(what: &str, name: &str) -> Result<(), Status> {
    validate_name(name).map_err(|r| Status::invalid_argument(format!("{what}: {r}")))
}

pub fn stream_mode(mode: i32) -> Result<StreamMode, Status> {
    match pb::StreamMode::try_from(mode) {
        Ok(pb::StreamMode::Reliable) => Ok(StreamMode::Reliable),
        Ok(pb::StreamMode::Lossy) => Ok(StreamMode::Lossy),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown stream mode {mode}: use reliable (0) or lossy (1)"
        ))),
    }
}

/// Checks a create-stream request's numbers (before proposing it).
pub fn check_create(req: &pb::CreateStreamRequest) -> Result<(u16, u8), Status> {
    check_name("stream name", &req.name)?;
    let partitions = u16::try_from(req.partitions)
        .ok()
        .filter(|p| (1..=PARTITIONS_MAX).contains(p))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "partitions {} out of range: use 1..={PARTITIONS_MAX}",
                req.partitions
            ))
        })?;
    let rf = u8::try_from(req.replication_factor)
        .ok()
        .filter(|r| (1..=REPLICATION_FACTOR_MAX).contains(r))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "replication factor {} out of range: use 1..={REPLICATION_FACTOR_MAX}",
                req.replication_factor
            ))
        })?;
    Ok((partitions, rf))
}

/// The replication policy of a create-stream request whose replication factor is `rf`.
pub fn check_policy(req: &pb::CreateStreamRequest, rf: u8) -> Result<ReplicationPolicy, Status> {
    let min_isr = match req.min_insync_replicas {
        0 => 1,
        n => u8::try_from(n)
            .ok()
            .filter(|m| *m <= rf)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "min_insync_replicas {n} out of range: use 1..={rf} (at most the replication factor)"
                ))
            })?,
    };
    let ack_default = if req.ack_default.is_empty() {
        AckMode::default()
    } else {
        req.ack_default
            .parse::<AckMode>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?
    };
    Ok(ReplicationPolicy {
        min_insync_replicas: min_isr,
        ack_default,
        unclean_leader_election: req.unclean_leader_election,
    })
}

pub fn stream_to_pb(s: &Stream) -> pb::Stream {
    pb::Stream {
        name: s.name.clone(),
        id: s.id,
        partitions: u32::from(s.partitions),
        replication_factor: u32::from(s.replication_factor),
        retention_bytes: s.retention_bytes,
        retention_ms: s.retention_ms,
        mode: match s.mode {
            StreamMode::Reliable => pb::StreamMode::Reliable as i32,
            StreamMode::Lossy => pb::StreamMode::Lossy as i32,
        },
        min_insync_replicas: u32::from(s.policy.min_insync_replicas),
        ack_default: s.policy.ack_default.as_str().to_string(),
        unclean_leader_election: s.policy.unclean_leader_election,
    }
}

pub fn assignment_to_pb(a: &PartitionAssignment) -> pb::PartitionAssignment {
    pb::PartitionAssignment {
        partition: u32::from(a.partition),
        leader: a.leader,
        replicas: a.replicas.clone(),
        isr: a.isr.clone(),
        leader_epoch: a.leader_epoch,
    }
}

pub fn operation_from_pb(op: i32) -> Result<Operation, Status> {
    Ok(match pb::Operation::try_from(op) {
        Ok(pb::Operation::Read) => Operation::Read,
        Ok(pb::Operation::Write) => Operation::Write,
        Ok(pb::Operation::Create) => Operation::Create,
        Ok(pb::Operation::Delete) => Operation::Delete,
        Ok(pb::Operation::Describe) => Operation::Describe,
        Ok(pb::Operation::Alter) => Operation::Alter,
        Ok(pb::Operation::ClusterAdmin) => Operation::ClusterAdmin,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown operation {op}: use read, write, create, delete, describe, alter or \
                 cluster-admin"
            )))
        }
    })
}

pub fn operation_to_pb(op: Operation) -> i32 {
    (match op {
        Operation::Read => pb::Operation::Read,
        Operation::Write => pb::Operation::Write,
        Operation::Create => pb::Operation::Create,
        Operation::Delete => pb::Operation::Delete,
        Operation::Describe => pb::Operation::Describe,
        Operation::Alter => pb::Operation::Alter,
        Operation::ClusterAdmin => pb::Operation::ClusterAdmin,
    }) as i32
}

/// Converts and checks an ACL from a request.
pub fn acl_from_pb(acl: Option<pb::Acl>) -> Result<Acl, Status> {
    let acl = acl.ok_or_else(|| Status::invalid_argument("missing `acl`: set the ACL to put"))?;
    if acl.principal != crate::auth::acl::ANY_PRINCIPAL {
        check_name("principal", &acl.principal)?;
    }
    if acl.operations.is_empty() {
        return Err(Status::invalid_argument(
            "an ACL needs at least one operation (e.g. --op write)",
        ));
    }
    if acl.source_cidrs.len() > ACL_SOURCE_CIDRS_MAX {
        return Err(Status::invalid_argument(format!(
            "{} source CIDRs, at most {ACL_SOURCE_CIDRS_MAX}: use wider prefixes",
            acl.source_cidrs.len()
        )));
    }
    let mut operations = acl
        .operations
        .iter()
        .map(|&o| operation_from_pb(o))
        .collect::<Result<Vec<_>, _>>()?;
    operations.sort();
    operations.dedup();
    let source_cidrs = acl
        .source_cidrs
        .iter()
        .map(|c| {
            c.parse::<Cidr>()
                .map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let permission = match pb::Permission::try_from(acl.permission) {
        Ok(pb::Permission::Allow) => Permission::Allow,
        Ok(pb::Permission::Deny) => Permission::Deny,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown permission {}: use allow (0) or deny (1)",
                acl.permission
            )))
        }
    };
    Ok(Acl {
        principal: acl.principal,
        resource_pattern: acl.resource_pattern,
        operations,
        permission,
        source_cidrs,
    })
}

pub fn acl_to_pb(acl: &Acl) -> pb::Acl {
    pb::Acl {
        principal: acl.principal.clone(),
        resource_pattern: acl.resource_pattern.clone(),
        operations: acl.operations.iter().map(|&o| operation_to_pb(o)).collect(),
        permission: match acl.permission {
            Permission::Allow => pb::Permission::Allow as i32,
            Permission::Deny => pb::Permission::Deny as i32,
        },
        source_cidrs: acl.source_cidrs.iter().map(|c| c.to_string()).collect(),
    }
}

/// Converts and checks a quota from a request.
pub fn quota_from_pb(q: Option<pb::Quota>) -> Result<Quota, Status> {
    let q = q.ok_or_else(|| Status::invalid_argument("missing `quota`: set the quota to put"))?;
    check_name("principal", &q.principal)?;
    if q.bytes_per_s == 0 || q.burst_bytes == 0 {
        return Err(Status::invalid_argument(format!(
            "bytes_per_s ({}) and burst_bytes ({}) must both be > 0; delete the quota to lift it",
            q.bytes_per_s, q.burst_bytes
        )));
    }
    Ok(Quota {
        principal: q.principal,
        bytes_per_s: q.bytes_per_s,
        burst_bytes: q.burst_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary request fields never panic; what is accepted is valid.
        #[test]
        fn arbitrary_acls_and_streams_are_checked_not_panicked(
            principal in ".{0,300}",
            pattern in ".{0,40}",
            ops in proptest::collection::vec(any::<i32>(), 0..5),
            permission in any::<i32>(),
            cidrs in proptest::collection::vec(".{0,24}", 0..3),
            partitions in any::<u32>(),
            rf in any::<u32>(),
            mode in any::<i32>(),
            min_isr in any::<u32>(),
            ack in ".{0,16}",
        ) {
            let acl = acl_from_pb(Some(pb::Acl {
                principal: principal.clone(),
                resource_pattern: pattern,
                operations: ops,
                permission,
                source_cidrs: cidrs,
            }));
            if let Ok(a) = acl {
                prop_assert!(!a.operations.is_empty());
                prop_assert!(a.principal == "*" || validate_name(&a.principal).is_ok());
            }
            let req = pb::CreateStreamRequest {
                name: principal,
                partitions,
                replication_factor: rf,
                retention_bytes: 0,
                retention_ms: 0,
                mode,
                min_insync_replicas: min_isr,
                ack_default: ack,
                unclean_leader_election: false,
            };
            if let Ok((p, r)) = check_create(&req) {
                prop_assert!((1..=PARTITIONS_MAX).contains(&p));
                prop_assert!((1..=REPLICATION_FACTOR_MAX).contains(&r));
                prop_assert!(validate_name(&req.name).is_ok());
                if let Ok(policy) = check_policy(&req, r) {
                    prop_assert!((1..=r).contains(&policy.min_insync_replicas));
                }
            }
            let _ = stream_mode(mode);
        }
    }
}
