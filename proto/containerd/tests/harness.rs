//! The private-containerd harness cleans up after itself, also when the test
//! using it panics with a container running: no daemon, task, shim, cgroup,
//! mount, shim socket or temp dir is left behind.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use common::containerd::{
    PrivateContainerd, SHIM_SOCKET_DIR, busybox_static_installed, is_gone, mounts_under,
};

/// A root filesystem holding only the static busybox.
fn busybox_rootfs(dir: &Path) -> String {
    assert!(
        busybox_static_installed(),
        "busybox-static is not installed: run `make deps` (a container's rootfs needs a static busybox)"
    );
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).expect("symlink");
    rootfs.display().to_string()
}

#[test]
fn teardown_after_a_panic_leaves_nothing() {
    let daemon = PrivateContainerd::start("harness");
    let rootfs = busybox_rootfs(daemon.dir());
    let cgroup = format!("{}/c1", daemon.cgroup_parent());
    let (runc_root, fifo_dir) = (daemon.runc_root(), daemon.fifo_dir());
    daemon.ctr_ok(
        "weft-test",
        &[
            "run",
            "-d",
            "--rootfs",
            "--null-io",
            "--runc-root",
            runc_root.to_str().unwrap(),
            "--fifo-dir",
            fifo_dir.to_str().unwrap(),
            "--cgroup",
            &cgroup,
            &rootfs,
            "c1",
            "/bin/sleep",
            "1000",
        ],
    );
    let tasks = daemon.ctr_ok("weft-test", &["tasks", "ls"]);
    let task_pid: i32 = tasks
        .lines()
        .find_map(|l| l.strip_prefix("c1 "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no c1 task in:\n{tasks}"));

    // What exists while the container runs, to check it is gone afterwards.
    let daemon_pid = daemon.pid().expect("running") as i32;
    let shims = daemon.shim_pids();
    let shim_sockets = daemon.shim_sockets();
    let cgroups = daemon.cgroup_dirs();
    let dir = daemon.dir().to_owned();
    assert_eq!(shims.len(), 1, "one shim for one task: {shims:?}");
    assert_eq!(shim_sockets.len(), 1, "{shim_sockets:?}");
    assert!(shim_sockets[0].exists(), "{:?}", shim_sockets[0]);
    assert!(
        shim_sockets[0].starts_with(SHIM_SOCKET_DIR),
        "{shim_sockets:?}"
    );
    assert!(
        cgroups
            .iter()
            .any(|c| c.starts_with("/sys/fs/cgroup/memory")),
        "{cgroups:?}"
    );
    let procs = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/pids")
            .join(cgroup.trim_start_matches('/'))
            .join("cgroup.procs"),
    )
    .expect("pids cgroup of the task");
    assert!(
        procs.lines().any(|l| l == task_pid.to_string()),
        "task {task_pid} not in its cgroup: {procs}"
    );
    // A mount left under the temp dir (as a snapshot's would be after a crash).
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    nix::mount::mount(
        Some(Path::new(&rootfs)),
        &mnt,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");
    assert_eq!(mounts_under(&dir), [mnt]);

    let outcome = catch_unwind(AssertUnwindSafe(move || {
        let _daemon = daemon;
        panic!("a test failing with a container running");
    }));
    assert!(outcome.is_err());

    // The task's process may take a moment to be reaped by PID 1.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_gone(task_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(is_gone(task_pid), "task {task_pid} still runs");
    assert!(is_gone(daemon_pid), "containerd {daemon_pid} still runs");
    for shim in shims {
        assert!(is_gone(shim), "shim {shim} still runs");
    }
    for socket in shim_sockets {
        assert!(!socket.exists(), "{} left", socket.display());
    }
    for cgroup in cgroups {
        assert!(!cgroup.exists(), "{} left", cgroup.display());
    }
    assert_eq!(mounts_under(&dir), Vec::<std::path::PathBuf>::new());
    assert!(!dir.exists(), "{} left", dir.display());
}
