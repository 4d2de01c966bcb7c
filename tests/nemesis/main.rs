//! The nemesis suite (issue #13): a cluster of real daemons (3 or 5
//! managers, workers w1 w2) under faults while four clients write and read
//! registers through the managers; afterwards `weft-faults` judges the
//! history.
//!
//! ```text
//!  4 client threads ── weft CLI ──▶ m1 / m2 / m3 (/ m4 / m5) local sockets ──▶ Raft
//!      (write, barrier read, plain read; each recorded with its times)
//!
//!  nemesis (test thread), per round:
//!    cluster healthy ─▶ fresh registers ─▶ a few operations ─▶ FAULT
//!      ─▶ quorum kept: its own writes through the managers the fault did
//!         not hit, until one is acknowledged (unavailability); meanwhile
//!         polls for a new leader ─▶ more client operations (at most HOLD)
//!         ─▶ HEAL
//!      ─▶ quorum lost: client operations for NO_QUORUM_HOLD ─▶ HEAL ─▶ its
//!         own writes through every manager until one is acknowledged
//!         (unavailability, counted from the heal)
//!      ─▶ cluster healthy ─▶ next round
//! ```
//!
//! Faults (`inject`, which managers each hits is a pure `plan`): kill -9 of
//! the leader, of a follower, of a majority, then restart; SIGSTOP of the
//! leader, then SIGCONT; partitions (nftables drop rules in the hosts'
//! network namespaces, on the test's own table): the leader isolated, a
//! minority holding the leader split from the majority (5 managers), a
//! bridge (the leader and some followers cut from each other, the other
//! followers reaching both), then healed; the Raft directory (a tmpfs of
//! its own per manager) full on the leader, or on the leader and a
//! follower, then freed; the leader killed between a log write and its
//! fsync (a test-only failpoint in the log writer) and its log cut back to
//! what was fsynced plus half the write or zeros, then restarted. Round 0
//! has no fault, for comparison.
//!
//! A register is a node label (`w1`/`w2`, a label key per round): a write is
//! `weft node update --label-add k=<unique value>`, a read `weft node
//! inspect`. Every control call but `weft info` takes a read index from
//! the leader (`ControlService::admit` in `manager/src/controlapi.rs`;
//! `node update` only before it would refuse, as a blind write):
//! a follower, a restarted manager or a leader deposed without knowing it
//! answers only once it holds every write committed before the call, or
//! refuses. So a *plain read* through any manager must be linearizable. A
//! *barrier read* (a label only its client writes, written through the same
//! manager, then a read there that must show it) also checks
//! read-your-writes. What is checked:
//!
//! - writes, plain reads and barrier reads (and a final read of every
//!   register once the cluster is healthy) are **linearizable**, per
//!   register;
//! - every barrier read shows its own acknowledged write;
//! - no acknowledged write is lost: each is in the final state or
//!   superseded by a write that did not finish before it began;
//! - the cluster is healthy at the end: every node Ready, one leader that
//!   every manager names.
//!
//! `WEFT_FAULTS_FULL=1` (`make faults`) runs more rounds, and every fault
//! with 5 managers too; `WEFT_FAULTS_ROUNDS=N` sets the rounds per fault,
//! `WEFT_FAULTS_ONLY=KillLeader,CrashMidAppend` picks faults (by variant).

mod client;
#[path = "../common/mod.rs"]
mod common;
mod inject;
mod judge;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use client::{CLIENTS, Kind, LABELS, Record, Shared, client, labels_of, register};
use common::disk::SmallDisk;
use common::{Lab, parse_node_ls, wait_for, wait_voters};
use inject::{Fault, heal, inject, plan};
use judge::{Round, judge, print_slow_writes, print_table};
use weft_faults::{Action, Operation, Outcome};

const MANAGERS_3: [&str; 3] = ["m1", "m2", "m3"];
const MANAGERS_5: [&str; 5] = ["m1", "m2", "m3", "m4", "m5"];
const WORKERS: [&str; 2] = ["w1", "w2"];
/// The longest a fault is held once writes work again.
const HOLD: Duration = Duration::from_secs(10);
/// How long a fault that leaves no quorum is held (clients keep trying).
const NO_QUORUM_HOLD: Duration = Duration::from_secs(5);
/// Each manager's Raft directory: room for the log and snapshots of a run
/// (compaction needs a copy plus 16 MiB free), small enough to fill fast.
const RAFT_DISK: &str = "64m";

