//! Unpacking an image's layers into snapshots, one per layer, named by
//! chain id so that images sharing layers share snapshots
//! (docs/plans/14-containerd.md §2.3).
//!
//! ```text
//!   for each layer i (bottom first), unless snapshot chain[i] exists:
//!     Snapshots.Prepare(key = weft-extract-…, parent = chain[i-1])  ─► mounts
//!     Diff.Apply(layer blob, mounts)  ─► applied digest == diff_id[i]?  (else Remove, refuse)
//!     Snapshots.Commit(name = chain[i], key)   (AlreadyExists: someone else won; Remove key)
//!   then label the config: containerd.io/gc.ref.snapshot.<snapshotter> = chain[last]
//! ```
//!
//! [`steps`] decides purely; [`unpack`] executes. The caller holds a lease,
//! so snapshots committed before the config label exists are not collected.

use std::collections::{BTreeMap, HashMap};

use weft_containerd_api::Client;
use weft_containerd_api::containerd::services::diff::v1::{ApplyRequest, diff_client::DiffClient};
use weft_containerd_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    snapshots_client::SnapshotsClient,
};

use super::ImageConfig;
use super::content;
use super::error::ImageError;
use super::plan::Descriptor;

/// One layer to unpack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The layer blob.
    pub layer: Descriptor,
    /// Its uncompressed digest, per the config.
    pub diff_id: String,
    /// The snapshot it becomes.
    pub chain_id: String,
    /// The snapshot below it (empty for the bottom layer).
    pub parent: String,
}

/// The steps for an image's layers, bottom first.
pub fn steps(layers: &[Descriptor], config: &ImageConfig) -> Vec<Step> {
    let chain = config.chain_ids();
    layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .zip(&chain)
        .enumerate()
        .map(|(i, ((layer, diff_id), chain_id))| Step {
            layer: layer.clone(),
            diff_id: diff_id.clone(),
            chain_id: chain_id.clone(),
            parent: if i == 0 {
                String::new()
            } else {
                chain[i - 1].clone()
            },
        })
        .collect()
}

/// The label that makes a config keep its image's snapshot chain.
pub fn snapshot_label(snapshotter: &str) -> String {
    format!("containerd.io/gc.ref.snapshot.{snapshotter}")
}

/// Whether snapshot `key` exists.
pub async fn exists(client: &Client, snapshotter: &str, key: &str) -> Result<bool, ImageError> {
    let r = SnapshotsClient::new(client.channel())
        .stat(StatSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.to_owned(),
        })
        .await;
    match r.map_err(|s| client.error("Snapshots.Stat", s)) {
        Ok(_) => Ok(true),
        Err(weft_containerd_api::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Applies `steps` (the client should carry a lease) and labels the config
/// `config_digest` with the top snapshot. Returns the top chain id.
pub async fn unpack(
    client: &Client,
    snapshotter: &str,
    steps: &[Step],
    config_digest: &str,
) -> Result<String, ImageError> {
    let mut snapshots = SnapshotsClient::new(client.channel());
    for step in steps {
        if exists(client, snapshotter, &step.chain_id).await? {
            continue;
        }
        let key = format!(
            "weft-extract-{:08x}-{}",
            rand::random::<u32>(),
            step.chain_id
        );
        let mut labels = HashMap::new();
        labels.insert(
            "containerd.io/snapshot.ref".to_owned(),
            step.chain_id.clone(),
        );
        let mounts = snapshots
            .prepare(PrepareSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: key.clone(),
                parent: step.parent.clone(),
                labels,
            })
            .await
            .map_err(|s| client.error("Snapshots.Prepare", s))?
            .into_inner()
            .mounts;
        let applied = DiffClient::new(client.channel())
            .apply(ApplyRequest {
                diff: Some(content::to_proto(&step.layer)),
                mounts,
                payloads: Default::default(),
                sync_fs: false,
            })
            .await
            .map_err(|s| client.error("Diff.Apply", s));
        let applied = match applied {
            Ok(r) => r.into_inner().applied.unwrap_or_default().digest,
            Err(e) => {
                remove(client, snapshotter, &key).await;
                return Err(e.into());
            }
        };
        if applied != step.diff_id {
            remove(client, snapshotter, &key).await;
            return Err(ImageError::DiffIdMismatch {
                layer: step.layer.digest.clone(),
                expected: step.diff_id.clone(),
                actual: applied,
            });
        }
        let committed = snapshots
            .commit(CommitSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                name: step.chain_id.clone(),
                key: key.clone(),
                labels: Default::default(),
                parent: String::new(),
            })
            .await
            .map_err(|s| client.error("Snapshots.Commit", s));
        match committed {
            Ok(_) => {}
            Err(weft_containerd_api::Error::AlreadyExists { .. }) => {
                remove(client, snapshotter, &key).await
            }
            Err(e) => {
                remove(client, snapshotter, &key).await;
                return Err(e.into());
            }
        }
    }
    let top = steps.last().map(|s| s.chain_id.clone()).unwrap_or_default();
    if !top.is_empty() {
        let mut labels = BTreeMap::new();
        labels.insert(snapshot_label(snapshotter), top.clone());
        content::update_labels(client, config_digest, &labels).await?;
    }
    Ok(top)
}

/// Removes an extraction snapshot after a failure (best effort: under the
/// lease it goes with the lease anyway).
async fn remove(client: &Client, snapshotter: &str, key: &str) {
    let r = SnapshotsClient::new(client.channel())
        .remove(RemoveSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.to_owned(),
        })
        .await;
    if let Err(s) = r {
        tracing::warn!(%key, "cannot remove extraction snapshot: {}", client.error("Snapshots.Remove", s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_chain_each_layer_on_the_one_below() {
        let mut config = ImageConfig::default();
        config.rootfs.diff_ids = vec!["sha256:a".into(), "sha256:b".into()];
        let layers = vec![
            Descriptor {
                digest: "sha256:la".into(),
                ..Default::default()
            },
            Descriptor {
                digest: "sha256:lb".into(),
                ..Default::default()
            },
        ];
        let s = steps(&layers, &config);
        let chain = config.chain_ids();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].chain_id, "sha256:a");
        assert_eq!(s[0].parent, "");
        assert_eq!(s[1].chain_id, chain[1]);
        assert_eq!(s[1].parent, "sha256:a");
        assert_eq!(s[1].diff_id, "sha256:b");
        assert_eq!(s[1].layer.digest, "sha256:lb");
        assert_eq!(
            snapshot_label("overlayfs"),
            "containerd.io/gc.ref.snapshot.overlayfs"
        );
    }
}
