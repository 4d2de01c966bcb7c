use super::*;
use crate::store::{Command, NetworkSpec, Node, Role, TaskSpec};

fn state() -> State {
    let mut s = State::default();
    let node = |id: u64, host: &str, mtu: u32| Node {
        id: NodeId(id),
        hostname: host.into(),
        role: Role::Manager,
        data_path_addr: format!("198.18.0.{id}"),
        underlay_mtu: mtu,
        state: NodeState::Ready,
        ..Default::default()
    };
    s.apply(&Command::InitCluster {
        cluster: crate::testing::cluster_record(),
        node: node(1, "a", 1500),
    })
    .unwrap();
    for (id, host, mtu) in [(2, "b", 1400), (3, "c", 1500)] {
        s.apply(&Command::AddNode {
            node: node(id, host, mtu),
        })
        .unwrap();
    }
    for (id, name, subnet) in [("n1", "app", "10.0.9.0/24"), ("n2", "db", "10.0.10.0/24")] {
        s.apply(&Command::CreateNetwork {
            spec: NetworkSpec {
                aux_addresses: Default::default(),
                subnet: Some(subnet.parse().unwrap()),
                ..crate::testing::network_spec(id, name)
            },
        })
        .unwrap();
    }
    let mut task = |id: &str, node: u64, nets: &[&str]| {
        s.apply(&Command::CreateTask {
            ip6: Default::default(),
            aliases: Default::default(),
            id: id.into(),
            name: id.into(),
            node: NodeId(node),
            spec: TaskSpec::default(),
            networks: nets.iter().map(|n| (n.to_string(), None)).collect(),
            standalone: true,
            now_ms: 0,
            network_mode: Default::default(),
            ports: Vec::new(),
        })
        .unwrap();
    };
    task("t1", 1, &["n1"]);
    task("t2", 2, &["n1"]);
    task("t3", 3, &["n2"]);
    s
}

#[test]
fn a_node_sees_only_its_networks_and_their_remote_endpoints() {
    let s = state();
    let c = project(&s, NodeId(1), 7).unwrap();
    assert_eq!(c.version, 7);
    assert_eq!(c.vtep, "198.18.0.1");
    assert_eq!(c.networks.len(), 1, "n2 has no task on node 1");
    let n = &c.networks[0];
    assert_eq!((n.name.as_str(), n.vni), ("app", 4096));
    assert_eq!(n.remote.len(), 1);
    assert_eq!(n.remote[0].task_id, "t2");
    assert_eq!(n.remote[0].vtep, "198.18.0.2");
    assert_eq!(n.remote[0].mac, "02:42:0a:00:09:03");
    assert_eq!(c.tasks.len(), 1);
    assert_eq!(c.tasks[0].attachments[0].ip, "10.0.9.2/24");
    assert_eq!(c.tasks[0].gateway_ip, "172.18.0.2/16");
    // Node 3 knows nothing of n1.
    let c3 = project(&s, NodeId(3), 7).unwrap();
    assert!(c3.networks.iter().all(|n| n.name == "db"));
    assert!(c3.networks[0].remote.is_empty());
}

