//! The store projected onto one node: [`project`] is a pure function from
//! the state to the `NodeConfig` a node needs, and nothing more — only the
//! networks it has tasks on, its own tasks, and the remote endpoints on
//! those networks (tasks on nodes that are down are left out, so their
//! endpoints leave every peer's config).

mod network;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use ipnetwork::IpNetwork;
use weft_proto::v1 as pb;

pub use network::NetParts;

use crate::store::ipam::{mac_for, mac_text};
use crate::store::{DesiredTaskState, Network, NodeId, NodeState, PublishMode, State, Task};

/// VXLAN encapsulation overhead (outer Ethernet is not counted by the MTU).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay (its outer header is 40 bytes, not 20).
pub const VXLAN6_OVERHEAD: u32 = 70;

/// WireGuard encapsulation overhead over IPv4 (IP 20 + UDP 8 + WireGuard 32).
pub const WIREGUARD_OVERHEAD: u32 = 60;
/// The same over an IPv6 underlay (IP 40 + UDP 8 + WireGuard 32).
pub const WIREGUARD6_OVERHEAD: u32 = 80;

/// What encapsulation costs a node whose underlay address is
/// `data_path_addr`: VXLAN over its underlay, or (`encrypted`) VXLAN
/// between tunnel addresses (IPv4) inside WireGuard over its underlay.
pub(crate) fn encapsulation(data_path_addr: &str, encrypted: bool) -> u32 {
    let v6 = data_path_addr.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6());
    match (encrypted, v6) {
        (false, false) => VXLAN_OVERHEAD,
        (false, true) => VXLAN6_OVERHEAD,
        (true, false) => VXLAN_OVERHEAD + WIREGUARD_OVERHEAD,
        (true, true) => VXLAN_OVERHEAD + WIREGUARD6_OVERHEAD,
    }
}

/// Underlay MTU assumed for nodes that did not report one.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

fn live(state: &State, t: &Task) -> bool {
    t.desired == DesiredTaskState::Running && network::up(state, t.node)
}

/// Whether `viewer` should see `t` as live: its own tasks always are (it
/// runs them), whatever the store says of its own liveness. A node that
/// was marked down while its daemon restarted gets its config before the
/// heartbeat that marks it ready again; leaving its own tasks out of that
/// config made its resolver answer "no such name" for them for a moment.
fn live_for(state: &State, viewer: NodeId, t: &Task) -> bool {
    if t.node == viewer {
        t.desired == DesiredTaskState::Running
    } else {
        live(state, t)
    }
}

/// Nodes with a task on `net`.
fn members<'a>(state: &'a State, net: &'a Network) -> impl Iterator<Item = NodeId> + 'a {
    state
        .tasks
        .values()
        .filter(move |t| t.attachments.iter().any(|a| a.network == net.id))
        .map(|t| t.node)
}

/// The effective MTU of `net` and what limits it: the operator's value,
/// or the smallest underlay MTU among its member nodes minus VXLAN.
pub fn network_mtu(state: &State, net: &Network) -> (u32, String) {
    if let Some(m) = net.mtu {
        return (m, "explicit".into());
    }
    // A local bridge never leaves its node: no encapsulation.
    if let Some(id) = net.node {
        return match state.nodes.get(&id) {
            Some(n) if n.underlay_mtu != 0 => (n.underlay_mtu, n.hostname.clone()),
            _ => (DEFAULT_UNDERLAY_MTU, "default".into()),
        };
    }
    let limiting = members(state, net)
        .filter_map(|id| state.nodes.get(&id))
        .map(|n| {
            let mtu = if n.underlay_mtu == 0 {
                DEFAULT_UNDERLAY_MTU
            } else {
                n.underlay_mtu
            };
            let cost = encapsulation(&n.data_path_addr, net.encrypted);
            (mtu.saturating_sub(cost), n.hostname.clone())
        })
        .min();
    match limiting {
        Some((mtu, host)) => (mtu, host),
        None => (
            DEFAULT_UNDERLAY_MTU - encapsulation("", net.encrypted),
            "no members yet".into(),
        ),
    }
}

fn with_prefix(ip: IpAddr, subnet: &IpNetwork) -> String {
    format!("{ip}/{}", subnet.prefix())
}

/// The config of node `node` at `version`, or `None` if it is not a member.
pub fn project(state: &State, node: NodeId, version: u64) -> Option<pb::NodeConfig> {
    project_with(state, node, version, &shared(state))
}

/// The parts of a node's config that are the same for every node: the
/// dispatcher makes them once per store version ([`shared`]) rather than
/// once per node (they grow with the cluster: with N nodes, N sessions each
/// sorting N addresses on every change cost O(N²) per change).
#[derive(Debug, Default)]
pub struct Shared {
    /// Every node's data path address, sorted, without duplicates.
    pub vxlan_allowed_sources: Arc<Sources>,
    /// The managers' addresses and IDs, and the removed nodes' IDs, for
    /// every session message (a walk over every node each).
    pub manager_addrs: Vec<String>,
    /// See `manager_addrs`.
    pub manager_ids: Vec<String>,
    /// See `manager_addrs`.
    pub removed: Vec<String>,
    /// Each network's lists, made on first use from the state these
    /// parts were made from ([`NetParts`]); the map's lock is held only to
    /// find a network's slot, so networks are made side by side.
    networks: Mutex<HashMap<String, Slot<NetParts>>>,
    /// Each network's parts as last made before this state: parts made
    /// equal to them are them ([`Shared::network`]). One per network in
    /// the store (one left without members keeps its last parts until it
    /// is removed).
    earlier: HashMap<String, Arc<NetParts>>,
    /// What changed between two parts of a network, by the two parts'
    /// addresses: made once for every session going from the one to the
    /// other ([`Shared::change`]).
    changes: Mutex<HashMap<(usize, usize), Slot<Change>>>,
    /// Each node's tasks' IDs, in the store's order, made on first use:
    /// every session looks up its own on every store change, and a walk
    /// over every task each cost O(N × T) per change.
    tasks_by_node: OnceLock<HashMap<NodeId, Vec<String>>>,
}

/// A value made once, on first use, by whichever caller gets there first.
type Slot<T> = Arc<OnceLock<Arc<T>>>;

/// Two parts of one network and what changed between them
/// ([`NetParts::without_common`]); the parts are kept so that their
/// addresses, the key this is found by, stay theirs.
#[derive(Debug)]
struct Change {
    old: Arc<NetParts>,
    new: Arc<NetParts>,
    changed: Option<(NetParts, NetParts)>,
}

impl Change {
    /// The two parts to compare and diff: what changed when that is
    /// known, else the wholes.
    fn parts(&self) -> (&NetParts, &NetParts) {
        match &self.changed {
            Some((a, b)) => (a, b),
            None => (&self.old, &self.new),
        }
    }
}

