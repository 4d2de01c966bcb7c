//! End-to-end harness: hosts are network namespaces on a private underlay
//! (198.18.0.0/24, reserved for benchmarking), each running a real
//! `weft daemon` process; the tests drive the real CLI.
//!
//! Everything a test makes lives under its own temporary directory (pinned
//! namespaces, data dirs, sockets) and is removed on drop, also when the
//! test fails: daemons are killed, namespaces unpinned, files deleted.

#![allow(dead_code)]

// The private containerd of weft-containerd-api's tests, shared rather than copied.
pub mod bench;
pub mod browser;
#[path = "../../proto/containerd/tests/common/containerd.rs"]
pub mod containerd;
pub mod disk;
pub mod dockerd;
pub mod image;
pub mod lookups;
pub mod one_node;
pub mod podman;
pub mod pty;
pub mod swarm;
pub mod vip_probe;
pub mod wire;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use weft_overlay::linux::topology::Underlay;

/// The weft binary under test.
pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// A lab of hosts for one test.
pub struct Lab {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    underlay: Option<Underlay>,
    daemons: Vec<Option<Child>>,
    names: Vec<String>,
    /// Environment variables every daemon started from now on gets.
    daemon_env: Vec<(String, String)>,
    /// Daemons started from now on get a mount namespace of their own
    /// with an empty tmpfs on `/run` (see [`Lab::private_run`]).
    private_run: bool,
    /// The hosts' underlay is IPv6 only (see [`Lab::ipv6_underlay`]).
    ipv6: bool,
}

