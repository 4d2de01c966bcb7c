//! Every bound on what the cluster accepts, stated once (SECURITY.md has
//! the table). The API edges — control API, dispatcher, join, `init` — call
//! the checks here before they propose anything, so a refused request
//! changes nothing.
//!
//! What the transport bounds (request bodies, streams per connection,
//! deadlines on the manager port) is in `server/limits.rs`; what a
//! node may say about itself in a report, in [`crate::reports`].
//!
//! Per-object bounds (a name, a label, a command, a spec) are
//! `INVALID_ARGUMENT`; cluster-wide ones (how many nodes, networks,
//! services, tasks; how large a node's config can get) are
//! `RESOURCE_EXHAUSTED`. Every message names the field, the value given and
//! the limit.
//!
//! Node configs: the dispatcher sends each node its whole projected
//! `NodeConfig` and the node decodes at most
//! [`weft_proto::SESSION_RECEIVE_LIMIT_BYTES`]. No choice of per-object
//! limits keeps every projection under that (10,000 replicas of a small
//! task on one overlay network come to ~3 MB in the config of the node
//! running them), so a command is refused when it would let some node's
//! config exceed [`MAX_NODE_CONFIG_BYTES`]: [`admit`] applies the command
//! to a copy of the state and computes
//! [`config_bound`](crate::dispatcher::bound::config_bound), an upper bound
//! over every node *and every placement* of the desired tasks (all replicas
//! of a service may end up on one node when the others are down or
//! drained).
//!
//! Raft: every command is at most [`MAX_RAFT_ENTRY_BYTES`] serialized,
//! checked where it is proposed ([`crate::raft::RaftHandle::propose`]),
//! before it reaches Raft.

use std::collections::BTreeMap;
use std::fmt::Display;

use crate::error::{Error, Result};
use crate::store::{Command, Constraint, State};

// ---------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------

/// Names of networks, services and tasks: a DNS label (tasks and services
/// are resolved by name inside the overlay).
pub const MAX_NAME_BYTES: usize = 63;

/// Replicas of one service. Each replica is a task record in every
/// manager's store and an endpoint in other nodes' configs; `--replicas
/// 100000000` made the leader allocate past 1 GiB within seconds (issue
/// #12).
pub const MAX_REPLICAS: u64 = 10_000;

/// Labels on one node or network. Above Docker-scale use (tens) with room
/// for the Raft benchmark, which writes 64 distinct labels on one node.
pub const MAX_LABELS: usize = 128;

/// Length of a label key (also the `KEY` of a `node.labels.KEY`
/// constraint).
pub const MAX_LABEL_KEY_BYTES: usize = 128;

/// Length of a label value (also of a constraint's value). Labels are
/// matched by placement constraints, not used to carry data.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// Environment variables of one task or service.
pub const MAX_ENV_VARS: usize = 256;

/// Length of an environment variable's name.
pub const MAX_ENV_KEY_BYTES: usize = 256;

/// Length of one environment variable's value (room for a PEM
/// certificate chain; Linux allows 128 KiB per string).
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;

/// All of a task's environment, as `KEY=VALUE\0` strings. Every task's
/// environment travels in its node's config; see [`MAX_NODE_CONFIG_BYTES`].
pub const MAX_ENV_BYTES: usize = 64 * 1024;

/// Arguments of a task's command line, the program included.
pub const MAX_COMMAND_ARGS: usize = 1024;

/// A task's command line, as `ARG\0` strings (Linux's own limit for
/// arguments and environment together is 2 MiB with the default stack).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Published ports of one service or task. Each ingress port is a set of
/// nftables rules on every node.
pub const MAX_PORTS: usize = 64;

/// Networks one service or task is attached to (each is an interface in
/// the task and a VIP per service).
pub const MAX_NETWORKS_PER_TASK: usize = 16;
/// DNS aliases of one task or service on one network.
pub const MAX_ALIASES_PER_NETWORK: usize = 32;

/// Placement constraints of one service.
pub const MAX_CONSTRAINTS: usize = 32;

/// Default address pools given to `weft init`.
pub const MAX_ADDR_POOLS: usize = 16;

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// Shortest node certificate lifetime: nodes renew at half-life, and a
/// shorter life would make renewals a steady load.
pub const MIN_CERT_EXPIRY_SECS: u64 = 3600;

/// Longest node certificate lifetime: a leaked certificate stays useful at
/// most this long, and every later time computation stays far from
/// overflow.
pub const MAX_CERT_EXPIRY_SECS: u64 = 10 * 365 * 24 * 3600;

