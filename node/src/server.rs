//! HTTP listeners: the registry API (plain or TLS) and the debug listener (health, metrics).

use std::net::SocketAddr;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;



/// Serves `app` on `listener` until `shutdown` resolves, within `limits`: at most
/// `max_connections` at once (further clients wait in the backlog), headers within
/// `header_timeout`, and no connection kept past `idle_timeout` without a byte moving.
/// At shutdown it stops accepting, lets requests in flight finish for up to `drain`
/// (`http.draintimeout`), then closes what is left.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<crate::tls::SharedTls>,
    limits: Limits,
    drain: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    // No HTTP/2 keep-alive pings: they would count as traffic and keep idle connections past
    // the idle timeout, which already finds dead peers.
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: wait for descriptors to free up rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Small responses (a config blob, a manifest) leave at once instead of waiting for the
        // client's delayed ACK of the headers.
        let _ = tcp.set_nodelay(true);
        let io = Slotted::new(tcp, slot, limits.idle_timeout);
        let (app, builder, tls, watcher) = (app.clone(), builder.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            // Handlers learn the peer's address (failed-login limits, the audit log).
            let app = tower::ServiceExt::map_request(app, move |mut r: axum::http::Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                r
            });
            let svc = TowerToHyperService::new(app);
            let ended = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(io), svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(shared) => {
                    // The acceptor current at accept: a reload never touches open connections.
                    let acceptor = shared.current();
                    let stream = match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::info!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => return tracing::info!(%peer, "TLS handshake timed out"),
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::info!("connections still open after {drain:?} of draining (http.draintimeout); closing them");
    }
    Ok(())
}

/// Accepts connections while fewer than `limits.max_connections` are open (further peers
/// wait in the backlog), with TCP_NODELAY, and fails a connection's reads once no byte has
/// moved for `limits.idle_timeout`; for listeners that a library serves (the gRPC one).
pub fn capped_incoming(listener: TcpListener, limits: Limits) -> impl futures::Stream<Item = std::io::Result<Slotted<tokio::net::TcpStream>>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold((listener, slots), move |(listener, slots)| async move {
        let slot = slots.clone().acquire_owned().await.expect("semaphore is never closed");
        let next = match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                Ok(Slotted::new(tcp, slot, limits.idle_timeout))
            }
            Err(e) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(e)
            }
        };
        Some((next, (listener, slots)))
    })
}

/// A connection that holds one of its listener's slots until it is dropped, and fails (reads
/// and writes alike) once no byte has moved either way for `idle`: idle keep-alives and
/// silent sockets give their slot back.
pub struct Slotted<T> {
    inner: T,
    _slot: tokio::sync::OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Slotted<T> {
    fn new(inner: T, slot: tokio::sync::OwnedSemaphorePermit, idle: Duration) -> Self {
        Slotted { inner, _slot: slot, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// While the socket waits: has the idle time run out? (Registers a wake-up for when it does.)
    fn expired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }

    /// After a write: counts the bytes as movement, or turns a wait past the deadline into an
    /// error.
    fn after_write(&mut self, cx: &mut TaskContext<'_>, r: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.moved();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle too long")
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Slotted<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Slotted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.moved();
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Slotted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, r)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft open-file limit to the hard one, so connection caps, not `EMFILE`, decide
/// how many clients are served.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                tracing::debug!(from = lim.rlim_cur, to = lim.rlim_max, "raised the open-file limit");
            }
        }
    }
}

/// The debug listener's router: `/debug/health` (storage, Raft, disk: for liveness and
/// alerts), `/debug/ready` (this node serves: for load balancers and readiness probes) and
/// Prometheus metrics.
pub fn debug_router(
    registry: Registry,
    metrics_path: String,
    health: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> Router {
    Router::new()
        .route(
            "/debug/ready",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (axum::http::StatusCode::OK, axum::Json(serde_json::json!({}))),
                        Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"error": e}))),
                    }
                }
            }),
        )
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
