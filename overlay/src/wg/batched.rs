//! [`BatchedDevice`]: the [`WgDevice`] on our own loop over boringtun's
//! `noise::Tunn` (one per peer), moving packets in batches instead of one
//! per syscall (see `../shared/notes/benchmarks.md`).
//!
//! ```text
//!  kernel VXLAN ─▶ TAP (vnet hdr, UDP-tunnel GSO: one 64 KB burst per read)
//!     tx thread: read a few frames ─▶ packet::segment ─▶ Tunn::encapsulate
//!                ─▶ sendmmsg + UDP_SEGMENT (≤ 64 datagrams per message)
//!  UDP socket (UDP_GRO: runs of datagrams per message) ─▶ recvmmsg
//!     rx thread: Tunn::decapsulate ─▶ packet::Coalescer ─▶ one TAP write
//!                per burst (UDP-tunnel GSO frame)
//!     timer thread: Tunn::update_timers every 250 ms (handshakes, keepalives)
//! ```
//!
//! Owns the TAP, the socket and three threads. Control calls (the
//! [`WgDevice`] methods) take the peer table's write lock briefly; the data
//! threads take its read lock per batch and a peer's mutex per packet run
//! when sending, per datagram when receiving. Dropping the device stops and joins the threads, then closes the
//! fds, which removes the interface.
//!
//! It creates the TAP and sockets in the namespace given at creation, and,
//! like the stock device, sets no address, MTU or link state (the data
//! plane does that over netlink).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnetwork::IpNetwork;

use super::keys::{PrivateKey, decode_public_key};
use super::packet::{self, Coalescer, FRAME_HEADROOM, VNET_HDR_LEN, VnetHdr};
use super::tap::Tap;
use super::udp::{InMsg, MAX_GSO_BYTES, MAX_GSO_SEGMENTS, OutMsg, UdpSock};
use super::{DeviceState, PeerConfig, PeerState, Result, WgDevice, WgError};
use crate::linux::Netns;

/// Handshakes per second before cookies are demanded (as the stock device).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// How often the timer thread runs boringtun's timers (as the stock device).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Frames read from the TAP per batch.
const TX_BATCH: usize = 16;
/// Messages received per batch (each up to 64 KB of glued datagrams).
const RX_BATCH: usize = 16;
/// Largest frame the TAP hands over: a 64 KB GSO burst plus headers.
const FRAME_MAX: usize = 65_536 + FRAME_HEADROOM;
/// Bytes of decrypted packets the rx thread buffers before writing.
const RX_FLUSH: usize = 2 << 20;

/// Our key pair and the rate limiter (cookies) that goes with it.
struct Keys {
    secret: StaticSecret,
    public: PublicKey,
    limiter: Arc<RateLimiter>,
}

/// One peer: its config and its session state.
struct Peer {
    public: [u8; 32],
    index: u32,
    allowed: Vec<IpNetwork>,
    keepalive: Option<u16>,
    inner: Mutex<PeerInner>,
}

struct PeerInner {
    /// None until we have a private key.
    tunn: Option<Tunn>,
    /// Where to send; follows the peer when it roams.
    endpoint: SocketAddr,
    /// Start a handshake now (the timer thread is woken) instead of
    /// waiting for traffic: set for a new peer and after a key change. After this
    /// node's daemon restarts, the other side still holds a session this
    /// device never knew and keeps sending into it; only a fresh handshake
    /// from here replaces it (otherwise traffic stops until a keepalive).
    kick: bool,
}

impl Peer {
    fn lock(&self) -> MutexGuard<'_, PeerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allows(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|n| n.contains(ip))
    }
}

/// The peer table.
#[derive(Default)]
struct Peers {
    keys: Option<Keys>,
    by_key: HashMap<[u8; 32], Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    /// Allowed IPs, longest prefix first.
    routes: Vec<(IpNetwork, Arc<Peer>)>,
    next_index: u32,
}

impl Peers {
    fn route(&self, dst: IpAddr) -> Option<&Arc<Peer>> {
        self.routes
            .iter()
            .find(|(n, _)| n.contains(dst))
            .map(|(_, p)| p)
    }

