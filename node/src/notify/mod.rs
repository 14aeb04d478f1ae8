//! Notifications: the registry's events POSTed to webhook endpoints, as Distribution sends
//! them (the same envelope, `application/vnd.docker.distribution.events.v1+json`).
//!
//! Events are not a node's memory: applying a push or a delete records its event in the Raft
//! state (`berth_raft_store::disk` `events`) while any endpoint is registered, and each
//! endpoint's delivery position is replicated too (`NotifyChange::Delivered`). The leader
//! delivers, so the queue survives restarts and leader changes; an event is acknowledged only
//! after the endpoint answered 2xx, so delivery is at least once (an endpoint may see an event
//! again after a leader change, never miss one).

use std::sync::Arc;
use std::time::Duration;

use berth_api::Metadata;
use berth_proto::notify::{EventRecord, NotifyChange};
use berth_proto::{Answer, Command, Outcome, Query};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::Endpoint;

/// Events sent in one request at most.
const BATCH: u64 = 100;
/// Pause between looks when nothing is pending.
const IDLE: Duration = Duration::from_millis(50);

/// Prometheus metrics of notifications, per endpoint.
#[derive(Clone)]
pub struct NotifyMetrics {
    events: IntCounterVec,
    failures: IntCounterVec,
    pending: IntGaugeVec,
    last: IntGaugeVec,
}

impl NotifyMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new("berth_notifications_events_total", "Events handled by this node, by endpoint and result (sent, ignored by the endpoint's filters)."),
            &["endpoint", "result"],
        )?;
        let failures = IntCounterVec::new(Opts::new("berth_notifications_failures_total", "Deliveries that failed (no answer, or not 2xx/3xx), by endpoint."), &["endpoint"])?;
        let pending = IntGaugeVec::new(Opts::new("berth_notifications_pending", "Events the endpoint has not acknowledged yet (on the leader)."), &["endpoint"])?;
        let last = IntGaugeVec::new(Opts::new("berth_notifications_last_delivery_timestamp_seconds", "When the endpoint last acknowledged events."), &["endpoint"])?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(last.clone()))?;
        Ok(NotifyMetrics { events, failures, pending, last })
    }
}

/// What the delivery workers need.
pub struct Notifier {
    /// The endpoints configured.
    pub endpoints: Vec<Endpoint>,
    /// This voter's Raft (workers deliver only while it leads).
    pub raft: berth_raft_store::Raft,
    /// This voter's state: events are read locally.
    pub state: berth_raft_store::SharedState,
    /// Where positions are proposed; manifests' sizes are read.
    pub meta: Arc<dyn Metadata>,
    /// The registry's address as clients reach it (`http.host`, else this node's), for
    /// `target.url`.
    pub base_url: String,
    /// Names this node in `source`.
    pub source_addr: String,
    /// Its metrics.
    pub metrics: NotifyMetrics,
}

/// Starts one delivery worker per endpoint, and keeps the cluster's list of endpoints equal
/// to the configuration while this node leads. Every voter should configure the same list.
pub fn spawn(n: Notifier, stop: watch::Receiver<bool>) {
    let n = Arc::new(n);
    tokio::spawn(register(n.clone(), stop.clone()));
    for e in n.endpoints.clone() {
        tokio::spawn(deliver(n.clone(), e, stop.clone()));
    }
}

fn leads(raft: &berth_raft_store::Raft) -> bool {
    let m = raft.metrics().borrow().clone();
    m.current_leader == Some(m.id)
}

async fn register(n: Arc<Notifier>, mut stop: watch::Receiver<bool>) {
    let names: Vec<String> = n.endpoints.iter().map(|e| e.name.clone()).collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        if !leads(&n.raft) {
            continue;
        }
        let Ok(Answer::Notify(now)) = n.state.answer(&Query::NotifyStatus) else { continue };
        if now.delivered.keys().eq(names.iter()) {
            continue;
        }
        match n.meta.apply(Command::Notify(NotifyChange::Endpoints(names.clone()))).await {
            Ok(_) => tracing::info!(endpoints = ?names, "notification endpoints registered"),
            Err(e) => tracing::warn!("registering notification endpoints: {e}"),
        }
    }
}

