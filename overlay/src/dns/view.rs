//! Which names each local task can resolve, computed purely from the
//! desired state: a task sees the services and task names of the networks
//! it is attached to, and nothing else.
//!
//! Name forms, per network (case-insensitive, trailing dot optional):
//!
//! ```text
//!  SERVICE            -> its VIP (and IPv6 VIP), or the backends in dnsrr mode
//!  tasks.SERVICE      -> the backends
//!  TASKNAME           -> the task's address (both on a dual-stack network)
//!  <any of those>.NET -> the same, looked up only on network NET
//! ```
//!
//! A name resolves to the addresses of both families; the message layer
//! answers `A` with the IPv4 ones and `AAAA` with the IPv6 ones, so a name
//! with only one family gets NOERROR without data for the other.
//!
//! Networks are searched in the task's endpoint order and the first one
//! that knows a name answers it (as Docker does), so a service on two
//! networks resolves to one VIP, not to a mix.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::model::{DesiredNode, OverlayNet, TaskId};

/// What the resolver knows on one node: one view per local task, plus the
/// upstream resolvers for everything else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsView {
    /// Per local task, the names it can resolve.
    pub tasks: BTreeMap<TaskId, Arc<TaskView>>,
    /// Where names that are not ours are forwarded.
    pub upstreams: Vec<SocketAddr>,
}

/// The names one task can resolve: its networks' records, in the task's
/// endpoint order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskView {
    networks: Vec<Arc<NetRecords>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NetRecords {
    /// Lower-case network name ("" when the network has none).
    name: String,
    /// Lower-case service name -> (its VIPs: none in dnsrr mode, the IPv4
    /// and IPv6 ones on a dual-stack network; backends of both families).
    services: BTreeMap<String, (Vec<IpAddr>, Vec<IpAddr>)>,
    /// Lower-case task name or alias -> addresses.
    names: BTreeMap<String, Vec<IpAddr>>,
}

/// The answer to a name lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The name is ours; these are its addresses (possibly none, e.g. a
    /// dnsrr service without running tasks: NOERROR with no data).
    Addrs(Vec<IpAddr>),
    /// Not a name of this task's networks: forward it.
    NotOurs,
}

impl DnsView {
    /// The view of `desired`: every local task's names and the upstreams.
    pub fn of(desired: &DesiredNode) -> DnsView {
        // Each network's records are made once and shared by its tasks (250
        // tasks on one network made them 250 times, every pass).
        let mut records: BTreeMap<&crate::model::NetworkId, Arc<NetRecords>> = BTreeMap::new();
        let tasks = desired
            .tasks
            .iter()
            .map(|(id, t)| {
                let networks = t
                    .endpoints
                    .iter()
                    .filter_map(|ep| {
                        let net = desired.networks.get(&ep.network)?;
                        Some(
                            records
                                .entry(&ep.network)
                                .or_insert_with(|| Arc::new(NetRecords::of(net)))
                                .clone(),
                        )
                    })
                    .collect();
                (id.clone(), Arc::new(TaskView { networks }))
            })
            .collect();
        DnsView {
            tasks,
            upstreams: desired.dns_upstreams.clone(),
        }
    }

    /// The view of task `task`, if it is a local task.
    pub fn task(&self, task: &TaskId) -> Option<Arc<TaskView>> {
        self.tasks.get(task).cloned()
    }
}

impl NetRecords {
    fn of(net: &OverlayNet) -> NetRecords {
        NetRecords {
            name: net.name.to_ascii_lowercase(),
            services: net
                .services
                .iter()
                .map(|(n, s)| {
                    let vips = s.vip.into_iter().chain(s.vip6).collect();
                    (n.to_ascii_lowercase(), (vips, s.backends.clone()))
                })
                .collect(),
            names: net.names.iter().fold(BTreeMap::new(), |mut m, (n, ips)| {
                // Names differing only in case answer together.
                m.entry(n.to_ascii_lowercase())
                    .or_insert_with(Vec::new)
                    .extend(ips);
                m
            }),
        }
    }

    /// `name` (lower case, no suffix) on this network.
    fn resolve(&self, name: &str) -> Option<Vec<IpAddr>> {
        if let Some((vips, backends)) = self.services.get(name) {
            return Some(if vips.is_empty() {
                backends.clone()
            } else {
                vips.clone()
            });
        }
        if let Some(svc) = name.strip_prefix("tasks.")
            && let Some((_, backends)) = self.services.get(svc)
        {
            return Some(backends.clone());
        }
        self.names.get(name).cloned()
    }
}

