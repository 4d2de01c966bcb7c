//! Services through the control API: building a service spec from a
//! request, create and update.

use super::*;
use crate::store::EndpointMode;

impl ControlService {
    pub(super) fn resolve_networks(&self, names: &[String]) -> Result<Vec<String>> {
        let mut ids: Vec<String> = Vec::new();
        for n in names {
            let id = self.core.read(|s| {
                let net = s.resolve_network(n)?;
                if net.node.is_some() || net.ingress {
                    return Err(Error::InvalidInput(format!(
                        "network {n:?} is not a swarm overlay network: services attach to overlay networks (`weft network create --driver overlay`)"
                    )));
                }
                Ok(net.id.clone())
            })?;
            if ids.contains(&id) {
                return Err(Error::InvalidInput(format!("network {n:?} is given twice")));
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// `--network name=NET,alias=A` as given: by network ID, each of
    /// `networks` (the service's, resolved).
    fn resolve_network_aliases(
        &self,
        given: &[pb::NetworkAliases],
        networks: &[String],
    ) -> Result<BTreeMap<String, Vec<String>>> {
        limits::at_most(
            "network aliases",
            given.len(),
            limits::MAX_NETWORKS_PER_TASK,
            "networks",
        )?;
        let mut out = BTreeMap::new();
        for g in given.iter().filter(|g| !g.aliases.is_empty()) {
            let net = self.core.read(|s| s.resolve_network(&g.network).cloned())?;
            if !networks.contains(&net.id) {
                return Err(Error::InvalidInput(format!(
                    "aliases for network {:?}, which the service is not on",
                    g.network
                )));
            }
            crate::validate::aliases(&net, &g.aliases)?;
            if out.insert(net.id, g.aliases.clone()).is_some() {
                return Err(Error::InvalidInput(format!(
                    "aliases for network {:?} are given twice",
                    g.network
                )));
            }
        }
        Ok(out)
    }

    pub(super) fn service_spec(
        &self,
        mut m: pb::ServiceSpecMsg,
    ) -> Result<crate::store::ServiceSpec> {
        use crate::store::{RestartCondition, ServiceMode, TaskSpec};
        crate::validate::object_name("service", &m.name)?;
        let mode = match m.mode.as_str() {
            "" | "replicated" => ServiceMode::Replicated {
                replicas: if m.replicas == 0 && m.mode.is_empty() {
                    1
                } else {
                    m.replicas
                },
            },
            "global" => {
                if m.replicas != 0 {
                    return Err(Error::InvalidInput(
                        "--replicas cannot be combined with --mode global".into(),
                    ));
                }
                ServiceMode::Global
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "invalid mode {other:?}: use replicated or global"
                )));
            }
        };
        if let ServiceMode::Replicated { replicas } = mode {
            limits::replicas(replicas)?;
        }
        let container = crate::convert::container_from_wire(m.container.take(), &m.command)?;
        let stop = crate::convert::stop_from_wire(m.stop.take())?;
        let resources = crate::convert::resources_from_wire(m.resources, container.is_some())?;
        let restart_policy = crate::convert::restart_policy_from_wire(m.restart_policy)?;
        let log = crate::convert::log_from_wire(m.log.take())?;
        let health = crate::convert::health_from_wire(m.health.take(), container.is_some())?;
        if container.is_none() && (m.command.is_empty() || m.command[0].is_empty()) {
            return Err(Error::InvalidInput(
                "no image or command given: `weft service create [OPTIONS] IMAGE [COMMAND...]` \
                 (or `-- CMD ARGS...` for a host process)"
                    .into(),
            ));
        }
        let env: BTreeMap<String, String> = m.env.into_iter().collect();
        limits::task_request(&m.command, &env, m.networks.len(), m.ports.len())?;
        limits::at_most(
            "--constraint",
            m.constraints.len(),
            limits::MAX_CONSTRAINTS,
            "constraints",
        )?;
        let endpoint_mode = endpoint_mode_from_wire(&m.endpoint_mode)?;
        let restart = match m.restart_condition.as_str() {
            "" | "any" => RestartCondition::Any,
            "on-failure" => RestartCondition::OnFailure,
            "none" => RestartCondition::None,
            other => {
                return Err(Error::InvalidInput(format!(
                    "invalid restart condition {other:?}: use any, on-failure or none"
                )));
            }
        };
        let constraints = m
            .constraints
            .iter()
            .map(|c| parse_constraint(c))
            .collect::<Result<Vec<_>>>()?;
        let ports = crate::convert::ports_from_wire(&m.ports)?;
        let mut update = crate::store::UpdatePolicy::default();
        crate::convert::update_policy_from_wire(&mut update, m.update.as_ref(), false)?;
        let mut rollback = crate::store::UpdatePolicy::default();
        crate::convert::update_policy_from_wire(&mut rollback, m.rollback.as_ref(), true)?;
        let labels: BTreeMap<String, String> = m.labels.into_iter().collect();
        service_labels(&m.name, &labels)?;
        let networks = self.resolve_networks(&m.networks)?;
        let network_aliases = self.resolve_network_aliases(&m.network_aliases, &networks)?;
        Ok(crate::store::ServiceSpec {
            network_aliases,
            labels,
            update,
            rollback,
            ports,
            name: m.name,
            mode,
            task: TaskSpec {
                command: m.command,
                env,
                container,
                stop,
                resources,
                log,
                health,
                auto_remove: false,
                external: None,
            },
            networks,
            endpoint_mode,
            constraints,
            restart,
            restart_policy,
            registry_auth: None,
        })
    }

