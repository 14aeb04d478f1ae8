//! The gRPC server a voter offers its peers and frontends: Raft messages, metadata
//! forwarding and reads, and cluster administration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::rpc::cluster_service_server::{ClusterService, ClusterServiceServer};
use berth_proto::rpc::metadata_service_server::{MetadataService, MetadataServiceServer};
use berth_proto::rpc::raft_service_server::{RaftService, RaftServiceServer};
use berth_api::MetaError;
use berth_proto::rpc::{
    AddLearnerRequest, AddVoterRequest, AdminReply, BackupChunk, BackupRequest, CampaignRequest, ApplyReply, ChangeMembershipRequest, Member, Payload, ReadIndexReply, ReadIndexRequest,
    RemoveNodeRequest, StatusReply, StatusRequest,
};
use berth_raft_store::{Raft, SharedState};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use crate::metadata::remote::{not_leader, unix_ms, Reply, DEADLINE_HEADER, TIMEOUT};
use crate::membership::failover::LeaderContact;
use crate::metadata::voter::RaftMetadata;
use crate::metadata::MetadataBackend;
use crate::cluster_token::ClusterToken;
use crate::peers::MutualTls;
use crate::space::SpaceGuard;
use tonic::service::interceptor::InterceptedService;
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

/// Raft RPCs, handed to openraft, except that a node short of disk refuses to take log
/// entries or snapshots (the leader sees it as unreachable and retries later) instead of
/// meeting ENOSPC, which would stop its Raft core for good. Heartbeats and votes still pass,
/// so the node neither disturbs the leader with elections nor falls out of the cluster.
pub struct RaftRpc {
    raft: Raft,
    space: SpaceGuard,
    contact: LeaderContact,
    state: SharedState,
}

impl RaftRpc {
    /// Refuses a message from another cluster: one that replaced this one (a promotion), or
    /// that this one replaced. A node that has applied nothing yet takes any cluster's.
    fn same_cluster<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let theirs = req.metadata().get(crate::raft_network::CLUSTER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let ours = self.state.cluster_id();
        if theirs == ours || (ours.is_empty() && self.state.is_blank()) {
            return Ok(());
        }
        let name = |id: &str| if id.is_empty() { "the first cluster".to_string() } else { format!("cluster {id}") };
        tracing::warn!(theirs = %name(theirs), ours = %name(&ours), "refusing a Raft message from another cluster: a promoted site and the old primary stay apart until the old one is demoted");
        Err(Status::failed_precondition(format!("this node belongs to {}, not {}", name(&ours), name(theirs))))
    }

    fn room(&self) -> Result<(), Status> {
        self.space.check().map_err(|e| Status::resource_exhausted(format!("this node takes no log entries now: {e}")))
    }
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.same_cluster(&req)?;
        let req: berth_raft_store::typ::AppendEntriesRequest = decode(req)?;
        if !req.entries.is_empty() {
            self.room()?;
        }
        let res = self.raft.append_entries(req).await;
        // Anything but "your term is stale" comes from the current leader.
        if res.as_ref().is_ok_and(|r| !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_))) {
            self.contact.heard();
        }
        reply(&res)
    }
    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.same_cluster(&req)?;
        reply(&self.raft.vote(decode(req)?).await)
    }
    async fn install_snapshot(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.same_cluster(&req)?;
        self.room()?;
        reply(&self.raft.install_snapshot(decode(req)?).await)
    }
}

/// The log protocol this node says it reads: this build's. A test hook,
/// `BERTH_TEST_REPORT_PROTOCOL`, makes it say an older one, as a node of an older build would
/// (tests of upgrades have no older build to run). Unset in production.
fn reported_protocol() -> u32 {
    static P: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *P.get_or_init(|| std::env::var("BERTH_TEST_REPORT_PROTOCOL").ok().and_then(|v| v.parse().ok()).unwrap_or(berth_proto::PROTOCOL))
}

/// Membership changes and status.
pub struct ClusterRpc {
    raft: Raft,
    contact: LeaderContact,
    state: SharedState,
    /// Asks a joiner which log protocol it reads.
    meta: Arc<RaftMetadata>,
}

fn admin_reply<T>(res: Result<T, RaftError<u64, ClientWriteError<u64, BasicNode>>>) -> AdminReply {
    match res {
        Ok(_) => AdminReply::default(),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => AdminReply {
            error: "not the leader".into(),
            not_leader: Some(not_leader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))),
        },
        Err(e) => AdminReply { error: e.to_string(), ..Default::default() },
    }
}

