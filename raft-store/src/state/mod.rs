//! The registry state held whole in memory: repositories, blob links, manifests, tags, the
//! referrers index, identity and cluster secrets. Until format 4 this was the state machine;
//! now the state lives on disk ([`crate::disk`]) and this form remains for two jobs: reading
//! snapshots and backups of formats 0 to 3 (which are migrated), and serving as the simple
//! model that the on-disk state must answer exactly like (the property tests in `disk`).
//! `apply` is the only way it changes; everything else here is a read-only query.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use berth_proto::identity::Identity;
use berth_proto::{namespace_of, Answer, Command, Digest, GcItem, LimitKind, ManifestRecord, Outcome, Query, Reference, RegistryLimits, RepoName, Request, Tag};
use serde::{Deserialize, Serialize};

use crate::types::typ::{LogId, StoredMembership};

mod gc;

/// A tag's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest it points at.
    pub digest: Digest,
    /// When it was last moved (ms since epoch).
    pub updated_ms: u64,
}

/// One repository's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    /// Blobs readable from this repository, with their sizes.
    pub blobs: BTreeMap<Digest, u64>,
    /// Manifests by digest.
    pub manifests: BTreeMap<Digest, Arc<ManifestRecord>>,
    /// Tags, in lexical order.
    pub tags: BTreeMap<Tag, TagRecord>,
    /// subject digest -> digests of manifests whose `subject` it is.
    pub referrers: BTreeMap<Digest, BTreeSet<Digest>>,
}

impl Repo {
    fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.manifests.is_empty() && self.tags.is_empty()
    }
}

/// Everything the state machine holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryState {
    /// Last log entry applied.
    pub last_applied: Option<LogId>,
    /// Last membership applied.
    pub last_membership: StoredMembership,
    /// Secret that signs upload state; identical on every node.
    pub http_secret: Option<Vec<u8>>,
    /// Repositories by name, in lexical order (the catalog's order).
    pub repos: BTreeMap<RepoName, Repo>,
    /// Every node id that has ever been in the membership, removed ones included: an id is
    /// never given to a second node.
    pub node_ids_used: BTreeSet<u64>,
    /// Manifest and tag deletes of the last [`TOMBSTONE_TTL_MS`] (at most [`MAX_TOMBSTONES`]),
    /// oldest first, so that a client retrying a delete whose answer it lost gets the same
    /// answer again instead of a 404.
    pub recent_deletes: VecDeque<Tombstone>,
    /// Users, projects, members, tokens and token signing keys (shared: queries hand out the
    /// same copy until the next change).
    pub identity: Arc<Identity>,
    /// Registry limits (format 4 and later only: never in a format-3 snapshot).
    #[serde(skip)]
    pub limits: RegistryLimits,
    /// Garbage collection's review queue: each item with when it was queued (format 5 and
    /// later only).
    #[serde(skip)]
    pub gc_queue: BTreeMap<GcItem, u64>,
    /// Content marked for deletion by garbage collection, with when (format 5 and later only).
    #[serde(skip)]
    pub gc_deleting: BTreeMap<Digest, u64>,
    /// Cleanup policies by project (format 5 and later only).
    #[serde(skip)]
    pub cleanup: crate::cleanup::Policies,
    /// Notification endpoints and positions (format 5 and later only).
    #[serde(skip)]
    pub notify: berth_proto::notify::NotifyState,
    /// Events kept for notification endpoints, by number (format 5 and later only).
    #[serde(skip)]
    pub events: BTreeMap<u64, berth_proto::notify::EventRecord>,
}

/// What an encoded state starts with (format 3, since groups joined identity). Format 2
/// carried `BERTHST2`; formats 0 and 1 had no marker and are told apart by their length.
pub const FORMAT_MAGIC: &[u8; 8] = b"BERTHST3";
/// The marker of format 2 (identity without groups).
const FORMAT2_MAGIC: &[u8; 8] = b"BERTHST2";

/// How long a delete is remembered for retries.
pub const TOMBSTONE_TTL_MS: u64 = 10 * 60 * 1000;
/// The most deletes remembered at once (memory stays bounded whatever the delete rate).
pub const MAX_TOMBSTONES: usize = 4096;

/// A recent delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Repository it happened in.
    pub repo: RepoName,
    /// The reference as deleted: a digest or a tag.
    pub reference: String,
    /// When (the proposer's clock, ms since epoch).
    pub at_ms: u64,
}

