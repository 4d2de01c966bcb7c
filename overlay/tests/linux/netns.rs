//! `Netns`: create/open/delete/exists, `run_in`, `lo_up`.

use std::os::unix::fs::MetadataExt;

use weft_overlay::linux::{Error, Netns};

use crate::common::{RunDir, has_flag, ip_link, ip_link_names, require_root};

fn ns_inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn create_open_delete_are_idempotent() {
    require_root!();
    let run = RunDir::new();
    let pin = run.pin("a");
    assert!(!Netns::exists(&pin));

    let ns = Netns::create(&pin).unwrap();
    assert!(Netns::exists(&pin));
    // A new namespace: not the host's, and holding only a down loopback.
    assert_ne!(ns.inode(), ns_inode("/proc/self/ns/net"));
    assert_eq!(std::fs::metadata(&pin).unwrap().ino(), ns.inode());
    assert_eq!(ip_link_names(&pin), vec!["lo".to_owned()]);
    assert!(!has_flag(&ip_link(&pin, "lo").unwrap(), "UP"));

    // Creating again adopts the same namespace; open finds it too.
    let again = Netns::create(&pin).unwrap();
    assert!(again.same_as(&ns));
    assert!(Netns::open(&pin).unwrap().same_as(&ns));

    Netns::delete(&pin).unwrap();
    assert!(!Netns::exists(&pin));
    assert!(!pin.exists());
    Netns::delete(&pin).unwrap();

    // The handle still works (it keeps the namespace alive), and a new
    // create at the same path makes a different namespace.
    let fresh = Netns::create(&pin).unwrap();
    assert!(!fresh.same_as(&ns));
}

#[test]
fn open_rejects_non_namespaces() {
    require_root!();
    let run = RunDir::new();
    let plain = run.path().join("plain");
    std::fs::write(&plain, b"").unwrap();
    assert!(matches!(Netns::open(&plain), Err(Error::NotANetns { .. })));
    assert!(!Netns::exists(&plain));
    // delete on a plain leftover file just removes it.
    Netns::delete(&plain).unwrap();
    assert!(!plain.exists());
}

#[test]
fn run_in_moves_only_the_helper_thread() {
    require_root!();
    let run = RunDir::new();
    let ns = Netns::create(run.pin("r")).unwrap();
    let before = ns_inode("/proc/thread-self/ns/net");
    let inside = ns.run_in(|| ns_inode("/proc/thread-self/ns/net")).unwrap();
    assert_eq!(inside, ns.inode());
    assert_eq!(ns_inode("/proc/thread-self/ns/net"), before);
    // Borrowing from the caller's stack works (scoped thread).
    let v = String::from("borrowed");
    assert_eq!(ns.run_in(|| v.len()).unwrap(), 8);
}

#[test]
#[should_panic(expected = "boom")]
fn run_in_propagates_panics() {
    if !crate::common::is_root() {
        panic!("boom (skipped: needs root)");
    }
    let run = RunDir::new();
    let ns = Netns::create(run.pin("p")).unwrap();
    ns.run_in(|| panic!("boom")).unwrap();
}

#[test]
fn lo_up_brings_loopback_up() {
    require_root!();
    let run = RunDir::new();
    let pin = run.pin("lo");
    let ns = Netns::create(&pin).unwrap();
    ns.lo_up().unwrap();
    assert!(has_flag(&ip_link(&pin, "lo").unwrap(), "UP"));
    ns.lo_up().unwrap();
    // Loopback really works: a UDP round trip on 127.0.0.1 inside.
    let got = ns
        .run_in(|| {
            let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            b.send_to(b"hi", a.local_addr().unwrap()).unwrap();
            let mut buf = [0u8; 8];
            let (n, _) = a.recv_from(&mut buf).unwrap();
            buf[..n].to_vec()
        })
        .unwrap();
    assert_eq!(got, b"hi");
}
