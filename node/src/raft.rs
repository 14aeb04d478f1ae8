//! Starts this node's Raft instance on durable storage and bootstraps the one-voter cluster
//! (the embedded default) on first start.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_raft_store::{LogStore, Raft, SharedState, StateMachineStore};
use openraft::{BasicNode, SnapshotPolicy};

use crate::raft_network::GrpcNetwork;

/// A started Raft node and its readable state.
pub struct RaftNode {
    /// The Raft handle.
    pub raft: Raft,
    /// The state machine's state, for reads after a linearizable barrier.
    pub state: SharedState,
    /// True when this node is the cluster's only voter (and so already its leader).
    pub sole_voter: bool,
}

/// Milliseconds between the leader's heartbeats.
pub const HEARTBEAT_MS: u64 = 150;
/// A follower's election timeout is drawn from this range. openraft also gives the leader it
/// last heard a lease of `ELECTION_TIMEOUT_MS.1`: a follower's own timer campaigns only after
/// lease plus timeout without a heartbeat (1.5 to 1.8 s). Berth's failover watch
/// (`membership::failover`) makes the best-placed voter campaign as soon as the lease has
/// run out, about 1 s after the last heartbeat.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (600, 900);
/// A leader that no majority has acknowledged for this long would have been replaced by a
/// healthy majority (see `ELECTION_TIMEOUT_MS`): it has lost its quorum.
pub const QUORUM_LOST_AFTER_MS: u64 = 2 * ELECTION_TIMEOUT_MS.1 + 100;

/// Default log entries between snapshots; the log is purged behind each snapshot. A large
/// state snapshots less often (see [`snapshot_due`]).
pub const SNAPSHOT_EVERY: u64 = 10_000;

/// Bytes of the last snapshot per log entry that may gather before the next one: a snapshot
/// costs time in proportion to the state, so a state of 400 MB snapshots every 200,000
/// entries instead of every 10,000, and building snapshots stays a small share of the work.
const SNAPSHOT_BYTES_PER_ENTRY: u64 = 2048;

/// The most the interval grows, as a multiple of `berth.snapshotlogs`: uncapped, a million
/// tags on three voters left `log.redb` files of 2 GB (see BENCHMARKS.md).
const SNAPSHOT_STRETCH: u64 = 4;

/// How often the scheduler looks at how far the log has grown.
const SNAPSHOT_CHECK: Duration = Duration::from_millis(500);

/// Whether a snapshot is due on node `node_id`: `since` entries applied since the last one,
/// whose file was `last_bytes` long, with at least `every` entries between snapshots. Each
/// node waits a little longer than the one before it (up to 3/8 more), so that voters do not
/// all export at once: three exports of a large state together starved the heartbeats of a
/// small machine and cost an election.
pub fn snapshot_due(since: u64, every: u64, last_bytes: u64, node_id: u64) -> bool {
    let base = every.max((last_bytes / SNAPSHOT_BYTES_PER_ENTRY).min(every * SNAPSHOT_STRETCH));
    since >= base + base * (node_id % 4) / 8
}

/// The size of the newest snapshot file under `dir` (0 if none).
fn last_snapshot_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("state").join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
        .unwrap_or(0)
}

/// Builds snapshots when [`snapshot_due`] says so, until the Raft instance stops.
fn spawn_snapshot_scheduler(raft: Raft, dir: std::path::PathBuf, every: u64, node_id: u64) {
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        loop {
            tokio::time::sleep(SNAPSHOT_CHECK).await;
            let (applied, snapshot, stopped) = {
                let m = metrics.borrow_and_update();
                (m.last_applied.map_or(0, |l| l.index), m.snapshot.map_or(0, |l| l.index), m.running_state.is_err())
            };
            if stopped {
                return;
            }
            let since = applied.saturating_sub(snapshot);
            if since > 0 && snapshot_due(since, every, last_snapshot_bytes(&dir), node_id) {
                if raft.trigger().snapshot().await.is_err() {
                    return;
                }
                // Wait for it to be built before looking again.
                let target = applied;
                let _ = raft
                    .wait(Some(Duration::from_secs(600)))
                    .metrics(|m| m.snapshot.is_some_and(|s| s.index >= target) || m.running_state.is_err(), "snapshot built")
                    .await;
            }
        }
    });
}

