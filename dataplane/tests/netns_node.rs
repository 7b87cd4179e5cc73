//! The node's data plane on real network namespaces, a real veth pair, the
//! real XDP program and a real AF_XDP socket:
//!
//! ```text
//!  peer netns: sdk::net::UdpPublisher / raw UDP sender --veth--> node netns: XDP -> AF_XDP
//!              (198.18.S.2)                                       -> node (receiver, archiver, ...)
//!  test process: sdk::Subscriber on the node's shm ring (local subscriber)
//! ```
//! The node runs in-process (`NodeParts::build` + `start`, shared threading)
//! on a thread that entered the node namespace. The kernel here has no
//! `sch_netem`, so the loss test attaches xdp-programs' link-loss tc filter
//! (5 % of the UDP packets each way, seeded) to the peer's end of the veth
//! pair: the kernel drops them on the link. Needs root; the
//! tests run one at a time (2 vCPUs); addresses only from 198.18.0.0/15;
//! every namespace, pin, ring and directory is removed on every path.

use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::conductor::{StreamCommand, COMMAND_RING_NAME};
use dataplane::config::Config;
use dataplane::counters::{Counter, CountersSnapshot};
use dataplane::testnet::TestNet;
use dataplane::{Backend, NodeParts};
use sdk::net::wire::SubscribeStart;
use sdk::net::{NetOfferError, PublisherConfig, PublisherStats, UdpPublisher};
use sdk::StartAt;
use xdp_programs::frame::{FrameHeader, FrameType};
use xdp_programs::link_loss::{LinkLoss, LossDirection};
use xdp_programs::{PolicyMaps, Verdict, VerdictCounts};

const PORT: u16 = 7447;
/// A thread that entered a namespace and returns `T`.
type InNetns<T> = JoinHandle<Result<T, dataplane::testnet::NetnsEnterError>>;
const STREAM: u32 = 7;
const WAIT_MAX: Duration = Duration::from_secs(30);
/// One node at a time: the machine has 2 vCPUs and each node busy-polls.
static SERIAL: Mutex<()> = Mutex::new(());

/// What root is for here; with `ip`, all these tests need (`testkit::require!`).
const NEEDS: &str = "netns, XDP, AF_XDP";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8; 8 + (i % 48) as usize];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

fn node_config(net: &TestNet, dir: &Path, storage: bool, default_allow: bool) -> Config {
    Config {
        backend: Backend::Afxdp,
        listen: SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT)),
        interface: Some(net.node_if.clone()),
        shm_dir: Some(dir.join("shm")),
        storage_dir: storage.then(|| dir.join("storage")),
        counters_file: dir.join("counters"),
        ring_capacity_bytes: 4 << 20,
        xdp_default_allow: default_allow,
        ..Config::default()
    }
}

/// A node running on a thread inside the node namespace.
struct Node {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<InNetns<usize>>,
    counters_file: PathBuf,
    describe: String,
}

impl Node {
    fn start(net: &TestNet, cfg: Config) -> Node {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let counters_file = cfg.counters_file.clone();
        let thread = TestNet::spawn_in(&net.node_ns, move || {
            let started = NodeParts::build(&cfg).and_then(|p| p.start(&cfg));
            match started {
                Ok(handle) => {
                    let _ = ready_tx.send(Ok(handle.describe.clone()));
                    let _ = stop_rx.recv_timeout(Duration::from_secs(600));
                    handle.stop()
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    0
                }
            }
        });
        let describe = ready_rx
            .recv_timeout(WAIT_MAX)
            .expect("node thread answered")
            .expect("node started");
        Node {
            stop: Some(stop_tx),
            thread: Some(thread),
            counters_file,
            describe,
        }
    }

    fn counter(&self, c: Counter) -> u64 {
        CountersSnapshot::read(&self.counters_file)
            .ok()
            .and_then(|s| s.get(c))
            .unwrap_or(0)
    }

    /// Waits (bounded) until counter `c` reaches `at_least` in the counters
    /// file (the conductor refreshes it); returns its value.
    fn wait_counter(&self, c: Counter, at_least: u64) -> u64 {
        let deadline = Instant::now() + WAIT_MAX;
        while self.counter(c) < at_least && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.counter(c)
    }

    /// Waits (bounded) until the counters file's row of (`stream`, `partition`) shows at least
    /// `at_least` durable records; returns that row's (archived, durable), None without a row.
    fn wait_partition_durable(
        &self,
        stream: u32,
        partition: u16,
        at_least: u64,
    ) -> Option<(u64, u64)> {
        let row = || {
            CountersSnapshot::read(&self.counters_file)
                .ok()?
                .partitions
                .into_iter()
                .find(|p| (p.stream, p.partition) == (stream, partition))
                .map(|p| (p.archived_records, p.durable_records))
        };
        let deadline = Instant::now() + WAIT_MAX;
        while row().is_none_or(|(_, d)| d < at_least) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        row()
    }

