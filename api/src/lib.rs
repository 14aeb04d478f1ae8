//! Berth's HTTP API: the OCI distribution-spec v1.1 router and its error mapping. It works on
//! metadata and blobs only through the traits in [`backend`], which the node implements.

pub mod access_log;
pub mod auth;
pub mod backend;
pub mod cleanup;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod handlers;
pub mod inventory;
pub mod iso_time;
pub mod metrics;
pub mod upload_state;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

pub use backend::{BlobError, BlobStore, ByteStream, MetaError, Metadata};
use endpoint::Endpoint;
pub use error::{ApiError, Code};
use error::ErrorNote;
use handlers::ApiResult;
pub use metrics::HttpMetrics;

/// Behaviour switches taken from the configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Whether blob, manifest and tag deletes are allowed (`storage.delete.enabled`).
    pub delete_enabled: bool,
    /// Refuse every write (`storage.maintenance.readonly.enabled`).
    pub read_only: bool,
    /// The slowest an upload body may arrive before it is cut.
    pub body_rate: handlers::BodyRate,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: client::TrustedProxies,
    /// Write an access log line per request.
    pub access_log: bool,
    /// Largest manifest body a push may store (`berth.limits.maxmanifestbytes`).
    pub max_manifest_bytes: usize,
}

/// Everything a request handler needs.
pub struct Api {
    /// Registry metadata (consensus-backed).
    pub meta: Arc<dyn Metadata>,
    /// Blob bytes.
    pub blobs: Arc<dyn BlobStore>,
    /// Behaviour switches.
    pub config: ApiConfig,
    /// HTTP metrics.
    pub metrics: HttpMetrics,
    /// Who may do what.
    pub auth: Arc<auth::Authorizer>,
}

/// The distribution API router. Every path goes through one dispatcher, which parses the
/// endpoint first (repository names contain slashes).
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/jwt/auth", axum::routing::get(handlers::token::issue))
        .nest("/api/v4", handlers::v4::router())
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(api.clone(), access_log::log_requests))
        .with_state(api)
}

async fn dispatch(State(api): State<Arc<Api>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let endpoint = Endpoint::parse(req.uri().path());
    let label = endpoint.as_ref().map_or("unknown", |e| e.label(&method));
    let _in_flight = api.metrics.start(label);
    let path = req.uri().path().to_string();
    let has_body = req.headers().contains_key(axum::http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0");
    // The version check is what load balancers and clients probe: a node that cannot serve
    // (not joined yet, no leader for a while) says so there, before any login.
    let mut not_ready = matches!(endpoint, Some(Endpoint::Base)).then(|| api.meta.ready().err()).flatten();
    if not_ready.is_some() {
        // Stale rather than lost, perhaps (a node just started): one shared read decides.
        let _ = api.meta.identity_now().await;
        not_ready = api.meta.ready().err();
    }
    let mut resp = match endpoint {
        Some(_) if not_ready.is_some() => {
            let why = not_ready.unwrap_or_default();
            ApiError::from(MetaError::Unavailable(format!("this node cannot serve: {why}"))).into_response()
        }
        Some(ep) => {
            let allow = allowed(&api.config, &ep);
            // A request body is not `Sync`, so the decision looks at the head alone.
            let (head, body) = req.into_parts();
            let mut resp = match authorize(&api, &ep, &head).await {
                Ok(grant) => {
                    if let Some(user) = &grant.subject {
                        access_log::note_user(&head.extensions, user);
                    }
                    route(&api, ep, Request::from_parts(head, body), &grant).await.unwrap_or_else(IntoResponse::into_response)
                }
                Err(refused) => refused,
            };
            if resp.status() == StatusCode::METHOD_NOT_ALLOWED || (method == Method::OPTIONS && resp.status().is_success()) {
                resp.headers_mut().insert(axum::http::header::ALLOW, allow);
            }
            resp
        }
        None => ApiError::new(Code::Unsupported, "no such endpoint").status(StatusCode::NOT_FOUND).into_response(),
    };
    resp.headers_mut().insert("Docker-Distribution-API-Version", HeaderValue::from_static("registry/2.0"));
    let status = resp.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        // The error may have been answered before the body was read; the connection cannot be
        // reused safely, so say so instead of letting a client send its next request into it.
        resp.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    api.metrics.finish(method.as_str(), label, status.as_u16(), started.elapsed().as_secs_f64());
    if let Some(ErrorNote(note)) = resp.extensions().get::<ErrorNote>() {
        if status.is_server_error() {
            tracing::warn!(%method, %path, status = status.as_u16(), "{note}");
        } else {
            tracing::info!(%method, %path, status = status.as_u16(), "{note}");
        }
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), "request");
    }
    resp
}

