//! How much the manager port lets a caller make it hold, and when the
//! caller is checked.
//!
//! tonic reads and decodes a request's whole body before the handler runs,
//! so a check in the handler comes after the buffering. Each service here
//! is wrapped in an interceptor that sees only the headers and the TLS
//! connection's certificate and refuses *before* the body is read; HTTP/2
//! flow control then keeps an unread body to one flow-control window
//! (hyper's default, about 1 MiB per connection). Each service also gets a
//! body limit sized to its need. One exception: `Raft.Propose` needs a
//! manager *now*, which is checked after its body is read; before it, the
//! interceptor has already required a manager certificate of this cluster
//! whose node is a manager or a member of the Raft group.
//!
//! | service    | checked before the body                       | largest body |
//! |------------|-----------------------------------------------|--------------|
//! | Join       | nothing (callers have no certificate yet)     | 64 KiB       |
//! | Control    | a manager now (certificate and store)         | 1 MiB        |
//! | Dispatcher | a member now (its node ID is in the body)     | 4 MiB        |
//! | Raft       | a Raft peer (crate::raft::RaftCall::Peer)     | 64 MiB       |
//!
//! Every connection: at most [`MAX_STREAMS_PER_CONNECTION`] concurrent
//! calls, HTTP/2 and TCP keep-alives so dead peers are noticed, and a
//! deadline on every unary handler ([`REQUEST_TIMEOUT`]; a session stream's
//! deadline covers only its opening, not its life).

use std::time::Duration;

use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Request, Status};
use weft_proto::v1::control_server::ControlServer;
use weft_proto::v1::dispatcher_server::DispatcherServer;
use weft_proto::v1::join_server::JoinServer;

use crate::controlapi::ControlService;
use crate::core::Core;
use crate::dispatcher::DispatcherService;
use crate::join::JoinService;

/// Largest `Join` request: a token, a host name, addresses and a CSR of
/// well under 2 KiB.
pub const JOIN_MAX_BYTES: usize = 64 * 1024;
/// Largest control request: specs with their env, labels and command lines
/// (bounded far lower field by field).
pub const CONTROL_MAX_BYTES: usize = 1024 * 1024;
/// Largest dispatcher request: a status report or a task's log output.
pub const DISPATCHER_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Concurrent calls (HTTP/2 streams) per connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Deadline of a unary call's handler (a Raft write waits for its commit,
/// well inside this).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 ping period, and how long a ping may go unanswered.
const H2_KEEPALIVE: Duration = Duration::from_secs(10);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keep-alive for connections whose peer vanished without a FIN.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// The server with the per-connection limits.
pub fn server_builder() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(H2_KEEPALIVE))
        .http2_keepalive_timeout(Some(H2_KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .timeout(REQUEST_TIMEOUT)
}

/// The join service with its body limit.
pub fn join(svc: JoinService) -> JoinServer<JoinService> {
    JoinServer::new(svc).max_decoding_message_size(JOIN_MAX_BYTES)
}

/// The check run before a body is read.
#[derive(Clone)]
pub struct Check {
    core: Core,
    need: Need,
}

/// What [`Check`] requires of the caller.
#[derive(Debug, Clone, Copy)]
enum Need {
    Manager,
    Member,
}

impl Interceptor for Check {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match self.need {
            Need::Manager => {
                self.core.authorize_manager(&req)?;
                // Tells the handler the check is done (a client cannot set
                // request extensions; only server-side layers can).
                req.extensions_mut().insert(ManagerChecked);
            }
            Need::Member => self.core.authorize_member(&req)?,
        }
        Ok(req)
    }
}

/// Marks a request whose caller [`Check`] found to be a manager now, so the
/// control API's handler does not check it a second time on every call.
#[derive(Debug, Clone, Copy)]
pub struct ManagerChecked;

/// The control API behind the manager check, with its body limit.
pub fn control(
    svc: ControlService,
    core: Core,
) -> InterceptedService<ControlServer<ControlService>, Check> {
    let server = ControlServer::new(svc).max_decoding_message_size(CONTROL_MAX_BYTES);
    InterceptedService::new(
        server,
        Check {
            core,
            need: Need::Manager,
        },
    )
}

/// The dispatcher behind the member check, with its body limit.
pub fn dispatcher(
    svc: DispatcherService,
    core: Core,
) -> InterceptedService<DispatcherServer<DispatcherService>, Check> {
    let server = DispatcherServer::new(svc).max_decoding_message_size(DISPATCHER_MAX_BYTES);
    InterceptedService::new(
        server,
        Check {
            core,
            need: Need::Member,
        },
    )
}