    /// Stops the agents; returns how many agent threads had panicked.
    fn stop(mut self) -> usize {
        self.stop.take();
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("node thread")
            .expect("entered node netns")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn local_subscriber(dir: &Path) -> sdk::Subscriber {
    sdk::Context::builder()
        .dir(dir.join("shm"))
        .start_at(StartAt::Earliest)
        .build()
        .subscriber(STREAM, 0)
}

/// Polls the local subscriber until it holds `count` records or WAIT_MAX passes.
fn collect(sub: &mut sdk::Subscriber, got: &mut Vec<Vec<u8>>, count: usize) {
    let deadline = Instant::now() + WAIT_MAX;
    while got.len() < count && Instant::now() < deadline {
        let n = sub
            .poll(|r| got.push(r.payload.to_vec()), 256)
            .expect("ring poll");
        if n == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn assert_in_order_exactly_once(got: &[Vec<u8>], count: u64) {
    assert_eq!(got.len() as u64, count, "records delivered");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &payload(i as u64), "record {i}");
    }
}

enum PubCmd {
    Offer(u64),
    Close,
}

/// A remote publisher on a thread in the peer namespace, driven by commands
/// and running duty cycles in between (so NAKs and heartbeats are served).
struct RemotePublisher {
    cmds: mpsc::Sender<PubCmd>,
    thread: InNetns<(u64, bool, PublisherStats)>,
}

impl RemotePublisher {
    fn start(net: &TestNet, local: SocketAddr, node: SocketAddr) -> RemotePublisher {
        Self::start_on(net, local, node, STREAM)
    }

    fn start_on(
        net: &TestNet,
        local: SocketAddr,
        node: SocketAddr,
        stream: u32,
    ) -> RemotePublisher {
        let (cmds, rx) = mpsc::channel();
        let thread = TestNet::spawn_in(&net.peer_ns, move || {
            let mut cfg = PublisherConfig::new(stream, 0, 11, "tester");
            cfg.buffer_bytes = 1 << 20;
            cfg.heartbeat_interval_ns = 5_000_000;
            cfg.setup_retry_ns = 20_000_000;
            let mut p = UdpPublisher::new(local, node, cfg).expect("publisher");
            let (mut offered, mut target) = (0u64, 0u64);
            let deadline = Instant::now() + Duration::from_secs(120);
            let (mut closing, mut closed) = (false, false);
            while Instant::now() < deadline {
                match rx.try_recv() {
                    Ok(PubCmd::Offer(n)) => target += n,
                    Ok(PubCmd::Close) | Err(mpsc::TryRecvError::Disconnected) => closing = true,
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                while offered < target && p.session().is_connected() {
                    match p.offer(0, &payload(offered)) {
                        Ok(_) => offered += 1,
                        Err(NetOfferError::BackPressured) => break,
                        Err(e) => panic!("offer: {e}"),
                    }
                }
                if closing && offered == target {
                    // Everything requested is offered: wait for the acks, then END_OF_SESSION.
                    closed = p.close(WAIT_MAX);
                    break;
                }
                if p.do_work() == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            (offered, closed, p.session().stats())
        });
        RemotePublisher { cmds, thread }
    }

    fn offer(&self, n: u64) {
        self.cmds.send(PubCmd::Offer(n)).expect("publisher alive");
    }

    /// Offers what was requested, closes after everything is acknowledged:
    /// (offered, closed cleanly, stats).
    fn finish(self) -> (u64, bool, PublisherStats) {
        let _ = self.cmds.send(PubCmd::Close);
        self.thread
            .join()
            .expect("publisher thread")
            .expect("entered peer netns")
    }
}

fn maps(net: &TestNet) -> PolicyMaps {
    PolicyMaps::open(&net.node_if).expect("the node pinned its maps")
}

fn verdicts(net: &TestNet) -> VerdictCounts {
    maps(net).counters().expect("XDP counters")
}

fn delta(after: &VerdictCounts, before: &VerdictCounts, v: Verdict) -> u64 {
    after.get(v) - before.get(v)
}

fn any_addr() -> SocketAddr {
    "0.0.0.0:0".parse().expect("addr")
}

#[test]
fn remote_publisher_to_local_subscriber_in_order_exactly_once() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-node", 202).expect("test network");
    let node = Node::start(&net, node_config(&net, dir.path(), false, true));
    assert!(node.describe.contains("afxdp"), "{}", node.describe);
    assert!(node.describe.contains("copy-mode"), "{}", node.describe);
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    const N: u64 = 20_000;
    let publisher = RemotePublisher::start(&net, any_addr(), node_addr);
    publisher.offer(N);
    let mut sub = local_subscriber(dir.path());
    let mut got = Vec::new();
    collect(&mut sub, &mut got, N as usize);
    let (offered, closed, stats) = publisher.finish();
    assert_eq!(offered, N);
    assert!(closed, "every record acknowledged: {stats:?}");
    assert_in_order_exactly_once(&got, N);
    assert!(node.wait_counter(Counter::RxRecordsAppended, N) >= N);
    assert!(
        verdicts(&net).get(Verdict::Redirect) > 0,
        "frames came through AF_XDP"
    );
    assert_eq!(node.stop(), 0, "no agent panicked");
}

#[test]
fn lossy_link_nak_and_retransmit_recover_every_record() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-loss", 203).expect("test network");
    let node = Node::start(&net, node_config(&net, dir.path(), false, true));
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    // 5 % of the UDP packets lost each way on the peer's end of the veth pair, in the kernel
    // (xdp-programs' link-loss tc filter: egress = publisher -> node, ingress = STATUS, NAK
    // and retransmission answers coming back). Detached when `loss` is dropped.
    let peer_if = net.peer_if.clone();
    let loss = TestNet::spawn_in(&net.peer_ns, move || {
        LinkLoss::attach(&peer_if, LossDirection::Both, 50_000, 0x5EED)
    })
    .join()
    .expect("link-loss thread")
    .expect("entered peer netns")
    .expect("attach the link-loss filter");
    const N: u64 = 10_000;
    let publisher = RemotePublisher::start(&net, any_addr(), node_addr);
    publisher.offer(N);
    let mut sub = local_subscriber(dir.path());
    let mut got = Vec::new();
    collect(&mut sub, &mut got, N as usize);
    let (offered, closed, stats) = publisher.finish();
    let (dropped, passed) = loss.counts().expect("link-loss counters");
    drop(loss);
    assert_eq!(offered, N);
    assert_in_order_exactly_once(&got, N);
    assert!(closed, "every record acknowledged despite loss: {stats:?}");
    assert!(
        dropped > 0 && passed > dropped,
        "the link lost some datagrams: dropped {dropped} passed {passed}"
    );
    assert!(
        node.wait_counter(Counter::RxNaksSent, 1) > 0,
        "the node NAKed the gaps"
    );
    assert!(
        stats.retransmit_frames > 0,
        "the publisher re-sent: {stats:?}"
    );
    assert_eq!(node.stop(), 0);
}

#[test]
fn policy_deny_drops_in_xdp_and_reallow_restores() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-pol", 204).expect("test network");
    let node = Node::start(&net, node_config(&net, dir.path(), false, false));
    let peer = IpAddr::V4(net.peer_ip);
    maps(&net).allow(peer, STREAM).expect("allow");
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    let publisher = RemotePublisher::start(&net, any_addr(), node_addr);
    let mut sub = local_subscriber(dir.path());
    let mut got = Vec::new();
    publisher.offer(100);
    collect(&mut sub, &mut got, 100);
    assert_eq!(got.len(), 100, "allowed source delivers");

    // Deny through the running node's pinned maps: XDP drops and counts.
    let before = verdicts(&net);
    maps(&net).deny(peer, STREAM).expect("deny");
    publisher.offer(100);
    std::thread::sleep(Duration::from_millis(500));
    sub.poll(|r| got.push(r.payload.to_vec()), 1000)
        .expect("poll");
    assert_eq!(got.len(), 100, "nothing passes while denied");
    let after = verdicts(&net);
    assert!(delta(&after, &before, Verdict::DropPolicy) > 0, "{after:?}");
    assert_eq!(delta(&after, &before, Verdict::Redirect), 0, "{after:?}");

    // Re-allow: the publisher's heartbeats reveal the gap, NAK/retransmit fill it.
    maps(&net).allow(peer, STREAM).expect("re-allow");
    collect(&mut sub, &mut got, 200);
    let (offered, closed, stats) = publisher.finish();
    assert_eq!(offered, 200);
    assert!(closed, "{stats:?}");
    assert_in_order_exactly_once(&got, 200);
    assert_eq!(node.stop(), 0);
}

/// A valid frame header (and CRC) with no session behind it: passes every
/// XDP check, so what happens to it is up to policy and the rate limit.
fn heartbeat_frame(session_id: u32) -> Vec<u8> {
    heartbeat_frame_on(STREAM, session_id)
}

fn heartbeat_frame_on(stream_id: u32, session_id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHeader {
        frame_type: FrameType::Heartbeat,
        flags: 0,
        stream_id,
        partition: 0,
        session_id,
        offset: 0,
        epoch: 0,
    }
    .encode(&[], &mut out)
    .expect("fits");
    out
}

/// Sends `frames` from the peer namespace to the node's data port.
fn send_raw(net: &TestNet, node: SocketAddrV4, frames: Vec<Vec<u8>>) {
    let peer_ip = net.peer_ip;
    TestNet::spawn_in(&net.peer_ns, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(peer_ip, 0)).expect("bind");
        for f in &frames {
            s.send_to(f, node).expect("send");
            // Paced: the copy-mode RX path must never be the thing that drops.
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .join()
    .expect("sender thread")
    .expect("entered peer netns");
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn rate_limit_passes_exactly_the_burst() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-rate", 205).expect("test network");
    let node = Node::start(&net, node_config(&net, dir.path(), false, true));
    let node_addr = SocketAddrV4::new(net.node_ip, PORT);
    // Burst 50, never refilled.
    maps(&net)
        .set_rate_limit(IpAddr::V4(net.peer_ip), 0, 50)
        .expect("rate limit");
    let before = verdicts(&net);
    let rx_before = node.counter(Counter::PortRxDatagrams);
    send_raw(&net, node_addr, (0..200).map(heartbeat_frame).collect());
    let after = verdicts(&net);
    assert_eq!(delta(&after, &before, Verdict::Redirect), 50, "{after:?}");
    assert_eq!(
        delta(&after, &before, Verdict::DropRateLimited),
        150,
        "{after:?}"
    );
    let deadline = Instant::now() + WAIT_MAX;
    while node.counter(Counter::PortRxDatagrams) < rx_before + 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(node.counter(Counter::PortRxDatagrams) - rx_before, 50);
    assert_eq!(node.stop(), 0);
}

#[test]
fn malformed_and_truncated_frames_are_counted_never_a_crash() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-bad", 206).expect("test network");
    let node = Node::start(&net, node_config(&net, dir.path(), false, true));
    let node_addr = SocketAddrV4::new(net.node_ip, PORT);
    let good = heartbeat_frame(1);
    let truncated = good[..30].to_vec();
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let mut bad_crc = good.clone();
    bad_crc[36] ^= 0xFF;
    let mut bad_version = good.clone();
    bad_version[4] = 9;
    // A DATA frame with a valid CRC whose record runs past the body.
    let mut bad_body = Vec::new();
    FrameHeader {
        frame_type: FrameType::Data,
        flags: 0,
        stream_id: STREAM,
        partition: 0,
        session_id: 1,
        offset: 0,
        epoch: 0,
    }
    .encode(&[200, 0, 0, 0, 0, 0, 0, 0], &mut bad_body)
    .expect("fits");
    let before = verdicts(&net);
    let malformed_before = node.counter(Counter::RxDropMalformed);
    let mut frames = Vec::new();
    for _ in 0..10 {
        frames.extend([
            truncated.clone(),
            bad_magic.clone(),
            bad_version.clone(),
            bad_crc.clone(),
            bad_body.clone(),
        ]);
    }
    send_raw(&net, node_addr, frames);
    let after = verdicts(&net);
    // XDP drops what it can see cheaply ...
    assert_eq!(
        delta(&after, &before, Verdict::DropTruncated),
        10,
        "{after:?}"
    );
    assert_eq!(
        delta(&after, &before, Verdict::DropBadHeader),
        20,
        "{after:?}"
    );
    // ... and the node counts the rest (CRC, record bodies).
    let deadline = Instant::now() + WAIT_MAX;
    while node.counter(Counter::RxDropMalformed) < malformed_before + 10
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        node.counter(Counter::RxDropMalformed) - malformed_before,
        10
    );
    let body_drops =
        node.counter(Counter::RxDropBadBody) + node.counter(Counter::RxDropUnknownSession);
    assert!(body_drops >= 10, "bad bodies counted");

