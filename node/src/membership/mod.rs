//! A voter's place in the cluster over its life: joining without an operator (`join`),
//! replacing a leader that is gone (`failover`), handing the leadership over when it is
//! stopped (`handover`), holding back commands some member cannot read (`protocol`), and
//! noticing that it was removed (`removed`). The ClusterService client calls they share
//! (and `berth cluster` uses) are here.

pub mod failover;
pub mod handover;
pub mod join;
pub mod protocol;
pub mod removed;

use std::time::Duration;

use berth_proto::rpc::cluster_service_client::ClusterServiceClient;
use berth_proto::rpc::{StatusReply, StatusRequest};

use crate::peers::{PeerChannel, Peers};

/// How long one admin call to a peer may take before it counts as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The ClusterService at `addr`.
pub(crate) fn client(peers: &Peers, addr: &str) -> anyhow::Result<ClusterServiceClient<PeerChannel>> {
    Ok(ClusterServiceClient::new(
        peers.channel(addr).map_err(anyhow::Error::msg)?,
    ))
}

/// Waits `every`; false once the node is stopping (the caller's loop then ends).
async fn tick(every: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(every) => true,
        _ = stop.changed() => false,
    }
}

/// A peer's view of the cluster; `timeout` is enforced here (tonic only sends it).
pub(crate) async fn status(peers: &Peers, addr: &str, timeout: Duration) -> anyhow::Result<StatusReply> {
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(timeout);
    let reply = tokio::time::timeout(timeout, client(peers, addr)?.status(req))
        .await
        .map_err(|_| anyhow::anyhow!("{addr}: no answer in {timeout:?}"))?;
    Ok(reply
        .map_err(|s| anyhow::anyhow!("{addr}: {}", s.message()))?
        .into_inner())
}
