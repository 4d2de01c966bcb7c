//! `weft doctor`, the node half: this node's probes of its peers (asked by
//! the leader, see `weft_manager::doctor`) and its own local checks.
//!
//! Probes ([`probe`]): the manager ports over mTLS gRPC, then one run of
//! ICMP echoes through the probe VXLAN device
//! ([`weft_overlay::linux::probe`]) — a small one per peer (is VXLAN
//! through?) and a ladder of sizes from the overlay MTU down (the path's
//! limit) — and, when this node has WireGuard peers, an echo to each
//! peer's tunnel address through the tunnel. The probe namespace stays a
//! while after this node's own probes ([`LINGER`]) so that slower peers'
//! echoes are still answered.
//!
//! Local checks ([`local`]): decided by pure functions over what was read;
//! the daemon shows them for the node asked, and every probe report
//! carries them so the leader's table covers every node.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_overlay::linux::probe::{self as kprobe, Echo, EchoResult, ProbeSpec};
use weft_proto::v1 as pb;

use crate::agent::ManagerCaller;

pub mod local;

/// How long the probe namespace outlives this node's own probes.
pub const LINGER: Duration = Duration::from_secs(6);
/// How long a manager port has to answer.
const MANAGER_TIMEOUT: Duration = Duration::from_secs(3);
/// The size of the echo that asks "does VXLAN pass at all".
const SMALL: u16 = 84;
/// Bounds of a probe request.
const MIN_MTU: u32 = 576;
const MAX_MTU: u32 = 9000;
const MAX_TIMEOUT_MS: u32 = 30_000;

/// Runs of the probe namespace: a run tears it down only if no later run
/// took it over.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// What a probe run needs from the node.
#[derive(Clone)]
pub struct ProbeEnv {
    /// This node's ID (the report names it).
    pub node_id: String,
    /// Where the probe namespace is pinned.
    pub pin: PathBuf,
    /// Calls to the managers, as this node.
    pub caller: ManagerCaller,
    /// The config this node holds (its WireGuard peers).
    pub config: Option<Arc<pb::NodeConfig>>,
    /// The node's kernel, for its own checks ([`local`]); none: not made.
    pub linux: Option<Arc<weft_overlay::linux::LinuxDataplane>>,
}

/// The overlay sizes tried, largest first: the overlay MTU, then steps
/// down to 576.
pub fn ladder(mtu: u32) -> Vec<u16> {
    let mut v: Vec<u16> = [0, 10, 20, 50, 100, 150, 200, 300, 500, 700]
        .iter()
        .filter_map(|d| mtu.checked_sub(*d))
        .filter(|s| *s >= MIN_MTU)
        .filter_map(|s| u16::try_from(s).ok())
        .collect();
    v.dedup();
    v
}

/// Checks a request before anything is made of it.
pub fn validate(r: &pb::ProbeRequest) -> Result<(), String> {
    if r.targets.is_empty() || r.targets.len() > kprobe::MAX_PROBE_NODES {
        return Err(format!(
            "{} targets; 1 to {} are allowed",
            r.targets.len(),
            kprobe::MAX_PROBE_NODES
        ));
    }
    if r.self_index as usize >= r.targets.len() {
        return Err(format!("self_index {} is out of the list", r.self_index));
    }
    if !(1..=u32::from(u16::MAX)).contains(&r.vxlan_port) {
        return Err(format!("invalid VXLAN port {}", r.vxlan_port));
    }
    if !(MIN_MTU..=MAX_MTU).contains(&r.overlay_mtu) {
        return Err(format!(
            "overlay MTU {} is outside {MIN_MTU}..={MAX_MTU}",
            r.overlay_mtu
        ));
    }
    if r.timeout_ms == 0 || r.timeout_ms > MAX_TIMEOUT_MS {
        return Err(format!(
            "timeout {} ms is outside 1..={MAX_TIMEOUT_MS}",
            r.timeout_ms
        ));
    }
    Ok(())
}

fn result(node_id: &str, kind: &str, ok: bool, detail: impl Into<String>) -> pb::ProbeResult {
    pb::ProbeResult {
        node_id: node_id.to_string(),
        kind: kind.into(),
        ok,
        detail: detail.into(),
        largest_ok: 0,
        rtt_us: 0,
    }
}

