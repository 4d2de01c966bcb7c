//! The Raft log, vote, committed id and last-purged id in one redb file.
//!
//! Every redb call blocks (and a durable commit fsyncs), so each storage
//! call runs on tokio's blocking pool. An `append` is one write transaction,
//! committed durably before `LogFlushed` is signalled. Writes that are only
//! hints — the committed log id and purging — use non-durable commits: redb
//! persists them with the next durable commit, and losing one in a crash is
//! harmless (a smaller committed id only means less is re-applied at boot;
//! an un-purged prefix is purged again).

// openraft's storage traits fix the (large) error type of every call here.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::error::Error;
use super::{StorageError, TypeConfig};
use crate::store::NodeId;

/// Log entries by index; values are serde_json of `Entry<TypeConfig>`.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small records by name; values are serde_json.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The current snapshot: [`SNAPSHOT_META_KEY`] and [`SNAPSHOT_DATA_KEY`].
pub(super) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "last_purged";
pub(super) const SNAPSHOT_META_KEY: &str = "meta";
pub(super) const SNAPSHOT_DATA_KEY: &str = "data";

/// File name of the Raft database inside the manager's raft directory.
pub const DB_FILE: &str = "raft.redb";

/// The open database, shared by the log store and the state machine.
///
/// Dropping the last reference closes the file *and then* fires the
/// [`DbClosed`] receiver (fields drop in order), so a shutdown can wait
/// until the file lock is really released before the directory is reopened.
pub(super) struct Db {
    db: Database,
    _closed: oneshot::Sender<()>,
}

impl std::ops::Deref for Db {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Resolves (with an error) once the database file is closed.
pub(super) type DbClosed = oneshot::Receiver<()>;

/// Opens (or creates) the Raft database under `dir` and makes sure every
/// table exists, so readers never see a missing table.
pub(super) fn open_db(dir: &Path) -> Result<(Arc<Db>, DbClosed), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(DB_FILE);
    let db = Database::create(&path).map_err(|source| Error::OpenDb {
        path: path.clone(),
        source,
    })?;
    let init = || -> Result<(), redb::Error> {
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.open_table(SNAPSHOT)?;
        tx.commit()?;
        Ok(())
    };
    init().map_err(|source| Error::InitDb { path, source })?;
    let (tx, rx) = oneshot::channel();
    Ok((Arc::new(Db { db, _closed: tx }), rx))
}

/// Runs a blocking storage closure on tokio's blocking pool.
pub(super) async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StorageIOError::write(AnyError::new(&e)).into()),
    }
}

/// serde_json encoding of a stored record.
pub(super) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(v)
}

/// serde_json decoding of a stored record.
pub(super) fn from_json<T: DeserializeOwned>(b: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(b)
}

/// Reads one META record.
fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, AnyError> {
    let tx = db.begin_read().map_err(|e| AnyError::new(&e))?;
    let t = tx.open_table(META).map_err(|e| AnyError::new(&e))?;
    let Some(v) = t.get(key).map_err(|e| AnyError::new(&e))? else {
        return Ok(None);
    };
    from_json(v.value())
        .map(Some)
        .map_err(|e| AnyError::new(&e))
}

/// Writes one META record in its own transaction.
fn write_meta<T: Serialize>(
    db: &Database,
    key: &str,
    v: &T,
    durability: Durability,
) -> Result<(), AnyError> {
    let bytes = to_json(v).map_err(|e| AnyError::new(&e))?;
    let mut tx = db.begin_write().map_err(|e| AnyError::new(&e))?;
    tx.set_durability(durability)
        .map_err(|e| AnyError::new(&e))?;
    {
        let mut t = tx.open_table(META).map_err(|e| AnyError::new(&e))?;
        t.insert(key, bytes.as_slice())
            .map_err(|e| AnyError::new(&e))?;
    }
    tx.commit().map_err(|e| AnyError::new(&e))
}

