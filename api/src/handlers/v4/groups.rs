//! `/api/v4/groups`: groups (a path whose members and deploy tokens reach every project
//! below it). Members and deploy tokens are in `members.rs` and `tokens.rs`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use berth_proto::identity::{Group, IdentityChange, Role};
use berth_proto::RepoName;
use serde_json::{json, Value};

use super::namespace::Namespace;
use super::{body, change, created_id, paged, time, Session, V4Error, V4Result};
use crate::Api;

fn group_json(s: &Session, g: &Group) -> Value {
    let name = g.path.rsplit('/').next().unwrap_or(&g.path);
    let parent = g.path.rsplit_once('/').and_then(|(p, _)| s.id().group_by_path(p)).map(|p| p.id);
    json!({
        "id": g.id, "name": name, "path": name, "full_name": g.path, "full_path": g.path,
        "parent_id": parent, "created_at": time(g.created_ms),
    })
}

/// `GET /groups`: the groups the caller belongs to (administrators: all).
pub async fn list(s: Session, uri: Uri) -> V4Result {
    let items = s.id().groups.values().filter(|g| g.caller_role(&s).is_some()).map(|g| group_json(&s, g)).collect();
    Ok(paged(&uri, items))
}

/// `GET /groups/:id`.
pub async fn one(s: Session, Path(key): Path<String>) -> V4Result {
    Ok(axum::Json(group_json(&s, &Group::find(&s, &key)?)).into_response())
}

/// `POST /groups`: `path` (or `name`) and `parent_id` for a subgroup. Administrators create
/// top-level groups; Maintainers of a group create subgroups in it. The creator becomes
/// its Owner.
pub async fn create(State(api): State<Arc<Api>>, s: Session, req_body: Body) -> V4Result {
    let b = body(req_body).await?;
    let leaf = b["path"].as_str().or(b["name"].as_str()).ok_or_else(|| V4Error::bad("path is missing"))?;
    let path = match b["parent_id"].as_u64().or_else(|| b["parent_id"].as_str().and_then(|v| v.parse().ok())) {
        Some(parent) => format!("{}/{leaf}", Group::find(&s, &parent.to_string())?.path),
        None => leaf.to_string(),
    }
    .to_ascii_lowercase();
    RepoName::parse(&path).map_err(|e| V4Error::bad(format!("path is invalid: {e}")))?;
    // A top-level group takes a namespace from everyone: administrators only.
    let in_group = s.id().groups_above(&path).any(|g| s.id().group_role(g.id, s.user) >= Some(Role::Maintainer));
    if !(s.admin() || in_group) {
        return Err(V4Error::forbidden());
    }
    let id = created_id(change(&api, IdentityChange::CreateGroup { path, owner: Some(s.user) }).await?)?;
    let now = api.meta.identity();
    let g = now.groups.get(&id).ok_or_else(|| V4Error::not_found("Group"))?;
    Ok((StatusCode::CREATED, axum::Json(group_json(&s, g))).into_response())
}

/// `DELETE /groups/:id` (Owner): the group record, its members and deploy tokens; its
/// projects stay.
pub async fn delete(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>) -> V4Result {
    let g = Group::find(&s, &key)?;
    g.require(&s, Role::Owner)?;
    change(&api, IdentityChange::DeleteGroup { group: g.id }).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"message": "202 Accepted"}))).into_response())
}
