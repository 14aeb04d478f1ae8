//! Queries of the on-disk state. Each query reads one redb read transaction: a consistent view
//! that applying (which commits new transactions) never blocks or changes.

use std::sync::Arc;

use berth_proto::{Answer, Digest, GcItem, GcStatus, ManifestRecord, Query, Reference, RepoName};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata};

use super::tables::{self, bounds, key2, last_part, within, within_after};
use super::{apply::blob_size, DResult, DiskError, DiskState};
use crate::state::TagRecord;

type R = ReadOnlyTable<&'static str, &'static [u8]>;

/// The sites the `placement` table records as holding the digest `d`.
fn sites_holding(placement: &R, d: &str) -> DResult<Vec<String>> {
    let range = within(d);
    let mut out = Vec::new();
    for row in placement.range::<&str>(bounds(&range))? {
        out.push(last_part(row?.0.value()).to_string());
    }
    Ok(out)
}

impl DiskState {
    /// Answers a read.
    pub fn answer(&self, query: &Query) -> DResult<Answer> {
        let small = || self.small.read().unwrap();
        Ok(match query {
            Query::BlobSize { repo, digest } => Answer::BlobSize(self.blob_size(repo, digest)?),
            Query::Manifest { repo, reference } => Answer::Manifest(self.manifest(repo, reference)?),
            Query::Tags { repo, last, n } => Answer::Tags(self.tags(repo, last.as_deref(), *n as usize)?),
            Query::Catalog { last, n } => Answer::Catalog(self.catalog(last.as_deref(), *n as usize)?),
            Query::Referrers { repo, subject } => Answer::Referrers(self.referrers(repo, subject)?),
            Query::HttpSecret => Answer::HttpSecret(small().head.http_secret.clone()),
            Query::IdentityVersion => Answer::IdentityVersion(small().identity.version),
            Query::Identity => Answer::Identity(small().identity.clone()),
            Query::GcDue { manifests, until_ms, n } => Answer::GcDue(self.gc_due(*manifests, *until_ms, *n as usize)?),
            Query::GcStatus => Answer::GcStatus(self.gc_status()?),
            Query::GcCollectable(items) => Answer::GcCollectable(self.gc_collectable(items)?),
            Query::GcScan { after, n } => Answer::GcScan(self.gc_scan(after.as_ref(), *n as usize)?),
            Query::Cleanup => Answer::Cleanup(small().cleanup.clone()),
            Query::NotifyPending { endpoint, n } => {
                let after = small().notify.delivered.get(endpoint).copied();
                Answer::Events(match after {
                    Some(after) => self.events_after(after, *n as usize)?,
                    None => Vec::new(),
                })
            }
            Query::NotifyStatus => Answer::Notify(small().notify.clone()),
            Query::Blobs { repo, after, n } => Answer::Blobs(self.blobs_of(repo, after.as_ref(), *n as usize)?),
            Query::GeoStatus => Answer::Geo(small().geo.clone()),
            Query::GeoMissing { site, after, n } => Answer::Placements(self.geo_missing(site, after.as_ref(), *n as usize)?),
            Query::GeoContent { after, n } => Answer::Placements(self.geo_content(after.as_deref(), *n as usize)?),
            Query::GeoPlacement(digest) => Answer::Placement(self.geo_placement(digest)?),
        })
    }

    /// Up to `n` pieces of content `site` lacks, after `after`, with where they are held.
    pub fn geo_missing(&self, site: &str, after: Option<&Digest>, n: usize) -> DResult<Vec<berth_proto::geo::Placement>> {
        let txn = self.read()?;
        let (missing, placement) = (txn.open_table(tables::GEO_MISSING)?, txn.open_table(tables::PLACEMENT)?);
        let range = match after {
            Some(d) => within_after(site, &d.to_string()),
            None => within(site),
        };
        let mut out = Vec::with_capacity(n.min(1024));
        for row in missing.range::<&str>(bounds(&range))?.take(n) {
            let (k, v) = row?;
            let digest = Digest::parse(last_part(k.value())).map_err(|e| DiskError::Format(format!("a geo_missing key: {e}")))?;
            let (size, queued_ms) = super::apply::geo::parse_missing(v.value())?;
            let sites = sites_holding(&placement, &digest.to_string())?;
            out.push(berth_proto::geo::Placement { digest, sites, size: (size > 0).then_some(size), queued_ms });
        }
        Ok(out)
    }

