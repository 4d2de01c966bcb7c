//! Unit tests of the pure packet work: checksums, the virtio header,
//! segmentation and coalescing (round trips between the two).

use super::*;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    put16(&mut h, 2, (20 + payload.len()) as u16);
    put16(&mut h, 4, id);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    put16(&mut h, 10, c);
    h.extend_from_slice(payload);
    h
}

/// A TCP header (20 bytes + 12 bytes of timestamp option) with its
/// checksum field holding the pseudo-header sum over `l4_len` bytes.
fn tcp(seq: u32, flags: u8, src: [u8; 4], dst: [u8; 4], l4_len: usize) -> Vec<u8> {
    let mut t = vec![0u8; 32];
    put16(&mut t, 0, 40000);
    put16(&mut t, 2, 5201);
    put32(&mut t, 4, seq);
    put32(&mut t, 8, 77);
    t[12] = 8 << 4;
    t[13] = flags;
    put16(&mut t, 14, 512);
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
    let ps = csum_fold(pseudo_sum(&src, &dst, PROTO_TCP, l4_len));
    put16(&mut t, 16, ps);
    t
}

const ISRC: [u8; 4] = [10, 9, 0, 2];
const IDST: [u8; 4] = [10, 9, 0, 3];
const OSRC: [u8; 4] = [100, 64, 0, 1];
const ODST: [u8; 4] = [100, 64, 0, 2];

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// A VXLAN frame (Ethernet + outer IPv4/UDP/VXLAN/Ethernet/IPv4/TCP) as the
/// kernel hands it over with UDP-tunnel GSO.
fn tunnel_frame(data: &[u8], mss: u16, flags: u8) -> (VnetHdr, Vec<u8>) {
    let t = tcp(1000, flags, ISRC, IDST, 32 + data.len());
    let mut seg = t.clone();
    seg.extend_from_slice(data);
    let inner = ipv4(ISRC, IDST, PROTO_TCP, 500, &seg);
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    vx.extend_from_slice(&[0x02, 0x42, 0, 0, 0, 3, 0x02, 0x42, 0, 0, 0, 2, 0x08, 0x00]);
    vx.extend_from_slice(&inner);
    let mut udp = vec![0u8; 8];
    put16(&mut udp, 0, 55555);
    put16(&mut udp, 2, 4789);
    put16(&mut udp, 4, (8 + vx.len()) as u16);
    udp.extend_from_slice(&vx);
    let outer = ipv4(OSRC, ODST, PROTO_UDP, 9, &udp);
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&outer);
    let l4 = ETH_LEN + 20 + 8 + 8 + 14 + 20;
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4 | GSO_TUNNEL_V4,
        hdr_len: (l4 + 32) as u16,
        gso_size: mss,
        csum_start: l4 as u16,
        csum_offset: 16,
        outer_th: (ETH_LEN + 20) as u16,
        inner_nh: (ETH_LEN + 20 + 8 + 8 + 14) as u16,
    };
    (h, frame)
}

fn segments(h: &VnetHdr, frame: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    segment(h, frame, &mut scratch, &mut |p| out.push(p.to_vec())).unwrap();
    out
}

/// Checks the IPv4 header checksum at `off` and the TCP checksum.
fn assert_valid_tcp(p: &[u8], l3: usize) {
    assert_eq!(checksum(&p[l3..l3 + 20]), 0, "ip header checksum");
    let l4 = l3 + 20;
    let acc = pseudo_sum(
        &p[l3 + 12..l3 + 16],
        &p[l3 + 16..l3 + 20],
        PROTO_TCP,
        p.len() - l4,
    );
    assert_eq!(csum_fold(csum_add(acc, &p[l4..])), 0xffff, "tcp checksum");
}

#[test]
fn checksum_matches_rfc1071_example() {
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(csum_fold(csum_add(0, &data)), 0xddf2);
    assert_eq!(checksum(&data), !0xddf2);
    // Odd lengths pad with a zero byte; split sums equal whole sums when
    // split at even offsets.
    let d = payload(1001);
    assert_eq!(
        csum_fold(csum_add(csum_add(0, &d[..500]), &d[500..])),
        csum_fold(csum_add(0, &d))
    );
    let h = ipv4(OSRC, ODST, 17, 1, &[]);
    assert_eq!(checksum(&h), 0);
}

#[test]
fn vnet_header_round_trips() {
    let (h, _) = tunnel_frame(&payload(10), 100, TCP_ACK);
    let mut b = [0xffu8; VNET_HDR_LEN];
    h.write(&mut b);
    assert_eq!(VnetHdr::parse(&b), Some(h));
    assert_eq!(&b[10..20], &[0u8; 10]);
    assert_eq!(VnetHdr::parse(&b[..10]), None);
}

#[test]
fn tunnel_gso_frame_is_cut_into_valid_vxlan_packets() {
    let data = payload(2500);
    let (h, frame) = tunnel_frame(&data, 1000, TCP_ACK | TCP_PSH);
    let segs = segments(&h, &frame);
    assert_eq!(segs.len(), 3);
    let inner_l3 = 20 + 8 + 8 + 14;
    let l4 = inner_l3 + 20;
    let mut got = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(checksum(&s[..20]), 0);
        assert_eq!(get16(s, 2) as usize, s.len());
        assert_eq!(get16(s, 4), 9 + i as u16, "outer ids count up");
        assert_eq!(get16(s, 20 + 4) as usize, s.len() - 20, "udp length");
        assert_eq!(get16(s, 20 + 6), 0, "no outer udp checksum");
        assert_eq!(get16(s, inner_l3 + 2) as usize, s.len() - inner_l3);
        assert_valid_tcp(s, inner_l3);
        assert_eq!(get32(s, l4 + 4), 1000 + 1000 * i as u32);
        let psh = s[l4 + 13] & TCP_PSH != 0;
        assert_eq!(psh, i == 2, "PSH only on the last segment");
        got.extend_from_slice(&s[l4 + 32..]);
    }
    assert_eq!(got, data);
    assert_eq!(dst_addr(&segs[0]), Some(IpAddr::from(ODST)));
}

