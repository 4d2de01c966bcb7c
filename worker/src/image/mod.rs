//! Images on this node, kept in containerd (namespace `weft`): loading
//! archives, listing, inspecting, removing, and unpacking them into
//! snapshots that containers start from (issue #14, docs/plans/14-containerd.md §2.1–2.3).
//!
//! Owns: reading image archives, writing their blobs to containerd's
//! content store, image records, unpacking layers to overlayfs snapshots.
//!
//! Must not: start containers (the runtime does, from a [`LocalImage`]) or
//! talk to the manager.

pub mod config;

pub use config::{Healthcheck, ImageConfig, RunConfig};

/// An image present on this node, ready to start containers from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalImage {
    /// The name it is recorded under (`docker.io/library/busybox:latest`),
    /// or its digest form when it has no name.
    pub name: String,
    /// The manifest's digest (`sha256:…`): what a service pins.
    pub digest: String,
    /// Its configuration (defaults and layers).
    pub config: ImageConfig,
    /// The chain id of its top layer: the parent snapshot of a container's
    /// root filesystem.
    pub top_chain_id: String,
}
