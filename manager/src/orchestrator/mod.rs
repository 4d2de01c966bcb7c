//! Services to tasks, decided purely.
//!
//! [`plan`] compares every service with its tasks and returns the commands
//! that close the gap: create tasks for empty replica slots (placed by
//! [`schedule`]), remove tasks that are surplus, on a node that is down,
//! drained or no longer eligible, or finished and due for a restart, and
//! replace tasks of an older service version one at a time (rolling
//! update). The leader proposes the commands; the next store change runs
//! the plan again, so everything converges step by step.
//!
//! Reservations (`--reserve-cpu`, `--reserve-memory`) are honoured: a node
//! takes a task only while the reservations of the tasks it holds (all
//! but finished ones) plus the new one fit in the CPUs and memory it
//! reported. A slot that fits nowhere stays empty; [`unplaced`] says why,
//! and `service ps` shows it as a pending task. It is placed by a later
//! plan, once capacity frees.
//!
//! Restarts follow the service's condition (any, on-failure, none), after
//! its `--restart-delay` or else the backoff ([`restart_delay_ms`]), and
//! at most `--restart-max-attempts` times within `--restart-window`: each
//! task carries its slot's restart times ([`Task::restart_history`]), so
//! the limit is decided from the store alone, the same on every manager.

mod update;

use std::collections::BTreeMap;

pub use update::update_waits_on;

use crate::store::{
    Availability, Command, Node, NodeId, NodeState, Resources, RestartCondition, Service,
    ServiceMode, State, Task,
};

/// Finished tasks are replaced no sooner than this after they finished,
/// so a crashing command does not spin.
pub const RESTART_DELAY_MS: u64 = 1000;

/// The longest wait before a task that keeps failing is replaced: the
/// delay doubles with each failure in a row (1 s, 2 s, 4 s … 32 s, then
/// 60 s), so a missing image or a crashing command costs a few Raft writes
/// a minute, not one a second.
pub const MAX_RESTART_DELAY_MS: u64 = 60_000;

/// A task that failed at least this long after it was made counts as
/// having run: its replacement starts the backoff again.
pub const RAN_MS: u64 = 10_000;

/// How long after it finished `t` may be replaced: the service's
/// `--restart-delay` when given (as Swarm does), else the backoff.
pub fn restart_delay_ms(svc: &Service, t: &Task) -> u64 {
    svc.spec.restart_policy.delay_ms.unwrap_or_else(|| {
        RESTART_DELAY_MS
            .saturating_mul(1 << t.restarts.min(6))
            .min(MAX_RESTART_DELAY_MS)
    })
}

/// The restarts of `t`'s slot that count against `--restart-max-attempts`
/// when `t` finished: those within the window before its end (all of them
/// without a window). Judged at its end, not now, so a task refused a
/// restart stays refused.
fn recent_restarts(svc: &Service, t: &Task) -> usize {
    let window = svc.spec.restart_policy.window_ms;
    let end = t.status.updated_at_ms;
    t.restart_history
        .iter()
        .filter(|at| window == 0 || at.saturating_add(window) >= end)
        .count()
}

/// Whether `t`'s slot may be restarted once more.
fn attempts_left(svc: &Service, t: &Task) -> bool {
    let max = svc.spec.restart_policy.max_attempts;
    max == 0 || (recent_restarts(svc, t) as u64) < max
}

/// The restart history the replacement of `t`, made at `now_ms`, carries:
/// `t`'s, plus this restart, cut to what the attempt limit can count
/// (nothing without a limit).
fn history_after(svc: &Service, t: &Task, now_ms: u64) -> Vec<u64> {
    let p = svc.spec.restart_policy;
    if p.max_attempts == 0 {
        return Vec::new();
    }
    let mut h: Vec<u64> = t
        .restart_history
        .iter()
        .copied()
        .filter(|at| p.window_ms == 0 || at.saturating_add(p.window_ms) >= now_ms)
        .collect();
    h.push(now_ms);
    let keep = usize::try_from(p.max_attempts).unwrap_or(usize::MAX);
    let cut = h.len().saturating_sub(keep);
    h.split_off(cut)
}

/// The failure count the replacement of the finished task `t` carries:
/// one more when `t` failed soon after it was made, else none.
pub fn restarts_after(t: &Task) -> u32 {
    let ran = t.status.updated_at_ms.saturating_sub(t.created_at_ms);
    if t.status.state.is_failure() && ran < RAN_MS {
        t.restarts.saturating_add(1)
    } else {
        0
    }
}

/// How many tasks `svc` runs when it is whole: its replicas, or for a
/// global service the nodes eligible for it.
pub fn desired(state: &State, svc: &Service) -> u64 {
    match svc.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::Global => state.nodes.values().filter(|n| eligible(n, svc)).count() as u64,
    }
}

/// Whether `node` may receive new tasks of `svc`.
pub fn eligible(node: &Node, svc: &Service) -> bool {
    node.state == NodeState::Ready
        && node.availability == Availability::Active
        && svc.spec.constraints.iter().all(|c| c.matches(node))
}

/// Whether a task of `svc` must leave `node` (its node is gone, drained,
/// or fails the constraints now).
fn must_leave(state: &State, svc: &Service, t: &Task) -> bool {
    match state.nodes.get(&t.node) {
        None => true,
        Some(n) => {
            n.state == NodeState::Down
                || n.availability == Availability::Drain
                || !svc.spec.constraints.iter().all(|c| c.matches(n))
        }
    }
}

/// Whether a finished task is to be replaced under the restart policy.
fn due_for_restart(svc: &Service, t: &Task, now_ms: u64) -> bool {
    let wants = match svc.spec.restart {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => t.status.state.is_failure(),
        RestartCondition::None => false,
    };
    wants
        && attempts_left(svc, t)
        && now_ms.saturating_sub(t.status.updated_at_ms) >= restart_delay_ms(svc, t)
}

/// What the tasks on one node have reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    /// CPUs, in billionths.
    pub nano_cpus: u64,
    /// Memory, bytes.
    pub memory_bytes: u64,
}

