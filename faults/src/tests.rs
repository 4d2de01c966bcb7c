//! Known-good and known-bad histories, and a large simulated one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    Action, Budget, HistoryError, KeyVerdict, Operation, Outcome, Verdict, check, check_keys,
};

type Op = Operation<&'static str, u64>;

fn w(p: u64, v: u64, invoke: u64, complete: u64) -> Op {
    Operation::new(p, Action::write("x", v), invoke, complete, Outcome::Ok)
}

fn r(p: u64, v: Option<u64>, invoke: u64, complete: u64) -> Op {
    Operation::new(p, Action::read("x", v), invoke, complete, Outcome::Ok)
}

fn with(op: Op, outcome: Outcome) -> Op {
    Operation { outcome, ..op }
}

fn verdict(history: &[Op]) -> Verdict<&'static str, u64> {
    check(history, Budget::default()).expect("valid history")
}

/// The witness's operations, as indices into the history.
fn witness_of(history: &[Op]) -> Vec<usize> {
    match verdict(history) {
        Verdict::NotLinearizable(wit) => {
            assert!(wit.minimal, "{wit}");
            wit.operations.iter().map(|(i, _)| *i).collect()
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    assert!(verdict(&[]).is_linearizable());
    let h = [
        r(1, None, 0, 1),
        w(1, 1, 2, 3),
        r(2, Some(1), 4, 5),
        w(2, 2, 6, 7),
        r(1, Some(2), 8, 9),
    ];
    assert!(verdict(&h).is_linearizable());
}

#[test]
fn stale_read_after_a_completed_write_is_caught() {
    // w2 completed before the read was invoked: the read must see it.
    let h = [w(1, 1, 0, 10), w(1, 2, 20, 30), r(2, Some(1), 40, 50)];
    assert_eq!(witness_of(&h), vec![0, 1, 2]);
}

#[test]
fn read_of_a_value_never_written_is_caught() {
    let h = [w(1, 1, 0, 10), r(2, Some(7), 20, 30), r(2, Some(1), 40, 50)];
    assert_eq!(witness_of(&h), vec![1]);
}

#[test]
fn concurrent_writes_may_be_read_in_either_order() {
    for (first, last) in [(1, 2), (2, 1)] {
        let h = [
            w(1, 1, 0, 100),
            w(2, 2, 10, 90),
            r(3, Some(first), 20, 30),
            r(3, Some(last), 110, 120),
        ];
        assert!(verdict(&h).is_linearizable(), "{first} then {last}");
    }
    // But once both are read in one order, not the other way round later.
    let h = [
        w(1, 1, 0, 100),
        w(2, 2, 10, 90),
        r(3, Some(1), 20, 30),
        r(3, Some(2), 40, 50),
        r(3, Some(1), 110, 120),
    ];
    assert!(!verdict(&h).is_linearizable());
}

#[test]
fn info_write_that_shows_up_later_is_linearizable() {
    // The client gave up at 20; the write took effect afterwards.
    let h = [
        w(1, 1, 0, 10),
        with(w(2, 2, 15, 20), Outcome::Info),
        r(3, Some(1), 30, 40),
        r(3, Some(2), 500, 510),
        r(1, Some(2), 600, 610),
    ];
    assert!(verdict(&h).is_linearizable());
    // Or never: no read saw it.
    let h = [
        w(1, 1, 0, 10),
        with(w(2, 2, 15, 20), Outcome::Info),
        r(3, Some(1), 500, 510),
    ];
    assert!(verdict(&h).is_linearizable());
}

#[test]
fn info_write_read_before_it_was_invoked_is_caught() {
    let h = [
        w(1, 1, 0, 10),
        r(3, Some(2), 20, 30),
        with(w(2, 2, 40, 50), Outcome::Info),
    ];
    assert_eq!(witness_of(&h), vec![1, 2]);
}

#[test]
fn failed_write_must_not_be_seen() {
    let h = [
        w(1, 1, 0, 10),
        with(w(2, 2, 15, 20), Outcome::Fail),
        r(3, Some(2), 30, 40),
    ];
    assert_eq!(witness_of(&h), vec![2]);
}

#[test]
fn info_read_tells_nothing() {
    let h = [w(1, 1, 0, 10), with(r(2, Some(9), 20, 30), Outcome::Info)];
    assert!(verdict(&h).is_linearizable());
}

#[test]
fn reads_going_back_in_time_are_caught() {
    let h = [
        w(1, 1, 0, 10),
        w(1, 2, 20, 30),
        w(1, 3, 40, 100),
        r(2, Some(3), 50, 60),
        r(3, Some(2), 70, 80),
        r(2, Some(3), 110, 120),
    ];
    // Reading 3 then 2: the write of 2 finished before 3's began, so once
    // 3 was read, 2 is gone for good. The first write is not needed.
    assert_eq!(witness_of(&h), vec![1, 2, 3, 4]);
}

#[test]
fn many_keys_are_judged_apart_and_the_bad_one_is_named() {
    let mut h: Vec<Operation<String, u64>> = Vec::new();
    for k in 0..50u64 {
        let key = format!("k{k}");
        let t = k * 1000;
        h.push(Operation::new(
            1,
            Action::write(key.clone(), k),
            t,
            t + 10,
            Outcome::Ok,
        ));
        h.push(Operation::new(
            2,
            Action::write(key.clone(), k + 100),
            t + 5,
            t + 15,
            Outcome::Ok,
        ));
        h.push(Operation::new(
            3,
            Action::read(key.clone(), Some(k + 100)),
            t + 20,
            t + 30,
            Outcome::Ok,
        ));
    }
    assert!(check(&h, Budget::default()).unwrap().is_linearizable());
    // k17: a read after both writes sees the first one again, after the
    // second was read.
    h.push(Operation::new(
        3,
        Action::read("k17".into(), Some(17)),
        17_040,
        17_050,
        Outcome::Ok,
    ));
    let keys = check_keys(&h, Budget::default()).unwrap();
    assert_eq!(keys.len(), 50);
    for (key, v) in &keys {
        assert_eq!(
            matches!(v, KeyVerdict::NotLinearizable(_)),
            key == "k17",
            "{key}: {v:?}"
        );
    }
    match check(&h, Budget::default()).unwrap() {
        Verdict::NotLinearizable(wit) => assert_eq!(wit.key, "k17", "{wit}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn operation_completing_before_its_invocation_is_refused() {
    let h = [w(1, 1, 0, 10), r(2, Some(1), 30, 20)];
    assert_eq!(
        check(&h, Budget::default()),
        Err(HistoryError::CompletesBeforeInvoke {
            index: 1,
            invoke_ns: 30,
            complete_ns: 20
        })
    );
}

#[test]
fn search_that_runs_out_of_budget_says_unknown() {
    // Twenty overlapping writes, then a read of a value none wrote: a
    // proof needs every subset of the writes; the budget is far smaller.
    let mut h: Vec<Op> = (0..20).map(|v| w(v, v, v, 1000 + v)).collect();
    h.push(r(99, Some(7), 10, 20));
    h.push(r(99, Some(5), 30, 40));
    h.push(r(99, Some(12345), 2000, 2010));
    let budget = Budget {
        steps_per_key: 10_000,
        shrink_steps: 10_000,
    };
    assert_eq!(
        check(&h, budget).unwrap(),
        Verdict::Unknown {
            key: "x",
            steps: 10_000
        }
    );
}

/// A history of `processes` sequential clients on `keys` registers,
/// simulated against one sequential register per key: every operation
/// takes effect at a random instant inside its interval (an `Info` write
/// maybe long after the client gave up, or never; a `Fail` write never),
/// and reads return what the register held then. Linearizable by
/// construction.
fn simulated(seed: u64, keys: usize, processes: u64, per_process: usize) -> Vec<Op> {
    const KEYS: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut history = Vec::new();
    // (instant it takes effect, history index)
    let mut effects: Vec<(u64, usize)> = Vec::new();
    let mut next_value = 0u64;
    for p in 0..processes {
        let mut t = rng.gen_range(0..1000);
        for _ in 0..per_process {
            let key = KEYS[rng.gen_range(0..keys)];
            let invoke = t + rng.gen_range(0..50);
            // A wide spread of windows: most short, some long.
            let width = if rng.gen_bool(0.1) { 5_000 } else { 300 };
            let at = invoke + rng.gen_range(1..width);
            let complete = at + rng.gen_range(1..width);
            // Distinct instants (ties broken by the process number).
            let at = at * 64 + p;
            let (invoke, complete) = (invoke * 64, complete * 64 + 63);
            t = complete / 64 + 1;
            let i = history.len();
            if rng.gen_bool(0.5) {
                next_value += 1;
                let outcome = match rng.gen_range(0..100) {
                    0..4 => Outcome::Info,
                    4..7 => Outcome::Fail,
                    _ => Outcome::Ok,
                };
                match outcome {
                    Outcome::Ok => effects.push((at, i)),
                    Outcome::Info if rng.gen_bool(0.5) => {
                        effects.push((at + rng.gen_range(0..20_000) * 64, i))
                    }
                    _ => {}
                }
                history.push(Operation::new(
                    p,
                    Action::write(key, next_value),
                    invoke,
                    complete,
                    outcome,
                ));
            } else {
                effects.push((at, i));
                history.push(Operation::new(
                    p,
                    Action::read(key, None),
                    invoke,
                    complete,
                    Outcome::Ok,
                ));
            }
        }
    }
    effects.sort_unstable();
    let mut registers: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, i) in effects {
        match &mut history[i].action {
            Action::Write { key, value } => {
                registers.insert(key, *value);
            }
            Action::Read { key, value } => *value = registers.get(key).copied(),
        }
    }
    history
}

/// A read that, given another value, is stale for sure: some write `a`
/// of its key finished before another write `b` began, and `b` finished
/// before the read began, so reading `a`'s value cannot be explained.
/// Returns (the read's index, `a`'s value).
fn staleable_read(h: &[Op]) -> (usize, u64) {
    for (ri, read) in h.iter().enumerate().rev() {
        let Action::Read { key, .. } = read.action else {
            continue;
        };
        let writes: Vec<(&Op, u64)> = h
            .iter()
            .filter_map(|o| match (o.outcome, &o.action) {
                (Outcome::Ok, Action::Write { key: k, value }) if *k == key => Some((o, *value)),
                _ => None,
            })
            .collect();
        let Some(&(a, stale)) = writes.iter().min_by_key(|(o, _)| o.complete_ns) else {
            continue;
        };
        if writes
            .iter()
            .any(|(b, _)| b.invoke_ns > a.complete_ns && b.complete_ns < read.invoke_ns)
        {
            return (ri, stale);
        }
    }
    panic!("no read to corrupt");
}

#[test]
fn large_simulated_history_is_linearizable_quickly_and_one_stale_read_is_caught() {
    let mut h = simulated(13, 10, 8, 2500);
    assert_eq!(h.len(), 20_000);
    let started = Instant::now();
    let v = verdict(&h);
    let took = started.elapsed();
    assert!(v.is_linearizable(), "{v:?}");
    eprintln!("20 000 operations on 10 keys, 8 clients: linearizable in {took:?}");
    assert!(took < Duration::from_secs(10), "too slow: {took:?}");

    let (ri, stale) = staleable_read(&h);
    if let Action::Read { value, .. } = &mut h[ri].action {
        *value = Some(stale);
    }
    let started = Instant::now();
    match verdict(&h) {
        Verdict::NotLinearizable(wit) => {
            eprintln!("corrupted read caught in {:?}:\n{wit}", started.elapsed());
            assert_eq!(&wit.key, h[ri].action.key());
            assert!(wit.operations.iter().any(|(i, _)| *i == ri), "{wit}");
            assert!(wit.operations.len() <= 4, "{wit}");
        }
        other => panic!("corruption not caught: {other:?}"),
    }
}

#[test]
fn simulated_histories_of_many_seeds_are_linearizable() {
    for seed in 0..40 {
        let h = simulated(seed, 3, 6, 200);
        let v = verdict(&h);
        assert!(v.is_linearizable(), "seed {seed}: {v:?}");
    }
}
