//! Filesystem blob storage, written directly rather than through `object_store`'s
//! `LocalFileSystem`: that store neither fsyncs nor writes at offsets, and Berth needs both to
//! acknowledge durable data and to accept chunked uploads without copying them again.
//!
//! Layout under the root:
//! - `blobs/<alg>/<2 hex>/<hex>`: content-addressed, written once by hard-linking a fully
//!   fsynced staging file (a second upload of the same digest is a no-op);
//! - `uploads/<id>/data`: the staged bytes; `uploads/<id>/startedat`: start time;
//!   `uploads/<id>/claims/<offset>`: created exclusively by the request writing at `offset`,
//!   so a replayed or concurrent chunk cannot overwrite bytes already hashed into a state.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_api::{BlobError, BlobStore, ByteStream};

use super::valid_id;
use berth_proto::Digest;
use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// Bytes gathered before one positioned write is handed to the blocking pool.
const WRITE_BATCH: usize = 4 * 1024 * 1024;
/// Read buffer for blob downloads.
const READ_BUF: usize = 256 * 1024;

/// Blob storage on a local (or shared) filesystem.
#[derive(Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

fn io_err(e: std::io::Error) -> BlobError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BlobError::NotFound
    } else {
        BlobError::Storage(e.to_string())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BlobError::Storage(e.to_string()))?.map_err(io_err)
}

