//! A dual-stack network (10.53.0.0/24 + fd00:53::/64) across two nodes:
//! four tasks (a client and a backend on node 1, two backends on node 2)
//! reach each other over IPv4 and IPv6, the service's IPv6 VIP balances
//! over the IPv6 backends of both nodes (and its IPv4 VIP over the IPv4
//! ones), the resolver answers AAAA for task and service names (and
//! NOERROR without data for a name that has no IPv6 address), and an IPv6
//! address or neighbour entry removed by hand comes back with the next
//! pass and nothing else. Checked from outside with `ip -j` and `nft -j`
//! through `nsenter`, and with TCP connections made by the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use weft_overlay::linux::{LinuxDataplane, Netns, Underlay};
use weft_overlay::model::names;
use weft_overlay::plan::Op;
use weft_overlay::{
    Dataplane, DesiredNode, LocalEndpoint, MacAddr, OverlayNet, RemoteEndpoint, ServiceEntry,
    TaskId, TaskNet,
};

use crate::common::{RunDir, apply, ip as ip_json, nft_ruleset, nsenter, require_root};
use crate::services::{Servers, answers, dns_udp, hits, names, set};
use crate::watch::{moved, settle};

const VIP: &str = "10.53.0.100";
const VIP6: &str = "fd00:53::100";
const VNI: u32 = 4531;

/// (name, IPv4, IPv6, mac byte, node)
const TASKS: &[(&str, &str, &str, u8, u8)] = &[
    ("cl", "10.53.0.10", "fd00:53::10", 10, 1),
    ("b1", "10.53.0.11", "fd00:53::11", 11, 1),
    ("b2", "10.53.0.12", "fd00:53::12", 12, 2),
    ("b3", "10.53.0.13", "fd00:53::13", 13, 2),
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0x0a, 0x35, 0x00, i])
}

/// Both nodes' desired state.
fn desired(vteps: [IpAddr; 2]) -> [DesiredNode; 2] {
    let mut n = OverlayNet {
        local: false,
        vni: VNI,
        subnet: "10.53.0.0/24".parse().unwrap(),
        gateway: ip("10.53.0.1"),
        subnet6: Some(("fd00:53::/64".parse().unwrap(), ip("fd00:53::1"))),
        mtu: 1450,
        internal: true,
        remote: BTreeMap::new(),
        name: "dualnet".into(),
        services: BTreeMap::new(),
        names: BTreeMap::new(),
    };
    let backends = TASKS
        .iter()
        .filter(|t| t.0 != "cl")
        .flat_map(|t| [ip(t.1), ip(t.2)])
        .collect();
    n.services.insert(
        "web".into(),
        ServiceEntry {
            vip: Some(ip(VIP)),
            vip6: Some(ip(VIP6)),
            backends,
        },
    );
    for (name, v4, v6, _, _) in TASKS {
        n.names.insert(format!("{name}.1"), vec![ip(v4), ip(v6)]);
    }
    // A name with no IPv6 address (a task of an older attachment).
    n.names.insert("old.1".into(), vec![ip("10.53.0.50")]);
    let mut out = [DesiredNode::new(vteps[0]), DesiredNode::new(vteps[1])];
    for (i, d) in out.iter_mut().enumerate() {
        let node = i as u8 + 1;
        d.vxlan_port = 4803;
        let mut net = n.clone();
        for (name, v4, v6, m, on) in TASKS {
            if *on == node {
                d.tasks.insert(
                    (*name).into(),
                    TaskNet {
                        endpoints: vec![LocalEndpoint {
                            network: "n1".into(),
                            ifname: "eth0".into(),
                            ip: format!("{v4}/24").parse().unwrap(),
                            ip6: Some(format!("{v6}/64").parse().unwrap()),
                            mac: mac(*m),
                        }],
                        ..TaskNet::default()
                    },
                );
            } else {
                net.remote.insert(
                    (*name).into(),
                    RemoteEndpoint {
                        ip: ip(v4),
                        ip6: Some(ip(v6)),
                        mac: mac(*m),
                        vtep: vteps[usize::from(*on) - 1],
                    },
                );
            }
        }
        d.networks.insert("n1".into(), net);
    }
    out
}

