//! weft as a Docker network plugin: the remote network driver and IPAM
//! driver API (plugin protocol v1, JSON over HTTP POST) on a unix socket
//! such as `/run/docker/plugins/weft.sock`, where dockerd finds it by name.
//!
//! This module is the protocol: the calls are parsed and bounded here
//! ([`parse`]), the ones with a fixed answer are answered here, and the rest
//! go to a [`Backend`] (the daemon, `daemon/docker.rs`).
//!
//! ```text
//!  dockerd ─ POST /IpamDriver.RequestAddress {json} ─▶ parse ─┬─ bad: 400 {"Err"}
//!                                                             ├─ fixed answer (Activate, capabilities)
//!                                                             └─ Backend::call ─▶ 200 {json} | 500 {"Err"}
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

/// The media type of the protocol's answers.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";
/// The address space weft's IPAM driver gives (and asks the network driver
/// to come from).
pub const ADDRESS_SPACE: &str = "weft";
/// The option naming the weft network (`--opt` and `--ipam-opt`).
pub const NETWORK_OPTION: &str = "weft.network";
/// Docker's option on the gateway's address request.
pub const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
/// The largest request body taken.
const MAX_BODY: usize = 1 << 20;
/// The longest Docker ID taken (Docker's are 64 hex digits).
const MAX_ID: usize = 128;
/// The longest option value or path taken.
const MAX_VALUE: usize = 4096;

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRequest {
    /// The weft network named by `--ipam-opt weft.network`, if given.
    pub network: Option<String>,
    /// The subnet asked for (`--subnet`), if any.
    pub pool: Option<String>,
    /// The IPv6 pool (`docker network create --ipv6`).
    pub v6: bool,
}

/// The suffix of an IPv6 pool's ID: the weft network's ID followed by it.
pub const POOL6_SUFFIX: &str = "/v6";

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRequest {
    /// The pool's ID (weft's network ID).
    pub pool_id: String,
    /// A specific address asked for (`--ip`, `--gateway`), if any.
    pub address: Option<String>,
    /// The network's gateway address (not an endpoint's).
    pub gateway: bool,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest {
    /// Docker's network ID.
    pub network_id: String,
    /// `--opt weft.network`, if given.
    pub network: Option<String>,
    /// The pools' address space and subnet (`IPv4Data`).
    pub pools: Vec<(String, String)>,
    /// The IPv6 pools' (`IPv6Data`, `--ipv6`).
    pub pools6: Vec<(String, String)>,
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRequest {
    /// Docker's network ID.
    pub network_id: String,
    /// Docker's endpoint ID.
    pub endpoint_id: String,
    /// The address weft's IPAM gave (`a.b.c.d/len`).
    pub address: String,
    /// The IPv6 address weft's IPAM gave (`--ipv6` networks), if any.
    pub address6: Option<String>,
    /// `docker run -p`: (protocol, port on the node, port in the container).
    pub ports: Vec<(&'static str, u16, u16)>,
}

/// The most port mappings one endpoint may ask for.
const MAX_PORTS: usize = 128;

/// Docker's `com.docker.network.portmap` option: `-p HOST:CONTAINER[/udp]`
/// on every address of the node, one port each.
fn portmap(options: &BTreeMap<String, Value>) -> Result<Vec<(&'static str, u16, u16)>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Binding {
        proto: u8,
        #[serde(default, rename = "IP")]
        _ip: Option<Value>,
        port: u16,
        #[serde(default, rename = "HostIP")]
        host_ip: String,
        host_port: u16,
        #[serde(default)]
        host_port_end: u16,
    }
    let Some(v) = options
        .get("com.docker.network.portmap")
        .filter(|v| !v.is_null())
    else {
        return Ok(Vec::new());
    };
    let list: Vec<Binding> = serde_json::from_value(v.clone())
        .map_err(|e| format!("bad com.docker.network.portmap: {e}"))?;
    if list.len() > MAX_PORTS {
        return Err(format!("at most {MAX_PORTS} published ports per container"));
    }
    list.iter()
        .map(|b| {
            let proto = match b.proto {
                6 => "tcp",
                17 => "udp",
                p => return Err(format!("protocol {p} cannot be published: tcp or udp")),
            };
            if !matches!(b.host_ip.as_str(), "" | "0.0.0.0" | "::") {
                return Err(format!(
                    "-p {}:{}:{}: weft publishes on every address of the node; drop the address",
                    b.host_ip, b.host_port, b.port
                ));
            }
            if b.host_port == 0 || (b.host_port_end != 0 && b.host_port_end != b.host_port) {
                return Err(format!(
                    "-p {}: give one port on the node (-p HOST:CONTAINER)",
                    b.port
                ));
            }
            if b.port == 0 {
                return Err("a container port of 0 cannot be published".into());
            }
            Ok((proto, b.host_port, b.port))
        })
        .collect()
}

/// `NetworkDriver.Join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// Docker's network ID.
    pub network_id: String,
    /// Docker's endpoint ID.
    pub endpoint_id: String,
    /// The container's network namespace, as dockerd names it.
    pub sandbox: String,
}

/// A call the backend answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `IpamDriver.RequestPool`.
    RequestPool(PoolRequest),
    /// `IpamDriver.ReleasePool`.
    ReleasePool(String),
    /// `IpamDriver.RequestAddress`.
    RequestAddress(AddressRequest),
    /// `IpamDriver.ReleaseAddress`: pool ID, address.
    ReleaseAddress(String, String),
    /// `NetworkDriver.CreateNetwork`.
    CreateNetwork(NetworkRequest),
    /// `NetworkDriver.DeleteNetwork`.
    DeleteNetwork(String),
    /// `NetworkDriver.CreateEndpoint`.
    CreateEndpoint(EndpointRequest),
    /// `NetworkDriver.DeleteEndpoint`: network ID, endpoint ID.
    DeleteEndpoint(String, String),
    /// `NetworkDriver.Join`.
    Join(JoinRequest),
    /// `NetworkDriver.Leave`: network ID, endpoint ID.
    Leave(String, String),
}

