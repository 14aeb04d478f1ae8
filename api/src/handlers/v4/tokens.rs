//! Tokens under `/api/v4`: personal access tokens, deploy tokens and CI job tokens. A
//! secret is shown once, in the answer that makes it; identity keeps only its SHA-256.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use berth_proto::identity::{IdentityChange, Project, Role, TokenKind, TokenRecord, TokenScope};
use serde_json::{json, Value};

use super::namespace::Namespace;
use super::{body, change, created_id, paged, parse_time, time, Session, V4Error, V4Result};
use crate::auth::issuer::{new_secret, token_hash};
use crate::Api;

/// How long a CI job token lives unless told (a job that never reports its end).
const JOB_TOKEN_LIFETIME_MS: u64 = 3_600_000;
/// Default life of a rotated token (GitLab: one week).
const ROTATED_LIFETIME_MS: u64 = 7 * 86_400_000;

fn scopes_of(b: &Value) -> Result<Vec<TokenScope>, V4Error> {
    let list = b["scopes"].as_array().ok_or_else(|| V4Error::bad("scopes is missing"))?;
    let mut out = vec![];
    for v in list {
        let name = v.as_str().unwrap_or_default();
        let s = TokenScope::parse(name)
            .ok_or_else(|| V4Error::bad(format!("scope {name:?} is not supported (api, read_registry, write_registry)")))?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    if out.is_empty() {
        return Err(V4Error::bad("scopes is empty"));
    }
    Ok(out)
}

fn expiry_of(b: &Value) -> Result<Option<u64>, V4Error> {
    match b["expires_at"].as_str() {
        None => Ok(None),
        Some(s) => parse_time(s).map(Some).ok_or_else(|| V4Error::bad("expires_at is not an ISO 8601 date")),
    }
}

fn pat_json(t: &TokenRecord, now: u64) -> Value {
    let user = match t.kind {
        TokenKind::Personal { user } => user,
        _ => 0,
    };
    json!({
        "id": t.id, "name": t.name, "revoked": t.revoked, "created_at": time(t.created_ms), "description": null,
        "scopes": t.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(), "user_id": user, "last_used_at": null,
        "active": t.active(now), "expires_at": t.expires_ms.map(|e| time(e)[..10].to_string()),
    })
}

fn deploy_json(t: &TokenRecord, now: u64) -> Value {
    let username = t.kind.deploy_username().unwrap_or_default();
    json!({
        "id": t.id, "name": t.name, "username": username, "expires_at": t.expires_ms.map(time),
        "revoked": t.revoked, "expired": t.expires_ms.is_some_and(|e| now >= e),
        "scopes": t.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    })
}

async fn create_token(api: &Api, kind: TokenKind, name: String, scopes: Vec<TokenScope>, expires_ms: Option<u64>, prefix: &str) -> Result<(u64, String), V4Error> {
    let secret = new_secret(prefix);
    let c = IdentityChange::CreateToken { kind, name, hash: token_hash(&secret), scopes, expires_ms };
    Ok((created_id(change(api, c).await?)?, secret))
}

fn pat_of(s: &Session, key: &str) -> Result<TokenRecord, V4Error> {
    let t = if key == "self" {
        s.who.token().and_then(|t| s.id().tokens.get(&t))
    } else {
        key.parse::<u64>().ok().and_then(|t| s.id().tokens.get(&t))
    };
    // Another user's token does not exist for a non-administrator.
    t.filter(|t| matches!(t.kind, TokenKind::Personal { user } if user == s.user || s.admin()))
        .cloned()
        .ok_or_else(|| V4Error::not_found("Token"))
}

/// `POST /users/:id/personal_access_tokens` (administrators): `name`, `scopes`, `expires_at`.
pub async fn create_pat(State(api): State<Arc<Api>>, s: Session, Path(user): Path<String>, req_body: Body) -> V4Result {
    if !s.admin() {
        return Err(V4Error::forbidden());
    }
    let user: u64 = user.parse().map_err(|_| V4Error::not_found("User"))?;
    let b = body(req_body).await?;
    let name = b["name"].as_str().ok_or_else(|| V4Error::bad("name is missing"))?.to_string();
    let (id, secret) = create_token(&api, TokenKind::Personal { user }, name, scopes_of(&b)?, expiry_of(&b)?, "berth_pat_").await?;
    let now = berth_proto::now_ms();
    let mut v = pat_json(api.meta.identity().tokens.get(&id).ok_or_else(|| V4Error::not_found("Token"))?, now);
    v["token"] = json!(secret);
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

/// `GET /personal_access_tokens`: the caller's (an administrator's: everyone's, or
/// `user_id`'s).
pub async fn list_pats(s: Session, uri: Uri) -> V4Result {
    let q = crate::handlers::query(&uri);
    let only: Option<u64> = if s.admin() { q.get("user_id").and_then(|u| u.parse().ok()) } else { Some(s.user) };
    let now = berth_proto::now_ms();
    let items = s
        .id()
        .tokens
        .values()
        .filter(|t| matches!(t.kind, TokenKind::Personal { user } if only.is_none_or(|o| o == user)))
        .map(|t| pat_json(t, now))
        .collect();
    Ok(paged(&uri, items))
}

/// `GET /personal_access_tokens/:id` (`self` for the one in use).
pub async fn one_pat(s: Session, Path(key): Path<String>) -> V4Result {
    Ok(axum::Json(pat_json(&pat_of(&s, &key)?, berth_proto::now_ms())).into_response())
}

/// `DELETE /personal_access_tokens/:id`: revokes it, everywhere, within a second.
pub async fn revoke_pat(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>) -> V4Result {
    let t = pat_of(&s, &key)?;
    change(&api, IdentityChange::RevokeToken { token: t.id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /personal_access_tokens/:id/rotate`: a new secret with the same name and scopes;
/// the old one is revoked.
pub async fn rotate_pat(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>, req_body: Body) -> V4Result {
    let old = pat_of(&s, &key)?;
    if !old.active(berth_proto::now_ms()) {
        return Err(V4Error::bad("the token is revoked or expired"));
    }
    let b = body(req_body).await?;
    let expires = expiry_of(&b)?.or(Some(berth_proto::now_ms() + ROTATED_LIFETIME_MS));
    change(&api, IdentityChange::RevokeToken { token: old.id }).await?;
    let (id, secret) = create_token(&api, old.kind.clone(), old.name.clone(), old.scopes.clone(), expires, "berth_pat_").await?;
    let mut v = pat_json(api.meta.identity().tokens.get(&id).ok_or_else(|| V4Error::not_found("Token"))?, berth_proto::now_ms());
    v["token"] = json!(secret);
    Ok(axum::Json(v).into_response())
}

/// `GET /deploy_tokens` (administrators): every deploy token, of projects and groups;
/// `active=true` keeps the usable ones.
pub async fn list_all_deploy(s: Session, uri: Uri) -> V4Result {
    if !s.admin() {
        return Err(V4Error::forbidden());
    }
    let q = crate::handlers::query(&uri);
    let only_active = q.get("active").is_some_and(|v| v == "true");
    let now = berth_proto::now_ms();
    let items = s
        .id()
        .tokens
        .values()
        .filter(|t| t.kind.deploy_username().is_some() && (!only_active || t.active(now)))
        .map(|t| deploy_json(t, now))
        .collect();
    Ok(paged(&uri, items))
}

fn deploy_token<N: Namespace>(s: &Session, n: &N, token: &str) -> Result<TokenRecord, V4Error> {
    s.id().tokens.values().find(|t| t.id.to_string() == token && n.owns(&t.kind)).cloned().ok_or_else(|| V4Error::not_found("Token"))
}

/// `GET /projects/:id/deploy_tokens`, `GET /groups/:id/deploy_tokens` (Maintainer).
pub async fn list_deploy<N: Namespace>(s: Session, Path(key): Path<String>, uri: Uri) -> V4Result {
    let n = N::find(&s, &key)?;
    n.require(&s, Role::Maintainer)?;
    let now = berth_proto::now_ms();
    let items = s.id().tokens.values().filter(|t| n.owns(&t.kind)).map(|t| deploy_json(t, now)).collect();
    Ok(paged(&uri, items))
}

/// `GET .../deploy_tokens/:token_id` (Maintainer).
pub async fn one_deploy<N: Namespace>(s: Session, Path((key, token)): Path<(String, String)>) -> V4Result {
    let n = N::find(&s, &key)?;
    n.require(&s, Role::Maintainer)?;
    Ok(axum::Json(deploy_json(&deploy_token(&s, &n, &token)?, berth_proto::now_ms())).into_response())
}

/// `POST .../deploy_tokens` (a project's Maintainer, a group's Owner): `name`, `scopes`,
/// `expires_at`, `username` (`gitlab+deploy-token-N` unless given).
pub async fn create_deploy<N: Namespace>(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>, req_body: Body) -> V4Result {
    let n = N::find(&s, &key)?;
    n.require(&s, N::DEPLOY_ADMIN)?;
    let b = body(req_body).await?;
    let name = b["name"].as_str().ok_or_else(|| V4Error::bad("name is missing"))?.to_string();
    let scopes = scopes_of(&b)?;
    if scopes.contains(&TokenScope::Api) {
        return Err(V4Error::bad("deploy tokens take read_registry and write_registry only"));
    }
    let username = b["username"].as_str().unwrap_or_default().to_string();
    if !username.is_empty() && !super::users::valid_username(&username) {
        return Err(V4Error::bad("username can contain only letters, digits, '_', '-' and '.'"));
    }
    let (id, secret) = create_token(&api, n.deploy_kind(username), name, scopes, expiry_of(&b)?, "berth_dt_").await?;
    let mut v = deploy_json(api.meta.identity().tokens.get(&id).ok_or_else(|| V4Error::not_found("Token"))?, berth_proto::now_ms());
    v["token"] = json!(secret);
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

/// `DELETE .../deploy_tokens/:token_id` (a project's Maintainer, a group's Owner).
pub async fn revoke_deploy<N: Namespace>(State(api): State<Arc<Api>>, s: Session, Path((key, token)): Path<(String, String)>) -> V4Result {
    let n = N::find(&s, &key)?;
    n.require(&s, N::DEPLOY_ADMIN)?;
    let t = deploy_token(&s, &n, &token)?;
    change(&api, IdentityChange::RevokeToken { token: t.id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /projects/:id/job_tokens` (Berth's; Developer): a CI job's token, acting as the
/// caller in this project, until the job ends (`DELETE`) or `expires_in` seconds pass (an
/// hour unless given). Log in with user `gitlab-ci-token`.
pub async fn create_job(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>, req_body: Body) -> V4Result {
    let p = Project::find(&s, &key)?;
    p.require(&s, Role::Developer)?;
    let b = body(req_body).await?;
    let life = b["expires_in"].as_u64().map_or(JOB_TOKEN_LIFETIME_MS, |secs| secs.clamp(1, 86_400) * 1000);
    let expires = berth_proto::now_ms() + life;
    let kind = TokenKind::Job { project: p.id, user: s.user };
    let (id, secret) = create_token(&api, kind, "ci-job".into(), vec![], Some(expires), "berth_job_").await?;
    let v = json!({"id": id, "token": secret, "username": crate::auth::issuer::JOB_USER, "expires_at": time(expires)});
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

/// `DELETE /projects/:id/job_tokens/:id`: the job ended; its token stops working.
pub async fn end_job(State(api): State<Arc<Api>>, s: Session, Path((key, token)): Path<(String, String)>) -> V4Result {
    let p = Project::find(&s, &key)?;
    p.require(&s, Role::Developer)?;
    let t = s
        .id()
        .tokens
        .values()
        .find(|t| t.id.to_string() == token && matches!(t.kind, TokenKind::Job { project, .. } if project == p.id))
        .ok_or_else(|| V4Error::not_found("Token"))?
        .id;
    change(&api, IdentityChange::RevokeToken { token: t }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
