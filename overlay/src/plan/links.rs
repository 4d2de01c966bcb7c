//! The link passes: deleting unwanted or mis-shaped links, removed tasks
//! and networks, creating namespaces and links, and setting link
//! properties.

use std::collections::{BTreeMap, BTreeSet};

use super::want::{WantKind, WantLink, foreign_source, owned, shape_ok};
use super::{NsRef, ObservedKind, Op, Pass, PortsTable};
use crate::model::names::{self, GATEWAY_BRIDGE, LOOPBACK};

/// Deletes, 1: unwanted or mis-shaped links in namespaces we keep.
/// Returns the wanted veth pairs to make again and the gateway bridge's
/// delete (it goes after its ports).
pub(super) fn delete_links(p: &mut Pass) -> (BTreeSet<usize>, Option<Op>) {
    let (observed, desired) = (p.observed, p.desired);
    let want = &p.want;
    let (fresh, ops) = (&mut p.fresh, &mut p.ops);
    let mut bad_pairs = BTreeSet::new();
    for (i, p) in want.pairs.iter().enumerate() {
        let a = observed.link(&p.a.0, &p.a.1);
        let b = observed.link(&p.b.0, &p.b.1);
        let paired = match (a, b) {
            // Handed over: wherever the inside end is now, it is the
            // runtime's; the network side stands while it has a peer.
            (Some(a), _) if p.handed => a.kind == ObservedKind::Veth && a.peer_index.is_some(),
            (Some(a), Some(b)) => {
                a.kind == ObservedKind::Veth
                    && b.kind == ObservedKind::Veth
                    && a.peer_index == Some(b.index)
                    && b.peer_index == Some(a.index)
            }
            _ => false,
        };
        if !paired {
            bad_pairs.insert(i);
            fresh.insert((p.a.0.clone(), p.a.1.clone()));
            fresh.insert((p.b.0.clone(), p.b.1.clone()));
        }
    }
    let mut gw_bridge_delete = None;
    for (nref, w) in &want.ns {
        let Some(obs) = observed.ns(nref) else {
            for name in w.links.keys() {
                fresh.insert((nref.clone(), name.clone()));
            }
            continue;
        };
        for (name, link) in &obs.links {
            let delete = match w.links.get(name) {
                // In a foreign namespace, only the links named in the
                // desired state are ours; the peers of removed ones go
                // from the network's namespace and the gateway bridge.
                None => foreign_source(desired, nref).is_none() && owned(nref, name, link),
                Some(wl) => {
                    !shape_ok(&wl.kind, link) || fresh.contains(&(nref.clone(), name.clone()))
                }
            };
            if delete && link_kind_deletable(&w.links, name) {
                fresh.insert((nref.clone(), name.clone()));
                let op = Op::DeleteLink {
                    ns: nref.clone(),
                    name: name.clone(),
                };
                if *nref == NsRef::Host && name == GATEWAY_BRIDGE {
                    // After its ports are gone.
                    gw_bridge_delete = Some(op);
                } else {
                    ops.push(op);
                }
            }
        }
    }
    (bad_pairs, gw_bridge_delete)
}

/// Deletes, 2 and 3: removed tasks and networks.
pub(super) fn delete_removed(p: &mut Pass) {
    let (observed, desired) = (p.observed, p.desired);
    let ops = &mut p.ops;
    // --- deletes, 2: removed tasks (their veth peers went above).
    for tid in observed.tasks.keys() {
        if !desired.tasks.contains_key(tid) {
            ops.push(Op::DeleteNetns {
                ns: NsRef::Task(tid.clone()),
            });
        }
    }
    // --- deletes, 3: removed networks: veths (peers in removed tasks) and
    // the VXLAN device (so its VNI is free at once), then the namespace.
    for (nid, obs) in &observed.networks {
        if desired.networks.contains_key(nid) {
            continue;
        }
        let nref = NsRef::Network(nid.clone());
        for (name, link) in &obs.links {
            if matches!(link.kind, ObservedKind::Veth | ObservedKind::Vxlan) {
                ops.push(Op::DeleteLink {
                    ns: nref.clone(),
                    name: name.clone(),
                });
            }
        }
        ops.push(Op::DeleteNetns { ns: nref });
    }
}

