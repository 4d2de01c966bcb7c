//! Tests of the task runtime. The `process_*` tests need root: they create
//! their own network namespace (pinned in a temp dir), run real tasks
//! through real shims, and check the kernel's view in `/proc`.
//!
//! The shim is this test binary itself: [`shim_entrypoint`] is a test that
//! does nothing unless the runtime started the binary with the task
//! directory in [`SHIM_DIR_ENV`]; then it runs `shim::run` and exits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_overlay::linux::{Netns, pids_in_netns};

use super::files::{self, PidFile};
use super::shim::{SHIM_DIR_ENV, ShimArgs};
use super::*;

#[test]
fn shim_entrypoint() {
    let Some(dir) = std::env::var_os(SHIM_DIR_ENV) else {
        return;
    };
    let code = match shim::run(ShimArgs { dir: dir.into() }) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("task shim: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn test_shim() -> ShimCommand {
    ShimCommand::new(std::env::current_exe().expect("current exe"))
        .arg("runtime::tests::shim_entrypoint")
        .arg("--exact")
        .arg("--nocapture")
        .arg("--test-threads=1")
}

fn spec(id: &str, netns: &Path, script: &str) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        name: format!("{id}.1"),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        netns: netns.to_owned(),
        resolv_conf: None,
        hostname: None,
        container: None,
        stop: Default::default(),
        log: None,
        external: None,
    }
}

/// Polls `cond` until it holds or `timeout` passes.
async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A temp exec-root with a pinned netns; on drop kills every task and shim
/// recorded under it and removes the pin, even if the test failed.
struct Rig {
    tmp: tempfile::TempDir,
    pin: PathBuf,
    netns: Netns,
}

