//! The Raft log kept in a redb database instead of the log file, for the
//! A/B benchmark issue #13 asks for (`bench/run.sh`, `BENCHMARKS.md`):
//! does the home-made log file ([`super::wal`]) earn its risk against redb
//! behind the same group-committing writer thread?
//!
//! Chosen with `WEFT_RAFT_LOG=redb` when a manager's Raft storage is opened
//! ([`Backend::from_env`]); the default is the log file. It is a benchmark
//! knob, not a supported setting: `weft doctor raft` and
//! `weft init --force-new-cluster` read only the log file, and a data
//! directory keeps the backend it was created with (opening it with the
//! other one is refused, see [`Backend::check_dir`]).
//!
//! Layout: its own file, [`REDB_LOG_FILE`], so its commits never wait for
//! the state machine's (redb has one writer per database). Table
//! [`ENTRIES`] maps index → entry (JSON, as the log file stores it); table
//! [`META`] holds the vote, the committed id and the last purged id. One
//! [`LogFile::write`] is one write transaction, committed with
//! [`Durability::Immediate`] when the writer asks for a sync and with
//! [`Durability::None`] otherwise (hints, made durable by the next
//! immediate commit, as the log file does with its next fsync).

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::log_store::{from_json, to_json};
use super::wal::{LogImage, RecOut, WAL_FILE, Wal, WalError};

/// File name of the redb log inside the manager's raft directory.
pub const REDB_LOG_FILE: &str = "raft-log.redb";

/// Index → entry.
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// [`VOTE`], [`COMMITTED`], [`PURGED`] → JSON.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// Environment variable choosing the log backend.
pub const BACKEND_ENV: &str = "WEFT_RAFT_LOG";

/// Where the Raft log lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The append-only log file ([`super::wal`]); the default.
    File,
    /// A redb database ([`REDB_LOG_FILE`]); for the A/B benchmark.
    Redb,
}

impl Backend {
    /// The backend named by [`BACKEND_ENV`]: unset, empty or `file` is the
    /// log file, `redb` is redb; anything else is an error naming both.
    pub fn from_env() -> Result<Backend, LogFileError> {
        match std::env::var(BACKEND_ENV) {
            Err(_) => Ok(Backend::File),
            Ok(v) => match v.as_str() {
                "" | "file" => Ok(Backend::File),
                "redb" => Ok(Backend::Redb),
                _ => Err(LogFileError::UnknownBackend(v)),
            },
        }
    }

    /// The file this backend keeps the log in.
    pub fn file_name(self) -> &'static str {
        match self {
            Backend::File => WAL_FILE,
            Backend::Redb => REDB_LOG_FILE,
        }
    }

    /// Refuses a directory holding the other backend's log: opening it with
    /// this one would start from an empty log and forget the vote.
    pub fn check_dir(self, dir: &Path) -> Result<(), LogFileError> {
        let other = match self {
            Backend::File => Backend::Redb,
            Backend::Redb => Backend::File,
        };
        let path = dir.join(other.file_name());
        match path.try_exists() {
            Ok(false) => Ok(()),
            Ok(true) => Err(LogFileError::OtherBackend {
                path,
                env: BACKEND_ENV,
            }),
            Err(source) => Err(LogFileError::Io { path, source }),
        }
    }
}

/// Errors of a log backend.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    /// The log file's own errors.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The redb log's database failed.
    #[error("Raft log database {path}: {source}")]
    Redb {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: redb::Error,
    },
    /// A stored entry or value did not decode, or one could not be encoded.
    #[error("Raft log database {path}: {what} does not decode: {source}")]
    Json {
        /// Which file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A file could not be checked.
    #[error("Raft log {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// [`BACKEND_ENV`] names no backend.
    #[error("{BACKEND_ENV}={0:?} names no Raft log backend: use `file` (the default) or `redb`")]
    UnknownBackend(String),
    /// The directory holds the other backend's log.
    #[error(
        "{path} holds this manager's Raft log in the other backend; start it with the \
         {env} it was created with"
    )]
    OtherBackend {
        /// The other backend's file.
        path: PathBuf,
        /// The variable to set.
        env: &'static str,
    },
}

