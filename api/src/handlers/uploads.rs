//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, monolithic, mount) and
//! `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>?_state=...`.
//!
//! Write order (DESIGN.md): stream into staging while hashing; on the final PUT check the
//! digest, make the bytes durable at their content address, and only then commit `LinkBlob`
//! through Raft. The client gets 201 after the commit.

use std::sync::{Arc, Mutex};

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use berth_proto::{Algorithm, Command, Digest, RepoName, ResumableSha256};
use futures::StreamExt;
use rand::RngCore;
use sha2::Digest as _;

use super::{content_length, content_range, digest, empty, finish, hashed_body, query, repo_name, ApiResult, RunningHash};
use crate::error::{ApiError, Code};
use crate::upload_state::UploadState;
use crate::Api;

fn new_upload_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn location(state: &UploadState, secret: &[u8]) -> String {
    format!("/v2/{}/blobs/uploads/{}?_state={}", state.repo, state.id, state.sign(secret))
}

fn range_header(offset: u64) -> String {
    // Docker Distribution sends "0-0" for an empty upload; clients expect it.
    format!("0-{}", offset.saturating_sub(1))
}

/// A 202 that tells the client where the upload stands.
fn accepted(state: &UploadState, secret: &[u8], status: StatusCode) -> axum::response::Response {
    finish(
        empty(status)
            .header(header::LOCATION, location(state, secret))
            .header(header::RANGE, range_header(state.offset))
            .header("Docker-Upload-UUID", &state.id),
        Body::empty(),
    )
}

fn created(repo: &RepoName, digest: &Digest) -> axum::response::Response {
    finish(
        empty(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{repo}/blobs/{digest}"))
            .header("Docker-Content-Digest", digest.to_string()),
        Body::empty(),
    )
}

/// Makes staged bytes a blob: durable at the content address first, then linked through Raft.
async fn commit(api: &Api, repo: RepoName, id: &str, size: u64, digest: &Digest) -> ApiResult {
    api.blobs.finish_upload(id, size, digest).await?;
    api.meta.apply(Command::LinkBlob { repo: repo.clone(), digest: digest.clone(), size }).await?;
    Ok(created(&repo, digest))
}

fn digest_mismatch(expected: &Digest, actual: &Digest) -> ApiError {
    ApiError::new(Code::DigestInvalid, "provided digest did not match uploaded content")
        .detail(serde_json::json!({"expected": expected.to_string(), "actual": actual.to_string()}))
}

/// `POST /v2/<name>/blobs/uploads/`.
pub async fn start(api: &Api, name: &str, uri: &Uri, body: Body) -> ApiResult {
    let repo = repo_name(name)?;
    let q = query(uri);
    if let Some(mount) = q.get("mount") {
        let mount = digest(mount)?;
        if let Some(from) = q.get("from").and_then(|f| RepoName::parse(f).ok()) {
            if let Some(size) = api.meta.blob_size(&from, &mount).await? {
                if api.blobs.stat(&mount).await?.is_some() {
                    api.meta.apply(Command::LinkBlob { repo: repo.clone(), digest: mount.clone(), size }).await?;
                    return Ok(created(&repo, &mount));
                }
            }
        }
        // Not mountable: fall through to an ordinary upload session, as the spec says.
    } else if let Some(d) = q.get("digest") {
        return monolithic(api, repo, digest(d)?, body).await;
    }
    let secret = api.meta.http_secret().await?;
    let state = UploadState::new(&repo, new_upload_id());
    api.blobs.create_upload(&state.id).await?;
    Ok(accepted(&state, &secret, StatusCode::ACCEPTED))
}

/// `POST ...?digest=`: the whole blob in one request.
async fn monolithic(api: &Api, repo: RepoName, expected: Digest, body: Body) -> ApiResult {
    let id = new_upload_id();
    let hash = Arc::new(Mutex::new(match expected.algorithm() {
        Algorithm::Sha256 => RunningHash::Sha256(ResumableSha256::new()),
        Algorithm::Sha512 => RunningHash::Sha512(sha2::Sha512::new()),
    }));
    api.blobs.create_upload(&id).await?;
    let written = match api.blobs.write_upload(&id, 0, hashed_body(body, hash.clone())).await {
        Ok(n) => n,
        Err(e) => {
            let _ = api.blobs.cancel_upload(&id).await;
            return Err(e.into());
        }
    };
    let actual = hash.lock().unwrap().digest();
    if actual != expected {
        let _ = api.blobs.cancel_upload(&id).await;
        return Err(digest_mismatch(&expected, &actual));
    }
    commit(api, repo, &id, written, &expected).await
}

/// Verifies `_state` and that it belongs to this repository and upload id.
async fn session(api: &Api, repo: &RepoName, id: &str, uri: &Uri) -> Result<(UploadState, Arc<Vec<u8>>), ApiError> {
    let unknown = || ApiError::new(Code::BlobUploadUnknown, "blob upload unknown to registry").detail(serde_json::json!({"id": id}));
    let secret = api.meta.http_secret().await?;
    let tok = query(uri).remove("_state").ok_or_else(unknown)?;
    let state = UploadState::verify(&tok, &secret).ok_or_else(unknown)?;
    if state.repo != repo.as_str() || state.id != id || state.hasher().is_none() {
        return Err(unknown());
    }
    if !api.blobs.upload_exists(id).await? {
        return Err(unknown());
    }
    Ok((state, secret))
}

/// Streams a chunk into the upload at the state's offset, advancing the state.
async fn write_chunk(api: &Api, state: &mut UploadState, secret: &[u8], headers: &HeaderMap, body: Body) -> Result<(), ApiError> {
    let range = content_range(headers)?;
    if let Some((first, last)) = range {
        if first != state.offset {
            return Err(ApiError::new(Code::BlobUploadInvalid, format!("chunk starts at {first}, upload is at {}", state.offset))
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::RANGE, range_header(state.offset))
                .header(header::LOCATION, location(state, secret)));
        }
        if content_length(headers).is_some_and(|len| len != last - first + 1) {
            return Err(ApiError::new(Code::SizeInvalid, "Content-Range does not match Content-Length")
                .status(StatusCode::RANGE_NOT_SATISFIABLE));
        }
    }
    let hasher = state.hasher().expect("checked in session");
    let hash = Arc::new(Mutex::new(RunningHash::Sha256(hasher)));
    let written = api.blobs.write_upload(&state.id, state.offset, hashed_body(body, hash.clone())).await?;
    let RunningHash::Sha256(h) = &*hash.lock().unwrap() else { unreachable!() };
    if h.len() != state.offset + written {
        return Err(ApiError::new(Code::Unknown, "storage wrote a different number of bytes than were received"));
    }
    if let Some((first, last)) = range {
        if written != last - first + 1 {
            return Err(ApiError::new(Code::SizeInvalid, "body length does not match Content-Range"));
        }
    }
    state.set_hasher(h);
    Ok(())
}

