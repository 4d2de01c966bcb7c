//! Planner tests: exact plans for small cases, ordering rules, validation,
//! and convergence (plan, simulate, plan again: nothing) over many states
//! and transitions, using the fake's kernel simulator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::*;
use crate::fake::simulate;
use crate::mac::MacAddr;
use crate::model::names::{self, GATEWAY_BRIDGE, INGRESS_IF, NETWORK_BRIDGE};
use crate::model::{
    DesiredNode, EndpointId, GatewayBridge, GwAttachment, IngressEndpoint, LocalEndpoint,
    NetworkId, OverlayNet, Proto, PublishedPort, RemoteEndpoint, ServiceEntry, TaskId, TaskNet,
};

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 10, 0, 0, i])
}

fn net(vni: u32, third: u8, internal: bool) -> OverlayNet {
    OverlayNet {
        subnet6: None,
        local: false,
        vni,
        subnet: format!("10.0.{third}.0/24").parse().unwrap(),
        gateway: format!("10.0.{third}.1").parse().unwrap(),
        mtu: 1450,
        internal,
        remote: BTreeMap::new(),
        name: String::new(),
        services: BTreeMap::new(),
        names: BTreeMap::new(),
    }
}

fn remote(ip: &str, m: u8, vtep: &str) -> RemoteEndpoint {
    RemoteEndpoint {
        ip6: None,
        ip: ip.parse().unwrap(),
        mac: mac(m),
        vtep: vtep.parse().unwrap(),
    }
}

fn ep(network: &str, ifname: &str, ip: &str, m: u8) -> LocalEndpoint {
    LocalEndpoint {
        ip6: None,
        network: network.into(),
        ifname: ifname.into(),
        ip: ip.parse().unwrap(),
        mac: mac(m),
    }
}

fn gw_att(ip: &str, m: u8) -> Option<GwAttachment> {
    Some(GwAttachment {
        ip: ip.parse().unwrap(),
        ip6: None,
        mac: mac(m),
    })
}

/// Two networks (n2 internal), two tasks, remotes, a gateway bridge.
fn full() -> DesiredNode {
    let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
    d.gateway = Some(GatewayBridge::default());
    let mut n1 = net(4096, 9, false);
    n1.remote
        .insert("r1".into(), remote("10.0.9.20", 20, "198.18.0.2"));
    n1.remote
        .insert("r2".into(), remote("10.0.9.21", 21, "198.18.0.3"));
    d.networks.insert("n1".into(), n1);
    let mut n2 = net(4097, 10, true);
    n2.remote
        .insert("r3".into(), remote("10.0.10.20", 30, "198.18.0.2"));
    d.networks.insert("n2".into(), n2);
    d.tasks.insert(
        "t1".into(),
        TaskNet {
            netns: None,
            handover: false,
            resolver: None,
            endpoints: vec![ep("n1", "eth0", "10.0.9.2/24", 2)],
            gateway: gw_att("172.18.0.2/16", 102),
        },
    );
    d.tasks.insert(
        "t2".into(),
        TaskNet {
            netns: None,
            handover: false,
            resolver: None,
            endpoints: vec![
                ep("n1", "eth0", "10.0.9.3/24", 3),
                ep("n2", "eth1", "10.0.10.3/24", 4),
            ],
            gateway: gw_att("172.18.0.3/16", 103),
        },
    );
    d.tasks.insert(
        "t3".into(),
        TaskNet {
            netns: None,
            handover: false,
            resolver: None,
            endpoints: vec![ep("n2", "eth0", "10.0.10.4/24", 5)],
            gateway: None,
        },
    );
    d
}

/// A kernel as the Linux observer would see it with nothing of ours.
fn empty_kernel() -> Observed {
    Observed {
        host_routes: vec![HostRoute {
            dest: "198.18.0.0/24".parse().unwrap(),
            dev: Some("eth0".into()),
        }],
        ..Observed::default()
    }
}

fn converge(k: &mut Observed, d: &DesiredNode) -> Vec<Op> {
    let ops = plan(k, d).unwrap();
    for op in &ops {
        simulate(k, op);
    }
    let again = plan(k, d).unwrap();
    assert!(again.is_empty(), "not converged; left: {again:#?}");
    ops
}

fn pos(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
    ops.iter()
        .position(f)
        .unwrap_or_else(|| panic!("op not found in {ops:#?}"))
}

#[test]
fn one_network_no_tasks_exact_plan() {
    let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
    let mut n = net(4096, 9, false);
    n.remote
        .insert("r1".into(), remote("10.0.9.20", 20, "198.18.0.2"));
    d.networks.insert("n1".into(), n);
    let nr = NsRef::Network("n1".into());
    let ops = plan(&empty_kernel(), &d).unwrap();
    assert_eq!(
        ops,
        vec![
            Op::CreateNetns { ns: nr.clone() },
            Op::CreateBridge {
                ns: nr.clone(),
                name: "br0".into(),
                mtu: 1450
            },
            Op::CreateVxlan {
                network: "n1".into(),
                name: "weft-vx4096".into(),
                vni: 4096,
                port: 4789,
                local: "198.18.0.1".parse().unwrap(),
                mtu: 1450
            },
            Op::AddAddress {
                ns: nr.clone(),
                link: "br0".into(),
                addr: "10.0.9.1/24".parse().unwrap()
            },
            Op::SetUp {
                ns: nr.clone(),
                link: "br0".into()
            },
            Op::SetUp {
                ns: nr.clone(),
                link: "lo".into()
            },
            Op::SetMaster {
                ns: nr.clone(),
                link: "weft-vx4096".into(),
                master: "br0".into()
            },
            Op::SetUp {
                ns: nr.clone(),
                link: "weft-vx4096".into()
            },
            Op::ReplaceFdb {
                network: "n1".into(),
                link: "weft-vx4096".into(),
                mac: mac(20),
                vtep: "198.18.0.2".parse().unwrap()
            },
            Op::ReplaceNeigh {
                network: "n1".into(),
                link: "weft-vx4096".into(),
                ip: "10.0.9.20".parse().unwrap(),
                mac: mac(20)
            },
        ]
    );
    let mut k = empty_kernel();
    converge(&mut k, &d);
}

