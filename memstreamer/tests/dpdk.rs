//! `--backend dpdk` end to end: `memstreamer dataplane` as a process whose port is DPDK's
//! `net_af_packet` vdev on the node's end of a veth pair, in a test namespace:
//!
//! ```text
//!  peer netns: sdk::net publisher / subscriber, raw UDP --veth--> node netns: af_packet vdev
//!              (198.18.16S.2)                                       -> DPDK port (EAL, mbufs)
//!  test process: PolicyMaps (the control plane's writes), local sdk::Subscriber, counters file
//! ```
//! The node's veth end has **no IPv4 address**: the kernel's IP stack stays out (no ICMP port
//! unreachable, no kernel ARP answers), so the DPDK port answers ARP, learns neighbours and
//! sends every frame itself, as on a vfio NIC. EAL runs once per process, so each node is its own
//! process (spawned from a thread inside the node namespace: only its network namespace
//! differs, so the pinned policy maps in bpffs are the test's). Subnets 198.18.160-166.0/30.
//! Every test needs 32 free 2 MiB hugepages (64 MiB of EAL memory): under `make test`
//! scripts/test.sh reserves the pool; otherwise [`Hugepages`] reserves it with
//! scripts/hugepages.sh and releases only what it reserved. Each node's EAL uses
//! `--huge-unlink`: the tests check that no hugepage file and no DPDK runtime directory is left.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataplane::counters::{Counter, CountersSnapshot};
use dataplane::testnet::TestNet;
use sdk::net::{NetOfferError, PublisherConfig, PublisherStats, UdpPublisher};
use sdk::StartAt;
use xdp_programs::frame::{FrameHeader, FrameType};
use xdp_programs::link_loss::{LinkLoss, LossDirection};
use xdp_programs::{PolicyMaps, Verdict, VerdictCounts};

// Shared with the other process tests; this file uses only some of it.
#[allow(dead_code)]
mod support;

const BIN: &str = env!("CARGO_BIN_EXE_memstreamer");
const PORT: u16 = 7447;
const STREAM: u32 = 7;
const WAIT_MAX: Duration = Duration::from_secs(60);
/// EAL memory of each test node (MiB) and the 2 MiB pages it needs.
const MEMORY_MB: u64 = 64;
const PAGES: u64 = MEMORY_MB / 2;
const HUGE_DIR: &str = "/dev/hugepages";
/// mbufs that may be in use on an idle port (bursts in flight, per-lcore caches).
const MBUFS_IN_FLIGHT_MAX: u64 = 64;
const NEEDS: &str = "netns, DPDK af_packet vdev, hugepages";
/// One node at a time: 2 vCPUs, and DPDK nodes busy-poll.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The hugepage pool for one test: uses free pages when there are enough, else reserves with
/// scripts/hugepages.sh and releases on drop — only when this test made the reservation (no
/// other reservation's state file exists), so a pool someone else reserved is never released.
struct Hugepages {
    reserved: bool,
}

impl Hugepages {
    fn acquire() -> Hugepages {
        let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(HUGE_DIR))
        });
        if mounted && dataplane_free_pages() >= PAGES {
            return Hugepages { reserved: false };
        }
        assert!(
            !Path::new("/run/memstreamer/nr_hugepages.prev").exists(),
            "the hugepage pool is reserved by someone else and has fewer than {PAGES} free pages: \
             free some, or run `scripts/hugepages.sh reserve` with more pages"
        );
        let total: u64 = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let out = Command::new(repo_root().join("scripts/hugepages.sh"))
            .args(["reserve", &(total + PAGES).to_string()])
            .output()
            .expect("run scripts/hugepages.sh");
        let guard = Hugepages { reserved: true };
        assert!(out.status.success(), "{out:?}");
        assert!(
            dataplane_free_pages() >= PAGES,
            "scripts/hugepages.sh reserved too few pages: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        guard
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        if self.reserved {
            let _ = Command::new(repo_root().join("scripts/hugepages.sh"))
                .arg("release")
                .output();
        }
    }
}

