//! The bad-input catalogue: inputs an operator or a node can get wrong, each
//! sent through the real CLI to real daemons — to a manager's control API,
//! to a worker's daemon and through it to the dispatcher, or refused by the
//! CLI itself — and each checked twice: the error says what is wrong, and
//! the cluster is exactly as it was (a digest of what the operator can see,
//! taken before and after every single input).

mod common;

use std::time::Duration;

use common::{Lab, wait_for};

/// What the cluster holds, as `weft` shows it on the manager and the worker.
fn digest(lab: &Lab) -> String {
    let mut d = String::new();
    for (host, args) in [
        ("m1", &["node", "ls"][..]),
        ("m1", &["node", "inspect", "m1", "w1"]),
        ("m1", &["network", "ls"]),
        ("m1", &["service", "ls"]),
        ("m1", &["service", "inspect", "web"]),
        ("m1", &["join-token", "-q", "worker"]),
        ("m1", &["join-token", "-q", "manager"]),
        ("w1", &["network", "ls"]),
        ("w1", &["ps", "-a"]),
    ] {
        d.push_str(&lab.weft(host, args));
    }
    // Cluster settings, without Raft's moving indexes.
    d.extend(
        lab.weft("m1", &["info"])
            .lines()
            .filter(|l| !l.contains(" index: ") && !l.trim_start().starts_with("Term:"))
            .map(|l| format!("{l}\n")),
    );
    d
}

