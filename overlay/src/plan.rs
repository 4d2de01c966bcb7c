//! The pure planner: what exists ([`Observed`]) + what should exist
//! ([`DesiredNode`]) -> the ordered kernel operations ([`Op`]) that make the
//! first into the second. No IO here; the Linux executor
//! ([`crate::linux::dataplane`]) reads the kernel into an `Observed` and runs
//! the ops, the fake ([`crate::fake`]) simulates them.
//!
//! Kernel layout (DESIGN §3), names from [`crate::model::names`]:
//!
//! ```text
//!  daemon ns:  weft_gwbridge (gw ip) ── weftgw<h(t)> ─veth─┐        nft: inet weft (masquerade)
//!              weft_ingress (ingress ip, mac) ─veth─┐     │             bridge weft (port isolation)
//!                                                   │     │             inet weft_ports (published ports)
//!                                                   │     │             inet weft_user (operator's, never flushed)
//!  <exec>/netns/net-<n>:  br0 (net gateway ip)      │     │
//!                          ├─ weft-vx<vni> (learning off, proxy on; FDB + neigh per remote)
//!                          ├─ vt-ingress ───────────┘ (ingress network only)
//!                          └─ vt<h(t)> ─veth─┐            │
//!  <exec>/netns/task-<t>:  lo, eth<i> ───────┘ (ip, mac)  gw0 (ip, mac), default via gw bridge
//! ```
//!
//! Op order: deletes first (stale or mis-shaped links, removed tasks, then
//! removed networks, stale FDB/neighbour entries, addresses and routes, the
//! NAT tables), then creates (namespaces, bridges and VXLAN devices, veth
//! pairs), then link properties (MTU, MAC, master, addresses, up), then
//! routes, FDB/neighbour entries and NAT. Links that cross namespaces are
//! deleted explicitly before their namespace goes, so the next observation
//! never sees the kernel's asynchronous namespace cleanup half done.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;
use crate::model::names::{
    self, GATEWAY_BRIDGE, INGRESS_IF, LOOPBACK, NETWORK_BRIDGE, TASK_GW_IF, WG_DEVICE,
};
use crate::model::{DesiredNode, NetworkId, Proto, TaskId};

// ------------------------------------------------------------------ observed

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

    fn link(&self, ns: &NsRef, name: &str) -> Option<&ObservedLink> {
        self.ns(ns)?.links.get(name)
    }
}

// ----------------------------------------------------------------------- ops

/// One kernel operation. Each is idempotent on its own; the planner only
/// emits what is needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Delete a link (both ends, for a veth); absent is fine.
    DeleteLink {
        /// Namespace.
        ns: NsRef,
        /// Link name.
        name: String,
    },
    /// Unpin a network or task namespace.
    DeleteNetns {
        /// The namespace.
        ns: NsRef,
    },
    /// Delete the static FDB entry for `mac` on a VXLAN device.
    DeleteFdb {
        /// Network.
        network: NetworkId,
        /// VXLAN device.
        link: String,
        /// MAC.
        mac: MacAddr,
    },
    /// Delete the neighbour entry for `ip` on a VXLAN device.
    DeleteNeigh {
        /// Network.
        network: NetworkId,
        /// VXLAN device.
        link: String,
        /// IP.
        ip: IpAddr,
    },
    /// Remove an address from a link.
    DeleteAddress {
        /// Namespace.
        ns: NsRef,
        /// Link.
        link: String,
        /// Address.
        addr: IpNetwork,
    },
    /// Delete a route of the main table.
    DeleteRoute {
        /// Namespace.
        ns: NsRef,
        /// Destination.
        dest: IpNetwork,
    },
    /// Delete the `weft` nftables tables.
    DeleteNat,
    /// Create and pin a network or task namespace.
    CreateNetns {
        /// The namespace.
        ns: NsRef,
    },
    /// Pin a foreign runtime's namespace where the task's would be.
    AdoptNetns {
        /// The task's namespace.
        ns: NsRef,
        /// The runtime's path for it.
        source: std::path::PathBuf,
    },
    /// Create a bridge.
    CreateBridge {
        /// Namespace.
        ns: NsRef,
        /// Name.
        name: String,
        /// MTU.
        mtu: u32,
    },
    /// Create a VXLAN device in the daemon's namespace (learning off, proxy
    /// on) and move it into the network's namespace.
    CreateVxlan {
        /// Network.
        network: NetworkId,
        /// Device name.
        name: String,
        /// VNI.
        vni: u32,
        /// UDP port.
        port: u16,
        /// Local VTEP.
        local: IpAddr,
        /// MTU.
        mtu: u32,
    },
    /// Create a veth pair: `name` in `ns`, `peer_name` in `peer_ns`.
    CreateVeth {
        /// Namespace of the creating end.
        ns: NsRef,
        /// Its name.
        name: String,
        /// Its MAC, if fixed.
        mac: Option<MacAddr>,
        /// Namespace of the peer.
        peer_ns: NsRef,
        /// The peer's name.
        peer_name: String,
        /// The peer's MAC, if fixed.
        peer_mac: Option<MacAddr>,
        /// MTU of both ends.
        mtu: u32,
    },
    /// Set a link's MTU.
    SetMtu {
        /// Namespace.
        ns: NsRef,
        /// Link.
        link: String,
        /// MTU.
        mtu: u32,
    },
    /// Set a link's MAC.
    SetMac {
        /// Namespace.
        ns: NsRef,
        /// Link.
        link: String,
        /// MAC.
        mac: MacAddr,
    },
    /// Enslave a link to a bridge.
    SetMaster {
        /// Namespace.
        ns: NsRef,
        /// Link.
        link: String,
        /// Bridge.
        master: String,
    },
    /// Add an address to a link.
    AddAddress {
        /// Namespace.
        ns: NsRef,
        /// Link.
        link: String,
        /// Address.
        addr: IpNetwork,
    },
    /// Set a link up.
    SetUp {
        /// Namespace.
        ns: NsRef,
        /// Link.
        link: String,
    },
    /// Add or replace the default route via `gateway` out of `dev`.
    ReplaceDefaultRoute {
        /// Namespace.
        ns: NsRef,
        /// Next hop.
        gateway: IpAddr,
        /// Device.
        dev: String,
    },
    /// Add or replace the static FDB entry `mac -> vtep`.
    ReplaceFdb {
        /// Network.
        network: NetworkId,
        /// VXLAN device.
        link: String,
        /// MAC.
        mac: MacAddr,
        /// Remote VTEP.
        vtep: IpAddr,
    },
    /// Add or replace the permanent neighbour entry `ip -> mac`.
    ReplaceNeigh {
        /// Network.
        network: NetworkId,
        /// VXLAN device.
        link: String,
        /// IP.
        ip: IpAddr,
        /// MAC.
        mac: MacAddr,
    },
    /// Turn on IPv4 forwarding in the daemon's namespace (egress through
    /// the gateway bridge needs it; never turned off again, as Docker).
    EnableIpv4Forwarding,
    /// (Re)write a task's service-VIP table in one nft transaction: every
    /// VIP is DNATed to one of its backends per connection, a VIP without
    /// backends is rejected. Then conntrack entries of the task whose
    /// original destination is in `flush` and whose reply source is not a
    /// current backend of it are deleted, so no flow sticks to a backend
    /// that left.
    ApplyLb {
        /// The task.
        task: TaskId,
        /// VIP -> its backends (same family, sorted, unique).
        vips: BTreeMap<IpAddr, Vec<IpAddr>>,
        /// The VIPs whose stale conntrack entries go: the old and new ones.
        flush: BTreeSet<IpAddr>,
    },
    /// Delete a task's service-VIP table (it is on no network with a VIP
    /// any more) and every conntrack entry to the VIPs in `flush`.
    DeleteLb {
        /// The task.
        task: TaskId,
        /// The VIPs the table had.
        flush: BTreeSet<IpAddr>,
    },
    /// (Re)start the embedded DNS resolver at 127.0.0.11:53 inside a task's
    /// namespace (it stops by itself when the namespace is deleted).
    StartDns {
        /// The task.
        task: TaskId,
        /// Its address (port 53) in the task's namespace.
        addr: std::net::Ipv4Addr,
    },
    /// Start the node's WireGuard device: the TUN [`names::WG_DEVICE`] in the
    /// daemon's namespace with `mtu`, the private key read from
    /// `private_key_path` and UDP `listen_port`; no peers yet. A device
    /// still running is stopped first.
    CreateWg {
        /// UDP port.
        listen_port: u16,
        /// The 0600 private key file.
        private_key_path: PathBuf,
        /// MTU of the interface.
        mtu: u32,
    },
    /// Stop the WireGuard device and delete its interface.
    DeleteWg,
    /// Load the private key at `private_key_path` into the running device
    /// (key rotation; peers are kept and handshake again).
    SetWgKey {
        /// The 0600 private key file.
        private_key_path: PathBuf,
    },
    /// Remove a WireGuard peer.
    RemoveWgPeer {
        /// Its public key (base64).
        public_key: String,
    },
    /// Add a WireGuard peer (a changed peer is removed first: never updated
    /// in place).
    AddWgPeer {
        /// Its public key (base64).
        public_key: String,
        /// Its underlay endpoint.
        endpoint: SocketAddr,
        /// Its allowed IPs (its tunnel address).
        allowed_ips: Vec<IpNetwork>,
        /// Persistent keepalive, seconds.
        keepalive: Option<u16>,
    },
    /// (Re)write the underlay-hygiene table: VXLAN to `port` is dropped
    /// unless it comes from one of `members` or out of the WireGuard
    /// device. `rules`: create the table, sets and rules from scratch;
    /// otherwise only the sets' elements are replaced (counters survive).
    ApplyGuard {
        /// The VXLAN port.
        port: u16,
        /// The member nodes' underlay addresses.
        members: BTreeSet<IpAddr>,
        /// Whether the rules must be (re)written too.
        rules: bool,
    },
    /// Delete the underlay-hygiene table.
    DeleteGuard,
    /// (Re)write the published-ports table [`names::NFT_PORTS_TABLE`] in
    /// one nft transaction (the table is owned whole and re-created).
    ApplyPorts {
        /// What it must hold.
        table: PortsTable,
    },
    /// Delete the published-ports table (no ports and no ingress endpoint).
    DeletePorts,
    /// Create the operator's table [`names::NFT_USER_TABLE`] and its base
    /// chain [`names::USER_CHAIN`] with nft `add` (which never flushes or
    /// changes what exists). Nothing ever deletes them.
    EnsureUserChain,
    /// (Re)write the `weft` nftables tables: masquerade for `subnet` leaving
    /// through anything but `bridge`, and no forwarding between the
    /// bridge's ports (tasks of different networks must not meet there).
    ApplyNat {
        /// The gateway subnet.
        subnet: IpNetwork,
        /// The gateway bridge.
        bridge: String,
    },
}

