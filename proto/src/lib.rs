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

// Written by hand (build.rs skips it): the password is never printed.
impl std::fmt::Debug for v1::RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

pub mod config_delta;
pub mod credential;
pub mod identity;
pub mod isolation;
pub mod seal;
pub mod signal;
pub mod tls;
pub mod token;

/// Largest `SessionMessage` (and so `NodeConfig`) a node decodes on its
/// dispatcher session, set explicitly on the node's client so the manager
/// can keep every config it sends below it. A larger message would fail
/// to decode on every reconnect and cut the node off for good. Twice
/// tonic's default since the cluster holds 5,000 nodes (issue #16): every
/// node is a VXLAN source, WireGuard peer and ingress endpoint in the
/// others' configs, and a service at every per-object limit must still
/// fit ten replicas on one node. Nodes of versions before that decode 4 MiB.
pub const SESSION_RECEIVE_LIMIT_BYTES: usize = 8 * 1024 * 1024;

/// This build's version, as nodes report it (`node ls`, `weft version`,
/// the data directory's stamp, the managers' version gate): `WEFT_VERSION`
/// at build time when set (a packager's or a test's stamp, e.g.
/// `0.2.0~prev`), else the crate's.
pub const VERSION: &str = match option_env!("WEFT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
