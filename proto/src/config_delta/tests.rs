use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::v1::{
    NameRecord, PortDelta, PortKey, RemoteEndpoint, ServiceDelta, TaskConfig, WireguardConfig,
};

/// Some of `0..n`, each with probability `p`.
fn some(rng: &mut StdRng, n: u32, p: f64) -> Vec<u32> {
    (0..n).filter(|_| rng.gen_bool(p)).collect()
}

/// A config drawn from a small universe (so that two draws overlap):
/// networks n0..n3, tasks t0..t7, endpoints, services, names, peers,
/// published ports.
fn config(rng: &mut StdRng, version: u64) -> NodeConfig {
    let mut networks = Vec::new();
    for i in some(rng, 4, 0.7) {
        let mut remote = Vec::new();
        for t in some(rng, 12, 0.5) {
            remote.push(RemoteEndpoint {
                ip6: String::new(),
                task_id: format!("r{t}"),
                ip: format!("10.0.{i}.{t}"),
                mac: format!("02:42:0a:00:0{i}:{t:02x}"),
                vtep: format!("198.18.0.{}", rng.gen_range(1..4)),
            });
        }
        let mut services = Vec::new();
        for s in some(rng, 3, 0.6) {
            let vip = if rng.gen_bool(0.8) {
                format!("10.0.{i}.{}", 200 + s)
            } else {
                String::new()
            };
            // Both families, and now and then text that is no address,
            // which sorts after them.
            let backends = some(rng, 20, 0.4)
                .iter()
                .map(|b| match b % 7 {
                    0 => format!("fd00::{i}:{b:x}"),
                    6 => format!("backend-{b}"),
                    _ => format!("10.0.{i}.{b}"),
                })
                .collect();
            services.push(ServiceEndpoint {
                vip6: String::new(),
                name: format!("svc{s}"),
                vip,
                backends,
            });
        }
        // Some names with an address of each family.
        let names = some(rng, 10, 0.5)
            .iter()
            .flat_map(|t| {
                let v4 = NameRecord {
                    name: format!("task{t}"),
                    ip: format!("10.0.{i}.{t}"),
                };
                let v6 = NameRecord {
                    ip: format!("fd00::{i}:{t:x}"),
                    ..v4.clone()
                };
                if t % 3 == 0 { vec![v4, v6] } else { vec![v4] }
            })
            .collect();
        networks.push(NetworkConfig {
            id: format!("n{i}"),
            name: format!("net{i}"),
            vni: 4096 + i,
            mtu: if rng.gen_bool(0.9) { 1450 } else { 1400 },
            remote,
            services,
            names,
            ..Default::default()
        });
    }
    let mut tasks = Vec::new();
    for t in some(rng, 8, 0.5) {
        tasks.push(TaskConfig {
            id: format!("t{t}"),
            name: format!("task{t}"),
            command: vec!["sleep".into(), format!("{}", rng.gen_range(1..3))],
            ..Default::default()
        });
    }
    let wireguard = if rng.gen_bool(0.6) {
        let mut peers = Vec::new();
        for n in some(rng, 15, 0.5) {
            peers.push(WgPeerConfig {
                node_id: n.to_string(),
                public_key: format!("key{n}-{}", rng.gen_range(0..2)),
                endpoint: format!("198.18.0.{n}:51820"),
                tunnel_ip: format!("100.64.0.{n}"),
            });
        }
        Some(WireguardConfig {
            listen_port: 51820,
            tunnel_addr: "100.64.0.1/10".into(),
            mtu: 1420,
            key_generation: rng.gen_range(0..2),
            peers,
        })
    } else {
        None
    };
    let vxlan_allowed_sources = some(rng, 30, 0.8)
        .iter()
        .map(|n| format!("198.18.0.{n}"))
        .collect();
    let mut ports = Vec::new();
    for p in some(rng, 5, 0.6) {
        ports.push(PublishedPortConfig {
            protocol: if p % 2 == 0 { "tcp" } else { "udp" }.into(),
            port: 8000 + p,
            target_port: 80 + u32::from(rng.gen_bool(0.1)),
            local: (some(rng, 3, 0.3).iter())
                .map(|l| format!("172.18.0.{l}"))
                .collect(),
            remote: (some(rng, 12, 0.6).iter())
                .map(|r| format!("10.255.0.{r}"))
                .collect(),
            owner: format!("service s{p}"),
        });
    }
    let mut c = NodeConfig {
        version,
        vtep: "198.18.0.1".into(),
        vxlan_port: 4789,
        gateway_subnet: "172.18.0.0/16".into(),
        networks,
        tasks,
        wireguard,
        vxlan_allowed_sources,
        wg_key_generation: rng.gen_range(0..2),
        ports,
        ..Default::default()
    };
    canonicalize(&mut c);
    c
}

