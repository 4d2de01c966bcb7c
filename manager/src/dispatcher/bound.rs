//! How large a node's session message can get: [`config_bound`] is an
//! upper bound on the encoded size of the `SessionMessage` carrying the
//! `NodeConfig` that [`project`](super::projection::project) makes for
//! *any* node, for *any* placement of the tasks the services ask for.
//!
//! [`crate::limits::admit`] refuses a command that would push the bound
//! over [`crate::limits::MAX_NODE_CONFIG_BYTES`], so no node is ever sent a
//! config it cannot decode. The bound follows `project` field by field;
//! where `project` depends on placement or liveness the bound takes the
//! worst case:
//!
//! - every swarm network may be one the node has a task on;
//! - every task on a network is counted as a remote endpoint, a DNS name
//!   and (for services on it) a VIP backend, whether it runs here or not;
//! - all replicas of a replicated service may run on the node (one task of
//!   a global service), each with the larger of its current spec and the
//!   spec of its existing tasks (a rolling update is replacing them);
//! - a service counts as many tasks as it asks for or has, whichever is
//!   more;
//! - strings whose length is not known yet (addresses to be allocated,
//!   generated task names) take their longest form.
//!
//! The unit tests build states and check `bound >= encoded_len` of every
//! node's projection, so a field added to `project` without a term here
//! shows up as a failing test.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use prost::encoding::encoded_len_varint;

use crate::store::{Network, NodeId, PublishMode, Service, ServiceMode, State, Task, TaskSpec};

/// A length-delimited field (string, bytes, embedded message) of `n`
/// bytes with a one-byte key: every field of these messages is numbered
/// below 16.
fn ld(n: usize) -> usize {
    1 + encoded_len_varint(n as u64) + n
}

/// A varint field at its longest (key and ten bytes).
const VARINT: usize = 11;
/// A bool field.
const BOOL: usize = 2;
/// `02:42:0a:00:09:03`.
const MAC: usize = 17;
/// Task IDs are 16 hex digits ([`crate::validate::random_id`]).
const TASK_ID: usize = 16;
/// `node-` and a node ID: an ingress endpoint's remote entry.
const NODE_ENDPOINT_ID: usize = 21;
/// A service task's name is `SERVICE.SLOT.ID` or `SERVICE.NODE8.ID`; this
/// is the longest suffix (a 20-digit slot).
const SERVICE_TASK_SUFFIX: usize = 1 + 20 + 1 + TASK_ID;
/// `ingress`, the longest publish mode on the wire.
const MODE_TEXT: usize = 7;
/// `tcp` / `udp`.
const PROTO_TEXT: usize = 3;
/// `host` / `none`, the longest network mode on the wire.
const NETWORK_MODE_TEXT: usize = 4;
/// `eth` and at most two digits (a task has at most
/// [`crate::limits::MAX_NETWORKS_PER_TASK`] + 1 interfaces; longer names of
/// existing tasks are taken as they are).
const IFNAME: usize = 5;
/// `host:port` of a socket address at its longest over `ip` text
/// (`[` `]` around IPv6, `:` and five digits).
const SOCKET_EXTRA: usize = 8;

/// Longest text of an address of `net` (IPv6 without zone).
fn ip_text(net: &IpNetwork) -> usize {
    if net.is_ipv4() { 15 } else { 39 }
}

/// Longest `address/prefix` text of an address of `net`.
fn cidr_text(net: &IpNetwork) -> usize {
    ip_text(net) + if net.is_ipv4() { 3 } else { 4 }
}

/// What the bound needs from the cluster as a whole.
struct Ctx<'a> {
    state: &'a State,
    /// Longest data path address of a node (VTEPs, VXLAN sources).
    dpa: usize,
    gateway_subnet: IpNetwork,
    tunnel_subnet: IpNetwork,
    ingress: Option<&'a Network>,
}

/// Per service: tasks counted, and per network the tasks attached.
#[derive(Default)]
struct Existing<'a> {
    count: u64,
    on: BTreeMap<&'a str, u64>,
    /// Largest own-task cost among its existing tasks.
    own: usize,
}

