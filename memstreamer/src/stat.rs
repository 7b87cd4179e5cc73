//! `memstreamer stat`: reads the counters file (seqlocked snapshot), never the node process.

use std::path::PathBuf;
use std::time::Duration;

use dataplane::counters::{CounterKind, CountersSnapshot};

#[derive(clap::Args)]
pub struct StatArgs {
    /// Counters file (default: the `counters_file` of --config, or of the defaults + MS_* env).
    #[arg(long)]
    counters_file: Option<PathBuf>,
    /// Node config to take `counters_file` from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print once and exit (default: refresh every --interval-ms until Ctrl-C).
    #[arg(long)]
    once: bool,
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Also print counters that are zero.
    #[arg(long)]
    all: bool,
}

pub fn run(args: StatArgs) -> anyhow::Result<()> {
    let path = match (&args.counters_file, &args.config) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => dataplane::Config::load(c)?.counters_file,
        (None, None) => dataplane::Config::from_env()?.counters_file,
    };
    let stop = crate::stop_flag()?;
    let mut previous: Option<CountersSnapshot> = None;
    loop {
        let snap = CountersSnapshot::read(&path)?;
        if !args.once {
            print!("\x1b[2J\x1b[H");
        }
        print(&snap, previous.as_ref(), args.all);
        if args.once || stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        previous = Some(snap);
        std::thread::sleep(Duration::from_millis(args.interval_ms.max(10)));
    }
}

fn print(snap: &CountersSnapshot, previous: Option<&CountersSnapshot>, all: bool) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let age_ms = now.saturating_sub(snap.updated_unix_ns) / 1_000_000;
    let state = if snap.writer_alive() {
        "running"
    } else {
        "NOT RUNNING (stale file)"
    };
    println!("node pid {} {state}, updated {age_ms} ms ago", snap.pid);
    println!(
        "{:>3}  {:<55} {:>16} {:>12}",
        "id", "counter", "value", "per s"
    );
    for &(c, v) in &snap.values {
        if v == 0 && !all {
            continue;
        }
        // Rates over the writer's own timestamps (the file is refreshed every ~10 ms).
        let rate = match (
            previous.and_then(|p| p.get(c).map(|b| (b, p.updated_unix_ns))),
            c.kind(),
        ) {
            (Some((before, then)), CounterKind::Total) if snap.updated_unix_ns > then => {
                let ns = u128::from(snap.updated_unix_ns - then);
                format!(
                    "{}",
                    u128::from(v.saturating_sub(before)) * 1_000_000_000 / ns
                )
            }
            _ => String::new(),
        };
        println!("{:>3}  {:<55} {:>16} {:>12}", c.id(), c.label(), v, rate);
    }
    println!(
        "{:>8} {:>9} {:>16} {:>16}",
        "stream", "partition", "archived", "durable"
    );
    for p in &snap.partitions {
        println!(
            "{:>8} {:>9} {:>16} {:>16}",
            p.stream, p.partition, p.archived_records, p.durable_records
        );
    }
}
