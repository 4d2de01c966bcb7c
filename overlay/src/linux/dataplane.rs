//! [`LinuxDataplane`]: the real [`Dataplane`]. It reads the kernel into an
//! [`Observed`] (pins under `<exec_root>/netns`, links, addresses, FDB and
//! neighbour entries, routes, the `weft`, `weft_guard` and `weft_ports`
//! nftables tables and the operator's `weft_user` chain), asks the pure
//! planner for the ops and executes them with the primitives of this module
//! tree. It also runs the embedded DNS resolver of its tasks
//! ([`DnsServer`]): the view is replaced after every apply, the listeners
//! are started by [`Op::StartDns`] and stopped with their namespace; their
//! sockets, and the WireGuard device's TAP and socket ([`kept_wg`]), are
//! kept in the fd store at `<exec_root>/fd-store.sock`
//! ([`crate::linux::fdstore`]) if one runs there, so they outlive the
//! daemon, and the teardown of a leaving node stops that store.
//!
//! The daemon's own namespace is a [`Netns`] handle given at construction,
//! not the calling thread's: the daemon passes [`Netns::current`], tests and
//! the lab pass an underlay host's namespace, and nothing ever runs in the
//! real host namespace by accident.
//!
//! ```text
//!  apply(desired): lock ─ observe ─ plan (pure) ─ execute ops in order
//!                  (keeps going past a failed op; the next apply retries)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use nftables::schema::NfListObject;
use nftables::types::NfFamily;

use super::conntrack;
use super::error::Error as LinuxError;
use super::guard::{delete_guard_batch, guard_batch, guard_of};
use super::lb::{delete_lb_batch, lb_batch};
use super::monitor::NftMonitor;
use super::nat::{delete_nat_batch, nat_batch};
use super::netlink::{Link, LinkKind, Netlink, VethSpec, VxlanSpec};
use super::netns::Netns;
use super::nft;
use super::ports::{delete_ports_batch, ports_batch, ports_of, user_chain_batch};
use super::topology::teardown_pins;
use crate::dataplane::{ApplyReport, Dataplane, Error, OpFailure, Result, TeardownReport};
use crate::dns::listener::DnsServer;
use crate::dns::{DnsView, TASK_RESOLV_CONF};
use crate::linux::fdstore;
use crate::model::names::{
    self, GATEWAY_BRIDGE, INGRESS_IF, NFT_GUARD_TABLE, NFT_PORTS_TABLE, NFT_TABLE, NFT_USER_TABLE,
    WG_DEVICE,
};
use crate::model::{DesiredNode, Proto, TaskId};
use crate::plan::{HostRoute, NsRef, Op, plan};
use crate::wg::NodeDevice;
use crate::wg::{DeviceState, PeerConfig, WgDevice, keys};

/// Worker threads of the WireGuard device (the machine has few cores; the
/// stock boringtun loop moves one packet per syscall either way).
const WG_THREADS: usize = 2;

mod kept_wg;
mod observe;

#[cfg(test)]
pub(crate) use observe::nat_of as nat_of_for_tests;
use observe::{nat_of, routes_of};

type LResult<T> = std::result::Result<T, LinuxError>;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The Linux data plane of one daemon.
#[derive(Debug)]
pub struct LinuxDataplane {
    exec_root: PathBuf,
    host: Netns,
    lock: tokio::sync::Mutex<()>,
    dns: DnsServer,
    /// A kept libnftables context per task namespace, for its VIP table
    /// writes ([`libnft`](super::libnft)).
    nft_sessions: super::libnft::Sessions,
    /// The node-wide WireGuard device, while one runs. Its threads live in
    /// this process; its TAP and socket are kept in the fd store too
    /// ([`kept_wg`]), and the next daemon adopts them.
    wg: std::sync::Mutex<Option<Box<dyn WgDevice>>>,
    /// The fd store, for the WireGuard device's descriptors.
    keeper: fdstore::Keeper,
    /// The watcher of the daemon namespace's nftables ruleset, started by
    /// the first [`Dataplane::nft_changes`] call; its thread stops when
    /// the data plane is dropped.
    monitor: std::sync::Mutex<Option<NftMonitor>>,
    /// What was read of each namespace, and its watcher.
    cache: tokio::sync::Mutex<observe::ObsCache>,
    /// Moves whenever a watched namespace changed ([`Dataplane::observed_changes`]).
    changes: tokio::sync::watch::Sender<u64>,
    /// Namespaces read so far ([`LinuxDataplane::namespace_reads`]).
    reads: std::sync::atomic::AtomicU64,
}

