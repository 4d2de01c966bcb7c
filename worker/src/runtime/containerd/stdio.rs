//! The stdio of a container run with `-i` or `-t` (`weft run -i/-t`,
//! `weft attach`): FIFOs the node copies itself, since containerd 1.6's
//! runc shim copies no stdin beside a `binary://` logger.
//!
//! ```text
//!  create: mkfifo <task dir>/stdio/{in (-i), out, err (not with -t)}; <task dir>/stdio.json
//!          ─▶ our ends open (out/err: read + a writer of our own; in: read-write)
//!          ─▶ Tasks.Create(stdin/stdout/stderr = the FIFOs, terminal = -t)
//!  pump (a thread):  [held until the first attach, ≤ 30 s, with attach_wait]
//!          out/err ─▶ the task's log (the logger's writer, lock and rotation)
//!                  └▶ broadcast to attaches (StdioChunk), End at the end
//!  input (a task):   ExecInput::Stdin ─▶ in   CloseStdin ─▶ close ours + Tasks.CloseIO
//!                    Resize ─▶ Tasks.ResizePty
//!  exit:   finish ─▶ released ─▶ Tasks.Delete (the shim flushes and closes its ends)
//!          ─▶ our writers dropped ─▶ the pump reads to the end, lets go of the log's
//!          lock ─▶ the exit is reported (all output is in the log)
//!  adopt:  stdio.json ─▶ the FIFOs reopened (the shim holds a reader of each output
//!          FIFO, so output written while the daemon was down waits in it)
//! ```
//!
//! The log stays the one source `weft logs` reads, with rotation; the
//! live chunks are for attaches only. A chunk is sent before it is
//! written to the log, so an attach that saw the hold released by itself
//! sees every byte; any later attach of a "from the start" kind is told
//! to read the log instead (see [`ContainerdRuntime::stdio_of`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, mpsc};
use weft_containerd_api::containerd::services::tasks::v1 as tasks;

use super::ContainerdRuntime;
use crate::logs::format::Stream;
use crate::runtime::{Error, ExecInput, Result, StdioChunk, StdioOpts, TaskStdio};

/// The file in a task dir that keeps its [`StdioOpts`] (absent: the shim's
/// logger has its output).
pub(super) const STDIO_FILE: &str = "stdio.json";
/// The directory of its FIFOs, in the task dir.
const FIFO_DIR: &str = "stdio";
/// How long the output waits for the first attach (`attach_wait`).
const ATTACH_WAIT: Duration = Duration::from_secs(30);
/// Live chunks an attach may fall behind before it loses some.
const CHUNKS: usize = 1024;