    // The node is still serving.
    let publisher = RemotePublisher::start(&net, any_addr(), SocketAddr::V4(node_addr));
    publisher.offer(500);
    let mut sub = local_subscriber(dir.path());
    let mut got = Vec::new();
    collect(&mut sub, &mut got, 500);
    let (_, closed, stats) = publisher.finish();
    assert!(closed, "{stats:?}");
    assert_in_order_exactly_once(&got, 500);
    assert_eq!(node.stop(), 0, "no agent panicked");
}

#[test]
fn node_restart_recovers_the_stream_from_storage() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-rst", 207).expect("test network");
    let cfg = node_config(&net, dir.path(), true, true);
    let node = Node::start(&net, cfg.clone());
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    const N: u64 = 3_000;
    let publisher = RemotePublisher::start(&net, any_addr(), node_addr);
    publisher.offer(N);
    let (offered, closed, stats) = publisher.finish();
    assert_eq!(offered, N);
    assert!(closed, "{stats:?}");
    let deadline = Instant::now() + WAIT_MAX;
    while node.counter(Counter::ArchivedDurableRecords) < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(node.counter(Counter::ArchivedDurableRecords), N);
    assert_eq!(node.stop(), 0);

    // The stopped node removed its ring; the new one replays storage into a fresh ring.
    let node = Node::start(&net, cfg);
    // The counters file is refreshed by the conductor's duty cycle.
    let deadline = Instant::now() + WAIT_MAX;
    while node.counter(Counter::ArchiverReplayedRecords) < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(node.counter(Counter::ArchiverReplayedRecords), N);
    let mut sub = local_subscriber(dir.path());
    let mut got = Vec::new();
    collect(&mut sub, &mut got, N as usize);
    assert_in_order_exactly_once(&got, N);
    assert_eq!(node.stop(), 0);
}

