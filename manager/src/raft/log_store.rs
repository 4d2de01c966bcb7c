//! The Raft log, vote, committed id and last-purged id: a copy in memory
//! that serves every read, and the log file ([`super::wal`]) that every
//! write goes to through a single log-writer thread.
//!
//! Why in memory: openraft reads each entry back right after appending it,
//! once per replication stream and once more to apply it. The log is short
//! (it is purged behind every snapshot), so keeping it whole in memory saves
//! a disk read, a thread hop and a decode on each of those reads. The file
//! is read only when the store is opened.
//!
//! Why one writer thread: every mutation is queued, in call order, to one
//! thread that writes whatever has queued up as one append and one fsync (a
//! group commit) and then reports completion. Write order is call order, as
//! openraft requires.
//!
//! Durability (what is on disk before anything is acknowledged):
//! - An append's `LogFlushed` fires after the write holding it was
//!   fsynced. A vote is saved durably before `save_vote` returns; a
//!   truncation before `truncate` returns.
//! - Exception, the leader's own new entries: their `LogFlushed` fires at
//!   once, so openraft replicates them while the leader's fsync runs instead
//!   of after it (openraft 0.9 waits for that callback inside its core loop).
//!   openraft then counts the leader toward the quorum before its copy is on
//!   disk, so two guards keep "acknowledged = durable on a majority":
//!   the state machine applies an entry only once it is durable on this node
//!   ([`LogShared::wait_durable`], called by `StateMachine::apply`), and a
//!   leader never tells its followers a commit index beyond its own durable
//!   log ([`LogShared::clamp_commit`], used by the network). Every apply —
//!   and so every answer to a client — therefore follows a durable copy on
//!   the leader plus durable copies on the followers that acknowledged it.
//! - The committed log id and purges are hints: they are written with the
//!   next write that is fsynced anyway. Losing one in a crash is harmless (a
//!   smaller committed id only means less is re-applied at boot; an
//!   un-purged prefix is purged again). Because writes are ordered, a stored
//!   committed id never points past the stored log.

// openraft's storage traits fix the (large) error type of every call here.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, RaftLogReader, StorageIOError,
    StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{oneshot, watch};

use super::error::Error;
use super::redb_log::{Backend, LogFile, RedbLog};
use super::wal::{LogImage, RecOut, WAL_FILE, Wal, WalError};
use super::{RaftNode, StorageError, TypeConfig};
use crate::store::NodeId;

/// The current snapshot: [`SNAPSHOT_META_KEY`] and [`SNAPSHOT_DATA_KEY`].
pub(super) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

pub(super) const SNAPSHOT_META_KEY: &str = "meta";
pub(super) const SNAPSHOT_DATA_KEY: &str = "data";

/// Most queued writes folded into one append.
const MAX_GROUP: usize = 4096;

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

