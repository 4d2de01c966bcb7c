//! `weft doctor raft`: checks a manager's Raft directory offline and says
//! what is wrong, without changing a byte of it.
//!
//! It reads the log file the way a starting manager would (the same
//! header, record and torn-tail rules, [`super::wal`]) but cuts nothing,
//! and reads the snapshot from `raft.redb`. The verdict says what a start
//! would do: run, run after cutting a torn tail, or refuse (and why).

use std::path::{Path, PathBuf};

use openraft::{LogId, Vote};
use redb::{ReadOnlyDatabase, ReadableDatabase};

use super::RaftNode;
use super::log_store::{DB_FILE, SNAPSHOT, SNAPSHOT_META_KEY, from_json};
use super::wal::{self, WAL_FILE, WalError};
use crate::store::NodeId;

/// What a manager would do with this directory at its next start.
#[derive(Debug)]
pub enum Verdict {
    /// Starts as it is.
    Healthy,
    /// Starts after cutting this many bytes of a torn last write.
    TornTail(usize),
    /// Refuses to start: the log is damaged, missing beside a snapshot, or
    /// unreadable. The error says what to do.
    Refused(WalError),
    /// Nothing here: not a manager's Raft directory (or never started).
    Empty,
}

/// What `weft doctor raft` found.
#[derive(Debug)]
pub struct Report {
    /// The directory checked.
    pub dir: PathBuf,
    /// Size of the log file in bytes, if there is one.
    pub log_bytes: Option<u64>,
    /// Entries in the log (after the last purge).
    pub entries: usize,
    /// First and last entry in the log.
    pub first: Option<LogId<NodeId>>,
    /// The last entry.
    pub last: Option<LogId<NodeId>>,
    /// The last entry removed behind a snapshot.
    pub purged: Option<LogId<NodeId>>,
    /// The vote (term, candidate, committed).
    pub vote: Option<Vote<NodeId>>,
    /// The committed log id the log records.
    pub committed: Option<LogId<NodeId>>,
    /// The snapshot's last log id, if there is a snapshot.
    pub snapshot: Option<LogId<NodeId>>,
    /// Why the snapshot could not be read (e.g. a running daemon holds it).
    pub snapshot_error: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
}

impl std::fmt::Display for Report {
    /// The report as `weft doctor raft` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = |l: Option<LogId<NodeId>>| {
            l.map_or("-".to_string(), |l| {
                format!("term {} index {}", l.leader_id.term, l.index)
            })
        };
        writeln!(f, "Raft directory: {}", self.dir.display())?;
        match self.log_bytes {
            Some(b) => writeln!(f, " Log file: {b} bytes, {} entries", self.entries)?,
            None => writeln!(f, " Log file: none")?,
        }
        writeln!(f, " First entry: {}", id(self.first))?;
        writeln!(f, " Last entry: {}", id(self.last))?;
        writeln!(f, " Committed: {}", id(self.committed))?;
        writeln!(f, " Purged up to: {}", id(self.purged))?;
        let vote = self.vote.map_or("-".to_string(), |v| {
            format!(
                "term {} for node {}{}",
                v.leader_id.term,
                v.leader_id
                    .voted_for()
                    .map_or("-".into(), |n| n.to_string()),
                if v.committed { " (as leader)" } else { "" }
            )
        });
        writeln!(f, " Vote: {vote}")?;
        match (&self.snapshot, &self.snapshot_error) {
            (_, Some(e)) => writeln!(f, " Snapshot: not read: {e}")?,
            (Some(s), None) => writeln!(f, " Snapshot: up to {}", id(Some(*s)))?,
            (None, None) => writeln!(f, " Snapshot: none")?,
        }
        match &self.verdict {
            Verdict::Healthy => write!(f, "Verdict: healthy; a manager starts on it as it is"),
            Verdict::Empty => write!(
                f,
                "Verdict: no Raft state here (not a manager, or never started)"
            ),
            Verdict::TornTail(n) => write!(
                f,
                "Verdict: the log ends in a torn write of {n} bytes (a crash or power loss \
                 during the last append, never acknowledged); the next start cuts it and runs"
            ),
            Verdict::Refused(e) => write!(f, "Verdict: the next start refuses it: {e}"),
        }
    }
}

