//! Client side of `MetadataService`: one call to one node, with its answer decoded. Retrying
//! and choosing whom to ask belong to the callers (`voter`, `frontend`).

use std::time::Duration;

use berth_api::MetaError;
use berth_proto::rpc::metadata_service_client::MetadataServiceClient;
use berth_proto::rpc::{NotLeader, Payload, ReadIndexRequest};
use berth_proto::{Answer, Outcome, Query, Request};
use serde::de::DeserializeOwned;


use crate::peers::{PeerChannel, Peers};

/// How long one forwarded call may take before the client gets 503.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long one try at one node may take. A leader that hangs (frozen, its disk stuck) is
/// given up on after this, and the caller tries again where the cluster now points, well
/// within `TIMEOUT`: the others elect a new leader in about a second.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(2);

/// A leader: node id and gRPC address.
pub type Leader = (u64, String);

/// What a node said to a call only the leader answers.
#[derive(Debug, Clone)]
pub enum Reply<T> {
    /// It leads, and this is the answer.
    Done(T),
    /// It does not lead; the leader it knows of, if any.
    NotLeader(Option<Leader>),
}

/// The leader named by a `NotLeader` message.
pub fn hint(n: NotLeader) -> Option<Leader> {
    (n.leader_id != 0 && !n.leader_addr.is_empty()).then_some((n.leader_id, n.leader_addr))
}

/// The message that says "not the leader; try this one".
pub fn not_leader(leader: Option<Leader>) -> NotLeader {
    let (leader_id, leader_addr) = leader.unwrap_or_default();
    NotLeader { leader_id, leader_addr }
}

fn client(peers: &Peers, addr: &str) -> Result<MetadataServiceClient<PeerChannel>, MetaError> {
    let ch = peers.channel(addr).map_err(MetaError::Unavailable)?;
    Ok(MetadataServiceClient::new(ch).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(TRY_TIMEOUT);
    r
}

/// What a sender says of a write it did not send because its time had run out.
const TIME_RAN_OUT: &str = "the write's time ran out";

/// What `within` says of a call that got no answer in time.
const NO_ANSWER: &str = "no answer within";

/// Whether a failed try may still land. Only two failures say for sure that it will not: no
/// connection could be made (nothing was sent), or the leader refused it before proposing
/// (it has lost its quorum, or the write's time had run out). Any other failure (no answer in
/// time, a connection reset mid-call) may leave the request on its way: bytes in a socket
/// reach the leader once a partition heals or a frozen process wakes up.
pub fn in_doubt(e: &MetaError) -> bool {
    match e {
        MetaError::Unavailable(m) => !["tcp connect error", "error trying to connect", "no quorum:", TIME_RAN_OUT].iter().any(|s| m.contains(s)),
        MetaError::Full(_) | MetaError::Outdated(_) => false,
        _ => true,
    }
}

/// Waits until the write that gives up at `give_up` (Unix ms) can no longer land: after that
/// time the leader refuses it. A sender with a try in doubt waits for this before it answers
/// 503, so that a client told 503 never sees the write applied afterwards.
pub async fn outlive(give_up: u64) {
    let left = give_up.saturating_sub(unix_ms());
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left + 50)).await;
    }
}

/// Awaits one call for at most `limit`. tonic only sends the deadline to the server; a server
/// that hangs (a frozen process whose socket stays open) would hold the call until HTTP/2
/// keepalive gives up, so the client enforces it too.
async fn within<T>(
    addr: &str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, MetaError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => Ok(r.map_err(|s| status(addr, s))?.into_inner()),
        Err(_) => Err(MetaError::Unavailable(format!("{addr}: {NO_ANSWER} {limit:?}"))),
    }
}

