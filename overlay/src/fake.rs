//! The in-memory data plane: [`FakeDataplane`] runs the real planner against
//! a simulated kernel ([`simulate`] applies one [`Op`] to an [`Observed`])
//! and records every desired state and plan, so the worker's reconcile loop
//! is testable without root. The simulator also lets the planner's tests
//! check convergence (apply the plan, plan again: nothing left).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::dataplane::{ApplyReport, Dataplane, Error, Result, TeardownReport};
use crate::model::names;
use crate::model::{DesiredNode, TaskId};
use ipnetwork::IpNetwork;

use crate::plan::{
    HostRoute, NsRef, Observed, ObservedFdb, ObservedGuard, ObservedKind, ObservedLink,
    ObservedNeigh, ObservedNs, ObservedRoute, ObservedVxlan, ObservedWg, ObservedWgPeer, Op,
    guard_comments, lb_comments, nat_comments, plan,
};

/// Applies `op` to the simulated kernel `k`, as the Linux executor would.
/// Unknown namespaces or links make the op a no-op (the real one would
/// fail); the planner never emits such ops for a consistent `k`.
pub fn simulate(k: &mut Observed, op: &Op) {
    match op {
        Op::CreateNetns { .. }
        | Op::AdoptNetns { .. }
        | Op::DeleteNetns { .. }
        | Op::CreateBridge { .. }
        | Op::CreateVxlan { .. }
        | Op::CreateVeth { .. }
        | Op::DeleteLink { .. }
        | Op::SetMtu { .. }
        | Op::SetMac { .. }
        | Op::SetMaster { .. }
        | Op::SetUp { .. } => simulate_links(k, op),
        Op::AddAddress { .. }
        | Op::DeleteAddress { .. }
        | Op::ReplaceDefaultRoute { .. }
        | Op::DeleteRoute { .. }
        | Op::ReplaceFdb { .. }
        | Op::DeleteFdb { .. }
        | Op::ReplaceNeigh { .. }
        | Op::DeleteNeigh { .. } => simulate_addressing(k, op),
        Op::EnableIpv4Forwarding
        | Op::EnableIpv6Forwarding
        | Op::RefuseRa { .. }
        | Op::ApplyNat { .. }
        | Op::ApplyLb { .. }
        | Op::DeleteLb { .. }
        | Op::StartDns { .. }
        | Op::DeleteNat
        | Op::CreateWg { .. }
        | Op::DeleteWg
        | Op::SetWgKey { .. }
        | Op::RemoveWgPeer { .. }
        | Op::AddWgPeer { .. }
        | Op::ApplyGuard { .. }
        | Op::DeleteGuard
        | Op::ApplyPorts { .. }
        | Op::DeletePorts
        | Op::EnsureUserChain => simulate_tables_and_wg(k, op),
    }
}

