//! Services end to end: replicas placed by the orchestrator, reached through
//! a VIP (nftables DNAT in each task namespace) and by name (the embedded
//! DNS resolver at 127.0.0.11), on real daemons in namespace hosts.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::{Lab, nsenter, resolve, wait_for};

/// m1 (manager, runs the client) and three workers for the replicas.
fn cluster(test: &str) -> Lab {
    let mut lab = Lab::new(test, &["m1", "w1", "w2", "w3"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    for w in ["w1", "w2", "w3"] {
        lab.join(w, &wt, "m1");
    }
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

/// A web service whose replicas answer with their own task name (every
/// task has its own /tmp).
/// The running task addresses of `service` on appnet, per the manager.
fn task_ips(lab: &Lab, service: &str) -> BTreeSet<String> {
    task_ips_on(lab, service, "appnet")
}

fn task_ips_on(lab: &Lab, service: &str, network: &str) -> BTreeSet<String> {
    common::service_task_ips(lab, service, network)
}

/// A client task on m1 (attachable network), sleeping, for probes.
fn client(lab: &Lab) -> PathBuf {
    common::sleeper(lab, "m1", "client", "appnet")
}

#[test]
fn vip_balances_over_replicas_on_three_hosts_and_dns_answers() {
    let lab = cluster("vip");
    common::create_web(&lab, "3", &[]);
    // Spread: one replica per worker.
    let ps = lab.weft("m1", &["service", "ps", "web"]);
    for w in ["w1", "w2", "w3"] {
        assert!(ps.contains(&format!(" {w} ")), "a replica on {w}: {ps}");
    }
    let pin = client(&lab);
    let vip = common::vip_of(&lab, "m1", "web");
    // `web` resolves to the VIP; `tasks.web` to exactly the running tasks.
    wait_for("web resolves to its VIP", Duration::from_secs(15), || {
        resolve(&pin, "web") == BTreeSet::from([vip.clone()])
    });
    wait_for(
        "tasks.web lists the running tasks",
        Duration::from_secs(15),
        || resolve(&pin, "tasks.web") == task_ips(&lab, "web"),
    );
    assert_eq!(task_ips(&lab, "web").len(), 3);
    // Many requests through http://web/ reach every replica.
    common::replicas_behind_vip(&pin, &vip, "web.", 3);
    // By name, from inside a real task (its /etc/resolv.conf points at 127.0.0.11).
    let probe = lab.run_task("m1", &[
        "--name", "probe", "--network", "appnet", "--",
        "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do timeout 3 busybox wget -qO- http://web/ && break; sleep 0.5; done",
    ]);
    wait_for(
        "a task reaches http://web/ by name",
        Duration::from_secs(20),
        || lab.logs("m1", &probe).contains("web."),
    );
    // A name on a network the client is not on is not answered.
    lab.weft(
        "m1",
        &["network", "create", "--subnet", "10.0.50.0/24", "hidden"],
    );
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "secret",
            "--network",
            "hidden",
            "--",
            "sleep",
            "3600",
        ],
    );
    wait_for("secret runs", Duration::from_secs(20), || {
        task_ips_on(&lab, "secret", "hidden").len() == 1
    });
    assert!(
        resolve(&pin, "secret").is_empty(),
        "names of other networks stay invisible"
    );
    assert!(resolve(&pin, "tasks.secret").is_empty());
}

#[test]
fn dnsrr_scaling_and_draining_update_every_node() {
    let lab = cluster("scale");
    common::create_web(&lab, "3", &[]);
    let pin = client(&lab);
    wait_for("3 tasks in DNS", Duration::from_secs(20), || {
        resolve(&pin, "tasks.web").len() == 3
    });
    lab.weft("m1", &["service", "scale", "web=6"]);
    wait_for("6 tasks in DNS", Duration::from_secs(20), || {
        resolve(&pin, "tasks.web") == task_ips(&lab, "web") && task_ips(&lab, "web").len() == 6
    });
    lab.weft("m1", &["service", "scale", "web=2"]);
    wait_for("2 tasks in DNS", Duration::from_secs(20), || {
        resolve(&pin, "tasks.web") == task_ips(&lab, "web") && task_ips(&lab, "web").len() == 2
    });
    // dnsrr: the service name itself resolves to the task addresses.
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "db",
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "appnet",
            "--",
            "sh",
            "-c",
            "echo hello-from-$(hostname); exec sleep 3600",
        ],
    );
    wait_for("db resolves to its tasks", Duration::from_secs(20), || {
        let ips = resolve(&pin, "db");
        ips.len() == 2 && ips == task_ips(&lab, "db")
    });
    // service logs collects every task's output from its node.
    let logs = lab.weft("m1", &["service", "logs", "db"]);
    assert_eq!(logs.matches("hello-from-db.").count(), 2, "{logs}");
    // Draining a node moves its tasks.
    lab.weft("m1", &["service", "scale", "web=3"]);
    lab.weft("m1", &["node", "update", "--availability", "drain", "w1"]);
    wait_for("no task left on w1", Duration::from_secs(20), || {
        let ps = lab.weft("m1", &["service", "ps", "web"]);
        !ps.contains(" w1 ") && ps.lines().filter(|l| l.contains(" running ")).count() == 3
    });
}

