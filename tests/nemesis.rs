//! The nemesis suite (issue #13): a cluster of real daemons (managers m1 m2
//! m3, workers w1 w2) under faults while four clients write and read
//! registers through the managers; afterwards `weft-faults` judges the
//! history.
//!
//! ```text
//!  4 client threads ── weft CLI ──▶ m1 / m2 / m3 local sockets ──▶ Raft
//!      (write, barrier read, local read; each recorded with its times)
//!
//!  nemesis (test thread), per round:
//!    cluster healthy ─▶ fresh registers ─▶ a few operations ─▶ FAULT
//!      ─▶ its own writes through the managers the fault did not hit, until
//!         one is acknowledged (unavailability); meanwhile polls for a new
//!         leader ─▶ more client operations (at most HOLD) ─▶ HEAL
//!      ─▶ cluster healthy ─▶ next round
//! ```
//!
//! Faults: kill -9 of the leader, then restart; kill -9 of a follower, then
//! restart; SIGSTOP of the leader, then SIGCONT; a partition isolating the
//! leader from every other host (nftables drop rules in the leader's network
//! namespace, on the test's own table), then healed. Round 0 has no fault,
//! for comparison.
//!
//! A register is a node label (`w1`/`w2`, a label key per round): a write is
//! `weft node update --label-add k=<unique value>`, a read `weft node
//! inspect`. `node inspect` is answered from the asked manager's own store,
//! without asking the leader (`GetNode` in `manager/src/controlapi.rs`), so
//! a plain read on a follower, or on a leader that was deposed without
//! knowing it, may be stale: such *local reads* are not linearizable by
//! design and are judged against a weaker property. A *barrier read* first
//! writes a label only its client writes, through the same manager, then
//! reads there and is kept only if that label shows: `UpdateNode` answers
//! once the manager applied the write, so the state read includes
//! everything committed before the read began. What is checked:
//!
//! - writes and barrier reads (and a final read of every register once the
//!   cluster is healthy) are **linearizable**, per register;
//! - every local read returned a value its register held at some instant
//!   before the read completed, consistent with that one order of writes
//!   (linearizable when the read may take effect at any time up to its
//!   completion: stale but never invented or from the future);
//! - no acknowledged write is lost: each is in the final state or
//!   superseded by a write that did not finish before it began;
//! - the cluster is healthy at the end: five nodes Ready, one leader that
//!   every manager names.
//!
//! Whether local reads would pass as linearizable is reported, not asserted.
//! `WEFT_FAULTS_FULL=1` (`make faults`) runs more rounds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{Lab, WEFT, nsenter, parse_node_ls, wait_for};
use weft_faults::{Action, Budget, KeyVerdict, Operation, Outcome, Witness, check_keys};

const MANAGERS: [&str; 3] = ["m1", "m2", "m3"];
const WORKERS: [&str; 2] = ["w1", "w2"];
const CLIENTS: u64 = 4;
/// Label keys per worker node that are registers in one round (with the
/// round number in front): 4 registers per round.
const LABELS: [&str; 2] = ["a", "b"];
/// A CLI call that has not answered by then is killed and counts as `Info`
/// (a little over the managers' 8 s propose deadline: only a call to a
/// paused daemon takes longer).
const CALL_LIMIT: Duration = Duration::from_secs(12);
/// The longest a fault is held once writes work again.
const HOLD: Duration = Duration::from_secs(10);
/// The nftables table the partition lives in (never weft's own).
const NFT_TABLE: &str = "weft_nemesis";

/// Messages of refusals that happen before anything is proposed: the CLI
/// could not connect to the daemon's socket at all (it adds this hint to
/// every such error, and only to those), or the control API refused before
/// `propose` (`Error::NotReady`, no manager on this node). Every other
/// failure of a write may have been proposed, so it is recorded as `Info`.
const REFUSED_BEFORE_PROPOSING: &[&str] = &[
    "Is the weft daemon running?",
    "has not caught up with the cluster yet",
    "this node is not a manager",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    None,
    KillLeader,
    KillFollower,
    PauseLeader,
    PartitionLeader,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::PartitionLeader,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::KillLeader => "kill -9 leader",
            Fault::KillFollower => "kill -9 follower",
            Fault::PauseLeader => "SIGSTOP leader",
            Fault::PartitionLeader => "partition leader",
        }
    }
}

