//! CreateTopics and DeleteTopics: checked against the Kafka client's ACLs here (Create /
//! Delete on the topic's name), then done by the control plane (Raft) as stream create and
//! delete. No manual replica assignments and no topic configs yet (INVALID_CONFIG).

use std::sync::atomic::Ordering;

use controlplane::types::Operation;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tonic::Code;

use super::Broker;
use crate::cluster::{ClusterView, ControlError};

/// Partitions of a topic created with `num_partitions = -1` (the broker default).
pub const PARTITIONS_DEFAULT: u32 = 1;
/// Replication factor of a topic created with `replication_factor = -1`.
pub const REPLICATION_FACTOR_DEFAULT: u32 = 1;

fn control_error(e: &ControlError) -> ResponseError {
    match e {
        ControlError::Status(s) => match s.code() {
            Code::AlreadyExists => ResponseError::TopicAlreadyExists,
            Code::NotFound => ResponseError::UnknownTopicOrPartition,
            Code::InvalidArgument | Code::OutOfRange => ResponseError::InvalidRequest,
            Code::PermissionDenied | Code::Unauthenticated => {
                ResponseError::ClusterAuthorizationFailed
            }
            Code::Unavailable | Code::DeadlineExceeded => ResponseError::RequestTimedOut,
            _ => ResponseError::UnknownServerError,
        },
        ControlError::Connect { .. } => ResponseError::RequestTimedOut,
    }
}

fn authorized(b: &Broker, view: &ClusterView, principal: &str, op: Operation, name: &str) -> bool {
    let d = view.authorize(principal, op, name);
    if let controlplane::auth::Decision::Deny(why) = &d {
        b.stats.denied.fetch_add(1, Ordering::Relaxed);
        eprintln!("memstreamer kafka: denied {op:?} on topic `{name}`: {why}");
    }
    d.is_allowed()
}

/// What to ask the control plane for, or the error to answer.
fn plan(t: &CreatableTopic, view: &ClusterView) -> Result<(u32, u32), (ResponseError, String)> {
    let name = t.name.0.as_str();
    if view.topics.contains_key(name) {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("topic `{name}` exists"),
        ));
    }
    let partitions = match t.num_partitions {
        -1 => PARTITIONS_DEFAULT,
        n if n > 0 => n as u32,
        n => return Err((ResponseError::InvalidPartitions, format!("{n} partitions"))),
    };
    let rf = match t.replication_factor {
        -1 => REPLICATION_FACTOR_DEFAULT,
        n if n > 0 => n as u32,
        n => {
            return Err((
                ResponseError::InvalidReplicationFactor,
                format!("replication factor {n}"),
            ))
        }
    };
    if !t.assignments.is_empty() {
        let m = "manual replica assignments are not supported: the control plane places partitions";
        return Err((ResponseError::InvalidRequest, m.into()));
    }
    if let Some(c) = t.configs.first() {
        let m = format!(
            "topic config `{}` is not supported by this listener yet",
            c.name.as_str()
        );
        return Err((ResponseError::InvalidConfig, m));
    }
    Ok((partitions, rf))
}

pub async fn create(b: &Broker, principal: &str, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut out = CreateTopicsResponse::default();
    let view = b.metadata.view().await;
    let mut created = false;
    for t in r.topics {
        let mut res = CreatableTopicResult::default();
        res.name = t.name.clone();
        res.num_partitions = -1;
        res.replication_factor = -1;
        let name = t.name.0.to_string();
        let outcome = match &view {
            Err(e) => Err((ResponseError::RequestTimedOut, e.to_string())),
            Ok(view) if !authorized(b, view, principal, Operation::Create, &name) => Err((
                ResponseError::TopicAuthorizationFailed,
                format!("no ACL allows Create on `{name}` for {principal}"),
            )),
            Ok(view) => match plan(&t, view) {
                Err(e) => Err(e),
                Ok(p) if r.validate_only => Ok(p),
                Ok((partitions, rf)) => {
                    match b.metadata.create_topic(&name, partitions, rf).await {
                        Ok(()) => {
                            created = true;
                            Ok((partitions, rf))
                        }
                        Err(e) => Err((control_error(&e), e.to_string())),
                    }
                }
            },
        };
        match outcome {
            Ok((partitions, rf)) => {
                res.num_partitions = partitions as i32;
                res.replication_factor = rf as i16;
                res.configs = Some(Vec::new());
            }
            Err((e, message)) => {
                res.error_code = e.code();
                res.error_message = Some(StrBytes::from_string(message));
            }
        }
        out.topics.push(res);
    }
    if created {
        let _ = b.metadata.refresh().await;
    }
    out
}

pub async fn delete(b: &Broker, principal: &str, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut out = DeleteTopicsResponse::default();
    let view = b.metadata.view().await;
    let names: Vec<TopicName> = r.topic_names;
    let mut deleted = false;
    for name in names {
        let mut res = DeletableTopicResult::default();
        res.name = Some(name.clone());
        let n = name.0.to_string();
        let outcome = match &view {
            Err(e) => Err((ResponseError::RequestTimedOut, e.to_string())),
            Ok(view) => match view.topics.get(&n) {
                None => Err((
                    ResponseError::UnknownTopicOrPartition,
                    format!("no topic `{n}`"),
                )),
                Some(_) if !authorized(b, view, principal, Operation::Delete, &n) => Err((
                    ResponseError::TopicAuthorizationFailed,
                    format!("no ACL allows Delete on `{n}` for {principal}"),
                )),
                Some(t) => match b.metadata.delete_topic(&n).await {
                    Ok(()) => {
                        deleted = true;
                        b.stores.remove_stream(t.stream_id).await;
                        Ok(())
                    }
                    Err(e) => Err((control_error(&e), e.to_string())),
                },
            },
        };
        if let Err((e, message)) = outcome {
            res.error_code = e.code();
            res.error_message = Some(StrBytes::from_string(message));
        }
        out.responses.push(res);
    }
    if deleted {
        let _ = b.metadata.refresh().await;
    }
    out
}