/// The network-side end (in the ingress network's namespace, plugged into
/// its `br0`) of the veth whose daemon-side end is [`names::INGRESS_IF`].
/// Task ports are `vt` + 10 hex digits, so this cannot collide.
pub const INGRESS_PORT: &str = "vt-ingress";

/// Prefix of every rule comment in the published-ports table.
pub const PORTS_COMMENT_PREFIX: &str = "weft-ports:";

/// Longest owner text kept in a rule comment (nft limits comments to 128
/// bytes).
const OWNER_IN_COMMENT: usize = 64;

/// The published-ports table as the planner wants it: a pure rendering of
/// [`DesiredNode::ports`], the gateway subnet and the ingress endpoint,
/// turned into nftables rules by `crate::linux::ports`.
///
/// ```text
///  prerouting (nat, dstnat):  fib daddr type local  PROTO dport P  dnat ip to numgen random mod N map {…} : T
///  output     (nat, -100):    the same, for connections from the node itself (not to 127/8)
///  postrouting (nat, srcnat): ct status dnat oifname weft_ingress masquerade          (remote backends)
///                             ct status dnat ip saddr GW oifname weft_gwbridge masquerade (hairpin)
///  hairpin (filter, dstnat+10): iifname weft_gwbridge ip daddr GW ct status dnat meta mark set mark | HAIRPIN_MARK
///  forward   (filter, 0):     ct status dnat accept    (after the operator's weft-user at -10)
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsTable {
    /// One DNAT rule pair per published port that has a usable backend,
    /// sorted by (proto, port).
    pub rules: Vec<PortRule>,
    /// The gateway-bridge subnet (IPv4 only): connections DNATed back into
    /// it from inside it are masqueraded (hairpin), so replies return
    /// through this node's conntrack.
    pub hairpin: Option<IpNetwork>,
    /// Whether connections DNATed out of [`names::INGRESS_IF`] (to remote
    /// backends) are masqueraded to the node's ingress address.
    pub ingress: bool,
}

/// One published port in the table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRule {
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// Port on the node.
    pub port: u16,
    /// Port on the backend.
    pub target_port: u16,
    /// The backends one is picked from per connection (IPv4, sorted,
    /// unique, not empty).
    pub backends: Vec<IpAddr>,
    /// Whether they are remote (ingress network) rather than local
    /// (gateway bridge) backends.
    pub remote: bool,
    /// Who published it (for the comment).
    pub owner: String,
}

impl PortRule {
    /// The comment of this port's rule in `chain` (`pre` or `out`): proto,
    /// port, a digest of everything else, and the owner, so observing the
    /// comments tells whether the rule is what we want.
    pub fn comment(&self, chain: &str) -> String {
        let list: Vec<String> = self.backends.iter().map(IpAddr::to_string).collect();
        let digest = names::fnv1a(&format!(
            "{}|{}|{}|{}",
            self.target_port,
            self.remote,
            list.join(","),
            self.owner
        ));
        let mut owner = self.owner.clone();
        if owner.len() > OWNER_IN_COMMENT {
            let mut cut = OWNER_IN_COMMENT;
            while !owner.is_char_boundary(cut) {
                cut -= 1;
            }
            owner.truncate(cut);
        }
        format!(
            "{PORTS_COMMENT_PREFIX}{chain}:{}/{}:{digest:016x} {owner}",
            self.proto, self.port
        )
        .trim_end()
        .to_owned()
    }
}

impl PortsTable {
    /// The comment of the forward chain's `ct status dnat accept` rule.
    pub const FORWARD_COMMENT: &'static str = "weft-ports:forward";
    /// The comment of the masquerade towards the ingress network.
    pub const INGRESS_COMMENT: &'static str = "weft-ports:ingress";

    /// The comment of the counter rule that ends base chain `chain` (so a
    /// deleted, empty chain is noticed too).
    pub fn chain_comment(chain: &str) -> String {
        format!("{PORTS_COMMENT_PREFIX}chain:{chain}")
    }

    /// The comment of the hairpin masquerade for `subnet`.
    pub fn hairpin_comment(subnet: IpNetwork) -> String {
        format!("{PORTS_COMMENT_PREFIX}hairpin:{subnet}")
    }

