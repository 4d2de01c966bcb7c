//! What a node lets a container mount: its `--mount`s checked against the
//! node's policy and resolved to host paths.
//!
//! ```text
//!  type=bind   source ──canonicalize──▶ must exist (no auto-create, as Docker's --mount)
//!                                     ▶ must lie under an --allow-bind-root (none by default)
//!                                     ▶ must not hold or lie in weft's or containerd's state
//!  type=volume NAME ──▶ <data-dir>/volumes/NAME/_data, made on first use, kept after the task;
//!                       claimed in the task's directory first, under the volume store's lock
//!                       (crate::volumes), so `weft volume rm` never takes one a task holds
//!  type=tmpfs  ──▶ a tmpfs, nothing on the host
//! ```
//!
//! The check canonicalises the source (symbolic links resolved) and hands
//! the canonical path to runc. A container that can write inside an
//! allowed root could still swap a path component for a link between the
//! check and runc's mount; allowed roots should not be writable by tasks
//! that are not trusted with everything reachable from them.

use std::path::{Path, PathBuf};

use weft_proto::isolation::{MountKind, MountSpec};

/// The node's rules for `--mount`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountPolicy {
    /// Host directories under which bind sources may lie
    /// (`weft daemon --allow-bind-root`); empty: no bind mounts.
    pub allowed_bind_roots: Vec<PathBuf>,
    /// weft's and containerd's state: never bound, nor any directory
    /// holding them.
    pub forbidden: Vec<PathBuf>,
    /// Named volumes (`<data-dir>/volumes`) and the lock a task's
    /// claim on them shares with their removal.
    pub volumes: crate::volumes::VolumeStore,
}

/// A `--mount` resolved on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMount {
    /// What it is.
    pub kind: MountKind,
    /// The host path (bind: canonical; volume: its data directory; tmpfs:
    /// empty).
    pub source: PathBuf,
    /// Where in the container.
    pub target: String,
    /// Read-only.
    pub readonly: bool,
    /// tmpfs size in bytes (0: the kernel's default).
    pub tmpfs_size: u64,
    /// tmpfs mode (0: 1777).
    pub tmpfs_mode: u32,
}

/// Why a mount is refused on this node.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The node allows no bind mounts.
    #[error(
        "bind mount of {asked:?} refused: this node allows no bind mounts (its daemon has no \
         --allow-bind-root)"
    )]
    NoBindRoots {
        /// The source asked for.
        asked: String,
    },
    /// The source is outside every allowed root.
    #[error(
        "bind mount of {asked:?} refused: it is outside this node's allowed bind roots ({roots})"
    )]
    OutsideRoots {
        /// The source asked for.
        asked: String,
        /// The node's roots, comma-separated.
        roots: String,
    },
    /// The source holds or lies in weft's or containerd's state.
    #[error(
        "bind mount of {asked:?} refused: it would expose {} (weft's or containerd's state)",
        state.display()
    )]
    State {
        /// The source asked for.
        asked: String,
        /// The state directory it overlaps.
        state: PathBuf,
    },
    /// The source does not exist (or cannot be resolved).
    #[error("bind source path does not exist: {asked:?} ({error})")]
    Missing {
        /// The source asked for.
        asked: String,
        /// Why it cannot be resolved.
        error: std::io::Error,
    },
    /// A volume cannot be claimed or made.
    #[error("volume {name:?}: {error}")]
    Volume {
        /// The volume's name (the first, when claiming several).
        name: String,
        /// What failed.
        error: crate::volumes::VolumeError,
    },
}

