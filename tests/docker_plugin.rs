//! Debian's dockerd with weft as its network and IPAM plugin, on two hosts
//! of the lab (no Swarm mode): `docker run --network` containers join a
//! weft overlay, reach each other, weft tasks and a weft service by name,
//! and Docker's removals and restarts leave nothing in weft.
//!
//! Each host's dockerd runs in that host's network namespace and in its
//! weft daemon's mount namespace (a tmpfs on `/run`, see
//! `Lab::private_run` and tests/common/dockerd.rs).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dockerd::{Dockerd, PLUGIN_SOCKET};
use common::podman::Podman;
use common::{Lab, addr_of_in, wait_for};

const T: Duration = Duration::from_secs(30);

/// A lab of `hosts` with the plugin on, the first a manager, and the
/// attachable overlay `appnet` (10.75.0.0/24).
fn lab(name: &str, hosts: &[&str]) -> Lab {
    let mut lab = Lab::new(name, hosts);
    lab.private_run();
    for h in hosts {
        lab.start_with(h, &["--docker-plugin", PLUGIN_SOCKET]);
    }
    let (worker, _) = lab.init(hosts[0], &[]);
    for h in &hosts[1..] {
        lab.join(h, &worker, hosts[0]);
    }
    lab.attachable_network(hosts[0], "10.75.0.0/24", "appnet");
    lab
}

fn container_ip(d: &Dockerd, name: &str, dev: &str) -> String {
    let out = d.exec(
        name,
        &["busybox", "ip", "-o", "-4", "addr", "show", "dev", dev],
    );
    addr_of_in(&out)
        .and_then(|a| a.split('/').next().map(str::to_owned))
        .unwrap_or_else(|| panic!("no address on {dev} of {name}: {out}"))
}

/// The Docker endpoints weft lists on `net`.
fn docker_endpoints(lab: &Lab, net: &str) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft("h1", &["network", "inspect", net])).expect("json");
    v[0]["Containers"].as_object().map_or(0, |c| {
        c.values().filter(|e| e["Runtime"] == "docker").count()
    })
}

fn ping(d: &Dockerd, c: &str, ip: &str) -> bool {
    d.exec_ok(c, &["busybox", "ping", "-c", "1", "-W", "1", ip])
}

