//! A bounded in-memory cache of hot reads: which manifest a tag names, and manifest records.
//!
//! Applying a batch collects what it changed (tags moved or removed, manifests removed) and,
//! after its commit and before openraft hears the batch is applied, drops those entries and
//! bumps a generation. A reader fills the cache only if the generation did not move while it
//! read, so it can never put back what a concurrent batch removed; and a linearizable read
//! waits for the applied index, which moves only after the invalidation.
//!
//! Eviction is two-segment ([`Segments`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_proto::{Digest, ManifestRecord};

use crate::segments::Segments;

/// What a batch changed that the cache may hold.
#[derive(Default)]
pub struct Changed {
    /// Tags moved or removed: (repo, tag).
    pub tags: Vec<(String, String)>,
    /// Manifests removed: (repo, digest).
    pub manifests: Vec<(String, Digest)>,
}

impl Changed {
    fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.manifests.is_empty()
    }
}

type ManifestKey = (String, Digest);

/// The cache.
pub struct HotCache {
    tags: Mutex<Segments<(String, String), Digest>>,
    manifests: Mutex<Segments<ManifestKey, Arc<ManifestRecord>>>,
    generation: AtomicU64,
}

fn manifest_cost(m: &Arc<ManifestRecord>) -> usize {
    256 + m.body.len()
}

impl HotCache {
    /// A cache of up to about `tags` tag entries and `manifest_bytes` of manifests (each
    /// bound counted per segment: at most twice as much is held).
    pub fn new(tags: usize, manifest_bytes: usize) -> Self {
        HotCache { tags: Mutex::new(Segments::new(tags)), manifests: Mutex::new(Segments::new(manifest_bytes)), generation: AtomicU64::new(0) }
    }

    /// The generation to read under (see [`HotCache::fill_tag`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The digest `repo:tag` names, if cached.
    pub fn tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.tags.lock().unwrap().get(&(repo.to_string(), tag.to_string()), |_| 1)
    }

    /// A manifest record, if cached.
    pub fn manifest(&self, repo: &str, digest: &Digest) -> Option<Arc<ManifestRecord>> {
        self.manifests.lock().unwrap().get(&(repo.to_string(), digest.clone()), manifest_cost)
    }

    /// Caches what a read that started at generation `seen` found, unless a batch changed
    /// anything since.
    pub fn fill_tag(&self, seen: u64, repo: &str, tag: &str, digest: &Digest) {
        let mut tags = self.tags.lock().unwrap();
        if self.generation() == seen {
            tags.insert((repo.to_string(), tag.to_string()), digest.clone(), 1);
        }
    }

    /// Like [`HotCache::fill_tag`], for a manifest record.
    pub fn fill_manifest(&self, seen: u64, repo: &str, digest: &Digest, m: &Arc<ManifestRecord>) {
        let mut manifests = self.manifests.lock().unwrap();
        if self.generation() == seen {
            manifests.insert((repo.to_string(), digest.clone()), m.clone(), manifest_cost(m));
        }
    }

    /// Drops everything (the whole state was replaced).
    pub fn clear(&self) {
        let mut tags = self.tags.lock().unwrap();
        let mut manifests = self.manifests.lock().unwrap();
        self.generation.fetch_add(1, Ordering::AcqRel);
        let (tb, mb) = (tags.budget(), manifests.budget());
        *tags = Segments::new(tb);
        *manifests = Segments::new(mb);
    }

    /// Drops what a committed batch changed.
    pub fn invalidate(&self, changed: &Changed) {
        if changed.is_empty() {
            return;
        }
        // Both locks are held while the generation moves, so no fill can slip in between.
        let mut tags = self.tags.lock().unwrap();
        let mut manifests = self.manifests.lock().unwrap();
        self.generation.fetch_add(1, Ordering::AcqRel);
        for k in &changed.tags {
            tags.remove(k);
        }
        for k in &changed.manifests {
            manifests.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_from_before_a_change_is_dropped_and_memory_stays_bounded() {
        let c = HotCache::new(4, 1 << 20);
        let d = Digest::sha256_of(b"a");
        let seen = c.generation();
        c.invalidate(&Changed { tags: vec![("r".into(), "t".into())], manifests: vec![] });
        c.fill_tag(seen, "r", "t", &d);
        assert_eq!(c.tag("r", "t"), None, "a read from before the change must not be cached");
        c.fill_tag(c.generation(), "r", "t", &d);
        assert_eq!(c.tag("r", "t"), Some(d.clone()));
        for i in 0..100 {
            c.fill_tag(c.generation(), "r", &format!("x{i}"), &d);
        }
        let t = c.tags.lock().unwrap();
        assert!(t.len() <= 8);
    }
}
