//! The primitives composed into a real overlay, as the data plane will use
//! them: on each of two underlay hosts an overlay namespace with a bridge and
//! a VXLAN device (made in it, its socket in the host namespace), a task
//! namespace on a veth, static FDB and neighbour entries (no learning, no
//! flooding) — and a TCP exchange between the tasks across hosts.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ipnetwork::IpNetwork;
use weft_overlay::linux::{MacAddr, Netlink, Netns, Underlay, VethSpec, VxlanSpec};

use crate::common::{RunDir, bridge, require_root};

struct Side {
    ov: Netns,
    task: Netns,
    ov_nl: Netlink,
    task_nl: Netlink,
    ip: Ipv4Addr,
    mac: MacAddr,
    vtep: Ipv4Addr,
}

async fn build_side(run: &RunDir, host: &weft_overlay::linux::UnderlayHost, i: u8) -> Side {
    let ov = run.netns(&format!("ov-{i}"));
    let task = run.netns(&format!("task-{i}"));
    let host_nl = Netlink::open(host.netns()).unwrap();
    let ov_nl = Netlink::open(&ov).unwrap();
    let task_nl = Netlink::open(&task).unwrap();
    let mac = MacAddr([0x02, 0x42, 10, 9, 0, i]);
    let ip = Ipv4Addr::new(10, 9, 0, i);

    ov_nl.create_bridge("br0", Some(1450)).await.unwrap();
    ov_nl.set_up("br0").await.unwrap();
    host_nl
        .create_vxlan(
            &VxlanSpec {
                name: "vx-4200".into(),
                vni: 4200,
                port: 4789,
                local: IpAddr::V4(host.addr()),
                underlay_dev: Some("eth0".into()),
                mtu: Some(1450),
                mac: None,
                proxy: false,
            },
            &ov_nl,
        )
        .await
        .unwrap();
    ov_nl.set_master("vx-4200", Some("br0")).await.unwrap();
    ov_nl.set_up("vx-4200").await.unwrap();
    ov_nl
        .create_veth(
            &VethSpec {
                name: format!("vt-{i}"),
                peer_name: "eth0".into(),
                mtu: Some(1450),
                mac: None,
                peer_mac: Some(mac),
            },
            &task_nl,
        )
        .await
        .unwrap();
    ov_nl
        .set_master(&format!("vt-{i}"), Some("br0"))
        .await
        .unwrap();
    ov_nl.set_up(&format!("vt-{i}")).await.unwrap();
    task_nl
        .add_address("eth0", IpNetwork::new(IpAddr::V4(ip), 24).unwrap())
        .await
        .unwrap();
    task_nl.set_up("eth0").await.unwrap();
    Side {
        ov,
        task,
        ov_nl,
        task_nl,
        ip,
        mac,
        vtep: host.addr(),
    }
}

#[tokio::test]
async fn tasks_talk_across_hosts_over_vxlan() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "ovl",
        "198.18.30.0/24".parse().unwrap(),
        &["h1", "h2"],
    )
    .await
    .unwrap();
    let a = build_side(&run, u.host("h1").unwrap(), 1).await;
    let b = build_side(&run, u.host("h2").unwrap(), 2).await;

    // Remote endpoints: MAC -> VTEP on the VXLAN device, IP -> MAC in the
    // task (so ARP never has to cross the overlay).
    for (me, other) in [(&a, &b), (&b, &a)] {
        me.ov_nl
            .replace_fdb("vx-4200", other.mac, IpAddr::V4(other.vtep))
            .await
            .unwrap();
        me.task_nl
            .replace_neigh("eth0", IpAddr::V4(other.ip), other.mac)
            .await
            .unwrap();
    }
    let fdb = bridge(a.ov.path(), &["fdb", "show", "dev", "vx-4200"]);
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == b.mac.to_string() && e["dst"] == b.vtep.to_string()),
        "{fdb}"
    );

    let listener: TcpListener = b
        .task
        .run_in(|| TcpListener::bind((b.ip, 0)).unwrap())
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"world").unwrap();
        (buf, peer)
    });
    let target = SocketAddr::from((b.ip, port));
    let reply = a
        .task
        .run_in(|| {
            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(10)).unwrap();
            c.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            buf
        })
        .unwrap();
    let (got, peer) = server.join().unwrap();
    assert_eq!(&got, b"hello");
    assert_eq!(&reply, b"world");
    assert_eq!(peer.ip(), IpAddr::V4(a.ip));
    drop((a, b));
    assert!(u.destroy().is_clean());
}
