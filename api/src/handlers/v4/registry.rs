//! GitLab's container registry API under `/api/v4`: a project's repositories, their tags,
//! deleting a tag, a repository, or tags in bulk by GitLab's cleanup rules. Who may do what
//! is the registry's own rule (`auth::policy`), as GitLab maps its roles: reading needs
//! `pull` on the repository (Reporter), deleting one tag needs `push` (Developer, GitLab's
//! `destroy_container_image`), deleting a repository or tags in bulk needs `delete`
//! (Maintainer, GitLab's `admin_container_image`).
//!
//! A repository's id is derived from its name (53 bits of its SHA-256, so JavaScript clients
//! read it exactly): it is stable, needs no state, and names the same repository on every
//! node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use berth_proto::cleanup::CleanupRun;
use berth_proto::identity::Project;
use berth_proto::{Command, Outcome, RepoName, Tag};
use serde_json::{json, Value};

use super::namespace::Namespace;
use super::{body, paged, Session, V4Error, V4Result};
use crate::cleanup::{clean_repository, Rules};
use crate::inventory::{all_tags, details, repositories_of, usage};
use crate::Api;

/// The id GitLab's API gives a repository.
pub fn repository_id(name: &str) -> u64 {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(name.as_bytes());
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) >> 11
}

/// The registry's host as clients name it (for `location`).
fn host(headers: &HeaderMap) -> String {
    headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost").to_string()
}

/// The registry actions the caller may take on `repo`.
fn may(s: &Session, repo: &str, action: &str) -> bool {
    crate::auth::policy::allowed(s.id(), &s.who, repo, berth_proto::now_ms()).contains(&action)
}

fn tag_json(host: &str, repo: &str, tag: &str) -> Value {
    json!({"name": tag, "path": format!("{repo}:{tag}"), "location": format!("{host}/{repo}:{tag}")})
}

/// The project's cleanup-policy run in progress, if any (read once per request).
async fn cleanup_run(api: &Api, project: &Project) -> Result<Option<CleanupRun>, V4Error> {
    Ok(api.meta.cleanup_policies().await?.get(&project.id).and_then(|s| s.run.clone()))
}

/// When that run started, while it has not finished `name`.
fn cleanup_started(run: Option<&CleanupRun>, name: &str) -> Value {
    match run {
        Some(r) if r.done_through.as_deref().is_none_or(|d| d < name) => json!(super::time(r.started_ms)),
        _ => Value::Null,
    }
}

async fn repository_json(api: &Api, s: &Session, host: &str, project: &Project, run: Option<&CleanupRun>, name: &str, uri: &Uri) -> Result<Value, V4Error> {
    let q = crate::handlers::query(uri);
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let mut v = json!({
        "id": repository_id(name),
        "name": name.strip_prefix(&project.path).unwrap_or(name).trim_start_matches('/'),
        "path": name,
        "project_id": project.id,
        "location": format!("{host}/{name}"),
        "created_at": Value::Null,
        "cleanup_policy_started_at": cleanup_started(run, name),
        "status": Value::Null,
    });
    if flag("tags") || flag("tags_count") {
        let tags = all_tags(api, &RepoName::parse(name).map_err(|_| V4Error::not_found("Repository"))?).await?;
        if flag("tags_count") {
            v["tags_count"] = json!(tags.len());
        }
        if flag("tags") {
            v["tags"] = tags.iter().map(|t| tag_json(host, name, t)).collect();
        }
    }
    if flag("size") {
        v["size"] = json!(usage(api, &[name.to_string()]).await?);
    }
    if s.admin() {
        v["delete_api_path"] = json!(format!("/api/v4/projects/{}/registry/repositories/{}", project.id, repository_id(name)));
    }
    Ok(v)
}

/// The project and its repository with id `rid`, if the caller may `action` it.
async fn find(api: &Api, s: &Session, project: &str, rid: &str, action: &str) -> Result<(Project, RepoName), V4Error> {
    let project = Project::find(s, project)?;
    let rid: u64 = rid.parse().map_err(|_| V4Error::not_found("Repository"))?;
    let name = repositories_of(api, &project.path).await?.into_iter().find(|n| repository_id(n) == rid).ok_or_else(|| V4Error::not_found("Repository"))?;
    if !may(s, &name, "pull") {
        return Err(V4Error::not_found("Repository"));
    }
    if !may(s, &name, action) {
        return Err(V4Error::forbidden());
    }
    Ok((project, RepoName::parse(&name).map_err(|_| V4Error::not_found("Repository"))?))
}

/// `GET /projects/:id/registry/repositories` (`tags`, `tags_count`).
pub async fn list(State(api): State<Arc<Api>>, s: Session, Path(id): Path<String>, headers: HeaderMap, uri: Uri) -> V4Result {
    let project = Project::find(&s, &id)?;
    let host = host(&headers);
    let run = cleanup_run(&api, &project).await?;
    let mut items = Vec::new();
    for name in repositories_of(&api, &project.path).await? {
        if may(&s, &name, "pull") {
            items.push(repository_json(&api, &s, &host, &project, run.as_ref(), &name, &uri).await?);
        }
    }
    Ok(paged(&uri, items))
}

/// `GET /registry/repositories/:id` (`tags`, `tags_count`, `size`).
pub async fn one(State(api): State<Arc<Api>>, s: Session, Path(rid): Path<String>, headers: HeaderMap, uri: Uri) -> V4Result {
    let rid: u64 = rid.parse().map_err(|_| V4Error::not_found("Repository"))?;
    let mut last: Option<String> = None;
    loop {
        let page = api.meta.catalog(last.as_deref(), 1000).await?;
        if let Some(name) = page.iter().find(|n| repository_id(n) == rid) {
            let project = s.id().project_of(name).cloned().filter(|_| may(&s, name, "pull")).ok_or_else(|| V4Error::not_found("Repository"))?;
            let run = cleanup_run(&api, &project).await?;
            return Ok(axum::Json(repository_json(&api, &s, &host(&headers), &project, run.as_ref(), name, &uri).await?).into_response());
        }
        if page.len() < 1000 {
            return Err(V4Error::not_found("Repository"));
        }
        last = page.last().cloned();
    }
}

