//! `berth garbage-collect`: what Distribution users run, against the running cluster. The
//! online collector sees everything that becomes garbage through the log; this command finds
//! what it cannot see, puts it on the review queue, and sweeps the queue:
//!
//! 1. every piece of content in the blob store that nothing links or holds (an upload whose
//!    node died before the link committed, data from before garbage collection existed);
//! 2. with `--delete-untagged`, every blob link no manifest uses and every manifest that no
//!    tag, index or subject keeps, including those that became so before this build;
//! 3. then it sweeps what has waited `--review-after` (default: `gc.reviewafter`), as the
//!    workers do, until nothing more is due. `--review-after 0s` empties the queue now, as
//!    Distribution does; like Distribution's, it may then refuse a push in flight whose blobs
//!    were uploaded but whose manifest was not (nothing acknowledged is lost).
//!
//! It talks to the cluster like a frontend (the cluster token and `berth.tls` of the config)
//! and reads and deletes the blob store the config names. `--dry-run` changes nothing.

use std::time::Duration;

use anyhow::{bail, Context};
use berth_api::MetaError;
use berth_proto::{Answer, Command, Digest, GcItem, GcStatus, Outcome, Query, Request};

use crate::config::Config;
use crate::metadata::frontend::RemoteMetadata;
use crate::metadata::MetadataBackend;
use crate::progress::{Progress, Unit};
use crate::storage::SiteStore;

/// Items asked about or offered in one request.
const PAGE: usize = 1000;

/// What to do.
pub struct Options {
    /// Report, change nothing.
    pub dry_run: bool,
    /// Also offer unused blob links and untagged manifests.
    pub delete_untagged: bool,
    /// Sweep what has waited this long (default `gc.reviewafter`).
    pub review_after: Option<Duration>,
}

/// What was found and done.
#[derive(Debug, Default)]
pub struct Summary {
    /// Content in the store.
    pub stored: u64,
    /// Of it, content nothing links or holds, and its bytes.
    pub orphans: u64,
    pub orphan_bytes: u64,
    /// Unused links and untagged manifests found (with `--delete-untagged`).
    pub links: u64,
    pub manifests: u64,
    /// Swept: manifests, links, content deleted and its bytes.
    pub swept_manifests: u64,
    pub swept_links: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// The queue afterwards.
    pub status: GcStatus,
}

struct Cluster {
    remote: RemoteMetadata,
}

impl Cluster {
    async fn ask(&self, q: Query) -> anyhow::Result<Answer> {
        Ok(self.remote.query(q).await?)
    }

    async fn apply(&self, command: Command) -> anyhow::Result<Outcome> {
        match self.remote.apply(Request { command, at_ms: berth_proto::now_ms() }).await {
            Err(MetaError::Outdated(_)) => bail!("a member of the cluster runs a build without garbage collection (log protocol 4): upgrade every node first"),
            other => Ok(other?),
        }
    }

    async fn collectable(&self, items: Vec<GcItem>) -> anyhow::Result<Vec<(GcItem, bool)>> {
        match self.ask(Query::GcCollectable(items.clone())).await? {
            Answer::GcCollectable(v) if v.len() == items.len() => Ok(items.into_iter().zip(v).collect()),
            other => bail!("unexpected answer {other:?}"),
        }
    }
}

