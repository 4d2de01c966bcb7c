//! Judging a nemesis run: the history given to `weft-faults` (every write
//! and read strictly), acknowledged writes lost, and the per-fault figures
//! printed as a table.

use std::collections::BTreeMap;
use std::time::Duration;

use weft_faults::{Action, Budget, KeyVerdict, Operation, Outcome, Witness, check_keys};

use crate::client::{Kind, Record, Shared};
use crate::inject::Fault;

/// What the nemesis did in one round.
pub(crate) struct Round {
    pub(crate) fault: Fault,
    /// From the fault to the first write acknowledged through a manager
    /// it did not hit; for a fault that leaves no quorum, from the start
    /// of the heal to the first write acknowledged anywhere.
    pub(crate) unavailable: Duration,
    /// `unavailable` counts from the heal.
    pub(crate) from_heal: bool,
    /// From the fault to a manager it did not hit naming another leader
    /// (faults that hit the leader only).
    pub(crate) elected: Option<Duration>,
}

/// Every operation of `records` as a history; with, per operation, the
/// index of its record.
pub(crate) fn history(records: &[Record]) -> (Vec<Operation<String, String>>, Vec<usize>) {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.op.clone(), i))
        .unzip()
}

/// A witness with, per operation, how it was made, through which manager,
/// and the last thing the nemesis did to that manager before.
pub(crate) fn explain(
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
pub(crate) struct Figures {
    pub(crate) rounds: usize,
    pub(crate) operations: usize,
    pub(crate) acknowledged: usize,
    pub(crate) info: usize,
    pub(crate) fail: usize,
    pub(crate) lost: usize,
    pub(crate) violations: usize,
    /// How long acknowledged writes took.
    pub(crate) latencies: Vec<Duration>,
    pub(crate) unavailable: Vec<Duration>,
    /// Unavailability counts from the heal (no quorum under the fault).
    pub(crate) from_heal: bool,
    pub(crate) elected: Vec<Duration>,
}

/// Acknowledged writes of `key` that are neither its final value nor
/// superseded: the write that left the final value finished before the
/// lost one began, so the lost one should have come after it.
pub(crate) fn lost_writes(
    history: &[Operation<String, String>],
    key: &str,
    last: Option<&String>,
) -> usize {
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

/// The table of `figures`, for `managers` managers; an unavailability
/// counted from the heal is marked `(heal)`.
pub(crate) fn print_table(managers: usize, figures: &BTreeMap<Fault, Figures>) {
    eprintln!("{managers} managers:");
    eprintln!(
        "{:<19} {:>6} {:>5} {:>5} {:>4} {:>4} {:>4} {:>10} {:>15} {:>22} {:>14}",
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
    );
    let p50_max = |v: &[Duration]| match v.iter().max() {
        Some(max) => format!("{:.2}/{:.2}s", median(v).as_secs_f64(), max.as_secs_f64()),
        None => "-".to_string(),
    };
    for (fault, f) in figures {
        let from = if f.from_heal { " (heal)" } else { "" };
        eprintln!(
            "{:<19} {:>6} {:>5} {:>5} {:>4} {:>4} {:>4} {:>10} {:>15} {:>22} {:>14}",
            fault.name(),
            f.rounds,
            f.operations,
            f.acknowledged,
            f.info,
            f.fail,
            f.lost,
            f.violations,
            p50_max(&f.latencies),
            format!("{}{from}", p50_max(&f.unavailable)),
            p50_max(&f.elected),
        );
    }
}

/// Acknowledged writes that took longer than the managers' 5 s
/// read-after-write wait (`UpdateNode` answers once the asked manager shows
/// the value written, or after 5 s as it stands), with what else wrote
/// their label meanwhile and what the nemesis last did to their manager.
pub(crate) fn print_slow_writes(records: &[Record], shared: &Shared) {
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

pub(crate) fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// Judges the history: returns the figures per fault and what failed.
pub(crate) fn judge(
    records: &[Record],
    rounds: &[Round],
    schedule: &[Fault],
    shared: &Shared,
) -> (BTreeMap<Fault, Figures>, Vec<String>) {
    let round_of: BTreeMap<String, usize> = records
        .iter()
        .map(|r| (r.op.action.key().clone(), r.round))
        .collect();
    let (strict, strict_origin) = history(records);
    let strict_verdicts = check_keys(&strict, Budget::default()).expect("valid history");

    let mut figures: BTreeMap<Fault, Figures> = BTreeMap::new();
    for r in rounds {
        let f = figures.entry(r.fault).or_default();
        f.rounds += 1;
        f.unavailable.push(r.unavailable);
        f.from_heal |= r.from_heal;
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
    for (key, v) in &strict_verdicts {
        let fault = schedule[round_of[key]];
        match v {
            KeyVerdict::Linearizable => {}
            KeyVerdict::NotLinearizable(w) => {
                figures.get_mut(&fault).expect("fault").violations += 1;
                problems.push(format!(
                    "{}: {}",
                    fault.name(),
                    explain(w, &strict_origin, records, shared)
                ));
            }
            KeyVerdict::Unknown { steps } => {
                problems.push(format!("{key}: unknown after {steps} steps"))
            }
        }
    }
    (figures, problems)
}
