//! Command-line surface: what `weft --help` shows. Parsing only.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default path of the local daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";

/// weft: a swarm-style overlay network controller.
#[derive(Debug, Parser)]
#[command(name = "weft", version = weft_worker::VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Daemon to talk to: unix://PATH (the local daemon), or tcp://MANAGER:PORT
    /// with --tlscacert/--tlscert/--tlskey (a manager's control API directly).
    #[arg(
        short = 'H',
        long = "host",
        global = true,
        env = "WEFT_HOST",
        default_value = "unix:///run/weft/weft.sock"
    )]
    pub host: String,

    /// CA certificate to trust, for -H tcp://.
    #[arg(long, global = true, env = "WEFT_TLS_CACERT")]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate (a manager's), for -H tcp://.
    #[arg(long, global = true, env = "WEFT_TLS_CERT")]
    pub tlscert: Option<PathBuf>,
    /// Client private key, for -H tcp://.
    #[arg(long, global = true, env = "WEFT_TLS_KEY")]
    pub tlskey: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon (every node runs one).
    Daemon(Box<DaemonArgs>),
    /// Create a cluster with this node as its first manager (or, with
    /// --force-new-cluster, recover one that lost a majority of its managers).
    Init(InitArgs),
    /// Join this node to a cluster as a worker or a manager (the token decides);
    /// on a node whose certificate expired while it was offline, rejoin with
    /// the same node ID, tasks and networks (with the token of its role).
    Join(JoinArgs),
    /// Show or rotate the join tokens.
    JoinToken(JoinTokenArgs),
    /// Leave the cluster.
    Leave(LeaveArgs),
    /// Show cluster and node information.
    Info {
        /// json, or a Go template over docker's info fields: .ServerVersion
        /// .KernelVersion .OperatingSystem .Architecture .NCPU .MemTotal
        /// .Tasks .Swarm.NodeID .Swarm.LocalNodeState .Swarm.ControlAvailable
        /// .Swarm.Cluster.ID .Swarm.Managers .Swarm.Nodes .Swarm.Error.
        #[arg(short, long, value_name = "FORMAT")]
        format: Option<String>,
    },
    /// Stream the cluster's changes as a manager applies them (nodes,
    /// networks, services, tasks, cluster settings), as `docker events`.
    Events(EventsArgs),
    /// Serve a read-only, live web view of the cluster on this machine.
    ///
    /// Nodes (with their tasks and overlays), networks, services, tasks and
    /// recent events, read through the same connection as every other
    /// command (-H: the local daemon's socket, or a manager over mTLS) and
    /// updated within a second of a change. Open the address it prints in
    /// a browser (from elsewhere: ssh -L 4390:127.0.0.1:4390 HOST). It
    /// serves on loopback only unless given --insecure-listen; the page
    /// never shows join tokens, keys or registry credentials.
    Ui(UiArgs),
    /// Show the version of this client and of the daemon it talks to (each
    /// node's is in `node ls`).
    Version,
    /// Unlock a manager restarted while autolock is on: reads the unlock key
    /// from stdin (or asks for it on a terminal) and sends it to the local
    /// daemon, which checks it, keeps it in memory only and starts serving.
    Unlock,
    /// Show the autolock unlock key (or replace it with --rotate).
    ///
    /// With --rotate, the CA key and join secrets are sealed again under a
    /// new key and every running manager reseals its TLS key with it. A
    /// manager that was down during the rotation is unlocked with the
    /// previous key; keep it until every manager has run since.
    UnlockKey {
        /// Replace the key with a new one.
        #[arg(long)]
        rotate: bool,
        /// Only print the key.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Log in to a registry: check the credentials against it (as Docker's
    /// login does), then store them on this machine for `image pull` and
    /// `service create|update --with-registry-auth`.
    ///
    /// They are kept in $WEFT_CONFIG, else $XDG_CONFIG_HOME/weft/config.json,
    /// else ~/.config/weft/config.json (mode 0600; base64, as Docker's
    /// config.json). Credentials the registry refuses are not stored.
    /// REGISTRY is HOST[:PORT]; docker.io (Docker Hub) when left out.
    Login {
        /// The user name.
        #[arg(short, long)]
        username: Option<String>,
        /// Read the password from stdin (otherwise asked for on a terminal).
        #[arg(long)]
        password_stdin: bool,
        /// Speak plain HTTP to the registry (loopback registries always are).
        #[arg(long)]
        insecure: bool,
        /// HOST[:PORT].
        registry: Option<String>,
    },
    /// Log out from a registry: remove the credentials `weft login` stored.
    Logout {
        /// HOST[:PORT]; docker.io when left out.
        registry: Option<String>,
    },
    /// Change cluster settings after init.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage networks (overlay, bridge, and the built-in host and none).
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage the images on this node (in its containerd), or load one on
    /// every node and list every node's (`image load|ls --all-nodes`).
    #[command(subcommand)]
    Image(crate::image_cmd::ImageCommand),
    /// Manage this node's volumes (Docker's local volumes: directories
    /// tasks mount with --mount type=volume; each node has its own).
    #[command(subcommand)]
    Volume(crate::volume_args::VolumeCommand),
    /// Run a standalone task on this node (default network: this node's
    /// `bridge`): stream its stdout and stderr and exit with its exit code
    /// (128+N if signal N ended it, 137 if OOM-killed, 125 if weft could
    /// not run it); `-d` prints its ID and returns at once. SIGINT/SIGTERM
    /// stop the task gracefully; a second one leaves it running. -i
    /// forwards stdin, -t gives it a pseudo-terminal (containers only).
    Run(Box<RunArgs>),
    /// Run a command in a running container task of this node, beside its
    /// own process: stream its output (stdout and stderr apart unless -t)
    /// and exit with its exit code (126/127 when it cannot be run or was
    /// not found). -i forwards stdin, -t gives it a pseudo-terminal.
    Exec(Box<crate::commands::ExecArgs>),
    /// Attach to a running task of this node, as `docker attach`: its
    /// output from now on, your stdin forwarded if it was run with -i (an
    /// EOF stops forwarding; its stdin stays open), its exit code at the
    /// end. A task with a terminal (-t) gets your keys raw; ctrl-p ctrl-q
    /// (--detach-keys) detaches and leaves it running. Without a terminal,
    /// ctrl-c detaches. Tasks of services, and tasks run without -i/-t,
    /// give their output only (from their log, line by line).
    Attach(crate::commands::AttachArgs),
    /// Show a task's published ports.
    Port {
        /// Task name or ID (tasks of this node).
        task: String,
    },
    /// List this node's tasks. Filters: id=, name=, status= (running,
    /// exited…). Fields: .ID .Name .State .Addresses .Ports .Command.
    Ps {
        /// Also tasks that exited.
        #[arg(short, long)]
        all: bool,
        #[command(flatten)]
        list: ListFlags,
    },
    /// Print a task's output (tasks of this node): stdout to stdout,
    /// stderr to stderr.
    Logs {
        #[command(flatten)]
        flags: LogFlags,
        /// Task name or ID.
        task: String,
    },
    /// Remove standalone tasks of this node.
    Rm {
        /// Remove running tasks too (they are stopped).
        #[arg(short, long)]
        force: bool,
        /// Task names or IDs.
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Run a whole cluster on this machine, each node in its own namespaces.
    #[command(subcommand)]
    Lab(crate::lab::LabCommand),
    /// weft networks for CNI runtimes (podman, containerd's CRI, nerdctl,
    /// kubelet): the plugin is this binary, run with CNI_COMMAND set.
    #[command(subcommand)]
    Cni(CniCommand),
    /// Check what breaks overlays and say what to do: this node (nftables,
    /// weft's tables, the gateway bridge's subnet, its certificate) and the
    /// cluster (duplicate addresses, Raft quorum and lag, certificates,
    /// clock skew, and probes between every pair of nodes: manager port
    /// over mTLS, VXLAN, path MTU, WireGuard). Exits 1 if a check fails.
    /// Changes nothing. `weft doctor raft` checks the Raft files offline.
    Doctor(DoctorArgs),
    /// Internal: the per-task supervisor process the worker starts.
    #[command(hide = true)]
    TaskShim(weft_worker::runtime::shim::ShimArgs),
    /// Print a shell completion script.
    Completion {
        /// Which shell.
        shell: clap_complete::Shell,
    },
    /// Internal: write the manual pages (one per command: weft.1,
    /// weft-service-create.1, …) into DIR, for packaging.
    #[command(hide = true)]
    Man {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
    /// Internal: the node's fd store the daemon starts (keeps the DNS
    /// resolver's sockets across daemon restarts).
    #[command(hide = true)]
    FdStore {
        /// The store's socket (`<exec-root>/fd-store.sock`).
        #[arg(long)]
        socket: PathBuf,
    },
    #[command(flatten)]
    Lifecycle(crate::commands::LifecycleCommand),
}

/// `weft cni`.
#[derive(Debug, Subcommand)]
pub enum CniCommand {
    /// Print a CNI network config (conflist) that attaches containers to
    /// the weft network NETWORK.
    Config {
        /// The weft network (it must be --attachable if it is an overlay).
        network: String,
        /// The daemon's socket the plugin talks to (default: weft's).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Install this binary as the CNI plugin `weft` and, given a network,
    /// its config (`<conf-dir>/50-weft-NETWORK.conflist`).
    Install {
        /// The weft network to write a config for.
        network: Option<String>,
        /// Where CNI plugins live.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// Where CNI configs live.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The daemon's socket the plugin talks to (default: weft's).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

/// `weft doctor`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DoctorArgs {
    /// Offline checks instead of the cluster's.
    #[command(subcommand)]
    pub command: Option<DoctorCommand>,
    /// `table` (the default) or `json`.
    #[arg(long)]
    pub format: Option<String>,
    /// Skip the pairwise probes (they take a few seconds and every node
    /// takes part).
    #[arg(long)]
    pub no_probe: bool,
}

/// `weft doctor` subcommands: offline checks of this node's files.
#[derive(Debug, Subcommand)]
pub enum DoctorCommand {
    /// Check a manager's Raft log and snapshot: what the next start would
    /// do with them (run, cut a torn tail, or refuse and why). Stop the
    /// daemon first to have the snapshot checked too.
    Raft {
        /// The node's data directory (as given to `weft daemon`).
        #[arg(long, default_value = "/var/lib/weft")]
        data_dir: PathBuf,
    },
}

/// `weft daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Where the node keeps its state (identity, certificates, Raft log).
    #[arg(long, default_value = "/var/lib/weft")]
    pub data_dir: PathBuf,
    /// Where the node keeps runtime state (pinned namespaces, sockets).
    #[arg(long, default_value = "/run/weft")]
    pub exec_root: PathBuf,
    /// The local API socket (root only).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Host name this node reports (default: the system's).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Log filter, e.g. `info` or `weft_manager=debug`.
    #[arg(long, env = "WEFT_LOG", default_value = "info,openraft=warn")]
    pub log_level: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9323, as dockerd's metrics-addr). Off by default; no
    /// authentication: loopback or a private interface only.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Log lines as text or as one JSON object each (timestamp, level,
    /// message and fields), for a log collector.
    #[arg(long, value_enum, env = "WEFT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Settings file (JSON, keys as in Docker's daemon.json: "bridge-subnet",
    /// "proxies": {"http-proxy", "https-proxy", "ftp-proxy", "no-proxy"});
    /// flags override it. Default: /etc/weft/daemon.json when it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Subnet of the default `bridge` network (`weft0`) of this node
    /// (default 172.17.0.0/16); must not collide with a route of the host.
    #[arg(long)]
    pub bridge_subnet: Option<String>,
    /// HTTP proxy handed to every task as HTTP_PROXY/http_proxy.
    #[arg(long)]
    pub http_proxy: Option<String>,
    /// HTTPS proxy handed to every task as HTTPS_PROXY/https_proxy.
    #[arg(long)]
    pub https_proxy: Option<String>,
    /// FTP proxy handed to every task as FTP_PROXY/ftp_proxy.
    #[arg(long)]
    pub ftp_proxy: Option<String>,
    /// Hosts that bypass the proxies, handed to every task as NO_PROXY/no_proxy.
    #[arg(long)]
    pub no_proxy: Option<String>,
    /// containerd's socket, where this node keeps its images and runs its
    /// containers. The daemon runs without containerd; image commands and
    /// container tasks then fail saying so.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd_socket: PathBuf,
    /// The containerd namespace of weft's images and containers.
    #[arg(long, default_value = "weft")]
    pub containerd_namespace: String,
    /// A registry (HOST:PORT) this node pulls images from over plain HTTP;
    /// repeatable. Registries on loopback (127.0.0.0/8, ::1, localhost) are
    /// always allowed plain HTTP, as Docker does.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// runc's state directory for weft's containers (default: containerd's,
    /// /run/containerd/runc).
    #[arg(long)]
    pub runc_root: Option<PathBuf>,
    /// The cgroup every container's cgroup is made under.
    #[arg(long, default_value = "/weft")]
    pub cgroup_parent: PathBuf,
    /// A host directory under which containers may bind-mount
    /// (`--mount type=bind,source=…`); repeatable. None by default: bind
    /// mounts are refused. weft's and containerd's state (--data-dir,
    /// --exec-root, /var/lib/containerd, /run/containerd, runc's root),
    /// /proc, /sys and /dev, and any directory holding them, are refused
    /// whatever this allows.
    #[arg(long = "allow-bind-root", value_name = "DIR")]
    pub allow_bind_roots: Vec<PathBuf>,
    /// Serve Docker's network and IPAM plugin API on this socket, so that
    /// `docker network create -d weft --ipam-driver weft …` maps a Docker
    /// network to a weft network: /run/docker/plugins/weft.sock is where
    /// dockerd finds the plugin "weft". Off by default.
    #[arg(long, value_name = "SOCKET")]
    pub docker_plugin: Option<PathBuf>,
}

/// How the daemon writes its log (`--log-format`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `weft init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Address other nodes reach this manager at: IP[:PORT] (default port 4377).
    #[arg(long, required_unless_present = "force_new_cluster")]
    pub advertise_addr: Option<String>,
    /// Recover a cluster that lost a majority of its managers for good: this
    /// manager becomes its only manager, with all its state.
    ///
    /// The cluster needs a majority of its managers (2 of 3, 3 of 5) to
    /// change anything; without one, every change fails. Run this on a
    /// surviving manager whose daemon is running: it becomes the only manager
    /// and leader, keeping the nodes, networks, services and join tokens,
    /// and workers go on as before. Pick the survivor with the most recent
    /// state: changes that only the lost managers received are gone. Refused
    /// on a worker, and while a majority of the managers still answers this
    /// one. Do not use it when the others are only cut off from this
    /// manager: if they still form a majority among themselves there would
    /// be two clusters.
    ///
    /// WARNING: a lost manager that starts again with its old data can,
    /// together with another, elect a leader of the old cluster (split
    /// brain). Before any of them runs again: demote and remove each one from
    /// the new cluster (`weft node demote ID`, then `weft node rm --force
    /// ID`), and wipe it (`weft leave --force` on it, or delete its data
    /// directory). Then add managers with a fresh token (`weft join-token
    /// manager`).
    #[arg(
        long,
        conflicts_with_all = [
            "advertise_addr", "listen_addr", "data_path_addr", "data_path_port",
            "default_addr_pool", "default_addr_pool_mask_length", "cert_expiry",
            "heartbeat_period", "wg_key_rotation", "wg_port", "ingress_subnet", "autolock",
            "disconnect_grace",
        ]
    )]
    pub force_new_cluster: bool,
    /// Address to listen on for the manager port: ADDR[:PORT] (default 0.0.0.0:4377).
    #[arg(long)]
    pub listen_addr: Option<String>,
    /// Seal the CA key and the join secrets under an unlock key that is
    /// printed once and stored nowhere: a manager that restarts then serves
    /// nothing until `weft unlock` gives it that key.
    #[arg(long)]
    pub autolock: bool,
    /// Underlay address for VXLAN traffic (default: the advertise address).
    #[arg(long)]
    pub data_path_addr: Option<String>,
    /// UDP port for VXLAN, 1024-49151 (default 4789). Fixed for the cluster's life.
    #[arg(long)]
    pub data_path_port: Option<u32>,
    /// Address pool overlay subnets are taken from (repeatable, at most 16;
    /// default 10.0.0.0/8). IPv6 pools (e.g. fd00:10::/48) serve
    /// dual-stack networks; by default a unique local /48 of the cluster.
    #[arg(long = "default-addr-pool")]
    pub default_addr_pool: Vec<String>,
    /// Prefix length of a subnet taken from the pools (default 24 for
    /// IPv4, 64 for IPv6). Give it once per family: a value over 32 is the
    /// IPv6 one.
    #[arg(long)]
    pub default_addr_pool_mask_length: Vec<u32>,
    /// Lifetime of node certificates, e.g. 2160h or 90d (default 90d; 1h to
    /// 3650d).
    #[arg(long, value_parser = parse_duration)]
    pub cert_expiry: Option<Duration>,
    /// Heartbeat period of the nodes, e.g. 1s or 500ms (default 1s; 100ms to
    /// 60s). A node that misses 3 is marked down and its tasks rescheduled,
    /// unless more than half of the ready nodes (at least 3) are silent at
    /// once: the leader then takes it for a fault on its own side and marks
    /// none down for up to 30 periods from then.
    #[arg(long, value_parser = parse_duration)]
    pub heartbeat_period: Option<Duration>,
    /// Mark a node down, and reschedule its tasks, when its daemon's
    /// connection closes without notice (the process died) and it does not
    /// reconnect within this time, e.g. 500ms (100ms to 60s; default off:
    /// only missed heartbeats, 3 periods, mark a node down). A daemon that
    /// stops on purpose (SIGTERM) is not affected; one that crashes and is
    /// restarted later than this loses its tasks to other nodes.
    #[arg(long, value_parser = parse_duration)]
    pub disconnect_grace: Option<Duration>,
    /// Interval of automatic WireGuard key rotation, e.g. 24h (default 24h;
    /// 1m to 365d).
    #[arg(long, value_parser = parse_duration)]
    pub wg_key_rotation: Option<Duration>,
    /// UDP port of WireGuard for encrypted networks (default 51820).
    #[arg(long)]
    pub wg_port: Option<u32>,
    /// Subnet of the ingress network, the routing mesh of published ports
    /// (default 10.255.0.0/16; IPv4, /8 to /24). Give it a second time
    /// with an IPv6 subnet (/48 to /120, e.g. fd00:ffff::/64) for the
    /// routing mesh over IPv6 too.
    #[arg(long)]
    pub ingress_subnet: Vec<String>,
}

