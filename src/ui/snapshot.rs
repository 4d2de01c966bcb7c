//! What the page sees: the cluster's state as read from the control API,
//! cut down to an allow-list of fields.
//!
//! Every field the page gets is named in a struct below; nothing is
//! copied from the wire types wholesale. So join tokens, keys (the CA's,
//! nodes', WireGuard's, the autolock key), registry credentials, a
//! service's environment and command lines (where secrets are often
//! passed) and labels never reach the page, whatever the control API
//! answers with tomorrow. [`build`] is pure: the reads are in `watch.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;
use weft_proto::v1 as pb;

use crate::{commands, task_text};

/// A WireGuard session is rekeyed every 2 minutes while traffic flows and
/// dropped after 3 (REJECT_AFTER_TIME): a newest handshake older than this
/// means the peer's tunnel is not up.
pub const STALE_HANDSHAKE_MS: u64 = 180_000;

/// How many recent events the page shows.
pub const RECENT_EVENTS: usize = 50;

/// What one read of the control API gave.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// `ListNodes`.
    pub nodes: Vec<pb::Node>,
    /// `GetNetwork` (verbose) of every cluster network.
    pub networks: Vec<pb::NetworkDetail>,
    /// `ListServices`.
    pub services: Vec<pb::Service>,
    /// `ListTasks` of every node.
    pub tasks: Vec<pb::Task>,
}

/// The JSON of `/api/state` and of each `/api/events` message.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    /// When it was read (unix ms, this machine's clock).
    pub generated_ms: u64,
    /// Why the last read failed (the snapshot is then the one before it);
    /// empty when it did not.
    pub error: String,
    /// Every node, by hostname.
    pub nodes: Vec<NodeView>,
    /// Every cluster network, by name.
    pub networks: Vec<NetworkView>,
    /// Every service, by name.
    pub services: Vec<ServiceView>,
    /// Every task not yet ended, plus ended ones of the last read's
    /// services' history (as `service ps` lists them), by name.
    pub tasks: Vec<TaskView>,
    /// The newest events last.
    pub events: Vec<EventView>,
}

/// A node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    /// manager | worker | unknown.
    pub role: &'static str,
    pub leader: bool,
    /// Leader | Reachable | Unreachable | "" (workers).
    pub manager_status: &'static str,
    /// Ready | Down | Unknown.
    pub state: &'static str,
    pub state_message: String,
    /// Active | Pause | Drain.
    pub availability: &'static str,
    pub addr: String,
    /// RFC 3339.
    pub cert_expiry: String,
    pub version: String,
    /// The networks it is a peer of, by name.
    pub networks: Vec<String>,
    /// Behind on its network config, or its last apply failed.
    pub behind: bool,
    /// A peer of an encrypted network whose newest handshake is missing
    /// or older than [`STALE_HANDSHAKE_MS`].
    pub stale_handshake: bool,
}

/// A cluster network.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NetworkView {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// swarm | local (a node's own bridge network).
    pub scope: String,
    pub subnet: String,
    pub gateway: String,
    pub mtu: u32,
    /// The node whose underlay sets the MTU, or "explicit" (`--mtu`).
    pub mtu_limited_by: String,
    pub vni: u32,
    pub encrypted: bool,
    pub internal: bool,
    pub attachable: bool,
    pub ingress: bool,
    /// Its nodes, with how far each is on its config.
    pub peers: Vec<PeerView>,
    /// What is attached to it: tasks, and foreign runtimes' containers.
    pub endpoints: Vec<EndpointView>,
}

/// An endpoint on a network.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointView {
    /// The task's name, or the container's (a CNI or Docker container).
    pub name: String,
    /// The node it is on (hostname).
    pub node: String,
    pub ip: String,
}

/// A node's view of a network.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerView {
    pub node_id: String,
    pub hostname: String,
    /// The node's newest config version.
    pub config_version: u64,
    /// What it acknowledged applying.
    pub applied_version: u64,
    pub behind: u64,
    pub apply_error: String,
    /// Encrypted networks: its WireGuard tunnel address.
    pub tunnel_ip: String,
    /// Encrypted networks: ms since its newest handshake with any peer
    /// (`None`: never).
    pub handshake_age_ms: Option<u64>,
    /// Encrypted networks: no handshake, or an old one.
    pub stale_handshake: bool,
}

