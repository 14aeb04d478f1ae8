//! Garbage collection in the model: what is garbage, the review queue, and a sweep step. The
//! on-disk state ([`crate::disk`]) keeps the same rules with indexes; the property tests hold
//! the two to each other, and `tests` below holds these rules to the promise that nothing a
//! committed manifest references is ever deleted.
//!
//! The rules:
//! - A manifest is garbage when no tag points at it, no other manifest of its repository lists
//!   it as a child, and the repository does not hold its subject (a referrer of a held manifest
//!   stays while its subject does).
//! - A blob link is garbage when no manifest of its repository uses the blob.
//! - Content (the bytes of a blob or of a manifest body) is garbage when no repository links it
//!   or holds it as a manifest, and it is not already being deleted.
//!
//! Every change that can make an item garbage or keep it calls [`RegistryState::touch`], which
//! queues the item (keeping the time it was first queued) or takes it off the queue. A sweep
//! decides again in log order, so the queue is only a list of what to look at: what is swept is
//! what is garbage when the sweep applies, whatever came between.

use std::sync::Arc;

use berth_proto::{Digest, GcItem, GcStatus, ManifestRecord, Outcome, RepoName};

use super::RegistryState;
use crate::disk::tables::gc_key;

impl RegistryState {
    /// True if any repository links `digest` or holds it as a manifest.
    pub fn referenced(&self, digest: &Digest) -> bool {
        self.repos.values().any(|r| r.blobs.contains_key(digest) || r.manifests.contains_key(digest))
    }

    /// True if `item` is garbage now.
    pub fn collectable(&self, item: &GcItem) -> bool {
        match item {
            GcItem::Manifest { repo, digest } => {
                let Some(r) = self.repos.get(repo) else { return false };
                let Some(m) = r.manifests.get(digest) else { return false };
                let tagged = r.tags.values().any(|t| &t.digest == digest);
                let listed = r.manifests.iter().any(|(d, other)| d != digest && other.manifests.contains(digest));
                let subject_held = m.subject.as_ref().is_some_and(|s| r.manifests.contains_key(s));
                !tagged && !listed && !subject_held
            }
            GcItem::Link { repo, digest } => {
                let Some(r) = self.repos.get(repo) else { return false };
                r.blobs.contains_key(digest) && !r.manifests.values().any(|m| m.blobs.contains(digest))
            }
            GcItem::Content { digest } => !self.gc_deleting.contains_key(digest) && !self.referenced(digest),
        }
    }

    /// Queues `item` if it is garbage (keeping an earlier queue time), or takes it off the queue.
    pub(super) fn touch(&mut self, item: GcItem, at_ms: u64) {
        if self.collectable(&item) {
            self.gc_queue.entry(item).or_insert(at_ms);
        } else {
            self.gc_queue.remove(&item);
        }
    }

    /// Reviews what a manifest's arrival or departure changes: itself, the blobs it uses, the
    /// manifests it lists, its referrers and its bytes.
    pub(super) fn manifest_changed(&mut self, repo: &RepoName, digest: &Digest, record: &Arc<ManifestRecord>, at_ms: u64) {
        self.touch(GcItem::Manifest { repo: repo.clone(), digest: digest.clone() }, at_ms);
        for b in &record.blobs {
            self.touch(GcItem::Link { repo: repo.clone(), digest: b.clone() }, at_ms);
        }
        for c in &record.manifests {
            self.touch(GcItem::Manifest { repo: repo.clone(), digest: c.clone() }, at_ms);
        }
        let referrers: Vec<Digest> = self.repos.get(repo).and_then(|r| r.referrers.get(digest)).into_iter().flatten().cloned().collect();
        for d in referrers {
            self.touch(GcItem::Manifest { repo: repo.clone(), digest: d }, at_ms);
        }
        self.touch(GcItem::Content { digest: digest.clone() }, at_ms);
    }

