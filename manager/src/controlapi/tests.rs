//! The operator API's input checks, against a real one-manager Raft group:
//! at each limit a request is accepted, over it refused with the right
//! code and a message naming the limit, and a refused request changes
//! nothing in the store.

use tonic::Code;

use super::*;
use crate::limits;
use crate::store::NodeId;
use crate::testing as fixtures;

#[test]
fn label_keys() {
    assert!(validate_label_key("zone").is_ok());
    assert!(validate_label_key("example.com/disk-type_2").is_ok());
    assert!(validate_label_key(&"k".repeat(limits::MAX_LABEL_KEY_BYTES)).is_ok());
    assert!(validate_label_key("").is_err());
    assert!(validate_label_key("a b").is_err());
    assert!(validate_label_key("k=v").is_err());
    assert_eq!(
        validate_label_key(&"k".repeat(limits::MAX_LABEL_KEY_BYTES + 1))
            .unwrap_err()
            .to_string(),
        "label key: 129 bytes is over the limit of 128 bytes"
    );
}

/// A manager's control API on the local socket.
struct Fixture {
    control: ControlService,
    core: Core,
    _dir: tempfile::TempDir,
}

async fn manager() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft = fixtures::single_manager(dir.path()).await;
    let core = Core::new(NodeId(1), raft);
    Fixture {
        control: ControlService::new(core.clone(), Caller::Local),
        core,
        _dir: dir,
    }
}

/// `weft service create --name NAME --replicas N -- sleep 1d`.
fn service(name: &str, replicas: u64) -> pb::ServiceSpecMsg {
    pb::ServiceSpecMsg {
        name: name.into(),
        replicas,
        command: vec!["sleep".into(), "1d".into()],
        ..Default::default()
    }
}

fn labels(n: usize, value: usize) -> std::collections::HashMap<String, String> {
    (0..n)
        .map(|i| (format!("k{i}"), "v".repeat(value)))
        .collect()
}

async fn create_service(c: &ControlService, spec: pb::ServiceSpecMsg) -> Result<(), Status> {
    Control::create_service(
        c,
        Request::new(pb::CreateServiceRequest { spec: Some(spec) }),
    )
    .await
    .map(drop)
}

async fn update_service(c: &ControlService, r: pb::UpdateServiceRequest) -> Result<(), Status> {
    Control::update_service(c, Request::new(r)).await.map(drop)
}

async fn create_network(c: &ControlService, r: pb::CreateNetworkRequest) -> Result<(), Status> {
    Control::create_network(c, Request::new(r)).await.map(drop)
}

async fn update_node(c: &ControlService, r: pb::UpdateNodeRequest) -> Result<(), Status> {
    Control::update_node(c, Request::new(r)).await.map(drop)
}