/// Runs the probes one request asks for and makes the report.
pub async fn probe(req: pb::ProbeRequest, env: ProbeEnv) -> pb::ProbeReport {
    let node_time_ms = now_ms();
    let start = Instant::now();
    let mut report = pb::ProbeReport {
        node_id: env.node_id.clone(),
        request_id: req.request_id,
        node_time_ms,
        ..Default::default()
    };
    if let Err(e) = validate(&req) {
        report.error = format!("invalid probe request: {e}");
        return report;
    }
    let me = req.self_index as usize;
    // Together: the peers probe this node's device while it probes theirs,
    // so nothing may hold up making it.
    let (managers, vxlan, wireguard, own) = tokio::join!(
        managers(&req, me, &env.caller),
        vxlan(&req, me, &env),
        wireguard(&req, me, env.config.as_deref()),
        own_checks(&env),
    );
    report.local = own;
    report.results.extend(managers);
    match vxlan {
        Ok(rows) => report.results.extend(rows),
        Err(e) => report.error = e,
    }
    report.results.extend(wireguard);
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    report
}

/// This node's own checks, for the leader's table.
async fn own_checks(env: &ProbeEnv) -> Vec<pb::DoctorCheck> {
    let Some(linux) = &env.linux else {
        return Vec::new();
    };
    let seen = local::observe(linux, env.caller.cert_pem(), env.config.clone()).await;
    let mut rows = local::decide(&seen, time::OffsetDateTime::now_utc());
    for r in &mut rows {
        r.subject.clear();
    }
    rows
}

/// The manager port of every other manager, over mTLS gRPC.
async fn managers(
    req: &pb::ProbeRequest,
    me: usize,
    caller: &ManagerCaller,
) -> Vec<pb::ProbeResult> {
    let calls = req
        .targets
        .iter()
        .enumerate()
        .filter(|(i, t)| *i != me && !t.manager_addr.is_empty())
        .map(|(_, t)| async move {
            let at = Instant::now();
            let r = tokio::time::timeout(MANAGER_TIMEOUT, caller.reach(&t.manager_addr)).await;
            let mut row = match r {
                Ok(Ok(())) => result(&t.node_id, "manager-port", true, ""),
                Ok(Err(e)) => result(&t.node_id, "manager-port", false, e.to_string()),
                Err(_) => result(
                    &t.node_id,
                    "manager-port",
                    false,
                    format!("no answer in {} s", MANAGER_TIMEOUT.as_secs()),
                ),
            };
            row.rtt_us = at.elapsed().as_micros() as u32;
            row
        });
    futures::future::join_all(calls).await
}

