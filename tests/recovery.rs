//! Recovery from the loss of a majority of managers, end to end (`weft
//! init --force-new-cluster`, issue #13): real daemons, two of three
//! managers killed for good, the survivor made a cluster of its own with
//! all state kept, the lost managers removed and a fresh manager joined.

mod common;

use std::time::Duration;

use common::{Lab, wait_for};

/// The running tasks of `service` on `host`'s view: (task, node) pairs.
fn running_tasks(lab: &Lab, host: &str, service: &str) -> Vec<String> {
    let mut tasks: Vec<String> = lab
        .weft(host, &["service", "ps", service])
        .lines()
        .skip(1)
        .filter(|l| l.contains(" running "))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    tasks.sort();
    tasks
}

/// What both managers of the recovered cluster must agree on: w1's labels,
/// the cluster's networks (not the node-local ones), services and tasks.
type Kept = (serde_json::Value, String, String, Vec<String>);

/// [`Kept`] as `host` sees it.
fn state_of(lab: &Lab, host: &str) -> Kept {
    let w1: serde_json::Value =
        serde_json::from_str(&lab.weft(host, &["node", "inspect", "w1"])).expect("json");
    let networks = lab.weft(host, &["network", "ls"]);
    (
        w1[0]["Labels"].clone(),
        networks
            .lines()
            .filter(|l| l.contains(" swarm "))
            .collect::<Vec<_>>()
            .join("\n"),
        lab.weft(host, &["service", "ls"]),
        running_tasks(lab, host, "web"),
    )
}

#[test]
fn survivor_of_three_managers_forms_a_new_cluster_with_all_state() {
    let mut lab = Lab::new("forcenew", &["m1", "m2", "m3", "w1", "m4"]);
    let before = form(&mut lab);
    refuse_while_quorum(&lab);
    let lost = lose_two_and_force(&mut lab);
    survivor_keeps_all(&lab, &before);
    replace_the_lost(&lab, &lost, &before);
}

/// Three managers and a worker, with state to keep: a label, a network, a
/// service and its tasks; returns that state as m3 sees it.
fn form(lab: &mut Lab) -> Kept {
    lab.start_all();
    let (wt, mt) = lab.init("m1", &[]);
    lab.join("m2", &mt, "m1");
    lab.join("m3", &mt, "m1");
    lab.join("w1", &wt, "m1");
    wait_for("every node ready", Duration::from_secs(30), || {
        let rows = lab.node_ls("m1");
        rows.len() == 4 && rows.iter().all(|r| r.status == "Ready")
    });

    // State to keep: a label, a network, a service and its tasks.
    lab.weft("m1", &["node", "update", "--label-add", "zone=a", "w1"]);
    lab.weft(
        "m1",
        &["network", "create", "--driver", "overlay", "appnet"],
    );
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "--constraint",
            "node.role==worker",
            "--",
            "sleep",
            "3600",
        ],
    );
    wait_for("two web tasks running", Duration::from_secs(30), || {
        running_tasks(lab, "m3", "web").len() == 2
    });
    state_of(lab, "m3")
}

/// Refusals, each changing nothing: a node in no cluster, a worker, and a
/// manager of a cluster that has its quorum.
fn refuse_while_quorum(lab: &Lab) {
    let err = lab.weft_err("m4", &["init", "--force-new-cluster"]);
    assert!(err.contains("not part of a cluster"), "{err}");
    assert!(lab.weft("m4", &["info"]).contains("inactive"));
    let err = lab.weft_err("w1", &["init", "--force-new-cluster"]);
    assert!(err.contains("runs no manager"), "{err}");
    assert!(lab.weft("w1", &["info"]).contains("Role: worker"));
    let err = lab.weft_err("m3", &["init", "--force-new-cluster"]);
    assert!(
        err.contains("3 of 3 managers answer") && err.contains("working quorum"),
        "{err}"
    );
    let err = lab.weft_err(
        "m3",
        &[
            "init",
            "--force-new-cluster",
            "--advertise-addr",
            "198.18.0.9",
        ],
    );
    assert!(err.contains("cannot be used with"), "{err}");
    let rows = lab.node_ls("m3");
    assert_eq!(
        rows.iter().filter(|r| !r.manager.is_empty()).count(),
        3,
        "{rows:?}"
    );
    assert_eq!(rows.iter().filter(|r| r.manager == "Leader").count(), 1);
    lab.weft("m3", &["node", "update", "--label-add", "still=3", "w1"]);
}

