//! Cleanup policies' scheduler. On the leader it starts each policy run that is due (one
//! `CleanupChange::Start`, a compare-and-set on the due time in apply, so a run starts once per
//! cadence whichever node leads and however often it is proposed) and carries forward every run
//! in progress, its own or one a previous leader left: runs record each repository they finish
//! through Raft, so a crash or a change of leader costs at most the repository in hand, which
//! is then cleaned again (deleting a tag twice deletes it once).

use std::sync::Arc;
use std::time::Duration;

use berth_api::cleanup::continue_run;
use berth_api::Api;
use berth_proto::cleanup::{day_ms, CleanupChange, CleanupState};
use berth_proto::{Command, Outcome};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;

/// How often the scheduler looks for due runs: 30 s (a cadence is at least a day), less when
/// the test hook shortens days.
fn tick() -> Duration {
    Duration::from_millis((day_ms() / 2880).clamp(200, 30_000))
}

/// Prometheus metrics of cleanup policies.
#[derive(Clone)]
pub struct CleanupMetrics {
    started: IntCounter,
    finished: IntCounterVec,
    deleted: IntCounter,
    failures: IntCounter,
    running: IntGauge,
}

impl CleanupMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let started = IntCounter::new("berth_cleanup_runs_started_total", "Cleanup policy runs this node started.")?;
        let finished = IntCounterVec::new(
            Opts::new("berth_cleanup_runs_finished_total", "Cleanup policy runs this node ended, by result (complete, or error: the policy did not read or was disabled)."),
            &["result"],
        )?;
        let deleted = IntCounter::new("berth_cleanup_tags_deleted_total", "Tags deleted by cleanup policy runs on this node.")?;
        let failures = IntCounter::new("berth_cleanup_failures_total", "Cleanup policy runs interrupted by a cluster error (resumed later).")?;
        let running = IntGauge::new("berth_cleanup_runs_in_progress", "Cleanup policy runs in progress in the cluster, as this node last saw.")?;
        for m in [Box::new(started.clone()) as Box<dyn prometheus::core::Collector>, Box::new(finished.clone()), Box::new(deleted.clone()), Box::new(failures.clone()), Box::new(running.clone())] {
            registry.register(m)?;
        }
        Ok(CleanupMetrics { started, finished, deleted, failures, running })
    }
}

/// What the scheduler needs.
pub struct Scheduler {
    /// This voter's Raft (the scheduler acts only while it leads).
    pub raft: berth_raft_store::Raft,
    /// The API's view: metadata and the blob store (image configs date the tags).
    pub api: Arc<Api>,
    /// Its metrics.
    pub metrics: CleanupMetrics,
}

/// Starts the scheduler.
pub fn spawn(s: Scheduler, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick()) => {}
                _ = stop.changed() => return,
            }
            let m = s.raft.metrics().borrow().clone();
            if m.current_leader != Some(m.id) {
                continue;
            }
            match s.run_once().await {
                Ok(()) if failing => {
                    tracing::info!("cleanup policies run again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    s.metrics.failures.inc();
                    if !failing {
                        tracing::warn!("a cleanup policy run was interrupted (it resumes where it stopped): {e}");
                    }
                    failing = true;
                }
            }
        }
    });
}

impl Scheduler {
    /// Carries forward every run in progress and starts every due one.
    async fn run_once(&self) -> Result<(), berth_api::MetaError> {
        let policies = self.api.meta.cleanup_policies().await?;
        self.metrics.running.set(policies.values().filter(|s| s.run.is_some()).count() as i64);
        let identity = self.api.meta.identity_now().await?;
        for (&project, state) in policies.iter() {
            let Some(path) = identity.projects.get(&project).map(|p| p.path.clone()) else { continue };
            if state.run.is_some() {
                self.carry(project, &path, state).await?;
                continue;
            }
            let now = berth_proto::now_ms();
            let (Some(due_ms), Some(cadence)) = (state.next_run_ms, state.policy.cadence_ms()) else { continue };
            if !state.policy.enabled || due_ms > now {
                continue;
            }
            let start = CleanupChange::Start { project, due_ms, next_run_ms: now + cadence };
            if self.api.meta.apply(Command::Cleanup(start)).await? != Outcome::Done {
                continue;
            }
            self.metrics.started.inc();
            tracing::info!(project, %path, "cleanup policy run started");
            // The run as recorded (its start time names it).
            let now = self.api.meta.cleanup_policies().await?;
            if let Some(state) = now.get(&project) {
                self.carry(project, &path, state).await?;
            }
        }
        Ok(())
    }

    async fn carry(&self, project: u64, path: &str, state: &CleanupState) -> Result<(), berth_api::MetaError> {
        let report = continue_run(&self.api, project, path, state).await?;
        self.metrics.deleted.inc_by(report.deleted);
        self.metrics.finished.with_label_values(&[if report.error.is_some() { "error" } else { "complete" }]).inc();
        match &report.error {
            Some(e) => tracing::warn!(project, %path, deleted = report.deleted, "cleanup policy run ended early: {e}"),
            None => tracing::info!(project, %path, repositories = report.repositories, deleted = report.deleted, "cleanup policy run finished"),
        }
        Ok(())
    }
}
