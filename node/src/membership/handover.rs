//! Leadership handover when a leader is stopped (SIGTERM: a rolling restart, a node drain).
//!
//! Left alone, the followers of a leader that stops notice only after their election timeout
//! plus openraft's leader lease (1.5 to 1.8 s here), and writes wait that long. Instead the
//! stopping leader, once its HTTP requests have drained:
//! 1. holds new writes off (they are answered "not the leader", and their senders retry
//!    within 50 ms), so its log stops growing;
//! 2. waits until the most caught-up voter holds its whole log;
//! 3. asks that voter to campaign now. The leader's own lease on its vote dates from its
//!    election, so it grants the vote; with it the candidate has a majority at once (the
//!    other followers, still leased to the old leader, need not be asked twice), and the old
//!    leader steps down on seeing the higher term.
//!
//! If anything fails (no voter catches up in time, the campaign is refused), the node just
//! stops as before, and the cluster elects a leader by timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use berth_proto::rpc::CampaignRequest;
use berth_raft_store::Raft;

use super::{client, CALL_TIMEOUT};
use crate::peers::Peers;

/// How long a stopping leader waits for a voter to hold its whole log.
const CATCH_UP: Duration = Duration::from_secs(3);
/// How long it waits for the campaign to make the other voter the leader.
const TAKE_OVER: Duration = Duration::from_secs(2);

/// What a voter needs to hand its leadership over.
pub struct Handover {
    pub raft: Raft,
    pub peers: Peers,
    /// `RaftMetadata::write_pause`.
    pub pause: Arc<AtomicBool>,
}

impl Handover {
    /// If this node leads a cluster of more than one voter, makes another voter the leader.
    /// Returns the new leader's id, or None when there was nothing to hand over.
    pub async fn run(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) || m.membership_config.membership().voter_ids().count() < 2 {
            return None;
        }
        let started = Instant::now();
        self.pause.store(true, Ordering::SeqCst);
        let result = self.hand_over(m.id).await;
        self.pause.store(false, Ordering::SeqCst);
        match result {
            Ok(to) => {
                tracing::info!(to, ms = started.elapsed().as_millis() as u64, "handed the leadership over");
                Some(to)
            }
            Err(e) => {
                tracing::warn!("could not hand the leadership over ({e:#}); stopping anyway, the others will elect a leader");
                None
            }
        }
    }

    async fn hand_over(&self, me: u64) -> anyhow::Result<u64> {
        // Writes proposed just before the pause reach the log within a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let deadline = Instant::now() + CATCH_UP;
        let (target, addr) = loop {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader != Some(me) {
                bail!("this node stopped leading before handing over");
            }
            let last = m.last_log_index.unwrap_or(0);
            let membership = m.membership_config.membership();
            let caught_up = m.replication.as_ref().and_then(|progress| {
                membership
                    .voter_ids()
                    .filter(|id| *id != me)
                    .find(|id| progress.get(id).copied().flatten().is_some_and(|l| l.index >= last))
            });
            if let Some(id) = caught_up {
                let addr = membership.get_node(&id).map(|n| n.addr.clone()).ok_or_else(|| anyhow!("voter {id} has no address"))?;
                break (id, addr);
            }
            if Instant::now() > deadline {
                bail!("no voter caught up with the log (index {last}) within {CATCH_UP:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tracing::info!(to = target, %addr, "handing the leadership over");
        let mut req = tonic::Request::new(CampaignRequest {});
        req.set_timeout(CALL_TIMEOUT);
        let reply = client(&self.peers, &addr)?.campaign(req).await.map_err(|s| anyhow!("{addr}: {}", s.message()))?.into_inner();
        if !reply.error.is_empty() {
            bail!("voter {target} did not campaign: {}", reply.error);
        }
        self.raft
            .wait(Some(TAKE_OVER))
            .metrics(|m| m.current_leader == Some(target), "the new leader takes over")
            .await
            .map_err(|e| anyhow!("voter {target} did not take over: {e}"))?;
        Ok(target)
    }
}
