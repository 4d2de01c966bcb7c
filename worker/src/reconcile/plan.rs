//! The pure half of a pass over the node's tasks: from what is assigned and
//! a snapshot of what the node knows ([`TaskView`]), which tasks to remove,
//! which to start, what to report and which to probe. The loop
//! ([`super::Reconciler`]) takes the snapshot, asks here, and acts (the
//! jobs, the probers, the report); nothing here touches a runtime.
//!
//! ```text
//!  assigned tasks ─┐
//!                  ├─▶ removals() ─▶ remove jobs      (before the data plane pass)
//!  TaskView ───────┤
//!                  └─▶ tasks(plane_ok) ─▶ start jobs, reports, health checks
//! ```

use std::collections::{BTreeMap, BTreeSet};

use weft_proto::v1 as pb;

use crate::health::{Health, HealthCheck};
use crate::runtime::{TaskState, TaskStatus};

/// What the node knows of its tasks at one moment: the runtime's records,
/// the jobs under way and the probers' verdicts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskView {
    /// Every task the runtime knows, by id.
    pub known: BTreeMap<String, TaskStatus>,
    /// The health check of each known task that has one.
    pub checks: BTreeMap<String, HealthCheck>,
    /// The probers' verdict of each probed task.
    pub health: BTreeMap<String, Health>,
    /// Tasks whose image is being pulled.
    pub pulling: BTreeSet<String>,
    /// Tasks with a start job under way.
    pub starting: BTreeSet<String>,
    /// Tasks with a removal job under way.
    pub removing: BTreeSet<String>,
    /// Tasks the runtime refused to start, with why.
    pub refused: BTreeMap<String, String>,
}

/// What a pass does and says about the assigned tasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskPlan {
    /// Assigned tasks to start, in config order.
    pub start: Vec<String>,
    /// One report per assigned task that has a state (not started tasks
    /// left alone have none).
    pub reports: Vec<pb::TaskReport>,
    /// Running tasks with a health check: they keep (or get) a prober; the
    /// rest lose theirs.
    pub checked: Vec<(String, HealthCheck)>,
}

/// Known tasks no longer assigned and not already being removed.
pub fn removals(assigned: &[pb::TaskConfig], v: &TaskView) -> Vec<String> {
    let wanted: BTreeSet<&str> = assigned.iter().map(|t| t.id.as_str()).collect();
    v.known
        .keys()
        .filter(|id| !wanted.contains(id.as_str()) && !v.removing.contains(*id))
        .cloned()
        .collect()
}

/// The assigned tasks' reports and the starts to set going. Starts are
/// planned only once the data plane pass went through (`plane_ok`): a task
/// started without its namespace and addresses would have no network.
/// With `plane_ok` false this is also the early report (states only).
pub fn tasks(assigned: &[pb::TaskConfig], v: &TaskView, plane_ok: bool) -> TaskPlan {
    let mut plan = TaskPlan::default();
    for t in assigned {
        let id = t.id.as_str();
        if let Some(s) = v.known.get(id) {
            let mut report = task_report(id, &s.state);
            if matches!(s.state, TaskState::Running { .. })
                && let Some(check) = v.checks.get(id)
            {
                plan.checked.push((id.to_owned(), check.clone()));
                let health = v.health.get(id).copied().unwrap_or(Health::Starting);
                if let Some(st) = report.status.as_mut() {
                    st.set_health(health_to_wire(health));
                }
            }
            plan.reports.push(report);
        } else if let Some(e) = v.refused.get(id) {
            plan.reports
                .push(task_report(id, &TaskState::Failed { error: e.clone() }));
        } else if v.starting.contains(id) {
            let state = if v.pulling.contains(id) {
                pb::TaskState::Pulling
            } else {
                pb::TaskState::Starting
            };
            plan.reports.push(in_flight(id, state));
        } else if plane_ok && !v.removing.contains(id) {
            plan.start.push(id.to_owned());
            plan.reports.push(in_flight(id, pb::TaskState::Starting));
        }
    }
    plan
}

/// A task on its way to running (`pulling` its image, `starting`).
pub(super) fn in_flight(id: &str, state: pb::TaskState) -> pb::TaskReport {
    let mut status = pb::TaskStatus::default();
    status.set_state(state);
    pb::TaskReport {
        task_id: id.to_string(),
        status: Some(status),
    }
}

/// A health verdict as the wire says it.
fn health_to_wire(h: Health) -> pb::TaskHealth {
    match h {
        Health::Starting => pb::TaskHealth::Starting,
        Health::Healthy => pb::TaskHealth::Healthy,
        Health::Unhealthy => pb::TaskHealth::Unhealthy,
    }
}

fn task_report(id: &str, s: &TaskState) -> pb::TaskReport {
    pb::TaskReport {
        task_id: id.to_string(),
        status: Some(task_status(s)),
    }
}

