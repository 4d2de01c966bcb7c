//! `weft` as a CNI plugin (`/opt/cni/bin/weft`): a runtime runs it with
//! `CNI_COMMAND` in the environment and the network config on stdin (CNI
//! spec 1.1, results in 0.3.0 … 1.1.0 shape). It is a thin client of the
//! local daemon's socket: the daemon does the work (see `daemon/cni.rs`).
//!
//! ```text
//!  env CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME ─┐
//!  stdin {"cniVersion","name","type":"weft","network"?,"socket"?}
//!        ├─ VERSION ─▶ the versions supported
//!        ├─ ADD/DEL/CHECK ─▶ the daemon's CniAdd/CniDel/CniCheck
//!        ├─ STATUS ─▶ the daemon answers and is in a cluster? else code 50
//!        └─ GC ─▶ the daemon's CniGc: endpoints not in valid-attachments go
//!  stdout: the result (ADD, CHECK none), or {"code","msg","details"} and exit 1
//! ```
//!
//! An endpoint whose container's namespace is gone is also removed by its
//! node on its own within seconds, GC or not.

use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};
use weft_proto::v1 as pb;

/// The versions whose results this plugin can give.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The largest config taken on stdin.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// CNI's well-known error codes (spec §Error), and ours from 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the config's cniVersion is not one we speak.
    IncompatibleVersion = 1,
    /// 3: the container (its namespace) does not exist.
    UnknownContainer = 3,
    /// 4: a required CNI_ variable is missing or invalid.
    InvalidEnv = 4,
    /// 5: reading stdin failed.
    Io = 5,
    /// 6: the config is not JSON of the right shape.
    Decode = 6,
    /// 7: the config (or the network it names) is invalid.
    InvalidConfig = 7,
    /// 11: try again later (the daemon or the managers cannot be reached).
    TryAgain = 11,
    /// 50: STATUS: the plugin cannot serve ADDs now.
    NotAvailable = 50,
    /// 100: weft refused (the message says why).
    Refused = 100,
    /// 101: the container already has this interface elsewhere.
    Exists = 101,
}

/// A CNI error: printed on stdout as the spec's error object.
#[derive(Debug)]
pub struct CniError {
    /// Its code.
    pub code: Code,
    /// A short message.
    pub msg: String,
    /// More, for the operator.
    pub details: String,
}

fn err(code: Code, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

/// The network config weft reads (unknown keys are ignored, as the spec
/// asks for fields another plugin or the runtime adds).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The config's version.
    pub cni_version: String,
    /// The config's name (the weft network's, unless `network` says).
    #[serde(default)]
    pub name: String,
    /// The weft network, by name or ID.
    #[serde(default)]
    pub network: Option<String>,
    /// The daemon's socket; default `/run/weft/weft.sock`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// CHECK: what ADD returned.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// The runtime's values for the declared capabilities.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// GC: the attachments the runtime still has.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// One of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Deserialize)]
pub struct ValidAttachment {
    /// Its container.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface.
    pub ifname: String,
}

/// What the runtime passes for the capabilities the config declares.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// `portMappings`: ports to publish on the node.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// One of CNI's `portMappings`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// On the node.
    pub host_port: u32,
    /// In the container.
    pub container_port: u32,
    /// tcp (default) or udp.
    #[serde(default)]
    pub protocol: String,
    /// Only the node's every address (empty or 0.0.0.0) is supported.
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

/// What a CNI call asks, from the environment.
#[derive(Debug, Default, Clone)]
pub struct Env {
    /// CNI_COMMAND.
    pub command: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS.
    pub netns: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS (`K=V;K=V`): K8S_POD_NAME names the container.
    pub args: String,
}

impl Env {
    /// From the process environment.
    pub fn from_process() -> Env {
        let v = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
        }
    }

    fn container_name(&self) -> String {
        self.args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "K8S_POD_NAME")
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default()
    }

    fn require(&self, what: &[(&str, &str)]) -> Result<(), CniError> {
        for (name, value) in what {
            if value.is_empty() {
                return Err(err(
                    Code::InvalidEnv,
                    format!("{name} is not set"),
                    format!("CNI_COMMAND={} needs {name}", self.command),
                ));
            }
        }
        Ok(())
    }
}