impl LinuxDataplane {
    /// A data plane whose namespaces are pinned under `<exec_root>/netns`
    /// and whose "own" namespace (underlay, gateway bridge, nftables) is
    /// `host`. The resolver keeps its sockets in the fd store at
    /// `<exec_root>/fd-store.sock` when one answers there.
    pub fn new(exec_root: impl Into<PathBuf>, host: Netns) -> LinuxDataplane {
        let exec_root = exec_root.into();
        let store = fdstore::Client::new(exec_root.join(fdstore::SOCKET_NAME));
        LinuxDataplane {
            dns: DnsServer::new(&host).with_fd_store(store),
            nft_sessions: super::libnft::Sessions::default(),
            keeper: kept_wg::keeper(&exec_root, None),
            exec_root,
            host,
            lock: tokio::sync::Mutex::new(()),
            wg: std::sync::Mutex::new(None),
            monitor: std::sync::Mutex::new(None),
            cache: tokio::sync::Mutex::new(observe::ObsCache::default()),
            changes: tokio::sync::watch::Sender::new(0),
            reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Starts the node's fd store with `launcher` when the resolver has
    /// sockets to keep and none answers (without it, sockets are kept only
    /// in a store someone else started).
    pub fn with_fd_store_launcher(mut self, launcher: fdstore::Launcher) -> LinuxDataplane {
        self.keeper = kept_wg::keeper(&self.exec_root, Some(launcher.clone()));
        self.dns = self.dns.with_fd_store_launcher(launcher);
        self
    }

    /// A data plane working in the calling thread's namespace (for the
    /// daemon: call it from `main` or any tokio worker, never from a thread
    /// that joined another namespace).
    pub fn in_current_netns(exec_root: impl Into<PathBuf>) -> LResult<LinuxDataplane> {
        Ok(Self::new(exec_root, Netns::current()?))
    }

    /// The directory holding the namespace pins.
    pub fn netns_dir(&self) -> PathBuf {
        self.exec_root.join("netns")
    }

    /// The daemon's namespace this data plane treats as its own.
    pub fn host_netns(&self) -> &Netns {
        &self.host
    }

    /// What the embedded resolver answers now (the view of the last
    /// applied desired state).
    pub fn dns_view(&self) -> DnsView {
        self.dns.view()
    }

    /// What the WireGuard device holds now (public key, port, peers with
    /// their last handshake and byte counts: for `network inspect`);
    /// `None` when no device runs.
    pub fn wg_state(&self) -> Option<DeviceState> {
        let mut dev = self.wg_device();
        let st = dev.as_mut()?.state();
        match st {
            Ok(st) => Some(st),
            Err(e) => {
                // The device died: forget it, the next apply recreates it.
                tracing::warn!(error = %e, "WireGuard device stopped answering");
                *dev = None;
                None
            }
        }
    }

    fn wg_device(&self) -> std::sync::MutexGuard<'_, Option<Box<dyn WgDevice>>> {
        self.wg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the WireGuard device, if one runs (its interface goes with it
    /// unless the fd store keeps its TAP: see [`kept_wg`]).
    fn stop_wg(&self) -> bool {
        let dev = self.wg_device().take();
        dev.is_some()
    }

    fn resolv_conf_path(&self) -> PathBuf {
        self.exec_root.join("resolv.conf")
    }

    /// Writes the tasks' resolv.conf unless it already says the right thing.
    fn write_resolv_conf(&self) -> LResult<()> {
        std::fs::create_dir_all(&self.exec_root).map_err(|source| LinuxError::Io {
            op: "create exec root for",
            path: self.resolv_conf_path(),
            source,
        })?;
        write_task_resolv_conf(&self.resolv_conf_path())
    }

    /// Where the source of each adopted (foreign) task namespace is noted:
    /// `<exec_root>/netns-foreign/task-<id>`.
    fn foreign_note(&self, task: &TaskId) -> PathBuf {
        self.exec_root
            .join("netns-foreign")
            .join(names::task_ns(task))
    }

    /// Pins a foreign runtime's namespace as task `ns`'s. Refused: not a
    /// namespace, the daemon's own, or one weft pinned for something else.
    fn adopt_netns(&self, ns: &NsRef, source: &Path) -> LResult<()> {
        let NsRef::Task(task) = ns else {
            return Err(LinuxError::InvalidName {
                name: ns.to_string(),
                reason: "only a task's namespace can be adopted",
            });
        };
        let pin = self.pin(ns);
        if !Netns::exists(&pin) {
            let src = Netns::open(source)?;
            let ours = self.pins().unwrap_or_default();
            if src.same_as(&self.host) || ours.iter().any(|(_, p)| Netns::same(p, source)) {
                return Err(LinuxError::InvalidName {
                    name: source.display().to_string(),
                    reason: "this is the daemon's own namespace or one weft made: a foreign \
                             container's namespace must be its own",
                });
            }
        }
        let note = self.foreign_note(task);
        if let Some(dir) = note.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LinuxError::Io {
                op: "create foreign netns notes",
                path: dir.to_owned(),
                source,
            })?;
        }
        std::fs::write(&note, source.as_os_str().as_encoded_bytes()).map_err(|e| {
            LinuxError::Io {
                op: "note foreign netns",
                path: note.clone(),
                source: e,
            }
        })?;
        Netns::adopt(source, &pin)?;
        Ok(())
    }

    /// Before an adopted namespace's pin goes: takes weft's VIP table out
    /// of it (its links went with their peers; the resolver's sockets are
    /// closed by the caller). The namespace itself stays its runtime's.
    async fn release_foreign(&self, task: &TaskId) {
        let note = self.foreign_note(task);
        if !note.exists() {
            return;
        }
        let pin = self.pin(&NsRef::Task(task.clone()));
        if let Ok(ns) = Netns::open(&pin) {
            if let Err(e) = nft::apply_async(&ns, delete_lb_batch()).await {
                tracing::debug!(task = %task, error = %e, "no VIP table to take out of a foreign namespace");
            }
            self.nft_sessions.forget(ns.inode());
        }
        let _ = std::fs::remove_file(&note);
    }

    /// A task may talk to a peer whose neighbour entry arrives a moment
    /// after its first ARP request (or IPv6 neighbour solicitation): its
    /// veth `link` retries after 100 ms instead of the kernel's 1 s. The
    /// IPv6 setting only where the kernel has IPv6. A failure is logged,
    /// not fatal (the retry is only slower).
    fn shorten_neighbour_retry(&self, ns: &NsRef, link: &str) -> LResult<()> {
        let v4 = format!("/proc/sys/net/ipv4/neigh/{link}/retrans_time_ms");
        let v6 = format!("/proc/sys/net/ipv6/neigh/{link}/retrans_time_ms");
        let pin = Netns::open(self.pin(ns))?;
        let written = pin.run_in(move || {
            std::fs::write(&v4, "100")?;
            if std::path::Path::new(&v6).exists() {
                std::fs::write(&v6, "100")?;
            }
            Ok::<(), std::io::Error>(())
        })?;
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot shorten the neighbour retry time of a task");
        }
        Ok(())
    }

