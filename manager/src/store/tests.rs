use super::*;

/// A cluster record for tests.
pub(crate) fn cluster() -> Cluster {
    Cluster {
        id: "c1".into(),
        ca_cert_pem: String::new(),
        ca_key_pem: String::new(),
        worker_secret: "w".into(),
        manager_secret: "m".into(),
        settings: ClusterSettings::default(),
        sealed: None,
        secrets_generation: 0,
    }
}

fn node(id: u64, role: Role, hostname: &str) -> Node {
    Node {
        id: NodeId(id),
        hostname: hostname.into(),
        role,
        ..Default::default()
    }
}

fn initialised() -> State {
    let mut s = State::default();
    s.apply(&Command::InitCluster {
        cluster: cluster(),
        node: node(1, Role::Manager, "m1"),
    })
    .unwrap();
    s
}

#[test]
fn init_once_only() {
    let mut s = initialised();
    let before = s.clone();
    let err = s
        .apply(&Command::InitCluster {
            cluster: cluster(),
            node: node(2, Role::Manager, "m2"),
        })
        .unwrap_err();
    assert_eq!(err, StoreError::AlreadyInitialised);
    assert_eq!(s, before, "a rejected command changes nothing");
}

#[test]
fn commands_before_init_are_rejected() {
    let mut s = State::default();
    let err = s
        .apply(&Command::AddNode {
            node: node(2, Role::Worker, "w"),
        })
        .unwrap_err();
    assert_eq!(err, StoreError::NotInitialised);
    assert_eq!(s, State::default());
}

#[test]
fn removed_ids_are_never_reused() {
    let mut s = initialised();
    s.apply(&Command::AddNode {
        node: node(2, Role::Worker, "w"),
    })
    .unwrap();
    s.apply(&Command::RemoveNode { id: NodeId(2) }).unwrap();
    assert!(s.removed.contains(&NodeId(2)));
    let err = s
        .apply(&Command::AddNode {
            node: node(2, Role::Worker, "w"),
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateNode(_)));
}

#[test]
fn last_manager_cannot_be_demoted_or_removed() {
    let mut s = initialised();
    let before = s.clone();
    assert!(matches!(
        s.apply(&Command::SetRole {
            id: NodeId(1),
            role: Role::Worker,
            now_ms: 5
        }),
        Err(StoreError::LastManager(_))
    ));
    assert!(matches!(
        s.apply(&Command::RemoveNode { id: NodeId(1) }),
        Err(StoreError::LastManager(_))
    ));
    assert_eq!(s, before);
}

#[test]
fn update_labels_and_availability() {
    let mut s = initialised();
    let mut add = BTreeMap::new();
    add.insert("zone".to_string(), "a".to_string());
    add.insert("disk".to_string(), "ssd".to_string());
    s.apply(&Command::UpdateNode {
        id: NodeId(1),
        availability: Some(Availability::Drain),
        label_add: add,
        label_rm: vec![],
        now_ms: 7,
    })
    .unwrap();
    s.apply(&Command::UpdateNode {
        id: NodeId(1),
        availability: None,
        label_add: BTreeMap::new(),
        label_rm: vec!["disk".into()],
        now_ms: 8,
    })
    .unwrap();
    let n = s.node(NodeId(1)).unwrap();
    assert_eq!(n.availability, Availability::Drain);
    assert_eq!(n.labels.len(), 1);
    assert_eq!(n.labels["zone"], "a");
    assert_eq!(n.updated_at_ms, 8);
}

#[test]
fn apply_is_deterministic() {
    let cmds = vec![
        Command::AddNode {
            node: node(2, Role::Worker, "w1"),
        },
        Command::AddNode {
            node: node(3, Role::Manager, "m2"),
        },
        Command::SetRole {
            id: NodeId(2),
            role: Role::Manager,
            now_ms: 1,
        },
        Command::RotateToken {
            role: Role::Worker,
            secret: "new".into(),
        },
        Command::RemoveNode { id: NodeId(3) },
    ];
    let mut a = initialised();
    let mut b = initialised();
    for c in &cmds {
        assert_eq!(a.apply(c), b.apply(c));
    }
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    assert_eq!(a.cluster.as_ref().unwrap().worker_secret, "new");
}

#[test]
fn resolve_by_id_prefix_and_hostname() {
    let mut s = initialised();
    s.apply(&Command::AddNode {
        node: node(0xabc0_0000_0000_0001, Role::Worker, "alpha"),
    })
    .unwrap();
    s.apply(&Command::AddNode {
        node: node(0xabc0_0000_0000_0002, Role::Worker, "beta"),
    })
    .unwrap();
    assert_eq!(
        s.resolve_node("abc0000000000001").unwrap().hostname,
        "alpha"
    );
    assert_eq!(s.resolve_node("beta").unwrap().hostname, "beta");
    assert!(matches!(
        s.resolve_node("abc"),
        Err(ResolveError::Ambiguous(_))
    ));
    assert!(matches!(
        s.resolve_node("nope"),
        Err(ResolveError::NotFound(_))
    ));
    assert_eq!(s.resolve_node("m1").unwrap().id, NodeId(1));
}

#[test]
fn node_id_text_form() {
    let id = NodeId(0x1f);
    assert_eq!(id.to_string(), "000000000000001f");
    assert_eq!("000000000000001f".parse::<NodeId>().unwrap(), id);
    assert!("1f".parse::<NodeId>().is_err());
    assert!("zzzzzzzzzzzzzzzz".parse::<NodeId>().is_err());
}

fn net_spec(id: &str, name: &str, subnet: Option<&str>) -> NetworkSpec {
    NetworkSpec {
        aux_addresses: Default::default(),
        subnet: subnet.map(|s| s.parse().unwrap()),
        now_ms: 1,
        ..crate::testing::network_spec(id, name)
    }
}

fn create_task(s: &mut State, id: &str, node: u64, nets: &[&str]) -> CommandResult {
    s.apply(&Command::CreateTask {
        ip6: Default::default(),
        aliases: Default::default(),
        id: id.into(),
        name: format!("task-{id}"),
        node: NodeId(node),
        spec: TaskSpec {
            command: vec!["sleep".into(), "1".into()],
            env: BTreeMap::new(),
            container: None,
            stop: Default::default(),
            resources: Default::default(),
            log: None,
            health: None,
            auto_remove: false,
            external: None,
        },
        networks: nets.iter().map(|n| (n.to_string(), None)).collect(),
        standalone: true,
        now_ms: 2,
        network_mode: Default::default(),
        ports: Vec::new(),
    })
}

