//! Cutting a partition log's suffix: a follower that holds records a deposed leader never had
//! committed cuts them at the leader-epoch boundary ([`crate::epoch`]) and fetches again.
//!
//! The cut spans several files (segments after the cut, the tail of the segment holding it, its
//! indexes, the epoch history), so it is made crash-safe with an intent file, a redo record:
//! 1. [`TRUNCATE_FILE_NAME`] is written atomically (temporary file, fdatasync, rename, directory
//!    fsync) holding the requested end offset. **This is the commit point**: from here on the
//!    truncation happens, whatever crashes.
//! 2. Segments starting after the cut are deleted, newest first, with their indexes.
//! 3. The segment holding the cut is cut back at the last batch boundary at or below it (so the
//!    log may end a little before the requested offset, as Kafka's does: the follower fetches
//!    the rest again) and preallocated again, so the cut bytes read as zeros and can never come
//!    back; its index checkpoint is rewritten to end there.
//! 4. Epoch entries starting at or after the new end are dropped from the epoch file.
//! 5. The intent file is removed (directory fsync).
//!
//! Every step is idempotent, and `Log::open` redoes steps 2-5 whenever it finds the intent
//! file. A crash before step 1 leaves the old log; after it, the next open finishes the cut.
//!
//! Intent file layout: [`crate::layout`] (`truncate-pending`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::codec::peek_batch_bytes;
use crate::epoch::{EpochFile, EpochFileError};
use crate::index::IndexCheckpoint;
use crate::layout::*;
use crate::segment::*;

/// Why the intent file's bytes are not a valid intent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TruncateIntentError {
    #[error("{0} bytes, expected exactly {TRUNCATE_FILE_BYTES} (torn write?)")]
    Length(usize),
    #[error("bad magic: not a truncation intent file")]
    Magic,
    #[error("unsupported version {0} (this build reads version {TRUNCATE_VERSION})")]
    Version(u16),
    #[error("reserved field is not zero")]
    Reserved,
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
}

