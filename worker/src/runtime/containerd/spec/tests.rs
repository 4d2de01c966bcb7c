use super::*;

fn task(command: &[&str]) -> TaskSpec {
    TaskSpec {
        id: "0123456789abcdef".into(),
        name: "web.1".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::from([("MODE".into(), "task".into())]),
        netns: "/run/weft/netns/task-0123456789abcdef".into(),
        resolv_conf: Some("/run/weft/resolv.conf".into()),
        hostname: Some("web.1".into()),
        container: Some(Box::new(ContainerSpec {
            image: "busybox".into(),
            ..ContainerSpec::default()
        })),
        stop: Default::default(),
        log: None,
        external: None,
    }
}

fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
    let mut i = ImageConfig::default();
    i.config.entrypoint = entrypoint.iter().map(|s| s.to_string()).collect();
    i.config.cmd = cmd.iter().map(|s| s.to_string()).collect();
    i.config.env = vec!["PATH=/bin".into(), "MODE=image".into(), "KEEP=1".into()];
    i.config.working_dir = "/srv".into();
    i
}

fn args(t: &TaskSpec, c: &ContainerSpec, i: &ImageConfig) -> Result<Vec<String>, SpecError> {
    plan_process(t, c, i, "h").map(|p| p.args)
}

#[test]
fn entrypoint_and_command_merge_as_docker_does() {
    let c = ContainerSpec::default();
    let i = image(&["/bin/entry", "-x"], &["serve", "--port", "80"]);
    // Nothing given: entrypoint + Cmd.
    assert_eq!(
        args(&task(&[]), &c, &i).unwrap(),
        ["/bin/entry", "-x", "serve", "--port", "80"]
    );
    // A command replaces Cmd only.
    assert_eq!(
        args(&task(&["debug"]), &c, &i).unwrap(),
        ["/bin/entry", "-x", "debug"]
    );
    // --entrypoint replaces the entrypoint and drops Cmd.
    let ep = ContainerSpec {
        entrypoint: Some(vec!["/bin/sh".into()]),
        ..c.clone()
    };
    assert_eq!(args(&task(&[]), &ep, &i).unwrap(), ["/bin/sh"]);
    assert_eq!(
        args(&task(&["-c", "true"]), &ep, &i).unwrap(),
        ["/bin/sh", "-c", "true"]
    );
    // --entrypoint "" clears it: the command alone runs.
    let cleared = ContainerSpec {
        entrypoint: Some(vec![String::new()]),
        ..c.clone()
    };
    assert_eq!(args(&task(&["ls"]), &cleared, &i).unwrap(), ["ls"]);
    assert_eq!(
        args(&task(&[]), &cleared, &i).unwrap_err(),
        SpecError::NoCommand
    );
    // An image with neither, and nothing given.
    assert_eq!(
        args(&task(&[]), &c, &image(&[], &[])).unwrap_err(),
        SpecError::NoCommand
    );
    // Only Cmd in the image.
    assert_eq!(args(&task(&[]), &c, &image(&[], &["sh"])).unwrap(), ["sh"]);
}

#[test]
fn environment_workdir_and_user() {
    let c = ContainerSpec::default();
    let p = plan_process(&task(&[]), &c, &image(&[], &["sh"]), "web.1").unwrap();
    assert_eq!(
        p.env,
        ["PATH=/bin", "HOSTNAME=web.1", "MODE=task", "KEEP=1"],
        "the image's order, the task's value wins, HOSTNAME added"
    );
    assert_eq!(p.cwd, "/srv");
    assert_eq!((p.uid, p.gid), (0, 0));

    let mut bare = image(&[], &["sh"]);
    bare.config.env.clear();
    bare.config.working_dir.clear();
    let p = plan_process(&task(&[]), &c, &bare, "h").unwrap();
    assert_eq!(p.env[0], format!("PATH={DEFAULT_PATH}"));
    assert_eq!(p.cwd, "/");

    let over = ContainerSpec {
        workdir: Some("/tmp".into()),
        user: Some("1000:100".into()),
        ..c.clone()
    };
    let p = plan_process(&task(&[]), &over, &image(&[], &["sh"]), "h").unwrap();
    assert_eq!(p.cwd, "/tmp");
    assert_eq!((p.uid, p.gid), (1000, 100));

    let mut img_user = image(&[], &["sh"]);
    img_user.config.user = "65534".into();
    let p = plan_process(&task(&[]), &c, &img_user, "h").unwrap();
    assert_eq!((p.uid, p.gid), (65534, 0));

    for (user, ok) in [
        ("root", true),
        ("root:root", true),
        ("0:0", true),
        ("nobody", false),
        ("1:x", false),
    ] {
        let u = ContainerSpec {
            user: Some(user.into()),
            ..c.clone()
        };
        let r = plan_process(&task(&[]), &u, &image(&[], &["sh"]), "h");
        assert_eq!(r.is_ok(), ok, "{user}: {r:?}");
    }
    let rel = ContainerSpec {
        workdir: Some("srv".into()),
        ..c.clone()
    };
    assert_eq!(
        plan_process(&task(&[]), &rel, &image(&[], &["sh"]), "h").unwrap_err(),
        SpecError::RelativeWorkdir("srv".into())
    );
    let mut bad_env = image(&[], &["sh"]);
    bad_env.config.env.push("NOEQUALS".into());
    assert!(matches!(
        plan_process(&task(&[]), &c, &bad_env, "h"),
        Err(SpecError::BadImageEnv(_))
    ));
}

