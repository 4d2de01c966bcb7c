//! Interactive commands in a task's container (`weft exec`): containerd's
//! `Tasks.Exec` with FIFOs for stdin, stdout and stderr, driven by one job
//! that owns the process from its creation to its deletion.
//!
//! ```text
//!  exec_session ─▶ the container's OCI process + args, env, user, cwd, terminal
//!     mkfifo <task dir>/exec/<exec id>.{in,out,err} (.in with -i; no .err with -t:
//!            the shim copies the console to stdout only)
//!     ─▶ spawn the job ─▶ Tasks.Exec ─▶ Tasks.Start ──(started, or why not)──▶ caller
//!  job:  readers: .out/.err ─▶ ExecEvent::Stdout/Stderr (live, in chunks)
//!        loop: Tasks.Wait ─▶ exit
//!              ExecInput::Stdin ─▶ .in    CloseStdin ─▶ close ours + Tasks.CloseIO
//!              Resize ─▶ Tasks.ResizePty  input dropped (client gone) ─▶ Tasks.Kill(SIGKILL)
//!        Tasks.DeleteProcess ─▶ close our writers ─▶ readers drain (bounded)
//!        ─▶ FIFOs removed ─▶ ExecEvent::Exit
//! ```
//!
//! The job is spawned, so it runs to its end whatever the caller does: an
//! exec left created in the shim with a FIFO nobody reads made
//! `runc kill --all` take 20 s to stop the container (see `exec` in the
//! parent module). We hold a writer of each output FIFO so a read never
//! ends before the shim opens its end, and open stdin read-write so the
//! open never fails for want of a reader; the shim holds a writer of the
//! stdin FIFO itself until `Tasks.CloseIO`, which is why closing stdin
//! takes both.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use weft_containerd_api::containerd::services::tasks::v1 as tasks;

use super::exec::{DRAIN, exec_id, open_fifo, process_any};
use super::{ContainerdRuntime, KILL_WAIT, rootfs_file, spec};
use crate::runtime::interactive::MAX_CHUNK;
use crate::runtime::{
    Error, ExecEvent, ExecInput, ExecSession, ExecSpec, Result, TaskRuntime, validate_id,
};

/// How often a write to a stdin the process does not read looks whether
/// the client is still there.
const CLIENT_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// The FIFOs of one exec, removed when dropped (whatever happened).
struct Fifos {
    stdin: Option<PathBuf>,
    stdout: PathBuf,
    stderr: Option<PathBuf>,
}

impl Fifos {
    fn make(dir: &Path, exec_id: &str, stdin: bool, stderr: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            op: "create",
            path: dir.to_owned(),
            source,
        })?;
        let mut f = Fifos {
            stdin: None,
            stdout: dir.join(format!("{exec_id}.out")),
            stderr: None,
        };
        mkfifo(&f.stdout)?;
        if stdin {
            let p = dir.join(format!("{exec_id}.in"));
            mkfifo(&p)?;
            f.stdin = Some(p);
        }
        if stderr {
            let p = dir.join(format!("{exec_id}.err"));
            mkfifo(&p)?;
            f.stderr = Some(p);
        }
        Ok(f)
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        for p in [
            Some(&self.stdout),
            self.stdin.as_ref(),
            self.stderr.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn mkfifo(p: &Path) -> Result<()> {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| Error::Io {
        op: "mkfifo",
        path: p.to_owned(),
        source: e.into(),
    })
}

/// Our ends of the FIFOs, opened before the shim opens its own.
struct Ends {
    stdin: Option<pipe::Sender>,
    stdout: (pipe::Receiver, pipe::Sender),
    stderr: Option<(pipe::Receiver, pipe::Sender)>,
}

impl Ends {
    fn open(f: &Fifos) -> std::io::Result<Self> {
        let stdin = match &f.stdin {
            Some(p) => Some(pipe::OpenOptions::new().read_write(true).open_sender(p)?),
            None => None,
        };
        Ok(Ends {
            stdin,
            stdout: open_fifo(&f.stdout)?,
            stderr: f.stderr.as_deref().map(open_fifo).transpose()?,
        })
    }
}

impl ContainerdRuntime {
    /// See [`crate::runtime::TaskRuntime::exec_session`].
    pub(super) async fn start_session(&self, id: &str, req: &ExecSpec) -> Result<ExecSession> {
        validate_id(id)?;
        req.validate().map_err(|source| Error::InvalidExec {
            id: id.to_owned(),
            source,
        })?;
        match self.status(id) {
            None => return Err(Error::NotFound { id: id.to_owned() }),
            Some(s) if s.state.is_terminal() => {
                return Err(Error::NotRunning { id: id.to_owned() });
            }
            Some(_) => {}
        }
        let process = self.session_process(id, req).await?;
        let exec_id = exec_id();
        let fifos = Fifos::make(
            &self.task_dir(id).join("exec"),
            &exec_id,
            req.stdin,
            !req.tty,
        )?;
        let ends = Ends::open(&fifos).map_err(|source| Error::Io {
            op: "open a FIFO of",
            path: fifos.stdout.clone(),
            source,
        })?;
        let (started_tx, started) = oneshot::channel();
        let (input, input_rx) = mpsc::channel(16);
        let (events_tx, events) = mpsc::channel(16);
        let job = Job {
            rt: self.clone(),
            id: id.to_owned(),
            exec_id,
            req: req.clone(),
        };
        tokio::spawn(job.run(process, fifos, ends, started_tx, input_rx, events_tx));
        match started.await {
            Ok(Ok(())) => Ok(ExecSession { input, events }),
            Ok(Err(e)) => Err(e),
            // The job ended without a word: only when the runtime shuts down.
            Err(_) => Err(Error::NotRunning { id: id.to_owned() }),
        }
    }

