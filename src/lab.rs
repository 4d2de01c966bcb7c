//! `weft lab`: a whole cluster of real `weft daemon`s on one machine, each
//! node in its own network, mount and UTS namespaces, joined by an underlay
//! bridge (DESIGN.md §8) — what `kind` is to Kubernetes.
//!
//! Owns: the lab command line, the lab layout under `/run/weft-lab/<lab>`
//! ([`spec`]), its state file ([`state`]), building and forming the cluster
//! ([`up`]), entering nodes ([`exec`]) and removing every trace
//! ([`teardown`], over the `/proc` views in [`procs`]). The namespace and
//! link plumbing is `weft_overlay::linux`'s; cluster formation goes through
//! the real CLI and local API, exactly as a user would.

mod containers;
mod exec;
mod procs;
mod spec;
mod state;
mod teardown;
mod up;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use spec::{DEFAULT_NAME, DEFAULT_ROOT, DEFAULT_UNDERLAY, LabSpec, Layout, Subnet};
use state::{LabState, Phase};

/// `weft lab …`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create a lab: an underlay, one namespaced `weft daemon` per node, a
    /// formed cluster (init on m1, the others join); waits until all are Ready.
    Up(UpArgs),
    /// List the labs on this machine.
    #[command(alias = "list")]
    Ls(RootArg),
    /// Show a lab's nodes, their daemons and the cluster as m1 sees it.
    Status {
        /// The lab (default: the only one).
        #[arg(value_parser = spec::parse_lab_name)]
        lab: Option<String>,
        #[command(flatten)]
        root: RootArg,
    },
    /// Run a command on a node: in its namespaces, with WEFT_HOST set to its
    /// daemon (`weft lab exec demo m1 -- weft node ls`). Exits with the
    /// command's exit code.
    Exec {
        /// The lab.
        #[arg(value_parser = spec::parse_lab_name)]
        lab: String,
        /// The node (m1, w1, …).
        node: String,
        /// The command and its arguments (default: $SHELL).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<OsString>,
        #[command(flatten)]
        root: RootArg,
    },
    /// Remove a lab entirely: daemons and their tasks, namespaces, links,
    /// mounts and files; also after a crash or a killed daemon.
    Down(DownArgs),
}

/// Where the labs live; hidden, for tests and unusual machines.
#[derive(Debug, Args)]
pub struct RootArg {
    /// Directory holding the labs.
    #[arg(long = "root", env = "WEFT_LAB_ROOT", default_value = DEFAULT_ROOT, hide = true)]
    root: PathBuf,
}

/// `weft lab up`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Lab options")]
pub struct UpArgs {
    /// Name of the lab (lowercase letters, digits and '-', at most 24).
    #[arg(long, default_value = DEFAULT_NAME, value_parser = spec::parse_lab_name)]
    name: String,
    /// Number of managers, 1-7 (m1 creates the cluster).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=7))]
    managers: u8,
    /// Number of workers, 0-20.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=20))]
    workers: u8,
    /// Underlay subnet, inside 198.18.0.0/15 (each lab's underlay is its own,
    /// so labs may use the same one).
    #[arg(long, default_value = DEFAULT_UNDERLAY, value_parser = spec::parse_underlay)]
    underlay: Subnet,
    /// Seconds to wait for every node to be Ready.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// The containerd socket the daemons run containers through (default:
    /// the daemon's, /run/containerd/containerd.sock).
    #[arg(long, value_parser = absolute_path)]
    containerd_socket: Option<PathBuf>,
    /// runc's state directory for the daemons' containers (default: the
    /// daemon's).
    #[arg(long, value_parser = absolute_path)]
    runc_root: Option<PathBuf>,
    /// The cgroup the daemons' containers go under (default: the daemon's,
    /// /weft).
    #[arg(long, value_parser = absolute_path)]
    cgroup_parent: Option<PathBuf>,
    #[command(flatten)]
    root: RootArg,
}

/// An absolute path (the daemons run from `/`).
fn absolute_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("{s:?} is not an absolute path"))
    }
}

/// `weft lab down`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Lab options")]
pub struct DownArgs {
    /// The lab (default: the only one).
    #[arg(value_parser = spec::parse_lab_name, conflicts_with = "all")]
    lab: Option<String>,
    /// Remove every lab.
    #[arg(long)]
    all: bool,
    /// Succeed when there is no such lab (and sweep leftovers of one anyway).
    #[arg(short, long)]
    force: bool,
    #[command(flatten)]
    root: RootArg,
}

/// Runs a lab command.
pub async fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up(a) => cmd_up(a).await,
        LabCommand::Ls(r) => cmd_ls(&root_dir(&r.root)?),
        LabCommand::Status { lab, root } => cmd_status(&root_dir(&root.root)?, lab).await,
        LabCommand::Exec {
            lab,
            node,
            cmd,
            root,
        } => {
            require_root("exec")?;
            let code = cmd_exec(&root_dir(&root.root)?, &lab, &node, cmd).await?;
            if code != 0 {
                let _ = std::io::stdout().flush();
                std::process::exit(code);
            }
            Ok(())
        }
        LabCommand::Down(a) => {
            require_root("down")?;
            cmd_down(&root_dir(&a.root.root)?, a).await
        }
    }
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("`weft lab {what}` needs root (labs are network and mount namespaces); try sudo");
    }
    Ok(())
}

