//! The desired state of one node's data plane: which overlay networks exist
//! here (with their remote endpoints), which local tasks attach to them and
//! the gateway bridge for egress. The worker builds a [`DesiredNode`] from
//! the manager's `NodeConfig`; [`crate::plan`] diffs it against the kernel.
//!
//! Everything is family-agnostic (`IpAddr`, `IpNetwork`), serde-serialisable
//! and kept in ordered maps so plans are deterministic. Kernel names are
//! derived here too ([`names`]), so the planner, the Linux executor and the
//! teardown agree on them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// The default VXLAN UDP port (IANA).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// Bytes VXLAN adds to every frame (outer IPv4 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Bytes WireGuard adds on top (outer IPv6-sized IP 40 + UDP 8 + WireGuard
/// header and tag 32, the figure `wg-quick` uses: 1500 -> 1420).
pub const WIREGUARD_OVERHEAD: u32 = 60;

/// The MTU of an overlay network over an underlay of `underlay_mtu`.
pub fn overlay_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
}

/// The MTU of an encrypted overlay network (VXLAN inside WireGuard) over an
/// underlay of `underlay_mtu`.
pub fn encrypted_overlay_mtu(underlay_mtu: u32) -> u32 {
    overlay_mtu(underlay_mtu).saturating_sub(WIREGUARD_OVERHEAD)
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }
    };
}

string_id!(
    /// A network's cluster-wide id (names its namespace `net-<id>`).
    NetworkId
);
string_id!(
    /// A task's cluster-wide id (names its namespace `task-<id>`).
    TaskId
);
string_id!(
    /// An endpoint's id (a task's attachment to a network), cluster-wide.
    EndpointId
);

/// Everything the data plane of one node should look like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredNode {
    /// This node's data-path (underlay) address: the VXLAN source.
    pub vtep: IpAddr,
    /// The VXLAN UDP port (`--data-path-port`, default 4789).
    pub vxlan_port: u16,
    /// The gateway bridge for egress; `None` removes it.
    pub gateway: Option<GatewayBridge>,
    /// The overlay networks this node takes part in.
    pub networks: BTreeMap<NetworkId, OverlayNet>,
    /// The local tasks' network attachments.
    pub tasks: BTreeMap<TaskId, TaskNet>,
    /// Where the embedded DNS resolver forwards names that are not ours
    /// (the host's resolvers, see [`crate::dns::resolv_conf_upstreams`]);
    /// empty: such names get NXDOMAIN.
    #[serde(default)]
    pub dns_upstreams: Vec<SocketAddr>,
    /// The node-wide WireGuard device (`weft-wg0`) that carries the VXLAN
    /// of encrypted networks; `None` removes it.
    #[serde(default)]
    pub wireguard: Option<WgConfig>,
    /// Underlay hygiene: when `Some`, VXLAN (UDP to
    /// [`vxlan_port`](DesiredNode::vxlan_port)) reaching the daemon's
    /// namespace from any other source address is dropped (nftables table
    /// `inet weft_guard`, the members in a set). Traffic that comes out of
    /// the WireGuard device is exempt: WireGuard authenticated it already.
    /// `None` removes the table.
    #[serde(default)]
    pub vxlan_allowed_sources: Option<BTreeSet<IpAddr>>,
    /// Ports published on this node (`weft run -p`, services'
    /// `--publish`): DNAT rules in the nftables table
    /// [`names::NFT_PORTS_TABLE`] of the daemon's namespace. Empty: the
    /// table holds no rules.
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// The daemon namespace's own endpoint on the `ingress` network (a veth
    /// [`names::INGRESS_IF`] into that network's bridge): the source of
    /// ingress traffic forwarded to replicas on other nodes. `None` removes
    /// it.
    #[serde(default)]
    pub ingress: Option<IngressEndpoint>,
}