/// Shortest heartbeat period: each heartbeat is an RPC to the leader.
pub const MIN_HEARTBEAT_MS: u64 = 100;

/// Longest heartbeat period: a node is declared down after a few missed
/// heartbeats, so a longer period hides dead nodes for minutes.
pub const MAX_HEARTBEAT_MS: u64 = 60_000;

/// Shortest automatic WireGuard key rotation interval (0 turns it off).
pub const MIN_WG_KEY_ROTATION_SECS: u64 = 60;

/// Longest automatic WireGuard key rotation interval; `0` is the way to
/// turn rotation off.
pub const MAX_WG_KEY_ROTATION_SECS: u64 = 365 * 24 * 3600;

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// Nodes in the cluster. Every node is a VXLAN source, WireGuard peer and
/// ingress endpoint in other nodes' configs.
pub const MAX_NODES: usize = 5000;

/// Highest node limit `WEFT_UNSUPPORTED_MAX_NODES` may set: below the
/// fixed limits that do not follow the node count (a node takes at most
/// 65,536 VXLAN sources, `weft doctor` at most 65,000 peers, and a probe
/// request for every node passes the 8 MiB session limit near 24,000).
pub const MAX_NODES_UNSUPPORTED: usize = 20_000;

/// The node limit in force: [`MAX_NODES`], unless the manager's environment
/// has `WEFT_UNSUPPORTED_MAX_NODES` (read once, at most
/// [`MAX_NODES_UNSUPPORTED`]), which `bench/nodes.sh` sets to find where
/// three managers break beyond it. Nothing past [`MAX_NODES`] is tested:
/// the join limit is checked on the manager that takes the join, so every
/// manager must have the same figure. A daemon with a value that is not
/// one does not start ([`node_limit_at_start`]).
pub fn max_nodes() -> usize {
    *NODE_LIMIT.get_or_init(|| env_node_limit().ok().flatten().unwrap_or(MAX_NODES))
}

/// The node limit in force, once read.
static NODE_LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The node limit, checked as the daemon starts: an invalid
/// `WEFT_UNSUPPORTED_MAX_NODES` is an error, a valid one a warning. The
/// figure read here is the one [`max_nodes`] gives from then on.
pub fn node_limit_at_start() -> Result<usize> {
    let asked = env_node_limit()?;
    if let Some(n) = asked {
        tracing::warn!(
            limit = n,
            "WEFT_UNSUPPORTED_MAX_NODES is set: the node limit is {n}, not {MAX_NODES}; \
             beyond {MAX_NODES} nothing is tested, and every manager must have the same figure"
        );
    }
    Ok(*NODE_LIMIT.get_or_init(|| asked.unwrap_or(MAX_NODES)))
}

/// `WEFT_UNSUPPORTED_MAX_NODES` from the environment (`None`: unset).
fn env_node_limit() -> Result<Option<usize>> {
    unsupported_max_nodes(std::env::var_os("WEFT_UNSUPPORTED_MAX_NODES").as_deref())
}

/// The node limit `WEFT_UNSUPPORTED_MAX_NODES` asks for (`None`: unset).
fn unsupported_max_nodes(raw: Option<&std::ffi::OsStr>) -> Result<Option<usize>> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.to_str().and_then(|s| s.parse::<usize>().ok()) {
        Some(n) if (MAX_NODES..=MAX_NODES_UNSUPPORTED).contains(&n) => Ok(Some(n)),
        _ => Err(Error::InvalidInput(format!(
            "WEFT_UNSUPPORTED_MAX_NODES={raw:?} is not a number of nodes from {MAX_NODES} to \
             {MAX_NODES_UNSUPPORTED}"
        ))),
    }
}

/// Networks created with `weft network create` (default bridges and the
/// ingress network are not counted: the cluster makes those itself).
pub const MAX_NETWORKS: usize = 1000;

/// Services in the cluster.
pub const MAX_SERVICES: usize = 1000;

/// Tasks the cluster is asked to run: replicas of replicated services, one
/// per node for global ones, and standalone tasks. Every task is a record
/// in every manager's store.
pub const MAX_TASKS: u64 = 20_000;

/// Largest config a node is sent, a quarter below what it can receive
/// ([`weft_proto::SESSION_RECEIVE_LIMIT_BYTES`]): the margin covers commands
/// admitted concurrently against the same state.
pub const MAX_NODE_CONFIG_BYTES: usize = weft_proto::SESSION_RECEIVE_LIMIT_BYTES / 4 * 3;

