//! `weft network …`.

use super::*;

fn network_json(d: &pb::NetworkDetail) -> serde_json::Value {
    let n = d.network.clone().unwrap_or_default();
    let scope = if n.scope.is_empty() {
        "swarm"
    } else {
        n.scope.as_str()
    };
    let options = match n.driver.as_str() {
        "overlay" => serde_json::json!({
            "com.docker.network.driver.overlay.vxlanid_list": n.vni.to_string(),
            "encrypted": n.encrypted.to_string(),
        }),
        "bridge" => serde_json::json!({
            "com.docker.network.bridge.name": "br0",
            "com.docker.network.bridge.enable_ip_masquerade": (!n.internal).to_string(),
            "com.docker.network.driver.mtu": n.mtu.to_string(),
        }),
        _ => serde_json::json!({}),
    };
    // One IPAM entry per family, as Docker's (aux addresses with theirs).
    let ipam_entry = |subnet: &str, gateway: &str, range: &str, v6: bool| {
        let mut c = serde_json::json!({ "Subnet": subnet, "Gateway": gateway });
        if !range.is_empty() {
            c["IPRange"] = range.into();
        }
        let aux: std::collections::BTreeMap<&String, &String> = (n.aux_addresses.iter())
            .filter(|(_, ip)| ip.contains(':') == v6)
            .collect();
        if !aux.is_empty() {
            c["AuxiliaryAddresses"] = serde_json::json!(aux);
        }
        c
    };
    let ipam_config: Vec<serde_json::Value> = [
        (
            n.subnet.as_str(),
            n.gateway.as_str(),
            n.ip_range.as_str(),
            false,
        ),
        (
            n.subnet6.as_str(),
            n.gateway6.as_str(),
            n.ip_range6.as_str(),
            true,
        ),
    ]
    .into_iter()
    .filter(|(subnet, ..)| !subnet.is_empty())
    .map(|(s, g, r, v6)| ipam_entry(s, g, r, v6))
    .collect();
    let mut v = serde_json::json!({
        "Name": n.name,
        "Id": n.id,
        "Created": if n.created_at_ms == 0 { String::new() } else { rfc3339_ms(n.created_at_ms) },
        "Scope": scope,
        "Driver": n.driver,
        "EnableIPv4": !n.subnet.contains(':'),
        "EnableIPv6": n.ipv6 || n.subnet.contains(':'),
        "IPAM": { "Driver": "default", "Options": {}, "Config": ipam_config },
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": n.ingress,
        "ConfigOnly": false,
        "Containers": {},
        "Options": options,
        "Labels": n.labels,
        "VNI": n.vni,
        "MTU": n.mtu,
        "MTULimitedBy": n.mtu_limited_by,
        "Encrypted": n.encrypted,
        "NodeID": n.node_id,
    });
    if !d.endpoints.is_empty() || !d.peers.is_empty() {
        let containers: serde_json::Map<String, serde_json::Value> = d
            .endpoints
            .iter()
            .map(|e| {
                // An IPv6-only network's one address is its IPv6 one.
                let prefix =
                    |s: &str, dflt| s.split_once('/').map(|x| x.1).unwrap_or(dflt).to_string();
                let (v4, v6) = if e.ip.contains(':') {
                    (
                        String::new(),
                        format!("{}/{}", e.ip, prefix(&n.subnet, "128")),
                    )
                } else {
                    (
                        format!("{}/{}", e.ip, prefix(&n.subnet, "32")),
                        if e.ip6.is_empty() {
                            String::new()
                        } else {
                            format!("{}/{}", e.ip6, prefix(&n.subnet6, "128"))
                        },
                    )
                };
                let mut c = serde_json::json!({
                    "Name": e.task_name,
                    "EndpointID": format!("{}-{}", e.task_id, n.id),
                    "IPv4Address": v4,
                    "IPv6Address": v6,
                    "MacAddress": e.mac,
                    "Node": e.hostname,
                    "NodeID": e.node_id,
                });
                // A foreign runtime's container: which, and its own names.
                if let Some(x) = &e.external {
                    c["Runtime"] = serde_json::json!(x.runtime);
                    c["ContainerID"] = serde_json::json!(x.container_id);
                    c["ContainerName"] = serde_json::json!(x.container_name);
                    c["Interface"] = serde_json::json!(x.ifname);
                }
                (e.task_id.clone(), c)
            })
            .collect();
        v["Containers"] = serde_json::Value::Object(containers);
    }
    if !d.peers.is_empty() {
        v["Peers"] = d
            .peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "Name": p.hostname,
                    "NodeID": p.node_id,
                    "IP": p.vtep,
                    "ConfigVersion": p.config_version,
                    "AppliedVersion": p.applied_version,
                    "Behind": p.behind,
                    "ApplyError": p.apply_error,
                    "TunnelIP": p.tunnel_ip,
                    "LastHandshakeMs": p.last_handshake_ms,
                })
            })
            .collect();
    }
    v
}

