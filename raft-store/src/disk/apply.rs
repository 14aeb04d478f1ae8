//! Applying commands to the on-disk state: one write transaction per batch of log entries,
//! `last_applied` written in the same transaction. The rules are those of
//! [`RegistryState::apply`](crate::state::RegistryState::apply), which the property tests hold
//! this to; the indexes (`blob_users`, `manifest_tags`, `referrers`) make every check a range
//! read instead of a scan of the repository.

use std::sync::Arc;

use berth_proto::{Command, Digest, GcItem, ManifestRecord, Outcome, RepoName, Request};
use openraft::EntryPayload;
use redb::{ReadableTable, Table, WriteTransaction};

use super::cache::Changed;
use super::tables::{self, bounds, key2, key3, last_part, seq_key, within};
use super::{DResult, DiskError, DiskState, Head, RepoCounts, Small, DURABLE_BYTES, DURABLE_EVERY, META_HEAD, META_CLEANUP, META_IDENTITY, META_LIMITS, META_GEO, META_NOTIFY, META_PROTOCOL};
use crate::state::{RegistryState, TagRecord, Tombstone, MAX_TOMBSTONES, TOMBSTONE_TTL_MS};
use crate::types::typ::{Entry, StoredMembership};

type T<'t> = Table<'t, &'static str, &'static [u8]>;

pub(super) mod gc;
pub(super) mod geo;

impl DiskState {
    /// Applies `entries` (consecutive, in log order) in one transaction.
    pub fn apply_entries(&self, entries: Vec<Entry>) -> DResult<Vec<Outcome>> {
        let mut undurable = self.undurable.lock().unwrap();
        let n = entries.len() as u64;
        let bytes: u64 = entries.iter().map(weight).sum();
        let durable = undurable.0 + n >= DURABLE_EVERY || undurable.1 + bytes >= DURABLE_BYTES;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable { redb::Durability::Immediate } else { redb::Durability::None });
        let (out, small) = {
            let mut w = Writer::open(&txn, self.small())?;
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                w.small.head.last_applied = Some(entry.log_id);
                out.push(match entry.payload {
                    EntryPayload::Blank => Outcome::Unchanged,
                    EntryPayload::Normal(req) => {
                        let since = req.command.since();
                        if since > w.small.protocol {
                            w.small.protocol = since;
                            w.protocol_changed = true;
                        }
                        let outcome = w.apply(&req)?;
                        w.record_event(&req, &outcome)?;
                        outcome
                    }
                    EntryPayload::Membership(m) => {
                        w.small.head.node_ids_used.extend(m.nodes().map(|(id, _)| *id));
                        w.small.head.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Outcome::Unchanged
                    }
                });
            }
            (out, w.finish()?)
        };
        let (small, changed) = small;
        txn.commit()?;
        self.cache.invalidate(&changed);
        *self.small.write().unwrap() = small;
        *undurable = if durable { (0, 0) } else { (undurable.0 + n, undurable.1 + bytes) };
        Ok(out)
    }
}

/// Roughly how many bytes applying an entry writes (manifest bodies dominate).
fn weight(e: &Entry) -> u64 {
    match &e.payload {
        EntryPayload::Normal(Request { command: Command::PutManifest { manifest, .. }, .. }) => 256 + manifest.body.len() as u64,
        _ => 256,
    }
}