#[test]
fn networks_get_vnis_subnets_and_gateways() {
    let mut s = initialised();
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n1", "a", None),
    })
    .unwrap();
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n2", "b", Some("10.0.1.0/24")),
    })
    .unwrap();
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n3", "c", None),
    })
    .unwrap();
    let a = &s.networks["n1"];
    assert_eq!(a.subnet.to_string(), "10.0.0.0/24");
    assert_eq!(a.gateway.to_string(), "10.0.0.1");
    assert_eq!(a.vni, 4096);
    assert_eq!(s.networks["n2"].vni, 4097);
    assert_eq!(
        s.networks["n3"].subnet.to_string(),
        "10.0.2.0/24",
        "the pool skips the user's subnet"
    );
}

#[test]
fn bad_networks_change_nothing() {
    let mut s = initialised();
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n1", "a", Some("10.0.9.0/24")),
    })
    .unwrap();
    let before = s.clone();
    let cases = [
        (net_spec("n2", "a", Some("10.1.0.0/24")), "already exists"),
        (net_spec("n2", "b", Some("10.0.9.128/25")), "overlaps"),
        (
            NetworkSpec {
                aux_addresses: Default::default(),
                gateway: Some("10.2.0.77".parse().unwrap()),
                ..net_spec("n2", "b", Some("10.3.0.0/24"))
            },
            "gateway",
        ),
        (
            NetworkSpec {
                aux_addresses: Default::default(),
                ip_range: Some("10.4.0.0/24".parse().unwrap()),
                ..net_spec("n2", "b", Some("10.3.0.0/24"))
            },
            "ip range",
        ),
    ];
    for (spec, want) in cases {
        let err = s.apply(&Command::CreateNetwork { spec }).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(s, before);
    }
}

#[test]
fn tasks_get_addresses_macs_and_gateway_ips() {
    let mut s = initialised();
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n1", "a", Some("10.0.9.0/24")),
    })
    .unwrap();
    create_task(&mut s, "t1", 1, &["n1"]).unwrap();
    create_task(&mut s, "t2", 1, &["n1"]).unwrap();
    assert_eq!(s.tasks["t1"].attachments[0].ip.to_string(), "10.0.9.2");
    assert_eq!(s.tasks["t2"].attachments[0].ip.to_string(), "10.0.9.3");
    assert_eq!(s.tasks["t1"].gateway_ip.unwrap().to_string(), "172.18.0.2");
    assert_eq!(s.tasks["t2"].gateway_ip.unwrap().to_string(), "172.18.0.3");
    // Addresses are released with the task, and handed out again only
    // after the rest of the range (serial allocation).
    s.apply(&Command::RemoveTask { id: "t1".into() }).unwrap();
    create_task(&mut s, "t3", 1, &["n1"]).unwrap();
    assert_eq!(s.tasks["t3"].attachments[0].ip.to_string(), "10.0.9.4");
    // A network in use cannot be removed.
    let err = s
        .apply(&Command::RemoveNetwork { id: "n1".into() })
        .unwrap_err();
    assert!(matches!(err, StoreError::NetworkInUse { tasks: 2, .. }));
}

/// A released address comes back last: the allocation goes on from the
/// last address handed out unasked, wraps at the end of the range, and
/// skips what is taken; an address asked for does not move it. Old
/// records (no cursor) start from the bottom.
#[test]
fn released_addresses_are_reused_last() {
    let mut s = initialised();
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n1", "a", Some("10.0.9.0/29")),
    })
    .unwrap();
    let ip = |s: &State, t: &str| s.tasks[t].attachments[0].ip.to_string();
    for t in ["a", "b", "c"] {
        create_task(&mut s, t, 1, &["n1"]).unwrap();
    }
    assert_eq!(ip(&s, "c"), "10.0.9.4");
    s.apply(&Command::RemoveTask { id: "a".into() }).unwrap();
    s.apply(&Command::RemoveTask { id: "c".into() }).unwrap();
    let asked = Command::CreateTask {
        ip6: Default::default(),
        aliases: Default::default(),
        id: "x".into(),
        name: "task-x".into(),
        node: NodeId(1),
        spec: Default::default(),
        networks: vec![("n1".into(), Some("10.0.9.6".parse().unwrap()))],
        standalone: true,
        now_ms: 2,
        network_mode: Default::default(),
        ports: Vec::new(),
    };
    s.apply(&asked).unwrap();
    create_task(&mut s, "d", 1, &["n1"]).unwrap();
    assert_eq!(ip(&s, "d"), "10.0.9.5", "after c's, not a's or c's");
    create_task(&mut s, "e", 1, &["n1"]).unwrap();
    assert_eq!(ip(&s, "e"), "10.0.9.2", "wrapped, past the asked-for .6");
    create_task(&mut s, "f", 1, &["n1"]).unwrap();
    assert_eq!(ip(&s, "f"), "10.0.9.4");
    assert!(matches!(
        create_task(&mut s, "g", 1, &["n1"]),
        Err(StoreError::NetworkFull(_))
    ));
    // A refused command moves nothing.
    assert_eq!(
        s.networks["n1"].last_allocated,
        Some("10.0.9.4".parse().unwrap())
    );
    // An old record has no cursor.
    let mut json = serde_json::to_value(&s.networks["n1"]).unwrap();
    json.as_object_mut().unwrap().remove("last_allocated");
    let back: crate::store::Network = serde_json::from_value(json).unwrap();
    assert_eq!(back.last_allocated, None);
}

