//! Sites: content replicated between the blob stores of several sites. The entry point is
//! [`start`], for a node that names its site (`berth.geo.site`).
//!
//! - `fetch.rs`: copying one piece of content from another site, verified.
//! - `replicator.rs`: the site's worker that copies what the site lacks and records it.
//! - `through.rs`: fetch-through, the store the API reads from.
//! - `service.rs`: the gRPC service that streams content to other sites.
//! - `status.rs`: `berth geo status`.
//! - `promote.rs`: `berth geo promote` and `berth geo demote`.
//! - `verify.rs`: re-hashing a site's store and repairing it (`berth geo verify`).
//!
//! Which site holds what is in the Raft state (`raft-store/src/disk/apply/geo.rs`).

pub mod fetch;
pub mod promote;
pub mod replicator;
pub mod service;
pub mod status;
pub mod through;
pub mod verify;

use std::sync::Arc;

use berth_api::{BlobStore, Metadata};
use berth_proto::geo::GeoState;
use berth_raft_store::SharedState;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;

use crate::config::Geo;
use crate::peers::Peers;

/// Replication metrics.
#[derive(Clone)]
pub struct GeoMetrics {
    /// Copies by result: `copied`, `present` (already in this site's store), `failed`,
    /// `corrupt` (the source's bytes did not match their digest).
    pub copies: IntCounterVec,
    /// Bytes received from other sites.
    pub copied_bytes: IntCounter,
    /// Reads served by fetching through, by result.
    pub through: IntCounterVec,
    /// From a piece of content's commit to its copy at this site.
    pub lag: Histogram,
    /// How long the oldest content this site lacks has waited (its replicator's last pass).
    pub behind_seconds: Gauge,
    missing: IntGaugeVec,
    missing_bytes: IntGaugeVec,
    held: IntGaugeVec,
    backfilled: IntGaugeVec,
    nodes: IntGaugeVec,
}

impl GeoMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let per_site = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["site"]);
        let m = GeoMetrics {
            copies: IntCounterVec::new(Opts::new("berth_geo_copies_total", "Content copied to this site, by result."), &["result"])?,
            copied_bytes: IntCounter::new("berth_geo_copied_bytes_total", "Bytes copied to this site from other sites.")?,
            through: IntCounterVec::new(Opts::new("berth_geo_fetch_through_total", "Reads of content this site lacked, fetched from another site, by result."), &["result"])?,
            lag: Histogram::with_opts(
                HistogramOpts::new("berth_geo_replication_lag_seconds", "From the commit of a piece of content to its copy at this site.")
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0]),
            )?,
            behind_seconds: Gauge::new("berth_geo_behind_seconds", "How long the oldest content this node's site lacks has waited.")?,
            missing: per_site("berth_geo_missing", "Content committed since the site joined that it does not hold yet.")?,
            missing_bytes: per_site("berth_geo_missing_bytes", "Bytes of blobs the site does not hold yet.")?,
            held: per_site("berth_geo_held", "Content recorded as held by the site.")?,
            backfilled: per_site("berth_geo_backfilled", "1 once the site's backfill has looked at all older content.")?,
            nodes: per_site("berth_geo_nodes", "Nodes of the site.")?,
        };
        registry.register(Box::new(m.copies.clone()))?;
        registry.register(Box::new(m.copied_bytes.clone()))?;
        registry.register(Box::new(m.through.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.behind_seconds.clone()))?;
        for g in [&m.missing, &m.missing_bytes, &m.held, &m.backfilled, &m.nodes] {
            registry.register(Box::new(g.clone()))?;
        }
        Ok(m)
    }

    /// Sets the per-site gauges from the state.
    pub fn export(&self, geo: &GeoState) {
        for (name, s) in &geo.sites {
            self.missing.with_label_values(&[name]).set(s.missing as i64);
            self.missing_bytes.with_label_values(&[name]).set(s.missing_bytes as i64);
            self.held.with_label_values(&[name]).set(s.held as i64);
            self.backfilled.with_label_values(&[name]).set(i64::from(s.backfilled()));
            self.nodes.with_label_values(&[name]).set(s.nodes.len() as i64);
        }
    }
}

/// What a node with a site runs.
pub struct Site {
    /// `berth.geo`.
    pub settings: Geo,
    /// This node's id and gRPC address as others reach it.
    pub node_id: u64,
    pub advertise: String,
    /// This node's state.
    pub state: SharedState,
    /// Where replication records its work.
    pub meta: Arc<dyn Metadata>,
    /// This site's store (without fetch-through).
    pub store: Arc<dyn BlobStore>,
    /// The store the API reads, armed here to fetch through.
    pub through: Arc<through::ThroughStore>,
    /// The store itself, for deleting damaged copies.
    pub site_store: crate::storage::SiteStore,
    /// Where the gRPC service finds the verifier.
    pub verifier: service::VerifierSlot,
    pub peers: Peers,
}

/// Starts fetch-through and the site's replicator.
pub fn start(site: Site, registry: &Registry, stop: watch::Receiver<bool>) -> prometheus::Result<()> {
    let metrics = GeoMetrics::new(registry)?;
    let fetcher = Arc::new(fetch::Fetcher::new(
        site.settings.site.clone(),
        site.store.clone(),
        site.state.clone(),
        site.peers,
        site.settings.bandwidth,
        metrics.clone(),
    ));
    site.through.arm(fetcher.clone());
    let _ = site.verifier.set(Arc::new(verify::Verifier {
        fetcher: fetcher.clone(),
        site_store: site.site_store,
        store: site.store.clone(),
        state: site.state.clone(),
        meta: site.meta.clone(),
    }));
    let replicator = replicator::Replicator {
        node_id: site.node_id,
        advertise: site.advertise,
        settings: site.settings,
        state: site.state,
        meta: site.meta,
        fetcher,
        metrics,
    };
    tokio::spawn(replicator.run(stop));
    Ok(())
}
