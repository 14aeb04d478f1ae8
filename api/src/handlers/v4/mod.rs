//! GitLab-shaped REST under `/api/v4`: users, projects, groups, members, personal access
//! tokens, deploy tokens and CI job tokens, authenticated by a personal access token with the `api`
//! scope (`PRIVATE-TOKEN` or `Authorization: Bearer`). Changes go through Raft like every
//! other write; each call reads identity as the cluster has it at that moment.

mod groups;
mod members;
mod namespace;
mod projects;
mod registry;
mod tokens;
mod users;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use berth_proto::identity::{Group, Identity, IdentityChange, Project, TokenScope};
use berth_proto::{Command, Outcome};
use serde_json::{json, Value};

use crate::auth::{Caller, IdentityView, Principal};
use crate::backend::MetaError;
use crate::handlers::token::humantime_rfc3339;
pub use crate::iso_time::parse as parse_time;
use crate::Api;

/// The `/api/v4` router.
pub fn router() -> Router<Arc<Api>> {
    Router::new()
        .route("/user", get(users::me))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{id}", get(users::one).delete(users::delete).put(users::update))
        .route("/users/{id}/personal_access_tokens", post(tokens::create_pat))
        .route("/personal_access_tokens", get(tokens::list_pats))
        .route("/personal_access_tokens/{id}", get(tokens::one_pat).delete(tokens::revoke_pat))
        .route("/personal_access_tokens/{id}/rotate", post(tokens::rotate_pat))
        .route("/deploy_tokens", get(tokens::list_all_deploy))
        .route("/projects", get(projects::list).post(projects::create))
        .route("/projects/{id}", get(projects::one).put(projects::update).delete(projects::delete))
        .route("/projects/{id}/job_tokens", post(tokens::create_job))
        .route("/projects/{id}/registry/repositories", get(registry::list))
        .route("/projects/{id}/registry/repositories/{rid}", axum::routing::delete(registry::delete))
        .route("/projects/{id}/registry/repositories/{rid}/tags", get(registry::tags).delete(registry::bulk_delete))
        .route("/projects/{id}/registry/repositories/{rid}/tags/{tag}", get(registry::tag).delete(registry::delete_tag))
        .route("/registry/repositories/{rid}", get(registry::one))
        .route("/projects/{id}/job_tokens/{token}", axum::routing::delete(tokens::end_job))
        .route("/groups", get(groups::list).post(groups::create))
        .route("/groups/{id}", get(groups::one).delete(groups::delete))
        .merge(namespace_routes::<Project>("projects"))
        .merge(namespace_routes::<Group>("groups"))
}

/// Members and deploy tokens, the same under `/projects/:id` and `/groups/:id`.
fn namespace_routes<N: namespace::Namespace>(base: &str) -> Router<Arc<Api>> {
    Router::new()
        .route(&format!("/{base}/{{id}}/members"), get(members::list::<N>).post(members::add::<N>))
        .route(&format!("/{base}/{{id}}/members/{{user}}"), get(members::one::<N>).put(members::set::<N>).delete(members::remove::<N>))
        .route(&format!("/{base}/{{id}}/deploy_tokens"), get(tokens::list_deploy::<N>).post(tokens::create_deploy::<N>))
        .route(&format!("/{base}/{{id}}/deploy_tokens/{{token}}"), get(tokens::one_deploy::<N>).delete(tokens::revoke_deploy::<N>))
}

/// An answer in GitLab's error shape: `{"message": "404 Not found"}`.
#[derive(Debug)]
pub struct V4Error(StatusCode, String);