async fn deliver(n: Arc<Notifier>, e: Endpoint, mut stop: watch::Receiver<bool>) {
    let http = match reqwest::Client::builder().timeout(e.timeout).build() {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(endpoint = %e.name, "no HTTP client for notifications: {err}");
            return;
        }
    };
    let mut failures = 0u32;
    let mut wait = IDLE;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = IDLE;
        if !leads(&n.raft) {
            continue;
        }
        let status = match n.state.answer(&Query::NotifyStatus) {
            Ok(Answer::Notify(s)) => s,
            _ => continue,
        };
        let Some(&delivered) = status.delivered.get(&e.name) else { continue };
        n.metrics.pending.with_label_values(&[&e.name]).set(status.next.max(1).saturating_sub(delivered + 1) as i64);
        let events = match n.state.answer(&Query::NotifyPending { endpoint: e.name.clone(), n: BATCH }) {
            Ok(Answer::Events(v)) if !v.is_empty() => v,
            _ => continue,
        };
        if events[0].0 > delivered + 1 {
            tracing::warn!(endpoint = %e.name, missed = events[0].0 - delivered - 1, "events were dropped before this endpoint received them (more than the kept maximum)");
        }
        let through = events.last().map(|(s, _)| *s).unwrap_or(delivered);
        let mut body = Vec::new();
        let mut ignored = 0;
        for (seq, ev) in &events {
            let v = n.envelope(*seq, ev).await;
            let media = v["target"]["mediaType"].as_str().unwrap_or_default();
            if e.ignored_actions.iter().any(|a| *a == ev.action) || e.ignored_media_types.iter().any(|m| m == media) {
                ignored += 1;
                continue;
            }
            body.push(v);
        }
        let sent = body.len() as u64;
        if !body.is_empty() {
            let mut req = http
                .post(&e.url)
                .header(reqwest::header::CONTENT_TYPE, "application/vnd.docker.distribution.events.v1+json")
                .body(serde_json::to_vec(&json!({ "events": body })).unwrap_or_default());
            for (k, v) in &e.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let ok = match req.send().await {
                Ok(r) if (200..400).contains(&r.status().as_u16()) => true,
                Ok(r) => {
                    tracing::debug!(endpoint = %e.name, status = %r.status(), "notification refused");
                    false
                }
                Err(err) => {
                    tracing::debug!(endpoint = %e.name, "notification not delivered: {err}");
                    false
                }
            };
            if !ok {
                n.metrics.failures.with_label_values(&[&e.name]).inc();
                failures += 1;
                if failures == e.threshold {
                    tracing::warn!(endpoint = %e.name, url = %e.url, "notifications fail {} times in a row; retrying every {:?}", e.threshold, e.backoff);
                }
                wait = if failures >= e.threshold { e.backoff } else { Duration::from_millis(50) };
                continue;
            }
            if failures >= e.threshold {
                tracing::info!(endpoint = %e.name, "notifications are delivered again");
            }
            failures = 0;
        }
        match n.meta.apply(Command::Notify(NotifyChange::Delivered { endpoint: e.name.clone(), through })).await {
            Ok(Outcome::Done | Outcome::Unchanged) => {
                n.metrics.events.with_label_values(&[&e.name, "sent"]).inc_by(sent);
                n.metrics.events.with_label_values(&[&e.name, "ignored"]).inc_by(ignored);
                n.metrics.last.with_label_values(&[&e.name]).set(berth_proto::now_ms() as i64 / 1000);
                // More may be waiting.
                wait = Duration::ZERO;
            }
            Ok(other) => tracing::warn!(endpoint = %e.name, "recording a delivery: {other:?}"),
            // Delivered but not recorded: the endpoint gets these events again (at least once).
            Err(err) => tracing::warn!(endpoint = %e.name, "recording a delivery: {err}"),
        }
    }
}

impl Notifier {
    /// One event as Distribution writes it. Its id is derived from the event's number and
    /// time, so a redelivery carries the same id and a receiver can drop duplicates.
    async fn envelope(&self, seq: u64, ev: &EventRecord) -> Value {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(format!("berth event {seq} {}", ev.at_ms).as_bytes());
        let hex = hex::encode(&h[..16]);
        let id = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]);
        let (kind, media_type, size) = match &ev.media_type {
            Some(m) => {
                // The manifest's length, from its body while the state still holds it.
                let size = match (&ev.digest, berth_proto::RepoName::parse(&ev.repository)) {
                    (Some(d), Ok(repo)) => self.meta.manifest(&repo, &berth_proto::Reference::Digest(d.clone())).await.ok().flatten().map(|(_, m)| m.body.len() as u64),
                    _ => None,
                };
                ("manifests", m.clone(), size)
            }
            None if ev.tag.is_some() => ("manifests", String::new(), None),
            None => ("blobs", "application/octet-stream".to_string(), ev.size),
        };
        let mut target = json!({ "repository": ev.repository });
        if !media_type.is_empty() {
            target["mediaType"] = json!(media_type);
        }
        if let Some(d) = &ev.digest {
            target["digest"] = json!(d.to_string());
            target["url"] = json!(format!("{}/v2/{}/{kind}/{d}", self.base_url, ev.repository));
        }
        if let Some(s) = size {
            target["size"] = json!(s);
            target["length"] = json!(s);
        }
        if let Some(t) = &ev.tag {
            target["tag"] = json!(t);
        }
        json!({
            "id": id,
            "timestamp": berth_api::handlers::token::humantime_rfc3339(ev.at_ms),
            "action": ev.action,
            "target": target,
            "request": {},
            "actor": {},
            "source": { "addr": self.source_addr },
        })
    }
}
