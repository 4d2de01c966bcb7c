//! Store types to wire types and back. One conversion per type; validation
//! of what comes in from the wire happens here, once.

use weft_proto::v1 as pb;

use crate::store::ipam::{mac_for, mac_text};
use crate::store::{
    Availability, DesiredTaskState, NetworkMode, Node, NodeState, PortMapping, PortProto,
    PortRequest, PublishMode, Role, State, Task, TaskHealth, TaskState, TaskStatus,
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

/// Published ports from the wire, each checked by [`port_from_wire`]; the
/// first bad one is the error.
pub fn ports_from_wire(ports: &[pb::PortMapping]) -> crate::error::Result<Vec<PortRequest>> {
    ports
        .iter()
        .map(port_from_wire)
        .collect::<Result<Vec<_>, _>>()
        .map_err(crate::error::Error::InvalidInput)
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
        resources: Some(pb::NodeResources {
            nano_cpus: n.resources.nano_cpus,
            memory_bytes: n.resources.memory_bytes,
        }),
        version: n.version.clone(),
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
                ip6: a.ip6.map(|ip| ip.to_string()).unwrap_or_default(),
                network: state
                    .networks
                    .get(&a.network)
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| a.network.clone()),
                ip: a.ip.to_string(),
                mac: mac_text(mac_for(a.ip)),
                aliases: a.aliases.clone(),
            })
            .collect(),
        desired_state: match t.desired {
            DesiredTaskState::Running => pb::TaskState::Running,
            DesiredTaskState::Shutdown => pb::TaskState::Shutdown,
        }
        .into(),
        status: Some(task_status_to_wire(&t.status)),
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.status.updated_at_ms,
        ports: t.ports.iter().map(port_to_wire).collect(),
        network_mode: network_mode_text(t.network_mode).into(),
        external: t
            .spec
            .external
            .as_ref()
            .map(crate::dispatcher::external::external_to_wire),
        service_version: t.service.as_ref().map_or(0, |r| r.version),
    }
}

/// A task the scheduler could place nowhere, as `service ps` shows it: no
/// ID (it is not in the store), its slot's name, pending with the reason.
fn unplaced_task_to_wire(
    state: &State,
    svc: &crate::store::Service,
    slot: u64,
    node: Option<crate::store::NodeId>,
    why: String,
) -> pb::Task {
    let host = node.and_then(|n| state.nodes.get(&n));
    pb::Task {
        name: match host {
            Some(n) => format!("{}.{}", svc.spec.name, &n.id.to_string()[..8]),
            None => format!("{}.{slot}", svc.spec.name),
        },
        node_id: node.map(|n| n.to_string()).unwrap_or_default(),
        hostname: host.map(|n| n.hostname.clone()).unwrap_or_default(),
        command: svc.spec.task.command.clone(),
        desired_state: pb::TaskState::Running.into(),
        status: Some(pb::TaskStatus {
            state: pb::TaskState::Pending.into(),
            reason: why,
            ..Default::default()
        }),
        service_version: svc.version,
        ..Default::default()
    }
}

/// A task's observed state on the wire.
pub fn task_status_to_wire(s: &TaskStatus) -> pb::TaskStatus {
    let mut out = pb::TaskStatus {
        message: s.message.clone(),
        ..Default::default()
    };
    let state = match &s.state {
        TaskState::New => pb::TaskState::New,
        TaskState::Pending { reason } => {
            out.reason = reason.clone();
            pb::TaskState::Pending
        }
        TaskState::Pulling => pb::TaskState::Pulling,
        TaskState::Starting => pb::TaskState::Starting,
        TaskState::Running { health } => {
            out.set_health(match health {
                TaskHealth::None => pb::TaskHealth::Unspecified,
                TaskHealth::Starting => pb::TaskHealth::Starting,
                TaskHealth::Healthy => pb::TaskHealth::Healthy,
                TaskHealth::Unhealthy => pb::TaskHealth::Unhealthy,
            });
            pb::TaskState::Running
        }
        TaskState::Exited { code, oom } => {
            out.has_exit_code = code.is_some();
            out.exit_code = code.unwrap_or(0);
            out.oom_killed = *oom;
            pb::TaskState::Exited
        }
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Rejected => pb::TaskState::Rejected,
        TaskState::Shutdown => pb::TaskState::Shutdown,
    };
    out.set_state(state);
    out
}

