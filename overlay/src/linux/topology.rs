//! Underlay topologies for the end-to-end tests and `weft lab`: a "switch"
//! namespace holding a Linux bridge, and one namespace per host plugged into
//! it with a veth, all pinned under a run directory of our choosing.
//!
//! ```text
//!   <run_dir>/<name>/netns/switch            <run_dir>/<name>/netns/host-<h>
//!   ┌──────────────────────────────┐         ┌───────────────────────────┐
//!   │ br0 ── p0-h1 ──────veth──────┼─────────┼─ eth0 198.18.x.1/nn  (h1) │
//!   │     └─ p1-h2 ──────veth──────┼───┐     └───────────────────────────┘
//!   └──────────────────────────────┘   └──── eth0 198.18.x.2/nn  (h2) …
//! ```
//!
//! Teardown kills every process living in those namespaces (found by
//! comparing `/proc/<pid>/ns/net` with the pinned file), and their
//! descendants, then unmounts and deletes the pins; the kernel removes the
//! links with the namespaces. [`cleanup_run_dir`] does the same for every pin
//! under a directory, from `/proc/self/mountinfo`, so a crashed run can be
//! cleaned up by a later process (`weft lab down`).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network};

use super::error::{Error, Result, TeardownReport};
use super::netlink::{MAX_LINK_NAME, Netlink, VethSpec};
use super::netns::{Netns, is_nsfs};
use super::process::NsCommand;

/// Name of the bridge in the switch namespace.
pub const SWITCH_BRIDGE: &str = "br0";
/// Name of each host's underlay interface.
pub const HOST_IFACE: &str = "eth0";
/// The benchmarking range every test and lab underlay must live in.
pub const BENCHMARK_RANGE: Ipv4Network =
    match Ipv4Network::new_checked(Ipv4Addr::new(198, 18, 0, 0), 15) {
        Some(n) => n,
        None => panic!("valid"),
    };

/// How long teardown waits for killed processes to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Options of an [`Underlay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnderlayOptions {
    /// MTU of the bridge and every veth (default 1500).
    pub mtu: u32,
}

impl Default for UnderlayOptions {
    fn default() -> Self {
        UnderlayOptions { mtu: 1500 }
    }
}

/// One host of an [`Underlay`]: a network namespace with `lo` up and an
/// `eth0` on the underlay bridge.
#[derive(Debug)]
pub struct UnderlayHost {
    name: String,
    netns: Netns,
    addr: Ipv4Addr,
    subnet: Ipv4Network,
}

impl UnderlayHost {
    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The host's underlay address on `eth0`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The host's interface address with prefix length (e.g. 198.18.0.1/24).
    pub fn ip_network(&self) -> Ipv4Network {
        Ipv4Network::new(self.addr, self.subnet.prefix()).expect("prefix of a valid subnet")
    }

    /// The underlay interface name (`eth0`).
    pub fn iface(&self) -> &'static str {
        HOST_IFACE
    }

    /// A process recipe that starts in this host's network namespace; add
    /// mounts or a hostname before applying it.
    pub fn ns_command(&self) -> NsCommand {
        NsCommand::new().netns(&self.netns)
    }

    /// A `Command` for `program` that runs in this host's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        self.ns_command().command(program)
    }

    /// Runs `f` on a thread inside this host's namespace (see
    /// [`Netns::run_in`]), e.g. to open sockets there.
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        self.netns.run_in(f)
    }
}

/// An underlay: one switch namespace with a bridge and hosts plugged into
/// it. Dropping it (or [`destroy`](Underlay::destroy)) removes everything it
/// made and kills the processes left in its namespaces.
#[derive(Debug)]
pub struct Underlay {
    name: String,
    dir: PathBuf,
    subnet: Ipv4Network,
    mtu: u32,
    switch: Option<Netns>,
    hosts: Vec<UnderlayHost>,
    torn_down: bool,
}

/// Validates a topology or host name used in paths and link names.
fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 32 {
        return bad("must be 1 to 32 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad("only ASCII letters, digits, '-' and '_' are allowed");
    }
    if name.starts_with('-') {
        return bad("must not start with '-'");
    }
    Ok(())
}

/// The address of the `i`-th host (0-based): `.1`, `.2`, … of `subnet`.
fn host_addr(subnet: Ipv4Network, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + i as u32 + 1)
}

