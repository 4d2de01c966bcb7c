//! Planner tests of dual-stack and IPv6-only networks and IPv6 through the
//! gateway bridge (egress, published ports, router advertisements).

use super::*;

fn dual(base: &DesiredNode) -> DesiredNode {
    let mut d = with_services(base);
    let n1 = d.networks.get_mut(&NetworkId::from("n1")).unwrap();
    n1.subnet6 = Some(("fd00:9::/64".parse().unwrap(), ip("fd00:9::1")));
    n1.remote.get_mut(&"r1".into()).unwrap().ip6 = Some(ip("fd00:9::20"));
    let web = n1.services.get_mut("web").unwrap();
    web.vip6 = Some(ip("fd00:9::100"));
    web.backends.push(ip("fd00:9::20"));
    web.backends.push(ip("fd00:9::3"));
    for (t, a) in [("t1", "fd00:9::2/64"), ("t2", "fd00:9::3/64")] {
        d.tasks.get_mut(&TaskId::from(t)).unwrap().endpoints[0].ip6 = Some(a.parse().unwrap());
    }
    d
}

fn ipv6_only(base: &DesiredNode) -> DesiredNode {
    let mut d = base.clone();
    let n1 = d.networks.get_mut(&NetworkId::from("n1")).unwrap();
    n1.subnet = "fd00:a::/64".parse().unwrap();
    n1.gateway = ip("fd00:a::1");
    n1.remote.clear();
    n1.remote
        .insert("r1".into(), remote("fd00:a::20", 20, "198.18.0.2"));
    n1.services.insert(
        "web".into(),
        ServiceEntry {
            vip: Some(ip("fd00:a::100")),
            vip6: None,
            backends: vec![ip("fd00:a::20"), ip("fd00:a::2")],
        },
    );
    d.tasks.get_mut(&TaskId::from("t1")).unwrap().endpoints[0].ip = "fd00:a::2/64".parse().unwrap();
    d.tasks.get_mut(&TaskId::from("t2")).unwrap().endpoints[0].ip = "fd00:a::3/64".parse().unwrap();
    d
}

fn add_address(ns: NsRef, link: &str, addr: &str) -> Op {
    Op::AddAddress {
        ns,
        link: link.into(),
        addr: addr.parse().unwrap(),
    }
}

fn neigh(ip_: &str, m: u8) -> Op {
    Op::ReplaceNeigh {
        network: "n1".into(),
        link: names::vxlan(4096),
        ip: ip(ip_),
        mac: mac(m),
    }
}

#[test]
fn dual_stack_addresses_neighbours_and_vips_are_planned() {
    let d = dual(&full());
    let mut k = empty_kernel();
    let ops = converge(&mut k, &d);
    let n1 = NsRef::Network("n1".into());
    let t1 = NsRef::Task("t1".into());
    for op in [
        add_address(n1.clone(), NETWORK_BRIDGE, "10.0.9.1/24"),
        add_address(n1, NETWORK_BRIDGE, "fd00:9::1/64"),
        add_address(t1.clone(), "eth0", "10.0.9.2/24"),
        add_address(t1, "eth0", "fd00:9::2/64"),
        add_address(NsRef::Task("t2".into()), "eth0", "fd00:9::3/64"),
        // Both families of r1 to its one MAC; r2 has IPv4 only.
        neigh("10.0.9.20", 20),
        neigh("fd00:9::20", 20),
        neigh("10.0.9.21", 21),
    ] {
        assert!(ops.contains(&op), "{op:?} missing from {ops:#?}");
    }
    let v6_neighs = ops
        .iter()
        .filter(|o| matches!(o, Op::ReplaceNeigh { ip, .. } if ip.is_ipv6()))
        .count();
    assert_eq!(v6_neighs, 1, "{ops:#?}");
    // The IPv6 VIP balances over the IPv6 backends only, the IPv4 one over
    // the IPv4 ones.
    let vips = task_vips(&d, &"t1".into());
    assert_eq!(
        vips[&ip("fd00:9::100")],
        vec![ip("fd00:9::3"), ip("fd00:9::20")]
    );
    assert_eq!(
        vips[&ip("10.0.9.100")],
        vec![ip("10.0.9.20"), ip("10.0.9.21")]
    );
    assert!(ops.iter().any(|o| matches!(
        o,
        Op::ApplyLb { task, vips: v, flush }
            if task.as_str() == "t1" && *v == vips && flush.is_empty()
    )));
}

