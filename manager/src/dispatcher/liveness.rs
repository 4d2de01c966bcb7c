//! Node liveness from heartbeats, decided purely.
//!
//! The leader's dispatcher records when it last heard from each node;
//! [`Liveness::plan`] turns that into `SetNodeState` commands. A node that
//! misses three heartbeat periods is `down`; one that heartbeats again is
//! `ready`. A new leader gives every node a grace period of three periods
//! from the moment it took over, so a leader change never marks live nodes
//! down. The grace runs on while nodes keep arriving: thousands of nodes
//! reconnecting to a new leader take longer than three periods, and a node
//! still waiting its turn is not down (marking it so would move its tasks
//! and change every other node's config). Nor is a node back early whose
//! heartbeats the leader, busy with the herd, answers late. It ends three
//! periods after the last node heard from for the first time, and never
//! later than [`MAX_TAKEOVER_PERIODS`] periods after the takeover.
//!
//! With a disconnect grace set (`--disconnect-grace`), a node whose session
//! ended without notice (its daemon's connection closed: the process died)
//! and that opened no new one within the grace is `down` at once, without
//! waiting for the heartbeats it misses. A daemon that stops on purpose
//! (SIGTERM: a restart, an upgrade) says so in a last heartbeat, and its
//! session's end starts no grace.
//!
//! Most nodes silent at once is more likely a fault on the leader's side
//! (its network, its load, a pause of its process) than that many deaths:
//! while more than half of the ready nodes (and at least
//! [`MASS_SILENCE_MIN`]) have missed two heartbeats or lost their session,
//! no node is marked down, for at most [`MAX_HOLD_PERIODS`] periods (the
//! idea of Kubernetes' "full disruption" mode). Marking them down would
//! move every task and change every node's config, and the nodes would
//! come back to find their tasks gone. A mass failure that is real is
//! marked once the hold ends.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::store::{Command, NodeId, NodeState, State};

/// Heartbeats missed before a node is declared down.
pub const MISSED_HEARTBEATS: u32 = 3;

/// The longest a new leader's grace for nodes it has not heard from yet
/// runs, in heartbeat periods, however long nodes keep arriving.
pub const MAX_TAKEOVER_PERIODS: u32 = 30;

/// Fewest silent nodes that can hold down marks back: one or two nodes
/// dying together is common, and in a small cluster they are its majority.
pub const MASS_SILENCE_MIN: usize = 3;

/// Heartbeat periods a ready node has missed when it counts as silent for
/// the hold: nodes cut off together cross the three-period deadline spread
/// over one period, and all of them are two periods silent by the time the
/// first crosses it.
const SILENT_PERIODS: u32 = 2;

/// The longest down marks are held back while most nodes are silent, in
/// heartbeat periods.
pub const MAX_HOLD_PERIODS: u32 = 30;

/// What the hold against mass silence did in one plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hold {
    /// Half of the ready nodes or fewer are silent: down marks go through.
    #[default]
    Off,
    /// Most ready nodes are silent: `held` down marks were left out.
    Holding {
        silent: usize,
        ready: usize,
        held: usize,
    },
    /// Most are still silent after [`MAX_HOLD_PERIODS`]: down marks go
    /// through.
    Expired { silent: usize, ready: usize },
}

/// The commands the store needs, and whether down marks were held back.
#[derive(Debug, Default)]
pub struct Plan {
    pub commands: Vec<Command>,
    pub hold: Hold,
}

/// Last-seen times, kept only on the leader and only in memory.
#[derive(Debug)]
pub struct Liveness {
    since: Instant,
    /// When a node was last heard from for the first time since `since`.
    last_arrival: Instant,
    last_seen: HashMap<NodeId, Instant>,
    /// Nodes whose session ended without notice, and when.
    disconnected: HashMap<NodeId, Instant>,
    /// Nodes that said they are stopping: the end of their session that
    /// follows is no failure.
    stopping: HashSet<NodeId>,
    /// Since when most ready nodes have been silent, if they are.
    mass_since: Option<Instant>,
}

impl Liveness {
    /// Starts tracking at `now` (when this manager became leader).
    pub fn new(now: Instant) -> Self {
        Liveness {
            since: now,
            last_arrival: now,
            last_seen: HashMap::new(),
            disconnected: HashMap::new(),
            stopping: HashSet::new(),
            mass_since: None,
        }
    }

