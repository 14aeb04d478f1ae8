//! Log-entry protocol gating, so that a rolling upgrade never stalls the cluster.
//!
//! A node appends an entry only if it can decode it. Were a new leader to propose a command
//! that an older member's build does not know, that member could not take the entry, nor any
//! entry after it; with a majority of such members no write would commit. So a command that
//! came after protocol 1 (`Command::since`) is proposed only when every member of the
//! cluster has said (in its `Status`) that it reads that protocol. Members are asked when
//! such a command arrives (they are rare: group administration), and the answer is kept for
//! a while. A member that does not answer counts with what it said last; one never heard
//! from holds the command back, with a 503 that says which node to upgrade.
//!
//! Once an entry of a protocol has committed, the cluster reads that protocol for good (every
//! member did when it was proposed, and a node joins only if it reads it too: see
//! [`ProtocolGate::check_joiner`]). The state records the newest protocol applied, so a new
//! leader, with a member down, still proposes what the cluster already took.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::MetaError;
use berth_raft_store::{Raft, SharedState};

use super::status;
use crate::peers::Peers;

/// How long a check that every member reads a protocol holds, for the same members.
const FRESH: Duration = Duration::from_secs(10);
/// How long a member has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The leader's knowledge of which protocol each member reads.
pub struct ProtocolGate {
    raft: Raft,
    /// This voter's state: the newest protocol of an entry applied.
    state: SharedState,
    peers: Peers,
    /// Member id -> the protocol it said it reads.
    heard: Mutex<HashMap<u64, u32>>,
    /// The last successful check: when, for which members, up to which protocol.
    checked: Mutex<Option<(Instant, BTreeSet<u64>, u32)>>,
    /// The members [`ProtocolGate::supports`] last asked and waited for.
    asked: Mutex<Option<BTreeSet<u64>>>,
    /// Set while a check started by [`ProtocolGate::supports`] runs.
    checking: AtomicBool,
}

impl ProtocolGate {
    pub fn new(raft: Raft, state: SharedState, peers: Peers) -> Self {
        ProtocolGate { raft, state, peers, heard: Mutex::default(), checked: Mutex::default(), asked: Mutex::default(), checking: AtomicBool::new(false) }
    }

    /// Whether every member reads protocol `need`, for a command that has a form every
    /// member reads. The first call for a set of members asks them (at most [`ASK_TIMEOUT`]);
    /// later calls never wait: they answer from the last check while it is fresh, else from
    /// what each member said last, and start a new check for the callers after them.
    pub async fn supports(self: &Arc<Self>, need: u32) -> bool {
        if self.state.protocol_seen() >= need {
            return true;
        }
        let members: BTreeSet<u64> = {
            let m = self.raft.metrics().borrow().clone();
            m.membership_config.membership().nodes().map(|(id, _)| *id).filter(|id| *id != m.id).collect()
        };
        if let Some((at, seen, upto)) = self.checked.lock().unwrap().as_ref() {
            if *seen == members && at.elapsed() < FRESH && *upto >= need {
                return true;
            }
        }
        if self.asked.lock().unwrap().as_ref() != Some(&members) {
            // Never asked these members (a new leader, a membership change): ask now, once.
            let ok = self.admit(need, "a check").await.is_ok();
            *self.asked.lock().unwrap() = Some(members);
            return ok;
        }
        if !self.checking.swap(true, Ordering::AcqRel) {
            let gate = self.clone();
            tokio::spawn(async move {
                let _ = gate.admit(need, "a check").await;
                gate.checking.store(false, Ordering::Release);
            });
        }
        let heard = self.heard.lock().unwrap();
        members.iter().all(|id| heard.get(id).is_some_and(|p| *p >= need))
    }

    /// Ok when every member of the cluster reads entries of protocol `need`.
    pub async fn admit(&self, need: u32, kind: &str) -> Result<(), MetaError> {
        if need <= 1 || self.state.protocol_seen() >= need {
            return Ok(());
        }
        let members: Vec<(u64, String)> = {
            let m = self.raft.metrics().borrow().clone();
            m.membership_config.membership().nodes().filter(|(id, _)| **id != m.id).map(|(id, n)| (*id, n.addr.clone())).collect()
        };
        let ids: BTreeSet<u64> = members.iter().map(|(id, _)| *id).collect();
        if let Some((at, seen, upto)) = self.checked.lock().unwrap().as_ref() {
            if at.elapsed() < FRESH && *seen == ids && *upto >= need {
                return Ok(());
            }
        }
        let answers = futures::future::join_all(members.iter().map(|(id, addr)| async move {
            let protocol = status(&self.peers, addr, ASK_TIMEOUT).await.ok().map(|s| s.protocol.max(1));
            (*id, protocol)
        }))
        .await;
        let mut heard = self.heard.lock().unwrap();
        for (id, protocol) in answers {
            if let Some(p) = protocol {
                heard.insert(id, p);
            }
        }
        let behind: Vec<String> = members
            .iter()
            .filter_map(|(id, addr)| match heard.get(id) {
                Some(p) if *p >= need => None,
                Some(p) => Some(format!("node {id} ({addr}) reads protocol {p}")),
                None => Some(format!("node {id} ({addr}) has not said which protocol it reads")),
            })
            .collect();
        // What every member reads, so that a check for a lower protocol keeps a higher one.
        let upto = members.iter().filter_map(|(id, _)| heard.get(id).copied()).min().unwrap_or(berth_proto::PROTOCOL);
        drop(heard);
        if behind.is_empty() {
            *self.checked.lock().unwrap() = Some((Instant::now(), ids, upto));
            return Ok(());
        }
        Err(MetaError::Unavailable(format!(
            "{kind} needs every node of the cluster to read log protocol {need}: {}; finish upgrading them first",
            behind.join(", ")
        )))
    }
}

impl ProtocolGate {
    /// Ok when the node at `addr` may join: it reads every protocol the log already holds
    /// (else it could take neither those entries nor a snapshot made after them, and as a
    /// voter it would stall writes). A node that does not answer is let through: joining
    /// needs it to answer Raft anyway.
    pub async fn check_joiner(&self, addr: &str) -> Result<(), String> {
        let seen = self.state.protocol_seen();
        match status(&self.peers, addr, ASK_TIMEOUT).await {
            Ok(s) if s.protocol.max(1) < seen => Err(format!(
                "the node at {addr} reads log protocol {}, and the cluster's log already holds entries of protocol {seen}: upgrade it first",
                s.protocol.max(1)
            )),
            _ => Ok(()),
        }
    }
}
