//! weft-worker: the agent every node runs.
//!
//! Owns: the session with a manager (stream, heartbeats, failover between
//! managers, certificate renewal), the task runtime and the local reconcile
//! loop that drives `weft_overlay::Dataplane`.
//!
//! Must not: hold cluster-wide state or speak Raft; it only ever sees its own
//! node's slice.

/// This build's version, as nodes report it (`node ls`, `weft version`,
/// the data directory's stamp): `WEFT_VERSION` at build time when set (a
/// packager's or a test's stamp, e.g. `0.1.0~prev`), else the crate's.
pub const VERSION: &str = match option_env!("WEFT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

pub mod agent;
pub mod capacity;
pub mod doctor;
pub mod error;
pub mod health;
pub mod image;
pub mod image_fetch;
pub mod image_inventory;
pub mod join;
pub mod logs;
pub mod metrics;
pub mod node_files;
pub mod reconcile;
pub mod renewal;
pub mod runtime;
pub mod sandboxes;
pub mod volumes;
