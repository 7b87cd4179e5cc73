//! SDK integration tests: real rings in a temporary directory, real processes.
//!
//! The cross-process test re-executes this test binary as the publisher
//! (`SDK_TEST_CHILD=publisher`, running only the `child_publisher` test).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sdk::typed::{TypedPublisher, TypedSubscriber};
use sdk::{Context, IdleStrategy, Mode, OfferError, PublisherKind};

/// Every wait loop in these tests gives up after this long.
const WAIT_MAX: Duration = Duration::from_secs(30);
const CHILD_ENV: &str = "SDK_TEST_CHILD";
const CHILD_RECORDS: u64 = 20_000;

fn ctx(dir: &Path) -> Context {
    Context::builder()
        .dir(dir)
        .capacity_bytes(1 << 16)
        .mode(Mode::Reliable)
        .publisher_kind(PublisherKind::Exclusive)
        .build()
}

fn offer_retrying(p: &mut sdk::Publisher, bytes: &[u8]) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match p.offer(bytes) {
            Ok(_) => return,
            Err(OfferError::BackPressured) if Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("offer failed: {e}"),
        }
    }
}

/// Not a test on its own: the publisher process of `two_processes_deliver_in_order`.
#[test]
fn child_publisher() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ctx = ctx(Path::new(&dir));
    let deadline = Instant::now() + WAIT_MAX;
    let mut p = loop {
        match ctx.publisher(1, 0) {
            Ok(p) => break p,
            Err(e) if Instant::now() > deadline => panic!("child cannot publish: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    for i in 0..CHILD_RECORDS {
        let len = 8 + (i % 57) as usize;
        let mut buf = vec![(i % 251) as u8; len];
        buf[..8].copy_from_slice(&i.to_le_bytes());
        offer_retrying(&mut p, &buf);
    }
}

#[test]
fn two_processes_deliver_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    // Ring first, subscriber attached, then the publisher process: reliable
    // mode back-pressures the child, so nothing may be lost.
    let ring = ctx.create_ring(1, 0).unwrap();
    let mut sub = ctx.subscriber(1, 0);
    assert!(sub.try_attach(true).unwrap());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_publisher",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + WAIT_MAX;
    let mut next = 0u64;
    while next < CHILD_RECORDS && Instant::now() < deadline {
        sub.poll(
            |r| {
                let i = u64::from_le_bytes(r.payload[..8].try_into().unwrap());
                assert_eq!(i, next, "records arrive in order, none lost");
                assert_eq!(r.payload.len(), 8 + (i % 57) as usize);
                assert!(r.payload[8..].iter().all(|&b| b == (i % 251) as u8));
                next += 1;
            },
            128,
        )
        .unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "publisher process failed: {status}");
    assert_eq!(next, CHILD_RECORDS);
    assert_eq!(sub.lost_records(), 0);
    ring.unlink().unwrap();
}

#[test]
fn subscriber_maps_the_ring_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let mut sub = ctx.subscriber(2, 3);
    assert_eq!(sub.ring_name(), "stream-2-3");
    for _ in 0..3 {
        assert_eq!(sub.poll(|_| panic!("no ring, no records"), 16).unwrap(), 0);
    }
    assert!(!sub.is_attached());
    assert!(sub.footprint_bytes() < 1024);

    let mut p = ctx.publisher(2, 3).unwrap();
    p.offer(b"first").unwrap();
    p.offer(b"second").unwrap();
    let deadline = Instant::now() + WAIT_MAX;
    let mut got = Vec::new();
    while got.len() < 2 && Instant::now() < deadline {
        // Attach attempts are rate-limited; polling keeps retrying.
        sub.poll(|r| got.push(r.payload.to_vec()), 16).unwrap();
    }
    assert!(sub.is_attached());
    assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
    ctx.remove(2, 3).unwrap();
}

#[test]
fn remove_unlinks_the_ring_file() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let p = ctx.publisher(4, 0).unwrap();
    let path = p.ring().path().to_path_buf();
    assert!(path.exists());
    ctx.remove(4, 0).unwrap();
    assert!(!path.exists());
    ctx.remove(4, 0).unwrap(); // removing an absent ring is fine
}

#[derive(rkyv::Archive, rkyv::Serialize, Debug, PartialEq)]
struct Quote {
    instrument: u32,
    price: i64,
    venue: String,
    levels: Vec<u32>,
}

const QUOTE: u16 = 11;

fn quote(i: u32) -> Quote {
    Quote {
        instrument: i,
        price: -(i as i64) * 100,
        venue: format!("venue-{i}"),
        levels: (0..i % 5).collect(),
    }
}

#[test]
fn typed_round_trip_both_publish_paths() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let mut sub = TypedSubscriber::<Quote>::new(ctx.subscriber(5, 0), QUOTE);
    let mut p = TypedPublisher::<Quote>::new(ctx.publisher(5, 0).unwrap(), QUOTE);
    for i in 0..20 {
        if i % 2 == 0 {
            p.publish(&quote(i)).unwrap();
        } else {
            p.publish_via_scratch(&quote(i)).unwrap();
        }
    }
    let mut seen = 0u32;
    let deadline = Instant::now() + WAIT_MAX;
    while seen < 20 && Instant::now() < deadline {
        sub.poll(
            |r, q| {
                let want = quote(seen);
                assert_eq!(r.type_id, QUOTE);
                assert_eq!(q.instrument, want.instrument);
                assert_eq!(q.price, want.price);
                assert_eq!(q.venue, want.venue);
                assert_eq!(q.levels.len(), want.levels.len());
                seen += 1;
            },
            8,
        )
        .unwrap();
    }
    assert_eq!(seen, 20);
    let stats = sub.stats();
    assert_eq!(stats.delivered, 20);
    assert_eq!(stats.invalid, 0);
    assert_eq!(stats.realigned, 0, "shm-ring payloads are 16-byte aligned");
    ctx.remove(5, 0).unwrap();
}

