//! The `berth` node: configuration, storage and Raft wiring, HTTP and debug listeners,
//! background workers. This crate only wires; behaviour lives in `api` and `raft-store`.

pub mod access;
pub mod admin_cli;
pub mod backup;
pub mod cleanup;
pub mod cluster_cli;
pub mod cluster_token;
pub mod config;
pub mod gc;
pub mod geo;
pub mod logging;
pub mod membership;
pub mod metadata;
pub mod notify;
pub mod peers;
pub mod probe;
pub mod progress;
pub mod raft;
pub mod raft_network;
pub mod rpc_server;
pub mod server;
pub mod space;
pub mod storage;
pub mod tls;
pub mod workers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderName, HeaderValue};
use berth_api::{Api, ApiConfig, HttpMetrics, Metadata};
use object_store::ObjectStore;

use config::{parse_duration, Config, Role};
use metadata::ClusterMetadata;
use peers::{MutualTls, Peers};
use space::SpaceGuard;
use storage::{MeteredStore, SiteStore, StorageMetrics};

/// Where data goes when nothing says otherwise.
pub const DEFAULT_DATA_DIR: &str = "berth-data";
/// The default listener (Distribution's `:5000`).
pub const DEFAULT_ADDR: &str = "0.0.0.0:5000";
/// The address a node's gRPC listener gets in `berth cluster` commands and, for a lone voter
/// that opens no gRPC listener (none is configured), the address it is recorded under.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:5050";
/// How long requests in flight may finish at shutdown when `http.draintimeout` is not set.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
/// Where health, readiness and metrics are served when `http.debug.addr` is not set.
pub const DEFAULT_DEBUG_ADDR: &str = "127.0.0.1:5001";

/// Everything `berth serve` needs after the command line is read.
pub struct ServeOptions {
    /// Parsed configuration.
    pub config: Config,
    /// Data directory from the command line or `BERTH_DATA_DIR` (wins over `berth.datadir`).
    pub data_dir: Option<PathBuf>,
}

/// Retries of an object store request: a few, within seconds, so that a store that is down
/// turns into a prompt 503 instead of requests hanging for minutes (object_store's default).
fn store_retry() -> object_store::RetryConfig {
    object_store::RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(10), ..Default::default() }
}

fn store_client() -> object_store::ClientOptions {
    object_store::ClientOptions::new().with_connect_timeout(Duration::from_secs(3)).with_timeout(Duration::from_secs(300))
}

