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
    AvailabilityArg, InitArgs, JoinArgs, JoinTokenArgs, LeaveArgs, NodeCommand, RoleArg,
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
        Ok(self.daemon_info().await?.node_id)
    }

    /// The local daemon's `info`.
    pub(crate) async fn daemon_info(&self) -> anyhow::Result<pb::InfoResponse> {
        Ok(self
            .daemon()
            .info(pb::InfoRequest {})
            .await
            .map_err(rpc)?
            .into_inner())
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
    let (mut mask4, mut mask6) = (0, 0);
    for m in &a.default_addr_pool_mask_length {
        let slot = if *m > 32 { &mut mask6 } else { &mut mask4 };
        if *slot != 0 {
            bail!(
                "--default-addr-pool-mask-length is given twice for one family ({slot} and {m}): \
                 give at most one IPv4 length (up to 32) and one IPv6 length (over 32)"
            );
        }
        *slot = *m;
    }
    let (ingress4, ingress6) = network::by_family("--ingress-subnet", &a.ingress_subnet)?;
    let resp = c
        .daemon()
        .init(pb::InitRequest {
            default_addr_pool_mask_length6: mask6,
            advertise_addr: a.advertise_addr.unwrap_or_default(),
            listen_addr: a.listen_addr.unwrap_or_default(),
            data_path_addr: a.data_path_addr.unwrap_or_default(),
            data_path_port: a.data_path_port.unwrap_or(0),
            default_addr_pools: a.default_addr_pool,
            default_addr_pool_mask_length: mask4,
            cert_expiry_secs: a.cert_expiry.map(|d| d.as_secs().max(1)).unwrap_or(0),
            heartbeat_period_ms: a.heartbeat_period.map(|d| ms(d).max(1)).unwrap_or(0),
            disconnect_grace_ms: a.disconnect_grace.map(grace_ms).unwrap_or(0),
            force_new_cluster: false,
            wg_key_rotation_secs: a.wg_key_rotation.map(|d| d.as_secs().max(1)).unwrap_or(0),
            wg_port: a.wg_port.unwrap_or(0),
            ingress_subnet: ingress4,
            ingress_subnet6: ingress6,
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
    let info = c.daemon_info().await?;
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

/// `weft version`: the client's, then the daemon's (an error, after the
/// client's, when no daemon answers, as `docker version` does).
pub async fn version(host: &str, tls: &TlsFiles) -> anyhow::Result<()> {
    println!("Client:");
    println!(" Version:  {}", weft_worker::VERSION);
    println!(
        " OS/Arch:  {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    let c = Client::connect(host, tls).await?;
    let i = c.daemon_info().await?;
    println!("Server:");
    println!(
        " Version:  {}",
        if i.version.is_empty() {
            "unknown (older than 0.1.0)"
        } else {
            i.version.as_str()
        }
    );
    if !i.node_id.is_empty() {
        println!(" Node:     {} ({})", i.node_id, role_text(i.role));
    }
    Ok(())
}

/// `weft info`.
pub async fn info(c: &Client, format: Option<&str>) -> anyhow::Result<()> {
    let output = crate::format::Output::parse(format)?;
    let i = c.daemon_info().await?;
    if !matches!(output, crate::format::Output::Default) {
        return output.print(&[info_json(&i)], || {});
    }
    println!("Server Version: {}", i.version);
    println!("Kernel Version: {}", i.kernel_version);
    println!("Operating System: {}", i.operating_system);
    println!("Architecture: {}", i.architecture);
    println!("CPUs: {}", i.ncpu);
    println!(
        "Total Memory: {:.2}GiB",
        i.mem_total_bytes as f64 / f64::from(1u32 << 30)
    );
    println!("Tasks: {}", by_state(&i.tasks_by_state));
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
            println!(" Cluster tasks: {}", by_state(&cl.tasks_by_state));
            println!(" Raft:");
            println!("  Term: {}", cl.raft_term);
            println!("  Commit index: {}", cl.raft_commit_index);
            println!("  Applied index: {}", cl.raft_applied_index);
            println!(" Heartbeat period: {}ms", cl.heartbeat_period_ms);
            println!(" Disconnect grace: {}", grace_text(cl.disconnect_grace_ms));
            println!(" Certificate expiry: {}h", cl.cert_expiry_secs / 3600);
            println!(" WireGuard port: {}", cl.wg_port);
            println!(
                " WireGuard key rotation: {}",
                rotation_text(cl.wg_key_rotation_secs)
            );
            println!(" Data path port: {}", cl.data_path_port);
            println!(" Ingress subnet: {}", ingress_text(cl));
            println!(
                " Default address pools: {} (mask length {}, IPv6 {})",
                cl.default_addr_pools.join(", "),
                cl.default_addr_pool_mask_length,
                cl.default_addr_pool_mask_length6
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

/// `weft info` as docker's info JSON names it (the fields `--format` sees).
fn info_json(i: &pb::InfoResponse) -> serde_json::Value {
    let cl = i.cluster.clone().unwrap_or_default();
    serde_json::json!({
        "ServerVersion": i.version,
        "KernelVersion": i.kernel_version,
        "OperatingSystem": i.operating_system,
        "Architecture": i.architecture,
        "NCPU": i.ncpu,
        "MemTotal": i.mem_total_bytes,
        "Tasks": i.tasks_by_state,
        "Swarm": {
            "NodeID": i.node_id,
            "NodeAddr": i.node_addr,
            "LocalNodeState": i.state,
            "ControlAvailable": i.cluster.is_some(),
            "Error": i.error,
            "RemoteManagers": i.manager_addrs,
            "Managers": cl.managers_total,
            "Nodes": cl.nodes_total,
            "Cluster": {"ID": i.cluster_id, "Tasks": cl.tasks_by_state},
        },
    })
}

/// `3 (running 2, exited 1)`: the total, then each state's count.
fn by_state(counts: &std::collections::HashMap<String, u64>) -> String {
    let mut states: Vec<_> = counts.iter().filter(|(_, n)| **n > 0).collect();
    states.sort();
    let total: u64 = states.iter().map(|(_, n)| **n).sum();
    if states.is_empty() {
        return "0".into();
    }
    let each: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
    format!("{total} ({})", each.join(", "))
}

/// A node's role as the CLI and `weft ui` show it.
pub(crate) fn role_text(r: i32) -> &'static str {
    match pb::NodeRole::try_from(r) {
        Ok(pb::NodeRole::Manager) => "manager",
        Ok(pb::NodeRole::Worker) => "worker",
        _ => "unknown",
    }
}

/// A manager's Raft status (`Leader`, `Reachable`…; empty for workers).
pub(crate) fn manager_status_text(s: i32) -> &'static str {
    match pb::ManagerStatus::try_from(s) {
        Ok(pb::ManagerStatus::Leader) => "Leader",
        Ok(pb::ManagerStatus::Reachable) => "Reachable",
        Ok(pb::ManagerStatus::Unreachable) => "Unreachable",
        _ => "",
    }
}

/// A node's state (`Ready`, `Down`, `Unknown`).
pub(crate) fn state_text(s: i32) -> &'static str {
    match pb::NodeState::try_from(s) {
        Ok(pb::NodeState::Ready) => "Ready",
        Ok(pb::NodeState::Down) => "Down",
        _ => "Unknown",
    }
}

/// A node's availability (`Active`, `Pause`, `Drain`).
pub(crate) fn availability_text(a: i32) -> &'static str {
    match pb::Availability::try_from(a) {
        Ok(pb::Availability::Pause) => "Pause",
        Ok(pb::Availability::Drain) => "Drain",
        _ => "Active",
    }
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
            disconnect_grace,
            ingress_subnet,
            autolock,
        } => {
            let (ingress4, ingress6) = network::by_family("--ingress-subnet", &ingress_subnet)?;
            let s = c
                .control()
                .update_cluster(pb::UpdateClusterRequest {
                    set_autolock: autolock.is_some(),
                    autolock: autolock.unwrap_or(false),
                    set_wg_key_rotation: wg_key_rotation.is_some(),
                    wg_key_rotation_secs: wg_key_rotation.map(|d| d.as_secs()).unwrap_or(0),
                    set_cert_expiry: cert_expiry.is_some(),
                    cert_expiry_secs: cert_expiry.map(|d| d.as_secs()).unwrap_or(0),
                    ingress_subnet: ingress4,
                    ingress_subnet6: ingress6,
                    set_disconnect_grace: disconnect_grace.is_some(),
                    disconnect_grace_ms: disconnect_grace.map(grace_ms).unwrap_or(0),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            println!(
                "WireGuard key rotation: {}",
                rotation_text(s.wg_key_rotation_secs)
            );
            println!("Certificate expiry: {}h", s.cert_expiry_secs / 3600);
            println!("Disconnect grace: {}", grace_text(s.disconnect_grace_ms));
            println!("Ingress subnet: {}", ingress_text(&s));
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
mod attach;
mod attach_io;
mod exec;
mod inspect;
mod lifecycle;
mod network;
mod node;
mod service;
mod task;
mod volume;

pub use attach::{Exit, FAILED_TO_RUN};
pub use attach_io::{AttachArgs, attach_cmd};
pub use exec::{ExecArgs, exec};
pub use lifecycle::{LifecycleCommand, lifecycle};

pub use network::network;
pub use node::node;
pub use service::service;
pub use task::{port, ps, rm, run_task};
pub use volume::volume;

/// `--disconnect-grace` on the wire: 0 is off, anything else at least 1 ms
/// (so a tiny value is refused by the limits rather than turning it off).
fn grace_ms(d: std::time::Duration) -> u64 {
    if d.is_zero() { 0 } else { ms(d).max(1) }
}

/// The disconnect grace as `weft info` shows it.
fn grace_text(ms: u64) -> String {
    if ms == 0 {
        "off (missed heartbeats mark a node down)".into()
    } else {
        format!("{ms}ms")
    }
}

/// The ingress subnets of a cluster summary: the IPv4 one, and the IPv6
/// one after a comma when the routing mesh has IPv6.
fn ingress_text(s: &pb::ClusterSummary) -> String {
    if s.ingress_subnet6.is_empty() {
        s.ingress_subnet.clone()
    } else {
        format!("{}, {}", s.ingress_subnet, s.ingress_subnet6)
    }
}
