//! Scale benchmark (issue #16): how many nodes three managers hold. Three
//! real managers (weft daemons in namespace hosts, release build) and
//! WEFT_BENCH_NODES (1000) simulated worker nodes: each joins with a
//! worker token (its own key, CSR and certificate), then keeps what a
//! node's agent keeps: a mutual-TLS session with the leader, a heartbeat
//! every period, and a status report for every config the leader pushes,
//! with every task it assigns reported running. The simulated nodes run in
//! one process on a host of their own (one HTTP/2 connection each), so
//! every byte the managers handle is real; nothing on the nodes touches a
//! kernel.
//!
//! Measured: the joins (sequential), the time until every node shows
//! Ready, each manager's CPU and memory over an idle window, and a service
//! of WEFT_BENCH_NODE_REPLICAS (one per 10 nodes) created until all its
//! replicas are reported running (scheduling, one push per node that got a
//! task, and the reports back). Ignored by default: `bench/nodes.sh` runs it
//! in release mode and writes `bench/results-nodes.md`.
//!
//! Knobs: WEFT_BENCH_NODES, WEFT_BENCH_NODE_REPLICAS, WEFT_BENCH_IDLE_WINDOW
//! (seconds, 20), WEFT_BENCH_HEARTBEAT (the cluster's heartbeat period,
//! seconds, 1), WEFT_BENCH_NODE_NETWORK (1: the service's replicas on an
//! overlay network, so every replica's node holds the network's endpoints,
//! names and VIP backends; 0, the default: on none), WEFT_BENCH_NODE_PUBLISH
//! (1: the service publishes port 8080 through the ingress network, so
//! every node takes part in it and its ports list every other node's
//! replicas; 0, the default: no port), WEFT_BENCH_DAEMON_LOG
//! (the managers' WEFT_LOG filter), WEFT_BENCH_KEEP_LOGS (a directory for
//! the leader's log, written before the failover), WEFT_BENCH_OUT (where the
//! fragment goes).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::bench::{env_num, fmt_s, write_fragment};
use common::{Lab, wait_for};
use weft_proto::tls;
use weft_proto::v1 as pb;
use weft_proto::v1::dispatcher_client::DispatcherClient;
use weft_worker::join::{JoinParams, Joined, join};

const MANAGERS: [&str; 3] = ["m1", "m2", "m3"];
/// The host the simulated nodes run on (no daemon).
const SIM: &str = "sim";
/// The cluster's WireGuard port: a join checks it is free where the node
/// runs, and all simulated nodes share one namespace.
const WG_PORT: &str = "51999";
/// Where each manager serves its metrics (inside its own namespace).
const METRICS: &str = "127.0.0.1:9479";

