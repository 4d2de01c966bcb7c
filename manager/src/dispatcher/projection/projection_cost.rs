//! What re-projecting every node's config costs the leader at 4,990
//! nodes with one 499-replica service (a replica on every tenth node): the
//! dispatcher does this on every store change (BENCHMARKS.md, "Scale").
//! `cargo test --release -p weft-manager --lib projection_cost -- --ignored --nocapture`

use super::*;
use crate::testing::*;

#[test]
#[ignore = "a measurement: run it in release, alone"]
fn projecting_every_node_at_5000_nodes() {
    measure(499, 10, usize::MAX, true, false);
}

/// The same service publishing a port through the ingress network,
/// which every node then takes part in.
#[test]
#[ignore = "a measurement: run it in release, alone"]
fn projecting_every_node_at_5000_nodes_with_an_ingress_port() {
    measure(499, 10, usize::MAX, true, true);
}

/// The same, for a store change that leaves the network as it was.
#[test]
#[ignore = "a measurement: run it in release, alone"]
fn projecting_every_node_at_5000_nodes_after_a_change_elsewhere() {
    measure(499, 10, usize::MAX, false, false);
}

/// The same with a replica on every node (a global service): every
/// node's config lists every other node's endpoint.
#[test]
#[ignore = "a measurement: run it in release, alone"]
fn projecting_every_node_at_5000_nodes_with_a_global_service() {
    measure(4990, 1, 200, true, false);
}

/// `replicas` replicas, one on every `every`th node; each round also
/// makes what a session makes of its new config: the comparison with
/// the last one sent and the delta from it. Only the first `sample`
/// nodes are projected (each config of a global service at 5,000 nodes
/// is over a megabyte); the figures are for those. `touch_network`:
/// the store change is to the service's network, or elsewhere.
/// `ingress`: the service publishes port 8080 through the ingress
/// network.
fn measure(replicas: u64, every: u64, sample: usize, touch_network: bool, ingress: bool) {
    let mut s = cluster(4990);
    let mut net = network_spec("net1", "appnet");
    net.subnet = Some("10.20.0.0/16".parse().expect("literal"));
    apply(&mut s, crate::store::Command::CreateNetwork { spec: net });
    let mut web = spec("web", replicas, &["net1"]);
    if ingress {
        web.ports = vec![port(8080, crate::store::PublishMode::Ingress)];
    }
    apply(
        &mut s,
        crate::store::Command::CreateService {
            id: "svc".into(),
            spec: web,
            now_ms: 0,
        },
    );
    for i in 0..replicas {
        place(&mut s, "svc", i + 1, 1, i * every + 1);
    }
    let members: std::collections::BTreeSet<NodeId> = s.tasks.values().map(|t| t.node).collect();
    let first = shared(&s);
    let before = (s.nodes.keys().take(sample))
        .map(|id| (*id, project_parts(&s, *id, 1, &first)))
        .collect::<HashMap<_, _>>();
    if touch_network {
        // One replica stops serving: every member's backends change.
        let gone = s.tasks.keys().next().expect("a task").clone();
        s.tasks.get_mut(&gone).expect("the task").status.state = crate::store::TaskState::Failed;
    } else {
        // A node's underlay MTU, raised above the others': the
        // network's MTU, their minimum, stays.
        s.nodes.values_mut().next().expect("a node").underlay_mtu = 9000;
    }
    let mut bytes = 0;
    for round in 0..3 {
        let (mut on, mut off) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        let mut session = std::time::Duration::ZERO;
        // Made once per store version, after the earlier version's,
        // as the dispatcher does; the networks' parts in it are made
        // by the first member's call.
        let parts = shared_after(&s, Some(&first));
        for id in s.nodes.keys().take(sample) {
            let t = std::time::Instant::now();
            let c = project_parts(&s, *id, 2, &parts);
            if members.contains(id) {
                on += t.elapsed();
            } else {
                off += t.elapsed();
            }
            // What the session does next (DispatcherService::delta_for).
            let t = std::time::Instant::now();
            if let (Some(old), Some(new)) = (&before[id], &c)
                && !old.same_as(new, &parts)
            {
                let (old_c, new_c) = old.changed_pair(new, &parts);
                let d = weft_proto::config_delta::diff(&old_c, &new_c).expect("canonical");
                std::hint::black_box(d);
            }
            session += t.elapsed();
            if round == 0 {
                bytes = bytes.max(
                    c.as_ref()
                        .map_or(0, |c| prost::Message::encoded_len(&c.whole())),
                );
            }
        }
        let projected = s.nodes.len().min(sample);
        let on_n = members.iter().filter(|m| before.contains_key(m)).count();
        eprintln!(
            "round {round}: {projected} nodes {:?}: the {on_n} with a replica {:?} ({:?} each), the {} others {:?}; comparing and diffing {:?} ({:?} each); largest config {bytes} bytes",
            on + off,
            on,
            on / on_n.max(1) as u32,
            projected - on_n,
            off,
            session,
            session / projected as u32,
        );
    }
}