fn refused(error: String) -> Result<Response<AdminReply>, Status> {
    Ok(Response::new(AdminReply { error, ..Default::default() }))
}

/// Size of one `Backup` chunk (gRPC messages stay far below their 4 MiB limit).
const BACKUP_CHUNK: usize = 1 << 20;

/// Sends the file at `path` (then removes it) as backup chunks: the first names its total size
/// and the log index it holds, the last its SHA-256.
async fn send_backup(path: std::path::PathBuf, total: u64, applied_index: u64, sha256: String, tx: tokio::sync::mpsc::Sender<Result<BackupChunk, Status>>) {
    use tokio::io::AsyncReadExt;
    let sent = async {
        let mut file = tokio::fs::File::open(&path).await?;
        let (mut sent, mut first) = (0u64, true);
        loop {
            let mut data = vec![0u8; BACKUP_CHUNK];
            let mut n = 0;
            while n < BACKUP_CHUNK {
                match file.read(&mut data[n..]).await? {
                    0 => break,
                    k => n += k,
                }
            }
            data.truncate(n);
            sent += n as u64;
            let last = n < BACKUP_CHUNK || sent == total;
            let mut chunk = BackupChunk { data, ..Default::default() };
            if first {
                (chunk.total, chunk.applied_index, first) = (total, applied_index, false);
            }
            if last {
                chunk.sha256 = sha256.clone();
            }
            if tx.send(Ok(chunk)).await.is_err() || last {
                return std::io::Result::Ok(());
            }
        }
    };
    if let Err(e) = sent.await {
        let _ = tx.send(Err(Status::internal(format!("reading the backup: {e}")))).await;
    }
    let _ = tokio::fs::remove_file(&path).await;
}

/// The prefix and suffix of a backup's temporary export file in the state directory.
const BACKUP_FILE: (&str, &str) = ("backup-", ".tmp");

/// Removes backup exports left by a process that died while serving them: each can be as
/// large as the whole state.
fn remove_stale_backups(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(BACKUP_FILE.0) && name.ends_with(BACKUP_FILE.1) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %name, "removed a backup export left by an earlier run"),
                Err(e) => tracing::warn!(file = %name, "a backup export left by an earlier run was not removed: {e}"),
            }
        }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterRpc {
    type BackupStream = tokio_stream::wrappers::ReceiverStream<Result<BackupChunk, Status>>;

    async fn backup(&self, _req: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        // The state is exported from one read transaction to a file beside it, then streamed.
        let state = self.state.clone();
        let name = format!("{}{}{}", BACKUP_FILE.0, berth_proto::now_ms(), BACKUP_FILE.1);
        let (path, head, total, sha256) = tokio::task::spawn_blocking(move || state.export_file(state.dir(), &name))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("exporting the state: {e}")))?;
        let applied = head.last_applied.map_or(0, |l| l.index);
        tracing::info!(bytes = total, applied, "serving a backup");
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(send_backup(path, total, applied, sha256, tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn add_learner(&self, req: Request<AddLearnerRequest>) -> Result<Response<AdminReply>, Status> {
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node ids start at 1"));
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        if membership.nodes().any(|(id, _)| *id == r.node_id) {
            return refused(format!("node id {} is already a member; node ids are never reused", r.node_id));
        }
        if self.state.node_id_used(r.node_id) {
            return refused(format!("node id {} belonged to a node that was removed; node ids are never reused", r.node_id));
        }
        if let Err(why) = self.meta.check_joiner(&r.grpc_addr).await {
            return refused(why);
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

    async fn add_voter(&self, req: Request<AddVoterRequest>) -> Result<Response<AdminReply>, Status> {
        let id = req.into_inner().node_id;
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return refused(format!("node {id} is not a member; add it as a learner first"));
        }
        if membership.voter_ids().any(|v| v == id) {
            return Ok(Response::new(AdminReply::default()));
        }
        tracing::info!(node_id = id, "promoting learner to voter");
        Ok(Response::new(admin_reply(self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await)))
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<AdminReply>, Status> {
        let id = req.into_inner().node_id;
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if membership.get_node(&id).is_none() {
            return refused(format!("node {id} is not a member"));
        }
        if voters.contains(&id) {
            if voters.len() == 1 {
                return refused(format!("node {id} is the last voter; add another voter before removing it"));
            }
            tracing::info!(node_id = id, "removing voter");
            let r = admin_reply(self.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await);
            return Ok(Response::new(r));
        }
        tracing::info!(node_id = id, "removing learner");
        Ok(Response::new(admin_reply(self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await)))
    }

    async fn campaign(&self, _req: Request<CampaignRequest>) -> Result<Response<AdminReply>, Status> {
        tracing::info!("asked to take over the leadership: campaigning now");
        match self.raft.trigger().elect().await {
            Ok(()) => Ok(Response::new(AdminReply::default())),
            Err(e) => refused(e.to_string()),
        }
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
            committed_index: crate::raft::committed_index(&m),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            protocol: reported_protocol(),
            millis_since_leader: if m.current_leader == Some(m.id) { 0 } else { self.contact.silent_ms() },
            members: nodes
                .into_iter()
                .map(|(id, n)| Member { node_id: id, grpc_addr: n.addr, voter: voters.contains(&id) })
                .collect(),
        }))
    }
}

