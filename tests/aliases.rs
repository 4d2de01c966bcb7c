//! Network aliases end to end (issue #18): a service's alias
//! (`--network name=NET,alias=A`) answers its VIP and `tasks.A` its tasks;
//! tasks' aliases (`weft run --network-alias`, `--network name=..,alias=`,
//! `network connect --alias`) answer every task that has them; all of it
//! only on that network. Names that collide with a service's are refused
//! and change nothing. Real daemons in namespace hosts; the names are
//! asked from inside task namespaces, of the node's resolver at
//! 127.0.0.11.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Lab, resolve, service_task_ips, wait_for};

/// `task`'s address on `network` (no prefix), from `weft inspect` on the
/// task's node.
fn addr_on(lab: &Lab, host: &str, task: &str, network: &str) -> String {
    inspect(lab, host, task)["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap_or_else(|| panic!("{task} has no address on {network}"))
        .to_string()
}

fn inspect(lab: &Lab, host: &str, what: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft(host, &["inspect", what])).expect("inspect json");
    v[0].clone()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn resolves(pin: &Path, name: &str, want: &BTreeSet<String>) {
    wait_for(
        &format!("{name} resolves to {want:?}"),
        Duration::from_secs(20),
        || resolve(pin, name) == *want,
    );
}

/// `weft ARGS` on `host` fails, saying `why` when it is not empty.
fn refused(lab: &Lab, host: &str, args: &str, why: &str) {
    let args: Vec<&str> = args.split(' ').collect();
    let out = lab.try_weft(host, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert!(err.contains(why), "{args:?}: {err}");
}

/// What the test made: the lab, two standalone tasks sharing the alias
/// `db` (db1 on m1, db2 on w1), a client on appnet (m1) and an outsider on
/// other (w1), both sleeping.
struct Rig {
    lab: Lab,
    db1: String,
    db2: String,
    client: PathBuf,
    outsider: PathBuf,
}

/// m1 and w1; overlays appnet and other; service web (2 replicas) on
/// appnet with aliases www and front, and on other without.
fn rig() -> Rig {
    let mut lab = Lab::new("aliases", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &[]);
    lab.join("w1", &wt, "m1");
    for (name, subnet) in [("appnet", "10.0.21.0/24"), ("other", "10.0.22.0/24")] {
        lab.attachable_network("m1", subnet, name);
    }
    let web = "service create --name web --replicas 2 --network name=appnet,alias=www,alias=front \
               --network other -- sleep 3600";
    lab.weft("m1", &web.split_whitespace().collect::<Vec<_>>());
    let alias_flag = ["--network", "appnet", "--network-alias", "db"];
    let db1 = lab.run_task(
        "m1",
        &[
            &["--name", "db1"],
            &alias_flag[..],
            &["--", "sleep", "3600"],
        ]
        .concat(),
    );
    let long_form = [
        "--name",
        "db2",
        "--network",
        "name=appnet,alias=db",
        "--",
        "sleep",
        "3600",
    ];
    let db2 = lab.run_task("w1", &long_form);
    let client = common::sleeper(&lab, "m1", "client", "appnet");
    let outsider = common::sleeper(&lab, "w1", "outsider", "other");
    Rig {
        lab,
        db1,
        db2,
        client,
        outsider,
    }
}

/// web's VIP on the network whose subnet starts with `prefix`.
fn vip_in(service: &serde_json::Value, prefix: &str) -> String {
    service["Endpoint"]["VirtualIPs"]
        .as_array()
        .expect("VIPs")
        .iter()
        .filter_map(|x| x["Addr"].as_str())
        .find(|a| a.starts_with(prefix))
        .unwrap_or_else(|| panic!("a VIP in {prefix}: {service}"))
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn aliases_resolve_on_their_network_only_and_collisions_are_refused() {
    let r = rig();
    let lab = &r.lab;
    let web: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["service", "inspect", "web"])).expect("json");
    let web = &web[0];
    let (vip_app, vip_other) = (vip_in(web, "10.0.21."), vip_in(web, "10.0.22."));
    let nets = &web["Spec"]["TaskTemplate"]["Networks"];
    assert_eq!(
        nets[0]["Aliases"],
        serde_json::json!(["www", "front"]),
        "{nets}"
    );

    // On appnet: the service's aliases answer its VIP there, tasks.ALIAS
    // its tasks; the tasks' alias answers both of them, on both nodes.
    resolves(&r.client, "www", &set(&[&vip_app]));
    resolves(&r.client, "FRONT.appnet", &set(&[&vip_app]));
    let backends = service_task_ips(lab, "web", "appnet");
    assert_eq!(backends.len(), 2);
    resolves(&r.client, "tasks.www", &backends);
    let db1_ip = addr_on(lab, "m1", &r.db1, "appnet");
    let db2_ip = addr_on(lab, "w1", &r.db2, "appnet");
    resolves(&r.client, "db", &set(&[&db1_ip, &db2_ip]));
    let aliases = &inspect(lab, "m1", &r.db1)["NetworkSettings"]["Networks"]["appnet"]["Aliases"];
    assert_eq!(*aliases, serde_json::json!(["db"]));

    // On other: the service's own name, but none of appnet's aliases.
    resolves(&r.outsider, "web", &set(&[&vip_other]));
    for name in ["www", "tasks.www", "db", "front"] {
        assert!(
            resolve(&r.outsider, name).is_empty(),
            "{name} is appnet's only"
        );
    }

    // network connect --alias: the outsider joins appnet as "probe".
    let connect = [
        "network", "connect", "--alias", "probe", "appnet", "outsider",
    ];
    lab.weft("w1", &connect);
    let probe_ip = addr_on(lab, "w1", "outsider", "appnet");
    resolves(&r.client, "probe", &set(&[&probe_ip]));
    // Removing a task takes its alias away.
    lab.weft("w1", &["rm", "-f", &r.db2]);
    resolves(&r.client, "db", &set(&[&db1_ip]));

    collisions_and_bad_aliases_are_refused(lab);

    // service update --network-add with an alias (after --network-rm).
    let update = "service update --network-rm other --network-add name=other,alias=site web";
    lab.weft("m1", &update.split(' ').collect::<Vec<_>>());
    wait_for("site answers on other", Duration::from_secs(30), || {
        resolve(&r.outsider, "site").len() == 1
    });
}

/// A name of a service (or, for a service, any name taken on the network)
/// is refused and nothing is made; so are bad aliases.
fn collisions_and_bad_aliases_are_refused(lab: &Lab) {
    let tasks_before = lab.weft("m1", &["ps", "-a", "-q"]);
    let taken = "is already a name of service web on network \"appnet\"";
    refused(
        lab,
        "m1",
        "run -d --network appnet --network-alias web -- true",
        taken,
    );
    refused(
        lab,
        "m1",
        "run -d --network name=appnet,alias=WWW -- true",
        taken,
    );
    let svc = "service create --name api --network";
    refused(
        lab,
        "m1",
        &format!("{svc} name=appnet,alias=db -- sleep 60"),
        "of task db1",
    );
    refused(
        lab,
        "m1",
        &format!("{svc} name=appnet,alias=www -- sleep 60"),
        taken,
    );
    let db = "service create --name db --network appnet -- sleep 60";
    refused(lab, "m1", db, "is already a name of task db1");
    assert!(!lab.weft("m1", &["service", "ls"]).contains("api"));
    // Aliases need a user-defined network, and valid names.
    for (args, why) in [
        ("--network-alias a", "--network-alias needs --network"),
        ("--network bridge --network-alias a", "resolves no names"),
        (
            "--network host --network-alias a",
            "needs a user-defined network",
        ),
        (
            "--network name=appnet,alias=tasks.web",
            "names a service's tasks",
        ),
        ("--network name=appnet,alias=-x", "invalid alias"),
        ("--network name=appnet,alias=a,alias=A", "given twice"),
        ("--network name=appnet,driver-opt=x", "unknown option"),
    ] {
        refused(lab, "m1", &format!("run -d {args} -- true"), why);
    }
    assert_eq!(lab.weft("m1", &["ps", "-a", "-q"]), tasks_before);
}