/// `weft join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Join token (`weft join-token worker|manager` on a manager prints it).
    #[arg(long)]
    pub token: String,
    /// Address of this node: IP[:PORT] (default: the address it reaches the manager from).
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Address to listen on if this node is or becomes a manager: ADDR[:PORT].
    #[arg(long)]
    pub listen_addr: Option<String>,
    /// Underlay address for VXLAN traffic (default: the advertise address).
    #[arg(long)]
    pub data_path_addr: Option<String>,
    /// A manager's address, HOST:PORT.
    pub remote_addr: String,
}

/// Which join token.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Worker token.
    Worker,
    /// Manager token.
    Manager,
}

/// `weft join-token`.
#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Print the token only.
    #[arg(short, long)]
    pub quiet: bool,
    /// Replace the token: the old one stops admitting nodes (joined nodes are unaffected).
    #[arg(long)]
    pub rotate: bool,
    /// worker or manager.
    pub role: RoleArg,
}

/// `weft leave`.
#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Leave even if this manager's departure costs the cluster its quorum.
    #[arg(short, long)]
    pub force: bool,
}

/// Availability values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AvailabilityArg {
    /// Takes new tasks.
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move elsewhere.
    Drain,
}

/// `weft node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes of the cluster. Filters: id=, name=, role=manager|worker,
    /// label=KEY or label=KEY=VALUE. Fields: .ID .Self .Hostname .Status
    /// .Availability .ManagerStatus .EngineVersion .CertExpiry .Role .Labels.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        list: ListFlags,
    },
    /// Show one or more nodes (`self` is this node).
    Inspect {
        /// json (the default), pretty (a summary), or a Go template applied
        /// to each node, e.g. '{{.Status.State}}' or '{{json .Spec}}'.
        #[arg(short, long, value_name = "FORMAT")]
        format: Option<String>,
        /// Node IDs, ID prefixes, host names, or `self`.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability, labels or role.
    Update {
        /// active, pause or drain.
        #[arg(long, value_enum)]
        availability: Option<AvailabilityArg>,
        /// worker or manager: as `node demote` or `node promote` (on its
        /// own: a role change is not made together with other changes).
        #[arg(long, value_enum, conflicts_with_all = ["availability", "label_add", "label_rm"])]
        role: Option<RoleArg>,
        /// Add or replace a label, key=value (repeatable; a node has at most
        /// 128 labels, keys of up to 128 bytes, values of up to 1024).
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a label by key (repeatable).
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// The node.
        node: String,
    },
    /// List the tasks on nodes (default: this node), as `service ps` does
    /// (the same filters and fields).
    Ps {
        #[command(flatten)]
        list: ListFlags,
        /// Node IDs, ID prefixes, host names, or `self`.
        #[arg(default_value = "self")]
        nodes: Vec<String>,
    },
    /// Make nodes managers.
    Promote {
        /// The nodes.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers again.
    Demote {
        /// Demote even if it costs the cluster its quorum.
        #[arg(short, long)]
        force: bool,
        /// The nodes.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Give nodes fresh WireGuard keys (also done automatically, see `init --wg-key-rotation`).
    RotateKey {
        /// Every node.
        #[arg(long, conflicts_with = "node")]
        all: bool,
        /// The node.
        #[arg(required_unless_present = "all")]
        node: Option<String>,
    },
    /// Remove nodes from the cluster.
    #[command(alias = "remove")]
    Rm {
        /// Remove a node that is still up.
        #[arg(short, long)]
        force: bool,
        /// The nodes.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// `weft network …`.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network (cluster-wide) or a bridge network (this node).
    Create(NetworkCreateArgs),
    /// Attach a running task to a network, without restarting it.
    Connect {
        /// Address on the network (default: the next free one).
        #[arg(long)]
        ip: Option<String>,
        /// IPv6 address on a dual-stack network (default: the next free
        /// one).
        #[arg(long)]
        ip6: Option<String>,
        /// A DNS name of the task on this network besides its own
        /// (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// Network name or ID.
        network: String,
        /// Task name or ID.
        task: String,
    },
    /// Detach a running task from a network, without restarting it.
    Disconnect {
        /// No error when the task is gone or not on the network.
        #[arg(short, long)]
        force: bool,
        /// Network name or ID.
        network: String,
        /// Task name or ID.
        task: String,
    },
    /// List networks. Filters: name= (part of the name), id= (a prefix),
    /// driver=, label=KEY or label=KEY=VALUE. Fields: .ID .Name .Driver
    /// .Scope .Subnet .Gateway .MTU .Internal .Attachable .Encrypted
    /// .Ingress .Labels.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        list: ListFlags,
    },
    /// Show networks as JSON.
    Inspect {
        /// Add endpoints, peers and each node's config version.
        #[arg(short, long)]
        verbose: bool,
        /// json (the default) or a Go template applied to each network,
        /// e.g. '{{.IPAM.Config}}'.
        #[arg(short, long, value_name = "FORMAT")]
        format: Option<String>,
        /// Network names or IDs.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (refused while anything is attached).
    #[command(alias = "remove")]
    Rm {
        /// Disconnect the standalone tasks attached first (a service's
        /// are not: change the service), and no error for a network that
        /// does not exist.
        #[arg(short, long)]
        force: bool,
        /// Network names or IDs.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove every network nothing uses (no task, no service; never the
    /// ingress network). Filters: label=KEY or label=KEY=VALUE,
    /// label!=KEY…, until=DURATION (created longer ago than that).
    Prune {
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
        /// KEY=VALUE (repeatable).
        #[arg(long, value_name = "FILTER")]
        filter: Vec<String>,
    },
}

/// `weft cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Change settings that may change after init (`weft info` shows them).
    Update {
        /// Interval of automatic WireGuard key rotation, e.g. 12h (1m to 365d;
        /// 0s: off).
        #[arg(long, value_parser = parse_duration)]
        wg_key_rotation: Option<Duration>,
        /// Lifetime of certificates issued from now on, e.g. 90d (1h to 3650d).
        #[arg(long, value_parser = parse_duration)]
        cert_expiry: Option<Duration>,
        /// Mark a node down when its daemon's connection closes without
        /// notice and it does not reconnect within this time, e.g. 500ms
        /// (100ms to 60s; 0s: off, only missed heartbeats count).
        #[arg(long, value_parser = parse_duration)]
        disconnect_grace: Option<Duration>,
        /// Move the ingress network (routing mesh) to this subnet, or with
        /// an IPv6 subnet give it IPv6 (at most one of each family); refused
        /// while a service publishes a port through it or a task is still on
        /// it (an unused ingress network comes back on the new subnets with
        /// the next ingress publish).
        #[arg(long)]
        ingress_subnet: Vec<String>,
        /// Turn autolock on (prints the new unlock key once) or off
        /// (`--autolock=false`: the secrets are stored in the clear again and
        /// restarted managers need no unlock). Given on its own.
        #[arg(long, value_name = "true|false")]
        autolock: Option<bool>,
    },
}

/// `weft network create`.
#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    /// `overlay` (cluster-wide, VXLAN) or `bridge` (local to this node).
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR form (default: the next free one from the address
    /// pools). Give it twice, once per family, for a dual-stack network
    /// (with --ipv6): `--subnet 10.1.0.0/24 --subnet fd00:1::/64`.
    #[arg(long)]
    pub subnet: Vec<String>,
    /// Gateway address (default: the first usable address of the subnet);
    /// one per family.
    #[arg(long)]
    pub gateway: Vec<String>,
    /// Sub-range of the subnet that task addresses come from; one per
    /// family.
    #[arg(long)]
    pub ip_range: Vec<String>,
    /// Dual stack: an IPv6 subnet too (the IPv6 --subnet, or a /64 from
    /// the cluster's IPv6 pools, by default a unique local /48). Tasks get
    /// an address of each family, services a VIP of each, DNS answers A
    /// and AAAA.
    #[arg(long)]
    pub ipv6: bool,
    /// `--ipv4=false` (with --ipv6): an IPv6-only network, tasks get only
    /// an IPv6 address on it (their way out stays the gateway bridge's
    /// IPv4).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub ipv4: bool,
    /// NAME=IP (repeatable): an address of the subnet never handed out
    /// (a router, a host already on the segment). Needs --subnet.
    #[arg(long, value_name = "NAME=IP")]
    pub aux_address: Vec<String>,
    /// No route out of the overlay.
    #[arg(long)]
    pub internal: bool,
    /// Standalone tasks (`weft run`) may attach.
    #[arg(long)]
    pub attachable: bool,
    /// MTU (default: the smallest underlay MTU of the member nodes minus 50).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Label key=value (repeatable; at most 128 labels, keys of up to 128
    /// bytes, values of up to 1024).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Driver option key[=value] (repeatable), e.g. `encrypted`.
    #[arg(short = 'o', long = "opt")]
    pub opts: Vec<String>,
    /// Network name (1-63 characters).
    pub name: String,
}

/// Service modes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// A fixed number of replicas.
    Replicated,
    /// One task on every eligible node.
    Global,
}

/// Endpoint modes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EndpointModeArg {
    /// A virtual IP per network, balanced over the tasks.
    Vip,
    /// DNS round robin over the task addresses.
    Dnsrr,
}

/// Restart conditions.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RestartArg {
    /// Always replace a finished task.
    Any,
    /// Only after a failure or a non-zero exit.
    OnFailure,
    /// Never.
    None,
}

