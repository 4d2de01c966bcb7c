//! Durability under faults, end to end: what a crash or a failing disk
//! leaves in a manager's Raft log file, and what a real daemon does with it
//! when it starts again.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::disk::SmallDisk;
use common::{Lab, wait_for};

fn wal(lab: &Lab, host: &str) -> PathBuf {
    lab.data_dir(host).join("raft").join("raft-log.wal")
}

/// `weft doctor raft` on `host`'s data directory: whether it exited 0,
/// and what it printed.
fn doctor(lab: &Lab, host: &str) -> (bool, String) {
    let out = std::process::Command::new(common::WEFT)
        .args(["doctor", "raft", "--data-dir"])
        .arg(lab.data_dir(host))
        .output()
        .expect("run weft doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A one-manager cluster holding a few networks (several log records).
fn manager_with_state(test: &str) -> Lab {
    let mut lab = Lab::new(test, &["m1"]);
    lab.start_all();
    lab.init("m1", &[]);
    for net in ["keep1", "keep2", "keep3"] {
        lab.weft("m1", &["network", "create", "--driver", "overlay", net]);
    }
    lab
}

#[test]
fn a_zero_filled_log_tail_is_cut_and_the_manager_comes_back() {
    let mut lab = manager_with_state("zerotail");
    lab.kill9("m1");
    // What ext4 or XFS can leave after a power loss: the file grew, the
    // data never made it.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(wal(&lab, "m1"))
        .expect("open log");
    f.write_all(&[0u8; 4096]).expect("zeros");
    drop(f);
    // The offline check says what the start will do, and changes nothing.
    let (ok, out) = doctor(&lab, "m1");
    assert!(ok && out.contains("torn write of 4096 bytes"), "{out}");
    lab.start("m1");
    wait_for("the manager back", Duration::from_secs(20), || {
        lab.try_weft("m1", &["network", "ls"]).status.success()
    });
    let nets = lab.weft("m1", &["network", "ls"]);
    for net in ["keep1", "keep2", "keep3"] {
        assert!(nets.contains(net), "{net} lost: {nets}");
    }
    assert!(
        lab.log_tail("m1").contains("torn write"),
        "the cut is logged: {}",
        lab.log_tail("m1")
    );
    lab.weft("m1", &["network", "create", "--driver", "overlay", "after"]);
}

#[test]
fn damage_before_the_last_record_is_refused_naming_the_file_and_offset() {
    let mut lab = manager_with_state("damage");
    lab.kill9("m1");
    let path = wal(&lab, "m1");
    let mut bytes = std::fs::read(&path).expect("read log");
    // A third of the way in: acknowledged records follow.
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    std::fs::write(&path, &bytes).expect("write log");
    let (ok, out) = doctor(&lab, "m1");
    assert!(!ok && out.contains("is damaged at byte"), "{out}");
    let (status, log) = lab.start_expecting_exit("m1");
    assert!(
        !status.success(),
        "the daemon must not run on a damaged log"
    );
    assert!(
        log.contains("raft-log.wal") && log.contains("is damaged at byte"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read log"),
        bytes,
        "a refused log is left as it was, for inspection"
    );
}

/// Every file under `dir` with its contents, for "changed nothing".
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("read file"));
            }
        }
    }
    out
}

