//! Filesystem blob storage, written directly rather than through `object_store`'s
//! `LocalFileSystem`: that store neither fsyncs nor writes at offsets, and Berth needs both to
//! acknowledge durable data and to accept chunked uploads without copying them again.
//!
//! Layout under the root:
//! - `blobs/<alg>/<2 hex>/<hex>`: content-addressed, written once by hard-linking a fully
//!   fsynced, verified staging file (a second upload of the same digest is a no-op);
//! - `uploads/<id>/data`: the staged bytes; `uploads/<id>/startedat`: start time;
//!   `uploads/<id>/state`: the durable offset and the running SHA-256 over the bytes before
//!   it (replaced atomically after the bytes are fsynced), and once finished, the digest;
//!   `uploads/<id>/lock`: `flock`ed by the one request writing to the upload. Its writes run
//!   on blocking threads that keep the lock until they end, so a write abandoned by a
//!   timed-out request finishes before any retry starts, and cannot land after it.
//!
//! The client's signed `Location` names the upload, nothing more: what its bytes are and
//! where it stands is only ever read from here.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_api::{BlobError, BlobStore, ByteStream};

use super::valid_id;
use berth_proto::{Algorithm, Digest, ResumableSha256};
use bytes::BytesMut;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// Bytes gathered before one positioned write is handed to the blocking pool.
const WRITE_BATCH: usize = 4 * 1024 * 1024;
/// Read buffer for blob downloads.
const READ_BUF: usize = 256 * 1024;
/// How long a request waits for another one still writing to the same upload.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Blob storage on a local (or shared) filesystem.
#[derive(Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

fn io_err(e: std::io::Error) -> BlobError {
    match e.kind() {
        std::io::ErrorKind::NotFound => BlobError::NotFound,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => BlobError::Full(e.to_string()),
        _ => BlobError::Storage(e.to_string()),
    }
}

