//! `ms-bench shm`: shared-memory pub/sub, ours against same-run peers.
//!
//! What one run measures (rounds interleaved: ours, iceoryx2, crossbeam, ours, ...):
//! - cross-process one-way latency of 64-byte messages: a paced publisher process
//!   (one message every `PACE_NS`, so we measure latency, not queueing) pinned to
//!   core 0, the subscriber (this process, a thread pinned to core 1) busy-polls.
//!   The publisher stamps each message with `shm_ring::clock::now_ns()` before
//!   the publish call (ours: the record timestamp `claim()` takes; peers: a
//!   payload field written before `send_copy`/`push`); the subscriber subtracts
//!   it from its own `now_ns()` on receipt (same time base in both processes).
//!   Warm-up messages are not recorded. All three latency runs bound the
//!   messages in flight alike (`LATENCY_QUEUE_MSGS`: our ring's lap, iceoryx2's
//!   subscriber buffer, crossbeam's queue), and each round prints how often the
//!   subscriber was off its core for a millisecond or more (`Stalls`).
//! - cross-process throughput of 32-byte messages, 1 publisher -> 1 subscriber,
//!   exclusive publisher publishing with `shm_ring::Publisher::offer_batch`
//!   (64 records per call), batch polling (up to 256 records per poll, a short
//!   pause after an empty poll); counted from the first to the last message
//!   seen by the subscriber.
//! - iceoryx2 0.10.0 cross-process (lossless: safe overflow off, publisher retries
//!   until delivered): the same latency method; messages sent vs received are printed.
//! - crossbeam-queue `ArrayQueue` in one process, two threads pinned to cores 0/1:
//!   throughput of 32-byte messages and, as context, paced one-way latency.
//! - the memory of an idle stream handle (no ring mapped yet) and the wake-up cost
//!   of the adaptive idle strategy (latency of a message after a long idle gap,
//!   and the CPU the parked subscriber used meanwhile).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;
use serde_json::json;
use shm_ring::clock::now_ns;

use crate::report::{self, Latency, Spread};
use crate::SuiteArgs;

/// Gap between two messages of a latency run: long enough that the subscriber
/// drains each message before the next one is published.
const PACE_NS: u64 = 5_000;
/// The publisher's core and the subscriber's core.
const CORE_PUB: usize = 0;
const CORE_SUB: usize = 1;
/// Payload sizes the suite is defined for.
const LATENCY_MSG_BYTES: usize = 64;
const THROUGHPUT_MSG_BYTES: usize = 32;
/// Ring size of the throughput run (power of two).
const RING_CAPACITY_BYTES: u64 = 8 << 20;
/// Ring size of the latency runs. It bounds the messages in flight (see
/// `LATENCY_QUEUE_MSGS`), and the warm-up laps it, so first-touch page faults
/// of the ring are not in the figures.
const LATENCY_RING_CAPACITY_BYTES: u64 = 128 << 10;
/// Records of a 64-byte payload per lap of the latency ring (32-byte header + payload).
const LATENCY_RING_LAP_MSGS: u64 = LATENCY_RING_CAPACITY_BYTES / (32 + LATENCY_MSG_BYTES as u64);
const _: () = assert!(
    LATENCY_RING_LAP_MSGS < 15_000,
    "the quick warm-up laps the latency ring"
);
/// Messages in flight in every latency run, the same for all three: ours (one
/// lap of the latency ring), iceoryx2 (its subscriber buffer) and crossbeam
/// (its queue). A subscriber that is off its core delays at most this many
/// messages; then each publisher is back-pressured and stamps the messages it
/// sends after the stall afresh. A deeper queue records more of the same stall:
/// with 1 MiB against iceoryx2's 1024 samples, one 25 ms stall put 5000 of our
/// messages in the latency tail and only 1025 of iceoryx2's (docs/BENCHMARKS.md).
const LATENCY_QUEUE_MSGS: usize = LATENCY_RING_LAP_MSGS as usize;
/// A subscriber loop iteration that starts this long after the previous one is
/// counted as a stall (the thread was off its core: preempted, or the vCPU was).
const SUBSCRIBER_STALL_NS_MIN: u64 = 1_000_000;
/// Records per poll call in the throughput run.
const POLL_BATCH_MAX: usize = 256;
/// Records per `Publisher::offer_batch` call in the throughput run (one clock
/// read and one tail store per batch, like Aeron's batched throughput tests).
const PUBLISH_BATCH_MAX: usize = 64;
/// crossbeam ArrayQueue depth of the throughput run (messages).
const CROSSBEAM_CAPACITY: usize = 65536;
/// Every child process and every receive loop gives up after this long.
const RUN_TIMEOUT_S: u64 = 60;
/// Gap before each message of the wake-up measurement (the subscriber parks).
const WAKEUP_GAP_MS: u64 = 200;
const WAKEUP_GAP_MS_QUICK: u64 = 100;

type Msg64 = [u64; LATENCY_MSG_BYTES / 8];
type Msg32 = [u64; THROUGHPUT_MSG_BYTES / 8];

/// Run lengths.
#[derive(Clone, Copy)]
struct Plan {
    quick: bool,
    rounds: usize,
    latency_msgs: u64,
    warmup_msgs: u64,
    throughput_msgs: u64,
    wakeup_msgs: u64,
    wakeup_gap_ms: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rounds: 3,
                latency_msgs: 60_000,
                warmup_msgs: 15_000,
                throughput_msgs: 5_000_000,
                wakeup_msgs: 12,
                wakeup_gap_ms: WAKEUP_GAP_MS_QUICK,
            }
        } else {
            Self {
                quick,
                rounds: 3,
                latency_msgs: 400_000,
                warmup_msgs: 20_000,
                throughput_msgs: 40_000_000,
                wakeup_msgs: 30,
                wakeup_gap_ms: WAKEUP_GAP_MS,
            }
        }
    }
}