/// An upper bound on the encoded size of the session message that carries
/// any node's config in `state` (see the module header). `0` before the
/// cluster exists.
pub fn config_bound(state: &State) -> usize {
    let Some(cluster) = state.cluster.as_ref() else {
        return 0;
    };
    let settings = &cluster.settings;
    let cx = Ctx {
        state,
        dpa: state
            .nodes
            .values()
            .map(|n| n.data_path_addr.len())
            .max()
            .unwrap_or(0),
        gateway_subnet: settings.gateway_subnet,
        tunnel_subnet: settings.tunnel_subnet,
        ingress: state.ingress_network(),
    };

    let mut existing: BTreeMap<&str, Existing> = BTreeMap::new();
    for t in state.tasks.values() {
        if let Some(r) = &t.service {
            let e = existing.entry(r.service.as_str()).or_default();
            e.count += 1;
            e.own = e.own.max(cx.task_config(t));
            for a in &t.attachments {
                *e.on.entry(a.network.as_str()).or_default() += 1;
            }
        }
    }
    let none = Existing::default();

    // Services: their tasks on this node, their published ports.
    let mut services_own = 0usize;
    let mut ports = 0usize;
    for svc in state.services.values() {
        let e = existing.get(svc.id.as_str()).unwrap_or(&none);
        let units = units(state, svc, e);
        let here = match svc.spec.mode {
            ServiceMode::Replicated { .. } => units,
            ServiceMode::Global => 1,
        };
        let own = cx.service_task_config(svc).max(e.own);
        services_own = services_own.saturating_add(ld(own).saturating_mul(here as usize));
        let entries =
            ld(ip_text(&cx.gateway_subnet).max(cx.ingress.map_or(0, |n| ip_text(&n.subnet))))
                .saturating_mul(units as usize);
        for _ in &svc.ports {
            ports = ports.saturating_add(ld(ld(PROTO_TEXT)
                + 2 * VARINT
                + entries
                + ld("service ".len() + svc.spec.name.len())));
        }
    }

    // Swarm networks: any of them may be one this node is on.
    let mut networks = 0usize;
    for net in state.networks.values().filter(|n| n.node.is_none()) {
        networks = networks.saturating_add(ld(cx.network_config(net, &existing)));
    }

    // Standalone tasks and local networks belong to one node: the worst one.
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| t.service.is_none()) {
        let port = ld(ld(PROTO_TEXT)
            + 2 * VARINT
            + ld(ip_text(&cx.gateway_subnet))
            + ld("task ".len() + t.name.len()));
        let cost = ld(cx.task_config(t)).saturating_add(port.saturating_mul(t.ports.len()));
        *per_node.entry(t.node).or_default() += cost;
    }
    for net in state.networks.values() {
        if let Some(n) = net.node {
            *per_node.entry(n).or_default() += ld(cx.network_config(net, &existing));
        }
    }
    let worst_node = per_node.values().copied().max().unwrap_or(0);

    let nodes = state.nodes.len();
    let wireguard = if state.networks.values().any(|n| n.encrypted) {
        let peers: usize = state
            .nodes
            .values()
            .map(|n| {
                ld(ld(TASK_ID)
                    + ld(n
                        .wg_public_key
                        .len()
                        .max(crate::limits::WG_PUBLIC_KEY_BYTES))
                    + ld(n.data_path_addr.len() + SOCKET_EXTRA)
                    + ld(ip_text(&cx.tunnel_subnet)))
            })
            .sum();
        ld(VARINT + ld(cidr_text(&cx.tunnel_subnet)) + VARINT + VARINT + peers)
    } else {
        0
    };
    let ingress_endpoint = cx.ingress.map_or(0, |n| {
        ld(ld(n.id.len()) + ld(cidr_text(&n.subnet)) + ld(MAC))
    });
    let config = VARINT // version
        + ld(cx.dpa) // vtep
        + VARINT // vxlan_port
        + ld(cx.gateway_subnet.to_string().len())
        + networks
        + services_own
        + worst_node
        + wireguard
        + nodes * ld(cx.dpa) // vxlan_allowed_sources
        + VARINT // wg_key_generation
        + ports
        + ingress_endpoint;
    let addr = state
        .nodes
        .values()
        .map(|n| n.addr.len())
        .max()
        .unwrap_or(0);
    // SessionMessage: manager list, leader, role, heartbeat period, config,
    // removed node IDs and manager node IDs (16 hex digits each).
    nodes * ld(addr)
        + ld(addr)
        + VARINT
        + VARINT
        + ld(config)
        + state.removed.len() * ld(16)
        + nodes * ld(16)
}

/// Tasks counted for a service: what it asks for, or what it has if more.
fn units(state: &State, svc: &Service, e: &Existing) -> u64 {
    crate::limits::service_units(state, svc).max(e.count)
}