    /// Seals `auth` (`--with-registry-auth`) for service `id` running `spec`.
    fn seal_registry_auth(
        &self,
        id: &str,
        spec: &crate::store::ServiceSpec,
        auth: &pb::RegistryCredential,
    ) -> Result<crate::store::RegistryAuth> {
        let image = spec.task.container.as_ref().map(|c| c.image.as_str());
        let key = crate::registry_auth::data_key(&self.core.secrets()?);
        crate::registry_auth::seal(&key, id, image, auth)
    }

    pub(super) async fn create_service(&self, r: pb::CreateServiceRequest) -> Result<pb::Service> {
        let mut msg = r.spec.unwrap_or_default();
        let auth = msg.registry_auth.take();
        let mut spec = self.service_spec(msg)?;
        let id = crate::validate::random_id();
        if let Some(a) = &auth {
            spec.registry_auth = Some(self.seal_registry_auth(&id, &spec, a)?);
        }
        let cmd = Command::CreateService {
            id: id.clone(),
            spec,
            now_ms: now_ms(),
        };
        self.core.read(|s| limits::admit(s, &cmd))?;
        self.core.propose(cmd).await?;
        self.read_after_write(|s| {
            s.services
                .get(&id)
                .map(|x| crate::convert::service_to_wire(s, x))
        })
        .await
    }

