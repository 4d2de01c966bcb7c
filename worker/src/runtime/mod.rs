//! Task runtime: running a task's process in its namespaces and supervising
//! it (DESIGN.md §4).
//!
//! Owns: the [`TaskRuntime`] trait the worker drives, the real
//! [`ProcessRuntime`] (one detached shim process per task, see [`shim`]),
//! the recording [`FakeRuntime`] for tests of the layers above, the on-disk
//! layout of a task (`<exec-root>/tasks/<id>/`) and adoption of tasks that
//! outlived a daemon restart.
//!
//! Must not: create or delete network namespaces (the data plane makes the
//! task's netns and hands us its pin path), decide restart policy (the worker
//! does, from the exit events), or talk to the manager.
//!
//! ```text
//!  daemon ── ProcessRuntime::start ──spawn (setsid)──▶ shim (`weft task-shim`)
//!     ▲                                                 │ reads spec.json
//!     │ pidfd on the task + exit file                   │ spawns the task via NsCommand
//!     │ (works for adopted tasks too:                   │   (netns, mount ns, resolv.conf, hostname, setsid)
//!     │  the task is never our child)                   │ writes pid, forwards SIGTERM
//!     └──────────────── <root>/tasks/<id>/{spec.json,pid,log,exit} ◀─ writes exit when the task ends
//! ```

pub mod containerd;
pub mod external;
pub mod fake;
mod files;
pub mod interactive;
pub mod process;
pub mod routed;
pub mod shim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use fake::{FakeCall, FakeRuntime};
pub use interactive::{
    ExecEvent, ExecInput, ExecSession, ExecSpec, StdioChunk, StdioOpts, TaskStdio,
};
pub use process::{ProcessRuntime, ShimCommand};
pub use routed::RoutedRuntime;

/// When a task's network is ready for its process: a start makes what it
/// can before (a container's record, rootfs and the runc container in the
/// task's namespace, made empty ahead of the data plane pass that wires
/// it), and runs the process only after, as CNI runtimes make a sandbox's
/// namespace first and start its containers once its network is set up.
#[derive(Clone, Debug)]
pub struct NetworkReady {
    /// The number of the last data plane pass that went through; `None`:
    /// ready now.
    passes: Option<tokio::sync::watch::Receiver<u64>>,
    /// The pass this start waits for.
    need: u64,
}

/// The loop that would have said the network is ready has stopped.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the daemon stopped before the task's network was ready")]
pub struct NotReady;

impl NetworkReady {
    /// Ready at once (the network was made before the start, or the task
    /// has none of its own).
    pub fn now() -> Self {
        Self {
            passes: None,
            need: 0,
        }
    }

    /// Ready once `passes`, the number of the last pass that went through,
    /// reaches `need`.
    pub fn after(passes: tokio::sync::watch::Receiver<u64>, need: u64) -> Self {
        Self {
            passes: Some(passes),
            need,
        }
    }

    /// Waits until ready; `Err` when the sender is gone first.
    pub async fn wait(&mut self) -> std::result::Result<(), NotReady> {
        let need = self.need;
        match &mut self.passes {
            None => Ok(()),
            Some(rx) => rx
                .wait_for(|n| *n >= need)
                .await
                .map(|_| ())
                .map_err(|_| NotReady),
        }
    }
}

/// What to run for one task. Written to `<root>/tasks/<id>/spec.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task id: also the name of its directory, so limited to
    /// `[A-Za-z0-9_.-]`, at most 128 bytes, not `.` or `..`.
    pub id: String,
    /// A human-readable name (e.g. `web.1`), for logs only.
    pub name: String,
    /// Program and arguments; the program is looked up in `PATH`.
    pub command: Vec<String>,
    /// The task's environment. The task does not inherit the daemon's
    /// environment: it gets a default `PATH`, then these.
    pub env: BTreeMap<String, String>,
    /// The pin of the task's network namespace, made by the data plane.
    pub netns: PathBuf,
    /// A file bind-mounted over `/etc/resolv.conf` in the task's own mount
    /// namespace (the one pointing at the embedded resolver).
    pub resolv_conf: Option<PathBuf>,
    /// The task's hostname, in its own UTS namespace.
    pub hostname: Option<String>,
    /// Run as a container from an image (the containerd runtime); `None`
    /// runs a host process (the process runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
    /// How the task is asked to stop.
    #[serde(default)]
    pub stop: StopPolicy,
    /// `--log-opt`: the log's size cap and rotation; `None`: the defaults
    /// (`crate::logs::LogOptions::default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<crate::logs::LogOptions>,
    /// Another runtime's container (CNI, Docker): the path of its own
    /// network namespace, which the data plane pinned at `netns`. Nothing
    /// runs ([`external::ExternalRuntime`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<PathBuf>,
}

