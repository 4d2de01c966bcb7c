//! `force_single_voter` on the real directory of a manager whose two peers
//! are lost: what it writes, and what Raft makes of it when the directory is
//! opened again (the node the only voter and leader, its state intact,
//! writes accepted), also when the membership is only in the snapshot and
//! when the snapshot reaches past the log.

use std::collections::BTreeSet;

use openraft::EntryPayload;
use tempfile::TempDir;

use super::cluster::{TestNode, WAIT, settings as base_settings, three_node_cluster, worker};
use crate::raft::error::Error;
use crate::raft::wal::{RecOut, Wal};
use crate::raft::{RaftSettings, force_single_voter, voters_on_disk};
use crate::store::{NodeId, State};

/// A three-manager group with two workers written; every manager stopped.
/// Returns the survivor (the third manager, a follower), its address and
/// state, and every voter.
async fn lose_two_of_three(
    dirs: &[TempDir; 3],
    settings: RaftSettings,
) -> (NodeId, String, State, BTreeSet<NodeId>) {
    let mut nodes = three_node_cluster(dirs, settings).await;
    for (i, id) in [0xe1, 0xe2].into_iter().enumerate() {
        let r = nodes[i]
            .raft
            .propose(worker(id, "w"))
            .await
            .expect("propose");
        assert!(r.is_ok(), "{r:?}");
    }
    let survivor = &nodes[2];
    survivor
        .wait_store("both writes on the survivor", |s| {
            s.nodes.contains_key(&NodeId(0xe1)) && s.nodes.contains_key(&NodeId(0xe2))
        })
        .await;
    let (id, addr, state) = (
        survivor.id,
        survivor.addr.clone(),
        survivor.raft.store().read().clone(),
    );
    let voters = nodes.iter().map(|n| n.id).collect();
    for n in &mut nodes {
        n.stop().await;
    }
    (id, addr, state, voters)
}

/// Makes `node` build a snapshot of its whole log; returns its last index.
pub(super) async fn snapshot_everything(node: &TestNode) -> u64 {
    let raft = node.raft.raft();
    // A restarted node reports its log in its metrics a moment after it
    // has re-applied it: wait for that instead of reading them at once.
    let last = raft
        .wait(Some(WAIT))
        .metrics(|m| m.last_log_index.is_some(), "a log in the metrics")
        .await
        .expect("a log")
        .last_log_index
        .expect("a log");
    raft.trigger().snapshot().await.expect("snapshot");
    raft.wait(Some(WAIT))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= last), "snapshot")
        .await
        .expect("snapshot built");
    node.raft.metrics().snapshot_index.expect("snapshot")
}

