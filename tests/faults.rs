//! Durability under faults, end to end: what a crash or a failing disk
//! leaves in a manager's Raft log file, and what a real daemon does with it
//! when it starts again.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::{Lab, wait_for};

fn wal(lab: &Lab, host: &str) -> PathBuf {
    lab.data_dir(host).join("raft").join("raft-log.wal")
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
