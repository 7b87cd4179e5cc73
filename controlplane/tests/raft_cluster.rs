//! Three control-plane nodes in one process on loopback (real gRPC + mTLS,
//! real durable stores in temp dirs): bootstrap + join, writes from any
//! node, reads everywhere, leader loss, partition leader re-election with
//! epoch fencing, member removal, restart from disk.

use std::time::{Duration, Instant};

use controlplane::audit::AuditLog;
use controlplane::cluster::ClusterError;
use controlplane::node::{self, NodeConfig, RunningNode};
use controlplane::replicas::{ReplicaReport, ReplicaRole, ReplicaServing};
use controlplane::types::{
    Command, CommandRejection, CommandResponse, NodeLiveness, PartitionAssignment, StreamMode,
};

const WAIT_MAX: Duration = Duration::from_secs(20);

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
        policy: Default::default(),
    }
}

/// (leader, epoch) of every partition in `node`'s applied state.
fn leaders_and_epochs(node: &RunningNode) -> Vec<(u64, u64)> {
    node.cluster.view().read(|d| {
        d.state
            .assignments
            .values()
            .flatten()
            .map(|a| (a.leader, a.leader_epoch))
            .collect()
    })
}

/// Starts a node on a fixed port; retries for a while if the port is still
/// (or briefly by someone else) in use.
async fn restart_on(config: NodeConfig) -> RunningNode {
    let start = Instant::now();
    for _ in 0..200 {
        match node::start(config.clone()).await {
            Ok(n) => return n,
            Err(node::NodeStartError::Listen { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && start.elapsed() < WAIT_MAX =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("node {} does not start: {e}", config.id),
        }
    }
    panic!("port of node {} stayed in use", config.id);
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
    // Port 0: each node binds a port the kernel picks and advertises it, so
    // parallel tests never race for a port chosen in advance.
    let n1 = node::start(config(1, 0, root.path(), &certs, None))
        .await
        .unwrap();
    let seed = n1.local_addr.to_string();
    let n2 = node::start(config(2, 0, root.path(), &certs, Some(seed.clone())))
        .await
        .unwrap();
    let n3 = node::start(config(3, 0, root.path(), &certs, Some(seed.clone())))
        .await
        .unwrap();
    let ports = [
        n1.local_addr.port(),
        n2.local_addr.port(),
        n3.local_addr.port(),
    ];
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
    let led_before = |d: &controlplane::store::StateMachineData| -> Vec<(u32, u16, u64, u64)> {
        d.state
            .assignments
            .values()
            .flatten()
            .map(|a| (a.stream_id, a.partition, a.leader, a.leader_epoch))
            .collect()
    };
    let before = rest[0].cluster.view().read(led_before);
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
    // The partitions it led got a new leader and a higher epoch (the others
    // only lost it from their ISR, which by itself keeps the epoch).
    let after = rest[1].cluster.view().read(led_before);
    for (stream, partition, leader, epoch) in &before {
        let now = after
            .iter()
            .find(|a| (a.0, a.1) == (*stream, *partition))
            .expect("the partition still exists");
        if *leader == stopped_id {
            assert!(now.3 > *epoch, "stream {stream} partition {partition}");
        }
    }

    // Restart the stopped node from its data directory on its old port (the
    // members know it there): it catches up.
    let port = ports[(stopped_id - 1) as usize];
    let back = restart_on(config(stopped_id, port, root.path(), &certs, None)).await;
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
    // Heart-beating again does not put it back into any in-sync set: only a
    // partition leader's proposal does (its data plane saw it catch up).
    let epochs_before = leaders_and_epochs(&rest[0]);
    let back_in_some_isr = rest[0].cluster.view().read(|d| {
        d.state
            .assignments
            .values()
            .flatten()
            .any(|a| a.isr.contains(&stopped_id))
    });
    assert!(!back_in_some_isr, "liveness alone never restores the ISR");
    // Each partition leader's data plane proposes the full replica set (as
    // its status ring would say); the proposals travel in the heartbeats (or
    // are the Raft leader's own) and are committed with the current epoch.
    let assignments: Vec<PartitionAssignment> = rest[0]
        .cluster
        .view()
        .read(|d| d.state.assignments.values().flatten().cloned().collect());
    for a in &assignments {
        let leader = rest.iter().find(|n| n.cluster.me().id == a.leader);
        let leader = leader.expect("partitions are led by the live nodes");
        leader.cluster.local_replicas().put(ReplicaReport {
            stream_id: a.stream_id,
            partition: a.partition,
            node: a.leader,
            role: ReplicaRole::Leader,
            state: ReplicaServing::Serving,
            leader_epoch: a.leader_epoch,
            log_end: 10,
            durable: 10,
            hw_replicated: 10,
            hw_persisted: 10,
            proposed_isr: a.replicas.clone(),
        });
    }
    wait_until("restarted node back in every ISR", || {
        rest[0].cluster.view().read(|d| {
            d.state
                .assignments
                .values()
                .flatten()
                .all(|a| a.isr.contains(&stopped_id))
        })
    })
    .await;
    let epochs_after = leaders_and_epochs(&rest[0]);
    assert_eq!(epochs_before, epochs_after, "an ISR change keeps the epoch");

    // Remove the Raft leader, asked through a follower (the hard case: the
    // leader hands leadership over first); the remaining two keep committing.
    let all = [&rest[0], &rest[1], &back];
    let victim = leader_of(&all).expect("a leader");
    let survivors: Vec<&RunningNode> = all
        .into_iter()
        .filter(|n| n.cluster.me().id != victim)
        .collect();
    survivors[0].cluster.remove_member(victim).await.unwrap();
    let r = survivors[1]
        .cluster
        .write(create_rf("two-left", 2))
        .await
        .unwrap();
    assert!(matches!(r, CommandResponse::StreamCreated { .. }), "{r:?}");
    wait_until("removal applied on the survivors", || {
        survivors.iter().all(|n| {
            n.cluster.view().read(|d| {
                !d.state.nodes.contains_key(&victim) && d.state.streams.contains_key("two-left")
            })
        })
    })
    .await;
    assert_ne!(leader_of(&survivors), Some(victim));
    // Asking again is an error that names the member.
    assert_eq!(
        survivors[1].cluster.remove_member(victim).await,
        Err(ClusterError::UnknownMember { id: victim })
    );

    back.shutdown().await;
    for n in rest {
        n.shutdown().await;
    }
}

/// A partition leader's replica report as its data plane's status ring would give it.
fn report(a: &PartitionAssignment, node: u64, log_end: u64) -> ReplicaReport {
    ReplicaReport {
        stream_id: a.stream_id,
        partition: a.partition,
        node,
        role: if node == a.leader {
            ReplicaRole::Leader
        } else {
            ReplicaRole::Follower
        },
        state: ReplicaServing::Serving,
        leader_epoch: a.leader_epoch,
        log_end,
        durable: log_end,
        hw_replicated: 0,
        hw_persisted: 0,
        proposed_isr: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_partition_leader_is_replaced_by_the_most_caught_up_isr_member() {
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs");
    controlplane::certs::generate_dev(&certs).unwrap();
    let n1 = node::start(config(1, 0, root.path(), &certs, None))
        .await
        .unwrap();
    let seed = n1.local_addr.to_string();
    let n2 = node::start(config(2, 0, root.path(), &certs, Some(seed.clone())))
        .await
        .unwrap();
    let n3 = node::start(config(3, 0, root.path(), &certs, Some(seed)))
        .await
        .unwrap();
    let nodes = [n1, n2, n3];
    wait_until("three voters registered", || {
        nodes
            .iter()
            .all(|n| n.cluster.view().read(|d| d.state.nodes.len() == 3))
    })
    .await;
    // Streams 0 and 1 (one partition, RF 3) are led by nodes 1 and 2: one of
    // them is led by a node that is not the Raft leader.
    for name in ["e0", "e1"] {
        let mut c = create_rf(name, 3);
        if let Command::CreateStream { partitions, .. } = &mut c {
            *partitions = 1;
        }
        let r = nodes[0].cluster.write(c).await.unwrap();
        assert!(matches!(r, CommandResponse::StreamCreated { .. }), "{r:?}");
    }
    let raft_leader = leader_of(&nodes.iter().collect::<Vec<_>>()).expect("a leader");
    let by_id = |id: u64| nodes.iter().find(|n| n.cluster.me().id == id).unwrap();
    let a = by_id(raft_leader).cluster.view().read(|d| {
        d.state
            .assignments
            .values()
            .flatten()
            .find(|a| a.leader != raft_leader)
            .cloned()
            .expect("a partition led by another node")
    });
    assert_eq!((a.isr.len(), a.leader_epoch), (3, 1));
    // The later ISR member is further ahead: it must win over ISR order.
    let (x, y) = (a.isr[1], a.isr[2]);
    for (node, end) in [(a.leader, 90), (x, 50), (y, 80)] {
        by_id(node)
            .cluster
            .local_replicas()
            .put(report(&a, node, end));
    }
    let rl = by_id(raft_leader);
    wait_until("the reports reached the Raft leader", || {
        let fresh = rl
            .cluster
            .cluster_replicas()
            .fresh(rl.cluster.report_max_age(), Instant::now());
        fresh
            .get(&(a.stream_id, a.partition))
            .is_some_and(|rs| rs.len() == 3)
    })
    .await;

    let (dead, rest): (Vec<_>, Vec<_>) = nodes
        .into_iter()
        .partition(|n| n.cluster.me().id == a.leader);
    let stop = Instant::now();
    for n in dead {
        n.shutdown().await;
    }
    wait_until("the partition has a new leader", || {
        rest[0].cluster.view().read(|d| {
            d.state
                .assignment(a.stream_id, a.partition)
                .is_ok_and(|b| b.leader != a.leader)
        })
    })
    .await;
    let b = rest[0].cluster.view().read(|d| {
        d.state
            .assignment(a.stream_id, a.partition)
            .unwrap()
            .clone()
    });
    // A figure for the report, not an assertion (node_timeout 500 ms here).
    println!(
        "partition leader stopped -> new leader applied: {} ms",
        stop.elapsed().as_millis()
    );
    assert_eq!(b.leader, y, "the most caught-up ISR member leads");
    assert!(b.leader_epoch >= 2, "an election moves the epoch");
    assert_eq!(b.isr, vec![x, y], "the dead leader left the ISR");
    assert_eq!(b.replicas, a.replicas, "the replica set stays");
    for n in rest {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_unclean_election_is_audited_and_a_clean_stream_stays_leaderless() {
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs");
    controlplane::certs::generate_dev(&certs).unwrap();
    let n1 = node::start(config(1, 0, root.path(), &certs, None))
        .await
        .unwrap();
    let seed = n1.local_addr.to_string();
    let n2 = node::start(config(2, 0, root.path(), &certs, Some(seed.clone())))
        .await
        .unwrap();
    let n3 = node::start(config(3, 0, root.path(), &certs, Some(seed)))
        .await
        .unwrap();
    let nodes = [n1, n2, n3];
    let audit_path = root.path().join("audit.log");
    let audit = std::sync::Arc::new(AuditLog::open(&audit_path).unwrap());
    for n in &nodes {
        n.cluster.set_audit(audit.clone());
    }
    wait_until("three voters registered", || {
        nodes
            .iter()
            .all(|n| n.cluster.view().read(|d| d.state.nodes.len() == 3))
    })
    .await;
    // Streams s0..s5 (one partition, RF 3): stream id k is led by node k % 3 + 1,
    // so every node leads one stream with an even id (clean) and one with an
    // odd id (unclean election allowed).
    for k in 0..6u32 {
        let mut c = create_rf(&format!("s{k}"), 3);
        if let Command::CreateStream {
            partitions, policy, ..
        } = &mut c
        {
            *partitions = 1;
            policy.unclean_leader_election = k % 2 == 1;
        }
        let r = nodes[0].cluster.write(c).await.unwrap();
        assert_eq!(r, CommandResponse::StreamCreated { stream_id: k });
    }
    let raft_leader = leader_of(&nodes.iter().collect::<Vec<_>>()).expect("a leader");
    let victim = if raft_leader == 1 { 2 } else { 1 };
    let by_id = |id: u64| nodes.iter().find(|n| n.cluster.me().id == id).unwrap();
    let led: Vec<PartitionAssignment> = by_id(victim).cluster.view().read(|d| {
        (0..6)
            .filter_map(|k| d.state.assignment(k, 0).ok())
            .filter(|a| a.leader == victim)
            .cloned()
            .collect()
    });
    assert_eq!(led.len(), 2);
    let (clean, unclean) = if led[0].stream_id.is_multiple_of(2) {
        (led[0].clone(), led[1].clone())
    } else {
        (led[1].clone(), led[0].clone())
    };
    // The victim's data plane says nobody keeps up: its ISR shrinks to itself.
    let others: Vec<u64> = (1..=3).filter(|n| *n != victim).collect();
    for a in [&clean, &unclean] {
        let mut r = report(a, victim, 100);
        r.proposed_isr = vec![victim];
        by_id(victim).cluster.local_replicas().put(r);
    }
    // The other replicas of the unclean stream: the second is further ahead.
    for (node, end) in [(others[0], 40), (others[1], 70)] {
        by_id(node)
            .cluster
            .local_replicas()
            .put(report(&unclean, node, end));
    }
    let isr_of = |n: &RunningNode, a: &PartitionAssignment| {
        n.cluster.view().read(|d| {
            let b = d.state.assignment(a.stream_id, 0).unwrap();
            (b.leader, b.isr.clone())
        })
    };
    wait_until("both ISRs shrank to the victim", || {
        [&clean, &unclean]
            .iter()
            .all(|a| isr_of(by_id(raft_leader), a) == (victim, vec![victim]))
    })
    .await;
    let rl = by_id(raft_leader);
    wait_until("the followers' reports reached the Raft leader", || {
        rl.cluster
            .cluster_replicas()
            .fresh(rl.cluster.report_max_age(), Instant::now())
            .get(&(unclean.stream_id, 0))
            .is_some_and(|rs| rs.len() == 3)
    })
    .await;

    let (dead, rest): (Vec<_>, Vec<_>) =
        nodes.into_iter().partition(|n| n.cluster.me().id == victim);
    for n in dead {
        n.shutdown().await;
    }
    let rl = rest
        .iter()
        .find(|n| n.cluster.me().id == raft_leader)
        .unwrap();
    wait_until("the unclean stream elected outside the ISR", || {
        isr_of(rl, &unclean) == (others[1], vec![others[1]])
    })
    .await;
    wait_until("the clean stream is leaderless", || {
        isr_of(rl, &clean) == (0, vec![victim])
    })
    .await;
    let unclean_elections: u64 = rest
        .iter()
        .map(|n| {
            n.cluster
                .unclean_elections
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(unclean_elections, 1, "one unclean election, counted once");
    let records = AuditLog::read_all(&audit_path).unwrap();
    let unclean_records: Vec<_> = records
        .iter()
        .filter(|r| r.action == "UncleanLeaderElection")
        .collect();
    assert_eq!(unclean_records.len(), 1, "{records:?}");
    let want = format!("stream-id:{} partition:0", unclean.stream_id);
    assert_eq!(unclean_records[0].resource, want);
    assert!(unclean_records[0].result.contains("OUTSIDE the ISR"));
    for n in rest {
        n.shutdown().await;
    }
}