/// A node's report of a task's state from the wire, checked: a known state
/// and health; texts cut to the report bound. Stamped `now_ms`.
pub fn task_status_from_wire(s: &pb::TaskStatus, now_ms: u64) -> Result<TaskStatus, String> {
    let cut = |t: &str| crate::limits::cut_report(t.to_string());
    let state = match pb::TaskState::try_from(s.state) {
        Ok(pb::TaskState::New) => TaskState::New,
        Ok(pb::TaskState::Pending) => TaskState::Pending {
            reason: cut(&s.reason),
        },
        Ok(pb::TaskState::Pulling) => TaskState::Pulling,
        Ok(pb::TaskState::Starting) => TaskState::Starting,
        Ok(pb::TaskState::Running) => TaskState::Running {
            health: match pb::TaskHealth::try_from(s.health) {
                Ok(pb::TaskHealth::Unspecified) => TaskHealth::None,
                Ok(pb::TaskHealth::Starting) => TaskHealth::Starting,
                Ok(pb::TaskHealth::Healthy) => TaskHealth::Healthy,
                Ok(pb::TaskHealth::Unhealthy) => TaskHealth::Unhealthy,
                Err(_) => return Err(format!("unknown task health {}", s.health)),
            },
        },
        Ok(pb::TaskState::Exited) => TaskState::Exited {
            code: s.has_exit_code.then_some(s.exit_code),
            oom: s.oom_killed,
        },
        Ok(pb::TaskState::Failed) => TaskState::Failed,
        Ok(pb::TaskState::Rejected) => TaskState::Rejected,
        Ok(pb::TaskState::Shutdown) => TaskState::Shutdown,
        Ok(pb::TaskState::Unspecified) | Err(_) => {
            return Err(format!("unknown task state {}", s.state));
        }
    };
    Ok(TaskStatus {
        state,
        message: cut(&s.message),
        updated_at_ms: now_ms,
    })
}

