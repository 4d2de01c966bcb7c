//! Encrypted overlays on real kernels: two or three underlay hosts act as
//! nodes, each `LinuxDataplane` runs its boringtun device `weft-wg0` in its
//! host's namespace. Checked from outside: counters in the underlay switch
//! (WireGuard UDP only, zero plaintext VXLAN for the encrypted network),
//! `ip -j` for the device and the VXLAN VTEPs, `nft -j` for the guard
//! table's counters, `stat` for the key file's mode.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_overlay::linux::{LinuxDataplane, Netns, Underlay};
use weft_overlay::plan::Op;
use weft_overlay::wg::keys;
use weft_overlay::{
    Dataplane, DesiredNode, LocalEndpoint, MacAddr, OverlayNet, RemoteEndpoint, TaskNet, WgConfig,
    WgPeer,
};

use crate::common::{RunDir, has_flag, ip_addrs, ip_link, nft_ruleset, nsenter, require_root};

const VXLAN_PORT: u16 = 4789;
const WG_PORT: u16 = 51820;

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0x0a, 0x1e, 0x00, i])
}

fn net(vni: u32, third: u8, mtu: u32) -> OverlayNet {
    OverlayNet {
        subnet6: None,
        local: false,
        vni,
        subnet: format!("10.{third}.0.0/24").parse().unwrap(),
        gateway: format!("10.{third}.0.1").parse().unwrap(),
        mtu,
        internal: true,
        remote: BTreeMap::new(),
        name: String::new(),
        services: BTreeMap::new(),
        names: BTreeMap::new(),
    }
}

/// Task `t<i>`: eth0 on "enc" (10.30.0.1i), eth1 on "plain" (10.31.0.1i).
fn task(i: u8) -> TaskNet {
    let ep = |network: &str, ifname: &str, third: u8, m: u8| LocalEndpoint {
        ip6: None,
        network: network.into(),
        ifname: ifname.into(),
        ip: format!("10.{third}.0.{}/24", 10 + i).parse().unwrap(),
        mac: mac(m),
    };
    TaskNet {
        netns: None,
        handover: false,
        resolver: None,
        endpoints: vec![ep("enc", "eth0", 30, i), ep("plain", "eth1", 31, 100 + i)],
        gateway: None,
    }
}

struct Node {
    vtep: IpAddr,
    tunnel: IpAddr,
    key_path: PathBuf,
    public_key: String,
}

/// Node `me` with task `t<i>` and the other node's task as remote
/// endpoints: on "enc" at its tunnel address, on "plain" at its underlay
/// address.
fn desired(me: &Node, i: u8, other: &Node, j: u8, peer: bool) -> DesiredNode {
    let mut d = DesiredNode::new(me.vtep);
    d.vxlan_port = VXLAN_PORT;
    let mut enc = net(5001, 30, 1370);
    enc.remote.insert(
        format!("e{j}").as_str().into(),
        RemoteEndpoint {
            ip6: None,
            ip: format!("10.30.0.{}", 10 + j).parse().unwrap(),
            mac: mac(j),
            vtep: other.tunnel,
        },
    );
    let mut plain = net(5002, 31, 1450);
    plain.remote.insert(
        format!("p{j}").as_str().into(),
        RemoteEndpoint {
            ip6: None,
            ip: format!("10.31.0.{}", 10 + j).parse().unwrap(),
            mac: mac(100 + j),
            vtep: other.vtep,
        },
    );
    d.networks.insert("enc".into(), enc);
    d.networks.insert("plain".into(), plain);
    d.tasks.insert(format!("t{i}").as_str().into(), task(i));
    let mut peers = BTreeMap::new();
    if peer {
        peers.insert(
            format!("node{j}"),
            WgPeer {
                public_key: other.public_key.clone(),
                endpoint: SocketAddr::new(other.vtep, WG_PORT),
                tunnel_ip: other.tunnel,
            },
        );
    }
    d.wireguard = Some(WgConfig {
        listen_port: WG_PORT,
        private_key_path: me.key_path.clone(),
        tunnel_addr: ipnetwork::IpNetwork::new(me.tunnel, 24).unwrap(),
        mtu: 1420,
        keepalive: 25,
        networks: BTreeSet::from(["enc".into()]),
        peers,
    });
    d.vxlan_allowed_sources = Some(BTreeSet::from([me.vtep, other.vtep]));
    d
}

fn ops_of(r: weft_overlay::Result<weft_overlay::ApplyReport>) -> Vec<Op> {
    match r {
        Ok(r) => r.ops,
        Err(e) => panic!("apply failed: {e}"),
    }
}

