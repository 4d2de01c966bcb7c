//! Deleting conntrack entries inside a namespace over ctnetlink
//! (`NETLINK_NETFILTER`), so flows DNATed to a service backend that left do
//! not stick to it: the next packet of such a flow starts a new entry and
//! is balanced over the current backends (or rejected).
//!
//! There is no conntrack CLI to shell out to, and rtnetlink does not speak
//! ctnetlink, so the few messages needed are built by hand on a
//! `netlink-sys` socket opened inside the namespace:
//!
//! ```text
//!  IPCTNL_MSG_CT_GET  (NLM_F_DUMP, family)  ─▶ entries: ORIG tuple, REPLY tuple, ZONE
//!  pick: orig.dst is a VIP and reply.src is not one of its backends
//!  IPCTNL_MSG_CT_DELETE (the entry's own ORIG tuple + ZONE, copied) ─▶ ack (ENOENT is fine)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::error::{Error, Result};
use super::netns::Netns;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFGENMSG_LEN: usize = 4;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One conntrack entry, as much of it as deciding and deleting needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// Destination of the original direction (the VIP for a DNATed flow).
    orig_dst: IpAddr,
    /// Source of the reply direction (the backend for a DNATed flow).
    reply_src: IpAddr,
    /// IP protocol and destination port of the original direction (TCP
    /// and UDP; `None` for protocols without ports).
    orig_port: Option<(u8, u16)>,
    /// The raw `CTA_TUPLE_ORIG` attribute (header included), sent back as
    /// is to name the entry.
    orig_tuple: Vec<u8>,
    /// The raw `CTA_ZONE` attribute, if any.
    zone: Option<Vec<u8>>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates over netlink attributes: (type without flags, payload, whole
/// attribute with header).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let whole = &buf[..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((kind, &whole[4..], whole))
    })
}

fn attr(buf: &[u8], kind: u16) -> Option<(&[u8], &[u8])> {
    attrs(buf)
        .find(|(k, _, _)| *k == kind)
        .map(|(_, p, w)| (p, w))
}

/// The address attribute `kind` of the `CTA_TUPLE_IP` inside a tuple.
fn tuple_ip(tuple: &[u8], v4: u16, v6: u16) -> Option<IpAddr> {
    let (ip, _) = attr(tuple, CTA_TUPLE_IP)?;
    if let Some((a, _)) = attr(ip, v4) {
        let b: [u8; 4] = a.try_into().ok()?;
        return Some(IpAddr::V4(Ipv4Addr::from(b)));
    }
    let (a, _) = attr(ip, v6)?;
    let b: [u8; 16] = a.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(b)))
}

/// The (protocol, destination port) of a tuple, when it has ports.
fn tuple_port(tuple: &[u8]) -> Option<(u8, u16)> {
    let (proto, _) = attr(tuple, CTA_TUPLE_PROTO)?;
    let (num, _) = attr(proto, CTA_PROTO_NUM)?;
    let (port, _) = attr(proto, CTA_PROTO_DST_PORT)?;
    Some((*num.first()?, u16::from_be_bytes(port.try_into().ok()?)))
}