/// A child process that is killed (by its PID) and reaped on every exit path.
struct ChildGuard {
    child: Child,
    role: String,
}

impl ChildGuard {
    /// Starts `ms-bench child shm ROLE CLOCK_RING ARGS..`.
    fn spawn(role: &str, args: &[String]) -> anyhow::Result<Self> {
        let clock = CLOCK_RING
            .get()
            .context("the clock ring is created before any child")?;
        let mut all = vec![clock.name.clone()];
        all.extend_from_slice(args);
        let child = report::spawn_child("shm", role, &all)
            .with_context(|| format!("spawning the {role} child"))?;
        Ok(Self {
            child,
            role: role.to_string(),
        })
    }

    /// Reads one line the child prints (its readiness or result line).
    fn read_line(&mut self) -> anyhow::Result<String> {
        let out = self
            .child
            .stdout
            .as_mut()
            .context("child stdout is not piped")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        Ok(line.trim().to_string())
    }

    /// Waits (bounded) for a clean exit; a child still running is killed.
    fn finish(mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(RUN_TIMEOUT_S);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("child {} exited with {status}", self.role);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("child {} did not exit within {RUN_TIMEOUT_S} s", self.role);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A tiny ring whose only job is to carry this process's clock calibration
/// to the children: each child opens it before reading the clock, so every
/// cross-process timestamp (ours and iceoryx2's) is on exactly one time base.
struct ClockRing {
    name: String,
    ring: shm_ring::Ring,
}

static CLOCK_RING: std::sync::OnceLock<ClockRing> = std::sync::OnceLock::new();

fn clock_ring() -> anyhow::Result<&'static ClockRing> {
    if let Some(c) = CLOCK_RING.get() {
        return Ok(c);
    }
    let name = unique("clock");
    let cfg = shm_ring::RingConfig {
        capacity_bytes: shm_ring::RING_CAPACITY_MIN,
        backing: shm_ring::Backing::DevShm,
        ..Default::default()
    };
    let ring = shm_ring::Ring::create(&name, &cfg)?;
    Ok(CLOCK_RING.get_or_init(|| ClockRing { name, ring }))
}

/// Runs `f` on a thread pinned to `core` (so this process's main thread keeps
/// its affinity for the suites that follow).
fn on_core<T: Send>(core: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            report::pin_current_thread(core);
            f()
        })
        .join()
        .expect("measurement thread panicked")
    })
}

/// A timeout checked cheaply from a busy-poll loop: the clock is read once
/// per 4096 checks, so the latency loops (ours and iceoryx2's alike) poll
/// again right away.
struct Deadline {
    at: Instant,
    checks: u32,
}

impl Deadline {
    fn in_secs(s: u64) -> Self {
        Self {
            at: Instant::now() + Duration::from_secs(s),
            checks: 0,
        }
    }
    fn passed(&mut self) -> bool {
        self.checks = self.checks.wrapping_add(1);
        self.checks.is_multiple_of(4096) && Instant::now() > self.at
    }
}

/// Times the subscriber was off its core during a latency run, seen from its
/// own loop: an iteration that starts `SUBSCRIBER_STALL_NS_MIN` or more after
/// the previous one. Every message published meanwhile waits for it, so these
/// explain a millisecond tail (docs/BENCHMARKS.md, "Latency anomaly").
#[derive(Clone, Copy, Default)]
struct Stalls {
    last_ns: u64,
    count: u32,
    total_ns: u64,
    max_ns: u64,
}

impl Stalls {
    /// One loop iteration at `now`.
    #[inline(always)]
    fn tick(&mut self, now: u64) {
        let gap = now.saturating_sub(self.last_ns);
        if self.last_ns != 0 && gap >= SUBSCRIBER_STALL_NS_MIN {
            self.count += 1;
            self.total_ns += gap;
            self.max_ns = self.max_ns.max(gap);
        }
        self.last_ns = now;
    }

    fn line(&self) -> String {
        format!(
            "  stalls >= {} ms: {} ({:.1} ms, longest {:.1} ms)",
            SUBSCRIBER_STALL_NS_MIN / 1_000_000,
            self.count,
            self.total_ns as f64 / 1e6,
            self.max_ns as f64 / 1e6
        )
    }
}

/// Pause instructions our throughput subscriber spins after an empty poll
/// (batch polling), so it does not fight the publisher for the descriptor
/// and record lines the publisher is writing; the 8 MiB ring absorbs the wait
/// (tens of microseconds), and the time spent pausing counts in the figure.
/// Measured here with offer_batch (64 per call), same machine and load:
/// 8 pauses ~15-27 M msgs/s, 32 ~29-40 M, 128 ~61-64 M, 512 ~81-87 M,
/// 2048 ~86-92 M.
const EMPTY_POLL_PAUSES: usize = 2048;

fn empty_poll_pause() {
    for _ in 0..EMPTY_POLL_PAUSES {
        std::hint::spin_loop();
    }
}

/// Waits until `now_ns() >= t`: sleeps through long gaps, spins the last 100 us.
fn spin_until(t: u64) {
    const SPIN_NS: u64 = 100_000;
    let now = now_ns();
    if t > now + 2 * SPIN_NS {
        std::thread::sleep(Duration::from_nanos(t - now - SPIN_NS));
    }
    while now_ns() < t {
        std::hint::spin_loop();
    }
}

fn msgs_per_s(count: u64, ns: u64) -> f64 {
    if ns == 0 {
        return 0.0;
    }
    count as f64 * 1e9 / ns as f64
}

