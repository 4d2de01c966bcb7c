//! Debian's podman, set to its CNI backend with weft's plugin, on two hosts
//! of the lab: its containers join a weft overlay, reach each other, a
//! weft task and a weft service by name, and `podman rm` leaves nothing in
//! weft.
//!
//! Each host's podman runs in its daemon's mount namespace (a tmpfs on
//! `/run`, see `Lab::private_run`), so the namespaces it pins under
//! `/run/netns` are seen by that daemon and by nothing else on the machine;
//! its storage, config and plugin directory are the host's own.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Lab, WEFT, addr_of_in, sleeper, wait_for};

const T: Duration = Duration::from_secs(30);

/// One host's podman.
struct Podman {
    dir: PathBuf,
    /// The daemon whose mount namespace podman runs in.
    pid: u32,
    cgroup: String,
}

impl Podman {
    fn new(lab: &Lab, host: &str, network: &str) -> Podman {
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
        let images = common::image::busybox();
        p.ok(&["load", "-i", images.docker.to_str().expect("path")]);
        p
    }

    fn run(&self, args: &[&str]) -> Output {
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

    fn ok(&self, args: &[&str]) -> String {
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
    fn sleeper(&self, name: &str, network: &str) -> String {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--cgroup-parent",
            &self.cgroup,
            "weft-test/busybox:latest",
            "sleep",
            "600",
        ])
        .trim()
        .to_owned()
    }

    fn exec_ok(&self, name: &str, cmd: &[&str]) -> bool {
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

fn container_ip(p: &Podman, name: &str) -> String {
    let out = p.ok(&[
        "exec", name, "busybox", "ip", "-o", "-4", "addr", "show", "dev", "eth0",
    ]);
    addr_of_in(&out)
        .and_then(|a| a.split('/').next().map(str::to_owned))
        .unwrap_or_else(|| panic!("no address on eth0 of {name}: {out}"))
}

fn listed(lab: &Lab, id: &str) -> bool {
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft("h1", &["network", "inspect", "appnet"])).expect("json");
    v[0]["Containers"]
        .as_object()
        .is_some_and(|c| c.values().any(|e| e["ContainerID"] == id))
}

#[test]
fn podman_containers_on_two_hosts_join_a_weft_overlay_and_podman_rm_leaves_nothing() {
    for tool in ["podman", "conmon", "runc"] {
        assert!(
            common::containerd::find_on_path(tool).is_some(),
            "{tool} is not installed: run `make deps`; this test is not skipped"
        );
    }
    let mut lab = Lab::new("podman", &["h1", "h2"]);
    lab.private_run();
    lab.start_all();
    let (worker, _) = lab.init("h1", &[]);
    lab.join("h2", &worker, "h1");
    lab.attachable_network("h1", "10.74.0.0/24", "appnet");
    // The pin is a mount in h2's daemon's mount namespace: reach it there.
    let task_pin = PathBuf::from(format!(
        "/proc/{}/root{}",
        lab.pid("h2").expect("h2 runs"),
        sleeper(&lab, "h2", "peer", "appnet").display()
    ));
    let task_ip = common::nsenter_stdout(
        &task_pin,
        &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
    );
    let task_ip = addr_of_in(&task_ip).expect("task address");
    let task_ip = task_ip.split('/').next().unwrap().to_owned();
    common::sleeping_service(&lab, "h1", "web", "appnet");
    let vip = common::vip_of(&lab, "h1", "web");

    let (p1, p2) = (
        Podman::new(&lab, "h1", "appnet"),
        Podman::new(&lab, "h2", "appnet"),
    );
    let id1 = p1.sleeper("c1", "appnet");
    let id2 = p2.sleeper("c2", "appnet");
    let (ip1, ip2) = (container_ip(&p1, "c1"), container_ip(&p2, "c2"));
    assert!(
        ip1.starts_with("10.74.0.") && ip2.starts_with("10.74.0."),
        "{ip1} {ip2}"
    );

    // Container to container across hosts, to and from a weft task, and a
    // weft service's VIP by name through the embedded resolver.
    let ping = |p: &Podman, c: &str, ip: &str| {
        p.exec_ok(c, &["busybox", "ping", "-c", "1", "-W", "1", ip])
    };
    wait_for("c1 reaching c2 across hosts", T, || ping(&p1, "c1", &ip2));
    wait_for("c2 reaching c1", T, || ping(&p2, "c2", &ip1));
    wait_for("c1 reaching a weft task on h2", T, || {
        ping(&p1, "c1", &task_ip)
    });
    wait_for("the weft task reaching c1", T, || {
        common::pings(&task_pin, &ip1)
    });
    wait_for("c1 resolving the weft service", T, || {
        let out = p1.run(&["exec", "c1", "busybox", "nslookup", "web", "127.0.0.11"]);
        String::from_utf8_lossy(&out.stdout).contains(&vip)
    });

    // Both in weft's view, each on its own node.
    assert!(listed(&lab, &id1) && listed(&lab, &id2));
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft("h1", &["network", "inspect", "appnet"])).expect("json");
    // podman names its containers in CNI_ARGS (K8S_POD_NAME).
    let names: Vec<&str> = v[0]["Containers"]
        .as_object()
        .expect("containers")
        .values()
        .filter(|c| c["Runtime"] == "cni")
        .filter_map(|c| c["ContainerName"].as_str())
        .collect();
    assert!(names.contains(&"c1") && names.contains(&"c2"), "{names:?}");

    // podman rm: the endpoint and its namespace pin go.
    p1.ok(&["rm", "-f", "-t", "0", "c1"]);
    wait_for("c1's endpoint removed", T, || !listed(&lab, &id1));
    assert!(listed(&lab, &id2));
    p2.ok(&["stop", "-t", "0", "c2"]);
    wait_for("c2's endpoint removed once it stopped", T, || {
        !listed(&lab, &id2)
    });
}
