//! Overlay networks end to end: real daemons in namespace hosts, tasks as
//! real processes, real packets over VXLAN on the underlay.

mod common;

use std::time::Duration;

use common::{Lab, nsenter, pings, wait_for};

/// A two-node cluster (m1 manager, w1 worker) with an attachable overlay.
fn two_hosts(test: &str) -> Lab {
    let mut lab = Lab::new(test, &["m1", "w1", "w2"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &[]);
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    lab.weft(
        "m1",
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.0.9.0/24",
            "appnet",
        ],
    );
    lab
}

fn logs(lab: &Lab, host: &str, task: &str) -> String {
    lab.logs(host, task)
}

#[test]
fn tasks_on_two_hosts_talk_over_the_overlay_and_it_is_vxlan_on_the_underlay() {
    let lab = two_hosts("tcp");
    // Count VXLAN packets to the data-path port on the underlay switch, an
    // independent view of what crosses between hosts.
    let switch = lab.dir().join("u").join("netns").join("switch");
    common::wire::switch_nft(
        &lab,
        "table bridge weftcount { chain c1 { type filter hook forward priority 0; udp dport 4789 counter; }; }",
    );

    let server = lab.run_task(
        "w1",
        &[
            "--name",
            "server",
            "--network",
            "appnet",
            "--ip",
            "10.0.9.10",
            "--",
            "busybox",
            "nc",
            "-l",
            "-p",
            "7000",
        ],
    );
    let client = lab.run_task("w2",
        &[
            "--name",
            "client",
            "--network",
            "appnet",
            "--ip",
            "10.0.9.20",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do echo hello-over-vxlan | busybox nc -w 2 10.0.9.10 7000 && exit 0; sleep 0.5; done; exit 1",
        ],
    );
    let start = std::time::Instant::now();
    while !logs(&lab, "w1", "server").contains("hello-over-vxlan") {
        // A rare failure under load: show what each side saw.
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server never received the client's line.\nserver log: {:?}\nclient log: \
             {:?}\nw1 ps: {}\nw2 ps: {}\nw2 neighbours: {}\n{}\n{}",
            logs(&lab, "w1", "server"),
            logs(&lab, "w2", "client"),
            lab.weft("w1", &["ps", "--all"]),
            lab.weft("w2", &["ps", "--all"]),
            String::from_utf8_lossy(
                &nsenter(&lab.task_netns("w2", &client), &["ip", "neigh"]).stdout
            ),
            lab.log_tail("w1"),
            lab.log_tail("w2"),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!server.is_empty());
    let out = nsenter(
        &switch,
        &["nft", "-j", "list", "table", "bridge", "weftcount"],
    );
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&json).expect("nft json");
    let packets: u64 = v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum();
    assert!(
        packets > 0,
        "no VXLAN (udp/4789) seen on the underlay: {json}"
    );

    // inspect --verbose shows both endpoints, both peers, and their config acks.
    wait_for(
        "both nodes acknowledged their config",
        Duration::from_secs(10),
        || {
            let v: serde_json::Value =
                serde_json::from_str(&lab.weft("m1", &["network", "inspect", "-v", "appnet"]))
                    .unwrap();
            let peers = v[0]["Peers"].as_array().cloned().unwrap_or_default();
            peers.len() == 2
                && peers
                    .iter()
                    .all(|p| p["Behind"] == 0 && p["AppliedVersion"].as_u64() > Some(0))
        },
    );
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["network", "inspect", "-v", "appnet"])).unwrap();
    assert_eq!(v[0]["Containers"].as_object().unwrap().len(), 2);
    assert_eq!(v[0]["MTU"], 1450);
    assert_eq!(v[0]["VNI"], 4096);
}

