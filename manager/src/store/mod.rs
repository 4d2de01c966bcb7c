//! The cluster's desired state and the only way to change it.
//!
//! `State` is the Raft state machine: every mutation is a [`Command`] and
//! [`State::apply`] is deterministic — no clocks (times come inside the
//! command, stamped by the proposer), no randomness (IDs and secrets are
//! generated before proposing), ordered maps only. Same log, same state, on
//! every manager.
//!
//! The store runs without Raft: tests and reconcilers use `State` directly.

mod aliases;
mod alloc;
pub mod events;
pub mod ipam;
pub mod netmodel;
mod task_state;
mod types;
mod update_status;
pub mod version_gate;

#[cfg(test)]
pub(crate) mod tests;

pub use netmodel::{
    DEFAULT_BRIDGE, INGRESS_NETWORK, PUBLISHED_PORT_RANGE, RESERVED_NETWORK_NAMES,
    check_ingress_subnet, check_ingress_subnet6, next_ifname, parse_ingress_subnet,
    parse_ingress_subnets,
};
pub use task_state::{TaskHealth, TaskState, TaskStatus};
pub use types::*;
pub use update_status::MAX_COUNTED_FAILURES;
use update_status::UpdateKind;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// The replicated state machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Set once by [`Command::InitCluster`].
    pub cluster: Option<Cluster>,
    /// Current members.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Nodes removed from the cluster; their certificates are refused and
    /// their IDs never reused.
    pub removed: BTreeSet<NodeId>,
    /// Overlay networks by ID.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Tasks by ID.
    #[serde(default)]
    pub tasks: BTreeMap<String, Task>,
    /// Services by ID.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
}