/// `--aux-address`: checked against the subnet and gateway, and never
/// handed out.
#[test]
fn aux_addresses_are_checked_and_kept_out_of_allocation() {
    let mut s = initialised();
    let aux = |pairs: &[(&str, &str)]| -> BTreeMap<String, IpAddr> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect()
    };
    for (subnet, pairs, says) in [
        (None, &[("r", "10.0.9.2")][..], "needs --subnet"),
        (
            Some("10.0.9.0/24"),
            &[("r", "10.0.8.2")][..],
            "not a usable address",
        ),
        (
            Some("10.0.9.0/24"),
            &[("r", "10.0.9.255")][..],
            "not a usable address",
        ),
        (Some("10.0.9.0/24"), &[("r", "10.0.9.1")][..], "gateway"),
        (
            Some("10.0.9.0/24"),
            &[("r", "10.0.9.7"), ("s", "10.0.9.7")][..],
            "twice",
        ),
    ] {
        let spec = NetworkSpec {
            aux_addresses: aux(pairs),
            ..net_spec("n1", "a", subnet)
        };
        let err = s.apply(&Command::CreateNetwork { spec }).unwrap_err();
        assert!(err.to_string().contains(says), "{pairs:?}: {err}");
        assert!(s.networks.is_empty() || !s.networks.contains_key("n1"));
    }
    let spec = NetworkSpec {
        aux_addresses: aux(&[("router", "10.0.9.2"), ("nas", "10.0.9.3")]),
        ..net_spec("n1", "a", Some("10.0.9.0/24"))
    };
    s.apply(&Command::CreateNetwork { spec }).unwrap();
    create_task(&mut s, "t1", 1, &["n1"]).unwrap();
    assert_eq!(s.tasks["t1"].attachments[0].ip.to_string(), "10.0.9.4");
}

#[test]
fn requested_addresses_are_checked() {
    let mut s = initialised();
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n1", "a", Some("10.0.9.0/24")),
    })
    .unwrap();
    let mut n = 0;
    let mut req = |ip: &str| {
        n += 1;
        Command::CreateTask {
            ip6: Default::default(),
            aliases: Default::default(),
            id: format!("t{n}"),
            name: format!("t{n}"),
            node: NodeId(1),
            spec: TaskSpec::default(),
            networks: vec![("n1".into(), Some(ip.parse().unwrap()))],
            standalone: true,
            now_ms: 0,
            network_mode: Default::default(),
            ports: Vec::new(),
        }
    };
    s.apply(&req("10.0.9.50")).unwrap();
    for (ip, want) in [
        ("10.0.9.50", "already in use"),
        ("10.0.9.1", "already in use"),
        ("10.0.8.5", "not a usable address"),
        ("10.0.9.255", "not a usable address"),
    ] {
        let err = s.apply(&req(ip)).unwrap_err().to_string();
        assert!(err.contains(want), "{ip}: {err}");
    }
}

#[test]
fn internal_only_tasks_have_no_way_out_and_standalone_needs_attachable() {
    let mut s = initialised();
    let mut spec = net_spec("n1", "a", Some("10.0.9.0/24"));
    spec.internal = true;
    s.apply(&Command::CreateNetwork { spec }).unwrap();
    let mut spec = net_spec("n2", "b", Some("10.0.10.0/24"));
    spec.attachable = false;
    s.apply(&Command::CreateNetwork { spec }).unwrap();
    create_task(&mut s, "t1", 1, &["n1"]).unwrap();
    assert_eq!(s.tasks["t1"].gateway_ip, None);
    let err = create_task(&mut s, "t2", 1, &["n2"]).unwrap_err();
    assert!(matches!(err, StoreError::NotAttachable(_)));
}

// ------------------------------------------------ the rest of the network model

fn with_bridges() -> State {
    let mut s = initialised();
    s.apply(&Command::AddNode {
        node: node(2, Role::Worker, "w2"),
    })
    .unwrap();
    for (n, id) in [(1, "b1"), (2, "b2")] {
        s.apply(&Command::SetNodeBridge {
            node: NodeId(n),
            network_id: id.into(),
            subnet: "172.17.0.0/16".parse().unwrap(),
            now_ms: 1,
        })
        .unwrap();
    }
    s
}

fn bridge_spec(id: &str, name: &str, node: u64, subnet: Option<&str>) -> NetworkSpec {
    NetworkSpec {
        aux_addresses: Default::default(),
        driver: "bridge".into(),
        node: Some(NodeId(node)),
        ..net_spec(id, name, subnet)
    }
}

fn run(
    s: &mut State,
    id: &str,
    node: u64,
    nets: &[&str],
    mode: NetworkMode,
    ports: &[PortRequest],
) -> CommandResult {
    s.apply(&Command::CreateTask {
        ip6: Default::default(),
        aliases: Default::default(),
        id: id.into(),
        name: id.into(),
        node: NodeId(node),
        spec: TaskSpec::default(),
        networks: nets.iter().map(|n| (n.to_string(), None)).collect(),
        standalone: true,
        now_ms: 3,
        network_mode: mode,
        ports: ports.to_vec(),
    })
}

fn tcp(published: u16, target: u16) -> PortRequest {
    PortRequest {
        proto: PortProto::Tcp,
        published,
        target,
        mode: PublishMode::Host,
    }
}

#[test]
fn each_node_has_its_own_default_bridge_and_local_networks() {
    let mut s = with_bridges();
    // Same subnet on two nodes: local networks never meet.
    assert_eq!(s.default_bridge(NodeId(1)).unwrap().id, "b1");
    assert_eq!(s.default_bridge(NodeId(2)).unwrap().id, "b2");
    assert_eq!(s.resolve_network_on("bridge", NodeId(2)).unwrap().id, "b2");
    // A user bridge on node 1 is invisible on node 2; the same name may
    // exist on node 2, not as a swarm network.
    s.apply(&Command::CreateNetwork {
        spec: bridge_spec("u1", "mine", 1, Some("10.50.0.0/24")),
    })
    .unwrap();
    let u1 = &s.networks["u1"];
    assert_eq!(
        (u1.driver.as_str(), u1.vni, u1.scope()),
        ("bridge", 0, "local")
    );
    assert!(u1.attachable);
    assert!(s.resolve_network_on("mine", NodeId(2)).is_err());
    s.apply(&Command::CreateNetwork {
        spec: bridge_spec("u2", "mine", 2, Some("10.50.0.0/24")),
    })
    .unwrap();
    let before = s.clone();
    for (spec, want) in [
        (net_spec("o1", "mine", None), "already exists"),
        (bridge_spec("u3", "mine", 1, None), "already exists"),
        (bridge_spec("u4", "x", 1, Some("10.50.0.0/25")), "overlaps"),
        (bridge_spec("u5", "host", 1, None), "built-in"),
        (net_spec("o2", "bridge", None), "built-in"),
        (
            NetworkSpec {
                aux_addresses: Default::default(),
                encrypted: true,
                ..bridge_spec("u6", "enc", 1, None)
            },
            "overlay networks",
        ),
        (
            NetworkSpec {
                aux_addresses: Default::default(),
                node: None,
                ..bridge_spec("u7", "nonode", 1, None)
            },
            "local to one node",
        ),
    ] {
        let e = s.apply(&Command::CreateNetwork { spec }).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(s, before);
    }
    // The default bridge cannot be removed; a changed subnet is refused
    // while tasks use it, and applied once they are gone.
    assert!(matches!(
        s.apply(&Command::RemoveNetwork { id: "b1".into() }),
        Err(StoreError::BuiltIn(_))
    ));
    run(&mut s, "t1", 1, &["b1"], NetworkMode::Attached, &[]).unwrap();
    let change = Command::SetNodeBridge {
        node: NodeId(1),
        network_id: "zz".into(),
        subnet: "172.30.0.0/16".parse().unwrap(),
        now_ms: 2,
    };
    assert!(matches!(
        s.apply(&change),
        Err(StoreError::NetworkInUse { .. })
    ));
    s.apply(&Command::RemoveTask { id: "t1".into() }).unwrap();
    s.apply(&change).unwrap();
    assert_eq!(s.networks["b1"].subnet.to_string(), "172.30.0.0/16");
    // A removed node's local networks go with it.
    s.apply(&Command::RemoveNode { id: NodeId(2) }).unwrap();
    assert!(!s.networks.contains_key("b2") && !s.networks.contains_key("u2"));
}