/// The state as snapshots stored it before tombstones existed (format 0).
#[derive(Deserialize)]
struct RegistryStateV0 {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    http_secret: Option<Vec<u8>>,
    repos: BTreeMap<RepoName, Repo>,
    node_ids_used: BTreeSet<u64>,
}

/// The state before identity (format 1).
#[derive(Deserialize)]
struct RegistryStateV1 {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    http_secret: Option<Vec<u8>>,
    repos: BTreeMap<RepoName, Repo>,
    node_ids_used: BTreeSet<u64>,
    recent_deletes: VecDeque<Tombstone>,
}

/// Identity before groups (format 2).
#[derive(Deserialize)]
struct IdentityV2 {
    version: u64,
    next_id: u64,
    users: BTreeMap<u64, berth_proto::identity::User>,
    projects: BTreeMap<u64, berth_proto::identity::Project>,
    members: BTreeMap<(u64, u64), berth_proto::identity::Role>,
    tokens: BTreeMap<u64, berth_proto::identity::TokenRecord>,
    signing_keys: Vec<berth_proto::identity::SigningKey>,
}

/// The state before groups (format 2).
#[derive(Deserialize)]
struct RegistryStateV2 {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    http_secret: Option<Vec<u8>>,
    repos: BTreeMap<RepoName, Repo>,
    node_ids_used: BTreeSet<u64>,
    recent_deletes: VecDeque<Tombstone>,
    identity: IdentityV2,
}