/// Checks the Raft directory `dir` (a data directory's `raft/`).
pub fn check(dir: &Path) -> Report {
    let mut report = Report {
        dir: dir.to_path_buf(),
        log_bytes: None,
        entries: 0,
        first: None,
        last: None,
        purged: None,
        vote: None,
        committed: None,
        snapshot: None,
        snapshot_error: None,
        verdict: Verdict::Empty,
    };
    let db_path = dir.join(DB_FILE);
    if db_path.exists() {
        match read_snapshot(&db_path) {
            Ok(s) => report.snapshot = s,
            Err(e) => report.snapshot_error = Some(e),
        }
    }
    let log = dir.join(WAL_FILE);
    let bytes = match std::fs::read(&log) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if report.snapshot.is_some() {
                report.verdict = Verdict::Refused(WalError::Io {
                    path: log,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the log file is missing beside a snapshot: a manager refuses to \
                         start without its vote and log; rejoin this node as a fresh manager",
                    ),
                });
            }
            return report;
        }
        Err(source) => {
            report.verdict = Verdict::Refused(WalError::Io { path: log, source });
            return report;
        }
    };
    report.log_bytes = Some(bytes.len() as u64);
    match wal::inspect(&log, &bytes) {
        Ok((image, keep)) => {
            report.entries = image.log.len();
            report.first = image.log.values().next().map(|e| e.log_id);
            report.last = image.log.values().next_back().map(|e| e.log_id);
            report.purged = image.last_purged;
            report.vote = image.vote;
            report.committed = image.committed;
            report.verdict = if keep < bytes.len() {
                Verdict::TornTail(bytes.len() - keep)
            } else {
                Verdict::Healthy
            };
        }
        Err(e) => report.verdict = Verdict::Refused(e),
    }
    report
}

/// The last log id of the snapshot in `raft.redb`, read-only.
fn read_snapshot(path: &Path) -> Result<Option<LogId<NodeId>>, String> {
    // Read-only: `Database::open` writes the header, and after a crash
    // repairs the file, which a checker must never do.
    let db = ReadOnlyDatabase::open(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            "a running weft daemon holds this file: stop it to check the snapshot".to_string()
        }
        redb::DatabaseError::RepairAborted => {
            "the file was not shut down cleanly; the next start repairs it".to_string()
        }
        e => e.to_string(),
    })?;
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let table = match tx.open_table(SNAPSHOT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let Some(meta) = table.get(SNAPSHOT_META_KEY).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let meta: openraft::SnapshotMeta<NodeId, RaftNode> =
        from_json(meta.value()).map_err(|e| e.to_string())?;
    Ok(meta.last_log_id)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::raft::wal::{RecOut, Wal};
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn entry(index: u64) -> Entry<crate::raft::TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, NodeId(1)), index),
            payload: EntryPayload::Blank,
        }
    }

    fn log_with_entries(dir: &Path) {
        let (mut w, _) = Wal::open(dir).expect("open");
        let es: Vec<_> = (1..=5).map(entry).collect();
        w.write(
            &[RecOut::Vote(Vote::new(3, NodeId(1))), RecOut::Entries(&es)],
            true,
        )
        .expect("write");
        w.write(&[RecOut::Committed(Some(es[3].log_id))], true)
            .expect("write");
    }

    #[test]
    fn a_healthy_log_is_described() {
        let d = tempfile::tempdir().expect("dir");
        log_with_entries(d.path());
        let r = check(d.path());
        assert!(matches!(r.verdict, Verdict::Healthy), "{r:?}");
        assert_eq!(r.entries, 5);
        assert_eq!(r.first.map(|l| l.index), Some(1));
        assert_eq!(r.last.map(|l| l.index), Some(5));
        assert_eq!(r.committed.map(|l| l.index), Some(4));
        assert_eq!(r.vote, Some(Vote::new(3, NodeId(1))));
    }

    #[test]
    fn the_snapshot_database_is_read_without_a_write() {
        let d = tempfile::tempdir().expect("dir");
        log_with_entries(d.path());
        drop(crate::raft::log_store::open_db(d.path()).expect("db"));
        let db = d.path().join(DB_FILE);
        let before = std::fs::read(&db).expect("read");
        let r = check(d.path());
        assert!(r.snapshot_error.is_none(), "{r:?}");
        assert_eq!(
            std::fs::read(&db).expect("read"),
            before,
            "raft.redb untouched"
        );
    }

    #[test]
    fn a_torn_tail_is_reported_and_left_in_place() {
        let d = tempfile::tempdir().expect("dir");
        log_with_entries(d.path());
        let path = d.path().join(WAL_FILE);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(&[0; 4096]).expect("zeros");
        let before = std::fs::read(&path).expect("read");
        let r = check(d.path());
        assert!(matches!(r.verdict, Verdict::TornTail(4096)), "{r:?}");
        assert_eq!(r.entries, 5);
        assert_eq!(std::fs::read(&path).expect("read"), before, "nothing cut");
    }

    #[test]
    fn damage_is_refused_with_its_offset_and_left_in_place() {
        let d = tempfile::tempdir().expect("dir");
        log_with_entries(d.path());
        let path = d.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.len() / 3;
        bytes[at] ^= 0x55;
        std::fs::write(&path, &bytes).expect("write");
        let r = check(d.path());
        match &r.verdict {
            Verdict::Refused(e) => assert!(e.to_string().contains("damaged at byte"), "{e}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
    }

    #[test]
    fn nothing_there_is_empty() {
        let d = tempfile::tempdir().expect("dir");
        assert!(matches!(check(d.path()).verdict, Verdict::Empty));
    }
}
