//! [`RaftHandle`]: one manager's Raft instance with its storage, the write
//! path (batching + forwarding to the leader) and the admin operations.
//!
//! Write path:
//!
//! ```text
//! propose(cmd) ─ leader is me? ──yes──▶ submit_local ─▶ batcher ─▶ client_write_ff(Batch)
//!      │                                                              │ result per command
//!      ├─ leader is L ──▶ gRPC Propose to L (L runs submit_local) ◀───┘
//!      └─ no leader ──▶ wait for a metrics change, retry, until the deadline
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use weft_proto::v1::RaftPayload;

use super::error::{Error, ProposeError};
use super::grpc::{Authorize, MAX_MESSAGE_BYTES, PingRequest, PingResponse, RaftGrpc};
use super::log_store::{DbClosed, LogShared, LogStore, open_db};
use super::network::{ChannelFactory, Clients, NetworkFactory};
use super::read::Rounds;
use super::state_machine::{StateMachine, StoreHandle};
use super::{Batch, RaftNode, TypeConfig};
use crate::limits::MAX_RAFT_ENTRY_BYTES;
use crate::store::{Command, CommandResult, NodeId};

/// Timing and batching knobs. The defaults suit a control plane on a busy
/// 2-core machine.
///
/// openraft 0.9 makes a follower of a live leader wait the leader lease
/// (= `election_timeout_max`) *plus* a random election timeout before it
/// campaigns, and refuses votes while its own lease runs. With 250 ms
/// heartbeats and 1–2 s timeouts a dead leader is replaced after about
/// 3–4 s, while a follower needs 3 s without heartbeats (12 missed) before
/// it disturbs a healthy leader.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower
    /// catches up from the log instead of receiving the whole snapshot.
    pub keep_logs_after_snapshot: u64,
    /// How long `propose` keeps trying (waiting for a leader, forwarding)
    /// before giving up.
    pub propose_timeout: Duration,
    /// Most commands in one log entry.
    pub max_batch: usize,
    /// Most batches submitted to Raft and not yet applied; while they are in
    /// flight new commands queue up and form the next, larger batch.
    pub max_inflight: usize,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_every: 5000,
            keep_logs_after_snapshot: 500,
            propose_timeout: Duration::from_secs(8),
            max_batch: 256,
            max_inflight: 2,
        }
    }
}

impl RaftSettings {
    fn openraft_config(&self) -> Result<Config, Error> {
        let ms = |d: Duration| d.as_millis() as u64;
        let config = Config {
            cluster_name: "weft".to_string(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            // A whole snapshot chunk must arrive within this on a slow link.
            install_snapshot_timeout: 5000,
            // Entries are batches of up to `max_batch` commands already.
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs_after_snapshot,
            ..Config::default()
        };
        Ok(config.validate()?)
    }
}

/// What the leader-side submit path can answer besides a result.
#[derive(Debug)]
pub(super) enum LocalError {
    /// This node is not the leader; nothing was written.
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// Raft is shut down; nothing was written.
    Shutdown,
    /// Submitted, outcome unknown.
    Unknown,
}

type Reply = oneshot::Sender<Result<CommandResult, LocalError>>;

/// A command on its way to the batcher, with its serialized size.
type Queued = (Command, usize, Reply);

/// Most log entries in one AppendEntries. With entries of at most
/// [`MAX_RAFT_ENTRY_BYTES`] (plus their framing) a full AppendEntries stays
/// far under the transport's [`MAX_MESSAGE_BYTES`]: a message over it
/// could never be delivered and would be retried forever.
const MAX_PAYLOAD_ENTRIES: u64 = 32;

/// What an entry adds to the bytes of its commands, at most: its log ID and
/// JSON framing (~200 bytes) and a separator per command (a command is at
/// least 20 bytes of JSON, so at most a twentieth of the entry).
const ENTRY_FRAMING_BYTES: usize = 64 * 1024;

const _: () = assert!(
    MAX_PAYLOAD_ENTRIES as usize * (MAX_RAFT_ENTRY_BYTES + ENTRY_FRAMING_BYTES)
        <= MAX_MESSAGE_BYTES * 3 / 4
);

/// The serialized size of `cmd`, without keeping the bytes.
fn json_len(cmd: &Command) -> Result<usize, serde_json::Error> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, cmd)?;
    Ok(c.0)
}