fn unique(tag: &str) -> String {
    format!(
        "msbench-{tag}-{}-{}",
        std::process::id(),
        now_ns() % 1_000_000_000
    )
}

fn parse<T: std::str::FromStr>(rest: &[String], i: usize, what: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    let s = rest
        .get(i)
        .with_context(|| format!("missing argument {i} ({what})"))?;
    s.parse::<T>()
        .map_err(|e| anyhow::anyhow!("argument {i} ({what}) = {s:?}: {e}"))
}

// ---------------------------------------------------------------------------
// Ours: sdk Publisher / Subscriber over shm-ring.
// ---------------------------------------------------------------------------

fn ours_context(capacity_bytes: u64) -> sdk::Context {
    sdk::Context::builder()
        .capacity_bytes(capacity_bytes)
        .mode(sdk::Mode::Reliable)
        .publisher_kind(sdk::PublisherKind::Exclusive)
        .build()
}

/// Creates the ring of `stream` and a subscriber attached to it before any
/// publisher exists (so reliable mode back-pressures from the first record).
fn ours_setup(stream: u32, capacity_bytes: u64) -> anyhow::Result<(sdk::Ring, sdk::Subscriber)> {
    let ctx = ours_context(capacity_bytes);
    let ring = ctx.create_ring(stream, 0)?;
    let mut sub = ctx.subscriber(stream, 0);
    if !sub.try_attach(true)? {
        bail!("ring of stream {stream} vanished right after creation");
    }
    Ok((ring, sub))
}

/// Subscriber side of a paced latency run: the histogram of one-way latencies,
/// the subscriber's stalls and the backing the ring used.
fn ours_latency(
    plan: &Plan,
    stream: u32,
) -> anyhow::Result<(Histogram<u64>, Stalls, &'static str)> {
    let (ring, mut sub) = ours_setup(stream, LATENCY_RING_CAPACITY_BYTES)?;
    let backing = match ring.backing() {
        sdk::BackingKind::Hugetlbfs => "hugetlbfs",
        sdk::BackingKind::DevShm => "/dev/shm",
    };
    let child = ChildGuard::spawn(
        "ours-pub",
        &[
            stream.to_string(),
            plan.latency_msgs.to_string(),
            PACE_NS.to_string(),
            LATENCY_MSG_BYTES.to_string(),
        ],
    )?;
    let mut h = report::latency_histogram();
    let mut stalls = Stalls::default();
    let warmup = plan.warmup_msgs;
    let total = plan.latency_msgs;
    let res = on_core(CORE_SUB, || -> anyhow::Result<()> {
        let mut deadline = Deadline::in_secs(RUN_TIMEOUT_S);
        let mut seen = 0u64;
        while seen < total {
            if seen >= warmup {
                stalls.tick(now_ns());
            }
            let n = sub.poll(
                |r| {
                    let now = now_ns();
                    if seen >= warmup {
                        let _ = h.record(now.saturating_sub(r.timestamp_ns).max(1));
                    }
                    seen += 1;
                },
                16,
            )?;
            if n == 0 && deadline.passed() {
                bail!("ours latency: received {seen} of {total} before the timeout");
            }
        }
        Ok(())
    });
    let fin = child.finish();
    ring.unlink()?;
    res?;
    fin?;
    Ok((h, stalls, backing))
}

/// Subscriber side of the throughput run: messages per second, counted from
/// the end of the first batch to the last record.
fn ours_throughput(plan: &Plan, stream: u32) -> anyhow::Result<f64> {
    let (ring, mut sub) = ours_setup(stream, RING_CAPACITY_BYTES)?;
    let child = ChildGuard::spawn(
        "ours-pub-batch",
        &[
            stream.to_string(),
            plan.throughput_msgs.to_string(),
            THROUGHPUT_MSG_BYTES.to_string(),
        ],
    )?;
    let total = plan.throughput_msgs;
    let res = on_core(CORE_SUB, || -> anyhow::Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(RUN_TIMEOUT_S);
        let mut seen = 0u64;
        let mut sum = 0u64;
        let mut first_ns = 0u64;
        let mut first_batch = 0u64;
        while seen < total {
            let n = sub.poll(
                |r| {
                    sum = sum.wrapping_add(u64::from(r.payload[0]));
                    seen += 1;
                },
                POLL_BATCH_MAX,
            )?;
            if n > 0 && first_ns == 0 {
                first_ns = now_ns();
                first_batch = n as u64;
            } else if n == 0 {
                empty_poll_pause();
                if Instant::now() > deadline {
                    bail!("ours throughput: received {seen} of {total} before the timeout");
                }
            }
        }
        std::hint::black_box(sum);
        Ok(msgs_per_s(total - first_batch, now_ns() - first_ns))
    });
    let fin = child.finish();
    ring.unlink()?;
    let r = res?;
    fin?;
    Ok(r)
}

