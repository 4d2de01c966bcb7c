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

/// Requested by SIGTERM/SIGINT in the logger process.
static STOP: std::sync::OnceLock<Stop> = std::sync::OnceLock::new();

extern "C" fn on_term(_: libc::c_int) {
    if let Some(s) = STOP.get() {
        s.request();
    }
}

/// A request that a pump stop: a flag, and a pipe that wakes the pump's
/// `poll` at once, so an idle pump sleeps until its pipes or this say
/// something (no timer). [`Stop::request`] is async-signal-safe (an atomic
/// store and a `write`). If the pipe cannot be made, the pump falls back to
/// looking at the flag every 200 ms.
pub struct Stop {
    flag: AtomicBool,
    /// (read end, write end), both non-blocking.
    wake: Option<(OwnedFd, OwnedFd)>,
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    /// A stop not requested yet.
    pub fn new() -> Stop {
        use nix::fcntl::OFlag;
        Stop {
            flag: AtomicBool::new(false),
            wake: nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).ok(),
        }
    }

    /// Asks the pump to drain what is readable and return.
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some((_, w)) = &self.wake {
            // SAFETY: a one-byte write from a valid buffer to a descriptor
            // we own; a full pipe (already woken) just fails.
            unsafe { libc::write(w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn wake_fd(&self) -> Option<i32> {
        self.wake.as_ref().map(|(r, _)| r.as_raw_fd())
    }
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
    // Before the handlers, so a signal is never lost.
    STOP.get_or_init(Stop::new);
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
    let stop = STOP.get_or_init(Stop::new);
    let out = fd(3).ok_or_else(|| missing(3))?;
    let err = fd(4).ok_or_else(|| missing(4))?;
    let ready = fd(5);
    let dir = log_dir(task_dir);
    let lock = lock_writer(&dir)?;
    let writer = RotatingWriter::open(&dir, LogOptions::load(task_dir))?;
    // Ready: the shim goes on once this end closes.
    drop(ready);
    let r = pump(out, err, writer, stop);
    drop(lock);
    r
}

/// Copies `out` (stdout) and `err` (stderr) into `writer` until both end;
/// once `stop` is set, reads what is left without waiting and returns.
pub fn pump(out: OwnedFd, err: OwnedFd, writer: RotatingWriter, stop: &Stop) -> Result<()> {
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
    stop: &Stop,
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
        if !draining && stop.requested() {
            draining = true;
            for (f, _, _) in pipes.iter().flatten() {
                set_nonblocking(f.as_raw_fd());
            }
        }
        let ready = if draining {
            vec![true; pipes.len()]
        } else {
            poll_readable(&pipes, stop.wake_fd())
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

/// Which pipes have data (or ended). Waits until one does or `wake` (the
/// stop pipe) is readable; without a stop pipe, up to 200 ms so the flag is
/// seen.
fn poll_readable(
    pipes: &[Option<(std::fs::File, LineSplitter, Stream)>],
    wake: Option<i32>,
) -> Vec<bool> {
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .map(|p| libc::pollfd {
            fd: p.as_ref().map_or(-1, |(f, _, _)| f.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    fds.push(libc::pollfd {
        fd: wake.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    });
    let timeout = if wake.is_some() { -1 } else { 200 };
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd; negative fds
    // are ignored.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    if n <= 0 {
        return vec![false; pipes.len()];
    }
    fds[..pipes.len()]
        .iter()
        .map(|p| p.fd >= 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect()
}

/// How long the process shim lets its pump run on after the task ended
/// (a process that left the task's group may still hold the pipes).
pub const PUMP_LINGER: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle pump sleeps in `poll` with no timer, and a stop request
    /// wakes it: it drains what the pipes hold and returns, although their
    /// write ends stay open (a process that left the task holds them).
    #[test]
    fn a_stop_request_wakes_an_idle_pump_and_it_drains() {
        let dir = tempfile::tempdir().unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, _err_w) = nix::unistd::pipe().unwrap();
        let writer = RotatingWriter::open(dir.path(), LogOptions::default()).unwrap();
        let stop = std::sync::Arc::new(Stop::new());
        let s = stop.clone();
        let pump = std::thread::spawn(move || pump(out_r, err_r, writer, &s));
        nix::unistd::write(&out_w, b"before the stop\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!pump.is_finished(), "the pump ended with its pipes open");
        stop.request();
        pump.join().unwrap().unwrap();
        let log: String = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        assert!(log.contains("before the stop"), "{log}");
    }
}
