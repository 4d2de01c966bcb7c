//! `weft doctor` against real daemons in namespace hosts: a healthy
//! cluster is all OK (exit 0); then VXLAN blocked between two hosts with
//! nftables, a lower MTU on one host's switch port, and two nodes with the
//! same advertise address each show as FAIL with the right hint (exit 1).
//! The faults are made with the test's own tools (`nft`, netlink in the
//! switch's namespace), never through weft.

mod common;

use std::time::Duration;

use common::{Lab, nsenter, wait_for};

/// One row of `weft doctor --format json`.
#[derive(Debug, Clone)]
struct Row {
    check: String,
    subject: String,
    status: String,
    detail: String,
    hint: String,
}

/// `weft doctor --format json` on `host`: its rows and whether it exited 0.
fn doctor(lab: &Lab, host: &str) -> (Vec<Row>, bool) {
    let out = lab.try_weft(host, &["doctor", "--format", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor on {host} printed no JSON ({e}): {text}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            lab.log_tail(host)
        )
    });
    let rows = v
        .as_array()
        .expect("an array of rows")
        .iter()
        .map(|r| Row {
            check: r["check"].as_str().unwrap_or_default().into(),
            subject: r["subject"].as_str().unwrap_or_default().into(),
            status: r["status"].as_str().unwrap_or_default().into(),
            detail: r["detail"].as_str().unwrap_or_default().into(),
            hint: r["hint"].as_str().unwrap_or_default().into(),
        })
        .collect();
    (rows, out.status.success())
}

fn show(rows: &[Row]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{:<15} {:<12} {:<5} {} | {}",
                r.check, r.subject, r.status, r.detail, r.hint
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn row<'r>(rows: &'r [Row], check: &str, subject: &str) -> &'r Row {
    rows.iter()
        .find(|r| r.check == check && r.subject == subject)
        .unwrap_or_else(|| panic!("no {check} row for {subject:?}:\n{}", show(rows)))
}

/// `n` nodes Ready, and each has applied the config that came with the
/// last join (a node is Ready at its first heartbeat, before its first
/// data-plane pass has put weft's tables in place).
fn wait_ready(lab: &Lab, host: &str, n: usize) {
    wait_for(&format!("{n} nodes ready"), Duration::from_secs(30), || {
        let nodes = lab.node_ls(host);
        nodes.len() == n && nodes.iter().all(|r| r.status == "Ready")
    });
    wait_for(
        "every node's tables in place",
        Duration::from_secs(30),
        || {
            doctor(lab, host)
                .0
                .iter()
                .all(|r| r.check != "weft-tables" || r.status == "OK")
        },
    );
}

