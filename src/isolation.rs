//! The container options of `weft run` and `weft service create` beyond
//! the image's defaults: capabilities, seccomp, no-new-privileges, mounts,
//! the hostname, and `--env-file`. Parsed and checked here so a mistake is
//! refused before anything is sent; the managers and the node check again.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use weft_proto::isolation::{self, MountSpec};
use weft_proto::v1 as pb;

/// Largest `--env-file` read.
pub const MAX_ENV_FILE_BYTES: u64 = 1 << 20;

/// Isolation and other per-container options.
#[derive(Debug, Default, Args)]
pub struct IsolationArgs {
    /// Add a Linux capability to Docker's default set: a name with or
    /// without CAP_ (NET_ADMIN, CAP_SYS_TIME), or ALL (repeatable).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from the set, or ALL (repeatable).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// seccomp=unconfined: no seccomp filter (by default weft's profile
    /// refuses mount, unshare, keyctl, bpf, kexec, ptrace, clock changes
    /// and the like, as Docker's does); no-new-privileges[=true|false]:
    /// setuid and file capabilities grant nothing (default false, as
    /// Docker) (repeatable).
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Mount into the container (repeatable, at most 32):
    /// type=bind,source=/host/dir,target=/dir[,readonly] (only under the
    /// node's --allow-bind-root; the source must exist),
    /// type=volume,source=NAME,target=/dir[,readonly] (a volume on the
    /// node, made on first use and kept; see `weft volume`), or
    /// type=tmpfs,target=/dir[,tmpfs-size=64m][,tmpfs-mode=1777].
    #[arg(long = "mount", value_name = "SPEC")]
    pub mount: Vec<String>,
    /// The container's hostname (default: the task's name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Read environment variables from a file: KEY=VALUE lines, `#`
    /// comments, and KEY alone for this shell's value (skipped when unset);
    /// -e wins over it (repeatable).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
}

impl IsolationArgs {
    /// True when a container-only option is given.
    pub fn any_container_option(&self) -> bool {
        !self.cap_add.is_empty()
            || !self.cap_drop.is_empty()
            || !self.security_opt.is_empty()
            || !self.mount.is_empty()
            || self.hostname.is_some()
    }

