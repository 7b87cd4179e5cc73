//! The durable Raft log: one append-only file of checksummed records
//! (see [`super::record`]) replayed into memory at open.
//!
//! Record kinds: an entry, a truncation (drop entries from an index on), a
//! purge (drop entries up to a log id), the vote and the committed log id.
//! An append is written and `fdatasync`ed before openraft's callback is
//! told it is flushed (the sync runs outside the lock, so readers never wait
//! for the disk). Votes are synced before `save_vote` returns.
//! The file is zero-filled ahead of the write position (see `preallocate`);
//! zeros never decode as a record, so they end the log like a torn tail.
//! When most records are dead (purged or truncated), the file is
//! rewritten (temp file, fsync, rename, fsync of the directory).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};

use super::record::{self, FILE_HEADER_BYTES};
use crate::types::{NodeId, TypeConfig};

/// Magic of the log file.
pub const LOG_MAGIC: [u8; 8] = *b"MSCPLOG\0";
/// File name of the log inside the data directory.
pub const LOG_FILE_NAME: &str = "raft-log.dat";
/// Rewrite the file once at least this many records are dead and they
/// outnumber the live ones.
pub const COMPACT_DEAD_RECORDS_MIN: u64 = 4_096;

/// The file grows in zero-filled steps of this size (see `preallocate`).
pub const PREALLOCATE_BYTES: u64 = 4 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_VOTE: u8 = 4;
const KIND_COMMITTED: u8 = 5;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

struct LogInner {
    path: PathBuf,
    /// Shared with an append that `fdatasync`s it outside the lock.
    file: Arc<File>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    /// Records in the file that no longer describe live state.
    dead_records: u64,
    /// File offset of the next record.
    write_pos: u64,
    /// File size: bytes from `write_pos` up to here are zero-filled.
    allocated: u64,
}