impl Ctx<'_> {
    /// A `TaskConfig` of an existing task (without its length prefix).
    fn task_config(&self, t: &Task) -> usize {
        let attachments: usize = t
            .attachments
            .iter()
            .map(|a| {
                let cidr = self
                    .state
                    .networks
                    .get(&a.network)
                    .map_or(43, |n| cidr_text(&n.subnet));
                ld(ld(a.network.len()) + ld(cidr) + ld(MAC) + ld(a.ifname.len().max(IFNAME)))
            })
            .sum();
        ld(t.id.len())
            + ld(t.name.len())
            + self.spec(&t.spec)
            + attachments
            + self.gateway()
            + ld(NETWORK_MODE_TEXT)
            + t.ports.len() * port_mapping()
    }

    /// A `TaskConfig` of a task the service has yet to create.
    fn service_task_config(&self, svc: &Service) -> usize {
        let mut attachments: usize = svc
            .spec
            .networks
            .iter()
            .map(|id| {
                let cidr = self
                    .state
                    .networks
                    .get(id)
                    .map_or(43, |n| cidr_text(&n.subnet));
                ld(ld(id.len()) + ld(cidr) + ld(MAC) + ld(IFNAME))
            })
            .sum();
        if let Some(n) = self.ingress.filter(|_| has_ingress_ports(svc)) {
            attachments += ld(ld(n.id.len()) + ld(cidr_text(&n.subnet)) + ld(MAC) + ld(IFNAME));
        }
        ld(TASK_ID)
            + ld(svc.spec.name.len() + SERVICE_TASK_SUFFIX)
            + self.spec(&svc.spec.task)
            + attachments
            + self.gateway()
            + ld(NETWORK_MODE_TEXT)
    }

    /// Command, environment and container options (exact: `--mount`s
    /// alone may take 256 KiB a task).
    fn spec(&self, spec: &TaskSpec) -> usize {
        let container = crate::convert::container_to_wire(&spec.container)
            .map_or(0, |c| ld(prost::Message::encoded_len(&c)));
        container
            + spec.command.iter().map(|a| ld(a.len())).sum::<usize>()
            + spec
                .env
                .iter()
                .map(|(k, v)| ld(ld(k.len()) + ld(v.len())))
                .sum::<usize>()
    }

    /// Gateway address and MAC.
    fn gateway(&self) -> usize {
        ld(cidr_text(&self.gateway_subnet)) + ld(MAC)
    }

    /// A `NetworkConfig` (without its length prefix) with every task on
    /// the network counted as remote, named and (services) a backend.
    fn network_config(&self, net: &Network, existing: &BTreeMap<&str, Existing>) -> usize {
        let ip = ip_text(&net.subnet);
        let vtep = if net.encrypted {
            ip_text(&self.tunnel_subnet)
        } else {
            self.dpa
        };
        let remote = |id: usize| ld(ld(id) + ld(ip) + ld(MAC) + ld(vtep));
        // The ingress network resolves no names (a routing mesh only).
        let name = |n: usize| if net.ingress { 0 } else { ld(ld(n) + ld(ip)) };
        let mut body = ld(net.id.len())
            + ld(net.name.len())
            + VARINT // vni
            + ld(net.subnet.to_string().len())
            + ld(net.gateway.to_string().len())
            + VARINT // mtu
            + 3 * BOOL; // internal, encrypted, local
        for t in self.state.tasks.values().filter(|t| t.service.is_none()) {
            let on = t.attachments.iter().filter(|a| a.network == net.id).count();
            body += on * (remote(t.id.len()) + name(t.name.len()));
        }
        let none = Existing::default();
        for svc in self.state.services.values() {
            let e = existing.get(svc.id.as_str()).unwrap_or(&none);
            let member = svc.spec.networks.contains(&net.id);
            let via_ingress = net.ingress && has_ingress_ports(svc);
            let asked = if member || via_ingress {
                units(self.state, svc, e)
            } else {
                0
            };
            let n = asked.max(e.on.get(net.id.as_str()).copied().unwrap_or(0)) as usize;
            let task_name = svc.spec.name.len() + SERVICE_TASK_SUFFIX;
            body = body.saturating_add(n.saturating_mul(remote(TASK_ID) + name(task_name)));
            if member {
                // Its VIP entry with one backend per task.
                body = body.saturating_add(ld(ld(svc.spec.name.len())
                    + ld(ip)
                    + n.saturating_mul(ld(ip))));
            }
        }
        if net.ingress {
            body += self.state.nodes.len() * remote(NODE_ENDPOINT_ID);
        }
        body
    }
}

/// A `PortMapping` with its length prefix.
fn port_mapping() -> usize {
    ld(ld(PROTO_TEXT) + 2 * VARINT + ld(MODE_TEXT))
}

fn has_ingress_ports(svc: &Service) -> bool {
    svc.spec
        .ports
        .iter()
        .any(|p| p.mode == PublishMode::Ingress)
        || svc.ports.iter().any(|p| p.mode == PublishMode::Ingress)
}

#[cfg(test)]
mod tests;