    fn rebuild_routes(&mut self) {
        let mut r: Vec<(IpNetwork, Arc<Peer>)> = self
            .by_key
            .values()
            .flat_map(|p| p.allowed.iter().map(move |n| (*n, p.clone())))
            .collect();
        r.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix()));
        self.routes = r;
    }

    fn new_tunn(keys: &Keys, peer: &[u8; 32], keepalive: Option<u16>, index: u32) -> Tunn {
        Tunn::new(
            keys.secret.clone(),
            PublicKey::from(*peer),
            None,
            keepalive,
            index,
            Some(keys.limiter.clone()),
        )
    }
}

/// What the threads share.
struct Shared {
    name: String,
    tap: Tap,
    sock: RwLock<Arc<UdpSock>>,
    peers: RwLock<Peers>,
    /// Set once, when the device is dropped.
    stop: AtomicBool,
    /// Readable once `stop` is set (never read, so it stays readable).
    stop_fd: OwnedFd,
    /// Readable when the rx thread must pick up a new socket.
    reload_fd: OwnedFd,
    /// Readable when a peer wants a handshake now: the timer thread runs
    /// at once instead of at its next tick.
    kick_fd: OwnedFd,
    /// Set while an adopted device waits for its key and peers: the tx
    /// thread leaves the frames that queued up while no daemon ran in the
    /// TAP (read now, with no peer to route them to, they would be
    /// dropped, and TCP would wait out its backed-off retransmission).
    held: AtomicBool,
    /// Readable once `held` is cleared (never read, so it stays readable).
    release_fd: OwnedFd,
    /// Set when a thread ended on its own (the device is broken).
    died: AtomicBool,
    /// Counters for tests and benchmarks: (frames read, datagrams sent,
    /// datagrams received, frames written).
    stats: [AtomicU64; 4],
}

