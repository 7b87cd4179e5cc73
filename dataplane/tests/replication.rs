//! Replication (#11) through whole data-plane nodes on loopback, in one process: three nodes,
//! each on a thread of its own (shared threading, yielding idle; no privileges; the tests run
//! one at a time, so a loaded machine runs three nodes, not nine), partition assignments written into each
//! node's command ring as the control plane would, records published into the leader's ring by
//! a local SDK publisher. The followers fetch over UDP from the leader's data port; the test
//! reads the three logs back from disk and the replica status records from each status ring.
//! The multi-process version in namespaces is `memstreamer/tests/netns_replication.rs`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use abi::assign::{
    AckDefault, PartitionAssignment, ReplicaEntry, ReplicaState, ReplicaStatus, Role,
    STATUS_RING_NAME,
};
use abi::command::COMMAND_RING_NAME;
use abi::counters::Counter;
use abi::frame::{FrameHeader, FrameType};
use abi::replication::{FetchBody, ReplicaHeader, NO_EPOCH};
use dataplane::config::{Idle, Threading};
use dataplane::{Config, NodeHandle, NodeParts};
use shm_ring::{Ring, StartAt};

const STREAM: u32 = 21;
/// Checks a wait makes at most (one per millisecond).
const CHECKS_MAX: usize = 60_000;
/// Wall-clock bound of one wait (a loaded 2-vCPU machine runs debug builds slowly).
const WAIT_MAX: Duration = Duration::from_secs(60);
/// One test at a time: each runs three nodes.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Node {
    id: u64,
    data_addr: SocketAddr,
    handle: Option<NodeHandle>,
    cfg: Config,
    status: shm_ring::Subscriber,
    commands: shm_ring::Publisher,
}

impl Node {
    fn start(dir: &Path, id: u64) -> Node {
        let root = dir.join(format!("n{id}"));
        let cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shm_dir: Some(root.join("shm")),
            storage_dir: Some(root.join("storage")),
            counters_file: root.join("counters"),
            ring_capacity_bytes: 1 << 20,
            node_id: id,
            heartbeat_interval_ns: 10_000_000,
            session_timeout_ns: 2_000_000_000,
            replica_lag_time_max_ns: 300_000_000,
            threading: Threading::Shared,
            idle: Idle::Yielding,
            ..Config::default()
        };
        let handle = NodeParts::build(&cfg).unwrap().start(&cfg).unwrap();
        let shm = cfg.shm_dir.clone();
        let status = Ring::open(STATUS_RING_NAME, shm.as_deref())
            .unwrap()
            .subscriber(StartAt::Earliest)
            .unwrap();
        let commands = Ring::open(COMMAND_RING_NAME, shm.as_deref())
            .unwrap()
            .publisher()
            .unwrap();
        Node {
            id,
            data_addr: handle.data_addr,
            handle: Some(handle),
            cfg,
            status,
            commands,
        }
    }

    fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    fn counter(&self, c: Counter) -> u64 {
        self.handle.as_ref().unwrap().counters.get(c)
    }

    /// The replication counters, for a failure message.
    fn describe(&self) -> String {
        let Some(h) = self.handle.as_ref() else {
            return format!("node {}: stopped", self.id);
        };
        let cs = [
            Counter::ReplAssignmentsApplied,
            Counter::ReplFetchesSent,
            Counter::ReplFetchesServed,
            Counter::ReplFetchRefusedLog,
            Counter::ReplReportsSent,
            Counter::ReplReportsAccepted,
            Counter::ReplReportsRefused,
            Counter::ReplHwReplicated,
            Counter::ReplHwPersisted,
            Counter::RxRecordsAppended,
            Counter::RxSessionsOpened,
            Counter::TxSubscribersActive,
            Counter::TxRecords,
            Counter::TxDataFrames,
            Counter::ConductorSubscribeRefused,
            Counter::ArchiverErrors,
            Counter::ArchivedRecords,
        ];
        let v: Vec<String> = cs
            .iter()
            .map(|&c| format!("{}={}", c.label(), h.counters.get(c)))
            .collect();
        format!("node {}: {}", self.id, v.join(", "))
    }

    fn command(&mut self, a: &PartitionAssignment) {
        self.commands.offer(&a.encode()).unwrap();
    }

    /// Status records written since the last call.
    fn statuses(&mut self) -> Vec<ReplicaStatus> {
        let mut out = Vec::new();
        self.status
            .poll(
                |r| out.push(ReplicaStatus::decode(r.payload).unwrap()),
                1024,
            )
            .unwrap();
        out
    }

    fn log_dir(&self) -> PathBuf {
        dataplane::archive::log_dir(self.cfg.storage_dir.as_ref().unwrap(), STREAM, 0)
    }

    /// Stops the node (its log is closed durable).
    fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

