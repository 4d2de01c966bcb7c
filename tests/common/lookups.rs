//! A task that resolves a name in a loop, and its log read back: what the
//! restart tests measure DNS with.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// How long the asker gives each lookup, in seconds: glibc's default
/// (`options timeout:5`), what a workload's resolver waits for a first
/// answer before it retries.
pub const LOOKUP_TIMEOUT_S: u64 = 5;

/// A shell loop that looks `name` up at 127.0.0.11 in turn, each lookup
/// given [`LOOKUP_TIMEOUT_S`], and logs `try START`, then `ok|fail START
/// END` (milliseconds since the epoch); a lookup is ok when an answer
/// contains `want`.
pub fn asker(name: &str, want: &str) -> String {
    format!(
        "while :; do s=$(date +%s%3N); echo try $s; \
         if timeout {LOOKUP_TIMEOUT_S} busybox nslookup {name} 127.0.0.11 2>&1 | grep -q '{want}'; \
         then r=ok; else r=fail; fi; echo $r $s $(date +%s%3N); sleep 0.1; done"
    )
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// One finished lookup.
#[derive(Debug)]
pub struct Lookup {
    /// Answered with what was wanted.
    pub ok: bool,
    /// When it was sent (ms since the epoch).
    pub start: u64,
    /// When it ended.
    pub end: u64,
}

/// The asker's log: lookups started (try lines) and finished.
pub fn read_log(log: &Path) -> (Vec<u64>, Vec<Lookup>) {
    let text = super::task_log_text(log);
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
pub fn fd_stores(dir: &Path) -> Vec<i32> {
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
