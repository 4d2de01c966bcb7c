//! The manager's Prometheus metrics (`weft daemon --metrics-addr`).
//!
//! Counters and histograms are process-wide ([`METRICS`]: one manager per
//! daemon) and moved where things happen; gauges of state (Raft's term and
//! indices, nodes and tasks by state, sessions held) are read from the
//! manager in the daemon's slot at each scrape ([`Collector`]), so they can
//! never disagree with what `weft info` and `node ls` say.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::controlapi::CoreSlot;
use crate::store::NodeState;

/// A label for what kind of config push.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushKind {
    /// `whole` or `delta`.
    pub kind: &'static str,
}

/// The manager's counters and histograms.
pub struct ManagerMetrics {
    /// Time from a proposal to its result on this manager (forwarded ones
    /// included).
    pub proposal_seconds: Histogram,
    /// Times this manager saw the leader change (to another node, or to none).
    pub leader_changes: Counter,
    /// Node sessions open on this manager.
    pub sessions: Gauge,
    /// Heartbeats received.
    pub heartbeats: Counter,
    /// Nodes marked down for missing their heartbeats or losing their
    /// session past the grace.
    pub nodes_marked_down: Counter,
    /// Down marks held back now because most nodes are silent at once.
    pub down_marks_held: Gauge,
    /// Times the leader's liveness loop did not run for over a period.
    pub liveness_stalls: Counter,
    /// Configs pushed to nodes, whole or as a delta.
    pub config_pushes: Family<PushKind, Counter>,
    /// Time from a config push until the node reports it applied.
    pub push_ack_seconds: Histogram,
    /// How late this process's async runtime woke a timer: how long any
    /// task ready to run (a heartbeat to answer) may wait its turn.
    pub runtime_lag_seconds: Histogram,
}

/// Latency buckets: 1 ms to about 16 s.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// This process's manager metrics.
pub static METRICS: LazyLock<ManagerMetrics> = LazyLock::new(|| ManagerMetrics {
    proposal_seconds: Histogram::new(seconds_buckets()),
    leader_changes: Counter::default(),
    sessions: Gauge::default(),
    heartbeats: Counter::default(),
    nodes_marked_down: Counter::default(),
    down_marks_held: Gauge::default(),
    liveness_stalls: Counter::default(),
    config_pushes: Family::default(),
    push_ack_seconds: Histogram::new(seconds_buckets()),
    runtime_lag_seconds: Histogram::new(seconds_buckets()),
});

/// How often [`sample_runtime_lag`] samples.
pub const LAG_SAMPLE: Duration = Duration::from_millis(100);

/// Samples the runtime's lag into [`ManagerMetrics::runtime_lag_seconds`]
/// every [`LAG_SAMPLE`] until `stop` flips: the time a timer fired after
/// it was due. A leader whose runtime lags by seconds answers heartbeats
/// that late, whatever the nodes do.
pub async fn sample_runtime_lag(mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let due = tokio::time::Instant::now() + LAG_SAMPLE;
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep_until(due) => {}
        }
        observe(
            &METRICS.runtime_lag_seconds,
            tokio::time::Instant::now().saturating_duration_since(due),
        );
    }
}

/// Observes `d` in a seconds histogram.
pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

/// A session counted in [`ManagerMetrics::sessions`] while this lives.
pub struct SessionGauge(());

impl SessionGauge {
    /// Counts one more open session.
    pub fn open() -> SessionGauge {
        METRICS.sessions.inc();
        SessionGauge(())
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        METRICS.sessions.dec();
    }
}

/// Registers the manager's metrics and the collector of its state, read
/// from `slot` at each scrape (nothing when this node runs no manager).
pub fn register(registry: &mut Registry, slot: CoreSlot) {
    let m = &*METRICS;
    registry.register(
        "weft_raft_proposal_duration_seconds",
        "Time from a proposal to its applied result on this manager",
        m.proposal_seconds.clone(),
    );
    registry.register(
        "weft_raft_leader_changes",
        "Leader changes this manager saw",
        m.leader_changes.clone(),
    );
    registry.register(
        "weft_dispatcher_sessions",
        "Node sessions open on this manager",
        m.sessions.clone(),
    );
    registry.register(
        "weft_dispatcher_heartbeats",
        "Heartbeats received from nodes",
        m.heartbeats.clone(),
    );
    registry.register(
        "weft_dispatcher_nodes_marked_down",
        "Nodes this manager marked down (missed heartbeats, or a session lost past the grace)",
        m.nodes_marked_down.clone(),
    );
    registry.register(
        "weft_dispatcher_down_marks_held",
        "Down marks held back now because most ready nodes are silent at once",
        m.down_marks_held.clone(),
    );
    registry.register(
        "weft_dispatcher_liveness_stalls",
        "Times this leader's liveness loop did not run for over a heartbeat period",
        m.liveness_stalls.clone(),
    );
    registry.register(
        "weft_dispatcher_config_pushes",
        "Configs pushed to nodes, by kind (whole or delta)",
        m.config_pushes.clone(),
    );
    registry.register(
        "weft_dispatcher_push_ack_duration_seconds",
        "Time from a config push until the node reports it applied",
        m.push_ack_seconds.clone(),
    );
    registry.register(
        "weft_runtime_lag_seconds",
        "How late this manager's async runtime woke a timer, sampled every 100 ms",
        m.runtime_lag_seconds.clone(),
    );
    registry.register_collector(Box::new(StateCollector { slot }));
}

