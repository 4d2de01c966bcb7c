//! `weft daemon`: wires the node's components together.
//!
//! ```text
//!  unix socket (root) ── Daemon service (init/join/leave/info) ──▶ Node
//!                     └─ Control service ──▶ the manager in the slot, if any
//!  Node = Agent (every member) + Manager (when the certificate says manager)
//!  role watcher: agent installed a new certificate ─▶ start/stop/update Manager
//! ```
//!
//! No cluster logic lives here: admission is `weft_worker::join`, cluster
//! creation is `weft_manager::bootstrap`, the rest is the components'.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use weft_manager::bootstrap;
use weft_manager::controlapi::{CoreSlot, LocalControl};
use weft_manager::raft::RaftSettings;
use weft_manager::store::NodeId;
use weft_manager::{Manager, ManagerConfig};
use weft_overlay::{Dataplane, LinuxDataplane};
use weft_proto::identity::PeerIdentity;
use weft_proto::v1 as pb;
use weft_proto::v1::control_server::ControlServer;
use weft_proto::v1::daemon_server::{Daemon, DaemonServer};
use weft_worker::agent::{Agent, LogReader};
use weft_worker::join::JoinParams;
use weft_worker::node_files::{Certs, NodeFiles, NodeRecord};
use weft_worker::reconcile::Reconciler;
use weft_worker::runtime::containerd::{ContainerdConfig, ContainerdRuntime};
use weft_worker::runtime::{ProcessRuntime, RoutedRuntime, ShimCommand, TaskRuntime};

use crate::autolock::Locked;
use crate::cli::DaemonArgs;

mod attach;
mod attach_stdio;
mod cni;
mod docker;
mod doctor;
mod exec;
mod host_facts;
mod images;
mod lifecycle;
mod metrics;
mod nets;
mod ready;
mod rejoin;
mod supervise;
mod tasks;
mod volumes;

use nets::NodeNets;
use supervise::{raft_supervisor, role_watcher};
use tasks::read_task_log;

/// What the daemon creates is for root alone, whoever started it and with
/// whatever umask: the data directory holds the node's private key and, on
/// a manager, the Raft log with the CA key and join secrets; the exec root
/// holds task specs with their environment. New files are 0600 and new
/// directories 0700 (umask 077, set before any thread exists that could
/// create one); the two roots are made 0700 even if an older version or an
/// operator created them wider. Tasks get the conventional umask 022 back
/// (the shim sets it for the task's process).
fn private_dirs(args: &DaemonArgs) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    for (dir, what) in [(&args.data_dir, "data dir"), (&args.exec_root, "exec root")] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {what} {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {what} {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Makes `<exec-root>/bin/weft-task-logger`, a link to the logger program
/// ([`logger_program`]), for containerd's shim to start as each container's
/// logger (the shim cannot exec `/proc/self/exe`: it is not our child).
/// Refuses a binary deleted since it started (an upgrade replaced it): the
/// link would dangle.
fn logger_link(exec_root: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()
        .context("cannot find this program's path for the container logger")?;
    if exe.to_string_lossy().ends_with(" (deleted)") {
        anyhow::bail!(
            "this program's file {} was deleted or replaced since it started; restart the daemon \
             from the installed binary (containers' loggers are started from it)",
            exe.display()
        );
    }
    let exe = logger_program(&exe);
    tracing::info!(logger = %exe.display(), "containers: output through this logger");
    let dir = exec_root.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let link = dir.join(weft_worker::logs::LOGGER_ARG);
    let tmp = dir.join(format!(".{}.tmp", weft_worker::logs::LOGGER_ARG));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&exe, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &link))
        .with_context(|| format!("cannot link {} to {}", link.display(), exe.display()))?;
    Ok(link)
}

/// The program each container's logger runs: `weft-task-logger` beside
/// this binary when it is installed there (a 2 MB program with only the
/// logger's code: about 0.6 MB of private memory per container against 5-8
/// MB for the whole `weft` in logger mode, BENCHMARKS.md), else this
/// binary, which has a logger mode too.
fn logger_program(exe: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let small = exe.with_file_name(weft_worker::logs::LOGGER_ARG);
    match std::fs::metadata(&small) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => small,
        _ => exe.to_path_buf(),
    }
}

/// The node's task runtime: host processes through weft's own shim, and
/// containers through containerd, connected on first use (the daemon runs
/// without it). Containers keep their files under `<exec-root>/containers`.
fn task_runtime(
    args: &DaemonArgs,
    images: Arc<weft_worker::image::ImageStore>,
    logger: std::path::PathBuf,
    mounts: weft_worker::runtime::containerd::mounts::MountPolicy,
) -> Arc<RoutedRuntime> {
    let process = Arc::new(ProcessRuntime::new(
        &args.exec_root,
        ShimCommand::current_exe(),
    ));
    let socket = args.containerd_socket.clone();
    let cfg = ContainerdConfig {
        tasks_dir: args.exec_root.join("containers"),
        runc_root: args.runc_root.clone(),
        cgroup_parent: args.cgroup_parent.clone(),
        owner: args.exec_root.display().to_string(),
        logger,
        mounts,
    };
    // The image store's connection (version and namespace checked there),
    // shared with the runtime.
    let connect: weft_worker::runtime::routed::Connect = Arc::new(move || {
        let (cfg, images) = (cfg.clone(), images.clone());
        Box::pin(async move {
            let client = images.client().await.map_err(|e| e.to_string())?;
            tracing::info!(socket = %client.socket().display(), namespace = %client.namespace(), "containers: connected to containerd");
            Ok(ContainerdRuntime::new(client, images, cfg))
        })
    });
    let external =
        weft_worker::runtime::external::ExternalRuntime::new(args.exec_root.join("external"));
    RoutedRuntime::new(process, external, socket, connect)
}