impl Reserved {
    fn add(&mut self, r: &Resources) {
        self.nano_cpus = self.nano_cpus.saturating_add(r.reserve_nano_cpus);
        self.memory_bytes = self.memory_bytes.saturating_add(r.reserve_memory_bytes);
    }

    fn sub(&mut self, r: &Resources) {
        self.nano_cpus = self.nano_cpus.saturating_sub(r.reserve_nano_cpus);
        self.memory_bytes = self.memory_bytes.saturating_sub(r.reserve_memory_bytes);
    }
}

/// The reservations per node of every task that holds its share: all but
/// finished ones (a finished task's container is gone).
pub fn reserved(state: &State) -> BTreeMap<NodeId, Reserved> {
    let mut out: BTreeMap<NodeId, Reserved> = BTreeMap::new();
    for t in state.tasks.values() {
        if !t.status.state.is_terminal() {
            out.entry(t.node).or_default().add(&t.spec.resources);
        }
    }
    out
}

/// Why a node cannot take a task, counted per cause in the pending reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Unfit {
    /// Down, or not active (paused, drained).
    NotAvailable,
    /// It fails the service's constraints.
    Constraints,
    /// Its memory is reserved already.
    Memory,
    /// Its CPUs are reserved already.
    Cpu,
}

impl Unfit {
    fn text(self, nodes: usize) -> String {
        let n = if nodes == 1 {
            "1 node".to_string()
        } else {
            format!("{nodes} nodes")
        };
        match self {
            Unfit::NotAvailable => format!("{n} not available for new tasks"),
            Unfit::Constraints => format!("scheduling constraints not satisfied on {n}"),
            Unfit::Memory => format!("insufficient memory on {n}"),
            Unfit::Cpu => format!("insufficient CPUs on {n}"),
        }
    }
}

/// Whether `node`, with `used` reserved already, has room for `res`. A
/// node that reported no capacity (an older daemon) is not checked.
fn room(node: &Node, used: Reserved, res: &Resources) -> Result<(), Unfit> {
    let cap = node.resources;
    let over =
        |cap: u64, used: u64, want: u64| want != 0 && cap != 0 && used.saturating_add(want) > cap;
    if over(
        cap.memory_bytes,
        used.memory_bytes,
        res.reserve_memory_bytes,
    ) {
        return Err(Unfit::Memory);
    }
    if over(cap.nano_cpus, used.nano_cpus, res.reserve_nano_cpus) {
        return Err(Unfit::Cpu);
    }
    Ok(())
}

/// Whether `node` may take one more task of `svc`, given what its tasks
/// have reserved.
fn fit(node: &Node, svc: &Service, used: &BTreeMap<NodeId, Reserved>) -> Result<(), Unfit> {
    if node.state != NodeState::Ready || node.availability != Availability::Active {
        return Err(Unfit::NotAvailable);
    }
    if !svc.spec.constraints.iter().all(|c| c.matches(node)) {
        return Err(Unfit::Constraints);
    }
    let used = used.get(&node.id).copied().unwrap_or_default();
    room(node, used, &svc.spec.task.resources)
}

/// The pending reason when no node fits: `no suitable node (…)` with the
/// number of nodes per cause, as Swarm words it.
fn no_node(why: &[Unfit]) -> String {
    if why.is_empty() {
        return "no suitable node (the cluster has no nodes)".into();
    }
    let mut counts: BTreeMap<Unfit, usize> = BTreeMap::new();
    for u in why {
        *counts.entry(*u).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(u, n)| u.text(*n)).collect();
    format!("no suitable node ({})", parts.join("; "))
}

/// Whether a standalone task with `res` fits on `node` now; `Err` says why
/// not (`weft run` places on the node it was asked on, or refuses).
pub fn fits(state: &State, node: NodeId, res: &Resources) -> Result<(), String> {
    let Some(n) = state.nodes.get(&node) else {
        return Ok(());
    };
    let used = reserved(state).get(&node).copied().unwrap_or_default();
    room(n, used, res).map_err(|u| match u {
        Unfit::Cpu => format!(
            "insufficient CPUs on this node ({:.3} of {:.3} reserved, {:.3} asked)",
            used.nano_cpus as f64 / 1e9,
            n.resources.nano_cpus as f64 / 1e9,
            res.reserve_nano_cpus as f64 / 1e9
        ),
        _ => format!(
            "insufficient memory on this node ({} of {} bytes reserved, {} asked)",
            used.memory_bytes, n.resources.memory_bytes, res.reserve_memory_bytes
        ),
    })
}

/// The node for one more task of `svc`: eligible with room for its
/// reservations, fewest tasks of this service, then fewest tasks overall,
/// then lowest ID (deterministic). `load` holds (tasks of this service,
/// all tasks) per node, `used` the reservations per node. `Err`: the
/// pending reason.
pub fn schedule(
    state: &State,
    svc: &Service,
    load: &BTreeMap<NodeId, (usize, usize)>,
    used: &BTreeMap<NodeId, Reserved>,
) -> Result<NodeId, String> {
    let mut why = Vec::new();
    state
        .nodes
        .values()
        .filter(|n| match fit(n, svc, used) {
            Ok(()) => true,
            Err(u) => {
                why.push(u);
                false
            }
        })
        .min_by_key(|n| {
            let (mine, all) = load.get(&n.id).copied().unwrap_or((0, 0));
            (mine, all, n.id)
        })
        .map(|n| n.id)
        .ok_or_else(|| no_node(&why))
}

