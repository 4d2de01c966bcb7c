//! Several managers in one process, each with its own redb directory and a
//! real tonic server on 127.0.0.1 (plaintext): election, membership change,
//! forwarded writes, leader loss, restart from disk, snapshots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::raft::{Authorize, ProposeError, RaftHandle, RaftSettings, plaintext_channel_factory};
use crate::store::{Applied, Cluster, ClusterSettings, Command, Node, NodeId, Role, State};

/// Generous bound for conditions on a loaded 2-core machine.
pub(super) const WAIT: Duration = Duration::from_secs(20);

fn allow_all() -> Authorize {
    Arc::new(|_, _| Ok(()))
}

pub(super) fn settings() -> RaftSettings {
    RaftSettings {
        propose_timeout: Duration::from_secs(10),
        ..RaftSettings::default()
    }
}

/// One running manager: Raft plus its gRPC server.
pub(super) struct TestNode {
    pub(super) id: NodeId,
    pub(super) addr: String,
    dir: PathBuf,
    pub(super) raft: RaftHandle,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestNode {
    /// Starts a node on `dir`; `addr` reuses a port (restart) or `None` picks one.
    pub(super) async fn start(
        id: NodeId,
        dir: &Path,
        addr: Option<&str>,
        settings: RaftSettings,
    ) -> TestNode {
        let listener = TcpListener::bind(addr.unwrap_or("127.0.0.1:0"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let raft = RaftHandle::open(dir, id, settings, plaintext_channel_factory())
            .await
            .expect("open raft");
        let (tx, rx) = oneshot::channel::<()>();
        let svc = raft.grpc(allow_all()).into_server();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await
                .expect("serve");
        });
        TestNode {
            id,
            addr,
            dir: dir.to_path_buf(),
            raft,
            stop_server: Some(tx),
            server: Some(server),
        }
    }

    /// Stops Raft and the server, as a crash would (nothing is flushed
    /// beyond what every commit already made durable).
    pub(super) async fn stop(&mut self) {
        self.raft.shutdown().await.expect("shutdown");
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.expect("server task");
        }
    }

    pub(super) async fn wait_leader(&self, msg: &str) -> NodeId {
        let m = self
            .raft
            .raft()
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader.is_some(), msg)
            .await
            .expect("a leader");
        m.current_leader.expect("checked")
    }

    /// Waits until this node's store satisfies `f`.
    pub(super) async fn wait_store(&self, msg: &str, f: impl Fn(&State) -> bool) {
        let store = self.raft.store();
        let mut rx = store.subscribe();
        let res = tokio::time::timeout(WAIT, async {
            loop {
                if f(&store.read()) {
                    return;
                }
                rx.changed().await.expect("store alive");
            }
        })
        .await;
        assert!(res.is_ok(), "node {}: timed out waiting for {msg}", self.id);
    }
}

fn manager(id: NodeId, name: &str) -> Node {
    Node {
        id,
        hostname: name.to_string(),
        role: Role::Manager,
        ..Default::default()
    }
}

fn init_cluster(first: NodeId) -> Command {
    Command::InitCluster {
        cluster: Cluster {
            id: "test-cluster".into(),
            ca_cert_pem: String::new(),
            ca_key_pem: String::new(),
            worker_secret: "w".into(),
            manager_secret: "m".into(),
            settings: ClusterSettings::default(),
            sealed: None,
            secrets_generation: 0,
        },
        node: manager(first, "m1"),
    }
}

pub(super) fn worker(id: u64, name: &str) -> Command {
    Command::AddNode {
        node: Node {
            id: NodeId(id),
            hostname: name.to_string(),
            ..Default::default()
        },
    }
}

/// Starts three managers and forms a 3-voter group led by the first.
pub(super) async fn three_node_cluster(
    dirs: &[TempDir; 3],
    settings: RaftSettings,
) -> Vec<TestNode> {
    three_node_cluster_with(dirs, settings, |addr| addr.to_string()).await
}

