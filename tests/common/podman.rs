//! Debian's podman on a lab host, set to its CNI backend with weft's
//! plugin (tests/podman.rs, bench_cni.rs). It runs in the host's daemon's
//! mount namespace (`Lab::private_run`), so the namespaces it pins in that
//! namespace's `/run` tmpfs are seen by that daemon and by nothing else on
//! the machine;
//! its storage, config and plugin directory are the host's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Lab, WEFT};

/// One host's podman.
pub struct Podman {
    dir: PathBuf,
    /// The daemon whose mount namespace podman runs in.
    pid: u32,
    cgroup: String,
}

impl Podman {
    /// podman for `host`, with weft's plugin for `network` and the busybox
    /// test image loaded.
    pub fn new(lab: &Lab, host: &str, network: &str) -> Podman {
        let dir = lab.host_dir(host).join("podman");
        let (bin, net_d) = (dir.join("cni-bin"), dir.join("net.d"));
        let sock = lab.socket_path(host);
        let out = Command::new(WEFT)
            .args(["cni", "install", network, "--bin-dir"])
            .arg(&bin)
            .arg("--conf-dir")
            .arg(&net_d)
            .arg("--socket")
            .arg(&sock)
            .output()
            .expect("weft cni install");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The machine's limits may be below podman's defaults, which runc
        // cannot raise.
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"{}\"\n[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
            bin.display(),
            net_d.display()
        );
        std::fs::write(dir.join("containers.conf"), conf).expect("containers.conf");
        let lab_name = lab
            .dir()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("lab")
            .to_owned();
        let p = Podman {
            dir,
            pid: lab.pid(host).expect("the daemon runs"),
            cgroup: format!("/{lab_name}-{host}"),
        };
        let images = super::image::busybox();
        p.ok(&["load", "-i", images.docker.to_str().expect("path")]);
        p
    }

    /// `podman ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-m")
            .arg("-t")
            .arg(self.pid.to_string())
            .arg("--")
            .arg("env")
            .arg(format!(
                "CONTAINERS_CONF={}",
                self.dir.join("containers.conf").display()
            ))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .args(["--runroot", "/run/podman", "--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("run podman")
    }

    /// `podman ARGS`, which must succeed; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run -d` of a sleeping busybox container on `network`.
    pub fn sleeper(&self, name: &str, network: &str) -> String {
        self.run_d(name, network, &["sleep", "600"])
    }

    /// `podman run -d` of the busybox test image running `cmd` on
    /// `network`; the container's ID.
    pub fn run_d(&self, name: &str, network: &str, cmd: &[&str]) -> String {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--cgroup-parent",
            &self.cgroup,
            "weft-test/busybox:latest",
        ];
        args.extend_from_slice(cmd);
        self.ok(&args).trim().to_owned()
    }

    /// Whether `cmd` in container `name` succeeds.
    pub fn exec_ok(&self, name: &str, cmd: &[&str]) -> bool {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.run(&args).status.success()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup").join(self.cgroup.trim_start_matches('/')),
        );
    }
}
