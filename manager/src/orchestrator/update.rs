//! Rolling updates: which outdated tasks a plan replaces now and how
//! (`--update-order`), which ends of new tasks count as failures of the
//! update (`--update-monitor`), when it completed, and why it waits.
//!
//! The failure action itself is the store's (`Command::CountUpdateFailure`):
//! the plan only reports what it saw, once per task, so every manager
//! holds the same count.

use crate::store::{
    Command, NodeId, Service, ServiceMode, State, Task, TaskState, UpdateOrder, UpdateState,
};

/// The version of `svc` that `t` was made from.
fn version(t: &Task) -> u64 {
    t.service.as_ref().map_or(0, |r| r.version)
}

/// Where a task belongs in its service: its slot, or for a global service
/// its node. An outdated task and a newer one in the same place are a
/// start-first replacement under way.
fn place(svc: &Service, t: &Task) -> (u64, Option<NodeId>) {
    match svc.spec.mode {
        ServiceMode::Global => (0, Some(t.node)),
        ServiceMode::Replicated { .. } => (t.service.as_ref().map_or(0, |r| r.slot), None),
    }
}

/// The first task of `svc`'s current version among `tasks` that runs but
/// has not passed its health check (starting or unhealthy): a rolling
/// update waits for it before it replaces the next outdated task.
fn unhealthy_updated<'a>(svc: &Service, tasks: &[&'a Task]) -> Option<&'a Task> {
    tasks
        .iter()
        .filter(|t| t.service.as_ref().is_some_and(|r| r.version == svc.version))
        .filter(|t| t.status.state.is_running() && !t.status.state.is_serving())
        .min_by_key(|t| t.service.as_ref().map(|r| r.slot))
        .copied()
}

/// Why `svc`'s rolling update waits, for `service ls`/`inspect`: an
/// updated task that is not healthy yet while outdated tasks remain.
/// `None` when no update is under way or nothing holds it.
pub fn update_waits_on(state: &State, svc: &Service) -> Option<String> {
    let tasks: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| t.service.as_ref().is_some_and(|r| r.service == svc.id))
        .filter(|t| !t.status.state.is_terminal())
        .collect();
    let outdated = tasks
        .iter()
        .filter(|t| t.service.as_ref().is_some_and(|r| r.version < svc.version))
        .count();
    if let Some(st) = &svc.update_status
        && matches!(st.state, UpdateState::Paused | UpdateState::RollbackPaused)
    {
        return Some(format!(
            "{}; run `weft service update` to resume it, or `weft service rollback`",
            st.message
        ));
    }
    if outdated == 0 {
        return None;
    }
    let t = unhealthy_updated(svc, &tasks)?;
    let health = match &t.status.state {
        crate::store::TaskState::Running { health } => format!("{health:?}").to_lowercase(),
        other => other.name().to_string(),
    };
    Some(format!(
        "update paused: {outdated} task(s) still to replace; waiting for task {} ({}) to pass its \
         health check (it is {health})",
        t.name,
        &t.id[..t.id.len().min(12)]
    ))
}

/// Of the tasks `ts` in one place of `svc` (a valid slot, or a node of
/// a global service), those beyond what the place holds: one task, the
/// best (the current version, serving, running, newest), and beside a
/// current-version one that does not serve yet the best outdated one,
/// which serves meanwhile (a start-first replacement: once the new task
/// serves, the old one is surplus).
pub(super) fn surplus<'a>(svc: &Service, ts: &[&'a Task]) -> Vec<&'a Task> {
    let mut sorted = ts.to_vec();
    sorted.sort_by_key(|t| {
        std::cmp::Reverse((
            version(t) == svc.version,
            t.status.state.is_serving(),
            t.status.state.is_running(),
            !t.status.state.is_terminal(),
            t.created_at_ms,
            t.id.clone(),
        ))
    });
    let Some(best) = sorted.first().copied() else {
        return Vec::new();
    };
    let mut keep = vec![best.id.as_str()];
    if version(best) == svc.version
        && !best.status.state.is_serving()
        && let Some(old) = sorted.iter().find(|t| version(t) < svc.version)
    {
        keep.push(old.id.as_str());
    }
    sorted
        .into_iter()
        .filter(|t| !keep.contains(&t.id.as_str()))
        .collect()
}

