//! Planner tests of the WireGuard and guard ops, against the fake kernel
//! ([`crate::fake::simulate`]): pure, no root. The batched device's kernel
//! tests (root) are in [`device`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::fake::simulate;
use crate::model::names::WG_DEVICE;
use crate::model::{DesiredNode, OverlayNet, RemoteEndpoint, WgConfig, WgPeer};
use crate::plan::{NsRef, Observed, Op, PlanError, plan};

fn key(b: u8) -> String {
    STANDARD.encode([b; 32])
}

fn desired() -> DesiredNode {
    let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
    for (id, vni) in [("enc", 10), ("plain", 11)] {
        d.networks.insert(
            id.into(),
            OverlayNet {
                subnet6: None,
                local: false,
                vni,
                subnet: format!("10.{vni}.0.0/24").parse().unwrap(),
                gateway: format!("10.{vni}.0.1").parse().unwrap(),
                mtu: 1370,
                internal: true,
                remote: BTreeMap::from([(
                    "e".into(),
                    RemoteEndpoint {
                        ip6: None,
                        ip: format!("10.{vni}.0.9").parse().unwrap(),
                        mac: "02:42:0a:00:00:09".parse().unwrap(),
                        vtep: "10.255.0.2".parse().unwrap(),
                    },
                )]),
                name: String::new(),
                services: BTreeMap::new(),
                names: BTreeMap::new(),
            },
        );
    }
    d.wireguard = Some(WgConfig {
        listen_port: 51820,
        private_key_path: "/var/lib/weft/wg.key".into(),
        tunnel_addr: "10.255.0.1/24".parse().unwrap(),
        mtu: 1420,
        keepalive: 25,
        networks: BTreeSet::from(["enc".into()]),
        peers: BTreeMap::from([(
            "n2".into(),
            WgPeer {
                public_key: key(2),
                endpoint: "198.18.0.2:51820".parse().unwrap(),
                tunnel_ip: "10.255.0.2".parse().unwrap(),
            },
        )]),
    });
    d.vxlan_allowed_sources = Some(BTreeSet::from([
        "198.18.0.1".parse().unwrap(),
        "198.18.0.2".parse().unwrap(),
    ]));
    d
}