#[test]
fn a_killed_worker_s_tasks_are_rescheduled_and_leave_vip_and_dns() {
    let mut lab = cluster("failover");
    common::create_web(&lab, "3", &[]);
    let pin = client(&lab);
    wait_for("3 tasks in DNS", Duration::from_secs(20), || {
        resolve(&pin, "tasks.web").len() == 3
    });
    assert!(lab.weft("m1", &["service", "ps", "web"]).contains(" w2 "));
    let before = task_ips(&lab, "web");
    lab.kill9("w2");
    let took = wait_for(
        "w2's task leaves DNS and is replaced",
        Duration::from_secs(30),
        || {
            let ps = lab.weft("m1", &["service", "ps", "web"]);
            let now = task_ips(&lab, "web");
            !ps.contains(" w2 ") && now.len() == 3 && resolve(&pin, "tasks.web") == now
        },
    );
    eprintln!("failover converged after {took:?}");
    // The replacement does not get the address its predecessor released
    // (serial allocation): a client with a stale neighbour entry or flow
    // for it reaches nothing rather than another task.
    let after = task_ips(&lab, "web");
    assert_eq!(
        after.difference(&before).count(),
        1,
        "{before:?} → {after:?}"
    );
    assert_eq!(
        before.difference(&after).count(),
        1,
        "{before:?} → {after:?}"
    );
    // A client that talked to the released address gets no answer from
    // anything else there.
    let gone = before.difference(&after).next().expect("one address gone");
    let asked = nsenter(
        &pin,
        &[
            "timeout",
            "3",
            "busybox",
            "wget",
            "-qO-",
            &format!("http://{gone}/"),
        ],
    );
    assert!(
        !asked.status.success(),
        "{gone} answered after its task died: {}",
        String::from_utf8_lossy(&asked.stdout)
    );
    let ps = lab.weft("m1", &["service", "ps", "web"]);
    assert!(
        !ps.lines()
            .any(|l| l.contains(" w2 ") && l.contains(" running ")),
        "{ps}"
    );
}

#[test]
fn restarting_a_worker_daemon_keeps_tasks_without_duplicates() {
    let mut lab = cluster("wrestart");
    common::create_web(&lab, "3", &[]);
    let ids_before: BTreeSet<String> = lab
        .weft("m1", &["service", "ps", "web"])
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    lab.kill9("w1");
    lab.start("w1");
    wait_for("w1 ready", Duration::from_secs(15), || {
        lab.node_ready("m1", "w1")
    });
    let ps = lab.weft("m1", &["service", "ps", "web"]);
    let ids_after: BTreeSet<String> = ps
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(ids_before, ids_after, "same tasks after the restart: {ps}");
    let local = lab.weft("w1", &["ps", "-q"]);
    assert_eq!(local.lines().count(), 1, "one task on w1, not two: {local}");
}

