//! A container's isolation options as operators write them — capability
//! names (`--cap-add`, `--cap-drop`) and Docker's `--mount` syntax —
//! checked the same way by the CLI, the manager and the node, and carried
//! on the wire and in the store in the checked form defined here.
//!
//! What a node may bind into a container is the node's own decision
//! (`weft daemon --allow-bind-root`); here only the shape is checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::v1 as pb;

/// Linux capabilities by number (index = `CAP_*` value), up to
/// `CAP_CHECKPOINT_RESTORE` (40, Linux 5.9).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `--cap-add ALL` / `--cap-drop ALL`.
pub const ALL_CAPABILITIES: &str = "ALL";

/// Most `--cap-add` or `--cap-drop` entries (each list).
pub const MAX_CAPS: usize = CAPABILITIES.len() + 1;

/// Most `--mount`s per task.
pub const MAX_MOUNTS: usize = 32;

/// Longest mount source or target path (32 mounts of two such paths keep
/// a task's spec within what a node's session message carries for many
/// replicas; see the manager's `dispatcher::bound`).
pub const MAX_MOUNT_PATH_BYTES: usize = 1024;

/// Longest volume name.
pub const MAX_VOLUME_NAME_BYTES: usize = 64;

/// Why an isolation option is refused; each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsolationError {
    /// A capability name not in [`CAPABILITIES`].
    #[error(
        "unknown capability {0:?}: use a Linux capability name such as NET_ADMIN or \
         CAP_NET_ADMIN, or ALL"
    )]
    UnknownCapability(String),
    /// Too many `--cap-add`/`--cap-drop` entries.
    #[error("too many {flag} entries: at most {MAX_CAPS}")]
    TooManyCaps {
        /// The flag.
        flag: &'static str,
    },
    /// Too many `--mount`s.
    #[error("too many --mount options: at most {MAX_MOUNTS}")]
    TooManyMounts,
    /// A `--mount` that does not parse or is inconsistent.
    #[error("--mount {spec:?}: {reason}")]
    BadMount {
        /// What was given (or its target, once parsed).
        spec: String,
        /// What is wrong.
        reason: String,
    },
}

/// The canonical form of a capability name: `CAP_NET_ADMIN` for
/// `net_admin`, `NET_ADMIN` or `cap_net_admin`; `ALL` for `all`.
pub fn capability(name: &str) -> Result<String, IsolationError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == ALL_CAPABILITIES {
        return Ok(upper);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(IsolationError::UnknownCapability(name.to_owned()))
    }
}

/// Checks and canonicalises a `--cap-add` or `--cap-drop` list (`flag`
/// names it in errors); duplicates are dropped, the order kept.
pub fn capabilities(flag: &'static str, names: &[String]) -> Result<Vec<String>, IsolationError> {
    if names.len() > MAX_CAPS {
        return Err(IsolationError::TooManyCaps { flag });
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let c = capability(n)?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// What a `--mount` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A host path the node allows.
    Bind,
    /// A node-local named volume (a directory under the node's data
    /// directory, made on first use and kept after the task).
    Volume,
    /// A tmpfs, gone with the task.
    Tmpfs,
}

impl fmt::Display for MountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
        })
    }
}

/// One `--mount`, checked ([`MountSpec::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// What it is.
    pub kind: MountKind,
    /// Bind: an absolute host path; volume: its name; tmpfs: empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// tmpfs: size in bytes, 0 = the kernel's default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tmpfs_size: u64,
    /// tmpfs: permission bits, 0 = 1777.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub tmpfs_mode: u32,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

/// A volume name: 1–64 letters, digits, `_`, `.` or `-`, starting with a
/// letter or digit (so it is one path component under the volume root).
pub fn volume_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_VOLUME_NAME_BYTES
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An absolute path without NUL, `..` or `.` components.
fn clean_absolute(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= MAX_MOUNT_PATH_BYTES
        && !p.contains('\0')
        && p.split('/').all(|c| c != ".." && c != ".")
}

impl MountSpec {
    /// Checks the mount's shape; the node decides whether a bind source is
    /// allowed and exists.
    pub fn check(&self) -> Result<(), IsolationError> {
        let bad = |reason: &str| {
            Err(IsolationError::BadMount {
                spec: self.target.clone(),
                reason: reason.to_owned(),
            })
        };
        if !clean_absolute(&self.target) {
            return bad("target must be an absolute path without '.' or '..' components");
        }
        if self.target.trim_end_matches('/').is_empty() {
            return bad("target cannot be / (the container's root filesystem)");
        }
        match self.kind {
            MountKind::Bind if !clean_absolute(&self.source) => {
                bad("a bind source must be an absolute host path without '.' or '..'")
            }
            MountKind::Volume if !volume_name_ok(&self.source) => bad(
                "a volume source must be a name: 1-64 letters, digits, '_', '.' or '-', \
                 starting with a letter or digit",
            ),
            MountKind::Tmpfs if !self.source.is_empty() => bad("a tmpfs has no source"),
            MountKind::Bind | MountKind::Volume if self.tmpfs_size != 0 || self.tmpfs_mode != 0 => {
                bad("tmpfs-size and tmpfs-mode are for type=tmpfs")
            }
            _ if self.tmpfs_mode > 0o7777 => bad("tmpfs-mode must be octal permission bits"),
            _ => Ok(()),
        }
    }
}