/// Writes forwarded by other nodes, read indexes for their linearizable reads, and
/// frontends' reads.
pub struct MetadataRpc {
    meta: Arc<RaftMetadata>,
}

fn meta_status(e: MetaError) -> Status {
    match e {
        MetaError::Unavailable(m) => Status::unavailable(m),
        MetaError::Internal(m) => Status::internal(m),
        MetaError::Full(m) => Status::resource_exhausted(m),
        MetaError::Outdated(m) => Status::failed_precondition(m),
    }
}

#[tonic::async_trait]
impl MetadataService for MetadataRpc {
    async fn apply(&self, req: Request<Payload>) -> Result<Response<ApplyReply>, Status> {
        // Time left before the sender gives up; a write that arrives after that is refused.
        let left = match req.metadata().get(DEADLINE_HEADER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
            None => TIMEOUT,
            Some(deadline) => match deadline.checked_sub(unix_ms()).filter(|ms| *ms > 0) {
                Some(ms) => Duration::from_millis(ms).min(TIMEOUT),
                None => return Err(Status::deadline_exceeded("the forwarded write arrived after its sender gave up")),
            },
        };
        let request: berth_proto::Request = decode(req)?;
        let reply = match self.meta.commit_here(request, left).await.map_err(meta_status)? {
            Reply::Done(outcome) => {
                ApplyReply { outcome: postcard::to_stdvec(&outcome).map_err(|e| Status::internal(e.to_string()))?, not_leader: None }
            }
            Reply::NotLeader(l) => ApplyReply { not_leader: Some(not_leader(l)), ..Default::default() },
        };
        Ok(Response::new(reply))
    }

    async fn read_index(&self, _req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        let reply = match self.meta.read_index_here().await.map_err(meta_status)? {
            Reply::Done(index) => ReadIndexReply { index, not_leader: None },
            Reply::NotLeader(l) => ReadIndexReply { not_leader: Some(not_leader(l)), ..Default::default() },
        };
        Ok(Response::new(reply))
    }

    async fn query(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let q: berth_proto::Query = decode(req)?;
        reply(&self.meta.query(q).await.map_err(meta_status)?)
    }
}

/// Serves every node-to-node service on `listener` until `shutdown` resolves; over mutual
/// TLS when `tls` is given. Every call must carry the cluster `token`.
pub async fn serve(
    raft: Raft,
    state: SharedState,
    meta: Arc<RaftMetadata>,
    geo: crate::geo::service::GeoRpc,
    tls: Option<&MutualTls>,
    token: &ClusterToken,
    space: SpaceGuard,
    contact: LeaderContact,
    limits: crate::config::Limits,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    remove_stale_backups(state.dir());
    // Capped like the HTTP listener; TCP_NODELAY so heartbeats and small replies do not wait
    // on delayed ACKs. Peers that stop answering HTTP/2 pings are dropped (keepalive below).
    let incoming = crate::server::capped_incoming(listener, limits);
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.server())?;
    }
    let check = token.checker();
    builder
        .add_service(InterceptedService::new(
            RaftServiceServer::new(RaftRpc { raft: raft.clone(), space, contact: contact.clone(), state: state.clone() })
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            MetadataServiceServer::new(MetadataRpc { meta: meta.clone() })
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            check.clone(),
        ))
        .add_service(InterceptedService::new(berth_proto::rpc::geo_service_server::GeoServiceServer::new(geo), check.clone()))
        .add_service(InterceptedService::new(ClusterServiceServer::new(ClusterRpc { raft, state, contact, meta }), check))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
