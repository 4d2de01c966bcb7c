//! Witnesses: the operations of a failing key that cannot be ordered,
//! shrunk until every one of them is needed.
//!
//! Shrinking is delta debugging (Zeller's ddmin, one-minimal form): drop a
//! chunk of operations, keep the smaller set if it still fails, halve the
//! chunks when none can go, stop when no single operation can. A write is
//! dropped together with the reads of its value; otherwise a stale read
//! would shrink to "a read of a value never written", which is true of the
//! smaller set but not what went wrong. Before that, the operations invoked
//! after the one the search got stuck on are cut in one go (with the reads
//! of what they wrote), kept when the rest still fails: usually most of a
//! long history.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;

use crate::check::{Budget, judge, prepare};
use crate::history::{Action, Operation, Outcome};
use crate::search::Found;

/// Operations on one key that no order can explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness<K, V> {
    /// The register.
    pub key: K,
    /// The operations, with their index in the history, by invocation time.
    pub operations: Vec<(usize, Operation<K, V>)>,
    /// Whether shrinking finished: dropping any one operation (a write
    /// with the reads of its value) would make the rest linearizable. False
    /// when the shrink budget ran out first.
    pub minimal: bool,
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Display for Witness<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?}: these {} operations cannot be ordered{}:",
            self.key,
            self.operations.len(),
            if self.minimal {
                ""
            } else {
                " (not shrunk to the minimum)"
            }
        )?;
        for (i, op) in &self.operations {
            writeln!(f, "  #{i} {op}")?;
        }
        Ok(())
    }
}

/// Shrinks the failing key's operations `indices` of `history`; `stuck` is
/// the operation the search could not linearize at its deepest point.
pub(crate) fn minimize<K, V>(
    history: &[Operation<K, V>],
    indices: &[usize],
    stuck: usize,
    budget: Budget,
) -> Witness<K, V>
where
    K: Clone,
    V: Eq + Hash + Clone,
{
    let mut shrink = Shrink {
        history,
        budget,
        spent: 0,
    };
    // Only what the search looks at: `Fail` operations and the like are noise.
    let key = history[stuck].action.key().clone();
    let mut current = prepare(history, indices).1;
    let mut decided = true;
    if history[stuck].outcome == Outcome::Ok {
        let cut = history[stuck].complete_ns;
        let later: Vec<usize> = current
            .iter()
            .copied()
            .filter(|&i| history[i].invoke_ns > cut)
            .collect();
        let before = without_writes_and_their_reads(history, &current, &later);
        if before.len() < current.len() && shrink.fails(&before) == Some(true) {
            current = before;
        }
    }
    let mut chunk = (current.len() / 2).max(1);
    loop {
        let mut dropped_any = false;
        let mut start = 0;
        while start < current.len() {
            let end = (start + chunk).min(current.len());
            let rest = without_writes_and_their_reads(history, &current, &current[start..end]);
            let still_fails = if rest.is_empty() {
                Some(false)
            } else {
                shrink.fails(&rest)
            };
            match still_fails {
                Some(true) => {
                    current = rest;
                    dropped_any = true;
                }
                Some(false) => start = end,
                None if shrink.spent >= budget.shrink_steps => {
                    return witness(history, key, current, false);
                }
                None => {
                    decided = false;
                    start = end;
                }
            }
        }
        if chunk > 1 {
            chunk = (chunk / 2).max(1);
        } else if !dropped_any {
            break;
        }
    }
    witness(history, key, current, decided)
}

struct Shrink<'a, K, V> {
    history: &'a [Operation<K, V>],
    budget: Budget,
    spent: u64,
}

impl<K, V: Eq + Hash> Shrink<'_, K, V> {
    /// Whether the operations `subset` still fail; `None` when the budget
    /// ran out before the search could tell.
    fn fails(&mut self, subset: &[usize]) -> Option<bool> {
        let left = self.budget.shrink_steps.saturating_sub(self.spent);
        if left == 0 {
            return None;
        }
        let judged = judge(self.history, subset, left.min(self.budget.steps_per_key));
        self.spent += judged.steps;
        match judged.found {
            Found::None { .. } => Some(true),
            Found::Linearizable => Some(false),
            Found::Exhausted { .. } => None,
        }
    }
}

/// `current` without the operations `drop`, and without the reads that
/// returned a value a write in `drop` wrote, unless another write of that
/// value stays (a read must not become a read of a value never written).
fn without_writes_and_their_reads<K, V: Eq>(
    history: &[Operation<K, V>],
    current: &[usize],
    drop: &[usize],
) -> Vec<usize> {
    let dropped: HashSet<usize> = drop.iter().copied().collect();
    let written = |keep: bool| -> Vec<&V> {
        current
            .iter()
            .filter(|i| dropped.contains(i) != keep)
            .filter_map(|&i| match &history[i].action {
                Action::Write { value, .. } => Some(value),
                Action::Read { .. } => None,
            })
            .collect()
    };
    let (gone, kept) = (written(false), written(true));
    current
        .iter()
        .copied()
        .filter(|i| !dropped.contains(i))
        .filter(|&i| match &history[i].action {
            Action::Read { value: Some(v), .. } => !gone.contains(&v) || kept.contains(&v),
            _ => true,
        })
        .collect()
}

fn witness<K: Clone, V: Clone>(
    history: &[Operation<K, V>],
    key: K,
    mut indices: Vec<usize>,
    minimal: bool,
) -> Witness<K, V> {
    indices.sort_by_key(|&i| (history[i].invoke_ns, i));
    Witness {
        key,
        operations: indices
            .into_iter()
            .map(|i| (i, history[i].clone()))
            .collect(),
        minimal,
    }
}
