//! `/api/v4/projects`: projects (a path owning the repositories below it), their visibility
//! and their members.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_proto::identity::{IdentityChange, Project, Role, Visibility};
use berth_proto::RepoName;
use serde_json::{json, Value};

use super::{body, change, created_id, numeric, paged, session, time, Session, V4Error, V4Result};
use crate::Api;

pub(super) fn project_json(p: &Project) -> Value {
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

/// A project by numeric id or (URL-encoded) path.
pub(super) fn find<'a>(s: &'a Session, key: &str) -> Result<&'a Project, V4Error> {
    let id = s.id();
    let p = match key.parse::<u64>() {
        Ok(n) => id.projects.get(&n),
        Err(_) => id.project_by_path(&key.to_ascii_lowercase()),
    };
    // Projects the caller cannot see do not exist, as in GitLab.
    p.filter(|p| can_see(s, p)).ok_or_else(|| V4Error::not_found("Project"))
}

/// The caller's role in a project (administrators are Owners everywhere).
pub(super) fn role(s: &Session, p: &Project) -> Option<Role> {
    if s.admin() {
        return Some(Role::Owner);
    }
    s.id().role(p.id, s.user)
}

fn can_see(s: &Session, p: &Project) -> bool {
    p.visibility != Visibility::Private || role(s, p).is_some()
}

/// Requires at least `min` in `p`.
pub(super) fn require(s: &Session, p: &Project, min: Role) -> Result<(), V4Error> {
    if role(s, p) >= Some(min) {
        Ok(())
    } else {
        Err(V4Error::forbidden())
    }
}

/// `GET /projects`: the projects the caller can see.
pub async fn list(State(api): State<Arc<Api>>, req: Request) -> V4Result {
    let (req, _) = req.into_parts();
    let s = session(&api, &req).await?;
    let items = s.id().projects.values().filter(|p| can_see(&s, p)).map(project_json).collect();
    Ok(paged(&req, items))
}

/// `GET /projects/:id`.
pub async fn one(State(api): State<Arc<Api>>, Path(key): Path<String>, req: Request) -> V4Result {
    let (req, _) = req.into_parts();
    let s = session(&api, &req).await?;
    Ok(axum::Json(project_json(find(&s, &key)?)).into_response())
}

/// `POST /projects`: `path` (`group/project`, or `namespace` + `path`), `visibility`
/// (private unless given). Administrators create anywhere; users under their own name. The
/// creator becomes its Owner.
pub async fn create(State(api): State<Arc<Api>>, req: Request) -> V4Result {
    let (req, req_body) = req.into_parts();
    let s = session(&api, &req).await?;
    let b = body(req_body).await?;
    let leaf = b["path"].as_str().or(b["name"].as_str()).ok_or_else(|| V4Error::bad("path is missing"))?;
    let path = match b["namespace"].as_str() {
        Some(ns) => format!("{ns}/{leaf}"),
        None => leaf.to_string(),
    }
    .to_ascii_lowercase();
    RepoName::parse(&path).map_err(|e| V4Error::bad(format!("path is invalid: {e}")))?;
    let visibility = match b["visibility"].as_str() {
        Some(v) => Visibility::parse(v).ok_or_else(|| V4Error::bad("visibility must be private, internal or public"))?,
        None => Visibility::Private,
    };
    let own = s.id().users.get(&s.user).map(|u| u.username.to_ascii_lowercase()).unwrap_or_default();
    if !s.admin() && !path.starts_with(&format!("{own}/")) {
        return Err(V4Error::forbidden());
    }
    let id = created_id(change(&api, IdentityChange::CreateProject { path, visibility, owner: Some(s.user) }).await?)?;
    let now = api.meta.identity();
    let p = now.projects.get(&id).ok_or_else(|| V4Error::not_found("Project"))?;
    Ok((StatusCode::CREATED, axum::Json(project_json(p))).into_response())
}

/// `PUT /projects/:id`: `visibility` (Owner).
pub async fn update(State(api): State<Arc<Api>>, Path(key): Path<String>, req: Request) -> V4Result {
    let (req, req_body) = req.into_parts();
    let s = session(&api, &req).await?;
    let p = find(&s, &key)?.clone();
    require(&s, &p, Role::Owner)?;
    let b = body(req_body).await?;
    if let Some(v) = b["visibility"].as_str() {
        let visibility = Visibility::parse(v).ok_or_else(|| V4Error::bad("visibility must be private, internal or public"))?;
        change(&api, IdentityChange::UpdateProject { project: p.id, visibility }).await?;
    }
    let now = api.meta.identity();
    Ok(axum::Json(project_json(now.projects.get(&p.id).ok_or_else(|| V4Error::not_found("Project"))?)).into_response())
}