/// Runs one CNI call: the exit code, and what was printed.
pub fn main() -> std::process::ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut stdin);
    let outcome = match read {
        Err(e) => Err(err(
            Code::Io,
            "cannot read the network config",
            e.to_string(),
        )),
        Ok(_) if stdin.len() as u64 > MAX_CONFIG_BYTES => Err(err(
            Code::Decode,
            "the network config is too large",
            format!("at most {MAX_CONFIG_BYTES} bytes"),
        )),
        Ok(_) => run(&env, &stdin),
    };
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".into());
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!(
                "{}",
                json!({"cniVersion": version, "code": e.code as u32, "msg": e.msg, "details": e.details})
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// One call, decided from its environment and config.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        let version = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "1.1.0".into());
        return Ok(Some(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED}),
        ));
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        err(
            Code::Decode,
            "the network config is not valid JSON for weft",
            e.to_string(),
        )
    })?;
    if !SUPPORTED.contains(&conf.cni_version.as_str()) {
        return Err(err(
            Code::IncompatibleVersion,
            format!("cniVersion {:?} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED.join(", ")),
        ));
    }
    let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
    if network.is_empty() && matches!(env.command.as_str(), "ADD" | "CHECK") {
        return Err(err(
            Code::InvalidConfig,
            "no weft network given",
            "set \"network\" (or \"name\") in the config to a weft network's name",
        ));
    }
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::cli::DEFAULT_SOCKET));
    let ports = ports(&conf.runtime_config.port_mappings)?;
    let req = pb::CniRequest {
        network,
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        container_name: env.container_name(),
        runtime: "cni".into(),
        ports,
    };
    match env.command.as_str() {
        "ADD" => {
            env.require(&[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ])?;
            if !weft_overlay::linux::Netns::exists(&env.netns) {
                return Err(err(
                    Code::UnknownContainer,
                    format!("network namespace {} does not exist", env.netns),
                    "CNI_NETNS must name the container's network namespace",
                ));
            }
            let r = call(&socket, |mut c| async move { c.cni_add(req).await })?;
            Ok(Some(result(&conf.cni_version, &env.netns, &r)))
        }
        "DEL" => {
            env.require(&[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_IFNAME", &env.ifname),
            ])?;
            call(&socket, |mut c| async move { c.cni_del(req).await })?;
            Ok(None)
        }
        "CHECK" => {
            env.require(&[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ])?;
            let r = call(&socket, |mut c| async move { c.cni_check(req).await })?;
            check_prev(&conf, &env.netns, &r)?;
            Ok(None)
        }
        "STATUS" => {
            let info = call(
                &socket,
                |mut c| async move { c.info(pb::InfoRequest {}).await },
            )
            .map_err(|e| {
                err(
                    Code::NotAvailable,
                    "the weft daemon does not answer",
                    e.details,
                )
            })?;
            if info.node_id.is_empty() {
                return Err(err(
                    Code::NotAvailable,
                    "this node is not in a weft cluster",
                    "`weft init` or `weft join` first",
                ));
            }
            Ok(None)
        }
        "GC" => {
            let Some(valid) = &conf.valid_attachments else {
                return Err(err(
                    Code::InvalidConfig,
                    "GC needs cni.dev/valid-attachments",
                    "the runtime lists the attachments it still has",
                ));
            };
            if req.network.is_empty() {
                return Err(err(
                    Code::InvalidConfig,
                    "no weft network given",
                    "set \"network\" (or \"name\") in the config",
                ));
            }
            let gc = pb::CniGcRequest {
                network: req.network,
                valid: valid
                    .iter()
                    .map(|v| pb::CniAttachment {
                        container_id: v.container_id.clone(),
                        ifname: v.ifname.clone(),
                    })
                    .collect(),
            };
            call(&socket, |mut c| async move { c.cni_gc(gc).await })?;
            Ok(None)
        }
        other => Err(err(
            Code::InvalidEnv,
            format!("unknown CNI_COMMAND {other:?}"),
            "ADD, DEL, CHECK, VERSION, STATUS or GC",
        )),
    }
}