/// A change to the desired state, proposed through Raft.
// Commands live briefly in memory on their way into the log; boxing the
// large variants would only add noise at every construction site.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Creates the cluster with its first node (a manager).
    InitCluster {
        /// Cluster identity, CA and settings.
        cluster: Cluster,
        /// The initialising node.
        node: Node,
    },
    /// Admits a node that presented a valid join token.
    AddNode {
        /// The new node, with its ID already chosen by the proposer.
        node: Node,
    },
    /// Removes a node for good.
    RemoveNode {
        /// Which node.
        id: NodeId,
    },
    /// Operator changes to availability and labels.
    UpdateNode {
        /// Which node.
        id: NodeId,
        /// New availability, if changed.
        availability: Option<Availability>,
        /// Labels to set.
        label_add: BTreeMap<String, String>,
        /// Labels to remove.
        label_rm: Vec<String>,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Promote or demote.
    SetRole {
        /// Which node.
        id: NodeId,
        /// Desired role.
        role: Role,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Liveness as observed by the leader's dispatcher.
    SetNodeState {
        /// Which node.
        id: NodeId,
        /// New state.
        state: NodeState,
        /// Why, for `node inspect`.
        message: String,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Addresses a node reported (at join, or when re-advertising).
    SetNodeAddrs {
        /// Which node.
        id: NodeId,
        /// Manager-port address.
        addr: String,
        /// Underlay address.
        data_path_addr: String,
    },
    /// The CPUs and memory a node reported (only changes are proposed).
    SetNodeResources {
        /// Which node.
        id: NodeId,
        /// What it has.
        resources: NodeResources,
        /// Its weft version (absent from older entries; a field here, not
        /// a command of its own, so that a manager of the version before
        /// reads the entry during a rolling upgrade).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        version: String,
    },
    /// A certificate was issued to a node.
    SetCertExpiry {
        /// Which node.
        id: NodeId,
        /// RFC 3339.
        expiry: String,
        /// The role the certificate grants.
        role: Role,
    },
    /// Creates an overlay network; allocates its VNI, and its subnet and
    /// gateway when not given.
    CreateNetwork {
        /// The network as requested (`vni`, and `subnet`/`gateway` when
        /// `None`, are filled in at apply time).
        spec: NetworkSpec,
    },
    /// Removes a network nothing is attached to.
    RemoveNetwork {
        /// Network ID.
        id: String,
    },
    /// Creates a task on a node; allocates its addresses.
    CreateTask {
        /// ID chosen by the proposer.
        id: String,
        /// Unique name.
        name: String,
        /// Where it runs.
        node: NodeId,
        /// What it runs.
        spec: TaskSpec,
        /// Networks (IDs) in attachment order, each with an optional
        /// requested address.
        networks: Vec<(String, Option<IpAddr>)>,
        /// Standalone (`weft run`): only attachable networks.
        standalone: bool,
        /// Proposer's clock, unix ms.
        now_ms: u64,
        /// `host` and `none` need `networks` empty.
        #[serde(default)]
        network_mode: NetworkMode,
        /// Ports to publish on the task's node.
        #[serde(default)]
        ports: Vec<PortRequest>,
        /// `--network-alias`: by network ID, the task's DNS aliases there.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        aliases: BTreeMap<String, Vec<String>>,
        /// `--ip6`: by network ID, the IPv6 address asked for there.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        ip6: BTreeMap<String, IpAddr>,
    },
    /// Publishes the ports of a Docker endpoint's task, once: Docker tells
    /// its port mappings (CreateEndpoint) only after the address, and so
    /// the task, was made (RequestAddress).
    SetTaskPorts {
        /// Task ID.
        task: String,
        /// The node asking: the task's.
        node: NodeId,
        /// Ports to publish on that node.
        ports: Vec<PortRequest>,
    },
    /// Attaches a standalone task to one more network (`weft network
    /// connect`).
    ConnectTask {
        /// Task ID.
        task: String,
        /// Network ID.
        network: String,
        /// Requested address.
        ip: Option<IpAddr>,
        /// `--alias`: the task's DNS aliases on that network.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        aliases: Vec<String>,
        /// `--ip6`: the IPv6 address asked for (a dual-stack network).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip6: Option<IpAddr>,
    },
    /// Detaches a standalone task from a network.
    DisconnectTask {
        /// Task ID.
        task: String,
        /// Network ID.
        network: String,
    },
    /// Creates or re-addresses a node's default `bridge` network (its
    /// daemon's `--bridge-subnet`).
    SetNodeBridge {
        /// The node.
        node: NodeId,
        /// ID for the network if it is new (chosen by the proposer).
        network_id: String,
        /// Its subnet.
        subnet: IpNetwork,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Deletes a task; its node stops it and releases its addresses.
    RemoveTask {
        /// Task ID.
        id: String,
    },
    /// A node reports the observed state of one of its tasks.
    SetTaskStatus {
        /// Task ID.
        id: String,
        /// The reporting node (must be the task's).
        node: NodeId,
        /// Observed state.
        status: TaskStatus,
    },
    /// Creates a service; allocates its VIPs.
    CreateService {
        /// ID chosen by the proposer.
        id: String,
        /// The spec.
        spec: ServiceSpec,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Replaces a service's spec; re-allocates VIPs for changed networks.
    UpdateService {
        /// Service ID.
        id: String,
        /// The new spec.
        spec: ServiceSpec,
        /// Replace every task even if the task spec did not change.
        force: bool,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// `service rollback`: the previous spec back (its tasks replaced under
    /// the `--rollback-*` settings of the spec it leaves).
    RollbackService {
        /// Service ID.
        id: String,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// The orchestrator saw a task of the service's `version` end while
    /// that version's update or rollback ran: counted once per task; past
    /// `--update-max-failure-ratio` the failure action is taken.
    CountUpdateFailure {
        /// Service ID.
        service: String,
        /// The version being rolled out (a no-op once it moved on).
        version: u64,
        /// The task that ended.
        task: String,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// The orchestrator saw every task of the service's `version` replaced,
    /// running and watched for `--update-monitor`: the update (or
    /// rollback) completed (a no-op once the version moved on).
    CompleteUpdate {
        /// Service ID.
        service: String,
        /// The version rolled out.
        version: u64,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Removes a service and all its tasks.
    RemoveService {
        /// Service ID.
        id: String,
    },
    /// The orchestrator places one task of a service.
    CreateServiceTask {
        /// ID chosen by the proposer.
        id: String,
        /// Service ID.
        service: String,
        /// Replica slot (0 for global).
        slot: u64,
        /// Where it runs.
        node: NodeId,
        /// Proposer's clock, unix ms.
        now_ms: u64,
        /// Failures in a row of the slot's previous tasks (the backoff).
        #[serde(default)]
        restarts: u32,
        /// When the slot's tasks were restarted (for the attempt limit).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        restart_history: Vec<u64>,
    },
    /// A node reported its WireGuard public key; a tunnel address is
    /// allocated with its first one.
    SetNodeWgKey {
        /// Which node.
        id: NodeId,
        /// Base64 public key.
        public_key: String,
        /// Proposer's clock, unix ms.
        now_ms: u64,
    },
    /// Asks a node for a fresh WireGuard key pair.
    RotateNodeKey {
        /// Which node.
        id: NodeId,
        /// Proposer's clock, unix ms (the rotation interval restarts here).
        now_ms: u64,
    },
    /// Changes cluster settings that may change after init.
    UpdateClusterSettings {
        /// New WireGuard key rotation interval (0 = never).
        wg_key_rotation_secs: Option<u64>,
        /// New lifetime of certificates issued from now on.
        cert_expiry_secs: Option<u64>,
        /// New subnet of the ingress network (absent in older log entries).
        #[serde(default)]
        ingress_subnet: Option<IpNetwork>,
        /// New IPv6 subnet of the ingress network (weft 0.2.0 on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ingress_subnet6: Option<IpNetwork>,
        /// New disconnect grace in ms, 0 = off (absent in older log
        /// entries).
        #[serde(default)]
        disconnect_grace_ms: Option<u64>,
    },
    /// Replaces the join-token secret of one role.
    RotateToken {
        /// Whose token.
        role: Role,
        /// The new secret.
        secret: String,
    },
    /// Replaces the cluster's secrets whole: sealed under the unlock key
    /// (autolock on: `secrets` empty) or in the clear (`sealed` none). The
    /// proposer seals; applying only stores.
    SetSecrets {
        /// The secrets in the clear; all empty when sealed.
        secrets: Secrets,
        /// The secrets sealed under the unlock key.
        sealed: Option<weft_proto::seal::Sealed>,
        /// The record's `secrets_generation` the proposer read them at:
        /// refused if they changed since (no lost update).
        generation: u64,
    },
}

/// What applying a command produced.
pub type CommandResult = Result<Applied, StoreError>;

/// The successful outcome of [`State::apply`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to report.
    #[default]
    Done,
    /// The node as it stands after the command.
    Node(Box<Node>),
}

/// A command that was rejected at apply time. Rejection changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    /// `InitCluster` on an initialised store.
    #[error("this cluster is already initialised")]
    AlreadyInitialised,
    /// Any other command before `InitCluster`.
    #[error("the cluster is not initialised")]
    NotInitialised,
    /// `SetSecrets` proposed from secrets that changed since they were read.
    #[error(
        "the cluster's secrets changed while this command ran (another join-token or unlock-key \
         rotation, or an autolock change); run it again"
    )]
    SecretsChanged,
    /// `service rollback` of a service never updated.
    #[error("service {0} has no previous spec to roll back to (it was never updated)")]
    NoPreviousSpec(String),
    /// Unknown node ID.
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// ID already in use, or used before by a removed node.
    #[error("node ID {0} is already taken")]
    DuplicateNode(String),
    /// A network name already in use.
    #[error("a network named {0:?} already exists; pick another name or remove it first")]
    NetworkExists(String),
    /// No such network.
    #[error("network {0:?} not found; see `weft network ls`")]
    NetworkNotFound(String),
    /// Tasks are attached.
    #[error(
        "network {name:?} is in use by {tasks} task(s); remove them first (`weft ps`, `weft rm`, `weft service rm`)"
    )]
    NetworkInUse {
        /// Network name.
        name: String,
        /// Attached tasks.
        tasks: usize,
    },
    /// Subnets overlap.
    #[error(
        "subnet {subnet} overlaps {other} of network {network:?}; choose a subnet that does not overlap"
    )]
    SubnetOverlap {
        /// Requested subnet.
        subnet: String,
        /// The overlapping subnet.
        other: String,
        /// Its network.
        network: String,
    },
    /// Invalid subnet/gateway/range combination.
    #[error("{0}")]
    InvalidNetwork(String),
    /// No subnet left in the default pools.
    #[error(
        "the default address pools have no free /{0} left; give --subnet explicitly or add pools"
    )]
    PoolExhausted(u8),
    /// No VNI left.
    #[error("no free VXLAN network identifier left")]
    VniExhausted,
    /// Address unavailable.
    #[error("address {ip} is not available on network {network:?}: {why}")]
    AddressUnavailable {
        /// The address.
        ip: String,
        /// The network.
        network: String,
        /// Why.
        why: String,
    },
    /// No address left.
    #[error("network {0:?} has no free address left")]
    NetworkFull(String),
    /// Task name or ID in use.
    #[error("a task named {0:?} already exists; pick another name")]
    TaskExists(String),
    /// No such task.
    #[error("task {0:?} not found; see `weft ps`")]
    TaskNotFound(String),
    /// Standalone tasks need attachable networks.
    #[error(
        "network {0:?} is not attachable: create it with --attachable to run standalone tasks on it"
    )]
    NotAttachable(String),
    /// A service name in use.
    #[error("a service named {0:?} already exists; pick another name or update it")]
    ServiceExists(String),
    /// No such service.
    #[error("service {0:?} not found; see `weft service ls`")]
    ServiceNotFound(String),
    /// Task report from the wrong node.
    #[error("task {0:?} does not run on the reporting node")]
    NotYourTask(String),
    /// Demoting the only manager.
    #[error("node {0} is the last manager of the cluster and cannot be demoted or removed")]
    LastManager(String),
    /// A published port is taken.
    #[error("port {port}/{proto} is already published by {owner}; publish another port")]
    PortInUse {
        /// Port.
        port: u16,
        /// `tcp`/`udp`.
        proto: String,
        /// Who has it.
        owner: String,
    },
    /// Bad port request.
    #[error("{0}")]
    InvalidPort(String),
    /// The published-port range is used up.
    #[error("no free port left in 30000-32767; publish an explicit port")]
    PortsExhausted,
    /// Network mode conflicts.
    #[error("{0}")]
    NetworkMode(String),
    /// Connecting twice.
    #[error("task {task} is already connected to network {network:?}")]
    AlreadyConnected {
        /// Task name.
        task: String,
        /// Network name.
        network: String,
    },
    /// Disconnecting a network the task is not on.
    #[error("task {task} is not connected to network {network:?}")]
    NotConnected {
        /// Task name.
        task: String,
        /// Network name.
        network: String,
    },
    /// A built-in network name.
    #[error("{0:?} is a built-in network name; pick another name")]
    ReservedName(String),
    /// Removing a built-in network.
    #[error("{0:?} is a built-in network and cannot be removed")]
    BuiltIn(String),
    /// A DNS name (service name or alias) that something else on the
    /// network answers to already.
    #[error("{name:?} is already a name of {holder} on network {network:?}; pick another")]
    NameTaken {
        /// The name asked for.
        name: String,
        /// Network name.
        network: String,
        /// Who has it ("service web", "task db.1").
        holder: String,
    },
}