/// The metrics of manager `host`, as served (empty if none answered).
fn metrics_text(lab: &Lab, host: &str) -> String {
    use std::io::{Read, Write};
    common::in_host(lab, host, async move || {
        let Ok(mut s) = std::net::TcpStream::connect(METRICS) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {METRICS}\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// A manager's runtime lag samples: how many, and how many over 0.512 s
/// and over 2.048 s (`weft_runtime_lag_seconds`' buckets).
#[derive(Clone, Copy, Default)]
struct LeaderLag {
    count: u64,
    over_half: u64,
    over_two: u64,
}

/// Manager `host`'s [`LeaderLag`] so far.
fn runtime_lag(lab: &Lab, host: &str) -> LeaderLag {
    let text = metrics_text(lab, host);
    let sample = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let count = sample("weft_runtime_lag_seconds_count ");
    let over = |le: &str| {
        count - sample(&format!("weft_runtime_lag_seconds_bucket{{le=\"{le}\"}} ")).min(count)
    };
    LeaderLag {
        count,
        over_half: over("0.512"),
        over_two: over("2.048"),
    }
}

/// What the leader's and the simulated side's lags were between `from`
/// (taken with [`Lags::now`]) and now.
#[derive(Clone)]
struct Lags {
    leader: LeaderLag,
    beats: Tally,
    sim: Tally,
}

impl Lags {
    /// Where the counts stand; the simulated side's maxima start again.
    fn now(lab: &Lab, counters: &Counters) -> Lags {
        Lags {
            leader: runtime_lag(lab, "m1"),
            beats: counters.beat_rtt.take(),
            sim: counters.sim_lag.take(),
        }
    }

    /// The same counts, without maxima yet.
    fn without_maxima(mut self) -> Lags {
        (self.beats.max_us, self.sim.max_us) = (0, 0);
        self
    }

    /// Keeps the larger of the simulated side's maxima here and in
    /// `other` (a reading in between).
    fn worst_of(&mut self, other: &Lags) {
        self.beats.max_us = self.beats.max_us.max(other.beats.max_us);
        self.sim.max_us = self.sim.max_us.max(other.sim.max_us);
    }

    /// The figures since `from`, in words.
    fn since(&self, from: &Lags) -> String {
        let (b, s, l) = (&self.beats, &self.sim, &self.leader);
        format!(
            "heartbeats answered after over 1 s: {} of {} (the slowest {:.1} s); the \
             simulated side's runtime woke a timer over 0.5 s late {} of {} times (at worst \
             {:.1} s); the leader's, {} of {} samples (over 2 s: {})",
            b.over.saturating_sub(from.beats.over),
            b.count.saturating_sub(from.beats.count),
            b.max_us as f64 / 1e6,
            s.over.saturating_sub(from.sim.over),
            s.count.saturating_sub(from.sim.count),
            s.max_us as f64 / 1e6,
            l.over_half.saturating_sub(from.leader.over_half),
            l.count.saturating_sub(from.leader.count),
            l.over_two.saturating_sub(from.leader.over_two),
        )
    }
}

/// The dispatcher's counters in the metrics of manager `host` (`name
/// value` lines of the metrics whose name starts `weft_dispatcher_`).
fn dispatcher_metrics(lab: &Lab, host: &str) -> String {
    metrics_text(lab, host)
        .lines()
        .filter(|l| {
            l.starts_with("weft_dispatcher_nodes_marked_down")
                || l.starts_with("weft_dispatcher_config_pushes")
                || l.starts_with("weft_raft_leader_changes")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the simulated nodes count, shared with the test thread.
#[derive(Default)]
struct Counters {
    sessions: AtomicUsize,
    pushes: AtomicU64,
    /// When the last config push came (whole or delta).
    last_push: std::sync::Mutex<Option<Instant>>,
    /// Config bytes received (whole configs and deltas, encoded).
    config_bytes: AtomicU64,
    /// Sessions lost (and opened again).
    lost: AtomicU64,
    /// The managers' addresses, for a node whose leader went away.
    managers: std::sync::Mutex<Vec<String>>,
    /// Pushes that came as deltas.
    deltas: AtomicU64,
    reports: AtomicU64,
    heartbeats: AtomicU64,
    errors: AtomicU64,
    /// Session attempts refused by every manager in a row, and tried again
    /// after a pause.
    retries: AtomicU64,
    /// Failed session attempts: no TLS connection (refused, dropped
    /// handshake), and a connection whose `Session` call was refused (a
    /// follower).
    failed_connect: AtomicU64,
    failed_call: AtomicU64,
    /// One change every node must apply (a node's address in every
    /// config's VXLAN sources), since when, and how long each node took.
    probe: std::sync::Mutex<Option<(String, Instant)>>,
    applied: std::sync::Mutex<Vec<Duration>>,
    /// Heartbeats' round trips, from sent to answered (over 1 s counted).
    beat_rtt: Spread<1000>,
    /// How late the simulated side's runtime woke a timer (sampled every
    /// 100 ms; over 0.5 s counted): its own load delays its heartbeats
    /// that much.
    sim_lag: Spread<500>,
}

/// Durations counted: how many, how many over `OVER_MS`, and the largest
/// since the last [`Spread::take`].
#[derive(Default)]
struct Spread<const OVER_MS: u64> {
    count: AtomicU64,
    over: AtomicU64,
    max_us: AtomicU64,
}

impl<const OVER_MS: u64> Spread<OVER_MS> {
    fn record(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if d > Duration::from_millis(OVER_MS) {
            self.over.fetch_add(1, Ordering::Relaxed);
        }
        self.max_us
            .fetch_max(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counts so far, and the largest since the last take.
    fn take(&self) -> Tally {
        Tally {
            count: self.count.load(Ordering::Relaxed),
            over: self.over.load(Ordering::Relaxed),
            max_us: self.max_us.swap(0, Ordering::Relaxed),
        }
    }
}

/// A [`Spread`]'s counts at one time.
#[derive(Clone, Copy)]
struct Tally {
    count: u64,
    over: u64,
    /// The largest, µs.
    max_us: u64,
}

impl Counters {
    /// Notes when `config` first holds the probe's change on this node.
    fn check_probe(&self, config: &pb::NodeConfig, seen: &mut Option<String>) {
        let probe = self.probe.lock().expect("probe").clone();
        let Some((addr, since)) = probe else { return };
        if seen.as_ref() != Some(&addr) && config.vxlan_allowed_sources.contains(&addr) {
            self.applied.lock().expect("applied").push(since.elapsed());
            *seen = Some(addr);
        }
    }
}

/// The files of a manager's Raft directory and their sizes (`name 1.2
/// MiB`), largest first.
fn raft_files(dir: &std::path::Path) -> String {
    fn walk(p: &std::path::Path, base: &std::path::Path, out: &mut Vec<(u64, String)>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&path, base, out),
                Ok(m) => out.push((
                    m.len(),
                    path.strip_prefix(base)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                )),
                Err(_) => {}
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort_by(|a, b| b.cmp(a));
    files
        .iter()
        .map(|(len, name)| format!("{name} {:.1} MiB", *len as f64 / 1048576.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// p50, p99 and max of `v`, in seconds.
fn percentiles(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| {
        v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, Duration::as_secs_f64)
    };
    (at(0.5), at(0.99), at(1.0))
}

/// The address of simulated node `i` (198.19.0.0/16, inside the test range
/// 198.18.0.0/15; nothing listens on it).
fn sim_addr(i: usize) -> String {
    format!("198.19.{}.{}", i / 250, i % 250 + 1)
}

/// User and system CPU seconds of process `pid` so far, and its resident
/// memory in MiB.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is field 3,
    // utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu = (ticks(11) + ticks(12)) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, rss_kib / 1024.0)
}

/// Opens the session of simulated node `joined` with the leader at
/// one of `managers` (the leader, or all of them), as the agent does: a
/// follower's refusal that names the leader sends the node there at once;
/// on another failure, the next manager after 50 ms until each was tried,
/// then again after a second and a random part of one (the agent waits
/// 0.2-2 s; a herd of nodes reconnecting must spread out). Followers refuse
/// sessions.
async fn open_session(
    joined: &Joined,
    managers: &[String],
    counters: &Counters,
    held: &pb::NodeConfig,
) -> (
    DispatcherClient<tonic::transport::Channel>,
    tonic::Streaming<pb::SessionMessage>,
) {
    let identity = (
        joined.certs.cert_pem.as_str(),
        joined.certs.key_pem.as_str(),
    );
    let digest = if held.version == 0 {
        Vec::new()
    } else {
        weft_proto::config_delta::sources_digest(&held.vxlan_allowed_sources)
    };
    let mut next = usize::from(rand_ms());
    let mut hint: Option<String> = None;
    let mut failures = 0usize;
    loop {
        let addr = hint.take().unwrap_or_else(|| {
            next = next.wrapping_add(1);
            managers[next % managers.len()].clone()
        });
        let attempt = async {
            let channel = tls::channel_to_manager(&addr, &joined.certs.ca_pem, Some(identity))
                .await
                .map_err(|_| {
                    counters.failed_connect.fetch_add(1, Ordering::Relaxed);
                    None
                })?;
            let mut client = DispatcherClient::new(channel);
            let stream = client
                .session(pb::SessionRequest {
                    node_id: joined.node_id.clone(),
                    accepts_deltas: true,
                    sources_digest: digest.clone(),
                    accepts_source_parts: true,
                    accepts_port_deltas: true,
                })
                .await
                .map_err(|st| {
                    counters.failed_call.fetch_add(1, Ordering::Relaxed);
                    st.metadata()
                        .get(weft_worker::agent::LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                })?
                .into_inner();
            Ok::<_, Option<String>>((client, stream))
        };
        match attempt.await {
            Ok(s) => return s,
            Err(Some(leader)) => {
                hint = Some(leader);
                failures = 0;
            }
            Err(None) if !(failures + 1).is_multiple_of(managers.len()) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(None) => {
                failures += 1;
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let jitter = u64::from(rand_ms());
                tokio::time::sleep(Duration::from_millis(1000 + jitter)).await;
            }
        }
    }
}

/// 0-999, different on each call (no crate for it: the clock's nanoseconds
/// mixed with a counter).
fn rand_ms() -> u16 {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    ((n ^ t.wrapping_mul(0xbf58_476d_1ce4_e5b9)) % 1000) as u16
}

/// One simulated node's agent: a session with the leader at `leader`, a
/// heartbeat every period it is told, a report for every config (deltas
/// applied to the config held, as the agent does).
async fn agent(joined: Joined, leader: String, counters: Arc<Counters>) {
    let mut held = pb::NodeConfig::default();
    let (mut client, mut stream) = open_session(&joined, &[leader], &counters, &held).await;
    let mut probe_seen = None;
    let mut parts = weft_proto::config_delta::SourceParts::default();
    counters.sessions.fetch_add(1, Ordering::Relaxed);
    let mut period = Duration::from_secs(1);
    // Heartbeats on a task of their own, as the agent sends them (a slow
    // report must not hold them back).
    let (period_tx, period_rx) = tokio::sync::watch::channel(period);
    let mut beats = Beats(tokio::spawn(heartbeats(
        client.clone(),
        joined.node_id.clone(),
        period_rx.clone(),
        counters.clone(),
    )));
    loop {
        // Failed heartbeats end the session, as on the agent.
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = &mut beats.0 => Err(tonic::Status::unavailable("heartbeats failed")),
        };
        let m = match msg {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => {
                // The leader is gone (the failover round) or stopped
                // answering heartbeats: the next session, on whichever
                // manager leads now, starts with a whole config.
                counters.lost.fetch_add(1, Ordering::Relaxed);
                let managers = counters.managers.lock().expect("managers").clone();
                beats.0.abort();
                (client, stream) = open_session(&joined, &managers, &counters, &held).await;
                parts = Default::default();
                beats = Beats(tokio::spawn(heartbeats(
                    client.clone(),
                    joined.node_id.clone(),
                    period_rx.clone(),
                    counters.clone(),
                )));
                counters.sessions.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        // A part of a config's sources carries no header.
        let p = Duration::from_millis(m.heartbeat_period_ms.max(100));
        if m.sources_part.is_none() && p != period {
            period = p;
            period_tx.send_replace(period);
        }
        // As the agent: a whole config whose sources come in
        // parts is applied once the last part came.
        let config = match (m.config, m.config_delta, m.sources_part) {
            (Some(c), _, _) => {
                counters
                    .config_bytes
                    .fetch_add(prost::Message::encoded_len(&c) as u64, Ordering::Relaxed);
                match parts.config(weft_proto::config_delta::with_kept_sources(c, Some(&held))) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            (None, None, Some(p)) => {
                counters
                    .config_bytes
                    .fetch_add(prost::Message::encoded_len(&p) as u64, Ordering::Relaxed);
                match parts.part(p) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            (None, Some(d), _) => {
                counters
                    .config_bytes
                    .fetch_add(prost::Message::encoded_len(&d) as u64, Ordering::Relaxed);
                counters.deltas.fetch_add(1, Ordering::Relaxed);
                // In place, as the agent could: a copy per delta of
                // 5,000 held addresses for each of thousands of nodes
                // in this one process starved their heartbeats.
                let mut c = std::mem::take(&mut held);
                match weft_proto::config_delta::apply_in_place(&mut c, &d) {
                    Ok(()) => c,
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            (None, None, None) => continue,
        };
        counters.pushes.fetch_add(1, Ordering::Relaxed);
        *counters.last_push.lock().expect("last push") = Some(Instant::now());
        counters.check_probe(&config, &mut probe_seen);
        let tasks = config
            .tasks
            .iter()
            .map(|t| {
                let mut status = pb::TaskStatus::default();
                status.set_state(pb::TaskState::Running);
                pb::TaskReport {
                    task_id: t.id.clone(),
                    status: Some(status),
                }
            })
            .collect();
        let report = pb::StatusReport {
            node_id: joined.node_id.clone(),
            applied_version: config.version,
            tasks,
            ..Default::default()
        };
        held = config;
        match client.report_status(report).await {
            Ok(_) => counters.reports.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A simulated node's heartbeat task, aborted with its agent.
struct Beats(tokio::task::JoinHandle<()>);

impl Drop for Beats {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A simulated node's heartbeats on one session, as the agent sends them
/// (`weft_worker::agent::heartbeats`), counted. Ends when one fails (the
/// node then opens a new session, as the agent does) or when the task is
/// aborted.
async fn heartbeats(
    client: DispatcherClient<tonic::transport::Channel>,
    node_id: String,
    period: tokio::sync::watch::Receiver<Duration>,
    counters: Arc<Counters>,
) {
    let on_beat = move |rtt| {
        counters.heartbeats.fetch_add(1, Ordering::Relaxed);
        counters.beat_rtt.record(rtt);
    };
    weft_worker::agent::heartbeats(client, node_id, period, on_beat).await;
}

/// The simulated nodes: joined one after the other through `via`, then
/// each running [`agent`] against `leader`, on a runtime whose threads live
/// in the namespace pinned at `pin`. Returns when `n` joined (and how long
/// that took, and a channel that joins one more node `i` on request, the
/// probe's change); the agents run until the process ends.
fn start_nodes(
    pin: PathBuf,
    via: String,
    leader: String,
    token: String,
    n: usize,
    counters: Arc<Counters>,
) -> (Duration, tokio::sync::mpsc::UnboundedSender<usize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&pin).expect("netns pin");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        // Threads made from here on are in the namespace too.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            tls::install_crypto_provider();
            // This runtime's own lag: heartbeats wait that long to go out.
            let lag = counters.clone();
            tokio::spawn(async move {
                loop {
                    let due = tokio::time::Instant::now() + Duration::from_millis(100);
                    tokio::time::sleep_until(due).await;
                    lag.sim_lag
                        .record(tokio::time::Instant::now().saturating_duration_since(due));
                }
            });
            let t0 = Instant::now();
            let mut joined = Vec::with_capacity(n);
            for i in 0..n {
                let params = JoinParams {
                    hostname: format!("sim{i}"),
                    advertise_addr: sim_addr(i),
                    ..Default::default()
                };
                match join(&via, &token, params).await {
                    Ok(j) => joined.push(j),
                    Err(e) => panic!("simulated node {i} could not join: {e}"),
                }
            }
            let took = t0.elapsed();
            for j in joined {
                tokio::spawn(agent(j, leader.clone(), counters.clone()));
            }
            let (more_tx, mut more) = tokio::sync::mpsc::unbounded_channel();
            tx.send((took, more_tx)).expect("test thread");
            // One more node on request: its address is a change every
            // node's config gets (the probe's clock starts before the join).
            while let Some(i) = more.recv().await {
                let params = JoinParams {
                    hostname: format!("sim{i}"),
                    advertise_addr: sim_addr(i),
                    ..Default::default()
                };
                *counters.probe.lock().expect("probe") = Some((sim_addr(i), Instant::now()));
                match join(&via, &token, params).await {
                    Ok(j) => drop(tokio::spawn(agent(j, leader.clone(), counters.clone()))),
                    Err(e) => panic!("simulated node {i} could not join: {e}"),
                }
            }
            std::future::pending::<()>().await;
        });
    });
    rx.recv_timeout(Duration::from_secs(3600))
        .expect("the simulated nodes joined")
}

#[test]
#[ignore = "benchmark: bench/nodes.sh"]
fn managers_hold_simulated_nodes() {
    let n = env_num("WEFT_BENCH_NODES", 1000) as usize;
    let replicas = env_num("WEFT_BENCH_NODE_REPLICAS", (n / 10).max(1) as u64);
    let window = Duration::from_secs(env_num("WEFT_BENCH_IDLE_WINDOW", 20));
    let heartbeat = env_num("WEFT_BENCH_HEARTBEAT", 1);
    let on_network = env_num("WEFT_BENCH_NODE_NETWORK", 0) == 1;
    let publish = env_num("WEFT_BENCH_NODE_PUBLISH", 0) == 1;
    let mut hosts: Vec<&str> = MANAGERS.to_vec();
    hosts.push(SIM);
    let mut lab = Lab::new("bnodes", &hosts);
    if let Ok(filter) = std::env::var("WEFT_BENCH_DAEMON_LOG") {
        lab.set_daemon_env("WEFT_LOG", &filter);
    }
    for m in MANAGERS {
        lab.start_with(m, &["--metrics-addr", METRICS]);
    }
    let period = format!("{heartbeat}s");
    let (wt, mt) = lab.init("m1", &["--heartbeat-period", &period, "--wg-port", WG_PORT]);
    for m in &MANAGERS[1..] {
        lab.join(m, &mt, "m1");
    }
    common::wait_voters(&lab, "m1", &MANAGERS[1..]);
    let leader = format!("{}:4377", lab.addr("m1"));
    let pids: Vec<u32> = MANAGERS
        .iter()
        .map(|m| lab.pid(m).expect("manager pid"))
        .collect();
    let before: Vec<(f64, f64)> = pids.iter().map(|p| usage(*p)).collect();

    let counters = Arc::new(Counters::default());
    *counters.managers.lock().expect("managers") = MANAGERS
        .iter()
        .map(|m| format!("{}:4377", lab.addr(m)))
        .collect();
    let (join_took, more_nodes) = start_nodes(
        lab.host_netns(SIM),
        leader.clone(),
        leader,
        wt,
        n,
        counters.clone(),
    );
    let after_join: Vec<(f64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    eprintln!("{n} nodes joined in {join_took:?}");
    let ready = wait_for("every node Ready", Duration::from_secs(600), || {
        let rows = lab.node_ls("m1");
        rows.iter().filter(|r| r.status == "Ready").count() == n + MANAGERS.len()
    });
    eprintln!(
        "every node Ready {ready:?} after the last join (sessions {}, retries {})",
        counters.sessions.load(Ordering::Relaxed),
        counters.retries.load(Ordering::Relaxed)
    );
    let mut rows = format!(
        "| {n} joins, one after the other | {} s ({:.0} joins/s) |\n\
         | last join → every node Ready in `node ls` | {} s |\n",
        fmt_s(join_took.as_secs_f64()),
        n as f64 / join_took.as_secs_f64(),
        fmt_s(ready.as_secs_f64())
    );
    rows += &idle_rows(
        &lab,
        &counters,
        &pids,
        window,
        &before,
        &after_join,
        join_took,
    );
    rows += &service_row(&lab, &counters, replicas, on_network, publish);
    rows += &probe_rows(&lab, &counters, &more_nodes, n, pids[0]);
    if let Ok(dir) = std::env::var("WEFT_BENCH_KEEP_LOGS") {
        std::fs::create_dir_all(&dir).expect("log dir");
        std::fs::write(format!("{dir}/m1.log"), lab.daemon_log("m1")).expect("m1's log");
    }
    // Errors before the kill count; reports cut by it do not.
    let errors = counters.errors.load(Ordering::Relaxed);
    rows += &failover_row(&mut lab, &counters, n, errors);

    let retries = counters.retries.load(Ordering::Relaxed);
    let mut md = String::from("## Scale: simulated nodes on three managers\n\n");
    md.push_str(&format!(
        "Three managers (weft daemons, release build, each in a namespace host of its own; heartbeat \
         {heartbeat} s) and **{n} simulated worker nodes** in one process on a fourth host: each joined with \
         the worker token (its own key, CSR and certificate; one after the other), then keeps a \
         mutual-TLS session with the leader (its own HTTP/2 connection), heartbeats every period \
         and answers every pushed config with a status report that has every assigned task \
         running. The managers' CPU is the daemon process's user + system time (`/proc/PID/stat`), \
         % of one core; memory is its resident set. The nodes open their sessions all at once; \
         a manager runs 256 TLS handshakes at a time and lets up to 8,192 more connections wait \
         their turn (3 s at most); a node refused by every manager in a row tries again after \
         1-2 s: {retries} such retries. A follower's refusal that names the leader sends the node \
         there at once, as the agent does. {errors} errors on the simulated side.\n\n"
    ));
    md.push_str("| what | figure |\n|---|---|\n");
    md.push_str(&rows);
    write_fragment("nodes.md", &md);
    assert_eq!(errors, 0, "errors on the simulated nodes");
    drop(lab);
}

/// Config pushes, bytes and deltas the simulated nodes got so far.
fn pushed(c: &Counters) -> (u64, u64, u64) {
    (
        c.pushes.load(Ordering::Relaxed),
        c.config_bytes.load(Ordering::Relaxed),
        c.deltas.load(Ordering::Relaxed),
    )
}

/// Idle: heartbeats only, over `window`; each manager's CPU then and
/// during the joins, and its memory.
fn idle_rows(
    lab: &Lab,
    counters: &Counters,
    pids: &[u32],
    window: Duration,
    before: &[(f64, f64)],
    after_join: &[(f64, f64)],
    join_took: Duration,
) -> String {
    let (hb0, (push0, _, _)) = (
        counters.heartbeats.load(Ordering::Relaxed),
        pushed(counters),
    );
    let idle0: Vec<(f64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    let lag0 = Lags::now(lab, counters);
    std::thread::sleep(window);
    let lags = Lags::now(lab, counters).since(&lag0);
    let idle1: Vec<(f64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    let beats = counters.heartbeats.load(Ordering::Relaxed) - hb0;
    let idle_pushes = pushed(counters).0 - push0;
    let w = window.as_secs_f64();
    let cpu =
        |a: &[(f64, f64)], b: &[(f64, f64)], i: usize, secs: f64| 100.0 * (b[i].0 - a[i].0) / secs;
    let mut md = format!(
        "| idle window | {w:.0} s: {beats} heartbeats ({:.0}/s), {idle_pushes} config pushes; {lags} |\n",
        beats as f64 / w
    );
    for (i, m) in MANAGERS.iter().enumerate() {
        md.push_str(&format!(
            "| {m}{} | CPU idle {:.1} %, during the joins {:.1} %; memory {:.0} MiB idle ({:.0} MiB before the nodes) |\n",
            if i == 0 { " (leader)" } else { "" },
            cpu(&idle0, &idle1, i, w),
            cpu(before, after_join, i, join_took.as_secs_f64()),
            idle1[i].1,
            before[i].1,
        ));
    }
    md
}

/// A service of `replicas` (one per ten nodes) until all run.
fn service_row(
    lab: &Lab,
    counters: &Counters,
    replicas: u64,
    on_network: bool,
    publish: bool,
) -> String {
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--name",
        "spread",
        "--constraint",
        "node.role==worker",
    ];
    if on_network {
        // Room for a replica on every node of the largest cluster.
        lab.overlay_network("m1", "10.128.0.0/16", "spread");
        args.extend(["--network", "spread"]);
    }
    if publish {
        args.extend(["--publish", "8080:80"]);
    }
    let replicas_text = replicas.to_string();
    args.extend(["--replicas", &replicas_text, "--", "sleep", "36000"]);
    let (push1, bytes1, deltas1) = pushed(counters);
    let lag0 = Lags::now(lab, counters);
    let t = Instant::now();
    lab.weft("m1", &args);
    let created = t.elapsed();
    // A timeline every 10 s, on stderr: how the creation goes, and whose
    // lag holds heartbeats back if nodes are marked down.
    // The maxima in `lag0` are from before the creation.
    let (mut last, mut worst) = (lag0.clone(), lag0.clone().without_maxima());
    let mut next = Duration::from_secs(10);
    let running = wait_for("every replica running", Duration::from_secs(600), || {
        let up = lab.running_on("m1", "spread").len() as u64;
        if t.elapsed() >= next {
            next += Duration::from_secs(10);
            let now = Lags::now(lab, counters);
            eprintln!(
                "creation +{:.0}s: {up} of {replicas} running; {}; {}",
                t.elapsed().as_secs_f64(),
                now.since(&last),
                dispatcher_metrics(lab, "m1")
            );
            worst.worst_of(&now);
            last = now;
        }
        up == replicas
    }) + created;
    // The replicas' changes (running, serving) reach every node whose
    // config lists them after `service ps` shows them running: the push
    // that brought the last of them is the creation's end for every node.
    let quiet = Duration::from_secs(2);
    wait_for("the configs to settle", Duration::from_secs(600), || {
        (counters.last_push.lock().expect("last push")).is_none_or(|at| at.elapsed() >= quiet)
    });
    let settled = (counters.last_push.lock().expect("last push"))
        .map_or(Duration::ZERO, |at| at.duration_since(t));
    let (push2, bytes2, deltas2) = pushed(counters);
    let mut lags = Lags::now(lab, counters);
    lags.worst_of(&worst);
    let lags = lags.since(&lag0);
    let nodes_with_task: BTreeSet<String> = lab.running_on("m1", "spread").into_iter().collect();
    format!(
        "| `service create --replicas {replicas}`{}{} → all running | {} s; every node's config settled (the last push) {} s after the create ({} nodes got a task, {} config pushes, {} of them deltas, {} config bytes in all; {lags}) |\n",
        if on_network { " on an overlay" } else { "" },
        if publish {
            " publishing 8080 through the ingress network"
        } else {
            ""
        },
        fmt_s(running.as_secs_f64()),
        fmt_s(settled.as_secs_f64()),
        nodes_with_task.len(),
        push2 - push1,
        deltas2 - deltas1,
        bytes2 - bytes1,
    )
}

/// One change every node applies: one more node joins, and its address
/// joins every config's VXLAN sources (a delta of one address each). Then
/// the leader's memory and Raft files.
fn probe_rows(
    lab: &Lab,
    counters: &Counters,
    more_nodes: &tokio::sync::mpsc::UnboundedSender<usize>,
    n: usize,
    leader_pid: u32,
) -> String {
    let (_, bytes0, deltas0) = pushed(counters);
    more_nodes.send(n).expect("simulated nodes");
    wait_for(
        "every node applied the new node's address",
        Duration::from_secs(300),
        || counters.applied.lock().expect("applied").len() > n,
    );
    let (_, bytes1, deltas1) = pushed(counters);
    let (p50, p99, max) = percentiles(&mut counters.applied.lock().expect("applied"));
    eprintln!("one change applied by all: p50 {p50:.3} s, p99 {p99:.3} s, max {max:.3} s");
    let leader_rss = usage(leader_pid).1;
    let raft = raft_files(&lab.data_dir("m1").join("raft"));
    format!(
        "| one change applied by every node (one more node joins; its address goes into {n} configs) | p50 {} s, p99 {} s, max {} s ({} deltas, {} config bytes in all); leader memory after it {leader_rss:.0} MiB |\n\
         | the leader's Raft directory then | {raft} |\n",
        fmt_s(p50),
        fmt_s(p99),
        fmt_s(max),
        deltas1 - deltas0,
        bytes1 - bytes0,
    )
}

/// The leader killed: time until every node has a session again (with the
/// new leader, the only manager that accepts them).
fn failover_row(lab: &mut Lab, counters: &Counters, n: usize, errors: u64) -> String {
    let sessions = counters.sessions.load(Ordering::Relaxed);
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (conn0, call0, retry0) = (
        load(&counters.failed_connect),
        load(&counters.failed_call),
        load(&counters.retries),
    );
    let cpu0: Vec<f64> = MANAGERS[1..]
        .iter()
        .map(|m| usage(lab.pid(m).expect("manager pid")).0)
        .collect();
    let sim0 = usage(std::process::id()).0;
    lab.kill9("m1");
    let t0 = Instant::now();
    // A timeline every half second: sessions open again, failed attempts
    // (no connection / call refused) and retries after a backoff.
    let mut next = Duration::ZERO;
    let failover = wait_for(
        "every node back in session",
        Duration::from_secs(300),
        || {
            let back = counters.sessions.load(Ordering::Relaxed) - sessions;
            if t0.elapsed() >= next {
                next += Duration::from_millis(500);
                eprintln!(
                    "failover +{:.1}s: {back} back, {} no connection, {} refused calls, {} backoffs",
                    t0.elapsed().as_secs_f64(),
                    load(&counters.failed_connect) - conn0,
                    load(&counters.failed_call) - call0,
                    load(&counters.retries) - retry0,
                );
            }
            back > n
        },
    );
    let cpu: Vec<String> = MANAGERS[1..]
        .iter()
        .zip(&cpu0)
        .map(|(m, c0)| {
            let c = usage(lab.pid(m).expect("manager pid")).0 - c0;
            format!("{m} {:.0} %", 100.0 * c / failover.as_secs_f64())
        })
        .collect();
    let sim_cpu = 100.0 * (usage(std::process::id()).0 - sim0) / failover.as_secs_f64();
    eprintln!(
        "leader killed: every session open again after {failover:?} ({} no connection, {} refused calls, {} backoffs; CPU {}, simulated nodes {sim_cpu:.0} %)",
        load(&counters.failed_connect) - conn0,
        load(&counters.failed_call) - call0,
        load(&counters.retries) - retry0,
        cpu.join(", "),
    );
    let mut marked_down = 0.0;
    for m in &MANAGERS[1..] {
        let metrics = dispatcher_metrics(lab, m);
        eprintln!("{m}: {metrics}");
        // Which nodes the new leader marked down, and why (the first few).
        let log = lab.daemon_log(m);
        for line in log
            .lines()
            .filter(|l| l.contains("node marked down"))
            .take(5)
        {
            eprintln!("{m}: {line}");
        }
        marked_down += metrics
            .split("; ")
            .filter_map(|l| l.strip_prefix("weft_dispatcher_nodes_marked_down_total "))
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>();
    }
    let followers: Vec<String> = MANAGERS[1..]
        .iter()
        .map(|m| format!("{m} {:.0} MiB", usage(lab.pid(m).expect("manager pid")).1))
        .collect();
    let cut_reports = counters.errors.load(Ordering::Relaxed) - errors;
    format!(
        "| leader killed (SIGKILL) → every node in session with the new leader | {} s ({cut_reports} reports cut by the kill; {marked_down} nodes marked down by the new leader; CPU during it {}, simulated nodes {sim_cpu:.0} %; memory after it: {}) |\n",
        fmt_s(failover.as_secs_f64()),
        cpu.join(", "),
        followers.join(", ")
    )
}
