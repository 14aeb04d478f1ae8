//! `berth cluster ...`: membership administration and status over the gRPC admin service.

use std::time::Duration;

use anyhow::bail;
use berth_proto::rpc::cluster_service_client::ClusterServiceClient;
use berth_proto::rpc::{AddLearnerRequest, AdminReply, ChangeMembershipRequest, RemoveNodeRequest, StatusReply};

use crate::config::Config;
use crate::metadata::remote::hint;
use crate::cluster_token::ClusterToken;
use crate::membership;
use crate::progress::{Progress, Unit};
use crate::peers::{MutualTls, PeerChannel, Peers};

/// Admin calls, over mutual TLS when the config has `berth.tls`.
pub struct Admin {
    peers: Peers,
}

impl Admin {
    /// Connects the way the configured node would: its TLS settings and its cluster token
    /// (`berth.clustertokenfile`, else `<datadir>/cluster-token`).
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let tls = cfg.berth.tls.as_ref().map(MutualTls::load).transpose()?;
        let data_dir = cfg.berth.datadir.clone().unwrap_or_else(|| crate::DEFAULT_DATA_DIR.into());
        let token = ClusterToken::for_config(&cfg.berth, &data_dir, false)?;
        Ok(Admin { peers: Peers::new(tls, token) })
    }

    /// The channels the calls go through.
    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    pub(crate) fn client(&self, addr: &str) -> anyhow::Result<ClusterServiceClient<PeerChannel>> {
        membership::client(&self.peers, addr)
    }

    /// Runs an admin call at `node`, and once more at the leader if `node` is not the leader.
    async fn admin<F, Fut>(&self, node: &str, call: F) -> anyhow::Result<()>
    where
        F: Fn(ClusterServiceClient<PeerChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<AdminReply>, tonic::Status>>,
    {
        let mut target = node.to_string();
        for _ in 0..2 {
            let reply = call(self.client(&target)?).await.map_err(|s| anyhow::anyhow!("{target}: {}", s.message()))?.into_inner();
            if reply.error.is_empty() {
                return Ok(());
            }
            let Some((id, addr)) = reply.not_leader.and_then(hint).filter(|(_, a)| *a != target) else {
                bail!("{}", reply.error);
            };
            eprintln!("node at {target} is not the leader; retrying at node {id} ({addr})");
            target = addr;
        }
        bail!("the leader changed while retrying; try again")
    }

    /// Adds a learner and waits until it has caught up, showing how far it is on a terminal.
    pub async fn add_learner(&self, node: &str, id: u64, addr: &str) -> anyhow::Result<()> {
        let call = self.admin(node, |mut c| {
            let req = AddLearnerRequest { node_id: id, grpc_addr: addr.to_string() };
            async move { c.add_learner(req).await }
        });
        tokio::pin!(call);
        let mut progress = Progress::new(&format!("node {id} catching up"), Unit::Entries);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                r = &mut call => {
                    r?;
                    if let Ok(s) = self.status_of(addr).await {
                        progress.finish(s.applied_index);
                    }
                    break;
                }
                _ = tick.tick() => {
                    if let (Ok(leader), Ok(learner)) = (self.status_of(node).await, self.status_of(addr).await) {
                        progress.total(leader.last_log_index);
                        progress.set(learner.applied_index);
                    }
                }
            }
        }
        println!("node {id} ({addr}) added as a learner");
        Ok(())
    }

    /// Sets the voters.
    pub async fn change_membership(&self, node: &str, voters: &[u64]) -> anyhow::Result<()> {
        self.admin(node, |mut c| {
            let req = ChangeMembershipRequest { voters: voters.to_vec() };
            async move { c.change_membership(req).await }
        })
        .await?;
        println!("voters are now {voters:?}");
        Ok(())
    }

    /// Removes a node from the cluster.
    pub async fn remove(&self, node: &str, id: u64) -> anyhow::Result<()> {
        self.admin(node, |mut c| async move { c.remove_node(RemoveNodeRequest { node_id: id }).await }).await?;
        println!("node {id} removed; its id will not be accepted again");
        Ok(())
    }

    async fn status_of(&self, addr: &str) -> anyhow::Result<StatusReply> {
        membership::status(&self.peers, addr, Duration::from_secs(5)).await
    }

    /// Prints `leader ID`, the term, then one line per member with its own indexes.
    pub async fn status(&self, node: &str) -> anyhow::Result<()> {
        let s = self.status_of(node).await?;
        println!("leader {}", s.leader_id);
        println!("term {}", s.term);
        for m in &s.members {
            let role = if m.voter { "voter" } else { "learner" };
            match tokio::time::timeout(Duration::from_secs(2), self.status_of(&m.grpc_addr)).await {
                Ok(Ok(ms)) => println!(
                    "node {} {} {} state={} term={} last_log={} commit={} applied={} protocol={}",
                    m.node_id,
                    role,
                    m.grpc_addr,
                    ms.state,
                    ms.term,
                    ms.last_log_index,
                    ms.committed_index,
                    ms.applied_index,
                    ms.protocol.max(1)
                ),
                _ => println!("node {} {} {} unreachable", m.node_id, role, m.grpc_addr),
            }
        }
        Ok(())
    }
}