/// Namespaces and links: made, deleted, changed.
fn simulate_links(k: &mut Observed, op: &Op) {
    match op {
        Op::CreateNetns { ns } | Op::AdoptNetns { ns, .. } => {
            let mut fresh = ObservedNs::default();
            // The kernel's loopback: no kind, an all-zero MAC; its
            // addresses come when it goes up.
            let mut lo = new_link(
                k,
                ObservedKind::Other("device without kind".into()),
                Some(65536),
            );
            lo.mac = Some(crate::mac::MacAddr([0; 6]));
            fresh.links.insert(names::LOOPBACK.to_owned(), lo);
            match ns {
                NsRef::Host => {}
                NsRef::Network(n) => {
                    k.networks.entry(n.clone()).or_insert(fresh);
                }
                NsRef::Task(t) => {
                    k.tasks.entry(t.clone()).or_insert(fresh);
                }
            }
        }
        Op::DeleteNetns { ns } => {
            let gone = match ns {
                NsRef::Host => None,
                NsRef::Network(n) => k.networks.remove(n),
                NsRef::Task(t) => {
                    // Its resolver stops with it.
                    k.dns.remove(t);
                    k.tasks.remove(t)
                }
            };
            // The kernel destroys the namespace's veths and with them their
            // peers elsewhere.
            for (name, l) in gone.into_iter().flat_map(|o| o.links.into_iter()) {
                if l.kind == ObservedKind::Veth {
                    remove_peer(k, ns, &name, &l);
                }
            }
        }
        Op::CreateBridge { ns, name, mtu } => {
            let l = new_link(k, ObservedKind::Bridge, Some(*mtu));
            if let Some(o) = k.ns_mut(ns) {
                o.links.entry(name.clone()).or_insert(l);
            }
        }
        Op::CreateVxlan {
            network,
            name,
            vni,
            port,
            local,
            mtu,
        } => {
            let mut l = new_link(k, ObservedKind::Vxlan, Some(*mtu));
            l.vxlan = Some(ObservedVxlan {
                vni: Some(*vni),
                port: Some(*port),
                local: Some(*local),
                learning: Some(false),
                proxy: Some(true),
            });
            if let Some(o) = k.networks.get_mut(network) {
                o.links.entry(name.clone()).or_insert(l);
            }
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
            if k.ns(ns).is_none() || k.ns(peer_ns).is_none() {
                return;
            }
            let mut a = new_link(k, ObservedKind::Veth, Some(*mtu));
            let mut b = new_link(k, ObservedKind::Veth, Some(*mtu));
            a.mac = mac.or(a.mac);
            b.mac = peer_mac.or(b.mac);
            a.peer_index = Some(b.index);
            b.peer_index = Some(a.index);
            k.ns_mut(ns).unwrap().links.insert(name.clone(), a);
            k.ns_mut(peer_ns)
                .unwrap()
                .links
                .insert(peer_name.clone(), b);
        }
        Op::DeleteLink { ns, name } => {
            let Some(l) = k.ns_mut(ns).and_then(|o| o.links.remove(name)) else {
                return;
            };
            if *ns == NsRef::Host {
                k.ra_refused.remove(name);
                k.host_routes
                    .retain(|r| r.dev.as_deref() != Some(name.as_str()));
            }
            if let Some(o) = k.ns_mut(ns) {
                o.fdb.remove(name);
                o.neighs.remove(name);
                o.default_routes.retain(|_, r| r.dev.as_ref() != Some(name));
                for other in o.links.values_mut() {
                    if other.master.as_ref() == Some(name) {
                        other.master = None;
                    }
                }
            }
            if l.kind == ObservedKind::Veth {
                remove_peer(k, ns, name, &l);
            }
        }
        Op::SetMtu { ns, link, mtu } => with_link(k, ns, link, |l| l.mtu = Some(*mtu)),
        Op::SetMac { ns, link, mac } => with_link(k, ns, link, |l| l.mac = Some(*mac)),
        Op::SetMaster { ns, link, master } => {
            with_link(k, ns, link, |l| l.master = Some(master.clone()))
        }
        Op::SetUp { ns, link } => with_link(k, ns, link, |l| {
            l.up = true;
            if link == names::LOOPBACK {
                l.addrs.extend(
                    LOOPBACK_ADDRS
                        .iter()
                        .map(|a| a.parse::<IpNetwork>().expect("loopback address")),
                );
            }
        }),
        _ => unreachable!("simulate routes only link ops here"),
    }
}

