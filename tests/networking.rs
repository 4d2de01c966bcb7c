//! The rest of the networking model end to end, on real daemons in
//! namespace hosts: the built-in `bridge`, `host` and `none` networks, user
//! bridges with names, live connect/disconnect, published ports, the
//! ingress routing mesh (client address kept when a local replica serves),
//! the operator's `weft-user` chain and proxy settings.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Lab, nsenter, nsenter_stdout, pings, wait_for};

const T: Duration = Duration::from_secs(20);

/// Waits until `host`'s daemon has reported its default bridge.
fn wait_bridge(lab: &Lab, host: &str) {
    wait_for(&format!("{host}'s default bridge"), T, || {
        lab.weft(host, &["network", "ls"])
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("bridge"))
    });
}

/// The task's row in `weft ps -a` on `host`.
fn ps_row(lab: &Lab, host: &str, name: &str) -> Option<String> {
    lab.weft(host, &["ps", "-a"])
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .map(str::to_string)
}

fn wait_running(lab: &Lab, host: &str, name: &str) {
    wait_for(&format!("task {name} running"), T, || {
        ps_row(lab, host, name).is_some_and(|r| r.split_whitespace().nth(2) == Some("running"))
    });
}

/// An HTTP GET from the namespace `pin`; the body, or empty on failure.
fn get(pin: &Path, url: &str) -> String {
    nsenter_stdout(pin, &["timeout", "3", "busybox", "wget", "-qO-", url])
        .trim()
        .to_string()
}

/// A web server script: answers with `body`, logs requests (with the
/// client's address) to its output.
fn httpd(body: &str, port: u16) -> String {
    format!(
        "mkdir -p /tmp/www; echo {body} > /tmp/www/index.html; exec busybox httpd -f -vv -p {port} -h /tmp/www"
    )
}

/// What the embedded resolver (127.0.0.11 inside the task namespace `pin`)
/// answers for `name`: its first address.
fn resolve(pin: &Path, name: &str) -> Option<String> {
    let out = nsenter_stdout(pin, &["busybox", "nslookup", name, "127.0.0.11"]);
    let (_, answer) = out.split_once("Name:")?;
    answer
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
        .find(|a| !a.is_empty())
}

/// Whether `name`, resolved by the task's resolver, answers a ping.
fn pings_name(pin: &Path, name: &str) -> bool {
    resolve(pin, name).is_some_and(|ip| pings(pin, &ip))
}

