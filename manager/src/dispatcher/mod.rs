//! The dispatcher: the manager end of every node's session.
//!
//! Runs on the leader; followers answer `FAILED_PRECONDITION` with the
//! leader's address in the `weft-leader` metadata so the node moves there.
//! It holds each node's session stream, records heartbeats (liveness is
//! decided in [`liveness`]), renews certificates and handles `leave`.
//! A node speaks only for the node ID in its own certificate, and a removed
//! node is refused.

pub mod bound;
pub mod external;
pub mod liveness;
pub mod projection;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::dispatcher_server::Dispatcher;

use crate::ca::ClusterCa;
use crate::core::Core;
use crate::error::Error;
use crate::limits;
use crate::quorum;
use crate::store::{Command, Node, NodeId, Role};

/// How long a task start waits for a just-joined node's default bridge.
const BRIDGE_WAIT: Duration = Duration::from_secs(5);

/// Metadata key carrying the leader's address on a redirect.
pub const LEADER_METADATA: &str = "weft-leader";

/// How long a follower holds a session request while the cluster has no
/// leader it can point to (an election under way), before it refuses.
/// A leader is elected 3-4 s after the old one died (`RaftSettings`).
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// A leader not heard from for this long (it heartbeats every 250 ms) is
/// not pointed to: it may be dead, with its followers still naming it.
const LEADER_QUIET: Duration = Duration::from_millis(750);

/// The `Dispatcher` gRPC service.
#[derive(Clone)]
pub struct DispatcherService {
    core: Core,
    /// The parts of every node's config that are the same for all, with
    /// the store version they were made at (see [`projection::Shared`]).
    shared: Arc<Mutex<Option<SharedAt>>>,
    /// The last change of VXLAN sources made (see
    /// [`DispatcherService::sources_change`]).
    sources_change: Arc<Mutex<Option<SourcesChange>>>,
}

/// From one list of sources to the next: the two lists, and the addresses
/// added and removed.
type SourcesChange = (
    Arc<projection::Sources>,
    Arc<projection::Sources>,
    Arc<(Vec<String>, Vec<String>)>,
);

/// What a session sent last: the config without its VXLAN sources, its
/// networks in their shared parts, and those sources (one list for all
/// sessions).
struct Sent {
    config: projection::Projected,
    sources: Arc<projection::Sources>,
}

/// Which changes a node takes (its session request says).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Deltas {
    /// Whole configs only.
    No,
    /// Deltas with the published ports whole in their head (a node older
    /// than `accepts_port_deltas`).
    PortsWhole,
    /// Deltas, ports as changes.
    Yes,
}

/// How a changed config goes: whole, or as a change.
enum Payload {
    Whole(Box<pb::NodeConfig>),
    Delta(Box<pb::NodeConfigDelta>),
}

/// [`projection::Shared`] parts and the store version they were made at.
type SharedAt = (u64, Arc<projection::Shared>);

impl DispatcherService {
    /// A dispatcher over this manager's store.
    pub fn new(core: Core) -> Self {
        DispatcherService {
            core,
            shared: Arc::default(),
            sources_change: Arc::default(),
        }
    }

    /// The shared parts for store version `version`, made from `state`
    /// unless made for it already. `state` must be at exactly `version`
    /// (read together: [`Core::read_indexed`]): the parts hold lists made
    /// from the state they were first made from ([`projection::NetParts`]).
    fn shared_for(&self, version: u64, state: &crate::store::State) -> Arc<projection::Shared> {
        let mut cached = self.shared.lock().expect("shared parts lock");
        match cached.as_ref() {
            Some((v, parts)) if *v == version => parts.clone(),
            previous => {
                // Unchanged sources and networks keep their Arcs: sessions
                // compare them by pointer.
                let parts = Arc::new(projection::shared_after(state, previous.map(|(_, p)| &**p)));
                *cached = Some((version, parts.clone()));
                parts
            }
        }
    }

    /// Authenticates the caller as `claimed` and returns its store record
    /// (see [`crate::authz`]).
    fn authorize<T>(&self, req: &Request<T>, claimed: &str) -> Result<Node, Status> {
        self.core.authorize_node(req, claimed)
    }

