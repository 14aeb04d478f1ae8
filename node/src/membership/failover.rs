//! Fast elections when the leader is gone: killed, frozen (a gray failure: SIGSTOP, a stuck
//! disk) or cut off.
//!
//! openraft 0.9 lets a follower campaign only after its leader lease plus its own election
//! timeout (1.5-1.8 s with the timeouts now set; 2.0-2.4 s before), and after losing an election to a longer log it waits
//! `2 × election_timeout_max` more before its next campaign; its timeout is drawn once per
//! process. Together they made failover take 2.7 s at the median and up to 7.7 s. This
//! watch, on every voter, notices when no leader has sent anything for longer than the
//! lease (the others will then grant votes), asks the other voters what they hold, and
//! makes exactly one of them campaign at once: the one with the longest log (the lowest id
//! among equals), which every voter can vote for. If any voter still hears a leader, nobody
//! is asked to campaign: this node is the one cut off. openraft's own timers stay as they
//! are, as the fallback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use berth_raft_store::Raft;
use tokio::sync::watch;

use super::{status, tick};
use crate::peers::Peers;
use crate::raft::ELECTION_TIMEOUT_MS;

/// How often the watch looks.
const EVERY: Duration = Duration::from_millis(100);
/// Silence beyond the lease before the watch acts, so that a heartbeat merely late is not
/// taken for a dead leader.
const GRACE: Duration = Duration::from_millis(100);
/// How long the other voters have to say what they hold.
const ASK: Duration = Duration::from_millis(300);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// When a leader last sent this node anything (append entries, heartbeats included).
#[derive(Clone, Default)]
pub struct LeaderContact(Arc<AtomicU64>);

impl LeaderContact {
    /// A leader was heard from just now.
    pub fn heard(&self) {
        self.0.store(epoch().elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }

    /// Milliseconds since a leader was last heard from (u64::MAX: never, since start).
    pub fn silent_ms(&self) -> u64 {
        match self.0.load(Ordering::Relaxed) {
            0 => u64::MAX,
            at => (epoch().elapsed().as_millis() as u64 + 1).saturating_sub(at),
        }
    }
}

/// openraft's leader lease: a voter refuses votes for this long after hearing a leader.
fn lease() -> Duration {
    Duration::from_millis(ELECTION_TIMEOUT_MS.1)
}

/// Starts the watch on voter `id`.
pub fn spawn(raft: Raft, peers: Peers, contact: LeaderContact, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut asked_at: Option<Instant> = None;
        loop {
            if !tick(EVERY, &mut stop).await {
                return;
            }
            let m = raft.metrics().borrow().clone();
            let membership = m.membership_config.membership().clone();
            let voter = membership.voter_ids().any(|v| v == m.id);
            if m.current_leader == Some(m.id) || !voter || membership.voter_ids().count() < 2 {
                continue;
            }
            let silent = Duration::from_millis(contact.silent_ms());
            if silent < lease() + GRACE || asked_at.is_some_and(|at| at.elapsed() < 2 * lease()) {
                continue;
            }
            let others: Vec<(u64, String)> =
                membership.voter_ids().filter(|v| *v != m.id).filter_map(|v| membership.get_node(&v).map(|n| (v, n.addr.clone()))).collect();
            let answers = futures::future::join_all(others.iter().map(|(id, addr)| {
                let peers = peers.clone();
                async move { (*id, status(&peers, addr, ASK).await.ok()) }
            }))
            .await;
            let mut best = (m.last_log_index.unwrap_or(0), std::cmp::Reverse(m.id));
            let mut someone_hears_a_leader = false;
            for (id, s) in &answers {
                let Some(s) = s else { continue };
                if s.state == "Leader" || s.millis_since_leader < lease().as_millis() as u64 {
                    someone_hears_a_leader = true;
                }
                best = best.max((s.last_log_index, std::cmp::Reverse(*id)));
            }
            if someone_hears_a_leader || best.1 .0 != m.id {
                continue;
            }
            tracing::info!(
                silent_ms = silent.as_millis() as u64,
                last_log = m.last_log_index.unwrap_or(0),
                "no leader heard from; this voter holds the longest log: campaigning now"
            );
            asked_at = Some(Instant::now());
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!("could not start an election: {e}");
            }
        }
    });
}
