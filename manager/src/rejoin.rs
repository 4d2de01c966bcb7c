//! Rejoining with the same node ID, decided purely against the store.
//!
//! A node whose certificate expired while it was offline cannot renew (that
//! needs a valid certificate), so it joins again with a join token and
//! proves it holds its old identity (`weft_proto::tls::verify_proof`: the
//! expired certificate chains to the cluster CA and its key signed this
//! join's CSR). This module decides whether the node that certificate names
//! may have a new one: it must be of this cluster, still in the store (not
//! removed: node IDs are never reused, so a removed one stays refused), and
//! the token's role must be its role in the store — a worker token does not
//! rejoin a manager, nor a manager token a worker (promotion and demotion
//! are `weft node promote/demote`, not a side effect of a rejoin).
//!
//! An unexpired certificate is accepted too: the proof is the same
//! possession proof mutual TLS gives renewal, the join token is asked for
//! on top, and refusing it would only make a node whose clock runs ahead of
//! the managers' wait until theirs agrees that it has expired.

use weft_proto::identity::{NodeKey, PeerIdentity};
use weft_proto::tls::RejoinError;

use crate::ca::{ClusterCa, IssuedCert};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::store::{Node, NodeId, Role, State};

/// Why a rejoin was refused. Messages say what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum RejoinRefused {
    /// Only one of the rejoin certificate and proof was given.
    #[error("a rejoin needs both the old certificate and the proof by its key; one is missing")]
    Incomplete,
    /// The certificate or the proof failed (see [`RejoinError`]).
    #[error(transparent)]
    Proof(#[from] RejoinError),
    /// The certificate names another cluster.
    #[error(
        "the rejoin certificate is of cluster {cert_cluster}, not of this one ({cluster}); \
         leave that cluster with `weft leave --force` and join this one"
    )]
    OtherCluster {
        /// The certificate's cluster ID.
        cert_cluster: String,
        /// This cluster's ID.
        cluster: String,
    },
    /// The certificate's node ID is not one weft issues.
    #[error("the rejoin certificate names {0:?}, which is not a node ID of this cluster")]
    BadNodeId(String),
    /// The node was removed from the cluster.
    #[error(
        "node {0} was removed from the cluster and cannot rejoin as itself; run \
         `weft leave --force` on it, then `weft join` as a new node"
    )]
    Removed(NodeId),
    /// The store has no such node.
    #[error(
        "node {0} is not a member of this cluster; run `weft leave --force` on it, then \
         `weft join` as a new node"
    )]
    Unknown(NodeId),
    /// The token's role is not the node's role in the store.
    #[error(
        "node {node} is a {role} of this cluster and rejoins with the {role} join token, not \
         the {token} one (`weft join-token {role}` on a manager)"
    )]
    RoleMismatch {
        /// The node.
        node: NodeId,
        /// Its role in the store.
        role: &'static str,
        /// The role the token grants.
        token: &'static str,
    },
}

/// The store's record of the node `id` names, if it may rejoin with a
/// token granting `token_role`.
pub fn check(
    state: &State,
    cluster_id: &str,
    id: &PeerIdentity,
    token_role: Role,
) -> Result<Node, RejoinRefused> {
    if id.cluster_id != cluster_id {
        return Err(RejoinRefused::OtherCluster {
            cert_cluster: id.cluster_id.clone(),
            cluster: cluster_id.to_owned(),
        });
    }
    let node_id: NodeId = id
        .node_id
        .parse()
        .map_err(|_| RejoinRefused::BadNodeId(id.node_id.clone()))?;
    if state.removed.contains(&node_id) {
        return Err(RejoinRefused::Removed(node_id));
    }
    let node = state
        .nodes
        .get(&node_id)
        .ok_or(RejoinRefused::Unknown(node_id))?;
    if node.role != token_role {
        return Err(RejoinRefused::RoleMismatch {
            node: node_id,
            role: node.role.as_str(),
            token: token_role.as_str(),
        });
    }
    Ok(node.clone())
}

