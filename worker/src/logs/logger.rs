//! The logger: copies a task's stdout and stderr pipes into its log
//! ([`RotatingWriter`]) until both pipes end, or until asked to stop, and
//! then drains what is readable.
//!
//! Two users:
//! - containerd's shim starts the `weft` binary as
//!   `<exec-root>/bin/weft-task-logger weft-task-logger <taskdir>` (the
//!   `binary://` URI, docs/plans/14-containerd.md §2.6) with fd 3 = stdout,
//!   fd 4 = stderr, fd 5 = a pipe closed when we are ready ([`main`]).
//!   The shim keeps the pipes' write ends open until `Tasks.Delete`; then it
//!   closes them and sends SIGTERM (and SIGKILL 12 s later). So after a
//!   container exits its output may sit in the pipes until the task is
//!   deleted: the runtime deletes the task at the exit and waits for our
//!   lock to go (see `runtime::containerd`) before it reports the exit.
//! - the process runtime's shim runs [`pump`] on a thread for its task.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::format::{Entry, Stream};
use super::writer::{LineSplitter, RotatingWriter};
use super::{LogOptions, Result, io, lock_writer, log_dir};

/// Set by SIGTERM/SIGINT in the logger process.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The logger process (`weft weft-task-logger <taskdir>`): returns the
/// process's exit code. Errors go to stderr (the shim's: usually nowhere).
pub fn main(task_dir: &Path) -> std::process::ExitCode {
    match run(task_dir) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-task-logger {}: {e}", task_dir.display());
            std::process::ExitCode::FAILURE
        }
    }
}

fn fd(n: i32) -> Option<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only asks whether the descriptor is open.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the shim passes fds 3, 4 and 5 to this process and nothing
    // else in it owns them; we take each once.
    Some(unsafe { OwnedFd::from_raw_fd(n) })
}

fn run(task_dir: &Path) -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_term),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: `on_term` only stores to an atomic.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| io("install signal handler", task_dir)(e.into()))?;
    }
    let missing = |n| {
        io("take the shim's fd", task_dir)(std::io::Error::other(format!("fd {n} is not open")))
    };
    let out = fd(3).ok_or_else(|| missing(3))?;
    let err = fd(4).ok_or_else(|| missing(4))?;
    let ready = fd(5);
    let dir = log_dir(task_dir);
    let lock = lock_writer(&dir)?;
    let writer = RotatingWriter::open(&dir, LogOptions::load(task_dir))?;
    // Ready: the shim goes on once this end closes.
    drop(ready);
    let r = pump(out, err, writer, &STOP);
    drop(lock);
    r
}

/// Copies `out` (stdout) and `err` (stderr) into `writer` until both end;
/// once `stop` is set, reads what is left without waiting and returns.
pub fn pump(out: OwnedFd, err: OwnedFd, writer: RotatingWriter, stop: &AtomicBool) -> Result<()> {
    pump_tapped(
        vec![(out, Stream::Stdout), (err, Stream::Stderr)],
        writer,
        stop,
        &mut |_, _| {},
    )
}

/// [`pump`] over any pipes, each with its stream, handing every chunk read
/// to `tap` too (before it is written to the log): what the containerd
/// runtime uses for a task run with `-i`/`-t`, whose output it also sends
/// live to attached clients.
pub fn pump_tapped(
    pipes: Vec<(OwnedFd, Stream)>,
    mut writer: RotatingWriter,
    stop: &AtomicBool,
    tap: &mut dyn FnMut(Stream, &[u8]),
) -> Result<()> {
    let mut pipes: Vec<Option<(std::fs::File, LineSplitter, Stream)>> = pipes
        .into_iter()
        .map(|(fd, s)| Some((std::fs::File::from(fd), LineSplitter::new(s), s)))
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut entries: Vec<Entry> = Vec::new();
    let mut draining = false;
    while pipes.iter().any(Option::is_some) {
        if !draining && stop.load(Ordering::SeqCst) {
            draining = true;
            for (f, _, _) in pipes.iter().flatten() {
                set_nonblocking(f.as_raw_fd());
            }
        }
        let ready = if draining {
            vec![true; pipes.len()]
        } else {
            poll_readable(&pipes)
        };
        for (i, slot) in pipes.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            let Some((f, split, stream)) = slot else {
                continue;
            };
            match f.read(&mut buf) {
                Ok(n) if n > 0 => {
                    tap(*stream, &buf[..n]);
                    split.push(&buf[..n], SystemTime::now(), &mut entries);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The end, drained (WouldBlock: nothing more is waited
                // for), or a broken pipe.
                _ => {
                    split.finish(SystemTime::now(), &mut entries);
                    *slot = None;
                }
            }
        }
        if !entries.is_empty() {
            writer.write(&entries)?;
            entries.clear();
        }
    }
    Ok(())
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we own; only the O_NONBLOCK flag changes.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Which pipes have data (or ended); waits up to 200 ms so `stop` is seen.
fn poll_readable(pipes: &[Option<(std::fs::File, LineSplitter, Stream)>]) -> Vec<bool> {
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .map(|p| libc::pollfd {
            fd: p.as_ref().map_or(-1, |(f, _, _)| f.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd; negative fds
    // are ignored.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
    if n <= 0 {
        return vec![false; pipes.len()];
    }
    fds.iter()
        .map(|p| p.fd >= 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect()
}

/// How long the process shim lets its pump run on after the task ended
/// (a process that left the task's group may still hold the pipes).
pub const PUMP_LINGER: Duration = Duration::from_secs(2);
