//! `make demo`, driven exactly as the Makefile drives it (the same script,
//! the same binary), asserting on what it shows: a cluster forms, the web
//! service's replicas are containers of the image the demo built, `web`
//! resolves to the service's VIP from a client task, and requests through
//! `http://web/` reach every replica; `weft lab down` then leaves nothing in
//! containerd. The demo's containerd is a private one (the script takes its
//! socket), not the machine's.

use std::process::Command;

#[path = "../proto/containerd/tests/common/containerd.rs"]
#[allow(dead_code)]
mod containerd;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

struct LabRoot(tempfile::TempDir, String);

impl Drop for LabRoot {
    fn drop(&mut self) {
        let _ = Command::new(WEFT)
            .args(["lab", "down", &self.1, "--force"])
            .env("WEFT_LAB_ROOT", self.0.path())
            .status();
    }
}

#[test]
fn make_demo_shows_a_service_reached_through_its_vip() {
    assert!(nix::unistd::geteuid().is_root(), "the demo needs root");
    // Declared first, dropped last: after the lab's daemons.
    let ctrd = containerd::PrivateContainerd::start("demo");
    let root = LabRoot(
        tempfile::Builder::new()
            .prefix("weft-demo-")
            .tempdir()
            .expect("temp dir"),
        format!("demo{}", std::process::id() % 100_000),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/lab/demo.sh");
    let out = Command::new("bash")
        .args([script, WEFT])
        .env("WEFT_LAB_ROOT", root.0.path())
        .env("WEFT_DEMO_LAB", &root.1)
        .env("WEFT_DEMO_CONTAINERD_SOCKET", ctrd.socket())
        .env("WEFT_DEMO_RUNC_ROOT", ctrd.runc_root())
        .env("WEFT_DEMO_CGROUP_PARENT", ctrd.cgroup_parent())
        .env(
            "WEFT_DEMO_IMAGE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/weft-demo-image"),
        )
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // The VIP the summary reports is what `web` resolved to inside the client.
    let vip = stdout
        .lines()
        .find_map(|l| l.split("; VIP ").nth(1))
        .map(str::trim)
        .expect("the summary names the VIP")
        .to_string();
    assert!(vip.starts_with("10.0.9."), "{vip}");
    assert!(
        stdout.contains(&format!("Address: {vip}")),
        "web resolves to the VIP:\n{stdout}"
    );
    assert!(
        stdout.contains("reached 3 distinct replicas"),
        "every replica answered:\n{stdout}"
    );
    assert!(stdout.contains("cluster formed in"), "{stdout}");
    assert!(
        stdout.contains("3 replicas (containers of weft-demo/busybox:latest)"),
        "{stdout}"
    );
    // Three replicas and the client, as containers in weft's namespace.
    let listed = ctrd.ctr_ok("weft", &["containers", "ls", "-q"]);
    assert_eq!(listed.lines().count(), 4, "containers:\n{listed}");

    let down = Command::new(WEFT)
        .args(["lab", "down", &root.1])
        .env("WEFT_LAB_ROOT", root.0.path())
        .output()
        .expect("weft lab down");
    let said = String::from_utf8_lossy(&down.stdout);
    assert!(down.status.success(), "lab down failed: {said}");
    assert!(said.contains("4 container(s)"), "{said}");
    let left = ctrd.ctr_ok("weft", &["containers", "ls", "-q"]);
    assert!(left.trim().is_empty(), "left in containerd:\n{left}");
}