#[test]
fn host_and_none_modes_take_no_addresses_and_no_other_networks() {
    let mut s = with_bridges();
    run(&mut s, "h", 1, &[], NetworkMode::Host, &[]).unwrap();
    run(&mut s, "n", 1, &[], NetworkMode::None, &[]).unwrap();
    for id in ["h", "n"] {
        let t = &s.tasks[id];
        assert!(t.attachments.is_empty() && t.gateway_ip.is_none(), "{t:?}");
    }
    let before = s.clone();
    let e = run(&mut s, "x", 1, &["b1"], NetworkMode::Host, &[]).unwrap_err();
    assert!(e.to_string().contains("cannot be combined"), "{e}");
    let e = run(&mut s, "y", 1, &[], NetworkMode::None, &[tcp(8080, 80)]).unwrap_err();
    assert!(e.to_string().contains("publishing ports"), "{e}");
    let e = s
        .apply(&Command::ConnectTask {
            ip6: Default::default(),
            aliases: Default::default(),
            task: "n".into(),
            network: "b1".into(),
            ip: None,
        })
        .unwrap_err();
    assert!(e.to_string().contains("--network none"), "{e}");
    assert_eq!(s, before);
}

#[test]
fn connect_and_disconnect_keep_interface_names_and_refuse_twice() {
    let mut s = with_bridges();
    s.apply(&Command::CreateNetwork {
        spec: bridge_spec("u1", "mine", 1, Some("10.50.0.0/24")),
    })
    .unwrap();
    s.apply(&Command::CreateNetwork {
        spec: bridge_spec("u2", "other", 2, Some("10.51.0.0/24")),
    })
    .unwrap();
    run(&mut s, "t", 1, &["b1"], NetworkMode::Attached, &[]).unwrap();
    let connect = |net: &str, ip: Option<&str>| Command::ConnectTask {
        ip6: Default::default(),
        aliases: Default::default(),
        task: "t".into(),
        network: net.into(),
        ip: ip.map(|i| i.parse().unwrap()),
    };
    s.apply(&connect("u1", Some("10.50.0.9"))).unwrap();
    let t = &s.tasks["t"];
    assert_eq!(t.attachments[1].ifname, "eth1");
    assert_eq!(t.attachments[1].ip.to_string(), "10.50.0.9");
    let before = s.clone();
    for (cmd, want) in [
        (connect("u1", None), "already connected"),
        (connect("u2", None), "not found"),
        (connect("nope", None), "not found"),
    ] {
        let e = s.apply(&cmd).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(s, before);
    }
    s.apply(&Command::DisconnectTask {
        task: "t".into(),
        network: "b1".into(),
    })
    .unwrap();
    // eth1 stays eth1; the next connect fills the gap.
    assert_eq!(s.tasks["t"].attachments[0].ifname, "eth1");
    let e = s
        .apply(&Command::DisconnectTask {
            task: "t".into(),
            network: "b1".into(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("not connected"), "{e}");
    s.apply(&connect("b1", None)).unwrap();
    assert_eq!(s.tasks["t"].attachments[1].ifname, "eth0");
}

#[test]
fn published_ports_are_unique_per_node_and_picked_from_the_range() {
    let mut s = with_bridges();
    run(
        &mut s,
        "a",
        1,
        &["b1"],
        NetworkMode::Attached,
        &[tcp(8080, 80), tcp(0, 81)],
    )
    .unwrap();
    let a = &s.tasks["a"];
    assert_eq!(a.ports[0].published, 8080);
    assert_eq!(a.ports[1].published, *PUBLISHED_PORT_RANGE.start());
    // Another node may publish 8080 too; this node may not, nor a service.
    run(
        &mut s,
        "b",
        2,
        &["b2"],
        NetworkMode::Attached,
        &[tcp(8080, 80)],
    )
    .unwrap();
    let before = s.clone();
    let e = run(
        &mut s,
        "c",
        1,
        &["b1"],
        NetworkMode::Attached,
        &[tcp(8080, 80)],
    )
    .unwrap_err();
    assert!(e.to_string().contains("already published by task a"), "{e}");
    let e = run(
        &mut s,
        "d",
        1,
        &["b1"],
        NetworkMode::Attached,
        &[tcp(4377, 80)],
    )
    .unwrap_err();
    assert!(e.to_string().contains("control port"), "{e}");
    let e = run(
        &mut s,
        "e",
        1,
        &["b1"],
        NetworkMode::Attached,
        &[tcp(9000, 0)],
    )
    .unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    let svc = |ports: Vec<PortRequest>, mode| ServiceSpec {
        network_aliases: Default::default(),
        registry_auth: None,
        update: Default::default(),
        rollback: Default::default(),
        labels: Default::default(),
        restart_policy: Default::default(),
        name: "web".into(),
        mode: ServiceMode::Replicated { replicas: 1 },
        task: TaskSpec::default(),
        networks: vec![],
        endpoint_mode: mode,
        constraints: vec![],
        restart: RestartCondition::Any,
        ports,
    };
    let ingress = |p: u16| PortRequest {
        mode: PublishMode::Ingress,
        ..tcp(p, 80)
    };
    let e = s
        .apply(&Command::CreateService {
            id: "s1".into(),
            spec: svc(vec![ingress(8080)], EndpointMode::Vip),
            now_ms: 4,
        })
        .unwrap_err();
    assert!(e.to_string().contains("already published by task"), "{e}");
    let e = s
        .apply(&Command::CreateService {
            id: "s1".into(),
            spec: svc(vec![ingress(9090)], EndpointMode::Dnsrr),
            now_ms: 4,
        })
        .unwrap_err();
    assert!(e.to_string().contains("virtual IP"), "{e}");
    assert_eq!(
        s, before,
        "refused commands change nothing (no ingress network either)"
    );
    // An ingress port creates the ingress network, gives every node an
    // endpoint on it and puts replicas on it.
    s.apply(&Command::CreateService {
        id: "s1".into(),
        spec: svc(vec![ingress(9090)], EndpointMode::Vip),
        now_ms: 4,
    })
    .unwrap();
    let net = s.ingress_network().unwrap().clone();
    assert_eq!(net.subnet.to_string(), "10.255.0.0/16");
    assert_eq!(net.node_endpoints.len(), 2);
    s.apply(&Command::CreateServiceTask {
        restart_history: Vec::new(),
        id: "r1".into(),
        service: "s1".into(),
        slot: 1,
        node: NodeId(2),
        now_ms: 5,
        restarts: 0,
    })
    .unwrap();
    let r1 = &s.tasks["r1"];
    assert_eq!(r1.attachments.last().unwrap().network, net.id);
    assert!(
        !net.node_endpoints
            .values()
            .any(|ip| *ip == r1.attachments[0].ip)
    );
    // A node that joins later gets its endpoint too.
    s.apply(&Command::AddNode {
        node: node(3, Role::Worker, "w3"),
    })
    .unwrap();
    assert!(
        s.ingress_network()
            .unwrap()
            .node_endpoints
            .contains_key(&NodeId(3))
    );
    // The service's port is now taken on every node.
    let e = run(
        &mut s,
        "f",
        2,
        &["b2"],
        NetworkMode::Attached,
        &[tcp(9090, 80)],
    )
    .unwrap_err();
    assert!(e.to_string().contains("service web"), "{e}");
}

#[test]
fn ingress_subnet_is_kept_free_and_moves_only_while_unused() {
    let mut s = with_bridges();
    let move_to = |subnet: &str| Command::UpdateClusterSettings {
        wg_key_rotation_secs: None,
        cert_expiry_secs: None,
        disconnect_grace_ms: None,
        ingress_subnet: Some(subnet.parse().unwrap()),
        ingress_subnet6: None,
    };
    let create = |id: &str, subnet: &str| Command::CreateNetwork {
        spec: net_spec(id, id, Some(subnet)),
    };
    let publish = |id: &str| Command::CreateService {
        id: id.into(),
        spec: ServiceSpec {
            network_aliases: Default::default(),
            registry_auth: None,
            update: Default::default(),
            rollback: Default::default(),
            labels: Default::default(),
            restart_policy: Default::default(),
            name: format!("web-{id}"),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskSpec::default(),
            networks: vec![],
            endpoint_mode: EndpointMode::Vip,
            constraints: vec![],
            restart: RestartCondition::Any,
            ports: vec![PortRequest {
                mode: PublishMode::Ingress,
                ..tcp(9090, 80)
            }],
        },
        now_ms: 4,
    };

    // Before the first ingress publish its subnet is kept free, with a hint.
    let before = s.clone();
    let e = s.apply(&create("n1", "10.255.3.0/24")).unwrap_err();
    assert!(
        e.to_string().contains("ingress subnet 10.255.0.0/16")
            && e.to_string().contains("--ingress-subnet"),
        "{e}"
    );
    assert_eq!(s, before);

    // Moving it: what is not a usable subnet is refused and changes nothing.
    s.apply(&create("n2", "10.60.0.0/24")).unwrap();
    let before = s.clone();
    for (bad, why) in [
        ("10.0.0.0/28", "out of range"),
        ("fd00::/64", "not IPv4"),
        ("172.18.0.0/16", "gateway bridge"),
        ("100.64.0.0/24", "WireGuard tunnel"),
        ("10.60.0.0/16", "10.60.0.0/24"),
    ] {
        let e = s.apply(&move_to(bad)).unwrap_err();
        assert!(e.to_string().contains(why), "{bad}: {e}");
        assert_eq!(s, before, "{bad}");
    }

    // Moved: the old range is free, and the first publish uses the new one.
    s.apply(&move_to("10.77.0.0/24")).unwrap();
    s.apply(&create("n1", "10.255.3.0/24")).unwrap();
    assert!(s.apply(&create("n3", "10.77.0.128/25")).is_err());
    s.apply(&publish("s1")).unwrap();
    let net = s.ingress_network().unwrap().clone();
    assert_eq!(net.subnet.to_string(), "10.77.0.0/24");
    assert!(
        net.node_endpoints
            .values()
            .all(|ip| net.subnet.contains(*ip))
    );

    // Setting it to what it is changes nothing, even while in use.
    let before = s.clone();
    s.apply(&move_to("10.77.0.0/24")).unwrap();
    assert_eq!(s, before);
    // In use by a service's port, or by a task still on it: refused.
    let e = s.apply(&move_to("10.78.0.0/24")).unwrap_err();
    assert!(e.to_string().contains("web-s1"), "{e}");
    assert_eq!(s, before);
    s.apply(&Command::CreateServiceTask {
        restart_history: Vec::new(),
        id: "r1".into(),
        service: "s1".into(),
        slot: 1,
        node: NodeId(2),
        now_ms: 5,
        restarts: 0,
    })
    .unwrap();
    // The port dropped while the replica still runs on the ingress network.
    let Command::CreateService { spec, .. } = publish("s1") else {
        unreachable!()
    };
    s.apply(&Command::UpdateService {
        id: "s1".into(),
        spec: ServiceSpec {
            registry_auth: None,
            update: Default::default(),
            rollback: Default::default(),
            labels: Default::default(),
            ports: vec![],
            ..spec
        },
        force: false,
        now_ms: 6,
    })
    .unwrap();
    assert!(s.tasks.contains_key("r1"));
    let before = s.clone();
    let e = s.apply(&move_to("10.78.0.0/24")).unwrap_err();
    assert!(
        e.to_string().contains("still on the ingress network"),
        "{e}"
    );
    assert_eq!(s, before);
    s.apply(&Command::RemoveService { id: "s1".into() })
        .unwrap();

    // Unused: the ingress network goes and comes back on the new subnet.
    s.apply(&move_to("10.78.0.0/24")).unwrap();
    assert!(s.ingress_network().is_none());
    s.apply(&publish("s2")).unwrap();
    assert_eq!(
        s.ingress_network().unwrap().subnet.to_string(),
        "10.78.0.0/24"
    );
}

#[test]
fn clusters_from_before_the_ingress_setting_replay_as_they_applied() {
    // Settings written before the field existed read back without it ...
    let mut json = serde_json::to_value(ClusterSettings::default()).unwrap();
    json.as_object_mut().unwrap().remove("ingress_subnet");
    let old: ClusterSettings = serde_json::from_value(json).unwrap();
    assert_eq!(old.ingress_subnet, None);
    assert_eq!(old.ingress_subnet(), "10.255.0.0/16".parse().unwrap());
    // ... and such a cluster keeps nothing free: a network its log created
    // inside the default ingress subnet is created again on replay.
    let mut s = initialised();
    s.cluster.as_mut().unwrap().settings = old;
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n1", "n1", Some("10.255.3.0/24")),
    })
    .unwrap();
    // Setting the subnet opts in to keeping it free.
    s.apply(&Command::UpdateClusterSettings {
        wg_key_rotation_secs: None,
        cert_expiry_secs: None,
        disconnect_grace_ms: None,
        ingress_subnet: Some("10.80.0.0/24".parse().unwrap()),
        ingress_subnet6: None,
    })
    .unwrap();
    assert!(
        s.apply(&Command::CreateNetwork {
            spec: net_spec("n2", "n2", Some("10.80.0.0/25")),
        })
        .is_err()
    );
}

