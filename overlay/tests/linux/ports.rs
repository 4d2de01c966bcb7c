//! Published ports, the ingress routing mesh and the operator's chain end
//! to end. Underlay hosts act as nodes and as an outside client; tasks run
//! tiny TCP/UDP servers that answer with the address they saw the client
//! at. Checked: a client reaches a local backend at the node's address and
//! keeps its source address (TCP and UDP); the node reaches its own port;
//! a task on the gateway bridge reaches a port served by its neighbour
//! (hairpin); the nftables watcher fires when someone flushes the table
//! and a re-apply restores it (and writes nothing when nothing drifted); a
//! drop rule in `weft-user` blocks forwarded connections and survives
//! re-applies and teardown; a node without a replica forwards over a real
//! VXLAN ingress network to a replica on another node; a UDP flow whose
//! backend left moves to the new backend at its next datagram (conntrack).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use weft_overlay::linux::{LinuxDataplane, Netns, Underlay};
use weft_overlay::model::{IngressEndpoint, Proto, PublishedPort};
use weft_overlay::plan::Op;
use weft_overlay::{
    Dataplane, DesiredNode, GatewayBridge, GwAttachment, LocalEndpoint, MacAddr, OverlayNet,
    RemoteEndpoint, TaskId, TaskNet,
};

use crate::common::{RunDir, apply, ip_addrs, ip_link, nft_ruleset, require_root};

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const TARGET: u16 = 80;
const VXLAN_PORT: u16 = 4802;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0x0a, 0x2e, 0x00, i])
}

fn network(vni: u32, subnet: &str, gateway: &str, local: bool) -> OverlayNet {
    OverlayNet {
        subnet6: None,
        local,
        vni,
        subnet: subnet.parse().unwrap(),
        gateway: ip(gateway),
        mtu: 1450,
        internal: false,
        remote: BTreeMap::new(),
        name: String::new(),
        services: BTreeMap::new(),
        names: BTreeMap::new(),
    }
}

fn task(network: &str, addr: &str, m: u8, gw: &str) -> TaskNet {
    TaskNet {
        netns: None,
        handover: false,
        resolver: None,
        endpoints: vec![LocalEndpoint {
            ip6: None,
            network: network.into(),
            ifname: "eth0".into(),
            ip: addr.parse().unwrap(),
            mac: mac(m),
        }],
        gateway: Some(GwAttachment {
            ip: format!("{gw}/16").parse().unwrap(),
            ip6: None,
            mac: mac(m + 100),
        }),
    }
}

fn published(proto: Proto, port: u16, local: &[&str], remote: &[&str]) -> PublishedPort {
    PublishedPort {
        proto,
        port,
        target_port: TARGET,
        local: local.iter().map(|a| ip(a)).collect(),
        remote: remote.iter().map(|a| ip(a)).collect(),
        owner: "service web".into(),
    }
}

/// Servers answering every TCP connection and UDP datagram on
/// [`TARGET`] with the peer address they saw; stopped and joined on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn new() -> Servers {
        Servers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    fn serve(&mut self, ns: &Netns) {
        let (tcp, udp) = ns
            .run_in(|| {
                (
                    TcpListener::bind(("0.0.0.0", TARGET)).unwrap(),
                    UdpSocket::bind(("0.0.0.0", TARGET)).unwrap(),
                )
            })
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut s, peer)) => {
                        s.set_nonblocking(false).unwrap();
                        let _ = s.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        }));
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            }
        }));
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP connection from `client` to `to`:[`TCP_PORT`]; the address the
/// backend saw, or the error.
fn tcp_seen(client: &Netns, to: IpAddr, timeout: Duration) -> std::io::Result<IpAddr> {
    let target = SocketAddr::new(to, TCP_PORT);
    client
        .run_in(|| {
            let mut s = TcpStream::connect_timeout(&target, timeout)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            text.parse::<IpAddr>()
                .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
        })
        .unwrap()
}

