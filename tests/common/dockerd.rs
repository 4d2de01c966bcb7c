//! Debian's dockerd on a weft lab host, with weft as its network plugin
//! (tests/docker_plugin.rs). It runs in the host's network namespace and in
//! its weft daemon's mount namespace (`Lab::private_run`): the plugin
//! socket `/run/docker/plugins/weft.sock` and the sandboxes dockerd pins
//! under `/run/docker/netns` live in that namespace's `/run` tmpfs, seen by
//! that daemon and by nothing else on the machine.
//!
//! ```text
//!   <lab host dir>/docker/
//!     daemon.json            its config (not /etc/docker/daemon.json): address pools
//!                            off weft's bridge and gateway subnets
//!     data/                  --data-root (its containerd lives under /run: the tmpfs)
//!     docker.sock docker.pid dockerd.log tmp/
//!   /sys/fs/cgroup/<lab>-<host>-docker   --cgroup-parent of its containers
//! ```
//!
//! Drop (also when the test fails): containers removed, SIGTERM to dockerd
//! (SIGKILL after 15 s), what is left in the cgroup parent killed and the
//! cgroups removed. Drop it before the lab (declare it after).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Lab;
use super::swarm::DOCKER;

/// The plugin socket, in the daemon's private `/run`.
pub const PLUGIN_SOCKET: &str = "/run/docker/plugins/weft.sock";

