//! Quorum arithmetic for membership changes.
//!
//! Every operation that shrinks the manager set (demote, leave, rm) asks
//! [`check_removal`] first, so an operator cannot lose quorum by accident:
//! the refusal says how many managers would be left reachable and how many a
//! quorum needs.

use std::collections::BTreeSet;

use crate::store::NodeId;

/// Why removing a manager is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// The only manager cannot go.
    #[error(
        "node {0} is the last manager of the cluster; promote another node first (`weft node promote NODE`)"
    )]
    LastManager(NodeId),
    /// Removal would leave fewer reachable managers than a quorum.
    #[error(
        "removing manager {node} would leave {reachable_after} of {voters_after} managers reachable, \
         but a quorum needs {needed}: the cluster would stop accepting changes. \
         Bring the unreachable managers back first, or use --force if you accept that"
    )]
    WouldLoseQuorum {
        /// The manager being removed.
        node: NodeId,
        /// Managers that would remain reachable.
        reachable_after: usize,
        /// Voters that would remain.
        voters_after: usize,
        /// Majority of `voters_after`.
        needed: usize,
    },
}

/// Majority of `n` voters.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Checks that removing `node` from `voters` keeps a reachable majority.
/// `reachable` tells which managers are up right now.
pub fn check_removal(
    voters: &BTreeSet<NodeId>,
    reachable: impl Fn(NodeId) -> bool,
    node: NodeId,
) -> Result<(), QuorumError> {
    if !voters.contains(&node) {
        return Ok(());
    }
    let after: Vec<NodeId> = voters.iter().copied().filter(|v| *v != node).collect();
    if after.is_empty() {
        return Err(QuorumError::LastManager(node));
    }
    let reachable_after = after.iter().filter(|v| reachable(**v)).count();
    let needed = majority(after.len());
    if reachable_after < needed {
        return Err(QuorumError::WouldLoseQuorum {
            node,
            reachable_after,
            voters_after: after.len(),
            needed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn majority_of_small_clusters() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn last_manager_is_refused() {
        assert_eq!(
            check_removal(&set(&[1]), |_| true, NodeId(1)),
            Err(QuorumError::LastManager(NodeId(1)))
        );
    }

    #[test]
    fn healthy_three_can_lose_one() {
        assert_eq!(check_removal(&set(&[1, 2, 3]), |_| true, NodeId(3)), Ok(()));
    }

    #[test]
    fn three_with_one_down_cannot_lose_a_healthy_one() {
        let err = check_removal(&set(&[1, 2, 3]), |n| n != NodeId(2), NodeId(3)).unwrap_err();
        assert_eq!(
            err,
            QuorumError::WouldLoseQuorum {
                node: NodeId(3),
                reachable_after: 1,
                voters_after: 2,
                needed: 2
            }
        );
        assert!(err.to_string().contains("--force"));
    }

    #[test]
    fn removing_the_down_one_is_fine() {
        assert_eq!(
            check_removal(&set(&[1, 2, 3]), |n| n != NodeId(2), NodeId(2)),
            Ok(())
        );
    }

    #[test]
    fn non_voters_are_always_removable() {
        assert_eq!(check_removal(&set(&[1]), |_| false, NodeId(9)), Ok(()));
    }
}
