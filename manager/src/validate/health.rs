//! Bounds of a task's health check (`--health-*`), checked where requests
//! enter the manager (the CLI checks the same bounds first). Each error
//! names the flag and what is allowed.

use crate::error::{Error, Result};
use crate::store::HealthOpts;

/// Shortest `--health-interval` and `--health-timeout` (Docker's): a
/// check runs one `runc exec` at a time, so a short interval costs at most
/// one exec after another, never overlapping ones.
pub const MIN_HEALTH_DURATION_MS: u64 = 1;
/// Longest `--health-interval`, `--health-timeout` and
/// `--health-start-period`: a day.
pub const MAX_HEALTH_DURATION_MS: u64 = 24 * 3600 * 1000;
/// Most `--health-retries`.
pub const MAX_HEALTH_RETRIES: u32 = 100;
/// Longest `--health-cmd`, in bytes.
pub const MAX_HEALTH_CMD_BYTES: usize = 4096;

/// A health check as a request gave it; `container`: the task runs as a
/// container (a host process has nothing to run a check in).
pub fn health(h: &HealthOpts, container: bool) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidInput(m));
    if !container {
        return bad(
            "health checks run inside a container: --health-*/--no-healthcheck need an image"
                .into(),
        );
    }
    let timing = h.interval_ms.is_some()
        || h.timeout_ms.is_some()
        || h.retries.is_some()
        || h.start_period_ms.is_some();
    if h.disable && (h.cmd.is_some() || timing) {
        return bad("--no-healthcheck cannot be combined with --health-* options".into());
    }
    if let Some(cmd) = &h.cmd {
        if cmd.trim().is_empty() {
            return bad("--health-cmd is empty: give a shell command (or --no-healthcheck)".into());
        }
        if cmd.len() > MAX_HEALTH_CMD_BYTES {
            return bad(format!(
                "--health-cmd is {} bytes long: at most {MAX_HEALTH_CMD_BYTES}",
                cmd.len()
            ));
        }
        if cmd.contains('\0') {
            return bad("--health-cmd contains a NUL byte".into());
        }
    }
    for (flag, v, min) in [
        ("--health-interval", h.interval_ms, MIN_HEALTH_DURATION_MS),
        ("--health-timeout", h.timeout_ms, MIN_HEALTH_DURATION_MS),
        ("--health-start-period", h.start_period_ms, 0),
    ] {
        if let Some(ms) = v
            && !(min..=MAX_HEALTH_DURATION_MS).contains(&ms)
        {
            return bad(format!(
                "{flag} of {ms} ms is out of range: from {min} ms to 24h"
            ));
        }
    }
    if let Some(r) = h.retries
        && !(1..=MAX_HEALTH_RETRIES).contains(&r)
    {
        return bad(format!(
            "--health-retries {r} is out of range: from 1 to {MAX_HEALTH_RETRIES}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(h: &HealthOpts, container: bool) -> String {
        health(h, container).unwrap_err().to_string()
    }

    #[test]
    fn good_checks_pass() {
        let h = HealthOpts {
            cmd: Some("test -e /tmp/ok".into()),
            interval_ms: Some(1),
            timeout_ms: Some(MAX_HEALTH_DURATION_MS),
            retries: Some(MAX_HEALTH_RETRIES),
            start_period_ms: Some(0),
            ..Default::default()
        };
        health(&h, true).unwrap();
        // Timings alone tune the image's check.
        health(
            &HealthOpts {
                retries: Some(1),
                ..Default::default()
            },
            true,
        )
        .unwrap();
        health(
            &HealthOpts {
                disable: true,
                ..Default::default()
            },
            true,
        )
        .unwrap();
    }

    #[test]
    fn bad_checks_say_what_to_fix() {
        let cmd = |c: &str| HealthOpts {
            cmd: Some(c.into()),
            ..Default::default()
        };
        assert!(err(&cmd("true"), false).contains("need an image"));
        assert!(err(&cmd(" "), true).contains("--health-cmd is empty"));
        assert!(err(&cmd(&"x".repeat(4097)), true).contains("4097 bytes long: at most 4096"));
        assert!(err(&cmd("a\0b"), true).contains("NUL"));
        let e = err(
            &HealthOpts {
                interval_ms: Some(0),
                ..cmd("true")
            },
            true,
        );
        assert!(
            e.contains("--health-interval of 0 ms is out of range"),
            "{e}"
        );
        let e = err(
            &HealthOpts {
                timeout_ms: Some(MAX_HEALTH_DURATION_MS + 1),
                ..cmd("true")
            },
            true,
        );
        assert!(e.contains("--health-timeout"), "{e}");
        let e = err(
            &HealthOpts {
                start_period_ms: Some(u64::MAX),
                ..cmd("true")
            },
            true,
        );
        assert!(e.contains("--health-start-period"), "{e}");
        for r in [0, MAX_HEALTH_RETRIES + 1] {
            let e = err(
                &HealthOpts {
                    retries: Some(r),
                    ..cmd("true")
                },
                true,
            );
            assert!(
                e.contains(&format!("--health-retries {r} is out of range")),
                "{e}"
            );
        }
        let e = err(
            &HealthOpts {
                disable: true,
                ..cmd("true")
            },
            true,
        );
        assert!(e.contains("--no-healthcheck cannot be combined"), "{e}");
    }
}
