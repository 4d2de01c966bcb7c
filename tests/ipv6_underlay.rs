//! An IPv6-only underlay (issue #18): hosts whose only underlay address is
//! IPv6 (2001:2::/64, RFC 5180's benchmarking range) form a cluster over
//! it, and carry a plain and an encrypted overlay and a service's VIP and
//! DNS across hosts. VXLAN over IPv6 costs 20 bytes more than over IPv4,
//! and the overlay's MTU says so. What crosses the switch is counted there
//! by family.

mod common;

use std::time::Duration;

use common::{Lab, nsenter, pings, resolve, wait_for};

/// Packets counted on the switch by the rule with `comment`.
fn counted(lab: &Lab, comment: &str) -> u64 {
    common::wire::counter(&lab.switch_netns(), "v6count", comment)
}

/// `network inspect` on m1, as JSON.
fn network(lab: &Lab, name: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["network", "inspect", name])).expect("json");
    v[0].clone()
}

#[test]
fn an_ipv6_only_underlay_forms_a_cluster_and_carries_overlays_and_services() {
    let mut lab = Lab::new("v6under", &["m1", "w1", "w2"]);
    lab.ipv6_underlay();
    common::wire::switch_nft(
        &lab,
        "table bridge v6count { chain c { type filter hook forward priority 0; \
         ether type ip counter comment \"ipv4\"; \
         ether type ip6 udp dport 4789 counter comment \"vxlan6\"; \
         ether type ip6 udp dport 51820 counter comment \"wg6\"; }; }",
    );
    lab.start_all();
    let (wt, _) = lab.init("m1", &[]);
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    let nodes = lab.node_ls("m1");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let addr = lab.weft(
        "m1",
        &["node", "inspect", "-f", "{{.Status.DataPathAddr}}", "w1"],
    );
    assert_eq!(addr.trim(), "2001:2::2");

    // A plain overlay: VXLAN over IPv6, 70 bytes of it, so 1430.
    lab.attachable_network("m1", "10.0.31.0/24", "appnet");
    let a = lab.run_task(
        "w1",
        &["--name", "a", "--network", "appnet", "--", "sleep", "3600"],
    );
    let b = lab.run_task(
        "w2",
        &["--name", "b", "--network", "appnet", "--", "sleep", "3600"],
    );
    let (pin_a, pin_b) = (lab.task_netns("w1", &a), lab.task_netns("w2", &b));
    assert_eq!(network(&lab, "appnet")["MTU"], 1430);
    let b_ip = common::addr_of_in(&String::from_utf8_lossy(
        &nsenter(&pin_b, &["ip", "-o", "-4", "addr", "show", "eth0"]).stdout,
    ))
    .expect("b's address");
    let b_ip = b_ip.split('/').next().unwrap_or_default().to_string();
    wait_for("a pings b", Duration::from_secs(20), || {
        pings(&pin_a, &b_ip)
    });
    // A full-size packet (1430 bytes: 1402 of ICMP data) crosses whole.
    let full = nsenter(
        &pin_a,
        &["busybox", "ping", "-c", "1", "-W", "2", "-s", "1402", &b_ip],
    );
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stdout)
    );
    assert!(counted(&lab, "vxlan6") > 0, "VXLAN over IPv6 on the switch");

    // A service across hosts: its name and its VIP answer from a task.
    common::create_web(&lab, "2", &[]);
    let vip = common::vip_of(&lab, "m1", "web");
    let vip = vip.split('/').next().unwrap_or_default().to_string();
    let client = common::sleeper(&lab, "m1", "client", "appnet");
    wait_for("web resolves to its VIP", Duration::from_secs(20), || {
        resolve(&client, "web").contains(&vip)
    });
    common::replicas_behind_vip(&client, &vip, "web.", 2);

    // An encrypted overlay: WireGuard over IPv6 carries it.
    let sec = [
        "network",
        "create",
        "--attachable",
        "--opt",
        "encrypted",
        "--subnet",
        "10.0.32.0/24",
        "sec",
    ];
    lab.weft("m1", &sec);
    let c = lab.run_task(
        "w1",
        &["--name", "c", "--network", "sec", "--", "sleep", "3600"],
    );
    lab.run_task(
        "w2",
        &["--name", "d", "--network", "sec", "--", "sleep", "3600"],
    );
    let d_ip = network(&lab, "sec")["Containers"]
        .as_object()
        .expect("containers")
        .values()
        .find(|e| e["Name"] == "d")
        .and_then(|e| e["IPv4Address"].as_str())
        .expect("d's address")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let pin_c = lab.task_netns("w1", &c);
    wait_for(
        "c pings d through WireGuard",
        Duration::from_secs(30),
        || pings(&pin_c, &d_ip),
    );
    assert!(
        counted(&lab, "wg6") > 0,
        "WireGuard over IPv6 on the switch"
    );
    assert_eq!(network(&lab, "sec")["MTU"], 1370);

    // The doctor probes the IPv6 paths: every row OK.
    let doctor = lab.try_weft("m1", &["doctor", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("doctor json");
    let rows = rows.as_array().expect("rows");
    let bad: Vec<_> = rows.iter().filter(|r| r["status"] != "OK").collect();
    assert!(bad.is_empty() && doctor.status.success(), "{bad:#?}");
    let detail = |check: &str| {
        rows.iter()
            .find(|r| r["check"] == check && r["subject"] == "")
            .map(|r| r["detail"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(detail("vxlan"), "6 paths answer");
    assert!(
        detail("mtu").starts_with("6 paths carry 1430-byte"),
        "{}",
        detail("mtu")
    );
    // Nothing crossed the switch over IPv4.
    assert_eq!(
        counted(&lab, "ipv4"),
        0,
        "IPv4 frames on an IPv6-only underlay"
    );
}
