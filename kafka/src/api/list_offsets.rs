//! ListOffsets (v1+): -2 earliest (the log start), -1 latest (the high watermark), or the
//! first offset at or after a timestamp (batch-granular, see `Partition::offset_for_timestamp`).
//! Other special timestamps (-3 max timestamp, KIP-734) are not served: INVALID_REQUEST.

use controlplane::types::Operation;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use super::{kafka_epoch, led, Broker};

const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

/// `version`: the leader epoch is answered from v4 on (the codec refuses it before).
pub async fn list_offsets(
    b: &Broker,
    principal: &str,
    r: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut out = ListOffsetsResponse::default();
    let view = b.metadata.view().await;
    for t in r.topics {
        let mut topic = ListOffsetsTopicResponse::default();
        topic.name = t.name.clone();
        for p in t.partitions {
            let mut resp = ListOffsetsPartitionResponse::default();
            resp.partition_index = p.partition_index;
            resp.timestamp = -1;
            resp.offset = -1;
            resp.leader_epoch = -1;
            let answer = match &view {
                Err(_) => Err(ResponseError::LeaderNotAvailable),
                Ok(view) => lookup(b, view, principal, &t.name.0, &p).await,
            };
            match answer {
                Ok((offset, timestamp, epoch)) => {
                    resp.offset = offset;
                    resp.timestamp = timestamp;
                    if version >= 4 {
                        resp.leader_epoch = epoch;
                    }
                }
                Err(e) => resp.error_code = e.code(),
            }
            topic.partitions.push(resp);
        }
        out.topics.push(topic);
    }
    out
}

async fn lookup(
    b: &Broker,
    view: &crate::cluster::ClusterView,
    principal: &str,
    topic: &str,
    p: &kafka_protocol::messages::list_offsets_request::ListOffsetsPartition,
) -> Result<(i64, i64, i32), ResponseError> {
    let l = led(
        b,
        view,
        principal,
        Operation::Describe,
        topic,
        p.partition_index,
        p.current_leader_epoch,
    )
    .await?;
    let epoch = kafka_epoch(l.meta.leader_epoch);
    let marks = l.log.marks();
    match p.timestamp {
        EARLIEST => Ok((marks.log_start as i64, -1, epoch)),
        LATEST => Ok((marks.high_watermark as i64, -1, epoch)),
        ts if ts >= 0 => match l.log.offset_for_timestamp(ts).await {
            Ok(Some((offset, found))) => Ok((offset as i64, found, epoch)),
            Ok(None) => Ok((-1, -1, epoch)),
            Err(e) => {
                eprintln!(
                    "memstreamer kafka: list offsets {topic}/{}: {e}",
                    p.partition_index
                );
                Err(ResponseError::KafkaStorageError)
            }
        },
        _ => Err(ResponseError::InvalidRequest),
    }
}