/// Why a truncation failed. The log directory stays consistent: reopening it either finishes the
/// cut (the intent was durable) or finds the old log.
#[derive(Debug, thiserror::Error)]
pub enum LogTruncateError {
    #[error("cannot truncate to offset {end_offset}: the log starts at {start_offset}; fetch the partition from its leader from scratch")]
    BelowStart { end_offset: u64, start_offset: u64 },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} is corrupt: {error}; move it away only if you know the truncation it asked for is done")]
    Intent {
        path: PathBuf,
        error: TruncateIntentError,
    },
    #[error("{path} is not a MemoryStreamer segment ({reason})")]
    NotOurs { path: PathBuf, reason: String },
    #[error(transparent)]
    Epoch(#[from] EpochFileError),
    #[error("cannot take the log directory's lock: {0}")]
    Lock(String),
    #[error("cannot close the log before truncating it (nothing was cut): {0}")]
    Close(#[from] crate::LogCloseError),
}

/// Encodes an intent to cut the log at `end_offset`.
pub fn encode_intent(end_offset: u64) -> [u8; TRUNCATE_FILE_BYTES] {
    let mut b = [0u8; TRUNCATE_FILE_BYTES];
    b[TRUNC_MAGIC_OFFSET..TRUNC_MAGIC_OFFSET + 8].copy_from_slice(&TRUNCATE_MAGIC);
    b[TRUNC_VERSION_OFFSET..TRUNC_VERSION_OFFSET + 2]
        .copy_from_slice(&TRUNCATE_VERSION.to_le_bytes());
    b[TRUNC_END_OFFSET_OFFSET..].copy_from_slice(&end_offset.to_le_bytes());
    let crc = intent_crc(&b);
    b[TRUNC_CRC_OFFSET..TRUNC_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes an intent file's bytes: the end offset it asks for. Never panics.
pub fn decode_intent(b: &[u8]) -> Result<u64, TruncateIntentError> {
    let b: &[u8; TRUNCATE_FILE_BYTES] = b
        .try_into()
        .map_err(|_| TruncateIntentError::Length(b.len()))?;
    if b[TRUNC_MAGIC_OFFSET..TRUNC_MAGIC_OFFSET + 8] != TRUNCATE_MAGIC {
        return Err(TruncateIntentError::Magic);
    }
    let version = u16::from_le_bytes([b[TRUNC_VERSION_OFFSET], b[TRUNC_VERSION_OFFSET + 1]]);
    if version != TRUNCATE_VERSION {
        return Err(TruncateIntentError::Version(version));
    }
    if b[TRUNC_RESERVED_OFFSET..TRUNC_RESERVED_OFFSET + 2] != [0, 0] {
        return Err(TruncateIntentError::Reserved);
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[TRUNC_CRC_OFFSET..TRUNC_CRC_OFFSET + 4]);
    let stored = u32::from_le_bytes(crc);
    let computed = intent_crc(b);
    if stored != computed {
        return Err(TruncateIntentError::Crc { stored, computed });
    }
    let mut end = [0u8; 8];
    end.copy_from_slice(&b[TRUNC_END_OFFSET_OFFSET..]);
    Ok(u64::from_le_bytes(end))
}

fn intent_crc(b: &[u8; TRUNCATE_FILE_BYTES]) -> u32 {
    let c = crc32c::crc32c(&b[..TRUNC_CRC_OFFSET]);
    crc32c::crc32c_append(c, &b[TRUNC_CRC_OFFSET + 4..])
}

/// The intent file left in `dir`, if any: the end offset it asks for. A temporary intent (a
/// crash before its rename: the truncation never committed) is removed.
pub(crate) fn pending_intent(dir: &Path) -> Result<Option<u64>, LogTruncateError> {
    remove_temp_intent(dir)?;
    let path = dir.join(TRUNCATE_FILE_NAME);
    match fs::read(&path) {
        Ok(b) => decode_intent(&b)
            .map(Some)
            .map_err(|error| LogTruncateError::Intent { path, error }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ferr("cannot read truncation intent", &path)(e).into()),
    }
}

/// Step 1: makes the intent durable (the commit point).
pub(crate) fn write_intent(dir: &Path, end_offset: u64) -> Result<(), FileError> {
    let bytes = encode_intent(end_offset);
    replace_file(dir, TRUNCATE_TEMP_FILE_NAME, TRUNCATE_FILE_NAME, &bytes)
}

/// Steps 2-5 for a log directory whose intent (`end_offset`) is durable; idempotent. The caller
/// holds the directory's writer lock and no `Log` is open on it. Returns the new end of the
/// log (the last batch boundary at or below `end_offset`, or the log end if that is lower).
pub(crate) fn apply_intent(
    dir: &Path,
    segment_bytes: u64,
    end_offset: u64,
) -> Result<u64, LogTruncateError> {
    remove_temp_intent(dir)?;
    let segments = list_dir(dir)?.segments;
    let holding = segments.partition_point(|&b| b <= end_offset);
    let Some(&base) = segments.get(holding.wrapping_sub(1)) else {
        return Err(LogTruncateError::BelowStart {
            end_offset,
            start_offset: segments.first().copied().unwrap_or(end_offset),
        });
    };
    for &later in segments[holding..].iter().rev() {
        remove_segment(dir, later)?;
    }
    let new_end = cut_segment(dir, base, segment_bytes, end_offset)?;
    sync_dir(dir)?;
    EpochFile::open(dir)?.truncate_from_end(new_end)?;
    let path = dir.join(TRUNCATE_FILE_NAME);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ferr("cannot remove truncation intent", &path)(e).into()),
    }
    sync_dir(dir)?;
    Ok(new_end)
}

fn remove_temp_intent(dir: &Path) -> Result<(), FileError> {
    let tmp = dir.join(TRUNCATE_TEMP_FILE_NAME);
    match fs::remove_file(&tmp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ferr("cannot remove temporary truncation intent", &tmp)(e)),
    }
}

/// Deletes one segment and its indexes (indexes first: an index without its segment is an
/// orphan that recovery removes, a segment without an index is rescanned).
fn remove_segment(dir: &Path, base: u64) -> Result<(), FileError> {
    for p in [
        offset_index_path(dir, base),
        time_index_path(dir, base),
        segment_path(dir, base),
    ] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ferr("cannot delete", &p)(e)),
        }
    }
    Ok(())
}

