//! Errors of the Raft layer: [`Error`] for opening and administering the
//! group, [`ProposeError`] for writes.

use std::path::PathBuf;

use crate::store::NodeId;

/// Opening storage, starting Raft, or changing the group failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Raft directory could not be created or accessed.
    #[error("I/O error on Raft directory {path}: {source}")]
    Io {
        /// Which directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The redb file could not be opened (corrupt, or held by another process).
    #[error("cannot open Raft database {path}: {source}")]
    OpenDb {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: redb::DatabaseError,
    },
    /// The tables could not be created in a fresh database.
    #[error("cannot initialise Raft database {path}: {source}")]
    InitDb {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: redb::Error,
    },
    /// The redb file could not be read.
    #[error("cannot read Raft database {path}: {source}")]
    ReadDb {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: redb::Error,
    },
    /// The log file is missing beside a database that holds Raft state:
    /// starting with an empty log would forget the vote and the log.
    #[error(
        "the Raft log file {log} is missing, but {db} holds Raft state (its table \
         `{table}` is not empty: a snapshot, or a log or vote of an earlier build); \
         an empty log would forget this manager's vote and acknowledged entries. {remedy}",
        remedy = super::wal::REMEDY
    )]
    LogMissing {
        /// The missing log file.
        log: PathBuf,
        /// The database file.
        db: PathBuf,
        /// A table of the database that is not empty.
        table: String,
    },
    /// The log file could not be opened or replayed.
    #[error(transparent)]
    Wal(super::wal::WalError),
    /// The redb log of the A/B benchmark could not be opened, or the
    /// backend asked for does not match the directory
    /// ([`super::redb_log`]).
    #[error(transparent)]
    LogBackend(super::redb_log::LogFileError),
    /// The log writer thread could not be started.
    #[error("cannot start the Raft log writer thread: {0}")]
    Spawn(std::io::Error),
    /// The stored snapshot could not be read back.
    #[error("cannot restore the Raft snapshot: {0}")]
    Snapshot(Box<openraft::StorageError<NodeId>>),
    /// The Raft configuration is inconsistent (e.g. heartbeat above election timeout).
    #[error("invalid Raft configuration: {0}")]
    Config(Box<openraft::ConfigError>),
    /// Raft stopped (shut down, or a storage failure made it stop).
    #[error("Raft is not running: {0}")]
    Fatal(Box<openraft::error::Fatal<NodeId>>),
    /// `initialize` on a node that is already part of a group.
    #[error("cannot initialise Raft: {0}")]
    Initialize(Box<openraft::error::InitializeError<NodeId, super::RaftNode>>),
    /// A forced recovery found no Raft group in the directory.
    #[error(
        "{} holds no Raft group: this node was never a manager with state, so there is \
         nothing to recover from it",
        dir.display()
    )]
    NotInitialized {
        /// The Raft directory.
        dir: PathBuf,
    },
    /// A forced recovery on a node that is not a voter of its group: as a
    /// learner it may lack entries the voters committed.
    #[error(
        "manager {node} is not a voter of its Raft group (voters: {}), so its state may \
         lack committed changes; recover on one of the voters instead",
        ids(voters)
    )]
    NotVoter {
        /// This node.
        node: NodeId,
        /// The voters of the membership in effect.
        voters: Vec<NodeId>,
    },
    /// A membership change was refused (not leader, change in progress, learner lagging...).
    #[error("membership change refused: {0}")]
    Membership(Box<openraft::error::ClientWriteError<NodeId, super::RaftNode>>),
}

/// `a, b, c` of node IDs, for messages.
fn ids(v: &[NodeId]) -> String {
    let v: Vec<String> = v.iter().map(|id| id.to_string()).collect();
    v.join(", ")
}

// openraft's errors are large; they are boxed so `Result<_, Error>` stays small.
impl From<openraft::StorageError<NodeId>> for Error {
    fn from(e: openraft::StorageError<NodeId>) -> Self {
        Error::Snapshot(Box::new(e))
    }
}

