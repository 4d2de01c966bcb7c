//! The doctor's pairwise probes, manager side: whom to ask ([`plan`]) and
//! what their answers mean ([`evaluate`]). Both pure; [`super::run`] sends
//! the requests through the nodes' sessions and collects the reports.
//!
//! Each live node gets the same ordered list of live nodes and probes every
//! other one (the node side is `weft_worker::doctor::probe`):
//!
//! | kind           | how                                                         |
//! |----------------|-------------------------------------------------------------|
//! | `manager-port` | TLS handshake with the node's own certificate and a gRPC    |
//! |                | call to each manager's advertised address                   |
//! | `vxlan`        | ICMP echo through a probe VXLAN device (reserved VNI, the   |
//! |                | cluster's data-path port), answered by the peer's kernel    |
//! | `mtu`          | the same, at the overlay MTU with DF set, then smaller      |
//! | `wireguard`    | ICMP echo to the peer's tunnel address through WireGuard    |
//!
//! Clock skew comes from the answers: the node stamps its wall clock when
//! the request arrives and how long it then took; the manager knows when it
//! sent the request and got the answer, so the node's clock is compared
//! with the middle of that window, and the window's half-width is the
//! error bar.

use std::collections::BTreeMap;

use weft_proto::v1 as pb;

use crate::dispatcher::projection::{DEFAULT_UNDERLAY_MTU, encapsulation, network_mtu};
use crate::store::{NodeId, NodeState, State};

use super::checks::name;
use super::{Answer, Check};

/// The node's own checks the leader keeps of one report.
pub const MAX_OWN_CHECKS: usize = 16;

/// How long a node waits for its peers' answers.
pub const NODE_TIMEOUT_MS: u32 = 4000;

/// Clock skew beyond this (past the error bar) is a warning: event and
/// log times disagree between nodes.
const SKEW_WARN_MS: u64 = 1000;
/// Clock skew beyond this is a failure: certificates are backdated by 5
/// minutes, so a node this far behind soon refuses fresh certificates.
const SKEW_FAIL_MS: u64 = 60_000;

/// What the requests were made with, for the hints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The cluster's VXLAN port.
    pub vxlan_port: u32,
    /// The cluster's WireGuard port.
    pub wg_port: u32,
    /// The overlay packet size probed.
    pub overlay_mtu: u32,
    /// Where that size comes from.
    pub mtu_source: String,
}

/// The requests of one doctor run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The nodes probed, in the order every request lists them.
    pub targets: Vec<pb::ProbeTarget>,
    /// One request per node (`request_id` still 0).
    pub requests: Vec<(NodeId, pb::ProbeRequest)>,
    /// Ports and size, for [`evaluate`].
    pub context: Context,
    /// Rows for the nodes left out (down, unknown).
    pub skipped: Vec<Check>,
}

/// The overlay packet size to probe: the largest MTU of the cluster's
/// unencrypted overlay networks (what they carry across the underlay), or
/// with none, what a new network would get.
fn overlay_mtu(s: &State, live: &[&crate::store::Node]) -> (u32, String) {
    let largest = s
        .networks
        .values()
        .filter(|n| n.node.is_none() && !n.encrypted)
        .map(|n| (network_mtu(s, n).0, n.name.clone()))
        .max();
    if let Some((mtu, net)) = largest {
        return (mtu, format!("the MTU of network {net}"));
    }
    let smallest = live
        .iter()
        .map(|n| {
            let mtu = if n.underlay_mtu == 0 {
                DEFAULT_UNDERLAY_MTU
            } else {
                n.underlay_mtu
            };
            mtu.saturating_sub(encapsulation(&n.data_path_addr, false))
        })
        .min()
        .unwrap_or(DEFAULT_UNDERLAY_MTU - encapsulation("", false));
    (
        smallest,
        "the smallest underlay MTU of the nodes, less VXLAN's 50 bytes (70 over IPv6)".into(),
    )
}