#[test]
fn debug_output_has_no_secrets() {
    let mut c = cluster();
    c.ca_key_pem = "-----BEGIN PRIVATE KEY-----\nsecretkey".into();
    c.worker_secret = "wsecret123".into();
    c.manager_secret = "msecret456".into();
    let cmd = Command::InitCluster {
        cluster: c.clone(),
        node: node(1, Role::Manager, "m1"),
    };
    let mut s = State::default();
    s.apply(&cmd).expect("init");
    for text in [
        format!("{c:?}"),
        format!("{cmd:?}"),
        format!("{s:?}"),
        format!("{s:#?}"),
    ] {
        for secret in ["secretkey", "PRIVATE KEY", "wsecret123", "msecret456"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("<redacted>"));
    }
}

#[test]
fn set_secrets_replaces_them_whole_and_debug_hides_them() {
    let mut s = State::default();
    s.apply(&Command::InitCluster {
        cluster: cluster(),
        node: node(1, Role::Manager, "m1"),
    })
    .expect("init");
    let key = weft_proto::seal::UnlockKey::generate().unwrap();
    let plain = Secrets {
        ca_key_pem: "-----BEGIN PRIVATE KEY-----\nsecretkey".into(),
        worker_secret: "wsecret123".into(),
        manager_secret: "msecret456".into(),
    };
    let sealed = crate::autolock::seal_secrets(&key, &plain).unwrap();
    let on = Command::SetSecrets {
        secrets: Secrets::default(),
        sealed: Some(sealed.clone()),
        generation: 0,
    };
    s.apply(&on).expect("seal");
    // Read before the change above: refused, nothing changes.
    let before = format!("{s:?}");
    let stale = Command::SetSecrets {
        secrets: plain.clone(),
        sealed: None,
        generation: 0,
    };
    assert!(matches!(s.apply(&stale), Err(StoreError::SecretsChanged)));
    assert_eq!(format!("{s:?}"), before);
    let c = s.cluster.clone().unwrap();
    assert!(c.ca_key_pem.is_empty() && c.worker_secret.is_empty() && c.manager_secret.is_empty());
    assert_eq!(c.sealed, Some(sealed));
    assert_eq!(crate::autolock::secrets(&c, Some(&key)).unwrap(), plain);
    let off = Command::SetSecrets {
        secrets: plain.clone(),
        sealed: None,
        generation: 1,
    };
    for text in [format!("{off:?}"), format!("{on:?}"), format!("{s:?}")] {
        for secret in ["secretkey", "PRIVATE KEY", "wsecret123", "msecret456"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    s.apply(&off).expect("unseal");
    let c = s.cluster.clone().unwrap();
    assert_eq!(c.plain_secrets(), plain);
    assert!(!c.autolock());
    // A plain token rotation moves the generation too.
    s.apply(&Command::RotateToken {
        role: Role::Worker,
        secret: "new".into(),
    })
    .expect("rotate");
    assert_eq!(s.cluster.as_ref().unwrap().secrets_generation, 3);
}

#[test]
fn resources_round_trip_and_old_records_read_without_them() {
    // A task spec and a node written before resources existed.
    let old_spec: TaskSpec = serde_json::from_str(r#"{"command":["sleep","1"],"env":{}}"#).unwrap();
    assert_eq!(old_spec.resources, Resources::default());
    let mut node = serde_json::to_value(Node::default()).unwrap();
    node.as_object_mut().unwrap().remove("resources");
    let old_node: Node = serde_json::from_value(node).unwrap();
    assert_eq!(old_node.resources, NodeResources::default());
    // A spec without resources is written as before (no new key).
    let json = serde_json::to_value(&old_spec).unwrap();
    assert!(json.get("resources").is_none(), "{json}");
    // With them, they read back as written.
    let spec = TaskSpec {
        resources: Resources {
            limit_nano_cpus: 500_000_000,
            limit_memory_bytes: 32 << 20,
            limit_pids: 64,
            reserve_nano_cpus: 0,
            reserve_memory_bytes: 16 << 20,
        },
        ..old_spec
    };
    let back: TaskSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    // A node's reported capacity is one Raft command.
    let mut s = initialised();
    let id = *s.nodes.keys().next().unwrap();
    let res = NodeResources {
        nano_cpus: 2_000_000_000,
        memory_bytes: 1 << 30,
    };
    let cmd = Command::SetNodeResources {
        id,
        resources: res,
        version: "1.2.3".into(),
    };
    s.apply(&cmd).unwrap();
    assert_eq!(s.nodes[&id].resources, res);
    assert_eq!(s.nodes[&id].version, "1.2.3");
    let json = serde_json::to_string(&cmd).unwrap();
    assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
    // An entry of the version before (no version) still reads, and keeps
    // the version known.
    let old = format!(
        r#"{{"SetNodeResources":{{"id":{},"resources":{{"nano_cpus":1,"memory_bytes":2}}}}}}"#,
        serde_json::to_string(&id).unwrap()
    );
    let old: Command = serde_json::from_str(&old).unwrap();
    s.apply(&old).unwrap();
    assert_eq!(s.nodes[&id].version, "1.2.3");
}

/// A Docker endpoint's task gets its `-p` ports once, after it was made;
/// anything else is refused and changes nothing.
#[test]
fn a_docker_endpoints_ports_are_set_once_after_it_is_made() {
    let mut s = with_bridges();
    let docker = |id: &str| Command::CreateTask {
        ip6: Default::default(),
        aliases: Default::default(),
        id: id.into(),
        name: id.into(),
        node: NodeId(1),
        spec: TaskSpec {
            auto_remove: true,
            external: Some(ExternalEndpoint {
                runtime: ExternalRuntime::Docker,
                container_id: format!("c-{id}"),
                ifname: "eth0".into(),
                netns: String::new(),
                container_name: None,
            }),
            ..TaskSpec::default()
        },
        networks: vec![("b1".into(), None)],
        standalone: true,
        now_ms: 3,
        network_mode: NetworkMode::Attached,
        ports: Vec::new(),
    };
    s.apply(&docker("d1")).unwrap();
    s.apply(&docker("d2")).unwrap();
    run(&mut s, "own", 1, &["b1"], NetworkMode::Attached, &[]).unwrap();
    let set = |task: &str, node: u64, port: u16| Command::SetTaskPorts {
        task: task.into(),
        node: NodeId(node),
        ports: vec![tcp(port, 80)],
    };
    s.apply(&set("d1", 1, 18080)).unwrap();
    assert_eq!(s.tasks["d1"].ports.len(), 1);
    assert_eq!(s.tasks["d1"].ports[0].published, 18080);
    let before = s.clone();
    for (cmd, want) in [
        (set("d1", 1, 18081), "once"),
        (set("own", 1, 18082), "Docker endpoint"),
        (set("d2", 2, 18083), "does not run"),
        (set("d2", 1, 18080), "already published"),
        (set("nosuch", 1, 18084), "not found"),
    ] {
        let e = s.apply(&cmd).unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert_eq!(s, before);
    }
}

fn dual_spec(id: &str, name: &str, subnet6: Option<&str>) -> NetworkSpec {
    NetworkSpec {
        ipv6: true,
        subnet6: subnet6.map(|s| s.parse().unwrap()),
        ..net_spec(id, name, None)
    }
}

/// `--ipv6`: an IPv6 subnet from the cluster's ULA pool (or given), an
/// IPv6 address per task and an IPv6 VIP per service, handed out serially
/// like IPv4's.
#[test]
fn dual_stack_networks_give_both_families() {
    let mut s = initialised();
    s.apply(&Command::CreateNetwork {
        spec: dual_spec("n1", "a", None),
    })
    .unwrap();
    let v6 = s.networks["n1"].ipv6.clone().expect("an IPv6 side");
    assert_eq!(v6.subnet.prefix(), 64);
    assert!(ipam::ula_pool("c1").contains(v6.subnet.network()), "{v6:?}");
    assert_eq!(Some(v6.gateway), ipam::first_host(&v6.subnet));
    s.apply(&Command::CreateNetwork {
        spec: dual_spec("n2", "b", None),
    })
    .unwrap();
    let v6b = s.networks["n2"].ipv6.clone().unwrap();
    assert!(!ipam::overlaps(&v6.subnet, &v6b.subnet), "{v6:?} {v6b:?}");
    for t in ["t1", "t2"] {
        create_task(&mut s, t, 1, &["n1"]).unwrap();
    }
    let ip6 = |s: &State, t: &str| s.tasks[t].attachments[0].ip6.unwrap();
    assert!(v6.subnet.contains(ip6(&s, "t1")));
    assert_ne!(ip6(&s, "t1"), ip6(&s, "t2"));
    assert_ne!(ip6(&s, "t1"), v6.gateway);
    // Serial: t1's IPv6 address is not the next one handed out.
    let first = ip6(&s, "t1");
    s.apply(&Command::RemoveTask { id: "t1".into() }).unwrap();
    create_task(&mut s, "t3", 1, &["n1"]).unwrap();
    assert_ne!(
        ip6(&s, "t3"),
        first,
        "a released IPv6 address comes back last"
    );
    // A service on it gets a VIP of each family.
    let cmd = Command::CreateService {
        id: "s1".into(),
        spec: crate::testing::spec("web", 1, &["n1"]),
        now_ms: 3,
    };
    s.apply(&cmd).unwrap();
    let svc = &s.services["s1"];
    assert!(svc.vips["n1"].is_ipv4());
    assert!(v6.subnet.contains(svc.vips6["n1"]));
    // IPv4-only networks have none of it.
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n3", "c", None),
    })
    .unwrap();
    create_task(&mut s, "t4", 1, &["n3"]).unwrap();
    assert_eq!(s.tasks["t4"].attachments[0].ip6, None);
    assert_eq!(s.networks["n3"].ipv6, None);
    // The IPv6 side survives a round trip; an old record has none.
    let json = serde_json::to_value(&s.networks["n1"]).unwrap();
    let back: Network = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, s.networks["n1"]);
    let mut old = json;
    old.as_object_mut().unwrap().remove("ipv6");
    let back: Network = serde_json::from_value(old).unwrap();
    assert_eq!(back.ipv6, None);
}

