//! Blob storage on any `object_store` backend (S3, GCS, Azure).
//!
//! Layout under the configured prefix: `blobs/<alg>/<2 hex>/<hex>` for content, and for an
//! upload `uploads/<id>/startedat` plus one object per chunk, `uploads/<id>/parts/<offset>`.
//! An upload's offset is the length of the chain of parts from offset 0, read from the store
//! (never from the client). Finishing concatenates the chain while hashing it again, so what
//! lands at a content address always matches its digest, whatever a client replayed or forged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_api::{BlobError, BlobStore, ByteStream};

use super::valid_id;
use berth_proto::{Algorithm, Digest, ResumableSha256};
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

/// Blob storage on an object store.
#[derive(Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

fn os_err(e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound,
        // Misuse of the library is a bug; anything else (network, credentials, throttling,
        // an outage) is the store refusing service for now.
        e @ (object_store::Error::InvalidPath { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented
        | object_store::Error::UnknownConfigurationKey { .. }) => BlobError::Storage(e.to_string()),
        e => BlobError::Unavailable(e.to_string()),
    }
}

fn upload_err(e: object_store::Error) -> BlobError {
    match os_err(e) {
        BlobError::NotFound => BlobError::UploadUnknown,
        e => e,
    }
}

impl ObjectBlobStore {
    /// A store over `store`, keeping everything under `prefix` (may be empty).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        ObjectBlobStore { store, prefix: prefix.trim_matches('/').to_string() }
    }

    fn path(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// Every blob object under `blobs/<algorithm>/<2 hex>/<hex>`, with its size.
    pub async fn list_content(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        let metas: Vec<_> = self.store.list(Some(&self.path("blobs"))).try_collect().await.map_err(os_err)?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<&str> = m.location.as_ref().rsplitn(3, '/').collect();
                let name = format!("{}:{}", parts.get(2)?.rsplit('/').next()?, parts.first()?);
                Digest::parse(&name).ok().map(|d| (d, m.size as u64))
            })
            .collect())
    }

    /// Deletes a blob's object (garbage collection).
    pub async fn delete_content(&self, digest: &Digest) -> Result<(), BlobError> {
        match self.store.delete(&self.blob_path(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_err(e)),
        }
    }

    fn blob_path(&self, d: &Digest) -> Path {
        self.path(&format!("blobs/{}/{}/{}", d.algorithm().as_str(), &d.hex()[..2], d.hex()))
    }

    fn part_path(&self, id: &str, offset: u64) -> Path {
        self.path(&format!("uploads/{id}/parts/{offset:020}"))
    }

    /// Parts of an upload as (offset, size), sorted by offset.
    async fn parts(&self, id: &str) -> Result<Vec<(u64, u64, Path)>, BlobError> {
        let prefix = self.path(&format!("uploads/{id}/parts"));
        let mut parts: Vec<(u64, u64, Path)> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| {
                let off = m.location.filename().and_then(|f| f.parse::<u64>().ok()).unwrap_or(u64::MAX);
                (off, m.size, m.location)
            })
            .try_collect()
            .await
            .map_err(os_err)?;
        parts.sort_by_key(|p| p.0);
        Ok(parts)
    }

    /// The chain of parts from offset 0 and its length (the upload's offset).
    async fn chain_parts(&self, id: &str) -> Result<(Vec<Path>, u64), BlobError> {
        let mut chain = Vec::new();
        let mut at = 0u64;
        for (off, len, path) in self.parts(id).await? {
            if off == at && len > 0 {
                chain.push(path);
                at += len;
            }
        }
        Ok((chain, at))
    }

    /// Streams the chain of parts from offset 0 up to `size`.
    async fn chain(&self, id: &str, size: u64) -> Result<ByteStream, BlobError> {
        let (chain, at) = self.chain_parts(id).await?;
        if at < size {
            return Err(BlobError::Storage(format!("upload {id} has {at} contiguous bytes, expected {size}")));
        }
        let store = self.store.clone();
        let stream = futures::stream::iter(chain)
            .then(move |p| {
                let store = store.clone();
                async move { store.get(&p).await.map(|r| r.into_stream()) }
            })
            .try_flatten()
            .map_err(std::io::Error::other);
        // Trim to exactly `size` bytes.
        let mut remaining = size;
        Ok(Box::pin(stream.try_filter_map(move |mut b| {
            let keep = (b.len() as u64).min(remaining);
            remaining -= keep;
            b.truncate(keep as usize);
            futures::future::ready(Ok((!b.is_empty()).then_some(b)))
        })))
    }

    /// See [`super::SiteStore::probe`].
    pub async fn probe(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let path = self.path(&format!("uploads/probe-{}", rand::random::<u64>()));
        let marker = bytes::Bytes::from_static(b"berth start-up probe");
        self.store.put(&path, PutPayload::from(marker.clone())).await.with_context(|| format!("writing {path}"))?;
        let back = self.store.get(&path).await.with_context(|| format!("reading {path}"))?.bytes().await?;
        self.store.delete(&path).await.with_context(|| format!("deleting {path}"))?;
        anyhow::ensure!(back == marker, "{path} read back other bytes than were written");
        Ok(())
    }

    /// Removes uploads started longer than `age` ago; returns how many.
    pub async fn purge_uploads(&self, age: Duration, dry_run: bool) -> Result<usize, BlobError> {
        let cutoff = berth_proto::now_ms().saturating_sub(age.as_millis() as u64);
        let metas: Vec<_> = self.store.list(Some(&self.path("uploads"))).try_collect().await.map_err(os_err)?;
        let mut n = 0;
        for m in metas.iter().filter(|m| m.location.filename() == Some("startedat")) {
            if (m.last_modified.timestamp_millis() as u64) < cutoff {
                n += 1;
                if !dry_run {
                    let dir = m.location.as_ref().trim_end_matches("/startedat").to_string();
                    for o in metas.iter().filter(|o| o.location.as_ref().starts_with(&dir)) {
                        let _ = self.store.delete(&o.location).await;
                    }
                }
            }
        }
        Ok(n)
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        match self.store.head(&self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(os_err(e)),
        }
    }

    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<ByteStream, BlobError> {
        let opts = GetOptions { range: range.map(|(a, b)| GetRange::Bounded(a..b + 1)), ..Default::default() };
        let r = self.store.get_opts(&self.blob_path(digest), opts).await.map_err(os_err)?;
        Ok(Box::pin(r.into_stream().map_err(std::io::Error::other)))
    }

    async fn create_upload(&self, id: &str) -> Result<(), BlobError> {
        valid_id(id).map_err(|_| BlobError::UploadUnknown)?;
        let p = self.path(&format!("uploads/{id}/startedat"));
        self.store.put(&p, PutPayload::from(berth_proto::now_ms().to_string())).await.map_err(os_err)?;
        Ok(())
    }

    async fn upload_offset(&self, id: &str) -> Result<u64, BlobError> {
        valid_id(id).map_err(|_| BlobError::UploadUnknown)?;
        self.store.head(&self.path(&format!("uploads/{id}/startedat"))).await.map_err(upload_err)?;
        Ok(self.chain_parts(id).await?.1)
    }

    async fn write_upload(&self, id: &str, offset: u64, mut body: ByteStream) -> Result<u64, BlobError> {
        let at = self.upload_offset(id).await?;
        if at != offset {
            return Err(BlobError::OffsetMismatch { at });
        }
        let path = self.part_path(id, offset);
        // Parts become visible only when complete: a dropped request leaves nothing behind.
        let mut w = BufWriter::with_capacity(self.store.clone(), path.clone(), 16 * 1024 * 1024);
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(BlobError::body(e));
                }
            };
            n += chunk.len() as u64;
            if let Err(e) = w.write_all(&chunk).await {
                let _ = w.abort().await;
                return Err(BlobError::Unavailable(e.to_string()));
            }
        }
        if n == 0 {
            let _ = w.abort().await;
            return Ok(offset);
        }
        w.shutdown().await.map_err(|e| BlobError::Unavailable(e.to_string()))?;
        Ok(offset + n)
    }

    async fn finish_upload(&self, id: &str, digest: &Digest) -> Result<u64, BlobError> {
        let size = self.upload_offset(id).await?;
        let target = self.blob_path(digest);
        // Verified even when the blob exists: naming a digest proves nothing about holding it.
        let exists = self.store.head(&target).await.is_ok();
        let mut sha256 = ResumableSha256::new();
        let mut sha512 = sha2::Sha512::new();
        let mut w = (!exists).then(|| BufWriter::with_capacity(self.store.clone(), target.clone(), 16 * 1024 * 1024));
        let mut s = self.chain(id, size).await?;
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| BlobError::Unavailable(e.to_string()))?;
            match digest.algorithm() {
                Algorithm::Sha256 => sha256.update(&chunk),
                Algorithm::Sha512 => sha512.update(&chunk),
            }
            if let Some(w) = w.as_mut() {
                if let Err(e) = w.write_all(&chunk).await {
                    let _ = w.abort().await;
                    return Err(BlobError::Unavailable(e.to_string()));
                }
            }
        }
        let actual = match digest.algorithm() {
            Algorithm::Sha256 => sha256.digest(),
            Algorithm::Sha512 => Digest::from_raw(Algorithm::Sha512, &sha512.finalize()),
        };
        if let Some(mut w) = w {
            if &actual != digest {
                let _ = w.abort().await;
            } else {
                w.shutdown().await.map_err(|e| BlobError::Unavailable(e.to_string()))?;
            }
        }
        if &actual != digest {
            return Err(BlobError::DigestMismatch { expected: digest.clone(), actual });
        }
        Ok(size)
    }

    async fn remove_upload(&self, id: &str) -> Result<(), BlobError> {
        valid_id(id).map_err(|_| BlobError::UploadUnknown)?;
        let prefix = self.path(&format!("uploads/{id}"));
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(os_err)?;
        if metas.is_empty() {
            return Err(BlobError::UploadUnknown);
        }
        for m in metas {
            self.store.delete(&m.location).await.map_err(os_err)?;
        }
        Ok(())
    }

    async fn put_content(&self, digest: &Digest, bytes: bytes::Bytes) -> Result<(), BlobError> {
        let actual = digest.same_algorithm_of(&bytes);
        if &actual != digest {
            return Err(BlobError::DigestMismatch { expected: digest.clone(), actual });
        }
        let target = self.blob_path(digest);
        if self.store.head(&target).await.is_ok() {
            return Ok(());
        }
        // One PUT: the object appears whole or not at all, and is durable once acknowledged.
        self.store.put(&target, PutPayload::from(bytes)).await.map_err(os_err)?;
        Ok(())
    }
}
