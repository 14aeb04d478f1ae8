//! The state as a stream of rows: what a Raft snapshot and a backup hold.
//!
//! `BERTHSN4`, then every row of every table as `[table][key length][key][value length]
//! [value]` (lengths u32 little endian), then `[0][rows u64][SHA-256 of all bytes before it]`.
//! Exporting reads one read transaction (a consistent view; applying goes on meanwhile) and
//! writes as it reads; importing writes into one transaction as it reads and commits only if
//! the end marker and checksum are right, so a truncated or damaged stream changes nothing.
//! Neither holds more than a row in memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use redb::{ReadableTable, WriteTransaction};
use sha2::Digest as _;

use super::tables::{self, Def};
use super::{DResult, DiskError, DiskState, Head, FORMAT, META_FORMAT, META_HEAD};
use crate::state::RegistryState;

/// What a stream of this format starts with.
pub const MAGIC: &[u8; 8] = b"BERTHSN4";

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> HashingReader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> DResult<()> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => DiskError::Format("the state stream ends early".into()),
            _ => DiskError::Io(e),
        })?;
        self.hasher.update(&*buf);
        Ok(())
    }
    fn u32(&mut self) -> DResult<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn bytes(&mut self, max: u32) -> DResult<Vec<u8>> {
        let n = self.u32()?;
        if n > max {
            return Err(DiskError::Format(format!("a row of {n} bytes is larger than any Berth writes")));
        }
        let mut v = vec![0u8; n as usize];
        self.exact(&mut v)?;
        Ok(v)
    }
}

/// Longest key and value a stream may carry (keys are names; values are at most a manifest).
const MAX_KEY: u32 = 64 << 10;
const MAX_VALUE: u32 = 256 << 20;

impl DiskState {
    /// Writes the whole state to `out`. Returns the head the stream holds and its length.
    /// Everything exported is durable here before this returns, so a log purged up to the
    /// exported position never runs ahead of this node's state after a crash.
    pub fn export(&self, out: impl Write) -> DResult<(Head, u64)> {
        let txn = self.db.begin_read()?;
        self.make_durable()?;
        let mut w = Hashing { inner: std::io::BufWriter::with_capacity(1 << 20, out), hasher: sha2::Sha256::new(), bytes: 0 };
        w.write_all(MAGIC)?;
        let mut rows = 0u64;
        let mut head = None;
        for (id, def) in tables::ALL {
            let table = txn.open_table(def)?;
            for row in table.iter()? {
                let (k, v) = row?;
                let (k, v) = (k.value(), v.value());
                if id == 1 && k == META_HEAD {
                    head = Some(postcard::from_bytes::<Head>(v)?);
                }
                w.write_all(&[id])?;
                w.write_all(&(k.len() as u32).to_le_bytes())?;
                w.write_all(k.as_bytes())?;
                w.write_all(&(v.len() as u32).to_le_bytes())?;
                w.write_all(v)?;
                rows += 1;
            }
        }
        w.write_all(&[0])?;
        w.write_all(&rows.to_le_bytes())?;
        let sum = w.hasher.clone().finalize();
        w.inner.write_all(&sum)?;
        w.inner.flush()?;
        let head = head.ok_or_else(|| DiskError::Format("the state has no head".into()))?;
        Ok((head, w.bytes + 32))
    }