impl Shared {
    /// `net`'s lists in `state`, which must be the state these parts
    /// were made from: made once, then shared by every node's projection.
    pub fn network(&self, state: &State, net: &Network) -> Arc<NetParts> {
        let slot = self
            .networks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(net.id.clone())
            .or_default()
            .clone();
        slot.get_or_init(|| {
            let parts = NetParts::new(state, net);
            match self.earlier.get(&net.id) {
                Some(earlier) if **earlier == parts => earlier.clone(),
                _ => Arc::new(parts),
            }
        })
        .clone()
    }

    /// What changed from `old` to `new`, parts of one network: made once,
    /// then shared by every session that goes from the one to the other.
    fn change(&self, old: &Arc<NetParts>, new: &Arc<NetParts>) -> Arc<Change> {
        let key = (Arc::as_ptr(old) as usize, Arc::as_ptr(new) as usize);
        let slot = self
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        slot.get_or_init(|| {
            Arc::new(Change {
                old: old.clone(),
                new: new.clone(),
                changed: NetParts::without_common(old, new),
            })
        })
        .clone()
    }

    /// The IDs of `node`'s tasks in `state`, which must be the state these
    /// parts were made from.
    fn tasks_on(&self, state: &State, node: NodeId) -> &[String] {
        let by_node = self.tasks_by_node.get_or_init(|| {
            let mut by_node: HashMap<NodeId, Vec<String>> = HashMap::new();
            for t in state.tasks.values() {
                by_node.entry(t.node).or_default().push(t.id.clone());
            }
            by_node
        });
        by_node.get(&node).map_or(&[], Vec::as_slice)
    }

    /// Each network's parts as last made, here or before.
    fn latest_networks(&self) -> HashMap<String, Arc<NetParts>> {
        let mut latest = self.earlier.clone();
        let made = self.networks.lock().unwrap_or_else(|p| p.into_inner());
        for (id, slot) in made.iter() {
            if let Some(parts) = slot.get() {
                latest.insert(id.clone(), parts.clone());
            }
        }
        latest
    }
}

/// The VXLAN sources of every config: one list of every node's address,
/// which the dispatcher keeps once, not once per session (with 5,000
/// nodes, 5,000 copies of 5,000 addresses held 3 GiB on the leader).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    /// Sorted, without duplicates.
    pub list: Vec<String>,
    /// What the list adds to an encoded `NodeConfig`.
    pub encoded_len: usize,
    /// [`weft_proto::config_delta::sources_digest`] of the list.
    pub digest: Vec<u8>,
}

impl Sources {
    fn new(mut list: Vec<String>) -> Sources {
        list.sort();
        list.dedup();
        let encoded_len = list
            .iter()
            .map(|a| 1 + prost::encoding::encoded_len_varint(a.len() as u64) + a.len())
            .sum();
        let digest = weft_proto::config_delta::sources_digest(&list);
        Sources {
            list,
            encoded_len,
            digest,
        }
    }
}

/// The [`Shared`] parts of `state`.
pub fn shared(state: &State) -> Shared {
    shared_after(state, None)
}

/// The [`Shared`] parts of `state`, made after `earlier` (an earlier
/// state's): networks whose parts are made equal to the latest made before
/// share them, and so do unchanged VXLAN sources. Sessions compare both by
/// pointer.
pub fn shared_after(state: &State, earlier: Option<&Shared>) -> Shared {
    let addrs = state
        .nodes
        .values()
        .filter(|n| !n.data_path_addr.is_empty())
        .map(|n| n.data_path_addr.clone())
        .collect();
    let (manager_addrs, manager_ids) = state
        .managers()
        .map(|m| (m.addr.clone(), m.id.to_string()))
        .unzip();
    let mut parts = Shared {
        vxlan_allowed_sources: Arc::new(Sources::new(addrs)),
        manager_addrs,
        manager_ids,
        removed: state.removed.iter().map(|n| n.to_string()).collect(),
        networks: Mutex::default(),
        earlier: HashMap::new(),
        changes: Mutex::default(),
        tasks_by_node: OnceLock::new(),
    };
    if let Some(e) = earlier {
        if e.vxlan_allowed_sources == parts.vxlan_allowed_sources {
            parts.vxlan_allowed_sources = e.vxlan_allowed_sources.clone();
        }
        // Networks gone from the store are dropped, not carried on.
        parts.earlier = e.latest_networks();
        parts
            .earlier
            .retain(|id, _| state.networks.contains_key(id));
    }
    parts
}

/// [`project`] with the [`Shared`] parts made already, from exactly this
/// `state`: their network lists are made from the first state they are
/// given and then reused (the dispatcher keys them by the state's own
/// index, [`crate::core::Core::read_indexed`]).
pub fn project_with(
    state: &State,
    node: NodeId,
    version: u64,
    shared: &Shared,
) -> Option<pb::NodeConfig> {
    let mut c = project_without_sources(state, node, version, shared)?;
    c.vxlan_allowed_sources = shared.vxlan_allowed_sources.list.clone();
    Some(c)
}

/// [`project`] with `vxlan_allowed_sources` left empty: the dispatcher
/// keeps that list once for every session ([`Sources`]). Canonical
/// ([`weft_proto::config_delta::canonicalize`]) all the same. `shared`: made
/// from exactly this `state` (see [`project_with`]).
pub fn project_without_sources(
    state: &State,
    node: NodeId,
    version: u64,
    shared: &Shared,
) -> Option<pb::NodeConfig> {
    Some(project_parts(state, node, version, shared)?.whole())
}

/// A node's config with its networks left in their shared parts, which
/// is what a session keeps of what it sent: with M members on a network,
/// each member's own copy of the network's lists held O(M²) on the leader
/// and cost O(M) per member to compare at every store change, changed or
/// not.
#[derive(Debug)]
pub struct Projected {
    node: NodeId,
    /// The config without networks or VXLAN sources.
    pub config: pb::NodeConfig,
    /// The node's networks' parts, by network ID.
    networks: Vec<Arc<NetParts>>,
}

/// What became of one network between two projections of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NetChange {
    Same,
    Changed,
    Added,
    Removed,
}

impl Projected {
    /// The whole config, networks made for the node.
    pub fn whole(&self) -> pb::NodeConfig {
        pb::NodeConfig {
            networks: (self.networks.iter())
                .map(|n| n.config_for(self.node))
                .collect(),
            ..self.config.clone()
        }
    }

    /// Whether the two configs differ in anything but their version
    /// ([`same_content`] of their wholes). A network whose parts are the
    /// same `Arc` is not looked into, and of one whose parts changed only
    /// what changed is (`shared`: the new config's, where changes are
    /// made once for all sessions).
    pub fn same_as(&self, other: &Projected, shared: &Shared) -> bool {
        same_content(&self.config, &other.config)
            && (self.network_changes(other, shared).iter()).all(|c| c.what == NetChange::Same)
    }

