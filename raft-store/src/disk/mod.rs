//! The registry state on disk: one redb database that the state machine writes in Raft order
//! and request handlers read from, so no node holds the whole state in memory.
//!
//! - [`tables`]: what is stored and how keys are spelt.
//! - [`apply`]: a batch of log entries applied in one write transaction, `last_applied` with it.
//! - [`read`]: the queries, each on its own read transaction (a consistent view).
//! - [`cache`]: a bounded cache of hot tags and manifest records, invalidated by applying.
//! - [`snapshot`]: the state copied row by row to a file and back, for Raft snapshots and backups.
//!
//! Only the small part of the state (the applied position, membership, cluster secret and
//! identity) is also kept in memory, in [`Head`].
//!
//! Durability: the log is fsynced before an entry commits, so applying need not be. A batch is
//! committed without an fsync and every [`DURABLE_EVERY`] entries or [`DURABLE_BYTES`] written
//! (and before every snapshot) one is fsynced; a crash loses at most the entries since, together
//! with the `last_applied` that names them, and openraft applies them again from the log on
//! start. Nothing is ever applied twice, and the log is never purged past what is durable here.
//! (redb frees the pages a transaction replaced only at an fsynced commit, so the byte bound
//! also bounds how far the file grows between two.)

pub mod apply;
pub mod cache;
pub mod read;
pub mod snapshot;
pub mod tables;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use berth_proto::identity::Identity;
use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::state::RegistryState;
use crate::types::typ::{LogId, StoredMembership};

/// The on-disk format this build writes. Format 3 and older were one in-memory state in
/// `snapshot.bin` (see [`crate::state`]); they are migrated into this database on start.
/// Format 5 added garbage collection's tables; a format-4 state gets its indexes built on
/// open (and on import) and an empty review queue.
pub const FORMAT: u32 = 5;

/// Entries applied between two fsynced commits of the state.
pub const DURABLE_EVERY: u64 = 256;
/// Bytes (roughly) applied between two fsynced commits of the state.
pub const DURABLE_BYTES: u64 = 4 << 20;

/// Pages of the database kept in memory (redb's default is 1 GiB).
const CACHE_BYTES: usize = 64 << 20;

/// Tag entries and manifest bytes the hot cache holds (per segment; at most twice that).
const CACHE_TAGS: usize = 100_000;
const CACHE_MANIFEST_BYTES: usize = 16 << 20;

/// Keys of the meta table.
const META_FORMAT: &str = "format";
const META_HEAD: &str = "head";
const META_IDENTITY: &str = "identity";
/// Registry limits; absent until the first `SetLimits`.
const META_LIMITS: &str = "limits";
/// Cleanup policies by project; absent until the first `Cleanup` change.
const META_CLEANUP: &str = "cleanup";
/// The newest log protocol of any entry applied; absent until the first entry after protocol 1.
const META_PROTOCOL: &str = "protocol";
/// Notification endpoints and positions; absent until the first `Notify` change.
const META_NOTIFY: &str = "notify";
/// Sites and their progress; absent until the first node names its site.
const META_GEO: &str = "geo";
/// The cluster's identity; absent in a cluster founded by `berth serve` (the empty identity),
/// set when a state starts a new cluster (`berth restore`, `berth geo promote`).
const META_CLUSTER: &str = "cluster";

/// What went wrong reading or writing the state.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The database.
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    /// A stored value that does not decode.
    #[error("state record: {0}")]
    Codec(#[from] postcard::Error),
    /// A file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Data that is not what it claims to be.
    #[error("{0}")]
    Format(String),
}

macro_rules! into_db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for DiskError {
            fn from(e: $t) -> Self {
                DiskError::Db(e.into())
            }
        }
    )*};
}
into_db_error!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError, redb::DatabaseError);

/// Result of a state operation.
pub type DResult<T> = Result<T, DiskError>;

/// The small part of the state, kept in memory as well as in the meta table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Last log entry applied.
    pub last_applied: Option<LogId>,
    /// Last membership applied.
    pub last_membership: StoredMembership,
    /// Secret that signs upload state; identical on every node.
    pub http_secret: Option<Vec<u8>>,
    /// Every node id ever in the membership (ids are never reused).
    pub node_ids_used: BTreeSet<u64>,
    /// Sequence number of the oldest tombstone kept.
    pub tomb_first: u64,
    /// Sequence number the next tombstone gets.
    pub tomb_next: u64,
}

/// How much one repository holds; the row goes when all three are zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoCounts {
    /// Linked blobs.
    pub blobs: u64,
    /// Manifests.
    pub manifests: u64,
    /// Tags.
    pub tags: u64,
}

