//! `ms-bench storage`: storage-nvme against fio on the same file system, in the same run.
//!
//! Figures (MB = 10^6 bytes):
//! * **append throughput**: `Log::append_batch` of 64 B and 1 KiB records in ~64 KiB batches,
//!   as fast as the log accepts them, ending with `sync()` (everything durable). MB/s counts
//!   bytes written to the segment (batch and record headers included), records/s counts records.
//!   Writes are `write_bytes_max` = 1 MiB O_DIRECT writes, `writes_inflight_max` = 4 in flight.
//! * **fio peer**: O_DIRECT sequential write, bs = 1 MiB, iodepth = 4, io_uring, preallocated
//!   file, `end_fsync=1`: the device limit our append throughput is compared to.
//! * **durable-ack latency** at a fixed offered load of 100k records/s (64 B records): record i
//!   is due at t0 + i * 10 us; the loop appends every due record (one batch), calls `flush()`,
//!   polls, and for each record that became durable records `now - due time` (so a stall counts
//!   against every record scheduled during it: no coordinated omission). The first second is
//!   warm-up. Method for every latency: hdrhistogram, 3 significant digits (see report.rs).
//! * **fdatasync floor**: fio, 4 KiB O_DIRECT writes each followed by fdatasync (sync engine,
//!   queue depth 1). `fsync_floor_p99_us` is fio's fdatasync p99 alone, a lower bound of the
//!   write + fdatasync pair, so the ack/floor ratio is, if anything, pessimistic for us.
//! * **durable-write peers**: fio, 4 KiB O_DIRECT|O_DSYNC writes at queue depth 1 (each write
//!   returns after the kernel's fdatasync of it: the write + fdatasync pair in one call), on a
//!   fresh preallocated file (fio's default, as the floor) and on a file fio wrote first
//!   (`--overwrite=1`: overwrites of written blocks, like the log's zeroed-ahead blocks): one
//!   record made durable with nothing queued before it.
//! * **open-loop durable-write peer**: fio, the same 4 KiB O_DIRECT|O_DSYNC writes on a written
//!   file, but issued on a clock (`--rate_iops`, 10k/s, queue depth 32) instead of one after
//!   another. Each write is issued when due (it could fall behind only with 32 in flight, a 3 ms
//!   stall) and its latency counts from then, so a device stall counts against every write due
//!   during it, as it counts against every record in the ack run: the device's own latency for
//!   durable writes offered at a fixed rate, the shape of the ack measurement. The queue-depth-1
//!   peers above are closed-loop (a stall delays one write and suppresses the writes that would
//!   have been due meanwhile), so their p99 omits the stalls an open-loop p99 must include.
//! * The ack and floor runs are interleaved over rounds (3 in `--quick`); the figures are
//!   medians over rounds, and each round prints its own ack/floor ratio.
//! * The log zeroes segments ahead of the append position (`LogConfig::zero_ahead_bytes`) and
//!   commits with RWF_DSYNC writes (`dsync_commits`); both are on by default, as here.
//!
//! Files live in a temporary directory under /var/tmp (checked with statfs: not tmpfs) and are
//! removed at the end. Throughput runs are interleaved over rounds (this VM moves its vCPUs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use storage_nvme::{AppendError, Log, LogConfig, Record};

use crate::report::{latency_histogram, Latency, Spread};
use crate::SuiteArgs;

const BLOCK_BYTES: u64 = 1 << 20;
const QUEUE_DEPTH: u32 = 4;
const OFFERED_RECORDS_S: u64 = 100_000;
const BATCH_TARGET_BYTES: usize = 64 << 10;
/// Durable writes per second of the open-loop fio peer: one per 10 records of the ack run's
/// offered load, about the rate the log commits at under it.
const OPEN_LOOP_WRITES_S: u64 = 10_000;

