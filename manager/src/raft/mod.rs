//! The Raft layer of the manager: the replicated log, vote and snapshots on
//! disk (redb), the state machine wrapped around [`crate::store::State`], the
//! gRPC transport between managers and a propose API that forwards writes to
//! the leader.
//!
//! ```text
//!  propose(Command) ──▶ Batcher ──client_write(Batch)──▶ openraft::Raft ──▶ LogStore (redb, fsync)
//!        │ not leader                                         │ commit
//!        └──gRPC Propose──▶ leader's RaftGrpc ──▶ Batcher     ▼
//!                                                   StateMachine: State::apply, watch(index)
//!                                                             │
//!                                         StoreHandle::read() / subscribe() (rest of the manager)
//! ```
//!
//! Why batches: openraft 0.9 appends and fsyncs one client write at a time on
//! the leader, and an fsync costs milliseconds. Commands proposed concurrently
//! are therefore grouped into one log entry ([`Batch`]) so one fsync covers
//! all of them; the result of each command is returned to its own proposer.
//!
//! Must not: know about TLS or certificates (the caller passes a
//! [`ChannelFactory`] and an [`Authorize`] hook).

mod error;
mod grpc;
mod handle;
mod log_store;
mod network;
mod state_machine;

#[cfg(test)]
mod tests;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::store::{Command, CommandResult, NodeId};

pub use error::{Error, ProposeError};
pub use grpc::{Authorize, MAX_MESSAGE_BYTES, PingRequest, PingResponse, RaftGrpc};
pub use handle::{RaftHandle, RaftMetricsView, RaftSettings};
pub use log_store::{DB_FILE, LogStore};
pub use network::{ChannelFactory, Network, NetworkFactory, plaintext_channel_factory};
pub use state_machine::{StateMachine, StoreHandle};

openraft::declare_raft_types!(
    /// The openraft type configuration of weft's manager group.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = NodeId,
        Node = RaftNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What the Raft group knows about a member: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    /// `host:port` of the manager's gRPC listener (no scheme).
    pub addr: String,
}

impl std::fmt::Display for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// The application data of one log entry: commands applied in order.
///
/// Proposers never build one themselves; [`RaftHandle::propose`] groups
/// concurrent commands into batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

/// The result of applying a [`Batch`]: one result per command, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchResult(pub Vec<CommandResult>);

/// openraft's storage test suite builds node IDs from small integers.
impl From<u64> for NodeId {
    fn from(v: u64) -> Self {
        NodeId(v)
    }
}

/// Shorthand for openraft's typed errors over our node types.
pub(crate) type StorageError = openraft::StorageError<NodeId>;
