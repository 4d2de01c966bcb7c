//! weft-manager: the cluster's brain.
//!
//! Owns: the Raft-replicated store (state machine, deterministic allocation),
//! the Raft log on disk, the cluster CA, the reconcilers that run on the
//! leader (membership, liveness) and the manager-side gRPC services
//! (join, raft transport, dispatcher, control API).
//!
//! Must not: touch the kernel network stack or depend on `weft-overlay`,
//! `weft-worker`, rtnetlink, nftables or boringtun.

pub mod authz;
pub mod autolock;
pub mod bootstrap;
pub mod ca;
pub mod controlapi;
pub mod convert;
pub mod core;
pub mod dispatcher;
pub mod doctor;
pub mod error;
pub mod imagepush;
pub mod inventory;
pub mod join;
pub mod leader;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod quorum;
pub mod raft;
pub mod registry_auth;
pub mod rejoin;
pub mod reports;
pub mod server;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;

pub use server::{Manager, ManagerConfig, StartError};
pub mod orchestrator;
pub mod validate;