impl RegistryState {
    /// Encodes the state for a snapshot (format 3: the marker, then postcard).
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut out = FORMAT_MAGIC.to_vec();
        postcard::to_io(self, &mut out)?;
        Ok(out)
    }

    /// Decodes a snapshot's state of this format or an older one, upgrading it.
    pub fn decode(bytes: &[u8]) -> Result<RegistryState, postcard::Error> {
        if let Some(body) = bytes.strip_prefix(FORMAT_MAGIC.as_slice()) {
            return postcard::from_bytes::<RegistryState>(body);
        }
        if let Some(body) = bytes.strip_prefix(FORMAT2_MAGIC.as_slice()) {
            let v = postcard::from_bytes::<RegistryStateV2>(body)?;
            let i = v.identity;
            let identity = Identity {
                version: i.version,
                next_id: i.next_id,
                users: i.users,
                projects: i.projects,
                members: i.members,
                tokens: i.tokens,
                signing_keys: i.signing_keys,
                groups: BTreeMap::new(),
                group_members: BTreeMap::new(),
            };
            return Ok(RegistryState {
                last_applied: v.last_applied,
                last_membership: v.last_membership,
                http_secret: v.http_secret,
                repos: v.repos,
                node_ids_used: v.node_ids_used,
                recent_deletes: v.recent_deletes,
                identity: Arc::new(identity),
                ..RegistryState::default()
            });
        }
        let upgrade = |last_applied, last_membership, http_secret, repos, node_ids_used, recent_deletes| RegistryState {
            last_applied,
            last_membership,
            http_secret,
            repos,
            node_ids_used,
            recent_deletes,
            identity: Arc::default(),
            ..RegistryState::default()
        };
        match postcard::from_bytes::<RegistryStateV1>(bytes) {
            Ok(v) => Ok(upgrade(v.last_applied, v.last_membership, v.http_secret, v.repos, v.node_ids_used, v.recent_deletes)),
            Err(e) => match postcard::from_bytes::<RegistryStateV0>(bytes) {
                Ok(v) => Ok(upgrade(v.last_applied, v.last_membership, v.http_secret, v.repos, v.node_ids_used, VecDeque::new())),
                Err(_) => Err(e),
            },
        }
    }

    /// True if `reference` was deleted from `repo` recently enough that this is a retry.
    fn deleted_recently(&self, repo: &RepoName, reference: &str, now_ms: u64) -> bool {
        self.recent_deletes
            .iter()
            .any(|t| t.repo == *repo && t.reference == reference && t.at_ms.saturating_add(TOMBSTONE_TTL_MS) >= now_ms)
    }

    fn remember_delete(&mut self, repo: &RepoName, reference: String, at_ms: u64) {
        while self
            .recent_deletes
            .front()
            .is_some_and(|t| t.at_ms.saturating_add(TOMBSTONE_TTL_MS) < at_ms || self.recent_deletes.len() >= MAX_TOMBSTONES)
        {
            self.recent_deletes.pop_front();
        }
        self.recent_deletes.push_back(Tombstone { repo: repo.clone(), reference, at_ms });
    }

    /// The refusal for a change to `repo` (tagging it `tag`) that would make a repository past
    /// the namespace limit or a tag past the repository's limit.
    fn over_limit(&self, repo: &RepoName, tag: Option<&Tag>) -> Option<Outcome> {
        let limits = self.limits;
        let existing = self.repos.get(repo);
        if limits.repositories_per_namespace > 0 && existing.is_none() {
            let ns = namespace_of(repo.as_str());
            let held = self.repos.keys().filter(|r| namespace_of(r.as_str()) == ns).count() as u64;
            if held >= limits.repositories_per_namespace {
                return Some(Outcome::LimitReached { limit: LimitKind::RepositoriesPerNamespace, max: limits.repositories_per_namespace });
            }
        }
        let tag = tag?;
        let tags = existing.map_or(0, |r| r.tags.len() as u64);
        let new = existing.is_none_or(|r| !r.tags.contains_key(tag));
        if limits.tags_per_repository > 0 && new && tags >= limits.tags_per_repository {
            return Some(Outcome::LimitReached { limit: LimitKind::TagsPerRepository, max: limits.tags_per_repository });
        }
        None
    }

    /// Applies one command. Deterministic: depends only on the state and the request.
    pub fn apply(&mut self, req: &Request) -> Outcome {
        let outcome = self.apply_command(req);
        if let Some(event) = berth_proto::notify::EventRecord::of(&req.command, &outcome, req.at_ms) {
            if let Some((seq, gone)) = crate::notify::record(&mut self.notify) {
                self.events.insert(seq, event);
                self.events.retain(|s, _| !gone.contains(s));
            }
        }
        outcome
    }

    fn apply_command(&mut self, req: &Request) -> Outcome {
        match &req.command {
            Command::InitHttpSecret { secret } => {
                if self.http_secret.is_some() {
                    Outcome::Unchanged
                } else {
                    self.http_secret = Some(secret.clone());
                    Outcome::Done
                }
            }
            Command::LinkBlob { repo, digest, size } => {
                if self.gc_deleting.contains_key(digest) {
                    return Outcome::Deleting;
                }
                if let Some(refused) = self.over_limit(repo, None) {
                    return refused;
                }
                self.repos.entry(repo.clone()).or_default().blobs.insert(digest.clone(), *size);
                self.touch(GcItem::Link { repo: repo.clone(), digest: digest.clone() }, req.at_ms);
                self.touch(GcItem::Content { digest: digest.clone() }, req.at_ms);
                Outcome::Done
            }
            Command::UnlinkBlob { repo, digest } => {
                let Some(r) = self.repos.get_mut(repo) else { return Outcome::NotFound };
                // Decided here, in log order, so a delete racing a push of a manifest that
                // references the blob either wins before it or is refused after it.
                let users: Vec<Digest> =
                    r.manifests.iter().filter(|(_, m)| m.blobs.contains(digest)).map(|(d, _)| d.clone()).collect();
                if !users.is_empty() {
                    return Outcome::InUse { manifests: users };
                }
                let found = r.blobs.remove(digest).is_some();
                self.drop_if_empty(repo);
                if found {
                    self.touch(GcItem::Link { repo: repo.clone(), digest: digest.clone() }, req.at_ms);
                    self.touch(GcItem::Content { digest: digest.clone() }, req.at_ms);
                    Outcome::Done
                } else {
                    Outcome::NotFound
                }
            }
            Command::PutManifest { repo, digest, manifest, tag } | Command::PutStoredManifest { repo, digest, manifest, tag } => {
                if self.gc_deleting.contains_key(digest) {
                    return Outcome::Deleting;
                }
                if let Some(refused) = self.over_limit(repo, tag.as_ref()) {
                    return refused;
                }
                let empty = Repo::default();
                let r = self.repos.get(repo).unwrap_or(&empty);
                let blobs: Vec<Digest> =
                    manifest.blobs.iter().filter(|b| !r.blobs.contains_key(*b)).cloned().collect();
                let manifests: Vec<Digest> = manifest
                    .manifests
                    .iter()
                    .filter(|m| !r.manifests.contains_key(*m) && *m != digest)
                    .cloned()
                    .collect();
                if !blobs.is_empty() || !manifests.is_empty() {
                    return Outcome::MissingReferences { blobs, manifests };
                }
                let r = self.repos.entry(repo.clone()).or_default();
                let (record, new) = match r.manifests.get(digest) {
                    // Same digest, same bytes: keep the original creation time.
                    Some(existing) => (existing.clone(), false),
                    None => (Arc::new(manifest.clone()), true),
                };
                if let Some(subject) = &record.subject {
                    r.referrers.entry(subject.clone()).or_default().insert(digest.clone());
                }
                r.manifests.insert(digest.clone(), record.clone());
                let moved = tag.as_ref().and_then(|tag| r.tags.insert(tag.clone(), TagRecord { digest: digest.clone(), updated_ms: req.at_ms }));
                if new {
                    self.manifest_changed(repo, digest, &record, req.at_ms);
                } else {
                    self.touch(GcItem::Manifest { repo: repo.clone(), digest: digest.clone() }, req.at_ms);
                }
                if let Some(old) = moved {
                    self.touch(GcItem::Manifest { repo: repo.clone(), digest: old.digest }, req.at_ms);
                }
                Outcome::Done
            }
            Command::DeleteManifest { repo, digest } => {
                let gone = |s: &Self| if s.deleted_recently(repo, &digest.to_string(), req.at_ms) { Outcome::Done } else { Outcome::NotFound };
                if !self.remove_manifest(repo, digest, req.at_ms) {
                    return gone(self);
                }
                self.remember_delete(repo, digest.to_string(), req.at_ms);
                Outcome::Done
            }
            Command::DeleteTag { repo, tag } => {
                let old = self.repos.get_mut(repo).and_then(|r| r.tags.remove(tag));
                if let Some(old) = old {
                    self.drop_if_empty(repo);
                    self.touch(GcItem::Manifest { repo: repo.clone(), digest: old.digest }, req.at_ms);
                    self.remember_delete(repo, tag.to_string(), req.at_ms);
                    Outcome::Done
                } else if self.deleted_recently(repo, tag.as_str(), req.at_ms) {
                    Outcome::Done
                } else {
                    Outcome::NotFound
                }
            }
            Command::Identity(change) => {
                let outcome = crate::identity::apply(Arc::make_mut(&mut self.identity), change, req.at_ms);
                crate::cleanup::forget_deleted_projects(&mut self.cleanup, &self.identity);
                outcome
            }
            Command::Notify(change) => {
                let (outcome, gone) = crate::notify::apply(&mut self.notify, change);
                self.events.retain(|s, _| !gone.contains(s));
                outcome
            }
            Command::Cleanup(change) => crate::cleanup::apply(&mut self.cleanup, &self.identity, change, req.at_ms),
            // The model does not keep sites: the disk state's are tested in `disk/tests.rs`.
            Command::Geo(_) => Outcome::Unchanged,
            Command::SetLimits(limits) => {
                if self.limits == *limits {
                    Outcome::Unchanged
                } else {
                    self.limits = *limits;
                    Outcome::Done
                }
            }
            Command::GcSweep(items) => Outcome::Swept(items.iter().map(|i| self.sweep(i, req.at_ms) == Outcome::Done).collect()),
            Command::GcDeleted { digests } => Outcome::Swept(digests.iter().map(|d| self.gc_deleting.remove(d).is_some()).collect()),
            Command::GcEnqueue(items) => {
                for item in items {
                    self.touch(item.clone(), req.at_ms);
                }
                Outcome::Done
            }
        }
    }

    /// Removes a manifest with its tags and referrers entry; false if it is not there.
    fn remove_manifest(&mut self, repo: &RepoName, digest: &Digest, at_ms: u64) -> bool {
        let Some(r) = self.repos.get_mut(repo) else { return false };
        let Some(record) = r.manifests.remove(digest) else { return false };
        r.tags.retain(|_, t| &t.digest != digest);
        if let Some(subject) = &record.subject {
            if let Some(set) = r.referrers.get_mut(subject) {
                set.remove(digest);
                if set.is_empty() {
                    r.referrers.remove(subject);
                }
            }
        }
        self.drop_if_empty(repo);
        self.manifest_changed(repo, digest, &record, at_ms);
        true
    }

    fn drop_if_empty(&mut self, repo: &RepoName) {
        if self.repos.get(repo).is_some_and(Repo::is_empty) {
            self.repos.remove(repo);
        }
    }

    /// Size of a blob if it is linked into `repo`.
    pub fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Option<u64> {
        self.repos.get(repo)?.blobs.get(digest).copied()
    }

    /// A manifest by tag or digest, with its digest.
    pub fn manifest(&self, repo: &RepoName, reference: &Reference) -> Option<(Digest, Arc<ManifestRecord>)> {
        let r = self.repos.get(repo)?;
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => r.tags.get(t)?.digest.clone(),
        };
        let m = r.manifests.get(&digest)?.clone();
        Some((digest, m))
    }

    /// Up to `n` tags after `last`, in lexical order; `None` if the repository does not exist.
    pub fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Option<Vec<String>> {
        let r = self.repos.get(repo)?;
        let iter: Box<dyn Iterator<Item = &Tag>> = match last.and_then(|l| Tag::parse(l).ok()) {
            Some(l) => Box::new(r.tags.range((Bound::Excluded(l), Bound::Unbounded)).map(|(t, _)| t)),
            None if last.is_some() => Box::new(r.tags.keys().filter(move |t| t.as_str() > last.unwrap())),
            None => Box::new(r.tags.keys()),
        };
        Some(iter.take(n).map(|t| t.to_string()).collect())
    }

    /// Up to `n` repository names after `last`, in lexical order.
    pub fn catalog(&self, last: Option<&str>, n: usize) -> Vec<String> {
        self.repos
            .keys()
            .filter(|name| last.is_none_or(|l| name.as_str() > l))
            .take(n)
            .map(|r| r.to_string())
            .collect()
    }

    /// Answers a read asked over the network.
    pub fn answer(&self, query: &Query) -> Answer {
        match query {
            Query::BlobSize { repo, digest } => Answer::BlobSize(self.blob_size(repo, digest)),
            Query::Manifest { repo, reference } => Answer::Manifest(self.manifest(repo, reference)),
            Query::Tags { repo, last, n } => Answer::Tags(self.tags(repo, last.as_deref(), *n as usize)),
            Query::Catalog { last, n } => Answer::Catalog(self.catalog(last.as_deref(), *n as usize)),
            Query::Referrers { repo, subject } => Answer::Referrers(self.referrers(repo, subject)),
            Query::HttpSecret => Answer::HttpSecret(self.http_secret.clone()),
            Query::IdentityVersion => Answer::IdentityVersion(self.identity.version),
            Query::Identity => Answer::Identity(self.identity.clone()),
            Query::GcDue { manifests, until_ms, n } => Answer::GcDue(self.gc_due(*manifests, *until_ms, *n as usize)),
            Query::GcStatus => Answer::GcStatus(self.gc_status()),
            Query::GcCollectable(items) => Answer::GcCollectable(items.iter().map(|i| self.collectable(i)).collect()),
            Query::GcScan { after, n } => Answer::GcScan(self.gc_scan(after.as_ref(), *n as usize)),
            Query::Cleanup => Answer::Cleanup(Arc::new(self.cleanup.clone())),
            Query::NotifyPending { endpoint, n } => Answer::Events(match self.notify.delivered.get(endpoint) {
                Some(&after) => self.events.range(after + 1..).take(*n as usize).map(|(s, e)| (*s, e.clone())).collect(),
                None => Vec::new(),
            }),
            Query::NotifyStatus => Answer::Notify(self.notify.clone()),
            Query::Blobs { repo, after, n } => Answer::Blobs(match self.repos.get(repo) {
                Some(r) => {
                    let from = match after {
                        Some(d) => std::ops::Bound::Excluded(d.clone()),
                        None => std::ops::Bound::Unbounded,
                    };
                    r.blobs.range((from, std::ops::Bound::Unbounded)).take(*n as usize).map(|(d, s)| (d.clone(), *s)).collect()
                }
                None => Vec::new(),
            }),
            Query::GeoStatus => Answer::Geo(Default::default()),
            Query::GeoMissing { .. } | Query::GeoContent { .. } => Answer::Placements(Vec::new()),
            Query::GeoPlacement(_) => Answer::Placement(None),
        }
    }

    /// Manifests in `repo` whose subject is `subject`.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> Vec<(Digest, Arc<ManifestRecord>)> {
        let Some(r) = self.repos.get(repo) else { return Vec::new() };
        r.referrers
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|d| r.manifests.get(d).map(|m| (d.clone(), m.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest(i: u8) -> Digest {
        Digest::sha256_of(&[i])
    }
    fn repo(i: u8) -> RepoName {
        RepoName::parse(&format!("r{}", i % 3)).unwrap()
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        let blob_ids = proptest::collection::vec(0u8..6, 0..3);
        prop_oneof![
            (0u8..3, 0u8..6).prop_map(|(r, d)| Command::LinkBlob { repo: repo(r), digest: digest(d), size: d as u64 }),
            (0u8..3, 0u8..6).prop_map(|(r, d)| Command::UnlinkBlob { repo: repo(r), digest: digest(d) }),
            (0u8..3, 10u8..14, blob_ids, proptest::option::of(10u8..14), proptest::option::of(0u8..2)).prop_map(
                |(r, m, blobs, subject, tag)| Command::PutManifest {
                    repo: repo(r),
                    digest: digest(m),
                    manifest: ManifestRecord {
                        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                        body: vec![m],
                        blobs: blobs.into_iter().map(digest).collect(),
                        manifests: vec![],
                        subject: subject.map(digest),
                        artifact_type: None,
                        annotations: Default::default(),
                        created_ms: 0,
                    },
                    tag: tag.map(|t| Tag::parse(&format!("t{t}")).unwrap()),
                }
            ),
            (0u8..3, 10u8..14).prop_map(|(r, d)| Command::DeleteManifest { repo: repo(r), digest: digest(d) }),
            (0u8..3, 0u8..2).prop_map(|(r, t)| Command::DeleteTag { repo: repo(r), tag: Tag::parse(&format!("t{t}")).unwrap() }),
        ]
    }

    proptest! {
        /// Random command sequences keep the invariants: every stored manifest's blobs are
        /// linked when it was stored, every tag points at a stored manifest, every referrers
        /// entry names a stored manifest whose subject matches, no stored manifest's blob is
        /// ever unlinked, and no empty repository lingers.
        /// A postcard round trip (what a snapshot does) gives the same state.
        #[test]
        fn invariants_hold(cmds in proptest::collection::vec(arb_command(), 0..60)) {
            let mut s = RegistryState::default();
            for (i, c) in cmds.into_iter().enumerate() {
                let before = s.clone();
                let out = s.apply(&Request { command: c.clone(), at_ms: i as u64 });
                if let (Command::PutManifest { repo, manifest, .. }, Outcome::Done) = (&c, &out) {
                    for b in &manifest.blobs {
                        prop_assert!(before.blob_size(repo, b).is_some());
                    }
                }
                if matches!(out, Outcome::MissingReferences { .. } | Outcome::NotFound | Outcome::InUse { .. }) {
                    prop_assert_eq!(&before, &s);
                }
                for r in s.repos.values() {
                    prop_assert!(!r.is_empty());
                    // No stored manifest ever dangles: its blobs stay linked while it exists.
                    for m in r.manifests.values() {
                        for b in &m.blobs {
                            prop_assert!(r.blobs.contains_key(b));
                        }
                    }
                    for t in r.tags.values() {
                        prop_assert!(r.manifests.contains_key(&t.digest));
                    }
                    for (subject, set) in &r.referrers {
                        for d in set {
                            prop_assert_eq!(r.manifests[d].subject.as_ref(), Some(subject));
                        }
                    }
                    // And the other way: the index holds every manifest that has a subject.
                    for (d, m) in &r.manifests {
                        if let Some(subject) = &m.subject {
                            prop_assert!(r.referrers.get(subject).is_some_and(|set| set.contains(d)), "{} missing from the referrers of {}", d, subject);
                        }
                    }
                }
            }
            prop_assert!(s.recent_deletes.len() <= MAX_TOMBSTONES);
            let bytes = s.encode().unwrap();
            let back = RegistryState::decode(&bytes).unwrap();
            prop_assert_eq!(back, without_gc(s));
        }
    }

    /// `s` as a format-3 snapshot keeps it: without garbage collection's queue (which came later).
    fn without_gc(mut s: RegistryState) -> RegistryState {
        s.gc_queue.clear();
        s.gc_deleting.clear();
        s
    }

    fn manifest_with(blob: Digest) -> ManifestRecord {
        ManifestRecord {
            media_type: "x".into(), body: vec![], blobs: vec![blob], manifests: vec![],
            subject: None, artifact_type: None, annotations: Default::default(), created_ms: 0,
        }
    }

    #[test]
    fn a_retried_delete_gets_the_first_answer_until_the_tombstone_expires() {
        let mut s = RegistryState::default();
        let r = RepoName::parse("a/b").unwrap();
        let at = |command, at_ms| Request { command, at_ms };
        s.apply(&at(Command::LinkBlob { repo: r.clone(), digest: digest(1), size: 1 }, 0));
        let tag = Tag::parse("v1").unwrap();
        let put = Command::PutManifest { repo: r.clone(), digest: digest(9), manifest: manifest_with(digest(1)), tag: Some(tag.clone()) };
        assert_eq!(s.apply(&at(put, 0)), Outcome::Done);
        let del_tag = Command::DeleteTag { repo: r.clone(), tag: tag.clone() };
        assert_eq!(s.apply(&at(del_tag.clone(), 1_000)), Outcome::Done);
        assert_eq!(s.apply(&at(del_tag.clone(), 2_000)), Outcome::Done, "retried tag delete");
        let del = Command::DeleteManifest { repo: r.clone(), digest: digest(9) };
        assert_eq!(s.apply(&at(del.clone(), 3_000)), Outcome::Done);
        assert_eq!(s.apply(&at(del.clone(), 4_000)), Outcome::Done, "retried manifest delete");
        assert_eq!(s.apply(&at(del.clone(), 3_000 + TOMBSTONE_TTL_MS + 1)), Outcome::NotFound, "long after");
        let never = Command::DeleteManifest { repo: r.clone(), digest: digest(8) };
        assert_eq!(s.apply(&at(never, 5_000)), Outcome::NotFound);
        // Memory stays bounded however many deletes come.
        for i in 0..(MAX_TOMBSTONES as u64 + 100) {
            s.apply(&at(Command::LinkBlob { repo: r.clone(), digest: digest(1), size: 1 }, 10_000));
            let tag = Tag::parse(&format!("t{i}")).unwrap();
            let put = Command::PutManifest { repo: r.clone(), digest: digest(9), manifest: manifest_with(digest(1)), tag: Some(tag.clone()) };
            s.apply(&at(put, 10_000));
            s.apply(&at(Command::DeleteTag { repo: r.clone(), tag }, 10_000));
        }
        assert_eq!(s.recent_deletes.len(), MAX_TOMBSTONES);
    }

    #[test]
    fn snapshots_from_before_tombstones_still_load() {
        #[derive(Serialize)]
        struct V0<'a> {
            last_applied: &'a Option<LogId>,
            last_membership: &'a StoredMembership,
            http_secret: &'a Option<Vec<u8>>,
            repos: &'a BTreeMap<RepoName, Repo>,
            node_ids_used: &'a BTreeSet<u64>,
        }
        let mut s = RegistryState::default();
        let r = RepoName::parse("a/b").unwrap();
        s.apply(&Request { command: Command::LinkBlob { repo: r.clone(), digest: digest(1), size: 7 }, at_ms: 0 });
        s.http_secret = Some(vec![1, 2, 3]);
        s.node_ids_used.insert(1);
        let old = postcard::to_stdvec(&V0 {
            last_applied: &s.last_applied,
            last_membership: &s.last_membership,
            http_secret: &s.http_secret,
            repos: &s.repos,
            node_ids_used: &s.node_ids_used,
        })
        .unwrap();
        assert_eq!(RegistryState::decode(&old).unwrap(), without_gc(s.clone()));
        assert!(RegistryState::decode(&old[..old.len() - 1]).is_err());
    }

    #[test]
    fn snapshots_from_before_identity_still_load() {
        #[derive(Serialize)]
        struct V1<'a> {
            last_applied: &'a Option<LogId>,
            last_membership: &'a StoredMembership,
            http_secret: &'a Option<Vec<u8>>,
            repos: &'a BTreeMap<RepoName, Repo>,
            node_ids_used: &'a BTreeSet<u64>,
            recent_deletes: &'a VecDeque<Tombstone>,
        }
        let mut s = RegistryState::default();
        let r = RepoName::parse("a/b").unwrap();
        s.apply(&Request { command: Command::LinkBlob { repo: r.clone(), digest: digest(1), size: 7 }, at_ms: 0 });
        s.apply(&Request { command: Command::UnlinkBlob { repo: r.clone(), digest: digest(1) }, at_ms: 0 });
        s.apply(&Request { command: Command::LinkBlob { repo: r, digest: digest(2), size: 7 }, at_ms: 0 });
        s.http_secret = Some(vec![9]);
        let old = postcard::to_stdvec(&V1 {
            last_applied: &s.last_applied,
            last_membership: &s.last_membership,
            http_secret: &s.http_secret,
            repos: &s.repos,
            node_ids_used: &s.node_ids_used,
            recent_deletes: &s.recent_deletes,
        })
        .unwrap();
        assert_eq!(RegistryState::decode(&old).unwrap(), without_gc(s.clone()));
        // And the current format round-trips with identity in it.
        s.apply(&Request {
            command: Command::Identity(berth_proto::identity::IdentityChange::CreateUser { username: "u".into(), password_hash: None, admin: true }),
            at_ms: 1,
        });
        assert_eq!(RegistryState::decode(&s.encode().unwrap()).unwrap(), without_gc(s.clone()));
    }

    #[test]
    fn snapshots_from_before_groups_still_load() {
        #[derive(Serialize)]
        struct IdV2<'a> {
            version: u64,
            next_id: u64,
            users: &'a BTreeMap<u64, berth_proto::identity::User>,
            projects: &'a BTreeMap<u64, berth_proto::identity::Project>,
            members: &'a BTreeMap<(u64, u64), berth_proto::identity::Role>,
            tokens: &'a BTreeMap<u64, berth_proto::identity::TokenRecord>,
            signing_keys: &'a Vec<berth_proto::identity::SigningKey>,
        }
        #[derive(Serialize)]
        struct V2<'a> {
            last_applied: &'a Option<LogId>,
            last_membership: &'a StoredMembership,
            http_secret: &'a Option<Vec<u8>>,
            repos: &'a BTreeMap<RepoName, Repo>,
            node_ids_used: &'a BTreeSet<u64>,
            recent_deletes: &'a VecDeque<Tombstone>,
            identity: IdV2<'a>,
        }
        use berth_proto::identity::{IdentityChange, Visibility};
        let mut s = RegistryState::default();
        let r = RepoName::parse("a/b").unwrap();
        s.apply(&Request { command: Command::LinkBlob { repo: r, digest: digest(1), size: 7 }, at_ms: 0 });
        for c in [
            IdentityChange::CreateUser { username: "u".into(), password_hash: None, admin: true },
            IdentityChange::CreateProject { path: "g/p".into(), visibility: Visibility::Public, owner: Some(1) },
            IdentityChange::AddSigningKey { kid: "k".into(), pkcs8: vec![1, 2] },
        ] {
            s.apply(&Request { command: Command::Identity(c), at_ms: 1 });
        }
        let i = &s.identity;
        let mut old = FORMAT2_MAGIC.to_vec();
        old.extend(
            postcard::to_stdvec(&V2 {
                last_applied: &s.last_applied,
                last_membership: &s.last_membership,
                http_secret: &s.http_secret,
                repos: &s.repos,
                node_ids_used: &s.node_ids_used,
                recent_deletes: &s.recent_deletes,
                identity: IdV2 {
                    version: i.version,
                    next_id: i.next_id,
                    users: &i.users,
                    projects: &i.projects,
                    members: &i.members,
                    tokens: &i.tokens,
                    signing_keys: &i.signing_keys,
                },
            })
            .unwrap(),
        );
        assert_eq!(RegistryState::decode(&old).unwrap(), without_gc(s.clone()));
        s.apply(&Request { command: Command::Identity(IdentityChange::CreateGroup { path: "g".into(), owner: Some(1) }), at_ms: 2 });
        assert_eq!(RegistryState::decode(&s.encode().unwrap()).unwrap(), without_gc(s.clone()));
    }

    #[test]
    fn pagination() {
        let mut s = RegistryState::default();
        let r = RepoName::parse("a/b").unwrap();
        s.apply(&Request { command: Command::LinkBlob { repo: r.clone(), digest: digest(1), size: 1 }, at_ms: 0 });
        for t in ["c", "a", "b"] {
            let cmd = Command::PutManifest {
                repo: r.clone(),
                digest: digest(9),
                manifest: ManifestRecord {
                    media_type: "x".into(), body: vec![], blobs: vec![digest(1)], manifests: vec![],
                    subject: None, artifact_type: None, annotations: Default::default(), created_ms: 0,
                },
                tag: Some(Tag::parse(t).unwrap()),
            };
            assert_eq!(s.apply(&Request { command: cmd, at_ms: 0 }), Outcome::Done);
        }
        assert_eq!(s.tags(&r, None, 2).unwrap(), vec!["a", "b"]);
        assert_eq!(s.tags(&r, Some("b"), 10).unwrap(), vec!["c"]);
        assert!(s.tags(&RepoName::parse("zz").unwrap(), None, 10).is_none());
        assert_eq!(s.catalog(None, 10), vec!["a/b"]);
        assert!(s.catalog(Some("a/b"), 10).is_empty());
    }
}
