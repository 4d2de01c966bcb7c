//! Cluster core, end to end: real daemons in network-namespace hosts, real
//! mTLS, real Raft on disk.

mod common;

use std::time::Duration;

use common::{Lab, Paused, wait_for};

const HOSTS: &[&str] = &["m1", "m2", "m3", "w1", "w2"];

/// init on m1, managers m2 m3, workers w1 w2.
fn five_node_cluster(test: &str, init_extra: &[&str]) -> Lab {
    let mut lab = Lab::new(test, HOSTS);
    lab.start_all();
    let (wt, mt) = lab.init("m1", init_extra);
    assert!(lab.join("m2", &mt, "m1").contains("as a manager"));
    assert!(lab.join("m3", &mt, "m2").contains("as a manager"));
    assert!(lab.join("w1", &wt, "m1").contains("as a worker"));
    assert!(lab.join("w2", &wt, "m3").contains("as a worker"));
    for m in ["m1", "m2", "m3"] {
        wait_for(
            &format!("every node ready on {m}"),
            Duration::from_secs(20),
            || {
                let rows = lab.node_ls(m);
                rows.len() == 5 && rows.iter().all(|r| r.status == "Ready")
            },
        );
    }
    common::wait_voters(&lab, "m1", &["m1", "m2", "m3"]);
    lab
}

fn leader_of(lab: &Lab, asking: &str) -> Option<String> {
    lab.node_ls(asking)
        .into_iter()
        .find(|r| r.manager == "Leader")
        .map(|r| r.hostname)
}

