//! TLS configuration for both ends of a node-to-manager connection, and the
//! unix-socket transport of the local API.
//!
//! Owns: the rustls server config (TLS 1.3, ALPN h2, client certificates
//! optional at the TLS layer, hot-swappable server certificate), the TLS
//! accept loop feeding tonic, the per-RPC authorization helpers that read the
//! peer certificate, the client channels to managers (verified, and the
//! deliberately unverified one used only to fetch the CA before joining), and
//! the local unix socket (server and client).
//!
//! ```text
//!  joining node                                 manager :4377
//!  ------------                                 -------------
//!  fetch_ca_insecure ── any server cert ──────▶ Join.GetCaCert   (nothing secret sent)
//!  verify_ca_against_token (SHA-256 == token?)
//!  channel_to_manager(ca, None) ── chain + SAN manager.weft ──▶ Join.Join(token, CSR)
//!  channel_to_manager(ca, Some(cert,key)) ── mTLS ───────────▶ Dispatcher / Control / Raft
//!                                               handlers: require_manager / require_node
//! ```
//!
//! Why client certificates are optional at the TLS layer: `Join` must be
//! callable by a node that has no certificate yet, on the same port. Every
//! other RPC therefore checks the certificate itself (`require_*`), and a
//! missing certificate is UNAUTHENTICATED there. A certificate that does not
//! chain to the cluster CA still fails the handshake.

mod auth;
mod client;
mod local;
mod rejoin;
mod server;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use auth::{is_local, peer_identity, require_cluster_member, require_manager, require_node};
pub use client::{
    CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, ManagerRefused,
    ManagerTrust, channel_to_manager, channel_to_manager_checked, channel_to_manager_lazy,
    fetch_ca_insecure, fetch_trusted_ca, manager_endpoint, verify_ca_against_token,
};
pub use local::{bind_unix, connect_unix, serve_unix, unix_incoming};
pub use rejoin::{
    MAX_PROOF_BYTES, MAX_REJOIN_CERT_BYTES, PROOF_CONTEXT, RejoinError, proof_message, sign_proof,
    verify_proof,
};
pub use server::{
    IsRevoked, MAX_PENDING_HANDSHAKES, MAX_WAITING_HANDSHAKES, ReloadableCert, TlsIncoming,
    server_config, tls_incoming,
};

use crate::identity::IdentityError;

/// Errors of the transport layer. Messages name the address or path and,
/// where there is one, what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA could not be read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A private key PEM could not be decoded.
    #[error("cannot read the {what} private key (PKCS#8 PEM expected): {source}")]
    KeyPem {
        /// Whose key.
        what: &'static str,
        /// The decoder error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused a certificate, key or configuration.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being done.
        what: &'static str,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built (e.g. no usable CA).
    #[error("cannot build the client certificate verifier from the cluster CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// `addr` is not a usable `host:port`.
    #[error("invalid manager address {addr:?} (expected HOST:PORT): {source}")]
    BadAddress {
        /// The address as given.
        addr: String,
        /// The parse error.
        #[source]
        source: tonic::transport::Error,
    },
    /// TLS could not be configured on the channel.
    #[error("cannot configure TLS for {addr}: {}", chain(source))]
    ClientTls {
        /// The manager address.
        addr: String,
        /// The tonic error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The manager could not be reached or the TLS handshake failed.
    #[error("cannot connect to the manager at {addr}: {}", chain(source))]
    Connect {
        /// The manager address.
        addr: String,
        /// The tonic error (its source chain says why).
        #[source]
        source: tonic::transport::Error,
    },
    /// The manager answered an RPC with an error.
    #[error("the manager at {addr} refused {rpc}: {}", status.message())]
    Rpc {
        /// The manager address.
        addr: String,
        /// Which RPC.
        rpc: &'static str,
        /// The status it answered.
        status: Box<tonic::Status>,
    },
    /// The CA the manager presented is not the one the join token names.
    #[error(
        "the manager at {addr} presented a CA whose fingerprint ({actual}) does not match the token ({expected}): wrong cluster or a man in the middle; the token was not sent"
    )]
    CaMismatch {
        /// The manager address.
        addr: String,
        /// Fingerprint from the token (hex).
        expected: String,
        /// Fingerprint of the CA presented (hex).
        actual: String,
    },
    /// Nothing is listening on the local socket.
    #[error("no weft daemon is running at {}: start the daemon first, or point --socket at the right one", path.display())]
    NoDaemon {
        /// The socket path.
        path: PathBuf,
    },
    /// The local socket exists but this user may not open it.
    #[error("permission denied on {}: the weft socket is for root only (try sudo)", path.display())]
    SocketPermission {
        /// The socket path.
        path: PathBuf,
    },
    /// Another daemon already answers on the local socket.
    #[error("another weft daemon is already listening on {}; stop it first or use a different --socket", path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the socket path.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Other I/O on the local socket path.
    #[error("{what} {}: {source}", path.display())]
    UnixIo {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// tonic failed while serving or connecting on the local socket.
    #[error("local API on {}: {}", path.display(), chain(source))]
    UnixTransport {
        /// The socket path.
        path: PathBuf,
        /// The tonic error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Installs rustls' ring crypto provider as the process default.
/// Idempotent; call it first thing in `main` (tonic's own TLS code asks
/// for the default provider). weft's own configs name ring explicitly.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider weft uses for every config it builds.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// An error and its sources, `: `-joined: tonic's own `Display` is just
/// "transport error", the useful part is in the chain.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
