//! Cutting a log's suffix (`Log::close_and_truncate`) together with its leader-epoch history:
//! the cut is durable across reopen, rounds down to a batch boundary, and every state a crash
//! can leave in the middle of it reopens as the old log (before the intent is durable) or the
//! truncated one (after): each intermediate state built by hand, and a real `ms-log truncate`
//! killed with SIGKILL at random points. Retention trims the epoch history's start.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use storage_nvme::epoch::EpochEntry;
use storage_nvme::layout::{TRUNCATE_FILE_NAME, TRUNCATE_TEMP_FILE_NAME};
use storage_nvme::segment::{list_dir, offset_index_path, segment_path, time_index_path};
use storage_nvme::truncate::encode_intent;
use storage_nvme::{AlignedBuf, Log, LogTruncateError, Record, RecoveryAction};

const PER_BATCH: usize = 4;

/// Small segments, so that 1200 records span several.
fn cfg() -> storage_nvme::LogConfig {
    storage_nvme::LogConfig {
        segment_bytes: 64 << 10,
        ..small_config()
    }
}

/// A log of several segments with epochs 1 (from 0), 4 (from 400) and 7 (from 800); returns
/// its next offset.
fn build(dir: &Path) -> u64 {
    let (mut log, _) = Log::open(dir, cfg()).unwrap();
    log.assign_epoch(1, 0).unwrap();
    append_pattern(&mut log, 100, PER_BATCH);
    log.assign_epoch(4, 400).unwrap();
    append_pattern(&mut log, 100, PER_BATCH);
    log.assign_epoch(7, 800).unwrap();
    let end = append_pattern(&mut log, 100, PER_BATCH);
    log.sync().unwrap();
    log.close().unwrap();
    end
}

fn epochs(entries: &[(u64, u64)]) -> Vec<EpochEntry> {
    entries
        .iter()
        .map(|&(epoch, start_offset)| EpochEntry {
            epoch,
            start_offset,
        })
        .collect()
}

/// Reads records `[from, end)` of a log whose records from `from` on carry payload
/// `new-<offset>`.
fn check_new_records(log: &Log, from: u64, end: u64) {
    let mut r = log.reader();
    r.seek_offset(from).unwrap();
    let mut buf = AlignedBuf::new(1 << 20).unwrap();
    let mut next = from;
    while let Some(b) = r.read_batch(&mut buf).unwrap() {
        for rec in b.records() {
            assert_eq!(rec.offset, next);
            assert_eq!(rec.payload, format!("new-{next}").as_bytes());
            next += 1;
        }
    }
    assert_eq!(next, end);
}

#[test]
fn truncation_cuts_records_and_epochs_and_survives_reopen() {
    let dir = tempdir();
    let end = build(dir.path());
    assert_eq!(end, 1200);
    let segments_before = list_dir(dir.path()).unwrap().segments.len();
    assert!(segments_before >= 3, "the log spans several segments");

    let (log, _) = Log::open(dir.path(), cfg()).unwrap();
    assert_eq!(log.end_offset_for(4), Some((4, 800)));
    // 600 is a batch boundary (batches of 4): exactly there.
    assert_eq!(log.close_and_truncate(600).unwrap(), 600);
    assert!(!dir.path().join(TRUNCATE_FILE_NAME).exists());

    let (mut log, report) = Log::open(dir.path(), cfg()).unwrap();
    assert_eq!(report.next_offset, 600);
    assert!(list_dir(dir.path()).unwrap().segments.len() < segments_before);
    assert_eq!(log.epochs().entries(), &epochs(&[(1, 0), (4, 400)])[..]);
    assert_eq!(verify_pattern(&mut log.reader(), 0), 600);
    assert_eq!(log.end_offset_for(4), Some((4, 600)));

    // A new leader's records land at the same offsets; stale bytes never come back.
    log.assign_epoch(9, 600).unwrap();
    for o in 600..700u64 {
        let p = format!("new-{o}");
        let r = [Record {
            timestamp_ns: o,
            payload: p.as_bytes(),
        }];
        log.append_batch(o, &r).unwrap();
    }
    log.sync().unwrap();
    log.close().unwrap();
    let (log, report) = Log::open(dir.path(), cfg()).unwrap();
    assert_eq!(report.next_offset, 700);
    check_new_records(&log, 600, 700);
    assert_eq!(
        log.epochs().entries(),
        &epochs(&[(1, 0), (4, 400), (9, 600)])[..]
    );
}