fn tcp_ok(client: &Netns, to: IpAddr) -> IpAddr {
    tcp_seen(client, to, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {to}:{TCP_PORT}: {e}"))
}

fn tcp_blocked(client: &Netns, to: IpAddr) -> bool {
    tcp_seen(client, to, Duration::from_millis(1500)).is_err()
}

/// A UDP exchange from `client` to `to`:[`UDP_PORT`] (a few tries: the
/// first datagram may wait for ARP); the address the backend saw.
fn udp_seen(client: &Netns, to: IpAddr) -> IpAddr {
    client
        .run_in(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(SocketAddr::new(to, UDP_PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..5 {
                s.send(b"hi").unwrap();
                if let Ok(n) = s.recv(&mut buf) {
                    return String::from_utf8_lossy(&buf[..n]).parse().unwrap();
                }
            }
            panic!("no UDP answer from {to}:{UDP_PORT}");
        })
        .unwrap()
}

fn nft(ns: &Path, cmd: &str) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("nft")
        .arg(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nft {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn objects(ns: &Path) -> Vec<Value> {
    nft_ruleset(ns)["nftables"].as_array().unwrap().clone()
}

fn has_table(ns: &Path, name: &str) -> bool {
    objects(ns).iter().any(|o| o["table"]["name"] == name)
}

fn rule_comments(ns: &Path, table: &str) -> Vec<String> {
    objects(ns)
        .iter()
        .filter(|o| o["rule"]["table"] == table)
        .filter_map(|o| o["rule"]["comment"].as_str().map(str::to_owned))
        .collect()
}

/// Rules of the operator's chain (by their expressions, as nft lists them).
fn user_rules(ns: &Path) -> Vec<Value> {
    objects(ns)
        .iter()
        .filter(|o| o["rule"]["table"] == "weft_user" && o["rule"]["chain"] == "weft-user")
        .map(|o| o["rule"]["expr"].clone())
        .collect()
}

/// Waits until the watcher's counter moves past `seen`; its new value.
async fn changed(rx: &mut tokio::sync::watch::Receiver<u64>, seen: u64) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|g| *g > seen))
        .await
        .expect("the nftables watcher did not fire")
        .expect("watcher alive");
    *rx.borrow()
}

/// The ports table (DNAT and hairpin rules) and the operator's chain
/// (`forward` hook, priority -10) in the node's namespace at `host`.
fn ports_tables_seen_from(host: &Path) {
    let comments = rule_comments(host, "weft_ports");
    assert!(
        comments
            .iter()
            .any(|c| c.starts_with("weft-ports:pre:tcp/8080:")),
        "{comments:?}"
    );
    assert!(comments.contains(&"weft-ports:hairpin:172.18.0.0/16".to_owned()));
    let chain = objects(host)
        .into_iter()
        .find(|o| o["chain"]["table"] == "weft_user")
        .expect("weft_user chain");
    assert_eq!(chain["chain"]["name"], "weft-user");
    assert_eq!(
        (&chain["chain"]["hook"], chain["chain"]["prio"].as_i64()),
        (&Value::from("forward"), Some(-10))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_hairpin_watcher_and_user_chain() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "pp",
        "198.18.46.0/24".parse().unwrap(),
        &["node", "client"],
    )
    .await
    .unwrap();
    let (node, client) = (u.host("node").unwrap(), u.host("client").unwrap());
    let node_ip = IpAddr::V4(node.addr());
    let client_ip = IpAddr::V4(client.addr());
    let host = node.netns().path().to_owned();
    let dp = LinuxDataplane::new(run.path().join("node"), node.netns().clone());

    // Task a serves; task b is another task on the gateway bridge.
    let mut d = DesiredNode::new(node_ip);
    d.gateway = Some(GatewayBridge::default());
    d.networks
        .insert("br".into(), network(0, "10.46.0.0/24", "10.46.0.1", true));
    d.tasks
        .insert("a".into(), task("br", "10.46.0.2/24", 2, "172.18.0.2"));
    d.tasks
        .insert("b".into(), task("br", "10.46.0.3/24", 3, "172.18.0.3"));
    d.ports = vec![
        published(Proto::Tcp, TCP_PORT, &["172.18.0.2"], &[]),
        published(Proto::Udp, UDP_PORT, &["172.18.0.2"], &[]),
    ];
    let ops = apply(&dp, &d).await;
    assert!(ops.contains(&Op::EnsureUserChain), "{ops:?}");
    assert!(
        ops.iter().any(|o| matches!(o, Op::ApplyPorts { .. })),
        "{ops:?}"
    );
    assert_eq!(apply(&dp, &d).await, vec![], "second apply: no ops");

    // Independent view: both tables, the user chain where it belongs.
    ports_tables_seen_from(&host);

    let (a, b) = (
        Netns::open(dp.task_netns(&TaskId::from("a"))).unwrap(),
        Netns::open(dp.task_netns(&TaskId::from("b"))).unwrap(),
    );
    let mut servers = Servers::new();
    servers.serve(&a);
    let client_ns = client.netns();

    // From outside: the backend sees the client's own address.
    assert_eq!(tcp_ok(client_ns, node_ip), client_ip);
    assert_eq!(udp_seen(client_ns, node_ip), client_ip);
    // From the node itself, to its own address.
    assert_eq!(tcp_ok(node.netns(), node_ip), node_ip);
    // Hairpin: b reaches the port on the node and a answers through the
    // node (masqueraded to the bridge's address, so the reply comes back
    // the same way), at the node's address and at the bridge's. With
    // br_netfilter (as on this machine when Docker is around) the DNATed
    // packets are bridged between the two task ports, which the port
    // isolation lets through for hairpin traffic only.
    assert_eq!(tcp_ok(&b, node_ip), ip("172.18.0.1"));
    assert_eq!(tcp_ok(&b, ip("172.18.0.1")), ip("172.18.0.1"));
    // ... while b still cannot reach a directly over the bridge.
    let direct = SocketAddr::new(ip("172.18.0.2"), TARGET);
    assert!(
        b.run_in(|| TcpStream::connect_timeout(&direct, Duration::from_millis(1500)).is_err())
            .unwrap()
    );

    // The watcher: a re-apply with nothing to do writes nothing (the only
    // transaction seen is the marker), a flush of our table fires it and
    // the next apply restores exactly that table.
    let mut rx = dp.nft_changes().expect("a watcher");
    let start = *rx.borrow_and_update();
    assert_eq!(apply(&dp, &d).await, vec![]);
    nft(&host, "add table inet weft_test_marker");
    let after_marker = changed(&mut rx, start).await;
    assert_eq!(after_marker, start + 1, "the no-op apply wrote to nftables");
    nft(&host, "flush table inet weft_ports");
    let after_flush = changed(&mut rx, after_marker).await;
    assert!(tcp_blocked(client_ns, node_ip));
    let ops = apply(&dp, &d).await;
    assert!(matches!(ops.as_slice(), [Op::ApplyPorts { .. }]), "{ops:?}");
    assert_eq!(tcp_ok(client_ns, node_ip), client_ip);
    // Our own write is a change too; the apply after it is a no-op, and
    // the loop ends there.
    let after_repair = changed(&mut rx, after_flush).await;
    assert_eq!(apply(&dp, &d).await, vec![]);
    nft(&host, "delete table inet weft_test_marker");
    assert_eq!(changed(&mut rx, after_repair).await, after_repair + 1);

    // The operator's drop rule blocks forwarded connections to the
    // published port (and nothing else of the node's own).
    nft(
        &host,
        &format!("add rule inet weft_user weft-user ip saddr {client_ip} counter drop"),
    );
    assert!(tcp_blocked(client_ns, node_ip));
    assert_eq!(tcp_ok(node.netns(), node_ip), node_ip);
    let rules = user_rules(&host);
    assert_eq!(rules.len(), 1, "{rules:?}");
    // It survives a re-apply, a flush of weft's tables with the repair,
    // a deleted ports table, and teardown.
    assert_eq!(apply(&dp, &d).await, vec![]);
    nft(&host, "flush table inet weft_ports");
    nft(&host, "flush table inet weft");
    let ops = apply(&dp, &d).await;
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(user_rules(&host).len(), 1);
    assert!(tcp_blocked(client_ns, node_ip));
    nft(&host, "delete table inet weft_ports");
    let ops = apply(&dp, &d).await;
    assert!(matches!(ops.as_slice(), [Op::ApplyPorts { .. }]), "{ops:?}");
    assert!(tcp_blocked(client_ns, node_ip));
    // Deleted by the operator: re-created, empty.
    nft(&host, "delete table inet weft_user");
    assert_eq!(apply(&dp, &d).await, vec![Op::EnsureUserChain]);
    assert!(user_rules(&host).is_empty());
    assert_eq!(tcp_ok(client_ns, node_ip), client_ip);
    nft(
        &host,
        &format!("add rule inet weft_user weft-user ip saddr {client_ip} drop"),
    );

    // Ports removed: the table goes, the user chain stays.
    let mut none = d.clone();
    none.ports.clear();
    let ops = apply(&dp, &none).await;
    assert_eq!(ops, vec![Op::DeletePorts]);
    assert!(!has_table(&host, "weft_ports"));
    assert_eq!(user_rules(&host).len(), 1);

    drop(servers);
    drop((a, b));
    drop(rx);
    let report = dp.teardown_all().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert!(!has_table(&host, "weft_ports") && !has_table(&host, "weft"));
    assert_eq!(
        user_rules(&host).len(),
        1,
        "teardown kept the operator's rule"
    );
    drop(dp);
    assert!(u.destroy().is_clean());
}

/// Two nodes on the ingress overlay (4747, 10.255.0.0/24, and
/// fd00:ff::/64 when `dual`): n1's and n2's own endpoints on it, and the
/// replica t on n2 with its ingress and gateway addresses; the TCP and UDP
/// ports published on n1 (to t, remote) and the TCP one on n2 (local).
fn ingress_nodes(v1: IpAddr, v2: IpAddr, dual: bool) -> (DesiredNode, DesiredNode) {
    // 10.255.0.X and, when dual, fd00:ff::X.
    let six = |addr: &str| {
        let last = addr.rsplit('.').next().unwrap();
        dual.then(|| format!("fd00:ff::{last}"))
    };
    let ing = || {
        let mut n = network(4747, "10.255.0.0/24", "10.255.0.1", false);
        if dual {
            n.subnet6 = Some(("fd00:ff::/64".parse().unwrap(), ip("fd00:ff::1")));
        }
        n
    };
    let endpoint = |addr: &str, m: u8| IngressEndpoint {
        ip6: six(addr).map(|a| format!("{a}/64").parse().unwrap()),
        network: "ingress".into(),
        ip: format!("{addr}/24").parse().unwrap(),
        mac: mac(m),
    };
    let remote = |addr: &str, m: u8, vtep: IpAddr| RemoteEndpoint {
        ip6: six(addr).map(|a| ip(&a)),
        ip: ip(addr),
        mac: mac(m),
        vtep,
    };
    let backends: Vec<String> = std::iter::once("10.255.0.10".to_owned())
        .chain(six("10.255.0.10"))
        .collect();
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let mut d1 = DesiredNode::new(v1);
    let mut d2 = DesiredNode::new(v2);
    for d in [&mut d1, &mut d2] {
        d.vxlan_port = VXLAN_PORT;
        d.gateway = Some(GatewayBridge::default());
    }
    let mut n1 = ing();
    n1.remote.insert("t".into(), remote("10.255.0.10", 10, v2));
    n1.remote
        .insert("ingress-n2".into(), remote("10.255.0.3", 3, v2));
    d1.networks.insert("ingress".into(), n1);
    d1.ingress = Some(endpoint("10.255.0.2", 2));
    d1.ports = vec![
        published(Proto::Tcp, TCP_PORT, &[], &backends),
        published(Proto::Udp, UDP_PORT, &[], &backends),
    ];
    let mut n2 = ing();
    n2.remote
        .insert("ingress-n1".into(), remote("10.255.0.2", 2, v1));
    d2.networks.insert("ingress".into(), n2);
    d2.ingress = Some(endpoint("10.255.0.3", 3));
    let mut t = task("ingress", "10.255.0.10/24", 10, "172.18.0.2");
    if dual {
        t.endpoints[0].ip6 = six("10.255.0.10").map(|a| format!("{a}/64").parse().unwrap());
        let gw = t.gateway.as_mut().unwrap();
        gw.ip6 = GatewayBridge::ipv6_of(gw.ip);
        d2.gateway = d2.gateway.take().map(GatewayBridge::with_ipv6);
    }
    d2.tasks.insert("t".into(), t);
    d2.ports = vec![published(Proto::Tcp, TCP_PORT, &["172.18.0.2"], &backends)];
    (d1, d2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_forwards_to_a_replica_on_another_node() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "ing",
        "198.18.47.0/24".parse().unwrap(),
        &["n1", "n2", "client"],
    )
    .await
    .unwrap();
    let (h1, h2, client) = (
        u.host("n1").unwrap(),
        u.host("n2").unwrap(),
        u.host("client").unwrap(),
    );
    let (v1, v2) = (IpAddr::V4(h1.addr()), IpAddr::V4(h2.addr()));
    let client_ip = IpAddr::V4(client.addr());
    let dp1 = LinuxDataplane::new(run.path().join("node1"), h1.netns().clone());
    let dp2 = LinuxDataplane::new(run.path().join("node2"), h2.netns().clone());
    let (d1, d2) = ingress_nodes(v1, v2, false);

    assert!(!apply(&dp1, &d1).await.is_empty());
    assert!(!apply(&dp2, &d2).await.is_empty());
    assert_eq!(apply(&dp1, &d1).await, vec![]);
    assert_eq!(apply(&dp2, &d2).await, vec![]);

    // The endpoint, seen from outside: weft_ingress in the daemon's
    // namespace, its peer in the ingress network's bridge.
    let h1_path = h1.netns().path().to_owned();
    let link = ip_link(&h1_path, "weft_ingress").expect("weft_ingress");
    assert_eq!(link["address"], mac(2).to_string());
    assert!(ip_addrs(&h1_path, "weft_ingress").contains(&"10.255.0.2/24".to_owned()));
    let ing_ns = run.path().join("node1/netns/net-ingress");
    let port = ip_link(&ing_ns, "vt-ingress").expect("network side");
    assert_eq!(port["master"], "br0");

    let t = Netns::open(dp2.task_netns(&TaskId::from("t"))).unwrap();
    let mut servers = Servers::new();
    servers.serve(&t);

    // On n2 (a replica here) the client's address is kept; on n1 (none
    // here) the connection crosses the ingress overlay from n1's ingress
    // address.
    assert_eq!(tcp_ok(client.netns(), v2), client_ip);
    assert_eq!(tcp_ok(client.netns(), v1), ip("10.255.0.2"));
    assert_eq!(udp_seen(client.netns(), v1), ip("10.255.0.2"));
    assert_eq!(tcp_ok(h1.netns(), v1), ip("10.255.0.2"));

    // The endpoint deleted by hand is repaired; removed with the ingress,
    // it goes.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", h1_path.display()))
        .args(["ip", "link", "del", "weft_ingress"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ops = apply(&dp1, &d1).await;
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::CreateVeth { name, .. } if name == "vt-ingress")),
        "{ops:?}"
    );
    assert_eq!(tcp_ok(client.netns(), v1), ip("10.255.0.2"));
    let mut gone = d1.clone();
    gone.ingress = None;
    gone.ports.clear();
    apply(&dp1, &gone).await;
    assert!(ip_link(&h1_path, "weft_ingress").is_none());
    assert!(!has_table(&h1_path, "weft_ports"));

    drop(servers);
    drop(t);
    for dp in [&dp1, &dp2] {
        let report = dp.teardown_all().await.unwrap();
        assert!(report.is_clean(), "{:?}", report.errors);
    }
    assert!(ip_link(h2.netns().path(), "weft_ingress").is_none());
    assert!(u.destroy().is_clean());
}

