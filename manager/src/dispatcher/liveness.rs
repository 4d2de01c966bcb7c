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
//! (its network, its load) than that many deaths: while more than half of
//! the ready nodes (and at least [`MASS_SILENCE_MIN`]) have been silent for
//! one and a half periods or lost their session, no node is marked down,
//! for at most [`MAX_HOLD_PERIODS`] periods (the idea of Kubernetes' "full
//! disruption" mode). Marking them down would move every task and change
//! every node's config, and the nodes would come back to find their tasks
//! gone. When most answer again, the hold ends and the silence of those
//! still silent counts from its end: nodes come back one by one, over a
//! period or more. A mass failure that is real is marked once the hold has
//! lasted its longest.
//!
//! A leader whose own loop stalls for more than a period (its process
//! paused or starved) has not been listening: silence counts from the
//! stall's end, as from a takeover, so the backlog of heartbeats it has not
//! read yet is no death.

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

/// Silence, in half heartbeat periods, after which a ready node counts
/// towards the hold: nodes cut off together cross the three-period deadline
/// spread over about a period (more when the leader is slow to read their
/// heartbeats), and all of them are one and a half periods silent by the
/// time the first crosses it, with half a period to spare.
const SILENT_HALF_PERIODS: u32 = 3;

/// The most a hold's end or a stall of the leader's loop moves a node's
/// silence on past its last heartbeat, in periods: however often they
/// come, a node that died is marked down in the end. A node silent since
/// just before a hold that lasted its longest still gets its three
/// periods after the hold's end.
pub const MAX_FLOOR_PERIODS: u32 = MAX_HOLD_PERIODS + MISSED_HEARTBEATS;

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
    Holding { held: usize },
    /// Most are still silent after [`MAX_HOLD_PERIODS`]: down marks go
    /// through.
    Expired,
    /// Most answer again, before the hold's limit: this pass sends no down
    /// marks, and those still silent have three periods from now.
    Ended,
}

/// The commands the store needs, and whether down marks were held back.
#[derive(Debug, Default)]
pub struct Plan {
    pub commands: Vec<Command>,
    pub hold: Hold,
    /// Ready nodes, and how many of them count as silent for the hold.
    pub ready: usize,
    pub silent: usize,
    /// How long the loop had not run, when that was a stall.
    pub stalled: Option<Duration>,
}

/// Last-seen times, kept only on the leader and only in memory.
#[derive(Debug)]
pub struct Liveness {
    since: Instant,
    /// When a node was last heard from for the first time since `since`.
    last_arrival: Instant,
    last_seen: HashMap<NodeId, Instant>,
    /// When a plan first found each node in the store (nodes there at the
    /// first plan: the takeover): the silence of a node never heard from
    /// counts from there at the earliest, so one that joined long after the
    /// takeover has its three periods too.
    first_known: HashMap<NodeId, Instant>,
    /// Whether a plan ran yet.
    planned: bool,
    /// Nodes whose session ended without notice, and when.
    disconnected: HashMap<NodeId, Instant>,
    /// Nodes that said they are stopping: the end of their session that
    /// follows is no failure.
    stopping: HashSet<NodeId>,
    /// Since when most ready nodes have been silent, if they are.
    mass_since: Option<Instant>,
    /// Silence counts from here at the earliest: the end of a hold, or of
    /// a stall of this leader's own loop.
    fresh: Option<Instant>,
    /// When this leader's loop last made a plan or finished writing one.
    last_awake: Option<Instant>,
}