#[test]
fn a_cut_inside_a_batch_rounds_down_and_the_bounds_are_checked() {
    let dir = tempdir();
    build(dir.path());
    let (log, _) = Log::open(dir.path(), cfg()).unwrap();
    // 802 is inside the batch [800, 804): the whole batch goes, and epoch 7 with it.
    assert_eq!(log.close_and_truncate(802).unwrap(), 800);
    let (log, _) = Log::open(dir.path(), cfg()).unwrap();
    assert_eq!(log.next_offset(), 800);
    assert_eq!(log.epochs().entries(), &epochs(&[(1, 0), (4, 400)])[..]);
    // At or past the end: nothing is cut.
    assert_eq!(log.close_and_truncate(5_000).unwrap(), 800);
    let (log, _) = Log::open(dir.path(), cfg()).unwrap();
    assert_eq!(log.next_offset(), 800);
    // Down to the very start: an empty log at its start offset.
    assert_eq!(log.close_and_truncate(0).unwrap(), 0);
    let (log, report) = Log::open(dir.path(), cfg()).unwrap();
    assert_eq!((report.start_offset, report.next_offset), (0, 0));
    assert!(log.epochs().entries().is_empty());
    drop(log);

    let mut cfg = cfg();
    cfg.initial_offset = 50;
    let dir = tempdir();
    let (log, _) = Log::open(dir.path(), cfg).unwrap();
    let err = log.close_and_truncate(10).unwrap_err();
    assert!(
        matches!(
            err,
            LogTruncateError::BelowStart {
                end_offset: 10,
                start_offset: 50
            }
        ),
        "{err}"
    );
    assert!(
        !dir.path().join(TRUNCATE_FILE_NAME).exists(),
        "refused before any change"
    );
}

/// Every intermediate state of a truncation to 600, as a kill -9 could leave it, built by hand
/// from a copy of the log; `open` must give the old log or the finished cut.
#[test]
fn every_crash_point_reopens_as_the_old_or_the_truncated_log() {
    let dir = tempdir();
    let end = build(dir.path());
    let cut = 600u64;
    let segments = list_dir(dir.path()).unwrap().segments;
    let later: Vec<u64> = segments.iter().copied().filter(|&b| b > cut).collect();
    assert!(!later.is_empty());

    type Damage = fn(&Path, &[u64]);
    let states: [(&str, bool, Damage); 5] = [
        (
            "intent half written (temporary file only)",
            false,
            |d, _| {
                fs::write(d.join(TRUNCATE_TEMP_FILE_NAME), &encode_intent(600)[..10]).unwrap();
            },
        ),
        ("intent durable, nothing else", true, |d, _| {
            fs::write(d.join(TRUNCATE_FILE_NAME), encode_intent(600)).unwrap();
        }),
        ("newest segment deleted", true, |d, later| {
            fs::write(d.join(TRUNCATE_FILE_NAME), encode_intent(600)).unwrap();
            let newest = *later.last().unwrap();
            for p in [offset_index_path(d, newest), time_index_path(d, newest)] {
                let _ = fs::remove_file(p);
            }
            fs::remove_file(segment_path(d, newest)).unwrap();
        }),
        (
            "later segments deleted, holding segment's indexes gone",
            true,
            |d, later| {
                fs::write(d.join(TRUNCATE_FILE_NAME), encode_intent(600)).unwrap();
                for &b in later {
                    for p in [offset_index_path(d, b), time_index_path(d, b)] {
                        let _ = fs::remove_file(p);
                    }
                    fs::remove_file(segment_path(d, b)).unwrap();
                }
                let holding = list_dir(d).unwrap().segments.last().copied().unwrap();
                for p in [offset_index_path(d, holding), time_index_path(d, holding)] {
                    let _ = fs::remove_file(p);
                }
            },
        ),
        ("everything done but the intent's removal", true, |d, _| {
            let (log, _) = Log::open(d, cfg()).unwrap();
            assert_eq!(log.close_and_truncate(600).unwrap(), 600);
            fs::write(d.join(TRUNCATE_FILE_NAME), encode_intent(600)).unwrap();
        }),
    ];
    for (name, truncated, damage) in states {
        let copy = tempdir();
        for e in fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
        damage(copy.path(), &later);
        let (log, report) =
            Log::open(copy.path(), cfg()).unwrap_or_else(|e| panic!("{name}: reopen failed: {e}"));
        let want_end = if truncated { cut } else { end };
        assert_eq!(report.next_offset, want_end, "{name}");
        assert_eq!(verify_pattern(&mut log.reader(), 0), want_end, "{name}");
        let want_epochs = if truncated {
            epochs(&[(1, 0), (4, 400)])
        } else {
            epochs(&[(1, 0), (4, 400), (7, 800)])
        };
        assert_eq!(log.epochs().entries(), &want_epochs[..], "{name}");
        assert_eq!(
            report
                .actions
                .iter()
                .any(|a| matches!(a, RecoveryAction::TruncationFinished { new_end: 600, .. })),
            truncated,
            "{name}: {:?}",
            report.actions
        );
        assert!(!copy.path().join(TRUNCATE_FILE_NAME).exists(), "{name}");
        assert!(
            !copy.path().join(TRUNCATE_TEMP_FILE_NAME).exists(),
            "{name}"
        );
    }
}

