//! The doctor's data-path probes (`weft doctor`), node side: a probe VXLAN
//! device in a namespace of its own, and ICMP echo through it (or through
//! WireGuard's TUN, from the host).
//!
//! ```text
//!   node A                                            node B
//!   <exec-root>/doctor/probe (netns)                  <exec-root>/doctor/probe (netns)
//!     weft-probe  VNI 4095, 169.254.0.1    UDP 4789     weft-probe  VNI 4095, 169.254.0.2
//!     echo ──▶ FDB: B's MAC → B's VTEP  ══════════════▶ kernel answers the echo
//!          ◀── reply                    ◀══════════════ FDB: A's MAC → A's VTEP
//! ```
//!
//! The device is made as an overlay network's is (in the host namespace,
//! so its socket is the node's data-path port, then moved), with a VNI
//! below the first one weft allocates ([`PROBE_VNI`]): the probes cross the
//! same port, the same nftables rules and the same underlay path as
//! overlay traffic, and the peer's kernel answers them, so a reply proves
//! the path both ways. Each node's probe address and MAC derive from its
//! index in the doctor's list ([`probe_ip`], [`probe_mac`]); static FDB and
//! neighbour entries leave nothing to flood or learn.
//!
//! MTU: echoes of several sizes go with DF set; the largest that comes
//! back is the path's limit for overlay packets.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use super::{MacAddr, Netlink, Netns, Result, VxlanSpec};

/// The probe device's VNI: below 4096, the first VNI weft hands out, so
/// no overlay network ever has it.
pub const PROBE_VNI: u32 = 4095;

/// The probe device's name (in the probe namespace).
pub const PROBE_LINK: &str = "weft-probe";

/// Nodes one probe run can address (their index makes a /16 address).
pub const MAX_PROBE_NODES: usize = 65_000;

/// The probe address of the node at `index` of the doctor's list.
pub fn probe_ip(index: u32) -> Ipv4Addr {
    let n = index + 1;
    Ipv4Addr::new(169, 254, (n >> 8) as u8, (n & 0xff) as u8)
}

/// The probe device's MAC of the node at `index` (locally administered).
pub fn probe_mac(index: u32) -> MacAddr {
    let n = index + 1;
    MacAddr([0x02, 0x77, 0x66, 0x70, (n >> 8) as u8, (n & 0xff) as u8])
}

/// What the probe device of one node looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// This node's index in the list.
    pub index: u32,
    /// This node's VTEP (IPv4 or IPv6: the underlay's family).
    pub local: IpAddr,
    /// The cluster's VXLAN port.
    pub port: u16,
    /// The device's MTU: the overlay MTU to probe.
    pub mtu: u32,
    /// The other nodes: index and VTEP (of `local`'s family).
    pub peers: Vec<(u32, IpAddr)>,
}

/// Makes (or brings to `spec`) the probe namespace pinned at `pin` with
/// its device, address and the peers' FDB and neighbour entries.
pub async fn setup(pin: &Path, spec: &ProbeSpec) -> Result<Netns> {
    let ns = Netns::create(pin)?;
    ns.lo_up()?;
    let host = Netlink::current()?;
    let inside = Netlink::open(&ns)?;
    // A device of an earlier run with another shape (port, VTEP) goes.
    if inside.link(PROBE_LINK).await?.is_some() {
        inside.delete_link(PROBE_LINK).await?;
    }
    host.create_vxlan(
        &VxlanSpec {
            name: PROBE_LINK.into(),
            vni: PROBE_VNI,
            port: spec.port,
            local: spec.local,
            underlay_dev: None,
            mtu: Some(spec.mtu),
            mac: Some(probe_mac(spec.index)),
            proxy: false,
        },
        &inside,
    )
    .await?;
    let own = IpNetwork::new(IpAddr::V4(probe_ip(spec.index)), 16).expect("a /16 is valid");
    inside.add_address(PROBE_LINK, own).await?;
    inside.set_up(PROBE_LINK).await?;
    for (i, vtep) in &spec.peers {
        inside.replace_fdb(PROBE_LINK, probe_mac(*i), *vtep).await?;
        inside
            .replace_neigh(PROBE_LINK, IpAddr::V4(probe_ip(*i)), probe_mac(*i))
            .await?;
    }
    Ok(ns)
}

/// Removes the probe namespace (its device goes with it).
pub fn teardown(pin: &Path) -> Result<()> {
    if Netns::exists(pin) {
        Netns::delete(pin)?;
    }
    Ok(())
}

/// One echo to send: where, and the size of the whole IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// The address to ping.
    pub dst: Ipv4Addr,
    /// The IP packet's length, headers included (DF is set).
    pub size: u16,
}

/// How one echo went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EchoResult {
    /// A reply came after this long.
    Answered(Duration),
    /// No reply in time.
    TimedOut,
    /// It could not be sent (the error: e.g. larger than the local MTU).
    NotSent(String),
}

/// Sends every echo (again every 250 ms until answered) from a raw ICMP
/// socket in `ns` (the calling thread's namespace when `None`) and waits
/// until all are answered or `timeout` passed. Blocking: call it from
/// `spawn_blocking`.
pub fn ping(ns: Option<&Netns>, echoes: &[Echo], timeout: Duration) -> Result<Vec<EchoResult>> {
    match ns {
        Some(ns) => ns.run_in(|| icmp::ping_here(echoes, timeout))?,
        None => icmp::ping_here(echoes, timeout),
    }
    .map_err(|source| super::Error::Io {
        op: "icmp echo",
        path: ns.map(|n| n.path().to_owned()).unwrap_or_default(),
        source,
    })
}

