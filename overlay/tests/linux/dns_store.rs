//! The resolver's sockets in a real fd store, inside real namespaces: they
//! outlive the server that bound them, queries wait in them (neither
//! answered nor refused) until the next server adopts them and has its
//! view, and sockets of another namespace are not adopted.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use weft_overlay::dns::DnsView;
use weft_overlay::dns::listener::DnsServer;
use weft_overlay::linux::{Netns, fdstore};
use weft_overlay::model::TaskId;

use crate::common::{RunDir, require_root, unique};

/// A query for `x.` (type A) with id 0x1234.
const QUERY: [u8; 19] = [
    0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1,
];
const RESOLVER: &str = "127.0.0.11:53";

/// A UDP client in `ns` that has sent the query to the resolver.
fn udp_asks(ns: &Netns) -> UdpSocket {
    let s = ns
        .run_in(|| UdpSocket::bind("127.0.0.1:0"))
        .expect("run in netns")
        .expect("bind");
    s.connect(RESOLVER).expect("connect");
    s.send(&QUERY).expect("send");
    s
}

/// A TCP client in `ns` that has sent the query to the resolver.
fn tcp_asks(ns: &Netns) -> TcpStream {
    let mut s = ns
        .run_in(|| TcpStream::connect(RESOLVER))
        .expect("run in netns")
        .expect("connect (queued in the backlog if nobody accepts)");
    let mut frame = (QUERY.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&QUERY);
    s.write_all(&frame).expect("send");
    s
}

/// Whether the UDP client gets a reply to the query within `wait`; a
/// refused query (ICMP port unreachable) panics.
fn udp_answered(s: &UdpSocket, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 512];
    match s.recv(&mut buf) {
        Ok(n) => n >= 12 && buf[..2] == QUERY[..2] && buf[2] & 0x80 != 0,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("query refused: {e}"),
    }
}

fn tcp_answered(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 14];
    match s.read_exact(&mut buf) {
        Ok(()) => buf[2..4] == QUERY[..2] && buf[4] & 0x80 != 0,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("tcp query failed: {e}"),
    }
}

/// A store serving on a thread, shut down on drop (also when the test
/// fails).
struct Store {
    client: fdstore::Client,
    thread: Option<std::thread::JoinHandle<Result<(), fdstore::Error>>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.client.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_sockets_outlive_their_server_in_the_fd_store() {
    require_root!();
    let run = RunDir::new();
    let host = run.netns(&unique("dh"));
    let ns = run.netns(&unique("dt"));
    let path = run.path().join(fdstore::SOCKET_NAME);
    let server = fdstore::Server::bind(&path)
        .expect("bind")
        .expect("no store yet");
    let store = Store {
        client: fdstore::Client::new(&path),
        thread: Some(std::thread::spawn(move || server.serve())),
    };
    let task = TaskId::from("t1");
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(3);

    let first = DnsServer::new(&host).with_fd_store(store.client.clone());
    first
        .start(&task, &ns, weft_overlay::dns::RESOLVER_ADDR)
        .expect("start");
    first.set_view(DnsView::default());
    assert!(udp_answered(&udp_asks(&ns), long));
    assert_eq!(store.client.list().expect("list"), ["dns/t1"]);

    // The server goes (as a killed daemon): its sockets stay in the store.
    drop(first);
    let (udp, mut tcp) = (udp_asks(&ns), tcp_asks(&ns));
    assert!(!udp_answered(&udp, short), "no server: nobody answers");
    assert!(!tcp_answered(&mut tcp, short));

    // The next server adopts them and answers what waited, once it has
    // its view.
    let second = DnsServer::new(&host).with_fd_store(store.client.clone());
    second
        .start(&task, &ns, weft_overlay::dns::RESOLVER_ADDR)
        .expect("start");
    assert!(!udp_answered(&udp, short), "no view yet: queries wait");
    second.set_view(DnsView::default());
    assert!(
        udp_answered(&udp, long),
        "the query that waited is answered"
    );
    assert!(
        tcp_answered(&mut tcp, long),
        "the connection that waited too"
    );

    // A new namespace for the task: the store's sockets (of the old one)
    // are not adopted but dropped, so the old namespace's port is free.
    let ns2 = run.netns(&unique("dt"));
    second
        .start(&task, &ns2, weft_overlay::dns::RESOLVER_ADDR)
        .expect("start in the new namespace");
    second.set_view(DnsView::default());
    assert!(udp_answered(&udp_asks(&ns2), long));
    let freed = Instant::now();
    while ns
        .run_in(|| UdpSocket::bind(RESOLVER))
        .expect("run in netns")
        .is_err()
    {
        assert!(
            freed.elapsed() < long,
            "the old namespace's socket is still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Removing the task's listener drops the store's copies.
    second.stop(&task);
    assert!(store.client.list().expect("list").is_empty());
}
