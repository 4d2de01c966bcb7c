//! nftables writes in the daemon's own process: libnftables (Debian's
//! `libnftables1`, the library the `nft` program is made of), one context
//! per network namespace, made inside it and kept.
//!
//! A task's VIP table written by an `nft -j -f -` process costs 17–20 ms of
//! wall time (4 of them the exec; most of the rest is the close of the
//! process's netlink socket, which waits for the kernel to free the rules
//! the write replaced, an RCU grace period). Through a kept context the
//! same write is one netlink transaction: 0.3 ms measured by hand, and no
//! process (issue #16: a service change on a node rewrites the table of
//! every task of the service there).
//!
//! ```text
//!  ApplyLb(task) ─▶ Sessions::apply(ns) ─job─▶ libnftables thread (its own
//!                        │                     descriptor table): the ns's
//!                        │                     context, made inside ns, runs it
//!                        └─ library not loadable, or no context ─▶ `nft -j -f -` process
//! ```
//!
//! The library is loaded at run time (`dlopen`), so nothing is needed to
//! build weft; without it, writes go through the process as before. A
//! context's socket keeps its namespace alive: [`Sessions::reap`] drops the
//! contexts of namespaces no longer pinned, and every context goes with
//! its namespace's deletion ([`Sessions::forget`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use nix::sched::CloneFlags;

use nftables::helper::NftablesError;
use nftables::schema::Nftables;

use super::error::{Error, Result};
use super::netns::Netns;

/// `NFT_CTX_OUTPUT_JSON` (nftables/libnftables.h): JSON in and out.
const OUTPUT_JSON: c_uint = 1 << 4;

/// The library's entry points used here (nftables/libnftables.h).
struct Lib {
    ctx_new: unsafe extern "C" fn(c_uint) -> *mut c_void,
    ctx_free: unsafe extern "C" fn(*mut c_void),
    output_set_flags: unsafe extern "C" fn(*mut c_void, c_uint),
    buffer_output: unsafe extern "C" fn(*mut c_void) -> c_int,
    buffer_error: unsafe extern "C" fn(*mut c_void) -> c_int,
    get_error_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
    run_cmd_from_buffer: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
}

/// The library, loaded once; `None` when it cannot be.
fn lib() -> Option<&'static Lib> {
    static LIB: OnceLock<Option<Lib>> = OnceLock::new();
    LIB.get_or_init(|| {
        let lib = load();
        if lib.is_none() {
            tracing::info!(
                "libnftables.so.1 not loadable: nftables tables in task namespaces are written by an nft process each"
            );
        }
        lib
    })
    .as_ref()
}

fn load() -> Option<Lib> {
    // SAFETY: dlopen with a constant name; the handle is never closed, so
    // the symbols stay valid for the life of the process.
    let handle = unsafe {
        libc::dlopen(
            c"libnftables.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        )
    };
    if handle.is_null() {
        return None;
    }
    let sym = |name: &CStr| {
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    // SAFETY: each symbol is cast to the type libnftables.h declares it
    // with (stable since nftables 0.9).
    unsafe {
        Some(Lib {
            ctx_new: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_uint) -> *mut c_void>(
                sym(c"nft_ctx_new")?,
            ),
            ctx_free: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_void)>(sym(
                c"nft_ctx_free",
            )?),
            output_set_flags: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void, c_uint),
            >(sym(c"nft_ctx_output_set_flags")?),
            buffer_output: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void) -> c_int,
            >(sym(c"nft_ctx_buffer_output")?),
            buffer_error: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void) -> c_int,
            >(sym(c"nft_ctx_buffer_error")?),
            get_error_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void) -> *const c_char,
            >(sym(c"nft_ctx_get_error_buffer")?),
            run_cmd_from_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
            >(sym(c"nft_run_cmd_from_buffer")?),
        })
    }
}

/// libnftables (1.0.6, Debian 12) waits for a batch's answers with
/// select(2), whose `fd_set` holds descriptors below 1024 only: for a
/// socket numbered higher, glibc's fortified `FD_SET` aborts the whole
/// process ("bit out of range 0 - FD_SETSIZE on fd_set"). A node with some
/// 150 tasks holds that many descriptors (each task's resolver sockets,
/// watcher and namespace), so the contexts live on a thread of their own
/// with a descriptor table of its own (`unshare(CLONE_FILES)`, then every
/// inherited descriptor closed in that copy): there, the contexts' sockets
/// are about all there is, and numbered from 3 up, whatever the rest of the
/// daemon holds. Before, with 250 tasks the daemon's table passed 960 and
/// the later namespaces' writes went through an `nft` process each, 18–22
/// ms a write against 1–3 ms (bench/idle.sh's trace, 2026-12-05). Past
/// [`SELECT_SAFE_BELOW`] contexts, further namespaces still fall back to
/// the process.
const SELECT_SAFE_BELOW: i32 = 1024 - 16;