/// A transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One port published on this node: connections to any local address of
/// the daemon's namespace on [`port`](PublishedPort::port) are forwarded to
/// [`target_port`](PublishedPort::target_port) of one backend, chosen per
/// connection.
///
/// Local backends win: when [`local`](PublishedPort::local) is not empty
/// only they are used, reached over the gateway bridge without source NAT,
/// so the workload sees the client's address. Otherwise a backend in
/// [`remote`](PublishedPort::remote) is reached over the ingress network
/// and the source is rewritten to this node's ingress address (the reply
/// must come back here).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// The port on the node (1-65535).
    pub port: u16,
    /// The port on the backend.
    pub target_port: u16,
    /// Backends on this node: their gateway-bridge addresses.
    pub local: Vec<IpAddr>,
    /// Backends on other nodes: their addresses on the ingress network
    /// (needs [`DesiredNode::ingress`]).
    pub remote: Vec<IpAddr>,
    /// Who published it, for rule comments and errors: `task NAME` or
    /// `service NAME`.
    pub owner: String,
}

/// The daemon namespace's endpoint on the ingress network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressEndpoint {
    /// The ingress network (must be in [`DesiredNode::networks`]).
    pub network: NetworkId,
    /// Its address with the network's prefix length.
    pub ip: IpNetwork,
    /// Its IPv6 address with the network's IPv6 prefix length, when the
    /// ingress network is dual stack (the routing mesh over IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpNetwork>,
    /// Its MAC.
    pub mac: MacAddr,
}

impl DesiredNode {
    /// An empty node state with the default VXLAN port and no gateway.
    pub fn new(vtep: IpAddr) -> DesiredNode {
        DesiredNode {
            vtep,
            vxlan_port: DEFAULT_VXLAN_PORT,
            gateway: None,
            networks: BTreeMap::new(),
            tasks: BTreeMap::new(),
            dns_upstreams: Vec::new(),
            wireguard: None,
            vxlan_allowed_sources: None,
            ports: Vec::new(),
            ingress: None,
        }
    }

    /// Whether `network`'s VXLAN travels inside WireGuard on this node.
    pub fn is_encrypted(&self, network: &NetworkId) -> bool {
        self.wireguard
            .as_ref()
            .is_some_and(|w| w.networks.contains(network))
    }

    /// The local VTEP of `network`'s VXLAN device: the node's tunnel
    /// address for an encrypted network, else the underlay address.
    pub fn local_vtep(&self, network: &NetworkId) -> IpAddr {
        match &self.wireguard {
            Some(w) if w.networks.contains(network) => w.tunnel_addr.ip(),
            _ => self.vtep,
        }
    }
}

/// The default UDP port of the WireGuard device.
pub const DEFAULT_WG_PORT: u16 = 51820;

/// The default persistent keepalive (seconds) of WireGuard peers: keeps
/// NAT and conntrack state warm and lets a restarted peer be noticed.
pub const DEFAULT_WG_KEEPALIVE: u16 = 25;

fn default_wg_mtu() -> u32 {
    1500 - WIREGUARD_OVERHEAD
}

fn default_wg_keepalive() -> u16 {
    DEFAULT_WG_KEEPALIVE
}

/// The node-wide WireGuard device: one boringtun device on the TUN
/// interface [`names::WG_DEVICE`] in the daemon's namespace, with one peer
/// per other node that shares an encrypted network with this one.
///
/// The VXLAN devices of the networks in [`networks`](WgConfig::networks)
/// use [`tunnel_addr`](WgConfig::tunnel_addr) as their local VTEP, and their
/// remote endpoints' [`RemoteEndpoint::vtep`] are the peers' tunnel IPs, so
/// their VXLAN is routed into the tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgConfig {
    /// UDP port the device listens on ([`DEFAULT_WG_PORT`]).
    pub listen_port: u16,
    /// The node's private key: a 0600 file on this node, written by
    /// [`crate::wg::keys`]; it never leaves the node.
    pub private_key_path: PathBuf,
    /// This node's address in the tunnel subnet, with the subnet's prefix
    /// length (so the whole tunnel subnet routes into the device).
    pub tunnel_addr: IpNetwork,
    /// MTU of the device: the underlay MTU minus [`WIREGUARD_OVERHEAD`].
    /// Encrypted networks need an MTU of at most this minus
    /// [`VXLAN_OVERHEAD`].
    #[serde(default = "default_wg_mtu")]
    pub mtu: u32,
    /// Persistent keepalive of every peer, seconds (0: off).
    #[serde(default = "default_wg_keepalive")]
    pub keepalive: u16,
    /// The encrypted networks (ids in [`DesiredNode::networks`]).
    #[serde(default)]
    pub networks: BTreeSet<NetworkId>,
    /// The peers by node id.
    #[serde(default)]
    pub peers: BTreeMap<String, WgPeer>,
}

