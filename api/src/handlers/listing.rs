//! Listings: tags, the catalog and referrers.

use axum::body::Body;
use axum::http::{header, StatusCode, Uri};
use berth_proto::manifest::OCI_INDEX;
use serde_json::json;

use super::{digest, finish, query, repo_name, ApiResult};
use crate::error::{ApiError, Code};
use crate::Api;

/// Default page size when the client gives no `n` (Distribution's `catalog.maxentries`).
pub const DEFAULT_PAGE: usize = 1000;

/// Reads `n` and `last`. `n` absent means "everything" for tags and `DEFAULT_PAGE` for the catalog.
fn page(uri: &Uri, default: usize) -> Result<(usize, Option<String>), ApiError> {
    let q = query(uri);
    let n = match q.get("n") {
        None => default,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::new(Code::PaginationNumberInvalid, format!("invalid page size n={v:?}")))?,
    };
    Ok((n, q.get("last").cloned()))
}

/// Given up to `n + 1` items, keeps `n` and returns the `Link` to the next page if there is one.
fn next_page(items: &mut Vec<String>, n: usize, path: &str) -> Option<String> {
    if items.len() <= n {
        return None;
    }
    items.truncate(n);
    let last = items.last().cloned().unwrap_or_default();
    Some(format!("<{path}?last={last}&n={n}>; rel=\"next\""))
}

fn json_response(value: serde_json::Value, link: Option<String>, content_type: &str) -> axum::response::Response {
    let body = serde_json::to_vec(&value).expect("json");
    let mut b = axum::http::Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(l) = link {
        b = b.header(header::LINK, l);
    }
    finish(b, Body::from(body))
}

/// `GET /v2/<name>/tags/list`.
pub async fn tags(api: &Api, name: &str, uri: &Uri) -> ApiResult {
    let repo = repo_name(name)?;
    let (n, last) = page(uri, usize::MAX)?;
    let mut tags = api
        .meta
        .tags(&repo, last.as_deref(), n.saturating_add(1))
        .await?
        .ok_or_else(|| ApiError::new(Code::NameUnknown, "repository name not known to registry").detail(json!({"name": name})))?;
    let link = next_page(&mut tags, n, &format!("/v2/{repo}/tags/list"));
    Ok(json_response(json!({"name": repo.as_str(), "tags": tags}), link, "application/json"))
}

/// `GET /v2/_catalog`: every repository. Only callers allowed everything reach it: open
/// mode, htpasswd users, and tokens holding `registry:catalog:*` (which Berth grants to
/// administrators alone, as GitLab does).
pub async fn catalog(api: &Api, uri: &Uri) -> ApiResult {
    let (n, last) = page(uri, DEFAULT_PAGE)?;
    let mut repos = api.meta.catalog(last.as_deref(), n.saturating_add(1)).await?;
    let link = next_page(&mut repos, n, "/v2/_catalog");
    Ok(json_response(json!({"repositories": repos}), link, "application/json"))
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`.
pub async fn referrers(api: &Api, name: &str, dgst: &str, uri: &Uri) -> ApiResult {
    let repo = repo_name(name)?;
    let subject = digest(dgst)?;
    let filter = query(uri).remove("artifactType");
    let mut manifests = Vec::new();
    for (d, m) in api.meta.referrers(&repo, &subject).await? {
        if filter.as_ref().is_some_and(|f| m.artifact_type.as_ref() != Some(f)) {
            continue;
        }
        let mut desc = json!({"mediaType": m.media_type, "digest": d.to_string(), "size": m.body.len()});
        if let Some(a) = &m.artifact_type {
            desc["artifactType"] = json!(a);
        }
        if !m.annotations.is_empty() {
            desc["annotations"] = json!(m.annotations);
        }
        manifests.push(desc);
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let mut resp = json_response(index, None, OCI_INDEX);
    if filter.is_some() {
        resp.headers_mut().insert("OCI-Filters-Applied", header::HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
