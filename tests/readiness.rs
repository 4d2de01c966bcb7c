//! The daemon as systemd runs it (`Type=notify`): READY=1 once it serves its
//! socket and has applied the config it saved before it stopped, and its log
//! as JSON lines with `--log-format json`. Real daemons in namespace hosts;
//! every `Lab::start` waits for READY=1 on the daemon's NOTIFY_SOCKET.

mod common;

use common::{Lab, addr_of_in, nsenter_stdout, sleeper};

/// A task's interface removed while its node's daemon is stopped is back
/// when the restarted daemon says READY=1: readiness waits for the pass
/// over the saved config, not for a manager.
#[test]
fn ready_is_said_once_the_saved_config_is_applied_and_logs_are_json() {
    let json = ["--log-format", "json"];
    let mut lab = Lab::new("ready", &["m1"]);
    let said = lab.start_with("m1", &json);
    assert!(
        said.contains("STATUS=serving; not a cluster member"),
        "{said:?}"
    );
    lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.attachable_network("m1", "10.0.31.0/24", "readynet");
    let pin = sleeper(&lab, "m1", "sleepy", "readynet");
    let addr = addr_of_in(&nsenter_stdout(
        &pin,
        &["ip", "-o", "-4", "addr", "show", "eth0"],
    ))
    .expect("the task has an address on eth0");

    lab.sigterm("m1");
    let gone = common::nsenter(&pin, &["ip", "link", "del", "eth0"]);
    assert!(gone.status.success(), "{gone:?}");
    let said = lab.start_with("m1", &json);
    // No wait: the interface must be there when READY=1 is said.
    let now = nsenter_stdout(&pin, &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert_eq!(
        addr_of_in(&now).as_deref(),
        Some(addr.as_str()),
        "at READY=1 ({said:?}) the task's interface is not back: {now:?}"
    );
    assert!(
        said.contains("STATUS=serving; saved config applied"),
        "{said:?}"
    );

    // Every line the daemon wrote, over both runs, is one JSON object with
    // a timestamp, a level and a message; the restart's first pass and its
    // readiness are among them, in that order.
    let log = std::fs::read_to_string(lab.host_dir("m1").join("daemon.log")).expect("log");
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        for key in ["timestamp", "level", "message"] {
            assert!(v.get(key).is_some(), "no {key:?} in {line:?}");
        }
        messages.push(v["message"].as_str().unwrap_or_default().to_string());
    }
    let restart = messages
        .iter()
        .rposition(|m| m == "shutting down")
        .expect("the stop is logged");
    let after = &messages[restart..];
    let pass = after
        .iter()
        .position(|m| m == "first data plane pass done")
        .expect("the restart's first pass is logged");
    let ready = after
        .iter()
        .position(|m| m == "weft daemon ready")
        .expect("readiness is logged");
    assert!(pass < ready, "{after:?}");
}
