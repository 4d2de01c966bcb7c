//! The node's fd store: a tiny process (`weft fd-store`) that keeps
//! duplicates of the daemon's listening sockets, by key, so they outlive
//! the daemon. The embedded resolver's sockets at 127.0.0.11:53 live in it
//! while a daemon restarts: the kernel keeps queueing the tasks' queries
//! (UDP datagrams in the receive buffer, TCP connections in the backlog)
//! instead of answering them with ICMP port unreachable, and the next
//! daemon adopts the same sockets and answers what waited.
//!
//! ```text
//!  daemon ── put(key, fds) ─┐   <exec-root>/fd-store.sock      ┌──────────────┐
//!  daemon ── get(key) ──────┼── SOCK_SEQPACKET, SCM_RIGHTS ──▶ │ key ─▶ fds   │
//!  daemon ── drop(key) ─────┘   one request = one message      │ (bounded)    │
//!                                                              └──────────────┘
//! ```
//!
//! The store is dumb on purpose: it never looks at what the fds are (the
//! daemon checks what it adopts), it never calls out, and it runs as long
//! as it is not told to stop (`weft leave` tells it, through
//! [`crate::linux::LinuxDataplane`]'s teardown). It is single-threaded and
//! serves one connection at a time, each bounded by [`IO_TIMEOUT`].
//!
//! Wire format (every integer big-endian; one request or reply per
//! SOCK_SEQPACKET message, so message boundaries need no framing):
//!
//! ```text
//!  request: op:u8  key_len:u16  key:[u8; key_len]      (+ fds for put)
//!           op: 1 put, 2 get, 3 drop, 4 list, 5 shutdown (list, shutdown: key_len 0)
//!  reply:   status:u8  body                            (+ fds for get)
//!           status 0 ok: get: body = fd count:u8; list: count:u16, then key_len:u16 key each
//!           status 1 not found, 2 bad request, 3 full: body = UTF-8 message
//! ```
//!
//! Only root gets in: the socket is 0600 inside the 0700 exec root, and the
//! store also refuses a peer whose credentials (SO_PEERCRED) are not its
//! own user.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr, sockopt,
};
use nix::sys::time::TimeVal;

/// The store's socket file name in the exec root.
pub const SOCKET_NAME: &str = "fd-store.sock";
/// At most this many keys are stored; a put of a new key beyond is refused.
pub const MAX_ENTRIES: usize = 1024;
/// At most this many fds under one key.
pub const MAX_FDS: usize = 4;
/// A key is 1 to this many bytes of UTF-8.
pub const MAX_KEY: usize = 128;
/// Each send and receive of a client or of the store waits at most this
/// long, so a stuck peer cannot hang the other side.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest message: a list of every key at full length.
const MAX_MESSAGE: usize = 3 + MAX_ENTRIES * (2 + MAX_KEY);
/// The kernel's limit of fds in one message (SCM_MAX_FD): a control buffer
/// this large is never truncated, so no received fd is ever lost unowned.
const SCM_MAX_FD: usize = 253;
/// The store keeps at most this many fds open: raise RLIMIT_NOFILE to it.
const WANT_NOFILE: u64 = (MAX_ENTRIES * MAX_FDS + 64) as u64;

/// Builds the command that runs a store on the given socket path (for
/// [`ensure_running`]); the daemon's is `weft fd-store --socket PATH`.
pub type Launcher = Arc<dyn Fn(&Path) -> std::process::Command + Send + Sync>;

