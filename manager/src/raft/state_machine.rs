//! The Raft state machine: [`State`] in memory, snapshots in redb.
//!
//! The state is shared with the rest of the manager through a
//! [`StoreHandle`]; after every apply batch the handle's watch channel
//! carries the last applied log index, so reconcilers and streams wake up.
//! The state itself is not written on every apply: at boot the latest
//! snapshot is loaded and openraft re-applies the committed log after it.

// openraft's storage traits fix the (large) error type of every call here.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::{
    Db, LogShared, SNAPSHOT, SNAPSHOT_DATA_KEY, SNAPSHOT_META_KEY, blocking, from_json, to_json,
};
use super::{BatchResult, RaftNode, StorageError, TypeConfig};
use crate::store::events::{self, EventLog};
use crate::store::{NodeId, State};

type Meta = SnapshotMeta<NodeId, RaftNode>;
type Membership = StoredMembership<NodeId, RaftNode>;

/// Read access to the replicated state for the rest of the manager.
///
/// Cheap to clone. Never hold a read guard across an `.await` (the guard is
/// not `Send`, so the compiler enforces this in spawned tasks): applying
/// waits for readers.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<Shared>,
}

struct Shared {
    state: RwLock<State>,
    /// The index of the last entry applied to `state`, set while its write
    /// lock is held: a reader holding a read guard sees the index of the
    /// state it reads, where `applied` is sent only after the lock is let
    /// go ([`StoreHandle::read_indexed`]).
    state_index: AtomicU64,
    applied: watch::Sender<u64>,
    /// The events of the last entries applied (`weft events`).
    events: Mutex<EventLog>,
}

impl StoreHandle {
    fn new(state: State, applied: u64) -> Self {
        StoreHandle {
            inner: Arc::new(Shared {
                state: RwLock::new(state),
                state_index: AtomicU64::new(applied),
                applied: watch::Sender::new(applied),
                events: Mutex::new(EventLog::after(applied)),
            }),
        }
    }

    /// The state as of the last applied entry.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic inside `State::apply`; the data is
        // still the last consistent state (apply mutates only on success).
        self.inner
            .state
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A receiver that changes whenever entries were applied; its value is
    /// the last applied log index (0 before anything was applied).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// The last applied log index (0 before anything was applied).
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// The events kept on this manager (see [`EventLog`]); never held
    /// across an `.await`.
    pub fn events(&self) -> std::sync::MutexGuard<'_, EventLog> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The state as of the last applied entry, with that entry's index:
    /// whatever state two callers see under the same index is the same.
    pub fn read_indexed(&self) -> (RwLockReadGuard<'_, State>, u64) {
        let guard = self.read();
        let index = self.inner.state_index.load(Ordering::Acquire);
        (guard, index)
    }

    /// Records that the state, whose write lock the caller holds, is as of
    /// entry `index`.
    fn set_index(&self, _held: &std::sync::RwLockWriteGuard<'_, State>, index: u64) {
        self.inner.state_index.store(index, Ordering::Release);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn notify(&self, index: u64) {
        self.inner.applied.send_replace(index);
    }
}

/// What a snapshot holds (serde_json): the state and where it stands.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    state: State,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
}

/// The Raft state machine (`RaftStateMachine`) around [`State`].
pub struct StateMachine {
    db: Arc<Db>,
    /// The log store's shared part: nothing is applied before it is on this
    /// node's disk (see `log_store`'s docs on the leader's own entries).
    log: Arc<LogShared>,
    store: StoreHandle,
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    /// Distinguishes snapshots built at the same log id.
    snapshot_seq: u64,
}

/// Reads the stored snapshot, if any.
pub(super) fn read_snapshot(db: &Database) -> Result<Option<(Meta, Vec<u8>)>, StorageError> {
    let read = || -> Result<Option<(Meta, Vec<u8>)>, AnyError> {
        let tx = db.begin_read().map_err(|e| AnyError::new(&e))?;
        let t = tx.open_table(SNAPSHOT).map_err(|e| AnyError::new(&e))?;
        let meta = t.get(SNAPSHOT_META_KEY).map_err(|e| AnyError::new(&e))?;
        let data = t.get(SNAPSHOT_DATA_KEY).map_err(|e| AnyError::new(&e))?;
        match (meta, data) {
            (Some(m), Some(d)) => {
                let meta: Meta = from_json(m.value()).map_err(|e| AnyError::new(&e))?;
                Ok(Some((meta, d.value().to_vec())))
            }
            _ => Ok(None),
        }
    };
    read().map_err(|e| StorageIOError::read_snapshot(None, e).into())
}