/// A libnftables context whose netlink socket was made inside one
/// namespace: it acts there. Lives and dies on the contexts' thread (its
/// socket's number is one of that thread's own table).
struct Context {
    lib: &'static Lib,
    ctx: *mut c_void,
}

impl Context {
    /// A context made in the namespace at `path` (whose inode must be
    /// `inode`), returning this thread to `home` after; `None` when the
    /// namespace cannot be entered or the library gives no context.
    fn open(lib: &'static Lib, path: &Path, inode: u64, home: &std::fs::File) -> Option<Context> {
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::File::open(path).ok()?;
        if ns.metadata().ok()?.ino() != inode {
            return None;
        }
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).ok()?;
        // SAFETY: nft_ctx_new(NFT_CTX_DEFAULT) has no preconditions.
        let ctx = unsafe { (lib.ctx_new)(0) };
        if let Err(e) = nix::sched::setns(home, CloneFlags::CLONE_NEWNET) {
            // Never expected; a thread left in a task's namespace would
            // make every later context there.
            panic!("libnftables thread cannot return to its namespace: {e}");
        }
        if ctx.is_null() {
            return None;
        }
        // SAFETY: a live context, used by no one else yet.
        unsafe {
            (lib.output_set_flags)(ctx, OUTPUT_JSON);
            (lib.buffer_output)(ctx);
            (lib.buffer_error)(ctx);
        }
        Some(Context { lib, ctx })
    }

    /// Runs one JSON batch (one transaction: all or nothing); `Err` holds
    /// libnftables' message.
    fn run(&self, json: &CStr) -> std::result::Result<(), String> {
        let ctx = self.ctx;
        // SAFETY: a live context, on its own thread; `json` is NUL-terminated.
        let rc = unsafe { (self.lib.run_cmd_from_buffer)(ctx, json.as_ptr()) };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: as above; the buffer stays valid until the next call on
        // this context, and is copied at once.
        let msg = unsafe {
            let p = (self.lib.get_error_buffer)(ctx);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().trim().to_owned()
            }
        };
        Err(if msg.is_empty() {
            format!("libnftables failed ({rc})")
        } else {
            msg
        })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the last user of the context, on its thread.
        unsafe { (self.lib.ctx_free)(self.ctx) };
    }
}

/// The number the next descriptor opened on this thread would get.
fn lowest_free_fd() -> Option<i32> {
    use std::os::fd::AsRawFd;
    std::fs::File::open("/dev/null").ok().map(|f| f.as_raw_fd())
}

/// What the contexts' thread is asked.
enum Job {
    /// Run `json` in the namespace at `path` (inode `inode`).
    Apply {
        path: PathBuf,
        inode: u64,
        json: CString,
        reply: std::sync::mpsc::SyncSender<Outcome>,
    },
    /// Drop some contexts ([`Which`]); then answer.
    Drop {
        which: Which,
        done: std::sync::mpsc::SyncSender<()>,
    },
}

/// The contexts a [`Job::Drop`] drops.
enum Which {
    /// Those of these inodes.
    These(BTreeSet<u64>),
    /// All but those of these inodes.
    AllBut(BTreeSet<u64>),
}

enum Outcome {
    Ran(std::result::Result<(), String>),
    /// No context for that namespace: write through the process.
    NoContext,
}

/// The contexts' thread: a descriptor table of its own, then one job at a
/// time until the [`Sessions`] goes. Nothing here may use a descriptor of
/// the process's table (a tokio waker, a log file): the same numbers mean
/// other files here, or none. It uses its own files, std channels (futexes)
/// and stdout and stderr, which the copy keeps.
fn serve(lib: &'static Lib, jobs: std::sync::mpsc::Receiver<Job>, count: Arc<AtomicUsize>) {
    // Without a table of its own (or with one still holding the daemon's
    // files: close_range failed), the thread ends at once and its copy of
    // the table with it; every write then goes through the process.
    let home = match private_table() {
        Ok(home) => home,
        Err(e) => {
            tracing::warn!(error = %e, "no descriptor table of its own for libnftables: nftables tables in task namespaces are written by an nft process each");
            return;
        }
    };
    let mut contexts: BTreeMap<u64, Context> = BTreeMap::new();
    let mut warned = false;
    for job in jobs {
        match job {
            Job::Apply {
                path,
                inode,
                json,
                reply,
            } => {
                if !contexts.contains_key(&inode) {
                    let next = lowest_free_fd();
                    if next.is_none_or(|fd| fd >= SELECT_SAFE_BELOW) {
                        if !std::mem::replace(&mut warned, true) {
                            tracing::warn!(
                                contexts = contexts.len(),
                                next_descriptor = next,
                                "libnftables contexts fill their thread's descriptors below 1024: nftables writes in further task namespaces go through an nft process each"
                            );
                        }
                        let _ = reply.send(Outcome::NoContext);
                        continue;
                    }
                    match Context::open(lib, &path, inode, &home) {
                        Some(c) => {
                            contexts.insert(inode, c);
                        }
                        None => {
                            let _ = reply.send(Outcome::NoContext);
                            continue;
                        }
                    }
                }
                let r = contexts[&inode].run(&json);
                count.store(contexts.len(), Ordering::Relaxed);
                let _ = reply.send(Outcome::Ran(r));
            }
            Job::Drop { which, done } => {
                match &which {
                    Which::These(gone) => contexts.retain(|ino, _| !gone.contains(ino)),
                    Which::AllBut(live) => contexts.retain(|ino, _| live.contains(ino)),
                }
                count.store(contexts.len(), Ordering::Relaxed);
                let _ = done.send(());
            }
        }
    }
}

