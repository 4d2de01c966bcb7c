//! `weft run` without `-d`: stream the task's output (stdout to stdout,
//! stderr to stderr) from its first line and end with its exit code, as
//! `docker run` does.

use weft_proto::v1 as pb;

use super::{Client, rpc};

/// The CLI ends with this code and prints nothing more: the task's own
/// exit code, or one of Docker's codes for a task that could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// weft itself failed to run the task (Docker's 125): bad input, an image
/// that cannot be pulled, a daemon that cannot be reached.
pub const FAILED_TO_RUN: u8 = 125;
/// The command exists but cannot be run (Docker's 126).
const CANNOT_INVOKE: u8 = 126;
/// The command was not found (Docker's 127).
const NOT_FOUND: u8 = 127;

/// The exit code `weft run` ends with for a task's final status, as
/// Docker's: the task's own code; 128+N when signal N ended it; 137 when the
/// kernel's OOM killer did; 126/127 when its command cannot be run or was
/// not found; 125 when weft could not run it at all.
pub fn exit_code(s: &pb::TaskStatus) -> u8 {
    match s.state() {
        pb::TaskState::Exited if s.oom_killed => 128 + 9,
        pb::TaskState::Exited if s.has_exit_code => u8::try_from(s.exit_code & 0xff).unwrap_or(1),
        pb::TaskState::Exited if s.signal > 0 => u8::try_from((128 + s.signal) & 0xff).unwrap_or(1),
        pb::TaskState::Exited => 0,
        _ => {
            // runc's words for a command that cannot be run.
            let m = s.message.to_ascii_lowercase();
            let exec = m.contains("exec");
            if exec
                && (m.contains("executable file not found")
                    || m.contains("no such file or directory"))
            {
                NOT_FOUND
            } else if exec && m.contains("permission denied") {
                CANNOT_INVOKE
            } else {
                FAILED_TO_RUN
            }
        }
    }
}

/// Streams task `task`'s output until it ends; returns its exit code.
/// A first SIGINT or SIGTERM stops the task gracefully (its stop signal,
/// then SIGKILL after its grace period) and keeps streaming to its end; a
/// second one leaves at once (the task keeps running).
pub async fn attach(c: &Client, task: &str, remove: bool) -> anyhow::Result<u8> {
    let mut stream = c
        .daemon()
        .attach(pb::AttachRequest {
            task: task.to_string(),
            remove,
            from_now: false,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stopping = false;
    loop {
        let m = tokio::select! {
            m = stream.message() => m.map_err(rpc)?,
            _ = sigint.recv() => {
                stop_on_signal(c, task, &mut stopping, 130).await?;
                continue;
            }
            _ = sigterm.recv() => {
                stop_on_signal(c, task, &mut stopping, 143).await?;
                continue;
            }
        };
        let Some(m) = m else {
            anyhow::bail!(
                "the daemon ended the attach without the task's final status; see `weft ps -a`"
            );
        };
        crate::logs_cmd::print(&m.lines, "", false)?;
        if let Some(s) = m.exit {
            if matches!(s.state(), pb::TaskState::Failed | pb::TaskState::Rejected) {
                eprintln!("error: task {task} could not run: {}", s.message);
            }
            return Ok(exit_code(&s));
        }
    }
}

/// The first signal stops the task; the second leaves with `code`.
pub(super) async fn stop_on_signal(
    c: &Client,
    task: &str,
    stopping: &mut bool,
    code: u8,
) -> anyhow::Result<()> {
    if *stopping {
        eprintln!("leaving; task {task} keeps running (see `weft ps`, `weft stop`)");
        return Err(Exit(code).into());
    }
    *stopping = true;
    c.daemon()
        .stop(pb::StopRequest {
            task: task.to_string(),
            grace_ms: None,
        })
        .await
        .map_err(rpc)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: Option<i32>, signal: i32, oom: bool) -> pb::TaskStatus {
        let mut s = pb::TaskStatus {
            has_exit_code: code.is_some(),
            exit_code: code.unwrap_or(0),
            signal,
            oom_killed: oom,
            ..Default::default()
        };
        s.set_state(pb::TaskState::Exited);
        s
    }

    fn failed(state: pb::TaskState, message: &str) -> pb::TaskStatus {
        let mut s = pb::TaskStatus {
            message: message.into(),
            ..Default::default()
        };
        s.set_state(state);
        s
    }

    #[test]
    fn exit_codes_are_dockers() {
        assert_eq!(exit_code(&exited(Some(0), 0, false)), 0);
        assert_eq!(exit_code(&exited(Some(3), 0, false)), 3);
        assert_eq!(exit_code(&exited(Some(137), 0, false)), 137);
        assert_eq!(exit_code(&exited(None, 9, false)), 137);
        assert_eq!(exit_code(&exited(None, 15, false)), 143);
        assert_eq!(exit_code(&exited(Some(1), 0, true)), 137);
        assert_eq!(exit_code(&exited(Some(256 + 4), 0, false)), 4);
        assert_eq!(
            exit_code(&failed(
                pb::TaskState::Rejected,
                "pulling nope:latest: not found"
            )),
            125
        );
        assert_eq!(
            exit_code(&failed(
                pb::TaskState::Failed,
                "exec: \"nope\": executable file not found in $PATH"
            )),
            127
        );
        assert_eq!(
            exit_code(&failed(
                pb::TaskState::Failed,
                "exec /etc: permission denied"
            )),
            126
        );
    }
}