/// Usable host addresses of `subnet` (network and broadcast excluded).
fn capacity(subnet: Ipv4Network) -> u32 {
    match subnet.prefix() {
        p if p >= 31 => 0,
        p => (1u32 << (32 - p)) - 2,
    }
}

/// The switch-side veth name of host `i`: `p<i>-<host>`, cut to 15 bytes
/// (unique through the index; the rest is for humans).
fn port_name(i: usize, host: &str) -> String {
    let mut n = format!("p{i}-{host}");
    n.truncate(MAX_LINK_NAME);
    n
}

impl Underlay {
    /// Builds an underlay called `name` under `run_dir` with default options.
    /// See [`Underlay::create_with`].
    pub async fn create(
        run_dir: &Path,
        name: &str,
        subnet: Ipv4Network,
        hosts: &[&str],
    ) -> Result<Underlay> {
        Self::create_with(run_dir, name, subnet, hosts, &UnderlayOptions::default()).await
    }

    /// Builds an underlay: the switch namespace with bridge `br0`, and for
    /// each host a namespace with `lo` up and `eth0` (a veth plugged into
    /// `br0`) addressed `.1`, `.2`, … of `subnet`, in the order given.
    /// `subnet` must be inside 198.18.0.0/15. Idempotent: namespaces and
    /// links left by an earlier run with the same name are adopted. On error
    /// everything made so far is torn down.
    pub async fn create_with(
        run_dir: &Path,
        name: &str,
        subnet: Ipv4Network,
        hosts: &[&str],
        opts: &UnderlayOptions,
    ) -> Result<Underlay> {
        validate_name(name)?;
        let subnet = Ipv4Network::new(subnet.network(), subnet.prefix()).expect("same prefix");
        if !(BENCHMARK_RANGE.contains(subnet.network())
            && subnet.prefix() >= BENCHMARK_RANGE.prefix())
        {
            return Err(Error::SubnetOutsideBenchmarkRange { subnet });
        }
        if hosts.len() > capacity(subnet) as usize {
            return Err(Error::SubnetTooSmall {
                subnet,
                capacity: capacity(subnet),
                wanted: hosts.len(),
            });
        }
        let mut seen = BTreeSet::new();
        for h in hosts {
            validate_name(h)?;
            if !seen.insert(*h) {
                return Err(Error::InvalidName {
                    name: (*h).to_owned(),
                    reason: "duplicate host name",
                });
            }
        }

        // From here on, `u`'s Drop tears down whatever was made if we fail.
        let mut u = Underlay {
            name: name.to_owned(),
            dir: run_dir.join(name),
            subnet,
            mtu: opts.mtu,
            switch: None,
            hosts: Vec::new(),
            torn_down: false,
        };
        let switch = Netns::create(u.switch_pin())?;
        u.switch = Some(switch.clone());
        let sw = Netlink::open(&switch)?;
        sw.set_up("lo").await?;
        sw.create_bridge(SWITCH_BRIDGE, Some(opts.mtu)).await?;
        sw.set_up(SWITCH_BRIDGE).await?;

        for (i, host) in hosts.iter().enumerate() {
            let ns = Netns::create(u.host_pin(host))?;
            let addr = host_addr(subnet, i);
            u.hosts.push(UnderlayHost {
                name: (*host).to_owned(),
                netns: ns.clone(),
                addr,
                subnet,
            });
            let hn = Netlink::open(&ns)?;
            hn.set_up("lo").await?;
            let port = port_name(i, host);
            sw.create_veth(
                &VethSpec {
                    name: port.clone(),
                    peer_name: HOST_IFACE.to_owned(),
                    mtu: Some(opts.mtu),
                    mac: None,
                    peer_mac: None,
                },
                &hn,
            )
            .await?;
            sw.set_master(&port, Some(SWITCH_BRIDGE)).await?;
            sw.set_up(&port).await?;
            let ifaddr = Ipv4Network::new(addr, subnet.prefix()).expect("prefix of a valid subnet");
            hn.add_address(HOST_IFACE, IpNetwork::V4(ifaddr)).await?;
            hn.set_up(HOST_IFACE).await?;
        }
        tracing::debug!(underlay = %u.name, dir = %u.dir.display(), hosts = hosts.len(), "underlay created");
        Ok(u)
    }

    fn switch_pin(&self) -> PathBuf {
        self.dir.join("netns").join("switch")
    }

    fn host_pin(&self, host: &str) -> PathBuf {
        self.dir.join("netns").join(format!("host-{host}"))
    }

