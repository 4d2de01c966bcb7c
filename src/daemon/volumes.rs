//! The daemon's `weft volume create|ls|inspect|rm|prune`: this node's
//! volumes (`weft_worker::volumes`), with what its tasks hold.
//!
//! ```text
//!  request ─▶ check names/labels/filters (nothing changed on bad input)
//!          ─▶ lock the volume store (task starts claim under it too)
//!          ─▶ users = claims of this node's containers ∪ volume mounts of
//!                     the tasks in its config
//!          ─▶ plan (weft_worker::volumes) ─▶ make / set aside (rename)
//!          ─▶ unlock ─▶ delete what was set aside
//! ```

use std::collections::{BTreeMap, HashMap};

use tonic::Status;
use weft_proto::v1 as pb;
use weft_worker::volumes::{self as vols, Held, Users, Volume, VolumeError, VolumeStore};

use super::NodeService;

/// The gRPC status of a volume error: a code that says what happened.
fn status(e: VolumeError) -> Status {
    let code = match &e {
        VolumeError::BadName(_)
        | VolumeError::TooManyLabels(_)
        | VolumeError::BadLabel { .. }
        | VolumeError::OptionUnsupported(_)
        | VolumeError::TooManyFilters(_)
        | VolumeError::BadFilter { .. } => tonic::Code::InvalidArgument,
        VolumeError::NotFound(_) => tonic::Code::NotFound,
        VolumeError::Conflict(_) => tonic::Code::AlreadyExists,
        VolumeError::InUse { .. } => tonic::Code::FailedPrecondition,
        VolumeError::Io { .. } => tonic::Code::Internal,
    };
    Status::new(code, e.to_string())
}

fn sorted(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// A volume in the wire's (Docker's) terms.
fn info(store: &VolumeStore, v: Volume, users: &Users) -> pb::VolumeInfo {
    pb::VolumeInfo {
        mountpoint: store.data_dir(&v.name).display().to_string(),
        used_by: users.of(&v.name),
        name: v.name,
        driver: vols::DRIVER.into(),
        created_at: v.meta.created_at,
        labels: v.meta.labels.into_iter().collect(),
        options: v.meta.options.into_iter().collect(),
        scope: vols::SCOPE.into(),
    }
}

/// Runs `f` on a blocking thread (volume operations are file system
/// walks and renames).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("volume operation: {e}")))?
}

impl NodeService {
    fn volumes(&self) -> VolumeStore {
        self.mounts.volumes.clone()
    }

    /// The volume mounts of the tasks in this node's config (none when it
    /// is not a member): tasks about to start, and stopped standalone
    /// tasks, hold their volumes too.
    async fn config_volume_users(&self) -> Vec<(String, Vec<String>)> {
        let guard = self.active.lock().await;
        let Some(config) = guard
            .as_ref()
            .and_then(|a| a.agent.config().borrow().clone())
        else {
            return Vec::new();
        };
        config
            .tasks
            .iter()
            .map(|t| {
                let names = t
                    .container
                    .iter()
                    .flat_map(|c| &c.mounts)
                    .filter(|m| m.kind() == pb::MountKind::Volume)
                    .map(|m| m.source.clone())
                    .collect();
                (t.id.clone(), names)
            })
            .collect()
    }

