//! One DNS query in, one decision out: answer it from a task's
//! [`TaskView`], or forward it upstream. Pure (bytes to bytes), so every
//! answer shape is unit-tested without sockets.
//!
//! Our answers are authoritative with TTL 0, so they follow the desired
//! state at once: `A`/`AAAA`/`ANY` get the addresses of that family, any
//! other type for one of our names gets NOERROR with no data (NODATA).
//! Names that are not ours are forwarded verbatim; with no upstream they
//! get NXDOMAIN.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::view::{Lookup, TaskView};

/// TTL of our answers: 0, so nothing caches a VIP or backend set that
/// may change with the next config.
pub const TTL: u32 = 0;

/// The classic UDP payload limit without EDNS.
const UDP_MIN: usize = 512;
/// The EDNS payload we offer and honour at most (the DNS flag day value,
/// safe from fragmentation).
const EDNS_MAX: u16 = 1232;

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Forward the query bytes unchanged to the upstreams (the reply goes
    /// back verbatim, or [`servfail`] if none answers).
    Forward,
}

/// The transport a query came over: UDP replies are truncated to the
/// client's payload size (TC set, so it retries over TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (no size limit but the 64 KiB frame).
    Tcp,
}

/// Decides what to do with `query` for a task whose view is `view` (`None`:
/// the task is gone or not ours; everything is forwarded). `has_upstreams`:
/// whether forwarding is possible. `None`: not worth a reply (not a DNS
/// query, e.g. a stray response or garbage).
pub fn handle(
    view: Option<&TaskView>,
    query: &[u8],
    has_upstreams: bool,
    transport: Transport,
) -> Option<Handled> {
    let Ok(req) = Message::from_vec(query) else {
        // Answer FORMERR when at least the header is there.
        return (query.len() >= 12 && query[2] & 0x80 == 0)
            .then(|| {
                error_reply(
                    u16::from_be_bytes([query[0], query[1]]),
                    ResponseCode::FormErr,
                )
            })
            .flatten()
            .map(Handled::Reply);
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let id = req.metadata.id;
    if req.metadata.op_code != OpCode::Query {
        return error_reply(id, ResponseCode::NotImp).map(Handled::Reply);
    }
    let [q] = req.queries.as_slice() else {
        return error_reply(id, ResponseCode::FormErr).map(Handled::Reply);
    };
    let lookup = match (view, q.query_class()) {
        (Some(v), DNSClass::IN) => v.lookup(&q.name().to_ascii()),
        _ => Lookup::NotOurs,
    };
    let addrs = match lookup {
        Lookup::Addrs(a) => a,
        Lookup::NotOurs if has_upstreams => return Some(Handled::Forward),
        Lookup::NotOurs => {
            let mut m = response(&req, q);
            m.metadata.authoritative = false;
            m.metadata.response_code = ResponseCode::NXDomain;
            return finish(m, &req, transport).map(Handled::Reply);
        }
    };
    let mut m = response(&req, q);
    // Spread clients over dnsrr backends: rotate by the query id.
    let n = addrs.len().max(1);
    let start = usize::from(id) % n;
    for a in addrs[start..].iter().chain(&addrs[..start]) {
        let rdata = match (q.query_type(), a) {
            (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => RData::A(A(*v4)),
            (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        m.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
    }
    finish(m, &req, transport).map(Handled::Reply)
}

/// A SERVFAIL reply to `query` (forwarding failed), if it parses.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let q = req.queries.first()?;
    let mut m = response(&req, q);
    m.metadata.authoritative = false;
    m.metadata.response_code = ResponseCode::ServFail;
    finish(m, &req, Transport::Tcp)
}

fn response(req: &Message, q: &Query) -> Message {
    let mut m = Message::response(req.metadata.id, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = req.metadata.checking_disabled;
    m.add_query(q.clone());
    m
}

fn error_reply(id: u16, code: ResponseCode) -> Option<Vec<u8>> {
    Message::error_msg(id, OpCode::Query, code).to_vec().ok()
}

/// Adds EDNS if the client used it and truncates a UDP reply that does not
/// fit the client's payload size.
fn finish(mut m: Message, req: &Message, transport: Transport) -> Option<Vec<u8>> {
    let limit = match &req.edns {
        Some(e) => {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_MAX);
            m.set_edns(edns);
            usize::from(e.max_payload().clamp(512, EDNS_MAX))
        }
        None => UDP_MIN,
    };
    let bytes = m.to_vec().ok()?;
    if transport == Transport::Udp && bytes.len() > limit {
        return m.truncate().to_vec().ok();
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use hickory_proto::rr::Name;

    use super::*;
    use crate::dns::view::DnsView;
    use crate::model::{DesiredNode, LocalEndpoint, OverlayNet, ServiceEntry, TaskNet};

    fn view(backends: usize) -> TaskView {
        let mut d = DesiredNode::new("198.18.0.1".parse().unwrap());
        let mut n = OverlayNet {
            subnet6: None,
            local: false,
            vni: 9,
            subnet: "10.0.0.0/16".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1450,
            internal: false,
            remote: BTreeMap::new(),
            name: "appnet".into(),
            services: BTreeMap::new(),
            names: BTreeMap::new(),
        };
        let many: Vec<IpAddr> = (0..backends)
            .map(|i| {
                format!("10.0.{}.{}", i / 200 + 1, i % 200 + 2)
                    .parse()
                    .unwrap()
            })
            .collect();
        n.services.insert(
            "web".into(),
            ServiceEntry {
                vip6: None,
                vip: Some("10.0.0.100".parse().unwrap()),
                backends: many.clone(),
            },
        );
        n.services.insert(
            "rr".into(),
            ServiceEntry {
                vip6: None,
                vip: None,
                backends: many,
            },
        );
        n.services.insert(
            "v6".into(),
            ServiceEntry {
                vip6: None,
                vip: Some("fd00::100".parse().unwrap()),
                backends: vec![],
            },
        );
        n.services.insert(
            "ds".into(),
            ServiceEntry {
                vip6: Some("fd00::200".parse().unwrap()),
                vip: Some("10.0.0.200".parse().unwrap()),
                backends: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            },
        );
        d.networks.insert("n".into(), n);
        d.tasks.insert(
            "t".into(),
            TaskNet {
                netns: None,
                handover: false,
                resolver: None,
                endpoints: vec![LocalEndpoint {
                    ip6: None,
                    network: "n".into(),
                    ifname: "eth0".into(),
                    ip: "10.0.0.50/16".parse().unwrap(),
                    mac: crate::MacAddr([2, 0, 0, 0, 0, 1]),
                }],
                gateway: None,
            },
        );
        (*DnsView::of(&d).task(&"t".into()).unwrap()).clone()
    }

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn reply(h: Option<Handled>) -> Message {
        match h {
            Some(Handled::Reply(b)) => Message::from_vec(&b).unwrap(),
            other => panic!("wanted a reply, got {other:?}"),
        }
    }

    fn ips(m: &Message) -> Vec<IpAddr> {
        m.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn answers_ours_nodata_other_types_forwards_the_rest() {
        let v = view(3);
        let m = reply(handle(
            Some(&v),
            &query("WEB.appnet.", RecordType::A, None),
            true,
            Transport::Udp,
        ));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(ips(&m), vec!["10.0.0.100".parse::<IpAddr>().unwrap()]);
        assert_eq!(m.answers[0].ttl, TTL);
        assert!(
            m.answers[0]
                .name
                .to_ascii()
                .eq_ignore_ascii_case("web.appnet.")
        );

        let m = reply(handle(
            Some(&v),
            &query("tasks.web.", RecordType::A, None),
            true,
            Transport::Udp,
        ));
        let mut got = ips(&m);
        got.sort();
        assert_eq!(got.len(), 3);

        for t in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let m = reply(handle(
                Some(&v),
                &query("web.", t, None),
                false,
                Transport::Udp,
            ));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
            assert!(m.answers.is_empty(), "{t}");
        }
        let m = reply(handle(
            Some(&v),
            &query("v6.", RecordType::AAAA, None),
            false,
            Transport::Udp,
        ));
        assert_eq!(ips(&m), vec!["fd00::100".parse::<IpAddr>().unwrap()]);

        assert_eq!(
            handle(
                Some(&v),
                &query("example.com.", RecordType::A, None),
                true,
                Transport::Udp
            ),
            Some(Handled::Forward)
        );
        // No view (not a local task): everything is forwarded.
        assert_eq!(
            handle(
                None,
                &query("web.", RecordType::A, None),
                true,
                Transport::Udp
            ),
            Some(Handled::Forward)
        );
        let m = reply(handle(
            Some(&v),
            &query("example.com.", RecordType::A, None),
            false,
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(!m.metadata.authoritative);
    }

    #[test]
    fn a_and_aaaa_get_their_family_and_nodata_for_the_other() {
        let v = view(1);
        let ask = |name: &str, t| {
            reply(handle(
                Some(&v),
                &query(name, t, None),
                false,
                Transport::Udp,
            ))
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ips(&ask("ds.", RecordType::A)), vec![ip("10.0.0.200")]);
        assert_eq!(ips(&ask("ds.", RecordType::AAAA)), vec![ip("fd00::200")]);
        assert_eq!(ips(&ask("tasks.ds.", RecordType::A)), vec![ip("10.0.0.7")]);
        assert_eq!(
            ips(&ask("tasks.ds.", RecordType::AAAA)),
            vec![ip("fd00::7")]
        );
        // One family only: NOERROR without data for the other, not NXDOMAIN.
        for (name, t) in [("v6.", RecordType::A), ("web.", RecordType::AAAA)] {
            let m = ask(name, t);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{name} {t}"
            );
            assert!(m.answers.is_empty(), "{name} {t}");
        }
    }

    #[test]
    fn dnsrr_rotates_and_udp_truncates() {
        let v = view(3);
        let a = reply(handle(
            Some(&v),
            &query("rr.", RecordType::A, None),
            false,
            Transport::Udp,
        ));
        let mut q = Message::from_vec(&query("rr.", RecordType::A, None)).unwrap();
        q.metadata.id = 0x1235;
        let b = reply(handle(
            Some(&v),
            &q.to_vec().unwrap(),
            false,
            Transport::Udp,
        ));
        assert_ne!(ips(&a), ips(&b));
        let (mut sa, mut sb) = (ips(&a), ips(&b));
        sa.sort();
        sb.sort();
        assert_eq!(sa, sb);

        // 60 A records do not fit 512 bytes: TC over UDP, all over TCP,
        // all within the EDNS size the client offered (capped at 1232).
        let v = view(60);
        let m = reply(handle(
            Some(&v),
            &query("tasks.web.", RecordType::A, None),
            false,
            Transport::Udp,
        ));
        assert!(m.metadata.truncation && m.answers.is_empty());
        let m = reply(handle(
            Some(&v),
            &query("tasks.web.", RecordType::A, None),
            false,
            Transport::Tcp,
        ));
        assert_eq!(m.answers.len(), 60);
        let m = reply(handle(
            Some(&v),
            &query("tasks.web.", RecordType::A, Some(4096)),
            false,
            Transport::Udp,
        ));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
        assert!(m.edns.is_some());
        let v = view(100);
        let m = reply(handle(
            Some(&v),
            &query("tasks.web.", RecordType::A, Some(4096)),
            false,
            Transport::Udp,
        ));
        assert!(m.metadata.truncation);
    }

    #[test]
    fn malformed_and_odd_messages() {
        let v = view(1);
        assert_eq!(handle(Some(&v), b"", false, Transport::Udp), None);
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        junk.extend_from_slice(&[0xff; 5]);
        let m = reply(handle(Some(&v), &junk, false, Transport::Udp));
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0xabcd, ResponseCode::FormErr)
        );
        // A response is never answered (no loops between resolvers).
        let resp = reply(handle(
            Some(&v),
            &query("web.", RecordType::A, None),
            false,
            Transport::Udp,
        ));
        assert_eq!(
            handle(Some(&v), &resp.to_vec().unwrap(), false, Transport::Udp),
            None
        );
        let mut m = Message::new(7, MessageType::Query, OpCode::Status);
        m.add_query(Query::query(Name::from_str("web.").unwrap(), RecordType::A));
        let r = reply(handle(
            Some(&v),
            &m.to_vec().unwrap(),
            false,
            Transport::Udp,
        ));
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        let s = Message::from_vec(&servfail(&query("x.", RecordType::A, None)).unwrap()).unwrap();
        assert_eq!(
            (s.metadata.id, s.metadata.response_code),
            (0x1234, ResponseCode::ServFail)
        );
    }
}
