//! `berth.join`: a voter that is not (yet) a voter of the cluster asks the nodes named in
//! `join` for the leader, and asks the leader to add it: first as a learner (the leader
//! sends it the log and waits until it has caught up), then as a voter. It retries with
//! backoff until that holds, so the voters of a compose file or a StatefulSet may start in
//! any order, and one that restarts half-added finishes the job.

use std::time::Duration;

use anyhow::{anyhow, bail};
use berth_proto::rpc::{AddLearnerRequest, AddVoterRequest, AdminReply, StatusReply};
use berth_raft_store::Raft;
use tokio::sync::watch;

use super::{client, status, tick, CALL_TIMEOUT};
use crate::peers::Peers;

/// A voter on its way into the cluster.
pub struct Joiner {
    pub raft: Raft,
    pub id: u64,
    /// This node's gRPC address as peers reach it.
    pub advertise: String,
    /// `berth.join`.
    pub join: Vec<String>,
    pub peers: Peers,
    /// False for a learner (a secondary site's node): it stops once it is a learner.
    pub voter: bool,
}

/// The first node in `join` (other than `own`) that already belongs to a cluster, if any
/// answers within a short wait: a node meant to found the cluster joins that one instead
/// (its Raft data was lost, or the others founded it first).
pub async fn existing_cluster(peers: &Peers, join: &[String], own: &str) -> Option<String> {
    let asks = join.iter().filter(|a| *a != own).map(|a| async move {
        status(peers, a, Duration::from_secs(2))
            .await
            .ok()
            .filter(|s| !s.members.is_empty())
            .map(|_| a.clone())
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .next()
}

impl Joiner {
    /// True once this node is what it is meant to be: a voter, or a member at all for a
    /// learner.
    fn is_voter(&self) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let m = m.membership();
        if self.voter {
            m.voter_ids().any(|v| v == self.id)
        } else {
            m.nodes().any(|(n, _)| *n == self.id)
        }
    }

    /// Runs until this node is a voter (or the node stops).
    pub fn spawn(self, mut stop: watch::Receiver<bool>) {
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            let mut said = String::new();
            loop {
                if self.is_voter() {
                    let what = if self.voter { "a voter" } else { "a learner" };
                    tracing::info!(node_id = self.id, "this node is {what} of the cluster");
                    return;
                }
                match self.attempt().await {
                    Ok(()) => {
                        delay = Duration::from_millis(500);
                        // The membership reaches this node through the log.
                        let id = self.id;
                        let _ = self
                            .raft
                            .wait(Some(Duration::from_secs(10)))
                            .metrics(
                                |m| {
                                    m.membership_config
                                        .membership()
                                        .nodes()
                                        .any(|(n, _)| *n == id)
                                },
                                "membership seen",
                            )
                            .await;
                        continue;
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        if msg != said {
                            tracing::warn!(
                                node_id = self.id,
                                "not yet a voter of the cluster: {msg}; retrying"
                            );
                            said = msg;
                        }
                    }
                }
                if !tick(delay, &mut stop).await {
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
    }

    /// One step closer: find the leader, then ask it for the next change.
    async fn attempt(&self) -> anyhow::Result<()> {
        let mut last = anyhow!("berth.join names no node other than this one");
        for addr in self.join.iter().filter(|a| **a != self.advertise) {
            match status(&self.peers, addr, CALL_TIMEOUT).await {
                Ok(s) if s.leader_id != 0 => return self.step(&s).await,
                Ok(_) => last = anyhow!("{addr} knows no leader yet"),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn step(&self, s: &StatusReply) -> anyhow::Result<()> {
        let Some(leader) = s.members.iter().find(|m| m.node_id == s.leader_id) else {
            bail!(
                "node {} names leader {} but not its address",
                s.node_id,
                s.leader_id
            );
        };
        let mut c = client(&self.peers, &leader.grpc_addr)?;
        let reply = match s.members.iter().find(|m| m.node_id == self.id) {
            None => {
                tracing::info!(node_id = self.id, leader = %leader.grpc_addr, advertise = %self.advertise, "asking to join as a learner");
                let req = AddLearnerRequest {
                    node_id: self.id,
                    grpc_addr: self.advertise.clone(),
                };
                // The leader answers once this node has caught up, which takes as long as the log.
                c.add_learner(req).await
            }
            Some(m) if !m.voter && self.voter => {
                tracing::info!(node_id = self.id, leader = %leader.grpc_addr, "asking to become a voter");
                let mut req = tonic::Request::new(AddVoterRequest { node_id: self.id });
                req.set_timeout(CALL_TIMEOUT * 2);
                c.add_voter(req).await
            }
            Some(_) => return Ok(()),
        };
        let reply: AdminReply = reply
            .map_err(|st| anyhow!("{}: {}", leader.grpc_addr, st.message()))?
            .into_inner();
        if reply.error.is_empty() {
            Ok(())
        } else {
            bail!("leader {} refused: {}", leader.grpc_addr, reply.error)
        }
    }
}