/// Like [`io_err`], for paths inside an upload: a missing file means the upload is gone.
fn upload_err(e: std::io::Error) -> BlobError {
    match io_err(e) {
        BlobError::NotFound => BlobError::UploadUnknown,
        e => e,
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    tests::SYNCED.lock().unwrap().push(dir.to_path_buf());
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, fsyncing the parent of each directory it creates,
/// so that a new directory's name is as durable as what is put in it.
fn create_dirs_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    create_dirs_durably(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, BlobError> + Send + 'static) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BlobError::Storage(e.to_string()))?
}

/// An upload's durable state (`uploads/<id>/state`).
#[derive(Serialize, Deserialize)]
struct UploadRecord {
    /// Bytes received and fsynced.
    offset: u64,
    /// Hex of the encoded [`ResumableSha256`] over those bytes.
    sha256: String,
    /// Set once the bytes are linked at this digest: the upload takes no more writes.
    finished: Option<Digest>,
}

impl UploadRecord {
    fn hasher(&self) -> Result<ResumableSha256, BlobError> {
        let raw = hex::decode(&self.sha256).map_err(|e| BlobError::Storage(format!("upload state: {e}")))?;
        let h = ResumableSha256::decode(&raw).map_err(|e| BlobError::Storage(format!("upload state: {e}")))?;
        if h.len() != self.offset {
            return Err(BlobError::Storage("upload state: hash length differs from offset".into()));
        }
        Ok(h)
    }

    fn read(dir: &Path) -> Result<UploadRecord, BlobError> {
        let raw = std::fs::read(dir.join("state")).map_err(upload_err)?;
        serde_json::from_slice(&raw).map_err(|e| BlobError::Storage(format!("upload state: {e}")))
    }

    /// Replaces the state atomically (write, fsync, rename).
    fn write(&self, dir: &Path) -> Result<(), BlobError> {
        let tmp = dir.join("state.tmp");
        let f = std::fs::File::create(&tmp).map_err(upload_err)?;
        f.write_all_at(&serde_json::to_vec(self).expect("state serializes"), 0).map_err(upload_err)?;
        f.sync_all().map_err(upload_err)?;
        std::fs::rename(&tmp, dir.join("state")).map_err(upload_err)
    }
}

/// The exclusive `flock` on one upload, released when the last holder drops it.
struct UploadLock(#[allow(dead_code)] std::fs::File);

impl FsBlobStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("blobs"))?;
        std::fs::create_dir_all(root.join("uploads"))?;
        Ok(FsBlobStore { root: root.to_path_buf() })
    }

    /// The directory everything is kept under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every blob file under `blobs/<algorithm>/<2 hex>/<hex>`, with its size.
    pub async fn list_content(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        let root = self.root.join("blobs");
        blocking(move || {
            let mut out = Vec::new();
            let dirs = |p: &Path| -> Vec<std::fs::DirEntry> { std::fs::read_dir(p).into_iter().flatten().flatten().collect() };
            for alg in dirs(&root) {
                for prefix in dirs(&alg.path()) {
                    for file in dirs(&prefix.path()) {
                        let name = format!("{}:{}", alg.file_name().to_string_lossy(), file.file_name().to_string_lossy());
                        if let (Ok(d), Ok(meta)) = (Digest::parse(&name), file.metadata()) {
                            out.push((d, meta.len()));
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a blob's file; the directory is fsynced so that the deletion survives a crash
    /// (a blob that came back would only be garbage again, but its space is what was asked for).
    pub async fn delete_content(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.blob_path(digest);
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("blob path has a parent")).map_err(io_err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e)),
        })
        .await
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// Takes the upload's lock, waiting up to [`LOCK_WAIT`] for a writer still at work.
    async fn lock(&self, id: &str) -> Result<Arc<UploadLock>, BlobError> {
        valid_id(id).map_err(|_| BlobError::UploadUnknown)?;
        let path = self.upload_dir(id).join("lock");
        let file = blocking(move || std::fs::OpenOptions::new().write(true).open(path).map_err(upload_err)).await?;
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(BlobError::UploadBusy),
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        Ok(Arc::new(UploadLock(file)))
    }

    /// See [`super::SiteStore::probe`].
    pub async fn probe(&self) -> anyhow::Result<()> {
        let path = self.root.join("uploads").join(format!("probe-{}", rand::random::<u64>()));
        let marker = b"berth start-up probe".to_vec();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            use anyhow::Context as _;
            let f = std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
            f.write_all_at(&marker, 0).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))?;
            let back = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            std::fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
            anyhow::ensure!(back == marker, "{} read back other bytes than were written", path.display());
            Ok(())
        })
        .await?
    }

    /// Removes uploads started longer than `age` ago; returns how many.
    pub async fn purge_uploads(&self, age: Duration, dry_run: bool) -> Result<usize, BlobError> {
        let dir = self.root.join("uploads");
        blocking(move || {
            let cutoff = berth_proto::now_ms().saturating_sub(age.as_millis() as u64);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).map_err(io_err)? {
                let path = entry.map_err(io_err)?.path();
                if path.is_file() {
                    // Content staged by `put_content` in a process that died before it
                    // linked the content and removed the file.
                    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                    let age_ms = modified.and_then(|m| m.elapsed().ok()).map_or(u64::MAX, |a| a.as_millis() as u64);
                    if age_ms > age.as_millis() as u64 && !dry_run {
                        let _ = std::fs::remove_file(&path);
                    }
                    continue;
                }
                let started = std::fs::read_to_string(path.join("startedat"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if started < cutoff {
                    n += 1;
                    if !dry_run {
                        let _ = std::fs::remove_dir_all(&path);
                    }
                }
            }
            Ok(n)
        })
        .await
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<ByteStream, BlobError> {
        let mut f = tokio::fs::File::open(self.blob_path(digest)).await.map_err(io_err)?;
        let len = match range {
            Some((a, b)) => {
                f.seek(std::io::SeekFrom::Start(a)).await.map_err(io_err)?;
                b - a + 1
            }
            None => f.metadata().await.map_err(io_err)?.len(),
        };
        Ok(Box::pin(ReaderStream::with_capacity(f.take(len), READ_BUF)))
    }

    async fn create_upload(&self, id: &str) -> Result<(), BlobError> {
        valid_id(id).map_err(|_| BlobError::UploadUnknown)?;
        let dir = self.upload_dir(id);
        blocking(move || {
            std::fs::create_dir(&dir).map_err(io_err)?;
            std::fs::write(dir.join("startedat"), berth_proto::now_ms().to_string()).map_err(io_err)?;
            std::fs::File::create(dir.join("data")).map_err(io_err)?;
            std::fs::File::create(dir.join("lock")).map_err(io_err)?;
            let fresh = UploadRecord { offset: 0, sha256: hex::encode(ResumableSha256::new().encode()), finished: None };
            fresh.write(&dir)
        })
        .await
    }

    async fn upload_offset(&self, id: &str) -> Result<u64, BlobError> {
        valid_id(id).map_err(|_| BlobError::UploadUnknown)?;
        let dir = self.upload_dir(id);
        Ok(blocking(move || UploadRecord::read(&dir)).await?.offset)
    }

    async fn write_upload(&self, id: &str, offset: u64, mut body: ByteStream) -> Result<u64, BlobError> {
        let lock = self.lock(id).await?;
        let dir = self.upload_dir(id);
        let (record, file) = {
            let dir = dir.clone();
            blocking(move || {
                let record = UploadRecord::read(&dir)?;
                let file = std::fs::OpenOptions::new().write(true).open(dir.join("data")).map_err(upload_err)?;
                Ok((record, file))
            })
            .await?
        };
        if record.finished.is_some() {
            return Err(BlobError::UploadUnknown);
        }
        if record.offset != offset {
            return Err(BlobError::OffsetMismatch { at: record.offset });
        }
        let mut hash = record.hasher()?;
        let file = Arc::new(file);
        let mut pos = offset;
        let mut buf = BytesMut::with_capacity(WRITE_BATCH);
        let mut pending: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
        // Hashing overlaps with the previous batch's disk write. Every blocking write holds the
        // lock, so if this request is dropped, a retry waits until the write has ended.
        let streamed: Result<(), BlobError> = async { loop {
            let next = body.next().await;
            let done = next.is_none();
            if let Some(chunk) = next {
                let chunk = chunk.map_err(BlobError::body)?;
                hash.update(&chunk);
                buf.extend_from_slice(&chunk);
            }
            if buf.len() >= WRITE_BATCH || (done && !buf.is_empty()) {
                if let Some(h) = pending.take() {
                    h.await.map_err(|e| BlobError::Storage(e.to_string()))?.map_err(upload_err)?;
                }
                let data = buf.split().freeze();
                buf.reserve(WRITE_BATCH);
                let (f, held, at) = (file.clone(), lock.clone(), pos);
                pos += data.len() as u64;
                pending = Some(tokio::task::spawn_blocking(move || {
                    let _held = held;
                    f.write_all_at(&data, at)
                }));
            }
            if done {
                break;
            }
        }
        if let Some(h) = pending.take() {
            h.await.map_err(|e| BlobError::Storage(e.to_string()))?.map_err(upload_err)?;
        }
        Ok(()) }
        .await;
        if let Err(e) = streamed {
            if let Some(h) = pending.take() {
                let _ = h.await;
            }
            // Give back the space the failed chunk took (a full disk must not stay full).
            let (file, held) = (file.clone(), lock.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let _held = held;
                file.set_len(offset)
            })
            .await;
            return Err(e);
        }
        if pos == offset {
            return Ok(offset);
        }
        // The bytes are durable before the state that counts them: a crash leaves the old
        // offset (and the client resumes from it) or the new one, never a state ahead of data.
        let record = UploadRecord { offset: pos, sha256: hex::encode(hash.encode()), finished: None };
        blocking(move || {
            let _held = lock;
            file.sync_data().map_err(upload_err)?;
            record.write(&dir)
        })
        .await?;
        Ok(pos)
    }

    async fn finish_upload(&self, id: &str, digest: &Digest) -> Result<u64, BlobError> {
        let lock = self.lock(id).await?;
        let dir = self.upload_dir(id);
        let target = self.blob_path(digest);
        let digest = digest.clone();
        blocking(move || {
            let _held = lock;
            let mut record = UploadRecord::read(&dir)?;
            let size = record.offset;
            match &record.finished {
                Some(d) if *d == digest => {
                    // A retry after the metadata commit failed: the bytes are already linked.
                    if std::fs::metadata(&target).is_ok() {
                        return Ok(size);
                    }
                }
                Some(d) => return Err(BlobError::DigestMismatch { expected: digest, actual: d.clone() }),
                None => {
                    let actual = match digest.algorithm() {
                        Algorithm::Sha256 => record.hasher()?.digest(),
                        Algorithm::Sha512 => {
                            let mut h = sha2::Sha512::new();
                            let f = std::fs::File::open(dir.join("data")).map_err(upload_err)?;
                            std::io::copy(&mut std::io::Read::take(f, size), &mut h).map_err(upload_err)?;
                            Digest::from_raw(Algorithm::Sha512, &h.finalize())
                        }
                    };
                    if actual != digest {
                        return Err(BlobError::DigestMismatch { expected: digest, actual });
                    }
                    // No write is accepted from here on, so the staged file (soon one inode
                    // with the blob) can never change again.
                    record.finished = Some(digest.clone());
                    record.write(&dir)?;
                }
            }
            let data = dir.join("data");
            let f = std::fs::OpenOptions::new().write(true).open(&data).map_err(upload_err)?;
            if f.metadata().map_err(io_err)?.len() > size {
                // Bytes past the offset come from writes that failed before their state did.
                f.set_len(size).map_err(io_err)?;
            }
            // The bytes reach the disk before the blob's name does.
            f.sync_all().map_err(io_err)?;
            let parent = target.parent().expect("blob path has a parent");
            create_dirs_durably(parent).map_err(io_err)?;
            match std::fs::hard_link(&data, &target) {
                Ok(()) => sync_dir(parent).map_err(io_err)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
            Ok(size)
        })
        .await
    }

    async fn remove_upload(&self, id: &str) -> Result<(), BlobError> {
        valid_id(id).map_err(|_| BlobError::UploadUnknown)?;
        let dir = self.upload_dir(id);
        blocking(move || std::fs::remove_dir_all(dir).map_err(upload_err)).await
    }

    async fn put_content(&self, digest: &Digest, bytes: bytes::Bytes) -> Result<(), BlobError> {
        let actual = digest.same_algorithm_of(&bytes);
        if &actual != digest {
            return Err(BlobError::DigestMismatch { expected: digest.clone(), actual });
        }
        let target = self.blob_path(digest);
        // Staged beside the uploads (same filesystem, so the rename below is atomic); a file
        // left by a crash is removed by upload purging.
        let staged = self.root.join("uploads").join(format!("content-{:016x}", rand::random::<u64>()));
        let expected = digest.clone();
        blocking(move || {
            // Small content is checked where it stands: a damaged copy is replaced, so pushing
            // a manifest again repairs it.
            if std::fs::read(&target).is_ok_and(|held| expected.same_algorithm_of(&held) == expected) {
                return Ok(());
            }
            let stored = (|| {
                let mut f = std::fs::File::create(&staged)?;
                std::io::Write::write_all(&mut f, &bytes)?;
                // The bytes reach the disk before the blob's name does.
                f.sync_all()?;
                let parent = target.parent().expect("blob path has a parent");
                create_dirs_durably(parent)?;
                std::fs::rename(&staged, &target)?;
                sync_dir(parent)
            })();
            let _ = std::fs::remove_file(&staged);
            stored.map_err(io_err)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Mutex;

    /// Directories fsynced by this process, newest last.
    pub(crate) static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    fn body(parts: &[&'static [u8]]) -> ByteStream {
        Box::pin(futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>()))
    }

    async fn collect(mut s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn chunked_upload_keeps_its_offset_and_links_verified_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        store.create_upload("ab").await.unwrap();
        assert_eq!(store.upload_offset("ab").await.unwrap(), 0);
        assert_eq!(store.write_upload("ab", 0, body(&[b"hel", b"lo "])).await.unwrap(), 6);
        // A replayed first chunk is refused with where the upload really is.
        assert!(matches!(store.write_upload("ab", 0, body(&[b"XXXXXX"])).await, Err(BlobError::OffsetMismatch { at: 6 })));
        assert_eq!(store.upload_offset("ab").await.unwrap(), 6);
        assert_eq!(store.write_upload("ab", 6, body(&[b"world"])).await.unwrap(), 11);
        let d = Digest::sha256_of(b"hello world");
        assert_eq!(store.finish_upload("ab", &d).await.unwrap(), 11);
        // Finished: no more writes, and a retried finish (after a failed commit) is a no-op.
        assert!(matches!(store.write_upload("ab", 11, body(&[b"!"])).await, Err(BlobError::UploadUnknown)));
        assert_eq!(store.upload_offset("ab").await.unwrap(), 11);
        assert_eq!(store.finish_upload("ab", &d).await.unwrap(), 11);
        store.remove_upload("ab").await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(11));
        assert_eq!(collect(store.read(&d, None).await.unwrap()).await, b"hello world");
        assert_eq!(collect(store.read(&d, Some((6, 9))).await.unwrap()).await, b"worl");
        assert!(matches!(store.upload_offset("ab").await, Err(BlobError::UploadUnknown)));
        // A second upload of the same content is a no-op.
        store.create_upload("cd").await.unwrap();
        store.write_upload("cd", 0, body(&[b"hello world"])).await.unwrap();
        store.finish_upload("cd", &d).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(11));
    }

    #[tokio::test]
    async fn wrong_digest_links_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        store.create_upload("ab").await.unwrap();
        store.write_upload("ab", 0, body(&[b"evil"])).await.unwrap();
        let claimed = Digest::sha256_of(b"good");
        match store.finish_upload("ab", &claimed).await {
            Err(BlobError::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, claimed);
                assert_eq!(actual, Digest::sha256_of(b"evil"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.stat(&claimed).await.unwrap(), None);
        let sha512 = Digest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        assert!(matches!(store.finish_upload("ab", &sha512).await, Err(BlobError::DigestMismatch { .. })));
        assert_eq!(store.stat(&sha512).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failed_chunk_leaves_the_upload_usable() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        store.create_upload("ab").await.unwrap();
        store.write_upload("ab", 0, body(&[b"abc"])).await.unwrap();
        let broken: ByteStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"def")),
            Err(std::io::Error::other("client went away")),
        ]));
        assert!(matches!(store.write_upload("ab", 3, broken).await, Err(BlobError::Body(_))));
        assert_eq!(store.upload_offset("ab").await.unwrap(), 3);
        assert_eq!(store.write_upload("ab", 3, body(&[b"xyz"])).await.unwrap(), 6);
        let d = Digest::sha256_of(b"abcxyz");
        store.finish_upload("ab", &d).await.unwrap();
        assert_eq!(collect(store.read(&d, None).await.unwrap()).await, b"abcxyz");
    }

    #[tokio::test]
    async fn an_abandoned_write_never_lands_after_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        store.create_upload("ab").await.unwrap();
        // A request sends more than one write batch of 'A's, then stalls; its client gives up.
        let stale = vec![b'A'; WRITE_BATCH + 1];
        let stalled: ByteStream = Box::pin(
            futures::stream::iter(vec![Ok(Bytes::from(stale))]).chain(futures::stream::pending()),
        );
        let abandoned = tokio::spawn({
            let store = store.clone();
            async move { store.write_upload("ab", 0, stalled).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        abandoned.abort();
        let _ = abandoned.await;
        // The retry sends other bytes from the same offset.
        let fresh = vec![b'B'; WRITE_BATCH + 10];
        let retry: ByteStream = Box::pin(futures::stream::iter(vec![Ok(Bytes::from(fresh.clone()))]));
        assert_eq!(store.write_upload("ab", 0, retry).await.unwrap(), fresh.len() as u64);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let d = Digest::sha256_of(&fresh);
        store.finish_upload("ab", &d).await.unwrap();
        assert_eq!(collect(store.read(&d, None).await.unwrap()).await, fresh);
    }

    #[tokio::test]
    async fn the_first_blob_of_an_algorithm_makes_its_directories_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        store.create_upload("ab").await.unwrap();
        store.write_upload("ab", 0, body(&[b"x"])).await.unwrap();
        let mut h = sha2::Sha512::new();
        h.update(b"x");
        let d = Digest::from_raw(Algorithm::Sha512, &h.finalize());
        store.finish_upload("ab", &d).await.unwrap();
        let synced = SYNCED.lock().unwrap().clone();
        let blobs = dir.path().join("blobs");
        for must in [blobs.clone(), blobs.join("sha512"), blobs.join("sha512").join(&d.hex()[..2])] {
            assert!(synced.contains(&must), "{} was not fsynced: {synced:?}", must.display());
        }
    }

    #[tokio::test]
    async fn ids_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        for id in ["../x", "a/b", "", "zz"] {
            assert!(store.create_upload(id).await.is_err(), "{id}");
            assert!(matches!(store.upload_offset(id).await, Err(BlobError::UploadUnknown)), "{id}");
        }
    }

    #[tokio::test]
    async fn purge_removes_old_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        store.create_upload("01").await.unwrap();
        assert_eq!(store.purge_uploads(Duration::from_secs(3600), false).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.purge_uploads(Duration::ZERO, true).await.unwrap(), 1);
        assert_eq!(store.upload_offset("01").await.unwrap(), 0);
        assert_eq!(store.purge_uploads(Duration::ZERO, false).await.unwrap(), 1);
        assert!(matches!(store.upload_offset("01").await, Err(BlobError::UploadUnknown)));
    }
}
