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
        VolumeCommand::Inspect { format, names } => inspect(c, format, names).await,
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
    let output = crate::format::Output::parse(format.as_deref())?;
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
    let rows: Vec<serde_json::Value> = volumes.iter().map(docker_json).collect();
    output.print(&rows, || {
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
    })
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

async fn inspect(c: &Client, format: Option<String>, names: Vec<String>) -> anyhow::Result<()> {
    crate::format::Output::parse(format.as_deref())?;
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
    crate::format::print_objects(&found, format.as_deref())?;
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
pub(super) fn confirmed(warning: &str) -> anyhow::Result<bool> {
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