/// Loads a state of an older format (held in memory) into the empty tables of `txn`.
pub(super) fn load_legacy(txn: &WriteTransaction, state: &RegistryState) -> DResult<()> {
    let small = Small {
        head: Head {
            last_applied: state.last_applied,
            last_membership: state.last_membership.clone(),
            http_secret: state.http_secret.clone(),
            node_ids_used: state.node_ids_used.clone(),
            tomb_first: 0,
            tomb_next: 0,
        },
        identity: state.identity.clone(),
        limits: state.limits,
        cleanup: Arc::new(state.cleanup.clone()),
        protocol: 1,
        notify: Default::default(),
        geo: Default::default(),
        cluster: String::new(),
    };
    let mut w = Writer::open(txn, small)?;
    w.identity_changed = true;
    w.cleanup_changed = true;
    w.protocol_changed = true;
    for (name, repo) in &state.repos {
        for (digest, size) in &repo.blobs {
            w.link_blob(name, digest, *size, 0)?;
        }
        for (digest, record) in &repo.manifests {
            w.insert_manifest(name, digest, record, 0)?;
        }
        for (tag, record) in &repo.tags {
            w.set_tag(name, tag.as_str(), record)?;
        }
    }
    for t in &state.recent_deletes {
        w.push_tombstone(t)?;
    }
    w.finish()?;
    Ok(())
}

/// Builds the indexes format 5 added (`content_refs`, `manifest_parents`) from the tables of
/// `txn`, for a state of format 4 opened or imported by this build.
pub(super) fn rebuild_derived(txn: &WriteTransaction) -> DResult<()> {
    for def in tables::DERIVED_IN_FORMAT_5 {
        txn.delete_table(def)?;
    }
    let mut refs = txn.open_table(tables::CONTENT_REFS)?;
    let mut parents = txn.open_table(tables::MANIFEST_PARENTS)?;
    let split = |key: &str| -> DResult<(String, String)> {
        key.split_once('\0').map(|(r, d)| (r.to_string(), d.to_string())).ok_or_else(|| DiskError::Format(format!("a state key {key:?} has one part")))
    };
    for row in txn.open_table(tables::BLOBS)?.iter()? {
        let (r, d) = split(row?.0.value())?;
        refs.insert(key3(&d, &r, "b").as_str(), [].as_slice())?;
    }
    for row in txn.open_table(tables::MANIFESTS)?.iter()? {
        let row = row?;
        let (r, d) = split(row.0.value())?;
        refs.insert(key3(&d, &r, "m").as_str(), [].as_slice())?;
        let record: ManifestRecord = decode(row.1.value())?;
        for c in record.manifests.iter().map(|c| c.to_string()).filter(|c| *c != d) {
            parents.insert(key3(&r, &c, &d).as_str(), [].as_slice())?;
        }
    }
    Ok(())
}

/// The tables of one write transaction and the working copy of the in-memory part.
struct Writer<'t> {
    meta: T<'t>,
    repos: T<'t>,
    blobs: T<'t>,
    manifests: T<'t>,
    tags: T<'t>,
    referrers: T<'t>,
    blob_users: T<'t>,
    manifest_tags: T<'t>,
    tombstones: T<'t>,
    content_refs: T<'t>,
    manifest_parents: T<'t>,
    gc_queue: T<'t>,
    gc_due: T<'t>,
    gc_deleting: T<'t>,
    small: Small,
    identity_changed: bool,
    limits_changed: bool,
    cleanup_changed: bool,
    protocol_changed: bool,
    notify_changed: bool,
    events: T<'t>,
    placement: T<'t>,
    geo_missing: T<'t>,
    geo_changed: bool,
    /// What the cache may hold that this batch changed.
    changed: Changed,
}

fn decode<V: serde::de::DeserializeOwned>(bytes: &[u8]) -> DResult<V> {
    Ok(postcard::from_bytes(bytes)?)
}

/// True if `table` (of a write or a read transaction) holds `key`.
pub(super) fn has<R: ReadableTable<&'static str, &'static [u8]>>(table: &R, key: &str) -> DResult<bool> {
    Ok(table.get(key)?.is_some())
}

/// A stored blob size.
pub(super) fn blob_size(bytes: &[u8]) -> DResult<u64> {
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| DiskError::Format("a blob size is not 8 bytes".into()))?))
}

