//! The containers a lab's daemons leave in the host's containerd: a lab
//! daemon runs its containers through the containerd every daemon of the
//! machine uses (namespace `weft`, each container marked with its daemon's
//! exec root), so tearing the lab down kills the containers' processes with
//! the rest of the lab but leaves their records, snapshots and shims until
//! this removes them.

use std::path::Path;
use std::sync::Arc;

use weft_worker::image::{ImageStore, StoreConfig};
use weft_worker::runtime::containerd::{ContainerdConfig, ContainerdRuntime};

use super::state::{ContainerdSettings, LabState};

/// Removes the containers of every node of `state` (after its daemons are
/// gone). Returns the number removed and the errors met; a machine without
/// containerd has nothing to remove.
pub async fn purge(state: &LabState) -> (usize, Vec<String>) {
    let mut removed = 0;
    let mut errors = Vec::new();
    for node in &state.nodes {
        match purge_node(&state.containerd, &node.exec_root).await {
            Ok(n) => removed += n,
            Err(e) => errors.push(format!("containers of {}: {e}", node.name)),
        }
    }
    (removed, errors)
}

async fn purge_node(settings: &ContainerdSettings, exec_root: &Path) -> Result<usize, String> {
    let mut config = StoreConfig::new(exec_root);
    if let Some(socket) = &settings.socket {
        config.socket = socket.clone();
    }
    if !config.socket.exists() {
        return Ok(0);
    }
    let images = Arc::new(ImageStore::new(config));
    let client = images.client().await.map_err(|e| e.to_string())?;
    let runtime = ContainerdRuntime::new(
        client,
        images,
        ContainerdConfig {
            tasks_dir: exec_root.join("containers"),
            runc_root: settings.runc_root.clone(),
            cgroup_parent: settings
                .cgroup_parent
                .clone()
                .unwrap_or_else(|| "/weft".into()),
            owner: exec_root.display().to_string(),
            logger: exec_root.join("bin/weft-task-logger"),
            // Removing containers mounts nothing.
            mounts: Default::default(),
        },
    );
    runtime
        .purge()
        .await
        .map(|ids| ids.len())
        .map_err(|e| e.to_string())
}
