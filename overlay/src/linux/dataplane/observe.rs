//! Reading the kernel into an [`Observed`]: every pinned namespace, the
//! daemon namespace's links of ours, its routes and nftables tables.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use super::{HOST_TABLES, IP_FORWARD, LResult, LinuxDataplane};
use crate::linux::error::Error as LinuxError;
use crate::linux::guard::guard_of;
use crate::linux::lb::lb_of;
use crate::linux::netlink::{Link, LinkKind, Netlink};
use crate::linux::netns::Netns;
use crate::linux::nft;
use crate::linux::nswatch::{Dirty, NsWatch, Watched};
use crate::linux::ports::{ports_of, user_chain_of};
use crate::model::names::{self, GATEWAY_BRIDGE, INGRESS_IF, NFT_TABLE};
use crate::model::{NetworkId, TaskId};
use crate::plan::{
    HostRoute, NsRef, Observed, ObservedFdb, ObservedKind, ObservedLink, ObservedNeigh, ObservedNs,
    ObservedRoute, ObservedVxlan, ObservedWg, ObservedWgPeer, Op,
};
use nftables::types::NfFamily;

impl LinuxDataplane {
    /// Reads what exists in the kernel, re-reading only the namespaces
    /// that changed since the last call (see [`ObsCache`]). Must run inside
    /// a tokio runtime.
    pub async fn observe(&self) -> LResult<Observed> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        let host = self.observe_host(&mut cache, now).await?;
        let nft = host.nft.clone().unwrap_or_default();
        // The daemon namespace's sysctls, in one visit of it.
        let host_links = host.links.as_ref().map(|l| &l.0.links);
        let (ipv4_forwarding, ipv6_forwarding, ra_refused) = self.host.run_in(|| {
            let refused = [GATEWAY_BRIDGE, INGRESS_IF]
                .into_iter()
                .filter(|name| host_links.is_some_and(|l| l.contains_key(*name)))
                .filter(|name| sysctl6(name, "accept_ra").is_none_or(|v| v == "0"))
                .map(str::to_owned)
                .collect::<BTreeSet<String>>();
            (
                std::fs::read_to_string(IP_FORWARD),
                sysctl6("all", "forwarding").as_deref() == Some("1"),
                refused,
            )
        })?;
        let ipv4_forwarding =
            ipv4_forwarding
                .map(|s| s.trim() == "1")
                .map_err(|source| LinuxError::Io {
                    op: "read ip_forward",
                    path: IP_FORWARD.into(),
                    source,
                })?;
        let wg = self.wg_state().map(|st| ObservedWg {
            public_key: st.public_key,
            listen_port: st.listen_port,
            peers: st
                .peers
                .into_iter()
                .map(|(k, p)| {
                    (
                        k,
                        ObservedWgPeer {
                            endpoint: p.endpoint,
                            allowed_ips: p.allowed_ips,
                            keepalive: p.keepalive,
                        },
                    )
                })
                .collect(),
        });
        let mut obs = Observed {
            host: host.links.as_ref().map(|l| l.0.clone()).unwrap_or_default(),
            host_routes: host.links.as_ref().map(|l| l.1.clone()).unwrap_or_default(),
            ipv4_forwarding,
            ipv6_forwarding,
            ra_refused,
            nat: nft.nat,
            networks: BTreeMap::new(),
            tasks: BTreeMap::new(),
            dns: BTreeSet::new(),
            wg,
            wg_key: None,
            guard: nft.guard,
            ports: nft.ports,
            user_chain: nft.user_chain,
        };
        let mut task_inodes = BTreeMap::new();
        let pins = self.pins()?;
        cache
            .pins
            .retain(|name, _| pins.iter().any(|(n, _)| n == name));
        let mut rechecks = RECHECKS_PER_PASS;
        let mut scratch = vec![0u8; 64 * 1024];
        for (name, path) in pins {
            let Ok(inode) = std::fs::metadata(&path).map(|m| m.ino()) else {
                // Unpinned since it was listed.
                continue;
            };
            let entry = cache.pins.entry(name.clone()).or_default();
            if entry.inode != inode {
                *entry = PinEntry {
                    inode,
                    ..PinEntry::default()
                };
            }
            let dirty = entry
                .watch
                .as_ref()
                .map_or(Dirty::ALL, |w| w.take_dirty(&mut scratch));
            let due = entry.recheck_at.is_none_or(|t| t <= now) && rechecks > 0;
            let links =
                entry.obs.is_none() || std::mem::take(&mut entry.links_stale) || dirty.links || due;
            // The safety net re-reads links only: a task's ruleset is read
            // again when its nftables notifications say so (they carry
            // every change, as the daemon's own monitor relies on), which
            // spares a process per namespace per re-check.
            let task = name.starts_with(names::TASK_NS_PREFIX);
            let nft = task && (entry.obs.is_none() || dirty.nft);
            if links || nft {
                if due && entry.obs.is_some() && !dirty.links {
                    rechecks -= 1;
                }
                let old = entry.obs.take();
                let read = self
                    .observe_pin(&path, task, entry, old, links, nft)
                    .await?;
                entry.obs = Some(read);
                if links {
                    entry.recheck_at = Some(now + recheck_after());
                }
            }
            let o = entry.obs.clone().unwrap_or_default();
            if let Some(id) = name.strip_prefix(names::NET_NS_PREFIX) {
                obs.networks.insert(NetworkId::from(id), o);
            } else if let Some(id) = name.strip_prefix(names::TASK_NS_PREFIX) {
                let id = TaskId::from(id);
                task_inodes.insert(id.clone(), inode);
                obs.tasks.insert(id, o);
            }
        }
        // Listeners serving a namespace that is no longer pinned (or that
        // died) are dropped here, so they neither count as serving nor keep
        // an old namespace alive.
        obs.dns = self.dns.reap(&task_inodes);
        self.nft_sessions
            .reap(&task_inodes.values().copied().collect());
        Ok(obs)
    }

    /// The daemon namespace's part, from the cache unless it changed.
    async fn observe_host<'c>(
        &self,
        cache: &'c mut ObsCache,
        now: Instant,
    ) -> LResult<&'c HostEntry> {
        let generation = self.nft_generation();
        let entry = cache.host.get_or_insert_with(HostEntry::default);
        if entry.watch.is_none() {
            entry.watch = self.start_watch(&self.host, Watched::Host);
            entry.links = None;
        }
        let mut scratch = vec![0u8; 64 * 1024];
        let dirty = entry
            .watch
            .as_ref()
            .is_none_or(|w| w.take_dirty(&mut scratch).links);
        let due = entry.recheck_at.is_none_or(|t| t <= now);
        if entry.links.is_none() || dirty || due {
            entry.links = None;
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let nl = Netlink::open(&self.host)?;
            let mut ns = observe_ns(&nl, Some(names::WEFT_PREFIX), false).await?;
            ns.default_routes.clear();
            let routes = routes_of(&nl).await?;
            entry.links = Some((ns, routes));
            entry.recheck_at = Some(now + recheck_after());
            // The tables are read again with the periodic re-check of the
            // links, a safety net under the monitor; not on every change
            // of a link (each new task's veth), which would cost a process
            // per table.
            if due {
                entry.nft = None;
            }
        }
        if entry.nft.is_none() || generation.is_none() || entry.nft_generation != generation {
            tracing::trace!("reading the daemon's nftables tables");
            entry.nft = None;
            entry.nft = Some(self.observe_host_nft().await?);
            entry.nft_generation = generation;
        }
        Ok(entry)
    }

    /// weft's nftables tables in the daemon's namespace.
    async fn observe_host_nft(&self) -> LResult<HostNft> {
        match nft::list_tables_async(&self.host, HOST_TABLES).await {
            Ok(rs) => Ok(HostNft {
                nat: nat_of(&rs),
                guard: guard_of(&rs),
                ports: ports_of(&rs),
                user_chain: user_chain_of(&rs),
            }),
            // Without nft there are no tables to see; a desired gateway
            // then fails at ApplyNat with the install hint.
            Err(LinuxError::NftMissing) => Ok(HostNft::default()),
            Err(e) => Err(e),
        }
    }

    /// Reads one pinned namespace (its links if `links`, a task's ruleset
    /// if `nft`, the rest from `old`), starting its watcher first (so a
    /// change made while it is read is noticed at the next pass).
    async fn observe_pin(
        &self,
        path: &Path,
        task: bool,
        entry: &mut PinEntry,
        old: Option<ObservedNs>,
        links: bool,
        nft: bool,
    ) -> LResult<ObservedNs> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = Netns::open(path)?;
        if entry.watch.is_none() {
            let what = if task {
                Watched::Task
            } else {
                Watched::Network
            };
            entry.watch = self.start_watch(&ns, what);
        }
        let kept_lb = old.as_ref().and_then(|o| o.lb.clone());
        let mut o = match old {
            Some(old) if !links => old,
            _ => {
                let mut o = observe_ns(&Netlink::open(&ns)?, None, !task).await?;
                o.lb = kept_lb;
                o
            }
        };
        tracing::trace!(ns = %ns.label(), links, nft, "reading a namespace");
        if nft {
            o.lb = match nft::list_ruleset_async(&ns).await {
                Ok(rs) => lb_of(&rs),
                Err(LinuxError::NftMissing) => None,
                Err(e) => return Err(e),
            };
        }
        Ok(o)
    }

    fn start_watch(&self, ns: &Netns, what: Watched) -> Option<NsWatch> {
        match NsWatch::start(ns, what, self.changes.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, ns = %ns.label(), "cannot watch a namespace; it is re-read on every pass");
                None
            }
        }
    }

    /// Forgets what was read of the namespaces `ops` change, so the next
    /// pass reads them again whatever the watchers say (what the kernel
    /// made of an op, an index or a MAC, is read back rather than guessed).
    pub(super) async fn forget_observed(&self, ops: &[Op]) {
        let mut cache = self.cache.lock().await;
        for op in ops {
            if matches!(op, Op::ApplyLb { .. } | Op::DeleteLb { .. }) {
                // Forgotten only if it fails: see note_written.
                if let Some(e) = cache.pins.get_mut(&names::task_ns(lb_task(op))) {
                    e.lb_pending = true;
                }
                continue;
            }
            for ns in op_namespaces(op) {
                let pin = match ns {
                    NsRef::Host => {
                        if let Some(h) = &mut cache.host {
                            h.links = None;
                            if writes_host_tables(op) {
                                h.nft = None;
                            }
                        }
                        continue;
                    }
                    NsRef::Network(n) => names::network_ns(&n),
                    NsRef::Task(t) => names::task_ns(&t),
                };
                if let Some(e) = cache.pins.get_mut(&pin) {
                    // Only the VIP table ops above write a task's ruleset:
                    // the others leave it as read (no `nft list` process
                    // for each new task's read-back).
                    if matches!(
                        op,
                        Op::CreateNetns { .. } | Op::AdoptNetns { .. } | Op::DeleteNetns { .. }
                    ) {
                        e.obs = None;
                    } else {
                        e.links_stale = true;
                    }
                }
            }
        }
    }

    /// The (file name, path) of every namespace pinned under the netns
    /// directory with a `net-` or `task-` prefix.
    pub(super) fn pins(&self) -> LResult<Vec<(String, PathBuf)>> {
        let dir = self.netns_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(LinuxError::Io {
                    op: "read netns dir",
                    path: dir,
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let ours =
                name.starts_with(names::NET_NS_PREFIX) || name.starts_with(names::TASK_NS_PREFIX);
            if ours && Netns::exists(e.path()) {
                out.push((name, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The main-table routes of the namespace `nl` is in, with device names.
pub(super) async fn routes_of(nl: &Netlink) -> LResult<Vec<HostRoute>> {
    let by_index: BTreeMap<u32, String> = nl
        .list_links(None)
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    Ok(nl
        .list_routes()
        .await?
        .into_iter()
        .map(|r| HostRoute {
            dest: r.dest,
            dev: r.oif.and_then(|i| by_index.get(&i).cloned()),
        })
        .collect())
}

/// Reads one namespace: links (only those starting with `prefix`, if
/// given), their addresses, FDB and neighbour entries of VXLAN links (for
/// network namespaces) and default routes.
async fn observe_ns(nl: &Netlink, prefix: Option<&str>, vxlan_tables: bool) -> LResult<ObservedNs> {
    let all = nl.list_links(None).await?;
    let by_index: BTreeMap<u32, String> = all.iter().map(|l| (l.index, l.name.clone())).collect();
    let mut addrs: BTreeMap<u32, BTreeSet<IpNetwork>> = BTreeMap::new();
    for (idx, a) in nl.list_all_addresses().await? {
        addrs.entry(idx).or_default().insert(a);
    }
    let mut out = ObservedNs::default();
    for l in all
        .iter()
        .filter(|l| prefix.is_none_or(|p| l.name.starts_with(p)))
    {
        out.links.insert(
            l.name.clone(),
            observed_link(l, &by_index, addrs.remove(&l.index).unwrap_or_default()),
        );
        if vxlan_tables && l.kind == LinkKind::Vxlan {
            let fdb = nl
                .list_fdb(&l.name)
                .await?
                .into_iter()
                .filter_map(|e| {
                    Some((
                        e.mac,
                        ObservedFdb {
                            remote: e.remote?,
                            permanent: e.permanent,
                        },
                    ))
                })
                .collect();
            out.fdb.insert(l.name.clone(), fdb);
            let neighs = nl
                .list_neighs(&l.name)
                .await?
                .into_iter()
                .map(|e| {
                    (
                        e.ip,
                        ObservedNeigh {
                            mac: e.mac,
                            permanent: e.permanent,
                        },
                    )
                })
                .collect();
            out.neighs.insert(l.name.clone(), neighs);
        }
    }
    if prefix.is_none() {
        for r in nl.list_routes().await? {
            if r.dest.prefix() == 0 {
                out.default_routes.insert(
                    r.dest,
                    ObservedRoute {
                        gateway: r.gateway,
                        dev: r.oif.and_then(|i| by_index.get(&i).cloned()),
                    },
                );
            }
        }
    }
    Ok(out)
}

fn observed_link(
    l: &Link,
    by_index: &BTreeMap<u32, String>,
    addrs: BTreeSet<IpNetwork>,
) -> ObservedLink {
    ObservedLink {
        index: l.index,
        kind: match &l.kind {
            LinkKind::Bridge => ObservedKind::Bridge,
            LinkKind::Veth => ObservedKind::Veth,
            LinkKind::Vxlan => ObservedKind::Vxlan,
            other => ObservedKind::Other(other.to_string()),
        },
        mtu: l.mtu,
        mac: l.mac,
        up: l.up,
        master: l.master.and_then(|m| by_index.get(&m).cloned()),
        peer_index: if l.kind == LinkKind::Veth {
            l.link
        } else {
            None
        },
        vxlan: l.vxlan.as_ref().map(|v| ObservedVxlan {
            vni: v.vni,
            port: v.port,
            local: v.local,
            learning: v.learning,
            proxy: v.proxy,
        }),
        addrs,
    }
}

/// Rule comments of the `weft` tables, `None` if neither exists.
pub(crate) fn nat_of(rs: &nftables::schema::Nftables<'_>) -> Option<BTreeSet<String>> {
    nft::table_comments(rs, NFT_TABLE, |f| {
        matches!(f, NfFamily::INet | NfFamily::Bridge)
    })
}

/// How many namespaces one pass re-reads for the slow safety-net check
/// (beyond those the watchers flagged), so that check never makes a spike.
const RECHECKS_PER_PASS: usize = 4;
/// How long what was read of a namespace is trusted without a change
/// notice: a missed notification (none is known) or a change no
/// notification covers (a learnt entry replacing one of ours) is repaired
/// within this much, plus up to a minute of jitter.
const RECHECK: Duration = Duration::from_secs(300);

fn recheck_after() -> Duration {
    RECHECK + Duration::from_millis(rand::random::<u64>() % 60_000)
}

/// What the last passes read, per namespace, with the watchers that tell
/// when to read it again ([`NsWatch`]). An idle node reads nothing but its
/// pin directory, the WireGuard device and ip_forward; a change re-reads
/// only the namespaces it touched.
#[derive(Debug, Default)]
pub(in crate::linux) struct ObsCache {
    host: Option<HostEntry>,
    /// By pin file name.
    pins: BTreeMap<String, PinEntry>,
}

/// The daemon namespace's part of [`Observed`].
#[derive(Debug, Default)]
struct HostEntry {
    watch: Option<NsWatch>,
    /// Its links of ours and its main-table routes; `None`: read again.
    links: Option<(ObservedNs, Vec<HostRoute>)>,
    recheck_at: Option<Instant>,
    /// weft's tables; `None`: read again.
    nft: Option<HostNft>,
    /// The nftables monitor's count when they were read (`None`: no
    /// monitor, read on every pass).
    nft_generation: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct HostNft {
    nat: Option<BTreeSet<String>>,
    guard: Option<crate::plan::ObservedGuard>,
    ports: Option<BTreeSet<String>>,
    user_chain: bool,
}

/// One pinned namespace.
#[derive(Debug, Default)]
struct PinEntry {
    /// The namespace's inode: a pin replaced by another namespace is a new entry.
    inode: u64,
    watch: Option<NsWatch>,
    /// `None`: read again.
    obs: Option<ObservedNs>,
    recheck_at: Option<Instant>,
    /// A VIP table write for it is under way (read again unless it succeeds).
    lb_pending: bool,
    /// An op changed its links, addresses or routes: read them again.
    links_stale: bool,
    /// The VIP table this process last wrote there, whole.
    lb_written: Option<BTreeMap<std::net::IpAddr, Vec<std::net::IpAddr>>>,
}

impl LinuxDataplane {
    /// Records the VIP tables `applied` wrote, each one whole in one
    /// transaction, as what their namespaces now hold, and reads the
    /// nftables notifications of those writes off their watchers, so the
    /// next pass reads neither (a scale of a service with 250 tasks on the
    /// node would otherwise cost 250 `nft list` processes). VIP tables a
    /// pass tried and failed to write are read again.
    pub(super) async fn note_written(&self, applied: &[Op]) {
        let mut cache = self.cache.lock().await;
        let mut scratch = vec![0u8; 64 * 1024];
        for op in applied {
            let (lb, written) = match op {
                Op::ApplyLb { vips, .. } => {
                    (Some(crate::plan::lb_comments(vips)), Some(vips.clone()))
                }
                Op::DeleteLb { .. } => (None, None),
                _ => continue,
            };
            let Some(e) = cache.pins.get_mut(&names::task_ns(lb_task(op))) else {
                continue;
            };
            e.lb_pending = false;
            e.lb_written = written;
            if let (Some(obs), Some(w)) = (e.obs.as_mut(), e.watch.as_ref()) {
                w.drain_nft(&mut scratch);
                obs.lb = lb;
            } else {
                e.obs = None;
            }
        }
        for e in cache.pins.values_mut() {
            if std::mem::take(&mut e.lb_pending) {
                e.obs = None;
            }
        }
    }
}

impl LinuxDataplane {
    /// The VIP table `task`'s namespace holds, with its backends, when it
    /// is the one this process last wrote there (the pass's observation of
    /// its rules says so); `None` when unknown.
    pub(super) async fn lb_before(
        &self,
        task: &TaskId,
    ) -> Option<BTreeMap<std::net::IpAddr, Vec<std::net::IpAddr>>> {
        let cache = self.cache.lock().await;
        let e = cache.pins.get(&names::task_ns(task))?;
        let written = e.lb_written.as_ref()?;
        let seen = e.obs.as_ref()?.lb.as_ref()?;
        (seen == &crate::plan::lb_comments(written)).then(|| written.clone())
    }
}

fn lb_task(op: &Op) -> &TaskId {
    match op {
        Op::ApplyLb { task, .. } | Op::DeleteLb { task, .. } => task,
        _ => unreachable!("only VIP table ops name a task's table"),
    }
}

/// Whether `op` writes one of weft's nftables tables in the daemon's
/// namespace.
fn writes_host_tables(op: &Op) -> bool {
    matches!(
        op,
        Op::ApplyNat { .. }
            | Op::DeleteNat
            | Op::ApplyGuard { .. }
            | Op::DeleteGuard
            | Op::ApplyPorts { .. }
            | Op::DeletePorts
            | Op::EnsureUserChain
    )
}

/// The namespaces whose objects `op` makes, changes or removes.
fn op_namespaces(op: &Op) -> Vec<NsRef> {
    let net = |n: &NetworkId| NsRef::Network(n.clone());
    let task = |t: &TaskId| NsRef::Task(t.clone());
    match op {
        Op::CreateNetns { ns }
        | Op::AdoptNetns { ns, .. }
        | Op::DeleteNetns { ns }
        | Op::CreateBridge { ns, .. }
        | Op::DeleteLink { ns, .. }
        | Op::SetMtu { ns, .. }
        | Op::SetMac { ns, .. }
        | Op::SetMaster { ns, .. }
        | Op::SetUp { ns, .. }
        | Op::AddAddress { ns, .. }
        | Op::DeleteAddress { ns, .. }
        | Op::ReplaceDefaultRoute { ns, .. }
        | Op::DeleteRoute { ns, .. } => vec![ns.clone()],
        Op::CreateVeth { ns, peer_ns, .. } => vec![ns.clone(), peer_ns.clone()],
        // Made in the daemon's namespace, then moved.
        Op::CreateVxlan { network, .. } => vec![NsRef::Host, net(network)],
        Op::ReplaceFdb { network, .. }
        | Op::DeleteFdb { network, .. }
        | Op::ReplaceNeigh { network, .. }
        | Op::DeleteNeigh { network, .. } => vec![net(network)],
        Op::ApplyLb { task: t, .. } | Op::DeleteLb { task: t, .. } => vec![task(t)],
        Op::EnableIpv4Forwarding
        | Op::EnableIpv6Forwarding
        | Op::RefuseRa { .. }
        | Op::ApplyNat { .. }
        | Op::DeleteNat
        | Op::CreateWg { .. }
        | Op::DeleteWg
        | Op::ApplyGuard { .. }
        | Op::DeleteGuard
        | Op::ApplyPorts { .. }
        | Op::DeletePorts
        | Op::EnsureUserChain => vec![NsRef::Host],
        // Read live on every pass.
        Op::StartDns { .. }
        | Op::SetWgKey { .. }
        | Op::RemoveWgPeer { .. }
        | Op::AddWgPeer { .. } => Vec::new(),
    }
}

/// `net.ipv6.conf.<dev>.<key>` of the calling thread's namespace, trimmed;
/// `None` when it cannot be read (IPv6 is off, or no such device).
pub(super) fn sysctl6(dev: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{dev}/{key}"))
        .ok()
        .map(|s| s.trim().to_owned())
}
