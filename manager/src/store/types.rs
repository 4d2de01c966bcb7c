//! The objects the store holds.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::task_state::TaskStatus;

/// A node's identity: a random 64-bit number, shown as 16 lower-case hex
/// digits. It is also the node's Raft ID when it is a manager.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random ID (never zero).
    pub fn random() -> Self {
        loop {
            let id = rand::random::<u64>();
            if id != 0 {
                return NodeId(id);
            }
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A string that is not a full node ID.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("not a node ID (expected 16 hex digits): {0:?}")]
pub struct ParseNodeIdError(pub String);

impl FromStr for NodeId {
    type Err = ParseNodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseNodeIdError(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(NodeId)
            .map_err(|_| ParseNodeIdError(s.to_string()))
    }
}

/// Desired role of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs tasks only.
    #[default]
    Worker,
    /// Also a member of the Raft group.
    Manager,
}

impl Role {
    /// `worker` / `manager`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

/// Scheduling availability, as in `docker node update --availability`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move elsewhere.
    Drain,
}

/// Liveness as seen by the leader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Never heard from since the current leader took over.
    #[default]
    Unknown,
    /// Heartbeating.
    Ready,
    /// Missed its heartbeats.
    Down,
}

impl NodeState {
    /// `unknown` / `ready` / `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Identity.
    pub id: NodeId,
    /// Host name the node reported.
    pub hostname: String,
    /// Desired role.
    pub role: Role,
    /// Scheduling availability.
    pub availability: Availability,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Liveness.
    pub state: NodeState,
    /// Why the state is what it is.
    pub state_message: String,
    /// `IP:PORT` of its manager port (for managers, the Raft address).
    pub addr: String,
    /// Underlay IP for the data path.
    pub data_path_addr: String,
    /// MTU of its underlay interface.
    pub underlay_mtu: u32,
    /// Unix ms when admitted.
    pub created_at_ms: u64,
    /// Unix ms of the last change.
    pub updated_at_ms: u64,
    /// Expiry of the certificate last issued to it, RFC 3339.
    pub cert_expiry: String,
    /// Role of the certificate last issued to it. A node promoted in the
    /// store becomes a Raft member only once it holds a manager certificate
    /// (and so runs a manager).
    #[serde(default)]
    pub cert_role: Role,
    /// Its WireGuard public key (base64); the private key never leaves it.
    #[serde(default)]
    pub wg_public_key: String,
    /// Its address inside the WireGuard tunnel, allocated with its first key.
    #[serde(default)]
    pub tunnel_ip: Option<IpAddr>,
    /// Bumped to ask the node for a fresh key pair (`node rotate-key`).
    #[serde(default)]
    pub wg_key_generation: u64,
    /// Unix ms when its current key was reported.
    #[serde(default)]
    pub wg_key_since_ms: u64,
    /// Its CPUs and memory, as it reports them (absent in old records).
    #[serde(default)]
    pub resources: NodeResources,
    /// Its weft version, as it reports it (empty: not reported).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// Cluster identity and settings, fixed at `init` unless noted.
// Debug is written by hand: the CA key and the join secrets must never
// reach a log line.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Random ID, also in every node certificate.
    pub id: String,
    /// The CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The CA private key, PEM. Only managers hold the store.
    pub ca_key_pem: String,
    /// Secret half of the worker join token.
    pub worker_secret: String,
    /// Secret half of the manager join token.
    pub manager_secret: String,
    /// Tunables.
    pub settings: ClusterSettings,
    /// With autolock on: the CA key and both join secrets, sealed under the
    /// cluster's unlock key (see `crate::autolock`); the three plain fields
    /// above are then empty.
    #[serde(default)]
    pub sealed: Option<weft_proto::seal::Sealed>,
    /// Bumped by every change of the secrets, so a read-modify-write of
    /// them (`SetSecrets`) can be refused when another came between.
    #[serde(default)]
    pub secrets_generation: u64,
}