/// A dual-stack network's node config carries its IPv6 subnet, each
/// endpoint's IPv6 address (same MAC), both addresses per name, and
/// a service's IPv6 VIP.
#[test]
fn dual_stack_networks_project_both_families() {
    let mut s = state();
    s.apply(&Command::CreateNetwork {
        spec: NetworkSpec {
            subnet: Some("10.0.11.0/24".parse().unwrap()),
            ipv6: true,
            subnet6: Some("fd00:1::/64".parse().unwrap()),
            ..crate::testing::network_spec("n3", "dual")
        },
    })
    .unwrap();
    for (id, node) in [("t4", 1), ("t5", 2)] {
        s.apply(&Command::CreateTask {
            ip6: Default::default(),
            aliases: Default::default(),
            id: id.into(),
            name: id.into(),
            node: NodeId(node),
            spec: TaskSpec::default(),
            networks: vec![("n3".into(), None)],
            standalone: true,
            now_ms: 0,
            network_mode: Default::default(),
            ports: Vec::new(),
        })
        .unwrap();
    }
    s.apply(&Command::CreateService {
        id: "s1".into(),
        spec: crate::testing::spec("web", 1, &["n3"]),
        now_ms: 1,
    })
    .unwrap();
    let c = project(&s, NodeId(1), 1).unwrap();
    let n = c.networks.iter().find(|n| n.name == "dual").unwrap();
    assert_eq!(
        (n.subnet6.as_str(), n.gateway6.as_str()),
        ("fd00:1::/64", "fd00:1::1")
    );
    assert_eq!(n.remote.len(), 1);
    assert_eq!(
        (n.remote[0].ip.as_str(), n.remote[0].ip6.as_str()),
        ("10.0.11.3", "fd00:1::3")
    );
    assert_eq!(
        n.remote[0].mac, "02:42:0a:00:0b:03",
        "one MAC, from the IPv4 address"
    );
    let t4 = c.tasks.iter().find(|t| t.id == "t4").unwrap();
    assert_eq!(t4.attachments[0].ip6, "fd00:1::2/64");
    let t5: Vec<&str> = (n.names.iter())
        .filter(|r| r.name == "t5")
        .map(|r| r.ip.as_str())
        .collect();
    assert_eq!(t5, ["10.0.11.3", "fd00:1::3"]);
    let web = n.services.iter().find(|e| e.name == "web").unwrap();
    assert_eq!(
        (web.vip.as_str(), web.vip6.as_str()),
        ("10.0.11.4", "fd00:1::4")
    );
    // An IPv4-only network's config has no IPv6 field set.
    let app = c.networks.iter().find(|n| n.name == "app").unwrap();
    assert!(app.subnet6.is_empty() && app.remote.iter().all(|r| r.ip6.is_empty()));
}

#[test]
fn mtu_comes_from_the_smallest_member_underlay() {
    let s = state();
    let net = &s.networks["n1"];
    assert_eq!(network_mtu(&s, net), (1350, "b".to_string()));
    let c = project(&s, NodeId(1), 1).unwrap();
    assert_eq!(c.networks[0].mtu, 1350);
    assert_eq!(network_mtu(&s, &s.networks["n2"]).0, 1450);
}

/// VXLAN over an IPv6 underlay has a 40-byte outer header, not 20;
/// so has WireGuard's.
#[test]
fn an_ipv6_underlay_costs_twenty_bytes_more() {
    assert_eq!(encapsulation("198.18.0.1", false), 50);
    assert_eq!(encapsulation("2001:2::1", false), 70);
    assert_eq!(encapsulation("198.18.0.1", true), 110);
    assert_eq!(encapsulation("2001:2::1", true), 130);
    let mut s = state();
    for n in s.nodes.values_mut() {
        n.data_path_addr = format!("2001:2::{}", n.id.0);
    }
    assert_eq!(network_mtu(&s, &s.networks["n1"]).0, 1330);
    assert_eq!(network_mtu(&s, &s.networks["n2"]).0, 1430);
}

fn mark_down(s: &mut State, id: u64) {
    s.apply(&Command::SetNodeState {
        id: NodeId(id),
        state: NodeState::Down,
        message: String::new(),
        now_ms: 0,
    })
    .unwrap();
}

#[test]
fn endpoints_of_down_nodes_leave_peer_configs() {
    let mut s = state();
    mark_down(&mut s, 2);
    let c = project(&s, NodeId(1), 2).unwrap();
    assert!(c.networks[0].remote.is_empty());
}

/// A node marked down (its daemon restarted for longer than three
/// heartbeats) still resolves its own tasks' names in the config it
/// gets on reconnecting, before the heartbeat that marks it ready;
/// its peers no longer see them.
#[test]
fn a_node_marked_down_keeps_its_own_names() {
    let mut s = state();
    let names = |c: &pb::NodeConfig| -> Vec<String> {
        c.networks[0].names.iter().map(|r| r.name.clone()).collect()
    };
    let before = project(&s, NodeId(2), 1).unwrap();
    assert_eq!(names(&before), ["t1", "t2"]);
    mark_down(&mut s, 2);
    let own = project(&s, NodeId(2), 2).unwrap();
    assert_eq!(names(&own), ["t1", "t2"], "its own task stays");
    let peer = project(&s, NodeId(1), 2).unwrap();
    assert_eq!(names(&peer), ["t1"], "peers drop it");
}

