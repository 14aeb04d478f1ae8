//! `berth geo status`: every site, its nodes, what it holds and lacks, and how far behind it
//! is, as the node asked sees it.

use berth_proto::geo::GeoState;
use berth_proto::{Answer, Query};

use crate::cluster_cli::Admin;
use crate::metadata::remote;
use crate::progress::{human, Unit};

/// Most missing rows read to find the oldest (a site further behind says "more than").
const SCAN_LIMIT: usize = 100_000;

/// One site's line.
#[derive(Debug, serde::Serialize)]
pub struct SiteStatus {
    pub site: String,
    pub nodes: Vec<(u64, String)>,
    pub held: u64,
    pub missing: u64,
    pub missing_bytes: u64,
    pub backfilled: bool,
    /// How long the oldest content it lacks has waited (seconds), as far as the scan looked.
    pub behind_seconds: f64,
}

async fn ask(admin: &Admin, node: &str, q: Query) -> anyhow::Result<Answer> {
    remote::query(admin.peers(), node, &q).await.map_err(|e| anyhow::anyhow!("{node}: {e}"))
}

/// The sites as the node at `node` has them.
pub async fn sites(admin: &Admin, node: &str) -> anyhow::Result<Vec<SiteStatus>> {
    let Answer::Geo(geo) = ask(admin, node, Query::GeoStatus).await? else { anyhow::bail!("{node} answered something else") };
    let GeoState { sites, promoted } = geo;
    if let Some(p) = &promoted {
        eprintln!(
            "this cluster was promoted from site {} (node {}) at log index {} of the cluster before it; it then lacked {} pieces of content ({})",
            p.site,
            p.node_id,
            p.from_index,
            p.missing,
            human(p.missing_bytes, Unit::Bytes)
        );
    }
    let now = berth_proto::now_ms();
    let mut out = Vec::new();
    for (name, s) in sites {
        let mut oldest: Option<u64> = None;
        let (mut after, mut seen) = (None, 0);
        while s.missing > 0 && seen < SCAN_LIMIT {
            let Answer::Placements(page) = ask(admin, node, Query::GeoMissing { site: name.clone(), after: after.clone(), n: 1000 }).await? else {
                anyhow::bail!("{node} answered something else")
            };
            seen += page.len();
            for p in &page {
                oldest = Some(oldest.map_or(p.queued_ms, |o| o.min(p.queued_ms)));
            }
            if page.len() < 1000 {
                break;
            }
            after = page.last().map(|p| p.digest.clone());
        }
        out.push(SiteStatus {
            backfilled: s.backfilled(),
            behind_seconds: oldest.map_or(0.0, |o| now.saturating_sub(o) as f64 / 1000.0),
            site: name,
            nodes: s.nodes.into_iter().collect(),
            held: s.held,
            missing: s.missing,
            missing_bytes: s.missing_bytes,
        });
    }
    Ok(out)
}

/// Prints the sites as a table, or as JSON.
pub async fn print(admin: &Admin, node: &str, json: bool) -> anyhow::Result<()> {
    let sites = sites(admin, node).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sites)?);
        return Ok(());
    }
    if sites.is_empty() {
        println!("no sites: no node of this cluster names berth.geo.site");
        return Ok(());
    }
    println!("{:<16} {:<20} {:>10} {:>10} {:>12} {:>9} {:>10}", "SITE", "NODES", "HELD", "MISSING", "BYTES", "BACKFILL", "BEHIND");
    for s in sites {
        let nodes = s.nodes.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>().join(",");
        println!(
            "{:<16} {:<20} {:>10} {:>10} {:>12} {:>9} {:>9.1}s",
            s.site,
            nodes,
            s.held,
            s.missing,
            human(s.missing_bytes, Unit::Bytes),
            if s.backfilled { "done" } else { "running" },
            s.behind_seconds
        );
    }
    Ok(())
}
