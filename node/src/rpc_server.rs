//! The gRPC server a node offers its peers: Raft messages and cluster administration.

use std::collections::{BTreeMap, BTreeSet};

use berth_proto::rpc::cluster_service_server::{ClusterService, ClusterServiceServer};
use berth_proto::rpc::metadata_service_server::{MetadataService, MetadataServiceServer};
use berth_proto::rpc::raft_service_server::{RaftService, RaftServiceServer};
use berth_proto::rpc::{
    AddLearnerRequest, AdminReply, ApplyReply, ChangeMembershipRequest, Member, Payload, ReadIndexReply, ReadIndexRequest,
    StatusReply, StatusRequest,
};
use berth_raft_store::Raft;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

fn decode<T: DeserializeOwned>(p: Request<Payload>) -> Result<T, Status> {
    postcard::from_bytes(&p.into_inner().data).map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))
}

fn reply<T: Serialize>(v: &T) -> Result<Response<Payload>, Status> {
    let data = postcard::to_stdvec(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(Payload { data }))
}

/// Raft RPCs, handed straight to openraft.
pub struct RaftRpc {
    raft: Raft,
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.raft.append_entries(decode(req)?).await)
    }
    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.raft.vote(decode(req)?).await)
    }
    async fn install_snapshot(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.raft.install_snapshot(decode(req)?).await)
    }
}

/// Membership changes and status.
pub struct ClusterRpc {
    raft: Raft,
}

/// The error text of a reply that points the caller at the leader.
const NOT_LEADER: &str = "not the leader";

/// openraft's leader hint as (id, gRPC address); 0 and "" when the leader is unknown.
fn leader_hint(f: ForwardToLeader<u64, BasicNode>) -> (u64, String) {
    (f.leader_id.unwrap_or(0), f.leader_node.map(|n| n.addr).unwrap_or_default())
}

fn admin_reply<T>(res: Result<T, RaftError<u64, ClientWriteError<u64, BasicNode>>>) -> AdminReply {
    match res {
        Ok(_) => AdminReply::default(),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            let (leader_id, leader_addr) = leader_hint(f);
            AdminReply { error: NOT_LEADER.into(), leader_id, leader_addr }
        }
        Err(e) => AdminReply { error: e.to_string(), ..Default::default() },
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterRpc {
    async fn add_learner(&self, req: Request<AddLearnerRequest>) -> Result<Response<AdminReply>, Status> {
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node ids start at 1"));
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        if membership.nodes().any(|(id, _)| *id == r.node_id) {
            return Ok(Response::new(AdminReply {
                error: format!("node id {} is already a member; node ids are never reused", r.node_id),
                ..Default::default()
            }));
        }
        tracing::info!(node_id = r.node_id, addr = %r.grpc_addr, "adding learner");
        Ok(Response::new(admin_reply(self.raft.add_learner(r.node_id, BasicNode::new(&r.grpc_addr), true).await)))
    }

    async fn change_membership(&self, req: Request<ChangeMembershipRequest>) -> Result<Response<AdminReply>, Status> {
        let voters: BTreeSet<u64> = req.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("at least one voter is needed"));
        }
        tracing::info!(?voters, "changing membership");
        Ok(Response::new(admin_reply(self.raft.change_membership(voters, false).await)))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, BasicNode> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        Ok(Response::new(StatusReply {
            node_id: m.id,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            state: format!("{:?}", m.state),
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.last_applied.map_or(0, |l| l.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members: nodes
                .into_iter()
                .map(|(id, n)| Member { node_id: id, grpc_addr: n.addr, voter: voters.contains(&id) })
                .collect(),
        }))
    }
}

/// Writes forwarded by other nodes, and read indexes for their linearizable reads.
pub struct MetadataRpc {
    raft: Raft,
}

#[tonic::async_trait]
impl MetadataService for MetadataRpc {
    async fn apply(&self, req: Request<Payload>) -> Result<Response<ApplyReply>, Status> {
        let request: berth_proto::Request = decode(req)?;
        let reply = match self.raft.client_write(request).await {
            Ok(r) => {
                let outcome: Result<berth_proto::Outcome, String> = Ok(r.data);
                ApplyReply { outcome: postcard::to_stdvec(&outcome).map_err(|e| Status::internal(e.to_string()))?, ..Default::default() }
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let (leader_id, leader_addr) = leader_hint(f);
                ApplyReply { error: NOT_LEADER.into(), leader_id, leader_addr, ..Default::default() }
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        Ok(Response::new(reply))
    }

    async fn read_index(&self, _req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        let reply = match self.raft.ensure_linearizable().await {
            Ok(index) => ReadIndexReply { index: index.map_or(0, |l| l.index), ..Default::default() },
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                let (leader_id, leader_addr) = leader_hint(f);
                ReadIndexReply { error: NOT_LEADER.into(), leader_id, leader_addr, ..Default::default() }
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        Ok(Response::new(reply))
    }
}

/// Serves every node-to-node service on `listener` until `shutdown` resolves.
pub async fn serve(
    raft: Raft,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(
            RaftServiceServer::new(RaftRpc { raft: raft.clone() })
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(
            MetadataServiceServer::new(MetadataRpc { raft: raft.clone() })
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(ClusterServiceServer::new(ClusterRpc { raft }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
