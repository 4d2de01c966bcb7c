//! `Netlink`: links, veth across namespaces, VXLAN create-and-move, FDB and
//! neighbour entries, addresses and routes — each checked with `ip`/`bridge`.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_overlay::linux::{Error, LinkKind, MacAddr, Netlink, Netns, VethSpec, VxlanSpec};

use crate::common::{RunDir, bridge, has_flag, ip, ip_addrs, ip_link, require_root};

fn veth(name: &str, peer: &str) -> VethSpec {
    VethSpec {
        name: name.into(),
        peer_name: peer.into(),
        mtu: None,
        mac: None,
        peer_mac: None,
    }
}

#[tokio::test]
async fn bridge_create_is_idempotent_and_typed() {
    require_root!();
    let run = RunDir::new();
    let ns = run.netns("b");
    let nl = Netlink::open(&ns).unwrap();

    nl.create_bridge("br-test", Some(1400)).await.unwrap();
    let l = ip_link(ns.path(), "br-test").expect("bridge exists");
    assert_eq!(l["linkinfo"]["info_kind"], "bridge");
    assert_eq!(l["mtu"], 1400);
    assert!(!has_flag(&l, "UP"));

    // Again, with another MTU: success, MTU converged.
    nl.create_bridge("br-test", Some(1300)).await.unwrap();
    assert_eq!(ip_link(ns.path(), "br-test").unwrap()["mtu"], 1300);

    nl.set_up("br-test").await.unwrap();
    assert!(has_flag(&ip_link(ns.path(), "br-test").unwrap(), "UP"));
    nl.set_down("br-test").await.unwrap();
    assert!(!has_flag(&ip_link(ns.path(), "br-test").unwrap(), "UP"));

    // A name taken by another kind is a typed error.
    nl.create_veth(&veth("v-a", "v-b"), &nl).await.unwrap();
    match nl.create_bridge("v-a", None).await {
        Err(Error::LinkKindMismatch { wanted, found, .. }) => {
            assert_eq!(wanted, LinkKind::Bridge);
            assert_eq!(found, LinkKind::Veth);
        }
        other => panic!("expected kind mismatch, got {other:?}"),
    }
    assert!(matches!(
        nl.create_bridge("name-that-is-too-long", None).await,
        Err(Error::InvalidLinkName { .. })
    ));

    // The library's own view agrees.
    let links = nl.list_links(Some("br-")).await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].kind, LinkKind::Bridge);
    assert_eq!(links[0].mtu, Some(1300));

    nl.delete_link("br-test").await.unwrap();
    assert!(ip_link(ns.path(), "br-test").is_none());
    nl.delete_link("br-test").await.unwrap();
    assert!(matches!(
        nl.set_up("br-test").await,
        Err(Error::LinkNotFound { .. })
    ));
}

#[tokio::test]
async fn veth_peer_lands_in_other_namespace() {
    require_root!();
    let run = RunDir::new();
    let a = run.netns("a");
    let b = run.netns("b");
    let na = Netlink::open(&a).unwrap();
    let nb = Netlink::open(&b).unwrap();
    let mac: MacAddr = "02:42:c6:12:00:07".parse().unwrap();
    let spec = VethSpec {
        name: "va0".into(),
        peer_name: "eth0".into(),
        mtu: Some(1450),
        mac: None,
        peer_mac: Some(mac),
    };
    na.create_veth(&spec, &nb).await.unwrap();
    na.create_veth(&spec, &nb).await.unwrap();

    let la = ip_link(a.path(), "va0").expect("local end in a");
    let lb = ip_link(b.path(), "eth0").expect("peer end in b");
    assert!(ip_link(a.path(), "eth0").is_none());
    assert_eq!(la["linkinfo"]["info_kind"], "veth");
    assert_eq!(lb["linkinfo"]["info_kind"], "veth");
    assert_eq!(la["mtu"], 1450);
    assert_eq!(lb["mtu"], 1450);
    assert_eq!(lb["address"], "02:42:c6:12:00:07");
    // Each end's IFLA_LINK names the other's index.
    assert_eq!(la["link_index"], lb["ifindex"]);

    // Enslave, set MAC and MTU, bring up: all visible to `ip`.
    na.create_bridge("br0", None).await.unwrap();
    na.set_master("va0", Some("br0")).await.unwrap();
    assert_eq!(ip_link(a.path(), "va0").unwrap()["master"], "br0");
    na.set_master("va0", None).await.unwrap();
    assert!(ip_link(a.path(), "va0").unwrap().get("master").is_none());
    na.set_mac("va0", "02:00:00:00:00:01".parse().unwrap())
        .await
        .unwrap();
    na.set_mtu("va0", 1400).await.unwrap();
    na.set_up("va0").await.unwrap();
    let la = ip_link(a.path(), "va0").unwrap();
    assert_eq!(la["address"], "02:00:00:00:00:01");
    assert_eq!(la["mtu"], 1400);
    assert!(has_flag(&la, "UP"));

    // A name clash in the peer namespace is reported, not papered over.
    na.create_bridge("vx-clash", None).await.unwrap();
    let clash = na.create_veth(&veth("vb0", "vx-clash"), &na).await;
    assert!(
        matches!(clash, Err(Error::LinkShapeMismatch { .. })),
        "{clash:?}"
    );

    // Deleting one end removes both.
    na.delete_link("va0").await.unwrap();
    assert!(ip_link(a.path(), "va0").is_none());
    assert!(ip_link(b.path(), "eth0").is_none());
}