impl Cluster {
    /// The secrets as held in the clear: all empty while autolock is on.
    pub fn plain_secrets(&self) -> Secrets {
        Secrets {
            ca_key_pem: self.ca_key_pem.clone(),
            worker_secret: self.worker_secret.clone(),
            manager_secret: self.manager_secret.clone(),
        }
    }

    /// Whether the secrets are sealed (autolock on).
    pub fn autolock(&self) -> bool {
        self.sealed.is_some()
    }
}

/// The cluster's secrets: what autolock seals. Zeroed on drop; `Debug`
/// prints none of them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Secrets {
    /// The CA private key, PEM.
    pub ca_key_pem: String,
    /// Secret half of the worker join token.
    pub worker_secret: String,
    /// Secret half of the manager join token.
    pub manager_secret: String,
}

impl Drop for Secrets {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.ca_key_pem.zeroize();
        self.worker_secret.zeroize();
        self.manager_secret.zeroize();
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"<redacted>")
            .field("worker_secret", &"<redacted>")
            .field("manager_secret", &"<redacted>")
            .field("settings", &self.settings)
            .field("sealed", &self.sealed)
            .field("secrets_generation", &self.secrets_generation)
            .finish()
    }
}

/// Cluster-wide tunables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Worker heartbeat period.
    pub heartbeat_period_ms: u64,
    /// VXLAN UDP port.
    pub data_path_port: u16,
    /// Pools overlay subnets come from.
    pub default_addr_pools: Vec<IpNetwork>,
    /// Prefix length of a subnet taken from the pools.
    pub default_addr_pool_mask_length: u8,
    /// Lifetime of node certificates.
    pub cert_expiry_secs: u64,
    /// Node-local subnet of the gateway bridge (egress for tasks).
    #[serde(default = "default_gateway_subnet")]
    pub gateway_subnet: IpNetwork,
    /// WireGuard UDP port.
    #[serde(default = "default_wg_port")]
    pub wg_port: u16,
    /// Subnet node tunnel addresses come from.
    #[serde(default = "default_tunnel_subnet")]
    pub tunnel_subnet: IpNetwork,
    /// Automatic WireGuard key rotation interval (0 = never).
    #[serde(default = "default_wg_rotation")]
    pub wg_key_rotation_secs: u64,
    /// Subnet of the ingress network (the routing mesh of published ports),
    /// kept free from the first network on, created on the first publish.
    /// `None` in clusters initialised before it was a setting: they use the
    /// default subnet and keep nothing free, so their logs replay as before.
    #[serde(default)]
    pub ingress_subnet: Option<IpNetwork>,
    /// IPv6 subnet of the ingress network (the routing mesh over IPv6),
    /// kept free like [`ClusterSettings::ingress_subnet`]; `None`: the
    /// routing mesh is IPv4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_subnet6: Option<IpNetwork>,
    /// How long a node whose session ended without notice (its daemon's
    /// connection closed: the process died) has to open a new one before
    /// the leader marks it down; `None`: off (missed heartbeats decide).
    #[serde(default)]
    pub disconnect_grace_ms: Option<u64>,
    /// Pools dual-stack networks' IPv6 subnets come from; empty: the
    /// cluster's unique local /48 ([`super::ipam::ula_pool`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_addr_pools6: Vec<IpNetwork>,
    /// Prefix length of an IPv6 subnet taken from the pools.
    #[serde(default = "default_mask6")]
    pub default_addr_pool_mask_length6: u8,
}

fn default_mask6() -> u8 {
    64
}

impl ClusterSettings {
    /// The subnet the ingress network is (or will be) created on.
    pub fn ingress_subnet(&self) -> IpNetwork {
        self.ingress_subnet.unwrap_or_else(default_ingress_subnet)
    }
}

fn default_ingress_subnet() -> IpNetwork {
    super::netmodel::INGRESS_SUBNET
        .parse()
        .expect("valid literal")
}

fn default_wg_port() -> u16 {
    51820
}

fn default_tunnel_subnet() -> IpNetwork {
    "100.64.0.0/16".parse().expect("valid literal")
}

