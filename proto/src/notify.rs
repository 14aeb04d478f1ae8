//! Notifications (protocol 5): the events the registry records for its webhook endpoints, and
//! the replicated position of each endpoint's delivery.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Command, Digest, Outcome};

/// The most events kept for delivery; past it the oldest go (an endpoint down that long
/// misses them, and the worker says so).
pub const MAX_EVENTS: u64 = 1_000_000;

/// What happened, as an event says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// `push` or `delete`.
    pub action: String,
    /// The repository.
    pub repository: String,
    /// The blob or manifest (none for a tag deleted by name).
    pub digest: Option<Digest>,
    /// The manifest's media type (none for a blob: `application/octet-stream` is sent).
    pub media_type: Option<String>,
    /// The blob's size (manifests: filled in at delivery).
    pub size: Option<u64>,
    /// The tag pushed or deleted.
    pub tag: Option<String>,
    /// When (the proposer's clock, ms since the epoch).
    pub at_ms: u64,
}

impl EventRecord {
    /// The event a command records once applied with `outcome`, if any: a blob linked, a
    /// manifest pushed (with its tag), a manifest or a tag deleted.
    pub fn of(command: &Command, outcome: &Outcome, at_ms: u64) -> Option<EventRecord> {
        if *outcome != Outcome::Done {
            return None;
        }
        let e = |action: &str, repo: &crate::RepoName| EventRecord {
            action: action.into(),
            repository: repo.to_string(),
            digest: None,
            media_type: None,
            size: None,
            tag: None,
            at_ms,
        };
        Some(match command {
            Command::LinkBlob { repo, digest, size } => EventRecord { digest: Some(digest.clone()), size: Some(*size), ..e("push", repo) },
            Command::PutManifest { repo, digest, manifest, tag } | Command::PutStoredManifest { repo, digest, manifest, tag } => EventRecord {
                digest: Some(digest.clone()),
                media_type: Some(manifest.media_type.clone()),
                tag: tag.as_ref().map(|t| t.to_string()),
                ..e("push", repo)
            },
            Command::DeleteManifest { repo, digest } => EventRecord { digest: Some(digest.clone()), ..e("delete", repo) },
            Command::DeleteTag { repo, tag } => EventRecord { tag: Some(tag.to_string()), ..e("delete", repo) },
            _ => return None,
        })
    }
}

/// Which endpoints events are kept for, and how far each has received them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyState {
    /// Endpoint name -> the last event it acknowledged (0: none).
    pub delivered: BTreeMap<String, u64>,
    /// The number the next event gets (events are numbered from 1).
    pub next: u64,
    /// The oldest event kept.
    pub first: u64,
}

impl NotifyState {
    /// The oldest event some endpoint still needs, or `next` if none does.
    pub fn needed_from(&self) -> u64 {
        self.delivered.values().map(|d| d + 1).min().unwrap_or(self.next).max(self.first)
    }
}

/// A change to notifications (protocol 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotifyChange {
    /// The endpoints configured: a new one receives events from the next on, one left out is
    /// forgotten with the events only it needed. With none, no event is kept.
    Endpoints(Vec<String>),
    /// `endpoint` received every event up to `through` (a position behind its own is ignored).
    Delivered {
        /// The endpoint.
        endpoint: String,
        /// The last event it acknowledged.
        through: u64,
    },
}
