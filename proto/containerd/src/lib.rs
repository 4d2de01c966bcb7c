//! weft-containerd-api: containerd's gRPC API, as a client.
//!
//! Owns: containerd's API protos (vendored unchanged under
//! `vendor/containerd-api`, pinned to one tag; see its README), the tonic
//! client code generated from them, the connection to a containerd socket,
//! the per-call metadata containerd reads (`containerd-namespace`,
//! `containerd-lease`), and typed errors for what goes wrong there.
//!
//! Must not: know weft's cluster model or its wire format (no weft-proto),
//! build OCI specs, or decide anything about tasks: that is the worker's.
//! Only the worker may depend on this crate; `deploy/check-deps.sh` forbids
//! weft-manager and weft-proto from doing so, so the manager never compiles
//! containerd's API.
//!
//! ```text
//!   worker ──► Client ──► InterceptedService<Channel, CallMetadata> ──► unix socket ──► containerd
//!              (typed calls)   (adds containerd-namespace [+ lease])      (tonic/h2)
//! ```
//!
//! The generated packages keep containerd's names: `containerd::services::tasks::v1`,
//! `containerd::types`, `containerd::v1::types` (task status), `containerd::runc::v1`
//! (runc options), `containerd::events`. Only fields a containerd 1.6 daemon
//! knows may be relied on (proto3 silently drops the others).

mod client;
mod error;
mod metadata;
mod version;

pub use client::{ApiChannel, Client, DEFAULT_NAMESPACE};
pub use error::Error;
pub use metadata::{CallMetadata, LEASE_HEADER, NAMESPACE_HEADER, validate_identifier};
pub use version::{DaemonVersion, MIN_SUPPORTED};

/// Generated code, one module per protobuf package (prost nests them so that
/// references between packages resolve as `super::…` paths).
#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/containerd.rs"));
}

pub use generated::containerd;