    /// The comment of the rule marking hairpin packets for `subnet` (see
    /// [`HAIRPIN_MARK`]).
    pub fn hairpin_mark_comment(subnet: IpNetwork) -> String {
        format!("{PORTS_COMMENT_PREFIX}hairpin-mark:{subnet}")
    }

    /// Every rule comment the table carries; the observed set is compared
    /// with these to decide whether to rewrite it.
    pub fn comments(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = ["prerouting", "output", "postrouting"]
            .into_iter()
            .map(Self::chain_comment)
            .collect();
        out.insert(Self::FORWARD_COMMENT.to_owned());
        if self.ingress {
            out.insert(Self::INGRESS_COMMENT.to_owned());
        }
        if let Some(s) = self.hairpin {
            out.insert(Self::hairpin_comment(s));
            out.insert(Self::hairpin_mark_comment(s));
        }
        for r in &self.rules {
            out.insert(r.comment("pre"));
            out.insert(r.comment("out"));
        }
        out
    }
}

/// The published-ports table `desired` wants; `None` (no table) when it has
/// neither ports nor an ingress endpoint.
///
/// Per port, local backends win; remote ones are used only when there is
/// no local one and the node has an ingress endpoint (without one they are
/// unreachable and skipped). Only IPv4 is rendered: IPv6 backends are
/// skipped, and a port left without backends gets no rule (connections to
/// it reach the node's own stack, as for any unpublished port).
pub fn ports_table(desired: &DesiredNode) -> Option<PortsTable> {
    if desired.ports.is_empty() && desired.ingress.is_none() {
        return None;
    }
    let ingress = desired.ingress.as_ref().is_some_and(|i| i.ip.is_ipv4());
    let v4 = |list: &[IpAddr]| -> Vec<IpAddr> {
        let set: BTreeSet<IpAddr> = list.iter().copied().filter(IpAddr::is_ipv4).collect();
        set.into_iter().collect()
    };
    let mut rules: Vec<PortRule> = desired
        .ports
        .iter()
        .filter_map(|p| {
            let local = v4(&p.local);
            let (backends, remote) = if !local.is_empty() {
                (local, false)
            } else if ingress {
                (v4(&p.remote), true)
            } else {
                (Vec::new(), true)
            };
            (!backends.is_empty()).then(|| PortRule {
                proto: p.proto,
                port: p.port,
                target_port: p.target_port,
                backends,
                remote,
                owner: p.owner.clone(),
            })
        })
        .collect();
    rules.sort();
    Some(PortsTable {
        rules,
        hairpin: desired
            .gateway
            .as_ref()
            .map(|g| g.subnet)
            .filter(IpNetwork::is_ipv4),
        ingress,
    })
}

/// Whether `desired` wants the operator's chain [`names::USER_CHAIN`]:
/// whenever weft forwards anything in the daemon's namespace (a gateway
/// bridge, published ports or an ingress endpoint).
pub fn wants_user_chain(desired: &DesiredNode) -> bool {
    desired.gateway.is_some() || !desired.ports.is_empty() || desired.ingress.is_some()
}

/// The rule comments the `weft` nftables tables carry for `subnet`; the
/// observed set is compared with these to decide whether to rewrite them.
pub fn nat_comments(subnet: IpNetwork, bridge: &str) -> BTreeSet<String> {
    BTreeSet::from([
        format!("weft:masquerade:{subnet}"),
        format!("weft:isolate:{bridge}"),
        format!("weft:hairpin:{bridge}"),
    ])
}

/// The packet mark bit of hairpin traffic: a connection from the gateway
/// bridge DNATed (published port) to a backend on the same bridge. With
/// `br_netfilter` loaded (any Docker host) such packets are *bridged*
/// from one task port to another after the DNAT, where the port isolation
/// of the `bridge weft` table would drop them; this mark (set per packet
/// in `inet weft_ports`, read in `bridge weft`) exempts them. The kernel
/// clears marks when a packet crosses into another namespace, so tasks
/// never see it.
pub const HAIRPIN_MARK: u32 = 0x2000_0000;

/// The rule comments the underlay-hygiene table carries for VXLAN `port`;
/// the observed set is compared with these to decide whether to rewrite
/// its rules.
pub fn guard_comments(port: u16) -> BTreeSet<String> {
    BTreeSet::from([
        format!("weft-guard:tunnel:{port}"),
        format!("weft-guard:drop4:{port}"),
        format!("weft-guard:drop6:{port}"),
        format!("weft-guard:members:{port}"),
    ])
}

/// The WireGuard peers `desired` wants, by canonical public key.
pub fn wg_peers(desired: &DesiredNode) -> Result<BTreeMap<String, ObservedWgPeer>, PlanError> {
    let Some(wg) = &desired.wireguard else {
        return Ok(BTreeMap::new());
    };
    let keepalive = (wg.keepalive > 0).then_some(wg.keepalive);
    let mut out = BTreeMap::new();
    for (node, p) in &wg.peers {
        let bad = |reason| PlanError::InvalidWireguard {
            what: format!("peer {node}"),
            reason,
        };
        let key = crate::wg::keys::normalize_public_key(&p.public_key)
            .map_err(|_| bad("public key is not base64 of 32 bytes"))?;
        let host = IpNetwork::from(p.tunnel_ip);
        let peer = ObservedWgPeer {
            endpoint: Some(p.endpoint),
            allowed_ips: BTreeSet::from([host]),
            keepalive,
        };
        if out.insert(key, peer).is_some() {
            return Err(bad("public key shared with another peer"));
        }
    }
    Ok(out)
}

/// The service VIPs balanced inside `task`'s namespace: every VIP of a
/// service on one of its networks, with that service's backends of the
/// VIP's family (sorted and unique, so reordering them changes nothing).
pub fn task_vips(desired: &DesiredNode, task: &TaskId) -> BTreeMap<IpAddr, Vec<IpAddr>> {
    let mut out: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
    let Some(t) = desired.tasks.get(task) else {
        return BTreeMap::new();
    };
    for ep in &t.endpoints {
        let Some(net) = desired.networks.get(&ep.network) else {
            continue;
        };
        for svc in net.services.values() {
            let Some(vip) = svc.vip else { continue };
            out.entry(vip)
                .or_default()
                .extend(svc.backends.iter().filter(|b| b.is_ipv4() == vip.is_ipv4()));
        }
    }
    out.into_iter()
        .map(|(v, b)| (v, b.into_iter().collect()))
        .collect()
}

/// Prefix of the comment each VIP's rule carries in the service-VIP table.
pub const LB_COMMENT_PREFIX: &str = "weft-lb:";

/// The comment of `vip`'s rule: the VIP and a digest of its backends, so
/// observing the comments tells whether the table is what we want.
pub fn lb_comment(vip: IpAddr, backends: &[IpAddr]) -> String {
    if backends.is_empty() {
        return format!("{LB_COMMENT_PREFIX}{vip}:reject");
    }
    let list: Vec<String> = backends.iter().map(IpAddr::to_string).collect();
    format!(
        "{LB_COMMENT_PREFIX}{vip}:{:016x}",
        names::fnv1a(&list.join(","))
    )
}

/// The comments a service-VIP table for `vips` carries.
pub fn lb_comments(vips: &BTreeMap<IpAddr, Vec<IpAddr>>) -> BTreeSet<String> {
    vips.iter().map(|(v, b)| lb_comment(*v, b)).collect()
}