/// What a request is: answered here, or a backend call.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// The answer, without asking the backend.
    Fixed(Value),
    /// For the backend.
    Call(Call),
}

/// The daemon side.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Answers `call`: the JSON reply, or the error message for `Err`.
    async fn call(&self, call: Call) -> Result<Value, String>;
}

/// A JSON object that Docker may send as `null`.
fn object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Value>, D::Error> {
    Ok(Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawPool {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default, deserialize_with = "object")]
    options: BTreeMap<String, Value>,
    #[serde(default, rename = "V6")]
    v6: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    #[serde(default, deserialize_with = "object")]
    options: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawPoolId {
    #[serde(rename = "PoolID")]
    pool_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawIpamData {
    #[serde(default)]
    address_space: String,
    #[serde(default)]
    pool: String,
}

#[derive(Deserialize)]
struct RawNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default, rename = "Options", deserialize_with = "object")]
    options: BTreeMap<String, Value>,
    #[serde(default, rename = "IPv4Data")]
    v4: Option<Vec<RawIpamData>>,
    #[serde(default, rename = "IPv6Data")]
    v6: Option<Vec<RawIpamData>>,
}

#[derive(Deserialize)]
struct RawNetworkId {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawInterface {
    #[serde(default)]
    address: String,
    #[serde(default, rename = "AddressIPv6")]
    address_v6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Deserialize)]
struct RawEndpoint {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default, rename = "Interface")]
    interface: Option<RawInterface>,
    #[serde(default, rename = "Options", deserialize_with = "object")]
    options: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawJoin {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    sandbox: String,
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad request body: {e}"))
}

/// A Docker ID: 1..=128 letters and digits.
fn id(what: &str, v: String) -> Result<String, String> {
    if v.is_empty() || v.len() > MAX_ID || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "invalid {what} {:?}: 1..{MAX_ID} letters and digits",
            v.chars().take(64).collect::<String>()
        ));
    }
    Ok(v)
}