/// What can go wrong talking to or running the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation on the store's socket failed.
    #[error("fd store {op} {}: {source}", path.display())]
    Sys {
        /// What we were doing (e.g. "connect to").
        op: &'static str,
        /// The store's socket.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// A filesystem or process operation failed.
    #[error("fd store {op} {}: {source}", path.display())]
    Io {
        /// What we were doing (e.g. "start the store process for").
        op: &'static str,
        /// The store's socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The store answered a request with an error.
    #[error("fd store refused {op} {key:?}: {status:?}: {message}")]
    Refused {
        /// The request ("put", "get", ...).
        op: &'static str,
        /// Its key.
        key: String,
        /// The store's status.
        status: Status,
        /// The store's explanation.
        message: String,
    },
    /// A message did not follow the wire format.
    #[error("fd store: malformed {what}")]
    Malformed {
        /// What was wrong.
        what: String,
    },
    /// A store started but did not answer in time.
    #[error("fd store at {} did not answer within {waited:?} of being started", path.display())]
    NotAnswering {
        /// The store's socket.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
}

/// One request to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Keep the fds attached to this message under `key` (replacing and
    /// closing what was there).
    Put {
        /// The key.
        key: String,
    },
    /// Send back duplicates of the fds under `key`.
    Get {
        /// The key.
        key: String,
    },
    /// Close and forget the fds under `key` (absent is fine).
    Drop {
        /// The key.
        key: String,
    },
    /// The keys held, sorted.
    List,
    /// Close everything, remove the socket and exit.
    Shutdown,
}

impl Request {
    fn op(&self) -> (u8, &'static str) {
        match self {
            Request::Put { .. } => (1, "put"),
            Request::Get { .. } => (2, "get"),
            Request::Drop { .. } => (3, "drop"),
            Request::List => (4, "list"),
            Request::Shutdown => (5, "shutdown"),
        }
    }

    fn key(&self) -> &str {
        match self {
            Request::Put { key } | Request::Get { key } | Request::Drop { key } => key,
            Request::List | Request::Shutdown => "",
        }
    }

    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let key = self.key().as_bytes();
        let mut out = Vec::with_capacity(3 + key.len());
        out.push(self.op().0);
        // Keys are checked to be at most MAX_KEY bytes before they are
        // sent; a longer one is cut here and refused by the store.
        let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&key[..usize::from(len)]);
        out
    }

    /// Parses a request; `Err` is the message of a bad-request reply.
    pub fn decode(msg: &[u8]) -> Result<Request, String> {
        let [op, hi, lo, key @ ..] = msg else {
            return Err(format!("request of {} bytes is shorter than 3", msg.len()));
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if key.len() != len {
            return Err(format!(
                "key length {len} does not match the {} bytes that follow",
                key.len()
            ));
        }
        let keyed = matches!(op, 1..=3);
        if !keyed && len != 0 {
            return Err(format!("op {op} takes no key"));
        }
        let key = if keyed {
            check_key(key)?.to_owned()
        } else {
            String::new()
        };
        Ok(match op {
            1 => Request::Put { key },
            2 => Request::Get { key },
            3 => Request::Drop { key },
            4 => Request::List,
            5 => Request::Shutdown,
            _ => return Err(format!("unknown op {op}")),
        })
    }
}

fn check_key(key: &[u8]) -> Result<&str, String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(format!("key of {} bytes (1 to {MAX_KEY})", key.len()));
    }
    std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())
}

/// The status of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// No such key (get).
    NotFound = 1,
    /// The request did not follow the wire format or its fds were wrong.
    BadRequest = 2,
    /// The store holds [`MAX_ENTRIES`] keys already.
    Full = 3,
}

impl Status {
    fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadRequest,
            3 => Status::Full,
            _ => return None,
        })
    }
}

/// One reply: its bytes and the fds to attach.
#[derive(Debug)]
pub struct Reply<'a> {
    /// The reply's bytes.
    pub bytes: Vec<u8>,
    /// Fds to send with it (the kernel duplicates them into the receiver).
    pub fds: Vec<BorrowedFd<'a>>,
}

impl Reply<'_> {
    fn error(status: Status, message: &str) -> Reply<'static> {
        let mut bytes = vec![status as u8];
        bytes.extend_from_slice(message.as_bytes());
        Reply {
            bytes,
            fds: Vec::new(),
        }
    }

    fn ok(body: Vec<u8>) -> Reply<'static> {
        let mut bytes = vec![Status::Ok as u8];
        bytes.extend(body);
        Reply {
            bytes,
            fds: Vec::new(),
        }
    }
}

/// The store's state: key -> fds, bounded. Pure apart from closing fds.
#[derive(Debug, Default)]
pub struct Store {
    entries: BTreeMap<String, Vec<OwnedFd>>,
}