/// What the log writer thread writes through: the log file or redb.
pub(super) trait LogFile: Send + 'static {
    /// Writes `recs` in order as one unit; durable before returning when
    /// `sync`.
    fn write(&mut self, recs: &[RecOut<'_>], sync: bool) -> Result<(), LogFileError>;

    /// Makes the next purge drop the purged entries from the file itself
    /// (the log file compacts; redb frees their pages anyway).
    fn compact_at_next_purge(&mut self) {}
}

impl LogFile for Wal {
    fn write(&mut self, recs: &[RecOut<'_>], sync: bool) -> Result<(), LogFileError> {
        Wal::write(self, recs, sync).map_err(LogFileError::from)
    }

    fn compact_at_next_purge(&mut self) {
        Wal::compact_at_next_purge(self)
    }
}

/// The log in a redb database (owned by the log writer thread).
pub(super) struct RedbLog {
    db: Database,
    path: PathBuf,
}

impl RedbLog {
    /// Opens (or creates) the database in `dir` and reads the whole log.
    pub(super) fn open(dir: &Path) -> Result<(RedbLog, LogImage), LogFileError> {
        let path = dir.join(REDB_LOG_FILE);
        let db = Database::create(&path).map_err(|e| redb_err(&path, e))?;
        let log = RedbLog { db, path };
        let image = log.read().map_err(|e| match e {
            Read::Redb(e) => redb_err(&log.path, e),
            Read::Json(what, source) => LogFileError::Json {
                path: log.path.clone(),
                what,
                source,
            },
        })?;
        Ok((log, image))
    }

    fn read(&self) -> Result<LogImage, Read> {
        let mut image = LogImage::default();
        let tx = self.db.begin_read().map_err(Read::redb)?;
        let entries = match tx.open_table(ENTRIES) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(Read::redb(e)),
        };
        if let Some(t) = entries {
            for row in t.iter().map_err(Read::redb)? {
                let (k, v) = row.map_err(Read::redb)?;
                let entry = from_json(v.value())
                    .map_err(|e| Read::Json(format!("entry {}", k.value()), e))?;
                image.log.insert(k.value(), entry);
            }
        }
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(image),
            Err(e) => return Err(Read::redb(e)),
        };
        let get = |key: &str| -> Result<Option<Vec<u8>>, Read> {
            Ok(meta
                .get(key)
                .map_err(Read::redb)?
                .map(|v| v.value().to_vec()))
        };
        if let Some(b) = get(VOTE)? {
            image.vote = Some(Read::json(VOTE, from_json(&b))?);
        }
        if let Some(b) = get(COMMITTED)? {
            image.committed = Read::json(COMMITTED, from_json(&b))?;
        }
        if let Some(b) = get(PURGED)? {
            image.last_purged = Some(Read::json(PURGED, from_json(&b))?);
        }
        Ok(image)
    }

    fn write_tx(&self, recs: &[RecOut<'_>], sync: bool) -> Result<(), Write> {
        let mut tx = self.db.begin_write().map_err(Write::redb)?;
        let durability = if sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        tx.set_durability(durability).map_err(Write::redb)?;
        {
            let mut entries = tx.open_table(ENTRIES).map_err(Write::redb)?;
            let mut meta = tx.open_table(META).map_err(Write::redb)?;
            for rec in recs {
                match rec {
                    RecOut::Entries(es) => {
                        for e in es.iter() {
                            let b = to_json(e).map_err(Write::Json)?;
                            entries
                                .insert(e.log_id.index, b.as_slice())
                                .map_err(Write::redb)?;
                        }
                    }
                    RecOut::Truncate(since) => {
                        entries
                            .retain_in(*since.., |_, _| false)
                            .map_err(Write::redb)?;
                    }
                    RecOut::Purge(upto) => {
                        entries
                            .retain_in(..=upto.index, |_, _| false)
                            .map_err(Write::redb)?;
                        let b = to_json(upto).map_err(Write::Json)?;
                        meta.insert(PURGED, b.as_slice()).map_err(Write::redb)?;
                    }
                    RecOut::Vote(v) => {
                        let b = to_json(v).map_err(Write::Json)?;
                        meta.insert(VOTE, b.as_slice()).map_err(Write::redb)?;
                    }
                    RecOut::Committed(c) => {
                        let b = to_json(c).map_err(Write::Json)?;
                        meta.insert(COMMITTED, b.as_slice()).map_err(Write::redb)?;
                    }
                }
            }
        }
        tx.commit().map_err(Write::redb)
    }
}

impl LogFile for RedbLog {
    fn write(&mut self, recs: &[RecOut<'_>], sync: bool) -> Result<(), LogFileError> {
        self.write_tx(recs, sync).map_err(|e| match e {
            Write::Redb(e) => redb_err(&self.path, e),
            Write::Json(source) => LogFileError::Json {
                path: self.path.clone(),
                what: "a record".to_string(),
                source,
            },
        })
    }
}

fn redb_err(path: &Path, e: impl Into<redb::Error>) -> LogFileError {
    LogFileError::Redb {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Why reading failed, before the path is attached.
enum Read {
    Redb(redb::Error),
    Json(String, serde_json::Error),
}

impl Read {
    fn redb(e: impl Into<redb::Error>) -> Read {
        Read::Redb(e.into())
    }

    fn json<T>(what: &str, r: Result<T, serde_json::Error>) -> Result<T, Read> {
        r.map_err(|e| Read::Json(what.to_string(), e))
    }
}

/// Why writing failed, before the path is attached.
enum Write {
    Redb(redb::Error),
    Json(serde_json::Error),
}

impl Write {
    fn redb(e: impl Into<redb::Error>) -> Write {
        Write::Redb(e.into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;
    use crate::raft::wal::tests::entry;
    use crate::store::NodeId;

    #[test]
    fn records_read_back_as_the_log_file_would_replay_them() {
        let dir = tempfile::tempdir().unwrap();
        let es: Vec<_> = (1..=10).map(|i| entry(1, i)).collect();
        let vote = Vote::new(2, NodeId(1));
        {
            let (mut log, image) = RedbLog::open(dir.path()).unwrap();
            assert!(image.log.is_empty() && image.vote.is_none());
            log.write(&[RecOut::Entries(&es), RecOut::Vote(vote)], true)
                .unwrap();
            log.write(&[RecOut::Truncate(8)], true).unwrap();
            log.write(&[RecOut::Purge(es[2].log_id)], false).unwrap();
            log.write(&[RecOut::Committed(Some(es[6].log_id))], true)
                .unwrap();
        }
        let (_, image) = RedbLog::open(dir.path()).unwrap();
        assert_eq!(
            image.log.keys().copied().collect::<Vec<_>>(),
            vec![4, 5, 6, 7]
        );
        assert_eq!(image.vote, Some(vote));
        assert_eq!(image.committed, Some(es[6].log_id));
        assert_eq!(image.last_purged, Some(es[2].log_id));
    }

    #[test]
    fn a_directory_keeps_its_backend() {
        let dir = tempfile::tempdir().unwrap();
        drop(RedbLog::open(dir.path()).unwrap());
        assert!(Backend::Redb.check_dir(dir.path()).is_ok());
        let e = Backend::File.check_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains(REDB_LOG_FILE), "{e}");
    }
}
