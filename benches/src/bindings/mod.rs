//! `ms-bench bindings`: the SDK beyond Rust, against same-run peers.
//!
//! What one run measures:
//! - **Python -> Python across processes**, ours (`memstreamer`, the wheel of
//!   `python/`) and iceoryx2's Python package 0.10 (PyPI `iceoryx2`), rounds
//!   interleaved (ours, iceoryx2; then iceoryx2, ours; ...). Each round runs, per
//!   side, a throughput run (unpaced) and a latency run (one message every
//!   `LATENCY_PACE_NS`). Both are lossless with the same depth: our reliable
//!   128 KiB ring holds `DEPTH_MSGS` 64-byte records per lap, and iceoryx2 is
//!   set up with safe overflow off, a subscriber buffer of `DEPTH_MSGS` and a
//!   publisher that retries until delivered. The peers are the processes of
//!   `python/bench/bindings.py` (its doc says the method): publisher pinned to
//!   core 0, subscriber to core 1, 64-byte messages stamped with
//!   `time.perf_counter_ns()` (CLOCK_MONOTONIC, one clock for both processes);
//!   one-way latency is receive time minus send time, warm-up messages (more
//!   than one lap) not recorded; p50/p99 are exact quantiles of the sorted
//!   values. Figures are medians over rounds, with (min, median, max) spreads.
//! - **C API against the Rust SDK** on the same shm path: `c::run`.
//!
//! The wheel is built (maturin, release) and installed into the repo's `.venv`
//! (made by `scripts/setup.sh`) before the first round. The last line is one
//! JSON object with the figures and the ratios to the targets (Python
//! throughput >= 1.0x iceoryx2-Python, Python p99 <= 0.5x iceoryx2-Python, C
//! within 5% of Rust at p50). Benchmarks print; they never assert.

mod c;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Deserialize;
use serde_json::json;

use crate::report::Spread;
use crate::SuiteArgs;

/// Payload of every message (bytes).
const MSG_BYTES: u64 = 64;
/// Our ring of the Python runs; one lap is the depth both sides get.
const RING_CAPACITY_BYTES: u64 = 128 << 10;
/// Messages in flight on both sides: one lap of our ring (32-byte record
/// header + payload), iceoryx2's subscriber buffer (python/bench/bindings.py
/// computes the same number).
const DEPTH_MSGS: u64 = RING_CAPACITY_BYTES / (32 + MSG_BYTES);
/// Gap between two messages of a latency run. A Python publisher and
/// subscriber each spend a few microseconds per message; this keeps the
/// latency runs out of queueing.
const LATENCY_PACE_NS: u64 = 50_000;
const CORE_PUB: usize = 0;
const CORE_SUB: usize = 1;
/// A publisher process that has not exited this long after the subscriber
/// finished (and its stdin closed) is killed.
const CHILD_TIMEOUT_S: u64 = 10;
/// The peer script, from the workspace root.
const PEER_SCRIPT: &str = "python/bench/bindings.py";
/// The venv scripts/setup.sh makes, from the workspace root.
const VENV_PYTHON: &str = ".venv/bin/python";

const _: () = assert!(DEPTH_MSGS == 1365);

/// Run lengths.
#[derive(Clone, Copy)]
struct Plan {
    quick: bool,
    rounds: usize,
    throughput_msgs: u64,
    latency_msgs: u64,
    warmup_msgs: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rounds: 3,
                throughput_msgs: 200_000,
                latency_msgs: 20_000,
                warmup_msgs: 3_000,
            }
        } else {
            Self {
                quick,
                rounds: 5,
                throughput_msgs: 1_000_000,
                latency_msgs: 100_000,
                warmup_msgs: 5_000,
            }
        }
    }
}

const _: () = assert!(DEPTH_MSGS < 3_000, "the warm-up laps the ring");

