//! The `weft` nftables tables of the daemon's namespace ([`Op::ApplyNat`]):
//! egress masquerade (NAT44 and NAT66) for the gateway bridge, what may be
//! forwarded through it, and the isolation of its task ports.
//!
//! ```text
//!  table inet weft
//!    chain postrouting { type nat hook postrouting priority srcnat; }
//!      ip saddr GW/16 oifname != "weft_gwbridge" masquerade         (and ip6 for GW6)
//!    chain forward { type filter hook forward priority filter; }
//!      iifname "weft_gwbridge" ip saddr != GW/16 drop              (spoofed sources; ip6 too)
//!      oifname "weft_gwbridge" ct status dnat accept               (published ports)
//!      oifname "weft_gwbridge" ct state new drop                   (nothing else comes in)
//!  table bridge weft
//!    chain forward { type filter hook forward priority filter; }
//!      meta mark & HAIRPIN_MARK == HAIRPIN_MARK accept
//!      iifname "weftgw*" oifname "weftgw*" drop
//! ```

use std::borrow::Cow;

use ipnetwork::IpNetwork;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix,
};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::model::names::{self, NFT_TABLE};
use crate::plan::HAIRPIN_MARK;
#[cfg(doc)]
use crate::plan::Op;

/// The nftables transaction of [`Op::ApplyNat`]: both tables re-created
/// from scratch (add + delete + add makes it work whether they exist).
pub(super) fn nat_batch(
    subnet: IpNetwork,
    subnet6: Option<IpNetwork>,
    bridge: &str,
) -> nftables::schema::Nftables<'static> {
    let comments: Vec<String> = crate::plan::nat_comments(subnet, subnet6, bridge)
        .into_iter()
        .collect();
    let isolate_comment = comments
        .iter()
        .find(|c| c.starts_with("weft:isolate"))
        .cloned()
        .expect("three comments");
    let hairpin_comment = comments
        .iter()
        .find(|c| c.starts_with("weft:hairpin"))
        .cloned()
        .expect("three comments");
    let mut b = drop_tables();
    for family in [NfFamily::INet, NfFamily::Bridge] {
        b.add(NfListObject::Table(table(family)));
    }
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: NFT_TABLE.into(),
        name: "postrouting".into(),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(100),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    for subnet in std::iter::once(subnet).chain(subnet6) {
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: NFT_TABLE.into(),
            chain: "postrouting".into(),
            expr: Cow::Owned(vec![
                saddr_in(subnet, Operator::EQ),
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Meta(Meta {
                        key: MetaKey::Oifname,
                    })),
                    right: Expression::String(bridge.to_owned().into()),
                    op: Operator::NEQ,
                }),
                Statement::Masquerade(None),
            ]),
            comment: Some(format!("weft:masquerade:{subnet}").into()),
            ..Default::default()
        }));
    }
    forward_rules(&mut b, subnet, subnet6, bridge);
    // Tasks of different networks share the gateway bridge: frames between
    // its task ports are dropped (Docker's icc=false), tasks reach only the
    // host. (nft 1.0.6 does not know the crate's "ibridgename" meta key, so
    // the ports are matched by our name prefix, `weftgw*`.)
    let port_match = |key| {
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Meta(Meta { key })),
            right: Expression::String(format!("{}*", names::GW_PORT_PREFIX).into()),
            op: Operator::EQ,
        })
    };
    b.add(forward_chain(NfFamily::Bridge));
    // Except hairpin traffic to a published port (see HAIRPIN_MARK):
    // with br_netfilter it is bridged port to port after its DNAT.
    let mark = || Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark }));
    b.add(NfListObject::Rule(Rule {
        family: NfFamily::Bridge,
        table: NFT_TABLE.into(),
        chain: "forward".into(),
        expr: Cow::Owned(vec![
            Statement::Match(Match {
                left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                    mark(),
                    Expression::Number(HAIRPIN_MARK),
                ))),
                right: Expression::Number(HAIRPIN_MARK),
                op: Operator::EQ,
            }),
            Statement::Accept(None),
        ]),
        comment: Some(hairpin_comment.into()),
        ..Default::default()
    }));
    b.add(NfListObject::Rule(Rule {
        family: NfFamily::Bridge,
        table: NFT_TABLE.into(),
        chain: "forward".into(),
        expr: Cow::Owned(vec![
            port_match(MetaKey::Iifname),
            port_match(MetaKey::Oifname),
            Statement::Drop(None),
        ]),
        comment: Some(isolate_comment.into()),
        ..Default::default()
    }));
    b.to_nftables()
}

/// `ip saddr OP SUBNET` (`ip6` for an IPv6 subnet).
fn saddr_in(subnet: IpNetwork, op: Operator) -> Statement<'static> {
    let proto = if subnet.is_ipv4() { "ip" } else { "ip6" };
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: proto.into(),
                field: "saddr".into(),
            },
        ))),
        right: Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(subnet.network().to_string().into())),
            len: u32::from(subnet.prefix()),
        })),
        op,
    })
}

