//! The error type of [`crate::linux`] and the report of a best-effort
//! teardown. Every variant names the object (path, namespace, link) it is
//! about, so a log line is enough to act on.

use std::fmt;
use std::io;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;

use super::netlink::LinkKind;

/// Result alias of [`crate::linux`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the Linux primitives.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem or thread operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing (e.g. "create netns pin file").
        op: &'static str,
        /// The path (or pseudo path) it was about.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A namespace or mount syscall failed.
    #[error("{op} {}: {source}", path.display())]
    Sys {
        /// The syscall and purpose (e.g. "unshare(CLONE_NEWNET)").
        op: &'static str,
        /// The namespace pin (or other path) it was about.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
    /// The path exists but is not a bind-mounted network namespace.
    #[error("{} is not a pinned network namespace", path.display())]
    NotANetns {
        /// The offending path.
        path: PathBuf,
    },
    /// A netlink request failed.
    #[error("netlink {op} {target} in netns {ns}: {source}")]
    Netlink {
        /// The operation (e.g. "create bridge").
        op: &'static str,
        /// The namespace label (its pin path, or "current").
        ns: String,
        /// The object (link name, address, MAC …).
        target: String,
        /// The rtnetlink error (carries the kernel errno); boxed because
        /// it can hold a whole netlink message.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A link we need does not exist.
    #[error("link {name} not found in netns {ns}")]
    LinkNotFound {
        /// The namespace label.
        ns: String,
        /// The link name.
        name: String,
    },
    /// A link with the wanted name exists but is of another kind.
    #[error("link {name} in netns {ns} is a {found}, wanted a {wanted}")]
    LinkKindMismatch {
        /// The namespace label.
        ns: String,
        /// The link name.
        name: String,
        /// The kind we want to create.
        wanted: LinkKind,
        /// The kind the kernel reports.
        found: LinkKind,
    },
    /// A link exists with the wanted name and kind but a different shape
    /// (e.g. another VNI); the caller decides whether to delete and
    /// re-create it.
    #[error("link {name} in netns {ns} has {field} {found}, wanted {wanted}")]
    LinkShapeMismatch {
        /// The namespace label.
        ns: String,
        /// The link name.
        name: String,
        /// Which property differs ("vni", "port", "peer" …).
        field: &'static str,
        /// The wanted value, rendered.
        wanted: String,
        /// The value found in the kernel, rendered.
        found: String,
    },
    /// A link name the kernel would reject (empty, > 15 bytes, '/', space …).
    #[error("invalid link name {name:?}: {reason}")]
    InvalidLinkName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// An operation needs a tokio runtime and none is current.
    #[error("{op} must be called inside a tokio runtime")]
    NoRuntime {
        /// The operation.
        op: &'static str,
    },
    /// A route whose gateway is of another address family than its
    /// destination.
    #[error("route to {dest} cannot go via {gateway}: address families differ")]
    RouteFamilyMismatch {
        /// The destination prefix.
        dest: ipnetwork::IpNetwork,
        /// The gateway.
        gateway: std::net::IpAddr,
    },
    /// The `nft` binary is not installed.
    #[error(
        "the `nft` command was not found in PATH; weft needs it for service VIPs \
         and egress masquerading: install the `nftables` package"
    )]
    NftMissing,
    /// `nft` ran but failed (or its output did not parse).
    #[error("nft in netns {ns}: {source}")]
    Nft {
        /// The namespace label.
        ns: String,
        /// The error from the `nftables` crate, with nft's stderr.
        #[source]
        source: Box<nftables::helper::NftablesError>,
    },
    /// An underlay subnet outside the benchmarking range.
    #[error("underlay subnet {subnet} is not inside 198.18.0.0/15")]
    SubnetOutsideBenchmarkRange {
        /// The rejected subnet.
        subnet: Ipv4Network,
    },
    /// An underlay subnet with too few addresses for its hosts.
    #[error("underlay subnet {subnet} has room for {capacity} hosts, {wanted} requested")]
    SubnetTooSmall {
        /// The subnet.
        subnet: Ipv4Network,
        /// Usable host addresses.
        capacity: u32,
        /// Hosts requested.
        wanted: usize,
    },
    /// A topology or host name that cannot be used in a path.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// Several errors from one teardown.
    #[error("teardown failed: {}", DisplayAll(.0))]
    Teardown(Vec<Error>),
    /// The WireGuard device or its keys.
    #[error(transparent)]
    Wg(#[from] crate::wg::WgError),
}

struct DisplayAll<'a>(&'a [Error]);

impl fmt::Display for DisplayAll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Error {
    /// The kernel errno behind this error, if there is one (positive, e.g.
    /// `libc::EEXIST`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => netlink_errno(source),
            Error::Sys { source, .. } => Some(*source as i32),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The positive errno carried by a netlink error reply, if any.
pub(crate) fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// What a best-effort teardown did: it never stops at the first failure, so
/// it reports what it removed, which processes it killed and every error.
#[derive(Debug, Default)]
pub struct TeardownReport {
    /// Processes sent SIGKILL because they lived in a namespace being removed
    /// (or descended from one that did).
    pub killed: Vec<i32>,
    /// Namespace pins unmounted and removed.
    pub removed: Vec<PathBuf>,
    /// Every error met on the way.
    pub errors: Vec<Error>,
}

impl TeardownReport {
    /// True when nothing failed.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(())` when nothing failed, else all errors as [`Error::Teardown`].
    pub fn into_result(self) -> Result<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown(self.errors))
        }
    }

    /// Folds another report into this one.
    pub fn merge(&mut self, other: TeardownReport) {
        self.killed.extend(other.killed);
        self.removed.extend(other.removed);
        self.errors.extend(other.errors);
    }
}
