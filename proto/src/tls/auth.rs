//! Per-RPC authorization from the peer certificate.
//!
//! The TLS layer already checked that a presented certificate chains to the
//! cluster CA; these helpers decide what that certificate may do, and turn
//! refusals into `tonic::Status` values whose messages tell the caller why.

use time::OffsetDateTime;
use tonic::{Request, Status};

use crate::identity::{PeerIdentity, Role};

/// The identity in the client certificate of `req`, if it presented one
/// that names a weft node. `None` for cert-less and unix-socket callers.
pub fn peer_identity<T>(req: &Request<T>) -> Option<PeerIdentity> {
    let certs = req.peer_certs()?;
    PeerIdentity::from_der(certs.first()?).ok()
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
    let id = PeerIdentity::from_der(leaf).map_err(|e| Status::permission_denied(format!("{e}")))?;
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
