//! The API's `Metadata` trait, for both kinds of node. A voter commits through its own Raft
//! instance and reads its own state machine after a linearizable barrier (`voter`); a
//! frontend holds no state and sends both to the voters over gRPC (`frontend`). Either way a
//! node only needs two operations, `apply` and `query`; [`ClusterMetadata`] builds the API's
//! calls from them.

pub mod bodies;
pub mod coalesce;
pub mod frontend;
pub mod remote;
pub mod voter;

use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;
use berth_api::{MetaError, Metadata};
use berth_proto::identity::Identity;
use berth_proto::{Answer, Command, Digest, ManifestRecord, Outcome, Query, Reference, RepoName, Request};

/// What a node can do with registry metadata.
#[async_trait]
pub trait MetadataBackend: Send + Sync + 'static {
    /// Commits a request through consensus.
    async fn apply(&self, req: Request) -> Result<Outcome, MetaError>;
    /// A linearizable read.
    async fn query(&self, q: Query) -> Result<Answer, MetaError>;
}

/// Sends `query` to the backend and takes the one kind of answer it allows.
macro_rules! ask {
    ($self:ident, $query:expr, $answer:path) => {
        match $self.backend.query($query).await? {
            $answer(a) => Ok(a),
            other => Err(MetaError::Internal(format!("{:?} does not answer {}", other, stringify!($answer)))),
        }
    };
}

/// The API's view of a [`MetadataBackend`].
pub struct ClusterMetadata<B> {
    backend: Arc<B>,
    secret: OnceLock<Arc<Vec<u8>>>,
    identity: RwLock<Arc<Identity>>,
    /// Serializes on-demand refreshes; holds when the last one started.
    refreshing: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// When a leader last confirmed a read for this node (ms since epoch; 0: never).
    confirmed_ms: std::sync::atomic::AtomicU64,
}

/// How long after the last read a leader confirmed a node still counts as ready: longer
/// than an election, so that a failover does not take every node out of a load balancer.
pub const READY_WINDOW_MS: u64 = 10_000;

impl<B: MetadataBackend> ClusterMetadata<B> {
    /// Wraps a backend.
    pub fn new(backend: Arc<B>) -> Self {
        ClusterMetadata {
            backend,
            secret: OnceLock::new(),
            identity: RwLock::default(),
            refreshing: tokio::sync::Mutex::new(None),
            confirmed_ms: Default::default(),
        }
    }

