//! The embedded resolver's sockets: one UDP socket and one TCP listener at
//! 127.0.0.11:53 inside each task namespace, all served by the daemon's one
//! tokio runtime, plus the forwarder that sends names that are not ours to
//! the upstreams from the daemon's own namespace.
//!
//! Sockets keep the namespace they were created in, so each listener's
//! sockets are made on a short-lived thread that joined the task namespace
//! ([`Netns::run_in`]) and then handed to the runtime; forwarding sockets
//! come from one long-lived thread that joined the daemon's namespace (a
//! fresh socket, so a fresh random source port, per forwarded query).
//!
//! ```text
//!  task netns 127.0.0.11:53/udp ─┐                       ┌─ answer from the view
//!  task netns 127.0.0.11:53/tcp ─┴─▶ message::handle ────┤
//!                                                        └─ forward: socket from the
//!                                                           daemon-netns thread ─▶ upstream
//! ```
//!
//! A listener holds a reference to its namespace (its sockets), so it is
//! stopped before the namespace is deleted.
//!
//! The sockets outlive the daemon: after binding them, the server hands
//! duplicates to the node's fd store ([`crate::linux::fdstore`], key
//! `dns/<task>`), and a listener started for a task first adopts the
//! store's sockets if they are bound in the task's namespace now. While a
//! daemon restarts, queries wait in the sockets' buffers (and TCP clients
//! in the backlog) instead of meeting a closed port, and the next daemon
//! answers them. Stopping a task's listener drops the store's copies;
//! stopping them all (a daemon going away) keeps them.
//!
//! ```text
//!  start(task, ns) ─▶ store get dns/<task> ─┬─ UDP + TCP bound at 127.0.0.11:53 in ns ─▶ adopt
//!                                           └─ none or not these ─▶ bind in ns ─▶ store put
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};

use super::message::{self, Handled, Transport};
use super::view::{DnsView, TaskView};
use crate::linux::fdstore::{self, Client as FdStore};
use crate::linux::{Error as LinuxError, Netns};
use crate::model::TaskId;

/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(2000);
/// At most this many upstreams are tried per query (resolv.conf's MAXNS).
const MAX_UPSTREAMS: usize = 3;
/// An idle TCP client is dropped after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// At most this many queries are being forwarded per listener at once;
/// more are answered SERVFAIL at once rather than queued.
const MAX_INFLIGHT: usize = 256;

type SocketReply = tokio::sync::oneshot::Sender<io::Result<std::net::UdpSocket>>;