impl RepoCounts {
    fn is_empty(&self) -> bool {
        self.blobs == 0 && self.manifests == 0 && self.tags == 0
    }
}

/// The in-memory part: [`Head`] and identity, replaced as a whole after each commit.
#[derive(Debug, Clone, Default)]
pub struct Small {
    /// The head.
    pub head: Head,
    /// Users, projects, tokens, keys (small; shared by queries until the next change).
    pub identity: Arc<Identity>,
    /// Registry limits.
    pub limits: berth_proto::RegistryLimits,
    /// Cleanup policies by project (small: one per project that saved one).
    pub cleanup: Arc<crate::cleanup::Policies>,
    /// The newest log protocol of any entry applied. The leader proposed it only once every
    /// member read it, so the cluster reads it for good: no later check needs to ask.
    pub protocol: u32,
    /// Notification endpoints and how far each has received events.
    pub notify: berth_proto::notify::NotifyState,
    /// Sites, their nodes and what each lacks (counts; the rows are in `geo_missing`).
    pub geo: berth_proto::geo::GeoState,
    /// The cluster's identity (see [`DiskState::cluster_id`]).
    pub cluster: String,
}

/// The registry state in a redb database.
pub struct DiskState {
    db: Database,
    /// The directory the database is in.
    dir: std::path::PathBuf,
    small: RwLock<Small>,
    /// Entries and bytes applied since the last fsynced commit.
    undurable: Mutex<(u64, u64)>,
    /// Hot reads.
    cache: cache::HotCache,
}

impl DiskState {
    /// Opens (or creates) the state database at `path`. If `legacy` names a state of an older
    /// format (a `snapshot.bin` of format 3 or before) and the database is new, that state is
    /// loaded into it first, in one transaction.
    pub fn open(path: &Path, legacy: Option<&Path>) -> DResult<Self> {
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path)?;
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate);
        for (_, def) in tables::ALL {
            txn.open_table(def)?;
        }
        let format = {
            let meta = txn.open_table(tables::META)?;
            let f = meta.get(META_FORMAT)?.map(|v| v.value().to_vec());
            f
        };
        match format {
            Some(f) => {
                let f: u32 = postcard::from_bytes(&f)?;
                if f > FORMAT {
                    return Err(DiskError::Format(format!(
                        "{} holds state of format {f}, newer than this build's {FORMAT}: run a newer Berth on it",
                        path.display()
                    )));
                }
                if f < FORMAT {
                    apply::rebuild_derived(&txn)?;
                    txn.open_table(tables::META)?.insert(META_FORMAT, postcard::to_stdvec(&FORMAT)?.as_slice())?;
                    txn.commit()?;
                    tracing::info!(from = f, "migrated the state to format {FORMAT}");
                } else {
                    // Commits the tables a newer build of the same format added (empty), so
                    // that reads find them before the first write.
                    txn.commit()?;
                }
            }
            None => {
                if let Some(legacy) = legacy.filter(|p| p.exists()) {
                    let state = read_legacy(legacy)?;
                    apply::load_legacy(&txn, &state)?;
                    tracing::info!(from = %legacy.display(), "migrated the state to format {FORMAT}");
                } else {
                    let head = Head::default();
                    let mut meta = txn.open_table(tables::META)?;
                    meta.insert(META_HEAD, postcard::to_stdvec(&head)?.as_slice())?;
                    meta.insert(META_IDENTITY, postcard::to_stdvec(&Identity::default())?.as_slice())?;
                }
                txn.open_table(tables::META)?.insert(META_FORMAT, postcard::to_stdvec(&FORMAT)?.as_slice())?;
                txn.commit()?;
                if let Some(legacy) = legacy.filter(|p| p.exists()) {
                    // The database now holds it, durably; the old file would only mislead.
                    let done = legacy.with_extension("bin.migrated");
                    std::fs::rename(legacy, &done)?;
                }
            }
        }
        let small = load_small(&db)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(DiskState { db, dir, small: RwLock::new(small), undurable: Mutex::new((0, 0)), cache: cache::HotCache::new(CACHE_TAGS, CACHE_MANIFEST_BYTES) })
    }

    /// The directory the database is in (room for exports).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The applied position and membership.
    pub fn applied(&self) -> (Option<LogId>, StoredMembership) {
        let s = self.small.read().unwrap();
        (s.head.last_applied, s.head.last_membership.clone())
    }

    /// The in-memory part of the state.
    pub fn small(&self) -> Small {
        self.small.read().unwrap().clone()
    }

    /// The sites, their nodes and progress.
    pub fn geo(&self) -> berth_proto::geo::GeoState {
        self.small.read().unwrap().geo.clone()
    }

    /// How many sites have joined.
    pub fn site_count(&self) -> usize {
        self.small.read().unwrap().geo.sites.len()
    }

    /// The newest log protocol of any entry applied (1 if none came after protocol 1).
    pub fn protocol_seen(&self) -> u32 {
        self.small.read().unwrap().protocol.max(1)
    }

    /// True if `id` was ever a member's node id.
    pub fn node_id_used(&self, id: u64) -> bool {
        self.small.read().unwrap().head.node_ids_used.contains(&id)
    }

    /// The identity of the cluster this state belongs to: empty for a cluster founded by
    /// `berth serve`, a random id for one started from a state (`berth restore`, `berth geo
    /// promote`). Raft messages carry it, and a node takes them only from its own cluster, so
    /// an old primary that comes back cannot lead, or overwrite, the cluster that replaced it.
    pub fn cluster_id(&self) -> String {
        self.small.read().unwrap().cluster.clone()
    }

    /// Whether this state has applied anything (a node that has not may join any cluster).
    pub fn is_blank(&self) -> bool {
        self.small.read().unwrap().head.last_applied.is_none()
    }

    /// Starts a new cluster identity for this state, recording a promotion if it is one.
    pub fn begin_cluster(&self, id: &str, promoted: Option<berth_proto::geo::Promotion>) -> DResult<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate);
        {
            let mut meta = txn.open_table(tables::META)?;
            meta.insert(META_CLUSTER, postcard::to_stdvec(&id.to_string())?.as_slice())?;
            if let Some(p) = promoted {
                let mut geo = self.small.read().unwrap().geo.clone();
                geo.promoted = Some(p);
                meta.insert(META_GEO, postcard::to_stdvec(&geo)?.as_slice())?;
            }
        }
        txn.commit()?;
        self.reload_small()
    }

    /// Makes every commit so far durable (an fsynced empty commit).
    pub fn make_durable(&self) -> DResult<()> {
        let mut undurable = self.undurable.lock().unwrap();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate);
        txn.commit()?;
        *undurable = (0, 0);
        Ok(())
    }

    /// Rereads the in-memory part from the database (after a snapshot replaced it).
    fn reload_small(&self) -> DResult<()> {
        self.cache.clear();
        *self.small.write().unwrap() = load_small(&self.db)?;
        Ok(())
    }
}

