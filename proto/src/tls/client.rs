//! Client side: channels from a node to a manager.
//!
//! A verified channel checks that the server certificate chains to the
//! cluster CA *and* carries the SAN `manager.weft` — a worker's certificate,
//! though issued by the same CA, cannot impersonate a manager.
//!
//! The one unverified connection is [`fetch_ca_insecure`]: before joining, a
//! node has only the CA fingerprint from its token, so it fetches the CA over
//! a connection that trusts any server, sends nothing secret on it, and then
//! compares the fingerprint ([`verify_ca_against_token`]). Only then does it
//! open a verified channel and send the token.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{TlsError, provider, server::certified_key, server::cluster_roots};
use crate::identity::{MANAGER_SAN, PeerIdentity, ca_fingerprint, certs_from_pem};
use crate::token::JoinToken;
use crate::v1::GetCaCertRequest;
use crate::v1::join_client::JoinClient;

/// TCP connect timeout to a manager.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// TLS handshake timeout to a manager.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 PING interval, so a dead manager is noticed on an idle channel.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long to wait for a PING answer before the connection is dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A plain endpoint for `addr` (`HOST:PORT`, or a full `https://` URI) with
/// weft's timeouts and keepalive.
fn base_endpoint(addr: &str) -> Result<Endpoint, TlsError> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("https://{addr}")
    };
    Ok(Endpoint::from_shared(uri)
        .map_err(|source| TlsError::BadAddress {
            addr: addr.to_owned(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// The endpoint for a verified channel to the manager at `addr`: the server
/// must chain to `ca_pem` and carry the SAN `manager.weft`. `identity` is
/// this node's `(cert_pem, key_pem)`; `None` only for `Join`.
pub fn manager_endpoint(
    addr: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Endpoint, TlsError> {
    // Check inputs here so a bad file gives a clear error, not a failed handshake.
    certs_from_pem(ca_pem, "the cluster CA certificate")?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(MANAGER_SAN)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some((cert_pem, key_pem)) = identity {
        certified_key(cert_pem, key_pem)?;
        tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
    }
    base_endpoint(addr)?
        .tls_config(tls)
        .map_err(|source| TlsError::ClientTls {
            addr: addr.to_owned(),
            source,
        })
}

/// Which nodes this node accepts as managers, as the cluster last told it
/// (its session and its join answer; kept in `node.json` across restarts).
///
/// One check for every channel a node opens to a manager: a certificate
/// that chains to the cluster CA and names a manager (SAN `manager.weft`)
/// is a claim frozen when it was issued; a demoted manager keeps one until
/// it renews, and a removed one's stays valid until it expires. So, on top
/// of the chain:
///
/// - a removed node is never a manager;
/// - when the node knows the current managers, only they are. It knows
///   none before its first join answer (and with a `node.json` written
///   by an older version): then only the chain, the SAN and the removed
///   list decide, and the first session message fills the list in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManagerTrust {
    managers: BTreeSet<String>,
    removed: BTreeSet<String>,
}

/// Why a node refused a manager's certificate.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerRefused {
    /// The certificate's node was removed from the cluster.
    #[error("node {0} was removed from the cluster: its certificate is no manager's")]
    Removed(String),
    /// The certificate's node is not a manager now (demoted, or never one).
    #[error(
        "node {0} presents a manager certificate but is not a manager of the cluster now \
         (demoted?); refusing it as a manager"
    )]
    NotAManager(String),
}

/// As `Display`: rustls shows the reason of a refused certificate with
/// `Debug`, and this is what the node's log and `weft info` then say.
impl std::fmt::Debug for ManagerRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ManagerTrust {
    /// Trust built from the managers' node IDs (empty: not known yet) and
    /// the removed node IDs.
    pub fn new(
        managers: impl IntoIterator<Item = String>,
        removed: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            managers: managers.into_iter().collect(),
            removed: removed.into_iter().collect(),
        }
    }

    /// Whether this node knows the current managers' IDs.
    pub fn knows_managers(&self) -> bool {
        !self.managers.is_empty()
    }

    /// Accepts or refuses `id` as a manager (its chain and SAN already
    /// verified).
    pub fn check(&self, id: &PeerIdentity) -> Result<(), ManagerRefused> {
        if self.removed.contains(&id.node_id) {
            return Err(ManagerRefused::Removed(id.node_id.clone()));
        }
        if self.knows_managers() && !self.managers.contains(&id.node_id) {
            return Err(ManagerRefused::NotAManager(id.node_id.clone()));
        }
        Ok(())
    }
}

