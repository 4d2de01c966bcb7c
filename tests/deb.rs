//! `make deb` (issue #20): deploy/deb/build.sh packs this build's binaries
//! into a .deb, and the package holds what a Debian user expects: the
//! binaries, the systemd unit running /usr/bin/weft, /etc/weft/daemon.json
//! as a conffile, completions for three shells in their
//! standard places, a man page per command, the copyright file and
//! maintainer scripts that are valid shell. Install, upgrade and purge on a
//! real system are the VM rig's (deploy/vm/, `make vm-test`).
//!
//! Needs dpkg-deb (every Debian host has it); FAILS without it.

use std::path::{Path, PathBuf};
use std::process::Command;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`, panics with its output unless it succeeds; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Builds the package from this build's binaries into `out`; its path.
fn build(out: &Path, version: &str) -> PathBuf {
    let bin_dir = Path::new(WEFT).parent().expect("the binaries' directory");
    assert!(
        bin_dir.join("weft-task-logger").exists(),
        "no weft-task-logger beside {WEFT}: cargo build --workspace"
    );
    let deb = run(Command::new("bash")
        .arg(repo().join("deploy/deb/build.sh"))
        .arg(out)
        .env("WEFT_DEB_BIN_DIR", bin_dir)
        .env("WEFT_DEB_VERSION", version));
    PathBuf::from(deb.trim())
}

#[test]
fn the_package_holds_the_binaries_unit_settings_completions_and_man_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let deb = build(tmp.path(), "0.1.0~test1");
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("weft_0.1.0~test1_{}.deb", arch.trim())
    );

    let field = |f: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f));
    assert_eq!(field("Package").trim(), "weft");
    assert_eq!(field("Version").trim(), "0.1.0~test1");
    assert!(
        field("Depends").contains("nftables"),
        "{}",
        field("Depends")
    );

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let has = |p: &str| listing.lines().any(|l| l.ends_with(p));
    for path in [
        "./usr/bin/weft",
        "./usr/bin/weft-task-logger",
        "./lib/systemd/system/weft.service",
        "./etc/weft/daemon.json",
        "./usr/share/bash-completion/completions/weft",
        "./usr/share/zsh/vendor-completions/_weft",
        "./usr/share/fish/vendor_completions.d/weft.fish",
        "./usr/share/man/man1/weft.1.gz",
        "./usr/share/man/man1/weft-service-create.1.gz",
        "./usr/share/doc/weft/copyright",
        "./usr/share/doc/weft/README.Debian",
        "./usr/share/doc/weft/changelog.Debian.gz",
    ] {
        assert!(has(path), "{path} missing from the package:\n{listing}");
    }
    assert!(
        listing.lines().all(|l| l.contains(" root/root ")),
        "files not owned by root:\n{listing}"
    );
    let pages = listing.lines().filter(|l| l.ends_with(".1.gz")).count();
    assert!(pages > 50, "only {pages} man pages");

    // The files themselves.
    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/weft.service")).unwrap();
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecStart=/usr/bin/weft daemon ")),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    // The shipped settings: Docker's key, weft's default subnet.
    let settings = root.join("etc/weft/daemon.json");
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(parsed["bridge-subnet"], "172.17.0.0/16");
    let packaged = root.join("usr/bin/weft");
    let help = run(Command::new(&packaged).arg("--version"));
    assert!(help.starts_with("weft "), "{help}");
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/weft")).unwrap();
    assert!(
        bash.contains("complete -F") && bash.contains("service"),
        "{bash:.300}"
    );
    let page = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/weft-network-create.1.gz")));
    assert!(page.contains(".TH weft-network-create 1"), "{page:.300}");
    assert!(page.contains("weft network create"), "{page:.600}");

    // Control: the conffile, and maintainer scripts that are valid sh.
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/weft/daemon.json");
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(&path.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "{script}'s mode");
        run(Command::new("sh").arg("-n").arg(&path));
    }
    let md5 = std::fs::read_to_string(control.join("md5sums")).unwrap();
    assert!(md5.contains(" usr/bin/weft\n"), "{md5}");
}

#[test]
fn a_bad_version_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("deploy/deb/build.sh"))
        .arg(tmp.path())
        .env(
            "WEFT_DEB_BIN_DIR",
            Path::new(WEFT).parent().expect("the binaries' directory"),
        )
        .env("WEFT_DEB_VERSION", "v1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not start with a digit"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