#[test]
fn remote_publisher_through_the_node_to_a_remote_subscriber() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-fan", 208).expect("test network");
    let node = Node::start(&net, node_config(&net, dir.path(), false, true));
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    const N: u64 = 5_000;
    // The remote subscriber (peer namespace) asks the node for the partition first.
    let (ready_tx, ready_rx) = mpsc::channel();
    let peer_ip = net.peer_ip;
    let subscriber = TestNet::spawn_in(&net.peer_ns, move || {
        let mut sub = sdk::net::UdpSubscriber::bind(
            SocketAddr::V4(SocketAddrV4::new(peer_ip, 0)),
            sdk::net::ReceiverConfig::default(),
        )
        .expect("bind");
        sub.subscribe(node_addr, STREAM, 0, 77, "remote-reader")
            .expect("subscribe");
        let mut got = Vec::new();
        let mut told = false;
        let deadline = Instant::now() + WAIT_MAX;
        while (got.len() as u64) < N && Instant::now() < deadline {
            if sub.poll(|r| got.push(r.payload.to_vec()), 64) == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
            if !told && sub.is_subscribed(77) {
                told = true;
                let _ = ready_tx.send(());
            }
        }
        (got, sub.stats())
    });
    ready_rx
        .recv_timeout(WAIT_MAX)
        .expect("the node set up the subscription");
    let publisher = RemotePublisher::start(&net, any_addr(), node_addr);
    publisher.offer(N);
    let (got, stats) = subscriber
        .join()
        .expect("subscriber thread")
        .expect("entered peer netns");
    let (offered, closed, pstats) = publisher.finish();
    assert_eq!(offered, N);
    assert!(closed, "{pstats:?}");
    assert_in_order_exactly_once(&got, N);
    assert_eq!(stats.drop_bad_header + stats.drop_bad_body, 0, "{stats:?}");
    assert!(node.wait_counter(Counter::TxDataFrames, 1) > 0);
    // The sender transmitted through its AF_XDP socket's TX ring, not a kernel socket.
    assert!(
        node.describe.contains("sender port afxdp"),
        "{}",
        node.describe
    );
    assert!(node.wait_counter(Counter::TxPortDatagrams, N / 64) >= N / 64);
    assert_eq!(node.counter(Counter::TxPortErrors), 0);
    assert_eq!(node.stop(), 0);
}