/// Refuses a command of `bytes` over [`MAX_RAFT_ENTRY_BYTES`].
pub(super) fn check_size(bytes: usize) -> Result<(), ProposeError> {
    if bytes > MAX_RAFT_ENTRY_BYTES {
        return Err(ProposeError::TooLarge {
            bytes,
            limit: MAX_RAFT_ENTRY_BYTES,
        });
    }
    Ok(())
}

/// A summary of this node's view of the group.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftMetricsView {
    /// This node.
    pub id: NodeId,
    /// Leader, follower, candidate, learner or shutdown.
    pub state: ServerState,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Index of the last log entry on this node.
    pub last_log_index: Option<u64>,
    /// Index of the last applied entry (everything applied is committed).
    pub applied_index: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot_index: Option<u64>,
    /// Voters and their addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// Learners and their addresses.
    pub learners: BTreeMap<NodeId, String>,
    /// On the leader: the last log index each other member is known to
    /// hold (`None`: it has not answered since this node became leader).
    /// Empty on other nodes.
    pub matched: BTreeMap<NodeId, Option<u64>>,
    /// On the leader: milliseconds since a majority last acknowledged it
    /// (`None`: not since it took over, or not the leader).
    pub millis_since_quorum_ack: Option<u64>,
}

impl RaftMetricsView {
    fn from_metrics(m: &RaftMetrics<NodeId, RaftNode>) -> Self {
        let membership = m.membership_config.membership();
        let addr = |id: &NodeId| {
            membership
                .get_node(id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        RaftMetricsView {
            id: m.id,
            state: m.state,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            voters: membership.voter_ids().map(|id| (id, addr(&id))).collect(),
            learners: membership.learner_ids().map(|id| (id, addr(&id))).collect(),
            matched: m
                .replication
                .iter()
                .flatten()
                .map(|(id, l)| (*id, l.map(|l| l.index)))
                .collect(),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }
    }
}

/// One manager's Raft instance. Cheap to clone.
#[derive(Clone)]
pub struct RaftHandle {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: openraft::Raft<TypeConfig>,
    store: StoreHandle,
    clients: Clients,
    batcher: mpsc::Sender<Queued>,
    settings: RaftSettings,
    /// The log store's shared part.
    log: Arc<LogShared>,
    /// Fires when every storage task has let go of the database file.
    db_closed: tokio::sync::Mutex<Option<DbClosed>>,
    /// Read-index rounds shared by concurrent linearizable reads.
    rounds: Rounds,
    /// When this node last took an AppendEntries (a heartbeat, at least)
    /// from the leader of its term.
    leader_heard: std::sync::Mutex<Option<Instant>>,
}

impl RaftHandle {
    /// Opens (or creates) the Raft storage in `dir` and starts Raft as
    /// `node_id`. A restarted node restores its snapshot and re-applies its
    /// committed log from disk before it hears from any leader.
    pub async fn open(
        dir: &Path,
        node_id: NodeId,
        settings: RaftSettings,
        channels: ChannelFactory,
    ) -> Result<RaftHandle, Error> {
        let config = Arc::new(settings.openraft_config()?);
        let (db, db_closed) = open_db(dir)?;
        let log = LogStore::open(db.clone(), dir, node_id)?;
        let shared = log.shared();
        let sm = StateMachine::open(db, shared.clone())?;
        log.restart_as_follower(sm.snapshot_membership());
        let store = sm.store();
        let clients = Clients::new(channels);
        let network = NetworkFactory::new(node_id, clients.clone(), shared.clone());
        let raft = openraft::Raft::new(node_id, config, network, log, sm).await?;
        tokio::spawn(reannounce_commit(raft.clone(), shared.clone()));
        let (tx, rx) = mpsc::channel(settings.max_batch * settings.max_inflight.max(1) * 4);
        tokio::spawn(run_batcher(
            raft.clone(),
            rx,
            settings.max_batch,
            settings.max_inflight,
        ));
        Ok(RaftHandle {
            inner: Arc::new(Inner {
                id: node_id,
                raft,
                store,
                clients,
                batcher: tx,
                settings,
                log: shared,
                db_closed: tokio::sync::Mutex::new(Some(db_closed)),
                rounds: Rounds::default(),
                leader_heard: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Makes this node the sole voter of a new group (`weft init`). It then
    /// elects itself; [`RaftHandle::propose`] waits for that.
    pub async fn initialize_single(&self, addr: &str) -> Result<(), Error> {
        let members = BTreeMap::from([(
            self.inner.id,
            RaftNode {
                addr: addr.to_string(),
            },
        )]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => Err(Error::Initialize(Box::new(e))),
            Err(RaftError::Fatal(f)) => Err(f.into()),
        }
    }

    /// Whether this node's log already holds a group (initialised or joined).
    pub async fn is_initialized(&self) -> Result<bool, Error> {
        Ok(self.inner.raft.is_initialized().await?)
    }

    /// Adds a learner (leader only). With `blocking`, returns once the
    /// learner has caught up with the log.
    pub async fn add_learner(&self, id: NodeId, addr: &str, blocking: bool) -> Result<(), Error> {
        let node = RaftNode {
            addr: addr.to_string(),
        };
        map_write(self.inner.raft.add_learner(id, node, blocking).await)
    }

    /// Drops `learners` from the group (leader only); a voter among them
    /// is refused.
    pub async fn remove_learners(&self, learners: BTreeSet<NodeId>) -> Result<(), Error> {
        map_write(
            self.inner
                .raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(learners), false)
                .await,
        )
    }

    /// Makes `voters` the voting members (leader only). Voters not listed
    /// leave the group entirely; listed nodes must already be learners.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), Error> {
        map_write(self.inner.raft.change_membership(voters, false).await)
    }

    /// This node's ID.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// A summary of this node's view of the group.
    pub fn metrics(&self) -> RaftMetricsView {
        RaftMetricsView::from_metrics(&self.inner.raft.metrics().borrow())
    }

    /// The leader this node knows of, and whether `node` is a voter: what a
    /// node's manager status needs, without copying the membership.
    pub fn leader_and_voter(&self, node: NodeId) -> (Option<NodeId>, bool) {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == node);
        (m.current_leader, voter)
    }

    /// Why Raft stopped on this node, if it did: a fatal error, such as a
    /// log write or fsync that failed even after the log file was rewritten.
    /// A stopped instance acknowledges nothing more; reopening the directory
    /// starts again from what is on disk.
    pub fn stopped(&self) -> Option<String> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.running_state.as_ref().err().map(|e| e.to_string())
    }

    /// Drops the cached channels to other managers, so the next calls
    /// present the identity the channel factory hands out now.
    pub fn reset_channels(&self) {
        self.inner.clients.reset();
    }

    /// Whether `node` is a voter or learner in this node's current Raft
    /// membership (the latest one in its log, committed or not).
    pub fn is_member(&self, node: NodeId) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&node).is_some()
    }

    /// Makes the next log purge also compact the log file whatever its
    /// size, so that the purged entries leave the file itself (autolock
    /// turned on: the entries before it hold the secrets in the clear).
    pub fn compact_log_file_at_next_purge(&self) {
        self.inner.log.compact_at_next_purge();
    }

    /// Notes that the leader of this node's term was just heard from.
    pub(crate) fn heard_from_leader(&self) {
        *self
            .inner
            .leader_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether a follower heard from its leader within `within`: a leader
    /// that died is still the one its followers name until they elect
    /// another, but it has gone quiet.
    pub fn leader_heard_within(&self, within: Duration) -> bool {
        self.inner
            .leader_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() <= within)
    }

    /// openraft's metrics channel, to wait for a condition.
    pub fn metrics_watch(&self) -> watch::Receiver<RaftMetrics<NodeId, RaftNode>> {
        self.inner.raft.metrics()
    }

    /// Whether this node is currently the leader.
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    /// Read access to the replicated state.
    pub fn store(&self) -> StoreHandle {
        self.inner.store.clone()
    }

    /// The underlying openraft instance.
    pub fn raft(&self) -> &openraft::Raft<TypeConfig> {
        &self.inner.raft
    }

    /// The gRPC service for this node, with the caller's authorization check.
    pub fn grpc(&self, authorize: Authorize) -> RaftGrpc {
        RaftGrpc::new(self.clone(), authorize)
    }

    /// Stops Raft and waits (bounded) until its storage tasks have closed
    /// the database, so the directory can be opened again at once. Later
    /// proposals fail with [`ProposeError::Shutdown`].
    pub async fn shutdown(&self) -> Result<(), Error> {
        // A JoinError here means the core task panicked; it is stopped either way.
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft core ended abnormally");
        }
        // The state machine worker and replication tasks end on their own
        // once the core is gone; they hold the database until then.
        if let Some(closed) = self.inner.db_closed.lock().await.take()
            && tokio::time::timeout(Duration::from_secs(5), closed)
                .await
                .is_err()
        {
            tracing::warn!("Raft storage still open 5 s after shutdown");
        }
        Ok(())
    }