impl State {
    /// Applies one command. Deterministic; a rejected command changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        if let Command::InitCluster { cluster, node } = cmd {
            if self.cluster.is_some() {
                return Err(StoreError::AlreadyInitialised);
            }
            self.cluster = Some(cluster.clone());
            self.nodes.insert(node.id, node.clone());
            return Ok(Applied::Node(Box::new(node.clone())));
        }
        if self.cluster.is_none() {
            return Err(StoreError::NotInitialised);
        }
        match cmd {
            Command::InitCluster { .. } => unreachable!("handled above"),
            Command::AddNode { .. }
            | Command::RemoveNode { .. }
            | Command::UpdateNode { .. }
            | Command::SetRole { .. }
            | Command::SetNodeState { .. }
            | Command::SetNodeAddrs { .. }
            | Command::SetNodeResources { .. }
            | Command::SetCertExpiry { .. }
            | Command::SetNodeBridge { .. }
            | Command::SetNodeWgKey { .. }
            | Command::RotateNodeKey { .. } => self.apply_node(cmd),
            Command::CreateNetwork { .. } | Command::RemoveNetwork { .. } => {
                self.apply_network(cmd)
            }
            Command::CreateTask { .. }
            | Command::SetTaskPorts { .. }
            | Command::ConnectTask { .. }
            | Command::DisconnectTask { .. }
            | Command::RemoveTask { .. }
            | Command::SetTaskStatus { .. } => self.apply_task(cmd),
            Command::CreateService { .. }
            | Command::UpdateService { .. }
            | Command::RemoveService { .. }
            | Command::CreateServiceTask { .. } => self.apply_service(cmd),
            Command::RollbackService { id, now_ms } => self.rollback_service(id, *now_ms),
            Command::CountUpdateFailure {
                service,
                version,
                task,
                now_ms,
            } => self.count_update_failure(service, *version, task, *now_ms),
            Command::CompleteUpdate {
                service,
                version,
                now_ms,
            } => self.complete_update(service, *version, *now_ms),
            Command::UpdateClusterSettings { .. }
            | Command::SetSecrets { .. }
            | Command::RotateToken { .. } => self.apply_cluster(cmd),
        }
    }

    /// [`State::apply`] of a command on node membership, roles, addresses, keys and bridges.
    fn apply_node(&mut self, cmd: &Command) -> CommandResult {
        let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialised)?;
        match cmd {
            Command::AddNode { node } => {
                if self.nodes.contains_key(&node.id) || self.removed.contains(&node.id) {
                    return Err(StoreError::DuplicateNode(node.id.to_string()));
                }
                self.nodes.insert(node.id, node.clone());
                self.add_ingress_endpoint(node.id)?;
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::RemoveNode { id } => {
                let node = self.node(*id)?;
                if node.role == Role::Manager && self.managers().count() == 1 {
                    return Err(StoreError::LastManager(id.to_string()));
                }
                self.nodes.remove(id);
                self.removed.insert(*id);
                self.forget_node_networks(*id);
                Ok(Applied::Done)
            }
            Command::UpdateNode {
                id,
                availability,
                label_add,
                label_rm,
                now_ms,
            } => {
                let node = self.node_mut(*id)?;
                if let Some(a) = availability {
                    node.availability = *a;
                }
                for k in label_rm {
                    node.labels.remove(k);
                }
                for (k, v) in label_add {
                    node.labels.insert(k.clone(), v.clone());
                }
                node.updated_at_ms = *now_ms;
                // No copy of the node: this runs on every manager, and only
                // the one answering the client needs it (it reads it).
                Ok(Applied::Done)
            }
            Command::SetRole { id, role, now_ms } => {
                let managers = self.managers().count();
                let node = self.node(*id)?;
                if node.role == Role::Manager && *role == Role::Worker && managers == 1 {
                    return Err(StoreError::LastManager(id.to_string()));
                }
                let node = self.node_mut(*id)?;
                node.role = *role;
                node.updated_at_ms = *now_ms;
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::SetNodeState {
                id,
                state,
                message,
                now_ms,
            } => {
                let node = self.node_mut(*id)?;
                node.state = *state;
                node.state_message = message.clone();
                node.updated_at_ms = *now_ms;
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::SetNodeAddrs {
                id,
                addr,
                data_path_addr,
            } => {
                let node = self.node_mut(*id)?;
                node.addr = addr.clone();
                node.data_path_addr = data_path_addr.clone();
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::SetNodeResources {
                id,
                resources,
                version,
            } => {
                let node = self.node_mut(*id)?;
                node.resources = *resources;
                if !version.is_empty() {
                    node.version = version.clone();
                }
                Ok(Applied::Node(Box::new(node.clone())))
            }
            Command::SetCertExpiry { id, expiry, role } => {
                let node = self.node_mut(*id)?;
                node.cert_expiry = expiry.clone();
                node.cert_role = *role;
                Ok(Applied::Done)
            }
            Command::SetNodeBridge {
                node,
                network_id,
                subnet,
                now_ms,
            } => {
                self.set_node_bridge(*node, network_id, *subnet, *now_ms)?;
                Ok(Applied::Done)
            }
            Command::SetNodeWgKey {
                id,
                public_key,
                now_ms,
            } => {
                let subnet = cluster.settings.tunnel_subnet;
                let taken: BTreeSet<IpAddr> =
                    self.nodes.values().filter_map(|n| n.tunnel_ip).collect();
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| StoreError::NodeNotFound(id.to_string()))?;
                if node.tunnel_ip.is_none() {
                    let mut taken = taken;
                    if let Some(first) = ipam::first_host(&subnet) {
                        taken.insert(first);
                    }
                    node.tunnel_ip = Some(
                        ipam::next_ip(&subnet, None, &taken)
                            .ok_or_else(|| StoreError::NetworkFull("the tunnel subnet".into()))?,
                    );
                }
                if node.wg_public_key != *public_key {
                    node.wg_public_key = public_key.clone();
                    node.wg_key_since_ms = *now_ms;
                }
                Ok(Applied::Done)
            }
            Command::RotateNodeKey { id, now_ms } => {
                let node = self.node_mut(*id)?;
                node.wg_key_generation += 1;
                node.wg_key_since_ms = *now_ms;
                Ok(Applied::Done)
            }
            _ => {
                unreachable!("not a command on node membership, roles, addresses, keys and bridges")
            }
        }
    }

    /// [`State::apply`] of a command on networks.
    fn apply_network(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::CreateNetwork { spec } => {
                let net = self.allocate_network(spec)?;
                self.networks.insert(net.id.clone(), net);
                Ok(Applied::Done)
            }
            Command::RemoveNetwork { id } => {
                let net = self
                    .networks
                    .get(id)
                    .ok_or_else(|| StoreError::NetworkNotFound(id.clone()))?;
                if net.node.is_some() && net.name == DEFAULT_BRIDGE {
                    return Err(StoreError::BuiltIn(net.name.clone()));
                }
                if net.ingress && self.services.values().any(|s| !s.ports.is_empty()) {
                    return Err(StoreError::NetworkInUse {
                        name: net.name.clone(),
                        tasks: self
                            .services
                            .values()
                            .filter(|s| !s.ports.is_empty())
                            .count(),
                    });
                }
                let users = self
                    .tasks
                    .values()
                    .filter(|t| t.attachments.iter().any(|a| &a.network == id))
                    .count()
                    + self
                        .services
                        .values()
                        .filter(|s| s.spec.networks.contains(id))
                        .count();
                if users > 0 {
                    return Err(StoreError::NetworkInUse {
                        name: net.name.clone(),
                        tasks: users,
                    });
                }
                self.networks.remove(id);
                Ok(Applied::Done)
            }
            _ => unreachable!("not a command on networks"),
        }
    }

    /// [`State::apply`] of a command on tasks.
    fn apply_task(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::CreateTask {
                id,
                name,
                node,
                spec,
                networks,
                standalone,
                now_ms,
                network_mode,
                ports,
                aliases,
                ip6,
            } => {
                let mut task = self.allocate_task(
                    id,
                    name,
                    *node,
                    spec,
                    (networks, ip6),
                    *standalone,
                    *now_ms,
                )?;
                for a in &mut task.attachments {
                    a.aliases = aliases.get(&a.network).cloned().unwrap_or_default();
                }
                self.check_task_aliases(&task.attachments)?;
                match network_mode {
                    NetworkMode::Attached => {}
                    NetworkMode::Host | NetworkMode::None => {
                        if !networks.is_empty() {
                            return Err(StoreError::NetworkMode(
                                "--network host and --network none cannot be combined with other networks"
                                    .into(),
                            ));
                        }
                        task.gateway_ip = None;
                    }
                }
                task.network_mode = *network_mode;
                if !ports.is_empty() {
                    if *network_mode != NetworkMode::Attached || task.gateway_ip.is_none() {
                        return Err(StoreError::InvalidPort(
                            "publishing ports needs a non-internal network (with --network host the task binds the node's ports itself)"
                                .into(),
                        ));
                    }
                    task.ports = self.allocate_task_ports(ports, *node)?;
                }
                self.allocated_for(&task, networks, ip6);
                self.tasks.insert(task.id.clone(), task);
                Ok(Applied::Done)
            }
            Command::SetTaskPorts { task, node, ports } => {
                self.set_task_ports(task, *node, ports)?;
                Ok(Applied::Done)
            }
            Command::ConnectTask {
                task,
                network,
                ip,
                aliases,
                ip6,
            } => {
                self.connect_task(task, network, (*ip, *ip6), aliases)?;
                Ok(Applied::Done)
            }
            Command::DisconnectTask { task, network } => {
                self.disconnect_task(task, network)?;
                Ok(Applied::Done)
            }
            Command::RemoveTask { id } => {
                self.tasks
                    .remove(id)
                    .ok_or_else(|| StoreError::TaskNotFound(id.clone()))?;
                Ok(Applied::Done)
            }
            Command::SetTaskStatus { id, node, status } => {
                let task = self
                    .tasks
                    .get_mut(id)
                    .ok_or_else(|| StoreError::TaskNotFound(id.clone()))?;
                if task.node != *node {
                    return Err(StoreError::NotYourTask(id.clone()));
                }
                if status.state.is_running() && task.started_at_ms.is_none() {
                    task.started_at_ms = Some(status.updated_at_ms);
                }
                task.status = status.clone();
                Ok(Applied::Done)
            }
            _ => unreachable!("not a command on tasks"),
        }
    }

    /// [`State::apply`] of a command on services and their tasks.
    fn apply_service(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::CreateService { id, spec, now_ms } => {
                if self.services.contains_key(id)
                    || self.services.values().any(|x| x.spec.name == spec.name)
                {
                    return Err(StoreError::ServiceExists(spec.name.clone()));
                }
                self.check_service_names(id, spec)?;
                let vips = self.allocate_vips(spec, None)?;
                let vips6 = self.allocate_vips6(None, &vips)?;
                // Refused, this changes nothing (the ingress network is
                // created on first use).
                let ports = self.service_ports(spec, id, &[], *now_ms)?;
                self.allocated_vips(&vips, &BTreeMap::new());
                self.allocated_vips(&vips6, &BTreeMap::new());
                self.services.insert(
                    id.clone(),
                    Service {
                        id: id.clone(),
                        spec: spec.clone(),
                        vips,
                        vips6,
                        version: 1,
                        created_at_ms: *now_ms,
                        updated_at_ms: *now_ms,
                        ports,
                        previous_spec: None,
                        previous_version: 0,
                        update_status: None,
                    },
                );
                Ok(Applied::Done)
            }
            Command::UpdateService {
                id,
                spec,
                force,
                now_ms,
            } => self.replace_service_spec(id, spec, *force, *now_ms, UpdateKind::Update),
            Command::RemoveService { id } => {
                self.services
                    .remove(id)
                    .ok_or_else(|| StoreError::ServiceNotFound(id.clone()))?;
                self.tasks
                    .retain(|_, t| t.service.as_ref().is_none_or(|r| &r.service != id));
                Ok(Applied::Done)
            }
            Command::CreateServiceTask {
                id,
                service,
                slot,
                node,
                now_ms,
                restarts,
                restart_history,
            } => {
                let svc = self
                    .services
                    .get(service)
                    .ok_or_else(|| StoreError::ServiceNotFound(service.clone()))?;
                let name = if *slot == 0 {
                    format!("{}.{}.{}", svc.spec.name, &node.to_string()[..8], id)
                } else {
                    format!("{}.{}.{}", svc.spec.name, slot, id)
                };
                let mut networks: Vec<(String, Option<IpAddr>)> = svc
                    .spec
                    .networks
                    .iter()
                    .map(|n| (n.clone(), None))
                    .collect();
                // Replicas of an ingress-published service are reachable
                // from every node over the ingress network.
                if svc.ports.iter().any(|p| p.mode == PublishMode::Ingress)
                    && let Some(ingress) = self.ingress_network()
                {
                    networks.push((ingress.id.clone(), None));
                }
                let sref = ServiceRef {
                    service: service.clone(),
                    slot: *slot,
                    version: svc.version,
                };
                let spec = svc.spec.task.clone();
                let mut task = self.allocate_task(
                    id,
                    &name,
                    *node,
                    &spec,
                    (&networks, &BTreeMap::new()),
                    false,
                    *now_ms,
                )?;
                task.service = Some(sref);
                task.restarts = *restarts;
                task.restart_history = restart_history.clone();
                self.allocated_for(&task, &networks, &BTreeMap::new());
                self.tasks.insert(task.id.clone(), task);
                Ok(Applied::Done)
            }
            _ => unreachable!("not a command on services and their tasks"),
        }
    }

    /// [`State::apply`] of a command on cluster settings, secrets and join tokens.
    fn apply_cluster(&mut self, cmd: &Command) -> CommandResult {
        let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialised)?;
        match cmd {
            Command::UpdateClusterSettings {
                wg_key_rotation_secs,
                cert_expiry_secs,
                ingress_subnet,
                ingress_subnet6,
                disconnect_grace_ms,
            } => {
                // First the part that can be refused, so a refusal changes nothing.
                if ingress_subnet.is_some() || ingress_subnet6.is_some() {
                    self.set_ingress_subnets(*ingress_subnet, *ingress_subnet6)?;
                }
                let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialised)?;
                if let Some(v) = wg_key_rotation_secs {
                    cluster.settings.wg_key_rotation_secs = *v;
                }
                if let Some(v) = cert_expiry_secs {
                    cluster.settings.cert_expiry_secs = *v;
                }
                if let Some(v) = disconnect_grace_ms {
                    cluster.settings.disconnect_grace_ms = (*v != 0).then_some(*v);
                }
                Ok(Applied::Done)
            }
            Command::SetSecrets {
                secrets,
                sealed,
                generation,
            } => {
                if *generation != cluster.secrets_generation {
                    return Err(StoreError::SecretsChanged);
                }
                cluster.secrets_generation += 1;
                cluster.ca_key_pem = secrets.ca_key_pem.clone();
                cluster.worker_secret = secrets.worker_secret.clone();
                cluster.manager_secret = secrets.manager_secret.clone();
                cluster.sealed = sealed.clone();
                Ok(Applied::Done)
            }
            Command::RotateToken { role, secret } => {
                cluster.secrets_generation += 1;
                match role {
                    Role::Worker => cluster.worker_secret = secret.clone(),
                    Role::Manager => cluster.manager_secret = secret.clone(),
                }
                Ok(Applied::Done)
            }
            _ => unreachable!("not a command on cluster settings, secrets and join tokens"),
        }
    }

    /// The service named or identified by `what` (name, ID, or unique ID prefix).
    pub fn resolve_service(&self, what: &str) -> Result<&Service, StoreError> {
        if let Some(x) = self.services.get(what) {
            return Ok(x);
        }
        if let Some(x) = self.services.values().find(|x| x.spec.name == what) {
            return Ok(x);
        }
        let by_prefix: Vec<&Service> = self
            .services
            .values()
            .filter(|x| !what.is_empty() && x.id.starts_with(what))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok(one),
            _ => Err(StoreError::ServiceNotFound(what.to_string())),
        }
    }

    /// The network named or identified by `what` (name, ID, or unique ID prefix).
    pub fn resolve_network(&self, what: &str) -> Result<&Network, StoreError> {
        if let Some(n) = self.networks.get(what) {
            return Ok(n);
        }
        if let Some(n) = self.networks.values().find(|n| n.name == what) {
            return Ok(n);
        }
        let by_prefix: Vec<&Network> = self
            .networks
            .values()
            .filter(|n| !what.is_empty() && n.id.starts_with(what))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok(one),
            _ => Err(StoreError::NetworkNotFound(what.to_string())),
        }
    }

    /// The task named or identified by `what` (name, ID, or unique ID prefix).
    pub fn resolve_task(&self, what: &str) -> Result<&Task, StoreError> {
        if let Some(t) = self.tasks.get(what) {
            return Ok(t);
        }
        if let Some(t) = self.tasks.values().find(|t| t.name == what) {
            return Ok(t);
        }
        let by_prefix: Vec<&Task> = self
            .tasks
            .values()
            .filter(|t| !what.is_empty() && t.id.starts_with(what))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok(one),
            _ => Err(StoreError::TaskNotFound(what.to_string())),
        }
    }

    /// The node with this ID.
    pub fn node(&self, id: NodeId) -> Result<&Node, StoreError> {
        self.nodes
            .get(&id)
            .ok_or_else(|| StoreError::NodeNotFound(id.to_string()))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, StoreError> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| StoreError::NodeNotFound(id.to_string()))
    }

    /// How many tasks are in each observed state (`running`, `failed`…).
    pub fn tasks_by_state(&self) -> BTreeMap<&'static str, u64> {
        let mut by = BTreeMap::new();
        for t in self.tasks.values() {
            *by.entry(t.status.state.name()).or_default() += 1;
        }
        by
    }

    /// Nodes whose desired role is manager.
    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.role == Role::Manager)
    }

    /// Resolves what an operator typed — a full ID, a unique ID prefix or a
    /// hostname — to one node.
    pub fn resolve_node(&self, what: &str) -> Result<&Node, ResolveError> {
        if what.is_empty() {
            return Err(ResolveError::NotFound(what.to_string()));
        }
        if let Ok(id) = what.parse::<NodeId>()
            && let Some(n) = self.nodes.get(&id)
        {
            return Ok(n);
        }
        let by_prefix: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.id.to_string().starts_with(what))
            .collect();
        if by_prefix.len() == 1 {
            return Ok(by_prefix[0]);
        }
        let by_name: Vec<&Node> = self.nodes.values().filter(|n| n.hostname == what).collect();
        match (by_prefix.len(), by_name.len()) {
            (0, 0) => Err(ResolveError::NotFound(what.to_string())),
            (_, 1) if by_prefix.is_empty() => Ok(by_name[0]),
            _ => Err(ResolveError::Ambiguous(what.to_string())),
        }
    }
}

/// Why a name did not resolve to one node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// No match.
    #[error("no such node: {0}")]
    NotFound(String),
    /// Several matches.
    #[error("node name {0} is ambiguous: it matches several nodes; use more of the ID")]
    Ambiguous(String),
}