#[test]
fn full_state_converges_in_order() {
    let d = full();
    let mut k = empty_kernel();
    let ops = converge(&mut k, &d);
    let t1 = NsRef::Task("t1".into());
    let n1 = NsRef::Network("n1".into());
    // Namespaces before links, bridges before what plugs into them,
    // addresses and links up before routes, links before FDB entries.
    let ns_t1 = pos(&ops, |o| *o == Op::CreateNetns { ns: t1.clone() });
    let ns_n1 = pos(&ops, |o| *o == Op::CreateNetns { ns: n1.clone() });
    let br = pos(
        &ops,
        |o| matches!(o, Op::CreateBridge { ns, .. } if *ns == n1),
    );
    let gwbr = pos(&ops, |o| {
        matches!(
            o,
            Op::CreateBridge {
                ns: NsRef::Host,
                ..
            }
        )
    });
    let vx = pos(
        &ops,
        |o| matches!(o, Op::CreateVxlan { network, .. } if network.as_str() == "n1"),
    );
    let veth = pos(
        &ops,
        |o| matches!(o, Op::CreateVeth { peer_ns, peer_name, .. } if *peer_ns == t1 && peer_name == "eth0"),
    );
    let gveth = pos(
        &ops,
        |o| matches!(o, Op::CreateVeth { ns: NsRef::Host, peer_ns, .. } if *peer_ns == t1),
    );
    let master = pos(
        &ops,
        |o| matches!(o, Op::SetMaster { ns, master, .. } if *ns == n1 && master == "br0"),
    );
    let route = pos(
        &ops,
        |o| matches!(o, Op::ReplaceDefaultRoute { ns, .. } if *ns == t1),
    );
    let gw0_up = pos(
        &ops,
        |o| matches!(o, Op::SetUp { ns, link } if *ns == t1 && link == "gw0"),
    );
    let fdb = pos(&ops, |o| matches!(o, Op::ReplaceFdb { .. }));
    let nat = pos(&ops, |o| matches!(o, Op::ApplyNat { .. }));
    assert!(ns_n1 < br && ns_t1 < veth && br < vx && vx < veth && gwbr < gveth);
    assert!(veth < master && gw0_up < route && vx < fdb && gwbr < nat);
    assert!(ops.contains(&Op::EnableIpv4Forwarding));
    // Internal network: t3 has no gateway veth and no default route.
    let t3 = NsRef::Task("t3".into());
    assert!(!k.tasks[&TaskId::from("t3")].links.contains_key("gw0"));
    assert!(k.tasks[&TaskId::from("t3")].default_routes.is_empty());
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::ReplaceDefaultRoute { ns, .. } if *ns == t3))
    );
    // Shapes in the simulated kernel.
    let t1k = &k.tasks[&TaskId::from("t1")];
    assert_eq!(t1k.links["eth0"].mac, Some(mac(2)));
    assert!(
        t1k.links["eth0"]
            .addrs
            .contains(&"10.0.9.2/24".parse().unwrap())
    );
    assert_eq!(t1k.links["gw0"].mtu, Some(1500));
    let n1k = &k.networks[&NetworkId::from("n1")];
    assert_eq!(n1k.fdb["weft-vx4096"].len(), 2);
    assert_eq!(n1k.neighs["weft-vx4096"].len(), 2);
    assert_eq!(
        k.host.links[&names::gw_port(&"t1".into())]
            .master
            .as_deref(),
        Some(GATEWAY_BRIDGE)
    );
}

#[test]
fn removing_a_network_and_its_tasks() {
    let mut d = full();
    let mut k = empty_kernel();
    converge(&mut k, &d);
    d.networks.remove(&NetworkId::from("n2"));
    d.tasks.remove(&TaskId::from("t3"));
    d.tasks
        .get_mut(&TaskId::from("t2"))
        .unwrap()
        .endpoints
        .pop();
    let ops = converge(&mut k, &d);
    let t3 = NsRef::Task("t3".into());
    let n2 = NsRef::Network("n2".into());
    let del_t3 = pos(&ops, |o| *o == Op::DeleteNetns { ns: t3.clone() });
    let del_n2 = pos(&ops, |o| *o == Op::DeleteNetns { ns: n2.clone() });
    let del_vx = pos(&ops, |o| {
        *o == Op::DeleteLink {
            ns: n2.clone(),
            name: "weft-vx4097".into(),
        }
    });
    let del_eth1 = pos(&ops, |o| {
        *o == Op::DeleteLink {
            ns: NsRef::Task("t2".into()),
            name: "eth1".into(),
        }
    });
    assert!(del_eth1 < del_t3 && del_t3 < del_n2 && del_vx < del_n2);
    // Only deletes.
    assert!(
        ops.iter()
            .all(|o| matches!(o, Op::DeleteLink { .. } | Op::DeleteNetns { .. })),
        "{ops:#?}"
    );
    assert!(!k.networks.contains_key(&NetworkId::from("n2")));
    assert!(!k.tasks.contains_key(&TaskId::from("t3")));
    assert!(!k.tasks[&TaskId::from("t2")].links.contains_key("eth1"));
    // Removing everything leaves nothing of ours.
    let mut none = DesiredNode::new(d.vtep);
    none.gateway = None;
    converge(&mut k, &none);
    assert!(k.networks.is_empty() && k.tasks.is_empty() && k.host.links.is_empty());
    assert_eq!(k.nat, None);
}

