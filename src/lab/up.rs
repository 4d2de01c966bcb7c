//! `weft lab up`: build the underlay, start one detached daemon per node in
//! its own network, mount and UTS namespaces, form the cluster, wait until
//! every node is Ready.
//!
//! ```text
//!  mkdir <lab>  (exclusive: the lab's lock) ─ bind-mount it on itself, shared
//!  lab.json (creating) ─ Underlay (switch + one netns per node)
//!  spawn daemons (setsid; netns; new mount ns; hostname) ─ lab.json (pids)
//!  wait for each socket ─ init m1 ─ join managers, then workers ─ all Ready
//!  lab.json (ready, namespaces of each daemon) ─ summary
//! ```
//!
//! On any failure, or Ctrl-C, everything made so far is torn down again
//! (teardown.rs). The daemons outlive this command: new session, no
//! parent-death signal, the underlay's pins stay mounted.
//!
//! Why the shared bind mount: a daemon's new mount namespace copies every
//! mount of the host, including other labs' namespace pins. When the pins
//! are shared mounts, removing one on the host propagates into those
//! copies, so tearing down lab A never leaves its namespaces alive inside
//! lab B's daemons.

use std::fs::OpenOptions;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use nix::mount::MsFlags;
use weft_overlay::linux::MountPropagation;
use weft_overlay::linux::topology::{Underlay, UnderlayHost};
use weft_proto::v1 as pb;
use weft_proto::v1::control_client::ControlClient;
use weft_proto::v1::daemon_client::DaemonClient;

use super::procs;
use super::spec::{LabSpec, Layout, MANAGER_PORT, Role};
use super::state::{ContainerdSettings, LabState, NodeState, Phase, STATE_VERSION};
use super::teardown;

/// How long one daemon may take to open its socket.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(100);

/// Options of [`up`] beyond the spec.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The `weft` binary the daemons run and the CLI calls use.
    pub weft: PathBuf,
    /// How long the whole cluster may take to become Ready.
    pub timeout: Duration,
    /// The containerd the daemons use.
    pub containerd: ContainerdSettings,
}

/// When each phase of a successful `up` ended, counted from its start.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Underlay built.
    pub underlay: Duration,
    /// Every daemon answering on its socket.
    pub daemons: Duration,
    /// init and every join done.
    pub joined: Duration,
    /// Every node Ready on m1.
    pub ready: Duration,
}

/// Builds the lab; on failure or Ctrl-C tears down what it made.
pub async fn up(
    layout: &Layout,
    spec: &LabSpec,
    opts: &UpOptions,
) -> anyhow::Result<(LabState, Timings)> {
    lock_lab_dir(layout)?;
    let result = tokio::select! {
        r = build(layout, spec, opts) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(r) => Ok(r),
        Err(e) => {
            eprintln!("lab up failed, tearing down lab {} …", spec.name);
            let out = tokio::task::block_in_place(|| teardown::destroy(layout));
            for err in &out.errors {
                eprintln!("  teardown: {err}");
            }
            // The labs' root goes too if this was its only lab.
            let _ = std::fs::remove_dir(layout.root());
            Err(e)
        }
    }
}

