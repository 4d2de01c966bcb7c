//! [`diff`]: the change from one canonical config to another, made by
//! walking their sorted lists side by side.
//!
//! The leader makes a delta for every node whose config changed, on every
//! store change; with a network of M members each of those configs lists
//! O(M) entries. Made through maps keyed by cloned strings, then applied to
//! the old config and compared with the new one to check it, that cost
//! about 1.3 ms per member at 499 members and 14 ms at 4,990
//! (BENCHMARKS.md, "Scale"). Walking the lists in their canonical order
//! needs neither, and the same walk checks what makes the delta exact:
//! every set-like list of both configs strictly in [`super::canonicalize`]'s
//! order (so without repeats). Then `apply(old, diff(old, new)) == new`.

use std::cmp::Ordering;

use super::{addr_cmp, peer_cmp, port_cmp};
use crate::v1::{
    NameRecord, NetworkConfig, NetworkDelta, NodeConfig, NodeConfigDelta, PortDelta, PortKey,
    PublishedPortConfig, ServiceDelta, ServiceEndpoint, WireguardConfig,
};

/// The change from `old` (sent before) to `new`, such that
/// [`super::apply`]`(old, delta)` makes `new` exactly; `None` when a
/// set-like list it is made from is not strictly in canonical order
/// (unsorted, or an item twice), which a delta could not make again: send
/// `new` whole.
pub fn diff(old: &NodeConfig, new: &NodeConfig) -> Option<NodeConfigDelta> {
    let mut d = NodeConfigDelta {
        base_version: old.version,
        head: Some(head(new)),
        ..Default::default()
    };
    let by_id = |a: &NetworkConfig, b: &NetworkConfig| a.id.cmp(&b.id);
    // Networks dropped or sent whole take nothing from the old config.
    let mut nets_ok = true;
    walk(&old.networks, &new.networks, by_id, |o, n| match (o, n) {
        (Some(o), None) => d.networks_removed.push(o.id.clone()),
        (None, Some(n)) => nets_ok &= whole_network(n, &mut d),
        (Some(o), Some(n)) if !same_network_head(o, n) => nets_ok &= whole_network(n, &mut d),
        (Some(o), Some(n)) => match diff_network(o, n) {
            Some(Some(nd)) => d.networks_changed.push(nd),
            Some(None) => {}
            None => nets_ok = false,
        },
        (None, None) => {}
    })?;
    if !nets_ok {
        return None;
    }

    let (set, removed) = diff_keyed(
        &old.tasks,
        &new.tasks,
        |a, b| a.id.cmp(&b.id),
        |t| t.id.clone(),
    )?;
    d.tasks_set = set;
    d.tasks_removed = removed;
    let no_peers = Vec::new();
    let old_peers = old.wireguard.as_ref().map_or(&no_peers, |w| &w.peers);
    let new_peers = new.wireguard.as_ref().map_or(&no_peers, |w| &w.peers);
    let (set, removed) = diff_keyed(old_peers, new_peers, peer_cmp, |p| p.node_id.clone())?;
    d.wg_peers_set = set;
    d.wg_peers_removed = removed;
    let (added, removed) = diff_set(
        &old.vxlan_allowed_sources,
        &new.vxlan_allowed_sources,
        |a, b| a.cmp(b),
    )?;
    d.sources_added = added;
    d.sources_removed = removed;
    diff_ports(&old.ports, &new.ports, &mut d)?;
    Some(d)
}

/// The ports' change into `d` (`ports_as_changes`): new ones whole, held
/// ones whose fields changed with their remote backends as a change, and
/// the keys of those gone; `None` when a port list or a port's backends
/// are not strictly in order.
fn diff_ports(
    old: &[PublishedPortConfig],
    new: &[PublishedPortConfig],
    d: &mut NodeConfigDelta,
) -> Option<()> {
    d.ports_as_changes = true;
    let mut ok = true;
    walk(old, new, port_cmp, |o, n| match (o, n) {
        (Some(o), None) => {
            ok &= port_ok(o);
            d.ports_removed.push(PortKey {
                protocol: o.protocol.clone(),
                port: o.port,
            });
        }
        (None, Some(n)) => {
            ok &= port_ok(n);
            d.ports_set.push(n.clone());
        }
        (Some(o), Some(n)) if o != n => {
            ok &= port_ok(o) && port_ok(n);
            let Some((added, removed)) = diff_set(&o.remote, &n.remote, Ord::cmp) else {
                ok = false;
                return;
            };
            d.ports_changed.push(PortDelta {
                head: Some(PublishedPortConfig {
                    remote: Vec::new(),
                    ..n.clone()
                }),
                remote_added: added,
                remote_removed: removed,
            });
        }
        _ => {}
    })?;
    ok.then_some(())
}

/// Whether a port's backends are strictly in canonical order.
fn port_ok(p: &PublishedPortConfig) -> bool {
    strictly(&p.local, Ord::cmp) && strictly(&p.remote, Ord::cmp)
}

