//! Services to tasks, decided purely.
//!
//! [`plan`] compares every service with its tasks and returns the commands
//! that close the gap: create tasks for empty replica slots (placed by
//! [`schedule`]), remove tasks that are surplus, on a node that is down,
//! drained or no longer eligible, or finished and due for a restart, and
//! replace tasks of an older service version one at a time (rolling
//! update). The leader proposes the commands; the next store change runs
//! the plan again, so everything converges step by step.

use std::collections::BTreeMap;

use crate::store::{
    Availability, Command, Node, NodeId, NodeState, RestartCondition, Service, ServiceMode, State,
    Task,
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

/// How long after it finished `t` may be replaced.
pub fn restart_delay_ms(t: &Task) -> u64 {
    RESTART_DELAY_MS
        .saturating_mul(1 << t.restarts.min(6))
        .min(MAX_RESTART_DELAY_MS)
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
    wants && now_ms.saturating_sub(t.status.updated_at_ms) >= restart_delay_ms(t)
}

/// The node for one more task of `svc`: eligible, fewest tasks of this
/// service, then fewest tasks overall, then lowest ID (deterministic).
/// `load` holds (tasks of this service, all tasks) per node.
pub fn schedule(
    state: &State,
    svc: &Service,
    load: &BTreeMap<NodeId, (usize, usize)>,
) -> Option<NodeId> {
    state
        .nodes
        .values()
        .filter(|n| eligible(n, svc))
        .min_by_key(|n| {
            let (mine, all) = load.get(&n.id).copied().unwrap_or((0, 0));
            (mine, all, n.id)
        })
        .map(|n| n.id)
}

/// The commands that move every service towards its spec.
pub fn plan(state: &State, now_ms: u64, mut new_id: impl FnMut() -> String) -> Vec<Command> {
    let mut out = Vec::new();
    // Load per node, updated as this plan places tasks.
    let mut total: BTreeMap<NodeId, usize> = BTreeMap::new();
    for t in state.tasks.values() {
        *total.entry(t.node).or_default() += 1;
    }
    for svc in state.services.values() {
        let tasks: Vec<&Task> = state
            .tasks
            .values()
            .filter(|t| t.service.as_ref().is_some_and(|r| r.service == svc.id))
            .collect();
        let mut kept: Vec<&Task> = Vec::new();
        // The backoff a replacement inherits, by (slot, node for global).
        let mut carry: BTreeMap<(u64, Option<NodeId>), u32> = BTreeMap::new();
        for t in &tasks {
            let restart = t.status.state.is_terminal() && due_for_restart(svc, t, now_ms);
            let gone = must_leave(state, svc, t) || restart;
            if restart && let Some(r) = &t.service {
                let key = match svc.spec.mode {
                    ServiceMode::Global => (0, Some(t.node)),
                    ServiceMode::Replicated { .. } => (r.slot, None),
                };
                carry.insert(key, restarts_after(t));
            }
            if gone {
                out.push(Command::RemoveTask { id: t.id.clone() });
                if let Some(c) = total.get_mut(&t.node) {
                    *c = c.saturating_sub(1);
                }
            } else {
                kept.push(t);
            }
        }
        let mut load: BTreeMap<NodeId, (usize, usize)> =
            total.iter().map(|(n, c)| (*n, (0, *c))).collect();
        for t in &kept {
            load.entry(t.node).or_default().0 += 1;
        }
        let mut place = |out: &mut Vec<Command>,
                         load: &mut BTreeMap<NodeId, (usize, usize)>,
                         slot: u64,
                         node: NodeId| {
            let key = if slot == 0 {
                (0, Some(node))
            } else {
                (slot, None)
            };
            out.push(Command::CreateServiceTask {
                id: new_id(),
                service: svc.id.clone(),
                slot,
                node,
                now_ms,
                restarts: carry.get(&key).copied().unwrap_or(0),
            });
            let e = load.entry(node).or_default();
            e.0 += 1;
            e.1 += 1;
            *total.entry(node).or_default() += 1;
        };
        let mut created = false;
        match svc.spec.mode {
            ServiceMode::Replicated { replicas } => {
                let mut by_slot: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
                for t in &kept {
                    let slot = t.service.as_ref().map(|r| r.slot).unwrap_or(0);
                    by_slot.entry(slot).or_default().push(t);
                }
                for (slot, ts) in &by_slot {
                    let surplus = if *slot == 0 || *slot > replicas {
                        ts.len()
                    } else {
                        ts.len().saturating_sub(1)
                    };
                    for t in ts.iter().rev().take(surplus) {
                        out.push(Command::RemoveTask { id: t.id.clone() });
                    }
                }
                for slot in 1..=replicas {
                    if by_slot.get(&slot).is_none_or(|v| v.is_empty())
                        && let Some(node) = schedule(state, svc, &load)
                    {
                        place(&mut out, &mut load, slot, node);
                        created = true;
                    }
                }
            }
            ServiceMode::Global => {
                for node in state.nodes.values().filter(|n| eligible(n, svc)) {
                    if !kept.iter().any(|t| t.node == node.id) {
                        place(&mut out, &mut load, 0, node.id);
                        created = true;
                    }
                }
            }
        }
        // Rolling update: one outdated task at a time, and only while the
        // rest of the service is up.
        let settled = !created && kept.iter().all(|t| t.status.state.is_running());
        if settled
            && let Some(old) = kept
                .iter()
                .filter(|t| t.service.as_ref().is_some_and(|r| r.version < svc.version))
                .min_by_key(|t| t.service.as_ref().map(|r| r.slot))
        {
            out.push(Command::RemoveTask { id: old.id.clone() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        Constraint, EndpointMode, Role, ServiceSpec, TaskHealth, TaskSpec, TaskState, TaskStatus,
    };

    fn state(nodes: u64) -> State {
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

    fn service(s: &mut State, mode: ServiceMode, constraints: Vec<Constraint>) {
        s.apply(&Command::CreateService {
            id: "svc".into(),
            spec: ServiceSpec {
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

    /// Applies plans until nothing changes, marking new tasks running.
    fn converge(s: &mut State, now: u64) -> usize {
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
                    t.status = TaskStatus::new(TaskState::RUNNING, 0);
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
            let delay = restart_delay_ms(&s.tasks[&id]);
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
            (exited(None, false), true, false),
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

    #[test]
    fn rolling_update_replaces_one_at_a_time() {
        let mut s = state(3);
        service(&mut s, ServiceMode::Replicated { replicas: 3 }, vec![]);
        converge(&mut s, 0);
        let spec = s.services["svc"].spec.clone();
        s.apply(&Command::UpdateService {
            id: "svc".into(),
            spec,
            force: true,
            now_ms: 0,
        })
        .unwrap();
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
    fn no_eligible_node_means_pending_not_errors() {
        let mut s = state(2);
        let c: Constraint = "node.labels.zone==nowhere".parse().unwrap();
        service(&mut s, ServiceMode::Replicated { replicas: 2 }, vec![c]);
        assert!(plan(&s, 0, || "x".into()).is_empty());
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