/// Another node as a WireGuard peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgPeer {
    /// Its public key, base64 (as `wg` prints it).
    pub public_key: String,
    /// Its underlay address and WireGuard port.
    pub endpoint: SocketAddr,
    /// Its tunnel address; the peer's only allowed IP (`/32` or `/128`).
    pub tunnel_ip: IpAddr,
}

/// The gateway bridge `weft_gwbridge` in the daemon's namespace: tasks on
/// non-internal networks get a second veth into it, a default route via
/// [`gateway`](GatewayBridge::gateway) and masquerade for egress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayBridge {
    /// Its subnet (default 172.18.0.0/16); must not collide with a route of
    /// the daemon's namespace.
    pub subnet: IpNetwork,
    /// The bridge's own address in `subnet` (default 172.18.0.1).
    pub gateway: IpAddr,
    /// MTU of the bridge and the task veths plugged into it.
    pub mtu: u32,
    /// Its IPv6 subnet and the bridge's IPv6 address, for tasks with an
    /// IPv6 address on some network (egress over IPv6, published ports to
    /// local IPv6 backends); see [`GatewayBridge::with_ipv6`]. `None`: IPv4
    /// only, and IPv6 forwarding is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<(IpNetwork, IpAddr)>,
}

impl Default for GatewayBridge {
    fn default() -> Self {
        GatewayBridge {
            subnet: IpNetwork::new(IpAddr::V4(Ipv4Addr::new(172, 18, 0, 0)), 16)
                .expect("valid prefix"),
            gateway: IpAddr::V4(Ipv4Addr::new(172, 18, 0, 1)),
            mtu: 1500,
            ipv6: None,
        }
    }
}

impl GatewayBridge {
    /// The bridge's address with the subnet's prefix length.
    pub fn bridge_address(&self) -> IpNetwork {
        IpNetwork::new(self.gateway, self.subnet.prefix()).expect("prefix of a valid subnet")
    }

    /// The unique local /96 the bridge's IPv6 addresses live in: each is
    /// the prefix followed by the 32 bits of the IPv4 address on the
    /// bridge (see [`GatewayBridge::ipv6_of`]), so a node derives every
    /// IPv6 address on its bridge from the IPv4 ones the managers gave out
    /// and no manager allocates anything more. `fd77:6566:7400::/48` spells
    /// "weft" in its global ID.
    pub const IPV6_PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd77, 0x6566, 0x7400, 0, 0, 0, 0, 0);

    /// The IPv6 address standing for `ip`, an IPv4 address of the bridge's
    /// subnet, with the matching prefix length (96 + the IPv4 one).
    pub fn ipv6_of(ip: IpNetwork) -> Option<IpNetwork> {
        let IpNetwork::V4(v4) = ip else { return None };
        let bits = u128::from(Self::IPV6_PREFIX) | u128::from(u32::from(v4.ip()));
        IpNetwork::new(IpAddr::V6(Ipv6Addr::from(bits)), 96 + v4.prefix()).ok()
    }

    /// This bridge with its IPv6 subnet and address derived from the IPv4
    /// ones ([`GatewayBridge::ipv6_of`]).
    pub fn with_ipv6(mut self) -> Self {
        self.ipv6 = Self::ipv6_of(self.bridge_address()).map(|a| {
            let subnet =
                IpNetwork::new(a.network(), a.prefix()).expect("prefix of a valid address");
            (subnet, a.ip())
        });
        self
    }

    /// The bridge's IPv6 address with its prefix length.
    pub fn bridge_address6(&self) -> Option<IpNetwork> {
        self.ipv6
            .map(|(s, gw)| IpNetwork::new(gw, s.prefix()).expect("prefix of a valid subnet"))
    }
}

