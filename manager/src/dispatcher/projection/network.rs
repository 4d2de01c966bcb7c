//! One network's lists as any node sees them: its live endpoints, other
//! nodes' ingress endpoints, its services' backends and its names, made
//! once per store state ([`super::Shared::network`]) and filtered for each
//! node ([`NetParts::remote_for`], [`NetParts::services_for`],
//! [`NetParts::names_for`]).
//!
//! Every member's config lists the whole network, so making these lists
//! for each session (a node lookup and a few formatted addresses per
//! entry) cost O(M²) per store change for a network of M members: at
//! 4,990 nodes with a 499-replica service, 0.75 ms per member and 0.38 s
//! per change (BENCHMARKS.md, "Scale"). What depends on the viewer is only
//! which entries it sees: not its own endpoints, and its own tasks even
//! while the store has its node down (see [`super::live_for`]).

use std::net::IpAddr;

use weft_proto::v1 as pb;

use super::{live, network_mtu};
use crate::store::ipam::{mac_for, mac_text};
use crate::store::{DesiredTaskState, Network, NodeId, NodeState, State};

/// An entry of the lists, with the node it is on and whether the store
/// has that node up: a viewer sees entries that are live, and its own.
#[derive(Debug)]
struct Entry<T> {
    node: NodeId,
    live: bool,
    item: T,
}

impl<T: Clone> Entry<T> {
    fn seen_by(&self, viewer: NodeId) -> Option<T> {
        (self.live || self.node == viewer).then(|| self.item.clone())
    }
}

/// `net`'s lists, for every viewer at once, each in the order a config
/// holds it ([`weft_proto::config_delta::canonicalize`]), so that a
/// viewer's lists, filtered from them, need no sorting.
#[derive(Debug)]
pub struct NetParts {
    /// Live tasks' endpoints and nodes' ingress endpoints, by task ID (a
    /// viewer sees other nodes' only).
    remote: Vec<(NodeId, pb::RemoteEndpoint)>,
    /// Each service on the network, without its backends, and those.
    services: Vec<(pb::ServiceEndpoint, Vec<Entry<String>>)>,
    /// Name records of the tasks desired running.
    names: Vec<Entry<pb::NameRecord>>,
    mtu: u32,
}

impl NetParts {
    /// The lists of `net` in `state`.
    pub fn new(state: &State, net: &Network) -> NetParts {
        let mut remote = remote(state, net);
        remote.extend(node_remote(state, net));
        remote.sort_by(|(_, a), (_, b)| a.task_id.cmp(&b.task_id));
        let mut services = services(state, net);
        services.sort_by(|(a, _), (b, _)| a.name.cmp(&b.name));
        let mut names = names(state, net);
        names.sort_by(|a, b| (&a.item.name, &a.item.ip).cmp(&(&b.item.name, &b.item.ip)));
        NetParts {
            remote,
            services,
            names,
            mtu: network_mtu(state, net).0,
        }
    }

    /// The network's remote endpoints as `viewer` gets them: other nodes'
    /// tasks and ingress endpoints.
    pub fn remote_for(&self, viewer: NodeId) -> Vec<pb::RemoteEndpoint> {
        self.remote
            .iter()
            .filter(|(n, _)| *n != viewer)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The network's services as `viewer` gets them.
    pub fn services_for(&self, viewer: NodeId) -> Vec<pb::ServiceEndpoint> {
        self.services
            .iter()
            .map(|(ep, backends)| pb::ServiceEndpoint {
                backends: backends.iter().filter_map(|b| b.seen_by(viewer)).collect(),
                ..ep.clone()
            })
            .collect()
    }

    /// Task names and aliases as `viewer` gets them (tasks sharing an
    /// alias give one record each).
    pub fn names_for(&self, viewer: NodeId) -> Vec<pb::NameRecord> {
        self.names
            .iter()
            .filter_map(|n| n.seen_by(viewer))
            .collect()
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }
}

/// Live tasks' endpoints on `net`, through WireGuard tunnel addresses
/// when it is encrypted.
fn remote(state: &State, net: &Network) -> Vec<(NodeId, pb::RemoteEndpoint)> {
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
            Some((
                t.node,
                pb::RemoteEndpoint {
                    ip6: a.ip6.map(|ip| ip.to_string()).unwrap_or_default(),
                    task_id: t.id.clone(),
                    ip: a.ip.to_string(),
                    mac: mac_text(mac_for(a.ip)),
                    vtep,
                },
            ))
        })
        .collect()
}

/// Nodes' ingress endpoints on `net` (replicas answer them), of nodes up
/// and with a data path address.
fn node_remote(state: &State, net: &Network) -> Vec<(NodeId, pb::RemoteEndpoint)> {
    let mut out = Vec::new();
    for (n, ip) in &net.node_endpoints {
        if let Some(peer) = state.nodes.get(n)
            && peer.state != NodeState::Down
            && !peer.data_path_addr.is_empty()
        {
            out.push((
                *n,
                pb::RemoteEndpoint {
                    ip6: (net.node_endpoints6.get(n))
                        .map(IpAddr::to_string)
                        .unwrap_or_default(),
                    task_id: format!("node-{n}"),
                    ip: ip.to_string(),
                    mac: mac_text(mac_for(*ip)),
                    vtep: peer.data_path_addr.clone(),
                },
            ));
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
/// (both families), sorted by address.
fn services(state: &State, net: &Network) -> Vec<(pb::ServiceEndpoint, Vec<Entry<String>>)> {
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
                    item: ip.to_string(),
                })
                .collect();
            (ep, backends)
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
