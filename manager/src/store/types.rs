//! The objects the store holds.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

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
}

/// Cluster identity and settings, fixed at `init` unless noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat_period_ms: 1000,
            data_path_port: 4789,
            default_addr_pools: vec!["10.0.0.0/8".parse().expect("valid literal")],
            default_addr_pool_mask_length: 24,
            cert_expiry_secs: 90 * 24 * 3600,
        }
    }
}