/// VXLAN and MTU through the probe device. `Err`: the device could not
/// be made (nothing was probed).
async fn vxlan(
    req: &pb::ProbeRequest,
    me: usize,
    env: &ProbeEnv,
) -> Result<Vec<pb::ProbeResult>, String> {
    let local: IpAddr = req.targets[me].data_path_addr.parse().map_err(|_| {
        format!(
            "this node's data-path address {:?} is not an IP address",
            req.targets[me].data_path_addr
        )
    })?;
    let mut out = Vec::new();
    let mut peers = Vec::new();
    for (i, t) in req.targets.iter().enumerate() {
        if i == me {
            continue;
        }
        match t.data_path_addr.parse::<IpAddr>() {
            Ok(a) if a.is_ipv6() == local.is_ipv6() => peers.push((i as u32, a, t.node_id.clone())),
            // VXLAN has one outer family per device: an IPv4 VTEP cannot
            // reach an IPv6 one (nor can the overlay's own device).
            _ => out.push(result(
                &t.node_id,
                "vxlan",
                false,
                format!(
                    "data-path address {:?} is not of this node's family ({local}): VXLAN \
                     between them cannot work",
                    t.data_path_addr
                ),
            )),
        }
    }
    if peers.is_empty() {
        return Ok(out);
    }
    let spec = ProbeSpec {
        index: me as u32,
        local,
        port: req.vxlan_port as u16,
        mtu: req.overlay_mtu,
        peers: peers.iter().map(|(i, a, _)| (*i, *a)).collect(),
    };
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    let ns = match kprobe::setup(&env.pin, &spec).await {
        Ok(ns) => ns,
        Err(e) => {
            // What was made of it goes too.
            linger(env.pin.clone(), generation);
            return Err(format!("cannot make the probe device: {e}"));
        }
    };
    let sizes = ladder(req.overlay_mtu);
    let mut echoes = Vec::new();
    for (i, _, _) in &peers {
        let dst = kprobe::probe_ip(*i);
        echoes.push(Echo { dst, size: SMALL });
        echoes.extend(sizes.iter().map(|&size| Echo { dst, size }));
    }
    let timeout = Duration::from_millis(u64::from(req.timeout_ms));
    let run_ns = ns.clone();
    let answers =
        tokio::task::spawn_blocking(move || kprobe::ping(Some(&run_ns), &echoes, timeout))
            .await
            .map_err(|e| format!("the probe thread failed: {e}"))?
            .map_err(|e| format!("cannot send echoes: {e}"));
    linger(env.pin.clone(), generation);
    let answers = answers?;
    let per_peer = 1 + sizes.len();
    for (k, (_, vtep, id)) in peers.iter().enumerate() {
        let rows = &answers[k * per_peer..(k + 1) * per_peer];
        out.extend(judge(id, *vtep, req.overlay_mtu, &sizes, rows));
    }
    Ok(out)
}

/// The vxlan and mtu results of one peer from its echoes: `rows[0]` the
/// small one, then one per size of `sizes`.
pub fn judge(
    id: &str,
    vtep: IpAddr,
    mtu: u32,
    sizes: &[u16],
    rows: &[EchoResult],
) -> Vec<pb::ProbeResult> {
    let answered = |r: &EchoResult| matches!(r, EchoResult::Answered(_));
    if !rows.iter().any(answered) {
        let why = match &rows[0] {
            EchoResult::NotSent(e) => format!("could not send: {e}"),
            _ => format!("no echo reply from {vtep} within the timeout"),
        };
        return vec![result(id, "vxlan", false, why)];
    }
    let mut vx = result(id, "vxlan", true, "");
    if let EchoResult::Answered(d) = &rows[0] {
        vx.rtt_us = d.as_micros() as u32;
    }
    let largest = sizes
        .iter()
        .zip(&rows[1..])
        .filter(|(_, r)| answered(r))
        .map(|(s, _)| u32::from(*s))
        .max()
        .unwrap_or(0);
    let mut m = if largest >= mtu {
        result(id, "mtu", true, format!("{mtu}-byte overlay packets pass"))
    } else {
        result(
            id,
            "mtu",
            false,
            format!("{mtu}-byte overlay packets (DF) get no answer"),
        )
    };
    m.largest_ok = largest;
    vec![vx, m]
}

/// Tears the probe namespace down after [`LINGER`], unless a later run
/// took it over meanwhile.
fn linger(pin: PathBuf, generation: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(LINGER).await;
        if GENERATION.load(Ordering::SeqCst) == generation
            && let Err(e) = kprobe::teardown(&pin)
        {
            tracing::warn!(error = %e, "cannot remove the doctor's probe namespace");
        }
    });
}

/// Removes the probe namespace now (a daemon starting or stopping).
pub fn clean_up(pin: &std::path::Path) {
    GENERATION.fetch_add(1, Ordering::SeqCst);
    if let Err(e) = kprobe::teardown(pin) {
        tracing::warn!(error = %e, "cannot remove the doctor's probe namespace");
    }
}

