//! Result records (one JSON line per run) and the Markdown report: medians
//! over rounds per (clients, system), with weft/etcd ratios.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::Target;
use crate::load::Shape;

/// One run's result, printed as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `weft` or `etcd`.
    pub system: String,
    /// Leader only or all members.
    pub target: Target,
    /// Concurrent clients.
    pub clients: usize,
    /// Shared HTTP/2 connections.
    pub channels: usize,
    /// Round number given on the command line.
    pub round: u32,
    /// Distinct keys written.
    #[serde(default)]
    pub keys: usize,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Writes committed in the window.
    pub count: u64,
    /// Writes that failed in the window.
    pub errors: u64,
    /// `count / duration_s`.
    pub writes_per_s: f64,
    /// Median commit latency, ms.
    pub p50_ms: f64,
    /// 99th percentile commit latency, ms.
    pub p99_ms: f64,
    /// Slowest write, ms.
    pub max_ms: f64,
    /// The first error seen, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Nearest-rank percentile of sorted microseconds, in ms (0 if empty).
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// Builds the record of one run from its latencies (µs, any order).
pub fn summarize(
    system: &str,
    shape: &Shape,
    mut latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
) -> Record {
    latencies_us.sort_unstable();
    let secs = shape.duration.as_secs_f64();
    Record {
        system: system.to_string(),
        target: shape.target,
        clients: shape.clients,
        channels: shape.channels,
        round: shape.round,
        keys: shape.keys,
        duration_s: secs,
        count: latencies_us.len() as u64,
        errors,
        writes_per_s: latencies_us.len() as f64 / secs,
        p50_ms: percentile_ms(&latencies_us, 50.0),
        p99_ms: percentile_ms(&latencies_us, 99.0),
        max_ms: percentile_ms(&latencies_us, 100.0),
        first_error,
    }
}

/// Parses JSON lines; blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Record>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("result line {}", i + 1)))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of one (clients, system) cell over its rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cell {
    rounds: usize,
    writes_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn cells(records: &[Record]) -> BTreeMap<(usize, String), Cell> {
    let mut groups: BTreeMap<(usize, String), Vec<&Record>> = BTreeMap::new();
    for r in records {
        groups
            .entry((r.clients, r.system.clone()))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let m = |f: fn(&Record) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let cell = Cell {
                rounds: rs.len(),
                writes_per_s: m(|r| r.writes_per_s),
                p50_ms: m(|r| r.p50_ms),
                p99_ms: m(|r| r.p99_ms),
                errors: rs.iter().map(|r| r.errors).sum(),
            };
            (k, cell)
        })
        .collect()
}

/// First line of the generated section; `write_section` replaces from here
/// to [`END`].
pub const BEGIN: &str = "<!-- bench/run.sh: control-plane begin -->";
/// Last line of the generated section.
pub const END: &str = "<!-- bench/run.sh: control-plane end -->";

/// The Markdown section: medians table, verdict, then every run.
pub fn markdown(records: &[Record], machine: &str) -> String {
    let cells = cells(records);
    let mut s = format!("{BEGIN}\n## Control plane: committed writes\n\n");
    if !machine.is_empty() {
        s += &format!("{machine}\n\n");
    }
    s += "Medians over rounds. Ratios are weft/etcd: throughput higher is better, \
          latency lower is better.\n\n";
    s += "| clients | etcd writes/s | weft writes/s | ratio | etcd p50 ms | weft p50 ms \
          | etcd p99 ms | weft p99 ms | p99 ratio | errors (etcd/weft) |\n";
    s += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let clients: std::collections::BTreeSet<usize> = cells.keys().map(|(c, _)| *c).collect();
    let mut verdict = None;
    for c in &clients {
        let e = cells.get(&(*c, "etcd".to_string()));
        let w = cells.get(&(*c, "weft".to_string()));
        let f = opt;
        let tput = ratio(w.map(|x| x.writes_per_s), e.map(|x| x.writes_per_s));
        let p99 = ratio(w.map(|x| x.p99_ms), e.map(|x| x.p99_ms));
        s += &format!(
            "| {c} | {} | {} | {}× | {} | {} | {} | {} | {}× | {}/{} |\n",
            f(e.map(|x| x.writes_per_s), 0),
            f(w.map(|x| x.writes_per_s), 0),
            f(tput, 2),
            f(e.map(|x| x.p50_ms), 2),
            f(w.map(|x| x.p50_ms), 2),
            f(e.map(|x| x.p99_ms), 2),
            f(w.map(|x| x.p99_ms), 2),
            f(p99, 2),
            e.map_or(0, |x| x.errors),
            w.map_or(0, |x| x.errors),
        );
        if *c == 64
            && let (Some(t), Some(p)) = (tput, p99)
        {
            verdict = Some((t, p));
        }
    }
    s += "\n";
    s += &match verdict {
        Some((t, p)) => format!(
            "Target at 64 clients (throughput ≥ 1.0× etcd, p99 ≤ etcd's): **{}** \
             (throughput {t:.2}×, p99 {p:.2}×).\n",
            if t >= 1.0 && p <= 1.0 {
                "met"
            } else {
                "not met"
            }
        ),
        None => "Target at 64 clients: no 64-client results for both systems.\n".into(),
    };
    s += &log_backend_ab(&cells);
    s += &linearizable_reads(&cells);
    s += "\n<details><summary>Every run</summary>\n\n";
    s += "| round | system | clients | channels | target | writes | errors | writes/s | p50 ms | p99 ms | max ms |\n";
    s += "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n";
    for r in records {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
            r.round,
            r.system,
            r.clients,
            r.channels,
            r.target,
            r.count,
            r.errors,
            r.writes_per_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms
        );
    }
    s += "\n</details>\n";
    s += END;
    s += "\n";
    s
}

