//! Partition views (#11): one partition with its replicas' reported state (DescribePartition,
//! on the Raft leader, which holds the reports) and a stream's partition leaders by name
//! (ResolveStream, from any node's applied state, for clients).

use std::collections::BTreeSet;

use tonic::Status;

use super::convert::{assignment_to_pb, stream_to_pb};
use crate::pb::admin as pb;
use crate::replicas::{PartitionReports, ReplicaReport, ReplicaRole};
use crate::types::{ClusterState, PartitionAssignment, Stream, LEADER_NONE};

fn stream_named<'a>(state: &'a ClusterState, name: &str) -> Result<&'a Stream, Status> {
    state.streams.get(name).ok_or_else(|| {
        Status::not_found(format!(
            "stream {name:?} does not exist: `msctl stream list` shows the names"
        ))
    })
}

/// Whether a partition's ISR is smaller than its replica set.
pub fn under_replicated(a: &PartitionAssignment) -> bool {
    a.isr.len() < a.replicas.len()
}

fn role_name(r: ReplicaRole) -> &'static str {
    match r {
        ReplicaRole::None => "none",
        ReplicaRole::Leader => "leader",
        ReplicaRole::Follower => "follower",
    }
}

/// One replica as the leader sees it: from the metadata, and from its report if it sent one.
fn replica_view(
    state: &ClusterState,
    a: &PartitionAssignment,
    live: &BTreeSet<u64>,
    node: u64,
    report: Option<&ReplicaReport>,
    leader_end: Option<u64>,
) -> pb::ReplicaView {
    let mut v = pb::ReplicaView {
        node,
        data_addr: state
            .nodes
            .get(&node)
            .map(|n| n.data_addr.clone())
            .unwrap_or_default(),
        in_isr: a.isr.contains(&node),
        leader: a.leader == node,
        live: live.contains(&node),
        state: "no report".into(),
        ..pb::ReplicaView::default()
    };
    if let Some(r) = report {
        v.reported = true;
        v.role = role_name(r.role).into();
        v.state = r.state.as_str().into();
        v.reported_epoch = r.leader_epoch;
        v.log_end = r.log_end;
        v.durable = r.durable;
        v.lag = leader_end.map_or(0, |e| e.saturating_sub(r.log_end));
    }
    v
}

/// One partition of stream `name` with every replica's reported state.
pub fn describe(
    state: &ClusterState,
    reports: &PartitionReports,
    name: &str,
    partition: u32,
) -> Result<pb::DescribePartitionReply, Status> {
    let s = stream_named(state, name)?;
    let a = u16::try_from(partition)
        .ok()
        .and_then(|p| state.assignment(s.id, p).ok())
        .ok_or_else(|| {
            Status::not_found(format!(
                "stream {name:?} has partitions 0..{}, not {partition}",
                s.partitions
            ))
        })?;
    let live: BTreeSet<u64> = state.live_nodes().into_iter().collect();
    let none = Vec::new();
    let rs = reports.get(&(a.stream_id, a.partition)).unwrap_or(&none);
    let leader_report = rs
        .iter()
        .find(|r| r.node == a.leader && a.leader != LEADER_NONE);
    let leader_end = leader_report.map(|r| r.log_end);
    let replicas = a
        .replicas
        .iter()
        .map(|&n| {
            let r = rs.iter().find(|r| r.node == n);
            replica_view(state, a, &live, n, r, leader_end)
        })
        .collect();
    Ok(pb::DescribePartitionReply {
        stream: Some(stream_to_pb(s)),
        assignment: Some(assignment_to_pb(a)),
        replicas,
        high_watermark_replicated: leader_report.map_or(0, |r| r.hw_replicated),
        high_watermark_persisted: leader_report.map_or(0, |r| r.hw_persisted),
        under_replicated: under_replicated(a),
        below_min_isr: a.isr.len() < usize::from(s.policy.min_insync_replicas),
    })
}