#[test]
fn corrupt_typed_payload_is_counted_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let mut sub = TypedSubscriber::<Quote>::new(ctx.subscriber(6, 0), QUOTE);
    let mut p = TypedPublisher::<Quote>::new(ctx.publisher(6, 0).unwrap(), QUOTE);
    // Bytes that claim to be a Quote but are not; an empty one; another type.
    p.publisher().offer_typed(QUOTE, &[0xff; 48]).unwrap();
    p.publisher().offer_typed(QUOTE, &[]).unwrap();
    p.publisher().offer_typed(QUOTE + 1, b"other type").unwrap();
    p.publish(&quote(3)).unwrap();
    let mut delivered = Vec::new();
    let deadline = Instant::now() + WAIT_MAX;
    while delivered.is_empty() && Instant::now() < deadline {
        sub.poll(|_, q| delivered.push(q.instrument.to_native()), 8)
            .unwrap();
    }
    assert_eq!(delivered, vec![3]);
    let stats = sub.stats();
    assert_eq!(stats.invalid, 2);
    assert_eq!(stats.wrong_type, 1);
    assert_eq!(stats.delivered, 1);
    ctx.remove(6, 0).unwrap();
}

#[test]
fn parked_subscriber_stays_alive_with_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context::builder()
        .dir(dir.path())
        .capacity_bytes(1 << 16)
        .liveness_timeout_ns(50_000_000)
        .build();
    let mut p = ctx.publisher(8, 0).unwrap();
    let mut sub = ctx.subscriber(8, 0);
    assert!(sub.try_attach(true).unwrap());
    // Idle (parked, no polls) for several liveness timeouts.
    let mut idle = IdleStrategy::adaptive();
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        sub.idle(&mut idle, 0);
    }
    assert!(idle.is_parking());
    p.offer(b"still here").unwrap();
    let mut got = 0;
    let deadline = Instant::now() + WAIT_MAX;
    while got == 0 && Instant::now() < deadline {
        got += sub
            .poll(|r| assert_eq!(r.payload, b"still here"), 4)
            .unwrap();
    }
    assert_eq!(got, 1);
    ctx.remove(8, 0).unwrap();
}

/// The main demo, end to end (debug build, 1 s): two processes, figures
/// printed, ring file removed.
#[test]
fn shm_demo_example_runs_and_cleans_up() {
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let demo = examples.join("shm_demo");
    assert!(
        demo.exists(),
        "cargo test builds examples: {}",
        demo.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&demo)
        .args(["--seconds", "1", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("p99.9"), "{stdout}");
    assert!(stdout.contains("M msgs/s"), "{stdout}");
    assert!(stdout.contains("lost 0"), "{stdout}");
    let left: Vec<_> = walk(dir.path());
    assert!(left.is_empty(), "demo left files: {left:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn lossy_subscriber_counts_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context::builder()
        .dir(dir.path())
        .capacity_bytes(1 << 12)
        .mode(Mode::Lossy)
        .build();
    let mut p = ctx.publisher(10, 0).unwrap();
    let mut sub = ctx.subscriber(10, 0);
    assert!(sub.try_attach(true).unwrap());
    let mut got = Vec::new();
    let mut record =
        |r: &sdk::Record<'_>| got.push(u64::from_le_bytes(r.payload.try_into().unwrap()));
    // Many laps of a 4 KiB ring while the subscriber does not poll: it is
    // overrun, resynchronises, and counts what it missed.
    for i in 0..2_000u64 {
        p.offer(&i.to_le_bytes()).unwrap();
    }
    for _ in 0..4 {
        sub.poll(&mut record, 64).unwrap();
    }
    for i in 2_000..2_010u64 {
        p.offer(&i.to_le_bytes()).unwrap();
    }
    let deadline = Instant::now() + WAIT_MAX;
    while Instant::now() < deadline && sub.poll(&mut record, 64).unwrap() > 0 {}
    assert!(
        got.ends_with(&(2_000..2_010).collect::<Vec<_>>()),
        "{got:?}"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(sub.lost_records() > 0);
    assert_eq!(
        sub.lost_records() + got.len() as u64,
        2_010,
        "every record is delivered or counted lost"
    );
    ctx.remove(10, 0).unwrap();
}

#[test]
fn silent_subscriber_is_evicted_and_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context::builder()
        .dir(dir.path())
        .capacity_bytes(1 << 12)
        .liveness_timeout_ns(20_000_000)
        .build();
    let mut p = ctx.publisher(12, 0).unwrap();
    let mut sub = ctx.subscriber(12, 0);
    assert!(sub.try_attach(true).unwrap());
    // The subscriber neither polls nor calls keepalive: once its heartbeat is
    // older than the liveness timeout, a back-pressured publisher evicts it.
    let deadline = Instant::now() + WAIT_MAX;
    let mut sent = 0u32;
    while sent < 1_000 && Instant::now() < deadline {
        match p.offer(&[1u8; 100]) {
            Ok(_) => sent += 1,
            Err(OfferError::BackPressured) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("offer: {e}"),
        }
    }
    assert_eq!(sent, 1_000, "the silent subscriber stopped back-pressuring");
    let err = sub.poll(|_| {}, 16).unwrap_err();
    assert!(
        matches!(
            err,
            sdk::SubscriberPollError::Ring {
                source: sdk::PollError::Evicted,
                ..
            }
        ),
        "{err}"
    );
    ctx.remove(12, 0).unwrap();
}