    /// The container's process with the exec's command and options.
    async fn session_process(&self, id: &str, req: &ExecSpec) -> Result<prost_types::Any> {
        let mut p = self.container_process(id).await?;
        p["args"] = serde_json::json!(req.args);
        p["terminal"] = serde_json::json!(req.tty);
        match (req.tty, req.size) {
            (true, Some((w, h))) => {
                p["consoleSize"] = serde_json::json!({ "width": w, "height": h });
            }
            _ => {
                if let Some(o) = p.as_object_mut() {
                    o.remove("consoleSize");
                }
            }
        }
        let mut env: Vec<String> = p["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for e in &req.env {
            let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
            env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
            env.push(e.clone());
        }
        p["env"] = serde_json::json!(env);
        if let Some(w) = &req.workdir {
            p["cwd"] = serde_json::json!(w);
        }
        if let Some(u) = &req.user {
            let r = self.resolve_user(id, u).await?;
            p["user"] = serde_json::json!({
                "uid": r.uid,
                "gid": r.gid,
                "additionalGids": r.additional_gids,
            });
        }
        Ok(process_any(&p))
    }

    /// `-u` against the container's own `/etc/passwd` and `/etc/group`
    /// (read from its snapshot's directories, never through links).
    async fn resolve_user(&self, id: &str, user: &str) -> Result<spec::users::Resolved> {
        let mounts = self.snapshot_mounts(id).await?;
        let passwd = rootfs_file(&mounts, "etc/passwd");
        let group = rootfs_file(&mounts, "etc/group");
        spec::users::resolve(user, &passwd, &group).map_err(|source| Error::ExecUser {
            id: id.to_owned(),
            source,
        })
    }
}

/// One exec from its creation to its deletion.
struct Job {
    rt: ContainerdRuntime,
    id: String,
    exec_id: String,
    req: ExecSpec,
}

impl Job {
    async fn run(
        self,
        process: prost_types::Any,
        fifos: Fifos,
        ends: Ends,
        started: oneshot::Sender<Result<()>>,
        input: mpsc::Receiver<ExecInput>,
        events: mpsc::Sender<ExecEvent>,
    ) {
        let path = |p: Option<&PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
        let created = self
            .rt
            .tasks()
            .exec(tasks::ExecProcessRequest {
                container_id: self.id.clone(),
                stdin: path(fifos.stdin.as_ref()),
                stdout: path(Some(&fifos.stdout)),
                stderr: path(fifos.stderr.as_ref()),
                terminal: self.req.tty,
                spec: Some(process),
                exec_id: self.exec_id.clone(),
            })
            .await;
        if let Err(s) = created {
            let _ = started.send(Err(self.rt.err("Tasks.Exec", s)));
            return;
        }
        let ran = self
            .rt
            .tasks()
            .start(tasks::StartRequest {
                container_id: self.id.clone(),
                exec_id: self.exec_id.clone(),
            })
            .await;
        if let Err(s) = ran {
            self.delete().await;
            let reason = s.message().to_owned();
            let missing = reason.contains("executable file not found")
                || reason.contains("no such file or directory");
            let _ = started.send(Err(Error::ExecStart {
                id: self.id.clone(),
                program: self.req.args[0].clone(),
                missing,
                reason,
            }));
            return;
        }
        if let (true, Some((w, h))) = (self.req.tty, self.req.size) {
            self.resize(w, h).await;
        }
        let Ends {
            stdin,
            stdout: (out_rx, out_own),
            stderr,
        } = ends;
        let mut readers = vec![tokio::spawn(pump(
            out_rx,
            events.clone(),
            ExecEvent::Stdout,
        ))];
        let mut own_writers = vec![out_own];
        if let Some((rx, own)) = stderr {
            readers.push(tokio::spawn(pump(rx, events.clone(), ExecEvent::Stderr)));
            own_writers.push(own);
        }
        if started.send(Ok(())).is_err() {
            tracing::debug!(task = %self.id, exec = %self.exec_id, "the exec's caller left at its start");
        }
        let exit = self.drive(stdin, input).await;
        self.delete().await;
        drop(own_writers);
        for r in readers {
            let abort = r.abort_handle();
            if tokio::time::timeout(DRAIN, r).await.is_err() {
                abort.abort();
                tracing::debug!(task = %self.id, exec = %self.exec_id, "the exec's output did not end in time");
            }
        }
        drop(fifos);
        let _ = events.send(ExecEvent::Exit(exit)).await;
    }

