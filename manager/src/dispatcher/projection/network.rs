//! One network's part of a node's config as any node sees it: its own
//! fields, its live endpoints, other nodes' ingress endpoints, its
//! services' backends and aliases and its names, made once per store state
//! ([`super::Shared::network`]) and filtered for each node
//! ([`NetParts::config_for`]).
//!
//! Every member's config lists the whole network, so making these lists
//! for each session (a node lookup and a few formatted addresses per
//! entry) cost O(M²) per store change for a network of M members: at
//! 4,990 nodes with a 499-replica service, 0.75 ms per member and 0.38 s
//! per change (BENCHMARKS.md, "Scale"). What depends on the viewer is only
//! which entries it sees: not its own endpoints, and its own tasks even
//! while the store has its node down. A node that was marked down while
//! its daemon restarted gets its config before the heartbeat that marks it
//! ready again; leaving its own tasks out of that config made its resolver
//! answer "no such name" for them for a moment.
//!
//! Parts equal to a network's parts at an earlier version are that
//! version's, shared ([`super::Shared`]): a session that holds them knows
//! by pointer that the network did not change, without a look at its
//! lists.

use std::net::IpAddr;

use weft_proto::v1 as pb;

use super::{live, network_mtu};
use crate::store::ipam::{mac_for, mac_text};
use crate::store::{DesiredTaskState, Network, NodeId, NodeState, State};

/// An entry of the lists, with the node it is on and whether the store
/// has that node up: a viewer sees entries that are live, and its own.
#[derive(Debug, Clone, PartialEq)]
struct Entry<T> {
    node: NodeId,
    live: bool,
    item: T,
}

impl<T> Entry<T> {
    fn seen_by(&self, viewer: NodeId) -> bool {
        self.live || self.node == viewer
    }
}

/// A remote endpoint, with the node it is on, and whether it is that
/// node's own (its ingress endpoint) rather than a task's.
#[derive(Debug, Clone, PartialEq)]
struct Remote {
    node: NodeId,
    of_node: bool,
    endpoint: pb::RemoteEndpoint,
}

/// A service on the network, for every viewer.
#[derive(Debug, Clone, PartialEq)]
struct Service {
    /// Its name and VIPs, without backends.
    head: pb::ServiceEndpoint,
    /// Its serving replicas' addresses, in numeric order, and as text.
    backends: Vec<Entry<(IpAddr, String)>>,
    /// Its aliases on this network (`--network-alias`).
    aliases: Vec<String>,
}

impl Service {
    fn backends_for(&self, viewer: NodeId) -> impl Iterator<Item = &String> {
        (self.backends.iter())
            .filter(move |b| b.seen_by(viewer))
            .map(|b| &b.item.1)
    }

    /// The records of the service's aliases that `viewer` gets, in order.
    fn alias_records(&self, viewer: NodeId) -> Vec<pb::NameRecord> {
        let ep = pb::ServiceEndpoint {
            backends: self.backends_for(viewer).cloned().collect(),
            ..self.head.clone()
        };
        let mut out = Vec::new();
        aliases(&self.aliases, &ep, &mut out);
        out.sort_by(|a, b| (&a.name, &a.ip).cmp(&(&b.name, &b.ip)));
        out
    }
}

/// `net`'s part of a config, for every viewer at once, each list in the
/// order a config holds it ([`weft_proto::config_delta::canonicalize`]),
/// so that a viewer's lists, filtered from them, need no sorting.
#[derive(Debug, PartialEq)]
pub struct NetParts {
    /// The network's own fields (MTU included), with empty lists.
    head: pb::NetworkConfig,
    /// Whether the network resolves names (the default bridge does not,
    /// as on docker0, nor does the ingress network, a routing mesh only,
    /// as Docker's).
    resolves: bool,
    /// Live tasks' endpoints and nodes' ingress endpoints, by task ID (a
    /// viewer sees other nodes' only, and nodes' own only if it is a
    /// member).
    remote: Vec<Remote>,
    /// The nodes with a task on the network desired running or not ended
    /// yet, in order.
    /// Only they get the other nodes' own endpoints: a replica answers a
    /// request the routing mesh brought from another node's ingress
    /// endpoint, while a node without one only forwards to replicas. At
    /// 5,000 nodes every node listing every other's was 5,000 entries
    /// per config, and one more for every config at every join.
    members: Vec<NodeId>,
    /// The network's services, by name.
    services: Vec<Service>,
    /// Name records of the tasks desired running, by name and address.
    names: Vec<Entry<pb::NameRecord>>,
}