/// A store service on the wire, with its tasks and VIPs.
pub fn service_to_wire(state: &State, svc: &crate::store::Service) -> pb::Service {
    let mine: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| t.service.as_ref().is_some_and(|r| r.service == svc.id))
        .collect();
    let running = mine.iter().filter(|t| t.status.state.is_running()).count() as u64;
    let mut tasks: Vec<pb::Task> = mine.iter().map(|t| task_to_wire(state, t)).collect();
    tasks.extend(
        crate::orchestrator::unplaced(state, svc)
            .into_iter()
            .map(|(slot, node, why)| unplaced_task_to_wire(state, svc, slot, node, why)),
    );
    let desired = crate::orchestrator::desired(state, svc);
    let net_name = |id: &String| network_name(state, id);
    pb::Service {
        id: svc.id.clone(),
        spec: Some(spec_to_wire(state, &svc.spec)),
        previous_spec: svc.previous_spec.as_ref().map(|p| spec_to_wire(state, p)),
        ports: svc.ports.iter().map(port_to_wire).collect(),
        update_status: crate::orchestrator::update_waits_on(state, svc).unwrap_or_default(),
        update: svc.update_status.as_ref().map(update_status_to_wire),
        // Which registry only: the credentials never leave but to nodes.
        registry_auth_for: svc
            .spec
            .registry_auth
            .as_ref()
            .map(|a| a.registry.clone())
            .unwrap_or_default(),
        vips: svc
            .vips
            .iter()
            .map(|(n, ip)| pb::ServiceVip {
                vip6: (svc.vips6.get(n))
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
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

/// `--update-*` (or, `rollback`, `--rollback-*`) from the wire onto `p`:
/// each field given replaces `p`'s, checked.
pub fn update_policy_from_wire(
    p: &mut crate::store::UpdatePolicy,
    u: Option<&pb::UpdatePolicy>,
    rollback: bool,
) -> crate::error::Result<()> {
    use crate::error::Error::InvalidInput;
    use crate::store::{FailureAction, UpdateOrder};
    const MAX_DELAY_MS: u64 = 24 * 3600 * 1000;
    let Some(u) = u else {
        return Ok(());
    };
    let flag = if rollback { "--rollback" } else { "--update" };
    if let Some(n) = u.parallelism {
        if n > crate::limits::MAX_REPLICAS {
            return Err(InvalidInput(format!(
                "{flag}-parallelism {n} is over the limit of {} tasks",
                crate::limits::MAX_REPLICAS
            )));
        }
        p.parallelism = n;
    }
    for (name, given, field) in [
        ("delay", u.delay_ms, &mut p.delay_ms),
        ("monitor", u.monitor_ms, &mut p.monitor_ms),
    ] {
        if let Some(d) = given {
            if d > MAX_DELAY_MS {
                return Err(InvalidInput(format!(
                    "{flag}-{name} {d}ms is over the limit of 24h"
                )));
            }
            *field = d;
        }
    }
    if let Some(o) = &u.order {
        p.order = match o.as_str() {
            "stop-first" => UpdateOrder::StopFirst,
            "start-first" => UpdateOrder::StartFirst,
            other => {
                return Err(InvalidInput(format!(
                    "{flag}-order {other:?}: use stop-first or start-first"
                )));
            }
        };
    }
    if let Some(a) = &u.failure_action {
        p.failure_action = match a.as_str() {
            "pause" => FailureAction::Pause,
            "continue" => FailureAction::Continue,
            "rollback" if !rollback => FailureAction::Rollback,
            other => {
                let choices = if rollback {
                    "pause or continue"
                } else {
                    "pause, continue or rollback"
                };
                return Err(InvalidInput(format!(
                    "{flag}-failure-action {other:?}: use {choices}"
                )));
            }
        };
    }
    if let Some(r) = u.max_failure_ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(InvalidInput(format!(
                "{flag}-max-failure-ratio {r}: give a number from 0 to 1"
            )));
        }
        // In [0, 1]: the product is in [0, 1e6].
        p.max_failure_ratio_ppm = (r * 1_000_000.0).round() as u32;
    }
    Ok(())
}

/// An update policy as the control API shows it.
fn update_policy_to_wire(p: &crate::store::UpdatePolicy) -> pb::UpdatePolicy {
    pb::UpdatePolicy {
        parallelism: Some(p.parallelism),
        delay_ms: Some(p.delay_ms),
        order: Some(p.order.as_str().into()),
        failure_action: Some(p.failure_action.as_str().into()),
        monitor_ms: Some(p.monitor_ms),
        max_failure_ratio: Some(f64::from(p.max_failure_ratio_ppm) / 1_000_000.0),
    }
}

/// A service's update status as the control API shows it.
fn update_status_to_wire(st: &crate::store::UpdateStatus) -> pb::UpdateStatusMsg {
    pb::UpdateStatusMsg {
        state: st.state.as_str().into(),
        started_at_ms: st.started_at_ms,
        completed_at_ms: st.completed_at_ms,
        message: st.message.clone(),
        failures: st.failures.len() as u64,
    }
}

/// A network's name, or `id` when it is gone.
fn network_name(state: &State, id: &String) -> String {
    state
        .networks
        .get(id)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| id.clone())
}

