//! What a lab is, decided before anything is touched: the validated name,
//! node counts and underlay subnet, the node plan (names, roles, addresses)
//! and where every file of the lab lives. Pure: no syscalls.
//!
//! ```text
//!   <root>/<lab>/                         Layout::dir (a shared bind mount of itself)
//!   ├── lab.json                          the lab's state (state.rs)
//!   ├── netns/switch, netns/host-<node>   namespace pins (the Underlay's)
//!   └── nodes/<node>/
//!       ├── data/  run/                   the daemon's --data-dir and --exec-root
//!       ├── weft.sock                     its local API socket
//!       └── daemon.log                    its stdout and stderr
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where labs live unless `--root` / `WEFT_LAB_ROOT` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/weft-lab";
/// The lab name `weft lab up` uses by default.
pub const DEFAULT_NAME: &str = "weft";
/// The underlay `weft lab up` uses by default.
pub const DEFAULT_UNDERLAY: &str = "198.18.0.0/24";
/// Longest lab name: keeps socket paths under the kernel's limit.
pub const MAX_NAME_LEN: usize = 24;
/// Most managers a lab may have (Raft gains nothing past 7).
pub const MAX_MANAGERS: u8 = 7;
/// Most workers a lab may have.
pub const MAX_WORKERS: u8 = 20;
/// The manager port every node listens on (in its own network namespace).
pub const MANAGER_PORT: u16 = 4377;
/// Longest usable `sun_path` (108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The range every lab underlay must live in (RFC 2544 benchmarking).
const BENCHMARK_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const BENCHMARK_PREFIX: u8 = 15;

/// Checks a lab name: 1 to 24 of `a-z 0-9 -`, starting with a letter or
/// digit (it names a directory and namespace pins). Used as a clap parser.
pub fn parse_lab_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a lab name has 1 to {MAX_NAME_LEN} characters (got {})",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("a lab name uses only lowercase letters, digits and '-'".into());
    }
    if name.starts_with('-') {
        return Err("a lab name starts with a letter or a digit".into());
    }
    Ok(name.to_owned())
}

/// An IPv4 subnet `a.b.c.d/n` with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Usable host addresses (network and broadcast excluded).
    pub fn capacity(&self) -> u32 {
        if self.prefix >= 31 {
            0
        } else {
            (1u32 << (32 - self.prefix)) - 2
        }
    }

    /// The `i`-th host address (0-based): `.1`, `.2`, … (what the
    /// underlay assigns, in host order).
    pub fn host(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + i as u32 + 1)
    }

    fn within_benchmark_range(&self) -> bool {
        let mask = u32::MAX << (32 - BENCHMARK_PREFIX);
        self.prefix >= BENCHMARK_PREFIX
            && u32::from(self.network) & mask == u32::from(BENCHMARK_NET)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a subnet; write it like {DEFAULT_UNDERLAY}");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if network != addr {
            return Err(format!(
                "{s} has host bits set; did you mean {network}/{prefix}?"
            ));
        }
        Ok(Subnet { network, prefix })
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// Parses an underlay subnet for `--underlay`: inside 198.18.0.0/15.
pub fn parse_underlay(s: &str) -> Result<Subnet, String> {
    let subnet: Subnet = s.parse()?;
    if !subnet.within_benchmark_range() {
        return Err(format!(
            "{subnet} is outside 198.18.0.0/15, the benchmarking range labs use \
             so they never collide with real networks"
        ));
    }
    Ok(subnet)
}

/// A node's role in the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Joins with the manager token (m1 creates the cluster).
    Manager,
    /// Joins with the worker token.
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// One planned node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// `m1`…`m7`, `w1`…`w20`: host name, namespace and directory name.
    pub name: String,
    /// Manager or worker.
    pub role: Role,
    /// Its underlay address.
    pub addr: Ipv4Addr,
}

/// A validated lab: name, subnet and the nodes in creation order
/// (managers first; the first manager creates the cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// The lab's name.
    pub name: String,
    /// The underlay subnet.
    pub underlay: Subnet,
    /// The nodes, managers first.
    pub nodes: Vec<NodePlan>,
}

impl LabSpec {
    /// Validates counts and capacity and plans the nodes.
    pub fn new(name: &str, managers: u8, workers: u8, underlay: Subnet) -> Result<Self, String> {
        let name = parse_lab_name(name)?;
        if !(1..=MAX_MANAGERS).contains(&managers) {
            return Err(format!(
                "a lab has 1 to {MAX_MANAGERS} managers (got {managers})"
            ));
        }
        if workers > MAX_WORKERS {
            return Err(format!(
                "a lab has 0 to {MAX_WORKERS} workers (got {workers})"
            ));
        }
        if !underlay.within_benchmark_range() {
            return Err(parse_underlay(&underlay.to_string()).unwrap_err());
        }
        let total = usize::from(managers) + usize::from(workers);
        if total > underlay.capacity() as usize {
            return Err(format!(
                "underlay {underlay} has room for {} hosts, the lab needs {total}; \
                 use a larger subnet (e.g. {DEFAULT_UNDERLAY})",
                underlay.capacity()
            ));
        }
        let names = (1..=managers)
            .map(|i| (format!("m{i}"), Role::Manager))
            .chain((1..=workers).map(|i| (format!("w{i}"), Role::Worker)));
        let nodes = names
            .enumerate()
            .map(|(i, (name, role))| NodePlan {
                name,
                role,
                addr: underlay.host(i),
            })
            .collect();
        Ok(LabSpec {
            name,
            underlay,
            nodes,
        })
    }