/// What the caller may do, or the response that refuses them.
async fn authorize(api: &Api, ep: &Endpoint, req: &axum::http::request::Parts) -> Result<auth::Grant, Response> {
    if api.auth.is_open() {
        return Ok(auth::Grant::everything(None));
    }
    let from = match ep {
        Endpoint::UploadStart { .. } => handlers::query(&req.uri).remove("from"),
        _ => None,
    };
    let needs = auth::needs(ep, &req.method, from.as_deref());
    let client = api.config.trusted_proxies.client_of(&req.extensions, &req.headers);
    let caller = auth::Caller { headers: &req.headers, client, method: &req.method, path: req.uri.path() };
    api.auth.authorize(caller, &needs, api.meta.as_ref()).await
}

/// The `Allow` header for an endpoint: its methods less those the configuration turns off.
fn allowed(config: &ApiConfig, ep: &Endpoint) -> HeaderValue {
    let list: Vec<&str> = ep
        .methods()
        .iter()
        .filter(|m| !(config.read_only && !matches!(**m, Method::GET | Method::HEAD)))
        .filter(|m| !(!config.delete_enabled && **m == Method::DELETE))
        .map(Method::as_str)
        .collect();
    HeaderValue::from_str(&list.join(", ")).expect("method names are valid header text")
}

fn not_allowed() -> ApiResult {
    Err(ApiError::new(Code::Unsupported, "method not allowed for this endpoint"))
}

async fn route(api: &Api, ep: Endpoint, req: Request, grant: &auth::Grant) -> ApiResult {
    let (parts, body) = req.into_parts();
    let m = &parts.method;
    if api.config.read_only && matches!(*m, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        return Err(ApiError::new(Code::Unsupported, "the registry is in read-only mode"));
    }
    match ep {
        // What GitLab asks before it deletes a tag: the `Allow` header (set by `dispatch`)
        // says whether `DELETE` works here.
        _ if *m == Method::OPTIONS => Ok(StatusCode::OK.into_response()),
        Endpoint::Base => match *m {
            Method::GET | Method::HEAD => Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()),
            _ => not_allowed(),
        },
        Endpoint::Catalog if *m == Method::GET => handlers::listing::catalog(api, &parts.uri).await,
        Endpoint::Tags { name } if *m == Method::GET => handlers::listing::tags(api, &name, &parts.uri).await,
        Endpoint::Referrers { name, digest } if *m == Method::GET => {
            handlers::listing::referrers(api, &name, &digest, &parts.uri).await
        }
        Endpoint::Manifest { name, reference }
            if matches!(*m, Method::GET | Method::HEAD | Method::PUT | Method::DELETE) =>
        {
            handlers::manifests::handle(api, m, &name, &reference, &parts.headers, body).await
        }
        Endpoint::Blob { name, digest } if matches!(*m, Method::GET | Method::HEAD | Method::DELETE) => {
            handlers::blobs::handle(api, m, &name, &digest, &parts.headers).await
        }
        Endpoint::UploadStart { name } if *m == Method::POST => {
            handlers::uploads::start(api, &name, &parts.uri, body, grant).await
        }
        Endpoint::Upload { name, id }
            if matches!(*m, Method::GET | Method::PATCH | Method::PUT | Method::DELETE) =>
        {
            handlers::uploads::handle(api, m, &name, &id, &parts.uri, &parts.headers, body).await
        }
        _ => not_allowed(),
    }
}
