//! Incremental config push (issue #16), end to end: a worker's session cut
//! in the middle of a burst of changes (the deltas sent on it lost with
//! it) ends in the kernel state a whole config makes; whole configs' VXLAN
//! sources come in parts (a test switch makes them one address each).
//!
//! Needs root (Lab::new fails without it).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Lab, nsenter, wait_for};

/// One line per kernel object a node's data plane owns, in every network
/// namespace of `host` (its underlay host's and the ones its daemon pins):
/// links (name, kind, MTU, MAC, master), addresses, routes, permanent
/// neighbours, static FDB entries and nftables rules, without what the
/// kernel numbers or counts (interface indexes, handles, counters, state).
fn kernel_state(lab: &Lab, host: &str) -> BTreeSet<String> {
    let mut pins = vec![("host".to_string(), lab.host_netns(host))];
    let dir = lab.host_dir(host).join("run/netns");
    for e in std::fs::read_dir(&dir).expect("the daemon's netns directory") {
        let e = e.expect("entry");
        pins.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    let mut out = BTreeSet::new();
    for (ns, pin) in pins {
        for line in namespace_state(&pin) {
            out.insert(format!("{ns}: {line}"));
        }
    }
    out
}

fn json(pin: &Path, cmd: &[&str]) -> serde_json::Value {
    let o = nsenter(pin, cmd);
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn namespace_state(pin: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    for l in json(pin, &["ip", "-d", "-j", "link", "show"])
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push(format!(
            "link {} kind={} mtu={} mac={} master={}",
            s(l, "ifname"),
            l["linkinfo"]["info_kind"].as_str().unwrap_or("-"),
            l["mtu"],
            s(l, "address"),
            s(l, "master"),
        ));
    }
    for l in json(pin, &["ip", "-j", "addr", "show"])
        .as_array()
        .into_iter()
        .flatten()
    {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            // IPv6 link-local addresses come from the MAC; the kernel makes them.
            if s(a, "scope") == "link" && s(a, "family") == "inet6" {
                continue;
            }
            out.push(format!(
                "addr {} {}/{}",
                s(l, "ifname"),
                s(a, "local"),
                a["prefixlen"]
            ));
        }
    }
    for r in json(pin, &["ip", "-j", "route", "show", "table", "all"])
        .as_array()
        .into_iter()
        .flatten()
    {
        if s(r, "table") == "local" || s(r, "dst").starts_with("fe80") || s(r, "dst") == "multicast"
        {
            continue;
        }
        out.push(format!(
            "route {} table={} via={} dev={} src={}",
            s(r, "dst"),
            s(r, "table"),
            s(r, "gateway"),
            s(r, "dev"),
            s(r, "prefsrc")
        ));
    }
    for n in json(pin, &["ip", "-j", "neigh", "show", "nud", "permanent"])
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push(format!(
            "neigh {} {} {}",
            s(n, "dst"),
            s(n, "dev"),
            s(n, "lladdr")
        ));
    }
    for f in json(pin, &["bridge", "-j", "fdb", "show"])
        .as_array()
        .into_iter()
        .flatten()
    {
        let flags = f["flags"].to_string();
        // Static entries only: the kernel adds and learns the others.
        if s(f, "state") == "permanent" && !s(f, "dst").is_empty() || flags.contains("extern") {
            out.push(format!(
                "fdb {} {} dst={}",
                s(f, "mac"),
                s(f, "ifname"),
                s(f, "dst")
            ));
        }
    }
    for item in json(pin, &["nft", "-j", "list", "ruleset"])["nftables"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if item.get("metainfo").is_some() {
            continue;
        }
        let mut item = item.clone();
        strip(&mut item);
        out.push(format!("nft {item}"));
    }
    out
}

/// Drops the keys the kernel numbers or counts.
fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("handle");
            if m.contains_key("counter") {
                m.insert("counter".into(), serde_json::Value::Null);
            }
            m.values_mut().for_each(strip);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

