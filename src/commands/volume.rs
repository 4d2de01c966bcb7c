//! `weft volume create|ls|inspect|rm|prune`: this node's volumes through
//! the local daemon, printed as Docker prints them.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use weft_proto::v1 as pb;

use super::{Client, kv, rpc};
use crate::volume_args::VolumeCommand;

/// Runs a volume command against the local daemon.
pub async fn volume(c: &Client, cmd: VolumeCommand) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create {
            driver,
            labels,
            opts,
            name,
        } => create(c, &driver, &labels, &opts, name).await,
        VolumeCommand::Ls {
            quiet,
            filters,
            format,
        } => ls(c, quiet, filters, format).await,
        VolumeCommand::Inspect { names } => inspect(c, names).await,
        VolumeCommand::Rm { force, names } => rm(c, force, names).await,
        VolumeCommand::Prune { force, filters } => prune(c, force, filters).await,
    }
}

async fn create(
    c: &Client,
    driver: &str,
    labels: &[String],
    opts: &[String],
    name: Option<String>,
) -> anyhow::Result<()> {
    if driver != weft_worker::volumes::DRIVER {
        bail!("volume driver {driver:?} is not supported: weft has the local driver only");
    }
    let v = c
        .daemon()
        .volume_create(pb::VolumeCreateRequest {
            name: name.unwrap_or_default(),
            labels: kv(labels, "--label")?,
            options: kv(opts, "--opt")?,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    println!("{}", v.name);
    Ok(())
}

async fn ls(
    c: &Client,
    quiet: bool,
    filters: Vec<String>,
    format: Option<String>,
) -> anyhow::Result<()> {
    let template = format.as_deref().map(Template::parse).transpose()?;
    let volumes = c
        .daemon()
        .volume_list(pb::VolumeListRequest { filters })
        .await
        .map_err(rpc)?
        .into_inner()
        .volumes;
    if quiet {
        for v in &volumes {
            println!("{}", v.name);
        }
        return Ok(());
    }
    if let Some(t) = template {
        for v in &volumes {
            println!("{}", t.render(v));
        }
        return Ok(());
    }
    let width = volumes
        .iter()
        .map(|v| v.driver.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    println!("{:<width$}    VOLUME NAME", "DRIVER");
    for v in &volumes {
        println!("{:<width$}    {}", v.driver, v.name);
    }
    Ok(())
}

/// A volume as Docker's `volume inspect` shows it (empty maps as null).
fn docker_json(v: &pb::VolumeInfo) -> serde_json::Value {
    let map = |m: &std::collections::HashMap<String, String>| {
        if m.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!(m.iter().collect::<BTreeMap<_, _>>())
        }
    };
    serde_json::json!({
        "CreatedAt": v.created_at,
        "Driver": v.driver,
        "Labels": map(&v.labels),
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": map(&v.options),
        "Scope": v.scope,
    })
}

async fn inspect(c: &Client, names: Vec<String>) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match c
            .daemon()
            .volume_inspect(pb::VolumeInspectRequest { name })
            .await
        {
            Ok(v) => found.push(docker_json(&v.into_inner())),
            Err(s) => missing.push(s.message().to_owned()),
        }
    }
    println!("{}", serde_json::to_string_pretty(&found)?);
    if !missing.is_empty() {
        bail!("{}", missing.join("\n"));
    }
    Ok(())
}

async fn rm(c: &Client, force: bool, names: Vec<String>) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for name in names {
        let asked = c
            .daemon()
            .volume_remove(pb::VolumeRemoveRequest {
                name: name.clone(),
                force,
            })
            .await;
        match asked {
            Ok(_) => println!("{name}"),
            Err(s) => failed.push(s.message().to_owned()),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// Asks on a terminal whether to go on (Docker's words); true without one.
fn confirmed(warning: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    print!("{warning}\nAre you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

async fn prune(c: &Client, force: bool, filters: Vec<String>) -> anyhow::Result<()> {
    if !force
        && !confirmed("WARNING! This will remove all local volumes not used by at least one task.")?
    {
        return Ok(());
    }
    let r = c
        .daemon()
        .volume_prune(pb::VolumePruneRequest { filters })
        .await
        .map_err(rpc)?
        .into_inner();
    if !r.removed.is_empty() {
        println!("Deleted Volumes:");
        for name in &r.removed {
            println!("{name}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        crate::image_cmd::human_size(r.reclaimed_bytes)
    );
    Ok(())
}

/// One piece of a `--format` template.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(&'static str),
    Label(String),
    Json,
}

/// A `--format` template: Go-template placeholders for a volume's fields,
/// the subset Docker's `volume ls --format` is used with; anything else is
/// refused rather than printed as is.
#[derive(Debug, PartialEq, Eq)]
struct Template(Vec<Piece>);

const FIELDS: [&str; 6] = [
    "Name",
    "Driver",
    "Mountpoint",
    "Scope",
    "CreatedAt",
    "Labels",
];

impl Template {
    fn parse(s: &str) -> anyhow::Result<Template> {
        let s = s.replace("\\t", "\t").replace("\\n", "\n");
        let mut pieces = Vec::new();
        let mut rest = s.as_str();
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find("}}") else {
                bail!("--format: unclosed {{{{ in {s:?}");
            };
            let inner = rest[open + 2..open + close].trim();
            pieces.push(Self::placeholder(inner)?);
            rest = &rest[open + close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template(pieces))
    }

    fn placeholder(inner: &str) -> anyhow::Result<Piece> {
        if inner == "json ." {
            return Ok(Piece::Json);
        }
        if let Some(key) = inner.strip_prefix(".Label ") {
            let key = key.trim();
            if let Some(k) = key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
                return Ok(Piece::Label(k.to_owned()));
            }
        }
        if let Some(f) = FIELDS.iter().find(|f| inner.strip_prefix('.') == Some(**f)) {
            return Ok(Piece::Field(f));
        }
        bail!(
            "--format: {{{{{inner}}}}} is not supported; use {}, {{{{.Label \"KEY\"}}}} or {{{{json .}}}}",
            FIELDS.map(|f| format!("{{{{.{f}}}}}")).join(", ")
        )
    }

    fn render(&self, v: &pb::VolumeInfo) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Json => out.push_str(&docker_json(v).to_string()),
                Piece::Label(k) => out.push_str(v.labels.get(k).map_or("", String::as_str)),
                Piece::Field(f) => out.push_str(&match *f {
                    "Name" => v.name.clone(),
                    "Driver" => v.driver.clone(),
                    "Mountpoint" => v.mountpoint.clone(),
                    "Scope" => v.scope.clone(),
                    "CreatedAt" => v.created_at.clone(),
                    _ => v
                        .labels
                        .iter()
                        .collect::<BTreeMap<_, _>>()
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_templates_render_fields_and_refuse_the_rest() {
        let v = pb::VolumeInfo {
            name: "db".into(),
            driver: "local".into(),
            labels: [("b", "2"), ("a", "1")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let r = |t: &str| Template::parse(t).unwrap().render(&v);
        assert_eq!(r("{{.Name}}"), "db");
        assert_eq!(r("{{ .Driver }}\\t{{.Name}}!"), "local\tdb!");
        assert_eq!(r("{{.Labels}}"), "a=1,b=2");
        assert_eq!(r("{{.Label \"b\"}}/{{.Label \"zz\"}}"), "2/");
        assert!(r("{{json .}}").contains("\"Name\":\"db\""));
        for bad in ["{{.Nope}}", "{{.Name", "{{range .}}", "{{.Label b}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