#[test]
fn dual_stack_drift_is_repaired_and_link_local_left_alone() {
    let d = dual(&full());
    let mut k = empty_kernel();
    converge(&mut k, &d);
    let t1 = TaskId::from("t1");
    let vx = names::vxlan(4096);
    // The kernel's own link-local addresses are not ours.
    for l in k.tasks.get_mut(&t1).unwrap().links.values_mut() {
        l.addrs.insert("fe80::42/64".parse().unwrap());
    }
    assert_eq!(plan(&k, &d).unwrap(), vec![]);
    // Removed by hand: the IPv6 address and neighbour come back; a stray
    // global IPv6 address goes.
    let eth0 = k.tasks.get_mut(&t1).unwrap().links.get_mut("eth0").unwrap();
    eth0.addrs.remove(&"fd00:9::2/64".parse().unwrap());
    eth0.addrs.insert("fd00:9::99/64".parse().unwrap());
    k.networks
        .get_mut(&NetworkId::from("n1"))
        .unwrap()
        .neighs
        .get_mut(&vx)
        .unwrap()
        .remove(&ip("fd00:9::20"));
    let ops = plan(&k, &d).unwrap();
    assert_eq!(
        ops,
        vec![
            Op::DeleteAddress {
                ns: NsRef::Task(t1.clone()),
                link: "eth0".into(),
                addr: "fd00:9::99/64".parse().unwrap(),
            },
            add_address(NsRef::Task(t1), "eth0", "fd00:9::2/64"),
            neigh("fd00:9::20", 20),
        ]
    );
    for op in &ops {
        simulate(&mut k, op);
    }
    assert_eq!(plan(&k, &d).unwrap(), vec![]);
    // Back to IPv4 only: the IPv6 addresses, neighbour and VIP go.
    let ops = converge(&mut k, &with_services(&full()));
    assert!(ops.contains(&Op::DeleteNeigh {
        network: "n1".into(),
        link: vx,
        ip: ip("fd00:9::20"),
    }));
    assert!(ops.contains(&Op::DeleteAddress {
        ns: NsRef::Network("n1".into()),
        link: NETWORK_BRIDGE.into(),
        addr: "fd00:9::1/64".parse().unwrap(),
    }));
    assert!(ops.iter().any(|o| matches!(
        o,
        Op::ApplyLb { task, vips, flush }
            if task.as_str() == "t1" && !vips.contains_key(&ip("fd00:9::100"))
                && flush.contains(&ip("fd00:9::100"))
    )));
}

#[test]
fn ipv6_only_network_goes_through_the_same_code() {
    let d = ipv6_only(&full());
    let mut k = empty_kernel();
    let ops = converge(&mut k, &d);
    assert!(ops.contains(&add_address(
        NsRef::Network("n1".into()),
        NETWORK_BRIDGE,
        "fd00:a::1/64"
    )));
    assert!(ops.contains(&neigh("fd00:a::20", 20)));
    assert_eq!(
        task_vips(&d, &"t1".into())[&ip("fd00:a::100")],
        vec![ip("fd00:a::2"), ip("fd00:a::20")]
    );
}

#[test]
fn dual_stack_transitions_converge_in_one_apply() {
    let base = full();
    let states = [
        base.clone(),
        with_services(&base),
        dual(&base),
        ipv6_only(&base),
        DesiredNode::new(base.vtep),
    ];
    for from in &states {
        for to in &states {
            let mut k = empty_kernel();
            converge(&mut k, from);
            converge(&mut k, to);
        }
    }
}

