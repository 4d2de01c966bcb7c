//! Recovery from the loss of a majority of managers (`weft init
//! --force-new-cluster`): an offline rewrite of one manager's Raft storage
//! that makes it the only voter, keeping everything it holds.
//!
//! Raft cannot change its voters without a quorum of the old ones, so the
//! change is written straight into the log while Raft is stopped:
//!
//! ```text
//!  before:  ... [e: L, term t] ............................ vote (t', X)
//!  after:   ... [e: L, term t] [membership {me}: L+1, term T]  vote (T, me), not committed
//!                                 T = 1 + the highest term in the log, the
//!                                 snapshot and the vote
//! ```
//!
//! What openraft 0.9 does with that when the directory is opened again:
//! - The effective membership is the last membership entry in the log,
//!   committed or not (`StorageHelper::get_membership`), so this node is the
//!   only voter at once.
//! - A node that is the only voter elects itself on the first election tick
//!   (`RaftCore::handle_tick_election`), at term T + 1: higher than any term
//!   the old group ever used, so no message of the old group can be
//!   mistaken for a newer one.
//! - A new leader appends a blank entry of its own term; committing it (its
//!   own fsync is a quorum of one) commits every entry before it, the
//!   membership entry included, and they are applied in order. Nothing this
//!   node held is lost; whatever the lost managers committed and this node
//!   never received is.
//!
//! The vote is written before the entry: a crash that tears the write after
//! the vote leaves a node that only campaigned at a higher term, as after
//! any election timeout. When the snapshot reaches past the log (a snapshot
//! was installed and the purge that follows it, a hint, was lost in a
//! crash), the log is purged up to the snapshot first, as openraft itself
//! does at startup: the new entry must follow the last entry this node
//! knows of, or openraft would purge it away as part of that hole.
//!
//! Must not: run while the directory is open (the redb file lock, taken
//! here, refuses that), or decide whether a recovery is wise: the caller
//! checks that the other managers are really unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};

use super::error::Error;
use super::log_store::{Db, check_log_present, open_db};
use super::state_machine::read_snapshot;
use super::wal::{LogImage, RecOut, Wal};
use super::{RaftNode, TypeConfig};
use crate::store::NodeId;

/// What [`force_single_voter`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedMembership {
    /// The voters of the membership that was in effect before.
    pub previous_voters: BTreeSet<NodeId>,
    /// The log id of the new membership entry (this node the only voter).
    pub log_id: LogId<NodeId>,
    /// The log was purged up to the snapshot first (see the module docs).
    pub purged_to_snapshot: bool,
}