/// The resolver of one data plane: the shared view, the listeners by task
/// and the forwarder.
pub struct DnsServer {
    shared: Arc<Shared>,
    listeners: Mutex<BTreeMap<TaskId, Listener>>,
    /// Where the sockets are kept across daemon restarts; `None`: nowhere.
    store: Option<FdStore>,
    /// Starts a store when none answers; `None`: never started from here.
    launcher: Option<fdstore::Launcher>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("listeners", &self.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct Shared {
    view: RwLock<DnsView>,
    /// Bumped by every [`DnsServer::set_view`]: a listener serves only once
    /// the view has been set after it started. An adopted socket holds
    /// queries that waited through a daemon restart, and the view of a
    /// fresh daemon is empty until its first apply ends; answered at once,
    /// those queries would get "no such name".
    view_gen: tokio::sync::watch::Sender<u64>,
    /// Requests for a fresh unconnected UDP socket in the daemon's
    /// namespace (`true`: IPv6).
    sockets: Mutex<std::sync::mpsc::Sender<(bool, SocketReply)>>,
}

struct Listener {
    /// Inode of the namespace its sockets live in.
    ino: u64,
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

impl Listener {
    fn alive(&self) -> bool {
        !self.udp.is_finished() && !self.tcp.is_finished()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The loops own their sockets and their child tasks (JoinSets):
        // aborting them closes everything.
        self.udp.abort();
        self.tcp.abort();
    }
}

impl DnsServer {
    /// A resolver forwarding from namespace `host` (the daemon's own).
    pub fn new(host: &Netns) -> DnsServer {
        let (tx, rx) = std::sync::mpsc::channel::<(bool, SocketReply)>();
        let host = host.clone();
        // Lives until the server (the sender) is dropped.
        let spawned = std::thread::Builder::new()
            .name("weft-dns-fwd".into())
            .spawn(move || {
                let joined = nix::sched::setns(&host, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from);
                for (v6, reply) in rx {
                    let sock = match &joined {
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        Ok(()) if v6 => std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)),
                        Ok(()) => std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)),
                    };
                    let _ = reply.send(sock);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the DNS forwarding thread; forwarding will fail");
        }
        DnsServer {
            shared: Arc::new(Shared {
                view: RwLock::new(DnsView::default()),
                view_gen: tokio::sync::watch::Sender::new(0),
                sockets: Mutex::new(tx),
            }),
            listeners: Mutex::new(BTreeMap::new()),
            store: None,
            launcher: None,
        }
    }

    /// Keeps the listeners' sockets in the fd store at `store` too, and
    /// adopts the sockets kept there (see the module header). A store that
    /// does not answer only costs the keeping: sockets are bound as before.
    pub fn with_fd_store(mut self, store: FdStore) -> DnsServer {
        self.store = Some(store);
        self
    }

    /// Starts the fd store with `launcher` when sockets are to be kept and
    /// none answers (the first task after a node starts or joins again).
    pub fn with_fd_store_launcher(mut self, launcher: fdstore::Launcher) -> DnsServer {
        self.launcher = Some(launcher);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TaskId, Listener>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces what the resolver answers (takes effect for the next query).
    pub fn set_view(&self, view: DnsView) {
        *self.shared.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        self.shared.view_gen.send_modify(|g| *g += 1);
    }

    /// What the resolver answers now.
    pub fn view(&self) -> DnsView {
        self.shared
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Drops every listener that is dead or not serving the namespace now
    /// pinned for its task (`pinned`: task -> namespace inode), and returns
    /// the tasks whose resolver is serving.
    pub fn reap(&self, pinned: &BTreeMap<TaskId, u64>) -> BTreeSet<TaskId> {
        let mut l = self.lock();
        l.retain(|t, lis| lis.alive() && pinned.get(t) == Some(&lis.ino));
        l.keys().cloned().collect()
    }

    /// Starts (or restarts) `task`'s listeners inside `ns`, whose `lo` must
    /// be up, on the sockets the fd store keeps for `task` if they live in
    /// `ns`, else on new ones (then kept in the store). Must run inside a
    /// tokio runtime.
    pub fn start(&self, task: &TaskId, ns: &Netns, at: Ipv4Addr) -> Result<(), LinuxError> {
        // The old loops go first; their sockets stay in the store if they
        // are the ones to adopt.
        drop(self.lock().remove(task));
        let addr = SocketAddr::new(IpAddr::V4(at), DNS_PORT);
        let io_err = |source| LinuxError::Io {
            op: "bind the DNS resolver (port 53) in",
            path: ns.path().to_owned(),
            source,
        };
        let (udp, tcp) = match self.adopt(task, ns, addr) {
            Some(kept) => kept,
            None => {
                let (udp, tcp) = ns
                    .run_in(|| -> io::Result<_> {
                        let udp = std::net::UdpSocket::bind(addr)?;
                        let tcp = std::net::TcpListener::bind(addr)?;
                        Ok((udp, tcp))
                    })?
                    .map_err(io_err)?;
                self.keep(task, &[udp.as_fd(), tcp.as_fd()]);
                (udp, tcp)
            }
        };
        udp.set_nonblocking(true).map_err(io_err)?;
        tcp.set_nonblocking(true).map_err(io_err)?;
        let udp = tokio::net::UdpSocket::from_std(udp).map_err(io_err)?;
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(io_err)?;
        // Queries wait in the sockets until the view is set after this
        // start (the end of the apply that started it).
        let ready = *self.shared.view_gen.borrow() + 1;
        let (shared, t) = (self.shared.clone(), task.clone());
        let udp = async move {
            shared.view_set(ready).await;
            serve_udp(shared, t, udp).await
        };
        let (shared, t) = (self.shared.clone(), task.clone());
        let tcp = async move {
            shared.view_set(ready).await;
            serve_tcp(shared, t, tcp).await
        };
        let listener = Listener {
            ino: ns.inode(),
            udp: tokio::spawn(udp),
            tcp: tokio::spawn(tcp),
        };
        self.lock().insert(task.clone(), listener);
        Ok(())
    }

    /// The sockets the store keeps for `task` if they are a UDP socket and
    /// a TCP listener bound to `addr` in `ns`; sockets that are not (the
    /// namespace was made anew) are dropped from the store.
    fn adopt(
        &self,
        task: &TaskId,
        ns: &Netns,
        addr: SocketAddr,
    ) -> Option<(std::net::UdpSocket, std::net::TcpListener)> {
        let store = self.store.as_ref()?;
        let key = store_key(task);
        let fds = match store.get(&key) {
            Ok(Some(fds)) => fds,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(%task, error = %e, "DNS sockets not adopted from the fd store");
                return None;
            }
        };
        match adoptable(fds, ns, addr) {
            Ok(kept) => {
                tracing::debug!(%task, "DNS sockets adopted from the fd store");
                Some(kept)
            }
            Err(why) => {
                tracing::info!(%task, why, "the fd store's DNS sockets are not this namespace's; binding new ones");
                self.forget(task);
                None
            }
        }
    }

    /// Hands duplicates of `task`'s sockets to the store, starting one if
    /// none answers and a launcher is set.
    fn keep(&self, task: &TaskId, fds: &[BorrowedFd<'_>]) {
        let Some(store) = &self.store else { return };
        let kept = fdstore::put_starting(store, self.launcher.as_ref(), &store_key(task), fds);
        if let Err(e) = kept {
            tracing::warn!(%task, error = %e, "DNS sockets not kept in the fd store; this task's resolver will be down while the daemon restarts");
        }
    }

    /// Drops the store's copies of `task`'s sockets.
    fn forget(&self, task: &TaskId) {
        if let Some(store) = &self.store
            && let Err(e) = store.drop_key(&store_key(task))
        {
            tracing::debug!(%task, error = %e, "DNS sockets not dropped from the fd store");
        }
    }

    /// Stops `task`'s listeners and closes their sockets, the store's
    /// copies too; absent is fine.
    pub fn stop(&self, task: &TaskId) {
        let gone = self.lock().remove(task);
        drop(gone);
        self.forget(task);
    }

    /// Stops every listener; the store keeps its copies of their sockets
    /// (see [`DnsServer::shutdown_store`]).
    pub fn stop_all(&self) {
        let all = std::mem::take(&mut *self.lock());
        drop(all);
    }

    /// Tells the fd store to close everything it keeps and exit (the node
    /// leaves); a store that is not running is fine.
    pub fn shutdown_store(&self) {
        let Some(store) = &self.store else { return };
        match store.shutdown() {
            Ok(()) => tracing::info!(socket = %store.path().display(), "fd store stopped"),
            Err(fdstore::Error::Sys {
                op: "connect to", ..
            }) => {}
            Err(e) => tracing::warn!(error = %e, "cannot stop the fd store"),
        }
    }
}

/// The store key of `task`'s resolver sockets.
fn store_key(task: &TaskId) -> String {
    format!("dns/{task}")
}

/// `fds` as (UDP socket, TCP listener) if they are exactly those, bound to
/// `addr` in namespace `ns`; else why not.
fn adoptable(
    fds: Vec<OwnedFd>,
    ns: &Netns,
    addr: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), String> {
    use nix::sys::socket::{SockType, getsockopt, sockopt};
    let [udp, tcp]: [OwnedFd; 2] = fds
        .try_into()
        .map_err(|fds: Vec<OwnedFd>| format!("{} fds, not 2", fds.len()))?;
    for (fd, want, what) in [
        (&udp, SockType::Datagram, "udp"),
        (&tcp, SockType::Stream, "tcp"),
    ] {
        match getsockopt(fd, sockopt::SockType) {
            Ok(t) if t == want => {}
            Ok(t) => return Err(format!("{what}: a socket of type {t:?}")),
            Err(e) => return Err(format!("{what}: not a socket: {e}")),
        }
        let netns = crate::linux::netns::socket_netns_inode(fd.as_fd())
            .map_err(|e| format!("{what}: {e}"))?;
        if netns != ns.inode() {
            return Err(format!("{what}: in namespace {netns}, not {}", ns.inode()));
        }
    }
    if !getsockopt(&tcp, sockopt::AcceptConn).unwrap_or(false) {
        return Err("tcp: not listening".into());
    }
    let udp = std::net::UdpSocket::from(udp);
    let tcp = std::net::TcpListener::from(tcp);
    for (what, local) in [("udp", udp.local_addr()), ("tcp", tcp.local_addr())] {
        match local {
            Ok(a) if a == addr => {}
            Ok(a) => return Err(format!("{what}: bound to {a}")),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
    Ok((udp, tcp))
}

impl Shared {
    /// Returns once the view has been set `generation` times.
    async fn view_set(&self, generation: u64) {
        let mut rx = self.view_gen.subscribe();
        // The sender lives in `self`: waiting cannot fail.
        let _ = rx.wait_for(|g| *g >= generation).await;
    }

    fn task_view(&self, task: &TaskId) -> (Option<Arc<TaskView>>, Vec<SocketAddr>) {
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        (v.task(task), v.upstreams.clone())
    }

    fn answer(
        &self,
        task: &TaskId,
        query: &[u8],
        transport: Transport,
    ) -> Option<(Handled, Vec<SocketAddr>)> {
        let (view, upstreams) = self.task_view(task);
        super::metrics::query(transport);
        let handled = message::handle(view.as_deref(), query, !upstreams.is_empty(), transport)?;
        match &handled {
            Handled::Reply(r) => super::metrics::answered(query, r),
            Handled::Forward => super::metrics::forwarded(),
        }
        Some((handled, upstreams))
    }

    /// A fresh UDP socket in the daemon's namespace.
    async fn socket(&self, v6: bool) -> io::Result<tokio::net::UdpSocket> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((v6, tx))
            .map_err(|_| io::Error::other("DNS forwarding thread is gone"))?;
        let sock = rx
            .await
            .map_err(|_| io::Error::other("DNS forwarding thread is gone"))??;
        sock.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(sock)
    }

    /// Forwards `query` to the upstreams in turn; the first reply with the
    /// query's id wins. `None`: nobody answered.
    async fn forward(&self, query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        for up in upstreams.iter().take(MAX_UPSTREAMS) {
            match self.ask(query, *up).await {
                Ok(Some(r)) => return Some(r),
                Ok(None) => tracing::debug!(upstream = %up, "DNS upstream timed out"),
                Err(e) => tracing::debug!(upstream = %up, error = %e, "DNS upstream failed"),
            }
        }
        None
    }

    async fn ask(&self, query: &[u8], up: SocketAddr) -> io::Result<Option<Vec<u8>>> {
        let sock = self.socket(up.is_ipv6()).await?;
        // Connected: the kernel drops datagrams from anyone else.
        sock.connect(up).await?;
        sock.send(query).await?;
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        let mut buf = vec![0u8; 65535];
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(n)) if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Ok(Ok(_)) => continue,
            }
        }
    }
}

async fn serve_udp(shared: Arc<Shared>, task: TaskId, sock: tokio::net::UdpSocket) {
    let sock = Arc::new(sock);
    let mut inflight = JoinSet::new();
    let mut buf = vec![0u8; 65535];
    loop {
        while inflight.try_join_next().is_some() {}
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here; keep serving.
                tracing::debug!(%task, error = %e, "DNS udp receive");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let Some((handled, upstreams)) = shared.answer(&task, &query, Transport::Udp) else {
            continue;
        };
        match handled {
            Handled::Reply(r) => {
                let _ = sock.send_to(&r, peer).await;
            }
            Handled::Forward if inflight.len() >= MAX_INFLIGHT => {
                super::metrics::failed(super::metrics::Failure::Overload);
                if let Some(r) = message::servfail(&query) {
                    let _ = sock.send_to(&r, peer).await;
                }
            }
            Handled::Forward => {
                let (shared, sock) = (shared.clone(), sock.clone());
                inflight.spawn(async move {
                    let r = match shared.forward(&query, &upstreams).await {
                        Some(r) => Some(r),
                        None => {
                            super::metrics::failed(super::metrics::Failure::Upstream);
                            message::servfail(&query)
                        }
                    };
                    if let Some(r) = r {
                        let _ = sock.send_to(&r, peer).await;
                    }
                });
            }
        }
    }
}

async fn serve_tcp(shared: Arc<Shared>, task: TaskId, listener: tokio::net::TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(%task, error = %e, "DNS tcp accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if conns.len() >= MAX_INFLIGHT {
            continue;
        }
        conns.spawn(serve_tcp_conn(shared.clone(), task.clone(), stream));
    }
}

/// One TCP client: length-prefixed queries, answered in order, until it
/// closes or idles.
async fn serve_tcp_conn(shared: Arc<Shared>, task: TaskId, mut s: tokio::net::TcpStream) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some((handled, upstreams)) = shared.answer(&task, &query, Transport::Tcp) else {
            return;
        };
        let reply = match handled {
            Handled::Reply(r) => Some(r),
            Handled::Forward => match shared.forward(&query, &upstreams).await {
                Some(r) => Some(r),
                None => {
                    super::metrics::failed(super::metrics::Failure::Upstream);
                    message::servfail(&query)
                }
            },
        };
        let Some(reply) = reply else { return };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(reply.len() + 2);
        frame.extend_from_slice(&n.to_be_bytes());
        frame.extend_from_slice(&reply);
        if s.write_all(&frame).await.is_err() {
            return;
        }
    }
}