/// The AF_XDP sender builds Ethernet frames itself: a subscriber without a resolved neighbour
/// entry on the node is refused clearly (counted), and served once the entry exists.
#[test]
fn afxdp_sender_needs_the_subscribers_neighbour_entry() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-arp", 211).expect("test network");
    let node = Node::start(&net, node_config(&net, dir.path(), false, true));
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    let peer = net.peer_ip.to_string();
    dataplane::testnet::ip(&[
        "-n",
        &net.node_ns,
        "neigh",
        "del",
        &peer,
        "dev",
        &net.node_if,
    ])
    .expect("forget the peer's MAC on the node");
    const N: u64 = 500;
    let (ready, subscriber) = remote_subscriber(
        &net,
        node_addr,
        STREAM,
        79,
        SubscribeStart::Latest,
        N as usize,
        Duration::ZERO,
    );
    assert!(
        node.wait_counter(Counter::TxNoNeighbour, 2) >= 2,
        "repeated SUBSCRIBEs refused while the MAC is unknown"
    );
    assert!(ready.try_recv().is_err(), "no session without a MAC");
    let mac = net
        .peer_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    #[rustfmt::skip]
    dataplane::testnet::ip(&["-n", &net.node_ns, "neigh", "replace", &peer, "lladdr", &mac,
                             "dev", &net.node_if, "nud", "permanent"])
    .expect("neighbour entry");
    ready
        .recv_timeout(WAIT_MAX)
        .expect("served once the neighbour is known");
    let publisher = RemotePublisher::start(&net, any_addr(), node_addr);
    publisher.offer(N);
    let (got, _, _) = subscriber.join().expect("thread").expect("netns");
    let (_, closed, pstats) = publisher.finish();
    assert!(closed, "{pstats:?}");
    assert_in_order_exactly_once(&got, N);
    assert_eq!(node.stop(), 0);
}

/// Sends the control plane's stream command into the node's command ring (what
/// `controlplane::dataplane_link` does).
fn stream_command(dir: &Path, command: StreamCommand) {
    let ring =
        shm_ring::Ring::open(COMMAND_RING_NAME, Some(&dir.join("shm"))).expect("command ring");
    let mut p = ring.publisher().expect("command publisher");
    p.offer(&command.encode()).expect("command fits");
}

/// What a remote subscriber got: records, its statistics, whether the node ended its session.
type Remote = (Vec<Vec<u8>>, sdk::net::ReceiverStats, bool);

/// A remote subscriber in the peer namespace: subscribes to `stream` from `start`, signals
/// when the node's SETUP arrived, collects `count` records (or gives up after WAIT_MAX), then
/// keeps polling until `linger` so the end of its session can be seen.
fn remote_subscriber(
    net: &TestNet,
    node: SocketAddr,
    stream: u32,
    session_id: u32,
    start: SubscribeStart,
    count: usize,
    linger: Duration,
) -> (mpsc::Receiver<()>, InNetns<Remote>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let peer_ip = net.peer_ip;
    let thread = TestNet::spawn_in(&net.peer_ns, move || {
        let mut sub = sdk::net::UdpSubscriber::bind(
            SocketAddr::V4(SocketAddrV4::new(peer_ip, 0)),
            sdk::net::ReceiverConfig::default(),
        )
        .expect("bind");
        sub.subscribe_from(node, stream, 0, session_id, "remote-reader", start)
            .expect("subscribe");
        let mut got = Vec::new();
        let mut told = false;
        let deadline = Instant::now() + WAIT_MAX;
        while got.len() < count && Instant::now() < deadline {
            if sub.poll(|r| got.push(r.payload.to_vec()), 64) == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
            if !told && sub.is_subscribed(session_id) {
                told = true;
                let _ = ready_tx.send(());
            }
        }
        let until = Instant::now() + linger;
        while Instant::now() < until && !sub.core().is_ended(session_id) {
            sub.poll(|r| got.push(r.payload.to_vec()), 64);
            std::thread::sleep(Duration::from_micros(200));
        }
        let ended = sub.core().is_ended(session_id);
        (got, sub.stats(), ended)
    });
    (ready_rx, thread)
}

fn assert_records(got: &[Vec<u8>], first: u64, count: u64) {
    assert_eq!(got.len() as u64, count, "records delivered");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &payload(first + i as u64), "record {}", first + i as u64);
    }
}

