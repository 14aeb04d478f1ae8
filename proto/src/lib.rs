//! Berth's vocabulary: the validated types that cross process boundaries or reach the disk
//! (digests, repository names, tags), the commands replicated through Raft, manifest parsing,
//! and the resumable hash used by uploads.

pub mod cleanup;
pub mod command;
pub mod digest;
pub mod geo;
pub mod hashing;
pub mod identity;
pub mod manifest;
pub mod names;
pub mod notify;
pub mod query;

/// gRPC services and messages between nodes (`proto/raft.proto`).
#[allow(missing_docs, clippy::all)]
pub mod rpc {
    tonic::include_proto!("berth.raft.v1");
}

pub use command::{namespace_of, Command, GcItem, GcStatus, LimitKind, ManifestRecord, Outcome, RegistryLimits, Request, PROTOCOL};
pub use digest::{Algorithm, Digest};
pub use hashing::ResumableSha256;
pub use names::{Reference, RepoName, Tag};
pub use query::{Answer, Query};

/// A value that does not satisfy its type's grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Bad digest.
    #[error("invalid digest: {0}")]
    Digest(String),
    /// Bad repository name.
    #[error("{0}")]
    Name(String),
    /// Bad tag.
    #[error("{0}")]
    Tag(String),
    /// Bad resumable hash state.
    #[error("{0}")]
    HashState(String),
}

/// Milliseconds since the Unix epoch, for stamping requests.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
