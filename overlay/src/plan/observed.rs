//! What the kernel holds, as the executor reads it: the planner's input
//! besides the desired state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;
use crate::model::names;
use crate::model::{NetworkId, TaskId};

/// A namespace the data plane works in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NsRef {
    /// The daemon's own namespace (the "host"; the underlay).
    Host,
    /// A network's namespace, pinned at `<exec_root>/netns/net-<id>`.
    Network(NetworkId),
    /// A task's namespace, pinned at `<exec_root>/netns/task-<id>`.
    Task(TaskId),
}

impl fmt::Display for NsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NsRef::Host => f.write_str("host"),
            NsRef::Network(n) => write!(f, "{}", names::network_ns(n)),
            NsRef::Task(t) => write!(f, "{}", names::task_ns(t)),
        }
    }
}

/// The kind of an observed link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObservedKind {
    /// A bridge.
    Bridge,
    /// One end of a veth pair.
    Veth,
    /// A VXLAN device.
    Vxlan,
    /// Anything else (loopback, dummy, tun …), by kernel kind name.
    Other(String),
}

/// VXLAN properties of an observed link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedVxlan {
    /// VNI.
    pub vni: Option<u32>,
    /// UDP port.
    pub port: Option<u16>,
    /// Local VTEP.
    pub local: Option<IpAddr>,
    /// Learning on?
    pub learning: Option<bool>,
    /// ARP/NDP proxy on?
    pub proxy: Option<bool>,
}

/// A link as it exists in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedLink {
    /// Interface index in its namespace.
    pub index: u32,
    /// Kind.
    pub kind: ObservedKind,
    /// MTU.
    pub mtu: Option<u32>,
    /// Hardware address.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// Name of the bridge it is enslaved to (same namespace).
    pub master: Option<String>,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// VXLAN details.
    pub vxlan: Option<ObservedVxlan>,
    /// Addresses (IPv6 link-local ones included as the kernel reports them;
    /// the planner ignores those).
    pub addrs: BTreeSet<IpNetwork>,
}

/// A static FDB entry with a remote VTEP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFdb {
    /// Remote VTEP.
    pub remote: IpAddr,
    /// Permanent (static)?
    pub permanent: bool,
}

/// A neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNeigh {
    /// Link-layer address, if resolved.
    pub mac: Option<MacAddr>,
    /// Permanent (static)?
    pub permanent: bool,
}

/// A default route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedRoute {
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output device name.
    pub dev: Option<String>,
}

/// What one namespace holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNs {
    /// Links by name (for the host: only `weft`-prefixed ones).
    pub links: BTreeMap<String, ObservedLink>,
    /// Per VXLAN link: its FDB entries with a remote, by MAC.
    pub fdb: BTreeMap<String, BTreeMap<MacAddr, ObservedFdb>>,
    /// Per VXLAN link: its neighbour entries, by IP.
    pub neighs: BTreeMap<String, BTreeMap<IpAddr, ObservedNeigh>>,
    /// Default routes of the main table, by destination (`0.0.0.0/0`, `::/0`).
    pub default_routes: BTreeMap<IpNetwork, ObservedRoute>,
    /// Task namespaces: the rule comments of the service-VIP table
    /// ([`names::NFT_LB_TABLE`]); `None` when it does not exist.
    #[serde(default)]
    pub lb: Option<BTreeSet<String>>,
}

/// A route of the daemon's namespace (for the gateway collision check).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    /// Destination.
    pub dest: IpNetwork,
    /// Output device name.
    pub dev: Option<String>,
}

/// Everything the data plane has in the kernel right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The daemon's namespace (its `weft`-prefixed links).
    pub host: ObservedNs,
    /// Main-table routes of the daemon's namespace.
    pub host_routes: Vec<HostRoute>,
    /// `net.ipv4.ip_forward` of the daemon's namespace.
    pub ipv4_forwarding: bool,
    /// `net.ipv6.conf.all.forwarding` of the daemon's namespace.
    #[serde(default)]
    pub ipv6_forwarding: bool,
    /// weft's addressed links of the daemon's namespace
    /// ([`names::GATEWAY_BRIDGE`], [`names::INGRESS_IF`]) that ignore
    /// router advertisements (`accept_ra` 0, or no IPv6 at all): a task
    /// must never be able to give the host a route.
    #[serde(default)]
    pub ra_refused: BTreeSet<String>,
    /// Rule comments of the `weft` nftables tables; `None` when neither
    /// table exists.
    pub nat: Option<BTreeSet<String>>,
    /// Pinned network namespaces.
    pub networks: BTreeMap<NetworkId, ObservedNs>,
    /// Pinned task namespaces.
    pub tasks: BTreeMap<TaskId, ObservedNs>,
    /// Tasks whose embedded DNS resolver is serving inside their current
    /// namespace.
    #[serde(default)]
    pub dns: BTreeSet<TaskId>,
    /// The running WireGuard device, if any (its link is in
    /// [`host`](Observed::host) as [`names::WG_DEVICE`]).
    #[serde(default)]
    pub wg: Option<ObservedWg>,
    /// The public key of the private key file the desired state names
    /// (read by the executor before planning); `None` if unreadable or no
    /// device is wanted. A device holding another key is re-keyed.
    #[serde(default)]
    pub wg_key: Option<String>,
    /// The underlay-hygiene table ([`names::NFT_GUARD_TABLE`]); `None` when
    /// it does not exist.
    #[serde(default)]
    pub guard: Option<ObservedGuard>,
    /// Rule comments of the published-ports table
    /// ([`names::NFT_PORTS_TABLE`]); `None` when it does not exist.
    #[serde(default)]
    pub ports: Option<BTreeSet<String>>,
    /// Whether the operator's chain [`names::USER_CHAIN`] exists in
    /// [`names::NFT_USER_TABLE`] (whatever it holds: it is not ours).
    #[serde(default)]
    pub user_chain: bool,
}

/// The running WireGuard device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedWg {
    /// Its public key (base64), once a private key is set.
    pub public_key: Option<String>,
    /// Its UDP port.
    pub listen_port: u16,
    /// Its peers by public key (base64).
    pub peers: BTreeMap<String, ObservedWgPeer>,
}

/// A peer of the running WireGuard device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedWgPeer {
    /// Its endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Its allowed IPs.
    pub allowed_ips: BTreeSet<IpNetwork>,
    /// Persistent keepalive, seconds.
    pub keepalive: Option<u16>,
}

/// The underlay-hygiene nftables table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedGuard {
    /// Its rule comments (they name the VXLAN port; see [`guard_comments`]).
    pub comments: BTreeSet<String>,
    /// The member addresses in its sets (both families).
    pub members: BTreeSet<IpAddr>,
}

impl Observed {
    /// The namespace `ns`, if it exists (the host always does).
    pub fn ns(&self, ns: &NsRef) -> Option<&ObservedNs> {
        match ns {
            NsRef::Host => Some(&self.host),
            NsRef::Network(n) => self.networks.get(n),
            NsRef::Task(t) => self.tasks.get(t),
        }
    }

    /// Mutable access to the namespace `ns`, if it exists.
    pub fn ns_mut(&mut self, ns: &NsRef) -> Option<&mut ObservedNs> {
        match ns {
            NsRef::Host => Some(&mut self.host),
            NsRef::Network(n) => self.networks.get_mut(n),
            NsRef::Task(t) => self.tasks.get_mut(t),
        }
    }

    pub(super) fn link(&self, ns: &NsRef, name: &str) -> Option<&ObservedLink> {
        self.ns(ns)?.links.get(name)
    }
}