/// A service.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceView {
    pub id: String,
    pub name: String,
    /// replicated | global.
    pub mode: String,
    pub running: u64,
    pub desired: u64,
    pub image: String,
    pub endpoint_mode: String,
    pub vips: Vec<VipView>,
    pub ports: Vec<PortView>,
    /// A rolling update waiting, and on what.
    pub update_status: String,
}

/// A service's virtual IP on one network.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VipView {
    pub network: String,
    pub vip: String,
}

/// A published port.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PortView {
    pub protocol: String,
    pub published: u32,
    pub target: u32,
    pub mode: String,
}

/// A task.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskView {
    pub id: String,
    pub name: String,
    /// Its service's name; empty for a standalone task.
    pub service: String,
    pub node_id: String,
    pub hostname: String,
    /// running | shutdown.
    pub desired: &'static str,
    /// The state word (`running`, `failed`, …).
    pub state: &'static str,
    /// healthy | unhealthy | starting | "" (no health check).
    pub health: &'static str,
    /// Why it waits, or its error.
    pub error: String,
    /// NETWORK=IP.
    pub addresses: Vec<String>,
}

/// One event of the store.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventView {
    pub index: u64,
    pub time_ms: u64,
    /// cluster | node | network | service | task.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// create | update | remove | connect | disconnect.
    pub action: &'static str,
    pub id: String,
    /// The object's name, when the event says it.
    pub name: String,
}

impl EventView {
    /// The allowed fields of `e` (of its attributes, the name only).
    pub fn of(e: &pb::StoreEvent) -> EventView {
        let kind = match e.r#type() {
            pb::EventType::Cluster => "cluster",
            pb::EventType::Node => "node",
            pb::EventType::Network => "network",
            pb::EventType::Service => "service",
            pb::EventType::Task => "task",
            _ => "unknown",
        };
        let action = match e.action() {
            pb::EventAction::Create => "create",
            pb::EventAction::Update => "update",
            pb::EventAction::Remove => "remove",
            pb::EventAction::Connect => "connect",
            pb::EventAction::Disconnect => "disconnect",
            _ => "unknown",
        };
        EventView {
            index: e.index,
            time_ms: e.time_ms,
            kind,
            action,
            id: e.id.clone(),
            name: e.attributes.get("name").cloned().unwrap_or_default(),
        }
    }
}

/// The snapshot of `inputs` at `now_ms`, with `events` (oldest first).
pub fn build(inputs: &Inputs, events: &VecDeque<EventView>, now_ms: u64) -> Snapshot {
    let networks: Vec<NetworkView> = inputs
        .networks
        .iter()
        .filter_map(|d| {
            d.network
                .as_ref()
                .map(|n| network(n, &d.peers, &d.endpoints, now_ms))
        })
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .collect();
    let mut nodes: Vec<NodeView> = inputs.nodes.iter().map(|n| node(n, &networks)).collect();
    nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    let mut services: Vec<ServiceView> = inputs.services.iter().map(service).collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot {
        generated_ms: now_ms,
        error: String::new(),
        nodes,
        networks,
        services,
        tasks: tasks(inputs),
        events: events.iter().cloned().collect(),
    }
}

fn network(
    n: &pb::Network,
    peers: &[pb::PeerInfo],
    endpoints: &[pb::EndpointInfo],
    now_ms: u64,
) -> (String, NetworkView) {
    let mut peers: Vec<PeerView> = peers.iter().map(|p| peer(p, n, now_ms)).collect();
    peers.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    let mut endpoints: Vec<EndpointView> = endpoints.iter().map(endpoint).collect();
    endpoints.sort_by(|a, b| (&a.name, &a.ip).cmp(&(&b.name, &b.ip)));
    let view = NetworkView {
        id: n.id.clone(),
        name: n.name.clone(),
        driver: n.driver.clone(),
        scope: if n.scope.is_empty() {
            "swarm".into()
        } else {
            n.scope.clone()
        },
        // A dual-stack network's both subnets.
        subnet: [&n.subnet, &n.subnet6]
            .into_iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        gateway: n.gateway.clone(),
        mtu: n.mtu,
        mtu_limited_by: n.mtu_limited_by.clone(),
        vni: n.vni,
        encrypted: n.encrypted,
        internal: n.internal,
        attachable: n.attachable,
        ingress: n.ingress,
        peers,
        endpoints,
    };
    (format!("{}\0{}", n.name, n.id), view)
}

