//! Test fixtures: cluster records, specs and whole states built through
//! [`State::apply`] as the managers build them, and a one-manager Raft
//! group.

use std::collections::BTreeMap;

use crate::store::{
    Cluster, ClusterSettings, Command, EndpointMode, NetworkSpec, Node, NodeId, NodeState,
    PortProto, PortRequest, PublishMode, RestartCondition, Role, ServiceMode, ServiceSpec, State,
    TaskHealth, TaskSpec, TaskState, TaskStatus,
};

/// A ready node with an underlay address and an MTU.
pub fn node(i: u64) -> Node {
    Node {
        id: NodeId(i),
        hostname: format!("host-{i}"),
        role: if i == 1 { Role::Manager } else { Role::Worker },
        state: NodeState::Ready,
        addr: format!("198.18.{}.{}:4377", i / 250, i % 250 + 1),
        data_path_addr: format!("198.18.{}.{}", i / 250, i % 250 + 1),
        underlay_mtu: 1500,
        ..Default::default()
    }
}

/// A cluster record with default settings and no CA.
pub fn cluster_record() -> Cluster {
    Cluster {
        id: "c".into(),
        ca_cert_pem: String::new(),
        ca_key_pem: String::new(),
        worker_secret: String::new(),
        manager_secret: String::new(),
        settings: ClusterSettings::default(),
        sealed: None,
        secrets_generation: 0,
    }
}

/// Creates the cluster with [`node`] 1 as its manager.
pub fn init() -> Command {
    Command::InitCluster {
        cluster: cluster_record(),
        node: node(1),
    }
}

/// A cluster of `nodes` ready nodes (IDs 1..=nodes), each with a
/// WireGuard key and a default bridge.
pub fn cluster(nodes: u64) -> State {
    let mut s = State::default();
    apply(&mut s, init());
    for i in 2..=nodes {
        apply(&mut s, Command::AddNode { node: node(i) });
    }
    for i in 1..=nodes {
        apply(
            &mut s,
            Command::SetNodeWgKey {
                id: NodeId(i),
                public_key: format!("{i:0>43}="),
                now_ms: 0,
            },
        );
        apply(
            &mut s,
            Command::SetNodeBridge {
                node: NodeId(i),
                network_id: bridge(i),
                subnet: "172.17.0.0/16".parse().expect("literal"),
                now_ms: 0,
            },
        );
    }
    s
}

/// Applies `cmd`, which must succeed.
pub fn apply(s: &mut State, cmd: Command) {
    if let Err(e) = s.apply(&cmd) {
        // Not the command itself: at the limits it is megabytes long.
        panic!("a fixture command was refused: {e}");
    }
}

/// The ID of node `n`'s default bridge.
pub fn bridge(n: u64) -> String {
    format!("bridge{n:010}")
}

/// An attachable swarm overlay with a subnet from the pools.
pub fn network_spec(id: &str, name: &str) -> NetworkSpec {
    NetworkSpec {
        no_ipv4: false,
        ipv6: false,
        subnet6: None,
        gateway6: None,
        ip_range6: None,
        aux_addresses: Default::default(),
        id: id.into(),
        name: name.into(),
        subnet: None,
        gateway: None,
        ip_range: None,
        internal: false,
        attachable: true,
        mtu: None,
        labels: BTreeMap::new(),
        now_ms: 0,
        encrypted: false,
        driver: String::new(),
        node: None,
    }
}

/// Creates [`network_spec`], encrypted or not.
pub fn network(id: &str, name: &str, encrypted: bool) -> Command {
    Command::CreateNetwork {
        spec: NetworkSpec {
            aux_addresses: Default::default(),
            encrypted,
            ..network_spec(id, name)
        },
    }
}

/// A replicated VIP service running `sleep 1d` on `networks`.
pub fn spec(name: &str, replicas: u64, networks: &[&str]) -> ServiceSpec {
    ServiceSpec {
        network_aliases: Default::default(),
        registry_auth: None,
        update: Default::default(),
        rollback: Default::default(),
        labels: Default::default(),
        restart_policy: Default::default(),
        name: name.into(),
        mode: ServiceMode::Replicated { replicas },
        task: TaskSpec {
            command: vec!["sleep".into(), "1d".into()],
            env: BTreeMap::new(),
            container: None,
            stop: Default::default(),
            resources: Default::default(),
            log: None,
            health: None,
            auto_remove: false,
            external: None,
        },
        networks: networks.iter().map(|n| n.to_string()).collect(),
        endpoint_mode: EndpointMode::Vip,
        constraints: Vec::new(),
        restart: RestartCondition::Any,
        ports: Vec::new(),
    }
}

/// A TCP port to publish.
pub fn port(published: u16, mode: PublishMode) -> PortRequest {
    PortRequest {
        proto: PortProto::Tcp,
        published,
        target: 80,
        mode,
    }
}

/// Creates `count` tasks of `service` in slots `first..` on `node`, each
/// reported running.
pub fn place(s: &mut State, service: &str, first: u64, count: u64, node: u64) {
    for slot in first..first + count {
        let id = format!("{service}-{slot:06}-{node:04}");
        apply(
            s,
            Command::CreateServiceTask {
                restart_history: Vec::new(),
                id: id.clone(),
                service: service.into(),
                slot,
                node: NodeId(node),
                now_ms: 0,
                restarts: 0,
            },
        );
        running(s, &id, node);
    }
}

/// Reports task `id` running on `node`.
pub fn running(s: &mut State, id: &str, node: u64) {
    apply(
        s,
        Command::SetTaskStatus {
            id: id.into(),
            node: NodeId(node),
            status: TaskStatus::new(TaskState::RUNNING, 0),
        },
    );
}

/// One task state of each kind, with and without its details.
pub fn task_states() -> Vec<TaskState> {
    vec![
        TaskState::New,
        TaskState::pending(),
        TaskState::Pending {
            reason: "no suitable node".into(),
        },
        TaskState::Pulling,
        TaskState::Starting,
        TaskState::RUNNING,
        TaskState::Running {
            health: TaskHealth::Starting,
        },
        TaskState::Running {
            health: TaskHealth::Healthy,
        },
        TaskState::Running {
            health: TaskHealth::Unhealthy,
        },
        TaskState::Exited {
            code: Some(3),
            oom: false,
        },
        TaskState::Exited {
            code: None,
            oom: false,
        },
        TaskState::Exited {
            code: Some(137),
            oom: true,
        },
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Shutdown,
    ]
}

/// A one-manager Raft group in `dir` holding [`init`]'s cluster: the write
/// path as a daemon runs it, without the network.
pub async fn single_manager(dir: &std::path::Path) -> crate::raft::RaftHandle {
    let raft = crate::raft::RaftHandle::open(
        dir,
        NodeId(1),
        crate::raft::RaftSettings::default(),
        crate::raft::plaintext_channel_factory(),
    )
    .await
    .expect("open Raft");
    raft.initialize_single("127.0.0.1:4377")
        .await
        .expect("initialize");
    raft.propose(init())
        .await
        .expect("propose")
        .expect("init applies");
    raft
}
