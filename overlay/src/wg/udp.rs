//! The batched device's UDP socket: many datagrams per syscall both ways.
//!
//! Sending uses `sendmmsg` and UDP GSO (`UDP_SEGMENT`): one message carries
//! up to [`MAX_GSO_SEGMENTS`] equal-sized datagrams to one peer, the last
//! possibly shorter, and the kernel cuts it as late as possible. Receiving
//! uses `recvmmsg` and UDP GRO (`UDP_GRO`): the kernel hands over runs of
//! datagrams from one sender glued together, with the segment size in a
//! control message.
//!
//! Owns the socket fd. Sends block when the socket buffer is full (back
//! pressure towards the TAP reader instead of drops); receives never block
//! (`MSG_DONTWAIT`), the caller polls.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most segments the kernel takes in one GSO send.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (the IP length field bounds it).
pub const MAX_GSO_BYTES: usize = 65_000;
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// A dual-stack UDP socket bound to a port.
#[derive(Debug)]
pub struct UdpSock {
    fd: OwnedFd,
    port: u16,
    gso: std::sync::atomic::AtomicBool,
}

/// One message to send: `buf[off..off + len]` to `to`, as datagrams of
/// `size` bytes (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutMsg {
    /// Where to.
    pub to: SocketAddr,
    /// Offset in the send buffer.
    pub off: usize,
    /// Total bytes.
    pub len: usize,
    /// Segment size (only meaningful when len > size).
    pub size: usize,
}

/// One received message: bytes `[0..len)` of its buffer, glued datagrams of
/// `seg` bytes each (the last possibly shorter), from `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InMsg {
    /// Who sent it.
    pub from: SocketAddr,
    /// Bytes received.
    pub len: usize,
    /// Segment size (len when not glued).
    pub seg: usize,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setopt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one int from a valid pointer.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn getopt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most len bytes into a valid int.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

fn to_sockaddr(a: &SocketAddr) -> (libc::sockaddr_in6, libc::socklen_t) {
    // The socket is IPv6 dual stack: IPv4 peers go as v4-mapped addresses.
    let (ip, port, flow, scope) = match a {
        SocketAddr::V4(v4) => (v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => (*v6.ip(), v6.port(), v6.flowinfo(), v6.scope_id()),
    };
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut s: libc::sockaddr_in6 = unsafe { zeroed() };
    s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    s.sin6_port = port.to_be();
    s.sin6_flowinfo = flow;
    s.sin6_addr.s6_addr = ip.octets();
    s.sin6_scope_id = scope;
    (s, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
}

fn from_sockaddr(s: &libc::sockaddr_in6) -> SocketAddr {
    let ip = Ipv6Addr::from(s.sin6_addr.s6_addr);
    let port = u16::from_be(s.sin6_port);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        None => SocketAddr::V6(SocketAddrV6::new(
            ip,
            port,
            s.sin6_flowinfo,
            s.sin6_scope_id,
        )),
    }
}

/// The unspecified address on `port` (what the device binds).
pub fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
}

