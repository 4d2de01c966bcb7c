//! Docker Swarm 20.10 (Debian's `docker.io`) on namespace hosts: the
//! reference the container benchmarks put beside weft in the same run.
//!
//! ```text
//!   <dir>/<tag>/netns/host-<h>   the weft lab's underlay (topology.rs): one network
//!                                namespace per host, eth0 198.18.0.N/24 on a bridge
//!   <dir>/<h>/                   per host, in that namespace and a mount namespace of its own:
//!     daemon.json                an empty config (not /etc/docker/daemon.json)
//!     data/  exec/               dockerd --data-root / --exec-root (its containerd lives
//!                                under them: dockerd starts one itself)
//!     docker.sock docker.pid     -H unix://… / --pidfile
//!     tmp/                       TMPDIR of dockerd and its containerd
//!   /run/containerd              a tmpfs in the host's mount namespace only: dockerd does
//!                                not take the machine's containerd for its own, and
//!                                containerd 1.6's shim sockets (/run/containerd/s) stay inside
//!   /sys/fs/cgroup/*/<tag>-<h>   --cgroup-parent of the host's containers
//! ```
//!
//! iptables rules and bridges are made in the host's network namespace, so
//! nothing reaches the machine's own. The machine's Docker state
//! (/var/lib/docker, /run/docker, /run/containerd) is never read or written.
//!
//! Teardown ([`Drop`], also when the test fails) keeps going after a failure
//! and prints every error: services removed, containers removed (SIGKILL),
//! SIGTERM to each dockerd (which stops its containerd), SIGKILL after 15 s;
//! the underlay's teardown kills whatever is left in the host namespaces
//! (containerd, shims) and removes them with their links; what is left in
//! the cgroup parents (container processes, which live in namespaces of
//! their own) is killed and the cgroups removed; then the directory. The
//! mount namespaces, and every mount dockerd made in them, go with their
//! last process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use weft_overlay::linux::topology::{Underlay, UnderlayHost};

/// Debian's client, the daemon's version (a newer `docker` may come first
/// on PATH).
pub const DOCKER: &str = "/usr/bin/docker";
/// The cgroup v1 hierarchies (and the v2 mount) on this kind of machine.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long a dockerd may take to answer after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a dockerd may take to stop on SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one `docker` call may take during teardown.
const TEARDOWN_CALL: &str = "20";

/// One Docker "host": a dockerd in its own network and mount namespaces.
struct Host {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
}

/// A swarm of dockerd hosts for one benchmark round.
pub struct Swarm {
    tag: String,
    /// Whether [`Swarm::form`] made the hosts a swarm (else they are plain
    /// dockerd, with no services to remove).
    formed: bool,
    hosts: Vec<Host>,
    underlay: Option<Underlay>,
    dir: Option<tempfile::TempDir>,
}

impl Swarm {
    /// Starts a dockerd on each of `names`, in namespaces named after `tag`
    /// (e.g. `wbsw-<pid>-<round>`), and waits until each answers. Not a
    /// swarm yet: see [`Swarm::form`]. Needs root and `docker.io`.
    pub fn start(tag: &str, names: &[&str]) -> Swarm {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the Swarm reference needs root (network namespaces)"
        );
        assert!(
            Path::new(DOCKER).is_file() && super::containerd::find_on_path("dockerd").is_some(),
            "docker.io is not installed (bench/containers.sh installs it); the Swarm reference \
             is not skipped"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir()
            .expect("temp dir");
        let underlay = tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(Underlay::create(
                dir.path(),
                tag,
                "198.18.0.0/24".parse().expect("subnet"),
                names,
            ))
            .expect("underlay");
        let mut swarm = Swarm {
            tag: tag.to_owned(),
            formed: false,
            hosts: names
                .iter()
                .map(|n| Host {
                    name: (*n).to_owned(),
                    dir: dir.path().join(n),
                    child: None,
                })
                .collect(),
            underlay: Some(underlay),
            dir: Some(dir),
        };
        for i in 0..swarm.hosts.len() {
            let child = swarm.spawn_dockerd(i);
            swarm.hosts[i].child = Some(child);
        }
        for h in names {
            super::wait_for(&format!("{h}'s dockerd"), START_TIMEOUT, || {
                swarm.try_docker(h, &["version"]).status.success()
            });
        }
        swarm
    }

