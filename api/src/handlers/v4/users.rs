//! `/api/v4/user` and `/api/v4/users`: who is calling, and (for administrators) managing users.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use berth_proto::identity::{IdentityChange, User};
use serde_json::{json, Value};

use super::{body, change, created_id, numeric, paged, time, Session, V4Error, V4Result};
use crate::auth::PASSWORD_COST;
use crate::Api;

/// The shortest password accepted.
const MIN_PASSWORD: usize = 8;

fn user_json(u: &User, admin_view: bool) -> Value {
    let mut v = json!({"id": u.id, "username": u.username, "name": u.username, "state": "active", "created_at": time(u.created_ms)});
    if admin_view {
        v["is_admin"] = json!(u.admin);
    }
    v
}

async fn hash(password: String) -> Result<String, V4Error> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(V4Error::bad(format!("password is too short (minimum is {MIN_PASSWORD} characters)")));
    }
    tokio::task::spawn_blocking(move || bcrypt::hash(password, PASSWORD_COST))
        .await
        .map_err(|e| V4Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| V4Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Usernames as GitLab allows them: letters, digits, `_`, `-` and `.`, starting with a
/// letter, digit or `_`; `+` is kept for deploy tokens, so it is refused here.
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name != crate::auth::issuer::JOB_USER
}

/// `GET /user`.
pub async fn me(s: Session) -> V4Result {
    let u = s.id().users.get(&s.user).ok_or_else(|| V4Error::not_found("User"))?;
    Ok(axum::Json(user_json(u, true)).into_response())
}

/// `GET /users`.
pub async fn list(s: Session, uri: Uri) -> V4Result {
    let items = s.id().users.values().map(|u| user_json(u, s.admin())).collect();
    Ok(paged(&uri, items))
}

/// `GET /users/:id`.
pub async fn one(s: Session, id: Path<String>) -> V4Result {
    let u = s.id().users.get(&numeric(&id)?).ok_or_else(|| V4Error::not_found("User"))?;
    Ok(axum::Json(user_json(u, s.admin())).into_response())
}

/// `POST /users` (administrators): `username`, `password`, `admin`.
pub async fn create(State(api): State<Arc<Api>>, s: Session, req_body: Body) -> V4Result {
    if !s.admin() {
        return Err(V4Error::forbidden());
    }
    let b = body(req_body).await?;
    let username = b["username"].as_str().ok_or_else(|| V4Error::bad("username is missing"))?.to_string();
    if !valid_username(&username) {
        return Err(V4Error::bad("username can contain only letters, digits, '_', '-' and '.'"));
    }
    let password_hash = match b["password"].as_str() {
        Some(p) => Some(hash(p.to_string()).await?),
        None => None,
    };
    let admin = b["admin"].as_bool().unwrap_or(false);
    let id = created_id(change(&api, IdentityChange::CreateUser { username, password_hash, admin }).await?)?;
    let now = api.meta.identity();
    let u = now.users.get(&id).ok_or_else(|| V4Error::not_found("User"))?;
    Ok((StatusCode::CREATED, axum::Json(user_json(u, true))).into_response())
}

/// `PUT /users/:id` (administrators): `password`, `admin`.
pub async fn update(State(api): State<Arc<Api>>, s: Session, id: Path<String>, req_body: Body) -> V4Result {
    let user = numeric(&id)?;
    if !s.admin() {
        return Err(V4Error::forbidden());
    }
    let b = body(req_body).await?;
    let password_hash = match b["password"].as_str() {
        Some(p) => Some(hash(p.to_string()).await?),
        None => None,
    };
    change(&api, IdentityChange::UpdateUser { user, password_hash, admin: b["admin"].as_bool() }).await?;
    let now = api.meta.identity();
    let u = now.users.get(&user).ok_or_else(|| V4Error::not_found("User"))?;
    Ok(axum::Json(user_json(u, true)).into_response())
}

/// `DELETE /users/:id` (administrators; not oneself).
pub async fn delete(State(api): State<Arc<Api>>, s: Session, id: Path<String>) -> V4Result {
    let user = numeric(&id)?;
    if !s.admin() {
        return Err(V4Error::forbidden());
    }
    if user == s.user {
        return Err(V4Error::bad("an administrator cannot delete themselves"));
    }
    change(&api, IdentityChange::DeleteUser { user }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
