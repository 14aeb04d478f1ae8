//! `berth cluster ...`: membership administration and status over the gRPC admin service.

use std::time::Duration;

use anyhow::{bail, Context};
use berth_proto::rpc::cluster_service_client::ClusterServiceClient;
use berth_proto::rpc::{AddLearnerRequest, AdminReply, ChangeMembershipRequest, StatusReply, StatusRequest};
use tonic::transport::{Channel, Endpoint};

async fn connect(addr: &str) -> anyhow::Result<ClusterServiceClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(ClusterServiceClient::new(channel))
}

/// Runs an admin call at `node`, and once more at the leader if `node` is not the leader.
async fn admin<F, Fut>(node: &str, call: F) -> anyhow::Result<()>
where
    F: Fn(ClusterServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<AdminReply>, tonic::Status>>,
{
    let mut target = node.to_string();
    for _ in 0..2 {
        let reply = call(connect(&target).await?).await?.into_inner();
        if reply.error.is_empty() {
            return Ok(());
        }
        if reply.leader_addr.is_empty() || reply.leader_addr == target {
            bail!("{}", reply.error);
        }
        eprintln!("node at {target} is not the leader; retrying at node {} ({})", reply.leader_id, reply.leader_addr);
        target = reply.leader_addr;
    }
    bail!("the leader changed while retrying; try again")
}

/// Adds a learner and waits until it has caught up.
pub async fn add_learner(node: &str, id: u64, addr: &str) -> anyhow::Result<()> {
    admin(node, |mut c| {
        let req = AddLearnerRequest { node_id: id, grpc_addr: addr.to_string() };
        async move { c.add_learner(req).await }
    })
    .await?;
    println!("node {id} ({addr}) added as a learner");
    Ok(())
}

/// Sets the voters.
pub async fn change_membership(node: &str, voters: &[u64]) -> anyhow::Result<()> {
    admin(node, |mut c| {
        let req = ChangeMembershipRequest { voters: voters.to_vec() };
        async move { c.change_membership(req).await }
    })
    .await?;
    println!("voters are now {voters:?}");
    Ok(())
}

async fn status_of(addr: &str) -> anyhow::Result<StatusReply> {
    Ok(connect(addr).await?.status(StatusRequest {}).await?.into_inner())
}

/// Prints `leader ID`, the term, then one line per member with its own indexes.
pub async fn status(node: &str) -> anyhow::Result<()> {
    let s = status_of(node).await?;
    println!("leader {}", s.leader_id);
    println!("term {}", s.term);
    for m in &s.members {
        let role = if m.voter { "voter" } else { "learner" };
        match tokio::time::timeout(Duration::from_secs(2), status_of(&m.grpc_addr)).await {
            Ok(Ok(ms)) => println!(
                "node {} {} {} state={} term={} last_log={} commit={} applied={}",
                m.node_id, role, m.grpc_addr, ms.state, ms.term, ms.last_log_index, ms.committed_index, ms.applied_index
            ),
            _ => println!("node {} {} {} unreachable", m.node_id, role, m.grpc_addr),
        }
    }
    Ok(())
}
