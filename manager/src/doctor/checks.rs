//! The doctor's checks over the store and Raft's metrics: pure functions of
//! what this manager holds, so they are tested without a cluster.

use std::collections::BTreeMap;

use crate::raft::RaftMetricsView;
use crate::store::{Node, NodeId, NodeState, Role, State};

use super::Check;

/// Entries a follower may trail the leader's log by before it is reported
/// (a busy leader's followers trail by a batch or two).
pub const LAG_WARN_ENTRIES: u64 = 1000;

/// A leader without a majority's acknowledgement for this long has lost
/// its quorum (it sends heartbeats every 250 ms; followers call an election
/// after 1-2 s without them).
pub const QUORUM_ACK_FAIL_MS: u64 = 3000;

/// A node certificate with less than this share of its life left should
/// have been renewed (nodes renew at 50–80%).
const CERT_LEFT_WARN_PERCENT: i128 = 15;

/// The node's name for the table: its host name, else its ID.
pub fn name(n: &Node) -> String {
    if n.hostname.is_empty() {
        n.id.to_string()
    } else {
        n.hostname.clone()
    }
}

/// Their names, sorted (the table reads the same on every run).
fn names(nodes: &[&Node]) -> String {
    let mut v: Vec<String> = nodes.iter().map(|n| name(n)).collect();
    v.sort();
    v.join(", ")
}

/// Two nodes advertising the same manager address, or the same data-path
/// address (VTEP): the managers reach the wrong node, VXLAN packets go to
/// one of the two.
pub fn addresses(s: &State) -> Vec<Check> {
    let mut out = Vec::new();
    let mut by_addr: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    let mut by_vtep: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    for n in s.nodes.values() {
        by_addr.entry(n.addr.as_str()).or_default().push(n);
        by_vtep
            .entry(n.data_path_addr.as_str())
            .or_default()
            .push(n);
    }
    let mut dup = false;
    for (addr, nodes) in by_addr.iter().filter(|(_, v)| v.len() > 1) {
        dup = true;
        out.push(Check::fail(
            "advertise-addr",
            names(nodes),
            format!("{} nodes advertise {addr}", nodes.len()),
            format!(
                "give each node its own address: on all but one of them run `weft leave`, then \
                 `weft join --advertise-addr ADDR` with an address of that host (not {addr})"
            ),
        ));
    }
    if !dup {
        out.push(Check::ok(
            "advertise-addr",
            "",
            format!("{} nodes, each with its own address", s.nodes.len()),
        ));
    }
    let mut dup = false;
    for (addr, nodes) in by_vtep.iter().filter(|(_, v)| v.len() > 1) {
        dup = true;
        out.push(Check::fail(
            "data-path-addr",
            names(nodes),
            format!(
                "{} nodes use {addr} for VXLAN: overlay traffic for them goes to one",
                nodes.len()
            ),
            format!(
                "give each node its own data-path address: on all but one of them run `weft \
                 leave`, then join again with `--data-path-addr` (or `--advertise-addr`) set to \
                 an address of that host (not {addr})"
            ),
        ));
    }
    if !dup {
        out.push(Check::ok(
            "data-path-addr",
            "",
            format!("{} nodes, each with its own VTEP", s.nodes.len()),
        ));
    }
    out
}

