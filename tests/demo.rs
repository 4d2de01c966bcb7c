//! `make demo`, driven exactly as the Makefile drives it (the same script,
//! the same binary), asserting on what it shows: a cluster forms, `web`
//! resolves to the service's VIP from a client task, and requests through
//! `http://web/` reach every replica.

use std::process::Command;

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
}