impl Liveness {
    /// Starts tracking at `now` (when this manager became leader).
    pub fn new(now: Instant) -> Self {
        Liveness {
            since: now,
            last_arrival: now,
            last_seen: HashMap::new(),
            first_known: HashMap::new(),
            planned: false,
            disconnected: HashMap::new(),
            stopping: HashSet::new(),
            mass_since: None,
            fresh: None,
            last_awake: None,
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

    /// Records that the loop finished writing its last plan: the time
    /// those writes took is no stall.
    pub fn awake(&mut self, now: Instant) {
        self.last_awake = Some(now);
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
        self.first_known.remove(&id);
        self.disconnected.remove(&id);
        self.stopping.remove(&id);
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
        // The loop plans every quarter period at the least, once its
        // writes are done: a longer gap is a stall (module doc).
        let stalled = self
            .last_awake
            .map(|t| now.saturating_duration_since(t))
            .filter(|gap| *gap > period);
        if stalled.is_some() {
            self.fresh = Some(now);
        }
        self.last_awake = Some(now);
        // Silence counts from the takeover mark at the earliest: while the
        // herd arrives, a busy new leader may answer a node that came back
        // early late enough to miss its heartbeats, and that is no death
        // either. Nor from before a hold's end or a stall, though never
        // more than `MAX_FLOOR_PERIODS` after the node was last heard.
        let takeover = self.takeover_mark(period);
        let floor = self.fresh.map_or(takeover, |f| f.max(takeover));
        let most = period * MAX_FLOOR_PERIODS;
        let counts_after = period * SILENT_HALF_PERIODS / 2;
        let (mut ready, mut silent) = (0, 0);
        let mut changes = Vec::new();
        if self.first_known.len() > state.nodes.len() {
            self.first_known
                .retain(|id, _| state.nodes.contains_key(id));
        }
        for node in state.nodes.values() {
            let last = self.last_seen.get(&node.id).copied();
            let found = if self.planned { now } else { self.since };
            let known = *self.first_known.entry(node.id).or_insert(found);
            let base = last.unwrap_or(known);
            let since = base.max(floor.min(base + most));
            let silent_for = now.saturating_duration_since(since);
            // Ready only on a heartbeat within the deadline and no session
            // lost since: a floor holds a down mark back but brings no
            // node back.
            let lost = self.disconnected_at(node.id);
            let alive = lost.is_none()
                && last.is_some_and(|t| now.saturating_duration_since(t) <= deadline);
            // A session lost before a hold's end or a stall: heartbeats
            // decide, from the floor (the grace would end it at once).
            let ended = lost.filter(|t| self.fresh.is_none_or(|f| *t >= f));
            if node.state == NodeState::Ready {
                ready += 1;
                if silent_for > counts_after || ended.is_some() {
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
                continue; // within a takeover's, a hold's end's or a stall's grace
            };
            if node.state != want {
                changes.push((node.id, want, gone, silent_for));
            }
        }
        self.planned = true;
        // Just after the floor moved, no node has been silent long enough
        // by heartbeats to count: the hold does not end until one could.
        // Sessions lost since count at once, and can start or keep one.
        let judging = self
            .fresh
            .is_none_or(|f| now.saturating_duration_since(f) > counts_after);
        let mass = silent >= MASS_SILENCE_MIN && silent * 2 > ready;
        let mut hold = self.hold(mass, judging, period, now);
        let mut commands = Vec::with_capacity(changes.len());
        for (id, want, gone, silent_for) in changes {
            match (&mut hold, want) {
                (Hold::Holding { held }, NodeState::Down) => {
                    *held += 1;
                    continue;
                }
                // The silences behind them count from the new floor.
                (Hold::Ended, NodeState::Down) => continue,
                _ => {}
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
        Plan {
            commands,
            hold,
            ready,
            silent,
            stalled,
        }
    }

    /// Whether down marks are held back, with most ready nodes silent now
    /// (`mass`) or not; a hold ends only when that could be `judged`.
    fn hold(&mut self, mass: bool, judged: bool, period: Duration, now: Instant) -> Hold {
        let cap = period * MAX_HOLD_PERIODS;
        let within = |t: Instant| now.saturating_duration_since(t) < cap;
        if mass {
            self.mass_since.get_or_insert(now);
        } else if judged {
            return match self.mass_since.take() {
                // Those still silent get their three periods from now, as
                // the rest come back one by one.
                Some(t) if within(t) => {
                    self.fresh = Some(now);
                    Hold::Ended
                }
                _ => Hold::Off,
            };
        }
        match self.mass_since {
            Some(t) if within(t) => Hold::Holding { held: 0 },
            Some(_) => Hold::Expired,
            None => Hold::Off,
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

    /// Nodes 1 to `n`, all ready.
    fn all_ready(n: u64) -> State {
        state(&(1..=n).map(|id| (id, NodeState::Ready)).collect::<Vec<_>>())
    }

    /// A plan at `at` by a loop that has kept running (no stall).
    fn run(l: &mut Liveness, s: &State, grace: Option<Duration>, at: Instant) -> Plan {
        l.awake(at);
        l.plan(s, P, grace, at, 0)
    }

    #[test]
    fn grace_period_after_leader_change() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let s = state(&[(1, NodeState::Ready)]);
        assert!(
            run(&mut l, &s, None, t0 + Duration::from_millis(2900))
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
        let s = all_ready(3);
        // Node 1 is back at 2.5 s, node 2 at 5 s: node 3, not heard from,
        // waits its turn until 3 periods after the last arrival.
        l.session_opened(NodeId(1), ms(2500));
        l.seen(NodeId(1), ms(4500));
        l.session_opened(NodeId(2), ms(5000));
        l.seen(NodeId(1), ms(7000));
        l.seen(NodeId(2), ms(7000));
        assert!(downs(&run(&mut l, &s, None, ms(7900))).is_empty());
        assert_eq!(downs(&run(&mut l, &s, None, ms(8100))), [3]);
        // A node heard from before, then silent, is not covered (3 is down
        // by now).
        let s = state(&[
            (1, NodeState::Ready),
            (2, NodeState::Ready),
            (3, NodeState::Down),
        ]);
        assert_eq!(downs(&run(&mut l, &s, None, ms(10_600))), [1, 2]);
    }

    #[test]
    fn a_node_back_early_is_not_down_while_the_herd_arrives() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = Liveness::new(t0);
        let s = all_ready(3);
        // Node 1 is back at 0.5 s and then not heard from (the new leader
        // is busy with the herd); nodes 2 and 3 arrive until 5 s.
        l.session_opened(NodeId(1), ms(500));
        l.session_opened(NodeId(2), ms(3000));
        l.session_opened(NodeId(3), ms(5000));
        l.seen(NodeId(2), ms(7000));
        l.seen(NodeId(3), ms(7000));
        // Silent for 5 s, but the herd arrived until 5 s: not down yet.
        assert!(downs(&run(&mut l, &s, None, ms(5500))).is_empty());
        assert!(downs(&run(&mut l, &s, None, ms(7900))).is_empty());
        // Three periods after the last arrival, it is.
        assert_eq!(downs(&run(&mut l, &s, None, ms(8100))), [1]);
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
        assert!(downs(&run(&mut l, &s, None, now - Duration::from_millis(100))).is_empty());
        assert_eq!(
            downs(&run(&mut l, &s, None, now + Duration::from_millis(100))),
            [2]
        );
    }

    /// A node that joins long after the takeover is not down before its
    /// first heartbeat could come: its silence counts from when the loop
    /// first found it. (It was marked down at once, "no heartbeat for
    /// 73.9s", in a benchmark's join.)
    #[test]
    fn a_node_that_joins_later_has_three_periods_from_its_join() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let mut s = all_ready(1);
        let mut at = t0;
        while at < t0 + Duration::from_secs(60) {
            l.seen(NodeId(1), at);
            assert!(run(&mut l, &s, None, at).commands.is_empty());
            at += P / 4;
        }
        s.nodes.insert(
            NodeId(2),
            Node {
                id: NodeId(2),
                role: Role::Worker,
                state: NodeState::Unknown,
                ..Default::default()
            },
        );
        let joined = at;
        while at < joined + Duration::from_millis(2900) {
            l.seen(NodeId(1), at);
            assert!(
                run(&mut l, &s, None, at).commands.is_empty(),
                "{:?}",
                at - joined
            );
            at += P / 4;
        }
        // Silent for three periods from its join: down.
        l.seen(NodeId(1), at);
        assert_eq!(
            downs(&run(&mut l, &s, None, joined + Duration::from_millis(3100))),
            [2]
        );
        // One heard from before that is ready instead.
        let mut l2 = Liveness::new(t0);
        run(&mut l2, &s, None, joined);
        l2.seen(NodeId(1), joined + P);
        l2.seen(NodeId(2), joined + P);
        let plan = run(&mut l2, &s, None, joined + P);
        assert!(matches!(
            plan.commands.as_slice(),
            [Command::SetNodeState {
                id: NodeId(2),
                state: NodeState::Ready,
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
        let cmds = run(&mut l, &s, None, t0 + Duration::from_secs(1)).commands;
        assert_eq!(cmds.len(), 1, "only node 1 changes: {cmds:?}");
        assert!(matches!(
            &cmds[0],
            Command::SetNodeState { id, state: NodeState::Ready, .. } if *id == NodeId(1)
        ));
        // Node 2 stays silent for 3 periods after its last heartbeat.
        let cmds = run(&mut l, &s, None, t0 + Duration::from_millis(3600)).commands;
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
            run(&mut l, &s, None, t0 + Duration::from_secs(2))
                .commands
                .is_empty()
        );
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
        let s = all_ready(7);
        let plan = |l: &mut Liveness, grace, at| {
            for id in 4..=7 {
                l.seen(NodeId(id), at);
            }
            run(l, &s, grace, at)
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
        let s = all_ready(n);
        (l, s)
    }

    #[test]
    fn most_nodes_silent_at_once_are_not_marked_down() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // The leader hears from none of its 4 other nodes (its network is
        // cut): their marks are held back.
        let (mut l, s) = cut_off(5, t0, ms(3100));
        let p = run(&mut l, &s, None, ms(3100));
        assert!(p.commands.is_empty(), "{p:?}");
        assert_eq!(
            (p.hold, p.silent, p.ready),
            (Hold::Holding { held: 4 }, 4, 5)
        );
        // They answer again: nothing to do, and the hold has ended.
        for id in 1..=5 {
            l.seen(NodeId(id), ms(5000));
        }
        let p = run(&mut l, &s, None, ms(5100));
        assert!(p.commands.is_empty(), "{p:?}");
        assert_eq!(p.hold, Hold::Ended);
        // Sessions lost count as silence too, past the disconnect grace,
        // and at once after a hold's end.
        for id in 2..=5 {
            l.session_ended(NodeId(id), ms(5200));
        }
        l.seen(NodeId(1), ms(5600));
        let p = run(&mut l, &s, G, ms(5600));
        assert!(p.commands.is_empty(), "{p:?}");
        assert_eq!(p.hold, Hold::Holding { held: 4 });
    }

    #[test]
    fn nodes_back_one_by_one_after_a_hold_are_not_marked_down() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // 5 of 6 silent from t0; back one by one from 10 s, a period
        // apart, except 6, which is dead.
        let (mut l, s) = cut_off(6, t0, ms(10_000));
        assert_eq!(
            run(&mut l, &s, None, ms(10_000)).hold,
            Hold::Holding { held: 5 }
        );
        for (i, id) in (2..=5).enumerate() {
            let at = ms(10_000 + 1000 * i as u64);
            l.seen(NodeId(1), at);
            l.seen(NodeId(id), at);
            for back in 2..id {
                l.seen(NodeId(back), at);
            }
            let p = run(&mut l, &s, None, at);
            assert!(downs(&p).is_empty(), "node {id} back: {p:?}");
        }
        // The hold ended as 3 came back (3 of 6 silent): 4, 5 and 6 had
        // three periods from then; 6 is down once they are over.
        let ended = ms(11_000);
        let keep = |l: &mut Liveness, at| {
            for id in 1..=5 {
                l.seen(NodeId(id), at);
            }
        };
        keep(&mut l, ended + P * 3 - Duration::from_millis(100));
        let p = run(&mut l, &s, None, ended + P * 3 - Duration::from_millis(100));
        assert!(downs(&p).is_empty(), "{p:?}");
        keep(&mut l, ended + P * 3 + Duration::from_millis(100));
        let p = run(&mut l, &s, None, ended + P * 3 + Duration::from_millis(100));
        assert_eq!((downs(&p), p.hold), (vec![6], Hold::Off));
    }

    #[test]
    fn the_hold_has_a_cap() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (mut l, s) = cut_off(5, t0, ms(1600));
        // A period and a half silent: the hold starts (nothing to hold yet).
        let p = run(&mut l, &s, None, ms(1600));
        assert_eq!(p.hold, Hold::Holding { held: 0 });
        let end = ms(1600) + P * MAX_HOLD_PERIODS;
        l.seen(NodeId(1), end);
        let before = run(&mut l, &s, None, end - Duration::from_millis(100));
        assert!(before.commands.is_empty(), "{before:?}");
        // Still silent after it: a real mass failure, marked down.
        let after = run(&mut l, &s, None, end + Duration::from_millis(100));
        assert_eq!(
            (downs(&after), after.hold),
            (vec![2, 3, 4, 5], Hold::Expired)
        );
    }

    #[test]
    fn a_few_silent_nodes_are_marked_down_without_a_hold() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Two of three: fewer than the minimum, though most of the nodes.
        let (mut l, s) = cut_off(3, t0, ms(3100));
        let p = run(&mut l, &s, None, ms(3100));
        assert_eq!((downs(&p), p.hold), (vec![2, 3], Hold::Off));
        // Three of six (1 and two more heard from): not more than half.
        let (mut l, s) = cut_off(6, t0, ms(3100));
        for id in [2, 3] {
            l.seen(NodeId(id), ms(3100));
        }
        let p = run(&mut l, &s, None, ms(3100));
        assert_eq!((downs(&p), p.hold), (vec![4, 5, 6], Hold::Off));
        // Nodes already down count neither way: 3 silent of 5 ready hold.
        let mut s = s;
        s.nodes.get_mut(&NodeId(2)).expect("node 2").state = NodeState::Down;
        let p = run(&mut l, &s, None, ms(3100));
        assert_eq!(p.hold, Hold::Holding { held: 3 });
    }

    #[test]
    fn a_stall_of_the_leaders_loop_is_no_nodes_silence() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Two nodes (too few to hold), last heard at 0; the loop planned
        // at 0.5 s and next at 4 s: it was not listening meanwhile.
        let (mut l, s) = cut_off(3, t0, ms(4000));
        assert!(downs(&run(&mut l, &s, None, ms(500))).is_empty());
        let p = l.plan(&s, P, None, ms(4000), 0);
        assert!(downs(&p).is_empty(), "{p:?}");
        // Silent for three periods after the stall: down.
        l.seen(NodeId(1), ms(7100));
        assert_eq!(downs(&run(&mut l, &s, None, ms(7100))), [2, 3]);
        // Time spent writing a plan is no stall: marked down at once.
        let (mut l, s) = cut_off(3, t0, ms(3500));
        assert!(downs(&run(&mut l, &s, None, ms(500))).is_empty());
        l.awake(ms(3000));
        assert_eq!(downs(&l.plan(&s, P, None, ms(3500), 0)), [2, 3]);
    }

    /// `run` at `at`, with the nodes in `alive` heard from just then.
    fn run_with(
        l: &mut Liveness,
        s: &State,
        alive: &[u64],
        grace: Option<Duration>,
        at: Instant,
    ) -> Plan {
        for id in alive {
            l.seen(NodeId(*id), at);
        }
        run(l, s, grace, at)
    }

    #[test]
    fn a_floor_brings_no_down_node_back() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Node 2 died at 0 and is down; the leader's loop stalls from 3.5
        // to 8 s. Its silence restarts, but it is not taken for alive.
        let (mut l, mut s) = cut_off(3, t0, ms(3500));
        s.nodes.get_mut(&NodeId(2)).expect("node 2").state = NodeState::Down;
        l.seen(NodeId(3), ms(3500));
        assert!(run(&mut l, &s, None, ms(3500)).commands.is_empty());
        for id in [1, 3] {
            l.seen(NodeId(id), ms(8000));
        }
        let p = l.plan(&s, P, None, ms(8000), 0);
        assert!(p.stalled.is_some(), "{p:?}");
        assert!(p.commands.is_empty(), "{p:?}");
        let p = run_with(&mut l, &s, &[1, 3], None, ms(9000));
        assert!(p.commands.is_empty(), "{p:?}");
    }

    #[test]
    fn a_node_down_for_its_lost_session_stays_down_through_a_stall() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Node 2's daemon dies at 1.2 s, a heartbeat having come at 1 s;
        // down by the grace at 1.6 s. The loop stalls until 3 s, within
        // three periods of that heartbeat: it stays down.
        let (mut l, mut s) = cut_off(3, t0, ms(1000));
        for id in [2, 3] {
            l.seen(NodeId(id), ms(1000));
        }
        l.session_ended(NodeId(2), ms(1200));
        assert_eq!(downs(&run_with(&mut l, &s, &[1, 3], G, ms(1600))), [2]);
        s.nodes.get_mut(&NodeId(2)).expect("node 2").state = NodeState::Down;
        for id in [1, 3] {
            l.seen(NodeId(id), ms(3000));
        }
        let p = l.plan(&s, P, G, ms(3000), 0);
        assert!(p.stalled.is_some() && p.commands.is_empty(), "{p:?}");
        assert!(
            run_with(&mut l, &s, &[1, 3], G, ms(3500))
                .commands
                .is_empty()
        );
    }

    #[test]
    fn repeated_stalls_still_mark_a_dead_node() {
        let t0 = Instant::now();
        // A loop that stalls every pass (1.1 s apart): node 2, dead from
        // 0, is down once its silence can be moved on no further (30
        // periods) and 3 more have passed.
        let (mut l, s) = cut_off(3, t0, t0);
        let mut at = t0;
        let down_at = loop {
            at += Duration::from_millis(1100);
            for id in [1, 3] {
                l.seen(NodeId(id), at);
            }
            if downs(&l.plan(&s, P, None, at, 0)) == [2] {
                break at - t0;
            }
            assert!(at - t0 < Duration::from_secs(40), "never marked down");
        };
        assert!(
            down_at > P * (MAX_FLOOR_PERIODS + MISSED_HEARTBEATS),
            "{down_at:?}"
        );
        assert!(
            down_at < P * (MAX_FLOOR_PERIODS + MISSED_HEARTBEATS + 2),
            "{down_at:?}"
        );
    }

    #[test]
    fn a_stall_during_a_hold_neither_ends_it_nor_restarts_its_limit() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (mut l, s) = cut_off(5, t0, ms(1600));
        assert_eq!(
            run(&mut l, &s, None, ms(1600)).hold,
            Hold::Holding { held: 0 }
        );
        // The loop stalls from 1.6 to 5 s: still holding.
        l.seen(NodeId(1), ms(5000));
        let p = l.plan(&s, P, None, ms(5000), 0);
        assert_eq!((p.hold, p.commands.len()), (Hold::Holding { held: 0 }, 0));
        // Judged again from 6.5 s on: still most silent, still the same
        // hold, which runs out 30 periods after it started, at 1.6 s.
        let p = run_with(&mut l, &s, &[1], None, ms(6700));
        assert_eq!((p.hold, p.silent), (Hold::Holding { held: 0 }, 4));
        let end = ms(1600) + P * MAX_HOLD_PERIODS;
        let p = run_with(&mut l, &s, &[1], None, end - Duration::from_millis(100));
        assert_eq!(p.hold, Hold::Holding { held: 4 });
        let p = run_with(&mut l, &s, &[1], None, end + Duration::from_millis(100));
        assert_eq!((downs(&p), p.hold), (vec![2, 3, 4, 5], Hold::Expired));
    }

    #[test]
    fn a_session_lost_during_a_hold_gets_three_periods_after_it() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Nodes 2 to 5 lose their sessions at 0.2 s: a hold. 2 to 4 come
        // back at 5 s and end it; 5, with the grace on, is not down
        // 0.3 s later but three periods later.
        let (mut l, s) = cut_off(5, t0, ms(200));
        for id in 2..=5 {
            l.session_ended(NodeId(id), ms(200));
        }
        let p = run(&mut l, &s, G, ms(600));
        assert_eq!(p.hold, Hold::Holding { held: 4 });
        for id in 2..=4 {
            l.session_opened(NodeId(id), ms(5000));
        }
        let alive = [1, 2, 3, 4];
        let p = run_with(&mut l, &s, &alive, G, ms(5000));
        assert_eq!((downs(&p), p.hold), (vec![], Hold::Ended));
        assert!(downs(&run_with(&mut l, &s, &alive, G, ms(5400))).is_empty());
        assert!(downs(&run_with(&mut l, &s, &alive, G, ms(7900))).is_empty());
        assert_eq!(downs(&run_with(&mut l, &s, &alive, G, ms(8100))), [5]);
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
        assert!(downs(&run(&mut l, &s, G, t0 + Duration::from_millis(900))).is_empty());
    }
}