/// The `forward` filter chain of weft's table in `family` (accept by
/// default; its rules drop what they must).
fn forward_chain<'a>(family: NfFamily) -> NfListObject<'a> {
    NfListObject::Chain(Chain {
        family,
        table: NFT_TABLE.into(),
        name: "forward".into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Forward),
        prio: Some(0),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    })
}

/// The `forward` chain of `inet weft`: what leaves the gateway bridge must
/// come from its subnets (a task cannot send spoofed sources out through
/// the node, which would not masquerade them), and what enters it is a
/// reply, or a connection a published port DNATed (no host that routes the
/// bridge's subnets through the node reaches a task's other ports).
fn forward_rules(b: &mut Batch, subnet: IpNetwork, subnet6: Option<IpNetwork>, bridge: &str) {
    b.add(forward_chain(NfFamily::INet));
    let meta = |key| Expression::Named(NamedExpression::Meta(Meta { key }));
    let is = |key, value: &str| {
        Statement::Match(Match {
            left: meta(key),
            right: Expression::String(value.to_owned().into()),
            op: Operator::EQ,
        })
    };
    let ct = |key: &'static str, value: &'static str| {
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::CT(CT {
                key: key.into(),
                family: None,
                dir: None,
            })),
            right: Expression::String(value.into()),
            op: Operator::IN,
        })
    };
    let rule = |expr: Vec<Statement<'static>>, comment: String| {
        NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: NFT_TABLE.into(),
            chain: "forward".into(),
            expr: Cow::Owned(expr),
            comment: Some(comment.into()),
            ..Default::default()
        })
    };
    for s in std::iter::once(subnet).chain(subnet6) {
        let nfproto = if s.is_ipv4() { "ipv4" } else { "ipv6" };
        b.add(rule(
            vec![
                is(MetaKey::Iifname, bridge),
                is(MetaKey::Nfproto, nfproto),
                saddr_in(s, Operator::NEQ),
                Statement::Drop(None),
            ],
            format!("weft:spoof:{s}"),
        ));
    }
    // Into the bridge: DNATed connections (published ports), then no other
    // new one.
    for (key, value, verdict, name) in [
        ("status", "dnat", Statement::Accept(None), "inbound-dnat"),
        ("state", "new", Statement::Drop(None), "inbound"),
    ] {
        b.add(rule(
            vec![is(MetaKey::Oifname, bridge), ct(key, value), verdict],
            format!("weft:{name}:{bridge}"),
        ));
    }
}

/// The `weft` table of `family`.
fn table(family: NfFamily) -> Table<'static> {
    Table {
        family,
        name: NFT_TABLE.into(),
        handle: None,
    }
}

/// A batch that deletes both `weft` tables whether or not they exist (add,
/// then delete).
fn drop_tables() -> Batch<'static> {
    let mut b = Batch::new();
    for family in [NfFamily::INet, NfFamily::Bridge] {
        b.add(NfListObject::Table(table(family)));
        b.delete(NfListObject::Table(table(family)));
    }
    b
}

/// The transaction deleting both `weft` tables (whether or not they exist).
pub(super) fn delete_nat_batch() -> nftables::schema::Nftables<'static> {
    drop_tables().to_nftables()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::dataplane::nat_of_for_tests as nat_of;
    use crate::model::names::GATEWAY_BRIDGE;
    use nftables::schema::NfObject;

    #[test]
    fn nat_batch_round_trips_through_the_comment_check() {
        let subnet: IpNetwork = "172.18.0.0/16".parse().unwrap();
        for subnet6 in [None, Some("fd77:6566:7400::ac12:0/112".parse().unwrap())] {
            nat_round_trip(subnet, subnet6);
        }
    }

    fn nat_round_trip(subnet: IpNetwork, subnet6: Option<IpNetwork>) {
        let rs = nat_batch(subnet, subnet6, GATEWAY_BRIDGE);
        let json = serde_json::to_string(&rs).unwrap();
        assert!(json.contains("masquerade"), "{json}");
        assert!(json.contains("\"weftgw*\""), "{json}");
        // What `nat_of` reads back from a listing with these rules is the
        // set the planner wants.
        let mut listed = Batch::new();
        for o in rs.objects.iter() {
            if let NfObject::CmdObject(nftables::schema::NfCmd::Add(obj)) = o {
                listed.add(obj.clone());
            }
        }
        let listed = nftables::schema::Nftables {
            objects: listed
                .to_nftables()
                .objects
                .iter()
                .map(|o| match o {
                    NfObject::CmdObject(nftables::schema::NfCmd::Add(obj)) => {
                        NfObject::ListObject(obj.clone())
                    }
                    other => other.clone(),
                })
                .collect(),
        };
        assert_eq!(
            nat_of(&listed),
            Some(crate::plan::nat_comments(subnet, subnet6, GATEWAY_BRIDGE))
        );
    }
}
