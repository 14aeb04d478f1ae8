//! Request handlers, one module per resource, plus helpers they share.

pub mod blobs;
pub mod listing;
pub mod manifests;
pub mod token;
pub mod uploads;
pub mod v4;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use berth_proto::{Digest, RepoName};
use futures::StreamExt;

use crate::backend::ByteStream;
use crate::error::{ApiError, Code};

/// Result of a handler.
pub type ApiResult = Result<Response, ApiError>;

/// Validates a repository name from the path.
pub fn repo_name(name: &str) -> Result<RepoName, ApiError> {
    RepoName::parse(name).map_err(|e| ApiError::new(Code::NameInvalid, e.to_string()).detail(serde_json::json!({"name": name})))
}

/// Validates a digest from the path or query.
pub fn digest(s: &str) -> Result<Digest, ApiError> {
    Digest::parse(s).map_err(|e| ApiError::new(Code::DigestInvalid, e.to_string()))
}

/// Query parameters (last value wins).
pub fn query(uri: &Uri) -> HashMap<String, String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0.into_iter().collect())
        .unwrap_or_default()
}

/// A response with no body and the given status.
pub fn empty(status: StatusCode) -> axum::http::response::Builder {
    Response::builder().status(status).header(header::CONTENT_LENGTH, "0")
}

/// Finishes a builder (header values here are always valid).
pub fn finish(b: axum::http::response::Builder, body: Body) -> Response {
    b.body(body).expect("valid response")
}

/// The least a request body must deliver: `bytes_per_sec` averaged over each `window` (and at
/// least one byte per window), so slow but progressing clients keep going and stalled ones
/// are cut instead of holding a connection and an upload lock forever.
#[derive(Debug, Clone, Copy)]
pub struct BodyRate {
    /// Minimum average rate.
    pub bytes_per_sec: u64,
    /// The span over which the rate is averaged.
    pub window: Duration,
}

impl Default for BodyRate {
    fn default() -> Self {
        BodyRate { bytes_per_sec: 1024, window: Duration::from_secs(30) }
    }
}

/// A request body as a byte stream that fails once it falls below `rate`.
pub fn request_body(body: Body, rate: BodyRate) -> ByteStream {
    let need = (rate.bytes_per_sec.saturating_mul(rate.window.as_secs())).max(1);
    let too_slow = move || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("request body slower than {} bytes/s", rate.bytes_per_sec));
    let start = (body.into_data_stream(), Instant::now(), 0u64, false);
    Box::pin(futures::stream::unfold(start, move |(mut s, mut window_start, mut got, failed)| async move {
        if failed {
            return None;
        }
        loop {
            let deadline = window_start + rate.window;
            match tokio::time::timeout_at(deadline.into(), s.next()).await {
                Ok(Some(Ok(b))) => {
                    got += b.len() as u64;
                    let now = Instant::now();
                    if now >= deadline {
                        if got < need {
                            return Some((Err(too_slow()), (s, window_start, got, true)));
                        }
                        (window_start, got) = (now, 0);
                    }
                    return Some((Ok(b), (s, window_start, got, false)));
                }
                Ok(Some(Err(e))) => return Some((Err(std::io::Error::other(e)), (s, window_start, got, true))),
                Ok(None) => return None,
                Err(_) if got < need => return Some((Err(too_slow()), (s, window_start, got, true))),
                Err(_) => (window_start, got) = (deadline, 0),
            }
        }
    }))
}

/// Parses `Content-Range: <start>-<end>` (with an optional `bytes ` / `bytes=` prefix).
pub fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else { return Ok(None) };
    let bad = || ApiError::new(Code::BlobUploadInvalid, "malformed Content-Range").status(StatusCode::RANGE_NOT_SATISFIABLE);
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("bytes").map(|r| r.trim_start_matches(['=', ' '])).unwrap_or(s);
    let s = s.split('/').next().unwrap_or("");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b) = (a.trim().parse::<u64>().map_err(|_| bad())?, b.trim().parse::<u64>().map_err(|_| bad())?);
    if b < a {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

/// The `Content-Length` header, if present and numeric.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Offers content that a refused push left in the blob store to garbage collection: queued if
/// nothing links or holds it, swept after `gc.reviewafter` like any other garbage. Best effort
/// (a cluster still upgrading to log protocol 4 leaves it for a store scan).
pub async fn offer_to_gc(api: &crate::Api, digest: &Digest) {
    let item = berth_proto::GcItem::Content { digest: digest.clone() };
    if let Err(e) = api.meta.apply(berth_proto::Command::GcEnqueue(vec![item])).await {
        tracing::debug!(%digest, "refused content not offered to garbage collection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trickle(chunks: Vec<(u64, &'static [u8])>) -> Body {
        Body::from_stream(futures::stream::iter(chunks).then(|(ms, b)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b))
        }))
    }

    async fn drain(mut s: ByteStream) -> Result<usize, std::io::Error> {
        let mut n = 0;
        while let Some(c) = s.next().await {
            n += c?.len();
        }
        Ok(n)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_but_progressing_bodies_pass_and_stalled_ones_are_cut() {
        let rate = BodyRate { bytes_per_sec: 2, window: Duration::from_secs(10) };
        // 20 bytes every 9 s: slow, but at the rate.
        let slow = trickle(vec![(9_000, &[0u8; 20]), (9_000, &[0u8; 20]), (9_000, &[0u8; 20])]);
        assert_eq!(drain(request_body(slow, rate)).await.unwrap(), 60);
        // Starts well, then stalls for good.
        let stalled = Body::from_stream(
            futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from_static(&[0u8; 100]))])
                .chain(futures::stream::pending()),
        );
        let err = drain(request_body(stalled, rate)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // A byte a window is below 2 bytes/s.
        let dribble = trickle(vec![(9_000, b"a"), (9_000, b"b"), (9_000, b"c")]);
        assert!(drain(request_body(dribble, rate)).await.is_err());
    }

    proptest::proptest! {
        /// Any `Content-Range` gives an ordered pair, nothing, or a 416; never a panic.
        #[test]
        fn content_range_parses_or_refuses(v in "(bytes[ =]?)?[0-9]{0,21}-?[0-9]{0,21}(/[0-9*]{0,5})?|[ -~]{0,40}") {
            let mut h = HeaderMap::new();
            if let Ok(value) = v.parse() {
                h.insert(header::CONTENT_RANGE, value);
                match content_range(&h) {
                    Ok(Some((a, b))) => proptest::prop_assert!(a <= b),
                    Ok(None) => proptest::prop_assert!(false, "a present header read as absent"),
                    Err(e) => proptest::prop_assert_eq!(e.status, StatusCode::RANGE_NOT_SATISFIABLE),
                }
            }
        }
    }
}