impl NetParts {
    /// The parts of `net` in `state`.
    pub fn new(state: &State, net: &Network) -> NetParts {
        let mut remote = remote(state, net);
        remote.extend(node_remote(state, net));
        remote.sort_by(|a, b| a.endpoint.task_id.cmp(&b.endpoint.task_id));
        // A task stopping keeps its namespace until it ended: replies to
        // what was forwarded to it still need the other nodes' endpoints.
        let mut members: Vec<NodeId> = (state.tasks.values())
            .filter(|t| t.desired == DesiredTaskState::Running || !t.status.state.is_terminal())
            .filter(|t| t.attachments.iter().any(|a| a.network == net.id))
            .map(|t| t.node)
            .collect();
        members.sort_unstable();
        members.dedup();
        let mut services = services(state, net);
        services.sort_by(|a, b| a.head.name.cmp(&b.head.name));
        let mut names = names(state, net);
        names.sort_by(|a, b| (&a.item.name, &a.item.ip).cmp(&(&b.item.name, &b.item.ip)));
        let head = pb::NetworkConfig {
            subnet6: (net.ipv6.as_ref().map(|v| v.subnet.to_string())).unwrap_or_default(),
            gateway6: (net.ipv6.as_ref().map(|v| v.gateway.to_string())).unwrap_or_default(),
            local: net.node.is_some(),
            id: net.id.clone(),
            name: net.name.clone(),
            vni: net.vni,
            subnet: net.subnet.to_string(),
            gateway: net.gateway.to_string(),
            mtu: network_mtu(state, net).0,
            internal: net.internal,
            remote: Vec::new(),
            services: Vec::new(),
            names: Vec::new(),
            encrypted: net.encrypted,
        };
        NetParts {
            head,
            resolves: !(net.ingress
                || net.node.is_some() && net.name == crate::store::DEFAULT_BRIDGE),
            remote,
            members,
            services,
            names,
        }
    }

    /// The network's ID.
    pub(super) fn id(&self) -> &str {
        &self.head.id
    }

    /// The network's own fields, with empty lists.
    pub(super) fn head(&self) -> pb::NetworkConfig {
        self.head.clone()
    }

    /// The network as `viewer` gets it: other nodes' tasks and ingress
    /// endpoints, the services with the backends it sees, and the names
    /// with the services' aliases (none on the default bridge), each
    /// list in its canonical order.
    pub fn config_for(&self, viewer: NodeId) -> pb::NetworkConfig {
        let services: Vec<pb::ServiceEndpoint> = (self.services.iter())
            .map(|s| pb::ServiceEndpoint {
                backends: s.backends_for(viewer).cloned().collect(),
                ..s.head.clone()
            })
            .collect();
        let names = if self.resolves {
            let mut names: Vec<pb::NameRecord> = self.names_for(viewer).cloned().collect();
            let plain = names.len();
            for (svc, ep) in self.services.iter().zip(&services) {
                aliases(&svc.aliases, ep, &mut names);
            }
            if names.len() > plain {
                names.sort_by(|a, b| (&a.name, &a.ip).cmp(&(&b.name, &b.ip)));
            }
            names
        } else {
            Vec::new()
        };
        pb::NetworkConfig {
            remote: self.remote_for(viewer).cloned().collect(),
            services,
            names,
            ..self.head.clone()
        }
    }

    fn remote_for(&self, viewer: NodeId) -> impl Iterator<Item = &pb::RemoteEndpoint> {
        let member = self.is_member(viewer);
        (self.remote.iter())
            .filter(move |r| r.node != viewer && (member || !r.of_node))
            .map(|r| &r.endpoint)
    }

