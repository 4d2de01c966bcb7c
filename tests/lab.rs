//! `weft lab`, end to end: real `weft lab up` (real daemons in namespaces),
//! `status`, `exec`, and `down` leaving nothing behind, also after
//! `kill -9` and with two labs side by side.
//!
//! Every test keeps its labs under its own temporary root (the hidden
//! `WEFT_LAB_ROOT`) with names unique to the process, and tears them down
//! on drop even when it fails. What is left behind is checked with the
//! test's own reading of `/proc` (mount table, processes, namespaces), not
//! with the code under test.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{WEFT, parse_node_ls, wait_for};

/// Labs of one test under a temporary root; `down --all` on drop.
struct Labs {
    root: tempfile::TempDir,
}

impl Labs {
    fn new(test: &str) -> Labs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the lab tests need root (network namespaces)"
        );
        let root = tempfile::Builder::new()
            .prefix(&format!("weft-lab-{test}-"))
            .tempdir()
            .expect("temp dir");
        Labs { root }
    }

    fn dir(&self, lab: &str) -> PathBuf {
        self.root.path().join(lab)
    }

    /// Runs `weft ARGS` with this test's labs root.
    fn weft(&self, args: &[&str]) -> Output {
        Command::new(WEFT)
            .args(args)
            .env("WEFT_LAB_ROOT", self.root.path())
            .env_remove("WEFT_HOST")
            .stdin(Stdio::null())
            .output()
            .expect("run weft")
    }

    /// Runs `weft ARGS`, panics unless it succeeds; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.weft(args);
        assert!(
            out.status.success(),
            "weft {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `weft ARGS`, panics if it succeeds; returns (exit code, stderr).
    fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.weft(args);
        assert!(
            !out.status.success(),
            "weft {args:?} unexpectedly succeeded:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn up(&self, lab: &str, managers: u8, workers: u8) -> String {
        self.ok(&[
            "lab",
            "up",
            "--name",
            lab,
            "--managers",
            &managers.to_string(),
            "--workers",
            &workers.to_string(),
            "--underlay",
            "198.18.0.0/24",
        ])
    }

    fn state(&self, lab: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir(lab).join("lab.json")).expect("lab.json");
        serde_json::from_str(&text).expect("lab.json is JSON")
    }

    /// What a lab made, read independently before it is torn down.
    fn traces(&self, lab: &str) -> Traces {
        let state = self.state(lab);
        let nodes = state["nodes"].as_array().expect("nodes");
        let pids = nodes
            .iter()
            .map(|n| n["pid"].as_i64().expect("pid") as i32)
            .collect();
        let mut netns: BTreeSet<(u64, u64)> = mounts_under(&self.dir(lab))
            .into_iter()
            .filter(|(_, fs)| fs == "nsfs")
            .filter_map(|(mp, _)| ns_of(&mp))
            .collect();
        // The daemons' own namespaces too (mount and UTS).
        for n in nodes {
            let pid = n["pid"].as_i64().expect("pid");
            for kind in ["mnt", "uts"] {
                if let Some(id) = ns_of(Path::new(&format!("/proc/{pid}/ns/{kind}"))) {
                    netns.insert(id);
                }
            }
        }
        Traces {
            dir: self.dir(lab),
            pids,
            namespaces: netns,
            existing: processes().iter().map(|p| (p.pid, p.start)).collect(),
        }
    }
}

impl Drop for Labs {
    fn drop(&mut self) {
        let out = self.weft(&["lab", "down", "--all", "--force"]);
        if !out.status.success() {
            eprintln!(
                "cleanup: weft lab down --all failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Backstop for a broken `down`: nothing may outlive the test.
        let report = weft_overlay::linux::topology::cleanup_run_dir(self.root.path());
        if !report.is_clean() {
            eprintln!("cleanup: {report:?}");
        }
    }
}

/// What a lab made: its directory, daemon pids, and namespaces (pinned
/// network namespaces, the daemons' mount and UTS namespaces).
struct Traces {
    dir: PathBuf,
    pids: Vec<i32>,
    namespaces: BTreeSet<(u64, u64)>,
    /// Processes (pid, start time) that existed when the traces were taken:
    /// the kernel reuses the inode numbers of freed namespaces, so a
    /// process of another test's lab, started later, may live in a
    /// "namespace of this lab" that is really a new one.
    existing: BTreeSet<(i32, u64)>,
}

fn ns_of(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// (mount point, fs type) of this process's mounts at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<(PathBuf, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mp = left.split(' ').nth(4)?.replace("\\040", " ");
            Some((PathBuf::from(mp), right.split(' ').next()?.to_owned()))
        })
        .filter(|(mp, _)| mp.starts_with(dir))
        .collect()
}