fn status(addr: &str, s: tonic::Status) -> MetaError {
    match s.code() {
        tonic::Code::ResourceExhausted => MetaError::Full(format!("{addr}: {}", s.message())),
        // A leader of this build refusing a command some member does not read yet, or one of
        // an older build that cannot decode the command at all.
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => MetaError::Outdated(format!("{addr}: {}", s.message())),
        _ => MetaError::Unavailable(format!("{addr}: {}", s.message())),
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MetaError> {
    postcard::from_bytes(bytes).map_err(|e| MetaError::Internal(format!("undecodable reply: {e}")))
}

/// gRPC metadata on a forwarded write: the wall-clock time (Unix milliseconds) after which the
/// sender has given up on it (see [`give_up_at`]). A write held up in the network (a partition, retransmitted once
/// it heals) must not be applied after its client was told 503 and may have moved on: the
/// leader refuses it. Nodes' clocks are assumed to agree to well within `TIMEOUT`.
pub const DEADLINE_HEADER: &str = "berth-deadline-unix-ms";

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When a write that starts now is given up (Unix ms): `TIMEOUT` from now. Every try at
/// forwarding it carries this one deadline, so no try outlives the client's answer.
pub fn give_up_at() -> u64 {
    unix_ms() + TIMEOUT.as_millis() as u64
}

/// Asks the node at `addr` to commit `req`, which its sender gives up at `give_up` (Unix ms).
pub async fn apply(peers: &Peers, addr: &str, req: &Request, give_up: u64) -> Result<Reply<Outcome>, MetaError> {
    let left = give_up.saturating_sub(unix_ms());
    if left == 0 {
        return Err(MetaError::Unavailable(format!("{TIME_RAN_OUT} before it reached the leader")));
    }
    let data = postcard::to_stdvec(req).map_err(|e| MetaError::Internal(e.to_string()))?;
    let mut call = tonic::Request::new(Payload { data });
    call.set_timeout(Duration::from_millis(left).min(TRY_TIMEOUT));
    call.metadata_mut().insert(DEADLINE_HEADER, give_up.to_string().parse().expect("digits are valid metadata"));
    let limit = Duration::from_millis(left).min(TRY_TIMEOUT);
    let r = within(addr, limit, client(peers, addr)?.apply(call)).await?;
    match r.not_leader {
        Some(n) => Ok(Reply::NotLeader(hint(n))),
        None => Ok(Reply::Done(decode(&r.outcome)?)),
    }
}

/// Asks the node at `addr` for the index a linearizable read must wait for.
pub async fn read_index(peers: &Peers, addr: &str) -> Result<Reply<u64>, MetaError> {
    let r = within(addr, TRY_TIMEOUT, client(peers, addr)?.read_index(request(ReadIndexRequest {}))).await?;
    match r.not_leader {
        Some(n) => Ok(Reply::NotLeader(hint(n))),
        None => Ok(Reply::Done(r.index)),
    }
}

/// Asks the voter at `addr` for a linearizable read.
pub async fn query(peers: &Peers, addr: &str, q: &Query) -> Result<Answer, MetaError> {
    let data = postcard::to_stdvec(q).map_err(|e| MetaError::Internal(e.to_string()))?;
    let r = within(addr, TRY_TIMEOUT, client(peers, addr)?.query(request(Payload { data }))).await?;
    decode(&r.data)
}

/// Exponential back-off between tries: 50, 100, 200, 400, 800 ms.
pub async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// During a rolling upgrade a leader of an older build cannot decode a newer command and
    /// answers InvalidArgument; one of this build refuses it with FailedPrecondition. Either
    /// way the sender learns that nothing was applied and that the older form will do.
    #[test]
    fn a_leader_that_cannot_take_a_command_says_so_for_certain() {
        for s in [tonic::Status::invalid_argument("undecodable payload: Found an enum discriminant that was not in the allowed range"), tonic::Status::failed_precondition("a member reads no log protocol 3 yet")] {
            let e = status("127.0.0.1:1", s);
            assert!(matches!(e, MetaError::Outdated(_)), "{e:?}");
            assert!(!in_doubt(&e));
        }
        let e = status("127.0.0.1:1", tonic::Status::resource_exhausted("full"));
        assert!(matches!(e, MetaError::Full(_)));
        assert!(in_doubt(&status("127.0.0.1:1", tonic::Status::unavailable("connection reset"))));
    }

    /// What an old leader really answers for a command its build does not know: postcard
    /// fails on the variant index, which is how the server's `decode` turns into
    /// InvalidArgument.
    #[test]
    fn a_newer_command_does_not_decode_as_an_older_enum() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        enum Older {
            InitHttpSecret(Vec<u8>),
            LinkBlob,
            UnlinkBlob,
            PutManifest,
            DeleteManifest,
            DeleteTag,
            Identity,
        }
        let cmd = berth_proto::Command::PutStoredManifest {
            repo: berth_proto::RepoName::parse("a/b").unwrap(),
            digest: berth_proto::Digest::sha256_of(b"x"),
            manifest: berth_proto::ManifestRecord {
                media_type: String::new(),
                body: vec![],
                blobs: vec![],
                manifests: vec![],
                subject: None,
                artifact_type: None,
                annotations: Default::default(),
                created_ms: 0,
            },
            tag: None,
        };
        let bytes = postcard::to_stdvec(&cmd).unwrap();
        assert!(postcard::from_bytes::<Older>(&bytes).is_err());
    }
}