/// What this node lets containers mount: binds only under
/// `--allow-bind-root`s, never weft's or containerd's state or the
/// kernel's pseudo-filesystems; named volumes under `<data-dir>/volumes`,
/// claimed in the containers' task directories. Made once: its clones
/// share the volume lock.
pub fn mount_policy(args: &DaemonArgs) -> weft_worker::runtime::containerd::mounts::MountPolicy {
    let mut forbidden = vec![
        args.data_dir.clone(),
        args.exec_root.clone(),
        "/var/lib/containerd".into(),
        "/run/containerd".into(),
        "/proc".into(),
        "/sys".into(),
        "/dev".into(),
    ];
    forbidden.extend(args.runc_root.clone());
    forbidden.extend(args.containerd_socket.parent().map(Path::to_path_buf));
    weft_worker::runtime::containerd::mounts::MountPolicy {
        allowed_bind_roots: args.allow_bind_roots.clone(),
        forbidden,
        volumes: weft_worker::volumes::VolumeStore::new(
            args.data_dir.join("volumes"),
            args.exec_root.join("containers"),
        ),
    }
}

/// Test-only: this many descriptors (of /dev/null) are opened at start and
/// kept, so that every descriptor the daemon opens later is numbered above
/// them (tests/services.rs: a node past 1024 descriptors).
const TEST_HOLD_FDS_ENV: &str = "WEFT_TEST_HOLD_FDS";

/// Holds the descriptors [`TEST_HOLD_FDS_ENV`] asks for, if any.
fn hold_test_fds() -> std::io::Result<()> {
    if let Some(n) = std::env::var(TEST_HOLD_FDS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for _ in 0..n {
            std::mem::forget(std::fs::File::open("/dev/null")?);
        }
        tracing::warn!(
            descriptors = n,
            "{TEST_HOLD_FDS_ENV}: descriptors held for a test"
        );
    }
    Ok(())
}

/// Serves Docker's network plugin API on `socket` (and sweeps its
/// endpoints) until `stopped` fires.
fn docker_plugin(
    socket: std::path::PathBuf,
    node: Arc<NodeService>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let backend = Arc::new(docker::DockerPlugin::new(node));
    let sweeper = Arc::downgrade(&backend);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(docker::SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(b) = sweeper.upgrade() else { return };
            b.sweep().await;
        }
    });
    tokio::spawn(async move {
        let stop = async {
            let _ = stopped.await;
        };
        if let Err(e) = crate::docker_plugin::serve(&socket, backend, stop).await {
            tracing::error!(socket = %socket.display(), error = %e, "Docker network plugin not served");
        }
    })
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    // Before anything is made: a node limit in the environment that is
    // none stops the daemon as a bad flag would.
    weft_manager::limits::node_limit_at_start()?;
    private_dirs(&args)?;
    crate::data_format::check_and_stamp(&args.data_dir)?;
    hold_test_fds()?;
    let hostname = match &args.hostname {
        Some(h) => h.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
    };
    if let Err(e) = weft_overlay::linux::nft::check_nft() {
        tracing::warn!("{e}: overlay networks need it");
    }
    let settings = crate::settings::resolve(&args)?;
    let image_store = images::store(&args)?;
    let logger = logger_link(&args.exec_root)?;
    let mounts = mount_policy(&args);
    if let Err(e) = mounts.volumes.sweep() {
        tracing::warn!(error = %e, "volumes: leftovers of an interrupted create or removal");
    }
    let runtime = task_runtime(&args, image_store.clone(), logger, mounts.clone());
    let images = images::server(image_store.clone());
    let host_ns = weft_overlay::linux::Netns::current()
        .context("cannot open this daemon's network namespace")?;
    // The resolver's sockets outlive this daemon in `weft fd-store`.
    let linux = Arc::new(
        LinuxDataplane::new(args.exec_root.clone(), host_ns).with_fd_store_launcher(Arc::new(
            |socket: &std::path::Path| {
                let mut c = std::process::Command::new("/proc/self/exe");
                c.arg("fd-store").arg("--socket").arg(socket);
                c
            },
        )),
    );
    // The default bridge must not shadow a route of this host (it would
    // also be unreachable from tasks that need that route).
    let routes = linux
        .host_routes()
        .await
        .context("cannot read this host's routes")?;
    if let Some(r) = crate::settings::colliding_route(&settings.bridge_subnet, &routes) {
        anyhow::bail!(
            "bridge subnet {} collides with the host route {} (dev {}); choose another with --bridge-subnet",
            settings.bridge_subnet,
            r.dest,
            r.dev.as_deref().unwrap_or("?")
        );
    }
    let dataplane: Arc<dyn Dataplane> = linux.clone();
    let unlock = weft_proto::seal::KeyHolder::default();
    let node = Arc::new(NodeService {
        files: NodeFiles::with_unlock(&args.data_dir, unlock),
        locked: Locked::default(),
        hostname,
        data_dir: args.data_dir.clone(),
        exec_root: args.exec_root.clone(),
        slot: Arc::new(RwLock::new(None)),
        manager_problem: Arc::new(RwLock::new(String::new())),
        active: Arc::new(Mutex::new(None)),
        runtime,
        dataplane,
        linux,
        settings,
        wake: Arc::new(tokio::sync::Notify::new()),
        sandboxes: weft_worker::sandboxes::Sandboxes::load(args.exec_root.join("docker/sandboxes")),
        mounts,
        images: image_store.clone(),
    });
    if node.files.exists() {
        match node.resume().await {
            Err(e)
                if matches!(
                    e.downcast_ref::<weft_worker::error::Error>(),
                    Some(weft_worker::error::Error::Locked { .. })
                ) =>
            {
                tracing::warn!("{e}");
                node.locked.set(true);
            }
            r => r.context("cannot resume this node's cluster membership")?,
        }
    }
    let resealer = tokio::spawn(crate::autolock::reseal_loop(node.files.clone()));
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            let registry = metrics::registry(node.slot.clone(), node.linux.clone());
            Some(tokio::spawn(metrics::serve(listener, registry)))
        }
        None => None,
    };

    let router = tonic::transport::Server::builder()
        .add_service(DaemonServer::from_arc(node.clone()))
        .add_service(images)
        .add_service(ControlServer::with_interceptor(
            LocalControl::with_node(node.slot.clone(), Arc::new(NodeNets(node.clone())))
                .with_down_reason(node.manager_problem.clone())
                .with_archive_check(images::archive_check(&node.images)),
            node.locked.gate(),
        ));
    let (plugin_stop, plugin_stopped) = tokio::sync::oneshot::channel::<()>();
    let plugin = args
        .docker_plugin
        .clone()
        .map(|socket| docker_plugin(socket, node.clone(), plugin_stopped));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        ready::stopping();
    };
    let settled = node
        .active
        .lock()
        .await
        .as_mut()
        .and_then(|a| a.settled.take());
    let (bound_tx, bound) = tokio::sync::oneshot::channel();
    let readiness = tokio::spawn(ready::announce(bound, settled));
    let socket = args.socket.display();
    weft_proto::tls::serve_unix(&args.socket, router, shutdown, || {
        tracing::info!(%socket, "local API served");
        let _ = bound_tx.send(());
    })
    .await
    .with_context(|| format!("local API on {socket}"))?;
    readiness.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = plugin_stop.send(());
    if let Some(p) = plugin {
        let _ = p.await;
    }
    node.stop_components().await;
    resealer.abort();
    Ok(())
}

