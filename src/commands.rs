//! The client side of every command except `daemon`: call the local daemon
//! over its unix socket and print the answer.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tonic::transport::Channel;
use weft_proto::v1 as pb;
use weft_proto::v1::control_client::ControlClient;
use weft_proto::v1::daemon_client::DaemonClient;

use crate::cli::{
    AvailabilityArg, Format, InitArgs, JoinArgs, JoinTokenArgs, LeaveArgs, NodeCommand, RoleArg,
};
use crate::task_text;

/// Connection to the local daemon, or to a manager's control API.
pub struct Client {
    channel: Channel,
    remote: bool,
}

/// TLS files for `-H tcp://`.
#[derive(Debug, Default)]
pub struct TlsFiles {
    /// CA to trust.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
}

fn read_file(p: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read the {what} {}", p.display()))
}

impl Client {
    /// Connects to the daemon (or manager) named by `-H` / `WEFT_HOST`.
    pub async fn connect(host: &str, tls: &TlsFiles) -> anyhow::Result<Client> {
        if let Some(addr) = host.strip_prefix("tcp://") {
            let ca = tls.ca.as_ref().with_context(
                || "-H tcp:// needs --tlscacert (the cluster CA, e.g. /var/lib/weft/certs/ca.pem)",
            )?;
            let ca = read_file(ca, "CA certificate")?;
            let identity = match (&tls.cert, &tls.key) {
                (Some(c), Some(k)) => Some((read_file(c, "certificate")?, read_file(k, "key")?)),
                (None, None) => None,
                _ => bail!("give both --tlscert and --tlskey, or neither"),
            };
            let channel = weft_proto::tls::channel_to_manager(
                addr,
                &ca,
                identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
            )
            .await?;
            return Ok(Client {
                channel,
                remote: true,
            });
        }
        let path = socket_path(host)?;
        let channel = weft_proto::tls::connect_unix(&path).await.map_err(|e| {
            anyhow::anyhow!(
                "{e}\nIs the weft daemon running? Start it with `weft daemon` (or `systemctl start weft`), \
                 or point -H/WEFT_HOST at its socket."
            )
        })?;
        Ok(Client {
            channel,
            remote: false,
        })
    }

    pub(crate) fn daemon(&self) -> DaemonClient<Channel> {
        DaemonClient::new(self.channel.clone()).max_decoding_message_size(CLI_RECEIVE_LIMIT_BYTES)
    }

    /// This node's ID, or empty when talking to a remote manager.
    async fn self_id(&self) -> anyhow::Result<String> {
        if self.remote {
            return Ok(String::new());
        }
        Ok(self
            .daemon()
            .info(pb::InfoRequest {})
            .await
            .map_err(rpc)?
            .into_inner()
            .node_id)
    }

    /// Refuses node-local commands over tcp://.
    pub fn require_local(&self, what: &str) -> anyhow::Result<()> {
        if self.remote {
            bail!("`weft {what}` talks to the local daemon; use -H unix://PATH, not tcp://");
        }
        Ok(())
    }

    pub(crate) fn images(&self) -> weft_proto::v1::images_client::ImagesClient<Channel> {
        weft_proto::v1::images_client::ImagesClient::new(self.channel.clone())
            .max_decoding_message_size(CLI_RECEIVE_LIMIT_BYTES)
    }

    pub(crate) fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.channel.clone()).max_decoding_message_size(CLI_RECEIVE_LIMIT_BYTES)
    }
}

/// Largest answer the CLI reads. Answers about the whole cluster (`service
/// ls` lists every task, with its command) outgrow tonic's 4 MiB default
/// well within the cluster's limits; the CLI asks its own daemon or a
/// manager it trusts, so it can take as much as the Raft transport does.
const CLI_RECEIVE_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// `unix:///path` → `/path`.
pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    match host.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => bail!("invalid daemon address {host:?}: use unix:///path/to/weft.sock"),
    }
}

