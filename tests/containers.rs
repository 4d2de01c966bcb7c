//! Services and tasks as containers (issue #14), end to end: real daemons in
//! namespace hosts, each with its own containerd and runc, the busybox test
//! image loaded on each node with `weft image load`, replicas reached
//! through their VIP and by name exactly as host-process tasks are.
//! `ctr` is the independent view of what runs on each node.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::containerd::PrivateContainerd;
use common::{Lab, resolve, wait_for};

const IMAGE: &str = "weft-test/busybox:latest";
const NS: &str = "weft";

/// A lab whose hosts each run a private containerd. Fields drop in order:
/// the daemons go first, then their containerds.
struct Rig {
    lab: Lab,
    ctrd: Vec<(String, PrivateContainerd)>,
}

impl Rig {
    fn new(test: &str, hosts: &[&str]) -> Rig {
        let mut ctrd = Vec::new();
        for h in hosts {
            ctrd.push((
                h.to_string(),
                PrivateContainerd::start(&format!("{test}-{h}")),
            ));
        }
        let mut lab = Lab::new(test, hosts);
        for (h, c) in &ctrd {
            let socket = c.socket().display().to_string();
            let runc = c.runc_root().display().to_string();
            lab.start_with(
                h,
                &[
                    "--containerd-socket",
                    &socket,
                    "--runc-root",
                    &runc,
                    "--cgroup-parent",
                    c.cgroup_parent(),
                ],
            );
        }
        Rig { lab, ctrd }
    }

    fn ctrd(&self, host: &str) -> &PrivateContainerd {
        &self.ctrd.iter().find(|(h, _)| h == host).expect("host").1
    }

