//! `weft run` as `docker run` (issue #14), end to end: a real daemon in a
//! namespace host with its own containerd, the busybox test image loaded
//! with `weft image load`. Attached runs stream stdout and stderr apart and
//! end with the task's exit code; `--rm` leaves nothing behind (checked in
//! `weft ps -a`, in containerd through `ctr`, and in the exec root);
//! `weft stop|start|restart|inspect` of standalone tasks; tasks of services
//! refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::containerd::PrivateContainerd;
use common::{Lab, wait_for};

const IMAGE: &str = "weft-test/busybox:latest";
const NS: &str = "weft";
const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// A one-node cluster with a private containerd and the test image loaded.
/// Fields drop in order: the daemon goes first, then its containerd.
struct Rig {
    lab: Lab,
    ctrd: PrivateContainerd,
}

impl Rig {
    fn new(test: &str) -> Rig {
        let ctrd = PrivateContainerd::start(&format!("{test}-m1"));
        let mut lab = Lab::new(test, &["m1"]);
        lab.start_on_containerd("m1", &ctrd);
        lab.init("m1", &["--heartbeat-period", "500ms"]);
        let images = common::image::busybox();
        lab.weft(
            "m1",
            &["image", "load", "-i", images.docker.to_str().unwrap()],
        );
        Rig { lab, ctrd }
    }

