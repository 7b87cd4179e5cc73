//! Real XDP on real veth pairs in network namespaces.
//!
//! Each test makes its own namespaces `msxdp-<pid>-<n>-{s,r}` and a veth pair
//! with 198.18.<n>.1/30 (sender) and 198.18.<n>.2/30 (receiver), IPv6
//! disabled and static neighbour entries (so no ARP/ND traffic reaches the
//! program and every counter is exact). `ms-xdp --netns <r> attach` loads the
//! program in native mode on the receiving end; `ms-xdp --netns <s> send`
//! sends a bounded number of frames; the test reads the pinned counters from
//! this process through `PolicyMaps`. The `TestNet` guard stops the attach
//! process, deletes the namespaces (and with them the veth pair) and the pins
//! on every path, panics included. Needs root: skips with a message otherwise,
//! fails under `make test`.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use xdp_programs::abi::{pin_dir, Config, Verdict, VerdictCounts, VERDICT_COUNT};
use xdp_programs::{AttachMode, PolicyMaps, XdpLoadError, XdpProgram};

const MS_XDP: &str = env!("CARGO_BIN_EXE_ms-xdp");
/// Data port every test uses (namespaces keep tests apart).
const PORT: u16 = 47_000;
/// Longest wait for a child's line or for counters to settle.
const WAIT_MAX: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// What root is for here; with `ip`, all these tests need (`testkit::require!`).
const NEEDS: &str = "network namespaces, XDP, bpffs";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Reads lines of a child's stdout on a thread, so waits are bounded.
fn line_reader(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

struct TestNet {
    n: u8,
    sender_ns: String,
    receiver_ns: String,
    receiver_if: String,
    attach: Option<(Child, ChildStdin)>,
}

impl TestNet {
    /// Namespaces + veth + program attached in native mode on the receiving end.
    fn new(n: u8, default_allow: bool) -> TestNet {
        let pid = std::process::id();
        let mut net = TestNet {
            n,
            sender_ns: format!("msxdp-{pid}-{n}-s"),
            receiver_ns: format!("msxdp-{pid}-{n}-r"),
            receiver_if: format!("mx{}r{n}", pid % 1_000_000),
            attach: None,
        };
        let sender_if = format!("mx{}s{n}", pid % 1_000_000);
        let (smac, rmac) = (
            format!("02:00:c6:12:{n:02x}:01"),
            format!("02:00:c6:12:{n:02x}:02"),
        );
        let (sip, rip) = (net.sender_ip().to_string(), net.receiver_ip().to_string());
        for ns in [&net.sender_ns, &net.receiver_ns] {
            ip(&["netns", "add", ns]);
            for knob in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
                ip(&["netns", "exec", ns, "sh", "-c", &format!("echo 1 > {path}")]);
            }
        }
        #[rustfmt::skip]
        ip(&["link", "add", &sender_if, "address", &smac, "netns", &net.sender_ns, "type", "veth",
             "peer", "name", &net.receiver_if, "address", &rmac, "netns", &net.receiver_ns]);
        ip(&[
            "-n",
            &net.sender_ns,
            "addr",
            "add",
            &format!("{sip}/30"),
            "dev",
            &sender_if,
        ]);
        ip(&[
            "-n",
            &net.receiver_ns,
            "addr",
            "add",
            &format!("{rip}/30"),
            "dev",
            &net.receiver_if,
        ]);
        ip(&["-n", &net.sender_ns, "link", "set", &sender_if, "up"]);
        ip(&[
            "-n",
            &net.receiver_ns,
            "link",
            "set",
            &net.receiver_if,
            "up",
        ]);
        #[rustfmt::skip]
        ip(&["-n", &net.sender_ns, "neigh", "add", &rip, "lladdr", &rmac, "dev", &sender_if, "nud", "permanent"]);
        #[rustfmt::skip]
        ip(&["-n", &net.receiver_ns, "neigh", "add", &sip, "lladdr", &smac, "dev", &net.receiver_if, "nud", "permanent"]);

        let mut cmd = Command::new(MS_XDP);
        cmd.args([
            "--netns",
            &net.receiver_ns,
            "attach",
            "--iface",
            &net.receiver_if,
        ])
        .args([
            "--port",
            &PORT.to_string(),
            "--mode",
            "native",
            "--exit-on-stdin-eof",
        ]);
        if default_allow {
            cmd.arg("--default-allow");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ms-xdp attach");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = line_reader(child.stdout.take().expect("piped stdout"));
        net.attach = Some((child, stdin));
        let first = lines
            .recv_timeout(WAIT_MAX)
            .expect("ms-xdp attach printed nothing (see stderr)");
        assert!(
            first.starts_with("attached "),
            "unexpected attach output: {first}"
        );
        net
    }

    fn sender_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.n, 1)
    }

    fn receiver_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.n, 2)
    }

    fn source(&self) -> IpAddr {
        IpAddr::V4(self.sender_ip())
    }

    fn maps(&self) -> PolicyMaps {
        PolicyMaps::open(&self.receiver_if).expect("maps pinned by ms-xdp attach")
    }

    fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.receiver_if)
    }

    /// Sends `count` frames of `kind` from the sender namespace.
    fn send(&self, kind: &str, count: u64, stream: u32, extra: &[&str]) {
        let out = run(Command::new(MS_XDP)
            .args(["--netns", &self.sender_ns, "send", "--kind", kind])
            .args([
                "--dst",
                &self.receiver_ip().to_string(),
                "--port",
                &PORT.to_string(),
            ])
            .args([
                "--count",
                &count.to_string(),
                "--stream",
                &stream.to_string(),
            ])
            .args(extra));
        assert_eq!(out.trim(), format!("sent {count}"));
    }

    /// Waits (bounded) until the counters moved by at least `expected` since
    /// `before`, then asserts every verdict moved by exactly `expected`.
    fn expect_delta(&self, before: &VerdictCounts, expected: &[(Verdict, u64)]) -> VerdictCounts {
        let mut want = [0u64; VERDICT_COUNT as usize];
        for &(v, n) in expected {
            want[v.id() as usize] += n;
        }
        let maps = self.maps();
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let now = maps.counters().expect("read counters");
            let delta = now.since(before);
            let reached = want.iter().zip(delta.0.iter()).all(|(w, d)| d >= w);
            if reached || Instant::now() >= deadline {
                // Frames in flight would show up now: settle briefly, re-read, compare all.
                std::thread::sleep(Duration::from_millis(100));
                let now = maps.counters().expect("read counters");
                let delta = now.since(before);
                for v in Verdict::ALL {
                    assert_eq!(
                        delta.get(v),
                        want[v.id() as usize],
                        "verdict {} (all deltas: {:?})",
                        v.label(),
                        delta
                    );
                }
                return now;
            }
            std::thread::sleep(POLL);
        }
    }

    fn counters(&self) -> VerdictCounts {
        self.maps().counters().expect("read counters")
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.attach.take() {
            drop(stdin); // EOF: ms-xdp detaches and unpins
            let deadline = Instant::now() + WAIT_MAX;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for ns in [&self.sender_ns, &self.receiver_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(self.pin_dir());
    }
}

#[test]
fn policy_deny_drops_in_xdp_and_reallow_delivers_to_a_udp_socket() {
    testkit::require!(testkit::netns(NEEDS));
    let net = TestNet::new(1, false);
    let src = net.source();
    let c0 = net.counters();

    // Default deny: no entry for (sender, 7).
    net.send("valid", 6, 7, &[]);
    let c1 = net.expect_delta(&c0, &[(Verdict::DropPolicy, 6)]);

    // Allow: frames pass XDP (no AF_XDP socket yet) and reach a UDP socket.
    net.maps().allow(src, 7).expect("allow");
    let mut recv = Command::new(MS_XDP)
        .args([
            "--netns",
            &net.receiver_ns,
            "recv",
            "--bind",
            &net.receiver_ip().to_string(),
        ])
        .args([
            "--port",
            &PORT.to_string(),
            "--count",
            "6",
            "--timeout-ms",
            "8000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn recv");
    let lines = line_reader(recv.stdout.take().expect("piped"));
    assert_eq!(lines.recv_timeout(WAIT_MAX).expect("recv ready"), "ready");
    net.send("valid", 6, 7, &[]);
    let c2 = net.expect_delta(&c1, &[(Verdict::RedirectNoSocket, 6)]);
    assert_eq!(
        lines.recv_timeout(WAIT_MAX).expect("recv totals"),
        "received 6 valid 6"
    );
    assert!(recv.wait().expect("recv exits").success());

    // Another stream of the same source is still denied.
    net.send("valid", 3, 8, &[]);
    let c3 = net.expect_delta(&c2, &[(Verdict::DropPolicy, 3)]);

    // Explicit deny, then re-allow restores delivery.
    net.maps().deny(src, 7).expect("deny");
    assert_eq!(net.maps().policy(src, 7).expect("get"), Some(false));
    net.send("valid", 4, 7, &[]);
    let c4 = net.expect_delta(&c3, &[(Verdict::DropPolicy, 4)]);
    net.maps().allow(src, 7).expect("re-allow");
    net.send("valid", 2, 7, &[]);
    net.expect_delta(&c4, &[(Verdict::RedirectNoSocket, 2)]);

    // Only a bound AF_XDP socket can take an XSKMAP slot; clearing an empty slot is fine.
    let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp socket");
    let mut maps = net.maps();
    let err = maps.set_xsk(0, &udp).expect_err("a UDP socket is refused");
    assert!(err.to_string().contains("AF_XDP socket bound"), "{err}");
    assert!(maps
        .set_xsk(xdp_programs::abi::XSK_QUEUES_MAX, &udp)
        .is_err());
    maps.clear_xsk(0).expect("clear empty slot");

    // A second attach on the same interface is refused with a clear message.
    let out = Command::new(MS_XDP)
        .args([
            "--netns",
            &net.receiver_ns,
            "attach",
            "--iface",
            &net.receiver_if,
        ])
        .args(["--port", "1"])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already pinned"),
        "{out:?}"
    );

    let pins = net.pin_dir();
    assert!(pins.join("ms_policy").exists());
    drop(net);
    assert!(!pins.exists(), "pins removed on detach");
}

#[test]
fn default_allow_flag_and_explicit_entries() {
    testkit::require!(testkit::netns(NEEDS));
    let net = TestNet::new(2, true);
    let src = net.source();
    let c0 = net.counters();
    net.send("valid", 3, 5, &[]);
    let c1 = net.expect_delta(&c0, &[(Verdict::RedirectNoSocket, 3)]);

    net.maps().deny(src, 5).expect("deny");
    net.send("valid", 2, 5, &[]);
    let c2 = net.expect_delta(&c1, &[(Verdict::DropPolicy, 2)]);

    net.maps().forget(src, 5).expect("forget");
    assert_eq!(net.maps().policy(src, 5).expect("get"), None);
    net.send("valid", 2, 5, &[]);
    let c3 = net.expect_delta(&c2, &[(Verdict::RedirectNoSocket, 2)]);

    // Switch the default to deny from this process; data port unchanged.
    let mut maps = net.maps();
    let cfg = maps.config().expect("config");
    assert_eq!(cfg.data_port, PORT);
    maps.set_config(Config { flags: 0, ..cfg })
        .expect("set config");
    net.send("valid", 4, 5, &[]);
    let c4 = net.expect_delta(&c3, &[(Verdict::DropPolicy, 4)]);

    // Port 0 = unconfigured: everything goes to the kernel untouched.
    maps.set_config(Config {
        data_port: 0,
        ..cfg
    })
    .expect("set config");
    net.send("valid", 2, 5, &[]);
    net.expect_delta(&c4, &[(Verdict::PassOtherPort, 2)]);
}

#[test]
fn rate_limit_passes_exactly_the_burst() {
    testkit::require!(testkit::netns(NEEDS));
    let net = TestNet::new(3, true);
    let src = net.source();
    let c0 = net.counters();

    // Burst 4, no refill: exactly 4 of 10 pass.
    net.maps().set_rate_limit(src, 0, 4).expect("rate limit");
    net.send("valid", 10, 1, &[]);
    let c1 = net.expect_delta(
        &c0,
        &[
            (Verdict::RedirectNoSocket, 4),
            (Verdict::DropRateLimited, 6),
        ],
    );
    let bucket = net
        .maps()
        .rate_limit(src)
        .expect("get")
        .expect("bucket present");
    assert_eq!(
        (bucket.tokens, bucket.burst, bucket.rate_per_sec),
        (0, 4, 0)
    );
    assert_ne!(bucket.last_ns, 0, "the program started the bucket clock");

    // Rewriting the bucket refills it.
    net.maps().set_rate_limit(src, 0, 2).expect("rate limit");
    net.send("valid", 5, 1, &[]);
    let c2 = net.expect_delta(
        &c1,
        &[
            (Verdict::RedirectNoSocket, 2),
            (Verdict::DropRateLimited, 3),
        ],
    );

    // Policy is checked before the bucket: denied frames spend no tokens.
    net.maps().set_rate_limit(src, 0, 3).expect("rate limit");
    net.maps().deny(src, 1).expect("deny");
    net.send("valid", 5, 1, &[]);
    let c3 = net.expect_delta(&c2, &[(Verdict::DropPolicy, 5)]);
    net.maps().forget(src, 1).expect("forget");
    net.send("valid", 4, 1, &[]);
    let c4 = net.expect_delta(
        &c3,
        &[
            (Verdict::RedirectNoSocket, 3),
            (Verdict::DropRateLimited, 1),
        ],
    );

    // Cleared: no limit.
    net.maps().clear_rate_limit(src).expect("clear");
    assert_eq!(net.maps().rate_limit(src).expect("get"), None);
    net.send("valid", 7, 1, &[]);
    net.expect_delta(&c4, &[(Verdict::RedirectNoSocket, 7)]);

    // Rates above the limit are refused in user space.
    assert!(net.maps().set_rate_limit(src, u64::MAX, 1).is_err());
    assert!(net.maps().set_rate_limit(src, 1, 0).is_err());
}

#[test]
fn malformed_and_truncated_frames_are_dropped_and_counted() {
    testkit::require!(testkit::netns(NEEDS));
    let net = TestNet::new(4, true);
    let mut c = net.counters();
    let cases: &[(&str, u64, &[&str], Verdict)] = &[
        ("bad-magic", 3, &[], Verdict::DropBadHeader),
        ("bad-version", 2, &[], Verdict::DropBadHeader),
        ("bad-type", 2, &[], Verdict::DropBadHeader),
        ("bad-reserved", 1, &[], Verdict::DropBadHeader),
        ("short", 3, &[], Verdict::DropTruncated),
        ("empty", 2, &[], Verdict::DropTruncated),
        ("raw-udp-truncated", 3, &[], Verdict::DropTruncated),
        ("bad-length-field", 2, &[], Verdict::DropBadLength),
        ("raw-udp-bad-length", 2, &[], Verdict::DropBadLength),
    ];
    for &(kind, count, extra, verdict) in cases {
        net.send(kind, count, 1, extra);
        c = net.expect_delta(&c, &[(verdict, count)]);
    }

    // Not for the data port: passed untouched.
    run(Command::new(MS_XDP)
        .args([
            "--netns",
            &net.sender_ns,
            "send",
            "--kind",
            "valid",
            "--count",
            "4",
        ])
        .args([
            "--dst",
            &net.receiver_ip().to_string(),
            "--port",
            &(PORT + 1).to_string(),
        ]));
    c = net.expect_delta(&c, &[(Verdict::PassOtherPort, 4)]);

    // A 3000-byte frame is IPv4-fragmented on a 1500 MTU: 3 fragments each, passed.
    net.send("valid", 2, 1, &["--body-bytes", "2960"]);
    c = net.expect_delta(&c, &[(Verdict::PassIpFragment, 6)]);

    // Still alive and accepting after all that.
    net.send("valid", 1, 1, &[]);
    net.expect_delta(&c, &[(Verdict::RedirectNoSocket, 1)]);

    // The operator's view agrees.
    let out = run(Command::new(MS_XDP).args(["counters", "--iface", &net.receiver_if]));
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["drop_bad_header", "8"])),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["drop_truncated", "8"])),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["drop_bad_length", "4"])),
        "{out}"
    );
}

