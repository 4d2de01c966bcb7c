//! Per-RPC authorization from the peer certificate.
//!
//! The TLS layer already checked that a presented certificate chains to the
//! cluster CA; these helpers decide what that certificate may do, and turn
//! refusals into `tonic::Status` values whose messages tell the caller why.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tonic::{Request, Status};

use crate::identity::{IdentityError, PeerIdentity, Role};

/// Most certificates whose identity is remembered; past it the cache starts
/// over (a cluster's nodes hold one certificate each, renewed rarely).
const IDENTITY_CACHE_MAX: usize = 4096;

/// Identities already read from certificates, by the certificate's DER.
///
/// Every RPC checks its caller, and parsing the X.509 certificate each time
/// was a visible share of a manager's CPU under write load. A certificate's
/// bytes determine its identity, so the DER is the key; only certificates
/// that parse are kept (refusals stay uncached, and cheap to repeat).
static IDENTITIES: Mutex<Option<HashMap<Arc<[u8]>, PeerIdentity>>> = Mutex::new(None);

/// The identity of the certificate `der`, parsed once per certificate.
pub(super) fn identity_of(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let lock = || IDENTITIES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(id) = lock().as_ref().and_then(|m| m.get(der)) {
        return Ok(id.clone());
    }
    let id = PeerIdentity::from_der(der)?;
    let mut cache = lock();
    let map = cache.get_or_insert_with(HashMap::new);
    if map.len() >= IDENTITY_CACHE_MAX {
        map.clear();
    }
    map.insert(Arc::from(der), id.clone());
    Ok(id)
}

/// The identity in the client certificate of `req`, if it presented one
/// that names a weft node. `None` for cert-less and unix-socket callers.
pub fn peer_identity<T>(req: &Request<T>) -> Option<PeerIdentity> {
    let certs = req.peer_certs()?;
    identity_of(certs.first()?).ok()
}

/// Whether `req` came over the local unix socket (served with
/// [`super::serve_unix`] or [`super::unix_incoming`]): root on this host.
pub fn is_local<T>(req: &Request<T>) -> bool {
    req.extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .is_some()
}

/// Any node certificate of cluster `cluster_id`, still valid.
///
/// UNAUTHENTICATED without a certificate or with an expired one,
/// PERMISSION_DENIED for a certificate that is not a weft node certificate
/// or belongs to another cluster.
pub fn require_cluster_member<T>(
    req: &Request<T>,
    cluster_id: &str,
) -> Result<PeerIdentity, Status> {
    let Some(certs) = req.peer_certs() else {
        return Err(Status::unauthenticated(
            "this call needs a node certificate issued by the cluster CA; \
             join the cluster first (`weft join --token ...`)",
        ));
    };
    let Some(leaf) = certs.first() else {
        return Err(Status::unauthenticated(
            "the client sent an empty certificate chain",
        ));
    };
    let id = identity_of(leaf).map_err(|e| Status::permission_denied(format!("{e}")))?;
    if id.cluster_id != cluster_id {
        return Err(Status::permission_denied(format!(
            "node {} has a certificate of cluster {}, not of this cluster ({cluster_id}); \
             leave that cluster and join this one",
            id.node_id, id.cluster_id
        )));
    }
    // The handshake checked validity, but a connection can outlive its cert.
    if id.not_after <= OffsetDateTime::now_utc() {
        return Err(Status::unauthenticated(format!(
            "the certificate of node {} expired at {}; reconnect with the renewed certificate \
             or rejoin the cluster",
            id.node_id, id.not_after
        )));
    }
    Ok(id)
}

/// A manager certificate of cluster `cluster_id` (control API, Raft).
///
/// As [`require_cluster_member`], plus PERMISSION_DENIED for a worker.
pub fn require_manager<T>(req: &Request<T>, cluster_id: &str) -> Result<PeerIdentity, Status> {
    let id = require_cluster_member(req, cluster_id)?;
    match id.role {
        Role::Manager => Ok(id),
        Role::Worker => Err(Status::permission_denied(format!(
            "this call needs a manager certificate; node {} is a worker (run it on a manager)",
            id.node_id
        ))),
    }
}

/// A node certificate of cluster `cluster_id` whose node ID is
/// `claimed_node_id`: a node may speak only for itself (dispatcher).
///
/// As [`require_cluster_member`], plus PERMISSION_DENIED when the request
/// names another node.
pub fn require_node<T>(
    req: &Request<T>,
    cluster_id: &str,
    claimed_node_id: &str,
) -> Result<PeerIdentity, Status> {
    let id = require_cluster_member(req, cluster_id)?;
    if id.node_id != claimed_node_id {
        return Err(Status::permission_denied(format!(
            "node {} may speak only for itself, not for node {claimed_node_id:?}",
            id.node_id
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    fn cert_der(node: &str, role: &str, cluster: &str) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role);
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn cached_identity_is_the_certificates_own() {
        let a = cert_der("node-a", "manager", "c1");
        let b = cert_der("node-b", "worker", "c1");
        for _ in 0..2 {
            // The first round parses, the second answers from the cache.
            assert_eq!(
                identity_of(&a).unwrap(),
                PeerIdentity::from_der(&a).unwrap()
            );
            assert_eq!(identity_of(&b).unwrap().node_id, "node-b");
            assert_eq!(identity_of(&b).unwrap().role, Role::Worker);
        }
        // What does not parse is refused every time, never remembered.
        let bad = cert_der("node-c", "admin", "c1");
        for _ in 0..2 {
            assert!(
                matches!(identity_of(&bad), Err(IdentityError::UnknownRole(r)) if r == "admin")
            );
            assert!(identity_of(b"not a certificate").is_err());
        }
    }
}