/// The node's lifecycle: inactive, or a member with an agent and maybe a
/// manager.
struct NodeService {
    /// The node's files; their unlock-key holder is the one the manager
    /// shares.
    files: NodeFiles,
    /// Restarted with a sealed TLS key: waiting for `weft unlock`.
    locked: Locked,
    hostname: String,
    data_dir: PathBuf,
    exec_root: PathBuf,
    slot: CoreSlot,
    /// Serialises init/join/leave and holds the running components.
    active: Arc<Mutex<Option<Active>>>,
    /// Task processes.
    runtime: Arc<RoutedRuntime>,
    /// Kernel effects.
    dataplane: Arc<dyn Dataplane>,
    /// The same data plane, for reads of the host's kernel state.
    linux: Arc<LinuxDataplane>,
    /// Node-local settings (bridge subnet, proxies).
    settings: crate::settings::Settings,
    /// Why this node's manager is not running although it should be (Raft
    /// stopped on a disk error and is being restarted); shown by `weft info`.
    manager_problem: Arc<RwLock<String>>,
    /// Wakes the node's loop for a pass now (`weft start`).
    wake: Arc<tokio::sync::Notify>,
    /// Where Docker endpoints' containers are (the Docker plugin's Join).
    sandboxes: Arc<weft_worker::sandboxes::Sandboxes>,
    /// What this node lets containers mount (`weft run` checks binds
    /// against it before asking the managers).
    mounts: weft_worker::runtime::containerd::mounts::MountPolicy,
    /// The node's images (cluster-wide loads land here too).
    images: Arc<weft_worker::image::ImageStore>,
}

struct Active {
    record: NodeRecord,
    agent: Agent,
    manager: Arc<Mutex<Option<Manager>>>,
    watcher: tokio::task::JoinHandle<()>,
    supervisor: tokio::task::JoinHandle<()>,
    reconcile_stop: tokio::sync::watch::Sender<bool>,
    reconciler: tokio::task::JoinHandle<()>,
    /// Loads the archives of `image load --all-nodes` (stopped with the
    /// reconciler, by `reconcile_stop`).
    fetcher: tokio::task::JoinHandle<()>,
    /// Keeps the node's image inventory for the agent's reports (stopped
    /// with the reconciler, by `reconcile_stop`).
    inventory: tokio::task::JoinHandle<()>,
    /// Told when the loop's first pass is done: taken by the daemon's
    /// readiness ([`ready::announce`]).
    settled: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Active {
    /// Stops the agent and the local loop (not the tasks or the kernel
    /// state: the data plane survives the control plane).
    async fn stop_loops(self) -> Arc<Mutex<Option<Manager>>> {
        {
            // Neither loop may be halfway through starting or stopping the
            // manager when it is aborted: both do that holding this lock.
            let _held = self.manager.lock().await;
            self.watcher.abort();
            self.supervisor.abort();
        }
        let _ = self.reconcile_stop.send(true);
        let _ = self.reconciler.await;
        let _ = self.fetcher.await;
        let _ = self.inventory.await;
        self.agent.stop().await;
        self.manager
    }
}

fn status_of(e: impl std::fmt::Display, code: tonic::Code) -> Status {
    Status::new(code, e.to_string())
}

impl NodeService {
    /// Restarts the components of a node that was a member before.
    async fn resume(&self) -> anyhow::Result<()> {
        let (record, certs) = self.files.load()?;
        let (certs, manager) = self.manager_for(&record, certs).await?;
        tracing::info!(node = %record.node_id, role = %record.role, "resuming cluster membership");
        *self.active.lock().await = Some(self.activate(record, certs, manager));
        Ok(())
    }

    /// The manager a member node starts with: none on a worker; on a
    /// manager whose certificate expired offline, one only if it is the
    /// only voter and signs itself a new certificate (`renew_alone`, which
    /// also returns the certificates to use).
    async fn manager_for(
        &self,
        record: &NodeRecord,
        mut certs: Certs,
    ) -> anyhow::Result<(Certs, Option<Manager>)> {
        let manager = if record.role != "manager" {
            None
        } else if !rejoin::cert_expired(&certs) {
            Some(self.start_manager(record, &certs).await?)
        } else {
            match self.renew_alone(record, &certs).await {
                Ok(Some((renewed, manager))) => {
                    certs = renewed;
                    Some(manager)
                }
                outcome => {
                    if let Err(e) = outcome {
                        tracing::error!(error = %format!("{e:#}"), "this manager could not sign itself a new certificate");
                    }
                    // Its peers would refuse every Raft call, and its
                    // elections would only raise its term; the rejoin
                    // starts it.
                    tracing::error!(
                        "this manager's certificate has expired: its manager stays stopped until the node rejoins"
                    );
                    None
                }
            }
        };
        Ok((certs, manager))
    }

