//! Commands replicated through the Raft log, the records they create, and their outcomes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cleanup::CleanupChange;
use crate::identity::IdentityChange;
use crate::notify::NotifyChange;
use crate::{Digest, RepoName, Tag};

/// A metadata change, proposed by any node and applied by every state machine in log order.
/// Apply is deterministic: time comes from the proposer (`at_ms`), never from the applier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// What to change.
    pub command: Command,
    /// Milliseconds since the Unix epoch when the proposer created the request.
    pub at_ms: u64,
}

/// The metadata changes Berth knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster HTTP secret (signs upload state) unless one is already set.
    InitHttpSecret {
        /// Raw secret bytes.
        #[serde(with = "serde_bytes")]
        secret: Vec<u8>,
    },
    /// Makes a stored blob readable from a repository.
    LinkBlob {
        /// Target repository.
        repo: RepoName,
        /// The blob.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
    },
    /// Removes a blob link (blob DELETE). The bytes are left for garbage collection.
    UnlinkBlob {
        /// Repository.
        repo: RepoName,
        /// The blob.
        digest: Digest,
    },
    /// Stores a manifest, its references, its referrers entry and optionally a tag, at once.
    PutManifest {
        /// Repository.
        repo: RepoName,
        /// Digest of `manifest.body`.
        digest: Digest,
        /// The manifest and what it references.
        manifest: ManifestRecord,
        /// Tag to point at it, if pushed by tag.
        tag: Option<Tag>,
    },
    /// Deletes a manifest by digest, with every tag that points at it.
    DeleteManifest {
        /// Repository.
        repo: RepoName,
        /// The manifest.
        digest: Digest,
    },
    /// Deletes one tag; the manifest stays.
    DeleteTag {
        /// Repository.
        repo: RepoName,
        /// The tag.
        tag: Tag,
    },
    /// Changes users, projects, members, tokens or signing keys.
    Identity(IdentityChange),
    /// [`Command::PutManifest`] for a manifest whose body is durable and verified in the blob
    /// store under `digest`: `manifest.body` is empty, the entry carries only what the indexes
    /// need, and readers take the body from the store. The leader proposes it in place of a
    /// `PutManifest` once every member reads protocol 3.
    PutStoredManifest {
        /// Repository.
        repo: RepoName,
        /// Digest of the body, which the blob store holds.
        digest: Digest,
        /// The manifest and what it references; `body` is empty.
        manifest: ManifestRecord,
        /// Tag to point at it, if pushed by tag.
        tag: Option<Tag>,
    },
    /// Sets the cluster's registry limits (protocol 3).
    SetLimits(RegistryLimits),
    /// Garbage collection (protocol 4): acts on each item, in order, if in log order it is
    /// still garbage. A manifest is deleted, a blob link removed; content is marked as being
    /// deleted (so that nothing links or stores it until [`Command::GcDeleted`]) and its bytes
    /// may then go. Whatever happens, each item leaves the review queue. The outcome is
    /// [`Outcome::Swept`]: which items were acted on.
    GcSweep(Vec<GcItem>),
    /// Garbage collection (protocol 4): the bytes of these digests, marked by a
    /// [`Command::GcSweep`], are deleted from the blob store; the marks go. The outcome is
    /// [`Outcome::Swept`]: which marks there were.
    GcDeleted {
        /// The content.
        digests: Vec<Digest>,
    },
    /// Garbage collection (protocol 4): puts each item that is garbage in log order on the
    /// review queue (a store scan's orphans, `berth garbage-collect --delete-untagged`).
    GcEnqueue(Vec<GcItem>),
    /// Cleanup policies (protocol 5): saves a project's policy, or starts, records or ends
    /// one of its runs.
    Cleanup(CleanupChange),
    /// Notifications (protocol 5): the endpoints events are kept for, or how far one has
    /// received them.
    Notify(NotifyChange),
    /// A change to the sites and to where content is held (protocol 6).
    Geo(crate::geo::GeoChange),
}

/// What the garbage collector reviews: something that nothing keeps, which is deleted once it
/// has stayed so for `gc.reviewafter`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GcItem {
    /// A manifest of a repository that no tag points at, no index of the repository lists and
    /// whose subject (if it names one) the repository does not hold.
    Manifest {
        /// Repository.
        repo: RepoName,
        /// The manifest.
        digest: Digest,
    },
    /// A blob link of a repository that no manifest of the repository uses.
    Link {
        /// Repository.
        repo: RepoName,
        /// The blob.
        digest: Digest,
    },
    /// Bytes in the blob store (a blob or a manifest body) that no repository links or holds
    /// as a manifest.
    Content {
        /// The content.
        digest: Digest,
    },
}

impl GcItem {
    /// The kind, for logs and metrics: `manifest`, `link` or `content`.
    pub fn kind(&self) -> &'static str {
        match self {
            GcItem::Manifest { .. } => "manifest",
            GcItem::Link { .. } => "link",
            GcItem::Content { .. } => "content",
        }
    }
}

/// The garbage collector's state: how much is queued and what is being deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcStatus {
    /// Items on the review queue.
    pub queued: u64,
    /// Content marked by a [`Command::GcSweep`] and not yet [`Command::GcDeleted`], with when it
    /// was marked (ms since epoch).
    pub deleting: Vec<(Digest, u64)>,
}

