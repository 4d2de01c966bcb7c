//! Task logs end to end (issue #14, "binary logger with rotation" and
//! "streamed logs"): real daemons in namespace hosts, host-process tasks and
//! containers (a private containerd per host), read with `weft logs` and
//! `weft service logs`. The files on disk under the exec root are the
//! independent view of rotation.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::containerd::PrivateContainerd;
use common::{Lab, wait_for};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// `weft ARGS` on `host`: (stdout, stderr), failing the test on an error.
fn weft2(lab: &Lab, host: &str, args: &[&str]) -> (String, String) {
    let out = lab.try_weft(host, args);
    assert!(
        out.status.success(),
        "weft {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.log_tail(host)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `host` runs (or ran) task `id`.
fn wait_started(lab: &Lab, host: &str, id: &str) {
    wait_for(
        &format!("task {id} starts"),
        Duration::from_secs(30),
        || {
            let st = task_state(lab, host, id);
            st.contains("running") || st.contains("exited")
        },
    );
}

fn task_state(lab: &Lab, host: &str, id: &str) -> String {
    lab.weft(host, &["ps", "--all"])
        .lines()
        .find(|l| l.starts_with(&id[..12.min(id.len())]))
        .unwrap_or_default()
        .to_string()
}

/// The 10,000 lines of 1,000 bytes (10 MB) the big task prints: its number
/// zero-padded to 999 digits.
const BIG: &str = "i=0; while [ $i -lt 10000 ]; do printf '%0999d\\n' $i; i=$((i+1)); done";

fn check_big(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        10000,
        "all 10,000 lines, in {} bytes",
        out.len()
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.len(), 999, "line {i}");
        assert_eq!(
            l.trim_start_matches('0').parse::<usize>().unwrap_or(0),
            i,
            "line {i} in order"
        );
    }
}

/// A `weft` command on `host` started in the background.
fn spawn_weft(lab: &Lab, host: &str, args: &[&str]) -> std::process::Child {
    let socket = lab.socket_path(host);
    Command::new(WEFT)
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .env_remove("WEFT_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft")
}