#[test]
fn a_delta_makes_the_new_config_of_the_old_one() {
    let mut rng = StdRng::seed_from_u64(16);
    for round in 0..2000 {
        let old = config(&mut rng, 10 + round);
        let new = config(&mut rng, 11 + round);
        let d = diff(&old, &new).expect("canonical configs");
        assert_eq!(apply(&old, &d).as_ref(), Ok(&new), "round {round}: {d:?}");
        // From nothing (version 0) it is the whole config.
        let empty = NodeConfig::default();
        let whole = diff(&empty, &new).expect("canonical configs");
        assert_eq!(apply(&empty, &whole).as_ref(), Ok(&new));
    }
}

/// `v` with two items swapped, one repeated, or one repeated with other
/// contents; `false` when it has fewer than two items.
fn spoil<T: Clone + Other>(rng: &mut StdRng, v: &mut Vec<T>) -> bool {
    if v.len() < 2 {
        return false;
    }
    let i = rng.gen_range(0..v.len() - 1);
    match rng.gen_range(0..3) {
        0 => v.swap(i, i + 1),
        1 => {
            let again = v[i].clone();
            v.insert(i, again);
        }
        _ => {
            let other = v[i].other();
            v.insert(i + 1, other);
        }
    }
    true
}

/// A config with one of its set-like lists spoilt: two items swapped, one
/// repeated, or (for keyed lists) one repeated with other contents, where
/// it has any (`None`: it has none).
fn spoilt(rng: &mut StdRng, c: &NodeConfig) -> Option<NodeConfig> {
    let mut c = c.clone();
    let n = c.networks.len();
    let which = rng.gen_range(0..n.max(1));
    let done = match rng.gen_range(0..10) {
        0 => spoil(rng, &mut c.networks),
        1 => spoil(rng, &mut c.tasks),
        2 => spoil(rng, &mut c.vxlan_allowed_sources),
        3 => c
            .wireguard
            .as_mut()
            .is_some_and(|w| spoil(rng, &mut w.peers)),
        4 if n > 0 => spoil(rng, &mut c.networks[which].remote),
        5 if n > 0 => spoil(rng, &mut c.networks[which].names),
        6 if n > 0 => spoil(rng, &mut c.networks[which].services),
        7 if n > 0 => {
            let net = &mut c.networks[which];
            let k = net.services.len();
            let svc = rng.gen_range(0..k.max(1));
            k > 0 && spoil(rng, &mut net.services[svc].backends)
        }
        8 => spoil(rng, &mut c.ports),
        9 => {
            let k = c.ports.len();
            let p = rng.gen_range(0..k.max(1));
            k > 0 && spoil(rng, &mut c.ports[p].remote)
        }
        _ => false,
    };
    done.then_some(c)
}