    /// Records that `id` opened a session.
    pub fn session_opened(&mut self, id: NodeId, now: Instant) {
        self.disconnected.remove(&id);
        self.stopping.remove(&id);
        self.seen(id, now);
    }

    /// Records that `id` said it is stopping.
    pub fn stopping(&mut self, id: NodeId) {
        self.stopping.insert(id);
    }

    /// Records that the session of `id` ended (and no newer one is open).
    pub fn session_ended(&mut self, id: NodeId, now: Instant) {
        if !self.stopping.remove(&id) {
            self.disconnected.insert(id, now);
        }
    }

    /// When the session of `id` ended without notice, if it did and the
    /// node was not heard from since.
    fn disconnected_at(&self, id: NodeId) -> Option<Instant> {
        let at = *self.disconnected.get(&id)?;
        let heard_since = self.last_seen.get(&id).is_some_and(|t| *t > at);
        (!heard_since).then_some(at)
    }

    /// Records a heartbeat (or a session start) from `id`.
    pub fn seen(&mut self, id: NodeId, now: Instant) {
        if self.last_seen.insert(id, now).is_none() {
            self.last_arrival = self.last_arrival.max(now);
        }
    }

    /// Where the silence of a node not heard from since the takeover counts
    /// from: the last first arrival, so the grace lasts while nodes keep
    /// coming back, but no later than the cap.
    fn takeover_mark(&self, period: Duration) -> Instant {
        let cap = self.since + period * (MAX_TAKEOVER_PERIODS - MISSED_HEARTBEATS);
        self.last_arrival.min(cap)
    }

    /// Forgets a node (it left or was removed).
    pub fn forget(&mut self, id: NodeId) {
        self.last_seen.remove(&id);
        self.disconnected.remove(&id);
        self.stopping.remove(&id);
    }

    /// Whether `id` heartbeated within the allowed window.
    pub fn is_alive(&self, id: NodeId, period: Duration, now: Instant) -> bool {
        match self.last_seen.get(&id) {
            Some(t) => now.saturating_duration_since(*t) <= period * MISSED_HEARTBEATS,
            None => false,
        }
    }

    /// The state changes the store needs to match what the leader observes,
    /// with heartbeats every `period` and the disconnect grace `grace`
    /// (`None`: off). Down marks are left out while most nodes are silent
    /// (the module's doc); `&mut` only to remember since when.
    pub fn plan(
        &mut self,
        state: &State,
        period: Duration,
        grace: Option<Duration>,
        now: Instant,
        now_ms: u64,
    ) -> Plan {
        let deadline = period * MISSED_HEARTBEATS;
        let takeover = self.takeover_mark(period);
        let (mut ready, mut silent) = (0, 0);
        let mut changes = Vec::new();
        for node in state.nodes.values() {
            let last = self.last_seen.get(&node.id).copied();
            // Silence counts from the takeover mark at the earliest: while
            // the herd arrives, a busy new leader may answer a node that
            // came back early late enough to miss its heartbeats, and that
            // is no death either.
            let since = last.map_or(takeover, |t| t.max(takeover));
            let silent_for = now.saturating_duration_since(since);
            let alive = last.is_some() && silent_for <= deadline;
            let ended = self.disconnected_at(node.id);
            if node.state == NodeState::Ready {
                ready += 1;
                if silent_for > period * SILENT_PERIODS || ended.is_some() {
                    silent += 1;
                }
            }
            let gone = grace.and_then(|g| {
                let for_ = now.saturating_duration_since(ended?);
                (for_ > g).then_some((for_, g))
            });
            let want = if gone.is_some() {
                NodeState::Down
            } else if alive {
                NodeState::Ready
            } else if silent_for > deadline {
                NodeState::Down
            } else {
                continue; // within the grace period of a new leader
            };
            if node.state != want {
                changes.push((node.id, want, gone, silent_for));
            }
        }
        let mut hold = self.hold(silent, ready, period, now);
        let mut commands = Vec::with_capacity(changes.len());
        for (id, want, gone, silent_for) in changes {
            if let (Hold::Holding { held, .. }, NodeState::Down) = (&mut hold, want) {
                *held += 1;
                continue;
            }
            // Made only for a change: this runs over every node several
            // times a second.
            let message = match (want, gone) {
                (NodeState::Down, Some((for_, g))) => format!(
                    "its session ended without notice {:.1}s ago and no new one opened \
                     within the disconnect grace of {}ms",
                    for_.as_secs_f64(),
                    g.as_millis()
                ),
                (NodeState::Down, None) => format!(
                    "no heartbeat for {:.1}s (period {:.1}s)",
                    silent_for.as_secs_f64(),
                    period.as_secs_f64()
                ),
                _ => String::new(),
            };
            commands.push(Command::SetNodeState {
                id,
                state: want,
                message,
                now_ms,
            });
        }
        Plan { commands, hold }
    }