/// The labs' root, with symlinks resolved when it exists (paths are
/// compared with the mount table and command lines).
fn root_dir(root: &Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        root.is_absolute(),
        "the labs root {} must be an absolute path",
        root.display()
    );
    match root.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(root.to_owned()),
        Err(e) => Err(e).with_context(|| format!("cannot resolve {}", root.display())),
    }
}

/// This `weft` binary (the daemons run it, `lab exec` puts it on PATH).
fn self_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the running weft binary")
}

/// How to spell `weft` in hints: `weft` if that is this binary on PATH,
/// else its full path.
fn weft_hint() -> String {
    let Ok(me) = self_exe().and_then(|p| Ok(p.canonicalize()?)) else {
        return "weft".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .filter_map(|d| d.join("weft").canonicalize().ok())
            .next()
            .is_some_and(|p| p == me)
    });
    if on_path {
        "weft".into()
    } else {
        me.display().to_string()
    }
}

/// The lab named, or the only one there is.
fn pick_lab(root: &Path, lab: Option<String>) -> anyhow::Result<String> {
    if let Some(l) = lab {
        return Ok(l);
    }
    let labs = state::list_labs(root)?;
    match labs.as_slice() {
        [only] => Ok(only.clone()),
        [] => bail!("there are no labs; create one with `weft lab up`"),
        many => bail!("there are several labs ({}); name one", many.join(", ")),
    }
}