fn dataplane_free_pages() -> u64 {
    dataplane::net::dpdk::eal::hugepages_free()
}

/// Files in the hugetlbfs mount and DPDK runtime directories of our prefix.
fn leftovers(prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(HUGE_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(prefix))
                .collect()
        })
        .unwrap_or_default();
    let run = Path::new("/var/run/dpdk").join(prefix);
    if run.exists() {
        out.push(run);
    }
    out
}

/// A `memstreamer dataplane --backend dpdk` process in the node namespace.
struct Node {
    child: Child,
    lines: Receiver<String>,
    counters_file: PathBuf,
    prefix: String,
    describe: String,
}

fn node_env(
    net: &TestNet,
    dir: &Path,
    storage: bool,
    default_allow: bool,
) -> Vec<(String, String)> {
    let prefix = format!("ms-dpdk-test-{}", std::process::id());
    let mut env = vec![
        ("MS_BACKEND", "dpdk".to_string()),
        ("MS_LISTEN", format!("{}:{PORT}", net.node_ip)),
        ("MS_INTERFACE", net.node_if.clone()),
        (
            "MS_DPDK_DEVICE",
            format!("net_af_packet0,iface={},qpairs=2", net.node_if),
        ),
        ("MS_DPDK_MEMORY_MB", MEMORY_MB.to_string()),
        ("MS_DPDK_MBUFS", "4095".to_string()),
        ("MS_DPDK_FILE_PREFIX", prefix),
        ("MS_DPDK_HUGE_DIR", HUGE_DIR.to_string()),
        ("MS_SHM_DIR", dir.join("shm").display().to_string()),
        (
            "MS_COUNTERS_FILE",
            dir.join("counters").display().to_string(),
        ),
        ("MS_RING_CAPACITY_BYTES", (4u64 << 20).to_string()),
        ("MS_XDP_DEFAULT_ALLOW", default_allow.to_string()),
        ("MS_IDLE", "yielding".to_string()),
    ];
    env.push((
        "MS_STORAGE_DIR",
        if storage {
            dir.join("storage").display().to_string()
        } else {
            "false".to_string()
        },
    ));
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

impl Node {
    fn spawn(net: &TestNet, env: Vec<(String, String)>) -> (Child, Receiver<String>) {
        let child = TestNet::spawn_in(&net.node_ns, move || {
            // Forked from this thread: the child has its network namespace, nothing else new.
            Command::new(BIN)
                .arg("dataplane")
                .envs(env)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn memstreamer dataplane")
        })
        .join()
        .expect("spawn thread")
        .expect("entered node netns");
        let mut child = child;
        let lines = support::stdout_lines(&mut child);
        (child, lines)
    }

    fn start(net: &TestNet, env: Vec<(String, String)>) -> Node {
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let counters_file = PathBuf::from(get("MS_COUNTERS_FILE").expect("counters"));
        let prefix = get("MS_DPDK_FILE_PREFIX").expect("prefix");
        let (mut child, lines) = Self::spawn(net, env);
        let deadline = Instant::now() + WAIT_MAX;
        let mut describe = String::new();
        while Instant::now() < deadline {
            match lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains("data port dpdk") => describe = line,
                // DATAPLANE_READY_LINE of main.rs: printed once the agents run.
                Ok(line) if line.starts_with("memstreamer dataplane: streams") => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let mut err = String::new();
                        if let Some(mut e) = child.stderr.take() {
                            let _ = std::io::Read::read_to_string(&mut e, &mut err);
                        }
                        panic!("the DPDK node exited at start ({status}): {err}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if describe.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the DPDK node did not print its ports: {err}");
        }
        Node {
            child,
            lines,
            counters_file,
            prefix,
            describe,
        }
    }

    fn counter(&self, c: Counter) -> u64 {
        CountersSnapshot::read(&self.counters_file)
            .ok()
            .and_then(|s| s.get(c))
            .unwrap_or(0)
    }

    fn wait_counter(&self, c: Counter, at_least: u64) -> u64 {
        let deadline = Instant::now() + WAIT_MAX;
        while self.counter(c) < at_least && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.counter(c)
    }

    /// SIGTERM, wait (bounded), check it stopped cleanly and left nothing behind.
    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + support::STOP_WAIT_MAX;
        let mut status = None;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = status.expect("the DPDK node stopped within STOP_WAIT_MAX after SIGTERM");
        let rest: Vec<String> = self.lines.try_iter().collect();
        assert!(status.success(), "{status}: {rest:?}");
        assert_eq!(
            leftovers(&self.prefix),
            Vec::<PathBuf>::new(),
            "left behind"
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        support::stop_or_kill(&mut self.child);
    }
}

/// The node's end without an IPv4 address: the DPDK port is the only host on it.
fn dpdk_net(tag: &str, subnet: u32) -> TestNet {
    let net = TestNet::create(tag, subnet).expect("test network");
    let status = Command::new("ip")
        .args(["-n", &net.node_ns, "addr", "flush", "dev", &net.node_if])
        .status()
        .expect("ip addr flush");
    assert!(status.success());
    net
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8; 8 + (i % 48) as usize];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

fn node_addr(net: &TestNet) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(net.node_ip, PORT))
}

