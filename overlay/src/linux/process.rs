//! Starting processes inside namespaces: [`NsCommand`] prepares a
//! `std::process::Command` so that the child, between `fork` and `exec`,
//! joins a network namespace and optionally gets its own mount namespace
//! (with bind mounts, tmpfs mounts and a fresh `/sys`) and its own UTS
//! namespace (hostname).
//!
//! Why in the child: `unshare(CLONE_NEWNS)` is refused in a multi-threaded
//! process (the daemon and the test harness both are), and `setns` in the
//! parent would move one of its threads. Everything the child needs is
//! prepared before `fork` (C strings, the namespace fd); between `fork` and
//! `exec` the child only makes raw, async-signal-safe syscalls (`setns`,
//! `unshare`, `mount`, `umount2`, `mkdir`, `sethostname`, `setsid`,
//! `prctl`): no allocation, no locks.
//!
//! ```text
//!  child: [prctl(PDEATHSIG)] [setsid] [setns(net)]
//!         [unshare(NEWNS); mount / rslave|rprivate; ops in order: bind / tmpfs / sysfs]
//!         [unshare(NEWUTS); sethostname] ─ exec
//! ```

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::error::{Error, Result};
use super::netns::Netns;

/// How the child's new mount namespace relates to the parent's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MountPropagation {
    /// `mount --make-rslave /` (what `ip netns exec` does): the child's
    /// mounts never reach the host, and unmounts the host makes under shared
    /// mounts (e.g. removing a namespace pin) reach the child, so the child
    /// does not keep a deleted namespace alive.
    #[default]
    Slave,
    /// `mount --make-rprivate /`: no propagation in either direction.
    Private,
    /// Each mount keeps the parent's propagation: a shared mount stays a
    /// peer of the parent's, so what the child mounts under it (e.g. a
    /// namespace pin) is seen by the host and by the host's other
    /// processes (containerd and runc, which open the pin by path), and
    /// private mounts stay private.
    Inherit,
}

#[derive(Clone, Debug)]
enum MountOp {
    Bind {
        src: PathBuf,
        dst: PathBuf,
        readonly: bool,
    },
    Tmpfs {
        dir: PathBuf,
    },
    Sysfs,
}

/// A recipe for starting a process inside namespaces. Build it, then
/// [`apply`](NsCommand::apply) it to a `Command` (or get one from
/// [`command`](NsCommand::command)); works with `tokio::process::Command`
/// via `From<std::process::Command>`.
///
/// Spawn errors from the child's setup come back from `spawn()` as the
/// `io::Error` of the failing syscall.
#[derive(Clone, Debug, Default)]
pub struct NsCommand {
    netns: Option<Netns>,
    mount_ns: bool,
    propagation: MountPropagation,
    mounts: Vec<MountOp>,
    hostname: Option<String>,
    new_session: bool,
    parent_death_signal: Option<nix::sys::signal::Signal>,
}

impl NsCommand {
    /// A recipe that changes nothing (the child shares all namespaces).
    pub fn new() -> Self {
        Self::default()
    }