/// The command line of the test's stand-in tasks.
const SLEEP_600: &[u8] = b"sleep\x00600\x00";

/// A live process.
struct Proc {
    pid: i32,
    /// Start time (clock ticks after boot): with the pid, names a process.
    start: u64,
    cmd: Vec<u8>,
    /// Its net, mnt and UTS namespaces.
    ns: Vec<(u64, u64)>,
}

impl Proc {
    fn is_sleep_in(&self, namespaces: &BTreeSet<(u64, u64)>) -> bool {
        self.cmd.starts_with(SLEEP_600) && self.ns.iter().any(|n| namespaces.contains(n))
    }
}

/// Live (not zombie) processes.
fn processes() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
                return None;
            }
            let start = fields.get(19)?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ns = ["net", "mnt", "uts"]
                .iter()
                .filter_map(|k| ns_of(Path::new(&format!("/proc/{pid}/ns/{k}"))))
                .collect();
            Some(Proc {
                pid,
                start,
                cmd,
                ns,
            })
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    processes().iter().any(|p| p.pid == pid)
}

/// Nothing of the lab is left: no directory, no mounts, no process naming
/// it or living in one of its namespaces.
fn assert_no_trace(t: &Traces) {
    assert!(!t.dir.exists(), "{} still exists", t.dir.display());
    let mounts = mounts_under(&t.dir);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let mut marker = t.dir.as_os_str().as_encoded_bytes().to_vec();
    marker.push(b'/');
    for p in processes() {
        let cmd = String::from_utf8_lossy(&p.cmd);
        assert!(
            !p.cmd.windows(marker.len()).any(|w| w == marker.as_slice()),
            "process {} of the lab survived: {cmd}",
            p.pid
        );
        assert!(
            !(t.existing.contains(&(p.pid, p.start))
                && p.ns.iter().any(|n| t.namespaces.contains(n))),
            "process {} ({cmd}) still lives in a namespace of the lab",
            p.pid
        );
    }
    for pid in &t.pids {
        assert!(!alive(*pid), "daemon {pid} survived");
    }
}

/// A lab name unique to this process and test.
fn lab_name(test: &str) -> String {
    format!("t{}-{test}", std::process::id())
}