/// Addresses, routes, FDB and neighbour entries.
fn simulate_addressing(k: &mut Observed, op: &Op) {
    match op {
        Op::AddAddress { ns, link, addr } => {
            with_link(k, ns, link, |l| {
                l.addrs.insert(*addr);
            });
            // The kernel adds the prefix route of an address (a host
            // route's prefix has none).
            if *ns == NsRef::Host && addr.prefix() < max_prefix(addr) {
                let r = prefix_route(addr, link);
                if !k.host_routes.contains(&r) {
                    k.host_routes.push(r);
                }
            }
        }
        Op::DeleteAddress { ns, link, addr } => {
            with_link(k, ns, link, |l| {
                l.addrs.remove(addr);
            });
            if *ns == NsRef::Host {
                let r = prefix_route(addr, link);
                k.host_routes.retain(|h| *h != r);
            }
        }
        Op::ReplaceDefaultRoute { ns, gateway, dev } => {
            let dest = ipnetwork::IpNetwork::new(
                if gateway.is_ipv4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                },
                0,
            )
            .expect("prefix 0");
            if let Some(o) = k.ns_mut(ns)
                && o.links.contains_key(dev)
            {
                o.default_routes.insert(
                    dest,
                    ObservedRoute {
                        gateway: Some(*gateway),
                        dev: Some(dev.clone()),
                    },
                );
            }
        }
        Op::DeleteRoute { ns, dest } => {
            if let Some(o) = k.ns_mut(ns) {
                o.default_routes.remove(dest);
            }
        }
        Op::ReplaceFdb {
            network,
            link,
            mac,
            vtep,
        } => {
            if let Some(o) = k.networks.get_mut(network)
                && o.links.contains_key(link)
            {
                o.fdb.entry(link.clone()).or_default().insert(
                    *mac,
                    ObservedFdb {
                        remote: *vtep,
                        permanent: true,
                    },
                );
            }
        }
        Op::DeleteFdb { network, link, mac } => {
            if let Some(m) = k
                .networks
                .get_mut(network)
                .and_then(|o| o.fdb.get_mut(link))
            {
                m.remove(mac);
            }
        }
        Op::ReplaceNeigh {
            network,
            link,
            ip,
            mac,
        } => {
            if let Some(o) = k.networks.get_mut(network)
                && o.links.contains_key(link)
            {
                o.neighs.entry(link.clone()).or_default().insert(
                    *ip,
                    ObservedNeigh {
                        mac: Some(*mac),
                        permanent: true,
                    },
                );
            }
        }
        Op::DeleteNeigh { network, link, ip } => {
            if let Some(m) = k
                .networks
                .get_mut(network)
                .and_then(|o| o.neighs.get_mut(link))
            {
                m.remove(ip);
            }
        }
        _ => unreachable!("simulate routes only addressing ops here"),
    }
}

/// nftables tables, forwarding, the resolver and the WireGuard device.
fn simulate_tables_and_wg(k: &mut Observed, op: &Op) {
    match op {
        Op::EnableIpv4Forwarding => k.ipv4_forwarding = true,
        Op::ApplyNat {
            subnet,
            subnet6,
            bridge,
        } => k.nat = Some(nat_comments(*subnet, *subnet6, bridge)),
        Op::EnableIpv6Forwarding => k.ipv6_forwarding = true,
        Op::RefuseRa { link } => {
            k.ra_refused.insert(link.clone());
        }
        Op::ApplyLb { task, vips, .. } => {
            if let Some(o) = k.tasks.get_mut(task) {
                o.lb = Some(lb_comments(vips));
            }
        }
        Op::DeleteLb { task, .. } => {
            if let Some(o) = k.tasks.get_mut(task) {
                o.lb = None;
            }
        }
        Op::StartDns { task, .. } => {
            if k.tasks.contains_key(task) {
                k.dns.insert(task.clone());
            }
        }
        Op::DeleteNat => k.nat = None,
        Op::CreateWg {
            listen_port, mtu, ..
        } => {
            let l = new_link(k, ObservedKind::Other("tun".into()), Some(*mtu));
            k.host.links.insert(names::WG_DEVICE.to_owned(), l);
            k.wg = Some(ObservedWg {
                public_key: k.wg_key.clone(),
                listen_port: *listen_port,
                peers: Default::default(),
            });
        }
        Op::DeleteWg => {
            k.host.links.remove(names::WG_DEVICE);
            k.host_routes
                .retain(|r| r.dev.as_deref() != Some(names::WG_DEVICE));
            k.wg = None;
        }
        Op::SetWgKey { .. } => {
            let key = k.wg_key.clone();
            if let Some(w) = &mut k.wg {
                w.public_key = key;
            }
        }
        Op::RemoveWgPeer { public_key } => {
            if let Some(w) = &mut k.wg {
                w.peers.remove(public_key);
            }
        }
        Op::AddWgPeer {
            public_key,
            endpoint,
            allowed_ips,
            keepalive,
        } => {
            if let Some(w) = &mut k.wg {
                w.peers.insert(
                    public_key.clone(),
                    ObservedWgPeer {
                        endpoint: Some(*endpoint),
                        allowed_ips: allowed_ips.iter().copied().collect(),
                        keepalive: *keepalive,
                    },
                );
            }
        }
        Op::ApplyGuard { port, members, .. } => {
            k.guard = Some(ObservedGuard {
                comments: guard_comments(*port),
                members: members.clone(),
            })
        }
        Op::DeleteGuard => k.guard = None,
        Op::ApplyPorts { table } => k.ports = Some(table.comments()),
        Op::DeletePorts => k.ports = None,
        Op::EnsureUserChain => k.user_chain = true,
        _ => unreachable!("simulate routes only table and WireGuard ops here"),
    }
}

