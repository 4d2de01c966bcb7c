//! One service's published ports as any node sees them: the ports' own
//! fields, the replicas that answer them on each node (`local`), and the
//! live replicas' ingress addresses (`remote`), made once per store state
//! ([`super::Shared::ports`]) and filtered for each node
//! ([`PortParts::config_for`]).
//!
//! Every node serves a port published through the ingress network and
//! forwards it to every other node's replicas, so every node's config
//! lists them all. Made for each session, that was a walk over every task,
//! and a few formatted and sorted addresses per replica, per node and
//! store change: at 4,990 nodes with a 499-replica service about 0.6 s of
//! the leader's CPU per change, and as much again to compare and diff them
//! (BENCHMARKS.md, "Scale"). What depends on the viewer is only which
//! entries it sees: its own replicas answer locally, the others' remotely.

use std::collections::HashMap;

use weft_proto::v1 as pb;

use super::{addrs_on, live, network::without_common};
use crate::store::{DesiredTaskState, NodeId, PublishMode, State, Task};

/// A service's published ports, for every viewer at once, each list in
/// the order a config holds it ([`weft_proto::config_delta::canonicalize`]),
/// so that a viewer's lists, filtered from them, need no sorting.
#[derive(Debug, Clone, PartialEq)]
pub struct PortParts {
    /// The service's ID: the order a node's parts are in.
    service: String,
    /// Each port's own fields (lists empty), with how it is published, in
    /// the service's order.
    heads: Vec<(pb::PublishedPortConfig, PublishMode)>,
    /// The gateway addresses of the replicas serving and desired running,
    /// by node, then address as text: a node's own answer its ports,
    /// whatever the store says of the node's liveness (as with its own
    /// tasks on a network, see [`super::NetParts`]).
    local: Vec<(NodeId, String)>,
    /// The live serving replicas' ingress addresses (both families), by
    /// address as text, then node; empty when no port goes through the
    /// ingress network or there is none.
    remote: Vec<(String, NodeId)>,
}

impl PortParts {
    /// The parts of every service of `state` that publishes a port, by
    /// service ID: one walk over the tasks for all of them.
    pub fn all(state: &State) -> Vec<PortParts> {
        let mut replicas: HashMap<&str, Vec<&Task>> = (state.services.values())
            .filter(|s| !s.ports.is_empty())
            .map(|s| (s.id.as_str(), Vec::new()))
            .collect();
        if replicas.is_empty() {
            return Vec::new();
        }
        for t in state.tasks.values() {
            if let Some(r) = &t.service
                && let Some(v) = replicas.get_mut(r.service.as_str())
                && t.status.state.is_serving()
                && t.desired == DesiredTaskState::Running
            {
                v.push(t);
            }
        }
        let ingress = state.ingress_network();
        let mut all: Vec<PortParts> = (state.services.values())
            .filter(|s| !s.ports.is_empty())
            .map(|svc| {
                let tasks = replicas.get(svc.id.as_str()).map_or(&[][..], Vec::as_slice);
                let heads = (svc.ports.iter())
                    .map(|p| {
                        let head = pb::PublishedPortConfig {
                            protocol: p.proto.as_str().into(),
                            port: p.published.into(),
                            target_port: p.target.into(),
                            local: Vec::new(),
                            remote: Vec::new(),
                            owner: format!("service {}", svc.spec.name),
                        };
                        (head, p.mode)
                    })
                    .collect::<Vec<_>>();
                let mut local: Vec<(NodeId, String)> = (tasks.iter())
                    .filter_map(|t| Some((t.node, t.gateway_ip?.to_string())))
                    .collect();
                local.sort();
                let through_ingress = heads.iter().any(|(_, m)| *m == PublishMode::Ingress);
                let mut remote: Vec<(String, NodeId)> = match ingress {
                    Some(net) if through_ingress => (tasks.iter())
                        .filter(|t| live(state, t))
                        .flat_map(|t| {
                            addrs_on(t, net)
                                .into_iter()
                                .map(|ip| (ip.to_string(), t.node))
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                remote.sort();
                PortParts {
                    service: svc.id.clone(),
                    heads,
                    local,
                    remote,
                }
            })
            .collect();
        all.sort_by(|a, b| a.service.cmp(&b.service));
        all
    }

    /// The service's ID.
    pub(super) fn id(&self) -> &str {
        &self.service
    }

    /// The ports as `viewer` gets them: each with its own replicas'
    /// gateway addresses and, through the ingress network, the other
    /// nodes' replicas' ingress addresses; a host-mode port only where a
    /// replica runs.
    pub fn config_for(&self, viewer: NodeId) -> Vec<pb::PublishedPortConfig> {
        let local: Vec<String> = self.local_for(viewer).cloned().collect();
        (self.heads.iter())
            .filter(|(_, mode)| *mode != PublishMode::Host || !local.is_empty())
            .map(|(head, mode)| pb::PublishedPortConfig {
                local: local.clone(),
                remote: match mode {
                    PublishMode::Ingress => self.remote_for(viewer).cloned().collect(),
                    PublishMode::Host => Vec::new(),
                },
                ..head.clone()
            })
            .collect()
    }

    fn local_for(&self, viewer: NodeId) -> impl Iterator<Item = &String> {
        let start = self.local.partition_point(|(n, _)| *n < viewer);
        (self.local[start..].iter())
            .take_while(move |(n, _)| *n == viewer)
            .map(|(_, ip)| ip)
    }

    fn remote_for(&self, viewer: NodeId) -> impl Iterator<Item = &String> {
        (self.remote.iter())
            .filter(move |(_, n)| *n != viewer)
            .map(|(ip, _)| ip)
    }
}

impl super::Part for PortParts {
    fn key(&self) -> &str {
        self.id()
    }

    /// Whether `viewer` gets the same ports from these parts and `other`,
    /// walked without a copy when the ports' own fields are the same (the
    /// remote addresses are empty unless a port goes through the ingress
    /// network, so then equal lists are equal ports). A port more or less
    /// on the hosts is no change where no replica runs.
    fn same_for(&self, other: &Self, viewer: NodeId) -> bool {
        if self.heads != other.heads {
            return self.config_for(viewer) == other.config_for(viewer);
        }
        self.local_for(viewer).eq(other.local_for(viewer))
            && self.remote_for(viewer).eq(other.remote_for(viewer))
    }

    /// `old` and `new`, parts of one service, with their remote addresses
    /// each without those the other has the same (on the same node):
    /// made once per pair of versions, they let each viewer compare and
    /// diff the addresses that changed only. Their own fields and local
    /// addresses stay whole (a node has a few), so a viewer's ports made
    /// from the two differ exactly as those made from `old` and `new` do.
    /// `None` when the ports' own fields differ (they go whole) or a list
    /// is not strictly in order.
    fn without_common(old: &PortParts, new: &PortParts) -> Option<(PortParts, PortParts)> {
        if old.heads != new.heads || old.service != new.service {
            return None;
        }
        let (remote_old, remote_new) = without_common(&old.remote, &new.remote, |(addr, node)| {
            (addr.as_str(), *node)
        })?;
        let part = |p: &PortParts, remote| PortParts {
            service: p.service.clone(),
            heads: p.heads.clone(),
            local: p.local.clone(),
            remote,
        };
        Some((part(old, remote_old), part(new, remote_new)))
    }

    /// Whether `viewer` gets none of these ports: all published on the
    /// hosts, and no replica there.
    fn shows_nothing_to(&self, viewer: NodeId) -> bool {
        (self.heads.iter()).all(|(_, mode)| *mode == PublishMode::Host)
            && self.local_for(viewer).next().is_none()
    }
}
