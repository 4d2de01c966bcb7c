//! The operator API (`weft node …`, `weft join-token …`, `weft info`).
//!
//! Served twice by the same code: on the local unix socket (the root user of
//! this node, trusted) and on the manager port (manager certificates only).
//! Reads come from this manager's copy of the store; writes are proposed
//! through Raft and forwarded to the leader when this manager is a follower.
//! Input is validated here, before anything is proposed, so a bad request
//! changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tonic::{Request, Response, Status};
use weft_proto::token::{JoinToken, random_secret};
use weft_proto::v1 as pb;
use weft_proto::v1::control_server::Control;

use crate::convert::{availability_from_wire, node_to_wire, role_from_wire};
use crate::core::{Core, now_ms};
use crate::error::{Error, Result};
use crate::limits;
use crate::quorum;
use crate::store::{Applied, Command, Node, NodeState, Role, State};

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The local unix socket: root on this node.
    Local,
    /// The manager port: must present a manager certificate.
    Remote,
    /// A node's request forwarded by the dispatcher (already
    /// authenticated there): network commands on that node's behalf.
    Node(crate::store::NodeId),
}

/// Where the local socket finds the manager, if this node is one right now
/// (a node becomes or stops being a manager while the daemon runs).
pub type CoreSlot = Arc<RwLock<Option<Core>>>;

/// The `Control` gRPC service over one manager.
#[derive(Clone)]
pub struct ControlService {
    core: Core,
    caller: Caller,
    archive_check: Option<ArchiveCheck>,
}

/// Checks an image archive (the spooled file, the tag asked for) before a
/// cluster-wide load sends it anywhere; the daemon provides it (the
/// archive format is the worker's, which the manager must not depend on).
/// Without one, each node's load checks it (and refuses it, unchanged).
pub type ArchiveCheck =
    Arc<dyn Fn(&std::path::Path, Option<&str>) -> std::result::Result<(), String> + Send + Sync>;

/// The `Control` service of the local socket: answers through the manager
/// in the slot, or explains that this node is not a manager.
#[derive(Clone)]
pub struct LocalControl {
    slot: CoreSlot,
    node: Option<Arc<dyn NodeNetworks>>,
    /// Why this node's manager is not running though the node is one (its
    /// Raft stopped on a disk error, say); empty when it runs or the node
    /// is no manager.
    down: Option<Arc<std::sync::RwLock<String>>>,
    /// Checks archives of `image load --all-nodes` (see [`ArchiveCheck`]).
    archive_check: Option<ArchiveCheck>,
}

/// What the local socket needs from the node itself for `weft network`:
/// checks against the node's own kernel, and forwarding to the managers
/// (through the node's dispatcher session) when it is not a manager.
#[tonic::async_trait]
pub trait NodeNetworks: Send + Sync + 'static {
    /// Refuses a bridge subnet that collides with a route of this node.
    async fn check_bridge_subnet(&self, subnet: &str) -> std::result::Result<(), Status>;
    /// `Dispatcher.CreateLocalNetwork`.
    async fn create(&self, r: pb::CreateNetworkRequest)
    -> std::result::Result<pb::Network, Status>;
    /// `Dispatcher.ListNodeNetworks`.
    async fn list(&self) -> std::result::Result<pb::ListNetworksResponse, Status>;
    /// `Dispatcher.GetNodeNetwork`.
    async fn get(&self, r: pb::GetNetworkRequest)
    -> std::result::Result<pb::NetworkDetail, Status>;
    /// `Dispatcher.RemoveLocalNetwork`.
    async fn remove(&self, r: pb::RemoveNetworkRequest) -> std::result::Result<(), Status>;
    /// `Dispatcher.ConnectTask` / `DisconnectTask`.
    async fn connect(
        &self,
        r: pb::ConnectNetworkRequest,
        attach: bool,
    ) -> std::result::Result<(), Status>;
}

impl LocalControl {
    /// A local control service over `slot`.
    pub fn new(slot: CoreSlot) -> Self {
        LocalControl {
            slot,
            node: None,
            down: None,
            archive_check: None,
        }
    }

    /// A local control service that can also serve `weft network` on a
    /// node that is not a manager.
    pub fn with_node(slot: CoreSlot, node: Arc<dyn NodeNetworks>) -> Self {
        LocalControl {
            slot,
            node: Some(node),
            down: None,
            archive_check: None,
        }
    }

    /// Says `down` (when not empty) instead of "not a manager" while the
    /// slot is empty: the node is a manager whose manager is not running.
    pub fn with_down_reason(mut self, down: Arc<std::sync::RwLock<String>>) -> Self {
        self.down = Some(down);
        self
    }

