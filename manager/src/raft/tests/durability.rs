//! The log store's durability contract around the leader's early
//! `LogFlushed` (see `log_store`'s module docs): entries of other leaders
//! are on disk before their append completes; the leader's own may not be,
//! but nothing is applied, and no commit index beyond them is announced,
//! until they are. Also: the log survives a reopen, and a missing log file
//! is refused beside a database that holds Raft state.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use redb::TableDefinition;

use crate::raft::log_store::{SNAPSHOT, SNAPSHOT_META_KEY, open_db};
use crate::raft::{Batch, Error, LogStore, TypeConfig, WAL_FILE};
use crate::store::NodeId;

const ME: NodeId = NodeId(7);
const OTHER: NodeId = NodeId(9);

fn entry(term: u64, leader: NodeId, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
        payload: EntryPayload::Normal(Batch::default()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_append_durably_and_leaders_apply_only_durable_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = {
        let (db, closed) = open_db(dir.path()).expect("open redb");
        let mut log = LogStore::open(db, dir.path(), ME).expect("open log");
        let shared = log.shared();

        // A follower of OTHER: the append completes only once it is on disk.
        let mut vote = Vote::new(1, OTHER);
        vote.commit();
        log.save_vote(&vote).await.expect("vote");
        log.blocking_append([entry(1, OTHER, 1), entry(1, OTHER, 2)])
            .await
            .expect("append");
        assert!(shared.durable().borrow().covers(2));
        assert_eq!(shared.clamp_commit(entry(1, OTHER, 2).log_id), None);

        // Leader of term 2: its own entries may complete before the fsync,
        // but waiting for them to be applicable means waiting for the disk.
        let mut vote = Vote::new(2, ME);
        vote.commit();
        log.save_vote(&vote).await.expect("vote");
        for i in 3..=40 {
            log.blocking_append([entry(2, ME, i)])
                .await
                .expect("append");
        }
        let last = entry(2, ME, 40).log_id;
        shared.wait_durable(last).await.expect("durable");
        assert!(shared.durable().borrow().covers(40));
        assert_eq!(shared.clamp_commit(last), None, "durable: nothing to clamp");

        log.save_committed(Some(entry(2, ME, 30).log_id))
            .await
            .expect("committed");
        log.purge(entry(1, OTHER, 1).log_id).await.expect("purge");
        log.truncate(entry(2, ME, 39).log_id)
            .await
            .expect("truncate");
        closed
    };
    // The writer thread releases the database (and the log file) as it
    // ends, after the last store is dropped: wait for exactly that.
    let _ = closed.await;
    // Everything but the hints was fsynced; the hints were written at close.
    let (db, _closed) = open_db(dir.path()).expect("reopen redb");
    let mut log = LogStore::open(db, dir.path(), ME).expect("reopen log");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(entry(1, OTHER, 1).log_id));
    assert_eq!(state.last_log_id, Some(entry(2, ME, 38).log_id));
    let entries = log.try_get_log_entries(0..100).await.expect("read");
    assert_eq!(entries.first().map(|e| e.log_id.index), Some(2));
    assert_eq!(entries.len(), 37);
    let mut v = Vote::new(2, ME);
    v.commit();
    assert_eq!(log.read_vote().await.expect("vote"), Some(v));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(entry(2, ME, 30).log_id)
    );
}

/// Writes one row into `table` of a fresh database in `dir`, closes it,
/// and opens the log store there (with no log file).
async fn open_beside(
    dir: &std::path::Path,
    table: TableDefinition<'static, &'static str, &'static [u8]>,
    key: &str,
) -> Result<LogStore, Error> {
    let (db, closed) = open_db(dir).expect("open redb");
    let tx = db.begin_write().expect("begin");
    tx.open_table(table)
        .expect("table")
        .insert(key, b"{}".as_slice())
        .expect("insert");
    tx.commit().expect("commit");
    drop(db);
    let _ = closed.await;
    let (db, _closed) = open_db(dir).expect("reopen redb");
    LogStore::open(db, dir, ME)
}

fn assert_refused_missing(res: Result<LogStore, Error>, dir: &std::path::Path, table: &str) {
    let err = match res {
        Err(e @ Error::LogMissing { .. }) => e,
        Err(e) => panic!("expected LogMissing, got {e}"),
        Ok(_) => panic!("a missing log beside Raft state was replaced by an empty one"),
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.join(WAL_FILE).display().to_string()),
        "{msg}"
    );
    assert!(msg.contains(table), "{msg}");
    assert!(!dir.join(WAL_FILE).exists(), "no empty log was created");
}

#[tokio::test]
async fn missing_log_beside_a_snapshot_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let res = open_beside(dir.path(), SNAPSHOT, SNAPSHOT_META_KEY).await;
    assert_refused_missing(res, dir.path(), "raft_snapshot");
}

#[tokio::test]
async fn missing_log_beside_a_vote_of_an_earlier_build_is_refused() {
    // Earlier builds kept the vote in redb, in this table.
    let meta = TableDefinition::new("raft_meta");
    let dir = tempfile::tempdir().expect("tempdir");
    let res = open_beside(dir.path(), meta, "vote").await;
    assert_refused_missing(res, dir.path(), "raft_meta");
}

#[tokio::test]
async fn fresh_directory_gets_a_new_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _closed) = open_db(dir.path()).expect("open redb");
    let mut log = LogStore::open(db, dir.path(), ME).expect("open log");
    assert!(dir.path().join(WAL_FILE).exists());
    assert_eq!(log.read_vote().await.expect("vote"), None);
}

/// Entries keep their time; entries written before batches had one (a plain
/// command list) still read, with time 0.
#[test]
fn batches_carry_their_time_and_old_entries_still_read() {
    use crate::store::{Command, NodeId};
    let cmd = Command::RemoveNode { id: NodeId(7) };
    let b = Batch::at(vec![cmd.clone()], 1_700_000_000_123);
    let json = serde_json::to_string(&b).unwrap();
    assert!(
        json.starts_with(r#"{"time_ms":1700000000123,"commands":["#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<Batch>(&json).unwrap(), b);
    let old = serde_json::to_string(&vec![cmd.clone()]).unwrap();
    assert_eq!(
        serde_json::from_str::<Batch>(&old).unwrap(),
        Batch::at(vec![cmd], 0)
    );
    assert!(serde_json::from_str::<Batch>(r#"{"time_ms":1}"#).is_err());
    assert!(serde_json::from_str::<Batch>("3").is_err());
}
