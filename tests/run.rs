//! `weft run` as `docker run` (issue #14), end to end: a real daemon in a
//! namespace host with its own containerd, the busybox test image loaded
//! with `weft image load`. Attached runs stream stdout and stderr apart and
//! end with the task's exit code; `--rm` leaves nothing behind (checked in
//! `weft ps -a`, in containerd through `ctr`, and in the exec root);
//! `weft stop|start|restart|inspect` of standalone tasks; tasks of services
//! refused; `weft exec` with its output, exit code, stdin, and a pty (the
//! CLI on a real pseudo-terminal), a killed client leaving no exec (seen
//! with `ctr tasks ps`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::pty::OnPty;
use common::{Lab, wait_for};

const IMAGE: &str = "weft-test/busybox:latest";
const NS: &str = "weft";

type Rig = common::one_node::OneNode;

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
    let child = rig.spawn(
        &["run", "--name", "victim", IMAGE, "sleep", "1000"],
        Stdio::null(),
    );
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
    let child = rig.spawn(
        &[
            "run",
            "--name",
            "trapper",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo bye; exit 7' TERM; echo ready; while true; do sleep 0.1; done",
        ],
        Stdio::null(),
    );
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
    let mut child = rig.spawn(
        &["run", "--rm", "--name", "orphan", IMAGE, "sleep", "2"],
        Stdio::null(),
    );
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
    // inspect --format, as `docker inspect -f`.
    let status = lab.weft("m1", &["inspect", "-f", "{{.State.Status}}", "napper"]);
    assert_eq!(status, "running\n");
    let err = lab.weft_err("m1", &["inspect", "-f", "{{.Nope}}", "napper"]);
    assert!(err.contains("no field .Nope"), "{err}");
}

/// `weft exec -it TASK sh -c SCRIPT` on a 24×80 terminal.
fn shell(rig: &Rig, task: &str, script: &str) -> OnPty {
    OnPty::spawn(
        &rig.lab.socket_path("m1"),
        &["exec", "-it", task, "sh", "-c", script],
        24,
        80,
    )
}