impl MountPolicy {
    /// The data directory of named volume `name`.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes.data_dir(name)
    }

    /// Checks a bind source against the policy without touching anything
    /// but its path resolution; returns its canonical path.
    pub fn check_bind(&self, source: &str) -> Result<PathBuf, MountError> {
        if self.allowed_bind_roots.is_empty() {
            return Err(MountError::NoBindRoots {
                asked: source.to_owned(),
            });
        }
        let real = std::fs::canonicalize(source).map_err(|error| MountError::Missing {
            asked: source.to_owned(),
            error,
        })?;
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        for state in &self.forbidden {
            let state = canon(state);
            if real.starts_with(&state) || state.starts_with(&real) {
                return Err(MountError::State {
                    asked: source.to_owned(),
                    state,
                });
            }
        }
        if !self
            .allowed_bind_roots
            .iter()
            .any(|root| real.starts_with(canon(root)))
        {
            return Err(MountError::OutsideRoots {
                asked: source.to_owned(),
                roots: self
                    .allowed_bind_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(real)
    }

    /// Resolves the mounts of the task whose files are in `task_dir`:
    /// checks every bind first (so a refused task makes nothing), then,
    /// holding the volume store's lock, claims the task's volumes in
    /// `task_dir` and makes those that do not exist.
    pub async fn resolve(
        &self,
        task_dir: &Path,
        mounts: &[MountSpec],
    ) -> Result<Vec<HostMount>, MountError> {
        let mut sources = Vec::with_capacity(mounts.len());
        for m in mounts {
            sources.push(match m.kind {
                MountKind::Bind => self.check_bind(&m.source)?,
                MountKind::Volume => self.volume_dir(&m.source),
                MountKind::Tmpfs => PathBuf::new(),
            });
        }
        let names = crate::volumes::volume_names(mounts);
        if let Some(first) = names.first() {
            let held = self.volumes.lock().await;
            let err = |name: &str| {
                let name = name.to_owned();
                move |error| MountError::Volume { name, error }
            };
            self.volumes
                .claim(&held, task_dir, &names)
                .map_err(err(first))?;
            for name in &names {
                self.volumes.ensure(&held, name).map_err(err(name))?;
            }
        }
        Ok(mounts
            .iter()
            .zip(sources)
            .map(|(m, source)| HostMount {
                kind: m.kind,
                source,
                target: m.target.clone(),
                readonly: m.readonly,
                tmpfs_size: m.tmpfs_size,
                tmpfs_mode: m.tmpfs_mode,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &str) -> MountSpec {
        MountSpec {
            kind: MountKind::Bind,
            source: source.into(),
            target: "/data".into(),
            readonly: false,
            tmpfs_size: 0,
            tmpfs_mode: 0,
        }
    }

    #[test]
    fn binds_follow_the_node_policy() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("allowed");
        let state = root.join("state");
        let data = root.join("data");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&state, root.join("link")).unwrap();
        let policy = MountPolicy {
            allowed_bind_roots: vec![root.clone()],
            forbidden: vec![state.clone()],
            volumes: crate::volumes::VolumeStore::new(
                dir.path().join("volumes"),
                dir.path().join("tasks"),
            ),
        };
        let s = |p: &Path| p.display().to_string();
        assert_eq!(
            policy.check_bind(&s(&data)).unwrap(),
            data.canonicalize().unwrap()
        );
        assert!(matches!(
            policy.check_bind(&s(&state)),
            Err(MountError::State { .. })
        ));
        // A directory holding the state, or a link into it.
        assert!(matches!(
            policy.check_bind(&s(&root)),
            Err(MountError::State { .. })
        ));
        assert!(matches!(
            policy.check_bind(&s(&root.join("link"))),
            Err(MountError::State { .. })
        ));
        assert!(matches!(
            policy.check_bind(&s(dir.path())),
            Err(MountError::State { .. } | MountError::OutsideRoots { .. })
        ));
        assert!(matches!(
            policy.check_bind("/etc"),
            Err(MountError::OutsideRoots { .. })
        ));
        assert!(matches!(
            policy.check_bind(&s(&data.join("missing"))),
            Err(MountError::Missing { .. })
        ));
        let none = MountPolicy {
            allowed_bind_roots: vec![],
            ..policy.clone()
        };
        assert!(matches!(
            none.check_bind(&s(&data)),
            Err(MountError::NoBindRoots { .. })
        ));
    }

    #[tokio::test]
    async fn volumes_are_claimed_and_made_and_a_refused_task_makes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let volumes =
            crate::volumes::VolumeStore::new(dir.path().join("volumes"), dir.path().join("tasks"));
        let policy = MountPolicy {
            allowed_bind_roots: vec![],
            forbidden: vec![],
            volumes: volumes.clone(),
        };
        let vol = MountSpec {
            kind: MountKind::Volume,
            source: "cache".into(),
            target: "/cache".into(),
            readonly: false,
            tmpfs_size: 0,
            tmpfs_mode: 0,
        };
        let task = dir.path().join("tasks").join("t1");
        assert!(
            policy
                .resolve(&task, &[vol.clone(), bind("/etc")])
                .await
                .is_err()
        );
        assert!(!policy.volume_dir("cache").exists());
        assert!(!task.exists(), "a refused task claims nothing");
        let got = policy
            .resolve(&task, std::slice::from_ref(&vol))
            .await
            .unwrap();
        assert_eq!(got[0].source, policy.volume_dir("cache"));
        assert!(policy.volume_dir("cache").is_dir());
        // Made implicitly, with a record; claimed by the task.
        let v = volumes.get("cache").unwrap().unwrap();
        assert!(v.meta.created_at.ends_with('Z'), "{:?}", v.meta);
        let held = volumes.lock().await;
        assert_eq!(
            volumes.claims(&held).unwrap(),
            vec![("t1".to_owned(), vec!["cache".to_owned()])]
        );
    }

    /// A removal checks claims and removes holding the store's lock; a
    /// start that comes meanwhile waits for it, then claims and makes the
    /// volume anew: it never sees a volume the removal is taking away.
    #[tokio::test]
    async fn a_start_waits_for_a_removal_that_holds_the_volume_lock() {
        let dir = tempfile::tempdir().unwrap();
        let volumes =
            crate::volumes::VolumeStore::new(dir.path().join("volumes"), dir.path().join("tasks"));
        let policy = MountPolicy {
            allowed_bind_roots: vec![],
            forbidden: vec![],
            volumes: volumes.clone(),
        };
        let held = volumes.lock().await;
        volumes
            .make(&held, "shared", &crate::volumes::VolumeMeta::default())
            .unwrap();
        let task = dir.path().join("tasks").join("t1");
        let vol = MountSpec {
            kind: MountKind::Volume,
            source: "shared".into(),
            target: "/data".into(),
            readonly: false,
            tmpfs_size: 0,
            tmpfs_mode: 0,
        };
        let start = tokio::spawn(async move { policy.resolve(&task, &[vol]).await });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!start.is_finished(), "the start waits for the lock");
        assert!(volumes.claims(&held).unwrap().is_empty());
        let taken = volumes.take(&held, "shared").unwrap();
        drop(held);
        start.await.unwrap().unwrap();
        volumes.purge(&[taken]).unwrap();
        assert!(
            volumes.data_dir("shared").is_dir(),
            "made anew by the start"
        );
        let held = volumes.lock().await;
        assert_eq!(volumes.claims(&held).unwrap().len(), 1);
    }
}
