//! Connections to other nodes: one lazily connected gRPC channel per address, reused by every
//! caller (Raft replication, forwarded writes, frontends' reads), and the cluster's mutual
//! TLS settings for both ends of those connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::cluster_token::ClusterToken;
use crate::config::ClusterTls;

/// A channel to a peer that carries the cluster token on every call.
pub type PeerChannel = InterceptedService<Channel, ClusterToken>;

/// Inter-node TLS: the cluster CA and this node's identity. Every node is both a server and
/// a client, and both ends verify the other against the cluster CA.
#[derive(Clone)]
pub struct MutualTls {
    ca: Certificate,
    identity: Identity,
}

impl MutualTls {
    /// Reads the PEM files named by `berth.tls`.
    pub fn load(cfg: &ClusterTls) -> anyhow::Result<Self> {
        let read = |p: &Option<std::path::PathBuf>, what: &str| -> anyhow::Result<Vec<u8>> {
            let p = p.as_ref().with_context(|| format!("berth.tls.{what} is required"))?;
            std::fs::read(p).with_context(|| format!("berth.tls.{what}: reading {}", p.display()))
        };
        let ca = read(&cfg.ca, "ca")?;
        let cert = read(&cfg.certificate, "certificate")?;
        let key = read(&cfg.key, "key")?;
        Ok(MutualTls { ca: Certificate::from_pem(ca), identity: Identity::from_pem(cert, key) })
    }

    /// Server side: present this node's certificate, require a client certificate from the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone()).client_ca_root(self.ca.clone())
    }

    fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(self.ca.clone()).identity(self.identity.clone())
    }
}

/// Channels to other nodes, keyed by address.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, PeerChannel>>>,
    tls: Option<MutualTls>,
    token: ClusterToken,
}

impl Peers {
    /// Peers reached in plaintext, or over mutual TLS when `tls` is given; every call carries
    /// `token`.
    pub fn new(tls: Option<MutualTls>, token: ClusterToken) -> Self {
        Peers { channels: Arc::default(), tls, token }
    }

    /// The channel to `addr` (`host:port`), created on first use. Connections are made lazily
    /// and re-established by tonic after failures.
    pub fn channel(&self, addr: &str) -> Result<PeerChannel, String> {
        let mut channels = self.channels.lock().unwrap();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            // Idle channels ping too: a peer's listener closes connections that go silent.
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client()).map_err(|e| format!("TLS for {addr}: {e}"))?;
        }
        let channel = InterceptedService::new(endpoint.connect_lazy(), self.token.clone());
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