    /// As [`Self::require_leader`], but while no leader can be pointed to
    /// (none known, or the one known has gone quiet) the call waits for
    /// the election, up to [`LEADER_WAIT`]: it is then served here if this
    /// manager won, or pointed to the winner. When a leader dies, every
    /// node reconnects at once; a node refused on the spot would walk the
    /// managers and back off, costing a TLS handshake per try and coming
    /// back only after its delay, while one that waits is served or
    /// redirected as soon as the election ends.
    async fn await_leader(&self) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut server = self.core.raft().raft().server_metrics();
        loop {
            let pointable = self.core.leader_addr().is_some()
                && self.core.raft().leader_heard_within(LEADER_QUIET);
            if self.core.is_leader() || pointable || tokio::time::Instant::now() >= deadline {
                return self.require_leader();
            }
            // Server metrics say when the leader changes; hearing from a
            // leader again does not change them, hence the poll.
            tokio::select! {
                r = server.changed() => if r.is_err() { return self.require_leader() },
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// One beat of a node's heartbeat stream (see `heartbeats`): from the
    /// node the stream is for, still a member, to the leader.
    fn beat(
        &self,
        id: NodeId,
        name: &str,
        beat: &pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, Status> {
        if beat.node_id != name {
            return Err(Status::permission_denied(format!(
                "a heartbeat for node {} on node {name}'s heartbeat stream",
                beat.node_id
            )));
        }
        self.require_leader()?;
        let period_ms = self.core.read(|s| {
            if !s.nodes.contains_key(&id) {
                return Err(Status::permission_denied(format!(
                    "node {id} was removed from the cluster"
                )));
            }
            s.cluster
                .as_ref()
                .map(|c| c.settings.heartbeat_period_ms)
                .ok_or_else(|| Status::unavailable("the cluster is not initialized"))
        })?;
        self.core.seen(id);
        crate::metrics::METRICS.heartbeats.inc();
        if beat.stopping {
            tracing::info!(node = %id, "node's daemon is stopping");
            self.core.stopping(id);
        }
        Ok(pb::HeartbeatResponse { period_ms })
    }

    fn require_leader(&self) -> Result<(), Status> {
        if self.core.is_leader() {
            return Ok(());
        }
        let mut st =
            Status::failed_precondition("this manager is not the leader; reconnect to the leader");
        if let Some(addr) = self.core.leader_addr()
            && let Ok(v) = MetadataValue::try_from(addr.as_str())
        {
            st.metadata_mut().insert(LEADER_METADATA, v);
        }
        Err(st)
    }

    /// The session message for `id` and what it carries: its config when
    /// it differs from `last` (what the session sent before), as a delta
    /// from `last` when the node takes them (`deltas`) and that is the
    /// smaller; `None` when nothing changed. The VXLAN sources, the same
    /// for every node, are compared by pointer and their change is made
    /// once for all sessions ([`DispatcherService::sources_change`]).
    ///
    /// `held_sources`: the digest of the sources the node holds, from its
    /// session request; a whole config leaves out sources that match it.
    /// When nothing changed, `last` takes the newer networks' parts (as
    /// its own version), so the next comparison starts from them.
    fn session_message_with(
        &self,
        id: NodeId,
        mut last: Option<&mut Sent>,
        deltas: Deltas,
        held_sources: &[u8],
    ) -> Result<(pb::SessionMessage, Option<(Payload, Sent)>), Status> {
        let msg = self.session_message(id)?;
        // The secrets can be unreadable (a locked manager): configs then go
        // without registry credentials.
        let unlock = self.core.unlock_holder().get();
        let key = |s: &crate::store::State| {
            let c = s.cluster.as_ref()?;
            let secrets = crate::autolock::secrets(c, unlock.as_ref()).ok()?;
            Some(crate::registry_auth::data_key(&secrets))
        };
        let (mut config, shared) = self
            .core
            .read_indexed(|s, version| {
                let shared = self.shared_for(version, s);
                let mut c = projection::project_parts(s, id, version, &shared)?;
                crate::registry_auth::fill(s, &mut c.config, || key(s));
                Some((c, shared))
            })
            .ok_or_else(|| {
                Status::permission_denied(format!("node {id} was removed from the cluster"))
            })?;
        config.config.image_fetches = self.core.pushes().fetches_for(id);
        let sources = shared.vxlan_allowed_sources.clone();
        if let Some(l) = last.as_deref_mut()
            && Arc::ptr_eq(&l.sources, &sources)
            && l.config.same_as(&config, &shared)
        {
            l.config.refresh(config);
            return Ok((msg, None));
        }
        let last = last.as_deref();
        self.core.config_pushed(id, config.config.version);
        let delta = last
            .filter(|_| deltas != Deltas::No)
            .and_then(|l| self.delta_for(l, &config, &shared, deltas));
        let payload = match delta {
            Some(d) => Payload::Delta(Box::new(d)),
            None => {
                let mut whole = config.whole();
                if last.is_none() && held_sources == sources.digest.as_slice() {
                    whole.keep_sources = true;
                } else {
                    whole.vxlan_allowed_sources = sources.list.clone();
                }
                // Admission keeps every config under this (see `limits`);
                // if one still gets past it, say so here rather than leave
                // the node failing to decode it on every reconnect without
                // a word.
                let bytes = prost::Message::encoded_len(&whole);
                if bytes > limits::MAX_NODE_CONFIG_BYTES {
                    tracing::error!(
                        node = %id,
                        bytes,
                        limit = limits::MAX_NODE_CONFIG_BYTES,
                        receive_limit = weft_proto::SESSION_RECEIVE_LIMIT_BYTES,
                        "a node's config is over the size limit; the node may fail to decode it"
                    );
                }
                Payload::Whole(Box::new(whole))
            }
        };
        Ok((msg, Some((payload, Sent { config, sources }))))
    }

    /// `new` (without its sources, which are `sources`) as a change to
    /// what the session sent before, if that is smaller than the whole
    /// config and makes it again ([`weft_proto::config_delta::diff`] checks
    /// that on the way: a config whose lists it diffs are not sets in
    /// order, which would make the node hold something else, goes whole).
    /// Networks whose parts did not change are not looked into, and of
    /// those that did only what changed is
    /// ([`projection::Projected::changed_pair`]).
    fn delta_for(
        &self,
        last: &Sent,
        new: &projection::Projected,
        shared: &projection::Shared,
        deltas: Deltas,
    ) -> Option<pb::NodeConfigDelta> {
        use weft_proto::config_delta;
        let sources = &shared.vxlan_allowed_sources;
        let (old_c, new_c) = last.config.changed_pair(new, shared);
        let Some(mut delta) = config_delta::diff(&old_c, &new_c) else {
            tracing::warn!(
                version = new_c.version,
                "a config delta would not make the config again; sending it whole"
            );
            return None;
        };
        debug_assert_eq!(
            config_delta::apply(&last.config.whole(), &delta).as_ref(),
            Ok(&new.whole()),
            "a delta made from canonical configs makes the new one"
        );
        if !Arc::ptr_eq(&last.sources, sources) {
            let change = self.sources_change(&last.sources, sources);
            delta.sources_added = change.0.clone();
            delta.sources_removed = change.1.clone();
        }
        if deltas == Deltas::PortsWhole {
            delta = weft_proto::config_delta::with_ports_whole(delta, new.whole_ports());
        }
        // The config with only its changed networks' lists is no larger
        // than the whole: a delta smaller than it needs no whole made.
        let bytes = prost::Message::encoded_len(&delta);
        let part = prost::Message::encoded_len(&new_c) + sources.encoded_len;
        (bytes < part || bytes < prost::Message::encoded_len(&new.whole()) + sources.encoded_len)
            .then_some(delta)
    }

    /// The addresses `new` adds to `old` and those it drops, made once
    /// for every session that goes from one to the other (the last pair is
    /// kept; the Arcs are kept with it, so their addresses stay theirs).
    fn sources_change(
        &self,
        old: &Arc<projection::Sources>,
        new: &Arc<projection::Sources>,
    ) -> Arc<(Vec<String>, Vec<String>)> {
        let mut cached = self.sources_change.lock().expect("sources change lock");
        if let Some((o, n, change)) = cached.as_ref()
            && Arc::ptr_eq(o, old)
            && Arc::ptr_eq(n, new)
        {
            return change.clone();
        }
        let before: std::collections::BTreeSet<&String> = old.list.iter().collect();
        let after: std::collections::BTreeSet<&String> = new.list.iter().collect();
        let change = Arc::new((
            after.difference(&before).map(|a| (*a).clone()).collect(),
            before.difference(&after).map(|a| (*a).clone()).collect(),
        ));
        *cached = Some((old.clone(), new.clone(), change.clone()));
        change
    }

    fn session_message(&self, id: NodeId) -> Result<pb::SessionMessage, Status> {
        let (period, role, shared) = self.core.read_indexed(|s, version| {
            (
                s.cluster.as_ref().map(|c| c.settings.heartbeat_period_ms),
                s.nodes.get(&id).map(|n| n.role),
                self.shared_for(version, s),
            )
        });
        let role = role.ok_or_else(|| {
            Status::permission_denied(format!("node {id} was removed from the cluster"))
        })?;
        Ok(pb::SessionMessage {
            manager_addrs: shared.manager_addrs.clone(),
            leader_addr: self.core.leader_addr().unwrap_or_default(),
            role: pb::NodeRole::from(role) as i32,
            heartbeat_period_ms: period.ok_or(crate::error::Error::NotReady)?,
            config: None,
            config_delta: None,
            log_requests: Vec::new(),
            probe_requests: Vec::new(),
            removed_node_ids: shared.removed.clone(),
            manager_node_ids: shared.manager_ids.clone(),
            sources_part: None,
        })
    }

    async fn run_task(
        &self,
        node: &Node,
        mut r: pb::RunTaskRequest,
    ) -> crate::error::Result<pb::Task> {
        use crate::error::Error;
        if let Some(e) = r.external.take() {
            return self.run_external(node, r, &e).await;
        }
        let container = crate::convert::container_from_wire(r.container.take(), &r.command)?;
        let stop = crate::convert::stop_from_wire(r.stop.take())?;
        let resources = crate::convert::resources_from_wire(r.resources, container.is_some())?;
        let log = crate::convert::log_from_wire(r.log.take())?;
        let health = crate::convert::health_from_wire(r.health.take(), container.is_some())?;
        if container.is_none() && (r.command.is_empty() || r.command[0].is_empty()) {
            return Err(Error::InvalidInput(
                "no image or command given: `weft run [OPTIONS] IMAGE [COMMAND...]` (or \
                 `-- CMD ARGS...` for a host process)"
                    .into(),
            ));
        }
        let name = if r.name.is_empty() {
            format!("task-{}", &crate::validate::random_id()[..8])
        } else {
            crate::validate::object_name("task", &r.name)?;
            r.name.clone()
        };
        let env: std::collections::BTreeMap<String, String> = r.env.into_iter().collect();
        limits::task_request(&r.command, &env, r.networks.len(), r.ports.len())?;
        use crate::store::NetworkMode;
        let mode = match r
            .networks
            .iter()
            .map(|n| n.network.as_str())
            .collect::<Vec<_>>()[..]
        {
            ["host"] => NetworkMode::Host,
            ["none"] => NetworkMode::None,
            ref many if many.iter().any(|n| *n == "host" || *n == "none") => {
                return Err(Error::InvalidInput(
                    "--network host and --network none cannot be combined with other networks"
                        .into(),
                ));
            }
            _ => NetworkMode::Attached,
        };
        if mode != NetworkMode::Attached && r.networks.iter().any(|n| !n.aliases.is_empty()) {
            return Err(Error::InvalidInput(format!(
                "--network-alias needs a user-defined network, not --network {}",
                r.networks[0].network
            )));
        }
        if mode != NetworkMode::Attached && r.networks.iter().any(|n| !n.ip.is_empty()) {
            return Err(Error::InvalidInput(format!(
                "--ip needs a network with addresses, not --network {}",
                r.networks[0].network
            )));
        }
        let ports = crate::convert::ports_from_wire(&r.ports)?;
        let refs = match mode {
            NetworkMode::Host | NetworkMode::None => Vec::new(),
            // `weft run` without --network: the node's default bridge.
            NetworkMode::Attached if r.networks.is_empty() => vec![pb::NetworkRef {
                ip6: String::new(),
                network: crate::store::DEFAULT_BRIDGE.into(),
                ip: String::new(),
                aliases: Vec::new(),
            }],
            NetworkMode::Attached => r.networks.clone(),
        };
        if refs
            .iter()
            .any(|n| n.network == crate::store::DEFAULT_BRIDGE)
        {
            self.await_default_bridge(node.id).await;
        }
        let mut networks = Vec::new();
        let mut aliases = std::collections::BTreeMap::new();
        let mut ip6s = std::collections::BTreeMap::new();
        for n in &refs {
            let net =
                self.core.read(|s| {
                    s.resolve_network_on(&n.network, node.id).cloned().map_err(|e| {
                    if n.network == crate::store::DEFAULT_BRIDGE {
                        Error::InvalidInput(format!(
                            "this node has no default bridge network: its daemon reports its \
                             --bridge-subnet when it connects, and none arrived within {} s (see \
                             `weft node ls` and the daemon's log), or run with --network NAME",
                            BRIDGE_WAIT.as_secs()
                        ))
                    } else {
                        Error::from(e)
                    }
                })
                })?;
            if networks
                .iter()
                .any(|(id, _): &(String, Option<std::net::IpAddr>)| *id == net.id)
            {
                return Err(Error::InvalidInput(format!(
                    "network {:?} is given twice",
                    n.network
                )));
            }
            let ip = if n.ip.is_empty() {
                None
            } else {
                Some(n.ip.parse().map_err(|_| {
                    Error::InvalidInput(format!("invalid --ip {:?}: give an IP address", n.ip))
                })?)
            };
            crate::validate::aliases(&net, &n.aliases)?;
            if !n.aliases.is_empty() {
                aliases.insert(net.id.clone(), n.aliases.clone());
            }
            if let Some(ip6) = crate::validate::ip6("--ip6", &n.ip6)? {
                ip6s.insert(net.id.clone(), ip6);
            }
            networks.push((net.id.clone(), ip));
        }
        let id = crate::validate::random_id();
        let cmd = Command::CreateTask {
            id: id.clone(),
            name,
            node: node.id,
            spec: crate::store::TaskSpec {
                command: r.command,
                env,
                container,
                stop,
                resources,
                log,
                health,
                auto_remove: r.auto_remove,
                external: None,
            },
            networks,
            standalone: true,
            now_ms: crate::core::now_ms(),
            network_mode: mode,
            ports,
            aliases,
            ip6: ip6s,
        };
        self.core.read(|s| limits::admit(s, &cmd))?;
        self.core
            .read(|s| crate::orchestrator::fits(s, node.id, &resources))
            .map_err(|why| Error::ResourceExhausted(format!("cannot run here: {why}")))?;
        self.core.propose(cmd).await?;
        self.core
            .read(|s| s.tasks.get(&id).map(|t| crate::convert::task_to_wire(s, t)))
            .ok_or(Error::NotReady)
    }
}

impl DispatcherService {
    /// Waits (up to [`BRIDGE_WAIT`]) until `node` has its default bridge. A
    /// daemon reports its bridge subnet when its session starts, a moment
    /// after `weft join` returns; a `weft run` right after the join waits for
    /// that instead of failing. Returns at once when the bridge exists.
    async fn await_default_bridge(&self, node: NodeId) {
        let mut applied = self.core.store().subscribe();
        let deadline = tokio::time::Instant::now() + BRIDGE_WAIT;
        while self.core.read(|s| s.default_bridge(node).is_none()) {
            if !matches!(
                tokio::time::timeout_at(deadline, applied.changed()).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }

    /// Creates or re-addresses the node's default bridge after its daemon
    /// reported its `--bridge-subnet`. A refusal (tasks still on the old
    /// subnet) is logged: the node keeps the old one until they are gone.
    async fn ensure_bridge(&self, node: &Node, subnet: &str) {
        let subnet = match crate::reports::bridge_subnet(subnet) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "ignoring a bridge subnet report");
                return;
            }
        };
        let same = self.core.read(|s| {
            s.default_bridge(node.id)
                .is_some_and(|n| n.subnet == subnet)
        });
        if same {
            return;
        }
        let r = self
            .core
            .propose(Command::SetNodeBridge {
                node: node.id,
                network_id: crate::validate::random_id(),
                subnet,
                now_ms: crate::core::now_ms(),
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(node = %node.id, %subnet, error = %e, "default bridge not changed");
        }
    }

    /// The node behind a request that carries no node ID: its certificate's.
    fn authorize_peer<T>(&self, req: &Request<T>) -> Result<Node, Status> {
        let claimed = weft_proto::tls::peer_identity(req)
            .map(|p| p.node_id)
            .ok_or_else(|| Status::unauthenticated("a node certificate is required"))?;
        self.authorize(req, &claimed)
    }

    fn control_for(&self, node: &Node) -> crate::controlapi::ControlService {
        crate::controlapi::ControlService::new(
            self.core.clone(),
            crate::controlapi::Caller::Node(node.id),
        )
    }
}

/// Unregisters a session when its stream task ends.
struct SessionGuard {
    core: Core,
    node: NodeId,
    tx: tokio::sync::mpsc::UnboundedSender<crate::core::SessionPush>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.core.session_closed(self.node, &self.tx);
    }
}

/// The end of a session whose certificate expired while it was open.
/// When the certificate a stream was opened with expires, and how long
/// until then (zero: already, or no certificate).
fn cert_lifetime<T>(req: &Request<T>) -> (Option<time::OffsetDateTime>, Duration) {
    let end = weft_proto::tls::peer_identity(req).map(|p| p.not_after);
    let left = end
        .and_then(|t| Duration::try_from(t - time::OffsetDateTime::now_utc()).ok())
        .unwrap_or(Duration::ZERO);
    (end, left)
}

fn expired_session(node: NodeId, at: Option<time::OffsetDateTime>) -> Status {
    let at = at.map(crate::core::rfc3339).unwrap_or_default();
    Status::unauthenticated(format!(
        "the certificate of node {node} expired at {at} while its session was open; reconnect \
         with the renewed certificate, or rejoin the cluster (`weft join --token ...`)"
    ))
}

/// Environment variable that makes the parts of a whole config's VXLAN
/// sources smaller ([`weft_proto::config_delta::SOURCES_PART_BYTES`] at
/// most), for tests only: a lab of a few nodes then gets its sources in
/// several parts, as a node of a cluster of thousands does.
pub const TEST_SOURCES_PART_BYTES_ENV: &str = "WEFT_TEST_SOURCES_PART_BYTES";

/// The size whole configs' VXLAN sources are cut into parts of.
fn sources_part_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let most = weft_proto::config_delta::SOURCES_PART_BYTES;
    *BYTES.get_or_init(|| {
        std::env::var(TEST_SOURCES_PART_BYTES_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(most, |v| v.clamp(1, most))
    })
}

/// `msg` carrying `payload`, counted as a push (the metric). A whole
/// config's VXLAN sources go in parts to a node that takes them
/// (`parts`): `msg` with the config and the first part, then a message
/// per further part, with nothing else in it.
fn with_payload(
    mut msg: pb::SessionMessage,
    payload: Payload,
    parts: bool,
) -> Vec<pb::SessionMessage> {
    let mut rest = Vec::new();
    let kind = match payload {
        Payload::Whole(mut c) => {
            if parts {
                rest = weft_proto::config_delta::split_sources(&mut c, sources_part_bytes());
            }
            msg.config = Some(*c);
            "whole"
        }
        Payload::Delta(d) => {
            msg.config_delta = Some(*d);
            "delta"
        }
    };
    crate::metrics::METRICS
        .config_pushes
        .get_or_create(&crate::metrics::PushKind { kind })
        .inc();
    // A part carries nothing else: the header came with the config.
    let mut out = vec![msg];
    out.extend(rest.into_iter().map(|part| pb::SessionMessage {
        sources_part: Some(part),
        ..Default::default()
    }));
    out
}

/// Whether two session messages agree apart from the config.
fn same_header(a: &pb::SessionMessage, b: &pb::SessionMessage) -> bool {
    a.manager_addrs == b.manager_addrs
        && a.leader_addr == b.leader_addr
        && a.role == b.role
        && a.heartbeat_period_ms == b.heartbeat_period_ms
        && a.removed_node_ids == b.removed_node_ids
        && a.manager_node_ids == b.manager_node_ids
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionMessage, Status>> + Send>>;
/// One config push in flight per session: after a push, config changes
/// wait until the node reports it applied that push (or reports an apply
/// error), or for [`MISSED_HEARTBEATS`](liveness::MISSED_HEARTBEATS)
/// heartbeat periods, and then go as one. Header changes, a removal, and
/// log and probe requests do not wait. A node slow to apply (a busy machine, a long kernel
/// change) gets one push that holds everything since instead of a queue of
/// stale ones, and the leader does not project for it what the node could
/// not take yet: under a stream of changes (hundreds of replicas starting)
/// each node costs a push per round trip, not one per change.
#[derive(Debug, Default)]
struct PushGate {
    /// Until when changes wait, while a push is unanswered.
    until: Option<tokio::time::Instant>,
    /// A change came while they waited.
    owed: bool,
}

impl PushGate {
    /// A config went out in `msg`: changes wait for its answer.
    fn pushed(&mut self, msg: &pb::SessionMessage) {
        let period = Duration::from_millis(msg.heartbeat_period_ms.max(1));
        self.until = Some(tokio::time::Instant::now() + period * liveness::MISSED_HEARTBEATS);
        self.owed = false;
    }

    /// Until when changes wait, if they do.
    fn until(&self) -> Option<tokio::time::Instant> {
        self.until
    }

    /// A change came: whether it waits (it is then owed).
    fn hold(&mut self) -> bool {
        self.owed |= self.until.is_some();
        self.until.is_some()
    }

    /// The node answered the last push, or the wait ran out: whether a
    /// change is owed.
    fn open(&mut self) -> bool {
        self.until = None;
        std::mem::take(&mut self.owed)
    }
}

type HeartbeatsStream = Pin<Box<dyn Stream<Item = Result<pb::HeartbeatResponse, Status>> + Send>>;
type FetchImageStream = Pin<Box<dyn Stream<Item = Result<pb::ImageFetchChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    type SessionStream = SessionStream;
    type HeartbeatsStream = HeartbeatsStream;
    type FetchImageStream = FetchImageStream;

    async fn fetch_image(
        &self,
        req: Request<pb::ImageFetchRequest>,
    ) -> Result<Response<Self::FetchImageStream>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        let (path, size) = self.core.pushes().open(node.id, &req.get_ref().fetch_id)?;
        // Opened now: the file stays readable if the load ends meanwhile.
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            Status::internal(format!(
                "cannot open the image spool {}: {e}",
                path.display()
            ))
        })?;
        tracing::info!(node = %node.id, fetch = %req.get_ref().fetch_id, bytes = size, "node fetches an image archive");
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut file = file.take(size);
            loop {
                let mut buf = vec![0u8; crate::imagepush::FETCH_CHUNK_BYTES];
                let n = match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "cannot read the image spool: {e}"
                            ))))
                            .await;
                        return;
                    }
                };
                buf.truncate(n);
                if tx
                    .send(Ok(pb::ImageFetchChunk { data: buf }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report_image_fetch(
        &self,
        req: Request<pb::ImageFetchReport>,
    ) -> Result<Response<pb::ImageFetchAck>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        let r = req.into_inner();
        let id = r.fetch_id.clone();
        let outcome = crate::imagepush::outcome_from_report(r);
        match &outcome {
            Ok(images) => {
                tracing::info!(node = %node.id, fetch = %id, images = images.len(), "node loaded an image archive")
            }
            Err(e) => {
                tracing::warn!(node = %node.id, fetch = %id, error = %e, "node failed to load an image archive")
            }
        }
        self.core.pushes().report(node.id, &id, outcome)?;
        Ok(Response::new(pb::ImageFetchAck {}))
    }

    async fn report_probe(
        &self,
        req: Request<pb::ProbeReport>,
    ) -> Result<Response<pb::ProbeAck>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        let mut r = req.into_inner();
        // Bounded: a result per peer and kind, nothing else kept.
        let max = limits::max_nodes() * crate::doctor::probes::KINDS.len();
        r.results.truncate(max);
        for res in &mut r.results {
            res.detail = limits::cut_report(std::mem::take(&mut res.detail));
        }
        r.error = limits::cut_report(r.error);
        r.local.truncate(crate::doctor::probes::MAX_OWN_CHECKS);
        for c in &mut r.local {
            for text in [&mut c.check, &mut c.subject, &mut c.detail, &mut c.hint] {
                *text = limits::cut_report(std::mem::take(text));
            }
        }
        if !self.core.probe_reported(node.id, r) {
            tracing::debug!(node = %node.id, "probe report nobody waits for");
        }
        Ok(Response::new(pb::ProbeAck {}))
    }

    async fn node_doctor(
        &self,
        req: Request<pb::DoctorRequest>,
    ) -> Result<Response<pb::DoctorReport>, Status> {
        self.authorize_peer(&req)?;
        self.require_leader()?;
        let checks = crate::doctor::run(&self.core, req.get_ref().probe).await;
        Ok(Response::new(pb::DoctorReport {
            checks: checks.into_iter().map(Into::into).collect(),
        }))
    }

    async fn session(
        &self,
        mut req: Request<pb::SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        self.await_leader().await?;
        self.core.seen(node.id);
        let deltas = match (
            req.get_ref().accepts_deltas,
            req.get_ref().accepts_port_deltas,
        ) {
            (false, _) => Deltas::No,
            (true, false) => Deltas::PortsWhole,
            (true, true) => Deltas::Yes,
        };
        let parts = req.get_ref().accepts_source_parts;
        let held_sources = std::mem::take(&mut req.get_mut().sources_digest);
        // Subscribed before the first config is made: a change committed
        // meanwhile wakes the loop below.
        let mut changes = self.core.store().subscribe();
        let mut pushes = self.core.pushes().subscribe();
        let (first, first_payload) =
            self.session_message_with(node.id, None, deltas, &held_sources)?;
        let (first_payload, first_sent) =
            first_payload.expect("a session's first message has its config");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        let (log_tx, mut log_rx) = tokio::sync::mpsc::unbounded_channel();
        // Each call checks the caller's certificate, but this stream is one
        // call: it ends when the certificate it was opened with expires (a
        // renewing node has reopened it with the new one well before).
        let (cert_end, cert_left) = cert_lifetime(&req);
        self.core.session_opened(node.id, log_tx.clone());
        tokio::spawn(async move {
            let _counted = crate::metrics::SessionGauge::open();
            let _registration = SessionGuard {
                core: this.core.clone(),
                node: node.id,
                tx: log_tx,
            };
            // The header sent last (no config), and the config.
            let mut last = first.clone();
            let mut last_sent = first_sent;
            let mut gate = PushGate::default();
            gate.pushed(&last);
            for m in with_payload(first, first_payload, parts) {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            // Woken by store changes and by Raft server changes (leader,
            // term, membership) — the latter end the session when this
            // manager stops leading. Nothing polls.
            let mut server = this.core.raft().raft().server_metrics();
            let expired = tokio::time::sleep(cert_left);
            tokio::pin!(expired);
            loop {
                let waiting = gate.until();
                tokio::select! {
                    _ = tx.closed() => return,
                    () = &mut expired => {
                        let _ = tx.send(Err(expired_session(node.id, cert_end))).await;
                        return;
                    }
                    r = changes.changed() => if r.is_err() { return },
                    r = pushes.changed() => if r.is_err() { return },
                    r = server.changed() => if r.is_err() { return },
                    () = tokio::time::sleep_until(waiting.unwrap_or_else(tokio::time::Instant::now)),
                        if waiting.is_some() => if !gate.open() { continue },
                    Some(push) = log_rx.recv() => {
                        let ask = match push {
                            crate::core::SessionPush::Log(req) => Some(pb::SessionMessage {
                                log_requests: vec![req],
                                ..last.clone()
                            }),
                            crate::core::SessionPush::Probe(req) => Some(pb::SessionMessage {
                                probe_requests: vec![req],
                                ..last.clone()
                            }),
                            // The node answered the last push: what changed
                            // since, if anything, goes now. Checked again
                            // here: this one may be older than that push.
                            crate::core::SessionPush::Applied => {
                                if this.core.push_answered(node.id) && gate.open() {
                                    None
                                } else {
                                    continue;
                                }
                            }
                        };
                        if let Some(ask) = ask {
                            if tx.send(Ok(ask)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                }
                if !this.core.is_leader() {
                    let st = this
                        .require_leader()
                        .err()
                        .unwrap_or_else(|| Status::unavailable("leadership changed"));
                    let _ = tx.send(Err(st)).await;
                    return;
                }
                // While a push is unanswered the config waits; what the
                // header says (the trust lists, the managers, a role) and a
                // removal do not.
                let next = if gate.hold() {
                    this.session_message(node.id).map(|msg| (msg, None))
                } else {
                    this.session_message_with(node.id, Some(&mut last_sent), deltas, &[])
                };
                match next {
                    Ok((msg, Some((payload, sent)))) => {
                        tracing::debug!(node = %node.id, version = sent.config.config.version, delta = matches!(payload, Payload::Delta(_)), "session push");
                        gate.pushed(&msg);
                        last = msg.clone();
                        last_sent = sent;
                        for m in with_payload(msg, payload, parts) {
                            if tx.send(Ok(m)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok((msg, None)) if !same_header(&msg, &last) => {
                        last = msg.clone();
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(st) => {
                        let _ = tx.send(Err(st)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        self.require_leader()?;
        self.core.seen(node.id);
        crate::metrics::METRICS.heartbeats.inc();
        if req.get_ref().stopping {
            tracing::info!(node = %node.id, "node's daemon is stopping");
            self.core.stopping(node.id);
        }
        let period_ms = self.core.cluster()?.settings.heartbeat_period_ms;
        Ok(Response::new(pb::HeartbeatResponse { period_ms }))
    }

    async fn heartbeats(
        &self,
        req: Request<tonic::Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatsStream>, Status> {
        // The stream is the certificate's node's: checked as a call is,
        // once; each beat below must name the same node.
        let claimed = weft_proto::tls::peer_identity(&req)
            .map(|p| p.node_id)
            .unwrap_or_default();
        let node = self.authorize(&req, &claimed)?;
        self.require_leader()?;
        // As a session, the stream ends when the certificate it was opened
        // with expires.
        let (cert_end, cert_left) = cert_lifetime(&req);
        let mut beats = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let this = self.clone();
        tokio::spawn(async move {
            let expired = tokio::time::sleep(cert_left);
            tokio::pin!(expired);
            let answer = |beat: Result<Option<pb::HeartbeatRequest>, Status>| {
                let beat = match beat {
                    Ok(Some(b)) => b,
                    Ok(None) | Err(_) => return None,
                };
                Some(this.beat(node.id, &claimed, &beat))
            };
            loop {
                let r = tokio::select! {
                    _ = tx.closed() => return,
                    () = &mut expired => Some(Err(expired_session(node.id, cert_end))),
                    b = beats.message() => answer(b),
                };
                let Some(r) = r else { return };
                let end = r.is_err();
                if tx.send(r).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        limits::at_most(
            "certificate signing request",
            req.get_ref().csr_pem.len(),
            limits::MAX_CSR_BYTES,
            "bytes",
        )?;
        let cluster = self.core.cluster()?;
        let ca = ClusterCa::from_pem(&cluster.ca_cert_pem, &self.core.secrets()?.ca_key_pem)
            .map_err(Error::from)?;
        let issued =
            crate::join::reissue(&self.core, &cluster, &ca, &node, &req.get_ref().csr_pem).await?;
        tracing::info!(node = %node.id, role = node.role.as_str(), "certificate renewed");
        Ok(Response::new(pb::RenewCertificateResponse {
            cert_pem: issued.cert_pem,
            role: pb::NodeRole::from(node.role) as i32,
        }))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        if node.role == Role::Manager {
            if self.core.read(|s| s.managers().count()) == 1 {
                return Err(Error::Quorum(quorum::QuorumError::LastManager(node.id)).into());
            }
            if !req.get_ref().force {
                let voters = self.core.voters();
                quorum::check_removal(&voters, |id| self.core.is_reachable(id), node.id)
                    .map_err(Error::from)?;
            }
        }
        self.core
            .propose(Command::RemoveNode { id: node.id })
            .await?;
        tracing::info!(node = %node.id, "node left the cluster");
        Ok(Response::new(pb::LeaveResponse {}))
    }

    async fn report_status(
        &self,
        req: Request<pb::StatusReport>,
    ) -> Result<Response<pb::StatusAck>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        let mut r = req.into_inner();
        // Its own images only: the list is filed under the node the
        // certificate names.
        self.core
            .inventories()
            .reported(node.id, crate::core::now_ms(), r.images.take());
        self.core.config_applied(
            node.id,
            r.applied_version,
            limits::cut_report(r.apply_error.clone()),
        );
        // One handshake per peer node; keys of the wrong length are no
        // peer's and are dropped.
        self.core.handshakes_seen(
            node.id,
            r.handshakes
                .iter()
                .filter(|h| h.public_key.len() == limits::WG_PUBLIC_KEY_BYTES)
                .take(limits::max_nodes())
                .map(|h| (h.public_key.clone(), h.last_handshake_ms))
                .collect(),
        );
        if !r.bridge_subnet.is_empty() {
            self.ensure_bridge(&node, &r.bridge_subnet).await;
        }
        let key_ok = r.wg_public_key.is_empty()
            || self
                .core
                .read(|s| crate::reports::wg_public_key(s, node.id, &r.wg_public_key))
                .inspect_err(|e| {
                    tracing::warn!(node = %node.id, error = %e, "ignoring a WireGuard key report");
                })
                .is_ok();
        if key_ok
            && !r.wg_public_key.is_empty()
            && (r.wg_public_key != node.wg_public_key || node.tunnel_ip.is_none())
        {
            self.core
                .propose(Command::SetNodeWgKey {
                    id: node.id,
                    public_key: r.wg_public_key.clone(),
                    now_ms: crate::core::now_ms(),
                })
                .await?;
        }
        let version = crate::reports::node_version(&r.version)
            .inspect_err(
                |e| tracing::warn!(node = %node.id, error = %e, "ignoring a version report"),
            )
            .unwrap_or_default();
        if let Some(res) = &r.resources {
            match crate::reports::node_resources(res) {
                Ok(res)
                    if res != node.resources
                        || (!version.is_empty() && version != node.version) =>
                {
                    self.core
                        .propose(Command::SetNodeResources {
                            id: node.id,
                            resources: res,
                            version,
                        })
                        .await?;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(node = %node.id, error = %e, "ignoring a resources report")
                }
            }
        }
        // Only changes become Raft writes; no node has more tasks than the
        // cluster may, so entries past that are dropped unread.
        let changes: Vec<Command> = self.core.read(|s| {
            r.tasks
                .iter()
                .take(limits::MAX_TASKS as usize)
                .filter_map(|ts| {
                    let t = s.tasks.get(&ts.task_id)?;
                    if t.node != node.id {
                        return None;
                    }
                    let status = ts
                        .status
                        .as_ref()
                        .ok_or_else(|| "no status".to_string())
                        .and_then(|st| {
                            crate::convert::task_status_from_wire(st, crate::core::now_ms())
                        })
                        .inspect_err(|e| {
                            tracing::warn!(node = %node.id, task = %t.id, error = %e, "bad task report");
                        })
                        .ok()?;
                    let same =
                        t.status.state == status.state && t.status.message == status.message;
                    (!same).then(|| Command::SetTaskStatus {
                        id: t.id.clone(),
                        node: node.id,
                        status,
                    })
                })
                .collect()
        });
        let t0 = std::time::Instant::now();
        let n = changes.len();
        for c in changes {
            self.core.propose(c).await?;
        }
        if n > 0 {
            tracing::debug!(node = %node.id, changes = n, ms = t0.elapsed().as_millis() as u64, "task status changes recorded");
        }
        Ok(Response::new(pb::StatusAck {}))
    }

    async fn run_task(
        &self,
        req: Request<pb::RunTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        self.require_leader()?;
        Ok(Response::new(
            DispatcherService::run_task(self, &node, req.into_inner()).await?,
        ))
    }

    async fn list_node_networks(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let node = self.authorize_peer(&req)?;
        weft_proto::v1::control_server::Control::list_networks(&self.control_for(&node), req).await
    }

    async fn get_node_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::NetworkDetail>, Status> {
        let node = self.authorize_peer(&req)?;
        weft_proto::v1::control_server::Control::get_network(&self.control_for(&node), req).await
    }

    async fn create_local_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let node = self.authorize_peer(&req)?;
        weft_proto::v1::control_server::Control::create_network(&self.control_for(&node), req).await
    }

    async fn remove_local_network(
        &self,
        req: Request<pb::RemoveNetworkRequest>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        let node = self.authorize_peer(&req)?;
        weft_proto::v1::control_server::Control::remove_network(&self.control_for(&node), req).await
    }

    async fn connect_task(
        &self,
        req: Request<pb::ConnectNetworkRequest>,
    ) -> Result<Response<pb::ConnectNetworkResponse>, Status> {
        let node = self.authorize_peer(&req)?;
        weft_proto::v1::control_server::Control::connect_network(&self.control_for(&node), req)
            .await
    }

    async fn disconnect_task(
        &self,
        req: Request<pb::DisconnectNetworkRequest>,
    ) -> Result<Response<pb::ConnectNetworkResponse>, Status> {
        let node = self.authorize_peer(&req)?;
        weft_proto::v1::control_server::Control::disconnect_network(&self.control_for(&node), req)
            .await
    }

    async fn remove_task(
        &self,
        req: Request<pb::NodeRemoveTaskRequest>,
    ) -> Result<Response<pb::RemoveTaskResponse>, Status> {
        let node = self.authorize(&req, &req.get_ref().node_id)?;
        let task = self
            .core
            .read(|s| s.resolve_task(&req.get_ref().task).cloned())
            .map_err(Error::from)?;
        if task.node != node.id {
            return Err(Status::permission_denied(format!(
                "task {} runs on another node; remove it there or from a manager",
                task.name
            )));
        }
        self.core
            .propose(Command::RemoveTask { id: task.id })
            .await?;
        Ok(Response::new(pb::RemoveTaskResponse {}))
    }
    async fn publish_log_stream(
        &self,
        mut req: Request<tonic::Streaming<pb::PublishLogsRequest>>,
    ) -> Result<Response<pb::PublishLogsResponse>, Status> {
        // Who calls, from the certificate, before reading anything.
        let peer = self.authorize_peer(&req)?;
        let first = req
            .get_mut()
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty log stream"))?;
        let node = self.authorize(&req, &first.node_id)?;
        if node.id != peer.id {
            return Err(Status::permission_denied(
                "a log stream must name the node of the calling certificate",
            ));
        }
        let tx = self
            .core
            .log_stream_opened(node.id, first.request_id)
            .ok_or_else(|| {
                Status::not_found("no such log request from this manager (it timed out, or was made of another node)")
            })?;
        let mut stream = req.into_inner();
        let mut next = Some(first);
        loop {
            if let Some(m) = next.take() {
                let piece = if m.error.is_empty() {
                    Ok(m.lines)
                } else {
                    Err(m.error)
                };
                let failed = piece.is_err();
                let empty = piece.as_ref().is_ok_and(Vec::is_empty);
                // Waits while the reader is slow: the node's stream waits too.
                if !empty && tx.send(piece).await.is_err() {
                    return Err(Status::cancelled("nobody reads this log any more"));
                }
                if failed {
                    return Ok(Response::new(pb::PublishLogsResponse {}));
                }
            }
            tokio::select! {
                () = tx.closed() => return Err(Status::cancelled("nobody reads this log any more")),
                m = stream.message() => match m {
                    Ok(Some(m)) => next = Some(m),
                    Ok(None) => return Ok(Response::new(pb::PublishLogsResponse {})),
                    Err(s) => {
                        let _ = tx.send(Err(format!("the node's log stream broke: {}", s.message()))).await;
                        return Err(s);
                    }
                },
            }
        }
    }
}