#[test]
fn bad_dual_stack_states_are_refused() {
    let check = |f: &dyn Fn(&mut DesiredNode), want: &str| {
        let mut d = dual(&full());
        f(&mut d);
        let e = plan(&empty_kernel(), &d).unwrap_err();
        assert!(format!("{e:?}").starts_with(want), "{e:?}");
    };
    check(
        &|d| {
            d.tasks.get_mut(&TaskId::from("t1")).unwrap().endpoints[0].ip6 =
                Some("fd00:8::2/64".parse().unwrap());
        },
        "AddressOutsideSubnet",
    );
    check(
        &|d| {
            d.networks.get_mut(&NetworkId::from("n1")).unwrap().subnet6 = None;
        },
        "NotDualStack",
    );
    check(
        &|d| {
            d.networks.get_mut(&NetworkId::from("n1")).unwrap().subnet6 =
                Some(("10.1.0.0/16".parse().unwrap(), ip("10.1.0.1")));
        },
        "NotDualStack",
    );
    check(
        &|d| {
            d.networks.get_mut(&NetworkId::from("n1")).unwrap().subnet6 =
                Some(("fd00:9::/64".parse().unwrap(), ip("fd00:8::1")));
        },
        "AddressOutsideSubnet",
    );
    check(
        &|d| {
            let n = d.networks.get_mut(&NetworkId::from("n1")).unwrap();
            n.remote.get_mut(&"r2".into()).unwrap().ip6 = Some(ip("fd00:7::21"));
        },
        "AddressOutsideSubnet",
    );
}

/// [`dual`] with IPv6 on the gateway bridge, as the worker derives it for
/// tasks with an IPv6 address.
fn dual_egress(base: &DesiredNode) -> DesiredNode {
    let mut d = dual(base);
    d.gateway = d.gateway.take().map(GatewayBridge::with_ipv6);
    for t in d.tasks.values_mut() {
        if let Some(g) = &mut t.gateway {
            g.ip6 = GatewayBridge::ipv6_of(g.ip);
        }
    }
    d
}

#[test]
fn ipv6_egress_gets_forwarding_nat66_and_a_default_route() {
    let d = dual_egress(&full());
    let gw = d.gateway.as_ref().unwrap();
    assert_eq!(
        gw.ipv6,
        Some((
            "fd77:6566:7400::ac12:0/112".parse().unwrap(),
            ip("fd77:6566:7400::ac12:1")
        ))
    );
    let mut k = empty_kernel();
    let ops = converge(&mut k, &d);
    let t1 = NsRef::Task("t1".into());
    for op in [
        Op::EnableIpv6Forwarding,
        add_address(NsRef::Host, GATEWAY_BRIDGE, "fd77:6566:7400::ac12:1/112"),
        add_address(t1.clone(), names::TASK_GW_IF, "fd77:6566:7400::ac12:2/112"),
        Op::ReplaceDefaultRoute {
            ns: t1.clone(),
            gateway: ip("fd77:6566:7400::ac12:1"),
            dev: names::TASK_GW_IF.into(),
        },
        Op::ReplaceDefaultRoute {
            ns: t1,
            gateway: ip("172.18.0.1"),
            dev: names::TASK_GW_IF.into(),
        },
        Op::ApplyNat {
            subnet: "172.18.0.0/16".parse().unwrap(),
            subnet6: Some("fd77:6566:7400::ac12:0/112".parse().unwrap()),
            bridge: GATEWAY_BRIDGE.into(),
        },
        Op::RefuseRa {
            link: GATEWAY_BRIDGE.into(),
        },
    ] {
        assert!(ops.contains(&op), "{op:?} missing from {ops:#?}");
    }
    // Forwarding before anything is forwarded.
    assert!(
        pos(&ops, |o| *o == Op::EnableIpv6Forwarding)
            < pos(&ops, |o| matches!(o, Op::ApplyNat { .. }))
    );
    // An IPv4-only node leaves IPv6 forwarding alone, but its gateway
    // bridge ignores router advertisements all the same.
    let ops = converge(&mut empty_kernel(), &full());
    assert!(!ops.contains(&Op::EnableIpv6Forwarding), "{ops:#?}");
    assert!(ops.contains(&Op::RefuseRa {
        link: GATEWAY_BRIDGE.into()
    }));
    // Someone turns router advertisements back on: turned off again, and
    // nothing else.
    k.ra_refused.remove(GATEWAY_BRIDGE);
    assert_eq!(
        plan(&k, &d).unwrap(),
        vec![Op::RefuseRa {
            link: GATEWAY_BRIDGE.into()
        }]
    );
    // The last IPv6 task gone: its IPv6 default route and address go, the
    // bridge's IPv6 address and NAT66 too; forwarding stays (as IPv4's).
    k.ra_refused.insert(GATEWAY_BRIDGE.into());
    let ops = converge(&mut k, &full());
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::DeleteRoute { dest, .. } if dest.is_ipv6())),
        "{ops:#?}"
    );
    assert!(ops.contains(&Op::ApplyNat {
        subnet: "172.18.0.0/16".parse().unwrap(),
        subnet6: None,
        bridge: GATEWAY_BRIDGE.into(),
    }));
    assert!(k.ipv6_forwarding);
}