/// Whether `t`'s end counts against the update of `svc` under way (and so
/// a finished `t` must stay until it is counted: a restart removing it
/// first would lose the count): it is
/// of the version being rolled out, ended other than on request, before
/// it ran or within `--update-monitor` of starting (both times from its
/// node's clock), and it is not counted yet.
pub(super) fn failed_update(svc: &Service, t: &Task) -> bool {
    let Some(st) = svc
        .update_status
        .as_ref()
        .filter(|st| st.state.in_progress())
    else {
        return false;
    };
    let monitor = svc.rollout_policy().monitor_ms;
    version(t) == svc.version
        && t.status.state.is_terminal()
        && t.status.state != TaskState::Shutdown
        && t.started_at_ms
            .is_none_or(|at| t.status.updated_at_ms.saturating_sub(at) <= monitor)
        && !st.failures.contains(&t.id)
        && st.failures.len() < crate::store::MAX_COUNTED_FAILURES
}

/// The failures of `svc`'s update under way among `tasks` not yet counted.
pub(super) fn count_failures(svc: &Service, tasks: &[&Task], now_ms: u64) -> Vec<Command> {
    tasks
        .iter()
        .filter(|t| failed_update(svc, t))
        .map(|t| Command::CountUpdateFailure {
            service: svc.id.clone(),
            version: svc.version,
            task: t.id.clone(),
            now_ms,
        })
        .collect()
}

/// What a rolling update does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Stop an outdated task (stop-first; its slot is refilled).
    Remove(String),
    /// Start a replacement beside an outdated task (start-first): in its
    /// slot, on a node the scheduler picks, or for a global service on
    /// its node.
    Start {
        /// The slot (0: global).
        slot: u64,
        /// The node, for a global service.
        node: Option<NodeId>,
    },
    /// The update under way completed.
    Complete,
}

