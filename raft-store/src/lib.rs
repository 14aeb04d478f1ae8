//! Berth's Raft storage: the openraft type config, the durable log (redb), the registry state
//! on disk (redb) with its state machine and streamed snapshots, and read-only queries over the
//! state. No HTTP, no network.

pub mod cleanup;
pub mod disk;
pub mod identity;
pub mod log_store;
pub mod notify;
pub mod segments;
pub mod state;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use disk::DiskState;
pub use state::{RegistryState, Repo, TagRecord};
pub use state_machine::{SharedState, SpaceCheck, StateMachineStore};
pub use types::{typ, NodeId, Raft, TypeConfig};