    /// `new` in place of `self`, which is the same ([`Projected::same_as`]),
    /// under `self`'s version: the node holds that version, and the
    /// session's next comparison starts from the newer parts.
    pub fn refresh(&mut self, mut new: Projected) {
        new.config.version = self.config.version;
        *self = new;
    }

    /// The networks of `self` (the earlier) and `new`, walked by ID, each
    /// with what became of it.
    fn network_changes(&self, new: &Projected, shared: &Shared) -> Vec<NetStep> {
        let viewer = new.node;
        let (mut old, mut new) = (
            self.networks.iter().peekable(),
            new.networks.iter().peekable(),
        );
        let mut steps = Vec::new();
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => return steps,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => a.id().cmp(b.id()),
            };
            // The smaller ID steps alone; equal IDs step together.
            let step = match (
                old.next_if(|_| order.is_le()),
                new.next_if(|_| order.is_ge()),
            ) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => NetStep::same(a),
                (Some(a), Some(b)) => {
                    let change = shared.change(a, b);
                    let (x, y) = change.parts();
                    let what = if x.same_for(y, viewer) {
                        NetChange::Same
                    } else {
                        NetChange::Changed
                    };
                    NetStep {
                        what,
                        old: Some(a.clone()),
                        new: Some(b.clone()),
                        change: Some(change),
                    }
                }
                (Some(a), None) => NetStep {
                    what: NetChange::Removed,
                    old: Some(a.clone()),
                    new: None,
                    change: None,
                },
                (None, Some(b)) => NetStep {
                    what: NetChange::Added,
                    old: None,
                    new: Some(b.clone()),
                    change: None,
                },
                (None, None) => return steps,
            };
            steps.push(step);
        }
    }

    /// `self` (what a node holds) and `new`, as two configs that differ as
    /// the wholes do: networks that did not change are left without their
    /// lists on both sides, and of those that did only what changed is in
    /// them. A delta made from these two
    /// ([`weft_proto::config_delta::diff`]) makes `new` whole from `self`
    /// whole, and costs a copy of its own fields per unchanged network,
    /// nothing per unchanged entry.
    pub fn changed_pair(
        &self,
        new: &Projected,
        shared: &Shared,
    ) -> (pb::NodeConfig, pb::NodeConfig) {
        let (mut old_c, mut new_c) = (self.config.clone(), new.config.clone());
        for step in self.network_changes(new, shared) {
            match (step.what, &step.old, &step.new, &step.change) {
                (NetChange::Changed, _, _, Some(change)) => {
                    let (a, b) = change.parts();
                    old_c.networks.push(a.config_for(self.node));
                    new_c.networks.push(b.config_for(new.node));
                }
                (_, Some(a), Some(b), _) => {
                    old_c.networks.push(a.head());
                    new_c.networks.push(b.head());
                }
                (_, Some(a), None, _) => old_c.networks.push(a.head()),
                (_, None, Some(b), _) => new_c.networks.push(b.config_for(new.node)),
                (_, None, None, _) => {}
            }
        }
        (old_c, new_c)
    }
}

/// One network in [`Projected::network_changes`].
struct NetStep {
    what: NetChange,
    old: Option<Arc<NetParts>>,
    new: Option<Arc<NetParts>>,
    /// What changed, for parts that are not the same `Arc`.
    change: Option<Arc<Change>>,
}

impl NetStep {
    fn same(parts: &Arc<NetParts>) -> NetStep {
        NetStep {
            what: NetChange::Same,
            old: Some(parts.clone()),
            new: Some(parts.clone()),
            change: None,
        }
    }
}

/// [`project_without_sources`] with the networks left in their parts
/// ([`Projected`]).
pub fn project_parts(
    state: &State,
    node: NodeId,
    version: u64,
    shared: &Shared,
) -> Option<Projected> {
    let me = state.nodes.get(&node)?;
    let cluster = state.cluster.as_ref()?;
    let gw_subnet = cluster.settings.gateway_subnet;
    let mine: Vec<&Task> = (shared.tasks_on(state, node).iter())
        .filter_map(|id| state.tasks.get(id))
        .filter(|t| t.node == node && t.desired == DesiredTaskState::Running)
        .collect();
    let mut net_ids: Vec<&str> = mine
        .iter()
        .flat_map(|t| t.attachments.iter().map(|a| a.network.as_str()))
        .collect();
    // Every node serves ingress-published ports, so every node takes
    // part in the ingress network once a service publishes through it.
    let ingress = ingress_endpoint(state, node);
    if let Some(e) = &ingress {
        net_ids.push(e.network_id.as_str());
    }
    net_ids.sort_unstable();
    net_ids.dedup();

    let networks = net_ids
        .iter()
        .filter_map(|id| state.networks.get(*id))
        .map(|net| shared.network(state, net))
        .collect();

    let tasks = mine
        .iter()
        .map(|t| task_config(state, t, &gw_subnet))
        .collect();

    let wireguard = wireguard(state, me, &net_ids);
    let mut config = pb::NodeConfig {
        version,
        vtep: me.data_path_addr.clone(),
        vxlan_port: u32::from(cluster.settings.data_path_port),
        gateway_subnet: gw_subnet.to_string(),
        networks: Vec::new(),
        tasks,
        wireguard,
        vxlan_allowed_sources: Vec::new(),
        wg_key_generation: me.wg_key_generation,
        ports: published_ports(state, node, &mine),
        ingress,
        // Not the store's: the dispatcher adds the leader's in-memory
        // image fetches (crate::imagepush).
        image_fetches: Vec::new(),
        keep_sources: false,
        sources_follow: false,
    };
    // The one order of every set-like list, which config deltas keep
    // (the networks' parts are in it already, by ID).
    weft_proto::config_delta::canonicalize(&mut config);
    Some(Projected {
        node,
        config,
        networks,
    })
}

/// Task `t` as its node gets it.
fn task_config(state: &State, t: &Task, gw_subnet: &ipnetwork::IpNetwork) -> pb::TaskConfig {
    pb::TaskConfig {
        id: t.id.clone(),
        name: t.name.clone(),
        command: t.spec.command.clone(),
        env: t.spec.env.clone().into_iter().collect(),
        container: crate::convert::container_to_wire(&t.spec.container),
        stop: crate::convert::stop_to_wire(&t.spec.stop),
        resources: crate::convert::resources_to_wire(&t.spec.resources),
        log: crate::convert::log_to_wire(t.spec.log),
        health: crate::convert::health_to_wire(&t.spec.health),
        attachments: t
            .attachments
            .iter()
            .filter_map(|a| {
                let net = state.networks.get(&a.network)?;
                Some(pb::TaskAttachment {
                    ip6: match (a.ip6, &net.ipv6) {
                        (Some(ip), Some(v6)) => with_prefix(ip, &v6.subnet),
                        _ => String::new(),
                    },
                    // A foreign container's one interface has the
                    // runtime's name.
                    ifname: t
                        .spec
                        .external
                        .as_ref()
                        .map_or_else(|| a.ifname.clone(), |e| e.ifname.clone()),
                    aliases: a.aliases.clone(),
                    network_id: a.network.clone(),
                    ip: with_prefix(a.ip, &net.subnet),
                    mac: mac_text(mac_for(a.ip)),
                })
            })
            .collect(),
        gateway_ip: t
            .gateway_ip
            .map(|ip| with_prefix(ip, gw_subnet))
            .unwrap_or_default(),
        gateway_mac: t
            .gateway_ip
            .map(|ip| mac_text(mac_for(ip)))
            .unwrap_or_default(),
        network_mode: crate::convert::network_mode_text(t.network_mode).into(),
        ports: t.ports.iter().map(crate::convert::port_to_wire).collect(),
        service: t
            .service
            .as_ref()
            .map(|r| {
                state
                    .services
                    .get(&r.service)
                    .map_or_else(|| r.service.clone(), |s| s.spec.name.clone())
            })
            .unwrap_or_default(),
        created_at_ms: t.created_at_ms,
        // Filled in by the dispatcher, which holds the key.
        registry_auth: None,
        external: t
            .spec
            .external
            .as_ref()
            .map(crate::dispatcher::external::external_to_wire),
    }
}