/// The tasks of `svc` that are wanted but placed nowhere, as (slot, why):
/// replica slots without a task (slot 1…), and for a global service the
/// eligible nodes without room for one (slot 0, the node's reason). Empty
/// while every wanted task exists (or the next plan will create it).
pub fn unplaced(state: &State, svc: &Service) -> Vec<(u64, Option<NodeId>, String)> {
    use std::collections::BTreeSet;
    let mine = state
        .tasks
        .values()
        .filter_map(|t| Some((t, t.service.as_ref()?)))
        .filter(|(_, r)| r.service == svc.id);
    match svc.spec.mode {
        ServiceMode::Replicated { replicas } => {
            let slots: BTreeSet<u64> = mine.map(|(_, r)| r.slot).collect();
            // The first empty slot decides: every later one waits for the
            // same reason, and while one can be placed the next plan does.
            let Some(first) = (1..=replicas).find(|s| !slots.contains(s)) else {
                return Vec::new();
            };
            match schedule(state, svc, &BTreeMap::new(), &reserved(state)) {
                Ok(_) => Vec::new(),
                Err(why) => (first..=replicas)
                    .filter(|s| !slots.contains(s))
                    .map(|s| (s, None, why.clone()))
                    .collect(),
            }
        }
        ServiceMode::Global => {
            let nodes: BTreeSet<NodeId> = mine.map(|(t, _)| t.node).collect();
            let mut empty = state
                .nodes
                .values()
                .filter(|n| eligible(n, svc) && !nodes.contains(&n.id))
                .peekable();
            if empty.peek().is_none() {
                return Vec::new();
            }
            let used = reserved(state);
            empty
                .filter_map(|n| {
                    fit(n, svc, &used)
                        .err()
                        .map(|u| (0, Some(n.id), no_node(&[u])))
                })
                .collect()
        }
    }
}

/// The commands that move every service towards its spec.
pub fn plan(state: &State, now_ms: u64, new_id: impl FnMut() -> String) -> Vec<Command> {
    // Load per node, updated as this plan places tasks.
    let mut total: BTreeMap<NodeId, usize> = BTreeMap::new();
    for t in state.tasks.values() {
        *total.entry(t.node).or_default() += 1;
    }
    let mut p = Planner {
        state,
        now_ms,
        new_id,
        out: Vec::new(),
        total,
        // Reservations per node, updated as this plan removes and places.
        used: reserved(state),
    };
    // `weft run -d --rm`: a standalone task that has ended leaves the store.
    p.out.extend(
        state
            .tasks
            .values()
            .filter(|t| t.service.is_none() && t.spec.auto_remove && t.status.state.is_terminal())
            .map(|t| Command::RemoveTask { id: t.id.clone() }),
    );
    for svc in state.services.values() {
        p.service(svc);
    }
    p.out
}

/// One plan under way: what it proposes and the load it leaves.
struct Planner<'s, F> {
    state: &'s State,
    now_ms: u64,
    new_id: F,
    out: Vec<Command>,
    /// Tasks per node.
    total: BTreeMap<NodeId, usize>,
    /// Reservations per node.
    used: BTreeMap<NodeId, Reserved>,
}

/// The backoff and restart history a replacement inherits, by (slot, node
/// for global).
type Carry = BTreeMap<(u64, Option<NodeId>), (u32, Vec<u64>)>;

/// A service's tasks on one node and on all, for [`schedule`].
type Load = BTreeMap<NodeId, (usize, usize)>;

impl<'s, F: FnMut() -> String> Planner<'s, F> {
    /// Moves `svc` towards its spec.
    fn service(&mut self, svc: &'s Service) {
        let state = self.state;
        let tasks: Vec<&'s Task> = state
            .tasks
            .values()
            .filter(|t| t.service.as_ref().is_some_and(|r| r.service == svc.id))
            .collect();
        self.out
            .extend(update::count_failures(svc, &tasks, self.now_ms));
        let mut kept: Vec<&'s Task> = Vec::new();
        let mut carry = Carry::new();
        for t in &tasks {
            let restart = t.status.state.is_terminal()
                && due_for_restart(svc, t, self.now_ms)
                && !update::failed_update(svc, t);
            let gone = must_leave(state, svc, t) || restart;
            if restart && let Some(r) = &t.service {
                let key = match svc.spec.mode {
                    ServiceMode::Global => (0, Some(t.node)),
                    ServiceMode::Replicated { .. } => (r.slot, None),
                };
                carry.insert(key, (restarts_after(t), history_after(svc, t, self.now_ms)));
            }
            if gone {
                self.remove(t);
            } else {
                kept.push(t);
            }
        }
        let mut load: Load = self.total.iter().map(|(n, c)| (*n, (0, *c))).collect();
        for t in &kept {
            load.entry(t.node).or_default().0 += 1;
        }
        let (live, created) = match svc.spec.mode {
            ServiceMode::Replicated { replicas } => {
                self.replicated(svc, replicas, &kept, &carry, &mut load)
            }
            ServiceMode::Global => self.global(svc, &kept, &carry, &mut load),
        };
        // Only a completion check needs it (O(nodes) for a global service).
        let under_way = svc
            .update_status
            .as_ref()
            .is_some_and(|st| st.state.in_progress());
        let desired = if under_way { desired(state, svc) } else { 0 };
        for step in update::rolling_update(svc, &live, created, desired, self.now_ms) {
            match step {
                update::Step::Remove(id) => self.out.push(Command::RemoveTask { id }),
                update::Step::Start { slot, node } => {
                    let node = match node {
                        Some(n) => state
                            .nodes
                            .get(&n)
                            .filter(|node| fit(node, svc, &self.used).is_ok())
                            .map(|_| n),
                        None => schedule(state, svc, &load, &self.used).ok(),
                    };
                    // No room for a second task yet: the update waits.
                    if let Some(node) = node {
                        self.place(svc, &carry, &mut load, slot, node);
                    }
                }
                update::Step::Complete => self.out.push(Command::CompleteUpdate {
                    service: svc.id.clone(),
                    version: svc.version,
                    now_ms: self.now_ms,
                }),
            }
        }
    }

