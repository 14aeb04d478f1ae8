//! Metadata on a frontend: no Raft, no state. Writes go to the leader (learned from the
//! voters' hints and remembered), reads go to the leader too when it is known, else to any
//! voter, which answers after its own linearizable barrier. A voter that fails is skipped
//! and the next one tried, within one overall deadline, so a frontend can start before the
//! cluster and keeps working while voters come and go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_api::MetaError;
use berth_proto::{Answer, Outcome, Query, Request};

use super::remote::{self, backoff, Reply, TIMEOUT};
use super::MetadataBackend;
use crate::peers::Peers;

/// How long a voter that failed a call is passed over: longer than an election takes.
const SUSPECT_FOR: Duration = Duration::from_secs(3);

/// Metadata served by the voters at `voters` (gRPC addresses).
pub struct RemoteMetadata {
    peers: Peers,
    voters: Vec<String>,
    /// The leader's address, once a voter has named it.
    leader: Mutex<Option<String>>,
    /// Which voter to try next when the leader is unknown.
    next: AtomicUsize,
    /// Voters that just failed a call (refused it, or hung: a frozen process), and until when
    /// they are passed over, so that a request does not spend its time on them twice while
    /// the others elect a new leader. Hints that name them are not followed meanwhile.
    suspects: Mutex<HashMap<String, Instant>>,
    forwarded: prometheus::IntCounterVec,
}

impl RemoteMetadata {
    /// A frontend for `voters`.
    pub fn new(peers: Peers, voters: Vec<String>, registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let forwarded = prometheus::IntCounterVec::new(
            prometheus::Opts::new("berth_forwarded_requests_total", "Metadata requests sent to the voters."),
            &["kind", "result"],
        )?;
        registry.register(Box::new(forwarded.clone()))?;
        Ok(RemoteMetadata { peers, voters, leader: Mutex::new(None), next: AtomicUsize::new(0), suspects: Mutex::default(), forwarded })
    }

    /// Whom to ask: the known leader, else the next voter in turn.
    fn target(&self) -> String {
        if let Some(l) = self.leader.lock().unwrap().clone().filter(|l| !self.suspect(l)) {
            return l;
        }
        let start = self.next.load(Ordering::Relaxed);
        let n = self.voters.len();
        // The next voter in turn that has not just failed; if all have, the next in turn.
        (0..n)
            .map(|k| &self.voters[(start + k) % n])
            .find(|v| !self.suspect(v))
            .unwrap_or(&self.voters[start % n])
            .clone()
    }

    /// Whether `addr` failed a call within the last `SUSPECT_FOR`.
    fn suspect(&self, addr: &str) -> bool {
        let mut s = self.suspects.lock().unwrap();
        match s.get(addr) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                s.remove(addr);
                false
            }
            None => false,
        }
    }

    /// `addr` failed: forget it as leader, pass it over for a while, move on to the next voter.
    fn failed(&self, addr: &str) {
        let mut leader = self.leader.lock().unwrap();
        if leader.as_deref() == Some(addr) {
            *leader = None;
        }
        self.suspects.lock().unwrap().insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
        self.next.fetch_add(1, Ordering::Relaxed);
    }

    /// A voter named the leader (or said it does not know one: then ask the next voter). A
    /// voter that has not noticed yet that the leader hangs may name it: that hint waits.
    fn learned(&self, addr: Option<String>) {
        let addr = addr.filter(|a| !self.suspect(a));
        if addr.is_none() {
            self.next.fetch_add(1, Ordering::Relaxed);
        }
        *self.leader.lock().unwrap() = addr;
    }

    /// Tries per request: once around the voters plus room for leader hints. With the
    /// back-off between tries, a cluster without quorum is reported in under 2 s.
    fn attempts(&self) -> u32 {
        self.voters.len() as u32 + 2
    }

    async fn apply_once(&self, req: &Request, give_up: u64) -> Result<Outcome, MetaError> {
        let mut last = String::from("no voter answered");
        let mut doubt = false;
        for attempt in 0..self.attempts() {
            let addr = self.target();
            match remote::apply(&self.peers, &addr, req, give_up).await {
                Ok(Reply::Done(outcome)) => {
                    self.forwarded.with_label_values(&["write", "ok"]).inc();
                    return Ok(outcome);
                }
                Ok(Reply::NotLeader(hint)) => {
                    last = format!("{addr} is not the leader");
                    let known = hint.is_some();
                    self.learned(hint.map(|h| h.1));
                    self.forwarded.with_label_values(&["write", "redirect"]).inc();
                    if known {
                        continue;
                    }
                }
                Err(e @ (MetaError::Full(_) | MetaError::Outdated(_))) => return Err(e),
                Err(e) => {
                    doubt |= remote::in_doubt(&e);
                    last = e.to_string();
                    self.failed(&addr);
                    self.forwarded.with_label_values(&["write", "retry"]).inc();
                }
            }
            backoff(attempt).await;
        }
        if doubt {
            remote::outlive(give_up).await;
        }
        Err(MetaError::Unavailable(last))
    }

    async fn query_once(&self, q: &Query) -> Result<Answer, MetaError> {
        let mut last = String::from("no voter answered");
        for attempt in 0..self.attempts() {
            let addr = self.target();
            match remote::query(&self.peers, &addr, q).await {
                Ok(a) => {
                    self.forwarded.with_label_values(&["read", "ok"]).inc();
                    return Ok(a);
                }
                Err(e @ MetaError::Internal(_)) => return Err(e),
                Err(e) => {
                    last = e.to_string();
                    self.failed(&addr);
                    self.forwarded.with_label_values(&["read", "retry"]).inc();
                }
            }
            backoff(attempt).await;
        }
        Err(MetaError::Unavailable(last))
    }
}

#[async_trait]
impl MetadataBackend for RemoteMetadata {
    async fn apply(&self, req: Request) -> Result<Outcome, MetaError> {
        let kind = req.command.kind();
        match tokio::time::timeout(TIMEOUT + Duration::from_millis(100), self.apply_once(&req, remote::give_up_at())).await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(MetaError::Unavailable(e))) => Err(MetaError::Unavailable(format!("{kind}: {e}"))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(MetaError::Unavailable(format!("{kind}: no voter committed it in time"))),
        }
    }

    async fn query(&self, q: Query) -> Result<Answer, MetaError> {
        match tokio::time::timeout(TIMEOUT, self.query_once(&q)).await {
            Ok(r) => r,
            Err(_) => Err(MetaError::Unavailable("no voter answered the read in time".into())),
        }
    }
}
