//! [`ProcessRuntime`]: the real task runtime. Each task runs under its own
//! detached shim process (see [`super::shim`]), so tasks survive a crash or
//! `kill -9` of the daemon; a restarted daemon finds them again with
//! [`TaskRuntime::adopt`] from the task directories.
//!
//! Exit detection is the same for tasks we started and tasks we adopted (the
//! task is never our child, only the shim's): a pidfd on the task's process
//! (readable when it ends), then the `exit` file the shim writes right after.
//! A pid is only ever used together with its recorded start time, so a
//! reused pid is never signalled or mistaken for the task.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;
use weft_overlay::linux::NsCommand;

use super::files::{self, ExitFile, Observed, PidFile};
use super::shim::{READY, SHIM_DIR_ENV};
use super::{Error, Result, TaskRuntime, TaskSpec, TaskState, TaskStatus, validate, validate_id};

/// How long the shim may take to start the task.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a task may take to die after SIGKILL before `stop` gives up.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How often we look for the `exit` file once the task's process is gone
/// (the shim writes it within milliseconds).
const EXIT_POLL: Duration = Duration::from_millis(20);
/// Capacity of the event channel; slow subscribers see `Lagged`.
const EVENTS: usize = 1024;

/// How to start a shim: `program args...` with the task directory in the
/// environment variable [`SHIM_DIR_ENV`](super::shim::SHIM_DIR_ENV).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimCommand {
    program: PathBuf,
    args: Vec<OsString>,
}

impl ShimCommand {
    /// `/proc/self/exe task-shim`: what the `weft` daemon uses. Through
    /// `/proc/self/exe` the shim is always the daemon's own binary, even
    /// after an upgrade replaced the file on disk.
    pub fn current_exe() -> Self {
        Self::new("/proc/self/exe").arg("task-shim")
    }

    /// Runs `program` (with no arguments so far); for tests, a binary that
    /// calls [`shim::run`](super::shim::run).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// The real task runtime: tasks under `<exec-root>/tasks/<id>/`, each
/// supervised by a detached shim. Must be used inside a tokio runtime.
///
/// Dropping it stops watching but leaves every task running (a new
/// `ProcessRuntime` on the same root adopts them).
#[derive(Debug)]
pub struct ProcessRuntime {
    tasks_dir: PathBuf,
    shim: ShimCommand,
    tasks: Mutex<BTreeMap<String, Entry>>,
    events: broadcast::Sender<TaskStatus>,
    /// Serializes `start` so two calls for one id cannot both spawn a shim.
    start_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Entry {
    status: watch::Receiver<TaskStatus>,
    /// The task's process, for signals; `None` if it never ran.
    pid: Option<PidFile>,
    watcher: Option<AbortHandle>,
}

impl ProcessRuntime {
    /// A runtime keeping its tasks under `<exec_root>/tasks/`, starting shims
    /// with `shim` (normally [`ShimCommand::current_exe`]). Touches nothing
    /// until used.
    pub fn new(exec_root: impl AsRef<Path>, shim: ShimCommand) -> Self {
        Self {
            tasks_dir: exec_root.as_ref().join("tasks"),
            shim,
            tasks: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(EVENTS).0,
            start_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The directory of task `id`.
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.tasks_dir.join(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every critical section is a single insert/remove/read).
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the files of `id` say, starting a watcher if the task
    /// may still be running, and announces the status.
    fn track(&self, id: &str, observed: Observed) -> TaskStatus {
        let dir = self.task_dir(id);
        let (status, pid, watch_pid) = match observed {
            Observed::Finished(s) => (s, None, None),
            Observed::NeverStarted => (
                failed(
                    id,
                    None,
                    "the shim exited without starting the task (see shim.log)",
                ),
                None,
                None,
            ),
            Observed::Vanished(p) if !p.shim_alive() => {
                // One more look: the shim may have written `exit` just before
                // it went away.
                match files::observe(id, &dir, None) {
                    Ok(Observed::Finished(s)) => (s, Some(p), None),
                    _ => (
                        failed(
                            id,
                            Some(&p),
                            "the task's shim died; its exit status is unknown",
                        ),
                        Some(p),
                        None,
                    ),
                }
            }
            Observed::Running(p) | Observed::Vanished(p) => (
                TaskStatus {
                    id: id.to_owned(),
                    state: TaskState::Running { pid: p.pid },
                    started_at: Some(p.started_at),
                    finished_at: None,
                },
                Some(p.clone()),
                Some(p),
            ),
        };
        let (tx, rx) = watch::channel(status.clone());
        // Announce before the watcher can announce the end, so subscribers
        // see the events in order.
        let _ = self.events.send(status.clone());
        let watcher = watch_pid.map(|p| {
            let events = self.events.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                let end = supervise(&id, &dir, &p).await;
                tx.send_replace(end.clone());
                let _ = events.send(end);
            })
            .abort_handle()
        });
        let old = self.lock().insert(
            id.to_owned(),
            Entry {
                status: rx,
                pid,
                watcher,
            },
        );
        if let Some(w) = old.and_then(|e| e.watcher) {
            w.abort();
        }
        status
    }