fn kernel() -> Observed {
    Observed {
        wg_key: Some(key(1)),
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
    ops.iter().position(f).unwrap_or_else(|| panic!("{ops:#?}"))
}

#[test]
fn fresh_node_creates_device_address_peers_and_guard() {
    let d = desired();
    let mut k = kernel();
    let ops = converge(&mut k, &d);
    let create = pos(&ops, |o| matches!(o, Op::CreateWg { mtu: 1420, .. }));
    let vx = pos(&ops, |o| matches!(o, Op::CreateVxlan { .. }));
    let addr = pos(&ops, |o| {
        *o == Op::AddAddress {
            ns: NsRef::Host,
            link: WG_DEVICE.into(),
            addr: "10.255.0.1/24".parse().unwrap(),
        }
    });
    let up = pos(&ops, |o| {
        *o == Op::SetUp {
            ns: NsRef::Host,
            link: WG_DEVICE.into(),
        }
    });
    let peer = pos(&ops, |o| {
        *o == Op::AddWgPeer {
            public_key: key(2),
            endpoint: "198.18.0.2:51820".parse().unwrap(),
            allowed_ips: vec!["10.255.0.2/32".parse().unwrap()],
            keepalive: Some(25),
        }
    });
    assert!(
        create < vx && create < addr && addr < peer && up < peer,
        "{ops:#?}"
    );
    pos(&ops, |o| matches!(o, Op::ApplyGuard { rules: true, .. }));
    // The encrypted network's VXLAN uses the tunnel address, the plain one
    // the underlay address.
    let local = |vni| {
        ops.iter().find_map(|o| match o {
            Op::CreateVxlan { vni: v, local, .. } if *v == vni => Some(*local),
            _ => None,
        })
    };
    assert_eq!(local(10), Some("10.255.0.1".parse::<IpAddr>().unwrap()));
    assert_eq!(local(11), Some("198.18.0.1".parse::<IpAddr>().unwrap()));
}

#[test]
fn changed_peer_is_removed_then_added() {
    let mut d = desired();
    let mut k = kernel();
    converge(&mut k, &d);
    let wg = d.wireguard.as_mut().unwrap();
    wg.peers.get_mut("n2").unwrap().endpoint = "198.18.0.22:51820".parse().unwrap();
    wg.peers.insert(
        "n3".into(),
        WgPeer {
            public_key: key(3),
            endpoint: "198.18.0.3:51820".parse().unwrap(),
            tunnel_ip: "10.255.0.3".parse().unwrap(),
        },
    );
    let ops = converge(&mut k, &d);
    assert_eq!(ops.len(), 3, "{ops:#?}");
    assert_eq!(ops[0], Op::RemoveWgPeer { public_key: key(2) });
    assert!(matches!(&ops[1], Op::AddWgPeer { public_key, .. } if *public_key == key(2)));
    assert!(matches!(&ops[2], Op::AddWgPeer { public_key, .. } if *public_key == key(3)));
    d.wireguard.as_mut().unwrap().peers.remove("n2");
    assert_eq!(
        converge(&mut k, &d),
        vec![Op::RemoveWgPeer { public_key: key(2) }]
    );
}

#[test]
fn new_key_file_rekeys_the_running_device() {
    let d = desired();
    let mut k = kernel();
    converge(&mut k, &d);
    k.wg_key = Some(key(9));
    assert_eq!(
        converge(&mut k, &d),
        vec![Op::SetWgKey {
            private_key_path: "/var/lib/weft/wg.key".into()
        }]
    );
}

#[test]
fn lost_device_is_recreated_with_its_peers() {
    let d = desired();
    let mut k = kernel();
    converge(&mut k, &d);
    // A restart: the TUN went with the process, nothing else did.
    k.wg = None;
    k.host.links.remove(WG_DEVICE);
    let ops = converge(&mut k, &d);
    assert!(matches!(ops[0], Op::CreateWg { .. }), "{ops:#?}");
    assert!(ops.iter().any(|o| matches!(o, Op::AddWgPeer { .. })));
    assert!(!ops.iter().any(|o| matches!(o, Op::CreateVxlan { .. })));
    // A changed port recreates it too.
    let mut d2 = d.clone();
    d2.wireguard.as_mut().unwrap().listen_port = 51821;
    let ops = converge(&mut k, &d2);
    assert_eq!(ops[0], Op::DeleteWg);
    assert!(matches!(
        ops[1],
        Op::CreateWg {
            listen_port: 51821,
            ..
        }
    ));
}

/// After a daemon restart the interface is still there (the fd store kept
/// its TAP) but no device runs in this process: CreateWg (which adopts
/// it) and the peers, nothing torn down; unwanted by then, it goes.
#[test]
fn kept_device_is_adopted_or_deleted_after_a_restart() {
    let d = desired();
    let mut k = kernel();
    converge(&mut k, &d);
    k.wg = None;
    let ops = plan(&k, &d).unwrap();
    assert!(matches!(ops[0], Op::CreateWg { .. }), "{ops:#?}");
    assert!(ops.iter().any(|o| matches!(o, Op::AddWgPeer { .. })));
    assert!(
        !ops.iter().any(|o| matches!(
            o,
            Op::DeleteWg | Op::DeleteLink { .. } | Op::CreateVxlan { .. }
        )),
        "{ops:#?}"
    );
    let mut gone = d.clone();
    gone.wireguard = None;
    let ops = plan(&k, &gone).unwrap();
    assert!(ops.contains(&Op::DeleteWg), "{ops:#?}");
}

#[test]
fn unwanted_device_and_guard_go_and_vteps_return_to_underlay() {
    let mut d = desired();
    let mut k = kernel();
    converge(&mut k, &d);
    d.wireguard = None;
    d.vxlan_allowed_sources = None;
    let ops = converge(&mut k, &d);
    assert!(ops.contains(&Op::DeleteWg), "{ops:#?}");
    assert!(ops.contains(&Op::DeleteGuard), "{ops:#?}");
    // The encrypted network's VXLAN device is rebuilt on the underlay VTEP.
    assert!(ops.iter().any(|o| matches!(
        o,
        Op::CreateVxlan { vni: 10, local, .. } if *local == "198.18.0.1".parse::<IpAddr>().unwrap()
    )));
}

#[test]
fn guard_membership_change_keeps_rules() {
    let mut d = desired();
    let mut k = kernel();
    converge(&mut k, &d);
    d.vxlan_allowed_sources
        .as_mut()
        .unwrap()
        .insert("198.18.0.3".parse().unwrap());
    let ops = converge(&mut k, &d);
    assert!(
        matches!(&ops[..], [Op::ApplyGuard { rules: false, .. }]),
        "{ops:#?}"
    );
    d.vxlan_port = 4790;
    let ops = converge(&mut k, &d);
    assert!(
        ops.iter().any(|o| matches!(
            o,
            Op::ApplyGuard {
                rules: true,
                port: 4790,
                ..
            }
        )),
        "{ops:#?}"
    );
}

#[test]
fn bad_wireguard_configs_are_refused() {
    let k = kernel();
    let mut d = desired();
    d.wireguard
        .as_mut()
        .unwrap()
        .peers
        .get_mut("n2")
        .unwrap()
        .public_key = "nope".into();
    assert!(matches!(
        plan(&k, &d),
        Err(PlanError::InvalidWireguard { .. })
    ));
    let mut d = desired();
    let wg = d.wireguard.as_mut().unwrap();
    let mut twin = wg.peers["n2"].clone();
    twin.tunnel_ip = "10.255.0.7".parse().unwrap();
    wg.peers.insert("n7".into(), twin);
    assert!(matches!(
        plan(&k, &d),
        Err(PlanError::InvalidWireguard { .. })
    ));
    let mut d = desired();
    d.wireguard
        .as_mut()
        .unwrap()
        .networks
        .insert("ghost".into());
    assert!(matches!(
        plan(&k, &d),
        Err(PlanError::InvalidWireguard { .. })
    ));
}

#[test]
fn older_configs_without_wireguard_still_parse() {
    let d = desired();
    let j = serde_json::to_value(&d).unwrap();
    let back: DesiredNode = serde_json::from_value(j.clone()).unwrap();
    assert_eq!(back, d);
    let mut old = j;
    let o = old.as_object_mut().unwrap();
    o.remove("wireguard");
    o.remove("vxlan_allowed_sources");
    let old: DesiredNode = serde_json::from_value(old).unwrap();
    assert!(old.wireguard.is_none() && old.vxlan_allowed_sources.is_none());
    // mtu, keepalive, networks and peers have defaults.
    let mut w = serde_json::to_value(d.wireguard.as_ref().unwrap()).unwrap();
    let o = w.as_object_mut().unwrap();
    for k in ["mtu", "keepalive", "networks", "peers"] {
        o.remove(k);
    }
    let w: WgConfig = serde_json::from_value(w).unwrap();
    assert_eq!((w.mtu, w.keepalive), (1440, 25));
}

#[test]
fn device_kind_defaults_to_batched() {
    use crate::wg::DeviceKind;
    assert_eq!(DeviceKind::from_env_value(None), DeviceKind::Batched);
    assert_eq!(DeviceKind::from_env_value(Some("")), DeviceKind::Batched);
    assert_eq!(
        DeviceKind::from_env_value(Some("batched")),
        DeviceKind::Batched
    );
    assert_eq!(DeviceKind::from_env_value(Some("stock")), DeviceKind::Stock);
    assert_eq!(
        DeviceKind::from_env_value(Some("boringtun ")),
        DeviceKind::Stock
    );
}

#[cfg(target_os = "linux")]
mod device;
