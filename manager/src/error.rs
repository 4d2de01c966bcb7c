//! The manager's error type and its mapping to gRPC status codes.

use tonic::Status;

use crate::quorum::QuorumError;
use crate::store::{ResolveError, StoreError};

/// What can go wrong in a manager operation. Every variant's message tells
/// the operator what was wrong and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input failed validation at the API edge.
    #[error("{0}")]
    InvalidInput(String),
    /// The request would take the cluster over a cluster-wide limit (see
    /// [`crate::limits`]).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The state machine rejected the command.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A node name did not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The change would cost the cluster its quorum.
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    /// The object exists already, made otherwise.
    #[error("{0}")]
    AlreadyExists(String),
    /// The operation needs a precondition the cluster does not meet.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Raft could not commit the change.
    #[error(transparent)]
    Raft(#[from] crate::raft::ProposeError),
    /// A read could not be made linearizable (no leader, or this manager
    /// is behind it): it is refused rather than answered from a store that
    /// may be stale.
    #[error(transparent)]
    Read(#[from] crate::raft::ReadError),
    /// The join token was wrong.
    #[error("{0}")]
    BadToken(String),
    /// Certificate handling failed.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// A rejoin was refused (see [`crate::rejoin`]).
    #[error(transparent)]
    Rejoin(#[from] crate::rejoin::RejoinRefused),
    /// Autolock is on and this manager does not hold the unlock key (yet):
    /// it learns it from another manager, or after `weft unlock`.
    #[error(
        "this manager does not hold the cluster's unlock key yet (autolock is on); it learns it \
         from another manager within seconds, or give it with `weft unlock`"
    )]
    NoUnlockKey,
    /// The store has no cluster yet (this manager is still catching up).
    #[error("this manager has not caught up with the cluster yet; try again in a moment")]
    NotReady,
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::InvalidInput(_) => Status::invalid_argument(msg),
            Error::ResourceExhausted(_)
            | Error::Raft(crate::raft::ProposeError::TooLarge { .. }) => {
                Status::resource_exhausted(msg)
            }
            Error::Store(
                StoreError::NodeNotFound(_)
                | StoreError::NetworkNotFound(_)
                | StoreError::TaskNotFound(_)
                | StoreError::ServiceNotFound(_)
                | StoreError::NotConnected { .. },
            )
            | Error::Resolve(ResolveError::NotFound(_)) => Status::not_found(msg),
            Error::Store(
                StoreError::DuplicateNode(_)
                | StoreError::ServiceExists(_)
                | StoreError::NetworkExists(_)
                | StoreError::TaskExists(_)
                | StoreError::AlreadyConnected { .. }
                | StoreError::NameTaken { .. },
            )
            | Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::Store(_) | Error::Quorum(_) | Error::FailedPrecondition(_) => {
                Status::failed_precondition(msg)
            }
            Error::Resolve(ResolveError::Ambiguous(_)) => Status::invalid_argument(msg),
            Error::Raft(_) | Error::Read(_) | Error::NotReady | Error::NoUnlockKey => {
                Status::unavailable(msg)
            }
            Error::BadToken(_) => Status::permission_denied(msg),
            Error::Ca(_) => Status::internal(msg),
            Error::Rejoin(r) => rejoin_status(&r, msg),
        }
    }
}

/// Malformed input is INVALID_ARGUMENT, an unknown node NOT_FOUND, every
/// other refusal (a proof that fails, another cluster, a removed node, the
/// wrong token) PERMISSION_DENIED.
fn rejoin_status(r: &crate::rejoin::RejoinRefused, msg: String) -> Status {
    use crate::rejoin::RejoinRefused as R;
    use weft_proto::tls::RejoinError as P;
    match r {
        R::Incomplete
        | R::BadNodeId(_)
        | R::Proof(P::TooLarge { .. } | P::NotACertificate(_) | P::NotANode(_)) => {
            Status::invalid_argument(msg)
        }
        R::Proof(P::Tls(_)) => Status::internal(msg),
        R::Unknown(_) => Status::not_found(msg),
        R::Proof(P::NotThisCluster(_) | P::BadProof(_))
        | R::OtherCluster { .. }
        | R::Removed(_)
        | R::RoleMismatch { .. } => Status::permission_denied(msg),
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
