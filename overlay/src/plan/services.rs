//! Service VIPs (the nftables load balancer in task namespaces) and the
//! embedded DNS resolver: what the planner wants and the pass for them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Op, Pass};
use crate::model::names;
use crate::model::{DesiredNode, TaskId};

/// The service VIPs balanced inside `task`'s namespace: every VIP of a
/// service on one of its networks (on a dual-stack network, its IPv4 `vip`
/// and its IPv6 `vip6`), each with that service's backends of the VIP's
/// family (sorted and unique, so reordering them changes nothing).
pub fn task_vips(desired: &DesiredNode, task: &TaskId) -> BTreeMap<IpAddr, Vec<IpAddr>> {
    let mut out: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
    let Some(t) = desired.tasks.get(task) else {
        return BTreeMap::new();
    };
    for ep in &t.endpoints {
        let Some(net) = desired.networks.get(&ep.network) else {
            continue;
        };
        for svc in net.services.values() {
            for vip in svc.vip.into_iter().chain(svc.vip6) {
                out.entry(vip)
                    .or_default()
                    .extend(svc.backends.iter().filter(|b| b.is_ipv4() == vip.is_ipv4()));
            }
        }
    }
    out.into_iter()
        .map(|(v, b)| (v, b.into_iter().collect()))
        .collect()
}

/// Prefix of the comment each VIP's rule carries in the service-VIP table.
pub const LB_COMMENT_PREFIX: &str = "weft-lb:";

/// The comment of `vip`'s rule: the VIP and a digest of its backends, so
/// observing the comments tells whether the table is what we want.
pub fn lb_comment(vip: IpAddr, backends: &[IpAddr]) -> String {
    if backends.is_empty() {
        return format!("{LB_COMMENT_PREFIX}{vip}:reject");
    }
    let list: Vec<String> = backends.iter().map(IpAddr::to_string).collect();
    format!(
        "{LB_COMMENT_PREFIX}{vip}:{:016x}",
        names::fnv1a(&list.join(","))
    )
}

/// The comments a service-VIP table for `vips` carries.
pub fn lb_comments(vips: &BTreeMap<IpAddr, Vec<IpAddr>>) -> BTreeSet<String> {
    vips.iter().map(|(v, b)| lb_comment(*v, b)).collect()
}

/// The VIP named by a comment of the service-VIP table.
pub fn lb_comment_vip(comment: &str) -> Option<IpAddr> {
    let rest = comment.strip_prefix(LB_COMMENT_PREFIX)?;
    let (vip, _) = rest.rsplit_once(':')?;
    vip.parse().ok()
}
/// Service VIPs and DNS in task namespaces (after lo is up).
pub(super) fn services(p: &mut Pass) {
    let (observed, desired) = (p.observed, p.desired);
    let ops = &mut p.ops;
    // Tasks on the same networks balance the same VIPs: their table and its
    // comments are made once (250 tasks on one network with a 250-replica
    // service made them 250 times: 63,000 backends formatted, 10 ms a pass).
    type Table = (BTreeMap<IpAddr, Vec<IpAddr>>, BTreeSet<String>);
    let mut by_networks: BTreeMap<BTreeSet<&crate::model::NetworkId>, Table> = BTreeMap::new();
    for (tid, task) in &desired.tasks {
        if task.handover && task.netns.is_none() {
            continue;
        }
        let obs = observed.tasks.get(tid);
        let networks = task.endpoints.iter().map(|e| &e.network).collect();
        let (vips, comments) = by_networks.entry(networks).or_insert_with(|| {
            let vips = task_vips(desired, tid);
            let comments = lb_comments(&vips);
            (vips, comments)
        });
        let had = obs.and_then(|o| o.lb.as_ref());
        let old: BTreeSet<IpAddr> = had
            .into_iter()
            .flatten()
            .filter_map(|c| lb_comment_vip(c))
            .collect();
        if !vips.is_empty() && had != Some(comments) {
            // A namespace this pass makes has no flows yet: nothing to
            // flush. One adopted from another runtime (`netns`) may have.
            let mut flush = old;
            if obs.is_some() || task.netns.is_some() {
                flush.extend(vips.keys().copied());
            }
            ops.push(Op::ApplyLb {
                task: tid.clone(),
                vips: vips.clone(),
                flush,
            });
        } else if vips.is_empty() && had.is_some() {
            ops.push(Op::DeleteLb {
                task: tid.clone(),
                flush: old,
            });
        }
        if obs.is_none() || !observed.dns.contains(tid) {
            ops.push(Op::StartDns {
                task: tid.clone(),
                addr: task.resolver.unwrap_or(crate::dns::RESOLVER_ADDR),
            });
        }
    }
}
