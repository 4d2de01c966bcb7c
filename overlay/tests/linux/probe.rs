//! The doctor's probe device between two underlay hosts: echoes through it
//! come back, a lower MTU on the way shows as the largest size answered,
//! and teardown removes the namespace. The device is checked with `ip -d`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use weft_overlay::linux::probe::{self, Echo, EchoResult, ProbeSpec};
use weft_overlay::linux::{Netlink, Netns, Underlay, UnderlayHost};

use crate::common::{RunDir, ip_link};

/// Makes `host`'s probe device (index `i`) at `pin`, from inside the host.
fn setup_on(host: &UnderlayHost, pin: &Path, i: u32, peer: (u32, Ipv4Addr)) -> Netns {
    let spec = ProbeSpec {
        index: i,
        local: host.addr().into(),
        port: 4789,
        mtu: 1450,
        peers: vec![(peer.0, peer.1.into())],
    };
    host.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(probe::setup(pin, &spec))
    })
    .expect("enter the host")
    .expect("probe device")
}

fn answered(r: &EchoResult) -> bool {
    matches!(r, EchoResult::Answered(_))
}

#[tokio::test]
async fn echoes_cross_the_probe_device_and_a_small_port_caps_the_size() {
    assert!(
        crate::common::is_root(),
        "this kernel test needs root (network namespaces)"
    );
    let run = RunDir::new();
    let u = Underlay::create(
        run.path(),
        "prb",
        "198.18.52.0/24".parse().unwrap(),
        &["h1", "h2"],
    )
    .await
    .unwrap();
    let (h1, h2) = (u.host("h1").unwrap(), u.host("h2").unwrap());
    let (pin1, pin2) = (run.pin("probe-1"), run.pin("probe-2"));
    let ns1 = setup_on(h1, &pin1, 0, (1, h2.addr()));
    setup_on(h2, &pin2, 1, (0, h1.addr()));

    let link = ip_link(&pin1, probe::PROBE_LINK).expect("the probe device");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["id"], 4095, "{link}");
    assert_eq!(info["port"], 4789, "{link}");
    assert_eq!(info["local"], h1.addr().to_string(), "{link}");
    assert_eq!(link["mtu"], 1450, "{link}");

    let to = probe::probe_ip(1);
    let sizes = [84u16, 1450, 1350];
    let echoes: Vec<Echo> = sizes.iter().map(|&size| Echo { dst: to, size }).collect();
    let ping = |ns: Netns, echoes: Vec<Echo>| {
        std::thread::spawn(move || probe::ping(Some(&ns), &echoes, Duration::from_secs(3)))
            .join()
            .expect("ping thread")
            .expect("ping")
    };
    let r = ping(ns1.clone(), echoes.clone());
    assert!(r.iter().all(answered), "{r:?}");

    // h2's switch port drops frames over 1400 bytes: 1350-byte overlay
    // packets (1400 on the wire) pass, 1450 do not.
    let sw = Netlink::open(u.switch()).unwrap();
    let port = sw
        .list_links(Some("p1-"))
        .await
        .unwrap()
        .pop()
        .expect("h2's switch port")
        .name;
    sw.set_mtu(&port, 1400).await.unwrap();
    let r = ping(ns1, echoes);
    assert!(answered(&r[0]) && answered(&r[2]), "{r:?}");
    assert_eq!(r[1], EchoResult::TimedOut, "{r:?}");

    probe::teardown(&pin1).unwrap();
    assert!(!pin1.exists());
    probe::teardown(&pin1).expect("absent is fine");
}
