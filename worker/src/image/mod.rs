//! Images on this node, kept in containerd (namespace `weft`): loading
//! archives, listing, inspecting, removing, and unpacking them into
//! snapshots that containers start from (issue #14, docs/plans/14-containerd.md §2.1–2.3).
//!
//! Owns: reading image archives, pulling from registries, writing their blobs to containerd's
//! content store, image records, unpacking layers to overlayfs snapshots.
//!
//! Must not: start containers (the runtime does, from a [`LocalImage`]) or
//! talk to the manager.
//!
//! ```text
//!   archive.rs  tar index, limits, format detection        (pure)
//!   plan.rs     what a load writes: blobs, names, images    (pure)
//!   reference.rs  names, digests, ID prefixes               (pure)
//!   import.rs   spool, gunzip, execute a plan               (containerd)
//!   pull.rs     fetch from a registry, then import's path    (registry, containerd)
//!   login.rs    `weft login`'s check against a registry      (registry)
//!   unpack.rs   layers -> snapshots by chain id             (containerd)
//!   content.rs  Content.Write/Read/Update, leases           (containerd)
//!   store.rs    ImageStore: load, list, inspect, remove, get
//! ```

pub mod archive;
pub mod config;
pub mod content;
pub mod error;
pub mod import;
pub mod login;
pub mod plan;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;

pub use config::{Healthcheck, ImageConfig, RunConfig};
pub use credential::Credential;
pub use error::ImageError;
pub use import::{LoadedImage, Spool, SpoolFile};
pub use pull::{PullError, PullSettings};
pub use store::{
    FakeImageSource, Fetch, ImageDetails, ImageSource, ImageStore, ImageSummary, Removed,
    StoreConfig,
};
/// Registry credentials: shared with the manager, which checks them alike.
pub use weft_proto::credential;

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
