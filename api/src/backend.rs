//! What the API needs from the rest of the node: metadata (through consensus) and blob bytes
//! (through object storage). The node implements these traits; the API never sees openraft,
//! tonic or object_store.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use berth_proto::identity::Identity;
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
    /// The leader's disk is below its free-space reserve: additions are refused until space
    /// returns; reads and deletes still work.
    #[error("storage full: {0}")]
    Full(String),
    /// The command came with a newer log protocol than some member reads (a rolling upgrade
    /// is under way). Nothing was applied; the caller may send the command's older form.
    #[error("not read by every member yet: {0}")]
    Outdated(String),
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
    /// Everything `repo` holds: its manifests and the blobs linked into it (to delete a
    /// repository).
    async fn contents(&self, repo: &RepoName) -> Result<(Vec<Digest>, Vec<Digest>), MetaError>;
    /// Every blob linked into `repo`, with its size, in digest order.
    async fn blobs(&self, repo: &RepoName) -> Result<Vec<(Digest, u64)>, MetaError>;
    /// Every project's cleanup policy, schedule and runs, by project id (a linearizable read).
    async fn cleanup_policies(&self) -> Result<Arc<std::collections::BTreeMap<u64, berth_proto::cleanup::CleanupState>>, MetaError>;
    /// The cluster secret that signs upload state.
    async fn http_secret(&self) -> Result<Arc<Vec<u8>>, MetaError>;
    /// Identity as this node last saw it, without waiting: kept fresh in the background
    /// (within a second of a change) and right after this node applies a change.
    fn identity(&self) -> Arc<Identity>;
    /// Identity as the cluster has it now (a linearizable read; concurrent callers share
    /// one), for a credential this node's copy does not know yet.
    async fn identity_now(&self) -> Result<Arc<Identity>, MetaError>;
    /// Whether this node can serve: it has reached the cluster and a leader has confirmed
    /// a read lately. Cheap (no round trip); the reason when not.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why a blob storage call failed. Callers match on the variant, never on the message.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No such blob.
    #[error("blob not found")]
    NotFound,
    /// No such upload: never started, finished, cancelled or purged.
    #[error("upload unknown")]
    UploadUnknown,
    /// The request writes at an offset other than the upload's durable offset `at`.
    #[error("upload is at offset {at}")]
    OffsetMismatch {
        /// Where the upload really is.
        at: u64,
    },
    /// Another request is still writing to this upload.
    #[error("another request is writing to this upload")]
    UploadBusy,
    /// The staged bytes do not hash to the digest the client named.
    #[error("content hashes to {actual}, not {expected}")]
    DigestMismatch {
        /// The digest the client named.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The request body failed while streaming (client went away, too slow, bad chunking).
    #[error("request body: {0}")]
    Body(String),
    /// The storage has no room left (ENOSPC, quota); writes can succeed again later.
    #[error("storage full: {0}")]
    Full(String),
    /// The storage backend cannot be reached or refuses service for now.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The storage backend failed otherwise.
    #[error("storage: {0}")]
    Storage(String),
}

impl BlobError {
    /// A failure of the request body stream: the client's fault, unless the stream was cut
    /// because the disk ran short ([`std::io::ErrorKind::StorageFull`]).
    pub fn body(e: std::io::Error) -> BlobError {
        match e.kind() {
            std::io::ErrorKind::StorageFull => BlobError::Full(e.to_string()),
            _ => BlobError::Body(e.to_string()),
        }
    }
}

/// Content-addressed blob storage plus staging for uploads in progress. Staged uploads are
/// shared by every node of a site, so an upload may move between nodes.
///
/// The store, not the client, decides what an upload holds: its offset and running hash live
/// beside its bytes, and `finish_upload` links bytes only under the digest they hash to.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of a stored blob.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError>;
    /// The blob's bytes, or the inclusive byte range `(first, last)` of them.
    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<ByteStream, BlobError>;
    /// Creates the staging area for a new upload.
    async fn create_upload(&self, id: &str) -> Result<(), BlobError>;
    /// The upload's durable offset: how many bytes it has received and kept.
    async fn upload_offset(&self, id: &str) -> Result<u64, BlobError>;
    /// Appends `body` at `offset`, which must be the upload's durable offset
    /// ([`BlobError::OffsetMismatch`] otherwise), and returns the new durable offset. A write
    /// that fails or is abandoned leaves the offset where it was, and never lands later.
    async fn write_upload(&self, id: &str, offset: u64, body: ByteStream) -> Result<u64, BlobError>;
    /// Checks that the staged bytes hash to `digest` ([`BlobError::DigestMismatch`] otherwise)
    /// and makes them durable at its content address (a no-op if the blob exists). Returns the
    /// blob's size. The upload takes no more writes; its staging area stays until
    /// [`BlobStore::remove_upload`], so a finish whose metadata commit failed can be retried.
    async fn finish_upload(&self, id: &str, digest: &Digest) -> Result<u64, BlobError>;
    /// Removes an upload's staging area.
    async fn remove_upload(&self, id: &str) -> Result<(), BlobError>;
    /// Stores small content whole (a manifest body) at its content address, durably, after
    /// checking that it hashes to `digest` ([`BlobError::DigestMismatch`] otherwise). A no-op
    /// if the blob exists.
    async fn put_content(&self, digest: &Digest, bytes: Bytes) -> Result<(), BlobError>;
}