    /// Whether down marks are held back, with `silent` of `ready` nodes
    /// silent now.
    fn hold(&mut self, silent: usize, ready: usize, period: Duration, now: Instant) -> Hold {
        if silent < MASS_SILENCE_MIN || silent * 2 <= ready {
            self.mass_since = None;
            return Hold::Off;
        }
        let since = *self.mass_since.get_or_insert(now);
        if now.saturating_duration_since(since) < period * MAX_HOLD_PERIODS {
            Hold::Holding {
                silent,
                ready,
                held: 0,
            }
        } else {
            Hold::Expired { silent, ready }
        }
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

    /// Nodes 1, 2 and 3, all ready.
    fn three_ready() -> State {
        state(&[
            (1, NodeState::Ready),
            (2, NodeState::Ready),
            (3, NodeState::Ready),
        ])
    }

    #[test]
    fn grace_period_after_leader_change() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let s = state(&[(1, NodeState::Ready)]);
        assert!(
            l.plan(&s, P, None, t0 + Duration::from_millis(2900), 0)
                .commands
                .is_empty()
        );
        let cmds = l
            .plan(&s, P, None, t0 + Duration::from_millis(3100), 0)
            .commands;
        assert!(matches!(
            cmds.as_slice(),
            [Command::SetNodeState {
                state: NodeState::Down,
                ..
            }]
        ));
    }