    /// Writes the whole state to a new file in `dir`, fsynced. Returns its path, the head,
    /// its length and its SHA-256 (hex).
    pub fn export_file(&self, dir: &Path, name: &str) -> DResult<(PathBuf, Head, u64, String)> {
        /// Hashes every byte on its way to the file, so the file's SHA-256 needs no second read.
        struct Tee {
            file: std::fs::File,
            sum: sha2::Sha256,
        }
        impl Write for Tee {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let n = self.file.write(buf)?;
                self.sum.update(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.file.flush()
            }
        }
        let path = dir.join(name);
        let mut tee = Tee { file: std::fs::File::create(&path)?, sum: sha2::Sha256::new() };
        let written = self.export(&mut tee).and_then(|r| {
            tee.file.sync_all()?;
            Ok(r)
        });
        let (head, len) = match written {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        Ok((path, head, len, hex::encode(tee.sum.finalize())))
    }

    /// Replaces the whole state with the stream `input` (of this format), then lets `adjust`
    /// change the head before it is committed. Nothing changes unless the stream is whole.
    pub fn import(&self, input: impl Read, adjust: impl FnOnce(&mut Head)) -> DResult<Head> {
        let _undurable = self.undurable.lock().unwrap();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate);
        clear(&txn)?;
        let mut r = HashingReader { inner: std::io::BufReader::with_capacity(1 << 20, input), hasher: sha2::Sha256::new() };
        let mut magic = [0u8; 8];
        r.exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(DiskError::Format("not a Berth state stream of format 4".into()));
        }
        let mut rows = 0u64;
        {
            let mut open: Vec<(u8, redb::Table<&str, &[u8]>)> = Vec::new();
            for (id, def) in tables::ALL {
                open.push((id, txn.open_table(def)?));
            }
            loop {
                let mut id = [0u8];
                r.exact(&mut id)?;
                if id[0] == 0 {
                    break;
                }
                let table = match open.iter_mut().find(|(i, _)| *i == id[0]) {
                    Some((_, t)) => t,
                    None => return Err(DiskError::Format(format!("table {} is unknown to this build: run a newer Berth", id[0]))),
                };
                let k = String::from_utf8(r.bytes(MAX_KEY)?).map_err(|_| DiskError::Format("a key is not UTF-8".into()))?;
                let v = r.bytes(MAX_VALUE)?;
                table.insert(k.as_str(), v.as_slice())?;
                rows += 1;
            }
        }
        let mut n = [0u8; 8];
        r.exact(&mut n)?;
        let expected = r.hasher.clone().finalize();
        let mut sum = [0u8; 32];
        r.inner.read_exact(&mut sum).map_err(|_| DiskError::Format("the state stream ends early".into()))?;
        if u64::from_le_bytes(n) != rows || sum != expected.as_slice() {
            return Err(DiskError::Format("the state stream is damaged: its checksum does not match".into()));
        }
        let head = finish_import(&txn, adjust)?;
        txn.commit()?;
        drop(_undurable);
        self.reload_small()?;
        Ok(head)
    }

    /// Replaces the whole state with `backup`: a stream of this format or a state of an older
    /// one (as backups before format 4 held it), then lets `adjust` change the head.
    pub fn restore(&self, backup: &[u8], adjust: impl FnOnce(&mut Head)) -> DResult<Head> {
        if backup.starts_with(MAGIC) {
            return self.import(backup, adjust);
        }
        let state = RegistryState::decode(backup).map_err(|e| DiskError::Format(format!("not a Berth state: {e}")))?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate);
        clear(&txn)?;
        super::apply::load_legacy(&txn, &state)?;
        txn.open_table(tables::META)?.insert(META_FORMAT, postcard::to_stdvec(&FORMAT)?.as_slice())?;
        let head = finish_import(&txn, adjust)?;
        txn.commit()?;
        self.reload_small()?;
        Ok(head)
    }
}

/// Empties every table.
fn clear(txn: &WriteTransaction) -> DResult<()> {
    for (_, def) in tables::ALL {
        let def: Def = def;
        txn.delete_table(def)?;
        txn.open_table(def)?;
    }
    Ok(())
}

/// Checks the imported format and lets `adjust` change the imported head.
fn finish_import(txn: &WriteTransaction, adjust: impl FnOnce(&mut Head)) -> DResult<Head> {
    let mut meta = txn.open_table(tables::META)?;
    let format: u32 = match meta.get(META_FORMAT)? {
        Some(v) => postcard::from_bytes(v.value())?,
        None => return Err(DiskError::Format("the state stream has no format".into())),
    };
    if format > FORMAT {
        return Err(DiskError::Format(format!("the state is of format {format}, newer than this build's {FORMAT}")));
    }
    if format < FORMAT {
        // A stream from a node of an older build: the indexes it did not have are built here.
        super::apply::rebuild_derived(txn)?;
        meta.insert(META_FORMAT, postcard::to_stdvec(&FORMAT)?.as_slice())?;
    }
    let mut head: Head = match meta.get(META_HEAD)? {
        Some(v) => postcard::from_bytes(v.value())?,
        None => return Err(DiskError::Format("the state stream has no head".into())),
    };
    adjust(&mut head);
    meta.insert(META_HEAD, postcard::to_stdvec(&head)?.as_slice())?;
    Ok(head)
}