/// A new certificate for this manager, signed here with the CA key it
/// holds: for the only voter of its group whose certificate expired while
/// it was offline, when nobody else is left to rejoin with. The caller waits
/// until this manager leads and has applied its log. Checked as a rejoin is
/// (the node `expired_cert_pem` names is this one, of this cluster, a
/// manager in the store and not removed), and refused unless this manager
/// is still the only voter.
pub async fn reissue_own(core: &Core, expired_cert_pem: &str) -> Result<(NodeKey, IssuedCert)> {
    let me = core.node_id();
    let id = PeerIdentity::from_pem(expired_cert_pem).map_err(crate::ca::CaError::from)?;
    if id.node_id != me.to_string() {
        return Err(Error::FailedPrecondition(format!(
            "the certificate on disk names node {}, not this manager ({me})",
            id.node_id
        )));
    }
    let voters = core.voters();
    if voters.len() != 1 || !voters.contains(&me) {
        return Err(Error::FailedPrecondition(format!(
            "this manager is not the only voter ({voters:?}): it rejoins through another \
             manager with `weft join --token`"
        )));
    }
    let cluster = core.cluster()?;
    let node = core.read(|s| check(s, &cluster.id, &id, Role::Manager))?;
    let ca = ClusterCa::from_pem(&cluster.ca_cert_pem, &core.secrets()?.ca_key_pem)?;
    let key = NodeKey::generate().map_err(crate::ca::CaError::from)?;
    let csr = key.csr_pem().map_err(crate::ca::CaError::from)?;
    let issued = crate::join::reissue(core, &cluster, &ca, &node, &csr).await?;
    Ok((key, issued))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Command;
    use crate::testing;

    fn identity(node: NodeId, cluster: &str) -> PeerIdentity {
        let now = time::OffsetDateTime::now_utc();
        PeerIdentity {
            node_id: node.to_string(),
            role: weft_proto::identity::Role::Worker,
            cluster_id: cluster.into(),
            not_before: now - time::Duration::hours(2),
            not_after: now - time::Duration::hours(1),
        }
    }

    #[test]
    fn a_member_rejoins_with_its_own_role_only() {
        let mut s = testing::cluster(3);
        let c = s.cluster.as_ref().expect("cluster").id.clone();
        // Node 2 is a worker, node 1 the manager.
        let n = check(&s, &c, &identity(NodeId(2), &c), Role::Worker).expect("rejoins");
        assert_eq!(n.id, NodeId(2));
        check(&s, &c, &identity(NodeId(1), &c), Role::Manager).expect("the manager rejoins");
        let e = check(&s, &c, &identity(NodeId(2), &c), Role::Manager).unwrap_err();
        assert!(
            e.to_string().contains("rejoins with the worker join token"),
            "{e}"
        );
        let e = check(&s, &c, &identity(NodeId(1), &c), Role::Worker).unwrap_err();
        assert!(matches!(e, RejoinRefused::RoleMismatch { .. }), "{e}");

        // Demoted while offline: the store's role decides (its old
        // certificate said manager).
        testing::apply(
            &mut s,
            Command::SetRole {
                id: NodeId(3),
                role: Role::Manager,
                now_ms: 0,
            },
        );
        check(&s, &c, &identity(NodeId(3), &c), Role::Manager).expect("promoted");
        check(&s, &c, &identity(NodeId(3), &c), Role::Worker).unwrap_err();
    }

    #[test]
    fn removed_unknown_and_foreign_nodes_are_refused() {
        let mut s = testing::cluster(3);
        let c = s.cluster.as_ref().expect("cluster").id.clone();
        testing::apply(&mut s, Command::RemoveNode { id: NodeId(3) });
        let e = check(&s, &c, &identity(NodeId(3), &c), Role::Worker).unwrap_err();
        assert!(matches!(e, RejoinRefused::Removed(NodeId(3))), "{e}");
        assert!(e.to_string().contains("was removed"), "{e}");
        let e = check(&s, &c, &identity(NodeId(99), &c), Role::Worker).unwrap_err();
        assert!(matches!(e, RejoinRefused::Unknown(NodeId(99))), "{e}");
        let e = check(&s, &c, &identity(NodeId(2), "other"), Role::Worker).unwrap_err();
        assert!(matches!(e, RejoinRefused::OtherCluster { .. }), "{e}");
        let mut bad = identity(NodeId(2), &c);
        bad.node_id = "w1".into();
        let e = check(&s, &c, &bad, Role::Worker).unwrap_err();
        assert!(matches!(e, RejoinRefused::BadNodeId(_)), "{e}");
    }
}
