//! The batched device's interface: a TAP opened with `IFF_VNET_HDR` and
//! the offloads that let the kernel hand over (and take back) whole GSO
//! bursts, one frame per syscall instead of one packet.
//!
//! Why a TAP and not a TUN: the kernel (6.18) accepts UDP-tunnel GSO frames
//! written into the device only when they carry an Ethernet header (its
//! offset checks assume one), and VXLAN is exactly such a tunnel. The link
//! is made `NOARP`, so routing to the tunnel subnet needs no neighbour
//! resolution (the kernel addresses frames to the device's own MAC).
//!
//! Owns the fd; closing it removes the interface (it is not persistent).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::packet::VNET_HDR_LEN;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `_IO('T', 227)`: a fd of the namespace the device lives in (Linux 5.2).
pub(crate) const TUNGETDEVNETNS: libc::c_ulong = 0x54e3;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;
const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x80;
const TUN_F_UDP_TUNNEL_GSO_CSUM: libc::c_uint = 0x100;

/// The offload sets we try, best first: the kernel refuses a set it does
/// not know as a whole (EINVAL), so older kernels fall back step by step.
const OFFLOADS: [libc::c_uint; 4] = [
    TUN_F_CSUM
        | TUN_F_TSO4
        | TUN_F_TSO6
        | TUN_F_TSO_ECN
        | TUN_F_USO4
        | TUN_F_USO6
        | TUN_F_UDP_TUNNEL_GSO
        | TUN_F_UDP_TUNNEL_GSO_CSUM,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UDP_TUNNEL_GSO,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM,
];

/// An open TAP with virtio headers.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    offloads: libc::c_uint,
    mac: [u8; 6],
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqAddr {
    name: [u8; libc::IFNAMSIZ],
    addr: libc::sockaddr,
    _pad: [u8; 8],
}

fn ifname(name: &str) -> io::Result<[u8; libc::IFNAMSIZ]> {
    let mut n = [0u8; libc::IFNAMSIZ];
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    n[..name.len()].copy_from_slice(name.as_bytes());
    Ok(n)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Tap {
    /// Creates the TAP `name` in the calling thread's namespace, with
    /// virtio headers, the best offloads the kernel takes, NOARP, and a
    /// non-blocking fd.
    pub fn create(name: &str) -> io::Result<Tap> {
        let n = ifname(name)?;
        // SAFETY: plain open(2) of a path literal; the fd is owned below.
        let raw = cvt(unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReqFlags {
            name: n,
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        // SAFETY: TUNSETIFF reads and writes an ifreq, which req is.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) })?;
        Self::configure(fd, &n)
    }

    /// Takes over `fd`, an open TAP kept across a daemon restart (the fd
    /// store's copy), in the calling thread's namespace: it must be
    /// attached to the interface `name` with the flags [`Tap::create`]
    /// sets, else `InvalidData` says what it is. Offloads and NOARP are
    /// set again (idempotent); queued frames stay queued.
    pub fn adopt(fd: OwnedFd, name: &str) -> io::Result<Tap> {
        let n = ifname(name)?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF fills an ifreq, which req is. A detached fd
        // (its interface deleted) fails with EBADFD.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req) })?;
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        if req.name != n {
            let got = String::from_utf8_lossy(&req.name);
            return Err(bad(format!(
                "attached to {:?}, not {name}",
                got.trim_end_matches('\0')
            )));
        }
        let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & want != want {
            return Err(bad(format!(
                "flags {:#x}, not a TAP with virtio headers",
                req.flags
            )));
        }
        // SAFETY: F_GETFL/F_SETFL on a valid fd; O_NONBLOCK is what the
        // loops expect (the store's copy shares the file status flags).
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            cvt(libc::fcntl(
                fd.as_raw_fd(),
                libc::F_SETFL,
                fl | libc::O_NONBLOCK,
            ))?;
        }
        Self::configure(fd, &n)
    }

    /// Virtio header size, the best offloads and NOARP on an attached TAP.
    fn configure(fd: OwnedFd, n: &[u8; libc::IFNAMSIZ]) -> io::Result<Tap> {
        let sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &sz) })?;
        let mut offloads = 0;
        for set in OFFLOADS {
            // SAFETY: TUNSETOFFLOAD takes the flags by value.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, set as libc::c_ulong) } == 0 {
                offloads = set;
                break;
            }
        }
        let mac = set_noarp_and_pin_mac(n)?;
        Ok(Tap { fd, offloads, mac })
    }

    /// The inode of the namespace the interface lives in.
    pub fn netns_inode(&self) -> io::Result<u64> {
        crate::linux::netns::netns_inode_by_ioctl(self.fd.as_fd(), TUNGETDEVNETNS)
    }

    /// Whether the kernel takes and gives UDP-tunnel (VXLAN) GSO frames.
    pub fn tunnel_gso(&self) -> bool {
        self.offloads & TUN_F_UDP_TUNNEL_GSO != 0
    }

    /// The offload flags in force.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// The device's MAC: frames we write must be addressed to it.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Reads one frame (virtio header first); `WouldBlock` when empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame (virtio header first).
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: frame is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sets IFF_NOARP on the interface, pins its MAC (set by userspace, so
/// udev does not change it) and returns it, through a throwaway socket of
/// the calling thread's namespace.
fn set_noarp_and_pin_mac(name: &[u8; libc::IFNAMSIZ]) -> io::Result<[u8; 6]> {
    // SAFETY: plain socket(2); owned right below.
    let s = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: s is a fresh fd nobody else owns.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = IfReqFlags {
        name: *name,
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS take an ifreq with the flags member.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    req.flags |= libc::IFF_NOARP as libc::c_short;
    // SAFETY: as above.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    // SAFETY: an all-zero sockaddr is valid.
    let mut areq = IfReqAddr {
        name: *name,
        addr: unsafe { std::mem::zeroed() },
        _pad: [0; 8],
    };
    // SAFETY: SIOCGIFHWADDR fills the sockaddr member of an ifreq.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR, &mut areq) })?;
    // Set it again, to itself: the kernel gave the TAP a random MAC, and
    // systemd-udevd (MACAddressPolicy=persistent, Debian's and most
    // distributions' default) replaces a random MAC of a new interface
    // moments after it appears, unless userspace has set one. Frames we
    // write to the old MAC would then be dropped as meant for another host
    // (PACKET_OTHERHOST): every packet through the tunnel lost, on real
    // machines only (udev does not act in a test's namespaces). Setting it
    // marks it NET_ADDR_SET, which udev leaves alone.
    // SAFETY: SIOCSIFHWADDR reads the sockaddr member of an ifreq.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFHWADDR, &areq) })?;
    let mut mac = [0u8; 6];
    for (m, c) in mac.iter_mut().zip(areq.addr.sa_data.iter()) {
        *m = *c as u8;
    }
    Ok(mac)
}