/// A weft task sleeping on `net` on `host`: its namespace (reachable from
/// the test) and address.
fn weft_task(lab: &Lab, host: &str, name: &str, net: &str) -> (PathBuf, String) {
    let pin = PathBuf::from(format!(
        "/proc/{}/root{}",
        lab.pid(host).expect("runs"),
        common::sleeper(lab, host, name, net).display()
    ));
    let out = common::nsenter_stdout(&pin, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    let ip = addr_of_in(&out).expect("task address");
    (pin, ip.split('/').next().unwrap().to_owned())
}

#[test]
fn docker_containers_on_two_hosts_join_a_weft_overlay_and_leave_nothing_behind() {
    let mut lab = lab("dkrnet", &["h1", "h2"]);
    let (task_pin, task_ip) = weft_task(&lab, "h2", "peer", "appnet");
    common::sleeping_service(&lab, "h1", "web", "appnet");
    let vip = common::vip_of(&lab, "h1", "web");
    let (mut d1, mut d2) = (Dockerd::start(&lab, "h1"), Dockerd::start(&lab, "h2"));
    d1.weft_network("appnet", "appnet");
    d2.weft_network("appnet", "appnet");
    let dns = ["--network", "appnet", "--dns", "127.0.0.12"];
    d1.run_d("c1", &dns, &["sleep", "600"]);
    d2.run_d("c2", &["--network", "appnet"], &["sleep", "600"]);
    let (ip1, ip2) = (
        container_ip(&d1, "c1", "eth0"),
        container_ip(&d2, "c2", "eth0"),
    );
    assert!(
        ip1.starts_with("10.75.0.") && ip2.starts_with("10.75.0.") && ip1 != ip2,
        "{ip1} {ip2}"
    );
    assert_eq!(docker_endpoints(&lab, "appnet"), 2);

    // Across hosts, to and from a weft task, out through Docker's gateway
    // bridge (to the other host's underlay address).
    wait_for("c1 reaching c2 across hosts", T, || ping(&d1, "c1", &ip2));
    wait_for("c2 reaching c1", T, || ping(&d2, "c2", &ip1));
    wait_for("c1 reaching the weft task", T, || ping(&d1, "c1", &task_ip));
    wait_for("the weft task reaching c1", T, || {
        common::pings(&task_pin, &ip1)
    });
    wait_for("c1 reaching h2's underlay", T, || {
        ping(&d1, "c1", &lab.addr("h2"))
    });
    // A weft service by name: Docker's resolver forwards it to weft's
    // (--dns 127.0.0.12), and the VIP answers pings through its table.
    wait_for("c1 resolving the weft service", T, || {
        let out = d1.run(&["exec", "c1", "busybox", "nslookup", "web"]);
        String::from_utf8_lossy(&out.stdout).contains(&vip)
    });
    wait_for("c1 reaching the service's VIP", T, || ping(&d1, "c1", &vip));

    connect_and_disconnect(&lab, &d1, &ip2);
    published_port(&lab, &d1);

    // weft's daemon restarts under a running container: it keeps its
    // network, and Docker's removal still reaches weft afterwards.
    d1.restart_weft(&mut lab);
    wait_for("c1 reaching c2 after weft's restart", T, || {
        ping(&d1, "c1", &ip2)
    });
    assert_eq!(docker_endpoints(&lab, "appnet"), 2);

    // docker rm -f: the endpoint goes from weft, its namespace pin too.
    d1.ok(&["rm", "-f", "c1"]);
    wait_for("c1's endpoint removed", T, || {
        docker_endpoints(&lab, "appnet") == 1
    });
    // The Docker service crashes (dockerd and its containerd killed) and
    // starts again: dockerd cleans up the sandboxes it finds, and weft
    // forgets c2.
    d2.crash();
    d2.spawn();
    wait_for("c2's endpoint removed after dockerd's restart", T, || {
        docker_endpoints(&lab, "appnet") == 0
    });
    assert!(
        no_handover_links(&lab, "h1") && no_handover_links(&lab, "h2"),
        "a handed-over veth was left in a daemon's namespace"
    );
    // docker network rm: the mapping goes too.
    let mapped = |lab: &Lab| {
        std::fs::read_to_string(lab.data_dir("h1").join("docker/networks.json")).unwrap_or_default()
    };
    let id = d1.ok(&["network", "inspect", "-f", "{{.Id}}", "appnet"]);
    assert!(mapped(&lab).contains(id.trim()));
    d1.ok(&["network", "rm", "appnet"]);
    assert!(!mapped(&lab).contains(id.trim()), "{}", mapped(&lab));
}

/// `docker network connect/disconnect` of a container on Docker's own
/// bridge; a second weft network for a container already on one is
/// refused.
fn connect_and_disconnect(lab: &Lab, d1: &Dockerd, ip2: &str) {
    d1.run_d("c3", &["--network", "bridge"], &["sleep", "600"]);
    d1.ok(&["network", "connect", "appnet", "c3"]);
    let ip3 = container_ip(d1, "c3", "eth1");
    assert!(ip3.starts_with("10.75.0."), "{ip3}");
    wait_for("c3 reaching c2 once connected", T, || ping(d1, "c3", ip2));
    assert_eq!(docker_endpoints(lab, "appnet"), 3);
    d1.ok(&["network", "disconnect", "appnet", "c3"]);
    wait_for("c3's endpoint removed once disconnected", T, || {
        docker_endpoints(lab, "appnet") == 2
    });
    assert!(
        !d1.exec_ok("c3", &["busybox", "ip", "link", "show", "eth1"]),
        "c3 still has its weft interface"
    );

    lab.attachable_network("h1", "10.76.0.0/24", "othernet");
    d1.weft_network("othernet", "othernet");
    let err = d1.err(&["network", "connect", "othernet", "c1"]);
    assert!(err.contains("one weft network at a time"), "{err}");
    assert_eq!(docker_endpoints(lab, "othernet"), 0);
    d1.ok(&["rm", "-f", "c3"]);
}

/// `docker run -p 18080:8080`: weft publishes the port on h1's addresses
/// (seen from h2), the operator's `weft-user` chain applies to it, and it
/// goes with the container.
fn published_port(lab: &Lab, d1: &Dockerd) {
    let serve = "mkdir -p /www && echo hello-from-docker > /www/index.html && \
                 exec httpd -f -p 8080 -h /www";
    d1.run_d(
        "web1",
        &["--network", "appnet", "-p", "18080:8080"],
        &["sh", "-c", serve],
    );
    let url = format!("http://{}:18080/", lab.addr("h1"));
    let h2 = lab.host_netns("h2");
    let fetch = || {
        common::nsenter_stdout(&h2, &["timeout", "3", "busybox", "wget", "-qO-", &url])
            .contains("hello-from-docker")
    };
    wait_for("the published port answering from h2", T, fetch);
    let h1 = lab.host_netns("h1");
    let drop_rule =
        "add rule inet weft_user weft-user meta l4proto tcp ct original proto-dst 18080 drop";
    let mut rule = vec!["nft"];
    rule.extend(drop_rule.split(' '));
    assert!(common::nsenter(&h1, &rule).status.success());
    assert!(!fetch(), "weft-user's drop rule did not apply");
    let flush = ["nft", "flush", "chain", "inet", "weft_user", "weft-user"];
    assert!(common::nsenter(&h1, &flush).status.success());
    wait_for("the port answering again", T, fetch);
    d1.ok(&["rm", "-f", "web1"]);
    wait_for("the port gone with the container", T, || !fetch());
}

/// Whether `host`'s daemon namespace has no veth left for dockerd to move.
fn no_handover_links(lab: &Lab, host: &str) -> bool {
    let out = common::nsenter_stdout(&lab.host_netns(host), &["ip", "-o", "link"]);
    !out.contains("weftdk")
}

#[test]
fn a_weft_task_a_podman_container_and_a_docker_container_share_an_encrypted_network() {
    for tool in ["podman", "conmon", "runc"] {
        assert!(
            common::containerd::find_on_path(tool).is_some(),
            "{tool} is not installed: run `make deps`; this test is not skipped"
        );
    }
    use common::wire::{count_underlay, counter, reset_counters};
    let lab = lab("dkrmix", &["h1", "h2"]);
    // Encrypted: between hosts, only WireGuard on the underlay.
    lab.encrypted_network("h1", "10.74.0.0/24", "secure");
    count_underlay(&lab);
    let (task_pin, task_ip) = weft_task(&lab, "h1", "task", "secure");
    let p = Podman::new(&lab, "h1", "secure");
    let d = Dockerd::start(&lab, "h2");
    d.weft_network("secure", "secure");
    p.sleeper("pod", "secure");
    d.run_d("dock", &["--network", "secure"], &["sleep", "600"]);
    let pod_ip = addr_of_in(&p.ok(&[
        "exec", "pod", "busybox", "ip", "-o", "-4", "addr", "show", "dev", "eth0",
    ]))
    .and_then(|a| a.split('/').next().map(str::to_owned))
    .expect("pod address");
    let dock_ip = container_ip(&d, "dock", "eth0");

    let podping = |ip: &str| p.exec_ok("pod", &["busybox", "ping", "-c", "1", "-W", "1", ip]);
    wait_for("docker → podman", T, || ping(&d, "dock", &pod_ip));
    wait_for("docker → weft task", T, || ping(&d, "dock", &task_ip));
    wait_for("podman → docker", T, || podping(&dock_ip));
    wait_for("podman → weft task", T, || podping(&task_ip));
    wait_for("weft task → docker", T, || {
        common::pings(&task_pin, &dock_ip)
    });
    wait_for("weft task → podman", T, || {
        common::pings(&task_pin, &pod_ip)
    });

    reset_counters(&lab);
    for _ in 0..10 {
        assert!(ping(&d, "dock", &pod_ip) && ping(&d, "dock", &task_ip));
    }
    let wg = counter(&lab.switch_netns(), "weftcount", "wg");
    let vx = counter(&lab.switch_netns(), "weftcount", "vxlan");
    assert!(wg >= 40, "WireGuard carried the pings: {wg}");
    assert_eq!(vx, 0, "no plaintext VXLAN on the underlay");
}

/// `docker network create --ipv6` on a dual-stack weft network: the
/// container gets weft's addresses of both families (the ones weft lists
/// for it), an IPv6 default route through weft's gateway bridge, and
/// reaches a weft task on another host over IPv6.
#[test]
fn a_docker_container_on_a_dual_stack_weft_network_gets_both_families() {
    let lab = lab("dkr6", &["h1", "h2"]);
    lab.dual_stack_network("h1", "10.73.0.0/24", "fd00:73::/64", "dual");
    let (task_pin, _) = weft_task(&lab, "h2", "peer", "dual");
    let six = |out: &str| {
        out.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .map(str::to_owned)
    };
    let peer6 = six(&common::nsenter_stdout(
        &task_pin,
        &[
            "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global",
        ],
    ))
    .expect("the weft task's IPv6 address");
    let d = Dockerd::start(&lab, "h1");
    let create = |name: &str, extra: &[&str]| {
        let args = Dockerd::weft_network_args(name, "dual", extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        d.run(&args)
    };
    let made = create("dual", &["--ipv6"]);
    assert!(made.status.success(), "{made:?}");
    // The same weft network without --ipv6 on this engine: refused.
    let out = create("dual4", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("with --ipv6"),
        "{err}"
    );
    d.run_d("c6", &["--network", "dual"], &["sleep", "600"]);
    let mine = six(&d.exec(
        "c6",
        &[
            "busybox", "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global",
        ],
    ))
    .expect("an IPv6 address in the container");
    assert!(mine.starts_with("fd00:73::"), "{mine}");
    // The one weft lists for the container, and the one Docker shows.
    let net: serde_json::Value =
        serde_json::from_str(&lab.weft("h1", &["network", "inspect", "dual"])).expect("json");
    let listed = net[0]["Containers"].to_string();
    assert!(listed.contains(&format!("{mine}/64")), "{listed}");
    let shown = d.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.dual.GlobalIPv6Address}}",
        "c6",
    ]);
    assert_eq!(shown.trim(), mine);
    // weft wires gw0 once the container's sandbox is adopted.
    wait_for("an IPv6 default route through weft's gateway", T, || {
        d.exec("c6", &["busybox", "ip", "-6", "route", "show", "default"])
            .contains("fd77:6566:7400::")
    });
    let ping6 = |ip: &str| d.exec_ok("c6", &["busybox", "ping", "-6", "-c", "1", "-W", "1", ip]);
    wait_for("the container reaching the weft task over IPv6", T, || {
        ping6(&peer6)
    });
    d.ok(&["rm", "-f", "c6"]);
    wait_for("c6's endpoint removed", T, || {
        docker_endpoints(&lab, "dual") == 0
    });
}