    /// Applies `cmd` through Raft and returns what applying it produced.
    ///
    /// On a follower the command is forwarded to the leader. While there is
    /// no leader (an election) it waits and retries, up to
    /// [`RaftSettings::propose_timeout`]; then it fails with
    /// [`ProposeError::NoLeader`], counting the reachable managers.
    ///
    /// A command over [`MAX_RAFT_ENTRY_BYTES`] serialized is refused with
    /// [`ProposeError::TooLarge`] before it reaches Raft.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ProposeError> {
        let bytes = json_len(&cmd)?;
        check_size(bytes)?;
        let deadline = Instant::now() + self.inner.settings.propose_timeout;
        let mut metrics = self.inner.raft.metrics();
        let mut last_forward: Option<(NodeId, String, tonic::Status)> = None;
        loop {
            let (state, leader, addr) = leader_view(&mut metrics);
            if state == ServerState::Shutdown {
                return Err(ProposeError::Shutdown);
            }
            match (leader, addr) {
                (Some(l), _) if l == self.inner.id => {
                    match self.submit_local(cmd.clone(), bytes, Some(deadline)).await {
                        Ok(r) => return Ok(r),
                        Err(LocalError::NotLeader { .. }) => {}
                        Err(LocalError::Shutdown) => return Err(ProposeError::Shutdown),
                        Err(LocalError::Unknown) => return Err(ProposeError::Unknown),
                    }
                }
                (Some(l), Some(node)) => match self.forward(l, &node.addr, &cmd, deadline).await {
                    Ok(r) => return Ok(r),
                    Err(Forwarded::Retry(status)) => last_forward = Some((l, node.addr, status)),
                    Err(Forwarded::Failed(e)) => return Err(e),
                },
                _ => {}
            }
            if !pause_for_leader(&mut metrics, deadline).await {
                break;
            }
        }
        if let Some((leader, addr, status)) = last_forward {
            tracing::debug!(%leader, %addr, %status, "last forward attempt before giving up");
        }
        let (reachable, total) = self.reachable_voters().await;
        Err(ProposeError::NoLeader { reachable, total })
    }

    /// Submits `cmd` (`bytes` serialized, at most [`MAX_RAFT_ENTRY_BYTES`])
    /// to this node's Raft (it must be the leader), batched with other
    /// concurrent commands. Used by `propose` and by the leader's `Propose`
    /// RPC.
    pub(super) async fn submit_local(
        &self,
        cmd: Command,
        bytes: usize,
        deadline: Option<Instant>,
    ) -> Result<CommandResult, LocalError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .batcher
            .send((cmd, bytes, tx))
            .await
            .map_err(|_| LocalError::Shutdown)?;
        let res = match deadline {
            Some(d) => match tokio::time::timeout_at(d, rx).await {
                Ok(r) => r,
                Err(_) => return Err(LocalError::Unknown),
            },
            None => rx.await,
        };
        res.unwrap_or(Err(LocalError::Unknown))
    }

    /// Forwards `cmd` to `leader` at `addr`. The call is abandoned as soon
    /// as this node learns of another leader: a leader that went silent
    /// (paused, cut off) would otherwise hold the write until the deadline,
    /// long after the others elected a new one. An abandoned write is not
    /// sent again: the old leader may have received it and replicated it to
    /// nodes that elect its successor, which would then commit it (Raft
    /// keeps what a majority holds), and a command sent twice would be
    /// applied twice. So its outcome is unknown
    /// ([`ProposeError::ForwardAbandoned`]) and the caller decides.
    async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<CommandResult, Forwarded> {
        let json = serde_json::to_vec(cmd).map_err(|e| Forwarded::Failed(e.into()))?;
        let mut client = self
            .inner
            .clients
            .get(addr)
            .map_err(|e| Forwarded::Retry(tonic::Status::unavailable(e.to_string())))?;
        let mut metrics = self.inner.raft.metrics();
        if other_leader(&mut metrics, leader).is_some() {
            // Changed since `propose` looked; nothing was sent yet.
            return Err(Forwarded::Retry(tonic::Status::unavailable(
                "the Raft leader changed",
            )));
        }
        let mut req = tonic::Request::new(RaftPayload { json });
        let remaining = deadline.saturating_duration_since(Instant::now());
        req.set_timeout(remaining.max(Duration::from_millis(100)));
        let answer = tokio::select! {
            answer = client.propose(req) => answer,
            new_leader = leader_replaced(metrics, leader) => {
                tracing::info!(
                    old = %leader, new = %new_leader,
                    "abandoned a write forwarded to the old Raft leader: a new one was elected"
                );
                return Err(Forwarded::Failed(ProposeError::ForwardAbandoned {
                    old: leader,
                    new: new_leader,
                }));
            }
        };
        match answer {
            Ok(resp) => serde_json::from_slice(&resp.into_inner().json)
                .map_err(|e| Forwarded::Failed(e.into())),
            // Not written: the peer is not (or no longer) the leader, or we
            // could not reach it at all.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Err(Forwarded::Retry(s)),
            Err(s) if s.code() == tonic::Code::Unavailable && never_sent(&s) => {
                Err(Forwarded::Retry(s))
            }
            Err(s) => Err(Forwarded::Failed(ProposeError::ForwardUnknown {
                status: s,
            })),
        }
    }

    /// The timing knobs this instance runs with.
    pub(super) fn settings(&self) -> &RaftSettings {
        &self.inner.settings
    }

    /// The gRPC clients to the other managers.
    pub(super) fn clients(&self) -> &Clients {
        &self.inner.clients
    }

    /// The read-index rounds (see `read`).
    pub(super) fn rounds(&self) -> &Rounds {
        &self.inner.rounds
    }

    /// Pings every voter over the Raft transport (this node counts as
    /// reachable; a voter counts if its Raft is running); returns
    /// (reachable, total voters). Takes at most about a second.
    pub async fn reachable_voters(&self) -> (usize, usize) {
        let view = self.metrics();
        let total = view.voters.len();
        let mut pings = Vec::new();
        for (id, addr) in &view.voters {
            if *id == self.inner.id {
                continue;
            }
            let client = self.inner.clients.get(addr);
            pings.push(async move {
                let Ok(mut client) = client else {
                    return false;
                };
                let json = serde_json::to_vec(&PingRequest { from: None }).unwrap_or_default();
                let mut req = tonic::Request::new(RaftPayload { json });
                req.set_timeout(Duration::from_secs(1));
                match tokio::time::timeout(Duration::from_secs(1), client.ping(req)).await {
                    Ok(Ok(resp)) => serde_json::from_slice::<PingResponse>(&resp.into_inner().json)
                        .is_ok_and(|p| p.running),
                    _ => false,
                }
            });
        }
        let others = futures::future::join_all(pings)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        let me = usize::from(view.voters.contains_key(&self.inner.id));
        (others + me, total)
    }
}

