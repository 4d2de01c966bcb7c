//! A write forwarded to a leader that goes silent (a paused process, a
//! partition: the connection stays open, nothing comes back) is abandoned
//! once the others elect a new leader, not held until the propose deadline.
//!
//! ```text
//!  a3 (follower) ──Propose──▶ proxy ─╳─▶ a1 (old leader, heartbeats off)
//!  a2, a3 elect a new leader ──▶ a3 abandons the forward: ForwardAbandoned
//! ```

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::cluster::{TestNode, settings, three_node_cluster_with, worker};
use crate::raft::ProposeError;
use crate::store::NodeId;

/// A TCP proxy in front of a node that can be frozen: frozen, it accepts
/// and reads but passes nothing on, in either direction, as a partition
/// that drops packets would look to both ends.
pub(super) struct FreezableProxy {
    pub(super) addr: String,
    /// Where it forwards to, set once the node listens.
    pub(super) target: Arc<OnceLock<String>>,
    pub(super) frozen: watch::Sender<bool>,
}

impl FreezableProxy {
    pub(super) async fn start() -> FreezableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let target = Arc::new(OnceLock::<String>::new());
        let (frozen, rx) = watch::channel(false);
        let to = target.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (rx, to) = (rx.clone(), to.clone());
                tokio::spawn(async move {
                    let Some(target) = to.get() else { return };
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::spawn(pipe(ri, wo, rx.clone()));
                    pipe(ro, wi, rx).await;
                });
            }
        });
        FreezableProxy {
            addr,
            target,
            frozen,
        }
    }

    pub(super) fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// Copies `from` to `to`, holding what it read while frozen.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Three managers led by the first, which the others know only by a
/// [`FreezableProxy`] in front of it.
pub(super) async fn cluster_behind_proxy(
    dirs: &[tempfile::TempDir; 3],
    settings: crate::raft::RaftSettings,
) -> (FreezableProxy, Vec<TestNode>) {
    let proxy = FreezableProxy::start().await;
    let nodes = three_node_cluster_with(dirs, settings, |addr| {
        proxy.target.set(addr.to_string()).expect("set once");
        proxy.addr.clone()
    })
    .await;
    (proxy, nodes)
}

/// The leader goes silent: nothing reaches it or comes back from it
/// through the proxy, and it sends no more heartbeats (its own connections
/// to the followers are direct), so they elect another.
pub(super) fn silence_leader(proxy: &FreezableProxy, nodes: &[TestNode]) {
    proxy.freeze();
    nodes[0].raft.raft().runtime_config().heartbeat(false);
}

/// Stops every node. The old leader's server shuts down gracefully, so it
/// waits for the connections through the proxy: they are let go once the
/// others stopped (nothing can be committed then).
pub(super) async fn stop_behind_proxy(proxy: FreezableProxy, mut nodes: Vec<TestNode>) {
    for n in &mut nodes[1..] {
        n.stop().await;
    }
    proxy.frozen.send_replace(false);
    nodes[0].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_silent_leader_is_abandoned_when_another_is_elected() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("tempdir"));
    let mut patient = settings();
    // Far above an election (3-4 s): a forward held to the deadline shows.
    patient.propose_timeout = Duration::from_secs(30);
    // The first node leads, and the others know it only through the proxy.
    let (proxy, nodes) = cluster_behind_proxy(&dirs, patient).await;
    let old = nodes[0].id;
    let r = nodes[2].raft.propose(worker(0xb1, "w1")).await;
    assert!(matches!(r, Ok(Ok(_))), "forwarded through the proxy: {r:?}");

    silence_leader(&proxy, &nodes);
    let silent = Instant::now();
    let err = nodes[2]
        .raft
        .propose(worker(0xb2, "w2"))
        .await
        .expect_err("the silent leader never answers");
    let waited = silent.elapsed();
    let new = nodes[2].raft.metrics().leader.expect("a new leader");
    assert_ne!(new, old);
    assert!(
        matches!(err, ProposeError::ForwardAbandoned { old: o, new: n } if o == old && n == new),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is unknown") && err.to_string().contains("was elected"),
        "{err}"
    );
    eprintln!("forward abandoned after {waited:?}: {err}");
    assert!(
        waited < Duration::from_secs(15),
        "abandoned after {waited:?}, not at the election"
    );

    // Not sent again: the old leader never got it (the proxy held it), so
    // the new leader does not have it either. Writes go on at the new one.
    let r = nodes[2].raft.propose(worker(0xb3, "w3")).await;
    assert!(matches!(r, Ok(Ok(_))), "written at the new leader: {r:?}");
    for n in &nodes[1..] {
        n.wait_store("w3 applied", |s| s.nodes.contains_key(&NodeId(0xb3)))
            .await;
        assert!(
            !n.raft.store().read().nodes.contains_key(&NodeId(0xb2)),
            "the abandoned write was applied on {}",
            n.id
        );
    }
    stop_behind_proxy(proxy, nodes).await;
}
