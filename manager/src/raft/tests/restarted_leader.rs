//! A manager that led before it stopped starts again as a follower (unless
//! it is the only voter): it must win an election in a later term before it
//! leads, so it cannot write new entries under log ids of entries it lost
//! (see `LogStore::restart_as_follower`).

use std::time::Duration;

use openraft::ServerState;

use super::cluster::{TestNode, WAIT, settings, three_node_cluster, worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_of_three_does_not_lead_its_old_term_again() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let mut nodes = three_node_cluster(&dirs, settings()).await;
    let r = nodes[0].raft.propose(worker(0xb1, "w1")).await;
    assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    let leader = nodes[0].id;
    let term = nodes[0].raft.raft().metrics().borrow().current_term;
    for n in &mut nodes {
        n.stop().await;
    }

    // Alone, the old leader has no quorum: it may campaign, never lead.
    let addr = nodes[0].addr.clone();
    let mut alone = TestNode::start(leader, dirs[0].path(), Some(&addr), settings()).await;
    let mut metrics = alone.raft.raft().metrics();
    let watched = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            {
                let m = metrics.borrow_and_update();
                assert_ne!(
                    m.state,
                    ServerState::Leader,
                    "the restarted leader leads term {} again without an election",
                    m.current_term
                );
                assert_ne!(m.current_leader, Some(leader), "it names itself leader");
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(watched.is_err(), "Raft stopped");

    // With a peer back it wins an election, in a later term, and writes.
    let peer_addr = nodes[1].addr.clone();
    let mut peer = TestNode::start(nodes[1].id, dirs[1].path(), Some(&peer_addr), settings()).await;
    let m = alone
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .expect("a leader");
    assert!(
        m.current_term > term,
        "term {} after {term}",
        m.current_term
    );
    let writer = if alone.raft.is_leader() {
        &alone
    } else {
        &peer
    };
    let r = writer.raft.propose(worker(0xb2, "w2")).await;
    assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    alone.stop().await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_voter_leads_again_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(openraft_id(), dir.path(), None, settings()).await;
    node.raft
        .initialize_single(&node.addr.clone())
        .await
        .expect("initialize");
    node.wait_leader("first leader").await;
    let term = node.raft.raft().metrics().borrow().current_term;
    let addr = node.addr.clone();
    node.stop().await;
    let mut node = TestNode::start(openraft_id(), dir.path(), Some(&addr), settings()).await;
    // Leading again without an election keeps the term.
    let m = node
        .raft
        .raft()
        .wait(Some(WAIT))
        .state(ServerState::Leader, "leads again")
        .await
        .expect("leads again");
    assert_eq!(m.current_term, term, "{m:?}");
    node.stop().await;
}

fn openraft_id() -> crate::store::NodeId {
    crate::store::NodeId(0xc1)
}
