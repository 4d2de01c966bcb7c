//! What this node offers the scheduler (its CPUs and memory, reported to
//! the managers with every status report) and the limits a task's
//! container gets from its projected config.
//!
//! Must not: decide placement (the managers' scheduler does, from the
//! reported figures).

use std::sync::OnceLock;

use weft_proto::v1 as pb;

use crate::runtime::Limits;

/// This node's CPUs (those the daemon may run on) and physical memory,
/// read once: Docker's `NCPU` and `MemTotal`.
pub fn node() -> pb::NodeResources {
    static NODE: OnceLock<pb::NodeResources> = OnceLock::new();
    *NODE.get_or_init(|| pb::NodeResources {
        nano_cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000),
        memory_bytes: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_total(&m))
            .unwrap_or(0),
    })
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The container limits of a task's projected resources (absent: none).
pub fn limits(r: Option<&pb::Resources>) -> Limits {
    r.map(|r| Limits {
        nano_cpus: r.limit_nano_cpus,
        memory_bytes: r.limit_memory_bytes,
        pids: r.limit_pids,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total() {
        let m = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(m), Some(24_576_000 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB"), None);
        assert_eq!(mem_total("MemTotal: lots kB"), None);
    }

    #[test]
    fn this_node_reports_something() {
        let n = node();
        assert!(n.nano_cpus >= 1_000_000_000, "{n:?}");
        assert!(n.memory_bytes > 0, "{n:?}");
    }
}