/// The routing mesh over IPv6: with a dual-stack ingress network, a node
/// without a replica forwards a client's IPv6 connection over the overlay
/// to the replica's IPv6 address on another node (from its own ingress
/// IPv6 address), and a node with one keeps the client's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_forwards_ipv6_to_a_replica_on_another_node() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "ing6",
        "198.18.49.0/24".parse().unwrap(),
        &["n1", "n2", "client"],
    )
    .await
    .unwrap();
    let mut six = Vec::new();
    for (i, name) in ["n1", "n2", "client"].into_iter().enumerate() {
        let h = u.host(name).unwrap();
        let a = format!("2001:db8:49::{}", i + 1);
        let cidr = format!("{a}/64");
        crate::common::nsenter(
            h.netns().path(),
            &["ip", "addr", "add", &cidr, "dev", h.iface(), "nodad"],
        );
        six.push(ip(&a));
    }
    let (h1, h2, client) = (
        u.host("n1").unwrap(),
        u.host("n2").unwrap(),
        u.host("client").unwrap(),
    );
    let (v1, v2) = (IpAddr::V4(h1.addr()), IpAddr::V4(h2.addr()));
    let dp1 = LinuxDataplane::new(run.path().join("node1"), h1.netns().clone());
    let dp2 = LinuxDataplane::new(run.path().join("node2"), h2.netns().clone());
    let (d1, d2) = ingress_nodes(v1, v2, true);
    assert!(apply(&dp1, &d1).await.contains(&Op::EnableIpv6Forwarding));
    assert!(!apply(&dp2, &d2).await.is_empty());
    assert_eq!(apply(&dp1, &d1).await, vec![]);
    assert_eq!(apply(&dp2, &d2).await, vec![]);
    assert!(ip_addrs(h1.netns().path(), "weft_ingress").contains(&"fd00:ff::2/64".to_owned()));

    let t = Netns::open(dp2.task_netns(&TaskId::from("t"))).unwrap();
    let server = crate::egress6::serve6(&t, 2);
    let to = |node: IpAddr| SocketAddr::new(node, TCP_PORT);
    // n2 has the replica: the client's address is kept.
    assert_eq!(crate::egress6::seen(client.netns(), to(six[1])), six[2]);
    // n1 has none: over the overlay, from n1's ingress IPv6 address.
    assert_eq!(
        crate::egress6::seen(client.netns(), to(six[0])),
        ip("fd00:ff::2")
    );
    server.join().unwrap();

    drop(t);
    for dp in [&dp1, &dp2] {
        let report = dp.teardown_all().await.unwrap();
        assert!(report.is_clean(), "{:?}", report.errors);
    }
    assert!(u.destroy().is_clean());
}

