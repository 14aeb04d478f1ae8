//! Garbage collection on disk: the rules of the model ([`crate::state`]'s `gc`), each decided
//! with range reads of the indexes (`content_refs`, `manifest_parents`, `manifest_tags`,
//! `blob_users`) instead of scans, and the review queue kept twice: by item (`gc_queue`) and
//! in time order (`gc_due`).

use berth_proto::{Digest, GcItem, ManifestRecord, Outcome, RepoName};
use redb::ReadableTable;

use super::super::tables::{bounds, due_key, gc_key, key2, within};
use super::{blob_size, decode, has, DResult, Writer};

/// The tables the rules read, from a write transaction or a read one.
pub(in crate::disk) struct GcTables<'a, T> {
    pub manifests: &'a T,
    pub manifest_tags: &'a T,
    pub manifest_parents: &'a T,
    pub blobs: &'a T,
    pub blob_users: &'a T,
    pub gc_deleting: &'a T,
    pub content_refs: &'a T,
}

fn any_within<T: ReadableTable<&'static str, &'static [u8]>>(table: &T, prefix: &str) -> DResult<bool> {
    let range = within(prefix);
    Ok(table.range::<&str>(bounds(&range))?.next().is_some())
}

impl<T: ReadableTable<&'static str, &'static [u8]>> GcTables<'_, T> {
    /// True if `item` is garbage now (the model's `collectable`).
    pub fn collectable(&self, item: &GcItem) -> DResult<bool> {
        Ok(match item {
            GcItem::Manifest { repo, digest } => {
                let (r, d) = (repo.as_str(), digest.to_string());
                let Some(record) = self.manifests.get(key2(r, &d).as_str())?.map(|v| decode::<ManifestRecord>(v.value())).transpose()? else {
                    return Ok(false);
                };
                let subject_held = match &record.subject {
                    Some(s) => has(self.manifests, &key2(r, &s.to_string()))?,
                    None => false,
                };
                !subject_held && !any_within(self.manifest_tags, &key2(r, &d))? && !any_within(self.manifest_parents, &key2(r, &d))?
            }
            GcItem::Link { repo, digest } => {
                let k = key2(repo.as_str(), &digest.to_string());
                has(self.blobs, &k)? && !any_within(self.blob_users, &k)?
            }
            GcItem::Content { digest } => {
                // Nothing links or holds it, and it is not being deleted already.
                let d = digest.to_string();
                !has(self.gc_deleting, &d)? && !any_within(self.content_refs, &d)?
            }
        })
    }
}

impl Writer<'_> {
    fn collectable(&self, item: &GcItem) -> DResult<bool> {
        GcTables {
            manifests: &self.manifests,
            manifest_tags: &self.manifest_tags,
            manifest_parents: &self.manifest_parents,
            blobs: &self.blobs,
            blob_users: &self.blob_users,
            gc_deleting: &self.gc_deleting,
            content_refs: &self.content_refs,
        }
        .collectable(item)
    }

    /// Queues `item` if it is garbage (keeping an earlier queue time), or takes it off the queue.
    pub(super) fn touch(&mut self, item: &GcItem, at_ms: u64) -> DResult<()> {
        let key = gc_key(item);
        if self.collectable(item)? {
            if self.gc_queue.get(key.as_str())?.is_none() {
                self.gc_queue.insert(key.as_str(), at_ms.to_le_bytes().as_slice())?;
                self.gc_due.insert(due_key(at_ms, &key).as_str(), [].as_slice())?;
            }
        } else {
            self.dequeue(&key)?;
        }
        Ok(())
    }

    fn dequeue(&mut self, key: &str) -> DResult<()> {
        // A queue time is 8 bytes, little endian, as a blob size is.
        if let Some(at) = self.gc_queue.remove(key)?.map(|v| blob_size(v.value())).transpose()? {
            self.gc_due.remove(due_key(at, key).as_str())?;
        }
        Ok(())
    }

    /// Reviews what a manifest's arrival or departure changes: itself, the blobs it uses, the
    /// manifests it lists, its referrers and its bytes.
    pub(super) fn manifest_changed(&mut self, repo: &RepoName, digest: &Digest, record: &ManifestRecord, at_ms: u64) -> DResult<()> {
        self.touch(&GcItem::Manifest { repo: repo.clone(), digest: digest.clone() }, at_ms)?;
        for b in &record.blobs {
            self.touch(&GcItem::Link { repo: repo.clone(), digest: b.clone() }, at_ms)?;
        }
        for c in &record.manifests {
            self.touch(&GcItem::Manifest { repo: repo.clone(), digest: c.clone() }, at_ms)?;
        }
        for d in Self::parts_within(&self.referrers, &key2(repo.as_str(), &digest.to_string()))? {
            let d = Digest::parse(&d).map_err(|e| super::DiskError::Format(e.to_string()))?;
            self.touch(&GcItem::Manifest { repo: repo.clone(), digest: d }, at_ms)?;
        }
        self.touch(&GcItem::Content { digest: digest.clone() }, at_ms)
    }

    /// [`berth_proto::Command::GcSweep`].
    pub(super) fn sweep(&mut self, item: &GcItem, at_ms: u64) -> DResult<Outcome> {
        let garbage = self.collectable(item)?;
        self.dequeue(&gc_key(item))?;
        if !garbage {
            return Ok(Outcome::Unchanged);
        }
        match item {
            GcItem::Manifest { repo, digest } => {
                self.remove_manifest(repo, digest, at_ms)?;
            }
            GcItem::Link { repo, digest } => {
                self.unlink_blob(repo, digest)?;
                self.touch(&GcItem::Content { digest: digest.clone() }, at_ms)?;
            }
            GcItem::Content { digest } => {
                self.gc_deleting.insert(digest.to_string().as_str(), at_ms.to_le_bytes().as_slice())?;
            }
        }
        Ok(Outcome::Done)
    }
}