/// A service spec as the control API shows it (network names, not IDs).
fn spec_to_wire(state: &State, spec: &crate::store::ServiceSpec) -> pb::ServiceSpecMsg {
    use crate::store::{EndpointMode, RestartCondition, ServiceMode};
    let (mode, replicas) = match spec.mode {
        ServiceMode::Replicated { replicas } => ("replicated", replicas),
        ServiceMode::Global => ("global", 0),
    };
    let net_name = |id: &String| network_name(state, id);
    pb::ServiceSpecMsg {
        name: spec.name.clone(),
        mode: mode.into(),
        replicas,
        command: spec.task.command.clone(),
        env: spec.task.env.clone().into_iter().collect(),
        container: container_to_wire(&spec.task.container),
        stop: stop_to_wire(&spec.task.stop),
        resources: resources_to_wire(&spec.task.resources),
        restart_policy: restart_policy_to_wire(&spec.restart_policy),
        log: log_to_wire(spec.task.log),
        health: health_to_wire(&spec.task.health),
        labels: spec.labels.clone().into_iter().collect(),
        update: Some(update_policy_to_wire(&spec.update)),
        rollback: Some(update_policy_to_wire(&spec.rollback)),
        registry_auth: None,
        networks: spec.networks.iter().map(net_name).collect(),
        network_aliases: spec
            .network_aliases
            .iter()
            .map(|(id, aliases)| pb::NetworkAliases {
                network: net_name(id),
                aliases: aliases.clone(),
            })
            .collect(),
        endpoint_mode: match spec.endpoint_mode {
            EndpointMode::Vip => "vip".into(),
            EndpointMode::Dnsrr => "dnsrr".into(),
        },
        constraints: spec.constraints.iter().map(|c| c.to_string()).collect(),
        restart_condition: match spec.restart {
            RestartCondition::Any => "any".into(),
            RestartCondition::OnFailure => "on-failure".into(),
            RestartCondition::None => "none".into(),
        },
        ports: spec
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
        cap_add: caps("--cap-add", &c.cap_add)?,
        cap_drop: caps("--cap-drop", &c.cap_drop)?,
        seccomp_unconfined: c.seccomp_unconfined,
        no_new_privileges: c.no_new_privileges,
        mounts: weft_proto::isolation::mounts_from_wire(&c.mounts)
            .map_err(|e| crate::error::Error::InvalidInput(e.to_string()))?,
        hostname: Some(c.hostname).filter(|h| !h.is_empty()),
        open_stdin: c.open_stdin,
        tty: c.tty,
        attach_wait: c.attach_wait,
        tty_size: c.tty_size.map(|z| (z.width, z.height)),
    };
    if let Some(both) = opts.cap_add.iter().find(|n| opts.cap_drop.contains(n)) {
        return Err(crate::error::Error::InvalidInput(format!(
            "{both} is both in --cap-add and --cap-drop: give it once"
        )));
    }
    crate::validate::container(&opts, command)?;
    Ok(Some(opts))
}

/// A `--cap-add`/`--cap-drop` list from the wire, checked and canonical.
fn caps(flag: &'static str, names: &[String]) -> crate::error::Result<Vec<String>> {
    weft_proto::isolation::capabilities(flag, names)
        .map_err(|e| crate::error::Error::InvalidInput(e.to_string()))
}

/// A stop policy from the wire, checked.
pub fn stop_from_wire(p: Option<pb::StopPolicy>) -> crate::error::Result<crate::store::StopPolicy> {
    let Some(p) = p else {
        return Ok(crate::store::StopPolicy::default());
    };
    let out = crate::store::StopPolicy {
        signal: (p.signal != 0).then_some(p.signal),
        grace_ms: p.has_grace.then_some(p.grace_ms),
    };
    crate::validate::stop_policy(&out)?;
    Ok(out)
}

/// The wire form of a stop policy (`None` when it is the default).
pub fn stop_to_wire(p: &crate::store::StopPolicy) -> Option<pb::StopPolicy> {
    (!p.is_default()).then(|| pb::StopPolicy {
        signal: p.signal.unwrap_or(0),
        has_grace: p.grace_ms.is_some(),
        grace_ms: p.grace_ms.unwrap_or(0),
    })
}

/// A request's limits and reservations, checked (see
/// [`crate::validate::resources`]); absent is none.
pub fn resources_from_wire(
    r: Option<pb::Resources>,
    container: bool,
) -> crate::error::Result<crate::store::Resources> {
    let r = r.unwrap_or_default();
    let res = crate::store::Resources {
        limit_nano_cpus: r.limit_nano_cpus,
        limit_memory_bytes: r.limit_memory_bytes,
        limit_pids: r.limit_pids,
        reserve_nano_cpus: r.reserve_nano_cpus,
        reserve_memory_bytes: r.reserve_memory_bytes,
    };
    crate::validate::resources(&res, container)?;
    Ok(res)
}

/// The wire form of a task's resources; absent when there are none.
pub fn resources_to_wire(r: &crate::store::Resources) -> Option<pb::Resources> {
    (!r.is_none()).then_some(pb::Resources {
        limit_nano_cpus: r.limit_nano_cpus,
        limit_memory_bytes: r.limit_memory_bytes,
        limit_pids: r.limit_pids,
        reserve_nano_cpus: r.reserve_nano_cpus,
        reserve_memory_bytes: r.reserve_memory_bytes,
    })
}

