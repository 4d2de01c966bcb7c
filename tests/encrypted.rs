//! Encrypted overlays end to end: VXLAN inside WireGuard (boringtun) between
//! real daemons, checked on the underlay with nftables counters.

mod common;

use std::path::Path;
use std::time::Duration;

use common::wire::{count_underlay, counter, reset_counters};
use common::{Lab, nsenter, pings, wait_for};

fn setup(test: &str, hosts: &[&str]) -> Lab {
    let mut lab = Lab::new(test, hosts);
    for h in hosts.iter().filter(|h| !h.starts_with('x')) {
        lab.start(h);
    }
    let (wt, _) = lab.init("m1", &[]);
    for h in hosts.iter().filter(|h| h.starts_with('w')) {
        lab.join(h, &wt, "m1");
    }
    lab.encrypted_network("m1", "10.0.9.0/24", "secure");
    lab.weft(
        "m1",
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.0.10.0/24",
            "plain",
        ],
    );
    count_underlay(&lab);
    lab
}

#[test]
fn encrypted_traffic_is_only_wireguard_on_the_underlay_and_plain_stays_vxlan() {
    let lab = setup("wgpath", &["m1", "w1", "w2"]);
    let a = lab.run_task(
        "w1",
        &[
            "--network",
            "secure",
            "--ip",
            "10.0.9.10",
            "--",
            "sleep",
            "3600",
        ],
    );
    lab.run_task(
        "w2",
        &[
            "--network",
            "secure",
            "--ip",
            "10.0.9.20",
            "--",
            "sleep",
            "3600",
        ],
    );
    let pa = lab.task_netns("w1", &a);
    wait_for("encrypted path up", Duration::from_secs(20), || {
        pings(&pa, "10.0.9.20")
    });
    reset_counters(&lab);
    for _ in 0..20 {
        assert!(pings(&pa, "10.0.9.20"));
    }
    let wg = counter(&lab.switch_netns(), "weftcount", "wg");
    let vx = counter(&lab.switch_netns(), "weftcount", "vxlan");
    assert!(wg >= 40, "WireGuard carried the pings: {wg}");
    assert_eq!(
        vx, 0,
        "no plaintext VXLAN on the underlay for an encrypted network"
    );

    // A plain network alongside still carries plain VXLAN.
    let c = lab.run_task(
        "w1",
        &[
            "--network",
            "plain",
            "--ip",
            "10.0.10.10",
            "--",
            "sleep",
            "3600",
        ],
    );
    lab.run_task(
        "w2",
        &[
            "--network",
            "plain",
            "--ip",
            "10.0.10.20",
            "--",
            "sleep",
            "3600",
        ],
    );
    let pc = lab.task_netns("w1", &c);
    wait_for("plain path up", Duration::from_secs(20), || {
        pings(&pc, "10.0.10.20")
    });
    assert!(counter(&lab.switch_netns(), "weftcount", "vxlan") > 0);

    // inspect: encrypted, the MTU for both encapsulations, handshakes.
    wait_for("handshakes reported", Duration::from_secs(20), || {
        let v: serde_json::Value =
            serde_json::from_str(&lab.weft("m1", &["network", "inspect", "-v", "secure"])).unwrap();
        v[0]["Encrypted"] == true
            && v[0]["MTU"] == 1390
            && v[0]["Peers"].as_array().is_some_and(|p| {
                p.len() == 2 && p.iter().all(|x| x["LastHandshakeMs"].as_u64() > Some(0))
            })
    });

    // The private key is 0600 on its node and nowhere else: not on other
    // nodes, not in any manager's Raft log or snapshot.
    use std::os::unix::fs::PermissionsExt;
    let key_path = lab.data_dir("w1").join("wg.key");
    let meta = std::fs::metadata(&key_path).expect("w1's key");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_path)
        .unwrap()
        .trim()
        .to_string();
    assert!(key.len() >= 40, "a base64 or hex key: {key}");
    for host in ["m1", "w2"] {
        let mut stack = vec![lab.host_dir(host)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    assert!(
                        !String::from_utf8_lossy(&bytes).contains(&key),
                        "w1's private key found in {}",
                        p.display()
                    );
                }
            }
        }
    }
}