/// The networks' lists are made once per state and shared by every
/// node's projection: what one node sees never leaks into another's
/// (its own endpoints left out, its own tasks kept while it is down).
#[test]
fn parts_shared_by_every_node_project_as_parts_made_for_each() {
    let mut s = state();
    mark_down(&mut s, 2);
    for order in [[1u64, 2, 3], [3, 2, 1], [2, 1, 3]] {
        let once = shared(&s);
        for n in order {
            assert_eq!(
                project_with(&s, NodeId(n), 2, &once),
                project_with(&s, NodeId(n), 2, &shared(&s)),
                "node {n}, projected in the order {order:?}"
            );
        }
    }
}

/// A session keeps its networks and services' ports in their shared
/// parts and makes its delta from the changed ones only: for changes to
/// every part of a network (and to none), and to a service that publishes
/// ports through the ingress network and on hosts, that delta makes the
/// new whole config from the old whole one, "no change" is said exactly
/// when the wholes are the same, and a network left as it was keeps its
/// parts' Arc.
#[test]
fn deltas_from_shared_parts_make_the_whole_new_config() {
    let mut s = two_services_on_two_networks();
    let nodes: Vec<NodeId> = s.nodes.keys().copied().collect();
    let mut parts = shared(&s);
    let mut held: Vec<Projected> = (nodes.iter())
        .map(|n| project_parts(&s, *n, 1, &parts).unwrap())
        .collect();
    let net1 = s.networks["net1"].clone();
    // What each change did to web's ports' parts: kept, by change, whole.
    let mut web_ports = [0; 3];
    let mut port_deltas = 0;
    for (version, (what, net1_change, change)) in (2..).zip(shared_parts_changes()) {
        let before = parts.network(&s, &net1);
        let ports_before = parts.ports(&s)[0].clone();
        change(&mut s);
        let next = shared_after(&s, Some(&parts));
        let ports_after = next.ports(&s)[0].clone();
        web_ports[fate(&next.port_changes, &ports_before, &ports_after) as usize] += 1;
        let after = next.network(&s, &net1);
        let found = fate(&next.changes, &before, &after);
        assert_eq!(found, net1_change, "{what}: net1");
        let (changed, with_ports) = check_every_node(&s, &nodes, &mut held, version, &next, what);
        port_deltas += with_ports;
        assert!(
            changed > 0 || net1_change == Fate::Kept,
            "{what}: configs changed"
        );
        parts = next;
    }
    // The five changes to web's replicas changed its ports by a change
    // (a member down, a replica failed, one more, one less, the member
    // up again); the port added, whole; the other nine kept them.
    assert_eq!(web_ports, [9, 5, 1], "web's ports: kept, by change, whole");
    assert!(port_deltas > 10, "ports sent as changes: {port_deltas}");
}

/// What a store change did to a part: nothing (the same `Arc`), a change
/// diffed from what changed only, or one diffed whole.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Kept = 0,
    ByChange = 1,
    Whole = 2,
}

fn fate<T: Part>(pairs: &Pairs<T>, before: &Arc<T>, after: &Arc<T>) -> Fate {
    if Arc::ptr_eq(before, after) {
        Fate::Kept
    } else if pairs.change(before, after).changed.is_some() {
        Fate::ByChange
    } else {
        Fate::Whole
    }
}

