//! The Kafka APIs served, one module each, over the shared [`Broker`] state.

mod fetch;
mod list_offsets;
mod metadata;
mod produce;
mod topics;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::ResponseError;

use crate::cluster::{ClusterView, Metadata, PartitionMeta};
use crate::codec::{api_versions_body, Request};
use crate::store::{Partition, Stores};

/// The principal of a Kafka client on a plaintext listener (no SASL yet): Kafka's name for
/// an unauthenticated client. ACLs for it are put with `msctl acl put --principal ANONYMOUS`.
pub const ANONYMOUS_PRINCIPAL: &str = "ANONYMOUS";

/// Counters of the listener (read by tests and logged at shutdown).
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub requests: AtomicU64,
    /// Connections closed for a malformed, oversized or unserved request.
    pub requests_refused: AtomicU64,
    pub denied: AtomicU64,
}

/// Limits of request handling.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest Fetch long poll, whatever `max_wait_ms` asks.
    pub fetch_wait_ms_max: u32,
}

/// Everything a request handler needs.
pub struct Broker {
    pub metadata: Metadata,
    pub stores: Stores,
    pub limits: Limits,
    pub stats: Stats,
}

/// Answers one request; `None` when Kafka sends no response (Produce with acks=0).
pub async fn handle(b: &Arc<Broker>, principal: &str, req: Request) -> Option<ResponseKind> {
    b.stats.requests.fetch_add(1, Ordering::Relaxed);
    let v = req.version;
    Some(match req.body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions_body(0)),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(metadata::metadata(b, principal, r, v).await)
        }
        RequestKind::Produce(r) => {
            return produce::produce(b, principal, r)
                .await
                .map(ResponseKind::Produce)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::fetch(b, principal, r).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets::list_offsets(b, principal, r, v).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(topics::create(b, principal, r).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(topics::delete(b, principal, r).await)
        }
        // decode_request only yields the kinds above (codec::SUPPORTED).
        other => unreachable!("request kind {other:?} is not in codec::SUPPORTED"),
    })
}

/// A Kafka node id from a control-plane node id (-1 when it does not fit).
pub(crate) fn broker_id(id: u64) -> i32 {
    i32::try_from(id).unwrap_or(-1)
}

/// A leader epoch in Kafka's i32.
pub(crate) fn kafka_epoch(epoch: u64) -> i32 {
    i32::try_from(epoch).unwrap_or(i32::MAX)
}

/// A partition this node leads, ready for reads or writes, or the Kafka error saying why not.
pub(crate) struct Led<'v> {
    pub meta: &'v PartitionMeta,
    pub log: Arc<Partition>,
}

/// Resolves topic + partition for `op`: exists, authorized, led here, current epoch, open.
pub(crate) async fn led<'v>(
    b: &Broker,
    view: &'v ClusterView,
    principal: &str,
    op: controlplane::types::Operation,
    topic: &str,
    partition: i32,
    client_epoch: i32,
) -> Result<Led<'v>, ResponseError> {
    let t = view
        .topics
        .get(topic)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    if !view.authorize(principal, op, topic).is_allowed() {
        b.stats.denied.fetch_add(1, Ordering::Relaxed);
        eprintln!("memstreamer kafka: denied {op:?} on topic `{topic}` for {principal}");
        return Err(ResponseError::TopicAuthorizationFailed);
    }
    let meta = u16::try_from(partition)
        .ok()
        .and_then(|p| t.partitions.iter().find(|m| m.index == p))
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    if meta.leader == 0 {
        return Err(ResponseError::LeaderNotAvailable);
    }
    if meta.leader != view.self_id {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    let ours = kafka_epoch(meta.leader_epoch);
    if client_epoch >= 0 && client_epoch < ours {
        return Err(ResponseError::FencedLeaderEpoch);
    }
    if client_epoch > ours {
        return Err(ResponseError::UnknownLeaderEpoch);
    }
    let log = b
        .stores
        .partition(t.stream_id, meta.index, t.retention)
        .await
        .map_err(|e| {
            eprintln!("memstreamer kafka: {e}");
            ResponseError::KafkaStorageError
        })?;
    Ok(Led { meta, log })
}