/// One raw plugin call on `socket`: (HTTP status, body).
fn plugin_call(socket: &Path, method: &str, body: &str) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("plugin socket");
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[test]
fn bad_docker_networks_and_plugin_calls_get_clear_errors_and_change_nothing() {
    let lab = lab("dkrbad", &["h1"]);
    lab.weft(
        "h1",
        &["network", "create", "--subnet", "10.77.0.0/24", "closed"],
    );
    let d = Dockerd::start(&lab, "h1");
    // Docker's own IPAM cannot give weft's addresses; the weft network
    // must be named, exist and be attachable.
    let weft_ipam = ["network", "create", "-d", "weft", "--ipam-driver", "weft"];
    for (name, extra, says) in [
        ("x1", &["-d", "weft"][..], "--ipam-driver weft"),
        ("x2", &weft_ipam[2..], "weft.network"),
        (
            "x3",
            &[&weft_ipam[2..], &["--ipam-opt", "weft.network=nosuch"]].concat()[..],
            "nosuch",
        ),
        (
            "x4",
            &[&weft_ipam[2..], &["--ipam-opt", "weft.network=closed"]].concat()[..],
            "not attachable",
        ),
        (
            "x5",
            &[
                &weft_ipam[2..],
                &["--ipv6", "--ipam-opt", "weft.network=appnet"],
            ]
            .concat()[..],
            "has no IPv6 subnet",
        ),
    ] {
        let mut args = vec!["network", "create"];
        args.extend_from_slice(extra);
        args.push(name);
        let err = d.err(&args);
        assert!(err.contains(says), "{name}: {err}");
    }
    let nets = d.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.contains("x1") && !nets.contains("x4"), "{nets}");

    // The protocol's edge: bad JSON, bad IDs, an unknown endpoint.
    let sock = d.plugin_socket();
    let (code, body) = plugin_call(&sock, "Plugin.Activate", "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("NetworkDriver") && body.contains("IpamDriver"));
    for (method, req) in [
        ("IpamDriver.RequestPool", "{not json"),
        (
            "NetworkDriver.Join",
            r#"{"NetworkID":"../x","EndpointID":"a","SandboxKey":"/x"}"#,
        ),
        (
            "NetworkDriver.Join",
            r#"{"NetworkID":"a","EndpointID":"b","SandboxKey":"rel"}"#,
        ),
        ("Nope.Call", "{}"),
    ] {
        let (code, body) = plugin_call(&sock, method, req);
        assert_eq!(code, 400, "{method} {req}: {body}");
        assert!(body.contains("\"Err\""), "{body}");
    }
    let (code, body) = plugin_call(
        &sock,
        "NetworkDriver.Join",
        r#"{"NetworkID":"a","EndpointID":"b","SandboxKey":"/x"}"#,
    );
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("not known here"), "{body}");
    let (code, body) = plugin_call(
        &sock,
        "IpamDriver.RequestAddress",
        r#"{"PoolID":"nosuchpool","Address":"","Options":{}}"#,
    );
    assert_eq!(code, 500, "{body}");
    let ps = lab.weft("h1", &["ps", "-a", "-q"]);
    assert!(ps.trim().is_empty(), "tasks were made: {ps}");
}
