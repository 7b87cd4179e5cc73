//! End to end: an ACL pushed through the admin API changes what the XDP
//! program of the data path lets through.
//!
//! The test makes two network namespaces joined by a veth pair
//! (198.19.77+n.1/30 sender, .2/30 receiver, n per test, inside 198.18.0.0/15;
//! IPv6 off and static neighbours, so no other traffic reaches the program
//! and the counters are exact), attaches `memstreamer_xdp` natively to the
//! receiving end with the xdp-programs loader (default deny), and starts a
//! control-plane node on loopback whose data interface is that veth. Frames
//! are sent from the sender namespace to a UDP socket in the receiver
//! namespace. Allow ACL -> frames arrive; Deny ACL through the admin API ->
//! `drop_policy` counts them and none arrive; deleting the Deny -> they
//! arrive again. The `NetGuard` removes the namespaces, the attachment and
//! the pins on every path. Needs root; skips with a message otherwise.

mod admin_support;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use admin_support::{ok_stdout, TestNode};
use controlplane::pb::admin as pb;
use xdp_programs::abi::{pin_dir, Config, Verdict, VerdictCounts};
use xdp_programs::frame::{FrameHeader, FrameType};
use xdp_programs::{AttachMode, PolicyMaps, XdpProgram};

const PORT: u16 = 47_077;
const WAIT_MAX: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
const FRAMES: u64 = 20;