/// Runs the command against the voter at `node`.
pub async fn run(cfg: &Config, node: &str, opts: Options) -> anyhow::Result<Summary> {
    let tls = cfg.berth.tls.as_ref().map(crate::MutualTls::load).transpose()?;
    let data_dir = cfg.berth.datadir.clone().unwrap_or_else(|| crate::DEFAULT_DATA_DIR.into());
    let token = crate::cluster_token::ClusterToken::for_config(&cfg.berth, &data_dir, false)?;
    let peers = crate::peers::Peers::new(tls, token);
    let remote = RemoteMetadata::new(peers, vec![node.to_string()], &prometheus::Registry::new())?;
    let cluster = Cluster { remote };
    let (store, _) = crate::build_store(cfg, &data_dir)?;
    let review_after = match opts.review_after {
        Some(d) => d,
        None => crate::config::Gc::from_config(&cfg.gc)?.review_after,
    };
    let mut summary = Summary::default();

    // 1. The store.
    let content = store.list_content().await.context("listing the blob store")?;
    summary.stored = content.len() as u64;
    let sizes: std::collections::HashMap<Digest, u64> = content.iter().cloned().collect();
    let mut orphans = Vec::new();
    let mut p = Progress::new("checking stored content", Unit::Items);
    p.total(summary.stored);
    for (i, page) in content.chunks(PAGE).enumerate() {
        let items = page.iter().map(|(d, _)| GcItem::Content { digest: d.clone() }).collect();
        for (item, garbage) in cluster.collectable(items).await? {
            if let (GcItem::Content { digest }, true) = (&item, garbage) {
                summary.orphans += 1;
                summary.orphan_bytes += sizes.get(digest).copied().unwrap_or(0);
                orphans.push(item);
            }
        }
        p.set(((i + 1) * PAGE).min(content.len()) as u64);
    }
    p.finish(summary.stored);

    // 2. Links and manifests.
    let mut offered = orphans;
    if opts.delete_untagged {
        let mut after = None;
        let mut p = Progress::new("checking links and manifests", Unit::Items);
        let mut seen = 0;
        loop {
            let page = match cluster.ask(Query::GcScan { after: after.clone(), n: PAGE as u64 }).await? {
                Answer::GcScan(v) => v,
                other => bail!("unexpected answer {other:?}"),
            };
            let Some(last) = page.last().cloned() else { break };
            seen += page.len() as u64;
            for (item, garbage) in cluster.collectable(page).await? {
                match (&item, garbage) {
                    (GcItem::Link { .. }, true) => summary.links += 1,
                    (GcItem::Manifest { .. }, true) => summary.manifests += 1,
                    _ => continue,
                }
                offered.push(item);
            }
            p.set(seen);
            after = Some(last);
        }
        p.finish(seen);
    }
    if opts.dry_run {
        summary.status = status(&cluster).await?;
        return Ok(summary);
    }
    for page in offered.chunks(PAGE) {
        cluster.apply(Command::GcEnqueue(page.to_vec())).await?;
    }

    // 3. The sweep, until nothing more is due (what one sweep frees is queued anew, and is due
    // at once with no review delay).
    let mut p = Progress::new("sweeping", Unit::Items);
    let mut swept = 0;
    for _ in 0..10_000 {
        let until = berth_proto::now_ms().saturating_sub(review_after.as_millis() as u64);
        let mut due = Vec::new();
        for manifests in [true, false] {
            match cluster.ask(Query::GcDue { manifests, until_ms: until, n: PAGE as u64 }).await? {
                Answer::GcDue(v) => due.extend(v.into_iter().map(|(i, _)| i)),
                other => bail!("unexpected answer {other:?}"),
            }
        }
        if due.is_empty() {
            break;
        }
        for batch in due.chunks(100) {
            let Outcome::Swept(done) = cluster.apply(Command::GcSweep(batch.to_vec())).await? else {
                bail!("a sweep was answered with something other than what it swept");
            };
            swept += batch.len() as u64;
            p.set(swept);
            let mut deleted = Vec::new();
            for (item, done) in batch.iter().zip(done) {
                match (item, done) {
                    (GcItem::Manifest { .. }, true) => summary.swept_manifests += 1,
                    (GcItem::Link { .. }, true) => summary.swept_links += 1,
                    (GcItem::Content { digest }, true) => {
                        let size = store.inner().stat(digest).await.ok().flatten().unwrap_or(0);
                        if let Err(e) = delete(&store, digest).await {
                            // Lift the marks of what did go before stopping.
                            if !deleted.is_empty() {
                                cluster.apply(Command::GcDeleted { digests: deleted }).await?;
                            }
                            return Err(e);
                        }
                        deleted.push(digest.clone());
                        summary.deleted += 1;
                        summary.deleted_bytes += size;
                    }
                    _ => {}
                }
            }
            if !deleted.is_empty() {
                cluster.apply(Command::GcDeleted { digests: deleted }).await?;
            }
        }
    }
    p.finish(swept);
    summary.status = status(&cluster).await?;
    Ok(summary)
}

async fn delete(store: &SiteStore, digest: &Digest) -> anyhow::Result<()> {
    store.delete_content(digest).await.with_context(|| format!("deleting {digest} from the blob store (its mark stays; the leader finishes it)"))
}

async fn status(cluster: &Cluster) -> anyhow::Result<GcStatus> {
    match cluster.ask(Query::GcStatus).await? {
        Answer::GcStatus(s) => Ok(s),
        other => bail!("unexpected answer {other:?}"),
    }
}

impl Summary {
    /// The lines printed at the end.
    pub fn report(&self, dry_run: bool) -> String {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let mut out = format!(
            "store: {} pieces of content; {} that nothing links or holds ({:.1} MiB)\n",
            self.stored,
            self.orphans,
            mib(self.orphan_bytes)
        );
        if self.links + self.manifests > 0 {
            out += &format!("garbage in the state: {} unused blob links, {} manifests no tag keeps\n", self.links, self.manifests);
        }
        if dry_run {
            out += "dry run: nothing changed\n";
        } else {
            out += &format!(
                "swept: {} manifests, {} blob links; deleted {} pieces of content ({:.1} MiB)\n",
                self.swept_manifests,
                self.swept_links,
                self.deleted,
                mib(self.deleted_bytes)
            );
        }
        out += &format!("review queue: {} items waiting, {} being deleted\n", self.status.queued, self.status.deleting.len());
        out
    }
}
