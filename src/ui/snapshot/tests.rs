use super::*;

/// A secret-looking value in every field the page must not get.
const SECRET: &str = "SECRET-do-not-show";

fn inputs() -> Inputs {
    let node = |id: &str, host: &str, manager: bool| pb::Node {
        id: id.into(),
        hostname: host.into(),
        role: if manager {
            pb::NodeRole::Manager as i32
        } else {
            pb::NodeRole::Worker as i32
        },
        manager_status: if manager {
            pb::ManagerStatus::Leader as i32
        } else {
            0
        },
        state: pb::NodeState::Ready as i32,
        labels: [("token".to_string(), SECRET.to_string())].into(),
        cert_expiry: "2027-03-01T00:00:00Z".into(),
        version: "0.1.0".into(),
        ..Default::default()
    };
    let peer = |id: &str, host: &str, behind: u64, hs: u64| pb::PeerInfo {
        node_id: id.into(),
        hostname: host.into(),
        config_version: 7,
        applied_version: 7 - behind,
        behind,
        wg_public_key: SECRET.into(),
        last_handshake_ms: hs,
        tunnel_ip: "10.99.0.1".into(),
        ..Default::default()
    };
    let task = |id: &str, name: &str, node: &str, state: pb::TaskState| pb::Task {
        id: id.into(),
        name: name.into(),
        node_id: node.into(),
        hostname: node.into(),
        command: vec!["sh".into(), "-c".into(), format!("PASSWORD={SECRET}")],
        desired_state: pb::TaskState::Running as i32,
        status: Some(pb::TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        addresses: vec![pb::TaskAddress {
            network: "sec".into(),
            ip: "10.10.0.5".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    Inputs {
        nodes: vec![node("b2", "w1", false), node("a1", "m1", true)],
        networks: vec![pb::NetworkDetail {
            network: Some(pb::Network {
                id: "n1".into(),
                name: "sec".into(),
                driver: "overlay".into(),
                subnet: "10.10.0.0/24".into(),
                vni: 4097,
                mtu: 1370,
                mtu_limited_by: "w1".into(),
                encrypted: true,
                labels: [("k".to_string(), SECRET.to_string())].into(),
                ..Default::default()
            }),
            endpoints: vec![
                pb::EndpointInfo {
                    task_name: "web.1".into(),
                    hostname: "w1".into(),
                    ip: "10.10.0.5".into(),
                    ..Default::default()
                },
                pb::EndpointInfo {
                    hostname: "m1".into(),
                    ip: "10.10.0.9".into(),
                    external: Some(pb::ExternalEndpoint {
                        runtime: "cni".into(),
                        container_id: "0123456789abcdef0123".into(),
                        netns: "/proc/4242/ns/net-cni-secret-path".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            peers: vec![
                peer("a1", "m1", 0, 1_000_000 - 5_000),
                peer("b2", "w1", 2, 1_000_000 - 400_000),
            ],
        }],
        services: vec![pb::Service {
            id: "s1".into(),
            spec: Some(pb::ServiceSpecMsg {
                name: "web".into(),
                mode: "replicated".into(),
                replicas: 2,
                command: vec![SECRET.into()],
                env: [("DB_PASSWORD".to_string(), SECRET.to_string())].into(),
                registry_auth: Some(pb::RegistryCredential {
                    registry: "r.example".into(),
                    username: SECRET.into(),
                    password: SECRET.into(),
                }),
                ..Default::default()
            }),
            running: 1,
            desired: 2,
            registry_auth_for: SECRET.into(),
            tasks: vec![task("t1", "web.1", "a1", pb::TaskState::Running)],
            ..Default::default()
        }],
        tasks: vec![
            task("t1", "web.1", "a1", pb::TaskState::Running),
            task("t9", "solo", "b2", pb::TaskState::Failed),
        ],
    }
}

#[test]
fn no_field_outside_the_allow_list_reaches_the_page() {
    let mut events = VecDeque::new();
    events.push_back(EventView::of(&pb::StoreEvent {
        index: 3,
        id: "s1".into(),
        r#type: pb::EventType::Service as i32,
        action: pb::EventAction::Create as i32,
        attributes: [
            ("name".to_string(), "web".to_string()),
            ("secret".to_string(), SECRET.to_string()),
        ]
        .into(),
        ..Default::default()
    }));
    let json = serde_json::to_string(&build(&inputs(), &events, 1_000_000)).unwrap();
    assert!(!json.contains(SECRET), "{json}");
    assert!(!json.contains("PASSWORD"), "{json}");
    assert!(
        !json.contains("cni-secret-path"),
        "a container's netns path: {json}"
    );
    assert!(json.contains("\"name\":\"web\""), "{json}");
}

#[test]
fn nodes_networks_services_and_tasks_are_sorted_and_flagged() {
    let s = build(&inputs(), &VecDeque::new(), 1_000_000);
    let hosts: Vec<_> = s.nodes.iter().map(|n| n.hostname.as_str()).collect();
    assert_eq!(hosts, ["m1", "w1"]);
    let (m1, w1) = (&s.nodes[0], &s.nodes[1]);
    assert!(m1.leader && m1.role == "manager");
    assert!(!m1.behind && !m1.stale_handshake);
    assert_eq!(m1.networks, ["sec"]);
    assert!(w1.behind, "applied 5 of 7");
    assert!(w1.stale_handshake, "400 s old");
    let p = &s.networks[0].peers[0];
    assert_eq!(p.handshake_age_ms, Some(5_000));
    assert_eq!(
        (s.networks[0].mtu, s.networks[0].mtu_limited_by.as_str()),
        (1370, "w1"),
        "the MTU and the node that sets it"
    );
    let eps: Vec<_> = s.networks[0]
        .endpoints
        .iter()
        .map(|e| format!("{} {} {}", e.name, e.ip, e.node))
        .collect();
    assert_eq!(
        eps,
        ["cni 0123456789ab 10.10.0.9 m1", "web.1 10.10.0.5 w1"],
        "endpoints by name; a foreign container by runtime and short ID"
    );
    let svc = &s.services[0];
    assert_eq!((svc.running, svc.desired), (1, 2));
    let t: Vec<_> = s
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), t.service.as_str(), t.state))
        .collect();
    assert_eq!(
        t,
        [("solo", "", "failed"), ("web.1", "web", "running")],
        "each task once, with its service"
    );
}

#[test]
fn a_peer_without_a_handshake_is_stale_only_on_encrypted_networks() {
    let mut i = inputs();
    i.networks[0].peers[0].last_handshake_ms = 0;
    let s = build(&i, &VecDeque::new(), 1_000_000);
    assert_eq!(s.networks[0].peers[0].handshake_age_ms, None);
    assert!(s.networks[0].peers[0].stale_handshake);
    i.networks[0].network.as_mut().unwrap().encrypted = false;
    let s = build(&i, &VecDeque::new(), 1_000_000);
    assert!(!s.networks[0].peers[0].stale_handshake);
    assert_eq!(s.networks[0].peers[0].handshake_age_ms, None);
}