/// Whom to ask: every ready node, about every other.
pub fn plan(s: &State) -> Plan {
    let Some(cluster) = s.cluster.as_ref() else {
        return Plan::default();
    };
    let mut plan = Plan::default();
    let mut live = Vec::new();
    for n in s.nodes.values() {
        if n.state == NodeState::Ready {
            live.push(n);
        } else {
            plan.skipped.push(Check::warn(
                "probes",
                name(n),
                format!("not probed: the node is {}", n.state.as_str()),
                "bring the node back (its daemon, its network), or remove it (`weft node rm`)",
            ));
        }
    }
    let (mtu, mut source) = overlay_mtu(s, &live);
    // The sizes a node probes (and a network's MTU may be set to).
    let probed = mtu.clamp(576, 9000);
    if probed != mtu {
        source = format!("{source}: {mtu}, brought into the 576-9000 probed");
    }
    let mtu = probed;
    plan.context = Context {
        vxlan_port: u32::from(cluster.settings.data_path_port),
        wg_port: u32::from(cluster.settings.wg_port),
        overlay_mtu: mtu,
        mtu_source: source,
    };
    plan.targets = live
        .iter()
        .map(|n| pb::ProbeTarget {
            node_id: n.id.to_string(),
            hostname: name(n),
            data_path_addr: n.data_path_addr.clone(),
            manager_addr: if n.role == crate::store::Role::Manager {
                n.addr.clone()
            } else {
                String::new()
            },
            tunnel_ip: n.tunnel_ip.map(|t| t.to_string()).unwrap_or_default(),
        })
        .collect();
    for (i, n) in live.iter().enumerate() {
        plan.requests.push((
            n.id,
            pb::ProbeRequest {
                request_id: 0,
                targets: plan.targets.clone(),
                self_index: i as u32,
                vxlan_port: plan.context.vxlan_port,
                overlay_mtu: mtu,
                timeout_ms: NODE_TIMEOUT_MS,
                wireguard: true,
            },
        ));
    }
    plan
}

/// The probe kinds, in the order the table shows them.
pub const KINDS: [&str; 4] = ["manager-port", "vxlan", "mtu", "wireguard"];

