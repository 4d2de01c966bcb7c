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
//!  ApplyLb(task) ─▶ Sessions::apply(ns) ─▶ Session (libnftables context, its
//!                        │                  netlink socket made inside ns)
//!                        └─ library not loadable ─▶ `nft -j -f -` process
//! ```
//!
//! The library is loaded at run time (`dlopen`), so nothing is needed to
//! build weft; without it, writes go through the process as before. A
//! context's socket keeps its namespace alive: [`Sessions::reap`] drops the
//! contexts of namespaces no longer pinned, and every context goes with
//! its namespace's deletion ([`Sessions::forget`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::{Arc, Mutex, OnceLock};

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

/// Every call into the library, one at a time: a context is not safe to
/// share between threads, and the library keeps some state of its own
/// (its symbol tables, set up by each new context). A write takes 0.3 ms.
static CALLS: Mutex<()> = Mutex::new(());

fn calls() -> std::sync::MutexGuard<'static, ()> {
    CALLS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A libnftables context whose netlink socket was made inside one
/// namespace: whatever thread uses it, it acts there.
struct Session {
    lib: &'static Lib,
    ctx: *mut c_void,
}

// SAFETY: the context pointer is only dereferenced by libnftables, under
// [`CALLS`], one call at a time.
unsafe impl Send for Session {}
// SAFETY: as above.
unsafe impl Sync for Session {}

impl Session {
    /// A context made on a thread inside `ns`.
    fn open(lib: &'static Lib, ns: &Netns) -> Option<Session> {
        let _calls = calls();
        // SAFETY: nft_ctx_new(NFT_CTX_DEFAULT) has no preconditions.
        let ctx = ns.run_in(|| unsafe { (lib.ctx_new)(0) as usize }).ok()? as *mut c_void;
        if ctx.is_null() {
            return None;
        }
        // SAFETY: a live context, used by no one else yet.
        unsafe {
            (lib.output_set_flags)(ctx, OUTPUT_JSON);
            (lib.buffer_output)(ctx);
            (lib.buffer_error)(ctx);
        }
        Some(Session { lib, ctx })
    }

    /// Runs one JSON batch (one transaction: all or nothing); `Err` holds
    /// libnftables' message.
    fn run(&self, json: &CStr) -> std::result::Result<(), String> {
        let _calls = calls();
        let ctx = self.ctx;
        // SAFETY: a live context under the lock; `json` is NUL-terminated.
        let rc = unsafe { (self.lib.run_cmd_from_buffer)(ctx, json.as_ptr()) };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: as above; the buffer stays valid until the next call on
        // this context, and is copied before the lock goes.
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

impl Drop for Session {
    fn drop(&mut self) {
        let _calls = calls();
        // SAFETY: the last user of the context, under the lock.
        unsafe { (self.lib.ctx_free)(self.ctx) };
    }
}

/// libnftables (1.0.6, Debian 12) waits for a batch's answers with
/// select(2), whose `fd_set` holds descriptors below 1024 only: for a
/// socket numbered higher, glibc's fortified `FD_SET` aborts the whole
/// process ("bit out of range 0 - FD_SETSIZE on fd_set"). A node with some
/// 150 tasks holds that many descriptors (each task's resolver sockets,
/// watcher and context), so a context is made only while the lowest free
/// descriptor is well below 1024 (the margin covers descriptors other
/// threads open between the check and the context's socket); otherwise
/// that namespace's writes go through an `nft` process, whose descriptors
/// are its own. Contexts already made keep their low sockets.
const SELECT_SAFE_BELOW: i32 = 1024 - 64;

/// The number the next descriptor opened would get (the lowest free one).
fn lowest_free_fd() -> Option<i32> {
    use std::os::fd::AsRawFd;
    std::fs::File::open("/dev/null").ok().map(|f| f.as_raw_fd())
}

/// Whether a new context's socket would be safe for select(2) now.
fn low_descriptor_free() -> bool {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let next = lowest_free_fd();
    let ok = next.is_some_and(|fd| fd < SELECT_SAFE_BELOW);
    if !ok && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            next_descriptor = next,
            "over {SELECT_SAFE_BELOW} descriptors open: nftables writes in further task namespaces go through an nft process each (libnftables cannot use a socket numbered 1024 or more)"
        );
    }
    ok
}

/// The kept contexts, one per namespace (by its inode, which no other
/// namespace can take while the context keeps it alive).
#[derive(Default)]
pub struct Sessions {
    by_inode: Mutex<BTreeMap<u64, Arc<Session>>>,
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
    /// process when the library cannot be loaded or too many descriptors
    /// are open for a new context ([`SELECT_SAFE_BELOW`]).
    pub async fn apply(&self, ns: &Netns, ruleset: Nftables<'static>) -> Result<()> {
        let started = std::time::Instant::now();
        let Some(session) = self.session(ns) else {
            return super::nft::apply_async(ns, ruleset).await;
        };
        let opened = started.elapsed();
        let json = serde_json::to_string(&ruleset)
            .map_err(|e| e.to_string())
            .and_then(|j| CString::new(j).map_err(|e| e.to_string()))
            .map_err(|msg| failed(ns.label(), "encoding ruleset", msg))?;
        let label = ns.label();
        let r = tokio::task::spawn_blocking(move || session.run(&json))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        tracing::trace!(
            ns = %label,
            context_us = opened.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "libnftables write"
        );
        r.map_err(|msg| failed(label, "applying ruleset", msg))
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Session>>> {
        self.by_inode.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn session(&self, ns: &Netns) -> Option<Arc<Session>> {
        let lib = lib()?;
        let mut by = self.map();
        if let Some(s) = by.get(&ns.inode()) {
            return Some(s.clone());
        }
        if !low_descriptor_free() {
            return None;
        }
        let s = Arc::new(Session::open(lib, ns)?);
        by.insert(ns.inode(), s.clone());
        Some(s)
    }

    /// Drops the context of the namespace with inode `inode` (before the
    /// namespace is deleted: the context would keep it alive).
    pub fn forget(&self, inode: u64) {
        self.map().remove(&inode);
    }

    /// Keeps only the contexts of the namespaces with these inodes.
    pub fn reap(&self, live: &BTreeSet<u64>) {
        self.map().retain(|ino, _| live.contains(ino));
    }

    /// Drops every context.
    pub fn clear(&self) {
        self.map().clear();
    }

    /// How many contexts are kept.
    pub fn count(&self) -> usize {
        self.map().len()
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