fn load_small(db: &Database) -> DResult<Small> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(tables::META)?;
    let get = |k: &str| -> DResult<Vec<u8>> {
        Ok(meta.get(k)?.ok_or_else(|| DiskError::Format(format!("the state has no {k:?} record")))?.value().to_vec())
    };
    let limits = meta.get(META_LIMITS)?.map(|v| postcard::from_bytes(v.value())).transpose()?.unwrap_or_default();
    let cleanup = meta.get(META_CLEANUP)?.map(|v| postcard::from_bytes(v.value())).transpose()?.unwrap_or_default();
    let protocol = meta.get(META_PROTOCOL)?.map(|v| postcard::from_bytes(v.value())).transpose()?.unwrap_or(1);
    let notify = meta.get(META_NOTIFY)?.map(|v| postcard::from_bytes(v.value())).transpose()?.unwrap_or_default();
    let geo = meta.get(META_GEO)?.map(|v| postcard::from_bytes(v.value())).transpose()?.unwrap_or_default();
    let cluster = meta.get(META_CLUSTER)?.map(|v| postcard::from_bytes(v.value())).transpose()?.unwrap_or_default();
    Ok(Small {
        head: postcard::from_bytes(&get(META_HEAD)?)?,
        identity: Arc::new(postcard::from_bytes(&get(META_IDENTITY)?)?),
        limits,
        cleanup: Arc::new(cleanup),
        protocol,
        notify,
        geo,
        cluster,
    })
}

/// A state of format 3 or older, as `snapshot.bin` held it, at the snapshot's position.
fn read_legacy(path: &Path) -> DResult<RegistryState> {
    #[derive(Deserialize)]
    struct StoredSnapshot {
        meta: crate::types::typ::SnapshotMeta,
        data: Vec<u8>,
    }
    let bytes = std::fs::read(path)?;
    let snap: StoredSnapshot = postcard::from_bytes(&bytes).map_err(|e| DiskError::Format(format!("{}: {e}", path.display())))?;
    let mut state = RegistryState::decode(&snap.data).map_err(|e| DiskError::Format(format!("{}: {e}", path.display())))?;
    state.last_applied = snap.meta.last_log_id;
    state.last_membership = snap.meta.last_membership;
    Ok(state)
}

#[cfg(test)]
mod tests;
