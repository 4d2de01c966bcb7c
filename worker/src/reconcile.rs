//! The node's local loop: make the kernel and the task runtime match the
//! config the cluster pushed.
//!
//! ```text
//!  NodeConfig (agent watch, or the last one on disk) ──▶ desired_from_config (pure)
//!        │                                                     │
//!        │   stop tasks no longer wanted ◀─────────────────────┤
//!        │   make new tasks (namespace, container; held) ◀──────┤  (once a pass went through)
//!        │   Dataplane::apply(desired)   ◀─────────────────────┤  (level-triggered:
//!        │   run them / start the rest   ◀─────────────────────┘   on change and every few s)
//!        ▼
//!  StatusReport{applied version, error, task states} ──▶ agent ──▶ dispatcher
//! ```
//!
//! The last config is persisted, so a restarted daemon with no manager in
//! reach converges to it anyway: the data plane survives the control plane.
//!
//! Starting and removing a task run in the background ([`jobs`]): a task's
//! grace period never holds up the others.

mod desired;
mod jobs;
mod plan;

pub use desired::{desired_from_config, gateway_of};
pub use plan::{TaskPlan, TaskView, task_status};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use weft_overlay::model::TaskId;
use weft_overlay::{Dataplane, durable};
use weft_proto::v1 as pb;

use crate::runtime::{ContainerSpec, NetworkReady, StopPolicy, TaskRuntime, TaskSpec, TaskState};

/// How often the loop runs a pass without any wake-up. The data plane then
/// re-reads only what its watchers flagged (and, now and then, a few
/// namespaces as a safety net), so an idle pass reads next to nothing.
pub const RECHECK: Duration = Duration::from_secs(5);

/// A config field that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {what} {value:?} in the node config")]
pub struct BadConfig {
    /// Which field.
    pub what: &'static str,
    /// Its value.
    pub value: String,
}

