//! The fake's kernel simulation (`weft_overlay::fake::simulate`, what
//! `FakeDataplane` and the planner's own tests run on) checked against the
//! real executor: for a sequence of desired states on one node (networks,
//! tasks with and without the gateway, remote endpoints, a service VIP and
//! names, a dual-stack network, IPv6 egress, removals, everything gone),
//! the real data plane plans and applies
//! each step; the same ops applied by the simulator to what was observed
//! before must give what the kernel shows after.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde_json::Value;
use weft_overlay::fake::simulate;
use weft_overlay::linux::{LinuxDataplane, Underlay};
use weft_overlay::model::{IngressEndpoint, Proto, PublishedPort, ServiceEntry, WgConfig, WgPeer};
use weft_overlay::plan::ObservedKind;
use weft_overlay::wg::keys;
use weft_overlay::{Dataplane, DesiredNode, GatewayBridge, Observed};

use crate::common::{RunDir, require_root};
use crate::dataplane::{desired, mac, overlay, remote};

/// What a simulation cannot know and the comparison leaves out: interface
/// indexes (kernel-chosen and per namespace; a veth's peer index is kept as
/// "has a peer"), what the kernel makes on its own (IPv6 link-local
/// addresses and their `fe80::/64` routes, neighbour entries it learnt,
/// bridges' MACs, which follow their ports),
/// MACs the simulator invents for links weft does not give one (the kernel
/// picks its own), and the key file the executor reads before planning.
fn comparable(o: &Observed, sim: &Observed) -> Value {
    let mut o = o.clone();
    o.wg_key = None;
    o.host_routes.retain(|r| !is_link_local(r.dest.ip()));
    // The kernel lists routes in its own order.
    o.host_routes
        .sort_by_key(|r| (r.dest.to_string(), r.dev.clone()));
    let nss = std::iter::once((&mut o.host, Some(&sim.host)))
        .chain(
            o.networks
                .iter_mut()
                .map(|(id, ns)| (ns, sim.networks.get(id))),
        )
        .chain(o.tasks.iter_mut().map(|(id, ns)| (ns, sim.tasks.get(id))));
    for (ns, sim_ns) in nss {
        for (name, l) in ns.links.iter_mut() {
            l.index = 0;
            l.peer_index = l.peer_index.map(|_| 0);
            l.addrs.retain(|a| !is_link_local(a.ip()));
            let sim_mac = sim_ns.and_then(|s| s.links.get(name)).and_then(|s| s.mac);
            // A bridge takes a MAC of one of its ports, and changes it as
            // ports come and go.
            if l.kind == ObservedKind::Bridge || sim_mac.is_none_or(|m| m.0[..2] == [0x06, 0xfa]) {
                l.mac = None;
            }
        }
        ns.fdb.retain(|_, e| !e.is_empty());
        for entries in ns.neighs.values_mut() {
            entries.retain(|_, n| n.permanent);
        }
        ns.neighs.retain(|_, e| !e.is_empty());
    }
    serde_json::to_value(&o).expect("observed state as JSON")
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// The paths where `a` and `b` differ, with both values.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(&format!("{path}.{k}"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!("{path}: simulated {a}, kernel {b}")),
        _ => {}
    }
}