/// What the kernel gives a loopback device that goes up.
const LOOPBACK_ADDRS: [&str; 2] = ["127.0.0.1/8", "::1/128"];

fn max_prefix(a: &IpNetwork) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

/// The route the kernel adds for address `a` on `dev`.
fn prefix_route(a: &IpNetwork, dev: &str) -> HostRoute {
    HostRoute {
        dest: IpNetwork::new(a.network(), a.prefix()).expect("a prefix of an address"),
        dev: Some(dev.to_owned()),
    }
}

fn next_index(k: &Observed) -> u32 {
    // Unique across namespaces (the kernel's are per namespace), which
    // keeps peer lookups in the simulation unambiguous.
    let all = std::iter::once(&k.host)
        .chain(k.networks.values())
        .chain(k.tasks.values());
    all.flat_map(|o| o.links.values().map(|l| l.index))
        .max()
        .unwrap_or(0)
        + 1
}

fn new_link(k: &Observed, kind: ObservedKind, mtu: Option<u32>) -> ObservedLink {
    let index = next_index(k);
    let b = index.to_be_bytes();
    ObservedLink {
        index,
        kind,
        mtu,
        mac: Some(crate::mac::MacAddr([0x06, 0xfa, b[0], b[1], b[2], b[3]])),
        up: false,
        master: None,
        peer_index: None,
        vxlan: None,
        addrs: BTreeSet::new(),
    }
}

fn with_link(k: &mut Observed, ns: &NsRef, name: &str, f: impl FnOnce(&mut ObservedLink)) {
    if let Some(l) = k.ns_mut(ns).and_then(|o| o.links.get_mut(name)) {
        f(l);
    }
}

/// Removes the other end of veth `name` (`l`), which was in `ns`, as the
/// kernel does. Interface indexes are per namespace, so in a kernel's
/// snapshot two veths can share an index and a peer index: the peer is
/// looked for where weft puts the other end of such a veth (a task's
/// `eth*`/`gw0` ends in its network namespaces' [`names::port`] and the
/// host's [`names::gw_port`], and back), and only anywhere for veths of
/// other names.
fn remove_peer(k: &mut Observed, ns: &NsRef, name: &str, l: &ObservedLink) {
    let Some(peer) = l.peer_index else { return };
    let is_peer = |o: &ObservedLink| {
        o.kind == ObservedKind::Veth && o.index == peer && o.peer_index == Some(l.index)
    };
    let owner = |name: &str| {
        k.tasks
            .keys()
            .find(|t| names::port(t) == name || names::gw_port(t) == name)
            .cloned()
    };
    let target: Option<(Vec<NsRef>, Option<String>)> = match ns {
        NsRef::Task(t) if name == names::TASK_GW_IF => {
            Some((vec![NsRef::Host], Some(names::gw_port(t))))
        }
        NsRef::Task(t) => Some((
            k.networks.keys().cloned().map(NsRef::Network).collect(),
            Some(names::port(t)),
        )),
        NsRef::Network(_) | NsRef::Host => owner(name).map(|t| (vec![NsRef::Task(t)], None)),
    };
    match target {
        Some((spaces, peer_name)) => {
            for space in spaces {
                if let Some(o) = k.ns_mut(&space) {
                    o.links
                        .retain(|n, o| !(is_peer(o) && peer_name.as_ref().is_none_or(|p| p == n)));
                }
            }
        }
        None => {
            let all = std::iter::once(&mut k.host)
                .chain(k.networks.values_mut())
                .chain(k.tasks.values_mut());
            for o in all {
                o.links.retain(|_, o| !is_peer(o));
            }
        }
    }
}

