//! Replication (#11) between three `memstreamer dataplane` processes, each in its own network
//! namespace (198.19.110.0/24 on a bridge in a fourth namespace), UDP backend. No control plane:
//! the test writes the partition assignments into each node's command ring and commits the ISR
//! changes the leader proposes on its status ring, as the control plane will. Records are
//! published into the leader's ring by a local SDK publisher; a record counts as acknowledged
//! (ack mode `all`, persisted) once the leader's persisted high watermark passes it.
//!
//! Checked: every acknowledged record is on all three logs at the same offset, in order, once
//! (also those of a remote `sdk::net` publisher whose durable acknowledgements the leader
//! gates on the persisted high watermark);
//! a follower whose link is cut (`ip link set down`) is proposed out of the ISR, the leader
//! keeps committing with the remaining ISR (min ISR 2), and after the link is back the
//! follower catches up from the leader's storage and is proposed back in.
//!
//! The replicated partition is the nodes' configured stream (placed by assignment all the same),
//! so each node preallocates one log segment, not two. Needs root and `ip`
//! (`testkit::require!`); namespaces, links, processes and files are removed by `Drop`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use abi::assign::{
    AckDefault, PartitionAssignment, ReplicaEntry, ReplicaState, ReplicaStatus, Role,
    STATUS_RING_NAME,
};
use abi::command::COMMAND_RING_NAME;
use shm_ring::{Ring, StartAt};

const BIN: &str = env!("CARGO_BIN_EXE_memstreamer");
const NODES: usize = 3;
const NET: &str = "198.19.110";
const PORT: u16 = 7470;
const STREAM: u32 = 31;
const WAIT_MAX: Duration = Duration::from_secs(60);
/// One test at a time: each preallocates a log segment (1 GiB) per node.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces, links, node processes and files of the test; all removed on drop.
struct Cluster {
    tag: String,
    dir: tempfile::TempDir,
    procs: Vec<Option<Child>>,
    status: Vec<Option<shm_ring::Subscriber>>,
    /// The ISR the test (as the control plane) last committed, the leader (index) and epoch.
    committed: Vec<u64>,
    leader: usize,
    epoch: u64,
}

impl Cluster {
    fn client_ns(&self) -> String {
        format!("{}c", self.tag)
    }

