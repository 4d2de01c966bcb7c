//! Keeping the Raft voter set equal to the managers in the store.
//!
//! The store says which nodes *should* be managers (join with a manager
//! token, `node promote`, `node demote`, `node rm`); Raft membership follows,
//! one step at a time, driven by the leader:
//!
//! ```text
//!  store: role=manager, not in Raft ──▶ AddLearner ──(caught up)──▶ SetVoters(+id)
//!  store: role=worker or removed, voter ──────────────────────────▶ SetVoters(-id)
//! ```
//!
//! [`plan`] decides the next step purely; the leader's loop executes it.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::{NodeId, Role, State};

/// One membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipOp {
    /// Start replicating to a new manager.
    AddLearner {
        /// The node.
        id: NodeId,
        /// Its Raft (manager-port) address.
        addr: String,
    },
    /// Make exactly these nodes the voters (learners not listed are dropped).
    SetVoters(BTreeSet<NodeId>),
}

/// The next membership change, if any. `voters` and `learners` are the
/// current Raft configuration; `caught_up` says whether a learner's log is
/// close enough to the leader's to be promoted without stalling commits.
pub fn plan(
    state: &State,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeMap<NodeId, String>,
    caught_up: impl Fn(NodeId) -> bool,
) -> Option<MembershipOp> {
    let wanted: BTreeSet<NodeId> = state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager)
        .map(|n| n.id)
        .collect();
    // Only nodes that hold a manager certificate run a manager and can be
    // added; a promoted node renews its certificate first.
    let ready: BTreeSet<NodeId> = state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager && n.cert_role == Role::Manager)
        .map(|n| n.id)
        .collect();

    // Shrink first: a demoted or removed voter leaves before anyone joins,
    // so the voter set never grows past what the store asks for.
    let stale: BTreeSet<NodeId> = voters.difference(&wanted).copied().collect();
    let stale_learners = learners.keys().any(|l| !wanted.contains(l));
    if !stale.is_empty() || stale_learners {
        let keep: BTreeSet<NodeId> = voters.intersection(&wanted).copied().collect();
        if !keep.is_empty() {
            return Some(MembershipOp::SetVoters(keep));
        }
    }

    for id in ready.difference(voters) {
        let node = &state.nodes[id];
        match learners.get(id) {
            None => {
                return Some(MembershipOp::AddLearner {
                    id: *id,
                    addr: node.addr.clone(),
                });
            }
            Some(addr) if *addr != node.addr => {
                // Re-advertised: re-adding the learner updates its address.
                return Some(MembershipOp::AddLearner {
                    id: *id,
                    addr: node.addr.clone(),
                });
            }
            Some(_) if caught_up(*id) => {
                let mut next = voters.clone();
                next.insert(*id);
                return Some(MembershipOp::SetVoters(next));
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Node;

    fn state(nodes: &[(u64, Role)]) -> State {
        let mut s = State::default();
        for (id, role) in nodes {
            s.nodes.insert(
                NodeId(*id),
                Node {
                    id: NodeId(*id),
                    role: *role,
                    cert_role: *role,
                    addr: format!("198.18.0.{id}:4377"),
                    ..Default::default()
                },
            );
        }
        s
    }

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn steady_state_needs_nothing() {
        let s = state(&[(1, Role::Manager), (2, Role::Worker)]);
        assert_eq!(plan(&s, &ids(&[1]), &BTreeMap::new(), |_| true), None);
    }

    #[test]
    fn new_manager_becomes_learner_then_voter() {
        let s = state(&[(1, Role::Manager), (2, Role::Manager)]);
        assert_eq!(
            plan(&s, &ids(&[1]), &BTreeMap::new(), |_| true),
            Some(MembershipOp::AddLearner {
                id: NodeId(2),
                addr: "198.18.0.2:4377".into()
            })
        );
        let learners: BTreeMap<_, _> = [(NodeId(2), "198.18.0.2:4377".to_string())].into();
        assert_eq!(plan(&s, &ids(&[1]), &learners, |_| false), None);
        assert_eq!(
            plan(&s, &ids(&[1]), &learners, |_| true),
            Some(MembershipOp::SetVoters(ids(&[1, 2])))
        );
    }

    #[test]
    fn promoted_node_waits_for_its_manager_certificate() {
        let mut s = state(&[(1, Role::Manager), (2, Role::Manager)]);
        s.nodes.get_mut(&NodeId(2)).unwrap().cert_role = Role::Worker;
        assert_eq!(plan(&s, &ids(&[1]), &BTreeMap::new(), |_| true), None);
    }

    #[test]
    fn demoted_and_removed_voters_leave() {
        let s = state(&[(1, Role::Manager), (2, Role::Worker)]);
        assert_eq!(
            plan(&s, &ids(&[1, 2, 3]), &BTreeMap::new(), |_| true),
            Some(MembershipOp::SetVoters(ids(&[1])))
        );
    }

    #[test]
    fn stale_learner_is_dropped() {
        let s = state(&[(1, Role::Manager), (2, Role::Worker)]);
        let learners: BTreeMap<_, _> = [(NodeId(2), "x".to_string())].into();
        assert_eq!(
            plan(&s, &ids(&[1]), &learners, |_| true),
            Some(MembershipOp::SetVoters(ids(&[1])))
        );
    }
}
