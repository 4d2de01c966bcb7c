//! `LinuxDataplane` end to end on two underlay hosts acting as nodes (each
//! data plane treats its host's namespace as its own): real TCP between
//! tasks over VXLAN on the configured port (counted independently in the
//! switch), isolation between networks with overlapping subnets, the
//! gateway bridge (host reachable, egress masqueraded), internal networks,
//! idempotence, adoption by a fresh instance, drift repair, network removal
//! and teardown — each checked with `ip`/`bridge`/`nft` from outside.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use weft_overlay::linux::{LinuxDataplane, Netns, Underlay, underlay_mtu_of};
use weft_overlay::plan::Op;
use weft_overlay::{
    Dataplane, DesiredNode, Error, GatewayBridge, GwAttachment, LocalEndpoint, MacAddr, OverlayNet,
    PlanError, RemoteEndpoint, TaskId, TaskNet,
};

use crate::common::{
    RunDir, bridge, has_flag, ip, ip_addrs, ip_link, ip_link_names, nft_ruleset, nsenter,
    require_root,
};

const PORT: u16 = 4799;

pub(crate) fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0x0a, 0x14, 0x00, i])
}

pub(crate) fn overlay(vni: u32, internal: bool) -> OverlayNet {
    OverlayNet {
        subnet6: None,
        local: false,
        vni,
        subnet: "10.20.0.0/24".parse().unwrap(),
        gateway: "10.20.0.1".parse().unwrap(),
        mtu: 1450,
        internal,
        remote: BTreeMap::new(),
        name: String::new(),
        services: BTreeMap::new(),
        names: BTreeMap::new(),
    }
}

pub(crate) fn task(network: &str, ip: &str, m: u8, gw: Option<(&str, u8)>) -> TaskNet {
    TaskNet {
        netns: None,
        handover: false,
        resolver: None,
        endpoints: vec![LocalEndpoint {
            ip6: None,
            network: network.into(),
            ifname: "eth0".into(),
            ip: format!("{ip}/24").parse().unwrap(),
            mac: mac(m),
        }],
        gateway: gw.map(|(g, gm)| GwAttachment {
            ip: format!("{g}/16").parse().unwrap(),
            ip6: None,
            mac: mac(gm),
        }),
    }
}

pub(crate) fn remote(ip: &str, m: u8, vtep: IpAddr) -> RemoteEndpoint {
    RemoteEndpoint {
        ip6: None,
        ip: ip.parse().unwrap(),
        mac: mac(m),
        vtep,
    }
}

/// Node 1 runs a (n1, gateway) and d (n2, internal); node 2 runs b (n1,
/// gateway) and c (n2, internal). Both networks use 10.20.0.0/24.
pub(crate) fn desired(v1: IpAddr, v2: IpAddr) -> (DesiredNode, DesiredNode) {
    let mut d1 = DesiredNode::new(v1);
    let mut d2 = DesiredNode::new(v2);
    for d in [&mut d1, &mut d2] {
        d.vxlan_port = PORT;
        d.gateway = Some(GatewayBridge::default());
        d.networks.insert("n1".into(), overlay(4242, false));
        d.networks.insert("n2".into(), overlay(4343, true));
    }
    d1.tasks.insert(
        "a".into(),
        task("n1", "10.20.0.2", 2, Some(("172.18.0.2", 102))),
    );
    d1.tasks
        .insert("d".into(), task("n2", "10.20.0.5", 5, None));
    d2.tasks.insert(
        "b".into(),
        task("n1", "10.20.0.3", 3, Some(("172.18.0.3", 103))),
    );
    d2.tasks
        .insert("c".into(), task("n2", "10.20.0.4", 4, None));
    d1.networks
        .get_mut(&"n1".into())
        .unwrap()
        .remote
        .insert("b".into(), remote("10.20.0.3", 3, v2));
    d1.networks
        .get_mut(&"n2".into())
        .unwrap()
        .remote
        .insert("c".into(), remote("10.20.0.4", 4, v2));
    d2.networks
        .get_mut(&"n1".into())
        .unwrap()
        .remote
        .insert("a".into(), remote("10.20.0.2", 2, v1));
    d2.networks
        .get_mut(&"n2".into())
        .unwrap()
        .remote
        .insert("d".into(), remote("10.20.0.5", 5, v1));
    (d1, d2)
}

fn listen(ns: &Netns, ip: &str) -> TcpListener {
    let ip: IpAddr = ip.parse().unwrap();
    ns.run_in(move || TcpListener::bind((ip, 0)).unwrap())
        .unwrap()
}

