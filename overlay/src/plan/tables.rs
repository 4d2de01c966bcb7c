//! The daemon namespace's nftables tables as the planner wants them:
//! published ports, NAT and the underlay guard, and the pass that
//! (re)writes them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::{Op, Pass};
use crate::model::names::{self, GATEWAY_BRIDGE};
use crate::model::{DesiredNode, Proto};

/// The network-side end (in the ingress network's namespace, plugged into
/// its `br0`) of the veth whose daemon-side end is [`names::INGRESS_IF`].
/// Task ports are `vt` + 10 hex digits, so this cannot collide.
pub const INGRESS_PORT: &str = "vt-ingress";

/// Prefix of every rule comment in the published-ports table.
pub const PORTS_COMMENT_PREFIX: &str = "weft-ports:";

/// Longest owner text kept in a rule comment (nft limits comments to 128
/// bytes).
const OWNER_IN_COMMENT: usize = 64;

/// The published-ports table as the planner wants it: a pure rendering of
/// [`DesiredNode::ports`], the gateway subnet and the ingress endpoint,
/// turned into nftables rules by `crate::linux::ports`.
///
/// ```text
///  prerouting (nat, dstnat):  fib daddr type local  PROTO dport P  dnat ip to numgen random mod N map {…} : T
///  output     (nat, -100):    the same, for connections from the node itself (not to 127/8)
///  postrouting (nat, srcnat): ct status dnat oifname weft_ingress masquerade          (remote backends)
///                             ct status dnat ip saddr GW oifname weft_gwbridge masquerade (hairpin)
///  hairpin (filter, dstnat+10): iifname weft_gwbridge ip daddr GW ct status dnat meta mark set mark | HAIRPIN_MARK
///  forward   (filter, 0):     ct status dnat accept    (after the operator's weft-user at -10)
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsTable {
    /// One DNAT rule pair per published port that has a usable backend,
    /// sorted by (proto, port).
    pub rules: Vec<PortRule>,
    /// The gateway-bridge subnet (IPv4 only): connections DNATed back into
    /// it from inside it are masqueraded (hairpin), so replies return
    /// through this node's conntrack.
    pub hairpin: Option<IpNetwork>,
    /// The gateway bridge's IPv6 subnet, hairpinned the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hairpin6: Option<IpNetwork>,
    /// Whether connections DNATed out of [`names::INGRESS_IF`] (to remote
    /// backends) are masqueraded to the node's ingress address.
    pub ingress: bool,
}

/// One published port in the table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRule {
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// Port on the node.
    pub port: u16,
    /// Port on the backend.
    pub target_port: u16,
    /// The backends one is picked from per connection (IPv4, sorted,
    /// unique, not empty).
    pub backends: Vec<IpAddr>,
    /// Where connections to the node's IPv6 addresses go (sorted, unique):
    /// the IPv6 addresses on the gateway bridge of the local backends that
    /// have one, or (`remote`) the remote backends' IPv6 addresses on a
    /// dual-stack ingress network. Empty: the port is IPv4 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends6: Vec<IpAddr>,
    /// Whether they are remote (ingress network) rather than local
    /// (gateway bridge) backends.
    pub remote: bool,
    /// Who published it (for the comment).
    pub owner: String,
}

impl PortRule {
    /// The comment of this port's rule in `chain` (`pre` or `out`): proto,
    /// port, a digest of everything else, and the owner, so observing the
    /// comments tells whether the rule is what we want.
    pub fn comment(&self, chain: &str) -> String {
        let list: Vec<String> = self
            .backends
            .iter()
            .chain(&self.backends6)
            .map(IpAddr::to_string)
            .collect();
        let digest = names::fnv1a(&format!(
            "{}|{}|{}|{}",
            self.target_port,
            self.remote,
            list.join(","),
            self.owner
        ));
        let mut owner = self.owner.clone();
        if owner.len() > OWNER_IN_COMMENT {
            let mut cut = OWNER_IN_COMMENT;
            while !owner.is_char_boundary(cut) {
                cut -= 1;
            }
            owner.truncate(cut);
        }
        format!(
            "{PORTS_COMMENT_PREFIX}{chain}:{}/{}:{digest:016x} {owner}",
            self.proto, self.port
        )
        .trim_end()
        .to_owned()
    }
}