/// Creates the lab directory, failing if it exists: two `up`s of one
/// name never both proceed.
fn lock_lab_dir(layout: &Layout) -> anyhow::Result<()> {
    let dir = layout.dir();
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            bail!(
                "lab {name} already exists ({}); see `weft lab status {name}`, \
                 or remove it with `weft lab down {name}`",
                dir.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
}

async fn build(
    layout: &Layout,
    spec: &LabSpec,
    opts: &UpOptions,
) -> anyhow::Result<(LabState, Timings)> {
    let start = Instant::now();
    let dir = layout.dir();
    nix::mount::mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("cannot bind-mount {} on itself", dir.display()))?;
    nix::mount::mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .with_context(|| format!("cannot make {} a shared mount", dir.display()))?;

    let mut state = LabState {
        version: STATE_VERSION,
        name: spec.name.clone(),
        dir: dir.to_owned(),
        underlay: spec.underlay,
        phase: Phase::Creating,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        weft: opts.weft.clone(),
        formation_ms: None,
        containerd: opts.containerd.clone(),
        nodes: Vec::new(),
    };
    state.save(layout)?;

    let hosts: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    let subnet = spec
        .underlay
        .to_string()
        .parse()
        .context("underlay subnet")?;
    let underlay = Underlay::create(layout.root(), &spec.name, subnet, &hosts)
        .await
        .context("cannot build the underlay")?;
    // The lab outlives this process: its pins stay mounted and `lab down`
    // removes them (teardown.rs), so the handle's Drop must never run.
    let underlay = std::mem::ManuallyDrop::new(underlay);
    let t_underlay = start.elapsed();

    for plan in &spec.nodes {
        let host = underlay.host(&plan.name).context("underlay host missing")?;
        anyhow::ensure!(
            host.addr() == plan.addr,
            "underlay gave {} the address {}, the plan says {}",
            plan.name,
            host.addr(),
            plan.addr
        );
        state.nodes.push(NodeState {
            name: plan.name.clone(),
            role: plan.role,
            addr: plan.addr,
            netns: host.netns().path().to_owned(),
            socket: layout.socket(&plan.name),
            data_dir: layout.data_dir(&plan.name),
            exec_root: layout.exec_root(&plan.name),
            log: layout.log(&plan.name),
            pid: None,
            mnt_ns: None,
            uts_ns: None,
        });
    }

    // Start every daemon first, then wait for them together.
    let mut children = Vec::new();
    for (i, node) in state.nodes.iter_mut().enumerate() {
        let host = &underlay.hosts()[i];
        let child = spawn_daemon(layout, opts, host, node)?;
        node.pid = Some(child.id());
        children.push(child);
    }
    state.save(layout)?;
    for (node, child) in state.nodes.iter().zip(children.iter_mut()) {
        wait_for_daemon(node, child).await?;
    }
    // Their namespaces exist now (the daemons have run past exec).
    for node in &mut state.nodes {
        let pid = node.pid.unwrap_or(0);
        node.mnt_ns = procs::ns_id(Path::new(&format!("/proc/{pid}/ns/mnt")));
        node.uts_ns = procs::ns_id(Path::new(&format!("/proc/{pid}/ns/uts")));
    }
    state.save(layout)?;
    let t_daemons = start.elapsed();

    form_cluster(&opts.weft, &state).await?;
    let t_joined = start.elapsed();

    let deadline = start + opts.timeout;
    wait_until_ready(&state, &mut children, deadline).await?;
    let t_ready = start.elapsed();

    state.phase = Phase::Ready;
    state.formation_ms = Some(t_ready.as_millis() as u64);
    state.save(layout)?;
    Ok((
        state,
        Timings {
            underlay: t_underlay,
            daemons: t_daemons,
            joined: t_joined,
            ready: t_ready,
        },
    ))
}

