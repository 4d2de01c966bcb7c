//! `service update`'s flags for a container service's options and its stop
//! policy (Docker's names): `--image`, `-u`, `-w`, `--hostname`,
//! `--mount-add`, `--mount-rm`, `--stop-signal`, `--stop-grace-period`.
//! Checked here as far as the client can; the manager checks the result.

use anyhow::bail;
use clap::Args;
use weft_proto::isolation::{self, MountSpec};
use weft_proto::v1 as pb;

use crate::commands::Client;

/// The container options `service update` can change.
#[derive(Debug, Args)]
pub struct ContainerUpdateArgs {
    /// Run a new image (NAME[:TAG], NAME@sha256:DIGEST or sha256:DIGEST):
    /// the tasks are replaced one at a time, as for any update.
    #[arg(long)]
    pub image: Option<String>,
    /// Keep `--image`'s tag instead of pinning the digest it stands for now.
    #[arg(long)]
    pub no_resolve_image: bool,
    /// New user in the container: NAME[:GROUP] or UID[:GID] (`""`: the image's).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// New working directory, absolute (`""`: the image's).
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// New hostname (`""`: the task's name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Add a mount, as `--mount` of `service create` (repeatable); one at
    /// the same target is replaced.
    #[arg(long = "mount-add", value_name = "SPEC")]
    pub mount_add: Vec<String>,
    /// Remove the mount at this target (repeatable).
    #[arg(long = "mount-rm", value_name = "TARGET")]
    pub mount_rm: Vec<String>,
    #[command(flatten)]
    pub stop: crate::cli::StopArgs,
}

impl ContainerUpdateArgs {
    /// The container part of the request (`None`: nothing of it given);
    /// `--image` pinned to its digest unless `--no-resolve-image`.
    pub async fn container(&self, c: &Client) -> anyhow::Result<Option<pb::ContainerUpdate>> {
        if self.no_resolve_image && self.image.is_none() {
            bail!("--no-resolve-image goes with --image");
        }
        for (flag, n) in [
            ("--mount-add", self.mount_add.len()),
            ("--mount-rm", self.mount_rm.len()),
        ] {
            if n > isolation::MAX_MOUNTS {
                bail!("too many {flag} options: at most {}", isolation::MAX_MOUNTS);
            }
        }
        let mounts = self
            .mount_add
            .iter()
            .map(|m| m.parse::<MountSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        isolation::check_mounts(&mounts)?;
        if let Some(h) = self.hostname.as_deref().filter(|h| !h.is_empty()) {
            weft_manager::validate::hostname(h)?;
        }
        let u = pb::ContainerUpdate {
            image: match &self.image {
                Some(i) if !self.no_resolve_image => Some(crate::image_cmd::pin_digest(c, i).await),
                other => other.clone(),
            },
            user: self.user.clone(),
            workdir: self.workdir.clone(),
            hostname: self.hostname.clone(),
            mount_add: mounts.iter().map(pb::MountConfig::from).collect(),
            mount_rm: self.mount_rm.clone(),
        };
        Ok((u != pb::ContainerUpdate::default()).then_some(u))
    }

    /// The stop-policy part (`None`: neither flag given).
    pub fn stop(&self) -> anyhow::Result<Option<pb::StopPolicy>> {
        crate::workload::stop_from_args(&self.stop)
    }
}