/// Waits until every one of `managers` answers `node ls` with every node
/// (the managers and two workers) Ready, every manager reachable and the
/// same one leader; returns the leader.
fn wait_healthy(lab: &Lab, managers: &[&'static str], what: &str) -> &'static str {
    let mut leader = None;
    wait_for(what, Duration::from_secs(90), || {
        let mut leaders = BTreeSet::new();
        for m in managers {
            let out = lab.try_weft(m, &["node", "ls"]);
            if !out.status.success() {
                return false;
            }
            let rows = parse_node_ls(&String::from_utf8_lossy(&out.stdout));
            let reachable = rows
                .iter()
                .filter(|r| r.manager == "Leader" || r.manager == "Reachable")
                .count();
            let leads: Vec<_> = rows.iter().filter(|r| r.manager == "Leader").collect();
            if rows.len() != managers.len() + WORKERS.len()
                || !rows.iter().all(|r| r.status == "Ready")
                || reachable != managers.len()
                || leads.len() != 1
            {
                return false;
            }
            leaders.insert(leads[0].hostname.clone());
        }
        match leaders.into_iter().collect::<Vec<_>>().as_slice() {
            [l] => {
                leader = managers.iter().copied().find(|m| m == l);
                leader.is_some()
            }
            _ => false,
        }
    });
    leader.expect("a leader")
}

/// Writes through `through`, in turn, until one is acknowledged (each try
/// waits at most the managers' propose deadline); returns when. Measured
/// by the nemesis itself, so that clients waiting on a paused manager do
/// not count as the cluster being unavailable.
fn first_write_through(lab: &Lab, shared: &Shared, through: &[&str]) -> u64 {
    let mut tries = 0usize;
    wait_for(
        "a write acknowledged after the fault",
        Duration::from_secs(90),
        || {
            tries += 1;
            let m = through[tries % through.len()];
            let label = format!("nemesis={tries}");
            lab.try_weft(m, &["node", "update", "--label-add", &label, "w1"])
                .status
                .success()
        },
    );
    shared.now()
}

/// Polls `asking` until one names a leader other than `old`; returns when.
fn new_leader_named(lab: &Lab, shared: &Shared, asking: &[&str], old: &str) -> u64 {
    wait_for("a new leader", Duration::from_secs(60), || {
        asking.iter().any(|m| {
            let out = lab.try_weft(m, &["node", "ls"]);
            out.status.success()
                && parse_node_ls(&String::from_utf8_lossy(&out.stdout))
                    .iter()
                    .any(|r| r.manager == "Leader" && r.hostname != old)
        })
    });
    shared.now()
}

/// The managers' Raft directories, each a small file system of its own
/// (the full-disk faults fill them), mounted before any daemon starts.
fn raft_disks(lab: &Lab, managers: &[&'static str]) -> BTreeMap<&'static str, SmallDisk> {
    managers
        .iter()
        .map(|m| {
            let dir = lab.data_dir(m).join("raft");
            (*m, SmallDisk::mount(dir, RAFT_DISK))
        })
        .collect()
}

/// `managers` and the two workers, m1 initialising and every other host
/// joining (managers through the previous manager); the daemons run with
/// the log writer's failpoint enabled (it acts only once armed).
fn cluster(test: &str, managers: &[&'static str]) -> (Lab, BTreeMap<&'static str, SmallDisk>) {
    let hosts: Vec<&str> = managers.iter().chain(&WORKERS).copied().collect();
    let mut lab = Lab::new(test, &hosts);
    let disks = raft_disks(&lab, managers);
    lab.set_daemon_env(weft_manager::raft::wal_failpoint::ENV, "1");
    // The daemons' log filter, to look into a failure.
    if let Ok(filter) = std::env::var("WEFT_NEMESIS_DAEMON_LOG") {
        lab.set_daemon_env("WEFT_LOG", &filter);
    }
    lab.start_all();
    let (wt, mt) = lab.init("m1", &[]);
    for pair in managers.windows(2) {
        lab.join(pair[1], &mt, pair[0]);
    }
    let last = managers[managers.len() - 1];
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, last);
    wait_voters(&lab, "m1", managers);
    wait_healthy(&lab, managers, "the cluster formed");
    (lab, disks)
}

/// Runs the clients while the nemesis goes through `schedule` (a round
/// per fault); returns what each round measured.
fn run_rounds(lab: &mut Lab, shared: &Shared, schedule: &[Fault], dwell_ops: usize) -> Vec<Round> {
    let mut rounds = Vec::new();
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| s.spawn(move || client(shared, id, 20_000, Duration::from_secs(3600))))
            .collect();
        // Stops the clients however the nemesis ends, so that a failed
        // wait reports instead of waiting on them forever.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(&shared.stop);
        for (round, &fault) in schedule.iter().enumerate() {
            rounds.push(run_round(lab, shared, round, fault, dwell_ops));
        }
        shared.stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().expect("client");
        }
    });
    rounds
}