/// How a recorded operation was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    /// Own-label write, then a read on the same manager showing it.
    BarrierRead,
    /// A read of whatever the asked manager has.
    LocalRead,
    /// A barrier read of every register at the end, through the leader.
    FinalRead,
}

struct Record {
    round: usize,
    kind: Kind,
    manager: &'static str,
    op: Operation<String, String>,
    /// stderr of a call that failed.
    error: String,
}

/// What the clients and the nemesis share.
struct Shared {
    epoch: Instant,
    round: AtomicUsize,
    stop: AtomicBool,
    /// Managers the nemesis killed: clients do not pick them (a client
    /// that did would only collect instant `Fail`s).
    down: Mutex<BTreeSet<&'static str>>,
    records: Mutex<Vec<Record>>,
    sockets: BTreeMap<&'static str, PathBuf>,
    /// Barrier reads whose own write was acknowledged by a manager that
    /// then did not show it (recorded as local reads instead).
    unseen_barriers: AtomicUsize,
    /// What the nemesis did to which manager, when.
    events: Mutex<Vec<(u64, &'static str, &'static str)>>,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).expect("ns fit u64")
    }

    fn event(&self, manager: &'static str, what: &'static str) {
        let at = self.now();
        self.events
            .lock()
            .expect("events")
            .push((at, manager, what));
    }

    /// The last thing the nemesis did to `manager` before `at`, and how
    /// long before.
    fn last_event(&self, manager: &str, at: u64) -> Option<(&'static str, Duration)> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .rev()
            .find(|(t, m, _)| *m == manager && *t <= at)
            .map(|(t, _, what)| (*what, Duration::from_nanos(at - t)))
    }

    fn record(&self, r: Record) {
        self.records.lock().expect("records").push(r);
    }

    /// Operations invoked at or after `since` that have completed.
    fn completed_since(&self, since: u64) -> usize {
        self.records
            .lock()
            .expect("records")
            .iter()
            .filter(|r| r.op.invoke_ns >= since)
            .count()
    }
}

fn register(round: usize, node: &str, label: &str) -> (String, String) {
    let label = format!("r{round}{label}");
    (format!("{node}/{label}"), label)
}

/// How a CLI call ended.
enum Answer {
    Exited(Output),
    TimedOut,
}

impl Answer {
    fn ok_stdout(&self) -> Option<String> {
        match self {
            Answer::Exited(o) if o.status.success() => {
                Some(String::from_utf8_lossy(&o.stdout).into_owned())
            }
            _ => None,
        }
    }

    fn error(&self) -> String {
        match self {
            Answer::Exited(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Answer::TimedOut => format!("no answer within {CALL_LIMIT:?}"),
        }
    }
}

/// `weft ARGS` against the daemon socket `socket`, killed after
/// [`CALL_LIMIT`] (a paused daemon holds its callers until it resumes).
fn call(socket: &Path, args: &[&str]) -> Answer {
    let child = Command::new(WEFT)
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .env_remove("WEFT_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CALL_LIMIT) {
        Ok(out) => Answer::Exited(out.expect("wait for weft")),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv();
            Answer::TimedOut
        }
    }
}

/// The labels `weft node inspect NODE` shows.
fn labels_of(inspect: &str) -> BTreeMap<String, String> {
    let v: serde_json::Value = serde_json::from_str(inspect).expect("inspect json");
    serde_json::from_value(v[0]["Labels"].clone()).expect("labels")
}

