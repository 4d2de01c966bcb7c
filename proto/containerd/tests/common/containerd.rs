//! A private containerd for one test: its own root, state, sockets, runc root
//! and cgroup parent, all under one temp dir, spawned as a child process of
//! the test and torn down on drop, also when the test panics.
//!
//! ```text
//!   $T/config.toml        version 2; CRI and the unusable snapshotters off
//!   $T/root  $T/state     containerd's data (content, snapshots, bundles)
//!   $T/containerd.sock    gRPC (+ .ttrpc); the only address the daemon listens on
//!   $T/runc  $T/fifo      for clients to pass as runc root and FIFO dir
//!   /sys/fs/cgroup/*/weft-test-<name>-<pid>-<n>   cgroup parent for the test's containers
//! ```
//!
//! The one path outside `$T` is not ours to choose: containerd 1.6 puts each
//! shim's socket at `/run/containerd/s/<sha256("$SOCK/<ns>/<id>")>`
//! (hard-coded; neither the gRPC address nor the state dir moves it). The
//! name depends on our socket path, so tests never collide; teardown removes
//! the ones of this daemon's tasks.
//!
//! Teardown ([`Drop`]) keeps going after a failure and reports every error:
//! 1. with `ctr`, in every namespace: SIGKILL each task, delete it, delete
//!    each container (which removes its snapshot);
//! 2. SIGTERM containerd, SIGKILL after 10 s;
//! 3. SIGKILL what is left in the cgroup parent, then every shim of this
//!    daemon (found by `-address $SOCK` in /proc/*/cmdline), rmdir the cgroups;
//! 4. detach every mount under `$T`, remove the shim sockets, remove `$T`.
//!
//! `ctr` is also the tests' independent view of containerd (STYLE rule 9).
//! Missing containerd or root fails the test with what to do; it never skips.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

/// containerd's hard-coded directory for shim sockets (1.6: `runtime/v2/shim/util_unix.go`).
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// The cgroup v1 hierarchies and the v2 mount on this kind of machine.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long containerd may take to answer after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long any one `ctr` call may take during teardown.
const CTR_TIMEOUT: &str = "10s";

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// One private containerd daemon.
pub struct PrivateContainerd {
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    socket: PathBuf,
    cgroup_parent: String,
}