fn run_round(
    lab: &mut Lab,
    shared: &Shared,
    round: usize,
    fault: Fault,
    dwell_ops: usize,
) -> Round {
    let managers = &shared.managers;
    let leader = wait_healthy(
        lab,
        managers,
        &format!("a healthy cluster before round {round}"),
    );
    shared.round.store(round, Ordering::SeqCst);
    let since = shared.now();
    wait_for(
        &format!("operations on round {round}'s registers"),
        Duration::from_secs(60),
        || shared.completed_since(since) >= 8,
    );
    let plan = plan(fault, managers, &WORKERS, leader, round);
    let (injected, at) = inject(lab, shared, fault, &plan, round);
    let survivors: Vec<&str> = managers
        .iter()
        .copied()
        .filter(|m| !plan.victims.contains(m))
        .collect();
    let hold = Instant::now();
    let (ok_at, elected_at, from) = if plan.quorum_kept {
        let lab_ref = &*lab;
        let elects = plan.victims.contains(&leader) && fault != Fault::PartitionBridge;
        let (ok_at, elected_at) = std::thread::scope(|s| {
            let probe = s.spawn(|| first_write_through(lab_ref, shared, &survivors));
            let elected = elects.then(|| new_leader_named(lab_ref, shared, &survivors, leader));
            (probe.join().expect("probe"), elected)
        });
        // Hold the fault while the clients get some work done under it,
        // or for at most HOLD: callers of a paused daemon wait for it, so
        // under SIGSTOP the clients can all end up waiting.
        wait_for(
            &format!("operations under {} (round {round})", fault.name()),
            HOLD + Duration::from_secs(1),
            || shared.completed_since(ok_at) >= dwell_ops || hold.elapsed() >= HOLD,
        );
        heal(lab, shared, injected);
        (ok_at, elected_at, at)
    } else {
        // No write can be acknowledged: the clients keep trying (their
        // calls fail or stay unknown) until the heal, and unavailability
        // counts from the heal.
        std::thread::sleep(NO_QUORUM_HOLD);
        let healing = shared.now();
        heal(lab, shared, injected);
        (first_write_through(lab, shared, managers), None, healing)
    };
    let since = |t: u64| Duration::from_nanos(t - from);
    eprintln!(
        "round {round}: {} at {:?} (leader {leader}, hit {:?}): new leader after {:?}, \
         write again after {:?}{}, held {:?}",
        fault.name(),
        Duration::from_nanos(at),
        plan.victims,
        elected_at.map(|t| Duration::from_nanos(t - at)),
        since(ok_at),
        if plan.quorum_kept {
            ""
        } else {
            " from the heal"
        },
        hold.elapsed(),
    );
    Round {
        fault,
        unavailable: since(ok_at),
        from_heal: !plan.quorum_kept,
        elected: elected_at.map(|t| Duration::from_nanos(t - at)),
    }
}

/// Once the cluster is healthy and the managers agree: a barrier read of
/// every register of the `rounds` rounds through the leader.
fn read_final_state(lab: &Lab, shared: &Shared, rounds: usize) {
    let managers = &shared.managers;
    let leader = wait_healthy(lab, managers, "a healthy cluster at the end");
    for node in WORKERS {
        same_labels_everywhere(lab, managers, node);
        let invoke = shared.now();
        let probe = ["node", "update", "--label-add", "probe-final=1", node];
        lab.weft(leader, &probe);
        let labels = labels_of(&lab.weft(leader, &["node", "inspect", node]));
        let complete = shared.now();
        assert_eq!(labels.get("probe-final").map(String::as_str), Some("1"));
        for round in 0..rounds {
            for label in LABELS {
                let (key, label) = register(round, node, label);
                let action = Action::read(key, labels.get(&label).cloned());
                shared.record(Record {
                    round,
                    kind: Kind::FinalRead,
                    manager: leader,
                    op: Operation::new(100, action, invoke, complete, Outcome::Ok),
                    error: String::new(),
                });
            }
        }
    }
}