#[test]
fn a_delta_is_made_only_when_it_makes_the_new_config_exactly() {
    let mut rng = StdRng::seed_from_u64(1616);
    let mut refused = 0;
    for round in 0..4000 {
        let old = config(&mut rng, 10 + round);
        let new = config(&mut rng, 11 + round);
        let (old, new) = match rng.gen_range(0..3) {
            0 => (spoilt(&mut rng, &old).unwrap_or(old), new),
            1 => {
                let spoilt = spoilt(&mut rng, &new);
                (old, spoilt.unwrap_or(new))
            }
            _ => (old, new),
        };
        // Whatever the lists, a delta made is exact...
        if let Some(d) = diff(&old, &new) {
            assert_eq!(apply(&old, &d).as_ref(), Ok(&new), "round {round}: {d:?}");
        } else {
            refused += 1;
            // ...and one refused is one whose new config a delta could not
            // make again, or whose old one it would not start from.
            let mut canonical_new = new.clone();
            canonicalize(&mut canonical_new);
            let mut canonical_old = old.clone();
            canonicalize(&mut canonical_old);
            assert!(
                canonical_new != new
                    || canonical_old != old
                    || has_repeats(&old)
                    || has_repeats(&new),
                "round {round}: a canonical pair was refused"
            );
        }
    }
    assert!(refused > 100, "the spoilt configs were refused ({refused})");
}

/// Whether a set-like list of `c` has an item twice (by its key).
fn has_repeats(c: &NodeConfig) -> bool {
    fn twice<T, K: Ord>(v: &[T], key: impl Fn(&T) -> K) -> bool {
        let mut keys: Vec<K> = v.iter().map(key).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        keys.len() != n
    }
    twice(&c.networks, |n| n.id.clone())
        || twice(&c.tasks, |t| t.id.clone())
        || twice(&c.vxlan_allowed_sources, Clone::clone)
        || c.wireguard
            .as_ref()
            .is_some_and(|w| twice(&w.peers, |p| p.node_id.clone()))
        || twice(&c.ports, |p| (p.protocol.clone(), p.port))
        || (c.ports.iter()).any(|p| twice(&p.local, Clone::clone) || twice(&p.remote, Clone::clone))
        || c.networks.iter().any(|n| {
            twice(&n.remote, |r| r.task_id.clone())
                || twice(&n.services, |s| s.name.clone())
                || twice(&n.names, |r| (r.name.clone(), r.ip.clone()))
                || n.services.iter().any(|s| twice(&s.backends, Clone::clone))
        })
}

/// The same item (by its key) with other contents; items that are their
/// own key are repeated as they are.
trait Other {
    fn other(&self) -> Self;
}

impl Other for String {
    fn other(&self) -> Self {
        self.clone()
    }
}

impl Other for NameRecord {
    fn other(&self) -> Self {
        self.clone()
    }
}

impl Other for NetworkConfig {
    fn other(&self) -> Self {
        NetworkConfig {
            mtu: self.mtu + 1,
            ..self.clone()
        }
    }
}

impl Other for TaskConfig {
    fn other(&self) -> Self {
        TaskConfig {
            command: vec!["other".into()],
            ..self.clone()
        }
    }
}

impl Other for WgPeerConfig {
    fn other(&self) -> Self {
        WgPeerConfig {
            public_key: "other".into(),
            ..self.clone()
        }
    }
}

impl Other for RemoteEndpoint {
    fn other(&self) -> Self {
        RemoteEndpoint {
            ip: "10.99.99.99".into(),
            ..self.clone()
        }
    }
}

impl Other for PublishedPortConfig {
    fn other(&self) -> Self {
        PublishedPortConfig {
            target_port: self.target_port + 1,
            ..self.clone()
        }
    }
}

impl Other for ServiceEndpoint {
    fn other(&self) -> Self {
        ServiceEndpoint {
            vip: "10.99.99.98".into(),
            ..self.clone()
        }
    }
}

#[test]
fn a_small_change_is_a_small_delta() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut old = config(&mut rng, 5);
    while old.networks.is_empty() {
        old = config(&mut rng, 5);
    }
    let mut new = old.clone();
    new.version = 6;
    new.networks[0].remote.push(RemoteEndpoint {
        ip6: String::new(),
        task_id: "zz".into(),
        ip: "10.9.9.9".into(),
        mac: "02:42:0a:09:09:09".into(),
        vtep: "198.18.0.9".into(),
    });
    canonicalize(&mut new);
    let d = diff(&old, &new).expect("canonical configs");
    assert!(d.networks_set.is_empty() && d.tasks_set.is_empty() && d.wg_peers_set.is_empty());
    assert_eq!(d.networks_changed.len(), 1);
    assert_eq!(d.networks_changed[0].remote_set.len(), 1);
    assert!(prost::Message::encoded_len(&d) < prost::Message::encoded_len(&new) / 2);
    assert_eq!(apply(&old, &d), Ok(new));
}

