//! Published ports and the operator's firewall chain, in the daemon's
//! namespace.
//!
//! Owns two nftables tables:
//!
//! * `inet weft_ports` ([`NFT_PORTS_TABLE`]), rendered purely from a
//!   [`PortsTable`] and owned whole: every change re-creates it in one
//!   transaction, and its rule comments (see [`PortsTable::comments`]) are
//!   what the planner compares to notice drift.
//!
//!   ```text
//!    chain prerouting  { type nat hook prerouting priority dstnat; }
//!      meta nfproto ipv4 fib daddr type local tcp dport P dnat ip to numgen random mod N map { 0 : B0, … } : T
//!      counter                                              comment "weft-ports:chain:prerouting"
//!    chain output      { type nat hook output priority -100; }
//!      meta nfproto ipv4 fib daddr type local ip daddr != 127.0.0.0/8 tcp dport P dnat ip to … : T
//!      counter
//!    (and for a port with local IPv6 backends, the same two rules with
//!    `meta nfproto ipv6`, `ip6 daddr != ::1` and `dnat ip6 to` them)
//!    chain postrouting { type nat hook postrouting priority srcnat; }
//!      ct status dnat oifname "weft_ingress" masquerade                       (remote backends)
//!      ct status dnat ip saddr GW/16 oifname "weft_gwbridge" masquerade       (hairpin;
//!                                                          also ip6 for the bridge's IPv6 subnet)
//!      counter
//!    chain hairpin     { type filter hook prerouting priority dstnat + 10; }
//!      iifname "weft_gwbridge" ip daddr GW/16 ct status dnat meta mark set meta mark | HAIRPIN_MARK
//!    chain forward     { type filter hook forward priority filter; }
//!      ct status dnat accept
//!   ```
//!
//!   The hairpin mark lets DNATed packets between two tasks on the gateway
//!   bridge pass its port isolation when `br_netfilter` bridges them (see
//!   [`HAIRPIN_MARK`]).
//!
//!   Local backends are reached over the gateway bridge without source
//!   NAT, so they see the client's address; only connections leaving
//!   towards the ingress network (the reply must come back through this
//!   node) and hairpin connections from the gateway bridge back into it are
//!   masqueraded.
//!
//! * `inet weft_user` ([`NFT_USER_TABLE`]) with the base chain `weft-user`
//!   ([`USER_CHAIN`], `type filter hook forward priority filter - 10`,
//!   policy accept): the operator's place for forwarding rules, evaluated
//!   before weft's own `forward` chain (a `drop` there wins). weft only ever
//!   `add`s it when missing, which never flushes or changes an existing
//!   table or chain; nothing here deletes it, teardown included.

use std::borrow::Cow;
use std::collections::BTreeSet;

use ipnetwork::IpNetwork;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, CT, Expression, Fib, FibFlag, FibResult, Map, Meta, MetaKey, NamedExpression,
    NgMode, Numgen, Payload, PayloadField, Prefix, SetItem,
};
use nftables::schema::{Chain, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, Mangle, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::model::names::{
    GATEWAY_BRIDGE, INGRESS_IF, NFT_PORTS_TABLE, NFT_USER_TABLE, USER_CHAIN,
};
use crate::plan::{HAIRPIN_MARK, PortRule, PortsTable};

const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
const POSTROUTING: &str = "postrouting";
const FORWARD: &str = "forward";
const HAIRPIN: &str = "hairpin";

/// Priority of the operator's chain: before weft's `forward` chain (0).
pub const USER_CHAIN_PRIORITY: i32 = -10;

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: NFT_PORTS_TABLE.into(),
        handle: None,
    }
}

fn user_table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: NFT_USER_TABLE.into(),
        handle: None,
    }
}

fn base_chain(
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: NFT_PORTS_TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    })
}

fn rule(
    chain: &'static str,
    expr: Vec<Statement<'static>>,
    comment: String,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: NFT_PORTS_TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        comment: Some(comment.into()),
        ..Default::default()
    })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn prefix(net: IpNetwork) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: u32::from(net.prefix()),
    }))
}

/// `fib daddr type local`: any address of the daemon's namespace.
fn to_local_address() -> Statement<'static> {
    eq(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr].into_iter().collect(),
        })),
        Expression::String("local".into()),
    )
}

/// `ct status dnat`: a connection one of the DNAT rules rewrote.
fn dnated() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "status".into(),
            family: None,
            dir: None,
        })),
        right: Expression::String("dnat".into()),
        op: Operator::IN,
    })
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

