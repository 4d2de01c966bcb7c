//! Test images, built offline (docs/plans/14-containerd.md §4.2): umoci
//! makes an OCI image layout holding only the static busybox, skopeo turns
//! it into a docker-save archive. Both are independent implementations of
//! the formats weft reads.
//!
//! Built once and kept under cargo's per-target test dir
//! (`$CARGO_TARGET_TMPDIR/weft-test-images-v1`): nextest runs each test in
//! its own process, so a per-process cache would rebuild for every test.
//! The build happens in a temp dir that is renamed into place, so
//! concurrent tests never see half an image; the temp dir goes on failure
//! too.
//!
//! Missing tools fail the test with `make deps`; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the recipe changes.
const VERSION: &str = "v2";

/// The two archives of the busybox test image.
#[derive(Clone, Debug)]
pub struct TestImages {
    /// OCI image layout tar; its index names the manifest `latest` only
    /// (a bare tag), so it loads unnamed unless given `--tag`.
    pub oci: PathBuf,
    /// docker-save archive tagged `weft-test/busybox:latest`.
    pub docker: PathBuf,
    /// docker-save archive of a second image, `weft-test/busybox:v2`: the
    /// same layer, with `WEFT_IMAGE=v2` in its environment (another digest).
    pub docker_v2: PathBuf,
}

/// The busybox test image's archives, built on first use.
pub fn busybox() -> TestImages {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("weft-test-images-{VERSION}"));
    let images = TestImages {
        oci: root.join("busybox-oci.tar"),
        docker: root.join("busybox-docker.tar"),
        docker_v2: root.join("busybox-v2-docker.tar"),
    };
    if images.oci.is_file() && images.docker.is_file() && images.docker_v2.is_file() {
        return images;
    }
    for tool in ["umoci", "skopeo"] {
        assert!(
            super::containerd::find_on_path(tool).is_some(),
            "{tool} is not installed: run `make deps` (the image tests build their image with \
             umoci and skopeo); these tests are not skipped"
        );
    }
    assert!(
        super::containerd::busybox_static_installed(),
        "busybox-static is not installed: run `make deps` (the test image's only binary)"
    );
    let parent = root.parent().expect("parent");
    std::fs::create_dir_all(parent).expect("target tmp dir");
    let work = tempfile::Builder::new()
        .prefix("weft-test-images-build-")
        .tempdir_in(parent)
        .expect("temp dir");
    let t = work.path();
    let out = t.join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let layout = t.join("layout");
    let bundle = t.join("bundle");
    let l = format!("{}:latest", layout.display());
    run(
        "umoci",
        &["init", "--layout", &layout.display().to_string()],
    );
    run("umoci", &["new", "--image", &l]);
    run(
        "umoci",
        &["unpack", "--image", &l, &bundle.display().to_string()],
    );
    let rootfs = bundle.join("rootfs");
    for dir in ["bin", "etc", "tmp", "var/www", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "ls", "cat", "echo", "sleep", "httpd", "wget", "ps", "id", "kill", "nc", "mount",
        "grep", "head", "seq", "yes", "dd", "true", "false",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod");
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    run(
        "umoci",
        &["repack", "--image", &l, &bundle.display().to_string()],
    );
    run(
        "umoci",
        &[
            "config",
            "--image",
            &l,
            "--os",
            "linux",
            "--architecture",
            "amd64",
            "--config.env",
            "PATH=/bin",
            "--config.workingdir",
            "/",
            "--config.cmd",
            "/bin/sh",
        ],
    );
    run(
        "tar",
        &[
            "-C",
            &layout.display().to_string(),
            "-cf",
            &out.join("busybox-oci.tar").display().to_string(),
            ".",
        ],
    );
    let to_docker = |tag: &str, file: &str| {
        let status = skopeo(t)
            .arg("copy")
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!(
                "docker-archive:{}:weft-test/busybox:{tag}",
                out.join(file).display()
            ))
            .output()
            .expect("run skopeo");
        assert!(
            status.status.success(),
            "skopeo copy of {tag} failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    };
    to_docker("latest", "busybox-docker.tar");
    run(
        "umoci",
        &[
            "config",
            "--image",
            &l,
            "--tag",
            "v2",
            "--config.env",
            "WEFT_IMAGE=v2",
        ],
    );
    to_docker("v2", "busybox-v2-docker.tar");
    // Another test may have won the race: its archives are as good.
    if std::fs::rename(&out, &root).is_err() {
        assert!(
            images.oci.is_file() && images.docker.is_file() && images.docker_v2.is_file(),
            "cannot place {}",
            root.display()
        );
    }
    images
}

/// `skopeo --policy P` with an accept-anything policy written to `dir`
/// (the test image is unsigned) and its temp files under `dir`.
fn skopeo(dir: &Path) -> Command {
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("policy");
    let mut cmd = Command::new("skopeo");
    cmd.env("TMPDIR", dir).arg("--policy").arg(policy);
    cmd
}

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool).args(args).output().expect(tool);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The files of a tar, in order: (name, data, symlink target).
pub fn tar_entries(archive: &Path) -> Vec<(String, Vec<u8>, Option<String>)> {
    let bytes = std::fs::read(archive).expect("read archive");
    let mut a = tar::Archive::new(&bytes[..]);
    let mut out = Vec::new();
    for e in a.entries().expect("tar") {
        let mut e = e.expect("entry");
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let kind = e.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let link = kind.is_symlink().then(|| {
            e.link_name()
                .expect("link")
                .expect("link")
                .display()
                .to_string()
        });
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).expect("data");
        out.push((name, data, link));
    }
    out
}

