//! The search for one register: Wing & Gong's algorithm with Lowe's
//! memoization (the shape of Porcupine's `checkSingle`).
//!
//! The operations' calls and returns are put in one time-ordered list:
//!
//! ```text
//!  head ─▶ call w1 ─▶ call r1 ─▶ ret w1 ─▶ call w2 ─▶ ret r1 ─▶ ret w2 ─▶ (end)
//! ```
//!
//! Walking from the head, a call whose operation the register accepts in
//! the current state is *linearized*: its call and return entries are
//! unlinked (dancing links), the state advances and the walk restarts at
//! the head. Reaching a return entry means that operation had to take
//! effect by now but could not: undo the last choice (relink, restore the
//! state) and try the next call after it. An empty list is a linearization;
//! an empty undo stack at a return entry is a proof there is none.
//!
//! Two prunings keep it fast:
//! - *Memoization*: a (set of linearized operations, state) pair seen before
//!   led nowhere the first time (success ends the search), so it is skipped.
//!   The set is hashed incrementally (Zobrist: one random word per
//!   operation, XORed in and out) and compared in full on a hash match.
//! - *Reads first*: a read whose value is the current state is linearized at
//!   once and never undone in favour of another order. That loses nothing:
//!   every operation that had to precede the read is already linearized
//!   (their returns come before the read's call in the list, and the walk
//!   only passes calls), and a read does not change the state, so any
//!   linearization from here can be rewritten to take the read first. When
//!   such a read is undone, the choice before it is undone too.

use std::collections::HashMap;

/// A value, interned per key (equal values get equal numbers).
pub(crate) type Value = u32;

/// What a prepared operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Set the register.
    Write(Value),
    /// The register held this (`None`: never written).
    Read(Option<Value>),
}

/// One operation as the search sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SearchOp {
    /// What it does.
    pub step: Step,
    /// When it was invoked.
    pub call: u64,
    /// When it completed; `None` for an operation that may take effect at
    /// any time after its call (an `Info` write).
    pub ret: Option<u64>,
}

/// How the search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// A linearization exists.
    Linearizable,
    /// None exists. `stuck` is the operation (an index into the input)
    /// that could not be linearized at the deepest point the search reached.
    None { stuck: usize },
    /// The step budget ran out first.
    Exhausted { steps: u64 },
}

/// A configuration of the search: the operations linearized (a bit each)
/// and the register's state after them.
type Config = (Box<[u64]>, Option<Value>);

/// Marks the end of the entry list.
const END: usize = usize::MAX;

/// Searches for a linearization of `ops` (one register, initially
/// unwritten) in at most `budget` steps; returns what it found and the
/// steps it took.
pub(crate) fn search(ops: &[SearchOp], budget: u64) -> (Found, u64) {
    if ops.is_empty() {
        return (Found::Linearizable, 0);
    }
    Search::new(ops).run(budget)
}

struct Search<'a> {
    ops: &'a [SearchOp],
    /// Per entry: its operation and whether it is the call (else the return).
    entry_op: Vec<usize>,
    entry_is_call: Vec<bool>,
    /// Per operation: its return entry.
    ret_entry: Vec<usize>,
    /// The doubly linked list; index `head` is the sentinel.
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    linearized: Vec<u64>,
    hash: u64,
    zobrist: Vec<u64>,
    state: Option<Value>,
    /// (call entry linearized, state before it).
    undo: Vec<(usize, Option<Value>)>,
    /// Configurations tried, by hash.
    seen: HashMap<u64, Vec<Config>>,
}

