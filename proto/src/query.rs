//! Reads of the registry state, asked of a voter by a node that holds no state of its own (a
//! frontend). The voter answers after a linearizable barrier, so a frontend's reads are as
//! fresh as a voter's.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cleanup::CleanupState;
use crate::identity::Identity;
use crate::geo::{GeoState, Placement};
use crate::notify::{EventRecord, NotifyState};
use crate::{Digest, GcItem, GcStatus, ManifestRecord, Reference, RepoName};

/// One read of the registry state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Query {
    /// Size of a blob linked into a repository.
    BlobSize {
        /// Repository.
        repo: RepoName,
        /// Blob.
        digest: Digest,
    },
    /// A manifest by tag or digest.
    Manifest {
        /// Repository.
        repo: RepoName,
        /// Tag or digest.
        reference: Reference,
    },
    /// A page of a repository's tags.
    Tags {
        /// Repository.
        repo: RepoName,
        /// Tags after this one.
        last: Option<String>,
        /// Page size.
        n: u64,
    },
    /// A page of repository names.
    Catalog {
        /// Names after this one.
        last: Option<String>,
        /// Page size.
        n: u64,
    },
    /// Manifests whose subject is `subject`.
    Referrers {
        /// Repository.
        repo: RepoName,
        /// The subject manifest.
        subject: Digest,
    },
    /// The cluster HTTP secret.
    HttpSecret,
    /// The version of identity (bumped by every change).
    IdentityVersion,
    /// All of identity (small: users and tokens, not tags).
    Identity,
    /// Up to `n` review-queue items of one class that have waited since `until_ms` or before,
    /// oldest first. The classes are swept by separate workers (`gc.manifests`, `gc.blobs`).
    GcDue {
        /// Manifests if true; blob links and content if false.
        manifests: bool,
        /// Queued at or before this time (ms since epoch).
        until_ms: u64,
        /// Most items.
        n: u64,
    },
    /// The garbage collector's queue length and marks.
    GcStatus,
    /// Whether each item is garbage now (`berth garbage-collect`).
    GcCollectable(Vec<GcItem>),
    /// Up to `n` of every repository's blob links and manifests after `after`, in the order
    /// of their queue keys (all links, then all manifests): what `berth garbage-collect
    /// --delete-untagged` looks at.
    GcScan {
        /// Items after this one.
        after: Option<GcItem>,
        /// Page size.
        n: u64,
    },
    /// Every project's cleanup policy, schedule and runs.
    Cleanup,
    /// Up to `n` events `endpoint` has not acknowledged, oldest first, with their numbers.
    NotifyPending {
        /// The endpoint.
        endpoint: String,
        /// Most events.
        n: u64,
    },
    /// The endpoints events are kept for and their positions.
    NotifyStatus,
    /// Up to `n` of the blobs linked into a repository after `after`, in digest order, with
    /// their sizes (storage usage, repository deletion).
    Blobs {
        /// The repository.
        repo: RepoName,
        /// Blobs after this one.
        after: Option<Digest>,
        /// Page size.
        n: u64,
    },
    /// The sites, their nodes and how far each is behind (protocol 6).
    GeoStatus,
    /// Up to `n` pieces of content `site` does not hold yet, after `after` in digest order,
    /// with where they are held.
    GeoMissing {
        /// The site.
        site: String,
        /// Content after this digest.
        after: Option<Digest>,
        /// Page size.
        n: u64,
    },
    /// Up to `n` pieces of content after `after` (a digest, or a backfill position), in
    /// digest order, with where they are held: a backfill's walk over everything.
    GeoContent {
        /// Content after this.
        after: Option<String>,
        /// Page size.
        n: u64,
    },
    /// Where one piece of content is held; `None` if it is not content.
    GeoPlacement(Digest),
}

/// The answer to a [`Query`]; the variant matches the query's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// For [`Query::BlobSize`].
    BlobSize(Option<u64>),
    /// For [`Query::Manifest`].
    Manifest(Option<(Digest, Arc<ManifestRecord>)>),
    /// For [`Query::Tags`]; `None` when the repository does not exist.
    Tags(Option<Vec<String>>),
    /// For [`Query::Catalog`].
    Catalog(Vec<String>),
    /// For [`Query::Referrers`].
    Referrers(Vec<(Digest, Arc<ManifestRecord>)>),
    /// For [`Query::HttpSecret`].
    HttpSecret(Option<Vec<u8>>),
    /// For [`Query::IdentityVersion`].
    IdentityVersion(u64),
    /// For [`Query::Identity`].
    Identity(Arc<Identity>),
    /// For [`Query::GcDue`]: each item with the time it was queued.
    GcDue(Vec<(GcItem, u64)>),
    /// For [`Query::GcStatus`].
    GcStatus(GcStatus),
    /// For [`Query::GcCollectable`]: one answer per item, in order.
    GcCollectable(Vec<bool>),
    /// For [`Query::GcScan`].
    GcScan(Vec<GcItem>),
    /// For [`Query::Cleanup`]: by project id.
    Cleanup(Arc<BTreeMap<u64, CleanupState>>),
    /// For [`Query::NotifyPending`].
    Events(Vec<(u64, EventRecord)>),
    /// For [`Query::NotifyStatus`].
    Notify(NotifyState),
    /// For [`Query::Blobs`].
    Blobs(Vec<(Digest, u64)>),
    /// For [`Query::GeoStatus`].
    Geo(GeoState),
    /// For [`Query::GeoMissing`] and [`Query::GeoContent`].
    Placements(Vec<Placement>),
    /// For [`Query::GeoPlacement`].
    Placement(Option<Placement>),
}
