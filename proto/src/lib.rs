//! weft-proto: the wire format.
//!
//! Owns: the `.proto` files and the tonic/prost code generated from them,
//! conversions between wire and domain types, and the wire-level identity of
//! a node — join tokens, certificate subjects, TLS configuration for both
//! ends of a connection, and the unix-socket transport of the local API.
//!
//! Must not: hold cluster logic, touch the kernel, or know about Raft.

#![allow(clippy::doc_lazy_continuation)]

/// Generated protobuf messages and tonic clients/servers (package `weft.v1`).
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("weft.v1");
}

pub mod identity;
pub mod tls;
pub mod token;
