//! Bad input on disk: flipped bytes, truncated indexes, directories that are not ours, offsets
//! beyond the end, a second writer. Each is a clear error naming the file (and offset) or a
//! counted recovery action; never a panic, never corrupt bytes served.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use storage_nvme::{AlignedBuf, Log, LogOpenError, ReadError, Reader, RecoveryAction, SeekError};

fn make_log(dir: &Path, batches: usize) -> u64 {
    let (mut log, _) = Log::open(dir, small_config()).unwrap();
    let end = append_pattern(&mut log, batches, 7);
    log.sync().unwrap();
    log.close().unwrap();
    end
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, pos: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, pos).unwrap();
    f.sync_all().unwrap();
}

/// Reads the whole log; returns the error that stopped it, if any, and records read.
fn read_all(r: &mut Reader) -> (Option<ReadError>, u64) {
    let mut buf = AlignedBuf::new(1 << 20).unwrap();
    let mut n = 0;
    loop {
        match r.read_batch(&mut buf) {
            Ok(Some(b)) => n += b.records().count() as u64,
            Ok(None) => return (None, n),
            Err(e) => return (Some(e), n),
        }
    }
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_never_served() {
    let dir = tempdir();
    make_log(dir.path(), 400);
    let segs = segments(dir.path());
    assert!(segs.len() >= 2);
    flip(&segs[0], 10_000);
    let (log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut r = log.reader();
    let (err, read) = read_all(&mut r);
    match err {
        Some(ReadError::Corrupt { path, position, .. }) => {
            assert_eq!(path, segs[0]);
            assert!(
                position <= 10_000 && position + 32 * 1024 > 10_000,
                "position {position}"
            );
            let msg = ReadError::Corrupt {
                path,
                position,
                offset: 0,
                detail: String::new(),
            }
            .to_string();
            assert!(msg.contains(".log") && msg.contains(&position.to_string()));
        }
        other => panic!("expected a corruption error, got {other:?} after {read} records"),
    }
    drop(log);
    // The operator tool says so too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ms-log"))
        .arg("verify")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));
}

#[test]
fn flipped_byte_in_the_active_segment_without_checkpoint_is_a_counted_truncation() {
    let dir = tempdir();
    let end = make_log(dir.path(), 60);
    let segs = segments(dir.path());
    let last = segs.last().unwrap();
    // Remove the checkpoint so recovery verifies the whole active segment.
    let stem = last.file_stem().unwrap().to_str().unwrap().to_string();
    fs::remove_file(dir.path().join(format!("{stem}.index"))).unwrap();
    fs::remove_file(dir.path().join(format!("{stem}.timeindex"))).unwrap();
    flip(last, 4096 + 2000);
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    let cut: Vec<_> = report
        .actions
        .iter()
        .filter_map(|a| {
            if let RecoveryAction::TornTailTruncated {
                path,
                position,
                bytes,
                ..
            } = a
            {
                Some((path.clone(), *position, *bytes))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(cut.len(), 1, "{:?}", report.actions);
    assert_eq!(&cut[0].0, last);
    assert!(cut[0].1 <= 4096 + 2000 && cut[0].2 > 0);
    assert!(report.next_offset < end);
    assert_eq!(verify_pattern(&mut log.reader(), 0), report.next_offset);
}

#[test]
fn truncated_or_missing_index_is_rebuilt() {
    let dir = tempdir();
    let end = make_log(dir.path(), 800);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let idx0 = segs[0].with_extension("index");
    let len = fs::metadata(&idx0).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&idx0)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    fs::remove_file(segs[1].with_extension("timeindex")).unwrap();
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    let rebuilt: Vec<_> = report
        .actions
        .iter()
        .filter(|a| matches!(a, RecoveryAction::IndexRebuilt { .. }))
        .collect();
    assert_eq!(rebuilt.len(), 2, "{:?}", report.actions);
    assert_eq!(
        fs::metadata(&idx0).unwrap().len(),
        len,
        "index rewritten whole"
    );
    assert_eq!(verify_pattern(&mut log.reader(), 0), end);
    drop(log);
    let (_, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.actions.is_empty());
}

#[test]
fn a_directory_that_is_not_ours_is_refused() {
    let dir = tempdir();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    match Log::open(dir.path(), small_config()) {
        Err(LogOpenError::NotOurs { path, .. }) => assert!(path.ends_with("notes.txt")),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a foreign directory"),
    }
    let dir = tempdir();
    fs::write(dir.path().join("00000000000000000000.log"), vec![7u8; 8192]).unwrap();
    match Log::open(dir.path(), small_config()) {
        Err(e @ LogOpenError::NotOurs { .. }) => assert!(
            e.to_string().contains("00000000000000000000.log") && e.to_string().contains("magic"),
            "{e}"
        ),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a foreign segment"),
    }
    // A log of another partition.
    let dir = tempdir();
    make_log(dir.path(), 3);
    let cfg = storage_nvme::LogConfig {
        partition: 9,
        ..small_config()
    };
    assert!(matches!(
        Log::open(dir.path(), cfg),
        Err(LogOpenError::WrongPartition { partition: 0, .. })
    ));
}

#[test]
fn offsets_beyond_the_end_and_second_writers_are_errors() {
    let dir = tempdir();
    let end = make_log(dir.path(), 20);
    let (log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut r = log.reader();
    match r.seek_offset(end + 1) {
        Err(e @ SeekError::BeyondEnd { .. }) => assert!(e.to_string().contains(&end.to_string())),
        other => panic!("{other:?}"),
    }
    r.seek_offset(end).unwrap();
    let mut buf = AlignedBuf::new(4096).unwrap();
    assert!(r.read_batch(&mut buf).unwrap().is_none());
    assert!(matches!(
        Log::open(dir.path(), small_config()),
        Err(LogOpenError::Locked { .. })
    ));
    let mut snap = Reader::open(dir.path()).unwrap();
    assert_eq!(snap.end_offset(), end);
    assert!(matches!(
        snap.seek_offset(end + 5),
        Err(SeekError::BeyondEnd { .. })
    ));
}

#[test]
fn read_only_bind_mount_is_a_clear_open_error() {
    // As root, chmod does not stop writes: use a read-only bind mount of the directory.
    // (Without root the seam-injected EROFS test still covers the error path.)
    testkit::require!(
        testkit::root("a read-only bind mount"),
        testkit::tool("mount", "--version", "mount")
    );
    let dir = tempdir();
    make_log(dir.path(), 3);
    let p = dir.path().to_str().unwrap();
    let mount = |args: &[&str]| testkit::run_ok(std::process::Command::new("mount").args(args));
    struct Unmount<'a>(&'a str);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    mount(&["--bind", p, p]);
    let _guard = Unmount(p);
    mount(&["-o", "remount,bind,ro", p]);
    match Log::open(dir.path(), small_config()) {
        Err(e) => assert!(e.to_string().contains("Read-only"), "{e}"),
        Ok(_) => panic!("opened a read-only directory for writing"),
    }
    // Reading still works.
    let mut r = Reader::open(dir.path()).unwrap();
    assert_eq!(read_all(&mut r).1, r.end_offset());
}
