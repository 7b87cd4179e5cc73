//! Behaviour of the log API on real files: appended vs durable, group commit, segment rolls,
//! reopen, tailing readers, seeks, retention, both backends.

mod common;

use std::time::Duration;

use common::*;
use storage_nvme::{AlignedBuf, AppendError, IoMode, Log, LogConfig, Record, RetentionPolicy};

#[test]
fn appended_is_not_durable_until_flushed() {
    let dir = tempdir();
    let (mut log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(report.next_offset, 0);
    let p = log
        .append_batch(
            0,
            &[Record {
                timestamp_ns: 5,
                payload: b"one",
            }],
        )
        .unwrap();
    assert_eq!((p.base_offset, p.next_offset), (0, 1));
    assert_eq!(log.next_offset(), 1);
    // Without a flush nothing becomes durable, however often we poll.
    for _ in 0..10 {
        assert_eq!(log.poll().unwrap(), 0);
    }
    assert_eq!(log.durable_offset(), 0);
    assert_eq!(log.sync().unwrap(), 1);
    assert_eq!(log.durable_offset(), 1);
}

#[test]
fn offsets_are_checked_and_oversized_batches_refused() {
    let dir = tempdir();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let r = [Record {
        timestamp_ns: 1,
        payload: b"x",
    }];
    assert_eq!(
        log.append_batch(3, &r),
        Err(AppendError::OffsetMismatch {
            expected: 0,
            got: 3
        })
    );
    let big = vec![0u8; 64 << 10];
    assert!(matches!(
        log.append_batch(
            0,
            &[Record {
                timestamp_ns: 1,
                payload: &big
            }]
        ),
        Err(AppendError::TooLarge { .. })
    ));
    assert!(log.append_batch(0, &[]).is_err());
}

#[test]
fn pending_limit_back_pressures_until_durable() {
    let dir = tempdir();
    let cfg = LogConfig {
        batches_pending_max: 4,
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
    let r = [Record {
        timestamp_ns: 1,
        payload: b"abc",
    }];
    for i in 0..4 {
        log.append_batch(i, &r).unwrap();
    }
    assert_eq!(log.append_batch(4, &r), Err(AppendError::BackPressured));
    log.sync().unwrap();
    log.append_batch(4, &r).unwrap();
}

#[test]
fn rolls_segments_and_reopens_with_every_record() {
    for mode in [IoMode::Auto, IoMode::Pwrite] {
        let dir = tempdir();
        let cfg = LogConfig {
            io_mode: mode,
            ..small_config()
        };
        let (mut log, _) = Log::open(dir.path(), cfg.clone()).unwrap();
        let end = append_pattern(&mut log, 900, 7);
        assert_eq!(log.sync().unwrap(), end);
        assert_eq!(verify_pattern(&mut log.reader(), 0), end);
        log.close().unwrap();
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count();
        assert!(segments >= 3, "expected several segments, got {segments}");
        let (log, report) = Log::open(dir.path(), cfg).unwrap();
        assert_eq!(report.next_offset, end);
        assert!(
            report.actions.is_empty(),
            "clean reopen needs no action: {:?}",
            report.actions
        );
        assert_eq!(verify_pattern(&mut log.reader(), 0), end);
        // Seeks into the middle land on the exact record.
        let mut r = log.reader();
        r.seek_offset(end / 2).unwrap();
        let mut buf = AlignedBuf::new(64 << 10).unwrap();
        let b = r.read_batch(&mut buf).unwrap().unwrap();
        assert_eq!(b.records().next().unwrap().offset, end / 2);
    }
}

#[test]
fn tailing_reader_follows_durable_batches_from_another_thread() {
    let dir = tempdir();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut reader = log.reader();
    const TOTAL: u64 = 3_000;
    let t = std::thread::spawn(move || {
        let mut buf = AlignedBuf::new(64 << 10).unwrap();
        let mut next = 0u64;
        // Bounded: 20 s of polling at most.
        for _ in 0..200_000 {
            if next == TOTAL {
                break;
            }
            match reader.read_batch(&mut buf).unwrap() {
                Some(b) => {
                    assert!(
                        b.next_offset() <= reader.end_offset(),
                        "served a batch that is not durable"
                    );
                    for r in b.records() {
                        assert_eq!(r.offset, next);
                        assert_eq!(r.payload, next.to_le_bytes());
                        next += 1;
                    }
                }
                None => std::thread::sleep(Duration::from_micros(100)),
            }
        }
        next
    });
    for o in (0..TOTAL).step_by(10) {
        let payloads: Vec<[u8; 8]> = (o..o + 10).map(|x| x.to_le_bytes()).collect();
        let recs: Vec<Record<'_>> = payloads
            .iter()
            .map(|p| Record {
                timestamp_ns: o,
                payload: p,
            })
            .collect();
        while let Err(AppendError::BackPressured) = log.append_batch(o, &recs) {
            log.poll().unwrap();
        }
        log.flush().unwrap();
        log.poll().unwrap();
    }
    log.sync().unwrap();
    assert_eq!(t.join().unwrap(), TOTAL);
}

#[test]
fn seek_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempdir();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let end = append_pattern(&mut log, 300, 5);
    log.sync().unwrap();
    log.close().unwrap();
    let (log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut r = log.reader();
    let mut buf = AlignedBuf::new(64 << 10).unwrap();
    for target in [0, 1, 777, end / 2, end - 1] {
        let ts = storage_nvme::pattern::timestamp_ns(target);
        r.seek_timestamp(ts).unwrap();
        let b = r.read_batch(&mut buf).unwrap().unwrap();
        assert_eq!(b.records().next().unwrap().offset, target);
        // Between two timestamps: the next record.
        r.seek_timestamp(ts + 1).unwrap();
        match r.read_batch(&mut buf).unwrap() {
            Some(b) => assert_eq!(b.records().next().unwrap().offset, target + 1),
            None => assert_eq!(target + 1, end),
        }
    }
}

#[test]
fn retention_by_size_and_age_never_deletes_the_active_segment() {
    let dir = tempdir();
    let mut cfg = small_config();
    cfg.retention = RetentionPolicy {
        total_bytes_max: Some(3 * cfg.segment_bytes),
        age_ns_max: None,
    };
    let (mut log, _) = Log::open(dir.path(), cfg.clone()).unwrap();
    let end = append_pattern(&mut log, 800, 7);
    log.sync().unwrap();
    let rep = log.enforce_retention(0).unwrap();
    assert!(!rep.deleted.is_empty());
    let start = log.start_offset();
    assert!(start > 0);
    assert_eq!(verify_pattern(&mut log.reader(), start), end);
    let mut r = log.reader();
    assert!(matches!(
        r.seek_offset(0),
        Err(storage_nvme::SeekError::BeforeStart { .. })
    ));
    // Age: everything is older than 1 ns after the last timestamp, but the active segment stays.
    log.close().unwrap();
    cfg.retention = RetentionPolicy {
        total_bytes_max: None,
        age_ns_max: Some(1),
    };
    let (mut log, _) = Log::open(dir.path(), cfg).unwrap();
    log.enforce_retention(u64::MAX).unwrap();
    let logs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .collect();
    assert_eq!(logs.len(), 1, "only the active segment remains");
    let start = log.start_offset();
    assert_eq!(verify_pattern(&mut log.reader(), start), end);
    // The log still appends after retention.
    let end2 = append_pattern(&mut log, 5, 3);
    assert_eq!(log.sync().unwrap(), end2);
}

#[test]
fn log_and_reader_can_move_to_agent_threads() {
    fn is_send<T: Send>() {}
    is_send::<Log>();
    is_send::<storage_nvme::Reader>();
    is_send::<AlignedBuf>();
}

#[test]
fn checkpoints_are_written_while_appending() {
    let dir = tempdir();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut end = 0;
    for _ in 0..60 {
        end = append_pattern(&mut log, 5, 7);
        log.flush().unwrap();
        log.poll().unwrap();
    }
    log.sync().unwrap();
    log.poll().unwrap();
    assert!(log.stats().checkpoints > 0, "{:?}", log.stats());
    // A snapshot reader started from the live checkpoint sees exactly the durable records.
    let mut snap = storage_nvme::Reader::open(dir.path()).unwrap();
    assert_eq!(snap.end_offset(), end);
    assert_eq!(verify_pattern(&mut snap, 0), end);
}

#[test]
fn sync_returns_only_when_everything_is_durable_across_rolls() {
    // Regression: with two fdatasyncs in flight, a slower one of the old segment could
    // complete after a roll and move the new segment's durable position.
    for _ in 0..20 {
        let dir = tempdir();
        let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
        let end = append_pattern(&mut log, 800, 7);
        assert_eq!(log.sync().unwrap(), end);
        assert!(log.stats().rolls >= 2);
        assert_eq!(verify_pattern(&mut log.reader(), 0), end);
        let snap = storage_nvme::Reader::open(dir.path()).unwrap();
        assert_eq!(snap.end_offset(), end);
    }
}

/// Commits after every batch, so commits race zero-ahead writes and (with `dsync_commits`) most
/// commits are single RWF_DSYNC writes; every record must come back, before and after reopen.
#[test]
fn zero_ahead_and_dsync_commits_keep_every_record() {
    for mode in [IoMode::Uring, IoMode::Pwrite] {
        for (dsync_commits, zero_ahead_bytes) in
            [(true, 64 << 10), (false, 64 << 10), (true, 0), (false, 0)]
        {
            let what = format!("{mode:?} dsync {dsync_commits} zero-ahead {zero_ahead_bytes}");
            let dir = tempdir();
            let cfg = LogConfig {
                io_mode: mode,
                dsync_commits,
                zero_ahead_bytes,
                ..small_config()
            };
            let (mut log, _) = Log::open(dir.path(), cfg.clone()).unwrap();
            let mut end = 0;
            for _ in 0..600 {
                end = append_pattern(&mut log, 1, 4);
                log.flush().unwrap();
                log.poll().unwrap();
            }
            assert_eq!(log.sync().unwrap(), end, "{what}");
            let st = log.stats();
            assert_eq!(st.dsync_writes > 0, dsync_commits, "{what}: {st:?}");
            assert_eq!(st.zero_writes > 0, zero_ahead_bytes > 0, "{what}: {st:?}");
            assert_eq!(st.zero_errors, 0, "{what}");
            assert!(st.rolls > 0, "{what}: the run must cross segments");
            assert_eq!(verify_pattern(&mut log.reader(), 0), end, "{what}");
            log.close().unwrap();
            let (log, report) = Log::open(dir.path(), cfg).unwrap();
            assert_eq!(report.next_offset, end, "{what}");
            assert!(report.actions.is_empty(), "{what}: {:?}", report.actions);
            assert_eq!(verify_pattern(&mut log.reader(), 0), end, "{what}");
        }
    }
}

/// Rolls take the segment file the helper thread preallocated and leave the sealed segments'
/// indexes to it; closing finishes that work and removes the unused prepared file, so a
/// reopen finds the indexes and nothing to clean up.
#[test]
fn rolls_use_prepared_segments_and_close_leaves_a_clean_directory() {
    let dir = tempdir();
    let cfg = small_config();
    let (mut log, _) = Log::open(dir.path(), cfg.clone()).unwrap();
    let mut end = 0;
    for _ in 0..80 {
        end = append_pattern(&mut log, 10, 8);
        log.sync().unwrap();
    }
    let st = log.stats();
    assert!(st.rolls >= 3, "{st:?}");
    assert!(st.prepared_rolls > 0, "{st:?}");
    assert_eq!(st.prepared_rolls + st.unprepared_rolls, st.rolls, "{st:?}");
    log.close().unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("tmp")),
        "temporary files left: {names:?}"
    );
    let segments = names.iter().filter(|n| n.ends_with(".log")).count();
    let indexes = names.iter().filter(|n| n.ends_with(".index")).count();
    assert_eq!(
        segments, indexes,
        "every segment has its offset index: {names:?}"
    );
    let (log, report) = Log::open(dir.path(), cfg).unwrap();
    assert!(report.actions.is_empty(), "{:?}", report.actions);
    assert_eq!(report.next_offset, end);
    assert_eq!(verify_pattern(&mut log.reader(), 0), end);
}