fn default_wg_rotation() -> u64 {
    24 * 3600
}

fn default_gateway_subnet() -> IpNetwork {
    "172.18.0.0/16".parse().expect("valid literal")
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat_period_ms: 1000,
            data_path_port: 4789,
            default_addr_pools: vec!["10.0.0.0/8".parse().expect("valid literal")],
            default_addr_pool_mask_length: 24,
            cert_expiry_secs: 90 * 24 * 3600,
            gateway_subnet: default_gateway_subnet(),
            wg_port: default_wg_port(),
            tunnel_subnet: default_tunnel_subnet(),
            wg_key_rotation_secs: default_wg_rotation(),
            ingress_subnet: Some(default_ingress_subnet()),
            ingress_subnet6: None,
            disconnect_grace_ms: None,
            default_addr_pools6: Vec::new(),
            default_addr_pool_mask_length6: default_mask6(),
        }
    }
}

/// An overlay network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Random ID, 16 hex digits.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// `overlay`.
    pub driver: String,
    /// Subnet (given, or taken from the pools).
    pub subnet: IpNetwork,
    /// Gateway address (given, or the first usable one).
    pub gateway: IpAddr,
    /// Sub-range endpoint addresses come from, if given.
    pub ip_range: Option<IpNetwork>,
    /// VXLAN network identifier.
    pub vni: u32,
    /// No route out of the overlay.
    pub internal: bool,
    /// Standalone tasks (`weft run`) may attach.
    pub attachable: bool,
    /// MTU set by the operator; otherwise derived from the member nodes.
    pub mtu: Option<u32>,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Unix ms when created.
    pub created_at_ms: u64,
    /// Traffic between hosts travels inside WireGuard.
    #[serde(default)]
    pub encrypted: bool,
    /// The node a local network (`bridge` driver) lives on; `None` for
    /// swarm-scoped overlays.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// The routing-mesh network of published service ports.
    #[serde(default)]
    pub ingress: bool,
    /// Ingress network only: each node's own endpoint (the source of
    /// traffic it forwards to replicas elsewhere).
    #[serde(default)]
    pub node_endpoints: BTreeMap<NodeId, IpAddr>,
    /// Ingress network with an IPv6 subnet only: each node's own IPv6
    /// endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_endpoints6: BTreeMap<NodeId, IpAddr>,
    /// The address last handed out without being asked for: the next one
    /// is the first free address after it (wrapping at the end), so a
    /// released address is not reused before the rest of the range was
    /// (serial allocation, as libnetwork's for swarm networks). `None`
    /// until the first (and in old records: they start from the bottom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_allocated: Option<IpAddr>,
    /// `--aux-address NAME=IP`: addresses kept out of allocation (a router,
    /// a host already on the segment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, IpAddr>,
    /// A dual-stack network's IPv6 side (`--ipv6`); `None`: IPv4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Subnet6>,
}

/// The IPv6 subnet of a dual-stack network and its allocation state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subnet6 {
    /// Subnet (given, or taken from the IPv6 pools).
    pub subnet: IpNetwork,
    /// Gateway address (given, or the first usable one).
    pub gateway: IpAddr,
    /// Sub-range endpoint addresses come from, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNetwork>,
    /// The IPv6 address last handed out unasked (serial allocation, as
    /// [`Network::last_allocated`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_allocated: Option<IpAddr>,
}

impl Network {
    /// `local` for node-scoped networks, `swarm` otherwise.
    pub fn scope(&self) -> &'static str {
        if self.node.is_some() {
            "local"
        } else {
            "swarm"
        }
    }

    /// Whether `node` can see this network: swarm networks everywhere,
    /// local ones on their node.
    pub fn visible_on(&self, node: NodeId) -> bool {
        self.node.is_none_or(|n| n == node)
    }
}

/// How a task is networked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own namespace with one interface per attachment.
    #[default]
    Attached,
    /// The node's own network namespace (`--network host`).
    Host,
    /// Its own namespace with only loopback (`--network none`).
    None,
}

