//! The kernel operations a plan is made of.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::{NsRef, PortsTable};
use crate::mac::MacAddr;
#[allow(unused_imports)]
use crate::model::names;
use crate::model::{NetworkId, TaskId};

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
    /// Create a VXLAN device in the network's namespace whose UDP socket is
    /// in the daemon's namespace, the underlay (learning off, proxy on).
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
    /// Turn on IPv6 forwarding in the daemon's namespace (IPv6 egress and
    /// published ports to IPv6 backends). First, every other interface
    /// there that accepts router advertisements (`accept_ra` 1) is set to
    /// keep accepting them with forwarding on (2), so the host keeps its
    /// SLAAC addresses and default route (Docker's moby#43466). Never
    /// turned off again.
    EnableIpv6Forwarding,
    /// Make the daemon-namespace link `link` (weft's own, addressed) ignore
    /// router advertisements: one sent by a task must not give the host a
    /// route (CVE-2020-13401 in Docker).
    RefuseRa {
        /// The link.
        link: String,
    },
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
    /// (Re)write the `weft` nftables tables: masquerade for `subnet` (and
    /// `subnet6`) leaving through anything but `bridge`, and no forwarding
    /// between the bridge's ports (tasks of different networks must not
    /// meet there).
    ApplyNat {
        /// The gateway subnet.
        subnet: IpNetwork,
        /// The gateway bridge's IPv6 subnet, if it has one (NAT66).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subnet6: Option<IpNetwork>,
        /// The gateway bridge.
        bridge: String,
    },
}
