//! Admitting nodes: the `Join` service, callable without a certificate.
//!
//! ```text
//!  joiner                                   any manager
//!    │ GetCaCert (TLS, server not yet trusted) ─▶ CA PEM
//!    │ check SHA-256(CA) == token fingerprint; else stop, token unsent
//!    │ Join{token, CSR} (TLS, server verified against that CA) ─▶
//!    │            check secret (constant time) ─▶ role
//!    │            sign CSR (manager-chosen subject) ─▶ propose AddNode
//!    ◀─ node ID, certificate, CA, manager list
//! ```
//!
//! A rejoin (the request carries the node's expired certificate and a proof
//! by its key, see [`crate::rejoin`]) goes the same way up to the token,
//! then issues a certificate for the node ID it proved, with its role in
//! the store, and changes nothing else about the node.

use std::net::{IpAddr, SocketAddr};

use tonic::{Request, Response, Status};
use weft_proto::token::JoinToken;
use weft_proto::v1 as pb;
use weft_proto::v1::join_server::Join;

use crate::ca::ClusterCa;
use crate::core::{Core, now_ms};
use crate::error::{Error, Result};
use crate::limits;
use crate::rejoin::{self, RejoinRefused};
use crate::store::{Cluster, Command, Node, NodeId, NodeState, Role};

/// Default manager port.
pub const DEFAULT_PORT: u16 = 4377;

/// The `Join` gRPC service.
#[derive(Clone)]
pub struct JoinService {
    core: Core,
}

impl JoinService {
    /// A join service over this manager's store.
    pub fn new(core: Core) -> Self {
        JoinService { core }
    }

    async fn join(&self, r: pb::JoinRequest, peer: Option<SocketAddr>) -> Result<pb::JoinResponse> {
        limits::at_most(
            "certificate signing request",
            r.csr_pem.len(),
            limits::MAX_CSR_BYTES,
            "bytes",
        )?;
        let cluster = self.core.cluster()?;
        let token: JoinToken = r
            .token
            .parse()
            .map_err(|e: weft_proto::token::TokenError| Error::BadToken(e.to_string()))?;
        let secrets = self.core.secrets()?;
        let ca = ClusterCa::from_pem(&cluster.ca_cert_pem, &secrets.ca_key_pem)?;
        if token.ca_fingerprint != ca.fingerprint() {
            return Err(Error::BadToken(
                "this join token belongs to a different cluster (its CA fingerprint does not match); \
                 get a token from a manager of this cluster with `weft join-token worker`"
                    .into(),
            ));
        }
        // Check both secrets without short-circuiting on the first.
        let is_manager = token.secret_matches(&secrets.manager_secret);
        let is_worker = token.secret_matches(&secrets.worker_secret);
        let role = match (is_manager, is_worker) {
            (true, _) => Role::Manager,
            (false, true) => Role::Worker,
            (false, false) => {
                return Err(Error::BadToken(
                    "invalid join token: it may have been rotated; get the current one with \
                     `weft join-token worker` (or `manager`) on a manager"
                        .into(),
                ));
            }
        };
        if !r.rejoin_cert_pem.is_empty() || !r.rejoin_proof.is_empty() {
            return self.rejoin(&r, role, &cluster, &ca).await;
        }
        let hostname = r.hostname.trim().to_string();
        limits::at_most(
            "hostname",
            hostname.len(),
            limits::MAX_HOSTNAME_BYTES,
            "bytes",
        )?;
        if hostname.is_empty() || hostname.chars().any(char::is_control) {
            return Err(Error::InvalidInput(format!(
                "invalid hostname {hostname:?}: give 1-{} characters, no control characters",
                limits::MAX_HOSTNAME_BYTES
            )));
        }
        // 0: the node could not tell (the default is assumed).
        if r.underlay_mtu != 0 && !limits::UNDERLAY_MTU_RANGE.contains(&r.underlay_mtu) {
            return Err(Error::InvalidInput(format!(
                "underlay MTU {} is outside the limits of {} to {}",
                r.underlay_mtu,
                limits::UNDERLAY_MTU_RANGE.start(),
                limits::UNDERLAY_MTU_RANGE.end()
            )));
        }
        let addr = advertise_addr(&r.advertise_addr, peer)?;
        let data_path_addr = if r.data_path_addr.is_empty() {
            addr.ip().to_string()
        } else {
            r.data_path_addr
                .parse::<IpAddr>()
                .map_err(|_| {
                    Error::InvalidInput(format!(
                        "invalid data path address {:?}: give an IP address",
                        r.data_path_addr
                    ))
                })?
                .to_string()
        };
        let addr_text = addr.to_string();
        if role == Role::Manager
            && self
                .core
                .read(|s| s.managers().any(|m| m.addr == addr_text))
        {
            return Err(Error::FailedPrecondition(format!(
                "another manager already advertises {addr_text}; give this node its own --advertise-addr"
            )));
        }

        let id = NodeId::random();
        let now = now_ms();
        let mut node = Node {
            id,
            hostname,
            role,
            state: NodeState::Unknown,
            addr: addr_text,
            data_path_addr,
            underlay_mtu: u32::try_from(r.underlay_mtu).unwrap_or(1500),
            created_at_ms: now,
            updated_at_ms: now,
            cert_role: role,
            ..Default::default()
        };
        // Before anything is signed: a refused node gets no certificate.
        self.core
            .read(|s| limits::admit(s, &Command::AddNode { node: node.clone() }))?;
        let issued = ca.sign_csr(
            &r.csr_pem,
            &id.to_string(),
            role.into(),
            &cluster.id,
            limits::cert_validity(cluster.settings.cert_expiry_secs),
        )?;
        node.cert_expiry = crate::core::rfc3339(issued.not_after);
        self.core.propose(Command::AddNode { node }).await?;
        tracing::info!(node = %id, role = role.as_str(), "node joined");
        Ok(self.answer(id, role, issued.cert_pem, cluster))
    }