    /// Checks archives of `image load --all-nodes` with `check` before any
    /// node is asked to load them.
    pub fn with_archive_check(mut self, check: ArchiveCheck) -> Self {
        self.archive_check = Some(check);
        self
    }

    /// The manager if this node is one, else the node forwarder.
    fn route(
        &self,
    ) -> std::result::Result<std::result::Result<ControlService, Arc<dyn NodeNetworks>>, Status>
    {
        match (self.inner(), &self.node) {
            (Ok(c), _) => Ok(Ok(c)),
            (Err(_), Some(n)) => Ok(Err(n.clone())),
            (Err(e), None) => Err(e),
        }
    }

    fn inner(&self) -> std::result::Result<ControlService, Status> {
        let core = self.slot.read().expect("core slot").clone();
        let down = self
            .down
            .as_ref()
            .map(|d| d.read().expect("down reason").clone())
            .filter(|d| !d.is_empty());
        core.map(|c| {
            let mut svc = ControlService::new(c, Caller::Local);
            svc.archive_check = self.archive_check.clone();
            svc
        })
        .ok_or_else(|| match down {
            Some(why) => Status::unavailable(format!(
                "this node is a manager, but its manager is not running: {why}"
            )),
            None => Status::failed_precondition(
                "this node is not a manager: run the command on a manager node \
                     (or point -H at a manager's daemon socket)",
            ),
        })
    }
}

impl ControlService {
    /// A control service for one kind of caller.
    pub fn new(core: Core, caller: Caller) -> Self {
        ControlService {
            core,
            caller,
            archive_check: None,
        }
    }

    fn authorize<T>(&self, req: &Request<T>) -> std::result::Result<(), Status> {
        if self.caller != Caller::Remote {
            return Ok(());
        }
        // The manager port checks this before the body is read
        // (server::limits) and marks the request; checking here only when
        // the mark is missing keeps the service safe wherever it is
        // mounted without doing the check twice per call.
        if req
            .extensions()
            .get::<crate::server::ManagerChecked>()
            .is_some()
        {
            return Ok(());
        }
        self.core.authorize_manager(req).map(|_| ())
    }

    /// Authorizes the call, then brings this manager's store up to date
    /// with the cluster (a read index, see [`Core::linearize`]): every call
    /// but `GetCluster` (`weft info`, which says what this manager itself
    /// holds) reads and validates against a linearizable view, never a
    /// stale one.
    async fn admit<T>(&self, req: &Request<T>) -> std::result::Result<(), Status> {
        self.authorize(req)?;
        self.core.linearize().await.map_err(Status::from)
    }

    /// The node whose local networks this caller sees: this manager's own
    /// node on the local socket, the forwarding node for a node, none for a
    /// remote operator.
    pub fn scope(&self) -> Option<crate::store::NodeId> {
        match self.caller {
            Caller::Local => Some(self.core.node_id()),
            Caller::Node(n) => Some(n),
            Caller::Remote => None,
        }
    }

    /// A network by name or ID as this caller sees it.
    fn resolve_visible(&self, s: &State, what: &str) -> Result<crate::store::Network> {
        Ok(match self.scope() {
            Some(node) => s.resolve_network_on(what, node)?.clone(),
            None => {
                let n = s.resolve_network(what)?;
                if n.node.is_some() {
                    return Err(crate::store::StoreError::NetworkNotFound(what.into()).into());
                }
                n.clone()
            }
        })
    }

    fn wire(&self, n: &Node) -> pb::Node {
        let (status, voter) = self.core.manager_status(n);
        node_to_wire(n, status, voter)
    }

    fn resolve(&self, what: &str) -> Result<Node> {
        let what = if what == "self" {
            self.core.node_id().to_string()
        } else {
            what.to_string()
        };
        Ok(self.core.read(|s| s.resolve_node(&what).cloned())?)
    }

    fn tokens(&self) -> Result<pb::JoinTokens> {
        self.tokens_with(None)
    }

    /// The tokens, with `rotated` standing in for the secret of one role just
    /// proposed (this manager may be a follower that has not applied it yet).
    fn tokens_with(&self, rotated: Option<(Role, &str)>) -> Result<pb::JoinTokens> {
        let c = self.core.cluster()?;
        let mut secrets = self.core.secrets()?;
        match rotated {
            Some((Role::Worker, s)) => secrets.worker_secret = s.to_string(),
            Some((Role::Manager, s)) => secrets.manager_secret = s.to_string(),
            None => {}
        }
        let fp = weft_proto::identity::ca_fingerprint(&c.ca_cert_pem)
            .map_err(|e| Error::FailedPrecondition(format!("cluster CA is unreadable: {e}")))?;
        Ok(pb::JoinTokens {
            worker: JoinToken::new(fp, secrets.worker_secret.clone()).to_string(),
            manager: JoinToken::new(fp, secrets.manager_secret.clone()).to_string(),
        })
    }

