//! The server side of the Raft transport: the `weft.v1.Raft` gRPC service.
//!
//! Who may call: other managers of this cluster only. The check itself is
//! the daemon's [`Authorize`] hook: [`RaftCall::Peer`] runs on every RPC
//! *before its body is read* (a tonic interceptor sees only the headers and
//! the connection's certificate), so an unauthenticated client cannot make
//! a manager buffer up to [`MAX_MESSAGE_BYTES`]; `Propose`, which writes on
//! the caller's behalf, is checked again as [`RaftCall::Propose`], and
//! `ReadIndex`, whose answer lets the caller serve the cluster's state, as
//! [`RaftCall::ReadIndex`].

use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use weft_proto::v1::RaftPayload;
use weft_proto::v1::raft_server::{Raft, RaftServer};

use super::TypeConfig;
use super::handle::{LocalError, RaftHandle};
use super::read::RoundError;
use crate::store::{Command, NodeId};

/// Largest Raft message accepted or sent (log batches and snapshot chunks).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Which kind of Raft call is being authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftCall {
    /// Replication, votes, snapshots, pings: any peer of the Raft group.
    Peer,
    /// A command forwarded for the leader to write: a manager now.
    Propose,
    /// A follower asking the leader for a read index: a manager now (what
    /// it reads next is the cluster's state).
    ReadIndex,
}

/// Decides whether a Raft RPC may proceed (e.g. "the peer certificate is a
/// manager's of this cluster"), from the request's headers and connection
/// only. Returning an error rejects the call with it.
pub type Authorize = Arc<dyn Fn(&Request<()>, RaftCall) -> Result<(), Status> + Send + Sync>;

/// The Raft server as served: every call passes the [`RaftCall::Peer`]
/// check before its body is decoded.
pub type RaftServerWithAuth =
    tonic::service::interceptor::InterceptedService<RaftServer<RaftGrpc>, PeerCheck>;

/// The interceptor running [`RaftCall::Peer`] on every Raft call.
#[derive(Clone)]
pub struct PeerCheck(Authorize);

impl tonic::service::Interceptor for PeerCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        (self.0)(&req, RaftCall::Peer).map(|()| req)
    }
}

/// The body of a `Ping` request (an empty payload is accepted too).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PingRequest {
    /// The asking node, if it wants to say.
    pub from: Option<NodeId>,
}

/// The answer to `Ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingResponse {
    /// The answering node's ID.
    pub id: NodeId,
    /// Whether its Raft instance is running.
    pub running: bool,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its current term.
    pub term: u64,
}

/// The `weft.v1.Raft` service of one manager.
pub struct RaftGrpc {
    handle: RaftHandle,
    authorize: Authorize,
}

impl RaftGrpc {
    /// Serves `handle`'s Raft instance, checking every call with `authorize`.
    pub fn new(handle: RaftHandle, authorize: Authorize) -> Self {
        RaftGrpc { handle, authorize }
    }

    /// The tonic service with message limits large enough for log batches,
    /// behind the peer check.
    pub fn into_server(self) -> RaftServerWithAuth {
        let check = PeerCheck(self.authorize.clone());
        let server = RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tonic::service::interceptor::InterceptedService::new(server, check)
    }

    /// The payload of `request` once its caller passed the check for
    /// `call` too (beyond the interceptor's peer check).
    fn checked(
        &self,
        request: Request<RaftPayload>,
        call: RaftCall,
    ) -> Result<RaftPayload, Status> {
        let (meta, ext, payload) = request.into_parts();
        (self.authorize)(&Request::from_parts(meta, ext, ()), call)?;
        Ok(payload)
    }

    /// The payload of `req`, decoded (its caller passed the peer check in
    /// the interceptor already).
    fn decode<T: DeserializeOwned>(&self, req: Request<RaftPayload>) -> Result<T, Status> {
        serde_json::from_slice(&req.into_inner().json)
            .map_err(|e| Status::invalid_argument(format!("malformed Raft payload: {e}")))
    }
}

fn reply<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(v)
        .map_err(|e| Status::internal(format!("cannot encode Raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { json }))
}

#[tonic::async_trait]
impl Raft for RaftGrpc {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = self.decode(request)?;
        let res = self.handle.raft().append_entries(req).await;
        // Anything but a higher vote: the sender leads this node's term.
        if matches!(&res, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
        {
            self.handle.heard_from_leader();
        }
        reply(&res)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: VoteRequest<NodeId> = self.decode(request)?;
        reply(&self.handle.raft().vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = self.decode(request)?;
        reply(&self.handle.raft().install_snapshot(req).await)
    }

    /// A follower forwards a command; only the leader accepts it. Not being
    /// the leader is FAILED_PRECONDITION (nothing was written, the caller
    /// may retry elsewhere); an unknown outcome is ABORTED.
    async fn propose(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let payload = self.checked(request, RaftCall::Propose)?;
        // The proposer checked this before sending; a leader does not trust
        // it, and does not decode an oversized command.
        let bytes = payload.json.len();
        super::handle::check_size(bytes).map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let cmd: Command = self.decode(Request::new(payload))?;
        match self.handle.submit_local(cmd, bytes, None).await {
            Ok(result) => reply(&result),
            Err(LocalError::NotLeader { leader }) => {
                Err(Status::failed_precondition(match leader {
                    Some(l) => format!("not the Raft leader; the leader is {l}"),
                    None => "not the Raft leader; no leader known".to_string(),
                }))
            }
            Err(LocalError::Shutdown) => Err(Status::unavailable("Raft is shut down")),
            Err(LocalError::Unknown) => Err(Status::aborted(
                "the write was submitted but its outcome is unknown (leadership changed)",
            )),
        }
    }

    /// A follower asks for a read index; only the leader answers one.
    /// Not being the leader is FAILED_PRECONDITION, a leader that cannot
    /// confirm it still leads is UNAVAILABLE.
    async fn read_index(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let payload = self.checked(request, RaftCall::ReadIndex)?;
        let _: super::ReadIndexRequest = self.decode(Request::new(payload))?;
        match self.handle.leader_round().await {
            Ok(index) => reply(&super::ReadIndexResponse { index }),
            Err(RoundError::NotLeader) => Err(Status::failed_precondition("not the Raft leader")),
            Err(RoundError::Unreachable(why)) => Err(Status::unavailable(format!(
                "the Raft leader could not confirm it leads: {why}"
            ))),
            Err(RoundError::Shutdown) => Err(Status::unavailable("Raft is shut down")),
        }
    }

    async fn ping(&self, _request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let m = self.handle.raft().metrics().borrow().clone();
        reply(&PingResponse {
            id: m.id,
            running: m.running_state.is_ok(),
            leader: m.current_leader,
            term: m.current_term,
        })
    }
}
