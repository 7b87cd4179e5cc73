//! The C API against the Rust SDK on the same path (`ms-bench bindings`).
//!
//! Method (both sides alike, rounds interleaved C, Rust, C, Rust, ...):
//! - one reliable ring of `RING_CAPACITY_BYTES` with an exclusive publisher,
//!   in a fresh temporary directory per round;
//! - a publisher thread pinned to core 0 offers a 64-byte message every
//!   `PACE_NS` (paced, so we measure latency, not queueing); the ring stamps
//!   each record with the ring clock when it is claimed;
//! - a subscriber thread pinned to core 1 busy-polls (fragment limit
//!   `POLL_LIMIT`) and records `clock_now - record timestamp` per message;
//!   the first `warmup` messages are not recorded;
//! - p50/p99 are read from the sorted per-message values (no histogram
//!   rounding, the same code on both sides); msgs/s is messages over the
//!   subscriber's elapsed time.
//!
//! The C side is `capi/bench/latency.c`, compiled with the system `cc`
//! against the static library `libmemstreamer.a` (built here in release
//! mode) and run as its own process; it prints one JSON line
//! `{"c_p50_ns":..,"c_p99_ns":..,"msgs_per_s":..}`. The Rust side runs the
//! same loop in this process with `sdk`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::report::{pin_current_thread, Spread};

/// Payload size of every message.
const MSG_BYTES: usize = 64;
/// Gap between two messages.
const PACE_NS: u64 = 5_000;
/// Ring size (power of two).
const RING_CAPACITY_BYTES: u64 = 128 << 10;
/// Records per poll call.
const POLL_LIMIT: usize = 16;
const CORE_PUB: usize = 0;
const CORE_SUB: usize = 1;
/// Stream and partition of the ring.
const STREAM: u32 = 77;
const PARTITION: u16 = 0;
/// A round (either side) gives up after this long.
const ROUND_TIMEOUT_S: u64 = 60;

/// The C API and the Rust SDK on the same path, over interleaved rounds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CFigures {
    /// Median over rounds of each round's p50 / p99 (ns).
    pub c_p50_ns: f64,
    pub c_p99_ns: f64,
    pub rust_p50_ns: f64,
    pub rust_p99_ns: f64,
    pub rounds: usize,
    /// (min, max) over rounds of the p50.
    pub c_p50_spread: (f64, f64),
    pub rust_p50_spread: (f64, f64),
}

#[derive(Clone, Copy, Debug)]
enum Side {
    C,
    Rust,
}

/// One round of one side.
#[derive(Clone, Copy, Debug)]
struct Round {
    p50_ns: f64,
    p99_ns: f64,
    msgs_per_s: f64,
}

/// Run lengths.
struct Plan {
    rounds: usize,
    msgs: u64,
    warmup: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 3,
                msgs: 40_000,
                warmup: 5_000,
            }
        } else {
            Self {
                rounds: 5,
                msgs: 200_000,
                warmup: 20_000,
            }
        }
    }
}

/// Builds the C latency program, then measures C and Rust in interleaved rounds.
pub fn run(quick: bool) -> anyhow::Result<CFigures> {
    let plan = Plan::new(quick);
    let work = WorkDir::new()?;
    let exe = build_c_latency(work.path())?;
    let mut c = Vec::with_capacity(plan.rounds);
    let mut rust = Vec::with_capacity(plan.rounds);
    for round in 0..plan.rounds {
        // Alternate which side goes first, so a drift of the machine during
        // a round pair does not always favour the same side.
        let sides = if round % 2 == 0 {
            [Side::C, Side::Rust]
        } else {
            [Side::Rust, Side::C]
        };
        for side in sides {
            let dir = work.path().join(format!("{side:?}-{round}"));
            std::fs::create_dir_all(&dir)?;
            let r = match side {
                Side::C => run_c_round(&exe, &dir, &plan)?,
                Side::Rust => run_rust_round(&dir, &plan)?,
            };
            println!(
                "bindings/c round {round}: {:<4} p50 {:>7.0} ns  p99 {:>9.0} ns  {:>9.0} msgs/s",
                format!("{side:?}"),
                r.p50_ns,
                r.p99_ns,
                r.msgs_per_s
            );
            match side {
                Side::C => c.push(r),
                Side::Rust => rust.push(r),
            }
        }
    }
    let c_p50 = Spread::of(&c.iter().map(|r| r.p50_ns).collect::<Vec<_>>());
    let c_p99 = Spread::of(&c.iter().map(|r| r.p99_ns).collect::<Vec<_>>());
    let rust_p50 = Spread::of(&rust.iter().map(|r| r.p50_ns).collect::<Vec<_>>());
    let rust_p99 = Spread::of(&rust.iter().map(|r| r.p99_ns).collect::<Vec<_>>());
    let figures = CFigures {
        c_p50_ns: c_p50.median,
        c_p99_ns: c_p99.median,
        rust_p50_ns: rust_p50.median,
        rust_p99_ns: rust_p99.median,
        rounds: plan.rounds,
        c_p50_spread: (c_p50.min, c_p50.max),
        rust_p50_spread: (rust_p50.min, rust_p50.max),
    };
    println!(
        "bindings/c: C p50 {:.0} ns (rounds {:.0}..{:.0}), Rust p50 {:.0} ns (rounds {:.0}..{:.0}), C/Rust p50 {:.3}",
        figures.c_p50_ns,
        c_p50.min,
        c_p50.max,
        figures.rust_p50_ns,
        rust_p50.min,
        rust_p50.max,
        figures.c_p50_ns / figures.rust_p50_ns.max(1.0)
    );
    Ok(figures)
}

