//! Manifests: `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use berth_proto::manifest::{parse_manifest, ManifestError};
use berth_proto::{Command, Digest, ManifestRecord, Outcome, Reference};

use super::{empty, finish, repo_name, ApiResult};
use crate::error::{ApiError, Code};
use crate::MetaError;
use crate::Api;

fn reference(s: &str) -> Result<Reference, ApiError> {
    Reference::parse(s).map_err(ApiError::from)
}

/// Dispatches by method.
pub async fn handle(api: &Api, method: &Method, name: &str, reference_str: &str, headers: &HeaderMap, body: Body) -> ApiResult {
    let repo = repo_name(name)?;
    let reference = match reference(reference_str) {
        Ok(r) => r,
        // A reference that cannot exist names no manifest (Distribution answers so too);
        // only storing under it is a client error.
        Err(e) if *method == Method::PUT => return Err(e),
        Err(_) => {
            return Err(ApiError::new(Code::ManifestUnknown, "manifest unknown")
                .detail(serde_json::json!({"name": name, "reference": reference_str})))
        }
    };
    match *method {
        Method::GET | Method::HEAD => {
            let (digest, m) = api.meta.manifest(&repo, &reference).await?.ok_or_else(|| {
                ApiError::new(Code::ManifestUnknown, "manifest unknown").detail(serde_json::json!({"name": name, "reference": reference_str}))
            })?;
            let (digest, m) = negotiate(api, &repo, headers, digest, m).await?;
            let b = axum::http::Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, &m.media_type)
                .header(header::CONTENT_LENGTH, m.body.len())
                .header("Docker-Content-Digest", digest.to_string())
                .header(header::ETAG, format!("\"{digest}\""));
            let body = match *method {
                Method::HEAD => Body::empty(),
                // Held here alone (a body just read from the store), it is moved, not copied.
                _ => Body::from(std::sync::Arc::try_unwrap(m).map_or_else(|shared| shared.body.clone(), |m| m.body)),
            };
            Ok(finish(b, body))
        }
        Method::PUT => put(api, repo, reference, headers, body).await,
        Method::DELETE => {
            if !api.config.delete_enabled {
                return Err(ApiError::new(Code::Unsupported, "deletes are disabled (storage.delete.enabled is false)"));
            }
            let cmd = match reference {
                Reference::Digest(digest) => Command::DeleteManifest { repo, digest },
                Reference::Tag(tag) => Command::DeleteTag { repo, tag },
            };
            match api.meta.apply(cmd).await? {
                Outcome::NotFound => Err(ApiError::new(Code::ManifestUnknown, "manifest unknown")),
                _ => Ok(finish(empty(StatusCode::ACCEPTED), Body::empty())),
            }
        }
        _ => Err(ApiError::new(Code::Unsupported, "method not allowed")),
    }
}

