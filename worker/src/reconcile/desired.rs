//! The pushed config translated into the data plane's desired state: pure,
//! one function per part of the config.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_overlay::MacAddr;
use weft_overlay::model::{
    DesiredNode, EndpointId, GatewayBridge, GwAttachment, IngressEndpoint, LocalEndpoint,
    NetworkId, OverlayNet, Proto, PublishedPort, RemoteEndpoint, ServiceEntry, TaskId, TaskNet,
    WgConfig, WgPeer,
};
use weft_proto::v1 as pb;

use super::BadConfig;

fn parse<T: std::str::FromStr>(what: &'static str, value: &str) -> Result<T, BadConfig> {
    value.parse().map_err(|_| BadConfig {
        what,
        value: value.to_string(),
    })
}

/// Something with an address family (the IPv6 fields' parse check).
trait Family {
    fn is_v6(&self) -> bool;
}

impl Family for IpAddr {
    fn is_v6(&self) -> bool {
        self.is_ipv6()
    }
}

impl Family for IpNetwork {
    fn is_v6(&self) -> bool {
        self.is_ipv6()
    }
}

/// An optional IPv6 field of the config: empty is `None`; anything that
/// does not parse, or parses as IPv4, is refused.
fn parse6<T: std::str::FromStr + Family>(
    what: &'static str,
    value: &str,
) -> Result<Option<T>, BadConfig> {
    if value.is_empty() {
        return Ok(None);
    }
    let v: T = parse(what, value)?;
    if !v.is_v6() {
        return Err(BadConfig {
            what,
            value: value.to_string(),
        });
    }
    Ok(Some(v))
}

/// Translates the pushed config into the data plane's desired state.
/// Pure; `wg_key` is where this node's WireGuard private key lives.
pub fn desired_from_config(
    c: &pb::NodeConfig,
    wg_key: &std::path::Path,
) -> Result<DesiredNode, BadConfig> {
    let vtep: IpAddr = parse("vtep", &c.vtep)?;
    let mut d = DesiredNode::new(vtep);
    if c.vxlan_port != 0 {
        d.vxlan_port = u16::try_from(c.vxlan_port).map_err(|_| BadConfig {
            what: "vxlan port",
            value: c.vxlan_port.to_string(),
        })?;
    }
    for n in &c.networks {
        d.networks.insert(NetworkId(n.id.clone()), network(n)?);
    }
    let (mut any_gateway, mut any_gateway6) = (false, false);
    for t in &c.tasks {
        // A host-mode task lives in the daemon's own namespace: nothing
        // to set up for it.
        if t.network_mode == "host" {
            continue;
        }
        let net = task(t)?;
        any_gateway |= net.gateway.is_some();
        any_gateway6 |= net.gateway.as_ref().is_some_and(|g| g.ip6.is_some());
        d.tasks.insert(TaskId(t.id.clone()), net);
    }
    if let Some(w) = &c.wireguard {
        d.wireguard = Some(wireguard(c, w, wg_key)?);
    }
    if !c.vxlan_allowed_sources.is_empty() {
        d.vxlan_allowed_sources = Some(
            c.vxlan_allowed_sources
                .iter()
                .map(|a| parse("underlay address", a))
                .collect::<Result<_, _>>()?,
        );
    }
    for p in &c.ports {
        d.ports.push(published(p)?);
    }
    if let Some(i) = &c.ingress {
        d.ingress = Some(IngressEndpoint {
            network: NetworkId(i.network_id.clone()),
            ip: parse("ingress address", &i.ip)?,
            ip6: parse6("ingress ip6", &i.ip6)?,
            mac: parse::<MacAddr>("ingress mac", &i.mac)?,
        });
    }
    if any_gateway || !d.ports.is_empty() {
        let bridge = gateway_bridge(&c.gateway_subnet)?;
        // IPv6 on the gateway bridge (and so IPv6 forwarding) only on a
        // node that runs a task with an IPv6 address.
        d.gateway = Some(if any_gateway6 {
            bridge.with_ipv6()
        } else {
            bridge
        });
    }
    Ok(d)
}