/// `dnat ip to numgen random mod N map { 0 : B0, … } : T` (or the one
/// backend directly); `ip6` and [`PortRule::backends6`] for `v6`.
fn dnat(r: &PortRule, v6: bool) -> Statement<'static> {
    let backends = if v6 { &r.backends6 } else { &r.backends };
    let addr = if let [one] = backends.as_slice() {
        Expression::String(one.to_string().into())
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
        Expression::Named(NamedExpression::Map(Box::new(Map {
            key: Expression::Named(NamedExpression::Numgen(Numgen {
                mode: NgMode::Random,
                ng_mod: u32::try_from(backends.len()).expect("fewer than 2^32 backends"),
                offset: None,
            })),
            data: Expression::Named(NamedExpression::Set(map)),
        })))
    };
    Statement::DNAT(Some(NAT {
        addr: Some(addr),
        family: Some(if v6 { NATFamily::IP6 } else { NATFamily::IP }),
        port: Some(Expression::Number(u32::from(r.target_port))),
        flags: None,
    }))
}

fn dport(r: &PortRule) -> Statement<'static> {
    let proto = match r.proto {
        crate::model::Proto::Tcp => "tcp",
        crate::model::Proto::Udp => "udp",
    };
    eq(
        payload(proto, "dport"),
        Expression::Number(u32::from(r.port)),
    )
}

/// The transaction of [`crate::plan::Op::ApplyPorts`]: the table
/// re-created from scratch (add + delete + add works whether it exists).
pub fn ports_batch(t: &PortsTable) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
    b.add(base_chain(
        PREROUTING,
        NfChainType::NAT,
        NfHook::Prerouting,
        -100,
    ));
    b.add(base_chain(OUTPUT, NfChainType::NAT, NfHook::Output, -100));
    b.add(base_chain(
        POSTROUTING,
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    ));
    b.add(base_chain(FORWARD, NfChainType::Filter, NfHook::Forward, 0));
    for r in &t.rules {
        for v6 in [false, true] {
            if v6 && r.backends6.is_empty() {
                continue;
            }
            let (nfproto, ip, lo, suffix) = if v6 {
                ("ipv6", "ip6", "::1/128", "6")
            } else {
                ("ipv4", "ip", "127.0.0.0/8", "")
            };
            b.add(rule(
                PREROUTING,
                vec![
                    eq(meta(MetaKey::Nfproto), Expression::String(nfproto.into())),
                    to_local_address(),
                    dport(r),
                    dnat(r, v6),
                ],
                r.comment(&format!("pre{suffix}")),
            ));
            // From the node itself: its own addresses but not loopback (a
            // DNATed loopback source could not leave the host).
            b.add(rule(
                OUTPUT,
                vec![
                    eq(meta(MetaKey::Nfproto), Expression::String(nfproto.into())),
                    to_local_address(),
                    Statement::Match(Match {
                        left: payload(ip, "daddr"),
                        right: prefix(lo.parse().expect("valid prefix")),
                        op: Operator::NEQ,
                    }),
                    dport(r),
                    dnat(r, v6),
                ],
                r.comment(&format!("out{suffix}")),
            ));
        }
    }
    if t.ingress {
        b.add(rule(
            POSTROUTING,
            vec![
                dnated(),
                eq(
                    meta(MetaKey::Oifname),
                    Expression::String(INGRESS_IF.into()),
                ),
                Statement::Masquerade(None),
            ],
            PortsTable::INGRESS_COMMENT.to_owned(),
        ));
    }
    if t.hairpin.is_some() || t.hairpin6.is_some() {
        b.add(base_chain(
            HAIRPIN,
            NfChainType::Filter,
            NfHook::Prerouting,
            -90,
        ));
    }
    for subnet in t.hairpin.iter().chain(&t.hairpin6).copied() {
        let ip = if subnet.is_ipv4() { "ip" } else { "ip6" };
        let mark = || Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark }));
        b.add(rule(
            HAIRPIN,
            vec![
                eq(
                    meta(MetaKey::Iifname),
                    Expression::String(GATEWAY_BRIDGE.into()),
                ),
                eq(payload(ip, "daddr"), prefix(subnet)),
                dnated(),
                Statement::Mangle(Mangle {
                    key: mark(),
                    value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                        mark(),
                        Expression::Number(HAIRPIN_MARK),
                    ]))),
                }),
            ],
            PortsTable::hairpin_mark_comment(subnet),
        ));
        b.add(rule(
            POSTROUTING,
            vec![
                dnated(),
                eq(payload(ip, "saddr"), prefix(subnet)),
                eq(
                    meta(MetaKey::Oifname),
                    Expression::String(GATEWAY_BRIDGE.into()),
                ),
                Statement::Masquerade(None),
            ],
            PortsTable::hairpin_comment(subnet),
        ));
    }
    for chain in [PREROUTING, OUTPUT, POSTROUTING] {
        b.add(rule(
            chain,
            vec![counter()],
            PortsTable::chain_comment(chain),
        ));
    }
    b.add(rule(
        FORWARD,
        vec![dnated(), Statement::Accept(None)],
        PortsTable::FORWARD_COMMENT.to_owned(),
    ));
    b.to_nftables()
}

/// The transaction deleting the ports table (whether or not it exists).
pub fn delete_ports_batch() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.to_nftables()
}