#[test]
fn published_ports_reach_local_ipv6_backends() {
    let d = with_ports(&dual_egress(&full()));
    let t = ports_table(&d).unwrap();
    assert_eq!(
        t.hairpin6,
        Some("fd77:6566:7400::ac12:0/112".parse().unwrap())
    );
    let got: Vec<(u16, Vec<IpAddr>)> = t
        .rules
        .iter()
        .map(|r| (r.port, r.backends6.clone()))
        .collect();
    // 8080's local backend (t1) has an IPv6 address; the remote-only ports
    // stay IPv4 (the ingress network is).
    assert_eq!(
        got,
        vec![
            (8080, vec![ip("fd77:6566:7400::ac12:2")]),
            (9000, vec![]),
            (5353, vec![]),
        ]
    );
    let c = t.comments();
    assert!(
        c.iter().any(|c| c.starts_with("weft-ports:pre6:tcp/8080:")),
        "{c:?}"
    );
    assert!(!c.iter().any(|c| c.contains("6:tcp/9000")), "{c:?}");
    // And the whole table converges.
    converge(&mut empty_kernel(), &d);
    // An IPv4-only node: no IPv6 rules, no IPv6 hairpin.
    let t = ports_table(&with_ports(&full())).unwrap();
    assert_eq!(t.hairpin6, None);
    assert!(t.rules.iter().all(|r| r.backends6.is_empty()));
}

#[test]
fn a_dual_stack_ingress_network_reaches_remote_ipv6_backends() {
    let mut d = with_ports(&full());
    let ing = d.networks.get_mut(&NetworkId::from("ingress")).unwrap();
    ing.subnet6 = Some(("fd00:ff::/64".parse().unwrap(), ip("fd00:ff::1")));
    d.ingress.as_mut().unwrap().ip6 = Some("fd00:ff::2/64".parse().unwrap());
    for p in &mut d.ports {
        if p.remote.contains(&ip("10.0.255.9")) {
            p.remote.push(ip("fd00:ff::9"));
        }
    }
    let t = ports_table(&d).unwrap();
    let got: Vec<(u16, bool, Vec<IpAddr>)> = t
        .rules
        .iter()
        .map(|r| (r.port, r.remote, r.backends6.clone()))
        .collect();
    // 8080 has a local (IPv4-only) backend: it stays IPv4 only; the
    // remote-only ports get the remote IPv6 backend.
    assert_eq!(
        got,
        vec![
            (8080, false, vec![]),
            (9000, true, vec![ip("fd00:ff::9")]),
            (5353, true, vec![ip("fd00:ff::9")]),
        ]
    );
    let mut k = empty_kernel();
    let ops = converge(&mut k, &d);
    assert!(ops.contains(&Op::EnableIpv6Forwarding), "{ops:#?}");
    assert!(ops.contains(&add_address(NsRef::Host, INGRESS_IF, "fd00:ff::2/64")));
    assert!(ops.contains(&Op::RefuseRa {
        link: INGRESS_IF.into()
    }));
    // An IPv6 address outside the ingress network's IPv6 subnet, or on an
    // IPv4-only one, is refused.
    let mut bad = d.clone();
    bad.ingress.as_mut().unwrap().ip6 = Some("fd00:fe::2/64".parse().unwrap());
    assert!(plan(&k, &bad).is_err());
    let mut bad = d;
    bad.networks
        .get_mut(&NetworkId::from("ingress"))
        .unwrap()
        .subnet6 = None;
    assert!(plan(&k, &bad).is_err());
}