    /// The underlay's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory (`<run_dir>/<name>`), holding the namespace pins.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlay subnet.
    pub fn subnet(&self) -> Ipv4Network {
        self.subnet
    }

    /// The MTU of every underlay link.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The switch namespace (holding bridge `br0`).
    pub fn switch(&self) -> &Netns {
        self.switch
            .as_ref()
            .expect("switch exists once create returned")
    }

    /// The hosts, in creation order.
    pub fn hosts(&self) -> &[UnderlayHost] {
        &self.hosts
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&UnderlayHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Removes everything: kills processes in the namespaces (and their
    /// descendants), unmounts and deletes every pin, removes the directory if
    /// empty. Keeps going past errors and reports them all.
    pub fn destroy(mut self) -> TeardownReport {
        self.teardown()
    }

    fn teardown(&mut self) -> TeardownReport {
        self.torn_down = true;
        let mut pins: Vec<PathBuf> = self
            .hosts
            .iter()
            .map(|h| h.netns.path().to_owned())
            .collect();
        if self.switch.is_some() {
            pins.push(self.switch_pin());
        }
        let report = teardown_pins(&pins);
        // Only empty directories go; anything else there is not ours.
        let _ = std::fs::remove_dir(self.dir.join("netns"));
        let _ = std::fs::remove_dir(&self.dir);
        report
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        if !self.torn_down {
            let report = self.teardown();
            for e in &report.errors {
                tracing::warn!(underlay = %self.name, error = %e, "underlay teardown");
            }
        }
    }
}

/// Removes every namespace pinned under `run_dir` (found in
/// `/proc/self/mountinfo`, so this works after a crash, from another
/// process): kills the processes inside them and their descendants, then
/// unmounts and deletes the pins. Keeps going past errors.
pub fn cleanup_run_dir(run_dir: &Path) -> TeardownReport {
    let mut report = TeardownReport::default();
    let root = match run_dir.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return report,
        Err(source) => {
            report.errors.push(Error::Io {
                op: "resolve run dir",
                path: run_dir.to_owned(),
                source,
            });
            return report;
        }
    };
    match nsfs_mounts_under(&root) {
        Ok(pins) => report.merge(teardown_pins(&pins)),
        Err(e) => report.errors.push(e),
    }
    report
}

/// Mount points of nsfs mounts under `root` (deduplicated, sorted).
fn nsfs_mounts_under(root: &Path) -> Result<Vec<PathBuf>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: "read mountinfo",
        path: path.to_owned(),
        source,
    })?;
    let set: BTreeSet<PathBuf> = text
        .lines()
        .filter_map(parse_mountinfo_line)
        .filter(|(mp, fstype)| fstype == "nsfs" && mp.starts_with(root))
        .map(|(mp, _)| mp)
        .collect();
    Ok(set.into_iter().collect())
}

/// (mount point, fs type) of one `/proc/<pid>/mountinfo` line.
fn parse_mountinfo_line(line: &str) -> Option<(PathBuf, String)> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let fstype = right.split(' ').next()?;
    Some((
        PathBuf::from(unescape_mountinfo(mount_point)),
        fstype.to_owned(),
    ))
}

/// Undoes mountinfo's octal escapes (`\040` for space, etc.).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kills every process whose network namespace is one of `pins` (plus
/// their descendants, which may live in namespaces of their own), waits
/// for them to die, then unmounts and deletes every pin. Keeps going past
/// errors and reports them all.
pub fn teardown_pins(pins: &[PathBuf]) -> TeardownReport {
    let mut report = TeardownReport::default();
    let inodes: BTreeSet<(u64, u64)> = pins
        .iter()
        .filter(|p| is_nsfs(p))
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino())))
        .collect();
    if !inodes.is_empty() {
        kill_processes_in(&inodes, &mut report);
    }
    for pin in pins {
        match Netns::delete(pin) {
            Ok(()) => report.removed.push(pin.clone()),
            Err(e) => report.errors.push(e),
        }
    }
    report
}

/// Pids of processes (not threads) whose network namespace is `ns`.
pub fn pids_in_netns(ns: &Netns) -> Vec<i32> {
    let want = BTreeSet::from([(dev_of(ns), ns.inode())]);
    scan_processes()
        .into_iter()
        .filter(|p| p.netns.is_some_and(|n| want.contains(&n)))
        .map(|p| p.pid)
        .collect()
}

fn dev_of(ns: &Netns) -> u64 {
    std::fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(ns)
    ))
    .map(|m| m.dev())
    .unwrap_or(0)
}

