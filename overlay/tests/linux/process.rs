//! `NsCommand`: a child in a network namespace, with its own mount
//! namespace (bind mount, tmpfs, fresh /sys) and hostname — and the host
//! sees none of it.

use weft_overlay::linux::{MountPropagation, NsCommand};

use crate::common::{RunDir, require_root};

fn output(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn child_starts_in_the_network_namespace() {
    require_root!();
    let run = RunDir::new();
    let ns = run.netns("p");
    let got = output(
        NsCommand::new()
            .netns(&ns)
            .command("readlink")
            .unwrap()
            .arg("/proc/self/ns/net"),
    );
    assert_eq!(got.trim(), format!("net:[{}]", ns.inode()));
    // The spawning thread stayed where it was.
    let mine = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_ne!(mine.to_string_lossy(), got.trim());
}

#[test]
fn private_mounts_and_hostname() {
    require_root!();
    let run = RunDir::new();
    let ns = run.netns("m");
    let resolv = run.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.11\n").unwrap();
    let state = run.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("host-marker"), "x").unwrap();
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let host_name = nix::unistd::gethostname().unwrap();

    let script = format!(
        "cat /etc/resolv.conf; echo ---; ls -A {d}; touch {d}/inside; echo ---; hostname; echo ---; ls /sys/class/net",
        d = state.display()
    );
    let got = output(
        NsCommand::new()
            .netns(&ns)
            .propagation(MountPropagation::Private)
            .bind(&resolv, "/etc/resolv.conf")
            .tmpfs(&state)
            .remount_sys()
            .hostname("weft-h1")
            .command("sh")
            .unwrap()
            .args(["-c", &script]),
    );
    let parts: Vec<&str> = got.split("---\n").collect();
    assert_eq!(parts[0], "nameserver 127.0.0.11\n");
    assert_eq!(parts[1], "", "tmpfs hides the host directory's content");
    assert_eq!(parts[2].trim(), "weft-h1");
    assert_eq!(
        parts[3].trim(),
        "lo",
        "fresh /sys shows the child's namespace"
    );

    // Independent view from the host: nothing leaked.
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_resolv);
    assert!(state.join("host-marker").exists());
    assert!(!state.join("inside").exists());
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name);
}

#[test]
fn setup_failure_is_a_spawn_error() {
    require_root!();
    let r = NsCommand::new()
        .bind("/nonexistent/weft/source", "/etc/resolv.conf")
        .command("true")
        .unwrap()
        .status();
    let e = r.expect_err("bind of a missing source must fail the spawn");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}