    async fn start_manager(&self, record: &NodeRecord, certs: &Certs) -> anyhow::Result<Manager> {
        let node_id: NodeId = record.node_id.parse()?;
        let listen_addr: SocketAddr = record
            .listen_addr
            .parse()
            .with_context(|| format!("bad listen address {:?}", record.listen_addr))?;
        let manager = Manager::start(ManagerConfig {
            node_id,
            cluster_id: record.cluster_id.clone(),
            raft_dir: self.files.raft_dir(),
            listen_addr,
            ca_pem: certs.ca_pem.clone(),
            cert_pem: certs.cert_pem.clone(),
            key_pem: certs.key_pem.clone(),
            raft: RaftSettings::default(),
            unlock: self.files.unlock_holder().clone(),
        })
        .await?;
        *self.slot.write().expect("slot") = Some(manager.core().clone());
        Ok(manager)
    }

    /// Starts the agent and the role watcher around an optional manager.
    fn activate(&self, record: NodeRecord, certs: Certs, manager: Option<Manager>) -> Active {
        let runtime = self.runtime.clone();
        let logs: LogReader = Arc::new(move |task: &str, opts, sink| {
            read_task_log(&runtime, task, opts, sink).map_err(|s| s.message().to_string())
        });
        let agent = Agent::start(self.files.clone(), record.clone(), certs, logs);
        doctor::spawn_prober(&agent, &self.exec_root, self.linux.clone());
        let (settled_tx, settled) = tokio::sync::oneshot::channel();
        let manager = Arc::new(Mutex::new(manager));
        let watcher = tokio::spawn(role_watcher(
            agent.status(),
            manager.clone(),
            self.slot.clone(),
            record.clone(),
            self.files.clone(),
        ));
        let supervisor = tokio::spawn(raft_supervisor(
            manager.clone(),
            self.slot.clone(),
            self.files.clone(),
            self.manager_problem.clone(),
        ));
        let (reconcile_stop, stop_rx) = tokio::sync::watch::channel(false);
        let fetcher = tokio::spawn(
            weft_worker::image_fetch::Fetcher {
                node_id: record.node_id.clone(),
                caller: agent.caller(),
                store: self.images.clone(),
            }
            .run(agent.config(), stop_rx.clone()),
        );
        let inventory = tokio::spawn(weft_worker::image_inventory::run(
            self.images.clone(),
            agent.images_handle(),
            stop_rx.clone(),
        ));
        let reporter = agent.report_handle();
        let reconciler = tokio::spawn(
            Reconciler {
                node_id: record.node_id.clone(),
                config: agent.config(),
                state_file: self.data_dir.join("node-config.pb"),
                dataplane: self.dataplane.clone(),
                runtime: self.runtime.clone(),
                report: Box::new(move |r| {
                    reporter.send_replace(Some(r));
                }),
                dns_upstreams: weft_overlay::dns::host_upstreams(),
                wg_key: self.data_dir.join("wg.key"),
                proxy: self.settings.proxy.clone(),
                bridge_subnet: self.settings.bridge_subnet.to_string(),
                wake: self.wake.clone(),
                sandboxes: self.sandboxes.clone(),
                settled: Some(settled_tx),
            }
            .run(stop_rx),
        );
        Active {
            record,
            agent,
            manager,
            watcher,
            supervisor,
            reconcile_stop,
            reconciler,
            settled: Some(settled),
            fetcher,
            inventory,
        }
    }

    async fn stop_components(&self) {
        if let Some(a) = self.active.lock().await.take() {
            let manager = a.stop_loops().await;
            *self.slot.write().expect("slot") = None;
            if let Some(m) = manager.lock().await.take() {
                m.stop().await;
            }
        }
    }

    async fn init(&self, r: pb::InitRequest) -> Result<pb::InitResponse, Status> {
        if r.force_new_cluster {
            return self.force_new_cluster(&r).await;
        }
        let mut guard = self.active.lock().await;
        if guard.is_some() {
            return Err(Status::already_exists(
                "this node is already part of a cluster; leave it first with `weft leave`",
            ));
        }
        let params = bootstrap::validate_init(&r).map_err(Status::from)?;
        weft_worker::join::udp_port_free(params.settings.wg_port, "WireGuard").map_err(|e| {
            Status::failed_precondition(format!(
                "{e}; or choose another with `weft init --wg-port`"
            ))
        })?;
        let new = bootstrap::new_cluster(&params, &self.hostname, 1500).map_err(Status::from)?;
        // Held before anything is written: the TLS key file is sealed at
        // its first save, and the manager opens the secrets with it.
        self.files.unlock_holder().set(new.unlock_key.clone());
        let record = NodeRecord {
            node_id: new.node.id.to_string(),
            cluster_id: new.cluster.id.clone(),
            role: "manager".into(),
            advertise_addr: params.advertise_addr.to_string(),
            listen_addr: params.listen_addr.to_string(),
            data_path_addr: params.data_path_addr.to_string(),
            manager_addrs: vec![params.advertise_addr.to_string()],
            removed_node_ids: Vec::new(),
            manager_node_ids: vec![new.node.id.to_string()],
        };
        let certs = Certs {
            ca_pem: new.ca_pem.clone(),
            cert_pem: new.cert_pem.clone(),
            key_pem: new.key_pem.clone(),
        };
        // Nothing is written before the manager port is ours: a failed init
        // leaves the node as it was.
        let manager = self
            .start_manager(&record, &certs)
            .await
            .map_err(|e| status_of(format!("{e:#}"), tonic::Code::FailedPrecondition))?;
        let result = async {
            self.files.save_certs(&certs)?;
            self.files.save_record(&record)?;
            manager
                .bootstrap(new.cluster.clone(), new.node.clone())
                .await
                .map_err(|e| anyhow::anyhow!(Status::from(e).message().to_string()))?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            *self.slot.write().expect("slot") = None;
            manager.stop().await;
            let _ = self.files.wipe();
            self.files.unlock_holder().set(None);
            return Err(status_of(
                format!("init failed: {e:#}"),
                tonic::Code::Internal,
            ));
        }
        let tokens = tokens_of(manager.core()).await?;
        *guard = Some(self.activate(record.clone(), certs, Some(manager)));
        tracing::info!(node = %record.node_id, cluster = %record.cluster_id, "cluster initialised");
        Ok(pb::InitResponse {
            node_id: record.node_id,
            cluster_id: record.cluster_id,
            tokens: Some(tokens),
            advertise_addr: record.advertise_addr,
            lost_manager_ids: Vec::new(),
            unlock_key: new
                .unlock_key
                .map(|k| k.reveal().to_string())
                .unwrap_or_default(),
        })
    }

