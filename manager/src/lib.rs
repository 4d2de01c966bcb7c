//! weft-manager: the cluster's brain.
//!
//! Owns: the Raft-replicated store (state machine, deterministic allocation),
//! the Raft log on disk, the cluster CA, the reconcilers that run on the
//! leader (membership, liveness) and the manager-side gRPC services
//! (join, raft transport, dispatcher, control API).
//!
//! Must not: touch the kernel network stack or depend on `weft-overlay`,
//! `weft-worker`, rtnetlink, nftables or boringtun.

pub mod ca;
pub mod raft;
pub mod store;
pub mod dispatcher;
pub mod membership;
pub mod quorum;