/// Whether `path` is a network namespace (an nsfs file).
fn netns_exists(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// The parts the loop drives.
pub struct Reconciler {
    /// Node ID, for reports.
    pub node_id: String,
    /// The pushed config.
    pub config: watch::Receiver<Option<Arc<pb::NodeConfig>>>,
    /// Where the last config is kept across restarts.
    pub state_file: PathBuf,
    /// Kernel effects.
    pub dataplane: Arc<dyn Dataplane>,
    /// Task processes.
    pub runtime: Arc<dyn TaskRuntime>,
    /// Where reports go (the agent).
    pub report: Box<dyn Fn(pb::StatusReport) + Send + Sync>,
    /// The host's resolvers, for names that are not the cluster's.
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// This node's WireGuard private key (0600; never leaves the node).
    pub wg_key: PathBuf,
    /// Proxy variables every task gets unless it sets its own
    /// ([`proxy_env`]).
    pub proxy: BTreeMap<String, String>,
    /// The daemon's `--bridge-subnet`, reported so the managers keep this
    /// node's default bridge network.
    pub bridge_subnet: String,
    /// Wakes the loop for a pass now (the daemon, once it has cleared a
    /// task's ended run for `weft start`, so the task starts at once
    /// rather than at the next periodic check).
    pub wake: Arc<tokio::sync::Notify>,
    /// Where Docker endpoints' containers are, laid over the pushed config
    /// ([`crate::sandboxes::Sandboxes::fill`]); set them, then `wake`.
    pub sandboxes: Arc<crate::sandboxes::Sandboxes>,
    /// Told once the saved config is applied (the first pass after a
    /// restart is done, whatever its outcome), or at once when there is no
    /// saved config: the daemon then tells systemd it is ready.
    pub settled: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The proxy variables of `proxy` (upper-case names such as `HTTP_PROXY`)
/// in both cases, minus every kind the task sets itself in either case.
pub fn proxy_env(
    proxy: &BTreeMap<String, String>,
    task: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in proxy {
        let lower = k.to_ascii_lowercase();
        let upper = k.to_ascii_uppercase();
        if task.contains_key(&lower) || task.contains_key(&upper) {
            continue;
        }
        out.insert(upper, v.clone());
        out.insert(lower, v.clone());
    }
    out
}

/// The data plane passes, numbered: a start set going before pass N runs
/// its task's process once pass N, or a later one, went through (`done`
/// holds the number of the last that did).
struct Passes {
    done: watch::Sender<u64>,
    next: u64,
    last_ok: bool,
    /// What the last pass that went through wanted of the kernel: a pass
    /// that wants the same and still changes something repairs drift.
    last_desired: Option<weft_overlay::DesiredNode>,
}

impl Reconciler {
    /// Runs until `stop` flips to true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if let Err(e) = self.runtime.adopt().await {
            tracing::warn!(error = %e, "could not adopt existing tasks");
        }
        let mut events = self.runtime.subscribe();
        let mut inflight = jobs::Inflight::new();
        let probers = crate::health::Probers::new();
        // Someone else changing weft's nftables tables (a firewall reload,
        // `nft flush ruleset`) wakes the loop, which puts them back.
        let mut nft = self.dataplane.nft_changes();
        // A link, address, route or rule changed in one of the node's
        // namespaces: the pass re-reads just those.
        let mut observed = self.dataplane.observed_changes();
        let mut current: Option<Arc<pb::NodeConfig>> = self.load();
        if let Some(c) = &current {
            crate::metrics::METRICS.config(c);
        }
        // The first pass after a restart runs on the saved config, before
        // any manager answers: how long it takes is how long the node's
        // tasks wait for names and encrypted traffic.
        let mut first_pass = Some((std::time::Instant::now(), current.is_some()));
        if current.is_none()
            && let Some(settled) = self.settled.take()
        {
            let _ = settled.send(());
        }
        let mut last_report: Option<pb::StatusReport> = None;
        let mut passes = Passes {
            done: watch::Sender::new(0),
            next: 0,
            last_ok: false,
            last_desired: None,
        };
        loop {
            let pushed = self.config.borrow_and_update().clone();
            if let Some(c) = pushed
                && current.as_ref().is_none_or(|cur| **cur != *c)
            {
                self.save(&c);
                crate::metrics::METRICS.config(&c);
                current = Some(c);
            }
            if let Some(c) = current.as_ref().map(|c| self.sandboxes.fill(c)) {
                // Whatever woke the loop, tasks whose state changed since
                // the last report (a start that ended, an exit) are
                // reported before the data plane pass.
                if let Some(last) = &last_report {
                    let early = self.early_report(&c, last, &inflight, &probers);
                    if early.tasks != last.tasks {
                        (self.report)(early);
                    }
                }
                let report = self
                    .converge(&c, &mut inflight, &probers, &mut passes)
                    .await;
                crate::metrics::METRICS.report(&report);
                last_report = Some(report.clone());
                if let Some((started, saved)) = first_pass.take() {
                    tracing::info!(
                        ms = started.elapsed().as_millis() as u64,
                        from_saved_config = saved,
                        ok = report.apply_error.is_empty(),
                        "first data plane pass done"
                    );
                    if let Some(settled) = self.settled.take() {
                        let _ = settled.send(());
                    }
                }
                (self.report)(report);
            }
            let woken_by = tokio::select! {
                _ = stop.changed() => break,
                r = self.config.changed() => if r.is_err() { break } else { "config" },
                _ = events.recv() => "task event",
                _ = inflight.next() => "job done",
                () = probers.changed() => "health",
                _ = self.wake.notified() => "wake",
                r = async {
                    match nft.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => { if r.is_err() { nft = None } "nftables" },
                r = async {
                    match observed.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => { if r.is_err() { observed = None } "kernel change" },
                _ = tokio::time::sleep(RECHECK) => "timer",
            };
            tracing::trace!(woken_by, "reconcile loop woken");
        }
        // Starts still waiting for a pass give up (and clean up) rather
        // than hold the stop.
        drop(passes);
        inflight.shutdown().await;
    }

    fn load(&self) -> Option<Arc<pb::NodeConfig>> {
        load_config(&self.state_file).map(Arc::new)
    }

    fn save(&self, c: &pb::NodeConfig) {
        if let Err(e) = save_config(&self.state_file, c) {
            tracing::warn!(error = %e, "could not persist the node config");
        }
    }

    /// One pass: set removals going for tasks no longer wanted, set starts
    /// going for tasks not yet known (their processes held until the pass
    /// went through), converge the kernel; returns the report.
    async fn converge(
        &self,
        c: &pb::NodeConfig,
        inflight: &mut jobs::Inflight,
        probers: &crate::health::Probers,
        passes: &mut Passes,
    ) -> pb::StatusReport {
        let view = self.view(inflight, probers);
        let known: Vec<_> = view.known.values().cloned().collect();
        inflight.observe(c, &known);
        for id in plan::removals(&c.tasks, &view) {
            tracing::info!(task = %id, "removing task no longer assigned here");
            inflight.remove(self.runtime.clone(), &id);
        }
        passes.next += 1;
        let this_pass = passes.next;
        // New tasks start now when the last pass went through: each one's
        // namespace is made empty, its container made in it while this
        // pass wires it, and its process runs once the pass is done. After
        // a failed pass they wait for one that goes through, as before.
        if passes.last_ok {
            let early = plan::tasks(&c.tasks, &self.view(inflight, probers), true);
            let ready = NetworkReady::after(passes.done.subscribe(), this_pass);
            self.start_tasks(c, &early.start, inflight, &ready, true)
                .await;
        }
        let mut error = String::new();
        let wg_public_key = match self.ensure_wg_key(c.wg_key_generation) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "no WireGuard key");
                String::new()
            }
        };
        let t_plane = std::time::Instant::now();
        let desired = desired_from_config(&inflight.plane_config(c), &self.wg_key);
        let desired_us = t_plane.elapsed().as_micros() as u64;
        match desired {
            Ok(mut d) => {
                d.dns_upstreams = self.dns_upstreams.clone();
                let dp = &self.dataplane;
                for t in desired::unwirable(&d, |t| dp.task_netns(t), netns_exists) {
                    tracing::info!(task = %t, "a foreign container's namespace is gone before it was wired: left out");
                    d.tasks.remove(&t);
                }
                match self.dataplane.apply(&d).await {
                    Ok(applied) => {
                        if !applied.ops.is_empty() && passes.last_desired.as_ref() == Some(&d) {
                            crate::metrics::METRICS.drift_repairs.inc();
                        }
                        passes.last_desired = Some(d);
                    }
                    Err(e) => {
                        error = format!("data plane: {e}");
                        passes.last_desired = None;
                    }
                }
            }
            Err(e) => error = e.to_string(),
        }
        crate::metrics::METRICS.pass(error.is_empty(), t_plane.elapsed());
        let plane_ms = t_plane.elapsed().as_millis() as u64;
        if !error.is_empty() {
            tracing::warn!(%error, version = c.version, "config not fully applied");
        }
        passes.last_ok = error.is_empty();
        if passes.last_ok {
            passes.done.send_replace(this_pass);
        }
        // A fresh snapshot: starts may have ended during the data plane
        // pass, and the removals and starts just set going count.
        let view = self.view(inflight, probers);
        let plan = plan::tasks(&c.tasks, &view, error.is_empty());
        self.start_tasks(c, &plan.start, inflight, &NetworkReady::now(), false)
            .await;
        probers.sync(&self.runtime, plan.checked);
        let tasks = plan.reports;
        tracing::debug!(
            version = c.version,
            plane_ms,
            desired_us,
            tasks = tasks.len(),
            starting = tasks
                .iter()
                .filter(|t| t
                    .status
                    .as_ref()
                    .is_some_and(|s| s.state() == pb::TaskState::Starting))
                .count(),
            "converge pass"
        );
        let handshakes = self
            .dataplane
            .wg_handshakes()
            .into_iter()
            .map(|(public_key, t)| pb::PeerHandshake {
                public_key,
                last_handshake_ms: t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            })
            .collect();
        pb::StatusReport {
            node_id: self.node_id.clone(),
            applied_version: if error.is_empty() { c.version } else { 0 },
            apply_error: error,
            tasks,
            wg_public_key,
            handshakes,
            bridge_subnet: self.bridge_subnet.clone(),
            resources: Some(crate::capacity::node()),
            version: crate::VERSION.to_string(),
            // The agent adds it when the leader does not have it.
            images: None,
        }
    }

    /// Sets the starts of the assigned tasks `ids` going, each run once
    /// `ready`; with `prepare`, only those whose namespace the data plane
    /// could make now (the rest wait for the pass).
    async fn start_tasks(
        &self,
        c: &pb::NodeConfig,
        ids: &[String],
        inflight: &mut jobs::Inflight,
        ready: &NetworkReady,
        prepare: bool,
    ) {
        for id in ids {
            let Some(t) = c.tasks.iter().find(|t| &t.id == id) else {
                continue;
            };
            // A foreign container's namespace is its runtime's: nothing
            // to make ahead, it is adopted by the pass.
            if prepare && t.external.is_some() {
                continue;
            }
            // A Docker endpoint still being handed to dockerd has no
            // namespace to run in yet.
            if t.external.as_ref().is_some_and(|e| e.ifname.is_empty()) {
                continue;
            }
            if prepare && t.network_mode != "host" {
                match self.dataplane.prepare_task(&TaskId(t.id.clone())).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::debug!(task = %t.id, error = %e, "namespace not made ahead of the pass");
                        continue;
                    }
                }
            }
            inflight.start(self.runtime.clone(), self.task_spec(t), ready.clone());
        }
    }

    /// A snapshot of what the node knows of its tasks now, for the
    /// planner ([`plan`]).
    fn view(&self, inflight: &jobs::Inflight, probers: &crate::health::Probers) -> TaskView {
        let known: BTreeMap<String, crate::runtime::TaskStatus> = self
            .runtime
            .list()
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let mut v = inflight.view();
        for (id, s) in &known {
            if matches!(s.state, TaskState::Running { .. })
                && let Some(check) = self.runtime.health_check(id)
            {
                if let Some(h) = probers.health(id) {
                    v.health.insert(id.clone(), h);
                }
                v.checks.insert(id.clone(), check);
            }
        }
        v.pulling = v
            .starting
            .iter()
            .filter(|id| self.runtime.pulling(id))
            .cloned()
            .collect();
        v.known = known;
        v
    }

    /// The last pass's report with its tasks' states as they are now: sent
    /// before each pass when they changed (a start that ended, an exit), so
    /// a task that runs reaches its service's VIP and DNS without waiting
    /// for the data plane pass (100-300 ms with a few tasks on a loaded
    /// machine). Tasks not started yet are left to that pass.
    fn early_report(
        &self,
        c: &pb::NodeConfig,
        last: &pb::StatusReport,
        inflight: &jobs::Inflight,
        probers: &crate::health::Probers,
    ) -> pb::StatusReport {
        let tasks = plan::tasks(&c.tasks, &self.view(inflight, probers), false).reports;
        pb::StatusReport {
            tasks,
            ..last.clone()
        }
    }

    /// What the runtime runs for the assigned task `t`.
    fn task_spec(&self, t: &pb::TaskConfig) -> TaskSpec {
        let host = t.network_mode == "host";
        let own: BTreeMap<String, String> = t.env.clone().into_iter().collect();
        let mut env = proxy_env(&self.proxy, &own);
        env.extend(own);
        TaskSpec {
            id: t.id.clone(),
            name: t.name.clone(),
            command: t.command.clone(),
            env,
            // Host mode: the daemon's own namespace (the shim opens it
            // while the daemon is alive to start it).
            netns: if host {
                PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
            } else {
                self.dataplane.task_netns(&TaskId(t.id.clone()))
            },
            resolv_conf: if host {
                None
            } else {
                self.dataplane.resolv_conf()
            },
            hostname: if host {
                None
            } else {
                let given = t.container.as_ref().map(|c| c.hostname.clone());
                Some(
                    given
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| t.name.clone()),
                )
            },
            container: t.container.as_ref().map(|c| {
                let mounts = weft_proto::isolation::mounts_from_wire(&c.mounts);
                Box::new(ContainerSpec {
                    image: c.image.clone(),
                    entrypoint: c.has_entrypoint.then(|| c.entrypoint.clone()),
                    workdir: Some(c.workdir.clone()).filter(|w| !w.is_empty()),
                    user: Some(c.user.clone()).filter(|u| !u.is_empty()),
                    read_only: c.read_only,
                    stdio: crate::runtime::StdioOpts {
                        open_stdin: c.open_stdin,
                        tty: c.tty,
                        attach_wait: c.attach_wait,
                        size: c.tty_size.as_ref().and_then(|z| {
                            Some((u16::try_from(z.width).ok()?, u16::try_from(z.height).ok()?))
                        }),
                    },
                    limits: crate::capacity::limits(t.resources.as_ref()),
                    health: t.health.as_ref().map(crate::health::HealthOpts::from_wire),
                    cap_add: c.cap_add.clone(),
                    cap_drop: c.cap_drop.clone(),
                    seccomp_unconfined: c.seccomp_unconfined,
                    no_new_privileges: c.no_new_privileges,
                    bad_mounts: mounts.as_ref().err().map(ToString::to_string),
                    registry_auth: registry_auth(t.registry_auth.as_ref(), &c.image),
                    mounts: mounts.unwrap_or_default(),
                })
            }),
            stop: stop_policy(t.stop.as_ref()),
            log: crate::logs::log_options(t.log.as_ref()),
            external: t.external.as_ref().map(|e| PathBuf::from(&e.netns)),
        }
    }

    /// Loads this node's WireGuard key, or makes one; makes a fresh one
    /// when the cluster asks for a newer generation. Returns the public key.
    fn ensure_wg_key(&self, generation: u64) -> Result<String, weft_overlay::wg::WgError> {
        use weft_overlay::wg::keys;
        let gen_file = self.wg_key.with_extension("generation");
        let have: u64 = std::fs::read_to_string(&gen_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let key = if generation > have || !self.wg_key.exists() {
            let key = keys::generate();
            keys::write_private_key(&self.wg_key, &key)?;
            // After the key: a crash between the two leaves the new key
            // with the old generation, and the next pass makes one more
            // key, which is harmless; the other order could keep an old
            // key the cluster asked to replace.
            let written = generation.to_string();
            if let Err(e) = durable::write_atomic(&gen_file, written.as_bytes(), 0o600) {
                tracing::warn!(error = %e, "could not record the key generation");
            }
            if generation > have {
                tracing::info!(generation, "new WireGuard key pair");
            }
            key
        } else {
            keys::load_or_generate(&self.wg_key)?
        };
        Ok(key.public_key())
    }
}

