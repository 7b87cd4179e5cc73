//! Crash safety with real processes killed by SIGKILL, and records crossing
//! between processes. Children are the crate's `ms-ring` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{payload, TestDir};
use shm_ring::*;

const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// A child process that is killed (SIGKILL) and reaped when dropped.
struct ChildProc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildProc {
    fn spawn(args: &[&str]) -> ChildProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ms-ring"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ms-ring");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProc { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Next stdout line (bounded wait).
    fn line(&self) -> String {
        self.lines
            .recv_timeout(STEP_DEADLINE)
            .expect("child printed nothing in time")
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
        self.child.wait().expect("reap");
    }

    fn wait_ok(mut self) -> String {
        let line = self.line();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "child failed: {status}");
        line
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn killed_subscriber_is_evicted_and_stops_back_pressuring() {
    let dir = TestDir::new("kill-sub");
    let d = dir.path().to_str().unwrap();
    // A generous liveness timeout: the live child must never look dead,
    // even on a loaded machine.
    let mut cfg = dir.cfg(1024, Mode::Reliable, PublisherKind::Exclusive);
    cfg.liveness_timeout_ns = 1_000_000_000;
    let ring = Ring::create("r", &cfg).unwrap();
    let mut holder = ChildProc::spawn(&["hold-subscriber", d, "r"]);
    assert_eq!(holder.line(), "ready at 0");
    let mut publ = ring.publisher().unwrap();
    let mut sent = 0u64;
    while publ.offer(&payload(sent, 32)).is_ok() {
        sent += 1;
    }
    assert_eq!(sent, 16, "the live subscriber holds the ring");
    // Alive and heartbeating for several liveness timeouts: never evicted.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        assert_eq!(publ.offer(&[0; 32]), Err(OfferError::BackPressured));
        std::thread::sleep(Duration::from_millis(5));
    }
    holder.kill9();
    until("the dead subscriber's eviction", || {
        publ.offer(&payload(sent, 32)).ok()
    });
    let slot = ring
        .subscriber_slots()
        .into_iter()
        .find(|s| s.pid == u64::from(holder.pid()))
        .unwrap();
    assert_eq!(slot.state, "evicted");
}

#[test]
fn stalled_subscriber_is_evicted_and_told_so() {
    let dir = TestDir::new("stall-sub");
    let ring = Ring::create("r", &dir.cfg(1024, Mode::Reliable, PublisherKind::Shared)).unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let mut publ = ring.publisher().unwrap();
    // The subscriber never polls: after liveness_timeout_ns the publisher evicts it.
    until("eviction of a subscriber that stopped heartbeating", || {
        let _ = publ.offer(&[1; 100]);
        (ring.subscriber_slots()[0].state == "evicted").then_some(())
    });
    assert_eq!(sub.poll(|_| {}, 10), Err(PollError::Evicted));
    assert_eq!(sub.poll(|_| {}, 10), Err(PollError::Evicted));
    // Its slot is reusable.
    let mut again = ring.subscriber(StartAt::Tail).unwrap();
    publ.offer(b"fresh").unwrap();
    assert_eq!(
        again
            .poll(|r| assert_eq!(r.payload, b"fresh"), 10)
            .unwrap()
            .records,
        1
    );
}

#[test]
fn shared_publisher_killed_between_claim_and_commit_does_not_wedge_readers() {
    let dir = TestDir::new("kill-shared-pub");
    let d = dir.path().to_str().unwrap();
    let ring = Ring::create("r", &dir.cfg(4096, Mode::Reliable, PublisherKind::Shared)).unwrap();
    let mut subs = [
        ring.subscriber(StartAt::Tail).unwrap(),
        ring.subscriber(StartAt::Tail).unwrap(),
    ];
    let mut claimer = ChildProc::spawn(&["claim-and-hang", d, "r"]);
    assert_eq!(claimer.line(), "ready claimed 0");
    let mut publ = ring.publisher().unwrap();
    for i in 1..=3u64 {
        assert_eq!(publ.offer(&payload(i, 20)), Ok(i));
    }
    claimer.kill9();
    for sub in subs.iter_mut() {
        let mut got = Vec::new();
        until("the dead claim to be aborted", || {
            sub.poll(|r| got.push((r.offset, r.payload.to_vec())), 10)
                .unwrap();
            (got.len() == 3).then_some(())
        });
        assert_eq!(
            got,
            (1..=3).map(|i| (i, payload(i, 20))).collect::<Vec<_>>()
        );
        assert_eq!(
            sub.lost_records(),
            1,
            "the aborted record counts as lost, for every subscriber"
        );
    }
}

