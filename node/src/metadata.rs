//! The API's `Metadata` trait over Raft: writes are `client_write`, reads follow a
//! linearizable barrier (`ensure_linearizable`) and then read the local state machine.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use berth_api::{MetaError, Metadata};
use berth_proto::{Command, Digest, ManifestRecord, Outcome, Reference, RepoName, Request};
use berth_raft_store::{Raft, RegistryState, SharedState};
use openraft::error::{ClientWriteError, RaftError};

/// How long a write or a read barrier may wait before the client gets 503.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Registry metadata backed by this node's Raft instance.
pub struct RaftMetadata {
    raft: Raft,
    state: SharedState,
    secret: OnceLock<Arc<Vec<u8>>>,
}

impl RaftMetadata {
    /// Wraps a started Raft node.
    pub fn new(raft: Raft, state: SharedState) -> Self {
        RaftMetadata { raft, state, secret: OnceLock::new() }
    }

    async fn read<T>(&self, f: impl FnOnce(&RegistryState) -> T) -> Result<T, MetaError> {
        match tokio::time::timeout(TIMEOUT, self.raft.ensure_linearizable()).await {
            Err(_) => return Err(MetaError::Unavailable("timed out confirming leadership".into())),
            Ok(Err(RaftError::APIError(e))) => return Err(MetaError::Unavailable(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => return Err(MetaError::Internal(e.to_string())),
            Ok(Ok(_)) => {}
        }
        Ok(f(&self.state.read().unwrap()))
    }
}

#[async_trait]
impl Metadata for RaftMetadata {
    async fn apply(&self, command: Command) -> Result<Outcome, MetaError> {
        let kind = command.kind();
        let req = Request { command, at_ms: berth_proto::now_ms() };
        match tokio::time::timeout(TIMEOUT, self.raft.client_write(req)).await {
            Err(_) => Err(MetaError::Unavailable(format!("{kind}: timed out waiting for commit"))),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(MetaError::Unavailable(format!("not the leader (leader: {:?})", f.leader_id)))
            }
            Ok(Err(RaftError::APIError(e))) => Err(MetaError::Unavailable(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(MetaError::Internal(e.to_string())),
        }
    }

    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError> {
        self.read(|s| s.blob_size(repo, digest)).await
    }

    async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<(Digest, Arc<ManifestRecord>)>, MetaError> {
        self.read(|s| s.manifest(repo, reference)).await
    }

    async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>, MetaError> {
        self.read(|s| s.tags(repo, last, n)).await
    }

    async fn catalog(&self, last: Option<&str>, n: usize) -> Result<Vec<String>, MetaError> {
        self.read(|s| s.catalog(last, n)).await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<(Digest, Arc<ManifestRecord>)>, MetaError> {
        self.read(|s| s.referrers(repo, subject)).await
    }

    async fn http_secret(&self) -> Result<Arc<Vec<u8>>, MetaError> {
        if let Some(s) = self.secret.get() {
            return Ok(s.clone());
        }
        // The secret never changes once set, so the first value read can be cached.
        match self.read(|s| s.http_secret.clone()).await? {
            Some(s) => Ok(self.secret.get_or_init(|| Arc::new(s)).clone()),
            None => Err(MetaError::Unavailable("the cluster HTTP secret is not initialized yet".into())),
        }
    }
}

/// Makes sure the cluster has an HTTP secret: the configured one on first start, else random.
pub async fn ensure_http_secret(meta: &RaftMetadata, configured: Option<&str>) -> anyhow::Result<()> {
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
