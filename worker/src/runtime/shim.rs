//! The per-task shim (`weft task-shim`, hidden): the parent of one task's
//! process, detached from the daemon so the task outlives a daemon crash.
//!
//! ```text
//!  read spec.json ─ install signal forwarding ─ spawn task (NsCommand) ─ write pid
//!    ─ print READY on stdout ─ wait(task) ─ SIGKILL leftovers in its group ─ write exit
//! ```
//!
//! On any failure before the task runs it writes an `exit` file with the
//! error (so the runtime reports `Failed`) and still prints READY. SIGTERM,
//! SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to the shim are
//! forwarded to the task's process group. The shim only writes to stdout
//! once (the daemon may be gone later); its stderr is `shim.log`. The
//! task's stdout and stderr go through pipes into its json log (`logs`),
//! and the `exit` file is written only once that output is all in the log.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::SystemTime;

use weft_overlay::linux::{Netns, NsCommand};

use super::files::{self, ExitFile, PidFile};
use super::{Error, Result, TaskSpec};
use crate::logs;

/// Environment variable carrying the task directory; the runtime passes the
/// directory this way so any shim program (the `weft` binary, a test binary)
/// can receive it without a particular argument syntax.
pub const SHIM_DIR_ENV: &str = "WEFT_TASK_SHIM_DIR";

/// The line the shim prints on stdout once the task runs (or failed to).
pub const READY: &str = "weft-task-shim-ready";

/// `PATH` given to every task; the daemon's own environment is not inherited.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Arguments of the hidden `weft task-shim` command.
#[derive(Debug, clap::Args)]
pub struct ShimArgs {
    /// The task's directory (`<exec-root>/tasks/<id>`).
    #[arg(long, env = SHIM_DIR_ENV)]
    pub dir: std::path::PathBuf,
}

/// Errors of the shim: the runtime's error type.
pub type ShimError = Error;

/// The task's process group once it runs (0 before).
static TASK_PGID: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived before the task ran, to deliver once it does.
static PENDING: AtomicI32 = AtomicI32::new(0);

const FORWARDED: [nix::sys::signal::Signal; 6] = {
    use nix::sys::signal::Signal::*;
    [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]
};

extern "C" fn forward(sig: libc::c_int) {
    let pgid = TASK_PGID.load(Ordering::SeqCst);
    if pgid > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes plain integers.
        unsafe { libc::kill(-pgid, sig) };
    } else {
        PENDING.store(sig, Ordering::SeqCst);
    }
}

/// Runs the shim for the task in `args.dir` until the task ends. Returns an
/// error only if even the `exit` file could not be written.
pub fn run(args: ShimArgs) -> Result<(), ShimError> {
    let dir = args.dir;
    install_forwarding()?;
    match spawn_task(&dir) {
        Ok((mut child, pid, log)) => {
            announce_ready();
            let status = wait(&mut child);
            // Whatever the task left behind in its group goes with it.
            // SAFETY: kill(2) on a process group we created; ESRCH is fine.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            // All output in the log before the exit is known: a reader
            // after the reported exit sees everything.
            log.finish();
            let exit = ExitFile {
                code: status.as_ref().ok().and_then(|s| s.code()),
                signal: status.as_ref().ok().and_then(|s| s.signal()),
                error: status
                    .as_ref()
                    .err()
                    .map(|e| format!("waiting for the task: {e}")),
                finished_at: SystemTime::now(),
                oom: false,
            };
            files::write_json(&dir.join(files::EXIT), &exit)
        }
        Err(e) => {
            eprintln!("task shim: {e}");
            let exit = ExitFile {
                code: None,
                signal: None,
                error: Some(e.to_string()),
                finished_at: SystemTime::now(),
                oom: false,
            };
            let written = files::write_json(&dir.join(files::EXIT), &exit);
            announce_ready();
            written
        }
    }
}