impl Lab {
    /// Builds hosts `names` on a fresh underlay. Needs root.
    pub fn new(test: &str, names: &[&str]) -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "end-to-end tests need root (network namespaces)"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("weft-e2e-{test}-"))
            .tempdir()
            .expect("temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let subnet = "198.18.0.0/24".parse().expect("subnet");
        let underlay = rt
            .block_on(Underlay::create(dir.path(), "u", subnet, names))
            .expect("underlay");
        Lab {
            dir,
            rt,
            underlay: Some(underlay),
            daemons: names.iter().map(|_| None).collect(),
            names: names.iter().map(|s| s.to_string()).collect(),
            daemon_env: Vec::new(),
            private_run: false,
            ipv6: false,
        }
    }

    /// Makes the underlay IPv6 only: each host's `eth0` gets
    /// `2001:2::N/64` (RFC 5180's benchmarking range; N as the IPv4 host
    /// part) and loses its IPv4 address. [`Lab::addr`] then gives the IPv6
    /// address. Call before starting daemons.
    pub fn ipv6_underlay(&mut self) {
        for (i, host) in self.names.clone().iter().enumerate() {
            let pin = self.host_netns(host);
            let v6 = format!("2001:2::{}/64", i + 1);
            let v4 = format!("{}/24", self.addr(host));
            for args in [
                vec![
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    v6.as_str(),
                    "dev",
                    "eth0",
                    "nodad",
                ],
                vec!["ip", "-4", "addr", "del", v4.as_str(), "dev", "eth0"],
            ] {
                let out = nsenter(&pin, &args);
                assert!(
                    out.status.success(),
                    "{args:?} on {host}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        self.ipv6 = true;
    }

    fn idx(&self, host: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == host)
            .unwrap_or_else(|| panic!("no host {host}"))
    }

    /// The host's underlay address.
    pub fn addr(&self, host: &str) -> String {
        if self.ipv6 {
            return format!("2001:2::{}", self.idx(host) + 1);
        }
        self.underlay
            .as_ref()
            .expect("underlay")
            .host(host)
            .expect("host")
            .addr()
            .to_string()
    }

    /// The host's files.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join("hosts").join(host)
    }

    /// The host's data dir.
    pub fn data_dir(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("data")
    }

    fn socket(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("weft.sock")
    }

    /// Starts (or restarts) the daemon of `host` and waits for its socket.
    pub fn start(&mut self, host: &str) {
        self.start_with(host, &[]);
    }

    /// As [`Lab::start`], with extra `weft daemon` flags.
    /// Returns what the daemon said with READY=1 (its sd_notify message).
    pub fn start_with(&mut self, host: &str, extra: &[&str]) -> String {
        self.start_exe(host, Path::new(WEFT), extra)
    }

    /// As [`Lab::start_with`], running the binary at `exe` (a copy of
    /// [`WEFT`] elsewhere is what an upgrade looks like to the node).
    pub fn start_exe(&mut self, host: &str, exe: &Path, extra: &[&str]) -> String {
        let i = self.idx(host);
        assert!(self.daemons[i].is_none(), "{host} already running");
        // The daemon says when it is ready as it does to systemd
        // (Type=notify): READY=1 on NOTIFY_SOCKET once it serves its
        // socket and has applied its saved config.
        let notify_path = self.notify_socket(host);
        std::fs::create_dir_all(self.host_dir(host)).expect("host dir");
        let _ = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
        let child = self.spawn_daemon_exe(host, exe, extra);
        self.daemons[i] = Some(child);
        let said = wait_for_ready(&notify, Duration::from_secs(90));
        let _ = std::fs::remove_file(&notify_path);
        let said = match said {
            Ok(m) => m,
            Err(e) => panic!(
                "{host}'s daemon: {e}; its log ends:\n{}",
                self.log_tail(host)
            ),
        };
        let out = self.try_weft(host, &["info"]);
        assert!(
            out.status.success(),
            "{host}'s daemon said READY=1 but does not answer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        said
    }

    /// Starts the daemon of `host` expecting it to refuse to run: waits for
    /// it to exit and returns its exit status and the end of its log.
    pub fn start_expecting_exit(&mut self, host: &str) -> (std::process::ExitStatus, String) {
        self.start_expecting_exit_with(host, &[])
    }

    /// As [`Lab::start_expecting_exit`], with extra `weft daemon` flags.
    pub fn start_expecting_exit_with(
        &mut self,
        host: &str,
        extra: &[&str],
    ) -> (std::process::ExitStatus, String) {
        let i = self.idx(host);
        assert!(self.daemons[i].is_none(), "{host} already running");
        let mut child = self.spawn_daemon(host, extra);
        let mut status = None;
        wait_for(
            &format!("{host}'s daemon to exit"),
            Duration::from_secs(20),
            || {
                status = child.try_wait().expect("wait");
                status.is_some()
            },
        );
        (status.expect("exited"), self.log_tail(host))
    }

    /// The NOTIFY_SOCKET the daemon of `host` is given.
    fn notify_socket(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("notify.sock")
    }

    fn spawn_daemon(&self, host: &str, extra: &[&str]) -> Child {
        self.spawn_daemon_exe(host, Path::new(WEFT), extra)
    }

    fn spawn_daemon_exe(&self, host: &str, exe: &Path, extra: &[&str]) -> Child {
        let hd = self.host_dir(host);
        std::fs::create_dir_all(&hd).expect("host dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(hd.join("daemon.log"))
            .expect("log");
        let ns = self
            .underlay
            .as_ref()
            .expect("underlay")
            .host(host)
            .expect("host")
            .ns_command()
            .parent_death_signal(nix::sys::signal::Signal::SIGKILL);
        // Where runtimes keep machine-wide state of their own (podman's
        // CNI result cache and blob-info cache) is private too: only the
        // empty directories are made on the host when missing.
        let ns = if self.private_run {
            ns.tmpfs("/run")
                .tmpfs("/var/lib/cni")
                .tmpfs("/var/lib/containers")
        } else {
            ns
        };
        let mut cmd = ns.command(exe).expect("command");
        cmd.args(["daemon", "--hostname", host])
            .arg("--data-dir")
            .arg(hd.join("data"))
            .arg("--exec-root")
            .arg(hd.join("run"))
            .arg("--socket")
            .arg(self.socket(host))
            .args(extra)
            .env("WEFT_LOG", "info,openraft=warn")
            .env("NOTIFY_SOCKET", self.notify_socket(host))
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        cmd.spawn().expect("spawn daemon")
    }

    /// Gives every daemon started from now on a mount namespace of its own
    /// with an empty tmpfs on `/run`, `/var/lib/cni` and
    /// `/var/lib/containers`: a runtime run in it (`nsenter -m -t
    /// PID`, see [`Lab::pid`]) pins its containers' namespaces in that
    /// `/run` tmpfs, where that daemon sees them and nothing else does.
    pub fn private_run(&mut self) {
        self.private_run = true;
    }

    /// Sets `key=value` in the environment of every daemon started from
    /// now on (a test-only switch such as a failpoint).
    pub fn set_daemon_env(&mut self, key: &str, value: &str) {
        self.daemon_env.push((key.to_string(), value.to_string()));
    }

    /// Starts every host's daemon.
    pub fn start_all(&mut self) {
        for n in self.names.clone() {
            self.start(&n);
        }
    }

    /// kill -9 the daemon of `host`.
    pub fn kill9(&mut self, host: &str) {
        let i = self.idx(host);
        if let Some(mut c) = self.daemons[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket(host));
    }

    /// Stops the daemon of `host` as `systemctl stop` does (SIGTERM, then
    /// waits for it to exit; SIGKILL after 20 s); returns how long it took.
    pub fn sigterm(&mut self, host: &str) -> Duration {
        let i = self.idx(host);
        let started = Instant::now();
        if let Some(mut c) = self.daemons[i].take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            while c.try_wait().expect("wait").is_none() {
                if started.elapsed() > Duration::from_secs(20) {
                    eprintln!("{host}'s daemon ignored SIGTERM for 20 s: killed");
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = std::fs::remove_file(self.socket(host));
        started.elapsed()
    }

    /// Runs `weft ARGS` against `host`'s daemon; returns the raw output.
    pub fn try_weft(&self, host: &str, args: &[&str]) -> Output {
        Command::new(WEFT)
            .arg("-H")
            .arg(format!("unix://{}", self.socket(host).display()))
            .args(args)
            .env_remove("WEFT_HOST")
            .output()
            .expect("run weft")
    }

    /// Runs `weft ARGS` inside `host`'s network namespace (for -H tcp://).
    pub fn weft_in_netns(&self, host: &str, args: &[&str]) -> Output {
        let mut cmd = self
            .underlay
            .as_ref()
            .expect("underlay")
            .host(host)
            .expect("host")
            .command(WEFT)
            .expect("command");
        cmd.args(args)
            .env_remove("WEFT_HOST")
            .output()
            .expect("run weft")
    }

    /// Runs `weft ARGS` inside `from`'s network namespace against `via`'s
    /// manager port, with the certificate files in `certs` (a node's
    /// `<data dir>/certs`, or a copy of one).
    pub fn weft_over_tcp(&self, from: &str, via: &str, certs: &Path, args: &[&str]) -> Output {
        let remote = format!("tcp://{}:4377", self.addr(via));
        let f = |n: &str| certs.join(n).display().to_string();
        let (ca, cert, key) = (f("ca.pem"), f("node.pem"), f("node-key.pem"));
        let mut all = vec![
            "-H",
            &remote,
            "--tlscacert",
            &ca,
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ];
        all.extend_from_slice(args);
        self.weft_in_netns(from, &all)
    }

    /// Runs `weft ARGS` against `host` and returns stdout; panics with
    /// stderr and the daemon log if it fails.
    pub fn weft(&self, host: &str, args: &[&str]) -> String {
        let out = self.try_weft(host, args);
        if !out.status.success() {
            panic!(
                "weft {args:?} on {host} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(host)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `weft logs TASK` on `host`: the task's stdout and then its stderr
    /// (the CLI prints them apart), for tests that look for a line in
    /// either.
    pub fn logs(&self, host: &str, task: &str) -> String {
        let out = self.try_weft(host, &["logs", task]);
        if !out.status.success() {
            panic!(
                "weft logs {task} on {host} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(host)
            );
        }
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Runs `weft ARGS` expecting failure; returns stderr.
    /// Runs `weft ARGS` on `host`, which must succeed; its stdout and
    /// stderr (progress) together.
    pub fn weft_full(&self, host: &str, args: &[&str]) -> String {
        let out = self.try_weft(host, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "weft {args:?} on {host} failed: {text}"
        );
        text
    }

    pub fn weft_err(&self, host: &str, args: &[&str]) -> String {
        let out = self.try_weft(host, args);
        assert!(
            !out.status.success(),
            "weft {args:?} on {host} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The last lines of `host`'s daemon log.
    pub fn log_tail(&self, host: &str) -> String {
        let log = self.daemon_log(host);
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!("--- {host} daemon log ---\n{}", lines[from..].join("\n"))
    }

    /// `weft init` on `host` with its underlay address; returns (worker, manager) tokens.
    pub fn init(&self, host: &str, extra: &[&str]) -> (String, String) {
        let addr = self.addr(host);
        let mut args = vec!["init", "--advertise-addr", addr.as_str()];
        args.extend_from_slice(extra);
        self.weft(host, &args);
        let w = self
            .weft(host, &["join-token", "-q", "worker"])
            .trim()
            .to_string();
        let m = self
            .weft(host, &["join-token", "-q", "manager"])
            .trim()
            .to_string();
        (w, m)
    }

    /// `weft join` of `host` through `via`.
    pub fn join(&self, host: &str, token: &str, via: &str) -> String {
        let remote = match self.addr(via) {
            a if a.contains(':') => format!("[{a}]:4377"),
            a => format!("{a}:4377"),
        };
        let addr = self.addr(host);
        self.weft(
            host,
            &["join", "--token", token, "--advertise-addr", &addr, &remote],
        )
    }

    /// The node of every task of `service` whose current state is running
    /// (`service ps` on `host`, read by the columns of its header).
    pub fn running_on(&self, host: &str, service: &str) -> Vec<String> {
        let out = self.weft(host, &["service", "ps", service]);
        let mut lines = out.lines();
        let head = lines.next().unwrap_or_default();
        let (Some(node), Some(desired), Some(current)) = (
            head.find("NODE"),
            head.find("DESIRED"),
            head.find("CURRENT"),
        ) else {
            panic!("no NODE, DESIRED and CURRENT columns in:\n{out}")
        };
        lines
            .filter(|l| l.get(current..).is_some_and(|c| c.starts_with("running")))
            .map(|l| l.get(node..desired).unwrap_or_default().trim().to_string())
            .collect()
    }

    /// `node ls` on `host`, parsed into (hostname, status, manager status, is_self) rows.
    pub fn node_ls(&self, host: &str) -> Vec<NodeRow> {
        parse_node_ls(&self.weft(host, &["node", "ls"]))
    }

    /// `host`'s daemon log so far (empty when there is none yet).
    pub fn daemon_log(&self, host: &str) -> String {
        std::fs::read_to_string(self.host_dir(host).join("daemon.log")).unwrap_or_default()
    }

    /// The status `node ls` on `from` shows for node `hostname` (empty when
    /// it is not listed).
    pub fn node_status(&self, from: &str, hostname: &str) -> String {
        self.node_ls(from)
            .into_iter()
            .find(|r| r.hostname == hostname)
            .map(|r| r.status)
            .unwrap_or_default()
    }

    /// Whether `node ls` on `from` shows node `hostname` Ready.
    pub fn node_ready(&self, from: &str, hostname: &str) -> bool {
        self.node_ls(from)
            .iter()
            .any(|r| r.hostname == hostname && r.status == "Ready")
    }

    /// The pinned network namespace of task `id` on `host`.
    pub fn task_netns(&self, host: &str, id: &str) -> PathBuf {
        self.host_dir(host)
            .join("run/netns")
            .join(format!("task-{id}"))
    }

    /// The pinned network namespace of an underlay host.
    pub fn host_netns(&self, host: &str) -> PathBuf {
        self.dir.path().join("u/netns").join(format!("host-{host}"))
    }

    /// The underlay switch's namespace (an independent view of what
    /// crosses between hosts).
    pub fn switch_netns(&self) -> PathBuf {
        self.dir.path().join("u/netns/switch")
    }
    /// Creates the attachable encrypted overlay `name` on `subnet` from `host`.
    pub fn encrypted_network(&self, host: &str, subnet: &str, name: &str) {
        self.weft(
            host,
            &[
                "network",
                "create",
                "--attachable",
                "-o",
                "encrypted",
                "--subnet",
                subnet,
                name,
            ],
        );
    }

    /// Creates the overlay `name` on `subnet` from `host`.
    pub fn overlay_network(&self, host: &str, subnet: &str, name: &str) {
        self.weft(host, &["network", "create", "--subnet", subnet, name]);
    }

    /// Creates the attachable overlay `name` on `subnet` from `host`.
    pub fn attachable_network(&self, host: &str, subnet: &str, name: &str) {
        self.weft(
            host,
            &[
                "network",
                "create",
                "--attachable",
                "--subnet",
                subnet,
                name,
            ],
        );
    }

    /// Creates the attachable dual-stack overlay `name` on `subnet` and
    /// `subnet6` from `host`.
    pub fn dual_stack_network(&self, host: &str, subnet: &str, subnet6: &str, name: &str) {
        self.weft(
            host,
            &[
                "network",
                "create",
                "--attachable",
                "--ipv6",
                "--subnet",
                subnet,
                "--subnet",
                subnet6,
                name,
            ],
        );
    }

    /// Starts `host`'s daemon on the private containerd `ctrd` (its socket,
    /// runc root and cgroup parent).
    pub fn start_on_containerd(&mut self, host: &str, ctrd: &containerd::PrivateContainerd) {
        let socket = ctrd.socket().display().to_string();
        let runc = ctrd.runc_root().display().to_string();
        self.start_with(
            host,
            &[
                "--containerd-socket",
                &socket,
                "--runc-root",
                &runc,
                "--cgroup-parent",
                ctrd.cgroup_parent(),
            ],
        );
    }

    /// `weft run -d ARGS` on `host`, then waits until the task has
    /// started (running, or already ended); returns the task ID. Panics if
    /// it failed to start.
    pub fn run_task(&self, host: &str, args: &[&str]) -> String {
        let mut full = vec!["run"];
        if !args.contains(&"-d") && !args.contains(&"--detach") {
            full.push("-d");
        }
        full.extend_from_slice(args);
        let id = self.weft(host, &full).trim().to_string();
        let mut row = String::new();
        wait_for("the task to start", Duration::from_secs(60), || {
            row = self
                .weft(host, &["ps", "-a"])
                .lines()
                .find(|l| l.starts_with(&id))
                .unwrap_or_default()
                .to_string();
            let state = row.split_whitespace().nth(2).unwrap_or_default();
            assert!(
                !matches!(state, "failed" | "rejected"),
                "task {id} failed to start: {row}\nits status: {}\n{}",
                self.weft(host, &["inspect", "-f", "{{json .State}}", &id]),
                self.log_tail(host)
            );
            matches!(state, "running" | "exited" | "shutdown")
        });
        id
    }

    /// The runtime the underlay was built with.
    pub fn rt(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// The lab's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon socket of `host`, for client threads that call daemons
    /// while the test thread restarts them (and so holds the lab mutably).
    pub fn socket_path(&self, host: &str) -> PathBuf {
        self.socket(host)
    }

    /// The process ID of `host`'s running daemon (the process the lab
    /// spawned, not a wrapper), to signal it; `None` when it is not running.
    pub fn pid(&self, host: &str) -> Option<u32> {
        self.daemons[self.idx(host)].as_ref().map(Child::id)
    }
}

/// A process stopped with SIGSTOP (a daemon frozen: it sends nothing and
/// closes nothing); continued when resumed or dropped, also when the test
/// fails.
pub struct Paused(Option<nix::unistd::Pid>);

impl Paused {
    /// Stops process `pid`.
    pub fn stop(pid: u32) -> Paused {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        Paused(Some(pid))
    }

    /// Continues it.
    pub fn resume(&mut self) {
        if let Some(pid) = self.0.take() {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.resume();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.names {
                eprintln!("{}", self.log_tail(n));
            }
        }
        for c in self.daemons.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Tasks outlive their daemon by design (their shims are detached):
        // kill whatever lives in the namespaces the daemons pinned under
        // this lab, and unpin them, so nothing of the test remains.
        for n in &self.names {
            let report =
                weft_overlay::linux::topology::cleanup_run_dir(&self.host_dir(n).join("run"));
            if !report.is_clean() {
                eprintln!("{n}: cleanup: {report:?}");
            }
        }
        if let Some(u) = self.underlay.take() {
            let report = u.destroy();
            if !report.is_clean() {
                eprintln!("underlay teardown: {report:?}");
            }
        }
    }
}

/// One row of `weft node ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Node ID.
    pub id: String,
    /// The row is the node asked.
    pub is_self: bool,
    /// Host name.
    pub hostname: String,
    /// Ready / Down / Unknown.
    pub status: String,
    /// Active / Pause / Drain.
    pub availability: String,
    /// When the node's certificate expires (RFC 3339), or "-".
    pub cert_expiry: String,
    /// Leader / Reachable / Unreachable / "".
    pub manager: String,
    /// The node's weft version, or "-" before it reported one.
    pub version: String,
}

/// Waits until each of `managers` is a Raft voter, as `asking` sees it. A
/// joined or promoted manager becomes one only once it holds the log; a
/// test that kills a manager before then may take the quorum with it.
pub fn wait_voters(lab: &Lab, asking: &str, managers: &[&str]) {
    for m in managers {
        wait_for(&format!("{m} a voter"), Duration::from_secs(30), || {
            let v: serde_json::Value =
                serde_json::from_str(&lab.weft(asking, &["node", "inspect", m])).expect("json");
            v[0]["ManagerStatus"]["Voter"] == true
        });
    }
}

/// Parses `weft node ls` output.
pub fn parse_node_ls(out: &str) -> Vec<NodeRow> {
    let head = out.lines().next().unwrap_or_default();
    let (Some(manager_col), Some(version_col)) =
        (head.find("MANAGER STATUS"), head.find("ENGINE VERSION"))
    else {
        panic!("no MANAGER STATUS and ENGINE VERSION columns in:\n{out}")
    };
    out.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f: Vec<&str> = l
                .get(..manager_col)
                .unwrap_or(l)
                .split_whitespace()
                .collect();
            let is_self = f.get(1) == Some(&"*");
            if is_self {
                f.remove(1);
            }
            let col = |from: usize, to: usize| {
                l.get(from..to.min(l.len()))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            NodeRow {
                id: f[0].to_string(),
                is_self,
                hostname: f[1].to_string(),
                status: f[2].to_string(),
                availability: f[3].to_string(),
                cert_expiry: f[4].to_string(),
                manager: col(manager_col, version_col),
                version: col(version_col, l.len()),
            }
        })
        .collect()
}

/// Runs `f` on a thread inside `host`'s network namespace, with a tokio
/// runtime of its own (the manager port is reachable only there).
pub fn in_host<T: Send + 'static>(
    lab: &Lab,
    host: &str,
    f: impl AsyncFnOnce() -> T + Send + 'static,
) -> T {
    in_netns(lab.host_netns(host), f)
}

/// As [`in_host`], for the namespace pinned at `pin` (usable from a thread
/// that has no `Lab`).
pub fn in_netns<T: Send + 'static>(pin: PathBuf, f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&pin).expect("netns pin");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .join()
    .expect("probe thread")
}

/// Runs `cmd` inside the pinned network namespace `pin` (the test's own
/// view of the kernel, not weft's).
pub fn nsenter(pin: &Path, cmd: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={}", pin.display()))
        .args(cmd)
        .output()
        .expect("nsenter")
}

/// Cuts the namespace host `pin` off the lab's underlay (its `eth0` goes
/// down): the host falls silent, as after a power loss or a pulled cable,
/// with no connection closed by anyone.
pub fn cut_links(pin: &Path) {
    let out = nsenter(pin, &["ip", "link", "set", "eth0", "down"]);
    assert!(
        out.status.success(),
        "ip link set eth0 down in {}: {}",
        pin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether one ICMP echo from the namespace `pin` to `ip` is answered
/// within a second.
pub fn pings(pin: &Path, ip: &str) -> bool {
    nsenter(pin, &["busybox", "ping", "-c", "1", "-W", "1", ip])
        .status
        .success()
}

/// As [`nsenter`], returning stdout.
pub fn nsenter_stdout(pin: &Path, cmd: &[&str]) -> String {
    String::from_utf8_lossy(&nsenter(pin, cmd).stdout).into_owned()
}

/// Addresses `name` resolves to, asking the embedded resolver from inside
/// the task namespace `pin`.
pub fn resolve(pin: &Path, name: &str) -> std::collections::BTreeSet<String> {
    let out = nsenter_stdout(pin, &["busybox", "nslookup", name, "127.0.0.11"]);
    out.split("Name:")
        .skip(1)
        .flat_map(|block| {
            block
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Address:"))
                .map(|a| a.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A sleeping host-process task named `name` on `host`, attached to
/// `network`, for probes; returns its network namespace's pin.
pub fn sleeper(lab: &Lab, host: &str, name: &str, network: &str) -> PathBuf {
    let id = lab.run_task(
        host,
        &["--name", name, "--network", network, "--", "sleep", "3600"],
    );
    lab.task_netns(host, &id)
}

/// The first address (with prefix) after `inet` in `ip -o addr` output.
pub fn addr_of_in(ip_o_addr: &str) -> Option<String> {
    ip_o_addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(str::to_owned)
}

/// `service create --detach --name NAME FLAGS… -- sleep 600` from
/// `host`: a service whose tasks sleep, returned as soon as it is stored.
pub fn detached_sleepers(lab: &Lab, host: &str, name: &str, flags: &[&str]) {
    let mut args = vec!["service", "create", "--detach", "--name", name];
    args.extend_from_slice(flags);
    args.extend(["--", "sleep", "600"]);
    lab.weft(host, &args);
}

/// A one-replica service `name` on `network` whose task sleeps (a VIP and
/// a name to resolve), created from `host`.
pub fn sleeping_service(lab: &Lab, host: &str, name: &str, network: &str) {
    sleeping_replicas(lab, host, name, network, 1);
}

/// As [`sleeping_service`], with `replicas` replicas.
pub fn sleeping_replicas(lab: &Lab, host: &str, name: &str, network: &str, replicas: u32) {
    let replicas = replicas.to_string();
    lab.weft(
        host,
        &[
            "service",
            "create",
            "--name",
            name,
            "--replicas",
            &replicas,
            "--network",
            network,
            "--",
            "sleep",
            "600",
        ],
    );
}

/// Service `web` on m1: `replicas` workers-only replicas on appnet, each
/// serving its hostname over HTTP on port 80 (`extra`: more flags).
pub fn create_web(lab: &Lab, replicas: &str, extra: &[&str]) {
    let script = "mkdir -p /tmp/www; hostname > /tmp/www/index.html; exec busybox httpd -f -p 80 -h /tmp/www";
    let mut args = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        replicas,
        "--network",
        "appnet",
        "--constraint",
        "node.role==worker",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    lab.weft("m1", &args);
}

/// The addresses of `service`'s running tasks on `network`, from
/// `service ps` on m1 (`NET=ADDR` in its address column).
pub fn service_task_ips(
    lab: &Lab,
    service: &str,
    network: &str,
) -> std::collections::BTreeSet<String> {
    let marker = format!("{network}=");
    lab.weft("m1", &["service", "ps", service])
        .lines()
        .skip(1)
        .filter(|l| l.contains(" running "))
        .filter_map(|l| l.split(marker.as_str()).nth(1))
        .map(|a| {
            a.split([' ', ',', '/'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The first VIP of `service`, as `service inspect` on `host` shows it.
pub fn vip_of(lab: &Lab, host: &str, service: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft(host, &["service", "inspect", service])).expect("json");
    v[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .expect("a VIP")
        .to_string()
}

/// Asks `http://VIP/` from the namespace `pin` until `n` different replicas
/// (first lines starting with `prefix`) have answered; returns them.
pub fn replicas_behind_vip(
    pin: &Path,
    vip: &str,
    prefix: &str,
    n: usize,
) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        &format!("{n} replicas answering through {vip}"),
        Duration::from_secs(30),
        || {
            let body = nsenter_stdout(
                pin,
                // busybox wget -T crashes on Debian 12's busybox; bound it with timeout.
                &[
                    "timeout",
                    "3",
                    "busybox",
                    "wget",
                    "-qO-",
                    &format!("http://{vip}/"),
                ],
            );
            if let Some(name) = body.lines().next().filter(|l| l.starts_with(prefix)) {
                seen.insert(name.to_string());
            }
            seen.len() == n
        },
    );
    seen
}

/// The text of a task's log directory (`<exec-root>/tasks/<id>/log`, json
/// lines), stdout and stderr together in order; empty if there is none.
/// Read straight from the files: works while the daemon is down.
pub fn task_log_text(dir: &Path) -> String {
    weft_worker::logs::text(dir)
}

/// Polls `cond` every 100 ms until it holds; panics after `timeout`.
/// Reads sd_notify(3) messages from `socket` until one says READY=1.
pub fn wait_for_ready(
    socket: &std::os::unix::net::UnixDatagram,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no READY=1 in {timeout:?} (got {seen:?})"));
        }
        socket.set_read_timeout(Some(left)).expect("timeout");
        let mut buf = [0u8; 4096];
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == "READY=1") {
                    return Ok(msg);
                }
                seen.push(msg);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("notify socket: {e}")),
        }
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `s` without terminal colour codes (a daemon's log file has them).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}