#[test]
fn an_older_weft_refuses_a_data_directory_a_newer_one_wrote() {
    let mut lab = manager_with_state("newerfmt");
    let stamp = lab.data_dir("m1").join("format.json");
    let ours: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stamp).expect("the daemon stamps its data dir"))
            .expect("json");
    assert_eq!(ours["written_by"], env!("CARGO_PKG_VERSION"), "{ours}");
    lab.sigterm("m1");
    // What a later release with a new data format leaves behind, and this
    // (older) binary put back on it.
    let newer = format!(
        r#"{{"format":{},"written_by":"99.0.0"}}"#,
        ours["format"].as_u64().expect("format") + 1
    );
    std::fs::write(&stamp, &newer).expect("write stamp");
    let before = tree(&lab.data_dir("m1"));
    let (status, log) = lab.start_expecting_exit("m1");
    assert!(!status.success(), "the daemon ran on a newer data format");
    assert!(
        log.contains("was written by weft 99.0.0") && log.contains("Run weft 99.0.0 or newer"),
        "{log}"
    );
    assert_eq!(
        tree(&lab.data_dir("m1")),
        before,
        "the refused data dir was changed"
    );
    // The directory's own format again: the manager is back with its state.
    std::fs::write(&stamp, serde_json::to_vec(&ours).expect("json")).expect("write stamp");
    lab.start("m1");
    let nets = lab.weft("m1", &["network", "ls"]);
    assert!(nets.contains("keep3"), "{nets}");
}

#[test]
fn a_full_disk_stops_the_manager_loudly_and_it_heals_when_space_is_freed() {
    let mut lab = Lab::new("fulldisk", &["m1"]);
    let disk = SmallDisk::mount(lab.data_dir("m1").join("raft"), "24m");
    lab.start_all();
    lab.init("m1", &[]);
    let label = |i: usize| format!("k{i}=v{i}");
    for i in 0..5 {
        lab.weft("m1", &["node", "update", "--label-add", &label(i), "m1"]);
    }
    let filler = disk.fill();
    // Writes need the disk now: one of them fails, Raft stops, and the
    // daemon says why instead of running on as if healthy.
    wait_for(
        "a write refused on the full disk",
        Duration::from_secs(30),
        || {
            !lab.try_weft("m1", &["node", "update", "--label-add", "full=1", "m1"])
                .status
                .success()
        },
    );
    wait_for("weft info names the stop", Duration::from_secs(30), || {
        let out = lab.try_weft("m1", &["info"]);
        String::from_utf8_lossy(&out.stdout).contains("manager stopped")
            || String::from_utf8_lossy(&out.stderr).contains("manager stopped")
    });
    // Space comes back: the manager restarts from what is on disk by itself.
    std::fs::remove_file(&filler).expect("free space");
    wait_for("writes succeed again", Duration::from_secs(60), || {
        lab.try_weft("m1", &["node", "update", "--label-add", "healed=1", "m1"])
            .status
            .success()
    });
    let node: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["node", "inspect", "m1"])).expect("json");
    for i in 0..5 {
        assert_eq!(
            node[0]["Labels"][format!("k{i}")],
            format!("v{i}"),
            "acknowledged write {i} kept: {node}"
        );
    }
    assert_eq!(node[0]["Labels"]["healed"], "1");
    assert!(!lab.weft("m1", &["info"]).contains("manager stopped"));
    eprintln!("{}", lab.log_tail("m1"));
    // `disk` drops before `lab` (reverse order of declaration): unmounted
    // before the lab's directory is removed, on success and on failure.
}