/// `DELETE /projects/:id/registry/repositories/:rid`: 202, then every manifest and blob link
/// of the repository goes in the background; garbage collection frees the bytes.
pub async fn delete(State(api): State<Arc<Api>>, s: Session, Path((id, rid)): Path<(String, String)>) -> V4Result {
    let (_, repo) = find(&api, &s, &id, &rid, "delete").await?;
    tokio::spawn(async move {
        if let Err(e) = delete_repository(&api, &repo).await {
            tracing::warn!(%repo, "deleting the repository stopped: {}", e.1);
        }
    });
    Ok((StatusCode::ACCEPTED, axum::Json(json!(null))).into_response())
}

async fn delete_repository(api: &Api, repo: &RepoName) -> Result<(), V4Error> {
    let (manifests, blobs) = api.meta.contents(repo).await?;
    for digest in manifests {
        api.meta.apply(Command::DeleteManifest { repo: repo.clone(), digest }).await?;
    }
    for digest in blobs {
        api.meta.apply(Command::UnlinkBlob { repo: repo.clone(), digest }).await?;
    }
    tracing::info!(%repo, "repository deleted");
    Ok(())
}

/// `GET /projects/:id/registry/repositories/:rid/tags`.
pub async fn tags(State(api): State<Arc<Api>>, s: Session, Path((id, rid)): Path<(String, String)>, headers: HeaderMap, uri: Uri) -> V4Result {
    let (_, repo) = find(&api, &s, &id, &rid, "pull").await?;
    let host = host(&headers);
    let items = all_tags(&api, &repo).await?.iter().map(|t| tag_json(&host, repo.as_str(), t)).collect();
    Ok(paged(&uri, items))
}

/// `GET /projects/:id/registry/repositories/:rid/tags/:tag`.
pub async fn tag(State(api): State<Arc<Api>>, s: Session, Path((id, rid, tag)): Path<(String, String, String)>, headers: HeaderMap) -> V4Result {
    let (_, repo) = find(&api, &s, &id, &rid, "pull").await?;
    let d = details(&api, &repo, &tag).await?.ok_or_else(|| V4Error::not_found("Tag"))?;
    let mut v = tag_json(&host(&headers), repo.as_str(), &tag);
    v["revision"] = json!(d.revision);
    v["short_revision"] = json!(d.revision.as_ref().map(|r| r[..9].to_string()));
    v["digest"] = json!(d.digest.to_string());
    v["created_at"] = json!(d.created_at);
    v["total_size"] = json!(d.total_size);
    Ok(axum::Json(v).into_response())
}

/// `DELETE /projects/:id/registry/repositories/:rid/tags/:tag` (Developer and up).
pub async fn delete_tag(State(api): State<Arc<Api>>, s: Session, Path((id, rid, tag)): Path<(String, String, String)>) -> V4Result {
    let (_, repo) = find(&api, &s, &id, &rid, "push").await?;
    let t = Tag::parse(&tag).map_err(|_| V4Error::not_found("Tag"))?;
    match api.meta.apply(Command::DeleteTag { repo, tag: t }).await? {
        Outcome::Done => Ok((StatusCode::OK, axum::Json(json!(null))).into_response()),
        Outcome::NotFound => Err(V4Error::not_found("Tag")),
        other => Err(V4Error::bad(format!("400 Bad request - {other:?}"))),
    }
}

/// When each repository last had a bulk delete (on this node): GitLab allows one an hour.
fn last_bulk() -> &'static Mutex<HashMap<String, Instant>> {
    static LAST: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    LAST.get_or_init(Mutex::default)
}

/// `DELETE /projects/:id/registry/repositories/:rid/tags`: 202, then the tags the rules pick
/// are deleted in the background.
pub async fn bulk_delete(State(api): State<Arc<Api>>, s: Session, Path((id, rid)): Path<(String, String)>, uri: Uri, b: Body) -> V4Result {
    let (_, repo) = find(&api, &s, &id, &rid, "delete").await?;
    let mut params = crate::handlers::query(&uri);
    if let Value::Object(m) = body(b).await? {
        for (k, v) in m {
            params.insert(k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
        }
    }
    let rules = Rules::from_params(&params).map_err(|e| V4Error::bad(format!("400 Bad request - {e}")))?;
    {
        let mut last = last_bulk().lock().unwrap();
        last.retain(|_, at| at.elapsed() < Duration::from_secs(3600));
        if last.contains_key(repo.as_str()) {
            return Err(V4Error::bad("This request has already been made. You can run this at most once an hour for a given container repository"));
        }
        last.insert(repo.to_string(), Instant::now());
    }
    tokio::spawn(async move {
        match clean_repository(&api, &repo, &rules).await {
            Ok(n) => tracing::info!(%repo, deleted = n, "bulk tag delete done"),
            Err(e) => tracing::warn!(%repo, "bulk tag delete stopped: {e}"),
        }
    });
    Ok((StatusCode::ACCEPTED, axum::Json(json!(null))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_ids_are_stable_and_fit_javascript() {
        assert_eq!(repository_id("group/project"), repository_id("group/project"));
        assert_ne!(repository_id("group/project"), repository_id("group/project/sub"));
        assert!(repository_id("group/project") < 1 << 53);
    }
}