impl PortsTable {
    /// The comment of the forward chain's `ct status dnat accept` rule.
    pub const FORWARD_COMMENT: &'static str = "weft-ports:forward";
    /// The comment of the masquerade towards the ingress network.
    pub const INGRESS_COMMENT: &'static str = "weft-ports:ingress";

    /// The comment of the counter rule that ends base chain `chain` (so a
    /// deleted, empty chain is noticed too).
    pub fn chain_comment(chain: &str) -> String {
        format!("{PORTS_COMMENT_PREFIX}chain:{chain}")
    }

    /// The comment of the hairpin masquerade for `subnet`.
    pub fn hairpin_comment(subnet: IpNetwork) -> String {
        format!("{PORTS_COMMENT_PREFIX}hairpin:{subnet}")
    }

    /// The comment of the rule marking hairpin packets for `subnet` (see
    /// [`HAIRPIN_MARK`]).
    pub fn hairpin_mark_comment(subnet: IpNetwork) -> String {
        format!("{PORTS_COMMENT_PREFIX}hairpin-mark:{subnet}")
    }

    /// Every rule comment the table carries; the observed set is compared
    /// with these to decide whether to rewrite it.
    pub fn comments(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = ["prerouting", "output", "postrouting"]
            .into_iter()
            .map(Self::chain_comment)
            .collect();
        out.insert(Self::FORWARD_COMMENT.to_owned());
        if self.ingress {
            out.insert(Self::INGRESS_COMMENT.to_owned());
        }
        for s in self.hairpin.iter().chain(&self.hairpin6) {
            out.insert(Self::hairpin_comment(*s));
            out.insert(Self::hairpin_mark_comment(*s));
        }
        for r in &self.rules {
            out.insert(r.comment("pre"));
            out.insert(r.comment("out"));
            if !r.backends6.is_empty() {
                out.insert(r.comment("pre6"));
                out.insert(r.comment("out6"));
            }
        }
        out
    }
}

/// The published-ports table `desired` wants; `None` (no table) when it has
/// neither ports nor an ingress endpoint.
///
/// Per port, local backends win; remote ones are used only when there is
/// no local one and the node has an ingress endpoint (without one they are
/// unreachable and skipped). A port left without backends gets no rule
/// (connections to it reach the node's own stack, as for any unpublished
/// port). Over IPv6 (the node's IPv6 addresses), a port reaches the local
/// backends that have an IPv6 address on the gateway bridge, or else the
/// remote ones' IPv6 addresses when the ingress network is dual stack.
pub fn ports_table(desired: &DesiredNode) -> Option<PortsTable> {
    if desired.ports.is_empty() && desired.ingress.is_none() {
        return None;
    }
    let ingress = desired.ingress.as_ref().is_some_and(|i| i.ip.is_ipv4());
    let ingress6 = ingress && desired.ingress.as_ref().is_some_and(|i| i.ip6.is_some());
    let v4 = |list: &[IpAddr]| -> Vec<IpAddr> {
        let set: BTreeSet<IpAddr> = list.iter().copied().filter(IpAddr::is_ipv4).collect();
        set.into_iter().collect()
    };
    // A local backend's IPv6 address on the gateway bridge, by its IPv4 one.
    let gw6: BTreeMap<IpAddr, IpAddr> = desired
        .tasks
        .values()
        .filter_map(|t| t.gateway.as_ref())
        .filter_map(|g| Some((g.ip.ip(), g.ip6?.ip())))
        .collect();
    let mut rules: Vec<PortRule> = desired
        .ports
        .iter()
        .filter_map(|p| {
            let local = v4(&p.local);
            let (backends, remote) = if !local.is_empty() {
                (local, false)
            } else if ingress {
                (v4(&p.remote), true)
            } else {
                (Vec::new(), true)
            };
            let backends6: Vec<IpAddr> = if remote {
                // Over a dual-stack ingress network.
                if ingress6 {
                    let set: BTreeSet<IpAddr> =
                        p.remote.iter().copied().filter(IpAddr::is_ipv6).collect();
                    set.into_iter().collect()
                } else {
                    Vec::new()
                }
            } else {
                let set: BTreeSet<IpAddr> = backends
                    .iter()
                    .filter_map(|b| gw6.get(b))
                    .copied()
                    .collect();
                set.into_iter().collect()
            };
            (!backends.is_empty()).then(|| PortRule {
                proto: p.proto,
                port: p.port,
                target_port: p.target_port,
                backends,
                backends6,
                remote,
                owner: p.owner.clone(),
            })
        })
        .collect();
    rules.sort();
    Some(PortsTable {
        rules,
        hairpin: desired
            .gateway
            .as_ref()
            .map(|g| g.subnet)
            .filter(IpNetwork::is_ipv4),
        hairpin6: desired
            .gateway
            .as_ref()
            .and_then(|g| g.ipv6)
            .map(|(s, _)| s),
        ingress,
    })
}

