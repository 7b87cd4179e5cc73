//! The state machine: [`ClusterState`] in memory, made durable by snapshot
//! files. On open the latest snapshot is loaded and openraft re-applies the
//! committed log entries after it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::record;
use crate::types::{ClusterState, CommandResponse, NodeId, NodeInfo, TypeConfig};

/// Magic of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"MSCPSNP\0";
/// File name of the current snapshot inside the data directory.
pub const SNAPSHOT_FILE_NAME: &str = "snapshot.dat";
const KIND_SNAPSHOT: u8 = 1;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// What a snapshot holds, and the live state machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateMachineData {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, NodeInfo>,
    pub state: ClusterState,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    data: Vec<u8>,
}

/// Read access to the applied state for the rest of the node.
#[derive(Clone)]
pub struct StateView {
    data: Arc<RwLock<StateMachineData>>,
    applied: watch::Receiver<u64>,
}

impl StateView {
    /// Runs `f` on the current applied state.
    pub fn read<R>(&self, f: impl FnOnce(&StateMachineData) -> R) -> R {
        f(&self.data.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// A clone of the cluster state.
    pub fn cluster_state(&self) -> ClusterState {
        self.read(|d| d.state.clone())
    }

    /// Changes whenever entries are applied (value: last applied index).
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }
}

/// The state machine store; clones share the state.
#[derive(Clone)]
pub struct StateMachineStore {
    data: Arc<RwLock<StateMachineData>>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    dir: PathBuf,
    applied_tx: Arc<watch::Sender<u64>>,
    applied_rx: watch::Receiver<u64>,
    snapshot_seq: Arc<AtomicU64>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, loading the snapshot if there is one.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(SNAPSHOT_FILE_NAME);
        let (data, current) = match record::read_file(&path, &SNAPSHOT_MAGIC, KIND_SNAPSHOT)? {
            Some(bytes) => {
                let snap: StoredSnapshot = serde_json::from_slice(&bytes)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let data: StateMachineData = serde_json::from_slice(&snap.data)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                (data, Some(snap))
            }
            None => (StateMachineData::default(), None),
        };
        let index = data.last_applied.map_or(0, |l| l.index);
        let (tx, rx) = watch::channel(index);
        Ok(StateMachineStore {
            data: Arc::new(RwLock::new(data)),
            current: Arc::new(Mutex::new(current)),
            dir: dir.to_path_buf(),
            applied_tx: Arc::new(tx),
            applied_rx: rx,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Read access for the rest of the node.
    pub fn view(&self) -> StateView {
        StateView {
            data: self.data.clone(),
            applied: self.applied_rx.clone(),
        }
    }

    /// Writes `snap` durably and makes it the current snapshot.
    fn persist(&self, snap: StoredSnapshot) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&snap).map_err(std::io::Error::other)?;
        record::write_file_atomic(
            &self.dir.join(SNAPSHOT_FILE_NAME),
            &SNAPSHOT_MAGIC,
            KIND_SNAPSHOT,
            &bytes,
        )?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (bytes, last_applied, membership) = {
            let d = self.data.read().unwrap_or_else(|p| p.into_inner());
            (
                serde_json::to_vec(&*d).map_err(snap_err)?,
                d.last_applied,
                d.last_membership.clone(),
            )
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.persist(StoredSnapshot {
            meta: meta.clone(),
            data: bytes.clone(),
        })
        .map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>)> {
        let d = self.data.read().unwrap_or_else(|p| p.into_inner());
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let last = {
            let mut d = self.data.write().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                d.last_applied = Some(e.log_id);
                out.push(match e.payload {
                    EntryPayload::Blank => CommandResponse::Done,
                    EntryPayload::Normal(cmd) => d.state.apply(&cmd),
                    EntryPayload::Membership(m) => {
                        d.last_membership = StoredMembership::new(Some(e.log_id), m);
                        CommandResponse::Done
                    }
                });
            }
            d.last_applied.map_or(0, |l| l.index)
        };
        self.applied_tx.send_replace(last);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let new: StateMachineData = serde_json::from_slice(&bytes).map_err(sm_err)?;
        self.persist(StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        })
        .map_err(snap_err)?;
        let last = {
            let mut d = self.data.write().unwrap_or_else(|p| p.into_inner());
            *d = StateMachineData {
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                state: new.state,
            };
            meta.last_log_id.map_or(0, |l| l.index)
        };
        self.applied_tx.send_replace(last);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
