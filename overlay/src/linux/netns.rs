//! Network namespaces pinned by bind mounts at paths we choose.
//!
//! A namespace lives as long as something references it: a process, a
//! socket, an open fd or a bind mount of its nsfs file. We pin each one by
//! bind-mounting `/proc/thread-self/ns/net` of a short-lived thread onto a
//! file under the daemon's own run directory (`<exec-root>/netns/<name>`),
//! never under the iproute2 netns directory, so several daemons on one machine never see each
//! other's namespaces, and never with `ip netns add` or rtnetlink's
//! `NetworkNamespace::add` (which forks a multi-threaded process).
//!
//! `setns` changes only the calling *thread*, so everything that must happen
//! inside a namespace runs on a fresh OS thread ([`Netns::run_in`]); a tokio
//! worker is never moved into another namespace.
//!
//! ```text
//!  create(path):  thread ─ unshare(CLONE_NEWNET) ─ mount --bind /proc/thread-self/ns/net path ─ exit
//!  open(path):    open(path) → fd  (kept in Netns; used for setns and IFLA_NET_NS_FD)
//!  delete(path):  umount2(path, MNT_DETACH) ─ unlink(path)   (idempotent)
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use super::error::{Error, Result};

/// The calling thread's own namespace file; unlike `/proc/self/...` it names
/// the thread, which is what `unshare`/`setns` changed.
const THREAD_SELF_NET: &str = "/proc/thread-self/ns/net";

/// A handle on a network namespace: an open fd on its nsfs file plus the
/// path it was opened from. Cheap to clone (the fd is shared).
///
/// Holding a `Netns` keeps the namespace alive even after [`Netns::delete`]
/// removed its pin; the kernel frees it when the last reference goes.
#[derive(Clone, Debug)]
pub struct Netns {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
}

