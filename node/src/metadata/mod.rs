//! The API's `Metadata` trait, for both kinds of node. A voter commits through its own Raft
//! instance and reads its own state machine after a linearizable barrier (`voter`); a
//! frontend holds no state and sends both to the voters over gRPC (`frontend`). Either way a
//! node only needs two operations, `apply` and `query`; [`ClusterMetadata`] builds the API's
//! calls from them.

pub mod coalesce;
pub mod frontend;
pub mod remote;
pub mod voter;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use berth_api::{MetaError, Metadata};
use berth_proto::{Answer, Command, Digest, ManifestRecord, Outcome, Query, Reference, RepoName, Request};

/// What a node can do with registry metadata.
#[async_trait]
pub trait MetadataBackend: Send + Sync + 'static {
    /// Commits a request through consensus.
    async fn apply(&self, req: Request) -> Result<Outcome, MetaError>;
    /// A linearizable read.
    async fn query(&self, q: Query) -> Result<Answer, MetaError>;
}

/// The API's view of a [`MetadataBackend`].
pub struct ClusterMetadata<B> {
    backend: Arc<B>,
    secret: OnceLock<Arc<Vec<u8>>>,
}

impl<B: MetadataBackend> ClusterMetadata<B> {
    /// Wraps a backend.
    pub fn new(backend: Arc<B>) -> Self {
        ClusterMetadata { backend, secret: OnceLock::new() }
    }
}

fn mismatch(q: &str) -> MetaError {
    MetaError::Internal(format!("{q}: the answer does not match the query"))
}

#[async_trait]
impl<B: MetadataBackend> Metadata for ClusterMetadata<B> {
    async fn apply(&self, command: Command) -> Result<Outcome, MetaError> {
        self.backend.apply(Request { command, at_ms: berth_proto::now_ms() }).await
    }

    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError> {
        match self.backend.query(Query::BlobSize { repo: repo.clone(), digest: digest.clone() }).await? {
            Answer::BlobSize(s) => Ok(s),
            _ => Err(mismatch("blob size")),
        }
    }

    async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<(Digest, Arc<ManifestRecord>)>, MetaError> {
        match self.backend.query(Query::Manifest { repo: repo.clone(), reference: reference.clone() }).await? {
            Answer::Manifest(m) => Ok(m),
            _ => Err(mismatch("manifest")),
        }
    }

    async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>, MetaError> {
        let q = Query::Tags { repo: repo.clone(), last: last.map(str::to_string), n: n as u64 };
        match self.backend.query(q).await? {
            Answer::Tags(t) => Ok(t),
            _ => Err(mismatch("tags")),
        }
    }

    async fn catalog(&self, last: Option<&str>, n: usize) -> Result<Vec<String>, MetaError> {
        match self.backend.query(Query::Catalog { last: last.map(str::to_string), n: n as u64 }).await? {
            Answer::Catalog(c) => Ok(c),
            _ => Err(mismatch("catalog")),
        }
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<(Digest, Arc<ManifestRecord>)>, MetaError> {
        match self.backend.query(Query::Referrers { repo: repo.clone(), subject: subject.clone() }).await? {
            Answer::Referrers(r) => Ok(r),
            _ => Err(mismatch("referrers")),
        }
    }

    async fn http_secret(&self) -> Result<Arc<Vec<u8>>, MetaError> {
        if let Some(s) = self.secret.get() {
            return Ok(s.clone());
        }
        // The secret never changes once set, so the first value read can be kept.
        match self.backend.query(Query::HttpSecret).await? {
            Answer::HttpSecret(Some(s)) => Ok(self.secret.get_or_init(|| Arc::new(s)).clone()),
            Answer::HttpSecret(None) => Err(MetaError::Unavailable("the cluster HTTP secret is not initialized yet".into())),
            _ => Err(mismatch("http secret")),
        }
    }
}

/// Makes sure the cluster has an HTTP secret: the configured one on first start, else random.
pub async fn ensure_http_secret(meta: &dyn Metadata, configured: Option<&str>) -> anyhow::Result<()> {
    let secret = match configured {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let mut b = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
            b
        }
    };
    let outcome = meta.apply(Command::InitHttpSecret { secret: secret.clone() }).await?;
    if outcome == Outcome::Unchanged && configured.is_some() && *meta.http_secret().await? != secret {
        tracing::warn!("http.secret differs from the cluster's secret; the cluster's secret is used");
    }
    Ok(())
}