    /// A replicated service: surplus tasks of each slot go (and every task
    /// of a slot past `replicas`), empty slots get a task. Returns the
    /// tasks left and whether it placed any.
    fn replicated(
        &mut self,
        svc: &'s Service,
        replicas: u64,
        kept: &[&'s Task],
        carry: &Carry,
        load: &mut Load,
    ) -> (Vec<&'s Task>, bool) {
        let mut by_slot: BTreeMap<u64, Vec<&'s Task>> = BTreeMap::new();
        for t in kept {
            let slot = t.service.as_ref().map(|r| r.slot).unwrap_or(0);
            by_slot.entry(slot).or_default().push(t);
        }
        let mut live = Vec::new();
        for (slot, ts) in &by_slot {
            let surplus = if *slot == 0 || *slot > replicas {
                ts.clone()
            } else {
                update::surplus(svc, ts)
            };
            self.remove_surplus(ts, &surplus, &mut live);
        }
        let mut created = false;
        for slot in 1..=replicas {
            if by_slot.get(&slot).is_none_or(|v| v.is_empty())
                && let Ok(node) = schedule(self.state, svc, load, &self.used)
            {
                self.place(svc, carry, load, slot, node);
                created = true;
            }
        }
        (live, created)
    }

    /// A global service: surplus tasks of each node go, eligible nodes
    /// without a task get one. Returns the tasks left and whether it
    /// placed any.
    fn global(
        &mut self,
        svc: &'s Service,
        kept: &[&'s Task],
        carry: &Carry,
        load: &mut Load,
    ) -> (Vec<&'s Task>, bool) {
        let mut by_node: BTreeMap<NodeId, Vec<&'s Task>> = BTreeMap::new();
        for t in kept {
            by_node.entry(t.node).or_default().push(t);
        }
        let mut live = Vec::new();
        for ts in by_node.values() {
            let surplus = update::surplus(svc, ts);
            self.remove_surplus(ts, &surplus, &mut live);
        }
        let mut created = false;
        let state = self.state;
        for node in state.nodes.values().filter(|n| eligible(n, svc)) {
            if !by_node.contains_key(&node.id) && fit(node, svc, &self.used).is_ok() {
                self.place(svc, carry, load, 0, node.id);
                created = true;
            }
        }
        (live, created)
    }

    /// Removes the tasks of `ts` in `surplus`; the others go to `live`.
    fn remove_surplus(&mut self, ts: &[&'s Task], surplus: &[&Task], live: &mut Vec<&'s Task>) {
        for t in ts {
            if surplus.iter().any(|x| x.id == t.id) {
                self.remove(t);
            } else {
                live.push(t);
            }
        }
    }

    /// Removes task `t`, freeing its place and reservation.
    fn remove(&mut self, t: &Task) {
        self.out.push(Command::RemoveTask { id: t.id.clone() });
        if let Some(c) = self.total.get_mut(&t.node) {
            *c = c.saturating_sub(1);
        }
        if !t.status.state.is_terminal()
            && let Some(u) = self.used.get_mut(&t.node)
        {
            u.sub(&t.spec.resources);
        }
    }

    /// Places a task of `svc` in `slot` (0: global) on `node`.
    fn place(&mut self, svc: &Service, carry: &Carry, load: &mut Load, slot: u64, node: NodeId) {
        let key = if slot == 0 {
            (0, Some(node))
        } else {
            (slot, None)
        };
        let (restarts, restart_history) = carry.get(&key).cloned().unwrap_or_default();
        self.out.push(Command::CreateServiceTask {
            id: (self.new_id)(),
            service: svc.id.clone(),
            slot,
            node,
            now_ms: self.now_ms,
            restarts,
            restart_history,
        });
        let e = load.entry(node).or_default();
        e.0 += 1;
        e.1 += 1;
        self.used
            .entry(node)
            .or_default()
            .add(&svc.spec.task.resources);
        *self.total.entry(node).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        Constraint, EndpointMode, Role, ServiceSpec, TaskHealth, TaskSpec, TaskState, TaskStatus,
    };

    pub(super) fn state(nodes: u64) -> State {
        let mut s = State::default();
        s.apply(&Command::InitCluster {
            cluster: crate::testing::cluster_record(),
            node: node(1),
        })
        .unwrap();
        for i in 2..=nodes {
            s.apply(&Command::AddNode { node: node(i) }).unwrap();
        }
        s
    }

    fn node(i: u64) -> Node {
        Node {
            id: NodeId(i),
            hostname: format!("n{i}"),
            role: if i == 1 { Role::Manager } else { Role::Worker },
            state: NodeState::Ready,
            ..Default::default()
        }
    }

    pub(super) fn service(s: &mut State, mode: ServiceMode, constraints: Vec<Constraint>) {
        s.apply(&Command::CreateService {
            id: "svc".into(),
            spec: ServiceSpec {
                network_aliases: Default::default(),
                registry_auth: None,
                update: Default::default(),
                rollback: Default::default(),
                labels: Default::default(),
                restart_policy: Default::default(),
                name: "web".into(),
                mode,
                task: TaskSpec {
                    command: vec!["httpd".into()],
                    ..Default::default()
                },
                networks: vec![],
                endpoint_mode: EndpointMode::Vip,
                constraints,
                restart: RestartCondition::Any,
                ports: Vec::new(),
            },
            now_ms: 0,
        })
        .unwrap();
    }

    #[test]
    fn ended_standalone_tasks_run_with_rm_leave_the_store() {
        let mut s = state(1);
        for (id, auto_remove) in [("keep", false), ("gone", true), ("runs", true)] {
            s.apply(&Command::CreateTask {
                ip6: Default::default(),
                aliases: Default::default(),
                id: id.into(),
                name: id.into(),
                node: NodeId(1),
                spec: TaskSpec {
                    command: vec!["true".into()],
                    auto_remove,
                    external: None,
                    ..Default::default()
                },
                networks: vec![],
                standalone: true,
                now_ms: 0,
                network_mode: crate::store::NetworkMode::None,
                ports: Vec::new(),
            })
            .unwrap();
        }
        let exited = TaskStatus::new(
            TaskState::Exited {
                code: Some(0),
                oom: false,
            },
            1,
        );
        s.tasks.get_mut("keep").unwrap().status = exited.clone();
        s.tasks.get_mut("gone").unwrap().status = exited;
        s.tasks.get_mut("runs").unwrap().status = TaskStatus::new(TaskState::RUNNING, 1);
        let cmds = plan(&s, 2, || unreachable!("nothing to place"));
        assert_eq!(cmds, vec![Command::RemoveTask { id: "gone".into() }]);
    }

    /// Applies plans until nothing changes, marking new tasks running.
    pub(super) fn converge(s: &mut State, now: u64) -> usize {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 50, "does not converge");
            let cmds = plan(s, now, || {
                let n = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{n:016x}")
            });
            if cmds.is_empty() {
                return rounds;
            }
            for c in cmds {
                s.apply(&c).unwrap();
            }
            for t in s.tasks.values_mut() {
                if t.status.state == TaskState::pending() {
                    t.status = TaskStatus::new(TaskState::RUNNING, now);
                }
            }
        }
    }

    fn per_node(s: &State) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for t in s.tasks.values() {
            *m.entry(t.node).or_default() += 1;
        }
        m
    }

