//! The nemesis's faults: which managers each one hits (a pure choice from
//! the leader and the round), how it is injected and how it is healed.
//! Every injector undoes itself when dropped, also when the test fails:
//! a paused daemon is continued, drop rules are deleted, a filled disk
//! is unmounted with the lab's other disks.

use std::path::PathBuf;

use weft_manager::raft::wal_failpoint;

use crate::client::Shared;
use crate::common::{Lab, Paused, nsenter, wait_for};

/// The nftables table the partitions live in (never weft's own).
const NFT_TABLE: &str = "weft_nemesis";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    None,
    KillLeader,
    KillFollower,
    /// kill -9 of a majority (the leader among them), then restart.
    KillMajority,
    PauseLeader,
    /// The leader cut off from every other host.
    PartitionLeader,
    /// A minority with the leader in it cut off from the majority and the
    /// workers (with 3 managers the same as [`Fault::PartitionLeader`]).
    PartitionMinority,
    /// The leader and some followers cannot reach each other; the other
    /// followers reach both sides.
    PartitionBridge,
    /// The leader's Raft directory full, then freed.
    DiskFullOne,
    /// The Raft directories of the leader and a follower full, then freed.
    DiskFullTwo,
    /// The leader killed between a log write and its fsync, its log cut
    /// back to what was fsynced plus part of the write (even rounds) or
    /// zeros (odd rounds), then restarted.
    CrashMidAppend,
}

impl Fault {
    /// Every fault, in the order a schedule runs them; with 3 managers
    /// [`Fault::PartitionMinority`] is left out (it is the leader's).
    pub(crate) fn all(managers: usize) -> Vec<Fault> {
        [
            Fault::KillLeader,
            Fault::KillFollower,
            Fault::KillMajority,
            Fault::PauseLeader,
            Fault::PartitionLeader,
            Fault::PartitionMinority,
            Fault::PartitionBridge,
            Fault::DiskFullOne,
            Fault::DiskFullTwo,
            Fault::CrashMidAppend,
        ]
        .into_iter()
        .filter(|f| managers > 3 || *f != Fault::PartitionMinority)
        .collect()
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::KillLeader => "kill -9 leader",
            Fault::KillFollower => "kill -9 follower",
            Fault::KillMajority => "kill -9 majority",
            Fault::PauseLeader => "SIGSTOP leader",
            Fault::PartitionLeader => "partition leader",
            Fault::PartitionMinority => "partition minority",
            Fault::PartitionBridge => "partition bridge",
            Fault::DiskFullOne => "disk full, 1",
            Fault::DiskFullTwo => "disk full, 2",
            Fault::CrashMidAppend => "crash mid-append",
        }
    }
}

/// Which managers a fault hits, chosen from the leader and the round.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The managers hit: clients and the nemesis's probe go elsewhere.
    pub(crate) victims: Vec<&'static str>,
    /// For partitions: hosts that must not reach each other, as pairs of
    /// sides.
    pub(crate) cuts: Vec<(Vec<&'static str>, Vec<&'static str>)>,
    /// Whether the managers not hit are a majority (writes can go on
    /// under the fault).
    pub(crate) quorum_kept: bool,
}

