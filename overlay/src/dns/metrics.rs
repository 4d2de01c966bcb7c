//! The embedded resolver's Prometheus metrics, process-wide (one resolver
//! per daemon); the daemon registers them (`weft daemon --metrics-addr`).

use std::sync::LazyLock;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::message::Transport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    qtype: &'static str,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    reason: &'static str,
}

/// Why a query got SERVFAIL from the resolver itself.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    /// No upstream answered a forwarded query.
    Upstream,
    /// Too many forwarded queries in flight for the task.
    Overload,
}

struct DnsMetrics {
    queries: Family<TransportLabel, Counter>,
    answers: Family<AnswerLabels, Counter>,
    forwards: Counter,
    failures: Family<FailureLabel, Counter>,
}

static METRICS: LazyLock<DnsMetrics> = LazyLock::new(|| DnsMetrics {
    queries: Family::default(),
    answers: Family::default(),
    forwards: Counter::default(),
    failures: Family::default(),
});

/// A query received.
pub fn query(t: Transport) {
    let transport = match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    METRICS
        .queries
        .get_or_create(&TransportLabel { transport })
        .inc();
}

/// A reply the resolver made itself, for `query`.
pub fn answered(query: &[u8], reply: &[u8]) {
    let rcode = match reply.get(3).map(|b| ResponseCode::from(0, b & 0x0f)) {
        Some(ResponseCode::NoError) => "noerror",
        Some(ResponseCode::NXDomain) => "nxdomain",
        Some(ResponseCode::ServFail) => "servfail",
        Some(ResponseCode::FormErr) => "formerr",
        Some(ResponseCode::NotImp) => "notimp",
        Some(ResponseCode::Refused) => "refused",
        _ => "other",
    };
    let qtype = match question_type(query).map(RecordType::from) {
        Some(RecordType::A) => "A",
        Some(RecordType::AAAA) => "AAAA",
        Some(RecordType::PTR) => "PTR",
        Some(RecordType::SRV) => "SRV",
        Some(RecordType::TXT) => "TXT",
        Some(RecordType::CNAME) => "CNAME",
        Some(RecordType::MX) => "MX",
        Some(RecordType::NS) => "NS",
        Some(RecordType::SOA) => "SOA",
        Some(RecordType::ANY) => "ANY",
        Some(_) => "other",
        None => "none",
    };
    METRICS
        .answers
        .get_or_create(&AnswerLabels { qtype, rcode })
        .inc();
}

/// A query forwarded to the upstreams.
pub fn forwarded() {
    METRICS.forwards.inc();
}

/// A query the resolver answered SERVFAIL for `why`.
pub fn failed(why: Failure) {
    let reason = match why {
        Failure::Upstream => "upstream",
        Failure::Overload => "overload",
    };
    METRICS
        .failures
        .get_or_create(&FailureLabel { reason })
        .inc();
}

/// The type of the first question of `query` (after the 12-byte header and
/// the name's labels), if the message has one.
fn question_type(query: &[u8]) -> Option<u16> {
    if u16::from_be_bytes([*query.get(4)?, *query.get(5)?]) == 0 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = *query.get(i)?;
        match len {
            0 => break,
            // A compression pointer ends the name (two bytes).
            l if l & 0xc0 == 0xc0 => {
                i += 1;
                break;
            }
            l => i += 1 + usize::from(l),
        }
    }
    Some(u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]))
}

/// Registers the resolver's metrics.
pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "weft_dns_queries",
        "Queries the embedded resolver received, by transport",
        m.queries.clone(),
    );
    registry.register(
        "weft_dns_answers",
        "Replies the embedded resolver made itself, by question type and response code",
        m.answers.clone(),
    );
    registry.register(
        "weft_dns_forwards",
        "Queries forwarded to the host's resolvers",
        m.forwards.clone(),
    );
    registry.register(
        "weft_dns_failures",
        "Queries answered SERVFAIL by the resolver (no upstream answered, or too many in flight)",
        m.failures.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_type_is_read_after_the_name() {
        // id, flags, 1 question; "a.bc" type AAAA class IN.
        let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[1, b'a', 2, b'b', b'c', 0, 0, 28, 0, 1]);
        assert_eq!(question_type(&q), Some(28));
        // Cut short, or no question: none, no panic.
        assert_eq!(question_type(&q[..q.len() - 3]), None);
        assert_eq!(question_type(&q[..12]), None);
        let mut none = q.clone();
        none[5] = 0;
        assert_eq!(question_type(&none), None);
        assert_eq!(question_type(&[]), None);
    }
}