    #[test]
    fn replicas_spread_over_nodes() {
        let mut s = state(3);
        service(&mut s, ServiceMode::Replicated { replicas: 3 }, vec![]);
        converge(&mut s, 0);
        assert_eq!(s.tasks.len(), 3);
        assert!(per_node(&s).values().all(|c| *c == 1), "{:?}", per_node(&s));
        let mut slots: Vec<u64> = s
            .tasks
            .values()
            .map(|t| t.service.as_ref().unwrap().slot)
            .collect();
        slots.sort();
        assert_eq!(slots, vec![1, 2, 3]);
    }

    #[test]
    fn scaling_up_and_down() {
        let mut s = state(3);
        service(&mut s, ServiceMode::Replicated { replicas: 3 }, vec![]);
        converge(&mut s, 0);
        let mut spec = s.services["svc"].spec.clone();
        spec.mode = ServiceMode::Replicated { replicas: 6 };
        s.apply(&Command::UpdateService {
            id: "svc".into(),
            spec: spec.clone(),
            force: false,
            now_ms: 0,
        })
        .unwrap();
        converge(&mut s, 0);
        assert_eq!(s.tasks.len(), 6);
        assert!(per_node(&s).values().all(|c| *c == 2));
        spec.mode = ServiceMode::Replicated { replicas: 2 };
        s.apply(&Command::UpdateService {
            id: "svc".into(),
            spec,
            force: false,
            now_ms: 0,
        })
        .unwrap();
        converge(&mut s, 0);
        assert_eq!(s.tasks.len(), 2);
        assert_eq!(s.services["svc"].version, 1, "scaling is not an update");
    }

    #[test]
    fn drained_and_down_nodes_lose_their_tasks() {
        let mut s = state(3);
        service(&mut s, ServiceMode::Replicated { replicas: 3 }, vec![]);
        converge(&mut s, 0);
        s.apply(&Command::UpdateNode {
            id: NodeId(2),
            availability: Some(Availability::Drain),
            label_add: Default::default(),
            label_rm: vec![],
            now_ms: 0,
        })
        .unwrap();
        converge(&mut s, 0);
        assert_eq!(s.tasks.len(), 3);
        assert_eq!(per_node(&s).get(&NodeId(2)), None);
        s.apply(&Command::SetNodeState {
            id: NodeId(3),
            state: NodeState::Down,
            message: String::new(),
            now_ms: 0,
        })
        .unwrap();
        converge(&mut s, 0);
        assert_eq!(s.tasks.len(), 3);
        assert_eq!(per_node(&s).get(&NodeId(1)), Some(&3));
    }

    #[test]
    fn global_services_follow_eligible_nodes_and_constraints() {
        let mut s = state(3);
        let c: Constraint = "node.role!=manager".parse().unwrap();
        service(&mut s, ServiceMode::Global, vec![c]);
        converge(&mut s, 0);
        assert_eq!(s.tasks.len(), 2);
        assert!(s.tasks.values().all(|t| t.node != NodeId(1)));
        s.apply(&Command::AddNode { node: node(4) }).unwrap();
        converge(&mut s, 0);
        assert_eq!(s.tasks.len(), 3);
    }

    #[test]
    fn restart_policy_and_delay() {
        let mut s = state(1);
        service(&mut s, ServiceMode::Replicated { replicas: 1 }, vec![]);
        converge(&mut s, 0);
        let id = s.tasks.keys().next().unwrap().clone();
        s.tasks.get_mut(&id).unwrap().status = TaskStatus::new(
            TaskState::Exited {
                code: Some(0),
                oom: false,
            },
            10_000,
        );
        assert!(plan(&s, 10_500, || "x".into()).is_empty(), "restart delay");
        let cmds = plan(&s, 11_000, || "0000000000000099".into());
        assert!(matches!(cmds[0], Command::RemoveTask { .. }));
        assert!(matches!(
            cmds[1],
            Command::CreateServiceTask { slot: 1, .. }
        ));
        // on-failure leaves a clean exit alone.
        let mut spec = s.services["svc"].spec.clone();
        spec.restart = RestartCondition::OnFailure;
        s.services.get_mut("svc").unwrap().spec = spec;
        assert!(plan(&s, 20_000, || "x".into()).is_empty());
    }