/// The next steps of `svc`'s rolling update over its tasks `live` (those
/// this plan keeps): a batch of `--update-parallelism` (0: all) once the
/// previous one runs and passes its health checks (a check that never
/// passes stalls the update; `update_waits_on` says so) and
/// `--update-delay` after it did. Nothing while this plan places tasks
/// (`created`), a task is not running, or the update is paused. Once no
/// outdated task is left, the `desired` tasks serve and the last one has
/// been watched for `--update-monitor`, the update completed.
pub(super) fn rolling_update(
    svc: &Service,
    live: &[&Task],
    created: bool,
    desired: u64,
    now_ms: u64,
) -> Vec<Step> {
    let policy = svc.rollout_policy();
    let status = svc.update_status.as_ref().map(|st| st.state);
    if matches!(
        status,
        Some(UpdateState::Paused | UpdateState::RollbackPaused)
    ) {
        return Vec::new();
    }
    let current: Vec<&Task> = live
        .iter()
        .filter(|t| version(t) == svc.version)
        .copied()
        .collect();
    let in_flight: Vec<(u64, Option<NodeId>)> = current.iter().map(|t| place(svc, t)).collect();
    let mut outdated: Vec<&Task> = live
        .iter()
        .filter(|t| version(t) < svc.version && !in_flight.contains(&place(svc, t)))
        .copied()
        .collect();
    let settled = !created
        && live.iter().all(|t| t.status.state.is_running())
        && unhealthy_updated(svc, live).is_none();
    if !settled {
        return Vec::new();
    }
    // The last updated task came up at `since` (its status's time).
    let since = current.iter().map(|t| t.status.updated_at_ms).max();
    if outdated.is_empty() {
        let paired = live.iter().any(|t| version(t) < svc.version);
        let started = current
            .iter()
            .map(|t| t.started_at_ms.unwrap_or(t.status.updated_at_ms))
            .max();
        let watched = started.is_none_or(|at| now_ms >= at.saturating_add(policy.monitor_ms));
        let done = status.is_some_and(UpdateState::in_progress)
            && !paired
            && current.len() as u64 >= desired
            && watched;
        return if done {
            vec![Step::Complete]
        } else {
            Vec::new()
        };
    }
    if since.is_some_and(|at| now_ms < at.saturating_add(policy.delay_ms)) {
        return Vec::new();
    }
    outdated.sort_by_key(|t| place(svc, t));
    let batch = match policy.parallelism {
        0 => outdated.len(),
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    outdated
        .into_iter()
        .take(batch)
        .map(|t| match policy.order {
            UpdateOrder::StopFirst => Step::Remove(t.id.clone()),
            UpdateOrder::StartFirst => {
                let (slot, node) = place(svc, t);
                Step::Start { slot, node }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::tests::{converge, service, state, update};
    use crate::store::{
        Command, FailureAction, ServiceMode, State, TaskState, TaskStatus, UpdateOrder,
        UpdatePolicy, UpdateState,
    };

    /// Applies one plan at `now` (IDs from `next`); returns its commands.
    fn step(s: &mut State, now: u64, next: &mut u64) -> Vec<Command> {
        let cmds = plan(s, now, || {
            *next += 1;
            format!("{:016x}", *next)
        });
        for c in &cmds {
            s.apply(c).unwrap();
        }
        cmds
    }

    /// Each task's node reports `state` for every task in `from`, at `at`.
    fn report(
        s: &mut State,
        from: impl Fn(&crate::store::Task) -> bool,
        state: TaskState,
        at: u64,
    ) {
        let ids: Vec<_> = s
            .tasks
            .values()
            .filter(|t| from(t))
            .map(|t| (t.id.clone(), t.node))
            .collect();
        for (id, node) in ids {
            s.apply(&Command::SetTaskStatus {
                id,
                node,
                status: TaskStatus::new(state.clone(), at),
            })
            .unwrap();
        }
    }

    fn pending(t: &crate::store::Task) -> bool {
        matches!(t.status.state, TaskState::Pending { .. })
    }

    fn versions(s: &State) -> Vec<u64> {
        let mut v: Vec<u64> = s
            .tasks
            .values()
            .map(|t| t.service.as_ref().unwrap().version)
            .collect();
        v.sort();
        v
    }

    /// A replicated service of `replicas` running, with `policy`; then a
    /// spec change (env V=2) starts an update.
    fn updating(replicas: u64, policy: UpdatePolicy) -> State {
        let mut s = state(3);
        service(&mut s, ServiceMode::Replicated { replicas }, vec![]);
        s.services.get_mut("svc").unwrap().spec.update = policy;
        converge(&mut s, 0);
        let mut spec = s.services["svc"].spec.clone();
        spec.task.env.insert("V".into(), "2".into());
        update(&mut s, spec, false);
        s
    }

    fn status(s: &State) -> UpdateState {
        s.services["svc"].update_status.as_ref().unwrap().state
    }

    /// Start first: the new task runs beside the old one, which stops only
    /// once the new one serves; never fewer tasks running than replicas.
    #[test]
    fn start_first_starts_the_replacement_before_stopping_the_old_task() {
        let policy = UpdatePolicy {
            order: UpdateOrder::StartFirst,
            ..Default::default()
        };
        let mut s = updating(2, policy);
        let mut next = 100;
        let cmds = step(&mut s, 1_000, &mut next);
        assert!(
            matches!(&cmds[..], [Command::CreateServiceTask { slot: 1, .. }]),
            "{cmds:?}"
        );
        assert_eq!(s.tasks.len(), 3, "the old task of slot 1 still runs");
        assert!(step(&mut s, 1_000, &mut next).is_empty(), "waits for it");
        report(
            &mut s,
            pending,
            TaskState::Running {
                health: crate::store::TaskHealth::Starting,
            },
            1_100,
        );
        assert!(
            step(&mut s, 1_100, &mut next).is_empty(),
            "waits for its check"
        );
        report(
            &mut s,
            |t| t.status.state.is_running(),
            TaskState::RUNNING,
            1_200,
        );
        let cmds = step(&mut s, 1_200, &mut next);
        assert!(
            matches!(
                &cmds[..],
                [
                    Command::RemoveTask { .. },
                    Command::CreateServiceTask { slot: 2, .. }
                ]
            ),
            "the old task goes, slot 2's replacement starts: {cmds:?}"
        );
        for now in [1_300, 1_400] {
            report(&mut s, pending, TaskState::RUNNING, now);
            step(&mut s, now, &mut next);
            let running = s
                .tasks
                .values()
                .filter(|t| t.status.state.is_running())
                .count();
            assert!(running >= 2, "{running} running");
        }
        assert_eq!(versions(&s), vec![2, 2]);
        assert_eq!(status(&s), UpdateState::Updating, "watched for 5 s first");
        let cmds = step(&mut s, 1_400 + 5_000, &mut next);
        assert!(
            matches!(&cmds[..], [Command::CompleteUpdate { version: 2, .. }]),
            "{cmds:?}"
        );
        assert_eq!(status(&s), UpdateState::Completed);
        assert!(step(&mut s, 10_000, &mut next).is_empty());
    }

    /// The default failure action pauses on the first failure: the failed
    /// task is counted once (before its restart removes it) and nothing
    /// more is replaced until the next `service update`.
    #[test]
    fn a_failed_task_pauses_the_update_and_an_update_resumes_it() {
        let mut s = updating(3, UpdatePolicy::default());
        let mut next = 100;
        step(&mut s, 1_000, &mut next); // slot 1's old task goes
        step(&mut s, 1_000, &mut next); // its replacement is made
        report(&mut s, pending, TaskState::RUNNING, 1_100);
        report(
            &mut s,
            |t| t.service.as_ref().unwrap().version == 2,
            TaskState::Failed,
            1_200,
        );
        let cmds = step(&mut s, 60_000, &mut next);
        assert!(
            matches!(&cmds[..], [Command::CountUpdateFailure { version: 2, .. }]),
            "counted, not yet removed: {cmds:?}"
        );
        assert_eq!(status(&s), UpdateState::Paused);
        let st = s.services["svc"].update_status.clone().unwrap();
        assert!(
            st.message
                .starts_with("update paused due to failure or early termination of task web.1."),
            "{}",
            st.message
        );
        assert!(
            super::update_waits_on(&s, &s.services["svc"])
                .unwrap()
                .contains("update paused")
        );
        // Paused: the failed task restarts, the two old ones stay.
        for _ in 0..3 {
            step(&mut s, 120_000, &mut next);
            report(&mut s, pending, TaskState::RUNNING, 120_000);
        }
        assert_eq!(versions(&s), vec![1, 1, 2]);
        // A new update (even one that replaces no task) resumes it.
        let spec = s.services["svc"].spec.clone();
        update(&mut s, spec, false);
        assert_eq!(status(&s), UpdateState::Updating);
        for now in [130_000, 130_100, 130_200, 130_300, 130_400] {
            step(&mut s, now, &mut next);
            report(&mut s, pending, TaskState::RUNNING, now);
        }
        assert_eq!(versions(&s), vec![2, 2, 2]);
    }

    /// `--update-failure-action rollback`: the service goes back to the
    /// previous spec by itself, under the rollback settings.
    #[test]
    fn a_failed_task_rolls_the_update_back() {
        let policy = UpdatePolicy {
            failure_action: FailureAction::Rollback,
            ..Default::default()
        };
        let mut s = updating(2, policy);
        let old = s.services["svc"].previous_spec.clone().unwrap();
        let mut next = 100;
        step(&mut s, 1_000, &mut next);
        step(&mut s, 1_000, &mut next);
        let untouched: Vec<String> = s
            .tasks
            .values()
            .filter(|t| t.service.as_ref().unwrap().version == 1)
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(untouched.len(), 1);
        report(&mut s, pending, TaskState::Rejected, 1_100);
        step(&mut s, 1_200, &mut next);
        let svc = &s.services["svc"];
        assert_eq!(svc.spec, *old, "back on the old spec");
        assert_eq!(svc.version, 3);
        assert_eq!(
            s.tasks[&untouched[0]].service.as_ref().unwrap().version,
            3,
            "the task that still runs the old spec is adopted, not replaced"
        );
        assert_eq!(status(&s), UpdateState::RollbackStarted);
        assert!(
            svc.update_status
                .as_ref()
                .unwrap()
                .message
                .starts_with("update rolled back due to failure")
        );
        for now in [2_000, 2_100, 2_200, 2_300, 2_400] {
            step(&mut s, now, &mut next);
            report(&mut s, pending, TaskState::RUNNING, now);
        }
        assert_eq!(versions(&s), vec![3, 3]);
        step(&mut s, 2_400 + 5_000, &mut next);
        assert_eq!(status(&s), UpdateState::RollbackCompleted);
        assert_eq!(s.services["svc"].spec, *old);
    }

    /// `--update-max-failure-ratio`: failures up to the share go on; past
    /// it the action is taken. `--update-monitor`: a task that ran longer
    /// before it ended is not a failure of the update.
    #[test]
    fn the_failure_ratio_and_monitor_decide_what_counts() {
        let policy = UpdatePolicy {
            parallelism: 0,
            max_failure_ratio_ppm: 500_000,
            monitor_ms: 10_000,
            ..Default::default()
        };
        let mut s = updating(4, policy);
        let mut next = 100;
        step(&mut s, 1_000, &mut next);
        step(&mut s, 1_000, &mut next);
        report(&mut s, pending, TaskState::RUNNING, 1_000);
        let new: Vec<String> = s.tasks.keys().cloned().collect();
        let end = |s: &mut State, id: &str, at: u64| {
            report(
                s,
                |t| t.id == id,
                TaskState::Exited {
                    code: Some(1),
                    oom: false,
                },
                at,
            );
        };
        end(&mut s, &new[0], 20_000); // ran 19 s: past the monitor
        step(&mut s, 20_000, &mut next);
        assert!(
            s.services["svc"]
                .update_status
                .as_ref()
                .unwrap()
                .failures
                .is_empty()
        );
        end(&mut s, &new[1], 5_000);
        end(&mut s, &new[2], 5_000);
        step(&mut s, 20_000, &mut next);
        assert_eq!(status(&s), UpdateState::Updating, "2 of 4 is not past 0.5");
        end(&mut s, &new[3], 5_000);
        step(&mut s, 20_000, &mut next);
        assert_eq!(status(&s), UpdateState::Paused, "3 of 4 is");
        assert_eq!(
            s.services["svc"]
                .update_status
                .as_ref()
                .unwrap()
                .failures
                .len(),
            3
        );
    }

    /// `service rollback` swaps the specs and starts a rollback; an update
    /// that replaces no task starts no status.
    #[test]
    fn manual_rollback_and_updates_that_replace_nothing() {
        let mut s = updating(1, UpdatePolicy::default());
        let new = s.services["svc"].spec.clone();
        s.apply(&Command::RollbackService {
            id: "svc".into(),
            now_ms: 5,
        })
        .unwrap();
        let svc = &s.services["svc"];
        assert_eq!(svc.previous_spec.as_deref(), Some(&new));
        assert_eq!(status(&s), UpdateState::RollbackStarted);
        assert_eq!(
            svc.update_status.as_ref().unwrap().message,
            "manually requested rollback"
        );
        let mut s = state(1);
        service(&mut s, ServiceMode::Replicated { replicas: 1 }, vec![]);
        let mut spec = s.services["svc"].spec.clone();
        spec.mode = ServiceMode::Replicated { replicas: 2 };
        update(&mut s, spec, false);
        assert!(
            s.services["svc"].update_status.is_none(),
            "a scale is no update"
        );
        assert!(matches!(
            s.apply(&Command::RollbackService {
                id: "nope".into(),
                now_ms: 0
            }),
            Err(crate::store::StoreError::ServiceNotFound(_))
        ));
    }
}
