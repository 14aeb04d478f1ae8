//! Fetch-through: this site's store as the API sees it. A read of content that the cluster
//! has committed but this site does not hold yet copies it from a site that does (verified),
//! then serves it: a pull at a secondary never gets a 404 for committed content, only a 503
//! while no site that holds it can be reached.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use berth_api::{BlobError, BlobStore, ByteStream};
use berth_proto::Digest;
use bytes::Bytes;

use super::fetch::{FetchError, Fetcher};

/// The answer when committed content is held only by sites that cannot be reached now.
fn unreachable(digest: &Digest, e: &FetchError) -> BlobError {
    BlobError::Unavailable(format!("{digest} is held by another site, which could not be reached: {e}"))
}

/// A site's store that fetches committed content it lacks from other sites.
pub struct ThroughStore {
    local: Arc<dyn BlobStore>,
    /// Set once Raft has started and this node has a site.
    fetcher: OnceLock<Arc<Fetcher>>,
    /// On a frontend of a site: the site and its nodes (gRPC addresses), asked to bring
    /// content into the store this frontend shares with them.
    remote: OnceLock<(String, crate::peers::Peers, Vec<String>)>,
}

impl ThroughStore {
    /// Wraps this site's store; it fetches nothing until [`ThroughStore::arm`].
    pub fn new(local: Arc<dyn BlobStore>) -> Arc<Self> {
        Arc::new(ThroughStore { local, fetcher: OnceLock::new(), remote: OnceLock::new() })
    }

    /// On a frontend of `site`: fetches through by asking `nodes` (the site's voters or
    /// learners, which share this store) to bring content here.
    pub fn arm_remote(&self, site: String, peers: crate::peers::Peers, nodes: Vec<String>) {
        let _ = self.remote.set((site, peers, nodes));
    }

    /// [`ThroughStore::fetch`] on a frontend: the first node of the site that answers.
    async fn fetch_remote(&self, digest: &Digest) -> Result<bool, BlobError> {
        use berth_proto::rpc::geo_service_client::GeoServiceClient;
        use berth_proto::rpc::EnsureRequest;
        let Some((site, peers, nodes)) = self.remote.get() else { return Ok(false) };
        let mut last = String::from("no node of the site is configured");
        for addr in nodes {
            let Ok(channel) = peers.channel(addr) else { continue };
            let mut req = tonic::Request::new(EnsureRequest { digest: digest.to_string(), site: site.clone() });
            req.set_timeout(std::time::Duration::from_secs(3600));
            match GeoServiceClient::new(channel).ensure(req).await {
                Ok(r) => return Ok(r.into_inner().content),
                Err(s) => last = format!("{addr}: {}", s.message()),
            }
        }
        Err(BlobError::Unavailable(format!("{digest} may be held by another site; no node of this site could fetch it: {last}")))
    }

    /// Starts fetching through `fetcher`.
    pub fn arm(&self, fetcher: Arc<Fetcher>) {
        let _ = self.fetcher.set(fetcher);
    }

    /// After a local miss: copies `digest` here if it is committed content another site
    /// holds. Ok(false) when it is not committed content (a true miss).
    async fn fetch(&self, digest: &Digest) -> Result<bool, BlobError> {
        let Some(fetcher) = self.fetcher.get() else { return self.fetch_remote(digest).await };
        let Some(placement) = fetcher.placement(digest)? else { return Ok(false) };
        match fetcher.ensure(digest, &placement.sites).await {
            Ok((_, copied)) => {
                fetcher.counted_through(if copied { "copied" } else { "present" });
                Ok(true)
            }
            Err(FetchError::NoSource(_)) => Ok(false),
            Err(FetchError::Store(e)) => Err(e),
            Err(e @ FetchError::Failed(_)) => {
                fetcher.counted_through("failed");
                Err(unreachable(digest, &e))
            }
        }
    }
}

impl ThroughStore {
    /// After a local miss of a whole blob: copies `digest` here if it is committed content
    /// another site holds, handing the bytes over as they arrive. `None` when the bytes are
    /// (now) in this site's store; `NotFound` when it is not committed content.
    async fn fetch_streaming(&self, digest: &Digest) -> Result<Option<ByteStream>, BlobError> {
        let Some(fetcher) = self.fetcher.get().cloned() else {
            // A frontend has the copy made, then reads it.
            return if self.fetch_remote(digest).await? { Ok(None) } else { Err(BlobError::NotFound) };
        };
        let Some(placement) = fetcher.placement(digest)? else { return Err(BlobError::NotFound) };
        let (bytes, rx) = tokio::sync::mpsc::channel(8);
        let (started, told) = tokio::sync::oneshot::channel();
        let d = digest.clone();
        let copy = tokio::spawn(async move {
            let tee = super::fetch::Tee { started, bytes };
            let r = fetcher.ensure_teed(&d, &placement.sites, Some(tee)).await;
            fetcher.counted_through(match &r {
                Ok((_, true)) => "copied",
                Ok((_, false)) => "present",
                Err(_) => "failed",
            });
            r
        });
        match told.await {
            Ok(true) => Ok(Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))),
            Ok(false) => Ok(None),
            // The copy ended before any source answered.
            Err(_) => match copy.await {
                Ok(Ok(_)) => Ok(None),
                Ok(Err(FetchError::NoSource(_))) => Err(BlobError::NotFound),
                Ok(Err(FetchError::Store(e))) => Err(e),
                Ok(Err(e)) => Err(unreachable(digest, &e)),
                Err(e) => Err(BlobError::Storage(format!("the copy task failed: {e}"))),
            },
        }
    }
}

#[async_trait]
impl BlobStore for ThroughStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        match self.local.stat(digest).await? {
            Some(size) => Ok(Some(size)),
            None if self.fetch(digest).await? => self.local.stat(digest).await,
            None => Ok(None),
        }
    }

    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<ByteStream, BlobError> {
        match self.local.read(digest, range).await {
            // A whole blob is streamed to the reader while it is copied.
            Err(BlobError::NotFound) if range.is_none() => match self.fetch_streaming(digest).await? {
                Some(stream) => Ok(stream),
                None => self.local.read(digest, range).await,
            },
            Err(BlobError::NotFound) if self.fetch(digest).await? => self.local.read(digest, range).await,
            other => other,
        }
    }

    async fn create_upload(&self, id: &str) -> Result<(), BlobError> {
        self.local.create_upload(id).await
    }

    async fn upload_offset(&self, id: &str) -> Result<u64, BlobError> {
        self.local.upload_offset(id).await
    }

    async fn write_upload(&self, id: &str, offset: u64, body: ByteStream) -> Result<u64, BlobError> {
        self.local.write_upload(id, offset, body).await
    }

    async fn finish_upload(&self, id: &str, digest: &Digest) -> Result<u64, BlobError> {
        self.local.finish_upload(id, digest).await
    }

    async fn remove_upload(&self, id: &str) -> Result<(), BlobError> {
        self.local.remove_upload(id).await
    }

    async fn put_content(&self, digest: &Digest, bytes: Bytes) -> Result<(), BlobError> {
        self.local.put_content(digest, bytes).await
    }
}
