//! What every manager-side service shares: the store, Raft, the node's own
//! identity and the leader's in-memory liveness table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weft_proto::v1 as pb;

use crate::dispatcher::liveness::{Liveness, Plan};
use crate::error::{Error, Result};
use crate::raft::{RaftHandle, StoreHandle};
use crate::store::{Applied, Cluster, Command, Node, NodeId, NodeState, Role, State};

/// Shared manager state. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    raft: RaftHandle,
    store: StoreHandle,
    liveness: Mutex<Option<Liveness>>,
    configs: Mutex<HashMap<NodeId, ConfigStatus>>,
    /// Open sessions on this manager, to ask nodes for task output and
    /// doctor probes.
    sessions: Mutex<HashMap<NodeId, tokio::sync::mpsc::UnboundedSender<SessionPush>>>,
    /// Probe requests (`weft doctor`) waiting for their node's report.
    probe_waiters: Mutex<HashMap<u64, ProbeWaiter>>,
    /// One doctor probe run at a time: a caller asking while one runs
    /// waits for it (nodes share one probe device each).
    probe_run: tokio::sync::Mutex<()>,
    /// Log requests waiting for their node's answer.
    log_waiters: Mutex<HashMap<u64, LogWaiter>>,
    /// Channels to other managers (authenticated as this manager).
    channels: Option<crate::raft::ChannelFactory>,
    /// The autolock unlock key, in memory only (see [`crate::autolock`]).
    unlock: weft_proto::seal::KeyHolder,
    /// The cluster-wide image load in progress, if any.
    pushes: crate::imagepush::Pushes,
    /// Where its archive is spooled (none: cluster-wide loads refused).
    spool_dir: Option<std::path::PathBuf>,
    /// The Raft directory, for its size in the metrics (none in tests).
    raft_dir: Option<std::path::PathBuf>,
    /// The images each node last reported (`image ls --all-nodes`).
    inventories: crate::inventory::Inventories,
}

/// What a manager asks of a node on its session, besides its config.
#[derive(Debug, Clone)]
pub enum SessionPush {
    /// The log of one of its tasks.
    Log(pb::LogRequest),
    /// Doctor probes of its peers.
    Probe(pb::ProbeRequest),
    /// It answered the config pushed last (applied it, or reported an
    /// apply error since): the next may go ([`crate::dispatcher`]'s push
    /// gate).
    Applied,
}

/// Which node a probe request went to, and where its report goes.
type ProbeWaiter = (NodeId, tokio::sync::oneshot::Sender<pb::ProbeReport>);

/// Which node a log request went to, and where its stream goes.
type LogWaiter = (NodeId, tokio::sync::mpsc::Sender<LogPiece>);

/// A piece of one task's log as its node sends it: lines, or why the log
/// cannot be read.
pub type LogPiece = Result<Vec<pb::LogLine>, String>;

/// How long a node has to open the stream of a log it was asked for.
const LOG_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the leader knows of one node's config: the latest version pushed
/// and the version the node reported applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigStatus {
    /// Latest config version sent to the node.
    pub pushed: u64,
    /// Version the node last reported applied.
    pub applied: u64,
    /// The node's last apply error, if any.
    pub error: String,
    /// Last handshake (unix ms) the node saw with each peer, by public key.
    pub handshakes: std::collections::BTreeMap<String, u64>,
    /// When `pushed` went out, until the node reports it applied.
    pub pushed_at: Option<std::time::Instant>,
    /// Whether a report with an apply error came since `pushed` went out.
    pub failed_since_push: bool,
}

impl ConfigStatus {
    /// Whether the node answered the config pushed last: it reported
    /// that version or a later one applied, or an apply error since the
    /// push (a report does not say which version it tried; an error
    /// reported before the push does not count, however often repeated).
    fn answered(&self) -> bool {
        self.applied >= self.pushed || self.failed_since_push
    }

    /// A push of `version` went out.
    fn pushed(&mut self, version: u64) {
        self.pushed = version;
        self.pushed_at = Some(std::time::Instant::now());
        self.failed_since_push = false;
    }

