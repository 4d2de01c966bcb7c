//! Dual-stack overlays (issue #18): a network created with `--ipv6` gives
//! every task an address of each family, every VIP service a VIP of each,
//! and DNS answers A and AAAA; tasks on different hosts reach each other
//! and the service over IPv6 as over IPv4, and an encrypted dual-stack
//! network carries IPv6 only inside WireGuard. Tasks with an IPv6 address
//! reach outside the cluster over IPv6 (NAT66 to their node's address) and
//! a published port answers at every node's IPv6 address (through the
//! routing mesh over a dual-stack ingress network where the node has no
//! replica). Bad IPv6 input is
//! refused and changes nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::wire::{count_underlay, counter, reset_counters};
use common::{Lab, nsenter, pings, resolve, wait_for};

/// `network inspect` on m1, as JSON.
fn network(lab: &Lab, name: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["network", "inspect", name])).expect("json");
    v[0].clone()
}

/// Task `task`'s address of each family on `net` (inspect's Containers).
fn addresses(lab: &Lab, net: &str, task: &str) -> (String, String) {
    let n = network(lab, net);
    let e = n["Containers"]
        .as_object()
        .expect("containers")
        .values()
        .find(|e| e["Name"] == task)
        .unwrap_or_else(|| panic!("{task} on {net}: {n:#}"))
        .clone();
    let bare = |k: &str| {
        let v = e[k].as_str().unwrap_or_default();
        v.split('/').next().unwrap_or_default().to_string()
    };
    (bare("IPv4Address"), bare("IPv6Address"))
}

/// Whether `ip` (IPv6) answers a ping from `pin`.
fn pings6(pin: &Path, ip: &str) -> bool {
    nsenter(pin, &["busybox", "ping", "-6", "-c", "1", "-W", "1", ip])
        .status
        .success()
}

/// `service inspect`'s VirtualIPs of `service`, bare addresses.
fn vips(lab: &Lab, service: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["service", "inspect", service])).expect("json");
    v[0]["Endpoint"]["VirtualIPs"]
        .as_array()
        .expect("VirtualIPs")
        .iter()
        .map(|x| {
            let a = x["Addr"].as_str().unwrap_or_default();
            a.split('/').next().unwrap_or_default().to_string()
        })
        .collect()
}

/// `network create --attachable [EXTRA…] --subnet… NAME` on m1: a
/// dual-stack network with `--ipv6` among `extra`.
fn create_network(lab: &Lab, name: &str, subnets: &[&str], extra: &[&str]) {
    let mut args = vec!["network", "create", "--attachable"];
    args.extend_from_slice(extra);
    for s in subnets {
        args.extend_from_slice(&["--subnet", s]);
    }
    args.push(name);
    lab.weft("m1", &args);
}