    fn node_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// `name`: a letter unique per test (namespace names).
    fn new(name: &str) -> Cluster {
        let tag = format!("msrp{}{name}", std::process::id() % 100_000);
        let net = Cluster {
            tag,
            dir: tempfile::tempdir().unwrap(),
            procs: (0..NODES).map(|_| None).collect(),
            status: (0..NODES).map(|_| None).collect(),
            committed: vec![1, 2, 3],
            leader: 0,
            epoch: 1,
        };
        let c = net.client_ns();
        ip(&["netns", "add", &c]);
        ip(&["-n", &c, "link", "set", "lo", "up"]);
        ip(&["-n", &c, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &c,
            "addr",
            "add",
            &format!("{NET}.254/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &c, "link", "set", "br0", "up"]);
        for i in 0..NODES {
            let n = net.node_ns(i);
            let (v, e) = (format!("v{i}"), format!("e{i}"));
            ip(&["netns", "add", &n]);
            ip(&["-n", &n, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &c, "link", "add", &v, "type", "veth", "peer", "name", &e, "netns", &n,
            ]);
            ip(&["-n", &c, "link", "set", &v, "master", "br0", "up"]);
            let addr = format!("{NET}.{}/24", i + 1);
            ip(&["-n", &n, "addr", "add", &addr, "dev", &e]);
            ip(&["-n", &n, "link", "set", &e, "up"]);
        }
        net
    }

    fn root(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}"))
    }

    fn shm(&self, i: usize) -> PathBuf {
        self.root(i).join("shm")
    }

    fn log_dir(&self, i: usize) -> PathBuf {
        dataplane::archive::log_dir(&self.root(i).join("storage"), STREAM, 0)
    }

    /// Starts node i (id i + 1) and waits for its ready line.
    fn start(&mut self, i: usize) {
        let cfg = self.root(i).join("node.toml");
        std::fs::create_dir_all(self.root(i)).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "backend = \"udp\"\nlisten = \"{NET}.{}:{PORT}\"\nidle = \"yielding\"\n\
                 node_id = {}\nshm_dir = \"{}\"\nstorage_dir = \"{}\"\ncounters_file = \"{}\"\n\
                 ring_capacity_bytes = 1048576\nheartbeat_interval_ns = 20000000\n\
                 session_timeout_ns = 1000000000\nreplica_lag_time_max_ns = 1000000000\n\
                 [[streams]]\nid = {STREAM}\n",
                i + 1,
                i + 1,
                self.shm(i).display(),
                self.root(i).join("storage").display(),
                self.root(i).join("counters").display(),
            ),
        )
        .unwrap();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node_ns(i),
                BIN,
                "dataplane",
                "--config",
            ])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start memstreamer dataplane");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let ready = (0..10).any(|_| {
            lines
                .next()
                .and_then(Result::ok)
                .is_some_and(|l| l.starts_with("memstreamer dataplane: streams"))
        });
        assert!(ready, "node {i} did not start");
        // Keep reading its stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.procs[i] = Some(child);
        let status = Ring::open(STATUS_RING_NAME, Some(&self.shm(i)))
            .unwrap()
            .subscriber(StartAt::Earliest)
            .unwrap();
        self.status[i] = Some(status);
    }

    /// SIGTERM, then waits: the node closes its log durable.
    fn stop(&mut self, i: usize) {
        let Some(mut child) = self.procs[i].take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
        self.status[i] = None;
    }

    /// Node i's non-zero counters (from its counters file), for a failure message.
    fn describe(&self, i: usize) -> String {
        let path = self.root(i).join("counters");
        match abi::counters::CountersSnapshot::read(&path) {
            Ok(snap) => {
                let v: Vec<String> = abi::counters::Counter::ALL
                    .iter()
                    .filter_map(|&k| snap.get(k).filter(|&v| v > 0).map(|v| (k, v)))
                    .map(|(k, v)| format!("{}={v}", k.label()))
                    .collect();
                format!("node {}: {}", i + 1, v.join(", "))
            }
            Err(e) => format!("node {}: {e}", i + 1),
        }
    }

    fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.client_ns(),
            "link",
            "set",
            &format!("v{i}"),
            state,
        ]);
    }

    fn entry(&self, i: usize, isr: &[u64]) -> ReplicaEntry {
        let id = i as u64 + 1;
        ReplicaEntry {
            node: id,
            ipv4: [198, 19, 110, i as u8 + 1],
            port: PORT,
            in_isr: isr.contains(&id),
        }
    }

    /// Writes the assignment of (STREAM, 0) into every running node's command ring: node
    /// `leader` leads in `epoch` with the committed `isr`.
    fn assign(&mut self, leader: usize, epoch: u64, isr: &[u64]) {
        (self.leader, self.epoch, self.committed) = (leader, epoch, isr.to_vec());
        let replicas: Vec<ReplicaEntry> = (0..NODES).map(|i| self.entry(i, isr)).collect();
        for i in (0..NODES).filter(|&i| self.procs[i].is_some()) {
            let role = if i == leader {
                Role::Leader
            } else {
                Role::Follower
            };
            let a = PartitionAssignment::new(
                STREAM,
                0,
                role,
                AckDefault::AllPersisted,
                2,
                epoch,
                leader as u64 + 1,
                i as u64 + 1,
                &replicas,
            )
            .unwrap();
            let ring = Ring::open(COMMAND_RING_NAME, Some(&self.shm(i))).unwrap();
            ring.publisher().unwrap().offer(&a.encode()).unwrap();
        }
    }

    /// Status records node i wrote since the last call.
    fn statuses(&mut self, i: usize) -> Vec<ReplicaStatus> {
        let mut out = Vec::new();
        if let Some(s) = self.status[i].as_mut() {
            let _ = s.poll(
                |r| {
                    if let Ok(st) = ReplicaStatus::decode(r.payload) {
                        out.push(st);
                    }
                },
                4096,
            );
        }
        out
    }
}

impl Cluster {
    /// The leader's status records since the last call, after the control plane's part:
    /// every new ISR the leader proposes is committed (an assignment of the same epoch).
    fn leader_statuses(&mut self) -> Vec<ReplicaStatus> {
        let statuses = self.statuses(self.leader);
        for s in &statuses {
            let p = s.proposed_isr();
            if s.leader_epoch == self.epoch && !p.is_empty() && p != self.committed.as_slice() {
                self.assign(self.leader, self.epoch, p);
            }
        }
        statuses
    }

    /// kill -9 of node i (`ip netns exec` execs the node: the pid is the node's).
    fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.procs[i].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.status[i] = None;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..NODES {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.node_ns(i)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client_ns()])
            .output();
    }
}