/// The runtime's port mappings as weft publishes ports (`mode=host`: on
/// this node); a host IP other than all addresses is refused.
fn ports(maps: &[PortMapping]) -> Result<Vec<pb::PortMapping>, CniError> {
    maps.iter()
        .map(|m| {
            if !matches!(m.host_ip.as_str(), "" | "0.0.0.0") {
                return Err(err(
                    Code::InvalidConfig,
                    format!("hostIP {:?} is not supported", m.host_ip),
                    "weft publishes a port on all of the node's addresses",
                ));
            }
            Ok(pb::PortMapping {
                protocol: if m.protocol.is_empty() {
                    "tcp".into()
                } else {
                    m.protocol.to_lowercase()
                },
                published: m.host_port,
                target: m.container_port,
                mode: "host".into(),
            })
        })
        .collect()
}

type Daemon = weft_proto::v1::daemon_client::DaemonClient<tonic::transport::Channel>;

/// One call to the daemon at `socket`, on a small runtime of its own.
fn call<T, F, Fut>(socket: &std::path::Path, f: F) -> Result<T, CniError>
where
    F: FnOnce(Daemon) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(Code::Io, "cannot start", e.to_string()))?;
    rt.block_on(async {
        let channel = weft_proto::tls::connect_unix(socket).await.map_err(|e| {
            err(
                Code::TryAgain,
                format!("the weft daemon is not reachable at {}", socket.display()),
                format!("{e}; is `weft daemon` running?"),
            )
        })?;
        f(Daemon::new(channel))
            .await
            .map(tonic::Response::into_inner)
            .map_err(status_error)
    })
}

/// A daemon's refusal as a CNI error.
fn status_error(s: tonic::Status) -> CniError {
    use tonic::Code as G;
    let code = match s.code() {
        G::InvalidArgument | G::NotFound => Code::InvalidConfig,
        G::Unavailable | G::DeadlineExceeded | G::Unknown => Code::TryAgain,
        G::AlreadyExists => Code::Exists,
        _ => Code::Refused,
    };
    err(code, s.message().to_owned(), format!("{:?}", s.code()))
}

/// ADD's result in the shape of `version`.
pub fn result(version: &str, netns: &str, r: &pb::CniResult) -> Value {
    let old = version.starts_with("0.");
    let interfaces: Vec<Value> = r
        .interfaces
        .iter()
        .map(|i| json!({"name": i.name, "mac": i.mac, "sandbox": netns}))
        .collect();
    // Each interface's address, then its IPv6 one (dual stack).
    let ips: Vec<Value> = r
        .interfaces
        .iter()
        .enumerate()
        .flat_map(|(n, i)| {
            let gw_if = i.name == weft_overlay::model::names::TASK_GW_IF;
            [(&i.address, &r.gateway), (&i.address6, &r.gateway6)]
                .into_iter()
                .filter(|(address, _)| !address.is_empty())
                .map(move |(address, gateway)| {
                    let mut ip = json!({"address": address, "interface": n});
                    if gw_if && !gateway.is_empty() {
                        ip["gateway"] = json!(gateway);
                    }
                    if old {
                        let v6 = address.contains(':');
                        ip["version"] = json!(if v6 { "6" } else { "4" });
                    }
                    ip
                })
        })
        .collect();
    let routes: Vec<Value> = [("0.0.0.0/0", &r.gateway), ("::/0", &r.gateway6)]
        .into_iter()
        .filter(|(_, gw)| !gw.is_empty())
        .map(|(dst, gw)| json!({"dst": dst, "gw": gw}))
        .collect();
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": {"nameservers": [weft_overlay::dns::resolv::RESOLVER_ADDR.to_string()]},
    })
}