/// A small generator (SplitMix64), seeded per client: each client draws
/// the same mix of operations every run (the timing still differs).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// One client: writes (half), barrier reads and local reads (a quarter
/// each) on the current round's registers through a random live manager,
/// until told to stop or its own bounds are reached.
fn client(shared: &Shared, id: u64, max_ops: usize, max_time: Duration) {
    let mut rng = Rng(id * 7919);
    let started = Instant::now();
    for n in 0..max_ops {
        if shared.stop.load(Ordering::SeqCst) || started.elapsed() > max_time {
            return;
        }
        let round = shared.round.load(Ordering::SeqCst);
        let node = WORKERS[rng.below(WORKERS.len())];
        let (key, label) = register(round, node, LABELS[rng.below(LABELS.len())]);
        let live: Vec<&'static str> = {
            let down = shared.down.lock().expect("down");
            MANAGERS.into_iter().filter(|m| !down.contains(m)).collect()
        };
        let manager = live[rng.below(live.len())];
        let at = Target {
            shared,
            socket: &shared.sockets[manager],
            node,
        };
        let (kind, action, (invoke, complete), outcome, error) = match rng.below(4) {
            0 | 1 => {
                let value = format!("c{id}n{n}");
                let (times, answer) = at.timed(|| at.set_label(&label, &value));
                let outcome = match &answer {
                    Answer::Exited(o) if o.status.success() => Outcome::Ok,
                    Answer::Exited(_)
                        if REFUSED_BEFORE_PROPOSING
                            .iter()
                            .any(|m| answer.error().contains(m)) =>
                    {
                        Outcome::Fail
                    }
                    _ => Outcome::Info,
                };
                let action = Action::write(key, value);
                (Kind::Write, action, times, outcome, answer.error())
            }
            2 => at.barrier_read(id, n, key, &label),
            _ => {
                let (times, labels) = at.timed(|| at.labels());
                match labels {
                    Ok(l) => {
                        let action = Action::read(key, l.get(&label).cloned());
                        (Kind::LocalRead, action, times, Outcome::Ok, String::new())
                    }
                    Err(e) => (
                        Kind::LocalRead,
                        Action::read(key, None),
                        times,
                        Outcome::Info,
                        e,
                    ),
                }
            }
        };
        shared.record(Record {
            round,
            kind,
            manager,
            op: Operation::new(id, action, invoke, complete, outcome),
            error,
        });
    }
}

/// What a client operation recorded: how it was made, what it did, when
/// (invoke, complete), what became of it and the error if any.
type Made = (Kind, Action<String, String>, (u64, u64), Outcome, String);

/// A node's labels as seen through one manager's socket.
struct Target<'a> {
    shared: &'a Shared,
    socket: &'a Path,
    node: &'static str,
}

impl Target<'_> {
    /// Runs `f` and returns its result with when it began and ended.
    fn timed<T>(&self, f: impl FnOnce() -> T) -> ((u64, u64), T) {
        let invoke = self.shared.now();
        let out = f();
        ((invoke, self.shared.now()), out)
    }

    fn set_label(&self, key: &str, value: &str) -> Answer {
        let kv = format!("{key}={value}");
        call(
            self.socket,
            &["node", "update", "--label-add", &kv, self.node],
        )
    }

    fn labels(&self) -> Result<BTreeMap<String, String>, String> {
        let answer = call(self.socket, &["node", "inspect", self.node]);
        answer
            .ok_stdout()
            .map(|s| labels_of(&s))
            .ok_or_else(|| answer.error())
    }

    /// Writes the client's own probe label, then reads where it was
    /// written. When the read does not show the probe (the manager
    /// acknowledged a write it had not applied), the read is only a local
    /// read, timed from when it was made.
    fn barrier_read(&self, id: u64, n: usize, key: String, label: &str) -> Made {
        let (probe, mark) = (format!("probe-c{id}"), format!("n{n}"));
        let (wrote, answer) = self.timed(|| self.set_label(&probe, &mark));
        if answer.ok_stdout().is_none() {
            let action = Action::read(key, None);
            return (
                Kind::BarrierRead,
                action,
                wrote,
                Outcome::Info,
                answer.error(),
            );
        }
        let (read, labels) = self.timed(|| self.labels());
        match labels {
            Ok(l) if l.get(&probe) == Some(&mark) => {
                let action = Action::read(key, l.get(label).cloned());
                let times = (wrote.0, read.1);
                (Kind::BarrierRead, action, times, Outcome::Ok, String::new())
            }
            Ok(l) => {
                self.shared.unseen_barriers.fetch_add(1, Ordering::SeqCst);
                let action = Action::read(key, l.get(label).cloned());
                let error = format!("barrier {probe}={mark} not shown");
                (Kind::LocalRead, action, read, Outcome::Ok, error)
            }
            Err(e) => {
                let times = (wrote.0, read.1);
                (
                    Kind::BarrierRead,
                    Action::read(key, None),
                    times,
                    Outcome::Info,
                    e,
                )
            }
        }
    }
}