/// What root is for here; with `ip`, all these tests need (`testkit::require!`).
const NEEDS: &str = "network namespaces, XDP, bpffs";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("spawn ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a new thread that has joined network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("netns file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

struct NetGuard {
    /// Per-test index: namespaces, interfaces and the /30 differ by it.
    n: u8,
    sender_ns: String,
    receiver_ns: String,
    receiver_if: String,
    /// Dropping the sender detaches the program (its thread drops the handle).
    detach: Option<mpsc::Sender<()>>,
    attach_thread: Option<JoinHandle<()>>,
    stop_rx: Arc<AtomicBool>,
    rx_thread: Option<JoinHandle<()>>,
    received: Arc<AtomicU64>,
}

impl NetGuard {
    fn sender_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 77 + self.n, 1)
    }
    fn receiver_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 77 + self.n, 2)
    }

    fn new(n: u8) -> NetGuard {
        assert!(n < 16);
        let pid = std::process::id();
        let mut g = NetGuard {
            n,
            sender_ns: format!("mscp-{pid}-{n}-s"),
            receiver_ns: format!("mscp-{pid}-{n}-r"),
            receiver_if: format!("mcp{}r{n}", pid % 1_000_000),
            detach: None,
            attach_thread: None,
            stop_rx: Arc::new(AtomicBool::new(false)),
            rx_thread: None,
            received: Arc::new(AtomicU64::new(0)),
        };
        let sender_if = format!("mcp{}s{n}", pid % 1_000_000);
        let (smac, rmac) = (
            format!("02:00:c6:13:{n:02x}:01"),
            format!("02:00:c6:13:{n:02x}:02"),
        );
        let (smac, rmac) = (smac.as_str(), rmac.as_str());
        let (sip, rip) = (g.sender_ip().to_string(), g.receiver_ip().to_string());
        for ns in [&g.sender_ns, &g.receiver_ns] {
            ip(&["netns", "add", ns]);
            for knob in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
                ip(&["netns", "exec", ns, "sh", "-c", &format!("echo 1 > {path}")]);
            }
        }
        #[rustfmt::skip]
        ip(&["link", "add", &sender_if, "address", smac, "netns", &g.sender_ns, "type", "veth",
             "peer", "name", &g.receiver_if, "address", rmac, "netns", &g.receiver_ns]);
        ip(&[
            "-n",
            &g.sender_ns,
            "addr",
            "add",
            &format!("{sip}/30"),
            "dev",
            &sender_if,
        ]);
        #[rustfmt::skip]
        ip(&["-n", &g.receiver_ns, "addr", "add", &format!("{rip}/30"), "dev", &g.receiver_if]);
        ip(&["-n", &g.sender_ns, "link", "set", &sender_if, "up"]);
        ip(&["-n", &g.receiver_ns, "link", "set", &g.receiver_if, "up"]);
        #[rustfmt::skip]
        ip(&["-n", &g.sender_ns, "neigh", "add", &rip, "lladdr", rmac, "dev", &sender_if, "nud", "permanent"]);
        #[rustfmt::skip]
        ip(&["-n", &g.receiver_ns, "neigh", "add", &sip, "lladdr", smac, "dev", &g.receiver_if, "nud", "permanent"]);

        // Attach (default deny) on a thread living in the receiver namespace.
        let (ready_tx, ready_rx) = mpsc::channel();
        let (detach_tx, detach_rx) = mpsc::channel::<()>();
        let iface = g.receiver_if.clone();
        g.attach_thread = Some(in_netns(&g.receiver_ns, move || {
            let config = Config {
                data_port: PORT,
                reserved: 0,
                flags: 0,
            };
            match XdpProgram::load_and_attach(&iface, AttachMode::Native, config) {
                Ok(handle) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = detach_rx.recv();
                    drop(handle);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        }));
        g.detach = Some(detach_tx);
        ready_rx
            .recv_timeout(WAIT_MAX)
            .expect("attach thread answers")
            .expect("XDP program attached");

        // UDP receiver in the receiver namespace, counting frames.
        let (stop, received) = (g.stop_rx.clone(), g.received.clone());
        let (bound_tx, bound_rx) = mpsc::channel();
        let bind_ip = g.receiver_ip();
        g.rx_thread = Some(in_netns(&g.receiver_ns, move || {
            let sock =
                UdpSocket::bind(SocketAddr::new(IpAddr::V4(bind_ip), PORT)).expect("bind receiver");
            sock.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let _ = bound_tx.send(());
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if FrameHeader::decode(&buf[..n]).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
        bound_rx.recv_timeout(WAIT_MAX).expect("receiver bound");
        g
    }

    fn source(&self) -> IpAddr {
        IpAddr::V4(self.sender_ip())
    }

    fn maps(&self) -> PolicyMaps {
        PolicyMaps::open(&self.receiver_if).expect("pinned maps")
    }

    /// Sends `count` data frames of `stream` from the sender namespace.
    fn send(&self, stream: u32, count: u64) {
        let (from, to) = (self.sender_ip(), self.receiver_ip());
        in_netns(&self.sender_ns, move || {
            let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(from), 0)).expect("bind sender");
            let mut frame = Vec::new();
            for i in 0..count {
                FrameHeader {
                    frame_type: FrameType::Data,
                    flags: 0,
                    stream_id: stream,
                    partition: 0,
                    session_id: 7,
                    offset: i * 64,
                    epoch: 1,
                }
                .encode(&[0xab; 64], &mut frame)
                .expect("encode");
                sock.send_to(&frame, (to, PORT)).expect("send");
            }
        })
        .join()
        .expect("sender thread");
    }

    /// Waits (bounded) until `verdict` moved by `n` since `before`, then
    /// checks it moved by exactly `n`.
    fn expect_verdict(&self, before: &VerdictCounts, verdict: Verdict, n: u64) -> VerdictCounts {
        let maps = self.maps();
        let deadline = Instant::now() + WAIT_MAX;
        while maps.counters().unwrap().since(before).get(verdict) < n && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = maps.counters().unwrap();
        assert_eq!(
            now.since(before).get(verdict),
            n,
            "{}: {:?}",
            verdict.label(),
            now.since(before)
        );
        now
    }

    fn wait_received(&self, n: u64) {
        let deadline = Instant::now() + WAIT_MAX;
        while self.received.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert_eq!(self.received.load(Ordering::Relaxed), n);
    }

    /// Waits (bounded) until the explicit policy entry is `want`; returns how long it took.
    fn wait_policy(&self, stream: u32, want: Option<bool>) -> Duration {
        let maps = self.maps();
        let start = Instant::now();
        while maps.policy(self.source(), stream).unwrap() != want {
            assert!(
                start.elapsed() < WAIT_MAX,
                "policy entry never became {want:?}"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        start.elapsed()
    }
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        self.stop_rx.store(true, Ordering::Relaxed);
        if let Some(t) = self.rx_thread.take() {
            let _ = t.join();
        }
        drop(self.detach.take());
        if let Some(t) = self.attach_thread.take() {
            let _ = t.join();
        }
        for ns in [&self.sender_ns, &self.receiver_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(pin_dir(&self.receiver_if));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denial_through_the_admin_api_drops_frames_in_xdp_and_reallow_restores() {
    testkit::require!(testkit::netns(NEEDS));
    let net = NetGuard::new(0);
    let node = TestNode::start(vec![net.receiver_if.clone()]).await;
    let sip = format!("{}/32", net.sender_ip());

    let created: serde_json::Value = serde_json::from_str(&ok_stdout(
        &node
            .msctl(&["--json", "stream", "create", "telemetry", "--mode", "lossy"])
            .await,
    ))
    .expect("json");
    let stream = created["id"].as_u64().expect("stream id") as u32;
    ok_stdout(&node.msctl(&["principal", "create", "sensor"]).await);
    ok_stdout(
        &node
            .msctl(&[
                "acl",
                "put",
                "--principal",
                "sensor",
                "--resource",
                "telemetry",
                "--op",
                "write",
                "--source",
                &sip,
            ])
            .await,
    );

    // Allowed: every frame passes XDP and reaches the UDP socket.
    let net = Arc::new(net);
    let n = net.clone();
    tokio::task::spawn_blocking(move || n.wait_policy(stream, Some(true)))
        .await
        .unwrap();
    let n = net.clone();
    let c1 = tokio::task::spawn_blocking(move || {
        let c0 = n.maps().counters().unwrap();
        n.send(stream, FRAMES);
        let c1 = n.expect_verdict(&c0, Verdict::RedirectNoSocket, FRAMES);
        assert_eq!(c1.since(&c0).get(Verdict::DropPolicy), 0);
        n.wait_received(FRAMES);
        c1
    })
    .await
    .unwrap();

    // Deny through the admin API (in-process client, to time call -> map).
    let mut admin = node.admin().await;
    let start = Instant::now();
    admin
        .put_acl(pb::PutAclRequest {
            acl: Some(pb::Acl {
                principal: "sensor".into(),
                resource_pattern: "tele*".into(),
                operations: vec![pb::Operation::Write as i32],
                permission: pb::Permission::Deny as i32,
                source_cidrs: vec![],
            }),
        })
        .await
        .expect("deny ACL");
    let answered = start.elapsed();
    let n = net.clone();
    let after_answer = tokio::task::spawn_blocking(move || n.wait_policy(stream, Some(false)))
        .await
        .unwrap();
    eprintln!(
        "policy propagation (single node): admin call answered after {answered:?}, \
         deny entry in the XDP map {after_answer:?} later (total {:?})",
        answered + after_answer
    );
    let n = net.clone();
    let c2 = tokio::task::spawn_blocking(move || {
        n.send(stream, FRAMES);
        let c2 = n.expect_verdict(&c1, Verdict::DropPolicy, FRAMES);
        assert_eq!(c2.since(&c1).get(Verdict::RedirectNoSocket), 0);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            n.received.load(Ordering::Relaxed),
            FRAMES,
            "denied frames arrived"
        );
        c2
    })
    .await
    .unwrap();

    // Re-allow: deleting the Deny ACL restores delivery.
    ok_stdout(
        &node
            .msctl(&[
                "acl",
                "delete",
                "--principal",
                "sensor",
                "--resource",
                "tele*",
            ])
            .await,
    );
    let n = net.clone();
    tokio::task::spawn_blocking(move || {
        n.wait_policy(stream, Some(true));
        n.send(stream, FRAMES);
        let c3 = n.expect_verdict(&c2, Verdict::RedirectNoSocket, FRAMES);
        assert_eq!(c3.since(&c2).get(Verdict::DropPolicy), 0);
        n.wait_received(2 * FRAMES);
    })
    .await
    .unwrap();

    // A quota becomes a token bucket (frames) on the sender's address.
    ok_stdout(
        &node
            .msctl(&[
                "quota",
                "put",
                "--principal",
                "sensor",
                "--bytes-per-s",
                "147200",
                "--burst-bytes",
                "14720",
            ])
            .await,
    );
    let n = net.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Some(b) = n.maps().rate_limit(n.source()).unwrap() {
                assert_eq!((b.rate_per_sec, b.burst), (100, 10));
                break;
            }
            assert!(Instant::now() < deadline, "rate limit never written");
            std::thread::sleep(POLL);
        }
    })
    .await
    .unwrap();
    ok_stdout(
        &node
            .msctl(&["quota", "delete", "--principal", "sensor"])
            .await,
    );
    let n = net.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT_MAX;
        while n.maps().rate_limit(n.source()).unwrap().is_some() {
            assert!(Instant::now() < deadline, "rate limit never cleared");
            std::thread::sleep(POLL);
        }
    })
    .await
    .unwrap();

    // Deleting the stream removes its entries (default deny again).
    ok_stdout(&node.msctl(&["stream", "delete", "telemetry"]).await);
    let n = net.clone();
    tokio::task::spawn_blocking(move || n.wait_policy(stream, None))
        .await
        .unwrap();
    node.stop().await;
    drop(net);
}

