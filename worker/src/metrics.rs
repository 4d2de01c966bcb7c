//! The node's Prometheus metrics (`weft daemon --metrics-addr`): data plane
//! passes, this node's tasks by state, peers per network, and WireGuard
//! peers (read from the device at each scrape).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::UNIX_EPOCH;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use weft_overlay::wg::DeviceState;
use weft_proto::v1 as pb;

/// `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabel {
    network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

/// The node's counters, histograms and per-pass gauges.
pub struct NodeMetrics {
    /// Data plane passes by outcome.
    pub applies: Family<ResultLabel, Counter>,
    /// How long a data plane pass took.
    pub apply_seconds: Histogram,
    /// Passes that changed the kernel although what weft wants of it had
    /// not changed since the last pass that went through: something else
    /// changed it, and weft put it back.
    pub drift_repairs: Counter,
    tasks: Family<StateLabel, Gauge>,
    /// The same counts, for `weft info`.
    last_tasks: RwLock<BTreeMap<String, u64>>,
    peers: Family<NetworkLabel, Gauge>,
    /// WireGuard public key → node ID, from the config.
    peer_names: RwLock<BTreeMap<String, String>>,
}

/// This process's node metrics.
pub static METRICS: LazyLock<NodeMetrics> = LazyLock::new(|| NodeMetrics {
    applies: Family::default(),
    // 1 ms to about 16 s.
    apply_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    )),
    drift_repairs: Counter::default(),
    tasks: Family::default(),
    last_tasks: RwLock::new(BTreeMap::new()),
    peers: Family::default(),
    peer_names: RwLock::new(BTreeMap::new()),
});

impl NodeMetrics {
    /// This node's tasks by state, as it last reported them.
    pub fn tasks_by_state(&self) -> BTreeMap<String, u64> {
        self.last_tasks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a pass's outcome and duration.
    pub fn pass(&self, ok: bool, took: std::time::Duration) {
        let result = if ok { "ok" } else { "error" };
        self.applies.get_or_create(&ResultLabel { result }).inc();
        self.apply_seconds.observe(took.as_secs_f64());
    }

    /// Sets the node's tasks by state from the report of a pass.
    pub fn report(&self, report: &pb::StatusReport) {
        let mut tasks = BTreeMap::<String, i64>::new();
        for t in &report.tasks {
            let state = t
                .status
                .as_ref()
                .map_or(pb::TaskState::Unspecified, |s| s.state());
            let name = state
                .as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_lowercase();
            *tasks.entry(name).or_default() += 1;
        }
        self.tasks.clear();
        for (state, n) in &tasks {
            self.tasks
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
        }
        *self.last_tasks.write().unwrap_or_else(|p| p.into_inner()) = tasks
            .into_iter()
            .map(|(k, n)| (k, n.unsigned_abs()))
            .collect();
    }

    /// Sets the gauges of a config the node takes on: its networks' peers
    /// and the WireGuard peers' node IDs.
    pub fn config(&self, c: &pb::NodeConfig) {
        self.peers.clear();
        for n in &c.networks {
            self.peers
                .get_or_create(&NetworkLabel {
                    network: n.name.clone(),
                })
                .set(peers_of(n));
        }
        let names = c
            .wireguard
            .iter()
            .flat_map(|w| &w.peers)
            .map(|p| (p.public_key.clone(), p.node_id.clone()))
            .collect();
        *self.peer_names.write().unwrap_or_else(|p| p.into_inner()) = names;
    }
}

/// The other nodes a network reaches: its remote endpoints' distinct VTEPs.
fn peers_of(n: &pb::NetworkConfig) -> i64 {
    let vteps: std::collections::BTreeSet<&str> =
        n.remote.iter().map(|r| r.vtep.as_str()).collect();
    i64::try_from(vteps.len()).unwrap_or(i64::MAX)
}

/// Reads the WireGuard device's state at a scrape.
pub type WgState = Arc<dyn Fn() -> Option<DeviceState> + Send + Sync>;

/// Registers the node's metrics; `wg` reads the WireGuard device.
pub fn register(registry: &mut Registry, wg: WgState) {
    let m = &*METRICS;
    registry.register(
        "weft_dataplane_applies",
        "Data plane passes by result (ok or error)",
        m.applies.clone(),
    );
    registry.register(
        "weft_dataplane_apply_duration_seconds",
        "How long a data plane pass took",
        m.apply_seconds.clone(),
    );
    registry.register(
        "weft_dataplane_drift_repairs",
        "Passes that put back kernel state something else changed",
        m.drift_repairs.clone(),
    );
    registry.register(
        "weft_node_tasks",
        "This node's tasks by state, as it last reported them",
        m.tasks.clone(),
    );
    registry.register(
        "weft_network_peers",
        "Other nodes each network on this node reaches (distinct VTEPs of its remote endpoints)",
        m.peers.clone(),
    );
    registry.register_collector(Box::new(WgCollector(wg)));
}

struct WgCollector(WgState);

impl std::fmt::Debug for WgCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WgCollector")
    }
}

impl prometheus_client::collector::Collector for WgCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(state) = (self.0)() else {
            return Ok(());
        };
        let names = METRICS
            .peer_names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let label = |key: &str| PeerLabel {
            peer: names.get(key).cloned().unwrap_or_else(|| key.to_string()),
        };
        let handshake = Family::<PeerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (key, p) in &state.peers {
            let at = p
                .last_handshake
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            handshake.get_or_create(&label(key)).set(at);
        }
        handshake.encode(encoder.encode_descriptor(
            "weft_wireguard_last_handshake_seconds",
            "Unix time of the last completed handshake with each peer (0: none); \
             its age is time() minus this",
            None,
            MetricType::Gauge,
        )?)?;
        for (name, help, get) in [
            (
                "weft_wireguard_received_bytes",
                "Bytes received from each WireGuard peer",
                (|p: &weft_overlay::wg::PeerState| p.rx_bytes) as fn(&_) -> u64,
            ),
            (
                "weft_wireguard_sent_bytes",
                "Bytes sent to each WireGuard peer",
                |p: &weft_overlay::wg::PeerState| p.tx_bytes,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (key, p) in &state.peers {
                let l = label(key);
                ConstCounter::new(get(p)).encode(family.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}