    /// The ids of the running containers on `host`, as containerd says.
    fn running(&self, host: &str) -> BTreeSet<String> {
        self.ctrd(host)
            .ctr_ok(NS, &["tasks", "ls"])
            .lines()
            .skip(1)
            .filter(|l| l.contains("RUNNING"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    fn containers(&self, host: &str) -> Vec<String> {
        self.ctrd(host)
            .ctr_ok(NS, &["containers", "ls", "-q"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn running_rows(lab: &Lab, service: &str) -> Vec<String> {
    lab.weft("m1", &["service", "ps", service])
        .lines()
        .skip(1)
        .filter(|l| l.contains(" running"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_service_of_containers_answers_through_its_vip_and_by_name() {
    let rig = Rig::new("ctr-svc", &["m1", "w1", "w2"]);
    let lab = &rig.lab;
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    lab.attachable_network("m1", "10.0.9.0/24", "appnet");
    let images = common::image::busybox();
    for h in ["m1", "w1", "w2"] {
        let out = lab.weft(h, &["image", "load", "-i", images.docker.to_str().unwrap()]);
        assert!(out.contains("weft-test/busybox"), "{h}: {out}");
    }

    // Docker's syntax: options, the image, then its command.
    // The image has few applet links: busybox itself makes the directory.
    let script =
        "busybox mkdir -p /www && echo $HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www";
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "--constraint",
            "node.role==worker",
            IMAGE,
            "sh",
            "-c",
            script,
        ],
    );
    wait_for("two replicas running", Duration::from_secs(30), || {
        running_rows(lab, "web").len() == 2
    });
    // Each worker runs one, as a container in its containerd.
    for w in ["w1", "w2"] {
        wait_for(
            &format!("a container on {w}"),
            Duration::from_secs(10),
            || rig.running(w).len() == 1,
        );
    }
    assert!(rig.running("m1").is_empty(), "the constraint kept m1 free");

    // A host-process client on m1 reaches both through the VIP and by name.
    let pin: PathBuf = common::sleeper(lab, "m1", "client", "appnet");
    let vip = common::vip_of(lab, "m1", "web");
    let inspect: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["service", "inspect", "web"])).expect("json");
    let cs = &inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(cs["Image"], IMAGE, "{inspect}");
    assert_eq!(cs["Args"][0], "sh", "{inspect}");
    wait_for("web resolves to its VIP", Duration::from_secs(15), || {
        resolve(&pin, "web") == BTreeSet::from([vip.clone()])
    });
    common::replicas_behind_vip(&pin, &vip, "web.", 2);

    // A container task with `weft run`: isolated from the host, its exit
    // code reported.
    let id = lab
        .weft(
            "m1",
            &[
                "run",
                "--network",
                "appnet",
                IMAGE,
                "sh",
                "-c",
                "test -e /var/lib/weft && exit 4; exit 3",
            ],
        )
        .trim()
        .to_string();
    wait_for("the container exits", Duration::from_secs(20), || {
        lab.weft("m1", &["ps", "--all"])
            .lines()
            .any(|l| l.starts_with(&id[..12.min(id.len())]) && l.contains("exited (3)"))
    });
    // Exit 3, not 4: the host's /var/lib/weft is not in the container.
    // (Its output is not checked here: in about one run in five on a loaded
    // machine the log of a container that exits at once stays empty and its
    // task is gone from containerd; an open bug, see the notes.)

    // An image no node has: the failure shows in `service ps`, and the
    // replacements back off (1 s, 2 s, 4 s, 8 s …) instead of one a second.
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "bad",
            "--constraint",
            "node.role==worker",
            "nope:latest",
        ],
    );
    common::image::assert_fails_and_backs_off(lab, "m1", "bad", "no such image: nope:latest");
    lab.weft("m1", &["service", "rm", "bad"]);

    // Scaling down removes a container; removing the service, the rest.
    lab.weft("m1", &["service", "scale", "web=1"]);
    wait_for("one container left", Duration::from_secs(30), || {
        rig.running("w1").len() + rig.running("w2").len() == 1
    });
    lab.weft("m1", &["service", "rm", "web"]);
    wait_for("no web containers", Duration::from_secs(30), || {
        rig.containers("w1").is_empty() && rig.containers("w2").is_empty()
    });
}

/// `--stop-signal` and `--stop-grace-period`: a container removed by a
/// scale-down or `service rm` gets its signal, has the time to finish its
/// work (here: 2 s, then a message over its network, which stays up while
/// it drains), and meanwhile the node keeps starting other tasks.
#[test]
fn removed_containers_finish_their_work_in_their_grace_period_and_block_nothing() {
    let rig = Rig::new("ctr-stop", &["m1"]);
    let lab = &rig.lab;
    lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.attachable_network("m1", "10.0.8.0/24", "appnet");
    let images = common::image::busybox();
    lab.weft(
        "m1",
        &["image", "load", "-i", images.docker.to_str().unwrap()],
    );

    // Bad stop options are refused and create nothing.
    for (flag, value, says) in [
        ("--stop-signal", "SIGNOPE", "invalid signal"),
        ("--stop-grace-period", "2h", "at most 1h"),
        ("--stop-grace-period", "soon", "invalid duration"),
    ] {
        let err = lab.weft_err(
            "m1",
            &["service", "create", "--name", "bad", flag, value, IMAGE],
        );
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    assert!(!lab.weft("m1", &["service", "ls"]).contains("bad"));

    // A host-process sink that prints what it is sent.
    let sink = lab.run_task(
        "m1",
        &[
            "--detach",
            "--name",
            "sink",
            "--network",
            "appnet",
            "--ip",
            "10.0.8.200",
            "--",
            "busybox",
            "sh",
            "-c",
            "while true; do busybox nc -l -p 7000; done",
        ],
    );
    let said = |what: &str| {
        lab.weft("m1", &["logs", &sink])
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };

    // USR1 is the stop signal (SIGTERM would be ignored by the PID 1
    // shell). Its work: wait until the test says go (a connection to port
    // 7001), then send a message to the sink over its network.
    let script = "trap 'busybox nc -l -p 7001; echo done-$HOSTNAME | busybox nc 10.0.8.200 7000; exit 0' USR1; \
                  while true; do busybox sleep 0.1; done";
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "slow",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "--stop-signal",
            "usr1",
            "--stop-grace-period",
            "20s",
            IMAGE,
            "sh",
            "-c",
            script,
        ],
    );
    wait_for("two replicas", Duration::from_secs(30), || {
        running_rows(lab, "slow").len() == 2 && rig.running("m1").len() == 2
    });
    // Tells every draining replica to finish (the others refuse).
    let ps = lab.weft("m1", &["ps"]);
    let replicas: Vec<String> = ps
        .lines()
        .filter(|l| l.contains(" slow."))
        .filter_map(|l| l.split("appnet=").nth(1))
        .filter_map(|a| a.split('/').next().map(str::to_owned))
        .collect();
    assert_eq!(replicas.len(), 2, "{ps}");
    // (It listens only once its trap runs: until one accepts, try again.)
    let go = || {
        wait_for(
            "a draining replica takes the go",
            Duration::from_secs(10),
            || {
                replicas.iter().any(|ip| {
                    common::nsenter(
                        &lab.task_netns("m1", &sink),
                        &["sh", "-c", &format!("echo go | busybox nc -w 1 {ip} 7001")],
                    )
                    .status
                    .success()
                })
            },
        );
    };
    let inspect: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["service", "inspect", "slow"])).expect("json");
    let tt = &inspect[0]["Spec"]["TaskTemplate"];
    assert_eq!(tt["StopSignal"], "SIGUSR1", "{inspect}");
    assert_eq!(tt["StopGracePeriod"], 20_000_000_000u64, "{inspect}");

    // Scale down: the removed replica drains. While it does, a new
    // container on the same node starts (the node is not held up). It goes
    // on the node's bridge network: on appnet it would get the drained
    // replica's address (the lowest free one), which takes the drained
    // replica off the network at once.
    let before = rig.running("m1");
    let t = std::time::Instant::now();
    lab.weft("m1", &["service", "scale", "slow=1"]);
    let quick = lab.run_task("m1", &["--detach", IMAGE, "sleep", "300"]);
    wait_for("the new container runs", Duration::from_secs(10), || {
        rig.running("m1").contains(&quick)
    });
    let drained_at = t.elapsed();
    let running = rig.running("m1");
    assert!(
        before.is_subset(&running),
        "the new container ran {drained_at:?} after the scale-down, while the removed \
         replica was still finishing ({running:?} ⊇ {before:?})"
    );
    assert_eq!(said("done-"), 0, "nobody finished before being told");
    go();
    wait_for(
        "the drained replica's message",
        Duration::from_secs(15),
        || said("done-") == 1,
    );
    wait_for("the drained replica gone", Duration::from_secs(10), || {
        rig.running("m1").len() == 2
    });
    eprintln!(
        "scale-down: a new container ran after {drained_at:?}; the old one finished its work"
    );

    // `service rm`: the last replica drains the same way.
    lab.weft("m1", &["service", "rm", "slow"]);
    wait_for("the last replica draining", Duration::from_secs(10), || {
        !lab.weft("m1", &["service", "ls"]).contains("slow")
    });
    go();
    wait_for(
        "the last replica's message",
        Duration::from_secs(15),
        || said("done-") == 2,
    );
    wait_for(
        "only the new container left",
        Duration::from_secs(10),
        || rig.running("m1") == BTreeSet::from([quick.clone()]),
    );
}