/// A transport protocol of a published port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl PortProto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
        }
    }
}

/// Where a service publishes a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, forwarded to a replica (a local one first).
    #[default]
    Ingress,
    /// Only on the nodes running a replica, to that replica.
    Host,
}

/// A published port as requested: `published` 0 picks a free one from
/// [`PUBLISHED_PORT_RANGE`](crate::store::PUBLISHED_PORT_RANGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRequest {
    /// Protocol.
    pub proto: PortProto,
    /// Port on the node; 0 = pick one.
    pub published: u16,
    /// Port in the task.
    pub target: u16,
    /// Ingress or host (services only; tasks are always host).
    pub mode: PublishMode,
}

/// A published port after allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Protocol.
    pub proto: PortProto,
    /// Port on the node.
    pub published: u16,
    /// Port in the task.
    pub target: u16,
    /// Ingress or host.
    pub mode: PublishMode,
}

/// What a task runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Program and arguments (for a container: replaces the image's `Cmd`;
    /// may be empty).
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Run as a container from an image; `None`: a host process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerOpts>,
    /// How the task is stopped (`--stop-signal`, `--stop-grace-period`).
    #[serde(default, skip_serializing_if = "StopPolicy::is_default")]
    pub stop: StopPolicy,
    /// Limits (containers only) and reservations (absent in old records).
    #[serde(default, skip_serializing_if = "Resources::is_none")]
    pub resources: Resources,
    /// `--log-opt`: the task's log size cap and rotation; `None`: the
    /// node's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogOpts>,
    /// `weft run -d --rm`: the task leaves the store once it has ended
    /// (standalone tasks only; false in old records).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_remove: bool,
    /// `--health-*`, `--no-healthcheck`; `None`: the image's HEALTHCHECK
    /// (resolved on the node). Absent in records written before checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthOpts>,
    /// A foreign runtime's container (CNI, Docker) standing in for a
    /// process: the node wires that runtime's namespace and runs nothing.
    /// `None` in every other task (and in old records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEndpoint>,
}

/// Which foreign runtime made a container attached to a weft network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalRuntime {
    /// A CNI runtime (podman, containerd's CRI, nerdctl, kubelet …).
    Cni,
    /// Docker's engine, through weft's network plugin.
    Docker,
}

impl ExternalRuntime {
    /// The wire and display name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalRuntime::Cni => "cni",
            ExternalRuntime::Docker => "docker",
        }
    }
}

/// Where a foreign runtime's container lives on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalEndpoint {
    /// The runtime that asked.
    pub runtime: ExternalRuntime,
    /// The runtime's container ID.
    pub container_id: String,
    /// The interface in its namespace.
    pub ifname: String,
    /// The namespace's path on the node.
    pub netns: String,
    /// The container's name, when the runtime gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
}

/// A task's health check as the user gave it (Docker's semantics): a
/// field left `None` takes the image's HEALTHCHECK value, else
/// Docker's default; the node merges them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthOpts {
    /// `--no-healthcheck`: no check at all, not even the image's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
    /// `--health-cmd`, run as `/bin/sh -c CMD` in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// `--health-interval`, ms; `None`: the image's or 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// `--health-timeout`, ms; `None`: the image's or 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `--health-retries`; `None`: the image's or 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// `--health-start-period`, ms; `None`: the image's or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_ms: Option<u64>,
}

/// How a task is stopped: `signal`, then SIGKILL once `grace_ms` is over.
/// `None` fields take the defaults the node applies (SIGTERM, 10 s), so
/// old records and specs that say nothing keep meaning "the default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopPolicy {
    /// The signal's number (1–31, 34–64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The grace period in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
}

impl StopPolicy {
    /// True when nothing was asked for.
    pub fn is_default(&self) -> bool {
        *self == StopPolicy::default()
    }
}