#[test]
fn a_delta_on_another_base_or_network_is_refused() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut old = config(&mut rng, 5);
    while old.networks.is_empty() {
        old = config(&mut rng, 5);
    }
    let mut new = old.clone();
    new.version = 6;
    new.networks[0].names.push(NameRecord {
        name: "zz".into(),
        ip: "10.9.9.9".into(),
    });
    canonicalize(&mut new);
    let d = diff(&old, &new).expect("canonical configs");
    let mut other = old.clone();
    other.version = 4;
    assert_eq!(
        apply(&other, &d),
        Err(DeltaError::Base { base: 5, held: 4 })
    );
    let mut without = old.clone();
    without.networks.remove(0);
    assert!(matches!(
        apply(&without, &d),
        Err(DeltaError::UnknownNetwork(_))
    ));
    let headless = NodeConfigDelta {
        base_version: 5,
        ..Default::default()
    };
    assert_eq!(apply(&old, &headless), Err(DeltaError::NoHead));
    // A port changed that the node does not hold.
    let port = PublishedPortConfig {
        protocol: "tcp".into(),
        port: 9999,
        ..Default::default()
    };
    let unknown_port = NodeConfigDelta {
        base_version: 5,
        head: Some(NodeConfig {
            version: 6,
            ..Default::default()
        }),
        ports_as_changes: true,
        ports_changed: vec![PortDelta {
            head: Some(port.clone()),
            remote_added: vec!["10.255.0.1".into()],
            remote_removed: Vec::new(),
        }],
        ..Default::default()
    };
    assert_eq!(
        apply(&old, &unknown_port),
        Err(DeltaError::UnknownPort("tcp/9999".into()))
    );
    // The same change with the port set in the same delta is applied.
    let set_then_changed = NodeConfigDelta {
        ports_set: vec![port],
        ..unknown_port.clone()
    };
    let c = apply(&old, &set_then_changed).expect("a port set, then changed");
    assert!(
        c.ports
            .iter()
            .any(|p| p.port == 9999 && p.remote == ["10.255.0.1"])
    );
    // In place, a refused delta leaves the held config as it was.
    for (held, delta) in [
        (&other, &d),
        (&without, &d),
        (&old, &headless),
        (&old, &unknown_port),
    ] {
        let mut c = held.clone();
        assert!(apply_in_place(&mut c, delta).is_err());
        assert_eq!(&c, held);
    }
}

/// A held config that is not in canonical order (a node cannot hold one,
/// but the delta is peer input all the same) comes out canonical, one item
/// per key, the last of a key kept, as from a map.
#[test]
fn a_delta_on_a_held_config_out_of_order_keeps_the_last_of_each_key() {
    let task = |id: &str, name: &str| TaskConfig {
        id: id.into(),
        name: name.into(),
        ..Default::default()
    };
    let held = NodeConfig {
        version: 1,
        tasks: vec![task("b", "first b"), task("a", "a"), task("b", "last b")],
        vxlan_allowed_sources: vec![
            "198.18.0.3".into(),
            "198.18.0.1".into(),
            "198.18.0.3".into(),
        ],
        ..Default::default()
    };
    let delta = NodeConfigDelta {
        base_version: 1,
        head: Some(NodeConfig {
            version: 2,
            ..Default::default()
        }),
        tasks_set: vec![task("c", "c")],
        sources_added: vec!["198.18.0.2".into()],
        ..Default::default()
    };
    let c = apply(&held, &delta).expect("a delta on its base");
    let names: Vec<&str> = c.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "last b", "c"]);
    assert_eq!(
        c.vxlan_allowed_sources,
        ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    );
}