/// A request's restart delay, attempts and window, checked (see
/// [`crate::validate::restart_policy`]); absent is the default.
pub fn restart_policy_from_wire(
    p: Option<pb::RestartPolicy>,
) -> crate::error::Result<crate::store::RestartPolicy> {
    let p = p.unwrap_or_default();
    let policy = crate::store::RestartPolicy {
        delay_ms: p.has_delay.then_some(p.delay_ms),
        max_attempts: p.max_attempts,
        window_ms: p.window_ms,
    };
    crate::validate::restart_policy(&policy)?;
    Ok(policy)
}

/// The wire form of a service's restart policy; absent when default.
pub fn restart_policy_to_wire(p: &crate::store::RestartPolicy) -> Option<pb::RestartPolicy> {
    (!p.is_default()).then_some(pb::RestartPolicy {
        has_delay: p.delay_ms.is_some(),
        delay_ms: p.delay_ms.unwrap_or(0),
        max_attempts: p.max_attempts,
        window_ms: p.window_ms,
    })
}

/// Applies `service update`'s resource changes to `r` (fields given
/// replace, 0 is none) and checks the result.
pub fn update_resources(
    r: &mut crate::store::Resources,
    u: &pb::ResourcesUpdate,
    container: bool,
) -> crate::error::Result<()> {
    let set = |field: &mut u64, v: Option<u64>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(&mut r.limit_nano_cpus, u.limit_nano_cpus);
    set(&mut r.limit_memory_bytes, u.limit_memory_bytes);
    set(&mut r.limit_pids, u.limit_pids);
    set(&mut r.reserve_nano_cpus, u.reserve_nano_cpus);
    set(&mut r.reserve_memory_bytes, u.reserve_memory_bytes);
    crate::validate::resources(r, container)
}

/// Applies `service update`'s restart-policy changes to `p` and checks
/// the result.
pub fn update_restart_policy(
    p: &mut crate::store::RestartPolicy,
    u: &pb::RestartPolicyUpdate,
) -> crate::error::Result<()> {
    if let Some(d) = u.delay_ms {
        p.delay_ms = Some(d);
    }
    p.max_attempts = u.max_attempts.unwrap_or(p.max_attempts);
    p.window_ms = u.window_ms.unwrap_or(p.window_ms);
    crate::validate::restart_policy(p)
}

/// A request's `--log-opt`, checked (see [`crate::validate::log`]).
pub fn log_from_wire(
    l: Option<pb::LogConfig>,
) -> std::result::Result<Option<crate::store::LogOpts>, crate::error::Error> {
    let Some(l) = l else { return Ok(None) };
    let opts = crate::store::LogOpts {
        max_size: l.max_size,
        max_file: l.max_file,
    };
    crate::validate::log(&opts)?;
    Ok(Some(opts))
}

/// The wire form of a task's `--log-opt`.
pub fn log_to_wire(l: Option<crate::store::LogOpts>) -> Option<pb::LogConfig> {
    l.map(|l| pb::LogConfig {
        max_size: l.max_size,
        max_file: l.max_file,
    })
}

/// A request's health check, checked (see [`crate::validate::health`]);
/// `None`: the image's applies.
pub fn health_from_wire(
    h: Option<pb::HealthConfig>,
    container: bool,
) -> crate::error::Result<Option<crate::store::HealthOpts>> {
    let Some(h) = h else { return Ok(None) };
    let opts = crate::store::HealthOpts {
        disable: h.disable,
        cmd: Some(h.cmd).filter(|c| !c.is_empty()),
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        retries: h.retries,
        start_period_ms: h.start_period_ms,
    };
    crate::validate::health(&opts, container)?;
    Ok(Some(opts))
}