#[tokio::test]
async fn vxlan_is_created_in_one_namespace_with_its_socket_in_another() {
    require_root!();
    let run = RunDir::new();
    // A test "host" namespace stands in for the real host namespace.
    let host = run.netns("host");
    let net = run.netns("net");
    let nh = Netlink::open(&host).unwrap();
    let nn = Netlink::open(&net).unwrap();
    nh.create_veth(&veth("u0", "u1"), &nh).await.unwrap();
    nh.add_address("u0", "198.18.7.1/24".parse().unwrap())
        .await
        .unwrap();
    nh.set_up("u0").await.unwrap();

    let spec = VxlanSpec {
        name: "vx-t1".into(),
        vni: 4097,
        port: 4789,
        local: "198.18.7.1".parse().unwrap(),
        underlay_dev: Some("u0".into()),
        mtu: Some(1450),
        mac: Some("02:42:00:00:10:01".parse().unwrap()),
        proxy: true,
    };
    nh.create_vxlan(&spec, &nn).await.unwrap();
    // Second call: already there with the same shape.
    nh.create_vxlan(&spec, &nn).await.unwrap();

    assert!(ip_link(host.path(), "vx-t1").is_none(), "moved out of host");
    let l = ip_link(net.path(), "vx-t1").expect("vxlan in net");
    let d = &l["linkinfo"]["info_data"];
    assert_eq!(l["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(d["id"], 4097);
    assert_eq!(d["port"], 4789);
    assert_eq!(d["local"], "198.18.7.1");
    assert_eq!(d["learning"], false);
    assert_eq!(d["proxy"], true);
    assert_eq!(l["mtu"], 1450);
    assert_eq!(l["address"], "02:42:00:00:10:01");

    // The library reads the same shape back.
    let got = nn.require_link("vx-t1").await.unwrap();
    let vx = got.vxlan.unwrap();
    assert_eq!(
        (vx.vni, vx.port, vx.learning, vx.proxy),
        (Some(4097), Some(4789), Some(false), Some(true))
    );

    // Another VNI under the same name is a typed mismatch.
    let other = VxlanSpec {
        vni: 4098,
        ..spec.clone()
    };
    match nh.create_vxlan(&other, &nn).await {
        Err(Error::LinkShapeMismatch { field, .. }) => assert_eq!(field, "vni"),
        r => panic!("expected mismatch, got {r:?}"),
    }

    // Enslave to a bridge in the network namespace and bring it up.
    nn.create_bridge("br0", None).await.unwrap();
    nn.set_master("vx-t1", Some("br0")).await.unwrap();
    nn.set_up("vx-t1").await.unwrap();
    let l = ip_link(net.path(), "vx-t1").unwrap();
    assert_eq!(l["master"], "br0");
    assert!(has_flag(&l, "UP"));
    // Up, the device has its UDP socket, bound in the namespace it was
    // made from (the underlay), not in the one it lives in.
    assert!(udp_port_bound(&host, 4789), "the VXLAN socket is in host");
    assert!(!udp_port_bound(&net, 4789), "no VXLAN socket in net");

    let mac: MacAddr = "02:42:0a:00:09:05".parse().unwrap();
    vxlan_fdb_entries(&nn, &net, mac).await;
    vxlan_neighbours(&nn, &net, mac).await;
}

/// FDB on the VXLAN device "vx-t1" of `net`: static MAC -> VTEP, and two
/// appended flood entries; the library's list agrees; deletions.
async fn vxlan_fdb_entries(nn: &Netlink, net: &Netns, mac: MacAddr) {
    let r1: IpAddr = "198.18.7.2".parse().unwrap();
    let r2: IpAddr = "198.18.7.3".parse().unwrap();
    nn.replace_fdb("vx-t1", mac, r1).await.unwrap();
    nn.replace_fdb("vx-t1", mac, r2).await.unwrap(); // replace moves it
    nn.append_flood_fdb("vx-t1", r1).await.unwrap();
    nn.append_flood_fdb("vx-t1", r2).await.unwrap();
    nn.append_flood_fdb("vx-t1", r2).await.unwrap(); // idempotent
    let fdb = bridge(net.path(), &["fdb", "show", "dev", "vx-t1"]);
    let entries: Vec<(String, String)> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("dst").is_some())
        .map(|e| {
            (
                e["mac"].as_str().unwrap().to_owned(),
                e["dst"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = |m: &str, d: &str| (m.to_owned(), d.to_owned());
    assert!(
        entries.contains(&want("02:42:0a:00:09:05", "198.18.7.3")),
        "{entries:?}"
    );
    assert!(
        !entries.contains(&want("02:42:0a:00:09:05", "198.18.7.2")),
        "{entries:?}"
    );
    assert!(
        entries.contains(&want("00:00:00:00:00:00", "198.18.7.2")),
        "{entries:?}"
    );
    assert!(
        entries.contains(&want("00:00:00:00:00:00", "198.18.7.3")),
        "{entries:?}"
    );
    assert_eq!(entries.len(), 3, "{entries:?}");
    let perm = fdb
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == "02:42:0a:00:09:05")
        .unwrap();
    assert_eq!(perm["state"], "permanent");

    // The library's list agrees; delete one flood entry and the MAC.
    assert_eq!(
        nn.list_fdb("vx-t1")
            .await
            .unwrap()
            .iter()
            .filter(|e| e.remote.is_some())
            .count(),
        3
    );
    nn.delete_fdb("vx-t1", MacAddr::ZERO, Some(r1))
        .await
        .unwrap();
    nn.delete_fdb("vx-t1", mac, None).await.unwrap();
    nn.delete_fdb("vx-t1", mac, None).await.unwrap(); // absent: fine
    let fdb = bridge(net.path(), &["fdb", "show", "dev", "vx-t1"]);
    let dsts: Vec<&str> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("dst").and_then(|d| d.as_str()))
        .collect();
    assert_eq!(dsts, vec!["198.18.7.3"]);
}

/// Neighbours on the VXLAN device "vx-t1" of `net`: IP -> MAC, permanent,
/// replaceable, deletable.
async fn vxlan_neighbours(nn: &Netlink, net: &Netns, mac: MacAddr) {
    let ip10: IpAddr = "10.0.9.5".parse().unwrap();
    nn.replace_neigh("vx-t1", ip10, mac).await.unwrap();
    nn.replace_neigh("vx-t1", ip10, "02:42:0a:00:09:06".parse().unwrap())
        .await
        .unwrap();
    let neigh = ip(net.path(), &["neigh", "show", "dev", "vx-t1"]);
    let n = &neigh.as_array().unwrap()[0];
    assert_eq!(n["dst"], "10.0.9.5");
    assert_eq!(n["lladdr"], "02:42:0a:00:09:06");
    assert!(
        n["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "PERMANENT")
    );
    // The library's list agrees (the kernel may add NOARP multicast
    // entries of its own, hence the filter on permanent ones).
    let permanent: Vec<_> = nn
        .list_neighs("vx-t1")
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.permanent)
        .collect();
    assert_eq!(permanent.len(), 1, "{permanent:?}");
    assert_eq!(permanent[0].ip, ip10);
    assert_eq!(permanent[0].mac, Some("02:42:0a:00:09:06".parse().unwrap()));
    nn.delete_neigh("vx-t1", ip10).await.unwrap();
    nn.delete_neigh("vx-t1", ip10).await.unwrap();
    assert!(
        ip(net.path(), &["neigh", "show", "dev", "vx-t1"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn vxlan_left_behind_before_the_move_is_adopted() {
    require_root!();
    let run = RunDir::new();
    let host = run.netns("host");
    let net = run.netns("net");
    let nh = Netlink::open(&host).unwrap();
    let nn = Netlink::open(&net).unwrap();
    let spec = VxlanSpec {
        name: "vx-t2".into(),
        vni: 77,
        port: 4790,
        local: "198.18.8.1".parse().unwrap(),
        underlay_dev: None,
        mtu: None,
        mac: None,
        proxy: false,
    };
    // Simulate a crash between create and move: create it in place first.
    nh.create_vxlan(&spec, &nh).await.unwrap();
    assert!(ip_link(host.path(), "vx-t2").is_some());
    nh.create_vxlan(&spec, &nn).await.unwrap();
    assert!(ip_link(host.path(), "vx-t2").is_none());
    let l = ip_link(net.path(), "vx-t2").unwrap();
    assert_eq!(l["linkinfo"]["info_data"]["port"], 4790);
    assert_eq!(l["linkinfo"]["info_data"]["id"], 77);
}

#[tokio::test]
async fn addresses_and_routes() {
    require_root!();
    let run = RunDir::new();
    let a = run.netns("a");
    let b = run.netns("b");
    let na = Netlink::open(&a).unwrap();
    let nb = Netlink::open(&b).unwrap();
    na.create_veth(&veth("eth0", "eth0"), &nb).await.unwrap();
    na.set_up("eth0").await.unwrap();
    nb.set_up("eth0").await.unwrap();

    let addr: IpNetwork = "198.18.9.1/24".parse().unwrap();
    na.add_address("eth0", addr).await.unwrap();
    na.add_address("eth0", addr).await.unwrap();
    na.add_address("eth0", "198.18.10.1/24".parse().unwrap())
        .await
        .unwrap();
    let got = ip_addrs(a.path(), "eth0");
    assert!(got.contains(&"198.18.9.1/24".to_owned()), "{got:?}");
    assert!(got.contains(&"198.18.10.1/24".to_owned()), "{got:?}");
    let lib: Vec<IpNetwork> = na.list_addresses("eth0").await.unwrap();
    assert!(lib.contains(&addr));

    na.replace_default_route("198.18.9.254".parse().unwrap(), None)
        .await
        .unwrap();
    na.replace_default_route("198.18.9.253".parse().unwrap(), Some("eth0"))
        .await
        .unwrap();
    na.replace_route("10.77.0.0/16".parse().unwrap(), None, Some("eth0"))
        .await
        .unwrap();
    na.replace_route(
        "10.78.0.0/16".parse().unwrap(),
        Some("198.18.9.9".parse().unwrap()),
        None,
    )
    .await
    .unwrap();
    let routes = ip(a.path(), &["route", "show"]);
    let find = |dst: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == dst)
            .cloned()
    };
    let def = find("default").expect("default route");
    assert_eq!(def["gateway"], "198.18.9.253");
    assert_eq!(def["dev"], "eth0");
    assert_eq!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["dst"] == "default")
            .count(),
        1
    );
    let onlink = find("10.77.0.0/16").expect("device route");
    assert_eq!(onlink["scope"], "link");
    assert_eq!(
        find("10.78.0.0/16").expect("gw route")["gateway"],
        "198.18.9.9"
    );

    na.delete_route("10.78.0.0/16".parse().unwrap())
        .await
        .unwrap();
    na.delete_route("10.78.0.0/16".parse().unwrap())
        .await
        .unwrap();
    let routes = ip(a.path(), &["route", "show"]);
    assert!(
        !routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "10.78.0.0/16")
    );

    na.delete_address("eth0", "198.18.10.1/24".parse().unwrap())
        .await
        .unwrap();
    assert!(!ip_addrs(a.path(), "eth0").contains(&"198.18.10.1/24".to_owned()));
    na.flush_addresses("eth0").await.unwrap();
    let left: Vec<String> = ip_addrs(a.path(), "eth0")
        .into_iter()
        .filter(|a| !a.starts_with("fe80:"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Whether a UDP socket is bound to `port` in `ns` (its /proc/net/udp, read
/// by a thread inside it:
/// the VXLAN device's socket is the kernel's, with no process).
fn udp_port_bound(ns: &Netns, port: u16) -> bool {
    let table = ns
        .run_in(|| std::fs::read_to_string("/proc/thread-self/net/udp"))
        .unwrap()
        .unwrap();
    let want = format!(":{port:04X} ");
    table.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|local| format!("{local} ").ends_with(&want))
    })
}
