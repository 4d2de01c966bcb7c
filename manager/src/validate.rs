//! Input checks shared by the API edges. Each error says what to fix.

use crate::error::{Error, Result};

mod health;
pub use health::*;

/// Names of networks, tasks and services: 1-63 characters
/// ([`crate::limits::MAX_NAME_BYTES`]), starting with a
/// letter or digit, then letters, digits, `_`, `.` or `-` (DNS-friendly).
pub fn object_name(kind: &str, name: &str) -> Result<()> {
    crate::limits::name(kind, name)?;
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid {kind} name {name:?}: use 1-{} letters, digits, '_', '.' or '-', starting with a letter or digit",
            crate::limits::MAX_NAME_BYTES
        )))
    }
}

/// An `--ip6` address: empty is none; anything but an IPv6 address is
/// refused.
pub fn ip6(flag: &str, value: &str) -> Result<Option<std::net::IpAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    match value.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_ipv6() => Ok(Some(ip)),
        _ => Err(Error::InvalidInput(format!(
            "invalid {flag} {value:?}: give an IPv6 address"
        ))),
    }
}

/// DNS aliases on network `net` (`--network name=NET,alias=A`,
/// `--network-alias`, `network connect --alias`): each a valid name (as
/// [`object_name`]), no `tasks.` prefix (that form names a service's
/// tasks), none twice, at most [`crate::limits::MAX_ALIASES_PER_NETWORK`],
/// and only on networks that resolve names (not the default bridge, as
/// with Docker's, nor the ingress network).
pub fn aliases(net: &crate::store::Network, aliases: &[String]) -> Result<()> {
    if aliases.is_empty() {
        return Ok(());
    }
    if net.ingress || (net.node.is_some() && net.name == crate::store::DEFAULT_BRIDGE) {
        return Err(Error::InvalidInput(format!(
            "network {:?} resolves no names: aliases are for user-defined networks",
            net.name
        )));
    }
    crate::limits::at_most(
        format_args!("aliases on network {}", net.name),
        aliases.len(),
        crate::limits::MAX_ALIASES_PER_NETWORK,
        "aliases",
    )?;
    for (i, a) in aliases.iter().enumerate() {
        object_name("alias", a)?;
        if a.len() >= 6 && a[..6].eq_ignore_ascii_case("tasks.") {
            return Err(Error::InvalidInput(format!(
                "invalid alias {a:?}: `tasks.NAME` names a service's tasks"
            )));
        }
        if aliases[..i].iter().any(|b| b.eq_ignore_ascii_case(a)) {
            return Err(Error::InvalidInput(format!("alias {a:?} is given twice")));
        }
    }
    Ok(())
}

/// Longest image reference accepted (Docker's name limit is 255; a tag
/// adds up to 128 and a digest 71).
pub const MAX_IMAGE_REF_BYTES: usize = 512;
/// Longest `-u` value.
pub const MAX_USER_BYTES: usize = 64;
/// Longest `-w` value.
pub const MAX_WORKDIR_BYTES: usize = 4096;
/// Longest `--stop-grace-period`: an hour (a node draining longer than
/// that is stuck, not graceful).
pub const MAX_STOP_GRACE_MS: u64 = 3600 * 1000;

/// Smallest `--log-opt max-size` (the node's writer needs room for a line).
pub const MIN_LOG_MAX_SIZE: u64 = 4096;
/// Largest `--log-opt max-size` (1 TiB).
pub const MAX_LOG_MAX_SIZE: u64 = 1 << 40;
/// Largest `--log-opt max-file`.
pub const MAX_LOG_MAX_FILE: u32 = 100;

/// A task's `--log-opt` as a request gave it (the same bounds as the
/// node's writer, `weft_worker::logs::LogOptions::validate`).
pub fn log(l: &crate::store::LogOpts) -> Result<()> {
    if !(MIN_LOG_MAX_SIZE..=MAX_LOG_MAX_SIZE).contains(&l.max_size) {
        return Err(Error::InvalidInput(format!(
            "--log-opt max-size={}: must be between 4k and 1t bytes",
            l.max_size
        )));
    }
    if !(1..=MAX_LOG_MAX_FILE).contains(&l.max_file) {
        return Err(Error::InvalidInput(format!(
            "--log-opt max-file={}: must be between 1 and {MAX_LOG_MAX_FILE}",
            l.max_file
        )));
    }
    Ok(())
}