/// A task's resources (`--limit-*`, `--reserve-*`); 0 is "none". Limits
/// are enforced by the kernel on a container's cgroup; reservations are
/// what the scheduler sets aside on the task's node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `--limit-cpu`, in billionths of a CPU (CFS quota over period).
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub limit_nano_cpus: u64,
    /// `--limit-memory`, bytes (swap included: the same figure).
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub limit_memory_bytes: u64,
    /// `--limit-pids`: processes and threads.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub limit_pids: u64,
    /// `--reserve-cpu`, in billionths of a CPU.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub reserve_nano_cpus: u64,
    /// `--reserve-memory`, bytes.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub reserve_memory_bytes: u64,
}

impl Resources {
    /// Nothing limited, nothing reserved.
    pub fn is_none(&self) -> bool {
        *self == Resources::default()
    }

    /// Whether any limit is set (only containers can be limited).
    pub fn has_limits(&self) -> bool {
        self.limit_nano_cpus != 0 || self.limit_memory_bytes != 0 || self.limit_pids != 0
    }
}

/// What a node offers the scheduler, as it reports it: its CPUs and
/// memory. 0 is "not reported" (an older daemon): not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// Online CPUs, in billionths.
    #[serde(default)]
    pub nano_cpus: u64,
    /// Physical memory, bytes.
    #[serde(default)]
    pub memory_bytes: u64,
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

/// Size cap and rotation of a task's log on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOpts {
    /// Bytes per file before it rotates.
    pub max_size: u64,
    /// Files kept, the current one included.
    pub max_file: u32,
}

/// What makes a task a container: its image and Docker's overrides of the
/// image's defaults. The node resolves and checks the image itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerOpts {
    /// A name, `name@sha256:…` or a bare digest.
    pub image: String,
    /// `--entrypoint` (an empty list clears the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `-w`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `-u`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `--read-only`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `--cap-add`: canonical `CAP_*` names or `ALL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// `--cap-drop`: canonical `CAP_*` names or `ALL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `--security-opt seccomp=unconfined`: no seccomp filter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seccomp_unconfined: bool,
    /// `--security-opt no-new-privileges`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    /// `--mount`s, checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<weft_proto::isolation::MountSpec>,
    /// `--hostname`; `None`: the task's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `-i`: stdin kept open for attaches (the node copies the stdio).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_stdin: bool,
    /// `-t`: a pseudo-terminal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// `weft run -i/-t` without `-d`: the output waits for the first attach.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attach_wait: bool,
    /// With `tty`: the terminal's size at the start (columns, rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<(u32, u32)>,
}

/// A task's address on one network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Network ID.
    pub network: String,
    /// Allocated address.
    pub ip: IpAddr,
    /// Interface name in the task (`eth0` …); stable across connects and
    /// disconnects of other networks. Empty in old records: by position.
    #[serde(default)]
    pub ifname: String,
    /// `--network-alias`, `network connect --alias`: more DNS names of
    /// the task on this network (several tasks may share one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Its IPv6 address on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
}

/// Desired state of a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredTaskState {
    /// Should run.
    #[default]
    Running,
    /// Should be stopped (removal pending).
    Shutdown,
}