#[test]
fn exclusive_publisher_killed_mid_claim_is_aborted_and_replaced() {
    let dir = TestDir::new("kill-excl-pub");
    let d = dir.path().to_str().unwrap();
    let ring = Ring::create(
        "r",
        &dir.cfg(4096, Mode::Reliable, PublisherKind::Exclusive),
    )
    .unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let mut claimer = ChildProc::spawn(&["claim-and-hang", d, "r"]);
    assert_eq!(claimer.line(), "ready claimed 0");
    // A live exclusive owner is never aborted and never replaced.
    assert!(
        matches!(ring.publisher(), Err(PublisherAttachError::Busy { pid }) if pid == claimer.pid())
    );
    std::thread::sleep(Duration::from_millis(120)); // > claim_timeout
    assert_eq!(
        sub.poll(|_| {}, 10).unwrap(),
        Poll {
            records: 0,
            lost: 0
        }
    );
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(
        sub.poll(|_| {}, 10).unwrap(),
        Poll {
            records: 0,
            lost: 0
        }
    );
    claimer.kill9();
    until("the dead owner's claim to be aborted", || {
        (sub.poll(|_| {}, 10).unwrap().lost == 1).then_some(())
    });
    let mut publ = ring.publisher().expect("a dead owner is replaced");
    assert_eq!(publ.offer(b"next"), Ok(1));
    assert_eq!(
        sub.poll(|r| assert_eq!(r.payload, b"next"), 10)
            .unwrap()
            .records,
        1
    );
}

#[test]
fn new_exclusive_owner_aborts_dead_owners_open_claim() {
    let dir = TestDir::new("takeover");
    let d = dir.path().to_str().unwrap();
    let ring = Ring::create(
        "r",
        &dir.cfg(4096, Mode::Reliable, PublisherKind::Exclusive),
    )
    .unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let mut claimer = ChildProc::spawn(&["claim-and-hang", d, "r"]);
    assert_eq!(claimer.line(), "ready claimed 0");
    claimer.kill9();
    let mut publ = ring.publisher().expect("a dead owner is replaced");
    assert_eq!(publ.offer(b"next"), Ok(1));
    let p = sub.poll(|r| assert_eq!(r.payload, b"next"), 10).unwrap();
    assert_eq!(
        p,
        Poll {
            records: 1,
            lost: 1
        },
        "no claim timeout needed"
    );
}

#[test]
fn stale_ring_of_dead_owner_is_recreated_live_one_is_refused() {
    let dir = TestDir::new("stale");
    let d = dir.path().to_str().unwrap();
    let mut owner = ChildProc::spawn(&["create-and-hang", d, "r", "4096"]);
    assert_eq!(owner.line(), "ready created");
    let cfg = dir.cfg(4096, Mode::Reliable, PublisherKind::Shared);
    match Ring::create("r", &cfg) {
        Err(RingCreateError::Exists { pid, .. }) => assert_eq!(pid, owner.pid()),
        other => panic!("expected Exists, got {other:?}"),
    }
    owner.kill9();
    let ring = Ring::create("r", &cfg).expect("stale file of a dead owner is cleaned");
    assert_eq!(ring.tail(), (0, 0), "a fresh ring");
    // A file that is not a ring is left alone.
    std::fs::write(dir.path().join("notes"), b"not a ring").unwrap();
    assert!(matches!(
        Ring::create("notes", &cfg),
        Err(RingCreateError::Foreign { .. })
    ));
    assert_eq!(
        std::fs::read(dir.path().join("notes")).unwrap(),
        b"not a ring"
    );
}