/// One overlay network with its remote endpoints, services and names.
fn network(n: &pb::NetworkConfig) -> Result<OverlayNet, BadConfig> {
    let subnet: IpNetwork = parse("subnet", &n.subnet)?;
    let mut remote = BTreeMap::new();
    for r in &n.remote {
        remote.insert(
            EndpointId(format!("{}-{}", r.task_id, n.id)),
            RemoteEndpoint {
                ip6: parse6("remote ip6", &r.ip6)?,
                ip: parse("remote ip", &r.ip)?,
                mac: parse::<MacAddr>("remote mac", &r.mac)?,
                vtep: parse("remote vtep", &r.vtep)?,
            },
        );
    }
    let mut services = BTreeMap::new();
    for svc in &n.services {
        let vip = if svc.vip.is_empty() {
            None
        } else {
            Some(parse("vip", &svc.vip)?)
        };
        let backends = svc
            .backends
            .iter()
            .map(|b| parse("backend", b))
            .collect::<Result<Vec<IpAddr>, _>>()?;
        services.insert(
            svc.name.clone(),
            ServiceEntry {
                vip6: parse6("vip6", &svc.vip6)?,
                vip,
                backends,
            },
        );
    }
    let mut names = BTreeMap::new();
    for r in &n.names {
        names
            .entry(r.name.clone())
            .or_insert_with(Vec::new)
            .push(parse("task address", &r.ip)?);
    }
    let subnet6 = match (
        parse6::<IpNetwork>("subnet6", &n.subnet6)?,
        parse6::<IpAddr>("gateway6", &n.gateway6)?,
    ) {
        (Some(s), Some(g)) => Some((s, g)),
        (None, None) => None,
        // One without the other: a manager bug, refused rather than
        // guessed.
        (Some(_), None) => {
            return Err(BadConfig {
                what: "gateway6 (missing for subnet6)",
                value: n.subnet6.clone(),
            });
        }
        (None, Some(_)) => {
            return Err(BadConfig {
                what: "subnet6 (missing for gateway6)",
                value: n.gateway6.clone(),
            });
        }
    };
    Ok(OverlayNet {
        subnet6,
        local: n.local,
        vni: n.vni,
        subnet,
        gateway: parse("gateway", &n.gateway)?,
        mtu: n.mtu,
        internal: n.internal,
        remote,
        name: n.name.clone(),
        services,
        names,
    })
}

/// One local task's attachments.
fn task(t: &pb::TaskConfig) -> Result<TaskNet, BadConfig> {
    let mut endpoints = Vec::new();
    for (i, a) in t.attachments.iter().enumerate() {
        endpoints.push(LocalEndpoint {
            ip6: parse6("task ip6", &a.ip6)?,
            network: NetworkId(a.network_id.clone()),
            ifname: if a.ifname.is_empty() {
                format!("eth{i}")
            } else {
                a.ifname.clone()
            },
            ip: parse("task ip", &a.ip)?,
            mac: parse::<MacAddr>("task mac", &a.mac)?,
        });
    }
    let gateway = if t.gateway_ip.is_empty() {
        None
    } else {
        let ip = parse("gateway ip", &t.gateway_ip)?;
        Some(GwAttachment {
            // A task with an IPv6 address somewhere egresses over IPv6 too.
            ip6: endpoints
                .iter()
                .any(|e| e.ip6.is_some() || e.ip.is_ipv6())
                .then(|| GatewayBridge::ipv6_of(ip))
                .flatten(),
            ip,
            mac: parse::<MacAddr>("gateway mac", &t.gateway_mac)?,
        })
    };
    // A Docker endpoint's interface is handed to dockerd, which moves it
    // into the container; its name there is not known until it did
    // (crate::sandboxes).
    let handover = t
        .external
        .as_ref()
        .is_some_and(|e| e.runtime == crate::sandboxes::DOCKER);
    Ok(TaskNet {
        endpoints,
        gateway,
        netns: t
            .external
            .as_ref()
            .filter(|e| !e.netns.is_empty())
            .map(|e| std::path::PathBuf::from(&e.netns)),
        handover,
        // Docker's resolver holds 127.0.0.11 in its containers.
        resolver: t
            .external
            .as_ref()
            .filter(|e| e.runtime == crate::sandboxes::DOCKER)
            .map(|_| weft_overlay::dns::DOCKER_UPSTREAM_ADDR),
    })
}

/// The node's WireGuard device and its peers.
fn wireguard(
    c: &pb::NodeConfig,
    w: &pb::WireguardConfig,
    wg_key: &std::path::Path,
) -> Result<WgConfig, BadConfig> {
    let mut peers = BTreeMap::new();
    for p in &w.peers {
        peers.insert(
            p.node_id.clone(),
            WgPeer {
                public_key: p.public_key.clone(),
                endpoint: parse("peer endpoint", &p.endpoint)?,
                tunnel_ip: parse("peer tunnel ip", &p.tunnel_ip)?,
            },
        );
    }
    Ok(WgConfig {
        listen_port: u16::try_from(w.listen_port).map_err(|_| BadConfig {
            what: "wireguard port",
            value: w.listen_port.to_string(),
        })?,
        private_key_path: wg_key.to_path_buf(),
        tunnel_addr: parse("tunnel address", &w.tunnel_addr)?,
        mtu: w.mtu,
        keepalive: weft_overlay::model::DEFAULT_WG_KEEPALIVE,
        networks: c
            .networks
            .iter()
            .filter(|n| n.encrypted)
            .map(|n| NetworkId(n.id.clone()))
            .collect(),
        peers,
    })
}

