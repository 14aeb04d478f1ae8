//! Berth's Raft storage: the openraft type config, the durable log (redb), the registry state
//! machine with durable snapshots, and read-only queries over the state. No HTTP, no network.

pub mod identity;
pub mod log_store;
pub mod state;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use state::{RegistryState, Repo, TagRecord};
pub use state_machine::{SharedState, StateMachineStore};
pub use types::{typ, NodeId, Raft, TypeConfig};