/// Waits until every manager answers `node ls` with five Ready nodes,
/// three managers reachable and the same one leader; returns the leader.
fn wait_healthy(lab: &Lab, what: &str) -> String {
    let mut leader = String::new();
    wait_for(what, Duration::from_secs(90), || {
        let mut leaders = BTreeSet::new();
        for m in MANAGERS {
            let out = lab.try_weft(m, &["node", "ls"]);
            if !out.status.success() {
                return false;
            }
            let rows = parse_node_ls(&String::from_utf8_lossy(&out.stdout));
            let managers = rows
                .iter()
                .filter(|r| r.manager == "Leader" || r.manager == "Reachable")
                .count();
            let leads: Vec<_> = rows.iter().filter(|r| r.manager == "Leader").collect();
            if rows.len() != 5
                || !rows.iter().all(|r| r.status == "Ready")
                || managers != 3
                || leads.len() != 1
            {
                return false;
            }
            leaders.insert(leads[0].hostname.clone());
        }
        match leaders.into_iter().collect::<Vec<_>>().as_slice() {
            [l] => {
                leader = l.clone();
                true
            }
            _ => false,
        }
    });
    leader
}

/// A daemon stopped with SIGSTOP; continued when healed or dropped.
struct Paused(Option<nix::unistd::Pid>);

impl Paused {
    fn stop(pid: u32) -> Paused {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        Paused(Some(pid))
    }

    fn resume(&mut self) {
        if let Some(pid) = self.0.take() {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.resume();
    }
}

/// A host cut off from the other lab hosts: drop rules for their underlay
/// addresses, in and out, in a table of the test's own inside the host's
/// network namespace (nothing outside the lab is touched). Removed when
/// healed or dropped, also when the test fails.
struct Partition(Option<PathBuf>);

impl Partition {
    fn isolate(lab: &Lab, host: &str, others: &[&str]) -> Partition {
        let addrs: Vec<String> = others.iter().map(|o| lab.addr(o)).collect();
        let addrs = addrs.join(", ");
        let rules = format!(
            "table inet {NFT_TABLE} {{\n\
             chain input {{ type filter hook input priority -300; policy accept; ip saddr {{ {addrs} }} drop; }}\n\
             chain output {{ type filter hook output priority -300; policy accept; ip daddr {{ {addrs} }} drop; }}\n\
             }}\n"
        );
        let file = lab.dir().join(format!("partition-{host}.nft"));
        std::fs::write(&file, rules).expect("write rules");
        let pin = lab.host_netns(host);
        let out = nsenter(&pin, &["nft", "-f", &file.display().to_string()]);
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Partition(Some(pin))
    }

