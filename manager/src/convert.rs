//! Store types to wire types and back. One conversion per type; validation
//! of what comes in from the wire happens here, once.

use weft_proto::v1 as pb;

use crate::store::ipam::{mac_for, mac_text};
use crate::store::{
    Availability, NetworkMode, Node, NodeState, PortMapping, PortProto, PortRequest, PublishMode,
    Role, State, Task,
};

/// A published port on the wire.
pub fn port_to_wire(p: &PortMapping) -> pb::PortMapping {
    pb::PortMapping {
        protocol: p.proto.as_str().into(),
        published: p.published.into(),
        target: p.target.into(),
        mode: match p.mode {
            PublishMode::Ingress => "ingress".into(),
            PublishMode::Host => "host".into(),
        },
    }
}

/// A publish request from the wire, checked: protocol, port range, mode.
pub fn port_from_wire(p: &pb::PortMapping) -> Result<PortRequest, String> {
    let proto = match p.protocol.as_str() {
        "" | "tcp" => PortProto::Tcp,
        "udp" => PortProto::Udp,
        other => return Err(format!("invalid protocol {other:?}: use tcp or udp")),
    };
    let port = |what: &str, v: u32, zero_ok: bool| -> Result<u16, String> {
        match u16::try_from(v) {
            Ok(0) if zero_ok => Ok(0),
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{what} port {v} is outside 1-65535")),
        }
    };
    let mode = match p.mode.as_str() {
        "" | "ingress" => PublishMode::Ingress,
        "host" => PublishMode::Host,
        other => {
            return Err(format!(
                "invalid publish mode {other:?}: use ingress or host"
            ));
        }
    };
    Ok(PortRequest {
        proto,
        published: port("published", p.published, true)?,
        target: port("target", p.target, false)?,
        mode,
    })
}

/// `""`, `host` or `none`.
pub fn network_mode_text(m: NetworkMode) -> &'static str {
    match m {
        NetworkMode::Attached => "",
        NetworkMode::Host => "host",
        NetworkMode::None => "none",
    }
}

impl From<Role> for pb::NodeRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Worker => pb::NodeRole::Worker,
            Role::Manager => pb::NodeRole::Manager,
        }
    }
}

impl From<Role> for weft_proto::identity::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Worker => weft_proto::identity::Role::Worker,
            Role::Manager => weft_proto::identity::Role::Manager,
        }
    }
}

impl From<weft_proto::identity::Role> for Role {
    fn from(r: weft_proto::identity::Role) -> Self {
        match r {
            weft_proto::identity::Role::Worker => Role::Worker,
            weft_proto::identity::Role::Manager => Role::Manager,
        }
    }
}

/// Wire role to store role; `UNSPECIFIED` is an input error.
pub fn role_from_wire(r: i32) -> Option<Role> {
    match pb::NodeRole::try_from(r).ok()? {
        pb::NodeRole::Worker => Some(Role::Worker),
        pb::NodeRole::Manager => Some(Role::Manager),
        pb::NodeRole::Unspecified => None,
    }
}

impl From<Availability> for pb::Availability {
    fn from(a: Availability) -> Self {
        match a {
            Availability::Active => pb::Availability::Active,
            Availability::Pause => pb::Availability::Pause,
            Availability::Drain => pb::Availability::Drain,
        }
    }
}

/// Wire availability to store availability; `UNSPECIFIED` means "unchanged".
pub fn availability_from_wire(a: i32) -> Option<Availability> {
    match pb::Availability::try_from(a).ok()? {
        pb::Availability::Active => Some(Availability::Active),
        pb::Availability::Pause => Some(Availability::Pause),
        pb::Availability::Drain => Some(Availability::Drain),
        pb::Availability::Unspecified => None,
    }
}

impl From<NodeState> for pb::NodeState {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Unknown => pb::NodeState::Unknown,
            NodeState::Ready => pb::NodeState::Ready,
            NodeState::Down => pb::NodeState::Down,
        }
    }
}

/// A store node on the wire. `manager_status` and `raft_voter` come from
/// Raft, not the store, so the caller supplies them.
pub fn node_to_wire(n: &Node, manager_status: pb::ManagerStatus, raft_voter: bool) -> pb::Node {
    pb::Node {
        id: n.id.to_string(),
        hostname: n.hostname.clone(),
        role: pb::NodeRole::from(n.role) as i32,
        availability: pb::Availability::from(n.availability) as i32,
        labels: n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        state: pb::NodeState::from(n.state) as i32,
        state_message: n.state_message.clone(),
        addr: n.addr.clone(),
        data_path_addr: n.data_path_addr.clone(),
        manager_status: manager_status as i32,
        raft_voter,
        created_at_ms: n.created_at_ms,
        updated_at_ms: n.updated_at_ms,
        cert_expiry: n.cert_expiry.clone(),
        underlay_mtu: u64::from(n.underlay_mtu),
    }
}

