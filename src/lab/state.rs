//! The lab state file (`<lab>/lab.json`): what `lab up` made, so that later
//! commands (`ls`, `status`, `exec`, `down`) find the nodes, their daemons
//! and namespaces. Written atomically (temp file + rename); `up` writes it
//! before it starts any daemon and again when the cluster is ready.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::procs::NsId;
use super::spec::{Layout, Role, Subnet};

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// How far `lab up` got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `lab up` is running (or crashed before the cluster was ready).
    Creating,
    /// Every node joined and was Ready.
    Ready,
}

/// A lab as recorded on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The lab's name.
    pub name: String,
    /// The lab's directory.
    pub dir: PathBuf,
    /// The underlay subnet.
    pub underlay: Subnet,
    /// How far `lab up` got.
    pub phase: Phase,
    /// When `lab up` started (seconds since the Unix epoch).
    pub created_unix: u64,
    /// The `weft` binary the daemons run.
    pub weft: PathBuf,
    /// Milliseconds from `lab up` to every node Ready.
    #[serde(default)]
    pub formation_ms: Option<u64>,
    /// The containerd the daemons run their containers through.
    #[serde(default)]
    pub containerd: ContainerdSettings,
    /// The nodes, managers first.
    pub nodes: Vec<NodeState>,
}

/// Where a lab's daemons find containerd (`weft lab up --containerd-*`);
/// `None`: the daemon's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerdSettings {
    /// `weft daemon --containerd-socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// `weft daemon --runc-root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runc_root: Option<PathBuf>,
    /// `weft daemon --cgroup-parent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<PathBuf>,
}

impl ContainerdSettings {
    /// The daemon flags that say so.
    pub fn daemon_args(&self) -> Vec<std::ffi::OsString> {
        let mut out = Vec::new();
        for (flag, v) in [
            ("--containerd-socket", &self.socket),
            ("--runc-root", &self.runc_root),
            ("--cgroup-parent", &self.cgroup_parent),
        ] {
            if let Some(v) = v {
                out.push(flag.into());
                out.push(v.clone().into_os_string());
            }
        }
        out
    }
}

/// One node of a lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    /// `m1`, `w1`, …
    pub name: String,
    /// Manager or worker.
    pub role: Role,
    /// Underlay address (on `eth0` in its network namespace).
    pub addr: Ipv4Addr,
    /// The pin of its network namespace.
    pub netns: PathBuf,
    /// Its daemon's local API socket.
    pub socket: PathBuf,
    /// Its daemon's data dir.
    pub data_dir: PathBuf,
    /// Its daemon's exec root.
    pub exec_root: PathBuf,
    /// Its daemon's log.
    pub log: PathBuf,
    /// The daemon's pid, once started.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The daemon's mount namespace, once started (teardown finds leftover
    /// processes of the node by it).
    #[serde(default)]
    pub mnt_ns: Option<NsId>,
    /// The daemon's UTS namespace, once started.
    #[serde(default)]
    pub uts_ns: Option<NsId>,
}

impl LabState {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Counts of (managers, workers).
    pub fn counts(&self) -> (usize, usize) {
        let m = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Manager)
            .count();
        (m, self.nodes.len() - m)
    }

    /// Writes the state atomically to the lab's state file.
    pub fn save(&self, layout: &Layout) -> anyhow::Result<()> {
        let path = layout.state_file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text + "\n")
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
        Ok(())
    }

    /// Reads the lab's state file; `Ok(None)` if there is none.
    pub fn load(layout: &Layout) -> anyhow::Result<Option<LabState>> {
        let path = layout.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state: LabState = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab state file", path.display()))?;
        anyhow::ensure!(
            state.version == STATE_VERSION,
            "{} has format version {}, this weft reads {STATE_VERSION}; \
             tear the lab down with `weft lab down {}`",
            path.display(),
            state.version,
            state.name
        );
        Ok(Some(state))
    }
}

/// True if `dir` looks like something `lab up` made (a state file, pins or
/// node directories, or nothing yet): `down` never deletes anything else,
/// even under an unusual `--root`.
pub fn looks_like_lab(dir: &Path) -> bool {
    ["lab.json", "netns", "nodes"]
        .iter()
        .any(|f| dir.join(f).exists())
        || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// Names of the labs under `root` (directories with a valid lab name that
/// look like labs), sorted.
pub fn list_labs(root: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", root.display())),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", root.display()))?;
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if let (true, Some(name)) = (is_dir, e.file_name().to_str())
            && super::spec::parse_lab_name(name).is_ok()
            && looks_like_lab(&e.path())
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}