/// One unit of work on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Random ID, 16 hex digits.
    pub id: String,
    /// Name (unique among tasks).
    pub name: String,
    /// Where it runs.
    pub node: NodeId,
    /// What it runs.
    pub spec: TaskSpec,
    /// Its addresses, in attachment order (eth0, eth1, …).
    pub attachments: Vec<Attachment>,
    /// Its address on the node's gateway bridge, when it has a way out.
    pub gateway_ip: Option<IpAddr>,
    /// Desired state.
    pub desired: DesiredTaskState,
    /// Observed state.
    pub status: TaskStatus,
    /// Unix ms when created.
    pub created_at_ms: u64,
    /// The service it belongs to; `None` for standalone tasks.
    #[serde(default)]
    pub service: Option<ServiceRef>,
    /// How it is networked.
    #[serde(default)]
    pub network_mode: NetworkMode,
    /// Ports published on its node for it (`weft run -p`).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// How many tasks of its service slot failed in a row, each soon after
    /// it was made, before this one: the restart backoff (0 in old records).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    /// When its slot's tasks were restarted before it (unix ms, oldest
    /// first), as far as `--restart-max-attempts` needs to count them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_history: Vec<u64>,
    /// When its node first reported it running (its node's clock, as the
    /// report that ends it: a rolling update's `--update-monitor` compares
    /// the two); `None` until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A network as requested by the operator, before allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// `--aux-address NAME=IP` (needs an explicit subnet).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, IpAddr>,
    /// ID chosen by the proposer.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Subnet, or `None` to take one from the pools.
    pub subnet: Option<IpNetwork>,
    /// Gateway, or `None` for the first usable address.
    pub gateway: Option<IpAddr>,
    /// Sub-range for endpoint addresses.
    pub ip_range: Option<IpNetwork>,
    /// No route out of the overlay.
    pub internal: bool,
    /// Standalone tasks may attach.
    pub attachable: bool,
    /// Explicit MTU.
    pub mtu: Option<u32>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Proposer's clock, unix ms.
    pub now_ms: u64,
    /// Inside WireGuard between hosts.
    #[serde(default)]
    pub encrypted: bool,
    /// `overlay` (default) or `bridge` (local to [`node`](NetworkSpec::node)).
    #[serde(default)]
    pub driver: String,
    /// The node of a local (`bridge`) network.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// `--ipv6`: dual stack, with [`subnet6`](NetworkSpec::subnet6) or an
    /// IPv6 subnet from the pools.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6: bool,
    /// The IPv6 `--subnet`, `--gateway` and `--ip-range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range6: Option<IpNetwork>,
    /// `--ipv4=false` (with `--ipv6`): an IPv6-only network, whose
    /// [`Network::subnet`] is its IPv6 subnet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_ipv4: bool,
}

/// How many tasks a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// A fixed number of replicas, spread over eligible nodes.
    Replicated {
        /// Desired replicas.
        replicas: u64,
    },
    /// One task on every eligible node.
    Global,
}

/// How clients find a service's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP per network, balanced over the tasks.
    #[default]
    Vip,
    /// DNS round robin: the service name resolves to the task addresses.
    Dnsrr,
}

/// When a finished task is replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Always.
    #[default]
    Any,
    /// Only after a non-zero exit or a failure.
    OnFailure,
    /// Never.
    None,
}

/// Comparison in a placement constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// A placement constraint such as `node.labels.zone==a`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// `node.role`, `node.hostname`, `node.id` or `node.labels.<key>`.
    pub key: String,
    /// `==` or `!=`.
    pub op: ConstraintOp,
    /// The value compared with.
    pub value: String,
}

impl Constraint {
    /// Whether `node` satisfies the constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let actual = match self.key.as_str() {
            "node.role" => Some(node.role.as_str().to_string()),
            "node.hostname" => Some(node.hostname.clone()),
            "node.id" => Some(node.id.to_string()),
            k => k
                .strip_prefix("node.labels.")
                .and_then(|l| node.labels.get(l).cloned()),
        };
        match self.op {
            ConstraintOp::Eq => actual.as_deref() == Some(self.value.as_str()),
            ConstraintOp::Ne => actual.as_deref() != Some(self.value.as_str()),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        };
        write!(f, "{}{op}{}", self.key, self.value)
    }
}

/// A constraint that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid constraint {0:?}: use KEY==VALUE or KEY!=VALUE with KEY one of node.role, node.hostname, node.id, node.labels.NAME"
)]
pub struct ParseConstraintError(pub String);

impl FromStr for Constraint {
    type Err = ParseConstraintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseConstraintError(s.to_string());
        let (key, op, value) = if let Some((k, v)) = s.split_once("==") {
            (k, ConstraintOp::Eq, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, ConstraintOp::Ne, v)
        } else {
            return Err(err());
        };
        let key = key.trim();
        let value = value.trim();
        let known = matches!(key, "node.role" | "node.hostname" | "node.id")
            || key
                .strip_prefix("node.labels.")
                .is_some_and(|l| !l.is_empty());
        if !known || value.is_empty() || value.contains("==") || value.contains("!=") {
            return Err(err());
        }
        if key == "node.role" && !matches!(value, "manager" | "worker") {
            return Err(err());
        }
        Ok(Constraint {
            key: key.to_string(),
            op,
            value: value.to_string(),
        })
    }
}