/// Parses the payload (after the nfgenmsg) of one `IPCTNL_MSG_CT_NEW`.
fn parse_entry(body: &[u8]) -> Option<Entry> {
    let (orig, orig_raw) = attr(body, CTA_TUPLE_ORIG)?;
    let (reply, _) = attr(body, CTA_TUPLE_REPLY)?;
    Some(Entry {
        orig_dst: tuple_ip(orig, CTA_IP_V4_DST, CTA_IP_V6_DST)?,
        reply_src: tuple_ip(reply, CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
        orig_port: tuple_port(orig),
        orig_tuple: orig_raw.to_vec(),
        zone: attr(body, CTA_ZONE).map(|(_, w)| w.to_vec()),
    })
}

/// What one datagram of a dump or an ack holds.
#[derive(Debug, Default, PartialEq, Eq)]
struct Batch {
    entries: Vec<Entry>,
    /// The dump (or request) is over.
    done: bool,
    /// A negative errno from an error message (0 is an ack).
    error: Option<i32>,
}

fn parse_datagram(mut buf: &[u8], seq: u32) -> Batch {
    let mut out = Batch::default();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let mseq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let body = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];
        if mseq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => out.done = true,
            NLMSG_ERROR => {
                let code = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .unwrap_or(-libc::EIO);
                out.error = Some(code);
                out.done = true;
            }
            k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                if let Some(e) = body.get(NFGENMSG_LEN..).and_then(parse_entry) {
                    out.entries.push(e);
                }
            }
            _ => {}
        }
    }
    out
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[&[u8]]) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN];
    m.extend_from_slice(&[family, 0, 0, 0]);
    for a in attrs {
        m.extend_from_slice(a);
        m.resize(align4(m.len()), 0);
    }
    let len = u32::try_from(m.len()).expect("small message");
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// Whether an entry is stale: it goes to a VIP in `keep` and its reply does
/// not come from one of that VIP's current backends.
fn stale(e: &Entry, keep: &BTreeMap<IpAddr, BTreeSet<IpAddr>>) -> bool {
    keep.get(&e.orig_dst)
        .is_some_and(|backends| !backends.contains(&e.reply_src))
}

/// Whether an entry is a stale published-port flow: DNATed (its reply does
/// not come from where it was sent) on a (protocol, port) of `keep`, to an
/// address in `ours` that is no longer one of that port's backends.
fn stale_port(e: &Entry, keep: &BTreeMap<(u8, u16), BTreeSet<IpAddr>>, ours: &[IpNetwork]) -> bool {
    e.reply_src != e.orig_dst
        && ours.iter().any(|n| n.contains(e.reply_src))
        && e.orig_port
            .and_then(|p| keep.get(&p))
            .is_some_and(|backends| !backends.contains(&e.reply_src))
}

/// Deletes, inside `ns`, every conntrack entry whose original destination
/// is a VIP of `keep` and whose reply source is not one of that VIP's
/// backends (an empty set: every entry to it). Returns how many went.
/// Blocking (a short-lived thread in `ns`); call it off the async workers.
pub fn delete_stale(ns: &Netns, keep: &BTreeMap<IpAddr, BTreeSet<IpAddr>>) -> Result<usize> {
    if keep.is_empty() {
        return Ok(0);
    }
    let families: BTreeSet<u8> = keep.keys().map(|v| family_of(*v)).collect();
    delete_where(ns, &families, |e| stale(e, keep))
}

/// Deletes, inside `ns` (a node's own namespace), the IPv4 conntrack
/// entries of published ports that were DNATed to an address of `ours`
/// (weft's backend subnets) that is no longer among the port's backends:
/// `keep` maps (IP protocol number, published port) to the live backends.
/// Without this a UDP flow (or a TCP connection) keeps going to a backend
/// that left until its entry times out, minutes for an active UDP flow.
/// Returns how many went. Blocking.
pub fn delete_stale_ports(
    ns: &Netns,
    keep: &BTreeMap<(u8, u16), BTreeSet<IpAddr>>,
    ours: &[IpNetwork],
) -> Result<usize> {
    if keep.is_empty() || ours.is_empty() {
        return Ok(0);
    }
    delete_where(ns, &BTreeSet::from([libc::AF_INET as u8]), |e| {
        stale_port(e, keep, ours)
    })
}