#[test]
fn a_restarted_pusher_removes_stale_entries_and_writes_quotas() {
    use controlplane::policy::PolicyPusher;
    use controlplane::types::{
        Acl, ClusterState, Command, NodeInfo, Operation, Permission, Principal, Quota, StreamMode,
    };
    testkit::require!(testkit::netns(NEEDS));
    let net = NetGuard::new(1);
    let stale: IpAddr = "198.19.78.9".parse().unwrap();
    // Left behind by a previous control-plane run.
    net.maps().allow(stale, 3).expect("stale allow");
    net.maps()
        .set_rate_limit(stale, 10, 10)
        .expect("stale rate");

    let mut state = ClusterState::default();
    let apply = |s: &mut ClusterState, c: Command| {
        let r = s.apply(&c);
        assert!(r.clone().into_result().is_ok(), "{c:?}: {r:?}");
    };
    apply(
        &mut state,
        Command::RegisterNode(NodeInfo {
            id: 1,
            control_addr: "127.0.0.1:1".into(),
            data_addr: "127.0.0.1:2".into(),
        }),
    );
    apply(
        &mut state,
        Command::CreateStream {
            name: "s".into(),
            partitions: 1,
            replication_factor: 1,
            retention_bytes: 0,
            retention_ms: 0,
            mode: StreamMode::Lossy,
            policy: Default::default(),
        },
    );
    let stream = state.streams["s"].id;
    apply(
        &mut state,
        Command::PutPrincipal(Principal { name: "p".into() }),
    );
    apply(
        &mut state,
        Command::PutAcl(Acl {
            principal: "p".into(),
            resource_pattern: "s".into(),
            operations: vec![Operation::Write],
            permission: Permission::Allow,
            source_cidrs: vec!["198.19.78.0/31".parse().unwrap()],
        }),
    );
    apply(
        &mut state,
        Command::PutQuota(Quota {
            principal: "p".into(),
            bytes_per_s: 1_472_000,
            burst_bytes: 14_720,
        }),
    );

    let mut pusher = PolicyPusher::new(std::slice::from_ref(&net.receiver_if)).expect("pusher");
    let report = pusher.push(&state);
    assert!(report.all_ok(), "{report:?}");
    let maps = net.maps();
    assert_eq!(maps.policy(stale, 3).unwrap(), None, "stale allow removed");
    assert_eq!(maps.rate_limit(stale).unwrap(), None, "stale rate removed");
    for host in ["198.19.78.0", "198.19.78.1"] {
        let addr: IpAddr = host.parse().unwrap();
        assert_eq!(maps.policy(addr, stream).unwrap(), Some(true));
        let bucket = maps.rate_limit(addr).unwrap().expect("quota bucket");
        assert_eq!((bucket.rate_per_sec, bucket.burst), (1000, 10));
    }
    // Pushing the same state again writes nothing.
    let again = pusher.push(&state);
    assert!(matches!(again.ifaces[0].result, Ok(0)), "{again:?}");
    // An interface without the program is reported, not a panic.
    let mut missing = PolicyPusher::new(&["msx-absent0".to_string()]).expect("pusher");
    let r = missing.push(&state);
    let err = r.ifaces[0].result.as_ref().expect_err("not attached");
    assert!(err.to_string().contains("ms-xdp attach"), "{err}");
}