/// Largest Raft command, and largest batch of commands in one log entry,
/// as serialized. Far below the Raft transport's 64 MiB message limit, so
/// a full AppendEntries of such entries always fits: an entry over the
/// message limit could never be replicated and would be retried forever.
pub const MAX_RAFT_ENTRY_BYTES: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// What nodes report
// ---------------------------------------------------------------------------

/// A certificate signing request (a P-256 CSR is under 1 KiB).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// A host name as a node reports it (DNS's limit).
pub const MAX_HOSTNAME_BYTES: usize = 253;

/// Underlay MTUs a joining node may report: IPv4's minimum to the largest
/// MTU Linux gives an interface (loopback).
pub const UNDERLAY_MTU_RANGE: std::ops::RangeInclusive<u64> = 576..=65536;

/// A task status message or config apply error a node reports; longer ones
/// are cut (they are kept in the store and shown by `weft ps`).
pub const MAX_REPORT_MESSAGE_BYTES: usize = 1024;

/// Length of a WireGuard public key in base64 (32 bytes).
pub const WG_PUBLIC_KEY_BYTES: usize = 44;

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Refuses `n` over `max` as `INVALID_ARGUMENT`:
/// `{what}: {n} {unit} is over the limit of {max} {unit}`.
pub fn at_most(what: impl Display, n: usize, max: usize, unit: &str) -> Result<()> {
    if n > max {
        return Err(Error::InvalidInput(format!(
            "{what}: {n} {unit} is over the limit of {max} {unit}"
        )));
    }
    Ok(())
}

/// As [`at_most`], for a change from `before` to `after`: only growth is
/// refused, so an object over a limit set after it was made can still be
/// changed in every other way.
pub fn growth_at_most(
    what: impl Display,
    before: usize,
    after: usize,
    max: usize,
    unit: &str,
) -> Result<()> {
    if after > before {
        at_most(what, after, max, unit)?;
    }
    Ok(())
}

/// Replicas of a replicated service.
pub fn replicas(n: u64) -> Result<()> {
    if n > MAX_REPLICAS {
        return Err(Error::InvalidInput(format!(
            "--replicas {n} is over the limit of {MAX_REPLICAS} replicas per service"
        )));
    }
    Ok(())
}

/// A name's length (its syntax is [`crate::validate::object_name`]'s).
pub fn name(kind: &str, name: &str) -> Result<()> {
    at_most(
        format_args!("{kind} name"),
        name.len(),
        MAX_NAME_BYTES,
        "bytes",
    )
}

/// The label count of `what` (e.g. `node w1`) and each label value's
/// length. Key syntax and length are checked with the key.
pub fn labels<'a>(
    what: impl Display,
    count: usize,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<()> {
    at_most(
        format_args!("labels of {what}"),
        count,
        MAX_LABELS,
        "labels",
    )?;
    for (k, v) in labels {
        at_most(
            format_args!("value of label {k:?}"),
            v.len(),
            MAX_LABEL_VALUE_BYTES,
            "bytes",
        )?;
    }
    Ok(())
}