/// The Raft log storage (`RaftLogStorage` + `RaftLogReader`) on redb.
///
/// Cheap to clone; clones share the database and serve as log readers.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    /// Log storage in an already opened database (see [`super::RaftHandle::open`]).
    pub(super) fn new(db: Arc<Db>) -> Self {
        LogStore { db }
    }

    /// The shared database, for the state machine.
    pub(super) fn db(&self) -> Arc<Db> {
        self.db.clone()
    }

    fn read_range(
        db: &Database,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry<TypeConfig>>, AnyError> {
        let tx = db.begin_read().map_err(|e| AnyError::new(&e))?;
        let t = tx.open_table(LOGS).map_err(|e| AnyError::new(&e))?;
        let mut out = Vec::new();
        for item in t.range::<u64>(range).map_err(|e| AnyError::new(&e))? {
            let (_, v) = item.map_err(|e| AnyError::new(&e))?;
            out.push(from_json(v.value()).map_err(|e| AnyError::new(&e))?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let db = self.db.clone();
        blocking(move || {
            LogStore::read_range(&db, bounds).map_err(|e| StorageIOError::read_logs(e).into())
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let read = || -> Result<LogState<TypeConfig>, AnyError> {
                let last_purged_log_id: Option<LogId<NodeId>> = read_meta(&db, PURGED_KEY)?;
                let tx = db.begin_read().map_err(|e| AnyError::new(&e))?;
                let t = tx.open_table(LOGS).map_err(|e| AnyError::new(&e))?;
                let last = match t.last().map_err(|e| AnyError::new(&e))? {
                    Some((_, v)) => {
                        let e: Entry<TypeConfig> =
                            from_json(v.value()).map_err(|e| AnyError::new(&e))?;
                        Some(*e.get_log_id())
                    }
                    None => None,
                };
                Ok(LogState {
                    last_purged_log_id,
                    last_log_id: last.or(last_purged_log_id),
                })
            };
            read().map_err(|e| StorageIOError::read_logs(e).into())
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || {
            write_meta(&db, VOTE_KEY, &vote, Durability::Immediate)
                .map_err(|e| StorageIOError::write_vote(e).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, VOTE_KEY).map_err(|e| StorageIOError::read_vote(e).into()))
            .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            write_meta(&db, COMMITTED_KEY, &committed, Durability::None)
                .map_err(|e| StorageIOError::write(e).into())
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            read_meta::<Option<LogId<NodeId>>>(&db, COMMITTED_KEY)
                .map(Option::flatten)
                .map_err(|e| StorageIOError::read(e).into())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let db = self.db.clone();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let res = blocking(move || {
            let write = || -> Result<(), AnyError> {
                let tx = db.begin_write().map_err(|e| AnyError::new(&e))?;
                {
                    let mut t = tx.open_table(LOGS).map_err(|e| AnyError::new(&e))?;
                    for e in &entries {
                        let bytes = to_json(e).map_err(|e| AnyError::new(&e))?;
                        t.insert(e.get_log_id().index, bytes.as_slice())
                            .map_err(|e| AnyError::new(&e))?;
                    }
                }
                // Default durability: commit() returns after fsync.
                tx.commit().map_err(|e| AnyError::new(&e))
            };
            write().map_err(|e| StorageIOError::write_logs(e).into())
        })
        .await;
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let write = || -> Result<(), AnyError> {
                let tx = db.begin_write().map_err(|e| AnyError::new(&e))?;
                {
                    let mut t = tx.open_table(LOGS).map_err(|e| AnyError::new(&e))?;
                    t.retain_in::<u64, _>(log_id.index.., |_, _| false)
                        .map_err(|e| AnyError::new(&e))?;
                }
                tx.commit().map_err(|e| AnyError::new(&e))
            };
            write().map_err(|e| StorageIOError::write_logs(e).into())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let write = || -> Result<(), AnyError> {
                let bytes = to_json(&log_id).map_err(|e| AnyError::new(&e))?;
                let mut tx = db.begin_write().map_err(|e| AnyError::new(&e))?;
                tx.set_durability(Durability::None)
                    .map_err(|e| AnyError::new(&e))?;
                {
                    let mut m = tx.open_table(META).map_err(|e| AnyError::new(&e))?;
                    m.insert(PURGED_KEY, bytes.as_slice())
                        .map_err(|e| AnyError::new(&e))?;
                    let mut t = tx.open_table(LOGS).map_err(|e| AnyError::new(&e))?;
                    t.retain_in::<u64, _>(..=log_id.index, |_, _| false)
                        .map_err(|e| AnyError::new(&e))?;
                }
                tx.commit().map_err(|e| AnyError::new(&e))
            };
            write().map_err(|e| StorageIOError::write_logs(e).into())
        })
        .await
    }
}