/// A container's options as a request gave them, checked at the edge; the
/// node parses the image reference fully when it resolves it. The command
/// may be empty (the image's `Cmd` runs), but not with an `--entrypoint ""`
/// that clears the image's program too.
pub fn container(c: &crate::store::ContainerOpts, command: &[String]) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidInput(m));
    let r = &c.image;
    let ref_ok = !r.is_empty()
        && r.len() <= MAX_IMAGE_REF_BYTES
        && !r.starts_with(['-', '.', '/', ':', '@'])
        && r.chars().all(|ch| {
            ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-' | '/' | ':' | '@')
        });
    if !ref_ok {
        return bad(format!(
            "invalid image reference {r:?}: use NAME[:TAG][@sha256:DIGEST] (letters, digits,              '.', '_', '-', '/', ':' and '@'; at most {MAX_IMAGE_REF_BYTES} bytes)"
        ));
    }
    if let Some(ep) = &c.entrypoint {
        // The entrypoint and the command share the command line's budget.
        let line: Vec<String> = ep.iter().chain(command).cloned().collect();
        crate::limits::command(&line)?;
        if ep.iter().any(|a| a.contains('\0')) {
            return bad("--entrypoint contains a NUL byte".into());
        }
        if ep.iter().all(String::is_empty) && command.is_empty() {
            return bad(
                "--entrypoint \"\" clears the image's program: give a command after the image"
                    .into(),
            );
        }
    }
    if let Some(w) = &c.workdir {
        crate::limits::at_most("--workdir", w.len(), MAX_WORKDIR_BYTES, "bytes")?;
        if !w.starts_with('/') || w.contains('\0') {
            return bad(format!("--workdir {w:?} is not an absolute path"));
        }
    }
    if let Some(u) = &c.user {
        crate::limits::at_most("--user", u.len(), MAX_USER_BYTES, "bytes")?;
        let ok = !u.is_empty()
            && u.split(':').count() <= 2
            && u.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-' | ':'));
        if !ok {
            return bad(format!(
                "invalid --user {u:?}: use USER, UID, USER:GROUP or UID:GID"
            ));
        }
    }
    if let Some(h) = &c.hostname {
        hostname(h)?;
    }
    Ok(())
}

/// Longest `--hostname` (the kernel's `HOST_NAME_MAX`).
pub const MAX_HOSTNAME_BYTES: usize = 64;

/// A `--hostname`: 1-64 letters, digits, `-` and `.`, as RFC 1123 names
/// (and the kernel's UTS name) allow.
pub fn hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= MAX_HOSTNAME_BYTES
        && !h.starts_with(['-', '.'])
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid --hostname {h:?}: use 1-{MAX_HOSTNAME_BYTES} letters, digits, '-' and '.', \
             not starting with '-' or '.'"
        )))
    }
}

/// A stop policy as a request gave it: a real signal, a bounded grace.
pub fn stop_policy(p: &crate::store::StopPolicy) -> Result<()> {
    if let Some(sig) = p.signal
        && !weft_proto::signal::valid(sig)
    {
        return Err(Error::InvalidInput(
            weft_proto::signal::BadSignal(sig.to_string()).to_string(),
        ));
    }
    if let Some(ms) = p.grace_ms
        && ms > MAX_STOP_GRACE_MS
    {
        return Err(Error::InvalidInput(format!(
            "--stop-grace-period of {ms} ms is too long: at most 1h"
        )));
    }
    Ok(())
}

/// Fewest CPUs a limit or reservation may name (swarmkit's bound):
/// below it the CFS quota is under a millisecond per period.
pub const MIN_NANO_CPUS: u64 = 1_000_000;
/// Most CPUs a limit or reservation may name.
pub const MAX_NANO_CPUS: u64 = 1024 * 1_000_000_000;
/// Least memory limit (Docker's): runc itself needs some to start a
/// container.
pub const MIN_LIMIT_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// Most memory a limit or reservation may name (1 PiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Most processes a `--limit-pids` may name (the kernel's PID_MAX_LIMIT).
pub const MAX_LIMIT_PIDS: u64 = 4 * 1024 * 1024;

