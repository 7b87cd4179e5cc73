//! The admin API of a three-node cluster on loopback (real gRPC + mTLS,
//! durable stores in a temp dir): mutations sent to a follower are
//! forwarded, cluster status shows every member's lag, leadership moves on
//! request (and msctl follows a follower's redirect to the leader), members
//! are removed, unknown members are NOT_FOUND.

mod admin_support;

use std::time::{Duration, Instant};

use admin_support::{ok_stdout, TestNode};
use controlplane::grpc::LEADER_METADATA_KEY;
use controlplane::pb::admin as pb;
use tonic::Code;

const WAIT_MAX: Duration = Duration::from_secs(20);

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    for _ in 0..4_000 {
        if f() {
            return;
        }
        assert!(start.elapsed() < WAIT_MAX, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for {what}");
}

fn leader_index(nodes: &[TestNode]) -> usize {
    let id = nodes[0].leader().expect("a leader");
    nodes
        .iter()
        .position(|n| n.id == id)
        .expect("leader is a member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_admin_forwarding_status_transfer_and_removal() {
    let nodes = TestNode::start_cluster(vec![vec![], vec![], vec![]]).await;
    let li = leader_index(&nodes);
    let fi = (li + 1) % 3;
    let ti = (li + 2) % 3;

    // A follower forwards the write; every node applies it.
    let mut follower = nodes[fi].admin().await;
    let created = follower
        .create_stream(pb::CreateStreamRequest {
            name: "replicated".into(),
            partitions: 3,
            replication_factor: 3,
            retention_bytes: 1 << 20,
            retention_ms: 1_000,
            mode: pb::StreamMode::Reliable as i32,
            ..Default::default()
        })
        .await
        .expect("forwarded create")
        .into_inner();
    assert_eq!(created.stream.unwrap().name, "replicated");
    for n in &nodes {
        wait_until("stream applied everywhere", || {
            n.cluster()
                .view()
                .read(|d| d.state.streams.contains_key("replicated"))
        })
        .await;
    }

    // Status from the leader: three voters, all caught up eventually.
    let mut leader = nodes[li].admin().await;
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let s = leader
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(s.leader, nodes[li].id);
        assert_eq!(s.role, "leader");
        assert_eq!(s.members.len(), 3);
        assert!(s.members.iter().all(|m| m.voter));
        if s.members.iter().all(|m| m.lag == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "members never caught up: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A non-leader refuses the transfer with the leader's address.
    let mut third = nodes[ti].admin().await;
    let s = third
        .transfer_leadership(pb::TransferLeadershipRequest { to: nodes[fi].id })
        .await
        .expect_err("not the leader");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_eq!(
        s.metadata()
            .get(LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(nodes[li].addr.to_string().as_str())
    );

    // The leader hands over to the follower.
    let moved = leader
        .transfer_leadership(pb::TransferLeadershipRequest { to: nodes[fi].id })
        .await
        .expect("transfer")
        .into_inner();
    assert_eq!(moved.leader, nodes[fi].id);
    for n in &nodes {
        wait_until("everyone follows the new leader", || {
            n.leader() == Some(nodes[fi].id)
        })
        .await;
    }

    // msctl sent to a follower follows the redirect to the leader.
    let out = ok_stdout(
        &nodes[ti]
            .msctl(&["leader", "transfer", "--to", &nodes[li].id.to_string()])
            .await,
    );
    assert!(
        out.contains(&format!("node {} leads", nodes[li].id)),
        "{out}"
    );
    for n in &nodes {
        wait_until("leadership back", || n.leader() == Some(nodes[li].id)).await;
    }

    // Remove the third node; a second removal is NOT_FOUND.
    let mut leader = nodes[li].admin().await;
    leader
        .remove_member(pb::RemoveMemberRequest { id: nodes[ti].id })
        .await
        .expect("remove");
    let listed = leader
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<u64> = listed.nodes.iter().map(|n| n.id).collect();
    assert!(!ids.contains(&nodes[ti].id), "{ids:?}");
    assert_eq!(ids.len(), 2);
    let s = leader
        .remove_member(pb::RemoveMemberRequest { id: nodes[ti].id })
        .await
        .expect_err("gone");
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(s.message().contains("msctl node list"), "{s:?}");

    // Writes still commit with the two remaining voters.
    leader
        .put_principal(pb::PutPrincipalRequest {
            name: "after-removal".into(),
        })
        .await
        .expect("write after removal");
    for n in nodes {
        n.stop().await;
    }
}
