//! The store projected onto one node: [`project`] is a pure function from
//! the state to the `NodeConfig` a node needs, and nothing more — only the
//! networks it has tasks on, its own tasks, and the remote endpoints on
//! those networks (tasks on nodes that are down are left out, so their
//! endpoints leave every peer's config).

mod network;
mod ports;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use ipnetwork::IpNetwork;
use weft_proto::v1 as pb;

pub use network::NetParts;
pub use ports::PortParts;

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
    /// other.
    changes: Pairs<NetParts>,
    /// The published ports of every service that has any, by service ID,
    /// made on first use ([`Shared::ports`]).
    ports: OnceLock<Vec<Arc<PortParts>>>,
    /// Each service's ports as last made before this state (see
    /// `earlier`).
    earlier_ports: HashMap<String, Arc<PortParts>>,
    /// What changed between two parts of a service's ports (see
    /// `changes`).
    port_changes: Pairs<PortParts>,
    /// Each node's tasks' IDs, in the store's order, made on first use:
    /// every session looks up its own on every store change, and a walk
    /// over every task each cost O(N × T) per change.
    tasks_by_node: OnceLock<HashMap<NodeId, Vec<String>>>,
}

/// A value made once, on first use, by whichever caller gets there first.
type Slot<T> = Arc<OnceLock<Arc<T>>>;

/// A part of a node's config made once per store version and shared by
/// every session ([`NetParts`], [`PortParts`]), which a session compares
/// and diffs for its node only.
trait Part: std::fmt::Debug + Sized {
    /// What names it among a node's parts of its kind (their order).
    fn key(&self) -> &str;
    /// Whether `viewer` gets the same from `self` and `other`.
    fn same_for(&self, other: &Self, viewer: NodeId) -> bool;
    /// `old` and `new` without what they hold the same, such that a
    /// viewer's configs made from the two differ as those made from the
    /// wholes do (for a viewer [`Part::reducible_for`] allows); `None` when
    /// that cannot be said (compare the wholes).
    fn without_common(old: &Self, new: &Self) -> Option<(Self, Self)>;
    /// Whether what [`Part::without_common`] left out is seen alike by
    /// `viewer` in `old` and `new`.
    fn reducible_for(_old: &Self, _new: &Self, _viewer: NodeId) -> bool {
        true
    }
    /// Whether `viewer`'s config gets nothing of it (then its coming or
    /// going changes nothing there).
    fn shows_nothing_to(&self, _viewer: NodeId) -> bool {
        false
    }
}

/// Two parts of one thing and what changed between them
/// ([`Part::without_common`]); the parts are kept so that their
/// addresses, the key this is found by, stay theirs.
#[derive(Debug)]
struct Change<T> {
    old: Arc<T>,
    new: Arc<T>,
    changed: Option<(T, T)>,
}

impl<T: Part> Change<T> {
    /// The two parts to compare and diff for `viewer`: what changed when
    /// that is known and holds for it, else the wholes.
    fn parts_for(&self, viewer: NodeId) -> (&T, &T) {
        match &self.changed {
            Some((a, b)) if T::reducible_for(&self.old, &self.new, viewer) => (a, b),
            _ => (&self.old, &self.new),
        }
    }
}

/// What changed between two parts, by the two parts' addresses: made
/// once for every session going from the one to the other.
#[derive(Debug)]
struct Pairs<T>(Mutex<HashMap<PairKey, Slot<Change<T>>>>);

/// Two parts' addresses, the older's first.
type PairKey = (usize, usize);

impl<T> Default for Pairs<T> {
    fn default() -> Self {
        Pairs(Mutex::default())
    }
}