fn entry(n: &Node, in_isr: bool) -> ReplicaEntry {
    let SocketAddr::V4(a) = n.data_addr() else {
        panic!("IPv4 loopback");
    };
    ReplicaEntry {
        node: n.id,
        ipv4: a.ip().octets(),
        port: a.port(),
        in_isr,
    }
}

/// The assignment of partition (STREAM, 0) for `nodes[this]`: `leader` leads in `epoch`.
fn assignment(
    nodes: &[Node],
    this: usize,
    leader: usize,
    epoch: u64,
    isr: &[u64],
) -> PartitionAssignment {
    let replicas: Vec<ReplicaEntry> = nodes
        .iter()
        .map(|n| entry(n, isr.contains(&n.id)))
        .collect();
    let role = if this == leader {
        Role::Leader
    } else {
        Role::Follower
    };
    PartitionAssignment::new(
        STREAM,
        0,
        role,
        AckDefault::AllReplicated,
        2,
        epoch,
        nodes[leader].id,
        nodes[this].id,
        &replicas,
    )
    .unwrap()
}

fn assign_all(nodes: &mut [Node], leader: usize, epoch: u64, isr: &[u64]) {
    let all: Vec<PartitionAssignment> = (0..nodes.len())
        .map(|i| assignment(nodes, i, leader, epoch, isr))
        .collect();
    for (n, a) in nodes.iter_mut().zip(all) {
        n.command(&a);
    }
}