/// The name of a table in `db` that holds anything: `None` for a database
/// as [`open_db`] creates it, with every table empty.
fn filled_table(db: &Database) -> Result<Option<String>, redb::Error> {
    let tx = db.begin_read()?;
    for table in tx.list_tables()? {
        let name = table.name().to_string();
        if tx.open_untyped_table(table)?.len()? > 0 {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Refuses a log file missing from `dir` beside a database `db` that holds
/// anything ([`Error::LogMissing`]): an empty log created there would forget
/// this node's vote and acknowledged entries.
pub(super) fn check_log_present(db: &Database, dir: &Path) -> Result<(), Error> {
    check_log_file_present(db, dir, WAL_FILE)
}

/// [`check_log_present`] for the log kept in `file` (one per backend).
fn check_log_file_present(db: &Database, dir: &Path, file: &str) -> Result<(), Error> {
    let log = dir.join(file);
    let exists = log.try_exists().map_err(|source| {
        Error::Wal(WalError::Io {
            path: log.clone(),
            source,
        })
    })?;
    if exists {
        return Ok(());
    }
    let db_path = dir.join(DB_FILE);
    let filled = filled_table(db).map_err(|source| Error::ReadDb {
        path: db_path.clone(),
        source,
    })?;
    match filled {
        Some(table) => Err(Error::LogMissing {
            log,
            db: db_path,
            table,
        }),
        None => Ok(()),
    }
}

/// How far this node's log is on disk. Sent by the log writer after each
/// transaction; the state machine and the network wait on / clamp to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Durable {
    /// Every entry with an index below this is on disk (in the log as it
    /// stands after the last committed transaction).
    pub(super) next_index: u64,
    /// A write failed: nothing more will become durable.
    pub(super) failed: bool,
}

impl Durable {
    /// Whether the entry at `index` is on disk.
    pub(super) fn covers(&self, index: u64) -> bool {
        index < self.next_index
    }
}

/// The in-memory copy of everything the log store holds.
type Mem = LogImage;

/// What the log store shares with the network (commit clamping) and the
/// state machine (apply gating).
pub(super) struct LogShared {
    /// This node, to recognise the leader's own new entries.
    id: NodeId,
    mem: Mutex<Mem>,
    durable: watch::Receiver<Durable>,
    /// The last AppendEntries sent carried a clamped commit index; the
    /// leader should re-announce its commit index once its log caught up
    /// (unless a later AppendEntries carries it anyway).
    clamped: AtomicBool,
    /// One past the highest index whose `LogFlushed` fired before its fsync
    /// (0: none). Only entries below it can be in memory but not on disk
    /// when openraft wants them applied.
    early_next: AtomicU64,
    /// Set by [`LogShared::compact_at_next_purge`], taken by the writer.
    compact_next_purge: Arc<AtomicBool>,
}

impl LogShared {
    fn mem(&self) -> MutexGuard<'_, Mem> {
        // Mem is only mutated under the lock in single, non-panicking steps.
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of this node's durable progress.
    /// Makes the log file drop what the next purge removes from the file
    /// itself, by compacting it then whatever its size.
    pub(super) fn compact_at_next_purge(&self) {
        self.compact_next_purge.store(true, Ordering::SeqCst);
    }

    pub(super) fn durable(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    /// The commit index a leader may announce to followers: `committed`,
    /// or — if this node's own copy of it is not on disk yet — the last
    /// entry that is. `None` means "announce unchanged".
    pub(super) fn clamp_commit(&self, committed: LogId<NodeId>) -> Option<Option<LogId<NodeId>>> {
        let durable = *self.durable.borrow();
        if durable.covers(committed.index) {
            self.clamped.store(false, Ordering::Relaxed);
            return None;
        }
        self.clamped.store(true, Ordering::Relaxed);
        let Some(last) = durable.next_index.checked_sub(1) else {
            return Some(None);
        };
        let mem = self.mem();
        let id = match mem.log.get(&last) {
            Some(e) => Some(e.log_id),
            None => mem.last_purged.filter(|p| p.index == last),
        };
        // A durable entry that is neither in the log nor the purge point
        // cannot happen; announcing no commit index is always safe.
        Some(id)
    }

    /// Waits until the entry `log_id`, about to be applied, is on this
    /// node's disk. Only the leader's own entries can be behind.
    pub(super) async fn wait_durable(&self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        if log_id.index >= self.early_next.load(Ordering::SeqCst) {
            return Ok(());
        }
        let failed = || StorageIOError::apply(log_id, AnyError::error("the Raft log write failed"));
        let mut durable = self.durable.clone();
        loop {
            let d = *durable.borrow_and_update();
            if d.covers(log_id.index) {
                return Ok(());
            }
            if d.failed || durable.changed().await.is_err() {
                return Err(failed().into());
            }
        }
    }

    /// Whether the last commit index sent was clamped.
    pub(super) fn is_clamped(&self) -> bool {
        self.clamped.load(Ordering::Relaxed)
    }

    /// Whether the last commit index sent was clamped (and clears that).
    pub(super) fn take_clamped(&self) -> bool {
        self.clamped.swap(false, Ordering::Relaxed)
    }
}

/// One queued mutation for the log writer.
enum Op {
    Append {
        entries: Vec<Entry<TypeConfig>>,
        /// `None` when the callback already fired (the leader's own entries).
        flushed: Option<LogFlushed<TypeConfig>>,
    },
    Vote {
        vote: Vote<NodeId>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Committed(Option<LogId<NodeId>>),
    Truncate {
        since: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge(LogId<NodeId>),
}

impl Op {
    /// Whether this op must be fsynced before it is reported done.
    fn needs_sync(&self) -> bool {
        !matches!(self, Op::Committed(_) | Op::Purge(_))
    }

    /// The record of a hint op (one that needs no fsync).
    fn hint(&self) -> Option<RecOut<'static>> {
        match self {
            Op::Committed(c) => Some(RecOut::Committed(*c)),
            Op::Purge(p) => Some(RecOut::Purge(*p)),
            _ => None,
        }
    }
}

/// The Raft log storage (`RaftLogStorage` + `RaftLogReader`).
///
/// Cheap to clone; clones share the in-memory log and the writer, and serve
/// as log readers.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<LogShared>,
    writer: std_mpsc::Sender<Op>,
}

impl LogStore {
    /// Loads the log from its file in `dir` and starts the log writer
    /// thread, which ends once every clone of the store is dropped; only
    /// then does it release its reference to `db`, so [`DbClosed`] also
    /// means "the log file is closed". `id` is this node.
    ///
    /// Without a log file, a new one is created only if `db` holds nothing
    /// either: beside a snapshot (or a log or vote kept in redb by an
    /// earlier build), an empty log would forget this node's vote and
    /// acknowledged entries, so that is refused ([`Error::LogMissing`]).
    ///
    /// The log lives in the log file unless `WEFT_RAFT_LOG=redb` asks for
    /// the redb log of the A/B benchmark ([`super::redb_log`]).
    pub(super) fn open(db: Arc<Db>, dir: &Path, id: NodeId) -> Result<Self, Error> {
        let backend = Backend::from_env().map_err(Error::LogBackend)?;
        backend.check_dir(dir).map_err(Error::LogBackend)?;
        check_log_file_present(&db, dir, backend.file_name())?;
        let (file, mem): (Box<dyn LogFile>, LogImage) = match backend {
            Backend::File => {
                let (wal, mem) = Wal::open(dir).map_err(Error::Wal)?;
                (Box::new(wal), mem)
            }
            Backend::Redb => {
                let (log, mem) = RedbLog::open(dir).map_err(Error::LogBackend)?;
                (Box::new(log), mem)
            }
        };
        let next_index = match mem.log.last_key_value() {
            Some((i, _)) => i + 1,
            None => mem.last_purged.map_or(0, |p| p.index + 1),
        };
        let (durable_tx, durable_rx) = watch::channel(Durable {
            next_index,
            failed: false,
        });
        let (tx, rx) = std_mpsc::channel();
        let compact_next_purge = Arc::new(AtomicBool::new(false));
        let compact = compact_next_purge.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".to_string())
            .spawn(move || {
                run_writer(file, rx, durable_tx, next_index, compact);
                drop(db);
            })
            .map_err(Error::Spawn)?;
        Ok(LogStore {
            shared: Arc::new(LogShared {
                id,
                mem: Mutex::new(mem),
                durable: durable_rx,
                clamped: AtomicBool::new(false),
                early_next: AtomicU64::new(0),
                compact_next_purge,
            }),
            writer: tx,
        })
    }

    /// Makes a node that led before it stopped start as a follower, unless
    /// it is the only voter: its committed vote for itself is loaded as a
    /// plain vote for itself in that term (it still votes for nobody else in
    /// it), so it must win an election in a later term before it leads again.
    ///
    /// Why: openraft 0.9 restores a node whose stored vote is committed for
    /// itself as leader of that same term at once. A leader sends its new
    /// entries out before they are on its own disk (see the module docs), so
    /// it can come back without entries its followers hold: after a failed
    /// write (the log file is rewritten from what was fsynced) or a power
    /// loss. Leading the same term again, it would write different entries
    /// at those indexes under the same log ids, followers would take them for
    /// the ones they have, and the managers' states would diverge (the fault
    /// suite's full-disk rounds found this). A new term cannot collide.
    ///
    /// `snapshot` is the membership of the stored snapshot; a membership
    /// entry in the log overrides it. A sole voter has no followers to
    /// diverge from, and keeps leading at once.
    pub(super) fn restart_as_follower(&self, snapshot: &StoredMembership<NodeId, RaftNode>) {
        let mut mem = self.shared.mem();
        let Some(vote) = mem
            .vote
            .filter(|v| v.committed && v.leader_id.node_id == self.shared.id)
        else {
            return;
        };
        let from_log = mem.log.values().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        });
        let membership = from_log.unwrap_or_else(|| snapshot.membership().clone());
        let mut voters = membership.voter_ids();
        if voters.next() == Some(self.shared.id) && voters.next().is_none() {
            return;
        }
        tracing::info!(
            term = vote.leader_id.term,
            "this manager led before it stopped; it starts as a follower and leads again only \
             after winning an election in a later term"
        );
        mem.vote = Some(Vote::new(vote.leader_id.term, self.shared.id));
    }

    /// What the network and the state machine need from the log store.
    pub(super) fn shared(&self) -> Arc<LogShared> {
        self.shared.clone()
    }

    fn send(&self, op: Op) -> Result<(), StorageError> {
        if self.shared.durable.borrow().failed {
            return Err(
                StorageIOError::write_logs(AnyError::error("a Raft log write failed")).into(),
            );
        }
        self.writer.send(op).map_err(|_| {
            StorageIOError::write_logs(AnyError::error("Raft log writer stopped")).into()
        })
    }

    /// Whether `last` is a new entry of this node as the current leader:
    /// its vote is committed, for itself, and the entry carries that vote.
    fn is_own_leader_entry(&self, mem: &Mem, last: &Entry<TypeConfig>) -> bool {
        mem.vote.is_some_and(|v| {
            v.committed
                && v.leader_id.node_id == self.shared.id
                && last.log_id.leader_id == v.leader_id
        })
    }
}

/// The log writer: writes whatever is queued as one append to the log file,
/// fsyncs it if any op needs that, then reports completion in order. Hints
/// alone (committed id, purge) are not written until something durable is.
fn run_writer(
    mut wal: Box<dyn LogFile>,
    rx: std_mpsc::Receiver<Op>,
    durable: watch::Sender<Durable>,
    mut next_index: u64,
    compact_next_purge: Arc<AtomicBool>,
) {
    let mut deferred: Vec<RecOut<'static>> = Vec::new();
    let mut compact_pending = false;
    // `Wal::write` has already retried a failed write once, on a file
    // rewritten from memory; a failure that survives that leaves the file
    // in an unknown state: nothing more is written, and every later
    // operation fails with the first error.
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if compact_next_purge.swap(false, Ordering::SeqCst) {
            wal.compact_at_next_purge();
            compact_pending = true;
        }
        // A purge that must compact the file is written (and fsynced) at
        // once: an idle cluster may not write anything else for a while.
        let purges = ops.iter().any(|op| matches!(op, Op::Purge(_)));
        let must_write = ops.iter().any(Op::needs_sync) || (compact_pending && purges);
        if !must_write {
            deferred.extend(ops.iter().filter_map(Op::hint));
            continue;
        }
        if purges {
            compact_pending = false;
        }
        let mut recs: Vec<RecOut<'_>> = std::mem::take(&mut deferred);
        for op in &ops {
            recs.push(match op {
                Op::Append { entries, .. } => RecOut::Entries(entries),
                Op::Vote { vote, .. } => RecOut::Vote(*vote),
                Op::Truncate { since, .. } => RecOut::Truncate(*since),
                Op::Committed(c) => RecOut::Committed(*c),
                Op::Purge(p) => RecOut::Purge(*p),
            });
        }
        let res = match &failed {
            Some(e) => Err(e.clone()),
            None => wal.write(&recs, true).map_err(|e| e.to_string()),
        };
        drop(recs);
        // Durable progress first, then the callbacks: whoever is woken by a
        // callback may look at it.
        match &res {
            Ok(()) => {
                for op in &ops {
                    match op {
                        Op::Append { entries, .. } => {
                            if let Some(last) = entries.last() {
                                next_index = last.log_id.index + 1;
                            }
                        }
                        Op::Truncate { since, .. } => next_index = next_index.min(*since),
                        _ => {}
                    }
                }
                durable.send_replace(Durable {
                    next_index,
                    failed: false,
                });
            }
            Err(e) => {
                if failed.is_none() {
                    tracing::error!(error = %e, "Raft log write failed; Raft will stop");
                    failed = Some(e.clone());
                }
                durable.send_modify(|d| d.failed = true);
            }
        }
        let outcome = || res.clone();
        for op in ops {
            match op {
                Op::Append {
                    flushed: Some(cb), ..
                } => cb.log_io_completed(outcome().map_err(std::io::Error::other)),
                Op::Vote { done, .. } | Op::Truncate { done, .. } => {
                    let _ = done.send(outcome());
                }
                _ => {}
            }
        }
    }
    // Shutting down: keep the hints too (no fsync needed).
    if failed.is_none()
        && !deferred.is_empty()
        && let Err(e) = wal.write(&deferred, false)
    {
        tracing::warn!(error = %e, "cannot write the last Raft log hints");
    }
}