    fn pin(&self, ns: &NsRef) -> PathBuf {
        match ns {
            NsRef::Host => self.host.path().to_owned(),
            NsRef::Network(n) => self.netns_dir().join(names::network_ns(n)),
            NsRef::Task(t) => self.netns_dir().join(names::task_ns(t)),
        }
    }

    /// The main-table routes of the daemon's namespace (what a new subnet
    /// must not collide with); far cheaper than a whole [`observe`](Self::observe).
    pub async fn host_routes(&self) -> LResult<Vec<HostRoute>> {
        routes_of(&Netlink::open(&self.host)?).await
    }

    /// Which of weft's tables (and the operator's `weft_user`) the host's
    /// namespace holds now, as (family, name): `weft doctor`'s view. Fails
    /// when `nft` is missing or cannot list.
    pub async fn host_tables(&self) -> LResult<Vec<(String, String)>> {
        let listing = super::nft::list_tables_async(&self.host, HOST_TABLES).await?;
        Ok(listing
            .objects
            .iter()
            .filter_map(|o| match o {
                nftables::schema::NfObject::ListObject(NfListObject::Table(t)) => {
                    Some((family_name(t.family).to_string(), t.name.to_string()))
                }
                _ => None,
            })
            .collect())
    }

    /// How many times a namespace was read from the kernel so far (the
    /// daemon's own, a network's or a task's): an idle node's passes read
    /// none, a change re-reads the namespaces it touched.
    pub fn namespace_reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The count of nftables transactions on weft's tables in the daemon's
    /// namespace so far (the monitor starts on first use); `None` when it
    /// cannot be watched (the tables are then read on every pass).
    fn nft_generation(&self) -> Option<u64> {
        self.nft_changes().map(|rx| *rx.borrow())
    }

    async fn execute(&self, ops: Vec<Op>) -> Result<ApplyReport> {
        let mut ex = Executor {
            dp: self,
            handles: BTreeMap::new(),
        };
        let mut applied = Vec::new();
        let mut failures = Vec::new();
        for op in ops {
            let t0 = std::time::Instant::now();
            let r = ex.run(&op).await;
            tracing::trace!(?op, us = t0.elapsed().as_micros() as u64, "data plane op");
            match r {
                Ok(()) => applied.push(op),
                Err(source) => {
                    tracing::warn!(?op, error = %source, "data plane op failed");
                    failures.push(OpFailure { op, source });
                }
            }
        }
        if failures.is_empty() {
            Ok(ApplyReport { ops: applied })
        } else {
            Err(Error::Apply { applied, failures })
        }
    }
}

/// `inet`, `bridge`, … as `nft` writes them.
fn family_name(f: NfFamily) -> &'static str {
    match f {
        NfFamily::INet => "inet",
        NfFamily::Bridge => "bridge",
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::ARP => "arp",
        NfFamily::NetDev => "netdev",
    }
}

/// The host's nftables tables that are weft's (and the operator's
/// `weft_user`): all that observing the host lists, never the whole ruleset.
const HOST_TABLES: &[(NfFamily, &str)] = &[
    (NfFamily::INet, NFT_TABLE),
    (NfFamily::Bridge, NFT_TABLE),
    (NfFamily::INet, NFT_GUARD_TABLE),
    (NfFamily::INet, NFT_PORTS_TABLE),
    (NfFamily::INet, NFT_USER_TABLE),
];

/// [`Op::EnableIpv6Forwarding`], in the daemon's namespace: every
/// interface (and the default for new ones) that accepts router
/// advertisements keeps accepting them with forwarding on, except weft's
/// own; then forwarding on.
fn enable_ipv6_forwarding() -> LResult<()> {
    const CONF: &str = "/proc/sys/net/ipv6/conf";
    let io = |op: &'static str, path: String| {
        move |source| LinuxError::Io {
            op,
            path: path.into(),
            source,
        }
    };
    let dir = std::fs::read_dir(CONF).map_err(io("list IPv6 interfaces", CONF.into()))?;
    let mut kept = Vec::new();
    for entry in dir {
        let entry = entry.map_err(io("list IPv6 interfaces", CONF.into()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "all" || name.starts_with(names::WEFT_PREFIX) {
            continue;
        }
        if observe::sysctl6(&name, "accept_ra").as_deref() == Some("1") {
            let path = format!("{CONF}/{name}/accept_ra");
            match std::fs::write(&path, "2") {
                // An interface gone since the listing: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r.map_err(io("keep accepting router advertisements", path))?,
            }
            kept.push(name);
        }
    }
    let path = format!("{CONF}/all/forwarding");
    std::fs::write(&path, "1").map_err(io("enable IPv6 forwarding", path))?;
    tracing::info!(
        accept_ra_2 = ?kept,
        "IPv6 forwarding on; these interfaces keep accepting router advertisements"
    );
    Ok(())
}

/// IPv6 on `link` of the calling thread's namespace, where it was turned
/// off (`disable_ipv6` 1); nothing to do where IPv6 is off altogether.
fn enable_ipv6(link: &str) -> LResult<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6");
    if observe::sysctl6(link, "disable_ipv6").as_deref() != Some("1") {
        return Ok(());
    }
    std::fs::write(&path, "0").map_err(|source| LinuxError::Io {
        op: "turn IPv6 on",
        path: path.into(),
        source,
    })
}

