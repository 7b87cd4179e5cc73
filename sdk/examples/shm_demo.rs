//! Two-process shared-memory pub/sub demo: the main job of `scripts/demo.sh`.
//!
//!     cargo run --release -p sdk --example shm_demo [-- --seconds 5] [--dir DIR]
//!
//! This process creates a ring (hugetlbfs when the pool has room, else /dev/shm),
//! re-spawns itself as the subscriber process (pinned to core 1; the publisher
//! runs on core 0) and publishes for a bounded time in two halves:
//!
//! 1. latency: one 64-byte message every 5 us (paced, so queueing does not
//!    hide the latency); each record carries the ring-clock time its claim
//!    was made, and the subscriber subtracts it from its own ring-clock
//!    reading (both processes use the calibration stored in the ring header);
//! 2. throughput: 32-byte messages as fast as the ring takes them.
//!
//! The subscriber prints messages/s and p50/p99/p99.9/max latency
//! (hdrhistogram); the publisher then removes the ring file.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sdk::{clock::now_ns, Context, Mode, OfferError, PublisherKind, StartAt};

const THROUGHPUT: u16 = 1; // record type ids
const LATENCY: u16 = 2;
const END: u16 = 3;
const THROUGHPUT_MSG_BYTES: usize = 32;
const LATENCY_MSG_BYTES: usize = 64;
const PACE_NS: u64 = 5_000;
const EMPTY_POLL_PAUSES: usize = 128;
/// Paced messages not recorded (caches and the ring's pages warm up).
const WARMUP_MSGS: u64 = 10_000;
const RING_CAPACITY_BYTES: u64 = 8 << 20;
const SECONDS_MAX: u64 = 3_600;
/// The subscriber gives up this long after the planned end.
const GRACE_S: u64 = 10;

struct Args {
    seconds: u64,
    dir: Option<PathBuf>,
    subscriber: Option<u32>, // stream id, when this process is the subscriber
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 5,
        dir: None,
        subscriber: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
                if !(1..=SECONDS_MAX).contains(&args.seconds) {
                    return Err(format!("--seconds must be 1..={SECONDS_MAX}"));
                }
            }
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            "--subscriber" => {
                args.subscriber = Some(value()?.parse().map_err(|e| format!("--subscriber: {e}"))?)
            }
            "-h" | "--help" => {
                println!("usage: shm_demo [--seconds N (default 5)] [--dir RING_DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn context(dir: &Option<PathBuf>) -> Context {
    let mut b = Context::builder()
        .capacity_bytes(RING_CAPACITY_BYTES)
        .mode(Mode::Reliable) // the publisher waits for the subscriber: nothing lost
        .publisher_kind(PublisherKind::Exclusive) // one publisher: no CAS on claim
        .start_at(StartAt::Earliest);
    if let Some(d) = dir {
        b = b.dir(d);
    }
    b.build()
}

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("note: could not pin to core {core}; running unpinned");
    }
}

fn main() {
    let result = parse_args().and_then(|args| match args.subscriber {
        Some(stream) => run_subscriber(&args, stream),
        None => run_publisher(&args),
    });
    if let Err(e) = result {
        eprintln!("shm_demo: {e}");
        std::process::exit(1);
    }
}