/// The transaction of [`crate::plan::Op::EnsureUserChain`]: `add` of the
/// table and the base chain, which leaves existing ones (and their rules)
/// as they are.
pub fn user_chain_batch() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(user_table()));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: NFT_USER_TABLE.into(),
        name: USER_CHAIN.into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Forward),
        prio: Some(USER_CHAIN_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    b.to_nftables()
}

/// The rule comments of the ports table in a listing; `None` when it does
/// not exist.
pub fn ports_of(rs: &Nftables<'_>) -> Option<BTreeSet<String>> {
    super::nft::table_comments(rs, NFT_PORTS_TABLE, |f| *f == NfFamily::INet)
}

/// Whether the operator's chain exists in a listing.
pub fn user_chain_of(rs: &Nftables<'_>) -> bool {
    rs.objects.iter().any(|o| {
        matches!(o, NfObject::ListObject(NfListObject::Chain(c))
            if c.family == NfFamily::INet && c.table == NFT_USER_TABLE && c.name == USER_CHAIN)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DesiredNode, GatewayBridge, IngressEndpoint, Proto, PublishedPort};
    use crate::plan::ports_table;

    /// What `nft -j list` would show for the objects a batch adds.
    fn listed(rs: &Nftables<'static>) -> Nftables<'static> {
        Nftables {
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
        }
    }

    fn port(proto: Proto, port: u16, local: &[&str], remote: &[&str]) -> PublishedPort {
        PublishedPort {
            proto,
            port,
            target_port: 80,
            local: local.iter().map(|a| a.parse().unwrap()).collect(),
            remote: remote.iter().map(|a| a.parse().unwrap()).collect(),
            owner: format!("service s{port}"),
        }
    }

    fn desired() -> DesiredNode {
        let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
        d.gateway = Some(GatewayBridge::default());
        d.ingress = Some(IngressEndpoint {
            ip6: None,
            network: "ingress".into(),
            ip: "10.255.0.2/16".parse().unwrap(),
            mac: "02:42:0a:ff:00:02".parse().unwrap(),
        });
        d.ports = vec![
            port(
                Proto::Tcp,
                8080,
                &["172.18.0.3", "172.18.0.2"],
                &["10.255.0.9"],
            ),
            port(Proto::Udp, 5353, &["172.18.0.2"], &[]),
            port(Proto::Tcp, 9000, &[], &["10.255.0.9", "10.255.0.8"]),
            // Only IPv6 backends: no rule.
            port(Proto::Tcp, 9001, &["fd00::2"], &[]),
        ];
        d
    }

    #[test]
    fn batch_renders_every_rule_and_round_trips() {
        let t = ports_table(&desired()).unwrap();
        assert_eq!(t.rules.len(), 3, "{t:?}");
        let rs = ports_batch(&t);
        let json = serde_json::to_string(&rs).unwrap();
        for needle in [
            r#""fib":{"result":"type","flags":["daddr"]}"#,
            r#""numgen":{"mode":"random","mod":2}"#,
            r#"[0,"172.18.0.2"]"#,
            r#"[1,"172.18.0.3"]"#,
            r#""dnat":{"addr":"172.18.0.2","family":"ip","port":80}"#,
            r#"[1,"10.255.0.9"]"#,
            r#""oifname"}},"right":"weft_ingress","op":"=="}"#,
            r#""right":"weft_gwbridge""#,
            r#""ct":{"key":"status"}},"right":"dnat","op":"in"}"#,
            r#""accept":null"#,
            r#""mangle":{"key":{"meta":{"key":"mark"}},"value":{"|":[{"meta":{"key":"mark"}},536870912]}}"#,
            r#""prefix":{"addr":"127.0.0.0","len":8}"#,
            r#""prefix":{"addr":"172.18.0.0","len":16}"#,
        ] {
            assert!(json.contains(needle), "{needle} not in {json}");
        }
        // 8080 has local backends: the remote one is not used.
        assert_eq!(
            t.rules
                .iter()
                .find(|r| r.port == 8080)
                .map(|r| (r.remote, r.backends.len())),
            Some((false, 2))
        );
        assert!(!json.contains("fd00::2"), "{json}");
        assert_eq!(ports_of(&listed(&rs)), Some(t.comments()));
        assert_eq!(
            ports_of(&listed(&delete_ports_batch())),
            Some(BTreeSet::new())
        );
        assert_eq!(
            ports_of(&Nftables {
                objects: Cow::Owned(vec![])
            }),
            None
        );
    }

    #[test]
    fn user_chain_is_only_ever_added() {
        let rs = user_chain_batch();
        let json = serde_json::to_string(&rs).unwrap();
        assert!(
            !json.contains("delete") && !json.contains("flush"),
            "{json}"
        );
        assert!(json.contains(r#""prio":-10"#), "{json}");
        assert!(json.contains(r#""hook":"forward""#), "{json}");
        assert!(user_chain_of(&listed(&rs)));
        assert!(!user_chain_of(&listed(&delete_ports_batch())));
    }
}
