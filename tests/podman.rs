//! Debian's podman, set to its CNI backend with weft's plugin, on two hosts
//! of the lab: its containers join a weft overlay, reach each other, a
//! weft task and a weft service by name, and `podman rm` leaves nothing in
//! weft.
//!
//! Each host's podman runs in its daemon's mount namespace (a tmpfs on
//! `/run`, see `Lab::private_run`), so the namespaces it pins in that tmpfs
//! are seen by that daemon and by nothing else on the machine;
//! its storage, config and plugin directory are the host's own.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::podman::Podman;
use common::{Lab, addr_of_in, sleeper, wait_for};

const T: Duration = Duration::from_secs(30);

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
