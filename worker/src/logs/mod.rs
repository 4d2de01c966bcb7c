//! Task output on the node: Docker json-file lines with rotation, written
//! by one writer per task and read by `weft logs` (issue #14 §2.6).
//!
//! ```text
//!  container ─ fd 1/2 ─▶ shim pipes ─ fd 3/4 ─▶ weft-task-logger ─┐
//!  host process ─ fd 1/2 ─▶ pipes ─▶ copier threads in the task shim ─┤
//!                                                                  ▼
//!        <taskdir>/log/task.log  (+ task.log.1 … task.log.<max-file − 1>)
//!        {"log":"…\n","stream":"stdout","time":"2026-12-03T11:00:00.123456789Z"}
//!                                                                  │
//!  reader (tail N lines, since, follow across rotation) ◀──────────┘
//! ```
//!
//! Owns: the line format ([`format`]), rotation ([`writer`]), the logger
//! process (`weft weft-task-logger <taskdir>`, [`logger`]) and the reader
//! ([`reader`]). The writer holds an exclusive `flock` on `<taskdir>/log/lock`
//! for as long as it may still write; whoever must see all of a task's
//! output (the containerd runtime before it reports an exit) waits for that
//! lock ([`wait_writer_done`]).

pub mod format;
pub mod logger;
pub mod reader;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The log directory inside a task directory.
pub const LOG_DIR: &str = "log";
/// The current log file; rotated ones get `.1`, `.2`, …
pub const LOG_FILE: &str = "task.log";
/// The lock file the writer holds while it may write.
pub const LOCK_FILE: &str = "lock";
/// The options file the writer reads, next to the log directory.
pub const CONFIG_FILE: &str = "log-config.json";
/// The magic argv\[1\] that makes the `weft` binary a logger (the shim
/// starts `<exec-root>/bin/weft-task-logger weft-task-logger <taskdir>`).
pub const LOGGER_ARG: &str = "weft-task-logger";

/// Default `max-size`: 10 MiB per file, as `--log-opt max-size=10m`.
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Default `max-file`: the current file and two rotated ones.
pub const DEFAULT_MAX_FILE: u32 = 3;
/// Smallest `max-size` accepted: a line can always fit.
pub const MIN_MAX_SIZE: u64 = 4096;
/// Largest `max-size` accepted (1 TiB): bounds the arithmetic, not the disk.
pub const MAX_MAX_SIZE: u64 = 1 << 40;
/// Largest `max-file` accepted.
pub const MAX_MAX_FILE: u32 = 100;

/// Errors of the log writer and reader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A `--log-opt` value is out of range or malformed.
    #[error("--log-opt {key}={value}: {reason}")]
    BadOption {
        /// The option (`max-size`, `max-file`, or the unknown key).
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Size cap and rotation of one task's log (`--log-opt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// Rotate once the current file would grow past this many bytes.
    pub max_size: u64,
    /// How many files to keep, the current one included (Docker's meaning).
    pub max_file: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE,
            max_file: DEFAULT_MAX_FILE,
        }
    }
}

impl LogOptions {
    /// Checks the ranges; `Err` names the option and why.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_MAX_SIZE..=MAX_MAX_SIZE).contains(&self.max_size) {
            return Err(Error::BadOption {
                key: "max-size".into(),
                value: self.max_size.to_string(),
                reason: format!("must be between {MIN_MAX_SIZE} bytes (4k) and 1t"),
            });
        }
        if !(1..=MAX_MAX_FILE).contains(&self.max_file) {
            return Err(Error::BadOption {
                key: "max-file".into(),
                value: self.max_file.to_string(),
                reason: format!("must be between 1 and {MAX_MAX_FILE}"),
            });
        }
        Ok(())
    }

    /// Parses `max-size=10m,max-file=3` (either key may be left out:
    /// the default stays). Sizes take `k`, `m`, `g` suffixes (powers of
    /// 1024), as Docker's.
    pub fn parse(s: &str) -> Result<Self> {
        let mut o = Self::default();
        for kv in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| Error::BadOption {
                key: kv.into(),
                value: String::new(),
                reason: "expected KEY=VALUE (max-size=10m, max-file=3)".into(),
            })?;
            let bad = |reason: &str| Error::BadOption {
                key: k.into(),
                value: v.into(),
                reason: reason.into(),
            };
            match k.trim() {
                "max-size" => {
                    o.max_size = parse_size(v.trim())
                        .ok_or_else(|| bad("expected a size such as 512k, 10m or 1g"))?
                }
                "max-file" => {
                    o.max_file = v
                        .trim()
                        .parse()
                        .map_err(|_| bad("expected a whole number of files, such as 3"))?
                }
                _ => return Err(bad("unknown option; known: max-size, max-file")),
            }
        }
        o.validate()?;
        Ok(o)
    }

    /// Reads the options of the task in `task_dir`; defaults if there is no
    /// file, and for a file that does not parse or holds bad values (the
    /// writer must run whatever happens).
    pub fn load(task_dir: &Path) -> Self {
        std::fs::read(task_dir.join(CONFIG_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Self>(&b).ok())
            .filter(|o| o.validate().is_ok())
            .unwrap_or_default()
    }

    /// Writes the options for the task in `task_dir`.
    pub fn store(&self, task_dir: &Path) -> Result<()> {
        let path = task_dir.join(CONFIG_FILE);
        let json = serde_json::to_vec(self).expect("plain struct serializes");
        std::fs::write(&path, json).map_err(io("write", &path))
    }
}

