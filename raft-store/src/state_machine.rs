//! The Raft state machine: applies committed commands to the on-disk state ([`DiskState`]) and
//! keeps durable snapshots so the log can be purged.
//!
//! A snapshot is a file: the state exported row by row from one read transaction while
//! applying goes on, fsynced, then named in `snapshots/current` (also fsynced). openraft sends
//! it to a follower in chunks read from the file, and the follower writes them to
//! `snapshots/incoming.part` and imports it in one transaction. No side holds the state in
//! memory.
//!
//! Files under the state directory: `state.redb` (the state), `snapshots/*.snap`,
//! `snapshots/current`; `snapshot.bin` was the whole state of format 3 and older, migrated
//! into `state.redb` on the first start of this build (then renamed `snapshot.bin.migrated`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};

use berth_proto::Outcome;

use crate::disk::{DiskError, DiskState, Head};
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::TypeConfig;

type SResult<T> = Result<T, StorageError<u64>>;

/// The registry state shared between the state machine (writer) and request handlers (readers).
pub type SharedState = Arc<DiskState>;

const STATE_DB: &str = "state.redb";
const LEGACY_SNAPSHOT: &str = "snapshot.bin";
const SNAPSHOTS: &str = "snapshots";
const CURRENT: &str = "current";
const INCOMING: &str = "incoming.part";

/// What `snapshots/current` holds: the snapshot's metadata and its file's name.
#[derive(Serialize, Deserialize, Clone)]
struct Current {
    meta: SnapshotMeta,
    file: String,
}

/// Asked before each batch is applied: `Err(why)` while the disk is too full to write the
/// state safely.
pub type SpaceCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The state machine store handed to openraft.
#[derive(Clone)]
pub struct StateMachineStore {
    state: SharedState,
    dir: PathBuf,
    space: Option<SpaceCheck>,
    /// Serializes snapshot building and installation.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}
fn snap_read_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::read_snapshot(None, AnyError::error(e.to_string())).into()
}
fn snap_write_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