/// Stores a snapshot unless a newer one is already stored (a build racing
/// with an install must not replace the installed, newer snapshot).
fn write_snapshot(db: &Database, meta: &Meta, data: &[u8]) -> Result<(), StorageError> {
    let write = || -> Result<(), AnyError> {
        let meta_bytes = to_json(meta).map_err(|e| AnyError::new(&e))?;
        let tx = db.begin_write().map_err(|e| AnyError::new(&e))?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(|e| AnyError::new(&e))?;
            let stored: Option<Meta> =
                match t.get(SNAPSHOT_META_KEY).map_err(|e| AnyError::new(&e))? {
                    Some(m) => Some(from_json(m.value()).map_err(|e| AnyError::new(&e))?),
                    None => None,
                };
            if stored.is_some_and(|s| s.last_log_id > meta.last_log_id) {
                return Ok(());
            }
            t.insert(SNAPSHOT_META_KEY, meta_bytes.as_slice())
                .map_err(|e| AnyError::new(&e))?;
            t.insert(SNAPSHOT_DATA_KEY, data)
                .map_err(|e| AnyError::new(&e))?;
        }
        tx.commit().map_err(|e| AnyError::new(&e))
    };
    write().map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e).into())
}

impl StateMachine {
    /// Opens the state machine on the shared database, restoring the stored
    /// snapshot if there is one. `log` is the log store's shared part.
    pub(super) fn open(db: Arc<Db>, log: Arc<LogShared>) -> Result<Self, StorageError> {
        let (state, last_applied, last_membership) = match read_snapshot(&db)? {
            Some((meta, data)) => {
                let snap: SnapshotData = from_json(&data).map_err(|e| {
                    StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
                })?;
                (snap.state, meta.last_log_id, meta.last_membership)
            }
            None => (State::default(), None, Membership::default()),
        };
        let index = last_applied.map_or(0, |l| l.index);
        Ok(StateMachine {
            db,
            log,
            store: StoreHandle::new(state, index),
            last_applied,
            last_membership,
            snapshot_seq: 0,
        })
    }

    /// The membership of the stored snapshot (what was applied up to it).
    pub(super) fn snapshot_membership(&self) -> &Membership {
        &self.last_membership
    }

    /// The read handle the rest of the manager uses.
    pub fn store(&self) -> StoreHandle {
        self.store.clone()
    }
}

/// Builds a snapshot from a copy of the state taken when the build was
/// requested; applying continues meanwhile.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    data: SnapshotData,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let last = self.data.last_applied;
        let meta = Meta {
            last_log_id: last,
            last_membership: self.data.membership.clone(),
            snapshot_id: match last {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.seq),
                None => format!("none-{}", self.seq),
            },
        };
        let bytes = to_json(&self.data).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        let db = self.db.clone();
        let (meta, bytes) = blocking(move || {
            write_snapshot(&db, &meta, &bytes)?;
            Ok((meta, bytes))
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            self.log.wait_durable(last.log_id).await?;
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut changes = Vec::new();
        {
            let mut state = self.store.write();
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => out.push(BatchResult::default()),
                    EntryPayload::Normal(batch) => {
                        let mut made = Vec::new();
                        let results = batch
                            .commands
                            .iter()
                            .map(|c| {
                                let was = events::before(&state, c);
                                let r = state.apply(c);
                                if r.is_ok() {
                                    made.extend(events::after(&state, c, was));
                                }
                                r
                            })
                            .collect();
                        changes.push((entry.log_id.index, batch.time_ms, made));
                        out.push(BatchResult(results));
                    }
                    EntryPayload::Membership(m) => {
                        self.last_membership = Membership::new(Some(entry.log_id), m);
                        out.push(BatchResult::default());
                    }
                }
            }
            if let Some(l) = self.last_applied {
                self.store.set_index(&state, l.index);
            }
        }
        if !changes.is_empty() {
            let mut log = self.store.events();
            for (index, time_ms, made) in changes {
                log.push_entry(index, time_ms, made);
            }
        }
        if let Some(l) = self.last_applied {
            self.store.notify(l.index);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            db: self.db.clone(),
            data: SnapshotData {
                state: self.store.read().clone(),
                last_applied: self.last_applied,
                membership: self.last_membership.clone(),
            },
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = from_json(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        let db = self.db.clone();
        let stored_meta = meta.clone();
        blocking(move || write_snapshot(&db, &stored_meta, &bytes)).await?;
        {
            let mut state = self.store.write();
            *state = data.state;
            self.store
                .set_index(&state, meta.last_log_id.map_or(0, |l| l.index));
        }
        self.store
            .events()
            .reset(meta.last_log_id.map_or(0, |l| l.index));
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.store.notify(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let stored = blocking(move || read_snapshot(&db)).await?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