async fn set_cert_expiry(c: &ControlService, secs: u64) -> Result<(), Status> {
    let r = pb::UpdateClusterRequest {
        set_cert_expiry: true,
        cert_expiry_secs: secs,
        ..Default::default()
    };
    Control::update_cluster(c, Request::new(r)).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limits_accepted_over_them_refused_and_nothing_changes() {
    let f = manager().await;
    let c = &f.control;

    // At the limits: accepted.
    create_service(c, service("wide", limits::MAX_REPLICAS))
        .await
        .expect("10000 replicas");
    create_network(
        c,
        pb::CreateNetworkRequest {
            name: "app".into(),
            labels: labels(limits::MAX_LABELS, limits::MAX_LABEL_VALUE_BYTES),
            ..Default::default()
        },
    )
    .await
    .expect("128 labels of 1024 bytes");
    update_node(
        c,
        pb::UpdateNodeRequest {
            node: "self".into(),
            label_add: labels(limits::MAX_LABELS, 1),
            ..Default::default()
        },
    )
    .await
    .expect("128 node labels");
    set_cert_expiry(c, limits::MAX_CERT_EXPIRY_SECS)
        .await
        .expect("10 years");

    // Over them: refused, and the store stays as it is.
    let before = f.core.read(|s| s.clone());
    let with = |edit: &dyn Fn(&mut pb::ServiceSpecMsg)| {
        let mut m = service("web", 1);
        edit(&mut m);
        m
    };
    let invalid = Code::InvalidArgument;
    let cases: Vec<(Result<(), Status>, Code, &str)> = vec![
        (
            create_service(c, service("web", 100_000_000)).await,
            invalid,
            "--replicas 100000000 is over the limit of 10000 replicas per service",
        ),
        (
            create_service(c, service(&"w".repeat(64), 1)).await,
            invalid,
            "service name: 64 bytes is over the limit of 63 bytes",
        ),
        (
            create_service(
                c,
                with(&|m| m.env = (0..257).map(|i| (format!("V{i}"), "x".into())).collect()),
            )
            .await,
            invalid,
            "environment: 257 variables is over the limit of 256 variables",
        ),
        (
            create_service(
                c,
                with(&|m| {
                    m.env = [("PEM".to_string(), "x".repeat(32 * 1024 + 1))].into();
                }),
            )
            .await,
            invalid,
            "value of environment variable PEM: 32769 bytes is over the limit of 32768 bytes",
        ),
        (
            create_service(c, with(&|m| m.command = vec!["a".into(); 1025])).await,
            invalid,
            "command: 1025 arguments is over the limit of 1024 arguments",
        ),
        (
            create_service(c, with(&|m| m.networks = vec!["app".into(); 17])).await,
            invalid,
            "--network: 17 networks is over the limit of 16 networks",
        ),
        (
            create_service(
                c,
                with(&|m| m.constraints = vec!["node.role==worker".into(); 33]),
            )
            .await,
            invalid,
            "--constraint: 33 constraints is over the limit of 32 constraints",
        ),
        (
            create_service(
                c,
                with(&|m| m.constraints = vec![format!("node.labels.zone=={}", "a".repeat(1025))]),
            )
            .await,
            invalid,
            "value of constraint on node.labels.zone: 1025 bytes is over the limit of 1024 bytes",
        ),
        (
            create_service(
                c,
                with(&|m| {
                    m.ports = vec![
                        pb::PortMapping {
                            target: 80,
                            ..Default::default()
                        };
                        65
                    ]
                }),
            )
            .await,
            invalid,
            "--publish: 65 ports is over the limit of 64 ports",
        ),
        (
            // Every replica of it could end up on one node, whose config
            // would then be over the limit.
            create_service(
                c,
                with(&|m| {
                    m.replicas = limits::MAX_REPLICAS;
                    m.networks = vec!["app".into()];
                    // 10,000 replicas of a 1 KB command line: 10 MB.
                    m.command = vec!["x".repeat(1000)];
                }),
            )
            .await,
            Code::ResourceExhausted,
            "over the limit of 6291456 bytes per node config",
        ),
        (
            update_service(
                c,
                pb::UpdateServiceRequest {
                    service: "wide".into(),
                    set_replicas: true,
                    replicas: limits::MAX_REPLICAS + 1,
                    ..Default::default()
                },
            )
            .await,
            invalid,
            "--replicas 10001 is over the limit of 10000 replicas per service",
        ),
        (
            update_service(
                c,
                pb::UpdateServiceRequest {
                    service: "wide".into(),
                    network_add: vec!["app".into(); 17],
                    ..Default::default()
                },
            )
            .await,
            invalid,
            "--network-add: 17 networks is over the limit of 16 networks",
        ),
        (
            update_service(
                c,
                pb::UpdateServiceRequest {
                    service: "wide".into(),
                    env_add: (0..200)
                        .map(|i| (format!("V{i:03}"), "x".repeat(400)))
                        .collect(),
                    ..Default::default()
                },
            )
            .await,
            invalid,
            "environment (KEY=VALUE strings): 81200 bytes is over the limit of 65536 bytes",
        ),
        (
            create_network(
                c,
                pb::CreateNetworkRequest {
                    name: "db".into(),
                    labels: labels(limits::MAX_LABELS + 1, 1),
                    ..Default::default()
                },
            )
            .await,
            invalid,
            "labels of network db: 129 labels is over the limit of 128 labels",
        ),
        (
            create_network(
                c,
                pb::CreateNetworkRequest {
                    name: "db".into(),
                    labels: [("zone".to_string(), "v".repeat(10 << 20))].into(),
                    ..Default::default()
                },
            )
            .await,
            invalid,
            "value of label \"zone\": 10485760 bytes is over the limit of 1024 bytes",
        ),
        (
            update_node(
                c,
                pb::UpdateNodeRequest {
                    node: "self".into(),
                    label_add: [("one-more".to_string(), "v".into())].into(),
                    ..Default::default()
                },
            )
            .await,
            invalid,
            "labels of node host-1: 129 labels is over the limit of 128 labels",
        ),
        (
            set_cert_expiry(c, 1_000_000 * 3600).await,
            invalid,
            "--cert-expiry 1000000h is over the limit of 3650d",
        ),
        (
            set_cert_expiry(c, u64::MAX).await,
            invalid,
            "--cert-expiry 18446744073709551615s is over the limit of 3650d",
        ),
        (
            Control::update_cluster(
                c,
                Request::new(pb::UpdateClusterRequest {
                    set_wg_key_rotation: true,
                    wg_key_rotation_secs: 366 * 86_400,
                    ..Default::default()
                }),
            )
            .await
            .map(drop),
            invalid,
            "--wg-key-rotation 366d is over the limit of 365d",
        ),
    ];
    for (got, code, want) in cases {
        let st = got.expect_err(want);
        assert_eq!(st.code(), code, "{want}: {st:?}");
        assert!(st.message().contains(want), "want {want:?}, got {st:?}");
    }
    assert!(
        f.core.read(|s| *s == before),
        "a refused request changed the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_the_raft_entry_cap_is_refused_before_raft() {
    let f = manager().await;
    let before = f.core.read(|s| s.clone());
    let index = f.core.raft().metrics().last_log_index;
    let e = f
        .core
        .propose(Command::UpdateNode {
            id: NodeId(1),
            availability: None,
            label_add: [("big".to_string(), "v".repeat(limits::MAX_RAFT_ENTRY_BYTES))].into(),
            label_rm: Vec::new(),
            now_ms: 0,
        })
        .await
        .unwrap_err();
    let st = Status::from(e);
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message()
            .contains("bytes as a Raft command, over the limit of 1048576 bytes per command"),
        "{st:?}"
    );
    assert_eq!(
        f.core.raft().metrics().last_log_index,
        index,
        "nothing logged"
    );
    assert!(f.core.read(|s| *s == before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_commands_are_batched_under_the_entry_cap() {
    let f = manager().await;
    let index = f.core.raft().metrics().last_log_index.unwrap_or(0);
    // Four commands of 600 KB proposed at once: one log entry each (two
    // would exceed the cap), all applied.
    let writes = (0..4).map(|i| {
        f.core.propose(Command::UpdateNode {
            id: NodeId(1),
            availability: None,
            label_add: [(format!("k{i}"), "v".repeat(600_000))].into(),
            label_rm: Vec::new(),
            now_ms: 0,
        })
    });
    for r in futures::future::join_all(writes).await {
        r.expect("applied");
    }
    assert_eq!(
        f.core.raft().metrics().last_log_index,
        Some(index + 4),
        "one entry per command"
    );
    assert_eq!(f.core.read(|s| s.nodes[&NodeId(1)].labels.len()), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_auth_is_sealed_and_bad_credentials_change_nothing() {
    let f = manager().await;
    let c = &f.control;
    let cred = |registry: &str, password: &str| pb::RegistryCredential {
        registry: registry.into(),
        username: "alice".into(),
        password: password.into(),
    };
    let with_auth = |name: &str, auth: pb::RegistryCredential| pb::ServiceSpecMsg {
        container: Some(pb::ContainerConfig {
            image: "127.0.0.1:5000/team/app:1".into(),
            ..Default::default()
        }),
        command: Vec::new(),
        registry_auth: Some(auth),
        ..service(name, 1)
    };

    // Bad credentials: refused, nothing stored.
    let before = f.core.read(|s| s.clone());
    let long = "p".repeat(weft_proto::credential::MAX_PASSWORD + 1);
    for (spec, why) in [
        (
            with_auth("a", cred("127.0.0.1:5000", &long)),
            "over the limit",
        ),
        (
            with_auth("b", cred("docker.io", "pw")),
            "the image is from 127.0.0.1:5000",
        ),
        (
            with_auth("c", cred("127.0.0.1:5000", "")),
            "password is empty",
        ),
        (
            with_auth("d", cred("http://x/y", "pw")),
            "not a registry name",
        ),
        (
            pb::ServiceSpecMsg {
                registry_auth: Some(cred("127.0.0.1:5000", "pw")),
                ..service("e", 1)
            },
            "no image",
        ),
    ] {
        let e = create_service(c, spec).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    }
    assert!(
        f.core.read(|s| *s == before),
        "a refused request changed the store"
    );

    // Good ones: sealed in the store, shown as the registry only.
    create_service(c, with_auth("priv", cred("127.0.0.1:5000", "Sup3rSecret")))
        .await
        .expect("created");
    let stored = f.core.read(|s| serde_json::to_string(s).expect("json"));
    assert!(
        !stored.contains("Sup3rSecret"),
        "the password is in the store"
    );
    assert!(
        stored.contains("weft-sealed-1:"),
        "no sealed blob in the store"
    );
    let shown = f.core.read(|s| {
        let svc = s.resolve_service("priv").expect("service");
        crate::convert::service_to_wire(s, svc)
    });
    assert_eq!(shown.registry_auth_for, "127.0.0.1:5000");
    assert!(shown.spec.expect("spec").registry_auth.is_none());
    let sealed = |f: &Fixture| {
        f.core.read(|s| {
            s.resolve_service("priv")
                .expect("service")
                .spec
                .registry_auth
                .clone()
                .expect("auth")
        })
    };
    let first = sealed(&f);
    let key = crate::registry_auth::data_key(&f.core.secrets().expect("secrets"));
    let svc_id = f
        .core
        .read(|s| s.resolve_service("priv").expect("service").id.clone());
    let opened = crate::registry_auth::open(&key, &svc_id, &first).expect("opens");
    assert_eq!(opened.password, "Sup3rSecret");

    // update --with-registry-auth replaces them.
    update_service(
        c,
        pb::UpdateServiceRequest {
            service: "priv".into(),
            registry_auth: Some(cred("127.0.0.1:5000", "N3wSecret")),
            ..Default::default()
        },
    )
    .await
    .expect("updated");
    let second = sealed(&f);
    assert_ne!(first, second);
    let opened = crate::registry_auth::open(&key, &svc_id, &second).expect("opens");
    assert_eq!(opened.password, "N3wSecret");
}
