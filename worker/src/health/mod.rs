//! Health checks of running containers (`--health-*`, the image's
//! HEALTHCHECK), with Docker's semantics.
//!
//! ```text
//!  TaskConfig.health ─┐
//!                     ├─ resolve (at container create; kept in a container label,
//!  image HEALTHCHECK ─┘   so an adopted container keeps its check) ─▶ HealthCheck
//!
//!  Reconciler pass ─▶ Probers::sync(running tasks with a check)
//!                        └─ one prober per task: sleep interval ─▶ TaskRuntime::exec
//!                           (killed at the timeout) ─▶ Machine::observe (pure) ─▶ verdict
//!                           changed? ─▶ wake the reconciler ─▶ TaskStatus.health to the manager
//! ```
//!
//! The decision ([`machine::Machine`]) is a pure state machine over check
//! results and time; [`Probers`] runs the checks through the runtime's
//! exec and keeps the verdicts. A task without a check costs nothing: no
//! prober exists for it. Probers stop when their task stops running or is
//! no longer assigned; after a daemon restart the adopted containers'
//! probers start again from `starting`.

pub mod machine;
mod probers;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use machine::{Health, Machine, Outcome};
pub use probers::Probers;

/// Docker's default interval and timeout.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Docker's default timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Docker's default retries.
pub const DEFAULT_RETRIES: u32 = 3;
/// The output of one check kept (Docker keeps 4 KiB); the rest is read and
/// dropped.
pub const OUTPUT_LIMIT: usize = 4096;

/// A task's health check as the user gave it (`TaskConfig.health`): a
/// field left `None` takes the image's value, else Docker's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthOpts {
    /// `--no-healthcheck`.
    #[serde(default)]
    pub disable: bool,
    /// `--health-cmd` (run as `/bin/sh -c CMD`).
    #[serde(default)]
    pub cmd: Option<String>,
    /// `--health-interval`.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// `--health-timeout`.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// `--health-retries`.
    #[serde(default)]
    pub retries: Option<u32>,
    /// `--health-start-period`.
    #[serde(default)]
    pub start_period: Option<Duration>,
}

impl HealthOpts {
    /// The options of a pushed task config.
    pub fn from_wire(h: &weft_proto::v1::HealthConfig) -> Self {
        HealthOpts {
            disable: h.disable,
            cmd: Some(h.cmd.clone()).filter(|c| !c.is_empty()),
            interval: h.interval_ms.map(Duration::from_millis),
            timeout: h.timeout_ms.map(Duration::from_millis),
            retries: h.retries,
            start_period: h.start_period_ms.map(Duration::from_millis),
        }
    }
}

/// The check a container runs: the user's options merged over the image's
/// HEALTHCHECK and Docker's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The program and arguments run in the container (a CMD-SHELL test is
    /// `["/bin/sh", "-c", CMD]`).
    pub argv: Vec<String>,
    /// Between the end of one check and the start of the next.
    pub interval: Duration,
    /// A check running longer is killed and counts as failed.
    pub timeout: Duration,
    /// Failures in a row that make the task unhealthy.
    pub retries: u32,
    /// Failures before the first success do not count within this time
    /// from the start.
    pub start_period: Duration,
}

/// The check a container gets from `opts` and its image's `image` check;
/// `None`: no check (none asked for, `--no-healthcheck`, or the image's
/// `NONE`).
pub fn resolve(
    opts: Option<&HealthOpts>,
    image: Option<&crate::image::config::Healthcheck>,
) -> Option<HealthCheck> {
    let opts = opts.cloned().unwrap_or_default();
    if opts.disable {
        return None;
    }
    let argv = match &opts.cmd {
        Some(cmd) => shell(cmd),
        None => {
            let test = &image?.test;
            match test.first().map(String::as_str) {
                Some("CMD-SHELL") if test.len() == 2 => shell(&test[1]),
                Some("CMD") if test.len() > 1 => test[1..].to_vec(),
                // NONE, empty (inherit: nothing to inherit) or malformed.
                _ => return None,
            }
        }
    };
    let nonzero = |ns: Option<u64>| ns.filter(|n| *n > 0).map(Duration::from_nanos);
    Some(HealthCheck {
        argv,
        interval: opts
            .interval
            .or_else(|| nonzero(image.map(|i| i.interval)))
            .unwrap_or(DEFAULT_INTERVAL),
        timeout: opts
            .timeout
            .or_else(|| nonzero(image.map(|i| i.timeout)))
            .unwrap_or(DEFAULT_TIMEOUT),
        retries: opts
            .retries
            .or_else(|| image.map(|i| i.retries).filter(|r| *r > 0))
            .unwrap_or(DEFAULT_RETRIES),
        start_period: opts
            .start_period
            .or_else(|| nonzero(image.map(|i| i.start_period)))
            .unwrap_or(Duration::ZERO),
    })
}

fn shell(cmd: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), cmd.into()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::config::Healthcheck;

    fn image(test: &[&str]) -> Healthcheck {
        Healthcheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval: 5_000_000_000,
            timeout: 0,
            start_period: 1_000_000_000,
            retries: 7,
        }
    }

    #[test]
    fn the_users_options_merge_over_the_images_check() {
        // Nothing anywhere: no check.
        assert_eq!(resolve(None, None), None);
        // The image's, with Docker's defaults for what it leaves at 0.
        let c = resolve(None, Some(&image(&["CMD-SHELL", "curl -f localhost"]))).unwrap();
        assert_eq!(c.argv, ["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.retries, 7);
        assert_eq!(c.start_period, Duration::from_secs(1));
        let c = resolve(None, Some(&image(&["CMD", "/bin/check", "-q"]))).unwrap();
        assert_eq!(c.argv, ["/bin/check", "-q"]);
        assert_eq!(resolve(None, Some(&image(&["NONE"]))), None);
        // --health-cmd replaces the test, timings it does not give stay
        // the image's.
        let opts = HealthOpts {
            cmd: Some("test -e /tmp/ok".into()),
            retries: Some(1),
            ..Default::default()
        };
        let c = resolve(Some(&opts), Some(&image(&["CMD", "x"]))).unwrap();
        assert_eq!(c.argv, ["/bin/sh", "-c", "test -e /tmp/ok"]);
        assert_eq!((c.interval, c.retries), (Duration::from_secs(5), 1));
        // Without an image check, Docker's defaults.
        let c = resolve(Some(&opts), None).unwrap();
        assert_eq!(
            (c.interval, c.timeout, c.start_period),
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, Duration::ZERO)
        );
        // Timings alone, without any test: no check.
        let t = HealthOpts {
            retries: Some(2),
            ..Default::default()
        };
        assert_eq!(resolve(Some(&t), None), None);
        // --no-healthcheck drops the image's.
        let off = HealthOpts {
            disable: true,
            ..Default::default()
        };
        assert_eq!(resolve(Some(&off), Some(&image(&["CMD", "x"]))), None);
    }
}
