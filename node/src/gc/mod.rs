//! Online garbage collection: two workers (manifests; blob links and bytes) that run on the
//! leader and sweep what has waited on the review queue for `gc.reviewafter`.
//!
//! What is garbage, and the queue, are the state's (`berth_raft_store::state::gc`): every change
//! queues what it may have made garbage, and a sweep is one Raft command that decides again in
//! log order, so a push that lands between a worker's look and its sweep keeps what it uses.
//! Bytes go in three steps: `GcSweep(Content)` marks them (from then on no link or manifest may
//! name them, so no push can come to rely on them), the worker deletes them from the store,
//! and `GcDeleted` lifts the mark. Uploads and pushes look for their bytes once more after
//! they commit and put them back if a sweep took them in between (see the API's `commit`).
//!
//! A mark whose worker died (a crash, a lost leadership) is finished by the next leader's blob
//! worker, but only once it is [`MARK_LEASE`] old; a worker deletes bytes for its own mark only
//! within half that. So two workers never delete for the same mark at once, unless one of them
//! stalls for minutes between its check and its delete (SECURITY.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::Metadata;
use berth_proto::{Command, Digest, GcItem, Outcome};
use berth_raft_store::state_machine::SharedState;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;

use crate::config::Gc;
use crate::storage::SiteStore;

pub mod collect;

/// Items one run of a worker takes off the queue (it runs again at once while it finds more).
const BATCH: usize = 100;

/// Age after which a mark left by another worker is finished by this one.
pub const MARK_LEASE: Duration = Duration::from_secs(600);

/// [`MARK_LEASE`], or what the test hook `BERTH_TEST_GC_MARK_LEASE_MS` sets (so that a test
/// that kills a leader mid-deletion sees its marks finished in seconds). Unset in production.
fn mark_lease() -> Duration {
    static LEASE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LEASE.get_or_init(|| std::env::var("BERTH_TEST_GC_MARK_LEASE_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis).unwrap_or(MARK_LEASE))
}

/// A test hook: `BERTH_TEST_GC_MARK_PAUSE_MS` holds marked content that long before its bytes
/// are deleted, so that tests can push into the window a deletion otherwise closes in a few
/// milliseconds. Unset in production; it only makes deletions slower.
fn mark_pause() -> Option<Duration> {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *PAUSE.get_or_init(|| std::env::var("BERTH_TEST_GC_MARK_PAUSE_MS").ok()?.parse().ok().map(Duration::from_millis))
}

/// What the workers need.
#[derive(Clone)]
pub struct Collector {
    /// The settings.
    pub settings: Gc,
    /// This voter's Raft (workers act only while it leads).
    pub raft: berth_raft_store::Raft,
    /// This voter's state: the queue is read locally.
    pub state: SharedState,
    /// Where sweeps are proposed.
    pub meta: Arc<dyn Metadata>,
    /// The site's blob store.
    pub store: SiteStore,
    /// Its metrics.
    pub metrics: GcMetrics,
}

/// Prometheus metrics of garbage collection.
#[derive(Clone)]
pub struct GcMetrics {
    swept: IntCounterVec,
    bytes: prometheus::IntCounter,
    failures: IntCounterVec,
    queued: IntGauge,
    deleting: IntGauge,
    last_run: IntGaugeVec,
}

impl GcMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let swept = IntCounterVec::new(
            Opts::new("berth_gc_swept_total", "Review-queue items swept, by kind (manifest, link, content) and result (deleted, or kept because something uses it again)."),
            &["kind", "result"],
        )?;
        let bytes = prometheus::IntCounter::new("berth_gc_deleted_bytes_total", "Bytes deleted from the blob store by garbage collection.")?;
        let failures = IntCounterVec::new(Opts::new("berth_gc_failures_total", "Runs of a garbage-collection worker that failed."), &["worker"])?;
        let queued = IntGauge::new("berth_gc_queue_length", "Items on the garbage-collection review queue.")?;
        let deleting = IntGauge::new("berth_gc_deleting", "Content marked for deletion whose bytes are not yet recorded as deleted.")?;
        let last_run = IntGaugeVec::new(Opts::new("berth_gc_last_run_timestamp_seconds", "When a worker last finished a run on this node."), &["worker"])?;
        registry.register(Box::new(swept.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(deleting.clone()))?;
        registry.register(Box::new(last_run.clone()))?;
        Ok(GcMetrics { swept, bytes, failures, queued, deleting, last_run })
    }
}

/// Starts the workers the settings turn on.
pub fn spawn(collector: Collector, stop: watch::Receiver<bool>) {
    let c = Arc::new(collector);
    if let Some(interval) = c.settings.manifests {
        tokio::spawn(run(c.clone(), Worker::Manifests, interval, stop.clone()));
    }
    if let Some(interval) = c.settings.blobs {
        tokio::spawn(run(c.clone(), Worker::Blobs, interval, stop));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    Manifests,
    Blobs,
}

impl Worker {
    fn name(self) -> &'static str {
        match self {
            Worker::Manifests => "manifests",
            Worker::Blobs => "blobs",
        }
    }
}

async fn run(c: Arc<Collector>, worker: Worker, interval: Duration, mut stop: watch::Receiver<bool>) {
    // Marks this worker made, with when: it deletes for them only while they are fresh.
    let mut mine: HashMap<Digest, Instant> = HashMap::new();
    let mut wait = interval;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if let Ok(status) = c.state.gc_status() {
            c.metrics.queued.set(status.queued as i64);
            c.metrics.deleting.set(status.deleting.len() as i64);
        }
        let m = c.raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) {
            mine.clear();
            wait = interval;
            continue;
        }
        match c.run_once(worker, &mut mine).await {
            Ok(n) => {
                if failing {
                    tracing::info!(worker = worker.name(), "garbage collection works again");
                    failing = false;
                }
                c.metrics.last_run.with_label_values(&[worker.name()]).set(berth_proto::now_ms() as i64 / 1000);
                // A full batch: there is more to do now.
                wait = if n >= BATCH { Duration::ZERO } else { interval };
            }
            Err(e) => {
                c.metrics.failures.with_label_values(&[worker.name()]).inc();
                wait = if failing { (wait * 2).min(c.settings.max_backoff) } else { interval };
                if !failing {
                    tracing::warn!(worker = worker.name(), "garbage collection failed (retrying, backing off up to {:?}): {e:#}", c.settings.max_backoff);
                }
                failing = true;
            }
        }
    }
}

