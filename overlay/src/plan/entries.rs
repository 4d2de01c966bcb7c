//! The entry passes: stale FDB/neighbour entries, addresses and routes
//! out; default routes, FDB and neighbour entries in.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::want::{WantKind, foreign_source, is_link_local};
use super::{NsRef, Op, Pass};

/// Deletes, 4: stale FDB/neighbour entries, addresses, routes.
pub(super) fn delete_stale_entries(p: &mut Pass) {
    let observed = p.observed;
    let want = &p.want;
    let (fresh, ops) = (&p.fresh, &mut p.ops);
    for (nref, w) in &want.ns {
        let Some(obs) = observed.ns(nref) else {
            continue;
        };
        if let (NsRef::Network(nid), Some((vx, fdb, neigh))) = (nref, &w.remotes)
            && !fresh.contains(&(nref.clone(), vx.clone()))
        {
            for mac in obs.fdb.get(vx).into_iter().flat_map(|m| m.keys()) {
                if !fdb.contains_key(mac) {
                    ops.push(Op::DeleteFdb {
                        network: nid.clone(),
                        link: vx.clone(),
                        mac: *mac,
                    });
                }
            }
            for (ip, n) in obs.neighs.get(vx).into_iter().flatten() {
                if n.permanent && !neigh.contains_key(ip) {
                    ops.push(Op::DeleteNeigh {
                        network: nid.clone(),
                        link: vx.clone(),
                        ip: *ip,
                    });
                }
            }
        }
        for (name, wl) in &w.links {
            if wl.kind == WantKind::Loopback || fresh.contains(&(nref.clone(), name.clone())) {
                continue;
            }
            let Some(link) = obs.links.get(name) else {
                continue;
            };
            for a in &link.addrs {
                let runtimes = wl.runtime_addrs6 && a.is_ipv6();
                if !wl.addrs.contains(a) && !is_link_local(a) && !runtimes {
                    ops.push(Op::DeleteAddress {
                        ns: nref.clone(),
                        link: name.clone(),
                        addr: *a,
                    });
                }
            }
        }
        // A foreign namespace's routes are its runtime's unless weft
        // brings the default route (Docker's gateway bridge gives it one).
        let foreign_route =
            foreign_source(p.desired, nref).is_some() && w.default_routes.is_empty();
        if matches!(nref, NsRef::Task(_)) && !foreign_route {
            for dest in obs.default_routes.keys() {
                // A wanted route of the same family is replaced in place.
                let replaced = w
                    .default_routes
                    .iter()
                    .any(|(gw, _)| gw.is_ipv4() == dest.is_ipv4());
                if !replaced {
                    ops.push(Op::DeleteRoute {
                        ns: nref.clone(),
                        dest: *dest,
                    });
                }
            }
        }
    }
}

/// Default routes, FDB and neighbour entries.
pub(super) fn routes_and_entries(p: &mut Pass) {
    let observed = p.observed;
    let want = &p.want;
    let (fresh, ops) = (&p.fresh, &mut p.ops);
    for (nref, w) in &want.ns {
        for (gw, dev) in &w.default_routes {
            let dest = if gw.is_ipv4() {
                IpNetwork::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
            } else {
                IpNetwork::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
            }
            .expect("prefix 0 is valid");
            let ok = !fresh.contains(&(nref.clone(), dev.clone()))
                && observed
                    .ns(nref)
                    .and_then(|o| o.default_routes.get(&dest))
                    .is_some_and(|r| r.gateway == Some(*gw) && r.dev.as_ref() == Some(dev));
            if !ok {
                ops.push(Op::ReplaceDefaultRoute {
                    ns: nref.clone(),
                    gateway: *gw,
                    dev: dev.clone(),
                });
            }
        }
        if let (NsRef::Network(nid), Some((vx, fdb, neigh))) = (nref, &w.remotes) {
            let obs = if fresh.contains(&(nref.clone(), vx.clone())) {
                None
            } else {
                observed.ns(nref)
            };
            let obs_fdb = obs.and_then(|o| o.fdb.get(vx));
            for (mac, vtep) in fdb {
                let ok = obs_fdb
                    .and_then(|m| m.get(mac))
                    .is_some_and(|e| e.remote == *vtep && e.permanent);
                if !ok {
                    ops.push(Op::ReplaceFdb {
                        network: nid.clone(),
                        link: vx.clone(),
                        mac: *mac,
                        vtep: *vtep,
                    });
                }
            }
            let obs_neigh = obs.and_then(|o| o.neighs.get(vx));
            for (ip, mac) in neigh {
                let ok = obs_neigh
                    .and_then(|m| m.get(ip))
                    .is_some_and(|e| e.mac == Some(*mac) && e.permanent);
                if !ok {
                    ops.push(Op::ReplaceNeigh {
                        network: nid.clone(),
                        link: vx.clone(),
                        ip: *ip,
                        mac: *mac,
                    });
                }
            }
        }
    }
}