    /// The task's status, adopting it from disk if it is not known yet.
    fn known(&self, id: &str) -> Result<Option<TaskStatus>> {
        // The id names a directory: never let one escape the tasks dir.
        validate_id(id)?;
        if let Some(s) = self.status(id) {
            return Ok(Some(s));
        }
        let dir = self.task_dir(id);
        if !dir.is_dir() {
            return Ok(None);
        }
        let spec: Option<TaskSpec> = files::read_json(&dir.join(files::SPEC)).unwrap_or(None);
        let observed = files::observe(id, &dir, spec.as_ref().map(|s| s.netns.as_path()))?;
        Ok(Some(self.track(id, observed)))
    }

    /// Starts the shim for the prepared directory `dir` and waits for its
    /// READY line (or its end).
    async fn spawn_shim(&self, id: &str, dir: &Path) -> Result<()> {
        let shim_log_path = dir.join(files::SHIM_LOG);
        let shim_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&shim_log_path)
            .map_err(|source| Error::Io {
                op: "open shim log",
                path: shim_log_path,
                source,
            })?;
        let mut cmd = std::process::Command::new(&self.shim.program);
        cmd.args(&self.shim.args)
            .env(SHIM_DIR_ENV, dir)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log);
        // A new session: no signal aimed at the daemon's process group or
        // terminal reaches the shim, and no parent-death signal is set, so
        // the shim (and its task) outlive the daemon.
        NsCommand::new().new_session().apply(&mut cmd)?;
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|source| Error::ShimSpawn {
                id: id.to_owned(),
                program: self.shim.program.clone(),
                source,
            })?;
        let stdout = child.stdout.take();
        let ready = async {
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == READY {
                    return;
                }
            }
        };
        if tokio::time::timeout(START_TIMEOUT, ready).await.is_err() {
            tracing::warn!(task = id, "the task shim did not get ready; killing it");
            let _ = child.start_kill();
        }
        // While we run, the shim is our child: reap it when it ends. If we
        // die first, init (or a subreaper) inherits it.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        for entry in self.lock().values() {
            if let Some(w) = &entry.watcher {
                w.abort();
            }
        }
    }
}