impl V4Error {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        V4Error(status, message.into())
    }
    fn not_found(what: &str) -> Self {
        V4Error(StatusCode::NOT_FOUND, format!("404 {what} Not Found"))
    }
    fn forbidden() -> Self {
        V4Error(StatusCode::FORBIDDEN, "403 Forbidden".into())
    }
    fn bad(message: impl Into<String>) -> Self {
        V4Error(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for V4Error {
    fn into_response(self) -> Response {
        let mut r = (self.0, axum::Json(json!({"message": self.1}))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer realm=\"berth\"".parse().expect("valid header"));
        }
        r
    }
}

impl From<MetaError> for V4Error {
    fn from(e: MetaError) -> Self {
        let status = match e {
            MetaError::Unavailable(_) | MetaError::Outdated(_) => StatusCode::SERVICE_UNAVAILABLE,
            MetaError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            MetaError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        V4Error(status, e.to_string())
    }
}

/// The result of a `/api/v4` handler.
pub type V4Result = Result<Response, V4Error>;

/// The caller of an API request and the identity it was decided against.
pub struct Session {
    /// Who.
    pub who: Principal,
    /// Their user id.
    pub user: u64,
    /// Identity as decided.
    pub view: Arc<IdentityView>,
}

impl Session {
    /// Identity.
    pub fn id(&self) -> &Identity {
        &self.view.identity
    }

    /// True for an administrator.
    pub fn admin(&self) -> bool {
        self.who.is_admin(self.id())
    }
}

/// Every `/api/v4` handler takes a `Session`: the request is authenticated before it runs.
impl FromRequestParts<Arc<Api>> for Session {
    type Rejection = V4Error;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, Self::Rejection> {
        session(api, parts).await
    }
}

/// Authenticates an API request: a personal access token with the `api` scope, in
/// `PRIVATE-TOKEN` or `Authorization: Bearer`. Failures count toward the login limits.
async fn session(api: &Api, req: &Parts) -> Result<Session, V4Error> {
    let h: &HeaderMap = &req.headers;
    let secret = h
        .get("private-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")))
        .map(str::trim);
    let client = api.config.trusted_proxies.client_of(&req.extensions, &req.headers);
    let caller = Caller { headers: h, client, method: &req.method, path: req.uri.path() };
    if let Err(wait) = api.auth.check_address(client) {
        return Err(V4Error::new(StatusCode::TOO_MANY_REQUESTS, format!("429 Too Many Requests; retry in {}s", wait.as_secs().max(1))));
    }
    let unauthorized = || V4Error::new(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    let Some(secret) = secret else { return Err(unauthorized()) };
    // Management calls are rare and often follow one another through a load balancer
    // (create a project on one node, add a member on the next): each reads identity as the
    // cluster has it now, so a call always sees the calls answered before it.
    let view = api.auth.view(api.meta.identity_now().await?);
    let now = berth_proto::now_ms();
    match view.token_by_secret(secret, now) {
        Some(t) => match t.kind {
            berth_proto::identity::TokenKind::Personal { user } if t.scopes.contains(&TokenScope::Api) => {
                let who = Principal::User { user, token: Some(t.id) };
                let subject = who.subject(&view.identity);
                if let Some(name) = &subject {
                    crate::access_log::note_user(&req.extensions, name);
                }
                api.auth.audit_api(caller, subject.as_deref(), true);
                Ok(Session { who, user, view })
            }
            _ => {
                api.auth.audit_api(caller, None, false);
                Err(V4Error::new(StatusCode::FORBIDDEN, "403 Forbidden - insufficient_scope"))
            }
        },
        None => {
            api.auth.failed_api_login(caller);
            Err(unauthorized())
        }
    }
}

/// Commits an identity change; the outcome, or the error to answer.
pub async fn change(api: &Api, c: IdentityChange) -> Result<Outcome, V4Error> {
    match api.meta.apply(Command::Identity(c)).await? {
        Outcome::Conflict { reason } => Err(V4Error::new(StatusCode::CONFLICT, reason)),
        Outcome::NotFound => Err(V4Error::not_found("")),
        o => Ok(o),
    }
}

/// The id a creating change gave.
pub fn created_id(o: Outcome) -> Result<u64, V4Error> {
    match o {
        Outcome::Created { id } => Ok(id),
        other => Err(V4Error::new(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected outcome {other:?}"))),
    }
}

/// A page of `items` with GitLab's headers (`x-total`, `x-page`, `Link`, ...).
pub fn paged(uri: &Uri, items: Vec<Value>) -> Response {
    let q = crate::handlers::query(uri);
    let per_page = q.get("per_page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(20).clamp(1, 100);
    let page = q.get("page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1);
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let body: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let mut r = (StatusCode::OK, axum::Json(Value::Array(body))).into_response();
    let h = r.headers_mut();
    let mut set = |k: &'static str, v: String| {
        h.insert(k, v.parse().expect("digits"));
    };
    set("x-page", page.to_string());
    set("x-per-page", per_page.to_string());
    set("x-total", total.to_string());
    set("x-total-pages", pages.to_string());
    set("x-next-page", if page < pages { (page + 1).to_string() } else { String::new() });
    set("x-prev-page", if page > 1 { (page - 1).to_string() } else { String::new() });
    let path = uri.path();
    let mut links = vec![];
    if page < pages {
        links.push(format!("<{path}?page={}&per_page={per_page}>; rel=\"next\"", page + 1));
    }
    if page > 1 {
        links.push(format!("<{path}?page={}&per_page={per_page}>; rel=\"prev\"", page - 1));
    }
    links.push(format!("<{path}?page=1&per_page={per_page}>; rel=\"first\""));
    links.push(format!("<{path}?page={pages}&per_page={per_page}>; rel=\"last\""));
    if let Ok(v) = links.join(", ").parse() {
        h.insert(header::LINK, v);
    }
    r
}

/// A JSON body, or GitLab's 400.
pub async fn body(b: Body) -> Result<Value, V4Error> {
    let bytes = axum::body::to_bytes(b, 1 << 20).await.map_err(|_| V4Error::bad("400 Bad request - body too large or unreadable"))?;
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| V4Error::bad(format!("400 Bad request - {e}")))
}

/// Milliseconds as GitLab writes times.
pub fn time(ms: u64) -> String {
    humantime_rfc3339(ms)
}

/// A numeric id from the path.
pub fn numeric(Path(id): &Path<String>) -> Result<u64, V4Error> {
    id.parse().map_err(|_| V4Error::not_found(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1970-01-01"), Some(0));
        assert_eq!(parse_time("2030-01-31"), Some(1_896_048_000_000));
        assert_eq!(parse_time("2030-01-31T12:00:00Z"), Some(1_896_048_000_000 + 12 * 3_600_000));
        assert_eq!(parse_time("2030-01-31T12:00:00.123Z"), Some(1_896_048_000_000 + 12 * 3_600_000));
        assert_eq!(parse_time("2030-13-01"), None);
        assert_eq!(parse_time("soon"), None);
        assert_eq!(time(parse_time("2024-02-29").unwrap()), "2024-02-29T00:00:00Z");
    }
}