/// The node's endpoint on the ingress network, while some service
/// publishes a port through it.
fn ingress_endpoint(state: &State, node: NodeId) -> Option<pb::IngressEndpointConfig> {
    let net = state.ingress_network()?;
    let in_use = state
        .services
        .values()
        .any(|s| s.ports.iter().any(|p| p.mode == PublishMode::Ingress));
    if !in_use {
        return None;
    }
    let ip = net.node_endpoints.get(&node)?;
    let ip6 = net
        .ipv6
        .as_ref()
        .zip(net.node_endpoints6.get(&node))
        .map(|(v6, ip6)| with_prefix(*ip6, &v6.subnet))
        .unwrap_or_default();
    Some(pb::IngressEndpointConfig {
        network_id: net.id.clone(),
        ip: with_prefix(*ip, &net.subnet),
        mac: mac_text(mac_for(*ip)),
        ip6,
    })
}

/// Ports published on `node`: its tasks' `-p` ports, every service's
/// ingress ports, and host-mode ports of services with a replica here.
fn published_ports(state: &State, node: NodeId, mine: &[&Task]) -> Vec<pb::PublishedPortConfig> {
    let mut out = Vec::new();
    for t in mine {
        let Some(gw) = t.gateway_ip else { continue };
        for p in &t.ports {
            out.push(pb::PublishedPortConfig {
                protocol: p.proto.as_str().into(),
                port: p.published.into(),
                target_port: p.target.into(),
                local: vec![gw.to_string()],
                remote: Vec::new(),
                owner: format!("task {}", t.name),
            });
        }
    }
    let ingress = state.ingress_network();
    for svc in state.services.values() {
        if svc.ports.is_empty() {
            continue;
        }
        let replicas: Vec<&Task> = state
            .tasks
            .values()
            .filter(|t| {
                t.service.as_ref().is_some_and(|r| r.service == svc.id)
                    && t.status.state.is_serving()
                    && live_for(state, node, t)
            })
            .collect();
        let mut local: Vec<String> = replicas
            .iter()
            .filter(|t| t.node == node)
            .filter_map(|t| t.gateway_ip.map(|ip| ip.to_string()))
            .collect();
        local.sort();
        for p in &svc.ports {
            let remote: Vec<String> = match (p.mode, ingress) {
                (PublishMode::Ingress, Some(net)) => {
                    // Both families: the node picks by the client's.
                    let mut r: Vec<String> = replicas
                        .iter()
                        .filter(|t| t.node != node)
                        .flat_map(|t| addrs_on(t, net))
                        .map(|ip| ip.to_string())
                        .collect();
                    r.sort();
                    r
                }
                _ => Vec::new(),
            };
            if p.mode == PublishMode::Host && local.is_empty() {
                continue;
            }
            out.push(pb::PublishedPortConfig {
                protocol: p.proto.as_str().into(),
                port: p.published.into(),
                target_port: p.target.into(),
                local: local.clone(),
                remote,
                owner: format!("service {}", svc.spec.name),
            });
        }
    }
    out
}

/// The node's WireGuard device: present when it has an encrypted network
/// and a tunnel address; one peer per other live node that shares an
/// encrypted network with it.
fn wireguard(
    state: &State,
    me: &crate::store::Node,
    net_ids: &[&str],
) -> Option<pb::WireguardConfig> {
    let settings = &state.cluster.as_ref()?.settings;
    let encrypted: Vec<&Network> = net_ids
        .iter()
        .filter_map(|id| state.networks.get(*id))
        .filter(|n| n.encrypted)
        .collect();
    if encrypted.is_empty() {
        return None;
    }
    let tunnel = me.tunnel_ip?;
    let mut peer_ids: Vec<NodeId> = encrypted
        .iter()
        .flat_map(|n| members(state, n))
        .filter(|id| *id != me.id)
        .collect();
    peer_ids.sort();
    peer_ids.dedup();
    let peers = peer_ids
        .iter()
        .filter_map(|id| state.nodes.get(id))
        .filter(|n| n.state != NodeState::Down && !n.wg_public_key.is_empty())
        .filter_map(|n| {
            Some(pb::WgPeerConfig {
                node_id: n.id.to_string(),
                public_key: n.wg_public_key.clone(),
                endpoint: std::net::SocketAddr::new(
                    n.data_path_addr.parse().ok()?,
                    settings.wg_port,
                )
                .to_string(),
                tunnel_ip: n.tunnel_ip?.to_string(),
            })
        })
        .collect();
    let underlay = if me.underlay_mtu == 0 {
        DEFAULT_UNDERLAY_MTU
    } else {
        me.underlay_mtu
    };
    Some(pb::WireguardConfig {
        listen_port: u32::from(settings.wg_port),
        tunnel_addr: format!("{tunnel}/{}", settings.tunnel_subnet.prefix()),
        mtu: underlay - (encapsulation(&me.data_path_addr, true) - VXLAN_OVERHEAD),
        key_generation: me.wg_key_generation,
        peers,
    })
}

/// Task `t`'s addresses on `net`, of both families.
fn addrs_on(t: &Task, net: &Network) -> Vec<IpAddr> {
    t.attachments
        .iter()
        .filter(|a| a.network == net.id)
        .flat_map(|a| std::iter::once(a.ip).chain(a.ip6))
        .collect()
}