/// The two Python clients.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Iceoryx2,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ours => "memstreamer",
            Side::Iceoryx2 => "iceoryx2",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Throughput,
    Latency,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Throughput => "throughput",
            Mode::Latency => "latency",
        }
    }
}

/// What a subscriber process reports (python/bench/bindings.py `figures`).
#[derive(Clone, Copy, Debug, Deserialize)]
struct SubFigures {
    received: u64,
    msgs_per_s: f64,
    p50_ns: f64,
    p99_ns: f64,
    p999_ns: f64,
    max_ns: f64,
}

/// Per side: the throughput runs' msgs/s and the latency runs' figures.
#[derive(Default)]
struct SideRuns {
    msgs_per_s: Vec<f64>,
    p50_ns: Vec<f64>,
    p99_ns: Vec<f64>,
}

pub fn run(args: &SuiteArgs) -> anyhow::Result<serde_json::Value> {
    let plan = Plan::new(args.quick);
    let root = workspace_root();
    let python = prepare_python(&root)?;
    println!(
        "bindings: Python pub -> sub across processes, {MSG_BYTES} B messages, depth {DEPTH_MSGS} msgs, \
         {} rounds ({} msgs throughput, {} msgs latency at one per {} us)",
        plan.rounds,
        plan.throughput_msgs,
        plan.latency_msgs,
        LATENCY_PACE_NS / 1000
    );
    let mut ours = SideRuns::default();
    let mut iox2 = SideRuns::default();
    for round in 0..plan.rounds {
        let order = if round % 2 == 0 {
            [Side::Ours, Side::Iceoryx2]
        } else {
            [Side::Iceoryx2, Side::Ours]
        };
        for side in order {
            let runs = if side == Side::Ours {
                &mut ours
            } else {
                &mut iox2
            };
            python_round(&python, &root, &plan, side, round, runs)?;
        }
    }
    let c = c::run(plan.quick)?;
    Ok(report(&plan, &ours, &iox2, &c))
}

/// One side's throughput run and latency run of one round.
fn python_round(
    python: &Path,
    root: &Path,
    plan: &Plan,
    side: Side,
    round: usize,
    runs: &mut SideRuns,
) -> anyhow::Result<()> {
    let t = run_pair(
        python,
        root,
        side,
        Mode::Throughput,
        plan.throughput_msgs,
        0,
        round,
    )?;
    let l = run_pair(
        python,
        root,
        side,
        Mode::Latency,
        plan.latency_msgs,
        plan.warmup_msgs,
        round,
    )?;
    println!(
        "bindings/python round {round}: {:<11} {:>9.0} msgs/s   latency p50 {:>9.0} ns  p99 {:>10.0} ns  p99.9 {:>10.0} ns  max {:>10.0} ns",
        side.name(),
        t.msgs_per_s,
        l.p50_ns,
        l.p99_ns,
        l.p999_ns,
        l.max_ns
    );
    runs.msgs_per_s.push(t.msgs_per_s);
    runs.p50_ns.push(l.p50_ns);
    runs.p99_ns.push(l.p99_ns);
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_path_buf()
}

/// Builds the wheel of python/ (release), installs it into the venv, and
/// checks that both Python clients import. Returns the venv's python.
fn prepare_python(root: &Path) -> anyhow::Result<PathBuf> {
    let python = root.join(VENV_PYTHON);
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/setup.sh (it makes the venv with maturin and iceoryx2)",
            python.display()
        );
    }
    let wheels = root.join("target/wheels");
    println!("bindings: building the memstreamer wheel (maturin, release) ...");
    let maturin = root.join(".venv/bin/maturin");
    run_quiet(
        Command::new(&maturin)
            .args([
                "build",
                "--release",
                "--locked",
                "-m",
                "python/Cargo.toml",
                "-o",
            ])
            .arg(&wheels)
            .current_dir(root),
        "maturin build",
    )?;
    let wheel = newest_wheel(&wheels)?;
    run_quiet(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(["--force-reinstall", "--no-deps"])
            .arg(&wheel),
        "pip install",
    )?;
    run_quiet(
        Command::new(&python).args(["-c", "import memstreamer, iceoryx2"]),
        "import memstreamer, iceoryx2 (run scripts/setup.sh for iceoryx2)",
    )?;
    Ok(python)
}