/// Waits until `done` (bounded in checks and time); panics naming `what` otherwise.
fn run_until(nodes: &mut [Node], what: &str, mut done: impl FnMut(&mut [Node]) -> bool) {
    let start = Instant::now();
    for _ in 0..CHECKS_MAX {
        if done(nodes) {
            return;
        }
        if start.elapsed() > WAIT_MAX {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let state: Vec<String> = nodes.iter().map(Node::describe).collect();
    panic!("not reached: {what}\n{}", state.join("\n"));
}

/// Every (offset, payload) of a log, in order.
fn read_log(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut reader = storage_nvme::Reader::open(dir).unwrap();
    let mut buf = storage_nvme::AlignedBuf::new(4 << 20).unwrap();
    let mut out = Vec::new();
    while let Some(batch) = reader.read_batch(&mut buf).unwrap() {
        for r in batch.records() {
            out.push((r.offset, r.payload.to_vec()));
        }
    }
    out
}

fn three(dir: &Path) -> Vec<Node> {
    (1..=3).map(|id| Node::start(dir, id)).collect()
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn followers_store_the_leaders_records_at_the_same_offsets() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three(dir.path());
    assign_all(&mut nodes, 0, 1, &[1, 2, 3]);
    let mut leads = false;
    run_until(&mut nodes, "the leader serves", |ns| {
        leads |= ns[0]
            .statuses()
            .iter()
            .any(|s| s.role == Role::Leader && s.state == ReplicaState::Serving);
        leads
            && ns
                .iter()
                .all(|n| n.counter(Counter::ReplAssignmentsApplied) == 1)
    });
    let ctx = sdk::Context::builder()
        .dir(nodes[0].cfg.shm_dir.clone().unwrap())
        .build();
    let mut publisher = ctx.publisher(STREAM, 0).unwrap();
    let count = 3000u64;
    let mut next = 0u64;
    let mut hw = 0;
    run_until(&mut nodes, "every record replicated and persisted", |ns| {
        while next < count {
            match publisher.offer(&next.to_le_bytes()) {
                Ok(_) => next += 1,
                Err(_) => break,
            }
        }
        for s in ns[0].statuses() {
            assert_eq!((s.role, s.node, s.leader_epoch), (Role::Leader, 1, 1));
            assert!(s.hw_persisted <= s.hw_replicated && s.hw_replicated <= s.log_end);
            assert!(s.hw_persisted >= hw, "the high watermark never goes back");
            hw = s.hw_persisted;
        }
        hw == count
    });
    assert!(nodes[0].counter(Counter::ReplFetchesServed) >= 2);
    assert!(nodes[0].counter(Counter::ReplReportsAccepted) > 0);
    assert_eq!(nodes[0].counter(Counter::ReplReportsRefused), 0);
    for f in &nodes[1..] {
        assert!(f.counter(Counter::ReplFetchesSent) >= 1);
    }
    let mut serving = [false; 2];
    run_until(&mut nodes, "both followers report serving", |ns| {
        for (seen, f) in serving.iter_mut().zip(&mut ns[1..]) {
            *seen |= f
                .statuses()
                .iter()
                .any(|s| (s.role, s.state) == (Role::Follower, ReplicaState::Serving));
        }
        serving == [true; 2]
    });
    for n in nodes.iter_mut() {
        n.stop();
    }
    let expected: Vec<(u64, Vec<u8>)> = (0..count).map(|i| (i, i.to_le_bytes().to_vec())).collect();
    for n in &nodes {
        assert_eq!(
            read_log(&n.log_dir()),
            expected,
            "node {}: every record once, in order, at the leader's offset",
            n.id
        );
    }
}

#[test]
fn a_silent_follower_is_proposed_out_of_the_isr() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three(dir.path());
    assign_all(&mut nodes, 0, 4, &[1, 2, 3]);
    run_until(&mut nodes, "followers connected", |ns| {
        ns[0].counter(Counter::ReplReportsAccepted) >= 4
    });
    // Node 3 stops (as if cut off); the leader keeps going. The test plays the control plane:
    // it commits every ISR the leader proposes (an assignment of the same epoch), until one
    // leaves node 3 out. (On a loaded machine node 2 may lag for a moment too, and rejoin.)
    nodes[2].stop();
    let mut committed: Vec<u64> = vec![1, 2, 3];
    run_until(&mut nodes, "an ISR proposal without node 3", |ns| {
        let proposals: Vec<Vec<u64>> = ns[0]
            .statuses()
            .iter()
            .map(|s| s.proposed_isr().to_vec())
            .filter(|p| !p.is_empty())
            .collect();
        for p in proposals {
            if p != committed {
                committed = p;
                let a = assignment(ns, 0, 0, 4, &committed);
                ns[0].command(&a);
            }
        }
        !committed.contains(&3)
    });
    assert_eq!(committed[0], 1, "the leader stays in its ISR");
    assert!(nodes[0].counter(Counter::ReplIsrProposals) >= 1);
}

#[test]
fn bad_assignments_and_fetches_are_refused_and_counted() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three(dir.path());
    // For another node, then the real one, then an older epoch.
    let mut wrong = assignment(&nodes, 1, 0, 5, &[1, 2, 3]);
    nodes[0].command(&wrong);
    let good = assignment(&nodes, 0, 0, 5, &[1, 2, 3]);
    nodes[0].command(&good);
    wrong = assignment(&nodes, 0, 0, 4, &[1, 2, 3]);
    nodes[0].command(&wrong);
    run_until(&mut nodes, "three assignments read", |ns| {
        ns[0].counter(Counter::ReplAssignmentsApplied)
            + ns[0].counter(Counter::ReplAssignmentsRefused)
            == 3
    });
    assert_eq!(nodes[0].counter(Counter::ReplAssignmentsRefused), 2);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let leader = nodes[0].data_addr();
    let fetch = |replica_id: u64, leader_epoch: u64| {
        let body = FetchBody {
            replica: ReplicaHeader {
                stream_id: STREAM,
                partition: 0,
                replica_id,
                leader_epoch,
            },
            fetch_offset: 0,
            last_fetched_epoch: NO_EPOCH,
            window_bytes: 1 << 16,
        };
        let h = FrameHeader {
            frame_type: FrameType::Fetch,
            flags: 0,
            stream_id: STREAM,
            partition: 0,
            session_id: 77,
            offset: 0,
            epoch: 1,
        };
        let mut out = Vec::new();
        h.encode(&body.encode(), &mut out).unwrap();
        out
    };
    // A node outside the replica set, a forged epoch, a member from the wrong address, junk.
    sock.send_to(&fetch(9, 5), leader).unwrap();
    sock.send_to(&fetch(2, 6), leader).unwrap();
    sock.send_to(&fetch(2, 5), leader).unwrap();
    let mut junk = fetch(2, 5);
    junk.truncate(60);
    sock.send_to(&junk, leader).unwrap();
    run_until(&mut nodes, "the fetches counted", |ns| {
        ns[0].counter(Counter::ReplFetchRefusedNotMember) == 2
            && ns[0].counter(Counter::ReplFetchRefusedEpoch) == 1
    });
    assert_eq!(nodes[0].counter(Counter::ReplFetchesServed), 0);
    // Role None takes the partition away again.
    let mut none = PartitionAssignment::new(
        STREAM,
        0,
        Role::None,
        AckDefault::Leader,
        1,
        5,
        0,
        1,
        &[entry(&nodes[1], true)],
    )
    .unwrap();
    nodes[0].command(&none);
    run_until(&mut nodes, "the partition removed", |ns| {
        ns[0].counter(Counter::ConductorPartitionsRemoved) == 1
    });
    let removed = nodes[0]
        .statuses()
        .into_iter()
        .any(|s| s.state == ReplicaState::Removed);
    assert!(removed, "a Removed status is written");
    none = assignment(&nodes, 0, 0, 5, &[1]);
    nodes[0].command(&none);
    run_until(&mut nodes, "re-assigned", |ns| {
        ns[0].counter(Counter::ConductorPartitionsAdded) == 2
    });
}