/// One remote backend of a published port gone: the delta carries that
/// address and the port's own fields, not its other backends; an older
/// node gets the ports whole in the head, and makes the same config.
#[test]
fn a_port_s_backend_changed_is_sent_as_a_change() {
    let port = |remote: std::ops::Range<u32>| PublishedPortConfig {
        protocol: "tcp".into(),
        port: 8080,
        target_port: 80,
        local: Vec::new(),
        remote: remote
            .map(|i| format!("10.255.{}.{}", i / 256, i % 256))
            .collect(),
        owner: "service web".into(),
    };
    let mut old = NodeConfig {
        version: 1,
        ports: vec![port(0..500)],
        ..Default::default()
    };
    canonicalize(&mut old);
    let mut new = NodeConfig {
        version: 2,
        ports: vec![port(1..500)],
        ..Default::default()
    };
    canonicalize(&mut new);
    let d = diff(&old, &new).expect("canonical configs");
    assert!(d.ports_as_changes && d.ports_set.is_empty() && d.ports_removed.is_empty());
    assert_eq!(d.ports_changed.len(), 1);
    assert_eq!(d.ports_changed[0].remote_removed, ["10.255.0.0"]);
    assert!(d.ports_changed[0].remote_added.is_empty());
    assert!(prost::Message::encoded_len(&d) < 100, "{d:?}");
    assert_eq!(apply(&old, &d).as_ref(), Ok(&new));

    let older = with_ports_whole(d, new.ports.clone());
    assert!(!older.ports_as_changes && older.ports_changed.is_empty());
    assert_eq!(apply(&old, &older), Ok(new));
}

