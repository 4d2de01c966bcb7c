//! The checker's entry points: split the history by key, prepare each key's
//! operations for the search, and turn what the search found into a verdict.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;

use crate::history::{Action, HistoryError, Operation, Outcome, validate};
use crate::search::{Found, SearchOp, Step, search};
use crate::witness::{Witness, minimize};

/// How much work the checker may do before it answers "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Search steps (entries visited) per key. Memory grows with the steps
    /// taken: one bit per operation of the key is remembered per step that
    /// linearizes an operation.
    pub steps_per_key: u64,
    /// Search steps spent, in total per failing key, on shrinking its
    /// witness; when they run out the witness is returned as far as it got
    /// (and says it is not minimal).
    pub shrink_steps: u64,
}

impl Default for Budget {
    /// A million steps per key: a linearizable key of a few thousand
    /// operations takes a few times its size, so this is for the hard cases
    /// (long stretches of many concurrent writes).
    fn default() -> Self {
        Budget {
            steps_per_key: 1_000_000,
            shrink_steps: 5_000_000,
        }
    }
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict<K, V> {
    /// Some order of the operations, each taking effect at one instant
    /// between its invocation and its completion, explains every read.
    Linearizable,
    /// No such order exists; the witness shows operations that cannot be
    /// ordered.
    NotLinearizable(Witness<K, V>),
    /// The budget ran out before the search could tell.
    Unknown {
        /// Steps spent.
        steps: u64,
    },
}

/// The verdict on a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<K, V> {
    /// Every key is linearizable, so the history is.
    Linearizable,
    /// A key is not (the first such key in key order).
    NotLinearizable(Witness<K, V>),
    /// No key failed, but the budget ran out on this one (the first in key
    /// order).
    Unknown {
        /// The key the search gave up on.
        key: K,
        /// Steps spent on it.
        steps: u64,
    },
}

impl<K, V> Verdict<K, V> {
    /// Whether the history was found linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Checks `history` key by key and returns a verdict per key.
pub fn check_keys<K, V>(
    history: &[Operation<K, V>],
    budget: Budget,
) -> Result<BTreeMap<K, KeyVerdict<K, V>>, HistoryError>
where
    K: Ord + Clone,
    V: Eq + Hash + Clone,
{
    validate(history)?;
    let mut by_key: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.action.key()).or_default().push(i);
    }
    Ok(by_key
        .into_iter()
        .map(|(key, indices)| {
            let Judged { found, origin, .. } = judge(history, &indices, budget.steps_per_key);
            let verdict = match found {
                Found::Linearizable => KeyVerdict::Linearizable,
                Found::Exhausted { steps } => KeyVerdict::Unknown { steps },
                Found::None { stuck } => {
                    KeyVerdict::NotLinearizable(minimize(history, &indices, origin[stuck], budget))
                }
            };
            (key.clone(), verdict)
        })
        .collect())
}

/// Checks `history`: linearizable when every key is.
pub fn check<K, V>(
    history: &[Operation<K, V>],
    budget: Budget,
) -> Result<Verdict<K, V>, HistoryError>
where
    K: Ord + Clone,
    V: Eq + Hash + Clone,
{
    let mut unknown = None;
    for (key, verdict) in check_keys(history, budget)? {
        match verdict {
            KeyVerdict::Linearizable => {}
            KeyVerdict::NotLinearizable(w) => return Ok(Verdict::NotLinearizable(w)),
            KeyVerdict::Unknown { steps } => {
                unknown.get_or_insert(Verdict::Unknown { key, steps });
            }
        }
    }
    Ok(unknown.unwrap_or(Verdict::Linearizable))
}

/// What a search of one key's operations found.
pub(crate) struct Judged {
    /// The result.
    pub found: Found,
    /// Steps taken.
    pub steps: u64,
    /// Per operation searched, its index in the history (the operations
    /// left out by [`prepare`] are not there).
    pub origin: Vec<usize>,
}

/// Searches the operations `indices` of `history` (all on one key) with at
/// most `steps` steps.
pub(crate) fn judge<K, V>(history: &[Operation<K, V>], indices: &[usize], steps: u64) -> Judged
where
    V: Eq + Hash,
{
    let (ops, origin) = prepare(history, indices);
    let (found, steps) = search(&ops, steps);
    Judged {
        found,
        steps,
        origin,
    }
}

/// Turns one key's operations into search operations: values interned,
/// `Fail` operations and `Info` reads left out (they took no effect, or
/// tell nothing), `Info` writes given an open interval. An `Info` write
/// whose value no read returned is left out too: if a linearization places
/// it, no read falls between it and the next write (that read would return
/// its value), so the same order without it explains every read; and
/// leaving it out is allowed, since it may never have happened. Each such
/// write would otherwise double the orders to try.
pub(crate) fn prepare<K, V>(
    history: &[Operation<K, V>],
    indices: &[usize],
) -> (Vec<SearchOp>, Vec<usize>)
where
    V: Eq + Hash,
{
    let mut values: HashMap<&V, u32> = HashMap::new();
    let mut intern = |v| intern(&mut values, v);
    let mut observed = HashSet::new();
    for &i in indices {
        if let (Action::Read { value: Some(v), .. }, Outcome::Ok) =
            (&history[i].action, history[i].outcome)
        {
            observed.insert(intern(v));
        }
    }
    let mut ops = Vec::with_capacity(indices.len());
    let mut origin = Vec::with_capacity(indices.len());
    for &i in indices {
        let op = &history[i];
        let prepared = match (&op.action, op.outcome) {
            (_, Outcome::Fail) | (Action::Read { .. }, Outcome::Info) => None,
            (Action::Write { value, .. }, Outcome::Info) => {
                let v = intern(value);
                observed.contains(&v).then_some(SearchOp {
                    step: Step::Write(v),
                    call: op.invoke_ns,
                    ret: None,
                })
            }
            (Action::Write { value, .. }, Outcome::Ok) => Some(SearchOp {
                step: Step::Write(intern(value)),
                call: op.invoke_ns,
                ret: Some(op.complete_ns),
            }),
            (Action::Read { value, .. }, Outcome::Ok) => Some(SearchOp {
                step: Step::Read(value.as_ref().map(&mut intern)),
                call: op.invoke_ns,
                ret: Some(op.complete_ns),
            }),
        };
        if let Some(p) = prepared {
            ops.push(p);
            origin.push(i);
        }
    }
    (ops, origin)
}

/// The number of `v` among one key's values (new values get the next one).
fn intern<'a, V: Eq + Hash>(values: &mut HashMap<&'a V, u32>, v: &'a V) -> u32 {
    let next = values.len() as u32;
    *values.entry(v).or_insert(next)
}