/// Gives this thread a copy of the process's descriptor table and closes,
/// in the copy, all but stdin, stdout and stderr (the daemon's own table is
/// untouched); returns this thread's network namespace, to come back to.
fn private_table() -> std::io::Result<std::fs::File> {
    nix::sched::unshare(CloneFlags::CLONE_FILES).map_err(std::io::Error::from)?;
    // SAFETY: close_range(2) on this thread's private table only.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::fs::File::open("/proc/thread-self/ns/net")
}

/// The kept contexts, one per namespace (by its inode, which no other
/// namespace can take while the context keeps it alive), on a thread of
/// their own started at first use.
#[derive(Default)]
pub struct Sessions {
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    count: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("namespaces", &self.count())
            .finish()
    }
}

impl Sessions {
    /// Applies `ruleset` in `ns` as one transaction: through the
    /// namespace's kept context (made on first use), or through an `nft`
    /// process when the library cannot be loaded or its thread holds too
    /// many contexts for another ([`SELECT_SAFE_BELOW`]).
    pub async fn apply(&self, ns: &Netns, ruleset: Nftables<'static>) -> Result<()> {
        let started = std::time::Instant::now();
        let Some(jobs) = self.jobs() else {
            return super::nft::apply_async(ns, ruleset).await;
        };
        let json = serde_json::to_string(&ruleset)
            .map_err(|e| e.to_string())
            .and_then(|j| CString::new(j).map_err(|e| e.to_string()))
            .map_err(|msg| failed(ns.label(), "encoding ruleset", msg))?;
        // The answer comes through a std channel, waited for on the
        // blocking pool: the contexts' thread must not wake a tokio task
        // itself, which writes to the runtime's descriptors, numbers its
        // own table does not have.
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let sent = jobs.send(Job::Apply {
            path: ns.path().to_owned(),
            inode: ns.inode(),
            json,
            reply,
        });
        let outcome = match sent {
            Ok(()) => tokio::task::spawn_blocking(move || answer.recv())
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(Outcome::NoContext),
            Err(_) => Outcome::NoContext,
        };
        tracing::trace!(
            ns = %ns.label(),
            us = started.elapsed().as_micros() as u64,
            in_process = matches!(outcome, Outcome::Ran(_)),
            "libnftables write"
        );
        match outcome {
            Outcome::Ran(r) => r.map_err(|msg| failed(ns.label(), "applying ruleset", msg)),
            Outcome::NoContext => super::nft::apply_async(ns, ruleset).await,
        }
    }

    /// The contexts' thread's queue, the thread started on first use;
    /// `None` when the library cannot be loaded or no thread starts.
    fn jobs(&self) -> Option<std::sync::mpsc::Sender<Job>> {
        let lib = lib()?;
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.is_none() {
            let (tx, rx) = std::sync::mpsc::channel();
            let count = self.count.clone();
            std::thread::Builder::new()
                .name("libnftables".into())
                .spawn(move || serve(lib, rx, count))
                .map_err(|e| tracing::warn!(error = %e, "cannot start the libnftables thread"))
                .ok()?;
            *jobs = Some(tx);
        }
        jobs.clone()
    }

    /// Drops contexts and waits until they are gone (their sockets closed,
    /// so their namespaces may go).
    fn drop_contexts(&self, which: Which) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(jobs) = jobs else { return };
        let (done, gone) = std::sync::mpsc::sync_channel(1);
        if jobs.send(Job::Drop { which, done }).is_ok() {
            let _ = gone.recv();
        }
    }

    /// Drops the context of the namespace with inode `inode` (before the
    /// namespace is deleted: the context would keep it alive).
    pub fn forget(&self, inode: u64) {
        self.drop_contexts(Which::These(BTreeSet::from([inode])));
    }

    /// Keeps only the contexts of the namespaces with these inodes.
    pub fn reap(&self, live: &BTreeSet<u64>) {
        self.drop_contexts(Which::AllBut(live.clone()));
    }

    /// Drops every context.
    pub fn clear(&self) {
        self.drop_contexts(Which::AllBut(BTreeSet::new()));
    }

    /// How many contexts are kept.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

fn failed(ns: String, hint: &str, msg: String) -> Error {
    Error::Nft {
        ns,
        source: Box::new(NftablesError::NftFailed {
            program: "libnftables".into(),
            hint: hint.into(),
            stdout: String::new(),
            stderr: msg,
        }),
    }
}