/// A stream the control plane creates at run time is fully live: a remote publisher's records
/// reach its ring and storage, a remote subscriber gets them; deleting the stream closes the
/// subscriber's session, closes the log durable, removes the ring, and later frames count as
/// unknown stream.
#[test]
fn stream_created_at_run_time_is_live_and_its_deletion_stops_it() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-dyn", 209).expect("test network");
    let node = Node::start(&net, node_config(&net, dir.path(), true, true));
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    const DYN: u32 = 9;
    const N: u64 = 2_000;
    stream_command(
        dir.path(),
        StreamCommand::Create {
            stream_id: DYN,
            partitions: 1,
        },
    );
    assert_eq!(node.wait_counter(Counter::ConductorPartitionsAdded, 1), 1);

    // A remote subscriber of the new stream, from its live tail.
    let (ready, subscriber) = remote_subscriber(
        &net,
        node_addr,
        DYN,
        78,
        SubscribeStart::Latest,
        N as usize,
        Duration::from_secs(10),
    );
    ready
        .recv_timeout(WAIT_MAX)
        .expect("the node set up the subscription of the new stream");

    // A remote publisher into it; a local subscriber on its ring.
    let mut local = sdk::Context::builder()
        .dir(dir.path().join("shm"))
        .start_at(StartAt::Earliest)
        .build()
        .subscriber(DYN, 0);
    let publisher = RemotePublisher::start_on(&net, any_addr(), node_addr, DYN);
    publisher.offer(N);
    let mut got = Vec::new();
    collect(&mut local, &mut got, N as usize);
    let (offered, closed, stats) = publisher.finish();
    assert_eq!(offered, N);
    assert!(closed, "every record acknowledged: {stats:?}");
    assert_in_order_exactly_once(&got, N);
    assert_eq!(node.wait_counter(Counter::ArchivedDurableRecords, N), N);

    // Delete it.
    drop(local);
    stream_command(dir.path(), StreamCommand::Drop { stream_id: DYN });
    assert_eq!(node.wait_counter(Counter::ConductorPartitionsRemoved, 1), 1);
    let (remote_got, rstats, ended) = subscriber
        .join()
        .expect("subscriber thread")
        .expect("entered peer netns");
    assert_records(&remote_got, 0, N);
    assert!(ended, "the node ended the subscriber's session: {rstats:?}");
    let ring_file = dir.path().join("shm").join(sdk::ring_name(DYN, 0));
    let deadline = Instant::now() + WAIT_MAX;
    while ring_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !ring_file.exists(),
        "the ring of the deleted stream is removed"
    );
    // The receiver's ring handles, the sender's ring handles and the ended subscription were
    // freed by the conductor, not on the agents' threads.
    assert!(node.wait_counter(Counter::ConductorFreed, 5) >= 5);
    assert_eq!(node.counter(Counter::RxFreedOnAgent), 0);
    assert_eq!(node.counter(Counter::TxFreedOnAgent), 0);
    let unknown = node.counter(Counter::RxDropUnknownStream);
    let node_v4 = SocketAddrV4::new(net.node_ip, PORT);
    send_raw(
        &net,
        node_v4,
        (0..5).map(|_| heartbeat_frame_on(DYN, 11)).collect(),
    );
    assert_eq!(
        node.wait_counter(Counter::RxDropUnknownStream, unknown + 5),
        unknown + 5,
        "frames for the deleted stream are dropped as unknown"
    );
    assert_eq!(node.stop(), 0, "no agent panicked");
    // Its log was closed durable with every record.
    let log = storage_nvme::Reader::open(dataplane::archiver::log_dir(
        &dir.path().join("storage"),
        DYN,
        0,
    ))
    .expect("the stream's log");
    assert_eq!(log.end_offset(), N);
}

/// A remote subscriber that names a start position gets records older than the ring from
/// storage, then continues live: every record once, in order, while the publisher goes on.
#[test]
fn remote_subscriber_from_an_offset_catches_up_from_storage_then_goes_live() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-rpl", 210).expect("test network");
    let mut cfg = node_config(&net, dir.path(), true, true);
    // A small ring: most of the first batch is only on storage when the subscribers come.
    cfg.ring_capacity_bytes = 256 << 10;
    // Slow group commits: the durable tail lags, so a subscriber that reached it finds the
    // newest records in the ring only and reads them there before it joins the live reader.
    cfg.archive_commit_interval_ns = 50_000_000;
    let node = Node::start(&net, cfg);
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    const FIRST: u64 = 6_000;
    const SECOND: u64 = 10_000;
    const FROM: u64 = 1_234;
    let publisher = RemotePublisher::start(&net, any_addr(), node_addr);
    publisher.offer(FIRST);
    assert_eq!(
        node.wait_counter(Counter::ArchivedDurableRecords, FIRST),
        FIRST
    );

    let total = (FIRST + SECOND) as usize;
    let (ready_a, earliest) = remote_subscriber(
        &net,
        node_addr,
        STREAM,
        81,
        SubscribeStart::Earliest,
        total,
        Duration::ZERO,
    );
    let (ready_b, from) = remote_subscriber(
        &net,
        node_addr,
        STREAM,
        82,
        SubscribeStart::Offset(FROM),
        total - FROM as usize,
        Duration::ZERO,
    );
    ready_a.recv_timeout(WAIT_MAX).expect("subscriber A set up");
    ready_b.recv_timeout(WAIT_MAX).expect("subscriber B set up");
    // Live records keep arriving, paced, while they read storage and then the ring.
    for _ in 0..SECOND / 100 {
        publisher.offer(100);
        std::thread::sleep(Duration::from_millis(10));
    }
    let (offered, closed, stats) = publisher.finish();
    assert_eq!(offered, FIRST + SECOND);
    assert!(closed, "{stats:?}");
    let (got_a, stats_a, _) = earliest.join().expect("thread").expect("netns");
    let (got_b, stats_b, _) = from.join().expect("thread").expect("netns");
    assert_records(&got_a, 0, FIRST + SECOND);
    assert_records(&got_b, FROM, FIRST + SECOND - FROM);
    assert_eq!(
        stats_a.drop_bad_header + stats_a.drop_bad_body,
        0,
        "{stats_a:?}"
    );
    assert_eq!(
        stats_b.drop_bad_header + stats_b.drop_bad_body,
        0,
        "{stats_b:?}"
    );
    assert!(
        node.wait_counter(Counter::TxReplayRecords, 1) >= FIRST - FROM,
        "the old records came from storage"
    );
    // The archiver did the log reads, not the sender.
    assert!(node.counter(Counter::ArchiverReplayReads) >= 1);
    // Each finished catch-up phase (storage reader and buffer, private ring reader) was freed
    // by the conductor, none on the sender's thread.
    assert!(node.wait_counter(Counter::ConductorFreed, 2) >= 2);
    assert_eq!(node.counter(Counter::TxFreedOnAgent), 0);
    assert_eq!(node.stop(), 0);
}

