//! Small helpers of the benchmarks (tests/bench_*.rs): knobs from the
//! environment, medians, and the Markdown fragments the bench scripts
//! assemble into bench/results-*.md.

use std::path::PathBuf;

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
