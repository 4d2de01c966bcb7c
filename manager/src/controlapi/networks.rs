//! Networks through the control API: create, list, inspect, remove, and
//! connecting tasks to them.

use super::*;

impl ControlService {
    pub(super) fn network_wire(&self, s: &State, n: &crate::store::Network) -> pb::Network {
        let (mtu, limited_by) = crate::dispatcher::projection::network_mtu(s, n);
        pb::Network {
            ipv6: n.ipv6.is_some() || n.subnet.is_ipv6(),
            subnet6: n
                .ipv6
                .as_ref()
                .map(|v| v.subnet.to_string())
                .unwrap_or_default(),
            gateway6: n
                .ipv6
                .as_ref()
                .map(|v| v.gateway.to_string())
                .unwrap_or_default(),
            ip_range6: (n.ipv6.as_ref().and_then(|v| v.ip_range))
                .map(|r| r.to_string())
                .unwrap_or_default(),
            aux_addresses: n
                .aux_addresses
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            id: n.id.clone(),
            name: n.name.clone(),
            driver: n.driver.clone(),
            subnet: n.subnet.to_string(),
            gateway: n.gateway.to_string(),
            ip_range: n.ip_range.map(|r| r.to_string()).unwrap_or_default(),
            vni: n.vni,
            internal: n.internal,
            attachable: n.attachable,
            mtu,
            mtu_limited_by: limited_by,
            labels: n.labels.clone().into_iter().collect(),
            created_at_ms: n.created_at_ms,
            encrypted: n.encrypted,
            scope: n.scope().into(),
            node_id: n.node.map(|x| x.to_string()).unwrap_or_default(),
            ingress: n.ingress,
        }
    }

