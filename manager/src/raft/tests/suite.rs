//! openraft's storage test suite against the redb log store and the state
//! machine, each run on a fresh temporary directory.

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use crate::raft::log_store::open_db;
use crate::raft::{LogStore, StateMachine, StorageError, TypeConfig};
use crate::store::NodeId;

struct TempDirBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempDirBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, _closed) = open_db(dir.path()).expect("open redb");
        // An ID the suite never votes for: every append takes the follower
        // path (durable before `LogFlushed`).
        let log = LogStore::open(db.clone(), dir.path(), NodeId(u64::MAX)).expect("open log");
        let sm = StateMachine::open(db, log.shared())?;
        Ok((dir, log, sm))
    }
}

/// Runs synchronously: the suite starts its own tokio runtime per case.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(TempDirBuilder).expect("openraft storage suite");
}