fn load_existing(layout: &Layout, name: &str) -> anyhow::Result<LabState> {
    if !layout.dir().exists() {
        bail!("there is no lab {name}; `weft lab ls` lists the labs");
    }
    LabState::load(layout)?.with_context(|| {
        format!("lab {name} has no state file (a crashed `lab up`?); remove it with `weft lab down {name}`")
    })
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

async fn cmd_up(a: UpArgs) -> anyhow::Result<()> {
    require_root("up")?;
    let spec =
        LabSpec::new(&a.name, a.managers, a.workers, a.underlay).map_err(|e| anyhow::anyhow!(e))?;
    std::fs::create_dir_all(&a.root.root)
        .with_context(|| format!("cannot create {}", a.root.root.display()))?;
    let root = root_dir(&a.root.root)?;
    let layout = Layout::new(&root, &spec.name);
    layout
        .check_socket_paths(&spec)
        .map_err(|e| anyhow::anyhow!(e))?;
    let opts = up::UpOptions {
        weft: self_exe()?,
        timeout: Duration::from_secs(a.timeout),
        containerd: state::ContainerdSettings {
            socket: a.containerd_socket,
            runc_root: a.runc_root,
            cgroup_parent: a.cgroup_parent,
        },
    };
    println!(
        "Creating lab {}: {} manager(s), {} worker(s) on {} …",
        spec.name,
        spec.managers(),
        spec.workers(),
        spec.underlay
    );
    let (state, t) = up::up(&layout, &spec, &opts).await?;
    let w = weft_hint();
    println!(
        "Lab {} is up: cluster formed in {} (underlay built at {}, daemons answering at {}, joins done at {}).",
        state.name,
        secs(t.ready),
        secs(t.underlay),
        secs(t.daemons),
        secs(t.joined)
    );
    println!();
    print_nodes(&state);
    println!();
    println!("Use it:");
    println!(
        "  {w} lab exec {0} m1 -- weft node ls    run a command on a node (WEFT_HOST is its daemon)",
        state.name
    );
    println!(
        "  {w} lab exec {0} w1                    a shell on a node",
        state.name
    );
    println!("  {w} lab status {0}", state.name);
    println!("Tear it down:");
    println!("  {w} lab down {0}", state.name);
    Ok(())
}

fn print_nodes(state: &LabState) {
    println!(
        "{:<6} {:<8} {:<16} {:<8} {:<8} SOCKET",
        "NODE", "ROLE", "ADDRESS", "PID", "DAEMON"
    );
    for n in &state.nodes {
        let pid = n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let daemon = if exec::daemon_pid(n).is_some() {
            "running"
        } else {
            "dead"
        };
        println!(
            "{:<6} {:<8} {:<16} {:<8} {:<8} {}",
            n.name,
            n.role.to_string(),
            n.addr.to_string(),
            pid,
            daemon,
            n.socket.display()
        );
    }
}

fn age(created_unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(created_unix);
    let s = now.saturating_sub(created_unix);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn cmd_ls(root: &Path) -> anyhow::Result<()> {
    let labs = state::list_labs(root)?;
    println!(
        "{:<24} {:<9} {:<8} {:<18} {:<8} {:<9} AGE",
        "NAME", "MANAGERS", "WORKERS", "UNDERLAY", "DAEMONS", "PHASE"
    );
    for name in labs {
        let layout = Layout::new(root, &name);
        match LabState::load(&layout) {
            Ok(Some(s)) => {
                let (m, w) = s.counts();
                let up = s
                    .nodes
                    .iter()
                    .filter(|n| exec::daemon_pid(n).is_some())
                    .count();
                let phase = match s.phase {
                    Phase::Creating => "creating",
                    Phase::Ready => "ready",
                };
                println!(
                    "{:<24} {:<9} {:<8} {:<18} {:<8} {:<9} {}",
                    name,
                    m,
                    w,
                    s.underlay.to_string(),
                    format!("{up}/{}", s.nodes.len()),
                    phase,
                    age(s.created_unix)
                );
            }
            Ok(None) => println!(
                "{name:<24} (no state file: a crashed `lab up`? `weft lab down {name}` removes it)"
            ),
            Err(e) => println!("{name:<24} (unreadable: {e:#})"),
        }
    }
    Ok(())
}

async fn cmd_status(root: &Path, lab: Option<String>) -> anyhow::Result<()> {
    let name = pick_lab(root, lab)?;
    let layout = Layout::new(root, &name);
    let state = load_existing(&layout, &name)?;
    let (m, w) = state.counts();
    let phase = match state.phase {
        Phase::Creating => "creating (or `lab up` crashed)".to_string(),
        Phase::Ready => match state.formation_ms {
            Some(ms) => format!("ready (formed in {})", secs(Duration::from_millis(ms))),
            None => "ready".into(),
        },
    };
    println!(
        "Lab {name}: {m} manager(s), {w} worker(s), underlay {}, {phase}",
        state.underlay
    );
    println!("Directory: {}", state.dir.display());
    println!();
    print_nodes(&state);
    println!();
    // The cluster as the first running manager sees it.
    let manager = state
        .nodes
        .iter()
        .filter(|n| n.role == spec::Role::Manager)
        .find(|n| exec::daemon_pid(n).is_some());
    let Some(manager) = manager else {
        println!("No manager daemon is running.");
        return Ok(());
    };
    println!("Nodes (as {} sees them):", manager.name);
    let out = tokio::process::Command::new(self_exe()?)
        .arg("-H")
        .arg(format!("unix://{}", manager.socket.display()))
        .args(["node", "ls"])
        .env_remove("WEFT_HOST")
        .output()
        .await?;
    std::io::stdout().write_all(&out.stdout)?;
    if !out.status.success() {
        println!(
            "  (node ls failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn cmd_exec(root: &Path, lab: &str, node: &str, cmd: Vec<OsString>) -> anyhow::Result<i32> {
    let layout = Layout::new(root, lab);
    let state = load_existing(&layout, lab)?;
    let Some(n) = state.node(node) else {
        let names: Vec<_> = state.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "lab {lab} has no node {node}; its nodes are {}",
            names.join(", ")
        );
    };
    exec::exec(&state, n, &self_exe()?, cmd).await
}

async fn cmd_down(root: &Path, a: DownArgs) -> anyhow::Result<()> {
    let names = if a.all {
        state::list_labs(root)?
    } else {
        match pick_lab(root, a.lab) {
            Ok(n) => vec![n],
            Err(e) if a.force => {
                println!("Nothing to tear down ({e:#}).");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    };
    if names.is_empty() {
        println!("There are no labs.");
    }
    let mut failed = Vec::new();
    for name in names {
        let layout = Layout::new(root, &name);
        if layout.dir().exists() && !state::looks_like_lab(layout.dir()) {
            eprintln!(
                "{} is not a lab directory; leaving it alone",
                layout.dir().display()
            );
            failed.push(name);
            continue;
        }
        // Read before the teardown removes it: the nodes whose containers go.
        let recorded = state::LabState::load(&layout).ok().flatten();
        let mut out = tokio::task::block_in_place(|| teardown::destroy(&layout));
        let mut removed_containers = 0;
        if let Some(st) = &recorded {
            let (n, errors) = containers::purge(st).await;
            removed_containers = n;
            out.errors.extend(errors);
        }
        if !out.existed && out.killed.is_empty() {
            if a.force || a.all {
                println!("There is no lab {name}; nothing to do.");
                continue;
            }
            bail!("there is no lab {name}; `weft lab ls` lists the labs (--force ignores this)");
        }
        if out.errors.is_empty() {
            println!(
                "Lab {name} is down (killed {} process(es), removed {} namespace(s), {} \
                 container(s)).",
                out.killed.len(),
                out.pins,
                removed_containers
            );
        } else {
            eprintln!("Lab {name}: teardown incomplete:");
            for e in &out.errors {
                eprintln!("  {e}");
            }
            failed.push(name);
        }
    }
    // The root goes too once it is empty (it is ours).
    let _ = std::fs::remove_dir(root);
    if !failed.is_empty() {
        bail!(
            "could not remove every trace of lab(s) {}; see above, then retry `weft lab down`",
            failed.join(", ")
        );
    }
    Ok(())
}