/// `512`, `4k`, `10m`, `1g`, `1t` (also `kb`, `mb`… and upper case).
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let t = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match t.char_indices().last()? {
        (i, 'k') => (&t[..i], 1u64 << 10),
        (i, 'm') => (&t[..i], 1 << 20),
        (i, 'g') => (&t[..i], 1 << 30),
        (i, 't') => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// The whole log in `dir` as text, stdout and stderr together in order
/// (rotated files first); empty if there is none or it cannot be read.
/// Straight from the files: works while the daemon is down.
pub fn text(dir: &Path) -> String {
    let mut out = String::new();
    let _ = reader::read(dir, &Default::default(), &|| true, &mut |batch| {
        for e in batch {
            out.push_str(&String::from_utf8_lossy(&e.line));
        }
        true
    });
    out
}

/// The log directory of the task whose directory is `task_dir`.
pub fn log_dir(task_dir: &Path) -> PathBuf {
    task_dir.join(LOG_DIR)
}

/// Opens (creating) the lock file in `dir`.
fn open_lock(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))
}

/// Takes the writer's lock of the log directory `dir` (creating it),
/// waiting for an earlier writer to let go; held until dropped.
pub fn lock_writer(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    nix::fcntl::Flock::lock(open_lock(dir)?, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io("lock", dir)(e.into()))
}

/// Whether a writer holds the lock of the log directory `dir` now.
pub fn writer_active(dir: &Path) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    let Ok(f) = open_lock(dir) else {
        return false;
    };
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        Ok(_held) => false,
        Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// Waits up to `limit` until no writer holds the lock of the log directory
/// `dir` (all output written); true if none does.
pub async fn wait_writer_done(dir: &Path, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !writer_active(dir) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A task's `--log-opt` from its wire form; `None` (the defaults) when
/// absent or out of range (the manager checked it already).
pub fn log_options(l: Option<&weft_proto::v1::LogConfig>) -> Option<LogOptions> {
    let l = l?;
    let o = LogOptions {
        max_size: l.max_size,
        max_file: l.max_file,
    };
    o.validate().is_ok().then_some(o)
}

/// What a log query asks for, from its wire form.
pub fn read_options(q: Option<&weft_proto::v1::LogQuery>) -> reader::ReadOptions {
    let q = q.cloned().unwrap_or_default();
    reader::ReadOptions {
        tail: q.tail,
        since: (q.since_unix_ms > 0)
            .then(|| std::time::UNIX_EPOCH + Duration::from_millis(q.since_unix_ms)),
        follow: q.follow,
    }
}

/// One entry in its wire form.
pub fn to_wire(e: format::Entry) -> weft_proto::v1::LogLine {
    use weft_proto::v1::LogStream as S;
    weft_proto::v1::LogLine {
        stream: match e.stream {
            format::Stream::Stdout => S::Stdout,
            format::Stream::Stderr => S::Stderr,
        }
        .into(),
        time_unix_nanos: e
            .time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        line: e.line,
    }
}

/// Receives a reader's batches of wire lines (or its error) on the
/// reader's blocking thread; returns false once nobody reads any more. Made
/// of a bounded channel's `blocking_send`, it slows the reader to the pace
/// of the receiver. An empty batch only asks whether anybody still reads
/// (send nothing; answer from the channel's `is_closed`).
pub type LogSink =
    Box<dyn FnMut(std::result::Result<Vec<weft_proto::v1::LogLine>, String>) -> bool + Send>;

/// Reads the log in `dir` on a blocking thread into `sink`. Ends when the
/// read is done or the sink says nobody reads any more.
pub fn spawn_read(
    task: String,
    dir: PathBuf,
    opts: reader::ReadOptions,
    finished: Box<dyn Fn() -> bool + Send>,
    mut sink: LogSink,
) {
    tokio::task::spawn_blocking(move || {
        tracing::debug!(%task, follow = opts.follow, "log reader started");
        let r = reader::read(&dir, &opts, &*finished, &mut |batch| {
            sink(Ok(batch.into_iter().map(to_wire).collect()))
        });
        if let Err(e) = r {
            sink(Err(e.to_string()));
        }
        tracing::info!(%task, follow = opts.follow, "log reader ended");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("10MB"), Some(10 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        for bad in [
            "",
            "m",
            "lots",
            "-3m",
            "1.5m",
            "10q",
            "99999999999999999999t",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn options() {
        assert_eq!(LogOptions::parse("").unwrap(), LogOptions::default());
        let o = LogOptions::parse("max-size=1m, max-file=5").unwrap();
        assert_eq!((o.max_size, o.max_file), (1 << 20, 5));
        let e = LogOptions::parse("max-size=lots").unwrap_err().to_string();
        assert!(e.contains("max-size=lots") && e.contains("10m"), "{e}");
        assert!(LogOptions::parse("max-file=0").is_err());
        assert!(LogOptions::parse("max-size=1").is_err());
        assert!(LogOptions::parse("colour=blue").is_err());
        assert!(LogOptions::parse("max-size").is_err());
    }

    #[test]
    fn lock_shows_an_active_writer() {
        let d = tempfile::tempdir().unwrap();
        assert!(!writer_active(d.path()));
        let held = nix::fcntl::Flock::lock(
            open_lock(d.path()).unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .map_err(|(_, e)| e)
        .unwrap();
        assert!(writer_active(d.path()));
        drop(held);
        assert!(!writer_active(d.path()));
    }
}
