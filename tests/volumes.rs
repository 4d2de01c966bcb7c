//! `weft volume create|ls|inspect|rm|prune` end to end: real daemons in
//! namespace hosts (the tasks' on a private containerd, with the busybox
//! test image), the real CLI, and the node's volume directory under its
//! data dir as the independent view of what exists.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::containerd::PrivateContainerd;
use common::{Lab, wait_for};

const IMAGE: &str = "weft-test/busybox:latest";

/// The volume directories on `host`'s disk (hidden entries left out).
fn on_disk(lab: &Lab, host: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(lab.data_dir(host).join("volumes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn data_dir(lab: &Lab, host: &str, name: &str) -> PathBuf {
    lab.data_dir(host).join("volumes").join(name).join("_data")
}

fn ls(lab: &Lab, args: &[&str]) -> Vec<String> {
    let mut full = vec!["volume", "ls", "-q"];
    full.extend_from_slice(args);
    lab.weft("h1", &full).lines().map(str::to_owned).collect()
}

/// Bad names, labels, options, drivers, filters and templates: each
/// refused with a message that says what is wrong.
fn bad_input_is_refused(lab: &Lab) {
    for (args, want) in [
        (&["volume", "create", "../x"][..], "invalid volume name"),
        (&["volume", "create", "a/b"][..], "invalid volume name"),
        (&["volume", "create", "_x"][..], "invalid volume name"),
        (
            &["volume", "create", &"v".repeat(65)][..],
            "invalid volume name",
        ),
        (
            &["volume", "create", "--opt", "type=tmpfs", "vol-t"][..],
            "not supported",
        ),
        (
            &["volume", "create", "--label", "=x", "vol-l"][..],
            "key=value",
        ),
        (
            &["volume", "create", "--driver", "nfs", "vol-n"][..],
            "not supported",
        ),
        (
            &["volume", "ls", "--filter", "colour=red"][..],
            "invalid filter",
        ),
        (
            &["volume", "ls", "--filter", "dangling=maybe"][..],
            "invalid filter",
        ),
        (
            &["volume", "ls", "--format", "{{.Nope}}"][..],
            "no field .Nope",
        ),
        (
            &["volume", "prune", "-f", "--filter", "name=x"][..],
            "invalid filter",
        ),
        (&["volume", "inspect", "nosuch"][..], "no such volume"),
        (&["volume", "inspect", "../etc"][..], "invalid volume name"),
        (&["volume", "rm", "nosuch"][..], "no such volume"),
        (&["volume", "rm", "../vol-db"][..], "invalid volume name"),
    ] {
        let err = lab.weft_err("h1", args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let too_many: Vec<String> = (0..33).map(|i| format!("name={i}")).collect();
    let mut args = vec!["volume", "ls"];
    for f in &too_many {
        args.extend(["--filter", f.as_str()]);
    }
    assert!(lab.weft_err("h1", &args).contains("too many filters"));
}

/// Everything but tasks, on a node that is in no cluster (volumes are the
/// node's own): create with labels, ls (filters, --format), inspect in
/// Docker's shape, idempotent create and its conflict, rm and prune, and
/// bad input refused with nothing changed.
#[test]
fn volumes_are_created_listed_inspected_removed_and_bad_input_changes_nothing() {
    let mut lab = Lab::new("vol-cli", &["h1"]);
    lab.start("h1");

    let out = lab.weft(
        "h1",
        &[
            "volume", "create", "--label", "env=prod", "--label", "team=a", "vol-db",
        ],
    );
    assert_eq!(out.trim(), "vol-db");
    lab.weft("h1", &["volume", "create", "vol-cache"]);
    let anon = lab.weft("h1", &["volume", "create"]).trim().to_owned();
    assert!(
        anon.len() == 64 && anon.chars().all(|c| c.is_ascii_hexdigit()),
        "a generated name: {anon:?}"
    );
    let mut all = vec!["vol-cache".to_owned(), "vol-db".to_owned(), anon.clone()];
    all.sort();
    assert_eq!(on_disk(&lab, "h1"), all);
    assert_eq!(ls(&lab, &[]), all);
    let table = lab.weft("h1", &["volume", "ls"]);
    assert!(table.starts_with("DRIVER"), "{table}");
    assert!(table.contains("local     vol-db"), "{table}");

    let templated = lab.weft(
        "h1",
        &[
            "volume",
            "inspect",
            "-f",
            "{{.Name}} {{.Label \"env\"}}",
            "vol-db",
        ],
    );
    assert_eq!(templated, "vol-db prod\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&lab.weft("h1", &["volume", "inspect", "vol-db"])).expect("json");
    let v = &inspect[0];
    assert_eq!(v["Name"], "vol-db");
    assert_eq!(v["Driver"], "local");
    assert_eq!(v["Scope"], "local");
    assert_eq!(v["Labels"]["env"], "prod");
    assert_eq!(v["Labels"]["team"], "a");
    assert!(v["Options"].is_null(), "{v}");
    assert_eq!(
        v["Mountpoint"],
        data_dir(&lab, "h1", "vol-db").display().to_string()
    );
    let created = v["CreatedAt"].as_str().expect("CreatedAt");
    assert!(created.len() == 20 && created.ends_with('Z'), "{created}");
    assert!(data_dir(&lab, "h1", "vol-db").is_dir());

    // Filters and --format.
    assert_eq!(ls(&lab, &["--filter", "label=env=prod"]), ["vol-db"]);
    assert_eq!(ls(&lab, &["--filter", "label=team"]), ["vol-db"]);
    assert_eq!(
        ls(&lab, &["-f", "name=l-cache", "-f", "name=l-db"]),
        ["vol-cache", "vol-db"]
    );
    assert_eq!(ls(&lab, &["--filter", "dangling=true"]), all);
    assert!(ls(&lab, &["--filter", "dangling=false"]).is_empty());
    let formatted = lab.weft(
        "h1",
        &[
            "volume",
            "ls",
            "-f",
            "name=vol-db",
            "--format",
            "{{.Name}}:{{.Label \"env\"}}",
        ],
    );
    assert_eq!(formatted.trim(), "vol-db:prod");

    // Create again: the same (or no) labels succeed; others conflict.
    lab.weft("h1", &["volume", "create", "vol-db"]);
    lab.weft(
        "h1",
        &[
            "volume", "create", "--label", "team=a", "--label", "env=prod", "vol-db",
        ],
    );
    let err = lab.weft_err("h1", &["volume", "create", "--label", "env=dev", "vol-db"]);
    assert!(err.contains("already exists with other labels"), "{err}");

    // Bad input: refused, nothing changed.
    bad_input_is_refused(&lab);
    assert_eq!(on_disk(&lab, "h1"), all, "nothing changed");
    assert!(
        lab.weft("h1", &["volume", "inspect", "vol-db"])
            .contains("\"env\": \"prod\"")
    );

    // rm -f of a missing volume is fine; rm removes.
    lab.weft("h1", &["volume", "rm", "-f", "nosuch"]);
    assert_eq!(lab.weft("h1", &["volume", "rm", &anon]).trim(), anon);
    assert_eq!(on_disk(&lab, "h1"), ["vol-cache", "vol-db"]);

    // Prune with a label filter takes only the matching unused volumes,
    // and says what it freed.
    std::fs::write(data_dir(&lab, "h1", "vol-cache").join("f"), vec![7u8; 5000]).expect("write");
    let out = lab.weft(
        "h1",
        &["volume", "prune", "-f", "--filter", "label!=env=prod"],
    );
    assert_eq!(
        out, "Deleted Volumes:\nvol-cache\n\nTotal reclaimed space: 5kB\n",
        "{out}"
    );
    assert_eq!(on_disk(&lab, "h1"), ["vol-db"]);
    let out = lab.weft("h1", &["volume", "prune", "-f"]);
    assert!(out.contains("Deleted Volumes:\nvol-db\n"), "{out}");
    assert!(on_disk(&lab, "h1").is_empty());
    let out = lab.weft("h1", &["volume", "prune", "-f"]);
    assert_eq!(out, "Total reclaimed space: 0B\n");
}

/// Volumes with tasks on containerd: made by a task's --mount (listed with
/// a CreatedAt), data kept from one task to the next, never removed
/// (`rm`, `rm -f`, `prune`) while a task holds it — running or exited with
/// its container kept, standalone or a service's, across a daemon restart —
/// and removable once the tasks are gone.
#[test]
fn a_volume_keeps_data_between_tasks_and_is_never_removed_while_a_task_holds_it() {
    let ctrd = PrivateContainerd::start("vol-tasks-h1");
    let mut lab = Lab::new("vol-tasks", &["h1"]);
    lab.start_on_containerd("h1", &ctrd);
    lab.init("h1", &["--heartbeat-period", "500ms"]);
    let images = common::image::busybox();
    lab.weft(
        "h1",
        &["image", "load", "-i", images.docker.to_str().unwrap()],
    );
    lab.weft(
        "h1",
        &["volume", "create", "--label", "spare=yes", "vol-spare"],
    );

    // A task makes the volume and writes to it, then exits; its container
    // stays until `weft rm`.
    let mount = "type=volume,source=vol-data,target=/data";
    let writer = lab.run_task(
        "h1",
        &[
            "--name",
            "vol-writer",
            "--mount",
            mount,
            IMAGE,
            "sh",
            "-c",
            "echo kept-across-tasks > /data/f",
        ],
    );
    wait_for("the writer to exit", Duration::from_secs(30), || {
        lab.weft("h1", &["ps", "-a"])
            .lines()
            .any(|l| l.starts_with(&writer[..12]) && l.contains("exited"))
    });
    assert_eq!(ls(&lab, &[]), ["vol-data", "vol-spare"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&lab.weft("h1", &["volume", "inspect", "vol-data"])).expect("json");
    let created = inspect[0]["CreatedAt"].as_str().expect("CreatedAt");
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    assert!(inspect[0]["Labels"].is_null(), "{inspect}");
    assert_eq!(ls(&lab, &["--filter", "dangling=false"]), ["vol-data"]);

    // Held by the exited task: refused, with -f too, and by prune.
    for args in [
        &["volume", "rm", "vol-data"][..],
        &["volume", "rm", "-f", "vol-data"][..],
    ] {
        let err = lab.weft_err("h1", args);
        assert!(
            err.contains("volume is in use") && err.contains(&writer[..12]),
            "{args:?}: {err}"
        );
    }
    // The claim is on disk: a restarted daemon (the task's container
    // adopted, not started again) still refuses.
    lab.sigterm("h1");
    lab.start_on_containerd("h1", &ctrd);
    let err = lab.weft_err("h1", &["volume", "rm", "vol-data"]);
    assert!(err.contains("volume is in use"), "after a restart: {err}");
    let out = lab.weft("h1", &["volume", "prune", "-f"]);
    assert!(out.contains("Deleted Volumes:\nvol-spare\n"), "{out}");
    assert!(!out.contains("vol-data"), "{out}");
    let file = data_dir(&lab, "h1", "vol-data").join("f");
    assert_eq!(
        std::fs::read_to_string(&file).expect("the data is still there"),
        "kept-across-tasks\n"
    );

    // The writer removed, a new task reads what it wrote and keeps running.
    lab.weft("h1", &["rm", &writer]);
    let reader = lab.run_task(
        "h1",
        &[
            "--name",
            "vol-reader",
            "--mount",
            &format!("{mount},readonly"),
            IMAGE,
            "sh",
            "-c",
            "cat /data/f; exec sleep 600",
        ],
    );
    wait_for("the reader's output", Duration::from_secs(30), || {
        lab.logs("h1", "vol-reader").contains("kept-across-tasks")
    });
    let err = lab.weft_err("h1", &["volume", "rm", "-f", "vol-data"]);
    assert!(
        err.contains("volume is in use")
            && err.contains(&reader[..12])
            && !err.contains(&writer[..12]),
        "{err}"
    );
    assert!(file.is_file(), "nothing changed");

    // Once no task holds it, it goes.
    lab.weft("h1", &["rm", "-f", &reader]);
    wait_for("the volume to be free", Duration::from_secs(30), || {
        lab.try_weft("h1", &["volume", "rm", "vol-data"])
            .status
            .success()
    });
    assert!(on_disk(&lab, "h1").is_empty());
    assert!(ls(&lab, &[]).is_empty());

    // A service's task makes and holds its volume the same way.
    lab.weft(
        "h1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "vol-svc",
            "--mount",
            "type=volume,source=vol-svc-data,target=/d",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    wait_for("the service's volume", Duration::from_secs(60), || {
        ls(&lab, &["--filter", "dangling=false"]) == ["vol-svc-data"]
    });
    let err = lab.weft_err("h1", &["volume", "rm", "vol-svc-data"]);
    assert!(err.contains("volume is in use"), "{err}");
    let out = lab.weft("h1", &["volume", "prune", "-f"]);
    assert_eq!(out, "Total reclaimed space: 0B\n");
    lab.weft("h1", &["service", "rm", "vol-svc"]);
    wait_for(
        "the service's volume to be free",
        Duration::from_secs(60),
        || {
            lab.try_weft("h1", &["volume", "rm", "vol-svc-data"])
                .status
                .success()
        },
    );
    assert!(on_disk(&lab, "h1").is_empty());
}
