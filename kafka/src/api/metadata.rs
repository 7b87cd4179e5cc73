//! Metadata: brokers are the cluster's nodes, topics its streams (by name), partition
//! leaders, epochs, replicas and ISR its partition assignments. Topics the client may not
//! Describe are left out of "all topics" and answered TOPIC_AUTHORIZATION_FAILED when named.
//! Topics are never auto-created (use CreateTopics or `msctl stream create`).

use controlplane::types::Operation;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{broker_id, kafka_epoch, Broker};
use crate::cluster::{ClusterView, TopicMeta};

/// The cluster id reported to clients.
pub const CLUSTER_ID: &str = "memstreamer";

pub async fn metadata(
    b: &Broker,
    principal: &str,
    r: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let mut out = MetadataResponse::default();
    out.cluster_id = Some(StrBytes::from_static_str(CLUSTER_ID));
    let cfg = b.metadata.config();
    out.controller_id = BrokerId(broker_id(cfg.node_id));
    // v0: an empty list means all topics; v1+: null means all.
    let requested: Option<Vec<String>> = match r.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
    };
    let view = match b.metadata.view().await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("memstreamer kafka: metadata: {e}");
            let mut me = MetadataResponseBroker::default();
            me.node_id = BrokerId(broker_id(cfg.node_id));
            me.host = StrBytes::from_string(cfg.advertised_host.clone());
            me.port = i32::from(cfg.advertised_port);
            out.brokers = vec![me];
            out.topics = requested
                .unwrap_or_default()
                .into_iter()
                .map(|n| topic_error(n, ResponseError::LeaderNotAvailable))
                .collect();
            return out;
        }
    };
    out.brokers = view
        .brokers
        .iter()
        .map(|n| {
            let mut m = MetadataResponseBroker::default();
            m.node_id = BrokerId(broker_id(n.id));
            m.host = StrBytes::from_string(n.host.clone());
            m.port = i32::from(n.port);
            m
        })
        .collect();
    let may = |name: &str| {
        view.authorize(principal, Operation::Describe, name)
            .is_allowed()
    };
    out.topics = match requested {
        None => view
            .topics
            .values()
            .filter(|t| may(&t.name))
            .map(|t| topic(&view, t))
            .collect(),
        Some(names) => names
            .into_iter()
            .map(|n| match view.topics.get(&n) {
                Some(_) if !may(&n) => topic_error(n, ResponseError::TopicAuthorizationFailed),
                Some(t) => topic(&view, t),
                None => topic_error(n, ResponseError::UnknownTopicOrPartition),
            })
            .collect(),
    };
    out
}

fn topic_error(name: String, e: ResponseError) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(TopicName(StrBytes::from_string(name)));
    t.error_code = e.code();
    t
}

fn topic(_view: &ClusterView, t: &TopicMeta) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(StrBytes::from_string(t.name.clone())));
    out.partitions = t
        .partitions
        .iter()
        .map(|p| {
            let mut m = MetadataResponsePartition::default();
            m.partition_index = i32::from(p.index);
            m.leader_id = BrokerId(if p.leader == 0 {
                -1
            } else {
                broker_id(p.leader)
            });
            m.leader_epoch = kafka_epoch(p.leader_epoch);
            m.replica_nodes = p.replicas.iter().map(|&r| BrokerId(broker_id(r))).collect();
            m.isr_nodes = p.isr.iter().map(|&r| BrokerId(broker_id(r))).collect();
            if p.leader == 0 {
                m.error_code = ResponseError::LeaderNotAvailable.code();
            }
            m
        })
        .collect();
    out
}
