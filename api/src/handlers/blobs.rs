//! Blob reads and deletes: `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use berth_proto::Command;

use super::{digest, empty, finish, repo_name, ApiResult};
use crate::error::{ApiError, Code};
use crate::Api;

/// What a `Range` header asks of a body of `size` bytes, read as RFC 9110 says.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// The whole body: no header, a unit other than bytes, a malformed or backwards range, or
    /// several ranges (which a server may answer in full).
    Whole,
    /// One satisfiable range, first and last byte inclusive.
    Part(u64, u64),
    /// A well-formed range that starts past the end.
    Unsatisfiable,
}

/// Reads a `Range` header (RFC 9110 section 14.2).
pub fn byte_range(headers: &HeaderMap, size: u64) -> RangeAsk {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return RangeAsk::Whole };
    let Some((unit, set)) = spec.trim().split_once('=') else { return RangeAsk::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAsk::Whole;
    }
    let specs: Vec<&str> = set.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let [one] = specs.as_slice() else { return RangeAsk::Whole };
    let Some((a, b)) = one.split_once('-') else { return RangeAsk::Whole };
    let num = |s: &str| -> Option<u64> { (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok()).flatten() };
    match (a.trim(), b.trim()) {
        ("", n) => match num(n) {
            None => RangeAsk::Whole,
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if size == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(size.saturating_sub(n), size - 1),
        },
        (a, b) => {
            let Some(first) = num(a) else { return RangeAsk::Whole };
            let last = match b {
                "" => u64::MAX,
                b => match num(b) {
                    Some(l) if l >= first => l,
                    _ => return RangeAsk::Whole,
                },
            };
            if first >= size {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(first, last.min(size - 1))
            }
        }
    }
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
            berth_proto::Outcome::InUse { manifests } => Err(ApiError::new(
                Code::Denied,
                "the blob is referenced by manifests of this repository; delete those manifests first",
            )
            .status(StatusCode::CONFLICT)
            .detail(serde_json::json!({"manifests": manifests.iter().map(|d| d.to_string()).collect::<Vec<_>>()}))),
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
        RangeAsk::Whole => None,
        RangeAsk::Part(a, b) => Some((a, b)),
        RangeAsk::Unsatisfiable => {
            return Err(ApiError::new(Code::RangeInvalid, format!("requested range not satisfiable: the blob has {size} bytes"))
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
    fn ranges_follow_rfc_9110() {
        use RangeAsk::*;
        assert_eq!(byte_range(&HeaderMap::new(), 10), Whole);
        assert_eq!(byte_range(&h("bytes=0-3"), 10), Part(0, 3));
        assert_eq!(byte_range(&h("BYTES = 0-3"), 10), Part(0, 3));
        assert_eq!(byte_range(&h("bytes=5-"), 10), Part(5, 9));
        assert_eq!(byte_range(&h("bytes=-3"), 10), Part(7, 9));
        assert_eq!(byte_range(&h("bytes=-30"), 10), Part(0, 9));
        assert_eq!(byte_range(&h("bytes=8-100"), 10), Part(8, 9));
        assert_eq!(byte_range(&h("bytes=10-11"), 10), Unsatisfiable);
        assert_eq!(byte_range(&h("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(byte_range(&h("bytes=0-"), 0), Unsatisfiable);
        // Ignored: backwards, malformed, other units, several ranges.
        for ignored in ["bytes=4-2", "bytes=a-b", "bytes=1", "bytes=--1", "bytes=+1-2", "items=0-1", "0-1", "bytes=0-1,3-4", "bytes="] {
            assert_eq!(byte_range(&h(ignored), 10), Whole, "{ignored}");
        }
    }

    proptest::proptest! {
        /// Any header gives a range inside the body, the whole body, or unsatisfiable; never
        /// a panic or a range past the end.
        #[test]
        fn any_range_header_is_safe(v in "[ -~]{0,40}", size in 0u64..1000) {
            if let Ok(hv) = v.parse() {
                let mut m = HeaderMap::new();
                m.insert(header::RANGE, hv);
                if let RangeAsk::Part(a, b) = byte_range(&m, size) {
                    proptest::prop_assert!(a <= b && b < size);
                }
            }
        }
    }
}
