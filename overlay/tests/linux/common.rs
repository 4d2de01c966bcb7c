//! Shared helpers of the kernel tests: root check, unique names, a temp run
//! directory that cleans up every pinned namespace under it (even when the
//! test panics), and the independent views of the kernel (`ip -j`,
//! `bridge -j`, `nft -j` run through `nsenter --net=<pin>`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use weft_overlay::linux::{Netns, cleanup_run_dir};

/// True when running as root; kernel tests print a note and pass otherwise.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Skips the calling test unless root.
macro_rules! require_root {
    () => {
        if !crate::common::is_root() {
            eprintln!("skipping: needs root");
            return;
        }
    };
}
pub(crate) use require_root;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique in this machine for this run: prefix + pid + counter.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

/// A temporary run directory under /tmp; on drop every namespace pinned
/// under it is removed (processes inside killed) before the directory goes.
pub struct RunDir {
    dir: Option<tempfile::TempDir>,
}

impl RunDir {
    pub fn new() -> RunDir {
        let dir = tempfile::Builder::new()
            .prefix(&unique("weft-ovl-"))
            .tempdir_in("/tmp")
            .expect("temp dir");
        RunDir { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// A pin path for a namespace called `name`.
    pub fn pin(&self, name: &str) -> PathBuf {
        self.path().join("netns").join(name)
    }

    /// Creates a namespace pinned under this directory, with `lo` up.
    pub fn netns(&self, name: &str) -> Netns {
        let ns = Netns::create(self.pin(name)).expect("create netns");
        ns.lo_up().expect("lo up");
        ns
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let report = cleanup_run_dir(self.path());
        if !report.is_clean() {
            eprintln!("cleanup of {}: {:?}", self.path().display(), report.errors);
        }
        drop(self.dir.take());
    }
}

fn run_json(ns: &Path, program: &str, args: &[&str]) -> Value {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg(program)
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "nsenter {program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    if text.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("bad json from {program} {args:?}: {e}: {text}"))
}

/// `ip -j -d <args>` inside the namespace pinned at `ns`.
pub fn ip(ns: &Path, args: &[&str]) -> Value {
    let mut all = vec!["-j", "-d"];
    all.extend_from_slice(args);
    run_json(ns, "ip", &all)
}

/// `bridge -j <args>` inside the namespace pinned at `ns`.
pub fn bridge(ns: &Path, args: &[&str]) -> Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    run_json(ns, "bridge", &all)
}

/// `nft -j list ruleset` inside the namespace pinned at `ns`.
pub fn nft_ruleset(ns: &Path) -> Value {
    run_json(ns, "nft", &["-j", "list", "ruleset"])
}

/// The `ip -j -d link show` entry of `link` in `ns`, or None if absent.
pub fn ip_link(ns: &Path, link: &str) -> Option<Value> {
    let all = ip(ns, &["link", "show"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == link)
        .cloned()
}

/// Names of all links in `ns`.
pub fn ip_link_names(ns: &Path) -> Vec<String> {
    ip(ns, &["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_owned())
        .collect()
}

/// True if the `ip -j` link entry has flag `flag` (e.g. "UP").
pub fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// The "local/prefixlen" addresses of `link` in `ns`.
pub fn ip_addrs(ns: &Path, link: &str) -> Vec<String> {
    let all = ip(ns, &["addr", "show", "dev", link]);
    all.as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// Runs `args` inside the namespace pinned at `ns`; panics with its stderr
/// if it fails.
pub fn nsenter(ns: &Path, args: &[&str]) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `dp.apply(d)`'s ops; panics if it failed.
pub async fn apply(
    dp: &weft_overlay::linux::LinuxDataplane,
    d: &weft_overlay::DesiredNode,
) -> Vec<weft_overlay::plan::Op> {
    use weft_overlay::Dataplane;
    match dp.apply(d).await {
        Ok(r) => r.ops,
        Err(e) => panic!("apply failed: {e}"),
    }
}