impl<'t> Writer<'t> {
    fn open(txn: &'t WriteTransaction, small: Small) -> DResult<Self> {
        Ok(Writer {
            meta: txn.open_table(tables::META)?,
            repos: txn.open_table(tables::REPOS)?,
            blobs: txn.open_table(tables::BLOBS)?,
            manifests: txn.open_table(tables::MANIFESTS)?,
            tags: txn.open_table(tables::TAGS)?,
            referrers: txn.open_table(tables::REFERRERS)?,
            blob_users: txn.open_table(tables::BLOB_USERS)?,
            manifest_tags: txn.open_table(tables::MANIFEST_TAGS)?,
            tombstones: txn.open_table(tables::TOMBSTONES)?,
            content_refs: txn.open_table(tables::CONTENT_REFS)?,
            manifest_parents: txn.open_table(tables::MANIFEST_PARENTS)?,
            gc_queue: txn.open_table(tables::GC_QUEUE)?,
            gc_due: txn.open_table(tables::GC_DUE)?,
            gc_deleting: txn.open_table(tables::GC_DELETING)?,
            small,
            identity_changed: false,
            limits_changed: false,
            cleanup_changed: false,
            protocol_changed: false,
            notify_changed: false,
            events: txn.open_table(tables::EVENTS)?,
            placement: txn.open_table(tables::PLACEMENT)?,
            geo_missing: txn.open_table(tables::GEO_MISSING)?,
            geo_changed: false,
            changed: Changed::default(),
        })
    }

    /// Keeps the event `req` makes (applied with `outcome`) while an endpoint wants events.
    fn record_event(&mut self, req: &Request, outcome: &Outcome) -> DResult<()> {
        let Some(event) = berth_proto::notify::EventRecord::of(&req.command, outcome, req.at_ms) else { return Ok(()) };
        let Some((seq, gone)) = crate::notify::record(&mut self.small.notify) else { return Ok(()) };
        self.events.insert(seq_key(seq).as_str(), postcard::to_stdvec(&event)?.as_slice())?;
        self.drop_events(gone)?;
        self.notify_changed = true;
        Ok(())
    }

    fn drop_events(&mut self, gone: std::ops::Range<u64>) -> DResult<()> {
        for seq in gone {
            self.events.remove(seq_key(seq).as_str())?;
        }
        Ok(())
    }

    /// Writes the in-memory part into the meta table and hands it back, with what changed.
    fn finish(mut self) -> DResult<(Small, Changed)> {
        self.meta.insert(META_HEAD, postcard::to_stdvec(&self.small.head)?.as_slice())?;
        if self.identity_changed {
            self.meta.insert(META_IDENTITY, postcard::to_stdvec(&*self.small.identity)?.as_slice())?;
        }
        if self.limits_changed {
            self.meta.insert(META_LIMITS, postcard::to_stdvec(&self.small.limits)?.as_slice())?;
        }
        if self.notify_changed {
            self.meta.insert(META_NOTIFY, postcard::to_stdvec(&self.small.notify)?.as_slice())?;
        }
        if self.geo_changed {
            self.meta.insert(META_GEO, postcard::to_stdvec(&self.small.geo)?.as_slice())?;
        }
        if self.protocol_changed {
            self.meta.insert(META_PROTOCOL, postcard::to_stdvec(&self.small.protocol)?.as_slice())?;
        }
        if self.cleanup_changed {
            self.meta.insert(META_CLEANUP, postcard::to_stdvec(&*self.small.cleanup)?.as_slice())?;
        }
        Ok((self.small, self.changed))
    }

    fn counts(&self, repo: &str) -> DResult<Option<RepoCounts>> {
        self.repos.get(repo)?.map(|v| decode(v.value())).transpose()
    }

    /// Changes a repository's counts, dropping its row when it is empty.
    fn count(&mut self, repo: &str, change: impl FnOnce(&mut RepoCounts)) -> DResult<()> {
        let mut c = self.counts(repo)?.unwrap_or_default();
        change(&mut c);
        if c.is_empty() {
            self.repos.remove(repo)?;
        } else {
            self.repos.insert(repo, postcard::to_stdvec(&c)?.as_slice())?;
        }
        Ok(())
    }