/// A store task on the wire, with network names and node host name.
pub fn task_to_wire(state: &State, t: &Task) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        name: t.name.clone(),
        node_id: t.node.to_string(),
        hostname: state
            .nodes
            .get(&t.node)
            .map(|n| n.hostname.clone())
            .unwrap_or_default(),
        command: t.spec.command.clone(),
        addresses: t
            .attachments
            .iter()
            .map(|a| pb::TaskAddress {
                network: state
                    .networks
                    .get(&a.network)
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| a.network.clone()),
                ip: a.ip.to_string(),
                mac: mac_text(mac_for(a.ip)),
            })
            .collect(),
        desired_state: match t.desired {
            crate::store::DesiredTaskState::Running => "running".into(),
            crate::store::DesiredTaskState::Shutdown => "shutdown".into(),
        },
        state: t.status.state.clone(),
        message: t.status.message.clone(),
        has_exit_code: t.status.exit_code.is_some(),
        exit_code: t.status.exit_code.unwrap_or(0),
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.status.updated_at_ms,
        ports: t.ports.iter().map(port_to_wire).collect(),
        network_mode: network_mode_text(t.network_mode).into(),
    }
}

/// A store service on the wire, with its tasks and VIPs.
pub fn service_to_wire(state: &State, svc: &crate::store::Service) -> pb::Service {
    use crate::store::{EndpointMode, RestartCondition, ServiceMode};
    let tasks: Vec<pb::Task> = state
        .tasks
        .values()
        .filter(|t| t.service.as_ref().is_some_and(|r| r.service == svc.id))
        .map(|t| task_to_wire(state, t))
        .collect();
    let running = tasks.iter().filter(|t| t.state == "running").count() as u64;
    let (mode, replicas, desired) = match svc.spec.mode {
        ServiceMode::Replicated { replicas } => ("replicated", replicas, replicas),
        ServiceMode::Global => {
            let eligible = state
                .nodes
                .values()
                .filter(|n| crate::orchestrator::eligible(n, svc))
                .count() as u64;
            ("global", 0, eligible)
        }
    };
    let net_name = |id: &String| {
        state
            .networks
            .get(id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| id.clone())
    };
    pb::Service {
        id: svc.id.clone(),
        spec: Some(pb::ServiceSpecMsg {
            name: svc.spec.name.clone(),
            mode: mode.into(),
            replicas,
            command: svc.spec.task.command.clone(),
            env: svc.spec.task.env.clone().into_iter().collect(),
            container: container_to_wire(&svc.spec.task.container),
            networks: svc.spec.networks.iter().map(net_name).collect(),
            endpoint_mode: match svc.spec.endpoint_mode {
                EndpointMode::Vip => "vip".into(),
                EndpointMode::Dnsrr => "dnsrr".into(),
            },
            constraints: svc.spec.constraints.iter().map(|c| c.to_string()).collect(),
            restart_condition: match svc.spec.restart {
                RestartCondition::Any => "any".into(),
                RestartCondition::OnFailure => "on-failure".into(),
                RestartCondition::None => "none".into(),
            },
            ports: svc
                .spec
                .ports
                .iter()
                .map(|p| {
                    port_to_wire(&PortMapping {
                        proto: p.proto,
                        published: p.published,
                        target: p.target,
                        mode: p.mode,
                    })
                })
                .collect(),
        }),
        ports: svc.ports.iter().map(port_to_wire).collect(),
        vips: svc
            .vips
            .iter()
            .map(|(n, ip)| pb::ServiceVip {
                network: net_name(n),
                vip: ip.to_string(),
            })
            .collect(),
        running,
        desired,
        version: svc.version,
        created_at_ms: svc.created_at_ms,
        updated_at_ms: svc.updated_at_ms,
        tasks,
    }
}

/// A request's container options, checked (see
/// [`crate::validate::container`]); `None` when the task is a host process.
pub fn container_from_wire(
    c: Option<pb::ContainerConfig>,
    command: &[String],
) -> crate::error::Result<Option<crate::store::ContainerOpts>> {
    let Some(c) = c else {
        return Ok(None);
    };
    let opts = crate::store::ContainerOpts {
        image: c.image,
        entrypoint: c.has_entrypoint.then_some(c.entrypoint),
        workdir: Some(c.workdir).filter(|w| !w.is_empty()),
        user: Some(c.user).filter(|u| !u.is_empty()),
        read_only: c.read_only,
    };
    crate::validate::container(&opts, command)?;
    Ok(Some(opts))
}

/// The wire form of a task's container options.
pub fn container_to_wire(c: &Option<crate::store::ContainerOpts>) -> Option<pb::ContainerConfig> {
    c.as_ref().map(|c| pb::ContainerConfig {
        image: c.image.clone(),
        has_entrypoint: c.entrypoint.is_some(),
        entrypoint: c.entrypoint.clone().unwrap_or_default(),
        workdir: c.workdir.clone().unwrap_or_default(),
        user: c.user.clone().unwrap_or_default(),
        read_only: c.read_only,
    })
}