/// Kills a follower once it printed something, and checks that the node's
/// reader of `task` ended (the daemon logs it) — no follower leaks.
fn follower_ends_when_killed(lab: &Lab, node: &str, via: &str, args: &[&str], task: &str) {
    let before = ended_readers(lab, node, task);
    let mut child = spawn_weft(lab, via, args);
    let mut out = child.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    out.read_exact(&mut first)
        .expect("the follower printed something");
    child.kill().expect("kill the follower");
    let _ = child.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ended_readers(lab, node, task) <= before {
        if std::time::Instant::now() > deadline {
            let log = daemon_log(lab, node);
            let readers: Vec<&str> = log.lines().filter(|l| l.contains("log reader")).collect();
            panic!(
                "{node}'s log reader of {task} did not end after the client went away:\n{}",
                readers.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `host`'s daemon log without its colours.
fn daemon_log(lab: &Lab, host: &str) -> String {
    let raw = std::fs::read_to_string(lab.host_dir(host).join("daemon.log")).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn ended_readers(lab: &Lab, host: &str, task: &str) -> usize {
    daemon_log(lab, host)
        .lines()
        .filter(|l| l.contains("log reader ended") && l.contains(task) && l.contains("follow=true"))
        .count()
}

/// The log files in `dir`: at most `max_file`, each within `max_size`.
fn assert_capped(dir: &std::path::Path, max_size: u64, max_file: usize) {
    let files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("task.log"))
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(files.len(), max_file, "{files:?}");
    for (f, len) in &files {
        assert!(*len <= max_size, "{f}: {len} > {max_size}");
    }
}

#[test]
fn host_process_logs_follow_tail_since_streams_and_rotation() {
    let mut lab = Lab::new("logs-proc", &["m1"]);
    lab.start_all();
    lab.init("m1", &[]);

    // -f from the start follows 10 MB to the end (across a rotation: the
    // json lines pass the default 10 MiB max-size), every line in order.
    let big = lab.run_task("m1", &["--", "sh", "-c", BIG]);
    wait_started(&lab, "m1", &big);
    let (out, _) = weft2(&lab, "m1", &["logs", "-f", &big]);
    check_big(&out);
    assert!(task_state(&lab, "m1", &big).contains("exited (0)"));
    // Without -f: the whole log (far above gRPC's 4 MiB message limit).
    let (out, _) = weft2(&lab, "m1", &["logs", &big]);
    check_big(&out);
    // --tail 5: exactly the last five lines.
    let (out, _) = weft2(&lab, "m1", &["logs", "--tail", "5", &big]);
    let nums: Vec<usize> = out
        .lines()
        .map(|l| l.trim_start_matches('0').parse().unwrap_or(0))
        .collect();
    assert_eq!(nums, [9995, 9996, 9997, 9998, 9999], "{}", out.len());
    // The files on disk: rotated, each within max-size (10 MiB).
    let dir = lab.host_dir("m1").join("run/tasks").join(&big).join("log");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("task.log"))
        .collect();
    files.sort();
    assert_eq!(files, ["task.log", "task.log.1"], "in {}", dir.display());
    for f in &files {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len <= 10 * 1024 * 1024, "{f}: {len} bytes");
    }

    // stdout and stderr kept apart; -t and --since.
    let two = lab.run_task(
        "m1",
        &[
            "--",
            "sh",
            "-c",
            "echo out-early; echo err-early >&2; sleep 1.5; echo out-late; echo err-late >&2",
        ],
    );
    wait_for("the task exits", Duration::from_secs(20), || {
        task_state(&lab, "m1", &two).contains("exited (0)")
    });
    let (out, err) = weft2(&lab, "m1", &["logs", &two]);
    assert_eq!(out, "out-early\nout-late\n");
    assert_eq!(err, "err-early\nerr-late\n");
    let (out, _) = weft2(&lab, "m1", &["logs", "-t", &two]);
    let late_at = out
        .lines()
        .find(|l| l.ends_with(" out-late"))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("a timestamp on each line: {out}"))
        .to_string();
    let (out, err) = weft2(&lab, "m1", &["logs", "--since", &late_at, &two]);
    assert_eq!((out.as_str(), err.as_str()), ("out-late\n", "err-late\n"));
    let (out, _) = weft2(&lab, "m1", &["logs", "--since", "10m", &two]);
    assert_eq!(out, "out-early\nout-late\n");

    // A follow whose client goes away ends on the node.
    let long = lab.run_task(
        "m1",
        &[
            "--",
            "sh",
            "-c",
            "while true; do echo tick; sleep 0.2; done",
        ],
    );
    wait_started(&lab, "m1", &long);
    follower_ends_when_killed(&lab, "m1", "m1", &["logs", "-f", &long], &long);

    // --log-opt: the files on disk stay within max-size and max-file.
    let capped = lab.run_task(
        "m1",
        &[
            "--log-opt",
            "max-size=64k",
            "--log-opt",
            "max-file=2",
            "--",
            "sh",
            "-c",
            "seq 1 100000",
        ],
    );
    wait_for("the capped task exits", Duration::from_secs(30), || {
        task_state(&lab, "m1", &capped).contains("exited (0)")
    });
    assert_capped(
        &lab.host_dir("m1")
            .join("run/tasks")
            .join(&capped)
            .join("log"),
        64 * 1024,
        2,
    );
    let (out, _) = weft2(&lab, "m1", &["logs", "--tail", "1", &capped]);
    assert_eq!(out, "100000\n");

    // Bad input: a clear error, nothing run.
    let before = lab.weft("m1", &["ps", "--all"]);
    for (args, want) in [
        (
            vec!["run", "--log-opt", "max-size=lots", "--", "true"],
            "max-size=lots",
        ),
        (
            vec!["run", "--log-opt", "max-file=0", "--", "true"],
            "max-file",
        ),
        (
            vec![
                "service",
                "create",
                "--name",
                "x",
                "--log-opt",
                "colour=red",
                "--",
                "true",
            ],
            "unknown option",
        ),
        (vec!["logs", "--tail", "-3", &long], "number of lines"),
        (vec!["logs", "--since", "garbage", &long], "RFC 3339"),
        (
            vec!["service", "logs", "--tail", "lots", "x"],
            "number of lines",
        ),
    ] {
        let e = lab.weft_err("m1", &args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert_eq!(
        lab.weft("m1", &["ps", "--all"]),
        before,
        "bad input ran nothing"
    );
    assert!(
        lab.weft("m1", &["service", "ls"]).lines().count() <= 1,
        "no service made"
    );
}

#[test]
fn service_logs_stream_from_the_nodes() {
    let mut lab = Lab::new("logs-svc", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "big",
            "--constraint",
            "node.role==worker",
            "--",
            "sh",
            "-c",
            &format!("{BIG}; echo done-err >&2; exec sleep 3600"),
        ],
    );
    wait_for(
        "the service wrote its output",
        Duration::from_secs(60),
        || {
            lab.try_weft("m1", &["service", "logs", "--tail", "1", "big"])
                .stderr
                .windows(8)
                .any(|w| w == b"done-err")
        },
    );
    // All 10 MB through the manager, prefixed TASK@NODE; stderr apart.
    let (out, err) = weft2(&lab, "m1", &["service", "logs", "big"]);
    let body: String = out
        .lines()
        .map(|l| {
            let (prefix, rest) = l.split_once("    | ").expect("prefixed");
            assert!(
                prefix.starts_with("big.1.") && prefix.ends_with("@w1"),
                "{prefix}"
            );
            format!("{rest}\n")
        })
        .collect();
    check_big(&body);
    assert!(
        err.contains("done-err") && !out.contains("done-err"),
        "{err}"
    );
    // --tail counts lines, per task.
    // --tail counts lines of both streams, per task: four of stdout, the
    // last one (done-err) of stderr.
    let (out, err) = weft2(&lab, "m1", &["service", "logs", "--tail", "5", "big"]);
    assert_eq!((out.lines().count(), err.lines().count()), (4, 1), "{err}");
    // --log-opt travels with the service to the node.
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "capped",
            "--constraint",
            "node.role==worker",
            "--log-opt",
            "max-size=64k,max-file=3",
            "--",
            "sh",
            "-c",
            "seq 1 100000; exec sleep 3600",
        ],
    );
    wait_for("capped wrote its output", Duration::from_secs(30), || {
        lab.weft("m1", &["service", "logs", "--tail", "1", "capped"])
            .ends_with("| 100000\n")
    });
    let w1_tasks = lab.host_dir("w1").join("run/tasks");
    let capped_dir = std::fs::read_dir(&w1_tasks)
        .expect("w1's tasks")
        .map(|e| e.unwrap().path().join("log"))
        .find(|d| {
            std::fs::read_to_string(d.join("../log-config.json")).is_ok_and(|c| c.contains("65536"))
        })
        .expect("the capped task's log on w1");
    assert_capped(&capped_dir, 64 * 1024, 3);

    // -f through the manager: killing the client ends w1's reader.
    let id = std::fs::read_dir(&w1_tasks)
        .expect("w1's tasks")
        .map(|e| e.unwrap().path())
        .find(|d| {
            std::fs::read_to_string(d.join("log-config.json")).is_ok_and(|c| !c.contains("65536"))
        })
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .expect("big's task dir");
    follower_ends_when_killed(
        &lab,
        "w1",
        "m1",
        &["service", "logs", "-f", "--tail", "3", "big"],
        &id,
    );
}