    #[test]
    fn the_takeover_grace_lasts_while_nodes_keep_arriving() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = Liveness::new(t0);
        let s = three_ready();
        // Node 1 is back at 2.5 s, node 2 at 5 s: node 3, not heard from,
        // waits its turn until 3 periods after the last arrival.
        l.session_opened(NodeId(1), ms(2500));
        l.seen(NodeId(1), ms(4500));
        l.session_opened(NodeId(2), ms(5000));
        l.seen(NodeId(1), ms(7000));
        l.seen(NodeId(2), ms(7000));
        assert!(downs(&l.plan(&s, P, None, ms(7900), 0)).is_empty());
        assert_eq!(downs(&l.plan(&s, P, None, ms(8100), 0)), [3]);
        // A node heard from before, then silent, is not covered (3 is down
        // by now).
        let s = state(&[
            (1, NodeState::Ready),
            (2, NodeState::Ready),
            (3, NodeState::Down),
        ]);
        assert_eq!(downs(&l.plan(&s, P, None, ms(10_600), 0)), [1, 2]);
    }

    #[test]
    fn a_node_back_early_is_not_down_while_the_herd_arrives() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = Liveness::new(t0);
        let s = three_ready();
        // Node 1 is back at 0.5 s and then not heard from (the new leader
        // is busy with the herd); nodes 2 and 3 arrive until 5 s.
        l.session_opened(NodeId(1), ms(500));
        l.session_opened(NodeId(2), ms(3000));
        l.session_opened(NodeId(3), ms(5000));
        l.seen(NodeId(2), ms(7000));
        l.seen(NodeId(3), ms(7000));
        // Silent for 5 s, but the herd arrived until 5 s: not down yet.
        assert!(downs(&l.plan(&s, P, None, ms(5500), 0)).is_empty());
        assert!(downs(&l.plan(&s, P, None, ms(7900), 0)).is_empty());
        // Three periods after the last arrival, it is.
        assert_eq!(downs(&l.plan(&s, P, None, ms(8100), 0)), [1]);
    }

    #[test]
    fn the_takeover_grace_has_a_cap() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let s = state(&[(1, NodeState::Ready), (2, NodeState::Ready)]);
        // A trickle of arrivals (node 1 keeps coming back as a new node
        // after a forget) cannot hold node 2's grace open for ever.
        for i in 0..30u64 {
            l.forget(NodeId(1));
            l.seen(NodeId(1), t0 + Duration::from_secs(i));
        }
        let cap = P * MAX_TAKEOVER_PERIODS;
        let now = t0 + cap;
        assert!(downs(&l.plan(&s, P, None, now - Duration::from_millis(100), 0)).is_empty());
        assert_eq!(
            downs(&l.plan(&s, P, None, now + Duration::from_millis(100), 0)),
            [2]
        );
    }

    #[test]
    fn heartbeat_marks_ready_and_silence_marks_down() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let s = state(&[(1, NodeState::Unknown), (2, NodeState::Ready)]);
        l.seen(NodeId(1), t0 + Duration::from_millis(500));
        l.seen(NodeId(2), t0 + Duration::from_millis(500));
        let cmds = l.plan(&s, P, None, t0 + Duration::from_secs(1), 0).commands;
        assert_eq!(cmds.len(), 1, "only node 1 changes: {cmds:?}");
        assert!(matches!(
            &cmds[0],
            Command::SetNodeState { id, state: NodeState::Ready, .. } if *id == NodeId(1)
        ));
        // Node 2 stays silent for 3 periods after its last heartbeat.
        let cmds = l
            .plan(&s, P, None, t0 + Duration::from_millis(3600), 0)
            .commands;
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
        assert!(
            l.plan(&s, P, None, t0 + Duration::from_secs(2), 0)
                .commands
                .is_empty()
        );
        assert!(l.is_alive(NodeId(1), P, t0 + Duration::from_secs(2)));
        assert!(!l.is_alive(NodeId(1), P, t0 + Duration::from_secs(4)));
    }

    const G: Option<Duration> = Some(Duration::from_millis(300));

    fn downs(plan: &Plan) -> Vec<u64> {
        plan.commands
            .iter()
            .filter_map(|c| match c {
                Command::SetNodeState {
                    id,
                    state: NodeState::Down,
                    ..
                } => Some(id.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_session_that_ends_without_notice_marks_down_after_the_grace() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = Liveness::new(t0);
        // 4 to 7 heartbeat throughout, so 1 to 3 are never most of the
        // nodes (the hold).
        let s = state(&(1..=7).map(|id| (id, NodeState::Ready)).collect::<Vec<_>>());
        let plan = |l: &mut Liveness, grace, at| {
            for id in 4..=7 {
                l.seen(NodeId(id), at);
            }
            l.plan(&s, P, grace, at, 0)
        };
        for id in 1..=7 {
            l.session_opened(NodeId(id), t0);
        }
        // 1 dies; 2 stops on purpose; 3 dies and is back within the grace.
        l.session_ended(NodeId(1), ms(100));
        l.stopping(NodeId(2));
        l.session_ended(NodeId(2), ms(100));
        l.session_ended(NodeId(3), ms(100));
        l.session_opened(NodeId(3), ms(300));
        assert!(
            downs(&plan(&mut l, G, ms(350))).is_empty(),
            "within the grace"
        );
        let p = plan(&mut l, G, ms(450));
        assert_eq!(downs(&p), vec![1]);
        assert!(
            matches!(&p.commands[0], Command::SetNodeState { message, .. } if message.contains("disconnect grace of 300ms")),
            "{p:?}"
        );
        // Off: only heartbeats decide (3 periods).
        assert!(downs(&plan(&mut l, None, ms(450))).is_empty());
        // 2, which said it stops, goes down only when its heartbeats stop.
        assert_eq!(downs(&plan(&mut l, G, ms(3100))), vec![1, 2]);
        // Heard from again (a new session): no longer down for it (2 and 3
        // have been silent for 3 periods by now).
        l.session_opened(NodeId(1), ms(3200));
        assert_eq!(downs(&plan(&mut l, G, ms(3400))), vec![2, 3]);
    }

    /// Nodes 1 to `n`, all ready; 1 (the leader's own) heard from at `at`,
    /// the others last at `t0`.
    fn cut_off(n: u64, t0: Instant, at: Instant) -> (Liveness, State) {
        let mut l = Liveness::new(t0);
        for id in 1..=n {
            l.session_opened(NodeId(id), t0);
        }
        l.seen(NodeId(1), at);
        let s = state(&(1..=n).map(|id| (id, NodeState::Ready)).collect::<Vec<_>>());
        (l, s)
    }

    #[test]
    fn most_nodes_silent_at_once_are_not_marked_down() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // The leader hears from none of its 4 other nodes (its network is
        // cut, or it was paused): their marks are held back.
        let (mut l, s) = cut_off(5, t0, ms(3100));
        let p = l.plan(&s, P, None, ms(3100), 0);
        assert!(p.commands.is_empty(), "{p:?}");
        assert_eq!(
            p.hold,
            Hold::Holding {
                silent: 4,
                ready: 5,
                held: 4
            }
        );
        // They answer again: nothing to do, and the hold is off.
        for id in 2..=5 {
            l.seen(NodeId(id), ms(5000));
        }
        l.seen(NodeId(1), ms(5000));
        let p = l.plan(&s, P, None, ms(5100), 0);
        assert!(p.commands.is_empty(), "{p:?}");
        assert_eq!(p.hold, Hold::Off);
        // Sessions lost past the disconnect grace count as silence too.
        for id in 2..=5 {
            l.session_ended(NodeId(id), ms(5200));
        }
        l.seen(NodeId(1), ms(5600));
        let p = l.plan(&s, P, G, ms(5600), 0);
        assert!(p.commands.is_empty(), "{p:?}");
        assert!(matches!(p.hold, Hold::Holding { held: 4, .. }), "{p:?}");
    }

    #[test]
    fn the_hold_has_a_cap() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (mut l, s) = cut_off(5, t0, ms(2100));
        // Two periods silent: the hold starts (nothing to hold yet).
        let p = l.plan(&s, P, None, ms(2100), 0);
        assert!(matches!(p.hold, Hold::Holding { held: 0, .. }), "{p:?}");
        let end = ms(2100) + P * MAX_HOLD_PERIODS;
        l.seen(NodeId(1), end);
        let before = l.plan(&s, P, None, end - Duration::from_millis(100), 0);
        assert!(before.commands.is_empty(), "{before:?}");
        // Still silent after it: a real mass failure, marked down.
        let after = l.plan(&s, P, None, end + Duration::from_millis(100), 0);
        assert_eq!(downs(&after), [2, 3, 4, 5]);
        assert_eq!(
            after.hold,
            Hold::Expired {
                silent: 4,
                ready: 5
            }
        );
    }

    #[test]
    fn a_few_silent_nodes_are_marked_down_without_a_hold() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Two of three: fewer than the minimum, though most of the nodes.
        let (mut l, s) = cut_off(3, t0, ms(3100));
        let p = l.plan(&s, P, None, ms(3100), 0);
        assert_eq!((downs(&p), p.hold), (vec![2, 3], Hold::Off));
        // Three of six (1 and two more heard from): not more than half.
        let (mut l, s) = cut_off(6, t0, ms(3100));
        for id in [2, 3] {
            l.seen(NodeId(id), ms(3100));
        }
        let p = l.plan(&s, P, None, ms(3100), 0);
        assert_eq!((downs(&p), p.hold), (vec![4, 5, 6], Hold::Off));
        // Nodes already down count neither way: 3 silent of 5 ready hold.
        let mut s = s;
        s.nodes.get_mut(&NodeId(2)).expect("node 2").state = NodeState::Down;
        let p = l.plan(&s, P, None, ms(3100), 0);
        assert!(matches!(p.hold, Hold::Holding { held: 3, .. }), "{p:?}");
    }

    #[test]
    fn a_node_heard_from_after_its_session_ended_is_not_disconnected() {
        // The leader's own node: it marks itself seen on every tick.
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let s = state(&[(1, NodeState::Ready)]);
        l.session_opened(NodeId(1), t0);
        l.session_ended(NodeId(1), t0 + Duration::from_millis(10));
        l.seen(NodeId(1), t0 + Duration::from_millis(20));
        assert!(downs(&l.plan(&s, P, G, t0 + Duration::from_millis(900), 0)).is_empty());
    }
}
