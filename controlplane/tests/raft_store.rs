//! The durable store against openraft's storage test suite, plus restart
//! behaviour (state survives reopening the directory, torn tails are cut).

use controlplane::store::{self, LogStore, StateMachineStore, LOG_FILE_NAME};
use controlplane::types::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = store::open(dir.path()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

/// Reopening a directory must give back the vote, entries and purge point;
/// a torn record at the tail is cut off and the rest survives.
#[test]
fn log_survives_reopen_and_torn_tail() {
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lid = |i| LogId::new(CommittedLeaderId::new(1, 0), i);
    rt.block_on(async {
        let (mut log, _sm) = store::open(dir.path()).unwrap();
        log.save_vote(&Vote::new(1, 0)).await.unwrap();
        let entries: Vec<Entry<TypeConfig>> = (1..=5)
            .map(|i| Entry {
                log_id: lid(i),
                payload: EntryPayload::Blank,
            })
            .collect();
        append(&mut log, entries).await;
        log.purge(lid(2)).await.unwrap();
        log.truncate(lid(5)).await.unwrap();
    });
    // Simulate a crash in the middle of a record.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE_NAME))
            .unwrap();
        f.write_all(&[7, 0, 0, 0, 1, 2]).unwrap();
    }
    rt.block_on(async {
        let (mut log, _sm) = store::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 0)));
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(lid(2)));
        assert_eq!(st.last_log_id, Some(lid(4)));
        let got: Vec<u64> = log
            .try_get_log_entries(0..100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(got, vec![3, 4]);
        // The torn tail was cut: a new append lands cleanly and survives.
        append(
            &mut log,
            vec![Entry {
                log_id: lid(5),
                payload: EntryPayload::Blank,
            }],
        )
        .await;
    });
    rt.block_on(async {
        let (mut log, _sm) = store::open(dir.path()).unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(lid(5)));
    });
}

async fn append(log: &mut LogStore, entries: Vec<openraft::Entry<TypeConfig>>) {
    log.append_entries(entries).expect("append");
}