/// Echo requests and replies on a raw socket.
mod icmp {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    const ECHO_REQUEST: u8 = 8;
    const ECHO_REPLY: u8 = 0;
    const IP_HEADER: usize = 20;
    const ICMP_HEADER: usize = 8;
    const RESEND: Duration = Duration::from_millis(250);

    /// The Internet checksum (RFC 1071), as the WireGuard packet path
    /// computes it.
    pub(super) use crate::wg::packet::checksum;

    /// An echo request of `size` IP bytes (the kernel adds a 20-byte header).
    pub(super) fn request(id: u16, seq: u16, size: u16) -> Vec<u8> {
        let len = usize::from(size).saturating_sub(IP_HEADER).max(ICMP_HEADER);
        let mut p = vec![0u8; len];
        p[0] = ECHO_REQUEST;
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in p[ICMP_HEADER..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The sequence number of an echo reply with identifier `id` in a
    /// packet read from a raw socket (IP header included).
    pub(super) fn reply_seq(packet: &[u8], id: u16) -> Option<u16> {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        let icmp = packet.get(ihl..)?;
        if icmp.len() < ICMP_HEADER || icmp[0] != ECHO_REPLY {
            return None;
        }
        if u16::from_be_bytes([icmp[4], icmp[5]]) != id {
            return None;
        }
        Some(u16::from_be_bytes([icmp[6], icmp[7]]))
    }

    fn raw_socket() -> io::Result<OwnedFd> {
        // SAFETY: socket(2) with constant arguments; the result is checked
        // and owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let df: libc::c_int = libc::IP_PMTUDISC_PROBE;
        // SAFETY: the option value is a c_int that lives across the call.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&df as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }

    fn send(fd: &OwnedFd, dst: Ipv4Addr, packet: &[u8]) -> io::Result<()> {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: packet and addr outlive the call; the lengths are theirs.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `wait` for a packet; its length, or `None` on timeout.
    fn recv(fd: &OwnedFd, buf: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one pollfd that lives across the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(None);
        }
        // SAFETY: buf is valid for its length across the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(n as usize))
    }

    /// [`super::ping`] in the calling thread's namespace.
    pub(super) fn ping_here(echoes: &[Echo], timeout: Duration) -> io::Result<Vec<EchoResult>> {
        if echoes.len() > usize::from(u16::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} echoes, at most {} per run", echoes.len(), u16::MAX),
            ));
        }
        let fd = raw_socket()?;
        let id = rand::random::<u16>();
        let start = Instant::now();
        let mut out = vec![EchoResult::TimedOut; echoes.len()];
        let mut sent_at = vec![start; echoes.len()];
        let mut buf = vec![0u8; 65_536];
        let mut next_send = start;
        loop {
            let now = Instant::now();
            if now >= next_send {
                for (i, e) in echoes.iter().enumerate() {
                    if out[i] != EchoResult::TimedOut {
                        continue;
                    }
                    match send(&fd, e.dst, &request(id, i as u16, e.size)) {
                        Ok(()) => sent_at[i] = Instant::now(),
                        Err(err) => out[i] = EchoResult::NotSent(err.to_string()),
                    }
                }
                next_send = now + RESEND;
            }
            if out.iter().all(|r| *r != EchoResult::TimedOut) || now >= start + timeout {
                return Ok(out);
            }
            let wait = next_send
                .min(start + timeout)
                .saturating_duration_since(now);
            if let Some(n) = recv(&fd, &mut buf, wait)?
                && let Some(seq) = reply_seq(&buf[..n], id)
                && let Some(slot) = out.get_mut(usize::from(seq))
                && *slot == EchoResult::TimedOut
            {
                *slot = EchoResult::Answered(sent_at[usize::from(seq)].elapsed());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::icmp::*;
    use super::*;

    #[test]
    fn probe_addresses_and_macs_follow_the_index_and_never_collide() {
        assert_eq!(probe_ip(0), Ipv4Addr::new(169, 254, 0, 1));
        assert_eq!(probe_ip(255), Ipv4Addr::new(169, 254, 1, 0));
        assert_eq!(probe_mac(0).0, [0x02, 0x77, 0x66, 0x70, 0, 1]);
        let last = (MAX_PROBE_NODES - 1) as u32;
        assert_ne!(probe_ip(last), Ipv4Addr::new(169, 254, 255, 255));
        let ips: std::collections::BTreeSet<_> =
            (0..MAX_PROBE_NODES as u32).map(probe_ip).collect();
        assert_eq!(ips.len(), MAX_PROBE_NODES);
    }

    #[test]
    fn an_echo_request_has_its_size_and_a_valid_checksum() {
        let p = request(0x1234, 7, 1450);
        assert_eq!(p.len(), 1450 - 20);
        assert_eq!(p[0], 8);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(
            request(1, 1, 10).len(),
            8,
            "never shorter than the ICMP header"
        );
    }

    #[test]
    fn only_replies_with_our_identifier_are_taken() {
        let mut reply = vec![0x45u8];
        reply.extend_from_slice(&[0; 19]);
        let mut icmp = request(0xbeef, 3, 64);
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        assert_eq!(reply_seq(&reply, 0xbeef), Some(3));
        assert_eq!(reply_seq(&reply, 0xbeee), None);
        reply[20] = 8;
        assert_eq!(reply_seq(&reply, 0xbeef), None, "a request is no reply");
        assert_eq!(reply_seq(&[0x45, 0, 0], 1), None);
        assert_eq!(reply_seq(&[], 1), None);
    }
}
