//! Garbage collection on disk: the rules of the model ([`crate::state`]'s `gc`), each decided
//! with range reads of the indexes (`content_refs`, `manifest_parents`, `manifest_tags`,
//! `blob_users`) instead of scans, and the review queue kept twice: by item (`gc_queue`) and
//! in time order (`gc_due`).

use berth_proto::{Digest, GcItem, ManifestRecord, Outcome, RepoName};
use redb::ReadableTable;

use super::super::tables::{bounds, due_key, gc_key, key2, within};
use super::{blob_size, decode, DResult, Writer};

impl Writer<'_> {
    /// True if any repository links `digest` or holds it as a manifest.
    fn referenced(&self, digest: &str) -> DResult<bool> {
        let range = within(digest);
        Ok(self.content_refs.range::<&str>(bounds(&range))?.next().is_some())
    }

    fn any_within(table: &super::T<'_>, prefix: &str) -> DResult<bool> {
        let range = within(prefix);
        Ok(table.range::<&str>(bounds(&range))?.next().is_some())
    }

    /// True if `item` is garbage now (the model's `collectable`).
    fn collectable(&self, item: &GcItem) -> DResult<bool> {
        Ok(match item {
            GcItem::Manifest { repo, digest } => {
                let (r, d) = (repo.as_str(), digest.to_string());
                let Some(record) = self.manifests.get(key2(r, &d).as_str())?.map(|v| decode::<ManifestRecord>(v.value())).transpose()? else {
                    return Ok(false);
                };
                let subject_held = match &record.subject {
                    Some(s) => Self::has(&self.manifests, &key2(r, &s.to_string()))?,
                    None => false,
                };
                !subject_held && !Self::any_within(&self.manifest_tags, &key2(r, &d))? && !Self::any_within(&self.manifest_parents, &key2(r, &d))?
            }
            GcItem::Link { repo, digest } => {
                let k = key2(repo.as_str(), &digest.to_string());
                Self::has(&self.blobs, &k)? && !Self::any_within(&self.blob_users, &k)?
            }
            GcItem::Content { digest } => {
                let d = digest.to_string();
                !Self::has(&self.gc_deleting, &d)? && !self.referenced(&d)?
            }
        })
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
