//! Durable Raft storage: the log ([`LogStore`]) and the state machine
//! ([`StateMachineStore`]) in one data directory.
//!
//! Why this store and not storage-nvme: Raft needs to truncate the log tail
//! (conflicting entries), purge its head after a snapshot, and persist the
//! vote — storage-nvme is an append-only segment log for stream data without
//! tail truncation. Control-plane metadata is small (KiB per command, a few
//! thousand entries between snapshots), so a single append-only file of
//! CRC-checked records, replayed into memory at open, is the simplest store
//! that is durable and obviously correct. Every append is `fdatasync`ed
//! before openraft hears it is flushed, in the append call itself: openraft
//! 0.9's core awaits that callback before it replicates or answers, so a
//! separate flusher thread would only add wake-ups (and it never had two
//! appends to group). The file is zero-filled ahead so a sync flushes data
//! blocks only (as etcd's preallocated WAL does). Log
//! truncation and purge are records too, and the file is rewritten when most
//! of it is dead. The state machine lives in memory and is made durable by an
//! atomically replaced snapshot file; openraft re-applies committed entries
//! after the snapshot at start-up (the committed index is persisted in the log).

mod log;
mod record;
mod state_machine;

use std::path::Path;

pub use log::{LogStore, LOG_FILE_NAME};
pub use state_machine::{StateMachineData, StateMachineStore, StateView, SNAPSHOT_FILE_NAME};

/// The data directory could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the control-plane store in {dir}: {source}; check the path and its permissions, or move a damaged directory aside")]
pub struct StoreOpenError {
    pub dir: String,
    #[source]
    pub source: std::io::Error,
}

/// Opens (creating if needed) the log and state machine in `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreOpenError> {
    let wrap = |source| StoreOpenError {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(wrap)?;
    let log = LogStore::open(dir).map_err(wrap)?;
    let sm = StateMachineStore::open(dir).map_err(wrap)?;
    Ok((log, sm))
}
