//! What every suite shares: latency summaries from hdrhistogram, spreads over
//! interleaved rounds, core pinning, re-spawning this binary as a peer process,
//! and the one JSON line that ends each suite.
//!
//! Method (for every latency figure): values are recorded per message in
//! nanoseconds into an `hdrhistogram::Histogram<u64>` with 3 significant
//! digits; percentiles are read from that histogram; warm-up messages are not
//! recorded.

use std::process::{Child, Command, Stdio};

use hdrhistogram::Histogram;
use serde::Serialize;

/// p50/p99/p99.9/max/mean of one histogram, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.50),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            mean_ns: h.mean(),
        }
    }

    /// One human line: `label  p50 .. p99 .. p99.9 .. max .. (n = ..)`.
    pub fn line(&self, label: &str) -> String {
        format!(
            "{label:<28} p50 {:>8} ns  p99 {:>8} ns  p99.9 {:>8} ns  max {:>9} ns  mean {:>8.0} ns  (n = {})",
            self.p50_ns, self.p99_ns, self.p999_ns, self.max_ns, self.mean_ns, self.count
        )
    }
}

/// A histogram for nanosecond latencies from 1 ns to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Min / median / max of one figure measured over several interleaved rounds:
/// this VM moves its vCPUs between placements, so a single round can mislead.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        Self {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }
}

/// Pins the calling thread to `core`. Returns false (and the run goes on,
/// unpinned, saying so) when the core does not exist. The core is set
/// directly, not looked up in the current affinity mask, so a child spawned
/// from a pinned thread can still pin itself to another core.
pub fn pin_current_thread(core: usize) -> bool {
    let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    if !ok {
        eprintln!("note: could not pin to core {core}; running unpinned");
    }
    ok
}

/// Starts this very binary as a peer process: `ms-bench child <suite> <role> ARGS..`.
/// Its stdout is piped so the parent can read the child's result line.
pub fn spawn_child(suite: &str, role: &str, args: &[String]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("child")
        .arg(suite)
        .arg(role)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(child)
}

/// Prints the suite's closing line: one JSON object, nothing after it.
pub fn emit_json(value: &serde_json::Value) {
    println!("{value}");
}
