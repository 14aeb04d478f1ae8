//! The gRPC side of copying between sites: a node streams content from its own site's store
//! to a node of another site, which verifies it. Answered by every node with a store; the
//! cluster token (or mutual TLS) admits only cluster members, as on every gRPC service.

use std::sync::Arc;

use berth_api::{BlobError, BlobStore};
use berth_proto::rpc::geo_service_server::GeoService;
use berth_proto::rpc::{BlobChunk, EnsureReply, EnsureRequest, ReadBlobRequest, VerifyProgress, VerifyRequest};
use berth_proto::Digest;
use futures::StreamExt;
use tonic::{Request, Response, Status};

/// Largest chunk sent in one message.
const CHUNK: usize = 1 << 20;

/// Serves this site's content to other sites, and verification of it.
pub struct GeoRpc {
    /// This site's store.
    pub store: Arc<dyn BlobStore>,
    /// Set once the node has started its site (`berth.geo.site`).
    pub verifier: VerifierSlot,
}

/// Where a node with a site puts its verifier.
pub type VerifierSlot = Arc<std::sync::OnceLock<Arc<super::verify::Verifier>>>;

type ChunkStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<BlobChunk, Status>> + Send>>;

type ProgressStream = tokio_stream::wrappers::ReceiverStream<Result<VerifyProgress, Status>>;

#[tonic::async_trait]
impl GeoService for GeoRpc {
    type ReadBlobStream = ChunkStream;
    type VerifyStream = ProgressStream;

    async fn ensure(&self, req: Request<EnsureRequest>) -> Result<Response<EnsureReply>, Status> {
        let r = req.into_inner();
        let digest = Digest::parse(&r.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some(verifier) = self.verifier.get().cloned() else {
            return Err(Status::failed_precondition("this node names no site (berth.geo.site)"));
        };
        let fetcher = &verifier.fetcher;
        if fetcher.site != r.site {
            return Err(Status::failed_precondition(format!("this node is of site {}, not {}", fetcher.site, r.site)));
        }
        let Some(placement) = fetcher.placement(&digest).map_err(status)? else {
            return Ok(Response::new(EnsureReply { content: false, copied: false }));
        };
        match fetcher.ensure(&digest, &placement.sites).await {
            Ok((_, copied)) => {
                fetcher.counted_through(if copied { "copied" } else { "present" });
                Ok(Response::new(EnsureReply { content: true, copied }))
            }
            Err(super::fetch::FetchError::NoSource(_)) => Ok(Response::new(EnsureReply { content: false, copied: false })),
            Err(e) => {
                fetcher.counted_through("failed");
                Err(Status::unavailable(e.to_string()))
            }
        }
    }

    async fn verify(&self, req: Request<VerifyRequest>) -> Result<Response<ProgressStream>, Status> {
        let r = req.into_inner();
        if !(1..=100).contains(&r.percent) {
            return Err(Status::invalid_argument("percent is 1 to 100"));
        }
        let Some(verifier) = self.verifier.get().cloned() else {
            return Err(Status::failed_precondition("this node names no site (berth.geo.site)"));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move { verifier.run(r.percent, r.repair, tx).await });
        tokio::spawn(async move {
            let mut rx = rx;
            while let Some(p) = rx.recv().await {
                if out_tx.send(Ok(p)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(out_rx)))
    }

    async fn read_blob(&self, req: Request<ReadBlobRequest>) -> Result<Response<ChunkStream>, Status> {
        let digest = Digest::parse(&req.into_inner().digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let size = match self.store.stat(&digest).await {
            Ok(Some(size)) => size,
            Ok(None) => return Err(Status::not_found(format!("this site does not hold {digest}"))),
            Err(e) => return Err(status(e)),
        };
        let body = self.store.read(&digest, None).await.map_err(status)?;
        let mut first = true;
        // Split large reads so that no message passes the decoder's limit.
        let chunks = body.flat_map(|r| {
            let parts: Vec<Result<bytes::Bytes, Status>> = match r {
                Ok(b) => (0..b.len().div_ceil(CHUNK)).map(|i| Ok(b.slice(i * CHUNK..((i + 1) * CHUNK).min(b.len())))).collect(),
                Err(e) => vec![Err(Status::unavailable(format!("reading the store: {e}")))],
            };
            futures::stream::iter(parts)
        });
        let stream = chunks.map(move |r| {
            r.map(|data| {
                let size = if std::mem::take(&mut first) { size } else { 0 };
                BlobChunk { data: data.to_vec(), size }
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn status(e: BlobError) -> Status {
    match e {
        BlobError::NotFound => Status::not_found("not in this site's store"),
        e => Status::unavailable(e.to_string()),
    }
}