/// The capability numbers of linux/capability.h for the ones Docker keeps.
fn cap_number(c: Capability) -> u32 {
    match c {
        Capability::Chown => 0,
        Capability::DacOverride => 1,
        Capability::Fowner => 3,
        Capability::Fsetid => 4,
        Capability::Kill => 5,
        Capability::Setgid => 6,
        Capability::Setuid => 7,
        Capability::Setpcap => 8,
        Capability::NetBindService => 10,
        Capability::NetRaw => 13,
        Capability::SysChroot => 18,
        Capability::Mknod => 27,
        Capability::AuditWrite => 29,
        Capability::Setfcap => 31,
        other => panic!("not a Docker default: {other:?}"),
    }
}

#[test]
fn the_whole_spec_has_dockers_defaults_and_weft_s_network_namespace() {
    let files = TaskFiles {
        hosts: Some("/x/hosts".into()),
        hostname: Some("/x/hostname".into()),
        mounts: vec![],
        user: None,
    };
    let t = task(&[]);
    let c = *t.container.clone().unwrap();
    let spec = build(
        &t,
        &c,
        &image(&[], &["sh"]),
        &files,
        Path::new("/weft/0123"),
    )
    .unwrap();
    // It is what runc reads: JSON, and it reads back.
    let json = serde_json::to_value(&spec).unwrap();
    let back: Spec = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, spec);

    // CapEff as /proc/self/status shows it in a Docker container.
    let mask: u64 = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| 1u64 << cap_number(*c))
        .sum();
    assert_eq!(mask, 0xa80425fb);
    let caps = &json["process"]["capabilities"];
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(caps[set].as_array().unwrap().len(), 14, "{set}");
    }
    for set in ["inheritable", "ambient"] {
        assert!(caps[set].as_array().is_none_or(|a| a.is_empty()), "{set}");
    }

    assert_eq!(json["hostname"], "web.1");
    assert_eq!(json["root"]["path"], "rootfs");
    assert_eq!(json["root"]["readonly"], false);
    let ns: Vec<(String, Option<String>)> = json["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap().to_owned(),
                n["path"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        ns,
        [
            ("pid".into(), None),
            ("ipc".into(), None),
            ("uts".into(), None),
            ("mount".into(), None),
            (
                "network".into(),
                Some("/run/weft/netns/task-0123456789abcdef".into())
            ),
        ]
    );
    assert_eq!(json["linux"]["cgroupsPath"], "/weft/0123");
    assert_eq!(
        json["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
        "0"
    );
    assert!(
        json["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/kcore".into())
    );
    assert!(
        json["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/sys".into())
    );
    assert_eq!(
        json["linux"]["resources"]["devices"],
        serde_json::json!([{"allow": false, "access": "rwm"}])
    );
    let mounts: Vec<(String, String)> = json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["destination"].as_str().unwrap().to_owned(),
                m["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("/etc/resolv.conf", "/run/weft/resolv.conf"),
        ("/etc/hosts", "/x/hosts"),
        ("/etc/hostname", "/x/hostname"),
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev/shm", "shm"),
    ] {
        assert!(
            mounts.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {mounts:?}"
        );
    }
    assert!(
        json["process"]["rlimits"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    );

    let ro = ContainerSpec {
        read_only: true,
        ..c
    };
    let spec = build(
        &t,
        &ro,
        &image(&[], &["sh"]),
        &files,
        Path::new("/weft/0123"),
    )
    .unwrap();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
}

#[test]
fn limits_become_linux_resources_as_docker_sets_them() {
    let t = task(&["sh"]);
    let files = TaskFiles {
        hosts: None,
        hostname: None,
        mounts: vec![],
        user: None,
    };
    let resources = |limits: Limits| {
        let c = ContainerSpec {
            image: "busybox".into(),
            limits,
            ..ContainerSpec::default()
        };
        let spec = build(&t, &c, &image(&[], &["sh"]), &files, Path::new("/w/1")).unwrap();
        serde_json::to_value(&spec).unwrap()["linux"]["resources"].clone()
    };
    // None: only the device rules, no cgroup limit at all.
    assert_eq!(
        resources(Limits::default()),
        serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]})
    );
    // --limit-cpu 0.5 --limit-memory 32m --limit-pids 64.
    assert_eq!(
        resources(Limits {
            nano_cpus: 500_000_000,
            memory_bytes: 32 << 20,
            pids: 64,
        }),
        serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "memory": {"limit": 33554432, "swap": 33554432},
            "cpu": {"quota": 50000, "period": 100000},
            "pids": {"limit": 64},
        })
    );
    // 1.5 CPUs: 150 ms per 100 ms; the smallest limit still gets the
    // kernel's least quota (1 ms).
    let cpu = |n| {
        resources(Limits {
            nano_cpus: n,
            ..Limits::default()
        })["cpu"]
            .clone()
    };
    assert_eq!(
        cpu(1_500_000_000),
        serde_json::json!({"quota": 150000, "period": 100000})
    );
    assert_eq!(
        cpu(1_000_000),
        serde_json::json!({"quota": 1000, "period": 100000})
    );
}
