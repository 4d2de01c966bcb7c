//! Crash-safe replacement of the small files a node reads back after a
//! restart (its identity, the last node config, the WireGuard key, the
//! tasks' `resolv.conf`).
//!
//! ```text
//!  write_atomic(path, data, mode)
//!    1 remove <path>.tmp           left by an earlier crash (it may have another mode)
//!    2 create <path>.tmp           O_EXCL, then fchmod to exactly `mode` (the umask does not apply)
//!    3 write data
//!    4 fsync <path>.tmp            the bytes are on disk before any name points at them
//!    5 rename <path>.tmp -> path   readers see all of the old file or all of the new one
//!    6 fsync the directory         the rename itself is on disk before we say "written"
//! ```
//!
//! A crash before 5 leaves the old file and a stray `<path>.tmp` that no
//! reader opens and the next write of `path` removes (step 1); a crash
//! between 5 and 6 leaves the old file or the new one. Without step 4 a
//! crash after the rename could leave `path` empty (the rename reached the
//! disk before the data); without step 6, "written" could be forgotten.
//!
//! One writer per path: the temporary name is fixed (so the next write
//! finds a crash's leftover), so two concurrent writes of one path would
//! share it.
//!
//! This lives in the overlay crate because it is the one crate both the
//! worker and the data plane depend on.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A step of [`write_atomic`] (and of [`write_new`], its steps 2 to 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Removing the temporary file an earlier crash left.
    RemoveStale,
    /// Creating the new file with its mode.
    Create,
    /// Writing its bytes.
    Write,
    /// Fsyncing it.
    SyncFile,
    /// Renaming it over the target.
    Rename,
    /// Fsyncing the directory.
    SyncDir,
}

impl Step {
    /// What the step does, as the start of an error message about a path.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::RemoveStale => "remove the stale temporary file of",
            Step::Create => "create a temporary file for",
            Step::Write => "write",
            Step::SyncFile => "fsync",
            Step::Rename => "rename into place",
            Step::SyncDir => "fsync the directory of",
        }
    }
}

/// A write that failed, with the step and the file it was for.
#[derive(Debug, thiserror::Error)]
#[error("{} {}: {source}", step.as_str(), path.display())]
pub struct WriteError {
    /// The step that failed.
    pub step: Step,
    /// The file being written (the target, not its temporary name).
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// The temporary name [`write_atomic`] writes `path` under before the
/// rename: `<file name>.tmp` in the same directory (a rename only replaces
/// atomically within one file system).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `data`, mode exactly `mode`, so that after a crash
/// at any point `path` holds all of the old content or all of the new
/// (module docs). The directory must exist.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    write_until(path, data, mode, None)
}

/// Creates `path` (which must not exist) with `data`, mode exactly `mode`,
/// and fsyncs it; the caller makes the name durable (fsync of the
/// directory) when it needs to. For files in a directory nothing refers to
/// yet, where a rename would add nothing.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    create_write_sync(path, data, mode, None).map(drop)
}

/// Fsyncs a directory, so the creations, renames and removals in it so far
/// survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Steps 2 to 4. `crash_after` (tests only pass one) stops right after
/// that step, as a crash there would: no clean-up, `Ok(false)`.
fn create_write_sync(
    path: &Path,
    data: &[u8],
    mode: u32,
    crash_after: Option<Step>,
) -> Result<bool, WriteError> {
    let err = |step| {
        move |source| WriteError {
            step,
            path: path.to_owned(),
            source,
        }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err(Step::Create))?;
    // The umask narrowed the mode at creation; some files (the tasks'
    // resolv.conf) must be wider than the daemon's umask allows.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err(Step::Create))?;
    if crash_after == Some(Step::Create) {
        return Ok(false);
    }
    f.write_all(data).map_err(err(Step::Write))?;
    if crash_after == Some(Step::Write) {
        return Ok(false);
    }
    f.sync_all().map_err(err(Step::SyncFile))?;
    Ok(crash_after != Some(Step::SyncFile))
}

/// [`write_atomic`]; `crash_after` as in [`create_write_sync`].
fn write_until(
    path: &Path,
    data: &[u8],
    mode: u32,
    crash_after: Option<Step>,
) -> Result<(), WriteError> {
    let err = |step| {
        move |source| WriteError {
            step,
            path: path.to_owned(),
            source,
        }
    };
    let tmp = temp_path(path);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(Step::RemoveStale)(e)),
    }
    if crash_after == Some(Step::RemoveStale) {
        return Ok(());
    }
    let renamed = create_write_sync(&tmp, data, mode, crash_after).and_then(|done| {
        if done {
            std::fs::rename(&tmp, path).map_err(err(Step::Rename))?;
        }
        Ok(done)
    });
    match renamed {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) => {
            // Best effort: the next write removes it anyway.
            let _ = std::fs::remove_file(&tmp);
            return Err(WriteError {
                path: path.to_owned(),
                ..e
            });
        }
    }
    if crash_after == Some(Step::Rename) {
        return Ok(());
    }
    sync_dir(parent_of(path)).map_err(err(Step::SyncDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: [Step; 6] = [
        Step::RemoveStale,
        Step::Create,
        Step::Write,
        Step::SyncFile,
        Step::Rename,
        Step::SyncDir,
    ];

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_with_the_exact_mode_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(mode_of(&path), 0o600);
        // Wider than any daemon umask: still exactly what was asked.
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode_of(&path), 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
    }

    /// A crash after each step leaves the old content or the new one,
    /// never a mix, and the next write succeeds and cleans up.
    #[test]
    fn a_crash_after_any_step_leaves_old_or_new() {
        for step in STEPS {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("node-config.pb");
            write_atomic(&path, b"old content", 0o600).unwrap();
            write_until(&path, b"new content!", 0o600, Some(step)).unwrap();
            let got = std::fs::read(&path).unwrap();
            let expected: &[u8] = if matches!(step, Step::Rename | Step::SyncDir) {
                b"new content!"
            } else {
                b"old content"
            };
            assert_eq!(got, expected, "crash after {step:?}");
            write_atomic(&path, b"third", 0o600).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"third", "after {step:?}");
            assert!(!temp_path(&path).exists(), "after {step:?}");
        }
    }

    /// A leftover temporary file with a wider mode (an older version wrote
    /// them with the umask's) is replaced, not reused with its mode.
    #[test]
    fn a_leftover_with_another_mode_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let tmp = temp_path(&path);
        std::fs::write(&tmp, "half a key").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"key", 0o600).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert!(!tmp.exists());
    }

    #[test]
    fn failures_name_the_step_and_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/f");
        let e = write_atomic(&path, b"x", 0o600).unwrap_err();
        assert_eq!(e.step, Step::Create);
        assert_eq!(e.path, path);
        assert!(
            e.to_string()
                .starts_with(&format!("create a temporary file for {}:", path.display())),
            "{e}"
        );
        let e = write_new(&dir.path().join("."), b"x", 0o600).unwrap_err();
        assert_eq!(e.step, Step::Create);
    }
}