/// Which backend answers one TCP connection from `client` to `to`.
fn one(client: &Netns, to: &str) -> String {
    let h = hits(client, to, 1);
    h.into_keys().next().unwrap()
}

/// The global IPv6 addresses of `link` in `ns` with their flags, as `ip`
/// shows them.
fn ipv6_addrs(ns: &Path, link: &str) -> BTreeMap<String, Vec<String>> {
    let all = ip_json(ns, &["-6", "addr", "show", "dev", link, "scope", "global"]);
    all.as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        // `ip` lists the addresses the scope filter left out as `{}`.
        .filter(|a| a["local"].is_string())
        .map(|a| {
            let flags = ["tentative", "dadfailed", "nodad"]
                .into_iter()
                .filter(|f| a[*f].as_bool() == Some(true))
                .map(str::to_owned)
                .collect();
            (
                format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]),
                flags,
            )
        })
        .collect()
}

/// The permanent IPv6 neighbour entries of `link` in `ns`: address -> MAC.
fn ipv6_neighs(ns: &Path, link: &str) -> BTreeMap<String, String> {
    let all = ip_json(
        ns,
        &["-6", "neigh", "show", "dev", link, "nud", "permanent"],
    );
    all.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["dst"].as_str().unwrap().to_owned(),
                n["lladdr"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn ipv6_supported() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_across_two_nodes() {
    require_root!();
    assert!(
        ipv6_supported(),
        "this kernel has no IPv6 (/proc/sys/net/ipv6 missing): the dual-stack test cannot run"
    );
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "ds",
        "198.18.53.0/24".parse().unwrap(),
        &["h1", "h2"],
    )
    .await
    .unwrap();
    let (h1, h2) = (u.host("h1").unwrap(), u.host("h2").unwrap());
    let roots: [PathBuf; 2] = [run.path().join("node1"), run.path().join("node2")];
    let dp1 = LinuxDataplane::new(&roots[0], h1.netns().clone());
    let dp2 = LinuxDataplane::new(&roots[1], h2.netns().clone());
    let vteps = [IpAddr::V4(h1.addr()), IpAddr::V4(h2.addr())];
    let [d1, d2] = desired(vteps);

    assert!(!apply(&dp1, &d1).await.is_empty());
    assert!(!apply(&dp2, &d2).await.is_empty());
    assert_eq!(apply(&dp1, &d1).await, vec![], "second apply: no ops");
    assert_eq!(apply(&dp2, &d2).await, vec![]);

    // The kernel, seen from outside: the IPv6 gateway on br0, the task's
    // IPv6 address usable at once (no DAD), the remote tasks' IPv6
    // neighbour entries beside the IPv4 ones, to the same MAC.
    let net_pin = dp1.netns_dir().join(names::network_ns(&"n1".into()));
    let cl_pin = dp1.task_netns(&TaskId::from("cl"));
    let br = ipv6_addrs(&net_pin, names::NETWORK_BRIDGE);
    assert!(br.contains_key("fd00:53::1/64"), "{br:?}");
    let eth0 = ipv6_addrs(&cl_pin, "eth0");
    assert_eq!(
        eth0.get("fd00:53::10/64").map(Vec::as_slice),
        Some(&["nodad".to_owned()][..]),
        "{eth0:?}"
    );
    let vx = names::vxlan(VNI);
    let neighs = ipv6_neighs(&net_pin, &vx);
    assert_eq!(
        neighs,
        BTreeMap::from([
            ("fd00:53::12".to_owned(), "02:42:0a:35:00:0c".to_owned()),
            ("fd00:53::13".to_owned(), "02:42:0a:35:00:0d".to_owned()),
        ])
    );

    let open = |dp: &LinuxDataplane, t: &str| Netns::open(dp.task_netns(&TaskId::from(t))).unwrap();
    let cl = open(&dp1, "cl");
    let (b1, b2, b3) = (open(&dp1, "b1"), open(&dp2, "b2"), open(&dp2, "b3"));
    let mut servers = Servers::new();
    for (ns, name) in [(&b1, "b1"), (&b2, "b2"), (&b3, "b3")] {
        servers.backend(ns, name);
    }

    // Task to task, both families, local and across the nodes.
    for (to, who) in [
        ("fd00:53::11", "b1"),
        ("fd00:53::12", "b2"),
        ("10.53.0.12", "b2"),
        ("fd00:53::13", "b3"),
    ] {
        assert_eq!(one(&cl, to), who, "{to}");
    }

    // The VIP table holds both VIPs; the IPv6 one balances over the IPv6
    // backends of both nodes, the IPv4 one over the IPv4 ones.
    let rs = nft_ruleset(&cl_pin).to_string();
    assert!(rs.contains(VIP6) && rs.contains("fd00:53::13"), "{rs}");
    assert!(rs.contains(&format!("weft-lb:{VIP6}:")), "{rs}");
    let all = BTreeSet::from(["b1", "b2", "b3"]);
    for vip in [VIP6, VIP] {
        let h = hits(&cl, vip, 60);
        assert_eq!(names(&h), all, "{vip}: {h:?}");
    }

    // DNS: AAAA and A, each its own family; NOERROR without data for a
    // name with no IPv6 address.
    assert_eq!(
        answers(&dns_udp(&cl, "web.", RecordType::AAAA)),
        set(&[VIP6])
    );
    assert_eq!(answers(&dns_udp(&cl, "web.", RecordType::A)), set(&[VIP]));
    assert_eq!(
        answers(&dns_udp(&cl, "tasks.web.dualnet.", RecordType::AAAA)),
        set(&["fd00:53::11", "fd00:53::12", "fd00:53::13"])
    );
    assert_eq!(
        answers(&dns_udp(&cl, "b2.1.", RecordType::AAAA)),
        set(&["fd00:53::12"])
    );
    assert_eq!(
        answers(&dns_udp(&cl, "b2.1.", RecordType::A)),
        set(&["10.53.0.12"])
    );
    assert_eq!(answers(&dns_udp(&cl, "old.1.", RecordType::AAAA)), set(&[]));
    assert_eq!(
        dns_udp(&cl, "nothing.", RecordType::AAAA)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    // An independent client.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", cl_pin.display()))
        .args(["busybox", "nslookup", "-type=aaaa", "web", "127.0.0.11"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(VIP6), "{text} {out:?}");

    // Drift: the IPv6 address of the client and a remote's IPv6 neighbour
    // entry removed by hand wake the namespace watch (the kernel's own
    // IPv6 chatter, link-local addresses and multicast neighbour entries,
    // does not: the node settles), and come back with the next pass, and
    // only they.
    let mut rx = dp1
        .observed_changes()
        .expect("the Linux data plane watches");
    settle(&dp1, &d1).await;
    rx.borrow_and_update();
    nsenter(
        &cl_pin,
        &["ip", "-6", "addr", "del", "fd00:53::10/64", "dev", "eth0"],
    );
    moved(&mut rx).await;
    assert_eq!(
        apply(&dp1, &d1).await,
        vec![Op::AddAddress {
            ns: weft_overlay::plan::NsRef::Task("cl".into()),
            link: "eth0".into(),
            addr: "fd00:53::10/64".parse().unwrap(),
        }]
    );
    settle(&dp1, &d1).await;
    rx.borrow_and_update();
    nsenter(
        &net_pin,
        &["ip", "-6", "neigh", "del", "fd00:53::12", "dev", &vx],
    );
    moved(&mut rx).await;
    assert_eq!(
        apply(&dp1, &d1).await,
        vec![Op::ReplaceNeigh {
            network: "n1".into(),
            link: vx.clone(),
            ip: ip("fd00:53::12"),
            mac: mac(12),
        }]
    );
    assert_eq!(apply(&dp1, &d1).await, vec![]);
    assert!(ipv6_addrs(&cl_pin, "eth0").contains_key("fd00:53::10/64"));
    assert!(ipv6_neighs(&net_pin, &vx).contains_key("fd00:53::12"));
    assert_eq!(one(&cl, "fd00:53::12"), "b2");

    drop(servers);
    drop((cl, b1, b2, b3));
    for dp in [&dp1, &dp2] {
        let report = dp.teardown_all().await.unwrap();
        assert!(report.is_clean(), "{:?}", report.errors);
    }
    assert!(u.destroy().is_clean());
}