/// Whether an UNAVAILABLE answer to a forwarded write proves the leader
/// never took it: a status the leader sent itself (its `Propose` answers
/// UNAVAILABLE only before doing anything), or a connection that was never
/// made (tonic's `ConnectError`: TCP or TLS). An UNAVAILABLE the transport
/// raises mid-call (an HTTP/2 keep-alive ping unanswered, after the
/// request went out) proves nothing: sending it again could apply it twice.
pub(super) fn never_sent(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    if cause.is_none() {
        return true;
    }
    while let Some(e) = cause {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// This node's state, the leader it knows of and that leader's address.
pub(super) fn leader_view(
    metrics: &mut watch::Receiver<RaftMetrics<NodeId, RaftNode>>,
) -> (ServerState, Option<NodeId>, Option<RaftNode>) {
    let m = metrics.borrow_and_update();
    let addr = m
        .current_leader
        .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
    (m.state, m.current_leader, addr)
}

/// Waits for a leader change or a short pause before the next try; false
/// once `deadline` has passed.
pub(super) async fn pause_for_leader(
    metrics: &mut watch::Receiver<RaftMetrics<NodeId, RaftNode>>,
    deadline: Instant,
) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    // Wake on a leader change, or retry after a short pause.
    let pause = (deadline - now).min(Duration::from_millis(200));
    tokio::select! {
        _ = metrics.changed() => {}
        _ = tokio::time::sleep(pause) => {}
    }
    // Metrics change on every apply; do not spin on them.
    tokio::time::sleep(Duration::from_millis(20).min(deadline - now)).await;
    true
}

/// The leader `metrics` names now, if it is one other than `old`.
fn other_leader(
    metrics: &mut watch::Receiver<RaftMetrics<NodeId, RaftNode>>,
    old: NodeId,
) -> Option<NodeId> {
    metrics
        .borrow_and_update()
        .current_leader
        .filter(|l| *l != old)
}

/// Resolves once `metrics` names a leader other than `old`; never if Raft
/// stops first (the forward's own deadline ends the wait then).
pub(super) async fn leader_replaced(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, RaftNode>>,
    old: NodeId,
) -> NodeId {
    loop {
        if let Some(new) = other_leader(&mut metrics, old) {
            return new;
        }
        if metrics.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// How a forward attempt ended when it did not produce a result.
enum Forwarded {
    /// Nothing was written; try again (maybe elsewhere).
    Retry(tonic::Status),
    /// Give up with this error.
    Failed(ProposeError),
}

fn map_write(
    res: Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, RaftNode>>,
    >,
) -> Result<(), Error> {
    match res {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(e)) => Err(Error::Membership(Box::new(e))),
        Err(RaftError::Fatal(f)) => Err(f.into()),
    }
}

/// Groups queued commands into one log entry each time Raft can take more,
/// so one fsync covers many commands. Batches are submitted in arrival order
/// and hold at most `max_batch` commands and [`MAX_RAFT_ENTRY_BYTES`] (a
/// single command of that size goes alone).
async fn run_batcher(
    raft: openraft::Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Queued>,
    max_batch: usize,
    max_inflight: usize,
) {
    let inflight = Arc::new(Semaphore::new(max_inflight.max(1)));
    // A command that did not fit the last batch opens the next one.
    let mut held: Option<Queued> = None;
    loop {
        let first = match held.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let (cmds, replies, next) = fill_batch(first, &mut rx, max_batch);
        held = next;
        let pending = match raft.client_write_ff(Batch::new(cmds)).await {
            Ok(p) => p,
            Err(_) => {
                for r in replies {
                    let _ = r.send(Err(LocalError::Shutdown));
                }
                continue;
            }
        };
        tokio::spawn(async move {
            let res = pending.await;
            drop(permit);
            match res {
                Ok(Ok(resp)) if resp.data.0.len() == replies.len() => {
                    for (r, result) in replies.into_iter().zip(resp.data.0) {
                        let _ = r.send(Ok(result));
                    }
                }
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                    for r in replies {
                        let _ = r.send(Err(LocalError::NotLeader {
                            leader: f.leader_id,
                        }));
                    }
                }
                _ => {
                    for r in replies {
                        let _ = r.send(Err(LocalError::Unknown));
                    }
                }
            }
        });
    }
}

/// `first` and the commands queued behind it, as many as fit in one batch
/// (`max_batch` commands, [`MAX_RAFT_ENTRY_BYTES`]); the first that does not
/// fit comes back to open the next batch.
fn fill_batch(
    first: Queued,
    rx: &mut mpsc::Receiver<Queued>,
    max_batch: usize,
) -> (Vec<Command>, Vec<Reply>, Option<Queued>) {
    let mut bytes = first.1;
    let (mut cmds, mut replies) = (vec![first.0], vec![first.2]);
    while cmds.len() < max_batch.max(1) {
        match rx.try_recv() {
            Ok(q) if bytes + q.1 > MAX_RAFT_ENTRY_BYTES => return (cmds, replies, Some(q)),
            Ok((c, n, r)) => {
                bytes += n;
                cmds.push(c);
                replies.push(r);
            }
            Err(_) => break,
        }
    }
    (cmds, replies, None)
}

/// When the network held back a commit index because the leader's own copy
/// was not on disk yet, re-announce it (a heartbeat carries the commit
/// index) once the log writer made progress, so followers do not wait for
/// the next heartbeat to apply. Under load the next AppendEntries carries it
/// anyway (and clears the flag), so this waits a moment first to avoid an
/// extra round of RPCs per entry. Ends when the log writer does.
async fn reannounce_commit(raft: openraft::Raft<TypeConfig>, log: Arc<LogShared>) {
    const GRACE: Duration = Duration::from_millis(5);
    let mut durable = log.durable();
    while durable.changed().await.is_ok() {
        if !log.is_clamped() {
            continue;
        }
        tokio::time::sleep(GRACE).await;
        if log.take_clamped() && raft.trigger().heartbeat().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an answer that proves the leader never took the write lets a
    /// follower send it again.
    #[test]
    fn unavailable_is_retried_only_when_the_write_was_never_sent() {
        // The leader's own refusal (sent before it did anything).
        assert!(never_sent(&tonic::Status::unavailable("Raft is shut down")));
        // No connection: refused, or the TLS handshake failed.
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        assert!(never_sent(&connect));
        // The transport gave up mid-call (a keep-alive ping unanswered):
        // the request may have reached the leader.
        let mut mid_call = tonic::Status::unavailable("keep-alive timed out");
        mid_call.set_source(Arc::new(std::io::Error::other("keep-alive timed out")));
        assert!(!never_sent(&mid_call));
    }

    fn queued(bytes: usize) -> Queued {
        let cmd = Command::RemoveTask {
            id: bytes.to_string(),
        };
        (cmd, bytes, oneshot::channel().0)
    }

    fn ids(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .map(|c| match c {
                Command::RemoveTask { id } => id.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn batches_stop_at_the_entry_cap_and_keep_the_order() {
        let (tx, mut rx) = mpsc::channel(16);
        let mb = MAX_RAFT_ENTRY_BYTES;
        for q in [mb / 2 + 1, mb / 2, 10, mb, 1] {
            tx.try_send(queued(q)).expect("room");
        }
        let (b1, _, held) = fill_batch(queued(mb / 2), &mut rx, 256);
        assert_eq!(
            ids(&b1),
            [(mb / 2).to_string()],
            "the next one does not fit"
        );
        let (b2, _, held) = fill_batch(held.expect("held"), &mut rx, 256);
        assert_eq!(ids(&b2), [(mb / 2 + 1).to_string()]);
        let (b3, _, held) = fill_batch(held.expect("held"), &mut rx, 256);
        assert_eq!(ids(&b3), [(mb / 2).to_string(), "10".to_string()]);
        let (b4, _, held) = fill_batch(held.expect("held"), &mut rx, 256);
        assert_eq!(
            ids(&b4),
            [mb.to_string()],
            "a command at the cap goes alone"
        );
        let (b5, _, held) = fill_batch(held.expect("held"), &mut rx, 256);
        assert_eq!(ids(&b5), ["1".to_string()]);
        assert!(held.is_none());
    }

    #[test]
    fn batches_stop_at_max_batch() {
        let (tx, mut rx) = mpsc::channel(16);
        for _ in 0..5 {
            tx.try_send(queued(1)).expect("room");
        }
        let (b, _, held) = fill_batch(queued(1), &mut rx, 4);
        assert_eq!(b.len(), 4);
        assert!(held.is_none(), "the rest stays queued");
        assert_eq!(rx.len(), 2);
    }
}