/// w1's config version as the manager last pushed it, and as w1 applied it.
fn w1_versions(lab: &Lab) -> (u64, u64) {
    let out = lab.weft("m1", &["network", "inspect", "-v", "appnet"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    let peers = v[0]["Peers"].as_array().cloned().unwrap_or_default();
    let w1 = peers
        .iter()
        .find(|p| p["Name"] == "w1")
        .cloned()
        .unwrap_or_default();
    (
        w1["ConfigVersion"].as_u64().unwrap_or(0),
        w1["AppliedVersion"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Waits until w1 applied the last config pushed to it, and nothing moves.
fn settled(lab: &Lab, what: &str) {
    let mut last = (0, 0);
    wait_for(what, Duration::from_secs(60), || {
        let now = w1_versions(lab);
        let done = now.0 == now.1 && now == last;
        last = now;
        done
    });
}

/// Rejects (with a TCP reset) w1's traffic to the manager port, or stops
/// rejecting it.
fn cut_w1(lab: &Lab, cut: bool) {
    let pin = lab.host_netns("w1");
    let script = if cut {
        "add table inet wefttest_cut\n\
         add chain inet wefttest_cut out { type filter hook output priority 0; }\n\
         add rule inet wefttest_cut out tcp dport 4377 reject with tcp reset\n"
    } else {
        "delete table inet wefttest_cut\n"
    };
    let path = lab.dir().join(if cut { "cut.nft" } else { "uncut.nft" });
    std::fs::write(&path, script).expect("nft script");
    let o = nsenter(&pin, &["nft", "-f", path.to_str().expect("utf-8")]);
    assert!(
        o.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// w1's first session began with a whole config whose sources came in
/// parts (later sessions said which sources w1 held, and kept them), and
/// w1's VXLAN guard (in `state`, its kernel state) lets every node's
/// address in.
fn sources_came_in_parts(lab: &Lab, state: &BTreeSet<String>) {
    let log = std::fs::read_to_string(lab.host_dir("w1").join("daemon.log")).unwrap_or_default();
    assert!(
        log.contains("config's sources complete"),
        "w1 assembled no config from parts: {}",
        lab.log_tail("w1")
    );
    for h in ["m1", "w1", "w2"] {
        let addr = format!("\"{}\"", lab.addr(h));
        assert!(
            state
                .iter()
                .any(|l| l.starts_with("host: nft") && l.contains("\"set\"") && l.contains(&addr)),
            "{h}'s address {addr} is not in w1's VXLAN guard: {state:#?}"
        );
    }
}

/// A whole config for w1: a new session, on a new daemon process, applied.
fn restart_w1(lab: &mut Lab) {
    lab.sigterm("w1");
    lab.start("w1");
    wait_for("w1 Ready again", Duration::from_secs(30), || {
        lab.node_ready("m1", "w1")
    });
    settled(lab, "w1 applied its whole config");
}

fn scale(lab: &Lab, service: &str, n: u32) {
    lab.weft(
        "m1",
        &["service", "scale", "--detach", &format!("{service}={n}")],
    );
}

#[test]
fn a_delta_lost_with_its_session_ends_in_the_kernel_state_of_a_whole_push() {
    let mut lab = Lab::new("cpush", &["m1", "w1", "w2"]);
    lab.set_daemon_env(
        "WEFT_LOG",
        "info,openraft=warn,weft_manager::dispatcher=debug,weft_worker::agent=debug",
    );
    // Every whole config's VXLAN sources in parts of one address each, as
    // a cluster of thousands of nodes sends them (a part is under 6 KiB).
    lab.set_daemon_env("WEFT_TEST_SOURCES_PART_BYTES", "1");
    lab.start_all();
    // Heartbeats every 2 s: the cut (about 3 s) and the restart below
    // leave w1 Ready (down after 3 missed), so no task moves because of them.
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "2s"]);
    for w in ["w1", "w2"] {
        lab.join(w, &wt, "m1");
    }
    for (net, subnet) in [("appnet", "10.0.9.0/24"), ("other", "10.0.10.0/24")] {
        lab.weft(
            "m1",
            &["network", "create", "--attachable", "--subnet", subnet, net],
        );
    }
    let sleeper = |name: &str, net: &str, n: &str| {
        let flags = [
            "--replicas",
            n,
            "--network",
            net,
            "--constraint",
            "node.role==worker",
        ];
        common::detached_sleepers(&lab, "m1", name, &flags);
    };
    sleeper("web", "appnet", "4");
    sleeper("db", "other", "2");
    wait_for("6 tasks running", Duration::from_secs(60), || {
        lab.running_on("m1", "web").len() + lab.running_on("m1", "db").len() == 6
    });
    settled(&lab, "w1 applied its config");

    // A burst of changes, with w1's session cut in the middle of it.
    for (i, n) in [6, 3, 7].into_iter().enumerate() {
        scale(&lab, "web", n);
        if i == 1 {
            cut_w1(&lab, true);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    sleeper("cache", "appnet", "2");
    scale(&lab, "db", 4);
    lab.weft("m1", &["service", "rm", "cache"]);
    sleeper("queue", "appnet", "3");
    std::thread::sleep(Duration::from_secs(2));
    cut_w1(&lab, false);
    scale(&lab, "web", 5);
    // Then, on the new session, tasks of w2 come and go (remote endpoints,
    // names and VIP backends w1 gets as deltas).
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "late",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "--constraint",
            "node.hostname==w2",
            "--",
            "sleep",
            "600",
        ],
    );
    wait_for("late's replicas on w2", Duration::from_secs(60), || {
        lab.running_on("m1", "late").len() == 2
    });
    lab.weft("m1", &["service", "rm", "late"]);
    wait_for(
        "the services at their new scale",
        Duration::from_secs(60),
        || {
            lab.running_on("m1", "web").len() == 5
                && lab.running_on("m1", "db").len() == 4
                && lab.running_on("m1", "queue").len() == 3
        },
    );
    settled(&lab, "w1 applied the burst");
    let log = std::fs::read_to_string(lab.host_dir("w1").join("daemon.log")).unwrap_or_default();
    let deltas = log.matches("config delta received").count();
    assert!(deltas > 0, "w1 got no delta: {}", lab.log_tail("w1"));
    // The cut ended a session that had carried deltas.
    let cut_at = log
        .find("session ended")
        .expect("w1's session ended at the cut");
    assert!(
        log[..cut_at].contains("config delta received"),
        "no delta before the cut"
    );
    let reopened = log.rfind("session ended").expect("a session ended");
    assert!(
        log[reopened..].contains("config delta received"),
        "no delta after the cut"
    );
    let before = kernel_state(&lab, "w1");
    let kinds = |k: &str| {
        before
            .iter()
            .filter(|l| l.contains(&format!(": {k} ")))
            .count()
    };
    // What the deltas carried is there: remote endpoints (static FDB and
    // neighbour entries) and VIP tables.
    assert!(
        kinds("fdb") > 0 && kinds("neigh") > 0 && kinds("nft") > 0,
        "{before:#?}"
    );

    restart_w1(&mut lab);
    sources_came_in_parts(&lab, &before);
    let after = kernel_state(&lab, "w1");
    let gone: Vec<_> = before.difference(&after).collect();
    let new: Vec<_> = after.difference(&before).collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "the whole config changed w1's kernel state ({deltas} deltas before):\nonly before: {gone:#?}\nonly after: {new:#?}"
    );
    eprintln!(
        "w1: {} kernel objects the same after {deltas} deltas and a whole push",
        before.len()
    );
}

/// A message the stand-in got, with when it came.
type Got = (std::time::Instant, weft_proto::v1::SessionMessage);

/// What the test asks of its stand-in for w1's agent.
enum Ask {
    /// Report this config version applied.
    Report(u64),
}

/// A stand-in for w1's agent, with w1's certificate, on a thread in w1's
/// namespace: a session with m1 (deltas taken), heartbeats every `period`,
/// every message it gets sent on `got` with when it came, and a status
/// report only when asked on the returned channel. Ends when that channel
/// is dropped.
fn stand_in(
    lab: &Lab,
    period: Duration,
    got: std::sync::mpsc::Sender<Got>,
) -> tokio::sync::mpsc::UnboundedSender<Ask> {
    use weft_proto::v1 as pb;
    use weft_proto::v1::dispatcher_client::DispatcherClient;
    let certs = lab.data_dir("w1").join("certs");
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).expect("w1's certificate files");
    let (ca, cert, key) = (read("ca.pem"), read("node.pem"), read("node-key.pem"));
    let node_id = weft_proto::identity::PeerIdentity::from_pem(&cert)
        .expect("w1's certificate")
        .node_id;
    let addr = format!("{}:4377", lab.addr("m1"));
    let pin = lab.host_netns("w1");
    let (ask_tx, mut asks) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&pin).expect("netns pin");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            weft_proto::tls::install_crypto_provider();
            let channel = weft_proto::tls::channel_to_manager(&addr, &ca, Some((&cert, &key)))
                .await
                .expect("a connection to m1");
            let mut client = DispatcherClient::new(channel);
            let (_period_tx, period_rx) = tokio::sync::watch::channel(period);
            let beats = tokio::spawn(weft_worker::agent::heartbeats(
                client.clone(),
                node_id.clone(),
                period_rx,
                |_| {},
            ));
            let mut stream = client
                .session(pb::SessionRequest {
                    node_id: node_id.clone(),
                    accepts_deltas: true,
                    accepts_port_deltas: true,
                    ..Default::default()
                })
                .await
                .expect("a session")
                .into_inner();
            loop {
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(m)) => if got.send((std::time::Instant::now(), m)).is_err() { break },
                        _ => break,
                    },
                    a = asks.recv() => match a {
                        Some(Ask::Report(version)) => {
                            client
                                .report_status(pb::StatusReport {
                                    node_id: node_id.clone(),
                                    applied_version: version,
                                    ..Default::default()
                                })
                                .await
                                .expect("a report");
                        }
                        None => break,
                    },
                }
            }
            beats.abort();
        });
    });
    ask_tx
}