#[test]
fn forty_bad_inputs_are_refused_clearly_and_change_nothing() {
    let mut lab = Lab::new("badcat", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &[]);
    lab.join("w1", &wt, "m1");
    wait_for(
        "both nodes ready with bridges",
        Duration::from_secs(30),
        || {
            let rows = lab.node_ls("m1");
            rows.len() == 2
                && rows.iter().all(|r| r.status == "Ready")
                && lab.weft("w1", &["network", "ls"]).contains("bridge")
        },
    );
    lab.attachable_network("m1", "10.0.9.0/24", "appnet");
    common::sleeping_service(&lab, "m1", "web", "appnet");
    let task = lab.run_task("w1", &["--name", "t1", "--", "sleep", "600"]);
    wait_for("the tasks run", Duration::from_secs(30), || {
        lab.weft("m1", &["service", "ls"]).contains("1/1") && lab.weft("w1", &["ps"]).contains("t1")
    });
    let many_env: Vec<String> = (0..257)
        .flat_map(|i| ["-e".into(), format!("V{i}=x")])
        .collect();
    let mut run_many_env = vec!["run".to_string()];
    run_many_env.extend(many_env.iter().cloned());
    run_many_env.extend(["--".into(), "true".into()]);

    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        // The control API on the manager.
        (
            "m1",
            w(&[
                "service",
                "create",
                "--name",
                "big",
                "--replicas",
                "100000000",
                "--",
                "true",
            ]),
            "10000",
        ),
        (
            "m1",
            w(&["service", "create", "--name", "bad/name", "--", "true"]),
            "invalid",
        ),
        (
            "m1",
            w(&["service", "create", "--name", "web", "--", "true"]),
            "already exists",
        ),
        (
            "m1",
            w(&[
                "service",
                "create",
                "--name",
                "x",
                "--network",
                "nosuch",
                "--",
                "true",
            ]),
            "not found",
        ),
        (
            "m1",
            w(&["service", "create", "--name", "x", "-e", "=v", "--", "true"]),
            "invalid --env",
        ),
        (
            "m1",
            w(&[
                "service",
                "create",
                "--name",
                "x",
                "--publish",
                "published=70000,target=80",
                "--",
                "true",
            ]),
            "port",
        ),
        ("m1", w(&["service", "scale", "web=100000000"]), "10000"),
        ("m1", w(&["service", "scale", "nosuch=2"]), "not found"),
        ("m1", w(&["service", "rm", "nosuch"]), "not found"),
        (
            "m1",
            w(&["service", "update", "--replicas", "2", "nosuch"]),
            "not found",
        ),
        (
            "m1",
            w(&["network", "create", "--subnet", "10.0.9.0/33", "x"]),
            "invalid subnet",
        ),
        (
            "m1",
            w(&["network", "create", "--subnet", "10.0.9.1/24", "x"]),
            "host bits",
        ),
        (
            "m1",
            w(&["network", "create", "--subnet", "10.0.9.128/25", "x"]),
            "overlaps",
        ),
        ("m1", w(&["network", "create", "appnet"]), "already exists"),
        ("m1", w(&["network", "create", "--mtu", "100", "x"]), "MTU"),
        (
            "m1",
            w(&["network", "create", "-o", "nosuchopt", "x"]),
            "unknown network option",
        ),
        (
            "m1",
            w(&["network", "create", "bad/name"]),
            "invalid network name",
        ),
        ("m1", w(&["network", "rm", "nosuch"]), "not found"),
        ("m1", w(&["network", "rm", "appnet"]), "in use"),
        (
            "m1",
            w(&["node", "update", "--label-add", "=v", "w1"]),
            "label",
        ),
        (
            "m1",
            w(&["node", "update", "--label-rm", "nope", "w1"]),
            "no label",
        ),
        (
            "m1",
            w(&["node", "update", "--availability", "active", "nosuch"]),
            "no such node",
        ),
        ("m1", w(&["node", "rm", "w1"]), "--force"),
        ("m1", w(&["node", "rm", "--force", "m1"]), "demote"),
        ("m1", w(&["node", "demote", "m1"]), "last manager"),
        ("m1", w(&["node", "promote", "nosuch"]), "no such node"),
        (
            "m1",
            w(&["cluster", "update", "--cert-expiry", "1000000h"]),
            "--cert-expiry",
        ),
        (
            "m1",
            w(&["cluster", "update", "--cert-expiry", "1s"]),
            "--cert-expiry",
        ),
        (
            "m1",
            w(&["cluster", "update", "--wg-key-rotation", "400d"]),
            "--wg-key-rotation",
        ),
        (
            "m1",
            w(&["cluster", "update", "--ingress-subnet", "10.0.0.0/33"]),
            "ingress",
        ),
        (
            "m1",
            w(&["init", "--advertise-addr", "198.18.0.1"]),
            "already part of a cluster",
        ),
        // The worker's daemon, and through it the dispatcher.
        (
            "w1",
            w(&["run", "--network", "nosuch", "--", "true"]),
            "not found",
        ),
        (
            "w1",
            w(&[
                "run",
                "--network",
                "host",
                "--network",
                "appnet",
                "--",
                "true",
            ]),
            "cannot be combined",
        ),
        (
            "w1",
            w(&["run", "--name", "bad name", "--", "true"]),
            "invalid task name",
        ),
        (
            "w1",
            w(&[
                "run",
                "--network",
                "appnet",
                "--ip",
                "10.0.8.1",
                "--",
                "true",
            ]),
            "10.0.8.1",
        ),
        ("w1", run_many_env, "256"),
        ("w1", w(&["run", "-p", "70000:80", "--", "true"]), "port"),
        (
            "w1",
            w(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                "10.1.0.0/33",
                "x",
            ]),
            "invalid bridge subnet",
        ),
        ("w1", w(&["network", "rm", "bridge"]), "built-in"),
        (
            "w1",
            w(&["network", "connect", "nosuch", &task]),
            "not found",
        ),
        ("w1", w(&["rm", "nosuch"]), "no task"),
        ("w1", w(&["logs", "nosuch"]), "no task"),
        (
            "w1",
            w(&["service", "create", "--name", "x", "--", "true"]),
            "not a manager",
        ),
        (
            "w1",
            w(&["join", "--token", &wt, "198.18.0.1:4377"]),
            "already",
        ),
        // Refused by the CLI before anything is sent.
        (
            "m1",
            w(&["node", "update", "--availability", "bogus", "w1"]),
            "bogus",
        ),
        ("m1", w(&["join-token", "bogus"]), "bogus"),
        (
            "m1",
            w(&["cluster", "update", "--cert-expiry", "10x"]),
            "invalid duration",
        ),
    ];
    let mut tried = 0;
    let mut wrong = Vec::new();
    for (host, args, want) in &cases {
        let before = digest(&lab);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lab.try_weft(host, &a);
        let err = String::from_utf8_lossy(&out.stderr);
        let shown: String = a.join(" ").chars().take(80).collect();
        if out.status.success() {
            wrong.push(format!("{host}: weft {shown} succeeded"));
        } else if !err.contains(want) {
            wrong.push(format!(
                "{host}: weft {shown}: expected {want:?} in: {}",
                err.trim()
            ));
        }
        if digest(&lab) != before {
            wrong.push(format!("{host}: weft {shown} changed the cluster"));
        }
        tried += 1;
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(tried >= 40);
    eprintln!(
        "bad-input catalogue: {tried} inputs refused with a clear error, cluster unchanged after each"
    );
}

/// Owned words.
fn w(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}
