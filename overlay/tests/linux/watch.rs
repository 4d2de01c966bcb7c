//! Event-driven observation on a real kernel: once a node settled, its
//! passes read no namespace; a change made by hand in one namespace (a
//! link's MTU, a task's VIP table flushed, a static neighbour entry
//! deleted) moves the change counter, and the next pass re-reads that
//! namespace only and repairs it; an entry learnt from traffic is not a
//! reason to read.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use weft_overlay::linux::{LinuxDataplane, Underlay};
use weft_overlay::plan::Op;
use weft_overlay::{
    Dataplane, DesiredNode, LocalEndpoint, MacAddr, OverlayNet, RemoteEndpoint, ServiceEntry,
    TaskId, TaskNet,
};

use crate::common::{RunDir, apply, nsenter, require_root};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0x0a, 0x30, 0x00, i])
}

fn task(addr: &str, m: u8) -> TaskNet {
    TaskNet {
        netns: None,
        handover: false,
        resolver: None,
        endpoints: vec![LocalEndpoint {
            ip6: None,
            network: "n1".into(),
            ifname: "eth0".into(),
            ip: format!("{addr}/24").parse().unwrap(),
            mac: mac(m),
        }],
        gateway: None,
    }
}

/// One network with a VIP service over two local tasks and one remote
/// endpoint (its VTEP need not exist: only the entries are checked).
fn desired(vtep: IpAddr) -> DesiredNode {
    let mut n1 = OverlayNet {
        subnet6: None,
        local: false,
        vni: 4801,
        subnet: "10.48.0.0/24".parse().unwrap(),
        gateway: ip("10.48.0.1"),
        mtu: 1450,
        internal: true,
        remote: BTreeMap::new(),
        name: "watchnet".into(),
        services: BTreeMap::new(),
        names: BTreeMap::new(),
    };
    n1.services.insert(
        "web".into(),
        ServiceEntry {
            vip6: None,
            vip: Some(ip("10.48.0.100")),
            backends: vec![ip("10.48.0.11"), ip("10.48.0.12")],
        },
    );
    n1.remote.insert(
        "r".into(),
        RemoteEndpoint {
            ip6: None,
            ip: ip("10.48.0.9"),
            mac: mac(9),
            vtep: ip("198.18.48.99"),
        },
    );
    let mut d = DesiredNode::new(vtep);
    d.vxlan_port = 4802;
    d.networks.insert("n1".into(), n1);
    d.tasks.insert("a".into(), task("10.48.0.11", 11));
    d.tasks.insert("b".into(), task("10.48.0.12", 12));
    d
}

/// Applies until a pass reads no namespace (the kernel's own follow-ups of
/// a change, such as a link's carrier coming up, arrive up to a second
/// later); fails after 10 s.
pub(crate) async fn settle(dp: &LinuxDataplane, d: &DesiredNode) {
    let start = Instant::now();
    loop {
        let before = dp.namespace_reads();
        assert_eq!(apply(dp, d).await, vec![], "a settled node plans nothing");
        if dp.namespace_reads() == before {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "passes kept reading namespaces"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the change counter moves past `seen` (at most 5 s).
pub(crate) async fn moved(rx: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the change counter moves")
        .expect("sender alive");
    rx.borrow_and_update();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_reads_nothing_and_a_change_rereads_its_namespace() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "wat",
        "198.18.48.0/24".parse().unwrap(),
        &["h1"],
    )
    .await
    .unwrap();
    let h1 = u.host("h1").unwrap();
    let dp = LinuxDataplane::new(run.path().join("node"), h1.netns().clone());
    let d = desired(IpAddr::V4(h1.addr()));
    let mut rx = dp.observed_changes().expect("the Linux data plane watches");

    assert!(!apply(&dp, &d).await.is_empty());
    settle(&dp, &d).await;
    rx.borrow_and_update();
    // Idle: several passes, no namespace read.
    let r0 = dp.namespace_reads();
    for _ in 0..3 {
        assert_eq!(apply(&dp, &d).await, vec![]);
    }
    assert_eq!(dp.namespace_reads(), r0, "idle passes read no namespace");

    let a = dp.task_netns(&TaskId::from("a"));
    let b = dp.task_netns(&TaskId::from("b"));
    let net = a.parent().unwrap().join("net-n1");
    assert!(net.exists(), "the network's pin is {}", net.display());

    // A link's MTU changed by hand in task a: noticed, a re-read, repaired.
    nsenter(&a, &["ip", "link", "set", "eth0", "mtu", "1300"]);
    moved(&mut rx).await;
    let before = dp.namespace_reads();
    let ops = apply(&dp, &d).await;
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::SetMtu { mtu: 1450, .. })),
        "{ops:?}"
    );
    assert_eq!(dp.namespace_reads() - before, 1, "only task a's namespace");
    settle(&dp, &d).await;

    // Task b's VIP table deleted by hand: put back.
    nsenter(&b, &["nft", "delete", "table", "inet", "weft_lb"]);
    moved(&mut rx).await;
    let before = dp.namespace_reads();
    let ops = apply(&dp, &d).await;
    assert!(
        ops.iter().any(|o| matches!(o, Op::ApplyLb { .. })),
        "{ops:?}"
    );
    assert_eq!(dp.namespace_reads() - before, 1, "only task b's namespace");
    // The table just written is known: not read back.
    let before = dp.namespace_reads();
    assert_eq!(apply(&dp, &d).await, vec![]);
    assert_eq!(
        dp.namespace_reads(),
        before,
        "a VIP table weft wrote is not read back"
    );
    settle(&dp, &d).await;

    // The remote endpoint's static neighbour entry deleted: put back.
    let vx = crate::common::ip_link_names(&net)
        .into_iter()
        .find(|n| n.starts_with("weft-vx"))
        .expect("the VXLAN device");
    nsenter(&net, &["ip", "neigh", "del", "10.48.0.9", "dev", &vx]);
    moved(&mut rx).await;
    let before = dp.namespace_reads();
    let ops = apply(&dp, &d).await;
    assert!(
        ops.iter().any(|o| matches!(o, Op::ReplaceNeigh { .. })),
        "{ops:?}"
    );
    assert_eq!(
        dp.namespace_reads() - before,
        1,
        "only the network's namespace"
    );
    settle(&dp, &d).await;

    // A learnt (dynamic) entry appears: nothing to read.
    let before = dp.namespace_reads();
    nsenter(
        &net,
        &[
            "ip",
            "neigh",
            "add",
            "10.48.0.77",
            "lladdr",
            "02:42:0a:30:00:77",
            "dev",
            &vx,
            "nud",
            "reachable",
        ],
    );
    assert_eq!(apply(&dp, &d).await, vec![]);
    assert_eq!(
        dp.namespace_reads(),
        before,
        "a learnt entry is not a reason to read"
    );
}