/// The config held after `m` (a whole config or a delta to `held`), and
/// the ports in it.
fn apply(
    held: &mut weft_proto::v1::NodeConfig,
    m: weft_proto::v1::SessionMessage,
) -> BTreeSet<u32> {
    match (m.config, m.config_delta) {
        (Some(c), _) => *held = c,
        (None, Some(d)) => {
            weft_proto::config_delta::apply_in_place(held, &d).expect("a delta that applies")
        }
        (None, None) => panic!("a message without a config"),
    }
    held.ports.iter().map(|p| p.port).collect()
}

/// One config push in flight per session (the dispatcher's push gate): a
/// node that has not answered its last push gets no new one; once it
/// reports it applied it, everything that changed since comes in one push;
/// a node that never answers gets the next after three heartbeat periods.
/// The lab's cluster made with heartbeats every `period` (m1 its manager,
/// every other host joined), w1's daemon stopped and its session a
/// [`stand_in`]: the messages it gets, the channel that makes it report,
/// and its first message with when it came.
fn w1_stood_in(
    lab: &mut Lab,
    hosts: &[&str],
    period: Duration,
) -> (
    std::sync::mpsc::Receiver<Got>,
    tokio::sync::mpsc::UnboundedSender<Ask>,
    Got,
) {
    lab.start_all();
    let every = format!("{}s", period.as_secs());
    let (wt, _) = lab.init("m1", &["--heartbeat-period", &every]);
    for host in hosts.iter().filter(|h| **h != "m1") {
        lab.join(host, &wt, "m1");
    }
    lab.sigterm("w1");
    let (got_tx, got) = std::sync::mpsc::channel();
    let ask = stand_in(lab, period, got_tx);
    let first = got
        .recv_timeout(Duration::from_secs(30))
        .expect("no push: the session's first config");
    (got, ask, first)
}