impl Collector {
    /// One run: sweeps up to [`BATCH`] due items of the worker's class in one Raft command;
    /// the blob worker first finishes marks left over. Returns how many items it took.
    async fn run_once(&self, worker: Worker, mine: &mut HashMap<Digest, Instant>) -> anyhow::Result<usize> {
        if worker == Worker::Blobs {
            self.finish_marks(mine).await?;
        }
        let until = berth_proto::now_ms().saturating_sub(self.settings.review_after.as_millis() as u64);
        let items: Vec<GcItem> = self.state.gc_due(worker == Worker::Manifests, until, BATCH)?.into_iter().map(|(i, _)| i).collect();
        if items.is_empty() {
            return Ok(0);
        }
        let Outcome::Swept(done) = self.propose(Command::GcSweep(items.clone())).await? else {
            anyhow::bail!("a sweep was answered with something other than what it swept");
        };
        let mut marked = Vec::new();
        for (item, done) in items.iter().zip(done) {
            self.metrics.swept.with_label_values(&[item.kind(), if done { "deleted" } else { "kept" }]).inc();
            match (item, done) {
                (GcItem::Content { digest }, true) => {
                    mine.insert(digest.clone(), Instant::now());
                    marked.push(digest.clone());
                }
                (GcItem::Manifest { repo, digest }, true) => tracing::info!(%repo, %digest, "garbage collection deleted an untagged manifest"),
                _ => {}
            }
        }
        self.delete(marked, mine).await?;
        Ok(items.len())
    }

    /// Deletes the bytes of content this worker marked (while its marks are fresh) and lifts
    /// the marks in one command.
    async fn delete(&self, digests: Vec<Digest>, mine: &mut HashMap<Digest, Instant>) -> anyhow::Result<()> {
        let mut deleted = Vec::new();
        let mut failed = None;
        for digest in digests {
            let fresh = mine.get(&digest).is_some_and(|at| at.elapsed() < mark_lease() / 2);
            if !fresh {
                // Too old to be sure no other worker has taken it over: that one finishes it.
                mine.remove(&digest);
                continue;
            }
            if let Some(pause) = mark_pause() {
                tokio::time::sleep(pause).await;
            }
            let size = self.store.inner().stat(&digest).await.ok().flatten().unwrap_or(0);
            match tokio::time::timeout(self.settings.storage_timeout, self.store.delete_content(&digest)).await {
                Ok(Ok(())) => {
                    self.metrics.bytes.inc_by(size);
                    tracing::debug!(%digest, size, "garbage collection deleted content");
                    deleted.push(digest);
                }
                Ok(Err(e)) => {
                    failed = Some(anyhow::anyhow!("deleting {digest}: {e}"));
                    break;
                }
                Err(_) => {
                    failed = Some(anyhow::anyhow!("deleting {digest} took longer than gc.blobs.storagetimeout"));
                    break;
                }
            }
        }
        if !deleted.is_empty() {
            self.propose(Command::GcDeleted { digests: deleted.clone() }).await?;
            for d in &deleted {
                mine.remove(d);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Finishes marks: this worker's own that failed before (while fresh), and any other's
    /// once [`MARK_LEASE`] old.
    async fn finish_marks(&self, mine: &mut HashMap<Digest, Instant>) -> anyhow::Result<()> {
        let status = self.state.gc_status()?;
        let now = berth_proto::now_ms();
        let mut todo = Vec::new();
        for (digest, at_ms) in status.deleting {
            let abandoned = now.saturating_sub(at_ms) > mark_lease().as_millis() as u64;
            if abandoned && !mine.contains_key(&digest) {
                tracing::info!(%digest, "finishing a garbage-collection mark another worker left");
                mine.insert(digest.clone(), Instant::now());
            }
            if mine.contains_key(&digest) {
                todo.push(digest);
            }
        }
        self.delete(todo, mine).await
    }

    async fn propose(&self, command: Command) -> anyhow::Result<Outcome> {
        let kind = command.kind();
        Ok(tokio::time::timeout(self.settings.transaction_timeout, self.meta.apply(command))
            .await
            .map_err(|_| anyhow::anyhow!("{kind} took longer than gc.transactiontimeout"))??)
    }
}