/// `x` with `prec` decimals, or a dash.
fn opt(x: Option<f64>, prec: usize) -> String {
    x.map_or("–".into(), |v| format!("{v:.prec$}"))
}

/// `a / b` when both are known and `b` is positive.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// System label of the weft group whose Raft log is in redb.
pub const REDB_SYSTEM: &str = "weft-redb";

/// System label of weft's linearizable reads (`GetNode`).
pub const WEFT_READ_SYSTEM: &str = "weft-read";
/// System label of etcd's linearizable reads (`KV.Range`).
pub const ETCD_READ_SYSTEM: &str = "etcd-read";

/// The log backend A/B (issue #13): weft with its log file against weft
/// with the log in redb, same build and writer thread; empty without
/// `weft-redb` results.
fn log_backend_ab(cells: &BTreeMap<(usize, String), Cell>) -> String {
    pair_table(
        cells,
        "Raft log backend: log file against redb",
        "The same weft build twice, the Raft log in its own file (`weft`, the default) and in a \
         redb database (`weft-redb`, `WEFT_RAFT_LOG=redb`), behind the same group-committing \
         writer thread. Ratios are file/redb.",
        ("weft", "file"),
        (REDB_SYSTEM, "redb"),
        "writes/s",
    )
}

/// Linearizable reads: weft's `GetNode` (a read index from the leader)
/// against etcd's `KV.Range` (its ReadIndex); empty without both.
fn linearizable_reads(cells: &BTreeMap<(usize, String), Cell>) -> String {
    pair_table(
        cells,
        "Control plane: linearizable reads",
        "weft `Control.GetNode` of one node (it takes a read index, as every control call but \
         `GetCluster` and `UpdateNode` does: the leader confirms it leads with a heartbeat round \
         to a quorum, a follower asks the leader, and the read waits until that index is \
         applied; concurrent calls share rounds) against a \
         linearizable etcd `KV.Range` of one key (etcd's default read, its ReadIndex). Same \
         clients, connections and targets as the writes. Ratios are weft/etcd.",
        (WEFT_READ_SYSTEM, "weft"),
        (ETCD_READ_SYSTEM, "etcd"),
        "reads/s",
    )
}

/// A table of system `a` against system `b` for the client counts both
/// have results for (ratios a/b), titled `title`; empty without any.
/// Each is (system, label).
fn pair_table(
    cells: &BTreeMap<(usize, String), Cell>,
    title: &str,
    intro: &str,
    (a_sys, a): (&str, &str),
    (b_sys, b): (&str, &str),
    unit: &str,
) -> String {
    let has = |sys: &str| -> std::collections::BTreeSet<usize> {
        cells
            .keys()
            .filter(|(_, s)| s == sys)
            .map(|(c, _)| *c)
            .collect()
    };
    let clients: Vec<usize> = has(a_sys).intersection(&has(b_sys)).copied().collect();
    if clients.is_empty() {
        return String::new();
    }
    let mut s = format!("\n### {title}\n\n{intro}\n\n");
    s += &format!(
        "| clients | {a} {unit} | {b} {unit} | ratio | {a} p50 ms | {b} p50 ms \
         | {a} p99 ms | {b} p99 ms | p99 ratio |\n"
    );
    s += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for c in &clients {
        let x = cells.get(&(*c, a_sys.to_string()));
        let y = cells.get(&(*c, b_sys.to_string()));
        let f = opt;
        s += &format!(
            "| {c} | {} | {} | {}× | {} | {} | {} | {} | {}× |\n",
            f(x.map(|v| v.writes_per_s), 0),
            f(y.map(|v| v.writes_per_s), 0),
            f(
                ratio(x.map(|v| v.writes_per_s), y.map(|v| v.writes_per_s)),
                2
            ),
            f(x.map(|v| v.p50_ms), 2),
            f(y.map(|v| v.p50_ms), 2),
            f(x.map(|v| v.p99_ms), 2),
            f(y.map(|v| v.p99_ms), 2),
            f(ratio(x.map(|v| v.p99_ms), y.map(|v| v.p99_ms)), 2),
        );
    }
    s
}