/// Kills and reaps the subscriber process on every exit path.
struct ChildGuard(Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn run_publisher(args: &Args) -> Result<(), String> {
    pin(0);
    let stream = std::process::id();
    let ctx = context(&args.dir);
    let mut publisher = ctx.publisher(stream, 0).map_err(|e| e.to_string())?;
    let ring = publisher.ring().clone();
    // Remove the ring file however this function ends.
    struct Unlink(sdk::Ring);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = self.0.unlink();
        }
    }
    let _unlink = Unlink(ring.clone());
    println!(
        "ring {} ({} MiB) on {}",
        ring.path().display(),
        ring.capacity_bytes() >> 20,
        publisher.backing_name()
    );

    let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.args(["--subscriber", &stream.to_string()])
        .args(["--seconds", &args.seconds.to_string()]);
    if let Some(d) = &args.dir {
        cmd.arg("--dir").arg(d);
    }
    let mut child = ChildGuard(
        cmd.stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the subscriber process: {e}"))?,
    );
    let mut out = BufReader::new(child.0.stdout.take().ok_or("no child stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!("subscriber did not start: {line:?}"));
    }

    let half = Duration::from_millis(args.seconds * 500);
    let mut buf = [0u8; LATENCY_MSG_BYTES];
    // 1. Latency, first (no backlog from the throughput phase): paced
    //    64-byte messages, stamped by claim().
    let (mut next, start) = (now_ns(), Instant::now());
    let mut paced = 0u64;
    while start.elapsed() < half {
        next += PACE_NS;
        while now_ns() < next {
            std::hint::spin_loop();
        }
        buf[..8].copy_from_slice(&paced.to_le_bytes());
        publish(&mut publisher, LATENCY, &buf)?;
        paced += 1;
    }
    // 2. Throughput: 32-byte messages, back-pressure retried by spinning.
    let (mut sent, start) = (0u64, Instant::now());
    while start.elapsed() < half {
        for _ in 0..1024 {
            buf[..8].copy_from_slice(&sent.to_le_bytes());
            publish(&mut publisher, THROUGHPUT, &buf[..THROUGHPUT_MSG_BYTES])?;
            sent += 1;
        }
    }
    let pub_rate = sent as f64 / start.elapsed().as_secs_f64();
    publish(&mut publisher, END, &[])?;
    println!("publisher: {sent} throughput messages ({pub_rate:.0} msgs/s offered), {paced} paced messages");

    for l in out.lines() {
        println!("{}", l.map_err(|e| e.to_string())?);
    }
    let status = child.0.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("subscriber exited with {status}"));
    }
    println!("removed {}", ring.path().display());
    Ok(())
}

/// Claims (which stamps the record with the ring clock), writes, commits; spins while the ring is back-pressured (bounded).
fn publish(p: &mut sdk::Publisher, ty: u16, bytes: &[u8]) -> Result<(), String> {
    let mut deadline = None; // read the clock only when back-pressured
    loop {
        match p.claim(bytes.len()) {
            Ok(mut c) => {
                c.buffer().copy_from_slice(bytes);
                c.set_type(ty);
                return c.commit().map(|_| ()).map_err(|e| e.to_string());
            }
            Err(OfferError::BackPressured)
                if Instant::now()
                    < *deadline
                        .get_or_insert_with(|| Instant::now() + Duration::from_secs(GRACE_S)) =>
            {
                std::hint::spin_loop()
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn run_subscriber(args: &Args, stream: u32) -> Result<(), String> {
    pin(1);
    let mut sub = context(&args.dir).subscriber(stream, 0);
    if !sub.try_attach(true).map_err(|e| e.to_string())? {
        return Err(format!("ring of stream {stream} not found"));
    }
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs(args.seconds + GRACE_S);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| e.to_string())?;
    let (mut count, mut first_ns, mut last_ns, mut done) = (0u64, 0u64, 0u64, false);
    let mut warmup = WARMUP_MSGS;
    while !done {
        let n = sub
            .poll(
                |r| match r.type_id {
                    THROUGHPUT => {
                        if count == 0 {
                            first_ns = now_ns();
                        }
                        count += 1;
                        last_ns = now_ns();
                    }
                    LATENCY => {
                        let latency_ns = now_ns().saturating_sub(r.timestamp_ns).max(1);
                        if warmup == 0 {
                            let _ = hist.record(latency_ns);
                        } else {
                            warmup -= 1;
                        }
                    }
                    _ => done = true,
                },
                256,
            )
            .map_err(|e| e.to_string())?;
        if n == 0 {
            if count > 0 {
                // Throughput phase: batch polling. Pause a little after an
                // empty poll rather than contend for the line being written.
                for _ in 0..EMPTY_POLL_PAUSES {
                    std::hint::spin_loop();
                }
            }
            if Instant::now() > deadline {
                return Err("no END record before the deadline".into());
            }
        }
    }
    let secs = (last_ns - first_ns) as f64 / 1e9;
    println!(
        "subscriber: {count} x {THROUGHPUT_MSG_BYTES}-byte messages in {secs:.2} s = {:.1} M msgs/s, lost {}",
        count as f64 / secs.max(1e-9) / 1e6,
        sub.lost_records()
    );
    println!(
        "latency ({} x {LATENCY_MSG_BYTES}-byte messages after {WARMUP_MSGS} warm-up, one every {PACE_NS} ns, publisher core 0 -> subscriber core 1):",
        hist.len()
    );
    println!(
        "  p50 {} ns  p99 {} ns  p99.9 {} ns  max {} ns",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
    Ok(())
}
