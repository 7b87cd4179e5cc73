//! Crash test: a child `ms-log append` process is killed with SIGKILL at random points, 100
//! rounds; after each, recovery must keep every record the child reported durable, byte-exact,
//! and the log must be exactly a prefix of what the child appended (only a torn tail dropped).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use storage_nvme::{Log, RecoveryAction};

const ROUNDS: u32 = 100;
/// Upper bound on the whole test, far above the expected ~20 s, so a hang cannot go on forever.
const TEST_TIME_MAX: Duration = Duration::from_secs(600);

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn kill_9_at_random_points_loses_no_durable_record() {
    let seed = std::env::var("MS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    eprintln!("crash test seed {seed} (set MS_CRASH_SEED to replay)");
    let mut rng = Rng(seed | 1);
    let dir = tempdir();
    let exe = env!("CARGO_BIN_EXE_ms-log");
    let cfg = small_config();
    let started = Instant::now();
    let mut verified_to = 0u64;
    let mut torn_tails = 0u32;
    let mut max_durable_seen = 0u64;
    for round in 0..ROUNDS {
        assert!(
            started.elapsed() < TEST_TIME_MAX,
            "crash test ran out of time at round {round}"
        );
        let batch_records = 1 + rng.below(24);
        let mut cmd = Command::new(exe);
        cmd.arg("append").arg(dir.path()).args([
            "--records",
            "100000",
            "--seed",
            &SEED.to_string(),
            "--payload-max",
            &PAYLOAD_MAX.to_string(),
        ]);
        cmd.args([
            "--segment-bytes",
            &cfg.segment_bytes.to_string(),
            "--buffer-bytes",
            &cfg.write_buffer_bytes.to_string(),
            "--write-bytes",
            &cfg.write_bytes_max.to_string(),
        ]);
        cmd.args(["--batch-records", &batch_records.to_string()]);
        cmd.args([
            "--checkpoint-bytes",
            &cfg.checkpoint_interval_bytes.to_string(),
        ]);
        if round % 5 == 4 {
            cmd.arg("--pwrite");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ms-log");
        let durable = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().expect("stdout");
        let d = durable.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(v) = line
                    .strip_prefix("durable ")
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    d.fetch_max(v, Ordering::SeqCst);
                }
            }
        });
        std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        child.kill().expect("kill -9");
        child.wait().expect("wait");
        reader.join().expect("stdout reader");
        let reported = durable.load(Ordering::SeqCst);
        max_durable_seen = max_durable_seen.max(reported);

        let (log, report) = Log::open(dir.path(), cfg.clone())
            .unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        assert!(
            report.next_offset >= max_durable_seen,
            "round {round}: recovered up to {} but {} was reported durable",
            report.next_offset,
            max_durable_seen
        );
        for a in &report.actions {
            match a {
                RecoveryAction::TornTailTruncated { position, .. } => {
                    assert!(*position >= storage_nvme::layout::SEGMENT_HEADER_BYTES);
                    torn_tails += 1;
                }
                RecoveryAction::IndexRebuilt { .. } | RecoveryAction::OrphanIndexRemoved { .. } => {
                }
                RecoveryAction::TruncationFinished { .. }
                | RecoveryAction::EpochsTrimmed { .. } => {
                    panic!("round {round}: this test never truncates or assigns epochs: {a:?}")
                }
            }
        }
        // Everything present is exactly what the child appended: re-check a margin before the
        // previous end too, so damage to older bytes would show.
        let from = verified_to.saturating_sub(2_000);
        let end = verify_pattern(&mut log.reader(), from);
        assert_eq!(
            end, report.next_offset,
            "round {round}: reader end differs from recovery"
        );
        verified_to = end;
        log.close().expect("close");
    }
    // Full pass with the operator tool: every record, CRC and pattern.
    let out = Command::new(exe)
        .arg("verify")
        .arg(dir.path())
        .args([
            "--seed",
            &SEED.to_string(),
            "--payload-max",
            &PAYLOAD_MAX.to_string(),
        ])
        .output()
        .expect("ms-log verify");
    assert!(
        out.status.success(),
        "ms-log verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("records={verified_to} ")),
        "verify saw {text}"
    );
    eprintln!(
        "{ROUNDS} rounds, {verified_to} records, {torn_tails} torn tails cut, {:?}",
        started.elapsed()
    );
}