/// nftables rules of the test's own in `host`'s namespace: drop UDP to
/// `port` from `from` (a table weft does not know, evaluated before its
/// own).
fn block_udp(lab: &Lab, host: &str, from: &str, port: u16) {
    let script = format!(
        "table inet doctortest {{\n  chain input {{\n    type filter hook input priority -300; policy accept;\n    ip saddr {} udp dport {port} drop\n  }}\n}}\n",
        lab.addr(from)
    );
    let file = lab.dir().join(format!("block-{host}.nft"));
    std::fs::write(&file, script).expect("write the nft script");
    let out = nsenter(
        &lab.host_netns(host),
        &["nft", "-f", &file.display().to_string()],
    );
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lowers the MTU of `host`'s port on the underlay switch: frames larger
/// than `mtu` towards or from it are dropped on the way, while the host's
/// own interface (what it reported at join) keeps 1500.
fn lower_switch_port_mtu(lab: &Lab, index: usize, host: &str, mtu: u32) {
    let port = format!("p{index}-{host}");
    common::in_netns(lab.switch_netns(), async move || {
        weft_overlay::linux::Netlink::current()
            .expect("netlink")
            .set_mtu(&port, mtu)
            .await
            .expect("set the port's MTU");
    });
}

#[test]
fn a_healthy_cluster_is_all_ok_and_blocked_vxlan_and_a_small_mtu_fail_with_hints() {
    let mut lab = Lab::new("doctor", &["m1", "w1", "w2", "w3"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    for w in ["w1", "w2", "w3"] {
        lab.join(w, &wt, "m1");
    }
    wait_ready(&lab, "m1", 4);

    // Healthy: every row OK, on the manager and on a worker (whose doctor
    // asks the leader through its dispatcher).
    for host in ["m1", "w1"] {
        let (rows, ok) = doctor(&lab, host);
        let bad: Vec<&Row> = rows.iter().filter(|r| r.status != "OK").collect();
        assert!(bad.is_empty(), "on {host}:\n{}", show(&rows));
        assert!(ok, "exit 0 when all is OK");
        assert_eq!(row(&rows, "vxlan", "").detail, "12 paths answer");
        assert!(
            row(&rows, "mtu", "")
                .detail
                .starts_with("12 paths carry 1450-byte")
        );
        assert_eq!(row(&rows, "manager-port", "").detail, "3 paths answer");
        for h in ["m1", "w1", "w2", "w3"] {
            assert_eq!(row(&rows, "clock-skew", h).status, "OK");
        }
        // The node's own checks, here and (with the probes) on every node.
        for local in ["nftables", "weft-tables", "gateway-bridge", "node-cert"] {
            assert_eq!(row(&rows, local, "this node").status, "OK");
            assert_eq!(row(&rows, local, "").detail, "OK on 4 nodes");
        }
    }

    // The probe device, seen by the test's own netlink dump: VNI 4095 on
    // the data-path port, in a namespace under the exec root that goes a
    // few seconds after the run.
    let pin = lab.host_dir("w2").join("run/doctor/probe");
    let vxlan = common::in_netns(lab.host_netns("w2"), {
        let pin = pin.clone();
        async move || {
            let ns = weft_overlay::linux::Netns::open(&pin).expect("the probe namespace");
            let nl = weft_overlay::linux::Netlink::open(&ns).expect("netlink");
            nl.link("weft-probe").await.expect("dump").map(|l| l.vxlan)
        }
    });
    let info = vxlan.flatten().expect("weft-probe is a VXLAN device");
    assert_eq!(info.vni, Some(4095));
    assert_eq!(info.port, Some(4789));
    wait_for(
        "the probe namespace removed",
        Duration::from_secs(20),
        || !pin.exists(),
    );

    // Faults: VXLAN from w1 dropped at w2, w3's switch port at 1400.
    block_udp(&lab, "w2", "w1", 4789);
    lower_switch_port_mtu(&lab, 3, "w3", 1400);
    let (rows, ok) = doctor(&lab, "m1");
    assert!(!ok, "exit 1 on a FAIL:\n{}", show(&rows));

    // w1 -> w2: the echo never arrives; w2 -> w1: the reply never does.
    for pair in ["w1 -> w2", "w2 -> w1"] {
        let r = row(&rows, "vxlan", pair);
        assert_eq!(r.status, "FAIL", "{r:?}");
        assert!(r.hint.contains("allow UDP 4789 both ways between"), "{r:?}");
    }
    // Every path through w3's port carries 1350-byte overlay packets
    // (1400 on the wire) but not the 1450 the overlay MTU implies.
    for pair in ["m1 -> w3", "w1 -> w3", "w3 -> m1", "w3 -> w2"] {
        let r = row(&rows, "mtu", pair);
        assert_eq!(r.status, "FAIL", "{r:?}");
        assert!(r.detail.contains("at most 1350 bytes"), "{r:?}");
        assert!(r.detail.contains("overlay MTU is 1450"), "{r:?}");
        assert!(r.hint.contains("raise the MTU along the path"), "{r:?}");
        assert!(r.hint.contains("to at least 1500"), "{r:?}");
    }
    // Small packets still pass there, and the other paths are untouched.
    assert!(
        !rows
            .iter()
            .any(|r| r.check == "vxlan" && r.subject.contains("w3")),
        "{}",
        show(&rows)
    );
    assert!(
        !rows
            .iter()
            .any(|r| r.check == "mtu" && r.subject == "m1 -> w1"),
        "{}",
        show(&rows)
    );
    assert_eq!(row(&rows, "manager-port", "").status, "OK");

    // The table: a row per check, the hint under each FAIL, exit 1.
    let out = lab.try_weft("w1", &["doctor"]);
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("weft doctor on w1 with the faults:\n{table}");
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(table.starts_with("CHECK"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("vxlan") && l.contains("w1 -> w2") && l.contains("FAIL")),
        "{table}"
    );
    assert!(table.contains("hint: allow UDP 4789"), "{table}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("check(s) failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_nodes_with_one_advertise_address_fail_with_a_hint() {
    let mut lab = Lab::new("doctordup", &["m1", "w1", "w2"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    // w2 claims w1's address (a copied config, a NAT in the way).
    let remote = format!("{}:4377", lab.addr("m1"));
    let taken = lab.addr("w1");
    lab.weft(
        "w2",
        &["join", "--token", &wt, "--advertise-addr", &taken, &remote],
    );
    wait_for("w2 joined", Duration::from_secs(30), || {
        lab.node_ls("m1").len() == 3
    });

    let (rows, ok) = doctor(&lab, "m1");
    assert!(!ok, "exit 1 on a FAIL:\n{}", show(&rows));
    let r = row(&rows, "advertise-addr", "w1, w2");
    assert_eq!(r.status, "FAIL", "{r:?}");
    assert!(
        r.detail
            .contains(&format!("2 nodes advertise {taken}:4377")),
        "{r:?}"
    );
    assert!(r.hint.contains("weft leave"), "{r:?}");
    assert!(r.hint.contains("--advertise-addr"), "{r:?}");
    let r = row(&rows, "data-path-addr", "w1, w2");
    assert_eq!(r.status, "FAIL", "{r:?}");
    assert!(r.hint.contains("--data-path-addr"), "{r:?}");
}

#[test]
fn peers_on_an_encrypted_network_answer_through_wireguard_until_its_port_is_blocked() {
    let mut lab = Lab::new("doctorwg", &["m1", "m2", "w1", "w2"]);
    lab.start_all();
    let (wt, mt) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("m2", &mt, "m1");
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    wait_ready(&lab, "m1", 4);
    common::wait_voters(&lab, "m1", &["m2"]);
    lab.encrypted_network("m1", "10.0.9.0/24", "secure");
    let ids: Vec<String> = [("w1", "10.0.9.10"), ("w2", "10.0.9.20")]
        .iter()
        .map(|(host, ip)| {
            let args = ["--network", "secure", "--ip", ip, "--", "sleep", "3600"];
            lab.run_task(host, &args)
        })
        .collect();
    let pa = lab.task_netns("w1", &ids[0]);
    wait_for("the encrypted path up", Duration::from_secs(30), || {
        common::pings(&pa, "10.0.9.20")
    });

    // w1 and w2 share the encrypted network: each probes the other's
    // tunnel address; the managers have no WireGuard device and probe
    // none. Asked on the follower m2, which forwards to the leader (the
    // holder of the sessions and of the replication figures).
    let (rows, ok) = doctor(&lab, "m2");
    assert!(ok, "{}", show(&rows));
    assert_eq!(row(&rows, "wireguard", "").detail, "2 paths answer");
    assert_eq!(row(&rows, "manager-port", "").detail, "6 paths answer");
    assert_eq!(
        row(&rows, "raft-quorum", "").detail,
        "leader m1; all 2 managers up"
    );
    assert_eq!(row(&rows, "raft-lag", "m2").status, "OK");

    block_udp(&lab, "w2", "w1", 51820);
    let (rows, ok) = doctor(&lab, "m1");
    assert!(!ok, "{}", show(&rows));
    for pair in ["w1 -> w2", "w2 -> w1"] {
        let r = row(&rows, "wireguard", pair);
        assert_eq!(r.status, "FAIL", "{r:?}");
        assert!(r.hint.contains("allow UDP 51820 both ways"), "{r:?}");
    }
    // The plain VXLAN path between them is not the tunnel's: still fine.
    assert_eq!(row(&rows, "vxlan", "").status, "OK", "{}", show(&rows));
}

#[test]
fn a_leader_without_a_majority_fails_raft_quorum_and_the_lost_managers_do_not_answer() {
    let mut lab = Lab::new("doctorq", &["m1", "m2", "m3"]);
    lab.start_all();
    let (_, mt) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("m2", &mt, "m1");
    lab.join("m3", &mt, "m1");
    wait_ready(&lab, "m1", 3);
    common::wait_voters(&lab, "m1", &["m2", "m3"]);
    let (rows, ok) = doctor(&lab, "m1");
    assert!(ok, "{}", show(&rows));

    // Two of three managers gone: the store cannot even mark them down
    // (that needs a quorum), so the verdict must come from Raft itself.
    lab.kill9("m2");
    lab.kill9("m3");
    let mut last = Vec::new();
    wait_for("raft-quorum FAIL", Duration::from_secs(60), || {
        let (rows, ok) = doctor(&lab, "m1");
        let failed = !ok
            && rows
                .iter()
                .any(|r| r.check == "raft-quorum" && r.status == "FAIL");
        last = rows;
        failed
    });
    let r = row(&last, "raft-quorum", "");
    assert!(r.hint.contains("--force-new-cluster"), "{r:?}");
    eprintln!("weft doctor on m1 without a quorum:\n{}", show(&last));
    // m2 and m3 are probed by nobody and answer nothing: either the
    // leader's probes say they did not answer, or (m1 no longer leading)
    // the probes say they were not checked; never OK.
    for m in ["m2", "m3"] {
        let answered = last
            .iter()
            .any(|r| r.subject == m && r.check == "probes" && r.status == "FAIL");
        let unchecked = last.iter().any(|r| {
            r.check == "probes" && r.status == "WARN" && r.detail.starts_with("not checked")
        });
        assert!(answered || unchecked, "{m}:\n{}", show(&last));
    }
    // Their manager ports are closed. (Their hosts' kernels still answer
    // VXLAN echoes through the probe devices of the run before the kill,
    // which a killed daemon could not remove: the data path itself works;
    // a daemon removes such a device when it starts.)
    assert!(
        last.iter()
            .all(|r| r.check != "manager-port" || r.status != "OK"),
        "manager-port OK without the managers:\n{}",
        show(&last)
    );
    for pair in ["m1 -> m2", "m1 -> m3"] {
        assert_eq!(row(&last, "manager-port", pair).status, "FAIL");
    }
}