/// What the runtime says of a task, as the wire says it: running, exited
/// (with its code, or with no code and the signal in the message when a
/// signal ended it) or failed (the error in the message).
pub fn task_status(s: &TaskState) -> pb::TaskStatus {
    let mut out = pb::TaskStatus::default();
    let state = match s {
        TaskState::Running { .. } => pb::TaskState::Running,
        TaskState::Exited { code, signal, oom } => {
            out.oom_killed = *oom;
            out.has_exit_code = code.is_some();
            out.exit_code = code.unwrap_or(0);
            out.signal = signal.unwrap_or(0);
            out.message = signal
                .map(|s| format!("killed by signal {s}"))
                .unwrap_or_default();
            pb::TaskState::Exited
        }
        TaskState::Failed { error } => {
            out.message = error.clone();
            pb::TaskState::Failed
        }
    };
    out.set_state(state);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(ids: &[&str]) -> Vec<pb::TaskConfig> {
        ids.iter()
            .map(|id| pb::TaskConfig {
                id: (*id).into(),
                ..Default::default()
            })
            .collect()
    }

    fn known(id: &str, state: TaskState) -> (String, TaskStatus) {
        (
            id.into(),
            TaskStatus {
                id: id.into(),
                state,
                started_at: None,
                finished_at: None,
            },
        )
    }

    fn running(id: &str) -> (String, TaskStatus) {
        known(id, TaskState::Running { pid: 7 })
    }

    fn check() -> HealthCheck {
        let s = std::time::Duration::from_secs(1);
        HealthCheck {
            argv: vec!["true".into()],
            interval: s,
            timeout: s,
            retries: 3,
            start_period: s,
        }
    }

    fn states(p: &TaskPlan) -> Vec<(&str, pb::TaskState, pb::TaskHealth)> {
        p.reports
            .iter()
            .map(|r| {
                let s = r.status.as_ref().unwrap();
                (r.task_id.as_str(), s.state(), s.health())
            })
            .collect()
    }

    #[test]
    fn unassigned_tasks_are_removed_once() {
        let v = TaskView {
            known: [running("a"), running("b"), running("c")].into(),
            removing: ["c".to_owned()].into(),
            ..Default::default()
        };
        assert_eq!(removals(&assigned(&["a"]), &v), vec!["b".to_owned()]);
        // Nothing known: nothing to remove, whatever is assigned.
        assert!(removals(&assigned(&["a"]), &TaskView::default()).is_empty());
    }

    #[test]
    fn starts_wait_for_the_data_plane_and_for_removals() {
        let v = TaskView {
            removing: ["b".to_owned()].into(),
            ..Default::default()
        };
        let a = assigned(&["a", "b"]);
        let held = tasks(&a, &v, false);
        assert_eq!(held, TaskPlan::default());
        let go = tasks(&a, &v, true);
        assert_eq!(go.start, vec!["a".to_owned()]);
        assert_eq!(
            states(&go),
            vec![("a", pb::TaskState::Starting, pb::TaskHealth::Unspecified)]
        );
    }

    #[test]
    fn known_refused_and_in_flight_tasks_are_reported_not_started() {
        let v = TaskView {
            known: [
                running("run"),
                known(
                    "done",
                    TaskState::Exited {
                        code: Some(0),
                        signal: None,
                        oom: false,
                    },
                ),
            ]
            .into(),
            refused: [("bad".to_owned(), "no such image".to_owned())].into(),
            starting: ["pull".to_owned(), "boot".to_owned()].into(),
            pulling: ["pull".to_owned()].into(),
            ..Default::default()
        };
        let p = tasks(&assigned(&["run", "done", "bad", "pull", "boot"]), &v, true);
        assert!(p.start.is_empty(), "{:?}", p.start);
        use pb::TaskHealth::Unspecified as U;
        assert_eq!(
            states(&p),
            vec![
                ("run", pb::TaskState::Running, U),
                ("done", pb::TaskState::Exited, U),
                ("bad", pb::TaskState::Failed, U),
                ("pull", pb::TaskState::Pulling, U),
                ("boot", pb::TaskState::Starting, U),
            ]
        );
        assert_eq!(
            p.reports[2].status.as_ref().unwrap().message,
            "no such image"
        );
    }

    #[test]
    fn running_tasks_with_a_check_are_probed_and_report_health() {
        let v = TaskView {
            known: [
                running("new"),
                running("ok"),
                running("plain"),
                known("gone", TaskState::Failed { error: "x".into() }),
            ]
            .into(),
            checks: [
                ("new".to_owned(), check()),
                ("ok".to_owned(), check()),
                ("gone".to_owned(), check()),
            ]
            .into(),
            health: [("ok".to_owned(), Health::Healthy)].into(),
            ..Default::default()
        };
        let p = tasks(&assigned(&["new", "ok", "plain", "gone"]), &v, true);
        let probed: Vec<&str> = p.checked.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(probed, vec!["new", "ok"]);
        let health: Vec<_> = states(&p).into_iter().map(|(id, _, h)| (id, h)).collect();
        assert_eq!(
            health,
            vec![
                ("new", pb::TaskHealth::Starting),
                ("ok", pb::TaskHealth::Healthy),
                ("plain", pb::TaskHealth::Unspecified),
                ("gone", pb::TaskHealth::Unspecified),
            ]
        );
    }

    #[test]
    fn runtime_states_on_the_wire() {
        let running = task_status(&TaskState::Running { pid: 42 });
        assert_eq!(running.state(), pb::TaskState::Running);
        assert_eq!(running.health(), pb::TaskHealth::Unspecified);
        assert!(!running.has_exit_code);
        let exited = task_status(&TaskState::Exited {
            code: Some(3),
            signal: None,
            oom: false,
        });
        assert_eq!(exited.state(), pb::TaskState::Exited);
        assert!(exited.has_exit_code);
        assert_eq!(exited.exit_code, 3);
        assert!(exited.message.is_empty());
        assert!(!exited.oom_killed);
        // A signal: exited with no code, the signal in the message.
        let killed = task_status(&TaskState::Exited {
            code: None,
            signal: Some(9),
            oom: false,
        });
        assert_eq!(killed.state(), pb::TaskState::Exited);
        assert!(!killed.has_exit_code);
        assert_eq!(killed.message, "killed by signal 9");
        let failed = task_status(&TaskState::Failed {
            error: "no such file".into(),
        });
        assert_eq!(failed.state(), pb::TaskState::Failed);
        assert_eq!(failed.message, "no such file");
    }
}