#[test]
fn a_dual_stack_overlay_carries_both_families_across_hosts() {
    let mut lab = Lab::new("dual", &["m1", "w1", "w2"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &[]);
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    count_underlay(&lab);

    create_network(
        &lab,
        "appnet",
        &["10.0.41.0/24", "fd00:41::/64"],
        &["--ipv6"],
    );
    let n = network(&lab, "appnet");
    assert_eq!(n["EnableIPv6"], true, "{n:#}");
    let ipam: Vec<&str> = n["IPAM"]["Config"]
        .as_array()
        .expect("IPAM")
        .iter()
        .filter_map(|c| c["Subnet"].as_str())
        .collect();
    assert_eq!(ipam, ["10.0.41.0/24", "fd00:41::/64"]);
    let ls = lab.weft("m1", &["network", "ls"]);
    assert!(ls.contains("10.0.41.0/24,fd00:41::/64"), "{ls}");

    // Tasks on two hosts reach each other over both families.
    let a = lab.run_task(
        "w1",
        &["--name", "a", "--network", "appnet", "--", "sleep", "3600"],
    );
    lab.run_task(
        "w2",
        &[
            "--name",
            "b",
            "--network",
            "appnet",
            "--ip6",
            "fd00:41::b",
            "--",
            "sleep",
            "3600",
        ],
    );
    let (b4, b6) = addresses(&lab, "appnet", "b");
    assert_eq!(b6, "fd00:41::b", "--ip6 was kept");
    let pin_a = lab.task_netns("w1", &a);
    wait_for("a pings b over IPv6", Duration::from_secs(20), || {
        pings6(&pin_a, &b6)
    });
    assert!(pings(&pin_a, &b4), "and over IPv4");

    // A service: a VIP of each family, both answered by name (A and AAAA),
    // tasks.web with both families, replicas behind the IPv6 VIP.
    common::create_web(&lab, "2", &[]);
    let vips = vips(&lab, "web");
    let (vip4, vip6) = match vips.as_slice() {
        [v4, v6] if !v4.contains(':') && v6.contains(':') => (v4.clone(), v6.clone()),
        other => panic!("one VIP of each family: {other:?}"),
    };
    let client = common::sleeper(&lab, "m1", "client", "appnet");
    wait_for("web answers A and AAAA", Duration::from_secs(20), || {
        let got = resolve(&client, "web");
        got.contains(&vip4) && got.contains(&vip6)
    });
    wait_for(
        "tasks.web has both families",
        Duration::from_secs(20),
        || {
            let got = resolve(&client, "tasks.web");
            got.len() == 4 && got.iter().filter(|a| a.contains(':')).count() == 2
        },
    );
    let seen = common::replicas_behind_vip(&client, &format!("[{vip6}]"), "web.", 2);
    assert_eq!(seen.len(), 2, "{seen:?}");
    common::replicas_behind_vip(&client, &vip4, "web.", 2);

    // An encrypted dual-stack network: IPv6 between hosts only inside
    // WireGuard.
    create_network(
        &lab,
        "sec",
        &["10.0.42.0/24", "fd00:42::/64"],
        &["--ipv6", "--opt", "encrypted"],
    );
    let c = lab.run_task(
        "w1",
        &["--name", "c", "--network", "sec", "--", "sleep", "3600"],
    );
    lab.run_task(
        "w2",
        &["--name", "d", "--network", "sec", "--", "sleep", "3600"],
    );
    let (_, d6) = addresses(&lab, "sec", "d");
    let pin_c = lab.task_netns("w1", &c);
    wait_for(
        "c pings d over IPv6 through WireGuard",
        Duration::from_secs(30),
        || pings6(&pin_c, &d6),
    );
    reset_counters(&lab);
    for _ in 0..20 {
        assert!(pings6(&pin_c, &d6));
    }
    let wg = counter(&lab.switch_netns(), "weftcount", "wg");
    let vx = counter(&lab.switch_netns(), "weftcount", "vxlan");
    assert!(wg >= 40, "WireGuard carried the IPv6 pings: {wg}");
    assert_eq!(vx, 0, "no plaintext VXLAN for an encrypted network");

    // An IPv6-only network (--ipv4=false): one IPv6 address per task,
    // reached across hosts, its names answering AAAA only.
    create_network(&lab, "six", &["fd00:43::/64"], &["--ipv6", "--ipv4=false"]);
    let n = network(&lab, "six");
    assert_eq!(
        (&n["EnableIPv4"], &n["EnableIPv6"]),
        (&false.into(), &true.into()),
        "{n:#}"
    );
    let e = lab.run_task(
        "w1",
        &["--name", "e", "--network", "six", "--", "sleep", "3600"],
    );
    lab.run_task(
        "w2",
        &[
            "--name",
            "f",
            "--network",
            "six",
            "--ip6",
            "fd00:43::f",
            "--",
            "sleep",
            "3600",
        ],
    );
    let (f4, f6) = addresses(&lab, "six", "f");
    assert_eq!((f4.as_str(), f6.as_str()), ("", "fd00:43::f"));
    let pin_e = lab.task_netns("w1", &e);
    wait_for(
        "e pings f on the IPv6-only network",
        Duration::from_secs(20),
        || pings6(&pin_e, &f6),
    );
    assert_eq!(resolve(&pin_e, "f"), [f6].into(), "AAAA only");
}

/// Whether `http://URL/` answers from `pin` with a first line starting
/// with `prefix` (busybox wget, bounded with timeout).
fn http_answers(pin: &Path, url: &str, prefix: &str) -> bool {
    let out = nsenter(pin, &["timeout", "3", "busybox", "wget", "-qO-", url]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .is_some_and(|l| l.starts_with(prefix))
}

#[test]
fn ipv6_egress_and_published_ports_at_a_nodes_ipv6_address() {
    let mut lab = Lab::new("dual6p", &["m1", "w1", "w2"]);
    // The hosts get an IPv6 address next to their IPv4 one.
    let v6 = |i: usize| format!("2001:db8:48::{i}");
    for (i, host) in ["m1", "w1", "w2"].into_iter().enumerate() {
        let cidr = format!("{}/64", v6(i + 1));
        let out = nsenter(
            &lab.host_netns(host),
            &["ip", "addr", "add", &cidr, "dev", "eth0", "nodad"],
        );
        assert!(out.status.success(), "{out:?}");
    }
    lab.start_all();
    // The routing mesh over IPv6 too.
    let (wt, _) = lab.init("m1", &["--ingress-subnet", "fd00:ffff::/64"]);
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    create_network(
        &lab,
        "appnet",
        &["10.0.44.0/24", "fd00:44::/64"],
        &["--ipv6"],
    );
    // One replica per worker, its port 80 published at 8080.
    common::create_web(&lab, "2", &["--publish", "published=8080,target=80"]);
    wait_for("a replica on each worker", Duration::from_secs(30), || {
        lab.running_on("m1", "web").len() == 2
    });

    // From m1 (no replica), a worker's IPv6 address answers with the
    // replica there.
    let m1 = lab.host_netns("m1");
    for (i, w) in [(2, "w1"), (3, "w2")] {
        let url = format!("http://[{}]:8080/", v6(i));
        wait_for(
            &format!("{w}'s IPv6 address answers on 8080"),
            Duration::from_secs(20),
            || http_answers(&m1, &url, "web."),
        );
    }
    // m1's own IPv6 address answers too: through the routing mesh, over
    // the dual-stack ingress network, from a replica on a worker.
    let url = format!("http://[{}]:8080/", v6(1));
    wait_for(
        "m1's IPv6 address answers through the routing mesh",
        Duration::from_secs(20),
        || http_answers(&lab.host_netns("w1"), &url, "web."),
    );
    let info = lab.weft("m1", &["info"]);
    assert!(
        info.contains("Ingress subnet: 10.255.0.0/16, fd00:ffff::/64"),
        "{info}"
    );
    // glibc's resolver inside a task (its own /etc/resolv.conf, pointing
    // at 127.0.0.11): `getent ahosts web` gives both VIPs.
    let want = vips(&lab, "web");
    let g = lab.run_task(
        "w1",
        &[
            "--name",
            "g",
            "--network",
            "appnet",
            "--",
            "sh",
            "-c",
            "getent ahosts web; sleep 3600",
        ],
    );
    wait_for(
        "getent ahosts web with both VIPs",
        Duration::from_secs(20),
        || {
            let out = lab.logs("w1", &g);
            want.len() == 2 && want.iter().all(|v| out.contains(v.as_str()))
        },
    );

    // A task with an IPv6 address reaches m1's IPv6 address, outside the
    // cluster's networks, through its node (NAT66: m1 has no route back to
    // the task's own addresses).
    let a = lab.run_task(
        "w1",
        &["--name", "a", "--network", "appnet", "--", "sleep", "3600"],
    );
    let pin_a = lab.task_netns("w1", &a);
    wait_for("a reaches m1 over IPv6", Duration::from_secs(20), || {
        pings6(&pin_a, &v6(1))
    });
    // A dual-stack bridge network (local to w2): its task gets an IPv6
    // address, reaches the bridge's IPv6 gateway and, through NAT66, m1.
    lab.weft(
        "w2",
        &[
            "network",
            "create",
            "--driver",
            "bridge",
            "--ipv6",
            "--subnet",
            "10.0.46.0/24",
            "--subnet",
            "fd00:46::/64",
            "lb6",
        ],
    );
    let l = lab.run_task(
        "w2",
        &["--name", "l", "--network", "lb6", "--", "sleep", "3600"],
    );
    let pin_l = lab.task_netns("w2", &l);
    let held = common::nsenter_stdout(&pin_l, &["ip", "-o", "-6", "addr", "show", "dev", "eth0"]);
    assert!(held.contains("fd00:46::"), "{held}");
    wait_for(
        "l reaches its bridge's IPv6 gateway and m1",
        Duration::from_secs(20),
        || pings6(&pin_l, "fd00:46::1") && pings6(&pin_l, &v6(1)),
    );
    // A task on an IPv4-only network gets no IPv6 default route.
    create_network(&lab, "four", &["10.0.45.0/24"], &[]);
    let b = lab.run_task(
        "w2",
        &["--name", "b", "--network", "four", "--", "sleep", "3600"],
    );
    let routes = common::nsenter_stdout(
        &lab.task_netns("w2", &b),
        &["ip", "-6", "route", "show", "default"],
    );
    assert_eq!(routes.trim(), "", "no IPv6 default route: {routes}");
}

#[test]
fn bad_ipv6_input_is_refused_and_changes_nothing() {
    let mut lab = Lab::new("dualbad", &["m1"]);
    lab.start_all();
    lab.init(
        "m1",
        &[
            "--default-addr-pool",
            "fd00:70::/48",
            "--default-addr-pool-mask-length",
            "64",
        ],
    );
    // IPv6 subnets come from the given IPv6 pool, IPv4 ones from the
    // default.
    create_network(&lab, "pooled", &[], &["--ipv6"]);
    let n = network(&lab, "pooled");
    let subnets: Vec<&str> = (n["IPAM"]["Config"].as_array().expect("IPAM").iter())
        .filter_map(|c| c["Subnet"].as_str())
        .collect();
    assert_eq!(subnets, ["10.0.0.0/24", "fd00:70::/64"], "{n:#}");
    create_network(&lab, "dual", &["fd00:51::/64"], &["--ipv6"]);
    create_network(&lab, "v4only", &["10.0.52.0/24"], &[]);
    let before = lab.weft("m1", &["network", "ls", "-q", "--filter", "driver=overlay"]);
    let refused = |args: &[&str], says: &str| {
        let out = lab.try_weft("m1", args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(
            lab.weft("m1", &["network", "ls", "-q", "--filter", "driver=overlay"]),
            before,
            "{args:?}"
        );
    };
    let create = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["network", "create"].map(String::from).to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("x".into());
        v
    };
    for (extra, says) in [
        (&["--subnet", "fd00:52::/64"][..], "add --ipv6"),
        (&["--ipv6", "--subnet", "fd00:51::/80"][..], "overlaps"),
        (&["--ipv6", "--subnet", "fd00:53::/127"][..], "too small"),
        (
            &[
                "--ipv6",
                "--subnet",
                "fd00:53::/64",
                "--subnet",
                "fd00:54::/64",
            ][..],
            "given twice for one address family",
        ),
        (
            &[
                "--ipv6",
                "--subnet",
                "10.0.53.0/24",
                "--subnet",
                "fd00:53::/64",
                "--aux-address",
                "r=fd00:99::1",
            ][..],
            "not a usable address of subnet fd00:53::/64",
        ),
        (
            &[
                "--ipv6",
                "--subnet",
                "10.0.53.0/24",
                "--subnet",
                "fd00:53::/64",
                "--aux-address",
                "r=fd00:53::1",
            ][..],
            "gateway",
        ),
    ] {
        let v = create(extra);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        refused(&v, says);
    }
    // --ip6 on an IPv4-only network, or outside the subnet: no task.
    for (net, ip6, says) in [
        ("v4only", "fd00:51::9", "no IPv6 subnet"),
        ("dual", "fd00:77::9", "not a usable address"),
        ("dual", "10.0.0.9", "give an IPv6 address"),
    ] {
        let out = lab.try_weft(
            "m1",
            &[
                "run",
                "-d",
                "--network",
                net,
                "--ip6",
                ip6,
                "--",
                "sleep",
                "60",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{ip6}: {err}");
    }
    assert_eq!(
        lab.weft("m1", &["ps", "-a", "-q"]).trim(),
        "",
        "no task was made"
    );
    // A bad IPv6 ingress subnet: refused, the settings unchanged.
    let ingress = || {
        lab.weft("m1", &["info"])
            .lines()
            .find(|l| l.contains("Ingress subnet"))
            .map(str::to_owned)
    };
    let was = ingress();
    assert_eq!(was.as_deref(), Some(" Ingress subnet: 10.255.0.0/16"));
    for (subnet, says) in [
        (&["fd00:ff::1/64"][..], "host bits"),
        (&["fd00:ff::/124"][..], "out of range"),
        (&["fd00:ff::/64", "fd00:fe::/64"][..], "given twice"),
        (&["fd00:51::/64"][..], "overlaps"),
    ] {
        let mut args = vec!["cluster", "update"];
        for s in subnet {
            args.extend(["--ingress-subnet", s]);
        }
        let out = lab.try_weft("m1", &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{subnet:?}: {err}"
        );
        assert_eq!(ingress(), was, "{subnet:?}");
    }
}
