//! The tables of the on-disk state and how their keys are spelt.
//!
//! Every table maps a string key to bytes, so that a snapshot can copy any table row by row
//! without knowing what it holds. Keys join their parts with `\0`, which no repository name,
//! tag or digest contains; so the rows of one repository (or of one manifest within it) are
//! one contiguous range, in the same lexical order the in-memory maps had.

use std::ops::Bound;

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

/// Every table, with the number that names it in a snapshot. Numbers are never reused.
pub const ALL: [(u8, Def); 9] = [
    (1, META),
    (2, REPOS),
    (3, BLOBS),
    (4, MANIFESTS),
    (5, TAGS),
    (6, REFERRERS),
    (7, BLOB_USERS),
    (8, MANIFEST_TAGS),
    (9, TOMBSTONES),
];

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