    /// Summary for `weft info`.
    pub fn summary(&self) -> Result<pb::ClusterSummary> {
        let c = self.core.cluster()?;
        let m = self.core.raft().metrics();
        let (managers, nodes_total, tasks_by_state) = self.core.read(|s: &State| {
            (
                s.managers().map(|n| self.wire(n)).collect::<Vec<_>>(),
                s.nodes.len(),
                s.tasks_by_state()
                    .into_iter()
                    .map(|(k, n)| (k.to_string(), n))
                    .collect(),
            )
        });
        let leader_addr = self.core.leader_addr().unwrap_or_default();
        Ok(pb::ClusterSummary {
            default_addr_pool_mask_length6: u32::from(c.settings.default_addr_pool_mask_length6),
            cluster_id: c.id.clone(),
            leader_id: m.leader.map(|l| l.to_string()).unwrap_or_default(),
            leader_addr,
            raft_term: m.term,
            raft_commit_index: m.applied_index.unwrap_or(0),
            raft_applied_index: m.applied_index.unwrap_or(0),
            heartbeat_period_ms: c.settings.heartbeat_period_ms,
            disconnect_grace_ms: c.settings.disconnect_grace_ms.unwrap_or(0),
            data_path_port: u32::from(c.settings.data_path_port),
            default_addr_pools: (c.settings.default_addr_pools.iter())
                .cloned()
                .chain(match c.settings.default_addr_pools6.as_slice() {
                    [] => vec![crate::store::ipam::ula_pool(&c.id)],
                    p => p.to_vec(),
                })
                .map(|p| p.to_string())
                .collect(),
            default_addr_pool_mask_length: u32::from(c.settings.default_addr_pool_mask_length),
            cert_expiry_secs: c.settings.cert_expiry_secs,
            managers_total: managers.len() as u32,
            managers,
            ca_fingerprint: hex_fp(&c.ca_cert_pem),
            nodes_total: nodes_total as u32,
            wg_key_rotation_secs: c.settings.wg_key_rotation_secs,
            wg_port: u32::from(c.settings.wg_port),
            ingress_subnet: c.settings.ingress_subnet().to_string(),
            ingress_subnet6: (c.settings.ingress_subnet6)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            autolock: c.autolock(),
            unlock_key: String::new(),
            tasks_by_state,
        })
    }

