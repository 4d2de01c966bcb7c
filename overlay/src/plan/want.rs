//! The wanted kernel shape, derived from the desired state alone: per
//! namespace its links (kind, MTU, MAC, master, addresses), remote
//! entries and default route, and the veth pairs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{INGRESS_PORT, NsRef, ObservedKind, ObservedLink};
use crate::mac::MacAddr;
use crate::model::names::{
    self, GATEWAY_BRIDGE, INGRESS_IF, LOOPBACK, NETWORK_BRIDGE, TASK_GW_IF, WG_DEVICE,
};
use crate::model::{DesiredNode, TaskId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum WantKind {
    Loopback,
    Bridge,
    Vxlan {
        vni: u32,
        port: u16,
        local: IpAddr,
    },
    Veth,
    /// The WireGuard TUN; created by [`Op::CreateWg`], never generically.
    Tun,
}

#[derive(Clone, Debug)]
pub(super) struct WantLink {
    pub(super) kind: WantKind,
    pub(super) mtu: Option<u32>,
    pub(super) mac: Option<MacAddr>,
    pub(super) master: Option<&'static str>,
    pub(super) addrs: BTreeSet<IpNetwork>,
    /// The IPv6 addresses are the runtime's to set (a handed-over
    /// endpoint: Docker turns IPv6 on for it and sets the address weft's
    /// IPAM gave): the IPv6 ones of `addrs` are not added and other IPv6
    /// addresses not deleted, which would race the runtime while it sets
    /// the interface up.
    pub(super) runtime_addrs6: bool,
}

impl WantLink {
    pub(super) fn new(kind: WantKind, mtu: u32) -> WantLink {
        WantLink {
            kind,
            mtu: Some(mtu),
            mac: None,
            master: None,
            addrs: BTreeSet::new(),
            runtime_addrs6: false,
        }
    }

    pub(super) fn loopback() -> WantLink {
        WantLink {
            kind: WantKind::Loopback,
            mtu: None,
            mac: None,
            master: None,
            addrs: BTreeSet::new(),
            runtime_addrs6: false,
        }
    }
}

/// The VXLAN device of a network, MAC -> VTEP and IP -> MAC.
pub(super) type Remotes = (String, BTreeMap<MacAddr, IpAddr>, BTreeMap<IpAddr, MacAddr>);

#[derive(Default)]
pub(super) struct WantNs {
    pub(super) links: BTreeMap<String, WantLink>,
    pub(super) remotes: Option<Remotes>,
    /// Default routes (gateway, device), at most one per family.
    pub(super) default_routes: Vec<(IpAddr, String)>,
}

/// A veth pair; `a` creates it (network or host side), `b` is the task side
/// (or, for the ingress endpoint, the daemon side).
pub(super) struct Pair {
    pub(super) a: (NsRef, String, Option<MacAddr>),
    pub(super) b: (NsRef, String, Option<MacAddr>),
    pub(super) mtu: u32,
    /// `b` is handed to a runtime that moves it: once made, only `a` is
    /// looked at ([`TaskNet::handover`]).
    pub(super) handed: bool,
}

pub(super) struct Want {
    pub(super) ns: BTreeMap<NsRef, WantNs>,
    pub(super) pairs: Vec<Pair>,
}

pub(super) fn want(desired: &DesiredNode) -> Want {
    let mut ns: BTreeMap<NsRef, WantNs> = BTreeMap::new();
    let mut pairs = Vec::new();
    let host = ns.entry(NsRef::Host).or_default();
    if let Some(gw) = &desired.gateway {
        let mut br = WantLink::new(WantKind::Bridge, gw.mtu);
        br.addrs.insert(gw.bridge_address());
        br.addrs.extend(gw.bridge_address6());
        host.links.insert(GATEWAY_BRIDGE.to_owned(), br);
    }
    if let Some(wg) = &desired.wireguard {
        let mut tun = WantLink::new(WantKind::Tun, wg.mtu);
        tun.addrs.insert(wg.tunnel_addr);
        host.links.insert(WG_DEVICE.to_owned(), tun);
    }
    for (id, net) in &desired.networks {
        let w = ns.entry(NsRef::Network(id.clone())).or_default();
        w.links.insert(LOOPBACK.to_owned(), WantLink::loopback());
        let mut br = WantLink::new(WantKind::Bridge, net.mtu);
        br.addrs.insert(net.bridge_address());
        br.addrs.extend(net.bridge_address6());
        w.links.insert(NETWORK_BRIDGE.to_owned(), br);
        if net.local {
            continue;
        }
        let vx_name = names::vxlan(net.vni);
        let mut vx = WantLink::new(
            WantKind::Vxlan {
                vni: net.vni,
                port: desired.vxlan_port,
                local: desired.local_vtep(id),
            },
            net.mtu,
        );
        vx.master = Some(NETWORK_BRIDGE);
        w.links.insert(vx_name.clone(), vx);
        let fdb = net.remote.values().map(|r| (r.mac, r.vtep)).collect();
        // A dual-stack remote has one neighbour entry per family, both
        // to its one MAC.
        let neigh = net
            .remote
            .values()
            .flat_map(|r| std::iter::once(r.ip).chain(r.ip6).map(|ip| (ip, r.mac)))
            .collect();
        w.remotes = Some((vx_name, fdb, neigh));
    }
    if let Some(ing) = &desired.ingress {
        let net = &desired.networks[&ing.network];
        let nref = NsRef::Network(ing.network.clone());
        let mut p = WantLink::new(WantKind::Veth, net.mtu);
        p.master = Some(NETWORK_BRIDGE);
        ns.entry(nref.clone())
            .or_default()
            .links
            .insert(INGRESS_PORT.to_owned(), p);
        let mut e = WantLink::new(WantKind::Veth, net.mtu);
        e.mac = Some(ing.mac);
        e.addrs.insert(ing.ip);
        e.addrs.extend(ing.ip6);
        ns.entry(NsRef::Host)
            .or_default()
            .links
            .insert(INGRESS_IF.to_owned(), e);
        pairs.push(Pair {
            a: (nref, INGRESS_PORT.to_owned(), None),
            b: (NsRef::Host, INGRESS_IF.to_owned(), Some(ing.mac)),
            mtu: net.mtu,
            handed: false,
        });
    }
    for (tid, task) in &desired.tasks {
        if task.handover && task.netns.is_none() {
            handover(desired, tid, task, &mut ns, &mut pairs);
            continue;
        }
        let tref = NsRef::Task(tid.clone());
        ns.entry(tref.clone())
            .or_default()
            .links
            .insert(LOOPBACK.to_owned(), WantLink::loopback());
        for ep in &task.endpoints {
            let (net, nref, port) = want_port(desired, tid, ep, &mut ns);
            let mut e = WantLink::new(WantKind::Veth, net.mtu);
            e.mac = Some(ep.mac);
            e.addrs.insert(ep.ip);
            e.addrs.extend(ep.ip6);
            e.runtime_addrs6 = task.handover;
            ns.entry(tref.clone())
                .or_default()
                .links
                .insert(ep.ifname.clone(), e);
            pairs.push(Pair {
                a: (nref, port, None),
                b: (tref.clone(), ep.ifname.clone(), Some(ep.mac)),
                mtu: net.mtu,
                handed: task.handover,
            });
        }
        if let (Some(att), Some(gw)) = (&task.gateway, &desired.gateway) {
            let port = names::gw_port(tid);
            let mut p = WantLink::new(WantKind::Veth, gw.mtu);
            p.master = Some(GATEWAY_BRIDGE);
            ns.entry(NsRef::Host)
                .or_default()
                .links
                .insert(port.clone(), p);
            let mut e = WantLink::new(WantKind::Veth, gw.mtu);
            e.mac = Some(att.mac);
            e.addrs.insert(att.ip);
            let t = ns.entry(tref.clone()).or_default();
            t.default_routes.push((gw.gateway, TASK_GW_IF.to_owned()));
            if let (Some(ip6), Some((_, gw6))) = (att.ip6, gw.ipv6) {
                e.addrs.insert(ip6);
                t.default_routes.push((gw6, TASK_GW_IF.to_owned()));
            }
            t.links.insert(TASK_GW_IF.to_owned(), e);
            pairs.push(Pair {
                a: (NsRef::Host, port, None),
                b: (tref.clone(), TASK_GW_IF.to_owned(), Some(att.mac)),
                mtu: gw.mtu,
                handed: false,
            });
        }
    }
    Want { ns, pairs }
}

/// The network side of task `tid`'s endpoint `ep`: its port on the
/// network's bridge. Returns the network, its namespace and the port.
pub(super) fn want_port<'a>(
    desired: &'a DesiredNode,
    tid: &TaskId,
    ep: &crate::model::LocalEndpoint,
    ns: &mut BTreeMap<NsRef, WantNs>,
) -> (&'a crate::model::OverlayNet, NsRef, String) {
    let net = &desired.networks[&ep.network];
    let nref = NsRef::Network(ep.network.clone());
    let port = names::port(tid);
    let mut p = WantLink::new(WantKind::Veth, net.mtu);
    p.master = Some(NETWORK_BRIDGE);
    ns.entry(nref.clone())
        .or_default()
        .links
        .insert(port.clone(), p);
    (net, nref, port)
}