/// Checks a task's mounts: each one, their count, and that no two share
/// a target.
pub fn check_mounts(mounts: &[MountSpec]) -> Result<(), IsolationError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(IsolationError::TooManyMounts);
    }
    for (i, m) in mounts.iter().enumerate() {
        m.check()?;
        let t = m.target.trim_end_matches('/');
        if mounts[..i]
            .iter()
            .any(|o| o.target.trim_end_matches('/') == t)
        {
            return Err(IsolationError::BadMount {
                spec: m.target.clone(),
                reason: "two mounts share this target".into(),
            });
        }
    }
    Ok(())
}

/// Parses a size as Docker's `tmpfs-size` takes it: bytes, or a number
/// with k, m, g (powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mul) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

/// Docker's `--mount` syntax: comma-separated `key=value` pairs, with
/// `type` (bind, volume, tmpfs; default volume), `source`/`src`,
/// `target`/`destination`/`dst`, `readonly`/`ro` (alone, or `=true|false|1|0`),
/// `tmpfs-size`, `tmpfs-mode` (octal). Unknown keys are refused rather than
/// ignored, so an option weft does not honour is never silently dropped.
impl FromStr for MountSpec {
    type Err = IsolationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| IsolationError::BadMount {
            spec: s.to_owned(),
            reason,
        };
        let mut kind = MountKind::Volume;
        let (mut source, mut target) = (None::<String>, None::<String>);
        let (mut readonly, mut size, mut mode) = (false, 0u64, 0u32);
        for field in s.split(',') {
            let (k, v) = match field.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
                None => (field.trim().to_ascii_lowercase(), None),
            };
            let value = || v.ok_or_else(|| bad(format!("{k} needs a value ({k}=…)")));
            match k.as_str() {
                "type" => {
                    kind = match value()? {
                        "bind" => MountKind::Bind,
                        "volume" => MountKind::Volume,
                        "tmpfs" => MountKind::Tmpfs,
                        t => return Err(bad(format!("type {t:?}: use bind, volume or tmpfs"))),
                    }
                }
                "source" | "src" => source = Some(value()?.to_owned()),
                "target" | "destination" | "dst" => target = Some(value()?.to_owned()),
                "readonly" | "ro" => {
                    readonly = match v.map(str::to_ascii_lowercase).as_deref() {
                        None | Some("true") | Some("1") => true,
                        Some("false") | Some("0") => false,
                        Some(o) => return Err(bad(format!("{k}={o}: use true or false"))),
                    }
                }
                "tmpfs-size" => {
                    size = parse_size(value()?).filter(|n| *n > 0).ok_or_else(|| {
                        bad("tmpfs-size: use bytes or a number with k, m or g".into())
                    })?
                }
                "tmpfs-mode" => {
                    mode = u32::from_str_radix(value()?, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            bad("tmpfs-mode: use octal permission bits, e.g. 1777".into())
                        })?
                }
                "" => return Err(bad("empty field".into())),
                other => {
                    return Err(bad(format!(
                        "{other:?} is not supported (type, source, target, readonly, \
                         tmpfs-size, tmpfs-mode)"
                    )));
                }
            }
        }
        let target = target.ok_or_else(|| bad("target is required".into()))?;
        let source = source.unwrap_or_default();
        if source.is_empty() && kind != MountKind::Tmpfs {
            return Err(bad(format!("type={kind} needs a source")));
        }
        let m = MountSpec {
            kind,
            source,
            target,
            readonly,
            tmpfs_size: size,
            tmpfs_mode: mode,
        };
        m.check().map_err(|e| match e {
            IsolationError::BadMount { reason, .. } => bad(reason),
            other => other,
        })?;
        Ok(m)
    }
}

impl From<&MountSpec> for pb::MountConfig {
    fn from(m: &MountSpec) -> Self {
        pb::MountConfig {
            kind: match m.kind {
                MountKind::Bind => pb::MountKind::Bind,
                MountKind::Volume => pb::MountKind::Volume,
                MountKind::Tmpfs => pb::MountKind::Tmpfs,
            } as i32,
            source: m.source.clone(),
            target: m.target.clone(),
            readonly: m.readonly,
            tmpfs_size: m.tmpfs_size,
            tmpfs_mode: m.tmpfs_mode,
        }
    }
}