/// Writes `bytes` to `dir/name` atomically and durably: temp file, fsync, rename, fsync dir.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, migrating a state of an older format, and makes a
    /// snapshot if there is state but none (after a migration or a restore), so that a new
    /// voter can always be sent one.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let snapshots = dir.join(SNAPSHOTS);
        std::fs::create_dir_all(&snapshots)?;
        let state = DiskState::open(&dir.join(STATE_DB), Some(&dir.join(LEGACY_SNAPSHOT))).map_err(std::io::Error::other)?;
        let store = StateMachineStore { state: Arc::new(state), dir: dir.to_path_buf(), space: None, snapshot_lock: Arc::new(tokio::sync::Mutex::new(())) };
        let current = store.current().map_err(std::io::Error::other)?;
        // Leftovers of a transfer or a build that a crash cut short, and replaced snapshots.
        for entry in std::fs::read_dir(&snapshots)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name != CURRENT && current.as_ref().is_none_or(|c| c.file != name) {
                let _ = std::fs::remove_file(snapshots.join(&name));
            }
        }
        if current.is_none() && store.state.applied().0.is_some() {
            store.write_snapshot().map_err(std::io::Error::other)?;
        }
        Ok(store)
    }

    /// Makes `dir` (empty: no state yet) the state machine of a new single-voter cluster of
    /// node `node_id` at `addr`, holding the registry state of `backup` (as `berth cluster
    /// backup` writes it: the snapshot stream, or a whole state of format 3 and older). The
    /// state is placed at log index 0 with that one voter as its membership; the node then
    /// starts as that cluster's leader, and voters added later receive it as a snapshot. The
    /// old cluster's node ids are forgotten (the new cluster numbers its own nodes). The new
    /// cluster's identity is `cluster_id` (see [`DiskState::cluster_id`]): nodes of the old
    /// cluster cannot send it Raft messages.
    /// Returns the restored state.
    pub fn seed_from_backup(dir: &Path, backup: &[u8], node_id: u64, addr: &str, cluster_id: &str) -> std::io::Result<SharedState> {
        if dir.join(STATE_DB).exists() || dir.join(LEGACY_SNAPSHOT).exists() {
            return Err(std::io::Error::other(format!("{} already holds a state machine", dir.display())));
        }
        std::fs::create_dir_all(dir)?;
        let state = DiskState::open(&dir.join(STATE_DB), None).map_err(std::io::Error::other)?;
        let log_id = LogId::new(openraft::CommittedLeaderId::new(0, node_id), 0);
        let membership = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([node_id])],
            std::collections::BTreeMap::from([(node_id, openraft::BasicNode::new(addr))]),
        );
        state
            .restore(backup, |head| {
                head.last_applied = Some(log_id);
                head.last_membership = StoredMembership::new(Some(log_id), membership);
                head.node_ids_used = std::collections::BTreeSet::from([node_id]);
            })
            .map_err(|e| std::io::Error::other(format!("not a Berth backup: {e}")))?;
        state.begin_cluster(cluster_id, None).map_err(std::io::Error::other)?;
        Ok(Arc::new(state))
    }

    /// Waits, before applying, until `check` passes. openraft stops its core for good on a
    /// storage error, so a write that would meet a full disk must not be tried: committed
    /// entries wait in the log instead (reads then wait for them, and fail with 503 after
    /// their timeout), and applying resumes by itself once space returns.
    pub fn with_space_check(mut self, check: SpaceCheck) -> Self {
        self.space = Some(check);
        self
    }

    /// The state, for read-only queries.
    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    fn current(&self) -> Result<Option<Current>, DiskError> {
        match std::fs::read(self.dir.join(SNAPSHOTS).join(CURRENT)) {
            Ok(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes `file` (in the snapshots directory, fsynced) the current snapshot, and removes
    /// the one it replaces.
    fn make_current(&self, meta: &SnapshotMeta, file: String) -> Result<(), DiskError> {
        let old = self.current()?;
        let dir = self.dir.join(SNAPSHOTS);
        write_durably(&dir, CURRENT, &postcard::to_stdvec(&Current { meta: meta.clone(), file: file.clone() })?)?;
        if let Some(old) = old.filter(|o| o.file != file) {
            let _ = std::fs::remove_file(dir.join(old.file));
        }
        Ok(())
    }

    /// Exports the state to a new snapshot file and makes it current (blocking).
    fn write_snapshot(&self) -> Result<SnapshotMeta, DiskError> {
        let dir = self.dir.join(SNAPSHOTS);
        let name = format!("{}.snap", berth_proto::now_ms());
        let tmp = format!("{name}.tmp");
        let started = std::time::Instant::now();
        let (path, head, bytes, _) = self.state.export_file(&dir, &tmp)?;
        std::fs::rename(&path, dir.join(&name))?;
        let meta = snapshot_meta(&head);
        self.make_current(&meta, name)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes, ms = started.elapsed().as_millis() as u64, "snapshot built");
        Ok(meta)
    }
}

fn snapshot_meta(head: &Head) -> SnapshotMeta {
    let snapshot_id = match head.last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id, l.index, berth_proto::now_ms()),
        None => format!("none-{}", berth_proto::now_ms()),
    };
    SnapshotMeta { last_log_id: head.last_applied, last_membership: head.last_membership.clone(), snapshot_id }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, DiskError> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> SResult<Snapshot> {
        let _guard = self.snapshot_lock.lock().await;
        let me = self.clone();
        let meta = blocking(move || me.write_snapshot()).await.map_err(snap_write_err)?;
        let current = self.current().map_err(snap_read_err)?.ok_or_else(|| snap_read_err("the snapshot just built is gone"))?;
        let file = tokio::fs::File::open(self.dir.join(SNAPSHOTS).join(current.file)).await.map_err(snap_read_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> SResult<(Option<LogId>, StoredMembership)> {
        Ok(self.state.applied())
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(check) = &self.space {
            let mut waited = false;
            while let Err(why) = check() {
                if !waited {
                    tracing::warn!(%why, "the disk is too full to apply committed entries; waiting for space");
                    waited = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            if waited {
                tracing::info!("space returned: applying again");
            }
        }
        let entries: Vec<Entry> = entries.into_iter().collect();
        let state = self.state.clone();
        blocking(move || state.apply_entries(entries)).await.map_err(sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<tokio::fs::File>> {
        let path = self.dir.join(SNAPSHOTS).join(INCOMING);
        let file = tokio::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).await.map_err(snap_write_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<tokio::fs::File>) -> SResult<()> {
        let _guard = self.snapshot_lock.lock().await;
        let mut file = snapshot.into_std().await;
        let (me, m) = (self.clone(), meta.clone());
        blocking(move || {
            use std::io::Seek;
            file.sync_all()?;
            file.seek(std::io::SeekFrom::Start(0))?;
            let started = std::time::Instant::now();
            me.state.import(&mut file, |head| {
                head.last_applied = m.last_log_id;
                head.last_membership = m.last_membership.clone();
            })?;
            let dir = me.dir.join(SNAPSHOTS);
            let name = format!("{}.snap", berth_proto::now_ms());
            std::fs::rename(dir.join(INCOMING), dir.join(&name))?;
            me.make_current(&m, name)?;
            tracing::info!(snapshot = %m.snapshot_id, ms = started.elapsed().as_millis() as u64, "snapshot installed");
            Ok(())
        })
        .await
        .map_err(snap_write_err)
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot>> {
        let Some(current) = self.current().map_err(snap_read_err)? else { return Ok(None) };
        let file = tokio::fs::File::open(self.dir.join(SNAPSHOTS).join(current.file)).await.map_err(snap_read_err)?;
        Ok(Some(Snapshot { meta: current.meta, snapshot: Box::new(file) }))
    }
}
