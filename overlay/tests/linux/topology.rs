//! `Underlay`: hosts on a bridge reach each other over `eth0` (a real TCP
//! exchange between two host namespaces); teardown and crash cleanup kill
//! what runs inside and remove every pin.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use weft_overlay::linux::{Netns, Underlay, UnderlayOptions, cleanup_run_dir, pids_in_netns};

use crate::common::{RunDir, has_flag, ip, ip_addrs, ip_link, require_root};

#[tokio::test]
async fn hosts_reach_each_other_over_the_bridge() {
    require_root!();
    let run = RunDir::new();
    let u = Underlay::create_with(
        run.path(),
        "u1",
        "198.18.20.0/24".parse().unwrap(),
        &["h1", "h2", "h3"],
        &UnderlayOptions { mtu: 1400 },
    )
    .await
    .unwrap();
    let h1 = u.host("h1").unwrap();
    let h2 = u.host("h2").unwrap();
    assert_eq!(h1.addr().to_string(), "198.18.20.1");
    assert_eq!(h2.addr().to_string(), "198.18.20.2");
    assert_eq!(u.hosts()[2].addr().to_string(), "198.18.20.3");

    // Independent view of the plumbing.
    let ports = ip(u.switch().path(), &["link", "show", "master", "br0"]);
    assert_eq!(ports.as_array().unwrap().len(), 3);
    for h in u.hosts() {
        let eth0 = ip_link(h.netns().path(), "eth0").expect("eth0");
        assert!(has_flag(&eth0, "UP"));
        assert_eq!(eth0["mtu"], 1400);
        assert!(has_flag(&ip_link(h.netns().path(), "lo").unwrap(), "UP"));
        assert!(ip_addrs(h.netns().path(), "eth0").contains(&format!("{}/24", h.addr())));
    }

    // A real TCP exchange h2 -> h1, sockets opened on setns'd threads.
    let listener: TcpListener = h1
        .run_in(|| TcpListener::bind((h1.addr(), 0)).unwrap())
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong").unwrap();
        (buf, peer)
    });
    let target = SocketAddr::from((h1.addr(), port));
    let reply = h2
        .run_in(|| {
            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(10)).unwrap();
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).unwrap();
            buf
        })
        .unwrap();
    let (got, peer) = server.join().unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(&reply, b"pong");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(h2.addr()));

    // Processes started through the host run inside its namespace.
    let out = h2
        .command("cat")
        .unwrap()
        .arg("/proc/net/fib_trie")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.20.2"));

    let pins: Vec<_> = u
        .hosts()
        .iter()
        .map(|h| h.netns().path().to_owned())
        .collect();
    let dir = u.dir().to_owned();
    let report = u.destroy();
    assert!(report.is_clean(), "{:?}", report.errors);
    for p in &pins {
        assert!(!Netns::exists(p));
        assert!(!p.exists());
    }
    assert!(!dir.exists());
}

#[tokio::test]
async fn create_is_idempotent_and_destroy_kills_processes() {
    require_root!();
    let run = RunDir::new();
    let subnet = "198.18.21.0/28".parse().unwrap();
    let u = Underlay::create(run.path(), "u2", subnet, &["a", "b"])
        .await
        .unwrap();
    // Same name again (e.g. after a crash): adopts the same namespaces.
    let again = Underlay::create(run.path(), "u2", subnet, &["a", "b"])
        .await
        .unwrap();
    assert!(
        again
            .host("a")
            .unwrap()
            .netns()
            .same_as(u.host("a").unwrap().netns())
    );
    std::mem::forget(again); // its teardown is `u`'s

    let mut child = u
        .host("a")
        .unwrap()
        .command("sleep")
        .unwrap()
        .arg("1000")
        .spawn()
        .unwrap();
    let ns = u.host("a").unwrap().netns().clone();
    // Wait for the exec to land in the namespace (a condition, not a sleep).
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pids_in_netns(&ns).contains(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "child never showed up in the netns"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(Netns::of_pid(pid as u32).unwrap().same_as(&ns));
    let report = u.destroy();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert!(report.killed.contains(&pid));
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_eq!(report.removed.len(), 3);
}

#[tokio::test]
async fn cleanup_run_dir_after_a_crash() {
    require_root!();
    let run = RunDir::new();
    let lab = run.path().join("lab");
    let u = Underlay::create(&lab, "u3", "198.18.22.0/24".parse().unwrap(), &["x", "y"])
        .await
        .unwrap();
    let mut child = u
        .host("y")
        .unwrap()
        .command("sleep")
        .unwrap()
        .arg("1000")
        .spawn()
        .unwrap();
    let pins: Vec<_> = u
        .hosts()
        .iter()
        .map(|h| h.netns().path().to_owned())
        .chain([u.switch().path().to_owned()])
        .collect();
    // "Crash": the Underlay is never torn down by its owner.
    std::mem::forget(u);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ns = Netns::open(&pins[1]).unwrap();
    while !pids_in_netns(&ns).contains(&(child.id() as i32)) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }

    let report = cleanup_run_dir(&lab);
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.removed.len(), 3, "{:?}", report.removed);
    assert!(report.killed.contains(&(child.id() as i32)));
    assert!(!child.wait().unwrap().success());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for p in &pins {
        assert!(!Netns::exists(p));
        assert!(!mountinfo.contains(p.to_str().unwrap()));
    }
    // Running it again finds nothing and is clean.
    let again = cleanup_run_dir(&lab);
    assert!(again.is_clean() && again.removed.is_empty());
}

#[tokio::test]
async fn rejects_addresses_outside_the_benchmark_range() {
    let run = RunDir::new();
    let r = Underlay::create(run.path(), "bad", "192.168.1.0/24".parse().unwrap(), &["a"]).await;
    assert!(r.is_err());
    assert!(!run.path().join("bad").exists());
}
