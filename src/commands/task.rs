//! `weft run`, `weft ps`, `weft port`, `weft rm`: the tasks of this node.

use super::*;

/// `weft run`'s `--network`s, with `--ip` and `--network-alias` on the
/// first.
fn run_networks(a: &crate::cli::RunArgs) -> anyhow::Result<Vec<pb::NetworkRef>> {
    if a.ip.is_some() && a.networks.is_empty() {
        bail!("--ip needs --network");
    }
    if a.ip6.is_some() && a.networks.is_empty() {
        bail!("--ip6 needs --network (a dual-stack one)");
    }
    if !a.network_aliases.is_empty() && a.networks.is_empty() {
        bail!("--network-alias needs --network NAME (aliases are for user-defined networks)");
    }
    let mut out = Vec::new();
    for (i, v) in a.networks.iter().enumerate() {
        let n = crate::network_arg::NetworkArg::parse("--network", v)?;
        let mut aliases = n.aliases;
        let mut ip = n.ip;
        let mut ip6 = n.ip6;
        if i == 0 {
            aliases.extend(a.network_aliases.iter().cloned());
            if let Some(given) = &a.ip {
                if ip.is_some() {
                    bail!("--ip and --network ...,ip= both give the address");
                }
                ip = Some(given.clone());
            }
            if let Some(given) = &a.ip6 {
                if ip6.is_some() {
                    bail!("--ip6 and --network ...,ip6= both give the IPv6 address");
                }
                ip6 = Some(given.clone());
            }
        }
        out.push(pb::NetworkRef {
            ip6: ip6.unwrap_or_default(),
            network: n.name,
            ip: ip.unwrap_or_default(),
            aliases,
        });
    }
    Ok(out)
}

/// `weft run`.
pub async fn run_task(c: &Client, a: crate::cli::RunArgs) -> anyhow::Result<()> {
    let interactive = a.interactive || a.tty;
    if a.tty && a.interactive && !a.detach && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // Docker's words and rule: a terminal for the task needs one here.
        bail!("the input device is not a TTY");
    }
    let networks = run_networks(&a)?;
    let env = kv(
        &crate::isolation::env_with_files(&a.container.isolation.env_file, &a.env)?,
        "--env",
    )?;
    let ports = a
        .publish
        .iter()
        .map(|p| crate::publish::run_publish(p))
        .collect::<anyhow::Result<_>>()?;
    let stop = crate::workload::stop_from_args(&a.stop)?;
    let log = crate::logs_cmd::log_config(&a.log_opt)?;
    let (command, mut container) = crate::workload::from_args(a.container)?;
    match container.as_mut() {
        Some(c) => {
            c.open_stdin = a.interactive;
            c.tty = a.tty;
            c.attach_wait = interactive && !a.detach;
            c.tty_size = a.tty.then(super::exec::terminal_size).flatten();
        }
        None if interactive => bail!(
            "-i and -t are for containers: a host process (-- CMD) has no stdin or terminal \
             to attach to; give an IMAGE"
        ),
        None => {}
    }
    crate::workload::check_resources(&a.resources, container.is_some())?;
    let health = a.health.to_wire(Some(container.is_some()))?;
    let task = c
        .daemon()
        .run(pb::RunTaskRequest {
            node_id: String::new(),
            name: a.name.unwrap_or_default(),
            command,
            env,
            networks,
            ports,
            container,
            stop,
            resources: a.resources.to_wire(),
            log,
            health,
            // Attached, the daemon removes it (see AttachRequest.remove).
            auto_remove: a.rm && a.detach,
            external: None,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if !a.detach && interactive {
        let o = super::attach_io::AttachOpts {
            remove: a.rm,
            from_now: false,
            stdin: a.interactive,
            close_at_eof: true,
            tty: a.tty,
            detach_keys: super::attach_io::parse_detach_keys(
                super::attach_io::DEFAULT_DETACH_KEYS,
            )?,
        };
        return match super::attach_io::attach_stdio(c, &task.id, o).await? {
            0 => Ok(()),
            code => Err(super::Exit(code).into()),
        };
    }
    if !a.detach {
        return match super::attach::attach(c, &task.id, a.rm).await? {
            0 => Ok(()),
            code => Err(super::Exit(code).into()),
        };
    }
    println!("{}", task.id);
    Ok(())
}

/// `weft ps`.
pub async fn ps(c: &Client, all: bool, list: &crate::cli::ListFlags) -> anyhow::Result<()> {
    let filters = crate::format::Filters::parse(&list.filter, &["id", "name", "status"])?;
    let output = crate::format::Output::parse(list.format.as_deref())?;
    let mut tasks = c
        .daemon()
        .ps(pb::PsRequest { all })
        .await
        .map_err(rpc)?
        .into_inner()
        .tasks;
    tasks.retain(|t| {
        filters.matches(|k, v| match k {
            "id" => t.id.starts_with(v),
            "name" => t.name.contains(v),
            _ => task_text::current(t).split_whitespace().next() == Some(v),
        })
    });
    if list.quiet {
        crate::format::print_ids(tasks.iter().map(|x| x.id.as_str()));
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = tasks
        .iter()
        .map(|t| {
            let addrs = if t.network_mode.is_empty() {
                task_text::addresses(t)
            } else {
                t.network_mode.clone()
            };
            let ports: Vec<String> = t
                .ports
                .iter()
                .map(|p| format!("{}->{}/{}", p.published, p.target, p.protocol))
                .collect();
            serde_json::json!({
                "ID": t.id,
                "Name": t.name,
                "State": task_text::current(t),
                "Addresses": addrs,
                "Ports": ports.join(","),
                "Command": t.command.join(" "),
            })
        })
        .collect();
    output.print(&rows, || {
        println!(
            "{:<17} {:<20} {:<10} {:<30} {:<20} COMMAND",
            "TASK ID", "NAME", "STATE", "ADDRESSES", "PORTS"
        );
        for r in &rows {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            println!(
                "{:<17} {:<20} {:<10} {:<30} {:<20} {}",
                f("ID"),
                f("Name"),
                f("State"),
                f("Addresses"),
                f("Ports"),
                f("Command")
            );
        }
    })
}

/// `weft port`: a local task's published ports.
pub async fn port(c: &Client, task: String) -> anyhow::Result<()> {
    let tasks = c
        .daemon()
        .ps(pb::PsRequest { all: true })
        .await
        .map_err(rpc)?
        .into_inner()
        .tasks;
    let t = tasks
        .iter()
        .find(|t| t.id == task || t.name == task)
        .or_else(|| {
            let m: Vec<&pb::Task> = tasks.iter().filter(|t| t.id.starts_with(&task)).collect();
            (m.len() == 1).then(|| m[0])
        })
        .with_context(|| format!("no task {task:?} on this node; see `weft ps -a`"))?;
    for p in &t.ports {
        println!("{}", crate::publish::describe(p));
    }
    Ok(())
}

/// `weft rm`.
pub async fn rm(c: &Client, force: bool, tasks: Vec<String>) -> anyhow::Result<()> {
    for t in tasks {
        c.daemon()
            .rm(pb::RmRequest {
                task: t.clone(),
                force,
            })
            .await
            .map_err(rpc)
            .with_context(|| format!("removing {t}"))?;
        println!("{t}");
    }
    Ok(())
}
