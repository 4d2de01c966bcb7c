//! `--health-cmd`, `--health-interval`, `--health-timeout`,
//! `--health-retries`, `--health-start-period` and `--no-healthcheck` on
//! `service create`, `service update` and `run`: parsed and checked here
//! with the manager's own bounds (`weft_manager::validate::health`), which
//! the manager checks again.

use std::time::Duration;

use clap::Args;
use weft_proto::v1 as pb;

use crate::cli::parse_duration;

/// A task's health check (Docker's flags and meaning).
#[derive(Debug, Args, Default)]
pub struct HealthArgs {
    /// Command that checks the task's health, run as `/bin/sh -c CMD` inside
    /// its container; exit 0 is healthy (at most 4096 bytes). Without it the
    /// image's HEALTHCHECK applies. A task is a VIP backend and in DNS only
    /// while healthy; an unhealthy one is left running, not replaced.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between the end of a check and the next, 1ms..24h [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    /// A check running longer is killed and fails, 1ms..24h [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Failures in a row that make the task unhealthy, 1..100 [default: 3].
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Time after the start in which failures do not count until a check has
    /// passed, 0s..24h [default: 0s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_start_period: Option<Duration>,
    /// Run no health check, not even the image's HEALTHCHECK.
    #[arg(long)]
    pub no_healthcheck: bool,
}

impl HealthArgs {
    /// The wire form, checked; `None` when no flag was given.
    /// `container`: whether the task is a container (`None`: not known
    /// here, as for `service update`; the manager checks it).
    pub fn to_wire(&self, container: Option<bool>) -> anyhow::Result<Option<pb::HealthConfig>> {
        let ms = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let opts = weft_manager::store::HealthOpts {
            disable: self.no_healthcheck,
            cmd: self.health_cmd.clone(),
            interval_ms: ms(self.health_interval),
            timeout_ms: ms(self.health_timeout),
            retries: self.health_retries,
            start_period_ms: ms(self.health_start_period),
        };
        if opts == weft_manager::store::HealthOpts::default() {
            return Ok(None);
        }
        weft_manager::validate::health(&opts, container.unwrap_or(true))?;
        Ok(Some(pb::HealthConfig {
            disable: opts.disable,
            cmd: opts.cmd.unwrap_or_default(),
            interval_ms: opts.interval_ms,
            timeout_ms: opts.timeout_ms,
            retries: opts.retries,
            start_period_ms: opts.start_period_ms,
        }))
    }
}

/// A service's health check in `service inspect`, Docker's shape
/// (durations in ns; absent fields: the image's or the default).
pub fn inspect_json(h: &pb::HealthConfig) -> serde_json::Value {
    let ns = |ms: Option<u64>| ms.map(|ms| ms.saturating_mul(1_000_000));
    let test = if h.disable {
        vec!["NONE".to_string()]
    } else if h.cmd.is_empty() {
        Vec::new()
    } else {
        vec!["CMD-SHELL".to_string(), h.cmd.clone()]
    };
    serde_json::json!({
        "Test": test,
        "Interval": ns(h.interval_ms),
        "Timeout": ns(h.timeout_ms),
        "Retries": h.retries,
        "StartPeriod": ns(h.start_period_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_the_wire_form_or_a_clear_error() {
        assert_eq!(HealthArgs::default().to_wire(Some(true)).unwrap(), None);
        let a = HealthArgs {
            health_cmd: Some("test -e /tmp/ok".into()),
            health_interval: Some(Duration::from_millis(200)),
            health_retries: Some(2),
            ..Default::default()
        };
        let w = a.to_wire(Some(true)).unwrap().unwrap();
        assert_eq!(w.cmd, "test -e /tmp/ok");
        assert_eq!(
            (w.interval_ms, w.retries, w.timeout_ms),
            (Some(200), Some(2), None)
        );
        let e = a.to_wire(Some(false)).unwrap_err().to_string();
        assert!(e.contains("need an image"), "{e}");
        let zero = HealthArgs {
            health_retries: Some(0),
            ..Default::default()
        };
        let e = zero.to_wire(Some(true)).unwrap_err().to_string();
        assert!(e.contains("--health-retries 0 is out of range"), "{e}");
        let now = HealthArgs {
            health_interval: Some(Duration::ZERO),
            ..Default::default()
        };
        let e = now.to_wire(None).unwrap_err().to_string();
        assert!(e.contains("--health-interval of 0 ms"), "{e}");
    }
}