/// A string option (absent, or a string of at most [`MAX_VALUE`] bytes).
fn option(options: &BTreeMap<String, Value>, key: &str) -> Result<Option<String>, String> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_VALUE && !s.chars().any(char::is_control) => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(format!(
            "option {key} must be a string of at most {MAX_VALUE} printable bytes"
        )),
    }
}

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Parses the call at `path` with `body`; bounded and checked, or why not.
pub fn parse(path: &str, body: &[u8]) -> Result<Parsed, String> {
    let call = match path.trim_start_matches('/') {
        "Plugin.Activate" => {
            return Ok(Parsed::Fixed(
                json!({"Implements": ["NetworkDriver", "IpamDriver"]}),
            ));
        }
        // Local scope: each engine keeps its own records of the network;
        // weft's managers hold the truth across hosts.
        "NetworkDriver.GetCapabilities" => {
            return Ok(Parsed::Fixed(
                json!({"Scope": "local", "ConnectivityScope": "global"}),
            ));
        }
        "IpamDriver.GetCapabilities" => {
            return Ok(Parsed::Fixed(json!({"RequiresMACAddress": false})));
        }
        "IpamDriver.GetDefaultAddressSpaces" => {
            return Ok(Parsed::Fixed(json!({
                "LocalDefaultAddressSpace": ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": ADDRESS_SPACE,
            })));
        }
        "NetworkDriver.EndpointOperInfo" => return Ok(Parsed::Fixed(json!({"Value": {}}))),
        "NetworkDriver.AllocateNetwork"
        | "NetworkDriver.FreeNetwork"
        | "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete"
        | "NetworkDriver.ProgramExternalConnectivity"
        | "NetworkDriver.RevokeExternalConnectivity" => return Ok(Parsed::Fixed(json!({}))),
        "IpamDriver.RequestPool" => {
            let r: RawPool = json(body)?;
            if !r.sub_pool.is_empty() {
                return Err(
                    "--ip-range is not taken: weft's network has its own range (weft network create --ip-range)"
                        .into(),
                );
            }
            Call::RequestPool(PoolRequest {
                network: option(&r.options, NETWORK_OPTION)?,
                pool: nonempty(r.pool),
                v6: r.v6,
            })
        }
        "IpamDriver.ReleasePool" => Call::ReleasePool(json::<RawPoolId>(body)?.pool_id),
        "IpamDriver.RequestAddress" => {
            let r: RawAddress = json(body)?;
            let kind = option(&r.options, "RequestAddressType")?;
            Call::RequestAddress(AddressRequest {
                pool_id: r.pool_id,
                address: nonempty(r.address),
                gateway: kind.as_deref() == Some(GATEWAY_REQUEST),
            })
        }
        "IpamDriver.ReleaseAddress" => {
            let r: RawAddress = json(body)?;
            Call::ReleaseAddress(r.pool_id, r.address)
        }
        "NetworkDriver.CreateNetwork" => {
            let r: RawNetwork = json(body)?;
            let generic = match r.options.get("com.docker.network.generic") {
                Some(Value::Object(m)) => m.clone().into_iter().collect(),
                _ => BTreeMap::new(),
            };
            Call::CreateNetwork(NetworkRequest {
                network_id: id("network ID", r.network_id)?,
                network: option(&generic, NETWORK_OPTION)?,
                pools: r
                    .v4
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| (d.address_space, d.pool))
                    .collect(),
                pools6: r
                    .v6
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| (d.address_space, d.pool))
                    .collect(),
            })
        }
        "NetworkDriver.DeleteNetwork" => {
            Call::DeleteNetwork(id("network ID", json::<RawNetworkId>(body)?.network_id)?)
        }
        "NetworkDriver.CreateEndpoint" => {
            let r: RawEndpoint = json(body)?;
            let i = r.interface.unwrap_or_default();
            if !i.mac_address.is_empty() {
                return Err("--mac-address is not taken: weft sets the endpoint's MAC".into());
            }
            if i.address.is_empty() {
                return Err(
                    "the endpoint has no address: create the network with --ipam-driver weft"
                        .into(),
                );
            }
            Call::CreateEndpoint(EndpointRequest {
                network_id: id("network ID", r.network_id)?,
                endpoint_id: id("endpoint ID", r.endpoint_id)?,
                address: i.address,
                address6: nonempty(i.address_v6),
                ports: portmap(&r.options)?,
            })
        }
        "NetworkDriver.DeleteEndpoint" | "NetworkDriver.Leave" => {
            let r: RawEndpoint = json(body)?;
            let (n, e) = (
                id("network ID", r.network_id)?,
                id("endpoint ID", r.endpoint_id)?,
            );
            if path.ends_with("Leave") {
                Call::Leave(n, e)
            } else {
                Call::DeleteEndpoint(n, e)
            }
        }
        "NetworkDriver.Join" => {
            let r: RawJoin = json(body)?;
            if !r.sandbox.starts_with('/')
                || r.sandbox.len() > MAX_VALUE
                || r.sandbox.contains('\0')
            {
                return Err(format!(
                    "invalid sandbox key {:?}: an absolute path",
                    r.sandbox.chars().take(64).collect::<String>()
                ));
            }
            Call::Join(JoinRequest {
                network_id: id("network ID", r.network_id)?,
                endpoint_id: id("endpoint ID", r.endpoint_id)?,
                sandbox: r.sandbox,
            })
        }
        other => {
            return Err(format!(
                "unknown call {:?}",
                other.chars().take(64).collect::<String>()
            ));
        }
    };
    Ok(Parsed::Call(call))
}

