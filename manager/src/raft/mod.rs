//! The Raft layer of the manager: the replicated log and vote on disk (an
//! append-only log file, [`WAL_FILE`]), snapshots in redb, the state machine
//! wrapped around [`crate::store::State`], the gRPC transport between
//! managers and a propose API that forwards writes to the leader.
//!
//! ```text
//!  propose(Command) ──▶ Batcher ──client_write(Batch)──▶ openraft::Raft ──▶ LogStore (log file, fsync)
//!        │ not leader                                         │ commit
//!        └──gRPC Propose──▶ leader's RaftGrpc ──▶ Batcher     ▼
//!                                                   StateMachine: State::apply, watch(index)
//!                                                             │
//!                                         StoreHandle::read() / subscribe() (rest of the manager)
//! ```
//!
//! Why batches: openraft 0.9 makes every client write its own log entry, and
//! each entry costs a pass through the Raft core, a replication round trip
//! with an fsync on the followers, and an apply. Commands proposed
//! concurrently are therefore grouped into one log entry ([`Batch`]) so one
//! round covers all of them; the result of each command is returned to its
//! own proposer.
//!
//! Recovery from the loss of a majority ([`force_single_voter`], used by
//! `weft init --force-new-cluster`) rewrites the stopped storage so that one
//! manager is the only voter; see `recover` for how openraft takes that.
//!
//! Must not: know about TLS or certificates (the caller passes a
//! [`ChannelFactory`] and an [`Authorize`] hook).

pub mod doctor;
mod error;
mod grpc;
mod handle;
mod log_store;
mod network;
mod read;
mod recover;
mod redb_log;
mod state_machine;
mod wal;
pub mod wal_failpoint;

#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::{Command, CommandResult, NodeId};

pub use error::{Error, ProposeError, ReadError};
pub use grpc::{
    Authorize, MAX_MESSAGE_BYTES, PingRequest, PingResponse, RaftCall, RaftGrpc, RaftServerWithAuth,
};
pub use handle::{RaftHandle, RaftMetricsView, RaftSettings};
pub use log_store::{DB_FILE, LogStore};
pub use network::{ChannelFactory, Network, NetworkFactory, plaintext_channel_factory};
pub use read::{ReadIndexRequest, ReadIndexResponse};
pub use recover::{ForcedMembership, force_single_voter, voters_on_disk};
pub use redb_log::{BACKEND_ENV, Backend, LogFileError, REDB_LOG_FILE};
pub use state_machine::{StateMachine, StoreHandle};
pub use wal::{WAL_FILE, WalError};

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

/// The application data of one log entry: commands applied in order, and
/// when the leader's batcher made the entry.
///
/// Proposers never build one themselves; [`RaftHandle::propose`] groups
/// concurrent commands into batches. The commands sit behind an `Arc`
/// because openraft clones every entry several times (log copy, each
/// replication stream, apply). Encoded as `{"time_ms":…,"commands":[…]}`;
/// entries written before the time was recorded are the plain command list
/// and read with `time_ms` 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// The commands, applied in order.
    pub commands: Arc<Vec<Command>>,
    /// The leader's clock when it made the entry, unix ms (0: unknown). The
    /// time of the entry's events (`weft events`), the same on every
    /// manager and after every restart.
    pub time_ms: u64,
}

impl Batch {
    /// A batch of `commands`, made now.
    pub fn new(commands: Vec<Command>) -> Self {
        Batch::at(commands, crate::core::now_ms())
    }

    /// A batch of `commands` made at `time_ms`.
    pub fn at(commands: Vec<Command>, time_ms: u64) -> Self {
        Batch {
            commands: Arc::new(commands),
            time_ms,
        }
    }
}

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Batch", 2)?;
        st.serialize_field("time_ms", &self.time_ms)?;
        st.serialize_field("commands", self.commands.as_slice())?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BatchVisitor)
    }
}

/// Reads both encodings of a [`Batch`] without buffering the entry.
struct BatchVisitor;

impl<'de> serde::de::Visitor<'de> for BatchVisitor {
    type Value = Batch;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a batch: {time_ms, commands} or a list of commands")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        let mut commands = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(c) = seq.next_element()? {
            commands.push(c);
        }
        Ok(Batch::at(commands, 0))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Batch, A::Error> {
        let (mut time_ms, mut commands) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "time_ms" => time_ms = Some(map.next_value()?),
                "commands" => commands = Some(map.next_value()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let commands = commands.ok_or_else(|| serde::de::Error::missing_field("commands"))?;
        Ok(Batch::at(commands, time_ms.unwrap_or(0)))
    }
}

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