impl Shared {
    fn peers(&self) -> RwLockReadGuard<'_, Peers> {
        self.peers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn sock(&self) -> Arc<UdpSock> {
        self.sock.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn count(&self, i: usize, n: usize) {
        self.stats[i].fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2); owned right below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

fn drain(fd: &OwnedFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64.
    unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

/// Waits until one of `fds` is readable or `timeout` passes; returns
/// which were readable.
fn poll_in(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> [bool; 3] {
    let mut p: [libc::pollfd; 3] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 3];
    for (slot, fd) in p.iter_mut().zip(fds) {
        slot.fd = fd.as_raw_fd();
        slot.events = libc::POLLIN;
    }
    let ms = timeout.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: p holds fds.len() <= 3 valid pollfds.
    let r = unsafe { libc::poll(p.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    let mut out = [false; 3];
    if r > 0 {
        for (o, s) in out.iter_mut().zip(p.iter()) {
            *o = s.revents != 0;
        }
    }
    out
}

/// A running batched WireGuard device.
pub struct BatchedDevice {
    ns: Netns,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for BatchedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedDevice")
            .field("name", &self.shared.name)
            .field(
                "offloads",
                &format_args!("{:#x}", self.shared.tap.offloads()),
            )
            .finish_non_exhaustive()
    }
}

/// Counters of a [`BatchedDevice`], for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Frames read from the TAP (each may be a GSO burst).
    pub frames_read: u64,
    /// Datagrams handed to the socket.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Frames written to the TAP (each may be a coalesced burst).
    pub frames_written: u64,
}

impl BatchedDevice {
    /// Creates the interface `name` in `ns` (a TAP with offloads; see
    /// [`super::tap`]) and starts the device. The interface starts down,
    /// without address, key or peers; it listens on a kernel-chosen port
    /// until [`WgDevice::set_listen_port`].
    pub fn create(name: &str, ns: &Netns) -> Result<BatchedDevice> {
        let create_err = |reason: String| WgError::Create {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.len() >= 16 {
            return Err(create_err("name must be 1 to 15 bytes".into()));
        }
        let owned = name.to_owned();
        let (tap, sock) = ns
            .run_in(move || -> io::Result<(Tap, UdpSock)> {
                Ok((Tap::create(&owned)?, UdpSock::bind(0)?))
            })
            .map_err(|e| create_err(e.to_string()))?
            .map_err(|e| create_err(e.to_string()))?;
        Self::start(name, ns, tap, sock, false)
    }

    /// Takes over the TAP and socket of a device that ran in an earlier
    /// daemon (`fds`: TAP, then socket, as [`BatchedDevice::keepable_fds`]
    /// gave them to the fd store), after checking they are what they
    /// claim: a TAP attached to `name` in `ns`, and a UDP socket of `ns`
    /// bound to `port`. Frames the kernel queued in the TAP and datagrams
    /// queued in the socket while no daemon ran are still there.
    ///
    /// boringtun sessions cannot be carried over (their keys lived in the
    /// old process): every peer added afterwards handshakes at once (see
    /// `kick`), and the peers accept it because its TAI64N timestamp, from
    /// the wall clock, is later than the old process's.
    pub fn adopt(name: &str, ns: &Netns, fds: Vec<OwnedFd>, port: u16) -> Result<BatchedDevice> {
        let not = |reason: String| WgError::NotAdoptable {
            name: name.to_owned(),
            reason,
        };
        let [tap, sock]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|f: Vec<OwnedFd>| not(format!("{} descriptors, not 2", f.len())))?;
        let sock_ns = crate::linux::netns::socket_netns_inode(sock.as_fd())
            .map_err(|e| not(format!("socket: {e}")))?;
        if sock_ns != ns.inode() {
            return Err(not(format!(
                "socket in namespace {sock_ns}, not {}",
                ns.inode()
            )));
        }
        let sock = UdpSock::adopt(sock, port).map_err(|e| not(format!("socket: {e}")))?;
        let owned = name.to_owned();
        let tap = ns
            .run_in(move || Tap::adopt(tap, &owned))
            .map_err(|e| not(e.to_string()))?
            .map_err(|e| not(format!("tap: {e}")))?;
        let tap_ns = tap.netns_inode().map_err(|e| not(format!("tap: {e}")))?;
        if tap_ns != ns.inode() {
            return Err(not(format!(
                "tap in namespace {tap_ns}, not {}",
                ns.inode()
            )));
        }
        Self::start(name, ns, tap, sock, true)
    }

    /// The TAP and the socket (in that order): duplicates kept by the fd
    /// store keep the interface, its addresses and routes, and the bound
    /// port alive while no daemon runs.
    pub fn keepable_fds(&self) -> [BorrowedFd<'_>; 2] {
        // The socket only changes through `set_listen_port`, which takes
        // `&mut self`: the borrow of `self` keeps this one alive.
        let sock = self.shared.sock.read().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the fd belongs to an `Arc<UdpSock>` in `self.shared`,
        // replaced only through `&mut self`, so it stays open for the
        // lifetime of this borrow of `self`.
        let sock_fd = unsafe { BorrowedFd::borrow_raw(sock.as_fd().as_raw_fd()) };
        [self.shared.tap.as_fd(), sock_fd]
    }

    /// Runs the device's threads on `tap` and `sock`; `held`: the tx
    /// thread waits for [`WgDevice::release`].
    fn start(name: &str, ns: &Netns, tap: Tap, sock: UdpSock, held: bool) -> Result<BatchedDevice> {
        let create_err = |reason: String| WgError::Create {
            name: name.to_owned(),
            reason,
        };
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            tap,
            sock: RwLock::new(Arc::new(sock)),
            peers: RwLock::new(Peers {
                next_index: rand::random::<u32>() & 0x00ff_ffff,
                ..Peers::default()
            }),
            stop: AtomicBool::new(false),
            stop_fd: eventfd().map_err(|e| create_err(e.to_string()))?,
            reload_fd: eventfd().map_err(|e| create_err(e.to_string()))?,
            kick_fd: eventfd().map_err(|e| create_err(e.to_string()))?,
            held: AtomicBool::new(held),
            release_fd: eventfd().map_err(|e| create_err(e.to_string()))?,
            died: AtomicBool::new(false),
            stats: Default::default(),
        });
        let mut dev = BatchedDevice {
            ns: ns.clone(),
            shared: shared.clone(),
            threads: Vec::new(),
        };
        type Loop = fn(&Shared);
        let loops: [(&str, Loop); 3] = [("tx", tx_loop), ("rx", rx_loop), ("timers", timer_loop)];
        for (what, f) in loops {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("wg-{what}"))
                .spawn(move || {
                    // Marks the device dead when the loop ends (returns or
                    // panics) while nobody asked it to stop.
                    struct Watch(Arc<Shared>);
                    impl Drop for Watch {
                        fn drop(&mut self) {
                            if !self.0.stopping() {
                                self.0.died.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    let watch = Watch(s);
                    f(&watch.0);
                })
                .map_err(|e| create_err(e.to_string()))?;
            // On an early return, Drop stops the threads spawned so far.
            dev.threads.push(h);
        }
        tracing::debug!(
            device = name,
            offloads = format_args!("{:#x}", shared.tap.offloads()),
            "batched WireGuard device up"
        );
        Ok(dev)
    }

    /// The device's counters.
    pub fn stats(&self) -> BatchStats {
        let s = &self.shared.stats;
        BatchStats {
            frames_read: s[0].load(Ordering::Relaxed),
            datagrams_sent: s[1].load(Ordering::Relaxed),
            datagrams_received: s[2].load(Ordering::Relaxed),
            frames_written: s[3].load(Ordering::Relaxed),
        }
    }

    /// Whether the interface passes VXLAN GSO bursts both ways.
    pub fn tunnel_gso(&self) -> bool {
        self.shared.tap.tunnel_gso()
    }

    fn write_peers(&self) -> std::sync::RwLockWriteGuard<'_, Peers> {
        self.shared.peers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn check_alive(&self, op: &'static str) -> Result<()> {
        if self.shared.died.load(Ordering::Relaxed) {
            return Err(WgError::Device {
                name: self.shared.name.clone(),
                op,
                source: io::Error::other("device threads exited"),
            });
        }
        Ok(())
    }
}

impl WgDevice for BatchedDevice {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn set_private_key(&mut self, key: &PrivateKey) -> Result<()> {
        self.check_alive("set private key")?;
        let secret = StaticSecret::from(key.to_bytes());
        let public = PublicKey::from(&secret);
        let mut peers = self.write_peers();
        if peers.keys.as_ref().is_some_and(|k| k.public == public) {
            return Ok(());
        }
        let keys = Keys {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
        };
        for p in peers.by_key.values() {
            let mut inner = p.lock();
            inner.kick = true;
            match inner.tunn.as_mut() {
                // Sessions of the old key are dropped; the next packet
                // either way starts a handshake with the new one.
                Some(t) => t.set_static_private(
                    keys.secret.clone(),
                    keys.public,
                    Some(keys.limiter.clone()),
                ),
                None => inner.tunn = Some(Peers::new_tunn(&keys, &p.public, p.keepalive, p.index)),
            }
        }
        peers.keys = Some(keys);
        drop(peers);
        signal(&self.shared.kick_fd);
        Ok(())
    }

    fn set_listen_port(&mut self, port: u16) -> Result<()> {
        self.check_alive("set listen port")?;
        if port != 0 && self.shared.sock().port() == port {
            return Ok(());
        }
        let sock = self
            .ns
            .run_in(move || UdpSock::bind(port))
            .map_err(|e| WgError::Create {
                name: self.shared.name.clone(),
                reason: e.to_string(),
            })?
            .map_err(|e| WgError::Refused {
                name: self.shared.name.clone(),
                request: format!("listen_port={port}"),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })?;
        *self.shared.sock.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sock);
        signal(&self.shared.reload_fd);
        Ok(())
    }

    fn add_peer(&mut self, cfg: &PeerConfig) -> Result<()> {
        self.check_alive("add peer")?;
        let public = decode_public_key(&cfg.public_key)?;
        let mut peers = self.write_peers();
        remove(&mut peers, &public);
        let index = peers.next_index;
        peers.next_index = (index + 1) & 0x00ff_ffff;
        let tunn = peers
            .keys
            .as_ref()
            .map(|k| Peers::new_tunn(k, &public, cfg.keepalive, index));
        let peer = Arc::new(Peer {
            public,
            index,
            allowed: cfg.allowed_ips.clone(),
            keepalive: cfg.keepalive,
            inner: Mutex::new(PeerInner {
                tunn,
                endpoint: cfg.endpoint,
                kick: true,
            }),
        });
        peers.by_key.insert(public, peer.clone());
        peers.by_index.insert(index, peer);
        peers.rebuild_routes();
        drop(peers);
        signal(&self.shared.kick_fd);
        Ok(())
    }

    fn remove_peer(&mut self, public_key: &str) -> Result<()> {
        self.check_alive("remove peer")?;
        let public = decode_public_key(public_key)?;
        let mut peers = self.write_peers();
        remove(&mut peers, &public);
        Ok(())
    }

    fn release(&mut self) {
        if self.shared.held.swap(false, Ordering::AcqRel) {
            signal(&self.shared.release_fd);
        }
    }

    fn state(&mut self) -> Result<DeviceState> {
        self.check_alive("get")?;
        use base64::Engine;
        let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
        let now = SystemTime::now();
        let peers = self.shared.peers();
        let mut st = DeviceState {
            public_key: peers.keys.as_ref().map(|k| b64(k.public.as_bytes())),
            listen_port: self.shared.sock().port(),
            peers: Default::default(),
        };
        for p in peers.by_key.values() {
            let inner = p.lock();
            let (since, tx, rx) = inner
                .tunn
                .as_ref()
                .map(|t| {
                    let (since, tx, rx, _, _) = t.stats();
                    (since, tx, rx)
                })
                .unwrap_or_default();
            st.peers.insert(
                b64(&p.public),
                PeerState {
                    endpoint: Some(inner.endpoint),
                    allowed_ips: p.allowed.iter().copied().collect(),
                    keepalive: p.keepalive,
                    last_handshake: since.and_then(|d| now.checked_sub(d)),
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                },
            );
        }
        Ok(st)
    }
}

fn remove(peers: &mut Peers, public: &[u8; 32]) {
    if let Some(p) = peers.by_key.remove(public) {
        peers.by_index.remove(&p.index);
        peers.rebuild_routes();
    }
}

impl Drop for BatchedDevice {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        signal(&self.shared.stop_fd);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
        // The last Arc<Shared> goes here: TAP (and interface) and socket close.
    }
}

/// Collects encrypted datagrams into as few GSO messages as possible.
/// The buffer only grows: `len` is the cursor, so handing out a slot costs
/// no zeroing.
struct Outbox {
    buf: Vec<u8>,
    len: usize,
    msgs: Vec<OutMsg>,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            buf: vec![0u8; 2 << 20],
            len: 0,
            msgs: Vec::new(),
        }
    }

    /// Room for one datagram of up to `max` bytes after the cursor.
    fn slot(&mut self, max: usize) -> (usize, &mut [u8]) {
        let start = self.len;
        if self.buf.len() < start + max {
            self.buf.resize((start + max).max(self.buf.len() * 2), 0);
        }
        (start, &mut self.buf[start..start + max])
    }

    /// Keeps the datagram of `len` bytes written at `start` and adds it to
    /// a message to `to`.
    fn commit(&mut self, to: SocketAddr, start: usize, len: usize) {
        self.len = start + len;
        if let Some(m) = self.msgs.last_mut() {
            // Same peer, contiguous, every datagram so far full-sized, this
            // one no larger, and the message not full: glue it on.
            if m.to == to
                && m.off + m.len == start
                && m.len % m.size == 0
                && len <= m.size
                && m.len / m.size < MAX_GSO_SEGMENTS
                && m.len + len <= MAX_GSO_BYTES
            {
                m.len += len;
                return;
            }
        }
        self.msgs.push(OutMsg {
            to,
            off: start,
            len,
            size: len,
        });
    }

    fn datagrams(&self) -> usize {
        self.msgs.iter().map(|m| m.len.div_ceil(m.size)).sum()
    }

    fn flush(&mut self, sh: &Shared, sock: &UdpSock) {
        if !self.msgs.is_empty() {
            sh.count(1, self.datagrams());
            if let Err(e) = sock.send(&self.buf[..self.len], &self.msgs) {
                tracing::trace!(device = %sh.name, error = %e, "send");
            }
        }
        self.len = 0;
        self.msgs.clear();
    }
}

