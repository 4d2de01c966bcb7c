//! The service-VIP table of a task namespace (`inet weft_lb`), kube-proxy
//! nftables style: locally generated connections to a VIP are DNATed to a
//! backend picked per connection (conntrack keeps the choice for the
//! flow); a VIP without backends is rejected so clients fail fast.
//!
//! ```text
//!  table inet weft_lb
//!    chain nat_output    { type nat hook output priority -100; }
//!      ip daddr VIP dnat ip to numgen random mod N map { 0 : b0, 1 : b1, … }   comment "weft-lb:VIP:<digest>"
//!    chain filter_output { type filter hook output priority 0; }
//!      ip daddr VIP reject                                                     comment "weft-lb:VIP:reject"
//! ```
//!
//! An IPv6 VIP (a dual-stack network's `vip6`) gets the same rules with
//! `ip6 daddr` and `dnat ip6 to`, over the service's IPv6 backends only;
//! the IPv4 VIP balances over the IPv4 ones.
//!
//! The table is owned whole: every change re-creates it in one nft
//! transaction, and the rule comments (VIP + digest of its backends) are
//! what the planner compares to decide whether to rewrite it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Map, NamedExpression, NgMode, Numgen, Payload, PayloadField, SetItem,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::model::names::NFT_LB_TABLE;
use crate::plan::lb_comment;

const NAT_CHAIN: &str = "nat_output";
const FILTER_CHAIN: &str = "filter_output";

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: NFT_LB_TABLE.into(),
        handle: None,
    }
}

fn daddr(vip: IpAddr) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: if vip.is_ipv4() { "ip" } else { "ip6" }.into(),
                field: "daddr".into(),
            },
        ))),
        right: Expression::String(vip.to_string().into()),
        op: Operator::EQ,
    })
}

/// The transaction that (re)creates the table for `vips` (VIP -> its
/// backends); add + delete + add makes it work whether the table exists.
pub fn lb_batch(vips: &BTreeMap<IpAddr, Vec<IpAddr>>) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
    for (name, kind, hook, prio) in [
        (NAT_CHAIN, NfChainType::NAT, NfHook::Output, -100),
        (FILTER_CHAIN, NfChainType::Filter, NfHook::Output, 0),
    ] {
        b.add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: NFT_LB_TABLE.into(),
            name: name.into(),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Default::default()
        }));
    }
    for (vip, backends) in vips {
        let comment = lb_comment(*vip, backends);
        let (chain, verdict) = if backends.is_empty() {
            (FILTER_CHAIN, Statement::Reject(None))
        } else {
            let map = backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    SetItem::Mapping(
                        Expression::Number(u32::try_from(i).expect("fewer than 2^32 backends")),
                        Expression::String(b.to_string().into()),
                    )
                })
                .collect();
            let addr = Expression::Named(NamedExpression::Map(Box::new(Map {
                key: Expression::Named(NamedExpression::Numgen(Numgen {
                    mode: NgMode::Random,
                    ng_mod: u32::try_from(backends.len()).expect("fewer than 2^32 backends"),
                    offset: None,
                })),
                data: Expression::Named(NamedExpression::Set(map)),
            })));
            (
                NAT_CHAIN,
                Statement::DNAT(Some(NAT {
                    addr: Some(addr),
                    family: Some(if vip.is_ipv4() {
                        NATFamily::IP
                    } else {
                        NATFamily::IP6
                    }),
                    port: None,
                    flags: None,
                })),
            )
        };
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: NFT_LB_TABLE.into(),
            chain: chain.into(),
            expr: Cow::Owned(vec![daddr(*vip), verdict]),
            comment: Some(comment.into()),
            ..Default::default()
        }));
    }
    b.to_nftables()
}

/// The transaction that deletes the table (absent is fine).
pub fn delete_lb_batch() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.to_nftables()
}

/// The rule comments of the table in a listing; `None` when it does not
/// exist.
pub fn lb_of(rs: &Nftables<'_>) -> Option<BTreeSet<String>> {
    super::nft::table_comments(rs, NFT_LB_TABLE, |f| *f == NfFamily::INet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::lb_comments;
    use nftables::schema::NfObject;

    #[test]
    fn batch_shape_and_comments_round_trip() {
        let vips = BTreeMap::from([
            (
                "10.0.9.100".parse().unwrap(),
                vec!["10.0.9.3".parse().unwrap(), "10.0.9.4".parse().unwrap()],
            ),
            ("10.0.9.101".parse().unwrap(), vec![]),
        ]);
        let rs = lb_batch(&vips);
        let json = serde_json::to_string(&rs).unwrap();
        assert!(
            json.contains(r#""numgen":{"mode":"random","mod":2}"#),
            "{json}"
        );
        assert!(json.contains(r#"[0,"10.0.9.3"]"#), "{json}");
        assert!(json.contains(r#""reject":null"#), "{json}");
        // What `lb_of` reads back from a listing of these objects is what
        // the planner wants.
        let listed = Nftables {
            objects: rs
                .objects
                .iter()
                .filter_map(|o| match o {
                    NfObject::CmdObject(nftables::schema::NfCmd::Add(obj)) => {
                        Some(NfObject::ListObject(obj.clone()))
                    }
                    _ => None,
                })
                .collect(),
        };
        assert_eq!(lb_of(&listed), Some(lb_comments(&vips)));
        assert_eq!(
            lb_of(&Nftables {
                objects: Cow::Owned(vec![])
            }),
            None
        );
    }
}
