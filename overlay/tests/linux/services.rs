//! Service VIPs and the embedded resolver end to end on two nodes: three
//! backend tasks (one local, two remote) run tiny TCP/UDP servers that
//! answer with their own name; a client task balances over them through
//! its VIP table, a removed backend receives nothing (not even a flow that
//! stuck to it, thanks to the conntrack flush), a VIP without backends
//! refuses at once, and the resolver at 127.0.0.11 answers only the names
//! of the client's networks and forwards the rest from the daemon's
//! namespace. Checked from outside with `nft`, `/proc/net/nf_conntrack`
//! and `busybox nslookup` run through `nsenter`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use weft_overlay::linux::{LinuxDataplane, Netns, Underlay};
use weft_overlay::plan::Op;
use weft_overlay::{
    Dataplane, DesiredNode, LocalEndpoint, MacAddr, OverlayNet, RemoteEndpoint, ServiceEntry,
    TaskId, TaskNet,
};

use crate::common::{RunDir, apply, nft_ruleset, require_root};

const VIP: &str = "10.40.0.100";
const DOWN_VIP: &str = "10.40.0.101";
const HIDDEN_VIP: &str = "10.41.0.100";
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9090;
/// What the fake upstream resolver answers for every name.
const UPSTREAM_ANSWER: &str = "192.0.2.99";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(vni: u32, third: u8, name: &str) -> OverlayNet {
    OverlayNet {
        subnet6: None,
        local: false,
        vni,
        subnet: format!("10.{third}.0.0/24").parse().unwrap(),
        gateway: ip(&format!("10.{third}.0.1")),
        mtu: 1450,
        internal: true,
        remote: BTreeMap::new(),
        name: name.into(),
        services: BTreeMap::new(),
        names: BTreeMap::new(),
    }
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0x0a, 0x28, 0x00, i])
}

fn task(network: &str, addr: &str, m: u8) -> TaskNet {
    TaskNet {
        netns: None,
        handover: false,
        resolver: None,
        endpoints: vec![LocalEndpoint {
            ip6: None,
            network: network.into(),
            ifname: "eth0".into(),
            ip: format!("{addr}/24").parse().unwrap(),
            mac: mac(m),
        }],
        gateway: None,
    }
}

/// (name, network, address, mac byte, node)
const TASKS: &[(&str, &str, &str, u8, u8)] = &[
    ("cl", "n1", "10.40.0.10", 10, 1),
    ("b1", "n1", "10.40.0.11", 11, 1),
    ("x", "n2", "10.41.0.5", 5, 1),
    ("b2", "n1", "10.40.0.12", 12, 2),
    ("b3", "n1", "10.40.0.13", 13, 2),
];

/// Both nodes' desired state with `web`'s backends `backends`.
fn desired(vteps: [IpAddr; 2], backends: &[&str], upstream: SocketAddr) -> [DesiredNode; 2] {
    let mut n1 = net(4401, 40, "appnet");
    n1.services.insert(
        "web".into(),
        ServiceEntry {
            vip6: None,
            vip: Some(ip(VIP)),
            backends: backends.iter().map(|b| ip(b)).collect(),
        },
    );
    n1.services.insert(
        "rr".into(),
        ServiceEntry {
            vip6: None,
            vip: None,
            backends: vec![ip("10.40.0.11"), ip("10.40.0.12")],
        },
    );
    n1.services.insert(
        "down".into(),
        ServiceEntry {
            vip6: None,
            vip: Some(ip(DOWN_VIP)),
            backends: vec![],
        },
    );
    let mut n2 = net(4402, 41, "other");
    n2.services.insert(
        "hidden".into(),
        ServiceEntry {
            vip6: None,
            vip: Some(ip(HIDDEN_VIP)),
            backends: vec![ip("10.41.0.5")],
        },
    );
    for (name, network, addr, _, _) in TASKS {
        let n = if *network == "n1" { &mut n1 } else { &mut n2 };
        n.names.insert(format!("{name}.1"), vec![ip(addr)]);
    }
    let mut out = [DesiredNode::new(vteps[0]), DesiredNode::new(vteps[1])];
    for (i, d) in out.iter_mut().enumerate() {
        let node = i as u8 + 1;
        d.vxlan_port = 4801;
        d.dns_upstreams = vec![upstream];
        let (mut a, mut b) = (n1.clone(), n2.clone());
        for (name, network, addr, m, on) in TASKS {
            if *on == node {
                d.tasks.insert((*name).into(), task(network, addr, *m));
            } else {
                let r = RemoteEndpoint {
                    ip6: None,
                    ip: ip(addr),
                    mac: mac(*m),
                    vtep: vteps[usize::from(*on) - 1],
                };
                let n = if *network == "n1" { &mut a } else { &mut b };
                n.remote.insert((*name).into(), r);
            }
        }
        d.networks.insert("n1".into(), a);
        d.networks.insert("n2".into(), b);
    }
    out
}