/// What the operator asked a service to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique name (also its DNS name).
    pub name: String,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// What each task runs.
    pub task: TaskSpec,
    /// Network IDs, in attachment order.
    pub networks: Vec<String>,
    /// `--network name=NET,alias=A`: by network ID, more names the service
    /// answers to in DNS on that network (as its own name does).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_aliases: BTreeMap<String, Vec<String>>,
    /// VIP or DNS round robin.
    pub endpoint_mode: EndpointMode,
    /// Placement constraints.
    pub constraints: Vec<Constraint>,
    /// Restart policy.
    pub restart: RestartCondition,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortRequest>,
    /// `--restart-delay`, `--restart-max-attempts`, `--restart-window`
    /// (absent in old records: the automatic backoff, no limit).
    #[serde(default, skip_serializing_if = "RestartPolicy::is_default")]
    pub restart_policy: RestartPolicy,
    /// `--with-registry-auth`: credentials for the image's registry,
    /// sealed by the control API before they are proposed (never in the
    /// clear in the Raft log or snapshots; `crate::registry_auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// `--update-*` (absent in old records: Docker's defaults).
    #[serde(default, skip_serializing_if = "UpdatePolicy::is_default")]
    pub update: UpdatePolicy,
    /// `--rollback-*`: how a rollback away from this spec replaces the
    /// tasks (absent in old records: Docker's defaults).
    #[serde(default, skip_serializing_if = "UpdatePolicy::is_default")]
    pub rollback: UpdatePolicy,
    /// `--label`: the service's own labels (changing them replaces no task).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A service's registry credentials as stored: the registry in the clear
/// (shown by `service inspect`), `user:password` sealed under the cluster's
/// registry data key for purpose `registry-auth:<service id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    /// `host[:port]`.
    pub registry: String,
    /// The user name and password, sealed.
    pub sealed: weft_proto::seal::Sealed,
}

/// How often, and how soon, finished tasks are replaced (beside the
/// condition, [`RestartCondition`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// `--restart-delay`: a fixed wait before a replacement, instead of
    /// the automatic backoff (1 s doubling to 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// `--restart-max-attempts`: at most this many restarts of a slot (0:
    /// no limit), counted within the window.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub max_attempts: u64,
    /// `--restart-window`: how far back restarts count towards the limit
    /// (0: all of them).
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub window_ms: u64,
}

impl RestartPolicy {
    /// No delay, no limit: the automatic backoff.
    pub fn is_default(&self) -> bool {
        *self == RestartPolicy::default()
    }
}

/// How a rolling update replaces a service's tasks (`--update-*`, and
/// the same settings for rollbacks, `--rollback-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// Tasks replaced at a time; 0: all at once.
    pub parallelism: u64,
    /// Wait after a batch's tasks run (and pass their health checks)
    /// before the next batch.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub delay_ms: u64,
    /// Stop the old task before its replacement starts, or after.
    #[serde(default, skip_serializing_if = "UpdateOrder::is_default")]
    pub order: UpdateOrder,
    /// What a failure of the new tasks does.
    #[serde(default, skip_serializing_if = "FailureAction::is_default")]
    pub failure_action: FailureAction,
    /// How long after it started a new task's end counts as a failure of
    /// the update (and how long the update watches its last batch).
    #[serde(
        default = "default_monitor_ms",
        skip_serializing_if = "is_default_monitor"
    )]
    pub monitor_ms: u64,
    /// The share of the service's tasks that may fail before the failure
    /// action is taken, in millionths (0: the first failure).
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub max_failure_ratio_ppm: u32,
}

/// Docker's `--update-monitor` default: 5 s.
pub const DEFAULT_MONITOR_MS: u64 = 5_000;

