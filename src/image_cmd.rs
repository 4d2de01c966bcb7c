//! `weft image load|pull|ls|inspect|rm`: the images in this node's containerd,
//! through the local daemon's `Images` service.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use weft_proto::v1 as pb;
use weft_worker::image::reference;

use crate::commands::Client;

/// Bytes per upload message (the daemon refuses more).
const CHUNK: usize = 1 << 20;

/// Bytes per upload message to a manager (its port takes Control messages
/// of at most 1 MiB, framing included).
const ALL_NODES_CHUNK: usize = 512 * 1024;

/// `weft image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load images from an archive into this node's containerd.
    ///
    /// Reads `docker save` archives and OCI image layouts (as written by
    /// umoci, skopeo or `docker save` since Docker 25), as tar or tar.gz, from
    /// FILE or from stdin. The layers are unpacked, so containers can start
    /// from the image at once. Images named in the archive keep their names
    /// (normalized: `busybox` is `docker.io/library/busybox:latest`); an
    /// unnamed image is listed as <none> and found by its ID or digest.
    /// Archives are checked before anything is stored (digests, paths,
    /// sizes); a refused archive leaves no image behind.
    ///
    /// With --all-nodes (run it on the Raft leader's node, a manager:
    /// `weft node ls` shows it), the archive goes to the leader, which
    /// checks it and has every ready node fetch and load it; one line per
    /// node says how it went (down or unreachable nodes are reported, not
    /// waited for), and the command fails if any node did not load it.
    /// Archives up to 8 GiB; one such load at a time in the cluster.
    Load {
        /// The archive (default: stdin).
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Also name the archive's image REF (the archive must hold one image).
        #[arg(long, value_name = "REF")]
        tag: Option<String>,
        /// Print only the loaded images' IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Load on every ready node of the cluster, not only this one.
        #[arg(long)]
        all_nodes: bool,
    },
    /// Pull an image from a registry into this node's containerd.
    ///
    /// REF is NAME[:TAG] or NAME@sha256:DIGEST; Docker Hub names are
    /// normalized (`busybox` is docker.io/library/busybox:latest). The image
    /// for this node's platform is fetched (an index is narrowed to it),
    /// every blob checked against its digest and the bounds (4 MiB
    /// manifests and config, 128 layers, 8 GiB in all), unpacked and
    /// recorded, as `image load` does. Blobs already on the node are not
    /// fetched again. Registries on loopback, and those the daemon was
    /// given with --insecure-registry, are spoken to over plain HTTP; others
    /// over HTTPS. Credentials `weft login` stored for the image's registry
    /// are sent with the pull (for it only); without them it is anonymous.
    Pull {
        /// Speak plain HTTP to this image's registry.
        #[arg(long)]
        insecure: bool,
        /// Print only the image's full name.
        #[arg(short, long)]
        quiet: bool,
        /// NAME[:TAG] or NAME@sha256:DIGEST.
        #[arg(value_name = "REF")]
        image: String,
    },
    /// List the images on this node, or on every node of the cluster.
    ///
    /// With --all-nodes (run it on a manager node, or with -H tcp:// and a
    /// manager's certificate), one table for the whole cluster, a NODE
    /// column first: the images each node last reported to the leader.
    /// Nodes report their images with their status, within seconds of a
    /// change (also one made outside weft, with `ctr`). A node that is
    /// down, has no session with the leader or has not reported yet (just
    /// after a new leader took over: until the node reconnects) gets one
    /// line saying so and when it last reported (on stderr with -q), and
    /// the command then fails: exit status 0 means every node answered.
    #[command(alias = "list")]
    Ls {
        /// Only print image IDs (with --all-nodes: each ID once).
        #[arg(short, long)]
        quiet: bool,
        /// Show full image IDs.
        #[arg(long)]
        no_trunc: bool,
        /// List the images of every node of the cluster.
        #[arg(long)]
        all_nodes: bool,
        /// json (one object per image), or a Go template over .Repository
        /// .Tag .ID .CreatedSince .CreatedAt .Size (not with --all-nodes).
        #[arg(long, value_name = "FORMAT", conflicts_with = "all_nodes")]
        format: Option<String>,
    },
    /// Show images in detail (JSON, in the shape of `docker image inspect`).
    Inspect {
        /// json (the default) or a Go template applied to each, e.g.
        /// '{{.Id}}' or '{{json .RepoTags}}'.
        #[arg(short, long, value_name = "FORMAT")]
        format: Option<String>,
        /// Name, name@digest, digest or image ID.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images from this node.
    ///
    /// By name, removes that name; by ID or digest, the image (with all its
    /// names only with --force). Refused while a container uses an image.
    /// Its content and snapshots are then freed by containerd's garbage
    /// collection, unless another image shares them.
    #[command(alias = "remove")]
    Rm {
        /// Remove every name of an image given by ID or digest.
        #[arg(short, long)]
        force: bool,
        /// Name, name@digest, digest or image ID.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// Runs an image command against the local daemon; `image ls
/// --all-nodes`, a read of the control API, also against a manager's TCP
/// port.
pub async fn run(c: &Client, cmd: ImageCommand) -> anyhow::Result<()> {
    match &cmd {
        ImageCommand::Ls {
            all_nodes: true, ..
        } => {}
        ImageCommand::Ls { .. } if c.require_local("image ls").is_err() => bail!(
            "`weft image ls` lists this node's images through its local daemon; over -H tcp:// \
             (a manager's control API) use `weft image ls --all-nodes`"
        ),
        _ => c.require_local("image")?,
    }
    match cmd {
        ImageCommand::Load {
            input,
            tag,
            quiet,
            all_nodes: false,
        } => load(c, input, tag, quiet).await,
        ImageCommand::Load {
            input,
            tag,
            quiet,
            all_nodes: true,
        } => load_all_nodes(c, input, tag, quiet).await,
        ImageCommand::Pull {
            insecure,
            quiet,
            image,
        } => pull(c, image, insecure, quiet).await,
        ImageCommand::Ls {
            quiet,
            no_trunc,
            all_nodes: false,
            format,
        } => ls(c, quiet, no_trunc, format.as_deref()).await,
        ImageCommand::Ls {
            quiet,
            no_trunc,
            all_nodes: true,
            ..
        } => ls_all_nodes(c, quiet, no_trunc).await,
        ImageCommand::Inspect { format, images } => inspect(c, format, images).await,
        ImageCommand::Rm { force, images } => rm(c, force, images).await,
    }
}

fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

/// The archive: FILE, or stdin when it is not a terminal.
async fn archive(
    input: &Option<PathBuf>,
) -> anyhow::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>> {
    Ok(match input {
        Some(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => {
            if std::io::stdin().is_terminal() {
                bail!("no archive given: use -i FILE, or pipe one into stdin");
            }
            Box::new(tokio::io::stdin())
        }
    })
}

/// Sends the archive in `chunk`-byte messages, the tag in the first.
async fn send_archive(
    mut reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    tag: Option<String>,
    chunk: usize,
    tx: tokio::sync::mpsc::Sender<pb::LoadImageRequest>,
) -> anyhow::Result<()> {
    let mut tag = tag.unwrap_or_default();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .context("cannot read the archive")?;
        if n == 0 {
            return Ok(());
        }
        let msg = pb::LoadImageRequest {
            data: buf[..n].to_vec(),
            tag: std::mem::take(&mut tag),
        };
        if tx.send(msg).await.is_err() {
            // The daemon ended the call; its answer says why.
            return Ok(());
        }
    }
}

/// Streams the archive (FILE or stdin) in `chunk`-byte messages into
/// `call` and returns its answer. A read error drops the call (the daemon
/// discards the upload); a refusal by the daemon stops the reading.
async fn upload<R, Fut>(
    input: Option<PathBuf>,
    tag: Option<String>,
    chunk: usize,
    call: impl FnOnce(ReceiverStream<pb::LoadImageRequest>) -> Fut,
) -> anyhow::Result<R>
where
    Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let reader = archive(&input).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let call = async {
        call(ReceiverStream::new(rx))
            .await
            .map_err(rpc)
            .map(tonic::Response::into_inner)
    };
    let ((), resp) = tokio::try_join!(send_archive(reader, tag, chunk, tx), call)?;
    Ok(resp)
}

async fn load(
    c: &Client,
    input: Option<PathBuf>,
    tag: Option<String>,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut images = c.images();
    let resp = upload(input, tag, CHUNK, |s| images.load(s)).await?;
    for image in &resp.images {
        print_loaded(image, quiet);
    }
    Ok(())
}

fn print_loaded(image: &pb::LoadedImage, quiet: bool) {
    if quiet {
        println!("{}", image.id);
    } else if image.name.starts_with("sha256:") {
        println!("Loaded image ID: {}", image.id);
    } else {
        let (repo, tag) = reference::repo_and_tag(&image.name);
        println!("Loaded image: {repo}:{tag}");
    }
}

/// `image load --all-nodes`: through the manager's `Control.LoadImage`.
async fn load_all_nodes(
    c: &Client,
    input: Option<PathBuf>,
    tag: Option<String>,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut control = c.control();
    let resp = upload(input, tag, ALL_NODES_CHUNK, |s| control.load_image(s)).await?;
    let failed = resp.nodes.iter().filter(|n| !n.error.is_empty()).count();
    if quiet {
        let mut ids: Vec<&str> = resp
            .nodes
            .iter()
            .flat_map(|n| n.images.iter().map(|i| i.id.as_str()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            println!("{id}");
        }
    } else {
        for n in &resp.nodes {
            println!("{}", node_line(n));
        }
    }
    if failed > 0 {
        bail!(
            "the image was not loaded on {failed} of {} nodes",
            resp.nodes.len()
        );
    }
    Ok(())
}

/// `HOST (ID): loaded NAME, NAME` or `HOST (ID): failed: WHY`.
fn node_line(n: &pb::ClusterImageNode) -> String {
    let who = format!("{} ({})", n.hostname, n.node_id);
    if !n.error.is_empty() {
        return format!("{who}: failed: {}", n.error);
    }
    let names: Vec<String> = n
        .images
        .iter()
        .map(|i| {
            if i.name.starts_with("sha256:") {
                short_id(&i.id)
            } else {
                let (repo, tag) = reference::repo_and_tag(&i.name);
                format!("{repo}:{tag}")
            }
        })
        .collect();
    format!("{who}: loaded {}", names.join(", "))
}

async fn pull(c: &Client, image: String, insecure: bool, quiet: bool) -> anyhow::Result<()> {
    // Refused here, before the daemon is asked.
    let r = weft_worker::image::pull::parse(&image)?;
    let auth = crate::login::wire_for(r.registry())?;
    let pulled = c
        .images()
        .pull(pb::PullImageRequest {
            image,
            insecure,
            auth,
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .image
        .context("the daemon answered without an image")?;
    if !quiet {
        println!("Digest: {}", pulled.digest);
    }
    println!("{}", pulled.name);
    Ok(())
}

/// `service create`'s image, pinned to the digest its tag stands for in its
/// registry now (`NAME:TAG@sha256:…`, as Docker's CLI sends it), so every
/// node runs the same image; the local daemon asks the registry. What is
/// not a name with a tag (a digest, an ID), or cannot be resolved (no
/// registry reachable from this node, an image only loaded here), is kept
/// as given, with Docker's warning.
pub async fn pin_digest(c: &Client, image: &str) -> String {
    if image.contains('@') || weft_worker::image::pull::parse(image).is_err() {
        return image.to_owned();
    }
    if c.require_local("service create").is_err() {
        eprintln!(
            "image {image}: its digest is resolved by the local daemon, and this command talks \
             to a manager over tcp://: the tag is kept, and each node resolves it independently"
        );
        return image.to_owned();
    }
    // A private image's digest is asked with the user's `weft login`
    // credentials for its registry, as Docker's CLI does.
    let registry = weft_proto::credential::registry_of(image);
    let auth = match crate::login::wire_for(registry) {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "image {image}: the stored registry credentials cannot be read ({e:#}); asking without them"
            );
            None
        }
    };
    let asked = c
        .images()
        .resolve(pb::ResolveImageRequest {
            image: image.to_owned(),
            insecure: false,
            auth,
        })
        .await;
    match asked {
        Ok(r) => r.into_inner().image,
        Err(s) => {
            eprintln!(
                "image {image} could not be accessed on a registry to record its digest ({}). \
                 Each node will access {image} independently, possibly leading to different \
                 nodes running different versions of the image.",
                s.message()
            );
            image.to_owned()
        }
    }
}

async fn ls(c: &Client, quiet: bool, no_trunc: bool, format: Option<&str>) -> anyhow::Result<()> {
    let output = crate::format::Output::parse(format)?;
    let images = c
        .images()
        .list(pb::ListImagesRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .images;
    let id = |i: &pb::ImageSummary| image_id(i, no_trunc);
    if quiet {
        for id in unique(images.iter().map(id)) {
            println!("{id}");
        }
        return Ok(());
    }
    let now = time::OffsetDateTime::now_utc();
    let json: Vec<serde_json::Value> = images
        .iter()
        .map(|i| {
            let [repository, tag, id, since, size] = image_cells(i, no_trunc, now);
            serde_json::json!({
                "Repository": repository,
                "Tag": tag,
                "ID": id,
                "CreatedSince": since,
                "CreatedAt": i.created,
                "Size": size,
            })
        })
        .collect();
    output.print(&json, || {
        let rows: Vec<Row> = images
            .iter()
            .map(|i| Row::Cells(image_cells(i, no_trunc, now).to_vec()))
            .collect();
        for line in table(&IMAGE_HEADER, &rows) {
            println!("{line}");
        }
    })
}

/// `docker image ls`'s columns.
const IMAGE_HEADER: [&str; 5] = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"];

/// An image's ID as `image ls` shows it.
fn image_id(i: &pb::ImageSummary, no_trunc: bool) -> String {
    if no_trunc {
        i.id.clone()
    } else {
        short_id(&i.id)
    }
}

/// An image's cells under [`IMAGE_HEADER`].
fn image_cells(i: &pb::ImageSummary, no_trunc: bool, now: time::OffsetDateTime) -> [String; 5] {
    [
        i.repository.clone(),
        i.tag.clone(),
        image_id(i, no_trunc),
        created(&i.created, now),
        human_size(i.size),
    ]
}

/// Each item once, in the order first seen.
fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = Vec::new();
    for i in items {
        if !seen.contains(&i) {
            seen.push(i);
        }
    }
    seen
}

/// One line of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Row {
    /// A cell per column.
    Cells(Vec<String>),
    /// The first column's cell, then a note in place of the others.
    Note(String, String),
}

/// Docker's table layout: columns three spaces apart, the last unpadded.
fn table(header: &[&str], rows: &[Row]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        match r {
            Row::Cells(cells) => {
                for (w, cell) in widths.iter_mut().zip(cells) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            Row::Note(first, _) => widths[0] = widths[0].max(first.chars().count()),
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out
    };
    let mut out = vec![line(header)];
    for r in rows {
        out.push(match r {
            Row::Cells(cells) => line(&cells.iter().map(String::as_str).collect::<Vec<_>>()),
            Row::Note(first, note) => line(&[first, note]),
        });
    }
    out
}

/// `image ls --all-nodes`: through the manager's `Control.ListClusterImages`.
async fn ls_all_nodes(c: &Client, quiet: bool, no_trunc: bool) -> anyhow::Result<()> {
    let nodes = c
        .control()
        .list_cluster_images(pb::ListClusterImagesRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .nodes;
    let out = cluster_listing(&nodes, quiet, no_trunc, time::OffsetDateTime::now_utc());
    for line in &out.stdout {
        println!("{line}");
    }
    for line in &out.stderr {
        eprintln!("{line}");
    }
    if out.missing > 0 {
        bail!(
            "{} of {} nodes did not report their images (see above)",
            out.missing,
            nodes.len()
        );
    }
    Ok(())
}

/// What `image ls --all-nodes` prints, and how many nodes have no
/// current list.
#[derive(Debug, Default, PartialEq, Eq)]
struct ClusterListing {
    stdout: Vec<String>,
    stderr: Vec<String>,
    missing: usize,
}

/// How a node is named in the NODE column: its hostname, as `node ls`
/// shows it, or its ID when it has none or shares it with another node.
fn node_names(nodes: &[pb::NodeImages]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| {
            let shared = nodes.iter().filter(|o| o.hostname == n.hostname).count() > 1;
            if n.hostname.is_empty() || shared {
                n.node_id.clone()
            } else {
                n.hostname.clone()
            }
        })
        .collect()
}

/// Why node `n` has no rows (none: it answered), as a note.
fn node_note(n: &pb::NodeImages, now: time::OffsetDateTime) -> Option<String> {
    let last = || {
        if n.reported_ms == 0 {
            "no report".to_owned()
        } else {
            let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
            let secs = (now_ms - n.reported_ms as i64).max(0) / 1000;
            format!("last report {} ago", human_duration(secs))
        }
    };
    if !n.unavailable.is_empty() {
        Some(format!("{}; {}", n.unavailable, last()))
    } else if !n.error.is_empty() {
        Some(format!("node cannot list its images: {}", n.error))
    } else {
        None
    }
}

/// The table (or the IDs, `quiet`) of every node's images; the nodes
/// without a current list are a note in the table (on stderr with
/// `quiet`) and counted in `missing`.
fn cluster_listing(
    nodes: &[pb::NodeImages],
    quiet: bool,
    no_trunc: bool,
    now: time::OffsetDateTime,
) -> ClusterListing {
    let mut out = ClusterListing::default();
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for (n, name) in nodes.iter().zip(node_names(nodes)) {
        if let Some(note) = node_note(n, now) {
            out.missing += 1;
            if quiet {
                out.stderr.push(format!("{name}: {note}"));
            } else {
                rows.push(Row::Note(name.clone(), format!("({note})")));
            }
            continue;
        }
        if n.truncated {
            out.stderr.push(format!(
                "{name}: the node has more images than it reported; only these are listed"
            ));
        }
        for i in &n.images {
            ids.push(image_id(i, no_trunc));
            let mut cells = vec![name.clone()];
            cells.extend(image_cells(i, no_trunc, now));
            rows.push(Row::Cells(cells));
        }
    }
    out.stdout = if quiet {
        unique(ids.into_iter())
    } else {
        let mut header = vec!["NODE"];
        header.extend(IMAGE_HEADER);
        table(&header, &rows)
    };
    out
}

async fn inspect(c: &Client, format: Option<String>, images: Vec<String>) -> anyhow::Result<()> {
    crate::format::Output::parse(format.as_deref())?;
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for image in images {
        match c.images().inspect(pb::InspectImageRequest { image }).await {
            Ok(r) => found.push(
                serde_json::from_str::<serde_json::Value>(&r.into_inner().json)
                    .context("the daemon sent invalid JSON")?,
            ),
            Err(s) => errors.push(s.message().to_owned()),
        }
    }
    crate::format::print_objects(&found, format.as_deref())?;
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

async fn rm(c: &Client, force: bool, images: Vec<String>) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for image in images {
        match c
            .images()
            .remove(pb::RemoveImageRequest { image, force })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                for name in r.untagged {
                    if name.starts_with("sha256:") {
                        println!("Untagged: {name}");
                    } else {
                        let (repo, tag) = reference::repo_and_tag(&name);
                        println!("Untagged: {repo}:{tag}");
                    }
                }
                for id in r.deleted {
                    println!("Deleted: {id}");
                }
            }
            Err(s) => errors.push(s.message().to_owned()),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

/// The 12 hex digits Docker shows of an image ID.
fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// `2 weeks ago`, as `docker image ls` says it; `N/A` without a time.
fn created(rfc3339: &str, now: time::OffsetDateTime) -> String {
    let Ok(t) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return "N/A".into();
    };
    let secs = (now - t).whole_seconds().max(0);
    format!("{} ago", human_duration(secs))
}

/// Docker's `units.HumanDuration`.
fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 1 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        _ if m == 1 => "About a minute".into(),
        _ if m < 60 => format!("{m} minutes"),
        _ if h == 1 => "About an hour".into(),
        _ if h < 48 => format!("{h} hours"),
        _ if h < 24 * 7 * 2 => format!("{d} days"),
        _ if h < 24 * 30 * 2 => format!("{} weeks", d / 7),
        _ if h < 24 * 365 * 2 => format!("{} months", d / 30),
        _ => format!("{} years", d / 365),
    }
}