/// A private directory under the system temp dir, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "ms-bench-bindings-c-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `cargo build --release -p memstreamer-capi`, then `cc` latency.c against
/// the static library; returns the program's path.
fn build_c_latency(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--locked", "-p", "memstreamer-capi"])
        .status()
        .context("running cargo to build the C library")?;
    if !status.success() {
        bail!("cargo build -p memstreamer-capi failed: {status}");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let lib = target.join("release").join("libmemstreamer.a");
    let exe = out_dir.join("c-latency");
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let output = Command::new(&cc)
        .args([
            "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-I",
        ])
        .arg(root.join("capi/include"))
        .arg(root.join("capi/bench/latency.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .with_context(|| format!("running {cc:?} (install a C compiler: scripts/setup.sh)"))?;
    if !output.status.success() {
        bail!(
            "compiling capi/bench/latency.c failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(exe)
}

fn run_c_round(exe: &Path, dir: &Path, plan: &Plan) -> anyhow::Result<Round> {
    let output = Command::new(exe)
        .arg(dir)
        .arg(plan.msgs.to_string())
        .arg(plan.warmup.to_string())
        .arg(PACE_NS.to_string())
        .arg(RING_CAPACITY_BYTES.to_string())
        .output()
        .context("running the C latency program")?;
    if !output.status.success() {
        bail!(
            "the C latency program failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("the C latency program printed no JSON line")?;
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("the C latency program printed {line:?}"))?;
    let field = |name: &str| {
        v.get(name)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("{name} missing in {line:?}"))
    };
    Ok(Round {
        p50_ns: field("c_p50_ns")?,
        p99_ns: field("c_p99_ns")?,
        msgs_per_s: field("msgs_per_s")?,
    })
}

/// The Rust SDK on the same path as latency.c.
fn run_rust_round(dir: &Path, plan: &Plan) -> anyhow::Result<Round> {
    let ctx = sdk::Context::builder()
        .dir(dir)
        .capacity_bytes(RING_CAPACITY_BYTES)
        .mode(sdk::Mode::Reliable)
        .publisher_kind(sdk::PublisherKind::Exclusive)
        .build();
    let mut publisher = ctx.publisher(STREAM, PARTITION)?;
    let mut subscriber = ctx.subscriber(STREAM, PARTITION);
    if !subscriber.try_attach(true)? {
        bail!("the subscriber cannot map the ring the publisher created");
    }
    let total = plan.msgs;
    let warmup = plan.warmup;
    let failed = Arc::new(AtomicBool::new(false));
    let pub_failed = Arc::clone(&failed);
    let publisher_thread = std::thread::spawn(move || -> anyhow::Result<()> {
        pin_current_thread(CORE_PUB);
        let payload = [0x5au8; MSG_BYTES];
        let deadline = Instant::now() + Duration::from_secs(ROUND_TIMEOUT_S);
        let mut next = sdk::clock::now_ns();
        for _ in 0..total {
            while sdk::clock::now_ns() < next {
                std::hint::spin_loop();
            }
            loop {
                match publisher.offer(&payload) {
                    Ok(_) => break,
                    Err(sdk::OfferError::BackPressured) if Instant::now() < deadline => {
                        std::hint::spin_loop()
                    }
                    Err(e) => {
                        pub_failed.store(true, Ordering::Relaxed);
                        return Err(e.into());
                    }
                }
            }
            next += PACE_NS;
        }
        Ok(())
    });
    // The subscriber runs on a thread of its own too (as in latency.c, where
    // it is the main thread of a process of its own), so the caller's thread
    // keeps its affinity.
    let subscriber_thread = std::thread::spawn(move || -> anyhow::Result<_> {
        pin_current_thread(CORE_SUB);
        let mut latencies = Vec::with_capacity((total - warmup.min(total)) as usize);
        let mut seen = 0u64;
        let mut started: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(ROUND_TIMEOUT_S);
        while seen < total && Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
            subscriber.poll(
                |r| {
                    let now = sdk::clock::now_ns();
                    if seen >= warmup {
                        latencies.push(now.saturating_sub(r.timestamp_ns));
                    }
                    seen += 1;
                    started.get_or_insert_with(Instant::now);
                },
                POLL_LIMIT,
            )?;
        }
        let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
        Ok((latencies, seen, elapsed))
    });
    let received = subscriber_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the Rust subscriber thread panicked"))?;
    publisher_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the Rust publisher thread panicked"))??;
    let (mut latencies, seen, elapsed) = received?;
    if seen < total {
        bail!("the Rust subscriber saw {seen} of {total} messages within {ROUND_TIMEOUT_S} s");
    }
    Ok(summarize(&mut latencies, seen, elapsed))
}

/// p50/p99 of the sorted values (index `len * q`, as latency.c does), and msgs/s.
fn summarize(latencies: &mut [u64], msgs: u64, elapsed: Duration) -> Round {
    latencies.sort_unstable();
    let at = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[i] as f64
    };
    Round {
        p50_ns: at(0.50),
        p99_ns: at(0.99),
        msgs_per_s: msgs as f64 / elapsed.as_secs_f64().max(1e-9),
    }
}
