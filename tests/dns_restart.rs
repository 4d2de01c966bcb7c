//! The embedded resolver across a daemon restart (issue #13): a task keeps
//! resolving another task's name while its node's daemon is killed with
//! SIGKILL and started again. The resolver's sockets live on in the node's
//! fd store (`weft fd-store`), so queries sent while no daemon runs wait in
//! the socket and are answered by the next daemon: no lookup fails.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::lookups::{LOOKUP_TIMEOUT_S, Lookup, asker, fd_stores, now_ms, read_log};
use common::{Lab, wait_for};

/// The heartbeat period is short on purpose: the daemon stays down longer
/// than three periods, so the manager marks the node down while it
/// restarts, and the config it pushes on reconnecting (before the node is
/// ready again) must still hold the node's own names. That was the race
/// behind a lookup that failed once under load (a longer restart than
/// three 500 ms periods): the node's own tasks were left out of its
/// config, and the resolver answered "no such name" until the next one.
#[test]
fn dns_answers_every_lookup_across_a_killed_daemon() {
    let mut lab = Lab::new("dnsrestart", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "200ms"]);
    lab.join("w1", &wt, "m1");
    lab.attachable_network("m1", "10.0.9.0/24", "appnet");
    let net = ["--network", "appnet"];
    let target = [
        "--name",
        "target",
        "--ip",
        "10.0.9.20",
        "--",
        "sleep",
        "600",
    ];
    lab.run_task("w1", &[&net[..], &target[..]].concat());
    let asker = lab.run_task(
        "w1",
        &[
            &net[..],
            &[
                "--name",
                "asker",
                "--",
                "sh",
                "-c",
                &asker("target", "10.0.9.20"),
            ][..],
        ]
        .concat(),
    );
    let log: PathBuf = lab
        .host_dir("w1")
        .join("run/tasks")
        .join(&asker)
        .join("log");
    wait_for("three answered lookups", Duration::from_secs(30), || {
        read_log(&log).1.iter().filter(|l| l.ok).count() >= 3
    });
    let run_dir = lab.host_dir("w1").join("run");
    let stores = fd_stores(&run_dir);

    let killed = now_ms();
    lab.kill9("w1");
    // Down for a while, measured in lookups: until one sent with no
    // daemon has waited a second for its answer, or three were sent (each
    // failing at once, as before the fd store).
    wait_for(
        "lookups sent while w1 has no daemon",
        Duration::from_secs(10),
        || {
            let (tries, _) = read_log(&log);
            let during: Vec<u64> = tries.into_iter().filter(|&s| s > killed).collect();
            during.len() >= 3 || during.first().is_some_and(|&s| now_ms() > s + 1000)
        },
    );
    let stores_while_down = fd_stores(&run_dir);
    let restarting = now_ms();
    lab.start("w1");
    let up = now_ms();
    wait_for(
        "five answered lookups after the restart",
        Duration::from_secs(60),
        || {
            let (_, done) = read_log(&log);
            done.iter().filter(|l| l.ok && l.start > up).count() >= 5
        },
    );
    let (_, done) = read_log(&log);
    // Every lookup that overlapped the outage, and a second either side.
    let window: Vec<&Lookup> = done
        .iter()
        .filter(|l| l.end + 1000 >= killed && l.start <= up + 1000)
        .collect();
    let failed: Vec<&&Lookup> = window.iter().filter(|l| !l.ok).collect();
    // The longest time the task went without an answer: between the ends
    // of consecutive answered lookups around the outage.
    let answered: Vec<u64> = done
        .iter()
        .filter(|l| l.ok && l.end + 5000 >= killed && l.start <= up + 5000)
        .map(|l| l.end)
        .collect();
    let longest_gap = answered.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let slowest = window.iter().map(|l| l.end - l.start).max().unwrap_or(0);
    println!(
        "DNS across a daemon restart: {} lookups tried, {} failed; daemon down {} ms \
         (kill to restart), restart to ready {} ms; longest gap between answers {} ms; \
         slowest lookup {} ms",
        window.len(),
        failed.len(),
        restarting - killed,
        up - restarting,
        longest_gap,
        slowest
    );
    // A lookup can only fail when its client gave up before the next
    // daemon was ready: the outage (kill to ready) was longer than the
    // lookup's timeout. Said apart, so a loaded machine is not taken for a
    // lost query.
    let outage = up - killed;
    assert!(
        failed.is_empty(),
        "{} of {} lookups failed across the restart: {failed:?} (w1 was down {outage} ms, \
         kill to ready; a lookup waits {LOOKUP_TIMEOUT_S} s{})",
        failed.len(),
        window.len(),
        if outage >= LOOKUP_TIMEOUT_S * 1000 {
            ": the outage outlasted it, the machine is too loaded for this test"
        } else {
            ""
        }
    );
    assert_eq!(stores.len(), 1, "one fd store runs for w1: {stores:?}");
    assert_eq!(
        stores_while_down, stores,
        "the fd store outlives the daemon"
    );
    assert_eq!(
        fd_stores(&run_dir),
        stores,
        "the new daemon uses the same fd store"
    );

    // Leaving stops the store and removes its socket.
    lab.weft("w1", &["leave", "--force"]);
    wait_for(
        "the fd store stops after leave",
        Duration::from_secs(10),
        || fd_stores(&run_dir).is_empty(),
    );
    assert!(!run_dir.join("fd-store.sock").exists());
}

#[test]
fn the_lab_cleanup_stops_the_fd_store() {
    let mut lab = Lab::new("dnsstore", &["m1"]);
    lab.start_all();
    lab.init("m1", &[]);
    lab.attachable_network("m1", "10.0.8.0/24", "storenet");
    let t = lab.run_task("m1", &["--network", "storenet", "--", "sleep", "600"]);
    let run_dir = lab.host_dir("m1").join("run");
    wait_for(
        "the fd store keeps the task's sockets",
        Duration::from_secs(30),
        || fd_stores(&run_dir).len() == 1,
    );
    assert!(!t.is_empty());
    lab.kill9("m1");
    let pids = fd_stores(&run_dir);
    assert_eq!(pids.len(), 1, "the store outlives its daemon");
    drop(lab);
    // Killed by the harness's cleanup (it lives in the host's namespace).
    wait_for("the fd store is gone", Duration::from_secs(10), || {
        fd_stores(&run_dir).is_empty()
    });
}
