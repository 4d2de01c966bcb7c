//! Running a command in a task's container (containerd's `Tasks.Exec`):
//! what health checks use, and what `weft exec` can.
//!
//! ```text
//!  Containers.Get ─▶ the container's OCI process (env, cwd, user, caps,
//!                    rlimits…) with args replaced, no terminal
//!  mkfifo <task dir>/exec/<exec id>.out ─▶ we open it to read (and hold a
//!        writer of our own, so the read sees no end before the shim opens it)
//!  Tasks.Exec(stdout = stderr = the FIFO) ─▶ Tasks.Start ─▶ Tasks.Wait
//!        ├─ exited: its status      └─ timeout: Tasks.Kill(SIGKILL) ─▶ Wait (bounded)
//!  Tasks.DeleteProcess (the shim finishes copying and closes the FIFO)
//!  ─▶ drop our writer ─▶ read to the end (bounded): the first `output_limit`
//!     bytes kept, the rest dropped ─▶ remove the FIFO
//! ```
//!
//! The FIFO is read while the command runs, so a chatty command never
//! blocks on a full pipe, and never fills a disk: at most `output_limit`
//! bytes are kept in memory. Exec ids are unique (time and a counter), so
//! a process left by a daemon that died mid-check never clashes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use weft_containerd_api::containerd::services::containers::v1 as containers;
use weft_containerd_api::containerd::services::tasks::v1 as tasks;

use super::{ContainerdRuntime, KILL_WAIT};
use crate::runtime::{Error, ExecOutput, ExecRequest, Result, TaskRuntime, validate_id};

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// How long the output may take to arrive after the process is deleted.
pub(super) const DRAIN: Duration = Duration::from_secs(2);

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh exec id: containerd's id rules (letters, digits, `-`), unique
/// across daemon restarts.
pub(super) fn exec_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("weft-exec-{nanos}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

impl ContainerdRuntime {
    /// See [`crate::runtime::TaskRuntime::exec`].
    pub(super) async fn exec_in(&self, id: &str, req: &ExecRequest) -> Result<ExecOutput> {
        validate_id(id)?;
        if req.args.is_empty() || req.args.iter().any(|a| a.contains('\0')) {
            return Err(Error::InvalidSpec {
                id: id.to_owned(),
                reason: "an exec needs a program, and no NUL in its arguments",
            });
        }
        if self.status(id).is_none_or(|s| s.state.is_terminal()) {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        let process = self.exec_process(id, &req.args).await?;
        let dir = self.task_dir(id).join("exec");
        let io = |op, source| Error::Io {
            op,
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io("create", e))?;
        let exec_id = exec_id();
        let fifo = dir.join(format!("{exec_id}.out"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| io("mkfifo in", e.into()))?;
        let opened = open_fifo(&fifo);
        let (rx, own_writer) = match opened {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&fifo);
                return Err(io("open a FIFO in", e));
            }
        };
        let limit = req.output_limit;
        let reader = tokio::spawn(read_bounded(rx, limit));
        let ran = self
            .run_exec(id, &exec_id, process, &fifo, req.timeout)
            .await;
        drop(own_writer);
        let output = match tokio::time::timeout(DRAIN, reader).await {
            Ok(Ok(out)) => out,
            _ => {
                tracing::debug!(task = %id, exec = %exec_id, "the exec's output did not end in time");
                Vec::new()
            }
        };
        let _ = std::fs::remove_file(&fifo);
        Ok(ExecOutput {
            exit_code: ran?,
            output,
        })
    }

    /// The container's own process spec with `args` instead of its
    /// command: the exec runs as the container's process does.
    async fn exec_process(&self, id: &str, args: &[String]) -> Result<prost_types::Any> {
        let mut process = self.container_process(id).await?;
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(false);
        if let Some(p) = process.as_object_mut() {
            p.remove("consoleSize");
        }
        Ok(process_any(&process))
    }

    /// The container's own OCI process spec (JSON), as it was created.
    pub(super) async fn container_process(&self, id: &str) -> Result<serde_json::Value> {
        let c = self
            .containers()
            .get(containers::GetContainerRequest { id: id.to_owned() })
            .await
            .map_err(|s| self.err("Containers.Get", s))?
            .into_inner()
            .container
            .and_then(|c| c.spec)
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let spec: serde_json::Value =
            serde_json::from_slice(&c.value).map_err(|source| Error::Corrupt {
                path: self.task_dir(id),
                source,
            })?;
        Ok(spec
            .get("process")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({})))
    }

    /// Creates, starts and waits for the exec process (killing it at the
    /// timeout), then deletes it whatever happened. `Ok(None)`: timed out.
    async fn run_exec(
        &self,
        id: &str,
        exec_id: &str,
        process: prost_types::Any,
        fifo: &Path,
        timeout: Duration,
    ) -> Result<Option<i32>> {
        let out = fifo.display().to_string();
        self.tasks()
            .exec(tasks::ExecProcessRequest {
                container_id: id.to_owned(),
                stdin: String::new(),
                stdout: out.clone(),
                stderr: out,
                terminal: false,
                spec: Some(process),
                exec_id: exec_id.to_owned(),
            })
            .await
            .map_err(|s| self.err("Tasks.Exec", s))?;
        let ran = self.start_and_wait(id, exec_id, timeout).await;
        if let Err(s) = self
            .tasks()
            .delete_process(tasks::DeleteProcessRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
            .await
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(task = %id, exec = %exec_id, error = %s, "deleting an exec process");
        }
        ran
    }

    async fn start_and_wait(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<Option<i32>> {
        let req = || tasks::WaitRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        };
        self.tasks()
            .start(tasks::StartRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
            .await
            .map_err(|s| self.err("Tasks.Start", s))?;
        let mut waiter = self.tasks();
        match tokio::time::timeout(timeout, waiter.wait(req())).await {
            Ok(r) => {
                let w = r.map_err(|s| self.err("Tasks.Wait", s))?.into_inner();
                Ok(Some(w.exit_status as i32))
            }
            Err(_) => {
                let killed = self
                    .tasks()
                    .kill(tasks::KillRequest {
                        container_id: id.to_owned(),
                        exec_id: exec_id.to_owned(),
                        signal: libc::SIGKILL as u32,
                        all: false,
                    })
                    .await;
                if let Err(s) = killed
                    && s.code() != tonic::Code::NotFound
                {
                    tracing::warn!(task = %id, exec = %exec_id, error = %s, "killing a timed-out exec");
                }
                let _ = tokio::time::timeout(KILL_WAIT, self.tasks().wait(req())).await;
                Ok(None)
            }
        }
    }
}

/// An OCI process spec as containerd takes it.
pub(super) fn process_any(process: &serde_json::Value) -> prost_types::Any {
    prost_types::Any {
        type_url: PROCESS_TYPE_URL.into(),
        value: serde_json::to_vec(process).expect("a JSON value serializes"),
    }
}

/// Opens `fifo` to read (non-blocking) and then to write: the writer of
/// our own keeps the read from ending before the shim opens its end.
pub(super) fn open_fifo(
    fifo: &Path,
) -> std::io::Result<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Sender,
)> {
    let rx = tokio::net::unix::pipe::OpenOptions::new().open_receiver(fifo)?;
    let tx = tokio::net::unix::pipe::OpenOptions::new().open_sender(fifo)?;
    Ok((rx, tx))
}

/// Reads `rx` to its end, keeping the first `limit` bytes.
async fn read_bounded(mut rx: tokio::net::unix::pipe::Receiver, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}
