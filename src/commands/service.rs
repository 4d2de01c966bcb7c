//! `weft service …`.

use super::*;
use crate::format::{Filters, Output};

/// What the command that waits asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// create, scale, update.
    Change,
    /// `service rollback` / `update --rollback`.
    Rollback,
}

/// The tasks of `s`'s latest version by place, as progress lines: the
/// slot ("2/3") or for a global service the node, and the newest task's
/// state there.
fn progress(s: &pb::Service) -> Vec<(String, String)> {
    let global = s.spec.as_ref().is_some_and(|x| x.mode == "global");
    let mut newest: std::collections::BTreeMap<(u64, String), &pb::Task> = Default::default();
    for t in s.tasks.iter().filter(|t| t.service_version == s.version) {
        // Names are service.slot.id (service.node.id for global services).
        let mut parts = t.name.rsplitn(3, '.');
        let place = parts.nth(1).unwrap_or_default();
        let key = if global {
            (0, t.hostname.clone())
        } else {
            (place.parse().unwrap_or(u64::MAX), String::new())
        };
        let e = newest.entry(key).or_insert(t);
        if t.created_at_ms > e.created_at_ms {
            *e = t;
        }
    }
    newest
        .into_iter()
        .map(|((slot, host), t)| {
            let label = if global {
                host
            } else {
                format!("{slot}/{}", s.desired)
            };
            (label, task_text::word(task_text::state(t)).to_string())
        })
        .collect()
}