impl TaskView {
    /// Resolves `qname` (any case, with or without the trailing dot).
    pub fn lookup(&self, qname: &str) -> Lookup {
        let q = qname
            .strip_suffix('.')
            .unwrap_or(qname)
            .to_ascii_lowercase();
        if q.is_empty() {
            return Lookup::NotOurs;
        }
        // The plain name on any network first: task names may contain dots.
        if let Some(a) = self.networks.iter().find_map(|n| n.resolve(&q)) {
            return Lookup::Addrs(a);
        }
        for n in self.networks.iter().filter(|n| !n.name.is_empty()) {
            if let Some(base) = q
                .strip_suffix(n.name.as_str())
                .and_then(|b| b.strip_suffix('.'))
                && let Some(a) = n.resolve(base)
            {
                return Lookup::Addrs(a);
            }
        }
        Lookup::NotOurs
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{LocalEndpoint, ServiceEntry, TaskNet};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(name: &str, third: u8) -> OverlayNet {
        OverlayNet {
            subnet6: None,
            local: false,
            vni: 100 + u32::from(third),
            subnet: format!("10.0.{third}.0/24").parse().unwrap(),
            gateway: ip(&format!("10.0.{third}.1")),
            mtu: 1450,
            internal: false,
            remote: BTreeMap::new(),
            name: name.into(),
            services: BTreeMap::new(),
            names: BTreeMap::new(),
        }
    }

    fn attach(nets: &[&str]) -> TaskNet {
        TaskNet {
            netns: None,
            handover: false,
            resolver: None,
            endpoints: nets
                .iter()
                .enumerate()
                .map(|(i, n)| LocalEndpoint {
                    ip6: None,
                    network: (*n).into(),
                    ifname: format!("eth{i}"),
                    ip: format!("10.0.{}.50/24", i + 9).parse().unwrap(),
                    mac: crate::MacAddr([2, 0, 0, 0, 0, i as u8]),
                })
                .collect(),
            gateway: None,
        }
    }

    /// appnet (n1): service web (VIP), service cache (dnsrr), task names;
    /// other (n2): service db (VIP), service web too (other VIP).
    fn desired() -> DesiredNode {
        let mut d = DesiredNode::new(ip("198.18.0.1"));
        let mut n1 = net("AppNet", 9);
        n1.services.insert(
            "web".into(),
            ServiceEntry {
                vip6: None,
                vip: Some(ip("10.0.9.100")),
                backends: vec![ip("10.0.9.3"), ip("10.0.9.4")],
            },
        );
        n1.services.insert(
            "cache".into(),
            ServiceEntry {
                vip6: None,
                vip: None,
                backends: vec![ip("10.0.9.7"), ip("10.0.9.8")],
            },
        );
        n1.services.insert("idle".into(), ServiceEntry::default());
        n1.names.insert("web.1.abc".into(), vec![ip("10.0.9.3")]);
        n1.names.insert("Client.1.x".into(), vec![ip("10.0.9.50")]);
        let mut n2 = net("other", 10);
        n2.services.insert(
            "db".into(),
            ServiceEntry {
                vip6: None,
                vip: Some(ip("10.0.10.100")),
                backends: vec![ip("10.0.10.5")],
            },
        );
        n2.services.insert(
            "web".into(),
            ServiceEntry {
                vip6: None,
                vip: Some(ip("10.0.10.101")),
                backends: vec![ip("10.0.10.6")],
            },
        );
        d.networks.insert("n1".into(), n1);
        d.networks.insert("n2".into(), n2);
        d.tasks.insert("only1".into(), attach(&["n1"]));
        d.tasks.insert("only2".into(), attach(&["n2"]));
        d.tasks.insert("both".into(), attach(&["n2", "n1"]));
        d.dns_upstreams = vec!["192.0.2.53:53".parse().unwrap()];
        d
    }

    fn addrs(v: &[&str]) -> Lookup {
        Lookup::Addrs(v.iter().map(|s| ip(s)).collect())
    }

    #[test]
    fn vip_dnsrr_tasks_and_task_names() {
        let view = DnsView::of(&desired());
        assert_eq!(view.upstreams, vec!["192.0.2.53:53".parse().unwrap()]);
        let t = view.task(&"only1".into()).unwrap();
        assert_eq!(t.lookup("web"), addrs(&["10.0.9.100"]));
        assert_eq!(t.lookup("tasks.web"), addrs(&["10.0.9.3", "10.0.9.4"]));
        assert_eq!(t.lookup("cache"), addrs(&["10.0.9.7", "10.0.9.8"]));
        assert_eq!(t.lookup("tasks.cache"), addrs(&["10.0.9.7", "10.0.9.8"]));
        assert_eq!(t.lookup("idle"), Lookup::Addrs(vec![]));
        assert_eq!(t.lookup("web.1.abc"), addrs(&["10.0.9.3"]));
        assert_eq!(t.lookup("tasks.nothing"), Lookup::NotOurs);
        assert_eq!(t.lookup("example.com."), Lookup::NotOurs);
        assert_eq!(t.lookup("."), Lookup::NotOurs);
        assert_eq!(t.lookup(""), Lookup::NotOurs);
    }

    #[test]
    fn case_trailing_dot_and_network_suffix() {
        let view = DnsView::of(&desired());
        let t = view.task(&"only1".into()).unwrap();
        for q in ["WEB", "web.", "Web.AppNet", "web.appnet.", "WEB.APPNET."] {
            assert_eq!(t.lookup(q), addrs(&["10.0.9.100"]), "{q}");
        }
        assert_eq!(
            t.lookup("tasks.web.appnet"),
            addrs(&["10.0.9.3", "10.0.9.4"])
        );
        assert_eq!(t.lookup("client.1.X.appnet."), addrs(&["10.0.9.50"]));
        // A suffix of a network the task is not on is not ours.
        assert_eq!(t.lookup("web.other"), Lookup::NotOurs);
        assert_eq!(t.lookup("appnet"), Lookup::NotOurs);
    }

    #[test]
    fn only_the_tasks_networks_are_visible_first_network_wins() {
        let view = DnsView::of(&desired());
        let t1 = view.task(&"only1".into()).unwrap();
        let t2 = view.task(&"only2".into()).unwrap();
        let both = view.task(&"both".into()).unwrap();
        assert_eq!(t1.lookup("db"), Lookup::NotOurs);
        assert_eq!(t2.lookup("db"), addrs(&["10.0.10.100"]));
        assert_eq!(t2.lookup("cache"), Lookup::NotOurs);
        assert_eq!(t2.lookup("web.1.abc"), Lookup::NotOurs);
        assert_eq!(t2.lookup("web"), addrs(&["10.0.10.101"]));
        // `both` is on n2 first: its web is n2's, unless asked for n1's.
        assert_eq!(both.lookup("web"), addrs(&["10.0.10.101"]));
        assert_eq!(both.lookup("web.appnet"), addrs(&["10.0.9.100"]));
        assert_eq!(both.lookup("cache"), addrs(&["10.0.9.7", "10.0.9.8"]));
        assert!(view.task(&"nope".into()).is_none());
    }

    #[test]
    fn dual_stack_names_carry_both_families() {
        let mut d = desired();
        let n1 = d.networks.get_mut(&"n1".into()).unwrap();
        n1.subnet6 = Some(("fd00:9::/64".parse().unwrap(), ip("fd00:9::1")));
        let web = n1.services.get_mut("web").unwrap();
        web.vip6 = Some(ip("fd00:9::100"));
        web.backends.extend([ip("fd00:9::3"), ip("fd00:9::4")]);
        n1.services
            .get_mut("cache")
            .unwrap()
            .backends
            .push(ip("fd00:9::7"));
        n1.names.get_mut("web.1.abc").unwrap().push(ip("fd00:9::3"));
        let view = DnsView::of(&d);
        let t = view.task(&"only1".into()).unwrap();
        assert_eq!(t.lookup("web"), addrs(&["10.0.9.100", "fd00:9::100"]));
        assert_eq!(
            t.lookup("tasks.web"),
            addrs(&["10.0.9.3", "10.0.9.4", "fd00:9::3", "fd00:9::4"])
        );
        assert_eq!(
            t.lookup("cache"),
            addrs(&["10.0.9.7", "10.0.9.8", "fd00:9::7"])
        );
        assert_eq!(t.lookup("web.1.abc"), addrs(&["10.0.9.3", "fd00:9::3"]));
        // An IPv4-only name stays IPv4 only.
        assert_eq!(t.lookup("client.1.x"), addrs(&["10.0.9.50"]));
    }
}