/// Everything the fake has seen.
#[derive(Debug, Default)]
pub struct FakeState {
    /// The simulated kernel.
    pub kernel: Observed,
    /// Every desired state passed to `apply`, in order (also failed ones).
    pub applied: Vec<DesiredNode>,
    /// The ops of each successful `apply`.
    pub plans: Vec<Vec<Op>>,
    /// The tasks whose namespace `prepare_task` made, in order.
    pub prepared: Vec<TaskId>,
    /// Number of `teardown_all` calls.
    pub teardowns: usize,
    /// `apply` calls (0-based) that fail with [`Error::Injected`].
    pub fail_calls: BTreeSet<usize>,
    /// `apply` calls whose desired state holds one of these tasks fail
    /// with [`Error::Injected`] too.
    pub fail_tasks: BTreeSet<TaskId>,
}

/// An in-memory [`Dataplane`] that plans for real against a simulated
/// kernel and records what it was asked.
#[derive(Debug)]
pub struct FakeDataplane {
    exec_root: PathBuf,
    state: Mutex<FakeState>,
    nft_changes: tokio::sync::watch::Sender<u64>,
}

impl Default for FakeDataplane {
    fn default() -> Self {
        FakeDataplane::new("/run/weft")
    }
}

impl FakeDataplane {
    /// A fake whose task namespaces would live under `exec_root/netns`.
    pub fn new(exec_root: impl Into<PathBuf>) -> FakeDataplane {
        FakeDataplane {
            exec_root: exec_root.into(),
            state: Mutex::new(FakeState::default()),
            nft_changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Signals an nftables change to [`Dataplane::nft_changes`] receivers,
    /// as the Linux watcher does when someone edits the ruleset (pair it
    /// with an edit of the simulated kernel, e.g. `kernel.ports = None`).
    pub fn notify_nft_change(&self) {
        self.nft_changes.send_modify(|n| *n += 1);
    }

    /// Runs `f` on the recorded state (e.g. to inspect it, inject failures
    /// with `fail_calls`, or simulate drift by editing `kernel`).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The last desired state passed to `apply`.
    pub fn last_applied(&self) -> Option<DesiredNode> {
        self.with_state(|s| s.applied.last().cloned())
    }

    /// The simulated kernel.
    pub fn kernel(&self) -> Observed {
        self.with_state(|s| s.kernel.clone())
    }
}

#[async_trait]
impl Dataplane for FakeDataplane {
    async fn apply(&self, desired: &DesiredNode) -> Result<ApplyReport> {
        self.with_state(|s| {
            let call = s.applied.len();
            s.applied.push(desired.clone());
            if s.fail_calls.contains(&call)
                || desired.tasks.keys().any(|t| s.fail_tasks.contains(t))
            {
                return Err(Error::Injected { call });
            }
            // As the Linux executor does: the key file is part of what is
            // observed.
            s.kernel.wg_key = desired.wireguard.as_ref().and_then(|w| {
                crate::wg::keys::load_private_key(&w.private_key_path)
                    .ok()
                    .map(|k| k.public_key())
            });
            let ops = plan(&s.kernel, desired)?;
            for op in &ops {
                simulate(&mut s.kernel, op);
            }
            s.plans.push(ops.clone());
            Ok(ApplyReport { ops })
        })
    }

    fn task_netns(&self, task: &TaskId) -> PathBuf {
        self.exec_root.join("netns").join(names::task_ns(task))
    }

    /// As the Linux data plane does: the op `apply` would run first.
    async fn prepare_task(&self, task: &TaskId) -> Result<bool> {
        self.with_state(|s| {
            let op = Op::CreateNetns {
                ns: NsRef::Task(task.clone()),
            };
            simulate(&mut s.kernel, &op);
            s.prepared.push(task.clone());
        });
        Ok(true)
    }

    fn nft_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.nft_changes.subscribe())
    }

