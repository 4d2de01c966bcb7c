//! `weft doctor`: the offline Raft check (`weft doctor raft`), and the
//! connectivity doctor, which asks the local daemon (`Daemon.Doctor`) and
//! prints its rows as a table or JSON.

use anyhow::bail;
use weft_manager::raft::doctor::{self, Verdict};
use weft_proto::v1 as pb;

use crate::cli::{DoctorArgs, DoctorCommand};
use crate::commands::{Client, TlsFiles, rpc};

/// Runs a doctor command; fails (non-zero exit) when a check fails, or
/// when the next start of the daemon would refuse its Raft state.
pub async fn run(args: DoctorArgs, host: &str, tls: &TlsFiles) -> anyhow::Result<()> {
    match args.command {
        Some(DoctorCommand::Raft { data_dir }) => {
            let report = doctor::check(&data_dir.join("raft"));
            println!("{report}");
            if matches!(report.verdict, Verdict::Refused(_)) {
                anyhow::bail!("the Raft state in {} needs attention", data_dir.display());
            }
            Ok(())
        }
        None => cluster(args.format.as_deref(), !args.no_probe, host, tls).await,
    }
}

/// How the rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

fn parse_format(f: Option<&str>) -> anyhow::Result<Format> {
    match f {
        None | Some("table") => Ok(Format::Table),
        Some("json") => Ok(Format::Json),
        Some(other) => bail!("invalid --format {other:?}: use table or json"),
    }
}

async fn cluster(
    format: Option<&str>,
    probe: bool,
    host: &str,
    tls: &TlsFiles,
) -> anyhow::Result<()> {
    let format = parse_format(format)?;
    let c = Client::connect(host, tls).await?;
    c.require_local("doctor")?;
    let report = c
        .daemon()
        .doctor(pb::DoctorRequest { probe })
        .await
        .map_err(rpc)?
        .into_inner();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&json(&report.checks))?),
        Format::Table => print!("{}", table(&report.checks)),
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| c.status == pb::DoctorStatus::Fail as i32)
        .count();
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

fn status(c: &pb::DoctorCheck) -> &'static str {
    match pb::DoctorStatus::try_from(c.status) {
        Ok(pb::DoctorStatus::Ok) => "OK",
        Ok(pb::DoctorStatus::Warn) => "WARN",
        Ok(pb::DoctorStatus::Fail) => "FAIL",
        _ => "?",
    }
}

/// The rows as JSON objects.
fn json(checks: &[pb::DoctorCheck]) -> serde_json::Value {
    checks
        .iter()
        .map(|c| {
            serde_json::json!({
                "check": c.check,
                "subject": c.subject,
                "status": status(c),
                "detail": c.detail,
                "hint": c.hint,
            })
        })
        .collect()
}

/// The rows as a table; a row that is not OK has its hint under it.
fn table(checks: &[pb::DoctorCheck]) -> String {
    let w_check = checks
        .iter()
        .map(|c| c.check.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let w_subject = checks
        .iter()
        .map(|c| c.subject.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let mut out = format!(
        "{:<w_check$}  {:<w_subject$}  {:<6}  {}\n",
        "CHECK", "SUBJECT", "STATUS", "DETAIL"
    );
    for c in checks {
        out.push_str(&format!(
            "{:<w_check$}  {:<w_subject$}  {:<6}  {}\n",
            c.check,
            c.subject,
            status(c),
            c.detail
        ));
        if !c.hint.is_empty() && c.status != pb::DoctorStatus::Ok as i32 {
            let pad = w_check + w_subject + 12;
            out.push_str(&format!("{:pad$}hint: {}\n", "", c.hint));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(check: &str, subject: &str, s: pb::DoctorStatus, hint: &str) -> pb::DoctorCheck {
        pb::DoctorCheck {
            check: check.into(),
            subject: subject.into(),
            status: s as i32,
            detail: "d".into(),
            hint: hint.into(),
        }
    }

    #[test]
    fn the_table_shows_hints_under_rows_that_are_not_ok() {
        let t = table(&[
            row(
                "vxlan",
                "h1 -> h2",
                pb::DoctorStatus::Fail,
                "allow UDP 4789",
            ),
            row("mtu", "", pb::DoctorStatus::Ok, "unused"),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("CHECK"));
        assert!(lines[1].contains("FAIL"));
        assert!(lines[2].trim_start().starts_with("hint: allow UDP 4789"));
        assert!(lines[3].contains("OK"));
        assert!(!t.contains("unused"));
    }

    #[test]
    fn json_rows_carry_the_status_as_a_word_and_formats_are_checked() {
        let j = json(&[row("mtu", "a -> b", pb::DoctorStatus::Warn, "h")]);
        assert_eq!(j[0]["status"], "WARN");
        assert_eq!(j[0]["subject"], "a -> b");
        assert_eq!(parse_format(None).unwrap(), Format::Table);
        assert_eq!(parse_format(Some("json")).unwrap(), Format::Json);
        assert!(parse_format(Some("{{.Check}}")).is_err());
    }
}