fn family_of(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// How many conntrack entries the calling thread's network namespace has
/// (`net.netfilter.nf_conntrack_count`, which is per namespace); `None`
/// when it cannot be read (conntrack not loaded).
fn conntrack_count_here() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Dumps the conntrack table of `families` inside `ns` and deletes every
/// entry `pick` selects; how many went.
fn delete_where(
    ns: &Netns,
    families: &BTreeSet<u8>,
    pick: impl Fn(&Entry) -> bool + Sync,
) -> Result<usize> {
    let io_err = |op, source| Error::Io {
        op,
        path: ns.path().to_owned(),
        source,
    };
    ns.run_in(|| -> Result<usize> {
        // The dump walks the kernel's conntrack hash, which all namespaces
        // share: 10-15 ms even in a namespace without one entry (an idle
        // task's, given a new VIP). The namespace's own count says whether
        // there is anything to look at.
        if conntrack_count_here() == Some(0) {
            return Ok(0);
        }
        let mut sock =
            Socket::new(NETLINK_NETFILTER).map_err(|e| io_err("open ctnetlink socket in", e))?;
        sock.bind_auto()
            .map_err(|e| io_err("bind ctnetlink socket in", e))?;
        let mut seq = 0u32;
        let mut deleted = 0;
        for &family in families {
            seq += 1;
            let dump = message(
                IPCTNL_MSG_CT_GET,
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                family,
                &[],
            );
            sock.send(&dump, 0)
                .map_err(|e| io_err("send conntrack dump in", e))?;
            let mut victims = Vec::new();
            loop {
                let (buf, _) = sock
                    .recv_from_full()
                    .map_err(|e| io_err("receive conntrack dump in", e))?;
                let b = parse_datagram(&buf, seq);
                victims.extend(b.entries.into_iter().filter(|e| pick(e)));
                if let Some(code) = b.error.filter(|c| *c != 0) {
                    return Err(io_err(
                        "dump conntrack in",
                        io::Error::from_raw_os_error(-code),
                    ));
                }
                if b.done {
                    break;
                }
            }
            for v in victims {
                seq += 1;
                let mut parts: Vec<&[u8]> = vec![&v.orig_tuple];
                if let Some(z) = &v.zone {
                    parts.push(z);
                }
                let del = message(
                    IPCTNL_MSG_CT_DELETE,
                    NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    family,
                    &parts,
                );
                sock.send(&del, 0)
                    .map_err(|e| io_err("send conntrack delete in", e))?;
                loop {
                    let (buf, _) = sock
                        .recv_from_full()
                        .map_err(|e| io_err("receive conntrack ack in", e))?;
                    let b = parse_datagram(&buf, seq);
                    match b.error {
                        Some(0) => deleted += 1,
                        // Gone meanwhile (timed out, or a reply-tuple twin).
                        Some(c) if -c == libc::ENOENT => {}
                        Some(c) => {
                            return Err(io_err(
                                "delete conntrack entry in",
                                io::Error::from_raw_os_error(-c),
                            ));
                        }
                        None => {}
                    }
                    if b.done {
                        break;
                    }
                }
            }
        }
        Ok(deleted)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&u16::try_from(payload.len() + 4).unwrap().to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        nla(kind | 0x8000, &parts.concat())
    }

    fn tuple(kind: u16, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        nested(
            kind,
            &[
                nested(
                    CTA_TUPLE_IP,
                    &[nla(CTA_IP_V4_SRC, &src), nla(CTA_IP_V4_DST, &dst)],
                ),
                nested(
                    2,
                    &[
                        nla(1, &[6]),
                        nla(2, &1234u16.to_be_bytes()),
                        nla(3, &80u16.to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    fn entry_msg(seq: u32, client: [u8; 4], vip: [u8; 4], backend: [u8; 4]) -> Vec<u8> {
        let orig = tuple(CTA_TUPLE_ORIG, client, vip);
        let reply = tuple(CTA_TUPLE_REPLY, backend, client);
        let mut m = message(
            IPCTNL_MSG_CT_NEW,
            2,
            seq,
            2,
            &[&orig, &reply, &nla(CTA_ZONE, &[0, 0])],
        );
        // Multipart dumps carry NLM_F_MULTI; the parser ignores flags.
        m[6] = 2;
        m
    }

    #[test]
    fn dump_is_parsed_and_stale_entries_picked() {
        let mut dgram = entry_msg(7, [10, 0, 0, 50], [10, 0, 0, 100], [10, 0, 0, 3]);
        dgram.extend(entry_msg(7, [10, 0, 0, 50], [10, 0, 0, 100], [10, 0, 0, 4]));
        dgram.extend(entry_msg(7, [10, 0, 0, 50], [10, 0, 0, 9], [10, 0, 0, 9]));
        dgram.extend(entry_msg(6, [1, 1, 1, 1], [10, 0, 0, 100], [10, 0, 0, 4]));
        let b = parse_datagram(&dgram, 7);
        assert!(!b.done);
        assert_eq!(b.entries.len(), 3);
        assert_eq!(b.entries[0].orig_dst, IpAddr::from([10, 0, 0, 100]));
        assert_eq!(b.entries[1].reply_src, IpAddr::from([10, 0, 0, 4]));
        assert_eq!(
            b.entries[0].orig_tuple,
            tuple(CTA_TUPLE_ORIG, [10, 0, 0, 50], [10, 0, 0, 100])
        );
        assert_eq!(
            b.entries[0].zone.as_deref(),
            Some(&nla(CTA_ZONE, &[0, 0])[..6])
        );
        let keep = BTreeMap::from([(
            IpAddr::from([10, 0, 0, 100]),
            BTreeSet::from([IpAddr::from([10, 0, 0, 3])]),
        )]);
        let picked: Vec<_> = b.entries.iter().filter(|e| stale(e, &keep)).collect();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].reply_src, IpAddr::from([10, 0, 0, 4]));

        let done = message(NLMSG_DONE, 2, 7, 0, &[]);
        let mut done = done;
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(parse_datagram(&done, 7).done);
        let mut err = vec![0u8; NLMSG_HDRLEN];
        err.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        let len = u32::try_from(err.len()).unwrap();
        err[0..4].copy_from_slice(&len.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[8..12].copy_from_slice(&9u32.to_ne_bytes());
        let b = parse_datagram(&err, 9);
        assert_eq!((b.error, b.done), (Some(-libc::ENOENT), true));
        // Garbage never panics.
        for n in 0..dgram.len() {
            let _ = parse_datagram(&dgram[..n], 7);
            let _ = parse_entry(&dgram[n..]);
        }
    }

    #[test]
    fn stale_published_port_flows_are_picked() {
        // tuple() makes TCP flows to port 80.
        let mut dgram = entry_msg(5, [1, 1, 1, 1], [198, 18, 0, 2], [172, 18, 0, 2]);
        dgram.extend(entry_msg(5, [1, 1, 1, 2], [198, 18, 0, 2], [172, 18, 0, 3]));
        // Not DNATed: the node's own service on that port.
        dgram.extend(entry_msg(5, [1, 1, 1, 3], [198, 18, 0, 2], [198, 18, 0, 2]));
        let b = parse_datagram(&dgram, 5);
        assert_eq!(b.entries.len(), 3);
        assert_eq!(b.entries[0].orig_port, Some((6, 80)));
        let keep = BTreeMap::from([((6, 80), BTreeSet::from([IpAddr::from([172, 18, 0, 3])]))]);
        let ours = ["172.18.0.0/16".parse().unwrap()];
        let picked: Vec<_> = b
            .entries
            .iter()
            .filter(|e| stale_port(e, &keep, &ours))
            .collect();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].reply_src, IpAddr::from([172, 18, 0, 2]));
        // Another protocol or port is left alone, and so is a flow DNATed
        // by someone else to an address outside weft's subnets.
        for other in [(17, 80), (6, 81)] {
            let keep = BTreeMap::from([(other, BTreeSet::new())]);
            assert!(b.entries.iter().all(|e| !stale_port(e, &keep, &ours)));
        }
        let elsewhere = ["10.96.0.0/12".parse().unwrap()];
        assert!(b.entries.iter().all(|e| !stale_port(e, &keep, &elsewhere)));
    }

    #[test]
    fn delete_message_layout() {
        let orig = tuple(CTA_TUPLE_ORIG, [10, 0, 0, 50], [10, 0, 0, 100]);
        let m = message(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            3,
            2,
            &[&orig],
        );
        assert_eq!(m.len(), NLMSG_HDRLEN + NFGENMSG_LEN + orig.len());
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x102);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 5);
        assert_eq!(m[16], 2);
        assert_eq!(&m[20..], &orig[..]);
    }
}