impl<'a> Search<'a> {
    /// Needs at least one operation.
    fn new(ops: &'a [SearchOp]) -> Self {
        // (time, return?, op): calls sort before returns at the same
        // instant, so touching intervals count as concurrent (the lenient
        // reading of a clock tie). An open return sorts after everything.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            events.push((op.ret.unwrap_or(u64::MAX), true, i));
        }
        events.sort_unstable();
        let n = events.len();
        let head = n;
        let mut ret_entry = vec![0; ops.len()];
        for (e, &(_, is_ret, op)) in events.iter().enumerate() {
            if is_ret {
                ret_entry[op] = e;
            }
        }
        let mut next: Vec<usize> = (1..=n).collect();
        next[n - 1] = END;
        next.push(0);
        let mut prev: Vec<usize> = (0..n).map(|e| e.wrapping_sub(1)).collect();
        prev[0] = head;
        prev.push(END);
        Search {
            ops,
            entry_op: events.iter().map(|&(_, _, op)| op).collect(),
            entry_is_call: events.iter().map(|&(_, is_ret, _)| !is_ret).collect(),
            ret_entry,
            next,
            prev,
            head,
            linearized: vec![0; ops.len().div_ceil(64)],
            hash: 0,
            zobrist: (0..ops.len() as u64).map(splitmix64).collect(),
            state: None,
            undo: Vec::new(),
            seen: HashMap::new(),
        }
    }

    fn run(mut self, budget: u64) -> (Found, u64) {
        let mut steps = 0u64;
        let mut deepest = 0usize;
        let mut stuck = 0usize;
        let mut entry = self.next[self.head];
        while self.next[self.head] != END {
            steps += 1;
            if steps > budget {
                return (Found::Exhausted { steps: budget }, budget);
            }
            let op = self.entry_op[entry];
            if !self.entry_is_call[entry] {
                // This operation had to take effect by now and could not.
                if self.undo.len() >= deepest {
                    deepest = self.undo.len();
                    stuck = op;
                }
                match self.backtrack() {
                    Some(e) => entry = e,
                    None => return (Found::None { stuck }, steps),
                }
                continue;
            }
            let Some(after) = apply(self.state, self.ops[op].step) else {
                entry = self.next[entry];
                continue;
            };
            self.toggle(op);
            if self.remember(after) {
                self.undo.push((entry, self.state));
                self.state = after;
                self.lift(entry);
                entry = self.next[self.head];
                continue;
            }
            self.toggle(op);
            if matches!(self.ops[op].step, Step::Read(_)) {
                // Taking this read now is as good as any order (see the
                // module header), and that was tried: a dead end.
                match self.backtrack() {
                    Some(e) => entry = e,
                    None => return (Found::None { stuck }, steps),
                }
            } else {
                entry = self.next[entry];
            }
        }
        (Found::Linearizable, steps)
    }

    /// Undoes choices until one whose alternatives are worth trying; returns
    /// the entry to try next, or `None` when nothing is left to undo.
    fn backtrack(&mut self) -> Option<usize> {
        while let Some((entry, state)) = self.undo.pop() {
            let op = self.entry_op[entry];
            self.toggle(op);
            self.unlift(entry);
            self.state = state;
            if !matches!(self.ops[op].step, Step::Read(_)) {
                return Some(self.next[entry]);
            }
        }
        None
    }

    fn toggle(&mut self, op: usize) {
        self.linearized[op / 64] ^= 1 << (op % 64);
        self.hash ^= self.zobrist[op];
    }

    /// Records the current set with `state`; false if it was seen before.
    fn remember(&mut self, state: Option<Value>) -> bool {
        let key = self.hash ^ splitmix64(u64::from(state.map_or(0, |v| v + 1)) ^ 0x5eed);
        let bucket = self.seen.entry(key).or_default();
        if bucket
            .iter()
            .any(|(set, s)| *s == state && **set == self.linearized[..])
        {
            return false;
        }
        bucket.push((self.linearized.clone().into_boxed_slice(), state));
        true
    }

    fn lift(&mut self, call: usize) {
        let ret = self.ret_entry[self.entry_op[call]];
        self.unlink(call);
        self.unlink(ret);
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.ret_entry[self.entry_op[call]];
        self.relink(ret);
        self.relink(call);
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != END {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != END {
            self.prev[n] = e;
        }
    }
}

/// The register model: the state after `step`, or `None` if `step` cannot
/// happen in `state` (a read of another value).
fn apply(state: Option<Value>, step: Step) -> Option<Option<Value>> {
    match step {
        Step::Write(v) => Some(Some(v)),
        Step::Read(v) if v == state => Some(state),
        Step::Read(_) => None,
    }
}

/// A well-mixed 64-bit word per input (Steele et al.'s SplitMix64 finalizer).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
