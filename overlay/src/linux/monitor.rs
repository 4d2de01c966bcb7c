//! [`NftMonitor`]: notices changes to the nftables ruleset of one network
//! namespace, so a flushed or deleted table of ours is repaired at once
//! instead of at the next periodic re-apply.
//!
//! A `NETLINK_NETFILTER` socket, opened inside the namespace (a netlink
//! socket belongs to the namespace it was created in), joins the
//! `NFNLGRP_NFTABLES` multicast group: the kernel sends every committed
//! nftables change there, ending each transaction with one
//! `NFT_MSG_NEWGEN`. A dedicated thread counts the transactions that
//! touched a `weft*` table (the name is in every object message) into a
//! `tokio::sync::watch` channel. No `nft monitor` child process.
//!
//! ```text
//!  nft transaction (anyone) ─▶ kernel ─NFNLGRP_NFTABLES─▶ socket ─▶ thread: poll(socket, stop pipe)
//!                                                                     └▶ watch: generation += 1
//! ```
//!
//! Lost messages (`ENOBUFS`) count as a change. Dropping the monitor closes
//! the stop pipe, which wakes the thread; the drop joins it.

use std::io::{PipeWriter, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::thread::JoinHandle;

use netlink_sys::constants::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr};
use tokio::sync::watch;

use super::error::{Error, Result};
use super::netns::Netns;
use crate::model::names::WEFT_PREFIX;

/// The nftables multicast group (`NFNLGRP_NFTABLES`, linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// nfnetlink subsystem id of nftables (`NFNL_SUBSYS_NFTABLES`).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// The message that ends every committed transaction (`NFT_MSG_NEWGEN`).
const NFT_MSG_NEWGEN: u16 = 15;
/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// Watches one namespace's nftables ruleset; see the module docs.
#[derive(Debug)]
pub struct NftMonitor {
    rx: watch::Receiver<u64>,
    stop: Option<PipeWriter>,
    thread: Option<JoinHandle<()>>,
}

impl NftMonitor {
    /// Starts watching `ns`: the socket is subscribed before this returns,
    /// so every change committed afterwards is counted.
    pub fn start(ns: &Netns) -> Result<NftMonitor> {
        let label = ns.label();
        let sys = |op: &'static str, source: std::io::Error| Error::Io {
            op,
            path: label.clone().into(),
            source,
        };
        let socket = ns
            .run_in(|| -> std::io::Result<Socket> {
                let mut s = Socket::new(NETLINK_NETFILTER)?;
                s.bind(&SocketAddr::new(0, 0))?;
                s.add_membership(NFNLGRP_NFTABLES)?;
                s.set_non_blocking(true)?;
                // A burst of changes (a big ruleset load) must not overflow
                // the queue; if it does anyway, ENOBUFS counts as a change.
                let _ = s.set_rx_buf_sz(1 << 20);
                Ok(s)
            })?
            .map_err(|e| sys("open nftables netlink monitor in netns", e))?;
        let (stop_rx, stop_tx) =
            std::io::pipe().map_err(|e| sys("create stop pipe of nftables monitor for", e))?;
        let (tx, rx) = watch::channel(0u64);
        let thread = std::thread::Builder::new()
            .name("weft-nft-monitor".into())
            .spawn(move || run(socket, stop_rx, tx))
            .map_err(|e| sys("spawn nftables monitor thread for", e))?;
        Ok(NftMonitor {
            rx,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A receiver of the change counter: the number of nftables
    /// transactions that touched a `weft*` table since the monitor
    /// started, plus one per batch of lost messages.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rx.clone()
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        // Closing the write end wakes the thread's poll with POLLHUP.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The monitor thread: waits for messages or the stop pipe, counts
/// generations.
fn run(socket: Socket, mut stop: std::io::PipeReader, tx: watch::Sender<u64>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut txns = Transactions::default();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd that outlives the
        // call; both descriptors stay open for the duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %std::io::Error::last_os_error(), "nftables monitor: poll failed; stopping");
            return;
        }
        if fds[1].revents != 0 {
            let _ = stop.read(&mut [0u8; 1]);
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        let mut generations = 0u64;
        loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(0) => break,
                Ok(len) => generations += txns.feed(&buf[..len.min(buf.len())]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Messages were lost: assume something of ours changed.
                    generations += 1;
                    txns = Transactions::default();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "nftables monitor: recv failed; stopping");
                    return;
                }
            }
        }
        if generations > 0 {
            tx.send_modify(|g| *g += generations);
        }
    }
}

