//! Keeping the Raft voter set equal to the managers in the store.
//!
//! The store says which nodes *should* be managers (join with a manager
//! token, `node promote`, `node demote`, `node rm`); Raft membership follows,
//! one step at a time, driven by the leader:
//!
//! ```text
//!  store: role=manager, not in Raft ──▶ AddLearner ──(caught up)──▶ SetVoters(+id)
//!  store: role=worker or removed, voter ──────────────────────────▶ SetVoters(-id)
//!  store: role=worker or removed, learner ────────────────────────▶ RemoveLearners(id)
//! ```
//!
//! [`plan`] decides the next step purely; the leader's loop executes it.
//!
//! A learner becomes a voter only once it has shown that it holds the log
//! ([`caught_up`]). A manager that never answers (one that is down, such as
//! the lost managers a forced recovery leaves in the store) stays a learner:
//! made a voter, it would be needed for every commit, and a group of one
//! live manager and one dead voter commits nothing.

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
    /// Make exactly these nodes the voters (voters not listed leave the
    /// group; learners stay).
    SetVoters(BTreeSet<NodeId>),
    /// Stop replicating to these learners and drop them from the group.
    RemoveLearners(BTreeSet<NodeId>),
}

/// How many entries a learner may be behind the leader's last entry and
/// still count as caught up: a few AppendEntries of a busy leader.
pub const CAUGHT_UP_LAG: u64 = 100;

/// Whether a learner that acknowledged the log up to `matched` (`None`:
/// it has not answered this leader) holds the log closely enough to become
/// a voter without stalling commits; `last` is the leader's last index.
pub fn caught_up(matched: Option<u64>, last: Option<u64>) -> bool {
    match (matched, last) {
        (Some(m), Some(l)) => l.saturating_sub(m) <= CAUGHT_UP_LAG,
        (Some(_), None) => true,
        (None, _) => false,
    }
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
    if !stale.is_empty() {
        let keep: BTreeSet<NodeId> = voters.intersection(&wanted).copied().collect();
        if !keep.is_empty() {
            return Some(MembershipOp::SetVoters(keep));
        }
    }
    // Then demoted or removed learners (openraft keeps learners through a
    // change of the voters: they need a change of their own).
    let stale_learners: BTreeSet<NodeId> = learners
        .keys()
        .filter(|l| !wanted.contains(l))
        .copied()
        .collect();
    if !stale_learners.is_empty() {
        return Some(MembershipOp::RemoveLearners(stale_learners));
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
    fn learner_that_never_answered_stays_a_learner() {
        // A forced recovery: this manager alone, two managers of the store
        // down. They may be learners, never voters, until they answer.
        let s = state(&[(1, Role::Manager), (2, Role::Manager), (3, Role::Manager)]);
        let learners: BTreeMap<_, _> = [
            (NodeId(2), "198.18.0.2:4377".to_string()),
            (NodeId(3), "198.18.0.3:4377".to_string()),
        ]
        .into();
        let matched: BTreeMap<NodeId, Option<u64>> =
            [(NodeId(2), None), (NodeId(3), Some(3))].into();
        let up = |id: NodeId| caught_up(matched.get(&id).copied().flatten(), Some(500));
        assert_eq!(plan(&s, &ids(&[1]), &learners, up), None);
        // Once one answers with the log, it becomes a voter.
        let matched: BTreeMap<NodeId, Option<u64>> = [(NodeId(2), Some(450))].into();
        let up = |id: NodeId| caught_up(matched.get(&id).copied().flatten(), Some(500));
        assert_eq!(
            plan(&s, &ids(&[1]), &learners, up),
            Some(MembershipOp::SetVoters(ids(&[1, 2])))
        );
    }

    #[test]
    fn caught_up_means_answered_and_close_to_the_leader() {
        assert!(!caught_up(None, Some(10)));
        assert!(!caught_up(None, None));
        assert!(caught_up(Some(10), Some(10)));
        assert!(caught_up(Some(10), Some(10 + CAUGHT_UP_LAG)));
        assert!(!caught_up(Some(10), Some(11 + CAUGHT_UP_LAG)));
    }

    #[test]
    fn stale_learner_is_dropped() {
        let s = state(&[(1, Role::Manager), (2, Role::Worker)]);
        let learners: BTreeMap<_, _> = [(NodeId(2), "x".to_string())].into();
        assert_eq!(
            plan(&s, &ids(&[1]), &learners, |_| true),
            Some(MembershipOp::RemoveLearners(ids(&[2])))
        );
    }

    #[test]
    fn removed_learners_go_before_a_new_manager_is_added() {
        // After a forced recovery: the lost managers (learners) were demoted
        // and removed, a fresh manager joins.
        let s = state(&[(1, Role::Manager), (4, Role::Manager)]);
        let learners: BTreeMap<_, _> = [
            (NodeId(2), "198.18.0.2:4377".to_string()),
            (NodeId(3), "198.18.0.3:4377".to_string()),
        ]
        .into();
        assert_eq!(
            plan(&s, &ids(&[1]), &learners, |_| true),
            Some(MembershipOp::RemoveLearners(ids(&[2, 3])))
        );
        assert_eq!(
            plan(&s, &ids(&[1]), &BTreeMap::new(), |_| true),
            Some(MembershipOp::AddLearner {
                id: NodeId(4),
                addr: "198.18.0.4:4377".into()
            })
        );
    }
}