fn run_quiet(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The most recently written memstreamer wheel in `dir`.
fn newest_wheel(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let is_wheel = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("memstreamer-") && n.ends_with(".whl"));
        if !is_wheel {
            continue;
        }
        let modified = path.metadata()?.modified()?;
        if best.as_ref().is_none_or(|(t, _)| modified > *t) {
            best = Some((modified, path));
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("maturin left no memstreamer wheel in {}", dir.display()))
}

/// Where one pair of peers meets: a ring directory (ours; the ring is created
/// here first, so the subscriber attaches before anything is published) or an
/// iceoryx2 service name. Removes the directory when dropped.
struct Meeting {
    name: String,
    dir: Option<PathBuf>,
    _ring: Option<sdk::Ring>,
}

impl Meeting {
    fn new(side: Side, mode: Mode, round: usize) -> anyhow::Result<Self> {
        let tag = format!(
            "ms-bench-bindings-{}-{round}-{}",
            std::process::id(),
            mode.name()
        );
        if side == Side::Iceoryx2 {
            return Ok(Self {
                name: tag,
                dir: None,
                _ring: None,
            });
        }
        let dir = std::env::temp_dir().join(tag);
        std::fs::create_dir_all(&dir)?;
        let ring = sdk::Context::builder()
            .dir(&dir)
            .capacity_bytes(RING_CAPACITY_BYTES)
            .build()
            .create_ring(1, 0)?;
        Ok(Self {
            name: dir.display().to_string(),
            dir: Some(dir),
            _ring: Some(ring),
        })
    }
}