/// `weft network ls [-q] [--filter K=V] [--format F]`.
async fn ls(
    c: &Client,
    ctl: &mut weft_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
    list: &crate::cli::ListFlags,
) -> anyhow::Result<()> {
    let filters = crate::format::Filters::parse(&list.filter, &["name", "id", "driver", "label"])?;
    let output = crate::format::Output::parse(list.format.as_deref())?;
    let mut nets = ctl
        .list_networks(pb::ListNetworksRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .networks;
    // A node's own view: its host and none modes too (a remote
    // manager's listing is the cluster's, without them).
    if !c.remote {
        nets.extend(BUILTIN_MODES.iter().map(|(n, d)| builtin_network(n, d)));
    }
    nets.retain(|n| {
        filters.matches(|k, v| match k {
            "name" => n.name.contains(v),
            "id" => n.id.starts_with(v),
            "driver" => n.driver == v,
            _ => super::node::label_matches(&n.labels, v),
        })
    });
    nets.sort_by(|a, b| a.name.cmp(&b.name));
    if list.quiet {
        crate::format::print_ids(nets.iter().map(|x| x.id.as_str()));
        return Ok(());
    }
    let scope = |n: &pb::Network| {
        if n.scope.is_empty() {
            "swarm".to_string()
        } else {
            n.scope.clone()
        }
    };
    let rows: Vec<serde_json::Value> = nets
        .iter()
        .map(|n| {
            serde_json::json!({
                "ID": n.id,
                "Name": n.name,
                "Driver": n.driver,
                "Scope": scope(n),
                "Subnet": n.subnet,
                "Gateway": n.gateway,
                "IPv6Subnet": n.subnet6,
                "MTU": n.mtu,
                "Internal": n.internal,
                "Attachable": n.attachable,
                "Encrypted": n.encrypted,
                "Ingress": n.ingress,
                "Labels": n.labels,
            })
        })
        .collect();
    output.print(&rows, || print_networks(&nets, scope))
}

fn print_networks(nets: &[pb::Network], scope: impl Fn(&pb::Network) -> String) {
    println!(
        "{:<17} {:<20} {:<8} {:<6} {:<18} {:<6} FLAGS",
        "NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "MTU"
    );
    let dash = |s: String| {
        if s.is_empty() || s == "0" {
            "-".to_string()
        } else {
            s
        }
    };
    for n in nets {
        let mut flags = Vec::new();
        if n.internal {
            flags.push("internal");
        }
        if n.attachable {
            flags.push("attachable");
        }
        if n.encrypted {
            flags.push("encrypted");
        }
        if n.ingress {
            flags.push("ingress");
        }
        println!(
            "{:<17} {:<20} {:<8} {:<6} {:<18} {:<6} {}",
            n.id,
            n.name,
            n.driver,
            scope(n),
            dash(
                [&n.subnet, &n.subnet6]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            dash(n.mtu.to_string()),
            flags.join(",")
        );
    }
}

pub async fn network(c: &Client, cmd: crate::cli::NetworkCommand) -> anyhow::Result<()> {
    use crate::cli::NetworkCommand as N;
    let mut ctl = c.control();
    match cmd {
        N::Create(a) => {
            let (subnet, subnet6) = by_family("--subnet", &a.subnet)?;
            let (gateway, gateway6) = by_family("--gateway", &a.gateway)?;
            let (ip_range, ip_range6) = by_family("--ip-range", &a.ip_range)?;
            let n = ctl
                .create_network(pb::CreateNetworkRequest {
                    ipv6: a.ipv6,
                    no_ipv4: !a.ipv4,
                    subnet6,
                    gateway6,
                    ip_range6,
                    name: a.name,
                    driver: a.driver,
                    subnet,
                    gateway,
                    ip_range,
                    internal: a.internal,
                    attachable: a.attachable,
                    mtu: a.mtu.unwrap_or(0),
                    labels: kv(&a.labels, "--label")?,
                    options: kv(&a.opts, "--opt")?,
                    aux_addresses: aux_addresses(&a.aux_address)?,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            println!("{}", n.id);
        }
        N::Ls { list } => ls(c, &mut ctl, &list).await?,
        N::Inspect {
            verbose,
            format,
            networks,
        } => {
            crate::format::Output::parse(format.as_deref())?;
            let mut out = Vec::new();
            for n in networks {
                if let Some((name, driver)) = BUILTIN_MODES.iter().find(|(x, _)| *x == n) {
                    out.push(network_json(&pb::NetworkDetail {
                        network: Some(builtin_network(name, driver)),
                        ..Default::default()
                    }));
                    continue;
                }
                let d = ctl
                    .get_network(pb::GetNetworkRequest {
                        network: n,
                        verbose,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                out.push(network_json(&d));
            }
            crate::format::print_objects(&out, format.as_deref())?;
        }
        N::Connect {
            ip,
            ip6,
            aliases,
            network,
            task,
        } => {
            ctl.connect_network(pb::ConnectNetworkRequest {
                ip6: ip6.unwrap_or_default(),
                network,
                task,
                ip: ip.unwrap_or_default(),
                aliases,
            })
            .await
            .map_err(rpc)?;
        }
        N::Disconnect {
            force,
            network,
            task,
        } => {
            let r = ctl
                .disconnect_network(pb::DisconnectNetworkRequest { network, task })
                .await;
            match r {
                Err(e) if force && absent(&e) => {}
                r => {
                    r.map_err(rpc)?;
                }
            }
        }
        N::Rm { force, networks } => {
            for n in networks {
                if force {
                    match disconnect_standalone(&mut ctl, &n).await {
                        Err(e) if absent(&e) => continue,
                        r => r.map_err(rpc)?,
                    }
                }
                ctl.remove_network(pb::RemoveNetworkRequest { network: n.clone() })
                    .await
                    .map_err(rpc)
                    .with_context(|| format!("removing network {n}"))?;
                println!("{n}");
            }
        }
        N::Prune { force, filter } => prune(&mut ctl, force, &filter).await?,
    }
    Ok(())
}

/// A refusal that says the object is not there (or not attached: the
/// store's NotConnected is NOT_FOUND too).
fn absent(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::NotFound
}

/// `network rm -f`: disconnects the standalone tasks attached to network
/// `net` (NOT_FOUND when there is no such network).
async fn disconnect_standalone(
    ctl: &mut weft_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
    net: &str,
) -> Result<(), tonic::Status> {
    let d = ctl
        .get_network(pb::GetNetworkRequest {
            network: net.to_string(),
            verbose: false,
        })
        .await?
        .into_inner();
    let name = d.network.map(|n| n.name).unwrap_or_default();
    let tasks = ctl
        .list_tasks(pb::ListTasksRequest::default())
        .await?
        .into_inner()
        .tasks;
    for t in tasks
        .iter()
        .filter(|t| t.service_version == 0)
        .filter(|t| t.addresses.iter().any(|a| a.network == name))
    {
        let r = ctl
            .disconnect_network(pb::DisconnectNetworkRequest {
                network: name.clone(),
                task: t.id.clone(),
            })
            .await;
        match r {
            Err(e) if absent(&e) => {}
            r => {
                r?;
            }
        }
    }
    Ok(())
}

/// `weft network prune`: removes what nothing uses (the managers refuse
/// the others), printing what went as Docker does.
async fn prune(
    ctl: &mut weft_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
    force: bool,
    filter: &[String],
) -> anyhow::Result<()> {
    let filters = crate::format::Filters::parse(filter, &["label", "label!", "until"])?;
    let mut older_than = Vec::new();
    for (k, v) in filter.iter().filter_map(|f| f.split_once('=')) {
        if k == "until" {
            older_than.push(
                crate::cli::parse_duration(v).map_err(|e| anyhow::anyhow!("until={v}: {e}"))?,
            );
        }
    }
    if !force
        && !super::volume::confirmed(
            "WARNING! This will remove all custom networks not used by at least one task.",
        )?
    {
        return Ok(());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let nets = ctl
        .list_networks(pb::ListNetworksRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .networks;
    let mut deleted = Vec::new();
    for n in nets.iter().filter(|n| !n.ingress) {
        let chosen = filters.matches(|k, v| match k {
            "label" => super::node::label_matches(&n.labels, v),
            "label!" => !super::node::label_matches(&n.labels, v),
            _ => older_than
                .iter()
                .all(|d| n.created_at_ms.saturating_add(d.as_millis() as u64) <= now_ms),
        });
        if !chosen {
            continue;
        }
        let r = ctl
            .remove_network(pb::RemoveNetworkRequest {
                network: n.id.clone(),
            })
            .await;
        match r {
            Ok(_) => deleted.push(n.name.clone()),
            // In use (or gone meanwhile): not prunable.
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::NotFound
                ) => {}
            Err(e) => return Err(rpc(e)).with_context(|| format!("removing network {}", n.name)),
        }
    }
    if !deleted.is_empty() {
        println!("Deleted Networks:");
        for n in deleted {
            println!("{n}");
        }
    }
    Ok(())
}

/// `--aux-address NAME=IP` flags: a name given twice is refused (the
/// first address would silently not be kept out of allocation).
/// The values of a flag given once per family (`--subnet 10.1.0.0/24
/// --subnet fd00:1::/64`): the IPv4 one and the IPv6 one, each possibly
/// empty. A value that is neither goes with IPv4, for the manager's error.
pub(crate) fn by_family(flag: &str, values: &[String]) -> anyhow::Result<(String, String)> {
    let (mut v4, mut v6) = (String::new(), String::new());
    for v in values {
        let addr = v.split_once('/').map_or(v.as_str(), |(a, _)| a);
        let slot = if addr.parse::<std::net::Ipv6Addr>().is_ok() {
            &mut v6
        } else {
            &mut v4
        };
        if !slot.is_empty() {
            anyhow::bail!(
                "{flag} is given twice for one address family ({slot} and {v}): give at most one \
                 IPv4 and one IPv6 value"
            );
        }
        *slot = v.clone();
    }
    Ok((v4, v6))
}

fn aux_addresses(flags: &[String]) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let map = kv(flags, "--aux-address")?;
    if map.len() != flags.len() {
        let mut seen = std::collections::BTreeSet::new();
        for f in flags {
            let name = f.split_once('=').map_or(f.as_str(), |(k, _)| k);
            if !seen.insert(name) {
                anyhow::bail!("--aux-address {name} is given twice: give each name once");
            }
        }
    }
    Ok(map)
}