    pub(super) async fn update_service(&self, r: pb::UpdateServiceRequest) -> Result<pb::Service> {
        use crate::store::ServiceMode;
        if r.rollback {
            return self.rollback_service(r).await;
        }
        // The request's own lists first: each entry costs a lookup.
        let networks =
            |flag, n| limits::at_most(flag, n, limits::MAX_NETWORKS_PER_TASK, "networks");
        let env = |flag, n| limits::at_most(flag, n, limits::MAX_ENV_VARS, "variables");
        let constraints =
            |flag, n| limits::at_most(flag, n, limits::MAX_CONSTRAINTS, "constraints");
        networks("--network-add", r.network_add.len())?;
        networks("--network-rm", r.network_rm.len())?;
        env("--env-add", r.env_add.len())?;
        env("--env-rm", r.env_rm.len())?;
        constraints("--constraint-add", r.constraint_add.len())?;
        constraints("--constraint-rm", r.constraint_rm.len())?;
        let svc = self.core.read(|s| s.resolve_service(&r.service).cloned())?;
        let mut spec = svc.spec.clone();
        if r.set_replicas {
            match spec.mode {
                ServiceMode::Global => {
                    return Err(Error::InvalidInput(format!(
                        "service {} is global: it runs one task per eligible node and cannot be scaled",
                        spec.name
                    )));
                }
                ServiceMode::Replicated { .. } => {
                    limits::replicas(r.replicas)?;
                    spec.mode = ServiceMode::Replicated {
                        replicas: r.replicas,
                    }
                }
            }
        }
        for id in self.resolve_networks(&r.network_rm)? {
            if !spec.networks.contains(&id) {
                return Err(Error::InvalidInput(format!(
                    "service {} is not on network {id}",
                    spec.name
                )));
            }
            spec.networks.retain(|n| *n != id);
            spec.network_aliases.remove(&id);
        }
        let added = self.resolve_networks(&r.network_add)?;
        let aliases = self.resolve_network_aliases(&r.network_add_aliases, &added)?;
        for id in added {
            if spec.networks.contains(&id) {
                return Err(Error::InvalidInput(format!(
                    "service {} is already on network {id}",
                    spec.name
                )));
            }
            spec.networks.push(id);
        }
        spec.network_aliases.extend(aliases);
        for k in &r.env_rm {
            spec.task.env.remove(k);
        }
        if !r.env_add.is_empty() {
            spec.task.env.extend(r.env_add.clone());
            limits::env(&spec.task.env)?;
        }
        limits::at_most(
            "--label-add",
            r.label_add.len(),
            limits::MAX_LABELS,
            "labels",
        )?;
        limits::at_most("--label-rm", r.label_rm.len(), limits::MAX_LABELS, "labels")?;
        for k in &r.label_rm {
            if spec.labels.remove(k).is_none() {
                return Err(Error::InvalidInput(format!(
                    "service {} has no label {k:?}",
                    spec.name
                )));
            }
        }
        spec.labels.extend(r.label_add.clone());
        service_labels(&spec.name, &spec.labels)?;
        for c in &r.constraint_rm {
            let c = parse_constraint(c)?;
            spec.constraints.retain(|x| *x != c);
        }
        for c in &r.constraint_add {
            let c = parse_constraint(c)?;
            if !spec.constraints.contains(&c) {
                spec.constraints.push(c);
            }
        }
        if let Some(u) = &r.resources {
            let container = spec.task.container.is_some();
            crate::convert::update_resources(&mut spec.task.resources, u, container)?;
        }
        if let Some(u) = &r.restart_policy {
            crate::convert::update_restart_policy(&mut spec.restart_policy, u)?;
        }
        if r.health.is_some() {
            let container = spec.task.container.is_some();
            spec.task.health = crate::convert::health_from_wire(r.health.clone(), container)?;
        }
        super::service_update::apply(
            &spec.name,
            &mut spec.task,
            r.container.as_ref(),
            r.stop.as_ref(),
        )?;
        if let Some(a) = &r.registry_auth {
            spec.registry_auth = Some(self.seal_registry_auth(&svc.id, &spec, a)?);
        }
        update_args_ports_endpoint(&mut spec, &r)?;
        crate::convert::update_policy_from_wire(&mut spec.update, r.update_policy.as_ref(), false)?;
        let rollback = r.rollback_policy.as_ref();
        crate::convert::update_policy_from_wire(&mut spec.rollback, rollback, true)?;
        for (unit, before, after, max) in [
            (
                "networks",
                svc.spec.networks.len(),
                spec.networks.len(),
                limits::MAX_NETWORKS_PER_TASK,
            ),
            (
                "constraints",
                svc.spec.constraints.len(),
                spec.constraints.len(),
                limits::MAX_CONSTRAINTS,
            ),
        ] {
            let what = format_args!("{unit} of service {}", spec.name);
            limits::growth_at_most(what, before, after, max, unit)?;
        }
        self.propose_update(&svc.id, spec, r.force).await
    }

    /// `service rollback`: the previous spec back, alone.
    async fn rollback_service(&self, r: pb::UpdateServiceRequest) -> Result<pb::Service> {
        let alone = pb::UpdateServiceRequest {
            service: r.service.clone(),
            rollback: true,
            ..Default::default()
        };
        if r != alone {
            return Err(Error::InvalidInput(
                "a rollback goes back to the previous spec: it takes no other change".into(),
            ));
        }
        let svc = self.core.read(|s| s.resolve_service(&r.service).cloned())?;
        let Some(previous) = svc.previous_spec else {
            return Err(Error::FailedPrecondition(format!(
                "service {} has no previous spec to roll back to (it was never updated)",
                svc.spec.name
            )));
        };
        let cmd = Command::RollbackService {
            id: svc.id.clone(),
            now_ms: now_ms(),
        };
        self.propose_spec(&svc.id, cmd, *previous).await
    }