#[async_trait::async_trait]
impl TaskRuntime for ProcessRuntime {
    async fn adopt(&self) -> Result<Vec<TaskStatus>> {
        let entries = match std::fs::read_dir(&self.tasks_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    op: "list tasks",
                    path: self.tasks_dir.clone(),
                    source,
                });
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| validate_id(id).is_ok())
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            match self.known(&id) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                // One broken directory must not hide the other tasks.
                Err(e) => tracing::warn!(task = %id, error = %e, "cannot adopt task"),
            }
        }
        Ok(out)
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskStatus> {
        validate(spec)?;
        let _serial = self.start_lock.lock().await;
        let id = spec.id.as_str();
        let dir = self.task_dir(id);
        if let Some(existing) = self.known(id)? {
            let on_disk: Option<TaskSpec> =
                files::read_json(&dir.join(files::SPEC)).unwrap_or(None);
            if on_disk.as_ref() == Some(spec) && !existing.state.is_terminal() {
                return Ok(existing);
            }
            return Err(Error::AlreadyExists { id: id.to_owned() });
        }
        std::fs::create_dir_all(&self.tasks_dir).map_err(|source| Error::Io {
            op: "create tasks directory",
            path: self.tasks_dir.clone(),
            source,
        })?;
        std::fs::create_dir(&dir).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists { id: id.to_owned() },
            _ => Error::Io {
                op: "create task directory",
                path: dir.clone(),
                source,
            },
        })?;
        let prepared = async {
            files::write_json(&dir.join(files::SPEC), spec)?;
            // Read by the shim's log writer.
            spec.log
                .unwrap_or_default()
                .store(&dir)
                .map_err(|e| Error::Io {
                    op: "write log options",
                    path: dir.join(crate::logs::CONFIG_FILE),
                    source: std::io::Error::other(e.to_string()),
                })?;
            self.spawn_shim(id, &dir).await
        };
        if let Err(e) = prepared.await {
            // Nothing runs: leave no trace, so the same id can be retried.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let observed = files::observe(id, &dir, Some(&spec.netns))?;
        if matches!(observed, Observed::NeverStarted) {
            // Record the failure on disk too, so adoption agrees.
            let exit = ExitFile {
                code: None,
                signal: None,
                error: Some("the shim exited without starting the task (see shim.log)".into()),
                finished_at: SystemTime::now(),
                oom: false,
            };
            files::write_json(&dir.join(files::EXIT), &exit)?;
            return Ok(self.track(id, files::observe(id, &dir, None)?));
        }
        Ok(self.track(id, observed))
    }

    async fn stop(&self, id: &str, grace: Option<Duration>) -> Result<()> {
        if self.known(id)?.is_none() {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        // The policy the task was started with (an unreadable spec: the
        // defaults, so a task can always be stopped).
        let policy = files::read_json::<TaskSpec>(&self.task_dir(id).join(files::SPEC))
            .ok()
            .flatten()
            .map(|s| s.stop)
            .unwrap_or_default();
        let grace = grace.unwrap_or(policy.grace);
        let (rx, pid) = {
            let tasks = self.lock();
            let Some(e) = tasks.get(id) else {
                return Err(Error::NotFound { id: id.to_owned() });
            };
            (e.status.clone(), e.pid.clone())
        };
        let Some(pid) = pid else { return Ok(()) };
        if rx.borrow().state.is_terminal() {
            return Ok(());
        }
        signal(id, &pid, policy.signal)?;
        if tokio::time::timeout(grace, wait_terminal(rx.clone()))
            .await
            .is_ok()
        {
            return Ok(());
        }
        signal(id, &pid, libc::SIGKILL)?;
        tokio::time::timeout(KILL_WAIT, wait_terminal(rx))
            .await
            .map(|_| ())
            .map_err(|_| Error::StopTimeout {
                id: id.to_owned(),
                waited: KILL_WAIT,
            })
    }

    async fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        if self.known(id)?.is_none() {
            return Ok(());
        }
        self.stop(id, None).await?;
        // The record (a terminal status) goes only once the directory is
        // gone: a reconcile pass that saw no record meanwhile would start
        // the task again into the directory being removed.
        let dir = self.task_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    op: "remove task directory",
                    path: dir,
                    source,
                });
            }
        }
        if let Some(w) = self.lock().remove(id).and_then(|e| e.watcher) {
            w.abort();
        }
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<TaskStatus> {
        if self.known(id)?.is_none() {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        let rx = self
            .lock()
            .get(id)
            .map(|e| e.status.clone())
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        Ok(wait_terminal(rx).await)
    }

    fn status(&self, id: &str) -> Option<TaskStatus> {
        self.lock().get(id).map(|e| e.status.borrow().clone())
    }

    fn list(&self) -> Vec<TaskStatus> {
        self.lock()
            .values()
            .map(|e| e.status.borrow().clone())
            .collect()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.task_dir(id).join(files::LOG)
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskStatus> {
        self.events.subscribe()
    }
}

fn failed(id: &str, pid: Option<&PidFile>, error: &str) -> TaskStatus {
    TaskStatus {
        id: id.to_owned(),
        state: TaskState::Failed {
            error: error.to_owned(),
        },
        started_at: pid.map(|p| p.started_at),
        finished_at: Some(SystemTime::now()),
    }
}

/// Waits for a terminal status; if the watcher went away first (task
/// removed), returns the last status seen.
async fn wait_terminal(mut rx: watch::Receiver<TaskStatus>) -> TaskStatus {
    if let Ok(s) = rx.wait_for(|s| s.state.is_terminal()).await {
        return s.clone();
    }
    rx.borrow().clone()
}

/// Signals the task's process group, if the task's process is still the one
/// we started (pid plus start time).
/// Sends signal number `sig` to the task's process group. A number, not
/// nix's `Signal`: a stop signal may be a real-time one, which nix's enum
/// does not have.
fn signal(id: &str, pid: &PidFile, sig: i32) -> Result<()> {
    if !pid.task_alive() {
        return Ok(());
    }
    // SAFETY: killpg(2) takes a process group id and a signal number and
    // touches no memory of ours.
    let r = unsafe { libc::killpg(pid.pid, sig) };
    match nix::errno::Errno::result(r) {
        Ok(_) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(source) => Err(Error::Signal {
            id: id.to_owned(),
            pid: pid.pid,
            signal: sig,
            source,
        }),
    }
}

/// A pidfd for `pid`, or `None` if there is no such process.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this fd and nobody else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the task's process ends, then for the shim's `exit` file, and
/// returns the final status.
async fn supervise(id: &str, dir: &Path, pid: &PidFile) -> TaskStatus {
    if let Some(fd) = pidfd_open(pid.pid) {
        // Check identity *after* opening: the pidfd then surely refers to
        // the process that started at `start_time`.
        if pid.task_alive() {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and
            // unchanged until the AsyncFd is dropped.
            let afd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            match afd {
                // A pidfd becomes readable when the process ends.
                Ok(afd) => {
                    let _ = afd.readable().await;
                }
                Err(e) => {
                    tracing::warn!(task = id, error = %e, "cannot poll pidfd; polling /proc");
                    while pid.task_alive() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }
    loop {
        match files::observe(id, dir, None) {
            Ok(Observed::Finished(s)) => return s,
            Ok(_) => {}
            Err(e) => return failed(id, Some(pid), &e.to_string()),
        }
        if !pid.shim_alive() {
            if let Ok(Observed::Finished(s)) = files::observe(id, dir, None) {
                return s;
            }
            return failed(
                id,
                Some(pid),
                "the task's shim died; its exit status is unknown",
            );
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}
