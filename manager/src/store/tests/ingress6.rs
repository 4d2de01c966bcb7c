//! The routing mesh over IPv6: an ingress network with an IPv6 subnet.

use super::*;

fn set6(subnet: &str) -> Command {
    Command::UpdateClusterSettings {
        wg_key_rotation_secs: None,
        cert_expiry_secs: None,
        disconnect_grace_ms: None,
        ingress_subnet: None,
        ingress_subnet6: Some(subnet.parse().unwrap()),
    }
}

fn publish(id: &str) -> Command {
    Command::CreateService {
        id: id.into(),
        spec: ServiceSpec {
            ports: vec![PortRequest {
                mode: PublishMode::Ingress,
                ..tcp(9090, 80)
            }],
            ..crate::testing::spec(&format!("web-{id}"), 1, &[])
        },
        now_ms: 4,
    }
}

#[test]
fn an_ipv6_ingress_subnet_gives_every_node_an_ipv6_endpoint() {
    let mut s = with_bridges();
    // What is not a usable IPv6 subnet is refused and changes nothing.
    let before = s.clone();
    for (bad, why) in [
        ("fd00:ffff::1/64", "host bits"),
        ("fd00:ffff::/124", "out of range"),
        ("10.1.0.0/16", "not IPv6"),
        ("fd77:6566:7400::/64", "gateway bridges"),
        ("fe80::/64", "link-local"),
        ("ff02::/64", "multicast"),
        ("::/64", "reserved"),
    ] {
        let e = s.apply(&set6(bad)).unwrap_err();
        assert!(e.to_string().contains(why), "{bad}: {e}");
        assert_eq!(s, before, "{bad}");
    }
    s.apply(&set6("fd00:ffff::/64")).unwrap();
    let settings = &s.cluster.as_ref().unwrap().settings;
    assert_eq!(
        settings.ingress_subnet6,
        Some("fd00:ffff::/64".parse().unwrap())
    );
    // Kept free before the ingress network exists.
    let mut dual = net_spec("n1", "n1", Some("10.60.0.0/24"));
    dual.ipv6 = true;
    dual.subnet6 = Some("fd00:ffff::/80".parse().unwrap());
    let before = s.clone();
    let e = s
        .apply(&Command::CreateNetwork { spec: dual.clone() })
        .unwrap_err();
    assert!(e.to_string().contains("ingress IPv6 subnet"), "{e}");
    assert_eq!(s, before);
    // Nor may a network take the gateway bridges' range or a special one.
    for (subnet6, why) in [
        ("fd77:6566:7400:1::/64", "gateway bridges"),
        ("fe80::/64", "link-local"),
    ] {
        dual.subnet6 = Some(subnet6.parse().unwrap());
        let e = s
            .apply(&Command::CreateNetwork { spec: dual.clone() })
            .unwrap_err();
        assert!(e.to_string().contains(why), "{subnet6}: {e}");
        assert_eq!(s, before);
    }
    // The first publish makes it dual stack: both nodes get an endpoint of
    // each family.
    s.apply(&publish("s1")).unwrap();
    let net = s.ingress_network().unwrap().clone();
    let v6 = net.ipv6.as_ref().expect("an IPv6 subnet");
    assert_eq!(v6.subnet.to_string(), "fd00:ffff::/64");
    assert_eq!(net.node_endpoints6.len(), 2);
    assert!(
        net.node_endpoints6
            .values()
            .all(|ip| v6.subnet.contains(*ip))
    );
    assert!(!net.node_endpoints6.values().any(|ip| *ip == v6.gateway));
    // In use: refused, unchanged.
    let before = s.clone();
    let e = s.apply(&set6("fd00:fffe::/64")).unwrap_err();
    assert!(e.to_string().contains("web-s1"), "{e}");
    assert_eq!(s, before);
    // A node that joins later gets one too.
    s.apply(&Command::AddNode {
        node: node(3, Role::Worker, "w3"),
    })
    .unwrap();
    let net = s.ingress_network().unwrap();
    assert_eq!(net.node_endpoints6.len(), 3);
    let mine = net.node_endpoints6[&NodeId(3)];
    assert!(
        !net.node_endpoints6
            .iter()
            .any(|(n, ip)| *n != NodeId(3) && *ip == mine)
    );
}

#[test]
fn an_ipv6_ingress_subnet_waits_for_every_manager_at_0_2() {
    let mut s = initialised();
    let id = NodeId(1);
    s.nodes.get_mut(&id).unwrap().version = "0.1.0".into();
    let e = version_gate::check(&s, &set6("fd00:ffff::/64")).unwrap_err();
    assert!(e.contains("0.1.0"), "{e}");
    s.nodes.get_mut(&id).unwrap().version = "0.2.0".into();
    version_gate::check(&s, &set6("fd00:ffff::/64")).unwrap();
}