/// A task's limits and reservations, checked at the edge: each within its
/// bounds (0 is "none"), no reservation above its limit, and limits only
/// for a container (a host process runs in the daemon's cgroup, which weft
/// does not split).
pub fn resources(r: &crate::store::Resources, container: bool) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidInput(m));
    for (flag, v) in [
        ("--limit-cpu", r.limit_nano_cpus),
        ("--reserve-cpu", r.reserve_nano_cpus),
    ] {
        if v != 0 && !(MIN_NANO_CPUS..=MAX_NANO_CPUS).contains(&v) {
            return bad(format!(
                "{flag} {}: give 0.001 to {} CPUs",
                v as f64 / 1e9,
                MAX_NANO_CPUS / 1_000_000_000
            ));
        }
    }
    if r.limit_memory_bytes != 0
        && !(MIN_LIMIT_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&r.limit_memory_bytes)
    {
        return bad(format!(
            "--limit-memory {} bytes: give 6m (6 MiB) to 1p",
            r.limit_memory_bytes
        ));
    }
    if r.reserve_memory_bytes > MAX_MEMORY_BYTES {
        return bad(format!(
            "--reserve-memory {} bytes: give at most 1p",
            r.reserve_memory_bytes
        ));
    }
    if r.limit_pids > MAX_LIMIT_PIDS {
        return bad(format!(
            "--limit-pids {}: give 1 to {MAX_LIMIT_PIDS}",
            r.limit_pids
        ));
    }
    for (what, reserve, limit) in [
        ("CPUs", r.reserve_nano_cpus, r.limit_nano_cpus),
        ("memory", r.reserve_memory_bytes, r.limit_memory_bytes),
    ] {
        if limit != 0 && reserve > limit {
            return bad(format!(
                "the {what} reservation ({reserve}) is more than the limit ({limit})"
            ));
        }
    }
    if !container && r.has_limits() {
        return bad(
            "--limit-cpu, --limit-memory and --limit-pids are for containers: a host process              (-- CMD) runs unisolated in the daemon's cgroup; give an IMAGE"
                .into(),
        );
    }
    Ok(())
}

/// Longest `--restart-delay`.
pub const MAX_RESTART_DELAY_MS: u64 = 24 * 3600 * 1000;
/// Longest `--restart-window`.
pub const MAX_RESTART_WINDOW_MS: u64 = 30 * 24 * 3600 * 1000;
/// Most `--restart-max-attempts` (the history a task carries is as long).
pub const MAX_RESTART_ATTEMPTS: u64 = 1000;

/// A service's restart delay, attempts and window, within their bounds.
pub fn restart_policy(p: &crate::store::RestartPolicy) -> Result<()> {
    if p.delay_ms.is_some_and(|d| d > MAX_RESTART_DELAY_MS) {
        return Err(Error::InvalidInput(
            "--restart-delay: give at most 24h".into(),
        ));
    }
    if p.max_attempts > MAX_RESTART_ATTEMPTS {
        return Err(Error::InvalidInput(format!(
            "--restart-max-attempts {}: give 0 (no limit) to {MAX_RESTART_ATTEMPTS}",
            p.max_attempts
        )));
    }
    if p.window_ms > MAX_RESTART_WINDOW_MS {
        return Err(Error::InvalidInput(
            "--restart-window: give at most 30d".into(),
        ));
    }
    Ok(())
}