impl From<openraft::ConfigError> for Error {
    fn from(e: openraft::ConfigError) -> Self {
        Error::Config(Box::new(e))
    }
}

impl From<openraft::error::Fatal<NodeId>> for Error {
    fn from(e: openraft::error::Fatal<NodeId>) -> Self {
        Error::Fatal(Box::new(e))
    }
}

impl Error {
    /// Whether `initialize` was refused because this node's log already
    /// holds a group (safe to ignore on restart).
    pub fn is_already_initialized(&self) -> bool {
        matches!(
            self,
            Error::Initialize(e) if matches!(**e, openraft::error::InitializeError::NotAllowed(_))
        )
    }
}

/// A linearizable read could not be served (see [`super::RaftHandle::linearize`]).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No leader confirmed its leadership before the deadline: none was
    /// elected, or this node cannot reach it.
    #[error(
        "no Raft leader to check this call against: quorum lost? {reachable} of {total} \
         managers reachable (a majority of {total} is needed); nothing was read or changed"
    )]
    NoLeader {
        /// Managers (voters) that answered a ping, this one included.
        reachable: usize,
        /// Voters in the current membership.
        total: usize,
    },
    /// The leader answered, but this node did not apply that far in time.
    #[error(
        "this manager is behind the Raft leader (applied up to {}, the call needs {index}); \
         nothing was read or changed: try again in a moment",
        applied.map_or("nothing".to_string(), |a| a.to_string())
    )]
    Behind {
        /// The read index.
        index: u64,
        /// What this node has applied.
        applied: Option<u64>,
    },
    /// This node's Raft stopped.
    #[error("Raft is shut down")]
    Shutdown,
}

/// A proposed command was not (known to be) applied.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No reachable leader before the propose deadline: none was elected,
    /// or the one this node knows of could not be reached or had stepped down.
    #[error(
        "no Raft leader: quorum lost? {reachable} of {total} managers reachable \
         (a majority of {total} is needed)"
    )]
    NoLeader {
        /// Managers (voters) that answered a ping, this one included.
        reachable: usize,
        /// Voters in the current membership.
        total: usize,
    },
    /// The write was submitted on this node but its outcome is unknown
    /// (leadership changed, or the deadline passed while it was in flight).
    /// It may or may not have been applied.
    #[error("outcome of the Raft write is unknown: leadership changed or the deadline passed")]
    Unknown,
    /// The write was forwarded to the leader but the call failed in a way
    /// that leaves its outcome unknown (connection broke mid-call, deadline).
    #[error("outcome of the write forwarded to the Raft leader is unknown: {status}")]
    ForwardUnknown {
        /// The gRPC status of the forward.
        status: tonic::Status,
    },
    /// The write was forwarded to the leader `old`, which had not answered
    /// when this node learned that `new` was elected. It was abandoned
    /// there, not sent again (it may have reached `old` and be committed by
    /// `new`): it may or may not have been applied.
    #[error(
        "outcome of the write forwarded to the Raft leader {old} is unknown: it had not \
         answered when {new} was elected leader; check whether the change was made \
         before retrying it"
    )]
    ForwardAbandoned {
        /// The leader the write was forwarded to.
        old: NodeId,
        /// The leader elected meanwhile.
        new: NodeId,
    },
    /// The leader answered with bytes that are not a command result.
    #[error("malformed answer from the Raft leader: {0}")]
    Decode(#[from] serde_json::Error),
    /// This node's Raft stopped.
    #[error("Raft is shut down")]
    Shutdown,
    /// The command is larger than one log entry may be
    /// ([`crate::limits::MAX_RAFT_ENTRY_BYTES`]); nothing was written.
    #[error(
        "the change is {bytes} bytes as a Raft command, over the limit of {limit} bytes per command"
    )]
    TooLarge {
        /// Its serialized size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}