    /// Reads `f` from this manager's store once it has caught up with a
    /// write just made (a follower applies it a moment after the leader).
    async fn read_after_write<T>(&self, f: impl Fn(&State) -> Option<T>) -> Result<T> {
        let mut changes = self.core.store().subscribe();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(v) = self.core.read(&f) {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(Error::NotReady);
            }
        }
    }

    async fn set_role(&self, r: pb::SetNodeRoleRequest) -> Result<pb::Node> {
        let role = role_from_wire(r.role)
            .ok_or_else(|| Error::InvalidInput("role must be worker or manager".into()))?;
        let node = self.resolve(&r.node)?;
        if node.role == role {
            return Ok(self.wire(&node));
        }
        if role == Role::Worker && !r.force {
            self.check_quorum(&node)?;
        }
        if role == Role::Worker && self.core.read(|s| s.managers().count()) == 1 {
            return Err(Error::Quorum(quorum::QuorumError::LastManager(node.id)));
        }
        let applied = self
            .core
            .propose(Command::SetRole {
                id: node.id,
                role,
                now_ms: now_ms(),
            })
            .await?;
        Ok(self.applied_node(applied, &node))
    }

    fn check_quorum(&self, node: &Node) -> Result<()> {
        let voters = self.core.voters();
        Ok(quorum::check_removal(
            &voters,
            |id| self.core.is_reachable(id),
            node.id,
        )?)
    }

    fn applied_node(&self, applied: Applied, fallback: &Node) -> pb::Node {
        match applied {
            Applied::Node(n) => self.wire(&n),
            Applied::Done => self.wire(fallback),
        }
    }

    async fn remove(&self, r: pb::RemoveNodeRequest) -> Result<()> {
        let node = self.resolve(&r.node)?;
        if node.role == Role::Manager {
            return Err(Error::FailedPrecondition(format!(
                "node {} ({}) is a manager; demote it first with `weft node demote {}`",
                node.id, node.hostname, node.id
            )));
        }
        if node.state == NodeState::Ready && !r.force {
            return Err(Error::FailedPrecondition(format!(
                "node {} ({}) is up; stop it or run `weft leave` on it first, or remove it anyway with --force",
                node.id, node.hostname
            )));
        }
        self.core
            .propose(Command::RemoveNode { id: node.id })
            .await?;
        Ok(())
    }

    /// The checks of a node update against this manager's store: the node
    /// `what` resolves, every label removed exists (or is added again), and
    /// the labels stay within their limit. Returns the node's ID.
    fn check_node_update(
        &self,
        what: &str,
        label_add: &BTreeMap<String, String>,
        label_rm: &[String],
    ) -> Result<crate::store::NodeId> {
        let (id, hostname, missing, before, after) = self.core.read(|s| {
            s.resolve_node(what).map(|n| {
                let missing: Vec<String> = label_rm
                    .iter()
                    .filter(|k| !n.labels.contains_key(*k))
                    .cloned()
                    .collect();
                // Counted without copying the labels (this is the write
                // path the control-plane benchmark measures).
                let added = label_add
                    .keys()
                    .filter(|k| !n.labels.contains_key(*k))
                    .count();
                let removed = label_rm
                    .iter()
                    .filter(|k| n.labels.contains_key(*k) && !label_add.contains_key(*k))
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                (
                    n.id,
                    n.hostname.clone(),
                    missing,
                    n.labels.len(),
                    n.labels.len() + added - removed,
                )
            })
        })?;
        for k in label_rm {
            if missing.contains(k) && !label_add.contains_key(k) {
                return Err(Error::InvalidInput(format!(
                    "node {hostname} has no label {k:?} to remove"
                )));
            }
        }
        limits::growth_at_most(
            format_args!("labels of node {hostname}"),
            before,
            after,
            limits::MAX_LABELS,
            "labels",
        )?;
        Ok(id)
    }

    async fn update(&self, r: pb::UpdateNodeRequest) -> Result<pb::UpdateNodeResponse> {
        // Only what the checks need: cloning the whole node (labels and
        // all) on every write showed up in the control-plane profile.
        let what = if r.node == "self" {
            self.core.node_id().to_string()
        } else {
            r.node.clone()
        };
        let availability = match r.availability {
            0 => None,
            a => Some(availability_from_wire(a).ok_or_else(|| {
                Error::InvalidInput("availability must be active, pause or drain".into())
            })?),
        };
        // The request's own size first, before anything is looked up.
        limits::at_most("--label-rm", r.label_rm.len(), limits::MAX_LABELS, "labels")?;
        limits::labels("this update", r.label_add.len(), &r.label_add)?;
        let mut label_add = BTreeMap::new();
        for (k, v) in r.label_add {
            validate_label_key(&k)?;
            label_add.insert(k, v);
        }
        for k in &r.label_rm {
            validate_label_key(k)?;
        }
        // A blind change (labels added or removed, an availability), which
        // the store checks again where it is applied: checked first against
        // this manager's store as it stands, without a read index. A refusal
        // must not come from a stale store, so before refusing the checks
        // run again after a read index; and so does the write, when the
        // node it named was not found where it was applied.
        let id = match self.check_node_update(&what, &label_add, &r.label_rm) {
            Ok(id) => id,
            Err(_) => {
                self.core.linearize().await?;
                self.check_node_update(&what, &label_add, &r.label_rm)?
            }
        };
        let now = now_ms();
        let added = &label_add;
        let removed: Vec<String> = r
            .label_rm
            .iter()
            .filter(|k| !added.contains_key(*k))
            .cloned()
            .collect();
        let command = |id| Command::UpdateNode {
            id,
            availability,
            label_add: label_add.clone(),
            label_rm: r.label_rm.clone(),
            now_ms: now,
        };
        let id = match self.core.propose(command(id)).await {
            Ok(_) => id,
            Err(Error::Store(crate::store::StoreError::NodeNotFound(_))) => {
                // Resolved from a stale store (the name now another
                // node's?): resolve again after a read index, once.
                self.core.linearize().await?;
                let id = self.check_node_update(&what, &label_add, &r.label_rm)?;
                self.core.propose(command(id)).await?;
                id
            }
            Err(e) => return Err(e),
        };
        // The store answers with Done (no node clone on every manager);
        // the reply is read here once this manager has applied the write
        // (at once on the leader, a moment later on a follower).
        let reply = |n: &Node| pb::UpdateNodeResponse {
            id: n.id.to_string(),
            hostname: n.hostname.clone(),
            updated_at_ms: n.updated_at_ms,
        };
        let seen = self
            .read_after_write(|s| {
                s.nodes
                    .get(&id)
                    .filter(|n| {
                        availability.is_none_or(|a| n.availability == a)
                            && added.iter().all(|(k, v)| n.labels.get(k) == Some(v))
                            && removed.iter().all(|k| !n.labels.contains_key(k))
                    })
                    .map(reply)
            })
            .await;
        match seen {
            Ok(n) => Ok(n),
            // A concurrent write changed the same fields again: the write
            // was applied; answer with the node as it stands.
            Err(Error::NotReady) => Ok(self.core.read(|s| {
                s.nodes.get(&id).map(reply).ok_or_else(|| {
                    Error::from(crate::store::StoreError::NodeNotFound(id.to_string()))
                })
            })?),
            Err(e) => Err(e),
        }
    }
}