/// A store change, named, with what it does to net1.
type Step = (&'static str, Fate, fn(&mut State));

/// Ten nodes, net1 and net2; web (six replicas on nodes 1-6, on both
/// networks, an alias on net1, port 8080 through the ingress network) and
/// db (dnsrr, two replicas on node 7, on net1, an alias).
fn two_services_on_two_networks() -> State {
    use crate::testing::{apply, cluster, network_spec, place, spec};
    let mut s = cluster(10);
    for (id, name, subnet) in [
        ("net1", "front", "10.30.0.0/24"),
        ("net2", "back", "10.31.0.0/24"),
    ] {
        let mut net = network_spec(id, name);
        net.subnet = Some(subnet.parse().unwrap());
        apply(&mut s, Command::CreateNetwork { spec: net });
    }
    let mut web = spec("web", 6, &["net1", "net2"]);
    web.network_aliases
        .insert("net1".into(), vec!["www".into()]);
    web.ports = vec![crate::testing::port(
        8080,
        crate::store::PublishMode::Ingress,
    )];
    apply(
        &mut s,
        Command::CreateService {
            id: "web".into(),
            spec: web,
            now_ms: 0,
        },
    );
    let mut db = spec("db", 3, &["net1"]);
    db.endpoint_mode = crate::store::EndpointMode::Dnsrr;
    db.network_aliases
        .insert("net1".into(), vec!["store".into()]);
    apply(
        &mut s,
        Command::CreateService {
            id: "db".into(),
            spec: db,
            now_ms: 0,
        },
    );
    for node in 1..=6 {
        place(&mut s, "web", node, 1, node);
    }
    place(&mut s, "db", 1, 2, 7);
    s
}

/// Changes to every part of a network (and to none), and to services'
/// published ports.
fn shared_parts_changes() -> [Step; 15] {
    use crate::testing::{apply, place, spec};
    [
        ("a node's MTU, a node with no replica", Fate::Kept, |s| {
            s.nodes.get_mut(&NodeId(9)).unwrap().underlay_mtu = 9000;
        }),
        ("a member marked down", Fate::ByChange, |s| mark_down(s, 3)),
        ("a replica stops serving", Fate::ByChange, |s| {
            let t = s.tasks.values_mut().find(|t| t.node == NodeId(2)).unwrap();
            t.status.state = crate::store::TaskState::Failed;
        }),
        ("a new member", Fate::ByChange, |s| place(s, "web", 7, 1, 8)),
        ("a dnsrr replica stops serving", Fate::ByChange, |s| {
            let t = s.tasks.values_mut().find(|t| t.node == NodeId(7)).unwrap();
            t.status.state = crate::store::TaskState::Failed;
        }),
        ("an alias more, on net2", Fate::Kept, |s| {
            let web = s.services.get_mut("web").unwrap();
            web.spec
                .network_aliases
                .insert("net2".into(), vec!["api".into()]);
        }),
        (
            "the dnsrr service's node marked down",
            Fate::ByChange,
            |s| mark_down(s, 7),
        ),
        // Only node 7 sees a backend of it: no other node's config
        // changes.
        ("an alias more, on net1", Fate::ByChange, |s| {
            let db = s.services.get_mut("db").unwrap();
            db.spec
                .network_aliases
                .insert("net1".into(), vec!["store".into(), "db2".into()]);
        }),
        ("a member's MTU: the network's", Fate::Whole, |s| {
            s.nodes.get_mut(&NodeId(1)).unwrap().underlay_mtu = 1400;
        }),
        ("a member leaves", Fate::ByChange, |s| {
            let t = s.tasks.values_mut().find(|t| t.node == NodeId(5)).unwrap();
            t.desired = DesiredTaskState::Shutdown;
        }),
        ("the member marked down is up again", Fate::ByChange, |s| {
            s.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Ready;
        }),
        ("a service leaves", Fate::ByChange, |s| {
            s.services.remove("db");
        }),
        // Every node holds every service's ports' parts: this one's give
        // no node anything yet, so no config changes.
        (
            "a service publishing on hosts only, no replica yet",
            Fate::Kept,
            |s| {
                let mut api = spec("api", 1, &[]);
                api.ports = vec![crate::testing::port(7070, crate::store::PublishMode::Host)];
                apply(
                    s,
                    Command::CreateService {
                        id: "zz-api".into(),
                        spec: api,
                        now_ms: 0,
                    },
                );
            },
        ),
        ("a port more, on the replicas' hosts", Fate::Kept, |s| {
            let web = s.services.get_mut("web").unwrap();
            let mut on_hosts = web.ports[0];
            on_hosts.published = 9090;
            on_hosts.mode = crate::store::PublishMode::Host;
            web.ports.push(on_hosts);
        }),
        ("nothing", Fate::Kept, |_| {}),
    ]
}

/// Every node's new projection against the one it holds, as its session
/// does: `same_as` agrees with the wholes, and the delta (and its form for
/// a node older than port deltas) makes the new whole from the old one.
/// How many configs changed, and how many deltas carried port changes.
fn check_every_node(
    s: &State,
    nodes: &[NodeId],
    held: &mut [Projected],
    version: u64,
    next: &Shared,
    what: &str,
) -> (usize, usize) {
    let (mut changed, mut port_deltas) = (0, 0);
    for (n, old) in nodes.iter().zip(held) {
        let new = project_parts(s, *n, version, next).unwrap();
        let (old_whole, new_whole) = (old.whole(), new.whole());
        let same = same_content(&old_whole, &new_whole);
        assert_eq!(old.same_as(&new, next), same, "{what}: node {n}");
        if same {
            // As the session does: the node keeps its version.
            old.refresh(new);
            assert_eq!(old.config.version, old_whole.version);
            continue;
        }
        changed += 1;
        let (a, b) = old.changed_pair(&new, next);
        let delta = weft_proto::config_delta::diff(&a, &b).expect("canonical");
        port_deltas += usize::from(!delta.ports_changed.is_empty());
        // The wholes' own delta, which this one stands for.
        assert!(weft_proto::config_delta::diff(&old_whole, &new_whole).is_some());
        // A node older than port deltas gets the ports whole.
        let older = weft_proto::config_delta::with_ports_whole(delta.clone(), new.whole_ports());
        assert_eq!(
            weft_proto::config_delta::apply(&old_whole, &older).as_ref(),
            Ok(&new_whole),
            "{what}: node {n}, ports whole"
        );
        assert_eq!(
            weft_proto::config_delta::apply(&old_whole, &delta),
            Ok(new_whole),
            "{what}: node {n}"
        );
        *old = new;
    }
    (changed, port_deltas)
}

#[test]
fn unrelated_changes_do_not_change_a_projection() {
    let mut s = state();
    let before = project(&s, NodeId(1), 1).unwrap();
    s.apply(&Command::CreateTask {
        ip6: Default::default(),
        aliases: Default::default(),
        id: "t4".into(),
        name: "t4".into(),
        node: NodeId(3),
        spec: TaskSpec::default(),
        networks: vec![("n2".into(), None)],
        standalone: true,
        now_ms: 0,
        network_mode: Default::default(),
        ports: Vec::new(),
    })
    .unwrap();
    let after = project(&s, NodeId(1), 2).unwrap();
    assert!(same_content(&before, &after));
    let after3 = project(&s, NodeId(3), 2).unwrap();
    assert!(!same_content(
        &project(&state(), NodeId(3), 1).unwrap(),
        &after3
    ));
}

#[test]
fn configs_differing_in_any_field_but_their_version_are_not_the_same() {
    let base = project(&state(), NodeId(1), 1).expect("a member");
    let mut later = base.clone();
    later.version = 9;
    assert!(same_content(&base, &later));
    type Change = fn(&mut pb::NodeConfig);
    let changes: Vec<(&str, Change)> = vec![
        ("vtep", |c| c.vtep.push('x')),
        ("vxlan_port", |c| c.vxlan_port += 1),
        ("gateway_subnet", |c| c.gateway_subnet.push('x')),
        ("networks", |c| c.networks[0].names.clear()),
        ("a network's mtu", |c| c.networks[0].mtu += 1),
        ("tasks", |c| c.tasks[0].name.push('x')),
        ("wireguard", |c| c.wireguard = Some(Default::default())),
        ("wireguard peers", |c| {
            let wg = c.wireguard.get_or_insert_with(Default::default);
            wg.peers.push(Default::default());
        }),
        ("vxlan_allowed_sources", |c| {
            c.vxlan_allowed_sources.push("x".into())
        }),
        ("wg_key_generation", |c| c.wg_key_generation += 1),
        ("ports", |c| c.ports.push(Default::default())),
        ("ingress", |c| c.ingress = Some(Default::default())),
        ("keep_sources", |c| c.keep_sources = !c.keep_sources),
        ("sources_follow", |c| c.sources_follow = !c.sources_follow),
        ("image_fetches", |c| {
            c.image_fetches.push(Default::default())
        }),
    ];
    for (what, change) in changes {
        let mut other = base.clone();
        change(&mut other);
        // The peers' case starts from a config with a device.
        let mut with_device = base.clone();
        if what == "wireguard peers" {
            with_device.wireguard.get_or_insert_with(Default::default);
        }
        assert!(!same_content(&with_device, &other), "{what}");
        assert!(!same_content(&other, &with_device), "{what}");
    }
}

#[test]
fn ingress_ports_everywhere_local_replicas_first_host_ports_only_where_replicas_run() {
    ingress_ports(false);
}

#[test]
fn a_dual_stack_ingress_network_carries_both_families() {
    ingress_ports(true);
}

/// [`state`] with service `web` on n1 publishing 8080 through the ingress
/// network and 9090 in host mode, its replicas r1 on node 1 and r2 on
/// node 2 running (node 3 has none); with an IPv6 ingress subnet too when
/// `dual`.
fn ingress_state(dual: bool) -> State {
    use crate::store::{
        EndpointMode, PortProto, PortRequest, RestartCondition, ServiceMode, ServiceSpec,
        TaskState, TaskStatus,
    };
    let mut s = state();
    if dual {
        s.apply(&Command::UpdateClusterSettings {
            wg_key_rotation_secs: None,
            cert_expiry_secs: None,
            disconnect_grace_ms: None,
            ingress_subnet: None,
            ingress_subnet6: Some("fd00:ffff::/64".parse().unwrap()),
        })
        .unwrap();
    }
    let port = |published, mode| PortRequest {
        proto: PortProto::Tcp,
        published,
        target: 80,
        mode,
    };
    s.apply(&Command::CreateService {
        id: "s1".into(),
        spec: ServiceSpec {
            network_aliases: Default::default(),
            registry_auth: None,
            update: Default::default(),
            rollback: Default::default(),
            labels: Default::default(),
            restart_policy: Default::default(),
            name: "web".into(),
            mode: ServiceMode::Replicated { replicas: 2 },
            task: TaskSpec::default(),
            networks: vec!["n1".into()],
            endpoint_mode: EndpointMode::Vip,
            constraints: vec![],
            restart: RestartCondition::Any,
            ports: vec![
                port(8080, PublishMode::Ingress),
                port(9090, PublishMode::Host),
            ],
        },
        now_ms: 1,
    })
    .unwrap();
    for (id, node) in [("r1", 1), ("r2", 2)] {
        s.apply(&Command::CreateServiceTask {
            restart_history: Vec::new(),
            id: id.into(),
            service: "s1".into(),
            slot: 1,
            node: NodeId(node),
            now_ms: 2,
            restarts: 0,
        })
        .unwrap();
        s.apply(&Command::SetTaskStatus {
            id: id.into(),
            node: NodeId(node),
            status: TaskStatus::new(TaskState::RUNNING, 0),
        })
        .unwrap();
    }
    s
}

fn ingress_ports(dual: bool) {
    let s = ingress_state(dual);
    let ingress = s.ingress_network().unwrap().clone();
    let gw = |id: &str| s.tasks[id].gateway_ip.unwrap().to_string();
    let att = |id: &str| {
        s.tasks[id]
            .attachments
            .iter()
            .find(|a| a.network == ingress.id)
            .unwrap()
            .clone()
    };
    let ing = |id: &str| att(id).ip.to_string();
    let by_port = |c: &pb::NodeConfig, p: u32| c.ports.iter().find(|x| x.port == p).cloned();
    // Node 1 has a replica: its own only, over the gateway bridge.
    let c1 = project(&s, NodeId(1), 1).unwrap();
    let p = by_port(&c1, 8080).unwrap();
    assert_eq!(p.local, vec![gw("r1")]);
    let addrs = |ids: &[&str]| {
        let mut v: Vec<String> = ids.iter().map(|r| ing(r)).collect();
        if dual {
            v.extend(ids.iter().map(|r| att(r).ip6.expect("IPv6").to_string()));
        }
        v.sort();
        v
    };
    assert_eq!(p.remote, addrs(&["r2"]));
    assert_eq!(by_port(&c1, 9090).unwrap().local, vec![gw("r1")]);
    // Node 3 has none: the ingress port forwards to both over the
    // ingress network; the host-mode port is not published there.
    let c3 = project(&s, NodeId(3), 1).unwrap();
    let p = by_port(&c3, 8080).unwrap();
    assert!(p.local.is_empty());
    assert_eq!(p.remote, addrs(&["r1", "r2"]));
    assert!(by_port(&c3, 9090).is_none());
    // Every node takes part in the ingress network with its endpoint. A
    // node with a replica knows the other nodes' endpoints as remote
    // endpoints (its replica answers them); one without knows the
    // replicas only (it forwards to them). Neither gets names there.
    let e3 = c3.ingress.clone().unwrap();
    assert_eq!(e3.network_id, ingress.id);
    assert_eq!(e3.ip, format!("{}/16", ingress.node_endpoints[&NodeId(3)]));
    let endpoint_of = |n: u64| {
        let ip = ingress.node_endpoints[&NodeId(n)].to_string();
        let ip6 = (ingress.node_endpoints6.get(&NodeId(n)))
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        (ip, ip6)
    };
    let knows = |c: &pb::NodeConfig, (ip, ip6): (String, String)| {
        let net = c.networks.iter().find(|n| n.id == ingress.id).unwrap();
        assert!(net.names.is_empty(), "names on the ingress network");
        net.remote.iter().any(|r| r.ip == ip && r.ip6 == ip6)
    };
    for n in [2, 3] {
        assert!(
            knows(&c1, endpoint_of(n)),
            "node 1 knows node {n}'s endpoint"
        );
    }
    for n in [1, 2] {
        assert!(
            !knows(&c3, endpoint_of(n)),
            "node 3 knows node {n}'s endpoint"
        );
    }
    for r in ["r1", "r2"] {
        let a = att(r);
        let ip6 = a.ip6.map(|ip| ip.to_string()).unwrap_or_default();
        assert!(knows(&c3, (a.ip.to_string(), ip6)), "node 3 knows {r}");
    }
    let want6 = (ingress.node_endpoints6.get(&NodeId(3))).map(|ip| format!("{ip}/64"));
    assert_eq!(e3.ip6, want6.clone().unwrap_or_default());
    assert_eq!(want6.is_some(), dual);
}

/// Node 3 (no replica there) marked down: node 1's ingress network is as
/// it was, node 3's endpoint kept. A down mark, or a return, of a node
/// without replicas changes no other node's ingress network.
#[test]
fn a_down_node_keeps_its_ingress_endpoint_in_the_members_configs() {
    let mut s = ingress_state(false);
    let ingress = s.ingress_network().unwrap().clone();
    let ingress_of = |c: &pb::NodeConfig| {
        (c.networks.iter())
            .find(|n| n.id == ingress.id)
            .cloned()
            .unwrap()
    };
    let before = ingress_of(&project(&s, NodeId(1), 1).unwrap());
    mark_down(&mut s, 3);
    let after = ingress_of(&project(&s, NodeId(1), 2).unwrap());
    assert_eq!(after, before);
    let ip3 = ingress.node_endpoints[&NodeId(3)].to_string();
    assert!(
        after.remote.iter().any(|r| r.ip == ip3),
        "a down node's endpoint is kept"
    );
}
