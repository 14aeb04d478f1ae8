//! A site's replicator, on every node that names a site: it registers the node with its site,
//! then copies what the site lacks and records each copy through Raft (`GeoChange::Placed`).
//!
//! Two sources of work, both read from this node's state:
//! - the site's missing queue (`geo_missing`): content committed since the site joined. The
//!   nodes of a site split it by digest, so each piece is copied once; a piece left waiting
//!   longer than [`SHARE_TIMEOUT_MS`] (its node is down) is taken by any node of the site.
//! - the backfill: a walk over all content in digest order, for what was committed before the
//!   site joined. Its position is replicated, so a restart carries on where it stopped.
//!
//! Content this site's store already holds (it was pushed here) is recorded without a copy.
//! A copy that fails is retried with exponential backoff; the others go on meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::Metadata;
use berth_proto::geo::{GeoChange, GeoState, Placement, BACKFILL_DONE};
use berth_proto::{Command, Digest, Outcome};
use berth_raft_store::SharedState;
use futures::StreamExt;
use tokio::sync::watch;

use super::fetch::{FetchError, Fetcher};
use super::GeoMetrics;
use crate::config::Geo;

/// Content looked at per step.
const PAGE: usize = 100;
/// Pause when there is nothing to do.
const IDLE: Duration = Duration::from_millis(200);
/// A piece of content missing this long is copied by any node of the site, not only the one
/// whose share it is.
pub const SHARE_TIMEOUT_MS: u64 = 30_000;

/// One site's replicator on one node.
pub struct Replicator {
    /// This node's id.
    pub node_id: u64,
    /// This node's gRPC address as other nodes reach it.
    pub advertise: String,
    /// `berth.geo`.
    pub settings: Geo,
    /// This node's state.
    pub state: SharedState,
    /// Where `Placed` and `Join` are committed.
    pub meta: Arc<dyn Metadata>,
    /// Copies content here.
    pub fetcher: Arc<Fetcher>,
    /// Metrics.
    pub metrics: GeoMetrics,
}

/// A copy that failed: when to try again, and the wait after the next failure.
struct Failing {
    next: Instant,
    backoff: Duration,
}

/// Whether `digest` is this node's share of its site's work: the nodes of the site, in id
/// order, take the digests by their first hex digits modulo their number.
fn my_share(digest: &Digest, nodes: &[u64], me: u64) -> bool {
    let Some(rank) = nodes.iter().position(|n| *n == me) else { return true };
    let hex = digest.to_string();
    let hex = hex.rsplit(':').next().unwrap_or_default();
    let n = u64::from_str_radix(hex.get(..12).unwrap_or("0"), 16).unwrap_or(0);
    n % nodes.len() as u64 == rank as u64
}

/// True while the test hook's pause file exists (`BERTH_TEST_GEO_PAUSE_FILE`): lets a test hold
/// replication back to see fetch-through and resumption.
fn paused() -> bool {
    std::env::var_os("BERTH_TEST_GEO_PAUSE_FILE").is_some_and(|p| std::path::Path::new(&p).exists())
}

impl Replicator {
    fn site(&self) -> &str {
        &self.settings.site
    }