    /// How many managers.
    pub fn managers(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Manager)
            .count()
    }

    /// How many workers.
    pub fn workers(&self) -> usize {
        self.nodes.len() - self.managers()
    }
}

/// Where a lab's files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
    dir: PathBuf,
}

impl Layout {
    /// The layout of lab `name` under `root`.
    pub fn new(root: &Path, name: &str) -> Layout {
        Layout {
            root: root.to_owned(),
            dir: root.join(name),
        }
    }

    /// The labs' root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lab's directory (also the underlay's directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lab's state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    /// A node's directory.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// A node's `--data-dir`.
    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("data")
    }

    /// A node's `--exec-root`.
    pub fn exec_root(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("run")
    }

    /// A node's `--socket`.
    pub fn socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("weft.sock")
    }

    /// A node's daemon log.
    pub fn log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("daemon.log")
    }

    /// The bytes every process of this lab carries on its command line
    /// (`<dir>/`, through `--data-dir` and friends): how teardown finds
    /// them after a crash. The trailing slash keeps lab `a` from matching
    /// lab `ab`.
    pub fn marker(&self) -> Vec<u8> {
        let mut m = self.dir.as_os_str().as_encoded_bytes().to_vec();
        m.push(b'/');
        m
    }

    /// Fails if a node's socket path would be too long for a unix socket.
    pub fn check_socket_paths(&self, spec: &LabSpec) -> Result<(), String> {
        for n in &spec.nodes {
            let s = self.socket(&n.name);
            let len = s.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(format!(
                    "socket path {} is {len} bytes, more than a unix socket allows \
                     ({MAX_SOCKET_PATH}); use a shorter lab name or labs root",
                    s.display()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names() {
        for ok in [
            "weft",
            "demo",
            "a",
            "lab-2",
            "0abc",
            "abcdefghijklmnopqrstuvwx",
        ] {
            assert_eq!(parse_lab_name(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "a/b",
            "..",
            "a b",
            "abcdefghijklmnopqrstuvwxy",
        ] {
            assert!(parse_lab_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subnets() {
        let s = parse_underlay("198.18.0.0/24").unwrap();
        assert_eq!(s.capacity(), 254);
        assert_eq!(s.host(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(s.to_string(), "198.18.0.0/24");
        assert!(parse_underlay("198.19.255.248/29").is_ok());
        assert!(parse_underlay("198.18.0.0/15").is_ok());
        let e = parse_underlay("198.18.0.1/24").unwrap_err();
        assert!(e.contains("did you mean 198.18.0.0/24"), "{e}");
        assert!(
            parse_underlay("10.0.0.0/24")
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            parse_underlay("198.16.0.0/14")
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            parse_underlay("198.20.0.0/24")
                .unwrap_err()
                .contains("outside")
        );
        for bad in ["198.18.0.0", "198.18.0.0/33", "x/24", "198.18.0.0/a"] {
            assert!(parse_underlay(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"198.18.0.0/24\"");
        assert_eq!(serde_json::from_str::<Subnet>(&json).unwrap(), s);
    }

    #[test]
    fn plan() {
        let u = parse_underlay("198.18.0.0/24").unwrap();
        let spec = LabSpec::new("demo", 3, 2, u).unwrap();
        let names: Vec<_> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["m1", "m2", "m3", "w1", "w2"]);
        assert_eq!(spec.nodes[3].role, Role::Worker);
        assert_eq!(spec.nodes[3].addr, Ipv4Addr::new(198, 18, 0, 4));
        assert_eq!((spec.managers(), spec.workers()), (3, 2));

        assert!(LabSpec::new("demo", 0, 2, u).is_err());
        assert!(LabSpec::new("demo", 8, 2, u).is_err());
        assert!(LabSpec::new("demo", 1, 21, u).is_err());
        assert!(LabSpec::new("demo", 1, 0, u).is_ok());
        let small = parse_underlay("198.18.0.0/30").unwrap();
        assert!(LabSpec::new("demo", 2, 0, small).is_ok());
        let e = LabSpec::new("demo", 2, 1, small).unwrap_err();
        assert!(e.contains("room for 2 hosts"), "{e}");
    }

    #[test]
    fn layout() {
        let l = Layout::new(Path::new("/run/weft-lab"), "demo");
        assert_eq!(
            l.socket("m1"),
            Path::new("/run/weft-lab/demo/nodes/m1/weft.sock")
        );
        assert_eq!(l.marker(), b"/run/weft-lab/demo/".to_vec());
        let u = parse_underlay(DEFAULT_UNDERLAY).unwrap();
        let spec = LabSpec::new("demo", 1, 1, u).unwrap();
        assert!(l.check_socket_paths(&spec).is_ok());
        let long = Layout::new(Path::new(&format!("/{}", "x".repeat(90))), "demo");
        assert!(long.check_socket_paths(&spec).is_err());
    }
}