    /// `weft unlock`: a locked manager checks the key against its sealed
    /// TLS key file, holds it and starts. Nothing changes on a wrong key.
    async fn unlock(&self, r: pb::UnlockRequest) -> Result<(), Status> {
        let mut guard = self.active.lock().await;
        if !self.locked.get() || guard.is_some() {
            return Err(Status::failed_precondition(
                "this node is not locked: `weft unlock` is for a manager restarted while \
                 autolock is on",
            ));
        }
        let key: weft_proto::seal::UnlockKey = r
            .unlock_key
            .parse()
            .map_err(|e: weft_proto::seal::SealError| Status::invalid_argument(e.to_string()))?;
        let (record, certs) =
            self.files
                .load_with(std::slice::from_ref(&key))
                .map_err(|e| match e {
                    weft_worker::error::Error::Seal { .. } => {
                        Status::invalid_argument(e.to_string())
                    }
                    e => Status::internal(e.to_string()),
                })?;
        self.files.unlock_holder().set(Some(key));
        let (certs, manager) = match self.manager_for(&record, certs).await {
            Ok(started) => started,
            Err(e) => {
                self.files.unlock_holder().set(None);
                return Err(status_of(
                    format!("unlocked, but the manager cannot start: {e:#}"),
                    tonic::Code::Internal,
                ));
            }
        };
        tracing::info!(node = %record.node_id, "unlocked: resuming cluster membership");
        *guard = Some(self.activate(record, certs, manager));
        self.locked.set(false);
        Ok(())
    }