/// Raft: a leader, a reachable majority of voters, and (on the leader)
/// how far each member's log trails.
pub fn raft(m: &RaftMetricsView, s: &State) -> Vec<Check> {
    let mut out = Vec::new();
    let label = |id: &NodeId| s.nodes.get(id).map(name).unwrap_or_else(|| id.to_string());
    let voters = m.voters.len();
    let need = voters / 2 + 1;
    let up: Vec<&NodeId> = m
        .voters
        .keys()
        .filter(|id| **id == m.id || s.nodes.get(id).is_some_and(|n| n.state == NodeState::Ready))
        .collect();
    let down: Vec<String> = m
        .voters
        .keys()
        .filter(|id| !up.contains(id))
        .map(label)
        .collect();
    // The store's node states cannot change without a quorum, so on the
    // leader Raft's own acknowledgements say whether a majority answers.
    let acked = m.millis_since_quorum_ack;
    let leading = m.leader == Some(m.id);
    if leading && voters > 1 && acked.is_none_or(|ms| ms > QUORUM_ACK_FAIL_MS) {
        let since = acked.map_or("since it took over".to_string(), |ms| {
            format!("for {} s", ms / 1000)
        });
        out.push(Check::fail(
            "raft-quorum",
            "",
            format!("no majority of the {voters} managers has answered this leader {since}"),
            "bring managers back until a majority runs (check their daemons and TCP 4377 \
             between them); if they are lost for good, run `weft init --force-new-cluster` \
             on this one",
        ));
        out.extend(lag(m, &label));
        return out;
    }
    match m.leader {
        None => out.push(Check::fail(
            "raft-quorum",
            "",
            format!("no leader ({} of {voters} managers reachable)", up.len()),
            "bring managers back until a majority runs; if they are lost for good, run \
             `weft init --force-new-cluster` on the one that has the newest state",
        )),
        Some(_) if up.len() < need => out.push(Check::fail(
            "raft-quorum",
            "",
            format!(
                "{} of {voters} managers are up, {need} are needed; down: {}",
                up.len(),
                down.join(", ")
            ),
            "bring the managers that are down back, or remove them (`weft node demote`, \
             `weft node rm`) once the others have a majority",
        )),
        Some(l) if !down.is_empty() => out.push(Check::warn(
            "raft-quorum",
            "",
            format!(
                "leader {}; {} of {voters} managers up, down: {}",
                label(&l),
                up.len(),
                down.join(", ")
            ),
            "bring the managers that are down back: one more loss may stop the cluster",
        )),
        Some(l) => out.push(Check::ok(
            "raft-quorum",
            "",
            format!("leader {}; all {voters} managers up", label(&l)),
        )),
    }
    out.extend(lag(m, &label));
    out
}

/// Replication lag per member, as the leader sees it.
fn lag(m: &RaftMetricsView, label: &dyn Fn(&NodeId) -> String) -> Vec<Check> {
    if m.leader != Some(m.id) {
        return vec![Check::warn(
            "raft-lag",
            "",
            "not checked: only the leader knows each manager's lag",
            "run `weft doctor` on the leader (or on a worker, whose doctor asks the leader)",
        )];
    }
    let last = m.last_log_index.unwrap_or(0);
    let mut out = Vec::new();
    for id in m.voters.keys().chain(m.learners.keys()) {
        if *id == m.id {
            continue;
        }
        match m.matched.get(id).copied().flatten() {
            None => out.push(Check::fail(
                "raft-lag",
                label(id),
                "has not answered the leader since it took over",
                "check that the manager runs and that the leader reaches its manager port",
            )),
            Some(held) if last.saturating_sub(held) > LAG_WARN_ENTRIES => out.push(Check::warn(
                "raft-lag",
                label(id),
                format!(
                    "{} entries behind the leader ({held} of {last})",
                    last - held
                ),
                "check the manager's disk and network; a lagging manager slows nothing \
                     now but cannot take over quickly",
            )),
            Some(held) => out.push(Check::ok(
                "raft-lag",
                label(id),
                format!("{} entries behind the leader", last.saturating_sub(held)),
            )),
        }
    }
    out
}

