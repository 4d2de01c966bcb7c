//! The dispatcher: the manager end of every node's session.
//!
//! Runs on the leader. Holds each node's session stream, records heartbeats
//! (and from them liveness), renews certificates and handles `leave`.

pub mod liveness;