impl Store {
    /// Answers one message (`msg` with the fds that came with it, already
    /// owned so every path closes them). `bool`: the store should stop.
    pub fn handle(&mut self, msg: &[u8], fds: Vec<OwnedFd>) -> (Reply<'_>, bool) {
        let req = match Request::decode(msg) {
            Ok(r) => r,
            Err(e) => return (Reply::error(Status::BadRequest, &e), false),
        };
        if !matches!(req, Request::Put { .. }) && !fds.is_empty() {
            return (
                Reply::error(Status::BadRequest, "only put carries fds"),
                false,
            );
        }
        match req {
            Request::Put { key } => {
                if fds.is_empty() || fds.len() > MAX_FDS {
                    let e = format!("put carries {} fds (1 to {MAX_FDS})", fds.len());
                    return (Reply::error(Status::BadRequest, &e), false);
                }
                if !self.entries.contains_key(&key) && self.entries.len() >= MAX_ENTRIES {
                    let e = format!("the store holds {MAX_ENTRIES} keys already");
                    return (Reply::error(Status::Full, &e), false);
                }
                self.entries.insert(key, fds);
                (Reply::ok(Vec::new()), false)
            }
            Request::Get { key } => match self.entries.get(&key) {
                None => (Reply::error(Status::NotFound, "no such key"), false),
                Some(held) => {
                    let mut r = Reply::ok(vec![held.len() as u8]);
                    r.fds = held.iter().map(|f| f.as_fd()).collect();
                    (r, false)
                }
            },
            Request::Drop { key } => {
                self.entries.remove(&key);
                (Reply::ok(Vec::new()), false)
            }
            Request::List => {
                let mut body = Vec::new();
                body.extend_from_slice(&(self.entries.len() as u16).to_be_bytes());
                for k in self.entries.keys() {
                    body.extend_from_slice(&(k.len() as u16).to_be_bytes());
                    body.extend_from_slice(k.as_bytes());
                }
                (Reply::ok(body), false)
            }
            Request::Shutdown => {
                self.entries.clear();
                (Reply::ok(Vec::new()), true)
            }
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Sends one message with `fds` attached.
fn send(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    // MSG_NOSIGNAL: a peer that went away is an error, not a SIGPIPE.
    socket::sendmsg::<()>(
        fd.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// One message's bytes and the fds that came with it.
type Message = (Vec<u8>, Vec<OwnedFd>);

/// Receives one message and the fds that came with it (owned, close on
/// exec). `None`: the peer closed the connection.
fn recv(fd: BorrowedFd<'_>) -> Result<Option<Message>, RecvError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let (n, truncated, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(RecvError::Sys)?;
        let mut fds = Vec::new();
        // The control buffer holds SCM_MAX_FD fds, so it is never
        // truncated and cmsgs() does not fail.
        for c in msg.cmsgs().map_err(RecvError::Sys)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: the kernel just installed `r` in this process
                    // for this message; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
        (msg.bytes, truncated, fds)
    };
    if truncated {
        return Err(RecvError::TooLong);
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

enum RecvError {
    Sys(Errno),
    TooLong,
}

fn seqpacket() -> Result<OwnedFd, Errno> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

fn set_timeouts(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let t = TimeVal::new(IO_TIMEOUT.as_secs() as _, 0);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &t)?;
    socket::setsockopt(&fd, sockopt::SendTimeout, &t)
}

/// A client of the store at one socket path; every call is one short
/// connection (the store serves one at a time).
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client of the store listening at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client { path: path.into() }
    }

    /// The store's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sys(&self, op: &'static str) -> impl Fn(Errno) -> Error + '_ {
        move |source| Error::Sys {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Sends `req` with `fds`; the reply's status, body and fds.
    fn call(
        &self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Status, Vec<u8>, Vec<OwnedFd>), Error> {
        let sock = seqpacket().map_err(self.sys("create a socket for"))?;
        set_timeouts(sock.as_fd()).map_err(self.sys("set timeouts on a socket for"))?;
        let addr = UnixAddr::new(&self.path).map_err(self.sys("address"))?;
        socket::connect(sock.as_raw_fd(), &addr).map_err(self.sys("connect to"))?;
        send(sock.as_fd(), &req.encode(), fds).map_err(self.sys("send a request to"))?;
        let (bytes, fds) = match recv(sock.as_fd()) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(Error::Malformed {
                    what: format!("reply to {}: the store closed the connection", req.op().1),
                });
            }
            Err(RecvError::TooLong) => {
                return Err(Error::Malformed {
                    what: format!("reply to {}: longer than {MAX_MESSAGE} bytes", req.op().1),
                });
            }
            Err(RecvError::Sys(e)) => return Err(self.sys("receive a reply from")(e)),
        };
        let Some((status, body)) = bytes
            .split_first()
            .and_then(|(s, b)| Some((Status::from_u8(*s)?, b.to_vec())))
        else {
            return Err(Error::Malformed {
                what: format!("reply to {}: no valid status", req.op().1),
            });
        };
        Ok((status, body, fds))
    }

    fn expect_ok(
        &self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), Error> {
        let (status, body, fds) = self.call(req, fds)?;
        if status != Status::Ok {
            return Err(Error::Refused {
                op: req.op().1,
                key: req.key().to_owned(),
                status,
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok((body, fds))
    }

    /// Keeps duplicates of `fds` under `key` (replacing what was there).
    pub fn put(&self, key: &str, fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        self.expect_ok(&Request::Put { key: key.into() }, fds)
            .map(drop)
    }

    /// Duplicates of the fds under `key`, in the order they were put;
    /// `None`: no such key.
    pub fn get(&self, key: &str) -> Result<Option<Vec<OwnedFd>>, Error> {
        let req = Request::Get { key: key.into() };
        let (status, body, fds) = self.call(&req, &[])?;
        match status {
            Status::NotFound => Ok(None),
            Status::Ok if body == [fds.len() as u8] => Ok(Some(fds)),
            Status::Ok => Err(Error::Malformed {
                what: format!(
                    "reply to get {key:?}: {} fds for a count of {body:?}",
                    fds.len()
                ),
            }),
            status => Err(Error::Refused {
                op: "get",
                key: key.into(),
                status,
                message: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }

    /// Closes and forgets the fds under `key` (absent is fine).
    pub fn drop_key(&self, key: &str) -> Result<(), Error> {
        self.expect_ok(&Request::Drop { key: key.into() }, &[])
            .map(drop)
    }

    /// The keys held, sorted.
    pub fn list(&self) -> Result<Vec<String>, Error> {
        let (body, _) = self.expect_ok(&Request::List, &[])?;
        parse_list(&body).ok_or_else(|| Error::Malformed {
            what: "reply to list".into(),
        })
    }

    /// Tells the store to close everything and exit.
    pub fn shutdown(&self) -> Result<(), Error> {
        self.expect_ok(&Request::Shutdown, &[]).map(drop)
    }
}

fn parse_list(body: &[u8]) -> Option<Vec<String>> {
    let (count, mut rest) = body.split_first_chunk::<2>()?;
    let mut keys = Vec::new();
    for _ in 0..u16::from_be_bytes(*count) {
        let (len, r) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if r.len() < len {
            return None;
        }
        keys.push(String::from_utf8(r[..len].to_vec()).ok()?);
        rest = &r[len..];
    }
    rest.is_empty().then_some(keys)
}

/// A listening store socket.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    sock: OwnedFd,
    store: Store,
}

impl Server {
    /// Binds the store's socket at `path` (0600), replacing a stale socket
    /// file; `Ok(None)`: a store already answers there.
    pub fn bind(path: &Path) -> Result<Option<Server>, Error> {
        let sys = |op| {
            move |source| Error::Sys {
                op,
                path: path.to_owned(),
                source,
            }
        };
        if Client::new(path).list().is_ok() {
            return Ok(None);
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    op: "remove the stale socket",
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let sock = seqpacket().map_err(sys("create the socket"))?;
        let addr = UnixAddr::new(path).map_err(sys("address"))?;
        socket::bind(sock.as_raw_fd(), &addr).map_err(sys("bind"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| Error::Io {
                    op: "make private (0600)",
                    path: path.to_owned(),
                    source,
                },
            )?;
        }
        socket::listen(&sock, Backlog::new(64).unwrap_or(Backlog::MAXCONN))
            .map_err(sys("listen on"))?;
        Ok(Some(Server {
            path: path.to_owned(),
            sock,
            store: Store::default(),
        }))
    }

    /// Serves until a shutdown request (then removes the socket file).
    /// Errors of one connection are logged and never end the store.
    pub fn serve(mut self) -> Result<(), Error> {
        raise_nofile();
        let me = nix::unistd::geteuid().as_raw();
        loop {
            let conn = match socket::accept(self.sock.as_raw_fd()) {
                // SAFETY: accept just returned this fd; nothing else owns it.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(Errno::EMFILE | Errno::ENFILE) => {
                    // Out of fds: a pending connection stays queued; do not spin.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(source) => {
                    return Err(Error::Sys {
                        op: "accept on",
                        path: self.path,
                        source,
                    });
                }
            };
            match socket::getsockopt(&conn, sockopt::PeerCredentials) {
                Ok(c) if c.uid() == me => {}
                Ok(c) => {
                    tracing::warn!(uid = c.uid(), pid = c.pid(), "fd store: refused a peer");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fd store: cannot read a peer's credentials");
                    continue;
                }
            }
            if self.serve_conn(conn.as_fd()) {
                let _ = std::fs::remove_file(&self.path);
                return Ok(());
            }
        }
    }

    /// One connection's requests until it closes; `true`: shut down.
    fn serve_conn(&mut self, conn: BorrowedFd<'_>) -> bool {
        if let Err(e) = set_timeouts(conn) {
            tracing::warn!(error = %e, "fd store: cannot set timeouts");
            return false;
        }
        loop {
            let (msg, fds) = match recv(conn) {
                Ok(Some(m)) => m,
                Ok(None) => return false,
                Err(RecvError::TooLong) => {
                    let r = Reply::error(Status::BadRequest, "request too long");
                    let _ = send(conn, &r.bytes, &[]);
                    continue;
                }
                Err(RecvError::Sys(e)) => {
                    tracing::debug!(error = %e, "fd store: receive");
                    return false;
                }
            };
            let (reply, stop) = self.store.handle(&msg, fds);
            if let Err(e) = send(conn, &reply.bytes, &reply.fds) {
                tracing::debug!(error = %e, "fd store: send");
            }
            if stop {
                return true;
            }
        }
    }
}

/// The store holds up to [`MAX_ENTRIES`] × [`MAX_FDS`] fds; the usual soft
/// limit of 1024 would refuse them long before.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = WANT_NOFILE.min(hard);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}

/// Keeps duplicates of `fds` under `key` in the store `client` talks to,
/// starting one with `launcher` first when none answers (the first thing
/// a node keeps after it starts or joins again).
pub fn put_starting(
    client: &Client,
    launcher: Option<&Launcher>,
    key: &str,
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    match (client.put(key, fds), launcher) {
        (
            Err(Error::Sys {
                op: "connect to", ..
            }),
            Some(launch),
        ) => {
            ensure_running(client.path(), launch(client.path()))?;
            client.put(key, fds)
        }
        (kept, _) => kept,
    }
}

/// The store as one owner of kept descriptors sees it: a client, and the
/// launcher that starts a store when none answers.
#[derive(Clone)]
pub struct Keeper {
    client: Client,
    launcher: Option<Launcher>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("socket", &self.client.path())
            .field("launches", &self.launcher.is_some())
            .finish()
    }
}

impl Keeper {
    /// Keeps descriptors in the store at `client`'s socket, starting one
    /// with `launcher` when none answers (`None`: only in a store someone
    /// else started).
    pub fn new(client: Client, launcher: Option<Launcher>) -> Keeper {
        Keeper { client, launcher }
    }

    /// Keeps duplicates of `fds` under `key` (see [`put_starting`]).
    pub fn keep(&self, key: &str, fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        put_starting(&self.client, self.launcher.as_ref(), key, fds)
    }

    /// Duplicates of what is kept under `key`; `None`: nothing, or no
    /// store runs.
    pub fn kept(&self, key: &str) -> Result<Option<Vec<OwnedFd>>, Error> {
        match self.client.get(key) {
            Err(Error::Sys {
                op: "connect to", ..
            }) => Ok(None),
            r => r,
        }
    }

    /// Closes the store's copies under `key`; absent, or no store, is fine.
    pub fn forget(&self, key: &str) -> Result<(), Error> {
        match self.client.drop_key(key) {
            Err(Error::Sys {
                op: "connect to", ..
            }) => Ok(()),
            r => r,
        }
    }
}

/// Makes sure a store answers at `path`: if none does, starts `cmd` (which
/// must run [`Server::bind`] and [`Server::serve`] on `path`) in a session
/// of its own, so it outlives the caller and its signals, and waits until
/// it answers. `Ok(true)`: a store was started.
pub fn ensure_running(path: &Path, mut cmd: std::process::Command) -> Result<bool, Error> {
    use std::os::unix::process::CommandExt;
    let client = Client::new(path);
    if client.list().is_ok() {
        return Ok(false);
    }
    // Not holding the caller's working directory (a mount) busy.
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .current_dir("/");
    // SAFETY: setsid(2) is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let mut child = cmd.spawn().map_err(|source| Error::Io {
        op: "start the store process for",
        path: path.to_owned(),
        source,
    })?;
    // Reaps the store when it exits (after `weft leave`), so no zombie
    // stays behind a long-running daemon.
    let _ = std::thread::Builder::new()
        .name("weft-fd-store-reap".into())
        .spawn(move || child.wait());
    let started = Instant::now();
    let waited = Duration::from_secs(5);
    while started.elapsed() < waited {
        if client.list().is_ok() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::NotAnswering {
        path: path.to_owned(),
        waited,
    })
}

#[cfg(test)]
mod tests;
