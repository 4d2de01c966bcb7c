//! The store's protocol over real unix sockets with real fds: pipes show
//! which fds the store holds (a pipe's read end sees EOF only when every
//! copy of its write end is closed, the store's included).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::thread::JoinHandle;

use super::*;

/// A store serving at a temporary path on a thread; joined on drop after a
/// shutdown, so a failing test leaves nothing behind.
struct Running {
    _dir: tempfile::TempDir,
    client: Client,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl Running {
    fn start() -> Running {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(SOCKET_NAME);
        let server = Server::bind(&path)
            .expect("bind")
            .expect("no store there yet");
        let thread = Some(std::thread::spawn(move || server.serve()));
        Running {
            _dir: dir,
            client: Client::new(path),
            thread,
        }
    }

    fn stop(mut self) -> Result<(), Error> {
        self.client.shutdown().expect("shutdown");
        self.thread
            .take()
            .expect("thread")
            .join()
            .expect("no panic")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.client.shutdown();
            let _ = t.join();
        }
    }
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    (r.into(), w.into())
}

/// True when every write end of the pipe of `r` is closed (EOF now).
fn writers_gone(r: &std::fs::File) -> bool {
    nix::fcntl::fcntl(
        r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("nonblocking");
    let mut b = [0u8; 1];
    matches!((&*r).read(&mut b), Ok(0))
}

fn same_file(a: &impl AsFd, b: &impl AsFd) -> bool {
    let (a, b) = (
        nix::sys::stat::fstat(a.as_fd()).expect("fstat"),
        nix::sys::stat::fstat(b.as_fd()).expect("fstat"),
    );
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

#[test]
fn put_get_drop_list() {
    let s = Running::start();
    let (r, w) = pipe();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.client.put("t1", &[w.as_fd(), udp.as_fd()]).expect("put");
    s.client.put("t0", &[udp.as_fd()]).expect("put");
    assert_eq!(s.client.list().expect("list"), ["t0", "t1"]);

    // Get hands back duplicates of the same open files, in order.
    let got = s.client.get("t1").expect("get").expect("held");
    assert_eq!(got.len(), 2);
    assert!(same_file(&got[0], &w) && same_file(&got[1], &udp));
    assert_ne!(got[0].as_raw_fd(), w.as_raw_fd());
    std::fs::File::from(got[0].try_clone().expect("dup"))
        .write_all(b"x")
        .expect("write through the duplicate");
    let mut b = [0u8; 1];
    (&r).read_exact(&mut b).expect("read");
    assert_eq!(&b, b"x");

    // The store's copy keeps the pipe open after ours are closed...
    drop((w, got));
    assert!(!writers_gone(&r));
    // ...until the key is dropped.
    s.client.drop_key("t1").expect("drop");
    assert!(writers_gone(&r));
    assert!(s.client.get("t1").expect("get").is_none());
    s.client
        .drop_key("t1")
        .expect("dropping an absent key is fine");
    assert_eq!(s.client.list().expect("list"), ["t0"]);
    s.stop().expect("clean exit");
}

#[test]
fn put_replaces_and_closes_the_old_fds() {
    let s = Running::start();
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    s.client.put("k", &[w1.as_fd()]).expect("put");
    s.client.put("k", &[w2.as_fd()]).expect("replace");
    drop((w1, w2));
    assert!(writers_gone(&r1), "the replaced fd is closed");
    assert!(!writers_gone(&r2), "the new fd is held");
    s.stop().expect("clean exit");
}

#[test]
fn shutdown_closes_everything_and_removes_the_socket() {
    let s = Running::start();
    let path = s.client.path().to_owned();
    let (r, w) = pipe();
    s.client.put("k", &[w.as_fd()]).expect("put");
    drop(w);
    let client = s.client.clone();
    s.stop().expect("clean exit");
    assert!(writers_gone(&r));
    assert!(!path.exists());
    assert!(matches!(
        client.list(),
        Err(Error::Sys {
            op: "connect to",
            ..
        })
    ));
}

#[test]
fn socket_is_private_and_a_second_store_steps_aside() {
    let s = Running::start();
    let meta = std::fs::metadata(s.client.path()).expect("stat");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A store already answers: binding again changes nothing.
    assert!(Server::bind(s.client.path()).expect("bind").is_none());
    assert_eq!(
        std::fs::metadata(s.client.path()).expect("stat").ino(),
        meta.ino()
    );
    s.client
        .put("still", &[meta_fd().as_fd()])
        .expect("the first store serves");
    s.stop().expect("clean exit");
}

fn meta_fd() -> OwnedFd {
    std::fs::File::open("/dev/null").expect("open").into()
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(SOCKET_NAME);
    // A socket file nobody listens on, as a killed store leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
    assert!(path.exists());
    let server = Server::bind(&path)
        .expect("bind")
        .expect("replaces the stale file");
    let t = std::thread::spawn(move || server.serve());
    let c = Client::new(&path);
    assert_eq!(c.list().expect("list"), Vec::<String>::new());
    c.shutdown().expect("shutdown");
    t.join().expect("no panic").expect("clean exit");
}

/// Sends raw bytes with `fds` on a fresh connection; the reply's status
/// and body.
fn raw(path: &Path, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> (u8, String) {
    let sock = seqpacket().expect("socket");
    set_timeouts(sock.as_fd()).expect("timeouts");
    socket::connect(sock.as_raw_fd(), &UnixAddr::new(path).expect("addr")).expect("connect");
    send(sock.as_fd(), bytes, fds).expect("send");
    let Ok(Some((reply, back))) = recv(sock.as_fd()) else {
        panic!("no reply to {bytes:?}");
    };
    assert!(back.is_empty(), "no fds with an error");
    (reply[0], String::from_utf8_lossy(&reply[1..]).into_owned())
}

/// Sends `bytes` with `fds` and expects an error reply `want` that says why.
fn refused(path: &Path, what: &str, bytes: &[u8], fds: &[BorrowedFd<'_>], want: Status) {
    let (status, message) = raw(path, bytes, fds);
    assert_eq!(status, want as u8, "{what}: {message}");
    assert!(!message.is_empty(), "{what}: the error says why");
}

#[test]
fn bad_requests_get_an_error_and_the_store_keeps_serving() {
    let s = Running::start();
    let path = s.client.path().to_owned();
    let (r, w) = pipe();
    let null = meta_fd();
    let five = [null.as_fd(); 5];
    let long_key = vec![b'k'; MAX_KEY + 1];
    let mut too_long = vec![1u8];
    too_long.extend_from_slice(&(long_key.len() as u16).to_be_bytes());
    too_long.extend_from_slice(&long_key);
    let plain: [(&str, Vec<u8>); 8] = [
        ("short", vec![2, 0]),
        ("unknown op", vec![9, 0, 1, b'k']),
        ("length mismatch", vec![2, 0, 5, b'k']),
        ("empty key", vec![2, 0, 0]),
        ("key not UTF-8", vec![2, 0, 1, 0xff]),
        ("key too long", too_long),
        ("list with a key", vec![4, 0, 1, b'k']),
        ("put without fds", vec![1, 0, 1, b'k']),
    ];
    for (what, bytes) in &plain {
        refused(&path, what, bytes, &[], Status::BadRequest);
    }
    let get = [2, 0, 1, b'k'];
    refused(
        &path,
        "put of 5 fds",
        &[1, 0, 1, b'k'],
        &five,
        Status::BadRequest,
    );
    refused(
        &path,
        "get with fds",
        &get,
        &[w.as_fd()],
        Status::BadRequest,
    );
    refused(&path, "get of an absent key", &get, &[], Status::NotFound);
    // Over-long message: the store drops it whole and says so.
    let huge = vec![1u8; MAX_MESSAGE + 10];
    assert_eq!(raw(&path, &huge, &[]).0, Status::BadRequest as u8);
    // Fds that came with a refused request are not kept.
    drop(w);
    assert!(writers_gone(&r));
    assert_eq!(
        s.client.list().expect("still serving"),
        Vec::<String>::new()
    );
    s.stop().expect("clean exit");
}

#[test]
fn the_store_is_bounded() {
    raise_nofile();
    let mut store = Store::default();
    let null = meta_fd();
    let put = |k: &str| Request::Put { key: k.into() }.encode();
    let dup = || vec![null.try_clone().expect("dup")];
    for i in 0..MAX_ENTRIES {
        let (r, _) = store.handle(&put(&format!("k{i}")), dup());
        assert_eq!(r.bytes[0], Status::Ok as u8);
    }
    let (r, _) = store.handle(&put("one-more"), dup());
    assert_eq!(r.bytes[0], Status::Full as u8);
    // Replacing a held key is not growth.
    let (r, _) = store.handle(&put("k0"), dup());
    assert_eq!(r.bytes[0], Status::Ok as u8);
    assert_eq!(store.len(), MAX_ENTRIES);
    // The list of every key at full length fits one message.
    let (r, _) = store.handle(&Request::List.encode(), Vec::new());
    assert!(r.bytes.len() <= MAX_MESSAGE);
}

#[test]
fn requests_round_trip() {
    for r in [
        Request::Put { key: "a".into() },
        Request::Get {
            key: "task-1".into(),
        },
        Request::Drop { key: "é".into() },
        Request::List,
        Request::Shutdown,
    ] {
        assert_eq!(Request::decode(&r.encode()), Ok(r.clone()));
    }
    assert_eq!(
        parse_list(&[0, 2, 0, 1, b'a', 0, 2, b'b', b'c']),
        Some(vec!["a".into(), "bc".into()])
    );
    assert_eq!(parse_list(&[0, 1, 0, 5, b'a']), None);
}