    /// dockerd's version (`20.10.24+dfsg1`), from `dockerd --version`.
    pub fn version() -> String {
        let out = Command::new("dockerd")
            .arg("--version")
            .env("PATH", "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("dockerd --version");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(2)
            .unwrap_or("?")
            .trim_end_matches(',')
            .to_owned()
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    fn cgroup_parent(&self, host: &str) -> String {
        format!("/{}-{host}", self.tag)
    }

    fn spawn_dockerd(&self, i: usize) -> Child {
        let h = &self.hosts[i];
        std::fs::create_dir_all(&h.dir).expect("host dir");
        std::fs::write(h.dir.join("daemon.json"), "{}\n").expect("daemon.json");
        let tmp = h.dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp dir");
        let log = std::fs::File::create(h.dir.join("dockerd.log")).expect("log");
        let mut cmd = self
            .ns_host(&h.name)
            .ns_command()
            .tmpfs("/run/containerd")
            .new_session()
            .parent_death_signal(Signal::SIGKILL)
            .command("dockerd")
            .expect("command");
        cmd.arg("--config-file")
            .arg(h.dir.join("daemon.json"))
            .arg("--data-root")
            .arg(h.dir.join("data"))
            .arg("--exec-root")
            .arg(h.dir.join("exec"))
            .arg("--pidfile")
            .arg(h.dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", h.dir.join("docker.sock").display()))
            .arg("--cgroup-parent")
            .arg(self.cgroup_parent(&h.name))
            // The image is loaded on every node: use it rather than ask a
            // registry first at each task start (Swarm's default, which
            // would only add a failed lookup here).
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            // Where dockerd's and containerd's own temp files go (e.g. the
            // stack dump `containerd.<pid>.stacks.log` dockerd asks for with
            // SIGUSR1 before it kills a containerd that does not answer):
            // the host's dir, removed with it.
            .env("TMPDIR", &tmp)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/bin",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        cmd.spawn().expect("spawn dockerd")
    }

    /// SIGKILL to `host`'s dockerd, as a crash would (its containerd and
    /// containers are left to the teardown).
    pub fn kill9(&mut self, host: &str) {
        let i = self
            .hosts
            .iter()
            .position(|h| h.name == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        if let Some(mut c) = self.hosts[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `docker ARGS` against `host`'s daemon; the raw output.
    pub fn try_docker(&self, host: &str, args: &[&str]) -> Output {
        self.docker_cmd(host)
            .args(args)
            .output()
            .expect("run docker")
    }

    fn docker_cmd(&self, host: &str) -> Command {
        let h = self.host(host);
        docker_client(&h.dir.join("docker.sock"), &h.dir.join("cli"))
    }

    /// `docker ARGS` against `host`; stdout. Panics with stderr and the end
    /// of dockerd's log if it fails.
    pub fn docker(&self, host: &str, args: &[&str]) -> String {
        let out = self.try_docker(host, args);
        assert!(
            out.status.success(),
            "docker {args:?} on {host} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(host)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last lines of `host`'s dockerd log.
    pub fn log_tail(&self, host: &str) -> String {
        let log =
            std::fs::read_to_string(self.host(host).dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!("--- {host} dockerd log ---\n{}", lines[from..].join("\n"))
    }

    /// The host's underlay address.
    pub fn addr(&self, host: &str) -> String {
        self.ns_host(host).addr().to_string()
    }

    /// The pin of the host's network namespace (dockerd, its containerd
    /// and the shims live in it; the containers in namespaces of their own).
    pub fn host_netns(&self, host: &str) -> PathBuf {
        self.ns_host(host).netns().path().to_owned()
    }

    /// The host's namespace on the underlay.
    fn ns_host(&self, host: &str) -> &UnderlayHost {
        self.underlay
            .as_ref()
            .and_then(|u| u.host(host))
            .unwrap_or_else(|| panic!("no underlay host {host}"))
    }

    /// `swarm init` on the first host, `swarm join` (as workers) of the
    /// others, then waits until every node is Ready.
    pub fn form(&mut self) {
        self.formed = true;
        let first = self.hosts[0].name.clone();
        let addr = self.addr(&first);
        self.docker(&first, &["swarm", "init", "--advertise-addr", &addr]);
        let token = self.docker(&first, &["swarm", "join-token", "-q", "worker"]);
        let remote = format!("{addr}:2377");
        for h in &self.hosts[1..] {
            let a = self.addr(&h.name);
            self.docker(
                &h.name,
                &[
                    "swarm",
                    "join",
                    "--token",
                    token.trim(),
                    "--advertise-addr",
                    &a,
                    &remote,
                ],
            );
        }
        super::wait_for("every node Ready", START_TIMEOUT, || {
            let out = self.docker(&first, &["node", "ls", "--format", "{{.Status}}"]);
            out.lines().filter(|l| l.trim() == "Ready").count() == self.hosts.len()
        });
    }

    /// The network namespace of container `name` on `host`, as a path any
    /// process can open (`/proc/<pid>/ns/net` of its first process: the
    /// namespace files dockerd pins live in its own mount namespace).
    pub fn container_netns(&self, host: &str, name: &str) -> PathBuf {
        let pid = self.docker(host, &["inspect", "-f", "{{.State.Pid}}", name]);
        PathBuf::from(format!("/proc/{}/ns/net", pid.trim()))
    }

    /// `docker ARGS` with a time limit, for teardown: the lines of stdout.
    fn teardown_call(&self, host: &str, args: &[&str], errors: &mut Vec<String>) -> Vec<String> {
        let cmd = self.docker_cmd(host);
        let out = Command::new("timeout")
            .arg(TEARDOWN_CALL)
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .args(args)
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect(),
            Ok(o) => {
                errors.push(format!(
                    "{host}: docker {args:?}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                Vec::new()
            }
            Err(e) => {
                errors.push(format!("{host}: docker {args:?}: {e}"));
                Vec::new()
            }
        }
    }

    /// This swarm's cgroup parents, in every hierarchy where one exists.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let hierarchies: Vec<PathBuf> = std::fs::read_dir(CGROUP_ROOT)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for h in &self.hosts {
            let parent = self.cgroup_parent(&h.name);
            for hier in &hierarchies {
                let d = hier.join(parent.trim_start_matches('/'));
                if d.is_dir() {
                    out.push(d);
                }
            }
        }
        out
    }

    /// The full teardown; returns every error met.
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let running: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.child.is_some())
            .map(|h| h.name.clone())
            .collect();
        // Services first, so that Swarm does not replace what is removed.
        if let Some(first) = running.first().filter(|_| self.formed) {
            let services = self.teardown_call(first, &["service", "ls", "-q"], &mut errors);
            if !services.is_empty() {
                let mut args = vec!["service", "rm"];
                args.extend(services.iter().map(String::as_str));
                self.teardown_call(first, &args, &mut errors);
            }
        }
        for h in &running {
            let ids = self.teardown_call(h, &["ps", "-aq"], &mut errors);
            // A few at a time: each call has a time limit.
            for chunk in ids.chunks(16) {
                let mut args = vec!["rm", "-f"];
                args.extend(chunk.iter().map(String::as_str));
                self.teardown_call(h, &args, &mut errors);
            }
        }
        for h in &self.hosts {
            if let Some(c) = &h.child {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            }
        }
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let deadline = Instant::now() + STOP_TIMEOUT;
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if matches!(c.try_wait(), Ok(None)) {
                    errors.push(format!("{}: dockerd ignored SIGTERM for 15 s", h.name));
                    let _ = c.kill();
                }
                let _ = c.wait();
            }
        }
        // Kills what is left in the host namespaces (containerd, shims),
        // then removes the namespaces and their links.
        if let Some(u) = self.underlay.take() {
            let report = u.destroy();
            if !report.is_clean() {
                errors.push(format!("underlay teardown: {report:?}"));
            }
        }
        let dirs = self.cgroup_dirs();
        let procs = |dirs: &[PathBuf]| {
            let mut pids: Vec<i32> = Vec::new();
            for d in dirs.iter().flat_map(|d| walk(d)) {
                let text = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
            pids
        };
        for pid in procs(&dirs) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !procs(&dirs).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for d in &dirs {
            let mut tree = walk(d);
            tree.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for c in tree {
                if let Err(e) = std::fs::remove_dir(&c) {
                    errors.push(format!("rmdir {}: {e}", c.display()));
                }
            }
        }
        if let Some((path, Err(e))) = self.dir.take().map(|d| (d.path().to_owned(), d.close())) {
            errors.push(format!("remove {}: {e}", path.display()));
        }
        errors
    }
}

impl Drop for Swarm {
    /// Tears down; fails the test if anything could not be (unless it is
    /// failing already, then prints what).
    fn drop(&mut self) {
        let started = Instant::now();
        let errors = self.teardown();
        let took = started.elapsed().as_secs_f64();
        match (errors.is_empty(), std::thread::panicking()) {
            (true, _) => eprintln!("swarm {}: torn down in {took:.1} s", self.tag),
            (false, true) => eprintln!("swarm {}: teardown: {}", self.tag, errors.join("; ")),
            (false, false) => panic!("swarm {}: teardown: {}", self.tag, errors.join("; ")),
        }
    }
}

/// Debian's `docker` client for the dockerd at `sock`, with its own
/// config dir `cli` and none of the caller's DOCKER_HOST/DOCKER_CONTEXT.
pub fn docker_client(sock: &Path, cli: &Path) -> Command {
    let mut cmd = Command::new(DOCKER);
    cmd.arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .env("DOCKER_CONFIG", cli)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT");
    cmd
}

/// `dir` and every directory below it, parents first.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while let Some(d) = out.get(i).cloned() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
            }
        }
        i += 1;
    }
    out
}