impl<T: Part> Pairs<T> {
    /// What changed from `old` to `new`: made once, then shared by every
    /// session that goes from the one to the other.
    fn change(&self, old: &Arc<T>, new: &Arc<T>) -> Arc<Change<T>> {
        let key = (Arc::as_ptr(old) as usize, Arc::as_ptr(new) as usize);
        let slot = (self.0.lock().unwrap_or_else(|p| p.into_inner()))
            .entry(key)
            .or_default()
            .clone();
        slot.get_or_init(|| {
            Arc::new(Change {
                old: old.clone(),
                new: new.clone(),
                changed: T::without_common(old, new),
            })
        })
        .clone()
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

    /// The published ports of every service of `state` (which must be the
    /// state these parts were made from) that has any, by service ID:
    /// made once, then shared by every node's projection; those equal to
    /// the earlier ones are them.
    pub fn ports(&self, state: &State) -> &[Arc<PortParts>] {
        self.ports.get_or_init(|| {
            (PortParts::all(state).into_iter())
                .map(|parts| match self.earlier_ports.get(parts.id()) {
                    Some(earlier) if **earlier == parts => earlier.clone(),
                    _ => Arc::new(parts),
                })
                .collect()
        })
    }

    /// Each service's ports as last made, here or before.
    fn latest_ports(&self) -> HashMap<String, Arc<PortParts>> {
        match self.ports.get() {
            Some(made) => (made.iter())
                .map(|p| (p.id().to_string(), p.clone()))
                .collect(),
            None => self.earlier_ports.clone(),
        }
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
        changes: Pairs::default(),
        ports: OnceLock::new(),
        earlier_ports: HashMap::new(),
        port_changes: Pairs::default(),
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
        parts.earlier_ports = e.latest_ports();
        parts
            .earlier_ports
            .retain(|id, _| state.services.contains_key(id));
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

/// A node's config with its networks and published ports left in their
/// shared parts, which is what a session keeps of what it sent: with M
/// members on a network, each member's own copy of the network's lists
/// held O(M²) on the leader and cost O(M) per member to compare at every
/// store change, changed or not (and so did every node's copy of an
/// ingress-published service's replicas).
#[derive(Debug)]
pub struct Projected {
    node: NodeId,
    /// The config without networks, VXLAN sources or services' ports (its
    /// tasks' own `-p` ports only).
    pub config: pb::NodeConfig,
    /// The node's networks' parts, by network ID.
    networks: Vec<Arc<NetParts>>,
    /// The published ports' parts of every service that has any, by
    /// service ID.
    ports: Vec<Arc<PortParts>>,
}

/// What became of one part between two projections of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PartChange {
    Same,
    Changed,
    Added,
    Removed,
}

impl Projected {
    /// The whole config, networks and ports made for the node.
    pub fn whole(&self) -> pb::NodeConfig {
        pb::NodeConfig {
            networks: (self.networks.iter())
                .map(|n| n.config_for(self.node))
                .collect(),
            ports: self.whole_ports(),
            ..self.config.clone()
        }
    }

    /// The whole config's published ports.
    pub fn whole_ports(&self) -> Vec<pb::PublishedPortConfig> {
        let mut ports = self.config.ports.clone();
        ports.extend(self.ports.iter().flat_map(|p| p.config_for(self.node)));
        ports.sort_by(weft_proto::config_delta::port_cmp);
        ports
    }

    /// Whether the two configs differ in anything but their version
    /// ([`same_content`] of their wholes). A part that is the same `Arc`
    /// is not looked into, and of one that changed only what changed is
    /// (`shared`: the new config's, where changes are made once for all
    /// sessions).
    pub fn same_as(&self, other: &Projected, shared: &Shared) -> bool {
        let viewer = other.node;
        same_content(&self.config, &other.config)
            && (steps(&self.networks, &other.networks, &shared.changes, viewer).iter())
                .all(|c| c.what == PartChange::Same)
            && (steps(&self.ports, &other.ports, &shared.port_changes, viewer).iter())
                .all(|c| c.what == PartChange::Same)
    }

    /// `new` in place of `self`, which is the same ([`Projected::same_as`]),
    /// under `self`'s version: the node holds that version, and the
    /// session's next comparison starts from the newer parts.
    pub fn refresh(&mut self, mut new: Projected) {
        new.config.version = self.config.version;
        *self = new;
    }

    /// `self` (what a node holds) and `new`, as two configs that differ as
    /// the wholes do: networks that did not change are left without their
    /// lists on both sides, and of those that did only what changed is in
    /// them; services' ports that did not change are left out of both, and
    /// of those that did only the remote addresses that changed are in
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
        for step in steps(&self.networks, &new.networks, &shared.changes, new.node) {
            match (step.what, &step.old, &step.new, &step.change) {
                (PartChange::Changed, _, _, Some(change)) => {
                    let (a, b) = change.parts_for(new.node);
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
        for step in steps(&self.ports, &new.ports, &shared.port_changes, new.node) {
            match (step.what, &step.old, &step.new, &step.change) {
                (PartChange::Same, _, _, _) => {}
                (_, _, _, Some(change)) => {
                    let (a, b) = change.parts_for(new.node);
                    old_c.ports.extend(a.config_for(self.node));
                    new_c.ports.extend(b.config_for(new.node));
                }
                (_, a, b, None) => {
                    old_c
                        .ports
                        .extend(a.iter().flat_map(|a| a.config_for(self.node)));
                    new_c
                        .ports
                        .extend(b.iter().flat_map(|b| b.config_for(new.node)));
                }
            }
        }
        old_c.ports.sort_by(weft_proto::config_delta::port_cmp);
        new_c.ports.sort_by(weft_proto::config_delta::port_cmp);
        (old_c, new_c)
    }
}

/// The parts of `old` (the earlier) and `new`, each in order of its key,
/// walked by key, each with what became of it for `viewer`.
fn steps<T: Part>(
    old: &[Arc<T>],
    new: &[Arc<T>],
    pairs: &Pairs<T>,
    viewer: NodeId,
) -> Vec<Step<T>> {
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    let mut steps = Vec::new();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return steps,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.key().cmp(b.key()),
        };
        // The smaller key steps alone; equal keys step together.
        let step = match (
            old.next_if(|_| order.is_le()),
            new.next_if(|_| order.is_ge()),
        ) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => Step {
                what: PartChange::Same,
                old: Some(a.clone()),
                new: Some(b.clone()),
                change: None,
            },
            (Some(a), Some(b)) => {
                let change = pairs.change(a, b);
                let (x, y) = change.parts_for(viewer);
                let what = if x.same_for(y, viewer) {
                    PartChange::Same
                } else {
                    PartChange::Changed
                };
                Step {
                    what,
                    old: Some(a.clone()),
                    new: Some(b.clone()),
                    change: Some(change),
                }
            }
            (a, b) => Step {
                what: match (a, b) {
                    (Some(p), _) | (_, Some(p)) if p.shows_nothing_to(viewer) => PartChange::Same,
                    (Some(_), _) => PartChange::Removed,
                    _ => PartChange::Added,
                },
                old: a.cloned(),
                new: b.cloned(),
                change: None,
            },
        };
        steps.push(step);
    }
}

/// One part in [`steps`].
struct Step<T> {
    what: PartChange,
    old: Option<Arc<T>>,
    new: Option<Arc<T>>,
    /// What changed, for parts that are not the same `Arc`.
    change: Option<Arc<Change<T>>>,
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
        ports: task_ports(&mine),
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
        ports: shared.ports(state).to_vec(),
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

/// Ports published on a node by its tasks (`-p`); services' ports are in
/// their shared parts ([`PortParts`]).
fn task_ports(mine: &[&Task]) -> Vec<pb::PublishedPortConfig> {
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
        && a.ports == b.ports
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod projection_cost;