/// How a task is stopped: `signal` to its processes, then SIGKILL to all
/// of them once `grace` is over (`--stop-signal`, `--stop-grace-period`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopPolicy {
    /// The signal's number.
    pub signal: i32,
    /// How long the task may take to exit after it.
    pub grace: Duration,
}

/// The grace period a task gets unless it asks for another (Docker's).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

impl Default for StopPolicy {
    fn default() -> Self {
        Self {
            signal: libc::SIGTERM,
            grace: DEFAULT_STOP_GRACE,
        }
    }
}

/// What makes a task a container: its image and Docker's per-container
/// overrides of the image's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The image: a name, `name@sha256:…` (what services pin) or a bare
    /// digest, as the node's image store resolves it.
    pub image: String,
    /// `--entrypoint`: replaces the image's entrypoint and drops its `Cmd`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `-w`: the working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// `-u`: `uid[:gid]` or `root`.
    #[serde(default)]
    pub user: Option<String>,
    /// `--read-only`: the root filesystem is mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// `-i`, `-t` and the first attach's hold: how the container's stdio
    /// is wired (see `containerd::stdio`).
    #[serde(default)]
    pub stdio: StdioOpts,
    /// `--limit-*`: what the container's cgroup allows.
    #[serde(default)]
    pub limits: Limits,
    /// `--cap-add`: canonical `CAP_*` names or `ALL`.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// `--cap-drop`: canonical `CAP_*` names or `ALL`.
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `--security-opt seccomp=unconfined`: no seccomp filter.
    #[serde(default)]
    pub seccomp_unconfined: bool,
    /// `--security-opt no-new-privileges`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// `--mount`s, checked for shape; the node's policy applies at start.
    #[serde(default)]
    pub mounts: Vec<weft_proto::isolation::MountSpec>,
    /// Set when the mounts the manager sent did not check out (a version
    /// skew): the task then fails to start with this reason rather than
    /// run without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_mounts: Option<String>,
    /// Credentials for the image's registry (a service's
    /// `--with-registry-auth`): used by the pull, never written to disk.
    #[serde(skip)]
    pub registry_auth: Option<crate::image::Credential>,
    /// `--health-*`/`--no-healthcheck`; `None`: the image's HEALTHCHECK.
    /// Merged with the image's when the container is made
    /// ([`crate::health::resolve`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthOpts>,
}

/// A command to run in a task's running container, beside its own
/// process (a health check; later `weft exec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments (the program is looked up in the container's
    /// `PATH`). Environment, working directory and user are the
    /// container's.
    pub args: Vec<String>,
    /// Killed (SIGKILL) when it runs longer.
    pub timeout: Duration,
    /// The first this many bytes of its output (stdout and stderr
    /// together) are kept; the rest is read and dropped.
    pub output_limit: usize,
}

/// How an [`ExecRequest`] ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit status (128 + n when signal n ended it); `None` when it
    /// was killed at its timeout.
    pub exit_code: Option<i32>,
    /// The start of its output, at most the request's limit.
    pub output: Vec<u8>,
}

/// Limits on a container's cgroup (issue #14), 0 = none. runc writes them
/// to cgroup v1 or v2 files itself from the OCI `linux.resources`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `--limit-cpu`, billionths of a CPU.
    #[serde(default)]
    pub nano_cpus: u64,
    /// `--limit-memory`, bytes; also memory + swap, so no swap is used and
    /// an allocation past it meets the OOM killer at once.
    #[serde(default)]
    pub memory_bytes: u64,
    /// `--limit-pids`.
    #[serde(default)]
    pub pids: u64,
}

/// Where a task is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// The task's process is alive.
    Running {
        /// Its pid (also its process group and session id).
        pid: i32,
    },
    /// The task's process ended.
    Exited {
        /// The exit code, if it exited normally.
        code: Option<i32>,
        /// The signal that killed it, if any.
        signal: Option<i32>,
        /// The kernel's OOM killer killed a process of its cgroup (a
        /// container over its `--limit-memory`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        oom: bool,
    },
    /// The task could not be started, or its supervision was lost (the shim
    /// died and the task's fate is unknown).
    Failed {
        /// What went wrong, for the user.
        error: String,
    },
}

impl TaskState {
    /// True once the task will not run again (exited or failed).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, TaskState::Running { .. })
    }
}

/// The observed state of one task, as reported to the worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task id.
    pub id: String,
    /// Where it is.
    pub state: TaskState,
    /// When its process started, if it did.
    pub started_at: Option<SystemTime>,
    /// When it ended, if it did.
    pub finished_at: Option<SystemTime>,
}

