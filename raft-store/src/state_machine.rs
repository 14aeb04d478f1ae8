//! The Raft state machine: applies committed commands to [`RegistryState`] and keeps durable
//! snapshots so the log can be purged.
//!
//! The state lives in memory (metadata is small); its durability comes from the fsynced log
//! plus the last snapshot, which is written to a temporary file, fsynced and renamed into place.
//! On start the snapshot is loaded and openraft re-applies the committed log after it.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};

use berth_proto::Outcome;

use crate::state::RegistryState;
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::TypeConfig;

type SResult<T> = Result<T, StorageError<u64>>;

const SNAPSHOT_FILE: &str = "snapshot.bin";

/// The registry state shared between the state machine (writer) and request handlers (readers).
pub type SharedState = Arc<RwLock<RegistryState>>;

#[derive(Serialize, Deserialize, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state machine store handed to openraft.
#[derive(Clone)]
pub struct StateMachineStore {
    state: SharedState,
    dir: PathBuf,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    /// Serializes snapshot building and installation.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

fn sm_read_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::read_state_machine(AnyError::error(e.to_string())).into()
}
fn snap_write_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

/// Writes `bytes` to `dir/name` atomically and durably: temp file, fsync, rename, fsync dir.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, loading the last snapshot if there is one.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let (state, current) = match std::fs::read(&path) {
            Ok(bytes) => {
                let snap: StoredSnapshot = postcard::from_bytes(&bytes)
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
                let state = RegistryState::decode(&snap.data)
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
                (state, Some(snap))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (RegistryState::default(), None),
            Err(e) => return Err(e),
        };
        Ok(StateMachineStore {
            state: Arc::new(RwLock::new(state)),
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
            snapshot_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Makes `dir` (empty: no snapshot yet) the state machine of a new single-voter cluster
    /// of node `node_id` at `addr`, holding the registry state of `backup` (bytes made by
    /// [`RegistryState::encode`], as `berth cluster backup` writes them). The state becomes a
    /// snapshot at log index 0 whose membership is that one voter; the node then starts as
    /// that cluster's leader, and voters added later receive the state as a snapshot. The
    /// old cluster's node ids are forgotten (the new cluster numbers its own nodes).
    /// Returns the restored state.
    pub fn seed_from_backup(dir: &Path, backup: &[u8], node_id: u64, addr: &str) -> std::io::Result<RegistryState> {
        if dir.join(SNAPSHOT_FILE).exists() {
            return Err(std::io::Error::other(format!("{} already holds a state machine", dir.display())));
        }
        let mut state = RegistryState::decode(backup).map_err(|e| std::io::Error::other(format!("not a Berth backup: {e}")))?;
        let log_id = LogId::new(openraft::CommittedLeaderId::new(0, node_id), 0);
        let membership = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([node_id])],
            std::collections::BTreeMap::from([(node_id, openraft::BasicNode::new(addr))]),
        );
        state.last_applied = Some(log_id);
        state.last_membership = StoredMembership::new(Some(log_id), membership);
        state.node_ids_used = std::collections::BTreeSet::from([node_id]);
        let data = state.encode().map_err(std::io::Error::other)?;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.last_membership.clone(),
            snapshot_id: format!("restored-{}", berth_proto::now_ms()),
        };
        std::fs::create_dir_all(dir)?;
        let bytes = postcard::to_stdvec(&StoredSnapshot { meta, data }).map_err(std::io::Error::other)?;
        write_durably(dir, SNAPSHOT_FILE, &bytes)?;
        Ok(state)
    }

    /// The state, for read-only queries.
    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    async fn persist(&self, snap: StoredSnapshot) -> SResult<()> {
        let bytes = postcard::to_stdvec(&snap).map_err(snap_write_err)?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_durably(&dir, SNAPSHOT_FILE, &bytes))
            .await
            .map_err(snap_write_err)?
            .map_err(snap_write_err)?;
        *self.current.lock().unwrap() = Some(snap);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> SResult<Snapshot> {
        let _guard = self.snapshot_lock.lock().await;
        // Cloning is cheap (manifests are shared); serialization happens outside the lock.
        let state = self.state.read().unwrap().clone();
        let data = state.encode().map_err(snap_write_err)?;
        let snapshot_id = match state.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, berth_proto::now_ms()),
            None => format!("none-{}", berth_proto::now_ms()),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.last_membership.clone(),
            snapshot_id,
        };
        self.persist(StoredSnapshot { meta: meta.clone(), data: data.clone() }).await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> SResult<(Option<LogId>, StoredMembership)> {
        let s = self.state.read().unwrap();
        Ok((s.last_applied, s.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut s = self.state.write().unwrap();
        let mut out = Vec::new();
        for entry in entries {
            s.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Outcome::Unchanged),
                EntryPayload::Normal(req) => out.push(s.apply(&req)),
                EntryPayload::Membership(m) => {
                    s.node_ids_used.extend(m.nodes().map(|(id, _)| *id));
                    s.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(Outcome::Unchanged);
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> SResult<()> {
        let _guard = self.snapshot_lock.lock().await;
        let data = snapshot.into_inner();
        let mut new_state = RegistryState::decode(&data).map_err(sm_read_err)?;
        new_state.last_applied = meta.last_log_id;
        new_state.last_membership = meta.last_membership.clone();
        self.persist(StoredSnapshot { meta: meta.clone(), data }).await?;
        *self.state.write().unwrap() = new_state;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot>> {
        Ok(self.current.lock().unwrap().clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