/// `new` without the lists a delta carries as changes (networks, tasks,
/// VXLAN sources, WireGuard peers, ports), copied without them: a delta's
/// head.
pub fn head(new: &NodeConfig) -> NodeConfig {
    // Every field named: a field added to the config must be placed here.
    let NodeConfig {
        version,
        vtep,
        vxlan_port,
        gateway_subnet,
        networks: _,
        tasks: _,
        wireguard,
        vxlan_allowed_sources: _,
        wg_key_generation,
        ports: _,
        ingress,
        keep_sources,
        sources_follow,
        image_fetches,
    } = new;
    let wireguard = wireguard.as_ref().map(|w| {
        let WireguardConfig {
            listen_port,
            tunnel_addr,
            mtu,
            key_generation,
            peers: _,
        } = w;
        WireguardConfig {
            listen_port: *listen_port,
            tunnel_addr: tunnel_addr.clone(),
            mtu: *mtu,
            key_generation: *key_generation,
            peers: Vec::new(),
        }
    });
    NodeConfig {
        version: *version,
        vtep: vtep.clone(),
        vxlan_port: *vxlan_port,
        gateway_subnet: gateway_subnet.clone(),
        networks: Vec::new(),
        tasks: Vec::new(),
        wireguard,
        vxlan_allowed_sources: Vec::new(),
        wg_key_generation: *wg_key_generation,
        // As changes ([`diff_ports`]).
        ports: Vec::new(),
        ingress: ingress.clone(),
        keep_sources: *keep_sources,
        sources_follow: *sources_follow,
        image_fetches: image_fetches.clone(),
    }
}

/// Adds `n` to the delta whole; false if its lists are not sets in order.
fn whole_network(n: &NetworkConfig, d: &mut NodeConfigDelta) -> bool {
    d.networks_set.push(n.clone());
    network_ok(n)
}

/// Whether `n`'s lists are strictly in canonical order.
fn network_ok(n: &NetworkConfig) -> bool {
    strictly(&n.remote, |a, b| a.task_id.cmp(&b.task_id))
        && strictly(&n.services, |a, b| a.name.cmp(&b.name))
        && n.services.iter().all(|s| strictly(&s.backends, addr_cmp))
        && strictly(&n.names, name_cmp)
}

/// Whether two networks agree in everything but their endpoints,
/// services and names.
fn same_network_head(a: &NetworkConfig, b: &NetworkConfig) -> bool {
    // Every field named: a field added to the config must be placed here.
    let NetworkConfig {
        id,
        name,
        vni,
        subnet,
        gateway,
        mtu,
        internal,
        remote: _,
        services: _,
        names: _,
        encrypted,
        local,
        subnet6,
        gateway6,
    } = a;
    *id == b.id
        && *name == b.name
        && *vni == b.vni
        && *subnet == b.subnet
        && *gateway == b.gateway
        && *mtu == b.mtu
        && *internal == b.internal
        && *encrypted == b.encrypted
        && *local == b.local
        && *subnet6 == b.subnet6
        && *gateway6 == b.gateway6
}

/// What changed on one network: `Some(None)` nothing, `None` a list not
/// strictly in order.
fn diff_network(old: &NetworkConfig, new: &NetworkConfig) -> Option<Option<NetworkDelta>> {
    let (remote_set, remote_removed) = diff_keyed(
        &old.remote,
        &new.remote,
        |a, b| a.task_id.cmp(&b.task_id),
        |r| r.task_id.clone(),
    )?;
    let mut services_removed = Vec::new();
    let mut services_changed = Vec::new();
    let mut backends_ok = true;
    walk(
        &old.services,
        &new.services,
        |a, b| a.name.cmp(&b.name),
        |o, n| match (o, n) {
            (Some(o), None) => {
                backends_ok &= strictly(&o.backends, addr_cmp);
                services_removed.push(o.name.clone());
            }
            (o, Some(n)) => match service_delta(o, n) {
                Some(Some(sd)) => services_changed.push(sd),
                Some(None) => {}
                None => backends_ok = false,
            },
            (None, None) => {}
        },
    )?;
    if !backends_ok {
        return None;
    }
    let (names_added, names_removed) = diff_set(&old.names, &new.names, name_cmp)?;
    let d = NetworkDelta {
        id: new.id.clone(),
        remote_set,
        remote_removed,
        services_changed,
        services_removed,
        names_added,
        names_removed,
    };
    let unchanged = d.remote_set.is_empty()
        && d.remote_removed.is_empty()
        && d.services_changed.is_empty()
        && d.services_removed.is_empty()
        && d.names_added.is_empty()
        && d.names_removed.is_empty();
    Some((!unchanged).then_some(d))
}

