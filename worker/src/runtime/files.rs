//! The on-disk state of a task, shared by the runtime and the shim:
//!
//! ```text
//!  <root>/tasks/<id>/spec.json   TaskSpec           written by the runtime before the shim starts
//!                    pid         PidFile (JSON)     written by the shim once the task runs
//!                    exit        ExitFile (JSON)    written by the shim when the task ended (or failed to start)
//!                    log         task stdout+stderr, appended
//!                    shim.log    the shim's own stderr
//! ```
//!
//! `spec.json`, `pid` and `exit` are written crash-safe (temporary name,
//! fsync, rename, fsync of the directory), so a reader sees all of a file
//! or none of it, after a crash too. A pid is only trusted together with the
//! process start time recorded next to it (pids are reused).

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{Error, Result, TaskState, TaskStatus};

/// File names inside a task directory.
pub(crate) const SPEC: &str = "spec.json";
pub(crate) const PID: &str = "pid";
pub(crate) const EXIT: &str = "exit";
pub(crate) const LOG: &str = "log";
pub(crate) const SHIM_LOG: &str = "shim.log";

/// What the shim records once the task's process runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PidFile {
    /// The task's pid (its process group and session id too).
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: with `pid`, identifies the process.
    pub start_time: u64,
    /// The shim's pid.
    pub shim_pid: i32,
    /// The shim's start time, as above.
    pub shim_start_time: u64,
    /// Wall-clock start of the task.
    pub started_at: SystemTime,
    /// The kernel's boot id when the task started: pids and start times
    /// from an earlier boot (a persistent exec-root) mean nothing.
    #[serde(default)]
    pub boot_id: String,
}

/// What the shim records when the task is over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExitFile {
    /// Exit code, if it exited normally.
    pub code: Option<i32>,
    /// Killing signal, if any.
    pub signal: Option<i32>,
    /// Set instead of code/signal when the task could not be started.
    pub error: Option<String>,
    /// Wall-clock end.
    pub finished_at: SystemTime,
    /// Killed for want of memory (a container whose cgroup counted an
    /// OOM kill); absent in files from before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom: bool,
}

impl ExitFile {
    pub(crate) fn state(&self) -> TaskState {
        match &self.error {
            Some(error) => TaskState::Failed {
                error: error.clone(),
            },
            None => TaskState::Exited {
                code: self.code,
                signal: self.signal,
                oom: self.oom,
            },
        }
    }
}

/// Reads a JSON file; `Ok(None)` if it does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                op: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Writes a JSON file crash-safe and root-only
/// ([`weft_overlay::durable::write_atomic`]): the spec holds the task's
/// environment, and a restarted daemon adopts tasks by these files.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    weft_overlay::durable::write_atomic(path, &bytes, 0o600).map_err(|e| Error::Io {
        op: e.step.as_str(),
        path: e.path,
        source: e.source,
    })
}

/// Field 22 (`starttime`, clock ticks since boot) of `/proc/<pid>/stat`,
/// and whether the process is a zombie. `None` if there is no such process.
pub(crate) fn proc_stat(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after the last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    // `rest` starts at field 3 (state); starttime is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

/// True if `pid` is alive (not a zombie) and is the process that started at
/// `start_time`.
pub(crate) fn is_alive(pid: i32, start_time: u64) -> bool {
    pid > 0 && proc_stat(pid).is_some_and(|(s, zombie)| s == start_time && !zombie)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty if unreadable.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl PidFile {
    /// True if the task's process is alive and is the one this file names.
    pub(crate) fn task_alive(&self) -> bool {
        self.this_boot() && is_alive(self.pid, self.start_time)
    }

    /// True if the task's shim is alive and is the one this file names.
    pub(crate) fn shim_alive(&self) -> bool {
        self.this_boot() && is_alive(self.shim_pid, self.shim_start_time)
    }

    fn this_boot(&self) -> bool {
        self.boot_id.is_empty() || self.boot_id == boot_id()
    }
}

/// The inode of `/proc/<pid>/ns/net` (the namespace the process is in).
pub(crate) fn netns_inode_of(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The namespace pinned at `pin` (stat of an nsfs bind mount gives the
/// namespace's inode); `None` if the pin is gone.
pub(crate) fn netns_inode_of_pin(pin: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    if !weft_overlay::linux::Netns::exists(pin) {
        return None;
    }
    std::fs::metadata(pin).ok().map(|m| m.ino())
}

/// What the files of a task directory say, checked against `/proc`.
#[derive(Debug)]
pub(crate) enum Observed {
    /// The task ended (`exit` exists).
    Finished(TaskStatus),
    /// The task's process is alive and is the one the pid file names.
    Running(PidFile),
    /// The task ran, its process is gone, and there is no `exit` file. If the
    /// shim is still alive it is about to write one.
    Vanished(PidFile),
    /// Neither `pid` nor `exit`: the shim never got the task running.
    NeverStarted,
}

/// Reads `dir`'s pid and exit files and checks the pid's identity (start
/// time, and netns inode when the pin still exists).
pub(crate) fn observe(id: &str, dir: &Path, netns_pin: Option<&Path>) -> Result<Observed> {
    let pid: Option<PidFile> = read_json(&dir.join(PID))?;
    if let Some(exit) = read_json::<ExitFile>(&dir.join(EXIT))? {
        return Ok(Observed::Finished(TaskStatus {
            id: id.to_owned(),
            state: exit.state(),
            started_at: pid.as_ref().map(|p| p.started_at),
            finished_at: Some(exit.finished_at),
        }));
    }
    let Some(pid) = pid else {
        return Ok(Observed::NeverStarted);
    };
    let same_netns = match netns_pin.and_then(netns_inode_of_pin) {
        Some(want) => netns_inode_of(pid.pid) == Some(want),
        None => true,
    };
    if pid.task_alive() && same_netns {
        Ok(Observed::Running(pid))
    } else {
        Ok(Observed::Vanished(pid))
    }
}
