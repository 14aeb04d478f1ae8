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

/// Everything openraft was told is durable survives closing and reopening the files: the
/// vote, the log entries (and where the log was purged), the committed index, the snapshot,
/// and the state the snapshot holds.
#[tokio::test]
async fn reopen_keeps_vote_log_committed_and_snapshot() {
    use berth_proto::{Command, Digest, RepoName, Request};
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let repo = RepoName::parse("kept/app").unwrap();
    let entry = |i: u64| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Normal(Request {
            command: Command::LinkBlob { repo: repo.clone(), digest: Digest::sha256_of(&i.to_be_bytes()), size: i },
            at_ms: i,
        }),
    };
    let log_id = |i: u64| LogId::new(CommittedLeaderId::new(1, 1), i);
    {
        let mut log = LogStore::open(&path).unwrap();
        log.save_vote(&openraft::Vote::new(3, 1)).await.unwrap();
        log.blocking_append((1..=5).map(entry)).await.unwrap();
        log.save_committed(Some(log_id(5))).await.unwrap();
        log.purge(log_id(2)).await.unwrap();
        let mut sm = StateMachineStore::open(&dir.path().join("sm")).unwrap();
        sm.apply((1..=4).map(entry)).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    }
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(openraft::Vote::new(3, 1)));
    let entries = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(entries[2], entry(5));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(5)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(2)), Some(log_id(5))));

    let mut sm = StateMachineStore::open(&dir.path().join("sm")).unwrap();
    let snap = sm.get_current_snapshot().await.unwrap().expect("the snapshot survives");
    assert_eq!(snap.meta.last_log_id, Some(log_id(4)));
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(4)));
    let state = sm.shared();
    for i in 1..=4u64 {
        assert_eq!(state.blob_size(&repo, &Digest::sha256_of(&i.to_be_bytes())).unwrap(), Some(i));
    }
    assert_eq!(state.blob_size(&repo, &Digest::sha256_of(&5u64.to_be_bytes())).unwrap(), None);
}
