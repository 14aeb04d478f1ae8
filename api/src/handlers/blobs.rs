//! Blob reads and deletes: `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use berth_proto::Command;

use super::{digest, empty, finish, repo_name, ApiResult};
use crate::error::{ApiError, Code};
use crate::Api;

/// Parses a single `Range: bytes=...` into an inclusive range within `size`.
/// `Ok(None)`: no range asked; `Err(())`: unsatisfiable.
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE) else { return Ok(None) };
    let s = v.to_str().map_err(|_| ())?.trim();
    let spec = s.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (first, last) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 || size == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().map_err(|_| ())?, size.saturating_sub(1)),
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().map_err(|_| ())?, b.parse().map_err(|_| ())?);
            (a, b.min(size.saturating_sub(1)))
        }
    };
    if first >= size || last < first {
        return Err(());
    }
    Ok(Some((first, last)))
}

/// `GET`/`HEAD`/`DELETE` a blob.
pub async fn handle(api: &Api, method: &Method, name: &str, dgst: &str, headers: &HeaderMap) -> ApiResult {
    let repo = repo_name(name)?;
    let digest = digest(dgst)?;
    if *method == Method::DELETE {
        if !api.config.delete_enabled {
            return Err(ApiError::new(Code::Unsupported, "deletes are disabled (storage.delete.enabled is false)"));
        }
        return match api.meta.apply(Command::UnlinkBlob { repo, digest: digest.clone() }).await? {
            berth_proto::Outcome::NotFound => Err(ApiError::new(Code::BlobUnknown, "blob unknown to repository")),
            _ => Ok(finish(
                empty(StatusCode::ACCEPTED).header("Docker-Content-Digest", digest.to_string()),
                Body::empty(),
            )),
        };
    }
    let unknown = || ApiError::new(Code::BlobUnknown, "blob unknown to repository").detail(serde_json::json!({"digest": dgst}));
    let size = api.meta.blob_size(&repo, &digest).await?.ok_or_else(unknown)?;
    let base = axum::http::Response::builder()
        .header("Docker-Content-Digest", digest.to_string())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::CACHE_CONTROL, "max-age=31536000");
    let range = match byte_range(headers, size) {
        Ok(r) => r,
        Err(()) => {
            return Err(ApiError::new(Code::BlobUnknown, "requested range not satisfiable")
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}")))
        }
    };
    if *method == Method::HEAD {
        if api.blobs.stat(&digest).await?.is_none() {
            return Err(unknown());
        }
        return Ok(finish(base.status(StatusCode::OK).header(header::CONTENT_LENGTH, size), Body::empty()));
    }
    let stream = api.blobs.read(&digest, range).await.map_err(|e| match e {
        crate::BlobError::NotFound => unknown(),
        e => e.into(),
    })?;
    let resp = match range {
        Some((a, b)) => base
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}"))
            .header(header::CONTENT_LENGTH, b - a + 1),
        None => base.status(StatusCode::OK).header(header::CONTENT_LENGTH, size),
    };
    Ok(finish(resp, Body::from_stream(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::RANGE, v.parse().unwrap());
        m
    }

    #[test]
    fn ranges() {
        assert_eq!(byte_range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(byte_range(&h("bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(byte_range(&h("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(byte_range(&h("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(byte_range(&h("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(byte_range(&h("bytes=10-11"), 10), Err(()));
        assert_eq!(byte_range(&h("bytes=4-2"), 10), Err(()));
        assert_eq!(byte_range(&h("items=0-1"), 10), Err(()));
    }
}