/// A task's endpoint, or a foreign container's (by its name, else its
/// runtime and short ID).
fn endpoint(e: &pb::EndpointInfo) -> EndpointView {
    let name = match &e.external {
        Some(x) if !x.container_name.is_empty() => x.container_name.clone(),
        Some(x) => format!(
            "{} {}",
            x.runtime,
            x.container_id.chars().take(12).collect::<String>()
        ),
        None => e.task_name.clone(),
    };
    EndpointView {
        name,
        node: e.hostname.clone(),
        ip: e.ip.clone(),
    }
}

fn peer(p: &pb::PeerInfo, n: &pb::Network, now_ms: u64) -> PeerView {
    let age = (n.encrypted && p.last_handshake_ms != 0)
        .then(|| now_ms.saturating_sub(p.last_handshake_ms));
    PeerView {
        node_id: p.node_id.clone(),
        hostname: p.hostname.clone(),
        config_version: p.config_version,
        applied_version: p.applied_version,
        behind: p.behind,
        apply_error: p.apply_error.clone(),
        tunnel_ip: p.tunnel_ip.clone(),
        handshake_age_ms: age,
        stale_handshake: n.encrypted && age.is_none_or(|a| a > STALE_HANDSHAKE_MS),
    }
}

fn node(n: &pb::Node, networks: &[NetworkView]) -> NodeView {
    let mine = || {
        networks
            .iter()
            .flat_map(|w| w.peers.iter().map(move |p| (w, p)))
            .filter(|(_, p)| p.node_id == n.id)
    };
    let manager_status = commands::manager_status_text(n.manager_status);
    NodeView {
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        role: commands::role_text(n.role),
        leader: n.manager_status == pb::ManagerStatus::Leader as i32,
        manager_status,
        state: commands::state_text(n.state),
        state_message: n.state_message.clone(),
        availability: commands::availability_text(n.availability),
        addr: n.addr.clone(),
        cert_expiry: n.cert_expiry.clone(),
        version: n.version.clone(),
        networks: mine().map(|(w, _)| w.name.clone()).collect(),
        behind: mine().any(|(_, p)| p.behind > 0 || !p.apply_error.is_empty()),
        stale_handshake: mine().any(|(_, p)| p.stale_handshake),
    }
}

fn service(s: &pb::Service) -> ServiceView {
    let spec = s.spec.clone().unwrap_or_default();
    ServiceView {
        id: s.id.clone(),
        name: spec.name,
        mode: spec.mode,
        running: s.running,
        desired: s.desired,
        image: spec.container.map(|c| c.image).unwrap_or_default(),
        endpoint_mode: spec.endpoint_mode,
        vips: s
            .vips
            .iter()
            .map(|v| VipView {
                network: v.network.clone(),
                vip: v.vip.clone(),
            })
            .collect(),
        ports: s
            .ports
            .iter()
            .map(|p| PortView {
                protocol: p.protocol.clone(),
                published: p.published,
                target: p.target,
                mode: p.mode.clone(),
            })
            .collect(),
        update_status: s.update_status.clone(),
    }
}

/// Every task: the services' (which name their service) and the
/// standalone ones of `ListTasks`, each once.
fn tasks(inputs: &Inputs) -> Vec<TaskView> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for s in &inputs.services {
        let name = s.spec.as_ref().map(|x| x.name.as_str()).unwrap_or_default();
        for t in &s.tasks {
            if seen.insert(t.id.clone()) {
                out.push(task(t, name));
            }
        }
    }
    for t in &inputs.tasks {
        if seen.insert(t.id.clone()) {
            out.push(task(t, ""));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    out
}

fn task(t: &pb::Task, service: &str) -> TaskView {
    let health = match t.status.as_ref().map(|s| s.health()) {
        Some(pb::TaskHealth::Healthy) => "healthy",
        Some(pb::TaskHealth::Unhealthy) => "unhealthy",
        Some(pb::TaskHealth::Starting) => "starting",
        _ => "",
    };
    TaskView {
        id: t.id.clone(),
        name: t.name.clone(),
        service: service.to_string(),
        node_id: t.node_id.clone(),
        hostname: t.hostname.clone(),
        desired: task_text::word(t.desired_state()),
        state: task_text::word(task_text::state(t)),
        health,
        error: task_text::error(t).to_string(),
        addresses: t
            .addresses
            .iter()
            .map(|a| format!("{}={}", a.network, a.ip))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