/// One overlay network as seen from this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayNet {
    /// VXLAN network identifier (24 bits), unique per node.
    pub vni: u32,
    /// The network's subnet.
    pub subnet: IpNetwork,
    /// The gateway address, put on the network's bridge (as Docker does).
    pub gateway: IpAddr,
    /// A dual-stack network's IPv6 subnet and gateway (on the bridge too);
    /// `None`: one family only ([`subnet`](OverlayNet::subnet)'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<(IpNetwork, IpAddr)>,
    /// MTU of the bridge, the VXLAN device and every task veth.
    pub mtu: u32,
    /// Internal networks give their tasks no way out (no gateway attachment
    /// on their account).
    pub internal: bool,
    /// Endpoints of this network on other nodes.
    pub remote: BTreeMap<EndpointId, RemoteEndpoint>,
    /// A node-local bridge network (`bridge` driver): the same namespace,
    /// bridge and task veths as an overlay, but no VXLAN device and no
    /// remote endpoints; [`vni`](OverlayNet::vni) is unused (0).
    #[serde(default)]
    pub local: bool,
    /// The network's user-facing name: the DNS suffix its names may carry
    /// (`web.appnet`). Empty: no suffix form.
    #[serde(default)]
    pub name: String,
    /// Services with tasks on this network, by service name: their VIP
    /// (balanced in every local task on this network) and DNS records.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceEntry>,
    /// Names of the tasks on this network (on any node): task names and
    /// aliases, each with the addresses that answer to it (an alias may be
    /// shared by tasks, and a service's alias answers its VIP): DNS
    /// records beside the services'.
    #[serde(default)]
    pub names: BTreeMap<String, Vec<IpAddr>>,
}

/// A service as seen on one network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// The virtual IP on this network, allocated from the network's subnet
    /// (so every task has an on-link route to it, internal networks
    /// included); `None` in DNS round-robin (`dnsrr`) mode.
    pub vip: Option<IpAddr>,
    /// Its IPv6 VIP on a dual-stack network, from the IPv6 subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip6: Option<IpAddr>,
    /// The running tasks' addresses on this network (any node), both
    /// families on a dual-stack network.
    pub backends: Vec<IpAddr>,
}

impl OverlayNet {
    /// The gateway address with the subnet's prefix length (on `br0`).
    pub fn bridge_address(&self) -> IpNetwork {
        IpNetwork::new(self.gateway, self.subnet.prefix()).expect("prefix of a valid subnet")
    }

    /// A dual-stack network's IPv6 gateway with the IPv6 subnet's prefix
    /// length (on `br0` too); `None` for one family.
    pub fn bridge_address6(&self) -> Option<IpNetwork> {
        let (subnet, gateway) = self.subnet6?;
        IpNetwork::new(gateway, subnet.prefix()).ok()
    }
}

/// An endpoint on another node: one static FDB entry (MAC -> VTEP) and one
/// permanent neighbour entry per address (IP -> MAC; two on a dual-stack
/// network) on the VXLAN device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEndpoint {
    /// Its overlay address.
    pub ip: IpAddr,
    /// Its IPv6 address on a dual-stack network (same MAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
    /// Its MAC.
    pub mac: MacAddr,
    /// The underlay address of its node.
    pub vtep: IpAddr,
}

/// The network attachments of one local task (its own namespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskNet {
    /// One veth per attached network.
    pub endpoints: Vec<LocalEndpoint>,
    /// The veth `gw0` into the gateway bridge and the default route through
    /// it; `None` when all the task's networks are internal.
    pub gateway: Option<GwAttachment>,
    /// A foreign runtime's namespace (CNI's `CNI_NETNS`, Docker's sandbox
    /// key): it is adopted (pinned where weft pins its own) rather than
    /// made, only the links named here are weft's in it, and removing the
    /// task takes weft's links, VIP table and resolver out of it without
    /// destroying it. `None`: weft makes the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<std::path::PathBuf>,
    /// The task's one endpoint is handed to a runtime that moves the
    /// inside end into its container itself (Docker's `Join` answers with
    /// an interface to move). Without `netns`, the veth is made with its
    /// inside end in the daemon's namespace under [`names::handover`], and
    /// nothing else (no namespace, VIP table or resolver). With `netns`
    /// (the runtime moved it there, under the endpoint's interface name),
    /// the task is wired as a foreign one, except that the pair is never
    /// made again by the planner while its network side stands: the inside
    /// end is the runtime's, and a namespace adopted in this pass is not
    /// observed yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handover: bool,
    /// Where the embedded resolver listens in the task's namespace (port
    /// 53): [`crate::dns::RESOLVER_ADDR`] unless set. Docker's containers
    /// have Docker's own resolver at that address, and weft's listens at
    /// [`crate::dns::DOCKER_UPSTREAM_ADDR`] as its upstream (`--dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<std::net::Ipv4Addr>,
}