    /// Whether `viewer` has a task on the network desired running or not
    /// ended yet.
    fn is_member(&self, viewer: NodeId) -> bool {
        self.members.binary_search(&viewer).is_ok()
    }

    fn names_for(&self, viewer: NodeId) -> impl Iterator<Item = &pb::NameRecord> {
        (self.names.iter())
            .filter(move |n| n.seen_by(viewer))
            .map(|n| &n.item)
    }
}

impl super::Part for NetParts {
    fn key(&self) -> &str {
        self.id()
    }

    /// Whether `viewer` gets the same network from these parts and
    /// `other`, walked without a copy. Services' aliases are compared as
    /// the records the viewer gets of them when their lists differ (a
    /// dnsrr service with no backend the viewer sees gives none).
    fn same_for(&self, other: &Self, viewer: NodeId) -> bool {
        self.head == other.head
            && self.resolves == other.resolves
            && self.remote_for(viewer).eq(other.remote_for(viewer))
            && self.services.len() == other.services.len()
            && (self.services.iter().zip(&other.services)).all(|(a, b)| {
                a.head == b.head
                    && a.backends_for(viewer).eq(b.backends_for(viewer))
                    && (a.aliases == b.aliases
                        || !self.resolves
                        || a.alias_records(viewer) == b.alias_records(viewer))
            })
            && (!self.resolves || self.names_for(viewer).eq(other.names_for(viewer)))
    }

    /// `old` and `new`, parts of one network, each without the entries
    /// the other has the same: made once per pair of versions, they let
    /// each viewer compare and diff what changed only, rather than the
    /// network's every entry. An entry left out is in both, the same and
    /// seen alike by every viewer, so a viewer's networks made from the
    /// two differ exactly as those made from `old` and `new` do, and a
    /// delta made from them ([`weft_proto::config_delta::diff`]) is that
    /// of the wholes. A service whose own fields or aliases changed is
    /// kept whole on both sides, since its aliases' records follow its
    /// backends.
    ///
    /// `None` when that cannot be said: the network's own fields differ
    /// (it goes whole), a list is not strictly in order (the whole diff
    /// refuses it), or a record of a service's alias could be one of the
    /// names (a duplicate the whole diff would refuse).
    fn without_common(old: &Self, new: &Self) -> Option<(Self, Self)> {
        if old.head != new.head || old.resolves != new.resolves {
            return None;
        }
        let alias_names: std::collections::HashSet<String> = (old.services.iter())
            .chain(&new.services)
            .flat_map(|s| &s.aliases)
            .flat_map(|a| [a.clone(), format!("tasks.{a}")])
            .collect();
        if !alias_names.is_empty()
            && (old.names.iter())
                .chain(&new.names)
                .any(|n| alias_names.contains(&n.item.name))
        {
            return None;
        }
        let (remote_old, remote_new) =
            without_common(&old.remote, &new.remote, |r| r.endpoint.task_id.as_str())?;
        let (names_old, names_new) = without_common(&old.names, &new.names, |n| {
            (n.item.name.as_str(), n.item.ip.as_str())
        })?;
        let (mut services_old, mut services_new) = (Vec::new(), Vec::new());
        let (mut a, mut b) = (
            old.services.iter().peekable(),
            new.services.iter().peekable(),
        );
        strictly_ordered(&old.services, |s| s.head.name.as_str())?;
        strictly_ordered(&new.services, |s| s.head.name.as_str())?;
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.head.name.cmp(&y.head.name),
            };
            match order {
                std::cmp::Ordering::Less => services_old.extend(a.next().cloned()),
                std::cmp::Ordering::Greater => services_new.extend(b.next().cloned()),
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next()?, b.next()?);
                    if x.head != y.head || x.aliases != y.aliases {
                        services_old.push(x.clone());
                        services_new.push(y.clone());
                        continue;
                    }
                    let (bx, by) = without_common(&x.backends, &y.backends, |e| e.item.0)?;
                    if bx.is_empty() && by.is_empty() {
                        continue;
                    }
                    let keep = |s: &Service, backends| Service {
                        head: s.head.clone(),
                        backends,
                        aliases: s.aliases.clone(),
                    };
                    services_old.push(keep(x, bx));
                    services_new.push(keep(y, by));
                }
            }
        }
        let part = |p: &NetParts, remote, services, names| NetParts {
            head: p.head.clone(),
            resolves: p.resolves,
            remote,
            members: p.members.clone(),
            services,
            names,
        };
        Some((
            part(old, remote_old, services_old, names_old),
            part(new, remote_new, services_new, names_new),
        ))
    }

    /// A node that became a member sees the other nodes' own endpoints
    /// (or stopped seeing them), those left out too.
    fn reducible_for(old: &Self, new: &Self, viewer: NodeId) -> bool {
        old.is_member(viewer) == new.is_member(viewer)
    }
}