/// Starts `weft daemon` for `node` inside its host: its network namespace,
/// a new mount namespace and a UTS namespace with the node's name as
/// hostname; detached in a session of its own so it outlives `lab up`.
/// The mount namespace inherits propagation, so the lab directory (a
/// shared mount) stays a peer of the host's: the namespace pins the daemon
/// makes under its exec root are seen by containerd and runc, which run in
/// the host's mount namespace and open a container's network namespace by
/// its pin's path (as they do for a daemon run by systemd). Teardown
/// unmounts every pin under the lab directory.
fn spawn_daemon(
    layout: &Layout,
    opts: &UpOptions,
    host: &UnderlayHost,
    node: &NodeState,
) -> anyhow::Result<Child> {
    let node_dir = layout.node_dir(&node.name);
    for d in [&node_dir, &node.data_dir, &node.exec_root] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .with_context(|| format!("cannot create {}", d.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .with_context(|| format!("cannot open {}", node.log.display()))?;
    let mut cmd = host
        .ns_command()
        .new_mount_ns()
        .propagation(MountPropagation::Inherit)
        .hostname(&node.name)
        .new_session()
        .command(&opts.weft)?;
    cmd.arg("daemon")
        .arg("--hostname")
        .arg(&node.name)
        .arg("--data-dir")
        .arg(&node.data_dir)
        .arg("--exec-root")
        .arg(&node.exec_root)
        .arg("--socket")
        .arg(&node.socket)
        .args(opts.containerd.daemon_args())
        .env_remove("WEFT_HOST")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.spawn()
        .with_context(|| format!("cannot start the daemon of {}", node.name))
}

/// The last lines of a node's daemon log, for error messages.
pub fn log_tail(node: &NodeState, lines: usize) -> String {
    let text = std::fs::read_to_string(&node.log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "--- last lines of {} ---\n{}",
        node.log.display(),
        all[from..].join("\n")
    )
}

/// Asks a daemon for its info over its socket.
pub async fn daemon_info(socket: &Path) -> anyhow::Result<pb::InfoResponse> {
    let channel = weft_proto::tls::connect_unix(socket).await?;
    let info = tokio::time::timeout(
        Duration::from_secs(5),
        DaemonClient::new(channel).info(pb::InfoRequest {}),
    )
    .await
    .context("the daemon did not answer within 5s")?
    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(info.into_inner())
}

/// Lists the cluster's nodes through a manager's socket.
pub async fn list_nodes(socket: &Path) -> anyhow::Result<Vec<pb::Node>> {
    let channel = weft_proto::tls::connect_unix(socket).await?;
    let nodes = tokio::time::timeout(
        Duration::from_secs(5),
        ControlClient::new(channel).list_nodes(pb::ListNodesRequest {}),
    )
    .await
    .context("the manager did not answer within 5s")?
    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(nodes.into_inner().nodes)
}

async fn wait_for_daemon(node: &NodeState, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the daemon of {} exited ({status}) before it was ready\n{}",
                node.name,
                log_tail(node, 20)
            );
        }
        if node.socket.exists() && daemon_info(&node.socket).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the daemon of {} did not open {} within {DAEMON_START_TIMEOUT:?}\n{}",
                node.name,
                node.socket.display(),
                log_tail(node, 20)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `weft -H unix://<socket> ARGS`; returns stdout, or fails with the
/// command's stderr and the node's log.
async fn weft_cli(weft: &Path, node: &NodeState, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(weft)
        .arg("-H")
        .arg(format!("unix://{}", node.socket.display()))
        .args(args)
        .env_remove("WEFT_HOST")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", weft.display()))?;
    if !out.status.success() {
        bail!(
            "`weft {}` on {} failed: {}\n{}",
            args.join(" "),
            node.name,
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail(node, 20)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// init on the first manager, then joins: managers one by one (each is a
/// Raft membership change), then the workers.
async fn form_cluster(weft: &Path, state: &LabState) -> anyhow::Result<()> {
    let first = state.nodes.first().context("a lab has nodes")?;
    let first_addr = first.addr.to_string();
    weft_cli(weft, first, &["init", "--advertise-addr", &first_addr]).await?;
    let worker_token = weft_cli(weft, first, &["join-token", "-q", "worker"]).await?;
    let manager_token = weft_cli(weft, first, &["join-token", "-q", "manager"]).await?;
    let remote = format!("{first_addr}:{MANAGER_PORT}");
    for node in &state.nodes[1..] {
        let token = match node.role {
            Role::Manager => manager_token.trim(),
            Role::Worker => worker_token.trim(),
        };
        let addr = node.addr.to_string();
        weft_cli(
            weft,
            node,
            &["join", "--token", token, "--advertise-addr", &addr, &remote],
        )
        .await?;
    }
    Ok(())
}

/// Waits until the first manager lists every node as Ready (and every
/// manager as a reachable manager).
async fn wait_until_ready(
    state: &LabState,
    children: &mut [Child],
    deadline: Instant,
) -> anyhow::Result<()> {
    let first = state.nodes.first().context("a lab has nodes")?;
    let (managers, _) = state.counts();
    loop {
        for (node, child) in state.nodes.iter().zip(children.iter_mut()) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the daemon of {} exited ({status})\n{}",
                    node.name,
                    log_tail(node, 20)
                );
            }
        }
        let last = match list_nodes(&first.socket).await {
            Ok(nodes) => {
                let ready = nodes
                    .iter()
                    .filter(|n| n.state == pb::NodeState::Ready as i32)
                    .count();
                let reachable = nodes
                    .iter()
                    .filter(|n| {
                        n.manager_status == pb::ManagerStatus::Leader as i32
                            || n.manager_status == pb::ManagerStatus::Reachable as i32
                    })
                    .count();
                if nodes.len() == state.nodes.len() && ready == nodes.len() && reachable == managers
                {
                    return Ok(());
                }
                format!(
                    "{} of {} nodes known, {ready} Ready, {reachable} of {managers} managers reachable",
                    nodes.len(),
                    state.nodes.len()
                )
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "the cluster was not Ready in time: {last}\n{}",
                log_tail(first, 20)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