/// The IPv6 side's bad input is refused and changes nothing.
#[test]
fn bad_dual_stack_input_changes_nothing() {
    let mut s = initialised();
    s.apply(&Command::CreateNetwork {
        spec: dual_spec("n1", "a", Some("fd00:1::/64")),
    })
    .unwrap();
    let before = s.clone();
    let bad = |spec: NetworkSpec| Command::CreateNetwork { spec };
    for (cmd, says) in [
        (
            bad(NetworkSpec {
                ipv6: false,
                ..dual_spec("n2", "b", Some("fd00:2::/64"))
            }),
            "add --ipv6",
        ),
        (bad(dual_spec("n2", "b", Some("fd00:1::/80"))), "overlaps"),
        (bad(dual_spec("n2", "b", Some("fd00:2::/127"))), "too small"),
        (
            bad(NetworkSpec {
                gateway6: Some("fd00:3::1".parse().unwrap()),
                ..dual_spec("n2", "b", Some("fd00:2::/64"))
            }),
            "not a usable address",
        ),
        (
            bad(NetworkSpec {
                ip_range6: Some("fd00:3::/120".parse().unwrap()),
                ..dual_spec("n2", "b", Some("fd00:2::/64"))
            }),
            "not inside subnet",
        ),
        (
            bad(NetworkSpec {
                subnet: Some("10.0.9.0/24".parse().unwrap()),
                aux_addresses: [("r".to_string(), "fd00:9::5".parse().unwrap())].into(),
                ..dual_spec("n2", "b", Some("fd00:2::/64"))
            }),
            "not a usable address of subnet fd00:2::/64",
        ),
        (
            bad(NetworkSpec {
                subnet: Some("10.0.9.0/24".parse().unwrap()),
                aux_addresses: [("r".to_string(), "fd00:2::1".parse().unwrap())].into(),
                ..dual_spec("n2", "b", Some("fd00:2::/64"))
            }),
            "gateway",
        ),
    ] {
        let e = s.apply(&cmd).unwrap_err().to_string();
        assert!(e.contains(says), "{cmd:?}: {e}");
        assert_eq!(s, before, "{cmd:?} changed the state");
    }
    // --ip6: on its subnet and free, and only on a dual-stack network.
    s.apply(&Command::CreateNetwork {
        spec: net_spec("n4", "v4only", None),
    })
    .unwrap();
    let ask = |net: &str, ip6: &str| Command::CreateTask {
        ip6: [(net.to_string(), ip6.parse().unwrap())].into(),
        aliases: Default::default(),
        id: "x".into(),
        name: "task-x".into(),
        node: NodeId(1),
        spec: Default::default(),
        networks: vec![(net.into(), None)],
        standalone: true,
        now_ms: 2,
        network_mode: Default::default(),
        ports: Vec::new(),
    };
    let before = s.clone();
    for (cmd, says) in [
        (ask("n4", "fd00:1::9"), "no IPv6 subnet"),
        (ask("n1", "fd00:7::9"), "not a usable address"),
        (ask("n1", "fd00:1::1"), "already in use"),
    ] {
        let e = s.apply(&cmd).unwrap_err().to_string();
        assert!(e.contains(says), "{cmd:?}: {e}");
        assert_eq!(s, before);
    }
    s.apply(&ask("n1", "fd00:1::9")).unwrap();
    assert_eq!(
        s.tasks["x"].attachments[0].ip6,
        Some("fd00:1::9".parse().unwrap())
    );
    // An asked-for address does not move the serial cursor.
    assert_eq!(s.networks["n1"].ipv6.as_ref().unwrap().last_allocated, None);
    // Only managers of 0.2.0 on apply these.
    assert_eq!(
        ask("n1", "fd00:1::10").since(),
        version_gate::Release::DUAL_STACK
    );
    assert_eq!(
        bad(dual_spec("n5", "e", None)).since(),
        version_gate::Release::DUAL_STACK
    );
    assert_eq!(
        bad(net_spec("n5", "e", None)).since(),
        version_gate::Release::FIRST
    );
}