/// As [`three_node_cluster`], the first node known to the others by the
/// address `first_addr` maps its listening address to (a proxy in front
/// of it, say).
pub(super) async fn three_node_cluster_with(
    dirs: &[TempDir; 3],
    settings: RaftSettings,
    first_addr: impl FnOnce(&str) -> String,
) -> Vec<TestNode> {
    let ids = [NodeId(0xa1), NodeId(0xa2), NodeId(0xa3)];
    let mut nodes = Vec::new();
    for (id, dir) in ids.iter().zip(dirs) {
        nodes.push(TestNode::start(*id, dir.path(), None, settings.clone()).await);
    }
    nodes[0]
        .raft
        .initialize_single(&first_addr(&nodes[0].addr))
        .await
        .expect("initialize");
    assert_eq!(nodes[0].wait_leader("first leader").await, ids[0]);
    let r = nodes[0]
        .raft
        .propose(init_cluster(ids[0]))
        .await
        .expect("propose");
    assert!(matches!(r, Ok(Applied::Node(_))), "{r:?}");

    for n in &nodes[1..] {
        nodes[0]
            .raft
            .add_learner(n.id, &n.addr, true)
            .await
            .expect("add learner");
    }
    nodes[0]
        .raft
        .change_membership(ids.iter().copied().collect())
        .await
        .expect("change membership");
    for n in &nodes {
        n.raft
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.membership_config.membership().voter_ids().count() == 3,
                "three voters",
            )
            .await
            .expect("membership replicated");
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_elect_forward_and_survive_leader_loss() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let mut nodes = three_node_cluster(&dirs, settings()).await;

    let m = nodes[2].raft.metrics();
    assert_eq!(m.leader, Some(nodes[0].id));
    assert_eq!(m.voters.len(), 3);
    assert!(m.learners.is_empty());
    assert_eq!(m.voters.get(&nodes[0].id), Some(&nodes[0].addr));
    assert!(nodes[0].raft.is_leader() && !nodes[2].raft.is_leader());

    // A follower's write is forwarded to the leader and its result comes back.
    let r = nodes[2]
        .raft
        .propose(worker(0xb1, "w1"))
        .await
        .expect("forwarded");
    assert!(
        matches!(&r, Ok(Applied::Node(n)) if n.id == NodeId(0xb1)),
        "{r:?}"
    );
    // A rejected command is a result, not a transport error.
    let r = nodes[1]
        .raft
        .propose(worker(0xb1, "w1"))
        .await
        .expect("forwarded");
    assert!(r.is_err(), "duplicate must be rejected: {r:?}");
    for n in &nodes {
        n.wait_store("w1 applied", |s| s.nodes.contains_key(&NodeId(0xb1)))
            .await;
    }

    // Kill the leader; a new one appears within a few seconds.
    let old = nodes[0].id;
    nodes[0].stop().await;
    let killed = Instant::now();
    let survivors = &nodes[1..];
    let new_leader = survivors[0]
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != old),
            "a new leader",
        )
        .await
        .expect("new leader")
        .current_leader
        .expect("checked");
    let elapsed = killed.elapsed();
    eprintln!("new leader {new_leader} after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(8),
        "election took {elapsed:?}"
    );

    // Writes continue, from the leader and from the other survivor.
    for (i, n) in survivors.iter().enumerate() {
        let r = n
            .raft
            .propose(worker(0xc0 + i as u64, "w"))
            .await
            .expect("write after failover");
        assert!(r.is_ok(), "{r:?}");
    }
    for n in survivors {
        n.wait_store("post-failover writes", |s| {
            s.nodes.contains_key(&NodeId(0xc0)) && s.nodes.contains_key(&NodeId(0xc1))
        })
        .await;
    }

    // Lose a second manager: no quorum; propose gives up with a clear error.
    let (last, gone) = if survivors[0].id == new_leader {
        (2, 1)
    } else {
        (1, 2)
    };
    nodes[gone].stop().await;
    let mut short = settings();
    short.propose_timeout = Duration::from_secs(4);
    // Re-open the last survivor with a short propose deadline so the test is quick.
    nodes[last].stop().await;
    let dir = nodes[last].dir.clone();
    let addr = nodes[last].addr.clone();
    let mut alone = TestNode::start(nodes[last].id, &dir, Some(&addr), short).await;
    let err = alone
        .raft
        .propose(worker(0xd0, "w"))
        .await
        .expect_err("no quorum");
    assert!(
        matches!(
            err,
            ProposeError::NoLeader {
                reachable: 1,
                total: 3
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("1 of 3 managers reachable"),
        "{err}"
    );
    alone.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_of_every_manager() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let mut nodes = three_node_cluster(&dirs, settings()).await;
    let r = nodes[1]
        .raft
        .propose(worker(0xe1, "kept"))
        .await
        .expect("propose");
    assert!(r.is_ok(), "{r:?}");
    for n in &nodes {
        n.wait_store("e1 applied", |s| s.nodes.contains_key(&NodeId(0xe1)))
            .await;
    }
    let addrs: Vec<(NodeId, String)> = nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    for n in &mut nodes {
        n.stop().await;
    }
    drop(nodes);

    // One manager alone (no quorum, no leader) re-applies its committed log
    // from its own disk.
    let first = TestNode::start(addrs[2].0, dirs[2].path(), Some(&addrs[2].1), settings()).await;
    first
        .wait_store("restored without a leader", |s| {
            s.cluster.is_some() && s.nodes.contains_key(&NodeId(0xe1))
        })
        .await;
    // (Its metrics may still name the old leader from the stored vote.)
    assert!(!first.raft.is_leader());

    // The others come back; a leader is elected and writes work again.
    let mut nodes = vec![first];
    for i in 0..2 {
        nodes
            .push(TestNode::start(addrs[i].0, dirs[i].path(), Some(&addrs[i].1), settings()).await);
    }
    nodes[0].wait_leader("leader after restart").await;
    let r = nodes[0]
        .raft
        .propose(worker(0xe2, "after"))
        .await
        .expect("propose");
    assert!(r.is_ok(), "{r:?}");
    for n in &nodes {
        n.wait_store("all state after restart", |s| {
            s.nodes.contains_key(&NodeId(0xe1)) && s.nodes.contains_key(&NodeId(0xe2))
        })
        .await;
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_log_restores_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = NodeId(0xf1);
    let mut s = settings();
    // Snapshots when this test says: a policy's trigger is skipped while
    // the previous snapshot is still being built, and nothing retriggers
    // it once the writes stop, so under load its snapshots came late.
    s.snapshot_every = 1_000_000;
    let mut node = TestNode::start(id, dir.path(), None, s.clone()).await;
    node.raft.initialize_single(&node.addr).await.expect("init");
    node.wait_leader("leader").await;
    let r = node.raft.propose(init_cluster(id)).await.expect("propose");
    assert!(r.is_ok(), "{r:?}");
    // Sequential writes, one log entry each: a snapshot, a later one that
    // replaces it, and log entries after that.
    let mut snapshots = Vec::new();
    for i in 0..50u64 {
        let r = node
            .raft
            .propose(worker(0x100 + i, "w"))
            .await
            .expect("propose");
        assert!(r.is_ok(), "{r:?}");
        if i == 20 || i == 40 {
            snapshots.push(super::recover::snapshot_everything(&node).await);
        }
    }
    assert!(
        snapshots[0] >= 20 && snapshots[1] > snapshots[0],
        "{snapshots:?}"
    );
    assert_eq!(node.raft.metrics().snapshot_index, Some(snapshots[1]));
    assert!(
        node.raft.metrics().applied_index > Some(snapshots[1]),
        "entries after it"
    );
    let addr = node.addr.clone();
    let before = node.raft.store().read().clone();
    node.stop().await;

    let mut node = TestNode::start(id, dir.path(), Some(&addr), s).await;
    node.wait_store("restored", |st| *st == before).await;
    node.raft
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= 20),
            "snapshot restored",
        )
        .await
        .expect("snapshot after restart");
    node.wait_leader("leader after restart").await;
    let r = node
        .raft
        .propose(worker(0x200, "w"))
        .await
        .expect("propose");
    assert!(r.is_ok(), "{r:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_batched_and_all_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = NodeId(0xf2);
    let mut node = TestNode::start(id, dir.path(), None, settings()).await;
    node.raft.initialize_single(&node.addr).await.expect("init");
    node.wait_leader("leader").await;
    let r = node.raft.propose(init_cluster(id)).await.expect("propose");
    assert!(r.is_ok(), "{r:?}");
    let before = node.raft.metrics().last_log_index.expect("log");
    let started = Instant::now();
    let tasks: Vec<_> = (0..500u64)
        .map(|i| {
            let raft = node.raft.clone();
            tokio::spawn(async move { raft.propose(worker(0x1000 + i, "w")).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("task").expect("propose");
        assert!(r.is_ok(), "{r:?}");
    }
    let entries = node.raft.metrics().last_log_index.expect("log") - before;
    eprintln!(
        "500 proposals in {:?} using {entries} log entries",
        started.elapsed()
    );
    assert!(
        entries < 500,
        "concurrent proposals should share log entries"
    );
    assert_eq!(node.raft.store().read().nodes.len(), 501);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_learner_catches_up_by_snapshot_after_purge() {
    let dirs = [(); 2].map(|_| tempfile::tempdir().expect("tempdir"));
    let mut s = settings();
    // The snapshot is taken explicitly (see snapshot_then_log_...).
    s.snapshot_every = 1_000_000;
    s.keep_logs_after_snapshot = 0;
    let leader_id = NodeId(0x51);
    let mut leader = TestNode::start(leader_id, dirs[0].path(), None, s.clone()).await;
    leader
        .raft
        .initialize_single(&leader.addr)
        .await
        .expect("init");
    leader.wait_leader("leader").await;
    let r = leader
        .raft
        .propose(init_cluster(leader_id))
        .await
        .expect("propose");
    assert!(r.is_ok(), "{r:?}");
    for i in 0..45u64 {
        let r = leader
            .raft
            .propose(worker(0x300 + i, "w"))
            .await
            .expect("propose");
        assert!(r.is_ok(), "{r:?}");
    }
    super::recover::snapshot_everything(&leader).await;
    // The log before the snapshot is gone, so only a snapshot can bring a
    // new member up to date.
    leader
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= 20), "log purged")
        .await
        .expect("purged");

    let mut learner = TestNode::start(NodeId(0x52), dirs[1].path(), None, s).await;
    leader
        .raft
        .add_learner(learner.id, &learner.addr, true)
        .await
        .expect("add learner");
    let want = leader.raft.store().read().clone();
    learner
        .wait_store("state via snapshot", |st| *st == want)
        .await;
    learner
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.snapshot.is_some(), "snapshot installed")
        .await
        .expect("learner has a snapshot");
    // The membership that adds it is a log entry after the snapshot.
    learner
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.membership_config.membership().learner_ids().count() == 1,
            "the learner in the membership",
        )
        .await
        .expect("learner in its own membership");
    assert_eq!(learner.raft.metrics().learners.len(), 1);
    learner.stop().await;
    leader.stop().await;
}

/// Committed writes per second through a 3-manager group with 64 concurrent
/// proposers, two thirds of them on followers (forwarded). Run with
/// `cargo test -p weft-manager --release -- --ignored raft_throughput --nocapture`;
/// `BENCH_LEADER_ONLY=1` puts every proposer on the leader,
/// `BENCH_INFLIGHT=n` overrides `RaftSettings::max_inflight`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark"]
async fn raft_throughput() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let mut s = settings();
    if let Ok(n) = std::env::var("BENCH_INFLIGHT") {
        s.max_inflight = n.parse().expect("BENCH_INFLIGHT is a number");
    }
    let leader_only = std::env::var("BENCH_LEADER_ONLY").is_ok();
    let mut nodes = three_node_cluster(&dirs, s).await;
    let clients = 64u64;
    let run = Duration::from_secs(5);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let raft = nodes[if leader_only { 0 } else { (c % 3) as usize }]
                .raft
                .clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < run {
                    let id = 0x1_0000_0000 + c * 1_000_000 + n;
                    let r = raft.propose(worker(id, "bench")).await.expect("propose");
                    assert!(r.is_ok(), "{r:?}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client");
    }
    let secs = started.elapsed().as_secs_f64();
    let entries = nodes[0].raft.metrics().last_log_index.unwrap_or(0);
    eprintln!(
        "{total} committed writes in {secs:.2}s: {:.0} writes/s ({clients} clients, 3 managers, \
         {entries} log entries)",
        total as f64 / secs
    );
    for n in &mut nodes {
        n.stop().await;
    }
}