    /// `weft ARGS` on m1 as a child process (stdout and stderr piped).
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(WEFT)
            .arg("-H")
            .arg(format!("unix://{}", self.lab.socket_path("m1").display()))
            .args(args)
            .env_remove("WEFT_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weft")
    }

    /// Containers in weft's namespace, as containerd says.
    fn containers(&self) -> Vec<String> {
        self.ctrd
            .ctr_ok(NS, &["containers", "ls", "-q"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The `weft ps -a` row of task `what` (ID prefix or name), if listed.
    fn row(&self, what: &str) -> Option<String> {
        self.lab
            .weft("m1", &["ps", "-a"])
            .lines()
            .skip(1)
            .find(|l| {
                let mut f = l.split_whitespace();
                let (id, name) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                id.starts_with(what) || name == what
            })
            .map(str::to_owned)
    }

    fn inspect(&self, what: &str) -> serde_json::Value {
        let out = self.lab.weft("m1", &["inspect", what]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
        v[0].clone()
    }
}

/// Paths under `dir` whose name contains `id`.
fn leftovers(dir: &Path, id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(id) {
                out.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    out
}

/// The entries of the containers' task directories under the exec root.
fn task_dirs(lab: &Lab) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(lab.host_dir("m1").join("run").join("containers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn weft_run_streams_output_and_ends_with_the_exit_code() {
    let rig = Rig::new("run-attach");
    let lab = &rig.lab;

    // stdout to stdout, stderr to stderr, the task's exit code.
    let out = lab.try_weft(
        "m1",
        &[
            "run",
            "--name",
            "three",
            IMAGE,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert!(rig.row("three").unwrap().contains("exited (3)"));

    // Many lines at once from the start: none lost.
    let out = lab.try_weft("m1", &["run", IMAGE, "sh", "-c", "seq 1 2000"]);
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = (1..=2000).map(|n| n.to_string()).collect();
    assert_eq!(lines, want);

    // Killed by SIGKILL from outside: 128 + 9.
    let child = rig.spawn(&["run", "--name", "victim", IMAGE, "sleep", "1000"]);
    wait_for("victim runs", Duration::from_secs(30), || {
        rig.row("victim").is_some_and(|r| r.contains("running"))
    });
    let id = rig.row("victim").unwrap();
    let id = id.split_whitespace().next().unwrap();
    rig.ctrd
        .ctr_ok(NS, &["tasks", "kill", "--signal", "SIGKILL", id]);
    let out = child.wait_with_output().expect("wait weft run");
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM to an attached `weft run`: the task is stopped gracefully
    // (its stop signal, here trapped), the CLI ends with its code.
    let child = rig.spawn(&[
        "run",
        "--name",
        "trapper",
        IMAGE,
        "sh",
        "-c",
        "trap 'echo bye; exit 7' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    wait_for("trapper is ready", Duration::from_secs(30), || {
        rig.row("trapper").is_some_and(|r| r.contains("running"))
            && lab.logs("m1", "trapper").contains("ready")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal weft run");
    let out = child.wait_with_output().expect("wait weft run");
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\nbye\n");

    // A command the image does not have: Docker's 127.
    let out = lab.try_weft("m1", &["run", IMAGE, "no-such-command"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A host process (`-- CMD`) is attached the same way.
    let out = lab.try_weft(
        "m1",
        &["run", "--", "sh", "-c", "echo host; echo oops >&2; exit 5"],
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "host\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // weft itself cannot run it (a malformed image reference, a bad flag
    // value): Docker's 125, a clear error, and nothing is created.
    let before = lab.weft("m1", &["ps", "-a"]);
    let out = lab.try_weft("m1", &["run", "Not/A:Valid:Ref", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Not/A:Valid:Ref"), "{err}");
    let out = lab.try_weft("m1", &["run", "--limit-memory", "lots", IMAGE, "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(lab.weft("m1", &["ps", "-a"]), before);

    // `--rm`: nothing left once it returns.
    let before = lab.weft("m1", &["ps", "-a"]);
    let containers_before = rig.containers();
    let dirs_before = task_dirs(lab);
    let out = lab.try_weft(
        "m1",
        &[
            "run", "--rm", "--name", "gone", IMAGE, "sh", "-c", "echo hi",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(
        lab.weft("m1", &["ps", "-a"]),
        before,
        "ps -a shows no new task"
    );
    assert_eq!(rig.containers(), containers_before, "no new container");
    assert_eq!(task_dirs(lab), dirs_before, "no new task directory");

    // An attached `--rm` whose CLI dies: the task runs to its end and is
    // removed all the same.
    let mut child = rig.spawn(&["run", "--rm", "--name", "orphan", IMAGE, "sleep", "2"]);
    wait_for("orphan runs", Duration::from_secs(30), || {
        rig.row("orphan").is_some_and(|r| r.contains("running"))
    });
    child.kill().expect("kill weft run");
    let _ = child.wait();
    assert!(rig.row("orphan").unwrap().contains("running"));
    wait_for("the orphan is removed", Duration::from_secs(30), || {
        rig.row("orphan").is_none() && rig.containers() == containers_before
    });

    // `-d --rm`: the ID at once, and removed once it has ended.
    let id = lab.weft("m1", &["run", "-d", "--rm", IMAGE, "sleep", "1"]);
    let id = id.trim();
    assert_eq!(id.len(), 16, "{id:?}");
    wait_for(
        "the -d --rm task is removed",
        Duration::from_secs(30),
        || {
            rig.row(id).is_none()
                && !rig.containers().iter().any(|c| c == id)
                && leftovers(&lab.host_dir("m1").join("run"), id).is_empty()
        },
    );
    assert_eq!(lab.weft("m1", &["ps", "-a"]), before);
    assert_eq!(rig.containers(), containers_before);
    assert_eq!(task_dirs(lab), dirs_before);
}

#[test]
fn stop_start_restart_and_inspect_of_standalone_tasks() {
    let rig = Rig::new("run-life");
    let lab = &rig.lab;
    // `sleep` as PID 1 ignores SIGTERM: stop ends it with SIGKILL after
    // the grace period given.
    let id = lab.run_task("m1", &["--name", "napper", IMAGE, "sleep", "1000"]);
    let ip_before = rig.inspect("napper")["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!ip_before.is_empty());
    let running = rig.inspect("napper");
    assert_eq!(running["Id"], id.as_str());
    assert_eq!(running["Name"], "/napper");
    assert_eq!(running["State"]["Status"], "running");
    assert_eq!(running["State"]["Running"], true);
    assert_eq!(running["Config"]["Image"], IMAGE);
    assert_eq!(running["Config"]["Cmd"][0], "sleep");
    let row = rig.row("napper").unwrap();
    assert!(row.contains(&ip_before), "{row} has {ip_before}");

    let t = Instant::now();
    assert_eq!(
        lab.weft("m1", &["stop", "-t", "1", "napper"]).trim(),
        "napper"
    );
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let row = rig.row("napper").expect("a stopped task stays listed");
    assert!(row.contains("exited (137)"), "{row}");
    let stopped = rig.inspect("napper");
    assert_eq!(stopped["State"]["Status"], "exited");
    assert_eq!(stopped["State"]["ExitCode"], 137);
    assert_eq!(stopped["State"]["Running"], false);
    assert_ne!(stopped["State"]["FinishedAt"], "0001-01-01T00:00:00Z");
    // Stopped stays stopped (nobody restarts a standalone task).
    std::thread::sleep(Duration::from_secs(2));
    assert!(rig.row("napper").unwrap().contains("exited"));

    // start: running again, same address.
    let t = Instant::now();
    assert_eq!(lab.weft("m1", &["start", "napper"]).trim(), "napper");
    // The node's loop is woken for it (not left to its periodic check).
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "weft start took {took:?}");
    let row = rig.row("napper").unwrap();
    assert!(row.contains("running"), "{row}");
    let again = rig.inspect("napper");
    assert_eq!(again["State"]["Running"], true);
    assert_eq!(again["NetworkSettings"]["IPAddress"], ip_before.as_str());
    assert!(rig.containers().contains(&id));

    // restart: a new start time.
    let started = again["State"]["StartedAt"].clone();
    lab.weft("m1", &["restart", "-t", "0", "napper"]);
    let restarted = rig.inspect("napper");
    assert_eq!(restarted["State"]["Running"], true);
    assert_ne!(restarted["State"]["StartedAt"], started);

    // Tasks of services are refused, pointing at `weft service scale`.
    lab.weft(
        "m1",
        &[
            "service", "create", "--detach", "--name", "svc", IMAGE, "sleep", "1000",
        ],
    );
    wait_for("the service's task runs", Duration::from_secs(30), || {
        rig.row("svc.1").is_some_and(|r| r.contains("running"))
            || lab
                .weft("m1", &["ps"])
                .lines()
                .any(|l| l.contains("svc.") && l.contains("running"))
    });
    let svc_task = lab
        .weft("m1", &["ps"])
        .lines()
        .find(|l| l.contains("svc."))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap();
    for verb in ["stop", "start", "restart"] {
        let err = lab.weft_err("m1", &[verb, &svc_task]);
        assert!(
            err.contains("belongs to service \"svc\"") && err.contains("weft service scale"),
            "{verb}: {err}"
        );
    }
    assert!(rig.row(&svc_task).unwrap().contains("running"));

    // Bad input: unknown tasks, a bad -t; nothing changes.
    let before = lab.weft("m1", &["ps", "-a"]);
    for verb in ["stop", "start", "restart", "inspect"] {
        let err = lab.weft_err("m1", &[verb, "nosuch"]);
        assert!(
            err.contains("no task \"nosuch\" on this node"),
            "{verb}: {err}"
        );
    }
    for bad in ["abc", "1.5", "3601", "10s"] {
        let err = lab.weft_err("m1", &["stop", "-t", bad, "napper"]);
        assert!(err.contains("whole number of seconds"), "{bad}: {err}");
    }
    assert_eq!(lab.weft("m1", &["ps", "-a"]), before);
    assert!(rig.row("napper").unwrap().contains("running"));
}