    /// Up to `n` pieces of content after `after` (a digest or a position before one), in digest
    /// order, with where they are held and the size of blobs.
    pub fn geo_content(&self, after: Option<&str>, n: usize) -> DResult<Vec<berth_proto::geo::Placement>> {
        let txn = self.read()?;
        let (refs, placement, blobs) = (txn.open_table(tables::CONTENT_REFS)?, txn.open_table(tables::PLACEMENT)?, txn.open_table(tables::BLOBS)?);
        let mut out: Vec<berth_proto::geo::Placement> = Vec::with_capacity(n.min(1024));
        // Each digest's rows are contiguous: skip past all of them at once.
        let mut from = after.map(|a| format!("{a}\u{1}"));
        while out.len() < n {
            let next = match &from {
                Some(f) => refs.range::<&str>(f.as_str()..)?.next(),
                None => refs.iter()?.next(),
            };
            let Some(row) = next else { break };
            let row = row?;
            let key = row.0.value();
            let mut parts = key.split('\0');
            let (d, repo, kind) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            let digest = Digest::parse(d).map_err(|e| DiskError::Format(format!("a content_refs key: {e}")))?;
            let size = match kind {
                "b" => blobs.get(key2(repo, d).as_str())?.map(|v| blob_size(v.value())).transpose()?,
                _ => None,
            };
            out.push(berth_proto::geo::Placement { digest, sites: sites_holding(&placement, d)?, size, queued_ms: 0 });
            from = Some(format!("{d}\u{1}"));
        }
        Ok(out)
    }

    /// Where `digest` is held; `None` if it is not content.
    pub fn geo_placement(&self, digest: &Digest) -> DResult<Option<berth_proto::geo::Placement>> {
        let txn = self.read()?;
        let refs = txn.open_table(tables::CONTENT_REFS)?;
        let d = digest.to_string();
        let range = within(&d);
        if refs.range::<&str>(bounds(&range))?.next().is_none() {
            return Ok(None);
        }
        let sites = sites_holding(&txn.open_table(tables::PLACEMENT)?, &d)?;
        Ok(Some(berth_proto::geo::Placement { digest: digest.clone(), sites, size: None, queued_ms: 0 }))
    }

    /// Up to `n` blobs linked into `repo` after `after`, in digest order, with their sizes.
    pub fn blobs_of(&self, repo: &RepoName, after: Option<&Digest>, n: usize) -> DResult<Vec<(Digest, u64)>> {
        let range = match after {
            Some(d) => within_after(repo.as_str(), &d.to_string()),
            None => within(repo.as_str()),
        };
        let blobs = self.read()?.open_table(tables::BLOBS)?;
        let mut out = Vec::with_capacity(n.min(1024));
        for row in blobs.range::<&str>(bounds(&range))?.take(n) {
            let (k, v) = row?;
            let digest = Digest::parse(last_part(k.value())).map_err(|e| DiskError::Format(format!("a blob key: {e}")))?;
            out.push((digest, blob_size(v.value())?));
        }
        Ok(out)
    }

    /// Up to `n` kept events numbered after `after`, oldest first.
    pub fn events_after(&self, after: u64, n: usize) -> DResult<Vec<(u64, berth_proto::notify::EventRecord)>> {
        let t = self.read()?.open_table(tables::EVENTS)?;
        let mut out = Vec::new();
        for row in t.range(tables::seq_key(after.saturating_add(1)).as_str()..)?.take(n) {
            let (k, v) = row?;
            let seq = k.value().parse().map_err(|_| DiskError::Format(format!("an event key {:?} is not a number", k.value())))?;
            out.push((seq, postcard::from_bytes(v.value())?));
        }
        Ok(out)
    }

    /// Up to `n` review-queue items of a class (manifests, or blob links and content) queued at
    /// or before `until_ms`, oldest first.
    pub fn gc_due(&self, manifests: bool, until_ms: u64, n: usize) -> DResult<Vec<(GcItem, u64)>> {
        let t = self.read()?.open_table(tables::GC_DUE)?;
        let class = tables::due_class(manifests);
        let start = format!("{class}\0");
        let end = format!("{class}\0{}\u{1}", tables::seq_key(until_ms));
        let mut out = Vec::new();
        for row in t.range::<&str>(start.as_str()..end.as_str())?.take(n) {
            let row = row?;
            let key = &row.0.value()[start.len()..];
            let (at, item) = key.split_once('\0').ok_or_else(|| DiskError::Format(format!("a review-queue key {key:?} has no time")))?;
            let at = at.parse().map_err(|_| DiskError::Format(format!("a review-queue key {key:?} has no time")))?;
            let item = tables::parse_gc_key(item).ok_or_else(|| DiskError::Format(format!("a review-queue key {key:?} names no item")))?;
            out.push((item, at));
        }
        Ok(out)
    }

