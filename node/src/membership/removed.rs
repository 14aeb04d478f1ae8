//! A voter that is no longer a member of the cluster stops campaigning, and says so.
//!
//! Removed while it runs, a node applies the membership without itself, and openraft stops
//! its elections. Removed while it was down, it does not know: its log still names it a
//! voter, so it would campaign in vain for ever (its vote requests are refused: the others
//! have a leader and a longer log), filling its log with warnings. This watch asks the
//! members it knows whether they have a leader whose cluster lacks this node; if so it
//! turns this node's elections off. Either way it logs once what happened and what to do.

use std::time::Duration;

use berth_raft_store::Raft;
use tokio::sync::watch;

use super::{status, tick};
use crate::peers::Peers;

/// How often the watch looks.
const EVERY: Duration = Duration::from_secs(2);

/// Starts the watch for node `id`.
pub fn spawn(raft: Raft, peers: Peers, id: u64, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut leaderless = 0u32;
        loop {
            if !tick(EVERY, &mut stop).await {
                return;
            }
            let m = raft.metrics().borrow().clone();
            let membership = m.membership_config.membership().clone();
            let member = membership.nodes().any(|(n, _)| *n == id);
            if !member && m.membership_config.log_id().is_some() {
                say_removed(id, "it applied a membership without itself");
                return;
            }
            if !member || m.current_leader.is_some() {
                leaderless = 0;
                continue;
            }
            leaderless += 1;
            if leaderless < 2 {
                continue;
            }
            // No leader for a while: ask the others whether they have one, without this node.
            for (other, node) in membership.nodes().filter(|(n, _)| **n != id) {
                let Ok(s) = status(&peers, &node.addr, Duration::from_secs(1)).await else { continue };
                if s.leader_id != 0 && !s.members.is_empty() && !s.members.iter().any(|mm| mm.node_id == id) {
                    raft.runtime_config().elect(false);
                    say_removed(id, &format!("node {other} follows leader {} in a cluster without it", s.leader_id));
                    return;
                }
            }
        }
    });
}

fn say_removed(id: u64, how: &str) {
    tracing::error!(
        node_id = id,
        "this node has been removed from the cluster ({how}): it no longer campaigns or votes, and its id \
         is retired. To bring this machine back, empty its data directory and add it under a new id"
    );
}