/// Counts committed transactions that touched a table whose name starts
/// with [`WEFT_PREFIX`] (ours, and the operator's `weft_user`), so other
/// software editing its own tables (Docker, firewalld) does not make the
/// worker re-apply. A transaction's messages may span datagrams, hence the
/// state.
#[derive(Debug, Default)]
struct Transactions {
    /// Whether the transaction in progress touched one of our tables.
    ours: bool,
}

impl Transactions {
    /// Feeds one datagram; returns how many of our transactions it ended.
    fn feed(&mut self, mut buf: &[u8]) -> u64 {
        let mut n = 0;
        while buf.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
            let body = buf.get(NLMSG_HDRLEN..len.min(buf.len())).unwrap_or(&[]);
            if kind >> 8 == NFNL_SUBSYS_NFTABLES {
                if kind & 0xff == NFT_MSG_NEWGEN {
                    if std::mem::take(&mut self.ours) {
                        n += 1;
                    }
                } else {
                    // Unparsable: count it rather than miss a flush.
                    self.ours |=
                        table_name(body).is_none_or(|t| t.starts_with(WEFT_PREFIX.as_bytes()));
                }
            }
            if len < NLMSG_HDRLEN {
                break;
            }
            // Messages are 4-byte aligned (NLMSG_ALIGN).
            let next = (len + 3) & !3;
            if next >= buf.len() {
                break;
            }
            buf = &buf[next..];
        }
        n
    }
}

/// The table an nftables object message is about: attribute 1 after the
/// `nfgenmsg` header (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`,
/// `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`, … all share the number), without
/// its NUL.
fn table_name(body: &[u8]) -> Option<&[u8]> {
    const NFGENMSG_LEN: usize = 4;
    const NLA_TYPE_MASK: u16 = 0x3fff;
    let mut attrs = body.get(NFGENMSG_LEN..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == 1 {
            let v = &attrs[4..len];
            return Some(v.strip_suffix(&[0]).unwrap_or(v));
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, payload: usize) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload;
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.resize(len, 0);
        m.resize((len + 3) & !3, 0);
        m
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut a = Vec::new();
        a.extend_from_slice(&(len as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize((len + 3) & !3, 0);
        a
    }

    /// An nftables message about `table` (nfgenmsg + attributes).
    fn object(kind: u16, table: &str) -> Vec<u8> {
        let mut body = vec![1u8, 0, 0, 0];
        body.extend(attr(1, format!("{table}\0").as_bytes()));
        body.extend(attr(2, b"chain\0"));
        let len = NLMSG_HDRLEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend(body);
        m
    }

    #[test]
    fn counts_only_transactions_on_weft_tables() {
        let newgen = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN;
        let mut t = Transactions::default();
        // Ours (a rule deleted from weft_ports), then someone else's.
        let mut dgram = object(8, "weft_ports");
        dgram.extend(msg(newgen, 12));
        dgram.extend(object(6, "docker"));
        dgram.extend(msg(newgen, 12));
        assert_eq!(t.feed(&dgram), 1);
        // A transaction spanning two datagrams.
        assert_eq!(t.feed(&object(2, "weft_user")), 0);
        assert_eq!(t.feed(&msg(newgen, 12)), 1);
        assert_eq!(t.feed(&msg(newgen, 12)), 0);
        // An unparsable object message counts.
        assert_eq!(t.feed(&msg((NFNL_SUBSYS_NFTABLES << 8) | 6, 2)), 0);
        assert_eq!(t.feed(&msg(newgen, 0)), 1);
        assert_eq!(t.feed(&[1, 2, 3]), 0);
        // A corrupt length does not loop.
        let mut bad = object(6, "weft");
        bad[0..4].copy_from_slice(&0u32.to_ne_bytes());
        t.feed(&bad);
        assert_eq!(
            table_name(&object(0, "weft")[NLMSG_HDRLEN..]),
            Some(&b"weft"[..])
        );
    }
}