    /// A node proving its old identity gets a new certificate for the same
    /// node ID (see [`crate::rejoin`]); nothing else about it changes.
    async fn rejoin(
        &self,
        r: &pb::JoinRequest,
        token_role: Role,
        cluster: &Cluster,
        ca: &ClusterCa,
    ) -> Result<pb::JoinResponse> {
        if r.rejoin_cert_pem.is_empty() || r.rejoin_proof.is_empty() {
            return Err(RejoinRefused::Incomplete.into());
        }
        let old = weft_proto::tls::verify_proof(
            &cluster.ca_cert_pem,
            &r.rejoin_cert_pem,
            &r.csr_pem,
            &r.rejoin_proof,
        )
        .map_err(RejoinRefused::from)?;
        let node = self
            .core
            .read(|s| rejoin::check(s, &cluster.id, &old, token_role))?;
        let issued = reissue(&self.core, cluster, ca, &node, &r.csr_pem).await?;
        tracing::info!(
            node = %node.id,
            role = node.role.as_str(),
            old_expiry = %old.not_after,
            "node rejoined with its own node ID"
        );
        Ok(self.answer(node.id, node.role, issued.cert_pem, cluster.clone()))
    }

    /// The answer to a (re)join: the node's certificate and the managers.
    fn answer(
        &self,
        id: NodeId,
        role: Role,
        cert_pem: String,
        cluster: Cluster,
    ) -> pb::JoinResponse {
        let (manager_addrs, manager_node_ids) = self.core.read(|s| {
            s.managers()
                .map(|m| (m.addr.clone(), m.id.to_string()))
                .unzip()
        });
        pb::JoinResponse {
            node_id: id.to_string(),
            role: pb::NodeRole::from(role) as i32,
            cert_pem,
            ca_pem: cluster.ca_cert_pem,
            cluster_id: cluster.id,
            manager_addrs,
            manager_node_ids,
        }
    }
}

/// A new certificate for member `node` (the key of `csr_pem`, its role in
/// the store), with its expiry recorded in the store: renewal and rejoin.
pub(crate) async fn reissue(
    core: &Core,
    cluster: &Cluster,
    ca: &ClusterCa,
    node: &Node,
    csr_pem: &str,
) -> Result<crate::ca::IssuedCert> {
    let issued = ca.sign_csr(
        csr_pem,
        &node.id.to_string(),
        node.role.into(),
        &cluster.id,
        limits::cert_validity(cluster.settings.cert_expiry_secs),
    )?;
    core.propose(Command::SetCertExpiry {
        id: node.id,
        expiry: crate::core::rfc3339(issued.not_after),
        role: node.role,
    })
    .await?;
    Ok(issued)
}

/// `IP[:PORT]` as the joiner advertised it, or the address it connected
/// from (with the default port) when it gave none.
pub fn advertise_addr(given: &str, peer: Option<SocketAddr>) -> Result<SocketAddr> {
    if given.is_empty() {
        let ip = peer.map(|p| p.ip()).ok_or_else(|| {
            Error::InvalidInput("could not tell this node's address; pass --advertise-addr".into())
        })?;
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    parse_host_port(given, DEFAULT_PORT)
}

/// Where the manager port listens unless `--listen-addr` says: every
/// address of the advertised address's family (`0.0.0.0`, or `[::]` for
/// an IPv6 underlay), on `port`.
pub fn default_listen(advertise: Option<SocketAddr>, port: u16) -> SocketAddr {
    let any: std::net::IpAddr = match advertise {
        Some(a) if a.is_ipv6() => std::net::Ipv6Addr::UNSPECIFIED.into(),
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(any, port)
}

/// Parses `IP` or `IP:PORT`; the port defaults to `default_port`.
pub fn parse_host_port(s: &str, default_port: u16) -> Result<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(Error::InvalidInput(format!(
                "invalid address {s:?}: port 0"
            )));
        }
        return Ok(sa);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(Error::InvalidInput(format!(
        "invalid address {s:?}: expected IP or IP:PORT, e.g. 198.18.0.1 or 198.18.0.1:{default_port}"
    )))
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn get_ca_cert(
        &self,
        _req: Request<pb::GetCaCertRequest>,
    ) -> std::result::Result<Response<pb::GetCaCertResponse>, Status> {
        let c = self.core.cluster()?;
        Ok(Response::new(pb::GetCaCertResponse {
            ca_pem: c.ca_cert_pem,
            wg_port: c.settings.wg_port.into(),
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> std::result::Result<Response<pb::JoinResponse>, Status> {
        let peer = req.remote_addr();
        Ok(Response::new(
            JoinService::join(self, req.into_inner(), peer).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("198.18.0.1", 4377).unwrap(),
            "198.18.0.1:4377".parse().unwrap()
        );
        assert_eq!(
            parse_host_port("198.18.0.1:5000", 4377).unwrap(),
            "198.18.0.1:5000".parse().unwrap()
        );
        assert!(parse_host_port("eth0", 4377).is_err());
        assert!(parse_host_port("198.18.0.1:0", 4377).is_err());
        assert!(parse_host_port("", 4377).is_err());
    }

    #[test]
    fn advertise_defaults_to_peer_ip() {
        let peer: SocketAddr = "198.18.0.7:51234".parse().unwrap();
        assert_eq!(
            advertise_addr("", Some(peer)).unwrap(),
            "198.18.0.7:4377".parse().unwrap()
        );
        assert!(advertise_addr("", None).is_err());
    }
}