    /// Whether each item is garbage now, all read in one transaction.
    pub fn gc_collectable(&self, items: &[GcItem]) -> DResult<Vec<bool>> {
        let txn = self.read()?;
        let open = |def| txn.open_table(def);
        let (manifests, manifest_tags, manifest_parents, blobs, blob_users, gc_deleting, content_refs) = (
            open(tables::MANIFESTS)?,
            open(tables::MANIFEST_TAGS)?,
            open(tables::MANIFEST_PARENTS)?,
            open(tables::BLOBS)?,
            open(tables::BLOB_USERS)?,
            open(tables::GC_DELETING)?,
            open(tables::CONTENT_REFS)?,
        );
        let view = super::apply::gc::GcTables {
            manifests: &manifests,
            manifest_tags: &manifest_tags,
            manifest_parents: &manifest_parents,
            blobs: &blobs,
            blob_users: &blob_users,
            gc_deleting: &gc_deleting,
            content_refs: &content_refs,
        };
        items.iter().map(|i| view.collectable(i)).collect()
    }

    /// Up to `n` blob links and manifests after `after`, in queue-key order: every link (the
    /// `blobs` table's order), then every manifest.
    pub fn gc_scan(&self, after: Option<&GcItem>, n: usize) -> DResult<Vec<GcItem>> {
        let txn = self.read()?;
        let mut out = Vec::new();
        let parse = |key: &str, manifest: bool| -> DResult<GcItem> {
            let (r, d) = key.split_once('\0').ok_or_else(|| DiskError::Format(format!("a state key {key:?} has one part")))?;
            let repo = RepoName::parse(r).map_err(|e| DiskError::Format(e.to_string()))?;
            let digest = Digest::parse(d).map_err(|e| DiskError::Format(e.to_string()))?;
            Ok(if manifest { GcItem::Manifest { repo, digest } } else { GcItem::Link { repo, digest } })
        };
        // Where each table starts: after the given item in its own table, from the start in a
        // later one, not at all in an earlier one.
        let start = |manifest: bool| -> Option<Option<String>> {
            match after {
                None | Some(GcItem::Content { .. }) => Some(None),
                Some(GcItem::Link { repo, digest }) if !manifest => Some(Some(key2(repo.as_str(), &digest.to_string()))),
                Some(GcItem::Link { .. }) => Some(None),
                Some(GcItem::Manifest { .. }) if !manifest => None,
                Some(GcItem::Manifest { repo, digest }) => Some(Some(key2(repo.as_str(), &digest.to_string()))),
            }
        };
        for (manifest, def) in [(false, tables::BLOBS), (true, tables::MANIFESTS)] {
            let Some(from) = start(manifest) else { continue };
            let t = txn.open_table(def)?;
            let rows = match &from {
                Some(k) => t.range::<&str>((std::ops::Bound::Excluded(k.as_str()), std::ops::Bound::Unbounded))?,
                None => t.range::<&str>(..)?,
            };
            for row in rows {
                if out.len() >= n {
                    return Ok(out);
                }
                out.push(parse(row?.0.value(), manifest)?);
            }
        }
        Ok(out)
    }

    /// The review queue's length and the content marked for deletion.
    pub fn gc_status(&self) -> DResult<GcStatus> {
        let txn = self.read()?;
        let queued = txn.open_table(tables::GC_QUEUE)?.len()?;
        let mut deleting = Vec::new();
        for row in txn.open_table(tables::GC_DELETING)?.iter()? {
            let row = row?;
            let d = Digest::parse(row.0.value()).map_err(|e| DiskError::Format(e.to_string()))?;
            deleting.push((d, blob_size(row.1.value())?));
        }
        Ok(GcStatus { queued, deleting })
    }

    fn read(&self) -> DResult<ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    /// Size of a blob if it is linked into `repo`.
    pub fn blob_size(&self, repo: &RepoName, digest: &Digest) -> DResult<Option<u64>> {
        let t = self.read()?.open_table(tables::BLOBS)?;
        t.get(key2(repo.as_str(), &digest.to_string()).as_str())?.map(|v| blob_size(v.value())).transpose()
    }

