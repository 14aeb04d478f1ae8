//! Starts this node's Raft instance on durable storage and bootstraps the one-voter cluster
//! (the embedded default) on first start.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_raft_store::{LogStore, Raft, SharedState, StateMachineStore, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, SnapshotPolicy};

/// Peer transport of a node that has no peers. A one-voter cluster never sends an RPC; if
/// membership ever names another node, the call fails as `Unreachable` (openraft backs off)
/// and says why. The gRPC transport for multi-node clusters replaces this.
#[derive(Clone, Default)]
pub struct NoPeers;

/// Connection handle of [`NoPeers`].
pub struct NoPeerConnection {
    target: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is not reachable: this build serves a single-voter cluster with no peer transport")]
struct NoTransport(u64);

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerConnection;
    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> NoPeerConnection {
        NoPeerConnection { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeerConnection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoTransport(self.target))))
    }
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoTransport(self.target))))
    }
    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoTransport(self.target))))
    }
}

/// A started Raft node and its readable state.
pub struct RaftNode {
    /// The Raft handle.
    pub raft: Raft,
    /// The state machine's state, for reads after a linearizable barrier.
    pub state: SharedState,
}

/// Default log entries between snapshots; the log is purged behind each snapshot.
pub const SNAPSHOT_EVERY: u64 = 10_000;

/// Opens storage under `dir`, starts Raft, and initializes a one-voter cluster if this node
/// has never been part of one. Waits until this node leads.
pub async fn start(dir: &Path, node_id: u64, advertise: &str, snapshot_every: u64) -> anyhow::Result<RaftNode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = openraft::Config {
        cluster_name: "berth".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(1000),
        purge_batch_size: (snapshot_every / 10).clamp(1, 256),
        ..Default::default()
    }
    .validate()?;
    let log = LogStore::open(&dir.join("log.redb")).with_context(|| format!("opening {}", dir.join("log.redb").display()))?;
    let sm = StateMachineStore::open(&dir.join("state")).context("opening the state machine")?;
    let state = sm.shared();
    let raft = Raft::new(node_id, Arc::new(config), NoPeers, log, sm).await?;
    if !raft.is_initialized().await? {
        tracing::info!(node_id, "initializing a new single-voter cluster");
        let members = BTreeMap::from([(node_id, BasicNode::new(advertise))]);
        raft.initialize(members).await?;
    }
    raft.wait(Some(Duration::from_secs(30)))
        .current_leader(node_id, "waiting to lead the single-voter cluster")
        .await
        .context("this node did not become leader")?;
    Ok(RaftNode { raft, state })
}