/// Packets counted by the rule with `comment` in `ns`'s ruleset.
fn counter(ns: &Path, comment: &str) -> u64 {
    let rs = nft_ruleset(ns);
    for o in rs["nftables"].as_array().unwrap() {
        if o["rule"]["comment"] == comment {
            for e in o["rule"]["expr"].as_array().unwrap() {
                if let Some(p) = e["counter"]["packets"].as_u64() {
                    return p;
                }
            }
        }
    }
    panic!("no counter {comment} in {rs}");
}

/// Counts UDP by destination port on the underlay switch.
fn count_in_switch(sw: &Path, ports: &[(u16, &str)]) {
    nsenter(sw, &["nft", "add", "table", "bridge", "probe"]);
    nsenter(
        sw,
        &[
            "nft",
            "add chain bridge probe cnt { type filter hook forward priority 0; }",
        ],
    );
    for (port, name) in ports {
        nsenter(
            sw,
            &[
                "nft",
                &format!("add rule bridge probe cnt udp dport {port} counter comment \"{name}\""),
            ],
        );
    }
}

fn listen(ns: &Netns, ip: &str) -> TcpListener {
    let ip: IpAddr = ip.parse().unwrap();
    ns.run_in(move || TcpListener::bind((ip, 0)).unwrap())
        .unwrap()
}