/// `--ipv4=false`: the network's one subnet is IPv6; tasks and VIPs get an
/// IPv6 address there, `--ip6` asks for it, and its subnet counts against
/// dual-stack ones.
#[test]
fn ipv6_only_networks_have_one_ipv6_subnet() {
    let mut s = initialised();
    let v6only = |id: &str, name: &str, subnet6: Option<&str>| NetworkSpec {
        no_ipv4: true,
        ..dual_spec(id, name, subnet6)
    };
    s.apply(&Command::CreateNetwork {
        spec: v6only("n1", "six", Some("fd00:61::/64")),
    })
    .unwrap();
    let n = &s.networks["n1"];
    assert_eq!(n.subnet.to_string(), "fd00:61::/64");
    assert_eq!(n.gateway.to_string(), "fd00:61::1");
    assert_eq!(n.ipv6, None);
    create_task(&mut s, "t1", 1, &["n1"]).unwrap();
    assert_eq!(s.tasks["t1"].attachments[0].ip.to_string(), "fd00:61::2");
    assert_eq!(s.tasks["t1"].attachments[0].ip6, None);
    let asked = Command::CreateTask {
        ip6: [("n1".to_string(), "fd00:61::99".parse().unwrap())].into(),
        aliases: Default::default(),
        id: "x".into(),
        name: "task-x".into(),
        node: NodeId(1),
        spec: Default::default(),
        networks: vec![("n1".into(), None)],
        standalone: true,
        now_ms: 2,
        network_mode: Default::default(),
        ports: Vec::new(),
    };
    s.apply(&asked).unwrap();
    assert_eq!(s.tasks["x"].attachments[0].ip.to_string(), "fd00:61::99");
    assert_eq!(
        s.networks["n1"].last_allocated,
        Some("fd00:61::2".parse().unwrap()),
        "an asked-for address leaves the cursor"
    );
    s.apply(&Command::CreateService {
        id: "s1".into(),
        spec: crate::testing::spec("web", 1, &["n1"]),
        now_ms: 3,
    })
    .unwrap();
    assert!(s.services["s1"].vips["n1"].is_ipv6());
    assert!(s.services["s1"].vips6.is_empty());
    // From the pools too.
    s.apply(&Command::CreateNetwork {
        spec: v6only("n2", "six2", None),
    })
    .unwrap();
    assert!(s.networks["n2"].subnet.is_ipv6());
    let before = s.clone();
    for (spec, says) in [
        (dual_spec("n3", "d", Some("fd00:61::/80")), "overlaps"),
        (
            NetworkSpec {
                ipv6: false,
                ..v6only("n3", "d", None)
            },
            "needs --ipv6",
        ),
        (
            NetworkSpec {
                subnet: Some("10.9.0.0/24".parse().unwrap()),
                ..v6only("n3", "d", None)
            },
            "takes no IPv4",
        ),
    ] {
        let e = s
            .apply(&Command::CreateNetwork { spec: spec.clone() })
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{spec:?}: {e}");
        assert_eq!(s, before);
    }
}

mod ingress6;
