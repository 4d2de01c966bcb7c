//! Daemon restarts and binary upgrades as a node's tasks see them (issue
//! #13), on a worker and on a manager (one of three, whose daemon also
//! opens its Raft storage and rejoins the group as it starts): a task on
//! `wa` resolves a service name in a loop and streams a
//! counter over an encrypted overlay (VXLAN inside WireGuard) to a task on
//! `wb`, while `wa`'s daemon is killed with SIGKILL and started again,
//! stopped with SIGTERM (what `systemctl restart` sends) and started
//! again, and replaced by a copy of its binary from another file (an
//! upgrade), and killed and started 2 s later (systemd's RestartSec after a
//! crash). The resolver's sockets and the WireGuard device's TAP and
//! socket live in the node's fd store meanwhile; the next daemon adopts
//! them.
//!
//! Asserted (correctness): no lookup fails, the stream is never reset and
//! loses no line. Printed (figures for RELIABILITY.md): per restart, the
//! lookups tried and failed, the longest gap between DNS answers, the
//! longest gap between lines of the stream, how long the daemon was down.
//! Timings are only checked against a generous bound (5 s): this machine's
//! timings vary too much for tight asserts. `WEFT_RESTART_ROUNDS=N` repeats
//! the three restarts N times and prints medians.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lookups::{asker, fd_stores, now_ms, read_log};
use common::{Lab, nsenter_stdout, wait_for};

/// The stream's receiver: every line it gets, stamped on arrival (nc's
/// own input never ends: at its end, busybox nc closes the connection).
const SINK: &str = "sleep 100000 | busybox nc -l -p 5000 | while read n; do echo got $n $(date +%s%3N); done; \
    echo sink-closed $(date +%s%3N)";

/// The stream's sender: a counter, one line every 50 ms, over one TCP
/// connection that is never reopened.
const SENDER: &str = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done \
    | busybox nc 10.0.9.20 5000; echo sender-closed $(date +%s%3N)";

/// The sink's log: (line number, arrival ms) of every line, and whether
/// the connection closed.
fn read_stream(log: &Path) -> (Vec<(u64, u64)>, bool) {
    let text = common::task_log_text(log);
    let mut lines = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let ["got", n, t] = f[..]
            && let (Ok(n), Ok(t)) = (n.parse(), t.parse())
        {
            lines.push((n, t));
        }
    }
    (lines, text.contains("sink-closed"))
}

/// How one restart went.
#[derive(Debug)]
struct Figures {
    kind: &'static str,
    down_ms: u64,
    tried: usize,
    failed: usize,
    dns_gap_ms: u64,
    flow_gap_ms: u64,
}

/// The longest gap between consecutive times in `ts` that touch
/// `[from, to]`.
fn longest_gap(ts: &[u64], from: u64, to: u64) -> u64 {
    ts.windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
}

