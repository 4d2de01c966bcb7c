//! [`NsWatch`]: notices that something the data plane observes in one
//! network namespace changed (links, addresses, routes, neighbour and FDB
//! entries, and in a task's namespace its nftables ruleset), so an idle
//! node re-reads nothing and a busy one re-reads only the namespaces that
//! changed.
//!
//! Netlink sockets opened inside the namespace (a netlink socket belongs to
//! the namespace it was made in) join the multicast groups of those
//! objects; the kernel queues a message on them after every change, made by
//! anyone (this daemon included), before the change's own call returns. A
//! tokio task per socket moves a shared counter when messages arrive (the
//! worker wakes on it); the data plane's next observation drains the
//! sockets itself ([`NsWatch::take_dirty`]) and re-reads the namespace if
//! any message was relevant. No thread, no process per namespace.
//!
//! ```text
//!  change in ns ─▶ kernel ─RTNLGRP_* / NFNLGRP_NFTABLES─▶ socket ─(readable)─▶ task: counter += 1
//!  observe: take_dirty() drains the socket ─▶ true: read the namespace again; false: keep what was read
//! ```
//!
//! Draining *before* reading can only cause a needless second read (a
//! change made between the two), never a missed change: a change is in the
//! queue as soon as it is visible. Lost messages (`ENOBUFS`) count as a
//! change. A watcher whose socket fails reports dirty for ever (the
//! namespace is then read on every pass, as before watchers existed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use netlink_sys::constants::{NETLINK_NETFILTER, NETLINK_ROUTE};
use netlink_sys::{Socket, SocketAddr};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::error::{Error, Result};
use super::netns::Netns;

/// rtnetlink multicast groups (`RTNLGRP_*`, linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;
/// The nftables multicast group (`NFNLGRP_NFTABLES`).
const NFNLGRP_NFTABLES: u32 = 7;

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const AF_INET6: u8 = 10;
const RT_SCOPE_LINK: u8 = 253;
const RT_TABLE_LOCAL: u8 = 255;
const RTPROT_KERNEL: u8 = 2;
/// `NUD_NOARP | NUD_PERMANENT`: the states of FDB entries weft writes.
const NUD_STATIC: u16 = 0x40 | 0x80;
/// `NUD_PERMANENT`: the state of the IPv4/IPv6 neighbour entries weft
/// writes. The kernel makes `NUD_NOARP` ones of its own for the IPv6
/// multicast groups a link joins (`ff02::…`), which are not ours.
const NUD_PERMANENT: u16 = 0x80;
const AF_INET: u8 = 2;
/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// What kind of namespace is watched, which decides what is listened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// The daemon's namespace: links, addresses and routes (its nftables
    /// tables have their own [`super::NftMonitor`]).
    Host,
    /// A network's namespace: links, addresses, routes and the static
    /// neighbour and FDB entries of its VXLAN device (the entries the
    /// bridge learns from traffic come and go without mattering).
    Network,
    /// A task's namespace: links, addresses, routes and its nftables
    /// ruleset (the service VIP table).
    Task,
}

/// Watches one namespace; see the module docs. Dropping it stops its
/// tasks and closes its sockets.
#[derive(Debug)]
pub struct NsWatch {
    sockets: Vec<(Arc<AsyncFd<Socket>>, Filter)>,
    broken: AtomicBool,
    wakers: Vec<AbortHandle>,
}

impl NsWatch {
    /// Starts watching `ns`: the sockets are subscribed before this
    /// returns, so every change made afterwards is noticed. `changed`
    /// moves whenever a message arrives. Must run inside a tokio runtime.
    pub fn start(ns: &Netns, what: Watched, changed: watch::Sender<u64>) -> Result<NsWatch> {
        let mut groups = vec![
            RTNLGRP_LINK,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_ROUTE,
        ];
        if what == Watched::Network {
            groups.push(RTNLGRP_NEIGH);
        }
        let mut opened = vec![(
            subscribe(ns, NETLINK_ROUTE, &groups)?,
            rt_relevant as Filter,
        )];
        if what == Watched::Task {
            opened.push((
                subscribe(ns, NETLINK_NETFILTER, &[NFNLGRP_NFTABLES])?,
                any_message as Filter,
            ));
        }
        let mut sockets = Vec::new();
        let mut wakers = Vec::new();
        for (socket, filter) in opened {
            // SAFETY: the AsyncFd owns the socket, which owns its
            // descriptor and keeps it open and unchanged until dropped.
            let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
                .map_err(|e| Error::Io {
                    op: "register netlink watch socket of netns",
                    path: ns.path().to_owned(),
                    source: e.into_parts().1,
                })?;
            let fd = Arc::new(fd);
            wakers.push(tokio::spawn(wake(fd.clone(), changed.clone())).abort_handle());
            sockets.push((fd, filter));
        }
        Ok(NsWatch {
            sockets,
            broken: AtomicBool::new(false),
            wakers,
        })
    }