    /// Start the child in network namespace `ns`.
    pub fn netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.clone());
        self
    }

    /// Give the child a new mount namespace (implied by the mount methods).
    pub fn new_mount_ns(mut self) -> Self {
        self.mount_ns = true;
        self
    }

    /// How the new mount namespace propagates (default: rslave).
    pub fn propagation(mut self, p: MountPropagation) -> Self {
        self.propagation = p;
        self
    }

    /// Bind-mount `src` over `dst` in the child's mount namespace (e.g. a
    /// generated file over `/etc/resolv.conf`). `dst` must exist. Mount
    /// operations run in the order they were added.
    pub fn bind(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Self {
        self.mount_ns = true;
        self.mounts.push(MountOp::Bind {
            src: src.into(),
            dst: dst.into(),
            readonly: false,
        });
        self
    }

    /// Like [`bind`](NsCommand::bind), read-only.
    pub fn bind_ro(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Self {
        self.mount_ns = true;
        self.mounts.push(MountOp::Bind {
            src: src.into(),
            dst: dst.into(),
            readonly: true,
        });
        self
    }

    /// Mount an empty tmpfs (mode 0755) on `dir` in the child's mount
    /// namespace (e.g. `/run/weft`, so each daemon has its own). `dir` is
    /// created first if missing (as an empty directory, visible on the host).
    pub fn tmpfs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.mount_ns = true;
        self.mounts.push(MountOp::Tmpfs { dir: dir.into() });
        self
    }

    /// Mount a fresh sysfs on `/sys` so `/sys/class/net` shows the child's
    /// network namespace (as `ip netns exec` does).
    pub fn remount_sys(mut self) -> Self {
        self.mount_ns = true;
        self.mounts.push(MountOp::Sysfs);
        self
    }

    /// Give the child a new UTS namespace with this hostname.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Start the child in a new session (`setsid`), detached from the
    /// caller's terminal and process group; for long-lived daemons.
    pub fn new_session(mut self) -> Self {
        self.new_session = true;
        self
    }

    /// Deliver `sig` to the child when the *thread* that spawned it exits
    /// (`PR_SET_PDEATHSIG`). Only spawn from a long-lived thread (e.g. a
    /// test's main thread), never from a `spawn_blocking` or `run_in` thread.
    pub fn parent_death_signal(mut self, sig: nix::sys::signal::Signal) -> Self {
        self.parent_death_signal = Some(sig);
        self
    }

    /// A new `Command` for `program` with this recipe applied.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let mut cmd = Command::new(program);
        self.apply(&mut cmd)?;
        Ok(cmd)
    }

    /// Installs this recipe on `cmd` (as a `pre_exec` hook). The namespace
    /// fd is kept open by the hook for as long as `cmd` lives.
    pub fn apply(&self, cmd: &mut Command) -> Result<()> {
        let prepared = Arc::new(self.prepare()?);
        // SAFETY: the hook runs in the child between fork and exec, where
        // only async-signal-safe operations are allowed. `Prepared::enter`
        // performs raw syscalls on data prepared before the fork (C strings,
        // an open fd) and never allocates, locks or panics.
        unsafe {
            cmd.pre_exec(move || prepared.enter());
        }
        Ok(())
    }

    fn prepare(&self) -> Result<Prepared> {
        let ops = self
            .mounts
            .iter()
            .map(|op| {
                Ok(match op {
                    MountOp::Bind { src, dst, readonly } => PreparedOp::Bind {
                        src: cstring(src)?,
                        dst: cstring(dst)?,
                        readonly: *readonly,
                    },
                    MountOp::Tmpfs { dir } => PreparedOp::Tmpfs { dir: cstring(dir)? },
                    MountOp::Sysfs => PreparedOp::Sysfs,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let hostname = match &self.hostname {
            Some(h) => Some(CString::new(h.as_bytes()).map_err(|_| Error::InvalidName {
                name: h.clone(),
                reason: "hostname contains NUL",
            })?),
            None => None,
        };
        Ok(Prepared {
            netns: self.netns.clone(),
            mount_ns: self.mount_ns,
            propagation: match self.propagation {
                MountPropagation::Slave => Some(libc::MS_SLAVE),
                MountPropagation::Private => Some(libc::MS_PRIVATE),
                MountPropagation::Inherit => None,
            },
            ops,
            hostname,
            new_session: self.new_session,
            parent_death_signal: self.parent_death_signal.map(|s| s as libc::c_int),
        })
    }
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::InvalidName {
        name: p.display().to_string(),
        reason: "path contains NUL",
    })
}

enum PreparedOp {
    Bind {
        src: CString,
        dst: CString,
        readonly: bool,
    },
    Tmpfs {
        dir: CString,
    },
    Sysfs,
}

/// Everything the child needs, prepared before fork.
struct Prepared {
    netns: Option<Netns>,
    mount_ns: bool,
    propagation: Option<libc::c_ulong>,
    ops: Vec<PreparedOp>,
    hostname: Option<CString>,
    new_session: bool,
    parent_death_signal: Option<libc::c_int>,
}

/// Turns a -1 syscall return into the errno as `io::Error` (which does not
/// allocate for OS errors).
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Prepared {
    /// Runs in the forked child. Async-signal-safe: raw syscalls only.
    fn enter(&self) -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY (all blocks below): plain syscalls whose pointer arguments
        // are NUL-terminated strings owned by `self` (alive for the call) or
        // null where the kernel accepts null.
        if let Some(sig) = self.parent_death_signal {
            check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })?;
        }
        if self.new_session && unsafe { libc::setsid() } == -1 {
            return Err(io::Error::last_os_error());
        }
        if let Some(ns) = &self.netns {
            check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
        }
        if self.mount_ns {
            check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
            if let Some(propagation) = self.propagation {
                check(unsafe {
                    libc::mount(
                        null,
                        c"/".as_ptr(),
                        null,
                        libc::MS_REC | propagation,
                        std::ptr::null(),
                    )
                })?;
            }
            for op in &self.ops {
                match op {
                    PreparedOp::Bind { src, dst, readonly } => {
                        check(unsafe {
                            libc::mount(
                                src.as_ptr(),
                                dst.as_ptr(),
                                null,
                                libc::MS_BIND,
                                std::ptr::null(),
                            )
                        })?;
                        if *readonly {
                            check(unsafe {
                                libc::mount(
                                    null,
                                    dst.as_ptr(),
                                    null,
                                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                                    std::ptr::null(),
                                )
                            })?;
                        }
                    }
                    PreparedOp::Tmpfs { dir } => {
                        let r = unsafe { libc::mkdir(dir.as_ptr(), 0o755) };
                        if r == -1 {
                            let e = io::Error::last_os_error();
                            if e.raw_os_error() != Some(libc::EEXIST) {
                                return Err(e);
                            }
                        }
                        check(unsafe {
                            libc::mount(
                                c"tmpfs".as_ptr(),
                                dir.as_ptr(),
                                c"tmpfs".as_ptr(),
                                libc::MS_NOSUID | libc::MS_NODEV,
                                c"mode=0755".as_ptr().cast(),
                            )
                        })?;
                    }
                    PreparedOp::Sysfs => {
                        // The old /sys shows the host's devices; detach it
                        // and mount one that belongs to the child's netns.
                        check(unsafe { libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH) })?;
                        check(unsafe {
                            libc::mount(
                                c"sysfs".as_ptr(),
                                c"/sys".as_ptr(),
                                c"sysfs".as_ptr(),
                                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                                std::ptr::null(),
                            )
                        })?;
                    }
                }
            }
        }
        if let Some(h) = &self.hostname {
            check(unsafe { libc::unshare(libc::CLONE_NEWUTS) })?;
            check(unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_paths_is_rejected_before_fork() {
        let r = NsCommand::new()
            .bind("/a\0b", "/etc/resolv.conf")
            .command("true");
        assert!(matches!(r, Err(Error::InvalidName { .. })));
        let r = NsCommand::new().hostname("a\0b").command("true");
        assert!(matches!(r, Err(Error::InvalidName { .. })));
    }

    #[test]
    fn plain_recipe_runs() {
        let status = NsCommand::new().command("true").unwrap().status().unwrap();
        assert!(status.success());
    }
}