/// The wire form of a task's health check.
pub fn health_to_wire(h: &Option<crate::store::HealthOpts>) -> Option<pb::HealthConfig> {
    h.as_ref().map(|h| pb::HealthConfig {
        disable: h.disable,
        cmd: h.cmd.clone().unwrap_or_default(),
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        retries: h.retries,
        start_period_ms: h.start_period_ms,
    })
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
        cap_add: c.cap_add.clone(),
        cap_drop: c.cap_drop.clone(),
        seccomp_unconfined: c.seccomp_unconfined,
        no_new_privileges: c.no_new_privileges,
        mounts: c.mounts.iter().map(pb::MountConfig::from).collect(),
        hostname: c.hostname.clone().unwrap_or_default(),
        open_stdin: c.open_stdin,
        tty: c.tty,
        attach_wait: c.attach_wait,
        tty_size: c
            .tty_size
            .map(|(width, height)| pb::TtySize { width, height }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_options_are_checked_at_the_edge() {
        let ok = pb::ContainerConfig {
            image: "busybox".into(),
            cap_add: vec!["net_admin".into()],
            cap_drop: vec!["ALL".into()],
            mounts: vec![pb::MountConfig {
                kind: pb::MountKind::Tmpfs as i32,
                target: "/t".into(),
                ..Default::default()
            }],
            hostname: "web-1".into(),
            ..Default::default()
        };
        let got = container_from_wire(Some(ok.clone()), &[]).unwrap().unwrap();
        assert_eq!(got.cap_add, ["CAP_NET_ADMIN"]);
        assert_eq!(got.mounts.len(), 1);
        assert_eq!(
            container_to_wire(&Some(got.clone())).unwrap().cap_add,
            ["CAP_NET_ADMIN"]
        );
        for bad in [
            pb::ContainerConfig {
                cap_add: vec!["CAP_FLY".into()],
                ..ok.clone()
            },
            pb::ContainerConfig {
                cap_add: vec!["CHOWN".into()],
                cap_drop: vec!["CAP_CHOWN".into()],
                ..ok.clone()
            },
            pb::ContainerConfig {
                mounts: vec![pb::MountConfig {
                    kind: pb::MountKind::Bind as i32,
                    source: "relative".into(),
                    target: "/t".into(),
                    ..Default::default()
                }],
                ..ok.clone()
            },
            pb::ContainerConfig {
                mounts: vec![ok.mounts[0].clone(); weft_proto::isolation::MAX_MOUNTS + 1],
                ..ok.clone()
            },
            pb::ContainerConfig {
                hostname: "no spaces".into(),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(
                    container_from_wire(Some(bad.clone()), &[]),
                    Err(crate::error::Error::InvalidInput(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn task_states_cross_the_wire_and_back() {
        for state in crate::testing::task_states() {
            let s = TaskStatus {
                state,
                message: "details".into(),
                updated_at_ms: 3,
            };
            let wire = task_status_to_wire(&s);
            assert_eq!(task_status_from_wire(&wire, 3), Ok(s));
        }
    }

    #[test]
    fn task_reports_with_unknown_states_are_refused() {
        for bad in [
            pb::TaskStatus::default(),
            pb::TaskStatus {
                state: 99,
                ..Default::default()
            },
            pb::TaskStatus {
                state: pb::TaskState::Running.into(),
                health: 99,
                ..Default::default()
            },
        ] {
            assert!(task_status_from_wire(&bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn service_updates_change_only_the_resources_given() {
        let mut r = crate::store::Resources {
            limit_nano_cpus: 500_000_000,
            limit_memory_bytes: 64 << 20,
            limit_pids: 10,
            ..Default::default()
        };
        let u = pb::ResourcesUpdate {
            limit_memory_bytes: Some(128 << 20),
            limit_pids: Some(0),
            ..Default::default()
        };
        update_resources(&mut r, &u, true).unwrap();
        assert_eq!(
            r,
            crate::store::Resources {
                limit_nano_cpus: 500_000_000,
                limit_memory_bytes: 128 << 20,
                ..Default::default()
            }
        );
        let mut host = crate::store::Resources::default();
        assert!(
            update_resources(&mut host, &u, false).is_err(),
            "limits on a host process"
        );
        let mut p = crate::store::RestartPolicy::default();
        let u = pb::RestartPolicyUpdate {
            max_attempts: Some(3),
            ..Default::default()
        };
        update_restart_policy(&mut p, &u).unwrap();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.delay_ms, None, "the backoff stays");
    }

    #[test]
    fn task_report_texts_are_cut() {
        let long = "x".repeat(crate::limits::MAX_REPORT_MESSAGE_BYTES + 10);
        let s = task_status_from_wire(
            &pb::TaskStatus {
                state: pb::TaskState::Pending.into(),
                reason: long.clone(),
                message: long,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        let TaskState::Pending { reason } = &s.state else {
            panic!("{s:?}");
        };
        assert_eq!(reason.len(), crate::limits::MAX_REPORT_MESSAGE_BYTES);
        assert_eq!(s.message.len(), crate::limits::MAX_REPORT_MESSAGE_BYTES);
    }
}