/// Publishes `n` records from the peer namespace and closes after every ack (bounded).
fn publish(net: &TestNet, n: u64) -> (u64, bool, PublisherStats) {
    let node = node_addr(net);
    TestNet::spawn_in(&net.peer_ns, move || {
        let mut cfg = PublisherConfig::new(STREAM, 0, 11, "tester");
        cfg.buffer_bytes = 1 << 20;
        cfg.heartbeat_interval_ns = 5_000_000;
        cfg.setup_retry_ns = 20_000_000;
        let mut p =
            UdpPublisher::new("0.0.0.0:0".parse().expect("addr"), node, cfg).expect("publisher");
        let mut offered = 0u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while offered < n && Instant::now() < deadline {
            while offered < n && p.session().is_connected() {
                match p.offer(0, &payload(offered)) {
                    Ok(_) => offered += 1,
                    Err(NetOfferError::BackPressured) => break,
                    Err(e) => panic!("offer: {e}"),
                }
            }
            if p.do_work() == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        let closed = p.close(WAIT_MAX);
        (offered, closed, p.session().stats())
    })
    .join()
    .expect("publisher thread")
    .expect("entered peer netns")
}

fn collect_local(dir: &Path, count: usize) -> Vec<Vec<u8>> {
    let mut sub = sdk::Context::builder()
        .dir(dir.join("shm"))
        .start_at(StartAt::Earliest)
        .build()
        .subscriber(STREAM, 0);
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT_MAX;
    while got.len() < count && Instant::now() < deadline {
        let n = sub
            .poll(|r| got.push(r.payload.to_vec()), 256)
            .expect("ring poll");
        if n == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    got
}

fn assert_in_order_exactly_once(got: &[Vec<u8>], count: u64) {
    assert_eq!(got.len() as u64, count, "records delivered");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &payload(i as u64), "record {i}");
    }
}

fn maps(net: &TestNet) -> PolicyMaps {
    PolicyMaps::open(&net.node_if).expect("the DPDK node pinned its policy maps")
}

