//! `weft daemon --metrics-addr`: Prometheus metrics scraped over HTTP from
//! real daemons in namespace hosts, parsed as Prometheus parses them
//! (`prometheus-parse`), and checked against what the test did: a service
//! moves the push and task figures, a lookup the resolver's, traffic on an
//! encrypted network the WireGuard handshake, a change made behind weft's
//! back the drift repairs.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::{Lab, addr_of_in, nsenter, nsenter_stdout, pings, resolve, sleeper, wait_for};

const METRICS: &str = "127.0.0.1:9323";

/// One scrape: each sample as `name{label="v",…}` → value, labels sorted.
struct Scrape {
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    fn get(&self, key: &str) -> Option<f64> {
        self.samples.get(key).copied()
    }

    fn value(&self, key: &str) -> f64 {
        self.get(key)
            .unwrap_or_else(|| panic!("no {key} in the scrape:\n{}", self.text))
    }

    /// The sum of every sample of the metric `name` (any labels).
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

fn http_get(host: &str, lab: &Lab, path: &str) -> (String, String) {
    let path = path.to_string();
    let raw = common::in_host(lab, host, async move || {
        let mut s = std::net::TcpStream::connect(METRICS).expect("connect to the metrics port");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {METRICS}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the reply");
        out
    });
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP reply");
    (head.to_string(), body.to_string())
}

fn scrape(lab: &Lab, host: &str) -> Scrape {
    let (head, body) = http_get(host, lab, "/metrics");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("the Prometheus text format");
    let mut samples = BTreeMap::new();
    for s in parsed.samples {
        let mut labels: Vec<_> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => {
                // The count, as `_count` would read.
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        samples.insert(key, value);
    }
    Scrape {
        samples,
        text: body,
    }
}

/// Waits until `cond` holds of a fresh scrape of `host`; returns it.
fn scrape_until(lab: &Lab, host: &str, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = None;
    wait_for(what, Duration::from_secs(30), || {
        let s = scrape(lab, host);
        let ok = cond(&s);
        last = Some(s);
        ok
    });
    last.expect("scraped")
}

#[test]
fn metrics_follow_what_the_cluster_does() {
    let flags = ["--metrics-addr", METRICS];
    let mut lab = Lab::new("metrics", &["m1", "w1"]);
    lab.start_with("m1", &flags);
    lab.start_with("w1", &flags);
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");

    managers_state(&lab);
    let after = a_service_moves_pushes_and_tasks(&lab);
    let (pin_w1, w1) = a_lookup_and_encrypted_traffic(&lab);
    a_drift_repair_is_counted(&pin_w1, &w1, &lab);
    let w1_now = scrape(&lab, "w1");
    println!(
        "m1's scrape:\n{}\nw1's scrape:\n{}",
        after.text, w1_now.text
    );

    // Two remote tasks on one other node: still one peer.
    assert_eq!(w1_now.value("weft_network_peers{network=\"encnet\"}"), 1.0);

    // Only /metrics, only GET.
    let (head, _) = http_get("m1", &lab, "/other");
    assert!(head.contains(" 404"), "{head}");
}

/// The manager's state once both nodes are in: Raft, build, heartbeats;
/// a worker shows none of it.
fn managers_state(lab: &Lab) {
    let m1 = scrape_until(lab, "m1", "both nodes ready and in session", |s| {
        s.get("weft_nodes{state=\"ready\"}") == Some(2.0)
            && s.get("weft_dispatcher_sessions") == Some(2.0)
    });
    assert_eq!(m1.value("weft_raft_leader"), 1.0);
    assert!(m1.value("weft_raft_term") >= 1.0);
    assert!(m1.value("weft_raft_applied_index") >= 1.0);
    assert!(m1.value("weft_raft_log_size_bytes") > 0.0);
    assert_eq!(
        m1.value(&format!(
            "weft_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(
        m1.value("weft_raft_leader_changes_total") >= 1.0,
        "this manager saw itself become leader"
    );
    // A worker runs no manager: none of the manager's state.
    let w1 = scrape(lab, "w1");
    assert_eq!(w1.get("weft_raft_leader"), None, "{}", w1.text);
    let heartbeats = m1.value("weft_dispatcher_heartbeats_total");
    scrape_until(lab, "m1", "heartbeats counted", |s| {
        s.value("weft_dispatcher_heartbeats_total") > heartbeats
    });
}

/// A service on an encrypted network: pushes, acknowledgements,
/// proposals, runtime lag samples and tasks move; returns m1's scrape
/// after it.
fn a_service_moves_pushes_and_tasks(lab: &Lab) -> Scrape {
    let before = scrape(lab, "m1");
    lab.encrypted_network("m1", "10.0.41.0/24", "encnet");
    common::sleeping_replicas(lab, "m1", "web", "encnet", 2);
    let after = scrape_until(lab, "m1", "both replicas running", |s| {
        s.get("weft_tasks{state=\"running\"}") == Some(2.0)
    });
    for (name, what) in [
        ("weft_dispatcher_config_pushes_total", "config pushes"),
        (
            "weft_dispatcher_push_ack_duration_seconds",
            "acknowledged pushes",
        ),
        ("weft_raft_proposal_duration_seconds", "proposals"),
        ("weft_runtime_lag_seconds", "runtime lag samples"),
    ] {
        assert!(
            after.sum(name) > before.sum(name),
            "{what} did not move: {} → {}",
            before.sum(name),
            after.sum(name)
        );
    }
    assert!(after.value("weft_dispatcher_config_pushes_total{kind=\"delta\"}") >= 1.0);
    let placed = lab.running_on("m1", "web");
    let on_w1 = placed.iter().filter(|n| *n == "w1").count() as f64;
    let w1 = scrape_until(lab, "w1", "w1's own tasks", |s| {
        s.get("weft_node_tasks{state=\"running\"}").unwrap_or(0.0) == on_w1
    });
    assert_eq!(w1.value("weft_network_peers{network=\"encnet\"}"), 1.0);
    assert!(w1.value("weft_dataplane_applies_total{result=\"ok\"}") >= 1.0);
    assert!(w1.value("weft_dataplane_apply_duration_seconds") >= 1.0);

    after
}

/// A lookup and traffic over the encrypted network from a task on w1:
/// DNS and WireGuard counters; returns w1's task's namespace and w1's
/// scrape after it.
fn a_lookup_and_encrypted_traffic(lab: &Lab) -> (std::path::PathBuf, Scrape) {
    let pin_m1 = sleeper(lab, "m1", "s1", "encnet");
    let pin_w1 = sleeper(lab, "w1", "s2", "encnet");
    let s1_ip = addr_of_in(&nsenter_stdout(
        &pin_m1,
        &["ip", "-o", "-4", "addr", "show", "eth0"],
    ))
    .expect("s1's address");
    let s1_ip = s1_ip.split('/').next().unwrap().to_string();
    let dns_before = scrape(lab, "w1");
    let found = resolve(&pin_w1, "s1");
    assert!(
        found.contains(&s1_ip),
        "s1 resolves to {found:?}, not {s1_ip}"
    );
    wait_for(
        "a ping over the encrypted network",
        Duration::from_secs(20),
        || pings(&pin_w1, &s1_ip),
    );
    let m1_id = lab
        .node_ls("m1")
        .into_iter()
        .find(|n| n.hostname == "m1")
        .expect("m1 in node ls")
        .id;
    let w1 = scrape_until(lab, "w1", "a handshake with m1", |s| {
        s.get(&format!(
            "weft_wireguard_last_handshake_seconds{{peer=\"{m1_id}\"}}"
        ))
        .is_some_and(|t| t > 0.0)
    });
    assert!(
        w1.value(&format!(
            "weft_wireguard_sent_bytes_total{{peer=\"{m1_id}\"}}"
        )) > 0.0
    );
    assert!(
        w1.value(&format!(
            "weft_wireguard_received_bytes_total{{peer=\"{m1_id}\"}}"
        )) > 0.0
    );
    assert!(
        w1.sum("weft_dns_queries_total") > dns_before.sum("weft_dns_queries_total"),
        "{}",
        w1.text
    );
    assert!(
        w1.value("weft_dns_answers_total{qtype=\"A\",rcode=\"noerror\"}")
            > dns_before
                .get("weft_dns_answers_total{qtype=\"A\",rcode=\"noerror\"}")
                .unwrap_or(0.0)
    );

    (pin_w1, w1)
}

/// A change made behind weft's back in w1's task `pin_w1` is put back,
/// and counted (`w1`: a scrape from before it).
fn a_drift_repair_is_counted(pin_w1: &std::path::Path, w1: &Scrape, lab: &Lab) {
    let repairs = w1.get("weft_dataplane_drift_repairs_total").unwrap_or(0.0);
    let s2_addr = addr_of_in(&nsenter_stdout(
        pin_w1,
        &["ip", "-o", "-4", "addr", "show", "eth0"],
    ))
    .expect("s2's address");
    let del = nsenter(pin_w1, &["ip", "addr", "del", &s2_addr, "dev", "eth0"]);
    assert!(del.status.success(), "{del:?}");
    wait_for("s2's address put back", Duration::from_secs(20), || {
        addr_of_in(&nsenter_stdout(
            pin_w1,
            &["ip", "-o", "-4", "addr", "show", "eth0"],
        ))
        .as_deref()
            == Some(s2_addr.as_str())
    });
    scrape_until(lab, "w1", "the repair counted", |s| {
        s.get("weft_dataplane_drift_repairs_total").unwrap_or(0.0) > repairs
    });
}

/// A metrics address that cannot be used stops the daemon with an error
/// that names it; one that is not an address is refused by the CLI.
#[test]
fn a_bad_metrics_address_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["daemon", "--metrics-addr", "not-an-address"])
        .output()
        .expect("weft");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-addr"), "{err}");

    let mut lab = Lab::new("metricsbad", &["m1"]);
    // Something else holds the port in m1's namespace.
    let held = common::in_host(&lab, "m1", async || {
        std::net::TcpListener::bind(METRICS).expect("bind in m1")
    });
    let (status, log) = lab.start_expecting_exit_with("m1", &["--metrics-addr", METRICS]);
    assert!(!status.success());
    assert!(
        log.contains("cannot serve metrics on 127.0.0.1:9323 (--metrics-addr)"),
        "{log}"
    );
    drop(held);
}