/// Background servers, stopped and joined on drop.
pub(crate) struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub(crate) fn new() -> Servers {
        Servers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// TCP on 8080 (both families: a dual-stack socket) and UDP on 9090
    /// (IPv4) in `ns`, both answering `name`.
    pub(crate) fn backend(&mut self, ns: &Netns, name: &'static str) {
        let (tcp, udp) = ns
            .run_in(|| {
                let tcp = TcpListener::bind(("::", TCP_PORT)).unwrap();
                let udp = UdpSocket::bind(("0.0.0.0", UDP_PORT)).unwrap();
                (tcp, udp)
            })
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let _ = s.write_all(name.as_bytes());
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
                    let _ = udp.send_to(name.as_bytes(), peer);
                }
            }
        }));
    }

    /// A resolver in `ns` at `addr` answering every A query with
    /// [`UPSTREAM_ANSWER`].
    fn upstream(&mut self, ns: &Netns, addr: SocketAddr) {
        let udp = ns.run_in(move || UdpSocket::bind(addr).unwrap()).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                let query = q.queries[0].clone();
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A(UPSTREAM_ANSWER.parse().unwrap())),
                ));
                r.add_query(query);
                udp.send_to(&r.to_vec().unwrap(), peer).unwrap();
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

/// `n` TCP connections from `client` to `to`; how often each backend
/// answered.
pub(crate) fn hits(client: &Netns, to: &str, n: usize) -> BTreeMap<String, usize> {
    let target = SocketAddr::new(ip(to), TCP_PORT);
    client
        .run_in(|| {
            let mut out = BTreeMap::new();
            for _ in 0..n {
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connect {target}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut name = String::new();
                s.read_to_string(&mut name).unwrap();
                *out.entry(name).or_insert(0) += 1;
            }
            out
        })
        .unwrap()
}

pub(crate) fn names(h: &BTreeMap<String, usize>) -> BTreeSet<&str> {
    h.keys().map(String::as_str).collect()
}

/// A UDP "flow" (one socket) from `client` to the VIP that landed on
/// `backend`.
fn udp_flow_to(client: &Netns, backend: &str) -> UdpSocket {
    let target = SocketAddr::new(ip(VIP), UDP_PORT);
    client
        .run_in(|| {
            for _ in 0..200 {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.connect(target).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                if udp_ask(&s) == backend {
                    return s;
                }
            }
            panic!("no UDP flow landed on {backend}");
        })
        .unwrap()
}

fn udp_ask(s: &UdpSocket) -> String {
    s.send(b"hi").unwrap();
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Lines of `/proc/net/nf_conntrack` in the namespace pinned at `ns`.
fn conntrack(ns: &Path) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["cat", "/proc/net/nf_conntrack"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// One UDP query to 127.0.0.11 from inside `ns`.
pub(crate) fn dns_udp(ns: &Netns, name: &str, t: RecordType) -> Message {
    let q = query(name, t);
    let bytes = ns
        .run_in(|| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            s.send_to(&q, "127.0.0.11:53").unwrap();
            let mut buf = vec![0u8; 4096];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!(from, "127.0.0.11:53".parse().unwrap());
            buf.truncate(n);
            buf
        })
        .unwrap();
    Message::from_vec(&bytes).unwrap()
}

/// One TCP query to 127.0.0.11 from inside `ns`.
fn dns_tcp(ns: &Netns, name: &str, t: RecordType) -> Message {
    let q = query(name, t);
    let bytes = ns
        .run_in(|| {
            let mut s = TcpStream::connect("127.0.0.11:53").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            let mut frame = (q.len() as u16).to_be_bytes().to_vec();
            frame.extend_from_slice(&q);
            s.write_all(&frame).unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf).unwrap();
            buf
        })
        .unwrap();
    Message::from_vec(&bytes).unwrap()
}

pub(crate) fn answers(m: &Message) -> BTreeSet<IpAddr> {
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            other => panic!("{other:?}"),
        })
        .collect()
}

pub(crate) fn set(v: &[&str]) -> BTreeSet<IpAddr> {
    v.iter().map(|s| ip(s)).collect()
}

