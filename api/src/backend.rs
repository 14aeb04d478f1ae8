//! What the API needs from the rest of the node: metadata (through consensus) and blob bytes
//! (through object storage). The node implements these traits; the API never sees openraft,
//! tonic or object_store.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use berth_proto::{Command, Digest, ManifestRecord, Outcome, Reference, RepoName};
use bytes::Bytes;
use futures::Stream;

/// A stream of body bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Why a metadata call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    /// No leader or no quorum right now; the client should retry.
    #[error("metadata unavailable: {0}")]
    Unavailable(String),
    /// A bug or a storage failure.
    #[error("metadata failure: {0}")]
    Internal(String),
}

/// Registry metadata. Reads are linearizable: a write acknowledged anywhere is visible.
#[async_trait]
pub trait Metadata: Send + Sync + 'static {
    /// Commits a command through consensus and returns what applying it did.
    async fn apply(&self, command: Command) -> Result<Outcome, MetaError>;
    /// Size of a blob if it is linked into `repo`.
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError>;
    /// A manifest by tag or digest.
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<(Digest, Arc<ManifestRecord>)>, MetaError>;
    /// Up to `n` tags after `last`; `None` if the repository does not exist.
    async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>, MetaError>;
    /// Up to `n` repository names after `last`.
    async fn catalog(&self, last: Option<&str>, n: usize) -> Result<Vec<String>, MetaError>;
    /// Manifests in `repo` whose subject is `subject`.
    async fn referrers(&self, repo: &RepoName, subject: &Digest)
        -> Result<Vec<(Digest, Arc<ManifestRecord>)>, MetaError>;
    /// The cluster secret that signs upload state.
    async fn http_secret(&self) -> Result<Arc<Vec<u8>>, MetaError>;
}

/// Why a blob storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No such blob or upload.
    #[error("not found")]
    NotFound,
    /// Another request already wrote at this upload offset (replayed or concurrent chunk).
    #[error("upload offset {0} was already written")]
    OffsetTaken(u64),
    /// The request body failed while streaming (client went away, bad chunking).
    #[error("request body: {0}")]
    Body(String),
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// Content-addressed blob storage plus staging for uploads in progress. Staged uploads are
/// shared by every node of a site, so an upload may move between nodes.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of a stored blob.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError>;
    /// The blob's bytes, or the inclusive byte range `(first, last)` of them.
    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<ByteStream, BlobError>;
    /// Creates the staging area for a new upload.
    async fn create_upload(&self, id: &str) -> Result<(), BlobError>;
    /// True if the upload exists (not finished, cancelled or purged).
    async fn upload_exists(&self, id: &str) -> Result<bool, BlobError>;
    /// Appends `body` to the upload at `offset`, which must not have been written before.
    /// Returns the number of bytes written.
    async fn write_upload(&self, id: &str, offset: u64, body: ByteStream) -> Result<u64, BlobError>;
    /// The first `size` staged bytes (used to verify digests of non-SHA-256 algorithms).
    async fn read_upload(&self, id: &str, size: u64) -> Result<ByteStream, BlobError>;
    /// Makes the first `size` staged bytes durable at `digest`'s content address (a no-op if
    /// the blob already exists) and removes the staging area.
    async fn finish_upload(&self, id: &str, size: u64, digest: &Digest) -> Result<(), BlobError>;
    /// Removes an upload's staging area.
    async fn cancel_upload(&self, id: &str) -> Result<(), BlobError>;
}