#[test]
fn records_cross_between_processes_in_order() {
    let dir = TestDir::new("xproc");
    let d = dir.path().to_str().unwrap();
    for kind in [PublisherKind::Exclusive, PublisherKind::Shared] {
        let name = format!("x-{kind:?}");
        let ring = Ring::create(&name, &dir.cfg(64 * 1024, Mode::Reliable, kind)).unwrap();
        let mut local = ring.subscriber(StartAt::Tail).unwrap();
        let sub = ChildProc::spawn(&["subscribe", d, &name, "20000"]);
        assert_eq!(sub.line(), "ready");
        let publ = ChildProc::spawn(&["publish", d, &name, "20000", "40"]);
        let mut n = 0u64;
        until("20000 records in this process", || {
            local
                .poll(
                    |r| {
                        assert_eq!(r.offset, n);
                        assert_eq!(r.payload, payload(n, 40));
                        n += 1;
                    },
                    4096,
                )
                .unwrap();
            (n == 20000).then_some(())
        });
        assert_eq!(publ.wait_ok(), "ok published 20000");
        assert_eq!(sub.wait_ok(), "ok received 20000 bad 0 lost 0");
    }
}

#[test]
fn inspect_prints_header_tail_owner_and_subscribers() {
    let dir = TestDir::new("inspect");
    let ring = Ring::create("r", &dir.cfg(4096, Mode::Lossy, PublisherKind::Exclusive)).unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let mut publ = ring.publisher().unwrap();
    for i in 0..5u64 {
        publ.offer(&payload(i, 10)).unwrap();
    }
    sub.poll(|_| {}, 2).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ms-ring"))
        .arg("inspect")
        .arg(ring.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "capacity_bytes    4096",
        "mode              Lossy",
        "publishers        Exclusive",
        "tail              position 240 next_offset 5",
        &format!("owner             active gen 1 pid {}", std::process::id()),
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let row = text
        .lines()
        .find(|l| l.starts_with("0 "))
        .expect("subscriber row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cols[..7],
        &[
            "0",
            "active",
            "1",
            &std::process::id().to_string(),
            "2",
            "96",
            "3"
        ]
    );
    // A file that is not a ring: a clear error, exit status 1.
    std::fs::write(dir.path().join("junk"), vec![0u8; 9000]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ms-ring"))
        .arg("inspect")
        .arg(dir.path().join("junk"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad magic"));
}

#[test]
fn handles_are_send_and_small() {
    fn send<T: Send>() {}
    send::<Publisher>();
    send::<Subscriber>();
    send::<Ring>();
    assert!(
        std::mem::size_of::<Publisher>() <= 64,
        "{}",
        std::mem::size_of::<Publisher>()
    );
    assert!(
        std::mem::size_of::<Subscriber>() <= 128,
        "{}",
        std::mem::size_of::<Subscriber>()
    );
}

#[test]
fn lossy_subscriber_across_processes_detects_overruns_exactly() {
    for copying in [false, true] {
        lossy_cross_process(copying);
    }
}

fn lossy_cross_process(copying: bool) {
    let dir = TestDir::new(&format!("xproc-lossy-{copying}"));
    let d = dir.path().to_str().unwrap();
    let ring = Ring::create("l", &dir.cfg(4096, Mode::Lossy, PublisherKind::Exclusive)).unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    const TOTAL: u64 = 200_000;
    let publ = ChildProc::spawn(&["publish", d, "l", &TOTAL.to_string(), "100"]);
    let (mut records, mut lost, mut intact, mut seen) = (0u64, 0u64, 0u64, 0u64);
    let mut last = None;
    let mut buf = Vec::new();
    until("the lossy subscriber to account for every record", || {
        let handler = |r: &Record<'_>| {
            assert!(last.is_none_or(|l| r.offset > l), "offsets increase");
            last = Some(r.offset);
            seen += 1;
            intact += u64::from(r.payload == payload(r.offset, 100));
            // A slow handler: the publisher laps us.
            std::hint::black_box((0..200).sum::<u64>());
        };
        let p = if copying {
            sub.poll_copy(&mut buf, handler, 8)
        } else {
            sub.poll(handler, 8)
        }
        .unwrap();
        records += p.records as u64;
        lost += p.lost;
        (records + lost == TOTAL).then_some(())
    });
    assert_eq!(publ.wait_ok(), format!("ok published {TOTAL}"));
    assert!(lost > 0, "a slow subscriber of a 4 KiB ring is overrun");
    assert!(
        records <= intact,
        "every record counted as delivered was intact"
    );
    if copying {
        assert_eq!(
            (seen, intact),
            (records, records),
            "poll_copy shows the handler intact records only"
        );
    }
    assert_eq!(sub.lost_records(), lost);
    assert_eq!(sub.next_offset(), TOTAL);
}