/// Whether two configs differ in anything but their version. No copy of
/// their lists is made: a session compares every config it makes, each
/// O(M) for a network of M members.
pub fn same_content(a: &pb::NodeConfig, b: &pb::NodeConfig) -> bool {
    use weft_proto::config_delta::head;
    let mut head_a = head(a);
    head_a.version = b.version;
    head_a == head(b)
        && a.networks == b.networks
        && a.tasks == b.tasks
        && a.wireguard == b.wireguard
        && a.vxlan_allowed_sources == b.vxlan_allowed_sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, NetworkSpec, Node, Role, TaskSpec};

    fn state() -> State {
        let mut s = State::default();
        let node = |id: u64, host: &str, mtu: u32| Node {
            id: NodeId(id),
            hostname: host.into(),
            role: Role::Manager,
            data_path_addr: format!("198.18.0.{id}"),
            underlay_mtu: mtu,
            state: NodeState::Ready,
            ..Default::default()
        };
        s.apply(&Command::InitCluster {
            cluster: crate::testing::cluster_record(),
            node: node(1, "a", 1500),
        })
        .unwrap();
        for (id, host, mtu) in [(2, "b", 1400), (3, "c", 1500)] {
            s.apply(&Command::AddNode {
                node: node(id, host, mtu),
            })
            .unwrap();
        }
        for (id, name, subnet) in [("n1", "app", "10.0.9.0/24"), ("n2", "db", "10.0.10.0/24")] {
            s.apply(&Command::CreateNetwork {
                spec: NetworkSpec {
                    aux_addresses: Default::default(),
                    subnet: Some(subnet.parse().unwrap()),
                    ..crate::testing::network_spec(id, name)
                },
            })
            .unwrap();
        }
        let mut task = |id: &str, node: u64, nets: &[&str]| {
            s.apply(&Command::CreateTask {
                ip6: Default::default(),
                aliases: Default::default(),
                id: id.into(),
                name: id.into(),
                node: NodeId(node),
                spec: TaskSpec::default(),
                networks: nets.iter().map(|n| (n.to_string(), None)).collect(),
                standalone: true,
                now_ms: 0,
                network_mode: Default::default(),
                ports: Vec::new(),
            })
            .unwrap();
        };
        task("t1", 1, &["n1"]);
        task("t2", 2, &["n1"]);
        task("t3", 3, &["n2"]);
        s
    }

    #[test]
    fn a_node_sees_only_its_networks_and_their_remote_endpoints() {
        let s = state();
        let c = project(&s, NodeId(1), 7).unwrap();
        assert_eq!(c.version, 7);
        assert_eq!(c.vtep, "198.18.0.1");
        assert_eq!(c.networks.len(), 1, "n2 has no task on node 1");
        let n = &c.networks[0];
        assert_eq!((n.name.as_str(), n.vni), ("app", 4096));
        assert_eq!(n.remote.len(), 1);
        assert_eq!(n.remote[0].task_id, "t2");
        assert_eq!(n.remote[0].vtep, "198.18.0.2");
        assert_eq!(n.remote[0].mac, "02:42:0a:00:09:03");
        assert_eq!(c.tasks.len(), 1);
        assert_eq!(c.tasks[0].attachments[0].ip, "10.0.9.2/24");
        assert_eq!(c.tasks[0].gateway_ip, "172.18.0.2/16");
        // Node 3 knows nothing of n1.
        let c3 = project(&s, NodeId(3), 7).unwrap();
        assert!(c3.networks.iter().all(|n| n.name == "db"));
        assert!(c3.networks[0].remote.is_empty());
    }

    /// A dual-stack network's node config carries its IPv6 subnet, each
    /// endpoint's IPv6 address (same MAC), both addresses per name, and
    /// a service's IPv6 VIP.
    #[test]
    fn dual_stack_networks_project_both_families() {
        let mut s = state();
        s.apply(&Command::CreateNetwork {
            spec: NetworkSpec {
                subnet: Some("10.0.11.0/24".parse().unwrap()),
                ipv6: true,
                subnet6: Some("fd00:1::/64".parse().unwrap()),
                ..crate::testing::network_spec("n3", "dual")
            },
        })
        .unwrap();
        for (id, node) in [("t4", 1), ("t5", 2)] {
            s.apply(&Command::CreateTask {
                ip6: Default::default(),
                aliases: Default::default(),
                id: id.into(),
                name: id.into(),
                node: NodeId(node),
                spec: TaskSpec::default(),
                networks: vec![("n3".into(), None)],
                standalone: true,
                now_ms: 0,
                network_mode: Default::default(),
                ports: Vec::new(),
            })
            .unwrap();
        }
        s.apply(&Command::CreateService {
            id: "s1".into(),
            spec: crate::testing::spec("web", 1, &["n3"]),
            now_ms: 1,
        })
        .unwrap();
        let c = project(&s, NodeId(1), 1).unwrap();
        let n = c.networks.iter().find(|n| n.name == "dual").unwrap();
        assert_eq!(
            (n.subnet6.as_str(), n.gateway6.as_str()),
            ("fd00:1::/64", "fd00:1::1")
        );
        assert_eq!(n.remote.len(), 1);
        assert_eq!(
            (n.remote[0].ip.as_str(), n.remote[0].ip6.as_str()),
            ("10.0.11.3", "fd00:1::3")
        );
        assert_eq!(
            n.remote[0].mac, "02:42:0a:00:0b:03",
            "one MAC, from the IPv4 address"
        );
        let t4 = c.tasks.iter().find(|t| t.id == "t4").unwrap();
        assert_eq!(t4.attachments[0].ip6, "fd00:1::2/64");
        let t5: Vec<&str> = (n.names.iter())
            .filter(|r| r.name == "t5")
            .map(|r| r.ip.as_str())
            .collect();
        assert_eq!(t5, ["10.0.11.3", "fd00:1::3"]);
        let web = n.services.iter().find(|e| e.name == "web").unwrap();
        assert_eq!(
            (web.vip.as_str(), web.vip6.as_str()),
            ("10.0.11.4", "fd00:1::4")
        );
        // An IPv4-only network's config has no IPv6 field set.
        let app = c.networks.iter().find(|n| n.name == "app").unwrap();
        assert!(app.subnet6.is_empty() && app.remote.iter().all(|r| r.ip6.is_empty()));
    }

    #[test]
    fn mtu_comes_from_the_smallest_member_underlay() {
        let s = state();
        let net = &s.networks["n1"];
        assert_eq!(network_mtu(&s, net), (1350, "b".to_string()));
        let c = project(&s, NodeId(1), 1).unwrap();
        assert_eq!(c.networks[0].mtu, 1350);
        assert_eq!(network_mtu(&s, &s.networks["n2"]).0, 1450);
    }

    /// VXLAN over an IPv6 underlay has a 40-byte outer header, not 20;
    /// so has WireGuard's.
    #[test]
    fn an_ipv6_underlay_costs_twenty_bytes_more() {
        assert_eq!(encapsulation("198.18.0.1", false), 50);
        assert_eq!(encapsulation("2001:2::1", false), 70);
        assert_eq!(encapsulation("198.18.0.1", true), 110);
        assert_eq!(encapsulation("2001:2::1", true), 130);
        let mut s = state();
        for n in s.nodes.values_mut() {
            n.data_path_addr = format!("2001:2::{}", n.id.0);
        }
        assert_eq!(network_mtu(&s, &s.networks["n1"]).0, 1330);
        assert_eq!(network_mtu(&s, &s.networks["n2"]).0, 1430);
    }

    fn mark_down(s: &mut State, id: u64) {
        s.apply(&Command::SetNodeState {
            id: NodeId(id),
            state: NodeState::Down,
            message: String::new(),
            now_ms: 0,
        })
        .unwrap();
    }

    #[test]
    fn endpoints_of_down_nodes_leave_peer_configs() {
        let mut s = state();
        mark_down(&mut s, 2);
        let c = project(&s, NodeId(1), 2).unwrap();
        assert!(c.networks[0].remote.is_empty());
    }

    /// A node marked down (its daemon restarted for longer than three
    /// heartbeats) still resolves its own tasks' names in the config it
    /// gets on reconnecting, before the heartbeat that marks it ready;
    /// its peers no longer see them.
    #[test]
    fn a_node_marked_down_keeps_its_own_names() {
        let mut s = state();
        let names = |c: &pb::NodeConfig| -> Vec<String> {
            c.networks[0].names.iter().map(|r| r.name.clone()).collect()
        };
        let before = project(&s, NodeId(2), 1).unwrap();
        assert_eq!(names(&before), ["t1", "t2"]);
        mark_down(&mut s, 2);
        let own = project(&s, NodeId(2), 2).unwrap();
        assert_eq!(names(&own), ["t1", "t2"], "its own task stays");
        let peer = project(&s, NodeId(1), 2).unwrap();
        assert_eq!(names(&peer), ["t1"], "peers drop it");
    }

    /// The networks' lists are made once per state and shared by every
    /// node's projection: what one node sees never leaks into another's
    /// (its own endpoints left out, its own tasks kept while it is down).
    #[test]
    fn parts_shared_by_every_node_project_as_parts_made_for_each() {
        let mut s = state();
        mark_down(&mut s, 2);
        for order in [[1u64, 2, 3], [3, 2, 1], [2, 1, 3]] {
            let once = shared(&s);
            for n in order {
                assert_eq!(
                    project_with(&s, NodeId(n), 2, &once),
                    project_with(&s, NodeId(n), 2, &shared(&s)),
                    "node {n}, projected in the order {order:?}"
                );
            }
        }
    }

    /// A session keeps its networks in their shared parts and makes its
    /// delta from the changed networks only: for changes to every part of
    /// a network (and to none), that delta makes the new whole config
    /// from the old whole one, "no change" is said exactly when the wholes
    /// are the same, and a network left as it was keeps its parts' Arc.
    #[test]
    fn deltas_from_shared_parts_make_the_whole_new_config() {
        use crate::testing::{apply, cluster, network_spec, place, spec};
        let mut s = cluster(10);
        for (id, name, subnet) in [
            ("net1", "front", "10.30.0.0/24"),
            ("net2", "back", "10.31.0.0/24"),
        ] {
            let mut net = network_spec(id, name);
            net.subnet = Some(subnet.parse().unwrap());
            apply(&mut s, Command::CreateNetwork { spec: net });
        }
        let mut web = spec("web", 6, &["net1", "net2"]);
        web.network_aliases
            .insert("net1".into(), vec!["www".into()]);
        apply(
            &mut s,
            Command::CreateService {
                id: "web".into(),
                spec: web,
                now_ms: 0,
            },
        );
        let mut db = spec("db", 3, &["net1"]);
        db.endpoint_mode = crate::store::EndpointMode::Dnsrr;
        db.network_aliases
            .insert("net1".into(), vec!["store".into()]);
        apply(
            &mut s,
            Command::CreateService {
                id: "db".into(),
                spec: db,
                now_ms: 0,
            },
        );
        for node in 1..=6 {
            place(&mut s, "web", node, 1, node);
        }
        place(&mut s, "db", 1, 2, 7);
        // What a change does to net1: nothing, a change diffed from what
        // changed only, or one diffed whole.
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Net1 {
            Kept,
            ByChange,
            Whole,
        }
        type Step = (&'static str, Net1, fn(&mut State));
        let changes: [Step; 13] = [
            ("a node's MTU, a node with no replica", Net1::Kept, |s| {
                s.nodes.get_mut(&NodeId(9)).unwrap().underlay_mtu = 9000;
            }),
            ("a member marked down", Net1::ByChange, |s| mark_down(s, 3)),
            ("a replica stops serving", Net1::ByChange, |s| {
                let t = s.tasks.values_mut().find(|t| t.node == NodeId(2)).unwrap();
                t.status.state = crate::store::TaskState::Failed;
            }),
            ("a new member", Net1::ByChange, |s| place(s, "web", 7, 1, 8)),
            ("a dnsrr replica stops serving", Net1::ByChange, |s| {
                let t = s.tasks.values_mut().find(|t| t.node == NodeId(7)).unwrap();
                t.status.state = crate::store::TaskState::Failed;
            }),
            ("an alias more, on net2", Net1::Kept, |s| {
                let web = s.services.get_mut("web").unwrap();
                web.spec
                    .network_aliases
                    .insert("net2".into(), vec!["api".into()]);
            }),
            (
                "the dnsrr service's node marked down",
                Net1::ByChange,
                |s| mark_down(s, 7),
            ),
            // Only node 7 sees a backend of it: no other node's config
            // changes.
            ("an alias more, on net1", Net1::ByChange, |s| {
                let db = s.services.get_mut("db").unwrap();
                db.spec
                    .network_aliases
                    .insert("net1".into(), vec!["store".into(), "db2".into()]);
            }),
            ("a member's MTU: the network's", Net1::Whole, |s| {
                s.nodes.get_mut(&NodeId(1)).unwrap().underlay_mtu = 1400;
            }),
            ("a member leaves", Net1::ByChange, |s| {
                let t = s.tasks.values_mut().find(|t| t.node == NodeId(5)).unwrap();
                t.desired = DesiredTaskState::Shutdown;
            }),
            ("the member marked down is up again", Net1::ByChange, |s| {
                s.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Ready;
            }),
            ("a service leaves", Net1::ByChange, |s| {
                s.services.remove("db");
            }),
            ("nothing", Net1::Kept, |_| {}),
        ];
        let nodes: Vec<NodeId> = s.nodes.keys().copied().collect();
        let mut parts = shared(&s);
        let mut held: Vec<Projected> = (nodes.iter())
            .map(|n| project_parts(&s, *n, 1, &parts).unwrap())
            .collect();
        let net1 = s.networks["net1"].clone();
        for (version, (what, net1_change, change)) in (2..).zip(changes) {
            let before = parts.network(&s, &net1);
            change(&mut s);
            let next = shared_after(&s, Some(&parts));
            let after = next.network(&s, &net1);
            let found = if Arc::ptr_eq(&before, &after) {
                Net1::Kept
            } else if next.change(&before, &after).changed.is_some() {
                Net1::ByChange
            } else {
                Net1::Whole
            };
            assert_eq!(found, net1_change, "{what}: net1");
            let mut changed = 0;
            for (n, old) in nodes.iter().zip(&mut held) {
                let new = project_parts(&s, *n, version, &next).unwrap();
                let (old_whole, new_whole) = (old.whole(), new.whole());
                let same = same_content(&old_whole, &new_whole);
                assert_eq!(old.same_as(&new, &next), same, "{what}: node {n}");
                if same {
                    // As the session does: the node keeps its version.
                    old.refresh(new);
                    assert_eq!(old.config.version, old_whole.version);
                    continue;
                }
                changed += 1;
                let (a, b) = old.changed_pair(&new, &next);
                let delta = weft_proto::config_delta::diff(&a, &b).expect("canonical");
                // The wholes' own delta, which this one stands for.
                assert!(weft_proto::config_delta::diff(&old_whole, &new_whole).is_some());
                assert_eq!(
                    weft_proto::config_delta::apply(&old_whole, &delta),
                    Ok(new_whole),
                    "{what}: node {n}"
                );
                *old = new;
            }
            assert!(
                changed > 0 || net1_change == Net1::Kept,
                "{what}: configs changed"
            );
            parts = next;
        }
    }

    #[test]
    fn unrelated_changes_do_not_change_a_projection() {
        let mut s = state();
        let before = project(&s, NodeId(1), 1).unwrap();
        s.apply(&Command::CreateTask {
            ip6: Default::default(),
            aliases: Default::default(),
            id: "t4".into(),
            name: "t4".into(),
            node: NodeId(3),
            spec: TaskSpec::default(),
            networks: vec![("n2".into(), None)],
            standalone: true,
            now_ms: 0,
            network_mode: Default::default(),
            ports: Vec::new(),
        })
        .unwrap();
        let after = project(&s, NodeId(1), 2).unwrap();
        assert!(same_content(&before, &after));
        let after3 = project(&s, NodeId(3), 2).unwrap();
        assert!(!same_content(
            &project(&state(), NodeId(3), 1).unwrap(),
            &after3
        ));
    }

    #[test]
    fn configs_differing_in_any_field_but_their_version_are_not_the_same() {
        let base = project(&state(), NodeId(1), 1).expect("a member");
        let mut later = base.clone();
        later.version = 9;
        assert!(same_content(&base, &later));
        type Change = fn(&mut pb::NodeConfig);
        let changes: Vec<(&str, Change)> = vec![
            ("vtep", |c| c.vtep.push('x')),
            ("vxlan_port", |c| c.vxlan_port += 1),
            ("gateway_subnet", |c| c.gateway_subnet.push('x')),
            ("networks", |c| c.networks[0].names.clear()),
            ("a network's mtu", |c| c.networks[0].mtu += 1),
            ("tasks", |c| c.tasks[0].name.push('x')),
            ("wireguard", |c| c.wireguard = Some(Default::default())),
            ("wireguard peers", |c| {
                let wg = c.wireguard.get_or_insert_with(Default::default);
                wg.peers.push(Default::default());
            }),
            ("vxlan_allowed_sources", |c| {
                c.vxlan_allowed_sources.push("x".into())
            }),
            ("wg_key_generation", |c| c.wg_key_generation += 1),
            ("ports", |c| c.ports.push(Default::default())),
            ("ingress", |c| c.ingress = Some(Default::default())),
            ("keep_sources", |c| c.keep_sources = !c.keep_sources),
            ("sources_follow", |c| c.sources_follow = !c.sources_follow),
            ("image_fetches", |c| {
                c.image_fetches.push(Default::default())
            }),
        ];
        for (what, change) in changes {
            let mut other = base.clone();
            change(&mut other);
            // The peers' case starts from a config with a device.
            let mut with_device = base.clone();
            if what == "wireguard peers" {
                with_device.wireguard.get_or_insert_with(Default::default);
            }
            assert!(!same_content(&with_device, &other), "{what}");
            assert!(!same_content(&other, &with_device), "{what}");
        }
    }

    #[test]
    fn ingress_ports_everywhere_local_replicas_first_host_ports_only_where_replicas_run() {
        ingress_ports(false);
    }

    #[test]
    fn a_dual_stack_ingress_network_carries_both_families() {
        ingress_ports(true);
    }

    fn ingress_ports(dual: bool) {
        use crate::store::{
            EndpointMode, PortProto, PortRequest, RestartCondition, ServiceMode, ServiceSpec,
            TaskState, TaskStatus,
        };
        let mut s = state();
        if dual {
            s.apply(&Command::UpdateClusterSettings {
                wg_key_rotation_secs: None,
                cert_expiry_secs: None,
                disconnect_grace_ms: None,
                ingress_subnet: None,
                ingress_subnet6: Some("fd00:ffff::/64".parse().unwrap()),
            })
            .unwrap();
        }
        let port = |published, mode| PortRequest {
            proto: PortProto::Tcp,
            published,
            target: 80,
            mode,
        };
        s.apply(&Command::CreateService {
            id: "s1".into(),
            spec: ServiceSpec {
                network_aliases: Default::default(),
                registry_auth: None,
                update: Default::default(),
                rollback: Default::default(),
                labels: Default::default(),
                restart_policy: Default::default(),
                name: "web".into(),
                mode: ServiceMode::Replicated { replicas: 2 },
                task: TaskSpec::default(),
                networks: vec!["n1".into()],
                endpoint_mode: EndpointMode::Vip,
                constraints: vec![],
                restart: RestartCondition::Any,
                ports: vec![
                    port(8080, PublishMode::Ingress),
                    port(9090, PublishMode::Host),
                ],
            },
            now_ms: 1,
        })
        .unwrap();
        for (id, node) in [("r1", 1), ("r2", 2)] {
            s.apply(&Command::CreateServiceTask {
                restart_history: Vec::new(),
                id: id.into(),
                service: "s1".into(),
                slot: 1,
                node: NodeId(node),
                now_ms: 2,
                restarts: 0,
            })
            .unwrap();
            s.apply(&Command::SetTaskStatus {
                id: id.into(),
                node: NodeId(node),
                status: TaskStatus::new(TaskState::RUNNING, 0),
            })
            .unwrap();
        }
        let ingress = s.ingress_network().unwrap().clone();
        let gw = |id: &str| s.tasks[id].gateway_ip.unwrap().to_string();
        let att = |id: &str| {
            s.tasks[id]
                .attachments
                .iter()
                .find(|a| a.network == ingress.id)
                .unwrap()
                .clone()
        };
        let ing = |id: &str| att(id).ip.to_string();
        let by_port = |c: &pb::NodeConfig, p: u32| c.ports.iter().find(|x| x.port == p).cloned();
        // Node 1 has a replica: its own only, over the gateway bridge.
        let c1 = project(&s, NodeId(1), 1).unwrap();
        let p = by_port(&c1, 8080).unwrap();
        assert_eq!(p.local, vec![gw("r1")]);
        let addrs = |ids: &[&str]| {
            let mut v: Vec<String> = ids.iter().map(|r| ing(r)).collect();
            if dual {
                v.extend(ids.iter().map(|r| att(r).ip6.expect("IPv6").to_string()));
            }
            v.sort();
            v
        };
        assert_eq!(p.remote, addrs(&["r2"]));
        assert_eq!(by_port(&c1, 9090).unwrap().local, vec![gw("r1")]);
        // Node 3 has none: the ingress port forwards to both over the
        // ingress network; the host-mode port is not published there.
        let c3 = project(&s, NodeId(3), 1).unwrap();
        let p = by_port(&c3, 8080).unwrap();
        assert!(p.local.is_empty());
        assert_eq!(p.remote, addrs(&["r1", "r2"]));
        assert!(by_port(&c3, 9090).is_none());
        // Every node takes part in the ingress network with its endpoint,
        // and knows the other nodes' endpoints as remote endpoints.
        let e3 = c3.ingress.clone().unwrap();
        assert_eq!(e3.network_id, ingress.id);
        assert_eq!(e3.ip, format!("{}/16", ingress.node_endpoints[&NodeId(3)]));
        let net = c3.networks.iter().find(|n| n.id == ingress.id).unwrap();
        for n in [1, 2] {
            let ip = ingress.node_endpoints[&NodeId(n)].to_string();
            let ip6 = (ingress.node_endpoints6.get(&NodeId(n)))
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            assert!(
                net.remote.iter().any(|r| r.ip == ip && r.ip6 == ip6),
                "node {n}'s endpoint"
            );
        }
        let want6 = (ingress.node_endpoints6.get(&NodeId(3))).map(|ip| format!("{ip}/64"));
        assert_eq!(e3.ip6, want6.clone().unwrap_or_default());
        assert_eq!(want6.is_some(), dual);
    }
}