async fn wait_done(
    rx: oneshot::Receiver<Result<(), String>>,
    err: fn(AnyError) -> StorageIOError<NodeId>,
) -> Result<(), StorageError> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(err(AnyError::error(e)).into()),
        Err(_) => Err(err(AnyError::error("Raft log writer stopped")).into()),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let mem = self.shared.mem();
        // Entries are cheap to clone: a batch's commands sit behind an Arc.
        Ok(mem.log.range(bounds).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.shared.mem();
        let last = mem.log.last_key_value().map(|(_, e)| e.log_id);
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: last.or(mem.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        self.send(Op::Vote { vote: *vote, done })?;
        wait_done(rx, StorageIOError::write_vote).await?;
        self.shared.mem().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.shared.mem().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        self.shared.mem().committed = committed;
        self.send(Op::Committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.shared.mem().committed)
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let last_index = last.log_id.index;
        let own = {
            let mut mem = self.shared.mem();
            let own = self.is_own_leader_entry(&mem, last);
            for e in &entries {
                mem.log.insert(e.log_id.index, e.clone());
            }
            own
        };
        if own {
            // See the module docs: the state machine and the network wait
            // for this node's fsync instead of openraft's core loop.
            self.shared
                .early_next
                .fetch_max(last_index + 1, Ordering::SeqCst);
            self.send(Op::Append {
                entries,
                flushed: None,
            })?;
            callback.log_io_completed(Ok(()));
            Ok(())
        } else {
            self.send(Op::Append {
                entries,
                flushed: Some(callback),
            })
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        {
            let mut mem = self.shared.mem();
            drop(mem.log.split_off(&log_id.index));
        }
        let (done, rx) = oneshot::channel();
        self.send(Op::Truncate {
            since: log_id.index,
            done,
        })?;
        wait_done(rx, StorageIOError::write_logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        {
            let mut mem = self.shared.mem();
            let keep = mem.log.split_off(&(log_id.index + 1));
            mem.log = keep;
            mem.last_purged = Some(log_id);
        }
        self.send(Op::Purge(log_id))
    }
}
