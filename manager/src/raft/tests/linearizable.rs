//! Linearizable reads ([`crate::raft::RaftHandle::linearize`]): a manager
//! whose store is behind the cluster does not answer from it.
//!
//! ```text
//!  restarted follower: store from disk, missing what was committed while
//!                      it was down ─▶ linearize returns once it has it
//!  deposed leader:     cut off, the others elect a leader and commit w2
//!                      ─▶ linearize fails; it never says "no w2"
//! ```

use std::time::Duration;

use super::cluster::{TestNode, settings, three_node_cluster, worker};
use super::silent_leader::{cluster_behind_proxy, silence_leader, stop_behind_proxy};
use crate::raft::ReadError;
use crate::store::NodeId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_reads_every_write_committed_while_it_was_down() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let mut nodes = three_node_cluster(&dirs, settings()).await;
    let (id, addr) = (nodes[2].id, nodes[2].addr.clone());
    nodes[2].stop().await;
    for i in 0..20u64 {
        let r = nodes[0]
            .raft
            .propose(worker(0xc00 + i, &format!("w{i}")))
            .await;
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    }
    let last = NodeId(0xc00 + 19);
    let back = TestNode::start(id, dirs[2].path(), Some(&addr), settings()).await;
    // Right after the restart its store is what it had on disk.
    let stale = !back.raft.store().read().nodes.contains_key(&last);
    let index = back.raft.linearize().await.expect("a linearizable read");
    assert!(
        back.raft.store().read().nodes.contains_key(&last),
        "linearize returned (at {index:?}) before the last committed write was applied"
    );
    eprintln!("restarted follower: stale before = {stale}, caught up to {index:?}");
    nodes[2] = back;
    for n in &mut nodes {
        n.stop().await;
    }
}

fn has_w2(n: &TestNode) -> bool {
    n.raft.store().read().nodes.contains_key(&NodeId(0xd2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_refuses_reads_instead_of_answering_stale() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let mut quick = settings();
    quick.propose_timeout = Duration::from_secs(6);
    let (proxy, nodes) = cluster_behind_proxy(&dirs, quick).await;
    let old = nodes[0].id;
    nodes[0].raft.linearize().await.expect("the leader reads");

    // The leader is cut off from what the others send it, and stops its
    // heartbeats: they elect another leader and commit w2 without it.
    silence_leader(&proxy, &nodes);
    let new = nodes[1]
        .raft
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != old),
            "a new leader",
        )
        .await
        .expect("a new leader")
        .current_leader;
    let r = nodes[1].raft.propose(worker(0xd2, "w2")).await;
    assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    nodes[1]
        .raft
        .linearize()
        .await
        .expect("a member of the majority reads");
    assert!(has_w2(&nodes[1]));

    // The old leader's store lacks w2: a plain read there is stale. A
    // linearizable one is refused.
    assert!(!has_w2(&nodes[0]), "the old leader cannot have w2");
    match nodes[0].raft.linearize().await {
        Err(e @ (ReadError::NoLeader { .. } | ReadError::Behind { .. })) => {
            eprintln!("deposed leader {old} (new: {new:?}) refused the read: {e}");
        }
        other => panic!("the deposed leader answered a read without w2: {other:?}"),
    }
    assert!(!has_w2(&nodes[0]), "the old leader cannot have w2");

    stop_behind_proxy(proxy, nodes).await;
}