/// Stream `name`'s partitions with their leader, its data address and the epoch.
pub fn resolve(state: &ClusterState, name: &str) -> Result<pb::ResolveStreamReply, Status> {
    let s = stream_named(state, name)?;
    let partitions = state
        .assignments
        .get(&s.id)
        .map(|v| {
            v.iter()
                .map(|a| pb::PartitionLeader {
                    partition: u32::from(a.partition),
                    leader: a.leader,
                    leader_data_addr: state
                        .nodes
                        .get(&a.leader)
                        .filter(|_| a.leader != LEADER_NONE)
                        .map(|n| n.data_addr.clone())
                        .unwrap_or_default(),
                    leader_epoch: a.leader_epoch,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(pb::ResolveStreamReply {
        stream_id: s.id,
        ack_default: s.policy.ack_default.as_str().into(),
        min_insync_replicas: u32::from(s.policy.min_insync_replicas),
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicas::ReplicaServing;
    use crate::types::{Command, NodeInfo, NodeLiveness, ReplicationPolicy, StreamMode};

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&Command::RegisterNode(NodeInfo {
                id,
                control_addr: String::new(),
                data_addr: format!("198.18.7.{id}:7460"),
            }));
        }
        s.apply(&Command::CreateStream {
            name: "o".into(),
            partitions: 2,
            replication_factor: 3,
            retention_bytes: 0,
            retention_ms: 0,
            mode: StreamMode::Reliable,
            policy: ReplicationPolicy {
                min_insync_replicas: 3,
                ..ReplicationPolicy::default()
            },
        });
        s
    }

    fn report(node: u64, log_end: u64) -> ReplicaReport {
        ReplicaReport {
            stream_id: 0,
            partition: 0,
            node,
            role: if node == 1 {
                ReplicaRole::Leader
            } else {
                ReplicaRole::Follower
            },
            state: if node == 3 {
                ReplicaServing::NoStorage
            } else {
                ReplicaServing::Serving
            },
            leader_epoch: 1,
            log_end,
            durable: log_end,
            hw_replicated: 90,
            hw_persisted: 80,
            proposed_isr: Vec::new(),
        }
    }

    #[test]
    fn describe_shows_each_replica_with_lag_and_the_high_watermarks() {
        let mut s = state();
        let mut reports = PartitionReports::new();
        reports.insert((0, 0), vec![report(1, 100), report(3, 60)]);
        let d = describe(&s, &reports, "o", 0).unwrap();
        assert_eq!(
            (d.high_watermark_replicated, d.high_watermark_persisted),
            (90, 80)
        );
        assert!(!d.under_replicated && !d.below_min_isr);
        let r = &d.replicas;
        assert_eq!(r.len(), 3);
        assert!(r[0].leader && r[0].reported && r[0].lag == 0);
        assert_eq!(
            (r[1].node, r[1].reported, r[1].state.as_str()),
            (2, false, "no report")
        );
        assert_eq!((r[2].state.as_str(), r[2].lag), ("no_storage", 40));
        s.apply(&Command::SetNodeLiveness {
            id: 3,
            liveness: NodeLiveness::Dead,
        });
        s.apply(&Command::UpdateIsr {
            stream_id: 0,
            partition: 0,
            leader: 1,
            leader_epoch: 1,
            isr: vec![1, 2],
        });
        let d = describe(&s, &reports, "o", 0).unwrap();
        assert!(d.under_replicated && d.below_min_isr && !d.replicas[2].live);
        assert!(describe(&s, &reports, "o", 2).is_err());
        assert!(describe(&s, &reports, "nope", 0).is_err());
    }

    #[test]
    fn resolve_names_each_partitions_leader_and_address() {
        let s = state();
        let r = resolve(&s, "o").unwrap();
        assert_eq!(r.stream_id, 0);
        assert_eq!(r.ack_default, "all_replicated");
        let p: Vec<(u64, &str, u64)> = r
            .partitions
            .iter()
            .map(|p| (p.leader, p.leader_data_addr.as_str(), p.leader_epoch))
            .collect();
        assert_eq!(
            p,
            vec![(1, "198.18.7.1:7460", 1), (2, "198.18.7.2:7460", 1)]
        );
        assert_eq!(resolve(&s, "x").unwrap_err().code(), tonic::Code::NotFound);
    }
}