#[test]
fn networks_are_isolated_and_rm_removes_every_kernel_object() {
    let lab = two_hosts("isolation");
    lab.weft(
        "m1",
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.0.10.0/24",
            "othernet",
        ],
    );
    let a = lab.run_task(
        "w1",
        &[
            "--network",
            "appnet",
            "--ip",
            "10.0.9.10",
            "--",
            "sleep",
            "600",
        ],
    );
    let b = lab.run_task(
        "w2",
        &[
            "--network",
            "othernet",
            "--ip",
            "10.0.10.20",
            "--",
            "sleep",
            "600",
        ],
    );
    let c = lab.run_task(
        "w2",
        &[
            "--network",
            "appnet",
            "--ip",
            "10.0.9.30",
            "--",
            "sleep",
            "600",
        ],
    );
    let pin_a = lab.task_netns("w1", &a);
    // Same network, other host: reachable.
    wait_for("a reaches c", Duration::from_secs(15), || {
        pings(&pin_a, "10.0.9.30")
    });
    // Other network: not reachable (neither its address nor via the overlay).
    assert!(
        !nsenter(
            &pin_a,
            &["busybox", "ping", "-c", "2", "-W", "1", "10.0.10.20"]
        )
        .status
        .success(),
        "networks must be isolated"
    );
    // Removing a network in use is refused.
    let err = lab.weft_err("m1", &["network", "rm", "othernet"]);
    assert!(err.contains("in use"), "{err}");
    lab.weft("w2", &["rm", "-f", &b]);
    lab.weft("m1", &["network", "rm", "othernet"]);
    // Every kernel object of othernet is gone from w2: its namespace pin and
    // any VXLAN device with its VNI.
    let netns_dir = lab.host_dir("w2").join("run").join("netns");
    wait_for(
        "othernet's namespace removed on w2",
        Duration::from_secs(15),
        || {
            let pins: Vec<String> = std::fs::read_dir(&netns_dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            pins.iter().filter(|p| p.starts_with("net-")).count() == 1
                && !pins.iter().any(|p| p.contains(&b))
        },
    );
    let _ = c;
}

#[test]
fn killed_worker_daemon_restarts_without_disrupting_tasks() {
    let mut lab = two_hosts("restart");
    let a = lab.run_task(
        "w1",
        &[
            "--name",
            "a",
            "--network",
            "appnet",
            "--ip",
            "10.0.9.10",
            "--",
            "sleep",
            "600",
        ],
    );
    lab.run_task(
        "w2",
        &[
            "--name",
            "b",
            "--network",
            "appnet",
            "--ip",
            "10.0.9.20",
            "--",
            "sleep",
            "600",
        ],
    );
    let pin_a = lab.task_netns("w1", &a);
    wait_for("a reaches b", Duration::from_secs(15), || {
        pings(&pin_a, "10.0.9.20")
    });
    let pid_before =
        std::fs::read_to_string(lab.host_dir("w1").join("run/tasks").join(&a).join("pid")).unwrap();
    lab.kill9("w1");
    // The data plane survives the control plane.
    assert!(pings(&pin_a, "10.0.9.20"));
    lab.start("w1");
    wait_for("w1 back", Duration::from_secs(15), || {
        lab.weft("w1", &["ps"]).contains(" a ")
    });
    let pid_after =
        std::fs::read_to_string(lab.host_dir("w1").join("run/tasks").join(&a).join("pid")).unwrap();
    assert_eq!(pid_before, pid_after, "the task was adopted, not restarted");
    let ps = lab.weft("w1", &["ps"]);
    assert_eq!(ps.lines().count(), 2, "no duplicate task: {ps}");
    assert!(pings(&pin_a, "10.0.9.20"));
}

