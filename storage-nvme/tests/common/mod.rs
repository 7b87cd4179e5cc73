//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use storage_nvme::{pattern, AlignedBuf, Log, LogConfig, Reader, Record};

/// A temporary directory on the same (non-tmpfs) file system as the build, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("storage-nvme-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

/// A small configuration: 256 KiB segments, 128 KiB ring, 32 KiB writes.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        write_buffer_bytes: 128 << 10,
        write_bytes_max: 32 << 10,
        batch_bytes_max: 32 << 10,
        index_interval_bytes: 4 << 10,
        checkpoint_interval_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

pub const SEED: u64 = 7;
pub const PAYLOAD_MAX: usize = 300;

/// Appends `batches` pattern batches of `per_batch` records; returns the next offset.
pub fn append_pattern<B: storage_nvme::IoBackend>(
    log: &mut Log<B>,
    batches: usize,
    per_batch: usize,
) -> u64 {
    let mut payloads = vec![0u8; per_batch * PAYLOAD_MAX];
    for _ in 0..batches {
        let base = log.next_offset();
        let mut at = 0;
        let mut spans = Vec::with_capacity(per_batch);
        for i in 0..per_batch {
            let o = base + i as u64;
            let l = pattern::payload_len(SEED, o, PAYLOAD_MAX);
            pattern::fill(SEED, o, &mut payloads[at..at + l]);
            spans.push((at, l));
            at += l;
        }
        let recs: Vec<Record<'_>> = spans
            .iter()
            .enumerate()
            .map(|(i, &(a, l))| Record {
                timestamp_ns: pattern::timestamp_ns(base + i as u64),
                payload: &payloads[a..a + l],
            })
            .collect();
        loop {
            match log.append_batch(base, &recs) {
                Ok(_) => break,
                Err(storage_nvme::AppendError::BackPressured) => {
                    log.poll().expect("poll");
                }
                Err(e) => panic!("append failed: {e}"),
            }
        }
    }
    log.next_offset()
}

/// Reads every record from `from` to the reader's end and checks it against the pattern;
/// returns the offset after the last record read.
pub fn verify_pattern(reader: &mut Reader, from: u64) -> u64 {
    reader.seek_offset(from).expect("seek");
    let mut buf = AlignedBuf::new(1 << 20).expect("buf");
    let mut expect = vec![0u8; PAYLOAD_MAX];
    let mut next = from;
    while let Some(b) = reader.read_batch(&mut buf).expect("read") {
        for r in b.records() {
            assert_eq!(r.offset, next, "records must be dense");
            let l = pattern::payload_len(SEED, r.offset, PAYLOAD_MAX);
            pattern::fill(SEED, r.offset, &mut expect[..l]);
            assert_eq!(
                r.payload,
                &expect[..l],
                "payload of record {} differs",
                r.offset
            );
            assert_eq!(r.timestamp_ns, pattern::timestamp_ns(r.offset));
            next += 1;
        }
    }
    next
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
