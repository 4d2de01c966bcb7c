//! Reading `/proc`: processes with their namespaces and command lines, and
//! this process's mount table. The choice of which processes belong to a
//! lab ([`select_lab_processes`]) is a pure function over that snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A namespace's identity: the (device, inode) of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NsId {
    /// Device of the nsfs file.
    pub dev: u64,
    /// Inode of the nsfs file.
    pub ino: u64,
}

/// The namespace at `path` (`/proc/<pid>/ns/<kind>` or a pin).
pub fn ns_id(path: &Path) -> Option<NsId> {
    std::fs::metadata(path).ok().map(|m| NsId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// One process as seen in `/proc`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proc {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Exited but not yet reaped (holds no namespaces any more).
    pub zombie: bool,
    /// `/proc/<pid>/cmdline` (arguments separated by NUL).
    pub cmdline: Vec<u8>,
    /// Its network namespace.
    pub net: Option<NsId>,
    /// Its mount namespace.
    pub mnt: Option<NsId>,
    /// Its UTS namespace.
    pub uts: Option<NsId>,
}

/// Reads one process; `None` if it is gone.
pub fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let ns = |kind: &str| ns_id(Path::new(&format!("/proc/{pid}/ns/{kind}")));
    Some(Proc {
        pid,
        ppid,
        zombie: state == "Z" || state == "X",
        cmdline: std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        net: ns("net"),
        mnt: ns("mnt"),
        uts: ns("uts"),
    })
}

/// Every process on the machine.
pub fn scan() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_proc)
        .collect()
}

/// True if `pid` exists and has not exited.
pub fn alive(pid: i32) -> bool {
    read_proc(pid).is_some_and(|p| !p.zombie)
}

/// True if `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// This process and its ancestors: never killed by a teardown, even when
/// a shell's command line happens to name the lab directory.
pub fn self_and_ancestors(procs: &[Proc]) -> BTreeSet<i32> {
    let parent: BTreeMap<i32, i32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
    let mut out = BTreeSet::new();
    let mut pid = std::process::id() as i32;
    while pid > 0 && out.insert(pid) {
        pid = parent.get(&pid).copied().unwrap_or(0);
    }
    out
}

/// What identifies a lab's processes.
#[derive(Debug, Default)]
pub struct LabMarks<'a> {
    /// Bytes on the command line of every process the lab started
    /// (`<lab dir>/`).
    pub cmdline: &'a [u8],
    /// The lab's pinned network namespaces.
    pub netns: BTreeSet<NsId>,
    /// (mount, UTS) namespace pairs of the lab's daemons as recorded by
    /// `up`: both must match, so a recycled inode number alone never does.
    pub daemon_ns: BTreeSet<(NsId, NsId)>,
    /// Mount namespaces that are never the lab's (the host's): sharing one
    /// of these proves nothing.
    pub foreign_mnt: BTreeSet<NsId>,
    /// Processes never selected (the caller and its ancestors).
    pub protected: BTreeSet<i32>,
}

/// The live processes that belong to a lab: those naming the lab directory
/// on their command line, living in one of its network namespaces or in a
/// recorded daemon's namespaces; then everything sharing a (non-host) mount
/// namespace with one of those, and all their descendants.
pub fn select_lab_processes(procs: &[Proc], marks: &LabMarks<'_>) -> BTreeSet<i32> {
    let live: Vec<&Proc> = procs.iter().filter(|p| !p.zombie).collect();
    let mut chosen: BTreeSet<i32> = live
        .iter()
        .filter(|p| {
            contains(&p.cmdline, marks.cmdline)
                || p.net.is_some_and(|n| marks.netns.contains(&n))
                || matches!((p.mnt, p.uts), (Some(m), Some(u)) if marks.daemon_ns.contains(&(m, u)))
        })
        .map(|p| p.pid)
        .collect();
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in &live {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    loop {
        let before = chosen.len();
        let mnts: BTreeSet<NsId> = live
            .iter()
            .filter(|p| chosen.contains(&p.pid))
            .filter_map(|p| p.mnt)
            .filter(|m| !marks.foreign_mnt.contains(m))
            .collect();
        chosen.extend(
            live.iter()
                .filter(|p| p.mnt.is_some_and(|m| mnts.contains(&m)))
                .map(|p| p.pid),
        );
        let mut stack: Vec<i32> = chosen.iter().copied().collect();
        while let Some(pid) = stack.pop() {
            for &c in children.get(&pid).into_iter().flatten() {
                if chosen.insert(c) {
                    stack.push(c);
                }
            }
        }
        if chosen.len() == before {
            break;
        }
    }
    chosen.retain(|p| !marks.protected.contains(p));
    chosen
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Its filesystem type (`nsfs` for a namespace pin).
    pub fstype: String,
}

/// This process's mounts at or below `dir`, deepest first (the order to
/// unmount them in).
pub fn mounts_under(dir: &Path) -> std::io::Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut out: Vec<Mount> = text
        .lines()
        .filter_map(parse_mountinfo_line)
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    Ok(out)
}