impl ControlService {
    async fn rotate_node_key(&self, r: pb::RotateNodeKeyRequest) -> Result<Vec<String>> {
        let ids: Vec<(crate::store::NodeId, String)> = if r.all {
            self.core.read(|s| {
                s.nodes
                    .values()
                    .map(|n| (n.id, n.hostname.clone()))
                    .collect()
            })
        } else {
            if r.node.is_empty() {
                return Err(Error::InvalidInput("name a node, or use --all".into()));
            }
            let n = self.resolve(&r.node)?;
            vec![(n.id, n.hostname)]
        };
        let now = now_ms();
        for (id, _) in &ids {
            self.core
                .propose(Command::RotateNodeKey {
                    id: *id,
                    now_ms: now,
                })
                .await?;
        }
        Ok(ids.into_iter().map(|(_, h)| h).collect())
    }

    async fn service_logs(&self, r: pb::ServiceLogsRequest) -> Result<LogStream> {
        use futures::StreamExt;
        if !self.core.is_leader() {
            // Sessions live on the leader: ask it, and pass its stream on.
            let ch = self.core.leader_channel().ok_or_else(|| {
                Error::FailedPrecondition("no leader known; try again in a moment".into())
            })?;
            let resp = weft_proto::v1::control_client::ControlClient::new(ch)
                .service_logs(r)
                .await
                .map_err(|s| Error::FailedPrecondition(format!("leader: {}", s.message())))?;
            return Ok(resp.into_inner().boxed());
        }
        let query = r.query.unwrap_or_default();
        let tasks = self.core.read(|s| {
            let svc = s.resolve_service(&r.service)?;
            Ok::<_, crate::store::StoreError>(
                s.tasks
                    .values()
                    .filter(|t| t.service.as_ref().is_some_and(|x| x.service == svc.id))
                    .map(|t| {
                        (
                            t.clone(),
                            s.nodes
                                .get(&t.node)
                                .map(|n| n.hostname.clone())
                                .unwrap_or_default(),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        })?;
        // One stream per task, merged as lines arrive; each is bounded, so
        // a slow client slows the nodes, and dropping the merged stream (the
        // client went away) ends every node's stream.
        let streams = tasks.into_iter().map(|(t, host)| {
            let rx = self.core.fetch_logs(t.node, &t.id, query);
            tokio_stream::wrappers::ReceiverStream::new(rx).map(move |piece| {
                let mut chunk = pb::LogChunk {
                    task_id: t.id.clone(),
                    task_name: t.name.clone(),
                    hostname: host.clone(),
                    ..Default::default()
                };
                match piece {
                    Ok(lines) => chunk.lines = lines,
                    Err(e) => chunk.error = e,
                }
                Ok(chunk)
            })
        });
        Ok(futures::stream::select_all(streams).boxed())
    }
}

/// The stream of a service's logs to the client.
pub type LogStream = futures::stream::BoxStream<'static, std::result::Result<pb::LogChunk, Status>>;

fn validate_label_key(k: &str) -> Result<()> {
    limits::at_most("label key", k.len(), limits::MAX_LABEL_KEY_BYTES, "bytes")?;
    let ok = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid label key {k:?}: use 1-{} characters of letters, digits, '.', '-', '_' or '/'",
            limits::MAX_LABEL_KEY_BYTES
        )))
    }
}

/// A placement constraint as the operator wrote it, within the limits.
fn parse_constraint(c: &str) -> Result<crate::store::Constraint> {
    let c: crate::store::Constraint = c
        .parse()
        .map_err(|e: crate::store::ParseConstraintError| Error::InvalidInput(e.to_string()))?;
    limits::constraint(&c)?;
    Ok(c)
}

