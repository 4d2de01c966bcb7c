//! Each limit: at the limit accepted, one over refused with a message
//! naming the field, the value and the limit.

use std::collections::BTreeMap;

use super::*;
use crate::store::{Command, NodeId, ServiceMode};
use crate::testing::{apply, cluster, network, node, spec};

/// The message of an `InvalidInput` error (panics on anything else).
fn invalid(r: Result<()>) -> String {
    match r {
        Err(Error::InvalidInput(m)) => m,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// The message of a `ResourceExhausted` error (panics on anything else).
fn exhausted(r: Result<()>) -> String {
    match r {
        Err(Error::ResourceExhausted(m)) => m,
        other => panic!("expected ResourceExhausted, got {other:?}"),
    }
}

#[test]
fn replicas() {
    super::replicas(MAX_REPLICAS).unwrap();
    assert_eq!(
        invalid(super::replicas(MAX_REPLICAS + 1)),
        "--replicas 10001 is over the limit of 10000 replicas per service"
    );
    assert_eq!(
        invalid(super::replicas(100_000_000)),
        "--replicas 100000000 is over the limit of 10000 replicas per service"
    );
}

#[test]
fn labels() {
    let at: BTreeMap<String, String> = (0..MAX_LABELS)
        .map(|i| (format!("k{i}"), "v".repeat(MAX_LABEL_VALUE_BYTES)))
        .collect();
    super::labels("node w1", at.len(), &at).unwrap();
    assert_eq!(
        invalid(super::labels("node w1", MAX_LABELS + 1, &at)),
        "labels of node w1: 129 labels is over the limit of 128 labels"
    );
    let long: BTreeMap<String, String> = [("zone".to_string(), "v".repeat(1025))].into();
    assert_eq!(
        invalid(super::labels("network n", 1, &long)),
        "value of label \"zone\": 1025 bytes is over the limit of 1024 bytes"
    );
}

#[test]
fn environment() {
    // At every limit at once: 256 variables, 65536 bytes of KEY=VALUE\0.
    let at: BTreeMap<String, String> = (0..MAX_ENV_VARS)
        .map(|i| {
            (
                format!("K{i:03}"),
                "v".repeat(MAX_ENV_BYTES / MAX_ENV_VARS - 6),
            )
        })
        .collect();
    assert_eq!(
        at.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>(),
        MAX_ENV_BYTES
    );
    super::env(&at).unwrap();
    let mut over = at.clone();
    over.insert("K999".into(), String::new());
    assert_eq!(
        invalid(super::env(&over)),
        "environment: 257 variables is over the limit of 256 variables"
    );
    let mut total = at.clone();
    total.get_mut("K000").unwrap().push('v');
    assert_eq!(
        invalid(super::env(&total)),
        "environment (KEY=VALUE strings): 65537 bytes is over the limit of 65536 bytes"
    );
    let value = |n| BTreeMap::from([("PEM".to_string(), "v".repeat(n))]);
    super::env(&value(MAX_ENV_VALUE_BYTES)).unwrap();
    assert_eq!(
        invalid(super::env(&value(MAX_ENV_VALUE_BYTES + 1))),
        "value of environment variable PEM: 32769 bytes is over the limit of 32768 bytes"
    );
    let key = |n| BTreeMap::from([("K".repeat(n), String::new())]);
    super::env(&key(MAX_ENV_KEY_BYTES)).unwrap();
    assert_eq!(
        invalid(super::env(&key(MAX_ENV_KEY_BYTES + 1))),
        "environment variable name: 257 bytes is over the limit of 256 bytes"
    );
    for bad in ["", "A=B", "A\0"] {
        let m = invalid(super::env(&BTreeMap::from([(
            bad.to_string(),
            String::new(),
        )])));
        assert!(m.contains("invalid environment variable name"), "{m}");
    }
}

#[test]
fn command_line() {
    // 1024 arguments of 63 bytes: 65536 bytes with their terminators.
    let at: Vec<String> = (0..MAX_COMMAND_ARGS).map(|_| "a".repeat(63)).collect();
    super::command(&at).unwrap();
    let mut more = at.clone();
    more.push(String::new());
    assert_eq!(
        invalid(super::command(&more)),
        "command: 1025 arguments is over the limit of 1024 arguments"
    );
    let mut longer = at.clone();
    longer[0].push('a');
    assert_eq!(
        invalid(super::command(&longer)),
        "command line: 65537 bytes is over the limit of 65536 bytes"
    );
}

#[test]
fn constraints() {
    let c = |k: usize, v: usize| -> Constraint {
        format!("node.labels.{}=={}", "k".repeat(k), "v".repeat(v))
            .parse()
            .unwrap()
    };
    super::constraint(&c(MAX_LABEL_KEY_BYTES, MAX_LABEL_VALUE_BYTES)).unwrap();
    assert_eq!(
        invalid(super::constraint(&c(MAX_LABEL_KEY_BYTES + 1, 1))),
        "label key in a constraint: 129 bytes is over the limit of 128 bytes"
    );
    let m = invalid(super::constraint(&c(1, MAX_LABEL_VALUE_BYTES + 1)));
    assert_eq!(
        m,
        "value of constraint on node.labels.k: 1025 bytes is over the limit of 1024 bytes"
    );
}

#[test]
fn durations() {
    cert_expiry(MIN_CERT_EXPIRY_SECS).unwrap();
    cert_expiry(MAX_CERT_EXPIRY_SECS).unwrap();
    assert_eq!(
        invalid(cert_expiry(MIN_CERT_EXPIRY_SECS - 1)),
        "--cert-expiry 3599s is too short: it must be at least 1h"
    );
    assert_eq!(
        invalid(cert_expiry(MAX_CERT_EXPIRY_SECS + 1)),
        "--cert-expiry 315360001s is over the limit of 3650d"
    );
    assert_eq!(
        invalid(cert_expiry(1_000_000 * 3600)),
        "--cert-expiry 1000000h is over the limit of 3650d"
    );
    for huge in [u64::MAX, i64::MAX as u64, 1 << 40] {
        assert!(invalid(cert_expiry(huge)).contains("over the limit of 3650d"));
        assert_eq!(
            cert_validity(huge).as_secs(),
            MAX_CERT_EXPIRY_SECS,
            "issuing clamps what the store may hold from before the limit"
        );
    }

    wg_key_rotation(0).unwrap();
    wg_key_rotation(MIN_WG_KEY_ROTATION_SECS).unwrap();
    wg_key_rotation(MAX_WG_KEY_ROTATION_SECS).unwrap();
    assert_eq!(
        invalid(wg_key_rotation(59)),
        "--wg-key-rotation 59s is too short: it must be at least 1m, or 0 to turn automatic rotation off"
    );
    assert_eq!(
        invalid(wg_key_rotation(MAX_WG_KEY_ROTATION_SECS + 86_400)),
        "--wg-key-rotation 366d is over the limit of 365d"
    );

    heartbeat_ms(MIN_HEARTBEAT_MS).unwrap();
    heartbeat_ms(MAX_HEARTBEAT_MS).unwrap();
    for bad in [MIN_HEARTBEAT_MS - 1, MAX_HEARTBEAT_MS + 1, u64::MAX] {
        let m = invalid(heartbeat_ms(bad));
        assert!(
            m.contains(&format!(
                "--heartbeat-period {bad}ms is outside the limits of 100ms to 60s"
            )),
            "{m}"
        );
    }
}

#[test]
fn reports_are_cut_at_a_character_boundary() {
    assert_eq!(cut_report("short".into()), "short");
    let s = "é".repeat(MAX_REPORT_MESSAGE_BYTES);
    let cut = cut_report(s);
    assert!(cut.len() <= MAX_REPORT_MESSAGE_BYTES && cut.len() >= MAX_REPORT_MESSAGE_BYTES - 1);
    assert!(cut.chars().all(|c| c == 'é'));
}

#[test]
fn cluster_counts_are_resource_exhausted_and_only_growth_is_refused() {
    // Networks: the cluster's own (default bridges, ingress) do not count.
    let mut s = cluster(2);
    for i in 0..MAX_NETWORKS {
        apply(&mut s, network(&format!("n{i}"), &format!("net{i}"), false));
    }
    let next = network("one-more", "one-more", false);
    let before = s.clone();
    assert_eq!(
        exhausted(admit(&s, &next)),
        "this would make 1001 networks in the cluster, over the limit of 1000 networks per cluster"
    );
    assert_eq!(s, before);
    admit(&s, &Command::RemoveNetwork { id: "n0".into() }).unwrap();

    // Services.
    let mut s = cluster(1);
    for i in 0..MAX_SERVICES {
        apply(
            &mut s,
            Command::CreateService {
                id: format!("s{i}"),
                spec: spec(&format!("svc{i}"), 0, &[]),
                now_ms: 0,
            },
        );
    }
    let m = exhausted(admit(
        &s,
        &Command::CreateService {
            id: "x".into(),
            spec: spec("x", 0, &[]),
            now_ms: 0,
        },
    ));
    assert_eq!(
        m,
        "this would make 1001 services in the cluster, over the limit of 1000 services per cluster"
    );

    // Tasks: replicas asked for count before the orchestrator creates them.
    let mut s = cluster(1);
    for i in 0..2 {
        apply(
            &mut s,
            Command::CreateService {
                id: format!("s{i}"),
                spec: spec(&format!("s{i}"), MAX_TASKS / 2, &[]),
                now_ms: 0,
            },
        );
    }
    assert_eq!(desired_tasks(&s), MAX_TASKS);
    let run = Command::CreateTask {
        ip6: Default::default(),
        aliases: Default::default(),
        id: "t".into(),
        name: "t".into(),
        node: NodeId(1),
        spec: Default::default(),
        networks: Vec::new(),
        standalone: true,
        now_ms: 0,
        network_mode: crate::store::NetworkMode::None,
        ports: Vec::new(),
    };
    assert_eq!(
        exhausted(admit(&s, &run)),
        "this would make 20001 tasks in the cluster, over the limit of 20000 tasks per cluster"
    );
    // Scaling down is never refused, even over a limit.
    let mut down = s.services["s0"].spec.clone();
    down.mode = ServiceMode::Replicated { replicas: 1 };
    admit(
        &s,
        &Command::UpdateService {
            id: "s0".into(),
            spec: down,
            force: false,
            now_ms: 0,
        },
    )
    .unwrap();

    // Nodes.
    let mut s = cluster(MAX_NODES as u64);
    let m = exhausted(admit(
        &s,
        &Command::AddNode {
            node: node(MAX_NODES as u64 + 1),
        },
    ));
    assert_eq!(
        m,
        format!(
            "this would make {} nodes in the cluster, over the limit of {MAX_NODES} nodes per cluster",
            MAX_NODES + 1
        )
    );
    apply(&mut s, Command::RemoveNode { id: NodeId(2) });
    admit(
        &s,
        &Command::AddNode {
            node: node(MAX_NODES as u64 + 1),
        },
    )
    .unwrap();
}

#[test]
fn a_command_the_store_refuses_fails_at_admission_with_the_store_error() {
    let s = cluster(1);
    let e = admit(&s, &Command::RemoveNetwork { id: "nope".into() }).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Store(crate::store::StoreError::NetworkNotFound(_))
        ),
        "{e:?}"
    );
}

#[test]
fn the_unsupported_node_limit_is_a_number_from_the_limit_up() {
    use std::ffi::OsStr;
    assert_eq!(unsupported_max_nodes(None).unwrap(), None);
    assert_eq!(
        unsupported_max_nodes(Some(OsStr::new("10004"))).unwrap(),
        Some(10_004)
    );
    assert_eq!(
        unsupported_max_nodes(Some(OsStr::new("5000"))).unwrap(),
        Some(MAX_NODES)
    );
    for bad in ["4999", "20001", "", "ten thousand", "-1", "1e4"] {
        let e = unsupported_max_nodes(Some(OsStr::new(bad))).unwrap_err();
        assert!(e.to_string().contains("from 5000 to 20000"), "{bad:?}: {e}");
    }
}
