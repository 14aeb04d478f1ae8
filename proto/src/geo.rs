//! Sites (protocol 6): which sites the cluster has, which nodes belong to each, and where each
//! piece of content (a blob or a manifest body) is held. A site is a set of nodes sharing one
//! blob store; every site's replicator copies what its store lacks from a site that holds it
//! and records the copy here, so every node knows where content can be fetched from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// The longest site name: a label, as in DNS.
pub const MAX_SITE_NAME: usize = 63;

/// Checks a site name: 1 to 63 lowercase letters, digits and `-`, starting with a letter.
pub fn check_site_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SITE_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid site name {name:?}: 1 to {MAX_SITE_NAME} lowercase letters, digits and '-', starting with a letter"))
    }
}

/// A change to the sites, replicated through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GeoChange {
    /// A node says which site it belongs to and where its gRPC listener is. A site named for
    /// the first time is added, with a backfill to do: everything committed before it joined
    /// is missing there until its replicator has looked.
    Join {
        /// The site.
        site: String,
        /// The node.
        node_id: u64,
        /// The node's gRPC address as peers reach it.
        grpc_addr: String,
    },
    /// A site's store holds these digests, verified (copied there, or found there). Digests
    /// that are no longer content (garbage collected meanwhile) are ignored.
    Placed {
        /// The site.
        site: String,
        /// What it holds.
        digests: Vec<Digest>,
        /// The backfill has looked at every piece of content up to this digest (in digest
        /// order); `Some("")` is never sent. [`BACKFILL_DONE`] ends the backfill.
        backfill_through: Option<String>,
    },
    /// A site's store turned out not to hold these digests after all (verification found
    /// them missing or damaged and could not repair them at once): they are missing there
    /// again, for its replicator.
    Lost {
        /// The site.
        site: String,
        /// What it lacks.
        digests: Vec<Digest>,
    },
}

/// The `backfill_through` that says the backfill has looked at everything.
pub const BACKFILL_DONE: &str = "~done";

/// One site as the state knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SiteRecord {
    /// When it joined (the proposer's clock, ms since the epoch).
    pub added_ms: u64,
    /// Its nodes: id -> gRPC address.
    pub nodes: BTreeMap<u64, String>,
    /// How far the backfill has looked (digest order); `None` before it starts, and
    /// [`BACKFILL_DONE`] once it has looked at everything.
    pub backfill_through: Option<String>,
    /// Pieces of content committed since it joined that it does not hold yet.
    pub missing: u64,
    /// Their bytes, where known (blobs; manifest bodies count 0).
    pub missing_bytes: u64,
    /// Pieces of content recorded as held there.
    pub held: u64,
    /// When it last recorded a copy (ms since the epoch; 0 never).
    pub last_placed_ms: u64,
}

impl SiteRecord {
    /// True once the backfill has looked at everything committed before the site joined.
    pub fn backfilled(&self) -> bool {
        self.backfill_through.as_deref() == Some(BACKFILL_DONE)
    }
}

/// The sites, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GeoState {
    /// Every site that has joined.
    pub sites: BTreeMap<String, SiteRecord>,
    /// The last promotion that started this cluster, if one did.
    pub promoted: Option<Promotion>,
}

/// A secondary site made the primary (`berth geo promote`): the state it had then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The site promoted.
    pub site: String,
    /// The node whose state the new cluster started from.
    pub node_id: u64,
    /// The old cluster's log index that state had applied: everything the old cluster
    /// committed after it is not in the new one.
    pub from_index: u64,
    /// The old cluster's identity (empty for one founded by `berth serve`).
    pub from_cluster: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Content the site lacked then, and its bytes (known for blobs).
    pub missing: u64,
    pub missing_bytes: u64,
}

impl GeoState {
    /// The site a node belongs to.
    pub fn site_of(&self, node_id: u64) -> Option<&str> {
        self.sites.iter().find(|(_, s)| s.nodes.contains_key(&node_id)).map(|(n, _)| n.as_str())
    }
}

/// A piece of content and the sites that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The content.
    pub digest: Digest,
    /// The sites recorded as holding it.
    pub sites: Vec<String>,
    /// Its size, if it is a blob linked somewhere (manifest bodies: `None`).
    pub size: Option<u64>,
    /// For content a site lacks: when it arrived (ms since the epoch); otherwise 0.
    pub queued_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_are_labels() {
        for ok in ["a", "eu-west-1", "primary"] {
            assert!(check_site_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_site_name(bad).is_err(), "{bad}");
        }
    }
}
