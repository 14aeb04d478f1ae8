//! Metadata on a voter. On the leader, writes are `client_write` and reads follow
//! `ensure_linearizable`. On any other voter, writes are forwarded to the leader over gRPC, and
//! reads ask the leader for a read index, wait until the local state machine has applied it,
//! then read locally: a push acknowledged by one node is visible at once on all. Concurrent
//! reads share one read index, both on the leader and on the node asking it (`coalesce`).
//! Both paths retry a bounded number of times, following leader hints. A leader that has not
//! heard from a majority for longer than an election takes refuses at once instead of
//! waiting: the client gets 503 quickly while there is no quorum.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_api::MetaError;
use berth_proto::{Answer, Command, Outcome, Query, Request};
use berth_raft_store::{Raft, SharedState};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::BasicNode;

use super::remote::{self, backoff, Leader, Reply, TIMEOUT};
use super::bodies::ManifestBodies;
use super::coalesce::Coalescer;
use super::MetadataBackend;
use crate::peers::Peers;
use crate::membership::protocol::ProtocolGate;
use crate::space::SpaceGuard;
use crate::raft::QUORUM_LOST_AFTER_MS;

/// Tries at the local node and then at leaders it hears of.
const ATTEMPTS: u32 = 4;

/// How long a learner goes without hearing a leader before it reads its own copy without
/// asking (a secondary site cut off from the primary keeps serving pulls).
const ALONE_AFTER_MS: u64 = 3_000;

/// Registry metadata backed by this node's Raft instance.
pub struct RaftMetadata {
    node: Node,
    state: SharedState,
    /// On a learner: when a leader was last heard from. Reads then fall back to the local
    /// copy (bounded staleness) when no leader can confirm them.
    alone: Option<crate::membership::failover::LeaderContact>,
    /// Reads served that way.
    stale: prometheus::IntCounter,
    /// Read indexes from whoever leads, shared by concurrent reads on this node.
    read_index: Coalescer<Result<u64, MetaError>>,
}

/// What the write and read paths need, cheap to clone into a coalesced run.
#[derive(Clone)]
struct Node {
    raft: Raft,
    peers: Peers,
    space: SpaceGuard,
    forwarded: prometheus::IntCounterVec,
    /// Leadership confirmations when this node leads, shared by concurrent reads here and by
    /// other nodes' read-index requests.
    confirm: Arc<Coalescer<Result<Reply<u64>, MetaError>>>,
    /// Set while this leader hands its leadership over: new writes are sent away as if it did
    /// not lead (their senders retry shortly), so its log stops growing and the next leader
    /// can hold all of it.
    paused: Arc<AtomicBool>,
    /// Holds back commands that some member's build could not decode.
    protocol: Arc<ProtocolGate>,
    /// Manifest bodies in the blob store.
    bodies: Arc<ManifestBodies>,
}