/// A local task's attachment to an overlay network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    /// The network (must be in [`DesiredNode::networks`]).
    pub network: NetworkId,
    /// Interface name inside the task (`eth0`, `eth1` …).
    pub ifname: String,
    /// Its address with the network's prefix length.
    pub ip: IpNetwork,
    /// Its IPv6 address with the IPv6 subnet's prefix length on a
    /// dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpNetwork>,
    /// Its MAC.
    pub mac: MacAddr,
}

/// A task's attachment to the gateway bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GwAttachment {
    /// Its address with the gateway subnet's prefix length.
    pub ip: IpNetwork,
    /// Its IPv6 address when the bridge has one
    /// ([`GatewayBridge::ipv6_of`] its IPv4 one), for a task with an IPv6
    /// address on some network: it gets an IPv6 default route too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpNetwork>,
    /// Its MAC.
    pub mac: MacAddr,
}

/// Kernel names, derived from ids, shared by the planner, the executor and
/// teardown. Everything living in the daemon's namespace starts with
/// [`WEFT_PREFIX`].
pub mod names {
    use super::{NetworkId, TaskId};

    /// Prefix of every object weft makes in the daemon's namespace.
    pub const WEFT_PREFIX: &str = "weft";
    /// The gateway bridge in the daemon's namespace.
    pub const GATEWAY_BRIDGE: &str = "weft_gwbridge";
    /// Prefix of the daemon-side ends of the task veths into the gateway
    /// bridge (`weftgw` + 9 hex digits of the task id's hash).
    pub const GW_PORT_PREFIX: &str = "weftgw";
    /// Prefix of VXLAN devices (`weft-vx<vni>`); they are created in the
    /// daemon's namespace and moved into their network's namespace.
    pub const VXLAN_PREFIX: &str = "weft-vx";
    /// The bridge inside every network namespace.
    pub const NETWORK_BRIDGE: &str = "br0";
    /// Prefix of the network-side ends of task veths (`vt` + 10 hex digits).
    pub const PORT_PREFIX: &str = "vt";
    /// Prefix of the daemon-side names of veth ends handed to a runtime
    /// ([`handover`]).
    pub const HANDOVER_PREFIX: &str = "weftdk";
    /// The task end of the gateway veth.
    pub const TASK_GW_IF: &str = "gw0";
    /// The loopback device.
    pub const LOOPBACK: &str = "lo";
    /// Name of the nftables tables (families `inet` and `bridge`).
    pub const NFT_TABLE: &str = "weft";
    /// Name of the service-VIP table (family `inet`) in every task
    /// namespace.
    pub const NFT_LB_TABLE: &str = "weft_lb";
    /// Pin file prefix of network namespaces.
    pub const NET_NS_PREFIX: &str = "net-";
    /// Pin file prefix of task namespaces.
    pub const TASK_NS_PREFIX: &str = "task-";
    /// The node-wide WireGuard TUN device in the daemon's namespace.
    pub const WG_DEVICE: &str = "weft-wg0";
    /// The underlay-hygiene table (family `inet`) in the daemon's
    /// namespace: VXLAN only from member nodes.
    pub const NFT_GUARD_TABLE: &str = "weft_guard";
    /// The published-ports table (family `inet`) in the daemon's
    /// namespace: DNAT of published ports, source NAT towards the ingress
    /// network.
    pub const NFT_PORTS_TABLE: &str = "weft_ports";
    /// The operator's table (family `inet`) in the daemon's namespace:
    /// weft creates it and its base chain [`USER_CHAIN`] when missing and
    /// never flushes, changes or deletes them.
    pub const NFT_USER_TABLE: &str = "weft_user";
    /// The operator's chain in [`NFT_USER_TABLE`]: a `forward` base chain
    /// evaluated before weft's own forwarding rules (priority `filter - 10`).
    pub const USER_CHAIN: &str = "weft-user";
    /// The daemon-side end of the veth into the ingress network's bridge.
    pub const INGRESS_IF: &str = "weft_ingress";

    /// FNV-1a (64 bit): stable across versions and platforms, which
    /// `std`'s hasher is not; names must survive a daemon upgrade.
    pub(crate) fn fnv1a(s: &str) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    fn short_hash(s: &str, digits: usize) -> String {
        let mut h = format!("{:016x}", fnv1a(s));
        h.truncate(digits);
        h
    }