    /// Proposes `spec` for service `id`, checked against the limits, and
    /// answers with the service once this manager has applied it.
    async fn propose_update(
        &self,
        id: &str,
        spec: crate::store::ServiceSpec,
        force: bool,
    ) -> Result<pb::Service> {
        let cmd = Command::UpdateService {
            id: id.to_string(),
            spec: spec.clone(),
            force,
            now_ms: now_ms(),
        };
        self.propose_spec(id, cmd, spec).await
    }

    /// Proposes `cmd`, which gives service `id` `spec`, checked against
    /// the limits; answers with the service once this manager applied it.
    async fn propose_spec(
        &self,
        id: &str,
        cmd: Command,
        spec: crate::store::ServiceSpec,
    ) -> Result<pb::Service> {
        self.core.read(|s| limits::admit(s, &cmd))?;
        self.core.propose(cmd).await?;
        self.read_after_write(|s| {
            s.services
                .get(id)
                .filter(|x| x.spec == spec)
                .map(|x| crate::convert::service_to_wire(s, x))
        })
        .await
    }
}

/// `--endpoint-mode`: vip (the default) or dnsrr.
fn endpoint_mode_from_wire(m: &str) -> Result<EndpointMode> {
    match m {
        "" | "vip" => Ok(EndpointMode::Vip),
        "dnsrr" => Ok(EndpointMode::Dnsrr),
        other => Err(Error::InvalidInput(format!(
            "invalid endpoint mode {other:?}: use vip or dnsrr"
        ))),
    }
}

/// `service update --args`, `--publish-add`, `--publish-rm` and
/// `--endpoint-mode` on `spec`, checked as `service create` checks them.
fn update_args_ports_endpoint(
    spec: &mut crate::store::ServiceSpec,
    r: &pb::UpdateServiceRequest,
) -> Result<()> {
    if r.set_args {
        if spec.task.container.is_none() && r.args.first().is_none_or(|c| c.is_empty()) {
            return Err(Error::InvalidInput(format!(
                "service {} runs a host process: --args needs its command",
                spec.name
            )));
        }
        spec.task.command = r.args.clone();
    }
    limits::at_most(
        "--publish-rm",
        r.publish_rm.len(),
        limits::MAX_PORTS,
        "ports",
    )?;
    for p in &r.publish_rm {
        let (target, proto) = p.split_once('/').unwrap_or((p, ""));
        let target: u16 = target.parse().map_err(|_| {
            Error::InvalidInput(format!("--publish-rm {p:?}: expected TARGET[/tcp|udp]"))
        })?;
        let before = spec.ports.len();
        spec.ports
            .retain(|x| !(x.target == target && (proto.is_empty() || x.proto.as_str() == proto)));
        if spec.ports.len() == before {
            return Err(Error::InvalidInput(format!(
                "service {} publishes no port with target {p}",
                spec.name
            )));
        }
    }
    limits::at_most(
        "--publish-add",
        r.publish_add.len(),
        limits::MAX_PORTS,
        "ports",
    )?;
    for p in crate::convert::ports_from_wire(&r.publish_add)? {
        spec.ports
            .retain(|x| !(x.target == p.target && x.proto == p.proto));
        spec.ports.push(p);
    }
    if !r.endpoint_mode.is_empty() {
        spec.endpoint_mode = endpoint_mode_from_wire(&r.endpoint_mode)?;
    }
    limits::task_request(
        &spec.task.command,
        &spec.task.env,
        spec.networks.len(),
        spec.ports.len(),
    )
}

/// `--label` of service `name`: bounded, keys as other labels'.
fn service_labels(name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
    limits::labels(format_args!("service {name}"), labels.len(), labels)?;
    for k in labels.keys() {
        super::validate_label_key(k)?;
    }
    Ok(())
}
