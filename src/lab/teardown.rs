//! Removing every trace of a lab, also after a crash or a `kill -9`:
//!
//! ```text
//!  1. kill   every process of the lab (procs::select_lab_processes: command
//!            line names the lab dir, lives in a pinned netns or a recorded
//!            daemon namespace, shares a daemon's mount namespace, or
//!            descends from one), SIGKILL, wait until gone; repeat while new
//!            ones show up
//!  2. pins   cleanup_run_dir: unmount and delete every namespace pin
//!  3. mounts unmount whatever else is mounted under the lab dir, deepest
//!            first, including the dir's own shared bind mount
//!  4. files  only when nothing is mounted there any more: rm -r the dir
//! ```
//!
//! The daemons run in mount namespaces of their own that keep the lab
//! directory a shared mount: their namespace pins are seen (and unmounted
//! by step 2) in this namespace too; other mounts of theirs die with their
//! processes, and links die with the network namespaces. Their containers
//! are removed from containerd afterwards (`containers::purge`, by the
//! caller, which reads the nodes before this removes the state). Every step
//! runs even if an earlier one failed, and every error is reported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MntFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use weft_overlay::linux::topology::cleanup_run_dir;

use super::procs::{self, LabMarks, NsId};
use super::spec::Layout;
use super::state::LabState;

/// How long to wait for killed processes to go.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Rounds of "find, kill, wait" before giving up on processes that keep
/// appearing.
const KILL_ROUNDS: usize = 5;

/// What a teardown did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Processes killed.
    pub killed: BTreeSet<i32>,
    /// Namespace pins removed.
    pub pins: usize,
    /// Other mounts removed.
    pub unmounted: Vec<PathBuf>,
    /// Whether the lab directory existed (and was removed, if no errors).
    pub existed: bool,
    /// Every error met on the way.
    pub errors: Vec<String>,
}

/// Removes lab `layout` entirely. Safe to run on a missing or half-built
/// lab, and again after a failure.
pub fn destroy(layout: &Layout) -> Outcome {
    let dir = layout.dir();
    let mut out = Outcome {
        existed: std::fs::symlink_metadata(dir).is_ok(),
        ..Outcome::default()
    };
    // The recorded daemon namespaces find tasks whose daemon and shim are
    // gone; a broken state file must not stop the teardown.
    let daemon_ns: BTreeSet<(NsId, NsId)> = match LabState::load(layout) {
        Ok(Some(state)) => state
            .nodes
            .iter()
            .filter_map(|n| Some((n.mnt_ns?, n.uts_ns?)))
            .collect(),
        Ok(None) => BTreeSet::new(),
        Err(e) => {
            out.errors.push(format!("{e:#} (tearing down anyway)"));
            BTreeSet::new()
        }
    };
    kill_lab_processes(layout, &daemon_ns, &mut out);

    if out.existed {
        let report = cleanup_run_dir(dir);
        out.pins = report.removed.len();
        out.killed.extend(report.killed);
        out.errors
            .extend(report.errors.iter().map(|e| format!("namespace pins: {e}")));
        unmount_all_under(dir, &mut out);
        remove_dir(dir, &mut out);
    }
    out
}

fn foreign_mount_namespaces() -> BTreeSet<NsId> {
    ["/proc/self/ns/mnt", "/proc/1/ns/mnt"]
        .into_iter()
        .filter_map(|p| procs::ns_id(Path::new(p)))
        .collect()
}

fn pinned_netns(dir: &Path) -> BTreeSet<NsId> {
    procs::mounts_under(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.fstype == "nsfs")
        .filter_map(|m| procs::ns_id(&m.mount_point))
        .collect()
}

fn kill_lab_processes(layout: &Layout, daemon_ns: &BTreeSet<(NsId, NsId)>, out: &mut Outcome) {
    let marker = layout.marker();
    for _ in 0..KILL_ROUNDS {
        let all = procs::scan();
        let marks = LabMarks {
            cmdline: &marker,
            netns: pinned_netns(layout.dir()),
            daemon_ns: daemon_ns.clone(),
            foreign_mnt: foreign_mount_namespaces(),
            protected: procs::self_and_ancestors(&all),
        };
        let victims = procs::select_lab_processes(&all, &marks);
        if victims.is_empty() {
            return;
        }
        for &pid in &victims {
            match nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) => {
                    out.killed.insert(pid);
                }
                Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => out.errors.push(format!("cannot kill process {pid}: {e}")),
            }
        }
        // Gone, or a zombie: a zombie holds no namespace or mount any more.
        let deadline = Instant::now() + KILL_WAIT;
        while victims.iter().any(|&p| procs::alive(p)) {
            if Instant::now() >= deadline {
                let left: Vec<_> = victims.iter().filter(|&&p| procs::alive(p)).collect();
                out.errors.push(format!(
                    "processes {left:?} survived SIGKILL for {KILL_WAIT:?}"
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    out.errors.push(format!(
        "processes of lab {} kept appearing after {KILL_ROUNDS} rounds of SIGKILL",
        layout.dir().display()
    ));
}

fn unmount_all_under(dir: &Path, out: &mut Outcome) {
    // Stacked mounts need several passes; each pass unmounts the top ones.
    for _ in 0..16 {
        let mounts = match procs::mounts_under(dir) {
            Ok(m) => m,
            Err(e) => {
                out.errors.push(format!("cannot read the mount table: {e}"));
                return;
            }
        };
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            match nix::mount::umount2(
                &m.mount_point,
                MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
            ) {
                Ok(()) => out.unmounted.push(m.mount_point),
                // Already gone (a parent's detach took it along).
                Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => out
                    .errors
                    .push(format!("cannot unmount {}: {e}", m.mount_point.display())),
            }
        }
    }
}

fn remove_dir(dir: &Path, out: &mut Outcome) {
    // Deleting below a live mount would delete the mounted filesystem's
    // files: only go ahead when the mount table shows nothing there.
    match procs::mounts_under(dir) {
        Ok(m) if m.is_empty() => {}
        Ok(m) => {
            out.errors.push(format!(
                "not removing {}: still mounted there: {}",
                dir.display(),
                m.iter()
                    .map(|m| m.mount_point.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return;
        }
        Err(e) => {
            out.errors.push(format!(
                "not removing {}: cannot read the mount table: {e}",
                dir.display()
            ));
            return;
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => out
            .errors
            .push(format!("cannot remove {}: {e}", dir.display())),
    }
}
