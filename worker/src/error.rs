//! The worker's error type.

use std::path::PathBuf;

/// What can go wrong on the node side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the node's identity could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the node's identity is not what we wrote.
    #[error("{} is corrupt: {source}", path.display())]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A file of the node's identity could not be written (which step,
    /// which file).
    #[error(transparent)]
    Write(#[from] weft_overlay::durable::WriteError),
    /// The node certificate and key on disk cannot be used: they do not
    /// belong together, or one of them does not parse.
    #[error(
        "cannot use the node certificate {} with the key {}: {source}; put back a certificate and \
         key that were issued together or, if there are none, move this node's data dir aside, \
         start the daemon, join the cluster again and remove the old node with `weft node rm` on \
         a manager",
        cert.display(),
        key.display()
    )]
    BadCertPair {
        /// The certificate file read.
        cert: PathBuf,
        /// The key file read.
        key: PathBuf,
        /// What is wrong with them (boxed: it is large and rare).
        #[source]
        source: Box<weft_proto::tls::TlsError>,
    },
    /// The node's TLS key file is sealed under the autolock unlock key and
    /// the key is not held: the node waits for `weft unlock`.
    #[error(
        "this manager is locked: its TLS key {} is sealed under the cluster's unlock key \
         (key id {key_id}); run `weft unlock` and give the key printed by `weft init --autolock` \
         or `weft unlock-key`",
        path.display()
    )]
    Locked {
        /// The sealed key file.
        path: PathBuf,
        /// Id of the key that opens it.
        key_id: String,
    },
    /// The sealed TLS key file could not be opened with the key given.
    #[error("{}: {source}", path.display())]
    Seal {
        /// The sealed key file.
        path: PathBuf,
        /// Wrong key, altered or garbled file.
        #[source]
        source: weft_proto::seal::SealError,
    },
    /// The join token could not be parsed.
    #[error(transparent)]
    Token(#[from] weft_proto::token::TokenError),
    /// Certificates, keys or TLS.
    #[error(transparent)]
    Tls(#[from] weft_proto::tls::TlsError),
    /// Key or CSR generation.
    #[error(transparent)]
    Identity(#[from] weft_proto::identity::IdentityError),
    /// The manager refused or failed the call.
    #[error("{addr}: {}", status.message())]
    Rpc {
        /// The manager asked.
        addr: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// The manager answered something we cannot use.
    #[error("the manager at {addr} answered with {what}")]
    BadAnswer {
        /// The manager asked.
        addr: String,
        /// What was wrong with it.
        what: String,
    },
    /// A rejoin's token is of another cluster than the node's certificate.
    #[error(
        "the join token is of another cluster than this node's certificate (the CA the manager at \
         {addr} presented is not this node's): rejoin with a token of this node's cluster, or \
         `weft leave --force` and join the other cluster as a new node"
    )]
    OtherCluster {
        /// The manager asked.
        addr: String,
    },
    /// A UDP port the cluster needs on this node is taken.
    #[error(
        "UDP port {port} ({what}) is already in use on this node: {source}; stop what uses it, or use a cluster with another port"
    )]
    PortInUse {
        /// The port.
        port: u16,
        /// What weft needs it for.
        what: &'static str,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
