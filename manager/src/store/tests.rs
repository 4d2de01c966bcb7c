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