/// The VIP named by a comment of the service-VIP table.
pub fn lb_comment_vip(comment: &str) -> Option<IpAddr> {
    let rest = comment.strip_prefix(LB_COMMENT_PREFIX)?;
    let (vip, _) = rest.rsplit_once(':')?;
    vip.parse().ok()
}

// -------------------------------------------------------------------- errors

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

// ------------------------------------------------------------------ validate

fn check_id(what: &'static str, id: &str) -> Result<(), PlanError> {
    let bad = |reason| {
        Err(PlanError::InvalidId {
            what,
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 200 {
        return bad("must be 1 to 200 characters");
    }
    if id.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

fn check_ifname(task: &TaskId, ifname: &str) -> Result<(), PlanError> {
    let bad = |reason| {
        Err(PlanError::InvalidIfname {
            task: task.clone(),
            ifname: ifname.to_owned(),
            reason,
        })
    };
    if ifname.is_empty() || ifname.len() > 15 {
        return bad("must be 1 to 15 bytes");
    }
    if ifname == "." || ifname == ".." {
        return bad("reserved");
    }
    if ifname
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return bad("contains '/', ':', NUL or whitespace");
    }
    if ifname == LOOPBACK || ifname == TASK_GW_IF {
        return bad("reserved for lo / the gateway attachment");
    }
    Ok(())
}

fn in_subnet(
    what: impl FnOnce() -> String,
    addr: IpAddr,
    subnet: IpNetwork,
) -> Result<(), PlanError> {
    if subnet.contains(addr) {
        Ok(())
    } else {
        Err(PlanError::AddressOutsideSubnet {
            what: what(),
            addr,
            subnet,
        })
    }
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// The first route of `routes` that overlaps `subnet`, ignoring default
/// routes and routes through devices `own` claims (the subnet's own bridge,
/// or weft's devices).
pub fn colliding_route(
    subnet: IpNetwork,
    routes: &[HostRoute],
    own: impl Fn(&str) -> bool,
) -> Option<&HostRoute> {
    routes.iter().find(|r| {
        r.dest.prefix() != 0 && !r.dev.as_deref().is_some_and(&own) && overlaps(r.dest, subnet)
    })
}

/// Checks `desired` on its own and against the daemon's routes.
pub fn validate(observed: &Observed, desired: &DesiredNode) -> Result<(), PlanError> {
    let mut vnis: BTreeMap<u32, &NetworkId> = BTreeMap::new();
    for (id, net) in &desired.networks {
        check_id("network", id.as_str())?;
        in_subnet(
            || format!("gateway of network {id}"),
            net.gateway,
            net.subnet,
        )?;
        if net.local {
            if !net.remote.is_empty() {
                return Err(PlanError::LocalWithRemotes {
                    network: id.clone(),
                });
            }
            continue;
        }
        if net.vni == 0 || net.vni > 0x00ff_ffff {
            return Err(PlanError::VniOutOfRange {
                network: id.clone(),
                vni: net.vni,
            });
        }
        if let Some(first) = vnis.insert(net.vni, id) {
            return Err(PlanError::DuplicateVni {
                vni: net.vni,
                first: first.clone(),
                second: id.clone(),
            });
        }
    }
    if let Some(wg) = &desired.wireguard {
        let bad = |what: &str, reason| PlanError::InvalidWireguard {
            what: what.to_owned(),
            reason,
        };
        if wg.listen_port == 0 {
            return Err(bad("listen port", "must not be 0"));
        }
        if wg.mtu < 1280 {
            return Err(bad("mtu", "must be at least 1280"));
        }
        for n in &wg.networks {
            if !desired.networks.contains_key(n) {
                return Err(bad(
                    n.as_str(),
                    "encrypted network not in the node's networks",
                ));
            }
        }
        wg_peers(desired)?;
    }
    if let Some(gw) = &desired.gateway {
        in_subnet(|| "gateway bridge".to_owned(), gw.gateway, gw.subnet)?;
        if let Some(r) = colliding_route(gw.subnet, &observed.host_routes, |d| d == GATEWAY_BRIDGE)
        {
            return Err(PlanError::GatewaySubnetCollision {
                subnet: gw.subnet,
                route: r.dest,
                dev: r.dev.clone(),
            });
        }
    }
    if let Some(ing) = &desired.ingress {
        let bad = |reason| PlanError::InvalidIngress {
            network: ing.network.clone(),
            reason,
        };
        let Some(net) = desired.networks.get(&ing.network) else {
            return Err(bad("network not in the node's networks"));
        };
        if net.local {
            return Err(bad("a local bridge network cannot carry ingress traffic"));
        }
        if ing.ip.prefix() != net.subnet.prefix() {
            return Err(bad("prefix length differs from the network's"));
        }
        in_subnet(
            || format!("ingress endpoint on network {}", ing.network),
            ing.ip.ip(),
            net.subnet,
        )?;
    }
    let mut published: BTreeMap<(Proto, u16), &str> = BTreeMap::new();
    for p in &desired.ports {
        let bad = |reason| PlanError::InvalidPort {
            proto: p.proto,
            port: p.port,
            owner: p.owner.clone(),
            reason,
        };
        if p.port == 0 {
            return Err(bad("port 0"));
        }
        if p.target_port == 0 {
            return Err(bad("target port 0"));
        }
        if let Some(first) = published.insert((p.proto, p.port), &p.owner) {
            return Err(PlanError::DuplicatePort {
                proto: p.proto,
                port: p.port,
                first: first.to_owned(),
                second: p.owner.clone(),
            });
        }
    }
    for (tid, task) in &desired.tasks {
        check_id("task", tid.as_str())?;
        let mut ifnames = BTreeSet::new();
        let mut nets = BTreeSet::new();
        for ep in &task.endpoints {
            check_ifname(tid, &ep.ifname)?;
            if !ifnames.insert(ep.ifname.as_str()) {
                return Err(PlanError::InvalidIfname {
                    task: tid.clone(),
                    ifname: ep.ifname.clone(),
                    reason: "used twice",
                });
            }
            let Some(net) = desired.networks.get(&ep.network) else {
                return Err(PlanError::UnknownNetwork {
                    task: tid.clone(),
                    network: ep.network.clone(),
                });
            };
            if !nets.insert(&ep.network) {
                return Err(PlanError::DuplicateAttachment {
                    task: tid.clone(),
                    network: ep.network.clone(),
                });
            }
            in_subnet(
                || format!("task {tid} on network {}", ep.network),
                ep.ip.ip(),
                net.subnet,
            )?;
        }
        if let Some(att) = &task.gateway {
            let Some(gw) = &desired.gateway else {
                return Err(PlanError::NoGatewayBridge { task: tid.clone() });
            };
            in_subnet(
                || format!("gateway attachment of task {tid}"),
                att.ip.ip(),
                gw.subnet,
            )?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------- want

#[derive(Clone, Debug, PartialEq, Eq)]
enum WantKind {
    Loopback,
    Bridge,
    Vxlan {
        vni: u32,
        port: u16,
        local: IpAddr,
    },
    Veth,
    /// The WireGuard TUN; created by [`Op::CreateWg`], never generically.
    Tun,
}

#[derive(Clone, Debug)]
struct WantLink {
    kind: WantKind,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
    master: Option<&'static str>,
    addrs: BTreeSet<IpNetwork>,
}

impl WantLink {
    fn new(kind: WantKind, mtu: u32) -> WantLink {
        WantLink {
            kind,
            mtu: Some(mtu),
            mac: None,
            master: None,
            addrs: BTreeSet::new(),
        }
    }

    fn loopback() -> WantLink {
        WantLink {
            kind: WantKind::Loopback,
            mtu: None,
            mac: None,
            master: None,
            addrs: BTreeSet::new(),
        }
    }
}

/// The VXLAN device of a network, MAC -> VTEP and IP -> MAC.
type Remotes = (String, BTreeMap<MacAddr, IpAddr>, BTreeMap<IpAddr, MacAddr>);

#[derive(Default)]
struct WantNs {
    links: BTreeMap<String, WantLink>,
    remotes: Option<Remotes>,
    default_route: Option<(IpAddr, String)>,
}

/// A veth pair; `a` creates it (network or host side), `b` is the task side
/// (or, for the ingress endpoint, the daemon side).
struct Pair {
    a: (NsRef, String, Option<MacAddr>),
    b: (NsRef, String, Option<MacAddr>),
    mtu: u32,
    /// `b` is handed to a runtime that moves it: once made, only `a` is
    /// looked at ([`TaskNet::handover`]).
    handed: bool,
}

struct Want {
    ns: BTreeMap<NsRef, WantNs>,
    pairs: Vec<Pair>,
}

fn want(desired: &DesiredNode) -> Want {
    let mut ns: BTreeMap<NsRef, WantNs> = BTreeMap::new();
    let mut pairs = Vec::new();
    let host = ns.entry(NsRef::Host).or_default();
    if let Some(gw) = &desired.gateway {
        let mut br = WantLink::new(WantKind::Bridge, gw.mtu);
        br.addrs.insert(gw.bridge_address());
        host.links.insert(GATEWAY_BRIDGE.to_owned(), br);
    }
    if let Some(wg) = &desired.wireguard {
        let mut tun = WantLink::new(WantKind::Tun, wg.mtu);
        tun.addrs.insert(wg.tunnel_addr);
        host.links.insert(WG_DEVICE.to_owned(), tun);
    }
    for (id, net) in &desired.networks {
        let w = ns.entry(NsRef::Network(id.clone())).or_default();
        w.links.insert(LOOPBACK.to_owned(), WantLink::loopback());
        let mut br = WantLink::new(WantKind::Bridge, net.mtu);
        br.addrs.insert(net.bridge_address());
        w.links.insert(NETWORK_BRIDGE.to_owned(), br);
        if net.local {
            continue;
        }
        let vx_name = names::vxlan(net.vni);
        let mut vx = WantLink::new(
            WantKind::Vxlan {
                vni: net.vni,
                port: desired.vxlan_port,
                local: desired.local_vtep(id),
            },
            net.mtu,
        );
        vx.master = Some(NETWORK_BRIDGE);
        w.links.insert(vx_name.clone(), vx);
        let fdb = net.remote.values().map(|r| (r.mac, r.vtep)).collect();
        let neigh = net.remote.values().map(|r| (r.ip, r.mac)).collect();
        w.remotes = Some((vx_name, fdb, neigh));
    }
    if let Some(ing) = &desired.ingress {
        let net = &desired.networks[&ing.network];
        let nref = NsRef::Network(ing.network.clone());
        let mut p = WantLink::new(WantKind::Veth, net.mtu);
        p.master = Some(NETWORK_BRIDGE);
        ns.entry(nref.clone())
            .or_default()
            .links
            .insert(INGRESS_PORT.to_owned(), p);
        let mut e = WantLink::new(WantKind::Veth, net.mtu);
        e.mac = Some(ing.mac);
        e.addrs.insert(ing.ip);
        ns.entry(NsRef::Host)
            .or_default()
            .links
            .insert(INGRESS_IF.to_owned(), e);
        pairs.push(Pair {
            a: (nref, INGRESS_PORT.to_owned(), None),
            b: (NsRef::Host, INGRESS_IF.to_owned(), Some(ing.mac)),
            mtu: net.mtu,
            handed: false,
        });
    }
    for (tid, task) in &desired.tasks {
        if task.handover && task.netns.is_none() {
            handover(desired, tid, task, &mut ns, &mut pairs);
            continue;
        }
        let tref = NsRef::Task(tid.clone());
        ns.entry(tref.clone())
            .or_default()
            .links
            .insert(LOOPBACK.to_owned(), WantLink::loopback());
        for ep in &task.endpoints {
            let (net, nref, port) = want_port(desired, tid, ep, &mut ns);
            let mut e = WantLink::new(WantKind::Veth, net.mtu);
            e.mac = Some(ep.mac);
            e.addrs.insert(ep.ip);
            ns.entry(tref.clone())
                .or_default()
                .links
                .insert(ep.ifname.clone(), e);
            pairs.push(Pair {
                a: (nref, port, None),
                b: (tref.clone(), ep.ifname.clone(), Some(ep.mac)),
                mtu: net.mtu,
                handed: task.handover,
            });
        }
        if let (Some(att), Some(gw)) = (&task.gateway, &desired.gateway) {
            let port = names::gw_port(tid);
            let mut p = WantLink::new(WantKind::Veth, gw.mtu);
            p.master = Some(GATEWAY_BRIDGE);
            ns.entry(NsRef::Host)
                .or_default()
                .links
                .insert(port.clone(), p);
            let mut e = WantLink::new(WantKind::Veth, gw.mtu);
            e.mac = Some(att.mac);
            e.addrs.insert(att.ip);
            let t = ns.entry(tref.clone()).or_default();
            t.links.insert(TASK_GW_IF.to_owned(), e);
            t.default_route = Some((gw.gateway, TASK_GW_IF.to_owned()));
            pairs.push(Pair {
                a: (NsRef::Host, port, None),
                b: (tref.clone(), TASK_GW_IF.to_owned(), Some(att.mac)),
                mtu: gw.mtu,
                handed: false,
            });
        }
    }
    Want { ns, pairs }
}

/// The network side of task `tid`'s endpoint `ep`: its port on the
/// network's bridge. Returns the network, its namespace and the port.
fn want_port<'a>(
    desired: &'a DesiredNode,
    tid: &TaskId,
    ep: &crate::model::LocalEndpoint,
    ns: &mut BTreeMap<NsRef, WantNs>,
) -> (&'a crate::model::OverlayNet, NsRef, String) {
    let net = &desired.networks[&ep.network];
    let nref = NsRef::Network(ep.network.clone());
    let port = names::port(tid);
    let mut p = WantLink::new(WantKind::Veth, net.mtu);
    p.master = Some(NETWORK_BRIDGE);
    ns.entry(nref.clone())
        .or_default()
        .links
        .insert(port.clone(), p);
    (net, nref, port)
}

/// A task whose endpoint is being handed to its runtime: the network side
/// (port on `br0`) is wanted, and the pair is made with the inside end in
/// the daemon's namespace under [`names::handover`]; nothing inside.
fn handover(
    desired: &DesiredNode,
    tid: &TaskId,
    task: &crate::model::TaskNet,
    ns: &mut BTreeMap<NsRef, WantNs>,
    pairs: &mut Vec<Pair>,
) {
    let Some(ep) = task.endpoints.first() else {
        return;
    };
    let (net, nref, port) = want_port(desired, tid, ep, ns);
    pairs.push(Pair {
        a: (nref, port, None),
        b: (NsRef::Host, names::handover(tid), Some(ep.mac)),
        mtu: net.mtu,
        handed: true,
    });
}

/// The runtime's path of a foreign task namespace; `None` for weft's own.
fn foreign_source<'a>(desired: &'a DesiredNode, ns: &NsRef) -> Option<&'a std::path::Path> {
    match ns {
        NsRef::Task(t) => desired.tasks.get(t)?.netns.as_deref(),
        _ => None,
    }
}

/// Whether an unwanted link in `ns` is ours to delete.
fn owned(ns: &NsRef, name: &str, link: &ObservedLink) -> bool {
    match ns {
        NsRef::Host => {
            name == GATEWAY_BRIDGE
                || name == INGRESS_IF
                || name.starts_with(names::GW_PORT_PREFIX)
                || name.starts_with(names::VXLAN_PREFIX)
        }
        // The whole namespace is ours.
        NsRef::Network(_) => name != LOOPBACK,
        // The task's process may make links of its own; only veths are ours.
        NsRef::Task(_) => link.kind == ObservedKind::Veth,
    }
}

/// Whether an existing link has the wanted kind and shape.
fn shape_ok(want: &WantKind, got: &ObservedLink) -> bool {
    match want {
        WantKind::Loopback => true,
        WantKind::Bridge => got.kind == ObservedKind::Bridge,
        WantKind::Veth => got.kind == ObservedKind::Veth,
        WantKind::Tun => got.kind == ObservedKind::Other("tun".into()),
        WantKind::Vxlan { vni, port, local } => {
            got.kind == ObservedKind::Vxlan
                && got.vxlan.as_ref().is_some_and(|v| {
                    v.vni == Some(*vni)
                        && v.port == Some(*port)
                        && v.local == Some(*local)
                        && v.learning != Some(true)
                        && v.proxy == Some(true)
                })
        }
    }
}

fn is_link_local(a: &IpNetwork) -> bool {
    match a {
        IpNetwork::V6(n) => n.ip().is_unicast_link_local(),
        IpNetwork::V4(_) => false,
    }
}

// ---------------------------------------------------------------------- plan

/// The ordered operations that turn `observed` into `desired`; an empty plan
/// means the kernel already matches. Fails (planning nothing) when the
/// desired state is invalid or the gateway subnet collides with a route.
pub fn plan(observed: &Observed, desired: &DesiredNode) -> Result<Vec<Op>, PlanError> {
    validate(observed, desired)?;
    let mut p = Pass {
        observed,
        desired,
        want: want(desired),
        fresh: BTreeSet::new(),
        ops: Vec::new(),
    };
    let (bad_pairs, gw_bridge_delete) = delete_links(&mut p);
    delete_removed(&mut p);
    delete_stale_entries(&mut p);
    let (wg_ok, ports) = delete_host_objects(&mut p, gw_bridge_delete);
    create_links(&mut p, wg_ok, ports.as_ref(), &bad_pairs);
    set_link_properties(&mut p);
    wireguard_peers(&mut p, wg_ok)?;
    routes_and_entries(&mut p);
    tables(&mut p, ports);
    services(&mut p);
    Ok(p.ops)
}

/// One planning pass: its inputs, the wanted shape, and what it decided.
struct Pass<'a> {
    observed: &'a Observed,
    desired: &'a DesiredNode,
    want: Want,
    /// Links that exist but are (or will be) gone by the create phase:
    /// those deleted here, and those of namespaces that do not exist yet.
    fresh: BTreeSet<(NsRef, String)>,
    ops: Vec<Op>,
}

/// Deletes, 1: unwanted or mis-shaped links in namespaces we keep.
/// Returns the wanted veth pairs to make again and the gateway bridge's
/// delete (it goes after its ports).
fn delete_links(p: &mut Pass) -> (BTreeSet<usize>, Option<Op>) {
    let (observed, desired) = (p.observed, p.desired);
    let want = &p.want;
    let (fresh, ops) = (&mut p.fresh, &mut p.ops);
    let mut bad_pairs = BTreeSet::new();
    for (i, p) in want.pairs.iter().enumerate() {
        let a = observed.link(&p.a.0, &p.a.1);
        let b = observed.link(&p.b.0, &p.b.1);
        let paired = match (a, b) {
            // Handed over: wherever the inside end is now, it is the
            // runtime's; the network side stands while it has a peer.
            (Some(a), _) if p.handed => a.kind == ObservedKind::Veth && a.peer_index.is_some(),
            (Some(a), Some(b)) => {
                a.kind == ObservedKind::Veth
                    && b.kind == ObservedKind::Veth
                    && a.peer_index == Some(b.index)
                    && b.peer_index == Some(a.index)
            }
            _ => false,
        };
        if !paired {
            bad_pairs.insert(i);
            fresh.insert((p.a.0.clone(), p.a.1.clone()));
            fresh.insert((p.b.0.clone(), p.b.1.clone()));
        }
    }
    let mut gw_bridge_delete = None;
    for (nref, w) in &want.ns {
        let Some(obs) = observed.ns(nref) else {
            for name in w.links.keys() {
                fresh.insert((nref.clone(), name.clone()));
            }
            continue;
        };
        for (name, link) in &obs.links {
            let delete = match w.links.get(name) {
                // In a foreign namespace, only the links named in the
                // desired state are ours; the peers of removed ones go
                // from the network's namespace and the gateway bridge.
                None => foreign_source(desired, nref).is_none() && owned(nref, name, link),
                Some(wl) => {
                    !shape_ok(&wl.kind, link) || fresh.contains(&(nref.clone(), name.clone()))
                }
            };
            if delete && link_kind_deletable(&w.links, name) {
                fresh.insert((nref.clone(), name.clone()));
                let op = Op::DeleteLink {
                    ns: nref.clone(),
                    name: name.clone(),
                };
                if *nref == NsRef::Host && name == GATEWAY_BRIDGE {
                    // After its ports are gone.
                    gw_bridge_delete = Some(op);
                } else {
                    ops.push(op);
                }
            }
        }
    }
    (bad_pairs, gw_bridge_delete)
}

/// Deletes, 2 and 3: removed tasks and networks.
fn delete_removed(p: &mut Pass) {
    let (observed, desired) = (p.observed, p.desired);
    let ops = &mut p.ops;
    // --- deletes, 2: removed tasks (their veth peers went above).
    for tid in observed.tasks.keys() {
        if !desired.tasks.contains_key(tid) {
            ops.push(Op::DeleteNetns {
                ns: NsRef::Task(tid.clone()),
            });
        }
    }
    // --- deletes, 3: removed networks: veths (peers in removed tasks) and
    // the VXLAN device (so its VNI is free at once), then the namespace.
    for (nid, obs) in &observed.networks {
        if desired.networks.contains_key(nid) {
            continue;
        }
        let nref = NsRef::Network(nid.clone());
        for (name, link) in &obs.links {
            if matches!(link.kind, ObservedKind::Veth | ObservedKind::Vxlan) {
                ops.push(Op::DeleteLink {
                    ns: nref.clone(),
                    name: name.clone(),
                });
            }
        }
        ops.push(Op::DeleteNetns { ns: nref });
    }
}

/// Deletes, 4: stale FDB/neighbour entries, addresses, routes.
fn delete_stale_entries(p: &mut Pass) {
    let observed = p.observed;
    let want = &p.want;
    let (fresh, ops) = (&p.fresh, &mut p.ops);
    for (nref, w) in &want.ns {
        let Some(obs) = observed.ns(nref) else {
            continue;
        };
        if let (NsRef::Network(nid), Some((vx, fdb, neigh))) = (nref, &w.remotes)
            && !fresh.contains(&(nref.clone(), vx.clone()))
        {
            for mac in obs.fdb.get(vx).into_iter().flat_map(|m| m.keys()) {
                if !fdb.contains_key(mac) {
                    ops.push(Op::DeleteFdb {
                        network: nid.clone(),
                        link: vx.clone(),
                        mac: *mac,
                    });
                }
            }
            for (ip, n) in obs.neighs.get(vx).into_iter().flatten() {
                if n.permanent && !neigh.contains_key(ip) {
                    ops.push(Op::DeleteNeigh {
                        network: nid.clone(),
                        link: vx.clone(),
                        ip: *ip,
                    });
                }
            }
        }
        for (name, wl) in &w.links {
            if wl.kind == WantKind::Loopback || fresh.contains(&(nref.clone(), name.clone())) {
                continue;
            }
            let Some(link) = obs.links.get(name) else {
                continue;
            };
            for a in &link.addrs {
                if !wl.addrs.contains(a) && !is_link_local(a) {
                    ops.push(Op::DeleteAddress {
                        ns: nref.clone(),
                        link: name.clone(),
                        addr: *a,
                    });
                }
            }
        }
        // A foreign namespace's routes are its runtime's unless weft
        // brings the default route (Docker's gateway bridge gives it one).
        let foreign_route = foreign_source(p.desired, nref).is_some() && w.default_route.is_none();
        if matches!(nref, NsRef::Task(_)) && !foreign_route {
            for dest in obs.default_routes.keys() {
                // A wanted route of the same family is replaced in place.
                let replaced = w
                    .default_route
                    .as_ref()
                    .is_some_and(|(gw, _)| gw.is_ipv4() == dest.is_ipv4());
                if !replaced {
                    ops.push(Op::DeleteRoute {
                        ns: nref.clone(),
                        dest: *dest,
                    });
                }
            }
        }
    }
}

/// Deletes, 5 and 6: NAT, the gateway bridge, the WireGuard device, the
/// guard and ports tables when unwanted. Returns whether the WireGuard
/// device is kept as it is, and the wanted ports table.
fn delete_host_objects(p: &mut Pass, gw_bridge_delete: Option<Op>) -> (bool, Option<PortsTable>) {
    let (observed, desired) = (p.observed, p.desired);
    let (fresh, ops) = (&mut p.fresh, &mut p.ops);
    // --- deletes, 5: the gateway bridge and NAT when the node has no gateway.
    if desired.gateway.is_none() && observed.nat.is_some() {
        ops.push(Op::DeleteNat);
    }
    ops.extend(gw_bridge_delete);
    // --- deletes, 6: the WireGuard device when unwanted or mis-shaped
    // (wrong port, its link gone or replaced), and the guard table.
    let wg_link = observed.link(&NsRef::Host, WG_DEVICE);
    let wg_ok = match (&desired.wireguard, &observed.wg) {
        (Some(cfg), Some(o)) => {
            o.listen_port == cfg.listen_port
                && wg_link.is_some()
                && !fresh.contains(&(NsRef::Host, WG_DEVICE.to_owned()))
        }
        _ => false,
    };
    // A `weft-wg0` TUN/TAP link without our device is the one an earlier
    // daemon left in the fd store: CreateWg adopts it if we want one, else
    // it goes (DeleteWg drops the store's copy too). A link of another
    // kind is not ours.
    let stray_wg = desired.wireguard.is_none()
        && wg_link.is_some_and(|l| l.kind == ObservedKind::Other("tun".into()));
    if !wg_ok && (observed.wg.is_some() || stray_wg) {
        ops.push(Op::DeleteWg);
    }
    if desired.wireguard.is_some() && !wg_ok {
        fresh.insert((NsRef::Host, WG_DEVICE.to_owned()));
    }
    if desired.vxlan_allowed_sources.is_none() && observed.guard.is_some() {
        ops.push(Op::DeleteGuard);
    }
    let ports = ports_table(desired);
    if ports.is_none() && observed.ports.is_some() {
        ops.push(Op::DeletePorts);
    }

    (wg_ok, ports)
}

/// Creates, 1 to 3: forwarding, namespaces, the WireGuard device, bridges,
/// VXLAN devices and veth pairs.
fn create_links(
    p: &mut Pass,
    wg_ok: bool,
    ports: Option<&PortsTable>,
    bad_pairs: &BTreeSet<usize>,
) {
    let (observed, desired) = (p.observed, p.desired);
    let want = &p.want;
    let (fresh, ops) = (&p.fresh, &mut p.ops);
    // --- creates, 1: forwarding, namespaces.
    // Egress through the gateway bridge and published ports (to local or
    // remote backends) are both forwarded.
    let forwards_v4 = desired.gateway.as_ref().is_some_and(|g| g.subnet.is_ipv4())
        || ports
            .as_ref()
            .is_some_and(|p| !p.rules.is_empty() || p.ingress);
    if forwards_v4 && !observed.ipv4_forwarding {
        ops.push(Op::EnableIpv4Forwarding);
    }
    for nref in want.ns.keys() {
        if *nref != NsRef::Host && observed.ns(nref).is_none() {
            ops.push(match foreign_source(desired, nref) {
                Some(source) => Op::AdoptNetns {
                    ns: nref.clone(),
                    source: source.to_owned(),
                },
                None => Op::CreateNetns { ns: nref.clone() },
            });
        }
    }
    let missing = |nref: &NsRef, name: &str| {
        fresh.contains(&(nref.clone(), name.to_owned())) || observed.link(nref, name).is_none()
    };
    // --- creates, 2: the WireGuard device (encrypted VXLAN devices use its
    // address), bridges, then VXLAN devices.
    if let Some(cfg) = &desired.wireguard
        && !wg_ok
    {
        ops.push(Op::CreateWg {
            listen_port: cfg.listen_port,
            private_key_path: cfg.private_key_path.clone(),
            mtu: cfg.mtu,
        });
    }
    for (nref, w) in &want.ns {
        for (name, wl) in &w.links {
            if wl.kind == WantKind::Bridge && missing(nref, name) {
                ops.push(Op::CreateBridge {
                    ns: nref.clone(),
                    name: name.clone(),
                    mtu: wl.mtu.unwrap_or(1500),
                });
            }
        }
    }
    for (nref, w) in &want.ns {
        let NsRef::Network(nid) = nref else { continue };
        for (name, wl) in &w.links {
            if let WantKind::Vxlan { vni, port, local } = wl.kind
                && missing(nref, name)
            {
                ops.push(Op::CreateVxlan {
                    network: nid.clone(),
                    name: name.clone(),
                    vni,
                    port,
                    local,
                    mtu: wl.mtu.unwrap_or(1500),
                });
            }
        }
    }
    // --- creates, 3: veth pairs.
    for (i, p) in want.pairs.iter().enumerate() {
        if bad_pairs.contains(&i) {
            ops.push(Op::CreateVeth {
                ns: p.a.0.clone(),
                name: p.a.1.clone(),
                mac: p.a.2,
                peer_ns: p.b.0.clone(),
                peer_name: p.b.1.clone(),
                peer_mac: p.b.2,
                mtu: p.mtu,
            });
        }
    }
}

/// Link properties: MTU, MAC, master, addresses, up.
fn set_link_properties(p: &mut Pass) {
    let observed = p.observed;
    let want = &p.want;
    let (fresh, ops) = (&p.fresh, &mut p.ops);
    for (nref, w) in &want.ns {
        for (name, wl) in &w.links {
            let obs = if fresh.contains(&(nref.clone(), name.clone())) {
                None
            } else {
                observed.link(nref, name)
            };
            let created = obs.is_none();
            let link = || name.clone();
            if let (Some(o), Some(m)) = (obs, wl.mtu)
                && o.mtu != Some(m)
            {
                ops.push(Op::SetMtu {
                    ns: nref.clone(),
                    link: link(),
                    mtu: m,
                });
            }
            if let (Some(o), Some(m)) = (obs, wl.mac)
                && o.mac != Some(m)
            {
                ops.push(Op::SetMac {
                    ns: nref.clone(),
                    link: link(),
                    mac: m,
                });
            }
            if let Some(master) = wl.master
                && obs.is_none_or(|o| o.master.as_deref() != Some(master))
            {
                ops.push(Op::SetMaster {
                    ns: nref.clone(),
                    link: link(),
                    master: master.to_owned(),
                });
            }
            for a in &wl.addrs {
                if obs.is_none_or(|o| !o.addrs.contains(a)) {
                    ops.push(Op::AddAddress {
                        ns: nref.clone(),
                        link: link(),
                        addr: *a,
                    });
                }
            }
            if created || obs.is_some_and(|o| !o.up) {
                ops.push(Op::SetUp {
                    ns: nref.clone(),
                    link: link(),
                });
            }
        }
    }
}

/// The WireGuard key and peers (the device is up by now).
fn wireguard_peers(p: &mut Pass, wg_ok: bool) -> Result<(), PlanError> {
    let (observed, desired) = (p.observed, p.desired);
    let ops = &mut p.ops;
    if let Some(cfg) = &desired.wireguard {
        let have = if wg_ok { observed.wg.as_ref() } else { None };
        if let (Some(o), Some(k)) = (have, &observed.wg_key)
            && o.public_key.as_ref() != Some(k)
        {
            ops.push(Op::SetWgKey {
                private_key_path: cfg.private_key_path.clone(),
            });
        }
        let want_peers = wg_peers(desired)?;
        let empty = BTreeMap::new();
        let have_peers = have.map_or(&empty, |o| &o.peers);
        for (key, p) in have_peers {
            if want_peers.get(key) != Some(p) {
                ops.push(Op::RemoveWgPeer {
                    public_key: key.clone(),
                });
            }
        }
        for (key, p) in &want_peers {
            if have_peers.get(key) != Some(p) {
                ops.push(Op::AddWgPeer {
                    public_key: key.clone(),
                    endpoint: p.endpoint.expect("wanted peers have an endpoint"),
                    allowed_ips: p.allowed_ips.iter().copied().collect(),
                    keepalive: p.keepalive,
                });
            }
        }
    }
    Ok(())
}

/// Default routes, FDB and neighbour entries.
fn routes_and_entries(p: &mut Pass) {
    let observed = p.observed;
    let want = &p.want;
    let (fresh, ops) = (&p.fresh, &mut p.ops);
    for (nref, w) in &want.ns {
        if let Some((gw, dev)) = &w.default_route {
            let dest = if gw.is_ipv4() {
                IpNetwork::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
            } else {
                IpNetwork::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
            }
            .expect("prefix 0 is valid");
            let ok = !fresh.contains(&(nref.clone(), dev.clone()))
                && observed
                    .ns(nref)
                    .and_then(|o| o.default_routes.get(&dest))
                    .is_some_and(|r| r.gateway == Some(*gw) && r.dev.as_ref() == Some(dev));
            if !ok {
                ops.push(Op::ReplaceDefaultRoute {
                    ns: nref.clone(),
                    gateway: *gw,
                    dev: dev.clone(),
                });
            }
        }
        if let (NsRef::Network(nid), Some((vx, fdb, neigh))) = (nref, &w.remotes) {
            let obs = if fresh.contains(&(nref.clone(), vx.clone())) {
                None
            } else {
                observed.ns(nref)
            };
            let obs_fdb = obs.and_then(|o| o.fdb.get(vx));
            for (mac, vtep) in fdb {
                let ok = obs_fdb
                    .and_then(|m| m.get(mac))
                    .is_some_and(|e| e.remote == *vtep && e.permanent);
                if !ok {
                    ops.push(Op::ReplaceFdb {
                        network: nid.clone(),
                        link: vx.clone(),
                        mac: *mac,
                        vtep: *vtep,
                    });
                }
            }
            let obs_neigh = obs.and_then(|o| o.neighs.get(vx));
            for (ip, mac) in neigh {
                let ok = obs_neigh
                    .and_then(|m| m.get(ip))
                    .is_some_and(|e| e.mac == Some(*mac) && e.permanent);
                if !ok {
                    ops.push(Op::ReplaceNeigh {
                        network: nid.clone(),
                        link: vx.clone(),
                        ip: *ip,
                        mac: *mac,
                    });
                }
            }
        }
    }
}

/// The operator's chain, NAT, published ports and the underlay guard.
fn tables(p: &mut Pass, ports: Option<PortsTable>) {
    let (observed, desired) = (p.observed, p.desired);
    let ops = &mut p.ops;
    if wants_user_chain(desired) && !observed.user_chain {
        ops.push(Op::EnsureUserChain);
    }
    if let Some(gw) = &desired.gateway
        && observed.nat.as_ref() != Some(&nat_comments(gw.subnet, GATEWAY_BRIDGE))
    {
        ops.push(Op::ApplyNat {
            subnet: gw.subnet,
            bridge: GATEWAY_BRIDGE.to_owned(),
        });
    }
    if let Some(table) = ports
        && observed.ports.as_ref() != Some(&table.comments())
    {
        ops.push(Op::ApplyPorts { table });
    }
    // --- underlay hygiene.
    if let Some(members) = &desired.vxlan_allowed_sources {
        let rules = observed
            .guard
            .as_ref()
            .is_none_or(|g| g.comments != guard_comments(desired.vxlan_port));
        if rules
            || observed
                .guard
                .as_ref()
                .is_some_and(|g| &g.members != members)
        {
            ops.push(Op::ApplyGuard {
                port: desired.vxlan_port,
                members: members.clone(),
                rules,
            });
        }
    }
}

/// Service VIPs and DNS in task namespaces (after lo is up).
fn services(p: &mut Pass) {
    let (observed, desired) = (p.observed, p.desired);
    let ops = &mut p.ops;
    for (tid, task) in &desired.tasks {
        if task.handover && task.netns.is_none() {
            continue;
        }
        let obs = observed.tasks.get(tid);
        let vips = task_vips(desired, tid);
        let had = obs.and_then(|o| o.lb.as_ref());
        let old: BTreeSet<IpAddr> = had
            .into_iter()
            .flatten()
            .filter_map(|c| lb_comment_vip(c))
            .collect();
        if !vips.is_empty() && had != Some(&lb_comments(&vips)) {
            let mut flush = old;
            flush.extend(vips.keys().copied());
            ops.push(Op::ApplyLb {
                task: tid.clone(),
                vips,
                flush,
            });
        } else if vips.is_empty() && had.is_some() {
            ops.push(Op::DeleteLb {
                task: tid.clone(),
                flush: old,
            });
        }
        if obs.is_none() || !observed.dns.contains(tid) {
            ops.push(Op::StartDns {
                task: tid.clone(),
                addr: task.resolver.unwrap_or(crate::dns::RESOLVER_ADDR),
            });
        }
    }
}

/// Loopback is never deleted, whatever its state.
fn link_kind_deletable(wanted: &BTreeMap<String, WantLink>, name: &str) -> bool {
    !(name == LOOPBACK
        || wanted
            .get(name)
            .is_some_and(|w| w.kind == WantKind::Loopback))
}

#[cfg(test)]
mod tests;
