//! weft-faults: the checking half of weft's fault suite (issue #13).
//!
//! Owns: a linearizability checker for histories of single-value registers
//! ([`check`]): operations `Write(key, value)` and `Read(key) -> Option<value>`
//! with invoke and complete times and an outcome (`Ok`, `Fail`, `Info`). The
//! history is split by key (a register is linearizable on its own, so the
//! whole history is linearizable when each key's part is: Herlihy & Wing's
//! locality, the "P-compositional" split), and each key is searched with the
//! Wing & Gong algorithm plus Lowe's memoization of (linearized set, state),
//! as Porcupine and Knossos do. The search is bounded by a step budget and
//! says "unknown" rather than hang; a failing key comes with a minimal
//! witness (operations that cannot be ordered, no operation superfluous).
//!
//! Must not: depend on the other weft crates or on anything that does I/O.
//! Recording a history (running clients, injecting faults) is the end-to-end
//! test's job (`tests/nemesis.rs`); this crate only judges one.

mod check;
mod history;
mod search;
mod witness;

pub use check::{Budget, KeyVerdict, Verdict, check, check_keys};
pub use history::{Action, HistoryError, Operation, Outcome};
pub use witness::Witness;

#[cfg(test)]
mod tests;
