//! Background workers. Each runs until the stop signal flips.

use std::time::Duration;

use tokio::sync::watch;

use crate::storage::SiteStore;

/// Periodically removes uploads older than `age` (`storage.maintenance.uploadpurging`), with
/// metrics: uploads removed (or, in a dry run, found), failed runs, the last run's time.
pub fn spawn_upload_purger(
    store: SiteStore,
    age: Duration,
    interval: Duration,
    dry_run: bool,
    registry: &prometheus::Registry,
    mut stop: watch::Receiver<bool>,
) -> prometheus::Result<()> {
    use prometheus::{IntCounter, IntGauge};
    let purged = IntCounter::new("berth_upload_purge_removed_total", "Abandoned uploads removed by upload purging (in a dry run: found).")?;
    let failures = IntCounter::new("berth_upload_purge_failures_total", "Upload purging runs that failed.")?;
    let last = IntGauge::new("berth_upload_purge_last_run_timestamp_seconds", "When upload purging last finished a run.")?;
    registry.register(Box::new(purged.clone()))?;
    registry.register(Box::new(failures.clone()))?;
    registry.register(Box::new(last.clone()))?;
    tokio::spawn(async move {
        loop {
            match store.purge_uploads(age, dry_run).await {
                Ok(n) => {
                    purged.inc_by(n as u64);
                    last.set(berth_proto::now_ms() as i64 / 1000);
                    match n {
                        0 => {}
                        n if dry_run => tracing::info!(n, "upload purge (dry run) would remove uploads"),
                        n => tracing::info!(n, "purged abandoned uploads"),
                    }
                }
                Err(e) => {
                    failures.inc();
                    tracing::warn!("upload purge failed: {e}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
        }
    });
    Ok(())
}

/// Mirrors openraft's metrics into Prometheus gauges whenever they change.
pub fn spawn_raft_metrics(raft: berth_raft_store::Raft, registry: &prometheus::Registry, mut stop: watch::Receiver<bool>) -> prometheus::Result<()> {
    use prometheus::{IntGauge, Opts};
    let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
        let g = IntGauge::with_opts(Opts::new(name, help))?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let term = gauge("berth_raft_term", "Current Raft term.")?;
    let leader = gauge("berth_raft_leader_id", "Node id of the current leader (0 when unknown).")?;
    let is_leader = gauge("berth_raft_is_leader", "1 when this node is the leader.")?;
    let last_log = gauge("berth_raft_last_log_index", "Index of the last log entry.")?;
    let applied = gauge("berth_raft_applied_index", "Index of the last applied entry.")?;
    let apply_lag = gauge("berth_raft_apply_lag", "Log entries appended but not yet applied.")?;
    let snapshot = gauge("berth_raft_snapshot_index", "Last index included in the latest snapshot.")?;
    let purged = gauge("berth_raft_purged_index", "Last log index purged behind a snapshot.")?;
    let members = gauge("berth_raft_members", "Number of voters and learners in the membership.")?;
    let commit = gauge("berth_raft_commit_index", "Highest index a majority holds (the applied index on followers).")?;
    let member = prometheus::IntGaugeVec::new(
        Opts::new("berth_raft_member", "1 for each member of the cluster; voter=\"true\" for voters."),
        &["node_id", "voter"],
    )?;
    registry.register(Box::new(member.clone()))?;
    let mut rx = raft.metrics();
    tokio::spawn(async move {
        loop {
            {
                let m = rx.borrow_and_update();
                let idx = |l: Option<openraft::LogId<u64>>| l.map_or(0, |l| l.index as i64);
                term.set(m.current_term as i64);
                leader.set(m.current_leader.unwrap_or(0) as i64);
                is_leader.set((m.current_leader == Some(m.id)) as i64);
                last_log.set(m.last_log_index.unwrap_or(0) as i64);
                applied.set(idx(m.last_applied));
                apply_lag.set(m.last_log_index.unwrap_or(0) as i64 - idx(m.last_applied));
                snapshot.set(idx(m.snapshot));
                purged.set(idx(m.purged));
                members.set(m.membership_config.nodes().count() as i64);
                commit.set(crate::raft::committed_index(&m) as i64);
                member.reset();
                let membership = m.membership_config.membership();
                let voters: Vec<u64> = membership.voter_ids().collect();
                for (id, _) in membership.nodes() {
                    member.with_label_values(&[id.to_string().as_str(), if voters.contains(id) { "true" } else { "false" }]).set(1);
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    });
    Ok(())
}

/// How often a node looks for identity changes: a revoked token stops working on every node
/// within about this long (plus one read).
pub const IDENTITY_REFRESH: Duration = Duration::from_millis(250);

/// Puts this voter's configured registry limits in the cluster's state, retrying until the
/// cluster takes them (it may have no leader yet, or a member may still run an older build).
pub fn spawn_limits_setter(meta: std::sync::Arc<dyn berth_api::Metadata>, limits: berth_proto::RegistryLimits, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(200);
        loop {
            match meta.apply(berth_proto::Command::SetLimits(limits)).await {
                Ok(berth_proto::Outcome::Done) => {
                    tracing::info!(?limits, "registry limits set for the cluster");
                    return;
                }
                Ok(_) => return,
                Err(e) => tracing::info!("registry limits not set yet (retrying in {wait:?}): {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    });
}

/// Keeps the node's copy of identity (users, tokens, signing keys) fresh.
pub fn spawn_identity_refresher<B: crate::metadata::MetadataBackend>(
    meta: std::sync::Arc<crate::metadata::ClusterMetadata<B>>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            match meta.refresh_identity().await {
                Ok(()) => failing = false,
                // Without a leader for a while: say so once, not four times a second.
                Err(e) if !failing => {
                    failing = true;
                    tracing::info!("identity not refreshed (retrying): {e}");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(IDENTITY_REFRESH) => {}
                _ = stop.changed() => return,
            }
        }
    });
}