    /// The last parts of the keys within `prefix`.
    fn parts_within(table: &T<'t>, prefix: &str) -> DResult<Vec<String>> {
        let range = within(prefix);
        let mut out = Vec::new();
        for row in table.range::<&str>(bounds(&range))? {
            out.push(last_part(row?.0.value()).to_string());
        }
        Ok(out)
    }

    fn apply(&mut self, req: &Request) -> DResult<Outcome> {
        Ok(match &req.command {
            Command::InitHttpSecret { secret } => {
                if self.small.head.http_secret.is_some() {
                    Outcome::Unchanged
                } else {
                    self.small.head.http_secret = Some(secret.clone());
                    Outcome::Done
                }
            }
            Command::LinkBlob { repo, digest, size } => {
                if has(&self.gc_deleting, &digest.to_string())? {
                    return Ok(Outcome::Deleting);
                }
                if let Some(refused) = self.over_limit(repo, None)? {
                    return Ok(refused);
                }
                self.link_blob(repo, digest, *size, req.at_ms)?;
                self.touch(&GcItem::Link { repo: repo.clone(), digest: digest.clone() }, req.at_ms)?;
                self.touch(&GcItem::Content { digest: digest.clone() }, req.at_ms)?;
                Outcome::Done
            }
            Command::UnlinkBlob { repo, digest } => {
                if self.counts(repo.as_str())?.is_none() {
                    return Ok(Outcome::NotFound);
                }
                // Decided here, in log order, so a delete racing a push of a manifest that
                // references the blob either wins before it or is refused after it.
                let users = Self::parts_within(&self.blob_users, &key2(repo.as_str(), &digest.to_string()))?;
                if !users.is_empty() {
                    let manifests = users.iter().map(|d| Digest::parse(d)).collect::<Result<_, _>>().map_err(|e| DiskError::Format(e.to_string()))?;
                    return Ok(Outcome::InUse { manifests });
                }
                if self.unlink_blob(repo, digest)? {
                    self.touch(&GcItem::Link { repo: repo.clone(), digest: digest.clone() }, req.at_ms)?;
                    self.touch(&GcItem::Content { digest: digest.clone() }, req.at_ms)?;
                    Outcome::Done
                } else {
                    Outcome::NotFound
                }
            }
            Command::PutManifest { repo, digest, manifest, tag } | Command::PutStoredManifest { repo, digest, manifest, tag } => {
                if has(&self.gc_deleting, &digest.to_string())? {
                    return Ok(Outcome::Deleting);
                }
                if let Some(refused) = self.over_limit(repo, tag.as_ref())? {
                    return Ok(refused);
                }
                let r = repo.as_str();
                let mut missing_blobs = Vec::new();
                for b in &manifest.blobs {
                    if !has(&self.blobs, &key2(r, &b.to_string()))? {
                        missing_blobs.push(b.clone());
                    }
                }
                let mut missing_manifests = Vec::new();
                for m in &manifest.manifests {
                    if m != digest && !has(&self.manifests, &key2(r, &m.to_string()))? {
                        missing_manifests.push(m.clone());
                    }
                }
                if !missing_blobs.is_empty() || !missing_manifests.is_empty() {
                    return Ok(Outcome::MissingReferences { blobs: missing_blobs, manifests: missing_manifests });
                }
                // Same digest, same bytes: the first record (and its creation time) stays.
                let existing = self.manifests.get(key2(r, &digest.to_string()).as_str())?.map(|v| decode::<ManifestRecord>(v.value())).transpose()?;
                let new = existing.is_none();
                match existing {
                    None => self.insert_manifest(repo, digest, manifest, req.at_ms)?,
                    Some(existing) => {
                        if let Some(subject) = &existing.subject {
                            self.referrers.insert(key3(r, &subject.to_string(), &digest.to_string()).as_str(), [].as_slice())?;
                        }
                    }
                }
                let moved = match tag {
                    Some(tag) => self.set_tag(repo, tag.as_str(), &TagRecord { digest: digest.clone(), updated_ms: req.at_ms })?,
                    None => None,
                };
                if new {
                    self.manifest_changed(repo, digest, manifest, req.at_ms)?;
                } else {
                    self.touch(&GcItem::Manifest { repo: repo.clone(), digest: digest.clone() }, req.at_ms)?;
                }
                if let Some(old) = moved {
                    self.touch(&GcItem::Manifest { repo: repo.clone(), digest: old }, req.at_ms)?;
                }
                Outcome::Done
            }
            Command::DeleteManifest { repo, digest } => {
                if !self.remove_manifest(repo, digest, req.at_ms)? {
                    return self.gone(repo, &digest.to_string(), req.at_ms);
                }
                self.remember_delete(repo, digest.to_string(), req.at_ms)?;
                Outcome::Done
            }
            Command::DeleteTag { repo, tag } => {
                let r = repo.as_str();
                let old = self.tags.remove(key2(r, tag.as_str()).as_str())?.map(|v| decode::<TagRecord>(v.value())).transpose()?;
                match old {
                    Some(old) => {
                        self.manifest_tags.remove(key3(r, &old.digest.to_string(), tag.as_str()).as_str())?;
                        self.changed.tags.push((r.to_string(), tag.to_string()));
                        self.count(r, |c| c.tags -= 1)?;
                        self.touch(&GcItem::Manifest { repo: repo.clone(), digest: old.digest }, req.at_ms)?;
                        self.remember_delete(repo, tag.to_string(), req.at_ms)?;
                        Outcome::Done
                    }
                    None => self.gone(repo, tag.as_str(), req.at_ms)?,
                }
            }
            Command::Identity(change) => {
                self.identity_changed = true;
                let outcome = crate::identity::apply(Arc::make_mut(&mut self.small.identity), change, req.at_ms);
                if self.small.cleanup.keys().any(|p| !self.small.identity.projects.contains_key(p)) {
                    crate::cleanup::forget_deleted_projects(Arc::make_mut(&mut self.small.cleanup), &self.small.identity);
                    self.cleanup_changed = true;
                }
                outcome
            }
            Command::Notify(change) => {
                let (outcome, gone) = crate::notify::apply(&mut self.small.notify, change);
                self.drop_events(gone)?;
                self.notify_changed |= outcome == Outcome::Done;
                outcome
            }
            Command::Geo(change) => self.geo(change, req.at_ms)?,
            Command::Cleanup(change) => {
                let outcome = crate::cleanup::apply(Arc::make_mut(&mut self.small.cleanup), &self.small.identity, change, req.at_ms);
                self.cleanup_changed |= outcome == Outcome::Done;
                outcome
            }
            Command::SetLimits(limits) => {
                if self.small.limits == *limits {
                    Outcome::Unchanged
                } else {
                    self.small.limits = *limits;
                    self.limits_changed = true;
                    Outcome::Done
                }
            }
            Command::GcSweep(items) => {
                let mut done = Vec::with_capacity(items.len());
                for item in items {
                    done.push(self.sweep(item, req.at_ms)? == Outcome::Done);
                }
                Outcome::Swept(done)
            }
            Command::GcDeleted { digests } => {
                let mut done = Vec::with_capacity(digests.len());
                for d in digests {
                    let deleted = self.gc_deleting.remove(d.to_string().as_str())?.is_some();
                    if deleted {
                        self.content_deleted(d)?;
                    }
                    done.push(deleted);
                }
                Outcome::Swept(done)
            }
            Command::GcEnqueue(items) => {
                for item in items {
                    self.touch(item, req.at_ms)?;
                }
                Outcome::Done
            }
        })
    }