/// One published port.
fn published(p: &pb::PublishedPortConfig) -> Result<PublishedPort, BadConfig> {
    let port = |what: &'static str, v: u32| {
        u16::try_from(v)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| BadConfig {
                what,
                value: v.to_string(),
            })
    };
    Ok(PublishedPort {
        proto: match p.protocol.as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                return Err(BadConfig {
                    what: "published port protocol",
                    value: other.to_string(),
                });
            }
        },
        port: port("published port", p.port)?,
        target_port: port("target port", p.target_port)?,
        local: p
            .local
            .iter()
            .map(|a| parse("local backend", a))
            .collect::<Result<_, _>>()?,
        remote: p
            .remote
            .iter()
            .map(|a| parse("remote backend", a))
            .collect::<Result<_, _>>()?,
        owner: p.owner.clone(),
    })
}

/// The tasks' default gateway on the gateway bridge of `gateway_subnet`.
pub fn gateway_of(gateway_subnet: &str) -> Option<IpAddr> {
    gateway_bridge(gateway_subnet).ok().map(|g| g.gateway)
}

/// The gateway bridge: its subnet, and the subnet's first address as the
/// tasks' default gateway.
fn gateway_bridge(gateway_subnet: &str) -> Result<GatewayBridge, BadConfig> {
    let subnet: IpNetwork = parse("gateway subnet", gateway_subnet)?;
    let gateway = match subnet {
        IpNetwork::V4(s) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(s.network()) + 1)),
        IpNetwork::V6(_) => {
            return Err(BadConfig {
                what: "gateway subnet (IPv6 is not supported yet)",
                value: gateway_subnet.to_owned(),
            });
        }
    };
    Ok(GatewayBridge {
        subnet,
        gateway,
        ..GatewayBridge::default()
    })
}