/// Verdicts as the node last stored them (its policy mirror copies them every 500 µs).
fn verdicts_settled(net: &TestNet) -> VerdictCounts {
    let mut last = maps(net).counters().expect("counters");
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        let now = maps(net).counters().expect("counters");
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn frame(frame_type: FrameType, session_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHeader {
        frame_type,
        flags: 0,
        stream_id: STREAM,
        partition: 0,
        session_id,
        offset: 0,
        epoch: 0,
    }
    .encode(body, &mut out)
    .expect("fits");
    out
}

/// Sends `frames` from the peer namespace to the node's data port, paced.
fn send_raw(net: &TestNet, frames: Vec<Vec<u8>>) {
    let (peer_ip, node) = (net.peer_ip, node_addr(net));
    TestNet::spawn_in(&net.peer_ns, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(peer_ip, 0)).expect("bind");
        for f in &frames {
            s.send_to(f, node).expect("send");
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .join()
    .expect("sender thread")
    .expect("entered peer netns");
}

#[test]
fn dpdk_remote_publisher_to_local_subscriber_in_order_exactly_once() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let _huge = Hugepages::acquire();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = dpdk_net("msd-dpdk", 160);
    let node = Node::start(&net, node_env(&net, dir.path(), false, true));
    assert!(node.describe.contains("net_af_packet"), "{}", node.describe);
    assert!(node.describe.contains("--huge-unlink"), "{}", node.describe);
    const N: u64 = 20_000;
    let (offered, closed, stats) = publish(&net, N);
    assert_eq!(offered, N);
    assert!(closed, "every record acknowledged: {stats:?}");
    let got = collect_local(dir.path(), N as usize);
    assert_in_order_exactly_once(&got, N);
    assert!(node.wait_counter(Counter::RxRecordsAppended, N) >= N);
    // The same verdict counters as XDP, kept by the DPDK port.
    // (A DATA frame carries a batch of records: fewer frames than records.)
    assert!(verdicts_settled(&net).get(Verdict::Redirect) > 0);
    // Port figures reach the counters file (stat, /metrics).
    assert!(node.wait_counter(Counter::NicRxPackets, 1) > 0);
    assert!(node.wait_counter(Counter::MbufPoolSize, 1) == 4095);
    // Every mbuf went back to the pool (RX freed after the agent saw it, TX after the burst):
    // no leak that would end in a full pool.
    let deadline = Instant::now() + WAIT_MAX;
    while node.counter(Counter::MbufPoolInUse) > MBUFS_IN_FLIGHT_MAX && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        node.counter(Counter::MbufPoolInUse) <= MBUFS_IN_FLIGHT_MAX,
        "mbufs in use after the traffic: {}",
        node.counter(Counter::MbufPoolInUse)
    );
    // The kernel has no address here: the node answered the peer's ARP or learned its MAC
    // from frames; either way its STATUS reached the publisher (it closed cleanly).
    node.stop();
}

#[test]
fn dpdk_lossy_link_nak_and_retransmit_recover_every_record() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let _huge = Hugepages::acquire();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = dpdk_net("msd-dloss", 161);
    let node = Node::start(&net, node_env(&net, dir.path(), false, true));
    let peer_if = net.peer_if.clone();
    // 5 % of the UDP packets lost each way on the peer's end, in the kernel (xdp-programs'
    // link-loss tc filter; this kernel has no sch_netem). Detached when `loss` is dropped.
    let loss = TestNet::spawn_in(&net.peer_ns, move || {
        LinkLoss::attach(&peer_if, LossDirection::Both, 50_000, 0x5EED)
    })
    .join()
    .expect("loss thread")
    .expect("entered peer netns")
    .expect("attach the link-loss filter");
    const N: u64 = 5_000;
    let (offered, closed, stats) = publish(&net, N);
    assert_eq!(offered, N);
    assert!(closed, "{stats:?}");
    let got = collect_local(dir.path(), N as usize);
    assert_in_order_exactly_once(&got, N);
    assert!(node.counter(Counter::RxNaksSent) > 0, "losses were NAKed");
    let (dropped, _passed) = loss.counts().expect("link-loss counters");
    assert!(dropped > 0, "the link dropped packets");
    drop(loss);
    node.stop();
}