impl UdpSock {
    /// Binds `[::]:port` (dual stack) in the calling thread's namespace,
    /// with GRO on and big buffers. Port 0 picks one.
    pub fn bind(port: u16) -> io::Result<UdpSock> {
        // SAFETY: plain socket(2); owned right below.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        // FORCE needs CAP_NET_ADMIN; fall back to the capped variant.
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            if setopt(&fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
                let _ = setopt(&fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
            }
        }
        // GRO is an optimisation: without it every datagram is a message.
        let _ = setopt(&fd, SOL_UDP, UDP_GRO, 1);
        let (sa, len) = to_sockaddr(&any(port));
        // SAFETY: sa is a valid sockaddr_in6 of len bytes.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in6).cast(),
                len,
            )
        })?;
        // SAFETY: all-zero is a valid sockaddr_in6; getsockname fills it.
        let mut got: libc::sockaddr_in6 = unsafe { zeroed() };
        let mut glen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: got is valid for glen bytes.
        cvt(unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut got as *mut libc::sockaddr_in6).cast(),
                &mut glen,
            )
        })?;
        Ok(UdpSock {
            fd,
            port: u16::from_be(got.sin6_port),
            gso: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Takes over `fd`, the device's socket kept across a daemon restart
    /// (the fd store's copy): it must be a dual-stack IPv6 UDP socket
    /// bound to `port`, else `InvalidData` says what it is. Datagrams
    /// queued in it stay queued.
    pub fn adopt(fd: OwnedFd, port: u16) -> io::Result<UdpSock> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let (ty, proto) = (
            getopt(&fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
            getopt(&fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
        );
        if ty != libc::SOCK_DGRAM || proto != libc::IPPROTO_UDP {
            return Err(bad(format!(
                "a socket of type {ty} and protocol {proto}, not UDP"
            )));
        }
        // SAFETY: all-zero is a valid sockaddr_storage; getsockname fills it.
        let mut got: libc::sockaddr_storage = unsafe { zeroed() };
        let mut glen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: got is valid for glen bytes.
        cvt(unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut got as *mut libc::sockaddr_storage).cast(),
                &mut glen,
            )
        })?;
        if i32::from(got.ss_family) != libc::AF_INET6 {
            return Err(bad(format!("address family {}, not IPv6", got.ss_family)));
        }
        // SAFETY: an AF_INET6 address is a sockaddr_in6, which fits in the
        // storage.
        let v6 = unsafe { &*(&got as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
        let bound = from_sockaddr(v6).port();
        if bound != port {
            return Err(bad(format!("bound to port {bound}, not {port}")));
        }
        // Set again in case the kept socket predates them (idempotent).
        let _ = setopt(&fd, SOL_UDP, UDP_GRO, 1);
        Ok(UdpSock {
            fd,
            port,
            gso: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends every message in `msgs` (slices of `buf`), in order, with as
    /// few syscalls as the kernel allows. Errors other than a full buffer
    /// drop the offending message (UDP is lossy anyway); the first such
    /// error is returned after the rest went out.
    pub fn send(&self, buf: &[u8], msgs: &[OutMsg]) -> io::Result<()> {
        if self.gso.load(std::sync::atomic::Ordering::Relaxed) {
            self.send_mmsg(buf, msgs)
        } else {
            self.send_split(buf, msgs)
        }
    }

    /// [`UdpSock::send`] through `sendmmsg`, with a segment size on the
    /// messages that hold more than one datagram.
    fn send_mmsg(&self, buf: &[u8], msgs: &[OutMsg]) -> io::Result<()> {
        const BATCH: usize = 64;
        let mut first_err = None;
        let mut done = 0;
        while done < msgs.len() {
            let chunk = &msgs[done..msgs.len().min(done + BATCH)];
            let n = chunk.len();
            let mut addrs: [MaybeUninit<libc::sockaddr_in6>; BATCH] =
                [const { MaybeUninit::uninit() }; BATCH];
            // SAFETY: all-zero iovec/mmsghdr are valid (null pointers, 0 lengths).
            let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
            // One cmsg with the segment size per message.
            let cspace = cmsg_space(size_of::<u16>());
            let mut ctl = vec![0u8; cspace * BATCH];
            // SAFETY: as above.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            for (i, m) in chunk.iter().enumerate() {
                let (sa, len) = to_sockaddr(&m.to);
                addrs[i].write(sa);
                iovs[i] = libc::iovec {
                    iov_base: buf[m.off..].as_ptr() as *mut libc::c_void,
                    iov_len: m.len,
                };
                let h = &mut hdrs[i].msg_hdr;
                h.msg_name = addrs[i].as_mut_ptr().cast();
                h.msg_namelen = len;
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
                if m.len > m.size {
                    let c = &mut ctl[i * cspace..(i + 1) * cspace];
                    h.msg_control = c.as_mut_ptr().cast();
                    h.msg_controllen = cspace as _;
                    // SAFETY: the control buffer holds one cmsg of a u16.
                    unsafe {
                        let cm = libc::CMSG_FIRSTHDR(h);
                        (*cm).cmsg_level = SOL_UDP;
                        (*cm).cmsg_type = UDP_SEGMENT;
                        (*cm).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), m.size as u16);
                    }
                }
            }
            // SAFETY: hdrs[..n] point into addrs, iovs, ctl and buf, all alive.
            let r = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), hdrs.as_mut_ptr(), n as u32, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // No GSO on this path (no checksum offload on the
                    // egress device): send datagram by datagram from now on.
                    Some(libc::EIO) | Some(libc::EINVAL)
                        if chunk.iter().any(|m| m.len > m.size) =>
                    {
                        self.gso.store(false, std::sync::atomic::Ordering::Relaxed);
                        return self.send_split(buf, &msgs[done..]);
                    }
                    _ => {
                        // Drop the first message and go on with the rest.
                        first_err.get_or_insert(e);
                        done += 1;
                        continue;
                    }
                }
            }
            done += r as usize;
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sends without GSO: one datagram per message.
    fn send_split(&self, buf: &[u8], msgs: &[OutMsg]) -> io::Result<()> {
        let mut single = Vec::new();
        for m in msgs {
            let mut off = m.off;
            let end = m.off + m.len;
            while off < end {
                let len = m.size.min(end - off).max(1);
                single.push(OutMsg {
                    to: m.to,
                    off,
                    len,
                    size: len,
                });
                off += len;
            }
        }
        // Single datagrams carry no segment size, so this never comes back
        // here through the GSO fallback.
        self.send_mmsg(buf, &single)
    }

    /// Receives up to `bufs.len()` messages without blocking; fills
    /// `out[i]` for each and returns how many (0 when nothing waits).
    pub fn recv(&self, bufs: &mut [Vec<u8>], out: &mut [InMsg]) -> io::Result<usize> {
        const BATCH: usize = 16;
        let n = bufs.len().min(out.len()).min(BATCH);
        // SAFETY: all-zero sockaddr_in6/iovec/mmsghdr are valid.
        let mut addrs: [libc::sockaddr_in6; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let cspace = cmsg_space(size_of::<libc::c_int>());
        let mut ctl = vec![0u8; cspace * BATCH];
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..n {
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: bufs[i].len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in6>() as _;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = ctl[i * cspace..].as_mut_ptr().cast();
            h.msg_controllen = cspace as _;
        }
        // SAFETY: hdrs[..n] point into addrs, iovs, ctl and bufs, all alive.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        for i in 0..r as usize {
            let h = &hdrs[i];
            let len = h.msg_len as usize;
            let mut seg = len;
            // SAFETY: the kernel filled msg_control with msg_controllen bytes.
            unsafe {
                let mut cm = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !cm.is_null() {
                    if (*cm).cmsg_level == SOL_UDP && (*cm).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast::<libc::c_int>());
                        if v > 0 {
                            seg = v as usize;
                        }
                    }
                    cm = libc::CMSG_NXTHDR(&h.msg_hdr, cm);
                }
            }
            out[i] = InMsg {
                from: from_sockaddr(&addrs[i]),
                len,
                seg,
            };
        }
        Ok(r as usize)
    }
}