type Response = hyper::Response<Full<Bytes>>;

fn reply(status: hyper::StatusCode, v: &Value) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

/// One HTTP request: a POST with a JSON body of at most [`MAX_BODY`].
async fn handle(
    backend: Arc<dyn Backend>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Response, std::convert::Infallible> {
    let bad = |status, msg: String| Ok(reply(status, &json!({ "Err": msg })));
    if req.method() != hyper::Method::POST {
        return bad(
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            "only POST is served".into(),
        );
    }
    let path = req.uri().path().to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return bad(
                hyper::StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body unreadable or over {MAX_BODY} bytes: {e}"),
            );
        }
    };
    let call = match parse(&path, &body) {
        Ok(Parsed::Fixed(v)) => return Ok(reply(hyper::StatusCode::OK, &v)),
        Ok(Parsed::Call(c)) => c,
        Err(msg) => {
            tracing::info!(call = %path, error = %msg, "Docker plugin call refused");
            return bad(hyper::StatusCode::BAD_REQUEST, msg);
        }
    };
    tracing::debug!(?call, "Docker plugin call");
    match backend.call(call).await {
        Ok(v) => Ok(reply(hyper::StatusCode::OK, &v)),
        Err(msg) => {
            tracing::info!(call = %path, error = %msg, "Docker plugin call failed");
            bad(hyper::StatusCode::INTERNAL_SERVER_ERROR, msg)
        }
    }
}