/// Turns a gRPC status into an error that reads like a sentence.
pub(crate) fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `weft init`.
pub async fn init(c: &Client, a: InitArgs) -> anyhow::Result<()> {
    if a.force_new_cluster {
        return force_new_cluster(c).await;
    }
    let resp = c
        .daemon()
        .init(pb::InitRequest {
            advertise_addr: a.advertise_addr.unwrap_or_default(),
            listen_addr: a.listen_addr.unwrap_or_default(),
            data_path_addr: a.data_path_addr.unwrap_or_default(),
            data_path_port: a.data_path_port.unwrap_or(0),
            default_addr_pools: a.default_addr_pool,
            default_addr_pool_mask_length: a.default_addr_pool_mask_length.unwrap_or(0),
            cert_expiry_secs: a.cert_expiry.map(|d| d.as_secs().max(1)).unwrap_or(0),
            heartbeat_period_ms: a.heartbeat_period.map(|d| ms(d).max(1)).unwrap_or(0),
            force_new_cluster: false,
            wg_key_rotation_secs: a.wg_key_rotation.map(|d| d.as_secs().max(1)).unwrap_or(0),
            wg_port: a.wg_port.unwrap_or(0),
            ingress_subnet: a.ingress_subnet.unwrap_or_default(),
            autolock: a.autolock,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let tokens = resp.tokens.unwrap_or_default();
    println!(
        "Cluster initialized: current node ({}) is now a manager.\n",
        resp.node_id
    );
    println!("To add a worker to this cluster, run the following command:\n");
    println!(
        "    weft join --token {} {}\n",
        tokens.worker, resp.advertise_addr
    );
    println!(
        "To add a manager to this cluster, run 'weft join-token manager' and follow the instructions."
    );
    if !resp.unlock_key.is_empty() {
        println!();
        crate::unlock::print_key(&resp.unlock_key);
    }
    Ok(())
}

/// `weft init --force-new-cluster`: what to do next is part of the answer,
/// since the lost managers are dangerous until removed and wiped.
async fn force_new_cluster(c: &Client) -> anyhow::Result<()> {
    let resp = c
        .daemon()
        .init(pb::InitRequest {
            force_new_cluster: true,
            ..Default::default()
        })
        .await
        .map_err(rpc)?
        .into_inner();
    println!(
        "Cluster {} recovered: this node ({}) is now its only manager, with its state kept.\n",
        resp.cluster_id, resp.node_id
    );
    if resp.lost_manager_ids.is_empty() {
        return Ok(());
    }
    let lost = resp.lost_manager_ids.join(" ");
    println!("The lost managers are still listed as managers. Before any of them runs again:\n");
    println!("    weft node demote {lost}");
    println!("    weft node rm --force {lost}\n");
    println!(
        "and wipe each of them: `weft leave --force` on it, or delete its data directory.\n\
         Started with its old data, a lost manager could form the old cluster again with another."
    );
    println!("Then add managers with the token that `weft join-token manager` prints.");
    Ok(())
}

/// `weft join`.
pub async fn join(c: &Client, a: JoinArgs) -> anyhow::Result<()> {
    let resp = c
        .daemon()
        .join(pb::DaemonJoinRequest {
            token: a.token,
            remote_addr: a.remote_addr,
            advertise_addr: a.advertise_addr.unwrap_or_default(),
            listen_addr: a.listen_addr.unwrap_or_default(),
            data_path_addr: a.data_path_addr.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let role = if resp.role == pb::NodeRole::Manager as i32 {
        "manager"
    } else {
        "worker"
    };
    if resp.rejoined {
        println!(
            "This node rejoined its cluster as the same node ({}), a {role}.",
            resp.node_id
        );
    } else {
        println!("This node joined a cluster as a {role}.");
    }
    Ok(())
}

/// `weft join-token`.
pub async fn join_token(c: &Client, a: JoinTokenArgs) -> anyhow::Result<()> {
    let role = match a.role {
        RoleArg::Worker => pb::NodeRole::Worker,
        RoleArg::Manager => pb::NodeRole::Manager,
    };
    let tokens = if a.rotate {
        c.control()
            .rotate_join_token(pb::RotateJoinTokenRequest { role: role as i32 })
            .await
    } else {
        c.control()
            .get_join_tokens(pb::GetJoinTokensRequest {})
            .await
    }
    .map_err(rpc)?
    .into_inner();
    let token = match a.role {
        RoleArg::Worker => tokens.worker,
        RoleArg::Manager => tokens.manager,
    };
    if a.quiet {
        println!("{token}");
        return Ok(());
    }
    if a.rotate {
        println!("Successfully rotated {} join token.\n", role_name(a.role));
    }
    if c.remote {
        println!("{token}");
        return Ok(());
    }
    let info = c
        .daemon()
        .info(pb::InfoRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    let addr = info
        .cluster
        .as_ref()
        .and_then(|cl| {
            cl.managers
                .iter()
                .find(|m| m.id == info.node_id)
                .map(|m| m.addr.clone())
        })
        .unwrap_or(info.node_addr);
    println!(
        "To add a {} to this cluster, run the following command:\n\n    weft join --token {token} {addr}\n",
        role_name(a.role)
    );
    Ok(())
}

fn role_name(r: RoleArg) -> &'static str {
    match r {
        RoleArg::Worker => "worker",
        RoleArg::Manager => "manager",
    }
}

/// `weft leave`.
pub async fn leave(c: &Client, a: LeaveArgs) -> anyhow::Result<()> {
    c.daemon()
        .leave(pb::DaemonLeaveRequest { force: a.force })
        .await
        .map_err(rpc)?;
    println!("Node left the cluster.");
    Ok(())
}

/// `weft info`.
pub async fn info(c: &Client) -> anyhow::Result<()> {
    let i = c
        .daemon()
        .info(pb::InfoRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    println!("Cluster: {}", i.state);
    println!(" Data dir: {}", i.data_dir);
    println!(" Exec root: {}", i.exec_root);
    if i.state == "inactive" {
        return Ok(());
    }
    if i.locked {
        println!(" Autolock: on, locked");
        println!(" Error: {}", i.error);
        return Ok(());
    }
    println!(" NodeID: {}", i.node_id);
    println!(" ClusterID: {}", i.cluster_id);
    println!(" Role: {}", role_text(i.role));
    if !i.node_addr.is_empty() {
        println!(" Node Address: {}", i.node_addr);
    }
    println!(" Certificate expires: {}", i.cert_expiry);
    if !i.error.is_empty() {
        println!(" Error: {}", i.error);
    }
    match &i.cluster {
        Some(cl) => {
            println!(" Leader: {} ({})", cl.leader_id, cl.leader_addr);
            println!(
                " Autolock: {}",
                if cl.autolock { "on, unlocked" } else { "off" }
            );
            println!(" Managers: {}", cl.managers_total);
            for m in &cl.managers {
                println!(
                    "  {} {:<20} {:<22} {}",
                    m.id,
                    m.hostname,
                    m.addr,
                    manager_status_text(m.manager_status)
                );
            }
            println!(" Nodes: {}", cl.nodes_total);
            println!(" Raft:");
            println!("  Term: {}", cl.raft_term);
            println!("  Commit index: {}", cl.raft_commit_index);
            println!("  Applied index: {}", cl.raft_applied_index);
            println!(" Heartbeat period: {}ms", cl.heartbeat_period_ms);
            println!(" Certificate expiry: {}h", cl.cert_expiry_secs / 3600);
            println!(" WireGuard port: {}", cl.wg_port);
            println!(
                " WireGuard key rotation: {}",
                rotation_text(cl.wg_key_rotation_secs)
            );
            println!(" Data path port: {}", cl.data_path_port);
            println!(" Ingress subnet: {}", cl.ingress_subnet);
            println!(
                " Default address pools: {} (mask length {})",
                cl.default_addr_pools.join(", "),
                cl.default_addr_pool_mask_length
            );
            println!(" CA fingerprint: {}", cl.ca_fingerprint);
        }
        None => {
            println!(" Manager addresses:");
            for m in &i.manager_addrs {
                println!("  {m}");
            }
        }
    }
    Ok(())
}

fn role_text(r: i32) -> &'static str {
    match pb::NodeRole::try_from(r) {
        Ok(pb::NodeRole::Manager) => "manager",
        Ok(pb::NodeRole::Worker) => "worker",
        _ => "unknown",
    }
}

fn manager_status_text(s: i32) -> &'static str {
    match pb::ManagerStatus::try_from(s) {
        Ok(pb::ManagerStatus::Leader) => "Leader",
        Ok(pb::ManagerStatus::Reachable) => "Reachable",
        Ok(pb::ManagerStatus::Unreachable) => "Unreachable",
        _ => "",
    }
}

fn state_text(s: i32) -> &'static str {
    match pb::NodeState::try_from(s) {
        Ok(pb::NodeState::Ready) => "Ready",
        Ok(pb::NodeState::Down) => "Down",
        _ => "Unknown",
    }
}

fn availability_text(a: i32) -> &'static str {
    match pb::Availability::try_from(a) {
        Ok(pb::Availability::Pause) => "Pause",
        Ok(pb::Availability::Drain) => "Drain",
        _ => "Active",
    }
}

/// `weft node …`.
pub async fn node(c: &Client, cmd: NodeCommand) -> anyhow::Result<()> {
    let mut ctl = c.control();
    match cmd {
        NodeCommand::Ls { quiet } => {
            let me = c.self_id().await?;
            let mut nodes = ctl
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .nodes;
            nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
            if quiet {
                for n in nodes {
                    println!("{}", n.id);
                }
                return Ok(());
            }
            println!(
                "{:<19} {:<20} {:<8} {:<13} {:<21} MANAGER STATUS",
                "ID", "HOSTNAME", "STATUS", "AVAILABILITY", "CERT EXPIRY"
            );
            for n in nodes {
                let id = if n.id == me {
                    format!("{} *", n.id)
                } else {
                    n.id.clone()
                };
                let expiry = if n.cert_expiry.is_empty() {
                    "-"
                } else {
                    n.cert_expiry.as_str()
                };
                println!(
                    "{:<19} {:<20} {:<8} {:<13} {:<21} {}",
                    id,
                    n.hostname,
                    state_text(n.state),
                    availability_text(n.availability),
                    expiry,
                    manager_status_text(n.manager_status)
                );
            }
        }
        NodeCommand::Inspect { format, nodes } => {
            let mut out = Vec::new();
            for n in nodes {
                let node = ctl
                    .get_node(pb::GetNodeRequest { node: n })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                out.push(node);
            }
            match format {
                Format::Json => {
                    let json: Vec<serde_json::Value> = out.iter().map(node_json).collect();
                    println!("{}", serde_json::to_string_pretty(&json)?);
                }
                Format::Pretty => {
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
            }
        }
        NodeCommand::Update {
            availability,
            label_add,
            label_rm,
            node,
        } => {
            let mut adds = HashMap::new();
            for l in label_add {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                if k.is_empty() {
                    bail!("invalid --label-add {l:?}: use key=value");
                }
                adds.insert(k.to_string(), v.to_string());
            }
            if availability.is_none() && adds.is_empty() && label_rm.is_empty() {
                bail!("nothing to update: give --availability, --label-add or --label-rm");
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
        }
        NodeCommand::Promote { nodes } => {
            for n in nodes {
                let r = ctl
                    .set_node_role(pb::SetNodeRoleRequest {
                        node: n.clone(),
                        role: pb::NodeRole::Manager as i32,
                        force: false,
                    })
                    .await
                    .map_err(rpc)
                    .with_context(|| format!("promoting {n}"))?
                    .into_inner();
                println!("Node {} promoted to a manager in the cluster.", r.hostname);
            }
        }
        NodeCommand::Demote { force, nodes } => {
            for n in nodes {
                let r = ctl
                    .set_node_role(pb::SetNodeRoleRequest {
                        node: n.clone(),
                        role: pb::NodeRole::Worker as i32,
                        force,
                    })
                    .await
                    .map_err(rpc)
                    .with_context(|| format!("demoting {n}"))?
                    .into_inner();
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
        "Description": crate::resources::node_json(n.resources.as_ref()),
        "CreatedAtMs": n.created_at_ms,
        "UpdatedAtMs": n.updated_at_ms,
    })
}

fn kv(list: &[String], what: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for item in list {
        let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
        if k.is_empty() {
            bail!("invalid {what} {item:?}: use key=value");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The built-in networks that are modes rather than store objects.
const BUILTIN_MODES: [(&str, &str); 2] = [("host", "host"), ("none", "null")];

/// A built-in mode network (`host`, `none`) in the listing's shape.
fn builtin_network(name: &str, driver: &str) -> pb::Network {
    pb::Network {
        id: name.to_string(),
        name: name.to_string(),
        driver: driver.to_string(),
        scope: "local".into(),
        ..Default::default()
    }
}

/// RFC 3339 of unix ms, as Docker prints `Created`.
fn rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

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
                (
                    e.task_id.clone(),
                    serde_json::json!({
                        "Name": e.task_name,
                        "EndpointID": format!("{}-{}", e.task_id, n.id),
                        "IPv4Address": format!("{}/{}", e.ip, n.subnet.split_once('/').map(|x| x.1).unwrap_or("32")),
                        "IPv6Address": "",
                        "MacAddress": e.mac,
                        "Node": e.hostname,
                        "NodeID": e.node_id,
                    }),
                )
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

/// The WireGuard key rotation interval as `weft info` shows it.
fn rotation_text(secs: u64) -> String {
    if secs == 0 {
        "off".to_string()
    } else {
        format!("{secs}s")
    }
}

/// `weft cluster …`.
pub async fn cluster(c: &Client, cmd: crate::cli::ClusterCommand) -> anyhow::Result<()> {
    use crate::cli::ClusterCommand as C;
    match cmd {
        C::Update {
            wg_key_rotation,
            cert_expiry,
            ingress_subnet,
            autolock,
        } => {
            let s = c
                .control()
                .update_cluster(pb::UpdateClusterRequest {
                    set_autolock: autolock.is_some(),
                    autolock: autolock.unwrap_or(false),
                    set_wg_key_rotation: wg_key_rotation.is_some(),
                    wg_key_rotation_secs: wg_key_rotation.map(|d| d.as_secs()).unwrap_or(0),
                    set_cert_expiry: cert_expiry.is_some(),
                    cert_expiry_secs: cert_expiry.map(|d| d.as_secs()).unwrap_or(0),
                    ingress_subnet: ingress_subnet.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            println!(
                "WireGuard key rotation: {}",
                rotation_text(s.wg_key_rotation_secs)
            );
            println!("Certificate expiry: {}h", s.cert_expiry_secs / 3600);
            println!("Ingress subnet: {}", s.ingress_subnet);
            println!("Autolock: {}", if s.autolock { "on" } else { "off" });
            if !s.unlock_key.is_empty() {
                println!();
                crate::unlock::print_key(&s.unlock_key);
            }
        }
    }
    Ok(())
}

/// `weft network …`.
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
        N::Ls { quiet, filter } => {
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
        }
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

/// `weft run`.
pub async fn run_task(c: &Client, a: crate::cli::RunArgs) -> anyhow::Result<()> {
    if a.ip.is_some() && a.networks.is_empty() {
        bail!("--ip needs --network");
    }
    let networks = a
        .networks
        .iter()
        .enumerate()
        .map(|(i, n)| pb::NetworkRef {
            network: n.clone(),
            ip: if i == 0 {
                a.ip.clone().unwrap_or_default()
            } else {
                String::new()
            },
        })
        .collect();
    let env = kv(&a.env, "--env")?;
    let ports = a
        .publish
        .iter()
        .map(|p| crate::publish::run_publish(p))
        .collect::<anyhow::Result<_>>()?;
    let stop = crate::workload::stop_from_args(&a.stop)?;
    let log = crate::logs_cmd::log_config(&a.log_opt)?;
    let (command, container) = crate::workload::from_args(a.container)?;
    crate::workload::check_resources(&a.resources, container.is_some())?;
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
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if !a.detach {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let tasks = c
                .daemon()
                .ps(pb::PsRequest { all: true })
                .await
                .map_err(rpc)?
                .into_inner()
                .tasks;
            let t = tasks.iter().find(|t| t.id == task.id);
            match t.map(task_text::state) {
                Some(pb::TaskState::Running | pb::TaskState::Exited | pb::TaskState::Shutdown) => {
                    break;
                }
                Some(s) if task_text::is_failed(s) => {
                    let error = t.map(task_text::error).unwrap_or_default();
                    bail!("task {} failed to start: {error}", task.name);
                }
                _ if std::time::Instant::now() > deadline => {
                    bail!(
                        "task {} was created but is not running after 30s; see `weft ps -a`",
                        task.name
                    )
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }
    println!("{}", task.id);
    Ok(())
}

/// `weft ps`.
pub async fn ps(c: &Client, all: bool, quiet: bool) -> anyhow::Result<()> {
    let tasks = c
        .daemon()
        .ps(pb::PsRequest { all })
        .await
        .map_err(rpc)?
        .into_inner()
        .tasks;
    if quiet {
        for t in tasks {
            println!("{}", t.id);
        }
        return Ok(());
    }
    println!(
        "{:<17} {:<20} {:<10} {:<30} {:<20} COMMAND",
        "TASK ID", "NAME", "STATE", "ADDRESSES", "PORTS"
    );
    for t in tasks {
        let addrs: Vec<String> = t
            .addresses
            .iter()
            .map(|a| format!("{}={}", a.network, a.ip))
            .collect();
        let state = task_text::current(&t);
        let mut addrs = addrs.join(",");
        if !t.network_mode.is_empty() {
            addrs = t.network_mode.clone();
        }
        let ports: Vec<String> = t
            .ports
            .iter()
            .map(|p| format!("{}->{}/{}", p.published, p.target, p.protocol))
            .collect();
        println!(
            "{:<17} {:<20} {:<10} {:<30} {:<20} {}",
            t.id,
            t.name,
            state,
            addrs,
            ports.join(","),
            t.command.join(" ")
        );
    }
    Ok(())
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

/// Waits until `service` runs all its desired tasks at its latest version,
/// printing progress like `docker service create`.
async fn converge(c: &Client, service: &str) -> anyhow::Result<()> {
    let mut ctl = c.control();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let s = ctl
            .get_service(pb::GetServiceRequest {
                service: service.to_string(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        let current = s
            .tasks
            .iter()
            .filter(|t| task_text::state(t) == pb::TaskState::Running)
            .filter(|t| t.desired_state() == pb::TaskState::Running)
            .count() as u64;
        let line = format!(
            "{}: {}/{} running",
            s.spec.as_ref().map(|x| x.name.as_str()).unwrap_or(service),
            current,
            s.desired
        );
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        let failed: Vec<&pb::Task> = s
            .tasks
            .iter()
            .filter(|t| task_text::is_failed(task_text::state(t)))
            .collect();
        if current == s.desired && s.tasks.len() as u64 == s.desired {
            eprintln!("verify: service converged");
            return Ok(());
        }
        if let Some(t) = failed.first()
            && std::time::Instant::now() > deadline
        {
            bail!("task {} failed: {}", t.name, task_text::error(t));
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "service {service} has not converged after 60s ({current}/{} running); see `weft service ps {service}`",
                s.desired
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn service_json(s: &pb::Service) -> serde_json::Value {
    let spec = s.spec.clone().unwrap_or_default();
    serde_json::json!({
        "ID": s.id,
        "Version": s.version,
        "CreatedAtMs": s.created_at_ms,
        "UpdatedAtMs": s.updated_at_ms,
        "Spec": {
            "Name": spec.name,
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
                })),
                "StopSignal": weft_proto::signal::name(
                    spec.stop.as_ref().map(|p| p.signal).filter(|s| *s != 0).unwrap_or(weft_proto::signal::SIGTERM)
                ),
                "StopGracePeriod": spec.stop.as_ref().filter(|p| p.has_grace).map(|p| p.grace_ms * 1_000_000).unwrap_or(10_000_000_000),
                "Resources": crate::resources::task_json(spec.resources.as_ref()),
            },
        },
        "Endpoint": {
            "VirtualIPs": s.vips.iter().map(|v| serde_json::json!({"Network": v.network, "Addr": v.vip})).collect::<Vec<_>>(),
        },
        "Running": s.running,
        "Desired": s.desired,
    })
}

/// `weft service …`.
pub async fn service(c: &Client, cmd: crate::cli::ServiceCommand) -> anyhow::Result<()> {
    use crate::cli::{EndpointModeArg, ModeArg, RestartArg, ServiceCommand as S};
    let mut ctl = c.control();
    match cmd {
        S::Create(a) => {
            let mode = match a.mode {
                Some(ModeArg::Global) => "global",
                _ => "replicated",
            };
            if matches!(a.mode, Some(ModeArg::Global)) && a.replicas.is_some() {
                bail!("--replicas cannot be combined with --mode global");
            }
            let stop = crate::workload::stop_from_args(&a.stop)?;
            let log = crate::logs_cmd::log_config(&a.log_opt)?;
            let (command, mut container) = crate::workload::from_args(a.container)?;
            crate::workload::check_resources(&a.resources, container.is_some())?;
            if let Some(ct) = container.as_mut().filter(|_| !a.no_resolve_image) {
                ct.image = crate::image_cmd::pin_digest(c, &ct.image).await;
            }
            let spec = pb::ServiceSpecMsg {
                restart_policy: crate::resources::restart_policy(&a.restart),
                resources: a.resources.to_wire(),
                log,
                name: a.name.clone(),
                mode: mode.into(),
                replicas: a.replicas.unwrap_or(if mode == "global" { 0 } else { 1 }),
                command,
                container,
                stop,
                env: kv(&a.env, "--env")?,
                networks: a.networks,
                endpoint_mode: match a.endpoint_mode {
                    Some(EndpointModeArg::Dnsrr) => "dnsrr".into(),
                    _ => "vip".into(),
                },
                constraints: a.constraints,
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
            let s = ctl
                .create_service(pb::CreateServiceRequest { spec: Some(spec) })
                .await
                .map_err(rpc)?
                .into_inner();
            println!("{}", s.id);
            if !a.detach {
                converge(c, &s.id).await?;
            }
        }
        S::Ls { quiet } => {
            let mut list = ctl
                .list_services(pb::ListServicesRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .services;
            list.sort_by(|a, b| {
                a.spec
                    .as_ref()
                    .map(|s| &s.name)
                    .cmp(&b.spec.as_ref().map(|s| &s.name))
            });
            if quiet {
                for s in list {
                    println!("{}", s.id);
                }
                return Ok(());
            }
            println!(
                "{:<17} {:<20} {:<11} {:<9} COMMAND",
                "ID", "NAME", "MODE", "REPLICAS"
            );
            for s in list {
                let spec = s.spec.clone().unwrap_or_default();
                println!(
                    "{:<17} {:<20} {:<11} {:<9} {}",
                    s.id,
                    spec.name,
                    spec.mode,
                    format!("{}/{}", s.running, s.desired),
                    spec.command.join(" ")
                );
            }
        }
        S::Ps { service } => {
            let s = ctl
                .get_service(pb::GetServiceRequest { service })
                .await
                .map_err(rpc)?
                .into_inner();
            println!(
                "{:<17} {:<40} {:<20} {:<8} {:<10} {:<22} ERROR",
                "TASK ID", "NAME", "NODE", "DESIRED", "CURRENT", "ADDRESSES"
            );
            for t in s.tasks {
                let addrs: Vec<String> = t
                    .addresses
                    .iter()
                    .map(|a| format!("{}={}", a.network, a.ip))
                    .collect();
                let current = task_text::current(&t);
                println!(
                    "{:<17} {:<40} {:<20} {:<8} {:<10} {:<22} {}",
                    t.id,
                    t.name,
                    t.hostname,
                    task_text::word(t.desired_state()),
                    current,
                    addrs.join(","),
                    task_text::error(&t)
                );
            }
        }
        S::Inspect { services } => {
            let mut out = Vec::new();
            for s in services {
                let s = ctl
                    .get_service(pb::GetServiceRequest { service: s })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                out.push(service_json(&s));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        S::Scale { detach, pairs } => {
            let mut parsed = Vec::new();
            for p in &pairs {
                let (name, n) = p
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("invalid {p:?}: use SERVICE=REPLICAS"))?;
                let n: u64 = n.parse().map_err(|_| {
                    anyhow::anyhow!("invalid replica count in {p:?}: give a whole number >= 0")
                })?;
                parsed.push((name.to_string(), n));
            }
            for (name, n) in &parsed {
                ctl.update_service(pb::UpdateServiceRequest {
                    service: name.clone(),
                    set_replicas: true,
                    replicas: *n,
                    ..Default::default()
                })
                .await
                .map_err(rpc)
                .with_context(|| format!("scaling {name}"))?;
                println!("{name} scaled to {n}");
            }
            if !detach {
                for (name, _) in &parsed {
                    converge(c, name).await?;
                }
            }
        }
        S::Update(a) => {
            let s = ctl
                .update_service(pb::UpdateServiceRequest {
                    service: a.service.clone(),
                    set_replicas: a.replicas.is_some(),
                    replicas: a.replicas.unwrap_or(0),
                    network_add: a.network_add,
                    network_rm: a.network_rm,
                    env_add: kv(&a.env_add, "--env-add")?,
                    env_rm: a.env_rm,
                    constraint_add: a.constraint_add,
                    constraint_rm: a.constraint_rm,
                    force: a.force,
                    resources: a.resources.to_wire(),
                    restart_policy: crate::resources::restart_update(&a.restart),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            println!("{}", s.spec.map(|x| x.name).unwrap_or_default());
            if !a.detach {
                converge(c, &a.service).await?;
            }
        }
        S::Logs { flags, service } => {
            crate::logs_cmd::service_logs(ctl.clone(), service, &flags).await?
        }
        S::Rm { services } => {
            for s in services {
                ctl.remove_service(pb::RemoveServiceRequest { service: s.clone() })
                    .await
                    .map_err(rpc)
                    .with_context(|| format!("removing service {s}"))?;
                println!("{s}");
            }
        }
    }
    Ok(())
}