impl FsBlobStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("blobs"))?;
        std::fs::create_dir_all(root.join("uploads"))?;
        Ok(FsBlobStore { root: root.to_path_buf() })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// Removes uploads started longer than `age` ago; returns how many.
    pub async fn purge_uploads(&self, age: Duration, dry_run: bool) -> Result<usize, BlobError> {
        let dir = self.root.join("uploads");
        blocking(move || {
            let cutoff = berth_proto::now_ms().saturating_sub(age.as_millis() as u64);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
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
        valid_id(id)?;
        let dir = self.upload_dir(id);
        blocking(move || {
            std::fs::create_dir_all(dir.join("claims"))?;
            std::fs::write(dir.join("startedat"), berth_proto::now_ms().to_string())?;
            std::fs::File::create(dir.join("data"))?;
            Ok(())
        })
        .await
    }

    async fn upload_exists(&self, id: &str) -> Result<bool, BlobError> {
        valid_id(id)?;
        Ok(tokio::fs::metadata(self.upload_dir(id).join("data")).await.is_ok())
    }

    async fn write_upload(&self, id: &str, offset: u64, mut body: ByteStream) -> Result<u64, BlobError> {
        valid_id(id)?;
        let dir = self.upload_dir(id);
        let claim = dir.join("claims").join(offset.to_string());
        let file = {
            let claim = claim.clone();
            let data = dir.join("data");
            blocking(move || {
                std::fs::OpenOptions::new().write(true).create_new(true).open(&claim)?;
                std::fs::OpenOptions::new().write(true).open(&data)
            })
            .await
            .map_err(|e| match e {
                BlobError::Storage(m) if m.contains("exists") => BlobError::OffsetTaken(offset),
                e => e,
            })?
        };
        let file = Arc::new(file);
        let mut pos = offset;
        let mut buf = BytesMut::with_capacity(WRITE_BATCH);
        let mut pending: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
        // Hashing (in the body stream) overlaps with the previous batch's disk write.
        let result: Result<(), BlobError> = async {
            loop {
                let next = body.next().await;
                let done = next.is_none();
                if let Some(chunk) = next {
                    buf.extend_from_slice(&chunk.map_err(|e| BlobError::Body(e.to_string()))?);
                }
                if buf.len() >= WRITE_BATCH || (done && !buf.is_empty()) {
                    if let Some(h) = pending.take() {
                        h.await.map_err(|e| BlobError::Storage(e.to_string()))?.map_err(io_err)?;
                    }
                    let data = buf.split().freeze();
                    buf.reserve(WRITE_BATCH);
                    let f = file.clone();
                    let at = pos;
                    pos += data.len() as u64;
                    pending = Some(tokio::task::spawn_blocking(move || f.write_all_at(&data, at)));
                }
                if done {
                    break;
                }
            }
            if let Some(h) = pending.take() {
                h.await.map_err(|e| BlobError::Storage(e.to_string()))?.map_err(io_err)?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) if pos == offset => {
                // Nothing written: the offset stays free for the next chunk.
                let _ = tokio::fs::remove_file(&claim).await;
                Ok(0)
            }
            Ok(()) => Ok(pos - offset),
            Err(e) => {
                // Free the offset so the client may retry this chunk.
                let _ = tokio::fs::remove_file(&claim).await;
                Err(e)
            }
        }
    }

    async fn read_upload(&self, id: &str, size: u64) -> Result<ByteStream, BlobError> {
        valid_id(id)?;
        let f = tokio::fs::File::open(self.upload_dir(id).join("data")).await.map_err(io_err)?;
        Ok(Box::pin(ReaderStream::with_capacity(f.take(size), READ_BUF)))
    }

    async fn finish_upload(&self, id: &str, size: u64, digest: &Digest) -> Result<(), BlobError> {
        valid_id(id)?;
        let dir = self.upload_dir(id);
        let target = self.blob_path(digest);
        blocking(move || {
            let data = dir.join("data");
            let f = std::fs::OpenOptions::new().write(true).open(&data)?;
            let len = f.metadata()?.len();
            if len < size {
                return Err(std::io::Error::other(format!("staged upload has {len} bytes, expected {size}")));
            }
            if len > size {
                f.set_len(size)?;
            }
            // The bytes reach the disk before the blob's name does.
            f.sync_all()?;
            let parent = target.parent().expect("blob path has a parent");
            if !parent.exists() {
                std::fs::create_dir_all(parent)?;
                sync_dir(parent.parent().expect("algorithm dir"))?;
            }
            match std::fs::hard_link(&data, &target) {
                Ok(()) => sync_dir(parent)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            std::fs::remove_dir_all(&dir)
        })
        .await
    }

    async fn cancel_upload(&self, id: &str) -> Result<(), BlobError> {
        valid_id(id)?;
        let dir = self.upload_dir(id);
        blocking(move || std::fs::remove_dir_all(dir)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
    async fn chunked_upload_claims_offsets_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        store.create_upload("ab").await.unwrap();
        assert_eq!(store.write_upload("ab", 0, body(&[b"hel", b"lo "])).await.unwrap(), 6);
        // A replay of the first chunk is refused: its bytes are already in a signed state.
        assert!(matches!(store.write_upload("ab", 0, body(&[b"XXXXXX"])).await, Err(BlobError::OffsetTaken(0))));
        assert_eq!(store.write_upload("ab", 6, body(&[b"world"])).await.unwrap(), 5);
        let d = Digest::sha256_of(b"hello world");
        store.finish_upload("ab", 11, &d).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(11));
        assert_eq!(collect(store.read(&d, None).await.unwrap()).await, b"hello world");
        assert_eq!(collect(store.read(&d, Some((6, 9))).await.unwrap()).await, b"worl");
        assert!(!store.upload_exists("ab").await.unwrap());
        // A second upload of the same content is a no-op.
        store.create_upload("cd").await.unwrap();
        store.write_upload("cd", 0, body(&[b"hello world"])).await.unwrap();
        store.finish_upload("cd", 11, &d).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(11));
    }

    #[tokio::test]
    async fn ids_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        for id in ["../x", "a/b", "", "zz"] {
            assert!(store.create_upload(id).await.is_err(), "{id}");
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
        assert!(store.upload_exists("01").await.unwrap());
        assert_eq!(store.purge_uploads(Duration::ZERO, false).await.unwrap(), 1);
        assert!(!store.upload_exists("01").await.unwrap());
    }
}