/// One request/response from `client` to `listener`; returns the peer
/// address the server saw.
fn exchange(client: &Netns, listener: TcpListener, to: &str) -> IpAddr {
    let target = SocketAddr::new(to.parse().unwrap(), listener.local_addr().unwrap().port());
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong").unwrap();
        (buf, peer)
    });
    let reply = client
        .run_in(|| {
            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connect {target}: {e}"));
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).unwrap();
            buf
        })
        .unwrap();
    let (got, peer) = server.join().unwrap();
    assert_eq!((&got, &reply), (b"ping", b"pong"));
    peer.ip()
}

fn cannot_connect(client: &Netns, to: &str, port: u16) -> bool {
    let target = SocketAddr::new(to.parse().unwrap(), port);
    client
        .run_in(|| TcpStream::connect_timeout(&target, Duration::from_millis(1500)).is_err())
        .unwrap()
}

/// The addresses of `link`, without the kernel's IPv6 link-local one.
fn addrs(ns: &Path, link: &str) -> Vec<String> {
    let mut all = ip_addrs(ns, link);
    all.retain(|a| !a.starts_with("fe80:"));
    all
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

fn has_weft_table(rs: &Value) -> bool {
    rs["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["table"]["name"] == "weft")
}

fn ops_of(r: weft_overlay::Result<weft_overlay::ApplyReport>) -> Vec<Op> {
    match r {
        Ok(r) => r.ops,
        Err(e) => panic!("apply failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_end_to_end() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "dp",
        "198.18.40.0/24".parse().unwrap(),
        &["h1", "h2"],
    )
    .await
    .unwrap();
    let (h1, h2) = (u.host("h1").unwrap(), u.host("h2").unwrap());
    let root1: PathBuf = run.path().join("node1");
    let root2: PathBuf = run.path().join("node2");
    let dp1 = LinuxDataplane::new(&root1, h1.netns().clone());
    let dp2 = LinuxDataplane::new(&root2, h2.netns().clone());
    let (d1, d2) = desired(IpAddr::V4(h1.addr()), IpAddr::V4(h2.addr()));

    // Count VXLAN on the configured port where nothing of ours runs.
    let sw = u.switch().path().to_owned();
    probe_vxlan_ports(&sw);

    // Apply; the second apply has nothing to do.
    assert!(!ops_of(dp1.apply(&d1).await).is_empty());
    assert!(!ops_of(dp2.apply(&d2).await).is_empty());
    assert_eq!(ops_of(dp1.apply(&d1).await), vec![]);
    assert_eq!(ops_of(dp2.apply(&d2).await), vec![]);

    // Independent view of node 1's kernel objects.
    let (n1, ta) = node1_objects(&root1, &dp1, h1, h2);

    // a -> b across nodes over VXLAN on the configured port.
    let (a, b) = (
        Netns::open(&ta).unwrap(),
        Netns::open(dp2.task_netns(&"b".into())).unwrap(),
    );
    let (c, d) = (
        Netns::open(dp2.task_netns(&"c".into())).unwrap(),
        Netns::open(dp1.task_netns(&"d".into())).unwrap(),
    );
    let before = counter(&sw, "vx");
    assert_eq!(
        exchange(&a, listen(&b, "10.20.0.3"), "10.20.0.3"),
        "10.20.0.2".parse::<IpAddr>().unwrap()
    );
    assert!(counter(&sw, "vx") > before, "VXLAN seen on UDP {PORT}");
    assert_eq!(counter(&sw, "default"), 0, "nothing on the default port");

    // The second network works, and is isolated from the first even with
    // the same subnet: a (n1) cannot reach c (n2).
    let lc = listen(&c, "10.20.0.4");
    let lc_port = lc.local_addr().unwrap().port();
    assert!(cannot_connect(&a, "10.20.0.4", lc_port));
    assert_eq!(
        exchange(&d, lc, "10.20.0.4"),
        "10.20.0.5".parse::<IpAddr>().unwrap()
    );

    // Gateway bridge: a reaches its own node's address, and egress to the
    // other node is masqueraded to node 1's address.
    let h1_addr = h1.addr().to_string();
    let h2_addr = h2.addr().to_string();
    assert_eq!(
        exchange(&a, listen(h1.netns(), &h1_addr), &h1_addr),
        "172.18.0.2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        exchange(&a, listen(h2.netns(), &h2_addr), &h2_addr),
        IpAddr::V4(h1.addr())
    );

    // Internal network: c has no way to the gateway bridge or its node.
    let l = listen(h2.netns(), "172.18.0.1");
    let port = l.local_addr().unwrap().port();
    assert!(cannot_connect(&c, "172.18.0.1", port));
    assert!(cannot_connect(&c, &h2_addr, port));
    assert!(ip_link(&dp2.task_netns(&"c".into()), "gw0").is_none());
    drop(l);

    // Drift: the VXLAN device deleted by hand is repaired by the next apply.
    nsenter(&n1, &["ip", "link", "del", "weft-vx4242"]);
    let ops = ops_of(dp1.apply(&d1).await);
    assert!(
        ops.iter().any(|o| matches!(o, Op::CreateVxlan { .. })),
        "{ops:?}"
    );
    assert_eq!(
        exchange(&a, listen(&b, "10.20.0.3"), "10.20.0.3"),
        "10.20.0.2".parse::<IpAddr>().unwrap()
    );

    // Adoption: a fresh instance on the same exec root plans nothing but
    // its own resolvers (the first instance still serves them here; after
    // a restart the old sockets are gone).
    let fresh = LinuxDataplane::new(&root1, h1.netns().clone());
    let ops = weft_overlay::plan(&fresh.observe().await.unwrap(), &d1).unwrap();
    assert_eq!(
        ops,
        vec![
            Op::StartDns {
                task: "a".into(),
                addr: weft_overlay::dns::RESOLVER_ADDR
            },
            Op::StartDns {
                task: "d".into(),
                addr: weft_overlay::dns::RESOLVER_ADDR
            }
        ]
    );

    // Removing a network (and its task) removes every kernel object of it;
    // then teardown removes everything, on both nodes.
    remove_network_then_teardown(&d1, (&dp1, &dp2), (h1, h2), (&root1, &root2), (a, b, c, d)).await;
    assert!(u.destroy().is_clean());
}

/// Counters on the switch for VXLAN on the configured port and on the
/// default one.
fn probe_vxlan_ports(sw: &Path) {
    nsenter(sw, &["nft", "add", "table", "bridge", "probe"]);
    nsenter(
        sw,
        &[
            "nft",
            "add chain bridge probe cnt { type filter hook forward priority 0; }",
        ],
    );
    nsenter(
        sw,
        &[
            "nft",
            &format!("add rule bridge probe cnt udp dport {PORT} counter comment \"vx\""),
        ],
    );
    nsenter(
        sw,
        &[
            "nft",
            "add rule bridge probe cnt udp dport 4789 counter comment \"default\"",
        ],
    );
}

/// Node 1's kernel objects, read with `ip`, `bridge` and `nft`: the VXLAN
/// device, bridge, FDB and neighbour entries, task a's interfaces and
/// route, the gateway bridge, the nftables table (not in the test's own
/// namespace). Returns the pins of network n1 and of task a.
fn node1_objects(
    root1: &Path,
    dp1: &LinuxDataplane,
    h1: &weft_overlay::linux::topology::UnderlayHost,
    h2: &weft_overlay::linux::topology::UnderlayHost,
) -> (PathBuf, PathBuf) {
    let n1 = root1.join("netns/net-n1");
    let vx = ip_link(&n1, "weft-vx4242").expect("vxlan in the network namespace");
    let info = &vx["linkinfo"]["info_data"];
    assert_eq!(
        (info["id"].as_u64(), info["port"].as_u64()),
        (Some(4242), Some(u64::from(PORT)))
    );
    assert_eq!(info["local"], h1.addr().to_string());
    assert_eq!(
        (info["learning"].as_bool(), info["proxy"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(vx["master"], "br0");
    assert!(has_flag(&vx, "UP"));
    assert!(
        ip_link(h1.netns().path(), "weft-vx4242").is_none(),
        "moved out of the host"
    );
    assert_eq!(addrs(&n1, "br0"), vec!["10.20.0.1/24"]);
    let fdb = bridge(&n1, &["fdb", "show", "dev", "weft-vx4242"]);
    let fdb = fdb.as_array().unwrap();
    assert!(
        fdb.iter()
            .any(|e| e["mac"] == mac(3).to_string() && e["dst"] == h2.addr().to_string()),
        "{fdb:?}"
    );
    assert!(
        !fdb.iter().any(|e| e["mac"] == "00:00:00:00:00:00"),
        "no flood entries: {fdb:?}"
    );
    let neigh = ip(&n1, &["neigh", "show", "dev", "weft-vx4242"]);
    assert!(
        neigh
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["dst"] == "10.20.0.3"
                && n["lladdr"] == mac(3).to_string()
                && n["state"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s == "PERMANENT")),
        "{neigh}"
    );
    let ta = dp1.task_netns(&TaskId::from("a"));
    let eth0 = ip_link(&ta, "eth0").unwrap();
    assert_eq!(
        (eth0["address"].as_str(), eth0["mtu"].as_u64()),
        (Some(mac(2).to_string().as_str()), Some(1450))
    );
    assert_eq!(addrs(&ta, "eth0"), vec!["10.20.0.2/24"]);
    assert_eq!(addrs(&ta, "gw0"), vec!["172.18.0.2/16"]);
    let routes = ip(&ta, &["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "172.18.0.1", "{routes}");
    assert_eq!(
        addrs(h1.netns().path(), "weft_gwbridge"),
        vec!["172.18.0.1/16"]
    );
    assert!(has_weft_table(&nft_ruleset(h1.netns().path())));
    let own = Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .unwrap();
    let own: Value = serde_json::from_slice(&own.stdout).unwrap_or(Value::Null);
    assert!(
        own.is_null() || !has_weft_table(&own),
        "the test's own namespace stays untouched"
    );
    (n1, ta)
}

/// Network n2 (and its task d) removed from node 1: every kernel object of
/// it goes, n1 still works; then both nodes are torn down completely.
async fn remove_network_then_teardown(
    d1: &DesiredNode,
    (dp1, dp2): (&LinuxDataplane, &LinuxDataplane),
    (h1, h2): (
        &weft_overlay::linux::topology::UnderlayHost,
        &weft_overlay::linux::topology::UnderlayHost,
    ),
    (root1, root2): (&Path, &Path),
    (a, b, c, d): (Netns, Netns, Netns, Netns),
) {
    let mut smaller = d1.clone();
    smaller.networks.remove(&"n2".into());
    smaller.tasks.remove(&"d".into());
    drop(d);
    ops_of(dp1.apply(&smaller).await);
    assert!(!root1.join("netns/net-n2").exists());
    assert!(!root1.join("netns/task-d").exists());
    assert!(
        !ip_link_names(h1.netns().path())
            .iter()
            .any(|n| n.starts_with("weft-vx"))
    );
    assert_eq!(ops_of(dp1.apply(&smaller).await), vec![]);
    assert!(exchange(&a, listen(&b, "10.20.0.3"), "10.20.0.3").is_ipv4());

    // Teardown removes everything, on both nodes.
    drop((a, b, c));
    for (dp, h, root) in [(&dp1, h1, &root1), (&dp2, h2, &root2)] {
        let report = dp.teardown_all().await.unwrap();
        assert!(report.is_clean(), "{:?}", report.errors);
        assert!(
            !root.join("netns").exists(),
            "pins left in {}",
            root.display()
        );
        let names = ip_link_names(h.netns().path());
        assert!(!names.iter().any(|n| n.starts_with("weft")), "{names:?}");
        assert!(!has_weft_table(&nft_ruleset(h.netns().path())));
    }
}

#[tokio::test]
async fn gateway_collision_is_refused_and_mtu_is_found() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "dpc",
        "198.18.41.0/24".parse().unwrap(),
        &["h1"],
    )
    .await
    .unwrap();
    let h1 = u.host("h1").unwrap();
    assert_eq!(
        underlay_mtu_of(h1.netns(), IpAddr::V4(h1.addr()))
            .await
            .unwrap(),
        Some(1500)
    );
    assert_eq!(
        underlay_mtu_of(h1.netns(), "198.18.41.200".parse().unwrap())
            .await
            .unwrap(),
        None
    );

    let dp = LinuxDataplane::new(run.path().join("node"), h1.netns().clone());
    let mut d = DesiredNode::new(IpAddr::V4(h1.addr()));
    d.gateway = Some(GatewayBridge {
        subnet: "198.18.41.128/25".parse().unwrap(),
        gateway: "198.18.41.129".parse().unwrap(),
        mtu: 1500,
        ipv6: None,
    });
    match dp.apply(&d).await {
        Err(Error::Plan(PlanError::GatewaySubnetCollision { route, dev, .. })) => {
            assert_eq!(route.to_string(), "198.18.41.0/24");
            assert_eq!(dev.as_deref(), Some("eth0"));
        }
        r => panic!("expected a collision, got {r:?}"),
    }
    assert!(ip_link(h1.netns().path(), "weft_gwbridge").is_none());
    // The default subnet is fine here; removing the gateway removes it all.
    d.gateway = Some(GatewayBridge::default());
    ops_of(dp.apply(&d).await);
    assert!(ip_link(h1.netns().path(), "weft_gwbridge").is_some());
    d.gateway = None;
    ops_of(dp.apply(&d).await);
    assert!(ip_link(h1.netns().path(), "weft_gwbridge").is_none());
    assert!(!has_weft_table(&nft_ruleset(h1.netns().path())));
    assert_eq!(ops_of(dp.apply(&d).await), vec![]);
    assert!(dp.teardown_all().await.unwrap().is_clean());
}