    /// Runs until the node stops.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut failing: HashMap<Digest, Failing> = HashMap::new();
        let mut after: Option<Digest> = None;
        // The oldest missing content seen in the current pass over the queue.
        let mut oldest_in_pass: Option<u64> = None;
        let mut complaint = String::new();
        loop {
            if *stop.borrow() {
                return;
            }
            let geo = self.state.geo();
            self.metrics.export(&geo);
            let worked = self.step(geo, &mut failing, &mut after, &mut oldest_in_pass).await;
            let pause = match worked {
                Ok(true) => Duration::ZERO,
                Ok(false) => IDLE,
                Err(e) => {
                    if e != complaint {
                        tracing::warn!(site = self.site(), "replication: {e}; retrying");
                        complaint = e;
                    }
                    self.settings.backoff
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// One step: register, then copy one page of the queue and one of the backfill. True if
    /// it did anything.
    async fn step(&self, geo: GeoState, failing: &mut HashMap<Digest, Failing>, after: &mut Option<Digest>, oldest: &mut Option<u64>) -> Result<bool, String> {
        let registered = geo.sites.get(self.site()).and_then(|s| s.nodes.get(&self.node_id));
        if registered != Some(&self.advertise) {
            let join = GeoChange::Join { site: self.site().to_string(), node_id: self.node_id, grpc_addr: self.advertise.clone() };
            self.commit(join).await?;
            tracing::info!(site = self.site(), node_id = self.node_id, "this node joined its site");
            // Its own state shows the join once it has applied it: wait a moment for that.
            return Ok(false);
        }
        if paused() {
            return Ok(false);
        }
        let site = &geo.sites[self.site()];
        let nodes: Vec<u64> = site.nodes.keys().copied().collect();
        let now_ms = berth_proto::now_ms();
        let now = Instant::now();

        // The queue: this node's share, and whatever has waited too long.
        let page = self.state.geo_missing(self.site(), after.as_ref(), PAGE).map_err(|e| format!("reading the state: {e}"))?;
        for p in &page {
            *oldest = Some(oldest.map_or(p.queued_ms, |o| o.min(p.queued_ms)));
        }
        if page.len() < PAGE {
            // A whole pass is done: the oldest content it saw is how far the site is behind.
            let behind = oldest.map_or(0.0, |o| now_ms.saturating_sub(o) as f64 / 1000.0);
            self.metrics.behind_seconds.set(behind);
            *oldest = None;
            *after = None;
        } else {
            *after = page.last().map(|p| p.digest.clone());
        }
        let due = |p: &Placement| failing.get(&p.digest).is_none_or(|f| f.next <= now);
        let queue: Vec<Placement> = page
            .into_iter()
            .filter(|p| my_share(&p.digest, &nodes, self.node_id) || now_ms.saturating_sub(p.queued_ms) > SHARE_TIMEOUT_MS)
            .filter(due)
            .collect();

        // The backfill: every node of the site walks it; a sibling's copy is found in the
        // shared store and merely recorded.
        let (backfill, through) = if site.backfilled() {
            (Vec::new(), None)
        } else {
            let from = site.backfill_through.as_deref();
            let page = self.state.geo_content(from, PAGE).map_err(|e| format!("reading the state: {e}"))?;
            let through = match page.last() {
                Some(p) if page.len() == PAGE => p.digest.to_string(),
                _ => BACKFILL_DONE.to_string(),
            };
            let site_name = self.site().to_string();
            (page.into_iter().filter(|p| !p.sites.contains(&site_name)).collect::<Vec<_>>(), Some(through))
        };
        let backfill_len = backfill.len();
        if queue.is_empty() && backfill.is_empty() && through.is_none() {
            return Ok(false);
        }

        let work = queue.into_iter().map(|p| (p, true)).chain(backfill.into_iter().map(|p| (p, false)));
        let results: Vec<(Placement, bool, Result<(u64, bool), FetchError>)> = futures::stream::iter(work)
            .map(|(p, queued)| async move {
                let r = self.fetcher.ensure(&p.digest, &p.sites).await;
                (p, queued, r)
            })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let mut placed = Vec::new();
        let mut backfill_failed = 0;
        for (p, queued, r) in results {
            match r {
                Ok((_, copied)) => {
                    failing.remove(&p.digest);
                    self.metrics.copies.with_label_values(&[if copied { "copied" } else { "present" }]).inc();
                    if copied && queued && p.queued_ms > 0 {
                        self.metrics.lag.observe(now_ms.saturating_sub(p.queued_ms) as f64 / 1000.0);
                    }
                    placed.push(p.digest);
                }
                Err(e) => {
                    if !queued {
                        backfill_failed += 1;
                    }
                    self.metrics.copies.with_label_values(&["failed"]).inc();
                    let f = failing.entry(p.digest.clone()).or_insert(Failing { next: now, backoff: self.settings.backoff });
                    f.next = Instant::now() + f.backoff;
                    f.backoff = (f.backoff * 2).min(self.settings.max_backoff);
                    tracing::warn!(site = self.site(), digest = %p.digest, retry_in_ms = f.backoff.as_millis() as u64, "copy failed: {e}");
                }
            }
        }
        // The backfill moves on only past a page copied whole.
        let through = through.filter(|_| backfill_failed == 0);
        if placed.is_empty() && through.is_none() {
            return Ok(false);
        }
        let n = placed.len();
        self.commit(GeoChange::Placed { site: self.site().to_string(), digests: placed, backfill_through: through }).await?;
        tracing::debug!(site = self.site(), placed = n, backfill = backfill_len, "recorded copies");
        failing.retain(|_, f| f.next + self.settings.max_backoff * 2 > Instant::now());
        Ok(true)
    }

    async fn commit(&self, change: GeoChange) -> Result<(), String> {
        match self.meta.apply(Command::Geo(change)).await {
            Ok(Outcome::Done | Outcome::Unchanged | Outcome::Swept(_)) => Ok(()),
            Ok(other) => Err(format!("the cluster refused: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_of_a_site_split_the_work_once() {
        let nodes = [3, 7, 9];
        for i in 0..200u32 {
            let d = Digest::sha256_of(&i.to_le_bytes());
            let owners = nodes.iter().filter(|n| my_share(&d, &nodes, **n)).count();
            assert_eq!(owners, 1, "{d}");
            assert!(my_share(&d, &nodes, 4), "a node not listed yet does all");
        }
    }
}