#[test]
fn a_damaged_intent_is_an_error_naming_the_file() {
    let dir = tempdir();
    build(dir.path());
    let mut b = encode_intent(600);
    b[20] ^= 0xff;
    fs::write(dir.path().join(TRUNCATE_FILE_NAME), b).unwrap();
    let msg = match Log::open(dir.path(), cfg()) {
        Ok(_) => panic!("a damaged intent must not be ignored"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains(TRUNCATE_FILE_NAME) && msg.contains("checksum"),
        "{msg}"
    );
}

#[test]
fn epochs_past_a_lost_tail_are_trimmed_at_open() {
    let dir = tempdir();
    let (mut log, _) = Log::open(dir.path(), cfg()).unwrap();
    log.assign_epoch(1, 0).unwrap();
    append_pattern(&mut log, 10, PER_BATCH);
    log.sync().unwrap();
    // Assigned at the log end; no record of epoch 3 ever becomes durable.
    log.assign_epoch(3, 40).unwrap();
    assert!(log.assign_epoch(5, 41).is_err(), "past the log end");
    log.close().unwrap();
    let (log, report) = Log::open(dir.path(), cfg()).unwrap();
    assert_eq!(log.epochs().entries(), &epochs(&[(1, 0)])[..]);
    assert!(report
        .actions
        .contains(&RecoveryAction::EpochsTrimmed { dropped: 1 }));
}

/// A real `ms-log truncate` process killed with SIGKILL at random points of the cut: the next
/// open gives the old log or the truncated one, record-exact, with the matching epochs.
#[test]
fn kill_9_during_truncation_leaves_the_old_or_the_truncated_log() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    const ROUNDS: u64 = 40;
    let seed = std::env::var("MS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7e11_cafe_u64);
    eprintln!("truncation crash test seed {seed} (set MS_CRASH_SEED to replay)");
    let mut x = seed | 1;
    let mut below = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let template = tempdir();
    let end = build(template.path());
    let all_epochs = [(1, 0), (4, 400), (7, 800)];
    let (mut old, mut cut_done, mut finished_at_open) = (0, 0, 0);
    for round in 0..ROUNDS {
        let to = 1 + below(end - 1);
        let want = to / PER_BATCH as u64 * PER_BATCH as u64;
        let copy = tempdir();
        for e in fs::read_dir(template.path()).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_ms-log"))
            .arg("truncate")
            .arg(copy.path())
            .args(["--to", &to.to_string()])
            .args(["--segment-bytes", &cfg().segment_bytes.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ms-log truncate");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(first, format!("opened {end}"), "round {round}");
        std::thread::sleep(Duration::from_micros(below(120_000)));
        child.kill().expect("kill -9");
        child.wait().expect("wait");

        let (log, report) = Log::open(copy.path(), cfg())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let got = report.next_offset;
        assert!(
            got == end || got == want,
            "round {round}: cut to {to} left end {got}, expected {end} or {want}"
        );
        assert_eq!(verify_pattern(&mut log.reader(), 0), got, "round {round}");
        let want_epochs: Vec<(u64, u64)> = all_epochs
            .iter()
            .copied()
            .filter(|&(_, start)| start < got)
            .collect();
        assert_eq!(
            log.epochs().entries(),
            &epochs(&want_epochs)[..],
            "round {round}"
        );
        if report
            .actions
            .iter()
            .any(|a| matches!(a, RecoveryAction::TruncationFinished { .. }))
        {
            finished_at_open += 1;
        }
        if got == end {
            old += 1;
        } else {
            cut_done += 1;
        }
    }
    eprintln!(
        "{ROUNDS} kills: {old} left the old log, {cut_done} the truncated one \
         ({finished_at_open} finished by the next open)"
    );
}

#[test]
fn retention_trims_the_epoch_history_from_the_start() {
    let dir = tempdir();
    build(dir.path());
    let mut cfg = cfg();
    cfg.retention.total_bytes_max = Some(2 * cfg.segment_bytes);
    let (mut log, _) = Log::open(dir.path(), cfg.clone()).unwrap();
    let report = log.enforce_retention(0).unwrap();
    assert!(!report.deleted.is_empty());
    let start = log.start_offset();
    assert!(
        start > 400,
        "retention kept only the newest segments (start {start})"
    );
    // Epoch 1 is gone; the epoch holding the new start begins there.
    let want: Vec<(u64, u64)> = if start < 800 {
        vec![(4, start), (7, 800)]
    } else {
        vec![(7, start)]
    };
    assert_eq!(log.epochs().entries(), &epochs(&want)[..]);
    log.close().unwrap();
    let (log, _) = Log::open(dir.path(), cfg).unwrap();
    assert_eq!(log.epochs().entries(), &epochs(&want)[..]);
}
