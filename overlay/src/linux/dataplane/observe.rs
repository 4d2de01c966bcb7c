//! Reading the kernel into an [`Observed`]: every pinned namespace, the
//! daemon namespace's links of ours, its routes and nftables tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ipnetwork::IpNetwork;

use super::{HOST_TABLES, IP_FORWARD, LResult, LinuxDataplane};
use crate::linux::error::Error as LinuxError;
use crate::linux::guard::guard_of;
use crate::linux::lb::lb_of;
use crate::linux::netlink::{Link, LinkKind, Netlink};
use crate::linux::netns::Netns;
use crate::linux::nft;
use crate::linux::ports::{ports_of, user_chain_of};
use crate::model::names::{self, NFT_TABLE};
use crate::model::{NetworkId, TaskId};
use crate::plan::{
    HostRoute, Observed, ObservedFdb, ObservedKind, ObservedLink, ObservedNeigh, ObservedNs,
    ObservedRoute, ObservedVxlan, ObservedWg, ObservedWgPeer,
};
use nftables::types::NfFamily;

impl LinuxDataplane {
    /// Reads what exists in the kernel. Must run inside a tokio runtime.
    pub async fn observe(&self) -> LResult<Observed> {
        let host_nl = Netlink::open(&self.host)?;
        let mut host = observe_ns(&host_nl, Some(names::WEFT_PREFIX), false).await?;
        host.default_routes.clear();
        let host_routes = routes_of(&host_nl).await?;
        let ipv4_forwarding = self
            .host
            .run_in(|| std::fs::read_to_string(IP_FORWARD))?
            .map(|s| s.trim() == "1")
            .map_err(|source| LinuxError::Io {
                op: "read ip_forward",
                path: IP_FORWARD.into(),
                source,
            })?;
        let (nat, guard, ports, user_chain) =
            match nft::list_tables_async(&self.host, HOST_TABLES).await {
                Ok(rs) => (
                    nat_of(&rs),
                    guard_of(&rs),
                    ports_of(&rs),
                    user_chain_of(&rs),
                ),
                // Without nft there are no tables to see; a desired gateway
                // then fails at ApplyNat with the install hint.
                Err(LinuxError::NftMissing) => (None, None, None, false),
                Err(e) => return Err(e),
            };
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
            host,
            host_routes,
            ipv4_forwarding,
            nat,
            networks: BTreeMap::new(),
            tasks: BTreeMap::new(),
            dns: BTreeSet::new(),
            wg,
            wg_key: None,
            guard,
            ports,
            user_chain,
        };
        let mut task_inodes = BTreeMap::new();
        for (name, path) in self.pins()? {
            let ns = Netns::open(&path)?;
            let nl = Netlink::open(&ns)?;
            if let Some(id) = name.strip_prefix(names::NET_NS_PREFIX) {
                obs.networks
                    .insert(NetworkId::from(id), observe_ns(&nl, None, true).await?);
            } else if let Some(id) = name.strip_prefix(names::TASK_NS_PREFIX) {
                let mut o = observe_ns(&nl, None, false).await?;
                o.lb = match nft::list_ruleset_async(&ns).await {
                    Ok(rs) => lb_of(&rs),
                    Err(LinuxError::NftMissing) => None,
                    Err(e) => return Err(e),
                };
                let id = TaskId::from(id);
                task_inodes.insert(id.clone(), ns.inode());
                obs.tasks.insert(id, o);
            }
        }
        // Listeners serving a namespace that is no longer pinned (or that
        // died) are dropped here, so they neither count as serving nor keep
        // an old namespace alive.
        obs.dns = self.dns.reap(&task_inodes);
        Ok(obs)
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
pub(super) fn nat_of(rs: &nftables::schema::Nftables<'_>) -> Option<BTreeSet<String>> {
    nft::table_comments(rs, NFT_TABLE, |f| {
        matches!(f, NfFamily::INet | NfFamily::Bridge)
    })
}