struct ProcInfo {
    pid: i32,
    ppid: i32,
    netns: Option<(u64, u64)>,
    zombie: bool,
}

fn read_proc(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain
    // spaces: state ppid …
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| (m.dev(), m.ino()));
    Some(ProcInfo {
        pid,
        ppid,
        netns,
        zombie: state == "Z" || state == "X",
    })
}

fn scan_processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_proc)
        .collect()
}

fn kill_processes_in(inodes: &BTreeSet<(u64, u64)>, report: &mut TeardownReport) {
    let me = std::process::id() as i32;
    let procs = scan_processes();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut victims: BTreeSet<i32> = procs
        .iter()
        .filter(|p| !p.zombie && p.netns.is_some_and(|n| inodes.contains(&n)))
        .map(|p| p.pid)
        .collect();
    // Descendants too: a daemon's tasks live in namespaces of their own and
    // would otherwise outlive it (and keep its mount namespace alive).
    let mut stack: Vec<i32> = victims.iter().copied().collect();
    while let Some(pid) = stack.pop() {
        for &c in children.get(&pid).into_iter().flatten() {
            if victims.insert(c) {
                stack.push(c);
            }
        }
    }
    victims.remove(&me);
    for &pid in &victims {
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) => report.killed.push(pid),
            Err(nix::errno::Errno::ESRCH) => {}
            Err(source) => report.errors.push(Error::Sys {
                op: "kill process in namespace",
                path: PathBuf::from(format!("/proc/{pid}")),
                source,
            }),
        }
    }
    // Wait until each is gone or a zombie (its parent reaps it; a zombie no
    // longer holds namespaces).
    let deadline = Instant::now() + KILL_WAIT;
    let mut pending: Vec<i32> = report.killed.clone();
    while !pending.is_empty() {
        pending.retain(|&pid| read_proc(pid).is_some_and(|p| !p.zombie));
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for pid in pending {
                report.errors.push(Error::Io {
                    op: "wait for killed process",
                    path: PathBuf::from(format!("/proc/{pid}")),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_capacity() {
        let s: Ipv4Network = "198.18.4.0/24".parse().unwrap();
        assert_eq!(host_addr(s, 0), Ipv4Addr::new(198, 18, 4, 1));
        assert_eq!(host_addr(s, 1), Ipv4Addr::new(198, 18, 4, 2));
        assert_eq!(capacity(s), 254);
        assert_eq!(capacity("198.18.0.0/30".parse().unwrap()), 2);
        assert_eq!(capacity("198.18.0.0/31".parse().unwrap()), 0);
        assert!(BENCHMARK_RANGE.contains(Ipv4Addr::new(198, 19, 255, 1)));
        assert!(!BENCHMARK_RANGE.contains(Ipv4Addr::new(198, 20, 0, 1)));
    }

    #[test]
    fn names() {
        assert!(validate_name("lab-1_a").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("..").is_err());
        assert_eq!(port_name(3, "h1"), "p3-h1");
        assert_eq!(
            port_name(12, "averyveryverylonghostname").len(),
            MAX_LINK_NAME
        );
    }

    #[test]
    fn mountinfo_lines() {
        let l =
            r"612 27 0:4 net:[4026532999] /tmp/weft\040x/netns/switch rw shared:1 - nsfs nsfs rw";
        let (mp, fs) = parse_mountinfo_line(l).unwrap();
        assert_eq!(mp, PathBuf::from("/tmp/weft x/netns/switch"));
        assert_eq!(fs, "nsfs");
        assert_eq!(unescape_mountinfo(r"a\134b"), r"a\b");
    }

    #[tokio::test]
    async fn subnet_checks_come_before_any_side_effect() {
        let dir = Path::new("/nonexistent-weft-test");
        let r = Underlay::create(dir, "t", "10.0.0.0/24".parse().unwrap(), &["a"]).await;
        assert!(matches!(r, Err(Error::SubnetOutsideBenchmarkRange { .. })));
        let r =
            Underlay::create(dir, "t", "198.18.0.0/30".parse().unwrap(), &["a", "b", "c"]).await;
        assert!(matches!(r, Err(Error::SubnetTooSmall { .. })));
        let r = Underlay::create(dir, "t", "198.18.0.0/24".parse().unwrap(), &["a", "a"]).await;
        assert!(matches!(r, Err(Error::InvalidName { .. })));
        assert!(!dir.exists());
    }
}