#[test]
fn dpdk_policy_deny_allow_and_rate_limit_from_the_pinned_maps() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let _huge = Hugepages::acquire();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = dpdk_net("msd-dpol", 162);
    // Deny by default: nothing passes until the policy (the control plane's write) allows it.
    let node = Node::start(&net, node_env(&net, dir.path(), false, false));
    let hb = |i: u32| frame(FrameType::Heartbeat, 100 + i, &[]);
    let before = verdicts_settled(&net);
    send_raw(&net, (0..20).map(hb).collect());
    let after = verdicts_settled(&net);
    assert_eq!(
        after.since(&before).get(Verdict::DropPolicy),
        20,
        "{after:?}"
    );
    assert_eq!(after.since(&before).get(Verdict::Redirect), 0, "{after:?}");

    maps(&net)
        .allow(std::net::IpAddr::V4(net.peer_ip), STREAM)
        .expect("allow");
    std::thread::sleep(Duration::from_millis(20));
    let before = verdicts_settled(&net);
    send_raw(&net, (0..20).map(hb).collect());
    let after = verdicts_settled(&net);
    assert_eq!(after.since(&before).get(Verdict::Redirect), 20, "{after:?}");
    assert_eq!(
        after.since(&before).get(Verdict::DropPolicy),
        0,
        "{after:?}"
    );

    // Rate limit: burst 30, no refill -> exactly 30 of 50 pass.
    maps(&net)
        .set_rate_limit(std::net::IpAddr::V4(net.peer_ip), 0, 30)
        .expect("rate limit");
    std::thread::sleep(Duration::from_millis(20));
    let before = verdicts_settled(&net);
    send_raw(&net, (0..50).map(hb).collect());
    let after = verdicts_settled(&net);
    assert_eq!(after.since(&before).get(Verdict::Redirect), 30, "{after:?}");
    assert_eq!(
        after.since(&before).get(Verdict::DropRateLimited),
        20,
        "{after:?}"
    );

    // Deny again wins over everything.
    maps(&net)
        .deny(std::net::IpAddr::V4(net.peer_ip), STREAM)
        .expect("deny");
    maps(&net)
        .clear_rate_limit(std::net::IpAddr::V4(net.peer_ip))
        .expect("clear");
    std::thread::sleep(Duration::from_millis(20));
    let before = verdicts_settled(&net);
    send_raw(&net, (0..10).map(hb).collect());
    let after = verdicts_settled(&net);
    assert_eq!(
        after.since(&before).get(Verdict::DropPolicy),
        10,
        "{after:?}"
    );
    node.stop();
}

#[test]
fn dpdk_malformed_frames_are_counted_and_the_node_keeps_serving() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let _huge = Hugepages::acquire();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = dpdk_net("msd-dbad", 163);
    let node = Node::start(&net, node_env(&net, dir.path(), false, true));
    let good = frame(FrameType::Heartbeat, 1, &[]);
    let truncated = good[..30].to_vec();
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let mut bad_version = good.clone();
    bad_version[4] = 9;
    let mut bad_crc = good.clone();
    bad_crc[36] ^= 0xFF;
    let mut frames = Vec::new();
    for _ in 0..10 {
        frames.extend([
            truncated.clone(),
            bad_magic.clone(),
            bad_version.clone(),
            bad_crc.clone(),
        ]);
    }
    let before = verdicts_settled(&net);
    let malformed_before = node.counter(Counter::RxDropMalformed);
    send_raw(&net, frames);
    let after = verdicts_settled(&net);
    assert_eq!(
        after.since(&before).get(Verdict::DropTruncated),
        10,
        "{after:?}"
    );
    assert_eq!(
        after.since(&before).get(Verdict::DropBadHeader),
        20,
        "{after:?}"
    );
    // The CRC is the receiver's check, past the port's policy.
    assert_eq!(
        node.wait_counter(Counter::RxDropMalformed, malformed_before + 10) - malformed_before,
        10
    );
    const N: u64 = 500;
    let (_, closed, stats) = publish(&net, N);
    assert!(closed, "{stats:?}");
    assert_in_order_exactly_once(&collect_local(dir.path(), N as usize), N);
    node.stop();
}