impl PrivateContainerd {
    /// Spawns containerd with everything under a fresh temp dir and waits
    /// until it answers `Version`. Fails the test (with what to do) when not
    /// root or when containerd is not installed. `name` goes into the temp
    /// dir's and the cgroup parent's names.
    pub fn start(name: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "containerd tests need root (containerd and runc run as root)"
        );
        for tool in ["containerd", "ctr", "containerd-shim-runc-v2", "runc"] {
            assert!(
                find_on_path(tool).is_some(),
                "{tool} is not installed: run `make deps` (it installs containerd, runc and \
                 busybox-static); these tests need a real containerd and are not skipped"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("weft-ctrd-{name}-"))
            .tempdir()
            .expect("temp dir");
        let t = dir.path();
        for sub in ["root", "state", "runc", "fifo", "opt"] {
            std::fs::create_dir(t.join(sub)).expect("mkdir");
        }
        // containerd refuses nothing here, but the root must not be world-readable.
        std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let socket = t.join("containerd.sock");
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let cgroup_parent = format!("/weft-test-{name}-{}-{n}", std::process::id());
        std::fs::write(t.join("config.toml"), config(t, &socket)).expect("config");
        let log = std::fs::File::create(t.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(t.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        // From here on, a panic tears down through Drop.
        let mut daemon = Self {
            dir: Some(dir),
            child: Some(child),
            socket,
            cgroup_parent,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if self.ctr("default", &["version"]).status.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "containerd exited ({status}) before answering:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "containerd did not answer within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The runc root to give runc (instead of its /run/containerd/runc default).
    pub fn runc_root(&self) -> PathBuf {
        self.dir().join("runc")
    }

    /// A directory for task FIFOs (instead of /run/containerd/fifo).
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir().join("fifo")
    }

    /// The cgroup parent the test's containers go under (same path in every
    /// hierarchy), e.g. `--cgroup <parent>/c1` for `ctr run`.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// containerd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `ctr -a SOCK -n NAMESPACE ARGS` (bounded by a timeout).
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg(CTR_TIMEOUT)
            .arg("ctr")
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(namespace)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// [`Self::ctr`], failing the test unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        let out = self.ctr(namespace, args);
        assert!(
            out.status.success(),
            "ctr -n {namespace} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// Processes of this daemon's shims: `containerd-shim-runc-v2 … -address SOCK`.
    pub fn shim_pids(&self) -> Vec<i32> {
        let want = self.socket.as_os_str().as_encoded_bytes();
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.windows(2).any(|w| w[0] == b"-address" && w[1] == want) {
                pids.push(pid);
            }
        }
        pids
    }

    /// The shim socket paths of the tasks this daemon has bundles for:
    /// `/run/containerd/s/<sha256("$SOCK/<ns>/<id>")>`.
    pub fn shim_sockets(&self) -> Vec<PathBuf> {
        let bundles = self.dir().join("state/io.containerd.runtime.v2.task");
        let mut sockets = Vec::new();
        for ns in read_names(&bundles) {
            for id in read_names(&bundles.join(&ns)) {
                let key = self.socket.join(&ns).join(&id);
                let hash = Sha256::digest(key.as_os_str().as_encoded_bytes());
                sockets.push(Path::new(SHIM_SOCKET_DIR).join(hex::encode(hash)));
            }
        }
        sockets
    }

    /// This daemon's cgroup parent in every hierarchy where it exists.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        read_names(Path::new(CGROUP_ROOT))
            .into_iter()
            .map(|h| {
                Path::new(CGROUP_ROOT)
                    .join(h)
                    .join(self.cgroup_parent.trim_start_matches('/'))
            })
            .filter(|d| d.is_dir())
            .collect()
    }

    /// A cgroup v1 file of container `id` under this daemon's cgroup
    /// parent (e.g. `memory`, `memory.limit_in_bytes`), trimmed: the
    /// kernel's view of a container's limits. Panics when it is missing.
    pub fn cgroup_v1_file(&self, controller: &str, id: &str, file: &str) -> String {
        let path = Path::new(CGROUP_ROOT)
            .join(controller)
            .join(self.cgroup_parent.trim_start_matches('/'))
            .join(id)
            .join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// Mount points at or below the temp dir, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(self.dir())
    }

    /// Stops containerd: SIGTERM, then SIGKILL after 10 s. Tasks and shims
    /// are left running (as when a node's containerd restarts).
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("containerd ignored SIGTERM for 10 s: killed".into());
                }
            }
        }
    }

    /// Removes every task and container in every namespace, through `ctr`.
    fn remove_containers(&self, errors: &mut Vec<String>) {
        let out = self.ctr("default", &["namespaces", "ls", "-q"]);
        if !out.status.success() {
            errors.push(format!("ctr namespaces ls: {}", stderr(&out)));
            return;
        }
        for ns in String::from_utf8_lossy(&out.stdout).lines() {
            let tasks = self.ctr_lines(ns, &["tasks", "ls", "-q"]);
            for task in &tasks {
                // Already-stopped tasks refuse the signal; deleting is what counts.
                let _ = self.ctr(ns, &["tasks", "kill", "-s", "SIGKILL", task]);
            }
            for task in &tasks {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let out = self.ctr(ns, &["tasks", "delete", task]);
                    if out.status.success() {
                        break;
                    }
                    if Instant::now() > deadline {
                        errors.push(format!("ctr -n {ns} tasks delete {task}: {}", stderr(&out)));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            for container in self.ctr_lines(ns, &["containers", "ls", "-q"]) {
                let out = self.ctr(ns, &["containers", "delete", &container]);
                if !out.status.success() {
                    errors.push(format!(
                        "ctr -n {ns} containers delete {container}: {}",
                        stderr(&out)
                    ));
                }
            }
        }
    }

    fn ctr_lines(&self, namespace: &str, args: &[&str]) -> Vec<String> {
        let out = self.ctr(namespace, args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Kills what is left in the cgroup parent, then the shims, then removes
    /// the cgroups (children first).
    fn kill_and_remove_cgroups(&self, shims: &[i32], errors: &mut Vec<String>) {
        let dirs = self.cgroup_dirs();
        for dir in &dirs {
            for pid in cgroup_procs(dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for &pid in shims {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for dir in dirs {
            // A killed process leaves its cgroup a moment later.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cgroup_procs(&dir).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut tree: Vec<PathBuf> = walk_dirs(&dir);
            tree.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for d in tree {
                if let Err(e) = std::fs::remove_dir(&d) {
                    errors.push(format!("rmdir {}: {e}", d.display()));
                }
            }
        }
    }

    /// The full teardown; returns every error met.
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.dir.is_none() {
            return errors;
        }
        let shim_sockets = self.shim_sockets();
        if self.child.is_some() {
            self.remove_containers(&mut errors);
        }
        if let Err(e) = self.stop() {
            errors.push(e);
        }
        let shims = self.shim_pids();
        self.kill_and_remove_cgroups(&shims, &mut errors);
        for mount in self.mounts() {
            if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                errors.push(format!("umount {}: {e}", mount.display()));
            }
        }
        for socket in shim_sockets {
            match std::fs::remove_file(&socket) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    errors.push(format!("rm {}: {e}", socket.display()))
                }
                _ => {}
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(e) = dir.close() {
                errors.push(format!("rm -rf {}: {e}", path.display()));
            }
        }
        errors
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let errors = self.teardown();
        if errors.is_empty() {
            return;
        }
        let report = format!(
            "containerd teardown left work undone:\n  {}",
            errors.join("\n  ")
        );
        if std::thread::panicking() {
            eprintln!("{report}");
        } else {
            panic!("{report}");
        }
    }
}

/// The daemon's config: every path under `t`, CRI and the snapshotters that
/// cannot work here off (their init errors only add noise), no debug or
/// metrics listener.
fn config(t: &Path, socket: &Path) -> String {
    let p = |sub: &str| t.join(sub).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
        root = p("root"),
        state = p("state"),
        opt = p("opt"),
        socket = socket.display(),
    )
}

/// Whether Debian's busybox-static is installed: a container's rootfs needs
/// a static busybox, and an unowned or dynamic one also answers
/// `command -v busybox`, so the package is asked for by name.
pub fn busybox_static_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "busybox-static"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// `tool` in PATH (or /usr/sbin, where Debian puts some daemons).
pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    mounts
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether process `pid` is gone (no such process, or a zombie).
pub fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Every pid in `dir`'s cgroup and its descendants.
fn cgroup_procs(dir: &Path) -> Vec<i32> {
    walk_dirs(dir)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// `dir` and every directory below it.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// The names of the entries of `dir` (none if it cannot be read).
fn read_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}