#[test]
fn up_status_exec_down() {
    let labs = Labs::new("basic");
    let lab = lab_name("basic");
    let out = labs.up(&lab, 1, 1);
    assert!(out.contains("cluster formed in"), "{out}");
    assert!(
        out.contains(&format!("lab exec {lab} m1 -- weft node ls")),
        "{out}"
    );

    // A second `up` of the same name is refused, and changes nothing.
    let (_, err) = labs.fails(&["lab", "up", "--name", &lab, "--managers", "1"]);
    assert!(err.contains("already exists"), "{err}");

    let ls = labs.ok(&["lab", "ls"]);
    let row = ls.lines().find(|l| l.starts_with(&lab)).expect("ls row");
    let f: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &f[1..6],
        ["1", "1", "198.18.0.0/24", "2/2", "ready"],
        "{ls}"
    );

    let status = labs.ok(&["lab", "status", &lab]);
    for (node, role, addr) in [
        ("m1", "manager", "198.18.0.1"),
        ("w1", "worker", "198.18.0.2"),
    ] {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{node} ")))
            .unwrap_or_else(|| panic!("no {node} in status:\n{status}"));
        assert!(
            line.contains(role) && line.contains(addr) && line.contains("running"),
            "{line}"
        );
    }
    assert!(status.contains("Ready"), "status shows node ls: {status}");

    // On the worker: the local daemon is not a manager; the exit code passes through.
    let (code, err) = labs.fails(&["lab", "exec", &lab, "w1", "--", "weft", "node", "ls"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a manager"), "{err}");

    // On m1: two nodes, both Ready, m1 is the one asked.
    let rows = parse_node_ls(&labs.ok(&["lab", "exec", &lab, "m1", "--", "weft", "node", "ls"]));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.status == "Ready"), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.is_self && r.hostname == "m1"),
        "{rows:?}"
    );

    // The node's namespaces: its hostname, its eth0 address, any exit code.
    let host = labs.ok(&["lab", "exec", &lab, "w1", "--", "hostname"]);
    assert_eq!(host.trim(), "w1");
    let addrs = labs.ok(&[
        "lab", "exec", &lab, "w1", "--", "ip", "-j", "-4", "addr", "show", "eth0",
    ]);
    assert!(addrs.contains("198.18.0.2"), "{addrs}");
    let (code, _) = labs.fails(&["lab", "exec", &lab, "m1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code, 7);
    let (_, err) = labs.fails(&["lab", "exec", &lab, "w9", "--", "true"]);
    assert!(err.contains("no node w9"), "{err}");

    let traces = labs.traces(&lab);
    let out = labs.ok(&["lab", "down", &lab]);
    assert!(out.contains("is down"), "{out}");
    assert_no_trace(&traces);

    // Gone: down again is an error, unless forced.
    let (_, err) = labs.fails(&["lab", "down", &lab]);
    assert!(err.contains("no lab"), "{err}");
    labs.ok(&["lab", "down", &lab, "--force"]);
}

#[test]
fn down_cleans_up_after_kill_9_and_leftover_processes() {
    let labs = Labs::new("kill");
    let lab = lab_name("kill");
    labs.up(&lab, 1, 1);

    // A "task" of m1: detached, in a network namespace of its own but in
    // m1's mount namespace; then m1's daemon dies with SIGKILL.
    // (Its output goes elsewhere: an inherited pipe would keep `ok` waiting.)
    labs.ok(&[
        "lab",
        "exec",
        &lab,
        "m1",
        "--",
        "sh",
        "-c",
        "setsid -f unshare -n sleep 600 </dev/null >/dev/null 2>&1",
    ]);
    // A process left in w1's network namespace by a still-running exec.
    let mut exec = Command::new(WEFT)
        .args(["lab", "exec", &lab, "w1", "--", "sleep", "600"])
        .env("WEFT_LAB_ROOT", labs.root.path())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn exec");
    let traces = labs.traces(&lab);
    wait_for("the sleeps to start", Duration::from_secs(10), || {
        processes()
            .iter()
            .filter(|p| p.is_sleep_in(&traces.namespaces))
            .count()
            == 2
    });
    let m1 = traces.pids[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m1),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    wait_for("m1's daemon to die", Duration::from_secs(10), || !alive(m1));
    let status = labs.ok(&["lab", "status", &lab]);
    let line = status.lines().find(|l| l.starts_with("m1 ")).expect("m1");
    assert!(line.contains("dead"), "{status}");

    let out = labs.ok(&["lab", "down", &lab]);
    assert!(out.contains("is down"), "{out}");
    let st = exec.wait().expect("exec ends");
    assert_eq!(st.code(), Some(137), "the exec'd sleep was killed");
    assert_no_trace(&traces);
    let sleeps: Vec<i32> = processes()
        .iter()
        .filter(|p| p.is_sleep_in(&traces.namespaces))
        .map(|p| p.pid)
        .collect();
    assert!(sleeps.is_empty(), "sleeps survived: {sleeps:?}");
}

#[test]
fn two_labs_side_by_side() {
    let labs = Labs::new("pair");
    let a = lab_name("a");
    let b = lab_name("b");
    labs.up(&a, 1, 0);
    labs.up(&b, 1, 1);
    let ls = labs.ok(&["lab", "ls"]);
    assert!(ls.contains(&a) && ls.contains(&b), "{ls}");

    // Same underlay addresses, separate clusters.
    let node_ls = |lab: &str| {
        parse_node_ls(&labs.ok(&["lab", "exec", lab, "m1", "--", "weft", "node", "ls"]))
    };
    let ra = node_ls(&a);
    let rb = node_ls(&b);
    assert_eq!(ra.len(), 1, "{ra:?}");
    assert_eq!(rb.len(), 2, "{rb:?}");
    assert_ne!(ra[0].id, rb.iter().find(|r| r.hostname == "m1").unwrap().id);

    // Without a name, commands that need one refuse to guess.
    let (_, err) = labs.fails(&["lab", "status"]);
    assert!(err.contains("several labs"), "{err}");

    let ta = labs.traces(&a);
    let tb = labs.traces(&b);
    labs.ok(&["lab", "down", &a]);
    assert_no_trace(&ta);

    // b is untouched: daemons alive, namespaces pinned, cluster Ready.
    for pid in &tb.pids {
        assert!(alive(*pid), "b's daemon {pid} died with a");
    }
    let pins = mounts_under(&tb.dir)
        .into_iter()
        .filter(|(_, fs)| fs == "nsfs")
        .count();
    assert_eq!(pins, 3, "switch + 2 hosts");
    let rb = node_ls(&b);
    assert!(
        rb.len() == 2 && rb.iter().all(|r| r.status == "Ready"),
        "{rb:?}"
    );
    // And now `status` picks the only lab left.
    let status = labs.ok(&["lab", "status"]);
    assert!(status.contains(&format!("Lab {b}")), "{status}");

    labs.ok(&["lab", "down", "--all"]);
    assert_no_trace(&tb);
}

#[test]
fn bad_input_is_refused_clearly() {
    let labs = Labs::new("input");
    let cases: &[(&[&str], &str)] = &[
        (&["lab", "up", "--managers", "0"], "1..=7"),
        (&["lab", "up", "--managers", "8"], "1..=7"),
        (&["lab", "up", "--workers", "21"], "0..=20"),
        (&["lab", "up", "--name", "Bad_Name"], "lowercase"),
        (&["lab", "up", "--name", &"x".repeat(25)], "1 to 24"),
        (
            &["lab", "up", "--underlay", "10.0.0.0/24"],
            "outside 198.18.0.0/15",
        ),
        (
            &["lab", "up", "--underlay", "198.18.0.1/24"],
            "did you mean 198.18.0.0/24",
        ),
        (&["lab", "up", "--underlay", "nonsense"], "not a subnet"),
        (
            &[
                "lab",
                "up",
                "--underlay",
                "198.18.0.0/30",
                "--managers",
                "3",
                "--workers",
                "0",
            ],
            "room for 2 hosts",
        ),
        (
            &["lab", "exec", "nolab", "m1", "--", "true"],
            "no lab nolab",
        ),
        (&["lab", "down", "nolab"], "no lab nolab"),
    ];
    for (args, want) in cases {
        let (_, err) = labs.fails(args);
        assert!(
            err.contains(want),
            "weft {args:?}: wanted {want:?} in: {err}"
        );
    }
    // Nothing was created by any of them.
    let left: Vec<_> = std::fs::read_dir(labs.root.path())
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    labs.ok(&["lab", "down", "nolab", "--force"]);
    labs.ok(&["lab", "ls"]);

    // `down` deletes only what looks like a lab.
    let stranger = labs.dir("notalab").join("sub");
    std::fs::create_dir_all(&stranger).expect("mkdir");
    std::fs::write(stranger.join("f"), "keep me").expect("write");
    let (_, err) = labs.fails(&["lab", "down", "notalab"]);
    assert!(err.contains("not a lab directory"), "{err}");
    labs.ok(&["lab", "down", "--all"]);
    assert!(stranger.join("f").exists());
}

/// Starts `weft lab up` for a 2+6 lab and returns it once the daemons
/// are being started (the state file lists pids), i.e. mid-way.
fn up_in_background(labs: &Labs, lab: &str) -> std::process::Child {
    let mut child = Command::new(WEFT)
        .args([
            "lab",
            "up",
            "--name",
            lab,
            "--managers",
            "2",
            "--workers",
            "6",
        ])
        .env("WEFT_LAB_ROOT", labs.root.path())
        .env_remove("WEFT_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lab up");
    let state = labs.dir(lab).join("lab.json");
    // Polled quickly: the window between "daemons started" and "cluster
    // formed" is short.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&state)
        .unwrap_or_default()
        .contains("\"pid\": ")
    {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("lab up ends");
            panic!(
                "lab up never started daemons: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

#[test]
fn interrupted_up_tears_down_what_it_made() {
    let labs = Labs::new("intr");
    let lab = lab_name("intr");
    let child = up_in_background(&labs, &lab);
    let traces = labs.traces(&lab);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = child.wait_with_output().expect("lab up ends");
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // Too late: the cluster formed before the signal arrived.
        eprintln!("lab up finished before SIGINT; checking down instead");
        labs.ok(&["lab", "down", &lab]);
    } else {
        assert!(err.contains("interrupted"), "{err}");
    }
    assert_no_trace(&traces);
}

#[test]
fn down_cleans_up_after_a_crashed_up() {
    let labs = Labs::new("crash");
    let lab = lab_name("crash");
    let mut child = up_in_background(&labs, &lab);
    let traces = labs.traces(&lab);
    child.kill().expect("kill -9 lab up");
    child.wait().expect("reaped");
    // The daemons outlive it: a half-built lab is left behind.
    assert!(traces.pids.iter().any(|p| alive(*p)));
    let ls = labs.ok(&["lab", "ls"]);
    assert!(ls.contains(&lab), "{ls}");
    labs.ok(&["lab", "down", &lab]);
    assert_no_trace(&traces);
}
