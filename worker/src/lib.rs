//! weft-worker: the agent every node runs.
//!
//! Owns: the session with a manager (stream, heartbeats, failover between
//! managers, certificate renewal), the task runtime and the local reconcile
//! loop that drives `weft_overlay::Dataplane`.
//!
//! Must not: hold cluster-wide state or speak Raft; it only ever sees its own
//! node's slice.

pub use weft_proto::VERSION;

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