    /// What in the namespace may have changed since the last call: reads
    /// every message queued so far (so a change made before this call is
    /// never missed, whatever the wake-up tasks have done yet). Everything,
    /// once a socket failed. `scratch` is a receive buffer (64 KiB will do).
    pub fn take_dirty(&self, scratch: &mut [u8]) -> Dirty {
        let mut out = Dirty::default();
        for (i, (fd, relevant)) in self.sockets.iter().enumerate() {
            let mut hit = false;
            loop {
                match fd.get_ref().recv(&mut &mut scratch[..], 0) {
                    Ok(0) => break,
                    Ok(len) => hit |= relevant(&scratch[..len.min(scratch.len())]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // Messages were lost: something may have changed.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => hit = true,
                    Err(e) => {
                        if !self.broken.swap(true, Ordering::SeqCst) {
                            tracing::warn!(error = %e, "netlink watch failed; its namespace is re-read on every pass");
                        }
                        break;
                    }
                }
            }
            // The rtnetlink socket comes first, the nftables one second.
            if i == 0 {
                out.links = hit;
            } else {
                out.nft = hit;
            }
        }
        if self.broken.load(Ordering::SeqCst) {
            return Dirty::ALL;
        }
        out
    }
}

impl NsWatch {
    /// Reads off the nftables messages queued so far (those of a write the
    /// caller just made and accounts for itself) without reporting them.
    pub fn drain_nft(&self, scratch: &mut [u8]) {
        if let Some((fd, _)) = self.sockets.get(1) {
            while let Ok(len) = fd.get_ref().recv(&mut &mut scratch[..], 0) {
                if len == 0 {
                    break;
                }
            }
        }
    }
}

impl Drop for NsWatch {
    fn drop(&mut self) {
        for w in &self.wakers {
            w.abort();
        }
    }
}

type Filter = fn(&[u8]) -> bool;

/// What [`NsWatch::take_dirty`] found changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Links, addresses, routes, neighbour or FDB entries.
    pub links: bool,
    /// The nftables ruleset (task namespaces only).
    pub nft: bool,
}

impl Dirty {
    /// Everything: what a namespace without a working watcher is.
    pub const ALL: Dirty = Dirty {
        links: true,
        nft: true,
    };
}

/// A non-blocking netlink socket of `family` in `ns`, joined to `groups`.
fn subscribe(ns: &Netns, family: isize, groups: &[u32]) -> Result<Socket> {
    ns.run_in(|| -> std::io::Result<Socket> {
        let mut s = Socket::new(family)?;
        s.bind(&SocketAddr::new(0, 0))?;
        for g in groups {
            s.add_membership(*g)?;
        }
        s.set_non_blocking(true)?;
        // Room for what comes between two passes; an overflow is ENOBUFS,
        // which counts as a change.
        let _ = s.set_rx_buf_sz(256 * 1024);
        Ok(s)
    })?
    .map_err(|source| Error::Io {
        op: "open netlink watch socket in netns",
        path: ns.path().to_owned(),
        source,
    })
}