/// Node certificates: expired, or close to expiry (their renewal failed).
pub fn certificates(s: &State, now: time::OffsetDateTime) -> Vec<Check> {
    let validity = s
        .cluster
        .as_ref()
        .map(|c| crate::limits::cert_validity(c.settings.cert_expiry_secs))
        .unwrap_or(crate::ca::DEFAULT_NODE_CERT_VALIDITY);
    let life_s = i128::from(validity.as_secs().max(1) as i64);
    let mut out = Vec::new();
    let mut fine = 0;
    for n in s.nodes.values() {
        let Ok(expiry) = time::OffsetDateTime::parse(
            &n.cert_expiry,
            &time::format_description::well_known::Rfc3339,
        ) else {
            out.push(Check::warn(
                "cert-expiry",
                name(n),
                format!(
                    "not checked: no certificate expiry recorded ({:?})",
                    n.cert_expiry
                ),
                "the node renews its certificate on its own; check its daemon log",
            ));
            continue;
        };
        let left_s = i128::from((expiry - now).whole_seconds());
        let renew = match n.role {
            Role::Manager => "its manager",
            Role::Worker => "the managers",
        };
        if left_s <= 0 {
            out.push(Check::fail(
                "cert-expiry",
                name(n),
                format!("its certificate expired at {}", n.cert_expiry),
                format!(
                    "the node cannot renew an expired certificate: on it run `weft leave \
                     --force`, then join again with a token (`weft join-token`); check why \
                     renewal with {renew} failed (clock, reachability)"
                ),
            ));
        } else if left_s * 100 < life_s * CERT_LEFT_WARN_PERCENT {
            out.push(Check::warn(
                "cert-expiry",
                name(n),
                format!(
                    "its certificate expires at {} and was not renewed",
                    n.cert_expiry
                ),
                format!(
                    "nodes renew at 50-80% of the certificate's life: check the node's daemon \
                     log and that it reaches {renew}"
                ),
            ));
        } else {
            fine += 1;
        }
    }
    if fine > 0 {
        out.push(Check::ok(
            "cert-expiry",
            "",
            format!("{fine} node certificates valid for more than {CERT_LEFT_WARN_PERCENT}% of their life"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn node(id: u64, host: &str, addr: &str, vtep: &str) -> Node {
        Node {
            id: NodeId(id),
            hostname: host.into(),
            addr: format!("{addr}:4377"),
            data_path_addr: vtep.into(),
            state: NodeState::Ready,
            role: Role::Worker,
            ..Default::default()
        }
    }

    fn state(nodes: Vec<Node>) -> State {
        let mut s = State::default();
        for n in nodes {
            s.nodes.insert(n.id, n);
        }
        s
    }

    fn statuses(v: &[Check], check: &str) -> Vec<Status> {
        v.iter()
            .filter(|c| c.check == check)
            .map(|c| c.status)
            .collect()
    }

    #[test]
    fn distinct_addresses_are_ok_and_a_shared_one_fails_naming_both_nodes() {
        let s = state(vec![
            node(1, "h1", "198.18.0.1", "198.18.0.1"),
            node(2, "h2", "198.18.0.2", "198.18.0.2"),
        ]);
        let v = addresses(&s);
        assert_eq!(statuses(&v, "advertise-addr"), [Status::Ok]);
        assert_eq!(statuses(&v, "data-path-addr"), [Status::Ok]);

        let s = state(vec![
            node(1, "h1", "198.18.0.1", "198.18.0.1"),
            node(2, "h2", "198.18.0.2", "198.18.0.2"),
            node(3, "h3", "198.18.0.2", "198.18.0.2"),
        ]);
        let v = addresses(&s);
        let f: Vec<&Check> = v.iter().filter(|c| c.status == Status::Fail).collect();
        assert_eq!(f.len(), 2, "{v:#?}");
        assert_eq!(f[0].check, "advertise-addr");
        assert_eq!(f[0].subject, "h2, h3");
        assert!(f[0].hint.contains("weft leave"), "{}", f[0].hint);
        assert_eq!(f[1].check, "data-path-addr");
        assert!(f[1].detail.contains("198.18.0.2"));
    }

    #[test]
    fn the_same_ip_on_another_port_is_a_different_advertise_address() {
        let mut b = node(2, "h2", "198.18.0.1", "198.18.0.2");
        b.addr = "198.18.0.1:4378".into();
        let s = state(vec![node(1, "h1", "198.18.0.1", "198.18.0.1"), b]);
        assert_eq!(statuses(&addresses(&s), "advertise-addr"), [Status::Ok]);
    }

    fn view(me: u64, leader: Option<u64>, voters: &[u64]) -> RaftMetricsView {
        RaftMetricsView {
            id: NodeId(me),
            state: openraft::ServerState::Leader,
            leader: leader.map(NodeId),
            term: 2,
            last_log_index: Some(5000),
            applied_index: Some(5000),
            snapshot_index: None,
            voters: voters.iter().map(|v| (NodeId(*v), String::new())).collect(),
            learners: BTreeMap::new(),
            matched: BTreeMap::new(),
            millis_since_quorum_ack: Some(100),
        }
    }

    fn managers(states: &[NodeState]) -> State {
        state(
            states
                .iter()
                .enumerate()
                .map(|(i, st)| {
                    let mut n = node(i as u64 + 1, &format!("m{}", i + 1), "a", "b");
                    n.role = Role::Manager;
                    n.state = *st;
                    n
                })
                .collect(),
        )
    }

    #[test]
    fn quorum_ok_warn_when_one_more_loss_stops_it_fail_without_majority_or_leader() {
        let up = NodeState::Ready;
        let down = NodeState::Down;
        let mut m = view(1, Some(1), &[1, 2, 3]);
        m.matched = [(2, Some(5000)), (3, Some(4990))]
            .into_iter()
            .map(|(id, h)| (NodeId(id), h))
            .collect();
        let v = raft(&m, &managers(&[up, up, up]));
        assert_eq!(statuses(&v, "raft-quorum"), [Status::Ok]);
        assert_eq!(statuses(&v, "raft-lag"), [Status::Ok, Status::Ok]);
        assert!(
            v.iter()
                .any(|c| c.subject == "m3" && c.detail.starts_with("10 entries"))
        );

        let v = raft(&m, &managers(&[up, up, down]));
        assert_eq!(statuses(&v, "raft-quorum"), [Status::Warn]);
        assert!(v[0].detail.contains("down: m3"), "{}", v[0].detail);

        let v = raft(&m, &managers(&[up, down, down]));
        assert_eq!(statuses(&v, "raft-quorum"), [Status::Fail]);

        let v = raft(&view(2, None, &[1, 2, 3]), &managers(&[down, up, up]));
        assert_eq!(statuses(&v, "raft-quorum"), [Status::Fail]);
        assert!(v[0].detail.starts_with("no leader"));

        // The store still says all up (no quorum to mark them down), but
        // no majority has acknowledged the leader for 10 s.
        m.millis_since_quorum_ack = Some(10_000);
        let v = raft(&m, &managers(&[up, up, up]));
        assert_eq!(statuses(&v, "raft-quorum"), [Status::Fail]);
        assert!(
            v[0].detail.contains("has answered this leader for 10 s"),
            "{}",
            v[0].detail
        );
        m.millis_since_quorum_ack = None;
        let v = raft(&m, &managers(&[up, up, up]));
        assert!(
            v[0].detail.contains("since it took over"),
            "{}",
            v[0].detail
        );
        // A lone manager is its own majority.
        let mut lone = view(1, Some(1), &[1]);
        lone.millis_since_quorum_ack = None;
        let v = raft(&lone, &managers(&[up]));
        assert_eq!(statuses(&v, "raft-quorum"), [Status::Ok]);
    }

    #[test]
    fn lag_is_the_leaders_to_tell_and_a_silent_or_far_behind_member_is_reported() {
        let up = NodeState::Ready;
        let mut m = view(1, Some(1), &[1, 2, 3]);
        m.matched = [(2, None), (3, Some(100))]
            .into_iter()
            .map(|(id, h)| (NodeId(id), h))
            .collect();
        let v = raft(&m, &managers(&[up, up, up]));
        assert_eq!(statuses(&v, "raft-lag"), [Status::Fail, Status::Warn]);
        assert!(
            v.iter()
                .any(|c| c.detail.starts_with("4900 entries behind"))
        );

        let v = raft(&view(2, Some(1), &[1, 2, 3]), &managers(&[up, up, up]));
        let lag: Vec<&Check> = v.iter().filter(|c| c.check == "raft-lag").collect();
        assert_eq!(lag.len(), 1);
        assert_eq!(lag[0].status, Status::Warn);
        assert!(lag[0].detail.starts_with("not checked"));
    }

    #[test]
    fn certificates_expired_fail_unrenewed_warn_fresh_are_ok() {
        let now = time::OffsetDateTime::parse(
            "2026-01-31T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let mut a = node(1, "fresh", "a", "a");
        a.cert_expiry = "2026-04-01T00:00:00Z".into();
        let mut b = node(2, "late", "b", "b");
        b.cert_expiry = "2026-02-05T00:00:00Z".into();
        let mut c = node(3, "gone", "c", "c");
        c.cert_expiry = "2026-01-30T00:00:00Z".into();
        let mut d = node(4, "blank", "d", "d");
        d.cert_expiry = String::new();
        let v = certificates(&state(vec![a, b, c, d]), now);
        let by = |s: &str| v.iter().find(|c| c.subject == s).map(|c| c.status);
        assert_eq!(by("late"), Some(Status::Warn));
        assert_eq!(by("gone"), Some(Status::Fail));
        assert_eq!(by("blank"), Some(Status::Warn));
        assert_eq!(by(""), Some(Status::Ok));
        assert!(v.iter().all(|c| c.subject != "fresh"));
    }
}