/// `weft service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create(Box<ServiceCreateArgs>),
    /// List services. Filters: id= (a prefix), name= (part of the name),
    /// mode=replicated|global, label=KEY or label=KEY=VALUE. Fields: .ID
    /// .Name .Mode .Replicas .Image .Ports .Command .Labels.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        list: ListFlags,
    },
    /// List a service's tasks. Filters: id=, name=, node=,
    /// desired-state=running|shutdown. Fields: .ID .Name .Node
    /// .DesiredState .CurrentState .Addresses .Error.
    Ps {
        #[command(flatten)]
        list: ListFlags,
        /// Service name or ID.
        service: String,
    },
    /// Show a service as JSON (with its VIP on each network).
    Inspect {
        /// json (the default) or a Go template applied to each service,
        /// e.g. '{{.Spec.Name}} {{json .Endpoint}}'.
        #[arg(short, long, value_name = "FORMAT")]
        format: Option<String>,
        /// Service names or IDs.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Set the number of replicas: SERVICE=REPLICAS...
    Scale {
        /// Return at once instead of waiting for convergence.
        #[arg(short, long)]
        detach: bool,
        /// SERVICE=REPLICAS pairs (at most 10000 replicas per service).
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Change a service; tasks are replaced one at a time.
    Update(Box<ServiceUpdateArgs>),
    /// Go back to the service's spec before its last update (its tasks are
    /// replaced as by an update); a second rollback undoes the first.
    Rollback {
        /// Do not wait for the tasks to converge.
        #[arg(short, long)]
        detach: bool,
        /// Service name or ID.
        service: String,
    },
    /// Remove services and their tasks.
    #[command(alias = "remove")]
    Rm {
        /// Service names or IDs.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Print the output of a service's tasks, streamed from their nodes
    /// (stdout to stdout, stderr to stderr, each line prefixed TASK@NODE).
    Logs {
        #[command(flatten)]
        flags: LogFlags,
        /// Service name or ID.
        service: String,
    },
}

/// Which output `weft logs` and `weft service logs` print.
#[derive(Debug, Clone, clap::Args)]
pub struct LogFlags {
    /// Keep printing new output until the task ends (Ctrl-C stops).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (of each task).
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = crate::logs_cmd::parse_tail)]
    pub tail: Option<u64>,
    /// Only output written since TIME: RFC 3339 (2026-12-03T10:00:00Z) or
    /// a duration ago (30s, 10m, 1h30m, 2d).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, value_parser = crate::logs_cmd::parse_since)]
    pub since: Option<std::time::SystemTime>,
    /// Show when each line was written (RFC 3339, UTC, nanoseconds).
    #[arg(short, long)]
    pub timestamps: bool,
}

