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
//!   cache.rs    parsed content and unpacked images, kept   (pure)
//!   store.rs    ImageStore: load, list, inspect, remove, get
//! ```

pub mod archive;
mod cache;
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

/// Credentials on the wire (a task's config, a digest lookup) checked
/// before use: well formed, and for the registry of `image`.
pub fn credential_for_image(
    auth: &weft_proto::v1::RegistryCredential,
    image: &str,
) -> Result<Credential, String> {
    let registry = pull::parse(image)
        .map_err(|e| e.to_string())?
        .registry()
        .to_owned();
    if registry != auth.registry {
        return Err(format!(
            "the credentials are for registry {}, the image {image} is on {registry}",
            auth.registry
        ));
    }
    Credential::new(&auth.username, &auth.password).map_err(|e| e.to_string())
}

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

#[cfg(test)]
mod credential_tests {
    use super::credential_for_image;
    use weft_proto::v1::RegistryCredential;

    fn wire(registry: &str, user: &str) -> RegistryCredential {
        RegistryCredential {
            registry: registry.into(),
            username: user.into(),
            password: "pw".into(),
        }
    }

    #[test]
    fn credentials_are_used_only_for_their_own_registry() {
        let image = "127.0.0.1:5000/team/app:1";
        let c = credential_for_image(&wire("127.0.0.1:5000", "alice"), image).unwrap();
        assert_eq!(c.username(), "alice");
        let e = credential_for_image(&wire("docker.io", "alice"), image).unwrap_err();
        assert!(e.contains("are for registry docker.io"), "{e}");
        assert!(credential_for_image(&wire("127.0.0.1:5000", ""), image).is_err());
        assert!(credential_for_image(&wire("127.0.0.1:5000", "a:b"), image).is_err());
        assert!(credential_for_image(&wire("docker.io", "bob"), "busybox").is_ok());
        assert!(credential_for_image(&wire("docker.io", "bob"), "UPPER:case").is_err());
    }
}