/// [`Op::RefuseRa`], in the daemon's namespace; nothing to do without IPv6
/// on `link`.
fn refuse_ra(link: &str) -> LResult<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{link}/accept_ra");
    match std::fs::write(&path, "0") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|source| LinuxError::Io {
            op: "refuse router advertisements",
            path: path.into(),
            source,
        }),
    }
}

/// Runs ops, holding one netlink handle per namespace for the whole apply.
struct Executor<'a> {
    dp: &'a LinuxDataplane,
    handles: BTreeMap<NsRef, Netlink>,
}

impl Executor<'_> {
    fn open(&mut self, ns: &NsRef) -> LResult<()> {
        if !self.handles.contains_key(ns) {
            let netns = match ns {
                NsRef::Host => self.dp.host.clone(),
                _ => Netns::open(self.dp.pin(ns))?,
            };
            self.handles.insert(ns.clone(), Netlink::open(&netns)?);
        }
        Ok(())
    }

    fn nl(&mut self, ns: &NsRef) -> LResult<&Netlink> {
        self.open(ns)?;
        Ok(&self.handles[ns])
    }

    /// [`Op::CreateNetns`]: links made in the new namespace from now on
    /// ignore router advertisements (a task must not give its neighbours on
    /// a network, or the network's namespace, a route). Not done: the
    /// namespace goes again, so the next pass makes it anew.
    fn create_netns(&self, ns: &NsRef) -> LResult<()> {
        let pin = self.dp.pin(ns);
        let made = Netns::create(&pin)?;
        let refused = made.run_in(|| refuse_ra("default")).and_then(|r| r);
        if refused.is_err() {
            drop(made);
            let _ = Netns::delete(pin);
        }
        refused
    }

    /// [`Op::AddAddress`]. A runtime's sandbox may have IPv6 off on the
    /// links weft adds to it (Docker's has): on again for weft's gateway
    /// link before its IPv6 address. (The endpoint's own interface is the
    /// runtime's to turn on: Docker does, for an --ipv6 network, right
    /// before it sets the address.)
    async fn add_address(&mut self, ns: &NsRef, link: &str, addr: IpNetwork) -> LResult<()> {
        if addr.is_ipv6() && matches!(ns, NsRef::Task(_)) && link == names::TASK_GW_IF {
            let netns = Netns::open(self.dp.pin(ns))?;
            netns.run_in(|| enable_ipv6(link))??;
        }
        self.nl(ns)?.add_address(link, addr).await
    }

    /// Runs `f` on the WireGuard device; no device is an error (the op
    /// comes after `CreateWg`, which failed).
    fn with_wg(&self, f: impl FnOnce(&mut dyn WgDevice) -> crate::wg::Result<()>) -> LResult<()> {
        let mut dev = self.dp.wg_device();
        let Some(d) = dev.as_mut() else {
            return Err(LinuxError::LinkNotFound {
                ns: self.dp.host.label(),
                name: WG_DEVICE.to_owned(),
            });
        };
        Ok(f(d.as_mut())?)
    }

    async fn run(&mut self, op: &Op) -> LResult<()> {
        match op {
            Op::CreateNetns { ns } => self.create_netns(ns),
            Op::AdoptNetns { ns, source } => self.dp.adopt_netns(ns, source),
            Op::DeleteNetns { ns } => {
                // Our handle and the resolver's sockets would keep the
                // namespace alive.
                self.handles.remove(ns);
                if let NsRef::Task(t) = ns {
                    self.dp.dns.stop(t);
                    self.dp.release_foreign(t).await;
                }
                let pin = self.dp.pin(ns);
                if let Ok(m) = std::fs::metadata(&pin) {
                    self.dp
                        .nft_sessions
                        .forget(std::os::unix::fs::MetadataExt::ino(&m));
                }
                Netns::delete(pin)
            }
            Op::CreateBridge { ns, name, mtu } => {
                self.nl(ns)?.create_bridge(name, Some(*mtu)).await
            }
            Op::CreateVxlan {
                network,
                name,
                vni,
                port,
                local,
                mtu,
            } => {
                let net = NsRef::Network(network.clone());
                self.open(&NsRef::Host)?;
                self.open(&net)?;
                let spec = VxlanSpec {
                    name: name.clone(),
                    vni: *vni,
                    port: *port,
                    local: *local,
                    underlay_dev: None,
                    mtu: Some(*mtu),
                    mac: None,
                    proxy: true,
                };
                self.handles[&NsRef::Host]
                    .create_vxlan(&spec, &self.handles[&net])
                    .await
            }
            Op::CreateVeth {
                ns,
                name,
                mac,
                peer_ns,
                peer_name,
                peer_mac,
                mtu,
            } => {
                self.open(ns)?;
                self.open(peer_ns)?;
                let spec = VethSpec {
                    name: name.clone(),
                    peer_name: peer_name.clone(),
                    mtu: Some(*mtu),
                    mac: *mac,
                    peer_mac: *peer_mac,
                };
                self.handles[ns]
                    .create_veth(&spec, &self.handles[peer_ns])
                    .await?;
                if matches!(peer_ns, NsRef::Task(_)) {
                    self.dp.shorten_neighbour_retry(peer_ns, peer_name)?;
                }
                Ok(())
            }
            Op::DeleteLink { ns, name } => self.nl(ns)?.delete_link(name).await,
            Op::SetMtu { ns, link, mtu } => self.nl(ns)?.set_mtu(link, *mtu).await,
            Op::SetMac { ns, link, mac } => self.nl(ns)?.set_mac(link, *mac).await,
            Op::SetMaster { ns, link, master } => self.nl(ns)?.set_master(link, Some(master)).await,
            Op::SetUp { ns, link } => self.nl(ns)?.set_up(link).await,
            Op::AddAddress { ns, link, addr } => self.add_address(ns, link, *addr).await,
            Op::DeleteAddress { ns, link, addr } => self.nl(ns)?.delete_address(link, *addr).await,
            Op::ReplaceDefaultRoute { ns, gateway, dev } => {
                self.nl(ns)?
                    .replace_default_route(*gateway, Some(dev))
                    .await
            }
            Op::DeleteRoute { ns, dest } => self.nl(ns)?.delete_route(*dest).await,
            Op::ReplaceFdb {
                network,
                link,
                mac,
                vtep,
            } => {
                self.nl(&NsRef::Network(network.clone()))?
                    .replace_fdb(link, *mac, *vtep)
                    .await
            }
            Op::DeleteFdb { network, link, mac } => {
                self.nl(&NsRef::Network(network.clone()))?
                    .delete_fdb(link, *mac, None)
                    .await
            }
            Op::ReplaceNeigh {
                network,
                link,
                ip,
                mac,
            } => {
                self.nl(&NsRef::Network(network.clone()))?
                    .replace_neigh(link, *ip, *mac)
                    .await
            }
            Op::DeleteNeigh { network, link, ip } => {
                self.nl(&NsRef::Network(network.clone()))?
                    .delete_neigh(link, *ip)
                    .await
            }
            Op::StartDns { task, addr } => {
                let ns = Netns::open(self.dp.pin(&NsRef::Task(task.clone())))?;
                self.dp.dns.start(task, &ns, *addr)
            }
            Op::EnableIpv4Forwarding
            | Op::EnableIpv6Forwarding
            | Op::RefuseRa { .. }
            | Op::ApplyNat { .. }
            | Op::DeleteNat
            | Op::ApplyLb { .. }
            | Op::DeleteLb { .. }
            | Op::ApplyGuard { .. }
            | Op::DeleteGuard
            | Op::ApplyPorts { .. }
            | Op::DeletePorts
            | Op::EnsureUserChain => self.run_tables(op).await,
            Op::CreateWg { .. }
            | Op::SetWgKey { .. }
            | Op::DeleteWg
            | Op::RemoveWgPeer { .. }
            | Op::AddWgPeer { .. } => self.run_wg(op).await,
        }
    }

    /// ip_forward and nftables tables: the daemon's, and tasks' VIP tables.
    async fn run_tables(&mut self, op: &Op) -> LResult<()> {
        match op {
            Op::EnableIpv4Forwarding => self
                .dp
                .host
                .run_in(|| std::fs::write(IP_FORWARD, "1"))?
                .map_err(|source| LinuxError::Io {
                    op: "enable ip_forward",
                    path: IP_FORWARD.into(),
                    source,
                }),
            Op::EnableIpv6Forwarding => self.dp.host.run_in(enable_ipv6_forwarding)?,
            Op::RefuseRa { link } => self.dp.host.run_in(|| refuse_ra(link))?,
            Op::ApplyNat {
                subnet,
                subnet6,
                bridge,
            } => {
                nft::check_nft()?;
                nft::apply_async(&self.dp.host, nat_batch(*subnet, *subnet6, bridge)).await
            }
            Op::DeleteNat => nft::apply_async(&self.dp.host, delete_nat_batch()).await,
            Op::ApplyLb { task, vips, flush } => {
                nft::check_nft()?;
                let ns = Netns::open(self.dp.pin(&NsRef::Task(task.clone())))?;
                let before = self.dp.lb_before(task).await;
                self.dp.nft_sessions.apply(&ns, lb_batch(vips)).await?;
                // Dumping the task's conntrack table costs 10-30 ms on a
                // busy client: skipped for a VIP whose backends only grew.
                let keep = flush
                    .iter()
                    .filter(|v| may_be_stale(before.as_ref(), **v, vips))
                    .map(|v| {
                        let backends = vips.get(v).into_iter().flatten().copied();
                        (*v, backends.collect())
                    })
                    .collect();
                flush_conntrack(ns, keep).await
            }
            Op::DeleteLb { task, flush } => {
                let ns = Netns::open(self.dp.pin(&NsRef::Task(task.clone())))?;
                self.dp.nft_sessions.apply(&ns, delete_lb_batch()).await?;
                let keep = flush.iter().map(|v| (*v, BTreeSet::new())).collect();
                flush_conntrack(ns, keep).await
            }
            Op::ApplyGuard {
                port,
                members,
                rules,
            } => {
                nft::check_nft()?;
                nft::apply_async(&self.dp.host, guard_batch(*port, members, *rules)).await
            }
            Op::DeleteGuard => nft::apply_async(&self.dp.host, delete_guard_batch()).await,
            Op::ApplyPorts { table } => {
                nft::check_nft()?;
                nft::apply_async(&self.dp.host, ports_batch(table)).await
            }
            Op::DeletePorts => nft::apply_async(&self.dp.host, delete_ports_batch()).await,
            Op::EnsureUserChain => {
                nft::check_nft()?;
                nft::apply_async(&self.dp.host, user_chain_batch()).await
            }
            _ => unreachable!("run sends only table ops here"),
        }
    }

    /// The node's WireGuard device and its peers.
    async fn run_wg(&mut self, op: &Op) -> LResult<()> {
        match op {
            Op::CreateWg {
                listen_port,
                private_key_path,
                mtu,
            } => {
                let key = keys::load_private_key(private_key_path)?;
                self.dp.stop_wg();
                let mut dev = match self.dp.adopt_wg(*listen_port).await {
                    Some(dev) => dev,
                    None => {
                        // A link left by someone else would make the TUN
                        // attach to it.
                        self.nl(&NsRef::Host)?.delete_link(WG_DEVICE).await?;
                        let host = self.dp.host.clone();
                        tokio::task::spawn_blocking(move || {
                            NodeDevice::create(WG_DEVICE, &host, WG_THREADS)
                        })
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?
                    }
                };
                dev.set_private_key(&key)?;
                dev.set_listen_port(*listen_port)?;
                self.dp.keep_wg(&dev);
                *self.dp.wg_device() = Some(Box::new(dev));
                self.nl(&NsRef::Host)?.set_mtu(WG_DEVICE, *mtu).await
            }
            Op::DeleteWg => {
                self.dp.stop_wg();
                self.dp.forget_wg();
                self.nl(&NsRef::Host)?.delete_link(WG_DEVICE).await
            }
            Op::SetWgKey { private_key_path } => {
                let key = keys::load_private_key(private_key_path)?;
                self.with_wg(|d| d.set_private_key(&key))
            }
            Op::RemoveWgPeer { public_key } => self.with_wg(|d| d.remove_peer(public_key)),
            Op::AddWgPeer {
                public_key,
                endpoint,
                allowed_ips,
                keepalive,
            } => {
                let peer = PeerConfig {
                    public_key: public_key.clone(),
                    endpoint: *endpoint,
                    allowed_ips: allowed_ips.clone(),
                    keepalive: *keepalive,
                };
                self.with_wg(|d| d.add_peer(&peer))
            }
            _ => unreachable!("run sends only WireGuard ops here"),
        }
    }
}

