//! IPv6 through the gateway bridge on a real kernel: a node whose tasks
//! have IPv6 addresses gets IPv6 on `weft_gwbridge`, an IPv6 default route
//! in each task, NAT66 for egress and published ports over the node's IPv6
//! address, with IPv6 forwarding turned on without costing the node its
//! router advertisements; and no task can give the node, or a task next to
//! it, a route with a router advertisement of its own. The node and an outside client are
//! underlay hosts with IPv6 addresses; checked with TCP connections made by
//! the kernel, `/proc/sys` and `ip -j`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use weft_overlay::linux::{LinuxDataplane, Netns, Underlay};
use weft_overlay::model::names::{GATEWAY_BRIDGE, TASK_GW_IF};
use weft_overlay::model::{Proto, PublishedPort};
use weft_overlay::plan::Op;
use weft_overlay::{
    Dataplane, DesiredNode, GatewayBridge, GwAttachment, LocalEndpoint, MacAddr, OverlayNet,
    TaskId, TaskNet,
};

use crate::common::{RunDir, apply, ip as ip_json, nsenter, require_root};

const PORT: u16 = 8080;
const TARGET: u16 = 80;
const NODE6: &str = "2001:db8:47::1";
const CLIENT6: &str = "2001:db8:47::2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0x0a, 0x2f, 0x00, i])
}

fn task(v4: &str, v6: &str, m: u8, gw: &str) -> TaskNet {
    let gw = format!("{gw}/16").parse().unwrap();
    TaskNet {
        netns: None,
        handover: false,
        resolver: None,
        endpoints: vec![LocalEndpoint {
            ip6: Some(v6.parse().unwrap()),
            network: "br".into(),
            ifname: "eth0".into(),
            ip: v4.parse().unwrap(),
            mac: mac(m),
        }],
        gateway: Some(GwAttachment {
            ip: gw,
            ip6: GatewayBridge::ipv6_of(gw),
            mac: mac(m + 100),
        }),
    }
}

/// The node: a local dual-stack network with a server task `a` (its port
/// [`TARGET`] published at [`PORT`]) and a client task `b`.
fn desired(node: IpAddr) -> DesiredNode {
    let mut d = DesiredNode::new(node);
    d.gateway = Some(GatewayBridge::default().with_ipv6());
    d.networks.insert(
        "br".into(),
        OverlayNet {
            local: true,
            vni: 0,
            subnet: "10.47.0.0/24".parse().unwrap(),
            gateway: ip("10.47.0.1"),
            subnet6: Some(("fd00:47::/64".parse().unwrap(), ip("fd00:47::1"))),
            mtu: 1450,
            internal: false,
            remote: BTreeMap::new(),
            name: String::new(),
            services: BTreeMap::new(),
            names: BTreeMap::new(),
        },
    );
    d.tasks.insert(
        "a".into(),
        task("10.47.0.2/24", "fd00:47::2/64", 2, "172.18.0.2"),
    );
    d.tasks.insert(
        "b".into(),
        task("10.47.0.3/24", "fd00:47::3/64", 3, "172.18.0.3"),
    );
    d.ports = vec![PublishedPort {
        proto: Proto::Tcp,
        port: PORT,
        target_port: TARGET,
        local: vec![ip("172.18.0.2")],
        remote: Vec::new(),
        owner: "service web".into(),
    }];
    d
}

fn sysctl6(ns: &Netns, dev: &str, key: &str) -> String {
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/{key}");
    ns.run_in(|| std::fs::read_to_string(&path))
        .unwrap()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_owned()
}

fn set_sysctl6(ns: &Netns, dev: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/{key}");
    ns.run_in(|| std::fs::write(&path, value))
        .unwrap()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// An IPv6 TCP server on [`TARGET`] in `ns` answering each connection with
/// the peer address it saw; serves `n` connections on a thread.
pub(crate) fn serve6(ns: &Netns, n: usize) -> std::thread::JoinHandle<()> {
    let l = ns
        .run_in(|| TcpListener::bind(("::", TARGET)).unwrap())
        .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let mut s = s.unwrap();
            let peer = s.peer_addr().unwrap().ip().to_string();
            let _ = s.write_all(peer.as_bytes());
        }
    })
}

/// The address the server at `to` saw for a connection from `client`.
pub(crate) fn seen(client: &Netns, to: SocketAddr) -> IpAddr {
    client
        .run_in(|| {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {to}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text.parse().unwrap()
        })
        .unwrap()
}