/// The node config last saved at `path`; `None` if there is none or it
/// does not decode (the managers send a fresh one).
pub fn load_config(path: &Path) -> Option<pb::NodeConfig> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the saved node config");
            return None;
        }
    };
    match pb::NodeConfig::decode(bytes.as_slice()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the saved node config does not decode; waiting for the managers");
            None
        }
    }
}

/// Saves `c` at `path`, crash-safe: a restart finds this config or the
/// one before, whole.
pub fn save_config(path: &Path, c: &pb::NodeConfig) -> Result<(), durable::WriteError> {
    durable::write_atomic(path, &c.encode_to_vec(), 0o600)
}

/// The credentials a task's config carries for its image's registry, if
/// they are well formed and for that registry (what a manager sends is
/// checked here too); otherwise the pull goes without them.
fn registry_auth(
    auth: Option<&pb::RegistryCredential>,
    image: &str,
) -> Option<crate::image::Credential> {
    let auth = auth?;
    crate::image::credential_for_image(auth, image)
        .inspect_err(|e| {
            tracing::warn!(registry = %auth.registry, %image, error = %e, "registry credentials refused: the pull goes without");
        })
        .ok()
}

/// The stop policy a task config asks for; what it leaves out (or cannot
/// be, such as a signal that does not exist: the manager checks, this is
/// the node's own check) takes the defaults.
fn stop_policy(p: Option<&pb::StopPolicy>) -> StopPolicy {
    let default = StopPolicy::default();
    let Some(p) = p else { return default };
    StopPolicy {
        signal: Some(p.signal)
            .filter(|s| weft_proto::signal::valid(*s))
            .unwrap_or(default.signal),
        grace: if p.has_grace {
            Duration::from_millis(p.grace_ms)
        } else {
            default.grace
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_overlay::model::NetworkId;

    fn config() -> pb::NodeConfig {
        pb::NodeConfig {
            version: 9,
            vtep: "198.18.0.1".into(),
            vxlan_port: 4789,
            gateway_subnet: "172.18.0.0/16".into(),
            networks: vec![pb::NetworkConfig {
                id: "n1".into(),
                name: "app".into(),
                vni: 4096,
                subnet: "10.0.9.0/24".into(),
                gateway: "10.0.9.1".into(),
                mtu: 1450,
                internal: false,
                remote: vec![pb::RemoteEndpoint {
                    ip6: String::new(),
                    task_id: "t2".into(),
                    ip: "10.0.9.3".into(),
                    mac: "02:42:0a:00:09:03".into(),
                    vtep: "198.18.0.2".into(),
                }],
                ..Default::default()
            }],
            tasks: vec![pb::TaskConfig {
                id: "t1".into(),
                name: "one".into(),
                command: vec!["sleep".into(), "9".into()],
                env: Default::default(),
                attachments: vec![pb::TaskAttachment {
                    network_id: "n1".into(),
                    ip: "10.0.9.2/24".into(),
                    mac: "02:42:0a:00:09:02".into(),
                    ..Default::default()
                }],
                gateway_ip: "172.18.0.2/16".into(),
                gateway_mac: "02:42:ac:12:00:02".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn translation_keeps_everything() {
        let d = desired_from_config(&config(), std::path::Path::new("/k")).unwrap();
        assert_eq!(d.vtep.to_string(), "198.18.0.1");
        let n = &d.networks[&NetworkId("n1".into())];
        assert_eq!((n.vni, n.mtu), (4096, 1450));
        assert_eq!(n.remote.len(), 1);
        let t = &d.tasks[&TaskId("t1".into())];
        assert_eq!(t.endpoints[0].ifname, "eth0");
        assert_eq!(t.endpoints[0].ip.to_string(), "10.0.9.2/24");
        assert!(t.gateway.is_some());
        let gw = d.gateway.unwrap();
        assert_eq!(gw.gateway.to_string(), "172.18.0.1");
    }

    #[test]
    fn no_gateway_bridge_without_egress() {
        let mut c = config();
        c.tasks[0].gateway_ip.clear();
        c.tasks[0].gateway_mac.clear();
        assert_eq!(
            desired_from_config(&c, std::path::Path::new("/k"))
                .unwrap()
                .gateway,
            None
        );
    }

    /// What a crash while saving a newer config leaves (a torn temporary
    /// file) is not read; the config before it is, and the next save
    /// replaces the leftover.
    #[test]
    fn a_torn_config_save_leaves_the_previous_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-config.pb");
        assert_eq!(load_config(&path), None);
        let first = config();
        save_config(&path, &first).unwrap();
        let mut second = config();
        second.version = 10;
        let bytes = second.encode_to_vec();
        let tmp = durable::temp_path(&path);
        std::fs::write(&tmp, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(load_config(&path), Some(first));
        save_config(&path, &second).unwrap();
        assert_eq!(load_config(&path), Some(second));
        assert!(!tmp.exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "task environments are in it");
        // A file that does not decode is no config, not a panic.
        std::fs::write(&path, b"\xff\xff\xff").unwrap();
        assert_eq!(load_config(&path), None);
    }

    fn reconciler(dir: &Path) -> Reconciler {
        Reconciler {
            node_id: "n".into(),
            config: watch::channel(None).1,
            state_file: dir.join("node-config.pb"),
            dataplane: Arc::new(weft_overlay::FakeDataplane::new(dir.join("run"))),
            runtime: Arc::new(crate::runtime::fake::FakeRuntime::new()),
            report: Box::new(|_| {}),
            dns_upstreams: Vec::new(),
            wg_key: dir.join("wg.key"),
            proxy: BTreeMap::new(),
            bridge_subnet: String::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
            sandboxes: crate::sandboxes::Sandboxes::load(dir.join("sandboxes")),
            settled: None,
        }
    }

    /// wg.generation goes through the crash-safe write after the key: a
    /// torn temporary file is ignored, and a crash between the key and
    /// its generation costs one more new key, never an old key kept.
    #[test]
    fn the_wireguard_key_generation_survives_crashes() {
        use weft_overlay::wg::keys;
        let dir = tempfile::tempdir().unwrap();
        let r = reconciler(dir.path());
        let gen_file = dir.path().join("wg.generation");
        let first = r.ensure_wg_key(1).unwrap();
        assert_eq!(std::fs::read_to_string(&gen_file).unwrap(), "1");
        std::fs::write(durable::temp_path(&gen_file), "").unwrap();
        assert_eq!(r.ensure_wg_key(1).unwrap(), first, "a leftover is not read");
        // The crash: generation 2's key written, its generation not.
        let orphan = keys::generate();
        keys::write_private_key(&r.wg_key, &orphan).unwrap();
        let second = r.ensure_wg_key(2).unwrap();
        assert_ne!(second, orphan.public_key());
        assert_ne!(second, first);
        assert_eq!(std::fs::read_to_string(&gen_file).unwrap(), "2");
        assert_eq!(r.ensure_wg_key(2).unwrap(), second);
        assert!(!durable::temp_path(&gen_file).exists());
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = config();
        c.networks[0].remote[0].mac = "zz".into();
        let e = desired_from_config(&c, std::path::Path::new("/k")).unwrap_err();
        assert_eq!(e.what, "remote mac");
    }

    #[test]
    fn registry_credentials_are_checked_before_use() {
        let wire = |registry: &str, user: &str| pb::RegistryCredential {
            registry: registry.into(),
            username: user.into(),
            password: "pw".into(),
        };
        let image = "127.0.0.1:5000/team/app:1";
        let c = registry_auth(Some(&wire("127.0.0.1:5000", "alice")), image).unwrap();
        assert_eq!(c.username(), "alice");
        // For another registry, malformed, or none: the pull goes without.
        assert!(registry_auth(Some(&wire("docker.io", "alice")), image).is_none());
        assert!(registry_auth(Some(&wire("127.0.0.1:5000", "")), image).is_none());
        assert!(registry_auth(Some(&wire("127.0.0.1:5000", "a:b")), image).is_none());
        assert!(registry_auth(None, image).is_none());
        // Docker Hub names.
        assert!(registry_auth(Some(&wire("docker.io", "bob")), "busybox").is_some());
    }

    /// A start that ends is reported at once, with the last pass's other
    /// fields, without waiting for the data plane; a task with no start
    /// set going yet is left to the next pass.
    #[tokio::test]
    async fn an_early_report_has_the_tasks_as_they_are_now() {
        let dir = tempfile::tempdir().unwrap();
        let r = reconciler(dir.path());
        let mut c = config();
        let mut later = c.tasks[0].clone();
        later.id = "t3".into();
        c.tasks.push(later);
        r.runtime.start(&r.task_spec(&c.tasks[0])).await.unwrap();
        let last = pb::StatusReport {
            node_id: "n".into(),
            applied_version: 9,
            wg_public_key: "key".into(),
            tasks: vec![plan::in_flight("t1", pb::TaskState::Starting)],
            ..Default::default()
        };
        let inflight = jobs::Inflight::new();
        let probers = crate::health::Probers::new();
        let got = r.early_report(&c, &last, &inflight, &probers);
        assert_eq!(
            (got.applied_version, got.wg_public_key.as_str()),
            (9, "key")
        );
        let states: Vec<_> = got
            .tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t.status.as_ref().unwrap().state()))
            .collect();
        assert_eq!(states, vec![("t1", pb::TaskState::Running)]);
    }

    /// The daemon's readiness: told at once without a saved config, and
    /// with one only after the pass that applied it.
    #[tokio::test]
    async fn settled_is_told_once_the_saved_config_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = watch::channel(false);
        let r = Reconciler {
            settled: Some(tx),
            ..reconciler(dir.path())
        };
        let running = tokio::spawn(r.run(stopped));
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("told without a saved config")
            .unwrap();
        // (The loop also ends by itself: no config sender.)
        let _ = stop.send(true);
        running.await.unwrap();

        let plane = Arc::new(weft_overlay::FakeDataplane::new(dir.path().join("run")));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = watch::channel(false);
        let r = Reconciler {
            settled: Some(tx),
            dataplane: plane.clone(),
            ..reconciler(dir.path())
        };
        r.save(&config());
        let running = tokio::spawn(r.run(stopped));
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("told after the first pass")
            .unwrap();
        assert!(
            plane.kernel().tasks.contains_key(&TaskId("t1".into())),
            "the saved config's task namespace is made before"
        );
        // (The loop also ends by itself: no config sender.)
        let _ = stop.send(true);
        running.await.unwrap();
    }

    /// A reconcile loop running over the fakes: configs pushed in,
    /// reports read out.
    struct Looping {
        plane: Arc<weft_overlay::FakeDataplane>,
        runtime: Arc<crate::runtime::fake::FakeRuntime>,
        push: watch::Sender<Option<Arc<pb::NodeConfig>>>,
        reports: tokio::sync::mpsc::UnboundedReceiver<pb::StatusReport>,
        stop: watch::Sender<bool>,
        wake: Arc<tokio::sync::Notify>,
        handle: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    impl Looping {
        /// Starts the loop; `setup` sees the fake data plane first.
        fn start(setup: impl FnOnce(&weft_overlay::FakeDataplane)) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let plane = Arc::new(weft_overlay::FakeDataplane::new(dir.path().join("run")));
            setup(&plane);
            let runtime = Arc::new(crate::runtime::fake::FakeRuntime::new());
            let (push, pushed) = watch::channel(None);
            let (tx, reports) = tokio::sync::mpsc::unbounded_channel();
            let (stop, stopped) = watch::channel(false);
            let r = Reconciler {
                config: pushed,
                dataplane: plane.clone(),
                runtime: runtime.clone(),
                report: Box::new(move |rep| {
                    let _ = tx.send(rep);
                }),
                ..reconciler(dir.path())
            };
            let wake = r.wake.clone();
            let handle = tokio::spawn(r.run(stopped));
            Self {
                plane,
                runtime,
                push,
                reports,
                stop,
                wake,
                handle,
                _dir: dir,
            }
        }

        /// The next report that `ok` accepts, within 10 s.
        async fn next(
            &mut self,
            what: &str,
            ok: &dyn Fn(&pb::StatusReport) -> bool,
        ) -> pb::StatusReport {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), self.reports.recv()).await {
                    Ok(Some(rep)) if ok(&rep) => return rep,
                    Ok(Some(_)) => {}
                    _ => panic!("no report {what} within 10 s"),
                }
            }
        }

        async fn stop(self) {
            self.stop.send(true).unwrap();
            self.handle.await.unwrap();
        }
    }

    /// The state a report gives task `id`.
    fn state_of(r: &pb::StatusReport, id: &str) -> Option<pb::TaskState> {
        r.tasks
            .iter()
            .find(|t| t.task_id == id)
            .map(|t| t.status.as_ref().unwrap().state())
    }

    /// Once a pass went through, a new task's namespace is made and its
    /// start set going before the pass that wires it; its process runs
    /// only once such a pass went through (here: the second, after a
    /// failed one), and it is started once.
    #[tokio::test]
    async fn a_new_task_is_made_during_the_pass_and_runs_after_it() {
        use crate::runtime::fake::FakeCall;
        let mut l = Looping::start(|_| {});
        let c = config();
        l.push.send(Some(Arc::new(c.clone()))).unwrap();
        l.next("with t1 running", &|r| {
            state_of(r, "t1") == Some(pb::TaskState::Running) && r.apply_error.is_empty()
        })
        .await;
        // The first task waited for the first pass: nothing made ahead.
        assert!(l.plane.with_state(|s| s.prepared.is_empty()));

        let t2 = TaskId("t2".into());
        l.plane.with_state(|s| s.fail_tasks.insert(t2.clone()));
        let mut c2 = c.clone();
        c2.version += 1;
        let mut second = c.tasks[0].clone();
        second.id = "t2".into();
        second.attachments[0].ip = "10.0.9.4/24".into();
        second.attachments[0].mac = "02:42:0a:00:09:04".into();
        second.gateway_ip = "172.18.0.3/16".into();
        second.gateway_mac = "02:42:ac:12:00:03".into();
        c2.tasks.push(second);
        l.push.send(Some(Arc::new(c2))).unwrap();
        let failed = l
            .next("of the failed pass with t2", &|r| !r.apply_error.is_empty())
            .await;
        assert_eq!(state_of(&failed, "t2"), Some(pb::TaskState::Starting));
        assert_eq!(l.plane.with_state(|s| s.prepared.clone()), vec![t2.clone()]);
        assert!(l.plane.kernel().tasks.contains_key(&t2), "namespace made");
        assert!(
            l.runtime.spec("t2").is_none(),
            "run before a pass went through"
        );

        l.plane.with_state(|s| s.fail_tasks.clear());
        l.wake.notify_one();
        l.next("with t2 running", &|r| {
            state_of(r, "t2") == Some(pb::TaskState::Running)
        })
        .await;
        let starts = l
            .runtime
            .calls()
            .iter()
            .filter(|c| matches!(c, FakeCall::Start(s) if s.id == "t2"))
            .count();
        assert_eq!(starts, 1);
        l.stop().await;
    }

    /// The whole loop over the fakes: no task starts while the data plane
    /// pass fails; once it goes through, the task starts in its namespace
    /// and runs; unassigned, it is removed and its namespace goes too.
    #[tokio::test]
    async fn the_loop_starts_and_removes_tasks_around_the_data_plane() {
        use crate::runtime::fake::FakeCall;
        let mut l = Looping::start(|p| {
            p.with_state(|s| s.fail_calls.insert(0));
        });
        let c = Arc::new(config());
        l.push.send(Some(c.clone())).unwrap();
        let failed = l
            .next("of the failed pass", &|r| !r.apply_error.is_empty())
            .await;
        assert_eq!(failed.applied_version, 0);
        assert!(failed.tasks.is_empty(), "{:?}", failed.tasks);
        assert!(l.runtime.spec("t1").is_none(), "started without a network");
        l.wake.notify_one();
        let ok = l
            .next("with t1 running", &|r| {
                state_of(r, "t1") == Some(pb::TaskState::Running)
            })
            .await;
        assert_eq!(
            (ok.applied_version, ok.apply_error.as_str()),
            (c.version, "")
        );
        assert!(l.plane.kernel().tasks.contains_key(&TaskId("t1".into())));
        let mut none = config();
        none.version += 1;
        none.tasks.clear();
        l.push.send(Some(Arc::new(none))).unwrap();
        let gone = |r: &pb::StatusReport| r.tasks.is_empty() && r.applied_version == c.version + 1;
        l.next("without t1", &gone).await;
        let calls = l.runtime.calls();
        assert_eq!(
            calls
                .iter()
                .filter(|c| matches!(c, FakeCall::Start(_)))
                .count(),
            1
        );
        // The removal ends in the background; the next pass drops the
        // task's namespace.
        let (runtime, plane, wake) = (l.runtime.clone(), l.plane.clone(), l.wake.clone());
        tokio::time::timeout(Duration::from_secs(10), async {
            while runtime.status("t1").is_some()
                || plane.kernel().tasks.contains_key(&TaskId("t1".into()))
            {
                wake.notify_one();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("t1 removed and its namespace gone within 10 s");
        assert!(runtime.calls().contains(&FakeCall::Remove("t1".into())));
        l.stop().await;
    }
}
