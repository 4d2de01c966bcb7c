//! Pure packet work for the batched WireGuard device ([`super::batched`]):
//! the virtio-net header that prefixes every frame on a TAP opened with
//! `IFF_VNET_HDR`, the Internet checksum, GSO segmentation of the large
//! frames the kernel hands over, and GRO-style coalescing of decrypted
//! packets into large frames handed back.
//!
//! No IO here; every function takes and returns bytes, so all of it is unit
//! tested.
//!
//! Frames on the TAP are `[virtio hdr][Ethernet][IP ...]`. What the kernel
//! sends into the device is mostly VXLAN: an outer IPv4/UDP packet to a
//! peer's tunnel address, carrying VXLAN, an inner Ethernet header and the
//! task's IP packet. With `TUN_F_UDP_TUNNEL_GSO` a whole TSO burst of a task's
//! TCP stream arrives as one such frame (gso type `TCPV4 | UDP_TUNNEL_IPV4`),
//! which [`segment`] cuts into wire-sized IP packets. On the way back,
//! [`Coalescer`] glues consecutive decrypted segments of one flow into one
//! frame of the same shape, so the kernel's VXLAN, bridge and TCP see one
//! packet per burst instead of one per segment.

use std::net::IpAddr;

/// Size of the virtio-net header we use (`virtio_net_hdr_v1_hash_tunnel`):
/// the tunnel offsets need the full 24 bytes.
pub const VNET_HDR_LEN: usize = 24;
/// Size of an Ethernet header.
pub const ETH_LEN: usize = 14;
/// Headroom in front of an IP packet to turn it into a TAP frame in place.
pub const FRAME_HEADROOM: usize = VNET_HDR_LEN + ETH_LEN;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum at csum_start/offset is
/// only the pseudo-header sum.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM`: the outer UDP checksum is wanted.
pub const F_UDP_TUNNEL_CSUM: u8 = 8;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`.
pub const GSO_TUNNEL_V4: u8 = 0x20;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6`.
pub const GSO_TUNNEL_V6: u8 = 0x40;
/// `VIRTIO_NET_HDR_GSO_ECN`.
pub const GSO_ECN: u8 = 0x80;

const ETHERTYPE_V4: u16 = 0x0800;
const ETHERTYPE_V6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
/// Largest IP packet we build when coalescing (IPv4 total length is 16 bits).
const MAX_COALESCED: usize = 65_000;

/// The virtio-net header (little endian, as tun uses on x86 and arm).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_*` flags.
    pub flags: u8,
    /// `GSO_*` type, possibly with tunnel and ECN bits.
    pub gso_type: u8,
    /// Length of all headers (the kernel's value; we recompute ours).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the (inner) L4 header starts, from the frame start.
    pub csum_start: u16,
    /// Where the checksum is, from csum_start.
    pub csum_offset: u16,
    /// Tunnel: where the outer UDP header starts.
    pub outer_th: u16,
    /// Tunnel: where the inner L3 header starts.
    pub inner_nh: u16,
}

impl VnetHdr {
    /// Reads a header from the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        if b.len() < VNET_HDR_LEN {
            return None;
        }
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            outer_th: u(20),
            inner_nh: u(22),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn write(&self, b: &mut [u8]) {
        b[..VNET_HDR_LEN].fill(0);
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        // num_buffers (10..12), hash value/report/padding (12..20) stay 0.
        b[20..22].copy_from_slice(&self.outer_th.to_le_bytes());
        b[22..24].copy_from_slice(&self.inner_nh.to_le_bytes());
    }
}

/// Adds `data` to a running ones' complement sum (unfolded). Summing
/// 32-bit big-endian words is the same as summing 16-bit ones, modulo the
/// final fold, and twice as fast.
pub fn csum_add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        acc += u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u16::from_be_bytes([rest[0], rest[1]]) as u64;
        rest = &rest[2..];
    }
    if let Some(&b) = rest.first() {
        acc += (b as u64) << 8;
    }
    acc
}