/// The PIDs containerd lists for a container (its process and its execs).
fn container_pids(rig: &Rig, id: &str) -> usize {
    rig.ctrd
        .ctr_ok(NS, &["tasks", "ps", id])
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Asserts how a `weft` child ended, showing its stderr if not so.
fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn weft_exec_runs_commands_in_a_running_container() {
    let rig = Rig::new("run-exec");
    let lab = &rig.lab;
    let id = lab.run_task("m1", &["--name", "box", IMAGE, "sleep", "1000"]);
    let fifos = lab
        .host_dir("m1")
        .join("run")
        .join("containers")
        .join(&id)
        .join("exec");
    let no_fifos = || leftovers(&fifos, "weft-exec").is_empty();

    // Output streamed, stdout and stderr apart, the command's exit code.
    let out = lab.try_weft(
        "m1",
        &["exec", "box", "sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_exit(&out, 7);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert!(no_fifos(), "{:?}", leftovers(&fifos, "weft-exec"));

    // By ID prefix too; many lines, none lost.
    let out = lab.try_weft("m1", &["exec", &id[..6], "seq", "1", "3000"]);
    assert_exit(&out, 0);
    let want: String = (1..=3000).map(|n| format!("{n}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);

    // -i: stdin forwarded, EOF closes it (a large input does not stall
    // the output either).
    let out = rig.piped(&["exec", "-i", "box", "cat"], b"hi\n");
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let big: Vec<u8> = (0..400_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = rig.piped(&["exec", "-i", "box", "busybox", "wc", "-c"], &big);
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "400000");
    let out = rig.piped(&["exec", "-i", "box", "cat"], &big);
    assert_eq!(out.stdout, big, "cat gives back all it read");
    // Without -i the command's stdin is empty.
    let out = rig.piped(&["exec", "box", "cat"], b"unseen\n");
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");

    // -e, -w, -u.
    let out = lab.weft(
        "m1",
        &[
            "exec",
            "-e",
            "FOO=bar baz",
            "-w",
            "/tmp",
            "-u",
            "1000:1001",
            "box",
            "sh",
            "-c",
            "echo \"$FOO\" $(pwd) $(id -u):$(id -g)",
        ],
    );
    assert_eq!(out, "bar baz /tmp 1000:1001\n");
    let out = lab.weft("m1", &["exec", "-u", "nobody", "box", "id", "-un"]);
    assert_eq!(out, "nobody\n");

    // -t: a pseudo-terminal of the client's size.
    let pty = OnPty::spawn(
        &rig.lab.socket_path("m1"),
        &["exec", "-t", "box", "busybox", "tty"],
        30,
        100,
    );
    let (code, text) = pty.finish();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("/dev/pts/"), "{text:?}");
    let pty = OnPty::spawn(
        &rig.lab.socket_path("m1"),
        &["exec", "-t", "box", "busybox", "stty", "size"],
        30,
        100,
    );
    let (code, text) = pty.finish();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.trim(), "30 100");
    // -it: typed keys reach the command; ^D ends it.
    let pty = shell(&rig, "box", "echo ready; cat; echo done");
    pty.wait_text("ready");
    pty.type_in(b"hello\r");
    wait_for("hello echoed and catted", Duration::from_secs(30), || {
        pty.text().matches("hello").count() >= 2
    });
    pty.type_in(b"\x04");
    let (code, text) = pty.finish();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("done"), "{text:?}");
    // A resize of the client's terminal (SIGWINCH) reaches the command's.
    // (A key typed right after the resize may overtake it: the script
    // prints the size on each key until the new one shows.)
    let pty = shell(
        &rig,
        "box",
        "busybox stty size; while read x; do busybox stty size; done",
    );
    pty.wait_text("24 80");
    pty.resize_until_shown(40, 120);
    pty.type_in(b"\x04");
    let (code, text) = pty.finish();
    assert_eq!(code, Some(0), "{text}");
    assert!(no_fifos(), "{:?}", leftovers(&fifos, "weft-exec"));

    // Docker's 127 and 126.
    let out = lab.try_weft("m1", &["exec", "box", "no-such-command"]);
    assert_exit(&out, 127);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-command"));
    let out = lab.try_weft("m1", &["exec", "box", "/etc/passwd"]);
    assert_exit(&out, 126);

    // A client killed mid-exec leaves no exec behind, and the task still
    // stops at once (an exec left in the shim made it take 20 s).
    assert_eq!(container_pids(&rig, &id), 1);
    let mut child = rig.spawn(&["exec", "box", "sleep", "1000"], Stdio::null());
    wait_for("the exec runs", Duration::from_secs(30), || {
        container_pids(&rig, &id) == 2
    });
    child.kill().expect("kill weft exec");
    let _ = child.wait();
    wait_for("the exec is gone", Duration::from_secs(15), || {
        container_pids(&rig, &id) == 1 && no_fifos()
    });

    // Also when it was sending more stdin than the command reads.
    let mut child = rig.spawn(&["exec", "-i", "box", "sleep", "1000"], Stdio::piped());
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![b'x'; 64 * 1024];
        while stdin.write_all(&chunk).is_ok() {}
    });
    wait_for("the exec runs", Duration::from_secs(30), || {
        container_pids(&rig, &id) == 2
    });
    child.kill().expect("kill weft exec");
    let _ = child.wait();
    feeder.join().expect("feeder");
    wait_for("the exec is gone", Duration::from_secs(15), || {
        container_pids(&rig, &id) == 1 && no_fifos()
    });

    // Bad input: clear errors, non-zero exits, nothing changed.
    let host = lab.run_task("m1", &["--name", "hostproc", "--", "sleep", "1000"]);
    let before = lab.weft("m1", &["ps", "-a"]);
    let err = lab.weft_err("m1", &["exec", "nosuch", "true"]);
    assert!(err.contains("no task \"nosuch\" on this node"), "{err}");
    let err = lab.weft_err("m1", &["exec", "-e", "=x", "box", "true"]);
    assert!(err.contains("NAME=VALUE"), "{err}");
    let err = lab.weft_err("m1", &["exec", "-w", "tmp", "box", "true"]);
    assert!(err.contains("absolute"), "{err}");
    let err = lab.weft_err("m1", &["exec", "-u", "nosuchuser", "box", "true"]);
    assert!(err.contains("unable to find user nosuchuser"), "{err}");
    let err = lab.weft_err("m1", &["exec", &host, "true"]);
    assert!(err.contains("host process"), "{err}");
    // (`weft run -i/-t`: tests/interactive_run.rs.)
    assert_eq!(lab.weft("m1", &["ps", "-a"]), before);
    assert_eq!(container_pids(&rig, &id), 1);

    let t = Instant::now();
    lab.weft("m1", &["stop", "-t", "1", "box"]);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(6), "stop took {took:?}");
    let err = lab.weft_err("m1", &["exec", "box", "true"]);
    assert!(err.contains("is not running"), "{err}");
    assert!(no_fifos(), "{:?}", leftovers(&fifos, "weft-exec"));
}
