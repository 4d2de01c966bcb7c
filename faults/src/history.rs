//! The input of the checker: one [`Operation`] per client call on a
//! register, with when it was invoked, when it completed and what became of
//! it.

use std::fmt;

/// What became of an operation, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It completed: a write took effect before `complete_ns`, a read
    /// returned the value it carries.
    Ok,
    /// It definitely did not take effect (refused before anything was
    /// proposed). The checker leaves it out.
    Fail,
    /// Unknown (timed out, connection lost): a write may take effect at any
    /// time after its invocation, or never, so its interval is open on the
    /// right; a read tells nothing and is left out.
    Info,
}

/// What an operation did to which register.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action<K, V> {
    /// Set `key` to `value`.
    Write {
        /// The register.
        key: K,
        /// The value written.
        value: V,
    },
    /// Read `key`; `value` is what came back (`None`: never written). Only
    /// meaningful for an [`Outcome::Ok`] read.
    Read {
        /// The register.
        key: K,
        /// The value read.
        value: Option<V>,
    },
}

impl<K, V> Action<K, V> {
    /// A write of `value` to `key`.
    pub fn write(key: K, value: V) -> Self {
        Action::Write { key, value }
    }

    /// A read of `key` that returned `value`.
    pub fn read(key: K, value: Option<V>) -> Self {
        Action::Read { key, value }
    }

    /// The register the action is on.
    pub fn key(&self) -> &K {
        match self {
            Action::Write { key, .. } | Action::Read { key, .. } => key,
        }
    }
}

/// One client call on a register.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation<K, V> {
    /// Who made the call (a client thread); only shown in witnesses.
    pub process: u64,
    /// What it did.
    pub action: Action<K, V>,
    /// When the call was made, in monotonic nanoseconds.
    pub invoke_ns: u64,
    /// When its answer came back (for [`Outcome::Info`], when the client
    /// gave up; the checker does not use it then).
    pub complete_ns: u64,
    /// What became of it.
    pub outcome: Outcome,
}

impl<K, V> Operation<K, V> {
    /// `action` by `process` over `[invoke_ns, complete_ns]`, ending in `outcome`.
    pub fn new(
        process: u64,
        action: Action<K, V>,
        invoke_ns: u64,
        complete_ns: u64,
        outcome: Outcome,
    ) -> Self {
        Operation {
            process,
            action,
            invoke_ns,
            complete_ns,
            outcome,
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Display for Operation<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.outcome {
            Outcome::Info => "?".to_string(),
            _ => self.complete_ns.to_string(),
        };
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        match &self.action {
            Action::Write { key, value } => write!(
                f,
                "p{} write({key:?}, {value:?}) {outcome} [{} .. {end}] ns",
                self.process, self.invoke_ns
            ),
            Action::Read { key, value } => write!(
                f,
                "p{} read({key:?}) -> {value:?} {outcome} [{} .. {end}] ns",
                self.process, self.invoke_ns
            ),
        }
    }
}

/// A history the checker cannot judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// A completed operation's answer came before its call: the recorder's
    /// clock is not monotonic, or the fields were swapped.
    #[error(
        "operation {index} completes at {complete_ns} ns, before its invocation at \
         {invoke_ns} ns: record both from one monotonic clock"
    )]
    CompletesBeforeInvoke {
        /// Its index in the history.
        index: usize,
        /// When it was invoked.
        invoke_ns: u64,
        /// When it completed.
        complete_ns: u64,
    },
}

/// Refuses operations that complete before they are invoked (an `Info`
/// operation's completion is not used, so it is not checked).
pub(crate) fn validate<K, V>(history: &[Operation<K, V>]) -> Result<(), HistoryError> {
    match history
        .iter()
        .enumerate()
        .find(|(_, op)| op.outcome != Outcome::Info && op.complete_ns < op.invoke_ns)
    {
        Some((index, op)) => Err(HistoryError::CompletesBeforeInvoke {
            index,
            invoke_ns: op.invoke_ns,
            complete_ns: op.complete_ns,
        }),
        None => Ok(()),
    }
}