/// TAP ─▶ segment ─▶ encrypt ─▶ UDP.
fn tx_loop(sh: &Shared) {
    let mut frames: Vec<Vec<u8>> = (0..TX_BATCH).map(|_| vec![0u8; FRAME_MAX]).collect();
    let mut lens = [0usize; TX_BATCH];
    let mut out = Outbox::new();
    let mut scratch = Vec::with_capacity(FRAME_MAX);
    loop {
        if sh.held.load(Ordering::Acquire) {
            let ready = poll_in(&[sh.stop_fd.as_fd(), sh.release_fd.as_fd()], None);
            if ready[0] || sh.stopping() {
                return;
            }
            continue;
        }
        let ready = poll_in(&[sh.tap.as_fd(), sh.stop_fd.as_fd()], None);
        if ready[1] || sh.stopping() {
            return;
        }
        loop {
            let mut n = 0;
            while n < TX_BATCH {
                match sh.tap.read(&mut frames[n]) {
                    Ok(len) => {
                        lens[n] = len;
                        n += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            if n == 0 {
                break;
            }
            sh.count(0, n);
            encrypt_frames(sh, &frames, &lens[..n], &mut out, &mut scratch);
            out.flush(sh, &sh.sock());
            if sh.stopping() {
                return;
            }
        }
    }
}

fn encrypt_frames(
    sh: &Shared,
    frames: &[Vec<u8>],
    lens: &[usize],
    out: &mut Outbox,
    scratch: &mut Vec<u8>,
) {
    let peers = sh.peers();
    for (f, &len) in frames.iter().zip(lens) {
        let f = &f[..len];
        let Some(h) = VnetHdr::parse(f) else { continue };
        let frame = &f[VNET_HDR_LEN..];
        let Some(dst) = frame.get(packet::ETH_LEN..).and_then(packet::dst_addr) else {
            continue;
        };
        let Some(peer) = peers.route(dst) else {
            continue;
        };
        let mut inner = peer.lock();
        let to = inner.endpoint;
        let Some(tunn) = inner.tunn.as_mut() else {
            continue;
        };
        let r = packet::segment(&h, frame, scratch, &mut |seg| {
            let (start, slot) = out.slot((seg.len() + 32).max(148));
            // Anything else is a handshake still under way (the packet
            // waits in the Tunn) or an error: nothing to send now.
            if let TunnResult::WriteToNetwork(p) = tunn.encapsulate(seg, slot) {
                let l = p.len();
                out.commit(to, start, l);
            }
        });
        if let Err(e) = r {
            tracing::trace!(device = %sh.name, error = %e, "dropped frame");
        }
    }
}

/// UDP ─▶ decrypt ─▶ coalesce ─▶ TAP.
fn rx_loop(sh: &Shared) {
    let mut bufs: Vec<Vec<u8>> = (0..RX_BATCH).map(|_| vec![0u8; 65_536]).collect();
    let mut ins = [InMsg {
        from: super::udp::any(0),
        len: 0,
        seg: 0,
    }; RX_BATCH];
    let mut co = Coalescer::new(sh.tap.mac(), sh.tap.tunnel_gso());
    let mut replies = Outbox::new();
    let mut plain = vec![0u8; 65_536];
    let mut sock = sh.sock();
    loop {
        let ready = poll_in(
            &[sock.as_fd(), sh.stop_fd.as_fd(), sh.reload_fd.as_fd()],
            None,
        );
        if ready[1] || sh.stopping() {
            return;
        }
        if ready[2] {
            drain(&sh.reload_fd);
            sock = sh.sock();
            continue;
        }
        loop {
            let n = match sock.recv(&mut bufs, &mut ins) {
                Ok(n) => n,
                Err(e) => {
                    tracing::trace!(device = %sh.name, error = %e, "recv");
                    0
                }
            };
            if n == 0 {
                break;
            }
            {
                let peers = sh.peers();
                for (b, m) in bufs.iter().zip(&ins[..n]) {
                    for d in b[..m.len].chunks(m.seg.max(1)) {
                        sh.count(2, 1);
                        decrypt_one(sh, &peers, d, m.from, &mut plain, &mut co, &mut replies);
                    }
                    if co.buffered() > RX_FLUSH {
                        write_frames(sh, &mut co);
                    }
                }
            }
            write_frames(sh, &mut co);
            replies.flush(sh, &sock);
            if sh.stopping() {
                return;
            }
        }
    }
}

fn write_frames(sh: &Shared, co: &mut Coalescer) {
    let (buf, frames) = co.frames();
    for r in frames {
        if let Err(e) = sh.tap.write(&buf[r.clone()]) {
            tracing::trace!(device = %sh.name, error = %e, "tap write");
        }
    }
    sh.count(3, frames.len());
    co.clear();
}

/// Which peer a datagram is for, by receiver index (or, for a handshake
/// initiation, by the static key inside it).
fn peer_of<'a>(
    peers: &'a Peers,
    d: &[u8],
    from: SocketAddr,
    replies: &mut Outbox,
) -> Option<&'a Arc<Peer>> {
    let ty = u32::from_le_bytes(d.get(..4)?.try_into().ok()?);
    let idx = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?) >> 8)
    };
    match ty {
        4 if d.len() >= 32 => peers.by_index.get(&idx(4)?),
        2 => peers.by_index.get(&idx(8)?),
        3 => peers.by_index.get(&idx(4)?),
        1 => {
            let keys = peers.keys.as_ref()?;
            let mut cookie = [0u8; 64];
            match keys.limiter.verify_packet(Some(from.ip()), d, &mut cookie) {
                Ok(Packet::HandshakeInit(p)) => {
                    let half = parse_handshake_anon(&keys.secret, &keys.public, &p).ok()?;
                    peers.by_key.get(&half.peer_static_public)
                }
                Err(TunnResult::WriteToNetwork(c)) => {
                    let l = c.len();
                    let (start, slot) = replies.slot(l);
                    slot.copy_from_slice(&cookie[..l]);
                    replies.commit(from, start, l);
                    None
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn decrypt_one(
    sh: &Shared,
    peers: &Peers,
    d: &[u8],
    from: SocketAddr,
    plain: &mut [u8],
    co: &mut Coalescer,
    replies: &mut Outbox,
) {
    let Some(peer) = peer_of(peers, d, from, replies) else {
        return;
    };
    let mut inner = peer.lock();
    let Some(tunn) = inner.tunn.as_mut() else {
        return;
    };
    let ok = match tunn.decapsulate(Some(from.ip()), d, plain) {
        TunnResult::WriteToTunnelV4(p, src) => {
            if peer.allows(src.into()) {
                co.push(p);
            }
            true
        }
        TunnResult::WriteToTunnelV6(p, src) => {
            if peer.allows(src.into()) {
                co.push(p);
            }
            true
        }
        TunnResult::WriteToNetwork(p) => {
            let l = p.len();
            let (start, slot) = replies.slot(l);
            slot.copy_from_slice(p);
            replies.commit(from, start, l);
            // A completed handshake releases what waited for it.
            loop {
                let (start, slot) = replies.slot(65_536 + 32);
                match tunn.decapsulate(None, &[], slot) {
                    TunnResult::WriteToNetwork(q) => {
                        let l = q.len();
                        replies.commit(from, start, l);
                    }
                    _ => break,
                }
            }
            true
        }
        TunnResult::Done => true,
        TunnResult::Err(e) => {
            tracing::trace!(device = %sh.name, error = ?e, "decapsulate");
            false
        }
    };
    if ok {
        inner.endpoint = from;
    }
}

/// Handshake retries, rekeys and keepalives, every [`TIMER_TICK`].
fn timer_loop(sh: &Shared) {
    let mut buf = vec![0u8; 65_536 + 32];
    let mut last_reset = Instant::now();
    let mut out = Outbox::new();
    loop {
        let ready = poll_in(&[sh.stop_fd.as_fd(), sh.kick_fd.as_fd()], Some(TIMER_TICK));
        if ready[0] || sh.stopping() {
            return;
        }
        if ready[1] {
            drain(&sh.kick_fd);
        }
        {
            let peers = sh.peers();
            if last_reset.elapsed() >= Duration::from_secs(1) {
                if let Some(k) = &peers.keys {
                    k.limiter.reset_count();
                }
                last_reset = Instant::now();
            }
            for p in peers.by_key.values() {
                let mut inner = p.lock();
                let to = inner.endpoint;
                let kick = std::mem::take(&mut inner.kick);
                let Some(t) = inner.tunn.as_mut() else {
                    continue;
                };
                if kick
                    && let TunnResult::WriteToNetwork(q) =
                        t.format_handshake_initiation(&mut buf, false)
                {
                    let l = q.len();
                    let (start, slot) = out.slot(l);
                    slot.copy_from_slice(&buf[..l]);
                    out.commit(to, start, l);
                    continue;
                }
                if let TunnResult::WriteToNetwork(q) = t.update_timers(&mut buf) {
                    let l = q.len();
                    let (start, slot) = out.slot(l);
                    slot.copy_from_slice(&buf[..l]);
                    out.commit(to, start, l);
                }
            }
        }
        out.flush(sh, &sh.sock());
    }
}