/// A service `name` with one sleeping replica on m1 that publishes `port`
/// through the ingress network: every node's config gets the port.
fn publish(lab: &Lab, name: &str, port: u16) {
    let published = format!("{port}:80");
    let flags = [
        "--constraint",
        "node.role==manager",
        "--publish",
        &published,
    ];
    common::detached_sleepers(lab, "m1", name, &flags);
}

/// Real daemons for m1 and w1 (w1's stopped), the session a stand-in with
/// w1's certificate, so the test decides when it reports.
#[test]
fn a_node_gets_its_next_push_when_it_answered_the_last() {
    let hosts = ["m1", "w1"];
    let mut lab = Lab::new("pgate", &hosts);
    // Pushes wait three periods for an answer: 12 s, room for what the
    // test does in between on a busy machine.
    let period = Duration::from_secs(4);
    let (got, ask, (first_at, first)) = w1_stood_in(&mut lab, &hosts, period);
    let next = |what: &str| {
        got.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no push: {what}"))
    };
    let mut held = Default::default();
    assert_eq!(apply(&mut held, first), BTreeSet::new());
    // Two services that publish through the ingress network.
    publish(&lab, "p1", 8081);
    publish(&lab, "p2", 8082);
    // Unanswered, the first push holds them back (for 12 s at most).
    let quiet = got.recv_timeout(Duration::from_millis(1500));
    assert!(
        quiet.is_err(),
        "a push before the last was answered: {quiet:?}"
    );
    let asked_at = std::time::Instant::now();
    ask.send(Ask::Report(held.version)).expect("stand-in");
    let (answered_at, m) = next("the changes after the answer");
    assert_eq!(apply(&mut held, m), BTreeSet::from([8081, 8082]));
    // Sent for the answer, not for the wait's end.
    assert!(
        answered_at.duration_since(asked_at) < Duration::from_secs(2)
            && answered_at.duration_since(first_at) < period * 3 - Duration::from_secs(1),
        "the push after the answer came {:?} after it, {:?} after the first",
        answered_at.duration_since(asked_at),
        answered_at.duration_since(first_at)
    );
    // Never answered: the next change waits out the three periods.
    publish(&lab, "p3", 8083);
    let (at, m) = next("a change after an unanswered push");
    let waited = at.duration_since(answered_at);
    assert!(
        waited >= period * 3 - Duration::from_millis(500),
        "the next push came {waited:?} after an unanswered one"
    );
    assert!(apply(&mut held, m).contains(&8083));
    drop(ask);
}

