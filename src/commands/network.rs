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
    let ipam_config = if n.subnet.is_empty() {
        serde_json::json!([])
    } else {
        let mut c = serde_json::json!({ "Subnet": n.subnet, "Gateway": n.gateway });
        if !n.ip_range.is_empty() {
            c["IPRange"] = n.ip_range.clone().into();
        }
        serde_json::json!([c])
    };
    let mut v = serde_json::json!({
        "Name": n.name,
        "Id": n.id,
        "Created": if n.created_at_ms == 0 { String::new() } else { rfc3339_ms(n.created_at_ms) },
        "Scope": scope,
        "Driver": n.driver,
        "EnableIPv6": false,
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
                let mut c = serde_json::json!({
                    "Name": e.task_name,
                    "EndpointID": format!("{}-{}", e.task_id, n.id),
                    "IPv4Address": format!("{}/{}", e.ip, n.subnet.split_once('/').map(|x| x.1).unwrap_or("32")),
                    "IPv6Address": "",
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

/// `weft network ls [-q] [--filter K=V]`.
async fn ls(
    c: &Client,
    ctl: &mut weft_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
    quiet: bool,
    filter: &[String],
) -> anyhow::Result<()> {
    let filters: Vec<(String, String)> = filter
        .iter()
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("invalid --filter {f:?}: use key=value"))
        })
        .collect::<anyhow::Result<_>>()?;
    for (k, _) in &filters {
        if !matches!(k.as_str(), "name" | "driver" | "label" | "id") {
            bail!("unknown filter {k:?}: use name=, id=, driver= or label=");
        }
    }
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
        filters.iter().all(|(k, v)| match k.as_str() {
            "name" => n.name.contains(v.as_str()),
            "id" => n.id.starts_with(v.as_str()),
            "driver" => n.driver == *v,
            _ => match v.split_once('=') {
                Some((lk, lv)) => n.labels.get(lk).is_some_and(|x| x == lv),
                None => n.labels.contains_key(v.as_str()),
            },
        })
    });
    nets.sort_by(|a, b| a.name.cmp(&b.name));
    if quiet {
        for n in nets {
            println!("{}", n.id);
        }
        return Ok(());
    }
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
            if n.scope.is_empty() {
                "swarm"
            } else {
                n.scope.as_str()
            },
            dash(n.subnet.clone()),
            dash(n.mtu.to_string()),
            flags.join(",")
        );
    }
    Ok(())
}

pub async fn network(c: &Client, cmd: crate::cli::NetworkCommand) -> anyhow::Result<()> {
    use crate::cli::NetworkCommand as N;
    let mut ctl = c.control();
    match cmd {
        N::Create(a) => {
            let n = ctl
                .create_network(pb::CreateNetworkRequest {
                    name: a.name,
                    driver: a.driver,
                    subnet: a.subnet.unwrap_or_default(),
                    gateway: a.gateway.unwrap_or_default(),
                    ip_range: a.ip_range.unwrap_or_default(),
                    internal: a.internal,
                    attachable: a.attachable,
                    mtu: a.mtu.unwrap_or(0),
                    labels: kv(&a.labels, "--label")?,
                    options: kv(&a.opts, "--opt")?,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            println!("{}", n.id);
        }
        N::Ls { quiet, filter } => ls(c, &mut ctl, quiet, &filter).await?,
        N::Inspect { verbose, networks } => {
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
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        N::Connect { ip, network, task } => {
            ctl.connect_network(pb::ConnectNetworkRequest {
                network,
                task,
                ip: ip.unwrap_or_default(),
            })
            .await
            .map_err(rpc)?;
        }
        N::Disconnect { network, task } => {
            ctl.disconnect_network(pb::DisconnectNetworkRequest { network, task })
                .await
                .map_err(rpc)?;
        }
        N::Rm { networks } => {
            for n in networks {
                ctl.remove_network(pb::RemoveNetworkRequest { network: n.clone() })
                    .await
                    .map_err(rpc)
                    .with_context(|| format!("removing network {n}"))?;
                println!("{n}");
            }
        }
    }
    Ok(())
}