impl RaftMetadata {
    /// Wraps a started Raft node; `peers` supplies the (shared) channels to the leader, and
    /// `space` refuses additions while this node leads with too little free disk; manifest
    /// bodies are kept in, and read from, `bodies`.
    pub fn new(
        raft: Raft,
        state: SharedState,
        peers: Peers,
        space: SpaceGuard,
        bodies: Arc<ManifestBodies>,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<Self> {
        let forwarded = prometheus::IntCounterVec::new(
            prometheus::Opts::new("berth_forwarded_requests_total", "Metadata requests forwarded to the leader."),
            &["kind", "result"],
        )?;
        registry.register(Box::new(forwarded.clone()))?;
        let r = raft.clone();
        let confirm = Arc::new(Coalescer::new(move || confirm_read_index(r.clone())));
        let protocol = Arc::new(ProtocolGate::new(raft.clone(), state.clone(), peers.clone()));
        let node = Node { raft, peers, space, forwarded, confirm, paused: Arc::default(), protocol, bodies };
        let n = node.clone();
        let read_index = Coalescer::new(move || {
            let n = n.clone();
            async move { n.read_index().await }
        });
        let stale = prometheus::IntCounter::new("berth_stale_reads_total", "Reads a learner served from its own copy without a leader's confirmation.")?;
        registry.register(Box::new(stale.clone()))?;
        Ok(RaftMetadata { node, state, read_index, alone: None, stale })
    }

    /// For a learner: reads that no leader can confirm (none heard from for
    /// [`ALONE_AFTER_MS`], or the confirmation fails) are served from the local copy.
    pub fn reading_alone_after_silence(mut self, contact: crate::membership::failover::LeaderContact) -> Self {
        self.alone = Some(contact);
        self
    }

    /// Ok when the node at `addr` reads every log protocol the cluster's log holds.
    pub async fn check_joiner(&self, addr: &str) -> Result<(), String> {
        self.node.protocol.check_joiner(addr).await
    }

    /// The switch that holds new writes off while this node hands its leadership over.
    pub fn write_pause(&self) -> Arc<AtomicBool> {
        self.node.paused.clone()
    }

    /// Commits `req` if this node leads, waiting at most `wait` for the commit.
    pub async fn commit_here(&self, req: Request, wait: Duration) -> Result<Reply<Outcome>, MetaError> {
        self.node.commit_here(req, wait).await
    }

    /// The index a linearizable read must wait for, if this node leads.
    pub async fn read_index_here(&self) -> Result<Reply<u64>, MetaError> {
        self.node.read_index_here().await
    }

    /// Waits until reads of the local state are linearizable: gets a read index from the
    /// leader (one request for all the reads waiting here) and waits until it is applied.
    async fn barrier(&self) -> Result<(), MetaError> {
        let index = self.read_index.call().await.unwrap_or_else(|| Err(MetaError::Internal("the read-index request failed".into())))?;
        if index > 0 {
            self.node
                .raft
                .wait(Some(TIMEOUT))
                .applied_index_at_least(Some(index), "applying up to the leader's read index")
                .await
                .map_err(|e| MetaError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }
}

impl Node {
    /// Why this node, if it leads, cannot serve right now: no majority has answered it lately.
    fn quorum_lost(&self) -> Option<MetaError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let ms = m.millis_since_quorum_ack.filter(|ms| *ms > QUORUM_LOST_AFTER_MS && m.current_leader == Some(m.id))?;
        Some(MetaError::Unavailable(format!("no quorum: a majority of voters has not answered the leader for {ms} ms")))
    }

    async fn commit_here(&self, mut req: Request, wait: Duration) -> Result<Reply<Outcome>, MetaError> {
        if let Some(e) = self.quorum_lost() {
            return Err(e);
        }
        if self.paused.load(Ordering::SeqCst) {
            return Ok(Reply::NotLeader(None));
        }
        let leads = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.current_leader == Some(m.id)
        };
        if leads {
            // Only the leader proposes: its log (and then every voter's) takes the entry.
            self.space.admit(&req.command)?;
            // A manifest's body stays out of the entry (in the blob store), unless some member's
            // build reads no such entries yet: then the entry carries it, as before.
            match req.command {
                Command::PutStoredManifest { .. } if !self.protocol.supports(3).await => {
                    return Err(MetaError::Outdated("a member of the cluster reads no log protocol 3 yet".into()));
                }
                Command::PutStoredManifest { .. } => self.bodies.counted_stored(),
                // From a node of an older build, body included.
                Command::PutManifest { .. } if self.protocol.supports(3).await => {
                    req.command = self.bodies.out_of_entry(req.command).await?;
                }
                Command::PutManifest { .. } => self.bodies.counted_in_entry(),
                _ => {}
            }
            self.protocol.admit(req.command.since(), req.command.kind()).await?;
        }
        let kind = req.command.kind();
        match tokio::time::timeout(wait, self.raft.client_write(req)).await {
            Err(_) => Err(MetaError::Unavailable(format!("{kind}: timed out waiting for commit"))),
            Ok(Ok(resp)) => Ok(Reply::Done(resp.data)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Ok(Reply::NotLeader(leader_hint(&self.raft, f))),
            Ok(Err(RaftError::APIError(e))) => Err(MetaError::Unavailable(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(MetaError::Internal(e.to_string())),
        }
    }

    async fn read_index_here(&self) -> Result<Reply<u64>, MetaError> {
        if let Some(e) = self.quorum_lost() {
            return Err(e);
        }
        self.confirm.call().await.unwrap_or_else(|| Err(MetaError::Internal("the read-index confirmation failed".into())))
    }

    /// A read index confirmed by the leader: this node's own if it leads, else the leader's
    /// over gRPC, following hints a bounded number of times.
    async fn read_index(&self) -> Result<u64, MetaError> {
        let mut last = String::from("no leader");
        let mut hint: Option<Leader> = None;
        for attempt in 0..ATTEMPTS {
            let leader = match hint.take() {
                Some(l) => Some(l),
                None => match self.read_index_here().await? {
                    // ensure_linearizable has also waited for this node to apply it.
                    Reply::Done(index) => return Ok(index),
                    Reply::NotLeader(l) => l,
                },
            };
            let Some(leader) = leader else {
                backoff(attempt).await;
                continue;
            };
            match remote::read_index(&self.peers, &leader.1).await {
                Ok(Reply::Done(index)) => {
                    self.forwarded.with_label_values(&["read_index", "ok"]).inc();
                    return Ok(index);
                }
                Ok(Reply::NotLeader(l)) => {
                    last = format!("node {} is no longer the leader", leader.0);
                    hint = l.filter(|l| *l != leader);
                }
                Err(e) => last = e.to_string(),
            }
            self.forwarded.with_label_values(&["read_index", "retry"]).inc();
            backoff(attempt).await;
        }
        Err(MetaError::Unavailable(format!("no leader confirmed the read: {last}")))
    }
}

/// The leader named by openraft's hint, or else by this node's metrics; never this node.
fn leader_hint(raft: &Raft, f: ForwardToLeader<u64, BasicNode>) -> Option<Leader> {
    if let (Some(id), Some(n)) = (f.leader_id, f.leader_node) {
        return Some((id, n.addr));
    }
    let m = raft.metrics();
    let m = m.borrow();
    let id = m.current_leader?;
    (id != m.id).then_some(())?;
    let node = m.membership_config.membership().get_node(&id)?;
    Some((id, node.addr.clone()))
}

/// One round of confirming leadership with a majority; the read index once applied here.
async fn confirm_read_index(raft: Raft) -> Result<Reply<u64>, MetaError> {
    match tokio::time::timeout(TIMEOUT, raft.ensure_linearizable()).await {
        Err(_) => Err(MetaError::Unavailable("timed out confirming leadership".into())),
        Ok(Ok(index)) => Ok(Reply::Done(index.map_or(0, |l| l.index))),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => Ok(Reply::NotLeader(leader_hint(&raft, f))),
        // QuorumNotEnough: this node leads but cannot confirm it; there is no one to ask.
        Ok(Err(RaftError::APIError(e))) => Err(MetaError::Unavailable(e.to_string())),
        Ok(Err(RaftError::Fatal(e))) => Err(MetaError::Internal(e.to_string())),
    }
}

#[async_trait]
impl MetadataBackend for RaftMetadata {
    async fn apply(&self, req: Request) -> Result<Outcome, MetaError> {
        let kind = req.command.kind();
        let mut last = String::from("no leader");
        let mut hint: Option<Leader> = None;
        // Commands are idempotent (links, puts of the same digest, deletes), so a retry after a
        // lost reply does no harm. Forwarded tries share one deadline.
        let give_up = remote::give_up_at();
        let mut doubt = false;
        for attempt in 0..ATTEMPTS {
            let leader = match hint.take() {
                Some(l) => Some(l),
                None => match self.commit_here(req.clone(), TIMEOUT).await? {
                    Reply::Done(outcome) => return Ok(outcome),
                    Reply::NotLeader(l) => l,
                },
            };
            if let Some(leader) = leader {
                match remote::apply(&self.node.peers, &leader.1, &req, give_up).await {
                    Ok(Reply::Done(outcome)) => {
                        self.node.forwarded.with_label_values(&["write", "ok"]).inc();
                        return Ok(outcome);
                    }
                    Ok(Reply::NotLeader(l)) => {
                        last = format!("node {} is no longer the leader", leader.0);
                        hint = l.filter(|l| *l != leader);
                    }
                    Err(e @ (MetaError::Full(_) | MetaError::Outdated(_))) => return Err(e),
                    Err(e) => {
                        doubt |= remote::in_doubt(&e);
                        last = e.to_string();
                    }
                }
                self.node.forwarded.with_label_values(&["write", "retry"]).inc();
            }
            backoff(attempt).await;
        }
        if doubt {
            remote::outlive(give_up).await;
        }
        Err(MetaError::Unavailable(format!("{kind}: {last}")))
    }

    async fn query(&self, q: Query) -> Result<Answer, MetaError> {
        match &self.alone {
            None => self.barrier().await?,
            Some(contact) => {
                let confirmed = contact.silent_ms() <= ALONE_AFTER_MS && self.barrier().await.is_ok();
                if !confirmed {
                    self.stale.inc();
                }
            }
        }
        let answer = self.state.answer(&q).map_err(|e| MetaError::Internal(e.to_string()))?;
        self.node.bodies.fill_answer(answer).await
    }
}

