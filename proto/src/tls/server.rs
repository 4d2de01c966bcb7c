//! Server side of the manager port: the rustls `ServerConfig`, the
//! hot-swappable server certificate and the TLS accept loop that feeds
//! `tonic::transport::Server::serve_with_incoming_shutdown`.
//!
//! ```text
//! TcpListener ──accept──▶ spawn(wait for a slot ≤ 3 s, handshake ≤ 10 s) ──ok──▶ mpsc ──▶ TlsIncoming ──▶ tonic
//!                  │                    └── error/timeout: logged, dropped
//!                  └── more than MAX_PENDING + MAX_WAITING connections: dropped
//! ```
//!
//! Handshakes run in their own tasks so a slow or hostile client cannot hold
//! up `accept`; at most [`MAX_PENDING_HANDSHAKES`] run at once. A
//! connection beyond those waits its turn (at most
//! [`MAX_WAITING_HANDSHAKES`] of them, each for at most 3 s) rather than
//! being dropped: when a leader fails, every node reconnects to the new one
//! at once, and a dropped node comes back only after its retry delay, so
//! dropping made the herd slower to serve, not cheaper (a waiting
//! connection holds a socket and no TLS state).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{TlsError, provider};
use crate::identity::{PeerIdentity, certs_from_pem};

/// How long a client may take to complete the TLS handshake.
const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; further connections wait for a slot.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Connections waiting for a handshake slot; further ones are dropped.
/// Above the node limit, so a whole cluster reconnecting at once waits.
pub const MAX_WAITING_HANDSHAKES: usize = 8192;
/// How long a connection may wait for a handshake slot: a client gives up
/// its handshake after 5 s (`client::HANDSHAKE_TIMEOUT`), waiting included,
/// and a slot is better spent on one that will not.
const HANDSHAKE_QUEUE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The node's server certificate, replaceable while the server runs: a
/// renewed certificate is used by every handshake after [`replace`].
/// Clones share the same slot.
///
/// [`replace`]: ReloadableCert::replace
#[derive(Debug, Clone)]
pub struct ReloadableCert {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl ReloadableCert {
    /// Loads the certificate chain (leaf first) and its PKCS#8 key.
    /// Fails if the key does not match the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?))),
        })
    }

    /// Replaces the certificate; new handshakes use it, established
    /// connections keep theirs. On error the old certificate stays.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let new = Arc::new(certified_key(cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// The leaf certificate currently served (DER).
    pub fn current_leaf(&self) -> CertificateDer<'static> {
        self.get().cert[0].clone()
    }

    fn get(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a valid certificate: keep serving it.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Parses a certificate chain and key into a rustls `CertifiedKey`, checking
/// that they belong together.
pub(crate) fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let certs = certs_from_pem(cert_pem, "the node certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TlsError::KeyPem {
            what: "node",
            source,
        })?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|source| TlsError::Rustls {
        what: "the node certificate and key do not fit together",
        source,
    })
}

/// Says whether a certificate's node has been revoked (removed from the
/// cluster). Asked during every handshake that presents a client
/// certificate, after the chain has been verified; the manager answers from
/// its store, so a removal counts from the moment it is applied.
pub type IsRevoked = Arc<dyn Fn(&PeerIdentity) -> bool + Send + Sync>;

/// rustls' WebPKI client verifier, plus the cluster's revocation list.
///
/// Why not a CRL: revocations are replicated through Raft like every other
/// piece of membership, so each manager already holds the current list;
/// minting and distributing CRL files would add a second, slower copy of it.
struct RevocationVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    is_revoked: IsRevoked,
}

impl std::fmt::Debug for RevocationVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for RevocationVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        // A chain-valid certificate that is not a weft node certificate is
        // left to the per-call checks, which refuse it with a clear message.
        if let Ok(id) = super::auth::identity_of(end_entity)
            && (self.is_revoked)(&id)
        {
            tracing::warn!(node = %id.node_id, "refused the certificate of a removed node");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
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

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls config for the manager port: TLS 1.3 only, ALPN `h2`, client
/// certificates verified against `ca_pem` (a PEM bundle during CA rotation)
/// but optional, refused during the handshake when `is_revoked` says their
/// node was removed, and `cert` as the (hot-swappable) server certificate.
pub fn server_config(
    ca_pem: &str,
    cert: &ReloadableCert,
    is_revoked: IsRevoked,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let webpki =
        WebPkiClientVerifier::builder_with_provider(cluster_roots(ca_pem)?, provider.clone())
            .allow_unauthenticated()
            .build()?;
    let verifier = Arc::new(RevocationVerifier {
        inner: webpki,
        is_revoked,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            what: "TLS 1.3 is not available",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(cert.clone()));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed session skips `verify_client_cert`,
    // so a removed node's cached channel would reconnect without meeting
    // the revocation check. Connections are long-lived; a full handshake
    // per connection costs nothing that matters.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The trust anchors of a cluster: its CA certificate(s) from `ca_pem` (a
/// bundle during CA rotation). Both ends of a connection verify with these.
pub(crate) fn cluster_roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(ca_pem, "the cluster CA certificate")? {
        roots.add(ca).map_err(|source| TlsError::Rustls {
            what: "the cluster CA certificate is not usable as a trust anchor",
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// Accepts TCP connections on `listener` and yields completed TLS streams,
/// for `Server::serve_with_incoming_shutdown` (do not also set tonic's
/// `tls_config`). tonic's `Connected` impl for these streams makes
/// `Request::peer_certs()` work in handlers.
pub fn tls_incoming(listener: TcpListener, config: Arc<ServerConfig>) -> TlsIncoming {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let accept_task = tokio::spawn(accept_loop(listener, acceptor, tx));
    TlsIncoming { rx, accept_task }
}

/// Stream of accepted TLS connections. Dropping it (the server stopped)
/// stops the accept loop and closes the listening socket.
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<io::Result<TlsStream<TcpStream>>>,
    accept_task: JoinHandle<()>,
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let admitted = Arc::new(Semaphore::new(
        MAX_PENDING_HANDSHAKES + MAX_WAITING_HANDSHAKES,
    ));
    loop {
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => return,
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the manager port failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(admission) = admitted.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many TLS handshakes in flight and waiting; dropping connection");
            continue;
        };
        // Best effort: gRPC is latency-sensitive, and failure here is harmless.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let pending = pending.clone();
        tokio::spawn(async move {
            let _admission = admission;
            let Ok(Ok(_permit)) =
                tokio::time::timeout(HANDSHAKE_QUEUE_TIMEOUT, pending.acquire_owned()).await
            else {
                tracing::info!(%peer, "waited too long for a TLS handshake slot; dropping connection");
                return;
            };
            match tokio::time::timeout(SERVER_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // Err: the server is shutting down; the connection just closes.
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
