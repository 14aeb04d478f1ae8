//! `/projects/:id/members` and `/groups/:id/members`: direct members and their roles.
//! Maintainers manage members; only an Owner makes or unmakes Owners.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use berth_proto::identity::Role;
use serde_json::{json, Value};

use super::namespace::Namespace;
use super::{body, change, numeric, paged, Session, V4Error, V4Result};
use crate::Api;

fn member_json(s: &Session, user: u64, role: Role) -> Value {
    let name = s.id().users.get(&user).map(|u| u.username.clone()).unwrap_or_default();
    json!({"id": user, "username": name, "name": name, "state": "active", "access_level": role.access_level()})
}

/// `GET .../members`.
pub async fn list<N: Namespace>(s: Session, Path(key): Path<String>, uri: Uri) -> V4Result {
    let n = N::find(&s, &key)?;
    let items = n.members(&s).into_iter().map(|(u, r)| member_json(&s, u, r)).collect();
    Ok(paged(&uri, items))
}

/// `GET .../members/:user_id`.
pub async fn one<N: Namespace>(s: Session, Path((key, user)): Path<(String, String)>) -> V4Result {
    let n = N::find(&s, &key)?;
    let user = numeric(&Path(user))?;
    let r = n.member(&s, user).ok_or_else(|| V4Error::not_found("Member"))?;
    Ok(axum::Json(member_json(&s, user, r)).into_response())
}

async fn put<N: Namespace>(api: &Api, s: &Session, n: &N, user: u64, b: &Value) -> Result<Value, V4Error> {
    let level = b["access_level"].as_u64().or_else(|| b["access_level"].as_str().and_then(|v| v.parse().ok()));
    let r = level.and_then(Role::from_access_level).ok_or_else(|| V4Error::bad("access_level must be 10, 20, 30, 40 or 50"))?;
    n.require(s, Role::Maintainer)?;
    if (r == Role::Owner || n.member(s, user) == Some(Role::Owner)) && n.caller_role(s) != Some(Role::Owner) {
        return Err(V4Error::forbidden());
    }
    change(api, n.set_member(user, r)).await?;
    Ok(member_json(s, user, r))
}

/// `POST .../members`: `user_id`, `access_level`.
pub async fn add<N: Namespace>(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>, req_body: Body) -> V4Result {
    let n = N::find(&s, &key)?;
    let b = body(req_body).await?;
    let user = b["user_id"].as_u64().or_else(|| b["user_id"].as_str().and_then(|v| v.parse().ok())).ok_or_else(|| V4Error::bad("user_id is missing"))?;
    n.require(&s, Role::Maintainer)?;
    if n.member(&s, user).is_some() {
        return Err(V4Error::new(StatusCode::CONFLICT, "Member already exists"));
    }
    let v = put(&api, &s, &n, user, &b).await?;
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

/// `PUT .../members/:user_id`: `access_level`.
pub async fn set<N: Namespace>(State(api): State<Arc<Api>>, s: Session, Path((key, user)): Path<(String, String)>, req_body: Body) -> V4Result {
    let n = N::find(&s, &key)?;
    let user = numeric(&Path(user))?;
    if n.member(&s, user).is_none() {
        return Err(V4Error::not_found("Member"));
    }
    let b = body(req_body).await?;
    Ok(axum::Json(put(&api, &s, &n, user, &b).await?).into_response())
}

/// `DELETE .../members/:user_id`.
pub async fn remove<N: Namespace>(State(api): State<Arc<Api>>, s: Session, Path((key, user)): Path<(String, String)>) -> V4Result {
    let n = N::find(&s, &key)?;
    let user = numeric(&Path(user))?;
    n.require(&s, Role::Maintainer)?;
    if n.member(&s, user) == Some(Role::Owner) && n.caller_role(&s) != Some(Role::Owner) {
        return Err(V4Error::forbidden());
    }
    change(&api, n.remove_member(user)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
