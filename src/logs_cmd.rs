//! `weft logs` and `weft service logs`: parse the flags, stream the lines,
//! print stdout lines to stdout and stderr lines to stderr.

use std::io::Write;
use std::time::{Duration, SystemTime};

use weft_proto::v1 as pb;

use crate::cli::LogFlags;
use crate::commands::{Client, rpc};

/// `--tail N`: a whole number of lines, 0 or more.
pub fn parse_tail(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("expected a number of lines (0 or more), such as 5; got {s:?}"))
}

/// `--since`: RFC 3339, or a duration ago (`30s`, `10m`, `1h30m`, `2d`).
pub fn parse_since(s: &str) -> Result<SystemTime, String> {
    parse_since_at(s, SystemTime::now())
}

fn parse_since_at(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "expected a time (RFC 3339, such as 2026-12-03T10:00:00Z) or a duration ago \
             (such as 30s, 10m, 1h30m, 2d); got {s:?}"
        )
    };
    let s = s.trim();
    if let Some(t) = weft_worker::logs::format::parse_rfc3339(s) {
        return Ok(t);
    }
    let ago = crate::cli::parse_duration(s).map_err(|_| bad())?;
    now.checked_sub(ago)
        .filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .ok_or_else(bad)
}

/// `--log-opt` values (each `KEY=VALUE[,KEY=VALUE]`), checked here so a
/// bad one changes nothing; `None` when none was given.
pub fn log_config(opts: &[String]) -> anyhow::Result<Option<pb::LogConfig>> {
    if opts.is_empty() {
        return Ok(None);
    }
    let o = weft_worker::logs::LogOptions::parse(&opts.join(","))?;
    Ok(Some(pb::LogConfig {
        max_size: o.max_size,
        max_file: o.max_file,
    }))
}

fn query(f: &LogFlags) -> pb::LogQuery {
    pb::LogQuery {
        follow: f.follow,
        tail: f.tail,
        since_unix_ms: f
            .since
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
            .unwrap_or(0),
    }
}

/// Prints lines: stdout ones to stdout, stderr ones to stderr, each after
/// `prefix` and, with `-t`, its time.
pub(crate) fn print(lines: &[pb::LogLine], prefix: &str, timestamps: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for l in lines {
        let w: &mut dyn Write = if l.stream == pb::LogStream::Stderr as i32 {
            &mut err
        } else {
            &mut out
        };
        w.write_all(prefix.as_bytes())?;
        if timestamps {
            let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(l.time_unix_nanos);
            write!(w, "{} ", weft_worker::logs::format::rfc3339(t))?;
        }
        w.write_all(&l.line)?;
        if (timestamps || !prefix.is_empty()) && !l.line.ends_with(b"\n") {
            w.write_all(b"\n")?;
        }
    }
    out.flush()?;
    err.flush()
}

/// `weft logs TASK`.
pub async fn task_logs(c: &Client, task: String, f: &LogFlags) -> anyhow::Result<()> {
    let mut stream = c
        .daemon()
        .logs(pb::LogsRequest {
            task,
            query: Some(query(f)),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    while let Some(chunk) = stream.message().await.map_err(rpc)? {
        print(&chunk.lines, "", f.timestamps)?;
    }
    Ok(())
}

/// `weft service logs SERVICE`.
pub async fn service_logs(
    mut ctl: pb::control_client::ControlClient<tonic::transport::Channel>,
    service: String,
    f: &LogFlags,
) -> anyhow::Result<()> {
    let mut stream = ctl
        .service_logs(pb::ServiceLogsRequest {
            service,
            query: Some(query(f)),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    // A task whose log cannot be read (its node is down, say) is reported
    // and skipped, as before streaming: the others still print.
    while let Some(chunk) = stream.message().await.map_err(rpc)? {
        if !chunk.error.is_empty() {
            eprintln!("{}@{}: {}", chunk.task_name, chunk.hostname, chunk.error);
            continue;
        }
        print(
            &chunk.lines,
            &format!("{}@{}    | ", chunk.task_name, chunk.hostname),
            f.timestamps,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_since_parse_or_say_why() {
        assert_eq!(parse_tail("5"), Ok(5));
        assert_eq!(parse_tail("0"), Ok(0));
        assert!(parse_tail("-3").unwrap_err().contains("number of lines"));
        assert!(parse_tail("lots").is_err());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_since_at("10m", now),
            Ok(now - Duration::from_secs(600))
        );
        assert_eq!(
            parse_since_at("1h30m", now),
            Ok(now - Duration::from_secs(5400))
        );
        assert_eq!(
            parse_since_at("1970-01-01T00:00:10Z", now),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
        );
        for bad in ["garbage", "", "10", "m", "10x", "-5m", "99999999999999d"] {
            let e = parse_since_at(bad, now).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }
}
