//! `weft` as a CNI plugin, driven exactly as a runtime drives it (the
//! CNI_ variables in the environment, the config on stdin, the result or
//! the error object on stdout) against real daemons in namespace hosts:
//! the container's namespace is one the test makes, as a runtime would.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Lab, WEFT, nsenter, nsenter_stdout, pings, resolve, sleeper, wait_for};
use serde_json::{Value, json};
use weft_overlay::linux::Netns;

const T: Duration = Duration::from_secs(30);

/// A container's network namespace as a runtime makes it (pinned, its
/// loopback up); unpinned on drop, also when the test fails.
struct Ctr(PathBuf);

impl Ctr {
    fn new(lab: &Lab, name: &str) -> Ctr {
        let pin = lab.dir().join("containers").join(name);
        Netns::create(&pin).expect("container namespace");
        assert!(
            nsenter(&pin, &["ip", "link", "set", "lo", "up"])
                .status
                .success()
        );
        Ctr(pin)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = Netns::delete(&self.0);
    }
}

/// A process killed on drop.
struct Httpd(std::process::Child);

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plugin call's outcome: exit success, and stdout as JSON (`Null` when
/// empty).
struct Call {
    ok: bool,
    out: Value,
}

impl Call {
    fn code(&self) -> u64 {
        assert!(!self.ok, "expected a CNI error, got success: {}", self.out);
        self.out["code"].as_u64().expect("an error code")
    }
}

/// Runs the plugin as a runtime would: `env` as the CNI_ variables, the
/// config on stdin.
fn plugin(exe: &Path, env: &[(&str, &str)], stdin: &str) -> Call {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write the config");
    let out = child.wait_with_output().expect("plugin output");
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("plugin printed non-JSON ({e}): {text}"))
    };
    Call {
        ok: out.status.success(),
        out: parsed,
    }
}

fn conf(socket: &Path, network: &str) -> String {
    json!({"cniVersion": "1.0.0", "name": network, "type": "weft", "network": network,
           "socket": socket})
    .to_string()
}

fn call(lab: &Lab, host: &str, cmd: &str, id: &str, ns: &str, ifname: &str, network: &str) -> Call {
    plugin(
        Path::new(WEFT),
        &[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", ns),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-ctr"),
        ],
        &conf(&lab.socket_path(host), network),
    )
}

/// The IPv4 address (with prefix) of `dev` in the namespace `pin`.
fn addr_of(pin: &Path, dev: &str) -> Option<String> {
    common::addr_of_in(&nsenter_stdout(
        pin,
        &["ip", "-o", "-4", "addr", "show", "dev", dev],
    ))
}

/// The containers `network inspect` lists on `network`.
fn containers(lab: &Lab, host: &str, network: &str) -> serde_json::Map<String, Value> {
    let v: Value =
        serde_json::from_str(&lab.weft(host, &["network", "inspect", network])).expect("json");
    v[0]["Containers"].as_object().cloned().unwrap_or_default()
}

fn listed(lab: &Lab, host: &str, network: &str, container: &str) -> bool {
    containers(lab, host, network)
        .values()
        .any(|c| c["ContainerID"] == container)
}

