//! Node liveness from heartbeats, decided purely.
//!
//! The leader's dispatcher records when it last heard from each node;
//! [`Liveness::plan`] turns that into `SetNodeState` commands. A node that
//! misses three heartbeat periods is `down`; one that heartbeats again is
//! `ready`. A new leader gives every node a grace period of three periods
//! from the moment it took over, so a leader change never marks live nodes
//! down.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::store::{Command, NodeId, NodeState, State};

/// Heartbeats missed before a node is declared down.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Last-seen times, kept only on the leader and only in memory.
#[derive(Debug)]
pub struct Liveness {
    since: Instant,
    last_seen: HashMap<NodeId, Instant>,
}

impl Liveness {
    /// Starts tracking at `now` (when this manager became leader).
    pub fn new(now: Instant) -> Self {
        Liveness {
            since: now,
            last_seen: HashMap::new(),
        }
    }

    /// Records a heartbeat (or a session start) from `id`.
    pub fn seen(&mut self, id: NodeId, now: Instant) {
        self.last_seen.insert(id, now);
    }

    /// Forgets a node (it left or was removed).
    pub fn forget(&mut self, id: NodeId) {
        self.last_seen.remove(&id);
    }

    /// Whether `id` heartbeated within the allowed window.
    pub fn is_alive(&self, id: NodeId, period: Duration, now: Instant) -> bool {
        match self.last_seen.get(&id) {
            Some(t) => now.saturating_duration_since(*t) <= period * MISSED_HEARTBEATS,
            None => false,
        }
    }

    /// The state changes the store needs to match what the leader observes.
    pub fn plan(&self, state: &State, period: Duration, now: Instant, now_ms: u64) -> Vec<Command> {
        let deadline = period * MISSED_HEARTBEATS;
        let mut out = Vec::new();
        for node in state.nodes.values() {
            let last = self.last_seen.get(&node.id).copied();
            let silent_for = now.saturating_duration_since(last.unwrap_or(self.since));
            let alive = last.is_some() && silent_for <= deadline;
            let (want, message) = if alive {
                (NodeState::Ready, String::new())
            } else if silent_for > deadline {
                (
                    NodeState::Down,
                    format!(
                        "no heartbeat for {:.1}s (period {:.1}s)",
                        silent_for.as_secs_f64(),
                        period.as_secs_f64()
                    ),
                )
            } else {
                continue; // within the grace period of a new leader
            };
            if node.state != want {
                out.push(Command::SetNodeState {
                    id: node.id,
                    state: want,
                    message,
                    now_ms,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Node, Role};

    fn state(ids: &[(u64, NodeState)]) -> State {
        let mut s = State {
            cluster: Some(crate::testing::cluster_record()),
            ..Default::default()
        };
        for (id, st) in ids {
            s.nodes.insert(
                NodeId(*id),
                Node {
                    id: NodeId(*id),
                    role: Role::Worker,
                    state: *st,
                    ..Default::default()
                },
            );
        }
        s
    }

    const P: Duration = Duration::from_secs(1);

    #[test]
    fn grace_period_after_leader_change() {
        let t0 = Instant::now();
        let l = Liveness::new(t0);
        let s = state(&[(1, NodeState::Ready)]);
        assert!(
            l.plan(&s, P, t0 + Duration::from_millis(2900), 0)
                .is_empty()
        );
        let cmds = l.plan(&s, P, t0 + Duration::from_millis(3100), 0);
        assert!(matches!(
            cmds.as_slice(),
            [Command::SetNodeState {
                state: NodeState::Down,
                ..
            }]
        ));
    }

    #[test]
    fn heartbeat_marks_ready_and_silence_marks_down() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let s = state(&[(1, NodeState::Unknown), (2, NodeState::Ready)]);
        l.seen(NodeId(1), t0 + Duration::from_millis(500));
        l.seen(NodeId(2), t0 + Duration::from_millis(500));
        let cmds = l.plan(&s, P, t0 + Duration::from_secs(1), 0);
        assert_eq!(cmds.len(), 1, "only node 1 changes: {cmds:?}");
        assert!(matches!(
            &cmds[0],
            Command::SetNodeState { id, state: NodeState::Ready, .. } if *id == NodeId(1)
        ));
        // Node 2 stays silent for 3 periods after its last heartbeat.
        let cmds = l.plan(&s, P, t0 + Duration::from_millis(3600), 0);
        assert!(cmds.iter().any(|c| matches!(
            c,
            Command::SetNodeState { id, state: NodeState::Down, .. } if *id == NodeId(2)
        )));
    }

    #[test]
    fn no_commands_when_store_agrees() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let s = state(&[(1, NodeState::Ready)]);
        l.seen(NodeId(1), t0);
        assert!(l.plan(&s, P, t0 + Duration::from_secs(2), 0).is_empty());
        assert!(l.is_alive(NodeId(1), P, t0 + Duration::from_secs(2)));
        assert!(!l.is_alive(NodeId(1), P, t0 + Duration::from_secs(4)));
    }
}