/// The rows the answers make: a failing row per node that did not answer
/// and per pair whose probe failed, one OK row per kind that passed
/// everywhere, and the clock skew of each node.
pub fn evaluate(
    targets: &[pb::ProbeTarget],
    ctx: &Context,
    answers: &BTreeMap<NodeId, Answer>,
) -> Vec<Check> {
    let host = |id: &str| {
        targets
            .iter()
            .find(|t| t.node_id == id)
            .map(|t| t.hostname.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let target = |id: &str| targets.iter().find(|t| t.node_id == id);
    let mut out = Vec::new();
    let mut passed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failed: BTreeMap<&str, Vec<Check>> = BTreeMap::new();
    let mut clocks = Vec::new();
    let mut own: BTreeMap<String, (usize, Vec<Check>)> = BTreeMap::new();
    for (id, a) in answers {
        let from = host(&id.to_string());
        let r = match &a.report {
            Err(why) => {
                out.push(Check::fail(
                    "probes",
                    from,
                    format!("no answer: {why}"),
                    "check that the node's daemon runs and holds a session (`weft node ls`, \
                     its daemon log); a node running a weft without the doctor does not \
                     answer probes (`weft node ls` shows each node's version)",
                ));
                continue;
            }
            Ok(r) if !r.error.is_empty() => {
                out.push(Check::fail(
                    "probes",
                    from,
                    format!("the node could not probe: {}", r.error),
                    "see the node's daemon log; probing needs root and nftables' port rules \
                     as weft sets them",
                ));
                continue;
            }
            Ok(r) => r,
        };
        for res in &r.results {
            let Some(kind) = KINDS.iter().find(|k| **k == res.kind) else {
                continue;
            };
            if res.ok {
                *passed.entry(kind).or_default() += 1;
                continue;
            }
            let to = host(&res.node_id);
            let peer = target(&res.node_id);
            failed
                .entry(kind)
                .or_default()
                .push(pair_failure(kind, &from, &to, peer, ctx, res));
        }
        clocks.extend(skew(&from, a, r));
        for row in &r.local {
            let seen = own.entry(row.check.clone()).or_default();
            match super::Status::from_wire(row.status) {
                super::Status::Ok => seen.0 += 1,
                status => seen.1.push(Check {
                    check: row.check.clone(),
                    subject: from.clone(),
                    status,
                    detail: row.detail.clone(),
                    hint: row.hint.clone(),
                }),
            }
        }
    }
    out.extend(own_rows(own));
    // Per kind: its failures by pair, or one row saying it passed.
    for kind in KINDS {
        if let Some(mut rows) = failed.remove(kind) {
            rows.sort_by(|a, b| a.subject.cmp(&b.subject));
            out.extend(rows);
            continue;
        }
        let n = passed.get(kind).copied().unwrap_or(0);
        out.push(match (kind, n) {
            ("wireguard", 0) => Check::ok(
                kind,
                "",
                "nothing to probe: no encrypted network spans two live nodes",
            ),
            (_, 0) if targets.len() < 2 && kind != "manager-port" => {
                Check::ok(kind, "", "nothing to probe: one node")
            }
            (_, 0) => Check::warn(
                kind,
                "",
                "not checked: no node reported this probe",
                "see the rows of the nodes that did not answer",
            ),
            ("mtu", n) => Check::ok(
                kind,
                "",
                format!(
                    "{n} paths carry {}-byte overlay packets ({})",
                    ctx.overlay_mtu, ctx.mtu_source
                ),
            ),
            (_, n) => Check::ok(kind, "", format!("{n} paths answer")),
        });
    }
    clocks.sort_by(|a, b| a.subject.cmp(&b.subject));
    out.extend(clocks);
    out
}

/// The nodes' own checks: per check, the nodes where it is not OK, or one
/// row saying on how many nodes it is.
fn own_rows(own: BTreeMap<String, (usize, Vec<Check>)>) -> Vec<Check> {
    let mut out = Vec::new();
    for (check, (ok, mut bad)) in own {
        if bad.is_empty() {
            let nodes = if ok == 1 { "node" } else { "nodes" };
            out.push(Check::ok(&check, "", format!("OK on {ok} {nodes}")));
        } else {
            bad.sort_by(|a, b| a.subject.cmp(&b.subject));
            out.extend(bad);
        }
    }
    out
}

/// The row of one failed probe from `from` to `to`.
fn pair_failure(
    kind: &str,
    from: &str,
    to: &str,
    peer: Option<&pb::ProbeTarget>,
    ctx: &Context,
    res: &pb::ProbeResult,
) -> Check {
    let subject = format!("{from} -> {to}");
    let vtep = peer.map(|p| p.data_path_addr.as_str()).unwrap_or("?");
    match kind {
        "manager-port" => {
            let addr = peer.map(|p| p.manager_addr.as_str()).unwrap_or("?");
            Check::fail(
                kind,
                subject,
                format!("no mTLS gRPC answer from {addr}: {}", res.detail),
                format!(
                    "allow TCP to {addr} from {from} (firewall, security group); check that \
                     {to} advertises an address {from} can reach (`--advertise-addr`)"
                ),
            )
        }
        "vxlan" => Check::fail(
            kind,
            subject,
            format!(
                "no VXLAN echo came back from {vtep} on UDP {}: {}",
                ctx.vxlan_port, res.detail
            ),
            format!(
                "allow UDP {} both ways between {from} and {to} (firewall, nftables, security \
                 group); check that the data-path addresses are reachable (`--data-path-addr`)",
                ctx.vxlan_port
            ),
        ),
        "mtu" => {
            let overhead = encapsulation(vtep, false);
            let largest = if res.largest_ok == 0 {
                "none of the sizes tried".to_string()
            } else {
                format!("at most {} bytes", res.largest_ok)
            };
            Check::fail(
                kind,
                subject,
                format!(
                    "the path carries {largest}, but the overlay MTU is {} ({}): larger packets \
                     are dropped",
                    ctx.overlay_mtu, ctx.mtu_source
                ),
                format!(
                    "raise the MTU along the path between {from} and {to} to at least {} \
                     (overlay MTU + {overhead}), or give the overlay networks a smaller one \
                     (`weft network create --mtu {}`)",
                    ctx.overlay_mtu + overhead,
                    res.largest_ok.max(576)
                ),
            )
        }
        _ => Check::fail(
            kind,
            subject,
            format!(
                "no answer through WireGuard (UDP {}): {}",
                ctx.wg_port, res.detail
            ),
            format!(
                "allow UDP {} both ways between {from} and {to}; check the handshake ages in \
                 `weft node inspect`",
                ctx.wg_port
            ),
        ),
    }
}

/// The clock skew of one node, from the timestamps of its answer.
fn skew(from: &str, a: &Answer, r: &pb::ProbeReport) -> Option<Check> {
    if a.received_ms == 0 || r.node_time_ms == 0 {
        return None;
    }
    // When the node got the request, on this manager's clock: between
    // sending it and the answer's arrival less the node's own time on it.
    let latest = a.received_ms.saturating_sub(r.elapsed_ms).max(a.sent_ms);
    let mid = (a.sent_ms + latest) / 2;
    let error = (latest - a.sent_ms) / 2;
    let diff = r.node_time_ms as i128 - mid as i128;
    let beyond =
        u64::try_from(diff.unsigned_abs().saturating_sub(u128::from(error))).unwrap_or(u64::MAX);
    let dir = if diff >= 0 { "ahead of" } else { "behind" };
    let detail = format!(
        "{} ms {dir} this manager (±{error} ms)",
        diff.unsigned_abs()
    );
    let hint = "run NTP (chrony, systemd-timesyncd) on every node";
    Some(if beyond > SKEW_FAIL_MS {
        Check::fail(
            "clock-skew",
            from,
            detail,
            format!("{hint}: certificates are backdated by only 5 minutes"),
        )
    } else if beyond > SKEW_WARN_MS {
        Check::warn("clock-skew", from, detail, hint)
    } else {
        Check::ok("clock-skew", from, detail)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use crate::store::{Node, Role};

    fn cluster_state(n: usize) -> State {
        let mut s = State::default();
        let mut c = crate::testing::cluster_record();
        c.settings.data_path_port = 4789;
        c.settings.wg_port = 51820;
        s.cluster = Some(c);
        for i in 0..n {
            let id = NodeId(i as u64 + 1);
            s.nodes.insert(
                id,
                Node {
                    id,
                    hostname: format!("h{}", i + 1),
                    role: if i == 0 { Role::Manager } else { Role::Worker },
                    addr: format!("198.18.0.{}:4377", i + 1),
                    data_path_addr: format!("198.18.0.{}", i + 1),
                    underlay_mtu: 1500,
                    state: NodeState::Ready,
                    ..Default::default()
                },
            );
        }
        s
    }

    #[test]
    fn plan_asks_every_ready_node_with_the_same_list_and_skips_the_down_ones() {
        let mut s = cluster_state(3);
        s.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Down;
        let p = plan(&s);
        assert_eq!(p.requests.len(), 2);
        assert_eq!(p.targets.len(), 2);
        assert_eq!(p.targets[0].manager_addr, "198.18.0.1:4377");
        assert_eq!(p.targets[1].manager_addr, "");
        assert_eq!(p.requests[1].1.self_index, 1);
        assert_eq!(p.requests[1].1.targets, p.targets);
        assert_eq!(p.context.overlay_mtu, 1450);
        assert_eq!(p.context.vxlan_port, 4789);
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].status, Status::Warn);
        assert_eq!(p.skipped[0].subject, "h3");
    }

    fn result(to: u64, kind: &str, ok: bool) -> pb::ProbeResult {
        pb::ProbeResult {
            node_id: NodeId(to).to_string(),
            kind: kind.into(),
            ok,
            detail: if ok {
                String::new()
            } else {
                "timed out".into()
            },
            largest_ok: if kind == "mtu" && !ok { 1350 } else { 0 },
            rtt_us: 100,
        }
    }

    fn answer(results: Vec<pb::ProbeResult>, node_time_ms: u64) -> Answer {
        Answer {
            sent_ms: 10_000,
            received_ms: 10_100,
            report: Ok(pb::ProbeReport {
                node_id: String::new(),
                request_id: 1,
                node_time_ms,
                results,
                elapsed_ms: 60,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn healthy_answers_make_one_ok_row_per_kind() {
        let p = plan(&cluster_state(2));
        let answers: BTreeMap<NodeId, Answer> = [
            (
                NodeId(1),
                answer(
                    vec![result(2, "vxlan", true), result(2, "mtu", true)],
                    10_020,
                ),
            ),
            (
                NodeId(2),
                answer(
                    vec![
                        result(1, "manager-port", true),
                        result(1, "vxlan", true),
                        result(1, "mtu", true),
                    ],
                    10_020,
                ),
            ),
        ]
        .into_iter()
        .collect();
        let v = evaluate(&p.targets, &p.context, &answers);
        assert!(v.iter().all(|c| c.status == Status::Ok), "{v:#?}");
        assert!(
            v.iter()
                .any(|c| c.check == "vxlan" && c.detail == "2 paths answer")
        );
        assert!(
            v.iter()
                .any(|c| c.check == "wireguard" && c.detail.starts_with("nothing"))
        );
        assert_eq!(v.iter().filter(|c| c.check == "clock-skew").count(), 2);
    }

    #[test]
    fn failed_pairs_missing_nodes_and_skewed_clocks_fail_with_hints() {
        let p = plan(&cluster_state(3));
        let answers: BTreeMap<NodeId, Answer> = [
            (
                NodeId(1),
                answer(
                    vec![
                        result(2, "vxlan", false),
                        result(3, "vxlan", true),
                        result(3, "mtu", false),
                    ],
                    10_020,
                ),
            ),
            (
                NodeId(2),
                answer(vec![result(1, "manager-port", true)], 10_020 + 120_000),
            ),
            (NodeId(3), Answer::missing(10_000, "no session")),
        ]
        .into_iter()
        .collect();
        let v = evaluate(&p.targets, &p.context, &answers);
        let row = |check: &str, subject: &str| {
            v.iter()
                .find(|c| c.check == check && c.subject == subject)
                .unwrap_or_else(|| panic!("no {check} row for {subject}: {v:#?}"))
        };
        let vx = row("vxlan", "h1 -> h2");
        assert_eq!(vx.status, Status::Fail);
        assert!(vx.hint.contains("allow UDP 4789"), "{}", vx.hint);
        let mtu = row("mtu", "h1 -> h3");
        assert_eq!(mtu.status, Status::Fail);
        assert!(mtu.detail.contains("at most 1350 bytes"), "{}", mtu.detail);
        assert!(mtu.detail.contains("overlay MTU is 1450"), "{}", mtu.detail);
        assert_eq!(row("probes", "h3").status, Status::Fail);
        assert_eq!(row("clock-skew", "h2").status, Status::Fail);
        assert_eq!(row("clock-skew", "h1").status, Status::Ok);
        assert_eq!(row("manager-port", "").status, Status::Ok);
    }

    fn own(check: &str, status: pb::DoctorStatus) -> pb::DoctorCheck {
        pb::DoctorCheck {
            check: check.into(),
            status: status as i32,
            detail: format!("{check} {status:?}"),
            hint: "do this".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_nodes_own_checks_are_one_ok_row_or_a_row_per_node_that_is_not() {
        let p = plan(&cluster_state(2));
        let mut a = answer(vec![], 10_020);
        let mut b = answer(vec![], 10_020);
        if let Ok(r) = &mut a.report {
            r.local = vec![
                own("nftables", pb::DoctorStatus::Ok),
                own("weft-tables", pb::DoctorStatus::Ok),
            ];
        }
        if let Ok(r) = &mut b.report {
            r.local = vec![
                own("nftables", pb::DoctorStatus::Ok),
                own("weft-tables", pb::DoctorStatus::Fail),
            ];
        }
        let answers: BTreeMap<NodeId, Answer> =
            [(NodeId(1), a), (NodeId(2), b)].into_iter().collect();
        let v = evaluate(&p.targets, &p.context, &answers);
        let nft: Vec<&Check> = v.iter().filter(|c| c.check == "nftables").collect();
        assert_eq!(nft.len(), 1, "{v:#?}");
        assert_eq!(
            (nft[0].status, nft[0].detail.as_str()),
            (Status::Ok, "OK on 2 nodes")
        );
        let t: Vec<&Check> = v.iter().filter(|c| c.check == "weft-tables").collect();
        assert_eq!(t.len(), 1, "{v:#?}");
        assert_eq!((t[0].status, t[0].subject.as_str()), (Status::Fail, "h2"));
        assert_eq!(t[0].hint, "do this");
    }

    #[test]
    fn skew_within_the_error_bar_is_not_counted() {
        // Sent at 10 000, answered at 12 100 after 100 ms on the node: it
        // got the request between 10 000 and 12 000, ±1000 around 11 000.
        let mut a = answer(vec![], 11_900);
        a.received_ms = 12_100;
        if let Ok(r) = &mut a.report {
            r.elapsed_ms = 100;
        }
        let Ok(r) = &a.report else { unreachable!() };
        let c = skew("h1", &a, r).unwrap();
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.contains("900 ms ahead"), "{}", c.detail);
        assert!(c.detail.contains("±1000"), "{}", c.detail);
    }
}