/// Puts `section` into the Markdown file at `path`: replaces an earlier
/// section between the markers, or appends it (creating the file with a
/// title if needed). Other content is left alone.
pub fn write_section(path: &Path, section: &str) -> Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = splice(&old, section);
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn splice(old: &str, section: &str) -> String {
    match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let mut rest = &old[e + END.len()..];
            rest = rest.strip_prefix('\n').unwrap_or(rest);
            format!("{}{section}{rest}", &old[..b])
        }
        _ => {
            let sep = if old.ends_with("\n\n") || old.is_empty() {
                ""
            } else if old.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{old}{sep}{section}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(system: &str, clients: usize, round: u32, wps: f64, p99: f64) -> Record {
        Record {
            system: system.into(),
            target: Target::Leader,
            clients,
            channels: 4,
            round,
            keys: clients,
            duration_s: 10.0,
            count: (wps * 10.0) as u64,
            errors: 0,
            writes_per_s: wps,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            max_ms: p99 * 2.0,
            first_error: None,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
        assert_eq!(percentile_ms(&[7000], 99.0), 7.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    #[test]
    fn medians_per_cell() {
        let rs = vec![
            rec("etcd", 64, 1, 100.0, 10.0),
            rec("etcd", 64, 2, 300.0, 30.0),
            rec("etcd", 64, 3, 200.0, 20.0),
            rec("weft", 64, 1, 250.0, 5.0),
        ];
        let c = cells(&rs);
        let e = c[&(64, "etcd".to_string())];
        assert_eq!((e.rounds, e.writes_per_s, e.p99_ms), (3, 200.0, 20.0));
        let md = markdown(&rs, "machine X");
        assert!(md.contains("| 64 | 200 | 250 | 1.25× |"), "{md}");
        assert!(md.contains("**met**"), "{md}");
        assert!(!md.contains("Raft log backend"), "{md}");
    }

    #[test]
    fn log_backend_ab_compares_file_with_redb() {
        let rs = vec![
            rec("weft", 64, 1, 300.0, 6.0),
            rec(REDB_SYSTEM, 64, 1, 200.0, 12.0),
            rec("etcd", 64, 1, 250.0, 10.0),
        ];
        let md = markdown(&rs, "");
        assert!(md.contains("| 64 | 300 | 200 | 1.50× |"), "{md}");
        assert!(md.contains("| 6.00 | 12.00 | 0.50× |"), "{md}");
    }

    #[test]
    fn linearizable_reads_compare_weft_with_etcd() {
        let rs = vec![
            rec("weft", 1, 1, 300.0, 6.0),
            rec(WEFT_READ_SYSTEM, 1, 1, 900.0, 2.0),
            rec(ETCD_READ_SYSTEM, 1, 1, 1200.0, 4.0),
        ];
        let md = markdown(&rs, "");
        assert!(md.contains("### Control plane: linearizable reads"), "{md}");
        assert!(md.contains("| weft reads/s | etcd reads/s |"), "{md}");
        assert!(md.contains("| 1 | 900 | 1200 | 0.75× |"), "{md}");
        assert!(!md.contains("Raft log backend"), "{md}");
    }

    #[test]
    fn splice_replaces_only_the_section() {
        let s1 = format!("{BEGIN}\none\n{END}\n");
        let s2 = format!("{BEGIN}\ntwo\n{END}\n");
        let first = splice("# Benchmarks\n\nintro\n", &s1);
        assert_eq!(first, format!("# Benchmarks\n\nintro\n\n{s1}"));
        let doc = format!("{first}\n## Other\nkeep\n");
        let second = splice(&doc, &s2);
        assert_eq!(
            second,
            format!("# Benchmarks\n\nintro\n\n{s2}\n## Other\nkeep\n")
        );
    }

    #[test]
    fn records_round_trip() {
        let r = rec("weft", 1, 2, 1000.0, 1.5);
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            parse(&format!("{line}\n\n{line}\n")).unwrap(),
            vec![r.clone(), r]
        );
    }
}
