//! The `weft` binary: parses arguments, wires components, prints. No
//! cluster logic lives here (DESIGN.md §1).

mod autolock;
mod cli;
mod cni;
mod cni_cmd;
mod commands;
mod daemon;
mod data_format;
mod docker_plugin;
mod doctor;
mod events_cmd;
mod format;
mod health_args;
mod http1;
mod image_cmd;
mod isolation;
mod lab;
mod login;
mod logs_cmd;
mod man;
mod network_arg;
mod publish;
mod resources;
mod settings;
mod task_text;
mod ui;
mod unlock;
mod update_args;
mod volume_args;
mod workload;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};

/// mimalloc instead of glibc's malloc: the daemon's request and Raft paths
/// allocate many small short-lived buffers, and glibc's allocator was a
/// fifth of a manager's CPU under write load (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // A CNI runtime runs us as /opt/cni/bin/weft: the call is in the
    // environment, the config on stdin; no arguments.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return cni::main();
    }
    // containerd's shim starts us as a container's logger
    // (`binary://…?weft-task-logger=<task dir>`): not a clap command, the
    // shim fixes the argument order.
    let args: Vec<std::ffi::OsString> = std::env::args_os().take(4).collect();
    if let [_, mode, dir] = args.as_slice()
        && mode == weft_worker::logs::LOGGER_ARG
    {
        return weft_worker::logs::logger::main(std::path::Path::new(dir));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `weft run` with bad flags ends with Docker's 125, as everything
        // weft cannot run does; other commands keep clap's codes.
        Err(e) if e.use_stderr() && subcommand_is_run() => {
            let _ = e.print();
            return std::process::ExitCode::from(commands::FAILED_TO_RUN);
        }
        Err(e) => e.exit(),
    };
    if let Command::FdStore { socket } = &cli.command {
        return fd_store(socket);
    }
    if !matches!(cli.command, Command::Daemon(_) | Command::TaskShim(_)) {
        // A CLI writing into a closed pipe (`weft node ls | head -1`) should
        // end quietly like any Unix tool, not panic in println!.
        // SAFETY: called before any thread exists; restoring the default
        // disposition of SIGPIPE has no other effect on the process.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    weft_proto::tls::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let remote = cli.host.starts_with("tcp://");
    // `weft run` ends with the task's exit code, and with Docker's 125 when
    // weft itself could not run it.
    let is_run = matches!(cli.command, Command::Run(_));
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(commands::Exit(code)) = e.downcast_ref() {
                return std::process::ExitCode::from(*code);
            }
            eprintln!("error: {e:#}");
            if remote && connection_closed(&e) {
                // TLS 1.3 clients finish the handshake before the server has
                // checked their certificate, so a refusal arrives as a
                // closed connection with no reason attached.
                eprintln!(
                    "hint: the manager closed the connection; if that happened in the TLS \
                     handshake it refused the client certificate (another cluster's, expired, \
                     or a node removed from the cluster): see the manager's log"
                );
            }
            if is_run {
                std::process::ExitCode::from(commands::FAILED_TO_RUN)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Whether the command line's subcommand is `run` (the first word that is
/// neither a global option nor its value).
fn subcommand_is_run() -> bool {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-H" | "--host" | "--tlscacert" | "--tlscert" | "--tlskey" => {
                args.next();
            }
            _ if a.starts_with('-') => {}
            _ => return a == "run",
        }
    }
    false
}