pub(crate) fn build_store(cfg: &Config, data_dir: &std::path::Path) -> anyhow::Result<(SiteStore, &'static str)> {
    let s = &cfg.storage;
    if let Some(s3) = &s.s3 {
        let endpoint = s3.regionendpoint.clone();
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_retry(store_retry())
            .with_client_options(store_client())
            .with_region(s3.region.clone().unwrap_or_default())
            .with_bucket_name(s3.bucket.clone().unwrap_or_default());
        if let Some(k) = &s3.accesskey {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &s3.secretkey {
            b = b.with_secret_access_key(k);
        }
        let virtual_hosted = match s3.forcepathstyle {
            Some(f) => !f,
            None => endpoint.is_none(),
        };
        b = b.with_virtual_hosted_style_request(virtual_hosted);
        if let Some(ep) = &endpoint {
            b = b.with_endpoint(ep);
            if ep.starts_with("http://") || s3.secure == Some(false) {
                b = b.with_allow_http(true);
            }
        }
        let store: Arc<dyn ObjectStore> = Arc::new(b.build().context("storage.s3")?);
        let prefix = s3.rootdirectory.clone().unwrap_or_default();
        return Ok((SiteStore::Object(storage::object::ObjectBlobStore::new(store, &prefix)), "s3"));
    }
    if let Some(g) = &s.gcs {
        let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
            .with_retry(store_retry())
            .with_client_options(store_client())
            .with_bucket_name(g.bucket.clone().unwrap_or_default());
        if let Some(k) = &g.keyfile {
            b = b.with_service_account_path(k);
        }
        let store: Arc<dyn ObjectStore> = Arc::new(b.build().context("storage.gcs")?);
        let prefix = g.rootdirectory.clone().unwrap_or_default();
        return Ok((SiteStore::Object(storage::object::ObjectBlobStore::new(store, &prefix)), "gcs"));
    }
    if let Some(a) = &s.azure {
        let mut b = object_store::azure::MicrosoftAzureBuilder::new()
            .with_retry(store_retry())
            .with_client_options(store_client())
            .with_account(a.accountname.clone().unwrap_or_default())
            .with_container_name(a.container.clone().unwrap_or_default());
        if let Some(k) = &a.accountkey {
            b = b.with_access_key(k);
        }
        let store: Arc<dyn ObjectStore> = Arc::new(b.build().context("storage.azure")?);
        let prefix = a.rootdirectory.clone().unwrap_or_default();
        return Ok((SiteStore::Object(storage::object::ObjectBlobStore::new(store, &prefix)), "azure"));
    }
    let root = s
        .filesystem
        .as_ref()
        .and_then(|f| f.rootdirectory.clone())
        .unwrap_or_else(|| data_dir.join("storage"));
    let fs = storage::fs::FsBlobStore::new(&root).with_context(|| format!("storage.filesystem.rootdirectory {}", root.display()))?;
    tracing::info!(root = %root.display(), "blob storage on the filesystem");
    Ok((SiteStore::Fs(fs), "filesystem"))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

/// The most Raft entries a voter may have logged but not applied and still be healthy.
const MAX_APPLY_LAG: u64 = 10_000;

/// `/debug/health`: disk space, Raft (running, a leader known, applying keeps up with the
/// log) or, on a frontend, the voters answering, and the blob store answering.
fn health_check(
    raft: Option<berth_raft_store::types::Raft>,
    learner: bool,
    meta: Arc<dyn Metadata>,
    site: SiteStore,
    spaces: [SpaceGuard; 2],
) -> Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync> {
    Arc::new(move || {
        let (raft, meta, site, spaces) = (raft.clone(), meta.clone(), site.clone(), spaces.clone());
        Box::pin(async move {
            for s in &spaces {
                s.check().map_err(|e| format!("disk: {e}; pushes are refused until space returns"))?;
            }
            match raft {
                Some(raft) => {
                    let m = raft.metrics().borrow().clone();
                    if let Err(e) = &m.running_state {
                        return Err(format!("raft stopped: {e}"));
                    }
                    // A learner (a secondary site) serves reads from its own copy while the
                    // primary is gone.
                    if m.current_leader.is_none() && !learner {
                        return Err("no raft leader".into());
                    }
                    let logged = m.last_log_index.unwrap_or(0);
                    let applied = m.last_applied.map_or(0, |l| l.index);
                    if logged.saturating_sub(applied) > MAX_APPLY_LAG {
                        return Err(format!("raft: applying {} entries behind the log", logged - applied));
                    }
                }
                // A frontend is healthy when the voters answer it.
                None => {
                    meta.catalog(None, 1).await.map_err(|e| e.to_string())?;
                }
            }
            let probe = berth_proto::Digest::sha256_of(b"berth health probe");
            site.inner().stat(&probe).await.map_err(|e| format!("storage: {e}"))?;
            Ok(())
        })
    })
}

/// Reads the files a configuration names (htpasswd, token keys, TLS certificates and
/// `clientcas`, the first administrator's password file) as a start would, without
/// starting: `berth config check`.
pub fn check_files(cfg: &Config) -> anyhow::Result<()> {
    let tls = cfg.http.tls.as_ref().is_some_and(|t| t.certificate.is_some());
    access::authorizer(&cfg.auth, tls, &prometheus::Registry::new())?;
    if let Some(t) = &cfg.http.tls {
        tls::acceptor(t)?;
    }
    if let Some(t) = &cfg.berth.tls {
        peers::MutualTls::load(t)?;
    }
    Ok(())
}

/// Runs a node until SIGTERM or Ctrl-C.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let cfg = opts.config;
    let data_dir = opts
        .data_dir
        .or_else(|| cfg.berth.datadir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let addr = config::normalize_addr(cfg.http.addr.as_deref().unwrap_or(DEFAULT_ADDR))?;
    tracing::info!(data_dir = %data_dir.display(), "starting berth");

    let limits = config::Limits::from_config(&cfg.berth.limits)?;
    // How long requests in flight may finish at shutdown.
    let drain = cfg.http.draintimeout.as_deref().map(parse_duration).transpose()?.unwrap_or(DEFAULT_DRAIN);
    let registry = prometheus::Registry::new();
    let authorizer = access::authorizer(&cfg.auth, cfg.http.tls.as_ref().is_some_and(|t| t.certificate.is_some()), &registry)?;
    let (site, driver) = build_store(&cfg, &data_dir)?;
    site.probe().await.with_context(|| format!("storage.{driver}: the blob store failed its start-up check"))?;
    let blob_space = SpaceGuard::new(site.local_root().into_iter().map(Into::into).collect(), limits.disk_reserve);
    let metered = MeteredStore::new(site.clone(), driver, StorageMetrics::new(&registry)?, blob_space.clone());
    let geo_settings = config::Geo::from_config(&cfg.berth.geo)?;
    // With a site, the API reads through to other sites for content this one lacks.
    let through = geo::through::ThroughStore::new(metered.clone());
    let blobs: Arc<dyn berth_api::BlobStore> = if geo_settings.is_some() { through.clone() } else { metered.clone() };

    server::raise_fd_limit();
    let (listener, local) = server::bind(addr, "http.addr").await?;
    let tls = cfg.berth.tls.as_ref().map(MutualTls::load).transpose()?;
    let role = cfg.berth.role.unwrap_or_default();
    let founds_cluster = cfg.founds_cluster()?;
    let token = cluster_token::ClusterToken::for_config(&cfg.berth, &data_dir, founds_cluster)?;
    let peers = Peers::new(tls.clone(), token.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let meta_space = SpaceGuard::new(vec![data_dir.clone()], limits.disk_reserve);
    let (meta, handover): (Arc<dyn Metadata>, Option<membership::handover::Handover>) = match role {
        Role::Voter | Role::Learner => {
            let bodies = Arc::new(metadata::bodies::ManifestBodies::new(blobs.clone(), metadata::bodies::CACHE_BYTES, &registry)?);
            let verifier = geo::service::VerifierSlot::default();
            let stores = Stores { local: metered.clone(), bodies, verifier: verifier.clone() };
            let Started { meta, handover, state, advertise } =
                start_voter(&cfg, &data_dir, peers.clone(), tls.as_ref(), &token, meta_space.clone(), stores, limits, &registry, stop_rx.clone()).await?;
            if let Some(settings) = geo_settings.clone() {
                let site = geo::Site {
                    settings,
                    node_id: cfg.node_id()?,
                    advertise,
                    state: state.clone(),
                    meta: meta.clone(),
                    store: metered.clone(),
                    through: through.clone(),
                    site_store: site.clone(),
                    verifier,
                    peers: peers.clone(),
                };
                geo::start(site, &registry, stop_rx.clone())?;
            }
            let collector = gc::Collector {
                settings: config::Gc::from_config(&cfg.gc)?,
                raft: handover.raft.clone(),
                state: state.clone(),
                meta: meta.clone(),
                store: site.clone(),
                metrics: gc::GcMetrics::new(&registry)?,
            };
            gc::spawn(collector, stop_rx.clone());
            // Runs with no endpoint too: it unregisters those a previous configuration had, so
            // that events stop being kept.
            let endpoints = config::Endpoint::from_config(&cfg.notifications)?;
            {
                let scheme = if cfg.http.tls.as_ref().is_some_and(|t| t.certificate.is_some()) { "https" } else { "http" };
                let notifier = notify::Notifier {
                    endpoints,
                    raft: handover.raft.clone(),
                    state: state.clone(),
                    meta: meta.clone(),
                    base_url: cfg.http.host.clone().unwrap_or_else(|| format!("{scheme}://{local}")).trim_end_matches('/').to_string(),
                    source_addr: local.to_string(),
                    metrics: notify::NotifyMetrics::new(&registry)?,
                };
                notify::spawn(notifier, stop_rx.clone());
            }
            (meta, Some(handover))
        }
        Role::Frontend => {
            let voters = cfg.berth.peers.clone().unwrap_or_default().0;
            // A frontend of a site asks the site's nodes (its peers, which share its store) to
            // bring in content the site lacks.
            if let Some(g) = &geo_settings {
                through.arm_remote(g.site.clone(), peers.clone(), voters.clone());
            }
            tracing::info!(?voters, "frontend: metadata is served by the voters");
            let remote = metadata::frontend::RemoteMetadata::new(peers, voters, &registry)?;
            let meta = Arc::new(ClusterMetadata::new(Arc::new(remote)));
            workers::spawn_identity_refresher(meta.clone(), stop_rx.clone());
            (meta, None)
        }
    };

    let api = Arc::new(Api {
        meta: meta.clone(),
        blobs,
        config: ApiConfig {
            delete_enabled: cfg.delete_enabled(),
            read_only: cfg.read_only(),
            body_rate: berth_api::handlers::BodyRate { bytes_per_sec: limits.min_body_rate, window: limits.body_rate_window },
            trusted_proxies: cfg.trusted_proxies()?,
            access_log: cfg.log.accesslog.disabled != Some(true),
            max_manifest_bytes: limits.max_manifest_bytes,
        },
        metrics: HttpMetrics::new(&registry)?,
        auth: Arc::new(authorizer),
    });
    if let Some(h) = &handover {
        let scheduler = cleanup::Scheduler { raft: h.raft.clone(), api: api.clone(), metrics: cleanup::CleanupMetrics::new(&registry)? };
        cleanup::spawn(scheduler, stop_rx.clone());
    }
    let mut app = berth_api::router(api);
    let extra: Vec<(HeaderName, HeaderValue)> = cfg
        .http
        .headers
        .iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
        .filter_map(|(k, v)| Some((HeaderName::try_from(k).ok()?, HeaderValue::try_from(v).ok()?)))
        .collect();
    if !extra.is_empty() {
        app = app.layer(axum::middleware::map_response(move |mut r: axum::response::Response| {
            let extra = extra.clone();
            async move {
                for (k, v) in extra {
                    r.headers_mut().append(k, v);
                }
                r
            }
        }));
    }
    let http_tls = match &cfg.http.tls {
        Some(t) => match tls::acceptor(t)? {
            Some(a) => {
                let shared = tls::SharedTls::new(a);
                shared.reload_on_sighup(t.clone())?;
                Some(shared)
            }
            None => None,
        },
        None => None,
    };

    let raft = handover.as_ref().map(|h| h.raft.clone());
    if let Some(raft) = &raft {
        workers::spawn_raft_metrics(raft.clone(), &registry, stop_rx.clone())?;
    }
    {
        // Health and metrics are always served, on loopback unless `http.debug.addr` says
        // where.
        let debug = cfg.http.debug.clone().unwrap_or_default();
        let path = debug.prometheus.as_ref().and_then(|p| p.path.clone()).unwrap_or_else(|| "/metrics".into());
        let daddr = debug.addr.clone().unwrap_or_else(|| DEFAULT_DEBUG_ADDR.to_string());
        let health = health_check(raft.clone(), role == Role::Learner, meta.clone(), site.clone(), [meta_space.clone(), blob_space.clone()]);
        let ready_meta = meta.clone();
        let ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync> = Arc::new(move || ready_meta.ready());
        match server::bind(config::normalize_addr(&daddr)?, "http.debug.addr").await {
            Ok((dl, dlocal)) => {
                eprintln!("berth: debug listening on http://{dlocal}");
                let router = server::debug_router(registry.clone(), path, health, ready);
                let mut rx = stop_rx.clone();
                // The same limits as the registry listener: a scraper or a stranger cannot hold it.
                tokio::spawn(async move {
                    let _ = server::serve(dl, router, None, limits, drain, async move {
                        let _ = rx.changed().await;
                    })
                    .await;
                });
            }
            Err(e) if debug.addr.is_some() => return Err(e),
            // The default port is taken (another node on this machine): serve without it.
            Err(e) => tracing::warn!("no debug listener (health, readiness, metrics): {e:#}; set http.debug.addr"),
        }
    }
    let purge = &cfg.storage.maintenance.uploadpurging;
    if purge.enabled.unwrap_or(true) {
        let age = purge.age.as_deref().map(parse_duration).transpose()?.unwrap_or(Duration::from_secs(168 * 3600));
        let interval = purge.interval.as_deref().map(parse_duration).transpose()?.unwrap_or(Duration::from_secs(24 * 3600));
        workers::spawn_upload_purger(site.clone(), age, interval, purge.dryrun.unwrap_or(false), &registry, stop_rx.clone())?;
    }

    let scheme = if http_tls.is_some() { "https" } else { "http" };
    // Tests and scripts read this line to learn the port when http.addr uses port 0.
    eprintln!("berth: listening on {scheme}://{local}");
    tracing::info!(%local, ?role, "listening");
    if !local.ip().is_loopback() && matches!(cfg.auth.kind()?, config::auth::AuthKind::Default) {
        // Loud on purpose: the embedded default is for a first try on one machine.
        let msg = "serving everyone without authentication beyond loopback: anyone who reaches this port may push, \
                   overwrite and delete; configure auth (htpasswd or token), or write `auth: {none: {}}` if that is meant";
        eprintln!("berth: WARNING: {msg}");
        tracing::warn!(%local, "{msg}");
    }
    server::serve(listener, app, http_tls, limits, drain, shutdown_signal()).await?;
    // Requests here have drained; other nodes' forwarded writes still arrive over gRPC until
    // a leader among the others has taken over.
    if let Some(handover) = &handover {
        handover.run().await;
    }
    let _ = stop_tx.send(true);
    if let Some(raft) = raft {
        raft.shutdown().await.ok();
    }
    Ok(())
}

/// The stores a voter or learner serves from.
struct Stores {
    /// This site's store, as other sites read it (no fetch-through).
    local: Arc<MeteredStore>,
    /// Manifest bodies, read through the API's store.
    bodies: Arc<metadata::bodies::ManifestBodies>,
    /// Where the site's verifier goes once it starts.
    verifier: geo::service::VerifierSlot,
}

/// A started voter or learner.
struct Started {
    meta: Arc<dyn Metadata>,
    /// What it needs to hand its leadership over when it stops.
    handover: membership::handover::Handover,
    state: berth_raft_store::state_machine::SharedState,
    /// The gRPC address other nodes reach it at.
    advertise: String,
}

/// Starts Raft and the gRPC server of a voter (or a learner).
async fn start_voter(
    cfg: &Config,
    data_dir: &std::path::Path,
    peers: Peers,
    tls: Option<&MutualTls>,
    token: &cluster_token::ClusterToken,
    space: SpaceGuard,
    stores: Stores,
    limits: config::Limits,
    registry: &prometheus::Registry,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Started> {
    let node_id = cfg.node_id()?;
    let snapshot_every = cfg.berth.snapshotlogs.unwrap_or(raft::SNAPSHOT_EVERY);
    // A listener opens only when the configuration asks for one: a lone node needs no peers.
    let grpc = match cfg.berth.grpcaddr.as_deref() {
        Some(a) => Some(server::bind(config::normalize_addr(a)?, "berth.grpcaddr").await?),
        None => None,
    };
    let bound = grpc.as_ref().map_or_else(|| DEFAULT_GRPC_ADDR.to_string(), |(_, local)| local.to_string());
    let raft_addr = cfg.berth.advertiseaddr.clone().unwrap_or(bound);
    let join = cfg.berth.join.clone().unwrap_or_default().0;
    let founds = cfg.founds_cluster()?;
    // Asked only of a node without Raft data: with `join`, a founder first looks for a
    // cluster that exists already.
    let bootstrap = async {
        if !founds || join.is_empty() {
            return founds;
        }
        match membership::join::existing_cluster(&peers, &join, &raft_addr).await {
            Some(other) => {
                tracing::info!(%other, "a cluster exists already: joining it instead of founding one");
                false
            }
            None => true,
        }
    };
    let network = raft_network::GrpcNetwork::new(peers.clone());
    let node = raft::start(&data_dir.join("raft"), node_id, &raft_addr, snapshot_every, space.clone(), bootstrap, network).await?;
    let contact = membership::failover::LeaderContact::default();
    let learner = cfg.berth.role == Some(Role::Learner);
    let mut voter = metadata::voter::RaftMetadata::new(node.raft.clone(), node.state.clone(), peers.clone(), space.clone(), stores.bodies, registry)?;
    if learner {
        voter = voter.reading_alone_after_silence(contact.clone());
    }
    let voter = Arc::new(voter);
    if let Some((grpc_listener, grpc_local)) = grpc {
        let (raft, state, voter, tls, token, mut stop, local) =
            (node.raft.clone(), node.state.clone(), voter.clone(), tls.cloned(), token.clone(), stop.clone(), stores.local.clone());
        let verifier = stores.verifier.clone();
        let space = space.clone();
        let contact = contact.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.changed().await;
            };
            let geo = geo::service::GeoRpc { store: local, verifier };
            if let Err(e) = rpc_server::serve(raft, state, voter, geo, tls.as_ref(), &token, space, contact, limits, grpc_listener, shutdown).await {
                tracing::error!("gRPC server failed: {e:#}");
            }
        });
        eprintln!("berth: grpc listening on {grpc_local}");
    }
    membership::removed::spawn(node.raft.clone(), peers.clone(), node_id, stop.clone());
    membership::failover::spawn(node.raft.clone(), peers.clone(), contact, stop.clone());
    if !join.is_empty() {
        let joiner = membership::join::Joiner { raft: node.raft.clone(), id: node_id, advertise: raft_addr.clone(), join, peers: peers.clone(), voter: !learner };
        joiner.spawn(stop.clone());
    }
    let handover = membership::handover::Handover { raft: node.raft.clone(), peers: peers.clone(), pause: voter.write_pause() };
    let cluster = Arc::new(ClusterMetadata::new(voter));
    workers::spawn_identity_refresher(cluster.clone(), stop.clone());
    let meta: Arc<dyn Metadata> = cluster;
    if let Some(registry) = limits.registry {
        workers::spawn_limits_setter(meta.clone(), registry, stop.clone());
    }
    // Cluster secrets are seeded by the node that bootstraps the cluster; members that join
    // later receive them through the log.
    if node.sole_voter {
        metadata::ensure_http_secret(meta.as_ref(), cfg.http.secret.as_deref()).await?;
        metadata::ensure_signing_key(meta.as_ref()).await?;
        metadata::ensure_admin(meta.as_ref(), &cfg.berth.admin).await?;
    }
    Ok(Started { meta, handover, state: node.state, advertise: raft_addr })
}