/// Two of three managers are lost, so nothing can be changed, until the
/// survivor m3 forms a cluster of its own; returns the lost ones' IDs.
fn lose_two_and_force(lab: &mut Lab) -> Vec<String> {
    let lost: Vec<String> = ["m1", "m2"]
        .iter()
        .map(|h| {
            lab.node_ls("m3")
                .into_iter()
                .find(|r| r.hostname == *h)
                .expect("row")
                .id
        })
        .collect();
    lab.kill9("m1");
    lab.kill9("m2");
    let err = lab.weft_err("m3", &["node", "update", "--label-add", "lost=1", "w1"]);
    assert!(err.contains("quorum"), "{err}");

    let out = lab.weft("m3", &["init", "--force-new-cluster"]);
    assert!(out.contains("recovered"), "{out}");
    for id in &lost {
        assert!(
            out.contains(id.as_str()),
            "the lost managers are named: {out}"
        );
    }
    assert!(out.contains("weft node rm --force"), "{out}");
    lost
}

/// Writes work at once on the survivor, which leads with all state kept,
/// stays up, and whose worker's session carries new work.
fn survivor_keeps_all(lab: &Lab, before: &Kept) {
    lab.weft("m3", &["node", "update", "--label-add", "after=1", "w1"]);
    let rows = lab.node_ls("m3");
    let m3 = rows.iter().find(|r| r.hostname == "m3").expect("m3");
    assert_eq!(m3.manager, "Leader", "{rows:?}");
    let (labels, nets, services, tasks) = state_of(lab, "m3");
    assert_eq!(labels["zone"], "a", "{labels}");
    assert_eq!(labels["still"], "3", "{labels}");
    assert_eq!(labels["after"], "1", "{labels}");
    assert_eq!(nets, before.1);
    assert!(nets.contains("appnet"), "{nets}");
    assert_eq!(services, before.2);
    assert_eq!(tasks, before.3, "the same tasks run on");

    // It stays up: the lost managers are marked down by the new leader (by
    // then its membership loop has long dealt with them) and writes still
    // commit on this manager alone.
    wait_for("m1 and m2 shown down", Duration::from_secs(30), || {
        lab.node_ls("m3")
            .iter()
            .filter(|r| (r.hostname == "m1" || r.hostname == "m2") && r.status == "Down")
            .count()
            == 2
    });
    lab.weft("m3", &["node", "update", "--label-add", "later=1", "w1"]);

    // The worker is still Ready and its session carries new work.
    assert!(lab.node_ready("m3", "w1"));
    lab.weft(
        "m3",
        &[
            "service",
            "create",
            "--name",
            "after",
            "--constraint",
            "node.role==worker",
            "--",
            "sleep",
            "3600",
        ],
    );
    wait_for(
        "the new service runs on w1",
        Duration::from_secs(30),
        || lab.weft("w1", &["ps"]).contains("after"),
    );
}

/// The lost managers are demoted and removed from the new cluster, and a
/// fresh host joins it as a manager with a fresh token and the same state.
fn replace_the_lost(lab: &Lab, lost: &[String], before: &Kept) {
    let mut args = vec!["node", "demote"];
    args.extend(lost.iter().map(String::as_str));
    lab.weft("m3", &args);
    let mut args = vec!["node", "rm", "--force"];
    args.extend(lost.iter().map(String::as_str));
    lab.weft("m3", &args);
    let rows = lab.node_ls("m3");
    assert!(
        !rows
            .iter()
            .any(|r| r.hostname == "m1" || r.hostname == "m2"),
        "{rows:?}"
    );

    // A fresh host joins as a manager with a fresh token.
    lab.weft("m3", &["join-token", "--rotate", "manager"]);
    let mt = lab
        .weft("m3", &["join-token", "-q", "manager"])
        .trim()
        .to_string();
    assert!(lab.join("m4", &mt, "m3").contains("as a manager"));
    for m in ["m3", "m4"] {
        wait_for(
            &format!("two managers, one leader, on {m}"),
            Duration::from_secs(30),
            || {
                let rows = lab.node_ls(m);
                rows.iter().filter(|r| !r.manager.is_empty()).count() == 2
                    && rows.iter().filter(|r| r.manager == "Leader").count() == 1
                    && rows.iter().all(|r| r.status == "Ready")
            },
        );
    }
    lab.weft("m4", &["node", "update", "--label-add", "via=m4", "w1"]);
    wait_for(
        "both managers see the same state",
        Duration::from_secs(20),
        || {
            let (a, b) = (state_of(lab, "m3"), state_of(lab, "m4"));
            a == b && a.0["via"] == "m4"
        },
    );
    let (labels, nets, _, tasks) = state_of(lab, "m4");
    assert_eq!(labels["zone"], "a", "{labels}");
    assert!(nets.contains("appnet"), "{nets}");
    assert_eq!(tasks, before.3);
}
