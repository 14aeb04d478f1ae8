//! Copying one piece of content from another site into this site's store: streamed over gRPC
//! from a node of a site that holds it, staged as an upload, verified against its digest by
//! the store (`finish_upload`), and only then present. Copies of one digest on this node
//! wait for each other, so the replicator and fetch-through never fetch the same bytes twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::{BlobError, BlobStore};
use berth_proto::geo::GeoState;
use berth_proto::rpc::geo_service_client::GeoServiceClient;
use berth_proto::rpc::ReadBlobRequest;
use berth_proto::Digest;
use berth_raft_store::SharedState;
use futures::StreamExt;

use super::GeoMetrics;
use crate::peers::Peers;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No other site has a node to ask.
    #[error("no other site holds {0}")]
    NoSource(Digest),
    /// Every node asked failed; the last reason.
    #[error("{0}")]
    Failed(String),
    /// This site's store failed.
    #[error("this site's store: {0}")]
    Store(#[from] BlobError),
}

/// A reader served while a copy is made (fetch-through): told whether the bytes are here
/// already or follow as they arrive, then given them. The stream ends cleanly only once the
/// store has verified the copy; a copy that fails or does not match its digest ends it with
/// an error, so the client never takes partial or wrong bytes for the blob.
pub struct Tee {
    /// `true`: the bytes follow on `bytes`; `false`: they are in this site's store already.
    pub started: tokio::sync::oneshot::Sender<bool>,
    pub bytes: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
}

/// A shared limit on bytes per second.
struct Rate {
    per_sec: u64,
    next: tokio::sync::Mutex<Instant>,
}

