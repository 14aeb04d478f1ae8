//! The openraft type configuration for Berth's metadata log.

use berth_proto::{Outcome, Request};

openraft::declare_raft_types!(
    /// Berth's Raft types: registry commands in, outcomes out.
    pub TypeConfig:
        D = Request,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// A node id; ids are never reused.
pub type NodeId = u64;
/// The Raft handle type.
pub type Raft = openraft::Raft<TypeConfig>;

/// Short aliases for openraft's generic types over [`TypeConfig`].
pub mod typ {
    use super::TypeConfig;

    /// Log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// Log id.
    pub type LogId = openraft::LogId<u64>;
    /// Vote.
    pub type Vote = openraft::Vote<u64>;
    /// Storage error.
    pub type StorageError = openraft::StorageError<u64>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
    /// Snapshot.
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    /// Membership as stored.
    pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
    /// A leader's AppendEntries.
    pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
}
