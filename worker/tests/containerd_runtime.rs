//! The containerd runtime against a real, private containerd and runc:
//! containers start from an image in weft's network namespace, isolated,
//! stop gracefully, report exit codes, are adopted after a restart of the
//! runtime, and leave nothing behind when removed. `ctr` and /proc are the
//! independent views.
//!
//! The image is built here, in code: one layer with busybox-static (`make
//! deps` installs it) and an OCI layout, imported with `ctr images import`
//! (containerd's own importer and unpacker, not weft's).

#[path = "../../proto/containerd/tests/common/containerd.rs"]
#[allow(dead_code)]
mod containerd_harness;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_harness::PrivateContainerd;
use sha2::{Digest, Sha256};
use weft_containerd_api::Client;
use weft_overlay::linux::Netns;
use weft_worker::image::{FakeImageSource, ImageConfig, ImageSource, LocalImage};
use weft_worker::runtime::containerd::mounts::MountPolicy;
use weft_worker::runtime::containerd::{ContainerdConfig, ContainerdRuntime};
use weft_worker::runtime::{ContainerSpec, Limits, StopPolicy, TaskRuntime, TaskSpec, TaskState};

const NS: &str = "weft";
const IMAGE: &str = "docker.io/weft-test/busybox:latest";

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// An OCI layout archive of one busybox-static layer; returns the archive
/// and the image as the node's image store would describe it.
fn busybox_image(dir: &Path) -> (PathBuf, LocalImage) {
    let busybox = std::fs::read("/bin/busybox").expect(
        "/bin/busybox (busybox-static) is missing: run `make deps`; this test is not skipped",
    );
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        layer.append_data(&mut h, path, data).expect("tar");
    };
    add("bin/busybox", &busybox, 0o755);
    add(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    );
    add(
        "etc/group",
        b"root:x:0:\nstaff:x:50:nobody\nnogroup:x:65534:\n",
        0o644,
    );
    let mut layer = layer;
    for dir in ["tmp", "proc", "sys", "dev", "etc", "var"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        h.set_size(0);
        h.set_mtime(0);
        layer.append_data(&mut h, dir, &[][..]).expect("tar dir");
    }
    for app in [
        "sh", "echo", "sleep", "cat", "ls", "id", "hostname", "ps", "readlink", "touch", "true",
        "grep", "unshare",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        layer
            .append_link(&mut h, format!("bin/{app}"), "busybox")
            .expect("tar link");
    }
    let layer = layer.into_inner().expect("layer");
    let diff_id = sha(&layer);
    let config_json = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = serde_json::to_vec(&config_json).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": diff_id, "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": sha(&manifest), "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": IMAGE,
                                       "org.opencontainers.image.ref.name": "latest"}}],
    }))
    .unwrap();
    let mut out = tar::Builder::new(Vec::new());
    let mut put = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        out.append_data(&mut h, path, data).expect("tar");
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json", &index);
    for blob in [&layer, &config, &manifest] {
        put(
            &format!("blobs/sha256/{}", &sha(blob)["sha256:".len()..]),
            blob,
        );
    }
    let path = dir.join("busybox-oci.tar");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&out.into_inner().expect("archive")))
        .expect("write archive");
    let config = ImageConfig::parse(&config).expect("config");
    let top = config.chain_ids().last().cloned().expect("a layer");
    (
        path,
        LocalImage {
            name: IMAGE.into(),
            digest: sha(&manifest),
            config,
            top_chain_id: top,
        },
    )
}

fn spec(id: &str, netns: &Path, script: &str) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        name: format!("{id}.1"),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::from([("GREETING".into(), "hello".into())]),
        netns: netns.to_owned(),
        resolv_conf: None,
        hostname: Some(format!("{id}-host")),
        container: Some(Box::new(ContainerSpec {
            image: "busybox-test".into(),
            ..ContainerSpec::default()
        })),
        stop: Default::default(),
        log: None,
        external: None,
    }
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_of(rt: &ContainerdRuntime, id: &str) -> String {
    weft_worker::logs::text(&rt.log_path(id))
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").ino()
}

/// A private containerd with the busybox image imported, and what a
/// runtime on it needs.
struct Setup {
    ctrd: PrivateContainerd,
    tmp: tempfile::TempDir,
    client: Client,
    cfg: ContainerdConfig,
    images: Arc<dyn ImageSource>,
}

