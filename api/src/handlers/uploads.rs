//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, monolithic, mount) and
//! `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>?_state=...`.
//!
//! Write order (DESIGN.md): stream into staging while hashing; on the final PUT check the
//! digest, make the bytes durable at their content address, and only then commit `LinkBlob`
//! through Raft. The client gets 201 after the commit.

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use berth_proto::{Command, Digest, RepoName};
use rand::RngCore;

use super::{content_length, content_range, digest, empty, finish, query, repo_name, request_body, ApiResult};
use crate::backend::BlobError;
use crate::error::{ApiError, Code};
use crate::upload_state::UploadState;
use crate::auth::Grant;
use crate::Api;

/// A fresh upload id: 128 random bits, hex (the form every store accepts).
pub fn new_upload_id() -> String {
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

/// How often, and how far apart, a commit that finds its content being deleted by garbage
/// collection tries again before it answers 503.
pub(crate) const DELETING_TRIES: u32 = 50;
pub(crate) const DELETING_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// What a `LinkBlob` did, as the API answers it: a new repository past its namespace's limit is
/// refused (the bytes stay for a later try, or for garbage collection), and so is content that
/// garbage collection is deleting (the same request, sent again, goes through).
fn linked(repo: &RepoName, digest: &Digest, outcome: berth_proto::Outcome) -> Result<(), ApiError> {
    match outcome {
        berth_proto::Outcome::LimitReached { limit, max } => Err(ApiError::limit_reached(repo, limit, max)),
        berth_proto::Outcome::Deleting => Err(ApiError::being_collected(digest)),
        _ => Ok(()),
    }
}

/// Makes staged bytes a blob: verified and durable at the content address first, then linked
/// through Raft, and only then is the staging area removed (a failed commit can be retried).
///
/// The bytes are looked for once more after the link commits. Finding them at the address
/// before committing proves nothing: garbage collection may have deleted that copy (unlinked
/// everywhere, marked, deleted, unmarked) between the look and the commit. After the commit
/// nothing can delete them, so if they are missing now, the staged copy puts them back before
/// the client hears 201.
async fn commit(api: &Api, repo: RepoName, id: &str, digest: &Digest) -> ApiResult {
    let mut tries = 0;
    loop {
        let size = match api.blobs.finish_upload(id, digest).await {
            Ok(size) => size,
            Err(e @ BlobError::DigestMismatch { .. }) => {
                // The client must start over: these bytes can never become this digest.
                let _ = api.blobs.remove_upload(id).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let outcome = api.meta.apply(Command::LinkBlob { repo: repo.clone(), digest: digest.clone(), size }).await?;
        // Garbage collection is deleting this content (for a moment): once it is done, the
        // bytes are placed again and linked, so the client never sees it, and no copy placed
        // during the deletion is left behind unlinked.
        if outcome == berth_proto::Outcome::Deleting && tries < DELETING_TRIES {
            tries += 1;
            tracing::info!(%digest, "a blob upload waits for garbage collection to finish deleting its content");
            tokio::time::sleep(DELETING_WAIT).await;
            continue;
        }
        if outcome != berth_proto::Outcome::Done {
            // Refused: the bytes are in the store and nothing will name them.
            super::offer_to_gc(api, digest).await;
        }
        linked(&repo, digest, outcome)?;
        break;
    }
    if api.blobs.stat(digest).await?.is_none() {
        tracing::info!(%digest, "a blob's bytes went to garbage collection while its upload committed: put back");
        api.blobs.finish_upload(id, digest).await?;
    }
    if let Err(e) = api.blobs.remove_upload(id).await {
        tracing::warn!(upload = id, "staging not removed after commit (purging will): {e}");
    }
    Ok(created(&repo, digest))
}

/// `POST /v2/<name>/blobs/uploads/`.
/// A mount needs pull on its source; without it the mount quietly becomes an ordinary upload,
/// as in Distribution, so nothing tells the caller whether the blob exists there.
pub async fn start(api: &Api, name: &str, uri: &Uri, body: Body, grant: &Grant) -> ApiResult {
    let repo = repo_name(name)?;
    let q = query(uri);
    if let Some(mount) = q.get("mount") {
        let mount = digest(mount)?;
        let from = q.get("from").filter(|f| grant.allows("repository", f, "pull"));
        if let Some(from) = from.and_then(|f| RepoName::parse(f).ok()) {
            if let Some(size) = api.meta.blob_size(&from, &mount).await? {
                if api.blobs.stat(&mount).await?.is_some() {
                    linked(&repo, &mount, api.meta.apply(Command::LinkBlob { repo: repo.clone(), digest: mount.clone(), size }).await?)?;
                    // As in `commit`: only a look after the link commits proves the bytes stay.
                    // A mount has no copy of its own to put back, so it is undone and the
                    // client uploads instead.
                    if api.blobs.stat(&mount).await?.is_some() {
                        return Ok(created(&repo, &mount));
                    }
                    tracing::info!(digest = %mount, "a mounted blob's bytes went to garbage collection: mount undone");
                    api.meta.apply(Command::UnlinkBlob { repo: repo.clone(), digest: mount.clone() }).await?;
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
    api.blobs.create_upload(&id).await?;
    if let Err(e) = api.blobs.write_upload(&id, 0, request_body(body, api.config.body_rate)).await {
        let _ = api.blobs.remove_upload(&id).await;
        return Err(e.into());
    }
    commit(api, repo, &id, &expected).await
}

/// Verifies `_state` and that it names this repository and upload; returns it with its
/// offset replaced by the upload's real, durable one, and the offset the URL was issued at.
async fn session(api: &Api, repo: &RepoName, id: &str, uri: &Uri) -> Result<(UploadState, u64, std::sync::Arc<Vec<u8>>), ApiError> {
    let unknown = || ApiError::new(Code::BlobUploadUnknown, "blob upload unknown to registry").detail(serde_json::json!({"id": id}));
    let secret = api.meta.http_secret().await?;
    let tok = query(uri).remove("_state").ok_or_else(unknown)?;
    let mut state = UploadState::verify(&tok, &secret).ok_or_else(unknown)?;
    if state.repo != repo.as_str() || state.id != id {
        return Err(unknown());
    }
    let issued_at = state.offset;
    state.offset = api.blobs.upload_offset(id).await?;
    Ok((state, issued_at, secret))
}

/// Streams a chunk into the upload. It must start where the upload is: at `Content-Range`'s
/// first byte when given, else where the URL it was sent to said the upload was.
async fn write_chunk(api: &Api, state: &mut UploadState, issued_at: u64, secret: &[u8], headers: &HeaderMap, body: Body) -> Result<(), ApiError> {
    let range = content_range(headers)?;
    let start = range.map_or(issued_at, |(first, _)| first);
    if start != state.offset {
        return Err(ApiError::from(BlobError::OffsetMismatch { at: state.offset }).header(header::LOCATION, location(state, secret)));
    }
    if let Some((first, last)) = range {
        if content_length(headers).is_some_and(|len| len != last - first + 1) {
            return Err(ApiError::new(Code::SizeInvalid, "Content-Range does not match Content-Length")
                .status(StatusCode::RANGE_NOT_SATISFIABLE));
        }
    }
    let end = match api.blobs.write_upload(&state.id, start, request_body(body, api.config.body_rate)).await {
        Ok(end) => end,
        Err(e @ BlobError::OffsetMismatch { .. }) => return Err(ApiError::from(e).header(header::LOCATION, location(state, secret))),
        Err(e) => return Err(e.into()),
    };
    state.offset = end;
    if let Some((first, last)) = range {
        if end - first != last - first + 1 {
            return Err(ApiError::new(Code::SizeInvalid, "body length does not match Content-Range"));
        }
    }
    Ok(())
}

/// `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>`.
pub async fn handle(api: &Api, method: &Method, name: &str, id: &str, uri: &Uri, headers: &HeaderMap, body: Body) -> ApiResult {
    let repo = repo_name(name)?;
    let (mut state, issued_at, secret) = session(api, &repo, id, uri).await?;
    match *method {
        Method::GET => Ok(accepted(&state, &secret, StatusCode::NO_CONTENT)),
        Method::DELETE => {
            api.blobs.remove_upload(id).await?;
            Ok(finish(empty(StatusCode::NO_CONTENT), Body::empty()))
        }
        Method::PATCH => {
            write_chunk(api, &mut state, issued_at, &secret, headers, body).await?;
            Ok(accepted(&state, &secret, StatusCode::ACCEPTED))
        }
        Method::PUT => {
            let expected = match query(uri).get("digest") {
                Some(d) => digest(d)?,
                None => return Err(ApiError::new(Code::DigestInvalid, "the digest query parameter is required")),
            };
            if !body.is_end_stream() && content_length(headers) != Some(0) {
                write_chunk(api, &mut state, issued_at, &secret, headers, body).await?;
            }
            commit(api, repo, id, &expected).await
        }
        _ => Err(ApiError::new(Code::Unsupported, "method not allowed")),
    }
}