#[test]
fn three_managers_two_workers_form_a_cluster() {
    let lab = five_node_cluster("form", &[]);
    let mut ids = Vec::new();
    for m in ["m1", "m2", "m3"] {
        let rows = lab.node_ls(m);
        let managers: Vec<_> = rows.iter().filter(|r| !r.manager.is_empty()).collect();
        assert_eq!(managers.len(), 3, "{m}: {rows:?}");
        assert_eq!(
            rows.iter().filter(|r| r.manager == "Leader").count(),
            1,
            "{m}: {rows:?}"
        );
        assert!(rows.iter().any(|r| r.is_self && r.hostname == m));
        for w in ["w1", "w2"] {
            let row = rows.iter().find(|r| r.hostname == w).expect("worker row");
            assert_eq!(row.manager, "", "workers have no manager status");
        }
        let mut seen: Vec<_> = rows
            .iter()
            .map(|r| (r.hostname.clone(), r.id.clone()))
            .collect();
        seen.sort();
        ids.push(seen);
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "every manager agrees: {ids:?}"
    );

    // Workers are not managers: the control API is refused locally with a hint.
    let err = lab.weft_err("w1", &["node", "ls"]);
    assert!(err.contains("not a manager"), "{err}");
    let info = lab.weft("w1", &["info"]);
    assert!(info.contains("Role: worker"), "{info}");
    let info = lab.weft("m2", &["info"]);
    assert!(
        info.contains("Role: manager") && info.contains("Managers: 3"),
        "{info}"
    );

    // Every manager, followers included, reports the config version the
    // nodes applied (followers ask the leader, which holds the sessions).
    lab.weft("m1", &["network", "create", "--attachable", "appnet"]);
    lab.run_task("w1", &["--network", "appnet", "--", "sleep", "600"]);
    for m in ["m1", "m2", "m3"] {
        wait_for(
            &format!("{m} shows w1's applied config"),
            Duration::from_secs(15),
            || {
                let v: serde_json::Value =
                    serde_json::from_str(&lab.weft(m, &["network", "inspect", "-v", "appnet"]))
                        .unwrap();
                v[0]["Peers"]
                    .as_array()
                    .is_some_and(|p| p.len() == 1 && p[0]["AppliedVersion"].as_u64() > Some(0))
            },
        );
    }

    // Every node reports its version with its status: `node ls` on any
    // manager shows it, `weft version` shows the client's and the daemon's.
    let version = env!("CARGO_PKG_VERSION");
    wait_for("every node's version", Duration::from_secs(15), || {
        lab.node_ls("m2").iter().all(|r| r.version == version)
    });
    for host in ["m1", "w2"] {
        let out = lab.weft(host, &["version"]);
        assert_eq!(
            out.matches(&format!("Version:  {version}")).count(),
            2,
            "client and server on {host}: {out}"
        );
    }

    // `weft info`: the host, this node's tasks and, on a manager, the
    // cluster's, by state.
    wait_for("w1's info counts its task", Duration::from_secs(15), || {
        lab.weft("w1", &["info"])
            .contains("\nTasks: 1 (running 1)\n")
    });
    let info = lab.weft("w1", &["info"]);
    let kernel = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .unwrap();
    let kernel = String::from_utf8_lossy(&kernel.stdout);
    let cpus = std::thread::available_parallelism().unwrap().get();
    for line in [
        format!("Server Version: {version}"),
        format!("Kernel Version: {}", kernel.trim()),
        format!("CPUs: {cpus}"),
        format!("Architecture: {}", std::env::consts::ARCH),
    ] {
        assert!(info.contains(&line), "{line} in {info}");
    }
    let info = lab.weft("m2", &["info"]);
    assert!(info.contains("\nTasks: 0\n"), "m2 runs none: {info}");
    let info = lab.weft("m3", &["info"]);
    assert!(info.contains(" Cluster tasks: 1 (running 1)"), "{info}");
    let fields = "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.NCPU}}";
    assert_eq!(
        lab.weft("m1", &["info", "--format", fields]),
        format!("active true {cpus}\n")
    );
    assert_eq!(
        lab.weft("w1", &["info", "--format", fields]),
        format!("active false {cpus}\n")
    );
    let json: serde_json::Value =
        serde_json::from_str(&lab.weft("w1", &["info", "--format", "json"])).unwrap();
    assert_eq!(json["Tasks"]["running"], 1);
    assert_eq!(json["ServerVersion"], version);

    listings_filter_and_format(&lab);

    // `node ps`: a node's tasks, from any manager; `self` by default.
    let ps = lab.weft("m3", &["node", "ps", "w1"]);
    let rows: Vec<&str> = ps.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{ps}");
    assert!(
        rows[0].contains(" w1 ") && rows[0].contains("running"),
        "{ps}"
    );
    assert_eq!(
        lab.weft("m1", &["node", "ps"]).lines().count(),
        1,
        "m1 runs no task"
    );
    let out = lab.try_weft("m1", &["node", "ps", "w1", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "nothing printed when a node is unknown"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
}

#[test]
fn leader_killed_new_leader_and_writes_continue() {
    let mut lab = five_node_cluster("leaderkill", &[]);
    let old = leader_of(&lab, "m1").expect("a leader");
    let survivors: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != old)
        .collect();
    lab.kill9(&old);
    let took = wait_for("a new leader", Duration::from_secs(15), || {
        leader_of(&lab, survivors[0]).is_some_and(|l| l != old)
    });
    eprintln!("new leader after {took:?}");
    // Writes keep working, through either survivor (a follower forwards).
    for (i, m) in survivors.iter().enumerate() {
        let label = format!("zone=z{i}");
        lab.weft(m, &["node", "update", "--label-add", &label, "w1"]);
    }
    let inspect = lab.weft(survivors[0], &["node", "inspect", "w1"]);
    let json: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    assert_eq!(json[0]["Labels"]["zone"], "z1", "{inspect}");
    // The dead manager is shown unreachable once its heartbeats stop.
    wait_for("old leader shown down", Duration::from_secs(15), || {
        lab.node_ls(survivors[1])
            .iter()
            .any(|r| r.hostname == old && r.status == "Down" && r.manager == "Unreachable")
    });
}

#[test]
fn restart_every_daemon_keeps_ids_and_state() {
    let mut lab = five_node_cluster("restart", &[]);
    lab.weft("m1", &["node", "update", "--label-add", "disk=ssd", "w2"]);
    lab.weft("m1", &["node", "update", "--availability", "drain", "w1"]);
    let before: Vec<(String, String)> = lab
        .node_ls("m1")
        .into_iter()
        .map(|r| (r.hostname, r.id))
        .collect();
    for h in HOSTS {
        lab.kill9(h);
    }
    lab.start_all();
    wait_for(
        "cluster back after a full restart",
        Duration::from_secs(30),
        || {
            let rows = lab.node_ls("m2");
            rows.len() == 5
                && rows.iter().all(|r| r.status == "Ready")
                && rows.iter().filter(|r| r.manager == "Leader").count() == 1
        },
    );
    let after: Vec<(String, String)> = lab
        .node_ls("m3")
        .into_iter()
        .map(|r| (r.hostname, r.id))
        .collect();
    assert_eq!(before, after, "same node IDs after restart");
    let w2: serde_json::Value =
        serde_json::from_str(&lab.weft("m3", &["node", "inspect", "w2"])).expect("json");
    assert_eq!(w2[0]["Labels"]["disk"], "ssd");
    // Right after every manager restarted, no leader leads yet (a leader
    // restarted no longer leads its old term at once: see
    // `restart_as_follower`), and a read waits for the election before it
    // takes its read index (RELIABILITY.md, "What is checked"), or fails
    // UNAVAILABLE if none comes within the propose timeout: awaited.
    wait_for("m1 shows w1 drained", Duration::from_secs(15), || {
        lab.node_ls("m1")
            .iter()
            .any(|r| r.hostname == "w1" && r.availability == "Drain")
    });
    // And the cluster still takes writes.
    lab.weft("m3", &["node", "update", "--label-rm", "disk", "w2"]);
}

#[test]
fn killed_worker_is_marked_down_within_three_heartbeats() {
    let mut lab = Lab::new("workerdown", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    wait_for("w1 ready", Duration::from_secs(10), || {
        lab.node_ready("m1", "w1")
    });
    lab.kill9("w1");
    let took = wait_for("w1 down", Duration::from_secs(10), || {
        lab.node_ls("m1")
            .iter()
            .any(|r| r.hostname == "w1" && r.status == "Down")
    });
    eprintln!("worker marked down after {took:?} (heartbeat 500ms)");
    // Down means 3 missed heartbeats (1.5 s) after the last one, which came
    // at most one period (0.5 s) before the kill: never before 1 s.
    assert!(took >= Duration::from_millis(1000), "too early: {took:?}");
    // It comes back when restarted.
    lab.start("w1");
    wait_for("w1 ready again", Duration::from_secs(15), || {
        lab.node_ready("m1", "w1")
    });
}

/// With `--disconnect-grace`, a worker whose daemon dies (its connection
/// closes) is down once the grace has passed, before the three heartbeats
/// it misses could say so; one whose daemon stops on purpose (SIGTERM)
/// waits for its heartbeats as before; the setting changes at run time.
#[test]
fn a_dead_daemon_is_down_after_the_disconnect_grace_and_a_stopped_one_is_not() {
    let mut lab = Lab::new("disconnect", &["m1", "w1", "w2"]);
    lab.start_all();
    let (wt, _) = lab.init(
        "m1",
        &["--heartbeat-period", "1s", "--disconnect-grace", "300ms"],
    );
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    let status = |lab: &Lab, host: &str| lab.node_status("m1", host);
    wait_for("w1 and w2 ready", Duration::from_secs(15), || {
        status(&lab, "w1") == "Ready" && status(&lab, "w2") == "Ready"
    });
    let info = lab.weft("m1", &["info"]);
    assert!(info.contains("Disconnect grace: 300ms"), "{info}");
    // Bad values are refused and change nothing.
    let err = lab.weft_err("m1", &["cluster", "update", "--disconnect-grace", "10ms"]);
    assert!(err.contains("100ms to 60s"), "{err}");
    assert!(
        lab.weft("m1", &["info"])
            .contains("Disconnect grace: 300ms")
    );

    lab.kill9("w1");
    let took = wait_for("w1 down", Duration::from_secs(10), || {
        status(&lab, "w1") == "Down"
    });
    eprintln!("killed worker marked down after {took:?} (grace 300ms, heartbeat 1s)");
    // Missed heartbeats alone need 3 periods after the last one, which came
    // at most one period before the kill: never before 2 s.
    assert!(
        took < Duration::from_secs(2),
        "the grace did not act: {took:?}"
    );
    let inspect = lab.weft("m1", &["node", "inspect", "w1"]);
    assert!(inspect.contains("disconnect grace of 300ms"), "{inspect}");

    let took = lab.sigterm("w2");
    let down = wait_for("w2 down", Duration::from_secs(15), || {
        status(&lab, "w2") == "Down"
    }) + took;
    eprintln!("stopped worker marked down after {down:?}");
    assert!(
        down >= Duration::from_secs(2),
        "a stop was taken for a crash: {down:?}"
    );

    // Off at run time: a killed daemon waits for its heartbeats again.
    lab.start("w1");
    wait_for("w1 ready again", Duration::from_secs(15), || {
        status(&lab, "w1") == "Ready"
    });
    let out = lab.weft("m1", &["cluster", "update", "--disconnect-grace", "0s"]);
    assert!(out.contains("Disconnect grace: off"), "{out}");
    lab.kill9("w1");
    let took = wait_for("w1 down again", Duration::from_secs(10), || {
        status(&lab, "w1") == "Down"
    });
    assert!(
        took >= Duration::from_millis(1900),
        "grace still on: {took:?}"
    );
}

#[test]
fn promote_demote_remove_and_leave() {
    let mut lab = Lab::new("roles", &["m1", "n2", "n3"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &[]);
    lab.join("n2", &wt, "m1");
    lab.join("n3", &wt, "m1");
    // Demoting the only manager is refused and changes nothing.
    let err = lab.weft_err("m1", &["node", "demote", "m1"]);
    assert!(err.contains("last manager"), "{err}");
    // Unknown nodes are reported as such.
    let err = lab.weft_err("m1", &["node", "promote", "nosuchnode"]);
    assert!(err.contains("no such node"), "{err}");

    lab.weft("m1", &["node", "promote", "n2"]);
    // `node update --role` is the other way to say it, and on its own.
    let err = lab.weft_err(
        "m1",
        &[
            "node",
            "update",
            "--role",
            "manager",
            "--label-add",
            "a=b",
            "n3",
        ],
    );
    assert!(err.contains("cannot be used with"), "{err}");
    let out = lab.weft("m1", &["node", "update", "--role", "manager", "n3"]);
    assert!(out.contains("n3 promoted to a manager"), "{out}");
    for n in ["n2", "n3"] {
        wait_for(
            &format!("{n} a reachable manager"),
            Duration::from_secs(20),
            || {
                lab.node_ls("m1")
                    .iter()
                    .any(|r| r.hostname == n && r.manager == "Reachable")
            },
        );
        wait_for(
            &format!("{n} serves the control API"),
            Duration::from_secs(20),
            || lab.try_weft(n, &["node", "ls"]).status.success(),
        );
        // Until it is a voter, the cluster's quorum is the old one.
        common::wait_voters(&lab, "m1", &[n]);
    }
    // Three managers, one down: demoting a healthy one would lose quorum.
    lab.kill9("n3");
    wait_for("n3 down", Duration::from_secs(15), || {
        lab.node_ls("m1")
            .iter()
            .any(|r| r.hostname == "n3" && r.status == "Down")
    });
    let err = lab.weft_err("m1", &["node", "demote", "n2"]);
    assert!(err.contains("quorum") && err.contains("--force"), "{err}");
    assert!(
        lab.node_ls("m1")
            .iter()
            .any(|r| r.hostname == "n2" && r.manager == "Reachable"),
        "a refused demote changes nothing"
    );
    // Demoting the down one is safe; it learns its new role when it returns.
    lab.weft("m1", &["node", "update", "--role", "worker", "n3"]);
    lab.start("n3");
    wait_for("n3 a worker again", Duration::from_secs(20), || {
        lab.weft("n3", &["info"]).contains("Role: worker")
    });
    lab.weft("m1", &["node", "demote", "n2"]);
    wait_for("n2 a worker again", Duration::from_secs(20), || {
        lab.weft("n2", &["info"]).contains("Role: worker")
            && lab
                .node_ls("m1")
                .iter()
                .filter(|r| !r.manager.is_empty())
                .count()
                == 1
    });

    // rm of a node that is up needs --force.
    let err = lab.weft_err("m1", &["node", "rm", "n3"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(lab.node_ls("m1").len(), 3, "a refused rm changes nothing");
    // A manager cannot be removed without demoting it first.
    let err = lab.weft_err("m1", &["node", "rm", "--force", "m1"]);
    assert!(err.contains("demote"), "{err}");
    // leave removes the node from the cluster and its state from the host.
    lab.weft("n3", &["leave"]);
    assert!(lab.weft("n3", &["info"]).contains("inactive"));
    wait_for("n3 gone", Duration::from_secs(10), || {
        !lab.node_ls("m1").iter().any(|r| r.hostname == "n3")
    });
    lab.weft("m1", &["node", "rm", "--force", "n2"]);
    wait_for("n2 refused after rm", Duration::from_secs(10), || {
        lab.weft("n2", &["info"]).contains("removed")
    });
}

#[test]
fn bad_input_and_refused_credentials() {
    let mut lab = Lab::new("security", &["m1", "w1", "x1"]);
    lab.start_all();
    let (wt, mt) = lab.init("m1", &[]);
    let remote = format!("{}:4377", lab.addr("m1"));

    // init twice: refused.
    let err = lab.weft_err("m1", &["init", "--advertise-addr", &lab.addr("m1")]);
    assert!(err.contains("already part of a cluster"), "{err}");
    // init with bad input: refused, node stays inactive.
    let err = lab.weft_err("x1", &["init", "--advertise-addr", "not-an-ip"]);
    assert!(err.contains("invalid address"), "{err}");
    let err = lab.weft_err(
        "x1",
        &[
            "init",
            "--advertise-addr",
            &lab.addr("x1"),
            "--default-addr-pool",
            "10.0.0.0/33",
        ],
    );
    assert!(err.contains("default-addr-pool"), "{err}");
    assert!(lab.weft("x1", &["info"]).contains("inactive"));

    // Malformed token.
    let err = lab.weft_err("x1", &["join", "--token", "SWMTKN-1-abc", &remote]);
    assert!(err.contains("join-token"), "{err}");
    // A token of another cluster (wrong CA fingerprint): refused before it is sent.
    let parts: Vec<&str> = wt.split('-').collect();
    let other = format!("WEFT-1-{}-{}", "0".repeat(64), parts[3]);
    let err = lab.weft_err("x1", &["join", "--token", &other, &remote]);
    assert!(
        err.contains("fingerprint") && err.contains("not sent"),
        "{err}"
    );
    // Unreachable manager.
    let err = lab.weft_err("x1", &["join", "--token", &wt, "198.18.0.250:4377"]);
    assert!(err.contains("198.18.0.250"), "{err}");
    // A worker pointed at as if it were a manager (w1 has no manager port).
    lab.join("w1", &wt, "m1");
    let wremote = format!("{}:4377", lab.addr("w1"));
    let err = lab.weft_err("x1", &["join", "--token", &wt, &wremote]);
    assert!(!err.is_empty());
    assert!(lab.weft("x1", &["info"]).contains("inactive"));

    // Rotation: the old token stops admitting nodes; joined nodes are unaffected.
    let rotated = lab.weft("m1", &["join-token", "--rotate", "-q", "worker"]);
    assert_ne!(rotated.trim(), wt);
    let err = lab.weft_err("x1", &["join", "--token", &wt, &remote]);
    assert!(err.contains("rotated"), "{err}");
    assert!(lab.weft("x1", &["info"]).contains("inactive"));
    assert_eq!(lab.weft("m1", &["join-token", "-q", "manager"]).trim(), mt);
    wait_for("w1 still ready", Duration::from_secs(10), || {
        lab.node_ready("m1", "w1")
    });

    // `weft node ls` against m1's control API over TCP, from w1's namespace,
    // presenting the certificate of `whose` node (or none).
    let certs_of = |whose: Option<&str>| {
        let ca = lab.data_dir("w1").join("certs/ca.pem");
        let mut args: Vec<String> = vec![
            "-H".into(),
            format!("tcp://{remote}"),
            "--tlscacert".into(),
            ca.display().to_string(),
        ];
        if let Some(host) = whose {
            let certs = lab.data_dir(host).join("certs");
            args.extend([
                "--tlscert".into(),
                certs.join("node.pem").display().to_string(),
                "--tlskey".into(),
                certs.join("node-key.pem").display().to_string(),
            ]);
        }
        args.extend(["node".into(), "ls".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.weft_in_netns("w1", &args)
    };
    // A worker's certificate calling the control API: refused.
    let out = certs_of(Some("w1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("manager certificate"),
        "{err}"
    );
    // No client certificate: refused.
    let out = certs_of(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    // A manager's certificate over TCP works (the control API is reachable remotely).
    let out = certs_of(Some("m1"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `weft events --format json` running on `host`, its lines read by a
/// thread; killed when dropped.
struct EventStream {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl EventStream {
    fn start(lab: &Lab, host: &str) -> EventStream {
        use std::io::BufRead;
        let mut child = std::process::Command::new(common::WEFT)
            .arg("-H")
            .arg(format!("unix://{}", lab.socket_path(host).display()))
            .args(["events", "--format", "json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn weft events");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        EventStream {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads events until one satisfies `cond`.
    fn until(&mut self, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    let done = cond(&v);
                    self.seen.push(v);
                    if done {
                        return;
                    }
                }
                Err(e) => panic!("no event {what} ({e}); seen: {:#?}", self.seen),
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_event(v: &serde_json::Value, kind: &str, action: &str, name: &str) -> bool {
    v["Type"] == kind && v["Action"] == action && v["Actor"]["Attributes"]["name"] == name
}

/// `weft events --format json` on `host` from the entry `first` until now.
fn replay(lab: &Lab, host: &str, first: &str, filters: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![
        "events",
        "--since-index",
        first,
        "--until",
        "0s",
        "--format",
        "json",
    ];
    args.extend_from_slice(filters);
    lab.weft(host, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn events_stream_through_a_leader_change_and_resume_on_another_manager() {
    let mut lab = five_node_cluster("events", &[]);
    let old = leader_of(&lab, "m1").expect("a leader");
    let followers: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != old)
        .collect();
    let (watcher, other) = (followers[0], followers[1]);

    // A stream on a follower, from now: the first change it shows proves
    // it is live.
    let mut stream = EventStream::start(&lab, watcher);
    wait_for("the stream shows a change", Duration::from_secs(20), || {
        lab.weft(&old, &["node", "update", "--label-add", "probe=1", "w1"]);
        stream
            .lines
            .recv_timeout(Duration::from_millis(500))
            .map(|v| stream.seen.push(v))
            .is_ok()
    });
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    lab.weft(&old, &["network", "create", "--attachable", "before-net"]);
    stream.until("before-net created", |v| {
        is_event(v, "network", "create", "before-net")
    });
    let after_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let made = stream.seen.last().unwrap();
    let at = made["timeNano"].as_u64().unwrap() / 1_000_000;
    assert!(
        (before_ms..=after_ms).contains(&at),
        "the event's time is the entry's: {before_ms} ≤ {at} ≤ {after_ms}"
    );

    // The leader dies; the same stream goes on with the new leader's writes.
    lab.kill9(&old);
    wait_for("a new leader", Duration::from_secs(15), || {
        leader_of(&lab, other).is_some_and(|l| l != old)
    });
    lab.weft(other, &["network", "create", "--attachable", "after-net"]);
    lab.weft(other, &["network", "rm", "before-net"]);
    stream.until("before-net removed", |v| {
        is_event(v, "network", "remove", "before-net")
    });
    assert!(
        stream
            .seen
            .iter()
            .any(|v| is_event(v, "network", "create", "after-net"))
    );
    let indexes: Vec<u64> = stream
        .seen
        .iter()
        .map(|v| v["Index"].as_u64().unwrap())
        .collect();
    assert!(
        indexes.windows(2).all(|w| w[0] <= w[1]),
        "in index order: {indexes:?}"
    );
    let mut lines: Vec<String> = stream.seen.iter().map(|v| v.to_string()).collect();
    lines.sort();
    let all = lines.len();
    lines.dedup();
    assert_eq!(lines.len(), all, "no event twice");

    // On the other manager, from the first index the stream showed: the
    // same events, times included, none missed or repeated.
    let first = indexes[0].to_string();
    let resumed = replay(&lab, other, &first, &[]);
    let last = resumed.last().expect("events")["Index"].as_u64().unwrap();
    stream.until("the resumed stream's last entry", |v| {
        v["Index"].as_u64() >= Some(last)
    });
    let upto = |v: &&serde_json::Value| v["Index"].as_u64() <= Some(last);
    let watched: Vec<_> = stream.seen.iter().filter(upto).collect();
    let resumed: Vec<_> = resumed.iter().filter(upto).collect();
    assert_eq!(watched, resumed);

    // Filters: network creations only.
    let created = replay(
        &lab,
        other,
        &first,
        &["--filter", "type=network", "--filter", "event=create"],
    );
    let names: Vec<_> = created
        .iter()
        .map(|v| v["Actor"]["Attributes"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before-net", "after-net"]);
    let text = lab.weft(
        other,
        &[
            "events",
            "--since-index",
            &first,
            "--until",
            "0s",
            "--filter",
            "network=after-net",
        ],
    );
    assert!(
        text.lines().count() == 1
            && text.contains(" network create ")
            && text.contains("name=after-net"),
        "{text}"
    );

    // Bad input: a clear error; a worker has no store.
    let err = lab.weft_err(other, &["events", "--filter", "type=container"]);
    assert!(err.contains("expected one of"), "{err}");
    let err = lab.weft_err("w1", &["events"]);
    assert!(err.contains("not a manager"), "{err}");
}

/// `--filter`, `--format` and `-q` of the listings, as docker takes them.
fn listings_filter_and_format(lab: &Lab) {
    let lines = |out: String| out.lines().map(str::to_owned).collect::<Vec<_>>();
    let managers = lines(lab.weft(
        "m2",
        &[
            "node",
            "ls",
            "--filter",
            "role=manager",
            "--format",
            "{{.Hostname}}",
        ],
    ));
    assert_eq!(managers, ["m1", "m2", "m3"]);
    let ids = lines(lab.weft("m1", &["node", "ls", "-q", "--filter", "name=w1"]));
    assert_eq!(ids.len(), 1, "{ids:?}");
    let json = lines(lab.weft("m1", &["node", "ls", "--format", "json"]));
    assert_eq!(json.len(), 5);
    let first: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(first["Hostname"], "m1");
    assert_eq!(first["EngineVersion"], env!("CARGO_PKG_VERSION"));
    let table = lab.weft(
        "m1",
        &[
            "node",
            "ls",
            "--format",
            r"table {{.Hostname}}\t{{.ManagerStatus}}",
        ],
    );
    assert!(
        table.starts_with("HOSTNAME") && table.lines().next().unwrap().contains("MANAGER STATUS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("m1") && l.ends_with("Leader")),
        "{table}"
    );

    // Bad input: an error, and nothing printed.
    for (args, says) in [
        (
            &["node", "ls", "--format", "{{.Nope}}"][..],
            "no field .Nope",
        ),
        (&["node", "ls", "--filter", "nope=1"][..], "unknown filter"),
        (&["ps", "--format", "{{.ID"][..], "without its }}"),
    ] {
        let out = lab.try_weft("m1", args);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed something");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }

    let net = lab.weft(
        "m1",
        &[
            "network",
            "ls",
            "--filter",
            "name=appnet",
            "--format",
            "{{.Name}} {{.Attachable}}",
        ],
    );
    assert_eq!(net, "appnet true\n");
    let on_w1 = lab.weft(
        "m3",
        &[
            "node",
            "ps",
            "w1",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.DesiredState}}",
        ],
    );
    assert_eq!(on_w1, "w1 running\n");
    let local = lab.weft(
        "w1",
        &["ps", "--filter", "status=running", "--format", "{{.State}}"],
    );
    assert_eq!(local, "running\n");

    common::sleeping_replicas(lab, "m1", "sleepy", "appnet", 2);
    wait_for("sleepy runs 2/2", Duration::from_secs(20), || {
        lab.weft(
            "m2",
            &[
                "service",
                "ls",
                "--filter",
                "mode=replicated",
                "--format",
                "{{.Name}} {{.Replicas}}",
            ],
        ) == "sleepy 2/2\n"
    });
    // inspect --format: a template per object; Docker's Spec and Description.
    let node = lab.weft(
        "m1",
        &[
            "node",
            "inspect",
            "self",
            "--format",
            "{{.Spec.Role}} {{.Description.Engine.EngineVersion}}",
        ],
    );
    assert_eq!(node, format!("manager {}\n", env!("CARGO_PKG_VERSION")));
    let pretty = lab.weft("m1", &["node", "inspect", "w1", "--format", "pretty"]);
    assert!(pretty.contains("Hostname:       w1"), "{pretty}");
    let err = lab.weft_err("m1", &["node", "inspect", "self", "--format", "{{.Nope}}"]);
    assert!(err.contains("no field .Nope"), "{err}");
    assert_eq!(
        lab.weft(
            "m1",
            &["network", "inspect", "appnet", "--format", "{{.Name}}"]
        ),
        "appnet\n"
    );
    assert_eq!(
        lab.weft(
            "m1",
            &["service", "inspect", "sleepy", "--format", "{{.Spec.Name}}"]
        ),
        "sleepy\n"
    );
    let tasks = lines(lab.weft("m1", &["service", "ps", "sleepy", "-q"]));
    assert_eq!(tasks.len(), 2);
    let none = lab.weft(
        "m1",
        &[
            "service",
            "ps",
            "sleepy",
            "--filter",
            "desired-state=shutdown",
        ],
    );
    assert_eq!(none.lines().count(), 1, "only the header: {none}");
    lab.weft("m1", &["service", "rm", "sleepy"]);
}

/// Most nodes silent at once (their daemons frozen with SIGSTOP: no
/// connection closes, no heartbeat comes) is taken for a fault on the
/// leader's side: none is marked down and no task moves, for up to 30
/// heartbeat periods; after that they are. One silent node alone is
/// marked down after its 3 missed heartbeats, as before.
#[test]
fn most_nodes_silent_at_once_keep_their_tasks_until_the_hold_ends() {
    let mut lab = Lab::new("masssilence", &["m1", "w1", "w2", "w3"]);
    lab.start_all();
    // 200 ms periods: down after 0.6 s of silence, held for at most 6 s.
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "200ms"]);
    let workers = ["w1", "w2", "w3"];
    for w in workers {
        lab.join(w, &wt, "m1");
    }
    let status = |lab: &Lab, host: &str| lab.node_status("m1", host);
    let all = |lab: &Lab, want: &str| workers.iter().all(|w| status(lab, w) == want);
    wait_for("all ready", Duration::from_secs(20), || all(&lab, "Ready"));
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "idle",
            "--replicas",
            "4",
            "--",
            "sleep",
            "100000",
        ],
    );
    wait_for(
        "a task running on every node",
        Duration::from_secs(20),
        || {
            let mut on = lab.running_on("m1", "idle");
            on.sort();
            on == ["m1", "w1", "w2", "w3"]
        },
    );
    let tasks = |lab: &Lab| lab.weft("m1", &["service", "ps", "idle"]);
    let before = tasks(&lab);
    // Continued when dropped, also if the test fails.
    let freeze = |lab: &Lab, hosts: &[&str]| -> Vec<Paused> {
        hosts
            .iter()
            .map(|h| Paused::stop(lab.pid(h).expect("daemon running")))
            .collect()
    };

    // Three of four nodes silent for 3 s (5 deadlines): none goes down.
    let frozen = freeze(&lab, &workers);
    let since = std::time::Instant::now();
    while since.elapsed() < Duration::from_secs(3) {
        let rows = lab.node_ls("m1");
        assert!(
            rows.iter().all(|r| r.status == "Ready"),
            "a node marked down while most were silent: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(frozen);
    let log = || lab.daemon_log("m1");
    wait_for(
        "the hold reported and ended",
        Duration::from_secs(10),
        || {
            let l = log();
            l.contains("holding their down marks back") && l.contains("the hold ended")
        },
    );
    assert_eq!(tasks(&lab), before, "tasks moved");
    assert!(all(&lab, "Ready"));

    // Silent past the hold: a real mass failure, all marked down.
    let frozen = freeze(&lab, &workers);
    let took = wait_for("all down after the hold", Duration::from_secs(20), || {
        all(&lab, "Down")
    });
    eprintln!("3 of 4 nodes silent: marked down after {took:?} (hold 6 s)");
    assert!(
        took >= Duration::from_secs(5),
        "the hold ended early: {took:?}"
    );
    assert!(log().contains("still silent after the hold"));
    drop(frozen);
    wait_for("all ready again", Duration::from_secs(20), || {
        all(&lab, "Ready")
    });

    // One silent node alone: down after its missed heartbeats, no hold.
    let frozen = freeze(&lab, &["w1"]);
    let took = wait_for("w1 down", Duration::from_secs(10), || {
        status(&lab, "w1") == "Down"
    });
    drop(frozen);
    eprintln!("1 of 4 nodes silent: marked down after {took:?}");
    assert!(took < Duration::from_secs(4), "held: {took:?}");
}