/// A lab host with a private containerd; fields drop in order (the daemon
/// before its containerd).
struct CtrRig {
    lab: Lab,
    _ctrd: PrivateContainerd,
}

#[test]
fn every_quick_container_s_output_is_in_its_log_at_the_reported_exit() {
    let ctrd = PrivateContainerd::start("logs-ctr-m1");
    let mut lab = Lab::new("logs-ctr", &["m1"]);
    lab.start_on_containerd("m1", &ctrd);
    let rig = CtrRig { lab, _ctrd: ctrd };
    let lab = &rig.lab;
    lab.init("m1", &[]);
    let images = common::image::busybox();
    lab.weft(
        "m1",
        &["image", "load", "-i", images.docker.to_str().unwrap()],
    );
    const IMAGE: &str = "weft-test/busybox:latest";

    // Many containers that exit at once: each log is complete the moment
    // the exit shows (the runtime waits for the logger before reporting).
    let ids: Vec<String> = (0..12)
        .map(|_| lab.run_task("m1", &[IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3"]))
        .collect();
    let mut pending: Vec<&String> = ids.iter().collect();
    let mut checked = 0;
    wait_for("every container exits", Duration::from_secs(90), || {
        pending.retain(|id| {
            let st = task_state(lab, "m1", id);
            if !st.contains("exited") {
                return true;
            }
            assert!(st.contains("exited (3)"), "{id}: {st}");
            let (out, err) = weft2(lab, "m1", &["logs", id]);
            assert_eq!(
                (out.as_str(), err.as_str()),
                ("out\n", "err\n"),
                "{id} right after its exit"
            );
            checked += 1;
            false
        });
        pending.is_empty()
    });
    assert_eq!(checked, ids.len());

    // 10 MB from a container, followed from the start; then --tail 5.
    let big = lab.run_task("m1", &[IMAGE, "sh", "-c", BIG]);
    wait_started(lab, "m1", &big);
    let (out, _) = weft2(lab, "m1", &["logs", "-f", &big]);
    check_big(&out);
    let (out, _) = weft2(lab, "m1", &["logs", "--tail", "5", &big]);
    assert_eq!(out.lines().count(), 5);
}