fn hex_fp(ca_pem: &str) -> String {
    weft_proto::identity::ca_fingerprint(ca_pem)
        .map(|fp| fp.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn get_cluster(
        &self,
        req: Request<pb::GetClusterRequest>,
    ) -> std::result::Result<Response<pb::ClusterSummary>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(self.summary()?))
    }

    async fn update_cluster(
        &self,
        req: Request<pb::UpdateClusterRequest>,
    ) -> std::result::Result<Response<pb::ClusterSummary>, Status> {
        self.admit(&req).await?;
        let r = req.into_inner();
        if r.set_autolock {
            if r.set_wg_key_rotation
                || r.set_cert_expiry
                || r.set_disconnect_grace
                || !r.ingress_subnet.is_empty()
                || !r.ingress_subnet6.is_empty()
            {
                return Err(Error::InvalidInput(
                    "--autolock is changed on its own: give the other settings in another \
                     `weft cluster update`"
                        .into(),
                )
                .into());
            }
            let key = self.set_autolock(r.autolock).await?;
            let mut summary = self.summary()?;
            summary.autolock = r.autolock;
            summary.unlock_key = key.map(|k| k.reveal().to_string()).unwrap_or_default();
            return Ok(Response::new(summary));
        }
        if !r.set_wg_key_rotation
            && !r.set_cert_expiry
            && !r.set_disconnect_grace
            && r.ingress_subnet.is_empty()
            && r.ingress_subnet6.is_empty()
        {
            return Err(Error::InvalidInput(
                "nothing to change: give --wg-key-rotation, --cert-expiry, --ingress-subnet, \
                 --disconnect-grace and/or --autolock"
                    .into(),
            )
            .into());
        }
        // At the edge, and again where it is applied (with what the store
        // holds then).
        let (ingress, ingress6) = self
            .core
            .read(|s| {
                s.cluster.as_ref().map(|c| {
                    crate::store::parse_ingress_subnets(
                        &r.ingress_subnet,
                        &r.ingress_subnet6,
                        &c.settings,
                    )
                })
            })
            .ok_or(Error::NotReady)?
            .map_err(Error::InvalidInput)?;
        let rotation = if r.set_wg_key_rotation {
            limits::wg_key_rotation(r.wg_key_rotation_secs)?;
            Some(r.wg_key_rotation_secs)
        } else {
            None
        };
        let expiry = if r.set_cert_expiry {
            limits::cert_expiry(r.cert_expiry_secs)?;
            Some(r.cert_expiry_secs)
        } else {
            None
        };
        let grace = if r.set_disconnect_grace {
            limits::disconnect_grace_ms(r.disconnect_grace_ms)?;
            Some(r.disconnect_grace_ms)
        } else {
            None
        };
        self.core
            .propose(Command::UpdateClusterSettings {
                wg_key_rotation_secs: rotation,
                cert_expiry_secs: expiry,
                ingress_subnet: ingress,
                ingress_subnet6: ingress6,
                disconnect_grace_ms: grace,
            })
            .await?;
        match self
            .read_after_write(|s| {
                let c = &s.cluster.as_ref()?.settings;
                (rotation.is_none_or(|v| v == c.wg_key_rotation_secs)
                    && expiry.is_none_or(|v| v == c.cert_expiry_secs)
                    && ingress.is_none_or(|v| Some(v) == c.ingress_subnet)
                    && ingress6.is_none_or(|v| Some(v) == c.ingress_subnet6)
                    && grace.is_none_or(|v| v == c.disconnect_grace_ms.unwrap_or(0)))
                .then_some(())
            })
            .await
        {
            // Applied; a concurrent update changed the same setting again:
            // answer with the settings as they stand.
            Ok(()) | Err(Error::NotReady) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Response::new(self.summary()?))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> std::result::Result<Response<pb::ListNodesResponse>, Status> {
        self.admit(&req).await?;
        self.core.cluster()?;
        let nodes = self
            .core
            .read(|s| s.nodes.values().cloned().collect::<Vec<_>>());
        let nodes = nodes.iter().map(|n| self.wire(n)).collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> std::result::Result<Response<pb::Node>, Status> {
        self.admit(&req).await?;
        let node = self.resolve(&req.get_ref().node)?;
        Ok(Response::new(self.wire(&node)))
    }

    async fn update_node(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> std::result::Result<Response<pb::UpdateNodeResponse>, Status> {
        // No read index up front: `update` takes one only before it would
        // refuse (see there).
        self.authorize(&req)?;
        Ok(Response::new(self.update(req.into_inner()).await?))
    }

    async fn set_node_role(
        &self,
        req: Request<pb::SetNodeRoleRequest>,
    ) -> std::result::Result<Response<pb::Node>, Status> {
        self.admit(&req).await?;
        Ok(Response::new(self.set_role(req.into_inner()).await?))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> std::result::Result<Response<pb::RemoveNodeResponse>, Status> {
        self.admit(&req).await?;
        self.remove(req.into_inner()).await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn get_join_tokens(
        &self,
        req: Request<pb::GetJoinTokensRequest>,
    ) -> std::result::Result<Response<pb::JoinTokens>, Status> {
        self.admit(&req).await?;
        Ok(Response::new(self.tokens()?))
    }

    async fn rotate_join_token(
        &self,
        req: Request<pb::RotateJoinTokenRequest>,
    ) -> std::result::Result<Response<pb::JoinTokens>, Status> {
        self.admit(&req).await?;
        let role = role_from_wire(req.get_ref().role)
            .ok_or_else(|| Error::InvalidInput("role must be worker or manager".into()))?;
        let secret = random_secret();
        if self.core.cluster()?.autolock() {
            self.rotate_sealed_secret(role, &secret).await?;
        } else {
            self.core
                .propose(Command::RotateToken {
                    role,
                    secret: secret.clone(),
                })
                .await?;
        }
        Ok(Response::new(self.tokens_with(Some((role, &secret)))?))
    }

    async fn unlock_key(
        &self,
        req: Request<pb::UnlockKeyRequest>,
    ) -> std::result::Result<Response<pb::UnlockKeyResponse>, Status> {
        self.admit(&req).await?;
        Ok(Response::new(
            ControlService::unlock_key(self, req.get_ref().rotate).await?,
        ))
    }

    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> std::result::Result<Response<pb::Network>, Status> {
        self.admit(&req).await?;
        Ok(Response::new(
            ControlService::create_network(self, req.into_inner()).await?,
        ))
    }

    async fn list_networks(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> std::result::Result<Response<pb::ListNetworksResponse>, Status> {
        self.admit(&req).await?;
        self.core.cluster()?;
        let scope = self.scope();
        let networks = self.core.read(|s| {
            s.networks
                .values()
                .filter(|n| match (n.node, scope) {
                    (None, _) => true,
                    (Some(a), Some(b)) => a == b,
                    (Some(_), None) => false,
                })
                .map(|n| self.network_wire(s, n))
                .collect()
        });
        Ok(Response::new(pb::ListNetworksResponse { networks }))
    }

    async fn get_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> std::result::Result<Response<pb::NetworkDetail>, Status> {
        self.admit(&req).await?;
        let r = req.into_inner();
        // Which config version each node applied is known where the
        // sessions are: on the leader. A follower asks it.
        if r.verbose
            && !self.core.is_leader()
            && let Some(ch) = self.core.leader_channel()
        {
            match weft_proto::v1::control_client::ControlClient::new(ch)
                .get_network(r.clone())
                .await
            {
                Ok(resp) => return Ok(resp),
                Err(e) => tracing::debug!(error = %e, "leader did not answer; local view"),
            }
        }
        Ok(Response::new(self.network_detail(&r.network, r.verbose)?))
    }

    async fn remove_network(
        &self,
        req: Request<pb::RemoveNetworkRequest>,
    ) -> std::result::Result<Response<pb::RemoveNetworkResponse>, Status> {
        self.admit(&req).await?;
        let what = req.get_ref().network.clone();
        if matches!(what.as_str(), "host" | "none") {
            return Err(Error::from(crate::store::StoreError::BuiltIn(what)).into());
        }
        let net = self.core.read(|s| self.resolve_visible(s, &what))?;
        if matches!(self.caller, Caller::Node(_)) && net.node.is_none() {
            return Err(Error::InvalidInput(format!(
                "network {what:?} is a swarm network: remove it on a manager"
            ))
            .into());
        }
        self.core
            .propose(Command::RemoveNetwork { id: net.id })
            .await?;
        Ok(Response::new(pb::RemoveNetworkResponse {}))
    }

    async fn connect_network(
        &self,
        req: Request<pb::ConnectNetworkRequest>,
    ) -> std::result::Result<Response<pb::ConnectNetworkResponse>, Status> {
        self.admit(&req).await?;
        ControlService::connect(self, req.into_inner(), true).await?;
        Ok(Response::new(pb::ConnectNetworkResponse {}))
    }

    async fn disconnect_network(
        &self,
        req: Request<pb::DisconnectNetworkRequest>,
    ) -> std::result::Result<Response<pb::ConnectNetworkResponse>, Status> {
        self.admit(&req).await?;
        let r = req.into_inner();
        ControlService::connect(
            self,
            pb::ConnectNetworkRequest {
                ip6: String::new(),
                network: r.network,
                task: r.task,
                ip: String::new(),
                aliases: Vec::new(),
            },
            false,
        )
        .await?;
        Ok(Response::new(pb::ConnectNetworkResponse {}))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> std::result::Result<Response<pb::ListTasksResponse>, Status> {
        self.admit(&req).await?;
        let node = if req.get_ref().node.is_empty() {
            None
        } else {
            Some(self.resolve(&req.get_ref().node)?.id)
        };
        let tasks = self.core.read(|s| {
            s.tasks
                .values()
                .filter(|t| node.is_none_or(|n| t.node == n))
                .map(|t| crate::convert::task_to_wire(s, t))
                .collect()
        });
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn remove_task(
        &self,
        req: Request<pb::RemoveTaskRequest>,
    ) -> std::result::Result<Response<pb::RemoveTaskResponse>, Status> {
        self.admit(&req).await?;
        let id = self
            .core
            .read(|s| s.resolve_task(&req.get_ref().task).map(|t| t.id.clone()))
            .map_err(Error::from)?;
        self.core.propose(Command::RemoveTask { id }).await?;
        Ok(Response::new(pb::RemoveTaskResponse {}))
    }

    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> std::result::Result<Response<pb::Service>, Status> {
        self.admit(&req).await?;
        Ok(Response::new(
            ControlService::create_service(self, req.into_inner()).await?,
        ))
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> std::result::Result<Response<pb::Service>, Status> {
        self.admit(&req).await?;
        Ok(Response::new(
            ControlService::update_service(self, req.into_inner()).await?,
        ))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> std::result::Result<Response<pb::ListServicesResponse>, Status> {
        self.admit(&req).await?;
        self.core.cluster()?;
        let services = self.core.read(|s| {
            s.services
                .values()
                .map(|x| crate::convert::service_to_wire(s, x))
                .collect()
        });
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> std::result::Result<Response<pb::Service>, Status> {
        self.admit(&req).await?;
        let svc = self
            .core
            .read(|s| {
                s.resolve_service(&req.get_ref().service)
                    .map(|x| crate::convert::service_to_wire(s, x))
            })
            .map_err(Error::from)?;
        Ok(Response::new(svc))
    }

    async fn remove_service(
        &self,
        req: Request<pb::RemoveServiceRequest>,
    ) -> std::result::Result<Response<pb::RemoveServiceResponse>, Status> {
        self.admit(&req).await?;
        let id = self
            .core
            .read(|s| {
                s.resolve_service(&req.get_ref().service)
                    .map(|x| x.id.clone())
            })
            .map_err(Error::from)?;
        self.core.propose(Command::RemoveService { id }).await?;
        Ok(Response::new(pb::RemoveServiceResponse {}))
    }

    async fn rotate_node_key(
        &self,
        req: Request<pb::RotateNodeKeyRequest>,
    ) -> std::result::Result<Response<pb::RotateNodeKeyResponse>, Status> {
        self.admit(&req).await?;
        let rotated = ControlService::rotate_node_key(self, req.into_inner()).await?;
        Ok(Response::new(pb::RotateNodeKeyResponse { rotated }))
    }

    type ServiceLogsStream = LogStream;

    async fn load_image(
        &self,
        req: Request<tonic::Streaming<pb::LoadImageRequest>>,
    ) -> std::result::Result<Response<pb::ClusterImageLoadResponse>, Status> {
        self.admit(&req).await?;
        Ok(Response::new(
            ControlService::load_image(self, req.into_inner()).await?,
        ))
    }

    async fn list_cluster_images(
        &self,
        req: Request<pb::ListClusterImagesRequest>,
    ) -> std::result::Result<Response<pb::ListClusterImagesResponse>, Status> {
        self.admit(&req).await?;
        Ok(Response::new(
            ControlService::list_cluster_images(self, req.into_inner()).await?,
        ))
    }

    async fn service_logs(
        &self,
        req: Request<pb::ServiceLogsRequest>,
    ) -> std::result::Result<Response<LogStream>, Status> {
        self.admit(&req).await?;
        Ok(Response::new(
            ControlService::service_logs(self, req.into_inner()).await?,
        ))
    }

    type EventsStream = events::EventStream;

    /// Read from this manager's own store, without a read index: a
    /// follower keeps streaming while the cluster elects a leader.
    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> std::result::Result<Response<events::EventStream>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(events::open(
            self.core.store().clone(),
            req.get_ref(),
        )?))
    }

    /// No read index: the doctor must answer most when the cluster has
    /// no quorum.
    async fn doctor(
        &self,
        req: Request<pb::DoctorRequest>,
    ) -> std::result::Result<Response<pb::DoctorReport>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(
            doctor::report(&self.core, req.into_inner()).await,
        ))
    }
}

#[cfg(test)]
mod tests;

mod autolock;
mod doctor;
mod events;
mod images;
mod local;
mod networks;
mod service_update;
mod services;