    /// Removes a manifest with its tags, index rows and referrers entry; false if it is not
    /// there. Reviews what its departure changes.
    fn remove_manifest(&mut self, repo: &RepoName, digest: &Digest, at_ms: u64) -> DResult<bool> {
        let (r, d) = (repo.as_str(), digest.to_string());
        let Some(record) = self.manifests.remove(key2(r, &d).as_str())?.map(|v| decode::<ManifestRecord>(v.value())).transpose()? else {
            return Ok(false);
        };
        let tags = Self::parts_within(&self.manifest_tags, &key2(r, &d))?;
        for t in &tags {
            self.tags.remove(key2(r, t).as_str())?;
            self.manifest_tags.remove(key3(r, &d, t).as_str())?;
            self.changed.tags.push((r.to_string(), t.clone()));
        }
        self.changed.manifests.push((r.to_string(), digest.clone()));
        for b in &record.blobs {
            self.blob_users.remove(key3(r, &b.to_string(), &d).as_str())?;
        }
        for c in &record.manifests {
            self.manifest_parents.remove(key3(r, &c.to_string(), &d).as_str())?;
        }
        if let Some(subject) = &record.subject {
            self.referrers.remove(key3(r, &subject.to_string(), &d).as_str())?;
        }
        self.content_refs.remove(key3(&d, r, "m").as_str())?;
        let n = tags.len() as u64;
        self.count(r, |c| {
            c.manifests -= 1;
            c.tags -= n;
        })?;
        self.manifest_changed(repo, digest, &record, at_ms)?;
        Ok(true)
    }

