//! Removing everything one daemon left in containerd, for a teardown that
//! outlives the daemon (`weft lab down`): the daemon's processes are gone,
//! its containers and their snapshots are not.

use super::{ContainerdRuntime, OWNER_LABEL, TASK_LABEL, containers, validate_id};
use crate::runtime::Result;

impl ContainerdRuntime {
    /// Deletes every container marked with this runtime's owner (its task
    /// process, killed first if it still runs, its record, its snapshot and
    /// its files). Returns the ids removed, or the first error after trying
    /// them all. Never run it beside a daemon of the same owner: that
    /// daemon would start its tasks again.
    pub async fn purge(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let mut first_error = None;
        for c in self.own_containers().await? {
            match self.cleanup(&c.id).await {
                Ok(()) => removed.push(c.id),
                Err(e) => {
                    tracing::warn!(task = %c.id, error = %e, "purge: cannot remove a container");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// The task containers marked with this runtime's owner (another
    /// daemon's, sharing the namespace, are left alone).
    pub(super) async fn own_containers(&self) -> Result<Vec<containers::Container>> {
        let list = self
            .containers()
            .list(containers::ListContainersRequest {
                filters: vec![format!("labels.\"{TASK_LABEL}\"")],
            })
            .await
            .map_err(|s| self.err("Containers.List", s))?
            .into_inner()
            .containers;
        Ok(list
            .into_iter()
            .filter(|c| validate_id(&c.id).is_ok())
            .filter(|c| {
                let own = c.labels.get(OWNER_LABEL) == Some(&self.inner.cfg.owner);
                if !own {
                    tracing::debug!(task = %c.id, owner = ?c.labels.get(OWNER_LABEL), "another daemon's container: left alone");
                }
                own
            })
            .collect())
    }
}