#[test]
fn backends_are_in_numeric_order() {
    let mut c = NodeConfig {
        networks: vec![NetworkConfig {
            services: vec![ServiceEndpoint {
                backends: vec!["10.0.0.10".into(), "10.0.0.9".into(), "10.0.0.100".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    canonicalize(&mut c);
    assert_eq!(
        c.networks[0].services[0].backends,
        ["10.0.0.9", "10.0.0.10", "10.0.0.100"]
    );
}

#[test]
fn kept_sources_are_the_ones_held() {
    let held = NodeConfig {
        vxlan_allowed_sources: vec!["198.18.0.1".into(), "198.18.0.2".into()],
        ..Default::default()
    };
    let a = sources_digest(&held.vxlan_allowed_sources);
    assert_eq!(a.len(), 32);
    assert_ne!(a, sources_digest(&["198.18.0.1".into()]));
    // Not one address split in two.
    assert_ne!(
        sources_digest(&["1.2.3.4".into(), "5".into()]),
        sources_digest(&["1.2.3.45".into()])
    );
    let whole = NodeConfig {
        version: 9,
        keep_sources: true,
        ..Default::default()
    };
    let got = with_kept_sources(whole, Some(&held));
    assert_eq!(got.vxlan_allowed_sources, held.vxlan_allowed_sources);
    assert!(!got.keep_sources);
    let plain = NodeConfig {
        version: 9,
        ..Default::default()
    };
    assert!(
        with_kept_sources(plain, Some(&held))
            .vxlan_allowed_sources
            .is_empty()
    );
}

#[test]
fn sources_in_parts_make_the_config_again() {
    let sources: Vec<String> = (0..5000)
        .map(|i| format!("198.18.{}.{}", i / 250, i % 250))
        .collect();
    let mut whole = NodeConfig {
        version: 7,
        vtep: "198.18.0.1".into(),
        vxlan_allowed_sources: sources.clone(),
        ..Default::default()
    };
    canonicalize(&mut whole);
    let expected = whole.clone();
    let parts = split_sources(&mut whole, SOURCES_PART_BYTES);
    assert!(parts.len() > 5, "{} parts", parts.len());
    assert!(whole.sources_follow);
    // Each message stays under the budget.
    for p in &parts {
        assert!(prost::Message::encoded_len(p) <= SOURCES_PART_BYTES + 64);
    }
    assert!(prost::Message::encoded_len(&whole) <= SOURCES_PART_BYTES + 64);
    assert!(parts.last().is_some_and(|p| !p.more));
    assert!(parts[..parts.len() - 1].iter().all(|p| p.more));

    let mut node = SourceParts::default();
    assert_eq!(node.config(whole), Ok(None));
    assert!(node.waiting());
    let mut done = None;
    for p in parts {
        assert!(done.is_none(), "complete before the last part");
        done = node.part(p).expect("in order");
    }
    assert_eq!(done, Some(expected));
    assert!(!node.waiting());
}

#[test]
fn a_short_list_is_not_cut_and_parts_out_of_order_are_refused() {
    let mut small = NodeConfig {
        version: 3,
        vxlan_allowed_sources: vec!["198.18.0.1".into(), "198.18.0.2".into()],
        ..Default::default()
    };
    assert!(split_sources(&mut small, SOURCES_PART_BYTES).is_empty());
    assert!(!small.sources_follow);
    let mut node = SourceParts::default();
    assert_eq!(node.config(small.clone()), Ok(Some(small.clone())));
    // A part with no config waiting for it.
    assert_eq!(
        node.part(SourcesPart {
            sources: vec!["198.18.0.3".into()],
            more: false
        }),
        Err(DeltaError::Parts)
    );
    // A config while another waits.
    let mut first = small.clone();
    first.sources_follow = true;
    assert_eq!(node.config(first), Ok(None));
    assert_eq!(node.config(small), Err(DeltaError::Parts));
    // A runaway list.
    let mut node = SourceParts::default();
    let waiting = NodeConfig {
        sources_follow: true,
        ..Default::default()
    };
    assert_eq!(node.config(waiting), Ok(None));
    let huge = SourcesPart {
        sources: vec![String::new(); MAX_SOURCES + 1],
        more: true,
    };
    assert_eq!(node.part(huge), Err(DeltaError::TooManySources));
    assert!(!node.waiting());
    // Few addresses, but too many bytes.
    let waiting = NodeConfig {
        sources_follow: true,
        ..Default::default()
    };
    assert_eq!(node.config(waiting), Ok(None));
    let long = SourcesPart {
        sources: vec!["x".repeat(MAX_SOURCES_BYTES / 2 + 1); 2],
        more: true,
    };
    assert_eq!(node.part(long), Err(DeltaError::TooManySources));
}

/// The maps `apply` was made of before it worked in place (1db32fc), as
/// the reference its results are held to.
mod reference {
    use std::collections::{BTreeMap, BTreeSet};

    use super::super::{DeltaError, canonicalize};
    use crate::v1::{
        NameRecord, NetworkConfig, NetworkDelta, NodeConfig, NodeConfigDelta, PublishedPortConfig,
        ServiceEndpoint,
    };

    pub fn reference_apply(
        held: &NodeConfig,
        delta: &NodeConfigDelta,
    ) -> Result<NodeConfig, DeltaError> {
        if held.version != delta.base_version {
            return Err(DeltaError::Base {
                base: delta.base_version,
                held: held.version,
            });
        }
        let mut c = delta.head.clone().ok_or(DeltaError::NoHead)?;

        let mut nets: BTreeMap<String, NetworkConfig> = held
            .networks
            .iter()
            .map(|n| (n.id.clone(), n.clone()))
            .collect();
        for id in &delta.networks_removed {
            nets.remove(id);
        }
        for n in &delta.networks_set {
            nets.insert(n.id.clone(), n.clone());
        }
        for nd in &delta.networks_changed {
            let n = nets
                .get_mut(&nd.id)
                .ok_or_else(|| DeltaError::UnknownNetwork(nd.id.clone()))?;
            reference_apply_network(n, nd);
        }
        c.networks = nets.into_values().collect();

        c.tasks = reference_keyed(&held.tasks, &delta.tasks_set, &delta.tasks_removed, |t| {
            t.id.clone()
        });
        if let Some(wg) = &mut c.wireguard {
            let no_peers = Vec::new();
            let held_peers = held.wireguard.as_ref().map_or(&no_peers, |w| &w.peers);
            wg.peers = reference_keyed(
                held_peers,
                &delta.wg_peers_set,
                &delta.wg_peers_removed,
                |p| p.node_id.clone(),
            );
        }
        c.vxlan_allowed_sources = reference_set(
            &held.vxlan_allowed_sources,
            &delta.sources_added,
            &delta.sources_removed,
        );
        if delta.ports_as_changes {
            c.ports = reference_ports(&held.ports, delta)?;
        }
        canonicalize(&mut c);
        Ok(c)
    }

    /// Ports by key in a map (not the maps of 1db32fc: ports came whole
    /// then).
    fn reference_ports(
        held: &[PublishedPortConfig],
        delta: &NodeConfigDelta,
    ) -> Result<Vec<PublishedPortConfig>, DeltaError> {
        let key = |p: &PublishedPortConfig| (p.protocol.clone(), p.port);
        let mut m: BTreeMap<(String, u32), PublishedPortConfig> =
            held.iter().map(|p| (key(p), p.clone())).collect();
        for k in &delta.ports_removed {
            m.remove(&(k.protocol.clone(), k.port));
        }
        for p in &delta.ports_set {
            m.insert(key(p), p.clone());
        }
        for pd in &delta.ports_changed {
            let h = pd.head.as_ref().ok_or(DeltaError::NoHead)?;
            let p = (m.get_mut(&key(h)))
                .ok_or_else(|| DeltaError::UnknownPort(format!("{}/{}", h.protocol, h.port)))?;
            let remote = reference_set(&p.remote, &pd.remote_added, &pd.remote_removed);
            *p = PublishedPortConfig {
                remote,
                ..h.clone()
            };
        }
        Ok(m.into_values().collect())
    }

    fn reference_apply_network(n: &mut NetworkConfig, d: &NetworkDelta) {
        n.remote = reference_keyed(&n.remote, &d.remote_set, &d.remote_removed, |r| {
            r.task_id.clone()
        });
        let mut svcs: BTreeMap<String, ServiceEndpoint> = std::mem::take(&mut n.services)
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        for name in &d.services_removed {
            svcs.remove(name);
        }
        for sd in &d.services_changed {
            let s = svcs.entry(sd.name.clone()).or_default();
            s.name = sd.name.clone();
            s.vip = sd.vip.clone();
            s.vip6 = sd.vip6.clone();
            s.backends = reference_set(&s.backends, &sd.backends_added, &sd.backends_removed);
        }
        n.services = svcs.into_values().collect();
        n.names = records(reference_set(
            &name_keys(&n.names),
            &name_keys(&d.names_added),
            &name_keys(&d.names_removed),
        ));
    }

    /// Name records as ordered pairs (prost's types have no order).
    fn name_keys(v: &[NameRecord]) -> Vec<(String, String)> {
        v.iter().map(|r| (r.name.clone(), r.ip.clone())).collect()
    }

    fn records(v: Vec<(String, String)>) -> Vec<NameRecord> {
        v.into_iter()
            .map(|(name, ip)| NameRecord { name, ip })
            .collect()
    }

    fn reference_keyed<T: Clone>(
        held: &[T],
        set: &[T],
        removed: &[String],
        key: impl Fn(&T) -> String,
    ) -> Vec<T> {
        let mut m: BTreeMap<String, T> = held.iter().map(|t| (key(t), t.clone())).collect();
        for k in removed {
            m.remove(k);
        }
        for t in set {
            m.insert(key(t), t.clone());
        }
        m.into_values().collect()
    }

    fn reference_set<T: Clone + Ord>(held: &[T], added: &[T], removed: &[T]) -> Vec<T> {
        let mut s: BTreeSet<T> = held.iter().cloned().collect();
        for t in removed {
            s.remove(t);
        }
        s.extend(added.iter().cloned());
        s.into_iter().collect()
    }
}

/// On held configs in order or spoilt, and deltas with lists spoilt, keys
/// both removed and set, changes to services not held or removed in the
/// same delta, and backends that are no address, `apply` gives what the
/// maps gave, refusals included.
#[test]
fn apply_gives_what_the_maps_gave_on_any_input() {
    let mut rng = StdRng::seed_from_u64(1717);
    for round in 0..3000 {
        let old = config(&mut rng, 10 + round);
        let new = config(&mut rng, 11 + round);
        let mut d = diff(&old, &new).expect("canonical configs");
        let held = if rng.gen_bool(0.3) {
            spoilt(&mut rng, &old).unwrap_or(old)
        } else {
            old
        };
        for _ in 0..rng.gen_range(1..4) {
            match rng.gen_range(0..12) {
                0 => _ = spoil(&mut rng, &mut d.tasks_set),
                1 => _ = spoil(&mut rng, &mut d.networks_set),
                2 => _ = spoil(&mut rng, &mut d.sources_added),
                3 => _ = spoil(&mut rng, &mut d.wg_peers_set),
                4 => {
                    if let Some(t) = d.tasks_set.first() {
                        d.tasks_removed.push(t.id.clone());
                    }
                }
                5 => {
                    if let Some(n) = d.networks_set.first() {
                        d.networks_changed.push(NetworkDelta {
                            id: n.id.clone(),
                            names_added: vec![NameRecord {
                                name: "set-then-changed".into(),
                                ip: "10.9.0.1".into(),
                            }],
                            ..Default::default()
                        });
                    }
                }
                6 => {
                    if let Some(nd) = d.networks_changed.first_mut() {
                        _ = spoil(&mut rng, &mut nd.remote_set);
                        _ = spoil(&mut rng, &mut nd.names_added);
                        nd.remote_removed
                            .extend(nd.remote_set.first().map(|r| r.task_id.clone()));
                    }
                }
                7 => {
                    if let Some(nd) = d.networks_changed.first_mut() {
                        let changed = ServiceDelta {
                            name: format!("s{}", rng.gen_range(0..4)),
                            vip: "10.9.0.2".into(),
                            backends_added: vec![
                                "no address".into(),
                                "10.9.0.10".into(),
                                "10.9.0.10".into(),
                                "::1".into(),
                                "10.9.0.9".into(),
                            ],
                            backends_removed: vec!["10.0.0.1".into()],
                            vip6: String::new(),
                        };
                        if rng.gen_bool(0.5) {
                            nd.services_removed.push(changed.name.clone());
                        }
                        nd.services_changed.push(changed.clone());
                        nd.services_changed.push(ServiceDelta {
                            vip: "10.9.0.3".into(),
                            ..changed
                        });
                    }
                }
                8 => _ = spoil(&mut rng, &mut d.ports_set),
                9 => {
                    // A port changed that is not held, set in the same
                    // delta, or removed in it; twice now and then.
                    let p = rng.gen_range(8000..8005);
                    let protocol = if p % 2 == 0 { "tcp" } else { "udp" };
                    let pd = PortDelta {
                        head: Some(PublishedPortConfig {
                            protocol: protocol.into(),
                            port: p,
                            target_port: 81,
                            local: vec!["172.18.0.9".into(), "172.18.0.1".into()],
                            remote: Vec::new(),
                            owner: "changed".into(),
                        }),
                        remote_added: vec!["10.255.0.99".into(), "10.255.0.1".into()],
                        remote_removed: vec!["10.255.0.2".into()],
                    };
                    if rng.gen_bool(0.3) {
                        d.ports_removed.push(PortKey {
                            protocol: protocol.into(),
                            port: p,
                        });
                    }
                    if rng.gen_bool(0.2) {
                        d.ports_changed.push(pd.clone());
                    }
                    d.ports_changed.push(pd);
                }
                10 => {
                    if let Some(pd) = d.ports_changed.first_mut() {
                        if rng.gen_bool(0.3) {
                            pd.head = None;
                        }
                        _ = spoil(&mut rng, &mut pd.remote_added);
                    }
                }
                _ => {
                    if let Some(nd) = d.networks_changed.first_mut() {
                        nd.names_removed.extend(nd.names_added.first().cloned());
                    }
                }
            }
        }
        assert_eq!(
            apply(&held, &d),
            reference::reference_apply(&held, &d),
            "round {round}: {d:?}"
        );
    }
}