    /// Runs `f` on a blocking thread with the store, its lock and who
    /// holds what: the claims stay true while the lock is held (a start
    /// claims under it). Inputs are checked before (bad input changes
    /// nothing); the config is read before the lock is taken, so the
    /// volume lock is never held while waiting for another.
    async fn under_lock<T: Send + 'static>(
        &self,
        f: impl FnOnce(&VolumeStore, Held, Users) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        self.locked.refuse()?;
        let config = self.config_volume_users().await;
        let store = self.volumes();
        let held = store.lock().await;
        blocking(move || {
            let claims = store.claims(&held).map_err(status)?;
            let users = Users::new(
                claims
                    .iter()
                    .chain(config.iter())
                    .map(|(t, v)| (t.as_str(), v.clone())),
            );
            f(&store, held, users)
        })
        .await
    }

    /// `weft volume create`.
    pub(super) async fn volume_create(
        &self,
        r: pb::VolumeCreateRequest,
    ) -> Result<pb::VolumeInfo, Status> {
        let name = match r.name.as_str() {
            "" => vols::generate_name(),
            n => n.to_owned(),
        };
        vols::check_name(&name).map_err(status)?;
        let (labels, options) = (sorted(r.labels), sorted(r.options));
        vols::check_labels(&labels).map_err(status)?;
        vols::check_options(&options).map_err(status)?;
        self.under_lock(move |store, held, users| {
            let existing = store.get(&name).map_err(status)?;
            let plan =
                vols::plan_create(&name, existing.as_ref().map(|v| &v.meta), &labels, &options)
                    .map_err(status)?;
            if plan == vols::CreatePlan::Make {
                let meta = vols::VolumeMeta {
                    created_at: vols::store::created_at(std::time::SystemTime::now()),
                    labels,
                    options,
                };
                store.make(&held, &name, &meta).map_err(status)?;
            }
            let v = store
                .get(&name)
                .map_err(status)?
                .ok_or_else(|| status(VolumeError::NotFound(name.clone())))?;
            Ok(info(store, v, &users))
        })
        .await
    }

    /// `weft volume ls`.
    pub(super) async fn volume_list(
        &self,
        r: pb::VolumeListRequest,
    ) -> Result<pb::VolumeListResponse, Status> {
        let filters = vols::parse_filters(&r.filters, vols::FilterUse::List).map_err(status)?;
        self.under_lock(move |store, held, users| {
            let all = store.list().map_err(status)?;
            drop(held);
            let volumes = all
                .into_iter()
                .filter(|v| vols::matches(v, &users, &filters))
                .map(|v| info(store, v, &users))
                .collect();
            Ok(pb::VolumeListResponse { volumes })
        })
        .await
    }

    /// `weft volume inspect`.
    pub(super) async fn volume_inspect(
        &self,
        r: pb::VolumeInspectRequest,
    ) -> Result<pb::VolumeInfo, Status> {
        vols::check_name(&r.name).map_err(status)?;
        self.under_lock(move |store, held, users| {
            let v = store.get(&r.name).map_err(status)?;
            drop(held);
            let v = v.ok_or_else(|| status(VolumeError::NotFound(r.name.clone())))?;
            Ok(info(store, v, &users))
        })
        .await
    }

    /// `weft volume rm`: refused while a task holds the volume.
    pub(super) async fn volume_remove(
        &self,
        r: pb::VolumeRemoveRequest,
    ) -> Result<pb::VolumeRemoveResponse, Status> {
        vols::check_name(&r.name).map_err(status)?;
        self.under_lock(move |store, held, users| {
            let exists = store.get(&r.name).map_err(status)?.is_some();
            let taken = match vols::plan_remove(&r.name, exists, &users, r.force).map_err(status)? {
                vols::RemovePlan::Remove => vec![store.take(&held, &r.name).map_err(status)?],
                vols::RemovePlan::Nothing => Vec::new(),
            };
            drop(held);
            store.purge(&taken).map_err(status)?;
            Ok(pb::VolumeRemoveResponse {})
        })
        .await
    }

    /// `weft volume prune`: the volumes no task holds.
    pub(super) async fn volume_prune(
        &self,
        r: pb::VolumePruneRequest,
    ) -> Result<pb::VolumePruneResponse, Status> {
        let filters = vols::parse_filters(&r.filters, vols::FilterUse::Prune).map_err(status)?;
        self.under_lock(move |store, held, users| {
            let all = store.list().map_err(status)?;
            let (mut removed, mut taken, mut failed) = (Vec::new(), Vec::new(), Vec::new());
            // Every volume is tried; every failure is reported.
            for name in vols::plan_prune(&all, &users, &filters) {
                match store.take(&held, &name) {
                    Ok(t) => {
                        taken.push(t);
                        removed.push(name);
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            drop(held);
            let reclaimed_bytes = taken
                .iter()
                .map(|t| vols::store::size(&t.join(vols::store::DATA_DIR)))
                .sum();
            if let Err(e) = store.purge(&taken) {
                failed.push(e.to_string());
            }
            if !failed.is_empty() {
                return Err(Status::internal(format!(
                    "removed {}; failed: {}",
                    if removed.is_empty() {
                        "none".into()
                    } else {
                        removed.join(", ")
                    },
                    failed.join("; ")
                )));
            }
            Ok(pb::VolumePruneResponse {
                removed,
                reclaimed_bytes,
            })
        })
        .await
    }
}