/// How a rolling update replaces a service's tasks (`--update-*`).
#[derive(Debug, Args, Default)]
pub struct UpdatePolicyArgs {
    /// Tasks replaced at a time during an update (default 1; 0: all at
    /// once).
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u64>,
    /// Wait between batches, once a batch runs and passes its health
    /// checks (default 0s; at most 24h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub update_delay: Option<Duration>,
    /// stop-first (default: the old task stops, then its replacement
    /// starts) or start-first (the replacement starts and passes its
    /// health check, then the old task stops).
    #[arg(long, value_name = "ORDER")]
    pub update_order: Option<String>,
    /// What a failed new task does: pause (default; a later `service
    /// update` resumes), continue, or rollback (back to the previous
    /// spec).
    #[arg(long, value_name = "ACTION")]
    pub update_failure_action: Option<String>,
    /// How long after it started a new task's end counts as a failure
    /// of the update, and how long the last batch is watched (default
    /// 5s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub update_monitor: Option<Duration>,
    /// The share of tasks that may fail before the failure action is
    /// taken, 0 to 1 (default 0: the first failure).
    #[arg(long, value_name = "RATIO")]
    pub update_max_failure_ratio: Option<f64>,
}

impl UpdatePolicyArgs {
    /// The flags given, for the wire (none: absent).
    pub fn to_wire(&self) -> Option<weft_proto::v1::UpdatePolicy> {
        policy_to_wire(
            self.update_parallelism,
            self.update_delay,
            &self.update_order,
            &self.update_failure_action,
            self.update_monitor,
            self.update_max_failure_ratio,
        )
    }
}