    /// A manifest by tag or digest, with its digest. Hot tags and records come from the
    /// cache; what is read from the database fills it.
    pub fn manifest(&self, repo: &RepoName, reference: &Reference) -> DResult<Option<(Digest, Arc<ManifestRecord>)>> {
        let r = repo.as_str();
        // Taken before reading, so that a batch applied meanwhile keeps this read out of the cache.
        let seen = self.cache.generation();
        let mut txn = None;
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.cache.tag(r, t.as_str()) {
                Some(d) => d,
                None => {
                    let tags = txn.insert(self.read()?).open_table(tables::TAGS)?;
                    let Some(v) = tags.get(key2(r, t.as_str()).as_str())? else { return Ok(None) };
                    let d = postcard::from_bytes::<TagRecord>(v.value())?.digest;
                    self.cache.fill_tag(seen, r, t.as_str(), &d);
                    d
                }
            },
        };
        if let Some(m) = self.cache.manifest(r, &digest) {
            return Ok(Some((digest, m)));
        }
        let txn = match txn {
            Some(t) => t,
            None => self.read()?,
        };
        let manifests = txn.open_table(tables::MANIFESTS)?;
        let Some(m) = record(&manifests, r, &digest)? else { return Ok(None) };
        let m = Arc::new(m);
        self.cache.fill_manifest(seen, r, &digest, &m);
        Ok(Some((digest, m)))
    }

    /// Up to `n` tags after `last`, in lexical order; `None` if the repository does not exist.
    pub fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> DResult<Option<Vec<String>>> {
        let txn = self.read()?;
        if txn.open_table(tables::REPOS)?.get(repo.as_str())?.is_none() {
            return Ok(None);
        }
        let range = match last {
            Some(l) => within_after(repo.as_str(), l),
            None => within(repo.as_str()),
        };
        let tags = txn.open_table(tables::TAGS)?;
        let mut out = Vec::with_capacity(n.min(1024));
        for row in tags.range::<&str>(bounds(&range))?.take(n) {
            out.push(last_part(row?.0.value()).to_string());
        }
        Ok(Some(out))
    }

    /// Up to `n` repository names after `last`, in lexical order.
    pub fn catalog(&self, last: Option<&str>, n: usize) -> DResult<Vec<String>> {
        let repos = self.read()?.open_table(tables::REPOS)?;
        let rows = match last {
            Some(l) => repos.range::<&str>((std::ops::Bound::Excluded(l), std::ops::Bound::Unbounded))?,
            None => repos.range::<&str>(..)?,
        };
        let mut out = Vec::with_capacity(n.min(1024));
        for row in rows.take(n) {
            out.push(row?.0.value().to_string());
        }
        Ok(out)
    }

    /// Manifests in `repo` whose subject is `subject`, in digest order.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> DResult<Vec<(Digest, Arc<ManifestRecord>)>> {
        let txn = self.read()?;
        let index = txn.open_table(tables::REFERRERS)?;
        let manifests = txn.open_table(tables::MANIFESTS)?;
        let range = within(&key2(repo.as_str(), &subject.to_string()));
        let mut out = Vec::new();
        for row in index.range::<&str>(bounds(&range))? {
            let d = Digest::parse(last_part(row?.0.value())).map_err(|e| DiskError::Format(e.to_string()))?;
            if let Some(m) = record(&manifests, repo.as_str(), &d)? {
                out.push((d, Arc::new(m)));
            }
        }
        Ok(out)
    }

    /// Repositories, tags and manifests held (each a full scan of a count table: for reports).
    pub fn totals(&self) -> DResult<(u64, u64, u64)> {
        let repos = self.read()?.open_table(tables::REPOS)?;
        let (mut n, mut tags, mut manifests) = (0, 0, 0);
        for row in repos.iter()? {
            let c: super::RepoCounts = postcard::from_bytes(row?.1.value())?;
            n += 1;
            tags += c.tags;
            manifests += c.manifests;
        }
        Ok((n, tags, manifests))
    }
}

fn record(manifests: &R, repo: &str, digest: &Digest) -> DResult<Option<ManifestRecord>> {
    manifests.get(key2(repo, &digest.to_string()).as_str())?.map(|v| Ok(postcard::from_bytes(v.value())?)).transpose()
}
