//! The OCI runtime spec of a task's container, built purely from the task,
//! its container options and its image's configuration, with Docker's
//! defaults (moby `oci/defaults.go`, `oci/caps/defaults.go`; read for
//! their meaning, not copied) and Docker's rules for merging the image's
//! entrypoint, command, environment, working directory and user with what
//! the operator gave.
//!
//! ```text
//!  TaskSpec (id, command, env, netns pin, resolv.conf, hostname)
//!  ContainerSpec (image, --entrypoint, -w, -u, --read-only, files)  ──▶ build() ──▶ oci_spec::runtime::Spec
//!  ImageConfig (Entrypoint, Cmd, Env, WorkingDir, User)
//! ```
//!
//! Limits (`--limit-cpu`, `--limit-memory`, `--limit-pids`) become
//! `linux.resources`, which runc writes to cgroup v1 or v2 itself.
//!
//! Isolation: Docker's default capabilities with `--cap-add`/`--cap-drop`
//! applied ([`capabilities`]), weft's own default seccomp profile
//! ([`seccomp`], off with `--security-opt seccomp=unconfined`),
//! `no_new_privileges` when asked, and the task's `--mount`s as the node
//! resolved them ([`super::mounts`]).
//!
//! `-u NAME[:GROUP]` is resolved by the node against the image's own
//! `/etc/passwd` and `/etc/group` ([`users`]) and handed in as
//! [`TaskFiles::user`]; without it only `root` and numeric ids are known.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::super::{ContainerSpec, Limits, TaskSpec};
use super::mounts::HostMount;
use weft_proto::isolation::{ALL_CAPABILITIES, CAPABILITIES, MountKind};

pub mod seccomp;
pub mod users;

/// The CFS period a `--limit-cpu` is a quota of (Docker's: 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;
use crate::image::ImageConfig;

/// Docker's default capability set: bounding, effective and permitted
/// (inheritable and ambient stay empty, as moby ≥ 23 has them).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The `PATH` a container gets when neither the image nor the operator
/// sets one (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths of /proc and /sys a container cannot read (Docker's list).
const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths of /proc a container cannot write (Docker's list).
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Why a container cannot be specified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Neither the operator nor the image names a program.
    #[error("no command: the image has no entrypoint or command, and none was given")]
    NoCommand,
    /// The working directory is not absolute.
    #[error("the working directory {0:?} is not an absolute path")]
    RelativeWorkdir(String),
    /// A user that is not `root`, `uid` or `uid:gid`.
    #[error(
        "user {0:?}: only `root`, a numeric `uid` or `uid:gid` can be used yet (names are \
         looked up in the image in a later version)"
    )]
    UnsupportedUser(String),
    /// An image environment entry without `=`.
    #[error("the image's environment entry {0:?} is not NAME=value")]
    BadImageEnv(String),
    /// A capability name oci-spec does not know (checked at the edge; a
    /// version skew).
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    /// oci-spec refused what was built (a bug here).
    #[error("cannot build the OCI spec: {0}")]
    Build(String),
}

/// Where the per-task files live that are bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFiles {
    /// Mounted over `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// Mounted over `/etc/hostname`.
    pub hostname: Option<PathBuf>,
    /// The task's `--mount`s, resolved on this node.
    pub mounts: Vec<HostMount>,
    /// The user, resolved against the image's `/etc/passwd` and
    /// `/etc/group` (`None`: numeric ids and `root` only).
    pub user: Option<users::Resolved>,
}

/// The process a container runs: Docker's merge of the image's defaults
/// with what the operator gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    /// Program and arguments.
    pub args: Vec<String>,
    /// `NAME=value`, in a stable order (the image's first, then the
    /// operator's, later names replacing earlier ones in place).
    pub env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// Numeric user and group.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

/// Docker's rules:
/// - `--entrypoint` replaces the image's entrypoint *and* drops its `Cmd`;
///   an empty `--entrypoint ""` clears it.
/// - Otherwise the image's entrypoint stays, and a given command replaces
///   the image's `Cmd`.
/// - The environment is the image's, overridden by the operator's, with a
///   default `PATH` and `HOSTNAME`.
/// - The working directory and user come from the operator, else the
///   image, else `/` and root.
pub fn plan_process(
    task: &TaskSpec,
    container: &ContainerSpec,
    image: &ImageConfig,
    hostname: &str,
) -> Result<ProcessPlan, SpecError> {
    plan_process_as(task, container, image, hostname, None)
}