    /// Feeds the process's input until it exits; kills it if the input
    /// is dropped first. Its exit status (255 when containerd's answer
    /// was lost).
    async fn drive(
        &self,
        mut stdin: Option<pipe::Sender>,
        mut input: mpsc::Receiver<ExecInput>,
    ) -> i32 {
        let mut waiter = self.rt.tasks();
        let wait = waiter.wait(tasks::WaitRequest {
            container_id: self.id.clone(),
            exec_id: self.exec_id.clone(),
        });
        tokio::pin!(wait);
        let status = 'drive: loop {
            tokio::select! {
                w = &mut wait => break w,
                m = input.recv() => match m {
                    Some(ExecInput::Stdin(b)) => {
                        let Some(w) = stdin.as_mut() else { continue };
                        // A process that does not read its stdin must not
                        // hold up its exit, nor outlive a client that left
                        // meanwhile: write while waiting, and look at the
                        // input now and then.
                        let write = w.write_all(&b);
                        tokio::pin!(write);
                        let (failed, left) = loop {
                            tokio::select! {
                                r = &mut write => break (r.is_err(), false),
                                w = &mut wait => break 'drive w,
                                _ = tokio::time::sleep(CLIENT_CHECK) => {
                                    if input.is_closed() {
                                        break (false, true);
                                    }
                                }
                            }
                        };
                        if failed {
                            stdin = None;
                        }
                        if left {
                            match self.kill_and_wait(&mut wait).await {
                                Some(w) => break w,
                                None => return 255,
                            }
                        }
                    }
                    Some(ExecInput::CloseStdin) => {
                        if stdin.take().is_some() {
                            self.close_stdin().await;
                        }
                    }
                    Some(ExecInput::Resize(w, h)) => {
                        if self.req.tty {
                            self.resize(w, h).await;
                        }
                    }
                    None => match self.kill_and_wait(&mut wait).await {
                        Some(w) => break w,
                        None => return 255,
                    },
                },
            }
        };
        match status {
            Ok(w) => w.into_inner().exit_status as i32,
            Err(s) => {
                tracing::warn!(task = %self.id, exec = %self.exec_id, error = %s, "waiting for an exec");
                255
            }
        }
    }

    /// Kills the process (its client left) and waits for its end,
    /// bounded; `None`: it did not end.
    async fn kill_and_wait<F: std::future::Future + Unpin>(
        &self,
        wait: &mut F,
    ) -> Option<F::Output> {
        self.kill().await;
        let ended = tokio::time::timeout(KILL_WAIT, wait).await.ok();
        if ended.is_none() {
            tracing::warn!(task = %self.id, exec = %self.exec_id, "an exec did not end after SIGKILL");
        }
        ended
    }

    async fn close_stdin(&self) {
        let r = self
            .rt
            .tasks()
            .close_io(tasks::CloseIoRequest {
                container_id: self.id.clone(),
                exec_id: self.exec_id.clone(),
                stdin: true,
            })
            .await;
        if let Err(s) = r {
            tracing::debug!(task = %self.id, exec = %self.exec_id, error = %s, "closing an exec's stdin");
        }
    }

    async fn resize(&self, width: u16, height: u16) {
        let r = self
            .rt
            .tasks()
            .resize_pty(tasks::ResizePtyRequest {
                container_id: self.id.clone(),
                exec_id: self.exec_id.clone(),
                width: width.into(),
                height: height.into(),
            })
            .await;
        if let Err(s) = r {
            tracing::debug!(task = %self.id, exec = %self.exec_id, error = %s, "resizing an exec's terminal");
        }
    }

    async fn kill(&self) {
        let r = self
            .rt
            .tasks()
            .kill(tasks::KillRequest {
                container_id: self.id.clone(),
                exec_id: self.exec_id.clone(),
                signal: libc::SIGKILL as u32,
                all: false,
            })
            .await;
        if let Err(s) = r
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(task = %self.id, exec = %self.exec_id, error = %s, "killing an exec whose client left");
        }
    }

    async fn delete(&self) {
        let r = self
            .rt
            .tasks()
            .delete_process(tasks::DeleteProcessRequest {
                container_id: self.id.clone(),
                exec_id: self.exec_id.clone(),
            })
            .await;
        if let Err(s) = r
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(task = %self.id, exec = %self.exec_id, error = %s, "deleting an exec process");
        }
    }
}

/// Copies one output FIFO to the events in chunks; once nobody listens,
/// goes on reading (and dropping) so the process never blocks on it.
async fn pump(
    mut rx: pipe::Receiver,
    events: mpsc::Sender<ExecEvent>,
    wrap: fn(Vec<u8>) -> ExecEvent,
) {
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut listening = true;
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if listening && events.send(wrap(buf[..n].to_vec())).await.is_err() {
                    listening = false;
                }
            }
        }
    }
}