/// How a rollback replaces a service's tasks (`--rollback-*`).
#[derive(Debug, Args, Default)]
pub struct RollbackPolicyArgs {
    /// Tasks replaced at a time during a rollback (default 1; 0: all at
    /// once).
    #[arg(long, value_name = "N")]
    pub rollback_parallelism: Option<u64>,
    /// Wait between batches of a rollback (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub rollback_delay: Option<Duration>,
    /// stop-first (default) or start-first, during a rollback.
    #[arg(long, value_name = "ORDER")]
    pub rollback_order: Option<String>,
    /// What a failed task does during a rollback: pause (default) or
    /// continue.
    #[arg(long, value_name = "ACTION")]
    pub rollback_failure_action: Option<String>,
    /// How long after it started a task's end counts as a failure of the
    /// rollback (default 5s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub rollback_monitor: Option<Duration>,
    /// The share of tasks that may fail during a rollback before it
    /// pauses, 0 to 1 (default 0).
    #[arg(long, value_name = "RATIO")]
    pub rollback_max_failure_ratio: Option<f64>,
}

impl RollbackPolicyArgs {
    /// The flags given, for the wire (none: absent).
    pub fn to_wire(&self) -> Option<weft_proto::v1::UpdatePolicy> {
        policy_to_wire(
            self.rollback_parallelism,
            self.rollback_delay,
            &self.rollback_order,
            &self.rollback_failure_action,
            self.rollback_monitor,
            self.rollback_max_failure_ratio,
        )
    }
}