/// Serves the plugin API on `socket` (made 0600, replacing a stale one)
/// until `stop` fires; the socket file is removed then.
pub async fn serve(
    socket: &Path,
    backend: Arc<dyn Backend>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %socket.display(), "Docker network plugin ready");
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => break,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Docker plugin socket: accept failed");
                    continue;
                }
            },
        };
        let backend = backend.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(backend.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "Docker plugin connection ended");
            }
        });
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(path: &str, body: Value) -> Result<Call, String> {
        match parse(path, body.to_string().as_bytes())? {
            Parsed::Call(c) => Ok(c),
            Parsed::Fixed(v) => panic!("fixed answer {v}"),
        }
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn fixed_answers_need_no_backend() {
        let Ok(Parsed::Fixed(v)) = parse("/Plugin.Activate", b"") else {
            panic!()
        };
        assert_eq!(v["Implements"], json!(["NetworkDriver", "IpamDriver"]));
        let Ok(Parsed::Fixed(v)) = parse("/NetworkDriver.GetCapabilities", b"null") else {
            panic!()
        };
        assert_eq!(v["Scope"], "local");
        assert_eq!(v["ConnectivityScope"], "global");
        let Ok(Parsed::Fixed(v)) = parse("/IpamDriver.GetDefaultAddressSpaces", b"") else {
            panic!()
        };
        assert_eq!(v["LocalDefaultAddressSpace"], ADDRESS_SPACE);
    }

    #[test]
    fn calls_are_parsed_as_dockerd_sends_them() {
        assert_eq!(
            call(
                "/IpamDriver.RequestPool",
                json!({"AddressSpace": "weft", "Pool": "", "SubPool": "",
                       "Options": {"weft.network": "appnet"}, "V6": false})
            ),
            Ok(Call::RequestPool(PoolRequest {
                network: Some("appnet".into()),
                pool: None,
                v6: false
            }))
        );
        assert_eq!(
            call(
                "/IpamDriver.RequestPool",
                json!({"AddressSpace": "weft", "Pool": "", "SubPool": "",
                       "Options": {"weft.network": "appnet"}, "V6": true})
            ),
            Ok(Call::RequestPool(PoolRequest {
                network: Some("appnet".into()),
                pool: None,
                v6: true
            }))
        );
        assert_eq!(
            call(
                "/IpamDriver.RequestAddress",
                json!({"PoolID": "n1", "Address": "", "Options":
                       {"RequestAddressType": "com.docker.network.gateway"}})
            ),
            Ok(Call::RequestAddress(AddressRequest {
                pool_id: "n1".into(),
                address: None,
                gateway: true
            }))
        );
        assert_eq!(
            call(
                "/IpamDriver.RequestAddress",
                json!({"PoolID": "n1", "Address": "10.0.0.9", "Options": null})
            ),
            Ok(Call::RequestAddress(AddressRequest {
                pool_id: "n1".into(),
                address: Some("10.0.0.9".into()),
                gateway: false
            }))
        );
        assert_eq!(
            call(
                "/NetworkDriver.CreateNetwork",
                json!({"NetworkID": ID, "Options": {"com.docker.network.generic":
                       {"weft.network": "appnet"}, "com.docker.network.enable_ipv6": false},
                       "IPv4Data": [{"AddressSpace": "weft", "Pool": "10.0.0.0/24",
                                     "Gateway": "10.0.0.1/24"}],
                       "IPv6Data": [{"AddressSpace": "weft", "Pool": "fd00:1::/64"}]})
            ),
            Ok(Call::CreateNetwork(NetworkRequest {
                network_id: ID.into(),
                network: Some("appnet".into()),
                pools: vec![("weft".into(), "10.0.0.0/24".into())],
                pools6: vec![("weft".into(), "fd00:1::/64".into())],
            }))
        );
        assert_eq!(
            call(
                "/NetworkDriver.Join",
                json!({"NetworkID": ID, "EndpointID": ID, "SandboxKey": "/var/run/docker/netns/x",
                       "Options": null})
            ),
            Ok(Call::Join(JoinRequest {
                network_id: ID.into(),
                endpoint_id: ID.into(),
                sandbox: "/var/run/docker/netns/x".into()
            }))
        );
        assert_eq!(
            call(
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": ID, "EndpointID": ID,
                       "Interface": {"Address": "10.0.0.2/24", "AddressIPv6": "fd00:1::2/64"},
                       "Options": {"com.docker.network.portmap": [
                           {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
                           {"Proto": 17, "IP": "", "Port": 53, "HostIP": "0.0.0.0", "HostPort": 5353, "HostPortEnd": 0}]}})
            ),
            Ok(Call::CreateEndpoint(EndpointRequest {
                network_id: ID.into(),
                endpoint_id: ID.into(),
                address: "10.0.0.2/24".into(),
                address6: Some("fd00:1::2/64".into()),
                ports: vec![("tcp", 8080, 80), ("udp", 5353, 53)],
            }))
        );
        assert_eq!(
            call(
                "/NetworkDriver.Leave",
                json!({"NetworkID": ID, "EndpointID": ID})
            ),
            Ok(Call::Leave(ID.into(), ID.into()))
        );
    }

    #[test]
    fn bad_calls_are_refused_with_a_reason() {
        let cases = [
            ("/Nope.Call", json!({})),
            ("/IpamDriver.RequestPool", json!({"SubPool": "10.0.0.0/25"})),
            (
                "/IpamDriver.RequestPool",
                json!({"Options": {"weft.network": 7}}),
            ),
            ("/NetworkDriver.CreateNetwork", json!({"NetworkID": "../x"})),
            ("/NetworkDriver.CreateNetwork", json!({})),
            (
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": ID, "EndpointID": ID, "Interface": {"Address": ""}}),
            ),
            (
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": ID, "EndpointID": ID,
                       "Interface": {"Address": "10.0.0.2/24", "MacAddress": "02:00:00:00:00:01"}}),
            ),
            (
                "/NetworkDriver.Join",
                json!({"NetworkID": ID, "EndpointID": ID, "SandboxKey": "relative"}),
            ),
            (
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": ID, "EndpointID": ID, "Interface": {"Address": "10.0.0.2/24"},
                       "Options": {"com.docker.network.portmap": [
                           {"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 0}]}}),
            ),
            (
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": ID, "EndpointID": ID, "Interface": {"Address": "10.0.0.2/24"},
                       "Options": {"com.docker.network.portmap": [
                           {"Proto": 132, "Port": 80, "HostIP": "", "HostPort": 80}]}}),
            ),
            (
                "/NetworkDriver.CreateEndpoint",
                json!({"NetworkID": ID, "EndpointID": ID, "Interface": {"Address": "10.0.0.2/24"},
                       "Options": {"com.docker.network.portmap": [
                           {"Proto": 6, "Port": 80, "HostIP": "127.0.0.1", "HostPort": 80}]}}),
            ),
            (
                "/NetworkDriver.Join",
                json!({"NetworkID": ID, "EndpointID": "x".repeat(MAX_ID + 1), "SandboxKey": "/a"}),
            ),
        ];
        for (path, body) in cases {
            let r = parse(path, body.to_string().as_bytes());
            assert!(r.is_err(), "{path} {body}: {r:?}");
        }
        assert!(parse("/IpamDriver.RequestPool", b"{not json").is_err());
    }
}