#[async_trait]
impl Dataplane for LinuxDataplane {
    async fn apply(&self, desired: &DesiredNode) -> Result<ApplyReport> {
        let _guard = self.lock.lock().await;
        self.resume_wg(desired).await;
        let t0 = std::time::Instant::now();
        let reads = self.namespace_reads();
        let mut observed = self.observe().await.map_err(Error::Observe)?;
        let observe_ms = t0.elapsed().as_millis() as u64;
        // The key file is observed state too: a device holding another key
        // is re-keyed (rotation). Unreadable: CreateWg reports why.
        observed.wg_key = desired.wireguard.as_ref().and_then(|w| {
            keys::load_private_key(&w.private_key_path)
                .ok()
                .map(|k| k.public_key())
        });
        let t_plan = std::time::Instant::now();
        let ops = plan(&observed, desired)?;
        let plan_us = t_plan.elapsed().as_micros() as u64;
        if !ops.is_empty() {
            tracing::debug!(
                ops = ops.len(),
                observe_ms,
                namespaces_read = self.namespace_reads() - reads,
                "applying data plane changes"
            );
        }
        let ports_changed = ops.iter().any(|o| matches!(o, Op::ApplyPorts { .. }));
        // Read back whatever the ops touch, failed or not; a task's VIP
        // table written whole is known without reading it back.
        self.forget_observed(&ops).await;
        let t_exec = std::time::Instant::now();
        let report = self.execute(ops).await;
        let execute_us = t_exec.elapsed().as_micros() as u64;
        match &report {
            Ok(r) => self.note_written(&r.ops).await,
            Err(Error::Apply { applied, .. }) => self.note_written(applied).await,
            Err(_) => {}
        }
        // A device adopted by this pass's CreateWg has its peers now (or
        // the pass failed, and holding its traffic longer helps nobody).
        if let Some(dev) = self.wg_device().as_mut() {
            dev.release();
        }
        if ports_changed {
            self.flush_stale_ports(desired).await;
        }
        // Names follow the desired state once its VIP tables are in (a
        // connection to a VIP made before its DNAT rule would be tracked
        // un-NATed for its whole life).
        self.dns.set_view(DnsView::of(desired));
        let written = self.write_resolv_conf();
        tracing::trace!(
            observe_ms,
            plan_us,
            execute_us,
            total_us = t0.elapsed().as_micros() as u64,
            "data plane pass"
        );
        let report = report?;
        written?;
        Ok(report)
    }