/// An update or rollback policy's flags for the wire; `None` when none
/// was given. The manager checks the values.
fn policy_to_wire(
    parallelism: Option<u64>,
    delay: Option<Duration>,
    order: &Option<String>,
    failure_action: &Option<String>,
    monitor: Option<Duration>,
    max_failure_ratio: Option<f64>,
) -> Option<weft_proto::v1::UpdatePolicy> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let p = weft_proto::v1::UpdatePolicy {
        parallelism,
        delay_ms: delay.map(ms),
        order: order.clone(),
        failure_action: failure_action.clone(),
        monitor_ms: monitor.map(ms),
        max_failure_ratio,
    };
    (p != weft_proto::v1::UpdatePolicy::default()).then_some(p)
}

/// What the listing commands (`ls`, `ps`) take besides their own flags.
#[derive(Debug, Args, Default)]
pub struct ListFlags {
    /// Only print IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// KEY=VALUE (repeatable): values of one key are alternatives,
    /// different keys must all match. The keys are the command's.
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
    /// json (one object per row), or a Go template over the fields, e.g.
    /// '{{.ID}} {{.Name}}' or 'table {{.ID}}\t{{.Name}}'.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Accepted as docker takes it; weft never truncates.
    #[arg(long)]
    pub no_trunc: bool,
}

/// `weft ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// IP:PORT to serve the page on. A loopback address unless
    /// --insecure-listen is given; port 0 picks a free port (the address
    /// is printed).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:4390")]
    pub listen: std::net::SocketAddr,
    /// Allow a --listen address other than loopback. Every request then
    /// needs a login token, printed in the address (/?token=...; the page
    /// keeps it in a cookie); over plain HTTP, anyone who has it and can
    /// reach the address sees the cluster's nodes, networks and services.
    /// Prefer an SSH tunnel to a loopback address.
    #[arg(long)]
    pub insecure_listen: bool,
}

/// `weft events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Start with the events since TIME: RFC 3339 (2026-12-03T10:00:00Z) or
    /// a duration ago (30s, 10m, 1h30m). A manager keeps its last 20,000
    /// events in memory. Without --since or --since-index: from now.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, value_parser = crate::logs_cmd::parse_since)]
    pub since: Option<std::time::SystemTime>,
    /// Stop at TIME (as --since); without it, stream until Ctrl-C.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, value_parser = crate::logs_cmd::parse_since)]
    pub until: Option<std::time::SystemTime>,
    /// Start with the events of the Raft entry INDEX (an event's `Index`
    /// in --format json): resumes a stream, on any manager, with no event
    /// missed or repeated.
    #[arg(long, value_name = "INDEX", value_parser = clap::value_parser!(u64).range(1..))]
    pub since_index: Option<u64>,
    /// KEY=VALUE, repeatable: type=cluster|node|network|service|task,
    /// event=create|update|remove|connect|disconnect, or node=, network=,
    /// service=, task= with an ID or name (node= and service= also match
    /// their tasks). Values of one key: any; different keys: all.
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
    /// json: one JSON object per line (Docker's shape, plus Index).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

/// `weft service create`.
#[derive(Debug, Args)]
pub struct ServiceCreateArgs {
    /// Service name (also its DNS name; 1-63 characters).
    #[arg(long)]
    pub name: String,
    /// Number of replicas (replicated mode; default 1, at most 10000).
    #[arg(long)]
    pub replicas: Option<u64>,
    /// replicated or global.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Network to attach (repeatable, at most 16): a name or ID, or
    /// `name=NET,alias=A[,alias=B]` (the service also answers to A in DNS
    /// on NET).
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// vip (default) or dnsrr.
    #[arg(long, value_enum)]
    pub endpoint_mode: Option<EndpointModeArg>,
    /// Environment variable KEY=VALUE (repeatable; at most 256 variables and
    /// 64 KiB in all, values of up to 32 KiB).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Placement constraint, e.g. node.role==manager, node.labels.zone==a
    /// (repeatable, at most 32).
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// A label of the service, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// When finished tasks are replaced.
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartArg>,
    #[command(flatten)]
    pub restart: RestartArgs,
    #[command(flatten)]
    pub update_policy: UpdatePolicyArgs,
    #[command(flatten)]
    pub rollback_policy: RollbackPolicyArgs,
    /// Publish a port: published=8080,target=80[,protocol=tcp|udp][,mode=ingress|host],
    /// or 8080:80[/udp] (repeatable, at most 64). ingress (default) answers on every node.
    #[arg(short, long = "publish")]
    pub publish: Vec<String>,
    /// Return at once instead of waiting for convergence.
    #[arg(short, long)]
    pub detach: bool,
    /// Size cap and rotation of each task's log on its node:
    /// max-size=SIZE (4k..1t, default 10m), max-file=N (1..100, default 3),
    /// comma-separated or repeated.
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
    /// Keep the image's tag instead of pinning the digest it stands for in
    /// its registry now (by default the local daemon asks the registry, so
    /// every node runs the same image; a registry it cannot reach leaves the
    /// tag, with a warning).
    #[arg(long)]
    pub no_resolve_image: bool,
    /// Send the credentials `weft login` stored for the image's registry
    /// with the service: the managers keep them sealed, and give them only
    /// to the nodes that run its tasks, for their pulls.
    #[arg(long, alias = "registry-auth")]
    pub with_registry_auth: bool,
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub resources: crate::resources::ResourceArgs,
    #[command(flatten)]
    pub container: ContainerArgs,
    #[command(flatten)]
    pub health: crate::health_args::HealthArgs,
}