impl Drop for Meeting {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs one subscriber process and one publisher process; returns the
/// subscriber's figures.
fn run_pair(
    python: &Path,
    root: &Path,
    side: Side,
    mode: Mode,
    msgs: u64,
    warmup: u64,
    round: usize,
) -> anyhow::Result<SubFigures> {
    let meeting = Meeting::new(side, mode, round)?;
    let pace = if mode == Mode::Latency {
        LATENCY_PACE_NS
    } else {
        0
    };
    let peer = |role: &str, arg: u64, core: usize| -> anyhow::Result<Child> {
        Ok(Command::new(python)
            .arg(root.join(PEER_SCRIPT))
            .args([role, side.name(), mode.name()])
            .args([msgs.to_string(), arg.to_string()])
            .args([meeting.name.clone(), core.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?)
    };
    let mut sub = peer("sub", warmup, CORE_SUB)?;
    let mut sub_out = BufReader::new(sub.stdout.take().context("subscriber stdout")?);
    let mut line = String::new();
    sub_out.read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = sub.kill();
        let _ = sub.wait();
        bail!("{} subscriber did not start: {line:?}", side.name());
    }
    let mut publisher = peer("pub", pace, CORE_PUB)?;
    // The subscriber ends by itself (all messages, or its script's 60 s
    // limit); the publisher stays until its stdin closes (iceoryx2 drops
    // what a subscriber has not taken when the publisher leaves).
    let mut rest = String::new();
    sub_out.read_to_string(&mut rest)?;
    let sub_status = sub.wait()?;
    drop(publisher.stdin.take());
    let pub_ok = wait_bounded(&mut publisher, Duration::from_secs(CHILD_TIMEOUT_S));
    if !pub_ok || !sub_status.success() {
        bail!(
            "{} {} run failed (publisher finished: {pub_ok}, subscriber: {sub_status})",
            side.name(),
            mode.name()
        );
    }
    let last = rest.lines().last().unwrap_or_default();
    let figures: SubFigures =
        serde_json::from_str(last).with_context(|| format!("subscriber output {last:?}"))?;
    if figures.received != msgs {
        bail!(
            "{} {} run: received {} of {msgs} messages (lossless runs lose none)",
            side.name(),
            mode.name(),
            figures.received
        );
    }
    Ok(figures)
}

/// Waits up to `timeout` for `child` to exit successfully; kills it after.
fn wait_bounded(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Human lines and the closing JSON object.
fn report(plan: &Plan, ours: &SideRuns, iox2: &SideRuns, c: &c::CFigures) -> serde_json::Value {
    let s = |v: &[f64]| Spread::of(v);
    let (py_tp, iox_tp) = (s(&ours.msgs_per_s), s(&iox2.msgs_per_s));
    let (py_p50, iox_p50) = (s(&ours.p50_ns), s(&iox2.p50_ns));
    let (py_p99, iox_p99) = (s(&ours.p99_ns), s(&iox2.p99_ns));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let tp_ratio = ratio(py_tp.median, iox_tp.median);
    let p99_ratio = ratio(py_p99.median, iox_p99.median);
    let c_ratio = ratio(c.c_p50_ns, c.rust_p50_ns);
    println!(
        "bindings: Python msgs/s  memstreamer {:.0} (min {:.0}, max {:.0})  iceoryx2 {:.0} (min {:.0}, max {:.0})  ratio {tp_ratio:.2}x (target >= 1.0x)",
        py_tp.median, py_tp.min, py_tp.max, iox_tp.median, iox_tp.min, iox_tp.max
    );
    println!(
        "bindings: Python p99     memstreamer {:.0} ns  iceoryx2 {:.0} ns  ratio {p99_ratio:.2}x (target <= 0.5x); p50 {:.0} ns vs {:.0} ns",
        py_p99.median, iox_p99.median, py_p50.median, iox_p50.median
    );
    println!(
        "bindings: C p50 {:.0} ns vs Rust p50 {:.0} ns  ratio {c_ratio:.3}x (target <= 1.05x); p99 {:.0} vs {:.0} ns",
        c.c_p50_ns, c.rust_p50_ns, c.c_p99_ns, c.rust_p99_ns
    );
    json!({
        "suite": "bindings",
        "quick": plan.quick,
        "rounds": plan.rounds,
        "msg_bytes": MSG_BYTES,
        "depth_msgs": DEPTH_MSGS,
        "latency_pace_ns": LATENCY_PACE_NS,
        "py_msgs_per_s": py_tp.median,
        "iox2_py_msgs_per_s": iox_tp.median,
        "py_p50_ns": py_p50.median,
        "py_p99_ns": py_p99.median,
        "iox2_py_p50_ns": iox_p50.median,
        "iox2_py_p99_ns": iox_p99.median,
        "py_msgs_per_s_spread": py_tp,
        "iox2_py_msgs_per_s_spread": iox_tp,
        "py_p99_ns_spread": py_p99,
        "iox2_py_p99_ns_spread": iox_p99,
        "c_p50_ns": c.c_p50_ns,
        "c_p99_ns": c.c_p99_ns,
        "rust_p50_ns": c.rust_p50_ns,
        "rust_p99_ns": c.rust_p99_ns,
        "c_rounds": c.rounds,
        "c_p50_spread": [c.c_p50_spread.0, c.c_p50_spread.1],
        "rust_p50_spread": [c.rust_p50_spread.0, c.rust_p50_spread.1],
        "targets": {
            "py_vs_iox2_msgs_per_s": {"ratio": tp_ratio, "target_min": 1.0, "met": tp_ratio >= 1.0},
            "py_vs_iox2_p99": {"ratio": p99_ratio, "target_max": 0.5, "met": p99_ratio > 0.0 && p99_ratio <= 0.5},
            "c_vs_rust_p50": {"ratio": c_ratio, "target_max": 1.05, "met": c_ratio > 0.0 && c_ratio <= 1.05},
        },
    })
}