/// Waits until `service` runs all its desired tasks at its latest version
/// and its update (if one runs) completed, printing progress per task like
/// `docker service update`. Fails when the update paused or, unless a
/// rollback was `asked`, rolled back past `version` (the service's version
/// when the command was applied).
async fn converge(c: &Client, service: &str, asked: Asked, version: u64) -> anyhow::Result<()> {
    const STALL: std::time::Duration = std::time::Duration::from_secs(60);
    let mut ctl = c.control();
    let mut deadline = std::time::Instant::now() + STALL;
    let mut shown: std::collections::BTreeMap<String, String> = Default::default();
    let (mut overall, mut verify, mut told) = (String::new(), false, false);
    loop {
        let s = ctl
            .get_service(pb::GetServiceRequest {
                service: service.to_string(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        let name = s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default();
        let current = s
            .tasks
            .iter()
            .filter(|t| task_text::state(t) == pb::TaskState::Running)
            .filter(|t| t.desired_state() == pb::TaskState::Running)
            .filter(|t| t.service_version == s.version)
            .count() as u64;
        let update = s.update.clone().unwrap_or_default();
        // A failure rolled the update back by itself.
        let rolled_back =
            asked == Asked::Change && s.version > version && update.state.starts_with("rollback");
        if rolled_back && !told {
            eprintln!("rollback: {}", update.message);
            told = true;
            shown.clear();
        }
        let line = format!("overall progress: {current} out of {} tasks", s.desired);
        if line != overall {
            eprintln!("{line}");
            overall = line;
            deadline = std::time::Instant::now() + STALL;
        }
        for (label, state) in progress(&s) {
            if shown.get(&label) != Some(&state) {
                eprintln!("{label}: {state}");
                shown.insert(label, state);
                deadline = std::time::Instant::now() + STALL;
            }
        }
        match update.state.as_str() {
            "paused" => bail!("service {name} update paused: {}", update.message),
            "rollback_paused" => bail!("service {name} rollback paused: {}", update.message),
            _ => {}
        }
        if current == s.desired && s.tasks.len() as u64 == s.desired {
            let watching = matches!(update.state.as_str(), "updating" | "rollback_started");
            if !watching {
                eprintln!("verify: service converged");
                if rolled_back {
                    bail!("service {name} rolled back: {}", update.message);
                }
                return Ok(());
            }
            if !verify {
                let policy = if update.state == "updating" {
                    s.spec.as_ref().and_then(|x| x.update.clone())
                } else {
                    s.previous_spec.as_ref().and_then(|x| x.rollback.clone())
                };
                let secs = policy.and_then(|p| p.monitor_ms).unwrap_or(5_000) as f64 / 1000.0;
                eprintln!("verify: waiting {secs} seconds to verify that tasks are stable...");
                verify = true;
                deadline = std::time::Instant::now() + STALL;
            }
        }
        if std::time::Instant::now() > deadline {
            let failed = s
                .tasks
                .iter()
                .find(|t| task_text::is_failed(task_text::state(t)));
            if let Some(t) = failed {
                bail!("task {} failed: {}", t.name, task_text::error(t));
            }
            bail!(
                "service {service} has made no progress for 60s ({current}/{} running); see `weft service ps {service}`",
                s.desired
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn service_json(s: &pb::Service) -> serde_json::Value {
    serde_json::json!({
        "ID": s.id,
        // Docker's shape; the index counts the updates that replaced tasks.
        "Version": {"Index": s.version},
        "CreatedAtMs": s.created_at_ms,
        "UpdatedAtMs": s.updated_at_ms,
        "Spec": spec_json(&s.spec.clone().unwrap_or_default()),
        "PreviousSpec": s.previous_spec.as_ref().map(spec_json),
        "Endpoint": {
            "Ports": ports_json(&s.ports),
            "VirtualIPs": s.vips.iter().flat_map(|v| {
                std::iter::once(&v.vip)
                    .chain(Some(&v.vip6).filter(|ip| !ip.is_empty()))
                    .map(|ip| serde_json::json!({"Network": v.network, "Addr": ip}))
            }).collect::<Vec<_>>(),
        },
        "Running": s.running,
        "Desired": s.desired,
        // Which registry only: the credentials never come back.
        "RegistryAuth": (!s.registry_auth_for.is_empty())
            .then(|| serde_json::json!({"Registry": s.registry_auth_for})),
        "UpdateStatus": s.update.as_ref().map(|u| serde_json::json!({
            "State": u.state,
            "StartedAtMs": u.started_at_ms,
            "CompletedAtMs": (u.completed_at_ms != 0).then_some(u.completed_at_ms),
            // What holds it (a task not healthy yet), else why it stopped.
            "Message": if s.update_status.is_empty() { &u.message } else { &s.update_status },
            "Failures": u.failures,
        })),
    })
}

/// An update or rollback policy in Docker's `UpdateConfig` shape.
fn policy_json(u: &pb::UpdatePolicy) -> serde_json::Value {
    serde_json::json!({
        "Parallelism": u.parallelism.unwrap_or(1),
        "Delay": u.delay_ms.unwrap_or(0) * 1_000_000,
        "FailureAction": u.failure_action.as_deref().unwrap_or("pause"),
        "Monitor": u.monitor_ms.unwrap_or(5_000) * 1_000_000,
        "MaxFailureRatio": u.max_failure_ratio.unwrap_or(0.0),
        "Order": u.order.as_deref().unwrap_or("stop-first"),
    })
}

/// Published ports as Docker's `EndpointSpec.Ports` / `Endpoint.Ports`.
fn ports_json(ports: &[pb::PortMapping]) -> serde_json::Value {
    ports
        .iter()
        .map(|p| {
            serde_json::json!({
                "Protocol": if p.protocol.is_empty() { "tcp" } else { p.protocol.as_str() },
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "PublishMode": if p.mode.is_empty() { "ingress" } else { p.mode.as_str() },
            })
        })
        .collect()
}

/// A service spec in Docker's `Spec` shape (with weft's own fields).
fn spec_json(spec: &pb::ServiceSpecMsg) -> serde_json::Value {
    serde_json::json!({
            "EndpointSpec": {"Mode": spec.endpoint_mode, "Ports": ports_json(&spec.ports)},
            "UpdateConfig": spec.update.as_ref().map(policy_json),
            "RollbackConfig": spec.rollback.as_ref().map(policy_json),
            "Name": spec.name,
            "Labels": spec.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "Mode": if spec.mode == "global" {
                serde_json::json!({"Global": {}})
            } else {
                serde_json::json!({"Replicated": {"Replicas": spec.replicas}})
            },
            "Command": spec.command,
            "Env": spec.env,
            "Networks": spec.networks,
            "EndpointMode": spec.endpoint_mode,
            "Constraints": spec.constraints,
            "RestartCondition": spec.restart_condition,
            "RestartPolicy": spec.restart_policy.map(|p| serde_json::json!({
                "Delay": p.has_delay.then_some(p.delay_ms * 1_000_000),
                "MaxAttempts": p.max_attempts,
                "Window": p.window_ms * 1_000_000,
            })),
            "TaskTemplate": {
                "ContainerSpec": spec.container.as_ref().map(|c| serde_json::json!({
                    "Image": c.image,
                    "Command": c.has_entrypoint.then_some(&c.entrypoint),
                    "Args": spec.command,
                    "Dir": c.workdir,
                    "User": c.user,
                    "ReadOnly": c.read_only,
                    "Healthcheck": spec.health.as_ref().map(crate::health_args::inspect_json),
                    "Hostname": c.hostname,
                    "Mounts": c.mounts.iter().filter_map(|m| weft_proto::isolation::MountSpec::try_from(m).ok()).map(|m| serde_json::json!({
                        "Type": m.kind.to_string(),
                        "Source": m.source,
                        "Target": m.target,
                        "ReadOnly": m.readonly,
                        "TmpfsOptions": (m.kind == weft_proto::isolation::MountKind::Tmpfs).then(|| serde_json::json!({
                            "SizeBytes": m.tmpfs_size,
                            "Mode": m.tmpfs_mode,
                        })),
                    })).collect::<Vec<_>>(),
                    "CapabilityAdd": c.cap_add,
                    "CapabilityDrop": c.cap_drop,
                    "Privileges": {
                        "NoNewPrivileges": c.no_new_privileges,
                        "Seccomp": {"Mode": if c.seccomp_unconfined { "unconfined" } else { "default" }},
                    },
                })),
                "StopSignal": weft_proto::signal::name(
                    spec.stop.as_ref().map(|p| p.signal).filter(|s| *s != 0).unwrap_or(weft_proto::signal::SIGTERM)
                ),
                "StopGracePeriod": spec.stop.as_ref().filter(|p| p.has_grace).map(|p| p.grace_ms * 1_000_000).unwrap_or(10_000_000_000),
                "Resources": crate::resources::task_json(spec.resources.as_ref()),
                "Networks": spec.networks.iter().map(|n| serde_json::json!({
                    "Target": n,
                    "Aliases": spec.network_aliases.iter().find(|a| a.network == *n).map(|a| &a.aliases),
                })).collect::<Vec<_>>(),
            },
    })
}

/// `weft service …`.
pub async fn service(c: &Client, cmd: crate::cli::ServiceCommand) -> anyhow::Result<()> {
    use crate::cli::ServiceCommand as S;
    match cmd {
        S::Create(a) => create(c, *a).await,
        S::Ls { list } => ls(c, &list).await,
        S::Ps { list, service } => ps(c, service, &list).await,
        S::Inspect { format, services } => inspect(c, services, format).await,
        S::Scale { detach, pairs } => scale(c, detach, &pairs).await,
        S::Update(a) => update(c, *a).await,
        S::Rollback { detach, service } => rollback(c, service, detach).await,
        S::Logs { flags, service } => {
            crate::logs_cmd::service_logs(c.control(), service, &flags).await
        }
        S::Rm { services } => rm(c, services).await,
    }
}

/// `weft service create`.
async fn create(c: &Client, a: crate::cli::ServiceCreateArgs) -> anyhow::Result<()> {
    use crate::cli::{EndpointModeArg, ModeArg, RestartArg};
    let mode = match a.mode {
        Some(ModeArg::Global) => "global",
        _ => "replicated",
    };
    if matches!(a.mode, Some(ModeArg::Global)) && a.replicas.is_some() {
        bail!("--replicas cannot be combined with --mode global");
    }
    let stop = crate::workload::stop_from_args(&a.stop)?;
    let log = crate::logs_cmd::log_config(&a.log_opt)?;
    let env = kv(
        &crate::isolation::env_with_files(&a.container.isolation.env_file, &a.env)?,
        "--env",
    )?;
    let (command, mut container) = crate::workload::from_args(a.container)?;
    crate::workload::check_resources(&a.resources, container.is_some())?;
    let health = a.health.to_wire(Some(container.is_some()))?;
    let registry_auth = match (&container, a.with_registry_auth) {
        (_, false) => None,
        (Some(ct), true) => Some(crate::login::for_service(&ct.image)?),
        (None, true) => bail!("--with-registry-auth is for services that run an image"),
    };
    if let Some(ct) = container.as_mut().filter(|_| !a.no_resolve_image) {
        ct.image = crate::image_cmd::pin_digest(c, &ct.image).await;
    }
    let (networks, network_aliases) =
        crate::network_arg::NetworkArg::for_service("--network", &a.networks)?;
    let spec = pb::ServiceSpecMsg {
        registry_auth,
        update: a.update_policy.to_wire(),
        rollback: a.rollback_policy.to_wire(),
        restart_policy: crate::resources::restart_policy(&a.restart),
        resources: a.resources.to_wire(),
        log,
        health,
        name: a.name.clone(),
        mode: mode.into(),
        replicas: a.replicas.unwrap_or(if mode == "global" { 0 } else { 1 }),
        command,
        container,
        stop,
        env,
        networks,
        network_aliases,
        endpoint_mode: match a.endpoint_mode {
            Some(EndpointModeArg::Dnsrr) => "dnsrr".into(),
            _ => "vip".into(),
        },
        constraints: a.constraints,
        labels: kv(&a.labels, "--label")?,
        restart_condition: match a.restart_condition {
            Some(RestartArg::OnFailure) => "on-failure".into(),
            Some(RestartArg::None) => "none".into(),
            _ => "any".into(),
        },
        ports: a
            .publish
            .iter()
            .map(|p| crate::publish::service_publish(p))
            .collect::<anyhow::Result<_>>()?,
    };
    let s = c
        .control()
        .create_service(pb::CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(rpc)?
        .into_inner();
    println!("{}", s.id);
    if !a.detach {
        converge(c, &s.id, Asked::Change, s.version).await?;
    }
    Ok(())
}

/// `weft service ls`.
async fn ls(c: &Client, list: &crate::cli::ListFlags) -> anyhow::Result<()> {
    let filters = Filters::parse(&list.filter, &["id", "name", "mode", "label"])?;
    let output = Output::parse(list.format.as_deref())?;
    let mut services = c
        .control()
        .list_services(pb::ListServicesRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .services;
    services.sort_by(|a, b| {
        a.spec
            .as_ref()
            .map(|s| &s.name)
            .cmp(&b.spec.as_ref().map(|s| &s.name))
    });
    services.retain(|s| {
        let spec = s.spec.clone().unwrap_or_default();
        filters.matches(|k, v| match k {
            "id" => s.id.starts_with(v),
            "name" => spec.name.contains(v),
            "label" => super::node::label_matches(&spec.labels, v),
            _ => spec.mode == v,
        })
    });
    if list.quiet {
        crate::format::print_ids(services.iter().map(|x| x.id.as_str()));
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = services
        .iter()
        .map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| format!("*:{}->{}/{}", p.published, p.target, p.protocol))
                .collect();
            serde_json::json!({
                "ID": s.id,
                "Name": spec.name,
                "Mode": spec.mode,
                "Replicas": format!("{}/{}", s.running, s.desired),
                "Image": spec.container.as_ref().map(|c| c.image.clone()).unwrap_or_default(),
                "Ports": ports.join(", "),
                "Command": spec.command.join(" "),
                "Labels": spec.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
            })
        })
        .collect();
    output.print(&rows, || {
        println!(
            "{:<17} {:<20} {:<11} {:<9} COMMAND",
            "ID", "NAME", "MODE", "REPLICAS"
        );
        for r in &rows {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            println!(
                "{:<17} {:<20} {:<11} {:<9} {}",
                f("ID"),
                f("Name"),
                f("Mode"),
                f("Replicas"),
                f("Command")
            );
        }
    })
}

/// `weft service ps`.
async fn ps(c: &Client, service: String, list: &crate::cli::ListFlags) -> anyhow::Result<()> {
    let filters = Filters::parse(&list.filter, TASK_FILTERS)?;
    let output = Output::parse(list.format.as_deref())?;
    let s = c
        .control()
        .get_service(pb::GetServiceRequest { service })
        .await
        .map_err(rpc)?
        .into_inner();
    print_task_list(s.tasks, &filters, &output, list.quiet)
}

/// The filters `service ps` and `node ps` take.
pub(super) const TASK_FILTERS: &[&str] = &["id", "name", "node", "desired-state"];

/// Tasks as `service ps` and `node ps` show them, filtered.
pub(super) fn print_task_list(
    mut tasks: Vec<pb::Task>,
    filters: &Filters,
    output: &Output,
    quiet: bool,
) -> anyhow::Result<()> {
    tasks.retain(|t| {
        filters.matches(|k, v| match k {
            "id" => t.id.starts_with(v),
            "name" => t.name.contains(v),
            "node" => t.hostname == v || t.node_id.starts_with(v),
            _ => task_text::word(t.desired_state()) == v,
        })
    });
    if quiet {
        crate::format::print_ids(tasks.iter().map(|x| x.id.as_str()));
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = tasks
        .iter()
        .map(|t| {
            serde_json::json!({
                "ID": t.id,
                "Name": t.name,
                "Node": t.hostname,
                "DesiredState": task_text::word(t.desired_state()),
                "CurrentState": task_text::current(t),
                "Addresses": task_text::addresses(t),
                "Error": task_text::error(t),
            })
        })
        .collect();
    output.print(&rows, || print_tasks(&tasks))
}

/// Tasks as `service ps` and `node ps` show them.
fn print_tasks(tasks: &[pb::Task]) {
    println!(
        "{:<17} {:<40} {:<20} {:<8} {:<10} {:<22} ERROR",
        "TASK ID", "NAME", "NODE", "DESIRED", "CURRENT", "ADDRESSES"
    );
    for t in tasks {
        let current = task_text::current(t);
        println!(
            "{:<17} {:<40} {:<20} {:<8} {:<10} {:<22} {}",
            t.id,
            t.name,
            t.hostname,
            task_text::word(t.desired_state()),
            current,
            task_text::addresses(t),
            task_text::error(t)
        );
    }
}

/// `weft service inspect`.
async fn inspect(c: &Client, services: Vec<String>, format: Option<String>) -> anyhow::Result<()> {
    Output::parse(format.as_deref())?;
    let mut ctl = c.control();
    let mut out = Vec::new();
    for s in services {
        let s = ctl
            .get_service(pb::GetServiceRequest { service: s })
            .await
            .map_err(rpc)?
            .into_inner();
        out.push(service_json(&s));
    }
    crate::format::print_objects(&out, format.as_deref())
}

/// `weft service scale SERVICE=N...`: every pair is parsed before any is
/// applied, so a typo in the last changes nothing.
async fn scale(c: &Client, detach: bool, pairs: &[String]) -> anyhow::Result<()> {
    let mut parsed = Vec::new();
    for p in pairs {
        let (name, n) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("invalid {p:?}: use SERVICE=REPLICAS"))?;
        let n: u64 = n.parse().map_err(|_| {
            anyhow::anyhow!("invalid replica count in {p:?}: give a whole number >= 0")
        })?;
        parsed.push((name.to_string(), n));
    }
    let mut ctl = c.control();
    let mut versions = Vec::new();
    for (name, n) in &parsed {
        let s = ctl
            .update_service(pb::UpdateServiceRequest {
                service: name.clone(),
                set_replicas: true,
                replicas: *n,
                ..Default::default()
            })
            .await
            .map_err(rpc)
            .with_context(|| format!("scaling {name}"))?;
        versions.push(s.into_inner().version);
        println!("{name} scaled to {n}");
    }
    if !detach {
        for ((name, _), version) in parsed.iter().zip(versions) {
            converge(c, name, Asked::Change, version).await?;
        }
    }
    Ok(())
}

/// The sealed credentials `service update --with-registry-auth` sends: for
/// the registry of the image the service will run (`--image`'s when given).
async fn update_registry_auth(
    c: &Client,
    a: &crate::cli::ServiceUpdateArgs,
) -> anyhow::Result<Option<pb::RegistryCredential>> {
    if !a.with_registry_auth {
        return Ok(None);
    }
    let image = match &a.container.image {
        Some(i) => i.clone(),
        None => c
            .control()
            .get_service(pb::GetServiceRequest {
                service: a.service.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .spec
            .and_then(|s| s.container)
            .map(|c| c.image)
            .ok_or_else(|| {
                anyhow::anyhow!("--with-registry-auth is for services that run an image")
            })?,
    };
    Ok(Some(crate::login::for_service(&image)?))
}

/// `weft service update`.
async fn update(c: &Client, a: crate::cli::ServiceUpdateArgs) -> anyhow::Result<()> {
    let registry_auth = update_registry_auth(c, &a).await?;
    let (network_add, network_add_aliases) =
        crate::network_arg::NetworkArg::for_service("--network-add", &a.network_add)?;
    let s = c
        .control()
        .update_service(pb::UpdateServiceRequest {
            registry_auth,
            service: a.service.clone(),
            set_replicas: a.replicas.is_some(),
            replicas: a.replicas.unwrap_or(0),
            network_add,
            network_add_aliases,
            network_rm: a.network_rm,
            env_add: kv(&a.env_add, "--env-add")?,
            env_rm: a.env_rm,
            constraint_add: a.constraint_add,
            constraint_rm: a.constraint_rm,
            label_add: kv(&a.label_add, "--label-add")?,
            label_rm: a.label_rm,
            force: a.force,
            resources: a.resources.to_wire(),
            restart_policy: crate::resources::restart_update(&a.restart),
            health: a.health.to_wire(None)?,
            update_policy: a.update_policy.to_wire(),
            rollback_policy: a.rollback_policy.to_wire(),
            container: a.container.container(c).await?,
            stop: a.container.stop()?,
            rollback: a.rollback,
            set_args: a.args.is_some(),
            args: match &a.args {
                Some(s) => shlex::split(s)
                    .ok_or_else(|| anyhow::anyhow!("--args {s:?}: a quote is not closed"))?,
                None => Vec::new(),
            },
            publish_add: a
                .publish_add
                .iter()
                .map(|p| crate::publish::service_publish(p))
                .collect::<anyhow::Result<_>>()?,
            publish_rm: a.publish_rm,
            endpoint_mode: a.endpoint_mode.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    println!("{}", s.spec.map(|x| x.name).unwrap_or_default());
    if !a.detach {
        let asked = if a.rollback {
            Asked::Rollback
        } else {
            Asked::Change
        };
        converge(c, &a.service, asked, s.version).await?;
    }
    Ok(())
}

/// `weft service rollback`.
async fn rollback(c: &Client, service: String, detach: bool) -> anyhow::Result<()> {
    let s = c
        .control()
        .update_service(pb::UpdateServiceRequest {
            service: service.clone(),
            rollback: true,
            ..Default::default()
        })
        .await
        .map_err(rpc)?
        .into_inner();
    println!("{}", s.spec.map(|x| x.name).unwrap_or_default());
    println!("rollback: manually requested rollback");
    if !detach {
        converge(c, &service, Asked::Rollback, s.version).await?;
    }
    Ok(())
}

/// `weft service rm`.
async fn rm(c: &Client, services: Vec<String>) -> anyhow::Result<()> {
    let mut ctl = c.control();
    for s in services {
        ctl.remove_service(pb::RemoveServiceRequest { service: s.clone() })
            .await
            .map_err(rpc)
            .with_context(|| format!("removing service {s}"))?;
        println!("{s}");
    }
    Ok(())
}