    /// A report of `version` applied, or of `error`.
    fn reported(&mut self, version: u64, error: String) {
        self.applied = version;
        self.failed_since_push |= !error.is_empty();
        self.error = error;
    }
}

impl Core {
    /// Wraps a running Raft instance; `channels` reach other managers.
    /// and `unlock` holds the autolock key (shared with the node).
    pub fn with_channels(
        node_id: NodeId,
        raft: RaftHandle,
        channels: crate::raft::ChannelFactory,
        unlock: weft_proto::seal::KeyHolder,
    ) -> Self {
        let mut c = Core::new(node_id, raft);
        let inner = Arc::get_mut(&mut c.inner).expect("fresh core");
        inner.channels = Some(channels);
        inner.unlock = unlock;
        c
    }

    /// Wraps a running Raft instance.
    pub fn new(node_id: NodeId, raft: RaftHandle) -> Self {
        let store = raft.store();
        Core {
            inner: Arc::new(Inner {
                node_id,
                raft,
                store,
                liveness: Mutex::new(None),
                configs: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                log_waiters: Mutex::new(HashMap::new()),
                probe_waiters: Mutex::new(HashMap::new()),
                probe_run: tokio::sync::Mutex::new(()),
                channels: None,
                unlock: weft_proto::seal::KeyHolder::default(),
                pushes: crate::imagepush::Pushes::default(),
                spool_dir: None,
                raft_dir: None,
                inventories: crate::inventory::Inventories::default(),
            }),
        }
    }