/// Cuts segment `base` after the last batch ending at or below `end_offset`; returns the offset
/// after that batch. Its index checkpoint is rewritten to end there (entries past it dropped),
/// or removed when unusable (recovery then rescans the segment).
fn cut_segment(
    dir: &Path,
    base: u64,
    segment_bytes: u64,
    end_offset: u64,
) -> Result<u64, LogTruncateError> {
    let (path, file, header) = open_segment_with_header(dir, base)?;
    if let Err(reason) = header {
        return Err(LogTruncateError::NotOurs { path, reason });
    }
    let file_len = file
        .metadata()
        .map_err(ferr("cannot stat segment", &path))?
        .len();
    let loaded = load_indexes(dir, base);
    // Start the walk at the last indexed batch at or below the cut, if the index is usable.
    let from = match &loaded {
        Ok((cp, offs, _)) => {
            let e = offs.entries();
            e[..e.partition_point(|e| e.0 <= end_offset)]
                .last()
                .copied()
                .filter(|&(_, pos)| pos < cp.end_position && pos >= SEGMENT_HEADER_BYTES)
                .map_or((SEGMENT_HEADER_BYTES, base), |(off, pos)| (pos, off))
        }
        Err(_) => (SEGMENT_HEADER_BYTES, base),
    };
    let (cut_pos, new_end) = batch_boundary(&file, file_len, from, end_offset)
        .map_err(ferr("cannot read segment", &path))?;
    for p in [offset_index_path(dir, base), time_index_path(dir, base)] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ferr("cannot delete index", &p)(e).into()),
        }
    }
    sync_dir(dir)?;
    truncate_tail(&file, &path, cut_pos, segment_bytes.max(file_len))?;
    if let Ok((cp, offs, times)) = loaded {
        if cp.end_position >= cut_pos {
            let cp = IndexCheckpoint {
                base_offset: base,
                end_position: cut_pos,
                next_offset: new_end,
                max_timestamp_ns: cp.max_timestamp_ns,
            };
            let offs = offs.entries();
            let offs = &offs[..offs.partition_point(|e| e.1 < cut_pos)];
            let times = times.entries();
            let times = &times[..times.partition_point(|e| e.1 < new_end)];
            save_indexes(dir, &cp, offs, times, &mut Vec::new())?;
        }
    }
    Ok(new_end)
}

/// Walks batch headers from `(position, offset)` of a batch: the file position and offset of
/// the first batch that reaches past `end_offset` (or of the end of the written log).
fn batch_boundary(
    f: &fs::File,
    file_len: u64,
    (mut pos, mut next): (u64, u64),
    end_offset: u64,
) -> io::Result<(u64, u64)> {
    let mut header = [0u8; BATCH_HEADER_BYTES];
    while pos + BATCH_HEADER_BYTES as u64 <= file_len {
        let n = read_full_at(f, &mut header, pos)?;
        let Ok(len) = peek_batch_bytes(&header[..n]) else {
            break;
        };
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&header[BATCH_BASE_OFFSET_OFFSET..BATCH_BASE_OFFSET_OFFSET + 8]);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&header[BATCH_RECORD_COUNT_OFFSET..BATCH_RECORD_COUNT_OFFSET + 4]);
        let batch_end = u64::from_le_bytes(b8).saturating_add(u32::from_le_bytes(b4).into());
        if u64::from_le_bytes(b8) != next || batch_end > end_offset || pos + len as u64 > file_len {
            break;
        }
        pos += len as u64;
        next = batch_end;
    }
    Ok((pos, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn intent_layout_and_damage() {
        let b = encode_intent(0x0102_0304_0506_0708);
        assert_eq!(&b[..8], b"MSTRTRN\0");
        assert_eq!(&b[16..], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(decode_intent(&b), Ok(0x0102_0304_0506_0708));
        assert_eq!(
            decode_intent(&b[..23]),
            Err(TruncateIntentError::Length(23))
        );
        let mut bad = b;
        bad[20] ^= 1;
        assert!(matches!(
            decode_intent(&bad),
            Err(TruncateIntentError::Crc { .. })
        ));
        let mut bad = b;
        bad[10] = 1;
        assert_eq!(decode_intent(&bad), Err(TruncateIntentError::Reserved));
    }

    proptest! {
        #[test]
        fn intent_round_trips(end in any::<u64>()) {
            prop_assert_eq!(decode_intent(&encode_intent(end)), Ok(end));
        }
        #[test]
        fn intent_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode_intent(&b);
        }
    }
}
