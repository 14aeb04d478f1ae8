//! HTTP listeners: the registry API (plain or TLS) and the debug listener (health, metrics).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving HTTP"),
        Some(acceptor) => {
            tokio::pin!(shutdown);
            loop {
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => r?,
                    _ = &mut shutdown => return Ok(()),
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let stream = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::info!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                    };
                    let svc = TowerToHyperService::new(app);
                    if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
        }
    }
}

/// Builds a rustls acceptor from `http.tls`.
pub fn tls_acceptor(tls: &TlsConfig) -> anyhow::Result<Option<TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&tls.certificate, &tls.key) else { return Ok(None) };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("http.tls.certificate: {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .context("http.tls.certificate: not PEM")?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("http.tls.key: {}", key.display()))?,
    ))
    .context("http.tls.key: not PEM")?
    .context("http.tls.key: no private key found")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.minimumtls.as_deref() {
        Some("tls1.3") => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS12, &rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = if tls.clientcas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &tls.clientcas {
            for c in rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(ca)?)) {
                roots.add(c?)?;
            }
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut cfg = builder.with_single_cert(certs, key).context("http.tls: certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(cfg))))
}

/// The debug listener's router: `/debug/health` and Prometheus metrics.
pub fn debug_router(
    registry: Registry,
    metrics_path: String,
    health: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>,
) -> Router {
    Router::new()
        .route(
            "/debug/health",
            get(move || {
                let health = health.clone();
                async move {
                    match health().await {
                        Ok(()) => (axum::http::StatusCode::OK, axum::Json(serde_json::json!({}))),
                        Err(e) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(serde_json::json!({"error": e})),
                        ),
                    }
                }
            }),
        )
        .route(
            &metrics_path,
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut buf = Vec::new();
                    let enc = TextEncoder::new();
                    let _ = enc.encode(&registry.gather(), &mut buf);
                    ([(axum::http::header::CONTENT_TYPE, enc.format_type().to_string())], buf)
                }
            }),
        )
}

/// Binds a listener and reports the real address (useful with port 0).
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await.with_context(|| format!("binding {what} on {addr}"))?;
    let local = l.local_addr()?;
    Ok((l, local))
}