/// Reopens the forced directory: the node must lead alone with `state`
/// intact and take a write.
async fn assert_leads_alone(id: NodeId, dir: &TempDir, addr: &str, state: &State) {
    let mut node = TestNode::start(id, dir.path(), Some(addr), base_settings()).await;
    node.wait_store("state restored", |s| s == state).await;
    assert_eq!(node.wait_leader("a leader").await, id);
    let m = node.raft.metrics();
    assert_eq!(m.voters.keys().copied().collect::<Vec<_>>(), [id]);
    assert_eq!(m.voters[&id], addr, "its address is kept");
    assert!(m.learners.is_empty(), "{m:?}");
    let r = node
        .raft
        .propose(worker(0xe3, "after"))
        .await
        .expect("propose");
    assert!(r.is_ok(), "{r:?}");
    let after = node.raft.store().read().clone();
    assert_eq!(after.nodes.len(), state.nodes.len() + 1);
    for (nid, n) in &state.nodes {
        assert_eq!(after.nodes.get(nid), Some(n), "node {nid} kept");
    }
    assert_eq!(after.cluster, state.cluster);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivor_of_three_becomes_the_only_voter_with_its_state() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let (id, addr, state, voters) = lose_two_of_three(&dirs, base_settings()).await;

    let (_, before) = Wal::open(dirs[2].path()).expect("read log");
    let old_last = before
        .log
        .last_key_value()
        .map(|(_, e)| e.log_id)
        .expect("a log");
    let old_term = before.vote.expect("a vote").leader_id().term;

    assert_eq!(voters_on_disk(dirs[2].path()).expect("voters"), voters);
    let forced = force_single_voter(dirs[2].path(), id, &addr).expect("force");
    assert_eq!(forced.previous_voters, voters);
    assert_eq!(
        voters_on_disk(dirs[2].path()).expect("voters"),
        BTreeSet::from([id]),
        "the only voter, as a daemon reads it before starting the manager"
    );
    assert!(!forced.purged_to_snapshot);
    assert_eq!(forced.log_id.index, old_last.index + 1);
    assert!(forced.log_id.leader_id.term > old_term.max(old_last.leader_id.term));

    // What is on disk, read back independently of Raft.
    let (_, after) = Wal::open(dirs[2].path()).expect("read log");
    let last = after.log.last_key_value().map(|(_, e)| e).expect("entry");
    assert_eq!(last.log_id, forced.log_id);
    match &last.payload {
        EntryPayload::Membership(m) => {
            assert_eq!(m.voter_ids().collect::<Vec<_>>(), [id]);
            assert_eq!(
                m.get_node(&id).map(|n| n.addr.as_str()),
                Some(addr.as_str())
            );
        }
        other => panic!("not a membership entry: {other:?}"),
    }
    let vote = after.vote.expect("vote");
    assert_eq!(vote.leader_id().voted_for(), Some(id));
    assert_eq!(vote.leader_id().term, forced.log_id.leader_id.term);
    assert!(!vote.is_committed(), "it must win an election first");
    assert_eq!(
        after.log.range(..=old_last.index).count(),
        before.log.len(),
        "the old log is kept"
    );

    assert_leads_alone(id, &dirs[2], &addr, &state).await;
    // Forcing again on the new group (after the restart above) works the
    // same way: the node is still the only voter.
    let again = force_single_voter(dirs[2].path(), id, &addr).expect("force again");
    assert_eq!(again.previous_voters, BTreeSet::from([id]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_when_the_membership_is_only_in_the_snapshot() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let mut s = base_settings();
    s.keep_logs_after_snapshot = 0;
    let mut nodes = three_node_cluster(&dirs, s).await;
    for i in 0..5u64 {
        let r = nodes[0]
            .raft
            .propose(worker(0xd0 + i, "w"))
            .await
            .expect("propose");
        assert!(r.is_ok(), "{r:?}");
    }
    // The survivor snapshots everything it has and purges its whole log:
    // no membership entry is left in it, and nothing follows the snapshot.
    let survivor = &nodes[2];
    survivor
        .wait_store("writes applied", |st| st.nodes.contains_key(&NodeId(0xd4)))
        .await;
    let last = snapshot_everything(survivor).await;
    assert_eq!(survivor.raft.metrics().last_log_index, Some(last));
    survivor
        .raft
        .raft()
        .trigger()
        .purge_log(last)
        .await
        .expect("purge");
    survivor
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index == last), "purged")
        .await
        .expect("log purged");
    let (id, addr, state) = (
        survivor.id,
        survivor.addr.clone(),
        survivor.raft.store().read().clone(),
    );
    let voters: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();
    for n in &mut nodes {
        n.stop().await;
    }
    let (_, before) = Wal::open(dirs[2].path()).expect("read log");
    assert!(before.log.is_empty(), "{:?}", before.log.keys());

    let forced = force_single_voter(dirs[2].path(), id, &addr).expect("force");
    assert_eq!(forced.previous_voters, voters, "read from the snapshot");
    assert_eq!(forced.log_id.index, last + 1);
    assert!(!forced.purged_to_snapshot);
    assert_leads_alone(id, &dirs[2], &addr, &state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_when_the_snapshot_reaches_past_the_log() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let (id, addr, state, _) = lose_two_of_three(&dirs, base_settings()).await;
    // What a crash can leave on a follower that installed a snapshot: the
    // snapshot is stored, the purge after it (a hint) is not, and the log
    // ends before the snapshot. Acted out with a snapshot of everything and
    // the log's last entries cut.
    let snap_last = {
        let node = TestNode::start(id, dirs[2].path(), Some(&addr), base_settings()).await;
        node.wait_store("restored", |s| *s == state).await;
        let last = snapshot_everything(&node).await;
        let mut node = node;
        node.stop().await;
        last
    };
    {
        let (mut wal, _) = Wal::open(dirs[2].path()).expect("open log");
        wal.write(&[RecOut::Truncate(snap_last - 2)], true)
            .expect("cut the log");
    }

    let forced = force_single_voter(dirs[2].path(), id, &addr).expect("force");
    assert!(forced.purged_to_snapshot);
    assert_eq!(forced.log_id.index, snap_last + 1);
    let (_, after) = Wal::open(dirs[2].path()).expect("read log");
    assert_eq!(after.last_purged.map(|p| p.index), Some(snap_last));
    assert_eq!(
        after.log.keys().copied().collect::<Vec<_>>(),
        [snap_last + 1]
    );
    assert_leads_alone(id, &dirs[2], &addr, &state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_a_group_for_a_non_voter_and_while_open() {
    let empty = tempfile::tempdir().expect("tempdir");
    let err = force_single_voter(empty.path(), NodeId(1), "127.0.0.1:1").unwrap_err();
    assert!(matches!(err, Error::NotInitialized { .. }), "{err}");
    assert!(
        std::fs::read_dir(empty.path())
            .expect("dir")
            .next()
            .is_none(),
        "nothing is created in an empty directory"
    );

    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let (id, addr, _, _) = lose_two_of_three(&dirs, base_settings()).await;
    let log = dirs[2].path().join(crate::raft::WAL_FILE);
    let bytes = std::fs::read(&log).expect("log");
    let err = force_single_voter(dirs[2].path(), NodeId(0x99), &addr).unwrap_err();
    assert!(
        matches!(err, Error::NotVoter { node, .. } if node == NodeId(0x99)),
        "{err}"
    );
    assert!(err.to_string().contains("not a voter"), "{err}");
    assert_eq!(std::fs::read(&log).expect("log"), bytes, "nothing written");

    // While Raft has the directory open, the database lock refuses it.
    let mut node = TestNode::start(id, dirs[2].path(), Some(&addr), base_settings()).await;
    let err = force_single_voter(dirs[2].path(), id, &addr).unwrap_err();
    assert!(matches!(err, Error::OpenDb { .. }), "{err}");
    node.stop().await;
}