#[test]
fn attach_errors_say_what_to_do() {
    testkit::require!(testkit::netns(NEEDS));
    let err = XdpProgram::load_and_attach("msxnope0", AttachMode::Native, Config::default())
        .err()
        .expect("no such interface");
    assert!(
        matches!(err, XdpLoadError::UnknownInterface { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--netns"), "{err}");
    assert!(!pin_dir("msxnope0").exists());

    let err = XdpProgram::load_and_attach("bad/name", AttachMode::Skb, Config::default())
        .err()
        .expect("invalid name");
    assert!(
        matches!(err, XdpLoadError::InvalidInterfaceName { .. }),
        "{err}"
    );

    let out = Command::new(MS_XDP)
        .args(["counters", "--iface", "msxnope0"])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("attach the program first"));
    let _ = std::io::stderr().flush();
}

/// Deletes network namespaces on drop.
struct NsGuard(Vec<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn loader_mounts_bpffs_when_absent_and_skb_mode_works() {
    testkit::require!(
        testkit::netns(NEEDS),
        testkit::tool("unshare", "--version", "util-linux")
    );
    let pid = std::process::id();
    let ns = format!("msxdp-{pid}-5-m");
    let guard = NsGuard(vec![ns.clone()]);
    let iface = format!("mx{}m5", pid % 1_000_000);
    ip(&["netns", "add", &ns]);
    ip(&[
        "-n",
        &ns,
        "link",
        "add",
        &iface,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{iface}p"),
    ]);
    ip(&["-n", &ns, "link", "set", &iface, "up"]);
    // A private mount namespace without bpffs: the loader must mount it.
    // stdin is /dev/null, so `attach --exit-on-stdin-eof` detaches right away.
    let script = format!(
        "umount /sys/fs/bpf 2>/dev/null; \
         if mount | grep -q ' /sys/fs/bpf '; then echo still-mounted; exit 1; fi; \
         {MS_XDP} --netns {ns} attach --iface {iface} --port 1 --mode skb --exit-on-stdin-eof \
           </dev/null || exit 1; \
         mount | grep ' /sys/fs/bpf ' | cut -d' ' -f5"
    );
    let out = run(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("attached ") && lines[0].contains("mode=Skb"),
        "{out}"
    );
    assert!(lines[1].starts_with("detached "), "{out}");
    assert_eq!(lines[2], "bpf", "bpffs mounted by the loader: {out}");
    drop(guard);
    assert!(!pin_dir(&iface).exists());
}

/// The lossy-link tool (`ms-xdp loss`, the tc program of src/link_loss.c): on the
/// sender's egress it drops a seeded share of the UDP frames in the kernel, counts
/// exactly what it dropped and passed, and the link is whole again once it detaches.
#[test]
fn link_loss_drops_a_seeded_share_and_counts_it() {
    testkit::require!(testkit::netns(NEEDS));
    let net = TestNet::new(5, true);
    let sender_if = format!("mx{}s5", std::process::id() % 1_000_000);
    const SENT: u64 = 2_000;

    // Bad arguments are refused with a clear message.
    for (args, want) in [
        (vec!["--ppm", "0"], "out of range"),
        (vec!["--ppm", "600000"], "out of range"),
    ] {
        let out = Command::new(MS_XDP)
            .args(["--netns", &net.sender_ns, "loss", "--iface", &sender_if])
            .args(&args)
            .output()
            .expect("spawn");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = Command::new(MS_XDP)
        .args(["--netns", &net.sender_ns, "loss", "--iface", "nosuchif0"])
        .args(["--ppm", "1000"])
        .output()
        .expect("spawn");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    let mut loss = Command::new(MS_XDP)
        .args(["--netns", &net.sender_ns, "loss", "--iface", &sender_if])
        .args(["--ppm", "200000", "--seed", "42", "--direction", "egress"])
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ms-xdp loss");
    let loss_stdin = loss.stdin.take().expect("piped");
    let loss_lines = line_reader(loss.stdout.take().expect("piped"));
    let first = loss_lines.recv_timeout(WAIT_MAX).expect("loss attached");
    assert!(first.starts_with("loss attached "), "{first}");

    let c0 = net.counters();
    net.send("valid", SENT, 7, &[]);
    drop(loss_stdin);
    let last = loss_lines.recv_timeout(WAIT_MAX).expect("loss totals");
    assert!(loss.wait().expect("loss exits").success());
    let field = |name: &str| -> u64 {
        last.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {last:?}"))
    };
    let (dropped, passed) = (field("dropped="), field("passed="));
    assert_eq!(dropped + passed, SENT, "{last}");
    // 20 % of 2000 is 400 on average (sd ~18): far from both 0 and everything.
    assert!((250..=550).contains(&dropped), "{last}");
    // What passed the lossy egress is exactly what reached the receiver's XDP program.
    let c1 = net.expect_delta(&c0, &[(Verdict::RedirectNoSocket, passed)]);

    // Detached: the link is whole again.
    net.send("valid", 50, 7, &[]);
    net.expect_delta(&c1, &[(Verdict::RedirectNoSocket, 50)]);
}