/// Waits until every manager shows the same labels of `node`; if they
/// still differ after 30 s, fails naming the labels that differ and what
/// each manager says of its Raft state.
fn same_labels_everywhere(lab: &Lab, managers: &[&'static str], node: &str) {
    let started = Instant::now();
    loop {
        let seen: BTreeMap<&str, BTreeMap<String, String>> = managers
            .iter()
            .map(|m| (*m, labels_of(&lab.weft(m, &["node", "inspect", node]))))
            .collect();
        let distinct: BTreeSet<_> = seen.values().collect();
        if distinct.len() == 1 {
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let keys: BTreeSet<&String> = seen.values().flat_map(|l| l.keys()).collect();
            let mut report =
                format!("the managers still disagree on {node}'s labels after 30 s:\n");
            for key in keys {
                let values: Vec<_> = seen.iter().map(|(m, l)| (m, l.get(key))).collect();
                if values.iter().any(|(_, v)| *v != values[0].1) {
                    report += &format!("  {key}: {values:?}\n");
                }
            }
            for m in managers {
                let info = lab.weft(m, &["info"]);
                let raft: Vec<&str> = info
                    .lines()
                    .filter(|l| l.contains("ndex") || l.contains("eader") || l.contains("erm"))
                    .collect();
                report += &format!("  {m}: {raft:?}\n");
            }
            keep_logs(lab, managers);
            panic!("{report}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Copies the daemons' logs out of the lab (which removes its directory)
/// into a directory of their own under the system's temporary directory,
/// for the failure to be looked into.
fn keep_logs(lab: &Lab, managers: &[&'static str]) {
    let dir = std::env::temp_dir().join(format!("weft-nemesis-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("log dir");
    for host in managers.iter().chain(&WORKERS) {
        let log = lab.host_dir(host).join("daemon.log");
        let _ = std::fs::copy(&log, dir.join(format!("{host}.log")));
    }
    eprintln!("daemon logs kept in {}", dir.display());
}

/// Whether the full form runs (`WEFT_FAULTS_FULL=1`, `make faults`).
fn full_form() -> bool {
    std::env::var("WEFT_FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// Rounds per fault: `WEFT_FAULTS_ROUNDS`, else 4 in the full form and
/// `short` otherwise; and how many client operations a fault is held for.
fn rounds_per_fault(short: usize) -> (usize, usize) {
    let rounds = std::env::var("WEFT_FAULTS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok());
    match (full_form(), rounds) {
        (_, Some(n)) => (n, 300),
        (true, None) => (4, 300),
        (false, None) => (short, 100),
    }
}

/// Runs `schedule` (after a round without a fault) against `managers`
/// with the clients, judges the history, prints the figures and fails on
/// any lost write or violation.
fn nemesis(test: &str, managers: &[&'static str], faults: &[Fault], rounds: usize, dwell: usize) {
    let started = Instant::now();
    let (mut lab, disks) = cluster(test, managers);
    let shared = Shared {
        epoch: Instant::now(),
        round: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        down: Mutex::new(BTreeSet::new()),
        records: Mutex::new(Vec::new()),
        managers: managers.to_vec(),
        sockets: managers.iter().map(|m| (*m, lab.socket_path(m))).collect(),
        disks,
        unseen_barriers: AtomicUsize::new(0),
        events: Mutex::new(Vec::new()),
    };
    // `WEFT_FAULTS_ONLY=KillLeader,DiskFullTwo` runs only those faults.
    let only = std::env::var("WEFT_FAULTS_ONLY").unwrap_or_default();
    let faults: Vec<Fault> = faults
        .iter()
        .copied()
        .filter(|f| only.is_empty() || only.split(',').any(|o| o == format!("{f:?}")))
        .collect();
    let mut schedule = vec![Fault::None];
    for _ in 0..rounds {
        schedule.extend(&faults);
    }
    let rounds = run_rounds(&mut lab, &shared, &schedule, dwell);
    read_final_state(&lab, &shared, schedule.len());

    let records = std::mem::take(&mut *shared.records.lock().expect("records"));
    let check_started = Instant::now();
    let (figures, problems) = judge(&records, &rounds, &schedule, &shared);
    let count = |k: Kind| records.iter().filter(|r| r.kind == k).count();
    eprintln!(
        "\nnemesis, {} managers: {} rounds, {} operations ({} writes, {} barrier reads, {} plain \
         reads) by {CLIENTS} clients in {:?}; checked in {:?}; {} barrier reads not shown by \
         the manager that acknowledged their write",
        managers.len(),
        rounds.len(),
        records.len() - count(Kind::FinalRead),
        count(Kind::Write),
        count(Kind::BarrierRead),
        count(Kind::Read),
        started.elapsed(),
        check_started.elapsed(),
        shared.unseen_barriers.load(Ordering::SeqCst),
    );
    print_table(managers.len(), &figures);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for r in records.iter().filter(|r| r.op.outcome != Outcome::Ok) {
        let first = r.error.lines().next().unwrap_or("");
        *errors
            .entry(format!("{:?} via {}: {first}", r.kind, r.manager))
            .or_default() += 1;
    }
    for (e, n) in &errors {
        eprintln!("{n:>5} x {e}");
    }
    print_slow_writes(&records, &shared);
    let mut problems = problems;
    let unseen = shared.unseen_barriers.load(Ordering::SeqCst);
    if unseen > 0 {
        problems.push(format!(
            "{unseen} barrier reads did not show the write their manager had acknowledged"
        ));
    }
    if !problems.is_empty() {
        keep_logs(&lab, managers);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn clients_see_a_linearizable_register_through_crashes_pauses_and_partitions() {
    let (rounds, dwell) = rounds_per_fault(1);
    let faults = Fault::all(MANAGERS_3.len());
    nemesis("nemesis", &MANAGERS_3, &faults, rounds, dwell);
}

/// Every fault against 5 managers in the full form; in the short form
/// (`make test`) one round of what 5 managers add: a majority killed and
/// a minority holding the leader split off.
#[test]
fn five_managers_keep_a_linearizable_register_through_the_same_faults() {
    let (rounds, dwell) = rounds_per_fault(1);
    let faults = if full_form() || std::env::var("WEFT_FAULTS_ROUNDS").is_ok() {
        Fault::all(MANAGERS_5.len())
    } else {
        vec![Fault::KillMajority, Fault::PartitionMinority]
    };
    nemesis("nemesis5", &MANAGERS_5, &faults, rounds, dwell);
}

/// The data plane does not need the managers: a task on w1 keeps reaching
/// a service's VIP, whose one replica runs on w2, by address and by name,
/// while every manager is down, and after they come back.
#[test]
fn a_vip_flow_between_workers_keeps_working_while_every_manager_is_down() {
    let (mut lab, _disks) = cluster("vipnomgr", &MANAGERS_3);
    let appnet = "network create --attachable --subnet 10.0.9.0/24 appnet";
    lab.weft("m1", &appnet.split(' ').collect::<Vec<_>>());
    let site = "mkdir -p /tmp/www; hostname > /tmp/www/index.html; \
                exec busybox httpd -f -p 80 -h /tmp/www";
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--network",
            "appnet",
            "--constraint",
            "node.hostname==w2",
            "--",
            "sh",
            "-c",
            site,
        ],
    );
    let client = lab.run_task("w1", &["--network", "appnet", "--", "sleep", "3600"]);
    let pin = lab.task_netns("w1", &client);
    let web: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["service", "inspect", "web"])).expect("json");
    let vip = web[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .expect("a VIP")
        .to_string();
    let url = format!("http://{vip}/");
    // busybox wget -T crashes on Debian 12's busybox; bounded with timeout.
    let answers = || {
        common::nsenter_stdout(&pin, &["timeout", "3", "busybox", "wget", "-qO-", &url])
            .starts_with("web.")
    };
    let resolves = || {
        common::nsenter_stdout(&pin, &["busybox", "nslookup", "web", "127.0.0.11"]).contains(&vip)
    };
    wait_for("w1 reaches the VIP", Duration::from_secs(30), || {
        answers() && resolves()
    });

    for m in MANAGERS_3 {
        lab.kill9(m);
    }
    let orphaned = || {
        WORKERS
            .into_iter()
            .all(|w| lab.weft(w, &["info"]).contains("Cluster: pending"))
    };
    wait_for(
        "the workers see their managers gone",
        Duration::from_secs(20),
        orphaned,
    );
    // Watched for 30 s: 30 heartbeat periods, and well past the workers'
    // longest pause between reconnection attempts (2 s), so a worker that
    // dropped its data plane on losing its managers would show it.
    let down = Instant::now();
    let (mut answered, mut failed) = (0, Vec::new());
    while down.elapsed() < Duration::from_secs(30) {
        if answers() && resolves() {
            answered += 1;
        } else {
            failed.push(down.elapsed());
        }
    }
    eprintln!("every manager down: {answered} requests answered, failures at {failed:?}");
    assert!(
        failed.is_empty(),
        "failed at {failed:?} after the managers went down"
    );
    assert!(answered > 0);
    assert!(orphaned(), "the workers are still without managers");

    for m in MANAGERS_3 {
        lab.start(m);
    }
    wait_healthy(&lab, &MANAGERS_3, "the managers back");
    assert!(
        answers() && resolves(),
        "the VIP after the managers came back"
    );
}