/// The manager's state, read at each scrape.
struct StateCollector {
    slot: CoreSlot,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabel {
    node: String,
}

/// What a scrape reports of the manager's state.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Raft term.
    pub term: u64,
    /// 1 on the leader.
    pub leader: u64,
    /// Last log index on this manager.
    pub last_log_index: u64,
    /// Last applied (and so committed) index.
    pub applied_index: u64,
    /// Bytes of the Raft directory (log file, state and snapshots).
    pub log_bytes: u64,
    /// Nodes by state (`ready`, `down`, `unknown`).
    pub nodes: Vec<(&'static str, i64)>,
    /// Tasks by observed state.
    pub tasks: Vec<(&'static str, i64)>,
    /// On the leader: entries each other member lags behind.
    pub lag: Vec<(String, i64)>,
}

/// Reads the manager's state for a scrape.
pub fn snapshot(core: &crate::core::Core) -> Snapshot {
    let raft = core.raft().metrics();
    let last = raft.last_log_index.unwrap_or(0);
    let (nodes, tasks) = core.read(|s| {
        let mut nodes = std::collections::BTreeMap::<&'static str, i64>::new();
        for st in [NodeState::Ready, NodeState::Down, NodeState::Unknown] {
            nodes.insert(st.as_str(), 0);
        }
        for n in s.nodes.values() {
            *nodes.entry(n.state.as_str()).or_default() += 1;
        }
        let tasks = s
            .tasks_by_state()
            .into_iter()
            .map(|(k, n)| (k, i64::try_from(n).unwrap_or(i64::MAX)));
        (
            nodes.into_iter().collect::<Vec<_>>(),
            tasks.collect::<Vec<_>>(),
        )
    });
    let lag = raft
        .matched
        .iter()
        .map(|(id, m)| {
            let behind = m.map_or(last, |m| last.saturating_sub(m));
            (id.to_string(), i64::try_from(behind).unwrap_or(i64::MAX))
        })
        .collect();
    Snapshot {
        term: raft.term,
        leader: u64::from(core.is_leader()),
        last_log_index: last,
        applied_index: raft.applied_index.unwrap_or(0),
        log_bytes: core.raft_dir().map_or(0, dir_bytes),
        nodes,
        tasks,
        lag,
    }
}

/// Bytes of the regular files under `dir` (not following links).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let m = e.path().symlink_metadata().ok()?;
            Some(if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            })
        })
        .sum()
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl prometheus_client::collector::Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let core = self.slot.read().ok().and_then(|s| s.clone());
        let Some(core) = core else { return Ok(()) };
        let s = snapshot(&core);
        gauge(&mut encoder, "weft_raft_term", "Raft term", s.term)?;
        gauge(
            &mut encoder,
            "weft_raft_leader",
            "1 when this manager is the Raft leader",
            s.leader,
        )?;
        gauge(
            &mut encoder,
            "weft_raft_last_log_index",
            "Index of the last entry in this manager's Raft log",
            s.last_log_index,
        )?;
        gauge(
            &mut encoder,
            "weft_raft_applied_index",
            "Index of the last entry applied (committed) on this manager",
            s.applied_index,
        )?;
        gauge(
            &mut encoder,
            "weft_raft_log_size_bytes",
            "Bytes of this manager's Raft directory (log, state, snapshots)",
            s.log_bytes,
        )?;
        let nodes = Family::<StateLabel, Gauge>::default();
        for (state, n) in &s.nodes {
            nodes.get_or_create(&StateLabel { state }).set(*n);
        }
        nodes.encode(encoder.encode_descriptor(
            "weft_nodes",
            "Cluster nodes by state, as this manager's store has them",
            None,
            MetricType::Gauge,
        )?)?;
        let tasks = Family::<StateLabel, Gauge>::default();
        for (state, n) in &s.tasks {
            tasks.get_or_create(&StateLabel { state }).set(*n);
        }
        tasks.encode(encoder.encode_descriptor(
            "weft_tasks",
            "Cluster tasks by observed state, as this manager's store has them",
            None,
            MetricType::Gauge,
        )?)?;
        if !s.lag.is_empty() {
            let lag = Family::<MemberLabel, Gauge>::default();
            for (node, n) in &s.lag {
                lag.get_or_create(&MemberLabel { node: node.clone() })
                    .set(*n);
            }
            lag.encode(encoder.encode_descriptor(
                "weft_raft_member_lag_entries",
                "On the leader: log entries each other manager lags behind",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// Counts leader changes seen in `raft`'s metrics until they end.
pub async fn count_leader_changes(
    mut watch: tokio::sync::watch::Receiver<
        openraft::RaftMetrics<crate::store::NodeId, crate::raft::RaftNode>,
    >,
) {
    let mut leader = watch.borrow().current_leader;
    while watch.changed().await.is_ok() {
        let now = watch.borrow().current_leader;
        if now != leader {
            leader = now;
            METRICS.leader_changes.inc();
        }
    }
}