/// What a task runs, as `docker run` and `docker service create` take it:
/// `IMAGE [COMMAND [ARG...]]` runs a container; `-- CMD [ARG...]` runs a
/// host process instead (unisolated: the daemon's root user on the host's
/// filesystem; for tests and trusted tools).
#[derive(Debug, Args)]
pub struct ContainerArgs {
    /// Replace the image's entrypoint (`""` clears it; the image's CMD is
    /// then not used either).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Working directory in the container (absolute).
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User in the container: NAME[:GROUP] (looked up in the image's
    /// /etc/passwd and /etc/group, with the user's supplementary groups) or
    /// UID[:GID].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// The image (NAME[:TAG], NAME@sha256:DIGEST or sha256:DIGEST), then the
    /// command and its arguments, which replace the image's CMD (at most
    /// 1024 arguments, 64 KiB). Everything after the image is the command's.
    #[arg(value_name = "IMAGE [COMMAND [ARG...]]", num_args = 0.., allow_hyphen_values = true)]
    pub image_and_command: Vec<String>,
    /// A host process instead of a container: `-- CMD [ARG...]` (at most
    /// 1024 arguments, 64 KiB).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub isolation: crate::isolation::IsolationArgs,
}

/// How a task is stopped when it is removed, scaled away or replaced.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Signal that asks the task to stop: a name (SIGTERM, INT, SIGRTMIN+3)
    /// or a number [default: SIGTERM].
    #[arg(long, value_parser = parse_signal)]
    pub stop_signal: Option<i32>,
    /// How long the task has to exit after the stop signal before it is
    /// killed (SIGKILL), e.g. 30s, 2m; at most 1h [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub stop_grace_period: Option<Duration>,
}

fn parse_signal(s: &str) -> Result<i32, String> {
    weft_proto::signal::parse(s).map_err(|e| e.to_string())
}

/// How often and how soon finished tasks are replaced (`service create`
/// and `service update`).
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Wait this long before replacing a finished task, e.g. 5s (default:
    /// 1 s, doubling with each quick failure in a row up to 60 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub restart_delay: Option<Duration>,
    /// Restart each replica at most this many times (0: no limit, the
    /// default), counted within --restart-window.
    #[arg(long, value_name = "N")]
    pub restart_max_attempts: Option<u64>,
    /// How far back restarts count towards --restart-max-attempts, e.g. 1m
    /// (0s: all of them, the default).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub restart_window: Option<Duration>,
}

/// `weft service update`.
#[derive(Debug, Args)]
pub struct ServiceUpdateArgs {
    /// Go back to the previous spec (as `service rollback`; with no other
    /// change).
    #[arg(long)]
    pub rollback: bool,
    /// The command of a host-process service, or the arguments after a
    /// container service's image, replaced whole: one string, split as a
    /// shell splits it ("sh -c 'echo hi; sleep 600'").
    #[arg(long, allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Publish a port, as `service create --publish`; a port published on
    /// the same target and protocol is replaced (repeatable).
    #[arg(long = "publish-add", value_name = "SPEC")]
    pub publish_add: Vec<String>,
    /// Stop publishing a target port: TARGET or TARGET/tcp|udp (repeatable).
    #[arg(long = "publish-rm", value_name = "TARGET")]
    pub publish_rm: Vec<String>,
    /// vip or dnsrr.
    #[arg(long, value_parser = ["vip", "dnsrr"])]
    pub endpoint_mode: Option<String>,
    /// New number of replicas (at most 10000).
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Replace the service's registry credentials with those `weft login`
    /// stored now for its image's registry.
    #[arg(long, alias = "registry-auth")]
    pub with_registry_auth: bool,
    /// Attach a network (repeatable; a service has at most 16): a name or
    /// ID, or `name=NET,alias=A[,alias=B]`.
    #[arg(long = "network-add")]
    pub network_add: Vec<String>,
    /// Detach a network (repeatable).
    #[arg(long = "network-rm")]
    pub network_rm: Vec<String>,
    /// Add or change an environment variable KEY=VALUE (repeatable; at most
    /// 256 variables and 64 KiB in all, values of up to 32 KiB).
    #[arg(long = "env-add")]
    pub env_add: Vec<String>,
    /// Remove an environment variable (repeatable).
    #[arg(long = "env-rm")]
    pub env_rm: Vec<String>,
    /// Add a placement constraint (repeatable; a service has at most 32).
    #[arg(long = "constraint-add")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint (repeatable).
    #[arg(long = "constraint-rm")]
    pub constraint_rm: Vec<String>,
    /// Add or change a label of the service, KEY=VALUE (repeatable).
    #[arg(long = "label-add", value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a label of the service (repeatable).
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub resources: crate::resources::ResourceUpdateArgs,
    #[command(flatten)]
    pub restart: RestartArgs,
    #[command(flatten)]
    pub update_policy: UpdatePolicyArgs,
    #[command(flatten)]
    pub rollback_policy: RollbackPolicyArgs,
    /// Return at once instead of waiting for convergence.
    #[arg(short, long)]
    pub detach: bool,
    /// Service name or ID.
    pub service: String,
    #[command(flatten)]
    pub health: crate::health_args::HealthArgs,
    #[command(flatten)]
    pub container: crate::update_args::ContainerUpdateArgs,
}

