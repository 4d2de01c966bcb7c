//! How the CLI shows a task's state: the lower-case words `weft ps` and
//! `weft service ps` have always printed (scripts and tests read them),
//! with what belongs to each state beside the word.

use weft_proto::v1 as pb;

/// The word for a state.
pub fn word(s: pb::TaskState) -> &'static str {
    match s {
        pb::TaskState::Unspecified => "unknown",
        pb::TaskState::New => "new",
        pb::TaskState::Pending => "pending",
        pb::TaskState::Pulling => "pulling",
        pb::TaskState::Starting => "starting",
        pb::TaskState::Running => "running",
        pb::TaskState::Exited => "exited",
        pb::TaskState::Failed => "failed",
        pb::TaskState::Rejected => "rejected",
        pb::TaskState::Shutdown => "shutdown",
    }
}

/// The observed state of `t` (none sent: unspecified).
pub fn state(t: &pb::Task) -> pb::TaskState {
    t.status
        .as_ref()
        .map_or(pb::TaskState::Unspecified, |s| s.state())
}

/// The state column: the word, with a running task's health
/// (`running (healthy)`) or an exited task's code and the OOM killer
/// (`exited (0)`, `exited (137, OOM killed)`, `exited (OOM killed)`).
pub fn current(t: &pb::Task) -> String {
    let Some(s) = &t.status else {
        return word(pb::TaskState::Unspecified).into();
    };
    let detail = match s.state() {
        pb::TaskState::Running => match s.health() {
            pb::TaskHealth::Unspecified => None,
            pb::TaskHealth::Starting => Some("health: starting".to_string()),
            pb::TaskHealth::Healthy => Some("healthy".to_string()),
            pb::TaskHealth::Unhealthy => Some("unhealthy".to_string()),
        },
        pb::TaskState::Exited => match (s.has_exit_code, s.oom_killed) {
            (true, false) => Some(s.exit_code.to_string()),
            (true, true) => Some(format!("{}, OOM killed", s.exit_code)),
            (false, true) => Some("OOM killed".to_string()),
            (false, false) => None,
        },
        _ => None,
    };
    match detail {
        Some(d) => format!("{} ({d})", word(s.state())),
        None => word(s.state()).into(),
    }
}

/// The error column: why a pending task waits, else the status message
/// (a failure's error, the signal that ended a task).
pub fn error(t: &pb::Task) -> &str {
    match &t.status {
        Some(s) if s.state() == pb::TaskState::Pending && !s.reason.is_empty() => &s.reason,
        Some(s) => &s.message,
        None => "",
    }
}

/// Whether a task in state `s` has ended for good (`weft ps` leaves these
/// out unless asked for all).
pub fn is_terminal(s: pb::TaskState) -> bool {
    matches!(
        s,
        pb::TaskState::Exited
            | pb::TaskState::Failed
            | pb::TaskState::Rejected
            | pb::TaskState::Shutdown
    )
}

/// Whether a task in state `s` failed (or its node refused it): what
/// `weft run` and `weft service create` report instead of waiting on.
pub fn is_failed(s: pb::TaskState) -> bool {
    matches!(s, pb::TaskState::Failed | pb::TaskState::Rejected)
}

/// `network=ip,…`: a task's addresses (a dual-stack network's twice,
/// IPv4 first).
pub fn addresses(t: &pb::Task) -> String {
    t.addresses
        .iter()
        .flat_map(|a| {
            std::iter::once(&a.ip)
                .chain(Some(&a.ip6).filter(|ip| !ip.is_empty()))
                .map(|ip| format!("{}={ip}", a.network))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(s: pb::TaskStatus) -> pb::Task {
        pb::Task {
            status: Some(s),
            ..Default::default()
        }
    }

    fn status(state: pb::TaskState) -> pb::TaskStatus {
        pb::TaskStatus {
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_state_column() {
        let cases = [
            (status(pb::TaskState::Running), "running"),
            (
                pb::TaskStatus {
                    health: pb::TaskHealth::Healthy.into(),
                    ..status(pb::TaskState::Running)
                },
                "running (healthy)",
            ),
            (
                pb::TaskStatus {
                    health: pb::TaskHealth::Unhealthy.into(),
                    ..status(pb::TaskState::Running)
                },
                "running (unhealthy)",
            ),
            (
                pb::TaskStatus {
                    health: pb::TaskHealth::Starting.into(),
                    ..status(pb::TaskState::Running)
                },
                "running (health: starting)",
            ),
            (
                pb::TaskStatus {
                    has_exit_code: true,
                    exit_code: 0,
                    ..status(pb::TaskState::Exited)
                },
                "exited (0)",
            ),
            (
                pb::TaskStatus {
                    has_exit_code: true,
                    exit_code: 137,
                    oom_killed: true,
                    ..status(pb::TaskState::Exited)
                },
                "exited (137, OOM killed)",
            ),
            (
                pb::TaskStatus {
                    oom_killed: true,
                    ..status(pb::TaskState::Exited)
                },
                "exited (OOM killed)",
            ),
            (status(pb::TaskState::Exited), "exited"),
            (status(pb::TaskState::New), "new"),
            (status(pb::TaskState::Pending), "pending"),
            (status(pb::TaskState::Pulling), "pulling"),
            (status(pb::TaskState::Starting), "starting"),
            (status(pb::TaskState::Failed), "failed"),
            (status(pb::TaskState::Rejected), "rejected"),
            (status(pb::TaskState::Shutdown), "shutdown"),
        ];
        for (s, want) in cases {
            assert_eq!(current(&task(s.clone())), want, "{s:?}");
        }
        assert_eq!(current(&pb::Task::default()), "unknown");
    }

    #[test]
    fn the_error_column_shows_why_a_task_is_pending() {
        let pending = pb::TaskStatus {
            reason: "no suitable node (1 node not available)".into(),
            ..status(pb::TaskState::Pending)
        };
        assert_eq!(
            error(&task(pending)),
            "no suitable node (1 node not available)"
        );
        let failed = pb::TaskStatus {
            message: "exec: no such file".into(),
            ..status(pb::TaskState::Failed)
        };
        assert_eq!(error(&task(failed)), "exec: no such file");
        assert_eq!(error(&pb::Task::default()), "");
    }
}