    /// Fills `c` with these options, checked.
    pub fn apply(&self, c: &mut pb::ContainerConfig) -> anyhow::Result<()> {
        c.cap_add = isolation::capabilities("--cap-add", &self.cap_add)?;
        c.cap_drop = isolation::capabilities("--cap-drop", &self.cap_drop)?;
        if let Some(both) = c.cap_add.iter().find(|n| c.cap_drop.contains(n)) {
            bail!("{both} is both in --cap-add and --cap-drop: give it once");
        }
        for opt in &self.security_opt {
            match security_opt(opt)? {
                SecurityOpt::SeccompUnconfined => c.seccomp_unconfined = true,
                SecurityOpt::NoNewPrivileges(on) => c.no_new_privileges = on,
            }
        }
        if self.mount.len() > isolation::MAX_MOUNTS {
            bail!(
                "too many --mount options: at most {}",
                isolation::MAX_MOUNTS
            );
        }
        let mounts = self
            .mount
            .iter()
            .map(|m| m.parse::<MountSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        isolation::check_mounts(&mounts)?;
        c.mounts = mounts.iter().map(pb::MountConfig::from).collect();
        if let Some(h) = &self.hostname {
            weft_manager::validate::hostname(h)?;
            c.hostname = h.clone();
        }
        Ok(())
    }
}

/// One `--security-opt`.
#[derive(Debug, PartialEq, Eq)]
enum SecurityOpt {
    SeccompUnconfined,
    NoNewPrivileges(bool),
}

/// Docker's spellings: `seccomp=unconfined` (also `seccomp:unconfined`),
/// `no-new-privileges`, `no-new-privileges=true|false` (or `:`).
fn security_opt(opt: &str) -> anyhow::Result<SecurityOpt> {
    let (k, v) = match opt.split_once(['=', ':']) {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    match (k, v) {
        ("seccomp", Some("unconfined")) => Ok(SecurityOpt::SeccompUnconfined),
        ("seccomp", _) => bail!(
            "--security-opt {opt}: only seccomp=unconfined is supported (weft's default \
             profile applies otherwise; custom profiles are not)"
        ),
        ("no-new-privileges", None | Some("true")) => Ok(SecurityOpt::NoNewPrivileges(true)),
        ("no-new-privileges", Some("false")) => Ok(SecurityOpt::NoNewPrivileges(false)),
        _ => {
            bail!("--security-opt {opt}: use seccomp=unconfined or no-new-privileges[=true|false]")
        }
    }
}

/// `--env-file`s then `-e`s, as `KEY=VALUE` items (later ones win).
pub fn env_with_files(files: &[PathBuf], env: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for f in files {
        out.extend(read_env_file(f, |k| std::env::var(k).ok())?);
    }
    out.extend(env.iter().cloned());
    Ok(out)
}

/// Reads one env file (bounded to [`MAX_ENV_FILE_BYTES`]).
fn read_env_file(
    path: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<String>> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("--env-file {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_ENV_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("--env-file {}: not UTF-8 text", path.display()))?;
    if text.len() as u64 > MAX_ENV_FILE_BYTES {
        bail!(
            "--env-file {}: larger than {} KiB",
            path.display(),
            MAX_ENV_FILE_BYTES >> 10
        );
    }
    parse_env_file(&text, lookup).with_context(|| format!("--env-file {}", path.display()))
}

/// Docker's env-file format: one `KEY=VALUE` per line, the value taken
/// verbatim (no quotes removed); leading blanks ignored; empty lines and
/// `#` comments skipped; `KEY` alone takes `lookup(KEY)` and is skipped
/// when that is unset. A key with blanks is refused.
fn parse_env_file(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<String>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line.trim_end(), None),
        };
        if key.is_empty() {
            bail!("line {}: no variable name before '='", n + 1);
        }
        if key.contains(char::is_whitespace) {
            bail!("line {}: variable {key:?} contains whitespace", n + 1);
        }
        match value {
            Some(v) => out.push(format!("{key}={v}")),
            None => {
                if let Some(v) = lookup(key) {
                    out.push(format!("{key}={v}"));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_format() {
        let text = "\u{feff}# comment\n\nA=1\n  B= x \nC=\"quoted\"\nHOME_ONLY\nUNSET\nD=a=b\n";
        let got = parse_env_file(text, |k| (k == "HOME_ONLY").then(|| "/h".into())).unwrap();
        assert_eq!(
            got,
            ["A=1", "B= x ", "C=\"quoted\"", "HOME_ONLY=/h", "D=a=b"]
        );
        assert!(parse_env_file("=x\n", |_| None).is_err());
        assert!(parse_env_file("MY VAR=1\n", |_| None).is_err());
        assert!(parse_env_file("B =1\n", |_| None).is_err());
    }

    #[test]
    fn env_file_bounded_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(
            &big,
            "A=".to_string() + &"x".repeat(MAX_ENV_FILE_BYTES as usize),
        )
        .unwrap();
        assert!(read_env_file(&big, |_| None).is_err());
        assert!(read_env_file(&dir.path().join("none"), |_| None).is_err());
        let f = dir.path().join("env");
        std::fs::write(&f, "A=file\nB=file\n").unwrap();
        let env = env_with_files(&[f], &["A=flag".into()]).unwrap();
        assert_eq!(env, ["A=file", "B=file", "A=flag"]);
    }

    #[test]
    fn security_opts() {
        assert_eq!(
            security_opt("seccomp=unconfined").unwrap(),
            SecurityOpt::SeccompUnconfined
        );
        assert_eq!(
            security_opt("no-new-privileges").unwrap(),
            SecurityOpt::NoNewPrivileges(true)
        );
        assert_eq!(
            security_opt("no-new-privileges:false").unwrap(),
            SecurityOpt::NoNewPrivileges(false)
        );
        assert!(security_opt("seccomp=/etc/profile.json").is_err());
        assert!(security_opt("apparmor=unconfined").is_err());
        assert!(security_opt("no-new-privileges=maybe").is_err());
    }

    #[test]
    fn options_checked_before_sending() {
        let mut c = pb::ContainerConfig::default();
        let a = IsolationArgs {
            cap_add: vec!["net_admin".into()],
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["seccomp=unconfined".into()],
            mount: vec!["type=tmpfs,target=/t".into()],
            hostname: Some("web-1".into()),
            env_file: vec![],
        };
        a.apply(&mut c).unwrap();
        assert_eq!(c.cap_add, ["CAP_NET_ADMIN"]);
        assert_eq!(c.cap_drop, ["ALL"]);
        assert!(c.seccomp_unconfined && c.mounts.len() == 1 && c.hostname == "web-1");
        for bad in [
            IsolationArgs {
                cap_add: vec!["FLY".into()],
                ..Default::default()
            },
            IsolationArgs {
                cap_add: vec!["CHOWN".into()],
                cap_drop: vec!["CAP_CHOWN".into()],
                ..Default::default()
            },
            IsolationArgs {
                mount: vec!["type=bind,target=/t".into()],
                ..Default::default()
            },
            IsolationArgs {
                hostname: Some("bad host".into()),
                ..Default::default()
            },
        ] {
            assert!(bad.apply(&mut pb::ContainerConfig::default()).is_err());
        }
    }
}