impl Netns {
    /// Creates a new network namespace pinned at `path` (parent directories
    /// are created), or opens it if `path` already pins one (so a restarted
    /// daemon adopts its namespaces). `lo` starts down; see [`Netns::lo_up`].
    pub fn create(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        if Self::exists(path) {
            return Self::open(path);
        }
        pin_file(path)?;

        let target = path.to_owned();
        let pinned = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || -> Result<()> {
                // This thread exists only to own the new namespace until the
                // bind mount holds it; nothing else ever runs on it.
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|source| Error::Sys {
                    op: "unshare(CLONE_NEWNET)",
                    path: target.clone(),
                    source,
                })?;
                nix::mount::mount(
                    Some(THREAD_SELF_NET),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|source| Error::Sys {
                    op: "bind-mount netns",
                    path: target.clone(),
                    source,
                })
            })
            .map_err(|source| Error::Io {
                op: "spawn netns thread",
                path: path.to_owned(),
                source,
            })?
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        if let Err(e) = pinned {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Self::open(path)
    }

    /// Pins the namespace at `source` (another runtime's pin, or a
    /// process's `/proc/<pid>/ns/net`) at `path` too, by a bind mount, or
    /// opens `path` if it already pins one. Fails with
    /// [`Error::NotANetns`] if `source` is not a namespace; nothing is left
    /// at `path` on a failure.
    pub fn adopt(source: impl AsRef<Path>, path: impl AsRef<Path>) -> Result<Netns> {
        let (source, path) = (source.as_ref(), path.as_ref());
        if Self::exists(path) {
            return Self::open(path);
        }
        if !is_nsfs(source) {
            return Err(Error::NotANetns {
                path: source.to_owned(),
            });
        }
        pin_file(path)?;
        if let Err(e) = nix::mount::mount(
            Some(source),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = std::fs::remove_file(path);
            return Err(Error::Sys {
                op: "bind-mount netns",
                path: path.to_owned(),
                source: e,
            });
        }
        Self::open(path)
    }

    /// Whether `a` and `b` name the same namespace (nsfs device and inode);
    /// false when either cannot be read.
    pub fn same(a: impl AsRef<Path>, b: impl AsRef<Path>) -> bool {
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }

    /// Opens the namespace pinned at `path`; fails with
    /// [`Error::NotANetns`] if `path` is not an nsfs file.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        if !is_nsfs(path) {
            return Err(Error::NotANetns {
                path: path.to_owned(),
            });
        }
        Self::open_file(path)
    }

    /// Opens the network namespace of the calling thread (for a tokio worker
    /// or the main thread: the process's namespace). It is not pinned; its
    /// [`path`](Netns::path) is `/proc/thread-self/ns/net`, which is only
    /// meaningful on the thread that opened it.
    pub fn current() -> Result<Netns> {
        Self::open_file(Path::new(THREAD_SELF_NET))
    }

    /// Opens the network namespace of process `pid` (`/proc/<pid>/ns/net`).
    pub fn of_pid(pid: u32) -> Result<Netns> {
        Self::open_file(&PathBuf::from(format!("/proc/{pid}/ns/net")))
    }

    fn open_file(path: &Path) -> Result<Netns> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| Error::Io {
                op: "open netns",
                path: path.to_owned(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| Error::Io {
            op: "stat netns",
            path: path.to_owned(),
            source,
        })?;
        Ok(Netns {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                file,
                dev: meta.dev(),
                ino: meta.ino(),
            }),
        })
    }

    /// Removes the pin at `path`: lazily unmounts it (every stacked mount)
    /// and deletes the file. Missing pins and plain leftover files are fine,
    /// so this is idempotent. The namespace itself disappears once no process,
    /// socket or open handle references it.
    pub fn delete(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        // Only unmount while the path really is an nsfs mount, so a wrong
        // path never unmounts something else.
        for _ in 0..16 {
            if !is_nsfs(path) {
                break;
            }
            match nix::mount::umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(source) => {
                    return Err(Error::Sys {
                        op: "unmount netns pin",
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                op: "remove netns pin file",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// True if `path` currently pins a namespace (is an nsfs mount).
    pub fn exists(path: impl AsRef<Path>) -> bool {
        is_nsfs(path.as_ref())
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A label for logs and errors: the pin path.
    pub fn label(&self) -> String {
        self.inner.path.display().to_string()
    }

    /// The namespace's inode number (what `/proc/<pid>/ns/net` of every
    /// process inside it resolves to).
    pub fn inode(&self) -> u64 {
        self.inner.ino
    }

    /// True if both handles refer to the same namespace.
    pub fn same_as(&self, other: &Netns) -> bool {
        self.inner.dev == other.inner.dev && self.inner.ino == other.inner.ino
    }

    /// Runs `f` on a fresh OS thread that has joined this namespace, and
    /// returns its result. Sockets (and child processes) created by `f` stay
    /// in this namespace after the thread is gone. A panic in `f` is
    /// propagated to the caller.
    ///
    /// This blocks the calling thread until `f` returns; from async code call
    /// it inside `spawn_blocking` unless `f` is quick.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("netns-run".into())
                .spawn_scoped(s, || -> Result<T> {
                    nix::sched::setns(self.inner.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(
                        |source| Error::Sys {
                            op: "setns(CLONE_NEWNET)",
                            path: self.inner.path.clone(),
                            source,
                        },
                    )?;
                    Ok(f())
                })
                .map_err(|source| Error::Io {
                    op: "spawn netns thread",
                    path: self.inner.path.clone(),
                    source,
                })?;
            handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Brings the loopback interface of this namespace up (needed for
    /// anything bound to 127.0.0.0/8, e.g. the embedded DNS resolver).
    /// Synchronous: it uses a private netlink socket on a setns'd thread.
    pub fn lo_up(&self) -> Result<()> {
        self.run_in(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|source| Error::Io {
                    op: "build netlink runtime",
                    path: self.inner.path.clone(),
                    source,
                })?;
            rt.block_on(async {
                let nl = super::netlink::Netlink::open_current_labelled(self.label())?;
                nl.set_up("lo").await
            })
        })?
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.file.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.file.as_raw_fd()
    }
}

/// True if `path` is a file on nsfs (i.e. a pinned namespace).
/// Makes the file a pin is mounted on (and its directory). A leftover
/// empty file from a crash between this step and the mount is reused.
fn pin_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            op: "create netns directory",
            path: parent.to_owned(),
            source,
        })?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(path)
        .map_err(|source| Error::Io {
            op: "create netns pin file",
            path: path.to_owned(),
            source,
        })?;
    Ok(())
}

pub(crate) fn is_nsfs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// The inode of the network namespace socket `fd` lives in.
pub fn socket_netns_inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    netns_inode_by_ioctl(fd, libc::SIOCGSKNS as libc::c_ulong)
}

/// The inode of the network namespace that `request`, an ioctl taking no
/// argument and returning a namespace fd (SIOCGSKNS on a socket,
/// TUNGETDEVNETNS on a TUN/TAP), names for `fd`.
pub fn netns_inode_by_ioctl(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<u64> {
    // SAFETY: the request takes no argument and returns a new fd (or -1);
    // `fd` is valid for the call (borrowed).
    let raw = unsafe { libc::ioctl(fd.as_raw_fd(), request as _) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl just returned this fd to us and nothing else owns it.
    let nsfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    Ok(File::from(nsfd).metadata()?.ino())
}