/// Parses one mountinfo line: field 5 is the mount point, the first field
/// after ` - ` the filesystem type.
pub fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let fstype = right.split(' ').next()?;
    Some(Mount {
        mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
        fstype: fstype.to_owned(),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(ino: u64) -> Option<NsId> {
        Some(NsId { dev: 4, ino })
    }

    fn p(pid: i32, ppid: i32, cmd: &str, net: u64, mnt: u64) -> Proc {
        Proc {
            pid,
            ppid,
            zombie: false,
            cmdline: cmd.as_bytes().to_vec(),
            net: ns(net),
            mnt: ns(mnt),
            uts: ns(1),
        }
    }

    #[test]
    fn selects_lab_processes_only() {
        let host_net = 100;
        let host_mnt = 200;
        let procs = vec![
            p(1, 0, "init", host_net, host_mnt),
            // the daemon of lab "a": in the lab's netns, own mount ns
            p(
                10,
                1,
                "weft\0daemon\0--data-dir\0/r/a/nodes/m1/data",
                101,
                201,
            ),
            // a task the daemon started, in its own netns, same mount ns
            p(11, 10, "sleep\x00100", 150, 201),
            // its child
            p(12, 11, "sh", 151, 202),
            // an orphaned task shim of the lab (daemon was killed)
            p(
                13,
                1,
                "weft\0task-shim\0--dir\0/r/a/nodes/w1/run/t",
                host_net,
                203,
            ),
            // a process left in the lab's mount ns (no marks of its own)
            p(14, 1, "orphan", 152, 203),
            // lab "ab": must not match lab "a"
            p(
                20,
                1,
                "weft\0daemon\0--data-dir\0/r/ab/nodes/m1/data",
                301,
                401,
            ),
            // a lab exec'd shell in the host mount ns, in the lab's netns
            p(30, 1, "bash", 101, host_mnt),
            // an unrelated process in the host's mount namespace
            p(31, 1, "sshd", host_net, host_mnt),
            // the caller (protected), naming the dir on its command line
            p(40, 1, "weft\0lab\0down\0/r/a/", host_net, host_mnt),
        ];
        let marks = LabMarks {
            cmdline: b"/r/a/",
            netns: [ns(101).unwrap()].into(),
            daemon_ns: BTreeSet::new(),
            foreign_mnt: [ns(host_mnt).unwrap()].into(),
            protected: [40].into(),
        };
        let got = select_lab_processes(&procs, &marks);
        assert_eq!(got, [10, 11, 12, 13, 14, 30].into());

        // Recorded daemon namespaces find a task whose daemon and shim died.
        let procs = vec![
            p(1, 0, "init", host_net, host_mnt),
            p(50, 1, "sleep", 160, 201),
            p(51, 1, "other", host_net, 201), // same mnt, other uts: no
        ];
        let mut procs = procs;
        procs[2].uts = ns(2);
        let marks = LabMarks {
            cmdline: b"/r/a/",
            daemon_ns: [(ns(201).unwrap(), ns(1).unwrap())].into(),
            foreign_mnt: [ns(host_mnt).unwrap()].into(),
            ..Default::default()
        };
        // 51 shares 50's mount namespace, so it goes too (the lab's mount
        // namespace holds nothing else).
        assert_eq!(select_lab_processes(&procs, &marks), [50, 51].into());
    }

    #[test]
    fn zombies_are_ignored() {
        let mut z = p(10, 1, "/r/a/", 1, 1);
        z.zombie = true;
        let marks = LabMarks {
            cmdline: b"/r/a/",
            ..Default::default()
        };
        assert!(select_lab_processes(&[z], &marks).is_empty());
    }

    #[test]
    fn mountinfo_lines() {
        let l = "36 35 0:4 net:[4026532] /r/a\\040b/netns/host-m1 rw shared:5 - nsfs nsfs rw";
        assert_eq!(
            parse_mountinfo_line(l),
            Some(Mount {
                mount_point: PathBuf::from("/r/a b/netns/host-m1"),
                fstype: "nsfs".into()
            })
        );
        assert_eq!(parse_mountinfo_line("garbage"), None);
    }
}