fn lb_rule_comments(ns: &Path) -> BTreeSet<String> {
    let rs = nft_ruleset(ns);
    rs["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["rule"]["table"] == "weft_lb")
        .map(|o| o["rule"]["comment"].as_str().unwrap().to_owned())
        .collect()
}

fn nft_in(ns: &Path, cmd: &str) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["nft", cmd])
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd}: {out:?}");
}

/// The resolver seen from client `cl` (its pin `cl_pin`) and from `x`
/// (on the hidden network): the service names, `tasks.`, round robin, a
/// task's name, AAAA, forwarding of names not ours, over UDP and TCP, and
/// an independent client (busybox nslookup).
fn dns_from_tasks(cl: &Netns, cl_pin: &Path, x: &Netns, all: &[&str]) {
    // DNS from inside the client, UDP and TCP.
    assert_eq!(answers(&dns_udp(cl, "web.", RecordType::A)), set(&[VIP]));
    assert_eq!(answers(&dns_tcp(cl, "web.", RecordType::A)), set(&[VIP]));
    assert_eq!(
        answers(&dns_udp(cl, "WEB.AppNet.", RecordType::A)),
        set(&[VIP])
    );
    assert_eq!(answers(&dns_udp(cl, "tasks.web.", RecordType::A)), set(all));
    assert_eq!(
        answers(&dns_udp(cl, "rr.", RecordType::A)),
        set(&["10.40.0.11", "10.40.0.12"])
    );
    assert_eq!(
        answers(&dns_udp(cl, "b3.1.", RecordType::A)),
        set(&["10.40.0.13"])
    );
    assert_eq!(answers(&dns_udp(cl, "web.", RecordType::AAAA)), set(&[]));
    // Names of a network the client is not on are not ours: forwarded to
    // the upstream (from the daemon's namespace).
    assert_eq!(
        answers(&dns_udp(cl, "hidden.", RecordType::A)),
        set(&[UPSTREAM_ANSWER])
    );
    assert_eq!(
        answers(&dns_tcp(cl, "x.1.other.", RecordType::A)),
        set(&[UPSTREAM_ANSWER])
    );
    assert_eq!(
        answers(&dns_udp(cl, "example.com.", RecordType::A)),
        set(&[UPSTREAM_ANSWER])
    );
    // ... while x, on that network, sees them.
    assert_eq!(
        answers(&dns_udp(x, "hidden.", RecordType::A)),
        set(&[HIDDEN_VIP])
    );
    assert_eq!(
        answers(&dns_udp(x, "web.", RecordType::A)),
        set(&[UPSTREAM_ANSWER])
    );
    // An independent client.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", cl_pin.display()))
        .args(["busybox", "nslookup", "-type=a", "web", "127.0.0.11"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Address: {VIP}")), "{text} {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_vips_and_dns() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "svc",
        "198.18.44.0/24".parse().unwrap(),
        &["h1", "h2"],
    )
    .await
    .unwrap();
    let (h1, h2) = (u.host("h1").unwrap(), u.host("h2").unwrap());
    let roots: [PathBuf; 2] = [run.path().join("node1"), run.path().join("node2")];
    let dp1 = LinuxDataplane::new(&roots[0], h1.netns().clone());
    let dp2 = LinuxDataplane::new(&roots[1], h2.netns().clone());
    let vteps = [IpAddr::V4(h1.addr()), IpAddr::V4(h2.addr())];
    // The "host's resolver" lives in node 1's own namespace: forwarding
    // must leave from there, not from the task's namespace.
    let upstream = SocketAddr::new(vteps[0], 5353);
    let all = ["10.40.0.11", "10.40.0.12", "10.40.0.13"];
    let [d1, d2] = desired(vteps, &all, upstream);

    assert!(!apply(&dp1, &d1).await.is_empty());
    assert!(!apply(&dp2, &d2).await.is_empty());
    assert_eq!(apply(&dp1, &d1).await, vec![], "second apply: no ops");
    assert_eq!(apply(&dp2, &d2).await, vec![]);

    let pin = |dp: &LinuxDataplane, t: &str| dp.task_netns(&TaskId::from(t));
    let open = |p: PathBuf| Netns::open(p).unwrap();
    let cl_pin = pin(&dp1, "cl");
    let cl = open(cl_pin.clone());
    let mut servers = Servers::new();
    servers.backend(&open(pin(&dp1, "b1")), "b1");
    servers.backend(&open(pin(&dp2, "b2")), "b2");
    servers.backend(&open(pin(&dp2, "b3")), "b3");
    servers.upstream(h1.netns(), upstream);

    // The table, seen from outside: one rule per VIP of the task's
    // networks only (not n2's hidden VIP).
    let comments = lb_rule_comments(&cl_pin);
    assert_eq!(comments.len(), 2, "{comments:?}");
    assert!(
        comments
            .iter()
            .any(|c| c.starts_with(&format!("weft-lb:{VIP}:")))
    );
    assert!(comments.contains(&format!("weft-lb:{DOWN_VIP}:reject")));
    let rs = nft_ruleset(&cl_pin).to_string();
    assert!(rs.contains("numgen") && rs.contains("10.40.0.13"), "{rs}");
    assert!(!rs.contains(HIDDEN_VIP), "{rs}");

    // Many connections to the VIP reach every backend, local and remote.
    let h = hits(&cl, VIP, 60);
    assert_eq!(names(&h), BTreeSet::from(["b1", "b2", "b3"]), "{h:?}");

    // A VIP without backends refuses at once.
    let started = Instant::now();
    let err = cl
        .run_in(|| {
            TcpStream::connect_timeout(
                &SocketAddr::new(ip(DOWN_VIP), TCP_PORT),
                Duration::from_secs(5),
            )
            .unwrap_err()
        })
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "{err}");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    let x = open(pin(&dp1, "x"));
    dns_from_tasks(&cl, &cl_pin, &x, &all);

    // The tasks' resolv.conf.
    let rc = dp1.resolv_conf().unwrap();
    let rc_text = std::fs::read_to_string(&rc).unwrap();
    assert!(rc_text.contains("nameserver 127.0.0.11\n") && rc_text.contains("options ndots:0"));

    // b3 leaves the service (its task keeps running): a UDP flow that stuck
    // to it is flushed, and no new connection reaches it.
    let sticky = udp_flow_to(&cl, "b3");
    assert_eq!(udp_ask(&sticky), "b3", "conntrack keeps the flow on b3");
    let [e1, e2] = desired(vteps, &all[..2], upstream);
    let ops = apply(&dp1, &e1).await;
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::ApplyLb { task, .. } if task.as_str() == "cl")),
        "{ops:?}"
    );
    apply(&dp2, &e2).await;
    let stale: Vec<String> = conntrack(&cl_pin)
        .into_iter()
        .filter(|l| l.contains(&format!("dst={VIP} ")) && l.contains("src=10.40.0.13 "))
        .collect();
    assert!(stale.is_empty(), "{stale:?}");
    assert_ne!(udp_ask(&sticky), "b3");
    let h = hits(&cl, VIP, 40);
    assert_eq!(names(&h), BTreeSet::from(["b1", "b2"]), "{h:?}");
    assert_eq!(
        answers(&dns_udp(&cl, "tasks.web", RecordType::A)),
        set(&all[..2])
    );
    assert_eq!(apply(&dp1, &e1).await, vec![]);

    // Drift: a flushed, then a deleted table is rewritten (only that).
    for cmd in ["flush table inet weft_lb", "delete table inet weft_lb"] {
        nft_in(&cl_pin, cmd);
        let ops = apply(&dp1, &e1).await;
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert!(matches!(&ops[0], Op::ApplyLb { task, .. } if task.as_str() == "cl"));
        assert_eq!(names(&hits(&cl, VIP, 20)), BTreeSet::from(["b1", "b2"]));
    }

    // A task on no network with a VIP has no table; a removed task's
    // resolver goes with its namespace.
    let mut f1 = e1.clone();
    for n in f1.networks.values_mut() {
        n.services.clear();
    }
    f1.tasks.remove(&TaskId::from("x"));
    drop(x);
    let ops = apply(&dp1, &f1).await;
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::DeleteLb { task, .. } if task.as_str() == "cl")),
        "{ops:?}"
    );
    assert!(lb_rule_comments(&cl_pin).is_empty());
    assert!(!pin(&dp1, "x").exists());
    assert_eq!(apply(&dp1, &f1).await, vec![]);
    assert_eq!(
        answers(&dns_udp(&cl, "web.", RecordType::A)),
        set(&[UPSTREAM_ANSWER])
    );
    assert_eq!(
        answers(&dns_udp(&cl, "b1.1.", RecordType::A)),
        set(&["10.40.0.11"])
    );

    drop(servers);
    drop(cl);
    for dp in [&dp1, &dp2] {
        let report = dp.teardown_all().await.unwrap();
        assert!(report.is_clean(), "{:?}", report.errors);
    }
    assert!(!rc.exists());
    assert!(u.destroy().is_clean());
}