/// Whether `e` is a gRPC call that failed because the connection closed.
fn connection_closed(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tonic::Status>())
        .any(|s| {
            matches!(
                s.code(),
                tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Unavailable
            ) && std::error::Error::source(s).is_some()
        })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tls = commands::TlsFiles {
        ca: cli.tlscacert,
        cert: cli.tlscert,
        key: cli.tlskey,
    };
    match cli.command {
        Command::Daemon(args) => {
            init_tracing_as(&args.log_level, args.log_format);
            daemon::run(*args).await
        }
        Command::Lab(cmd) => lab::run(cmd).await,
        Command::Cni(cmd) => cni_cmd::run(cmd),
        Command::Doctor(args) => doctor::run(args, &cli.host, &tls).await,
        Command::Ui(args) => ui::run(args, &cli.host, &tls).await,
        Command::TaskShim(args) => weft_worker::runtime::shim::run(args).map_err(Into::into),
        Command::Login {
            username,
            password_stdin,
            insecure,
            registry,
        } => login::login(registry, username, password_stdin, insecure).await,
        Command::Logout { registry } => login::logout(registry),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            let n = man::write_all(&dir)?;
            println!("{n} manual pages in {}", dir.display());
            Ok(())
        }
        Command::Version => commands::version(&cli.host, &tls).await,
        cmd => {
            let c = commands::Client::connect(&cli.host, &tls).await?;
            match cmd {
                Command::Init(a) => {
                    c.require_local("init")?;
                    commands::init(&c, a).await
                }
                Command::Join(a) => {
                    c.require_local("join")?;
                    commands::join(&c, a).await
                }
                Command::JoinToken(a) => commands::join_token(&c, a).await,
                Command::Leave(a) => {
                    c.require_local("leave")?;
                    commands::leave(&c, a).await
                }
                Command::Info { format } => {
                    c.require_local("info")?;
                    commands::info(&c, format.as_deref()).await
                }
                Command::Unlock => {
                    c.require_local("unlock")?;
                    unlock::unlock(&c).await
                }
                Command::UnlockKey { rotate, quiet } => unlock::unlock_key(&c, rotate, quiet).await,
                Command::Node(n) => commands::node(&c, n).await,
                Command::Cluster(n) => commands::cluster(&c, n).await,
                Command::Events(a) => events_cmd::events(&c, a).await,
                Command::Network(n) => commands::network(&c, n).await,
                Command::Service(n) => commands::service(&c, n).await,
                // Local but for `image ls --all-nodes` (a Control call).
                Command::Image(i) => image_cmd::run(&c, i).await,
                Command::Volume(v) => {
                    c.require_local("volume")?;
                    commands::volume(&c, v).await
                }
                Command::Run(a) => {
                    c.require_local("run")?;
                    commands::run_task(&c, *a).await
                }
                Command::Exec(a) => {
                    c.require_local("exec")?;
                    commands::exec(&c, *a).await
                }
                Command::Attach(a) => {
                    c.require_local("attach")?;
                    commands::attach_cmd(&c, a).await
                }
                Command::Port { task } => {
                    c.require_local("port")?;
                    commands::port(&c, task).await
                }
                Command::Ps { all, list } => {
                    c.require_local("ps")?;
                    commands::ps(&c, all, &list).await
                }
                Command::Logs { flags, task } => {
                    c.require_local("logs")?;
                    logs_cmd::task_logs(&c, task, &flags).await
                }
                Command::Rm { force, tasks } => {
                    c.require_local("rm")?;
                    commands::rm(&c, force, tasks).await
                }
                Command::Lifecycle(l) => {
                    c.require_local(l.name())?;
                    commands::lifecycle(&c, l).await
                }
                Command::Daemon(_)
                | Command::Completion { .. }
                | Command::Man { .. }
                | Command::Login { .. }
                | Command::Logout { .. }
                | Command::Lab(_)
                | Command::Cni(_)
                | Command::Doctor(_)
                | Command::Ui(_)
                | Command::TaskShim(_)
                | Command::Version
                | Command::FdStore { .. } => unreachable!("handled above"),
            }
        }
    }
}

/// `weft fd-store`: serves the node's fd store until it is told to stop
/// (no async runtime: the store is one blocking loop); a store already
/// answering on `socket` is success.
fn fd_store(socket: &std::path::Path) -> std::process::ExitCode {
    init_tracing("info");
    let served = weft_overlay::linux::fdstore::Server::bind(socket).and_then(|s| match s {
        Some(server) => {
            tracing::info!(socket = %socket.display(), "fd store ready");
            server.serve()
        }
        None => Ok(()),
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    init_tracing_as(filter, cli::LogFormat::Text);
}

fn init_tracing_as(filter: &str, format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        cli::LogFormat::Text => fmt.init(),
        // The fields at the top level, as log collectors index them.
        cli::LogFormat::Json => fmt.json().flatten_event(true).with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    /// The managers keep networks off the range the nodes derive their
    /// gateway bridges' IPv6 addresses from: both must name the same one.
    #[test]
    fn managers_and_nodes_agree_on_the_gateway_bridges_ipv6_range() {
        let managers: ipnetwork::IpNetwork = weft_manager::store::ipam::GATEWAY_BRIDGE6
            .parse()
            .expect("valid");
        let nodes = weft_overlay::GatewayBridge::IPV6_PREFIX;
        assert_eq!(managers.ip(), std::net::IpAddr::V6(nodes));
        assert_eq!(managers.prefix(), 48);
    }
}