/// `weft run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Task name (default: generated; 1-63 characters).
    #[arg(long)]
    pub name: Option<String>,
    /// Network to attach (repeatable, at most 16): `bridge` (the default),
    /// `host`, `none`, a bridge network of this node, or an attachable
    /// overlay; or `name=NET,alias=A[,alias=B][,ip=ADDR][,ip6=ADDR]`.
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// Address on the (first) network.
    #[arg(long)]
    pub ip: Option<String>,
    /// IPv6 address on the (first) network, a dual-stack one.
    #[arg(long)]
    pub ip6: Option<String>,
    /// A DNS name of the task on the (first) network besides its own
    /// (repeatable; tasks may share one: it answers all their addresses).
    #[arg(long = "network-alias")]
    pub network_aliases: Vec<String>,
    /// Publish a port on this node: [HOSTPORT:]PORT[/tcp|/udp] (repeatable,
    /// at most 64); without HOSTPORT a free port in 30000-32767 is picked.
    #[arg(short, long = "publish")]
    pub publish: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable; at most 256 variables and
    /// 64 KiB in all, values of up to 32 KiB).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Return at once and print the task's ID, instead of streaming its
    /// output and ending with its exit code.
    #[arg(short, long)]
    pub detach: bool,
    /// Size cap and rotation of each task's log on its node:
    /// max-size=SIZE (4k..1t, default 10m), max-file=N (1..100, default 3),
    /// comma-separated or repeated.
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub resources: crate::resources::ResourceArgs,
    #[command(flatten)]
    pub container: ContainerArgs,
    #[command(flatten)]
    pub health: crate::health_args::HealthArgs,
    /// Remove the task (its container, log and addresses) once it has
    /// ended, with or without -d.
    #[arg(long)]
    pub rm: bool,
    /// Keep the task's stdin open and forward yours to it (its EOF closes
    /// the task's stdin). With -d, stdin stays open for a later `weft
    /// attach`. Containers only (refused for a host process, -- CMD).
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the task a pseudo-terminal (its stdout and stderr as one).
    /// Attached with -i, your terminal goes raw: ctrl-c is a key for the
    /// task, ctrl-p ctrl-q detaches (it keeps running); -it without -d
    /// needs your stdin to be a terminal (else Docker's "the input device
    /// is not a TTY", exit 125). Containers only.
    #[arg(short, long)]
    pub tty: bool,
}

/// Parses `1h30m`, `90d`, `500ms`, `2160h0m0s`, `10s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!("invalid duration {s:?}: use a number with a unit, e.g. 500ms, 10s, 5m, 2160h, 90d")
    };
    if s.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(d).ok_or_else(err)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(
            parse_duration("2160h0m0s"),
            Ok(Duration::from_secs(2160 * 3600))
        );
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "10", "s", "1x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// The `--help` of every flag with a limit states the limit the
    /// manager enforces.
    #[test]
    fn help_states_the_limits() {
        use clap::CommandFactory;
        use weft_manager::limits as l;
        let kib = |b: usize| format!("{} KiB", b / 1024);
        let days = |s: u64| format!("{}d", s / 86_400);
        let env = vec![
            l::MAX_ENV_VARS.to_string(),
            kib(l::MAX_ENV_BYTES),
            kib(l::MAX_ENV_VALUE_BYTES),
        ];
        let labels = vec![
            l::MAX_LABELS.to_string(),
            l::MAX_LABEL_KEY_BYTES.to_string(),
            l::MAX_LABEL_VALUE_BYTES.to_string(),
        ];
        let command = vec![l::MAX_COMMAND_ARGS.to_string(), kib(l::MAX_COMMAND_BYTES)];
        let name = vec![format!("1-{}", l::MAX_NAME_BYTES)];
        let n = |v: usize| vec![v.to_string()];
        let cert = vec![format!("1h to {}", days(l::MAX_CERT_EXPIRY_SECS))];
        let wg = vec![format!("1m to {}", days(l::MAX_WG_KEY_ROTATION_SECS))];
        let cases: Vec<(&[&str], &str, Vec<String>)> = vec![
            (&["init"], "cert_expiry", cert.clone()),
            (&["init"], "heartbeat_period", vec!["100ms to 60s".into()]),
            (&["init"], "disconnect_grace", vec!["100ms to 60s".into()]),
            (
                &["cluster", "update"],
                "disconnect_grace",
                vec!["100ms to 60s".into()],
            ),
            (&["init"], "wg_key_rotation", wg.clone()),
            (&["init"], "default_addr_pool", n(l::MAX_ADDR_POOLS)),
            (&["cluster", "update"], "cert_expiry", cert),
            (&["cluster", "update"], "wg_key_rotation", wg),
            (&["node", "update"], "label_add", labels.clone()),
            (&["network", "create"], "labels", labels),
            (&["network", "create"], "name", name.clone()),
            (&["service", "create"], "name", name.clone()),
            (
                &["service", "create"],
                "replicas",
                n(l::MAX_REPLICAS as usize),
            ),
            (
                &["service", "create"],
                "networks",
                n(l::MAX_NETWORKS_PER_TASK),
            ),
            (&["service", "create"], "env", env.clone()),
            (&["service", "create"], "constraints", n(l::MAX_CONSTRAINTS)),
            (&["service", "create"], "publish", n(l::MAX_PORTS)),
            (&["service", "create"], "command", command.clone()),
            (
                &["service", "update"],
                "replicas",
                n(l::MAX_REPLICAS as usize),
            ),
            (
                &["service", "update"],
                "network_add",
                n(l::MAX_NETWORKS_PER_TASK),
            ),
            (&["service", "update"], "env_add", env.clone()),
            (
                &["service", "update"],
                "constraint_add",
                n(l::MAX_CONSTRAINTS),
            ),
            (&["service", "scale"], "pairs", n(l::MAX_REPLICAS as usize)),
            (&["run"], "name", name),
            (&["run"], "networks", n(l::MAX_NETWORKS_PER_TASK)),
            (&["run"], "publish", n(l::MAX_PORTS)),
            (&["run"], "env", env),
            (&["run"], "command", command),
        ];
        for (path, arg, wants) in cases {
            let mut cmd = Cli::command();
            for p in path {
                cmd = cmd.find_subcommand(p).expect("subcommand").clone();
            }
            let help = cmd
                .get_arguments()
                .find(|a| a.get_id() == arg)
                .and_then(|a| a.get_help())
                .unwrap_or_else(|| panic!("{path:?} {arg}: no help"))
                .to_string();
            for want in wants {
                assert!(
                    help.contains(&want),
                    "{path:?} --{arg}: {help:?} lacks {want:?}"
                );
            }
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