impl TryFrom<&pb::MountConfig> for MountSpec {
    type Error = IsolationError;

    /// The mount from the wire, checked.
    fn try_from(m: &pb::MountConfig) -> Result<Self, Self::Error> {
        let kind = match pb::MountKind::try_from(m.kind) {
            Ok(pb::MountKind::Bind) => MountKind::Bind,
            Ok(pb::MountKind::Volume) => MountKind::Volume,
            Ok(pb::MountKind::Tmpfs) => MountKind::Tmpfs,
            _ => {
                return Err(IsolationError::BadMount {
                    spec: m.target.clone(),
                    reason: "no type: use bind, volume or tmpfs".into(),
                });
            }
        };
        let out = MountSpec {
            kind,
            source: m.source.clone(),
            target: m.target.clone(),
            readonly: m.readonly,
            tmpfs_size: m.tmpfs_size,
            tmpfs_mode: m.tmpfs_mode,
        };
        out.check()?;
        Ok(out)
    }
}

/// Checks and converts a task's mounts from the wire.
pub fn mounts_from_wire(mounts: &[pb::MountConfig]) -> Result<Vec<MountSpec>, IsolationError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(IsolationError::TooManyMounts);
    }
    let out = mounts
        .iter()
        .map(MountSpec::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    check_mounts(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names() {
        assert_eq!(capability("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(capability("CAP_SYS_ADMIN").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(capability("cap_chown").unwrap(), "CAP_CHOWN");
        assert_eq!(capability("all").unwrap(), "ALL");
        assert!(capability("CAP_FLY").is_err());
        assert!(capability("").is_err());
        assert!(capability("CAP_").is_err());
        let list = capabilities("--cap-add", &["NET_ADMIN".into(), "cap_net_admin".into()]);
        assert_eq!(list.unwrap(), ["CAP_NET_ADMIN"]);
        let many = vec!["CHOWN".to_string(); MAX_CAPS + 1];
        assert!(capabilities("--cap-drop", &many).is_err());
    }

    #[test]
    fn mount_syntax() {
        let m: MountSpec = "type=bind,source=/srv/data,target=/data,readonly"
            .parse()
            .unwrap();
        assert_eq!(m.kind, MountKind::Bind);
        assert_eq!(
            (m.source.as_str(), m.target.as_str()),
            ("/srv/data", "/data")
        );
        assert!(m.readonly);
        let m: MountSpec = "src=cache,dst=/cache".parse().unwrap();
        assert_eq!(m.kind, MountKind::Volume);
        assert!(!m.readonly);
        let m: MountSpec = "type=tmpfs,target=/scratch,tmpfs-size=64m,tmpfs-mode=700"
            .parse()
            .unwrap();
        assert_eq!((m.tmpfs_size, m.tmpfs_mode), (64 << 20, 0o700));
        let m: MountSpec = "type=bind,src=/a,dst=/b,ro=false".parse().unwrap();
        assert!(!m.readonly);
    }

    #[test]
    fn mount_syntax_errors() {
        for bad in [
            "type=bind,target=/data",                           // no source
            "type=bind,source=relative,target=/data",           // relative source
            "type=bind,source=/a/../etc,target=/data",          // ..
            "type=bind,source=/a,target=data",                  // relative target
            "type=bind,source=/a,target=/",                     // root
            "type=volume,source=../x,target=/d",                // not a name
            "type=volume,source=a/b,target=/d",                 // not a name
            "type=tmpfs,source=/x,target=/d",                   // tmpfs with source
            "type=tmpfs,target=/d,tmpfs-size=lots",             // size
            "type=tmpfs,target=/d,tmpfs-mode=999",              // not octal
            "type=bind,source=/a,target=/d,tmpfs-size=1m",      // tmpfs option on bind
            "type=nfs,source=/a,target=/d",                     // unknown type
            "type=bind,source=/a,target=/d,propagation=shared", // unsupported key
            "type=bind,source=/a,target=/d,,",                  // empty field
            "type=bind,source,target=/d",                       // key without value
            "source=/a",                                        // no target
        ] {
            let e = bad.parse::<MountSpec>();
            assert!(e.is_err(), "{bad} parsed: {e:?}");
        }
    }

    #[test]
    fn mount_lists() {
        let m: MountSpec = "type=tmpfs,target=/t".parse().unwrap();
        let mut dup = m.clone();
        dup.target = "/t/".into();
        assert!(check_mounts(&[m.clone(), dup]).is_err());
        assert!(check_mounts(&vec![m.clone(); MAX_MOUNTS + 1]).is_err());
        let wire = pb::MountConfig::from(&m);
        assert_eq!(mounts_from_wire(std::slice::from_ref(&wire)).unwrap(), [m]);
        let mut untyped = wire;
        untyped.kind = 0;
        assert!(mounts_from_wire(&[untyped]).is_err());
    }
}