/// The durable Raft log; cheap to clone (clones share the file).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn json<T: serde::Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io::Error::other)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying it into memory. A torn
    /// tail (a crash in the middle of an unacknowledged append) is cut off.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(LOG_FILE_NAME);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut inner = LogInner {
            file: Arc::new(file),
            path,
            entries: BTreeMap::new(),
            last_purged: None,
            vote: None,
            committed: None,
            dead_records: 0,
            write_pos: 0,
            allocated: 0,
        };
        if data.is_empty() {
            inner
                .file
                .write_all_at(&record::file_header(&LOG_MAGIC), 0)?;
            inner.file.sync_all()?;
            record::sync_dir(&inner.path)?;
            inner.write_pos = FILE_HEADER_BYTES as u64;
        } else {
            record::check_file_header(&data, &LOG_MAGIC)?;
            let (recs, valid) = record::decode(&data[FILE_HEADER_BYTES..]);
            for (kind, payload) in recs {
                inner.replay(kind, payload)?;
            }
            let valid_len = (FILE_HEADER_BYTES + valid) as u64;
            if valid_len < data.len() as u64 {
                // A torn record or the unused zero-filled tail: cut it.
                inner.file.set_len(valid_len)?;
                inner.file.sync_all()?;
            }
            inner.write_pos = valid_len;
        }
        inner.allocated = inner.write_pos;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Writes `entries` and `fdatasync`s them before returning (outside
    /// openraft, e.g. for tests that build a log).
    pub fn append_entries(&self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let mut buf = Vec::new();
        for e in &entries {
            record::encode(&mut buf, KIND_ENTRY, &json(e)?)?;
        }
        let mut g = self.lock();
        g.write(&buf, true)?;
        for e in entries {
            if g.entries.insert(e.log_id.index, e).is_some() {
                g.dead_records += 1;
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A panic while holding the lock is a bug elsewhere; the data is
        // still consistent because every mutation is applied after its write.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogInner {
    fn replay(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let bad = |e: serde_json::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        match kind {
            KIND_ENTRY => {
                let e: Entry<TypeConfig> = serde_json::from_slice(payload).map_err(bad)?;
                if self.entries.insert(e.log_id.index, e).is_some() {
                    self.dead_records += 1;
                }
            }
            KIND_TRUNCATE => {
                let since: u64 = serde_json::from_slice(payload).map_err(bad)?;
                self.truncate_mem(since);
                self.dead_records += 1;
            }
            KIND_PURGE => {
                let upto: LogId<NodeId> = serde_json::from_slice(payload).map_err(bad)?;
                self.purge_mem(upto);
                self.dead_records += 1;
            }
            KIND_VOTE => {
                self.vote = Some(serde_json::from_slice(payload).map_err(bad)?);
                self.dead_records += 1;
            }
            KIND_COMMITTED => {
                self.committed = serde_json::from_slice(payload).map_err(bad)?;
                self.dead_records += 1;
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "unknown log record kind {other}: the log was written by a newer build"
                    ),
                ))
            }
        }
        Ok(())
    }

    fn truncate_mem(&mut self, since: u64) {
        let removed = self.entries.split_off(&since);
        self.dead_records += removed.len() as u64;
    }

    fn purge_mem(&mut self, upto: LogId<NodeId>) {
        let keep = self.entries.split_off(&(upto.index + 1));
        self.dead_records += self.entries.len() as u64;
        self.entries = keep;
        if self.last_purged.is_none_or(|p| p.index < upto.index) {
            self.last_purged = Some(upto);
        }
    }

    fn write(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        let end = self.write_pos + buf.len() as u64;
        if end > self.allocated {
            self.preallocate(end)?;
        }
        self.file.write_all_at(buf, self.write_pos)?;
        self.write_pos = end;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Zero-fills the file up to at least `end` in `PREALLOCATE_BYTES` steps
    /// and syncs it, so that later `fdatasync`s of records written over the
    /// zeros flush data blocks only, without a file-size (journal) update.
    fn preallocate(&mut self, end: u64) -> io::Result<()> {
        let zeros = vec![0u8; PREALLOCATE_BYTES as usize];
        while self.allocated < end {
            self.file.write_all_at(&zeros, self.allocated)?;
            self.allocated += PREALLOCATE_BYTES;
        }
        self.file.sync_all()
    }

    fn write_record<T: serde::Serialize>(&mut self, kind: u8, v: &T, sync: bool) -> io::Result<()> {
        let mut buf = Vec::new();
        record::encode(&mut buf, kind, &json(v)?)?;
        self.write(&buf, sync)
    }

    /// Rewrites the file with only live state when most records are dead.
    fn maybe_compact(&mut self) -> io::Result<()> {
        let live = self.entries.len() as u64 + 3;
        if self.dead_records < COMPACT_DEAD_RECORDS_MIN || self.dead_records < live {
            return Ok(());
        }
        let mut buf = record::file_header(&LOG_MAGIC).to_vec();
        if let Some(v) = &self.vote {
            record::encode(&mut buf, KIND_VOTE, &json(v)?)?;
        }
        record::encode(&mut buf, KIND_COMMITTED, &json(&self.committed)?)?;
        if let Some(p) = &self.last_purged {
            record::encode(&mut buf, KIND_PURGE, &json(p)?)?;
        }
        for e in self.entries.values() {
            record::encode(&mut buf, KIND_ENTRY, &json(e)?)?;
        }
        let tmp = self.path.with_extension("compact");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        record::sync_dir(&self.path)?;
        self.file = Arc::new(OpenOptions::new().read(true).write(true).open(&self.path)?);
        self.write_pos = buf.len() as u64;
        self.allocated = self.write_pos;
        self.dead_records = 0;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let g = self.lock();
        let last = g
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(g.last_purged);
        Ok(LogState {
            last_purged_log_id: g.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let mut g = self.lock();
        g.write_record(KIND_VOTE, vote, true)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        g.vote = Some(*vote);
        g.dead_records += 1;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not fsynced: losing it only means re-applying from the last snapshot
        // once the leader re-announces the commit index.
        let mut g = self.lock();
        g.write_record(KIND_COMMITTED, &committed, false)
            .map_err(io_err)?;
        g.committed = committed;
        g.dead_records += 1;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut buf = Vec::new();
        for e in &entries {
            record::encode(&mut buf, KIND_ENTRY, &json(e).map_err(io_err)?).map_err(io_err)?;
        }
        let file = {
            let mut g = self.lock();
            g.write(&buf, false).map_err(io_err)?;
            for e in entries {
                if g.entries.insert(e.log_id.index, e).is_some() {
                    g.dead_records += 1;
                }
            }
            g.file.clone()
        };
        // openraft 0.9 awaits this callback inside its core task before it
        // replicates or answers anything, so the sync runs right here: a
        // flusher thread would only add two thread wake-ups to every write.
        // The lock is released first so log readers never wait for the disk.
        match file.sync_data() {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = io_err(io::Error::new(e.kind(), e.to_string()));
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut g = self.lock();
        g.write_record(KIND_TRUNCATE, &log_id.index, true)
            .map_err(io_err)?;
        g.truncate_mem(log_id.index);
        g.dead_records += 1;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut g = self.lock();
        g.write_record(KIND_PURGE, &log_id, true).map_err(io_err)?;
        g.purge_mem(log_id);
        g.dead_records += 1;
        g.maybe_compact().map_err(io_err)
    }
}
