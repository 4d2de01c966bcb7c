//! The pure planner: what exists ([`Observed`]) + what should exist
//! ([`DesiredNode`]) -> the ordered kernel operations ([`Op`]) that make the
//! first into the second. No IO here; the Linux executor
//! ([`crate::linux::dataplane`]) reads the kernel into an `Observed` and runs
//! the ops, the fake ([`crate::fake`]) simulates them.
//!
//! Kernel layout (DESIGN §3), names from [`crate::model::names`]:
//!
//! ```text
//!  daemon ns:  weft_gwbridge (gw ip) ── weftgw<h(t)> ─veth─┐        nft: inet weft (masquerade)
//!              weft_ingress (ingress ip, mac) ─veth─┐     │             bridge weft (port isolation)
//!                                                   │     │             inet weft_ports (published ports)
//!                                                   │     │             inet weft_user (operator's, never flushed)
//!  <exec>/netns/net-<n>:  br0 (net gateway ip)      │     │
//!                          ├─ weft-vx<vni> (learning off, proxy on; FDB + neigh per remote)
//!                          ├─ vt-ingress ───────────┘ (ingress network only)
//!                          └─ vt<h(t)> ─veth─┐            │
//!  <exec>/netns/task-<t>:  lo, eth<i> ───────┘ (ip, mac)  gw0 (ip, mac), default via gw bridge
//! ```
//!
//! Op order: deletes first (stale or mis-shaped links, removed tasks, then
//! removed networks, stale FDB/neighbour entries, addresses and routes, the
//! NAT tables), then creates (namespaces, bridges and VXLAN devices, veth
//! pairs), then link properties (MTU, MAC, master, addresses, up), then
//! routes, FDB/neighbour entries and NAT. Links that cross namespaces are
//! deleted explicitly before their namespace goes, so the next observation
//! never sees the kernel's asynchronous namespace cleanup half done.
//!
//! Dual stack (a network with `subnet6`): `br0` carries the IPv6 gateway
//! too, a task's `eth<i>` its IPv6 address (added without DAD), and each
//! remote has a second permanent neighbour entry (its IPv6 address, same
//! MAC) beside the IPv4 one; the VXLAN device's proxy answers neighbour
//! solicitations from them as it answers ARP. A node with such a task
//! gets IPv6 on the gateway bridge too ([`crate::model::GatewayBridge::with_ipv6`]): the
//! task's `gw0` an IPv6 address and default route, NAT66 beside the IPv4
//! masquerade, IPv6 forwarding ([`Op::EnableIpv6Forwarding`]) and DNAT of
//! published ports from the node's IPv6 addresses to local backends.
//! weft's addressed links in the daemon's namespace never accept router
//! advertisements ([`Op::RefuseRa`]).

mod entries;
mod error;
mod host;
mod links;
mod observed;
mod ops;
mod services;
mod tables;
mod validate;
mod want;
mod wireguard;

use std::collections::BTreeSet;

pub use error::PlanError;
pub use observed::*;
pub use ops::Op;
pub use services::{LB_COMMENT_PREFIX, lb_comment, lb_comment_vip, lb_comments, task_vips};
pub use tables::{
    HAIRPIN_MARK, INGRESS_PORT, PORTS_COMMENT_PREFIX, PortRule, PortsTable, guard_comments,
    nat_comments, ports_table, wants_user_chain,
};
pub use validate::{colliding_route, validate};
pub use wireguard::wg_peers;

use crate::model::DesiredNode;
use want::{Want, want};

/// The ordered operations that turn `observed` into `desired`; an empty plan
/// means the kernel already matches. Fails (planning nothing) when the
/// desired state is invalid or the gateway subnet collides with a route.
pub fn plan(observed: &Observed, desired: &DesiredNode) -> Result<Vec<Op>, PlanError> {
    validate(observed, desired)?;
    let mut p = Pass {
        observed,
        desired,
        want: want(desired),
        fresh: BTreeSet::new(),
        ops: Vec::new(),
    };
    let (bad_pairs, gw_bridge_delete) = links::delete_links(&mut p);
    links::delete_removed(&mut p);
    entries::delete_stale_entries(&mut p);
    let (wg_ok, ports) = host::delete_host_objects(&mut p, gw_bridge_delete);
    links::create_links(&mut p, wg_ok, ports.as_ref(), &bad_pairs);
    links::set_link_properties(&mut p);
    wireguard::wireguard_peers(&mut p, wg_ok)?;
    entries::routes_and_entries(&mut p);
    tables::tables(&mut p, ports);
    services::services(&mut p);
    Ok(p.ops)
}

/// One planning pass: its inputs, the wanted shape, and what it decided.
struct Pass<'a> {
    observed: &'a Observed,
    desired: &'a DesiredNode,
    want: Want,
    /// Links that exist but are (or will be) gone by the create phase:
    /// those deleted here, and those of namespaces that do not exist yet.
    fresh: BTreeSet<(NsRef, String)>,
    ops: Vec<Op>,
}

#[cfg(test)]
mod tests;