/// Docker's `units.HumanSizeWithPrecision(size, 3)`: decimal units, three
/// significant digits (`4.26MB`, `512B`).
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{value:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    format!("{s}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(1_200), "1.2kB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(15 * 86400), "2 weeks");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(created("garbage", time::OffsetDateTime::now_utc()), "N/A");
    }

    fn summary(repo: &str, id: char) -> pb::ImageSummary {
        pb::ImageSummary {
            name: format!("docker.io/library/{repo}:latest"),
            repository: repo.into(),
            tag: "latest".into(),
            id: format!("sha256:{}", id.to_string().repeat(64)),
            digest: String::new(),
            created: String::new(),
            size: 4_260_000,
        }
    }

    fn node(host: &str, images: Vec<pb::ImageSummary>) -> pb::NodeImages {
        pb::NodeImages {
            node_id: format!("id-{host}"),
            hostname: host.into(),
            reported_ms: 1_000_000,
            images,
            ..Default::default()
        }
    }

    #[test]
    fn cluster_listing_has_a_node_column_and_says_who_did_not_answer() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_090).unwrap();
        let nodes = vec![
            node("m1", vec![summary("busybox", 'a'), summary("alpine", 'b')]),
            pb::NodeImages {
                unavailable: "node is down".into(),
                ..node("w1", vec![])
            },
            node("w2", vec![summary("busybox", 'a')]),
            pb::NodeImages {
                reported_ms: 0,
                unavailable: "node has not reported since this leader took over".into(),
                ..node("w3", vec![])
            },
        ];
        let out = cluster_listing(&nodes, false, false, now);
        assert_eq!(
            out.stdout,
            vec![
                "NODE   REPOSITORY   TAG      IMAGE ID       CREATED   SIZE",
                "m1     busybox      latest   aaaaaaaaaaaa   N/A       4.26MB",
                "m1     alpine       latest   bbbbbbbbbbbb   N/A       4.26MB",
                "w1     (node is down; last report About a minute ago)",
                "w2     busybox      latest   aaaaaaaaaaaa   N/A       4.26MB",
                "w3     (node has not reported since this leader took over; no report)",
            ]
        );
        assert!(out.stderr.is_empty());
        assert_eq!(out.missing, 2);

        // -q: each ID once; the nodes without a list on stderr.
        let out = cluster_listing(&nodes, true, true, now);
        assert_eq!(
            out.stdout,
            vec![
                format!("sha256:{}", "a".repeat(64)),
                format!("sha256:{}", "b".repeat(64))
            ]
        );
        assert_eq!(
            out.stderr,
            vec![
                "w1: node is down; last report About a minute ago",
                "w3: node has not reported since this leader took over; no report",
            ]
        );
        assert_eq!(out.missing, 2);

        // All answered (one with no images, one cut): nothing missing.
        let nodes = vec![
            node("m1", vec![]),
            pb::NodeImages {
                truncated: true,
                ..node("w1", vec![summary("busybox", 'a')])
            },
        ];
        let out = cluster_listing(&nodes, false, true, now);
        assert_eq!(out.missing, 0);
        assert_eq!(out.stdout.len(), 2);
        assert!(out.stdout[1].contains(&"a".repeat(64)), "{:?}", out.stdout);
        assert_eq!(out.stderr.len(), 1);
        assert!(out.stderr[0].starts_with("w1: the node has more images"));

        // A node that cannot list its images is not answering either.
        let nodes = vec![pb::NodeImages {
            error: "containerd is not running".into(),
            ..node("m1", vec![])
        }];
        let out = cluster_listing(&nodes, false, false, now);
        assert_eq!(out.missing, 1);
        assert_eq!(
            out.stdout[1],
            "m1     (node cannot list its images: containerd is not running)"
        );
    }

    #[test]
    fn shared_or_missing_hostnames_show_the_node_id() {
        let nodes = vec![node("a", vec![]), node("b", vec![]), node("b", vec![])];
        let mut nodes = nodes;
        nodes[2].node_id = "id-b2".into();
        nodes.push(node("", vec![]));
        assert_eq!(node_names(&nodes), vec!["a", "id-b", "id-b2", "id-"]);
    }
}
