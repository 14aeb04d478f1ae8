//! The access log: one line per request, as Distribution writes it (Apache's combined
//! format: client, user, time, request line, status, bytes, referer, user agent), plus the
//! time to the response head. Lines are `tracing` events with target `access`, so
//! `log.formatter: json` gives each field its own key. `log.accesslog.disabled: true`
//! turns them off.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::Api;

/// Who made a request, filled in by whatever authenticated it (the registry's access
/// check, the token endpoint, `/api/v4`), read when the line is written.
#[derive(Clone, Debug, Default)]
pub struct AccessUser(Arc<OnceLock<String>>);

impl AccessUser {
    /// Names the user of the request carrying this.
    pub fn set(&self, user: &str) {
        let _ = self.0.set(user.to_string());
    }
}

/// Names the user in a request's access line, if the request carries a slot for it.
pub fn note_user(extensions: &axum::http::Extensions, user: &str) {
    if let Some(a) = extensions.get::<AccessUser>() {
        a.set(user);
    }
}

fn header_text(req: &Request, name: header::HeaderName) -> String {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// The middleware writing the lines.
pub async fn log_requests(State(api): State<Arc<Api>>, mut req: Request, next: Next) -> Response {
    if !api.config.access_log {
        return next.run(req).await;
    }
    let started = Instant::now();
    let user = AccessUser::default();
    req.extensions_mut().insert(user.clone());
    let client = api.config.trusted_proxies.client_of(req.extensions(), req.headers()).map_or_else(|| "-".into(), |c| c.to_string());
    let agent = header_text(&req, header::USER_AGENT);
    let referer = header_text(&req, header::REFERER);
    let method = req.method().clone();
    let uri = req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
    let proto = format!("{:?}", req.version());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    // The body's length when known up front (everything but streamed downloads of unknown
    // size, which carry Content-Length themselves).
    let bytes = match resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) {
        Some(n) => n.to_string(),
        None => axum::body::HttpBody::size_hint(resp.body()).exact().map_or_else(|| "-".to_string(), |n| n.to_string()),
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let who = user.0.get().map_or("-", String::as_str);
    tracing::info!(
        target: "access",
        client = %client, user = %who, method = %method, uri = %uri, proto = %proto, status, bytes = %bytes,
        duration_ms = ms, user_agent = %agent,
        "{client} - {who} \"{method} {uri} {proto}\" {status} {bytes} \"{referer}\" \"{agent}\" {ms:.1}ms"
    );
    resp
}