/// Rewrites the stopped Raft storage in `dir` so that `node_id`, reachable
/// at `addr`, is the only voter of its group; everything the node holds is
/// kept. See the module docs for what openraft makes of it.
///
/// Refused when the directory holds no group ([`Error::NotInitialized`]),
/// when `node_id` is not a voter of the membership in effect
/// ([`Error::NotVoter`]: a learner may lack committed entries), and when the
/// directory is open (redb's file lock: [`Error::OpenDb`]).
pub fn force_single_voter(
    dir: &Path,
    node_id: NodeId,
    addr: &str,
) -> Result<ForcedMembership, Error> {
    let (_db, snapshot, mut wal, image) = open_stopped(dir)?;
    let snapshot_last = snapshot.as_ref().and_then(|m| m.last_log_id);
    let log_last = image.log.last_key_value().map(|(_, e)| e.log_id);
    let last = [log_last, image.last_purged, snapshot_last]
        .into_iter()
        .flatten()
        .max_by_key(|l| l.index);
    let Some(last) = last else {
        return Err(Error::NotInitialized {
            dir: dir.to_path_buf(),
        });
    };

    let previous_voters = effective_voters(&image, snapshot.as_ref());
    if !previous_voters.contains(&node_id) {
        return Err(Error::NotVoter {
            node: node_id,
            voters: previous_voters.into_iter().collect(),
        });
    }

    let highest_term = image
        .log
        .values()
        .map(|e| e.log_id.leader_id.term)
        .chain(image.last_purged.map(|l| l.leader_id.term))
        .chain(snapshot_last.map(|l| l.leader_id.term))
        .chain(image.vote.map(|v| v.leader_id().term))
        .max()
        .unwrap_or(0);
    let term = highest_term + 1;
    let log_id = LogId::new(CommittedLeaderId::new(term, node_id), last.index + 1);
    let entry = Entry::<TypeConfig> {
        log_id,
        payload: EntryPayload::Membership(Membership::new(
            vec![BTreeSet::from([node_id])],
            BTreeMap::from([(
                node_id,
                RaftNode {
                    addr: addr.to_string(),
                },
            )]),
        )),
    };
    let log_known = log_last.or(image.last_purged).map(|l| l.index);
    let purge_to = snapshot_last.filter(|s| log_known.is_none_or(|l| l < s.index));
    let mut recs = Vec::new();
    if let Some(s) = purge_to {
        recs.push(RecOut::Purge(s));
    }
    recs.push(RecOut::Vote(Vote::new(term, node_id)));
    let entries = [entry];
    recs.push(RecOut::Entries(&entries));
    wal.write(&recs, true).map_err(Error::Wal)?;
    tracing::warn!(
        node = %node_id,
        ?previous_voters,
        %log_id,
        "Raft storage rewritten: this manager is now the only voter"
    );
    Ok(ForcedMembership {
        previous_voters,
        log_id,
        purged_to_snapshot: purge_to.is_some(),
    })
}

/// The voters of the membership in effect in the stopped Raft storage in
/// `dir` (the later of the last one in the log and the snapshot's), read
/// as they are. A daemon asks this before it starts a manager
/// whose certificate expired offline: a manager that is the only voter can
/// sign a new certificate for itself, as nobody else could.
///
/// Refused as [`force_single_voter`] is, when the directory holds no group
/// or is open.
pub fn voters_on_disk(dir: &Path) -> Result<BTreeSet<NodeId>, Error> {
    let (_db, snapshot, _wal, image) = open_stopped(dir)?;
    Ok(effective_voters(&image, snapshot.as_ref()))
}

type SnapshotMeta = openraft::SnapshotMeta<NodeId, RaftNode>;

/// Opens the stopped storage in `dir`: redb (its file lock held while the
/// returned handle lives), the snapshot's metadata, and the log file.
fn open_stopped(dir: &Path) -> Result<(Arc<Db>, Option<SnapshotMeta>, Wal, LogImage), Error> {
    if !dir
        .join(super::DB_FILE)
        .try_exists()
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
    {
        return Err(Error::NotInitialized {
            dir: dir.to_path_buf(),
        });
    }
    let (db, _closed) = open_db(dir)?;
    // Refuses a log file missing beside a snapshot, as opening Raft does.
    check_log_present(&db, dir)?;
    let snapshot = read_snapshot(&db)
        .map_err(|e| Error::Snapshot(Box::new(e)))?
        .map(|(meta, _)| meta);
    let (wal, image) = Wal::open(dir).map_err(Error::Wal)?;
    Ok((db, snapshot, wal, image))
}

/// The voters of the effective membership: the later of the last one in the
/// log and the snapshot's.
fn effective_voters(image: &LogImage, snapshot: Option<&SnapshotMeta>) -> BTreeSet<NodeId> {
    let in_log = image.log.values().rev().find_map(|e| match &e.payload {
        EntryPayload::Membership(m) => Some((Some(e.log_id), m)),
        _ => None,
    });
    let in_snapshot =
        snapshot.map(|m| (*m.last_membership.log_id(), m.last_membership.membership()));
    let effective = [in_log, in_snapshot]
        .into_iter()
        .flatten()
        .max_by_key(|(log_id, _)| *log_id);
    effective
        .map(|(_, m)| m.voter_ids().collect())
        .unwrap_or_default()
}