/// The environment of a task or service: count, name and value lengths,
/// total size, and names that `execve` can pass (`KEY=VALUE`).
pub fn env(env: &BTreeMap<String, String>) -> Result<()> {
    at_most("environment", env.len(), MAX_ENV_VARS, "variables")?;
    let mut total = 0usize;
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(Error::InvalidInput(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        at_most(
            "environment variable name",
            k.len(),
            MAX_ENV_KEY_BYTES,
            "bytes",
        )?;
        at_most(
            format_args!("value of environment variable {k}"),
            v.len(),
            MAX_ENV_VALUE_BYTES,
            "bytes",
        )?;
        total += k.len() + v.len() + 2;
    }
    at_most(
        "environment (KEY=VALUE strings)",
        total,
        MAX_ENV_BYTES,
        "bytes",
    )
}

/// A task's command line: count and total size.
pub fn command(args: &[String]) -> Result<()> {
    at_most("command", args.len(), MAX_COMMAND_ARGS, "arguments")?;
    let total: usize = args.iter().map(|a| a.len() + 1).sum();
    at_most("command line", total, MAX_COMMAND_BYTES, "bytes")
}

/// What every task request has — command, environment, networks and
/// published ports — for `weft run` and `weft service create`.
pub fn task_request(
    command: &[String],
    env: &BTreeMap<String, String>,
    networks: usize,
    ports: usize,
) -> Result<()> {
    self::command(command)?;
    self::env(env)?;
    at_most("--network", networks, MAX_NETWORKS_PER_TASK, "networks")?;
    at_most("--publish", ports, MAX_PORTS, "ports")
}

/// One placement constraint: its label key and its value are bounded like
/// a label's (a longer one could never match).
pub fn constraint(c: &Constraint) -> Result<()> {
    if let Some(k) = c.key.strip_prefix("node.labels.") {
        at_most(
            "label key in a constraint",
            k.len(),
            MAX_LABEL_KEY_BYTES,
            "bytes",
        )?;
    }
    at_most(
        format_args!("value of constraint on {}", c.key),
        c.value.len(),
        MAX_LABEL_VALUE_BYTES,
        "bytes",
    )
}

/// A duration setting in seconds within `min..=max`; `flag` names it,
/// `hint` follows the "at least" of a value too short.
fn secs_between(flag: &str, secs: u64, min: u64, max: u64, hint: &str) -> Result<()> {
    if secs < min {
        return Err(Error::InvalidInput(format!(
            "{flag} {} is too short: it must be at least {}{hint}",
            human_secs(secs),
            human_secs(min)
        )));
    }
    if secs > max {
        return Err(Error::InvalidInput(format!(
            "{flag} {} is over the limit of {}",
            human_secs(secs),
            human_secs(max)
        )));
    }
    Ok(())
}

/// Environment variable that lowers [`MIN_CERT_EXPIRY_SECS`] for tests
/// only: the renewal end-to-end test runs a cluster through several
/// certificate lifetimes in a couple of minutes. Never set it in
/// production: renewals would become a steady load on the leader.
pub const TEST_MIN_CERT_EXPIRY_ENV: &str = "WEFT_TEST_MIN_CERT_EXPIRY_SECS";

/// The shortest certificate lifetime accepted: [`MIN_CERT_EXPIRY_SECS`],
/// or what [`TEST_MIN_CERT_EXPIRY_ENV`] says (at least 10 s).
fn min_cert_expiry_secs() -> u64 {
    std::env::var(TEST_MIN_CERT_EXPIRY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(MIN_CERT_EXPIRY_SECS, |v| v.clamp(10, MIN_CERT_EXPIRY_SECS))
}

/// `--cert-expiry`, in seconds.
pub fn cert_expiry(secs: u64) -> Result<()> {
    secs_between(
        "--cert-expiry",
        secs,
        min_cert_expiry_secs(),
        MAX_CERT_EXPIRY_SECS,
        "",
    )
}

/// The lifetime to issue a certificate with under the setting `secs`,
/// at most [`MAX_CERT_EXPIRY_SECS`] even if the store holds more (a cluster
/// that set a longer one before the limit existed).
pub fn cert_validity(secs: u64) -> std::time::Duration {
    std::time::Duration::from_secs(secs.min(MAX_CERT_EXPIRY_SECS))
}

/// `--wg-key-rotation`, in seconds; 0 turns rotation off.
pub fn wg_key_rotation(secs: u64) -> Result<()> {
    if secs == 0 {
        return Ok(());
    }
    secs_between(
        "--wg-key-rotation",
        secs,
        MIN_WG_KEY_ROTATION_SECS,
        MAX_WG_KEY_ROTATION_SECS,
        ", or 0 to turn automatic rotation off",
    )
}

/// `--heartbeat-period`, in milliseconds.
pub fn heartbeat_ms(ms: u64) -> Result<()> {
    if !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&ms) {
        return Err(Error::InvalidInput(format!(
            "--heartbeat-period {ms}ms is outside the limits of {MIN_HEARTBEAT_MS}ms to {}s",
            MAX_HEARTBEAT_MS / 1000
        )));
    }
    Ok(())
}

/// Shortest disconnect grace: a node's daemon that renews its certificate
/// or switches to a new leader closes one session and opens the next
/// within milliseconds.
pub const MIN_DISCONNECT_GRACE_MS: u64 = 100;

/// Longest disconnect grace: beyond a minute, missed heartbeats decide.
pub const MAX_DISCONNECT_GRACE_MS: u64 = 60_000;

/// `--disconnect-grace`, in milliseconds; 0 turns it off.
pub fn disconnect_grace_ms(ms: u64) -> Result<()> {
    if ms != 0 && !(MIN_DISCONNECT_GRACE_MS..=MAX_DISCONNECT_GRACE_MS).contains(&ms) {
        return Err(Error::InvalidInput(format!(
            "--disconnect-grace {ms}ms is outside the limits of {MIN_DISCONNECT_GRACE_MS}ms to \
             {}s (or 0 to turn it off)",
            MAX_DISCONNECT_GRACE_MS / 1000
        )));
    }
    Ok(())
}

/// Seconds the way the CLI takes them (`90d`, `1h`, `61s`).
fn human_secs(secs: u64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// A report string from a node cut to [`MAX_REPORT_MESSAGE_BYTES`] (at a
/// character boundary).
pub fn cut_report(mut s: String) -> String {
    if s.len() > MAX_REPORT_MESSAGE_BYTES {
        let mut end = MAX_REPORT_MESSAGE_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// What a cluster-wide measure is, for messages.
struct Measure {
    what: &'static str,
    now: u64,
    next: u64,
    max: u64,
}

/// Refuses `cmd` if applying it to `current` would break a cluster-wide
/// limit: too many nodes, networks, services or tasks, or a node config
/// that could exceed [`MAX_NODE_CONFIG_BYTES`]. A command that does not
/// grow a measure already over its limit (scaling down, removing) passes.
///
/// The command is applied to a copy: a command the store would refuse
/// fails here with the same error, before anything is proposed.
pub fn admit(current: &State, cmd: &Command) -> Result<()> {
    let mut next = current.clone();
    next.apply(cmd)?;
    let counts = |s: &State| {
        (
            s.nodes.len() as u64,
            user_networks(s),
            s.services.len() as u64,
            desired_tasks(s),
        )
    };
    let (n0, w0, s0, t0) = counts(current);
    let (n1, w1, s1, t1) = counts(&next);
    for m in [
        Measure {
            what: "nodes",
            now: n0,
            next: n1,
            max: max_nodes() as u64,
        },
        Measure {
            what: "networks",
            now: w0,
            next: w1,
            max: MAX_NETWORKS as u64,
        },
        Measure {
            what: "services",
            now: s0,
            next: s1,
            max: MAX_SERVICES as u64,
        },
        Measure {
            what: "tasks",
            now: t0,
            next: t1,
            max: MAX_TASKS,
        },
    ] {
        if m.next > m.max && m.next > m.now {
            return Err(Error::ResourceExhausted(format!(
                "this would make {} {} in the cluster, over the limit of {} {} per cluster",
                m.next, m.what, m.max, m.what
            )));
        }
    }
    let bound = crate::dispatcher::bound::config_bound(&next);
    if bound > MAX_NODE_CONFIG_BYTES && bound > crate::dispatcher::bound::config_bound(current) {
        return Err(Error::ResourceExhausted(format!(
            "this would let the configuration sent to one node reach {bound} bytes (if every \
             replica ran on it), over the limit of {MAX_NODE_CONFIG_BYTES} bytes per node \
             config (nodes accept {} bytes); use fewer replicas, networks or ports, or a \
             smaller command or environment",
            weft_proto::SESSION_RECEIVE_LIMIT_BYTES
        )));
    }
    Ok(())
}

/// Networks counted against [`MAX_NETWORKS`].
fn user_networks(s: &State) -> u64 {
    s.networks
        .values()
        .filter(|n| {
            let built_in =
                n.ingress || (n.node.is_some() && n.name == crate::store::DEFAULT_BRIDGE);
            !built_in
        })
        .count() as u64
}

/// Tasks counted against [`MAX_TASKS`]: what the services ask for (or
/// have, if more), and the standalone tasks.
pub fn desired_tasks(s: &State) -> u64 {
    let mut existing: BTreeMap<&str, u64> = BTreeMap::new();
    let mut standalone = 0u64;
    for t in s.tasks.values() {
        match &t.service {
            Some(r) => *existing.entry(r.service.as_str()).or_default() += 1,
            None => standalone += 1,
        }
    }
    s.services
        .values()
        .map(|svc| service_units(s, svc).max(existing.get(svc.id.as_str()).copied().unwrap_or(0)))
        .fold(standalone, u64::saturating_add)
}

/// Tasks a service asks for: its replicas, or one per node when global.
pub fn service_units(s: &State, svc: &crate::store::Service) -> u64 {
    match svc.spec.mode {
        crate::store::ServiceMode::Replicated { replicas } => replicas,
        crate::store::ServiceMode::Global => s.nodes.len() as u64,
    }
}

#[cfg(test)]
mod tests;
