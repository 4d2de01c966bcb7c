//! A test-only failpoint in the log writer: stop between a write and its
//! fsync, so an end-to-end test can kill the daemon at the one moment a
//! crash leaves bytes in the page cache that were never fsynced (nor
//! acknowledged).
//!
//! ```text
//!  WEFT_TEST_WAL_FAILPOINT=1 in the daemon's environment (read at open)
//!  test creates <raft dir>/test-hold-before-fsync          (arms it)
//!  writer: write(records) ─▶ arm file there? ─yes─▶ <raft dir>/test-held-before-fsync
//!                                                   = "<fsynced bytes> <written bytes>"
//!                                                   then blocks for good
//!  test: kill -9, cut the file back to what was fsynced (plus a part of
//!        the write, or zeros), remove the arm file, start the daemon
//! ```
//!
//! Without the variable nothing is looked at; with it, one `stat` per
//! write. Never set it in production: an armed manager stops writing.

use std::path::{Path, PathBuf};

/// The environment variable that enables the failpoint (value `1`).
pub const ENV: &str = "WEFT_TEST_WAL_FAILPOINT";
/// Created by a test in the Raft directory to arm the failpoint.
pub const ARM_FILE: &str = "test-hold-before-fsync";
/// Written by the writer when it stops: the file's size as fsynced, and as
/// written, in bytes, separated by a space.
pub const HELD_FILE: &str = "test-held-before-fsync";

/// The failpoint of one log file, when enabled.
#[derive(Debug)]
pub(super) struct HoldBeforeFsync {
    dir: PathBuf,
}

impl HoldBeforeFsync {
    /// The failpoint for the log in `dir`, if [`ENV`] enables it.
    pub(super) fn from_env(dir: &Path) -> Option<HoldBeforeFsync> {
        (std::env::var(ENV).as_deref() == Ok("1")).then(|| {
            tracing::warn!(
                "{ENV}=1: the Raft log writer stops before an fsync when {} appears (tests only)",
                dir.join(ARM_FILE).display()
            );
            HoldBeforeFsync {
                dir: dir.to_path_buf(),
            }
        })
    }

    /// Called between a write and its fsync: if armed, records `fsynced`
    /// and `written` (file sizes) and never returns.
    pub(super) fn check(&self, fsynced: u64, written: u64) {
        if !self.dir.join(ARM_FILE).exists() {
            return;
        }
        let tmp = self.dir.join(format!("{HELD_FILE}.tmp"));
        let held = self.dir.join(HELD_FILE);
        let wrote = std::fs::write(&tmp, format!("{fsynced} {written}\n"))
            .and_then(|()| std::fs::rename(&tmp, &held));
        tracing::warn!(
            fsynced,
            written,
            ?wrote,
            "test failpoint: the Raft log writer stops before its fsync"
        );
        loop {
            std::thread::park();
        }
    }
}