    async fn teardown_all(&self) -> Result<TeardownReport> {
        self.with_state(|s| {
            s.teardowns += 1;
            let mut removed: Vec<String> = s
                .kernel
                .networks
                .keys()
                .map(|n| format!("netns {}", names::network_ns(n)))
                .chain(
                    s.kernel
                        .tasks
                        .keys()
                        .map(|t| format!("netns {}", names::task_ns(t))),
                )
                .collect();
            removed.extend(s.kernel.host.links.keys().map(|l| format!("link {l}")));
            let forwarding = s.kernel.ipv4_forwarding;
            let forwarding6 = s.kernel.ipv6_forwarding;
            // The operator's chain is never ours to remove.
            let user_chain = s.kernel.user_chain;
            s.kernel = Observed {
                ipv4_forwarding: forwarding,
                ipv6_forwarding: forwarding6,
                user_chain,
                host_routes: std::mem::take(&mut s.kernel.host_routes),
                ..Observed::default()
            };
            Ok(TeardownReport {
                removed,
                ..TeardownReport::default()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GatewayBridge, LocalEndpoint, OverlayNet, TaskNet};

    fn desired() -> DesiredNode {
        let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
        d.gateway = Some(GatewayBridge::default());
        d.networks.insert(
            "n1".into(),
            OverlayNet {
                subnet6: None,
                local: false,
                vni: 7,
                subnet: "10.0.9.0/24".parse().unwrap(),
                gateway: "10.0.9.1".parse().unwrap(),
                mtu: 1450,
                internal: false,
                remote: Default::default(),
                name: String::new(),
                services: Default::default(),
                names: Default::default(),
            },
        );
        d.tasks.insert(
            "t1".into(),
            TaskNet {
                netns: None,
                handover: false,
                resolver: None,
                endpoints: vec![LocalEndpoint {
                    ip6: None,
                    network: "n1".into(),
                    ifname: "eth0".into(),
                    ip: "10.0.9.2/24".parse().unwrap(),
                    mac: "02:42:0a:00:09:02".parse().unwrap(),
                }],
                gateway: None,
            },
        );
        d
    }

    #[tokio::test]
    async fn records_plans_converges_and_fails_on_demand() {
        let fake = FakeDataplane::new("/x");
        let d = desired();
        assert!(!fake.apply(&d).await.unwrap().ops.is_empty());
        assert!(fake.apply(&d).await.unwrap().ops.is_empty());
        assert_eq!(fake.last_applied(), Some(d.clone()));
        assert!(fake.kernel().tasks.contains_key(&TaskId::from("t1")));
        assert_eq!(
            fake.task_netns(&"t1".into()),
            PathBuf::from("/x/netns/task-t1")
        );

        fake.with_state(|s| s.fail_calls.insert(2));
        assert!(matches!(
            fake.apply(&d).await,
            Err(Error::Injected { call: 2 })
        ));
        // Drift in the simulated kernel is repaired by the next apply.
        fake.with_state(|s| {
            simulate(
                &mut s.kernel,
                &Op::DeleteLink {
                    ns: NsRef::Network("n1".into()),
                    name: "weft-vx7".into(),
                },
            )
        });
        let ops = fake.apply(&d).await.unwrap().ops;
        assert!(matches!(ops[0], Op::CreateVxlan { .. }), "{ops:?}");

        let report = fake.teardown_all().await.unwrap();
        assert!(report.is_clean());
        assert!(report.removed.iter().any(|r| r == "netns net-n1"));
        assert!(fake.kernel().networks.is_empty());
        assert_eq!(fake.with_state(|s| (s.teardowns, s.plans.len())), (1, 3));
    }
}