/// Errors of the task runtime (and of the shim).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A task file is not what we (or the shim) wrote.
    #[error("{} is corrupt: {source}", path.display())]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The spec cannot be run as given.
    #[error("task {id:?}: invalid spec: {reason}")]
    InvalidSpec {
        /// The task.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A task with this id exists with another spec or is no longer running
    /// (remove it first).
    #[error("task {id:?} already exists")]
    AlreadyExists {
        /// The task.
        id: String,
    },
    /// No task with this id.
    #[error("no task {id:?}")]
    NotFound {
        /// The task.
        id: String,
    },
    /// The shim program could not be started.
    #[error("task {id:?}: cannot start the shim {}: {source}", program.display())]
    ShimSpawn {
        /// The task.
        id: String,
        /// The shim program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Signalling the task failed (other than "already gone").
    #[error("task {id:?}: kill({pid}, {signal}): {source}")]
    Signal {
        /// The task.
        id: String,
        /// The pid (process group) signalled.
        pid: i32,
        /// The signal.
        signal: i32,
        /// The OS error.
        #[source]
        source: nix::errno::Errno,
    },
    /// The task did not end even after SIGKILL.
    #[error("task {id:?} did not exit {waited:?} after SIGKILL")]
    StopTimeout {
        /// The task.
        id: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The daemon stopped before the task's network was ready; nothing of
    /// the task was left.
    #[error("task {id:?} not started: the daemon stopped before its network was ready")]
    NotStarted {
        /// The task.
        id: String,
    },
    /// A namespace operation of the shim failed.
    #[error(transparent)]
    Netns(#[from] weft_overlay::linux::Error),
    /// A call to containerd failed.
    #[error(transparent)]
    Containerd(#[from] weft_containerd_api::Error),
    /// The task's runtime cannot do this (a host process has no container
    /// to run a command in).
    #[error("task {id:?}: {what} needs a container task")]
    Unsupported {
        /// The task.
        id: String,
        /// What was asked.
        what: &'static str,
    },
    /// The task is known but its process does not run (not started yet,
    /// or ended).
    #[error("task {id:?} is not running")]
    NotRunning {
        /// The task.
        id: String,
    },
    /// An exec's spec was refused.
    #[error("task {id:?}: {source}")]
    InvalidExec {
        /// The task.
        id: String,
        /// What is wrong with it.
        #[source]
        source: interactive::SpecError,
    },
    /// An exec's `-u` names a user or group the container does not have.
    #[error("task {id:?}: {source}")]
    ExecUser {
        /// The task.
        id: String,
        /// Which name is missing.
        #[source]
        source: containerd::spec::users::UserError,
    },
    /// The runtime could not start an exec's program (containerd's
    /// `Tasks.Start` refused it).
    #[error("task {id:?}: cannot run {program:?}: {reason}")]
    ExecStart {
        /// The task.
        id: String,
        /// The program.
        program: String,
        /// Whether the program was not found (Docker's exit 127; else 126).
        missing: bool,
        /// What runc said.
        reason: String,
    },
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs and supervises tasks on this node. The real one is
/// [`ProcessRuntime`]; [`FakeRuntime`] records calls for tests.
///
/// Status is kept in memory and updated by the runtime itself; the worker
/// learns about changes from [`subscribe`](TaskRuntime::subscribe) and can
/// always re-read [`list`](TaskRuntime::list) (level-triggered).
#[async_trait::async_trait]
pub trait TaskRuntime: Send + Sync {
    /// Reports the tasks that survived a daemon restart (running or
    /// finished), never starting anything. Call once at daemon start,
    /// before [`start`](TaskRuntime::start).
    async fn adopt(&self) -> Result<Vec<TaskStatus>>;

    /// Starts a task. Returns its status once the process runs (or once it
    /// failed to start: then the state is `Failed`, not an `Err`). `Err` is
    /// for an invalid spec, a clashing id, or a runtime that cannot work
    /// (files, shim). Starting a running task again with the same spec
    /// returns its status and starts nothing.
    async fn start(&self, spec: &TaskSpec) -> Result<TaskStatus>;

    /// [`start`](TaskRuntime::start), with the task's process run only once
    /// `network` is ready; what can be made before is made meanwhile. The
    /// default waits, then starts.
    async fn start_when(&self, spec: &TaskSpec, mut network: NetworkReady) -> Result<TaskStatus> {
        network.wait().await.map_err(|_| Error::NotStarted {
            id: spec.id.clone(),
        })?;
        self.start(spec).await
    }

    /// Sends the task's stop signal (its [`StopPolicy`]) to its processes,
    /// then SIGKILL to all of them after `grace` (`None`: the task's own
    /// grace period), and returns once it has ended. A task that already
    /// ended is fine (idempotent).
    async fn stop(&self, id: &str, grace: Option<Duration>) -> Result<()>;

    /// Stops the task as [`stop`](TaskRuntime::stop) does with its own
    /// grace period if it still runs, then deletes it and its files.
    /// Unknown ids are fine (idempotent). May take the whole grace period:
    /// callers that must not wait run it in the background.
    async fn remove(&self, id: &str) -> Result<()>;

    /// Waits until the task has ended and returns its final status.
    async fn wait(&self, id: &str) -> Result<TaskStatus>;

    /// The task's current status.
    fn status(&self, id: &str) -> Option<TaskStatus>;

    /// All known tasks, ordered by id.
    fn list(&self) -> Vec<TaskStatus>;

    /// The task's log file (stdout and stderr, appended).
    fn log_path(&self, id: &str) -> PathBuf;

    /// Every status change (start, exit, failure) from now on. On
    /// `RecvError::Lagged`, re-read [`list`](TaskRuntime::list).
    fn subscribe(&self) -> broadcast::Receiver<TaskStatus>;

    /// Whether the start of task `id` waits on a pull of its image from
    /// its registry (reported as `pulling` rather than `starting`).
    fn pulling(&self, _id: &str) -> bool {
        false
    }

    /// The health check the task's container runs, resolved when it was
    /// made (kept across daemon restarts); `None`: none (or not a
    /// container).
    fn health_check(&self, _id: &str) -> Option<crate::health::HealthCheck> {
        None
    }

    /// Runs a command in the task's running container and returns how it
    /// ended (a non-zero exit or a timeout is an `Ok`). `Err`: it could
    /// not be run (no such task, not a container, containerd failed).
    async fn exec(&self, id: &str, _req: &ExecRequest) -> Result<ExecOutput> {
        Err(Error::Unsupported {
            id: id.to_owned(),
            what: "running a command in it",
        })
    }

    /// Starts an interactive command in the task's running container
    /// (`weft exec`) and returns once it runs: see [`interactive`]. `Err`:
    /// it could not be started (no such task, not running, not a
    /// container, a bad spec, a program that cannot be run).
    async fn exec_session(&self, id: &str, _spec: &ExecSpec) -> Result<ExecSession> {
        Err(Error::Unsupported {
            id: id.to_owned(),
            what: "running a command in it",
        })
    }

    /// The live stdio of a task run with `-i` or `-t` while its container
    /// lives; `None` for any other task (its output is only in its log).
    /// `from_start`: the caller wants its output from the first byte
    /// (`weft run`), not from now (`weft attach`). The first call ends the
    /// hold of an `attach_wait` task.
    fn stdio(&self, _id: &str, _from_start: bool) -> Option<TaskStdio> {
        None
    }
}

/// Checks what the runtime relies on before anything touches the disk.
pub(crate) fn validate(spec: &TaskSpec) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidSpec {
            id: spec.id.clone(),
            reason,
        })
    };
    validate_id(&spec.id)?;
    // A container may take its command from its image.
    if spec.container.is_none() && (spec.command.is_empty() || spec.command[0].is_empty()) {
        return bad("empty command");
    }
    if spec
        .command
        .iter()
        .chain(spec.env.values())
        .any(|s| s.contains('\0'))
    {
        return bad("NUL in command or environment");
    }
    if spec
        .env
        .keys()
        .any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return bad("environment variable name is empty or contains '=' or NUL");
    }
    if !spec.netns.is_absolute() {
        return bad("netns path is not absolute");
    }
    if spec.resolv_conf.as_ref().is_some_and(|p| !p.is_absolute()) {
        return bad("resolv.conf path is not absolute");
    }
    if let Some(h) = &spec.hostname
        && (h.is_empty() || h.len() > 64 || h.contains('\0'))
    {
        return bad("hostname must be 1..=64 bytes without NUL");
    }
    Ok(())
}

/// Task ids name directories, so they must be plain file names.
/// Waits on a runtime's status changes `rx` until task `id` (its status
/// read by `status`) has ended; `NotFound` once the runtime forgets it.
pub(crate) async fn wait_until_ended(
    mut rx: broadcast::Receiver<TaskStatus>,
    id: &str,
    status: impl Fn() -> Option<TaskStatus>,
) -> Result<TaskStatus> {
    loop {
        match status() {
            None => return Err(Error::NotFound { id: id.to_owned() }),
            Some(s) if s.state.is_terminal() => return Ok(s),
            Some(_) => {}
        }
        match rx.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                return Err(Error::NotFound { id: id.to_owned() });
            }
        }
    }
}

pub(crate) fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSpec {
            id: id.to_owned(),
            reason: "id must be 1..=128 of [A-Za-z0-9_.-] and not . or ..",
        })
    }
}

#[cfg(test)]
mod tests;