#[test]
fn vxlan_deleted_by_hand_is_repaired() {
    let d = full();
    let mut k = empty_kernel();
    converge(&mut k, &d);
    simulate(
        &mut k,
        &Op::DeleteLink {
            ns: NsRef::Network("n1".into()),
            name: "weft-vx4096".into(),
        },
    );
    let ops = converge(&mut k, &d);
    let n1 = NsRef::Network("n1".into());
    assert_eq!(ops.len(), 2 + 2 + 2 + 1, "{ops:#?}"); // create, master, up, 2 fdb, 2 neigh
    assert!(matches!(ops[0], Op::CreateVxlan { .. }));
    assert!(ops.contains(&Op::SetUp {
        ns: n1,
        link: "weft-vx4096".into()
    }));
}

#[test]
fn remote_endpoint_changes() {
    let mut d = full();
    let mut k = empty_kernel();
    converge(&mut k, &d);
    let n1 = d.networks.get_mut(&NetworkId::from("n1")).unwrap();
    n1.remote.remove(&EndpointId::from("r1"));
    n1.remote.get_mut(&EndpointId::from("r2")).unwrap().vtep = "198.18.0.9".parse().unwrap();
    let ops = converge(&mut k, &d);
    assert_eq!(
        ops,
        vec![
            Op::DeleteFdb {
                network: "n1".into(),
                link: "weft-vx4096".into(),
                mac: mac(20)
            },
            Op::DeleteNeigh {
                network: "n1".into(),
                link: "weft-vx4096".into(),
                ip: "10.0.9.20".parse().unwrap()
            },
            Op::ReplaceFdb {
                network: "n1".into(),
                link: "weft-vx4096".into(),
                mac: mac(21),
                vtep: "198.18.0.9".parse().unwrap()
            },
        ]
    );
}

#[test]
fn shape_changes_recreate_or_fix() {
    let mut d = full();
    let mut k = empty_kernel();
    converge(&mut k, &d);
    // A new data-path port re-creates every VXLAN device.
    d.vxlan_port = 4790;
    let ops = converge(&mut k, &d);
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::CreateVxlan { port: 4790, .. }))
            .count(),
        2
    );
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::DeleteLink { name, .. } if name == "weft-vx4096"))
    );
    // An MTU change is fixed in place.
    d.networks.get_mut(&NetworkId::from("n1")).unwrap().mtu = 1400;
    let ops = converge(&mut k, &d);
    assert!(
        ops.iter()
            .all(|o| matches!(o, Op::SetMtu { mtu: 1400, .. })),
        "{ops:#?}"
    );
    // br0, vxlan, and for t1 and t2 both veth ends.
    assert_eq!(ops.len(), 6);
    // A new address: old one removed, new one added.
    d.tasks.get_mut(&TaskId::from("t1")).unwrap().endpoints[0].ip = "10.0.9.7/24".parse().unwrap();
    let ops = converge(&mut k, &d);
    assert_eq!(ops.len(), 2);
    assert!(matches!(ops[0], Op::DeleteAddress { .. }) && matches!(ops[1], Op::AddAddress { .. }));
}

#[test]
fn broken_veth_pair_and_downed_links_are_repaired() {
    let d = full();
    let mut k = empty_kernel();
    converge(&mut k, &d);
    let t1 = TaskId::from("t1");
    // Someone deletes the task end of gw0's pair and downs lo.
    simulate(
        &mut k,
        &Op::DeleteLink {
            ns: NsRef::Task(t1.clone()),
            name: "gw0".into(),
        },
    );
    k.tasks
        .get_mut(&t1)
        .unwrap()
        .links
        .get_mut("lo")
        .unwrap()
        .up = false;
    let ops = converge(&mut k, &d);
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::CreateVeth { peer_name, .. } if peer_name == "gw0"))
    );
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::ReplaceDefaultRoute { .. }))
    );
    assert!(ops.contains(&Op::SetUp {
        ns: NsRef::Task(t1),
        link: "lo".into()
    }));
}

#[test]
fn foreign_links_are_left_alone() {
    let d = full();
    let mut k = empty_kernel();
    converge(&mut k, &d);
    let t1 = NsRef::Task("t1".into());
    let mut l = k.tasks[&TaskId::from("t1")].links["lo"].clone();
    l.kind = ObservedKind::Other("dummy".into());
    l.index = 999;
    k.ns_mut(&t1)
        .unwrap()
        .links
        .insert("dummy0".into(), l.clone());
    k.host.links.insert("weft-wg0".into(), l);
    assert!(plan(&k, &d).unwrap().is_empty());
}