/// Waits (bounded) until `done`; panics naming `what`, with the nodes' counters.
fn wait_for(c: &mut Cluster, what: &str, mut done: impl FnMut(&mut Cluster) -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while Instant::now() < deadline {
        if done(c) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let counters: Vec<String> = (0..NODES).map(|i| c.describe(i)).collect();
    panic!(
        "not reached within {WAIT_MAX:?}: {what}\n{}",
        counters.join("\n")
    );
}

/// Publishes records `from..to` (u64 payloads) into the leader's ring.
fn publish(p: &mut sdk::Publisher, from: u64, to: u64) {
    let deadline = Instant::now() + WAIT_MAX;
    let mut next = from;
    while next < to {
        match p.offer(&next.to_le_bytes()) {
            Ok(_) => next += 1,
            Err(_) => {
                assert!(Instant::now() < deadline, "the leader's ring stays full");
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}

/// A remote publisher in the client namespace sends `count` records (values from `first`)
/// to the leader's data port with durable acknowledgements: the leader acknowledges a record
/// once the partition's policy (`all`, persisted) commits it. Returns the records acknowledged.
fn publish_remote(ns: String, first: u64, count: u64) -> u64 {
    let run = move || {
        dataplane::testnet::enter_netns(&ns).unwrap();
        let mut cfg = sdk::net::PublisherConfig::new(STREAM, 0, 5, "netns-replication");
        cfg.release = sdk::net::Release::Durable;
        let node: std::net::SocketAddr = format!("{NET}.1:{PORT}").parse().unwrap();
        let bind: std::net::SocketAddr = format!("{NET}.254:0").parse().unwrap();
        let mut p = sdk::net::UdpPublisher::new(bind, node, cfg).unwrap();
        assert!(
            p.wait_connected(Duration::from_secs(10)),
            "SETUP acknowledged"
        );
        let deadline = Instant::now() + WAIT_MAX;
        let mut next = first;
        while Instant::now() < deadline {
            while next < first + count && p.offer(0, &next.to_le_bytes()).is_ok() {
                next += 1;
            }
            p.do_work();
            if next == first + count && p.session().is_drained() {
                break;
            }
        }
        // 16 bytes per record in the session: an 8-byte header and the 8-byte value.
        p.session().durable_offset() / 16
    };
    std::thread::spawn(run).join().unwrap()
}

/// Every (offset, value) of a log, in order.
fn read_log(dir: &Path) -> Vec<(u64, u64)> {
    let mut reader = storage_nvme::Reader::open(dir).unwrap();
    let mut buf = storage_nvme::AlignedBuf::new(4 << 20).unwrap();
    let mut out = Vec::new();
    while let Some(batch) = reader.read_batch(&mut buf).unwrap() {
        for r in batch.records() {
            out.push((r.offset, u64::from_le_bytes(r.payload.try_into().unwrap())));
        }
    }
    out
}

/// Waits until the leader's persisted high watermark reaches `hw` (every record below is on
/// the disk of every ISR member: acknowledged under `all`).
fn wait_hw(c: &mut Cluster, hw: u64) {
    let mut seen = 0;
    wait_for(c, &format!("persisted high watermark {hw}"), |c| {
        for s in c.leader_statuses() {
            assert!(s.hw_persisted >= seen, "the high watermark never goes back");
            seen = s.hw_persisted;
        }
        seen >= hw
    });
}

/// Waits until the committed ISR is `want` (the leader proposes, the test commits).
fn wait_isr(c: &mut Cluster, want: &[u64]) {
    wait_for(c, &format!("committed ISR {want:?}"), |c| {
        c.leader_statuses();
        c.committed == want
    });
}

#[test]
fn three_processes_replicate_and_a_cut_follower_leaves_the_isr_and_catches_up() {
    testkit::require!(testkit::netns("three data-plane nodes in namespaces"));
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::new("a");
    for i in 0..NODES {
        c.start(i);
    }
    c.assign(0, 1, &[1, 2, 3]);
    wait_for(&mut c, "the leader serves", |c| {
        c.leader_statuses()
            .iter()
            .any(|s| (s.role, s.state) == (Role::Leader, ReplicaState::Serving))
    });
    let ctx = sdk::Context::builder().dir(c.shm(0)).build();
    let mut publisher = ctx.publisher(STREAM, 0).unwrap();
    publish(&mut publisher, 0, 2000);
    wait_hw(&mut c, 2000);

    // Node 3's link goes down: the leader proposes an ISR without it; with {1, 2} (min ISR 2)
    // records still commit.
    c.set_link(2, false);
    // (A proposal may also drop node 2 for a moment on a loaded machine; it is proposed back
    // as soon as it is caught up, and the test commits whatever the leader proposes.)
    wait_isr(&mut c, &[1, 2]);
    publish(&mut publisher, 2000, 3000);
    wait_hw(&mut c, 3000);

    // Back: node 3 fetches from its log end (the leader serves it from storage, then live)
    // and is proposed back into the ISR once caught up.
    c.set_link(2, true);
    wait_isr(&mut c, &[1, 2, 3]);
    wait_for(&mut c, "node 3 holds every record on disk", |c| {
        c.leader_statuses();
        c.statuses(2).iter().any(|s| s.durable >= 3000)
    });

    // A remote publisher with durable acknowledgements: the partition's default ack mode is
    // `all` (persisted), so the leader acknowledges only what every ISR member has on disk.
    let remote = 2000;
    let acked = publish_remote(c.client_ns(), 1_000_000, remote);
    assert_eq!(acked, remote, "every remote record acknowledged");
    for i in 0..NODES {
        c.stop(i);
    }
    let expected: Vec<(u64, u64)> = (0..3000)
        .map(|v| (v, v))
        .chain((0..remote).map(|k| (3000 + k, 1_000_000 + k)))
        .collect();
    for i in 0..NODES {
        assert_eq!(
            read_log(&c.log_dir(i)),
            expected,
            "node {}: every acknowledged record once, in order, at the leader's offset",
            i + 1
        );
    }
}

/// Leader failover at the data path: the leader is killed with SIGKILL once its records are
/// acknowledged; the test (as the control plane) moves the partition to a new epoch with a
/// leader from the committed ISR; publishing continues there; the killed node restarts from its disk,
/// follows the new leader and catches up. Every acknowledged record of both epochs is on all
/// three logs at the same offset, once, in order.
#[test]
fn the_leader_is_killed_and_a_new_epoch_leader_from_the_isr_continues() {
    testkit::require!(testkit::netns(
        "three data-plane nodes in namespaces, one killed"
    ));
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::new("b");
    for i in 0..NODES {
        c.start(i);
    }
    c.assign(0, 1, &[1, 2, 3]);
    wait_for(&mut c, "node 1 leads", |c| {
        c.leader_statuses()
            .iter()
            .any(|s| (s.role, s.state) == (Role::Leader, ReplicaState::Serving))
    });
    let mut first = sdk::Context::builder()
        .dir(c.shm(0))
        .build()
        .publisher(STREAM, 0)
        .unwrap();
    publish(&mut first, 0, 1000);
    wait_hw(&mut c, 1000);
    drop(first);

    c.kill9(0);
    // Epoch 2: the new leader is an ISR member (on a loaded machine the ISR may have lost a
    // follower that was slow to start); the ISR keeps the others that were in it.
    let isr: Vec<u64> = c.committed.iter().copied().filter(|&n| n != 1).collect();
    let leader = isr[0] as usize - 1;
    let (publisher_dir, fresh_isr) = (c.shm(leader), isr.clone());
    c.assign(leader, 2, &fresh_isr);
    wait_for(&mut c, "a new leader in epoch 2", |c| {
        c.leader_statuses()
            .iter()
            .any(|s| (s.role, s.state, s.leader_epoch) == (Role::Leader, ReplicaState::Serving, 2))
    });
    let mut second = sdk::Context::builder()
        .dir(publisher_dir)
        .build()
        .publisher(STREAM, 0)
        .unwrap();
    publish(&mut second, 1000, 2000);
    wait_hw(&mut c, 2000);

    // Node 1 comes back from its disk as a follower of epoch 2 and is proposed back in.
    c.start(0);
    let isr = c.committed.clone();
    c.assign(leader, 2, &isr);
    wait_for(&mut c, "all three in the ISR", |c| {
        c.leader_statuses();
        c.committed.len() == 3
    });
    wait_for(&mut c, "node 1 holds every record on disk", |c| {
        c.leader_statuses();
        c.statuses(0).iter().any(|s| s.durable >= 2000)
    });
    for i in 0..NODES {
        c.stop(i);
    }
    let expected: Vec<(u64, u64)> = (0..2000).map(|v| (v, v)).collect();
    for i in 0..NODES {
        assert_eq!(
            read_log(&c.log_dir(i)),
            expected,
            "node {}: every acknowledged record once, in order, at the same offset",
            i + 1
        );
    }
}