/// What the raw publisher of the flow-control test saw.
#[derive(Debug, Default)]
struct Windows {
    /// Smallest window a STATUS advertised while the ring was full.
    min_while_full: u32,
    /// Window of the last STATUS after the ring had room again.
    after_drain: u32,
    /// Session offset that STATUS acknowledged.
    acked: u64,
}

/// Sends DATA (go-back-N from each STATUS offset) until `done(window)` holds for a STATUS;
/// returns that window and the acknowledged offset.
fn send_until(
    s: &UdpSocket,
    node: SocketAddr,
    next: &mut u64,
    mut done: impl FnMut(u32) -> bool,
) -> Option<(u32, u64)> {
    let mut buf = vec![0u8; 9000];
    let deadline = Instant::now() + WAIT_MAX;
    let mut sent_since_status = 0;
    while Instant::now() < deadline {
        if sent_since_status < 64 {
            let mut body = Vec::new();
            for _ in 0..8 {
                sdk::net::wire::push_record(&mut body, 0, &[0xAB; 64]);
            }
            let h = FrameHeader {
                frame_type: FrameType::Data,
                flags: sdk::net::wire::FLAG_REPLY_REQUESTED,
                stream_id: STREAM,
                partition: 0,
                session_id: 21,
                offset: *next,
                epoch: 0,
            };
            let mut f = Vec::new();
            h.encode(&body, &mut f).expect("fits");
            let _ = s.send_to(&f, node);
            *next += body.len() as u64;
            sent_since_status += 1;
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            let Ok(h) = FrameHeader::decode(&buf[..n]) else {
                continue;
            };
            if h.frame_type != FrameType::Status {
                continue;
            }
            let st = sdk::net::wire::StatusBody::decode(&buf[40..n]).expect("status body");
            sent_since_status = 0;
            // Go-back-N: what the node refused is sent again from its consumed offset.
            *next = h.offset;
            if done(st.window_bytes) {
                return Some((st.window_bytes, h.offset));
            }
        }
    }
    None
}

