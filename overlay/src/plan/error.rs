//! Why the planner refuses a desired state.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::{NetworkId, Proto, TaskId};

/// A desired state the planner refuses (nothing is applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A network or task id unusable as a file name.
    #[error("invalid {what} id {id:?}: {reason}")]
    InvalidId {
        /// "network" or "task".
        what: &'static str,
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// An interface name the kernel or weft would reject.
    #[error("task {task}: invalid interface name {ifname:?}: {reason}")]
    InvalidIfname {
        /// Task.
        task: TaskId,
        /// Name.
        ifname: String,
        /// Why.
        reason: &'static str,
    },
    /// A task endpoint on a network that is not in the desired state.
    #[error("task {task} attaches to network {network}, which this node does not have")]
    UnknownNetwork {
        /// Task.
        task: TaskId,
        /// Network.
        network: NetworkId,
    },
    /// Two endpoints of one task on the same network.
    #[error("task {task} has two endpoints on network {network}")]
    DuplicateAttachment {
        /// Task.
        task: TaskId,
        /// Network.
        network: NetworkId,
    },
    /// A VNI outside 1..=16777215.
    #[error("network {network}: VNI {vni} is outside 1..=16777215")]
    VniOutOfRange {
        /// Network.
        network: NetworkId,
        /// VNI.
        vni: u32,
    },
    /// A local bridge network with remote endpoints.
    #[error("network {network} is a local bridge network and cannot have remote endpoints")]
    LocalWithRemotes {
        /// Network.
        network: NetworkId,
    },
    /// Two networks with one VNI.
    #[error("networks {first} and {second} both use VNI {vni}")]
    DuplicateVni {
        /// VNI.
        vni: u32,
        /// One network.
        first: NetworkId,
        /// The other.
        second: NetworkId,
    },
    /// An address outside the subnet it belongs to.
    #[error("{what}: address {addr} is not in subnet {subnet}")]
    AddressOutsideSubnet {
        /// What the address is (e.g. "task t1 on network n1").
        what: String,
        /// The address.
        addr: IpAddr,
        /// The subnet.
        subnet: IpNetwork,
    },
    /// An IPv6 address on a network that is not dual-stack, or an IPv6
    /// subnet beside a subnet that is not IPv4.
    #[error(
        "network {network}: {what}: the network is not dual-stack (IPv4 subnet plus IPv6 subnet6)"
    )]
    NotDualStack {
        /// What the address or subnet is.
        what: String,
        /// The network.
        network: NetworkId,
    },
    /// A task wants a gateway attachment but there is no gateway bridge.
    #[error("task {task} has a gateway attachment but the node has no gateway bridge")]
    NoGatewayBridge {
        /// Task.
        task: TaskId,
    },
    /// The WireGuard configuration is unusable.
    #[error("wireguard: {what}: {reason}")]
    InvalidWireguard {
        /// What is wrong (e.g. "peer n2").
        what: String,
        /// Why.
        reason: &'static str,
    },
    /// The ingress endpoint is unusable.
    #[error("ingress endpoint on network {network}: {reason}")]
    InvalidIngress {
        /// Its network.
        network: NetworkId,
        /// Why.
        reason: &'static str,
    },
    /// A published port is unusable.
    #[error("published port {proto}/{port} of {owner}: {reason}")]
    InvalidPort {
        /// Protocol.
        proto: Proto,
        /// Port on the node.
        port: u16,
        /// Who published it.
        owner: String,
        /// Why.
        reason: &'static str,
    },
    /// Two publications of one port.
    #[error("port {proto}/{port} is published twice on this node: by {first} and by {second}")]
    DuplicatePort {
        /// Protocol.
        proto: Proto,
        /// Port on the node.
        port: u16,
        /// One owner.
        first: String,
        /// The other.
        second: String,
    },
    /// The gateway bridge subnet overlaps a route of the daemon's namespace.
    #[error(
        "gateway bridge subnet {subnet} collides with host route {route}{}; \
         choose another subnet for the gateway bridge",
        dev.as_ref().map(|d| format!(" dev {d}")).unwrap_or_default()
    )]
    GatewaySubnetCollision {
        /// The gateway subnet.
        subnet: IpNetwork,
        /// The host route.
        route: IpNetwork,
        /// Its device.
        dev: Option<String>,
    },
}