/// `DELETE /projects/:id` (Owner): the project record, its members and deploy tokens; its
/// repositories stay until deleted through the registry.
pub async fn delete(State(api): State<Arc<Api>>, Path(key): Path<String>, req: Request) -> V4Result {
    let (req, _) = req.into_parts();
    let s = session(&api, &req).await?;
    let p = find(&s, &key)?.clone();
    require(&s, &p, Role::Owner)?;
    change(&api, IdentityChange::DeleteProject { project: p.id }).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"message": "202 Accepted"}))).into_response())
}

fn member_json(s: &Session, user: u64, role: Role) -> Value {
    let name = s.id().users.get(&user).map(|u| u.username.clone()).unwrap_or_default();
    json!({"id": user, "username": name, "name": name, "state": "active", "access_level": role.access_level()})
}

/// `GET /projects/:id/members`.
pub async fn members(State(api): State<Arc<Api>>, Path(key): Path<String>, req: Request) -> V4Result {
    let (req, _) = req.into_parts();
    let s = session(&api, &req).await?;
    let p = find(&s, &key)?;
    let items = s.id().members.iter().filter(|((pid, _), _)| *pid == p.id).map(|((_, u), r)| member_json(&s, *u, *r)).collect();
    Ok(paged(&req, items))
}

/// `GET /projects/:id/members/:user_id`.
pub async fn member(State(api): State<Arc<Api>>, Path((key, user)): Path<(String, String)>, req: Request) -> V4Result {
    let (req, _) = req.into_parts();
    let s = session(&api, &req).await?;
    let p = find(&s, &key)?;
    let user = numeric(&Path(user))?;
    let r = s.id().role(p.id, user).ok_or_else(|| V4Error::not_found("Member"))?;
    Ok(axum::Json(member_json(&s, user, r)).into_response())
}

async fn put_member(api: &Api, s: &Session, p: &Project, user: u64, b: &Value) -> Result<Value, V4Error> {
    let level = b["access_level"].as_u64().or_else(|| b["access_level"].as_str().and_then(|v| v.parse().ok()));
    let r = level.and_then(Role::from_access_level).ok_or_else(|| V4Error::bad("access_level must be 10, 20, 30, 40 or 50"))?;
    require(s, p, Role::Maintainer)?;
    // Only an Owner makes (or unmakes) Owners.
    if (r == Role::Owner || s.id().role(p.id, user) == Some(Role::Owner)) && role(s, p) != Some(Role::Owner) {
        return Err(V4Error::forbidden());
    }
    change(api, IdentityChange::SetMember { project: p.id, user, role: r }).await?;
    Ok(member_json(s, user, r))
}

/// `POST /projects/:id/members`: `user_id`, `access_level` (Maintainer).
pub async fn add_member(State(api): State<Arc<Api>>, Path(key): Path<String>, req: Request) -> V4Result {
    let (req, req_body) = req.into_parts();
    let s = session(&api, &req).await?;
    let p = find(&s, &key)?.clone();
    let b = body(req_body).await?;
    let user = b["user_id"].as_u64().or_else(|| b["user_id"].as_str().and_then(|v| v.parse().ok())).ok_or_else(|| V4Error::bad("user_id is missing"))?;
    require(&s, &p, Role::Maintainer)?;
    if s.id().role(p.id, user).is_some() {
        return Err(V4Error::new(StatusCode::CONFLICT, "Member already exists"));
    }
    let v = put_member(&api, &s, &p, user, &b).await?;
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

/// `PUT /projects/:id/members/:user_id`: `access_level` (Maintainer).
pub async fn set_member(State(api): State<Arc<Api>>, Path((key, user)): Path<(String, String)>, req: Request) -> V4Result {
    let (req, req_body) = req.into_parts();
    let s = session(&api, &req).await?;
    let p = find(&s, &key)?.clone();
    let user = numeric(&Path(user))?;
    if s.id().role(p.id, user).is_none() {
        return Err(V4Error::not_found("Member"));
    }
    let b = body(req_body).await?;
    Ok(axum::Json(put_member(&api, &s, &p, user, &b).await?).into_response())
}

/// `DELETE /projects/:id/members/:user_id` (Maintainer; Owners only by an Owner).
pub async fn remove_member(State(api): State<Arc<Api>>, Path((key, user)): Path<(String, String)>, req: Request) -> V4Result {
    let (req, _) = req.into_parts();
    let s = session(&api, &req).await?;
    let p = find(&s, &key)?.clone();
    let user = numeric(&Path(user))?;
    require(&s, &p, Role::Maintainer)?;
    if s.id().role(p.id, user) == Some(Role::Owner) && role(&s, &p) != Some(Role::Owner) {
        return Err(V4Error::forbidden());
    }
    change(&api, IdentityChange::RemoveMember { project: p.id, user }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