    /// [`berth_proto::Command::GcSweep`].
    pub(super) fn sweep(&mut self, item: &GcItem, at_ms: u64) -> Outcome {
        let garbage = self.collectable(item);
        self.gc_queue.remove(item);
        if !garbage {
            return Outcome::Unchanged;
        }
        match item {
            GcItem::Manifest { repo, digest } => {
                self.remove_manifest(repo, digest, at_ms);
            }
            GcItem::Link { repo, digest } => {
                if let Some(r) = self.repos.get_mut(repo) {
                    r.blobs.remove(digest);
                }
                self.drop_if_empty(repo);
                self.touch(GcItem::Content { digest: digest.clone() }, at_ms);
            }
            GcItem::Content { digest } => {
                self.gc_deleting.insert(digest.clone(), at_ms);
            }
        }
        Outcome::Done
    }

    /// Up to `n` queued items of a class (manifests, or blob links and content) queued at or
    /// before `until_ms`, oldest first (ties in key order).
    pub fn gc_due(&self, manifests: bool, until_ms: u64, n: usize) -> Vec<(GcItem, u64)> {
        let mut due: Vec<(u64, String, GcItem)> = self
            .gc_queue
            .iter()
            .filter(|(i, at)| **at <= until_ms && matches!(i, GcItem::Manifest { .. }) == manifests)
            .map(|(i, at)| (*at, gc_key(i), i.clone()))
            .collect();
        due.sort();
        due.into_iter().take(n).map(|(at, _, i)| (i, at)).collect()
    }

    /// Up to `n` of every blob link and manifest after `after`, in the order of their queue
    /// keys: every link, then every manifest.
    pub fn gc_scan(&self, after: Option<&GcItem>, n: usize) -> Vec<GcItem> {
        let links = self.repos.iter().flat_map(|(r, repo)| repo.blobs.keys().map(move |d| GcItem::Link { repo: r.clone(), digest: d.clone() }));
        let manifests = self.repos.iter().flat_map(|(r, repo)| repo.manifests.keys().map(move |d| GcItem::Manifest { repo: r.clone(), digest: d.clone() }));
        let after = after.map(gc_key);
        links.chain(manifests).filter(|i| after.as_ref().is_none_or(|a| gc_key(i) > *a)).take(n).collect()
    }

    /// The queue's length and the marks.
    pub fn gc_status(&self) -> GcStatus {
        let mut deleting: Vec<(Digest, u64)> = self.gc_deleting.iter().map(|(d, at)| (d.clone(), *at)).collect();
        deleting.sort_by_key(|(d, _)| d.to_string());
        GcStatus { queued: self.gc_queue.len() as u64, deleting }
    }
}

#[cfg(test)]
mod tests {
    //! The collector against a simulated blob store, with every step of an upload, a push, a
    //! mount and a sweep interleaved at random: nothing that a committed manifest or link
    //! holds is ever deleted, every acknowledged tag survives, and once the steps stop and the
    //! review delay passes, everything that nothing holds is gone.

    use std::collections::{BTreeMap, BTreeSet};

    use berth_proto::{Command, Digest, GcItem, ManifestRecord, Outcome, RepoName, Request, Tag};
    use proptest::prelude::*;

    use crate::state::RegistryState;

    const REVIEW: u64 = 5;

