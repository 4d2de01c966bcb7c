//! The clients' side of the nemesis: what they share with it, how an
//! operation is made through the CLI and recorded with its times and
//! outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use weft_faults::{Action, Operation, Outcome};

use crate::WORKERS;
use crate::common::WEFT;
use crate::common::disk::SmallDisk;

/// Client threads.
pub(crate) const CLIENTS: u64 = 4;
/// Label keys per worker node that are registers in one round (with the
/// round number in front): 4 registers per round.
pub(crate) const LABELS: [&str; 2] = ["a", "b"];
/// A CLI call that has not answered by then is killed and counts as `Info`
/// (a little over the managers' 8 s propose deadline: only a call to a
/// paused daemon takes longer).
pub(crate) const CALL_LIMIT: Duration = Duration::from_secs(12);

/// Messages of refusals that happen before anything is proposed: the CLI
/// could not connect to the daemon's socket at all (it adds this hint to
/// every such error, and only to those), or the control API refused before
/// `propose` (`Error::NotReady`, no manager on this node, or the node's
/// manager stopped, as on a full disk, and not restarted yet). Every other
/// failure of a write may have been proposed, so it is recorded as `Info`.
pub(crate) const REFUSED_BEFORE_PROPOSING: &[&str] = &[
    "Is the weft daemon running?",
    // The read index every call takes before it proposes anything.
    "no Raft leader to check this call against",
    "this manager is behind the Raft leader",
    "has not caught up with the cluster yet",
    "this node is not a manager",
    "but its manager is not running",
];

/// How a recorded operation was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Write,
    /// Own-label write, then a read on the same manager showing it.
    BarrierRead,
    /// A read through any manager.
    Read,
    /// A barrier read of every register at the end, through the leader.
    FinalRead,
}

pub(crate) struct Record {
    pub(crate) round: usize,
    pub(crate) kind: Kind,
    pub(crate) manager: &'static str,
    pub(crate) op: Operation<String, String>,
    /// stderr of a call that failed.
    pub(crate) error: String,
}

/// What the clients and the nemesis share.
pub(crate) struct Shared {
    pub(crate) epoch: Instant,
    pub(crate) round: AtomicUsize,
    pub(crate) stop: AtomicBool,
    /// Managers the nemesis killed: clients do not pick them (a client
    /// that did would only collect instant `Fail`s).
    pub(crate) down: Mutex<BTreeSet<&'static str>>,
    pub(crate) records: Mutex<Vec<Record>>,
    /// The managers, in order.
    pub(crate) managers: Vec<&'static str>,
    pub(crate) sockets: BTreeMap<&'static str, PathBuf>,
    /// Each manager's Raft directory, a small file system of its own.
    pub(crate) disks: BTreeMap<&'static str, SmallDisk>,
    /// Barrier reads whose own write was acknowledged by a manager that
    /// then did not show it (recorded as plain reads; each is a failure).
    pub(crate) unseen_barriers: AtomicUsize,
    /// What the nemesis did to which manager, when.
    pub(crate) events: Mutex<Vec<(u64, &'static str, &'static str)>>,
}

impl Shared {
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).expect("ns fit u64")
    }

    pub(crate) fn event(&self, manager: &'static str, what: &'static str) {
        let at = self.now();
        self.events
            .lock()
            .expect("events")
            .push((at, manager, what));
    }

    /// The last thing the nemesis did to `manager` before `at`, and how
    /// long before.
    pub(crate) fn last_event(&self, manager: &str, at: u64) -> Option<(&'static str, Duration)> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .rev()
            .find(|(t, m, _)| *m == manager && *t <= at)
            .map(|(t, _, what)| (*what, Duration::from_nanos(at - t)))
    }

    pub(crate) fn record(&self, r: Record) {
        self.records.lock().expect("records").push(r);
    }

    /// Operations invoked at or after `since` that have completed.
    pub(crate) fn completed_since(&self, since: u64) -> usize {
        self.records
            .lock()
            .expect("records")
            .iter()
            .filter(|r| r.op.invoke_ns >= since)
            .count()
    }
}

pub(crate) fn register(round: usize, node: &str, label: &str) -> (String, String) {
    let label = format!("r{round}{label}");
    (format!("{node}/{label}"), label)
}

/// How a CLI call ended.
pub(crate) enum Answer {
    Exited(Output),
    TimedOut,
}

impl Answer {
    pub(crate) fn ok_stdout(&self) -> Option<String> {
        match self {
            Answer::Exited(o) if o.status.success() => {
                Some(String::from_utf8_lossy(&o.stdout).into_owned())
            }
            _ => None,
        }
    }

    pub(crate) fn error(&self) -> String {
        match self {
            Answer::Exited(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Answer::TimedOut => format!("no answer within {CALL_LIMIT:?}"),
        }
    }
}

/// `weft ARGS` against the daemon socket `socket`, killed after
/// [`CALL_LIMIT`] (a paused daemon holds its callers until it resumes).
pub(crate) fn call(socket: &Path, args: &[&str]) -> Answer {
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
pub(crate) fn labels_of(inspect: &str) -> BTreeMap<String, String> {
    let v: serde_json::Value = serde_json::from_str(inspect).expect("inspect json");
    serde_json::from_value(v[0]["Labels"].clone()).expect("labels")
}

/// A small generator (SplitMix64), seeded per client: each client draws
/// the same mix of operations every run (the timing still differs).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// One client: writes (half), barrier reads and plain reads (a quarter
/// each) on the current round's registers through a random live manager,
/// until told to stop or its own bounds are reached.
pub(crate) fn client(shared: &Shared, id: u64, max_ops: usize, max_time: Duration) {
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
            shared
                .managers
                .iter()
                .copied()
                .filter(|m| !down.contains(m))
                .collect()
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
                        (Kind::Read, action, times, Outcome::Ok, String::new())
                    }
                    Err(e) => (Kind::Read, Action::read(key, None), times, Outcome::Info, e),
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
pub(crate) type Made = (Kind, Action<String, String>, (u64, u64), Outcome, String);

/// A node's labels as seen through one manager's socket.
pub(crate) struct Target<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) socket: &'a Path,
    pub(crate) node: &'static str,
}

impl Target<'_> {
    /// Runs `f` and returns its result with when it began and ended.
    pub(crate) fn timed<T>(&self, f: impl FnOnce() -> T) -> ((u64, u64), T) {
        let invoke = self.shared.now();
        let out = f();
        ((invoke, self.shared.now()), out)
    }

    pub(crate) fn set_label(&self, key: &str, value: &str) -> Answer {
        let kv = format!("{key}={value}");
        call(
            self.socket,
            &["node", "update", "--label-add", &kv, self.node],
        )
    }

    pub(crate) fn labels(&self) -> Result<BTreeMap<String, String>, String> {
        let answer = call(self.socket, &["node", "inspect", self.node]);
        answer
            .ok_stdout()
            .map(|s| labels_of(&s))
            .ok_or_else(|| answer.error())
    }

    /// Writes the client's own probe label, then reads where it was
    /// written. When the read does not show the probe (the manager
    /// acknowledged a write it had not applied, which fails the run), the
    /// read is kept as a plain read, timed from when it was made.
    pub(crate) fn barrier_read(&self, id: u64, n: usize, key: String, label: &str) -> Made {
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
                (Kind::Read, action, read, Outcome::Ok, error)
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