#[test]
fn a_deleted_vxlan_device_is_repaired() {
    let lab = two_hosts("repair");
    let a = lab.run_task(
        "w1",
        &[
            "--network",
            "appnet",
            "--ip",
            "10.0.9.10",
            "--",
            "sleep",
            "600",
        ],
    );
    lab.run_task(
        "w2",
        &[
            "--network",
            "appnet",
            "--ip",
            "10.0.9.20",
            "--",
            "sleep",
            "600",
        ],
    );
    let pin_a = lab.task_netns("w1", &a);
    wait_for("a reaches b", Duration::from_secs(15), || {
        pings(&pin_a, "10.0.9.20")
    });
    let netns_dir = lab.host_dir("w1").join("run").join("netns");
    let net_pin = std::fs::read_dir(&netns_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("net-"))
        .expect("network namespace");
    let links =
        String::from_utf8_lossy(&nsenter(&net_pin, &["ip", "-j", "link"]).stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&links).unwrap();
    let vx = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .find(|n| n.starts_with("weft-vx"))
        .expect("vxlan device");
    let index_of = || -> Option<u64> {
        let out = nsenter(&net_pin, &["ip", "-j", "link", "show", "dev", &vx]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v[0]["ifindex"].as_u64()
    };
    let before = index_of().expect("the device's index");
    assert!(
        nsenter(&net_pin, &["ip", "link", "del", &vx])
            .status
            .success()
    );
    // The monitor may put it back before a ping could even fail (within
    // the ping's 1 s wait): the repair shows as a device with a new index.
    let took = wait_for(
        "the VXLAN device is repaired",
        Duration::from_secs(15),
        || index_of().is_some_and(|i| i != before) && pings(&pin_a, "10.0.9.20"),
    );
    eprintln!("repaired within {took:?}");
}

#[test]
fn internal_networks_stay_inside_and_the_gateway_bridge_reaches_the_host() {
    let lab = two_hosts("egress");
    lab.weft(
        "m1",
        &[
            "network",
            "create",
            "--attachable",
            "--internal",
            "--subnet",
            "10.0.11.0/24",
            "secret",
        ],
    );
    let inside = lab.run_task("w1", &["--network", "secret", "--", "sleep", "600"]);
    let outside = lab.run_task("w1", &["--network", "appnet", "--", "sleep", "600"]);
    // The host side: w1's own underlay address, in w1's namespace.
    let host_ip = lab.addr("w1");
    let pin_out = lab.task_netns("w1", &outside);
    let pin_in = lab.task_netns("w1", &inside);
    wait_for(
        "a task with egress reaches its host",
        Duration::from_secs(15),
        || pings(&pin_out, &host_ip),
    );
    assert!(
        !nsenter(
            &pin_in,
            &["busybox", "ping", "-c", "2", "-W", "1", &host_ip]
        )
        .status
        .success(),
        "a task on an internal network must not leave the overlay"
    );
    let routes = String::from_utf8_lossy(&nsenter(&pin_in, &["ip", "route"]).stdout).into_owned();
    assert!(!routes.contains("default"), "{routes}");
}

/// `network create` arguments that are refused, and what the error says.
const BAD_NETWORKS: &[(&[&str], &str)] = &[
    (
        &["network", "create", "--subnet", "10.0.9.0/33", "x"],
        "invalid subnet",
    ),
    (
        &["network", "create", "--subnet", "10.0.9.1/24", "x"],
        "host bits",
    ),
    (
        &["network", "create", "--subnet", "10.0.9.128/25", "x"],
        "overlaps",
    ),
    (
        &[
            "network",
            "create",
            "--subnet",
            "10.0.20.0/24",
            "--gateway",
            "10.0.21.1",
            "x",
        ],
        "gateway",
    ),
    (&["network", "create", "appnet"], "already exists"),
    (&["network", "create", "--mtu", "100", "x"], "MTU"),
    (
        &["network", "create", "-o", "nosuchopt", "x"],
        "the known options are encrypted",
    ),
    (
        &[
            "network",
            "create",
            "-o",
            "com.docker.network.driver.mtu=big",
            "x",
        ],
        "give a number of bytes",
    ),
    (
        &[
            "network",
            "create",
            "-o",
            "com.docker.network.driver.mtu=100",
            "x",
        ],
        "MTU 100 is out of range",
    ),
    (
        &[
            "network",
            "create",
            "--mtu",
            "1400",
            "-o",
            "com.docker.network.driver.mtu=1300",
            "x",
        ],
        "disagree",
    ),
    (
        &["network", "create", "--aux-address", "r=10.0.40.2", "x"],
        "--aux-address needs --subnet",
    ),
    (
        &[
            "network",
            "create",
            "--subnet",
            "10.0.40.0/24",
            "--aux-address",
            "r=10.0.41.2",
            "x",
        ],
        "not a usable address of subnet 10.0.40.0/24",
    ),
    (
        &[
            "network",
            "create",
            "--subnet",
            "10.0.40.0/24",
            "--aux-address",
            "r=10.0.40.1",
            "x",
        ],
        "is the network's gateway",
    ),
    (
        &[
            "network",
            "create",
            "--subnet",
            "10.0.40.0/24",
            "--aux-address",
            "r=nope",
            "x",
        ],
        "give NAME=IP",
    ),
    (
        &[
            "network",
            "create",
            "--subnet",
            "10.0.40.0/24",
            "--aux-address",
            "r=10.0.40.2",
            "--aux-address",
            "r=10.0.40.3",
            "x",
        ],
        "--aux-address r is given twice",
    ),
    (&["network", "create", "bad/name"], "invalid network name"),
    (&["network", "rm", "nosuch"], "not found"),
];

#[test]
fn bad_network_and_run_input_is_refused_and_changes_nothing() {
    let lab = two_hosts("badinput");
    let cases = BAD_NETWORKS;
    for (args, want) in cases {
        let err = lab.weft_err("m1", args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(
        !lab.weft("m1", &["network", "ls", "-q", "--filter", "name=x"])
            .lines()
            .any(|l| !l.is_empty()),
        "refused creates change nothing"
    );
    // Docker's spelling of --mtu; an auxiliary address is never handed out.
    lab.weft(
        "m1",
        &[
            "network",
            "create",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "--subnet",
            "10.0.31.0/24",
            "--aux-address",
            "router=10.0.31.2",
            "--attachable",
            "optmtu",
        ],
    );
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["network", "inspect", "optmtu"])).unwrap();
    assert_eq!(v[0]["MTU"], 1400, "{v}");
    assert_eq!(v[0]["MTULimitedBy"], "explicit", "{v}");
    assert_eq!(
        v[0]["IPAM"]["Config"][0]["AuxiliaryAddresses"]["router"], "10.0.31.2",
        "{v}"
    );
    let id = lab.run_task("w1", &["--network", "optmtu", "--", "sleep", "600"]);
    let ps = lab.weft("w1", &["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&id) && l.contains("optmtu=10.0.31.3")),
        "past the gateway and the aux address: {ps}"
    );
    lab.weft(
        "m1",
        &["network", "create", "--subnet", "10.0.30.0/24", "private"],
    );
    let err = lab.weft_err("w1", &["run", "--network", "private", "--", "sleep", "1"]);
    assert!(err.contains("not attachable"), "{err}");
    let err = lab.weft_err("w1", &["run", "--network", "nosuch", "--", "sleep", "1"]);
    assert!(err.contains("not found"), "{err}");
    let err = lab.weft_err(
        "w1",
        &[
            "run",
            "--network",
            "appnet",
            "--ip",
            "10.0.8.1",
            "--",
            "sleep",
            "1",
        ],
    );
    assert!(err.contains("not a usable address"), "{err}");
    lab.run_task(
        "w1",
        &[
            "--network",
            "appnet",
            "--ip",
            "10.0.9.40",
            "--",
            "sleep",
            "600",
        ],
    );
    let err = lab.weft_err(
        "w2",
        &[
            "run",
            "--network",
            "appnet",
            "--ip",
            "10.0.9.40",
            "--",
            "sleep",
            "1",
        ],
    );
    assert!(err.contains("already in use"), "{err}");
    let ls = lab.weft("m1", &["network", "ls", "-q", "--filter", "driver=overlay"]);
    assert_eq!(
        ls.lines().count(),
        3,
        "only appnet, optmtu and private exist: {ls}"
    );
    let ps = lab.weft("w2", &["ps", "-a"]);
    assert_eq!(ps.lines().count(), 1, "no task was created on w2: {ps}");
}

/// `network prune` removes only what nothing uses (and what its filters
/// pick); `network rm -f` disconnects standalone tasks first, which keep
/// running, and does not mind a network that is not there; `network
/// disconnect -f` does not mind a task that is not on the network.
#[test]
fn prune_and_forced_rm_and_disconnect() {
    let lab = Lab::new("netprune", &["m1"]);
    let mut lab = lab;
    lab.start_all();
    lab.init("m1", &[]);
    let create = |name: &str, extra: &[&str]| {
        let mut args = vec!["network", "create", "--attachable"];
        args.extend_from_slice(extra);
        args.push(name);
        lab.weft("m1", &args);
    };
    create("unused", &[]);
    create("kept", &["--label", "keep=1"]);
    create("used", &[]);
    let id = lab.run_task("m1", &["--network", "used", "--", "sleep", "600"]);
    let names = || {
        let mut v: Vec<String> = lab
            .weft("m1", &["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let err = lab.weft_err("m1", &["network", "prune", "-f", "--filter", "colour=red"]);
    assert!(err.contains("colour"), "{err}");
    let out = lab.weft("m1", &["network", "prune", "-f", "--filter", "label!=keep"]);
    assert_eq!(out, "Deleted Networks:\nunused\n");
    assert!(names().contains(&"kept".to_string()) && names().contains(&"used".to_string()));
    let out = lab.weft("m1", &["network", "prune", "-f", "--filter", "until=1h"]);
    assert_eq!(out, "", "nothing is an hour old");

    let err = lab.weft_err("m1", &["network", "rm", "used"]);
    assert!(err.contains("in use"), "{err}");
    lab.weft("m1", &["network", "rm", "-f", "used", "nosuch"]);
    assert!(!names().contains(&"used".to_string()), "{:?}", names());
    let ps = lab.weft("m1", &["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&id) && l.contains("running")),
        "the task runs on, disconnected: {ps}"
    );
    let err = lab.weft_err("m1", &["network", "disconnect", "kept", &id]);
    assert!(err.contains("not connected"), "{err}");
    lab.weft("m1", &["network", "disconnect", "-f", "kept", &id]);
    lab.weft("m1", &["network", "disconnect", "-f", "kept", "nosuchtask"]);
    let out = lab.weft("m1", &["network", "prune", "-f"]);
    assert_eq!(out, "Deleted Networks:\nkept\n");
}