/// A TCP connection from `client` to a listener in `server` at `ip`: the
/// client stream and the accepted server stream.
fn connect(client: &Netns, server: &Netns, ip: &str) -> (TcpStream, TcpStream) {
    let l = listen(server, ip);
    let target = SocketAddr::new(ip.parse().unwrap(), l.local_addr().unwrap().port());
    let c = client
        .run_in(|| TcpStream::connect_timeout(&target, Duration::from_secs(10)))
        .unwrap()
        .unwrap_or_else(|e| panic!("connect {target}: {e}"));
    let (s, _) = l.accept().unwrap();
    for st in [&c, &s] {
        st.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    (c, s)
}

/// Sends `n` bytes each way over an established connection.
fn ping_pong(c: &mut TcpStream, s: &mut TcpStream, n: usize) {
    let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
    let mut got = vec![0u8; n];
    std::thread::scope(|sc| {
        sc.spawn(|| c.write_all(&data).unwrap());
        s.read_exact(&mut got).unwrap();
    });
    assert_eq!(got, data);
    std::thread::scope(|sc| {
        sc.spawn(|| s.write_all(&data).unwrap());
        c.read_exact(&mut got).unwrap();
    });
    assert_eq!(got, data);
}

fn cannot_connect(client: &Netns, to: &str) -> bool {
    let target = SocketAddr::new(to.parse().unwrap(), 9);
    client
        .run_in(|| {
            matches!(
                TcpStream::connect_timeout(&target, Duration::from_millis(1500)),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock
            )
        })
        .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn node(root: &Path, vtep: IpAddr, tunnel: &str) -> Node {
    let key_path = root.join("wg/private.key");
    let key = keys::load_or_generate(&key_path).unwrap();
    Node {
        vtep,
        tunnel: tunnel.parse().unwrap(),
        key_path,
        public_key: key.public_key(),
    }
}

/// Only root reads the private key file.
fn key_is_private(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Node 1's WireGuard TUN (address, MTU, up) in its namespace, and its
/// encrypted network's VXLAN device on the tunnel address (the plain one on
/// the underlay address), read with `ip`.
fn wg_objects(h1: &weft_overlay::linux::topology::UnderlayHost, root1: &Path) {
    let h1p = h1.netns().path();
    let wg = ip_link(h1p, "weft-wg0").expect("weft-wg0 in the node's namespace");
    assert_eq!(wg["linkinfo"]["info_kind"], "tun", "{wg}");
    assert_eq!(wg["mtu"].as_u64(), Some(1420));
    assert!(has_flag(&wg, "UP"));
    assert!(ip_addrs(h1p, "weft-wg0").contains(&"10.255.0.1/24".to_owned()));
    let netns1 = root1.join("netns");
    let enc_vx = ip_link(&netns1.join("net-enc"), "weft-vx5001").unwrap();
    assert_eq!(enc_vx["linkinfo"]["info_data"]["local"], "10.255.0.1");
    let plain_vx = ip_link(&netns1.join("net-plain"), "weft-vx5002").unwrap();
    assert_eq!(
        plain_vx["linkinfo"]["info_data"]["local"],
        h1.addr().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_network_travels_inside_wireguard() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "wg",
        "198.18.44.0/24".parse().unwrap(),
        &["h1", "h2"],
    )
    .await
    .unwrap();
    let (h1, h2) = (u.host("h1").unwrap(), u.host("h2").unwrap());
    let sw = u.switch().path().to_owned();
    count_in_switch(&sw, &[(WG_PORT, "wg"), (VXLAN_PORT, "vx")]);
    let (root1, root2) = (run.path().join("node1"), run.path().join("node2"));
    let n1 = node(&root1, IpAddr::V4(h1.addr()), "10.255.0.1");
    let n2 = node(&root2, IpAddr::V4(h2.addr()), "10.255.0.2");
    let d1 = desired(&n1, 1, &n2, 2, true);
    let d2 = desired(&n2, 2, &n1, 1, true);
    let mut dp1 = LinuxDataplane::new(&root1, h1.netns().clone());
    let dp2 = LinuxDataplane::new(&root2, h2.netns().clone());

    // The private key never leaves the node and only root reads it.
    key_is_private(&n1.key_path);

    let ops = ops_of(dp1.apply(&d1).await);
    for want in ["CreateWg", "AddWgPeer"] {
        let made = ops.iter().any(|o| format!("{o:?}").starts_with(want));
        assert!(made, "{want} in {ops:?}");
    }
    ops_of(dp2.apply(&d2).await);
    assert_eq!(ops_of(dp1.apply(&d1).await), vec![], "idempotent");
    assert_eq!(ops_of(dp2.apply(&d2).await), vec![], "idempotent");

    // Independent view: the TUN with its address and MTU, up, in the
    // node's namespace; the encrypted VXLAN uses the tunnel address.
    let h1p = h1.netns().path();
    wg_objects(h1, &root1);

    // TCP on the encrypted network: only WireGuard on the underlay.
    let t1 = Netns::open(dp1.task_netns(&"t1".into())).unwrap();
    let t2 = Netns::open(dp2.task_netns(&"t2".into())).unwrap();
    let wg_before = counter(&sw, "wg");
    let (mut c, mut s) = connect(&t1, &t2, "10.30.0.12");
    ping_pong(&mut c, &mut s, 200_000);
    assert!(
        counter(&sw, "wg") > wg_before,
        "WireGuard UDP on the underlay"
    );
    assert_eq!(
        counter(&sw, "vx"),
        0,
        "no plaintext VXLAN for the encrypted network"
    );
    let st = dp1.wg_state().expect("device runs");
    let p = &st.peers[&n2.public_key];
    assert!(p.last_handshake.is_some() && p.rx_bytes > 0, "{p:?}");
    assert_eq!(st.public_key.as_deref(), Some(n1.public_key.as_str()));

    // The plain network alongside still carries plain VXLAN (members pass
    // the guard).
    let (mut pc, mut ps) = connect(&t1, &t2, "10.31.0.12");
    ping_pong(&mut pc, &mut ps, 1000);
    assert!(counter(&sw, "vx") > 0, "plain VXLAN on the underlay");
    assert!(counter(h1p, "weft-guard:members:4789") > 0);
    assert_eq!(counter(h1p, "weft-guard:drop4:4789"), 0);

    // Key rotation of node 1: the device is re-keyed, node 2 swaps the peer
    // (remove + add), the established connection survives.
    let new_key = keys::generate();
    keys::write_private_key(&n1.key_path, &new_key).unwrap();
    let n1b = Node {
        public_key: new_key.public_key(),
        key_path: n1.key_path.clone(),
        ..n1
    };
    let ops = ops_of(dp1.apply(&d1).await);
    assert_eq!(
        ops,
        vec![Op::SetWgKey {
            private_key_path: n1b.key_path.clone()
        }]
    );
    let d2b = desired(&n2, 2, &n1b, 1, true);
    let ops = ops_of(dp2.apply(&d2b).await);
    assert!(
        matches!(&ops[..], [Op::RemoveWgPeer { .. }, Op::AddWgPeer { public_key, .. }] if *public_key == n1b.public_key),
        "{ops:?}"
    );
    let vx = counter(&sw, "vx");
    ping_pong(&mut c, &mut s, 200_000);
    assert_eq!(counter(&sw, "vx"), vx, "still no plaintext VXLAN");

    // Removing the peer from the desired state removes it from the device
    // (and the encrypted path with it).
    let d1_alone = desired(&n1b, 1, &n2, 2, false);
    let ops = ops_of(dp1.apply(&d1_alone).await);
    assert_eq!(
        ops,
        vec![Op::RemoveWgPeer {
            public_key: n2.public_key.clone()
        }]
    );
    assert!(dp1.wg_state().unwrap().peers.is_empty());
    assert!(cannot_connect(&t1, "10.30.0.12"));
    ops_of(dp1.apply(&d1).await);
    assert_eq!(dp1.wg_state().unwrap().peers.len(), 1);

    // A worker restart: the device dies with the process (here: the data
    // plane object); a fresh one recreates it and its peers.
    drop(dp1);
    wait_for("weft-wg0 gone with its process", || {
        ip_link(h1p, "weft-wg0").is_none()
    });
    dp1 = LinuxDataplane::new(&root1, h1.netns().clone());
    let ops = ops_of(dp1.apply(&d1).await);
    assert!(
        ops.iter().any(|o| matches!(o, Op::CreateWg { .. })),
        "{ops:?}"
    );
    assert!(
        ops.iter().any(|o| matches!(o, Op::AddWgPeer { .. })),
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|o| matches!(o, Op::CreateVxlan { .. })),
        "{ops:?}"
    );
    assert_eq!(ops_of(dp1.apply(&d1).await), vec![]);
    let (mut c2, mut s2) = connect(&t1, &t2, "10.30.0.12");
    ping_pong(&mut c2, &mut s2, 10_000);
    assert_eq!(counter(&sw, "vx"), vx, "still no plaintext VXLAN");

    // Teardown removes the device and the guard table.
    drop((c, s, c2, s2, pc, ps, t1, t2));
    for dp in [&dp1, &dp2] {
        let r = dp.teardown_all().await.unwrap();
        assert!(r.is_clean(), "{:?}", r.errors);
    }
    assert!(ip_link(h1p, "weft-wg0").is_none());
    let rs = nft_ruleset(h1p);
    assert!(
        !rs["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["table"]["name"] == "weft_guard"),
        "{rs}"
    );
}

/// Sends one VXLAN-looking datagram from `from` to `to`:4789.
fn send_vxlan(from: &Netns, src: IpAddr, to: IpAddr) {
    from.run_in(move || {
        let s = UdpSocket::bind((src, 0)).unwrap();
        // VXLAN header (I flag, VNI 5002) and a bogus inner frame.
        let mut pkt = vec![0x08, 0, 0, 0, 0x00, 0x13, 0x8a, 0x00];
        pkt.extend_from_slice(&[0xff; 60]);
        s.send_to(&pkt, SocketAddr::new(to, VXLAN_PORT)).unwrap();
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_from_non_members_is_dropped() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "gd",
        "198.18.45.0/24".parse().unwrap(),
        &["h1", "h2", "h3"],
    )
    .await
    .unwrap();
    let (h1, h2, h3) = (
        u.host("h1").unwrap(),
        u.host("h2").unwrap(),
        u.host("h3").unwrap(),
    );
    let (root1, root2) = (run.path().join("node1"), run.path().join("node2"));
    let n1 = node(&root1, IpAddr::V4(h1.addr()), "10.255.0.1");
    let n2 = node(&root2, IpAddr::V4(h2.addr()), "10.255.0.2");
    let d1 = desired(&n1, 1, &n2, 2, true);
    let d2 = desired(&n2, 2, &n1, 1, true);
    let dp1 = LinuxDataplane::new(&root1, h1.netns().clone());
    let dp2 = LinuxDataplane::new(&root2, h2.netns().clone());
    ops_of(dp1.apply(&d1).await);
    ops_of(dp2.apply(&d2).await);
    let h1p = h1.netns().path();
    let (v1, v3) = (IpAddr::V4(h1.addr()), IpAddr::V4(h3.addr()));

    // A third host, not a member, sends VXLAN to node 1: dropped.
    send_vxlan(h3.netns(), v3, v1);
    wait_for("the guard drops the stranger's VXLAN", || {
        counter(h1p, "weft-guard:drop4:4789") == 1
    });
    // Members' VXLAN passes: the plain network carries TCP.
    let t1 = Netns::open(dp1.task_netns(&"t1".into())).unwrap();
    let t2 = Netns::open(dp2.task_netns(&"t2".into())).unwrap();
    let (mut c, mut s) = connect(&t1, &t2, "10.31.0.12");
    ping_pong(&mut c, &mut s, 1000);
    assert!(counter(h1p, "weft-guard:members:4789") > 0);
    assert_eq!(counter(h1p, "weft-guard:drop4:4789"), 1);

    // The third host joins: only the set changes (the counters stay).
    let mut d1b = d1.clone();
    d1b.vxlan_allowed_sources.as_mut().unwrap().insert(v3);
    let ops = ops_of(dp1.apply(&d1b).await);
    assert!(
        matches!(&ops[..], [Op::ApplyGuard { rules: false, .. }]),
        "{ops:?}"
    );
    assert_eq!(ops_of(dp1.apply(&d1b).await), vec![]);
    let members = counter(h1p, "weft-guard:members:4789");
    send_vxlan(h3.netns(), v3, v1);
    wait_for("the new member's VXLAN passes", || {
        counter(h1p, "weft-guard:members:4789") > members
    });
    assert_eq!(counter(h1p, "weft-guard:drop4:4789"), 1);

    // No guard wanted: the table goes.
    let mut d1c = d1b.clone();
    d1c.vxlan_allowed_sources = None;
    assert_eq!(ops_of(dp1.apply(&d1c).await), vec![Op::DeleteGuard]);
    drop((c, s, t1, t2));
    for dp in [&dp1, &dp2] {
        let r = dp.teardown_all().await.unwrap();
        assert!(r.is_clean(), "{:?}", r.errors);
    }
}
