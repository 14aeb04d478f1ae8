//! Request handlers, one module per resource, plus helpers they share.

pub mod blobs;
pub mod listing;
pub mod manifests;
pub mod uploads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use berth_proto::{Digest, RepoName, ResumableSha256};
use futures::StreamExt;
use sha2::Digest as _;

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

/// A hash running over a request body as it streams.
pub enum RunningHash {
    /// Resumable SHA-256 (chunked uploads).
    Sha256(ResumableSha256),
    /// SHA-512 (monolithic uploads that name a sha512 digest).
    Sha512(sha2::Sha512),
}

impl RunningHash {
    fn update(&mut self, b: &[u8]) {
        match self {
            RunningHash::Sha256(h) => h.update(b),
            RunningHash::Sha512(h) => h.update(b),
        }
    }

    /// The digest so far.
    pub fn digest(&self) -> Digest {
        match self {
            RunningHash::Sha256(h) => h.digest(),
            RunningHash::Sha512(h) => Digest::from_raw(berth_proto::Algorithm::Sha512, &h.clone().finalize()),
        }
    }
}

/// Wraps a request body so every byte passes through `hash` on its way to storage.
pub fn hashed_body(body: Body, hash: Arc<Mutex<RunningHash>>) -> ByteStream {
    Box::pin(body.into_data_stream().map(move |chunk| {
        let b = chunk.map_err(std::io::Error::other)?;
        hash.lock().unwrap().update(&b);
        Ok(b)
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