/// A service new or changed on a network (`old`: `None` when new), with
/// its backends as a change: `Some(None)` unchanged, `None` backends not
/// strictly in order.
fn service_delta(
    old: Option<&ServiceEndpoint>,
    new: &ServiceEndpoint,
) -> Option<Option<ServiceDelta>> {
    // Every field named: a field added to the endpoint must be placed here.
    let ServiceEndpoint {
        name,
        vip,
        backends,
        vip6,
    } = new;
    let no_backends = Vec::new();
    let before = old.map_or(&no_backends, |o| &o.backends);
    let (added, removed) = diff_set(before, backends, addr_cmp)?;
    let same = old.is_some_and(|o| o.vip == *vip && o.vip6 == *vip6)
        && added.is_empty()
        && removed.is_empty();
    Some((!same).then(|| ServiceDelta {
        name: name.clone(),
        vip: vip.clone(),
        vip6: vip6.clone(),
        backends_added: added,
        backends_removed: removed,
    }))
}

/// Name records in their canonical order: by name, then address.
fn name_cmp(a: &NameRecord, b: &NameRecord) -> Ordering {
    // Every field named: a record is equal only to itself in this order.
    let NameRecord { name, ip } = a;
    (name, ip).cmp(&(&b.name, &b.ip))
}

/// Whether `v` is strictly ordered by `cmp` (sorted, no item twice).
fn strictly<T>(v: &[T], cmp: impl Fn(&T, &T) -> Ordering) -> bool {
    v.windows(2).all(|w| cmp(&w[0], &w[1]) == Ordering::Less)
}

/// Walks two lists strictly ordered by `cmp` side by side: `f` gets each
/// item only `old` has, each only `new` has, and each pair with the same
/// key, in order. `None` (and no call) when either is not strictly
/// ordered.
fn walk<'a, T>(
    old: &'a [T],
    new: &'a [T],
    cmp: impl Fn(&T, &T) -> Ordering,
    mut f: impl FnMut(Option<&'a T>, Option<&'a T>),
) -> Option<()> {
    if !strictly(old, &cmp) || !strictly(new, &cmp) {
        return None;
    }
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) => cmp(o, n),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                f(old.get(i), None);
                i += 1;
            }
            Ordering::Greater => {
                f(None, new.get(j));
                j += 1;
            }
            Ordering::Equal => {
                f(old.get(i), new.get(j));
                i += 1;
                j += 1;
            }
        }
    }
    Some(())
}

/// Items of `new` that are not in `old` as they are (by key), and the
/// keys of `old` that `new` lacks; `None` when either is not strictly
/// ordered by key.
fn diff_keyed<T: Clone + PartialEq>(
    old: &[T],
    new: &[T],
    cmp: impl Fn(&T, &T) -> Ordering,
    key: impl Fn(&T) -> String,
) -> Option<(Vec<T>, Vec<String>)> {
    let (mut set, mut removed) = (Vec::new(), Vec::new());
    walk(old, new, cmp, |o, n| match (o, n) {
        (Some(o), None) => removed.push(key(o)),
        (o, Some(n)) if o != Some(n) => set.push(n.clone()),
        _ => {}
    })?;
    Some((set, removed))
}

/// Items in `new` only, and items in `old` only; `None` when either is
/// not strictly ordered by `cmp` (whose `Equal` must mean equal items).
fn diff_set<T: Clone>(
    old: &[T],
    new: &[T],
    cmp: impl Fn(&T, &T) -> Ordering,
) -> Option<(Vec<T>, Vec<T>)> {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    walk(old, new, cmp, |o, n| match (o, n) {
        (Some(o), None) => removed.push(o.clone()),
        (None, Some(n)) => added.push(n.clone()),
        _ => {}
    })?;
    Some((added, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::WgPeerConfig;

    #[test]
    fn a_walk_refuses_lists_out_of_order_or_with_repeats() {
        let cmp = |a: &u32, b: &u32| a.cmp(b);
        assert!(walk(&[1, 2], &[2, 1], cmp, |_, _| {}).is_none());
        assert!(walk(&[1, 1], &[2], cmp, |_, _| {}).is_none());
        let mut seen = Vec::new();
        walk(&[1, 3, 4], &[2, 3, 5], cmp, |o, n| {
            seen.push((o.copied(), n.copied()))
        });
        assert_eq!(
            seen,
            [
                (Some(1), None),
                (None, Some(2)),
                (Some(3), Some(3)),
                (Some(4), None),
                (None, Some(5)),
            ]
        );
    }

    #[test]
    fn wireguard_peers_go_by_node_number() {
        let peer = |id: &str| WgPeerConfig {
            node_id: id.into(),
            ..Default::default()
        };
        let old = [peer("9")];
        let new = [peer("9"), peer("10")];
        let (set, removed) =
            diff_keyed(&old, &new, peer_cmp, |p| p.node_id.clone()).expect("in order");
        assert_eq!(set, [peer("10")]);
        assert!(removed.is_empty());
    }
}
