//! The tables of the on-disk state and how their keys are spelt.
//!
//! Every table maps a string key to bytes, so that a snapshot can copy any table row by row
//! without knowing what it holds. Keys join their parts with `\0`, which no repository name,
//! tag or digest contains; so the rows of one repository (or of one manifest within it) are
//! one contiguous range, in the same lexical order the in-memory maps had.

use std::ops::Bound;

use berth_proto::{Digest, GcItem, RepoName};
use redb::TableDefinition;

/// A table of the state: string keys, byte values.
pub type Def = TableDefinition<'static, &'static str, &'static [u8]>;

/// `head`, `identity`, `format`: see [`super::Head`].
pub const META: Def = TableDefinition::new("meta");
/// `repo` -> [`super::RepoCounts`] (postcard). A row exists while the repository holds anything.
pub const REPOS: Def = TableDefinition::new("repos");
/// `repo\0digest` -> blob size (8 bytes, little endian).
pub const BLOBS: Def = TableDefinition::new("blobs");
/// `repo\0digest` -> `ManifestRecord` (postcard).
pub const MANIFESTS: Def = TableDefinition::new("manifests");
/// `repo\0tag` -> `TagRecord` (postcard).
pub const TAGS: Def = TableDefinition::new("tags");
/// `repo\0subject\0digest` -> empty: the referrers index.
pub const REFERRERS: Def = TableDefinition::new("referrers");
/// `repo\0blob\0manifest` -> empty: which manifests of a repository use a blob.
pub const BLOB_USERS: Def = TableDefinition::new("blob_users");
/// `repo\0digest\0tag` -> empty: which tags point at a manifest.
pub const MANIFEST_TAGS: Def = TableDefinition::new("manifest_tags");
/// Sequence number (20 digits) -> `Tombstone` (postcard), oldest first.
pub const TOMBSTONES: Def = TableDefinition::new("tombstones");

/// `digest\0repo\0b` (a blob link) or `digest\0repo\0m` (a manifest) -> empty: who holds a
/// piece of content, for garbage collection (format 5).
pub const CONTENT_REFS: Def = TableDefinition::new("content_refs");
/// `repo\0child\0parent` -> empty: which manifests of a repository list a manifest (format 5).
pub const MANIFEST_PARENTS: Def = TableDefinition::new("manifest_parents");
/// [`gc_key`] -> when the item was queued (8 bytes, little endian): the review queue (format 5).
pub const GC_QUEUE: Def = TableDefinition::new("gc_queue");
/// `class\0time (20 digits)\0`[`gc_key`] -> empty: the review queue in time order, manifests
/// (class `m`) apart from blob links and content (class `b`) (format 5).
pub const GC_DUE: Def = TableDefinition::new("gc_due");
/// `digest` -> when it was marked (8 bytes, little endian): content being deleted (format 5).
pub const GC_DELETING: Def = TableDefinition::new("gc_deleting");

/// Event number (20 digits) -> `EventRecord` (postcard): events kept for notification
/// endpoints until every one has them.
pub const EVENTS: Def = TableDefinition::new("events");

/// `digest\0site` -> empty: which sites hold a piece of content (protocol 6).
pub const PLACEMENT: Def = TableDefinition::new("placement");
/// `site\0digest` -> size (8 bytes, little endian; 0 for a manifest body): content committed
/// since the site joined that it does not hold yet (protocol 6).
pub const GEO_MISSING: Def = TableDefinition::new("geo_missing");

/// Every table, with the number that names it in a snapshot. Numbers are never reused.
pub const ALL: [(u8, Def); 17] = [
    (1, META),
    (2, REPOS),
    (3, BLOBS),
    (4, MANIFESTS),
    (5, TAGS),
    (6, REFERRERS),
    (7, BLOB_USERS),
    (8, MANIFEST_TAGS),
    (9, TOMBSTONES),
    (10, CONTENT_REFS),
    (11, MANIFEST_PARENTS),
    (12, GC_QUEUE),
    (13, GC_DUE),
    (14, GC_DELETING),
    (15, EVENTS),
    (16, PLACEMENT),
    (17, GEO_MISSING),
];

/// The tables that format 5 derives from the others (rebuilt when an older state is loaded).
pub const DERIVED_IN_FORMAT_5: [Def; 2] = [CONTENT_REFS, MANIFEST_PARENTS];

/// How a review-queue item is spelt as a key: `m\0repo\0digest`, `l\0repo\0digest`, `c\0digest`.
pub fn gc_key(item: &GcItem) -> String {
    match item {
        GcItem::Manifest { repo, digest } => key3("m", repo.as_str(), &digest.to_string()),
        GcItem::Link { repo, digest } => key3("l", repo.as_str(), &digest.to_string()),
        GcItem::Content { digest } => key2("c", &digest.to_string()),
    }
}

/// The item a [`gc_key`] spells, if it spells one.
pub fn parse_gc_key(key: &str) -> Option<GcItem> {
    let mut parts = key.split('\0');
    let kind = parts.next()?;
    let a = parts.next()?;
    let b = parts.next();
    if parts.next().is_some() {
        return None;
    }
    Some(match (kind, b) {
        ("m", Some(d)) => GcItem::Manifest { repo: RepoName::parse(a).ok()?, digest: Digest::parse(d).ok()? },
        ("l", Some(d)) => GcItem::Link { repo: RepoName::parse(a).ok()?, digest: Digest::parse(d).ok()? },
        ("c", None) => GcItem::Content { digest: Digest::parse(a).ok()? },
        _ => return None,
    })
}

/// The [`GC_DUE`] key of an item (spelt by [`gc_key`]) queued at `at_ms`.
pub fn due_key(at_ms: u64, item_key: &str) -> String {
    key3(due_class(item_key.starts_with('m')), &seq_key(at_ms), item_key)
}

/// The first part of the [`GC_DUE`] keys of manifests, or of blob links and content.
pub fn due_class(manifests: bool) -> &'static str {
    if manifests {
        "m"
    } else {
        "b"
    }
}

/// The key of `b` within `a`.
pub fn key2(a: &str, b: &str) -> String {
    let mut k = String::with_capacity(a.len() + b.len() + 1);
    k.push_str(a);
    k.push('\0');
    k.push_str(b);
    k
}

/// The key of `c` within `b` within `a`.
pub fn key3(a: &str, b: &str, c: &str) -> String {
    let mut k = key2(a, b);
    k.push('\0');
    k.push_str(c);
    k
}

/// The last part of a key.
pub fn last_part(key: &str) -> &str {
    key.rsplit('\0').next().unwrap_or(key)
}

/// The range of keys that start with the parts `prefix` (already joined with `\0`).
pub fn within(prefix: &str) -> (Bound<String>, Bound<String>) {
    (Bound::Included(format!("{prefix}\0")), Bound::Excluded(format!("{prefix}\u{1}")))
}

/// The keys within `prefix` that come after `prefix\0last`.
pub fn within_after(prefix: &str, last: &str) -> (Bound<String>, Bound<String>) {
    (Bound::Excluded(key2(prefix, last)), Bound::Excluded(format!("{prefix}\u{1}")))
}

/// A tombstone's key: its sequence number, padded so that keys sort as numbers.
pub fn seq_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// `r` as the borrowed bounds redb's `range` takes.
pub fn bounds(r: &(Bound<String>, Bound<String>)) -> (Bound<&str>, Bound<&str>) {
    (r.0.as_ref().map(String::as_str), r.1.as_ref().map(String::as_str))
}
