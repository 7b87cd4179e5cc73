//! Produce (v3+, record batch v2). Each partition's batch is validated (CRC32C, format,
//! codec, counts) and stored as sent. Acks, mapped to what exists on one node:
//! - `acks=0`: no response (Kafka's contract); the batch is still appended and made durable.
//! - `acks=1` and `acks=-1` (all): answered once the batch is **durable on this node's disk**
//!   (group-committed fdatasync) — stronger than Kafka's `acks=1` (leader memory), and for
//!   `acks=-1` the in-sync set is this one replica until replication (#11) exists.

use std::sync::Arc;

use controlplane::types::Operation;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{led, Broker};
use crate::batch::{validate_produced, BatchError};
use crate::store::Appended;

fn batch_error(e: &BatchError) -> ResponseError {
    match e {
        BatchError::Crc { .. } => ResponseError::CorruptMessage,
        BatchError::Magic(_) => ResponseError::UnsupportedForMessageFormat,
        BatchError::Compression(_) => ResponseError::UnsupportedCompressionType,
        _ => ResponseError::InvalidRecord,
    }
}

fn failed(index: i32, e: ResponseError, message: Option<String>) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = index;
    p.error_code = e.code();
    p.base_offset = -1;
    p.log_append_time_ms = -1;
    p.error_message = message.map(StrBytes::from_string);
    p
}

enum Pending {
    Done(PartitionProduceResponse),
    Waiting(i32, Appended, Arc<crate::store::Partition>),
}

/// Answers a Produce request (`None` for acks=0).
pub async fn produce(b: &Broker, principal: &str, r: ProduceRequest) -> Option<ProduceResponse> {
    let acks = r.acks;
    let mut out = ProduceResponse::default();
    let view = b.metadata.view().await;
    let mut pending: Vec<(usize, Pending)> = Vec::new();
    for (ti, t) in r.topic_data.into_iter().enumerate() {
        let mut topic = TopicProduceResponse::default();
        topic.name = t.name.clone();
        out.responses.push(topic);
        for p in t.partition_data {
            let step = match &view {
                _ if !matches!(acks, -1..=1) => {
                    Pending::Done(failed(p.index, ResponseError::InvalidRequiredAcks, None))
                }
                Err(e) => Pending::Done(failed(
                    p.index,
                    ResponseError::LeaderNotAvailable,
                    Some(e.to_string()),
                )),
                Ok(view) => submit(b, view, principal, &t.name.0, p.index, p.records).await,
            };
            pending.push((ti, step));
        }
    }
    for (ti, step) in pending {
        let resp = match step {
            Pending::Done(resp) => resp,
            Pending::Waiting(index, appended, log) => match appended.durable().await {
                Ok(base) => {
                    let mut ok = PartitionProduceResponse::default();
                    ok.index = index;
                    ok.base_offset = base as i64;
                    ok.log_append_time_ms = -1;
                    ok.log_start_offset = log.marks().log_start as i64;
                    ok
                }
                Err(e) => failed(index, ResponseError::KafkaStorageError, Some(e.to_string())),
            },
        };
        out.responses[ti].partition_responses.push(resp);
    }
    (acks != 0).then_some(out)
}

async fn submit(
    b: &Broker,
    view: &crate::cluster::ClusterView,
    principal: &str,
    topic: &str,
    index: i32,
    records: Option<bytes::Bytes>,
) -> Pending {
    let l = match led(b, view, principal, Operation::Write, topic, index, -1).await {
        Ok(l) => l,
        Err(e) => return Pending::Done(failed(index, e, None)),
    };
    let records = records.unwrap_or_default();
    let cfg = b.stores.config();
    if records.len() > cfg.batch_bytes_max as usize {
        let m = format!(
            "batch of {} bytes, limit {}",
            records.len(),
            cfg.batch_bytes_max
        );
        return Pending::Done(failed(index, ResponseError::MessageTooLarge, Some(m)));
    }
    let info = match validate_produced(&records, cfg.batch_records_max) {
        Ok(info) => info,
        Err(e) => return Pending::Done(failed(index, batch_error(&e), Some(e.to_string()))),
    };
    let epoch = super::kafka_epoch(l.meta.leader_epoch);
    match l.log.submit(records.to_vec(), info, epoch).await {
        Ok(appended) => Pending::Waiting(index, appended, l.log),
        Err(e) => Pending::Done(failed(
            index,
            ResponseError::KafkaStorageError,
            Some(e.to_string()),
        )),
    }
}
