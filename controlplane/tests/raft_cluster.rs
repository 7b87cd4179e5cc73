//! Three control-plane nodes in one process on loopback (real gRPC + mTLS,
//! real durable stores in temp dirs): bootstrap + join, writes from any
//! node, reads everywhere, leader loss, partition leader re-election with
//! epoch fencing, member removal, restart from disk.

use std::time::{Duration, Instant};

use controlplane::cluster::ClusterError;
use controlplane::node::{self, NodeConfig, RunningNode};
use controlplane::types::{Command, CommandRejection, CommandResponse, NodeLiveness, StreamMode};

const WAIT_MAX: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(
    id: u64,
    port: u16,
    root: &std::path::Path,
    certs: &std::path::Path,
    join: Option<String>,
) -> NodeConfig {
    let mut c = NodeConfig {
        id,
        listen: format!("127.0.0.1:{port}"),
        data_addr: format!("127.0.0.1:{}", 20_000 + id),
        data_dir: root.join(format!("n{id}")),
        cert_dir: Some(certs.to_path_buf()),
        join,
        ..Default::default()
    };
    c.liveness.heartbeat_interval_ms = 50;
    c.liveness.node_timeout_ms = 500;
    c
}

fn create(name: &str) -> Command {
    create_rf(name, 3)
}

fn create_rf(name: &str, replication_factor: u8) -> Command {
    Command::CreateStream {
        name: name.into(),
        partitions: 2,
        replication_factor,
        retention_bytes: 1 << 20,
        retention_ms: 1_000,
        mode: StreamMode::Reliable,
    }
}

async fn wait_until<F: FnMut() -> bool>(what: &str, mut f: F) {
    let start = Instant::now();
    for _ in 0..2_000 {
        if f() {
            return;
        }
        assert!(start.elapsed() < WAIT_MAX, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for {what}");
}

fn leader_of(nodes: &[&RunningNode]) -> Option<u64> {
    nodes.iter().find_map(|n| {
        let s = n.cluster.status();
        (s.leader == Some(s.id)).then_some(s.id)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_fail_over_and_restart() {
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs");
    controlplane::certs::generate_dev(&certs).unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let seed = format!("127.0.0.1:{}", ports[0]);

    let n1 = node::start(config(1, ports[0], root.path(), &certs, None))
        .await
        .unwrap();
    let n2 = node::start(config(2, ports[1], root.path(), &certs, Some(seed.clone())))
        .await
        .unwrap();
    let n3 = node::start(config(3, ports[2], root.path(), &certs, Some(seed.clone())))
        .await
        .unwrap();
    wait_until("three voters registered", || {
        [&n1, &n2, &n3]
            .iter()
            .all(|n| n.cluster.view().read(|d| d.state.nodes.len() == 3))
    })
    .await;
    let st = n2.cluster.status();
    assert_eq!(st.members.iter().filter(|m| m.voter).count(), 3);

    // A write from a follower is forwarded to the leader; duplicate rejected.
    let follower = if leader_of(&[&n1, &n2, &n3]) == Some(2) {
        &n3
    } else {
        &n2
    };
    let r = follower.cluster.write(create("orders")).await.unwrap();
    assert!(matches!(r, CommandResponse::StreamCreated { .. }), "{r:?}");
    let r = n1.cluster.write(create("orders")).await.unwrap();
    assert!(
        matches!(
            r,
            CommandResponse::Rejected(CommandRejection::StreamExists { .. })
        ),
        "{r:?}"
    );
    let r = n1.cluster.write(create("bad name")).await.unwrap();
    assert!(
        matches!(
            r,
            CommandResponse::Rejected(CommandRejection::InvalidName { .. })
        ),
        "{r:?}"
    );

    // Linearizable read from any node sees it; so does every local state.
    for n in [&n1, &n2, &n3] {
        assert!(n
            .cluster
            .read_state(true)
            .await
            .unwrap()
            .streams
            .contains_key("orders"));
    }
    wait_until("replicated everywhere", || {
        [&n1, &n2, &n3].iter().all(|n| {
            n.cluster
                .view()
                .read(|d| d.state.streams.contains_key("orders"))
        })
    })
    .await;

    // Unknown member removal is refused with a clear error.
    assert_eq!(
        n2.cluster.remove_member(42).await,
        Err(ClusterError::UnknownMember { id: 42 })
    );

    // Stop the leader: the others elect a new one, writes continue, and the
    // partitions it led move to a live in-sync replica with a new epoch.
    let nodes = vec![n1, n2, n3];
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).expect("a leader");
    let mut rest = Vec::new();
    let mut stopped = None;
    for n in nodes {
        if n.cluster.me().id == leader {
            stopped = Some(n);
        } else {
            rest.push(n);
        }
    }
    let stopped = stopped.unwrap();
    let stopped_id = stopped.cluster.me().id;
    stopped.shutdown().await;
    let r = rest[0]
        .cluster
        .write(create("after-failover"))
        .await
        .unwrap();
    assert!(matches!(r, CommandResponse::StreamCreated { .. }), "{r:?}");
    wait_until("dead node detected and partitions reassigned", || {
        rest[1].cluster.view().read(|d| {
            d.state.liveness.get(&stopped_id) == Some(&NodeLiveness::Dead)
                && d.state
                    .assignments
                    .values()
                    .flatten()
                    .all(|a| a.leader != stopped_id && !a.isr.contains(&stopped_id))
        })
    })
    .await;
    let epochs_moved = rest[1].cluster.view().read(|d| {
        d.state
            .assignments
            .values()
            .flatten()
            .all(|a| a.leader_epoch >= 2)
    });
    assert!(
        epochs_moved,
        "node {stopped_id} was in every ISR, so every epoch moved"
    );

    // Restart the stopped node from its data directory: it catches up.
    let port = ports[(stopped_id - 1) as usize];
    let back = node::start(config(stopped_id, port, root.path(), &certs, None))
        .await
        .unwrap();
    wait_until("restarted node catches up", || {
        back.cluster.view().read(|d| {
            d.state.streams.contains_key("after-failover") && d.state.streams.contains_key("orders")
        })
    })
    .await;
    wait_until("restarted node live again", || {
        rest[0]
            .cluster
            .view()
            .read(|d| d.state.liveness.get(&stopped_id) == Some(&NodeLiveness::Live))
    })
    .await;

    // Remove a member; the remaining two keep committing.
    let victim = rest[1].cluster.me().id;
    rest[0].cluster.remove_member(victim).await.unwrap();
    let r = back.cluster.write(create_rf("two-left", 2)).await.unwrap();
    assert!(matches!(r, CommandResponse::StreamCreated { .. }), "{r:?}");
    assert!(!rest[0]
        .cluster
        .view()
        .read(|d| d.state.nodes.contains_key(&victim)));

    back.shutdown().await;
    for n in rest {
        n.shutdown().await;
    }
}