#[test]
fn key_rotation_keeps_a_tcp_stream_and_removed_nodes_lose_their_peers() {
    let lab = setup("wgrotate", &["m1", "w1", "w2", "x1"]);
    let server = lab.run_task(
        "w1",
        &[
            "--name",
            "server",
            "--network",
            "secure",
            "--ip",
            "10.0.9.10",
            "--",
            "sh",
            "-c",
            // The server keeps its stdin open: busybox nc ends the connection at stdin EOF.
            "sleep 3600 | busybox nc -l -p 7000",
        ],
    );
    // One TCP connection, a line every 100 ms for 8 s, across a rotation.
    lab.run_task("w2",
        &[
            "--name",
            "client",
            "--network",
            "secure",
            "--ip",
            "10.0.9.20",
            "--",
            "sh",
            "-c",
            "until busybox ping -c 1 -W 1 10.0.9.10 >/dev/null; do sleep 0.2; done; for i in $(seq 1 80); do echo line-$i; sleep 0.1; done | busybox nc 10.0.9.10 7000",
        ],
    );
    wait_for("stream started", Duration::from_secs(20), || {
        lab.logs("w1", "server").contains("line-5")
    });
    let keys_before = lab.weft("m1", &["network", "inspect", "-v", "secure"]);
    lab.weft("m1", &["node", "rotate-key", "--all"]);
    wait_for(
        "every line arrived over one connection",
        Duration::from_secs(30),
        || lab.logs("w1", "server").contains("line-80"),
    );
    let log = lab.logs("w1", "server");
    assert_eq!(
        log.lines().filter(|l| l.starts_with("line-")).count(),
        80,
        "{log}"
    );
    let keys_after = lab.weft("m1", &["network", "inspect", "-v", "secure"]);
    let pubkeys = |s: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        let mut k: Vec<String> = v[0]["Peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["NodeID"].as_str().unwrap().to_string())
            .collect();
        k.sort();
        k
    };
    assert_eq!(pubkeys(&keys_before), pubkeys(&keys_after));
    let _ = server;

    // A node that leaves is no longer anyone's peer.
    lab.weft("w2", &["leave"]);
    wait_for(
        "w2 gone from the encrypted network's peers",
        Duration::from_secs(20),
        || {
            let v: serde_json::Value =
                serde_json::from_str(&lab.weft("m1", &["network", "inspect", "-v", "secure"]))
                    .unwrap();
            v[0]["Peers"]
                .as_array()
                .is_some_and(|p| p.iter().all(|x| x["Name"] != "w2"))
        },
    );

    // VXLAN from an address that is not a member is dropped by w1.
    let w1 = lab.addr("w1");
    let guard = |lab: &Lab| -> u64 {
        let out = nsenter(
            &lab.host_netns("w1"),
            &["nft", "-j", "list", "table", "inet", "weft_guard"],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| {
                o["rule"]["comment"]
                    .as_str()
                    .is_some_and(|c| c.contains("drop"))
            })
            .filter_map(|o| o["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|e| e["counter"]["packets"].as_u64())
            .sum()
    };
    let before = guard(&lab);
    let send = format!("printf 'xxxxxxxxxxxxxxxx' > /dev/udp/{w1}/4789");
    assert!(
        nsenter(&lab.host_netns("x1"), &["bash", "-c", &send])
            .status
            .success()
    );
    wait_for(
        "the outsider's datagram was dropped",
        Duration::from_secs(5),
        || guard(&lab) > before,
    );
}

/// A UDP socket bound to `port` inside the namespace `pin` (held until
/// dropped): something else using the WireGuard port on that node.
fn hold_udp(pin: &Path, port: u16) -> std::net::UdpSocket {
    weft_overlay::linux::Netns::open(pin)
        .expect("open netns")
        .run_in(|| std::net::UdpSocket::bind(("0.0.0.0", port)))
        .expect("enter netns")
        .expect("bind")
}

#[test]
fn wireguard_port_in_use_is_refused_at_init_and_join_and_rotation_is_changeable() {
    let mut lab = Lab::new("wgport", &["m1", "w1"]);
    lab.start_all();
    // init: the port is checked before anything is created.
    let held = hold_udp(&lab.host_netns("m1"), 51820);
    let addr = lab.addr("m1");
    let err = lab.weft_err("m1", &["init", "--advertise-addr", &addr]);
    assert!(
        err.contains("UDP port 51820 (WireGuard) is already in use") && err.contains("--wg-port"),
        "{err}"
    );
    let err = lab.weft_err("m1", &["node", "ls"]);
    assert!(
        err.contains("this node is not a manager"),
        "m1 stayed out of any cluster: {err}"
    );
    drop(held);
    let (wt, _) = lab.init("m1", &["--wg-port", "51999"]);
    // join: the cluster's port (not the default) is checked before the
    // token is sent, and the cluster does not count the node.
    let held = hold_udp(&lab.host_netns("w1"), 51999);
    let remote = format!("{addr}:4377");
    let w1 = lab.addr("w1");
    let err = lab.weft_err(
        "w1",
        &["join", "--token", &wt, "--advertise-addr", &w1, &remote],
    );
    assert!(
        err.contains("UDP port 51999 (WireGuard) is already in use"),
        "{err}"
    );
    assert_eq!(
        lab.node_ls("m1").len(),
        1,
        "the refused node was not admitted"
    );
    drop(held);
    lab.join("w1", &wt, "m1");

    // The rotation interval changes after init; bad values change nothing.
    let info = lab.weft("w1", &["info"]);
    assert!(
        info.contains(&lab.addr("m1")),
        "w1 knows its manager: {info}"
    );
    assert!(
        lab.weft("m1", &["info"])
            .contains("WireGuard key rotation: 86400s")
    );
    let out = lab.weft("m1", &["cluster", "update", "--wg-key-rotation", "12h"]);
    assert!(out.contains("WireGuard key rotation: 43200s"), "{out}");
    for (args, want) in [
        (
            vec!["cluster", "update", "--wg-key-rotation", "10s"],
            "at least 1m",
        ),
        (
            vec!["cluster", "update", "--cert-expiry", "10m"],
            "at least 1h",
        ),
        (vec!["cluster", "update"], "nothing to change"),
        (
            vec!["cluster", "update", "--ingress-subnet", "10.0.0.0/8x"],
            "invalid --ingress-subnet",
        ),
        (
            vec!["cluster", "update", "--ingress-subnet", "172.18.0.0/24"],
            "overlaps the gateway bridge subnet",
        ),
    ] {
        let err = lab.weft_err("m1", &args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(
        lab.weft("m1", &["info"])
            .contains("WireGuard key rotation: 43200s")
    );
    // Nothing publishes through the routing mesh yet: it may move.
    let out = lab.weft(
        "m1",
        &["cluster", "update", "--ingress-subnet", "10.99.0.0/24"],
    );
    assert!(out.contains("Ingress subnet: 10.99.0.0/24"), "{out}");
    lab.weft("m1", &["cluster", "update", "--wg-key-rotation", "0s"]);
    assert!(
        lab.weft("m1", &["info"])
            .contains("WireGuard key rotation: off")
    );
    let err = lab.weft_err("w1", &["cluster", "update", "--wg-key-rotation", "1h"]);
    assert!(err.contains("not a manager"), "{err}");

    // A restarted daemon recreates its WireGuard device and handshakes at
    // once: the peer's old session is replaced without waiting for
    // traffic or a keepalive (25 s).
    lab.encrypted_network("m1", "10.0.7.0/24", "sec");
    let srv = lab.run_task(
        "w1",
        &[
            "--network",
            "sec",
            "--ip",
            "10.0.7.10",
            "-d",
            "--",
            "sleep",
            "3600",
        ],
    );
    let cli = lab.run_task("m1", &["--network", "sec", "-d", "--", "sleep", "3600"]);
    let cp = lab.task_netns("m1", &cli);
    wait_for("encrypted ping", Duration::from_secs(20), || {
        pings(&cp, "10.0.7.10")
    });
    lab.kill9("w1");
    lab.start("w1");
    wait_for(
        "encrypted traffic after w1's daemon restarted",
        Duration::from_secs(10),
        || pings(&cp, "10.0.7.10"),
    );
    assert!(
        lab.task_netns("w1", &srv).exists(),
        "the task outlived its daemon"
    );
}