/// Foreign containers' tasks that cannot be wired: weft has not pinned
/// their namespace yet and the runtime's path no longer names one (the
/// container went between its ADD and this pass). Adopting it would fail
/// the whole pass; left out, the task fails to start and is removed.
pub fn unwirable(
    d: &DesiredNode,
    pin: impl Fn(&TaskId) -> std::path::PathBuf,
    is_netns: impl Fn(&std::path::Path) -> bool,
) -> Vec<TaskId> {
    d.tasks
        .iter()
        .filter(|(id, t)| {
            t.netns
                .as_ref()
                .is_some_and(|src| !is_netns(&pin(id)) && !is_netns(src))
        })
        .map(|(id, _)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_namespace_gone_before_it_was_pinned_is_left_out() {
        let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
        let t = |src: Option<&str>| TaskNet {
            netns: src.map(Into::into),
            ..TaskNet::default()
        };
        d.tasks.insert(TaskId("own".into()), t(None));
        d.tasks.insert(TaskId("live".into()), t(Some("/ns/live")));
        d.tasks
            .insert(TaskId("pinned".into()), t(Some("/ns/gone-but-pinned")));
        d.tasks.insert(TaskId("gone".into()), t(Some("/ns/gone")));
        let pin = |t: &TaskId| std::path::PathBuf::from(format!("/pins/{}", t.0));
        let exists = |p: &std::path::Path| {
            ["/ns/live", "/pins/pinned", "/pins/own"].contains(&p.to_str().unwrap())
        };
        assert_eq!(unwirable(&d, pin, exists), vec![TaskId("gone".into())]);
    }

    fn dual_stack_network() -> pb::NetworkConfig {
        pb::NetworkConfig {
            id: "n1".into(),
            vni: 4097,
            subnet: "10.0.9.0/24".into(),
            gateway: "10.0.9.1".into(),
            subnet6: "fd00:9::/64".into(),
            gateway6: "fd00:9::1".into(),
            mtu: 1450,
            remote: vec![pb::RemoteEndpoint {
                task_id: "t2".into(),
                ip: "10.0.9.3".into(),
                mac: "02:42:0a:00:09:03".into(),
                vtep: "198.18.0.2".into(),
                ip6: "fd00:9::3".into(),
            }],
            services: vec![pb::ServiceEndpoint {
                name: "web".into(),
                vip: "10.0.9.2".into(),
                vip6: "fd00:9::2".into(),
                backends: vec!["10.0.9.3".into(), "fd00:9::3".into()],
            }],
            ..pb::NetworkConfig::default()
        }
    }

    #[test]
    fn the_ipv6_fields_reach_the_model() {
        let net = network(&dual_stack_network()).unwrap();
        assert_eq!(
            net.subnet6,
            Some(("fd00:9::/64".parse().unwrap(), "fd00:9::1".parse().unwrap()))
        );
        let r = net.remote.values().next().unwrap();
        assert_eq!(r.ip6, Some("fd00:9::3".parse().unwrap()));
        let web = &net.services["web"];
        assert_eq!(web.vip6, Some("fd00:9::2".parse().unwrap()));
        assert_eq!(web.backends.len(), 2);
        let t = task(&pb::TaskConfig {
            attachments: vec![pb::TaskAttachment {
                network_id: "n1".into(),
                ip: "10.0.9.4/24".into(),
                ip6: "fd00:9::4/64".into(),
                mac: "02:42:0a:00:09:04".into(),
                ..pb::TaskAttachment::default()
            }],
            ..pb::TaskConfig::default()
        })
        .unwrap();
        assert_eq!(t.endpoints[0].ip6, Some("fd00:9::4/64".parse().unwrap()));
        // Empty: IPv4 only.
        let v4 = network(&pb::NetworkConfig {
            subnet6: String::new(),
            gateway6: String::new(),
            remote: vec![],
            services: vec![],
            ..dual_stack_network()
        })
        .unwrap();
        assert_eq!(v4.subnet6, None);
    }

    #[test]
    fn a_task_with_an_ipv6_address_gets_ipv6_on_the_gateway_bridge() {
        let attach = |ip6: &str| pb::TaskAttachment {
            network_id: "n1".into(),
            ip: "10.0.9.4/24".into(),
            ip6: ip6.into(),
            mac: "02:42:0a:00:09:04".into(),
            ..pb::TaskAttachment::default()
        };
        let config = |ip6: &str| pb::NodeConfig {
            vtep: "198.18.0.1".into(),
            gateway_subnet: "172.18.0.0/16".into(),
            networks: vec![dual_stack_network()],
            tasks: vec![pb::TaskConfig {
                id: "t1".into(),
                attachments: vec![attach(ip6)],
                gateway_ip: "172.18.0.5/16".into(),
                gateway_mac: "02:42:ac:12:00:05".into(),
                ..pb::TaskConfig::default()
            }],
            ..pb::NodeConfig::default()
        };
        let key = std::path::Path::new("/nonexistent");
        let d = desired_from_config(&config("fd00:9::4/64"), key).unwrap();
        let gw = d.gateway.unwrap();
        assert_eq!(
            gw.ipv6,
            Some((
                "fd77:6566:7400::ac12:0/112".parse().unwrap(),
                "fd77:6566:7400::ac12:1".parse().unwrap()
            ))
        );
        let att = d.tasks[&TaskId("t1".into())].gateway.clone().unwrap();
        assert_eq!(att.ip6, Some("fd77:6566:7400::ac12:5/112".parse().unwrap()));
        // IPv4 only: the bridge stays IPv4 only (no IPv6 forwarding).
        let d = desired_from_config(&config(""), key).unwrap();
        assert_eq!(d.gateway.unwrap().ipv6, None);
        assert_eq!(
            d.tasks[&TaskId("t1".into())].gateway.clone().unwrap().ip6,
            None
        );
    }

    #[test]
    fn an_ipv6_field_of_the_wrong_family_or_half_set_is_bad_config() {
        let bad = |f: fn(&mut pb::NetworkConfig)| {
            let mut n = dual_stack_network();
            f(&mut n);
            network(&n).unwrap_err().what
        };
        assert_eq!(bad(|n| n.subnet6 = "10.1.0.0/16".into()), "subnet6");
        assert_eq!(bad(|n| n.gateway6 = "10.1.0.1".into()), "gateway6");
        assert_eq!(bad(|n| n.subnet6 = "fd00:9::/xx".into()), "subnet6");
        assert_eq!(bad(|n| n.remote[0].ip6 = "10.0.9.3".into()), "remote ip6");
        assert_eq!(bad(|n| n.services[0].vip6 = "10.0.9.9".into()), "vip6");
        assert_eq!(
            bad(|n| n.gateway6 = String::new()),
            "gateway6 (missing for subnet6)"
        );
        let t = task(&pb::TaskConfig {
            attachments: vec![pb::TaskAttachment {
                network_id: "n1".into(),
                ip: "10.0.9.4/24".into(),
                ip6: "10.0.9.5/24".into(),
                mac: "02:42:0a:00:09:04".into(),
                ..pb::TaskAttachment::default()
            }],
            ..pb::TaskConfig::default()
        });
        assert_eq!(t.unwrap_err().what, "task ip6");
    }
}