/// `a` and `b`, lists in strict order by `key`, each without the items
/// the other has the same at the same key; `None` if either is not in
/// strict order by `key`.
pub(super) fn without_common<'a, T: Clone + PartialEq, K: Ord>(
    a: &'a [T],
    b: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Option<(Vec<T>, Vec<T>)> {
    strictly_ordered(a, &key)?;
    strictly_ordered(b, &key)?;
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match key(&a[i]).cmp(&key(&b[j])) {
            std::cmp::Ordering::Less => {
                only_a.push(a[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                only_b.push(b[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if a[i] != b[j] {
                    only_a.push(a[i].clone());
                    only_b.push(b[j].clone());
                }
                i += 1;
                j += 1;
            }
        }
    }
    only_a.extend_from_slice(&a[i..]);
    only_b.extend_from_slice(&b[j..]);
    Some((only_a, only_b))
}

/// `Some` if `items` are in strict order by `key`.
fn strictly_ordered<'a, T, K: Ord>(items: &'a [T], key: impl Fn(&'a T) -> K) -> Option<()> {
    items
        .windows(2)
        .all(|w| key(&w[0]) < key(&w[1]))
        .then_some(())
}

/// A service's aliases as name records, added to `out`: `ALIAS` answers
/// what the service's name does (its VIP, or its tasks in dnsrr mode) and
/// `tasks.ALIAS` its tasks, as with Docker's service aliases.
fn aliases(aliases: &[String], ep: &pb::ServiceEndpoint, out: &mut Vec<pb::NameRecord>) {
    let direct: Vec<&String> = if ep.vip.is_empty() {
        ep.backends.iter().collect()
    } else {
        std::iter::once(&ep.vip)
            .chain(Some(&ep.vip6).filter(|v| !v.is_empty()))
            .collect()
    };
    for alias in aliases {
        let tasks = format!("tasks.{alias}");
        out.extend(direct.iter().map(|ip| pb::NameRecord {
            name: alias.clone(),
            ip: (*ip).clone(),
        }));
        out.extend(ep.backends.iter().map(|ip| pb::NameRecord {
            name: tasks.clone(),
            ip: ip.clone(),
        }));
    }
}

/// Live tasks' endpoints on `net`, through WireGuard tunnel addresses
/// when it is encrypted.
fn remote(state: &State, net: &Network) -> Vec<Remote> {
    state
        .tasks
        .values()
        .filter(|t| live(state, t))
        .flat_map(|t| {
            t.attachments
                .iter()
                .filter(|a| a.network == net.id)
                .map(move |a| (t, a))
        })
        .filter_map(|(t, a)| {
            let peer = state.nodes.get(&t.node)?;
            // Encrypted: the VTEP is the peer's tunnel address, so VXLAN
            // travels inside WireGuard; a peer without a key yet is
            // unreachable rather than reached in the clear.
            let vtep = if net.encrypted {
                if peer.wg_public_key.is_empty() {
                    return None;
                }
                peer.tunnel_ip?.to_string()
            } else {
                peer.data_path_addr.clone()
            };
            Some(Remote {
                node: t.node,
                of_node: false,
                endpoint: pb::RemoteEndpoint {
                    ip6: a.ip6.map(|ip| ip.to_string()).unwrap_or_default(),
                    task_id: t.id.clone(),
                    ip: a.ip.to_string(),
                    mac: mac_text(mac_for(a.ip)),
                    vtep,
                },
            })
        })
        .collect()
}

/// Nodes' ingress endpoints on `net` (replicas answer them), of nodes with
/// a data path address, down ones too. A down node's endpoint is kept
/// until the node is removed (its address stays allocated to it): it
/// costs an unused forwarding entry on each member, where leaving it out
/// made every down mark, and every return, a config change for every
/// node with a replica on the ingress network, though nothing a live node
/// sends depends on it (a reply goes to it only for a connection that came
/// in through it).
fn node_remote(state: &State, net: &Network) -> Vec<Remote> {
    let mut out = Vec::new();
    for (n, ip) in &net.node_endpoints {
        if let Some(peer) = state.nodes.get(n)
            && !peer.data_path_addr.is_empty()
        {
            out.push(Remote {
                node: *n,
                of_node: true,
                endpoint: pb::RemoteEndpoint {
                    ip6: (net.node_endpoints6.get(n))
                        .map(IpAddr::to_string)
                        .unwrap_or_default(),
                    task_id: format!("node-{n}"),
                    ip: ip.to_string(),
                    mac: mac_text(mac_for(*ip)),
                    vtep: peer.data_path_addr.clone(),
                },
            });
        }
    }
    out
}

/// Whether the store has `node` up (a task there is live if desired
/// running).
pub(super) fn up(state: &State, node: NodeId) -> bool {
    state
        .nodes
        .get(&node)
        .is_some_and(|n| n.state != NodeState::Down)
}

/// The services on `net`, each with its serving replicas' addresses there
/// (both families), sorted by address, and its aliases there.
fn services(state: &State, net: &Network) -> Vec<Service> {
    state
        .services
        .values()
        .filter(|s| s.spec.networks.contains(&net.id))
        .map(|svc| {
            let mut backends: Vec<(IpAddr, NodeId, bool)> = state
                .tasks
                .values()
                .filter(|t| {
                    t.service.as_ref().is_some_and(|r| r.service == svc.id)
                        && t.status.state.is_serving()
                        && t.desired == DesiredTaskState::Running
                })
                .filter_map(|t| {
                    let a = t.attachments.iter().find(|a| a.network == net.id)?;
                    Some((t, a))
                })
                .flat_map(|(t, a)| {
                    let live = up(state, t.node);
                    std::iter::once(a.ip)
                        .chain(a.ip6)
                        .map(move |ip| (ip, t.node, live))
                })
                .collect();
            backends.sort();
            let ep = pb::ServiceEndpoint {
                vip6: (svc.vips6.get(&net.id))
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                name: svc.spec.name.clone(),
                vip: svc
                    .vips
                    .get(&net.id)
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                backends: Vec::new(),
            };
            let backends = backends
                .into_iter()
                .map(|(ip, node, live)| Entry {
                    node,
                    live,
                    item: (ip, ip.to_string()),
                })
                .collect();
            Service {
                head: ep,
                backends,
                aliases: (svc.spec.network_aliases.get(&net.id).cloned()).unwrap_or_default(),
            }
        })
        .collect()
}

/// Name records of the tasks desired running on `net`: each task's name
/// and aliases, for each of its addresses there.
fn names(state: &State, net: &Network) -> Vec<Entry<pb::NameRecord>> {
    let mut out = Vec::new();
    for t in state
        .tasks
        .values()
        .filter(|t| t.desired == DesiredTaskState::Running)
    {
        let Some(a) = t.attachments.iter().find(|a| a.network == net.id) else {
            continue;
        };
        let live = up(state, t.node);
        let ips: Vec<String> = std::iter::once(a.ip)
            .chain(a.ip6)
            .map(|ip| ip.to_string())
            .collect();
        for name in std::iter::once(&t.name).chain(&a.aliases) {
            for ip in &ips {
                out.push(Entry {
                    node: t.node,
                    live,
                    item: pb::NameRecord {
                        name: name.clone(),
                        ip: ip.clone(),
                    },
                });
            }
        }
    }
    out
}
