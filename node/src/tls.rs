//! TLS on the registry listener (`http.tls`): the acceptor, reloaded from its files on
//! SIGHUP without dropping a connection (each new connection takes the acceptor current at
//! its accept), and a self-signed certificate for a first try.

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The acceptor new connections use; swapped whole on reload.
#[derive(Clone)]
pub struct SharedTls(Arc<RwLock<TlsAcceptor>>);

impl SharedTls {
    /// Wraps an acceptor.
    pub fn new(a: TlsAcceptor) -> Self {
        SharedTls(Arc::new(RwLock::new(a)))
    }

    /// The acceptor to use for a connection accepted now.
    pub fn current(&self) -> TlsAcceptor {
        self.0.read().expect("tls lock").clone()
    }

    /// Rebuilds from the configured files; a failure keeps the acceptor in use.
    pub fn reload(&self, cfg: &TlsConfig) -> anyhow::Result<()> {
        let fresh = acceptor(cfg)?.context("http.tls: no certificate configured")?;
        *self.0.write().expect("tls lock") = fresh;
        Ok(())
    }

    /// Reloads on every SIGHUP until the process ends.
    pub fn reload_on_sighup(&self, cfg: TlsConfig) -> anyhow::Result<()> {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let me = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match me.reload(&cfg) {
                    Ok(()) => tracing::info!("http.tls reloaded: new connections use the new certificate"),
                    Err(e) => tracing::warn!("http.tls not reloaded, the old certificate stays in use: {e:#}"),
                }
            }
        });
        Ok(())
    }
}

/// Builds a rustls acceptor from `http.tls` (HTTP/2 and HTTP/1.1 by ALPN; client
/// certificates from `clientcas` are required and verified when given).
pub fn acceptor(tls: &TlsConfig) -> anyhow::Result<Option<TlsAcceptor>> {
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

/// A self-signed certificate and key (PEM) for `hosts` (names or IP addresses), valid for
/// a year: for a first try with TLS, not for production.
pub fn self_signed(hosts: &[String]) -> anyhow::Result<(String, String)> {
    let cert = rcgen::generate_simple_self_signed(hosts.to_vec()).context("making a self-signed certificate")?;
    Ok((cert.cert.pem(), cert.key_pair.serialize_pem()))
}