/// The namespaces weft has pinned for tasks on `host`.
fn task_pins(lab: &Lab, host: &str) -> Vec<String> {
    std::fs::read_dir(lab.host_dir(host).join("run/netns"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.starts_with("task-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Two hosts, an attachable overlay `appnet`, a task `peer` on h2 and a
/// service `web` (for its VIP), for the CNI containers made on h1.
struct World {
    lab: Lab,
    peer_pin: PathBuf,
    peer_ip: String,
    vip: String,
}

impl World {
    fn new(test: &str) -> World {
        let mut lab = Lab::new(test, &["h1", "h2"]);
        lab.start_all();
        let (worker, _) = lab.init("h1", &[]);
        lab.join("h2", &worker, "h1");
        lab.attachable_network("h1", "10.71.0.0/24", "appnet");
        let peer_pin = sleeper(&lab, "h2", "peer", "appnet");
        let peer_ip = addr_of(&peer_pin, "eth0").expect("peer address");
        let peer_ip = peer_ip.split('/').next().unwrap().to_owned();
        common::sleeping_service(&lab, "h1", "web", "appnet");
        let vip = common::vip_of(&lab, "h1", "web");
        World {
            lab,
            peer_pin,
            peer_ip,
            vip,
        }
    }
}

#[test]
fn a_cni_container_joins_a_weft_overlay_reaches_tasks_and_services_on_other_hosts_and_leaves_nothing()
 {
    let w = World::new("cni-e2e");
    let c1 = Ctr::new(&w.lab, "c1");
    let add = add_with_a_port(&w.lab, &c1);
    let ip = the_result_is_what_the_namespace_has(&add, &c1);
    let c1_ip = ip.split('/').next().unwrap().to_owned();

    // Across hosts, both ways, and a weft service by name.
    wait_for("the container reaching a task on h2", T, || {
        pings(&c1.0, &w.peer_ip)
    });
    wait_for("a task on h2 reaching the container", T, || {
        pings(&w.peer_pin, &c1_ip)
    });
    wait_for("the service's name from the container", T, || {
        resolve(&c1.0, "web").contains(&w.vip)
    });
    let port = the_published_port_answers_from_h2(&w.lab, &c1);
    listed_and_connected_by_its_runtime_only(&w.lab, &ip);
    check_and_a_retried_add_agree(&w.lab, &c1, &add.out, &ip);
    del_leaves_nothing(&w.lab, &c1, &port);
    a_namespace_gone_without_del_is_cleaned_up(&w.lab);
    a_del_after_the_namespace_went_frees_everything(&w.lab);
}

/// ADD of `c1id` with CNI's portMappings capability (18080 → 8080).
fn add_with_a_port(lab: &Lab, c1: &Ctr) -> Call {
    let mut with_ports: Value =
        serde_json::from_str(&conf(&lab.socket_path("h1"), "appnet")).unwrap();
    with_ports["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]});
    let add = plugin(
        Path::new(WEFT),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1id"),
            ("CNI_NETNS", c1.path()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-ctr"),
        ],
        &with_ports.to_string(),
    );
    assert!(add.ok, "ADD failed: {}\n{}", add.out, lab.log_tail("h1"));
    add
}

/// The result in CNI 1.0's shape, and what the namespace holds; returns
/// eth0's address with its prefix.
fn the_result_is_what_the_namespace_has(add: &Call, c1: &Ctr) -> String {
    let r = &add.out;
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][0]["sandbox"], c1.path());
    let ip = r["ips"][0]["address"]
        .as_str()
        .expect("an address")
        .to_owned();
    assert!(ip.starts_with("10.71.0.") && ip.ends_with("/24"), "{r}");
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0", "{r}");
    assert_eq!(r["dns"]["nameservers"][0], "127.0.0.11");
    assert_eq!(addr_of(&c1.0, "eth0").as_deref(), Some(ip.as_str()));
    let link = nsenter_stdout(&c1.0, &["ip", "-o", "link", "show", "dev", "eth0"]);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default();
    assert_eq!(mac, r["interfaces"][0]["mac"], "{r}\n{link}");
    assert_eq!(
        r["ips"][1]["address"],
        addr_of(&c1.0, "gw0").unwrap_or_default().as_str()
    );
    ip
}

/// A server in the container and the URL of its published port on h1.
struct Published {
    _httpd: Httpd,
    url: String,
    from: PathBuf,
}

impl Published {
    fn fetch(&self) -> String {
        nsenter_stdout(
            &self.from,
            &["timeout", "3", "busybox", "wget", "-qO-", &self.url],
        )
    }
}

fn the_published_port_answers_from_h2(lab: &Lab, c1: &Ctr) -> Published {
    let site = lab.dir().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello-from-c1\n").unwrap();
    let port = Published {
        _httpd: Httpd(
            Command::new("nsenter")
                .arg(format!("--net={}", c1.path()))
                .args(["busybox", "httpd", "-f", "-p", "8080", "-h"])
                .arg(&site)
                .spawn()
                .expect("httpd in the container"),
        ),
        url: format!("http://{}:18080/", lab.addr("h1")),
        from: lab.host_netns("h2"),
    };
    wait_for("the container's published port from h2", T, || {
        port.fetch().contains("hello-from-c1")
    });
    // The operator's chain applies to it as to a task's port.
    let h1 = lab.host_netns("h1");
    let rule = [
        "nft",
        "add",
        "rule",
        "inet",
        "weft_user",
        "weft-user",
        "meta",
        "l4proto",
        "tcp",
        "ct",
        "original",
        "proto-dst",
        "18080",
        "drop",
    ];
    assert!(nsenter(&h1, &rule).status.success());
    assert!(
        !port.fetch().contains("hello-from-c1"),
        "weft-user's drop rule did not apply"
    );
    let flush = ["nft", "flush", "chain", "inet", "weft_user", "weft-user"];
    assert!(nsenter(&h1, &flush).status.success());
    wait_for("the port answering again", T, || {
        port.fetch().contains("hello-from-c1")
    });
    port
}

/// In network inspect with the runtime's ID and name; `weft network
/// connect` refuses it.
fn listed_and_connected_by_its_runtime_only(lab: &Lab, ip: &str) {
    let listed_c1 = containers(lab, "h1", "appnet")
        .into_values()
        .find(|c| c["ContainerID"] == "c1id")
        .expect("the container in network inspect");
    assert_eq!(listed_c1["Runtime"], "cni");
    assert_eq!(listed_c1["ContainerName"], "web-ctr");
    assert_eq!(listed_c1["IPv4Address"], ip);
    let name = listed_c1["Name"].as_str().expect("task name");
    let refused = lab.weft_err("h1", &["network", "connect", "appnet", name]);
    assert!(refused.contains("its runtime connects it"), "{refused}");
}

/// CHECK with ADD's result passes; an ADD retried gives the same address.
fn check_and_a_retried_add_agree(lab: &Lab, c1: &Ctr, added: &Value, ip: &str) {
    let mut check_conf: Value =
        serde_json::from_str(&conf(&lab.socket_path("h1"), "appnet")).unwrap();
    check_conf["prevResult"] = added.clone();
    let check = plugin(
        Path::new(WEFT),
        &[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1id"),
            ("CNI_NETNS", c1.path()),
            ("CNI_IFNAME", "eth0"),
        ],
        &check_conf.to_string(),
    );
    assert!(check.ok && check.out.is_null(), "CHECK: {}", check.out);
    let again = call(lab, "h1", "ADD", "c1id", c1.path(), "eth0", "appnet");
    assert!(again.ok, "{}", again.out);
    assert_eq!(again.out["ips"][0]["address"], ip);
}

/// DEL: the interface, the port and the VIP table go, the runtime's
/// namespace stays; repeated and unknown DELs succeed; CHECK then fails.
fn del_leaves_nothing(lab: &Lab, c1: &Ctr, port: &Published) {
    let del = call(lab, "h1", "DEL", "c1id", c1.path(), "eth0", "appnet");
    assert!(del.ok && del.out.is_null(), "DEL: {}", del.out);
    assert!(addr_of(&c1.0, "eth0").is_none(), "eth0 left behind");
    let links = nsenter_stdout(&c1.0, &["ip", "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "only lo is left: {links}");
    assert!(
        Netns::exists(&c1.0),
        "the runtime's namespace must survive DEL"
    );
    assert!(!listed(lab, "h1", "appnet", "c1id"));
    assert!(
        !port.fetch().contains("hello-from-c1"),
        "the port still answers after DEL"
    );
    let rules = nsenter_stdout(&c1.0, &["nft", "list", "ruleset"]);
    assert!(
        !rules.contains("weft"),
        "weft's VIP table left behind: {rules}"
    );
    for (id, ns) in [("c1id", c1.path()), ("c1id", ""), ("never", "/nonexistent")] {
        let d = call(lab, "h1", "DEL", id, ns, "eth0", "appnet");
        assert!(d.ok, "DEL {id} {ns}: {}", d.out);
    }
    let check = call(lab, "h1", "CHECK", "c1id", c1.path(), "eth0", "appnet");
    assert!(!check.ok, "CHECK after DEL must fail");
}

/// A container whose namespace goes without a DEL: its node removes it.
fn a_namespace_gone_without_del_is_cleaned_up(lab: &Lab) {
    let pins_before = task_pins(lab, "h1");
    let c2 = Ctr::new(lab, "c2");
    let add2 = call(lab, "h1", "ADD", "c2id", c2.path(), "eth0", "appnet");
    assert!(add2.ok, "{}", add2.out);
    assert!(listed(lab, "h1", "appnet", "c2id"));
    drop(c2);
    wait_for("the gone container's endpoint removed", T, || {
        !listed(lab, "h1", "appnet", "c2id")
    });
    wait_for("its namespace let go", T, || {
        task_pins(lab, "h1") == pins_before
    });
}

/// The runtime deletes the namespace first, then calls DEL (no
/// CNI_NETNS): DEL frees everything and returns once it has.
fn a_del_after_the_namespace_went_frees_everything(lab: &Lab) {
    let pins_before = task_pins(lab, "h1");
    let c5 = Ctr::new(lab, "c5");
    let add5 = call(lab, "h1", "ADD", "c5id", c5.path(), "eth0", "appnet");
    assert!(add5.ok, "{}", add5.out);
    drop(c5);
    let del5 = call(lab, "h1", "DEL", "c5id", "", "eth0", "appnet");
    assert!(del5.ok, "{}", del5.out);
    assert!(!listed(lab, "h1", "appnet", "c5id"));
    assert_eq!(task_pins(lab, "h1"), pins_before);
}

#[test]
fn cni_calls_that_cannot_work_get_the_specs_error_codes_and_change_nothing() {
    let mut lab = Lab::new("cni-codes", &["h1"]);
    lab.start_all();
    lab.init("h1", &[]);
    lab.attachable_network("h1", "10.72.0.0/24", "appnet");
    lab.weft(
        "h1",
        &["network", "create", "--subnet", "10.73.0.0/24", "svcnet"],
    );
    let c = Ctr::new(&lab, "c");
    let sock = lab.socket_path("h1");
    let env = |cmd: &'static str, ifname: &'static str, ns: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_owned()),
            ("CNI_CONTAINERID", "cid".to_owned()),
            ("CNI_NETNS", ns.to_owned()),
            ("CNI_IFNAME", ifname.to_owned()),
        ]
    };
    let run = |env: Vec<(&'static str, String)>, stdin: &str| {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        plugin(Path::new(WEFT), &e, stdin)
    };
    let good = conf(&sock, "appnet");

    // VERSION needs nothing.
    let v = run(env("VERSION", "", ""), r#"{"cniVersion":"1.0.0"}"#);
    assert!(v.ok);
    assert!(
        v.out["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.0.0"))
    );

    // The spec's codes.
    assert_eq!(run(env("ADD", "eth0", "/nonexistent/ns"), &good).code(), 3);
    assert_eq!(run(env("ADD", "eth0", c.path()), "{not json").code(), 6);
    let v9 = json!({"cniVersion":"9.0.0","name":"appnet","type":"weft","socket":sock}).to_string();
    assert_eq!(run(env("ADD", "eth0", c.path()), &v9).code(), 1);
    assert_eq!(run(env("ADD", "", c.path()), &good).code(), 4);
    assert_eq!(run(env("FROB", "eth0", c.path()), &good).code(), 4);
    assert_eq!(
        run(env("ADD", "eth0", c.path()), &conf(&sock, "nosuchnet")).code(),
        7
    );
    assert_eq!(run(env("ADD", "gw0", c.path()), &good).code(), 7);
    assert_eq!(run(env("ADD", "lo", c.path()), &good).code(), 7);
    let not_attachable = run(env("ADD", "eth0", c.path()), &conf(&sock, "svcnet"));
    let code = not_attachable.code();
    assert!(
        [7, 100].contains(&code)
            && not_attachable.out["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("attachable"),
        "{}",
        not_attachable.out
    );
    // The daemon's own namespace is not a container's.
    let own = lab.host_netns("h1");
    let refused = run(env("ADD", "eth0", own.to_str().unwrap()), &good);
    assert!(
        !refused.ok,
        "the daemon's own namespace was taken: {}",
        refused.out
    );

    // STATUS: ready; and not, with no daemon at the socket.
    assert!(run(env("STATUS", "", ""), &good).ok);
    let nowhere = conf(&lab.dir().join("no.sock"), "appnet");
    assert_eq!(run(env("STATUS", "", ""), &nowhere).code(), 50);
    assert_eq!(run(env("ADD", "eth0", c.path()), &nowhere).code(), 11);

    // Nothing was made by any of them.
    let ps = lab.weft("h1", &["ps", "-a", "-q"]);
    assert!(ps.trim().is_empty(), "tasks left: {ps}");
    assert!(containers(&lab, "h1", "appnet").is_empty());
    let links = nsenter_stdout(&c.0, &["ip", "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert!(task_pins(&lab, "h1").is_empty());

    // GC: what the runtime no longer lists goes, the rest stays.
    let (c3, c4) = (Ctr::new(&lab, "c3"), Ctr::new(&lab, "c4"));
    for (id, ns) in [("c3id", c3.path()), ("c4id", c4.path())] {
        let mut e = env("ADD", "eth0", ns);
        e[1].1 = id.to_owned();
        let add = run(e, &good);
        assert!(add.ok, "ADD {id}: {}", add.out);
    }
    let mut gc: Value = serde_json::from_str(&good).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c4id", "ifname": "eth0"}]);
    assert!(run(env("GC", "", ""), &gc.to_string()).ok);
    let ids: Vec<Value> = containers(&lab, "h1", "appnet")
        .into_values()
        .map(|c| c["ContainerID"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![json!("c4id")],
        "GC kept only the valid attachment"
    );
    assert_eq!(
        run(env("GC", "", ""), &good).code(),
        7,
        "GC without the list"
    );
    let mut e = env("DEL", "eth0", c4.path());
    e[1].1 = "c4id".to_owned();
    assert!(run(e, &good).ok);
    wait_for("c3's interface taken out by GC", T, || {
        nsenter_stdout(&c3.0, &["ip", "-o", "link"]).lines().count() == 1
    });

    // With the daemon down: a clear "try again", and nothing made.
    lab.sigterm("h1");
    let down = run(env("ADD", "eth0", c.path()), &good);
    assert_eq!(down.code(), 11);
    assert!(
        down.out["msg"].as_str().unwrap().contains("not reachable"),
        "{}",
        down.out
    );
    assert_eq!(
        nsenter_stdout(&c.0, &["ip", "-o", "link"]).lines().count(),
        1
    );
}

#[test]
fn cni_config_and_install_give_a_plugin_a_runtime_can_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(WEFT)
        .args(["cni", "config", "appnet", "--socket", "/run/x.sock"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["name"], "appnet");
    assert_eq!(c["plugins"][0]["type"], "weft");
    assert_eq!(c["plugins"][0]["network"], "appnet");
    assert_eq!(c["plugins"][0]["socket"], "/run/x.sock");
    let bad = Command::new(WEFT)
        .args(["cni", "config", "a b"])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let (bin, conf_dir) = (dir.path().join("bin"), dir.path().join("net.d"));
    let out = Command::new(WEFT)
        .args(["cni", "install", "appnet", "--bin-dir"])
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Value =
        serde_json::from_slice(&std::fs::read(conf_dir.join("50-weft-appnet.conflist")).unwrap())
            .unwrap();
    assert_eq!(written["plugins"][0]["type"], "weft");
    let v = plugin(
        &bin.join("weft"),
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"0.4.0"}"#,
    );
    assert!(v.ok);
    assert_eq!(v.out["cniVersion"], "0.4.0");
}

#[test]
fn a_cni_container_on_an_encrypted_overlay_crosses_the_underlay_only_inside_wireguard() {
    use common::wire::{count_underlay, counter, reset_counters};
    let mut lab = Lab::new("cni-wg", &["h1", "h2"]);
    lab.start_all();
    let (worker, _) = lab.init("h1", &[]);
    lab.join("h2", &worker, "h1");
    lab.encrypted_network("h1", "10.75.0.0/24", "secure");
    count_underlay(&lab);
    let peer_pin = sleeper(&lab, "h2", "peer", "secure");
    let peer_ip = addr_of(&peer_pin, "eth0").expect("peer address");
    let peer_ip = peer_ip.split('/').next().unwrap().to_owned();
    let c1 = Ctr::new(&lab, "c1");
    let add = call(&lab, "h1", "ADD", "c1id", c1.path(), "eth0", "secure");
    assert!(add.ok, "ADD failed: {}", add.out);
    wait_for("the container reaching the task over WireGuard", T, || {
        pings(&c1.0, &peer_ip)
    });
    reset_counters(&lab);
    for _ in 0..20 {
        assert!(pings(&c1.0, &peer_ip));
    }
    let wg = counter(&lab.switch_netns(), "weftcount", "wg");
    let vx = counter(&lab.switch_netns(), "weftcount", "vxlan");
    assert!(wg >= 40, "WireGuard carried the pings: {wg}");
    assert_eq!(vx, 0, "no plaintext VXLAN on the underlay");
    let del = call(&lab, "h1", "DEL", "c1id", c1.path(), "eth0", "secure");
    assert!(del.ok, "{}", del.out);
}

/// A CNI container on a dual-stack overlay: the result reports each
/// interface's IPv6 address and the IPv6 default route, which is what the
/// namespace holds, and it reaches a task on another host over IPv6.
#[test]
fn a_cni_container_on_a_dual_stack_overlay_gets_and_reports_both_families() {
    let mut lab = Lab::new("cni-dual", &["h1", "h2"]);
    lab.start_all();
    let (worker, _) = lab.init("h1", &[]);
    lab.join("h2", &worker, "h1");
    lab.dual_stack_network("h1", "10.76.0.0/24", "fd00:76::/64", "dual");
    let peer_pin = sleeper(&lab, "h2", "peer", "dual");
    let c1 = Ctr::new(&lab, "c1");
    let add = call(&lab, "h1", "ADD", "c1id", c1.path(), "eth0", "dual");
    assert!(add.ok, "ADD failed: {}", add.out);
    let r = &add.out;
    let six: Vec<(String, u64)> = (r["ips"].as_array().expect("ips").iter())
        .filter_map(|i| Some((i["address"].as_str()?.to_owned(), i["interface"].as_u64()?)))
        .filter(|(a, _)| a.contains(':'))
        .collect();
    assert_eq!(six.len(), 2, "one IPv6 address on eth0 and one on gw0: {r}");
    assert!(
        six[0].0.starts_with("fd00:76::") && six[0].0.ends_with("/64"),
        "{r}"
    );
    assert!(six[1].0.starts_with("fd77:6566:7400::"), "{r}");
    let routes = r["routes"].to_string();
    assert!(routes.contains("\"::/0\""), "{r}");
    // What the namespace holds.
    for (dev, (addr, _)) in ["eth0", "gw0"].into_iter().zip(&six) {
        let held = nsenter_stdout(&c1.0, &["ip", "-o", "-6", "addr", "show", "dev", dev]);
        assert!(held.contains(addr.as_str()), "{dev}: {held}");
    }
    let route6 = nsenter_stdout(&c1.0, &["ip", "-6", "route", "show", "default"]);
    assert!(route6.contains("fd77:6566:7400::ac12:1"), "{route6}");
    // Across hosts over IPv6.
    let peer6 = nsenter_stdout(
        &peer_pin,
        &[
            "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global",
        ],
    );
    let peer6 = peer6
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .expect("the peer's IPv6 address")
        .to_owned();
    let ping6 = |from: &Path, to: &str| {
        nsenter(from, &["busybox", "ping", "-6", "-c", "1", "-W", "1", to])
            .status
            .success()
    };
    wait_for("the container reaching the peer over IPv6", T, || {
        ping6(&c1.0, &peer6)
    });
    let mine = six[0].0.split('/').next().unwrap().to_owned();
    wait_for("the peer reaching the container over IPv6", T, || {
        ping6(&peer_pin, &mine)
    });
    let del = call(&lab, "h1", "DEL", "c1id", c1.path(), "eth0", "dual");
    assert!(del.ok, "{}", del.out);
}

#[test]
fn a_cni_container_keeps_its_network_across_a_daemon_restart_and_del_still_cleans_up() {
    let mut lab = Lab::new("cni-restart", &["h1", "h2"]);
    lab.start_all();
    let (worker, _) = lab.init("h1", &[]);
    lab.join("h2", &worker, "h1");
    lab.attachable_network("h1", "10.76.0.0/24", "appnet");
    let peer_pin = sleeper(&lab, "h1", "peer", "appnet");
    let peer_ip = addr_of(&peer_pin, "eth0").expect("peer address");
    let peer_ip = peer_ip.split('/').next().unwrap().to_owned();
    let c = Ctr::new(&lab, "c");
    let add = call(&lab, "h2", "ADD", "cid", c.path(), "eth0", "appnet");
    assert!(add.ok, "ADD failed: {}", add.out);
    wait_for("the container reaching the task", T, || {
        pings(&c.0, &peer_ip)
    });

    // The kernel keeps the wiring while the daemon is away; the restarted
    // daemon knows the endpoint again and keeps it.
    lab.sigterm("h2");
    assert!(pings(&c.0, &peer_ip), "the data plane outlives its daemon");
    lab.start("h2");
    wait_for("CHECK passing after the restart", T, || {
        call(&lab, "h2", "CHECK", "cid", c.path(), "eth0", "appnet").ok
    });
    assert!(pings(&c.0, &peer_ip));
    assert!(listed(&lab, "h1", "appnet", "cid"));

    let del = call(&lab, "h2", "DEL", "cid", c.path(), "eth0", "appnet");
    assert!(del.ok, "{}", del.out);
    assert_eq!(
        nsenter_stdout(&c.0, &["ip", "-o", "link"]).lines().count(),
        1
    );
    assert!(!listed(&lab, "h1", "appnet", "cid"));
    assert!(
        task_pins(&lab, "h2").is_empty(),
        "{:?}",
        task_pins(&lab, "h2")
    );
}