/// The desired states the test goes through on the node at `v1` (`v2` and
/// `v3`: other hosts; key files go under `dir`), each with its name.
fn steps(dir: &Path, v1: IpAddr, v2: IpAddr, v3: IpAddr) -> Vec<(&'static str, DesiredNode)> {
    let (first, _) = desired(v1, v2);
    // A VIP with a local backend, and the task's name.
    let mut served = first.clone();
    let n1 = served.networks.get_mut(&"n1".into()).unwrap();
    n1.services.insert(
        "web".into(),
        ServiceEntry {
            vip6: None,
            vip: Some("10.20.0.100".parse().unwrap()),
            backends: vec!["10.20.0.2".parse().unwrap(), "10.20.0.3".parse().unwrap()],
        },
    );
    n1.names
        .insert("web.1".into(), vec!["10.20.0.2".parse().unwrap()]);
    // n1 dual-stack from here on: the IPv6 gateway on br0, task a's IPv6
    // address, remote b's IPv6 neighbour entry, an IPv6 VIP.
    n1.subnet6 = Some((
        "fd00:20::/64".parse().unwrap(),
        "fd00:20::1".parse().unwrap(),
    ));
    n1.remote.get_mut(&"b".into()).unwrap().ip6 = Some("fd00:20::3".parse().unwrap());
    let web = n1.services.get_mut("web").unwrap();
    web.vip6 = Some("fd00:20::100".parse().unwrap());
    web.backends.push("fd00:20::3".parse().unwrap());
    served.tasks.get_mut(&"a".into()).unwrap().endpoints[0].ip6 =
        Some("fd00:20::2/64".parse().unwrap());
    // Encrypted (a userspace WireGuard device with a peer), the underlay
    // guard, a port published to the local task and to a remote one over
    // an ingress network.
    let key = dir.join("wg.key");
    keys::write_private_key(&key, &keys::generate()).unwrap();
    let mut sealed = served.clone();
    let mut peers = BTreeMap::new();
    peers.insert(
        "node2".to_owned(),
        WgPeer {
            public_key: keys::generate().public_key(),
            endpoint: SocketAddr::new(v2, 51899),
            tunnel_ip: "100.99.0.2".parse().unwrap(),
        },
    );
    sealed.wireguard = Some(WgConfig {
        listen_port: 51899,
        private_key_path: key,
        tunnel_addr: "100.99.0.1/24".parse().unwrap(),
        mtu: 1420,
        keepalive: 25,
        networks: BTreeSet::from(["n1".into()]),
        peers,
    });
    sealed.vxlan_allowed_sources = Some(BTreeSet::from([v1, v2]));
    // IPv6 egress for task a: IPv6 on the gateway bridge, NAT66 and IPv6
    // forwarding.
    sealed.gateway = sealed.gateway.take().map(GatewayBridge::with_ipv6);
    let gw = sealed
        .tasks
        .get_mut(&"a".into())
        .unwrap()
        .gateway
        .as_mut()
        .unwrap();
    gw.ip6 = GatewayBridge::ipv6_of(gw.ip);
    let mut ingress = overlay(4545, false);
    ingress.subnet = "10.255.0.0/24".parse().unwrap();
    ingress.gateway = "10.255.0.1".parse().unwrap();
    sealed.networks.insert("ingress".into(), ingress);
    sealed.ingress = Some(IngressEndpoint {
        ip6: None,
        network: "ingress".into(),
        ip: "10.255.0.9/24".parse().unwrap(),
        mac: mac(9),
    });
    sealed.ports = vec![PublishedPort {
        proto: Proto::Tcp,
        port: 8080,
        target_port: 80,
        local: vec!["172.18.0.2".parse().unwrap()],
        remote: vec!["10.255.0.7".parse().unwrap()],
        owner: "service web".into(),
    }];
    // Changes in place: n1's MTU, task a's address, b gone from n1, the
    // VIP gone, a new WireGuard key and no peer.
    let mut changed = sealed.clone();
    let n1 = changed.networks.get_mut(&"n1".into()).unwrap();
    n1.mtu = 1400;
    n1.remote.remove(&"b".into());
    n1.services.clear();
    changed.tasks.get_mut(&"a".into()).unwrap().endpoints[0].ip = "10.20.0.12/24".parse().unwrap();
    let rekeyed = dir.join("wg2.key");
    keys::write_private_key(&rekeyed, &keys::generate()).unwrap();
    let wg = changed.wireguard.as_mut().unwrap();
    wg.private_key_path = rekeyed;
    wg.peers.clear();
    // Task d and its internal network go; b moves to another host; the
    // encryption, ingress and port go too.
    let mut shrunk = served.clone();
    shrunk.tasks.remove(&"d".into());
    shrunk.networks.remove(&"n2".into());
    shrunk
        .networks
        .get_mut(&"n1".into())
        .unwrap()
        .remote
        .insert("b".into(), remote("10.20.0.3", 3, v3));
    vec![
        ("first", first),
        ("a VIP and names", served),
        ("encryption, guard and ports", sealed),
        ("changes in place", changed),
        ("removals and a move", shrunk),
        ("nothing", DesiredNode::new(v1)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_agrees_with_the_kernel() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "fa",
        "198.18.44.0/24".parse().unwrap(),
        &["h1", "h2", "h3"],
    )
    .await
    .unwrap();
    let (v1, v2, v3) = (
        IpAddr::V4(u.host("h1").unwrap().addr()),
        IpAddr::V4(u.host("h2").unwrap().addr()),
        IpAddr::V4(u.host("h3").unwrap().addr()),
    );
    // A new namespace takes IPv4 forwarding from the host's
    // (net.core.devconf_inherit_init_net=0), which another program may
    // have turned on: off here, so that EnableIpv4Forwarding is compared
    // whatever the host's setting.
    u.host("h1")
        .unwrap()
        .netns()
        .run_in(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "0"))
        .unwrap()
        .expect("ip_forward off in h1");
    let dp = LinuxDataplane::new(
        run.path().join("node"),
        u.host("h1").unwrap().netns().clone(),
    );

    let steps = steps(run.path(), v1, v2, v3);

    let mut failures = Vec::new();
    let mut kinds = BTreeSet::new();
    for (what, d) in steps {
        let before = dp.observe().await.unwrap();
        let ops = match dp.apply(&d).await {
            Ok(r) => r.ops,
            Err(e) => panic!("step {what}: apply failed: {e}"),
        };
        assert!(!ops.is_empty(), "step {what}: nothing to do");
        kinds.extend(ops.iter().map(|op| {
            let debug = format!("{op:?}");
            debug[..debug.find([' ', '{', '(']).unwrap_or(debug.len())].to_owned()
        }));
        let after = dp.observe().await.unwrap();
        let mut sim = before;
        // As the executor does before planning: the key file's public key.
        sim.wg_key = d
            .wireguard
            .as_ref()
            .and_then(|w| keys::load_private_key(&w.private_key_path).ok())
            .map(|k| k.public_key());
        for op in &ops {
            simulate(&mut sim, op);
        }
        let mut diff = Vec::new();
        differences(
            "",
            &comparable(&sim, &sim),
            &comparable(&after, &sim),
            &mut diff,
        );
        if !diff.is_empty() {
            failures.push(format!(
                "step {what} ({} ops): {}",
                ops.len(),
                diff.join("; ")
            ));
        }
        // And the simulation, planned again, has nothing left either.
        let again = weft_overlay::plan(&sim, &d).unwrap();
        assert!(
            again.is_empty(),
            "step {what}: the simulation left {again:?}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // 35 of the 37 kinds (not: SetMac, which only repairs drift, and
    // AdoptNetns, for foreign runtimes' namespaces); a change that drops
    // some is seen here.
    let listed = kinds.iter().cloned().collect::<Vec<_>>().join(" ");
    assert!(
        kinds.len() >= 35,
        "only {} op kinds compared: {listed}",
        kinds.len()
    );
    eprintln!("op kinds compared ({}): {listed}", kinds.len());
}