/// Folds a running sum into 16 bits (not complemented).
pub fn csum_fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` (complemented, ready to store).
pub fn checksum(data: &[u8]) -> u16 {
    !csum_fold(csum_add(0, data))
}

/// The unfolded pseudo-header sum for an L4 packet of `len` bytes.
pub fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    let acc = csum_add(csum_add(0, src), dst);
    acc + proto as u64 + (len as u64 & 0xffff_ffff)
}

fn get16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn put16(b: &mut [u8], i: usize, v: u16) {
    b[i..i + 2].copy_from_slice(&v.to_be_bytes());
}

fn get32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn put32(b: &mut [u8], i: usize, v: u32) {
    b[i..i + 4].copy_from_slice(&v.to_be_bytes());
}

/// The destination address of an IP packet.
pub fn dst_addr(ip: &[u8]) -> Option<IpAddr> {
    match ip.first()? >> 4 {
        4 if ip.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?)),
        6 if ip.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?)),
        _ => None,
    }
}

/// Why a frame could not be segmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegError {
    /// Too short, wrong version, offsets outside the frame.
    #[error("malformed frame")]
    Malformed,
    /// A GSO type we did not enable (UFO, or ECN on a non-TCP packet).
    #[error("unsupported GSO type {0:#x}")]
    Unsupported(u8),
}

/// Where the headers of one IP layer are, relative to the packet start.
#[derive(Clone, Copy, Debug)]
struct L3 {
    off: usize,
    v4: bool,
}

impl L3 {
    fn at(p: &[u8], off: usize) -> Result<L3, SegError> {
        match p.get(off).map(|b| b >> 4) {
            Some(4) if p.len() >= off + 20 => Ok(L3 { off, v4: true }),
            Some(6) if p.len() >= off + 40 => Ok(L3 { off, v4: false }),
            _ => Err(SegError::Malformed),
        }
    }

    fn addrs<'a>(&self, p: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        if self.v4 {
            (
                &p[self.off + 12..self.off + 16],
                &p[self.off + 16..self.off + 20],
            )
        } else {
            (
                &p[self.off + 8..self.off + 24],
                &p[self.off + 24..self.off + 40],
            )
        }
    }

    /// Rewrites the length (and for IPv4 id and header checksum) of the
    /// layer in a packet of `total` bytes; `id_add` is added to the IPv4 id.
    fn fix(&self, p: &mut [u8], total: usize, id_add: u16) {
        let o = self.off;
        if self.v4 {
            let ihl = ((p[o] & 0x0f) as usize) * 4;
            put16(p, o + 2, (total - o) as u16);
            let id = get16(p, o + 4).wrapping_add(id_add);
            put16(p, o + 4, id);
            put16(p, o + 10, 0);
            let c = checksum(&p[o..o + ihl]);
            put16(p, o + 10, c);
        } else {
            put16(p, o + 4, (total - o - 40) as u16);
        }
    }
}

/// Sets the L4 checksum at `l4 + csum_off` of `p` to the full checksum of
/// `p[l4..]` with the pseudo header of `l3`.
fn fill_l4_csum(p: &mut [u8], l3: L3, l4: usize, proto: u8, csum_off: usize) {
    put16(p, l4 + csum_off, 0);
    let (s, d) = l3.addrs(p);
    let acc = pseudo_sum(s, d, proto, p.len() - l4);
    let mut c = !csum_fold(csum_add(acc, &p[l4..]));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    put16(p, l4 + csum_off, c);
}

/// Cuts one frame read from the TAP (`frame` starts at the Ethernet
/// header; `hdr` is its virtio header) into IP packets no larger than
/// the wire allows, and calls `out` with each (built in `scratch`).
/// Checksums left to the device (`NEEDS_CSUM`) are filled in. Frames that
/// are not IP are skipped (Ok with no call).
pub fn segment(
    hdr: &VnetHdr,
    frame: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut impl FnMut(&[u8]),
) -> Result<(), SegError> {
    if frame.len() < ETH_LEN {
        return Err(SegError::Malformed);
    }
    let et = get16(frame, 12);
    if et != ETHERTYPE_V4 && et != ETHERTYPE_V6 {
        return Ok(());
    }
    let pkt = &frame[ETH_LEN..];
    let rel = |x: u16| (x as usize).checked_sub(ETH_LEN).ok_or(SegError::Malformed);
    let tunnel = hdr.gso_type & (GSO_TUNNEL_V4 | GSO_TUNNEL_V6) != 0;
    let kind = hdr.gso_type & !(GSO_TUNNEL_V4 | GSO_TUNNEL_V6 | GSO_ECN);
    if kind == GSO_NONE || hdr.gso_size == 0 {
        if hdr.flags & F_NEEDS_CSUM == 0 {
            out(pkt);
            return Ok(());
        }
        let start = rel(hdr.csum_start)?;
        let at = start + hdr.csum_offset as usize;
        if at + 2 > pkt.len() {
            return Err(SegError::Malformed);
        }
        scratch.clear();
        scratch.extend_from_slice(pkt);
        // The field holds the pseudo-header sum: summing over it completes it.
        let mut c = !csum_fold(csum_add(0, &scratch[start..]));
        if hdr.csum_offset == 6 && c == 0 {
            c = 0xffff; // UDP sends a computed zero as all ones.
        }
        put16(scratch, at, c);
        out(scratch);
        return Ok(());
    }
    let (proto, l4) = match kind {
        GSO_TCPV4 | GSO_TCPV6 => (PROTO_TCP, rel(hdr.csum_start)?),
        GSO_UDP_L4 => (PROTO_UDP, rel(hdr.csum_start)?),
        k => return Err(SegError::Unsupported(k)),
    };
    let outer = L3::at(pkt, 0)?;
    let (inner, outer_udp) = if tunnel {
        let uo = rel(hdr.outer_th)?;
        (L3::at(pkt, rel(hdr.inner_nh)?)?, Some(uo))
    } else {
        (outer, None)
    };
    let l4_hdr = match proto {
        PROTO_TCP => {
            let doff = pkt.get(l4 + 12).ok_or(SegError::Malformed)? >> 4;
            (doff as usize) * 4
        }
        _ => 8,
    };
    let hlen = l4 + l4_hdr;
    if hlen > pkt.len() || l4 <= inner.off || outer_udp.is_some_and(|u| u + 8 > l4) {
        return Err(SegError::Malformed);
    }
    let payload = &pkt[hlen..];
    let mss = hdr.gso_size as usize;
    let n = payload.len().div_ceil(mss).max(1);
    let seq0 = if proto == PROTO_TCP {
        get32(pkt, l4 + 4)
    } else {
        0
    };
    let outer_csum = hdr.flags & F_UDP_TUNNEL_CSUM != 0;
    for (i, chunk) in payload.chunks(mss).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(&pkt[..hlen]);
        scratch.extend_from_slice(chunk);
        let total = scratch.len();
        let s = scratch.as_mut_slice();
        if let Some(uo) = outer_udp {
            outer.fix(s, total, i as u16);
            put16(s, uo + 4, (total - uo) as u16);
        }
        inner.fix(s, total, i as u16);
        if proto == PROTO_TCP {
            put32(s, l4 + 4, seq0.wrapping_add((i * mss) as u32));
            let mut flags = s[l4 + 13];
            if i + 1 < n {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            s[l4 + 13] = flags;
            fill_l4_csum(s, inner, l4, PROTO_TCP, 16);
        } else {
            put16(s, l4 + 4, (total - l4) as u16);
            fill_l4_csum(s, inner, l4, PROTO_UDP, 6);
        }
        if let Some(uo) = outer_udp {
            if outer_csum {
                fill_l4_csum(s, outer, uo, PROTO_UDP, 6);
            } else {
                put16(s, uo + 6, 0);
            }
        }
        out(s);
    }
    Ok(())
}

/// What [`Coalescer`] needs of one TCP packet, possibly inside VXLAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flow {
    /// Outer UDP offset, for VXLAN-in-UDP.
    outer_udp: Option<usize>,
    /// Inner (or only) IP header offset.
    l3: usize,
    /// TCP header offset.
    l4: usize,
    /// End of the TCP header.
    hlen: usize,
    v4: bool,
    seq: u32,
    flags: u8,
}

/// Parses a decrypted packet as something [`Coalescer`] can merge: plain
/// TCP over IPv4/IPv6, or TCP in Ethernet in VXLAN in UDP over IPv4 with a
/// zero outer checksum. Fragments and IP options never merge.
fn flow_of(p: &[u8]) -> Option<Flow> {
    match p.first()? >> 4 {
        6 => parse_inner(p, 0, None, true),
        4 if p.len() >= 20 && p[0] == 0x45 && get16(p, 6) & 0x3fff == 0 => match p[9] {
            PROTO_TCP => parse_inner(p, 0, None, false),
            PROTO_UDP => {
                // VXLAN: flags 0x08 and reserved bytes zero, then Ethernet.
                let u = 20;
                let vx = u + 8;
                let eth = vx + 8;
                if p.len() < eth + ETH_LEN + 20 || get16(p, u + 6) != 0 {
                    return None;
                }
                if p[vx] != 0x08 || p[vx + 1..vx + 4] != [0, 0, 0] || p[vx + 7] != 0 {
                    return None;
                }
                if get16(p, 2) as usize != p.len() || get16(p, u + 4) as usize != p.len() - u {
                    return None;
                }
                let inner = eth + ETH_LEN;
                match get16(p, eth + 12) {
                    ETHERTYPE_V4 => parse_inner(p, inner, Some(u), false),
                    ETHERTYPE_V6 => parse_inner(p, inner, Some(u), true),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

fn parse_inner(p: &[u8], l3: usize, outer_udp: Option<usize>, v6: bool) -> Option<Flow> {
    let l4 = if v6 {
        if p.len() < l3 + 40 || p[l3] >> 4 != 6 || p[l3 + 6] != PROTO_TCP {
            return None;
        }
        l3 + 40
    } else {
        if p.len() < l3 + 20 || p[l3] != 0x45 || p[l3 + 9] != PROTO_TCP {
            return None;
        }
        if get16(p, l3 + 6) & 0x3fff != 0 {
            return None;
        }
        l3 + 20
    };
    if p.len() < l4 + 20 {
        return None;
    }
    let hlen = l4 + ((p[l4 + 12] >> 4) as usize) * 4;
    if hlen < l4 + 20 || hlen > p.len() {
        return None;
    }
    let total = if v6 {
        l3 + 40 + get16(p, l3 + 4) as usize
    } else {
        l3 + get16(p, l3 + 2) as usize
    };
    if total != p.len() {
        return None;
    }
    Some(Flow {
        outer_udp,
        l3,
        l4,
        hlen,
        v4: !v6,
        seq: get32(p, l4 + 4),
        flags: p[l4 + 13],
    })
}

/// Whether the headers of `a` and `b` (same [`Flow`] shape) are equal
/// except for the fields that differ between segments of one burst.
fn same_headers(a: &[u8], b: &[u8], f: &Flow) -> bool {
    // Ranges that may differ: IPv4 total length, id, checksum; outer UDP
    // length; TCP sequence number, flags and checksum.
    let mut skip: [(usize, usize); 6] = [(0, 0); 6];
    let mut n = 0;
    let mut push = |s: usize, e: usize| {
        skip[n] = (s, e);
        n += 1;
    };
    if let Some(u) = f.outer_udp {
        push(2, 6); // outer total length, id
        push(10, 12); // outer header checksum
        push(u + 4, u + 6); // outer UDP length
    }
    if f.v4 {
        push(f.l3 + 2, f.l3 + 6);
        push(f.l3 + 10, f.l3 + 12);
    } else {
        push(f.l3 + 4, f.l3 + 6);
    }
    let mut pos = 0;
    for &(s, e) in skip[..n].iter() {
        if a[pos..s] != b[pos..s] {
            return false;
        }
        pos = e;
    }
    // TCP: ports equal, sequence skipped, ack, offset equal, flags
    // skipped, window equal, checksum skipped, urgent and options equal.
    a[pos..f.l4 + 4] == b[pos..f.l4 + 4]
        && a[f.l4 + 8..f.l4 + 13] == b[f.l4 + 8..f.l4 + 13]
        && a[f.l4 + 14..f.l4 + 16] == b[f.l4 + 14..f.l4 + 16]
        && a[f.l4 + 18..f.hlen] == b[f.l4 + 18..f.hlen]
}

/// One frame ready for the TAP: a byte range of the coalescer's buffer.
pub type FrameRange = std::ops::Range<usize>;

/// Glues consecutive TCP segments of one flow (decrypted, in arrival
/// order) into one GSO frame, the way the kernel's GRO would, so one
/// write to the TAP carries a whole burst. Packets that do not merge pass
/// through as frames of their own, in order.
#[derive(Debug)]
pub struct Coalescer {
    buf: Vec<u8>,
    frames: Vec<FrameRange>,
    mac: [u8; 6],
    tunnel_gso: bool,
    open: Option<Group>,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    start: usize,
    flow: Flow,
    mss: usize,
    count: usize,
    next_seq: u32,
    closed: bool,
}

impl Coalescer {
    /// A coalescer writing frames addressed to `mac` (the TAP's own
    /// address); `tunnel_gso` says whether the device accepts UDP-tunnel
    /// GSO frames (else only plain TCP merges).
    pub fn new(mac: [u8; 6], tunnel_gso: bool) -> Coalescer {
        Coalescer {
            buf: Vec::with_capacity(1 << 20),
            frames: Vec::new(),
            mac,
            tunnel_gso,
            open: None,
        }
    }

    /// Adds one decrypted IP packet (empty ones are ignored).
    pub fn push(&mut self, p: &[u8]) {
        if p.is_empty() {
            return;
        }
        let flow = flow_of(p).filter(|f| f.outer_udp.is_none() || self.tunnel_gso);
        if let (Some(g), Some(f)) = (self.open.as_mut(), flow.as_ref())
            && Self::merges(&self.buf, g, f, p)
        {
            let payload = &p[f.hlen..];
            g.count += 1;
            g.next_seq = g.next_seq.wrapping_add(payload.len() as u32);
            if payload.len() < g.mss || f.flags & TCP_PSH != 0 {
                g.closed = true;
            }
            // Carry PSH of the last segment.
            let flags_at = g.start + FRAME_HEADROOM + g.flow.l4 + 13;
            self.buf[flags_at] |= f.flags & TCP_PSH;
            self.buf.extend_from_slice(payload);
            return;
        }
        self.finish();
        let start = self.buf.len();
        self.buf.resize(start + FRAME_HEADROOM, 0);
        self.buf.extend_from_slice(p);
        match flow {
            Some(f) if (f.flags & !TCP_PSH) == TCP_ACK && p.len() > f.hlen => {
                let mss = p.len() - f.hlen;
                self.open = Some(Group {
                    start,
                    flow: f,
                    mss,
                    count: 1,
                    next_seq: f.seq.wrapping_add(mss as u32),
                    closed: f.flags & TCP_PSH != 0,
                });
            }
            _ => {
                let r = self.seal_single(start);
                self.frames.push(r);
            }
        }
    }

    fn merges(buf: &[u8], g: &Group, f: &Flow, p: &[u8]) -> bool {
        let head = &buf[g.start + FRAME_HEADROOM..];
        let payload = p.len() - f.hlen;
        !g.closed
            && *f
                == Flow {
                    seq: f.seq,
                    flags: f.flags,
                    ..g.flow
                }
            && f.seq == g.next_seq
            && (f.flags & !TCP_PSH) == TCP_ACK
            && payload > 0
            && payload <= g.mss
            && head.len() + payload <= MAX_COALESCED
            && same_headers(head, p, f)
    }

    /// Closes the open group, if any.
    fn finish(&mut self) {
        let Some(g) = self.open.take() else { return };
        if g.count == 1 {
            let r = self.seal_single(g.start);
            self.frames.push(r);
            return;
        }
        let end = self.buf.len();
        let f = g.flow;
        let (vh, rest) = self.buf[g.start..end].split_at_mut(VNET_HDR_LEN);
        write_eth(rest, &self.mac, f);
        let p = &mut rest[ETH_LEN..];
        let total = p.len();
        if let Some(u) = f.outer_udp {
            L3 { off: 0, v4: true }.fix(p, total, 0);
            put16(p, u + 4, (total - u) as u16);
        }
        let inner = L3 {
            off: f.l3,
            v4: f.v4,
        };
        inner.fix(p, total, 0);
        // The kernel takes the partial (pseudo-header) sum over the whole
        // L4 length, like GRO leaves it.
        let (s, d) = inner.addrs(p);
        let ps = csum_fold(pseudo_sum(s, d, PROTO_TCP, total - f.l4));
        put16(p, f.l4 + 16, ps);
        let mut gso_type = if f.v4 { GSO_TCPV4 } else { GSO_TCPV6 };
        let mut h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: (ETH_LEN + f.hlen) as u16,
            gso_size: g.mss as u16,
            csum_start: (ETH_LEN + f.l4) as u16,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        if let Some(u) = f.outer_udp {
            gso_type |= GSO_TUNNEL_V4;
            h.gso_type = gso_type;
            h.outer_th = (ETH_LEN + u) as u16;
            h.inner_nh = (ETH_LEN + f.l3) as u16;
        }
        h.write(vh);
        self.frames.push(g.start..end);
    }

    /// Frames a single packet (already in the buffer at `start`) as is.
    fn seal_single(&mut self, start: usize) -> FrameRange {
        let end = self.buf.len();
        let v6 = self.buf[start + FRAME_HEADROOM] >> 4 == 6;
        VnetHdr::default().write(&mut self.buf[start..]);
        let eth = &mut self.buf[start + VNET_HDR_LEN..start + FRAME_HEADROOM];
        eth[..6].copy_from_slice(&self.mac);
        eth[6..12].copy_from_slice(&PEER_MAC);
        put16(eth, 12, if v6 { ETHERTYPE_V6 } else { ETHERTYPE_V4 });
        start..end
    }

    /// Bytes buffered so far (to bound memory between flushes).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Closes everything and returns the buffer and the frames in it;
    /// call [`Coalescer::clear`] after writing them.
    pub fn frames(&mut self) -> (&[u8], &[FrameRange]) {
        self.finish();
        (&self.buf, &self.frames)
    }

    /// Forgets all frames.
    pub fn clear(&mut self) {
        self.open = None;
        self.buf.clear();
        self.frames.clear();
    }
}

/// Source MAC of frames we write: a fixed locally administered address
/// (the kernel ignores it; the TAP has NOARP).
const PEER_MAC: [u8; 6] = [0x02, 0x77, 0x65, 0x66, 0x74, 0x00];

fn write_eth(rest: &mut [u8], mac: &[u8; 6], f: Flow) {
    rest[..6].copy_from_slice(mac);
    rest[6..12].copy_from_slice(&PEER_MAC);
    let outer_v6 = f.outer_udp.is_none() && !f.v4;
    put16(rest, 12, if outer_v6 { ETHERTYPE_V6 } else { ETHERTYPE_V4 });
}

#[cfg(test)]
mod tests;