/// The kernel's index of `wa`'s WireGuard interface (an independent view:
/// the same index after a restart means the interface was kept, not made
/// again).
fn wg_ifindex(lab: &Lab) -> u64 {
    let out = nsenter_stdout(
        &lab.host_netns("wa"),
        &["ip", "-j", "link", "show", "weft-wg0"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v[0]["ifindex"].as_u64().expect("wa has weft-wg0")
}

struct Node {
    lab: Lab,
    asker_log: PathBuf,
    sink_log: PathBuf,
    sender_log: PathBuf,
    upgrade: PathBuf,
}

/// What `wa` is in the cluster.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A worker, with one manager `m1`.
    Worker,
    /// One of three managers (`m1`, `m2`, `wa`).
    Manager,
}

impl Node {
    fn setup(role: Role) -> Node {
        let mut lab = match role {
            Role::Worker => Lab::new("restart", &["m1", "wa", "wb"]),
            Role::Manager => Lab::new("restart-mgr", &["m1", "m2", "wa", "wb"]),
        };
        lab.start_all();
        let (wt, mt) = lab.init("m1", &[]);
        if role == Role::Manager {
            lab.join("m2", &mt, "m1");
            lab.join("wa", &mt, "m1");
            common::wait_voters(&lab, "m1", &["m1", "m2", "wa"]);
        } else {
            lab.join("wa", &wt, "m1");
        }
        lab.join("wb", &wt, "m1");
        lab.encrypted_network("m1", "10.0.9.0/24", "secure");
        let web = "service create --name web --network secure \
                   --constraint node.hostname==wb -- sleep 3600";
        lab.weft("m1", &web.split_whitespace().collect::<Vec<_>>());
        let net = ["--network", "secure"];
        let sink = lab.run_task(
            "wb",
            &[
                &net[..],
                &[
                    "--name",
                    "sink",
                    "--ip",
                    "10.0.9.20",
                    "--",
                    "sh",
                    "-c",
                    SINK,
                ][..],
            ]
            .concat(),
        );
        let sink_ns = lab.task_netns("wb", &sink);
        wait_for("the sink listens", Duration::from_secs(30), || {
            nsenter_stdout(&sink_ns, &["ss", "-Hltn", "sport", "=", ":5000"]).contains("5000")
        });
        let log = |host: &str, id: &str| lab.host_dir(host).join("run/tasks").join(id).join("log");
        let sink_log = log("wb", &sink);
        let sender = lab.run_task(
            "wa",
            &[
                &net[..],
                &["--name", "sender", "--", "sh", "-c", SENDER][..],
            ]
            .concat(),
        );
        let ask = asker("web", "Address:.*10\\.0\\.9\\.");
        let asker_id = lab.run_task(
            "wa",
            &[&net[..], &["--name", "asker", "--", "sh", "-c", &ask][..]].concat(),
        );
        let asker_log = log("wa", &asker_id);
        let sender_log = log("wa", &sender);
        wait_for(
            "the stream flows and the name resolves",
            Duration::from_secs(60),
            || {
                read_stream(&sink_log).0.len() >= 20
                    && read_log(&asker_log).1.iter().filter(|l| l.ok).count() >= 3
            },
        );
        let upgrade = lab.dir().join("weft-new");
        std::fs::copy(common::WEFT, &upgrade).expect("copy the binary");
        Node {
            lab,
            asker_log,
            sink_log,
            sender_log,
            upgrade,
        }
    }

    /// Restarts `wa`'s daemon the `kind` way and measures it.
    fn restart(&mut self, kind: &'static str) -> Figures {
        let stopped = now_ms();
        match kind {
            "crash" => {
                // What systemd does after a crash: the unit's RestartSec=2s
                // before the next start. The pause is the scenario (the
                // outage to measure), not a wait for a condition.
                self.lab.kill9("wa");
                std::thread::sleep(Duration::from_secs(2));
                self.lab.start("wa");
            }
            "kill -9" => {
                self.lab.kill9("wa");
                self.lab.start("wa");
            }
            "SIGTERM" => {
                self.lab.sigterm("wa");
                self.lab.start("wa");
            }
            "upgrade" => {
                self.lab.sigterm("wa");
                let exe = self.upgrade.clone();
                self.lab.start_exe("wa", &exe, &[]);
            }
            other => panic!("unknown restart {other}"),
        }
        let up = now_ms();
        wait_for(
            "answers and lines after the restart",
            Duration::from_secs(60),
            || {
                let (lines, _) = read_stream(&self.sink_log);
                let answered = read_log(&self.asker_log)
                    .1
                    .iter()
                    .filter(|l| l.ok && l.start > up)
                    .count();
                answered >= 5 && lines.iter().filter(|(_, t)| *t > up + 1000).count() >= 10
            },
        );
        let (_, done) = read_log(&self.asker_log);
        let window: Vec<_> = done
            .iter()
            .filter(|l| l.end + 1000 >= stopped && l.start <= up + 1000)
            .collect();
        let answers: Vec<u64> = done.iter().filter(|l| l.ok).map(|l| l.end).collect();
        let (lines, _) = read_stream(&self.sink_log);
        let arrivals: Vec<u64> = lines.iter().map(|(_, t)| *t).collect();
        Figures {
            kind,
            down_ms: up - stopped,
            tried: window.len(),
            failed: window.iter().filter(|l| !l.ok).count(),
            dns_gap_ms: longest_gap(&answers, stopped, up + 1000),
            flow_gap_ms: longest_gap(&arrivals, stopped, up + 1000),
        }
    }

    /// The stream is whole: lines 1, 2, 3 … in order, and neither end saw
    /// the connection close.
    fn check_stream(&self) {
        let (lines, closed) = read_stream(&self.sink_log);
        let sender = common::task_log_text(&self.sender_log);
        assert!(
            !closed && !sender.contains("sender-closed"),
            "the stream was reset or closed; sender log: {sender}"
        );
        for (i, (n, _)) in lines.iter().enumerate() {
            assert_eq!(*n, i as u64 + 1, "line {} of the stream is {n}", i + 1);
        }
    }
}

/// The restarts, in the order each round runs them: a crash that systemd
/// restarts after its 2 s pause, an immediate restart after kill -9,
/// `systemctl restart`, and an upgrade.
const KINDS: [&str; 4] = ["crash", "kill -9", "SIGTERM", "upgrade"];

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[test]
fn restarts_and_upgrades_lose_no_lookup_and_reset_no_flow() {
    restarts_and_upgrades(Role::Worker);
}

#[test]
fn a_manager_node_restarts_and_upgrades_losing_no_lookup_and_resetting_no_flow() {
    restarts_and_upgrades(Role::Manager);
}

/// Every restart kind on `wa` as `role`, `WEFT_RESTART_ROUNDS` times.
fn restarts_and_upgrades(role: Role) {
    let rounds: usize = std::env::var("WEFT_RESTART_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let what = match role {
        Role::Worker => "worker",
        Role::Manager => "manager",
    };
    let mut node = Node::setup(role);
    let ifindex = wg_ifindex(&node.lab);
    let store = fd_stores(&node.lab.host_dir("wa").join("run"));
    assert_eq!(store.len(), 1, "one fd store on wa: {store:?}");
    let mut all = Vec::new();
    for round in 0..rounds {
        for kind in KINDS {
            let f = node.restart(kind);
            println!(
                "{what} round {round} {:<8} down {:>5} ms; lookups {} tried, {} failed; \
                 longest DNS gap {:>5} ms; longest flow gap {:>5} ms",
                f.kind, f.down_ms, f.tried, f.failed, f.dns_gap_ms, f.flow_gap_ms
            );
            node.check_stream();
            assert_eq!(wg_ifindex(&node.lab), ifindex, "weft-wg0 was made anew");
            assert_eq!(
                fd_stores(&node.lab.host_dir("wa").join("run")),
                store,
                "the fd store outlives the daemons"
            );
            // After a crash, a lookup sent at once waits out the 2 s pause
            // and the start in its 3 s: reported, not asserted (a loaded
            // machine can take that last second).
            if kind != "crash" {
                assert_eq!(f.failed, 0, "{f:?}");
            }
            assert!(f.dns_gap_ms < 5000 && f.flow_gap_ms < 5000, "{f:?}");
            all.push(f);
        }
    }
    for kind in KINDS {
        let of: Vec<&Figures> = all.iter().filter(|f| f.kind == kind).collect();
        let m = |g: fn(&Figures) -> u64| median(of.iter().map(|f| g(f)).collect());
        println!(
            "{what}: median of {} {kind:<8}: down {} ms, longest DNS gap {} ms, longest flow gap \
             {} ms; {} lookups tried, {} failed, flow reset: no",
            of.len(),
            m(|f| f.down_ms),
            m(|f| f.dns_gap_ms),
            m(|f| f.flow_gap_ms),
            of.iter().map(|f| f.tried).sum::<usize>(),
            of.iter().map(|f| f.failed).sum::<usize>(),
        );
    }
    // Where a restart's time goes, from wa's daemon log.
    let log =
        std::fs::read_to_string(node.lab.host_dir("wa").join("daemon.log")).unwrap_or_default();
    for l in log.lines().filter(|l| {
        [
            "shutting down",
            "daemon ready",
            "first data plane pass",
            "adopted",
            "session established",
        ]
        .iter()
        .any(|m| l.contains(m))
    }) {
        println!("wa ({what}): {}", common::strip_ansi(l));
    }
    // The upgraded daemon is the copy, and it kept the same fd store.
    let pid = node.lab.pid("wa").expect("wa runs");
    if rounds > 0 {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
        assert_eq!(exe, node.upgrade, "the last restart ran the new binary");
    }
}