/// The same end to end on three control-plane nodes, each writing the maps
/// of its own data interface (one veth pair per node): a Deny sent to a
/// follower's admin API drops the senders' frames on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denial_drops_frames_on_every_node() {
    testkit::require!(testkit::netns(NEEDS));
    let nets: Vec<Arc<NetGuard>> = (2..5).map(|n| Arc::new(NetGuard::new(n))).collect();
    let nodes =
        TestNode::start_cluster(nets.iter().map(|n| vec![n.receiver_if.clone()]).collect()).await;
    let leader_id = nodes[0].leader().expect("leader");
    let follower = nodes
        .iter()
        .find(|n| n.id != leader_id)
        .expect("a follower");

    let created: serde_json::Value = serde_json::from_str(&ok_stdout(
        &follower
            .msctl(&[
                "--json",
                "stream",
                "create",
                "fleet",
                "--replication-factor",
                "3",
            ])
            .await,
    ))
    .expect("json");
    let stream = created["id"].as_u64().expect("stream id") as u32;
    ok_stdout(&follower.msctl(&["principal", "create", "sensors"]).await);
    let mut args = vec![
        "acl".to_string(),
        "put".into(),
        "--principal".into(),
        "sensors".into(),
        "--resource".into(),
        "fleet".into(),
        "--op".into(),
        "write".into(),
    ];
    for n in &nets {
        args.push("--source".into());
        args.push(format!("{}/32", n.sender_ip()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok_stdout(&follower.msctl(&args).await);

    // Every node's interface lets its sender through.
    let mut before = Vec::new();
    for n in &nets {
        let n = n.clone();
        before.push(
            tokio::task::spawn_blocking(move || {
                n.wait_policy(stream, Some(true));
                let c0 = n.maps().counters().unwrap();
                n.send(stream, FRAMES);
                let c1 = n.expect_verdict(&c0, Verdict::RedirectNoSocket, FRAMES);
                n.wait_received(FRAMES);
                c1
            })
            .await
            .unwrap(),
        );
    }

    // Deny through a follower: every node drops.
    ok_stdout(
        &follower
            .msctl(&[
                "acl",
                "put",
                "--principal",
                "sensors",
                "--resource",
                "fl*",
                "--op",
                "write",
                "--deny",
            ])
            .await,
    );
    // Time until the deny is in every node's map (waited for in parallel).
    let waits: Vec<_> = nets
        .iter()
        .map(|n| {
            let n = n.clone();
            std::thread::spawn(move || n.wait_policy(stream, Some(false)))
        })
        .collect();
    let took: Vec<Duration> = waits.into_iter().map(|w| w.join().unwrap()).collect();
    eprintln!(
        "3 nodes: deny in every node's XDP map at most {:?} after msctl (sent to a follower) exited",
        took.iter().max().unwrap()
    );
    let mut denied = Vec::new();
    for (n, c1) in nets.iter().zip(before) {
        let n = n.clone();
        denied.push(
            tokio::task::spawn_blocking(move || {
                n.send(stream, FRAMES);
                let c2 = n.expect_verdict(&c1, Verdict::DropPolicy, FRAMES);
                assert_eq!(c2.since(&c1).get(Verdict::RedirectNoSocket), 0);
                assert_eq!(n.received.load(Ordering::Relaxed), FRAMES);
                c2
            })
            .await
            .unwrap(),
        );
    }

    // Re-allow: every node delivers again.
    ok_stdout(
        &follower
            .msctl(&[
                "acl",
                "delete",
                "--principal",
                "sensors",
                "--resource",
                "fl*",
            ])
            .await,
    );
    for (n, c2) in nets.iter().zip(denied) {
        let n = n.clone();
        tokio::task::spawn_blocking(move || {
            n.wait_policy(stream, Some(true));
            n.send(stream, FRAMES);
            let c3 = n.expect_verdict(&c2, Verdict::RedirectNoSocket, FRAMES);
            assert_eq!(c3.since(&c2).get(Verdict::DropPolicy), 0);
            n.wait_received(2 * FRAMES);
        })
        .await
        .unwrap();
    }
    for node in nodes {
        node.stop().await;
    }
    drop(nets);
}