    /// A task that keeps failing right after it is made (a missing image,
    /// a command that crashes) is replaced after 1, 2, 4 … seconds, at
    /// most a minute; one that ran a while starts over at 1 s.
    #[test]
    fn failing_tasks_back_off() {
        let mut s = state(1);
        service(&mut s, ServiceMode::Replicated { replicas: 1 }, vec![]);
        let mut now = 0;
        converge(&mut s, now);
        let mut delays = Vec::new();
        for round in 0..9 {
            let id = s.tasks.keys().next().unwrap().clone();
            let t = s.tasks.get_mut(&id).unwrap();
            // Fails 100 ms after it was made (the last one after a long run).
            let ran = if round == 8 { RAN_MS } else { 100 };
            let failed_at = t.created_at_ms + ran;
            t.status = TaskStatus::new(TaskState::Failed, failed_at);
            let delay = restart_delay_ms(&s.services["svc"], &s.tasks[&id]);
            assert!(
                plan(&s, failed_at + delay - 1, || "x".into()).is_empty(),
                "not before its delay"
            );
            now = failed_at + delay;
            for c in plan(&s, now, || format!("{:016x}", 100 + round)) {
                s.apply(&c).unwrap();
            }
            assert!(!s.tasks.contains_key(&id), "replaced at its delay");
            delays.push(delay / 1000);
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // The one that ran RAN_MS before failing started the count again.
        assert_eq!(s.tasks.values().next().unwrap().restarts, 0);
        let _ = now;
    }

    /// Which observed states get a task replaced, under `any` and under
    /// `on-failure`, once the restart delay has passed.
    #[test]
    fn restarts_follow_the_task_state() {
        let exited = |code, oom| TaskState::Exited { code, oom };
        let cases = [
            // (state, replaced under any, replaced under on-failure)
            (TaskState::New, false, false),
            (TaskState::pending(), false, false),
            (
                TaskState::Pending {
                    reason: "no suitable node".into(),
                },
                false,
                false,
            ),
            (TaskState::Pulling, false, false),
            (TaskState::Starting, false, false),
            (TaskState::RUNNING, false, false),
            (
                TaskState::Running {
                    health: TaskHealth::Unhealthy,
                },
                false,
                false,
            ),
            (exited(Some(0), false), true, false),
            (exited(Some(2), false), true, true),
            (exited(Some(0), true), true, true),
            (exited(None, false), true, true),
            (TaskState::Failed, true, true),
            (TaskState::Rejected, true, true),
            (TaskState::Shutdown, true, false),
        ];
        for (state, any, on_failure) in cases {
            for (restart, want) in [
                (RestartCondition::Any, any),
                (RestartCondition::OnFailure, on_failure),
                (RestartCondition::None, false),
            ] {
                let mut s = self::state(1);
                service(&mut s, ServiceMode::Replicated { replicas: 1 }, vec![]);
                converge(&mut s, 0);
                s.services.get_mut("svc").unwrap().spec.restart = restart;
                let id = s.tasks.keys().next().unwrap().clone();
                s.tasks.get_mut(&id).unwrap().status = TaskStatus::new(state.clone(), 10_000);
                let cmds = plan(&s, 20_000, || "0000000000000099".into());
                let replaced = cmds
                    .iter()
                    .any(|c| matches!(c, Command::RemoveTask { id: x } if *x == id));
                assert_eq!(replaced, want, "{state:?} under {restart:?}: {cmds:?}");
            }
        }
    }

    /// `service update --force` of the test service.
    fn force_update(s: &mut State) {
        let spec = s.services["svc"].spec.clone();
        update(s, spec, true);
    }

    pub(super) fn update(s: &mut State, spec: crate::store::ServiceSpec, force: bool) {
        s.apply(&Command::UpdateService {
            id: "svc".into(),
            spec,
            force,
            now_ms: 0,
        })
        .unwrap();
    }

    #[test]
    fn an_update_that_changes_the_spec_keeps_the_previous_one() {
        let mut s = state(1);
        service(&mut s, ServiceMode::Replicated { replicas: 1 }, vec![]);
        force_update(&mut s);
        assert!(
            s.services["svc"].previous_spec.is_none(),
            "a forced update changes no spec"
        );
        let old = s.services["svc"].spec.clone();
        let mut spec = old.clone();
        spec.task.env.insert("V".into(), "2".into());
        update(&mut s, spec, false);
        assert_eq!(s.services["svc"].previous_spec.as_deref(), Some(&old));
        // Records written before previous specs read as none.
        let mut json = serde_json::to_value(&s.services["svc"]).unwrap();
        json.as_object_mut().unwrap().remove("previous_spec");
        let back: crate::store::Service = serde_json::from_value(json).unwrap();
        assert!(back.previous_spec.is_none());
    }

    #[test]
    fn rolling_update_replaces_one_at_a_time() {
        let mut s = state(3);
        service(&mut s, ServiceMode::Replicated { replicas: 3 }, vec![]);
        converge(&mut s, 0);
        force_update(&mut s);
        let cmds = plan(&s, 0, || "x".into());
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        assert!(matches!(cmds[0], Command::RemoveTask { .. }));
        converge(&mut s, 0);
        assert!(
            s.tasks
                .values()
                .all(|t| t.service.as_ref().unwrap().version == 2)
        );
        assert_eq!(s.tasks.len(), 3);
    }

    #[test]
    fn update_parallelism_and_delay_pace_a_rolling_update() {
        let version2 = |s: &State| {
            s.tasks
                .values()
                .filter(|t| t.service.as_ref().unwrap().version == 2)
                .count()
        };
        let mut s = state(4);
        service(&mut s, ServiceMode::Replicated { replicas: 4 }, vec![]);
        s.services.get_mut("svc").unwrap().spec.update = crate::store::UpdatePolicy {
            parallelism: 2,
            delay_ms: 10_000,
            ..Default::default()
        };
        converge(&mut s, 0);
        force_update(&mut s);
        let cmds = plan(&s, 1_000, || "x".into());
        assert_eq!(cmds.len(), 2, "a batch of two: {cmds:?}");
        converge(&mut s, 1_000);
        assert_eq!(version2(&s), 2, "then the delay");
        converge(&mut s, 10_999);
        assert_eq!(version2(&s), 2);
        converge(&mut s, 11_000);
        assert_eq!(version2(&s), 4);
        assert_eq!(s.tasks.len(), 4);

        // 0: all at once.
        s.services.get_mut("svc").unwrap().spec.update.parallelism = 0;
        force_update(&mut s);
        assert_eq!(plan(&s, 20_000, || "x".into()).len(), 4);
    }

    /// A rolling update waits for each new task to pass its health check,
    /// says on what it waits, and goes on once it does; an unhealthy old
    /// task does not hold it.
    #[test]
    fn rolling_update_waits_for_new_tasks_to_be_healthy() {
        let mut s = state(3);
        service(&mut s, ServiceMode::Replicated { replicas: 3 }, vec![]);
        converge(&mut s, 0);
        let old_ids: Vec<String> = s.tasks.keys().cloned().collect();
        // An old task is unhealthy: the update is not held by it.
        s.tasks.get_mut(&old_ids[2]).unwrap().status = TaskStatus::new(
            TaskState::Running {
                health: TaskHealth::Unhealthy,
            },
            0,
        );
        force_update(&mut s);
        assert_eq!(update_waits_on(&s, &s.services["svc"]), None);
        // The first old task goes, its replacement is made.
        for c in plan(&s, 0, || "0000000000000001".into()) {
            s.apply(&c).unwrap();
        }
        for c in plan(&s, 0, || "0000000000000001".into()) {
            s.apply(&c).unwrap();
        }
        let new = "0000000000000001".to_string();
        assert!(s.tasks.contains_key(&new), "{:?}", s.tasks.keys());
        for (health, waits) in [
            (TaskHealth::Starting, true),
            (TaskHealth::Unhealthy, true),
            (TaskHealth::Healthy, false),
        ] {
            s.tasks.get_mut(&new).unwrap().status =
                TaskStatus::new(TaskState::Running { health }, 0);
            let cmds = plan(&s, 0, || "0000000000000002".into());
            let why = update_waits_on(&s, &s.services["svc"]);
            if waits {
                assert!(cmds.is_empty(), "{health:?}: {cmds:?}");
                let why = why.expect("a reason");
                assert!(
                    why.contains("waiting for task")
                        && why.contains(&format!("{health:?}").to_lowercase()),
                    "{why}"
                );
            } else {
                assert!(
                    matches!(&cmds[..], [Command::RemoveTask { id }] if old_ids.contains(id)),
                    "{cmds:?}"
                );
                assert_eq!(why, None);
            }
        }
    }

    #[test]
    fn no_eligible_node_means_pending_not_errors() {
        let mut s = state(2);
        let c: Constraint = "node.labels.zone==nowhere".parse().unwrap();
        service(&mut s, ServiceMode::Replicated { replicas: 2 }, vec![c]);
        assert!(plan(&s, 0, || "x".into()).is_empty());
    }

    fn sized(s: &mut State, gib: u64) {
        for n in s.nodes.values_mut() {
            n.resources = crate::store::NodeResources {
                nano_cpus: 2_000_000_000,
                memory_bytes: gib << 30,
            };
        }
    }

    fn reserving(s: &mut State, id: &str, replicas: u64, mib: u64, mode: Option<ServiceMode>) {
        s.apply(&Command::CreateService {
            id: id.into(),
            spec: ServiceSpec {
                network_aliases: Default::default(),
                registry_auth: None,
                update: Default::default(),
                rollback: Default::default(),
                labels: Default::default(),
                restart_policy: Default::default(),
                name: id.into(),
                mode: mode.unwrap_or(ServiceMode::Replicated { replicas }),
                task: TaskSpec {
                    command: vec!["httpd".into()],
                    resources: Resources {
                        reserve_memory_bytes: mib << 20,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                networks: vec![],
                endpoint_mode: EndpointMode::Vip,
                constraints: vec![],
                restart: RestartCondition::Any,
                ports: Vec::new(),
            },
            now_ms: 0,
        })
        .unwrap();
    }

    fn count(s: &State, svc: &str) -> usize {
        s.tasks
            .values()
            .filter(|t| t.service.as_ref().unwrap().service == svc)
            .count()
    }

    #[test]
    fn reservations_never_over_commit_a_node() {
        let mut s = state(2);
        sized(&mut s, 1);
        // 400 MiB each: two fit in 1 GiB, a third does not.
        reserving(&mut s, "a", 5, 400, None);
        converge(&mut s, 0);
        assert_eq!(count(&s, "a"), 4);
        assert!(per_node(&s).values().all(|c| *c == 2), "{:?}", per_node(&s));
        for (n, r) in reserved(&s) {
            assert!(r.memory_bytes <= 1 << 30, "{n}: {r:?}");
        }
        let svc = &s.services["a"];
        assert_eq!(
            unplaced(&s, svc),
            vec![(
                5,
                None,
                "no suitable node (insufficient memory on 2 nodes)".to_string()
            )]
        );
    }

    #[test]
    fn a_pending_task_is_placed_once_capacity_frees() {
        let mut s = state(1);
        sized(&mut s, 1);
        reserving(&mut s, "big", 2, 512, None);
        converge(&mut s, 0);
        assert_eq!(count(&s, "big"), 2);
        reserving(&mut s, "late", 1, 300, None);
        converge(&mut s, 0);
        assert_eq!(count(&s, "late"), 0);
        assert_eq!(unplaced(&s, &s.services["late"]).len(), 1);
        // Scaling the other service down frees 512 MiB.
        let mut spec = s.services["big"].spec.clone();
        spec.mode = ServiceMode::Replicated { replicas: 1 };
        s.apply(&Command::UpdateService {
            id: "big".into(),
            spec,
            force: false,
            now_ms: 0,
        })
        .unwrap();
        converge(&mut s, 0);
        assert_eq!(count(&s, "big"), 1);
        assert_eq!(count(&s, "late"), 1);
        assert!(unplaced(&s, &s.services["late"]).is_empty());
    }

    #[test]
    fn finished_tasks_hold_no_reservation() {
        let mut s = state(1);
        sized(&mut s, 1);
        reserving(&mut s, "a", 1, 800, None);
        converge(&mut s, 0);
        assert_eq!(reserved(&s)[&NodeId(1)].memory_bytes, 800 << 20);
        for t in s.tasks.values_mut() {
            t.status = TaskStatus::new(
                TaskState::Exited {
                    code: Some(137),
                    oom: true,
                },
                0,
            );
        }
        assert!(
            reserved(&s)
                .get(&NodeId(1))
                .is_none_or(|r| r.memory_bytes == 0)
        );
    }

    #[test]
    fn more_than_any_node_has_stays_pending_with_the_reason() {
        let mut s = state(3);
        sized(&mut s, 1);
        s.nodes.get_mut(&NodeId(3)).unwrap().availability = Availability::Drain;
        reserving(&mut s, "huge", 1, 4096, None);
        assert!(plan(&s, 0, || "x".into()).is_empty());
        assert_eq!(
            unplaced(&s, &s.services["huge"]),
            vec![(
                1,
                None,
                "no suitable node (1 node not available for new tasks; insufficient memory on 2 nodes)"
                    .to_string()
            )]
        );
        // A global service: one pending entry per eligible node.
        reserving(&mut s, "g", 0, 4096, Some(ServiceMode::Global));
        let g = unplaced(&s, &s.services["g"]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].2, "no suitable node (insufficient memory on 1 node)");
    }

    #[test]
    fn nodes_that_report_no_capacity_are_not_checked() {
        let mut s = state(1);
        reserving(&mut s, "a", 2, 1 << 20, None);
        converge(&mut s, 0);
        assert_eq!(count(&s, "a"), 2);
        assert_eq!(
            fits(&s, NodeId(1), &s.services["a"].spec.task.resources),
            Ok(())
        );
    }

    #[test]
    fn standalone_tasks_are_checked_against_their_node() {
        let mut s = state(1);
        sized(&mut s, 1);
        reserving(&mut s, "a", 1, 900, None);
        converge(&mut s, 0);
        let want = Resources {
            reserve_memory_bytes: 200 << 20,
            ..Default::default()
        };
        let e = fits(&s, NodeId(1), &want).unwrap_err();
        assert!(e.contains("insufficient memory on this node"), "{e}");
        let cpus = Resources {
            reserve_nano_cpus: 3_000_000_000,
            ..Default::default()
        };
        assert!(
            fits(&s, NodeId(1), &cpus)
                .unwrap_err()
                .contains("insufficient CPUs")
        );
    }

    /// Fails the one task of the service at `at`, then applies the plan
    /// made `after` ms later; returns whether it was replaced.
    fn fail_and_plan(s: &mut State, at: u64, after: u64) -> bool {
        let id = s.tasks.keys().next().unwrap().clone();
        s.tasks.get_mut(&id).unwrap().status = TaskStatus::new(
            TaskState::Exited {
                code: Some(137),
                oom: true,
            },
            at,
        );
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 40);
        for c in plan(s, at + after, || {
            format!(
                "{:016x}",
                IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
        }) {
            s.apply(&c).unwrap();
        }
        !s.tasks.contains_key(&id)
    }

    /// One node, one running replica of `svc` restarted on failure under
    /// `p`.
    fn one_replica_with(p: crate::store::RestartPolicy) -> State {
        let mut s = state(1);
        service(&mut s, ServiceMode::Replicated { replicas: 1 }, vec![]);
        converge(&mut s, 0);
        let svc = s.services.get_mut("svc").unwrap();
        svc.spec.restart = RestartCondition::OnFailure;
        svc.spec.restart_policy = p;
        s
    }

    #[test]
    fn an_explicit_restart_delay_replaces_the_backoff() {
        let mut s = one_replica_with(crate::store::RestartPolicy {
            delay_ms: Some(5_000),
            ..Default::default()
        });
        // Quick failures in a row: 5 s each time, never doubling.
        let mut at = 1_000;
        for _ in 0..4 {
            assert!(!fail_and_plan(&mut s, at, 4_999), "not before 5 s");
            assert!(fail_and_plan(&mut s, at, 5_000), "at 5 s");
            at += 6_000;
        }
        // --restart-delay 0: at once.
        s.services
            .get_mut("svc")
            .unwrap()
            .spec
            .restart_policy
            .delay_ms = Some(0);
        assert!(fail_and_plan(&mut s, at, 0));
    }

    #[test]
    fn max_attempts_stop_restarts_within_the_window() {
        let mut s = one_replica_with(crate::store::RestartPolicy {
            delay_ms: Some(0),
            max_attempts: 2,
            window_ms: 0,
        });
        assert!(fail_and_plan(&mut s, 100, 0), "restart 1");
        assert!(fail_and_plan(&mut s, 200, 0), "restart 2");
        assert!(!fail_and_plan(&mut s, 300, 0), "no third");
        // Refused for good: the task stays, finished, even much later.
        assert!(plan(&s, 10_000_000, || "x".into()).is_empty());
        let t = s.tasks.values().next().unwrap();
        assert!(t.status.state.is_terminal());
        assert_eq!(t.restart_history, vec![100, 200]);

        // With a window, only the restarts within it count.
        let mut s = one_replica_with(crate::store::RestartPolicy {
            delay_ms: Some(0),
            max_attempts: 2,
            window_ms: 60_000,
        });
        assert!(fail_and_plan(&mut s, 1_000, 0));
        assert!(fail_and_plan(&mut s, 2_000, 0));
        assert!(!fail_and_plan(&mut s, 3_000, 0), "two within a minute");
        // A slot whose restarts are older than the window restarts again.
        let mut s2 = one_replica_with(s.services["svc"].spec.restart_policy);
        assert!(fail_and_plan(&mut s2, 1_000, 0));
        assert!(fail_and_plan(&mut s2, 2_000, 0));
        assert!(
            fail_and_plan(&mut s2, 70_000, 0),
            "the first two are out of the window"
        );
        assert_eq!(
            s2.tasks.values().next().unwrap().restart_history,
            vec![70_000],
            "only what the limit can count is carried"
        );
    }

    #[test]
    fn constraints_parse() {
        for good in [
            "node.role==manager",
            "node.hostname!=h1",
            "node.labels.zone==a",
        ] {
            assert!(good.parse::<Constraint>().is_ok(), "{good}");
        }
        for bad in [
            "node.role=manager",
            "foo==bar",
            "node.role==boss",
            "node.labels.==x",
            "node.hostname==",
        ] {
            assert!(bad.parse::<Constraint>().is_err(), "{bad}");
        }
    }
}