/// A live follower's log writer stopped between a write and its fsync (the
/// test-only failpoint), the daemon killed there, and the unsynced bytes
/// half lost, as the page cache would be in a power cut: the follower cuts
/// the torn tail, rejoins, and holds every write the cluster acknowledged,
/// those made while it was stuck included.
#[test]
fn a_follower_killed_between_write_and_fsync_rejoins_with_every_acknowledged_write() {
    use weft_manager::raft::{WAL_FILE, wal_failpoint};
    let mut lab = Lab::new("midappend", &["m1", "m2", "m3"]);
    lab.set_daemon_env(wal_failpoint::ENV, "1");
    lab.start_all();
    let (_, mt) = lab.init("m1", &[]);
    lab.join("m2", &mt, "m1");
    lab.join("m3", &mt, "m2");
    common::wait_voters(&lab, "m1", &["m1", "m2", "m3"]);
    let leader = lab
        .node_ls("m1")
        .into_iter()
        .find(|r| r.manager == "Leader")
        .expect("a leader")
        .hostname;
    let follower = ["m1", "m2", "m3"]
        .into_iter()
        .find(|m| *m != leader)
        .expect("a follower");
    let label = |i: usize| format!("k{i}=v{i}");
    for i in 0..3 {
        lab.weft(&leader, &["node", "update", "--label-add", &label(i), "m1"]);
    }
    let raft = lab.data_dir(follower).join("raft");
    std::fs::write(raft.join(wal_failpoint::ARM_FILE), b"").expect("arm");
    // The next write reaches the follower's log and holds its writer; the
    // leader and the other follower acknowledge it and the ones after.
    for i in 3..8 {
        lab.weft(&leader, &["node", "update", "--label-add", &label(i), "m1"]);
    }
    let held = raft.join(wal_failpoint::HELD_FILE);
    wait_for(
        "the follower held before an fsync",
        Duration::from_secs(20),
        || held.exists(),
    );
    lab.kill9(follower);
    let sizes = std::fs::read_to_string(&held).expect("sizes");
    let sizes: Vec<u64> = sizes
        .split_whitespace()
        .map(|n| n.parse().expect("size"))
        .collect();
    let (fsynced, written) = (sizes[0], sizes[1]);
    assert!(written > fsynced, "a write was held: {sizes:?}");
    std::fs::remove_file(raft.join(wal_failpoint::ARM_FILE)).expect("disarm");
    std::fs::remove_file(&held).expect("held");
    let wal = raft.join(WAL_FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("log")
        .set_len(fsynced + (written - fsynced) / 2)
        .expect("lose half the unsynced write");
    let (ok, out) = doctor(&lab, follower);
    assert!(ok && out.contains("torn write"), "{out}");
    lab.start(follower);
    wait_for(
        "the follower back with every acknowledged write",
        Duration::from_secs(30),
        || {
            let out = lab.try_weft(follower, &["node", "inspect", "m1"]);
            out.status.success() && {
                let node: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                (0..8).all(|i| node[0]["Labels"][format!("k{i}")] == format!("v{i}"))
            }
        },
    );
    assert!(
        lab.log_tail(follower).contains("torn write"),
        "the cut is logged: {}",
        lab.log_tail(follower)
    );
    // It takes part again: a write through it is acknowledged and every
    // manager is reachable from it.
    lab.weft(
        follower,
        &["node", "update", "--label-add", "after=1", "m1"],
    );
    wait_for("three managers reachable", Duration::from_secs(30), || {
        lab.node_ls(follower)
            .iter()
            .filter(|r| r.manager == "Leader" || r.manager == "Reachable")
            .count()
            == 3
    });
}

/// A node limit in the environment that is none
/// (`WEFT_UNSUPPORTED_MAX_NODES`, which `bench/nodes.sh` sets past 5,000
/// nodes) stops the daemon before it changes anything, naming the
/// variable; a valid one lets it run, with a warning in its log.
#[test]
fn a_bad_node_limit_in_the_environment_stops_the_daemon_and_changes_nothing() {
    let mut lab = manager_with_state("nodelimit");
    lab.sigterm("m1");
    let before = tree(&lab.data_dir("m1"));
    lab.set_daemon_env("WEFT_UNSUPPORTED_MAX_NODES", "lots");
    let (status, log) = lab.start_expecting_exit("m1");
    assert!(!status.success(), "the daemon ran with a bad node limit");
    assert!(
        log.contains("WEFT_UNSUPPORTED_MAX_NODES=\"lots\"") && log.contains("from 5000 to 20000"),
        "{log}"
    );
    assert_eq!(
        tree(&lab.data_dir("m1")),
        before,
        "the refused start changed the data directory"
    );
    // The last value set wins.
    lab.set_daemon_env("WEFT_UNSUPPORTED_MAX_NODES", "7504");
    lab.start("m1");
    let log = std::fs::read_to_string(lab.host_dir("m1").join("daemon.log")).expect("log");
    assert!(
        log.contains("the node limit is 7504, not 5000"),
        "no warning in the log"
    );
    wait_for("m1 Ready again", Duration::from_secs(15), || {
        lab.node_ready("m1", "m1")
    });
}
