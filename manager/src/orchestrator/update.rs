//! Rolling updates: which outdated tasks a plan replaces now, and why an
//! update waits.

use crate::store::{Command, Service, State, Task};

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

/// The outdated tasks of `svc` to replace now: a batch of
/// `--update-parallelism` (0: all) once the previous one runs and passes
/// its health checks (a check that never passes stalls the update;
/// `update_waits_on` says so), and `--update-delay` after it did. Nothing
/// while this plan places tasks (`created`) or a kept task is not running.
pub(super) fn rolling_update(
    svc: &Service,
    kept: &[&Task],
    created: bool,
    now_ms: u64,
) -> Vec<Command> {
    let version = |t: &Task| t.service.as_ref().map_or(0, |r| r.version);
    let settled = !created
        && kept.iter().all(|t| t.status.state.is_running())
        && unhealthy_updated(svc, kept).is_none();
    let mut outdated: Vec<&&Task> = kept.iter().filter(|t| version(t) < svc.version).collect();
    if !settled || outdated.is_empty() {
        return Vec::new();
    }
    // The last updated task came up at `since` (its status's time).
    let since = kept
        .iter()
        .filter(|t| version(t) == svc.version)
        .map(|t| t.status.updated_at_ms)
        .max();
    if since.is_some_and(|at| now_ms < at.saturating_add(svc.spec.update.delay_ms)) {
        return Vec::new();
    }
    outdated.sort_by_key(|t| t.service.as_ref().map(|r| r.slot));
    let batch = match svc.spec.update.parallelism {
        0 => outdated.len(),
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    outdated
        .into_iter()
        .take(batch)
        .map(|t| Command::RemoveTask { id: t.id.clone() })
        .collect()
}