/// A remote publisher's durable acknowledgements from a leader whose partition defaults to
/// ack mode `all`: while the ISR (min 2) has no follower that reports, nothing is acknowledged
/// although the leader has the records on its own disk; once the control plane moves the
/// partition to an epoch whose ISR is the leader alone with min ISR 1, they are.
#[test]
fn remote_durable_acks_wait_for_the_isr() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three(dir.path());
    assign_all(&mut nodes, 0, 2, &[1, 2, 3]);
    let mut leads = false;
    run_until(&mut nodes, "the leader serves", |ns| {
        leads |= ns[0].statuses().iter().any(|s| s.role == Role::Leader);
        leads
    });
    nodes[1].stop();
    nodes[2].stop();
    let mut cfg = sdk::net::PublisherConfig::new(STREAM, 0, 3, "acks");
    cfg.release = sdk::net::Release::Durable;
    let leader = nodes[0].data_addr();
    let mut p = sdk::net::UdpPublisher::new("127.0.0.1:0".parse().unwrap(), leader, cfg).unwrap();
    assert!(p.wait_connected(Duration::from_secs(10)));
    for v in 0..10u64 {
        p.offer(0, &v.to_le_bytes()).unwrap();
    }
    // The leader holds them on its disk, and two more status periods pass.
    let mut periods = 0;
    run_until(&mut nodes, "the records durable on the leader", |ns| {
        p.do_work();
        for s in ns[0].statuses() {
            assert_eq!(
                s.hw_replicated, 0,
                "no ISR follower reports: nothing commits"
            );
            if s.durable >= 10 {
                periods += 1;
            }
        }
        periods >= 3
    });
    p.do_work();
    assert_eq!(
        p.session().durable_offset(),
        0,
        "nothing acknowledged below min ISR"
    );
    // New epoch: the leader alone, min ISR 1.
    let replicas = [
        entry(&nodes[0], true),
        entry(&nodes[1], false),
        entry(&nodes[2], false),
    ];
    let alone = PartitionAssignment::new(
        STREAM,
        0,
        Role::Leader,
        AckDefault::AllReplicated,
        1,
        3,
        1,
        1,
        &replicas,
    )
    .unwrap();
    nodes[0].command(&alone);
    run_until(&mut nodes, "every record acknowledged", |_| {
        p.do_work();
        p.session().is_drained()
    });
    assert_eq!(p.session().durable_offset(), 10 * 16);
}