/// CHECK: what ADD said (prevResult) must still be true.
fn check_prev(conf: &NetConf, netns: &str, r: &pb::CniResult) -> Result<(), CniError> {
    let Some(prev) = &conf.prev_result else {
        return Ok(());
    };
    let now = result(&conf.cni_version, netns, r);
    let addrs = |v: &Value| -> Vec<String> {
        v.get("ips")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.get("address")?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (was, is) = (addrs(prev), addrs(&now));
    if was.iter().any(|a| !is.contains(a)) {
        return Err(err(
            Code::Refused,
            "the container's addresses are not what ADD gave",
            format!("prevResult has {was:?}, weft has {is:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> Env {
        Env {
            command: cmd.into(),
            ..Env::default()
        }
    }

    #[test]
    fn version_answers_without_a_daemon() {
        let out = run(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(
            out["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!("1.1.0"))
        );
    }

    #[test]
    fn bad_configs_and_environments_get_the_specs_codes() {
        let code = |cmd: &str, stdin: &[u8]| run(&env(cmd), stdin).unwrap_err().code;
        assert_eq!(code("ADD", b"{not json"), Code::Decode);
        assert_eq!(
            code("ADD", br#"{"cniVersion":"9.9.9","name":"n","type":"weft"}"#),
            Code::IncompatibleVersion
        );
        assert_eq!(
            code("ADD", br#"{"cniVersion":"1.0.0","type":"weft"}"#),
            Code::InvalidConfig
        );
        assert_eq!(
            code("ADD", br#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#),
            Code::InvalidEnv
        );
        assert_eq!(
            code(
                "FROB",
                br#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#
            ),
            Code::InvalidEnv
        );
        let mut e = env("ADD");
        e.container_id = "c1".into();
        e.ifname = "eth0".into();
        e.netns = "/nonexistent/netns".into();
        let got = run(&e, br#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#).unwrap_err();
        assert_eq!(got.code, Code::UnknownContainer);
    }

    #[test]
    fn results_take_the_shape_of_the_asked_version() {
        let r = pb::CniResult {
            task_id: "t".into(),
            interfaces: vec![
                pb::CniInterface {
                    name: "eth0".into(),
                    mac: "02:00:0a:00:00:05".into(),
                    address: "10.0.0.5/24".into(),
                    address6: String::new(),
                },
                pb::CniInterface {
                    name: "gw0".into(),
                    mac: "02:00:ac:12:00:05".into(),
                    address: "172.18.0.5/16".into(),
                    address6: String::new(),
                },
            ],
            gateway: "172.18.0.1".into(),
            ..Default::default()
        };
        let new = result("1.0.0", "/x", &r);
        assert_eq!(new["ips"][0]["address"], "10.0.0.5/24");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["ips"][1]["gateway"], "172.18.0.1");
        assert_eq!(new["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(new["interfaces"][0]["sandbox"], "/x");
        assert_eq!(new["dns"]["nameservers"][0], "127.0.0.11");
        let old = result("0.4.0", "/x", &r);
        assert_eq!(old["ips"][0]["version"], "4");
        // Dual stack: each interface's IPv6 address after its IPv4 one, an
        // IPv6 default route.
        let mut r = r;
        r.interfaces[0].address6 = "fd00:9::5/64".into();
        r.interfaces[1].address6 = "fd77:6566:7400::ac12:5/112".into();
        r.gateway6 = "fd77:6566:7400::ac12:1".into();
        let dual = result("1.0.0", "/x", &r);
        let ips: Vec<(&str, u64, &str)> = dual["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["address"].as_str().unwrap(),
                    i["interface"].as_u64().unwrap(),
                    i["gateway"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            ips,
            [
                ("10.0.0.5/24", 0, ""),
                ("fd00:9::5/64", 0, ""),
                ("172.18.0.5/16", 1, "172.18.0.1"),
                ("fd77:6566:7400::ac12:5/112", 1, "fd77:6566:7400::ac12:1"),
            ]
        );
        assert_eq!(dual["routes"][1]["dst"], "::/0");
        assert_eq!(dual["routes"][1]["gw"], "fd77:6566:7400::ac12:1");
        assert_eq!(result("0.4.0", "/x", &r)["ips"][1]["version"], "6");
    }
}