#[test]
fn dpdk_node_restart_recovers_the_stream_from_storage() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let _huge = Hugepages::acquire();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = dpdk_net("msd-drst", 164);
    let env = node_env(&net, dir.path(), true, true);
    let node = Node::start(&net, env.clone());
    const N: u64 = 3_000;
    let (offered, closed, stats) = publish(&net, N);
    assert_eq!(offered, N);
    assert!(closed, "{stats:?}");
    assert_eq!(node.wait_counter(Counter::ArchivedDurableRecords, N), N);
    node.stop();
    // A new process: a new EAL on the same prefix, the stored stream replayed into the ring.
    let node = Node::start(&net, env);
    assert_eq!(node.wait_counter(Counter::ArchiverReplayedRecords, N), N);
    assert_in_order_exactly_once(&collect_local(dir.path(), N as usize), N);
    // And it takes new records after the restart (the publisher's new session).
    node.stop();
}

#[test]
fn dpdk_remote_subscriber_is_served_through_the_senders_tx_queue() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let _huge = Hugepages::acquire();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = dpdk_net("msd-dfan", 165);
    let node = Node::start(&net, node_env(&net, dir.path(), false, true));
    let node_addr = node_addr(&net);
    const N: u64 = 3_000;
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
        got
    });
    ready_rx
        .recv_timeout(WAIT_MAX)
        .expect("the node set up the subscription");
    let (offered, closed, stats) = publish(&net, N);
    assert_eq!(offered, N);
    assert!(closed, "{stats:?}");
    let got = subscriber
        .join()
        .expect("subscriber thread")
        .expect("entered peer netns");
    assert_in_order_exactly_once(&got, N);
    assert!(node.wait_counter(Counter::TxDataFrames, 1) > 0);
    node.stop();
}

#[test]
fn dpdk_start_faults_are_clear_errors_and_leave_nothing_behind() {
    testkit::require!(testkit::netns(NEEDS));
    let _serial = serial();
    let _huge = Hugepages::acquire();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = dpdk_net("msd-dflt", 166);
    let run = |overrides: &[(&str, &str)]| {
        let mut env = node_env(&net, dir.path(), false, true);
        for (k, v) in overrides {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let prefix = env
            .iter()
            .find(|(k, _)| k == "MS_DPDK_FILE_PREFIX")
            .map(|(_, v)| v.clone())
            .expect("prefix");
        let (mut child, _lines) = Node::spawn(&net, env);
        let deadline = Instant::now() + WAIT_MAX;
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            assert!(Instant::now() < deadline, "the node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(!status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(leftovers(&prefix), Vec::<PathBuf>::new(), "{err}");
        err
    };
    // A port that does not exist.
    let err = run(&[("MS_DPDK_DEVICE", "net_af_packet0,iface=nosuchif0")]);
    assert!(
        err.contains("rte_eal_init failed") || err.contains("does not exist"),
        "{err}"
    );
    // Not a hugetlbfs mount.
    let err = run(&[("MS_DPDK_HUGE_DIR", "/tmp")]);
    assert!(err.contains("not a hugetlbfs mount"), "{err}");
    // More memory than the pool has free.
    let err = run(&[("MS_DPDK_MEMORY_MB", "16384")]);
    assert!(err.contains("free 2 MiB hugepages"), "{err}");
    // A PCI address nothing is bound to.
    let err = run(&[("MS_DPDK_DEVICE", "0000:ff:1f.7")]);
    assert!(
        err.contains("does not exist") || err.contains("rte_eal_init"),
        "{err}"
    );
}