/// Media types listed in `Accept` (parameters dropped); empty means anything.
fn accepted(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Content negotiation, as Docker Distribution does it: the stored manifest when the client
/// accepts its type (or gives no preference); for an index or manifest list the client
/// cannot read, its linux/amd64 image; otherwise 404, never a body the client cannot parse.
async fn negotiate(
    api: &Api,
    repo: &berth_proto::RepoName,
    headers: &HeaderMap,
    digest: Digest,
    m: std::sync::Arc<ManifestRecord>,
) -> Result<(Digest, std::sync::Arc<ManifestRecord>), ApiError> {
    let accept = accepted(headers);
    if accept.is_empty() || accept.iter().any(|a| a == "*/*" || *a == m.media_type) {
        return Ok((digest, m));
    }
    let not_acceptable = || {
        ApiError::new(Code::ManifestUnknown, format!("manifest is {} but the Accept header does not allow it", m.media_type))
    };
    if !m.manifests.is_empty() {
        let index: serde_json::Value = serde_json::from_slice(&m.body).map_err(|_| not_acceptable())?;
        let children = index["manifests"].as_array().cloned().unwrap_or_default();
        let default = children.iter().find(|c| {
            c["platform"]["os"] == "linux"
                && c["platform"]["architecture"] == "amd64"
                && c["mediaType"].as_str().is_some_and(|t| accept.iter().any(|a| a == t))
        });
        if let Some(d) = default.and_then(|c| c["digest"].as_str()).and_then(|d| Digest::parse(d).ok()) {
            if let Some(found) = api.meta.manifest(repo, &Reference::Digest(d)).await? {
                return Ok(found);
            }
        }
    }
    Err(not_acceptable())
}

/// The request body, read no further than `max` bytes, into one buffer of the announced
/// length: a large manifest costs one allocation of its size, not a doubling series and a copy.
async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<bytes::Bytes, ApiError> {
    use futures::StreamExt;
    let too_large = || {
        ApiError::new(Code::SizeInvalid, format!("manifest is larger than {max} bytes (berth.limits.maxmanifestbytes)"))
            .status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    // Read up to the limit even when the announced length is over it, as Distribution does:
    // a client still writing its body then reads the 413 instead of a broken pipe.
    let announced = super::content_length(headers).unwrap_or(0).min(max as u64);
    let mut buf = bytes::BytesMut::with_capacity(announced as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(Code::ManifestInvalid, format!("request body: {e}")))?;
        if buf.len() + chunk.len() > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn put(api: &Api, repo: berth_proto::RepoName, reference: Reference, headers: &HeaderMap, body: Body) -> ApiResult {
    let bytes = read_body(body, headers, api.config.max_manifest_bytes).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let parsed = parse_manifest(content_type, &bytes).map_err(|e| match e {
        ManifestError::Invalid(m) => ApiError::new(Code::ManifestInvalid, m),
        ManifestError::Unsupported(m) => ApiError::new(Code::ManifestInvalid, m).detail(serde_json::json!({"mediaType": content_type})),
    })?;
    let (digest, tag) = match reference {
        Reference::Digest(d) => {
            let actual = d.same_algorithm_of(&bytes);
            if actual != d {
                return Err(ApiError::new(Code::DigestInvalid, "manifest digest does not match the reference")
                    .detail(serde_json::json!({"expected": d.to_string(), "actual": actual.to_string()})));
            }
            (d, None)
        }
        Reference::Tag(t) => (Digest::sha256_of(&bytes), Some(t)),
    };
    let subject = parsed.subject.clone();
    // The body is content: durable and verified in the blob store before the entry that
    // names it commits, which carries only what the indexes need.
    api.blobs.put_content(&digest, bytes.clone()).await?;
    let record = ManifestRecord {
        media_type: parsed.media_type,
        body: Vec::new(),
        blobs: parsed.blobs,
        manifests: parsed.manifests,
        subject: parsed.subject,
        artifact_type: parsed.artifact_type,
        annotations: parsed.annotations,
        created_ms: berth_proto::now_ms(),
    };
    let stored = Command::PutStoredManifest { repo: repo.clone(), digest: digest.clone(), manifest: record.clone(), tag: tag.clone() };
    let mut tries = 0;
    let outcome = loop {
        let outcome = match api.meta.apply(stored.clone()).await {
            // A rolling upgrade is under way: the entry carries the body, as older builds expect.
            Err(MetaError::Outdated(_)) => {
                let inline = ManifestRecord { body: bytes.to_vec(), ..record };
                break api.meta.apply(Command::PutManifest { repo: repo.clone(), digest: digest.clone(), manifest: inline, tag }).await?;
            }
            other => other?,
        };
        // Garbage collection is deleting this body (for a moment): once it is done, the body
        // is stored again and committed, as for a blob (`uploads::commit`).
        if outcome == Outcome::Deleting && tries < super::uploads::DELETING_TRIES {
            tries += 1;
            tracing::info!(%digest, "a manifest push waits for garbage collection to finish deleting its body");
            tokio::time::sleep(super::uploads::DELETING_WAIT).await;
            api.blobs.put_content(&digest, bytes.clone()).await?;
            continue;
        }
        break outcome;
    };
    if matches!(outcome, Outcome::LimitReached { .. } | Outcome::MissingReferences { .. } | Outcome::Deleting) {
        // The body is in the store and nothing will name it.
        super::offer_to_gc(api, &digest).await;
    }
    match outcome {
        Outcome::LimitReached { limit, max } => Err(ApiError::limit_reached(&repo, limit, max)),
        Outcome::Deleting => Err(ApiError::being_collected(&digest)),
        Outcome::Done if api.blobs.stat(&digest).await?.is_none() => {
            // Garbage collection deleted the copy `put_content` found, between that look and
            // this commit; nothing can delete it now, so the body goes back before the 201.
            tracing::info!(%digest, "a manifest body went to garbage collection while its push committed: put back");
            api.blobs.put_content(&digest, bytes).await?;
            Ok(manifest_created(&repo, &digest, subject))
        }
        Outcome::MissingReferences { blobs, manifests } => {
            let missing: Vec<String> = blobs.iter().chain(manifests.iter()).map(|d| d.to_string()).collect();
            Err(ApiError::new(Code::ManifestBlobUnknown, "manifest references content unknown to the repository")
                .detail(serde_json::json!({"missing": missing})))
        }
        _ => Ok(manifest_created(&repo, &digest, subject)),
    }
}

fn manifest_created(repo: &berth_proto::RepoName, digest: &Digest, subject: Option<Digest>) -> axum::response::Response {
    let mut b = empty(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{repo}/manifests/{digest}"))
        .header("Docker-Content-Digest", digest.to_string());
    if let Some(s) = subject {
        b = b.header("OCI-Subject", s.to_string());
    }
    finish(b, Body::empty())
}