    fn heal(&mut self) {
        if let Some(pin) = self.0.take() {
            let out = nsenter(&pin, &["nft", "delete", "table", "inet", NFT_TABLE]);
            assert!(
                out.status.success() || std::thread::panicking(),
                "nft delete: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

/// A fault in place, and what undoes it.
enum Injected {
    Nothing,
    Killed(&'static str),
    Paused(&'static str, Paused),
    Partitioned(&'static str, Partition),
}

impl Injected {
    /// The manager the fault hit.
    fn victim(&self) -> Option<&'static str> {
        match self {
            Injected::Nothing => None,
            Injected::Killed(m) | Injected::Paused(m, _) | Injected::Partitioned(m, _) => Some(m),
        }
    }
}

fn manager_name(host: &str) -> &'static str {
    MANAGERS
        .into_iter()
        .find(|m| *m == host)
        .unwrap_or_else(|| panic!("{host} is not a manager"))
}

fn inject(lab: &mut Lab, shared: &Shared, fault: Fault, leader: &str, round: usize) -> Injected {
    let leader = manager_name(leader);
    match fault {
        Fault::None => Injected::Nothing,
        Fault::KillLeader | Fault::KillFollower => {
            let victim = if fault == Fault::KillLeader {
                leader
            } else {
                let followers: Vec<_> = MANAGERS.into_iter().filter(|m| *m != leader).collect();
                followers[round % followers.len()]
            };
            shared.down.lock().expect("down").insert(victim);
            lab.kill9(victim);
            shared.event(victim, "killed");
            Injected::Killed(victim)
        }
        Fault::PauseLeader => {
            let paused = Paused::stop(lab.pid(leader).expect("leader runs"));
            shared.event(leader, "paused");
            Injected::Paused(leader, paused)
        }
        Fault::PartitionLeader => {
            let others: Vec<&str> = MANAGERS
                .into_iter()
                .chain(WORKERS)
                .filter(|h| *h != leader)
                .collect();
            let partition = Partition::isolate(lab, leader, &others);
            shared.event(leader, "isolated");
            Injected::Partitioned(leader, partition)
        }
    }
}

fn heal(lab: &mut Lab, shared: &Shared, injected: Injected) {
    match injected {
        Injected::Nothing => {}
        Injected::Killed(victim) => {
            lab.start(victim);
            shared.event(victim, "restarted (socket answering)");
            shared.down.lock().expect("down").remove(victim);
        }
        Injected::Paused(victim, mut p) => {
            p.resume();
            shared.event(victim, "resumed");
        }
        Injected::Partitioned(victim, mut p) => {
            p.heal();
            shared.event(victim, "reconnected");
        }
    }
}

/// Writes through the managers the fault did not hit, in turn, until one
/// is acknowledged (each try waits at most the managers' propose deadline);
/// returns when. Measured by the nemesis itself, so that clients waiting on
/// a paused manager do not count as the cluster being unavailable.
fn first_write_through_survivors(lab: &Lab, shared: &Shared, victim: Option<&str>) -> u64 {
    let survivors: Vec<&str> = MANAGERS
        .into_iter()
        .filter(|m| Some(*m) != victim)
        .collect();
    let mut tries = 0usize;
    wait_for(
        "a write acknowledged after the fault",
        Duration::from_secs(60),
        || {
            tries += 1;
            let m = survivors[tries % survivors.len()];
            let label = format!("nemesis={tries}");
            lab.try_weft(m, &["node", "update", "--label-add", &label, "w1"])
                .status
                .success()
        },
    );
    shared.now()
}

/// Polls the managers other than `old` until one names another leader;
/// returns when.
fn new_leader_named(lab: &Lab, shared: &Shared, old: &str) -> u64 {
    wait_for("a new leader", Duration::from_secs(60), || {
        MANAGERS.into_iter().filter(|m| *m != old).any(|m| {
            let out = lab.try_weft(m, &["node", "ls"]);
            out.status.success()
                && parse_node_ls(&String::from_utf8_lossy(&out.stdout))
                    .iter()
                    .any(|r| r.manager == "Leader" && r.hostname != old)
        })
    });
    shared.now()
}

/// What the nemesis did in one round.
struct Round {
    fault: Fault,
    /// From the fault to the first write acknowledged through a manager
    /// it did not hit.
    unavailable: Duration,
    /// From the fault to a manager it did not hit naming another leader
    /// (faults that hit the leader only).
    elected: Option<Duration>,
}

/// Which local reads go into a history, and how.
#[derive(Clone, Copy)]
enum LocalReads {
    LeftOut,
    /// With their invocation moved to the start: they may take effect at
    /// any time before they completed.
    StaleAllowed,
    AsRecorded,
}

/// The writes, barrier reads and final reads of `records`, and the local
/// reads as `local` says; with, per operation, the index of its record.
fn history(records: &[Record], local: LocalReads) -> (Vec<Operation<String, String>>, Vec<usize>) {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match (r.kind, local) {
            (Kind::LocalRead, LocalReads::LeftOut) => None,
            (Kind::LocalRead, LocalReads::StaleAllowed) => Some((
                Operation {
                    invoke_ns: 0,
                    ..r.op.clone()
                },
                i,
            )),
            _ => Some((r.op.clone(), i)),
        })
        .unzip()
}

/// A witness with, per operation, how it was made, through which manager,
/// and the last thing the nemesis did to that manager before.
fn explain(
    w: &Witness<String, String>,
    origin: &[usize],
    records: &[Record],
    shared: &Shared,
) -> String {
    let mut out = format!(
        "key {:?}: these {} operations cannot be ordered:\n",
        w.key,
        w.operations.len()
    );
    for (i, op) in &w.operations {
        let r = &records[origin[*i]];
        out += &format!("  {:?} via {}: {op}", r.kind, r.manager);
        if let Some((what, before)) = shared.last_event(r.manager, op.invoke_ns) {
            out += &format!(" ({} {what} {before:?} before)", r.manager);
        }
        out += "\n";
    }
    out
}

/// Per-fault figures for the table.
#[derive(Default)]
struct Figures {
    rounds: usize,
    operations: usize,
    acknowledged: usize,
    info: usize,
    fail: usize,
    lost: usize,
    violations: usize,
    stale_local_keys: usize,
    /// How long acknowledged writes took.
    latencies: Vec<Duration>,
    unavailable: Vec<Duration>,
    elected: Vec<Duration>,
}

/// Acknowledged writes of `key` that are neither its final value nor
/// superseded: the write that left the final value finished before the
/// lost one began, so the lost one should have come after it.
fn lost_writes(history: &[Operation<String, String>], key: &str, last: Option<&String>) -> usize {
    let writes: Vec<(&String, &Operation<String, String>)> = history
        .iter()
        .filter(|op| op.action.key() == key && op.outcome != Outcome::Fail)
        .filter_map(|op| match &op.action {
            Action::Write { value, .. } => Some((value, op)),
            Action::Read { .. } => None,
        })
        .collect();
    let final_write = last.and_then(|v| writes.iter().find(|(w, _)| *w == v));
    writes
        .iter()
        .filter(|(v, op)| op.outcome == Outcome::Ok && Some(*v) != last)
        .filter(|(_, op)| match final_write {
            Some((_, fw)) => fw.outcome == Outcome::Ok && fw.complete_ns < op.invoke_ns,
            None => true,
        })
        .count()
}

fn print_table(figures: &BTreeMap<Fault, Figures>) {
    eprintln!(
        "{:<17} {:>6} {:>5} {:>5} {:>4} {:>4} {:>4} {:>10} {:>15} {:>15} {:>14} {:>10}",
        "fault",
        "rounds",
        "ops",
        "acked",
        "info",
        "fail",
        "lost",
        "violations",
        "ack p50/max",
        "unavail p50/max",
        "leader p50/max",
        "stale keys"
    );
    let p50_max = |v: &[Duration]| match v.iter().max() {
        Some(max) => format!("{:.2}/{:.2}s", median(v).as_secs_f64(), max.as_secs_f64()),
        None => "-".to_string(),
    };
    for (fault, f) in figures {
        eprintln!(
            "{:<17} {:>6} {:>5} {:>5} {:>4} {:>4} {:>4} {:>10} {:>15} {:>15} {:>14} {:>10}",
            fault.name(),
            f.rounds,
            f.operations,
            f.acknowledged,
            f.info,
            f.fail,
            f.lost,
            f.violations,
            p50_max(&f.latencies),
            p50_max(&f.unavailable),
            p50_max(&f.elected),
            f.stale_local_keys,
        );
    }
}

/// Acknowledged writes that took longer than the managers' 5 s
/// read-after-write wait (`UpdateNode` answers once the asked manager shows
/// the value written, or after 5 s as it stands), with what else wrote
/// their label meanwhile and what the nemesis last did to their manager.
fn print_slow_writes(records: &[Record], shared: &Shared) {
    let slow = records.iter().filter(|r| {
        r.kind == Kind::Write
            && r.op.outcome == Outcome::Ok
            && r.op.complete_ns - r.op.invoke_ns >= 4_900_000_000
    });
    for r in slow {
        let overlapping: Vec<_> = records
            .iter()
            .filter(|o| o.kind == Kind::Write && o.op.outcome != Outcome::Fail)
            .filter(|o| o.op.action.key() == r.op.action.key() && o.op != r.op)
            .filter(|o| o.op.invoke_ns < r.op.complete_ns && o.op.complete_ns > r.op.invoke_ns)
            .collect();
        let first = overlapping
            .first()
            .map(|o| format!(", the first {} via {}", o.op, o.manager))
            .unwrap_or_default();
        let event = shared
            .last_event(r.manager, r.op.invoke_ns)
            .map(|(what, before)| format!(" ({} {what} {before:?} before)", r.manager))
            .unwrap_or_default();
        eprintln!(
            "slow write via {}{event}: {}; {} overlapping writes of its label{first}",
            r.manager,
            r.op,
            overlapping.len()
        );
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// The five hosts, m1 initialising and every other host joining.
fn cluster(test: &str) -> Lab {
    let mut lab = Lab::new(test, &["m1", "m2", "m3", "w1", "w2"]);
    lab.start_all();
    let (wt, mt) = lab.init("m1", &[]);
    for (host, token, via) in [
        ("m2", &mt, "m1"),
        ("m3", &mt, "m2"),
        ("w1", &wt, "m1"),
        ("w2", &wt, "m3"),
    ] {
        lab.join(host, token, via);
    }
    wait_healthy(&lab, "the cluster formed");
    lab
}

/// Runs the clients while the nemesis goes through `schedule` (a round
/// per fault); returns what each round measured.
fn run_rounds(lab: &mut Lab, shared: &Shared, schedule: &[Fault], dwell_ops: usize) -> Vec<Round> {
    let mut rounds = Vec::new();
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| s.spawn(move || client(shared, id, 20_000, Duration::from_secs(1800))))
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
    let leader = wait_healthy(lab, &format!("a healthy cluster before round {round}"));
    shared.round.store(round, Ordering::SeqCst);
    let since = shared.now();
    wait_for(
        &format!("operations on round {round}'s registers"),
        Duration::from_secs(60),
        || shared.completed_since(since) >= 8,
    );
    let at = shared.now();
    let injected = inject(lab, shared, fault, &leader, round);
    let victim = injected.victim();
    let lab_ref = &*lab;
    let (ok_at, elected_at) = std::thread::scope(|s| {
        let probe = s.spawn(|| first_write_through_survivors(lab_ref, shared, victim));
        let elected =
            (victim == Some(leader.as_str())).then(|| new_leader_named(lab_ref, shared, &leader));
        (probe.join().expect("probe"), elected)
    });
    // Hold the fault while the clients get some work done under it, or
    // for at most HOLD: callers of a paused daemon wait for it, so under
    // SIGSTOP the clients can all end up waiting.
    let hold = Instant::now();
    wait_for(
        &format!("operations under {} (round {round})", fault.name()),
        HOLD + Duration::from_secs(1),
        || shared.completed_since(ok_at) >= dwell_ops || hold.elapsed() >= HOLD,
    );
    heal(lab, shared, injected);
    let since_fault = |t: u64| Duration::from_nanos(t - at);
    eprintln!(
        "round {round}: {} at {:?} (leader {leader}): new leader after {:?}, \
         write again after {:?}, held {:?} more",
        fault.name(),
        Duration::from_nanos(at),
        elected_at.map(since_fault),
        since_fault(ok_at),
        hold.elapsed(),
    );
    Round {
        fault,
        unavailable: since_fault(ok_at),
        elected: elected_at.map(since_fault),
    }
}

/// Once the cluster is healthy and the managers agree: a barrier read of
/// every register of the `rounds` rounds through the leader.
fn read_final_state(lab: &Lab, shared: &Shared, rounds: usize) {
    let leader = manager_name(&wait_healthy(lab, "a healthy cluster at the end"));
    for node in WORKERS {
        wait_for(
            &format!("every manager shows the same labels of {node}"),
            Duration::from_secs(30),
            || {
                let seen: BTreeSet<_> = MANAGERS
                    .into_iter()
                    .map(|m| labels_of(&lab.weft(m, &["node", "inspect", node])))
                    .collect();
                seen.len() == 1
            },
        );
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

/// Judges the history: returns the figures per fault and what failed.
fn judge(
    records: &[Record],
    rounds: &[Round],
    schedule: &[Fault],
    shared: &Shared,
) -> (BTreeMap<Fault, Figures>, Vec<String>) {
    let round_of: BTreeMap<String, usize> = records
        .iter()
        .map(|r| (r.op.action.key().clone(), r.round))
        .collect();
    let check = |local| {
        let (history, origin) = history(records, local);
        let verdicts = check_keys(&history, Budget::default()).expect("valid history");
        (history, origin, verdicts)
    };
    let (strict, strict_origin, strict_verdicts) = check(LocalReads::LeftOut);
    let (_, relaxed_origin, relaxed_verdicts) = check(LocalReads::StaleAllowed);
    let (_, as_is_origin, as_is_verdicts) = check(LocalReads::AsRecorded);

    let mut figures: BTreeMap<Fault, Figures> = BTreeMap::new();
    for r in rounds {
        let f = figures.entry(r.fault).or_default();
        f.rounds += 1;
        f.unavailable.push(r.unavailable);
        f.elected.extend(r.elected);
    }
    for r in records.iter().filter(|r| r.kind != Kind::FinalRead) {
        let f = figures.get_mut(&schedule[r.round]).expect("fault");
        f.operations += 1;
        if r.kind == Kind::Write {
            match r.op.outcome {
                Outcome::Ok => {
                    f.acknowledged += 1;
                    f.latencies
                        .push(Duration::from_nanos(r.op.complete_ns - r.op.invoke_ns));
                }
                Outcome::Info => f.info += 1,
                Outcome::Fail => f.fail += 1,
            }
        }
    }
    let mut problems = Vec::new();
    for r in records.iter().filter(|r| r.kind == Kind::FinalRead) {
        let Action::Read { key, value: last } = &r.op.action else {
            unreachable!("final reads are reads");
        };
        let lost = lost_writes(&strict, key, last.as_ref());
        figures.get_mut(&schedule[r.round]).expect("fault").lost += lost;
        if lost > 0 {
            problems.push(format!(
                "{key}: {lost} acknowledged writes lost (final {last:?})"
            ));
        }
    }
    for (what, origin, verdicts) in [
        ("writes and barrier reads", &strict_origin, &strict_verdicts),
        (
            "local reads (stale allowed)",
            &relaxed_origin,
            &relaxed_verdicts,
        ),
    ] {
        for (key, v) in verdicts {
            let fault = schedule[round_of[key]];
            match v {
                KeyVerdict::Linearizable => {}
                KeyVerdict::NotLinearizable(w) => {
                    figures.get_mut(&fault).expect("fault").violations += 1;
                    problems.push(format!(
                        "{what}, {}: {}",
                        fault.name(),
                        explain(w, origin, records, shared)
                    ));
                }
                KeyVerdict::Unknown { steps } => {
                    problems.push(format!("{what}: {key}: unknown after {steps} steps"))
                }
            }
        }
    }
    for (key, v) in &as_is_verdicts {
        if let KeyVerdict::NotLinearizable(w) = v {
            let fault = schedule[round_of[key]];
            figures.get_mut(&fault).expect("fault").stale_local_keys += 1;
            eprintln!(
                "local reads as they are, {}: {}",
                fault.name(),
                explain(w, &as_is_origin, records, shared)
            );
        }
    }
    (figures, problems)
}

#[test]
fn clients_see_a_linearizable_register_through_crashes_pauses_and_partitions() {
    let full = std::env::var("WEFT_FAULTS_FULL").is_ok_and(|v| v == "1");
    let (rounds_per_fault, dwell_ops) = if full { (6, 300) } else { (2, 100) };
    let started = Instant::now();
    let mut lab = cluster("nemesis");
    let shared = Shared {
        epoch: Instant::now(),
        round: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        down: Mutex::new(BTreeSet::new()),
        records: Mutex::new(Vec::new()),
        sockets: MANAGERS
            .into_iter()
            .map(|m| (m, lab.socket_path(m)))
            .collect(),
        unseen_barriers: AtomicUsize::new(0),
        events: Mutex::new(Vec::new()),
    };
    let mut schedule = vec![Fault::None];
    for _ in 0..rounds_per_fault {
        schedule.extend(Fault::ALL);
    }
    let rounds = run_rounds(&mut lab, &shared, &schedule, dwell_ops);
    read_final_state(&lab, &shared, schedule.len());

    let records = std::mem::take(&mut *shared.records.lock().expect("records"));
    let check_started = Instant::now();
    let (figures, problems) = judge(&records, &rounds, &schedule, &shared);
    let count = |k: Kind| records.iter().filter(|r| r.kind == k).count();
    eprintln!(
        "\nnemesis: {} rounds, {} operations ({} writes, {} barrier reads, {} local reads) \
         by {CLIENTS} clients in {:?}; checked in {:?}; {} barrier reads not shown by the \
         manager that acknowledged their write (kept as local reads)",
        rounds.len(),
        records.len() - count(Kind::FinalRead),
        count(Kind::Write),
        count(Kind::BarrierRead),
        count(Kind::LocalRead),
        started.elapsed(),
        check_started.elapsed(),
        shared.unseen_barriers.load(Ordering::SeqCst),
    );
    print_table(&figures);
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
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The data plane does not need the managers: a task on w1 keeps reaching
/// a service's VIP, whose one replica runs on w2, by address and by name,
/// while every manager is down, and after they come back.
#[test]
fn a_vip_flow_between_workers_keeps_working_while_every_manager_is_down() {
    let mut lab = cluster("vipnomgr");
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

    for m in MANAGERS {
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

    for m in MANAGERS {
        lab.start(m);
    }
    wait_healthy(&lab, "the managers back");
    assert!(
        answers() && resolves(),
        "the VIP after the managers came back"
    );
}