/// Moves `changed` whenever a message arrives on `fd` (edge-triggered: it
/// reads nothing; [`NsWatch::take_dirty`] does).
async fn wake(fd: Arc<AsyncFd<Socket>>, changed: watch::Sender<u64>) {
    loop {
        match fd.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(e) => {
                tracing::warn!(error = %e, "netlink watch cannot wait; its namespace waits for the periodic pass");
                return;
            }
        }
        changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn any_message(_: &[u8]) -> bool {
    true
}

/// Whether an rtnetlink datagram holds a message about something observed.
/// Not: a neighbour or FDB entry added or updated in a dynamic state
/// (learnt from traffic; weft writes only static ones, and a dynamic entry
/// written over one of them by hand waits for the slow re-check), an IPv4
/// or IPv6 neighbour entry that is not permanent (the kernel's `NOARP`
/// entries for IPv6 multicast groups included), an IPv6 link-local address (the kernel's
/// own, which the planner leaves alone; its duplicate address detection
/// ends a second after the link is up), a route of the local table or an
/// IPv6 route the kernel made for an address (neither is read).
fn rt_relevant(mut buf: &[u8]) -> bool {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            // Corrupt: better read the namespace again.
            return true;
        }
        let Some(body) = buf.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 12) else {
            return true;
        };
        let ignored = match kind {
            // struct ndmsg: family, pad, pad u16, ifindex i32, state u16.
            // A deletion always counts: the kernel reports a deleted
            // entry in whatever state it left it.
            RTM_NEWNEIGH => {
                let state = u16::from_ne_bytes([body[8], body[9]]);
                let ours = if matches!(body[0], AF_INET | AF_INET6) {
                    NUD_PERMANENT
                } else {
                    NUD_STATIC
                };
                state & ours == 0
            }
            // struct ifaddrmsg: family, prefixlen, flags, scope, index.
            RTM_NEWADDR | RTM_DELADDR => body[0] == AF_INET6 && body[3] == RT_SCOPE_LINK,
            // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type.
            RTM_NEWROUTE | RTM_DELROUTE => {
                body[4] == RT_TABLE_LOCAL || (body[0] == AF_INET6 && body[5] == RTPROT_KERNEL)
            }
            _ => false,
        };
        if !ignored {
            return true;
        }
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, state: Option<u16>) -> Vec<u8> {
        let mut body = Vec::new();
        if let Some(s) = state {
            body.extend_from_slice(&[7, 0, 0, 0]);
            body.extend_from_slice(&3i32.to_ne_bytes());
            body.extend_from_slice(&s.to_ne_bytes());
            body.extend_from_slice(&[0, 0]);
        } else {
            body.extend_from_slice(&[0u8; 16]);
        }
        raw(kind, &body)
    }

    fn raw(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn only_learnt_neighbours_are_ignored() {
        const RTM_NEWLINK: u16 = 16;
        const NUD_REACHABLE: u16 = 0x02;
        const NUD_STALE: u16 = 0x04;
        // Learnt entries coming and changing: nothing to read again.
        let mut d = msg(RTM_NEWNEIGH, Some(NUD_REACHABLE));
        d.extend(msg(RTM_NEWNEIGH, Some(NUD_STALE)));
        assert!(!rt_relevant(&d));
        // A permanent entry (ours) in the same datagram: read again.
        d.extend(msg(RTM_NEWNEIGH, Some(0x80)));
        assert!(rt_relevant(&d));
        // Any deletion (the state of a deleted entry says nothing).
        assert!(rt_relevant(&msg(29, Some(0))));
        assert!(rt_relevant(&msg(RTM_NEWNEIGH, Some(0x40))));
        // Links, addresses, routes: always.
        assert!(rt_relevant(&msg(RTM_NEWLINK, None)));
        // Truncated or corrupt: read again rather than miss a change.
        assert!(rt_relevant(&msg(RTM_NEWNEIGH, Some(0x02))[..20]));
        let mut bad = msg(RTM_NEWNEIGH, Some(0x02));
        bad[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(rt_relevant(&bad));
        assert!(!rt_relevant(&[]));
    }

    #[test]
    fn only_permanent_ip_neighbours_count() {
        let neigh = |family: u8, state: u16| {
            let mut body = vec![family, 0, 0, 0];
            body.extend_from_slice(&3i32.to_ne_bytes());
            body.extend_from_slice(&state.to_ne_bytes());
            body.extend_from_slice(&[0, 0]);
            raw(RTM_NEWNEIGH, &body)
        };
        for family in [AF_INET, AF_INET6] {
            // Ours (a remote endpoint's address, either family).
            assert!(rt_relevant(&neigh(family, 0x80)), "{family}");
            // The kernel's multicast entries and learnt ones.
            assert!(!rt_relevant(&neigh(family, 0x40)), "{family}");
            assert!(!rt_relevant(&neigh(family, 0x02)), "{family}");
        }
        // A static FDB entry (AF_BRIDGE) still counts.
        assert!(rt_relevant(&neigh(7, 0x40)));
    }

    #[test]
    fn kernel_made_ipv6_addresses_and_routes_are_ignored() {
        let addr = |family: u8, scope: u8| {
            raw(RTM_NEWADDR, &[family, 64, 0, scope, 3, 0, 0, 0, 0, 0, 0, 0])
        };
        let route = |family: u8, table: u8, proto: u8| {
            raw(
                RTM_NEWROUTE,
                &[family, 64, 0, 0, table, proto, 0, 1, 0, 0, 0, 0],
            )
        };
        assert!(!rt_relevant(&addr(AF_INET6, RT_SCOPE_LINK)));
        assert!(rt_relevant(&addr(AF_INET6, 0)));
        assert!(rt_relevant(&addr(2, RT_SCOPE_LINK)));
        assert!(!rt_relevant(&route(2, RT_TABLE_LOCAL, RTPROT_KERNEL)));
        assert!(!rt_relevant(&route(AF_INET6, 254, RTPROT_KERNEL)));
        assert!(rt_relevant(&route(2, 254, RTPROT_KERNEL)));
        assert!(rt_relevant(&route(AF_INET6, 254, 3)));
    }
}