/// Writes a tar of `entries` (as [`tar_entries`] returns them) to `path`.
pub fn write_tar(path: &Path, entries: &[(String, Vec<u8>, Option<String>)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match link {
            Some(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).expect("link");
            }
            None => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, &data[..]).expect("file");
            }
        }
    }
    std::fs::write(path, b.into_inner().expect("tar")).expect("write tar");
}

/// Distribution's registry (`docker-registry`, Debian's package), started
/// for one test inside a lab host's network namespace (`pin`), listening
/// on `addr` (`IP:PORT` of that namespace: its loopback, or its underlay
/// address so that every lab host reaches it). Its storage and config live
/// in a temp dir; dropping it kills the registry and removes both, also
/// when the test fails.
pub struct Registry {
    child: std::process::Child,
    pin: PathBuf,
    dir: tempfile::TempDir,
    /// `IP:PORT`, the registry part of references to its images.
    pub addr: String,
    /// `user:password` when it asks for credentials (htpasswd).
    creds: Option<String>,
}

impl Registry {
    /// Starts the registry and waits until `GET /v2/` answers. Fails the
    /// test (never skips it) when `docker-registry` is not installed.
    pub fn start(test: &str, pin: &Path, addr: &str) -> Registry {
        Registry::start_with(test, pin, addr, None)
    }

    /// As [`Registry::start`], asking for credentials: `htpasswd` is the
    /// line of the file (bcrypt only, as Distribution reads it) and
    /// `creds` the `user:password` it stands for (used to push). Plain
    /// HTTP: Debian's docker-registry 2.8 takes htpasswd auth without TLS.
    pub fn start_private(
        test: &str,
        pin: &Path,
        addr: &str,
        htpasswd: &str,
        creds: &str,
    ) -> Registry {
        Registry::start_with(test, pin, addr, Some((htpasswd, creds)))
    }

    fn start_with(test: &str, pin: &Path, addr: &str, auth: Option<(&str, &str)>) -> Registry {
        assert!(
            super::containerd::find_on_path("docker-registry").is_some(),
            "docker-registry is not installed: run `make deps` (the pull tests run their own \
             registry); these tests are not skipped"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("weft-registry-{test}-"))
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("registry.yml");
        let auth_line = match auth {
            Some((htpasswd, _)) => {
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, format!("{htpasswd}\n")).expect("htpasswd");
                format!(
                    "auth: {{htpasswd: {{realm: weft-test, path: {}}}}}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log: {{level: warn, accesslog: {{disabled: true}}}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: \"{addr}\"}}\n{auth_line}",
                dir.path().join("storage").display()
            ),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", pin.display()))
            .arg("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let registry = Registry {
            child,
            pin: pin.to_owned(),
            dir,
            addr: addr.to_owned(),
            creds: auth.map(|(_, c)| c.to_owned()),
        };
        let url = match auth {
            Some((_, creds)) => format!("http://{creds}@{addr}/v2/"),
            None => format!("http://{addr}/v2/"),
        };
        super::wait_for(
            "the registry to answer",
            std::time::Duration::from_secs(20),
            || {
                super::nsenter(pin, &["busybox", "wget", "-q", "-O", "/dev/null", &url])
                    .status
                    .success()
            },
        );
        registry
    }

    /// Pushes the docker-save archive `archive` as `repo:tag` (skopeo, in
    /// the registry's namespace); returns the full reference.
    pub fn push(&self, archive: &Path, repo_tag: &str) -> String {
        let reference = format!("{}/{repo_tag}", self.addr);
        let cmd = skopeo(self.dir.path());
        // skopeo, run by nsenter in the registry's namespace.
        let args: Vec<_> = std::iter::once(cmd.get_program().to_owned())
            .chain(cmd.get_args().map(ToOwned::to_owned))
            .collect();
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.pin.display()))
            .args(args)
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .arg("copy")
            .arg("--dest-tls-verify=false")
            .args(self.creds.iter().flat_map(|c| ["--dest-creds", c.as_str()]))
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo push to {reference} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }

    /// The registry's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Watches `service ps SERVICE` on `host` for 12 s and asserts that a
/// failed task's row says `why` (the failure's message) and that the
/// replacements back off (at most 5 tasks: 1 s, 2 s, 4 s, 8 s … apart,
/// not one a second). Returns that row.
pub fn assert_fails_and_backs_off(
    lab: &super::Lab,
    host: &str,
    service: &str,
    why: &str,
) -> String {
    let window = std::time::Duration::from_secs(12);
    let mut ids = std::collections::BTreeSet::new();
    let mut shown = String::new();
    let start = std::time::Instant::now();
    while start.elapsed() < window {
        let ps = lab.weft(host, &["service", "ps", service]);
        for l in ps.lines().skip(1) {
            if let Some(id) = l.split_whitespace().next() {
                ids.insert(id.to_string());
            }
            if l.contains(why) {
                shown = l.to_string();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        shown.contains("failed"),
        "service ps shows why ({why:?}): {shown:?}"
    );
    assert!(
        ids.len() <= 5,
        "{} tasks in 12 s: the restarts do not back off ({ids:?})",
        ids.len()
    );
    eprintln!("{service}: {} tasks in 12 s", ids.len());
    shown
}
