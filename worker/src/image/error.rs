//! What can go wrong with images on this node. Messages name the image, the
//! archive entry or the containerd socket at fault.

use std::path::PathBuf;

use super::archive::ArchiveError;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// containerd refused, failed or is not running (its message names the
    /// socket and, when it is not running, how to start it).
    #[error(transparent)]
    Containerd(#[from] weft_containerd_api::Error),
    /// The archive was refused; nothing was recorded.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Pulling from a registry failed (not found, denied, unreachable,
    /// a blob that does not match its digest, a bound).
    #[error(transparent)]
    Pull(#[from] super::pull::PullError),
    /// A container's image is not on this node and pulling it failed.
    #[error("no such image: {reference} on this node; pulling it: {source}")]
    PullFailed {
        /// The image the task names.
        reference: String,
        /// Why the pull failed.
        #[source]
        source: Box<ImageError>,
    },
    /// No image answers to the reference.
    #[error("no such image: {reference} on this node")]
    NotFound {
        /// What the user asked for.
        reference: String,
    },
    /// An image ID prefix (or a digest) matches several images.
    #[error("{reference} matches several images: {candidates}; use more of the ID or a name")]
    Ambiguous {
        /// What the user asked for.
        reference: String,
        /// The names that match, comma-separated.
        candidates: String,
    },
    /// Not a name, digest or ID.
    #[error(
        "invalid image reference {reference:?}: use NAME[:TAG], NAME@sha256:DIGEST, sha256:DIGEST or an image ID"
    )]
    InvalidReference {
        /// What the user typed.
        reference: String,
    },
    /// A layer's content is not what the image config says (its diff id):
    /// the archive lied about the layer.
    #[error(
        "layer {layer} unpacks to {actual}, but the image config says {expected}: \
         the image is corrupt or was tampered with"
    )]
    DiffIdMismatch {
        /// The layer blob's digest.
        layer: String,
        /// The config's diff id.
        expected: String,
        /// What containerd computed while applying it.
        actual: String,
    },
    /// A stored image is not usable (a manifest or config that does not
    /// parse, an index without this node's platform, an oversized blob).
    #[error("image {image} is not usable: {reason}")]
    Corrupt {
        /// The image name or digest.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// Containers still use the image.
    #[error(
        "image {image} is in use by container(s) {containers}: remove them first \
         (`weft rm`, or stop the service)"
    )]
    InUse {
        /// The image.
        image: String,
        /// Their ids, comma-separated.
        containers: String,
    },
    /// Removing by ID or digest would remove several names.
    #[error(
        "image {reference} has several names ({names}): remove them one by one, or use --force"
    )]
    SeveralNames {
        /// What the user asked for.
        reference: String,
        /// The names, comma-separated.
        names: String,
    },
    /// The upload exceeded the size cap.
    #[error("the image archive is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: u64,
    },
    /// A file of the upload spool could not be written or read.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was done ("cannot write the upload").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The same error, with a [`weft_containerd_api::Error::NotFound`] read as "no such image".
    pub(crate) fn or_not_found(self, reference: &str) -> Self {
        match self {
            ImageError::Containerd(weft_containerd_api::Error::NotFound { .. }) => {
                ImageError::NotFound {
                    reference: reference.to_owned(),
                }
            }
            e => e,
        }
    }
}