/// [`plan_process`] with the user already resolved by the node.
pub fn plan_process_as(
    task: &TaskSpec,
    container: &ContainerSpec,
    image: &ImageConfig,
    hostname: &str,
    resolved: Option<&users::Resolved>,
) -> Result<ProcessPlan, SpecError> {
    let run = &image.config;
    let args: Vec<String> = match &container.entrypoint {
        Some(ep) => ep
            .iter()
            .filter(|s| !s.is_empty())
            .chain(task.command.iter())
            .cloned()
            .collect(),
        None => {
            let cmd = if task.command.is_empty() {
                &run.cmd
            } else {
                &task.command
            };
            run.entrypoint.iter().chain(cmd.iter()).cloned().collect()
        }
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }

    let mut env: Vec<(String, String)> = Vec::new();
    for e in &run.env {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| SpecError::BadImageEnv(e.clone()))?;
        set_env(&mut env, k, v);
    }
    for (k, v) in &task.env {
        set_env(&mut env, k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.insert(1, ("HOSTNAME".into(), hostname.into()));
    }

    let cwd = container
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(run.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeWorkdir(cwd));
    }
    let user = effective_user(container, image);
    let (uid, gid, additional_gids) = match resolved {
        Some(r) => (r.uid, r.gid, r.additional_gids.clone()),
        None => {
            let (uid, gid) = numeric_user(&user)?;
            (uid, gid, Vec::new())
        }
    };
    Ok(ProcessPlan {
        args,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd,
        uid,
        gid,
        additional_gids,
    })
}

/// The user the container runs as: `-u`, else the image's.
pub fn effective_user(container: &ContainerSpec, image: &ImageConfig) -> String {
    container
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| image.config.user.clone())
}

/// Sets `k` in place, or appends it.
fn set_env(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    match env.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_owned(),
        None => env.push((k.to_owned(), v.to_owned())),
    }
}

/// `""` and `root` → 0:0; `uid` → uid:0 (Docker's group for a uid the
/// image's /etc/passwd does not list); `uid:gid` → both.
fn numeric_user(user: &str) -> Result<(u32, u32), SpecError> {
    let bad = || SpecError::UnsupportedUser(user.to_owned());
    match user.split_once(':') {
        None if user.is_empty() || user == "root" => Ok((0, 0)),
        None => Ok((user.parse().map_err(|_| bad())?, 0)),
        Some((u, g)) => {
            let uid = if u == "root" {
                0
            } else {
                u.parse().map_err(|_| bad())?
            };
            let gid = if g == "root" {
                0
            } else {
                g.parse().map_err(|_| bad())?
            };
            Ok((uid, gid))
        }
    }
}

/// The hostname a container gets: the task's, else the first 12
/// characters of its id (as Docker's container hostname).
pub fn hostname(task: &TaskSpec) -> String {
    task.hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| task.id.chars().take(12).collect())
}

/// Builds the whole spec. `cgroups_path` is where runc makes the
/// container's cgroup (`/weft/<id>` by default).
pub fn build(
    task: &TaskSpec,
    container: &ContainerSpec,
    image: &ImageConfig,
    files: &TaskFiles,
    cgroups_path: &Path,
) -> Result<Spec, SpecError> {
    let host = hostname(task);
    let plan = plan_process_as(task, container, image, &host, files.user.as_ref())?;
    let caps = capabilities(&container.cap_add, &container.cap_drop)?;
    let b = |e: oci_spec::OciSpecError| SpecError::Build(e.to_string());
    let seccomp = if container.seccomp_unconfined {
        None
    } else {
        Some(seccomp::profile(&caps).map_err(b)?)
    };

    let mut process = ProcessBuilder::default();
    if let (true, Some((w, h))) = (container.stdio.tty, container.stdio.size) {
        process = process.console_size(
            oci_spec::runtime::BoxBuilder::default()
                .width(u64::from(w))
                .height(u64::from(h))
                .build()
                .map_err(b)?,
        );
    }
    let process = process
        .terminal(container.stdio.tty)
        .args(plan.args)
        .env(plan.env)
        .cwd(plan.cwd)
        .user(
            UserBuilder::default()
                .uid(plan.uid)
                .gid(plan.gid)
                .additional_gids(plan.additional_gids)
                .build()
                .map_err(b)?,
        )
        .capabilities(
            oci_spec::runtime::LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()
                .map_err(b)?,
        )
        .no_new_privileges(container.no_new_privileges)
        .rlimits(vec![])
        .build()
        .map_err(b)?;

    let mut mounts = default_mounts().map_err(b)?;
    for (dest, file) in [
        ("/etc/resolv.conf", task.resolv_conf.as_ref()),
        ("/etc/hosts", files.hosts.as_ref()),
        ("/etc/hostname", files.hostname.as_ref()),
    ] {
        if let Some(file) = file {
            mounts.push(
                MountBuilder::default()
                    .destination(dest)
                    .typ("bind")
                    .source(file)
                    .options(vec!["rbind".into(), "rprivate".into()])
                    .build()
                    .map_err(b)?,
            );
        }
    }

    for m in &files.mounts {
        mounts.push(oci_mount(m).map_err(b)?);
    }

    let ns = |t: LinuxNamespaceType, path: Option<&Path>| {
        let mut n = LinuxNamespaceBuilder::default().typ(t);
        if let Some(p) = path {
            n = n.path(p);
        }
        n.build()
    };
    let namespaces = vec![
        ns(LinuxNamespaceType::Pid, None).map_err(b)?,
        ns(LinuxNamespaceType::Ipc, None).map_err(b)?,
        ns(LinuxNamespaceType::Uts, None).map_err(b)?,
        ns(LinuxNamespaceType::Mount, None).map_err(b)?,
        ns(LinuxNamespaceType::Network, Some(&task.netns)).map_err(b)?,
    ];
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(b)?;
    let sysctl: HashMap<String, String> = BTreeMap::from([
        ("net.ipv4.ip_unprivileged_port_start", "0"),
        ("net.ipv4.ping_group_range", "0 2147483647"),
    ])
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut linux = LinuxBuilder::default();
    if let Some(seccomp) = seccomp {
        linux = linux.seccomp(seccomp);
    }
    let linux = linux
        .namespaces(namespaces)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .resources(resources(&container.limits, deny_all).map_err(b)?)
        .cgroups_path(cgroups_path)
        .sysctl(sysctl)
        .build()
        .map_err(b)?;

    SpecBuilder::default()
        .version("1.0.2")
        .hostname(host)
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(container.read_only)
                .build()
                .map_err(b)?,
        )
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(b)
}

