//! A task's observed state: one enum from creation to its end, and how it
//! is stored.
//!
//! ```text
//!  new ─▶ pending ─▶ pulling ─▶ starting ─▶ running ─▶ exited
//!            │          │           │          │
//!            └──────────┴───────────┴──────────┴─────▶ failed | rejected | shutdown
//! ```
//!
//! Only the node running a task writes its state (as reports through the
//! dispatcher); the store creates it `pending`. The stored form is the flat
//! JSON object that string states had (`{"state":"running","message":…,
//! "exit_code":…,"updated_at_ms":…}`) with the new fields beside it, so Raft
//! log entries and snapshots written before states were typed read as they
//! are.

use serde::{Deserialize, Serialize};

/// Where a task is in its life, as its node last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// In the store, not yet seen by its node.
    New,
    /// Waiting; `reason` says for what (empty: for its node to start it).
    Pending {
        /// Why it waits, for `service ps`.
        reason: String,
    },
    /// Its node fetches the image.
    Pulling,
    /// Its node is starting it.
    Starting,
    /// Its process runs.
    Running {
        /// The health check's verdict.
        health: TaskHealth,
    },
    /// It ended by itself.
    Exited {
        /// Its exit code; `None` when a signal ended it.
        code: Option<i32>,
        /// The kernel's OOM killer ended it.
        oom: bool,
    },
    /// It could not be started, or its node lost it.
    Failed,
    /// Its node refused it (an image that cannot be pulled, a bad spec).
    Rejected,
    /// It was stopped on request.
    Shutdown,
}

/// A running task's health, from its health check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskHealth {
    /// It has no health check.
    #[default]
    None,
    /// Checks run, none has decided yet.
    Starting,
    /// The last checks passed.
    Healthy,
    /// Checks failed as often as the check allows.
    Unhealthy,
}

impl TaskState {
    /// Running, whatever its health.
    pub const RUNNING: TaskState = TaskState::Running {
        health: TaskHealth::None,
    };

    /// Waiting for its node, for no reason worth telling.
    pub fn pending() -> Self {
        TaskState::Pending {
            reason: String::new(),
        }
    }

    /// Its name: the word the stored form and `ps` use.
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending { .. } => "pending",
            TaskState::Pulling => "pulling",
            TaskState::Starting => "starting",
            TaskState::Running { .. } => "running",
            TaskState::Exited { .. } => "exited",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Shutdown => "shutdown",
        }
    }

    /// Whether its process runs (a VIP backend, a converged replica).
    pub fn is_running(&self) -> bool {
        matches!(self, TaskState::Running { .. })
    }

    /// Whether it may take traffic: running with no health check or a
    /// healthy one. Only these are VIP backends, ingress targets and DNS
    /// answers of their service; a task whose check has not passed yet
    /// (starting) or failed (unhealthy) is left out, not killed.
    pub fn is_serving(&self) -> bool {
        matches!(
            self,
            TaskState::Running {
                health: TaskHealth::None | TaskHealth::Healthy
            }
        )
    }

    /// Whether it has ended for good: nothing on its node will move it on,
    /// so the orchestrator may replace it.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TaskState::Exited { .. }
                | TaskState::Failed
                | TaskState::Rejected
                | TaskState::Shutdown
        )
    }

    /// Whether it ended badly, which `--restart-condition on-failure`
    /// restarts: failed, rejected, a non-zero exit, an end by a signal (no
    /// code: Docker's 128+N, which it counts too) or the OOM killer. A task
    /// its node stopped on request ends as shutdown, or is not restarted
    /// because it is no longer desired.
    pub fn is_failure(&self) -> bool {
        match self {
            TaskState::Failed | TaskState::Rejected => true,
            TaskState::Exited { code, oom } => *oom || *code != Some(0),
            _ => false,
        }
    }
}