/// rustls' WebPKI server verifier (chain to the cluster CA, SAN
/// `manager.weft`), plus the node's [`ManagerTrust`]: a removed or demoted
/// manager's certificate chains and names a manager, but must not be able
/// to pose as one to the nodes of its cluster.
#[derive(Debug)]
struct ManagerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    trust: ManagerTrust,
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let id = PeerIdentity::from_der(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        match self.trust.check(&id) {
            Ok(()) => Ok(verified),
            Err(refused) => {
                tracing::warn!(node = %id.node_id, "refused a manager certificate: {refused}");
                Err(rustls::Error::InvalidCertificate(match refused {
                    ManagerRefused::Removed(_) => rustls::CertificateError::Revoked,
                    ManagerRefused::NotAManager(_) => {
                        rustls::CertificateError::Other(rustls::OtherError(Arc::new(refused)))
                    }
                }))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// As [`channel_to_manager`], refusing (in the handshake) a manager that
/// `trust` does not accept (see [`ManagerTrust`]).
pub async fn channel_to_manager_checked(
    addr: &str,
    ca_pem: &str,
    identity: (&str, &str),
    trust: ManagerTrust,
) -> Result<Channel, TlsError> {
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        cluster_roots(ca_pem)?,
        provider(),
    )
    .build()
    .map_err(|e| TlsError::Rustls {
        what: "cannot build the manager certificate verifier",
        source: rustls::Error::General(e.to_string()),
    })?;
    let verifier = ManagerVerifier {
        inner: webpki,
        trust,
    };
    let (cert_pem, key_pem) = identity;
    certified_key(cert_pem, key_pem)?;
    let tls = ClientTlsConfig::new()
        .domain_name(MANAGER_SAN)
        .timeout(HANDSHAKE_TIMEOUT)
        .identity(Identity::from_pem(cert_pem, key_pem));
    base_endpoint(addr)?
        .tls_config_with_verifier(tls, Arc::new(verifier))
        .map_err(|source| TlsError::ClientTls {
            addr: addr.to_owned(),
            source,
        })?
        .connect()
        .await
        .map_err(|source| TlsError::Connect {
            addr: addr.to_owned(),
            source,
        })
}

/// Connects a verified channel to the manager at `addr` (see
/// [`manager_endpoint`]). Fails fast (about 2 s) if the manager is down.
pub async fn channel_to_manager(
    addr: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, TlsError> {
    manager_endpoint(addr, ca_pem, identity)?
        .connect()
        .await
        .map_err(|source| TlsError::Connect {
            addr: addr.to_owned(),
            source,
        })
}

/// As [`channel_to_manager`], but connects on first use and reconnects
/// after failures: for long-lived clients (sessions, Raft peers).
pub fn channel_to_manager_lazy(
    addr: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, TlsError> {
    Ok(manager_endpoint(addr, ca_pem, identity)?.connect_lazy())
}

/// Fetches the CA certificate (PEM) from the manager at `addr` WITHOUT
/// verifying the server. Nothing secret is sent on this connection (no
/// token, no client certificate). The result must be checked with
/// [`verify_ca_against_token`] before it is trusted.
pub async fn fetch_ca_insecure(addr: &str) -> Result<String, TlsError> {
    let tls = ClientTlsConfig::new()
        .domain_name(MANAGER_SAN)
        .timeout(HANDSHAKE_TIMEOUT);
    let channel = base_endpoint(addr)?
        .tls_config_with_verifier(tls, Arc::new(AnyServerCert::new()))
        .map_err(|source| TlsError::ClientTls {
            addr: addr.to_owned(),
            source,
        })?
        .connect()
        .await
        .map_err(|source| TlsError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let ca_pem = JoinClient::new(channel)
        .get_ca_cert(GetCaCertRequest {})
        .await
        .map_err(|status| TlsError::Rpc {
            addr: addr.to_owned(),
            rpc: "GetCaCert",
            status: Box::new(status),
        })?
        .into_inner()
        .ca_pem;
    certs_from_pem(&ca_pem, "the CA certificate sent by the manager")?;
    Ok(ca_pem)
}

/// Checks that `ca_pem`, as presented by the manager at `addr`, is the CA
/// whose fingerprint `token` carries.
pub fn verify_ca_against_token(
    addr: &str,
    ca_pem: &str,
    token: &JoinToken,
) -> Result<(), TlsError> {
    let actual = ca_fingerprint(ca_pem)?;
    if actual != token.ca_fingerprint {
        return Err(TlsError::CaMismatch {
            addr: addr.to_owned(),
            expected: token.fingerprint_hex(),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

/// [`fetch_ca_insecure`] then [`verify_ca_against_token`]: the CA PEM a
/// joining node may trust. Use it with [`channel_to_manager`] (no identity)
/// to send the token.
pub async fn fetch_trusted_ca(addr: &str, token: &JoinToken) -> Result<String, TlsError> {
    let ca_pem = fetch_ca_insecure(addr).await?;
    verify_ca_against_token(addr, &ca_pem, token)?;
    Ok(ca_pem)
}

/// Accepts any server certificate, but still checks the handshake
/// signatures (so the server does hold the key of the certificate it shows).
/// Only for [`fetch_ca_insecure`].
#[derive(Debug)]
struct AnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyServerCert {
    fn new() -> Self {
        Self {
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