/// What re-projecting every node's config costs the leader at 4,990
/// nodes with one 499-replica service (a replica on every tenth node): the
/// dispatcher does this on every store change (BENCHMARKS.md, "Scale").
/// `cargo test --release -p weft-manager --lib projection_cost -- --ignored --nocapture`
#[cfg(test)]
mod projection_cost {
    use super::*;
    use crate::testing::*;

    #[test]
    #[ignore = "a measurement: run it in release, alone"]
    fn projecting_every_node_at_5000_nodes() {
        measure(499, 10, usize::MAX, true, false);
    }

    /// The same service publishing a port through the ingress network,
    /// which every node then takes part in.
    #[test]
    #[ignore = "a measurement: run it in release, alone"]
    fn projecting_every_node_at_5000_nodes_with_an_ingress_port() {
        measure(499, 10, usize::MAX, true, true);
    }

    /// The same, for a store change that leaves the network as it was.
    #[test]
    #[ignore = "a measurement: run it in release, alone"]
    fn projecting_every_node_at_5000_nodes_after_a_change_elsewhere() {
        measure(499, 10, usize::MAX, false, false);
    }

    /// The same with a replica on every node (a global service): every
    /// node's config lists every other node's endpoint.
    #[test]
    #[ignore = "a measurement: run it in release, alone"]
    fn projecting_every_node_at_5000_nodes_with_a_global_service() {
        measure(4990, 1, 200, true, false);
    }

