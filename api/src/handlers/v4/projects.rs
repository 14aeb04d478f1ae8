//! `/api/v4/projects`: projects (a path owning the repositories below it) and their
//! visibility. Members and deploy tokens are in `members.rs` and `tokens.rs`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use berth_proto::identity::{IdentityChange, Project, Role, Visibility};
use berth_proto::RepoName;
use serde_json::{json, Value};

use super::namespace::Namespace;
use super::{body, change, created_id, paged, time, Session, V4Error, V4Result};
use crate::Api;

fn project_json(p: &Project) -> Value {
    let name = p.path.rsplit('/').next().unwrap_or(&p.path);
    let namespace = p.path.rsplit_once('/').map_or("", |(n, _)| n);
    json!({
        "id": p.id,
        "name": name,
        "path": name,
        "path_with_namespace": p.path,
        "namespace": {"full_path": namespace},
        "visibility": p.visibility.as_str(),
        "container_registry_access_level": "enabled",
        "container_registry_enabled": true,
        "created_at": time(p.created_ms),
    })
}

fn visibility_of(b: &Value) -> Result<Option<Visibility>, V4Error> {
    match b["visibility"].as_str() {
        Some(v) => Visibility::parse(v).map(Some).ok_or_else(|| V4Error::bad("visibility must be private, internal or public")),
        None => Ok(None),
    }
}

/// True when the caller may create a project or group at `path`: administrators anywhere,
/// users below their own name and below groups where they are at least Maintainer.
pub(super) fn may_create_at(s: &Session, path: &str) -> bool {
    let own = s.id().users.get(&s.user).map(|u| u.username.to_ascii_lowercase()).unwrap_or_default();
    s.admin()
        || path.starts_with(&format!("{own}/"))
        || s.id().groups_above(path).any(|g| s.id().group_role(g.id, s.user) >= Some(Role::Maintainer))
}

/// `GET /projects`: the projects the caller can see.
pub async fn list(s: Session, uri: Uri) -> V4Result {
    let items = s.id().projects.values().filter(|p| Project::find(&s, &p.id.to_string()).is_ok()).map(project_json).collect();
    Ok(paged(&uri, items))
}

/// `GET /projects/:id`; with `statistics=true`, `statistics.container_registry_size`: the
/// bytes of the blobs its repositories link, each counted once.
pub async fn one(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>, uri: Uri) -> V4Result {
    let p = Project::find(&s, &key)?;
    let mut v = project_json(&p);
    if crate::handlers::query(&uri).get("statistics").is_some_and(|v| v == "true" || v == "1") {
        let repos = super::registry::repositories_of(&api, &p.path).await?;
        v["statistics"] = json!({"container_registry_size": super::registry::usage(&api, &repos).await?});
    }
    Ok(axum::Json(v).into_response())
}

/// `POST /projects`: `path` (`group/project`, or `namespace` + `path`), `visibility`
/// (private unless given). The creator becomes its Owner.
pub async fn create(State(api): State<Arc<Api>>, s: Session, req_body: Body) -> V4Result {
    let b = body(req_body).await?;
    let leaf = b["path"].as_str().or(b["name"].as_str()).ok_or_else(|| V4Error::bad("path is missing"))?;
    let path = match b["namespace"].as_str() {
        Some(ns) => format!("{ns}/{leaf}"),
        None => leaf.to_string(),
    }
    .to_ascii_lowercase();
    RepoName::parse(&path).map_err(|e| V4Error::bad(format!("path is invalid: {e}")))?;
    let visibility = visibility_of(&b)?.unwrap_or(Visibility::Private);
    if !may_create_at(&s, &path) {
        return Err(V4Error::forbidden());
    }
    let id = created_id(change(&api, IdentityChange::CreateProject { path, visibility, owner: Some(s.user) }).await?)?;
    let now = api.meta.identity();
    let p = now.projects.get(&id).ok_or_else(|| V4Error::not_found("Project"))?;
    Ok((StatusCode::CREATED, axum::Json(project_json(p))).into_response())
}

/// `PUT /projects/:id`: `visibility` (Owner).
pub async fn update(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>, req_body: Body) -> V4Result {
    let p = Project::find(&s, &key)?;
    p.require(&s, Role::Owner)?;
    let b = body(req_body).await?;
    if let Some(visibility) = visibility_of(&b)? {
        change(&api, IdentityChange::UpdateProject { project: p.id, visibility }).await?;
    }
    let now = api.meta.identity();
    Ok(axum::Json(project_json(now.projects.get(&p.id).ok_or_else(|| V4Error::not_found("Project"))?)).into_response())
}

/// `DELETE /projects/:id` (Owner): the project record, its members and deploy tokens; its
/// repositories stay until deleted through the registry.
pub async fn delete(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>) -> V4Result {
    let p = Project::find(&s, &key)?;
    p.require(&s, Role::Owner)?;
    change(&api, IdentityChange::DeleteProject { project: p.id }).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"message": "202 Accepted"}))).into_response())
}