fn cmsg_space(data: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE(data as u32) as usize }
}

impl AsFd for UdpSock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_round_trip_through_the_dual_stack_form() {
        for a in [
            "198.18.0.1:51820".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:7".parse().unwrap(),
        ] {
            let (s, _) = to_sockaddr(&a);
            assert_eq!(from_sockaddr(&s), a);
        }
    }

    #[test]
    fn gso_send_arrives_as_separate_datagrams_or_one_gro_run() {
        // With segmentation offload, and as after the fallback without it
        // (datagram by datagram).
        for gso in [true, false] {
            send_and_receive_in_segments(gso);
        }
    }

    fn send_and_receive_in_segments(gso: bool) {
        let rx = UdpSock::bind(0).unwrap();
        let tx = UdpSock::bind(0).unwrap();
        tx.gso.store(gso, std::sync::atomic::Ordering::Relaxed);
        let to: SocketAddr = format!("127.0.0.1:{}", rx.port()).parse().unwrap();
        let buf: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        tx.send(
            &buf,
            &[OutMsg {
                to,
                off: 0,
                len: 2500,
                size: 1000,
            }],
        )
        .unwrap();
        let mut bufs = vec![vec![0u8; 65536]; 4];
        let mut out = [InMsg {
            from: to,
            len: 0,
            seg: 0,
        }; 4];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 3 && std::time::Instant::now() < deadline {
            let n = rx.recv(&mut bufs, &mut out).unwrap();
            for i in 0..n {
                for d in bufs[i][..out[i].len].chunks(out[i].seg) {
                    got.push(d.to_vec());
                }
                assert_eq!(out[i].from.port(), tx.port());
            }
            if n == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        assert_eq!(got.concat(), buf);
    }
}