impl Rate {
    /// Waits until `n` more bytes fit in the rate (a burst of a quarter of a second is free).
    async fn take(&self, n: usize) {
        let wait = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / self.per_sec as f64);
            start.saturating_duration_since(now + Duration::from_millis(250))
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Copies content from other sites into this site's store.
pub struct Fetcher {
    /// This node's site.
    pub site: String,
    store: Arc<dyn BlobStore>,
    state: SharedState,
    peers: Peers,
    rate: Option<Rate>,
    metrics: GeoMetrics,
    /// One lock per digest being copied on this node.
    copying: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetcher {
    /// A fetcher into `store` (this site's), reading sites from `state` and reaching other
    /// nodes through `peers`, at most `bandwidth` bytes per second.
    pub fn new(site: String, store: Arc<dyn BlobStore>, state: SharedState, peers: Peers, bandwidth: Option<u64>, metrics: GeoMetrics) -> Self {
        let rate = bandwidth.map(|per_sec| Rate { per_sec, next: tokio::sync::Mutex::new(Instant::now()) });
        Fetcher { site, store, state, peers, rate, metrics, copying: Mutex::default() }
    }

    /// The sites as this node's state has them.
    pub fn geo(&self) -> GeoState {
        self.state.geo()
    }

    /// Where `digest` is held, if it is committed content (this node's state, read locally).
    pub fn placement(&self, digest: &Digest) -> Result<Option<berth_proto::geo::Placement>, BlobError> {
        if self.state.site_count() < 2 {
            return Ok(None);
        }
        self.state.geo_placement(digest).map_err(|e| BlobError::Storage(format!("reading the state: {e}")))
    }

    /// Counts a fetch-through.
    pub fn counted_through(&self, result: &str) {
        self.metrics.through.with_label_values(&[result]).inc();
    }

    /// The nodes to ask for `digest`: those of the sites recorded as holding it first, then
    /// those of every other site (a site may hold content it has not recorded yet).
    fn sources(&self, holders: &[String]) -> Vec<String> {
        let geo = self.geo();
        let others = geo.sites.iter().filter(|(name, _)| **name != self.site);
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for (name, site) in others {
            let list = if holders.contains(name) { &mut first } else { &mut rest };
            list.extend(site.nodes.values().cloned());
        }
        first.extend(rest);
        first
    }

    /// Makes sure this site's store holds `digest`, copying it from another site if it does
    /// not; `holders` are the sites recorded as holding it. Returns its size and whether it
    /// was copied.
    pub async fn ensure(&self, digest: &Digest, holders: &[String]) -> Result<(u64, bool), FetchError> {
        self.ensure_teed(digest, holders, None).await
    }

    /// [`Fetcher::ensure`], handing the bytes to `tee` as they are copied.
    pub async fn ensure_teed(&self, digest: &Digest, holders: &[String], tee: Option<Tee>) -> Result<(u64, bool), FetchError> {
        let lock = self.copying.lock().unwrap().entry(digest.clone()).or_default().clone();
        let result = {
            let _held = lock.lock().await;
            self.ensure_locked(digest, holders, tee).await
        };
        let mut copying = self.copying.lock().unwrap();
        // The last one out removes the lock (the map holds one reference, `lock` another).
        if Arc::strong_count(&lock) == 2 {
            copying.remove(digest);
        }
        result
    }

    async fn ensure_locked(&self, digest: &Digest, holders: &[String], mut tee: Option<Tee>) -> Result<(u64, bool), FetchError> {
        if let Some(size) = self.store.stat(digest).await? {
            if let Some(t) = tee {
                let _ = t.started.send(false);
            }
            return Ok((size, false));
        }
        let sources = self.sources(holders);
        if sources.is_empty() {
            return Err(FetchError::NoSource(digest.clone()));
        }
        let mut last = String::new();
        for addr in sources {
            let teeing = tee.is_some();
            match self.copy_from(&addr, digest, &mut tee).await {
                Ok(size) => return Ok((size, true)),
                Err(FetchError::Store(e @ (BlobError::Full(_) | BlobError::Unavailable(_)))) => return Err(FetchError::Store(e)),
                Err(e) => {
                    tracing::debug!(%digest, %addr, "copy failed: {e}");
                    last = format!("{addr}: {e}");
                    // A reader that has had some of the bytes cannot be given another copy's.
                    if teeing && tee.is_none() {
                        break;
                    }
                }
            }
        }
        Err(FetchError::Failed(last))
    }

    /// One copy from the node at `addr`, staged and verified.
    /// A reader in `tee` is told the bytes follow once the source has answered (`tee` is then
    /// taken), and receives them as they arrive.
    async fn copy_from(&self, addr: &str, digest: &Digest, tee: &mut Option<Tee>) -> Result<u64, FetchError> {
        let channel = self.peers.channel(addr).map_err(FetchError::Failed)?;
        let mut client = GeoServiceClient::new(channel).max_decoding_message_size(8 << 20);
        let mut req = tonic::Request::new(ReadBlobRequest { digest: digest.to_string() });
        // A whole blob may take long; a stalled stream is caught by HTTP/2 keepalive.
        req.set_timeout(Duration::from_secs(3600));
        let stream = client.read_blob(req).await.map_err(|s| FetchError::Failed(format!("{}: {}", s.code(), s.message())))?.into_inner();
        let id = berth_api::handlers::uploads::new_upload_id();
        self.store.create_upload(&id).await?;
        let reader = tee.take().and_then(|t| t.started.send(true).ok().map(|()| t.bytes));
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let rate = &self.rate;
        let body = stream.then(move |chunk| {
            let metrics = metrics.clone();
            async move {
                let chunk = chunk.map_err(|s| std::io::Error::other(format!("{}: {}", s.code(), s.message())))?;
                if let Some(rate) = rate {
                    rate.take(chunk.data.len()).await;
                }
                metrics.copied_bytes.inc_by(chunk.data.len() as u64);
                Ok::<_, std::io::Error>(bytes::Bytes::from(chunk.data))
            }
        });
        // `write_upload` wants a 'static stream: the rate limiter is borrowed, so the stream
        // is driven here through a channel.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
        let reader_pump = reader.clone();
        // The reader gets each chunk once the next has arrived; the last one only after the
        // store has verified the copy, so that a reader who knows the length cannot take a
        // damaged copy for complete.
        let pump = async move {
            futures::pin_mut!(body);
            let mut held: Option<bytes::Bytes> = None;
            while let Some(item) = body.next().await {
                let failed = item.is_err();
                if let (Some(r), Ok(b)) = (&reader_pump, &item) {
                    if let Some(prev) = held.replace(b.clone()) {
                        // A reader that went away does not stop the copy.
                        let _ = r.send(Ok(prev)).await;
                    }
                }
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
            held
        };
        let write = self.store.write_upload(&id, 0, Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)));
        let (written, last) = tokio::join!(write, pump);
        let result = match written {
            Ok(_) => self.store.finish_upload(&id, digest).await,
            Err(e) => Err(e),
        };
        let _ = self.store.remove_upload(&id).await;
        if let Some(r) = &reader {
            let end = match (&result, last) {
                (Ok(_), Some(last)) => Ok(last),
                (Ok(_), None) => Ok(bytes::Bytes::new()),
                (Err(e), _) => Err(std::io::Error::other(format!("the copy from another site failed: {e}"))),
            };
            let _ = r.send(end).await;
        }
        match result {
            Ok(size) => {
                tracing::debug!(%digest, %addr, size, ms = started.elapsed().as_millis() as u64, "copied from another site");
                Ok(size)
            }
            Err(BlobError::DigestMismatch { actual, .. }) => {
                self.metrics.copies.with_label_values(&["corrupt"]).inc();
                Err(FetchError::Failed(format!("the copy hashes to {actual}: {addr}'s site holds damaged bytes")))
            }
            Err(BlobError::Body(e)) => Err(FetchError::Failed(e)),
            Err(e) => Err(FetchError::Store(e)),
        }
    }
}