    /// Spools cluster-wide image loads in `dir` (see [`crate::imagepush`]).
    pub fn with_spool_dir(mut self, dir: std::path::PathBuf) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("fresh core");
        inner.spool_dir = Some(dir);
        self
    }

    /// Records where the Raft directory is (for the metrics).
    pub fn with_raft_dir(mut self, dir: std::path::PathBuf) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("fresh core");
        inner.raft_dir = Some(dir);
        self
    }

    /// The Raft directory, if recorded.
    pub fn raft_dir(&self) -> Option<&std::path::Path> {
        self.inner.raft_dir.as_deref()
    }

    /// Where cluster-wide image loads are spooled, if anywhere.
    pub fn spool_dir(&self) -> Option<&std::path::Path> {
        self.inner.spool_dir.as_deref()
    }

    /// The cluster-wide image load in progress.
    pub fn pushes(&self) -> &crate::imagepush::Pushes {
        &self.inner.pushes
    }

    /// The images each node last reported to this manager.
    pub fn inventories(&self) -> &crate::inventory::Inventories {
        &self.inner.inventories
    }

    /// The nodes with a session on this manager now.
    pub fn session_nodes(&self) -> std::collections::BTreeSet<NodeId> {
        self.inner
            .sessions
            .lock()
            .expect("sessions")
            .keys()
            .copied()
            .collect()
    }

    /// This manager's node ID.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The Raft instance.
    pub fn raft(&self) -> &RaftHandle {
        &self.inner.raft
    }

    /// The replicated store.
    pub fn store(&self) -> &StoreHandle {
        &self.inner.store
    }

    /// Runs `f` on the current state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.inner.store.read();
        f(&guard)
    }

    /// Runs `f` on the current state and the index of the last entry
    /// applied to it (which can be ahead of the applied index watchers
    /// were told of).
    pub fn read_indexed<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        let (guard, index) = self.inner.store.read_indexed();
        f(&guard, index)
    }

    /// The cluster record, or `NotReady` while this manager has not caught up.
    pub fn cluster(&self) -> Result<Cluster> {
        self.read(|s| s.cluster.clone()).ok_or(Error::NotReady)
    }

    /// The cluster's secrets in the clear (opened with the unlock key when
    /// autolock is on); `NoUnlockKey` while this manager lacks that key.
    pub fn secrets(&self) -> Result<crate::store::Secrets> {
        self.secrets_at().map(|(s, _)| s)
    }

    /// As [`Core::secrets`], with the record's `secrets_generation` read
    /// at the same time (for a change of them).
    pub fn secrets_at(&self) -> Result<(crate::store::Secrets, u64)> {
        let key = self.inner.unlock.get();
        self.read(|s| {
            let c = s.cluster.as_ref().ok_or(Error::NotReady)?;
            Ok((
                crate::autolock::secrets(c, key.as_ref())?,
                c.secrets_generation,
            ))
        })
    }

    /// The autolock unlock key this manager holds (in memory only).
    pub fn unlock_holder(&self) -> &weft_proto::seal::KeyHolder {
        &self.inner.unlock
    }

    /// The cluster's ID (without cloning the whole record), or `NotReady`.
    pub fn cluster_id(&self) -> Result<String> {
        self.read(|s| s.cluster.as_ref().map(|c| c.id.clone()))
            .ok_or(Error::NotReady)
    }

    /// Authorizes a call that needs a manager: a manager certificate of
    /// this cluster whose node is a manager in the store now (see
    /// [`crate::authz`]).
    pub fn authorize_manager<T>(&self, req: &tonic::Request<T>) -> Result<NodeId, tonic::Status> {
        let id = weft_proto::tls::require_manager(req, &self.cluster_id()?)?;
        self.read(|s| crate::authz::manager(s, &id).map(|n| n.id))
    }

    /// Authorizes a Raft RPC from a peer manager (see [`crate::authz`]),
    /// of cluster `cluster_id` (this manager's, known from its own
    /// certificate even before its store has any state).
    pub fn authorize_raft_peer<T>(
        &self,
        req: &tonic::Request<T>,
        cluster_id: &str,
    ) -> Result<(), tonic::Status> {
        let id = weft_proto::tls::require_manager(req, cluster_id)?;
        let in_group = id
            .node_id
            .parse()
            .is_ok_and(|n: NodeId| self.inner.raft.is_member(n));
        self.read(|s| crate::authz::raft_peer(s, &id, in_group))
    }

    /// Authorizes a node speaking for `claimed` (dispatcher): its own
    /// certificate, and a member now. Returns its store record.
    pub fn authorize_node<T>(
        &self,
        req: &tonic::Request<T>,
        claimed: &str,
    ) -> Result<Node, tonic::Status> {
        let id = weft_proto::tls::require_node(req, &self.cluster_id()?, claimed)?;
        self.read(|s| crate::authz::member(s, &id).cloned())
    }

    /// Authorizes any member's certificate (before a request body is read,
    /// when the node it speaks for is not known yet).
    pub fn authorize_member<T>(&self, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let id = weft_proto::tls::require_cluster_member(req, &self.cluster_id()?)?;
        self.read(|s| crate::authz::member(s, &id).map(|_| ()))
    }

    /// Whether a certificate's node was removed (the TLS layer's
    /// revocation check).
    pub fn is_revoked(&self, id: &weft_proto::identity::PeerIdentity) -> bool {
        self.read(|s| crate::authz::is_revoked(s, id))
    }

    /// Proposes a command through Raft (forwarded to the leader if needed)
    /// and returns what applying it produced.
    ///
    /// A command that an older manager of the cluster could not apply (a
    /// rolling upgrade under way) is refused with `FailedPrecondition`
    /// ([`crate::store::version_gate`]).
    pub async fn propose(&self, cmd: Command) -> Result<Applied> {
        self.read(|s| crate::store::version_gate::check(s, &cmd))
            .map_err(Error::FailedPrecondition)?;
        let started = std::time::Instant::now();
        let r = self.inner.raft.propose(cmd).await;
        let m = &crate::metrics::METRICS;
        crate::metrics::observe(&m.proposal_seconds, started.elapsed());
        Ok(r??)
    }

    /// Waits until this manager's store holds every write committed before
    /// the call (a read index from the leader, see
    /// [`crate::raft::RaftHandle::linearize`]): what is read next is not
    /// stale, on a follower, a restarted manager or a deposed leader alike.
    pub async fn linearize(&self) -> Result<()> {
        self.inner.raft.linearize().await?;
        Ok(())
    }

    /// Whether this manager is the Raft leader right now.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.is_leader()
    }

    /// Address of the current leader, if known.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.inner.raft.metrics();
        let leader = m.leader?;
        m.voters
            .get(&leader)
            .filter(|a| !a.is_empty())
            .cloned()
            .or_else(|| self.read(|s| s.nodes.get(&leader).map(|n| n.addr.clone())))
    }

    /// Manager status as `node ls` shows it.
    pub fn manager_status(&self, n: &Node) -> (pb::ManagerStatus, bool) {
        let (leader, voter) = self.inner.raft.leader_and_voter(n.id);
        if n.role != Role::Manager && !voter {
            return (pb::ManagerStatus::Unspecified, false);
        }
        let status = if leader == Some(n.id) {
            pb::ManagerStatus::Leader
        } else if n.state == NodeState::Ready {
            pb::ManagerStatus::Reachable
        } else {
            pb::ManagerStatus::Unreachable
        };
        (status, voter)
    }

    /// Records a heartbeat from `id` (leader only; elsewhere a no-op).
    pub fn seen(&self, id: NodeId) {
        let mut l = self.inner.liveness.lock().expect("liveness lock");
        if let Some(l) = l.as_mut() {
            l.seen(id, Instant::now());
        }
    }

    /// Called by the leader loop: starts or stops liveness tracking.
    pub(crate) fn set_leading(&self, leading: bool) {
        let mut l = self.inner.liveness.lock().expect("liveness lock");
        match (leading, l.is_some()) {
            (true, false) => *l = Some(Liveness::new(Instant::now())),
            (false, true) => *l = None,
            _ => {}
        }
    }

    /// The liveness commands the store needs now (leader only).
    pub(crate) fn liveness_plan(&self, period: Duration, grace: Option<Duration>) -> Plan {
        let mut l = self.inner.liveness.lock().expect("liveness lock");
        let Some(l) = l.as_mut() else {
            return Default::default();
        };
        self.read(|s| l.plan(s, period, grace, Instant::now(), now_ms()))
    }

    /// The liveness loop finished writing its plan (leader only).
    pub(crate) fn liveness_awake(&self) {
        let mut l = self.inner.liveness.lock().expect("liveness lock");
        if let Some(l) = l.as_mut() {
            l.awake(Instant::now());
        }
    }

    /// Node `id` said (in a heartbeat) that its daemon is stopping.
    pub fn stopping(&self, id: NodeId) {
        let mut l = self.inner.liveness.lock().expect("liveness lock");
        if let Some(l) = l.as_mut() {
            l.stopping(id);
        }
    }

    /// The Raft voters.
    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.inner.raft.metrics().voters.keys().copied().collect()
    }

    /// Records the config version pushed to a node.
    pub fn config_pushed(&self, id: NodeId, version: u64) {
        let mut c = self.inner.configs.lock().expect("configs lock");
        c.entry(id).or_default().pushed(version);
    }

    /// Records what a node reported applying; the first report of the
    /// version pushed last times the push (its metric).
    ///
    /// A report that answers the push ([`ConfigStatus::answered`]) tells
    /// the node's session, which may push again.
    pub fn config_applied(&self, id: NodeId, version: u64, error: String) {
        let answered = {
            let mut c = self.inner.configs.lock().expect("configs lock");
            let e = c.entry(id).or_default();
            e.reported(version, error);
            if version >= e.pushed
                && let Some(at) = e.pushed_at.take()
            {
                let m = &crate::metrics::METRICS;
                crate::metrics::observe(&m.push_ack_seconds, at.elapsed());
            }
            e.answered()
        };
        if answered {
            self.push_to_session(id, SessionPush::Applied);
        }
    }

    /// Whether the node's last report answers the config pushed to it
    /// last (see [`Self::config_applied`]): an `Applied` on its session
    /// may be older than the push it is read after.
    pub fn push_answered(&self, id: NodeId) -> bool {
        let c = self.inner.configs.lock().expect("configs lock");
        c.get(&id).is_none_or(ConfigStatus::answered)
    }

    /// Records the handshakes a node reported.
    pub fn handshakes_seen(&self, id: NodeId, h: std::collections::BTreeMap<String, u64>) {
        self.inner
            .configs
            .lock()
            .expect("configs lock")
            .entry(id)
            .or_default()
            .handshakes = h;
    }

    /// The newest handshake any node reported with the holder of `public_key`.
    pub fn last_handshake_with(&self, public_key: &str) -> u64 {
        self.inner
            .configs
            .lock()
            .expect("configs lock")
            .values()
            .filter_map(|c| c.handshakes.get(public_key).copied())
            .max()
            .unwrap_or(0)
    }

    /// What this manager knows of a node's config (the leader knows it all).
    pub fn config_status(&self, id: NodeId) -> ConfigStatus {
        self.inner
            .configs
            .lock()
            .expect("configs lock")
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Registers the session of `id` on this manager.
    pub(crate) fn session_opened(
        &self,
        id: NodeId,
        tx: tokio::sync::mpsc::UnboundedSender<SessionPush>,
    ) {
        self.inner.inventories.session_opened(id);
        self.inner.sessions.lock().expect("sessions").insert(id, tx);
        if let Some(l) = self.inner.liveness.lock().expect("liveness lock").as_mut() {
            l.session_opened(id, Instant::now());
        }
    }

    /// Forgets the session of `id` if `tx` is still the registered one.
    pub(crate) fn session_closed(
        &self,
        id: NodeId,
        tx: &tokio::sync::mpsc::UnboundedSender<SessionPush>,
    ) {
        let mut s = self.inner.sessions.lock().expect("sessions");
        if s.get(&id).is_some_and(|cur| cur.same_channel(tx)) {
            s.remove(&id);
            drop(s);
            self.inner.pushes.session_ended(id);
            if let Some(l) = self.inner.liveness.lock().expect("liveness lock").as_mut() {
                l.session_ended(id, Instant::now());
            }
        }
    }

    /// Asks node `id` (through its session on this manager) for the log of
    /// one of its tasks: its pieces arrive on the returned channel, which is
    /// bounded (the node's stream waits for the reader) and ends with the
    /// log, or after one error. Dropping the receiver ends the node's
    /// stream, and so its reader (a follow stops).
    pub fn fetch_logs(
        &self,
        id: NodeId,
        task: &str,
        query: pb::LogQuery,
    ) -> tokio::sync::mpsc::Receiver<LogPiece> {
        // Random, not a counter: a node must not be able to answer (and so
        // forge) a request made of another node.
        let rid = rand::random::<u64>();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The waiter map holds the only sender until the node's stream
        // takes it (or the timeout below does).
        self.inner
            .log_waiters
            .lock()
            .expect("waiters")
            .insert(rid, (id, tx));
        let sent = self.push_to_session(
            id,
            SessionPush::Log(pb::LogRequest {
                request_id: rid,
                task_id: task.to_string(),
                query: Some(query),
            }),
        );
        let core = self.clone();
        tokio::spawn(async move {
            if sent {
                tokio::time::sleep(LOG_ANSWER_TIMEOUT).await;
            }
            let waiter = core.inner.log_waiters.lock().expect("waiters").remove(&rid);
            if let Some((_, tx)) = waiter {
                let why = if sent {
                    format!("node {id} did not send the log in time")
                } else {
                    format!("node {id} has no session with this manager (is it down?)")
                };
                let _ = tx.send(Err(why)).await;
            }
        });
        rx
    }

    /// Where the log stream a node opens for `request_id` goes, if that
    /// request was made of that node and is still waiting (a stream from
    /// any other node gets nothing).
    pub(crate) fn log_stream_opened(
        &self,
        from: NodeId,
        request_id: u64,
    ) -> Option<tokio::sync::mpsc::Sender<LogPiece>> {
        take_waiter(&self.inner.log_waiters, from, request_id, "log stream")
    }

    /// Pushes `push` on the session of node `id`; whether it has one.
    fn push_to_session(&self, id: NodeId, push: SessionPush) -> bool {
        self.inner
            .sessions
            .lock()
            .expect("sessions")
            .get(&id)
            .is_some_and(|s| s.send(push).is_ok())
    }

    /// Sends each node its probe request (`weft doctor`) on its session
    /// and waits up to `timeout` for the reports. Every request gets a
    /// random ID, so a node cannot answer one made of another.
    pub async fn probe(
        &self,
        requests: Vec<(NodeId, pb::ProbeRequest)>,
        timeout: Duration,
    ) -> std::collections::BTreeMap<NodeId, crate::doctor::Answer> {
        use crate::doctor::Answer;
        let _one_at_a_time = self.inner.probe_run.lock().await;
        let mut pending = Vec::new();
        let mut out = std::collections::BTreeMap::new();
        for (id, mut req) in requests {
            let rid = rand::random::<u64>();
            req.request_id = rid;
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.inner
                .probe_waiters
                .lock()
                .expect("probe waiters")
                .insert(rid, (id, tx));
            let sent_ms = now_ms();
            let sent = self.push_to_session(id, SessionPush::Probe(req));
            if sent {
                pending.push((id, rid, sent_ms, rx));
            } else {
                self.inner
                    .probe_waiters
                    .lock()
                    .expect("probe waiters")
                    .remove(&rid);
                out.insert(
                    id,
                    Answer::missing(sent_ms, "the node has no session with the leader"),
                );
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for (id, rid, sent_ms, rx) in pending {
            let answer = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(report)) => Answer::arrived(sent_ms, report),
                _ => Answer::missing(sent_ms, format!("no report within {} s", timeout.as_secs())),
            };
            self.inner
                .probe_waiters
                .lock()
                .expect("probe waiters")
                .remove(&rid);
            out.insert(id, answer);
        }
        out
    }

    /// Hands a node's probe report to the doctor run waiting for it, if
    /// that request was made of that node and is still waiting (a report
    /// from any other node is dropped). Whether it was taken.
    pub(crate) fn probe_reported(&self, from: NodeId, report: pb::ProbeReport) -> bool {
        take_waiter(
            &self.inner.probe_waiters,
            from,
            report.request_id,
            "probe report",
        )
        .is_some_and(|tx| tx.send(report).is_ok())
    }

    /// A channel to the current leader, authenticated as this manager.
    pub fn leader_channel(&self) -> Option<tonic::transport::Channel> {
        let addr = self.leader_addr()?;
        let f = self.inner.channels.as_ref()?;
        f(&addr).ok()
    }

    /// A channel to the manager at `addr`, authenticated as this manager.
    pub fn channel_to(&self, addr: &str) -> Option<tonic::transport::Channel> {
        let f = self.inner.channels.as_ref()?;
        f(addr).ok()
    }

    /// Whether a node is heartbeating, as far as the store knows.
    pub fn is_reachable(&self, id: NodeId) -> bool {
        if id == self.inner.node_id {
            return true;
        }
        self.read(|s| {
            s.nodes
                .get(&id)
                .is_some_and(|n| n.state == NodeState::Ready)
        })
    }
}

