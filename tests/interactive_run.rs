//! `weft run -i/-t` and `weft attach` (issue #14), end to end: a real
//! daemon in a namespace host with its own containerd, the busybox test
//! image loaded. Stdin piped in and closed at its EOF, exit codes, a
//! pseudo-terminal (the CLI on a real pty: `tty`, resizes, ctrl-c as a
//! key), the output in `weft logs` (all of it before the exit is
//! reported), `--rm -i` leaving nothing (containerd through `ctr`, the
//! exec root), `-d -i` then `weft attach`, a service's task attached
//! (output only), an `-i` task adopted by a
//! restarted daemon, `-d -it` then `weft attach` with ctrl-p ctrl-q
//! detaching, and the bad inputs.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::pty::OnPty;
use common::wait_for;

const IMAGE: &str = "weft-test/busybox:latest";
const NS: &str = "weft";

type Rig = common::one_node::OneNode;

/// The task directory of `id` under m1's exec root.
fn task_dir(rig: &Rig, id: &str) -> PathBuf {
    rig.lab
        .host_dir("m1")
        .join("run")
        .join("containers")
        .join(id)
}

/// The task directories under m1's exec root (their FIFOs inside).
fn task_dirs(rig: &Rig) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(task_dir(rig, "x").parent().unwrap())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn run_i_and_t_attached() {
    let rig = Rig::new("irun-att");
    let lab = &rig.lab;

    // Stdin piped in; its EOF closes the task's stdin.
    let out = rig.piped(&["run", "-i", IMAGE, "cat"], b"hi\n");
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "hi\n");
    let out = rig.piped(&["run", "-i", IMAGE, "sh", "-c", "read x; exit $x"], b"7\n");
    assert_exit(&out, 7);

    // stdout and stderr apart, and all of it in `weft logs`.
    let out = rig.piped(
        &[
            "run",
            "-i",
            "--name",
            "logged",
            IMAGE,
            "sh",
            "-c",
            "cat; echo err >&2",
        ],
        b"a\nb\n",
    );
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "a\nb\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let (o, e) = (
        lab.weft("m1", &["logs", "logged"]),
        lab.try_weft("m1", &["logs", "logged"]),
    );
    assert_eq!(o, "a\nb\n");
    assert_eq!(String::from_utf8_lossy(&e.stderr), "err\n");

    // --rm -i leaves nothing: no task, container, FIFO or task dir.
    let before = rig.containers();
    let dirs = task_dirs(&rig);
    let out = rig.piped(
        &["run", "--rm", "-i", "--name", "gone", IMAGE, "cat"],
        b"bye\n",
    );
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "bye\n");
    assert!(!lab.weft("m1", &["ps", "-a"]).contains("gone"));
    assert_eq!(rig.containers(), before);
    assert_eq!(task_dirs(&rig), dirs);

    // An attached `run -i` whose client goes away closes the task's stdin
    // (Docker's StdinOnce): the task sees EOF and ends; it is not killed.
    let mut child = rig.spawn(
        &[
            "run",
            "-i",
            "--name",
            "once",
            IMAGE,
            "sh",
            "-c",
            "cat; echo eof-seen",
        ],
        Stdio::piped(),
    );
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"x1\n").expect("write");
    }
    wait_for("x1 in the log", Duration::from_secs(30), || {
        stdout(&lab.try_weft("m1", &["logs", "once"])).contains("x1")
    });
    let _ = child.kill();
    let _ = child.wait();
    wait_for("the task's stdin closed", Duration::from_secs(30), || {
        lab.weft("m1", &["logs", "once"]).contains("eof-seen")
    });

    // -it on a terminal: a tty, its size followed, keys as typed.
    let pty = OnPty::spawn(
        &rig.lab.socket_path("m1"),
        &[
            "run",
            "-it",
            "--name",
            "term",
            IMAGE,
            "sh",
            "-c",
            "tty; stty size; while read x; do stty size; done; echo done",
        ],
        24,
        80,
    );
    pty.wait_text("/dev/pts/");
    pty.wait_text("24 80");
    pty.resize_until_shown(40, 120);
    pty.type_in(b"\x04");
    let (code, text) = pty.finish();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("done"), "{text:?}");
    assert!(lab.weft("m1", &["logs", "term"]).contains("/dev/pts/"));

    // ctrl-c with -t is a key for the task's terminal: its terminal echoes
    // it and its processes get SIGINT (the task's 130, as Docker's); weft,
    // raw, gets no signal and ends with the task's code.
    let pty = OnPty::spawn(
        &rig.lab.socket_path("m1"),
        &[
            "run",
            "-it",
            IMAGE,
            "sh",
            "-c",
            "echo ready; sleep 1000; echo interrupted $?; exit 3",
        ],
        24,
        80,
    );
    pty.wait_text("ready");
    pty.type_in(b"\x03");
    let (code, text) = pty.finish();
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("^C"), "{text:?}");

    // -d -it, then `weft attach` on a terminal: keys reach the task's
    // terminal; ctrl-p ctrl-q detaches and leaves it running.
    lab.run_task(
        "m1",
        &[
            "-d",
            "-it",
            "--name",
            "dk",
            IMAGE,
            "sh",
            "-c",
            "while read x; do echo got $x; done",
        ],
    );
    let pty = OnPty::spawn(&lab.socket_path("m1"), &["attach", "dk"], 24, 80);
    wait_for("the attach forwards keys", Duration::from_secs(30), || {
        pty.type_in(b"hello\r");
        pty.text().contains("got hello")
    });
    pty.type_in(b"\x10\x11");
    let (code, text) = pty.finish();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("detached from task"), "{text:?}");
    assert!(lab.weft("m1", &["ps"]).contains("dk"));
    lab.weft("m1", &["rm", "-f", "dk"]);
    wait_for("dk removed", Duration::from_secs(30), || {
        !lab.weft("m1", &["ps", "-a"]).contains("dk")
    });

    // Bad input: Docker's error and 125, nothing made.
    let ps = lab.weft("m1", &["ps", "-a"]);
    let out = rig.piped(&["run", "-it", IMAGE, "cat"], b"x\n");
    assert_exit(&out, 125);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the input device is not a TTY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab.try_weft("m1", &["run", "-i", "--", "sleep", "1"]);
    assert_exit(&out, 125);
    assert!(String::from_utf8_lossy(&out.stderr).contains("for containers"));
    assert_eq!(lab.weft("m1", &["ps", "-a"]), ps);
    let err = lab.weft_err("m1", &["attach", "nosuch"]);
    assert!(err.contains("no task \"nosuch\" on this node"), "{err}");
}