/// A task whose endpoint is being handed to its runtime: the network side
/// (port on `br0`) is wanted, and the pair is made with the inside end in
/// the daemon's namespace under [`names::handover`]; nothing inside.
pub(super) fn handover(
    desired: &DesiredNode,
    tid: &TaskId,
    task: &crate::model::TaskNet,
    ns: &mut BTreeMap<NsRef, WantNs>,
    pairs: &mut Vec<Pair>,
) {
    let Some(ep) = task.endpoints.first() else {
        return;
    };
    let (net, nref, port) = want_port(desired, tid, ep, ns);
    pairs.push(Pair {
        a: (nref, port, None),
        b: (NsRef::Host, names::handover(tid), Some(ep.mac)),
        mtu: net.mtu,
        handed: true,
    });
}

/// The runtime's path of a foreign task namespace; `None` for weft's own.
pub(super) fn foreign_source<'a>(
    desired: &'a DesiredNode,
    ns: &NsRef,
) -> Option<&'a std::path::Path> {
    match ns {
        NsRef::Task(t) => desired.tasks.get(t)?.netns.as_deref(),
        _ => None,
    }
}

/// Whether an unwanted link in `ns` is ours to delete.
pub(super) fn owned(ns: &NsRef, name: &str, link: &ObservedLink) -> bool {
    match ns {
        NsRef::Host => {
            name == GATEWAY_BRIDGE
                || name == INGRESS_IF
                || name.starts_with(names::GW_PORT_PREFIX)
                || name.starts_with(names::VXLAN_PREFIX)
        }
        // The whole namespace is ours.
        NsRef::Network(_) => name != LOOPBACK,
        // The task's process may make links of its own; only veths are ours.
        NsRef::Task(_) => link.kind == ObservedKind::Veth,
    }
}

/// Whether an existing link has the wanted kind and shape.
pub(super) fn shape_ok(want: &WantKind, got: &ObservedLink) -> bool {
    match want {
        WantKind::Loopback => true,
        WantKind::Bridge => got.kind == ObservedKind::Bridge,
        WantKind::Veth => got.kind == ObservedKind::Veth,
        WantKind::Tun => got.kind == ObservedKind::Other("tun".into()),
        WantKind::Vxlan { vni, port, local } => {
            got.kind == ObservedKind::Vxlan
                && got.vxlan.as_ref().is_some_and(|v| {
                    v.vni == Some(*vni)
                        && v.port == Some(*port)
                        && v.local == Some(*local)
                        && v.learning != Some(true)
                        && v.proxy == Some(true)
                })
        }
    }
}

pub(super) fn is_link_local(a: &IpNetwork) -> bool {
    match a {
        IpNetwork::V6(n) => n.ip().is_unicast_link_local(),
        IpNetwork::V4(_) => false,
    }
}