/// One lab host's dockerd.
pub struct Dockerd {
    dir: PathBuf,
    host: String,
    /// The weft daemon whose namespaces dockerd runs in.
    daemon_pid: u32,
    cgroup: String,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd on `host` (whose daemon runs with
    /// `--docker-plugin` [`PLUGIN_SOCKET`]) and loads the busybox test image.
    pub fn start(lab: &Lab, host: &str) -> Dockerd {
        assert!(
            std::path::Path::new(DOCKER).is_file()
                && super::containerd::find_on_path("dockerd").is_some(),
            "Debian's docker.io is not installed: run `make deps`; this test is not skipped"
        );
        let lab_name = lab
            .dir()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("lab")
            .to_owned();
        let mut d = Dockerd {
            dir: lab.host_dir(host).join("docker"),
            host: host.to_owned(),
            daemon_pid: lab.pid(host).expect("the daemon runs"),
            cgroup: format!("/{lab_name}-{host}-docker"),
            child: None,
        };
        d.spawn();
        let images = super::image::busybox();
        d.ok(&["load", "-i", images.docker.to_str().expect("path")]);
        d
    }

    /// Starts dockerd and waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "dockerd already runs");
        std::fs::create_dir_all(self.dir.join("tmp")).expect("docker dir");
        // Docker's bridges off weft's default bridge (172.17.0.0/16, which
        // docker0 would take: weft's daemon then refuses to start) and
        // gateway bridge (172.18.0.0/16), as README says to set it.
        std::fs::write(
            self.dir.join("daemon.json"),
            "{\"default-address-pools\": [{\"base\": \"172.30.0.0/16\", \"size\": 24}]}\n",
        )
        .expect("daemon.json");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("log");
        let child = Command::new("nsenter")
            .args(["-m", "-n", "-t", &self.daemon_pid.to_string(), "--"])
            .arg("dockerd")
            .arg("--config-file")
            .arg(self.dir.join("daemon.json"))
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock().display()))
            .arg("--cgroup-parent")
            .arg(&self.cgroup)
            .env("TMPDIR", self.dir.join("tmp"))
            .env(
                "PATH",
                "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/bin",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.run(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "{}'s dockerd did not answer within 60 s\n{}",
                self.host,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restarts `host`'s weft daemon (SIGTERM, then started again in this
    /// dockerd's mount namespace, where the sandboxes and the plugin socket
    /// are, as on a machine with one mount namespace), with the plugin on.
    pub fn restart_weft(&mut self, lab: &mut Lab) {
        let dockerd = self.child.as_ref().expect("dockerd runs").id();
        lab.sigterm(&self.host);
        let wrapper = self.dir.join("weft-in-docker-mounts");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec nsenter -m -t {dockerd} -- {} \"$@\"\n",
                super::WEFT
            ),
        )
        .expect("wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        lab.start_exe(&self.host, &wrapper, &["--docker-plugin", PLUGIN_SOCKET]);
        self.daemon_pid = lab.pid(&self.host).expect("runs");
    }

    /// The weft plugin's socket as any process can reach it (it lives in
    /// the daemon's mount namespace).
    pub fn plugin_socket(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{PLUGIN_SOCKET}", self.daemon_pid))
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// SIGTERM to dockerd, waiting until it exited (SIGKILL after 15 s);
    /// with `kill9`, SIGKILL at once, as a crash would.
    pub fn stop(&mut self, kill9: bool) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(c.id() as i32);
        let _ = kill(
            pid,
            if kill9 {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            },
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(c.try_wait(), Ok(None)) {
            eprintln!("{}: dockerd ignored SIGTERM for 15 s: killed", self.host);
            let _ = c.kill();
        }
        let _ = c.wait();
    }

    /// SIGKILL to dockerd and to the containerd it started, as a crash of
    /// the Docker service would (the containers' shims live on).
    pub fn crash(&mut self) {
        let pidfile = format!(
            "/proc/{}/root/run/docker/containerd/containerd.pid",
            self.daemon_pid
        );
        let containerd = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        self.stop(true);
        if let Some(pid) = containerd {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let gone = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `docker ARGS`; the raw output.
    pub fn run(&self, args: &[&str]) -> Output {
        super::swarm::docker_client(&self.sock(), &self.dir.join("cli"))
            .args(args)
            .output()
            .expect("run docker")
    }

    /// `docker ARGS`, which must succeed; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker {args:?} on {} failed: {}\n{}",
            self.host,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker ARGS`, which must fail; stderr.
    pub fn err(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "docker {args:?} on {} succeeded: {}",
            self.host,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The last lines of dockerd's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "--- {} dockerd log ---\n{}",
            self.host,
            lines[from..].join("\n")
        )
    }

    /// `docker run -d` of the busybox test image running `cmd` with
    /// `opts`; the container's ID.
    pub fn run_d(&self, name: &str, opts: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(opts);
        args.push("weft-test/busybox:latest");
        args.extend_from_slice(cmd);
        self.ok(&args).trim().to_owned()
    }

    /// `docker network create` of the Docker network `name` on weft's
    /// network `net` (both of weft's drivers).
    pub fn weft_network(&self, name: &str, net: &str) {
        let args = Self::weft_network_args(name, net, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&args);
    }

    /// `network create` of Docker network `name` for weft network `net`
    /// through weft's plugin, with `extra` flags (`--ipv6`).
    pub fn weft_network_args(name: &str, net: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["network", "create"].map(String::from).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let ipam = format!("weft.network={net}");
        args.extend(
            [
                "-d",
                "weft",
                "--ipam-driver",
                "weft",
                "--ipam-opt",
                &ipam,
                name,
            ]
            .map(String::from),
        );
        args
    }

    /// Whether `cmd` in container `name` succeeds.
    pub fn exec_ok(&self, name: &str, cmd: &[&str]) -> bool {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.run(&args).status.success()
    }

    /// stdout of `cmd` in container `name`.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.ok(&args)
    }

    fn cgroup_dir(&self) -> PathBuf {
        std::path::Path::new("/sys/fs/cgroup").join(self.cgroup.trim_start_matches('/'))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.run(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.run(&args);
            }
        }
        self.stop(false);
        let dir = self.cgroup_dir();
        let tree = super::swarm::walk(&dir);
        for d in &tree {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for p in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        let mut tree = tree;
        tree.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        let deadline = Instant::now() + Duration::from_secs(5);
        for d in tree.iter().filter(|d| d.exists()) {
            while std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