    /// The refusal for a change to `repo` (tagging it `tag`) that would make a repository past
    /// the namespace limit or a tag past the repository's limit (the model's `over_limit`).
    fn over_limit(&self, repo: &RepoName, tag: Option<&berth_proto::Tag>) -> DResult<Option<Outcome>> {
        use berth_proto::LimitKind;
        let limits = self.small.limits;
        let r = repo.as_str();
        let counts = self.counts(r)?;
        if limits.repositories_per_namespace > 0 && counts.is_none() {
            // A namespace is the name itself and every name under `ns/`: one key range.
            let ns = berth_proto::namespace_of(r);
            let mut held = u64::from(self.repos.get(ns)?.is_some());
            for row in self.repos.range(format!("{ns}/").as_str()..format!("{ns}0").as_str())? {
                row?;
                held += 1;
            }
            if held >= limits.repositories_per_namespace {
                return Ok(Some(Outcome::LimitReached { limit: LimitKind::RepositoriesPerNamespace, max: limits.repositories_per_namespace }));
            }
        }
        let Some(tag) = tag else { return Ok(None) };
        if limits.tags_per_repository > 0 && counts.is_some_and(|c| c.tags >= limits.tags_per_repository) && !has(&self.tags, &key2(r, tag.as_str()))? {
            return Ok(Some(Outcome::LimitReached { limit: LimitKind::TagsPerRepository, max: limits.tags_per_repository }));
        }
        Ok(None)
    }

    fn link_blob(&mut self, repo: &RepoName, digest: &Digest, size: u64, at_ms: u64) -> DResult<()> {
        let (r, d) = (repo.as_str(), digest.to_string());
        if self.blobs.insert(key2(r, &d).as_str(), size.to_le_bytes().as_slice())?.is_none() {
            self.content_arriving(digest, Some(size), at_ms)?;
            self.content_refs.insert(key3(&d, r, "b").as_str(), [].as_slice())?;
            self.count(r, |c| c.blobs += 1)?;
        }
        Ok(())
    }

    /// Removes a blob link; false if there was none.
    fn unlink_blob(&mut self, repo: &RepoName, digest: &Digest) -> DResult<bool> {
        let (r, d) = (repo.as_str(), digest.to_string());
        if self.blobs.remove(key2(r, &d).as_str())?.is_none() {
            return Ok(false);
        }
        self.content_refs.remove(key3(&d, r, "b").as_str())?;
        self.count(r, |c| c.blobs -= 1)?;
        Ok(true)
    }

