//! Fetch (v4+) with Kafka's long poll: the answer goes out once at least `min_bytes` are
//! available or `max_wait_ms` has passed (capped by `fetch_wait_ms_max`), whichever is first;
//! an error on any partition answers at once. `max_bytes` bounds the response and
//! `partition_max_bytes` each partition, except that the first batch of the first non-empty
//! partition is always returned whole (so a consumer passes a batch larger than its limit).
//! Reads stop at the partition's high watermark. No fetch sessions: the answer's session id
//! is 0, which tells clients to send full fetches (KIP-227).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use controlplane::types::Operation;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use super::{led, Broker};
use crate::store::StoreError;

pub async fn fetch(b: &Broker, principal: &str, r: FetchRequest) -> FetchResponse {
    let mut out = FetchResponse::default();
    if r.session_id != 0 || r.session_epoch > 0 {
        out.error_code = ResponseError::FetchSessionIdNotFound.code();
        return out;
    }
    let wait_ms = u64::try_from(r.max_wait_ms)
        .unwrap_or(0)
        .min(u64::from(b.limits.fetch_wait_ms_max));
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let min_bytes = usize::try_from(r.min_bytes).unwrap_or(0);
    loop {
        let advanced = b.stores.advanced.notified();
        tokio::pin!(advanced);
        advanced.as_mut().enable();
        let (resp, bytes, errors) = once(b, principal, &r).await;
        if bytes >= min_bytes.max(1) || errors || Instant::now() >= deadline || min_bytes == 0 {
            return resp;
        }
        // Woken by any partition's durable advance, then look again.
        let _ = tokio::time::timeout_at(deadline, advanced).await;
    }
}

/// One pass over the requested partitions: the response, its record bytes, and whether any
/// partition answered an error.
async fn once(b: &Broker, principal: &str, r: &FetchRequest) -> (FetchResponse, usize, bool) {
    let mut out = FetchResponse::default();
    let mut total = 0usize;
    let mut errors = false;
    let budget = usize::try_from(r.max_bytes).unwrap_or(0);
    let view = b.metadata.view().await;
    for t in &r.topics {
        let mut topic = FetchableTopicResponse::default();
        topic.topic = t.topic.clone();
        for p in &t.partitions {
            let mut data = PartitionData::default();
            data.partition_index = p.partition;
            data.high_watermark = -1;
            data.last_stable_offset = -1;
            data.log_start_offset = -1;
            data.preferred_read_replica = BrokerId(-1);
            data.aborted_transactions = Some(Vec::new());
            let room = budget.saturating_sub(total);
            let part_max = usize::try_from(p.partition_max_bytes)
                .unwrap_or(0)
                .min(room);
            let read = match &view {
                Err(_) => Err(ResponseError::LeaderNotAvailable),
                Ok(view) => {
                    read_partition(b, view, principal, &t.topic.0, p, part_max, total == 0).await
                }
            };
            match read {
                Ok((records, marks)) => {
                    total += records.len();
                    data.high_watermark = marks.high_watermark as i64;
                    data.last_stable_offset = marks.high_watermark as i64;
                    data.log_start_offset = marks.log_start as i64;
                    data.records = Some(records);
                }
                Err(e) => {
                    errors = true;
                    data.error_code = e.code();
                }
            }
            topic.partitions.push(data);
        }
        out.responses.push(topic);
    }
    (out, total, errors)
}

async fn read_partition(
    b: &Broker,
    view: &crate::cluster::ClusterView,
    principal: &str,
    topic: &str,
    p: &kafka_protocol::messages::fetch_request::FetchPartition,
    bytes_max: usize,
    first_whole: bool,
) -> Result<(Bytes, crate::store::Marks), ResponseError> {
    let l = led(
        b,
        view,
        principal,
        Operation::Read,
        topic,
        p.partition,
        p.current_leader_epoch,
    )
    .await?;
    let offset = u64::try_from(p.fetch_offset).map_err(|_| ResponseError::OffsetOutOfRange)?;
    let marks = l.log.marks();
    let batches = l
        .log
        .read(offset, bytes_max, first_whole)
        .await
        .map_err(|e| match e {
            StoreError::OutOfRange { .. } => ResponseError::OffsetOutOfRange,
            other => {
                eprintln!("memstreamer kafka: fetch {topic}/{}: {other}", p.partition);
                ResponseError::KafkaStorageError
            }
        })?;
    let mut records = BytesMut::with_capacity(batches.iter().map(Bytes::len).sum());
    for batch in &batches {
        records.extend_from_slice(batch);
    }
    Ok((records.freeze(), marks))
}