#[test]
fn run_d_i_then_attach_and_adoption() {
    let mut rig = Rig::new("irun-det");

    // -d -i: stdin stays open for a later attach, which gets the exit code.
    rig.lab.run_task(
        "m1",
        &[
            "-d",
            "-i",
            "--name",
            "rd",
            IMAGE,
            "sh",
            "-c",
            "read x; echo got $x; exit $x",
        ],
    );
    let out = rig.piped(&["attach", "rd"], b"5\n");
    assert_exit(&out, 5);
    assert_eq!(stdout(&out), "got 5\n");
    let err = rig.lab.weft_err("m1", &["attach", "rd"]);
    assert!(err.contains("is not running"), "{err}");

    // All output is in the log when the exit is reported.
    rig.lab.run_task(
        "m1",
        &[
            "-d",
            "-i",
            "--name",
            "burst",
            IMAGE,
            "sh",
            "-c",
            "read x; seq 1 5000",
        ],
    );
    let out = rig.piped(&["attach", "burst"], b"\n");
    assert_exit(&out, 0);
    let logs = rig.lab.weft("m1", &["logs", "burst"]);
    assert_eq!(logs.lines().count(), 5000);
    assert_eq!(logs.lines().last(), Some("5000"));

    // A task run without -i: output only, from the attach on.
    rig.lab.run_task(
        "m1",
        &[
            "-d",
            "--name",
            "plain",
            IMAGE,
            "sh",
            "-c",
            "echo early; sleep 3; echo late; exit 4",
        ],
    );
    wait_for("early output", Duration::from_secs(30), || {
        rig.lab.weft("m1", &["logs", "plain"]).contains("early")
    });
    let out = rig.piped(&["attach", "plain"], b"ignored\n");
    assert_exit(&out, 4);
    assert_eq!(stdout(&out), "late\n");

    // A service's task: output only, live from its log.
    rig.lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "svc",
            IMAGE,
            "sh",
            "-c",
            "while true; do echo svc-tick; sleep 0.3; done",
        ],
    );
    let mut svc_task = String::new();
    wait_for(
        "the service's task runs here",
        Duration::from_secs(60),
        || {
            let ps = rig.lab.weft("m1", &["ps"]);
            svc_task = ps
                .lines()
                .find(|l| l.contains("svc") && l.contains("running"))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or_default()
                .to_owned();
            !svc_task.is_empty()
        },
    );
    let mut child = rig.spawn(&["attach", &svc_task], Stdio::piped());
    let mut out = child.stdout.take().expect("stdout");
    let seen = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let n = out.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let first = seen.join().expect("reader");
    assert!(first.starts_with("svc-tick"), "{first:?}");
    let _ = child.kill();
    let _ = child.wait();
    rig.lab.weft("m1", &["service", "rm", "svc"]);

    // A restarted daemon adopts an -i task: it keeps running, takes
    // stdin from a new attach, and its later output reaches the log.
    let id = rig.lab.run_task(
        "m1",
        &[
            "-d",
            "-i",
            "--name",
            "keep",
            IMAGE,
            "sh",
            "-c",
            "while read x; do echo line $x; done; echo bye",
        ],
    );
    let feed = |rig: &Rig, text: &[u8], expect: &str| {
        use std::io::Write;
        let mut child = rig.spawn(&["attach", "keep"], Stdio::piped());
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(text)
            .expect("write");
        wait_for(expect, Duration::from_secs(30), || {
            rig.lab.weft("m1", &["logs", "keep"]).contains(expect)
        });
        let _ = child.kill();
        let _ = child.wait();
    };
    feed(&rig, b"1\n", "line 1");
    rig.lab.kill9("m1");
    rig.lab.start_on_containerd("m1", &rig.ctrd);
    wait_for("the daemon answers", Duration::from_secs(60), || {
        rig.lab.try_weft("m1", &["ps"]).status.success()
            && rig.lab.weft("m1", &["ps"]).contains("keep")
    });
    assert!(
        rig.ctrd
            .ctr_ok(NS, &["tasks", "ls"])
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING"))
    );
    feed(&rig, b"2\n", "line 2");
    rig.lab.weft("m1", &["rm", "-f", "keep"]);
    wait_for(
        "the task's dir and FIFOs gone",
        Duration::from_secs(30),
        || !task_dir(&rig, &id).exists(),
    );
}
