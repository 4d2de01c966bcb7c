//! Who may call what on the manager port: the certificate says who the
//! caller is, the store says what that node may do *now*.
//!
//! A certificate is a claim frozen at issue time (node ID, role, cluster);
//! membership changes after it. So every call is checked twice:
//!
//! ```text
//!  TLS handshake   chain to the cluster CA; node not in `removed`   (server.rs: is_revoked)
//!  every call      certificate: this cluster, not expired, role     (weft_proto::tls::require_*)
//!                  store: node exists, not removed, role as needed  (this module)
//! ```
//!
//! | service    | certificate        | store                                                  |
//! |------------|--------------------|--------------------------------------------------------|
//! | Control    | manager            | a manager now                                          |
//! | Raft       | manager            | a manager now, or a member of this node's Raft group;  |
//! |            |                    | anyone certified while this manager has no state yet   |
//! | Raft.Propose | manager          | a manager now                                          |
//! | Dispatcher | any, for itself    | a member now                                           |
//! | Dispatcher.ReportProbe | any, for itself | a member now; taken only for a probe       |
//! |            |                    | request made of that node ([`crate::core::Core::probe`]) |
//! | Dispatcher.FetchImage, | any, for itself | a member now, and a target of that fetch   |
//! | .ReportImageFetch |         | (checked by [`crate::imagepush::Pushes`])              |
//!
//! Why Raft accepts group members that the store no longer lists as
//! managers: a demoted leader must keep replicating until the membership
//! change that removes it commits, and a follower that lags in applying must
//! still accept the leader that will bring it up to date. Removed nodes are
//! refused everywhere, whatever the Raft group says. Why a manager with no
//! state accepts any certified manager: a freshly joined manager learns the
//! cluster from the leader's first AppendEntries, and the certificate chain
//! to the cluster CA (pinned at join by the token's fingerprint) is all it
//! can check until then.
//!
//! The checks are pure functions of the state, so they are tested without a
//! network; [`crate::core::Core`] wires them to requests.

use tonic::Status;
use weft_proto::identity::PeerIdentity;

use crate::store::{Node, NodeId, Role, State};

/// The node a certificate names, as a [`NodeId`].
fn node_id(id: &PeerIdentity) -> Result<NodeId, Status> {
    id.node_id.parse().map_err(|_| {
        Status::permission_denied(format!(
            "the certificate names {:?}, which is not a node of this cluster",
            id.node_id
        ))
    })
}

/// Whether `id` belongs to a node removed from the cluster: its
/// certificate is refused at the TLS handshake.
pub fn is_revoked(state: &State, id: &PeerIdentity) -> bool {
    id.node_id
        .parse()
        .is_ok_and(|n: NodeId| state.removed.contains(&n))
}

/// The caller's node, if it is a member now (not removed, not unknown).
pub fn member<'s>(state: &'s State, id: &PeerIdentity) -> Result<&'s Node, Status> {
    let n = node_id(id)?;
    if state.removed.contains(&n) {
        return Err(Status::permission_denied(format!(
            "node {n} was removed from the cluster; its certificate is revoked. \
             Run `weft leave --force` on it, then join again with a fresh token"
        )));
    }
    state.nodes.get(&n).ok_or_else(|| {
        Status::permission_denied(format!("node {n} is not a member of this cluster"))
    })
}

/// The caller's node, if it is a manager now. A demoted manager's
/// certificate still says `manager` until it renews; the store wins.
pub fn manager<'s>(state: &'s State, id: &PeerIdentity) -> Result<&'s Node, Status> {
    let node = member(state, id)?;
    match node.role {
        Role::Manager => Ok(node),
        Role::Worker => Err(Status::permission_denied(format!(
            "node {} is no longer a manager (it was demoted); its manager certificate \
             is not accepted any more",
            node.id
        ))),
    }
}

