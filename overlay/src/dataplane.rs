//! The `Dataplane` trait: the one door through which the worker changes the
//! kernel, with its error, apply and teardown reports. Implementations:
//! [`crate::linux::LinuxDataplane`] (netlink, namespaces, nftables) and
//! [`crate::fake::FakeDataplane`] (in memory, for tests of the layers above).

use std::path::PathBuf;

use async_trait::async_trait;

use crate::model::{DesiredNode, TaskId};
use crate::plan::{Op, PlanError};

/// Result alias of the data plane.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong applying or tearing down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The desired state was refused; nothing was changed.
    #[error("refused desired state: {0}")]
    Plan(#[from] PlanError),
    /// Reading the kernel's state failed; nothing was changed.
    #[cfg(target_os = "linux")]
    #[error("observing the kernel: {0}")]
    Observe(#[source] crate::linux::Error),
    /// Some operations failed. The others were applied: the next apply
    /// retries what is still missing.
    #[cfg(target_os = "linux")]
    #[error(
        "{} of {} operations failed, first: {:?}: {}",
        failures.len(), failures.len() + applied.len(), failures[0].op, failures[0].source
    )]
    Apply {
        /// The operations that succeeded.
        applied: Vec<Op>,
        /// The ones that failed, in order.
        failures: Vec<OpFailure>,
    },
    /// An error injected into [`crate::fake::FakeDataplane`].
    #[error("injected failure of the fake data plane (call {call})")]
    Injected {
        /// Which call (0-based count of `apply` calls) failed.
        call: usize,
    },
    /// One or more objects could not be removed by a teardown.
    #[error("teardown: {} errors, first: {}", .0.len(), .0[0])]
    Teardown(Vec<Error>),
    /// A Linux primitive failed outside an op (e.g. in teardown).
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Linux(#[from] crate::linux::Error),
}

/// One failed operation.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct OpFailure {
    /// The operation.
    pub op: Op,
    /// Why it failed.
    pub source: crate::linux::Error,
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The operations executed, in order (empty: the kernel already
    /// matched).
    pub ops: Vec<Op>,
}

/// What a teardown removed; it never stops at the first failure.
#[derive(Debug, Default)]
pub struct TeardownReport {
    /// Objects removed, described for logs (e.g. "link weft_gwbridge",
    /// "netns /run/weft/netns/net-x", "nft table inet weft").
    pub removed: Vec<String>,
    /// Processes killed because they still lived in a removed namespace.
    pub killed: Vec<i32>,
    /// Every error met on the way.
    pub errors: Vec<Error>,
}

impl TeardownReport {
    /// True when nothing failed.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(())` when nothing failed, else all errors as [`Error::Teardown`].
    pub fn into_result(self) -> Result<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown(self.errors))
        }
    }
}

/// The node's data plane.
///
/// `apply` is level-triggered and idempotent: it observes the kernel, plans
/// the difference to `desired` and executes it, so calling it again with the
/// same state does nothing, and calling it periodically repairs drift.
/// Calls are serialised by the implementation.
#[async_trait]
pub trait Dataplane: Send + Sync {
    /// Makes the kernel match `desired`.
    async fn apply(&self, desired: &DesiredNode) -> Result<ApplyReport>;

    /// The network namespace (pin path) a task's process must start in;
    /// it exists once an `apply` containing the task succeeded.
    fn task_netns(&self, task: &TaskId) -> PathBuf;

    /// Makes `task`'s network namespace now, empty, ahead of the `apply`
    /// that wires it (links, addresses, routes, rules), so that a runtime
    /// can make the task's container in it while that pass runs, as CNI
    /// runtimes make a sandbox's namespace before its network. Nothing may
    /// run in it before an `apply` holding the task went through. An
    /// `apply` without the task removes it. Idempotent. `Ok(false)`: this
    /// data plane makes namespaces only in `apply` (the default).
    async fn prepare_task(&self, _task: &TaskId) -> Result<bool> {
        Ok(false)
    }

    /// A resolv.conf for tasks pointing at the embedded resolver
    /// (`nameserver 127.0.0.11`, `options ndots:0`), for the runtime to
    /// bind-mount over a task's `/etc/resolv.conf`; it exists once an
    /// `apply` succeeded. `None`: this data plane has no resolver (the
    /// runtime then leaves the task's resolv.conf alone).
    fn resolv_conf(&self) -> Option<PathBuf> {
        None
    }

    /// The last WireGuard handshake with each peer (by public key), for
    /// `network inspect`; empty without a WireGuard device.
    fn wg_handshakes(&self) -> std::collections::BTreeMap<String, std::time::SystemTime> {
        std::collections::BTreeMap::new()
    }

    /// A counter that moves whenever the nftables ruleset of the daemon's
    /// namespace changes (someone flushed a table of ours, or any other
    /// nft transaction, including the data plane's own writes). The worker
    /// re-runs [`apply`](Dataplane::apply) when it moves; an apply with
    /// nothing to repair writes nothing, so this does not loop. `None`:
    /// this data plane cannot watch (the worker then relies on its
    /// periodic re-apply).
    fn nft_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// A counter that moves whenever something [`apply`](Dataplane::apply)
    /// observes may have changed in one of the node's namespaces (links,
    /// addresses, routes, static neighbour and FDB entries, a task's
    /// nftables ruleset), by anyone, the data plane's own writes included.
    /// The worker re-runs `apply` when it moves; such a pass re-reads only
    /// the namespaces that changed. `None`: this data plane does not watch.
    fn observed_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Removes every kernel object this data plane made (namespaces, links
    /// in the daemon's namespace, nftables tables), killing processes left
    /// in removed namespaces. The operator's chain
    /// ([`crate::model::names::USER_CHAIN`]) is not ours and stays. Keeps
    /// going past errors; `Err` only when it could not start at all.
    async fn teardown_all(&self) -> Result<TeardownReport>;
}