/// While a push waits for its answer, what the header says still goes at
/// once (another node's removal here, which the node's trust lists
/// follow), and removing the node itself ends its session at once:
/// neither waits for the answer or the three periods.
#[test]
fn a_held_push_holds_back_neither_the_header_nor_a_removal() {
    let hosts = ["m1", "w1", "w2"];
    let mut lab = Lab::new("pheld", &hosts);
    // A held push would wait 24 s from the first config: far above what
    // is allowed below, and room for all of it on a busy machine.
    let (got, ask, (_, first)) = w1_stood_in(&mut lab, &hosts, Duration::from_secs(8));
    assert!(first.config.is_some(), "a whole config first");
    assert!(first.removed_node_ids.is_empty(), "{first:?}");
    // Never answered: this change waits.
    publish(&lab, "p1", 8081);
    let quiet = got.recv_timeout(Duration::from_millis(1500));
    assert!(quiet.is_err(), "a push while one is unanswered: {quiet:?}");

    let asked = std::time::Instant::now();
    lab.weft("m1", &["node", "rm", "--force", "w2"]);
    let (at, m) = got
        .recv_timeout(Duration::from_secs(30))
        .expect("w2's removal");
    assert_eq!(m.removed_node_ids.len(), 1, "{m:?}");
    assert!(
        m.config.is_none() && m.config_delta.is_none() && m.sources_part.is_none(),
        "the header alone while the push is held: {m:?}"
    );
    assert!(
        at.duration_since(asked) < Duration::from_secs(4),
        "the header came {:?} after the removal",
        at.duration_since(asked)
    );

    let removed = std::time::Instant::now();
    lab.weft("m1", &["node", "rm", "--force", "w1"]);
    // The session ends: the stand-in stops and drops its sender. Any
    // message before that is a header, never the held config.
    let ended = loop {
        match got.recv_timeout(Duration::from_secs(30)) {
            Ok((_, m)) => assert!(
                m.config.is_none() && m.config_delta.is_none(),
                "a config for a removed node: {m:?}"
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break removed.elapsed(),
            Err(e) => panic!("the removed node's session did not end: {e}"),
        }
    };
    assert!(
        ended < Duration::from_secs(4),
        "the removed node's session ended {ended:?} after the removal"
    );
    drop(ask);
}