/// Creates, 1 to 3: forwarding, namespaces, the WireGuard device, bridges,
/// VXLAN devices and veth pairs.
pub(super) fn create_links(
    p: &mut Pass,
    wg_ok: bool,
    ports: Option<&PortsTable>,
    bad_pairs: &BTreeSet<usize>,
) {
    let (observed, desired) = (p.observed, p.desired);
    let want = &p.want;
    let (fresh, ops) = (&p.fresh, &mut p.ops);
    // --- creates, 1: forwarding, namespaces.
    // Egress through the gateway bridge and published ports (to local or
    // remote backends) are both forwarded.
    let forwards_v4 = desired.gateway.as_ref().is_some_and(|g| g.subnet.is_ipv4())
        || ports
            .as_ref()
            .is_some_and(|p| !p.rules.is_empty() || p.ingress);
    if forwards_v4 && !observed.ipv4_forwarding {
        ops.push(Op::EnableIpv4Forwarding);
    }
    // IPv6 only for a gateway bridge with IPv6 (a task with an IPv6
    // address) or a dual-stack ingress endpoint: that is all IPv6 that is
    // forwarded in the daemon's namespace (egress, published ports).
    let forwards_v6 = desired.gateway.as_ref().is_some_and(|g| g.ipv6.is_some())
        || desired.ingress.as_ref().is_some_and(|i| i.ip6.is_some());
    if forwards_v6 && !observed.ipv6_forwarding {
        ops.push(Op::EnableIpv6Forwarding);
    }
    for nref in want.ns.keys() {
        if *nref != NsRef::Host && observed.ns(nref).is_none() {
            ops.push(match foreign_source(desired, nref) {
                Some(source) => Op::AdoptNetns {
                    ns: nref.clone(),
                    source: source.to_owned(),
                },
                None => Op::CreateNetns { ns: nref.clone() },
            });
        }
    }
    let missing = |nref: &NsRef, name: &str| {
        fresh.contains(&(nref.clone(), name.to_owned())) || observed.link(nref, name).is_none()
    };
    // --- creates, 2: the WireGuard device (encrypted VXLAN devices use its
    // address), bridges, then VXLAN devices.
    if let Some(cfg) = &desired.wireguard
        && !wg_ok
    {
        ops.push(Op::CreateWg {
            listen_port: cfg.listen_port,
            private_key_path: cfg.private_key_path.clone(),
            mtu: cfg.mtu,
        });
    }
    for (nref, w) in &want.ns {
        for (name, wl) in &w.links {
            if wl.kind == WantKind::Bridge && missing(nref, name) {
                ops.push(Op::CreateBridge {
                    ns: nref.clone(),
                    name: name.clone(),
                    mtu: wl.mtu.unwrap_or(1500),
                });
            }
        }
    }
    for (nref, w) in &want.ns {
        let NsRef::Network(nid) = nref else { continue };
        for (name, wl) in &w.links {
            if let WantKind::Vxlan { vni, port, local } = wl.kind
                && missing(nref, name)
            {
                ops.push(Op::CreateVxlan {
                    network: nid.clone(),
                    name: name.clone(),
                    vni,
                    port,
                    local,
                    mtu: wl.mtu.unwrap_or(1500),
                });
            }
        }
    }
    // --- creates, 3: veth pairs.
    for (i, p) in want.pairs.iter().enumerate() {
        if bad_pairs.contains(&i) {
            ops.push(Op::CreateVeth {
                ns: p.a.0.clone(),
                name: p.a.1.clone(),
                mac: p.a.2,
                peer_ns: p.b.0.clone(),
                peer_name: p.b.1.clone(),
                peer_mac: p.b.2,
                mtu: p.mtu,
            });
        }
    }
    // --- weft's addressed links in the daemon's namespace ignore router
    // advertisements (from a task on the gateway bridge or the ingress
    // network), also those made in this pass.
    if let Some(host) = want.ns.get(&NsRef::Host) {
        for name in [names::GATEWAY_BRIDGE, names::INGRESS_IF] {
            if host.links.contains_key(name)
                && (missing(&NsRef::Host, name) || !observed.ra_refused.contains(name))
            {
                ops.push(Op::RefuseRa {
                    link: name.to_owned(),
                });
            }
        }
    }
}

/// Link properties: MTU, MAC, master, addresses, up.
pub(super) fn set_link_properties(p: &mut Pass) {
    let observed = p.observed;
    let want = &p.want;
    let (fresh, ops) = (&p.fresh, &mut p.ops);
    for (nref, w) in &want.ns {
        for (name, wl) in &w.links {
            let obs = if fresh.contains(&(nref.clone(), name.clone())) {
                None
            } else {
                observed.link(nref, name)
            };
            let created = obs.is_none();
            let link = || name.clone();
            if let (Some(o), Some(m)) = (obs, wl.mtu)
                && o.mtu != Some(m)
            {
                ops.push(Op::SetMtu {
                    ns: nref.clone(),
                    link: link(),
                    mtu: m,
                });
            }
            if let (Some(o), Some(m)) = (obs, wl.mac)
                && o.mac != Some(m)
            {
                ops.push(Op::SetMac {
                    ns: nref.clone(),
                    link: link(),
                    mac: m,
                });
            }
            if let Some(master) = wl.master
                && obs.is_none_or(|o| o.master.as_deref() != Some(master))
            {
                ops.push(Op::SetMaster {
                    ns: nref.clone(),
                    link: link(),
                    master: master.to_owned(),
                });
            }
            for a in wl
                .addrs
                .iter()
                .filter(|a| !(wl.runtime_addrs6 && a.is_ipv6()))
            {
                if obs.is_none_or(|o| !o.addrs.contains(a)) {
                    ops.push(Op::AddAddress {
                        ns: nref.clone(),
                        link: link(),
                        addr: *a,
                    });
                }
            }
            if created || obs.is_some_and(|o| !o.up) {
                ops.push(Op::SetUp {
                    ns: nref.clone(),
                    link: link(),
                });
            }
        }
    }
}

/// Loopback is never deleted, whatever its state.
fn link_kind_deletable(wanted: &BTreeMap<String, WantLink>, name: &str) -> bool {
    !(name == LOOPBACK
        || wanted
            .get(name)
            .is_some_and(|w| w.kind == WantKind::Loopback))
}
