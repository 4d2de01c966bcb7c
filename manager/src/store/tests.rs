use super::*;

fn cluster() -> Cluster {
    Cluster {
        id: "c1".into(),
        ca_cert_pem: String::new(),
        ca_key_pem: String::new(),
        worker_secret: "w".into(),
        manager_secret: "m".into(),
        settings: ClusterSettings::default(),
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
        id: id.into(),
        name: name.into(),
        subnet: subnet.map(|s| s.parse().unwrap()),
        gateway: None,
        ip_range: None,
        internal: false,
        attachable: true,
        mtu: None,
        labels: BTreeMap::new(),
        now_ms: 1,
        encrypted: false,
    }
}

fn create_task(s: &mut State, id: &str, node: u64, nets: &[&str]) -> CommandResult {
    s.apply(&Command::CreateTask {
        id: id.into(),
        name: format!("task-{id}"),
        node: NodeId(node),
        spec: TaskSpec {
            command: vec!["sleep".into(), "1".into()],
            env: BTreeMap::new(),
        },
        networks: nets.iter().map(|n| (n.to_string(), None)).collect(),
        standalone: true,
        now_ms: 2,
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
                gateway: Some("10.2.0.77".parse().unwrap()),
                ..net_spec("n2", "b", Some("10.3.0.0/24"))
            },
            "gateway",
        ),
        (
            NetworkSpec {
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
    // Addresses are released with the task.
    s.apply(&Command::RemoveTask { id: "t1".into() }).unwrap();
    create_task(&mut s, "t3", 1, &["n1"]).unwrap();
    assert_eq!(s.tasks["t3"].attachments[0].ip.to_string(), "10.0.9.2");
    // A network in use cannot be removed.
    let err = s
        .apply(&Command::RemoveNetwork { id: "n1".into() })
        .unwrap_err();
    assert!(matches!(err, StoreError::NetworkInUse { tasks: 2, .. }));
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
            id: format!("t{n}"),
            name: format!("t{n}"),
            node: NodeId(1),
            spec: TaskSpec::default(),
            networks: vec![("n1".into(), Some(ip.parse().unwrap()))],
            standalone: true,
            now_ms: 0,
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