impl Setup {
    async fn new(name: &str) -> Self {
        let ctrd = PrivateContainerd::start(name);
        let tmp = tempfile::tempdir().expect("tempdir");
        let (archive, image) = busybox_image(tmp.path());
        ctrd.ctr_ok(NS, &["images", "import", archive.to_str().unwrap()]);
        let client = Client::connect(ctrd.socket())
            .await
            .expect("connect")
            .with_namespace(NS)
            .expect("namespace");
        let cfg = ContainerdConfig {
            tasks_dir: tmp.path().join("tasks"),
            runc_root: Some(ctrd.runc_root()),
            cgroup_parent: PathBuf::from(ctrd.cgroup_parent()),
            owner: tmp.path().display().to_string(),
            logger: PathBuf::from(env!("CARGO_BIN_EXE_weft-task-logger")),
            mounts: MountPolicy {
                allowed_bind_roots: vec![tmp.path().join("binds")],
                forbidden: vec![tmp.path().join("tasks")],
                volumes: weft_worker::volumes::VolumeStore::new(
                    tmp.path().join("volumes"),
                    tmp.path().join("tasks"),
                ),
            },
        };
        let images: Arc<dyn ImageSource> = Arc::new(FakeImageSource {
            images: BTreeMap::from([("busybox-test".to_string(), image)]),
        });
        Setup {
            ctrd,
            tmp,
            client,
            cfg,
            images,
        }
    }

    /// A runtime over this setup's containerd and images.
    fn runtime(&self) -> ContainerdRuntime {
        ContainerdRuntime::new(self.client.clone(), self.images.clone(), self.cfg.clone())
    }
}

