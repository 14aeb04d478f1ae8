//! Raft transport over tonic gRPC. One channel per peer is created lazily and reused; every
//! call carries the deadline openraft gives it; a peer that cannot be reached is reported as
//! `Unreachable`, which makes openraft back off before retrying.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use berth_proto::rpc::raft_service_client::RaftServiceClient;
use berth_proto::rpc::Payload;
use berth_raft_store::{SharedState, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;


use crate::peers::{PeerChannel, Peers};

/// Creates openraft's connections to peers over the shared [`Peers`] channels.
#[derive(Clone)]
pub struct GrpcNetwork {
    peers: Peers,
    /// This node's state, whose cluster identity every message carries.
    state: Arc<OnceLock<SharedState>>,
}

/// The gRPC metadata key of the sender's cluster identity on Raft messages.
pub const CLUSTER_HEADER: &str = "berth-cluster";

impl GrpcNetwork {
    /// Raft traffic over `peers`' channels.
    pub fn new(peers: Peers) -> Self {
        GrpcNetwork { peers, state: Arc::default() }
    }

    /// Gives the network the state whose cluster identity messages carry.
    pub fn identify(&self, state: SharedState) {
        let _ = self.state.set(state);
    }
}

/// A connection to one peer.
pub struct GrpcConnection {
    state: Arc<OnceLock<SharedState>>,
    target: u64,
    node: BasicNode,
    channel: Result<PeerChannel, String>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcConnection {
        GrpcConnection { state: self.state.clone(), target, node: node.clone(), channel: self.peers.channel(&node.addr) }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RpcFailure(String);

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

fn network_error<E: std::error::Error>(msg: impl ToString) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    RPCError::Network(NetworkError::new(&RpcFailure(msg.to_string())))
}

impl GrpcConnection {
    async fn call<Req, Resp, E>(&self, rpc: Rpc, req: &Req, ttl: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .channel
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&RpcFailure(e))))?;
        let data = postcard::to_stdvec(req).map_err(network_error)?;
        let mut client = RaftServiceClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
        let mut request = tonic::Request::new(Payload { data });
        request.set_timeout(ttl);
        if let Some(id) = self.state.get().map(|s| s.cluster_id()).filter(|id| !id.is_empty()) {
            if let Ok(v) = id.parse() {
                request.metadata_mut().insert(CLUSTER_HEADER, v);
            }
        }
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let bytes = match reply {
            Ok(r) => r.into_inner().data,
            // Down, or short of disk: either way openraft should back off before it retries.
            // Or of another cluster (this one was superseded by a promotion, or that node was):
            // nothing to do there but wait.
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::FailedPrecondition) => {
                return Err(RPCError::Unreachable(Unreachable::new(&RpcFailure(format!(
                    "node {} at {}: {}",
                    self.target,
                    self.node.addr,
                    s.message()
                )))))
            }
            Err(s) => return Err(network_error(format!("node {}: {}: {}", self.target, s.code(), s.message()))),
        };
        let result: Result<Resp, RaftError<u64, E>> = postcard::from_bytes(&bytes).map_err(network_error)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.call(Rpc::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call(Rpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}