fn links(pin: &Path) -> Vec<String> {
    nsenter_stdout(pin, &["ip", "-o", "link"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn builtin_and_user_networks_connect_disconnect_and_bad_input() {
    let mut lab = Lab::new("netmodel", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    // At once after the join, when the new node may not have reported its
    // bridge subnet yet: a task on the default bridge waits for it instead
    // of failing (it is checked on the bridge further down).
    let a1 = lab.run_task("w1", &["--name", "a1", "-d", "--", "sleep", "3600"]);
    wait_bridge(&lab, "w1");

    // Every node lists the built-in networks, workers included.
    for h in ["m1", "w1"] {
        let ls = lab.weft(h, &["network", "ls"]);
        for (name, driver) in [("bridge", "bridge"), ("host", "host"), ("none", "null")] {
            assert!(
                ls.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.get(1) == Some(&name)
                        && f.get(2) == Some(&driver)
                        && f.get(3) == Some(&"local")
                }),
                "{h}: {name} missing:\n{ls}"
            );
        }
    }

    // none: only loopback.
    let none = lab.run_task(
        "w1",
        &[
            "--name",
            "n0",
            "--network",
            "none",
            "-d",
            "--",
            "sleep",
            "3600",
        ],
    );
    wait_running(&lab, "w1", "n0");
    assert_eq!(links(&lab.task_netns("w1", &none)), vec!["lo"]);

    // host: binds on the node's own address, reachable from another host.
    lab.run_task(
        "w1",
        &[
            "--name",
            "h0",
            "--network",
            "host",
            "-d",
            "--",
            "sh",
            "-c",
            &httpd("from-host-mode", 18081),
        ],
    );
    wait_running(&lab, "w1", "h0");
    let w1_addr = lab.addr("w1");
    let m1_ns = lab.host_netns("m1");
    wait_for("the host-mode server", T, || {
        get(&m1_ns, &format!("http://{w1_addr}:18081/")) == "from-host-mode"
    });

    // The default bridge: reachable by IP, not by name (as on docker0).
    let a2 = lab.run_task("w1", &["--name", "a2", "-d", "--", "sleep", "3600"]);
    wait_running(&lab, "w1", "a1");
    wait_running(&lab, "w1", "a2");
    let a2_ip = ps_row(&lab, "w1", "a2")
        .unwrap()
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.strip_prefix("bridge="))
        .map(|a| a.split('/').next().unwrap().to_string())
        .expect("a2 on bridge");
    let a1_ns = lab.task_netns("w1", &a1);
    wait_for("a1 -> a2 by IP on the default bridge", T, || {
        pings(&a1_ns, &a2_ip)
    });
    assert!(
        !pings(&a1_ns, "a2"),
        "names must not resolve on the default bridge"
    );
    assert!(ps_row(&lab, "w1", "a2").unwrap().starts_with(&a2));

    // User bridges: names resolve; two bridges are isolated.
    lab.weft(
        "w1",
        &[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            "10.60.0.0/24",
            "ub1",
        ],
    );
    lab.weft(
        "w1",
        &[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            "10.61.0.0/24",
            "ub2",
        ],
    );
    let u1 = lab.run_task(
        "w1",
        &[
            "--name",
            "u1",
            "--network",
            "ub1",
            "-d",
            "--",
            "sleep",
            "3600",
        ],
    );
    lab.run_task(
        "w1",
        &[
            "--name",
            "u2",
            "--network",
            "ub1",
            "-d",
            "--",
            "sleep",
            "3600",
        ],
    );
    lab.run_task(
        "w1",
        &[
            "--name",
            "u3",
            "--network",
            "ub2",
            "-d",
            "--",
            "sleep",
            "3600",
        ],
    );
    for t in ["u1", "u2", "u3"] {
        wait_running(&lab, "w1", t);
    }
    let u1_ns = lab.task_netns("w1", &u1);
    wait_for("u1 -> u2 by name on a user bridge", T, || {
        pings_name(&u1_ns, "u2")
    });
    let u3_ip = "10.61.0.2";
    assert!(!pings(&u1_ns, u3_ip), "bridges must be isolated");
    // A user bridge is local: the manager does not see w1's.
    let ls_m1 = lab.weft("m1", &["network", "ls"]);
    assert!(!ls_m1.contains("ub1"), "{ls_m1}");
    let inspect: serde_json::Value =
        serde_json::from_str(&lab.weft("w1", &["network", "inspect", "ub1"])).unwrap();
    let n = &inspect[0];
    assert_eq!(n["Driver"], "bridge");
    assert_eq!(n["Scope"], "local");
    assert_eq!(n["IPAM"]["Config"][0]["Subnet"], "10.60.0.0/24");
    assert_eq!(n["IPAM"]["Config"][0]["Gateway"], "10.60.0.1");
    assert_eq!(n["Containers"].as_object().unwrap().len(), 2);
    for k in [
        "Name",
        "Id",
        "Created",
        "EnableIPv6",
        "Internal",
        "Attachable",
        "Ingress",
        "Options",
        "Labels",
    ] {
        assert!(n.get(k).is_some(), "inspect lacks {k}: {n}");
    }

    // Live connect/disconnect: the same process gains and loses eth1, and
    // DNS follows.
    let lc = lab.run_task(
        "w1",
        &[
            "--name",
            "lc",
            "--network",
            "ub2",
            "-d",
            "--",
            "sleep",
            "3600",
        ],
    );
    wait_running(&lab, "w1", "lc");
    let lc_ns = lab.task_netns("w1", &lc);
    let pid_file = |lab: &Lab| {
        // The task's pid as the runtime recorded it.
        let p = lab.host_dir("w1").join("run/tasks").join(&lc).join("pid");
        std::fs::read_to_string(p).unwrap_or_default()
    };
    let pid_before = pid_file(&lab);
    lab.weft("w1", &["network", "connect", "ub1", "lc"]);
    wait_for("lc to gain eth1", T, || {
        links(&lc_ns).contains(&"eth1".to_string())
    });
    wait_for("lc to reach u1 by name over ub1", T, || {
        pings_name(&lc_ns, "u1")
    });
    assert!(pings_name(&u1_ns, "lc"), "u1 resolves lc after the connect");
    let err = lab.weft_err("w1", &["network", "connect", "ub1", "lc"]);
    assert!(err.contains("already connected"), "{err}");
    lab.weft("w1", &["network", "disconnect", "ub1", "lc"]);
    wait_for("lc to lose eth1", T, || {
        !links(&lc_ns).contains(&"eth1".to_string())
    });
    assert_eq!(pid_file(&lab), pid_before, "the task kept running");
    assert!(ps_row(&lab, "w1", "lc").unwrap().contains("running"));

    // Bad input: a clear error, and nothing changes.
    let before = lab.weft("w1", &["ps", "-a"]);
    for (args, want) in [
        (
            vec![
                "run",
                "--network",
                "host",
                "--network",
                "bridge",
                "--",
                "true",
            ],
            "cannot be combined",
        ),
        (
            vec!["run", "-p", "70000:80", "--", "true"],
            "outside 1-65535",
        ),
        (vec!["run", "--network", "nope", "--", "true"], "not found"),
    ] {
        let err = lab.weft_err("w1", &args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(lab.weft("w1", &["ps", "-a"]), before);
    let nets_before = lab.weft("w1", &["network", "ls"]);
    let route = format!(
        "{}/25",
        lab.addr("w1").rsplit_once('.').unwrap().0.to_string() + ".0"
    );
    let err = lab.weft_err(
        "w1",
        &[
            "network", "create", "--driver", "bridge", "--subnet", &route, "clash",
        ],
    );
    assert!(err.contains("collides with the host route"), "{err}");
    let err = lab.weft_err("w1", &["network", "create", "--driver", "bridge", "ub1"]);
    assert!(err.contains("already exists"), "{err}");
    let err = lab.weft_err("w1", &["network", "rm", "bridge"]);
    assert!(err.contains("built-in"), "{err}");
    let err = lab.weft_err("w1", &["network", "connect", "host", "lc"]);
    assert!(err.contains("--network host"), "{err}");
    assert_eq!(lab.weft("w1", &["network", "ls"]), nets_before);
    // A daemon whose default bridge collides with a host route refuses to
    // start, saying so.
    let tmp = lab.dir().join("bad-daemon");
    let out = lab.weft_in_netns(
        "w1",
        &[
            "daemon",
            "--bridge-subnet",
            &route,
            "--data-dir",
            tmp.join("d").to_str().unwrap(),
            "--exec-root",
            tmp.join("r").to_str().unwrap(),
            "--socket",
            tmp.join("s.sock").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("collides with the host route"), "{err}");
}

#[test]
fn published_ports_ingress_user_chain_and_proxies() {
    let mut lab = Lab::new("ports", &["m1", "w1", "w2"]);
    lab.start("m1");
    let proxy = [
        "--http-proxy",
        "http://proxy.example:3128",
        "--no-proxy",
        "localhost,.cluster",
    ];
    lab.start_with("w1", &proxy);
    lab.start("w2");
    let (wt, _) = lab.init(
        "m1",
        &[
            "--heartbeat-period",
            "500ms",
            "--ingress-subnet",
            "10.77.0.0/24",
        ],
    );
    assert!(
        lab.weft("m1", &["info"])
            .contains("Ingress subnet: 10.77.0.0/24")
    );
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    wait_bridge(&lab, "w1");
    let m1_ns = lab.host_netns("m1");
    let (m1, w1, w2) = (lab.addr("m1"), lab.addr("w1"), lab.addr("w2"));

    // Proxy settings reach tasks in both cases, unless the task sets its own.
    lab.run_task("w1", &["--name", "px", "--", "sh", "-c", "env | sort"]);
    lab.run_task(
        "w1",
        &[
            "--name",
            "own",
            "-e",
            "http_proxy=http://mine:1",
            "--",
            "sh",
            "-c",
            "env | sort",
        ],
    );
    wait_for("px output", T, || lab.logs("w1", "px").contains("NO_PROXY"));
    let env = lab.logs("w1", "px");
    for want in [
        "HTTP_PROXY=http://proxy.example:3128",
        "http_proxy=http://proxy.example:3128",
        "NO_PROXY=localhost,.cluster",
        "no_proxy=localhost,.cluster",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing:\n{env}");
    }
    wait_for("own output", T, || {
        lab.logs("w1", "own").contains("no_proxy")
    });
    let env = lab.logs("w1", "own");
    assert!(
        env.lines().any(|l| l == "http_proxy=http://mine:1"),
        "{env}"
    );
    assert!(!env.contains("HTTP_PROXY="), "{env}");

    // -p: reachable from another host at the node's address, the server
    // sees the client's address; -p PORT picks one from the range.
    lab.run_task(
        "w1",
        &[
            "--name",
            "web",
            "-p",
            "8080:80",
            "-p",
            "80",
            "-d",
            "--",
            "sh",
            "-c",
            &httpd("hello-web", 80),
        ],
    );
    wait_running(&lab, "w1", "web");
    let ports = lab.weft("w1", &["port", "web"]);
    assert!(
        ports.lines().any(|l| l == "80/tcp -> 0.0.0.0:8080"),
        "{ports}"
    );
    let random: u16 = ports
        .lines()
        .find(|l| !l.ends_with(":8080"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("a picked port");
    assert!((30000..=32767).contains(&random), "{random}");
    wait_for("web via w1:8080", T, || {
        get(&m1_ns, &format!("http://{w1}:8080/")) == "hello-web"
    });
    assert_eq!(get(&m1_ns, &format!("http://{w1}:{random}/")), "hello-web");
    let log = lab.logs("w1", "web");
    assert!(
        log.contains(&format!("{m1}]")),
        "the client address is kept:\n{log}"
    );
    let err = lab.weft_err("w1", &["run", "-p", "8080:81", "--", "true"]);
    assert!(err.contains("already published by task web"), "{err}");

    // The user chain: a drop rule there takes effect, survives a daemon
    // restart and a flush of weft's own table, which weft puts back.
    let w1_ns = lab.host_netns("w1");
    let nft = |args: &[&str]| {
        let mut full = vec!["nft"];
        full.extend_from_slice(args);
        let out = nsenter(&w1_ns, &full);
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let chain = nft(&["list", "chain", "inet", "weft_user", "weft-user"]);
    assert!(chain.contains("hook forward"), "{chain}");
    nft(&[
        "add",
        "rule",
        "inet",
        "weft_user",
        "weft-user",
        "ip",
        "saddr",
        &m1,
        "meta",
        "l4proto",
        "tcp",
        "ct",
        "original",
        "proto-dst",
        "8080",
        "drop",
    ]);
    wait_for("the user rule to block m1", T, || {
        get(&m1_ns, &format!("http://{w1}:8080/")).is_empty()
    });
    lab.kill9("w1");
    lab.start_with("w1", &proxy);
    nft(&["flush", "table", "inet", "weft_ports"]);
    wait_for("weft to restore its published ports", T, || {
        nft(&["list", "table", "inet", "weft_ports"]).contains("dnat")
    });
    assert!(nft(&["list", "chain", "inet", "weft_user", "weft-user"]).contains("drop"));
    assert!(
        get(&m1_ns, &format!("http://{w1}:8080/")).is_empty(),
        "still blocked"
    );
    let w2_ns = lab.host_netns("w2");
    assert_eq!(
        get(&w2_ns, &format!("http://{w1}:8080/")),
        "hello-web",
        "only m1 is blocked"
    );
    nft(&["flush", "chain", "inet", "weft_user", "weft-user"]);
    wait_for("m1 unblocked", T, || {
        get(&m1_ns, &format!("http://{w1}:8080/")) == "hello-web"
    });

    // Ingress: a published service answers on every node; with a local
    // replica the client's address is kept.
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "ing",
            "--replicas",
            "1",
            "--constraint",
            "node.hostname==w1",
            "--publish",
            "published=9090,target=80",
            "--",
            "sh",
            "-c",
            &httpd("hello-ingress", 80),
        ],
    );
    for node in [&w2, &m1, &w1] {
        wait_for(&format!("ingress via {node}"), T, || {
            get(&m1_ns, &format!("http://{node}:9090/")) == "hello-ingress"
        });
    }
    let replica = lab
        .weft("w1", &["ps"])
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .nth(1)
                .filter(|n| n.starts_with("ing."))
                .map(str::to_string)
        })
        .expect("the replica on w1");
    let log = lab.logs("w1", &replica);
    assert!(
        log.contains(&format!("{m1}]")),
        "served by the local replica, the client address is kept:\n{log}"
    );
    let err = lab.weft_err(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "dup",
            "--publish",
            "9090:80",
            "--",
            "true",
        ],
    );
    assert!(err.contains("already published by service ing"), "{err}");
    let err = lab.weft_err(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "rr",
            "--endpoint-mode",
            "dnsrr",
            "--publish",
            "9191:80",
            "--",
            "true",
        ],
    );
    assert!(err.contains("virtual IP"), "{err}");
    assert!(!lab.weft("m1", &["service", "ls"]).contains("dup"));
    // The routing mesh is on the subnet chosen at init, and stays there
    // while a service publishes through it.
    let ingress = lab.weft("m1", &["network", "inspect", "ingress"]);
    assert!(ingress.contains("10.77.0.0/24"), "{ingress}");
    let err = lab.weft_err(
        "m1",
        &["cluster", "update", "--ingress-subnet", "10.78.0.0/24"],
    );
    assert!(
        err.contains("service ing publishes ports through the ingress network"),
        "{err}"
    );
    assert!(
        lab.weft("m1", &["info"])
            .contains("Ingress subnet: 10.77.0.0/24")
    );
    // Once nothing publishes through it, it moves, and the routing mesh
    // comes back on the new subnet on every node (w2 and m1 forward to the
    // replica on w1 over it).
    lab.weft("m1", &["service", "rm", "ing"]);
    wait_for("ing's replica gone", T, || {
        !lab.weft("w1", &["ps", "-a"]).contains("ing.")
    });
    let out = lab.weft(
        "m1",
        &["cluster", "update", "--ingress-subnet", "10.78.0.0/24"],
    );
    assert!(out.contains("Ingress subnet: 10.78.0.0/24"), "{out}");
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "ing2",
            "--replicas",
            "1",
            "--constraint",
            "node.hostname==w1",
            "--publish",
            "published=9191,target=80",
            "--",
            "sh",
            "-c",
            &httpd("hello-moved", 80),
        ],
    );
    for node in [&w2, &m1, &w1] {
        wait_for(&format!("moved ingress via {node}"), T, || {
            get(&m1_ns, &format!("http://{node}:9191/")) == "hello-moved"
        });
    }
    let ingress = lab.weft("m1", &["network", "inspect", "ingress"]);
    assert!(
        ingress.contains("10.78.0.0/24") && !ingress.contains("10.77.0.0/24"),
        "{ingress}"
    );
}