/// The FIFO paths of one task, as `Tasks.Create` takes them (empty: none).
pub(super) struct StdioPaths {
    pub(super) stdin: String,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// One task's copied stdio while its container lives.
pub(super) struct Copied {
    opts: StdioOpts,
    input: mpsc::Sender<ExecInput>,
    output: broadcast::Sender<StdioChunk>,
    /// Dropping it lets the pump begin (the hold ends).
    go: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Our writers of the output FIFOs: dropped after `Tasks.Delete`, so
    /// the pump sees the end.
    own_writers: Mutex<Vec<pipe::Sender>>,
    feeder: tokio::task::AbortHandle,
    /// Set by the pump just before it sends [`StdioChunk::End`].
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The copied stdio of every task that has one.
pub(super) type CopiedMap = Mutex<HashMap<String, std::sync::Arc<Copied>>>;

fn fifo_dir(task_dir: &Path) -> PathBuf {
    task_dir.join(FIFO_DIR)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// Makes a FIFO, or keeps the one there (a restarted create, an adoption).
fn mkfifo(p: &Path) -> Result<()> {
    match nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(io_err("mkfifo", p)(e.into())),
    }
}

impl ContainerdRuntime {
    /// For a task run with `-i`/`-t`: makes its FIFOs, opens our ends and
    /// starts copying (held, with `attach_wait`, until the first attach);
    /// `None` for any other task (its output goes to the shim's logger).
    pub(super) fn stdio_create(
        &self,
        id: &str,
        task_dir: &Path,
        opts: StdioOpts,
    ) -> Result<Option<StdioPaths>> {
        if !opts.copied() {
            return Ok(None);
        }
        super::super::files::write_json(&task_dir.join(STDIO_FILE), &opts).map_err(|e| {
            Error::Io {
                op: "record the stdio of",
                path: task_dir.to_owned(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        self.stdio_open(id, task_dir, opts, opts.attach_wait)
            .map(Some)
    }

    /// After a daemon restart: reopens the FIFOs of an adopted task run
    /// with `-i`/`-t` and goes on copying (no hold).
    pub(super) fn stdio_adopt(&self, id: &str, task_dir: &Path) {
        let opts: Option<StdioOpts> = super::super::files::read_json(&task_dir.join(STDIO_FILE))
            .ok()
            .flatten();
        let Some(opts) = opts.filter(StdioOpts::copied) else {
            return;
        };
        if let Err(e) = self.stdio_open(id, task_dir, opts, false) {
            tracing::warn!(task = %id, error = %e, "reopening the stdio of an adopted container; its output stays in the FIFO");
        }
    }

    fn stdio_open(
        &self,
        id: &str,
        task_dir: &Path,
        opts: StdioOpts,
        hold: bool,
    ) -> Result<StdioPaths> {
        let dir = fifo_dir(task_dir);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let (stdin_path, out_path, err_path) = (dir.join("in"), dir.join("out"), dir.join("err"));
        let mut outputs = vec![(out_path.clone(), Stream::Stdout)];
        if !opts.tty {
            outputs.push((err_path.clone(), Stream::Stderr));
        }
        let mut pipes = Vec::new();
        let mut own_writers = Vec::new();
        for (p, stream) in &outputs {
            mkfifo(p)?;
            let (rx, own) = super::exec::open_fifo(p).map_err(io_err("open", p))?;
            let fd: OwnedFd = rx.into_blocking_fd().map_err(io_err("open", p))?;
            pipes.push((fd, *stream));
            own_writers.push(own);
        }
        let stdin = if opts.open_stdin {
            mkfifo(&stdin_path)?;
            Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&stdin_path)
                    .map_err(io_err("open", &stdin_path))?,
            )
        } else {
            None
        };
        let log_dir = crate::logs::log_dir(task_dir);
        let lock = crate::logs::lock_writer(&log_dir).map_err(|e| Error::Io {
            op: "lock the log of",
            path: log_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let writer = crate::logs::writer::RotatingWriter::open(
            &log_dir,
            crate::logs::LogOptions::load(task_dir),
        )
        .map_err(|e| Error::Io {
            op: "open the log of",
            path: log_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let (output, _) = broadcast::channel(CHUNKS);
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let tx = output.clone();
        let task = id.to_owned();
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended_here = ended.clone();
        std::thread::spawn(move || {
            if hold {
                // Released by the first attach, the exit, or a removal
                // (the sender dropped); else the wait ends by itself.
                let _ = go_rx.recv_timeout(ATTACH_WAIT);
            }
            // Never requested: the pump ends with the pipes.
            let never = crate::logs::logger::Stop::new();
            let r = crate::logs::logger::pump_tapped(pipes, writer, &never, &mut |s, b| {
                let _ = tx.send(match s {
                    Stream::Stdout => StdioChunk::Stdout(b.to_vec()),
                    Stream::Stderr => StdioChunk::Stderr(b.to_vec()),
                });
            });
            if let Err(e) = r {
                tracing::warn!(task = %task, error = %e, "copying a container's output to its log");
            }
            // Before End: an attach that subscribes and then finds this
            // unset is sure to get End.
            ended_here.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = tx.send(StdioChunk::End);
            drop(lock);
        });
        let (input, input_rx) = mpsc::channel(16);
        let feeder = tokio::spawn(feed(self.clone(), id.to_owned(), stdin, input_rx, opts.tty));
        let copied = Copied {
            opts,
            input,
            output,
            go: Mutex::new(Some(go)),
            own_writers: Mutex::new(own_writers),
            feeder: feeder.abort_handle(),
            ended,
        };
        self.inner
            .stdio
            .lock()
            .expect("stdio")
            .insert(id.to_owned(), std::sync::Arc::new(copied));
        let path = |p: &Path| p.display().to_string();
        Ok(StdioPaths {
            stdin: if opts.open_stdin {
                path(&stdin_path)
            } else {
                String::new()
            },
            stdout: path(&out_path),
            stderr: if opts.tty {
                String::new()
            } else {
                path(&err_path)
            },
        })
    }

    /// An attach to task `id`'s stdio (see [`crate::runtime::TaskRuntime::stdio`]).
    /// `from_start`: the attach wants all output from the first byte; it
    /// gets the live output only if it is the one that ends the hold
    /// (else `output` is `None`: the log has it all). Once the output has
    /// ended, `output` is `None` too.
    pub(super) fn stdio_of(&self, id: &str, from_start: bool) -> Option<TaskStdio> {
        let c = self.inner.stdio.lock().expect("stdio").get(id).cloned()?;
        let output = c.output.subscribe();
        let released_here = c.go.lock().expect("go").take().is_some();
        let ended = c.ended.load(std::sync::atomic::Ordering::SeqCst);
        Some(TaskStdio {
            input: c.input.clone(),
            output: (!ended && (!from_start || released_here)).then_some(output),
            open_stdin: c.opts.open_stdin,
            tty: c.opts.tty,
        })
    }

    /// The task exited: the output need wait for nobody any more.
    pub(super) fn stdio_exited(&self, id: &str) {
        if let Some(c) = self.inner.stdio.lock().expect("stdio").get(id) {
            c.go.lock().expect("go").take();
        }
    }

    /// The task was deleted in containerd (the shim closed its ends): our
    /// writers go, so the pump reads to the end.
    pub(super) fn stdio_deleted(&self, id: &str) {
        if let Some(c) = self.inner.stdio.lock().expect("stdio").get(id) {
            c.own_writers.lock().expect("writers").clear();
        }
    }

    /// Forgets the task's stdio (its output has ended or it is removed).
    pub(super) fn stdio_forget(&self, id: &str) {
        if let Some(c) = self.inner.stdio.lock().expect("stdio").remove(id) {
            c.go.lock().expect("go").take();
            c.own_writers.lock().expect("writers").clear();
            c.feeder.abort();
        }
    }
}

/// Feeds the task's stdin and terminal from its attaches until aborted
/// (at its exit or removal).
async fn feed(
    rt: ContainerdRuntime,
    id: String,
    mut stdin: Option<pipe::Sender>,
    mut input: mpsc::Receiver<ExecInput>,
    tty: bool,
) {
    while let Some(m) = input.recv().await {
        match m {
            ExecInput::Stdin(b) => {
                if let Some(w) = stdin.as_mut()
                    && w.write_all(&b).await.is_err()
                {
                    stdin = None;
                }
            }
            ExecInput::CloseStdin => {
                if stdin.take().is_some() {
                    let r = rt
                        .tasks()
                        .close_io(tasks::CloseIoRequest {
                            container_id: id.clone(),
                            exec_id: String::new(),
                            stdin: true,
                        })
                        .await;
                    if let Err(s) = r {
                        tracing::debug!(task = %id, error = %s, "closing a container's stdin");
                    }
                }
            }
            ExecInput::Resize(w, h) if tty => {
                let r = rt
                    .tasks()
                    .resize_pty(tasks::ResizePtyRequest {
                        container_id: id.clone(),
                        exec_id: String::new(),
                        width: w.into(),
                        height: h.into(),
                    })
                    .await;
                if let Err(s) = r {
                    tracing::debug!(task = %id, error = %s, "resizing a container's terminal");
                }
            }
            ExecInput::Resize(..) => {}
        }
    }
}
