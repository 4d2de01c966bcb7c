//! `weft node …`.

use super::*;

/// `weft node …`.
pub async fn node(c: &Client, cmd: NodeCommand) -> anyhow::Result<()> {
    let mut ctl = c.control();
    match cmd {
        NodeCommand::Ls { list } => ls(c, &mut ctl, &list).await?,
        NodeCommand::Ps { list, nodes } => ps(&mut ctl, &list, nodes).await?,
        NodeCommand::Inspect { format, nodes } => inspect(&mut ctl, format, nodes).await?,
        NodeCommand::Update {
            role: Some(role),
            node,
            ..
        } => {
            let (role, done) = match role {
                RoleArg::Manager => (pb::NodeRole::Manager, "promoted to a manager"),
                RoleArg::Worker => (pb::NodeRole::Worker, "demoted to a worker"),
            };
            let r = set_role(&mut ctl, node, role, false).await?;
            println!("Node {} {done}.", r.hostname);
        }
        NodeCommand::Update {
            availability,
            label_add,
            label_rm,
            node,
            role: None,
        } => update(&mut ctl, availability, label_add, label_rm, node).await?,
        NodeCommand::Promote { nodes } => {
            for n in nodes {
                let r = set_role(&mut ctl, n.clone(), pb::NodeRole::Manager, false)
                    .await
                    .with_context(|| format!("promoting {n}"))?;
                println!("Node {} promoted to a manager in the cluster.", r.hostname);
            }
        }
        NodeCommand::Demote { force, nodes } => {
            for n in nodes {
                let r = set_role(&mut ctl, n.clone(), pb::NodeRole::Worker, force)
                    .await
                    .with_context(|| format!("demoting {n}"))?;
                println!("Manager {} demoted in the cluster.", r.hostname);
            }
        }
        NodeCommand::RotateKey { all, node } => {
            let r = ctl
                .rotate_node_key(pb::RotateNodeKeyRequest {
                    node: node.unwrap_or_default(),
                    all,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            for n in r.rotated {
                println!("{n}: new WireGuard key requested");
            }
        }
        NodeCommand::Rm { force, nodes } => {
            for n in nodes {
                ctl.remove_node(pb::RemoveNodeRequest {
                    node: n.clone(),
                    force,
                })
                .await
                .map_err(rpc)
                .with_context(|| format!("removing {n}"))?;
                println!("{n}");
            }
        }
    }
    Ok(())
}

/// `weft node ps`.
async fn ps(
    ctl: &mut ControlClient<Channel>,
    list: &crate::cli::ListFlags,
    nodes: Vec<String>,
) -> anyhow::Result<()> {
    let filters = crate::format::Filters::parse(&list.filter, super::service::TASK_FILTERS)?;
    let output = crate::format::Output::parse(list.format.as_deref())?;
    // Every node is resolved before anything is printed: a typo in
    // the last prints nothing.
    let mut tasks = Vec::new();
    for n in nodes {
        let mut these = ctl
            .list_tasks(pb::ListTasksRequest { node: n })
            .await
            .map_err(rpc)?
            .into_inner()
            .tasks;
        these.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        tasks.extend(these);
    }
    super::service::print_task_list(tasks, &filters, &output, list.quiet)
}

/// `weft node inspect`.
async fn inspect(
    ctl: &mut ControlClient<Channel>,
    format: Option<String>,
    nodes: Vec<String>,
) -> anyhow::Result<()> {
    if format.as_deref() != Some("pretty") {
        crate::format::Output::parse(format.as_deref())?;
    }
    let mut out = Vec::new();
    for n in nodes {
        let node = ctl
            .get_node(pb::GetNodeRequest { node: n })
            .await
            .map_err(rpc)?
            .into_inner();
        out.push(node);
    }
    match format.as_deref() {
        Some("pretty") => {
            for n in &out {
                println!("ID:             {}", n.id);
                println!("Hostname:       {}", n.hostname);
                println!("Role:           {}", role_text(n.role));
                println!("Status:         {}", state_text(n.state));
                if !n.state_message.is_empty() {
                    println!("  Message:      {}", n.state_message);
                }
                println!("Availability:   {}", availability_text(n.availability));
                println!("Address:        {}", n.addr);
                println!("Data path addr: {}", n.data_path_addr);
                if n.role == pb::NodeRole::Manager as i32 || n.raft_voter {
                    println!(
                        "Manager status: {} (voter: {})",
                        manager_status_text(n.manager_status),
                        n.raft_voter
                    );
                }
                println!("Cert expiry:    {}", n.cert_expiry);
                for (k, v) in &n.labels {
                    println!("Label:          {k}={v}");
                }
                println!();
            }
        }
        other => {
            let json: Vec<serde_json::Value> = out.iter().map(node_json).collect();
            crate::format::print_objects(&json, other)?;
        }
    }
    Ok(())
}

/// `weft node update` of availability and labels.
async fn update(
    ctl: &mut ControlClient<Channel>,
    availability: Option<AvailabilityArg>,
    label_add: Vec<String>,
    label_rm: Vec<String>,
    node: String,
) -> anyhow::Result<()> {
    let mut adds = HashMap::new();
    for l in label_add {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            bail!("invalid --label-add {l:?}: use key=value");
        }
        adds.insert(k.to_string(), v.to_string());
    }
    if availability.is_none() && adds.is_empty() && label_rm.is_empty() {
        bail!("nothing to update: give --availability, --label-add, --label-rm or --role");
    }
    let availability = match availability {
        None => pb::Availability::Unspecified,
        Some(AvailabilityArg::Active) => pb::Availability::Active,
        Some(AvailabilityArg::Pause) => pb::Availability::Pause,
        Some(AvailabilityArg::Drain) => pb::Availability::Drain,
    };
    let n = ctl
        .update_node(pb::UpdateNodeRequest {
            node,
            availability: availability as i32,
            label_add: adds,
            label_rm,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    println!("{}", n.id);
    Ok(())
}

/// Sets `node`'s role (promote, demote, `update --role`).
async fn set_role(
    ctl: &mut ControlClient<Channel>,
    node: String,
    role: pb::NodeRole,
    force: bool,
) -> anyhow::Result<pb::Node> {
    Ok(ctl
        .set_node_role(pb::SetNodeRoleRequest {
            node,
            role: role as i32,
            force,
        })
        .await
        .map_err(rpc)?
        .into_inner())
}

fn node_json(n: &pb::Node) -> serde_json::Value {
    serde_json::json!({
        "ID": n.id,
        "Hostname": n.hostname,
        "Role": role_text(n.role),
        "Availability": availability_text(n.availability).to_lowercase(),
        "Labels": n.labels,
        "Status": {
            "State": state_text(n.state).to_lowercase(),
            "Message": n.state_message,
            "Addr": n.addr,
            "DataPathAddr": n.data_path_addr,
        },
        "ManagerStatus": if n.role == pb::NodeRole::Manager as i32 || n.raft_voter {
            serde_json::json!({
                "Leader": n.manager_status == pb::ManagerStatus::Leader as i32,
                "Reachability": manager_status_text(n.manager_status).to_lowercase(),
                "Voter": n.raft_voter,
                "Addr": n.addr,
            })
        } else {
            serde_json::Value::Null
        },
        "CertificateExpiry": n.cert_expiry,
        // Docker's shape, beside weft's own fields above.
        "Spec": {
            "Role": role_text(n.role),
            "Availability": availability_text(n.availability).to_lowercase(),
            "Labels": n.labels,
        },
        "Description": description_json(n),
        "CreatedAtMs": n.created_at_ms,
        "UpdatedAtMs": n.updated_at_ms,
    })
}

/// Docker's `Description`: host name, resources and the engine's version.
fn description_json(n: &pb::Node) -> serde_json::Value {
    let mut d = crate::resources::node_json(n.resources.as_ref());
    d["Hostname"] = n.hostname.clone().into();
    d["Engine"] = serde_json::json!({ "EngineVersion": n.version });
    d
}

/// `weft node ls`.
async fn ls(
    c: &Client,
    ctl: &mut ControlClient<Channel>,
    list: &crate::cli::ListFlags,
) -> anyhow::Result<()> {
    let filters = crate::format::Filters::parse(&list.filter, &["id", "name", "role", "label"])?;
    let output = crate::format::Output::parse(list.format.as_deref())?;
    let me = c.self_id().await?;
    let mut nodes = ctl
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .nodes;
    nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    nodes.retain(|n| {
        filters.matches(|k, v| match k {
            "id" => n.id.starts_with(v),
            "name" => n.hostname == v || n.hostname.contains(v),
            "role" => role_text(n.role) == v,
            _ => label_matches(&n.labels, v),
        })
    });
    if list.quiet {
        crate::format::print_ids(nodes.iter().map(|x| x.id.as_str()));
        return Ok(());
    }
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let rows: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "ID": n.id,
                "Self": n.id == me,
                "Hostname": n.hostname,
                "Status": state_text(n.state),
                "Availability": availability_text(n.availability),
                "ManagerStatus": manager_status_text(n.manager_status),
                "EngineVersion": n.version,
                "CertExpiry": n.cert_expiry,
                "Role": role_text(n.role),
                "Labels": n.labels,
            })
        })
        .collect();
    output.print(&rows, || {
        println!(
            "{:<19} {:<20} {:<8} {:<13} {:<21} {:<15} ENGINE VERSION",
            "ID", "HOSTNAME", "STATUS", "AVAILABILITY", "CERT EXPIRY", "MANAGER STATUS"
        );
        for n in &nodes {
            let id = if n.id == me {
                format!("{} *", n.id)
            } else {
                n.id.clone()
            };
            println!(
                "{:<19} {:<20} {:<8} {:<13} {:<21} {:<15} {}",
                id,
                n.hostname,
                state_text(n.state),
                availability_text(n.availability),
                dash(&n.cert_expiry),
                manager_status_text(n.manager_status),
                dash(&n.version)
            );
        }
    })
}

/// `label=KEY` or `label=KEY=VALUE` against `labels`.
pub(super) fn label_matches(labels: &std::collections::HashMap<String, String>, v: &str) -> bool {
    match v.split_once('=') {
        Some((k, want)) => labels.get(k).is_some_and(|x| x == want),
        None => labels.contains_key(v),
    }
}