    /// Stores a manifest that is not stored yet, with its index rows.
    fn insert_manifest(&mut self, repo: &RepoName, digest: &Digest, record: &ManifestRecord, at_ms: u64) -> DResult<()> {
        let (r, d) = (repo.as_str(), digest.to_string());
        self.manifests.insert(key2(r, &d).as_str(), postcard::to_stdvec(record)?.as_slice())?;
        for b in &record.blobs {
            self.blob_users.insert(key3(r, &b.to_string(), &d).as_str(), [].as_slice())?;
        }
        for c in record.manifests.iter().filter(|c| *c != digest) {
            self.manifest_parents.insert(key3(r, &c.to_string(), &d).as_str(), [].as_slice())?;
        }
        if let Some(subject) = &record.subject {
            self.referrers.insert(key3(r, &subject.to_string(), &d).as_str(), [].as_slice())?;
        }
        self.content_arriving(digest, None, at_ms)?;
        self.content_refs.insert(key3(&d, r, "m").as_str(), [].as_slice())?;
        self.count(r, |c| c.manifests += 1)
    }

    /// Points a tag at a manifest, moving it if it pointed elsewhere; returns where it pointed.
    fn set_tag(&mut self, repo: &RepoName, tag: &str, record: &TagRecord) -> DResult<Option<Digest>> {
        let r = repo.as_str();
        self.changed.tags.push((r.to_string(), tag.to_string()));
        let old = self.tags.insert(key2(r, tag).as_str(), postcard::to_stdvec(record)?.as_slice())?.map(|v| decode::<TagRecord>(v.value())).transpose()?;
        match &old {
            Some(old) => {
                self.manifest_tags.remove(key3(r, &old.digest.to_string(), tag).as_str())?;
            }
            None => self.count(r, |c| c.tags += 1)?,
        }
        self.manifest_tags.insert(key3(r, &record.digest.to_string(), tag).as_str(), [].as_slice())?;
        Ok(old.map(|o| o.digest))
    }

    /// The answer to deleting what is not there: done if it was deleted recently (a retry).
    fn gone(&self, repo: &RepoName, reference: &str, now_ms: u64) -> DResult<Outcome> {
        for row in self.tombstones.iter()? {
            let t: Tombstone = decode(row?.1.value())?;
            if t.repo == *repo && t.reference == reference && t.at_ms.saturating_add(TOMBSTONE_TTL_MS) >= now_ms {
                return Ok(Outcome::Done);
            }
        }
        Ok(Outcome::NotFound)
    }

    fn remember_delete(&mut self, repo: &RepoName, reference: String, at_ms: u64) -> DResult<()> {
        loop {
            let head = &self.small.head;
            if head.tomb_first == head.tomb_next {
                break;
            }
            let key = seq_key(head.tomb_first);
            let front: Tombstone = match self.tombstones.get(key.as_str())? {
                Some(v) => decode(v.value())?,
                None => return Err(DiskError::Format(format!("tombstone {} is missing", head.tomb_first))),
            };
            let full = head.tomb_next - head.tomb_first >= MAX_TOMBSTONES as u64;
            if front.at_ms.saturating_add(TOMBSTONE_TTL_MS) >= at_ms && !full {
                break;
            }
            self.tombstones.remove(key.as_str())?;
            self.small.head.tomb_first += 1;
        }
        self.push_tombstone(&Tombstone { repo: repo.clone(), reference, at_ms })
    }

    fn push_tombstone(&mut self, t: &Tombstone) -> DResult<()> {
        let seq = self.small.head.tomb_next;
        self.tombstones.insert(seq_key(seq).as_str(), postcard::to_stdvec(t)?.as_slice())?;
        self.small.head.tomb_next += 1;
        Ok(())
    }
}

