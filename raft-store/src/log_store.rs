//! Durable Raft log storage on redb.
//!
//! Every write (append, vote, truncate, purge) is one redb transaction committed with
//! `Durability::Immediate`, i.e. fsynced, before openraft is told it happened. Writes run on
//! the blocking pool so an fsync never stalls the async runtime.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageError, StorageIOError};
use redb::{Database, ReadableTable, TableDefinition};

use crate::types::typ::{Entry, LogId, Vote};
use crate::TypeConfig;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

type SResult<T> = Result<T, StorageError<u64>>;

/// The Raft log, vote and committed index, in one redb file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}
fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn encode<T: serde::Serialize>(v: &T) -> SResult<Vec<u8>> {
    postcard::to_stdvec(v).map_err(write_err)
}
fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> SResult<T> {
    postcard::from_bytes(b).map_err(read_err)
}

impl LogStore {
    /// Opens (or creates) the log database at `path`.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        // The log is written far more than read back; a small page cache keeps memory flat.
        let db = Database::builder().set_cache_size(16 * 1024 * 1024).create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> SResult<Option<T>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Runs one durable write transaction on the blocking pool.
    async fn write<F>(&self, f: F) -> SResult<()>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate);
            f(&txn)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)
    }

    async fn put_meta<T: serde::Serialize>(&self, key: &'static str, v: &T) -> SResult<()> {
        let bytes = encode(v)?;
        self.write(move |txn| {
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOGS).map_err(read_err)?;
        let start = match range.start_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in t.range::<u64>((start, end)).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId> = self.get_meta::<Option<LogId>>(KEY_LAST_PURGED)?.flatten();
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOGS).map_err(read_err)?;
        let last = match t.last().map_err(read_err)? {
            Some((_, v)) => Some(decode::<Entry>(v.value())?.log_id),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> SResult<()> {
        self.put_meta(KEY_VOTE, vote).await
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> SResult<()> {
        self.put_meta(KEY_COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId>> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, encode(&e)?)))
            .collect::<SResult<Vec<_>>>()?;
        let res = self
            .write(move |txn| {
                let mut t = txn.open_table(LOGS)?;
                for (idx, bytes) in &encoded {
                    t.insert(*idx, bytes.as_slice())?;
                }
                Ok(())
            })
            .await;
        // Only now, after the fsync, may openraft treat the entries as persisted.
        callback.log_io_completed(res.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        res
    }

    async fn truncate(&mut self, log_id: LogId) -> SResult<()> {
        self.write(move |txn| {
            txn.open_table(LOGS)?.retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> SResult<()> {
        let bytes = encode(&Some(log_id))?;
        self.write(move |txn| {
            txn.open_table(META)?.insert(KEY_LAST_PURGED, bytes.as_slice())?;
            txn.open_table(LOGS)?.retain_in(..=log_id.index, |_, _| false)?;
            Ok(())
        })
        .await
    }
}