    /// `weft init --force-new-cluster`: makes this node's running manager the
    /// only voter of its group, keeping its state (see
    /// `weft_manager::raft::force_single_voter` for the rewrite and why
    /// openraft accepts it):
    ///
    /// ```text
    ///  checks (nothing changed if one fails): an active node, a running
    ///    manager, a voter, and fewer than a majority of voters answering
    ///  stop the manager ─▶ rewrite its Raft storage ─▶ start it again
    ///    (started again also when the rewrite fails: it changed nothing then)
    ///  wait until it leads and has committed the new membership
    /// ```
    async fn force_new_cluster(&self, r: &pb::InitRequest) -> Result<pb::InitResponse, Status> {
        if let Some(flag) = init_settings_given(r) {
            return Err(Status::invalid_argument(format!(
                "--force-new-cluster keeps this manager's addresses and the cluster's settings; \
                 run it without {flag} (settings can be changed afterwards with `weft cluster update`)"
            )));
        }
        let guard = self.active.lock().await;
        let Some(active) = guard.as_ref() else {
            return Err(Status::failed_precondition(
                "this node is not part of a cluster: --force-new-cluster recovers a cluster on \
                 one of its surviving managers (to create a new cluster, run `weft init` without it)",
            ));
        };
        let mut slot = active.manager.lock().await;
        let Some(manager) = slot.as_ref() else {
            return Err(Status::failed_precondition(
                "this node runs no manager (it is a worker, or its manager is stopped: see \
                 `weft info`): run --force-new-cluster on a surviving manager",
            ));
        };
        let core = manager.core().clone();
        let me = core.node_id();
        let view = core.raft().metrics();
        let Some(addr) = view.voters.get(&me).cloned() else {
            return Err(Status::failed_precondition(format!(
                "this manager ({me}) is not a voter of the Raft group yet, so its state may lack \
                 committed changes: run --force-new-cluster on a manager that is"
            )));
        };
        let (reachable, total) = core.raft().reachable_voters().await;
        let needed = weft_manager::quorum::majority(total);
        if reachable >= needed {
            return Err(Status::failed_precondition(format!(
                "{reachable} of {total} managers answer this one, and a quorum needs {needed}: \
                 the cluster has a working quorum and needs no recovery. --force-new-cluster is \
                 only for a cluster that lost a majority of its managers for good"
            )));
        }
        let lost: Vec<String> = view
            .voters
            .keys()
            .filter(|id| **id != me)
            .map(|id| id.to_string())
            .collect();
        tracing::warn!(
            node = %me, reachable, total, ?lost,
            "forcing a new cluster: this manager becomes the only voter"
        );
        *self.slot.write().expect("slot") = None;
        let old = slot.take().expect("checked above");
        let config = old.config().clone();
        old.stop().await;
        let dir = config.raft_dir.clone();
        let forced = tokio::task::spawn_blocking(move || {
            weft_manager::raft::force_single_voter(&dir, me, &addr)
        })
        .await
        .map_err(|e| Status::internal(format!("the Raft rewrite did not finish: {e}")))
        .and_then(|r| r.map_err(|e| Status::failed_precondition(e.to_string())));
        let started = Manager::start(config).await.map_err(|e| {
            Status::internal(format!(
                "the manager could not start again: {e}; restart the daemon (its Raft storage \
                 is {})",
                if forced.is_ok() {
                    "rewritten"
                } else {
                    "as it was"
                }
            ))
        })?;
        let core = started.core().clone();
        *self.slot.write().expect("slot") = Some(core.clone());
        *slot = Some(started);
        drop(slot);
        let forced = forced?;
        // Leading and having applied the new membership: every write from
        // now on commits on this manager alone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !(core.is_leader() && core.store().applied_index() >= forced.log_id.index) {
            if tokio::time::Instant::now() > deadline {
                return Err(Status::deadline_exceeded(
                    "the Raft storage was rewritten, but this manager has not become the leader \
                     within 20 s; see the daemon's log",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let record = active.record.clone();
        drop(guard);
        let tokens = tokens_of(&core).await?;
        tracing::warn!(node = %me, membership = %forced.log_id, "new cluster forced: this manager is its only voter");
        Ok(pb::InitResponse {
            node_id: record.node_id,
            cluster_id: record.cluster_id,
            tokens: Some(tokens),
            advertise_addr: record.advertise_addr,
            lost_manager_ids: lost,
            unlock_key: String::new(),
        })
    }

    async fn join(&self, r: pb::DaemonJoinRequest) -> Result<pb::DaemonJoinResponse, Status> {
        let mut guard = self.active.lock().await;
        if let Some(active) = guard.as_ref() {
            if rejoin::cert_expired(&active.agent.certs()) {
                return self.rejoin(&mut guard, r).await;
            }
            return Err(Status::already_exists(
                "this node is already part of a cluster; leave it first with `weft leave`",
            ));
        }
        let remote = validate_remote(&r.remote_addr)?;
        let advertise = if r.advertise_addr.is_empty() {
            None
        } else {
            Some(
                weft_manager::join::parse_host_port(&r.advertise_addr, 4377)
                    .map_err(Status::from)?,
            )
        };
        let listen_addr = if r.listen_addr.is_empty() {
            weft_manager::join::default_listen(
                advertise,
                advertise.map(|a| a.port()).unwrap_or(4377),
            )
        } else {
            weft_manager::join::parse_host_port(&r.listen_addr, 4377).map_err(Status::from)?
        };
        // A node may become a manager (now, or when promoted): it needs its
        // manager port, so check it before anything is changed anywhere.
        std::net::TcpListener::bind(listen_addr).map_err(|e| {
            Status::failed_precondition(format!(
                "cannot listen on {listen_addr}: {e}; this node needs its manager port to join \
                 (pick another with --listen-addr / --advertise-addr IP:PORT)"
            ))
        })?;
        let joined = weft_worker::join::join(
            &remote,
            &r.token,
            JoinParams {
                hostname: self.hostname.clone(),
                advertise_addr: advertise.map(|a| a.to_string()).unwrap_or_default(),
                data_path_addr: r.data_path_addr.clone(),
                underlay_mtu: 1500,
            },
        )
        .await
        .map_err(join_error)?;
        let is_manager = joined.role == pb::NodeRole::Manager;
        let record = NodeRecord {
            node_id: joined.node_id.clone(),
            cluster_id: joined.cluster_id.clone(),
            role: if is_manager { "manager" } else { "worker" }.into(),
            advertise_addr: advertise.map(|a| a.to_string()).unwrap_or_default(),
            listen_addr: listen_addr.to_string(),
            data_path_addr: r.data_path_addr,
            manager_addrs: if joined.manager_addrs.is_empty() {
                vec![remote.clone()]
            } else {
                joined.manager_addrs.clone()
            },
            removed_node_ids: Vec::new(),
            manager_node_ids: joined.manager_node_ids.clone(),
        };
        self.files
            .save_certs(&joined.certs)
            .and_then(|()| self.files.save_record(&record))
            .map_err(|e| status_of(e, tonic::Code::Internal))?;
        let manager = if is_manager {
            match self.start_manager(&record, &joined.certs).await {
                Ok(m) => Some(m),
                Err(e) => {
                    // Undo the admission so no half-joined manager remains.
                    if let Err(undo) = weft_worker::agent::leave(
                        &record.node_id,
                        &joined.certs,
                        &record.manager_trust(),
                        &record.manager_addrs,
                        true,
                    )
                    .await
                    {
                        tracing::error!(error = %undo, "could not undo the join");
                    }
                    let _ = self.files.wipe();
                    return Err(status_of(
                        format!("joined, but the manager could not start: {e:#}"),
                        tonic::Code::FailedPrecondition,
                    ));
                }
            }
        } else {
            None
        };
        let core = manager.as_ref().map(|m| m.core().clone());
        *guard = Some(self.activate(record, joined.certs, manager));
        drop(guard);
        if let Some(core) = core {
            // Docker's join returns once the manager is part of Raft; so do we.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let me = core.node_id();
            while !core.raft().metrics().voters.contains_key(&me) {
                if tokio::time::Instant::now() > deadline {
                    return Err(Status::deadline_exceeded(
                        "joined as a manager, but Raft has not made this node a voter within 30s; \
                         check that the managers can reach this node's --advertise-addr",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(pb::DaemonJoinResponse {
            node_id: joined.node_id,
            role: joined.role as i32,
            cluster_id: joined.cluster_id,
            rejoined: false,
        })
    }

    async fn leave(&self, force: bool) -> Result<(), Status> {
        let mut guard = self.active.lock().await;
        let Some(active) = guard.as_ref() else {
            return Err(Status::failed_precondition(
                "this node is not part of a cluster",
            ));
        };
        match active.agent.leave(force).await {
            Ok(()) => {}
            Err(e) if force => {
                tracing::warn!(error = %e, "leaving without telling the cluster (--force)");
            }
            Err(e) => {
                return Err(status_of(
                    format!("{e}; use --force to leave anyway"),
                    tonic::Code::FailedPrecondition,
                ));
            }
        }
        let active = guard.take().expect("checked above");
        // A leaving manager waits (briefly) until Raft has let it go, so the
        // cluster never counts a voter that is gone.
        if let Some(m) = active.manager.lock().await.as_ref() {
            let me = m.core().node_id();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while m.core().raft().metrics().voters.contains_key(&me)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let manager = active.stop_loops().await;
        *self.slot.write().expect("slot") = None;
        if let Some(m) = manager.lock().await.take() {
            m.stop().await;
        }
        // Leaving removes everything this node made: tasks (stopped
        // gracefully, all at once), then every kernel object.
        let tasks = self.runtime.list();
        let removed =
            futures::future::join_all(tasks.iter().map(|t| self.runtime.remove(&t.id))).await;
        for (t, r) in tasks.iter().zip(removed) {
            if let Err(e) = r {
                tracing::warn!(task = %t.id, error = %e, "could not remove task");
            }
        }
        match self.dataplane.teardown_all().await {
            Ok(report) if !report.is_clean() => {
                tracing::warn!(?report, "leftovers while tearing down the data plane")
            }
            Err(e) => tracing::warn!(error = %e, "could not tear down the data plane"),
            Ok(_) => {}
        }
        // The temporary names too: a crash mid-write leaves them, and
        // `wg.key.tmp` can hold a private key.
        for f in [
            "node-config.pb",
            "wg.key",
            "wg.generation",
            "node-config.pb.tmp",
            "wg.key.tmp",
            "wg.generation.tmp",
        ] {
            let _ = std::fs::remove_file(self.data_dir.join(f));
        }
        self.files
            .wipe()
            .map_err(|e| status_of(e, tonic::Code::Internal))?;
        // The next cluster this node joins has its own key, or none.
        self.files.unlock_holder().set(None);
        tracing::info!("left the cluster");
        Ok(())
    }

    async fn info(&self) -> pb::InfoResponse {
        let guard = self.active.lock().await;
        let mut resp = pb::InfoResponse {
            state: "inactive".into(),
            version: weft_worker::VERSION.into(),
            data_dir: self.data_dir.display().to_string(),
            exec_root: self.exec_root.display().to_string(),
            tasks_by_state: weft_worker::metrics::METRICS
                .tasks_by_state()
                .into_iter()
                .collect(),
            ..Default::default()
        };
        host_facts::fill(&mut resp);
        let Some(a) = guard.as_ref() else {
            if self.locked.get() {
                resp.state = "locked".into();
                resp.locked = true;
                resp.role = pb::NodeRole::Manager as i32;
                resp.error = self
                    .locked
                    .refuse()
                    .err()
                    .map(|s| s.message().to_owned())
                    .unwrap_or_default();
            }
            return resp;
        };
        let st = a.agent.status().borrow().clone();
        let certs = a.agent.certs();
        resp.state = if st.removed {
            "removed".into()
        } else if st.connected_to.is_some() {
            "active".into()
        } else {
            "pending".into()
        };
        resp.node_id = a.record.node_id.clone();
        resp.cluster_id = a.record.cluster_id.clone();
        resp.node_addr = a.record.advertise_addr.clone();
        resp.manager_addrs = st.manager_addrs.clone();
        resp.role = if st.cert_role == "manager" {
            pb::NodeRole::Manager
        } else {
            pb::NodeRole::Worker
        } as i32;
        resp.cert_expiry = PeerIdentity::from_pem(&certs.cert_pem)
            .map(|p| weft_manager::core::rfc3339(p.not_after))
            .unwrap_or_default();
        resp.error = st.last_error.clone();
        let problem = self.manager_problem.read().expect("problem").clone();
        if !problem.is_empty() {
            resp.error = problem;
        }
        drop(guard);
        let core = self.slot.read().expect("slot").clone();
        if let Some(core) = core {
            match weft_manager::controlapi::ControlService::new(
                core,
                weft_manager::controlapi::Caller::Local,
            )
            .summary()
            {
                Ok(s) => resp.cluster = Some(s),
                Err(e) => resp.error = e.to_string(),
            }
        }
        resp
    }
}

/// The first `weft init` flag set in `r` besides --force-new-cluster, which
/// keeps everything as it is.
fn init_settings_given(r: &pb::InitRequest) -> Option<&'static str> {
    [
        (!r.advertise_addr.is_empty(), "--advertise-addr"),
        (!r.listen_addr.is_empty(), "--listen-addr"),
        (!r.data_path_addr.is_empty(), "--data-path-addr"),
        (r.data_path_port != 0, "--data-path-port"),
        (!r.default_addr_pools.is_empty(), "--default-addr-pool"),
        (
            r.default_addr_pool_mask_length != 0 || r.default_addr_pool_mask_length6 != 0,
            "--default-addr-pool-mask-length",
        ),
        (r.cert_expiry_secs != 0, "--cert-expiry"),
        (r.heartbeat_period_ms != 0, "--heartbeat-period"),
        (r.disconnect_grace_ms != 0, "--disconnect-grace"),
        (r.wg_key_rotation_secs != 0, "--wg-key-rotation"),
        (r.wg_port != 0, "--wg-port"),
        (
            !r.ingress_subnet.is_empty() || !r.ingress_subnet6.is_empty(),
            "--ingress-subnet",
        ),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}

fn validate_remote(s: &str) -> Result<String, Status> {
    let s = s.trim();
    let ok = match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    };
    if ok {
        Ok(s.to_string())
    } else if s.parse::<std::net::IpAddr>().is_ok() {
        Ok(format!("{s}:4377"))
    } else {
        Err(Status::invalid_argument(format!(
            "invalid manager address {s:?}: expected HOST:PORT, e.g. 198.18.0.1:4377"
        )))
    }
}

fn join_error(e: weft_worker::error::Error) -> Status {
    use weft_worker::error::Error as E;
    match &e {
        E::Token(_) => Status::invalid_argument(e.to_string()),
        E::Rpc { status, .. } => Status::new(status.code(), e.to_string()),
        E::Tls(_) => Status::unavailable(e.to_string()),
        E::PortInUse { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

async fn tokens_of(core: &weft_manager::core::Core) -> Result<pb::JoinTokens, Status> {
    use weft_proto::v1::control_server::Control;
    let svc = weft_manager::controlapi::ControlService::new(
        core.clone(),
        weft_manager::controlapi::Caller::Local,
    );
    Ok(svc
        .get_join_tokens(Request::new(pb::GetJoinTokensRequest {}))
        .await?
        .into_inner())
}

#[tonic::async_trait]
impl Daemon for NodeService {
    async fn init(
        &self,
        req: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        self.locked.refuse()?;
        Ok(Response::new(
            NodeService::init(self, req.into_inner()).await?,
        ))
    }

    async fn join(
        &self,
        req: Request<pb::DaemonJoinRequest>,
    ) -> Result<Response<pb::DaemonJoinResponse>, Status> {
        self.locked.refuse()?;
        Ok(Response::new(
            NodeService::join(self, req.into_inner()).await?,
        ))
    }

    async fn leave(
        &self,
        req: Request<pb::DaemonLeaveRequest>,
    ) -> Result<Response<pb::DaemonLeaveResponse>, Status> {
        self.locked.refuse()?;
        NodeService::leave(self, req.into_inner().force).await?;
        Ok(Response::new(pb::DaemonLeaveResponse {}))
    }

    async fn info(
        &self,
        _req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(NodeService::info(self).await))
    }

    async fn doctor(
        &self,
        req: Request<pb::DoctorRequest>,
    ) -> Result<Response<pb::DoctorReport>, Status> {
        Ok(Response::new(
            NodeService::doctor(self, req.into_inner()).await,
        ))
    }

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        NodeService::unlock(self, req.into_inner()).await?;
        Ok(Response::new(pb::UnlockResponse {}))
    }

    async fn run(&self, req: Request<pb::RunTaskRequest>) -> Result<Response<pb::Task>, Status> {
        self.run_task(req.into_inner()).await.map(Response::new)
    }

    async fn cni_add(
        &self,
        req: Request<pb::CniRequest>,
    ) -> Result<Response<pb::CniResult>, Status> {
        self.cni_add(req.into_inner()).await.map(Response::new)
    }

    async fn cni_del(
        &self,
        req: Request<pb::CniRequest>,
    ) -> Result<Response<pb::CniDelResponse>, Status> {
        self.cni_del(req.into_inner()).await.map(Response::new)
    }

    async fn cni_check(
        &self,
        req: Request<pb::CniRequest>,
    ) -> Result<Response<pb::CniResult>, Status> {
        self.cni_check(req.into_inner()).await.map(Response::new)
    }

    async fn cni_gc(
        &self,
        req: Request<pb::CniGcRequest>,
    ) -> Result<Response<pb::CniGcResponse>, Status> {
        self.cni_gc(req.into_inner()).await.map(Response::new)
    }

    async fn ps(
        &self,
        req: Request<pb::PsRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.ps_tasks(req.get_ref().all).await.map(Response::new)
    }

    type LogsStream = tasks::LogsStream;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.task_logs(req.into_inner()).await.map(Response::new)
    }

    async fn rm(
        &self,
        req: Request<pb::RmRequest>,
    ) -> Result<Response<pb::RemoveTaskResponse>, Status> {
        self.rm_task(req.into_inner()).await.map(Response::new)
    }

    type AttachStream = attach::AttachStream;

    async fn attach(
        &self,
        req: Request<pb::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        self.attach_task(req.into_inner()).await.map(Response::new)
    }

    type AttachStdioStream = attach_stdio::AttachStdioStream;

    async fn attach_stdio(
        &self,
        req: Request<tonic::Streaming<pb::AttachStdioRequest>>,
    ) -> Result<Response<Self::AttachStdioStream>, Status> {
        self.attach_stdio_task(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop(
        &self,
        req: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopResponse>, Status> {
        self.stop_task(req.into_inner()).await.map(Response::new)
    }

    async fn start(
        &self,
        req: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartResponse>, Status> {
        self.start_task(req.into_inner()).await.map(Response::new)
    }

    async fn inspect(
        &self,
        req: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        self.inspect_task(req.into_inner()).await.map(Response::new)
    }

    type ExecStream = exec::ExecStream;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<pb::ExecClientMessage>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        self.exec_task(req.into_inner()).await.map(Response::new)
    }

    async fn volume_create(
        &self,
        req: Request<pb::VolumeCreateRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        NodeService::volume_create(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn volume_list(
        &self,
        req: Request<pb::VolumeListRequest>,
    ) -> Result<Response<pb::VolumeListResponse>, Status> {
        NodeService::volume_list(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn volume_inspect(
        &self,
        req: Request<pb::VolumeInspectRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        NodeService::volume_inspect(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn volume_remove(
        &self,
        req: Request<pb::VolumeRemoveRequest>,
    ) -> Result<Response<pb::VolumeRemoveResponse>, Status> {
        NodeService::volume_remove(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn volume_prune(
        &self,
        req: Request<pb::VolumePruneRequest>,
    ) -> Result<Response<pb::VolumePruneResponse>, Status> {
        NodeService::volume_prune(self, req.into_inner())
            .await
            .map(Response::new)
    }
}

fn not_member() -> Status {
    Status::failed_precondition(
        "this node is not part of a cluster: `weft init` or `weft join` first",
    )
}

fn worker_status(e: weft_worker::error::Error) -> Status {
    match &e {
        weft_worker::error::Error::Rpc { status, .. } => {
            Status::new(status.code(), status.message())
        }
        _ => Status::unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_logger_beside_the_binary_is_preferred() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let exe = d.path().join("weft");
        std::fs::write(&exe, "").expect("write");
        assert_eq!(
            logger_program(&exe),
            exe,
            "none beside it: the binary itself"
        );
        let small = d.path().join(weft_worker::logs::LOGGER_ARG);
        std::fs::write(&small, "").expect("write");
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(logger_program(&exe), exe, "not executable: ignored");
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(logger_program(&exe), small);
    }
}
