//! The API's `Metadata` trait over Raft. On the leader, writes are `client_write` and reads
//! follow `ensure_linearizable`. On any other node, writes are forwarded to the leader over
//! gRPC, and reads ask the leader for a read index, wait until the local state machine has
//! applied it, then read locally: a push acknowledged by one node is visible at once on all.
//! Both retry a bounded number of times, following leader hints.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use berth_api::{MetaError, Metadata};
use berth_proto::{Command, Digest, ManifestRecord, Outcome, Reference, RepoName, Request};
use berth_proto::rpc::metadata_service_client::MetadataServiceClient;
use berth_proto::rpc::{Payload, ReadIndexRequest};
use berth_raft_store::{Raft, RegistryState, SharedState};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use crate::raft_network::GrpcNetwork;

/// How long a write or a read barrier may wait before the client gets 503.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Tries at the local node and then at leaders it hints at.
const ATTEMPTS: u32 = 4;

/// Registry metadata backed by this node's Raft instance.
pub struct RaftMetadata {
    raft: Raft,
    state: SharedState,
    network: GrpcNetwork,
    secret: OnceLock<Arc<Vec<u8>>>,
    forwarded: prometheus::IntCounterVec,
}

/// A leader to forward to: id and gRPC address.
type Leader = (u64, String);

impl RaftMetadata {
    /// Wraps a started Raft node; `network` supplies the (shared) channels to the leader.
    pub fn new(raft: Raft, state: SharedState, network: GrpcNetwork, registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let forwarded = prometheus::IntCounterVec::new(
            prometheus::Opts::new("berth_forwarded_requests_total", "Metadata requests forwarded to the leader."),
            &["kind", "result"],
        )?;
        registry.register(Box::new(forwarded.clone()))?;
        Ok(RaftMetadata { raft, state, network, secret: OnceLock::new(), forwarded })
    }

    /// The leader named by a hint, or else by this node's metrics.
    fn leader(&self, hint_id: Option<u64>, hint_node: Option<openraft::BasicNode>) -> Option<Leader> {
        if let (Some(id), Some(n)) = (hint_id, hint_node) {
            return Some((id, n.addr));
        }
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        (id != m.id).then_some(())?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node.addr))
    }

    fn client(&self, leader: &Leader) -> Result<MetadataServiceClient<tonic::transport::Channel>, MetaError> {
        let ch = self.network.channel(leader.0, &leader.1).map_err(MetaError::Unavailable)?;
        Ok(MetadataServiceClient::new(ch).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
    }

    async fn backoff(attempt: u32) {
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
    }

    /// Waits until reads of the local state are linearizable.
    async fn barrier(&self) -> Result<(), MetaError> {
        let mut last = String::from("no leader");
        for attempt in 0..ATTEMPTS {
            let leader = match tokio::time::timeout(TIMEOUT, self.raft.ensure_linearizable()).await {
                Err(_) => return Err(MetaError::Unavailable("timed out confirming leadership".into())),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => self.leader(f.leader_id, f.leader_node),
                // QuorumNotEnough: this node leads but cannot confirm it; there is no one to ask.
                Ok(Err(RaftError::APIError(e))) => return Err(MetaError::Unavailable(e.to_string())),
                Ok(Err(RaftError::Fatal(e))) => return Err(MetaError::Internal(e.to_string())),
            };
            let Some(leader) = leader else {
                Self::backoff(attempt).await;
                continue;
            };
            let mut req = tonic::Request::new(ReadIndexRequest {});
            req.set_timeout(TIMEOUT);
            match self.client(&leader)?.read_index(req).await {
                Ok(r) if r.get_ref().error.is_empty() => {
                    self.forwarded.with_label_values(&["read_index", "ok"]).inc();
                    let index = r.into_inner().index;
                    if index > 0 {
                        self.raft
                            .wait(Some(TIMEOUT))
                            .applied_index_at_least(Some(index), "applying up to the leader's read index")
                            .await
                            .map_err(|e| MetaError::Unavailable(e.to_string()))?;
                    }
                    return Ok(());
                }
                Ok(r) => last = r.into_inner().error,
                Err(s) => last = s.message().to_string(),
            }
            self.forwarded.with_label_values(&["read_index", "retry"]).inc();
            Self::backoff(attempt).await;
        }
        Err(MetaError::Unavailable(format!("no leader confirmed the read: {last}")))
    }

    async fn read<T>(&self, f: impl FnOnce(&RegistryState) -> T) -> Result<T, MetaError> {
        self.barrier().await?;
        Ok(f(&self.state.read().unwrap()))
    }

    /// Sends a write to the leader. `Ok(None)`: that node was not the leader after all.
    async fn forward(&self, leader: &Leader, req: &Request) -> Result<Option<Outcome>, MetaError> {
        let data = postcard::to_stdvec(req).map_err(|e| MetaError::Internal(e.to_string()))?;
        let mut r = tonic::Request::new(Payload { data });
        r.set_timeout(TIMEOUT);
        let reply = self.client(leader)?.apply(r).await.map_err(|s| MetaError::Unavailable(s.message().to_string()))?.into_inner();
        if !reply.error.is_empty() {
            return Ok(None);
        }
        let outcome: Result<Outcome, String> =
            postcard::from_bytes(&reply.outcome).map_err(|e| MetaError::Internal(e.to_string()))?;
        outcome.map(Some).map_err(MetaError::Unavailable)
    }
}

#[async_trait]
impl Metadata for RaftMetadata {
    async fn apply(&self, command: Command) -> Result<Outcome, MetaError> {
        let kind = command.kind();
        let req = Request { command, at_ms: berth_proto::now_ms() };
        let mut last = String::from("no leader");
        // Commands are idempotent (links, puts of the same digest, deletes), so a retry after a
        // lost reply does no harm.
        for attempt in 0..ATTEMPTS {
            let leader = match tokio::time::timeout(TIMEOUT, self.raft.client_write(req.clone())).await {
                Err(_) => return Err(MetaError::Unavailable(format!("{kind}: timed out waiting for commit"))),
                Ok(Ok(resp)) => return Ok(resp.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => self.leader(f.leader_id, f.leader_node),
                Ok(Err(RaftError::APIError(e))) => return Err(MetaError::Unavailable(e.to_string())),
                Ok(Err(RaftError::Fatal(e))) => return Err(MetaError::Internal(e.to_string())),
            };
            if let Some(leader) = leader {
                match self.forward(&leader, &req).await {
                    Ok(Some(outcome)) => {
                        self.forwarded.with_label_values(&["write", "ok"]).inc();
                        return Ok(outcome);
                    }
                    Ok(None) => last = format!("node {} is no longer the leader", leader.0),
                    Err(e) => last = e.to_string(),
                }
                self.forwarded.with_label_values(&["write", "retry"]).inc();
            }
            Self::backoff(attempt).await;
        }
        Err(MetaError::Unavailable(format!("{kind}: {last}")))
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