    pub(super) async fn create_network(&self, r: pb::CreateNetworkRequest) -> Result<pb::Network> {
        crate::validate::object_name("network", &r.name)?;
        let local = match r.driver.as_str() {
            "" | "overlay" => {
                if matches!(self.caller, Caller::Node(_)) {
                    return Err(Error::InvalidInput(
                        "overlay networks are created on a manager; this node can create --driver bridge networks"
                            .into(),
                    ));
                }
                None
            }
            "bridge" => Some(self.scope().ok_or_else(|| {
                Error::InvalidInput(
                    "a bridge network is local to one node: create it with that node's daemon (-H unix://…)"
                        .into(),
                )
            })?),
            "host" | "null" | "none" => {
                return Err(Error::InvalidInput(format!(
                    "the {} network is built in; there is nothing to create",
                    r.driver
                )));
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "unsupported driver {other:?}: use overlay (cluster-wide) or bridge (this node)"
                )));
            }
        };
        let (encrypted, mtu_given) = network_options(&r.options, r.mtu)?;
        let cidr = |what: &str, v: &str| -> Result<Option<ipnetwork::IpNetwork>> {
            if v.is_empty() {
                return Ok(None);
            }
            let n: ipnetwork::IpNetwork = v.parse().map_err(|_| {
                Error::InvalidInput(format!(
                    "invalid {what} {v:?}: give a CIDR such as 10.0.9.0/24"
                ))
            })?;
            if n.network() != n.ip() {
                return Err(Error::InvalidInput(format!(
                    "{what} {v} has host bits set; did you mean {}/{}?",
                    n.network(),
                    n.prefix()
                )));
            }
            Ok(Some(n))
        };
        let subnet = cidr("subnet", &r.subnet)?;
        let ip_range = cidr("ip range", &r.ip_range)?;
        if ip_range.is_some() && subnet.is_none() {
            return Err(Error::InvalidInput("--ip-range needs --subnet".into()));
        }
        if let Some(sn) = subnet
            && !sn.is_ipv4()
        {
            return Err(Error::InvalidInput(format!(
                "subnet {sn} is IPv6: give it as the IPv6 subnet (with --ipv6); the IPv4 subnet \
                 of a dual-stack network is given or taken from the pools"
            )));
        }
        let (subnet6, gateway6, ip_range6) = ipv6_side(&r, cidr)?;
        let gateway = if r.gateway.is_empty() {
            None
        } else {
            if subnet.is_none() {
                return Err(Error::InvalidInput("--gateway needs --subnet".into()));
            }
            Some(r.gateway.parse().map_err(|_| {
                Error::InvalidInput(format!(
                    "invalid gateway {:?}: give an IP address",
                    r.gateway
                ))
            })?)
        };
        let mtu = match mtu_given {
            0 => None,
            m if (576..=9000).contains(&m) => Some(m),
            m => {
                return Err(Error::InvalidInput(format!(
                    "MTU {m} is out of range: use 576-9000 (or leave it out to derive it from the underlay)"
                )));
            }
        };
        limits::labels(
            format_args!("network {}", r.name),
            r.labels.len(),
            &r.labels,
        )?;
        for k in r.labels.keys() {
            validate_label_key(k)?;
        }
        let aux_addresses = aux_addresses_from_wire(&r.aux_addresses)?;
        let id = crate::validate::random_id();
        let cmd = Command::CreateNetwork {
            spec: crate::store::NetworkSpec {
                aux_addresses,
                id: id.clone(),
                name: r.name,
                subnet,
                gateway,
                ip_range,
                internal: r.internal,
                attachable: r.attachable,
                mtu,
                labels: r.labels.into_iter().collect(),
                now_ms: now_ms(),
                encrypted,
                driver: if local.is_some() { "bridge" } else { "overlay" }.into(),
                node: local,
                ipv6: r.ipv6,
                no_ipv4: r.no_ipv4,
                subnet6,
                gateway6,
                ip_range6,
            },
        };
        self.core.read(|s| limits::admit(s, &cmd))?;
        self.core.propose(cmd).await?;
        self.read_after_write(|s| s.networks.get(&id).map(|n| self.network_wire(s, n)))
            .await
    }

    /// `weft network connect` (`attach`) and `disconnect`.
    pub async fn connect(&self, r: pb::ConnectNetworkRequest, attach: bool) -> Result<()> {
        let (task, net) = self.core.read(|s| -> Result<_> {
            let t = s.resolve_task(&r.task)?.clone();
            if let Caller::Node(n) = self.caller
                && t.node != n
            {
                return Err(crate::store::StoreError::TaskNotFound(r.task.clone()).into());
            }
            if let Some(x) = &t.spec.external {
                return Err(Error::FailedPrecondition(format!(
                    "task {} stands for {} container {}: its runtime connects it (a CNI ADD or \
                     DEL per network), not `weft network connect`",
                    t.name,
                    x.runtime.as_str(),
                    x.container_id
                )));
            }
            if matches!(r.network.as_str(), "host" | "none") {
                return Err(Error::InvalidInput(format!(
                    "--network {} is chosen when a task starts (`weft run --network {}`); it cannot be connected to a running task",
                    r.network, r.network
                )));
            }
            let net = s.resolve_network_on(&r.network, t.node)?.clone();
            Ok((t, net))
        })?;
        let ip = if r.ip.is_empty() {
            None
        } else {
            if !attach {
                return Err(Error::InvalidInput("--ip is for connect".into()));
            }
            Some(r.ip.parse().map_err(|_| {
                Error::InvalidInput(format!("invalid --ip {:?}: give an IP address", r.ip))
            })?)
        };
        if !attach && !r.aliases.is_empty() {
            return Err(Error::InvalidInput("--alias is for connect".into()));
        }
        crate::validate::aliases(&net, &r.aliases)?;
        let cmd = if attach {
            limits::at_most(
                format_args!("networks of task {}", task.name),
                task.attachments.len() + 1,
                limits::MAX_NETWORKS_PER_TASK,
                "networks",
            )?;
            let cmd = Command::ConnectTask {
                task: task.id.clone(),
                network: net.id.clone(),
                ip,
                aliases: r.aliases.clone(),
                ip6: crate::validate::ip6("--ip6", &r.ip6)?,
            };
            self.core.read(|s| limits::admit(s, &cmd))?;
            cmd
        } else {
            Command::DisconnectTask {
                task: task.id.clone(),
                network: net.id.clone(),
            }
        };
        self.core.propose(cmd).await?;
        Ok(())
    }

    pub(super) fn network_detail(&self, what: &str, verbose: bool) -> Result<pb::NetworkDetail> {
        self.core.read(|s| {
            let n = &self.resolve_visible(s, what)?;
            let mut detail = pb::NetworkDetail {
                network: Some(self.network_wire(s, n)),
                ..Default::default()
            };
            // Docker lists a network's containers on every inspect; the
            // peers (with their config versions) only verbosely.
            if !verbose {
                for t in s.tasks.values() {
                    for a in t.attachments.iter().filter(|a| a.network == n.id) {
                        detail.endpoints.push(endpoint_info(s, t, a));
                    }
                }
            }
            if verbose {
                let mut peers = std::collections::BTreeSet::new();
                for t in s.tasks.values() {
                    for a in t.attachments.iter().filter(|a| a.network == n.id) {
                        detail.endpoints.push(endpoint_info(s, t, a));
                        peers.insert(t.node);
                    }
                }
                for id in peers {
                    let Some(node) = s.nodes.get(&id) else {
                        continue;
                    };
                    let c = self.core.config_status(id);
                    detail.peers.push(pb::PeerInfo {
                        node_id: id.to_string(),
                        hostname: node.hostname.clone(),
                        vtep: node.data_path_addr.clone(),
                        config_version: c.pushed,
                        applied_version: c.applied,
                        behind: c.pushed.saturating_sub(c.applied),
                        apply_error: c.error,
                        tunnel_ip: node.tunnel_ip.map(|t| t.to_string()).unwrap_or_default(),
                        last_handshake_ms: if n.encrypted {
                            self.core.last_handshake_with(&node.wg_public_key)
                        } else {
                            0
                        },
                        wg_public_key: node.wg_public_key.clone(),
                    });
                }
            }
            Ok(detail)
        })
    }
}