/// Flow control follows the ring: while the partition's ring is full (a local reliable
/// subscriber does not read) the node's STATUS advertises a shrinking window; once the ring
/// has room the window grows back to the configured one.
#[test]
fn status_window_shrinks_while_the_ring_is_full_and_recovers() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-win", 212).expect("test network");
    let mut cfg = node_config(&net, dir.path(), false, true);
    cfg.ring_capacity_bytes = 64 << 10;
    let full = cfg.window_bytes;
    let node = Node::start(&net, cfg);
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    // A reliable local subscriber that stops reading: the ring fills.
    let mut local = local_subscriber(dir.path());
    local.poll(|_| {}, 1).expect("attach");
    let (pressured_tx, pressured_rx) = mpsc::channel();
    let (drained_tx, drained_rx) = mpsc::channel::<()>();
    let peer_ip = net.peer_ip;
    let publisher = TestNet::spawn_in(&net.peer_ns, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(peer_ip, 0)).expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        let mut setup = Vec::new();
        sdk::net::wire::encode_setup(1472, "raw", &mut setup);
        let mut f = Vec::new();
        FrameHeader {
            frame_type: FrameType::Setup,
            flags: 0,
            stream_id: STREAM,
            partition: 0,
            session_id: 21,
            offset: 0,
            epoch: 0,
        }
        .encode(&setup, &mut f)
        .expect("fits");
        s.send_to(&f, node_addr).expect("setup");
        let mut w = Windows::default();
        let mut next = 0u64;
        let (min, _) =
            send_until(&s, node_addr, &mut next, |win| win < full).expect("the window shrank");
        w.min_while_full = min;
        // Keep pushing a little: it keeps shrinking (down to the floor) while the ring is full.
        if let Some((win, _)) = send_until(&s, node_addr, &mut next, |win| win < min) {
            w.min_while_full = win;
        }
        let _ = pressured_tx.send(());
        let _ = drained_rx.recv_timeout(WAIT_MAX);
        let (win, acked) =
            send_until(&s, node_addr, &mut next, |win| win == full).expect("the window grew back");
        w.after_drain = win;
        w.acked = acked;
        w
    });
    pressured_rx
        .recv_timeout(WAIT_MAX)
        .expect("the publisher saw a smaller window");
    // Read the ring: it has room again.
    let deadline = Instant::now() + WAIT_MAX;
    let mut read = 0u64;
    while Instant::now() < deadline && read < 500 {
        read += local.poll(|_| {}, 256).expect("poll") as u64;
    }
    drained_tx.send(()).expect("publisher alive");
    let mut reader_alive = true;
    let w = loop {
        if publisher.is_finished() {
            break publisher.join().expect("thread").expect("netns");
        }
        if reader_alive && local.poll(|_| {}, 256).is_err() {
            reader_alive = false;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    assert!(w.min_while_full < full, "{w:?}");
    assert!(
        w.min_while_full >= dataplane::session::WINDOW_BYTES_MIN,
        "{w:?}"
    );
    assert_eq!(w.after_drain, full, "{w:?}");
    assert!(w.acked > 0, "{w:?}");
    assert!(node.wait_counter(Counter::RxRingBackPressured, 1) > 0);
    assert_eq!(node.stop(), 0);
}

/// A stream created at run time survives a node restart: the control plane sends its Create
/// again (it re-sends its full state when it attaches), the new node replays the stream's log
/// into the fresh ring, and publishing continues after the recovered records.
#[test]
fn stream_created_at_run_time_is_recovered_from_storage_after_a_restart() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-dynr", 214).expect("test network");
    let cfg = node_config(&net, dir.path(), true, true);
    let node_addr = SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT));
    const DYN: u32 = 12;
    const N: u64 = 1_500;
    let create = StreamCommand::Create {
        stream_id: DYN,
        partitions: 1,
    };
    let node = Node::start(&net, cfg.clone());
    stream_command(dir.path(), create);
    assert_eq!(node.wait_counter(Counter::ConductorPartitionsAdded, 1), 1);
    let publisher = RemotePublisher::start_on(&net, any_addr(), node_addr, DYN);
    publisher.offer(N);
    let (offered, closed, stats) = publisher.finish();
    assert_eq!(offered, N);
    assert!(closed, "{stats:?}");
    assert_eq!(node.wait_counter(Counter::ArchivedDurableRecords, N), N);
    // The run-time partition has its own row in the counters file.
    assert_eq!(node.wait_partition_durable(DYN, 0, N), Some((N, N)));
    assert_eq!(node.stop(), 0);

    let node = Node::start(&net, cfg);
    stream_command(dir.path(), create);
    assert_eq!(node.wait_counter(Counter::ConductorPartitionsAdded, 1), 1);
    assert_eq!(node.wait_counter(Counter::ArchiverReplayedRecords, N), N);
    let publisher = RemotePublisher::start_on(&net, any_addr(), node_addr, DYN);
    publisher.offer(N);
    let (offered, closed, stats) = publisher.finish();
    assert_eq!(offered, N);
    assert!(closed, "{stats:?}");
    let mut local = sdk::Context::builder()
        .dir(dir.path().join("shm"))
        .start_at(StartAt::Earliest)
        .build()
        .subscriber(DYN, 0);
    let mut got = Vec::new();
    collect(&mut local, &mut got, 2 * N as usize);
    // The first session's records (replayed from storage), then the second session's.
    assert_eq!(got.len() as u64, 2 * N);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &payload(i as u64 % N), "record {i}");
    }
    // The gauge is the logs' durable end (the first run's records included), not a count of
    // this run's appends: both sessions' records end up durable.
    assert_eq!(
        node.wait_counter(Counter::ArchivedDurableRecords, 2 * N),
        2 * N
    );
    // Its row: this run archived N records; the log's durable end is 2N.
    assert_eq!(node.wait_partition_durable(DYN, 0, 2 * N), Some((N, 2 * N)));
    // Deleting the stream takes its row away.
    stream_command(dir.path(), StreamCommand::Drop { stream_id: DYN });
    assert_eq!(node.wait_counter(Counter::ConductorPartitionsRemoved, 1), 1);
    assert_eq!(node.wait_partition_durable(DYN, 0, 0), None);
    assert_eq!(node.stop(), 0);
    let log = storage_nvme::Reader::open(dataplane::archiver::log_dir(
        &dir.path().join("storage"),
        DYN,
        0,
    ))
    .expect("the stream's log");
    assert_eq!(log.end_offset(), 2 * N, "one log across both runs");
}

/// The AF_XDP sender needs a TX queue after the receiver's: without one the node refuses to
/// start with a message that says what to change (never a silent fallback to a kernel socket).
#[test]
fn afxdp_sender_without_a_spare_tx_queue_is_a_clear_error() {
    testkit::require!(
        testkit::netns(NEEDS),
        testkit::tool("ethtool", "--version", "ethtool")
    );
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = TestNet::create("msd-txq", 215).expect("test network");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.node_ns,
            "ethtool",
            "-L",
            &net.node_if,
            "tx",
            "1",
        ])
        .output()
        .expect("ethtool");
    assert!(out.status.success(), "{out:?}");
    let cfg = node_config(&net, dir.path(), false, true);
    let err = TestNet::spawn_in(&net.node_ns, move || {
        NodeParts::build(&cfg).err().map(|e| e.to_string())
    })
    .join()
    .expect("thread")
    .expect("netns")
    .expect("the node refuses to start");
    assert!(err.contains("TX queues"), "{err}");
    assert!(err.contains("--backend udp"), "{err}");
    assert!(
        !dir.path()
            .join("shm")
            .join(sdk::ring_name(STREAM, 0))
            .exists(),
        "a failed start leaves no ring behind"
    );
}