/// Observed state of a task, as its node reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredTaskStatus", into = "StoredTaskStatus")]
pub struct TaskStatus {
    /// Where it is.
    pub state: TaskState,
    /// Details: the error of a failed or rejected task, the signal that
    /// ended an exited one.
    pub message: String,
    /// Unix ms of the report.
    pub updated_at_ms: u64,
}

impl TaskStatus {
    /// `state`, with no message, reported at `updated_at_ms`.
    pub fn new(state: TaskState, updated_at_ms: u64) -> Self {
        TaskStatus {
            state,
            message: String::new(),
            updated_at_ms,
        }
    }
}

/// How a [`TaskStatus`] is stored: flat, with the state's name under
/// `state` as string states were written, and each variant's data in a
/// field of its own that older entries lack.
#[derive(Serialize, Deserialize)]
struct StoredTaskStatus {
    state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
    #[serde(default, skip_serializing_if = "is_no_health")]
    health: TaskHealth,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false")]
    oom: bool,
    #[serde(default)]
    message: String,
    #[serde(default)]
    updated_at_ms: u64,
}

fn is_no_health(h: &TaskHealth) -> bool {
    *h == TaskHealth::None
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl From<TaskStatus> for StoredTaskStatus {
    fn from(s: TaskStatus) -> Self {
        let mut out = StoredTaskStatus {
            state: s.state.name().to_string(),
            reason: String::new(),
            health: TaskHealth::None,
            exit_code: None,
            oom: false,
            message: s.message,
            updated_at_ms: s.updated_at_ms,
        };
        match s.state {
            TaskState::Pending { reason } => out.reason = reason,
            TaskState::Running { health } => out.health = health,
            TaskState::Exited { code, oom } => {
                out.exit_code = code;
                out.oom = oom;
            }
            _ => {}
        }
        out
    }
}

impl From<StoredTaskStatus> for TaskStatus {
    fn from(s: StoredTaskStatus) -> Self {
        let mut message = s.message;
        let state = match s.state.as_str() {
            "new" => TaskState::New,
            "pending" => TaskState::Pending { reason: s.reason },
            "pulling" => TaskState::Pulling,
            "starting" => TaskState::Starting,
            "running" => TaskState::Running { health: s.health },
            "exited" => TaskState::Exited {
                code: s.exit_code,
                oom: s.oom,
            },
            "failed" => TaskState::Failed,
            "rejected" => TaskState::Rejected,
            "shutdown" => TaskState::Shutdown,
            // Before states were typed a node could report any word and the
            // store kept it; such an entry must still replay. A task whose
            // state nobody knows is not running: failed, and it says why.
            other => {
                message = format!("node reported an unknown state {other:?}: {message}");
                TaskState::Failed
            }
        };
        TaskStatus {
            state,
            message,
            updated_at_ms: s.updated_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_the_stored_form() {
        for state in crate::testing::task_states() {
            let s = TaskStatus {
                state,
                message: "m".into(),
                updated_at_ms: 7,
            };
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(
                serde_json::from_str::<TaskStatus>(&json).unwrap(),
                s,
                "{json}"
            );
        }
    }

    #[test]
    fn the_stored_form_is_flat_and_named() {
        let s = TaskStatus {
            state: TaskState::Exited {
                code: Some(137),
                oom: true,
            },
            message: String::new(),
            updated_at_ms: 5,
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "state": "exited", "exit_code": 137, "oom": true,
                "message": "", "updated_at_ms": 5
            })
        );
        let s = TaskStatus::new(
            TaskState::Running {
                health: TaskHealth::Healthy,
            },
            5,
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "state": "running", "health": "healthy", "exit_code": null,
                "message": "", "updated_at_ms": 5
            })
        );
    }

    /// A task as a snapshot held it while states were strings: serde_json
    /// of the old `TaskStatus { state: String, message, exit_code,
    /// updated_at_ms }` inside a whole `Task`, printed by that code.
    const OLD_TASK: &str = r#"{"id":"00000000000000a1","name":"web.1.00000000000000a1","node":2,"spec":{"command":["sleep","9"],"env":{}},"attachments":[{"network":"n1","ip":"10.0.9.3","ifname":"eth0"}],"gateway_ip":"172.18.0.3","desired":"running","status":{"state":"exited","message":"killed by signal 9","exit_code":null,"updated_at_ms":1700000000000},"created_at_ms":1699999999000,"service":{"service":"s1","slot":1,"version":1},"network_mode":"attached","ports":[]}"#;

    /// A Raft log entry's command from then, printed the same way.
    const OLD_COMMAND: &str = r#"{"SetTaskStatus":{"id":"00000000000000a1","node":2,"status":{"state":"exited","message":"","exit_code":3,"updated_at_ms":1700000000000}}}"#;

    #[test]
    fn string_states_from_before_read_back() {
        let t: crate::store::Task = serde_json::from_str(OLD_TASK).unwrap();
        assert_eq!(
            t.status,
            TaskStatus {
                state: TaskState::Exited {
                    code: None,
                    oom: false
                },
                message: "killed by signal 9".into(),
                updated_at_ms: 1_700_000_000_000,
            }
        );
        let c: crate::store::Command = serde_json::from_str(OLD_COMMAND).unwrap();
        let crate::store::Command::SetTaskStatus { status, .. } = c else {
            panic!("{c:?}");
        };
        assert_eq!(
            status.state,
            TaskState::Exited {
                code: Some(3),
                oom: false
            }
        );
        // Every word the old code wrote (the store: pending; nodes:
        // starting, running, exited, failed), with the fields it wrote.
        let cases = [
            ("pending", "null", TaskState::pending()),
            ("starting", "null", TaskState::Starting),
            ("running", "null", TaskState::RUNNING),
            (
                "exited",
                "0",
                TaskState::Exited {
                    code: Some(0),
                    oom: false,
                },
            ),
            ("failed", "null", TaskState::Failed),
        ];
        for (word, code, want) in cases {
            let json = OLD_TASK
                .replace(r#""state":"exited""#, &format!(r#""state":"{word}""#))
                .replace(r#""exit_code":null"#, &format!(r#""exit_code":{code}"#));
            let t: crate::store::Task = serde_json::from_str(&json).expect(&json);
            assert_eq!(t.status.state, want, "{json}");
            assert_eq!(t.status.message, "killed by signal 9");
        }
    }

    #[test]
    fn an_unknown_old_word_replays_as_failed_and_says_so() {
        let s: TaskStatus = serde_json::from_str(
            r#"{"state":"zombie","message":"x","exit_code":null,"updated_at_ms":1}"#,
        )
        .unwrap();
        assert_eq!(s.state, TaskState::Failed);
        assert!(s.message.contains("\"zombie\""), "{}", s.message);
    }

    #[test]
    fn terminal_and_failure() {
        let terminal: Vec<&str> = crate::testing::task_states()
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.name())
            .collect();
        assert_eq!(
            terminal,
            [
                "exited", "exited", "exited", "failed", "rejected", "shutdown"
            ]
        );
        let failure = |s: TaskState| s.is_failure();
        assert!(failure(TaskState::Failed));
        assert!(
            failure(TaskState::Rejected),
            "rejected restarts like failed"
        );
        assert!(failure(TaskState::Exited {
            code: Some(1),
            oom: false
        }));
        assert!(
            failure(TaskState::Exited {
                code: Some(0),
                oom: true
            }),
            "the OOM killer is a failure whatever the code"
        );
        assert!(!failure(TaskState::Exited {
            code: Some(0),
            oom: false
        }));
        assert!(
            failure(TaskState::Exited {
                code: None,
                oom: false
            }),
            "killed by a signal, as Docker's 137 counts"
        );
        assert!(!failure(TaskState::Shutdown), "stopped on request");
        assert!(!failure(TaskState::RUNNING));
        assert!(
            crate::testing::task_states()
                .iter()
                .all(|s| !s.is_failure() || s.is_terminal())
        );
    }
}
