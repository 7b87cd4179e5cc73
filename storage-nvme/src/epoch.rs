//! The leader-epoch history of one partition replica (Kafka's KIP-101/KIP-279 leader-epoch
//! cache): which leader epoch wrote which range of offsets. A follower that was (or followed) a
//! deposed leader asks the current leader "where does my last epoch end?" and cuts its log at
//! that boundary, never blindly at the high watermark.
//!
//! [`EpochHistory`] is the sans-IO core (entries, queries, truncation); [`EpochFile`] keeps it
//! durable in the partition directory as [`EPOCH_FILE_NAME`], replaced atomically on every change
//! (write a temporary file, fdatasync, rename, fsync the directory). Changes are rare (once per
//! leader election), so a whole-file rewrite costs nothing on the data path.
//!
//! File layout: [`crate::layout`] (`leader-epoch`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::layout::*;
use crate::segment::{ferr, replace_file, sync_dir, FileError};

/// One leader epoch and the offset of its first record in this log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EpochEntry {
    pub epoch: u64,
    pub start_offset: u64,
}

/// Why [`EpochHistory::assign`] refused an entry. A refusal is a caller bug or a stale leader:
/// the history never goes backwards.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EpochAssignError {
    #[error("epoch {epoch} is below the latest epoch {latest}; a stale leader must not write")]
    StaleEpoch { epoch: u64, latest: u64 },
    #[error("epoch {epoch} would start at offset {start_offset}, before the latest epoch {latest} (starting at {latest_start}); truncate the log first")]
    StartOffsetBackwards {
        epoch: u64,
        start_offset: u64,
        latest: u64,
        latest_start: u64,
    },
    #[error("the epoch history is full ({EPOCH_ENTRIES_MAX} entries); apply retention")]
    Full,
    #[error("epoch start offset {start_offset} is past the log end {log_end}")]
    PastLogEnd { start_offset: u64, log_end: u64 },
}

/// What [`EpochHistory::assign`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assigned {
    /// A new entry was appended.
    Appended,
    /// The epoch is already the latest: nothing changed (Kafka's rule; the start offset of an
    /// epoch is its first record, and later appends in the same epoch do not move it).
    Unchanged,
}

/// Why bytes could not be decoded as an epoch history.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EpochDecodeError {
    #[error("{len} bytes is too short for the {EPOCH_HEADER_BYTES}-byte header")]
    Short { len: usize },
    #[error("bad magic: not a leader-epoch file")]
    Magic,
    #[error("unsupported version {0} (this build reads version {EPOCH_VERSION})")]
    Version(u16),
    #[error("reserved header fields are not zero")]
    Reserved,
    #[error("entry_count {count} does not match the file length {len} (torn write?)")]
    Length { count: u32, len: usize },
    #[error("entry_count {0} exceeds {EPOCH_ENTRIES_MAX}")]
    TooMany(u32),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error(
        "entry {index} (epoch {epoch}, start {start_offset}) does not increase on the previous one"
    )]
    NotIncreasing {
        index: usize,
        epoch: u64,
        start_offset: u64,
    },
}

/// Why the epoch file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EpochFileError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{path} is corrupt: {error}; restore the replica from the leader or move the file away"
    )]
    Corrupt {
        path: PathBuf,
        error: EpochDecodeError,
    },
    #[error(transparent)]
    Assign(#[from] EpochAssignError),
}

/// The leader-epoch history: entries strictly increasing in both epoch and start offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory {
    entries: Vec<EpochEntry>,
}