#[tokio::test]
async fn monitor_counts_weft_transactions_and_stops_on_drop() {
    require_root!();
    let run = RunDir::new();
    let ns = run.netns(&crate::common::unique("mon"));
    let mon = weft_overlay::linux::NftMonitor::start(&ns).unwrap();
    let mut rx = mon.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    // Someone else's table is not ours; a weft table is (one transaction,
    // however many objects it touches).
    nft(ns.path(), "add table inet other");
    nft(ns.path(), "add table inet weft_x; add chain inet weft_x c");
    assert_eq!(changed(&mut rx, 0).await, 1);
    nft(ns.path(), "flush ruleset");
    assert_eq!(changed(&mut rx, 1).await, 2);
    // Dropping the monitor stops (and joins) its thread: the sender is
    // gone.
    drop(mon);
    assert!(rx.has_changed().is_err());
}

/// A UDP server in `ns` on [`TARGET`] answering every datagram with `tag`;
/// stopped with `stop`.
fn udp_tagger(ns: &Netns, tag: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let udp = ns
        .run_in(|| UdpSocket::bind(("0.0.0.0", TARGET)).unwrap())
        .unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(tag.as_bytes(), peer);
            }
        }
    })
}

/// One exchange on an already connected UDP socket (a few tries: the first
/// datagram may wait for ARP); the answer.
fn ask(s: &UdpSocket) -> String {
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        s.send(b"hi").unwrap();
        if let Ok(n) = s.recv(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no UDP answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flow_moves_to_the_new_backend_when_its_backend_leaves() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "pc",
        "198.18.47.0/24".parse().unwrap(),
        &["node", "client"],
    )
    .await
    .unwrap();
    let (node, client) = (u.host("node").unwrap(), u.host("client").unwrap());
    let node_ip = IpAddr::V4(node.addr());
    let dp = LinuxDataplane::new(run.path().join("node"), node.netns().clone());

    let mut d = DesiredNode::new(node_ip);
    d.gateway = Some(GatewayBridge::default());
    d.networks
        .insert("br".into(), network(0, "10.47.0.0/24", "10.47.0.1", true));
    d.tasks
        .insert("a".into(), task("br", "10.47.0.2/24", 2, "172.18.0.2"));
    d.tasks
        .insert("b".into(), task("br", "10.47.0.3/24", 3, "172.18.0.3"));
    d.ports = vec![published(Proto::Udp, UDP_PORT, &["172.18.0.2"], &[])];
    apply(&dp, &d).await;

    let stop = Arc::new(AtomicBool::new(false));
    let servers = ["a", "b"].map(|t| {
        let ns = Netns::open(dp.task_netns(&TaskId::from(t))).unwrap();
        udp_tagger(&ns, t, stop.clone())
    });
    // One client socket, so every datagram is the same flow (5-tuple).
    let sock = client
        .netns()
        .run_in(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(SocketAddr::new(node_ip, UDP_PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            s
        })
        .unwrap();
    assert_eq!(ask(&sock), "a");

    // a stops being a backend (it still answers, as a replica that is
    // shutting down would): the flow's next datagram goes to b, not to a
    // for as long as its conntrack entry would live.
    d.ports = vec![published(Proto::Udp, UDP_PORT, &["172.18.0.3"], &[])];
    let ops = apply(&dp, &d).await;
    assert!(
        ops.iter().any(|o| matches!(o, Op::ApplyPorts { .. })),
        "{ops:?}"
    );
    assert_eq!(ask(&sock), "b");
    assert_eq!(ask(&sock), "b");

    stop.store(true, Ordering::Relaxed);
    for t in servers {
        t.join().unwrap();
    }
    assert!(dp.teardown_all().await.unwrap().is_clean());
}
