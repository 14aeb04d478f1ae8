//! openraft's own storage conformance suite run against Berth's log store and state machine.

use berth_raft_store::{LogStore, StateMachineStore, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("raft.redb")).unwrap();
        let sm = StateMachineStore::open(&dir.path().join("sm")).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(Builder)
}

/// The log, vote and snapshot survive closing and reopening the files.
#[tokio::test]
async fn reopen_keeps_vote_and_log() {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::RaftLogReader;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let mut log = LogStore::open(&path).unwrap();
        log.save_vote(&openraft::Vote::new(3, 1)).await.unwrap();
    }
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(openraft::Vote::new(3, 1)));
    assert!(log.try_get_log_entries(0..10).await.unwrap().is_empty());
    let mut sm = StateMachineStore::open(&dir.path().join("sm")).unwrap();
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
}