impl EpochHistory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The latest entry (the epoch this replica last wrote or followed), if any.
    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`. A new entry must have a larger epoch and
    /// a start offset not below the latest entry's. Two rules follow Kafka's cache:
    /// re-assigning the latest epoch is a no-op; a larger epoch starting at the *same* offset as
    /// the latest replaces it (the earlier epoch wrote no record, so it owns no range).
    pub fn assign(&mut self, epoch: u64, start_offset: u64) -> Result<Assigned, EpochAssignError> {
        if let Some(last) = self.latest() {
            if epoch == last.epoch {
                return Ok(Assigned::Unchanged);
            }
            if epoch < last.epoch {
                return Err(EpochAssignError::StaleEpoch {
                    epoch,
                    latest: last.epoch,
                });
            }
            if start_offset < last.start_offset {
                return Err(EpochAssignError::StartOffsetBackwards {
                    epoch,
                    start_offset,
                    latest: last.epoch,
                    latest_start: last.start_offset,
                });
            }
            if start_offset == last.start_offset {
                self.entries.pop();
            }
        }
        if self.entries.len() >= EPOCH_ENTRIES_MAX {
            return Err(EpochAssignError::Full);
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        Ok(Assigned::Appended)
    }

    /// Kafka's OffsetsForLeaderEpoch answer, asked of the leader with log end `log_end`: the
    /// largest epoch `<= epoch` this log knows and the offset where it ends (the start of the
    /// next epoch, or `log_end` for the latest). `None` when every known epoch is larger than
    /// `epoch` or the history is empty: the asker holds nothing this log can vouch for.
    pub fn end_offset_for(&self, epoch: u64, log_end: u64) -> Option<(u64, u64)> {
        let i = self.entries.partition_point(|e| e.epoch <= epoch);
        let found = self.entries[..i].last()?;
        let end = self
            .entries
            .get(i)
            .map_or(log_end, |next| next.start_offset);
        Some((found.epoch, end))
    }

    /// Drops the entries starting at or after `offset` (a follower cutting a divergent suffix
    /// at `offset`). Returns how many entries were dropped.
    pub fn truncate_from_end(&mut self, offset: u64) -> usize {
        let keep = self.entries.partition_point(|e| e.start_offset < offset);
        let dropped = self.entries.len() - keep;
        self.entries.truncate(keep);
        dropped
    }

    /// Retention moved the log start to `offset`: drops the entries wholly below it and moves
    /// the start of the epoch holding `offset` up to it. Returns whether anything changed.
    pub fn truncate_from_start(&mut self, offset: u64) -> bool {
        let holding = self.entries.partition_point(|e| e.start_offset <= offset);
        if holding == 0 {
            return false;
        }
        let first = holding - 1;
        let moved = self.entries[first].start_offset != offset;
        self.entries[first].start_offset = offset;
        self.entries.drain(..first);
        moved || first > 0
    }

    /// Encodes the history as the file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; EPOCH_HEADER_BYTES + self.entries.len() * EPOCH_ENTRY_BYTES];
        out[EPOCH_MAGIC_OFFSET..EPOCH_MAGIC_OFFSET + 8].copy_from_slice(&EPOCH_MAGIC);
        out[EPOCH_VERSION_OFFSET..EPOCH_VERSION_OFFSET + 2]
            .copy_from_slice(&EPOCH_VERSION.to_le_bytes());
        out[EPOCH_COUNT_OFFSET..EPOCH_COUNT_OFFSET + 4]
            .copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            let at = EPOCH_HEADER_BYTES + i * EPOCH_ENTRY_BYTES;
            out[at..at + 8].copy_from_slice(&e.epoch.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&e.start_offset.to_le_bytes());
        }
        let crc = checksum(&out);
        out[EPOCH_CRC_OFFSET..EPOCH_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a file's bytes; never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, EpochDecodeError> {
        if bytes.len() < EPOCH_HEADER_BYTES {
            return Err(EpochDecodeError::Short { len: bytes.len() });
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
        if bytes[EPOCH_MAGIC_OFFSET..EPOCH_MAGIC_OFFSET + 8] != EPOCH_MAGIC {
            return Err(EpochDecodeError::Magic);
        }
        let version = u16_at(EPOCH_VERSION_OFFSET);
        if version != EPOCH_VERSION {
            return Err(EpochDecodeError::Version(version));
        }
        if u16_at(EPOCH_RESERVED_OFFSET) != 0 || u32_at(EPOCH_RESERVED2_OFFSET) != 0 {
            return Err(EpochDecodeError::Reserved);
        }
        let count = u32_at(EPOCH_COUNT_OFFSET);
        if count as usize > EPOCH_ENTRIES_MAX {
            return Err(EpochDecodeError::TooMany(count));
        }
        if bytes.len() != EPOCH_HEADER_BYTES + count as usize * EPOCH_ENTRY_BYTES {
            return Err(EpochDecodeError::Length {
                count,
                len: bytes.len(),
            });
        }
        let stored = u32_at(EPOCH_CRC_OFFSET);
        let computed = checksum(bytes);
        if stored != computed {
            return Err(EpochDecodeError::Crc { stored, computed });
        }
        let mut entries: Vec<EpochEntry> = Vec::with_capacity(count as usize);
        for index in 0..count as usize {
            let at = EPOCH_HEADER_BYTES + index * EPOCH_ENTRY_BYTES;
            let e = EpochEntry {
                epoch: u64_at(at),
                start_offset: u64_at(at + 8),
            };
            if let Some(prev) = entries.last() {
                if e.epoch <= prev.epoch || e.start_offset <= prev.start_offset {
                    return Err(EpochDecodeError::NotIncreasing {
                        index,
                        epoch: e.epoch,
                        start_offset: e.start_offset,
                    });
                }
            }
            entries.push(e);
        }
        Ok(Self { entries })
    }
}

/// CRC32C over the header without its crc field, then the entries.
fn checksum(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(&bytes[..EPOCH_CRC_OFFSET]);
    crc32c::crc32c_append(c, &bytes[EPOCH_CRC_OFFSET + 4..])
}

/// The history kept durable in a partition directory. Every change is on disk when the call
/// returns; a crash leaves either the previous or the new file, never a mix.
#[derive(Debug)]
pub struct EpochFile {
    dir: PathBuf,
    history: EpochHistory,
}

impl EpochFile {
    /// Opens the history in `dir`, or an empty one if the file does not exist (a new replica).
    /// A temporary file left by a crash mid-update is removed (the rename never happened, so
    /// the previous file is the truth). A damaged file is an error naming it.
    pub fn open(dir: &Path) -> Result<Self, EpochFileError> {
        let tmp = dir.join(EPOCH_TEMP_FILE_NAME);
        match fs::remove_file(&tmp) {
            Ok(()) => sync_dir(dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ferr("cannot remove temporary epoch file", &tmp)(e).into()),
        }
        let path = dir.join(EPOCH_FILE_NAME);
        let history = match fs::read(&path) {
            Ok(bytes) => EpochHistory::decode(&bytes)
                .map_err(|error| EpochFileError::Corrupt { path, error })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => EpochHistory::new(),
            Err(e) => return Err(ferr("cannot read epoch file", &path)(e).into()),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            history,
        })
    }

    pub fn history(&self) -> &EpochHistory {
        &self.history
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(EPOCH_FILE_NAME)
    }

    /// [`EpochHistory::assign`], durable on return when it changed anything.
    pub fn assign(&mut self, epoch: u64, start_offset: u64) -> Result<Assigned, EpochFileError> {
        let mut next = self.history.clone();
        let done = next.assign(epoch, start_offset)?;
        if done == Assigned::Appended {
            self.replace(next)?;
        }
        Ok(done)
    }

    /// [`EpochHistory::truncate_from_end`], durable on return when it dropped anything.
    pub fn truncate_from_end(&mut self, offset: u64) -> Result<usize, EpochFileError> {
        let mut next = self.history.clone();
        let dropped = next.truncate_from_end(offset);
        if dropped > 0 {
            self.replace(next)?;
        }
        Ok(dropped)
    }

    /// [`EpochHistory::truncate_from_start`], durable on return when it changed anything.
    pub fn truncate_from_start(&mut self, offset: u64) -> Result<bool, EpochFileError> {
        let mut next = self.history.clone();
        let changed = next.truncate_from_start(offset);
        if changed {
            self.replace(next)?;
        }
        Ok(changed)
    }

    /// Writes `next` to the temporary file, fdatasyncs it, renames it over the file and fsyncs
    /// the directory; only then does the in-memory history change.
    fn replace(&mut self, next: EpochHistory) -> Result<(), EpochFileError> {
        replace_file(
            &self.dir,
            EPOCH_TEMP_FILE_NAME,
            EPOCH_FILE_NAME,
            &next.encode(),
        )?;
        self.history = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hist(entries: &[(u64, u64)]) -> EpochHistory {
        let mut h = EpochHistory::new();
        for &(e, s) in entries {
            assert_eq!(h.assign(e, s), Ok(Assigned::Appended));
        }
        h
    }

    #[test]
    fn layout_offsets_are_packed() {
        assert_eq!(EPOCH_VERSION_OFFSET, EPOCH_MAGIC_OFFSET + 8);
        assert_eq!(EPOCH_RESERVED_OFFSET, EPOCH_VERSION_OFFSET + 2);
        assert_eq!(EPOCH_COUNT_OFFSET, EPOCH_RESERVED_OFFSET + 2);
        assert_eq!(EPOCH_CRC_OFFSET, EPOCH_COUNT_OFFSET + 4);
        assert_eq!(hist(&[(1, 0), (3, 10)]).encode().len(), 24 + 32);
    }

    #[test]
    fn assign_moves_forward_only() {
        let mut h = hist(&[(1, 0), (2, 5)]);
        assert_eq!(h.assign(2, 9), Ok(Assigned::Unchanged), "same epoch: no-op");
        assert_eq!(
            h.assign(1, 9),
            Err(EpochAssignError::StaleEpoch {
                epoch: 1,
                latest: 2
            })
        );
        assert_eq!(
            h.assign(3, 4),
            Err(EpochAssignError::StartOffsetBackwards {
                epoch: 3,
                start_offset: 4,
                latest: 2,
                latest_start: 5
            })
        );
        // A larger epoch at the same start replaces the latest (which wrote no record).
        assert_eq!(h.assign(4, 5), Ok(Assigned::Appended));
        assert_eq!(
            h.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 4,
                    start_offset: 5
                }
            ]
        );
        let msg = EpochAssignError::StaleEpoch {
            epoch: 1,
            latest: 2,
        }
        .to_string();
        assert!(msg.contains("stale leader"), "{msg}");
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        let h = hist(&[(1, 0), (3, 10), (6, 25)]);
        assert_eq!(h.end_offset_for(0, 40), None, "older than anything known");
        assert_eq!(h.end_offset_for(1, 40), Some((1, 10)));
        assert_eq!(
            h.end_offset_for(2, 40),
            Some((1, 10)),
            "unknown: largest below"
        );
        assert_eq!(h.end_offset_for(3, 40), Some((3, 25)));
        assert_eq!(
            h.end_offset_for(6, 40),
            Some((6, 40)),
            "latest ends at log end"
        );
        assert_eq!(h.end_offset_for(9, 40), Some((6, 40)));
        assert_eq!(EpochHistory::new().end_offset_for(1, 0), None);
    }

    #[test]
    fn truncation_from_both_ends() {
        let mut h = hist(&[(1, 0), (3, 10), (6, 25)]);
        assert_eq!(h.truncate_from_end(30), 0);
        assert_eq!(
            h.truncate_from_end(25),
            1,
            "an epoch starting at the cut goes"
        );
        assert_eq!(h.latest().map(|e| e.epoch), Some(3));
        assert!(h.truncate_from_start(12));
        assert_eq!(
            h.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: 12
            }]
        );
        assert!(!h.truncate_from_start(12));
        assert!(!h.truncate_from_start(5), "below the first entry: nothing");
    }

    #[test]
    fn decode_rejects_damage() {
        let good = hist(&[(1, 0), (3, 10)]).encode();
        assert_eq!(
            EpochHistory::decode(&good[..10]),
            Err(EpochDecodeError::Short { len: 10 })
        );
        assert!(matches!(
            EpochHistory::decode(&good[..good.len() - 1]),
            Err(EpochDecodeError::Length { .. })
        ));
        let mut bad = good.clone();
        bad[EPOCH_HEADER_BYTES + 3] ^= 1;
        assert!(matches!(
            EpochHistory::decode(&bad),
            Err(EpochDecodeError::Crc { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(EpochHistory::decode(&bad), Err(EpochDecodeError::Magic));
        // Valid CRC over entries that do not increase: still refused.
        let mut h = hist(&[(1, 0)]);
        h.entries.push(EpochEntry {
            epoch: 1,
            start_offset: 4,
        });
        assert!(matches!(
            EpochHistory::decode(&h.encode()),
            Err(EpochDecodeError::NotIncreasing { index: 1, .. })
        ));
    }

    #[test]
    fn file_survives_reopen_and_names_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = EpochFile::open(dir.path()).unwrap();
        assert!(f.history().entries().is_empty());
        assert!(!f.path().exists(), "nothing written until the first change");
        f.assign(2, 0).unwrap();
        f.assign(5, 100).unwrap();
        assert_eq!(f.truncate_from_end(100).unwrap(), 1);
        f.assign(7, 120).unwrap();
        drop(f);
        // A crash mid-update leaves a temporary file: ignored and removed.
        fs::write(dir.path().join(EPOCH_TEMP_FILE_NAME), b"half").unwrap();
        let f = EpochFile::open(dir.path()).unwrap();
        assert_eq!(f.history(), &hist(&[(2, 0), (7, 120)]));
        assert!(!dir.path().join(EPOCH_TEMP_FILE_NAME).exists());
        drop(f);
        let path = dir.path().join(EPOCH_FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 4);
        fs::write(&path, &bytes).unwrap();
        let err = EpochFile::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("leader-epoch") && msg.contains("torn"),
            "{msg}"
        );
    }

    fn ops() -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
        proptest::collection::vec((0u8..4, 0u64..50, 0u64..500), 0..60)
    }

    proptest! {
        #[test]
        fn history_stays_strictly_increasing_and_round_trips(ops in ops()) {
            let mut h = EpochHistory::new();
            for (op, a, b) in ops {
                match op {
                    0 | 1 => { let _ = h.assign(a, b); }
                    2 => { h.truncate_from_end(b); }
                    _ => { h.truncate_from_start(b); }
                }
                for w in h.entries().windows(2) {
                    prop_assert!(w[0].epoch < w[1].epoch);
                    prop_assert!(w[0].start_offset < w[1].start_offset);
                }
                prop_assert_eq!(EpochHistory::decode(&h.encode()), Ok(h.clone()));
            }
        }

        #[test]
        fn end_offset_is_the_next_start(entries in proptest::collection::btree_map(0u64..100, 0u64..1000, 0..10), q in 0u64..110) {
            let mut h = EpochHistory::new();
            let mut starts: Vec<u64> = entries.values().copied().collect();
            starts.sort_unstable();
            starts.dedup();
            for (e, s) in entries.keys().zip(starts) {
                h.assign(*e, s).unwrap();
            }
            let log_end = 2000;
            match h.end_offset_for(q, log_end) {
                None => prop_assert!(h.entries().iter().all(|e| e.epoch > q)),
                Some((epoch, end)) => {
                    prop_assert!(epoch <= q);
                    let i = h.entries().iter().position(|e| e.epoch == epoch).unwrap();
                    prop_assert!(h.entries()[i + 1..].iter().all(|e| e.epoch > q));
                    let want = h.entries().get(i + 1).map_or(log_end, |n| n.start_offset);
                    prop_assert_eq!(end, want);
                }
            }
        }
    }
}