/// The IPv6 subnet, gateway and range of a network create request, each of
/// the IPv6 family, the gateway and range only with the subnet, and none
/// without `--ipv6`.
fn ipv6_side(
    r: &pb::CreateNetworkRequest,
    cidr: impl Fn(&str, &str) -> Result<Option<ipnetwork::IpNetwork>>,
) -> Result<(
    Option<ipnetwork::IpNetwork>,
    Option<std::net::IpAddr>,
    Option<ipnetwork::IpNetwork>,
)> {
    let bad = |m: String| Err(Error::InvalidInput(m));
    let subnet6 = cidr("IPv6 subnet", &r.subnet6)?;
    let ip_range6 = cidr("IPv6 ip range", &r.ip_range6)?;
    let gateway6 = crate::validate::ip6("IPv6 gateway", &r.gateway6)?;
    if let Some(s) = subnet6.iter().chain(&ip_range6).find(|n| n.is_ipv4()) {
        return bad(format!("{s} is not an IPv6 prefix"));
    }
    if subnet6.is_none() && (ip_range6.is_some() || gateway6.is_some()) {
        return bad("an IPv6 --gateway or --ip-range needs an IPv6 --subnet".into());
    }
    if !r.ipv6 && subnet6.is_some() {
        return bad(format!(
            "subnet {} is IPv6: add --ipv6 for a dual-stack network",
            r.subnet6
        ));
    }
    Ok((subnet6, gateway6, ip_range6))
}

/// One task's endpoint on a network, as `network inspect` lists it.
fn endpoint_info(
    s: &crate::store::State,
    t: &crate::store::Task,
    a: &crate::store::Attachment,
) -> pb::EndpointInfo {
    pb::EndpointInfo {
        ip6: a.ip6.map(|ip| ip.to_string()).unwrap_or_default(),
        task_id: t.id.clone(),
        task_name: t.name.clone(),
        node_id: t.node.to_string(),
        hostname: s
            .nodes
            .get(&t.node)
            .map(|h| h.hostname.clone())
            .unwrap_or_default(),
        ip: a.ip.to_string(),
        mac: crate::store::ipam::mac_text(crate::store::ipam::mac_for(a.ip)),
        external: t
            .spec
            .external
            .as_ref()
            .map(crate::dispatcher::external::external_to_wire),
    }
}

/// At most this many `--aux-address` per network.
const MAX_AUX_ADDRESSES: usize = 256;

/// `--aux-address NAME=IP` from the wire: bounded, names as labels'
/// keys, addresses parsed (the store checks them against the subnet).
fn aux_addresses_from_wire(
    m: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, std::net::IpAddr>> {
    limits::at_most("--aux-address", m.len(), MAX_AUX_ADDRESSES, "addresses")?;
    let mut out = BTreeMap::new();
    for (name, ip) in m {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !name_ok {
            return Err(Error::InvalidInput(format!(
                "invalid --aux-address name {name:?}: 1 to 64 of letters, digits, '.', '-', '_'"
            )));
        }
        let addr = ip.parse().map_err(|_| {
            Error::InvalidInput(format!(
                "invalid --aux-address {name}={ip}: give NAME=IP, e.g. router=10.0.9.254"
            ))
        })?;
        out.insert(name.clone(), addr);
    }
    Ok(out)
}

/// `-o` options of `network create`: whether `encrypted`, and the MTU
/// (`--mtu`'s `mtu`, or Docker's `-o com.docker.network.driver.mtu`; 0:
/// derived). Unknown options are refused with the list of known ones.
fn network_options(
    options: &std::collections::HashMap<String, String>,
    mtu: u32,
) -> Result<(bool, u32)> {
    let mut encrypted = false;
    let mut mtu_opt = None;
    for (k, v) in options {
        match (k.as_str(), v.as_str()) {
            ("encrypted", "" | "true") => encrypted = true,
            ("encrypted", "false") => {}
            ("encrypted", _) => {
                return Err(Error::InvalidInput(format!(
                    "invalid value {v:?} for option encrypted: use `-o encrypted` or `-o encrypted=false`"
                )));
            }
            ("com.docker.network.driver.mtu", v) => {
                mtu_opt = Some(v.parse::<u32>().map_err(|_| {
                    Error::InvalidInput(format!(
                        "invalid value {v:?} for option com.docker.network.driver.mtu: give a number of bytes"
                    ))
                })?);
            }
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown network option {k:?}: the known options are encrypted \
                     (-o encrypted[=true|false]) and com.docker.network.driver.mtu (-o \
                     com.docker.network.driver.mtu=N, as --mtu)"
                )));
            }
        }
    }
    let mtu = match (mtu, mtu_opt) {
        (0, Some(m)) => m,
        (m, Some(o)) if m != o => {
            return Err(Error::InvalidInput(format!(
                "--mtu {m} and -o com.docker.network.driver.mtu={o} disagree: give one"
            )));
        }
        (m, _) => m,
    };
    Ok((encrypted, mtu))
}