    /// The VXLAN device of the network with `vni`.
    pub fn vxlan(vni: u32) -> String {
        format!("{VXLAN_PREFIX}{vni}")
    }

    /// The network-side end (plugged into `br0`) of `task`'s veth.
    pub fn port(task: &TaskId) -> String {
        format!("{PORT_PREFIX}{}", short_hash(task.as_str(), 10))
    }

    /// The daemon-side name of `task`'s veth end made for a runtime to
    /// move into its container (see [`super::TaskNet::handover`]).
    pub fn handover(task: &TaskId) -> String {
        format!("{HANDOVER_PREFIX}{}", short_hash(task.as_str(), 9))
    }

    /// The daemon-side end (plugged into the gateway bridge) of `task`'s
    /// gateway veth.
    pub fn gw_port(task: &TaskId) -> String {
        format!("{GW_PORT_PREFIX}{}", short_hash(task.as_str(), 9))
    }

    /// Pin file name of `network`'s namespace.
    pub fn network_ns(network: &NetworkId) -> String {
        format!("{NET_NS_PREFIX}{network}")
    }

    /// Pin file name of `task`'s namespace.
    pub fn task_ns(task: &TaskId) -> String {
        format!("{TASK_NS_PREFIX}{task}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtus() {
        assert_eq!(overlay_mtu(1500), 1450);
        assert_eq!(encrypted_overlay_mtu(1500), 1390);
        assert_eq!(overlay_mtu(9000), 8950);
        assert_eq!(overlay_mtu(20), 0);
        assert_eq!(encrypted_overlay_mtu(100), 0);
    }

    #[test]
    fn names_fit_the_kernel_limit_and_are_stable() {
        let t = TaskId::from("x".repeat(200).as_str());
        assert_eq!(names::port(&t).len(), 12);
        assert_eq!(names::gw_port(&t).len(), 15);
        assert_eq!(names::vxlan(16_777_215), "weft-vx16777215");
        assert!(names::gw_port(&t).starts_with(names::WEFT_PREFIX));
        assert!(names::vxlan(1).starts_with(names::WEFT_PREFIX));
        assert!(names::GATEWAY_BRIDGE.starts_with(names::WEFT_PREFIX));
        // Pinned values: changing the hash would orphan a running node's
        // objects on upgrade.
        assert_eq!(names::port(&TaskId::from("t1")), "vt08c7ff07b5");
        assert_ne!(
            names::port(&TaskId::from("t1")),
            names::port(&TaskId::from("t2"))
        );
    }

    #[test]
    fn serde_round_trip() {
        let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
        d.gateway = Some(GatewayBridge::default());
        d.networks.insert(
            "n1".into(),
            OverlayNet {
                subnet6: None,
                local: false,
                vni: 4096,
                subnet: "10.0.9.0/24".parse().unwrap(),
                gateway: "10.0.9.1".parse().unwrap(),
                mtu: 1450,
                internal: false,
                remote: BTreeMap::from([(
                    "e2".into(),
                    RemoteEndpoint {
                        ip6: None,
                        ip: "10.0.9.3".parse().unwrap(),
                        mac: "02:42:0a:00:09:03".parse().unwrap(),
                        vtep: "198.18.0.2".parse().unwrap(),
                    },
                )]),
                name: "appnet".into(),
                services: BTreeMap::from([(
                    "web".into(),
                    ServiceEntry {
                        vip6: None,
                        vip: Some("10.0.9.100".parse().unwrap()),
                        backends: vec!["10.0.9.3".parse().unwrap()],
                    },
                )]),
                names: BTreeMap::from([("web.1".into(), vec!["10.0.9.3".parse().unwrap()])]),
            },
        );
        d.dns_upstreams = vec!["192.0.2.53:53".parse().unwrap()];
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DesiredNode>(&j).unwrap(), d);
        assert!(j.contains("\"n1\""));
        // Older configs without the service fields still parse.
        let mut v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v.as_object_mut().unwrap().remove("dns_upstreams");
        let n1 = v["networks"]["n1"].as_object_mut().unwrap();
        for k in ["name", "services", "names"] {
            n1.remove(k);
        }
        let old: DesiredNode = serde_json::from_value(v).unwrap();
        assert!(old.dns_upstreams.is_empty());
        assert!(old.networks[&NetworkId::from("n1")].services.is_empty());
    }
}
