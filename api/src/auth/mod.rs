//! Access control: who the caller is and what they may do, decided before a request reaches
//! its handler. One entry point, [`Authorizer::authorize`]; the modes are Distribution's:
//! open (only when configured so), `htpasswd` (Basic, every user may do everything) and
//! `token` (Bearer JWTs from a trusted issuer, each granting named scopes).
//!
//! Refusals answer as Distribution does: 401 with `WWW-Authenticate` and an `UNAUTHORIZED`
//! body listing the access that was needed, or 429 with `Retry-After` once an address or
//! account has failed too often. Every decision is an audit line (`target: "audit"`) and is
//! counted.

pub mod htpasswd;
pub mod issuer;
pub mod keys;
pub mod limiter;
pub mod policy;
pub mod scope;
pub mod signing;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use berth_proto::identity::Identity;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::error::{ApiError, Code};
use crate::backend::Metadata;
pub use htpasswd::Htpasswd;
pub use issuer::IdentityView;
pub use keys::TrustedKeys;
pub use policy::Principal;
pub use limiter::{LoginLimiter, LoginLimits};
pub use scope::{needs, Needs, Scope};
pub use token::{TokenError, TokenVerifier};

/// Where clients are sent for tokens.
#[derive(Debug, Clone)]
pub enum Realm {
    /// A fixed URL (`auth.token.realm`).
    Fixed(String),
    /// The request's host (and `X-Forwarded-Proto`, else `scheme`), then `path`
    /// (`autoredirect`, or Berth's own `/jwt/auth` when no realm is configured).
    FromRequest {
        /// Scheme when no proxy names one.
        scheme: String,
        /// Path on that host.
        path: String,
    },
}

impl Realm {
    /// The realm URL for a request with these headers.
    pub fn url(&self, headers: &HeaderMap) -> String {
        match self {
            Realm::Fixed(r) => r.clone(),
            Realm::FromRequest { scheme, path } => {
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
                format!("{}://{}{path}", h("x-forwarded-proto").unwrap_or(scheme), h("host").unwrap_or("localhost"))
            }
        }
    }
}

/// How callers are identified.
#[derive(Debug)]
pub enum Mode {
    /// Everyone may do everything (`auth: {none: {}}` or the embedded default).
    Open,
    /// Basic authentication against an htpasswd file.
    Htpasswd {
        /// The challenge's realm.
        realm: String,
        /// The users.
        file: Arc<Htpasswd>,
    },
    /// Bearer tokens from an issuer Berth trusts (GitLab, or another token server).
    Token {
        /// Where to get one.
        realm: Realm,
        /// Checks them.
        verifier: TokenVerifier,
        /// The keys they may be signed with.
        keys: TrustedKeys,
    },
    /// Bearer tokens Berth issues itself at `/jwt/auth`, from identity kept in Raft.
    Issuer {
        /// Where to get one.
        realm: Realm,
        /// Checks them (`iss` and `aud` are Berth's own).
        verifier: TokenVerifier,
    },
}

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who (a user name), if anyone.
    pub subject: Option<String>,
    /// `None`: everything; otherwise only these.
    access: Option<Vec<Scope>>,
}

impl Grant {
    /// Everything, for `subject`.
    pub fn everything(subject: Option<String>) -> Grant {
        Grant { subject, access: None }
    }

    /// Only `access`.
    pub fn scoped(subject: Option<String>, access: Vec<Scope>) -> Grant {
        Grant { subject, access: Some(access) }
    }

    /// True when `action` on the resource is granted (`*` grants every action).
    pub fn allows(&self, kind: &str, name: &str, action: &str) -> bool {
        match &self.access {
            None => true,
            Some(list) => list
                .iter()
                .any(|s| s.kind == kind && s.name == name && s.actions.iter().any(|a| a == action || a == "*")),
        }
    }

    /// True when every action of `scope` is granted.
    pub fn covers(&self, scope: &Scope) -> bool {
        scope.actions.iter().all(|a| self.allows(&scope.kind, &scope.name, a))
    }
}

/// The parts of a request a decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The peer's address.
    pub client: Option<IpAddr>,
    /// Method, for the audit line.
    pub method: &'a Method,
    /// Path, for the audit line.
    pub path: &'a str,
}

/// Decides requests.
pub struct Authorizer {
    mode: Mode,
    limiter: LoginLimiter,
    decisions: IntCounterVec,
    refusals: IntCounterVec,
    /// The prepared identity of the last version seen (issuer mode).
    view: Mutex<Option<Arc<IdentityView>>>,
    /// A bcrypt hash of the usual cost, checked for unknown users.
    decoy: Arc<str>,
    verified: VerifiedTokens,
}