/// What `fault` hits in a cluster of `managers` (in order), `workers`,
/// led by `leader`; the round rotates which followers are picked.
pub(crate) fn plan(
    fault: Fault,
    managers: &[&'static str],
    workers: &[&'static str],
    leader: &'static str,
    round: usize,
) -> Plan {
    let n = managers.len();
    let mut followers: Vec<&'static str> =
        managers.iter().copied().filter(|m| *m != leader).collect();
    let k = followers.len();
    followers.rotate_left(round % k);
    let with_leader = |more: &[&'static str]| [&[leader][..], more].concat();
    let rest = |of: &[&'static str], but: &[&'static str]| -> Vec<&'static str> {
        of.iter().copied().filter(|h| !but.contains(h)).collect()
    };
    let hosts: Vec<&'static str> = managers.iter().chain(workers).copied().collect();
    let (victims, cuts) = match fault {
        Fault::None => (vec![], vec![]),
        Fault::KillLeader | Fault::PauseLeader | Fault::DiskFullOne | Fault::CrashMidAppend => {
            (vec![leader], vec![])
        }
        Fault::KillFollower => (vec![followers[0]], vec![]),
        Fault::KillMajority => (with_leader(&followers[..n / 2]), vec![]),
        Fault::DiskFullTwo => (with_leader(&followers[..1]), vec![]),
        Fault::PartitionLeader => (vec![leader], vec![(vec![leader], rest(&hosts, &[leader]))]),
        Fault::PartitionMinority => {
            let minority = with_leader(&followers[..(n - 1) / 2 - 1]);
            let others = rest(&hosts, &minority);
            (minority.clone(), vec![(minority, others)])
        }
        Fault::PartitionBridge => {
            let far = followers[..(n - 1) / 2].to_vec();
            (with_leader(&far), vec![(vec![leader], far)])
        }
    };
    let quorum_kept = if fault == Fault::PartitionBridge {
        // The leader and the bridge hosts are a majority.
        true
    } else {
        n - victims.len() > n / 2
    };
    Plan {
        victims,
        cuts,
        quorum_kept,
    }
}

/// A host cut off from some other lab hosts: drop rules for their
/// underlay addresses, in and out, in a table of the test's own inside the
/// host's network namespace (nothing outside the lab is touched). Removed
/// when healed or dropped, also when the test fails.
pub(crate) struct Partition(Option<PathBuf>);

impl Partition {
    fn isolate(lab: &Lab, host: &str, others: &[&str]) -> Partition {
        let addrs: Vec<String> = others.iter().map(|o| lab.addr(o)).collect();
        let addrs = addrs.join(", ");
        let rules = format!(
            "table inet {NFT_TABLE} {{\n\
             chain input {{ type filter hook input priority -300; policy accept; ip saddr {{ {addrs} }} drop; }}\n\
             chain output {{ type filter hook output priority -300; policy accept; ip daddr {{ {addrs} }} drop; }}\n\
             }}\n"
        );
        let file = lab.dir().join(format!("partition-{host}.nft"));
        std::fs::write(&file, rules).expect("write rules");
        let pin = lab.host_netns(host);
        let out = nsenter(&pin, &["nft", "-f", &file.display().to_string()]);
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Partition(Some(pin))
    }

    fn heal(&mut self) {
        if let Some(pin) = self.0.take() {
            let out = nsenter(&pin, &["nft", "delete", "table", "inet", NFT_TABLE]);
            assert!(
                out.status.success() || std::thread::panicking(),
                "nft delete: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

/// A fault in place, and what undoes it.
pub(crate) enum Injected {
    Nothing,
    /// Restarted when healed.
    Killed(Vec<&'static str>),
    Paused(&'static str, Paused),
    Partitioned(Vec<&'static str>, Vec<Partition>),
    /// Their disks are freed when healed.
    DiskFull(Vec<&'static str>),
}

/// Injects `plan` (of `fault`): returns the fault in place and when it
/// began (for a crash mid-append, the kill: the wait for the writer to
/// stop is not part of it).
pub(crate) fn inject(
    lab: &mut Lab,
    shared: &Shared,
    fault: Fault,
    plan: &Plan,
    round: usize,
) -> (Injected, u64) {
    let at = shared.now();
    let injected = match fault {
        Fault::None => Injected::Nothing,
        Fault::KillLeader | Fault::KillFollower | Fault::KillMajority => {
            for &m in &plan.victims {
                shared.down.lock().expect("down").insert(m);
                lab.kill9(m);
                shared.event(m, "killed");
            }
            Injected::Killed(plan.victims.clone())
        }
        Fault::CrashMidAppend => {
            let at = crash_mid_append(lab, shared, plan.victims[0], round);
            return (Injected::Killed(plan.victims.clone()), at);
        }
        Fault::PauseLeader => {
            let m = plan.victims[0];
            let paused = Paused::stop(lab.pid(m).expect("leader runs"));
            shared.event(m, "paused");
            Injected::Paused(m, paused)
        }
        Fault::PartitionLeader | Fault::PartitionMinority | Fault::PartitionBridge => {
            let mut rules = Vec::new();
            for (side, other) in &plan.cuts {
                for host in side {
                    rules.push(Partition::isolate(lab, host, other));
                }
                for host in other {
                    rules.push(Partition::isolate(lab, host, side));
                }
            }
            for &m in &plan.victims {
                shared.event(m, "cut off");
            }
            Injected::Partitioned(plan.victims.clone(), rules)
        }
        Fault::DiskFullOne | Fault::DiskFullTwo => {
            for &m in &plan.victims {
                shared.disks[m].fill();
                shared.event(m, "disk filled");
            }
            Injected::DiskFull(plan.victims.clone())
        }
    };
    (injected, at)
}

/// Arms the log writer's failpoint on `leader` (see
/// `weft_manager::raft::wal_failpoint`), waits until a write is held
/// before its fsync, kills the daemon there and cuts its log file back to
/// what was fsynced plus half of the held write (even rounds) or zeros in
/// place of the held write (odd rounds): what a power cut can leave of
/// bytes that were only in the page cache. Returns when it was killed.
fn crash_mid_append(lab: &mut Lab, shared: &Shared, leader: &'static str, round: usize) -> u64 {
    let raft = lab.data_dir(leader).join("raft");
    let (arm, held) = (
        raft.join(wal_failpoint::ARM_FILE),
        raft.join(wal_failpoint::HELD_FILE),
    );
    std::fs::write(&arm, b"").expect("arm the failpoint");
    shared.event(leader, "failpoint armed");
    wait_for(
        "the leader's log writer held before an fsync",
        std::time::Duration::from_secs(30),
        || held.exists(),
    );
    shared.down.lock().expect("down").insert(leader);
    lab.kill9(leader);
    let at = shared.now();
    shared.event(leader, "killed between write and fsync");
    let sizes = std::fs::read_to_string(&held).expect("held sizes");
    let [fsynced, written]: [u64; 2] = sizes
        .split_whitespace()
        .map(|n| n.parse().expect("a size"))
        .collect::<Vec<_>>()
        .try_into()
        .expect("two sizes");
    std::fs::remove_file(&arm).expect("disarm");
    std::fs::remove_file(&held).expect("held file");
    let wal = raft.join(weft_manager::raft::WAL_FILE);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open log");
    let kept = if round.is_multiple_of(2) {
        file.set_len(fsynced + (written - fsynced) / 2)
            .expect("cut the log");
        "half the unsynced write"
    } else {
        file.set_len(fsynced).expect("cut the log");
        file.set_len(written).expect("zero tail");
        "zeros in place of the unsynced write"
    };
    eprintln!(
        "crash mid-append on {leader}: log fsynced to {fsynced} bytes, {} more written; \
         kept {kept}",
        written - fsynced
    );
    at
}

/// Undoes `injected`; returns the managers it hit.
pub(crate) fn heal(lab: &mut Lab, shared: &Shared, injected: Injected) -> Vec<&'static str> {
    match injected {
        Injected::Nothing => vec![],
        Injected::Killed(victims) => {
            for &m in &victims {
                lab.start(m);
                shared.event(m, "restarted (socket answering)");
                shared.down.lock().expect("down").remove(m);
            }
            victims
        }
        Injected::Paused(m, mut p) => {
            p.resume();
            shared.event(m, "resumed");
            vec![m]
        }
        Injected::Partitioned(victims, rules) => {
            drop(rules);
            for &m in &victims {
                shared.event(m, "reconnected");
            }
            victims
        }
        Injected::DiskFull(victims) => {
            for &m in &victims {
                shared.disks[m].free();
                shared.event(m, "disk freed");
            }
            victims
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M3: [&str; 3] = ["m1", "m2", "m3"];
    const M5: [&str; 5] = ["m1", "m2", "m3", "m4", "m5"];
    const W: [&str; 2] = ["w1", "w2"];

    #[test]
    fn a_majority_is_killed_and_disks_fill_on_the_leader_first() {
        let p = plan(Fault::KillMajority, &M3, &W, "m2", 0);
        assert_eq!((p.victims, p.quorum_kept), (vec!["m2", "m1"], false));
        let p = plan(Fault::KillMajority, &M5, &W, "m1", 1);
        assert_eq!((p.victims, p.quorum_kept), (vec!["m1", "m3", "m4"], false));
        let p = plan(Fault::DiskFullTwo, &M3, &W, "m3", 1);
        assert_eq!((p.victims, p.quorum_kept), (vec!["m3", "m2"], false));
        let p = plan(Fault::DiskFullTwo, &M5, &W, "m3", 0);
        assert_eq!((p.victims, p.quorum_kept), (vec!["m3", "m1"], true));
    }

    #[test]
    fn partitions_cut_the_sides_they_name() {
        let p = plan(Fault::PartitionMinority, &M5, &W, "m4", 0);
        assert_eq!(p.victims, ["m4", "m1"]);
        assert_eq!(
            p.cuts,
            [(vec!["m4", "m1"], vec!["m2", "m3", "m5", "w1", "w2"])]
        );
        assert!(p.quorum_kept);
        let p = plan(Fault::PartitionBridge, &M3, &W, "m1", 0);
        assert_eq!(p.cuts, [(vec!["m1"], vec!["m2"])], "m3 is the bridge");
        let p = plan(Fault::PartitionBridge, &M5, &W, "m1", 0);
        assert_eq!(p.cuts, [(vec!["m1"], vec!["m2", "m3"])]);
        assert!(p.quorum_kept);
        let p = plan(Fault::PartitionLeader, &M3, &W, "m2", 0);
        assert_eq!(p.cuts, [(vec!["m2"], vec!["m1", "m3", "w1", "w2"])]);
    }
}
