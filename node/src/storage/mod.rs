//! Blob storage backends and the metrics wrapper around them.

pub mod fs;
pub mod object;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_api::{BlobError, BlobStore, ByteStream};
use berth_proto::Digest;
use prometheus::{HistogramOpts, HistogramVec, Registry};

use crate::space::SpaceGuard;

/// Upload ids are hex (they name staging paths): anything else is an unknown upload.
pub(crate) fn valid_id(id: &str) -> Result<(), BlobError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(BlobError::NotFound)
    }
}

/// A site's blob store: one of the backends.
#[derive(Clone)]
pub enum SiteStore {
    /// Local or shared filesystem.
    Fs(fs::FsBlobStore),
    /// S3, GCS or Azure through `object_store`.
    Object(object::ObjectBlobStore),
}

impl SiteStore {
    /// The local directory holding the blobs, for a filesystem store.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        match self {
            SiteStore::Fs(s) => Some(s.root()),
            SiteStore::Object(_) => None,
        }
    }

    /// The backend as the API's trait object.
    pub fn inner(&self) -> &dyn BlobStore {
        match self {
            SiteStore::Fs(s) => s,
            SiteStore::Object(s) => s,
        }
    }

    /// Writes, reads back and deletes a marker: a store that is unreachable, misconfigured or
    /// read-only is found at start, with the step that failed and its cause.
    pub async fn probe(&self) -> anyhow::Result<()> {
        match self {
            SiteStore::Fs(s) => s.probe().await,
            SiteStore::Object(s) => s.probe().await,
        }
    }

    /// Deletes the bytes of `digest` (garbage collection, once the state marks them as being
    /// deleted). Content that is not there is deleted already.
    pub async fn delete_content(&self, digest: &Digest) -> Result<(), BlobError> {
        match self {
            SiteStore::Fs(s) => s.delete_content(digest).await,
            SiteStore::Object(s) => s.delete_content(digest).await,
        }
    }

    /// Every piece of content in the store (blobs and manifest bodies), with its size: what a
    /// scan for bytes the state never learnt of looks at. Files that are not named like
    /// content are left out.
    pub async fn list_content(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        match self {
            SiteStore::Fs(s) => s.list_content().await,
            SiteStore::Object(s) => s.list_content().await,
        }
    }

    /// Removes uploads older than `age`.
    pub async fn purge_uploads(&self, age: Duration, dry_run: bool) -> Result<usize, BlobError> {
        match self {
            SiteStore::Fs(s) => s.purge_uploads(age, dry_run).await,
            SiteStore::Object(s) => s.purge_uploads(age, dry_run).await,
        }
    }
}

/// Storage metrics under Distribution's names.
#[derive(Clone)]
pub struct StorageMetrics {
    action_seconds: HistogramVec,
    upload_bytes: HistogramVec,
}

impl StorageMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let action_seconds = HistogramVec::new(
            HistogramOpts::new("registry_storage_action_seconds", "The number of seconds that the storage action takes")
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["driver", "action"],
        )?;
        let upload_bytes = HistogramVec::new(
            HistogramOpts::new("registry_storage_blob_upload_bytes", "The size in bytes of blobs whose upload completed")
                .buckets(prometheus::exponential_buckets(1024.0, 4.0, 12)?),
            &["driver"],
        )?;
        registry.register(Box::new(action_seconds.clone()))?;
        registry.register(Box::new(upload_bytes.clone()))?;
        Ok(StorageMetrics { action_seconds, upload_bytes })
    }
}

/// Bytes between two free-space checks of a streaming upload.
const SPACE_CHECK_EVERY: u64 = 8 << 20;

/// Cuts an upload body (with `StorageFull`) once the disk runs short while it streams.
fn watch_space(body: ByteStream, space: SpaceGuard) -> ByteStream {
    let mut since_check = 0u64;
    Box::pin(futures::StreamExt::map(body, move |chunk| {
        let chunk = chunk?;
        since_check += chunk.len() as u64;
        if since_check >= SPACE_CHECK_EVERY {
            since_check = 0;
            space.check_streaming()?;
        }
        Ok(chunk)
    }))
}

/// Wraps a store: times every action, and refuses new upload bytes while `space` is short.
pub struct MeteredStore {
    inner: SiteStore,
    driver: &'static str,
    metrics: StorageMetrics,
    space: SpaceGuard,
}

impl MeteredStore {
    /// Wraps `inner`, labelling metrics with `driver`.
    pub fn new(inner: SiteStore, driver: &'static str, metrics: StorageMetrics, space: SpaceGuard) -> Arc<Self> {
        Arc::new(MeteredStore { inner, driver, metrics, space })
    }

    fn observe(&self, action: &str, started: Instant) {
        self.metrics.action_seconds.with_label_values(&[self.driver, action]).observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl BlobStore for MeteredStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        let t = Instant::now();
        let r = self.inner.inner().stat(digest).await;
        self.observe("Stat", t);
        r
    }
    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<ByteStream, BlobError> {
        let t = Instant::now();
        let r = self.inner.inner().read(digest, range).await;
        self.observe("Reader", t);
        r
    }
    async fn create_upload(&self, id: &str) -> Result<(), BlobError> {
        self.space.admit_upload()?;
        let t = Instant::now();
        let r = self.inner.inner().create_upload(id).await;
        self.observe("PutContent", t);
        r
    }
    async fn upload_offset(&self, id: &str) -> Result<u64, BlobError> {
        let t = Instant::now();
        let r = self.inner.inner().upload_offset(id).await;
        self.observe("Stat", t);
        r
    }
    async fn write_upload(&self, id: &str, offset: u64, body: ByteStream) -> Result<u64, BlobError> {
        self.space.admit_upload()?;
        let body = watch_space(body, self.space.clone());
        let t = Instant::now();
        let r = self.inner.inner().write_upload(id, offset, body).await;
        self.observe("Writer", t);
        r
    }
    async fn finish_upload(&self, id: &str, digest: &Digest) -> Result<u64, BlobError> {
        let t = Instant::now();
        let r = self.inner.inner().finish_upload(id, digest).await;
        self.observe("Move", t);
        if let Ok(size) = r {
            self.metrics.upload_bytes.with_label_values(&[self.driver]).observe(size as f64);
        }
        r
    }
    async fn remove_upload(&self, id: &str) -> Result<(), BlobError> {
        let t = Instant::now();
        let r = self.inner.inner().remove_upload(id).await;
        self.observe("Delete", t);
        r
    }
    async fn put_content(&self, digest: &Digest, bytes: bytes::Bytes) -> Result<(), BlobError> {
        self.space.admit_upload()?;
        let t = Instant::now();
        let r = self.inner.inner().put_content(digest, bytes).await;
        self.observe("PutContent", t);
        r
    }
}