#[test]
fn gateway_removed_takes_nat_bridge_ports_and_routes() {
    let mut d = full();
    let mut k = empty_kernel();
    converge(&mut k, &d);
    d.gateway = None;
    for t in d.tasks.values_mut() {
        t.gateway = None;
    }
    let ops = converge(&mut k, &d);
    let nat = pos(&ops, |o| *o == Op::DeleteNat);
    let br = pos(&ops, |o| {
        *o == Op::DeleteLink {
            ns: NsRef::Host,
            name: GATEWAY_BRIDGE.into(),
        }
    });
    let port = pos(
        &ops,
        |o| matches!(o, Op::DeleteLink { ns: NsRef::Host, name } if name.starts_with("weftgw")),
    );
    assert!(port < br && nat < br);
    assert!(k.host.links.is_empty());
    assert!(k.tasks.values().all(|t| t.default_routes.is_empty()));
}

#[test]
fn flushed_nat_is_rewritten() {
    let d = full();
    let mut k = empty_kernel();
    converge(&mut k, &d);
    k.nat = Some(BTreeSet::new());
    assert_eq!(
        plan(&k, &d).unwrap(),
        vec![Op::ApplyNat {
            subnet: "172.18.0.0/16".parse().unwrap(),
            subnet6: None,
            bridge: GATEWAY_BRIDGE.into()
        }]
    );
}

#[test]
fn gateway_subnet_collision_is_refused() {
    let d = full();
    let mut k = empty_kernel();
    k.host_routes.push(HostRoute {
        dest: "172.18.5.0/24".parse().unwrap(),
        dev: Some("docker0".into()),
    });
    match plan(&k, &d) {
        Err(PlanError::GatewaySubnetCollision { route, dev, .. }) => {
            assert_eq!(route, "172.18.5.0/24".parse::<IpNetwork>().unwrap());
            assert_eq!(dev.as_deref(), Some("docker0"));
        }
        r => panic!("expected collision, got {r:?}"),
    }
    let msg = plan(&k, &d).unwrap_err().to_string();
    assert!(
        msg.contains("172.18.5.0/24") && msg.contains("docker0"),
        "{msg}"
    );
    // Our own bridge's route and default routes do not count.
    k.host_routes.pop();
    k.host_routes.push(HostRoute {
        dest: "172.18.0.0/16".parse().unwrap(),
        dev: Some(GATEWAY_BRIDGE.into()),
    });
    k.host_routes.push(HostRoute {
        dest: "0.0.0.0/0".parse().unwrap(),
        dev: Some("eth0".into()),
    });
    assert!(plan(&k, &d).is_ok());
}

#[test]
fn invalid_states_are_refused() {
    let k = empty_kernel();
    let check = |f: &dyn Fn(&mut DesiredNode), want: &str| {
        let mut d = full();
        f(&mut d);
        let e = plan(&k, &d).unwrap_err();
        let dbg = format!("{e:?}");
        assert!(dbg.starts_with(want), "{dbg} (wanted {want})");
    };
    check(
        &|d| {
            d.networks.insert("../x".into(), net(5, 11, false));
        },
        "InvalidId",
    );
    check(
        &|d| d.networks.get_mut(&NetworkId::from("n2")).unwrap().vni = 4096,
        "DuplicateVni",
    );
    check(
        &|d| d.networks.get_mut(&NetworkId::from("n2")).unwrap().vni = 1 << 24,
        "VniOutOfRange",
    );
    check(
        &|d| d.tasks.get_mut(&TaskId::from("t1")).unwrap().endpoints[0].network = "nx".into(),
        "UnknownNetwork",
    );
    check(
        &|d| d.tasks.get_mut(&TaskId::from("t1")).unwrap().endpoints[0].ifname = "gw0".into(),
        "InvalidIfname",
    );
    check(
        &|d| {
            d.tasks.get_mut(&TaskId::from("t2")).unwrap().endpoints[1].ifname = "eth0".into();
        },
        "InvalidIfname",
    );
    check(
        &|d| {
            let t = d.tasks.get_mut(&TaskId::from("t2")).unwrap();
            t.endpoints[1] = ep("n1", "eth1", "10.0.9.9/24", 9);
        },
        "DuplicateAttachment",
    );
    check(
        &|d| {
            d.tasks.get_mut(&TaskId::from("t1")).unwrap().endpoints[0].ip =
                "10.0.10.2/24".parse().unwrap()
        },
        "AddressOutsideSubnet",
    );
    check(&|d| d.gateway = None, "NoGatewayBridge");
}