impl Rig {
    fn new() -> Rig {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pin = tmp.path().join("netns").join("task");
        let netns = Netns::create(&pin).expect("create netns");
        netns.lo_up().expect("lo up");
        Rig { tmp, pin, netns }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn runtime(&self) -> ProcessRuntime {
        ProcessRuntime::new(self.root(), test_shim())
    }

    fn pid_file(&self, id: &str) -> PidFile {
        files::read_json(&self.root().join("tasks").join(id).join(files::PID))
            .expect("read pid file")
            .expect("pid file exists")
    }

    fn log(&self, id: &str) -> String {
        crate::logs::text(&self.root().join("tasks").join(id).join(files::LOG))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Ok(dirs) = std::fs::read_dir(self.root().join("tasks")) {
            for d in dirs.flatten() {
                let Ok(Some(p)) = files::read_json::<PidFile>(&d.path().join(files::PID)) else {
                    continue;
                };
                if files::is_alive(p.pid, p.start_time) {
                    // SAFETY: kill(2) on a process group this test started.
                    unsafe { libc::kill(-p.pid, libc::SIGKILL) };
                }
                if files::is_alive(p.shim_pid, p.shim_start_time) {
                    // SAFETY: kill(2) on a shim this test started.
                    unsafe { libc::kill(p.shim_pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Netns::delete(&self.pin);
    }
}

fn sorted(mut v: Vec<i32>) -> Vec<i32> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_task_runs_in_netns_survives_restart_and_stops() {
    let rig = Rig::new();
    let resolv = rig.root().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.11\nsearch weft-rt-test.invalid\n",
    )
    .unwrap();
    let mut s = spec(
        "t1",
        &rig.pin,
        "echo hello; cat /etc/resolv.conf; echo host=$(cat /proc/sys/kernel/hostname); \
         echo foo=$FOO; sleep 30",
    );
    s.resolv_conf = Some(resolv);
    s.hostname = Some("weft-rt-t1".into());
    s.env.insert("FOO".into(), "bar".into());

    let rt = rig.runtime();
    let st = rt.start(&s).await.expect("start");
    let TaskState::Running { pid } = st.state else {
        panic!("not running: {st:?}\nshim.log: {}", {
            std::fs::read_to_string(rig.root().join("tasks/t1/shim.log")).unwrap_or_default()
        });
    };
    assert_eq!(rig.pid_file("t1").pid, pid);
    wait_until("the task's output", Duration::from_secs(10), || {
        let log = rig.log("t1");
        log.contains("foo=bar")
    })
    .await;
    let log = rig.log("t1");
    assert!(log.contains("hello"), "{log}");
    assert!(log.contains("nameserver 127.0.0.11"), "{log}");
    assert!(log.contains("search weft-rt-test.invalid"), "{log}");
    assert!(log.contains("host=weft-rt-t1"), "{log}");
    assert_eq!(rt.log_path("t1"), rig.root().join("tasks/t1/log"));

    // The kernel's view: the task is in the task's netns; the host's
    // resolv.conf and hostname are untouched.
    assert_eq!(files::netns_inode_of(pid), Some(rig.netns.inode()));
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(!host_resolv.contains("weft-rt-test.invalid"));
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "weft-rt-t1"
    );
    // The task leads its own session (so it can be signalled as a group).
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
            .unwrap()
            .as_raw(),
        pid
    );

    // "Daemon restart": a new runtime on the same root adopts the task and
    // starts nothing.
    let before = sorted(pids_in_netns(&rig.netns));
    assert_eq!(before.len(), 2, "sh and sleep: {before:?}");
    drop(rt);
    let rt = rig.runtime();
    let adopted = rt.adopt().await.expect("adopt");
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].state, TaskState::Running { pid });
    assert_eq!(rt.list(), adopted);
    // Starting the same spec again is a no-op.
    assert_eq!(
        rt.start(&s).await.expect("start again").state,
        TaskState::Running { pid }
    );
    // A different spec under the same id is refused.
    let mut other = s.clone();
    other.command = vec!["true".into()];
    assert!(matches!(
        rt.start(&other).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(sorted(pids_in_netns(&rig.netns)), before);

    // Stop the adopted task: SIGTERM to its group.
    let mut events = rt.subscribe();
    rt.stop("t1", Some(Duration::from_secs(5)))
        .await
        .expect("stop");
    let st = rt.status("t1").unwrap();
    assert_eq!(
        st.state,
        TaskState::Exited {
            code: None,
            signal: Some(libc::SIGTERM),
            oom: false,
        }
    );
    assert!(st.finished_at.is_some());
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event")
        .expect("event");
    assert_eq!(ev, st);
    wait_until("the netns to be empty", Duration::from_secs(5), || {
        pids_in_netns(&rig.netns).is_empty()
    })
    .await;
    // Idempotent.
    rt.stop("t1", Some(Duration::from_secs(5)))
        .await
        .expect("stop again");

    // Adoption of a finished task reports how it ended.
    let rt2 = rig.runtime();
    assert_eq!(rt2.adopt().await.unwrap(), vec![st]);

    rt.remove("t1").await.expect("remove");
    assert!(!rig.root().join("tasks/t1").exists());
    assert!(rt.status("t1").is_none());
    rt.remove("t1").await.expect("remove again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_task_exit_code_is_reported() {
    let rig = Rig::new();
    let rt = rig.runtime();
    let mut events = rt.subscribe();
    rt.start(&spec("t3", &rig.pin, "exit 3"))
        .await
        .expect("start");
    let end = rt.wait("t3").await.expect("wait");
    assert_eq!(
        end.state,
        TaskState::Exited {
            code: Some(3),
            signal: None,
            oom: false,
        }
    );
    // The last event is the exit.
    let mut last = None;
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        last = Some(ev);
    }
    assert_eq!(last.map(|e| e.state), Some(end.state.clone()));
    // An adopting runtime agrees, from the exit file.
    let rt2 = rig.runtime();
    assert_eq!(rt2.adopt().await.unwrap()[0].state, end.state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_task_that_cannot_start_is_failed() {
    let rig = Rig::new();
    let rt = rig.runtime();
    let mut s = spec("bad", &rig.pin, "");
    s.command = vec!["/nonexistent/weft-no-such-program".into()];
    let st = rt.start(&s).await.expect("start");
    let TaskState::Failed { error } = &st.state else {
        panic!("{st:?}");
    };
    assert!(error.contains("weft-no-such-program"), "{error}");

    let mut s = spec("nons", &rig.root().join("netns/missing"), "true");
    s.id = "nons".into();
    let st = rt.start(&s).await.expect("start");
    assert!(matches!(st.state, TaskState::Failed { .. }), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_stop_escalates_to_sigkill() {
    let rig = Rig::new();
    let rt = rig.runtime();
    rt.start(&spec(
        "stubborn",
        &rig.pin,
        "trap '' TERM; echo ready; while :; do sleep 0.1; done",
    ))
    .await
    .expect("start");
    wait_until("the trap", Duration::from_secs(10), || {
        rig.log("stubborn").contains("ready")
    })
    .await;
    rt.stop("stubborn", Some(Duration::from_millis(300)))
        .await
        .expect("stop");
    assert_eq!(
        rt.status("stubborn").unwrap().state,
        TaskState::Exited {
            code: None,
            signal: Some(libc::SIGKILL),
            oom: false,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_shim_forwards_sigterm() {
    let rig = Rig::new();
    let rt = rig.runtime();
    rt.start(&spec("fwd", &rig.pin, "exec sleep 30"))
        .await
        .expect("start");
    let p = rig.pid_file("fwd");
    // SAFETY: kill(2) on the shim this test started.
    assert_eq!(unsafe { libc::kill(p.shim_pid, libc::SIGTERM) }, 0);
    let end = tokio::time::timeout(Duration::from_secs(10), rt.wait("fwd"))
        .await
        .expect("exit in time")
        .expect("wait");
    assert_eq!(
        end.state,
        TaskState::Exited {
            code: None,
            signal: Some(libc::SIGTERM),
            oom: false,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_task_outlives_its_shim_and_is_then_failed() {
    let rig = Rig::new();
    let rt = rig.runtime();
    let st = rt
        .start(&spec("orphan", &rig.pin, "exec sleep 30"))
        .await
        .expect("start");
    let TaskState::Running { pid } = st.state else {
        panic!("{st:?}")
    };
    let p = rig.pid_file("orphan");
    // SAFETY: kill(2) on the shim this test started.
    assert_eq!(unsafe { libc::kill(p.shim_pid, libc::SIGKILL) }, 0);
    wait_until("the shim to die", Duration::from_secs(5), || {
        !files::is_alive(p.shim_pid, p.shim_start_time)
    })
    .await;
    // The task is unaffected, and a new runtime still sees it running.
    assert!(files::is_alive(pid, p.start_time));
    let rt2 = rig.runtime();
    assert_eq!(
        rt2.adopt().await.unwrap()[0].state,
        TaskState::Running { pid }
    );
    rt2.stop("orphan", Some(Duration::from_secs(5)))
        .await
        .expect("stop");
    let st = rt2.status("orphan").unwrap();
    assert!(matches!(st.state, TaskState::Failed { .. }), "{st:?}");
}

/// Env vars of the "daemon" used by [`process_task_survives_daemon_kill9`].
const DAEMON_ROOT_ENV: &str = "WEFT_TEST_RUNTIME_DAEMON_ROOT";
const DAEMON_NETNS_ENV: &str = "WEFT_TEST_RUNTIME_DAEMON_NETNS";

/// A stand-in daemon: does nothing unless started by
/// [`process_task_survives_daemon_kill9`]; then starts one task through a
/// `ProcessRuntime`, prints its pid and waits to be killed.
#[test]
fn daemon_entrypoint() {
    let (Some(root), Some(netns)) = (
        std::env::var_os(DAEMON_ROOT_ENV),
        std::env::var_os(DAEMON_NETNS_ENV),
    ) else {
        return;
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(async {
        let rt = ProcessRuntime::new(&root, test_shim());
        let st = rt
            .start(&spec("k9", Path::new(&netns), "exec sleep 30"))
            .await
            .expect("start");
        let TaskState::Running { pid } = st.state else {
            panic!("{st:?}")
        };
        println!("daemon-started {pid}");
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    std::process::exit(0);
}

/// Kills the stand-in daemon if the test fails early.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_task_survives_daemon_kill9() {
    use std::io::BufRead;
    let rig = Rig::new();
    let mut daemon = Daemon(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "runtime::tests::daemon_entrypoint",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DAEMON_ROOT_ENV, rig.root())
            .env(DAEMON_NETNS_ENV, &rig.pin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn daemon"),
    );
    let stdout = daemon.0.stdout.take().unwrap();
    let pid: i32 = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest prints "test <name> ... " without a newline first.
            .find_map(|l| {
                l.split("daemon-started ")
                    .nth(1)
                    .map(|p| p.trim().parse().unwrap())
            })
    })
    .await
    .unwrap()
    .expect("the daemon started a task");
    let daemon_pid = daemon.0.id() as i32;
    daemon.0.kill().expect("kill -9 the daemon");
    daemon.0.wait().unwrap();

    // The task and its shim live on; the shim is no longer the daemon's.
    let p = rig.pid_file("k9");
    assert_eq!(p.pid, pid);
    assert!(p.task_alive());
    wait_until("the shim to be reparented", Duration::from_secs(5), || {
        let ppid = std::fs::read_to_string(format!("/proc/{}/stat", p.shim_pid))
            .ok()
            .and_then(|s| {
                s[s.rfind(')')? + 1..]
                    .split_whitespace()
                    .nth(1)?
                    .parse::<i32>()
                    .ok()
            });
        ppid.is_some_and(|pp| pp != daemon_pid)
    })
    .await;
    assert!(p.shim_alive());
    assert_eq!(pids_in_netns(&rig.netns), vec![pid]);

    // The restarted daemon adopts it, and starting the same spec again
    // starts no second copy.
    let rt = rig.runtime();
    let adopted = rt.adopt().await.expect("adopt");
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].state, TaskState::Running { pid });
    let again = rt
        .start(&spec("k9", &rig.pin, "exec sleep 30"))
        .await
        .expect("start again");
    assert_eq!(again.state, TaskState::Running { pid });
    assert_eq!(pids_in_netns(&rig.netns), vec![pid]);

    rt.stop("k9", Some(Duration::from_secs(5)))
        .await
        .expect("stop");
    assert_eq!(
        rt.status("k9").unwrap().state,
        TaskState::Exited {
            code: None,
            signal: Some(libc::SIGTERM),
            oom: false,
        }
    );
}

// ---- without root ----------------------------------------------------------

#[test]
fn ids_and_specs_are_validated() {
    for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
        assert!(validate_id(bad).is_err(), "{bad:?}");
    }
    validate_id("abc-1.2_3").unwrap();
    let ok = spec("ok", Path::new("/run/x"), "true");
    validate(&ok).unwrap();
    let mut s = ok.clone();
    s.command.clear();
    assert!(validate(&s).is_err());
    let mut s = ok.clone();
    s.netns = "rel".into();
    assert!(validate(&s).is_err());
    let mut s = ok.clone();
    s.env.insert("A=B".into(), "x".into());
    assert!(validate(&s).is_err());
    let mut s = ok;
    s.hostname = Some("h".repeat(65));
    assert!(validate(&s).is_err());
}

#[test]
fn proc_stat_identifies_this_process() {
    let me = std::process::id() as i32;
    let (start, zombie) = files::proc_stat(me).expect("own stat");
    assert!(!zombie);
    assert!(files::is_alive(me, start));
    assert!(!files::is_alive(me, start + 1));
    assert!(files::proc_stat(i32::MAX).is_none());
}

#[test]
fn observe_reads_task_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert!(matches!(
        files::observe("x", dir, None).unwrap(),
        files::Observed::NeverStarted
    ));
    let pid = PidFile {
        pid: i32::MAX,
        start_time: 1,
        shim_pid: i32::MAX,
        shim_start_time: 1,
        started_at: std::time::SystemTime::now(),
        boot_id: String::new(),
    };
    files::write_json(&dir.join(files::PID), &pid).unwrap();
    assert!(matches!(
        files::observe("x", dir, None).unwrap(),
        files::Observed::Vanished(_)
    ));
    // This very process, recorded in this boot: running; recorded in
    // another boot: not ours.
    let me = std::process::id() as i32;
    let mut alive = pid.clone();
    alive.pid = me;
    alive.start_time = files::proc_stat(me).unwrap().0;
    alive.boot_id = files::boot_id();
    files::write_json(&dir.join(files::PID), &alive).unwrap();
    assert!(matches!(
        files::observe("x", dir, None).unwrap(),
        files::Observed::Running(_)
    ));
    alive.boot_id = "another-boot".into();
    files::write_json(&dir.join(files::PID), &alive).unwrap();
    assert!(matches!(
        files::observe("x", dir, None).unwrap(),
        files::Observed::Vanished(_)
    ));
    files::write_json(&dir.join(files::PID), &pid).unwrap();
    let exit = files::ExitFile {
        code: Some(0),
        signal: None,
        error: None,
        finished_at: std::time::SystemTime::now(),
        oom: false,
    };
    files::write_json(&dir.join(files::EXIT), &exit).unwrap();
    let files::Observed::Finished(s) = files::observe("x", dir, None).unwrap() else {
        panic!()
    };
    assert_eq!(
        s.state,
        TaskState::Exited {
            code: Some(0),
            signal: None,
            oom: false,
        }
    );
    assert_eq!(s.started_at, Some(pid.started_at));
    // A shim that crashed while writing a newer exit file left a torn
    // temporary one: not read, and replaced by the next write.
    let tmp = weft_overlay::durable::temp_path(&dir.join(files::EXIT));
    std::fs::write(&tmp, "{\"code\":").unwrap();
    assert!(matches!(
        files::observe("x", dir, None).unwrap(),
        files::Observed::Finished(_)
    ));
    files::write_json(&dir.join(files::EXIT), &exit).unwrap();
    assert!(!tmp.exists());
    std::fs::write(dir.join(files::EXIT), "{").unwrap();
    assert!(matches!(
        files::observe("x", dir, None),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn status_serializes_with_a_state_tag() {
    let s = TaskStatus {
        id: "a".into(),
        state: TaskState::Exited {
            code: Some(3),
            signal: None,
            oom: false,
        },
        started_at: None,
        finished_at: None,
    };
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["state"]["state"], "exited");
    assert_eq!(j["state"]["code"], 3);
    assert_eq!(serde_json::from_value::<TaskStatus>(j).unwrap(), s);
}

#[tokio::test]
async fn fake_runtime_records_and_reports() {
    let rt = FakeRuntime::new();
    let mut events = rt.subscribe();
    let s = spec("f1", Path::new("/run/x"), "true");
    let st = rt.start(&s).await.unwrap();
    assert!(matches!(st.state, TaskState::Running { .. }));
    assert_eq!(events.recv().await.unwrap(), st);
    // Idempotent start; a clashing spec is refused.
    assert_eq!(rt.start(&s).await.unwrap(), st);
    let mut other = s.clone();
    other.name = "other".into();
    assert!(matches!(
        rt.start(&other).await,
        Err(Error::AlreadyExists { .. })
    ));

    rt.exit("f1", 3);
    assert_eq!(
        rt.wait("f1").await.unwrap().state,
        TaskState::Exited {
            code: Some(3),
            signal: None,
            oom: false,
        }
    );
    assert_eq!(
        events.recv().await.unwrap().state,
        TaskState::Exited {
            code: Some(3),
            signal: None,
            oom: false,
        }
    );

    rt.fail_next_start("boom");
    let st = rt
        .start(&spec("f2", Path::new("/run/x"), "true"))
        .await
        .unwrap();
    assert_eq!(
        st.state,
        TaskState::Failed {
            error: "boom".into()
        }
    );

    let s3 = spec("f3", Path::new("/run/x"), "true");
    rt.start(&s3).await.unwrap();
    rt.stop("f3", Some(Duration::from_secs(1))).await.unwrap();
    assert_eq!(
        rt.status("f3").unwrap().state,
        TaskState::Exited {
            code: None,
            signal: Some(libc::SIGTERM),
            oom: false,
        }
    );
    assert!(matches!(
        rt.stop("nope", Some(Duration::ZERO)).await,
        Err(Error::NotFound { .. })
    ));
    rt.remove("f3").await.unwrap();
    assert!(rt.status("f3").is_none());
    assert_eq!(rt.list().len(), 2);
    assert_eq!(rt.adopt().await.unwrap().len(), 2);
    assert_eq!(rt.calls().first(), Some(&FakeCall::Start(s.clone())));
    assert_eq!(rt.calls().last(), Some(&FakeCall::Adopt));
}