/// Opens storage under `dir` and starts Raft. A node that has never been part of a cluster
/// asks `bootstrap` (only then) whether to found a one-voter cluster of itself (the embedded
/// default); if not, it waits to be added by a leader. A node that is the only voter waits until it
/// leads, so the first request after start does not fail.
pub async fn start(
    dir: &Path,
    node_id: u64,
    advertise: &str,
    snapshot_every: u64,
    space: crate::space::SpaceGuard,
    bootstrap: impl std::future::Future<Output = bool>,
    network: GrpcNetwork,
) -> anyhow::Result<RaftNode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = openraft::Config {
        cluster_name: "berth".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        // Snapshots are scheduled here, by the size of the state (`spawn_snapshot_scheduler`).
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(1000),
        purge_batch_size: (snapshot_every / 10).clamp(1, 256),
        ..Default::default()
    }
    .validate()?;
    let log = LogStore::open(&dir.join("log.redb")).with_context(|| format!("opening {}", dir.join("log.redb").display()))?;
    // Below half the disk reserve (where an upload in flight is cut off too), committed
    // entries wait in the log until space returns instead of meeting a full disk.
    let sm = StateMachineStore::open(&dir.join("state"))
        .context("opening the state machine")?
        .with_space_check(Arc::new(move || space.check_streaming().map_err(|e| e.to_string())));
    let state = sm.shared();
    // Raft messages carry this cluster's identity from the first one on.
    network.identify(state.clone());
    let raft = Raft::new(node_id, Arc::new(config), network, log, sm).await?;
    if !raft.is_initialized().await? && bootstrap.await {
        tracing::info!(node_id, "initializing a new single-voter cluster");
        let members = BTreeMap::from([(node_id, BasicNode::new(advertise))]);
        raft.initialize(members).await?;
    }
    let sole_voter = if raft.is_initialized().await? {
        // Metrics are published asynchronously: wait until they show the membership.
        let m = raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.membership_config.membership().voter_ids().next().is_some(), "membership loaded")
            .await
            .context("membership did not load")?;
        m.membership_config.membership().voter_ids().collect::<Vec<_>>() == [node_id]
    } else {
        false
    };
    if sole_voter {
        raft.wait(Some(Duration::from_secs(30)))
            .current_leader(node_id, "waiting to lead the single-voter cluster")
            .await
            .context("this node did not become leader")?;
    }
    spawn_snapshot_scheduler(raft.clone(), dir.to_path_buf(), snapshot_every, node_id);
    Ok(RaftNode { raft, state, sole_voter })
}

/// The highest log index a majority of voters holds, as far as this node knows: exact on the
/// leader (from its replication progress); elsewhere the applied index, which trails it.
pub fn committed_index(m: &openraft::RaftMetrics<u64, BasicNode>) -> u64 {
    let applied = m.last_applied.map_or(0, |l| l.index);
    let Some(progress) = &m.replication else { return applied };
    let mut matched: Vec<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .map(|id| match progress.get(&id) {
            Some(l) => l.map_or(0, |l| l.index),
            // The leader tracks itself by its own log.
            None if id == m.id => m.last_log_index.unwrap_or(0),
            None => 0,
        })
        .collect();
    if matched.is_empty() {
        return applied;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[matched.len() / 2].max(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_state_snapshots_less_often() {
        // Small states: the configured interval (node 4 is the first of a new round of four).
        assert!(!snapshot_due(9_999, 10_000, 1 << 20, 4));
        assert!(snapshot_due(10_000, 10_000, 1 << 20, 4));
        // A 60 MB snapshot: every 30,000 entries.
        assert!(!snapshot_due(29_000, 10_000, 60 << 20, 4));
        assert!(snapshot_due(31_000, 10_000, 60 << 20, 4));
        // A 430 MB snapshot (a million tags): every 40,000 entries, the cap.
        let big = 430 << 20;
        assert!(!snapshot_due(39_999, 10_000, big, 4));
        assert!(snapshot_due(40_000, 10_000, big, 4));
        // Voters 1, 2 and 3 wait 1/8, 2/8 and 3/8 longer than that.
        assert!(!snapshot_due(40_000, 10_000, big, 1));
        assert!(snapshot_due(45_000, 10_000, big, 1));
        assert!(!snapshot_due(45_000, 10_000, big, 2));
        assert!(snapshot_due(55_000, 10_000, big, 3));
        // A small configured interval (tests) still holds for a small state.
        assert!(snapshot_due(50, 50, 100 << 10, 4));
        assert!(snapshot_due(57, 50, 100 << 10, 1));
    }
}