/// Publisher child: `ours-pub STREAM COUNT PACE_NS SIZE`.
fn child_ours_pub(rest: &[String]) -> anyhow::Result<()> {
    let stream: u32 = parse(rest, 0, "stream")?;
    let count: u64 = parse(rest, 1, "count")?;
    let pace_ns: u64 = parse(rest, 2, "pace_ns")?;
    let size: usize = parse(rest, 3, "size")?;
    report::pin_current_thread(CORE_PUB);
    let ctx = ours_context(RING_CAPACITY_BYTES);
    let deadline = Instant::now() + Duration::from_secs(RUN_TIMEOUT_S);
    let mut publisher = open_publisher_retrying(&ctx, stream, deadline)?;
    let mut next = now_ns();
    let mut payload = vec![0u8; size];
    for i in 0..count {
        if pace_ns > 0 {
            next += pace_ns;
            spin_until(next);
        }
        payload[..8].copy_from_slice(&i.to_le_bytes());
        loop {
            match publisher.claim(size) {
                Ok(mut c) => {
                    // The record's timestamp is the ring clock read by claim(),
                    // before the payload is written: like the peers' stamps,
                    // it includes the whole publish path.
                    c.buffer().copy_from_slice(&payload);
                    c.commit()?;
                    break;
                }
                Err(shm_ring::OfferError::BackPressured) => {
                    if Instant::now() > deadline {
                        bail!("ours-pub: back-pressured past the timeout at message {i}");
                    }
                    std::hint::spin_loop();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Throughput publisher child: `ours-pub-batch STREAM COUNT SIZE`. Publishes
/// COUNT records of SIZE bytes with `shm_ring::Publisher::offer_batch`,
/// PUBLISH_BATCH_MAX per call (the sdk wraps the same ring; its Publisher has
/// no batch call, so this attaches shm-ring's exclusive publisher directly).
fn child_ours_pub_batch(rest: &[String]) -> anyhow::Result<()> {
    let stream: u32 = parse(rest, 0, "stream")?;
    let count: u64 = parse(rest, 1, "count")?;
    let size: usize = parse(rest, 2, "size")?;
    if size != THROUGHPUT_MSG_BYTES {
        bail!("ours-pub-batch: size {size} is not {THROUGHPUT_MSG_BYTES}");
    }
    report::pin_current_thread(CORE_PUB);
    let ctx = ours_context(RING_CAPACITY_BYTES);
    let deadline = Instant::now() + Duration::from_secs(RUN_TIMEOUT_S);
    let ring = ctx.create_ring(stream, 0)?;
    let mut publisher = loop {
        match ring.publisher() {
            Ok(p) => break p,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
    };
    let mut msgs = vec![[0u8; THROUGHPUT_MSG_BYTES]; PUBLISH_BATCH_MAX];
    let mut sent = 0u64;
    while sent < count {
        let n = (count - sent).min(PUBLISH_BATCH_MAX as u64) as usize;
        for (k, m) in msgs[..n].iter_mut().enumerate() {
            m[..8].copy_from_slice(&(sent + k as u64).to_le_bytes());
        }
        let refs: [&[u8]; PUBLISH_BATCH_MAX] = std::array::from_fn(|k| &msgs[k][..]);
        let mut off = 0usize;
        while off < n {
            match publisher.offer_batch(0, &refs[off..n]) {
                Ok((_, k)) => off += k,
                Err(shm_ring::OfferError::BackPressured) => {
                    if Instant::now() > deadline {
                        bail!("ours-pub-batch: back-pressured past the timeout at message {sent}");
                    }
                    std::hint::spin_loop();
                }
                Err(e) => return Err(e.into()),
            }
        }
        sent += n as u64;
    }
    Ok(())
}

fn open_publisher_retrying(
    ctx: &sdk::Context,
    stream: u32,
    deadline: Instant,
) -> anyhow::Result<sdk::Publisher> {
    loop {
        match ctx.publisher(stream, 0) {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

// ---------------------------------------------------------------------------
// Adaptive idle strategy: wake-up cost after a long idle gap.
// ---------------------------------------------------------------------------

/// Returns the wake-up latencies and the fraction of a core the subscriber
/// thread used over the run (from /proc/thread-self/schedstat).
fn ours_wakeup(plan: &Plan, stream: u32) -> anyhow::Result<(Histogram<u64>, f64)> {
    let (ring, mut sub) = ours_setup(stream, LATENCY_RING_CAPACITY_BYTES)?;
    let child = ChildGuard::spawn(
        "ours-pub",
        &[
            stream.to_string(),
            plan.wakeup_msgs.to_string(),
            (plan.wakeup_gap_ms * 1_000_000).to_string(),
            LATENCY_MSG_BYTES.to_string(),
        ],
    )?;
    let mut h = report::latency_histogram();
    let total = plan.wakeup_msgs;
    let res = on_core(CORE_SUB, || -> anyhow::Result<f64> {
        let mut idle = sdk::IdleStrategy::adaptive();
        let deadline = Instant::now() + Duration::from_secs(RUN_TIMEOUT_S);
        let (cpu0, wall0) = (thread_cpu_ns()?, Instant::now());
        let mut seen = 0u64;
        while seen < total {
            let n = sub.poll(
                |r| {
                    let _ = h.record(now_ns().saturating_sub(r.timestamp_ns).max(1));
                    seen += 1;
                },
                16,
            )?;
            sub.idle(&mut idle, n);
            if Instant::now() > deadline {
                bail!("wake-up run: received {seen} of {total} before the timeout");
            }
        }
        let wall = wall0.elapsed().as_nanos() as f64;
        Ok((thread_cpu_ns()? - cpu0) as f64 / wall.max(1.0))
    });
    let fin = child.finish();
    ring.unlink()?;
    let cpu = res?;
    fin?;
    Ok((h, cpu))
}

/// CPU time of the calling thread, nanoseconds (first field of schedstat).
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    Ok(s.split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()?)
}

/// Memory of one idle stream handle (a subscriber whose ring does not exist
/// yet, after a poll found nothing): (size_of, size_of + owned heap bytes).
fn idle_stream_bytes() -> anyhow::Result<(usize, usize)> {
    let ctx = ours_context(RING_CAPACITY_BYTES);
    let mut sub = ctx.subscriber(u32::MAX, u16::MAX); // the longest ring name
    let polled = sub.poll(|_| {}, 1)?;
    if polled != 0 || sub.is_attached() {
        bail!(
            "a ring named {} exists; the idle-handle figure needs it absent",
            sub.ring_name()
        );
    }
    Ok((
        std::mem::size_of::<sdk::Subscriber>(),
        sub.footprint_bytes(),
    ))
}

// ---------------------------------------------------------------------------
// Peer: iceoryx2 0.10.0, cross-process, lossless.
// ---------------------------------------------------------------------------

mod iox {
    use iceoryx2::prelude::*;

    pub type Service = iceoryx2::service::port_factory::publish_subscribe::PortFactory<
        ipc::Service,
        super::Msg64,
        (),
    >;

    pub fn node() -> anyhow::Result<Node<ipc::Service>> {
        set_log_level(LogLevel::Error);
        NodeBuilder::new()
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()
            .map_err(|e| anyhow::anyhow!("iceoryx2 node: {e:?}"))
    }

    pub fn service(node: &Node<ipc::Service>, name: &str) -> anyhow::Result<Service> {
        let name: ServiceName = name
            .try_into()
            .map_err(|e| anyhow::anyhow!("iceoryx2 service name: {e:?}"))?;
        node.service_builder(&name)
            .publish_subscribe::<super::Msg64>()
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(super::LATENCY_QUEUE_MSGS)
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(1)
            .open_or_create()
            .map_err(|e| anyhow::anyhow!("iceoryx2 service: {e:?}"))
    }
}

/// Returns (latency histogram, subscriber stalls, sent, received). The child is spawned from
/// this (unpinned) thread so it can pin itself to the other core; it waits
/// for the subscriber. iceoryx2's ipc ports are not `Send`, so they live on the
/// pinned measurement thread.
fn iox_latency(plan: &Plan) -> anyhow::Result<(Histogram<u64>, Stalls, u64, u64)> {
    let name = unique("iox");
    let mut child = ChildGuard::spawn(
        "iox-pub",
        &[
            name.clone(),
            plan.latency_msgs.to_string(),
            PACE_NS.to_string(),
        ],
    )?;
    let (h, stalls, received) = on_core(CORE_SUB, || iox_receive(plan, &name))?;
    let sent_line = child.read_line()?;
    child.finish()?;
    let sent: u64 = sent_line
        .strip_prefix("sent ")
        .with_context(|| format!("iceoryx2 child printed {sent_line:?}, not `sent N`"))?
        .parse()?;
    Ok((h, stalls, sent, received))
}

fn iox_receive(plan: &Plan, name: &str) -> anyhow::Result<(Histogram<u64>, Stalls, u64)> {
    let node = iox::node()?;
    let service = iox::service(&node, name)?;
    let sub = service
        .subscriber_builder()
        .buffer_size(LATENCY_QUEUE_MSGS)
        .create()
        .map_err(|e| anyhow::anyhow!("iceoryx2 subscriber: {e:?}"))?;
    let mut h = report::latency_histogram();
    let warmup = plan.warmup_msgs;
    let total = plan.latency_msgs;
    let mut deadline = Deadline::in_secs(RUN_TIMEOUT_S);
    let mut received = 0u64;
    let mut stalls = Stalls::default();
    while received < total {
        if received >= warmup {
            stalls.tick(now_ns());
        }
        match sub.receive() {
            Ok(Some(sample)) => {
                let now = now_ns();
                if received >= warmup {
                    let _ = h.record(now.saturating_sub(sample.payload()[0]).max(1));
                }
                received += 1;
            }
            Ok(None) => {
                if deadline.passed() {
                    break;
                }
            }
            Err(e) => bail!("iceoryx2 receive: {e:?}"),
        }
    }
    Ok((h, stalls, received))
}

/// Publisher child: `iox-pub SERVICE COUNT PACE_NS`; prints `sent N`.
fn child_iox_pub(rest: &[String]) -> anyhow::Result<()> {
    use iceoryx2::prelude::*;
    let name: String = parse(rest, 0, "service")?;
    let count: u64 = parse(rest, 1, "count")?;
    let pace_ns: u64 = parse(rest, 2, "pace_ns")?;
    report::pin_current_thread(CORE_PUB);
    let node = iox::node()?;
    let service = iox::service(&node, &name)?;
    let publisher = service
        .publisher_builder()
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .map_err(|e| anyhow::anyhow!("iceoryx2 publisher: {e:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(RUN_TIMEOUT_S);
    while service.dynamic_config().number_of_subscribers() == 0 {
        if Instant::now() > deadline {
            bail!("iceoryx2 child: no subscriber appeared");
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let mut sent = 0u64;
    let mut next = now_ns();
    let mut msg: Msg64 = [0; LATENCY_MSG_BYTES / 8];
    for i in 0..count {
        next += pace_ns;
        spin_until(next);
        msg[1] = i;
        loop {
            msg[0] = now_ns();
            let delivered = publisher
                .send_copy(msg)
                .map_err(|e| anyhow::anyhow!("iceoryx2 send: {e:?}"))?;
            if delivered > 0 {
                sent += 1;
                break;
            }
            // Not connected to the subscriber yet (first messages only).
            if Instant::now() > deadline {
                bail!("iceoryx2 child: message {i} reached no subscriber");
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    println!("sent {sent}");
    Ok(())
}

/// Live iceoryx2 nodes on this machine (None: could not list them).
fn iox_nodes_alive() -> Option<usize> {
    use iceoryx2::prelude::*;
    let mut alive = 0;
    Node::<ipc::Service>::list(Config::global_config(), |state| {
        if matches!(state, NodeState::Alive(_)) {
            alive += 1;
        }
        CallbackProgression::Continue
    })
    .ok()?;
    Some(alive)
}

/// iceoryx2 keeps its state in files under /dev/shm and /tmp/iceoryx2; they are
/// named by hashes, so the suite removes what appeared during its run.
struct IoxFiles {
    before: BTreeSet<PathBuf>,
    tmp_existed: bool,
}

const IOX_TMP: &str = "/tmp/iceoryx2";

impl IoxFiles {
    fn snapshot() -> Self {
        Self {
            before: Self::list(),
            tmp_existed: Path::new(IOX_TMP).exists(),
        }
    }

    fn list() -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        if let Ok(rd) = std::fs::read_dir("/dev/shm") {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("iox2_") {
                    out.insert(e.path());
                }
            }
        }
        let mut stack = vec![PathBuf::from(IOX_TMP)];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p.clone());
                    }
                    out.insert(p);
                }
            }
        }
        out
    }

    /// Removes the files that appeared since the snapshot; returns how many.
    /// Removes the files that appeared since the snapshot; when no iceoryx2
    /// node is alive any more (no other run is using iceoryx2), also what an
    /// earlier, interrupted run left behind. Returns how many files.
    fn cleanup(&self) -> usize {
        let none_alive = iox_nodes_alive() == Some(0);
        let mut removed = 0;
        for p in Self::list() {
            if (none_alive || !self.before.contains(&p))
                && p.is_file()
                && std::fs::remove_file(&p).is_ok()
            {
                removed += 1;
            }
        }
        if none_alive || !self.tmp_existed {
            let _ = std::fs::remove_dir_all(IOX_TMP);
        }
        removed
    }
}

// ---------------------------------------------------------------------------
// Peer: crossbeam-queue ArrayQueue, one process, two pinned threads.
// ---------------------------------------------------------------------------

fn crossbeam_throughput(plan: &Plan) -> f64 {
    let q: ArrayQueue<Msg32> = ArrayQueue::new(CROSSBEAM_CAPACITY);
    let total = plan.throughput_msgs;
    std::thread::scope(|s| {
        s.spawn(|| {
            report::pin_current_thread(CORE_PUB);
            let mut m: Msg32 = [0; THROUGHPUT_MSG_BYTES / 8];
            for i in 0..total {
                m[0] = i;
                while q.push(m).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        s.spawn(|| {
            report::pin_current_thread(CORE_SUB);
            let mut seen = 0u64;
            let mut sum = 0u64;
            let mut first = 0u64;
            while seen < total {
                if let Some(m) = q.pop() {
                    if seen == 0 {
                        first = now_ns();
                    }
                    sum = sum.wrapping_add(m[0]);
                    seen += 1;
                } else {
                    // One pause: measured fastest for ArrayQueue (a longer
                    // back-off, as ours uses, made it slower).
                    std::hint::spin_loop();
                }
            }
            std::hint::black_box(sum);
            msgs_per_s(total - 1, now_ns() - first)
        })
        .join()
        .expect("crossbeam consumer panicked")
    })
}

fn crossbeam_latency(plan: &Plan) -> (Histogram<u64>, Stalls) {
    let q: ArrayQueue<Msg64> = ArrayQueue::new(LATENCY_QUEUE_MSGS);
    let total = plan.latency_msgs;
    let warmup = plan.warmup_msgs;
    std::thread::scope(|s| {
        s.spawn(|| {
            report::pin_current_thread(CORE_PUB);
            let mut m: Msg64 = [0; LATENCY_MSG_BYTES / 8];
            let mut next = now_ns();
            for i in 0..total {
                next += PACE_NS;
                spin_until(next);
                m[1] = i;
                m[0] = now_ns();
                while q.push(m).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        s.spawn(|| {
            report::pin_current_thread(CORE_SUB);
            let mut h = report::latency_histogram();
            let mut stalls = Stalls::default();
            let mut seen = 0u64;
            while seen < total {
                if seen >= warmup {
                    stalls.tick(now_ns());
                }
                if let Some(m) = q.pop() {
                    let now = now_ns();
                    if seen >= warmup {
                        let _ = h.record(now.saturating_sub(m[0]).max(1));
                    }
                    seen += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
            (h, stalls)
        })
        .join()
        .expect("crossbeam consumer panicked")
    })
}

// ---------------------------------------------------------------------------
// The suite.
// ---------------------------------------------------------------------------

pub fn run(args: &SuiteArgs) -> anyhow::Result<serde_json::Value> {
    let plan = Plan::new(args.quick);
    println!(
        "== ms-bench shm{}",
        if args.quick { " (quick)" } else { "" }
    );
    println!(
        "method: one-way latency = subscriber now_ns() on receipt - publisher now_ns() taken before \
         the publish call (ours: the record timestamp claim() reads before the payload is written; \
         iceoryx2/crossbeam: written into the payload before send_copy/push); shm_ring::clock, one \
         time base in all processes (children adopt the parent's calibration); paced sender, one \
         {LATENCY_MSG_BYTES}-byte message every {PACE_NS} ns; publisher pinned to core {CORE_PUB}, \
         subscriber to core {CORE_SUB}; first {} messages of {} per round not recorded; hdrhistogram, \
         3 significant digits; headline = median over rounds of each percentile; messages in flight \
         bounded alike at {LATENCY_QUEUE_MSGS} (ours: a {}-KiB ring, iceoryx2: subscriber buffer, \
         crossbeam: queue), subscriber stalls (loop gaps >= {} ms) counted per round. Throughput: {THROUGHPUT_MSG_BYTES}-byte messages, {} per round, \
         counted at the subscriber from first to last message; ours publishes with \
         shm_ring::Publisher::offer_batch ({PUBLISH_BATCH_MAX} records per call, exclusive publisher), \
         crossbeam pushes one message per push(). {} interleaved rounds.",
        plan.warmup_msgs,
        plan.latency_msgs,
        LATENCY_RING_CAPACITY_BYTES >> 10,
        SUBSCRIBER_STALL_NS_MIN / 1_000_000,
        plan.throughput_msgs,
        plan.rounds
    );

    let iox_files = IoxFiles::snapshot();
    let clock = clock_ring()?;
    let result = run_rounds(&plan);
    let _ = clock.ring.unlink();
    if let Some(dir) = clock.ring.path().parent() {
        let _ = std::fs::remove_dir(dir); // only when empty: others may use it
    }
    let removed = iox_files.cleanup();
    if removed > 0 {
        println!("iceoryx2: removed {removed} files it left under /dev/shm and /tmp/iceoryx2");
    }
    result
}

/// Latency figures of one peer over the interleaved rounds.
#[derive(Default)]
struct Rounds {
    per_round: Vec<Latency>,
    stalls: Vec<Stalls>,
}

impl Rounds {
    fn push(&mut self, l: Latency, stalls: Stalls) {
        self.per_round.push(l);
        self.stalls.push(stalls);
    }
    fn spread(&self, f: impl Fn(&Latency) -> f64) -> Spread {
        Spread::of(&self.per_round.iter().map(f).collect::<Vec<_>>())
    }
    /// The headline: the median over rounds of each figure (a round disturbed
    /// by another tenant of this 2-vCPU VM does not decide the result).
    fn median(&self) -> Latency {
        Latency {
            count: self.per_round.iter().map(|l| l.count).sum(),
            p50_ns: self.spread(|l| l.p50_ns as f64).median as u64,
            p99_ns: self.spread(|l| l.p99_ns as f64).median as u64,
            p999_ns: self.spread(|l| l.p999_ns as f64).median as u64,
            max_ns: self.spread(|l| l.max_ns as f64).median as u64,
            mean_ns: self.spread(|l| l.mean_ns).median,
        }
    }
    fn json(&self) -> serde_json::Value {
        json!({
            "p50_ns": self.spread(|l| l.p50_ns as f64),
            "p99_ns": self.spread(|l| l.p99_ns as f64),
            "p999_ns": self.spread(|l| l.p999_ns as f64),
            "mean_ns": self.spread(|l| l.mean_ns),
            "subscriber_stalls": self.stalls.iter().map(|s| json!({
                "count": s.count,
                "total_ns": s.total_ns,
                "max_ns": s.max_ns,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Everything the interleaved rounds measured.
struct Measured {
    ours: Rounds,
    iox: Rounds,
    cb: Rounds,
    /// All rounds of each peer merged.
    merged: [Histogram<u64>; 3],
    ours_tp: Vec<f64>,
    cb_tp: Vec<f64>,
    iox_sent: u64,
    iox_recv: u64,
    backing: &'static str,
}

/// The headline figures and their ratios.
struct Headline {
    ours: Latency,
    iox: Latency,
    cb: Latency,
    ours_tp: Spread,
    cb_tp: Spread,
    p99_ratio: f64,
    mean_ratio: f64,
    tp_ratio: f64,
}

/// The adaptive idle strategy's wake-up figures, and the idle handle's size.
struct Extras {
    wake: Latency,
    wake_cpu: f64,
    idle_size_of: usize,
    idle_footprint: usize,
}

impl Measured {
    fn new() -> Self {
        Self {
            ours: Rounds::default(),
            iox: Rounds::default(),
            cb: Rounds::default(),
            merged: std::array::from_fn(|_| report::latency_histogram()),
            ours_tp: vec![],
            cb_tp: vec![],
            iox_sent: 0,
            iox_recv: 0,
            backing: "",
        }
    }

    /// One interleaved round: ours, iceoryx2, crossbeam (latency and throughput).
    fn round(&mut self, plan: &Plan, round: usize, stream: u32) -> anyhow::Result<()> {
        let (h, stalls, b) = ours_latency(plan, stream)?;
        self.backing = b;
        let l = Latency::from_histogram(&h);
        println!(
            "{}{}",
            l.line(&format!("round {round} ours 64B")),
            stalls.line()
        );
        self.ours.push(l, stalls);
        self.merged[0].add(&h)?;

        let tp = ours_throughput(plan, stream + 1)?;
        println!("round {round} ours 32B throughput      {tp:>12.0} msgs/s");
        self.ours_tp.push(tp);

        let (h, stalls, sent, recv) = iox_latency(plan)?;
        let l = Latency::from_histogram(&h);
        println!(
            "{}  sent {sent} received {recv}{}",
            l.line(&format!("round {round} iceoryx2 64B")),
            stalls.line()
        );
        self.iox.push(l, stalls);
        self.merged[1].add(&h)?;
        self.iox_sent += sent;
        self.iox_recv += recv;

        let tp = crossbeam_throughput(plan);
        println!("round {round} crossbeam 32B throughput {tp:>12.0} msgs/s");
        self.cb_tp.push(tp);
        let (h, stalls) = crossbeam_latency(plan);
        let l = Latency::from_histogram(&h);
        println!(
            "{}{}",
            l.line(&format!("round {round} crossbeam 64B")),
            stalls.line()
        );
        self.cb.push(l, stalls);
        self.merged[2].add(&h)?;
        Ok(())
    }

    fn headline(&self) -> Headline {
        let (ours, iox, cb) = (self.ours.median(), self.iox.median(), self.cb.median());
        let (ours_tp, cb_tp) = (Spread::of(&self.ours_tp), Spread::of(&self.cb_tp));
        Headline {
            p99_ratio: ours.p99_ns as f64 / iox.p99_ns.max(1) as f64,
            mean_ratio: ours.mean_ns / iox.mean_ns.max(1.0),
            tp_ratio: ours_tp.median / cb_tp.median.max(1.0),
            ours,
            iox,
            cb,
            ours_tp,
            cb_tp,
        }
    }

    fn print_summary(&self, plan: &Plan, h: &Headline, x: &Extras) {
        let labels = [
            "ours 64B cross-process",
            "iceoryx2 64B cross-process",
            "crossbeam 64B in-process",
        ];
        println!("-- median over {} rounds (headline figures)", plan.rounds);
        println!("backing: {}", self.backing);
        for (l, label) in [&h.ours, &h.iox, &h.cb].into_iter().zip(labels) {
            println!("{}", l.line(label));
        }
        println!("-- all rounds merged into one histogram");
        for (m, label) in self.merged.iter().zip(labels) {
            println!("{}", Latency::from_histogram(m).line(label));
        }
        let (sent, recv) = (self.iox_sent, self.iox_recv);
        let lossless = if sent == recv { "lossless" } else { "LOSS" };
        println!("iceoryx2 messages: sent {sent}, received {recv} ({lossless})");
        let (o, c) = (&h.ours_tp, &h.cb_tp);
        println!(
            "throughput 32B msgs/s: ours median {:.0} (min {:.0} max {:.0}); crossbeam ArrayQueue median {:.0} (min {:.0} max {:.0})",
            o.median, o.min, o.max, c.median, c.min, c.max
        );
        let idle = format!("adaptive wake-up after {} ms idle", plan.wakeup_gap_ms);
        println!("{}", x.wake.line(&idle));
        println!(
            "adaptive idle: subscriber thread used {:.1}% of a core while parked between messages",
            x.wake_cpu * 100.0
        );
        println!(
            "idle stream handle (no ring mapped): {} bytes (size_of {} + ring name on the heap)",
            x.idle_footprint, x.idle_size_of
        );
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "targets: p99 <= 0.5x iceoryx2: {:.2}x ({}); throughput >= 1.5x crossbeam: {:.2}x ({})",
            h.p99_ratio,
            met(h.p99_ratio <= 0.5),
            h.tp_ratio,
            met(h.tp_ratio >= 1.5)
        );
    }

    fn json(&self, plan: &Plan, h: &Headline, x: &Extras) -> serde_json::Value {
        json!({
            "suite": "shm",
            "backing": self.backing,
            "p50_ns": h.ours.p50_ns,
            "p99_ns": h.ours.p99_ns,
            "p999_ns": h.ours.p999_ns,
            "max_ns": h.ours.max_ns,
            "mean_ns": h.ours.mean_ns,
            "msgs_per_s": h.ours_tp.median,
            "iceoryx2_p50_ns": h.iox.p50_ns,
            "iceoryx2_p99_ns": h.iox.p99_ns,
            "iceoryx2_p999_ns": h.iox.p999_ns,
            "iceoryx2_mean_ns": h.iox.mean_ns,
            "iceoryx2_sent": self.iox_sent,
            "iceoryx2_received": self.iox_recv,
            "crossbeam_msgs_per_s": h.cb_tp.median,
            "crossbeam_p50_ns": h.cb.p50_ns,
            "crossbeam_p99_ns": h.cb.p99_ns,
            "p99_vs_iceoryx2": h.p99_ratio,
            "mean_vs_iceoryx2": h.mean_ratio,
            "throughput_vs_crossbeam": h.tp_ratio,
            "latency_queue_msgs": LATENCY_QUEUE_MSGS,
            "spread": {
                "ours": self.ours.json(),
                "iceoryx2": self.iox.json(),
                "crossbeam": self.cb.json(),
                "msgs_per_s": h.ours_tp,
                "crossbeam_msgs_per_s": h.cb_tp,
            },
            "ours_throughput_publish_api": format!("shm_ring::Publisher::offer_batch, {PUBLISH_BATCH_MAX} records per call"),
            "idle_stream_bytes": x.idle_footprint,
            "idle_stream_size_of_bytes": x.idle_size_of,
            "wakeup_idle_ms": plan.wakeup_gap_ms,
            "wakeup_p50_ns": x.wake.p50_ns,
            "wakeup_p99_ns": x.wake.p99_ns,
            "wakeup_max_ns": x.wake.max_ns,
            "wakeup_idle_cpu_fraction": x.wake_cpu,
            "rounds": plan.rounds,
            "quick": plan.quick,
        })
    }
}

fn run_rounds(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let base_stream = 0x4d53_0000 + (std::process::id() & 0xffff);
    let mut m = Measured::new();
    for round in 0..plan.rounds {
        m.round(plan, round, base_stream + 4 * round as u32)?;
    }
    let (wake_h, wake_cpu) = ours_wakeup(plan, base_stream + 3)?;
    let (idle_size_of, idle_footprint) = idle_stream_bytes()?;
    let x = Extras {
        wake: Latency::from_histogram(&wake_h),
        wake_cpu,
        idle_size_of,
        idle_footprint,
    };
    let h = m.headline();
    m.print_summary(plan, &h, &x);
    Ok(m.json(plan, &h, &x))
}

pub fn child(role: &str, rest: &[String]) -> anyhow::Result<()> {
    // Bounded even if the parent died without killing us (e.g. an iceoryx2
    // publisher retrying delivery to a subscriber that is gone).
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(2 * RUN_TIMEOUT_S));
        eprintln!("ms-bench shm child: watchdog expired, exiting");
        std::process::exit(3);
    });
    // Adopt the parent's clock calibration before anything reads the clock.
    let clock: String = parse(rest, 0, "clock ring")?;
    drop(shm_ring::Ring::open(&clock, None)?);
    let rest = &rest[1..];
    match role {
        "ours-pub" => child_ours_pub(rest),
        "ours-pub-batch" => child_ours_pub_batch(rest),
        "iox-pub" => child_iox_pub(rest),
        other => bail!("unknown shm child role {other:?}"),
    }
}