/// The waiter of request `request_id` if it was made of node `from` (an
/// answer from any other node leaves it waiting, and is logged).
fn take_waiter<T>(
    waiters: &Mutex<HashMap<u64, (NodeId, T)>>,
    from: NodeId,
    request_id: u64,
    what: &str,
) -> Option<T> {
    let mut waiters = waiters.lock().expect("waiters");
    match waiters.get(&request_id) {
        Some((asked, _)) if *asked == from => waiters.remove(&request_id).map(|(_, w)| w),
        Some((asked, _)) => {
            tracing::warn!(%from, %asked, "dropping a {what} from a node that was not asked");
            None
        }
        None => None,
    }
}

/// Wall clock in unix milliseconds, for timestamps the proposer stamps on
/// commands (the state machine never reads a clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 text of a certificate time, for display.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::ConfigStatus;

    /// What answers a push (the dispatcher's push gate): its version or a
    /// later one applied, or an error reported after it; not an error
    /// from before it, nor an older version.
    #[test]
    fn what_answers_a_config_push() {
        let mut c = ConfigStatus::default();
        c.pushed(5);
        assert!(!c.answered());
        c.reported(4, String::new());
        assert!(!c.answered(), "an older version");
        c.reported(5, String::new());
        assert!(c.answered());
        c.pushed(6);
        c.reported(0, "no such image".into());
        assert!(c.answered(), "an error after the push");
        c.pushed(7);
        assert!(!c.answered(), "the error came before this push");
        c.reported(0, "no such image".into());
        assert!(c.answered(), "reported again after it");
        c.pushed(8);
        c.reported(8, String::new());
        assert!(c.answered() && c.error.is_empty());
    }
}