#[test]
fn bad_service_input_is_refused_and_changes_nothing() {
    let lab = cluster("svcbad");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--network",
                "nosuch",
                "--",
                "sleep",
                "1",
            ],
            "not found",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--replicas",
                "-1",
                "--",
                "sleep",
                "1",
            ],
            "-1",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--replicas",
                "two",
                "--",
                "sleep",
                "1",
            ],
            "two",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--mode",
                "global",
                "--replicas",
                "2",
                "--",
                "sleep",
                "1",
            ],
            "global",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "x",
                "--constraint",
                "node.role=manager",
                "--",
                "sleep",
                "1",
            ],
            "invalid constraint",
        ),
        (
            &[
                "service", "create", "--name", "bad name", "--", "sleep", "1",
            ],
            "invalid service name",
        ),
        (
            &["service", "create", "--name", "x", "--"],
            "nothing to run",
        ),
    ];
    for (args, want) in cases {
        let err = lab.weft_err("m1", args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    lab.weft(
        "m1",
        &[
            "service", "create", "--detach", "--name", "g", "--mode", "global", "--", "sleep",
            "3600",
        ],
    );
    let err = lab.weft_err("m1", &["service", "scale", "g=3"]);
    assert!(err.contains("global"), "{err}");
    let err = lab.weft_err(
        "m1",
        &["service", "create", "--name", "g", "--", "sleep", "1"],
    );
    assert!(err.contains("already exists"), "{err}");
    let ls = lab.weft("m1", &["service", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 1, "{ls}");
}

/// libnftables cannot use a socket numbered 1024 or more (it aborts the
/// process, "bit out of range 0 - FD_SETSIZE on fd_set"), and a node with
/// some 150 tasks holds that many descriptors: with 1,100 descriptors held
/// from the start, the daemons still write every task namespace's VIP
/// table in process (the contexts live on a thread with a descriptor table
/// of its own), live on, and the VIP balances.
#[test]
fn a_daemon_past_1024_descriptors_still_writes_vip_tables() {
    let mut lab = Lab::new("fds", &["m1", "w1"]);
    lab.set_daemon_env("WEFT_TEST_HOLD_FDS", "1100");
    lab.set_daemon_env("WEFT_LOG", "info,weft_overlay::linux::libnft=trace");
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    lab.attachable_network("m1", "10.0.9.0/24", "appnet");
    common::create_web(&lab, "2", &[]);
    let pin = client(&lab);
    let vip = common::vip_of(&lab, "m1", "web");
    common::replicas_behind_vip(&pin, &vip, "web.", 2);
    for h in ["m1", "w1"] {
        assert!(
            lab.try_weft(h, &["info"]).status.success(),
            "{h}'s daemon is gone:\n{}",
            lab.log_tail(h)
        );
        let log = std::fs::read_to_string(lab.host_dir(h).join("daemon.log")).expect("log");
        let log = common::strip_ansi(&log);
        assert!(
            log.contains("in_process=true") && !log.contains("in_process=false"),
            "{h} did not write its VIP tables in process:\n{}",
            lab.log_tail(h)
        );
    }
}

#[test]
fn service_update_changes_what_create_set_and_rollback_goes_back() {
    let mut lab = Lab::new("rollback", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    lab.attachable_network("m1", "10.0.19.0/24", "appnet");
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "echo",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "--env",
            "V=one",
            "--label",
            "stage=one",
            "--",
            "sh",
            "-c",
            "echo v=$V; exec sleep 600",
        ],
    );
    let inspect = || inspect_service(&lab, "echo");
    let running = || running_tasks(&lab, "echo");
    // Never updated: nothing to go back to, and nothing changes.
    let err = lab.weft_err("m1", &["service", "rollback", "echo"]);
    assert!(err.contains("no previous spec"), "{err}");
    assert!(inspect()["PreviousSpec"].is_null());

    assert_eq!(inspect()["Version"]["Index"], 1);
    lab.weft("m1", &["service", "update", "--env-add", "V=two", "echo"]);
    let v = inspect();
    assert_eq!(
        v["Version"]["Index"], 2,
        "an update that replaces the tasks"
    );
    assert_eq!(v["Spec"]["Env"]["V"], "two");
    assert_eq!(v["PreviousSpec"]["Env"]["V"], "one");
    let before = running();
    assert_eq!(before.len(), 2);

    // Bad input: a rollback with another change is refused whole.
    let err = lab.weft_err(
        "m1",
        &[
            "service",
            "update",
            "--rollback",
            "--env-add",
            "W=1",
            "echo",
        ],
    );
    assert!(err.contains("takes no other change"), "{err}");
    assert_eq!(inspect()["Spec"]["Env"], v["Spec"]["Env"]);

    // Back to V=one: its tasks are replaced, and it waits for them.
    let out = lab.weft("m1", &["service", "rollback", "echo"]);
    assert!(
        out.contains("rollback: manually requested rollback"),
        "{out}"
    );
    let v = inspect();
    assert_eq!(v["Spec"]["Env"]["V"], "one");
    assert_eq!(v["PreviousSpec"]["Env"]["V"], "two");
    let after = running();
    assert_eq!(after.len(), 2);
    assert!(after.is_disjoint(&before), "{before:?} → {after:?}");
    let logs = lab.weft("m1", &["service", "logs", "echo"]);
    for t in &after {
        assert!(
            logs.lines()
                .any(|l| l.contains(t.as_str()) && l.ends_with("v=one")),
            "{t} says v=one:\n{logs}"
        );
    }

    // A second rollback undoes the first, as in Docker.
    lab.weft("m1", &["service", "update", "--rollback", "echo"]);
    assert_eq!(inspect()["Spec"]["Env"]["V"], "two");

    // The rest of what create set: the command, published ports, the
    // endpoint mode.
    lab.weft(
        "m1",
        &[
            "service",
            "update",
            "--args",
            "sh -c 'echo args=$V; exec sleep 600'",
            "echo",
        ],
    );
    let logs = lab.weft("m1", &["service", "logs", "echo"]);
    assert!(
        logs.lines().filter(|l| l.ends_with("args=two")).count() >= 2,
        "{logs}"
    );
    // No update under way now (the last one was waited for).
    service_labels(&lab);
    lab.weft(
        "m1",
        &[
            "service",
            "update",
            "-d",
            "--publish-add",
            "published=18080,target=80",
            "echo",
        ],
    );
    let v = inspect();
    assert_eq!(v["Spec"]["EndpointSpec"]["Ports"][0]["TargetPort"], 80);
    assert_eq!(v["Endpoint"]["Ports"][0]["PublishedPort"], 18080);
    lab.weft(
        "m1",
        &[
            "service",
            "update",
            "-d",
            "--publish-rm",
            "80",
            "--endpoint-mode",
            "dnsrr",
            "echo",
        ],
    );
    let v = inspect();
    assert_eq!(v["Spec"]["EndpointSpec"]["Ports"], serde_json::json!([]));
    assert_eq!(v["Spec"]["EndpointSpec"]["Mode"], "dnsrr");
    refused_updates_change_nothing(&lab, &v);

    update_policy_paces_the_update(&lab);
}

/// Service echo's labels: added, changed and removed by `service update`
/// without replacing a task, filtered on by `service ls`; bad ones refused.
fn service_labels(lab: &Lab) {
    let before = running_tasks(lab, "echo");
    lab.weft(
        "m1",
        &[
            "service",
            "update",
            "--label-add",
            "tier=web",
            "--label-add",
            "team=a",
            "echo",
        ],
    );
    assert_eq!(
        inspect_service(lab, "echo")["Spec"]["Labels"]["tier"],
        "web"
    );
    lab.weft("m1", &["service", "update", "--label-rm", "team", "echo"]);
    let v = inspect_service(lab, "echo");
    assert_eq!(
        v["Spec"]["Labels"],
        serde_json::json!({"stage": "one", "tier": "web"}),
        "create's label and update's"
    );
    assert_eq!(running_tasks(lab, "echo"), before, "labels replace no task");
    let ls = |f: &str| {
        lab.weft(
            "m1",
            &["service", "ls", "--filter", f, "--format", "{{.Name}}"],
        )
    };
    assert_eq!(ls("label=tier=web"), "echo\n");
    assert_eq!(ls("label=tier=db"), "");
    refused_updates(
        lab,
        &[
            (&["--label-rm", "nope"][..], "has no label \"nope\""),
            (&["--label-add", "=x"][..], "key=value"),
            (&["--label-add", "bad key=x"][..], "label"),
        ],
    );
    assert_eq!(
        inspect_service(lab, "echo")["Spec"]["Labels"],
        v["Spec"]["Labels"]
    );
}

/// `service update ARGS echo` is refused, saying `says`, for each case.
fn refused_updates(lab: &Lab, cases: &[(&[&str], &str)]) {
    for (args, says) in cases {
        let mut all = vec!["service", "update"];
        all.extend_from_slice(args);
        all.push("echo");
        let err = lab.weft_err("m1", &all);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Updates of service echo that are refused say why and change nothing
/// (`v`: its inspect before).
fn refused_updates_change_nothing(lab: &Lab, v: &serde_json::Value) {
    let inspect = || inspect_service(lab, "echo");
    refused_updates(
        lab,
        &[
            (
                &["--publish-rm", "81"][..],
                "publishes no port with target 81",
            ),
            (&["--args", "sh -c 'unclosed"][..], "a quote is not closed"),
            (&["--args", ""][..], "needs its command"),
            (&["--endpoint-mode", "rr"][..], "invalid value"),
        ],
    );
    assert_eq!(
        inspect()["Spec"],
        v["Spec"],
        "refused updates change nothing"
    );
}

/// `--update-delay` and `--update-parallelism` on service echo: checked,
/// and the delay is waited for between batches.
fn update_policy_paces_the_update(lab: &Lab) {
    let inspect = || inspect_service(lab, "echo");
    for (flag, value, says) in [
        ("--update-parallelism", "10001", "over the limit of 10000"),
        ("--update-delay", "25h", "over the limit of 24h"),
    ] {
        let err = lab.weft_err("m1", &["service", "update", flag, value, "echo"]);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    let t = std::time::Instant::now();
    lab.weft(
        "m1",
        &[
            "service",
            "update",
            "--update-delay",
            "2s",
            "--env-add",
            "V=three",
            "echo",
        ],
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "two replicas one at a time with 2 s between: {took:?}"
    );
    let v = inspect();
    assert_eq!(v["Spec"]["UpdateConfig"]["Parallelism"], 1);
    assert_eq!(v["Spec"]["UpdateConfig"]["Delay"], 2_000_000_000u64);
    lab.weft(
        "m1",
        &[
            "service",
            "update",
            "-d",
            "--update-parallelism",
            "0",
            "echo",
        ],
    );
    assert_eq!(inspect()["Spec"]["UpdateConfig"]["Parallelism"], 0);
}

/// `service inspect SVC` on m1.
fn inspect_service(lab: &Lab, svc: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["service", "inspect", svc])).unwrap();
    v[0].clone()
}

/// The IDs of `svc`'s tasks desired running.
fn running_tasks(lab: &Lab, svc: &str) -> BTreeSet<String> {
    let args = [
        "service",
        "ps",
        svc,
        "-q",
        "--filter",
        "desired-state=running",
    ];
    lab.weft("m1", &args).lines().map(str::to_owned).collect()
}

/// `weft events` of type task for service `svc` from the first entry.
fn task_events(lab: &Lab, svc: &str) -> Vec<serde_json::Value> {
    let args = [
        "events",
        "--since-index",
        "1",
        "--until",
        "0s",
        "--format",
        "json",
        "--filter",
        "type=task",
        "--filter",
    ];
    let filter = format!("service={svc}");
    let mut all = args.to_vec();
    all.push(&filter);
    lab.weft("m1", &all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// m1 and w1, and service roll (2 replicas of a host process), with what
/// its create printed.
fn roll_service(test: &str) -> (Lab, String) {
    let mut lab = Lab::new(test, &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    let out = lab.weft_full(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "roll",
            "--replicas",
            "2",
            "--",
            "sh",
            "-c",
            "exec sleep 600",
        ],
    );
    (lab, out)
}

/// The failure actions of a rolling update (rollback by itself, pause)
/// and per-task progress, on real daemons: tasks that fail their start are
/// seen by the orchestrator through their nodes' reports and the
/// replicated update status decides.
#[test]
fn failed_updates_roll_back_or_pause() {
    let (lab, out) = roll_service("updfail");
    assert!(out.contains("overall progress: 2 out of 2 tasks"), "{out}");
    assert!(
        out.contains("1/2: running") && out.contains("2/2: running"),
        "{out}"
    );
    let inspect = || inspect_service(&lab, "roll");
    let running = || running_tasks(&lab, "roll");
    let before = running();

    // Bad policy values are refused and change nothing.
    for (flag, value, says) in [
        (
            "--update-order",
            "sideways",
            "use stop-first or start-first",
        ),
        (
            "--update-failure-action",
            "explode",
            "use pause, continue or rollback",
        ),
        (
            "--rollback-failure-action",
            "rollback",
            "use pause or continue",
        ),
        ("--update-max-failure-ratio", "1.5", "from 0 to 1"),
        ("--update-max-failure-ratio", "NaN", "from 0 to 1"),
        ("--update-monitor", "25h", "over the limit of 24h"),
    ] {
        let err = lab.weft_err("m1", &["service", "update", flag, value, "roll"]);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    assert_eq!(inspect()["Version"]["Index"], 1);

    // A new command that fails its start (so the update never goes past
    // its first task), with failure action rollback:
    // the service goes back to the previous spec by itself, and the
    // command says so and fails.
    let err = lab.weft_err(
        "m1",
        &[
            "service",
            "update",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "2s",
            "--args",
            "/nonexistent/update-v2",
            "roll",
        ],
    );
    assert!(
        err.contains(
            "rollback: update rolled back due to failure or early termination of task roll."
        ),
        "{err}"
    );
    assert!(err.contains("service roll rolled back:"), "{err}");
    let v = inspect();
    assert_eq!(v["UpdateStatus"]["State"], "rollback_completed", "{v}");
    assert_eq!(
        v["Spec"]["Command"],
        serde_json::json!(["sh", "-c", "exec sleep 600"])
    );
    // The policy was part of the spec rolled back from.
    assert_eq!(v["Spec"]["UpdateConfig"]["FailureAction"], "pause");
    assert_eq!(
        v["PreviousSpec"]["UpdateConfig"]["FailureAction"],
        "rollback"
    );
    assert_eq!(
        v["PreviousSpec"]["UpdateConfig"]["Monitor"],
        2_000_000_000u64
    );
    let after = running();
    assert_eq!(after.len(), 2, "{after:?}");
    let kept = before.intersection(&after).count();
    assert_eq!(
        kept, 1,
        "only the first task was replaced: {before:?} → {after:?}"
    );

    // The default failure action pauses: the second task is not touched.
    let before = running();
    let err = lab.weft_err(
        "m1",
        &[
            "service",
            "update",
            "--update-failure-action",
            "pause",
            "--args",
            "/nonexistent/update-v3",
            "roll",
        ],
    );
    assert!(
        err.contains("service roll update paused: update paused due to failure"),
        "{err}"
    );
    let v = inspect();
    assert_eq!(v["UpdateStatus"]["State"], "paused", "{v}");
    assert!(
        v["UpdateStatus"]["Message"]
            .as_str()
            .unwrap()
            .contains("to resume it"),
        "{v}"
    );
    let still = running();
    assert_eq!(
        before.intersection(&still).count(),
        1,
        "one old task runs on, its replacement restarts: {before:?} → {still:?}"
    );
    // `service rollback` brings the old command back and completes.
    let out = lab.weft_full("m1", &["service", "rollback", "roll"]);
    assert!(out.contains("verify: service converged"), "{out}");
    let v = inspect();
    assert_eq!(v["UpdateStatus"]["State"], "rollback_completed", "{v}");
    assert_eq!(
        v["Spec"]["Command"],
        serde_json::json!(["sh", "-c", "exec sleep 600"])
    );
}

/// Start first: each replacement runs before the task it replaces is
/// removed (the task events say in which order).
#[test]
fn start_first_starts_the_replacement_before_the_old_task_stops() {
    let (lab, _) = roll_service("startfirst");
    let inspect = || inspect_service(&lab, "roll");
    let running = || running_tasks(&lab, "roll");
    let old = running();
    let out = lab.weft_full(
        "m1",
        &[
            "service",
            "update",
            "--update-order",
            "start-first",
            "--update-monitor",
            "1s",
            "--env-add",
            "V=2",
            "roll",
        ],
    );
    assert!(
        out.contains("verify: waiting 1 seconds to verify that tasks are stable"),
        "{out}"
    );
    assert_eq!(inspect()["UpdateStatus"]["State"], "completed");
    assert_eq!(inspect()["Spec"]["UpdateConfig"]["Order"], "start-first");
    let new = running();
    assert!(new.is_disjoint(&old), "{old:?} → {new:?}");
    let events = task_events(&lab, "roll");
    let index = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .find(|e| pred(e))
            .and_then(|e| e["Index"].as_u64())
            .unwrap_or_else(|| panic!("no such event in {events:#?}"))
    };
    let of = |set: &BTreeSet<String>, e: &serde_json::Value| {
        let id = e["Actor"]["ID"].as_str().unwrap_or_default();
        set.iter().any(|t| id.starts_with(t.as_str()))
    };
    let first_removed = index(&|e| e["Action"] == "remove" && of(&old, e));
    let first_running = index(&|e| e["Actor"]["Attributes"]["state"] == "running" && of(&new, e));
    assert!(
        first_running < first_removed,
        "a new task ran (entry {first_running}) before the first old one went (entry {first_removed})"
    );
}
