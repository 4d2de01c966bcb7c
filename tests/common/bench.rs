//! Small helpers of the benchmarks (tests/bench_*.rs): knobs from the
//! environment, medians, and the Markdown fragments the bench scripts
//! assemble into bench/results-*.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{nsenter, wait_for};

/// The number in environment variable `name`, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where fragments go: `WEFT_BENCH_OUT`, or a directory under the temp dir.
pub fn out_dir() -> PathBuf {
    let dir = std::env::var_os("WEFT_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("weft-bench"));
    std::fs::create_dir_all(&dir).expect("bench output dir");
    dir
}

/// Writes the Markdown fragment `md` to `file` in [`out_dir`].
pub fn write_fragment(file: &str, md: &str) {
    let path = out_dir().join(file);
    std::fs::write(&path, md).expect("write fragment");
    eprintln!("{md}\n(written to {})", path.display());
}

/// The median of the finite values of `v` (NaN when there is none).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Seconds with three decimals, or a dash for a missing value.
pub fn fmt_s(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "—".into()
    }
}

/// A percentage as the tables show it (one decimal; "—" for NaN).
pub fn fmt_pct(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "—".into()
    }
}

/// The share of `attempts` that `failed`, in % (NaN without attempts).
pub fn pct(failed: u64, attempts: u64) -> f64 {
    if attempts == 0 {
        f64::NAN
    } else {
        100.0 * failed as f64 / attempts as f64
    }
}

/// How a target fared, in bold.
pub fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

/// A row of a targets table: `| what | median | ≤ target | met? | every
/// run |` (columns: what, median s, target, whether met, every run).
pub fn target_row(what: &str, runs: &[f64], target: f64) -> String {
    let m = median(runs);
    let every: Vec<String> = runs.iter().map(|x| fmt_s(*x)).collect();
    format!(
        "| {what} | {} | ≤ {target} | {} | {} |\n",
        fmt_s(m),
        met(m <= target),
        every.join(", ")
    )
}

/// Runs `args` in the namespace at `pin`; panics on failure; returns stdout.
pub fn ns_ok(pin: &Path, args: &[&str]) -> String {
    let out = nsenter(pin, args);
    assert!(
        out.status.success(),
        "{args:?} in {}: {}",
        pin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Child processes killed (and reaped) on drop.
#[derive(Default)]
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One iperf3 result.
#[derive(Clone, Debug)]
pub struct Iperf {
    /// Received, Gbit/s.
    pub gbps: f64,
    /// Retransmits.
    pub retrans: u64,
    /// CPU of the client's host, %.
    pub cpu_local: f64,
    /// CPU of the server's host, %.
    pub cpu_remote: f64,
}

/// iperf3 from the namespace at `client_pin` to `server`.
pub fn iperf3(client_pin: &Path, server: &str, streams: u32, secs: u64) -> Iperf {
    let out = ns_ok(
        client_pin,
        &[
            "iperf3",
            "-c",
            server,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
            "--connect-timeout",
            "5000",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 json");
    let end = &v["end"];
    Iperf {
        gbps: end["sum_received"]["bits_per_second"]
            .as_f64()
            .expect("bits_per_second")
            / 1e9,
        retrans: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        cpu_local: end["cpu_utilization_percent"]["host_total"]
            .as_f64()
            .unwrap_or(f64::NAN),
        cpu_remote: end["cpu_utilization_percent"]["remote_total"]
            .as_f64()
            .unwrap_or(f64::NAN),
    }
}

/// Starts an iperf3 server in `pin` and waits until it listens.
pub fn iperf3_server(procs: &mut Procs, pin: &Path) {
    let child = Command::new("nsenter")
        .arg(format!("--net={}", pin.display()))
        .args(["iperf3", "-s", "-p", "5201"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iperf3 -s");
    procs.0.push(child);
    wait_for("iperf3 server listening", Duration::from_secs(10), || {
        !ns_ok(pin, &["ss", "-Hltn", "sport = :5201"])
            .trim()
            .is_empty()
    });
}

/// Seconds from a node's loss until it shows down, until its replicas run
/// on other nodes, and until the replicas that replaced them all answer;
/// from the loss until then, the service's longest silence (seconds) and
/// the share of the client's attempts that got no answer (%) (the failover
/// rounds of the container benchmarks, weft's and Swarm's).
#[derive(Default, Clone, Copy)]
pub struct Failover {
    pub down: f64,
    pub moved: f64,
    pub answer: f64,
    pub silence: f64,
    pub failed_pct: f64,
}

impl std::fmt::Display for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "down {:.3} s, moved {:.3} s, the new replicas answer {:.3} s, longest silence \
             {:.3} s, attempts unanswered {:.1} %",
            self.down, self.moved, self.answer, self.silence, self.failed_pct
        )
    }
}

/// How a node is lost.
#[derive(Clone, Copy)]
pub enum Loss {
    /// Its daemon gets SIGKILL (its containers keep running).
    Killed,
    /// Its links are cut: nothing reaches it, no connection is closed.
    Silent,
}