struct Pin(PathBuf);
impl Drop for Pin {
    fn drop(&mut self) {
        let _ = Netns::delete(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_isolated_in_weft_s_netns_stop_gracefully_and_are_adopted() {
    let Setup {
        ctrd,
        tmp,
        client,
        cfg,
        images,
    } = Setup::new("runtime").await;
    let rt = ContainerdRuntime::new(client.clone(), images.clone(), cfg.clone());

    let pin = Pin(tmp.path().join("netns").join("t1"));
    let netns = Netns::create(&pin.0).expect("netns");
    netns.lo_up().expect("lo up");

    // A container in weft's netns, isolated from the host.
    let script = "echo $GREETING; hostname; id -u; ls /var/lib/weft 2>&1; \
                  readlink /proc/1/exe; ps | wc -l; \
                  trap 'echo stopping; sleep 0.3; echo bye; exit 0' TERM; \
                  while true; do sleep 0.1; done";
    let t1 = spec("t1", &pin.0, script);
    let st = rt.start(&t1).await.expect("start");
    let TaskState::Running { pid } = st.state else {
        panic!("not running: {st:?}\n{}", ctrd.log());
    };
    wait_until("t1's output", Duration::from_secs(10), || {
        log_of(&rt, "t1").contains("/bin/busybox")
    })
    .await;
    let log = log_of(&rt, "t1");
    eprintln!("t1 log:\n{log}");
    assert!(log.contains("hello"), "env from the task: {log}");
    assert!(log.contains("t1-host"), "its own hostname: {log}");
    assert!(
        log.contains("/var/lib/weft: No such file or directory"),
        "the host's filesystem is not visible: {log}"
    );
    // The exit of a container is reported only once its logger is done:
    // no writer holds the log then, and every line is in it. (Without the
    // delete-and-wait at the exit, the logger would still run here: the
    // shim keeps its pipes open until Tasks.Delete.)
    // Each start runs beside the removal of the one before: a removal sets
    // off containerd's garbage collector, which must not take the snapshot
    // prepared for the next container before that container's record
    // exists (the runtime holds a lease over that gap; without it this
    // failed with `failed to mount rootfs …: no such file or directory`).
    for i in 0..8 {
        let id = format!("quick{i}");
        let next = spec(&id, &pin.0, "echo out; echo err >&2; exit 3");
        let prev = format!("quick{}", i.max(1) - 1);
        let (started, removed) = tokio::join!(rt.start(&next), async {
            if i > 0 {
                rt.remove(&prev).await
            } else {
                Ok(())
            }
        });
        started.expect("start");
        removed.expect("remove");
        let st = rt.wait(&id).await.expect("wait");
        let dir = rt.log_path(&id);
        assert!(
            !weft_worker::logs::writer_active(&dir),
            "{id}: the logger still writes after the reported exit"
        );
        let log = log_of(&rt, &id);
        assert!(
            matches!(st.state, TaskState::Exited { code: Some(3), .. }),
            "{id}: {st:?}"
        );
        assert!(
            log.contains("out\n") && log.contains("err\n"),
            "{id}: {log:?}"
        );
    }
    rt.remove("quick7").await.expect("remove");

    let proc_ns = |p: i32, ns: &str| inode(&PathBuf::from(format!("/proc/{p}/ns/{ns}")));
    assert_eq!(
        proc_ns(pid, "net"),
        inode(&pin.0),
        "the container runs in the netns weft pinned"
    );
    let me = std::process::id() as i32;
    for ns in ["pid", "mnt", "uts", "ipc"] {
        assert_ne!(proc_ns(pid, ns), proc_ns(me, ns), "own {ns} namespace");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        status.contains("CapEff:\t00000000a80425fb"),
        "Docker's default capabilities:\n{status}"
    );
    assert!(
        ctrd.ctr_ok(NS, &["tasks", "ls"]).contains("t1"),
        "containerd lists the task"
    );
    // Starting it again with the same spec changes nothing.
    assert_eq!(rt.start(&t1).await.expect("again").state, st.state);

    // Graceful stop: the trapped SIGTERM finishes within the grace period.
    let t = Instant::now();
    rt.stop("t1", Some(Duration::from_secs(5)))
        .await
        .expect("stop");
    let took = t.elapsed();
    let done = rt.wait("t1").await.expect("wait");
    assert_eq!(
        done.state,
        TaskState::Exited {
            code: Some(0),
            signal: None,
            oom: false,
        }
    );
    assert!(log_of(&rt, "t1").contains("bye"), "{}", log_of(&rt, "t1"));
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");

    // An exit code comes back.
    let t2 = spec("t2", &pin.0, "exit 3");
    rt.start(&t2).await.expect("start t2");
    let done = rt.wait("t2").await.expect("wait t2");
    assert_eq!(
        done.state,
        TaskState::Exited {
            code: Some(3),
            signal: None,
            oom: false,
        }
    );

    // A task that ignores SIGTERM is killed after the grace period.
    let t3 = spec("t3", &pin.0, "trap '' TERM; while true; do sleep 0.1; done");
    rt.start(&t3).await.expect("start t3");
    let t = Instant::now();
    rt.stop("t3", Some(Duration::from_millis(500)))
        .await
        .expect("stop t3");
    assert!(t.elapsed() >= Duration::from_millis(500));
    let done = rt.wait("t3").await.expect("wait t3");
    assert_eq!(
        done.state,
        TaskState::Exited {
            code: Some(137),
            signal: None,
            oom: false,
        }
    );

    // A missing image fails the start and leaves nothing.
    let mut bad = spec("t4", &pin.0, "true");
    bad.container.as_mut().unwrap().image = "nope:latest".into();
    let st = rt.start(&bad).await.expect("start t4");
    match &st.state {
        TaskState::Failed { error } => assert!(error.contains("no such image: nope"), "{error}"),
        other => panic!("not failed: {other:?}"),
    }
    assert!(!ctrd.ctr_ok(NS, &["containers", "ls"]).contains("t4"));

    // Adoption: a runtime started afresh (the daemon restarted) finds the
    // running container with the same pid, and the exited one with its code.
    // Its stop policy (SIGUSR1, which it traps) is kept with it.
    let mut t5 = spec(
        "t5",
        &pin.0,
        "trap 'exit 0' USR1; while true; do sleep 0.1; done",
    );
    t5.stop = StopPolicy {
        signal: libc::SIGUSR1,
        grace: Duration::from_secs(5),
    };
    let TaskState::Running { pid: pid5 } = rt.start(&t5).await.expect("t5").state else {
        panic!("t5 not running");
    };
    drop(rt);
    // Another daemon on the same containerd namespace sees none of them.
    let other = ContainerdRuntime::new(
        client.clone(),
        images.clone(),
        ContainerdConfig {
            owner: "/elsewhere".into(),
            ..cfg.clone()
        },
    );
    assert!(other.adopt().await.expect("adopt").is_empty());
    assert!(ctrd.ctr_ok(NS, &["tasks", "ls"]).contains("t5"));
    let rt = ContainerdRuntime::new(client.clone(), images.clone(), cfg.clone());
    let adopted: BTreeMap<String, TaskState> = rt
        .adopt()
        .await
        .expect("adopt")
        .into_iter()
        .map(|s| (s.id, s.state))
        .collect();
    assert_eq!(adopted.get("t5"), Some(&TaskState::Running { pid: pid5 }));
    assert_eq!(
        adopted.get("t2"),
        Some(&TaskState::Exited {
            code: Some(3),
            signal: None,
            oom: false,
        })
    );
    // The adopted container is stopped with its own signal (exit 0 from
    // its trap: SIGTERM would be ignored by a PID 1 shell, and SIGKILL
    // after the grace period would give 137), and its exit is noticed.
    let t = Instant::now();
    rt.stop("t5", None).await.expect("stop t5");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let done = rt.wait("t5").await.expect("wait t5");
    assert_eq!(
        done.state,
        TaskState::Exited {
            code: Some(0),
            signal: None,
            oom: false,
        }
    );

    // Removing leaves no container, task, snapshot or file behind; a task
    // still running is stopped first: its signal (SIGTERM, which a PID 1
    // shell ignores), then SIGKILL after its grace period.
    let mut t6 = spec("t6", &pin.0, "while true; do sleep 0.1; done");
    t6.stop.grace = Duration::from_millis(300);
    let TaskState::Running { pid: pid6 } = rt.start(&t6).await.expect("t6").state else {
        panic!("t6 not running");
    };
    for id in ["t1", "t2", "t3", "t5", "t6"] {
        let t = Instant::now();
        rt.remove(id).await.expect("remove");
        if id == "t6" {
            assert!(
                t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(5),
                "removed after its grace period: {:?}",
                t.elapsed()
            );
        }
        assert!(!rt.log_path(id).exists(), "{id}'s files are gone");
    }
    let left = ctrd.ctr_ok(NS, &["containers", "ls", "-q"]);
    assert!(left.trim().is_empty(), "containers left: {left}");
    let snaps = ctrd.ctr_ok(NS, &["snapshots", "ls"]);
    assert!(
        !PathBuf::from(format!("/proc/{pid6}")).exists(),
        "the running task was killed"
    );
    for id in ["t1", "t2", "t3", "t5", "t6"] {
        assert!(
            !snaps
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id)),
            "{id}'s snapshot left:\n{snaps}"
        );
    }
    // Removing twice is fine.
    rt.remove("t1").await.expect("remove again");
    drop(netns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_reach_the_cgroup_and_an_oom_kill_is_reported_as_such() {
    // This machine runs cgroup v1 (hybrid); runc writes v2 files itself
    // elsewhere, which this test cannot see here.
    if !Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        panic!("no cgroup v1 memory hierarchy: this test reads v1 files and is not skipped");
    }
    let Setup {
        ctrd,
        tmp,
        client,
        cfg,
        images,
    } = Setup::new("limits").await;
    let rt = ContainerdRuntime::new(client, images, cfg);
    let pin = Pin(tmp.path().join("netns").join("l1"));
    let netns = Netns::create(&pin.0).expect("netns");
    netns.lo_up().expect("lo up");
    let limited = |id: &str, script: &str| {
        let mut s = spec(id, &pin.0, script);
        s.container.as_mut().unwrap().limits = Limits {
            nano_cpus: 500_000_000,
            memory_bytes: 32 << 20,
            pids: 64,
        };
        s
    };

    // The limits, as the kernel holds them (read from cgroupfs, not weft).
    let l1 = limited("l1", "while true; do sleep 0.1; done");
    assert!(matches!(
        rt.start(&l1).await.expect("start l1").state,
        TaskState::Running { .. }
    ));
    let mem = |f| ctrd.cgroup_v1_file("memory", "l1", f);
    assert_eq!(mem("memory.limit_in_bytes"), "33554432");
    assert_eq!(mem("memory.memsw.limit_in_bytes"), "33554432", "no swap");
    assert_eq!(
        ctrd.cgroup_v1_file("cpu", "l1", "cpu.cfs_quota_us"),
        "50000"
    );
    assert_eq!(
        ctrd.cgroup_v1_file("cpu", "l1", "cpu.cfs_period_us"),
        "100000"
    );
    assert_eq!(ctrd.cgroup_v1_file("pids", "l1", "pids.max"), "64");
    rt.stop("l1", Some(Duration::from_millis(200)))
        .await
        .expect("stop");
    // Killed on request with 137: not an OOM kill.
    assert!(matches!(
        rt.wait("l1").await.expect("wait l1").state,
        TaskState::Exited { oom: false, .. }
    ));

    // A shell that doubles a string until it is over 32 MiB meets the
    // OOM killer, and the exit says so.
    let l2 = limited("l2", "a=aaaaaaaaaaaaaaaa; while true; do a=$a$a; done");
    rt.start(&l2).await.expect("start l2");
    let done = tokio::time::timeout(Duration::from_secs(60), rt.wait("l2"))
        .await
        .expect("the OOM killer ends it within 60 s")
        .expect("wait l2");
    assert_eq!(
        done.state,
        TaskState::Exited {
            code: Some(137),
            signal: None,
            oom: true,
        },
        "{}",
        log_of(&rt, "l2")
    );
    for id in ["l1", "l2"] {
        rt.remove(id).await.expect("remove");
    }
    drop(netns);
}

/// Runs `script` in a container of `c`'s options to its end; its state and
/// its output.
async fn run_to_end(
    rt: &ContainerdRuntime,
    id: &str,
    netns: &Path,
    script: &str,
    c: ContainerSpec,
) -> (TaskState, String) {
    let mut t = spec(id, netns, script);
    t.container = Some(Box::new(ContainerSpec {
        image: "busybox-test".into(),
        ..c
    }));
    let st = rt.start(&t).await.expect("start");
    let st = if st.state.is_terminal() {
        st
    } else {
        rt.wait(id).await.expect("wait")
    };
    (st.state, log_of(rt, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_capabilities_and_mounts_isolate_as_asked() {
    use weft_proto::isolation::{MountKind, MountSpec};
    let Setup {
        ctrd,
        tmp,
        client,
        cfg,
        images,
    } = Setup::new("isolation").await;
    let rt = ContainerdRuntime::new(client.clone(), images.clone(), cfg.clone());
    let pin = Pin(tmp.path().join("netns").join("iso"));
    Netns::create(&pin.0)
        .expect("netns")
        .lo_up()
        .expect("lo up");
    let probe = "grep -E '^(Seccomp|CapEff):' /proc/self/status; \
                 if unshare -U true; then echo unshare-ok; else echo unshare-refused; fi";

    // weft's profile by default: seccomp mode 2, and unshare(CLONE_NEWUSER)
    // refused; without it, allowed.
    let (st, log) = run_to_end(&rt, "sc1", &pin.0, probe, ContainerSpec::default()).await;
    eprintln!("default:\n{log}");
    assert!(
        matches!(st, TaskState::Exited { code: Some(0), .. }),
        "{st:?}"
    );
    assert!(log.contains("Seccomp:\t2"), "filtered: {log}");
    assert!(log.contains("unshare-refused"), "unshare refused: {log}");
    assert!(
        log.contains("CapEff:\t00000000a80425fb"),
        "Docker's set: {log}"
    );
    let unconfined = ContainerSpec {
        seccomp_unconfined: true,
        ..ContainerSpec::default()
    };
    let (_, log) = run_to_end(&rt, "sc2", &pin.0, probe, unconfined).await;
    eprintln!("unconfined:\n{log}");
    assert!(log.contains("Seccomp:\t0"), "no filter: {log}");
    assert!(log.contains("unshare-ok"), "unshare allowed: {log}");

    // --cap-drop ALL --cap-add NET_ADMIN: CAP_NET_ADMIN (12) alone;
    // --cap-drop CHOWN: the default set without bit 0.
    let only_net_admin = ContainerSpec {
        cap_drop: vec!["ALL".into()],
        cap_add: vec!["CAP_NET_ADMIN".into()],
        ..ContainerSpec::default()
    };
    let (_, log) = run_to_end(&rt, "cap1", &pin.0, probe, only_net_admin).await;
    assert!(log.contains("CapEff:\t0000000000001000"), "{log}");
    let no_chown = ContainerSpec {
        cap_drop: vec!["CAP_CHOWN".into()],
        ..ContainerSpec::default()
    };
    let (_, log) = run_to_end(&rt, "cap2", &pin.0, probe, no_chown).await;
    assert!(log.contains("CapEff:\t00000000a80425fa"), "{log}");
    // CAP_SYS_ADMIN lifts the namespace rules of the profile.
    let sys_admin = ContainerSpec {
        cap_add: vec!["CAP_SYS_ADMIN".into()],
        ..ContainerSpec::default()
    };
    let (_, log) = run_to_end(&rt, "cap3", &pin.0, probe, sys_admin).await;
    assert!(
        log.contains("Seccomp:\t2") && log.contains("unshare-ok"),
        "{log}"
    );

    // Mounts: a bind (read-write and read-only), a named volume that keeps
    // its data across tasks, a tmpfs.
    let data = tmp.path().join("binds").join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("in"), "from-the-host\n").expect("write");
    let m = |kind, source: &str, target: &str, readonly| MountSpec {
        kind,
        source: source.into(),
        target: target.into(),
        readonly,
        tmpfs_size: 0,
        tmpfs_mode: 0,
    };
    let src = data.display().to_string();
    let mounted = ContainerSpec {
        mounts: vec![
            m(MountKind::Bind, &src, "/data", false),
            m(MountKind::Bind, &src, "/ro", true),
            m(MountKind::Volume, "vol1", "/vol", false),
            MountSpec {
                tmpfs_size: 1 << 20,
                ..m(MountKind::Tmpfs, "", "/scratch", false)
            },
        ],
        ..ContainerSpec::default()
    };
    let script = "cat /data/in; echo from-the-task > /data/out; \
                  touch /ro/x 2>/dev/null && echo ro-broken || echo ro-holds; \
                  echo kept > /vol/f; grep ' /scratch ' /proc/mounts";
    let (st, log) = run_to_end(&rt, "mnt1", &pin.0, script, mounted).await;
    eprintln!("mounts:\n{log}");
    assert!(
        matches!(st, TaskState::Exited { code: Some(0), .. }),
        "{st:?}: {log}"
    );
    assert!(log.contains("from-the-host"), "{log}");
    assert_eq!(
        std::fs::read_to_string(data.join("out")).expect("out"),
        "from-the-task\n"
    );
    assert!(log.contains("ro-holds"), "{log}");
    assert!(!data.join("x").exists());
    assert!(
        log.contains("tmpfs /scratch tmpfs") && log.contains("size=1024k"),
        "{log}"
    );
    rt.remove("mnt1").await.expect("remove");
    let again = ContainerSpec {
        mounts: vec![m(MountKind::Volume, "vol1", "/vol", true)],
        ..ContainerSpec::default()
    };
    let (_, log) = run_to_end(&rt, "mnt2", &pin.0, "cat /vol/f", again).await;
    assert!(log.contains("kept"), "the volume kept its data: {log}");
    assert!(cfg.mounts.volume_dir("vol1").join("f").is_file());

    // A bind outside the node's roots: the task fails saying why, and
    // nothing is made for it.
    let outside = ContainerSpec {
        mounts: vec![m(MountKind::Bind, "/etc", "/host-etc", true)],
        ..ContainerSpec::default()
    };
    let (st, _) = run_to_end(&rt, "mnt3", &pin.0, "true", outside).await;
    let TaskState::Failed { error } = st else {
        panic!("started: {st:?}");
    };
    assert!(
        error.contains("outside this node's allowed bind roots"),
        "{error}"
    );
    assert!(!ctrd.ctr_ok(NS, &["containers", "ls"]).contains("mnt3"));
    let state = ContainerSpec {
        mounts: vec![m(
            MountKind::Bind,
            &tmp.path().join("tasks").display().to_string(),
            "/t",
            true,
        )],
        ..ContainerSpec::default()
    };
    let (st, _) = run_to_end(&rt, "mnt4", &pin.0, "true", state).await;
    assert!(matches!(st, TaskState::Failed { .. }), "{st:?}");
    // -u NAME from the image's /etc/passwd, with its groups from
    // /etc/group; a name the image lacks fails the task saying so.
    let nobody = ContainerSpec {
        user: Some("nobody".into()),
        ..ContainerSpec::default()
    };
    let (_, log) = run_to_end(&rt, "usr1", &pin.0, "id", nobody).await;
    assert!(
        log.contains("uid=65534") && log.contains("gid=65534") && log.contains("50"),
        "{log}"
    );
    let alice = ContainerSpec {
        user: Some("alice".into()),
        ..ContainerSpec::default()
    };
    let (st, _) = run_to_end(&rt, "usr2", &pin.0, "id", alice).await;
    let TaskState::Failed { error } = st else {
        panic!("started: {st:?}");
    };
    assert!(error.contains("unable to find user alice"), "{error}");
    for id in [
        "sc1", "sc2", "cap1", "cap2", "cap3", "mnt2", "mnt3", "mnt4", "usr1", "usr2",
    ] {
        rt.remove(id).await.expect("remove");
    }
}

/// A health check's exec whose caller goes away half way (its prober is
/// dropped when the task is being removed) still runs to its end and is
/// deleted: no exec process or FIFO is left in the shim. One left behind
/// made `runc kill --all` take 20 s when the container was then stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_given_up_by_its_caller_still_ends_and_is_deleted() {
    use weft_worker::runtime::ExecRequest;
    let setup = Setup::new("exec-drop").await;
    let rt = setup.runtime();
    let pin = Pin(setup.tmp.path().join("netns").join("e1"));
    let netns = Netns::create(&pin.0).expect("netns");
    let mut e1 = spec("e1", &pin.0, "while true; do sleep 0.1; done");
    e1.stop.grace = Duration::from_millis(500);
    let st = rt.start(&e1).await.expect("start");
    assert!(matches!(st.state, TaskState::Running { .. }), "{st:?}");

    let req = ExecRequest {
        args: vec!["sh".into(), "-c".into(), "sleep 1; echo done".into()],
        timeout: Duration::from_secs(10),
        output_limit: 1024,
    };
    let out = rt.exec("e1", &req).await.expect("a whole exec");
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(String::from_utf8_lossy(&out.output), "done\n");

    let exec_dir = rt.log_path("e1").parent().expect("task dir").join("exec");
    let execs_left = || std::fs::read_dir(&exec_dir).map_or(0, |d| d.count());
    assert_eq!(execs_left(), 0, "a whole exec leaves no FIFO");
    let pids = || {
        setup
            .ctrd
            .ctr_ok(NS, &["tasks", "ps", "e1"])
            .lines()
            .skip(1)
            .count()
    };
    let alone = pids();

    // Given up while the command runs: it still ends, is deleted, and its
    // FIFO goes.
    let given_up = tokio::time::timeout(Duration::from_millis(300), rt.exec("e1", &req)).await;
    assert!(given_up.is_err(), "the exec should still run at 300 ms");
    wait_until(
        "the exec given up is deleted",
        Duration::from_secs(15),
        || execs_left() == 0,
    )
    .await;
    assert_eq!(pids(), alone, "no exec process is left in the container");
    rt.remove("e1").await.expect("remove");
    drop(netns);
}

/// A start held for its network (the worker's data plane pass) makes the
/// container up to `Tasks.Create` and runs its process only once the pass
/// is done; cut short by the daemon's stop, it leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_held_for_its_network_runs_once_ready_and_leaves_nothing_if_cut_short() {
    use weft_worker::runtime::{Error, NetworkReady};
    let setup = Setup::new("held").await;
    let rt = Arc::new(setup.runtime());
    let pin = Pin(setup.tmp.path().join("netns").join("h"));
    let netns = Netns::create(&pin.0).expect("netns");
    let task_line = |id: &str| {
        setup
            .ctrd
            .ctr_ok(NS, &["tasks", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .map(str::to_owned)
    };
    let held = |id: &str, passes: tokio::sync::watch::Receiver<u64>| {
        let rt = rt.clone();
        let mut s = spec(id, &pin.0, "echo ran; while true; do sleep 0.1; done");
        s.stop.grace = Duration::from_millis(200);
        tokio::spawn(async move { rt.start_when(&s, NetworkReady::after(passes, 1)).await })
    };

    // Held: made, not run.
    let (passes, rx) = tokio::sync::watch::channel(0u64);
    let start = held("h1", rx);
    wait_until("h1's container made", Duration::from_secs(20), || {
        task_line("h1").is_some()
    })
    .await;
    let line = task_line("h1").unwrap();
    assert!(line.contains("CREATED"), "h1 is held, not running: {line}");
    assert!(!start.is_finished());
    assert!(!log_of(&rt, "h1").contains("ran"));
    passes.send(1).unwrap();
    let st = start.await.unwrap().expect("start");
    assert!(matches!(st.state, TaskState::Running { .. }), "{st:?}");
    wait_until("h1's output", Duration::from_secs(10), || {
        log_of(&rt, "h1").contains("ran")
    })
    .await;
    rt.remove("h1").await.expect("remove h1");

    // Cut short: the loop that would say the pass is done stops first.
    let (passes, rx) = tokio::sync::watch::channel(0u64);
    let start = held("h2", rx);
    wait_until("h2's container made", Duration::from_secs(20), || {
        task_line("h2").is_some()
    })
    .await;
    drop(passes);
    let r = start.await.unwrap();
    assert!(matches!(r, Err(Error::NotStarted { .. })), "{r:?}");
    assert_eq!(task_line("h2"), None, "no task left");
    let containers = setup.ctrd.ctr_ok(NS, &["containers", "ls", "-q"]);
    assert!(!containers.lines().any(|l| l == "h2"), "{containers}");
    assert!(rt.status("h2").is_none());
    assert!(
        !setup.cfg.tasks_dir.join("h2").exists(),
        "no task directory left"
    );
    drop(netns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_left_half_made_is_replaced_by_the_next_start() {
    let setup = Setup::new("leftover").await;
    let rt = setup.runtime();
    let pin = Pin(setup.tmp.path().join("netns").join("l"));
    let netns = Netns::create(&pin.0).expect("netns");
    // What a start killed between the container record and its task
    // leaves behind: a record, and its snapshot, under the task's id.
    setup
        .ctrd
        .ctr_ok(NS, &["containers", "create", IMAGE, "left", "sh"]);
    let info = setup.ctrd.ctr_ok(NS, &["containers", "info", "left"]);
    assert!(!info.contains("weft.task"), "a record of ctr's: {info}");
    let mut left = spec("left", &pin.0, "echo ran; while true; do sleep 0.1; done");
    left.stop.grace = Duration::from_millis(200);
    let st = rt.start(&left).await.expect("start over the leftover");
    assert!(matches!(st.state, TaskState::Running { .. }), "{st:?}");
    wait_until("left's output", Duration::from_secs(10), || {
        log_of(&rt, "left").contains("ran")
    })
    .await;
    let info = setup.ctrd.ctr_ok(NS, &["containers", "info", "left"]);
    assert!(
        info.contains("weft.task"),
        "the record is made again: {info}"
    );
    rt.remove("left").await.expect("remove");
    let containers = setup.ctrd.ctr_ok(NS, &["containers", "ls", "-q"]);
    assert!(!containers.lines().any(|l| l == "left"), "{containers}");
    let leases = setup.ctrd.ctr_ok(NS, &["leases", "ls", "-q"]);
    assert!(leases.trim().is_empty(), "no lease left: {leases}");
    drop(netns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_image_snapshots_went_missing_unpacks_the_image_again() {
    use weft_worker::image::{ImageStore, StoreConfig};
    let setup = Setup::new("unpacked").await;
    let mut config = StoreConfig::new(&setup.tmp.path().join("exec"));
    config.socket = setup.ctrd.socket().to_owned();
    config.namespace = NS.into();
    let store: Arc<dyn ImageSource> = Arc::new(ImageStore::new(config));
    let rt = ContainerdRuntime::new(setup.client.clone(), store, setup.cfg.clone());
    let pin = Pin(setup.tmp.path().join("netns").join("u"));
    let netns = Netns::create(&pin.0).expect("netns");
    let with_image = |id: &str| {
        let mut s = spec(id, &pin.0, "echo ran; exit 0");
        s.container.as_mut().unwrap().image = IMAGE.into();
        s
    };
    let run = |id: &'static str| {
        let rt = &rt;
        let s = with_image(id);
        async move {
            let st = rt.start(&s).await.expect("start");
            assert!(!matches!(st.state, TaskState::Failed { .. }), "{st:?}");
            let st = rt.wait(id).await.expect("wait");
            assert!(
                matches!(st.state, TaskState::Exited { code: Some(0), .. }),
                "{id}: {st:?}"
            );
            rt.remove(id).await.expect("remove");
        }
    };
    // The store now remembers the image unpacked.
    run("u1").await;
    // Its snapshot taken away behind the store's back (no container uses
    // it any more): the next start finds it gone, and unpacks it again.
    let top = setup
        .ctrd
        .ctr_ok(NS, &["snapshots", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect::<Vec<_>>();
    assert_eq!(top.len(), 1, "one layer, no container: {top:?}");
    setup.ctrd.ctr_ok(NS, &["snapshots", "rm", &top[0]]);
    run("u2").await;
    assert!(
        setup
            .ctrd
            .ctr_ok(NS, &["snapshots", "ls"])
            .contains(&top[0]),
        "unpacked again"
    );
    let leases = setup.ctrd.ctr_ok(NS, &["leases", "ls", "-q"]);
    assert!(leases.trim().is_empty(), "no lease left: {leases}");
    drop(netns);
}