#[test]
fn every_transition_converges_in_one_apply() {
    // A handful of states; every ordered pair must converge in one plan.
    let base = full();
    let mut states = vec![DesiredNode::new(base.vtep), base.clone()];
    let mut s = base.clone();
    s.tasks.remove(&TaskId::from("t2"));
    states.push(s.clone());
    s.networks.get_mut(&NetworkId::from("n1")).unwrap().vni = 5000;
    states.push(s.clone());
    s.gateway = None;
    for t in s.tasks.values_mut() {
        t.gateway = None;
    }
    states.push(s.clone());
    let mut s = base.clone();
    s.gateway = Some(GatewayBridge {
        subnet: "172.19.0.0/16".parse().unwrap(),
        gateway: "172.19.0.1".parse().unwrap(),
        mtu: 1400,
        ipv6: None,
    });
    for (i, t) in s.tasks.values_mut().enumerate() {
        if t.gateway.is_some() {
            t.gateway = gw_att(&format!("172.19.0.{}/16", i + 2), 110 + i as u8);
        }
    }
    states.push(s);
    states.push(with_services(&base));
    let mut s = with_services(&base);
    s.networks
        .get_mut(&NetworkId::from("n1"))
        .unwrap()
        .services
        .get_mut("web")
        .unwrap()
        .backends
        .pop();
    states.push(s);
    states.push(with_ports(&base));
    let mut s = with_ports(&base);
    s.ports[0].local.clear();
    s.ingress = None;
    states.push(s);
    for from in &states {
        for to in &states {
            let mut k = empty_kernel();
            converge(&mut k, from);
            converge(&mut k, to);
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `full()` plus services on n1 (web: VIP, two backends; rr: dnsrr; down:
/// VIP without backends) and n2 (db: VIP, one backend).
fn with_services(base: &DesiredNode) -> DesiredNode {
    let mut d = base.clone();
    let n1 = d.networks.get_mut(&NetworkId::from("n1")).unwrap();
    n1.services.insert(
        "web".into(),
        ServiceEntry {
            vip6: None,
            vip: Some(ip("10.0.9.100")),
            backends: vec![ip("10.0.9.21"), ip("10.0.9.20")],
        },
    );
    n1.services.insert(
        "rr".into(),
        ServiceEntry {
            vip6: None,
            vip: None,
            backends: vec![ip("10.0.9.2")],
        },
    );
    n1.services.insert(
        "down".into(),
        ServiceEntry {
            vip6: None,
            vip: Some(ip("10.0.9.101")),
            backends: vec![],
        },
    );
    d.networks
        .get_mut(&NetworkId::from("n2"))
        .unwrap()
        .services
        .insert(
            "db".into(),
            ServiceEntry {
                vip6: None,
                vip: Some(ip("10.0.10.100")),
                // A backend of the other family never lands in an IPv4 map.
                backends: vec![ip("10.0.10.20"), ip("fd00::20")],
            },
        );
    d
}

#[test]
fn task_vips_are_per_task_sorted_and_family_filtered() {
    let d = with_services(&full());
    assert_eq!(
        task_vips(&d, &"t1".into()),
        BTreeMap::from([
            (ip("10.0.9.100"), vec![ip("10.0.9.20"), ip("10.0.9.21")]),
            (ip("10.0.9.101"), vec![]),
        ])
    );
    assert_eq!(task_vips(&d, &"t2".into()).len(), 3);
    assert_eq!(
        task_vips(&d, &"t3".into()),
        BTreeMap::from([(ip("10.0.10.100"), vec![ip("10.0.10.20")])])
    );
    assert!(task_vips(&d, &"nope".into()).is_empty());
    let c = lb_comment(ip("10.0.9.100"), &[ip("10.0.9.20"), ip("10.0.9.21")]);
    assert!(c.starts_with("weft-lb:10.0.9.100:"), "{c}");
    assert_eq!(lb_comment_vip(&c), Some(ip("10.0.9.100")));
    assert_eq!(lb_comment(ip("fd00::1"), &[]), "weft-lb:fd00::1:reject");
    assert_eq!(
        lb_comment_vip("weft-lb:fd00::1:reject"),
        Some(ip("fd00::1"))
    );
    assert_eq!(lb_comment_vip("weft:masquerade:x"), None);
    assert!(c.len() < 128, "nft comments are limited");
}

#[test]
fn lb_tables_and_resolvers_converge_and_follow_changes() {
    let base = full();
    let d = with_services(&base);
    let mut k = empty_kernel();
    let ops = converge(&mut k, &d);
    // Every task gets a resolver, after its namespace and lo.
    for t in ["t1", "t2", "t3"] {
        let dns = pos(
            &ops,
            |o| matches!(o, Op::StartDns { task, .. } if task.as_str() == t),
        );
        let lo = pos(
            &ops,
            |o| matches!(o, Op::SetUp { ns: NsRef::Task(x), link } if x.as_str() == t && link == "lo"),
        );
        assert!(lo < dns);
    }
    let lb: Vec<&Op> = ops
        .iter()
        .filter(|o| matches!(o, Op::ApplyLb { .. }))
        .collect();
    assert_eq!(lb.len(), 3, "{lb:#?}");
    // New namespaces: no flows to flush.
    assert!(ops.contains(&Op::ApplyLb {
        task: "t3".into(),
        vips: BTreeMap::from([(ip("10.0.10.100"), vec![ip("10.0.10.20")])]),
        flush: BTreeSet::new(),
    }));

    // A backend leaves: only the tasks that balance that VIP are rewritten,
    // and the VIP's stale flows are flushed.
    let mut d2 = d.clone();
    let web = d2
        .networks
        .get_mut(&NetworkId::from("n1"))
        .unwrap()
        .services
        .get_mut("web")
        .unwrap();
    web.backends.retain(|b| *b != ip("10.0.9.21"));
    let ops = converge(&mut k, &d2);
    assert_eq!(ops.len(), 2, "{ops:#?}");
    assert!(ops.contains(&Op::ApplyLb {
        task: "t1".into(),
        vips: BTreeMap::from([
            (ip("10.0.9.100"), vec![ip("10.0.9.20")]),
            (ip("10.0.9.101"), vec![]),
        ]),
        flush: BTreeSet::from([ip("10.0.9.100"), ip("10.0.9.101")]),
    }));
    // Reordered backends are no change.
    let mut d3 = d.clone();
    d3.networks
        .get_mut(&NetworkId::from("n1"))
        .unwrap()
        .services
        .get_mut("web")
        .unwrap()
        .backends
        .reverse();
    k = empty_kernel();
    converge(&mut k, &d);
    assert_eq!(plan(&k, &d3).unwrap(), vec![]);

    // Drift: a flushed or deleted table is rewritten; a dead resolver is
    // restarted; nothing else moves.
    k.tasks.get_mut(&TaskId::from("t1")).unwrap().lb = Some(BTreeSet::new());
    k.tasks.get_mut(&TaskId::from("t3")).unwrap().lb = None;
    k.dns.remove(&TaskId::from("t2"));
    let ops = plan(&k, &d).unwrap();
    assert_eq!(ops.len(), 3, "{ops:#?}");
    assert!(
        matches!(&ops[0], Op::ApplyLb { task, flush, .. } if task.as_str() == "t1" && flush.len() == 2)
    );
    assert_eq!(
        ops[1],
        Op::StartDns {
            task: "t2".into(),
            addr: crate::dns::RESOLVER_ADDR
        }
    );
    assert!(matches!(&ops[2], Op::ApplyLb { task, .. } if task.as_str() == "t3"));
    converge(&mut k, &d);

    // Services gone: tables deleted (old VIPs flushed), resolvers stay.
    let ops = converge(&mut k, &base);
    assert_eq!(ops.len(), 3, "{ops:#?}");
    assert!(ops.contains(&Op::DeleteLb {
        task: "t3".into(),
        flush: BTreeSet::from([ip("10.0.10.100")]),
    }));
    assert_eq!(k.dns.len(), 3);
    // A removed task takes its resolver with its namespace.
    let mut fewer = base.clone();
    fewer.tasks.remove(&TaskId::from("t3"));
    converge(&mut k, &fewer);
    assert!(!k.dns.contains(&TaskId::from("t3")));
}

/// `full()` plus an ingress overlay network with this node's endpoint on it
/// and three published ports: web (local and remote backends), dns (UDP,
/// remote only) and api (remote only, two backends).
fn with_ports(base: &DesiredNode) -> DesiredNode {
    let mut d = base.clone();
    let mut ing = net(4098, 255, false);
    ing.remote
        .insert("r-ing".into(), remote("10.0.255.9", 40, "198.18.0.2"));
    d.networks.insert("ingress".into(), ing);
    d.ingress = Some(IngressEndpoint {
        ip6: None,
        network: "ingress".into(),
        ip: "10.0.255.2/24".parse().unwrap(),
        mac: mac(50),
    });
    d.ports = vec![
        published(
            Proto::Tcp,
            8080,
            80,
            &["172.18.0.2"],
            &["10.0.255.9"],
            "web",
        ),
        published(Proto::Udp, 5353, 53, &[], &["10.0.255.9"], "dns"),
        published(
            Proto::Tcp,
            9000,
            9000,
            &[],
            &["10.0.255.9", "10.0.255.8"],
            "api",
        ),
    ];
    d
}

fn published(
    proto: Proto,
    port: u16,
    target_port: u16,
    local: &[&str],
    remote: &[&str],
    owner: &str,
) -> PublishedPort {
    PublishedPort {
        proto,
        port,
        target_port,
        local: local.iter().map(|a| ip(a)).collect(),
        remote: remote.iter().map(|a| ip(a)).collect(),
        owner: format!("service {owner}"),
    }
}

#[test]
fn ports_table_prefers_local_backends_and_skips_what_it_cannot_reach() {
    let d = with_ports(&full());
    let t = ports_table(&d).unwrap();
    assert_eq!(t.hairpin, Some("172.18.0.0/16".parse().unwrap()));
    assert!(t.ingress);
    let got: Vec<(u16, bool, Vec<IpAddr>)> = t
        .rules
        .iter()
        .map(|r| (r.port, r.remote, r.backends.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            // Sorted by (proto, port); remote backends sorted.
            (8080, false, vec![ip("172.18.0.2")]),
            (9000, true, vec![ip("10.0.255.8"), ip("10.0.255.9")]),
            (5353, true, vec![ip("10.0.255.9")]),
        ]
    );
    // Without an ingress endpoint remote backends are unreachable: only
    // ports with local backends get rules.
    let mut no_ing = d.clone();
    no_ing.ingress = None;
    let t = ports_table(&no_ing).unwrap();
    assert_eq!(t.rules.len(), 1);
    assert!(!t.ingress);
    // IPv6 backends are skipped; a port left without any gets no rule.
    let mut v6 = d.clone();
    v6.ports = vec![published(Proto::Tcp, 80, 80, &["fd00::2"], &[], "v6")];
    v6.ingress = None;
    assert!(ports_table(&v6).unwrap().rules.is_empty());
    // No ports and no ingress: no table. No gateway: no hairpin.
    assert_eq!(ports_table(&full()), None);
    let mut no_gw = DesiredNode::new(d.vtep);
    no_gw.ports = vec![published(Proto::Tcp, 80, 80, &["172.18.0.2"], &[], "x")];
    assert_eq!(ports_table(&no_gw).unwrap().hairpin, None);
    // Reordering backends changes nothing; comments stay within nft's
    // limit whatever the owner.
    let mut reordered = d.clone();
    reordered.ports[2].remote.reverse();
    reordered.ports.reverse();
    assert_eq!(ports_table(&reordered), ports_table(&d));
    let mut long = d.clone();
    long.ports[0].owner = "ü".repeat(200);
    for c in ports_table(&long).unwrap().comments() {
        assert!(c.len() <= 128 && c.starts_with(PORTS_COMMENT_PREFIX), "{c}");
    }
    // Every field that changes the rules changes a comment.
    let base = ports_table(&d).unwrap().comments();
    for f in [
        (|d: &mut DesiredNode| d.ports[0].target_port = 81) as fn(&mut DesiredNode),
        |d| d.ports[1].remote[0] = ip("10.0.255.7"),
        |d| d.ports[0].owner = "task t".into(),
        |d| d.gateway = None,
        |d| d.ingress = None,
    ] {
        let mut e = d.clone();
        f(&mut e);
        if e.ingress.is_none() {
            e.networks.remove(&NetworkId::from("ingress"));
        }
        assert_ne!(ports_table(&e).map(|t| t.comments()), Some(base.clone()));
    }
}

#[test]
fn ingress_endpoint_ports_and_user_chain_converge() {
    let d = with_ports(&full());
    let mut k = empty_kernel();
    let ops = converge(&mut k, &d);
    let ing = NsRef::Network("ingress".into());
    let veth = pos(&ops, |o| {
        *o == Op::CreateVeth {
            ns: ing.clone(),
            name: INGRESS_PORT.into(),
            mac: None,
            peer_ns: NsRef::Host,
            peer_name: INGRESS_IF.into(),
            peer_mac: Some(mac(50)),
            mtu: 1450,
        }
    });
    let master = pos(&ops, |o| {
        *o == Op::SetMaster {
            ns: ing.clone(),
            link: INGRESS_PORT.into(),
            master: NETWORK_BRIDGE.into(),
        }
    });
    let addr = pos(&ops, |o| {
        *o == Op::AddAddress {
            ns: NsRef::Host,
            link: INGRESS_IF.into(),
            addr: "10.0.255.2/24".parse().unwrap(),
        }
    });
    let up = pos(&ops, |o| {
        *o == Op::SetUp {
            ns: NsRef::Host,
            link: INGRESS_IF.into(),
        }
    });
    let user = pos(&ops, |o| *o == Op::EnsureUserChain);
    let ports = pos(&ops, |o| matches!(o, Op::ApplyPorts { .. }));
    let fwd = pos(&ops, |o| *o == Op::EnableIpv4Forwarding);
    assert!(fwd < veth && veth < master && veth < addr && addr < up && up < user);
    assert!(user < ports);
    assert!(
        matches!(&ops[ports], Op::ApplyPorts { table } if Some(table) == ports_table(&d).as_ref())
    );
    assert!(k.user_chain);
    assert_eq!(k.ports, ports_table(&d).map(|t| t.comments()));

    // Drift: a flushed or deleted ports table, a deleted user chain, the
    // ingress veth deleted by hand: each repaired alone.
    k.ports = Some(BTreeSet::new());
    assert!(matches!(
        plan(&k, &d).unwrap().as_slice(),
        [Op::ApplyPorts { .. }]
    ));
    k.ports = None;
    assert!(matches!(
        plan(&k, &d).unwrap().as_slice(),
        [Op::ApplyPorts { .. }]
    ));
    converge(&mut k, &d);
    k.user_chain = false;
    assert_eq!(plan(&k, &d).unwrap(), vec![Op::EnsureUserChain]);
    converge(&mut k, &d);
    simulate(
        &mut k,
        &Op::DeleteLink {
            ns: NsRef::Host,
            name: INGRESS_IF.into(),
        },
    );
    let ops = converge(&mut k, &d);
    assert!(
        matches!(&ops[0], Op::CreateVeth { name, .. } if name == INGRESS_PORT),
        "{ops:#?}"
    );
    assert!(!ops.iter().any(|o| matches!(o, Op::ApplyPorts { .. })));

    // A changed backend rewrites only the table.
    let mut moved = d.clone();
    moved.ports[0].local = vec![ip("172.18.0.3")];
    let ops = converge(&mut k, &moved);
    assert!(
        matches!(ops.as_slice(), [Op::ApplyPorts { .. }]),
        "{ops:#?}"
    );

    // No ports, no ingress: the table and the endpoint go, the user chain
    // stays (also once the gateway goes: it is never weft's to remove).
    let ops = converge(&mut k, &full());
    assert!(ops.contains(&Op::DeletePorts), "{ops:#?}");
    assert!(ops.contains(&Op::DeleteLink {
        ns: NsRef::Host,
        name: INGRESS_IF.into()
    }));
    assert!(!k.host.links.contains_key(INGRESS_IF));
    assert_eq!(k.ports, None);
    let ops = converge(&mut k, &DesiredNode::new(d.vtep));
    assert!(!ops.contains(&Op::EnsureUserChain));
    assert!(k.user_chain);
}

#[test]
fn ports_alone_turn_on_forwarding_and_the_user_chain() {
    let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
    d.ports = vec![published(Proto::Tcp, 80, 8080, &["10.9.0.2"], &[], "x")];
    let ops = converge(&mut empty_kernel(), &d);
    assert_eq!(ops.len(), 3, "{ops:#?}");
    assert_eq!(ops[0], Op::EnableIpv4Forwarding);
    assert_eq!(ops[1], Op::EnsureUserChain);
    assert!(
        matches!(&ops[2], Op::ApplyPorts { table } if table.rules.len() == 1 && table.hairpin.is_none() && !table.ingress)
    );
    // Nothing to forward: nothing at all.
    assert!(converge(&mut empty_kernel(), &DesiredNode::new(d.vtep)).is_empty());
}

#[test]
fn bad_ports_and_ingress_are_refused() {
    let k = empty_kernel();
    let check = |f: &dyn Fn(&mut DesiredNode), want: &str| {
        let mut d = with_ports(&full());
        f(&mut d);
        let e = plan(&k, &d).unwrap_err();
        let dbg = format!("{e:?}");
        assert!(dbg.starts_with(want), "{dbg} (wanted {want})");
        e.to_string()
    };
    check(
        &|d| {
            d.networks.remove(&NetworkId::from("ingress"));
        },
        "InvalidIngress",
    );
    check(
        &|d| {
            let n = d.networks.get_mut(&NetworkId::from("ingress")).unwrap();
            n.local = true;
            n.remote.clear();
        },
        "InvalidIngress",
    );
    check(
        &|d| d.ingress.as_mut().unwrap().ip = "10.0.9.50/24".parse().unwrap(),
        "AddressOutsideSubnet",
    );
    check(
        &|d| d.ingress.as_mut().unwrap().ip = "10.0.255.2/16".parse().unwrap(),
        "InvalidIngress",
    );
    check(&|d| d.ports[0].port = 0, "InvalidPort");
    check(&|d| d.ports[1].target_port = 0, "InvalidPort");
    let msg = check(
        &|d| {
            let mut again = d.ports[0].clone();
            again.owner = "task other".into();
            d.ports.push(again);
        },
        "DuplicatePort",
    );
    assert!(
        msg.contains("tcp/8080") && msg.contains("service web") && msg.contains("task other"),
        "{msg}"
    );
    // The same number on the other protocol is another port.
    let mut d = with_ports(&full());
    let mut udp = d.ports[0].clone();
    udp.proto = Proto::Udp;
    d.ports.push(udp);
    assert!(plan(&k, &d).is_ok());
}

/// A Docker endpoint: the veth is made with its inside end in the daemon's
/// namespace for dockerd to move, never made again once moved, and the
/// sandbox is adopted (resolver at its own address) without a new pair.
#[test]
fn a_handed_over_endpoint_is_made_once_and_its_sandbox_adopted_without_a_new_pair() {
    let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
    d.networks.insert("n1".into(), net(4096, 9, false));
    let dk = TaskId::from("dk");
    let mut t = TaskNet {
        endpoints: vec![ep("n1", "eth0", "10.0.9.7/24", 7)],
        handover: true,
        resolver: Some(crate::dns::DOCKER_UPSTREAM_ADDR),
        ..TaskNet::default()
    };
    d.tasks.insert(dk.clone(), t.clone());
    let mut k = empty_kernel();
    let ops = converge(&mut k, &d);
    let handed = names::handover(&dk);
    assert!(ops.iter().any(|o| matches!(o,
        Op::CreateVeth { ns: NsRef::Network(_), peer_ns: NsRef::Host, peer_name, peer_mac, .. }
            if *peer_name == handed && *peer_mac == Some(mac(7)))));
    let task_ns = NsRef::Task(dk.clone());
    assert!(!ops.iter().any(|o| matches!(o,
        Op::CreateNetns { ns } | Op::AdoptNetns { ns, .. } if *ns == task_ns)));
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::StartDns { .. } | Op::ApplyLb { .. }))
    );
    assert!(k.host.links.contains_key(&handed));

    // dockerd moved it: the pair is not made again.
    k.host.links.remove(&handed);
    assert!(plan(&k, &d).unwrap().is_empty());

    // Found in the sandbox: adopted, resolver at Docker's upstream address,
    // still no new pair (the namespace is not observed in this pass).
    t.netns = Some("/var/run/docker/netns/abc".into());
    d.tasks.insert(dk.clone(), t);
    let ops = plan(&k, &d).unwrap();
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::AdoptNetns { ns, .. } if *ns == NsRef::Task(dk.clone())))
    );
    assert!(ops.contains(&Op::StartDns {
        task: dk.clone(),
        addr: crate::dns::DOCKER_UPSTREAM_ADDR
    }));
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::CreateVeth { .. } | Op::DeleteLink { .. })),
        "{ops:#?}"
    );
    // Once its namespace is observed, the endpoint's IPv6 addresses are
    // dockerd's to set (it turns IPv6 on and sets weft's, and racing it
    // would fail its setup): none added, none taken away. Its IPv4 ones
    // stay weft's to keep.
    for op in &ops {
        simulate(&mut k, op);
    }
    let tref = NsRef::Task(dk.clone());
    let eth0 = crate::plan::ObservedLink {
        index: 900,
        kind: ObservedKind::Veth,
        mtu: Some(1450),
        mac: None,
        up: true,
        master: None,
        peer_index: Some(901),
        vxlan: None,
        addrs: BTreeSet::from(["fd00:99::9/64".parse().unwrap()]),
    };
    d.networks.get_mut(&NetworkId::from("n1")).unwrap().subnet6 =
        Some(("fd00:9::/64".parse().unwrap(), ip("fd00:9::1")));
    d.tasks.get_mut(&dk).unwrap().endpoints[0].ip6 = Some("fd00:9::7/64".parse().unwrap());
    k.tasks
        .get_mut(&dk)
        .expect("adopted")
        .links
        .insert("eth0".into(), eth0);
    let ops = plan(&k, &d).unwrap();
    assert!(
        !ops.iter().any(|o| matches!(o,
            Op::AddAddress { ns, link, addr } | Op::DeleteAddress { ns, link, addr }
                if *ns == tref && link == "eth0" && addr.is_ipv6())),
        "{ops:#?}"
    );
    assert!(ops.contains(&Op::AddAddress {
        ns: tref,
        link: "eth0".into(),
        addr: "10.0.9.7/24".parse().unwrap()
    }));
}

// ---------------------------------------------------------------- dual stack

/// `full()` with n1 dual-stack: fd00:9::/64 (gateway ::1), t1 and t2 with
/// an IPv6 address there, remote r1 with one (r2 IPv4 only), and on
/// n1 service web with an IPv6 VIP too.
mod dual_stack;
