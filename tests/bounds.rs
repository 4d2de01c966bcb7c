//! Bounds end to end: a one-manager cluster refuses inputs over the limits
//! of `weft_manager::limits` through the real CLI, each with a message
//! naming the limit, and none of them changes the cluster.

mod common;

use std::time::Duration;

use common::{Lab, wait_for};

/// Owned arguments from words.
fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// `weft service create --name web FLAG V1 FLAG V2 ... -- sleep 1d`.
fn create_with(flag: &str, values: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut a = args(&["service", "create", "--name", "web"]);
    for v in values {
        a.push(flag.into());
        a.push(v);
    }
    a.extend(args(&["--", "sleep", "1d"]));
    a
}

#[test]
fn inputs_over_the_limits_are_refused_and_change_nothing() {
    let mut lab = Lab::new("bounds", &["m1"]);
    lab.start_all();
    lab.init("m1", &[]);
    // Settled: the node is ready and its daemon reported its default
    // bridge (both are writes of their own a moment after the init).
    wait_for("m1 ready with its bridge", Duration::from_secs(20), || {
        lab.node_ls("m1").iter().all(|r| r.status == "Ready")
            && lab.weft("m1", &["network", "ls"]).contains("bridge")
    });
    // A network to name in requests; everything after this is refused.
    lab.weft("m1", &["network", "create", "app"]);
    let state = |lab: &Lab| {
        [
            lab.weft("m1", &["service", "ls"]),
            lab.weft("m1", &["node", "inspect", "self"]),
            lab.weft("m1", &["network", "ls"]),
            lab.weft("m1", &["ps", "-a"]),
            lab.weft("m1", &["info"])
                .lines()
                .filter(|l| l.contains("expiry") || l.contains("rotation"))
                .collect::<Vec<_>>()
                .join("\n"),
        ]
    };
    let before = state(&lab);

    // Linux takes at most 128 KiB per argument (MAX_ARG_STRLEN), so a
    // 10 MB label cannot reach the CLI; 100 KiB is as over the limit.
    let big_label = format!("big={}", "v".repeat(100 * 1024));
    let mut network_create = args(&["network", "create"]);
    for i in 0..129 {
        network_create.extend(["--label".to_string(), format!("k{i}=v")]);
    }
    network_create.push("db".into());
    let mut long_command = args(&["service", "create", "--name", "web", "--", "sleep"]);
    long_command.extend(std::iter::repeat_n("1".to_string(), 1024));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            create_with("--replicas", ["100000000".into()]),
            "--replicas 100000000 is over the limit of 10000 replicas per service",
        ),
        (
            args(&["node", "update", "--label-add", &big_label, "self"]),
            "value of label \"big\": 102400 bytes is over the limit of 1024 bytes",
        ),
        (
            create_with("-e", (0..257).map(|i| format!("V{i}=x"))),
            "environment: 257 variables is over the limit of 256 variables",
        ),
        (
            args(&["cluster", "update", "--cert-expiry", "1000000h"]),
            "--cert-expiry 1000000h is over the limit of 3650d",
        ),
        (
            args(&["cluster", "update", "--wg-key-rotation", "400d"]),
            "--wg-key-rotation 400d is over the limit of 365d",
        ),
        (
            args(&[
                "service",
                "create",
                "--name",
                &"w".repeat(64),
                "--",
                "sleep",
                "1d",
            ]),
            "service name: 64 bytes is over the limit of 63 bytes",
        ),
        (
            network_create,
            "labels of network db: 129 labels is over the limit of 128 labels",
        ),
        (
            create_with(
                "--constraint",
                (0..33).map(|i| format!("node.labels.k{i}!=v")),
            ),
            "--constraint: 33 constraints is over the limit of 32 constraints",
        ),
        (
            create_with("-p", (0..65).map(|i| format!("{}:80", 8000 + i))),
            "--publish: 65 ports is over the limit of 64 ports",
        ),
        (
            long_command,
            "command: 1025 arguments is over the limit of 1024 arguments",
        ),
        (
            // `weft run` goes through the node's dispatcher session.
            args(&[
                "run",
                "--name",
                "t",
                "-e",
                &format!("K={}", "v".repeat(40_000)),
                "--",
                "sleep",
                "1d",
            ]),
            "value of environment variable K: 40000 bytes is over the limit of 32768 bytes",
        ),
        (
            // Within every per-object limit, but all of its replicas on one
            // node would make that node's config too large to send.
            // (With 1 KiB of environment per task: 10 MB for 10,000.)
            args(&[
                "service",
                "create",
                "--name",
                "web",
                "--replicas",
                "10000",
                "--network",
                "app",
                "-e",
                &format!("K={}", "v".repeat(1024)),
                "--",
                "sleep",
                "1d",
            ]),
            "over the limit of 6291456 bytes per node config",
        ),
    ];
    for (a, want) in &cases {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let err = lab.weft_err("m1", &a);
        let shown: Vec<String> = a.iter().map(|w| w.chars().take(40).collect()).collect();
        assert!(
            err.contains(want),
            "weft {shown:?}: want {want:?}, got {err:?}"
        );
    }

    let after = state(&lab);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a, b, "a refused request changed the cluster");
    }
    // The daemon is still fine after all of that.
    lab.weft("m1", &["info"]);
}