fn default_monitor_ms() -> u64 {
    DEFAULT_MONITOR_MS
}

fn is_default_monitor(ms: &u64) -> bool {
    *ms == DEFAULT_MONITOR_MS
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

impl Default for UpdatePolicy {
    /// One task at a time, no delay, stop first, pause on the first
    /// failure seen within 5 s (Docker's defaults).
    fn default() -> Self {
        UpdatePolicy {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor_ms: DEFAULT_MONITOR_MS,
            max_failure_ratio_ppm: 0,
        }
    }
}

impl UpdatePolicy {
    /// Docker's defaults.
    pub fn is_default(&self) -> bool {
        *self == UpdatePolicy::default()
    }
}

/// `--update-order`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// The old task stops, then its replacement starts (a gap, no surplus).
    #[default]
    StopFirst,
    /// The replacement starts and passes its health check, then the old
    /// task stops (no gap, one more task for a while).
    StartFirst,
}

impl UpdateOrder {
    /// Stop first.
    pub fn is_default(&self) -> bool {
        *self == UpdateOrder::default()
    }

    /// The flag's word.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
    }
}

/// `--update-failure-action` (`--rollback-failure-action`: pause or
/// continue).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop replacing tasks; a new `service update` resumes.
    #[default]
    Pause,
    /// Go on replacing tasks.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

impl FailureAction {
    /// Pause.
    pub fn is_default(&self) -> bool {
        *self == FailureAction::default()
    }

    /// The flag's word.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }
}

/// Where a service's last update (or rollback) is: Docker's
/// `UpdateStatus`, replicated so every manager and a new leader agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The state.
    pub state: UpdateState,
    /// Unix ms (proposer's clock) when it started.
    pub started_at_ms: u64,
    /// Unix ms when it completed, paused or was rolled back; 0: not yet.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub completed_at_ms: u64,
    /// Why it paused or rolled back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The tasks of the new version that failed while it ran (at most
    /// one per task of the service: each is counted once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// The update replaced the spec (not only `--force`), so the previous
    /// spec is what it replaced: what a failure may roll back to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed_spec: bool,
}

/// [`UpdateStatus::state`], with Docker's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Replacing tasks.
    Updating,
    /// Stopped after failures (`--update-failure-action pause`).
    Paused,
    /// Every task replaced and watched for `--update-monitor`.
    Completed,
    /// Going back to the previous spec.
    RollbackStarted,
    /// Stopped after failures while going back.
    RollbackPaused,
    /// Back on the previous spec.
    RollbackCompleted,
}

impl UpdateState {
    /// Docker's word.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    /// Tasks are being replaced (an update or a rollback under way).
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    /// A rollback, under way or done.
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }
}

/// A service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Random ID, 16 hex digits.
    pub id: String,
    /// The spec.
    pub spec: ServiceSpec,
    /// Virtual IP per network ID (VIP mode).
    pub vips: BTreeMap<String, IpAddr>,
    /// IPv6 virtual IP per dual-stack network ID (VIP mode).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vips6: BTreeMap<String, IpAddr>,
    /// Bumped when the task spec changes (or on `update --force`); tasks of
    /// older versions are replaced one at a time.
    pub version: u64,
    /// Unix ms when created.
    pub created_at_ms: u64,
    /// Unix ms of the last update.
    pub updated_at_ms: u64,
    /// The published ports, allocated.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The spec before the last update that changed it (Docker's
    /// `PreviousSpec`): what `service rollback` goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<Box<ServiceSpec>>,
    /// The version whose tasks ran the previous spec: a rollback adopts
    /// those still running as its own instead of replacing them (0: none,
    /// and in old records).
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub previous_version: u64,
    /// The last update or rollback that replaced tasks; `None` until one
    /// did (and in old records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
}

/// Which service a task belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Service ID.
    pub service: String,
    /// Replica slot (1-based); 0 for global services.
    pub slot: u64,
    /// Service version the task was made from.
    pub version: u64,
}