/// Whether `desired` wants the operator's chain [`names::USER_CHAIN`]:
/// whenever weft forwards anything in the daemon's namespace (a gateway
/// bridge, published ports or an ingress endpoint).
pub fn wants_user_chain(desired: &DesiredNode) -> bool {
    desired.gateway.is_some() || !desired.ports.is_empty() || desired.ingress.is_some()
}

/// The rule comments the `weft` nftables tables carry for `subnet`; the
/// observed set is compared with these to decide whether to rewrite them.
pub fn nat_comments(
    subnet: IpNetwork,
    subnet6: Option<IpNetwork>,
    bridge: &str,
) -> BTreeSet<String> {
    let mut c = BTreeSet::from([
        format!("weft:isolate:{bridge}"),
        format!("weft:hairpin:{bridge}"),
        format!("weft:inbound-dnat:{bridge}"),
        format!("weft:inbound:{bridge}"),
    ]);
    for s in std::iter::once(subnet).chain(subnet6) {
        c.insert(format!("weft:masquerade:{s}"));
        c.insert(format!("weft:spoof:{s}"));
    }
    c
}

/// The packet mark bit of hairpin traffic: a connection from the gateway
/// bridge DNATed (published port) to a backend on the same bridge. With
/// `br_netfilter` loaded (any Docker host) such packets are *bridged*
/// from one task port to another after the DNAT, where the port isolation
/// of the `bridge weft` table would drop them; this mark (set per packet
/// in `inet weft_ports`, read in `bridge weft`) exempts them. The kernel
/// clears marks when a packet crosses into another namespace, so tasks
/// never see it.
pub const HAIRPIN_MARK: u32 = 0x2000_0000;

/// The rule comments the underlay-hygiene table carries for VXLAN `port`;
/// the observed set is compared with these to decide whether to rewrite
/// its rules.
pub fn guard_comments(port: u16) -> BTreeSet<String> {
    BTreeSet::from([
        format!("weft-guard:tunnel:{port}"),
        format!("weft-guard:drop4:{port}"),
        format!("weft-guard:drop6:{port}"),
        format!("weft-guard:members:{port}"),
    ])
}

/// The operator's chain, NAT, published ports and the underlay guard.
pub(super) fn tables(p: &mut Pass, ports: Option<PortsTable>) {
    let (observed, desired) = (p.observed, p.desired);
    let ops = &mut p.ops;
    if wants_user_chain(desired) && !observed.user_chain {
        ops.push(Op::EnsureUserChain);
    }
    if let Some(gw) = &desired.gateway
        && observed.nat.as_ref()
            != Some(&nat_comments(
                gw.subnet,
                gw.ipv6.map(|(s, _)| s),
                GATEWAY_BRIDGE,
            ))
    {
        ops.push(Op::ApplyNat {
            subnet: gw.subnet,
            subnet6: gw.ipv6.map(|(s, _)| s),
            bridge: GATEWAY_BRIDGE.to_owned(),
        });
    }
    if let Some(table) = ports
        && observed.ports.as_ref() != Some(&table.comments())
    {
        ops.push(Op::ApplyPorts { table });
    }
    // --- underlay hygiene.
    if let Some(members) = &desired.vxlan_allowed_sources {
        let rules = observed
            .guard
            .as_ref()
            .is_none_or(|g| g.comments != guard_comments(desired.vxlan_port));
        if rules
            || observed
                .guard
                .as_ref()
                .is_some_and(|g| &g.members != members)
        {
            ops.push(Op::ApplyGuard {
                port: desired.vxlan_port,
                members: members.clone(),
                rules,
            });
        }
    }
}
