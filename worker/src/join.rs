//! The joining node's side of admission.
//!
//! The token is sent only after the manager proved it holds a certificate
//! that chains to the CA whose fingerprint the token carries; the private
//! key is generated here and never leaves the node (only a CSR does).
//!
//! A node whose certificate expired while it was offline rejoins
//! ([`rejoin`]): the same exchange, plus its expired certificate and a
//! signature by its old key over the new CSR, so it keeps its node ID.

use weft_proto::identity::NodeKey;
use weft_proto::tls;
use weft_proto::token::JoinToken;
use weft_proto::v1 as pb;
use weft_proto::v1::join_client::JoinClient;

use crate::error::{Error, Result};
use crate::node_files::Certs;

/// What the node learns by joining.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Assigned node ID.
    pub node_id: String,
    /// Role the token granted.
    pub role: pb::NodeRole,
    /// Cluster ID.
    pub cluster_id: String,
    /// CA, certificate and key.
    pub certs: Certs,
    /// Managers to connect to.
    pub manager_addrs: Vec<String>,
    /// The managers' node IDs: the only nodes accepted as managers.
    pub manager_node_ids: Vec<String>,
}

/// What the node tells the manager about itself.
#[derive(Debug, Clone, Default)]
pub struct JoinParams {
    /// Host name.
    pub hostname: String,
    /// `IP[:PORT]`, or empty to let the manager use the connection's source.
    pub advertise_addr: String,
    /// Underlay IP, or empty for the advertise address.
    pub data_path_addr: String,
    /// MTU of the underlay interface.
    pub underlay_mtu: u64,
}

/// Checks that UDP `port` can be bound on every address of this node's
/// namespace (nothing else holds it).
pub fn udp_port_free(port: u16, what: &'static str) -> Result<()> {
    std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
        .map(drop)
        .map_err(|source| Error::PortInUse { port, what, source })
}

/// Joins the cluster through the manager at `remote` (`HOST:PORT`).
pub async fn join(remote: &str, token_text: &str, params: JoinParams) -> Result<Joined> {
    admit(remote, token_text, params, None).await
}

/// Rejoins the cluster as the node `old` is the certificate and key of
/// (expired while the node was offline): the manager checks the proof
/// signed with the old key and issues a new certificate for the same node
/// ID. The token must be of the cluster whose CA the node holds, and grant
/// the node's role in the cluster.
pub async fn rejoin(remote: &str, token_text: &str, old: &Certs) -> Result<Joined> {
    let old_id = weft_proto::identity::PeerIdentity::from_pem(&old.cert_pem)?;
    let joined = admit(remote, token_text, JoinParams::default(), Some(old)).await?;
    if joined.node_id != old_id.node_id || joined.cluster_id != old_id.cluster_id {
        return Err(Error::BadAnswer {
            addr: remote.to_string(),
            what: format!(
                "a certificate for node {} of cluster {} to a rejoin as node {} of cluster {}",
                joined.node_id, joined.cluster_id, old_id.node_id, old_id.cluster_id
            ),
        });
    }
    Ok(joined)
}

async fn admit(
    remote: &str,
    token_text: &str,
    params: JoinParams,
    old: Option<&Certs>,
) -> Result<Joined> {
    let token: JoinToken = token_text.trim().parse()?;
    let ca_pem = tls::fetch_trusted_ca(remote, &token).await?;
    if let Some(old) = old
        && weft_proto::identity::ca_fingerprint(&old.ca_pem)? != token.ca_fingerprint
    {
        return Err(Error::OtherCluster {
            addr: remote.to_string(),
        });
    }
    let key = NodeKey::generate()?;
    let csr_pem = key.csr_pem()?;
    let (rejoin_cert_pem, rejoin_proof) = match old {
        Some(old) => (
            old.cert_pem.clone(),
            tls::sign_proof(&NodeKey::from_pem(&old.key_pem)?, &csr_pem)?,
        ),
        None => (String::new(), Vec::new()),
    };
    let channel = tls::channel_to_manager(remote, &ca_pem, None).await?;
    let rpc = |status| Error::Rpc {
        addr: remote.to_string(),
        status,
    };
    // Before the token goes out (and the cluster counts this node): the
    // cluster's WireGuard port must be free here, or encrypted networks
    // could never reach this node.
    let info = JoinClient::new(channel.clone())
        .get_ca_cert(pb::GetCaCertRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    if let Ok(port) = u16::try_from(info.wg_port)
        && port != 0
    {
        udp_port_free(port, "WireGuard")?;
    }
    let resp = JoinClient::new(channel)
        .join(pb::JoinRequest {
            token: token.to_string(),
            csr_pem,
            hostname: params.hostname,
            advertise_addr: params.advertise_addr,
            data_path_addr: params.data_path_addr,
            underlay_mtu: params.underlay_mtu,
            rejoin_cert_pem,
            rejoin_proof,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let role = pb::NodeRole::try_from(resp.role).unwrap_or(pb::NodeRole::Unspecified);
    if role == pb::NodeRole::Unspecified || resp.node_id.is_empty() || resp.cert_pem.is_empty() {
        return Err(Error::BadAnswer {
            addr: remote.to_string(),
            what: "an incomplete join response".into(),
        });
    }
    Ok(Joined {
        node_id: resp.node_id,
        role,
        cluster_id: resp.cluster_id,
        certs: Certs {
            ca_pem: resp.ca_pem,
            cert_pem: resp.cert_pem,
            key_pem: key.to_pem(),
        },
        manager_addrs: resp.manager_addrs,
        manager_node_ids: resp.manager_node_ids,
    })
}
