//! weft-overlay: the kernel data plane.
//!
//! Owns: the desired node state model, the pure planner that diffs it against
//! what is applied, the `Dataplane` trait with its Linux implementation
//! (netlink, network namespaces, nftables, boringtun, embedded DNS) and an
//! in-memory fake for tests of the logic above it.
//!
//! Must not: speak gRPC, know about Raft, or depend on `weft-proto` or
//! `weft-manager`.

#[cfg(target_os = "linux")]
pub mod linux;
