//! The client side of the Raft transport: openraft's `RaftNetworkFactory` /
//! `RaftNetwork` (v1) over the `weft.v1.Raft` gRPC service.
//!
//! Payloads are serde_json of openraft's request types; the server answers
//! serde_json of `Result<Response, RaftError>`. Channels come from a
//! caller-supplied [`ChannelFactory`] (TLS lives elsewhere) and are cached
//! per address; tonic reconnects a cached channel by itself.
//!
//! Error mapping, which drives openraft's backoff:
//! connection refused / reset / no route (`Unavailable`, transport errors)
//! → `Unreachable` (openraft backs off); deadline → `Timeout`; anything else
//! from the transport → `Network`; an error the remote Raft returned →
//! `RemoteError`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use weft_proto::v1::RaftPayload;
use weft_proto::v1::raft_client::RaftClient;

use super::grpc::MAX_MESSAGE_BYTES;
use super::log_store::LogShared;
use super::{RaftNode, TypeConfig};
use crate::store::NodeId;
use weft_proto::tls::TlsError;

/// Builds a (lazy) channel to a manager's `host:port`. The daemon supplies
/// one with its mTLS client config; tests use [`plaintext_channel_factory`].
pub type ChannelFactory = Arc<dyn Fn(&str) -> Result<Channel, TlsError> + Send + Sync>;

/// A factory of plaintext `http://` channels, for tests.
pub fn plaintext_channel_factory() -> ChannelFactory {
    Arc::new(|addr: &str| {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(
            |source| TlsError::BadAddress {
                addr: addr.to_owned(),
                source,
            },
        )?;
        Ok(endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy())
    })
}

/// Raft gRPC clients cached by address, shared by replication streams and
/// by write forwarding.
#[derive(Clone)]
pub(super) struct Clients {
    factory: ChannelFactory,
    cache: Arc<Mutex<HashMap<String, RaftClient<Channel>>>>,
}

impl Clients {
    pub(super) fn new(factory: ChannelFactory) -> Self {
        Clients {
            factory,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Forgets every cached client: the next call builds its channel anew
    /// from the factory (after a certificate renewal, so peers see the new
    /// certificate instead of the old one until it expires).
    pub(super) fn reset(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The cached client for `addr`, building the channel on first use.
    pub(super) fn get(&self, addr: &str) -> Result<RaftClient<Channel>, TlsError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(addr) {
            return Ok(c.clone());
        }
        let client = RaftClient::new((self.factory)(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        cache.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

/// openraft's network factory: one [`Network`] per replication target.
pub struct NetworkFactory {
    id: NodeId,
    clients: Clients,
    log: Arc<LogShared>,
}

impl NetworkFactory {
    /// `log` is this node's log store, whose durable progress bounds the
    /// commit index sent to followers.
    pub(super) fn new(id: NodeId, clients: Clients, log: Arc<LogShared>) -> Self {
        NetworkFactory { id, clients, log }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> Network {
        Network {
            id: self.id,
            target,
            node: node.clone(),
            clients: self.clients.clone(),
            log: self.log.clone(),
        }
    }
}

/// The connection to one peer, as openraft sees it.
pub struct Network {
    id: NodeId,
    target: NodeId,
    node: RaftNode,
    clients: Clients,
    log: Arc<LogShared>,
}

/// Which RPC to call.
#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Rpc {
    fn kind(self) -> RPCTypes {
        match self {
            Rpc::Append => RPCTypes::AppendEntries,
            Rpc::Vote => RPCTypes::Vote,
            Rpc::Snapshot => RPCTypes::InstallSnapshot,
        }
    }
}

/// Whether a status means "could not talk to the peer at all".
pub(super) fn is_unreachable(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable => true,
        // tonic reports broken connections as Unknown with a transport error source.
        tonic::Code::Unknown | tonic::Code::Cancelled => {
            let msg = status.message();
            msg.contains("transport") || msg.contains("connect") || msg.contains("broken pipe")
        }
        _ => false,
    }
}

impl Network {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, RaftNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .clients
            .get(&self.node.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(ttl);
        let fut = async {
            match rpc {
                Rpc::Append => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::Snapshot => client.install_snapshot(request).await,
            }
        };
        let timeout = || {
            RPCError::Timeout(Timeout {
                action: rpc.kind(),
                id: self.id,
                target: self.target,
                timeout: ttl,
            })
        };
        let resp = match tokio::time::timeout(ttl, fut).await {
            Err(_) => return Err(timeout()),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(timeout());
            }
            Ok(Err(status)) if is_unreachable(&status) => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(r)) => r.into_inner(),
        };
        let res: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&resp.json)
            .map_err(|e| RPCError::Network(NetworkError::from(AnyError::new(&e))))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        // openraft counts the leader's own copy of an entry before it is on
        // disk (see `log_store`); followers must not apply what is not yet
        // durable on the leader, so they learn at most its durable point.
        if let Some(committed) = rpc.leader_commit
            && let Some(clamped) = self.log.clamp_commit(committed)
        {
            rpc.leader_commit = clamped;
        }
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, RaftNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
