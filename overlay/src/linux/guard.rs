//! Underlay hygiene: the nftables table `inet weft_guard` in the daemon's
//! namespace. VXLAN (UDP to the data-path port) is accepted only from the
//! underlay addresses of member nodes, held in two sets (`members4`,
//! `members6`), or out of the WireGuard device (its peers are
//! authenticated by WireGuard itself); anything else is counted and
//! dropped before it reaches the kernel's VXLAN socket.
//!
//! ```text
//!  chain input (filter, hook input, priority -10, policy accept)
//!    iifname "weft-wg0" udp dport P accept          weft-guard:tunnel:P
//!    ip  saddr != @members4 udp dport P counter drop weft-guard:drop4:P
//!    ip6 saddr != @members6 udp dport P counter drop weft-guard:drop6:P
//!    udp dport P counter                             weft-guard:members:P
//! ```
//!
//! Membership changes replace the sets' elements in one transaction and
//! keep the rules (and their counters); the rules are rewritten only when
//! their comments (which carry the port) differ.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::IpAddr;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::model::names::{NFT_GUARD_TABLE, WG_DEVICE};
use crate::plan::{ObservedGuard, guard_comments};

const SET4: &str = "members4";
const SET6: &str = "members6";
const CHAIN: &str = "input";

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: NFT_GUARD_TABLE.into(),
        handle: None,
    }
}

fn set(name: &'static str, v6: bool, members: &BTreeSet<IpAddr>) -> Set<'static> {
    let elems: Vec<Expression<'static>> = members
        .iter()
        .filter(|a| a.is_ipv6() == v6)
        .map(|a| Expression::String(a.to_string().into()))
        .collect();
    Set {
        family: NfFamily::INet,
        table: NFT_GUARD_TABLE.into(),
        name: name.into(),
        set_type: SetTypeValue::Single(if v6 {
            SetType::Ipv6Addr
        } else {
            SetType::Ipv4Addr
        }),
        elem: (!elems.is_empty()).then(|| Cow::Owned(elems)),
        ..Default::default()
    }
}

fn udp_dport(port: u16) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: "udp".into(),
                field: "dport".into(),
            },
        ))),
        right: Expression::Number(u32::from(port)),
        op: Operator::EQ,
    })
}

fn saddr_not_in(proto: &'static str, set: &'static str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: proto.into(),
                field: "saddr".into(),
            },
        ))),
        right: Expression::String(format!("@{set}").into()),
        op: Operator::NEQ,
    })
}

fn rule(expr: Vec<Statement<'static>>, comment: String) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: NFT_GUARD_TABLE.into(),
        chain: CHAIN.into(),
        expr: Cow::Owned(expr),
        comment: Some(comment.into()),
        ..Default::default()
    })
}

/// The transaction of [`crate::plan::Op::ApplyGuard`]: with `rules`, the
/// table re-created from scratch (add + delete + add works whether it
/// exists); without, only the sets' elements replaced.
pub fn guard_batch(port: u16, members: &BTreeSet<IpAddr>, rules: bool) -> Nftables<'static> {
    let mut b = Batch::new();
    if !rules {
        for (name, v6) in [(SET4, false), (SET6, true)] {
            b.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(set(
                name,
                v6,
                &BTreeSet::new(),
            )))));
            let s = set(name, v6, members);
            if let Some(elem) = s.elem {
                b.add(NfListObject::Element(Element {
                    family: NfFamily::INet,
                    table: NFT_GUARD_TABLE.into(),
                    name: name.into(),
                    elem,
                }));
            }
        }
        return b.to_nftables();
    }
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
    b.add(NfListObject::Set(Box::new(set(SET4, false, members))));
    b.add(NfListObject::Set(Box::new(set(SET6, true, members))));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: NFT_GUARD_TABLE.into(),
        name: CHAIN.into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Input),
        prio: Some(-10),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    let comments: Vec<String> = guard_comments(port).into_iter().collect();
    let comment = |kind: &str| {
        comments
            .iter()
            .find(|c| c.starts_with(&format!("weft-guard:{kind}:")))
            .cloned()
            .expect("guard_comments has every kind")
    };
    let counter = || Statement::Counter(Counter::Anonymous(None));
    b.add(rule(
        vec![
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::Iifname,
                })),
                right: Expression::String(WG_DEVICE.into()),
                op: Operator::EQ,
            }),
            udp_dport(port),
            Statement::Accept(None),
        ],
        comment("tunnel"),
    ));
    b.add(rule(
        vec![
            saddr_not_in("ip", SET4),
            udp_dport(port),
            counter(),
            Statement::Drop(None),
        ],
        comment("drop4"),
    ));
    b.add(rule(
        vec![
            saddr_not_in("ip6", SET6),
            udp_dport(port),
            counter(),
            Statement::Drop(None),
        ],
        comment("drop6"),
    ));
    b.add(rule(vec![udp_dport(port), counter()], comment("members")));
    b.to_nftables()
}

/// The transaction deleting the table (whether or not it exists).
pub fn delete_guard_batch() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.to_nftables()
}

/// The guard table as listed in `rs`; `None` if it does not exist.
pub fn guard_of(rs: &Nftables<'_>) -> Option<ObservedGuard> {
    let ours =
        |family: &NfFamily, table: &str| *family == NfFamily::INet && table == NFT_GUARD_TABLE;
    let mut found = false;
    let mut g = ObservedGuard::default();
    for o in rs.objects.iter() {
        match o {
            NfObject::ListObject(NfListObject::Table(t)) if ours(&t.family, &t.name) => {
                found = true;
            }
            NfObject::ListObject(NfListObject::Rule(r)) if ours(&r.family, &r.table) => {
                if let Some(c) = &r.comment {
                    g.comments.insert(c.to_string());
                }
            }
            NfObject::ListObject(NfListObject::Set(s)) if ours(&s.family, &s.table) => {
                for e in s.elem.iter().flat_map(|e| e.iter()) {
                    if let Expression::String(a) = e
                        && let Ok(ip) = a.parse::<IpAddr>()
                    {
                        g.members.insert(ip);
                    }
                }
            }
            _ => {}
        }
    }
    found.then_some(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nft -j list` would show for the objects a batch adds.
    fn listed(rs: &Nftables<'static>) -> Nftables<'static> {
        Nftables {
            objects: rs
                .objects
                .iter()
                .filter_map(|o| match o {
                    NfObject::CmdObject(NfCmd::Add(obj)) => Some(NfObject::ListObject(obj.clone())),
                    _ => None,
                })
                .collect(),
        }
    }

    #[test]
    fn batch_round_trips_through_guard_of() {
        let members: BTreeSet<IpAddr> = ["198.18.0.1", "198.18.0.2", "2001:db8::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let rs = guard_batch(4789, &members, true);
        let json = serde_json::to_string(&rs).unwrap();
        assert!(json.contains("\"@members4\""), "{json}");
        assert!(json.contains("\"weft-wg0\""), "{json}");
        let g = guard_of(&listed(&rs)).unwrap();
        assert_eq!(g.comments, guard_comments(4789));
        assert_eq!(g.members, members);
        assert_eq!(
            guard_of(&listed(&delete_guard_batch())),
            Some(ObservedGuard::default())
        );
        let only = guard_batch(4789, &members, false);
        let json = serde_json::to_string(&only).unwrap();
        assert!(json.contains("\"flush\""), "{json}");
        assert!(!json.contains("\"chain\""), "{json}");
    }
}