fn install_forwarding() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in FORWARDED {
        // SAFETY: `forward` only touches atomics and calls kill(2), both
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(|e| Error::Io {
            op: "install signal handler",
            path: "/proc/self".into(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Starts the task and records its pid; returns the child and its pid.
fn spawn_task(dir: &Path) -> Result<(std::process::Child, i32, TaskLog)> {
    let spec: TaskSpec = files::read_json(&dir.join(files::SPEC))?.ok_or_else(|| Error::Io {
        op: "read",
        path: dir.join(files::SPEC),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    super::validate(&spec)?;
    let netns = Netns::open(&spec.netns)?;
    // Always a new mount namespace: the task's mounts never reach the host,
    // and its /tmp is its own (gone with the task, never shared with others).
    let mut ns = NsCommand::new().netns(&netns).new_session().new_mount_ns();
    if let Some(resolv) = &spec.resolv_conf {
        ns = ns.bind_ro(resolv, "/etc/resolv.conf");
    }
    // After the binds: their sources may live under /tmp.
    ns = ns.tmpfs("/tmp");
    if let Some(h) = &spec.hostname {
        ns = ns.hostname(h);
    }
    let (log, stdout, stderr) = OpenLog::open(dir)?;
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(&spec.env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if let Some(h) = &spec.hostname {
        cmd.env("HOSTNAME", h);
    }
    // The daemon (and so this shim) runs with umask 077 to keep its own
    // files private; the workload gets the usual 022, as under Docker.
    // SAFETY: umask(2) is async-signal-safe and touches only this process.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            Ok(())
        });
    }
    ns.apply(&mut cmd)?;
    let spawned = cmd.spawn();
    // Our copies of the pipes' write ends go: the pump sees the end of the
    // output when the task's (and its children's) copies close.
    drop(cmd);
    let mut child = spawned.map_err(|source| Error::Io {
        op: "start task",
        path: spec.command[0].clone().into(),
        source,
    })?;
    // The pump thread starts after the fork: no thread of ours may hold a
    // lock (the allocator's) while the child runs its pre-exec steps. The
    // pipes hold the task's first 64 KiB until then.
    let log = log.start();
    let pid = child.id() as i32;
    TASK_PGID.store(pid, Ordering::SeqCst);
    let pending = PENDING.swap(0, Ordering::SeqCst);
    if pending != 0 {
        // SAFETY: kill(2) on the group we just created.
        unsafe { libc::kill(-pid, pending) };
    }
    let me = std::process::id() as i32;
    let record = PidFile {
        pid,
        start_time: files::proc_stat(pid).map(|(s, _)| s).unwrap_or(0),
        shim_pid: me,
        shim_start_time: files::proc_stat(me).map(|(s, _)| s).unwrap_or(0),
        boot_id: files::boot_id(),
        started_at: SystemTime::now(),
    };
    if let Err(e) = files::write_json(&dir.join(files::PID), &record) {
        // Unsupervisable: do not leave an untracked process behind.
        // SAFETY: kill(2) on the group we just created.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = wait(&mut child);
        return Err(e);
    }
    Ok((child, pid, log))
}

/// The task's log, opened and locked, with the read ends of its output
/// pipes: the pump is not running yet.
struct OpenLog {
    lock: nix::fcntl::Flock<std::fs::File>,
    writer: logs::writer::RotatingWriter,
    out: OwnedFd,
    err: OwnedFd,
}

impl OpenLog {
    /// Opens the log; returns it and the write ends for the task's stdout
    /// and stderr.
    fn open(dir: &Path) -> Result<(Self, OwnedFd, OwnedFd)> {
        let log_dir = logs::log_dir(dir);
        let io_err = |op| {
            let path = log_dir.clone();
            move |e: logs::Error| Error::Io {
                op,
                path,
                source: std::io::Error::other(e.to_string()),
            }
        };
        let lock = logs::lock_writer(&log_dir).map_err(io_err("lock task log"))?;
        let writer = logs::writer::RotatingWriter::open(&log_dir, logs::LogOptions::load(dir))
            .map_err(io_err("open task log"))?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Io {
                op: "create output pipe",
                path: log_dir.clone(),
                source: e.into(),
            })
        };
        let (out, out_w) = pipe()?;
        let (err, err_w) = pipe()?;
        Ok((
            Self {
                lock,
                writer,
                out,
                err,
            },
            out_w,
            err_w,
        ))
    }

    /// Starts the pump thread ([`crate::logs::logger::pump`]), which holds
    /// the log's lock until the output ends.
    fn start(self) -> TaskLog {
        let stop = Arc::new(logs::logger::Stop::new());
        let flag = stop.clone();
        let Self {
            lock,
            writer,
            out,
            err,
        } = self;
        let pump = std::thread::spawn(move || {
            if let Err(e) = logs::logger::pump(out, err, writer, &flag) {
                eprintln!("task shim: task log: {e}");
            }
            drop(lock);
        });
        TaskLog { pump, stop }
    }
}

/// The task's output on its way into its json log: the pump thread.
struct TaskLog {
    pump: std::thread::JoinHandle<()>,
    stop: Arc<logs::logger::Stop>,
}

impl TaskLog {
    /// Waits for the pump to reach the end of the output; a process that
    /// left the task's group may hold the pipes open, so after
    /// [`PUMP_LINGER`](logs::logger::PUMP_LINGER) it drains what is there
    /// and stops.
    fn finish(self) {
        let deadline = std::time::Instant::now() + logs::logger::PUMP_LINGER;
        while !self.pump.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.stop.request();
        let _ = self.pump.join();
    }
}

fn wait(child: &mut std::process::Child) -> std::io::Result<std::process::ExitStatus> {
    // `Child::wait` retries on EINTR (our forwarding handler interrupts it).
    child.wait()
}

/// Tells the runtime (reading our stdout) that the task runs or failed,
/// then points stdout at stderr (`shim.log`): after READY nobody may be
/// reading the pipe. Write errors are ignored (never `println!`, which
/// panics on EPIPE): the daemon may already be gone, and the shim must
/// carry on supervising regardless.
fn announce_ready() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{READY}");
    let _ = out.flush();
    // SAFETY: dup2 on the process's own standard descriptors.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
}
