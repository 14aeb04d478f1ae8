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
use berth_proto::identity::Project;
use berth_proto::{Command, Digest, Outcome, Reference, RepoName, Tag};
use futures::StreamExt;
use serde_json::{json, Value};

use super::namespace::Namespace;
use super::{body, paged, Session, V4Error, V4Result};
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

/// The repositories of a project: its own path and every path below it.
pub(super) async fn repositories_of(api: &Api, path: &str) -> Result<Vec<String>, V4Error> {
    let mut out = Vec::new();
    if let Ok(own) = RepoName::parse(path) {
        if api.meta.tags(&own, None, 1).await?.is_some() {
            out.push(path.to_string());
        }
    }
    let prefix = format!("{path}/");
    let mut last = prefix.clone();
    loop {
        let page = api.meta.catalog(Some(&last), 1000).await?;
        let full = page.len() == 1000;
        for name in page {
            if !name.starts_with(&prefix) {
                return Ok(out);
            }
            last = name.clone();
            out.push(name);
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Every tag of a repository.
async fn all_tags(api: &Api, repo: &RepoName) -> Result<Vec<String>, V4Error> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let page = api.meta.tags(repo, out.last().map(String::as_str), 1000).await?.unwrap_or_default();
        let full = page.len() == 1000;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Storage used by `repos`: the bytes of every blob linked into them, each blob counted once
/// however many of them link it (manifest bodies, a few KiB each, are not counted).
pub async fn usage(api: &Api, repos: &[String]) -> Result<u64, V4Error> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for name in repos {
        let Ok(repo) = RepoName::parse(name) else { continue };
        let (_, blobs) = api.meta.contents(&repo).await?;
        for d in blobs {
            if seen.insert(d.clone()) {
                total += api.meta.blob_size(&repo, &d).await?.unwrap_or(0);
            }
        }
    }
    Ok(total)
}

fn tag_json(host: &str, repo: &str, tag: &str) -> Value {
    json!({"name": tag, "path": format!("{repo}:{tag}"), "location": format!("{host}/{repo}:{tag}")})
}

async fn repository_json(api: &Api, s: &Session, host: &str, project: &Project, name: &str, uri: &Uri) -> Result<Value, V4Error> {
    let q = crate::handlers::query(uri);
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let mut v = json!({
        "id": repository_id(name),
        "name": name.strip_prefix(&project.path).unwrap_or(name).trim_start_matches('/'),
        "path": name,
        "project_id": project.id,
        "location": format!("{host}/{name}"),
        "created_at": Value::Null,
        "cleanup_policy_started_at": Value::Null,
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
    let mut items = Vec::new();
    for name in repositories_of(&api, &project.path).await? {
        if may(&s, &name, "pull") {
            items.push(repository_json(&api, &s, &host, &project, &name, &uri).await?);
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
            return Ok(axum::Json(repository_json(&api, &s, &host(&headers), &project, name, &uri).await?).into_response());
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

/// What GitLab shows of a tag, read from its manifest and its image config.
struct TagDetails {
    digest: Digest,
    revision: Option<String>,
    created_at: Option<String>,
    total_size: Option<u64>,
}

async fn details(api: &Api, repo: &RepoName, tag: &str) -> Result<Option<TagDetails>, V4Error> {
    let Ok(tag) = Tag::parse(tag) else { return Ok(None) };
    let Some((digest, record)) = api.meta.manifest(repo, &Reference::Tag(tag)).await? else { return Ok(None) };
    let manifest: Value = serde_json::from_slice(&record.body).unwrap_or(Value::Null);
    let config = manifest["config"]["digest"].as_str().and_then(|d| Digest::parse(d).ok());
    let total_size = manifest["layers"].as_array().map(|layers| layers.iter().filter_map(|l| l["size"].as_u64()).sum());
    let created_at = match &config {
        Some(c) => read_config(api, c).await.and_then(|v| v["created"].as_str().map(str::to_string)),
        None => None,
    };
    Ok(Some(TagDetails { digest, revision: config.map(|c| c.hex().to_string()), created_at, total_size }))
}

/// An image config (at most 1 MiB of JSON), if it reads.
async fn read_config(api: &Api, digest: &Digest) -> Option<Value> {
    let mut stream = api.blobs.read(digest, None).await.ok()?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.ok()?);
        if bytes.len() > 1 << 20 {
            return None;
        }
    }
    serde_json::from_slice(&bytes).ok()
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

/// The rules of a bulk delete (GitLab's cleanup-tags service).
#[derive(Debug, Clone)]
pub struct Cleanup {
    /// Tags to delete (anchored), `name_regex_delete` or `name_regex`.
    pub delete: regex::Regex,
    /// Tags to keep whatever else holds (anchored), `name_regex_keep`.
    pub keep: Option<regex::Regex>,
    /// The newest this many candidates are kept.
    pub keep_n: Option<usize>,
    /// Only candidates older than this are deleted (ms).
    pub older_than_ms: Option<u64>,
}

fn anchored(re: &str) -> Result<regex::Regex, V4Error> {
    regex::Regex::new(&format!(r"\A(?:{re})\z")).map_err(|e| V4Error::bad(format!("400 Bad request - invalid regex {re:?}: {e}")))
}

/// A ChronicDuration as GitLab's `older_than` takes it: `90d`, `1h`, `2 weeks`, `1month`.
pub fn parse_age(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit_ms: u64 = match unit.trim().trim_end_matches('s') {
        "" | "sec" | "second" => 1_000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hr" | "hour" => 3_600_000,
        "d" | "day" => 86_400_000,
        "w" | "week" => 7 * 86_400_000,
        "month" | "mo" => 30 * 86_400_000,
        "y" | "year" => 365 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

impl Cleanup {
    /// The rules from a request's parameters.
    pub fn from_params(p: &HashMap<String, String>) -> Result<Cleanup, V4Error> {
        let delete = p.get("name_regex_delete").or_else(|| p.get("name_regex")).ok_or_else(|| V4Error::bad("400 Bad request - name_regex_delete is missing"))?;
        let keep_n = p.get("keep_n").map(|v| v.parse::<usize>().map_err(|_| V4Error::bad("400 Bad request - keep_n is invalid"))).transpose()?;
        let older_than_ms = p.get("older_than").map(|v| parse_age(v).ok_or_else(|| V4Error::bad("400 Bad request - older_than is invalid"))).transpose()?;
        Ok(Cleanup { delete: anchored(delete)?, keep: p.get("name_regex_keep").map(|k| anchored(k)).transpose()?, keep_n, older_than_ms })
    }

    /// The tags to delete among `tags` (name and creation time in ms, if known), at `now_ms`:
    /// never `latest`; those the delete pattern matches and the keep pattern does not; the
    /// newest `keep_n` of those spared (undated ones count as now); then only those older
    /// than `older_than` (undated ones spared).
    pub fn select(&self, tags: &[(String, Option<u64>)], now_ms: u64) -> Vec<String> {
        let mut candidates: Vec<&(String, Option<u64>)> = tags
            .iter()
            .filter(|(t, _)| t != "latest" && self.delete.is_match(t) && !self.keep.as_ref().is_some_and(|k| k.is_match(t)))
            .collect();
        candidates.sort_by(|a, b| b.1.unwrap_or(now_ms).cmp(&a.1.unwrap_or(now_ms)).then_with(|| a.0.cmp(&b.0)));
        candidates
            .into_iter()
            .skip(self.keep_n.unwrap_or(0))
            .filter(|(_, created)| match self.older_than_ms {
                Some(age) => created.is_some_and(|c| c.saturating_add(age) < now_ms),
                None => true,
            })
            .map(|(t, _)| t.clone())
            .collect()
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
    let rules = Cleanup::from_params(&params)?;
    {
        let mut last = last_bulk().lock().unwrap();
        last.retain(|_, at| at.elapsed() < Duration::from_secs(3600));
        if last.contains_key(repo.as_str()) {
            return Err(V4Error::bad("This request has already been made. You can run this at most once an hour for a given container repository"));
        }
        last.insert(repo.to_string(), Instant::now());
    }
    tokio::spawn(async move {
        match cleanup(&api, &repo, &rules).await {
            Ok(n) => tracing::info!(%repo, deleted = n, "bulk tag delete done"),
            Err(e) => tracing::warn!(%repo, "bulk tag delete stopped: {}", e.1),
        }
    });
    Ok((StatusCode::ACCEPTED, axum::Json(json!(null))).into_response())
}

/// Runs a bulk delete; returns how many tags went.
pub async fn cleanup(api: &Api, repo: &RepoName, rules: &Cleanup) -> Result<usize, V4Error> {
    let mut dated = Vec::new();
    for t in all_tags(api, repo).await? {
        let created = match details(api, repo, &t).await? {
            Some(d) => d.created_at.as_deref().and_then(super::parse_time),
            None => continue,
        };
        dated.push((t, created));
    }
    let doomed = rules.select(&dated, berth_proto::now_ms());
    for t in &doomed {
        let tag = Tag::parse(t).map_err(|_| V4Error::not_found("Tag"))?;
        api.meta.apply(Command::DeleteTag { repo: repo.clone(), tag }).await?;
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(delete: &str, keep: Option<&str>, keep_n: Option<usize>, older_than: Option<&str>) -> Cleanup {
        let mut p = HashMap::new();
        p.insert("name_regex_delete".to_string(), delete.to_string());
        if let Some(k) = keep {
            p.insert("name_regex_keep".into(), k.into());
        }
        if let Some(n) = keep_n {
            p.insert("keep_n".into(), n.to_string());
        }
        if let Some(o) = older_than {
            p.insert("older_than".into(), o.into());
        }
        Cleanup::from_params(&p).unwrap()
    }

    #[test]
    fn gitlabs_rules_keep_wins_newest_first_latest_never() {
        let day = 86_400_000;
        let now = 100 * day;
        let tags: Vec<(String, Option<u64>)> = vec![
            ("latest".into(), Some(0)),
            ("v1".into(), Some(now - 50 * day)),
            ("v2".into(), Some(now - 40 * day)),
            ("v3".into(), Some(now - 2 * day)),
            ("stable".into(), Some(0)),
            ("main-abc".into(), None),
            ("v1x".into(), Some(0)),
        ];
        // Anchored: `v.` matches v1, v2, v3 but not v1x.
        assert_eq!(rules("v.", None, None, None).select(&tags, now), vec!["v3", "v2", "v1"]);
        assert_eq!(rules(".*", Some("stable|v3"), None, None).select(&tags, now), vec!["main-abc", "v2", "v1", "v1x"]);
        // The newest two candidates stay (undated counts as now).
        assert_eq!(rules(".*", None, Some(2), None).select(&tags, now), vec!["v2", "v1", "stable", "v1x"]);
        // Only what is older than 30 days; undated is spared.
        assert_eq!(rules(".*", None, None, Some("30d")).select(&tags, now), vec!["v2", "v1", "stable", "v1x"]);
        assert_eq!(rules("v.*", Some("v1"), Some(1), Some("1month")).select(&tags, now), vec!["v2", "v1x"]);
        assert_eq!(parse_age("90d"), Some(90 * day));
        assert_eq!(parse_age("2 weeks"), Some(14 * day));
        assert_eq!(parse_age("1h"), Some(3_600_000));
        assert_eq!(parse_age("soon"), None);
        assert!(Cleanup::from_params(&HashMap::new()).is_err());
    }

    #[test]
    fn repository_ids_are_stable_and_fit_javascript() {
        assert_eq!(repository_id("group/project"), repository_id("group/project"));
        assert_ne!(repository_id("group/project"), repository_id("group/project/sub"));
        assert!(repository_id("group/project") < 1 << 53);
    }
}