    fn task_netns(&self, task: &TaskId) -> PathBuf {
        self.pin(&NsRef::Task(task.clone()))
    }

    /// The pass's own first op for a new task, run alone; the next pass
    /// reads the namespace as it finds it.
    async fn prepare_task(&self, task: &TaskId) -> Result<bool> {
        let _guard = self.lock.lock().await;
        let op = Op::CreateNetns {
            ns: NsRef::Task(task.clone()),
        };
        self.forget_observed(std::slice::from_ref(&op)).await;
        self.execute(vec![op]).await?;
        Ok(true)
    }

    fn resolv_conf(&self) -> Option<PathBuf> {
        Some(self.resolv_conf_path())
    }

    fn nft_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let mut m = self.monitor.lock().unwrap_or_else(|p| p.into_inner());
        if m.is_none() {
            match NftMonitor::start(&self.host) {
                Ok(mon) => *m = Some(mon),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch nftables changes; drift is repaired by the periodic re-apply only");
                    return None;
                }
            }
        }
        m.as_ref().map(NftMonitor::subscribe)
    }

    fn observed_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    fn wg_handshakes(&self) -> std::collections::BTreeMap<String, std::time::SystemTime> {
        self.wg_state()
            .map(|st| {
                st.peers
                    .into_iter()
                    .filter_map(|(k, p)| p.last_handshake.map(|t| (k, t)))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn teardown_all(&self) -> Result<TeardownReport> {
        let _guard = self.lock.lock().await;
        let mut report = TeardownReport::default();
        // The resolver's sockets would keep task namespaces alive, here and
        // in the fd store.
        self.dns.stop_all();
        self.nft_sessions.clear();
        self.dns.shutdown_store();
        self.dns.set_view(DnsView::default());
        match std::fs::remove_file(self.resolv_conf_path()) {
            Ok(()) => report
                .removed
                .push(format!("file {}", self.resolv_conf_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => report.errors.push(
                LinuxError::Io {
                    op: "remove",
                    path: self.resolv_conf_path(),
                    source,
                }
                .into(),
            ),
        }
        if self.stop_wg() {
            report.removed.push(format!("wireguard device {WG_DEVICE}"));
        }
        let host_nl = Netlink::open(&self.host)?;
        // Daemon-side links first: gateway ports, stray VXLAN devices, the
        // WireGuard interface, the ingress endpoint, the gateway bridge.
        match host_nl.list_links(Some(names::WEFT_PREFIX)).await {
            Ok(links) => {
                let mut links: Vec<Link> = links
                    .into_iter()
                    .filter(|l| {
                        l.name == GATEWAY_BRIDGE
                            || l.name == WG_DEVICE
                            || l.name == INGRESS_IF
                            || l.name.starts_with(names::GW_PORT_PREFIX)
                            || l.name.starts_with(names::VXLAN_PREFIX)
                    })
                    .collect();
                // The bridge last.
                links.sort_by_key(|l| l.name == GATEWAY_BRIDGE);
                for l in links {
                    match host_nl.delete_link(&l.name).await {
                        Ok(()) => report.removed.push(format!("link {}", l.name)),
                        Err(e) => report.errors.push(e.into()),
                    }
                }
            }
            Err(e) => report.errors.push(e.into()),
        }
        match nft::list_tables_async(&self.host, HOST_TABLES).await {
            Ok(rs) => {
                if nat_of(&rs).is_some() {
                    match nft::apply_async(&self.host, delete_nat_batch()).await {
                        Ok(()) => report
                            .removed
                            .push(format!("nft tables inet/bridge {NFT_TABLE}")),
                        Err(e) => report.errors.push(e.into()),
                    }
                }
                if guard_of(&rs).is_some() {
                    match nft::apply_async(&self.host, delete_guard_batch()).await {
                        Ok(()) => report
                            .removed
                            .push(format!("nft table inet {NFT_GUARD_TABLE}")),
                        Err(e) => report.errors.push(e.into()),
                    }
                }
                // The operator's table (`weft_user`) is not ours: it stays.
                if ports_of(&rs).is_some() {
                    match nft::apply_async(&self.host, delete_ports_batch()).await {
                        Ok(()) => report
                            .removed
                            .push(format!("nft table inet {NFT_PORTS_TABLE}")),
                        Err(e) => report.errors.push(e.into()),
                    }
                }
            }
            Err(LinuxError::NftMissing) => {}
            Err(e) => report.errors.push(e.into()),
        }
        // VXLAN devices inside network namespaces go synchronously, so their
        // VNIs are free at once; the rest goes with the namespaces.
        let pins = match self.pins() {
            Ok(p) => p,
            Err(e) => {
                report.errors.push(e.into());
                Vec::new()
            }
        };
        for (name, path) in &pins {
            if !name.starts_with(names::NET_NS_PREFIX) {
                continue;
            }
            let r: LResult<()> = async {
                let nl = Netlink::open(&Netns::open(path)?)?;
                for l in nl.list_links(None).await? {
                    if matches!(l.kind, LinkKind::Vxlan | LinkKind::Veth) {
                        nl.delete_link(&l.name).await?;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                report.errors.push(e.into());
            }
        }
        let paths: Vec<PathBuf> = pins.into_iter().map(|(_, p)| p).collect();
        let pinned = teardown_pins(&paths);
        report.killed = pinned.killed;
        report.removed.extend(
            pinned
                .removed
                .iter()
                .map(|p| format!("netns {}", p.display())),
        );
        report
            .errors
            .extend(pinned.errors.into_iter().map(Error::from));
        // Only an empty directory goes; anything else there is not ours.
        let _ = std::fs::remove_dir(self.netns_dir());
        Ok(report)
    }
}

impl LinuxDataplane {
    /// After the published-ports table changed: deletes the node's conntrack
    /// entries of published ports DNATed to an address that is no longer
    /// among the port's live backends (local and remote, whichever the table
    /// picked), so their flows go to the current ones from their next packet
    /// on. Only entries whose backend is in weft's own subnets (gateway
    /// bridge, ingress network) are candidates: other software's DNATed flows
    /// on the same port numbers are not touched. A failure is logged; the
    /// entries then time out on their own.
    async fn flush_stale_ports(&self, desired: &DesiredNode) {
        let keep: BTreeMap<(u8, u16), BTreeSet<IpAddr>> = desired
            .ports
            .iter()
            .map(|p| {
                let proto = match p.proto {
                    Proto::Tcp => libc::IPPROTO_TCP as u8,
                    Proto::Udp => libc::IPPROTO_UDP as u8,
                };
                let live = p.local.iter().chain(&p.remote).copied().collect();
                ((proto, p.port), live)
            })
            .collect();
        let ours: Vec<IpNetwork> = desired
            .gateway
            .iter()
            .map(|g| g.subnet)
            .chain(desired.ingress.iter().map(|i| i.ip))
            .collect();
        let host = self.host.clone();
        let flushed =
            tokio::task::spawn_blocking(move || conntrack::delete_stale_ports(&host, &keep, &ours))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        match flushed {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                entries = n,
                "deleted stale published-port conntrack entries"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not delete stale published-port conntrack entries")
            }
        }
    }
}

/// Deletes the task's conntrack entries made stale by a VIP table change
/// (see [`conntrack::delete_stale`]), on the blocking pool.
/// Whether connections to `vip` may be tracked to something other than
/// one of its backends in `vips` once the table is written, given the table
/// written `before` (`None`: unknown). A VIP that only gained backends has
/// none: every tracked connection went to a backend it still has. A VIP
/// new to the table may have connections tracked un-NATed.
fn may_be_stale(
    before: Option<&BTreeMap<IpAddr, Vec<IpAddr>>>,
    vip: IpAddr,
    vips: &BTreeMap<IpAddr, Vec<IpAddr>>,
) -> bool {
    let Some(old) = before.and_then(|b| b.get(&vip)) else {
        return true;
    };
    vips.get(&vip)
        .is_none_or(|new| !old.iter().all(|b| new.contains(b)))
}

async fn flush_conntrack(ns: Netns, keep: BTreeMap<IpAddr, BTreeSet<IpAddr>>) -> LResult<()> {
    let n = tokio::task::spawn_blocking(move || conntrack::delete_stale(&ns, &keep))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    if n > 0 {
        tracing::debug!(entries = n, "deleted stale conntrack entries");
    }
    Ok(())
}

/// The MTU of the interface holding `ip` in namespace `ns` (the daemon's
/// underlay MTU, reported at join), or `None` if no interface has it.
/// Must run inside a tokio runtime.
pub async fn underlay_mtu_of(ns: &Netns, ip: IpAddr) -> LResult<Option<u32>> {
    let nl = Netlink::open(ns)?;
    let Some(index) = nl
        .list_all_addresses()
        .await?
        .into_iter()
        .find(|(_, a)| a.ip() == ip)
        .map(|(i, _)| i)
    else {
        return Ok(None);
    };
    Ok(nl
        .list_links(None)
        .await?
        .into_iter()
        .find(|l| l.index == index)
        .and_then(|l| l.mtu))
}

/// The pin path of a task's namespace under `exec_root` (what
/// [`Dataplane::task_netns`] returns), for callers without a data plane.
pub fn task_netns_path(exec_root: &Path, task: &TaskId) -> PathBuf {
    exec_root.join("netns").join(names::task_ns(task))
}

/// Writes [`TASK_RESOLV_CONF`] to `path` unless it already holds it.
/// Crash-safe: tasks bind-mount it, and one started now or after a crash
/// must see all of a file, the old one or the new.
fn write_task_resolv_conf(path: &Path) -> LResult<()> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == TASK_RESOLV_CONF) {
        return Ok(());
    }
    // 0644: bound into tasks, where any user may read it (the daemon's
    // umask would make it 0600).
    crate::durable::write_atomic(path, TASK_RESOLV_CONF.as_bytes(), 0o644).map_err(|e| {
        LinuxError::Io {
            op: e.step.as_str(),
            path: e.path,
            source: e.source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conntrack is dumped only when a connection may be tracked to a
    /// backend the VIP no longer has, or un-NATed.
    #[test]
    fn stale_connections_are_looked_for_unless_a_vip_only_gained_backends() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (vip, other) = (ip("10.0.9.3"), ip("10.0.9.100"));
        let table = |b: &[&str]| BTreeMap::from([(vip, b.iter().map(|s| ip(s)).collect())]);
        let before = table(&["10.0.9.4", "10.0.9.5"]);
        // Unknown before (a restarted daemon, a table someone changed).
        assert!(may_be_stale(None, vip, &table(&["10.0.9.4"])));
        // Grew, or the same: nothing to look for.
        assert!(!may_be_stale(
            Some(&before),
            vip,
            &table(&["10.0.9.4", "10.0.9.5", "10.0.9.6"])
        ));
        assert!(!may_be_stale(Some(&before), vip, &before));
        // Lost one, or replaced: look.
        assert!(may_be_stale(Some(&before), vip, &table(&["10.0.9.4"])));
        assert!(may_be_stale(Some(&before), vip, &table(&["10.0.9.6"])));
        // Gone from the table, or new to it.
        assert!(may_be_stale(Some(&before), vip, &BTreeMap::new()));
        assert!(may_be_stale(Some(&before), other, &table(&["10.0.9.4"])));
        // It had no backend (rejected): nothing was tracked.
        assert!(!may_be_stale(Some(&table(&[])), vip, &table(&["10.0.9.4"])));
    }

    #[test]
    fn task_resolv_conf_is_rewritten_whole_and_readable_by_tasks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        // A crash while writing an earlier version left a torn temporary
        // file and an old resolv.conf: the old one stays until replaced.
        std::fs::write(&path, "nameserver 198.18.0.53\n").unwrap();
        std::fs::write(crate::durable::temp_path(&path), "names").unwrap();
        write_task_resolv_conf(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), TASK_RESOLV_CONF);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(!crate::durable::temp_path(&path).exists());
        write_task_resolv_conf(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), TASK_RESOLV_CONF);
    }
}