/// `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>`.
pub async fn handle(api: &Api, method: &Method, name: &str, id: &str, uri: &Uri, headers: &HeaderMap, body: Body) -> ApiResult {
    let repo = repo_name(name)?;
    let (mut state, secret) = session(api, &repo, id, uri).await?;
    match *method {
        Method::GET => Ok(accepted(&state, &secret, StatusCode::NO_CONTENT)),
        Method::DELETE => {
            api.blobs.cancel_upload(id).await?;
            Ok(finish(empty(StatusCode::NO_CONTENT), Body::empty()))
        }
        Method::PATCH => {
            write_chunk(api, &mut state, &secret, headers, body).await?;
            Ok(accepted(&state, &secret, StatusCode::ACCEPTED))
        }
        Method::PUT => {
            let expected = match query(uri).get("digest") {
                Some(d) => digest(d)?,
                None => return Err(ApiError::new(Code::DigestInvalid, "the digest query parameter is required")),
            };
            if !body.is_end_stream() && content_length(headers) != Some(0) {
                write_chunk(api, &mut state, &secret, headers, body).await?;
            }
            let actual = match expected.algorithm() {
                Algorithm::Sha256 => state.hasher().expect("valid").digest(),
                Algorithm::Sha512 => {
                    let mut h = sha2::Sha512::new();
                    let mut s = api.blobs.read_upload(id, state.offset).await?;
                    while let Some(chunk) = s.next().await {
                        h.update(&chunk.map_err(|e| ApiError::new(Code::Unknown, e.to_string()))?);
                    }
                    Digest::from_raw(Algorithm::Sha512, &h.finalize())
                }
            };
            if actual != expected {
                let _ = api.blobs.cancel_upload(id).await;
                return Err(digest_mismatch(&expected, &actual));
            }
            commit(api, repo, id, state.offset, &expected).await
        }
        _ => Err(ApiError::new(Code::Unsupported, "method not allowed")),
    }
}
