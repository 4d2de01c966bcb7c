//! What crosses the lab's underlay, counted on its switch with nftables:
//! VXLAN (UDP 4789) and WireGuard (UDP 51820) packets.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Lab, nsenter};

/// Packets counted on the underlay switch by the rule with `comment`.
pub fn counter(pin: &Path, table: &str, comment: &str) -> u64 {
    let out = nsenter(pin, &["nft", "-j", "list", "table", "bridge", table]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["rule"]["comment"] == comment)
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

/// Puts the counters (table `bridge weftcount`) on the lab's switch.
pub fn count_underlay(lab: &Lab) {
    switch_nft(
        lab,
        "table bridge weftcount { chain c1 { type filter hook forward priority 0; \
         udp dport 4789 counter comment \"vxlan\"; udp dport 51820 counter comment \"wg\"; }; }",
    );
}

/// Runs the nftables `script` on the lab's switch.
pub fn switch_nft(lab: &Lab, script: &str) {
    let mut c = Command::new("nsenter")
        .arg(format!("--net={}", lab.switch_netns().display()))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "nft {script}");
}

/// Zeroes the counters of [`count_underlay`] by making its table again
/// (`nft reset counters` zeroes only named counters, not these inline
/// ones: it silently left them counting).
pub fn reset_counters(lab: &Lab) {
    let out = nsenter(
        &lab.switch_netns(),
        &["nft", "delete", "table", "bridge", "weftcount"],
    );
    assert!(out.status.success(), "nft delete table: {out:?}");
    count_underlay(lab);
    assert_eq!(counter(&lab.switch_netns(), "weftcount", "vxlan"), 0);
}