    fn digest(i: u8) -> Digest {
        Digest::sha256_of(&[i])
    }
    fn repo(i: u8) -> RepoName {
        RepoName::parse(["a", "b/c"][i as usize % 2]).unwrap()
    }
    fn tag(i: u8) -> Tag {
        Tag::parse(["latest", "v1"][i as usize % 2]).unwrap()
    }
    /// Four manifests with fixed contents (a digest names its bytes): two images sharing a
    /// layer, an index of both, and a signature of the first.
    fn manifest(i: u8) -> (Digest, ManifestRecord) {
        let (blobs, manifests, subject): (Vec<u8>, Vec<u8>, Option<u8>) = match i % 4 {
            0 => (vec![0, 1], vec![], None),
            1 => (vec![1, 2], vec![], None),
            2 => (vec![], vec![10, 11], None),
            _ => (vec![3], vec![], Some(10)),
        };
        let record = ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: vec![],
            blobs: blobs.into_iter().map(digest).collect(),
            manifests: manifests.into_iter().map(digest).collect(),
            subject: subject.map(digest),
            artifact_type: None,
            annotations: Default::default(),
            created_ms: 0,
        };
        (digest(10 + i % 4), record)
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A client starts an upload of blob `b` to a repository: its bytes go to the store.
        Upload(u8, u8),
        /// A client starts pushing manifest `m` (by tag or not): its body goes to the store.
        Push(u8, u8, Option<u8>),
        /// A client mounts blob `b` from another repository.
        Mount(u8, u8),
        /// The `i`th pending client operation commits (and, if it was already committed,
        /// checks its bytes and is acknowledged).
        Advance(usize),
        DeleteTag(u8, u8),
        DeleteManifest(u8, u8),
        UnlinkBlob(u8, u8),
        /// The sweeper takes the oldest due item.
        Sweep,
        /// The sweeper deletes the bytes of the `i`th marked digest, or records a deletion.
        Delete(usize),
        /// Time passes.
        Wait(u64),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..2, 0u8..4).prop_map(|(r, b)| Step::Upload(r, b)),
            3 => (0u8..2, 0u8..4, proptest::option::of(0u8..2)).prop_map(|(r, m, t)| Step::Push(r, m, t)),
            1 => (0u8..2, 0u8..4).prop_map(|(r, b)| Step::Mount(r, b)),
            6 => (0usize..4).prop_map(Step::Advance),
            2 => (0u8..2, 0u8..2).prop_map(|(r, t)| Step::DeleteTag(r, t)),
            1 => (0u8..2, 0u8..4).prop_map(|(r, m)| Step::DeleteManifest(r, m)),
            1 => (0u8..2, 0u8..4).prop_map(|(r, b)| Step::UnlinkBlob(r, b)),
            4 => Just(Step::Sweep),
            3 => (0usize..3).prop_map(Step::Delete),
            3 => (0u64..4).prop_map(Step::Wait),
        ]
    }

    /// A client operation between its steps.
    #[derive(Debug, Clone)]
    enum Pending {
        /// Bytes placed (or found present), not committed.
        Placed(Command),
        /// Committed; the bytes are checked before the client hears 201 (a mount has no bytes
        /// of its own to put back and is undone instead).
        Committed { digest: Digest, mount: Option<(RepoName, Digest)> },
    }

    /// A marked digest: its bytes are still there, or gone and the deletion not yet recorded.
    #[derive(Debug, Clone)]
    struct Marked {
        digest: Digest,
        bytes_deleted: bool,
    }

    struct World {
        state: RegistryState,
        store: BTreeSet<Digest>,
        now: u64,
        pending: Vec<Pending>,
        marked: Vec<Marked>,
        /// Where each tag was last moved by a client (no one else may move or drop it).
        tags: BTreeMap<(RepoName, Tag), Digest>,
    }

    impl World {
        fn apply(&mut self, command: Command) -> Outcome {
            self.state.apply(&Request { command, at_ms: self.now })
        }

        /// Content the state holds whose bytes may be missing only while its operation has
        /// still to check them.
        fn held(&self) -> BTreeSet<Digest> {
            let mut out = BTreeSet::new();
            for r in self.state.repos.values() {
                out.extend(r.blobs.keys().cloned());
                out.extend(r.manifests.keys().cloned());
            }
            out
        }

        fn checking(&self) -> BTreeSet<Digest> {
            self.pending.iter().filter_map(|p| if let Pending::Committed { digest, .. } = p { Some(digest.clone()) } else { None }).collect()
        }

        fn step(&mut self, step: Step) -> Result<(), TestCaseError> {
            match step {
                Step::Upload(r, b) => {
                    self.store.insert(digest(b));
                    self.pending.push(Pending::Placed(Command::LinkBlob { repo: repo(r), digest: digest(b), size: 1 }));
                }
                Step::Push(r, m, t) => {
                    let (d, record) = manifest(m);
                    self.store.insert(d.clone());
                    self.pending.push(Pending::Placed(Command::PutStoredManifest { repo: repo(r), digest: d, manifest: record, tag: t.map(tag) }));
                }
                Step::Mount(r, b) => {
                    let from = repo(r + 1);
                    if self.state.blob_size(&from, &digest(b)).is_some() {
                        let outcome = self.apply(Command::LinkBlob { repo: repo(r), digest: digest(b), size: 1 });
                        if outcome == Outcome::Done {
                            self.pending.push(Pending::Committed { digest: digest(b), mount: Some((repo(r), digest(b))) });
                        }
                    }
                }
                Step::Advance(i) => {
                    if self.pending.is_empty() {
                        return Ok(());
                    }
                    let i = i % self.pending.len();
                    match self.pending.remove(i) {
                        Pending::Placed(command) => {
                            let (digest, ack) = match &command {
                                Command::LinkBlob { digest, .. } => (digest.clone(), None),
                                Command::PutStoredManifest { repo, digest, tag, .. } => (digest.clone(), tag.clone().map(|t| (repo.clone(), t))),
                                _ => unreachable!(),
                            };
                            if self.apply(command) == Outcome::Done {
                                // The tag moved now, in log order (a later push may move it on).
                                if let Some(key) = ack {
                                    self.tags.insert(key, digest.clone());
                                }
                                self.pending.push(Pending::Committed { digest, mount: None });
                            }
                        }
                        Pending::Committed { digest, mount } => {
                            if !self.store.contains(&digest) {
                                match mount {
                                    // The API answers the mount with an upload session instead.
                                    Some((repo, d)) => {
                                        self.apply(Command::UnlinkBlob { repo, digest: d });
                                        return Ok(());
                                    }
                                    // The upload still has its bytes (staged, or the body in
                                    // memory): it puts them back.
                                    None => {
                                        self.store.insert(digest.clone());
                                    }
                                }
                            }
                        }
                    }
                }
                Step::DeleteTag(r, t) => {
                    if self.apply(Command::DeleteTag { repo: repo(r), tag: tag(t) }) == Outcome::Done {
                        self.tags.remove(&(repo(r), tag(t)));
                    }
                }
                Step::DeleteManifest(r, m) => {
                    let d = manifest(m).0;
                    // A client may delete an index's child by digest (Distribution allows it, so
                    // does Berth); that loss is the client's, not the collector's, which is what
                    // the checks below hold. So the clients here delete only what no index lists.
                    let listed = self.state.repos.get(&repo(r)).is_some_and(|rr| rr.manifests.values().any(|x| x.manifests.contains(&d)));
                    if listed {
                        return Ok(());
                    }
                    if self.apply(Command::DeleteManifest { repo: repo(r), digest: d.clone() }) == Outcome::Done {
                        self.tags.retain(|(rr, _), v| !(*rr == repo(r) && *v == d));
                    }
                }
                Step::UnlinkBlob(r, b) => {
                    self.apply(Command::UnlinkBlob { repo: repo(r), digest: digest(b) });
                }
                Step::Sweep => {
                    // The two workers take turns, as their intervals let them.
                    let until = self.now.saturating_sub(REVIEW);
                    let due = [self.state.gc_due(self.now % 2 == 0, until, 1), self.state.gc_due(self.now % 2 == 1, until, 1)];
                    if let Some((item, _)) = due.into_iter().flatten().next() {
                        let outcome = self.apply(Command::GcSweep(vec![item.clone()]));
                        if let (GcItem::Content { digest }, Outcome::Swept(done)) = (item, outcome) {
                            prop_assert_eq!(done.len(), 1);
                            if done[0] {
                                self.marked.push(Marked { digest, bytes_deleted: false });
                            }
                        }
                    }
                }
                Step::Delete(i) => {
                    if self.marked.is_empty() {
                        return Ok(());
                    }
                    let i = i % self.marked.len();
                    if self.marked[i].bytes_deleted {
                        let m = self.marked.remove(i);
                        prop_assert_eq!(self.apply(Command::GcDeleted { digests: vec![m.digest] }), Outcome::Swept(vec![true]));
                    } else {
                        let d = self.marked[i].digest.clone();
                        prop_assert!(!self.held().contains(&d), "{} is deleted while the state holds it", d);
                        self.store.remove(&d);
                        self.marked[i].bytes_deleted = true;
                    }
                }
                Step::Wait(t) => self.now += t,
            }
            // Anything the state holds has its bytes, or its operation will put them back.
            let checking = self.checking();
            for d in self.held() {
                prop_assert!(self.store.contains(&d) || checking.contains(&d), "{} is held but its bytes are gone", d);
            }
            // And nothing held dangles: an index's children and an image's blobs are there.
            for r in self.state.repos.values() {
                for m in r.manifests.values() {
                    for c in &m.manifests {
                        prop_assert!(r.manifests.contains_key(c), "an index lost its child {}", c);
                    }
                    for b in &m.blobs {
                        prop_assert!(r.blobs.contains_key(b), "an image lost its blob {}", b);
                    }
                }
            }
            for ((r, t), d) in &self.tags {
                prop_assert_eq!(self.state.manifest(r, &berth_proto::Reference::Tag(t.clone())).map(|m| m.0), Some(d.clone()), "tag {}:{}", r, t);
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn nothing_held_is_deleted_and_everything_else_goes(steps in proptest::collection::vec(arb_step(), 0..120)) {
            let mut w = World { state: RegistryState::default(), store: BTreeSet::new(), now: 0, pending: Vec::new(), marked: Vec::new(), tags: BTreeMap::new() };
            for s in steps {
                w.step(s)?;
            }
            // Clients finish what they started; the sweeper finishes its deletions.
            while !w.pending.is_empty() {
                w.step(Step::Advance(0))?;
            }
            while !w.marked.is_empty() {
                w.step(Step::Delete(0))?;
            }
            // Bytes the state never learnt of (an upload that died after placing them) are
            // what a store scan finds; it queues them.
            let orphans: Vec<GcItem> = w.store.iter().filter(|d| !w.state.referenced(d)).map(|d| GcItem::Content { digest: d.clone() }).collect();
            w.apply(Command::GcEnqueue(orphans));
            // Then the sweeper runs until the queue is empty, the review delay passing each time
            // (what one sweep frees is queued anew).
            for _ in 0..1000 {
                if w.state.gc_queue.is_empty() && w.marked.is_empty() {
                    break;
                }
                w.now += REVIEW;
                w.step(Step::Sweep)?;
                while !w.marked.is_empty() {
                    w.step(Step::Delete(0))?;
                }
            }
            prop_assert!(w.state.gc_queue.is_empty());
            // What is left is what tags keep, directly or through an index or a subject.
            for (name, r) in &w.state.repos {
                for d in r.manifests.keys() {
                    let item = GcItem::Manifest { repo: name.clone(), digest: d.clone() };
                    prop_assert!(!w.state.collectable(&item), "{:?} is garbage and still there", item);
                }
                for d in r.blobs.keys() {
                    let item = GcItem::Link { repo: name.clone(), digest: d.clone() };
                    prop_assert!(!w.state.collectable(&item), "{:?} is garbage and still there", item);
                }
            }
            let held = w.held();
            prop_assert_eq!(&w.store, &held, "the store holds exactly what the state holds");
        }
    }
}
