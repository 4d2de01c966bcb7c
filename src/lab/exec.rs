//! `weft lab exec`: run a command "on" a node, like `nsenter -t <daemon>
//! -n -m -u`: in the node's network namespace and, while its daemon runs,
//! the daemon's mount and UTS namespaces (so mounts the daemon made are
//! visible and `hostname` prints the node's name). `WEFT_HOST` points at
//! the node's daemon and the running `weft`'s directory leads `PATH`, so a
//! bare `weft …` talks to that node with this very binary.
//!
//! The namespaces are opened before `fork`; the child only calls `setns`
//! and `chdir` before `exec` (async-signal-safe, no allocation).

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;

use anyhow::Context;
use weft_overlay::linux::Netns;

use super::procs;
use super::state::{LabState, NodeState};

/// The daemon of `node` if it is still the process `lab up` started: alive,
/// naming the node's socket on its command line and living in the node's
/// network namespace (so a recycled pid is never entered).
pub fn daemon_pid(node: &NodeState) -> Option<i32> {
    let pid = i32::try_from(node.pid?).ok()?;
    let p = procs::read_proc(pid)?;
    let socket = node.socket.as_os_str().as_bytes();
    let pin = procs::ns_id(&node.netns)?;
    (!p.zombie && procs::contains(&p.cmdline, socket) && p.net == Some(pin)).then_some(pid)
}

/// Runs `cmd` (default: `$SHELL`) on `node` and returns its exit code
/// (128 + signal number if a signal ended it).
pub async fn exec(
    state: &LabState,
    node: &NodeState,
    weft: &Path,
    cmd: Vec<OsString>,
) -> anyhow::Result<i32> {
    let netns = Netns::open(&node.netns).with_context(|| {
        format!(
            "node {} of lab {} has no network namespace any more; \
             remove the lab with `weft lab down {}`",
            node.name, state.name, state.name
        )
    })?;
    let (mnt, uts) = match daemon_pid(node) {
        Some(pid) => (
            File::open(format!("/proc/{pid}/ns/mnt")).ok(),
            File::open(format!("/proc/{pid}/ns/uts")).ok(),
        ),
        None => {
            eprintln!(
                "warning: the daemon of {} is not running; entering its network namespace only",
                node.name
            );
            (None, None)
        }
    };
    let mut argv = cmd.into_iter();
    let program = match argv.next() {
        Some(p) => p,
        None => std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into()),
    };
    let mut command = std::process::Command::new(&program);
    command.args(argv);
    command
        .env("WEFT_HOST", format!("unix://{}", node.socket.display()))
        .env("WEFT_LAB", &state.name)
        .env("WEFT_LAB_NODE", &node.name);
    if let Some(dir) = weft.parent() {
        let mut path = OsString::from(dir);
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        command.env("PATH", path);
    }
    // Joining a mount namespace moves the process to its root; come back to
    // the caller's directory (it is the same filesystem) when possible.
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| CString::new(d.as_os_str().as_bytes()).ok());
    let fds = EnterFds {
        net: netns.as_raw_fd(),
        mnt: mnt.as_ref().map(|f| f.as_raw_fd()),
        uts: uts.as_ref().map(|f| f.as_raw_fd()),
        cwd,
    };
    // SAFETY: the hook runs in the forked child before exec and only makes
    // raw syscalls (setns, chdir) on fds opened before the fork, kept open
    // by `netns`, `mnt` and `uts` until after `spawn` returns, and on a C
    // string prepared before the fork; it neither allocates nor locks.
    unsafe {
        command.pre_exec(move || fds.enter());
    }

    // Ctrl-C and Ctrl-\ go to the whole foreground process group: let the
    // command decide what they mean and report how it ended.
    let _sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    let _sigquit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit()).ok();
    let mut child = tokio::process::Command::from(command)
        .spawn()
        .with_context(|| format!("cannot run {} on {}", program.to_string_lossy(), node.name))?;
    drop((mnt, uts, netns));
    let status = child.wait().await?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    })
}

/// The namespace fds and directory the child enters.
struct EnterFds {
    net: RawFd,
    mnt: Option<RawFd>,
    uts: Option<RawFd>,
    cwd: Option<CString>,
}

impl EnterFds {
    /// Runs in the forked child: raw syscalls only.
    fn enter(&self) -> std::io::Result<()> {
        let check = |r: libc::c_int| {
            if r == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY (all three blocks): setns and chdir on fds and a
        // NUL-terminated string owned by `self`, alive for the call.
        check(unsafe { libc::setns(self.net, libc::CLONE_NEWNET) })?;
        if let Some(mnt) = self.mnt {
            check(unsafe { libc::setns(mnt, libc::CLONE_NEWNS) })?;
            if let Some(cwd) = &self.cwd {
                // Best effort: the directory may not exist in there.
                let _ = unsafe { libc::chdir(cwd.as_ptr()) };
            }
        }
        if let Some(uts) = self.uts {
            check(unsafe { libc::setns(uts, libc::CLONE_NEWUTS) })?;
        }
        Ok(())
    }
}
