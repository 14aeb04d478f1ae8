//! Verification of a site's store: every piece of content the site is recorded as holding
//! (or a random share of it) is read back and re-hashed. What is missing or damaged is
//! deleted and copied again from another site; what cannot be copied now is recorded as
//! missing (`GeoChange::Lost`), so the replicator keeps trying.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::{BlobError, BlobStore, Metadata};
use berth_proto::geo::GeoChange;
use berth_proto::rpc::VerifyProgress;
use berth_proto::{Command, Digest};
use berth_raft_store::SharedState;
use futures::StreamExt;
use sha2::Digest as _;

use super::fetch::Fetcher;
use crate::storage::SiteStore;

/// Content looked at per read of the state.
const PAGE: usize = 500;
/// Most problems named in the report.
const MAX_NAMED: usize = 1000;

/// Verifies one site's store.
pub struct Verifier {
    pub fetcher: Arc<Fetcher>,
    /// The site's store itself (deleting a damaged copy).
    pub site_store: SiteStore,
    /// The same store, metered, for reads.
    pub store: Arc<dyn BlobStore>,
    pub state: SharedState,
    pub meta: Arc<dyn Metadata>,
}

/// What a read-back found.
enum Found {
    Sound,
    Missing,
    Damaged,
}

impl Verifier {
    async fn check(&self, digest: &Digest) -> Result<Found, BlobError> {
        let mut body = match self.store.read(digest, None).await {
            Ok(b) => b,
            Err(BlobError::NotFound) => return Ok(Found::Missing),
            Err(e) => return Err(e),
        };
        let mut h = sha2::Sha256::new();
        while let Some(chunk) = body.next().await {
            h.update(&chunk.map_err(|e| BlobError::Storage(e.to_string()))?);
        }
        Ok(if hex::encode(h.finalize()) == digest.hex() { Found::Sound } else { Found::Damaged })
    }

    /// Runs one pass, sending progress about once a second and a last message with `done`.
    pub async fn run(&self, percent: u32, repair: bool, tx: tokio::sync::mpsc::Sender<VerifyProgress>) {
        let site = self.fetcher.site.clone();
        let total = self.state.geo().sites.get(&site).map_or(0, |s| s.held);
        let mut p = VerifyProgress { total, ..Default::default() };
        let mut named = Vec::new();
        let mut after: Option<String> = None;
        let mut sent = Instant::now();
        let mut lost = Vec::new();
        let result: Result<(), String> = async {
            loop {
                let page = self.state.geo_content(after.as_deref(), PAGE).map_err(|e| format!("reading the state: {e}"))?;
                let Some(last) = page.last() else { break };
                after = Some(last.digest.to_string());
                let short = page.len() < PAGE;
                for item in page.into_iter().filter(|c| c.sites.contains(&site)) {
                    p.looked += 1;
                    if percent < 100 && rand::random::<u32>() % 100 >= percent {
                        continue;
                    }
                    p.checked += 1;
                    let found = self.check(&item.digest).await.map_err(|e| format!("reading {}: {e}", item.digest))?;
                    match found {
                        Found::Sound => continue,
                        Found::Missing => p.missing += 1,
                        Found::Damaged => p.damaged += 1,
                    }
                    tracing::warn!(%site, digest = %item.digest, damaged = matches!(found, Found::Damaged), "verification: this site's copy is missing or damaged");
                    if named.len() < MAX_NAMED {
                        named.push(item.digest.to_string());
                    }
                    if !repair {
                        continue;
                    }
                    if matches!(found, Found::Damaged) {
                        self.site_store.delete_content(&item.digest).await.map_err(|e| format!("deleting the damaged {}: {e}", item.digest))?;
                    }
                    let others: Vec<String> = item.sites.iter().filter(|s| **s != site).cloned().collect();
                    match self.fetcher.ensure(&item.digest, &others).await {
                        Ok(_) => p.repaired += 1,
                        Err(e) => {
                            tracing::warn!(%site, digest = %item.digest, "verification could not repair it now: {e}; the replicator will");
                            lost.push(item.digest.clone());
                        }
                    }
                    if lost.len() >= 100 {
                        p.queued += self.record_lost(&site, std::mem::take(&mut lost)).await?;
                    }
                    if sent.elapsed() > Duration::from_secs(1) {
                        let _ = tx.send(p.clone()).await;
                        sent = Instant::now();
                    }
                }
                if short {
                    break;
                }
            }
            if !lost.is_empty() {
                p.queued += self.record_lost(&site, std::mem::take(&mut lost)).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            p.error = e;
        }
        p.problems = named;
        p.done = true;
        let _ = tx.send(p).await;
    }

    async fn record_lost(&self, site: &str, digests: Vec<Digest>) -> Result<u64, String> {
        let n = digests.len() as u64;
        self.meta.apply(Command::Geo(GeoChange::Lost { site: site.to_string(), digests })).await.map_err(|e| format!("recording what is missing: {e}"))?;
        Ok(n)
    }
}

/// `berth geo verify`: asks the node at `node` to verify its site's store, showing progress
/// on a terminal and a summary at the end. Fails if anything was missing or damaged (after
/// repairing what it could), so that scripts notice.
pub async fn cli(admin: &crate::cluster_cli::Admin, node: &str, percent: u32, repair: bool) -> anyhow::Result<()> {
    use berth_proto::rpc::geo_service_client::GeoServiceClient;
    use berth_proto::rpc::VerifyRequest;
    let channel = admin.peers().channel(node).map_err(anyhow::Error::msg)?;
    let mut stream = GeoServiceClient::new(channel)
        .verify(VerifyRequest { percent, repair })
        .await
        .map_err(|s| anyhow::anyhow!("{node}: {}", s.message()))?
        .into_inner();
    let mut progress = crate::progress::Progress::new("verifying", crate::progress::Unit::Items);
    let mut last = None;
    while let Some(p) = stream.message().await.map_err(|s| anyhow::anyhow!("{node}: {}", s.message()))? {
        progress.total(p.total);
        progress.set(p.looked);
        let done = p.done;
        last = Some(p);
        if done {
            break;
        }
    }
    let Some(p) = last else { anyhow::bail!("{node} ended the verification without a report") };
    progress.finish(p.looked);
    for d in &p.problems {
        println!("{d}");
    }
    println!(
        "checked {} of {} pieces of content: {} missing, {} damaged; {} repaired, {} queued for the replicator",
        p.checked, p.looked, p.missing, p.damaged, p.repaired, p.queued
    );
    if !p.error.is_empty() {
        anyhow::bail!("the verification stopped: {}", p.error);
    }
    if p.missing + p.damaged > 0 && !repair {
        anyhow::bail!("{} pieces of content are missing or damaged (run without --dry-run to repair them)", p.missing + p.damaged);
    }
    Ok(())
}