    /// Fetches identity if its version moved since the copy held here.
    pub async fn refresh_identity(&self) -> Result<(), MetaError> {
        let held = self.identity.read().expect("identity lock").version;
        let version = ask!(self, Query::IdentityVersion, Answer::IdentityVersion)?;
        // A linearizable read came back: the cluster has a leader and this node reaches it.
        self.confirmed_ms.store(berth_proto::now_ms(), std::sync::atomic::Ordering::Relaxed);
        if version != held {
            let fresh = ask!(self, Query::Identity, Answer::Identity)?;
            let mut slot = self.identity.write().expect("identity lock");
            // Two refreshes may race; the newer copy wins.
            if fresh.version >= slot.version {
                *slot = fresh;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl<B: MetadataBackend> Metadata for ClusterMetadata<B> {
    async fn apply(&self, command: Command) -> Result<Outcome, MetaError> {
        let identity = matches!(command, Command::Identity(_));
        let outcome = self.backend.apply(Request { command, at_ms: berth_proto::now_ms() }).await?;
        if identity {
            // This node sees its own change at once; the others within a refresh interval.
            if let Err(e) = self.refresh_identity().await {
                tracing::warn!("identity not refreshed after a change: {e}");
            }
        }
        Ok(outcome)
    }

    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError> {
        ask!(self, Query::BlobSize { repo: repo.clone(), digest: digest.clone() }, Answer::BlobSize)
    }

    async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<(Digest, Arc<ManifestRecord>)>, MetaError> {
        ask!(self, Query::Manifest { repo: repo.clone(), reference: reference.clone() }, Answer::Manifest)
    }

    async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>, MetaError> {
        let q = Query::Tags { repo: repo.clone(), last: last.map(str::to_string), n: n as u64 };
        ask!(self, q, Answer::Tags)
    }

    async fn catalog(&self, last: Option<&str>, n: usize) -> Result<Vec<String>, MetaError> {
        ask!(self, Query::Catalog { last: last.map(str::to_string), n: n as u64 }, Answer::Catalog)
    }

    async fn contents(&self, repo: &RepoName) -> Result<(Vec<Digest>, Vec<Digest>), MetaError> {
        // The scan of every manifest, from just before this repository's first (no digest
        // sorts below sha256:00..0) until the next repository's.
        let floor = Digest::parse(&format!("sha256:{}", "0".repeat(64))).map_err(|e| MetaError::Internal(e.to_string()))?;
        let mut manifests = Vec::new();
        let mut after = Some(berth_proto::GcItem::Manifest { repo: repo.clone(), digest: floor });
        'pages: loop {
            let page = ask!(self, Query::GcScan { after: after.clone(), n: 1000 }, Answer::GcScan)?;
            if page.is_empty() {
                break;
            }
            for item in &page {
                match item {
                    berth_proto::GcItem::Manifest { repo: r, digest } if r == repo => manifests.push(digest.clone()),
                    _ => break 'pages,
                }
            }
            after = page.last().cloned();
        }
        let blobs = self.blobs(repo).await?.into_iter().map(|(d, _)| d).collect();
        Ok((manifests, blobs))
    }

    async fn blobs(&self, repo: &RepoName) -> Result<Vec<(Digest, u64)>, MetaError> {
        let mut out: Vec<(Digest, u64)> = Vec::new();
        loop {
            let q = Query::Blobs { repo: repo.clone(), after: out.last().map(|(d, _)| d.clone()), n: 1000 };
            let page = ask!(self, q, Answer::Blobs)?;
            let full = page.len() == 1000;
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<(Digest, Arc<ManifestRecord>)>, MetaError> {
        ask!(self, Query::Referrers { repo: repo.clone(), subject: subject.clone() }, Answer::Referrers)
    }

    async fn cleanup_policies(&self) -> Result<Arc<std::collections::BTreeMap<u64, berth_proto::cleanup::CleanupState>>, MetaError> {
        ask!(self, Query::Cleanup, Answer::Cleanup)
    }

    fn identity(&self) -> Arc<Identity> {
        self.identity.read().expect("identity lock").clone()
    }

    async fn identity_now(&self) -> Result<Arc<Identity>, MetaError> {
        let asked = std::time::Instant::now();
        let mut last = self.refreshing.lock().await;
        // A refresh that started after this caller asked already saw what it needs.
        if last.is_none_or(|started| started < asked) {
            *last = Some(std::time::Instant::now());
            self.refresh_identity().await?;
        }
        Ok(self.identity())
    }

    fn ready(&self) -> Result<(), String> {
        let at = self.confirmed_ms.load(std::sync::atomic::Ordering::Relaxed);
        if at == 0 {
            return Err("it has not reached the cluster's leader yet (not a member, or no quorum)".into());
        }
        let ago = berth_proto::now_ms().saturating_sub(at);
        if ago > READY_WINDOW_MS {
            return Err(format!("no leader has confirmed a read for {} s", ago / 1000));
        }
        Ok(())
    }

    async fn http_secret(&self) -> Result<Arc<Vec<u8>>, MetaError> {
        if let Some(s) = self.secret.get() {
            return Ok(s.clone());
        }
        // The secret never changes once set, so the first value read can be kept.
        match ask!(self, Query::HttpSecret, Answer::HttpSecret)? {
            Some(s) => Ok(self.secret.get_or_init(|| Arc::new(s)).clone()),
            None => Err(MetaError::Unavailable("the cluster HTTP secret is not initialized yet".into())),
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

/// Makes sure the cluster has a key to sign registry tokens with.
pub async fn ensure_signing_key(meta: &dyn Metadata) -> anyhow::Result<()> {
    use berth_proto::identity::IdentityChange;
    if meta.identity().current_key().is_some() {
        return Ok(());
    }
    let (kid, pkcs8) = berth_api::auth::signing::generate_key();
    meta.apply(Command::Identity(IdentityChange::AddSigningKey { kid: kid.clone(), pkcs8 })).await?;
    tracing::info!(%kid, "made the cluster's token signing key");
    Ok(())
}

/// Makes the first administrator from `berth.admin` if the cluster has no user yet.
pub async fn ensure_admin(meta: &dyn Metadata, cfg: &crate::config::AdminConfig) -> anyhow::Result<()> {
    use berth_proto::identity::IdentityChange;
    let Some((username, password)) = cfg.credentials()? else {
        if meta.identity().users.is_empty() {
            tracing::info!("no users yet; set berth.admin.password (or REGISTRY_BERTH_ADMIN_PASSWORD) or run `berth admin create-user --admin` to make one");
        }
        return Ok(());
    };
    let hash = tokio::task::spawn_blocking(move || bcrypt::hash(password, berth_api::auth::PASSWORD_COST)).await??;
    match meta.apply(Command::Identity(IdentityChange::BootstrapAdmin { username: username.clone(), password_hash: hash })).await? {
        Outcome::Created { .. } => tracing::info!(%username, "made the first administrator"),
        _ => tracing::debug!("users exist already; berth.admin is not applied again"),
    }
    Ok(())
}