/// bcrypt cost of passwords Berth stores (GitLab's).
pub const PASSWORD_COST: u32 = 10;

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("mode", &self.mode).finish()
    }
}

struct Refusal {
    reason: &'static str,
    /// `error=` in a Bearer challenge.
    error: Option<&'static str>,
    subject: Option<String>,
    retry_after: Option<std::time::Duration>,
}

impl Authorizer {
    /// An authorizer for `mode`, its counters registered in `registry`.
    pub fn new(mode: Mode, limits: LoginLimits, registry: &Registry) -> prometheus::Result<Authorizer> {
        let decisions = IntCounterVec::new(
            Opts::new("berth_auth_decisions_total", "Access decisions, by result."),
            &["result"],
        )?;
        let refusals = IntCounterVec::new(
            Opts::new("berth_auth_refusals_total", "Refused requests, by reason."),
            &["reason"],
        )?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(refusals.clone()))?;
        let decoy: Arc<str> = match mode {
            Mode::Issuer { .. } => Arc::from(bcrypt::hash(rand::random::<[u8; 16]>(), PASSWORD_COST).expect("bcrypt").as_str()),
            _ => Arc::from(""),
        };
        Ok(Authorizer { mode, limiter: LoginLimiter::new(limits), decisions, refusals, view: Mutex::new(None), decoy, verified: VerifiedTokens::default() })
    }

    /// `(issuer, service)` when Berth issues its own tokens.
    pub fn issuer(&self) -> Option<(&str, &str)> {
        match &self.mode {
            Mode::Issuer { verifier, .. } => Some((&verifier.issuer, &verifier.service)),
            _ => None,
        }
    }

    /// Identity prepared for decisions, rebuilt when its version moves.
    pub fn view(&self, identity: Arc<Identity>) -> Arc<IdentityView> {
        let mut slot = self.view.lock().expect("view lock");
        match &*slot {
            Some(v) if v.identity.version == identity.version => v.clone(),
            _ => {
                let v = Arc::new(IdentityView::new(identity, self.decoy.clone()));
                *slot = Some(v.clone());
                v
            }
        }
    }

    /// Checks a Basic login against identity (rate-limited per address and account): the
    /// principal and the identity it was found in, or the refusal to send (401 or 429). No
    /// credentials at all is anonymous.
    pub async fn login(&self, caller: Caller<'_>, meta: &dyn Metadata) -> Result<(Principal, Arc<IdentityView>), Response> {
        let Some((user, secret)) = basic_credentials(caller.headers) else {
            return Ok((Principal::Anonymous, self.view(meta.identity())));
        };
        if let Err(wait) = self.limiter.check(&user, caller.client) {
            self.audit(caller, "refused", Some("rate_limited"), Some(&user), "");
            return Err(too_many(wait));
        }
        // A login is decided on identity as the cluster has it now: a token, a user or a
        // membership made through another node a moment ago counts (one read per token
        // request, not per registry request).
        let view = match meta.identity_now().await {
            Ok(fresh) => self.view(fresh),
            Err(e) => return Err(ApiError::from(e).into_response()),
        };
        let found = check_login(&view, &user, &secret, now_ms()).await;
        match found {
            Some(p) => Ok((p, view)),
            None => {
                self.limiter.failed(&user, caller.client);
                self.audit(caller, "refused", Some("bad_credentials"), Some(&user), "");
                Err(ApiError::new(Code::Unauthorized, "HTTP Basic: Access denied. Check your username and password or token")
                    .header(header::WWW_AUTHENTICATE, "Basic realm=\"berth\"".to_string())
                    .into_response())
            }
        }
    }

    /// One audit line per decision, and its counts: `decision` is `granted`, `token_issued`
    /// or `refused`; a refusal names its `reason`.
    fn audit(&self, caller: Caller<'_>, decision: &'static str, reason: Option<&'static str>, user: Option<&str>, scope: &str) {
        let (user, client) = (user.unwrap_or("-"), client_text(&caller));
        match reason {
            None => {
                self.decisions.with_label_values(&["granted"]).inc();
                tracing::info!(target: "audit", decision, user, client = %client, method = %caller.method, path = caller.path, scope = %scope);
            }
            Some(reason) => {
                self.decisions.with_label_values(&["refused"]).inc();
                self.refusals.with_label_values(&[reason]).inc();
                tracing::info!(target: "audit", decision, reason, user, client = %client, method = %caller.method, path = caller.path, scope = %scope);
            }
        }
    }

    /// Records an `/api/v4` request's authentication.
    pub fn audit_api(&self, caller: Caller<'_>, user: Option<&str>, granted: bool) {
        match granted {
            true => self.audit(caller, "granted", None, user, "api"),
            false => self.audit(caller, "refused", Some("insufficient_scope"), user, "api"),
        }
    }

    /// Records an `/api/v4` request with a token that is not one; counts toward the limits
    /// of its address.
    pub fn failed_api_login(&self, caller: Caller<'_>) {
        self.limiter.failed("", caller.client);
        self.audit(caller, "refused", Some("bad_credentials"), None, "");
    }

    /// `Err(retry_after)` when the caller's address has failed too often.
    pub fn check_address(&self, client: Option<IpAddr>) -> Result<(), std::time::Duration> {
        self.limiter.check("", client)
    }

    /// Records a token issued by `/jwt/auth`.
    pub fn audit_issued(&self, caller: Caller<'_>, user: Option<&str>, granted: &[Scope]) {
        let scope = granted.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
        self.audit(caller, "token_issued", None, user, &scope);
    }

    /// True when every caller may do everything.
    pub fn is_open(&self) -> bool {
        matches!(self.mode, Mode::Open)
    }

    /// What the caller may do, if they may do what `needs` requires; otherwise the response
    /// that refuses them.
    pub async fn authorize(&self, caller: Caller<'_>, needs: &Needs, meta: &dyn Metadata) -> Result<Grant, Response> {
        let outcome = match &self.mode {
            Mode::Open => return Ok(Grant::everything(None)),
            Mode::Htpasswd { file, .. } => self.basic(caller, file).await,
            Mode::Token { verifier, keys, .. } => bearer(caller, &self.verified, verifier, keys, needs, |_| true),
            Mode::Issuer { verifier, .. } => {
                let now = now_ms();
                // The credential behind the token must still hold: revoking a token or
                // ending a job takes effect now, not when the JWT expires.
                let check = |view: &IdentityView| {
                    bearer(caller, &self.verified, verifier, &view.keys, needs, |claims| {
                        issuer::principal_of(claims.berth.as_ref()).is_some_and(|p| p.still_valid(&view.identity, now))
                    })
                };
                let view = self.view(meta.identity());
                match check(&view) {
                    // A key or credential made on another node a moment ago: ask the cluster.
                    Err(r) if matches!(r.reason, "token_unknown_key" | "credential_revoked") => match meta.identity_now().await {
                        Ok(fresh) if fresh.version != view.identity.version => check(&self.view(fresh)),
                        _ => Err(r),
                    },
                    other => other,
                }
            }
        };
        match outcome {
            Ok(grant) => {
                self.audit(caller, "granted", None, grant.subject.as_deref(), &scope_text(needs));
                Ok(grant)
            }
            Err(r) => {
                self.audit(caller, "refused", Some(r.reason), r.subject.as_deref(), &scope_text(needs));
                Err(self.refuse(caller, needs, r))
            }
        }
    }

    async fn basic(&self, caller: Caller<'_>, file: &Arc<Htpasswd>) -> Result<Grant, Refusal> {
        let Some((user, password)) = basic_credentials(caller.headers) else {
            return Err(Refusal { reason: "no_credentials", error: None, subject: None, retry_after: None });
        };
        if let Err(wait) = self.limiter.check(&user, caller.client) {
            return Err(Refusal { reason: "rate_limited", error: None, subject: Some(user), retry_after: Some(wait) });
        }
        if !file.check(&user, &password).await {
            self.limiter.failed(&user, caller.client);
            return Err(Refusal { reason: "bad_credentials", error: None, subject: Some(user), retry_after: None });
        }
        Ok(Grant::everything(Some(user)))
    }

    fn refuse(&self, caller: Caller<'_>, needs: &Needs, r: Refusal) -> Response {
        if let Some(wait) = r.retry_after {
            return too_many(wait);
        }
        let challenge = match &self.mode {
            Mode::Open => unreachable!("open mode refuses nothing"),
            Mode::Htpasswd { realm, .. } => format!("Basic realm={}", quote(realm)),
            Mode::Token { realm, verifier, .. } | Mode::Issuer { realm, verifier } => {
                let mut c = format!("Bearer realm={},service={}", quote(&realm.url(caller.headers)), quote(&verifier.service));
                let scopes = scope_text(needs);
                if !scopes.is_empty() {
                    c.push_str(&format!(",scope={}", quote(&scopes)));
                }
                if let Some(e) = r.error {
                    c.push_str(&format!(",error={}", quote(e)));
                }
                c
            }
        };
        let detail: Vec<serde_json::Value> = needs
            .required
            .iter()
            .flat_map(|s| s.actions.iter().map(move |a| serde_json::json!({"Type": s.kind, "Name": s.name, "Action": a})))
            .collect();
        let mut resp = ApiError::new(Code::Unauthorized, "authentication required")
            .detail(if detail.is_empty() { serde_json::Value::Null } else { detail.into() })
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// 429 with `Retry-After` for a caller that failed to log in too often.
fn too_many(wait: std::time::Duration) -> Response {
    ApiError::new(Code::TooManyRequests, "too many failed logins; try again later")
        .header(header::RETRY_AFTER, wait.as_secs().max(1).to_string())
        .into_response()
}

/// The principal `user`/`secret` logs in as in `view`, bcrypt included (off the runtime).
async fn check_login(view: &IdentityView, user: &str, secret: &str, now: u64) -> Option<Principal> {
    let secret = secret.to_string();
    match view.login(user, &secret, now) {
        issuer::Login::Principal(p) => Some(p),
        issuer::Login::Password { user: id, hash } => {
            let ok = tokio::task::spawn_blocking(move || bcrypt::verify(secret, &hash).unwrap_or(false)).await.unwrap_or(false);
            ok.then_some(Principal::User { user: id, token: None })
        }
        issuer::Login::Unknown { decoy } => {
            let _ = tokio::task::spawn_blocking(move || bcrypt::verify(secret, &decoy)).await;
            None
        }
    }
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Tokens whose signature and claims were checked, by SHA-256 of the token: a client sends
/// the same token with every request of a push or pull, and an ECDSA or RSA verification
/// costs more than the rest of a manifest GET. Expiry is checked again on every use.
#[derive(Default)]
struct VerifiedTokens(Mutex<HashMap<[u8; 32], Arc<token::Claims>>>);

/// The most tokens remembered; the memory is dropped whole when it fills.
const VERIFIED_MAX: usize = 16_384;

impl VerifiedTokens {
    fn check(&self, verifier: &TokenVerifier, keys: &TrustedKeys, token: &str) -> Result<Arc<token::Claims>, TokenError> {
        use sha2::Digest as _;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let known = self.0.lock().expect("verified tokens").get(&key).cloned();
        if let Some(c) = known {
            if secs > c.expires + token::LEEWAY_SECS {
                self.0.lock().expect("verified tokens").remove(&key);
                return Err(TokenError::Expired);
            }
            return Ok(c);
        }
        let claims = Arc::new(verifier.verify(keys, token, now)?);
        let mut map = self.0.lock().expect("verified tokens");
        if map.len() >= VERIFIED_MAX {
            map.clear();
        }
        map.insert(key, claims.clone());
        Ok(claims)
    }
}

fn bearer(
    caller: Caller<'_>,
    verified: &VerifiedTokens,
    verifier: &TokenVerifier,
    keys: &TrustedKeys,
    needs: &Needs,
    still_valid: impl FnOnce(&token::Claims) -> bool,
) -> Result<Grant, Refusal> {
    let refusal = |reason, error| Refusal { reason, error, subject: None, retry_after: None };
    let token = caller
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| refusal("no_credentials", None))?;
    let claims = verified.check(verifier, keys, token).map_err(|e| refusal(e.as_str(), e.challenge_error()))?;
    if !still_valid(&claims) {
        return Err(Refusal { reason: "credential_revoked", error: Some("invalid_token"), subject: claims.subject.clone(), retry_after: None });
    }
    let grant = Grant::scoped(claims.subject.clone(), claims.access.clone());
    if !needs.required.iter().all(|s| grant.covers(s)) {
        return Err(Refusal { reason: "insufficient_scope", error: Some("insufficient_scope"), subject: grant.subject, retry_after: None });
    }
    Ok(grant)
}

/// The user and password of a `Basic` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Go's `%q` for the header values Distribution writes.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn scope_text(needs: &Needs) -> String {
    needs.all().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

fn client_text(c: &Caller<'_>) -> String {
    let addr = c.client.map_or_else(|| "-".to_string(), |a| a.to_string());
    match c.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(f) => format!("{addr} (forwarded for {f})"),
        None => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_exactly() {
        let g = Grant::scoped(None, vec![Scope::repository("a/b", &["pull"]), Scope::repository("c", &["*"])]);
        assert!(g.allows("repository", "a/b", "pull"));
        assert!(!g.allows("repository", "a/b", "push"));
        assert!(!g.allows("repository", "a/b/c", "pull"), "no prefix matching");
        assert!(!g.allows("repository", "a", "pull"));
        assert!(g.covers(&Scope::repository("c", &["pull", "push", "delete"])));
        assert!(!g.allows("registry", "catalog", "*"));
        assert!(Grant::everything(None).covers(&Scope::catalog()));
    }

    #[test]
    fn quoting_is_go_style() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("x\ny"), "\"x\\x0ay\"");
    }

    #[test]
    fn basic_header_parses() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic YWxpY2U6cGE6c3M="));
        assert_eq!(basic_credentials(&h), Some(("alice".into(), "pa:ss".into())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&h), None);
    }
}