/// The bench directory, removed on drop.
struct BenchDir(PathBuf);
impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `MS_BENCH_STORAGE_IO=pwrite` measures the fallback backend instead of io_uring;
/// `MS_BENCH_STORAGE_SYNCS=N` sets the fdatasyncs allowed in flight (default 2);
/// `MS_BENCH_STORAGE_ZERO_AHEAD_MIB=N` sets how far ahead segments are zeroed (0 disables);
/// `MS_BENCH_STORAGE_DSYNC=0` turns RWF_DSYNC commits off (write, then fdatasync).
fn log_config() -> LogConfig {
    let io_mode = match std::env::var("MS_BENCH_STORAGE_IO").as_deref() {
        Ok("pwrite") => storage_nvme::IoMode::Pwrite,
        _ => storage_nvme::IoMode::Auto,
    };
    let syncs_inflight_max = std::env::var("MS_BENCH_STORAGE_SYNCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let zero_ahead_bytes = std::env::var("MS_BENCH_STORAGE_ZERO_AHEAD_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(LogConfig::default().zero_ahead_bytes, |m| m << 20);
    let dsync_commits = std::env::var("MS_BENCH_STORAGE_DSYNC").as_deref() != Ok("0");
    LogConfig {
        dsync_commits,
        zero_ahead_bytes,
        io_mode,
        syncs_inflight_max,
        segment_bytes: 256 << 20,
        write_buffer_bytes: 8 << 20,
        write_bytes_max: BLOCK_BYTES,
        writes_inflight_max: QUEUE_DEPTH,
        batch_bytes_max: 1 << 20,
        ..LogConfig::default()
    }
}

struct AppendRun {
    mb_s: f64,
    records_s: f64,
    payload_mb_s: f64,
}

/// Appends `total_bytes` of `record_bytes` records, then syncs; MB/s of segment bytes.
fn append_run(
    dir: &Path,
    record_bytes: usize,
    total_bytes: u64,
) -> anyhow::Result<(AppendRun, &'static str, String)> {
    let _ = std::fs::remove_dir_all(dir);
    let (mut log, _) = Log::open(dir, log_config()).context("open log")?;
    let backend = log.backend_name();
    let backing = format!("{:?}", log.buffer_backing());
    let payload = vec![0xA5u8; record_bytes];
    let per_batch = (BATCH_TARGET_BYTES / (record_bytes + 16)).max(1);
    let recs: Vec<Record<'_>> = (0..per_batch)
        .map(|i| Record {
            timestamp_ns: i as u64,
            payload: &payload,
        })
        .collect();
    let batch_bytes = storage_nvme::codec::batch_bytes_for(&recs) as u64;
    let (mut bytes, mut records) = (0u64, 0u64);
    let t0 = Instant::now();
    while bytes < total_bytes {
        match log.append_batch(log.next_offset(), &recs) {
            Ok(_) => {
                bytes += batch_bytes;
                records += per_batch as u64;
            }
            Err(AppendError::BackPressured) => {
                log.wait()?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    log.sync()?;
    let secs = t0.elapsed().as_secs_f64();
    let st = log.stats();
    if std::env::var("MS_BENCH_STORAGE_VERBOSE").is_ok() {
        println!("  log: {st:?}");
    }
    log.close()?;
    let _ = std::fs::remove_dir_all(dir);
    let run = AppendRun {
        mb_s: bytes as f64 / secs / 1e6,
        records_s: records as f64 / secs,
        payload_mb_s: (records * record_bytes as u64) as f64 / secs / 1e6,
    };
    Ok((run, backend, backing))
}

/// Durable-ack latency at a fixed offered load.
fn ack_latency_run(dir: &Path, seconds: u64) -> anyhow::Result<Latency> {
    let _ = std::fs::remove_dir_all(dir);
    let (mut log, _) = Log::open(dir, log_config()).context("open log")?;
    let interval_ns = 1_000_000_000 / OFFERED_RECORDS_S;
    let warmup = OFFERED_RECORDS_S;
    let total = OFFERED_RECORDS_S * (seconds + 1);
    let payload = [0x5Au8; 64];
    let recs: Vec<Record<'_>> = (0..256)
        .map(|_| Record {
            timestamp_ns: 0,
            payload: &payload,
        })
        .collect();
    let mut hist = latency_histogram();
    let mut acked = 0u64;
    let spin = std::env::var("MS_BENCH_STORAGE_SPIN").is_ok();
    let deadline = Duration::from_secs(seconds + 30);
    let t0 = Instant::now();
    while acked < total {
        let now = t0.elapsed();
        if now > deadline {
            bail!("ack latency run did not finish: {acked} of {total} records durable");
        }
        let due = (now.as_nanos() as u64 / interval_ns + 1).min(total);
        let next = log.next_offset();
        if next < due {
            let k = ((due - next) as usize).min(recs.len());
            match log.append_batch(next, &recs[..k]) {
                Ok(_) | Err(AppendError::BackPressured) => {}
                Err(e) => return Err(e.into()),
            }
            log.flush()?;
        }
        // Until the next record is due, sleep in the kernel waiting for a completion instead
        // of spinning: on a small machine the spinning would take the CPU from the I/O
        // completion work it waits for.
        let next_due_ns = log.next_offset().min(total) * interval_ns;
        let now_ns = t0.elapsed().as_nanos() as u64;
        let d = if spin || next_due_ns <= now_ns {
            log.poll()?
        } else {
            log.wait_timeout(Duration::from_nanos(next_due_ns - now_ns))?
        };
        if d > acked {
            let now_ns = t0.elapsed().as_nanos() as u64;
            for o in acked.max(warmup)..d {
                hist.record(now_ns.saturating_sub(o * interval_ns).max(1))?;
            }
            acked = d;
        }
    }
    let st = log.stats();
    println!(
        "  log: {} writes ({:.1} KiB avg), {} fdatasyncs (mean {:.0} us, max {:.0} us), {} dsync writes (mean {:.0} us, max {:.0} us), {} zero-ahead writes ({} MiB)",
        st.writes,
        st.write_bytes as f64 / st.writes.max(1) as f64 / 1024.0,
        st.syncs,
        st.sync_ns_total as f64 / st.syncs.max(1) as f64 / 1e3,
        st.sync_ns_max as f64 / 1e3,
        st.dsync_writes,
        st.dsync_ns_total as f64 / st.dsync_writes.max(1) as f64 / 1e3,
        st.dsync_ns_max as f64 / 1e3,
        st.zero_writes,
        st.zero_bytes >> 20
    );
    log.close()?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(Latency::from_histogram(&hist))
}

fn fio_available() -> Option<String> {
    let out = Command::new("fio").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn fio_json(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("fio")
        .args(args)
        .arg("--output-format=json")
        .output()
        .context("run fio")?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print notes before the JSON object.
    let start = text.find('{').context("fio printed no JSON")?;
    Ok(serde_json::from_str(&text[start..])?)
}

/// fio O_DIRECT sequential write with our block size and queue depth; MB/s.
fn fio_seq(dir: &Path, total_bytes: u64) -> anyhow::Result<f64> {
    let file = dir.join("fio-seq.dat");
    let v = fio_json(&[
        "--name=seq".into(),
        format!("--filename={}", file.display()),
        "--rw=write".into(),
        format!("--bs={BLOCK_BYTES}"),
        format!("--iodepth={QUEUE_DEPTH}"),
        "--ioengine=io_uring".into(),
        "--direct=1".into(),
        "--fallocate=native".into(),
        format!("--size={total_bytes}"),
        "--end_fsync=1".into(),
    ])?;
    let _ = std::fs::remove_file(&file);
    let bw = v["jobs"][0]["write"]["bw_bytes"]
        .as_f64()
        .context("fio bw_bytes")?;
    Ok(bw / 1e6)
}

struct Floor {
    sync: [f64; 3],
    write: [f64; 3],
}

/// Runs fio with 4 KiB O_DIRECT sequential writes of a 256 MiB file in `dir` for `seconds`,
/// plus `extra` options; removes the file and returns fio's JSON report.
fn fio_4k(
    dir: &Path,
    name: &str,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let file = dir.join(format!("fio-{name}.dat"));
    let mut args = vec![
        format!("--name={name}"),
        format!("--filename={}", file.display()),
        "--rw=write".into(),
        "--bs=4k".into(),
        "--direct=1".into(),
        "--size=256M".into(),
        format!("--runtime={seconds}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let v = fio_json(&args);
    let _ = std::fs::remove_file(&file);
    v
}

/// p50/p99/p99.9 in microseconds of one latency section of a fio JSON report.
fn fio_pct(v: &serde_json::Value, section: &str, field: &str) -> [f64; 3] {
    let p = &v["jobs"][0][section][field]["percentile"];
    ["50.000000", "99.000000", "99.900000"].map(|k| p[k].as_f64().unwrap_or(f64::NAN) / 1e3)
}

/// fio 4 KiB O_DIRECT write + fdatasync; p50/p99/p99.9 in microseconds.
fn fio_floor(dir: &Path, seconds: u64) -> anyhow::Result<Floor> {
    let v = fio_4k(dir, "floor", seconds, &["--ioengine=sync", "--fdatasync=1"])?;
    Ok(Floor {
        sync: fio_pct(&v, "sync", "lat_ns"),
        write: fio_pct(&v, "write", "clat_ns"),
    })
}

/// fio 4 KiB O_DIRECT|O_DSYNC writes at queue depth 1 (each write durable when it returns,
/// write and flush in one call); p50/p99/p99.9 in microseconds. A second peer: the latency of
/// one durable write with nothing queued before it.
/// `overwrite`: fio first lays the file out with data, so the writes overwrite written blocks
/// (no extent conversion, as the log's zeroed-ahead blocks); else a fresh preallocated file.
fn fio_dsync(dir: &Path, seconds: u64, overwrite: bool) -> anyhow::Result<[f64; 3]> {
    let mut extra = vec!["--ioengine=sync", "--sync=dsync"];
    if overwrite {
        extra.push("--overwrite=1");
    }
    let v = fio_4k(dir, "dsync", seconds, &extra)?;
    Ok(fio_pct(&v, "write", "clat_ns"))
}

/// Durable writes issued on a clock, not one after another: 4 KiB O_DIRECT|O_DSYNC writes on a
/// written file, io_uring, `OPEN_LOOP_WRITES_S` per second at queue depth 32 (enough that none
/// waits for a free slot below a 3 ms stall). Each write's latency counts from its issue, so a
/// device stall counts against every write due during it, as it does against every record in
/// the ack run. The queue-depth-1 peers above issue the next write only when the last one
/// returns: a stall delays one write, and the writes that would have been due meanwhile are
/// never issued, so their p99 leaves stalls out (coordinated omission). p50/p99/p99.9 in us.
fn fio_open_loop(dir: &Path, seconds: u64) -> anyhow::Result<[f64; 3]> {
    let rate = format!("--rate_iops={OPEN_LOOP_WRITES_S}");
    let v = fio_4k(
        dir,
        "open",
        seconds,
        &[
            "--ioengine=io_uring",
            "--iodepth=32",
            "--lat_percentiles=1",
            "--sync=dsync",
            "--overwrite=1",
            &rate,
            "--time_based",
        ],
    )?;
    Ok(fio_pct(&v, "write", "lat_ns"))
}

/// Median of the fio throughput rounds, if fio ran.
fn fio_med_of(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| Spread::of(v).median)
}

/// Round counts and sizes of one run.
struct Plan {
    rounds: usize,
    total_bytes: u64,
    ack_rounds: usize,
    ack_seconds: u64,
    floor_seconds: u64,
}

impl Plan {
    fn for_run(quick: bool) -> Plan {
        let mut p = if quick {
            Plan {
                rounds: 1,
                total_bytes: 512 << 20,
                ack_rounds: 3,
                ack_seconds: 3,
                floor_seconds: 3,
            }
        } else {
            Plan {
                rounds: 3,
                total_bytes: 2 << 30,
                ack_rounds: 5,
                ack_seconds: 8,
                floor_seconds: 6,
            }
        };
        // MS_BENCH_STORAGE_PARTS=ack skips the append runs (for tuning the ack path).
        if std::env::var("MS_BENCH_STORAGE_PARTS").as_deref() == Ok("ack") {
            p.rounds = 0;
        }
        p
    }
}

/// Every append round's figures (64 B and 1 KiB records, fio's sequential write).
#[derive(Default)]
struct AppendRounds {
    a64: Vec<f64>,
    a1k: Vec<f64>,
    fio_mb: Vec<f64>,
    r64: Vec<f64>,
    r1k: Vec<f64>,
    p64: Vec<f64>,
    p1k: Vec<f64>,
    backend: &'static str,
    backing: String,
}

/// Every durable-ack round's figures and its fio peers' (empty without fio).
#[derive(Default)]
struct AckRounds {
    lats: Vec<Latency>,
    floors: Vec<Floor>,
    ratios: Vec<f64>,
    dsyncs: Vec<[f64; 3]>,
    overwrites: Vec<[f64; 3]>,
    opens: Vec<[f64; 3]>,
}

impl AckRounds {
    fn ack(&self, f: impl Fn(&Latency) -> u64) -> Spread {
        Spread::of(
            &self
                .lats
                .iter()
                .map(|l| f(l) as f64 / 1e3)
                .collect::<Vec<_>>(),
        )
    }

    /// Median over rounds of the floor's fdatasync (`write == false`) or write percentile `i`.
    fn floor(&self, i: usize, write: bool) -> Option<f64> {
        (!self.floors.is_empty()).then(|| {
            let v: Vec<f64> = self
                .floors
                .iter()
                .map(|f| if write { f.write[i] } else { f.sync[i] })
                .collect();
            Spread::of(&v).median
        })
    }

    fn ratio_spread(&self) -> Option<Spread> {
        (!self.ratios.is_empty()).then(|| Spread::of(&self.ratios))
    }
}

/// Median over rounds of percentile `i` of a fio peer, if fio ran.
fn med_of(v: &[[f64; 3]], i: usize) -> Option<f64> {
    (!v.is_empty()).then(|| Spread::of(&v.iter().map(|d| d[i]).collect::<Vec<_>>()).median)
}

pub fn run(args: &SuiteArgs) -> anyhow::Result<serde_json::Value> {
    let root = PathBuf::from(format!("/var/tmp/ms-bench-storage-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let guard = BenchDir(root.clone());
    let (magic, fs) = storage_nvme::io::fs_type(&root)?;
    println!(
        "storage suite: files in {} on {fs} (statfs f_type {magic:#x}); removed at the end",
        root.display()
    );
    if fs == "tmpfs" {
        println!("warning: tmpfs is not a disk; O_DIRECT figures would be meaningless");
    }
    let fio = fio_available();
    match &fio {
        Some(v) => println!("peer: {v}"),
        None => println!("fio not found: install it with `apt-get install fio` (or run scripts/setup.sh); fio figures are null"),
    }
    let plan = Plan::for_run(args.quick);
    let append = append_rounds(&root, &plan, fio.is_some())?;
    let ack = ack_rounds(&root, &plan, fio.is_some())?;
    drop(guard);
    print_targets(&append, &ack);
    let mut v = json!({
        "suite": "storage",
        "quick": args.quick,
        "fs": fs,
        "backend": append.backend,
        "write_ring": append.backing,
        "block_bytes": BLOCK_BYTES,
        "queue_depth": QUEUE_DEPTH,
    });
    // (Several objects: one json! of every field exceeds the macro's recursion limit.)
    for part in [append_json(&append), ack_json(&ack, plan.ack_rounds)] {
        if let (Some(m), serde_json::Value::Object(extra)) = (v.as_object_mut(), part) {
            m.extend(extra);
        }
    }
    Ok(v)
}

/// Interleaved append rounds: 64 B records, 1 KiB records, fio's sequential write.
fn append_rounds(root: &Path, plan: &Plan, fio: bool) -> anyhow::Result<AppendRounds> {
    let (rounds, total_bytes) = (plan.rounds, plan.total_bytes);
    println!("append: {rounds} interleaved round(s) of {} MiB per run; writes {} KiB x {QUEUE_DEPTH} in flight", total_bytes >> 20, BLOCK_BYTES >> 10);
    let log_dir = root.join("log");
    let mut out = AppendRounds::default();
    for round in 0..rounds {
        let (r, b, bk) = append_run(&log_dir, 64, total_bytes)?;
        (out.backend, out.backing) = (b, bk);
        println!("round {round}: append 64 B records   {:>8.0} MB/s  {:>10.0} records/s  ({:.0} MB/s payload)", r.mb_s, r.records_s, r.payload_mb_s);
        out.a64.push(r.mb_s);
        out.r64.push(r.records_s);
        out.p64.push(r.payload_mb_s);
        let (r, _, _) = append_run(&log_dir, 1024, total_bytes)?;
        println!("round {round}: append 1 KiB records  {:>8.0} MB/s  {:>10.0} records/s  ({:.0} MB/s payload)", r.mb_s, r.records_s, r.payload_mb_s);
        out.a1k.push(r.mb_s);
        out.r1k.push(r.records_s);
        out.p1k.push(r.payload_mb_s);
        if fio {
            let f = fio_seq(root, total_bytes)?;
            println!("round {round}: fio O_DIRECT seq write {:>8.0} MB/s  (bs 1 MiB, iodepth {QUEUE_DEPTH}, io_uring)", f);
            out.fio_mb.push(f);
        }
    }
    if rounds > 0 {
        println!("backend {}, write ring on {}", out.backend, out.backing);
    }
    Ok(out)
}

/// Durable-ack latency and the fdatasync floor, interleaved over rounds: each round's ratio
/// compares two runs a few seconds apart, and the reported figures are medians over rounds.
fn ack_rounds(root: &Path, plan: &Plan, fio: bool) -> anyhow::Result<AckRounds> {
    let (ack_seconds, floor_seconds) = (plan.ack_seconds, plan.floor_seconds);
    println!(
        "durable ack vs fdatasync floor: {} interleaved round(s) of {ack_seconds} s + {floor_seconds} s",
        plan.ack_rounds
    );
    let log_dir = root.join("log");
    let mut out = AckRounds::default();
    for round in 0..plan.ack_rounds {
        let lat = ack_latency_run(&log_dir, ack_seconds)?;
        println!("round {round}: {}", lat.line("durable ack @100k rec/s"));
        if fio {
            fio_peers_round(
                root,
                round,
                floor_seconds,
                lat.p99_ns as f64 / 1e3,
                &mut out,
            )?;
        }
        out.lats.push(lat);
    }
    Ok(out)
}

/// One round of the fio peers of the durable ack (whose p99 was `ack_p99_us`): the fdatasync
/// floor, O_DSYNC writes to a fresh and to a written file, and open-loop O_DSYNC writes.
fn fio_peers_round(
    root: &Path,
    round: usize,
    seconds: u64,
    ack_p99_us: f64,
    out: &mut AckRounds,
) -> anyhow::Result<()> {
    let f = fio_floor(root, seconds)?;
    println!("round {round}: fio 4 KiB O_DIRECT write + fdatasync: fdatasync p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us; write p50 {:.0} us  p99 {:.0} us", f.sync[0], f.sync[1], f.sync[2], f.write[0], f.write[1]);
    let r = ack_p99_us / f.sync[1];
    println!("round {round}: ack p99 / fdatasync p99 = {r:.2}");
    out.ratios.push(r);
    out.floors.push(f);
    let d = fio_dsync(root, seconds, false)?;
    println!("round {round}: fio 4 KiB O_DIRECT|O_DSYNC write (durable write, qd 1, fresh file): p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us; ack p99 / this p99 = {:.2}", d[0], d[1], d[2], ack_p99_us / d[1]);
    out.dsyncs.push(d);
    let o = fio_dsync(root, seconds, true)?;
    println!("round {round}: fio 4 KiB O_DIRECT|O_DSYNC write (durable write, qd 1, written file): p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us; ack p99 / this p99 = {:.2}", o[0], o[1], o[2], ack_p99_us / o[1]);
    out.overwrites.push(o);
    let ol = fio_open_loop(root, seconds)?;
    println!("round {round}: fio 4 KiB O_DIRECT|O_DSYNC writes issued open-loop at {OPEN_LOOP_WRITES_S}/s (qd 32, written file): p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us; ack p99 / this p99 = {:.2}", ol[0], ol[1], ol[2], ack_p99_us / ol[1]);
    out.opens.push(ol);
    Ok(())
}

/// The suite's targets line: append vs fio, ack vs the floor, ack vs the open-loop peer.
fn print_targets(append: &AppendRounds, ack: &AckRounds) {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut summary = Vec::new();
    if let (Some(f), false) = (fio_med_of(&append.fio_mb), append.a1k.is_empty()) {
        let r = Spread::of(&append.a1k).median / f;
        summary.push(format!(
            "append >= 0.9x fio: {r:.2}x ({})",
            verdict(r >= 0.9)
        ));
    }
    if let Some(r) = ack.ratio_spread() {
        summary.push(format!(
            "ack p99 <= 1.5x fdatasync p99: {:.2}x ({})",
            r.median,
            verdict(r.median <= 1.5)
        ));
    }
    if let Some(d) = med_of(&ack.opens, 1) {
        summary.push(format!(
            "context: ack p99 / open-loop fio durable-write p99 = {:.2}x",
            ack.ack(|l| l.p99_ns).median / d
        ));
    }
    if !summary.is_empty() {
        println!("targets: {}", summary.join("; "));
    }
}

fn append_json(a: &AppendRounds) -> serde_json::Value {
    let s64 = Spread::of(&a.a64);
    let s1k = Spread::of(&a.a1k);
    let sfio = Spread::of(&a.fio_mb);
    let fio_med = fio_med_of(&a.fio_mb);
    let ratio = |x: f64| fio_med.map(|f| x / f);
    json!({
        "append_mb_s": s1k.median,
        "append_records_s": Spread::of(&a.r1k).median,
        "append_payload_mb_s": Spread::of(&a.p1k).median,
        "append_64b_mb_s": s64.median,
        "append_64b_records_s": Spread::of(&a.r64).median,
        "append_64b_payload_mb_s": Spread::of(&a.p64).median,
        "append_mb_s_spread": s1k,
        "append_64b_mb_s_spread": s64,
        "fio_mb_s": fio_med,
        "fio_mb_s_spread": fio_med.map(|_| sfio),
        "ratio_append_to_fio": ratio(s1k.median),
        "ratio_append_64b_to_fio": ratio(s64.median),
    })
}

fn ack_json(a: &AckRounds, rounds: usize) -> serde_json::Value {
    let ack_p99 = a.ack(|l| l.p99_ns);
    let ratio_spread = a.ratio_spread();
    let (dmed, omed, olmed) = (
        |i| med_of(&a.dsyncs, i),
        |i| med_of(&a.overwrites, i),
        |i| med_of(&a.opens, i),
    );
    let mut v = json!({
        "offered_records_s": OFFERED_RECORDS_S,
        "ack_rounds": rounds,
        "ack_p50_us": a.ack(|l| l.p50_ns).median,
        "ack_p99_us": ack_p99.median,
        "ack_p99_us_spread": ack_p99,
        "ack_p999_us": a.ack(|l| l.p999_ns).median,
        "ack_max_us": a.ack(|l| l.max_ns).median,
        "fsync_floor_p50_us": a.floor(0, false),
        "fsync_floor_p99_us": a.floor(1, false),
        "fsync_floor_p999_us": a.floor(2, false),
        "fio_write4k_p50_us": a.floor(0, true),
        "fio_write4k_p99_us": a.floor(1, true),
        "ratio_ack_p99_to_floor": ratio_spread.map(|r| r.median),
        "ratio_ack_p99_to_floor_spread": ratio_spread,
    });
    let peers = json!({
        "fio_dsync_write_p50_us": dmed(0),
        "fio_dsync_write_p99_us": dmed(1),
        "ratio_ack_p99_to_dsync_write_p99": dmed(1).map(|d| ack_p99.median / d),
        "fio_dsync_overwrite_p50_us": omed(0),
        "fio_dsync_overwrite_p99_us": omed(1),
        "ratio_ack_p99_to_dsync_overwrite_p99": omed(1).map(|d| ack_p99.median / d),
        "fio_open_loop_writes_s": OPEN_LOOP_WRITES_S,
        "fio_open_loop_p50_us": olmed(0),
        "fio_open_loop_p99_us": olmed(1),
        "fio_open_loop_p999_us": olmed(2),
        "ratio_ack_p99_to_open_loop_p99": olmed(1).map(|d| ack_p99.median / d),
    });
    if let (Some(m), serde_json::Value::Object(extra)) = (v.as_object_mut(), peers) {
        m.extend(extra);
    }
    v
}

pub fn child(role: &str, _rest: &[String]) -> anyhow::Result<()> {
    bail!("the storage suite starts no child processes (got role {role:?})")
}