/// Sends a router advertisement (router lifetime 1800 s) to all nodes out
/// of `dev` in `ns`, as a task with CAP_NET_RAW could.
fn send_ra(ns: &Netns, dev: &str) {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn6, sendto, socket,
    };
    ns.run_in(|| {
        let index = nix::net::if_::if_nametoindex(dev).expect("device");
        let fd = socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::IcmpV6,
        )
        .unwrap();
        let hops: libc::c_int = 255;
        // SAFETY: a valid socket, a pointer to a live c_int and its size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_HOPS,
                std::ptr::from_ref(&hops).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "IPV6_MULTICAST_HOPS");
        // Type 134, code 0, checksum (the kernel's), hop limit 64, flags 0,
        // router lifetime 1800, reachable time 0, retrans timer 0.
        let ra = [134u8, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
        let to = SockaddrIn6::from(SocketAddrV6::new(
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            0,
            0,
            index,
        ));
        sendto(fd.as_raw_fd(), &ra, &to, MsgFlags::empty()).unwrap();
    })
    .unwrap();
}

/// The IPv6 default routes of the namespace at `path` that came from a
/// router advertisement.
fn ra_routes(path: &Path) -> Vec<String> {
    ip_json(path, &["-6", "route", "show", "default"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protocol"] == "ra")
        .map(|r| r.to_string())
        .collect()
}

/// Waits up to 3 s for an RA-learned default route in `path`.
fn learns_route(path: &Path) -> bool {
    for _ in 0..30 {
        if !ra_routes(path).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A link-local address that finished duplicate address detection on
/// `dev` in `path` (the source of a router advertisement).
fn wait_link_local(path: &Path, dev: &str) {
    for _ in 0..50 {
        let addrs = ip_json(path, &["-6", "addr", "show", "dev", dev, "scope", "link"]);
        let ready = addrs.as_array().unwrap().iter().any(|l| {
            l["addr_info"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|i| i["scope"] == "link" && i["tentative"].is_null())
            })
        });
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no usable link-local address on {dev}");
}

/// A router advertisement from task `b` gives no route to the node (its
/// gateway bridge) nor to task `a` on the same network; with `accept_ra`
/// turned back on by hand it does (so the advertisement is a real one),
/// and the next pass turns the bridge's off again.
async fn router_advertisements_give_no_route(
    dp: &LinuxDataplane,
    d: &DesiredNode,
    node: &Netns,
    (a, b): (&Netns, &Netns),
) {
    let host = node.path().to_owned();
    // A router advertisement from a task reaches the node's gateway bridge
    // but gives it no route ...
    let b_path = dp.task_netns(&TaskId::from("b"));
    wait_link_local(&b_path, TASK_GW_IF);
    send_ra(b, TASK_GW_IF);
    assert!(!learns_route(&host), "{:?}", ra_routes(&host));
    // ... which it would with accept_ra turned back on by hand (so the
    // advertisement is a real one); the next pass turns it off again.
    set_sysctl6(node, GATEWAY_BRIDGE, "accept_ra", "2");
    send_ra(b, TASK_GW_IF);
    assert!(learns_route(&host), "the test's advertisement works");
    assert_eq!(
        apply(dp, d).await,
        vec![Op::RefuseRa {
            link: GATEWAY_BRIDGE.into()
        }]
    );
    assert_eq!(sysctl6(node, GATEWAY_BRIDGE, "accept_ra"), "0");

    // Nor does a task give its neighbour on a network a route: links in
    // the namespaces weft makes ignore router advertisements.
    assert_eq!(sysctl6(a, "eth0", "accept_ra"), "0");
    assert_eq!(sysctl6(a, TASK_GW_IF, "accept_ra"), "0");
    wait_link_local(&b_path, "eth0");
    send_ra(b, "eth0");
    let a_path = dp.task_netns(&TaskId::from("a"));
    assert!(!learns_route(&a_path), "{:?}", ra_routes(&a_path));
    // (It reaches a: with the kernel's default it would take the route.)
    set_sysctl6(a, "eth0", "accept_ra", "1");
    send_ra(b, "eth0");
    assert!(learns_route(&a_path), "the advertisement reaches a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_egress_ports_forwarding_and_router_advertisements() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "e6",
        "198.18.47.0/24".parse().unwrap(),
        &["node", "client"],
    )
    .await
    .unwrap();
    let (node, client) = (u.host("node").unwrap(), u.host("client").unwrap());
    let host = node.netns().path().to_owned();
    for (h, a) in [(node, NODE6), (client, CLIENT6)] {
        let cidr = format!("{a}/64");
        nsenter(
            h.netns().path(),
            &["ip", "addr", "add", &cidr, "dev", h.iface(), "nodad"],
        );
    }
    // An interface of the node's own that learns its routes from router
    // advertisements.
    nsenter(&host, &["ip", "link", "add", "uplink0", "type", "bridge"]);
    set_sysctl6(node.netns(), "uplink0", "accept_ra", "1");
    assert_eq!(sysctl6(node.netns(), "all", "forwarding"), "0");

    let dp = LinuxDataplane::new(run.path().join("node"), node.netns().clone());
    let d = desired(IpAddr::V4(node.addr()));
    let ops = apply(&dp, &d).await;
    assert!(ops.contains(&Op::EnableIpv6Forwarding), "{ops:?}");
    assert_eq!(apply(&dp, &d).await, vec![], "second apply: no ops");
    assert_eq!(sysctl6(node.netns(), "all", "forwarding"), "1");
    assert_eq!(
        sysctl6(node.netns(), "uplink0", "accept_ra"),
        "2",
        "the node keeps accepting router advertisements"
    );
    assert_eq!(sysctl6(node.netns(), GATEWAY_BRIDGE, "accept_ra"), "0");

    let (a, b) = (
        Netns::open(dp.task_netns(&TaskId::from("a"))).unwrap(),
        Netns::open(dp.task_netns(&TaskId::from("b"))).unwrap(),
    );
    let default6 = ip_json(
        &dp.task_netns(&TaskId::from("a")),
        &["-6", "route", "show", "default"],
    );
    assert_eq!(
        default6[0]["gateway"], "fd77:6566:7400::ac12:1",
        "{default6}"
    );
    assert_eq!(default6[0]["dev"], TASK_GW_IF, "{default6}");

    // Egress over IPv6: the outside sees the node's address (NAT66).
    let outside = serve6(client.netns(), 1);
    let to_client = SocketAddr::new(ip(CLIENT6), TARGET);
    assert_eq!(seen(&a, to_client), ip(NODE6));
    outside.join().unwrap();

    // The published port at the node's IPv6 address: the backend sees the
    // client's own address; from b on the same bridge (hairpin) it sees
    // the bridge's.
    let inside = serve6(&a, 2);
    let to_node = SocketAddr::new(ip(NODE6), PORT);
    assert_eq!(seen(client.netns(), to_node), ip(CLIENT6));
    assert_eq!(seen(&b, to_node), ip("fd77:6566:7400::ac12:1"));
    inside.join().unwrap();

    // Nothing else is forwarded into the gateway bridge: the client routes
    // the bridge's subnets through the node, and a's port is not reached
    // over either family (it is through the published port).
    let client_path = client.netns().path().to_owned();
    for (dest, via) in [
        ("fd77:6566:7400::/96", NODE6),
        ("172.18.0.0/16", &node.addr().to_string() as &str),
    ] {
        nsenter(&client_path, &["ip", "route", "add", dest, "via", via]);
    }
    let _still = serve6(&a, 1);
    for direct in [ip("fd77:6566:7400::ac12:2"), ip("172.18.0.2")] {
        let to = SocketAddr::new(direct, TARGET);
        let reached = client
            .netns()
            .run_in(|| TcpStream::connect_timeout(&to, Duration::from_millis(1500)).is_ok())
            .unwrap();
        assert!(!reached, "{to} reached directly from outside");
    }
    // Nor does a spoofed source leave through the node: b sends from an
    // address that is not the bridge's, and the client never sees it.
    nsenter(
        &dp.task_netns(&TaskId::from("b")),
        &[
            "ip",
            "addr",
            "add",
            "2001:db8:99::5/128",
            "dev",
            TASK_GW_IF,
            "nodad",
        ],
    );
    nsenter(
        &client_path,
        &[
            "nft",
            "add table inet spy; add chain inet spy in { type filter hook input priority 0; }; add rule inet spy in ip6 saddr 2001:db8:99::5 counter",
        ],
    );
    let spoofed = SocketAddrV6::new("2001:db8:99::5".parse().unwrap(), 0, 0, 0);
    let to = SocketAddr::new(ip(CLIENT6), TARGET);
    b.run_in(|| {
        let s = std::net::UdpSocket::bind(spoofed).unwrap();
        s.send_to(b"spoofed", to).unwrap();
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let spy = crate::common::nft_ruleset(&client_path).to_string();
    assert!(
        spy.contains("\"packets\":0"),
        "a spoofed packet got out: {spy}"
    );
    nsenter(
        &dp.task_netns(&TaskId::from("b")),
        &["ip", "addr", "del", "2001:db8:99::5/128", "dev", TASK_GW_IF],
    );

    router_advertisements_give_no_route(&dp, &d, node.netns(), (&a, &b)).await;

    drop((a, b));
    let report = dp.teardown_all().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    drop(dp);
    assert!(u.destroy().is_clean());
}