#[test]
fn coalescing_undoes_segmentation() {
    let data = payload(4500);
    let (h, frame) = tunnel_frame(&data, 1000, TCP_ACK | TCP_PSH);
    let segs = segments(&h, &frame);
    let mut c = Coalescer::new(MAC, true);
    for s in &segs {
        c.push(s);
    }
    let (buf, frames) = c.frames();
    assert_eq!(frames.len(), 1, "one flow, one frame");
    let f = &buf[frames[0].clone()];
    let vh = VnetHdr::parse(f).unwrap();
    assert_eq!(vh.gso_type, GSO_TCPV4 | GSO_TUNNEL_V4);
    assert_eq!(vh.gso_size, 1000);
    assert_eq!(vh.flags, F_NEEDS_CSUM);
    assert_eq!((vh.outer_th, vh.inner_nh), (h.outer_th, h.inner_nh));
    assert_eq!(vh.csum_start, h.csum_start);
    let frame2 = &f[VNET_HDR_LEN..];
    assert_eq!(&frame2[..6], &MAC);
    assert_eq!(frame2.len(), frame.len());
    // Cutting the merged frame again gives the very same packets.
    assert_eq!(segments(&vh, frame2), segs);
}

#[test]
fn gaps_other_flows_and_other_protocols_do_not_merge() {
    let (h, frame) = tunnel_frame(&payload(3000), 1000, TCP_ACK);
    let segs = segments(&h, &frame);
    let mut c = Coalescer::new(MAC, true);
    c.push(&segs[0]);
    c.push(&segs[2]); // gap
    let udp = ipv4(OSRC, ODST, PROTO_UDP, 1, &[0, 1, 0, 2, 0, 8, 0, 0]);
    c.push(&udp);
    c.push(&segs[1]);
    let (buf, frames) = c.frames();
    assert_eq!(frames.len(), 4);
    for (r, s) in frames.iter().zip([&segs[0], &segs[2], &udp, &segs[1]]) {
        let f = &buf[r.clone()];
        assert_eq!(VnetHdr::parse(f), Some(VnetHdr::default()));
        assert_eq!(&f[FRAME_HEADROOM..], &s[..]);
        assert_eq!(get16(f, VNET_HDR_LEN + 12), 0x0800);
    }
    c.clear();
    assert_eq!(c.buffered(), 0);
    // Without tunnel GSO nothing VXLAN merges.
    let mut c = Coalescer::new(MAC, false);
    for s in &segs {
        c.push(s);
    }
    assert_eq!(c.frames().1.len(), 3);
}

#[test]
fn plain_tcp_segments_and_merges() {
    let data = payload(3000);
    let t = tcp(5, TCP_ACK, OSRC, ODST, 32 + data.len());
    let mut seg = t;
    seg.extend_from_slice(&data);
    let ip = ipv4(OSRC, ODST, PROTO_TCP, 3, &seg);
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: (ETH_LEN + 52) as u16,
        gso_size: 1400,
        csum_start: (ETH_LEN + 20) as u16,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let segs = segments(&h, &frame);
    assert_eq!(
        segs.iter().map(Vec::len).collect::<Vec<_>>(),
        [1452, 1452, 252]
    );
    for s in &segs {
        assert_valid_tcp(s, 0);
    }
    let mut c = Coalescer::new(MAC, false);
    for s in &segs {
        c.push(s);
    }
    let (buf, frames) = c.frames();
    assert_eq!(frames.len(), 1);
    let f = &buf[frames[0].clone()];
    let vh = VnetHdr::parse(f).unwrap();
    assert_eq!((vh.gso_type, vh.gso_size), (GSO_TCPV4, 1400));
    assert_eq!(segments(&vh, &f[VNET_HDR_LEN..]), segs);
}

#[test]
fn partial_checksums_of_single_packets_are_completed() {
    let data = payload(101);
    let (mut h, frame) = tunnel_frame(&data, 1000, TCP_ACK);
    h.gso_type = GSO_NONE;
    h.gso_size = 0;
    let segs = segments(&h, &frame);
    assert_eq!(segs.len(), 1);
    assert_valid_tcp(&segs[0], 20 + 8 + 8 + 14);
    // Without NEEDS_CSUM the packet goes out untouched.
    h.flags = 0;
    assert_eq!(segments(&h, &frame), vec![frame[ETH_LEN..].to_vec()]);
    // Not IP: skipped.
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert!(segments(&h, &arp).is_empty());
}

#[test]
fn malformed_frames_are_refused_without_panicking() {
    let (h, frame) = tunnel_frame(&payload(3000), 1000, TCP_ACK);
    let mut scratch = Vec::new();
    for n in 0..frame.len() {
        let _ = segment(&h, &frame[..n], &mut scratch, &mut |_| {});
        let mut c = Coalescer::new(MAC, true);
        if n >= ETH_LEN {
            c.push(&frame[ETH_LEN..n]);
        }
        let _ = c.frames();
    }
    let ufo = VnetHdr { gso_type: 3, ..h };
    assert_eq!(
        segment(&ufo, &frame, &mut scratch, &mut |_| {}),
        Err(SegError::Unsupported(3))
    );
}