/// Docker's rules for `--cap-add`/`--cap-drop` (canonical names, checked
/// at the edge): `--cap-drop ALL` starts from nothing, otherwise from
/// [`DEFAULT_CAPABILITIES`]; `--cap-add ALL` adds every capability; then
/// the named ones are added, and the named drops removed.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<HashSet<Capability>, SpecError> {
    let cap = |name: &str| {
        serde_json::from_value::<Capability>(serde_json::Value::String(name.to_owned()))
            .map_err(|_| SpecError::UnknownCapability(name.to_owned()))
    };
    let all = |n: &String| n == ALL_CAPABILITIES;
    let mut caps: HashSet<Capability> = if drop.iter().any(all) {
        HashSet::new()
    } else {
        DEFAULT_CAPABILITIES.into_iter().collect()
    };
    if add.iter().any(all) {
        for name in CAPABILITIES {
            caps.insert(cap(name)?);
        }
    }
    for name in add.iter().filter(|n| !all(n)) {
        caps.insert(cap(name)?);
    }
    for name in drop.iter().filter(|n| !all(n)) {
        caps.remove(&cap(name)?);
    }
    Ok(caps)
}

/// A resolved `--mount` as an OCI mount: binds (a volume is a bind of its
/// directory) are `rbind,rprivate`, never propagating; `nosuid,nodev` on
/// tmpfs as Docker has them.
fn oci_mount(m: &HostMount) -> Result<Mount, oci_spec::OciSpecError> {
    let mut opts: Vec<String> = match m.kind {
        MountKind::Bind | MountKind::Volume => vec!["rbind".into(), "rprivate".into()],
        MountKind::Tmpfs => {
            let mut o = vec!["nosuid".into(), "nodev".into()];
            o.push(format!(
                "mode={:o}",
                if m.tmpfs_mode == 0 {
                    0o1777
                } else {
                    m.tmpfs_mode
                }
            ));
            if m.tmpfs_size != 0 {
                o.push(format!("size={}", m.tmpfs_size));
            }
            o
        }
    };
    if m.readonly {
        opts.push("ro".into());
    }
    let (typ, source) = match m.kind {
        MountKind::Tmpfs => ("tmpfs", PathBuf::from("tmpfs")),
        _ => ("bind", m.source.clone()),
    };
    MountBuilder::default()
        .destination(&m.target)
        .typ(typ)
        .source(source)
        .options(opts)
        .build()
}

/// The container's cgroup settings: the device rules, and the limits as
/// Docker sets them: memory and memory + swap both at `--limit-memory`
/// (no swap, so an allocation past it meets the OOM killer at once), a
/// CFS quota of `--limit-cpu` × 100 ms per 100 ms, `pids.max`.
fn resources(
    limits: &Limits,
    devices: oci_spec::runtime::LinuxDeviceCgroup,
) -> Result<LinuxResources, oci_spec::OciSpecError> {
    let mut r = LinuxResourcesBuilder::default().devices(vec![devices]);
    // Bounded at the edge (at most 1024 CPUs and 1 PiB); saturate anyway.
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if limits.memory_bytes != 0 {
        r = r.memory(
            LinuxMemoryBuilder::default()
                .limit(signed(limits.memory_bytes))
                .swap(signed(limits.memory_bytes))
                .build()?,
        );
    }
    if limits.nano_cpus != 0 {
        let quota = u128::from(limits.nano_cpus) * u128::from(CPU_PERIOD_US) / 1_000_000_000;
        r = r.cpu(
            LinuxCpuBuilder::default()
                .quota(i64::try_from(quota).unwrap_or(i64::MAX).max(1000))
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    if limits.pids != 0 {
        r = r.pids(
            LinuxPidsBuilder::default()
                .limit(signed(limits.pids))
                .build()?,
        );
    }
    r.build()
}

/// Docker's default mounts.
fn default_mounts() -> Result<Vec<Mount>, oci_spec::OciSpecError> {
    let m = |dest: &str, typ: &str, src: &str, opts: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
    };
    Ok(vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        )?,
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
    ])
}

#[cfg(test)]
mod tests;