    /// `replicas` replicas, one on every `every`th node; each round also
    /// makes what a session makes of its new config: the comparison with
    /// the last one sent and the delta from it. Only the first `sample`
    /// nodes are projected (each config of a global service at 5,000 nodes
    /// is over a megabyte); the figures are for those. `touch_network`:
    /// the store change is to the service's network, or elsewhere.
    /// `ingress`: the service publishes port 8080 through the ingress
    /// network.
    fn measure(replicas: u64, every: u64, sample: usize, touch_network: bool, ingress: bool) {
        let mut s = cluster(4990);
        let mut net = network_spec("net1", "appnet");
        net.subnet = Some("10.20.0.0/16".parse().expect("literal"));
        apply(&mut s, crate::store::Command::CreateNetwork { spec: net });
        let mut web = spec("web", replicas, &["net1"]);
        if ingress {
            web.ports = vec![port(8080, crate::store::PublishMode::Ingress)];
        }
        apply(
            &mut s,
            crate::store::Command::CreateService {
                id: "svc".into(),
                spec: web,
                now_ms: 0,
            },
        );
        for i in 0..replicas {
            place(&mut s, "svc", i + 1, 1, i * every + 1);
        }
        let members: std::collections::BTreeSet<NodeId> =
            s.tasks.values().map(|t| t.node).collect();
        let first = shared(&s);
        let before = (s.nodes.keys().take(sample))
            .map(|id| (*id, project_parts(&s, *id, 1, &first)))
            .collect::<HashMap<_, _>>();
        if touch_network {
            // One replica stops serving: every member's backends change.
            let gone = s.tasks.keys().next().expect("a task").clone();
            s.tasks.get_mut(&gone).expect("the task").status.state =
                crate::store::TaskState::Failed;
        } else {
            // A node's underlay MTU, raised above the others': the
            // network's MTU, their minimum, stays.
            s.nodes.values_mut().next().expect("a node").underlay_mtu = 9000;
        }
        let mut bytes = 0;
        for round in 0..3 {
            let (mut on, mut off) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
            let mut session = std::time::Duration::ZERO;
            // Made once per store version, after the earlier version's,
            // as the dispatcher does; the networks' parts in it are made
            // by the first member's call.
            let parts = shared_after(&s, Some(&first));
            for id in s.nodes.keys().take(sample) {
                let t = std::time::Instant::now();
                let c = project_parts(&s, *id, 2, &parts);
                if members.contains(id) {
                    on += t.elapsed();
                } else {
                    off += t.elapsed();
                }
                // What the session does next (DispatcherService::delta_for).
                let t = std::time::Instant::now();
                if let (Some(old), Some(new)) = (&before[id], &c)
                    && !old.same_as(new, &parts)
                {
                    let (old_c, new_c) = old.changed_pair(new, &parts);
                    let d = weft_proto::config_delta::diff(&old_c, &new_c).expect("canonical");
                    std::hint::black_box(d);
                }
                session += t.elapsed();
                if round == 0 {
                    bytes = bytes.max(
                        c.as_ref()
                            .map_or(0, |c| prost::Message::encoded_len(&c.whole())),
                    );
                }
            }
            let projected = s.nodes.len().min(sample);
            let on_n = members.iter().filter(|m| before.contains_key(m)).count();
            eprintln!(
                "round {round}: {projected} nodes {:?}: the {on_n} with a replica {:?} ({:?} each), the {} others {:?}; comparing and diffing {:?} ({:?} each); largest config {bytes} bytes",
                on + off,
                on,
                on / on_n.max(1) as u32,
                projected - on_n,
                off,
                session,
                session / projected as u32,
            );
        }
    }
}
