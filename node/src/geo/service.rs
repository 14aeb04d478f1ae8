//! The gRPC side of copying between sites: a node streams content from its own site's store
//! to a node of another site, which verifies it. Answered by every node with a store; the
//! cluster token (or mutual TLS) admits only cluster members, as on every gRPC service.

use std::sync::Arc;

use berth_api::{BlobError, BlobStore};
use berth_proto::rpc::geo_service_server::GeoService;
use berth_proto::rpc::{BlobChunk, ReadBlobRequest};
use berth_proto::Digest;
use futures::StreamExt;
use tonic::{Request, Response, Status};

/// Largest chunk sent in one message.
const CHUNK: usize = 1 << 20;

/// Serves this site's content to other sites.
pub struct GeoRpc {
    /// This site's store.
    pub store: Arc<dyn BlobStore>,
}

type ChunkStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<BlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl GeoService for GeoRpc {
    type ReadBlobStream = ChunkStream;

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