/// Whether a Raft peer may call this manager's Raft service (not
/// `Propose`, which writes on the caller's behalf: that needs [`manager`]).
/// `in_group` says whether the caller is a voter or learner in this node's
/// current Raft membership.
pub fn raft_peer(state: &State, id: &PeerIdentity, in_group: bool) -> Result<(), Status> {
    if state.cluster.is_none() {
        // Not caught up yet (see the module header); `member` refuses the
        // removed nodes it already knows of.
        return if is_revoked(state, id) {
            member(state, id).map(|_| ())
        } else {
            Ok(())
        };
    }
    match manager(state, id) {
        Ok(_) => Ok(()),
        Err(_) if in_group && !is_revoked(state, id) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;
    use weft_proto::identity::Role as CertRole;

    use super::*;

    fn cert(node: NodeId, role: CertRole) -> PeerIdentity {
        PeerIdentity {
            node_id: node.to_string(),
            role,
            cluster_id: "c".into(),
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::now_utc() + time::Duration::hours(1),
        }
    }

    fn state() -> State {
        let mut s = State {
            cluster: Some(crate::store::tests::cluster()),
            ..Default::default()
        };
        for (id, role) in [(1, Role::Manager), (2, Role::Worker), (3, Role::Worker)] {
            s.nodes.insert(
                NodeId(id),
                Node {
                    id: NodeId(id),
                    role,
                    ..Default::default()
                },
            );
        }
        s.removed.insert(NodeId(4));
        s
    }

    #[test]
    fn the_store_decides_the_role() {
        let s = state();
        let m = CertRole::Manager;
        assert!(manager(&s, &cert(NodeId(1), m)).is_ok());
        // Demoted: the certificate still says manager.
        let e = manager(&s, &cert(NodeId(2), m)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("no longer a manager"), "{e}");
        // Removed, and never a member.
        let e = manager(&s, &cert(NodeId(4), m)).unwrap_err();
        assert!(e.message().contains("was removed"), "{e}");
        let e = manager(&s, &cert(NodeId(9), m)).unwrap_err();
        assert!(e.message().contains("not a member"), "{e}");
        let bad = PeerIdentity {
            node_id: "not-an-id".into(),
            ..cert(NodeId(1), m)
        };
        assert_eq!(
            manager(&s, &bad).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // Members of either role may use the dispatcher.
        assert!(member(&s, &cert(NodeId(3), CertRole::Worker)).is_ok());
        assert!(member(&s, &cert(NodeId(4), CertRole::Worker)).is_err());
    }

    #[test]
    fn raft_peers_are_managers_or_group_members_never_removed_nodes() {
        let s = state();
        let m = CertRole::Manager;
        assert!(raft_peer(&s, &cert(NodeId(1), m), false).is_ok());
        // A demoted leader still in the group may finish its own removal.
        assert!(raft_peer(&s, &cert(NodeId(2), m), true).is_ok());
        assert!(raft_peer(&s, &cert(NodeId(2), m), false).is_err());
        // Removed is final, whatever the group says.
        assert!(raft_peer(&s, &cert(NodeId(4), m), true).is_err());
        assert!(raft_peer(&s, &cert(NodeId(9), m), false).is_err());
        // A manager with no state yet (just joined) takes the certificate's word,
        // except for the nodes it already knows were removed.
        let mut fresh = State::default();
        assert!(raft_peer(&fresh, &cert(NodeId(9), m), false).is_ok());
        fresh.removed.insert(NodeId(9));
        assert!(raft_peer(&fresh, &cert(NodeId(9), m), false).is_err());
    }

    #[test]
    fn revocation_follows_the_removed_set() {
        let s = state();
        assert!(is_revoked(&s, &cert(NodeId(4), CertRole::Worker)));
        assert!(!is_revoked(&s, &cert(NodeId(1), CertRole::Manager)));
        assert!(!is_revoked(
            &s,
            &PeerIdentity {
                node_id: "zz".into(),
                ..cert(NodeId(1), CertRole::Manager)
            }
        ));
    }
}