/// An echo to each WireGuard peer's tunnel address, from the host.
async fn wireguard(
    req: &pb::ProbeRequest,
    me: usize,
    config: Option<&pb::NodeConfig>,
) -> Vec<pb::ProbeResult> {
    let Some(wg) = config.and_then(|c| c.wireguard.as_ref()) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    let mut echoes = Vec::new();
    for (i, t) in req.targets.iter().enumerate() {
        if i == me || !wg.peers.iter().any(|p| p.node_id == t.node_id) {
            continue;
        }
        match t.tunnel_ip.parse::<Ipv4Addr>() {
            Ok(dst) => {
                ids.push(t.node_id.clone());
                echoes.push(Echo { dst, size: SMALL });
            }
            Err(_) => continue,
        }
    }
    if echoes.is_empty() {
        return Vec::new();
    }
    let timeout = Duration::from_millis(u64::from(req.timeout_ms));
    let answers = tokio::task::spawn_blocking(move || kprobe::ping(None, &echoes, timeout)).await;
    match answers {
        Ok(Ok(rows)) => ids
            .iter()
            .zip(rows)
            .map(|(id, r)| match r {
                EchoResult::Answered(d) => {
                    let mut row = result(id, "wireguard", true, "");
                    row.rtt_us = d.as_micros() as u32;
                    row
                }
                EchoResult::TimedOut => result(id, "wireguard", false, "no echo reply in time"),
                EchoResult::NotSent(e) => {
                    result(id, "wireguard", false, format!("could not send: {e}"))
                }
            })
            .collect(),
        Ok(Err(e)) => ids
            .iter()
            .map(|id| result(id, "wireguard", false, format!("cannot send echoes: {e}")))
            .collect(),
        Err(e) => ids
            .iter()
            .map(|id| {
                result(
                    id,
                    "wireguard",
                    false,
                    format!("the probe thread failed: {e}"),
                )
            })
            .collect(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_starts_at_the_mtu_and_stops_at_576() {
        assert_eq!(
            ladder(1450),
            [1450, 1440, 1430, 1400, 1350, 1300, 1250, 1150, 950, 750]
        );
        assert_eq!(ladder(600), [600, 590, 580]);
        assert_eq!(ladder(576), [576]);
    }

    fn req() -> pb::ProbeRequest {
        pb::ProbeRequest {
            request_id: 1,
            targets: vec![pb::ProbeTarget::default(); 2],
            self_index: 1,
            vxlan_port: 4789,
            overlay_mtu: 1450,
            timeout_ms: 4000,
            wireguard: true,
        }
    }

    #[test]
    fn bad_requests_are_refused_before_anything_is_made() {
        assert_eq!(validate(&req()), Ok(()));
        let bad = [
            pb::ProbeRequest {
                targets: vec![],
                ..req()
            },
            pb::ProbeRequest {
                self_index: 2,
                ..req()
            },
            pb::ProbeRequest {
                vxlan_port: 70000,
                ..req()
            },
            pb::ProbeRequest {
                vxlan_port: 0,
                ..req()
            },
            pb::ProbeRequest {
                overlay_mtu: 100,
                ..req()
            },
            pb::ProbeRequest {
                timeout_ms: 0,
                ..req()
            },
            pb::ProbeRequest {
                timeout_ms: 3_600_000,
                ..req()
            },
        ];
        for r in bad {
            assert!(validate(&r).is_err(), "{r:?}");
        }
    }

    #[test]
    fn judge_tells_blocked_vxlan_from_a_small_path_mtu() {
        let vtep = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        let sizes = ladder(1450);
        let ok = EchoResult::Answered(Duration::from_micros(300));
        let lost = EchoResult::TimedOut;

        let all = vec![ok.clone(); 1 + sizes.len()];
        let r = judge("n2", vtep, 1450, &sizes, &all);
        assert!(r[0].ok && r[1].ok, "{r:?}");
        assert_eq!(r[1].largest_ok, 1450);

        // 1400 and below come back, 1430 and above do not.
        let mut small_path = vec![ok.clone()];
        small_path.extend(
            sizes
                .iter()
                .map(|s| if *s <= 1400 { ok.clone() } else { lost.clone() }),
        );
        let r = judge("n2", vtep, 1450, &sizes, &small_path);
        assert!(r[0].ok);
        assert!(!r[1].ok);
        assert_eq!(r[1].largest_ok, 1400);

        let none = vec![lost; 1 + sizes.len()];
        let r = judge("n2", vtep, 1450, &sizes, &none);
        assert_eq!(r.len(), 1, "no MTU verdict without VXLAN");
        assert!(!r[0].ok);
        assert!(r[0].detail.contains("198.18.0.2"), "{}", r[0].detail);
    }
}