/// A random 16-hex-digit object ID.
pub fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ContainerOpts, Resources};

    #[test]
    fn restart_policy_bounds() {
        use crate::store::RestartPolicy;
        let ok = RestartPolicy {
            delay_ms: Some(0),
            max_attempts: 3,
            window_ms: 60_000,
        };
        restart_policy(&ok).unwrap();
        for bad in [
            RestartPolicy {
                delay_ms: Some(MAX_RESTART_DELAY_MS + 1),
                ..ok
            },
            RestartPolicy {
                max_attempts: MAX_RESTART_ATTEMPTS + 1,
                ..ok
            },
            RestartPolicy {
                window_ms: MAX_RESTART_WINDOW_MS + 1,
                ..ok
            },
        ] {
            let e = restart_policy(&bad).unwrap_err().to_string();
            assert!(e.contains("--restart-"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn resource_bounds() {
        let ok = Resources {
            limit_nano_cpus: 500_000_000,
            limit_memory_bytes: 64 << 20,
            limit_pids: 100,
            reserve_nano_cpus: 250_000_000,
            reserve_memory_bytes: 32 << 20,
        };
        resources(&ok, true).unwrap();
        resources(&Resources::default(), false).unwrap();
        let reserve_only = Resources {
            reserve_memory_bytes: 1 << 40,
            ..Default::default()
        };
        resources(&reserve_only, false).unwrap();
        for (bad, needle) in [
            (
                Resources {
                    limit_nano_cpus: 1,
                    ..ok
                },
                "--limit-cpu",
            ),
            (
                Resources {
                    reserve_nano_cpus: MAX_NANO_CPUS + 1,
                    ..ok
                },
                "--reserve-cpu",
            ),
            (
                Resources {
                    limit_memory_bytes: 1 << 20,
                    ..ok
                },
                "--limit-memory",
            ),
            (
                Resources {
                    reserve_memory_bytes: (1 << 50) + 1,
                    limit_memory_bytes: 0,
                    ..ok
                },
                "--reserve-memory",
            ),
            (
                Resources {
                    limit_pids: MAX_LIMIT_PIDS + 1,
                    ..ok
                },
                "--limit-pids",
            ),
            (
                Resources {
                    reserve_memory_bytes: 128 << 20,
                    ..ok
                },
                "memory reservation",
            ),
            (
                Resources {
                    reserve_nano_cpus: 1_000_000_000,
                    ..ok
                },
                "CPUs reservation",
            ),
        ] {
            let e = resources(&bad, true).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
        let e = resources(&ok, false).unwrap_err().to_string();
        assert!(e.contains("for containers"), "{e}");
    }

    #[test]
    fn log_options() {
        let l = |max_size, max_file| crate::store::LogOpts { max_size, max_file };
        assert!(log(&l(10 << 20, 3)).is_ok());
        assert!(log(&l(4096, 1)).is_ok());
        assert!(
            log(&l(4095, 3))
                .unwrap_err()
                .to_string()
                .contains("max-size")
        );
        assert!(
            log(&l(10 << 20, 0))
                .unwrap_err()
                .to_string()
                .contains("max-file")
        );
        assert!(log(&l(10 << 20, 101)).is_err());
        assert!(log(&l(u64::MAX, 3)).is_err());
    }

    #[test]
    fn container_options() {
        let c = |image: &str| ContainerOpts {
            image: image.into(),
            ..ContainerOpts::default()
        };
        for good in [
            "busybox",
            "docker.io/library/busybox:1.36",
            "localhost:5000/weft-test/busybox:latest",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            container(&c(good), &[]).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["", "-rm", "a b", "x;rm", "../x", &"a".repeat(513), "bü"] {
            let e = container(&c(bad), &[]).unwrap_err().to_string();
            assert!(
                e.contains("image reference") || e.contains("over"),
                "{bad}: {e}"
            );
        }
        let with = |f: fn(&mut ContainerOpts)| {
            let mut o = c("busybox");
            f(&mut o);
            o
        };
        assert!(container(&with(|o| o.workdir = Some("srv".into())), &[]).is_err());
        assert!(container(&with(|o| o.workdir = Some("/srv".into())), &[]).is_ok());
        assert!(container(&with(|o| o.user = Some("1000:100".into())), &[]).is_ok());
        assert!(container(&with(|o| o.user = Some("a:b:c".into())), &[]).is_err());
        assert!(container(&with(|o| o.user = Some("x y".into())), &[]).is_err());
        let cleared = with(|o| o.entrypoint = Some(vec![String::new()]));
        assert!(
            container(&cleared, &[])
                .unwrap_err()
                .to_string()
                .contains("clears")
        );
        assert!(container(&cleared, &["ls".into()]).is_ok());
    }

    #[test]
    fn names() {
        for good in ["web", "app-net", "a.b_c", "x1", &"x".repeat(63)] {
            assert!(object_name("network", good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "a/b"] {
            let e = object_name("network", bad).unwrap_err().to_string();
            assert!(e.contains("invalid network name"), "{e}");
        }
        let e = object_name("network", &"x".repeat(64))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e, "network name: 64 bytes is over the limit of 63 bytes",
            "{e}"
        );
    }
}