/// Limits on how much the registry holds, kept in the state so that every voter decides a
/// push against the same numbers, in log order. 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLimits {
    /// Tags in one repository (`berth.limits.maxtagsperrepository`).
    pub tags_per_repository: u64,
    /// Repositories in one namespace (`berth.limits.maxrepositoriespernamespace`).
    pub repositories_per_namespace: u64,
}

/// The namespace a repository belongs to, for [`RegistryLimits::repositories_per_namespace`]:
/// its first path component (`team` for `team/app/api`); a repository with no `/` in its name
/// is a namespace of its own.
pub fn namespace_of(repo: &str) -> &str {
    repo.split('/').next().unwrap_or(repo)
}

/// Which limit refused a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitKind {
    /// [`RegistryLimits::tags_per_repository`].
    TagsPerRepository,
    /// [`RegistryLimits::repositories_per_namespace`].
    RepositoriesPerNamespace,
}

impl LimitKind {
    /// The configuration key that sets it.
    pub fn key(self) -> &'static str {
        match self {
            LimitKind::TagsPerRepository => "berth.limits.maxtagsperrepository",
            LimitKind::RepositoriesPerNamespace => "berth.limits.maxrepositoriespernamespace",
        }
    }
}

/// The newest log-entry protocol this build writes and reads. A command that came after
/// protocol 1 names its protocol in [`Command::since`], and the leader proposes it only once
/// every member of the cluster runs a build that reads it: a node that cannot decode an entry
/// cannot append it, so during a rolling upgrade an old voter would stall, and with it every
/// write once a majority does.
///
/// 1. Blobs, manifests, tags, users, projects, members, tokens, signing keys.
/// 2. Groups, group members and group deploy tokens.
/// 3. Manifest bodies in the blob store ([`Command::PutStoredManifest`]), registry limits
///    ([`Command::SetLimits`]).
/// 4. Garbage collection ([`Command::GcSweep`], [`Command::GcDeleted`], [`Command::GcEnqueue`]).
/// 5. Cleanup policies ([`Command::Cleanup`]), notifications ([`Command::Notify`]).
/// 6. Sites and content placement ([`Command::Geo`]).
pub const PROTOCOL: u32 = 6;

impl Command {
    /// The protocol that introduced this command (see [`PROTOCOL`]).
    pub fn since(&self) -> u32 {
        match self {
            Command::Identity(change) => change.since(),
            Command::PutStoredManifest { .. } | Command::SetLimits(_) => 3,
            Command::GcSweep(_) | Command::GcDeleted { .. } | Command::GcEnqueue(_) => 4,
            Command::Cleanup(_) | Command::Notify(_) => 5,
            Command::Geo(_) => 6,
            _ => 1,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::InitHttpSecret { .. } => "init_http_secret",
            Command::LinkBlob { .. } => "link_blob",
            Command::UnlinkBlob { .. } => "unlink_blob",
            Command::PutManifest { .. } => "put_manifest",
            Command::DeleteManifest { .. } => "delete_manifest",
            Command::DeleteTag { .. } => "delete_tag",
            Command::Identity(_) => "identity",
            Command::PutStoredManifest { .. } => "put_manifest",
            Command::SetLimits(_) => "set_limits",
            Command::GcSweep(_) => "gc_sweep",
            Command::GcDeleted { .. } => "gc_deleted",
            Command::GcEnqueue(_) => "gc_enqueue",
            Command::Cleanup(_) => "cleanup",
            Command::Notify(_) => "notify",
            Command::Geo(_) => "geo",
        }
    }
}

/// A stored manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// Media type it is served with.
    pub media_type: String,
    /// The exact bytes pushed; empty in the state for a manifest whose body is in the blob
    /// store ([`Command::PutStoredManifest`]; no manifest is empty), and filled from the store
    /// in every answer.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Blobs it references (config and layers), sorted.
    pub blobs: Vec<Digest>,
    /// Child manifests it references (index), sorted.
    pub manifests: Vec<Digest>,
    /// The manifest it refers to (`subject`).
    pub subject: Option<Digest>,
    /// Artifact type shown by the referrers API.
    pub artifact_type: Option<String>,
    /// Top-level annotations.
    pub annotations: BTreeMap<String, String>,
    /// When it was first pushed (ms since epoch).
    pub created_ms: u64,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied.
    Done,
    /// Nothing changed because it already held (e.g. the secret was set).
    Unchanged,
    /// The manifest references blobs or manifests missing from the repository.
    MissingReferences {
        /// Missing blobs.
        blobs: Vec<Digest>,
        /// Missing child manifests.
        manifests: Vec<Digest>,
    },
    /// The target of a delete does not exist.
    NotFound,
    /// The blob cannot be unlinked: these manifests of the repository reference it.
    InUse {
        /// Manifests that reference the blob.
        manifests: Vec<Digest>,
    },
    /// A record was created with this id.
    Created {
        /// Its id.
        id: u64,
    },
    /// Refused: it would clash with what exists (a taken name, a nested project).
    Conflict {
        /// Why, for people.
        reason: String,
    },
    /// Refused: the content is being deleted by garbage collection (protocol 4); the client
    /// should upload it again in a moment.
    Deleting,
    /// What a [`Command::GcSweep`] or [`Command::GcDeleted`] did to each of its items.
    Swept(Vec<bool>),
    /// Refused: it would take the registry past one of its limits.
    LimitReached {
        /// Which one.
        limit: LimitKind,
        /// Its value.
        max: u64,
    },
}
