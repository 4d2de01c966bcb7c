//! Checks of the desired state, on its own and against the daemon's
//! routes, before anything is planned.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{HostRoute, Observed, PlanError, wg_peers};
use crate::model::names::{GATEWAY_BRIDGE, LOOPBACK, TASK_GW_IF};
use crate::model::{DesiredNode, NetworkId, OverlayNet, Proto, TaskId};

fn check_id(what: &'static str, id: &str) -> Result<(), PlanError> {
    let bad = |reason| {
        Err(PlanError::InvalidId {
            what,
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 200 {
        return bad("must be 1 to 200 characters");
    }
    if id.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

fn check_ifname(task: &TaskId, ifname: &str) -> Result<(), PlanError> {
    let bad = |reason| {
        Err(PlanError::InvalidIfname {
            task: task.clone(),
            ifname: ifname.to_owned(),
            reason,
        })
    };
    if ifname.is_empty() || ifname.len() > 15 {
        return bad("must be 1 to 15 bytes");
    }
    if ifname == "." || ifname == ".." {
        return bad("reserved");
    }
    if ifname
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return bad("contains '/', ':', NUL or whitespace");
    }
    if ifname == LOOPBACK || ifname == TASK_GW_IF {
        return bad("reserved for lo / the gateway attachment");
    }
    Ok(())
}

fn in_subnet(
    what: impl FnOnce() -> String,
    addr: IpAddr,
    subnet: IpNetwork,
) -> Result<(), PlanError> {
    if subnet.contains(addr) {
        Ok(())
    } else {
        Err(PlanError::AddressOutsideSubnet {
            what: what(),
            addr,
            subnet,
        })
    }
}

/// A dual-stack network's IPv6 half: an IPv6 subnet (the network's own
/// subnet being IPv4) holding its gateway, and remote IPv6 addresses in it.
fn check_subnet6(id: &NetworkId, net: &OverlayNet) -> Result<(), PlanError> {
    let Some((subnet6, gateway6)) = net.subnet6 else {
        if let Some(ip6) = net.remote.values().find_map(|r| r.ip6) {
            return Err(PlanError::NotDualStack {
                what: format!("IPv6 address {ip6} of a remote endpoint"),
                network: id.clone(),
            });
        }
        return Ok(());
    };
    if !subnet6.is_ipv6() || !net.subnet.is_ipv4() {
        return Err(PlanError::NotDualStack {
            what: format!("IPv6 subnet {subnet6} beside subnet {}", net.subnet),
            network: id.clone(),
        });
    }
    in_subnet(
        || format!("IPv6 gateway of network {id}"),
        gateway6,
        subnet6,
    )?;
    for r in net.remote.values() {
        if let Some(ip6) = r.ip6 {
            in_subnet(
                || format!("remote endpoint {} on network {id}", r.ip),
                ip6,
                subnet6,
            )?;
        }
    }
    Ok(())
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// The first route of `routes` that overlaps `subnet`, ignoring default
/// routes and routes through devices `own` claims (the subnet's own bridge,
/// or weft's devices).
pub fn colliding_route(
    subnet: IpNetwork,
    routes: &[HostRoute],
    own: impl Fn(&str) -> bool,
) -> Option<&HostRoute> {
    routes.iter().find(|r| {
        r.dest.prefix() != 0 && !r.dev.as_deref().is_some_and(&own) && overlaps(r.dest, subnet)
    })
}

/// Checks `desired` on its own and against the daemon's routes.
pub fn validate(observed: &Observed, desired: &DesiredNode) -> Result<(), PlanError> {
    let mut vnis: BTreeMap<u32, &NetworkId> = BTreeMap::new();
    for (id, net) in &desired.networks {
        check_id("network", id.as_str())?;
        in_subnet(
            || format!("gateway of network {id}"),
            net.gateway,
            net.subnet,
        )?;
        check_subnet6(id, net)?;
        if net.local {
            if !net.remote.is_empty() {
                return Err(PlanError::LocalWithRemotes {
                    network: id.clone(),
                });
            }
            continue;
        }
        if net.vni == 0 || net.vni > 0x00ff_ffff {
            return Err(PlanError::VniOutOfRange {
                network: id.clone(),
                vni: net.vni,
            });
        }
        if let Some(first) = vnis.insert(net.vni, id) {
            return Err(PlanError::DuplicateVni {
                vni: net.vni,
                first: first.clone(),
                second: id.clone(),
            });
        }
    }
    if let Some(wg) = &desired.wireguard {
        let bad = |what: &str, reason| PlanError::InvalidWireguard {
            what: what.to_owned(),
            reason,
        };
        if wg.listen_port == 0 {
            return Err(bad("listen port", "must not be 0"));
        }
        if wg.mtu < 1280 {
            return Err(bad("mtu", "must be at least 1280"));
        }
        for n in &wg.networks {
            if !desired.networks.contains_key(n) {
                return Err(bad(
                    n.as_str(),
                    "encrypted network not in the node's networks",
                ));
            }
        }
        wg_peers(desired)?;
    }
    if let Some(gw) = &desired.gateway {
        in_subnet(|| "gateway bridge".to_owned(), gw.gateway, gw.subnet)?;
        if let Some(r) = colliding_route(gw.subnet, &observed.host_routes, |d| d == GATEWAY_BRIDGE)
        {
            return Err(PlanError::GatewaySubnetCollision {
                subnet: gw.subnet,
                route: r.dest,
                dev: r.dev.clone(),
            });
        }
    }
    if let Some(ing) = &desired.ingress {
        let bad = |reason| PlanError::InvalidIngress {
            network: ing.network.clone(),
            reason,
        };
        let Some(net) = desired.networks.get(&ing.network) else {
            return Err(bad("network not in the node's networks"));
        };
        if net.local {
            return Err(bad("a local bridge network cannot carry ingress traffic"));
        }
        if ing.ip.prefix() != net.subnet.prefix() {
            return Err(bad("prefix length differs from the network's"));
        }
        in_subnet(
            || format!("ingress endpoint on network {}", ing.network),
            ing.ip.ip(),
            net.subnet,
        )?;
        if let Some(ip6) = ing.ip6 {
            let Some((subnet6, _)) = net.subnet6 else {
                return Err(bad("an IPv6 address on a network without IPv6"));
            };
            if ip6.prefix() != subnet6.prefix() {
                return Err(bad("IPv6 prefix length differs from the network's"));
            }
            in_subnet(
                || format!("ingress endpoint on network {}", ing.network),
                ip6.ip(),
                subnet6,
            )?;
        }
    }
    check_ports(desired)?;
    check_tasks(desired)
}

/// Published ports: no port 0, each (protocol, port) once.
fn check_ports(desired: &DesiredNode) -> Result<(), PlanError> {
    let mut published: BTreeMap<(Proto, u16), &str> = BTreeMap::new();
    for p in &desired.ports {
        let bad = |reason| PlanError::InvalidPort {
            proto: p.proto,
            port: p.port,
            owner: p.owner.clone(),
            reason,
        };
        if p.port == 0 {
            return Err(bad("port 0"));
        }
        if p.target_port == 0 {
            return Err(bad("target port 0"));
        }
        if let Some(first) = published.insert((p.proto, p.port), &p.owner) {
            return Err(PlanError::DuplicatePort {
                proto: p.proto,
                port: p.port,
                first: first.to_owned(),
                second: p.owner.clone(),
            });
        }
    }
    Ok(())
}

/// Tasks: ids, interface names, one endpoint per network, addresses in
/// their subnets (the IPv6 one in the network's `subnet6`), and a gateway
/// attachment only with a gateway bridge.
fn check_tasks(desired: &DesiredNode) -> Result<(), PlanError> {
    for (tid, task) in &desired.tasks {
        check_id("task", tid.as_str())?;
        let mut ifnames = BTreeSet::new();
        let mut nets = BTreeSet::new();
        for ep in &task.endpoints {
            check_ifname(tid, &ep.ifname)?;
            if !ifnames.insert(ep.ifname.as_str()) {
                return Err(PlanError::InvalidIfname {
                    task: tid.clone(),
                    ifname: ep.ifname.clone(),
                    reason: "used twice",
                });
            }
            let Some(net) = desired.networks.get(&ep.network) else {
                return Err(PlanError::UnknownNetwork {
                    task: tid.clone(),
                    network: ep.network.clone(),
                });
            };
            if !nets.insert(&ep.network) {
                return Err(PlanError::DuplicateAttachment {
                    task: tid.clone(),
                    network: ep.network.clone(),
                });
            }
            in_subnet(
                || format!("task {tid} on network {}", ep.network),
                ep.ip.ip(),
                net.subnet,
            )?;
            if let Some(ip6) = ep.ip6 {
                let what = || format!("IPv6 address of task {tid} on network {}", ep.network);
                match net.subnet6 {
                    Some((subnet6, _)) => in_subnet(what, ip6.ip(), subnet6)?,
                    None => {
                        return Err(PlanError::NotDualStack {
                            what: what(),
                            network: ep.network.clone(),
                        });
                    }
                }
            }
        }
        if let Some(att) = &task.gateway {
            let Some(gw) = &desired.gateway else {
                return Err(PlanError::NoGatewayBridge { task: tid.clone() });
            };
            in_subnet(
                || format!("gateway attachment of task {tid}"),
                att.ip.ip(),
                gw.subnet,
            )?;
        }
    }
    Ok(())
}
